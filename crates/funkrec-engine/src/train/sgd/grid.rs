//! The SGD grid: seeded binning of user and item ids, the in-place partition of the ratings into blocks, and the per-epoch strata.

use crate::data::Rating;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The ratings grouped by block, in place.
pub struct Grid<'a> {
    /// Bins per side.
    pub nb: usize,
    /// `offsets[b]..offsets[b + 1]` are the ratings of block `b = user_bin·nb + item_bin`.
    pub offsets: Vec<usize>,
    /// The grouped ratings (borrowed from [`Grid::build`]'s argument).
    ratings: &'a [Rating],
    /// Every rating's user is below `n_users` and its item below `n_items`:
    /// [`Grid::build`] looks each one up in bin tables of these lengths.
    n_users: usize,
    n_items: usize,
}

/// The blocks of one epoch in `nb` strata of `nb` blocks each; the blocks of a
/// stratum share no user bin and no item bin. Only [`Grid::schedule`] makes one.
pub struct Schedule {
    nb: usize,
    strata: Vec<Vec<usize>>,
}

impl Schedule {
    /// Bins per side of the grid this schedule belongs to.
    pub fn nb(&self) -> usize {
        self.nb
    }

    /// The strata in visiting order; each lists block numbers `user_bin·nb + item_bin`.
    pub fn strata(&self) -> &[Vec<usize>] {
        &self.strata
    }
}

/// Bins per side for `threads` workers and `n` ratings: at least 16 and
/// 2·threads (so it is the same for 1–8 threads), more for big data so that a
/// block's slices of P and Q stay small (about 50,000 ratings per block).
pub fn grid_size(threads: usize, n: usize) -> usize {
    let by_size = ((n / 50_000) as f64).sqrt().ceil() as usize;
    (2 * threads).max(16).max(by_size).min(4096)
}

/// A block's slice of P larger than this is walked in user order (users in
/// their seeded random rank within the bin), so consecutive updates reuse the
/// same user row and P is read almost sequentially; smaller slices stay in
/// cache anyway and are shuffled instead.
const SORT_ABOVE_BYTES: usize = 1 << 20;

/// A seeded random assignment of `n` ids to `nb` (almost) equal bins: the bin
/// of each id and its rank inside the bin.
fn bins(n: usize, nb: usize, rng: &mut ChaCha8Rng) -> (Vec<u32>, Vec<u32>) {
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(rng);
    let mut bin = vec![0u32; n];
    let mut rank = vec![0u32; n];
    let mut filled = vec![0u32; nb];
    for (pos, &id) in perm.iter().enumerate() {
        let b = pos * nb / n.max(1);
        bin[id as usize] = b as u32;
        rank[id as usize] = filled[b];
        filled[b] += 1;
    }
    (bin, rank)
}

/// Partitions `xs` in place by `key` (< `buckets`), American-flag style (no
/// second buffer); returns the bucket offsets (`buckets + 1` entries).
fn flag_partition<T>(xs: &mut [T], buckets: usize, key: impl Fn(&T) -> usize) -> Vec<usize> {
    let mut offsets = vec![0usize; buckets + 1];
    for x in xs.iter() {
        offsets[key(x) + 1] += 1;
    }
    for b in 0..buckets {
        offsets[b + 1] += offsets[b];
    }
    let mut next = offsets[..buckets].to_vec();
    for b in 0..buckets {
        let end = offsets[b + 1];
        while next[b] < end {
            let t = key(&xs[next[b]]);
            if t == b {
                next[b] += 1;
            } else {
                xs.swap(next[b], next[t]);
                next[t] += 1;
            }
        }
    }
    offsets
}

/// Stable counting sort of `src` by `key` (< `buckets`) into `dst` (same length).
fn scatter<T: Copy>(src: &[T], dst: &mut [T], buckets: usize, key: impl Fn(&T) -> usize) {
    let mut next = vec![0usize; buckets + 1];
    for x in src {
        next[key(x) + 1] += 1;
    }
    for b in 0..buckets {
        next[b + 1] += next[b];
    }
    for x in src {
        let slot = &mut next[key(x)];
        dst[*slot] = *x;
        *slot += 1;
    }
}

impl<'a> Grid<'a> {
    /// Groups `ratings` into `nb × nb` blocks in place and fixes the order inside
    /// each block: by user when a block's rows of P (`k` floats each) would not
    /// fit in cache, else a seeded shuffle. First an in-place partition by user
    /// bin (no copy of the ratings), then each user bin's segment is split into
    /// its `nb` blocks on `threads` threads, each with a buffer of one segment.
    /// The result does not depend on `threads`.
    ///
    /// Panics if a rating's user is not below `n_users` or its item not below
    /// `n_items` (the bin tables are indexed by every rating).
    pub fn build(
        ratings: &'a mut [Rating],
        n_users: usize,
        n_items: usize,
        k: usize,
        nb: usize,
        seed: u64,
        threads: usize,
    ) -> Grid<'a> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let (ub, urank) = bins(n_users, nb, &mut rng);
        let (ib, _) = bins(n_items, nb, &mut rng);
        let seg = flag_partition(ratings, nb, |r| ub[r.user as usize] as usize);
        let mut offsets = vec![0usize; nb * nb + 1];
        for r in ratings.iter() {
            offsets[ub[r.user as usize] as usize * nb + ib[r.item as usize] as usize + 1] += 1;
        }
        for b in 0..nb * nb {
            offsets[b + 1] += offsets[b];
        }
        let by_user = n_users.div_ceil(nb) * k * 4 > SORT_ABOVE_BYTES;
        let users_per_bin = n_users.div_ceil(nb).max(1) + 1;
        let block_seed: u64 = rand::Rng::gen(&mut rng);
        // Hand the segments out round-robin; each is finished independently.
        let threads = threads.clamp(1, nb);
        let mut shares: Vec<Vec<(usize, &mut [Rating])>> =
            (0..threads).map(|_| Vec::new()).collect();
        let mut rest = &mut *ratings;
        for s in 0..nb {
            let (head, tail) = rest.split_at_mut(seg[s + 1] - seg[s]);
            shares[s % threads].push((s, head));
            rest = tail;
        }
        let finish = |share: Vec<(usize, &mut [Rating])>| {
            let mut buf: Vec<Rating> = Vec::new();
            for (s, segment) in share {
                buf.clear();
                buf.extend_from_slice(segment);
                if by_user {
                    // LSD: by rank of the user in its bin, then (stably) by item bin.
                    let mut tmp = std::mem::take(&mut buf);
                    scatter(segment, &mut tmp, users_per_bin, |r| {
                        urank[r.user as usize] as usize
                    });
                    scatter(&tmp, segment, nb, |r| ib[r.item as usize] as usize);
                    buf = tmp;
                } else {
                    scatter(&buf, segment, nb, |r| ib[r.item as usize] as usize);
                    let base = offsets[s * nb];
                    for j in 0..nb {
                        let b = s * nb + j;
                        let block = &mut segment[offsets[b] - base..offsets[b + 1] - base];
                        let mut rng = ChaCha8Rng::seed_from_u64(
                            block_seed ^ (b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        );
                        block.shuffle(&mut rng);
                    }
                }
            }
        };
        if threads == 1 {
            shares.into_iter().for_each(finish);
        } else {
            std::thread::scope(|sc| {
                for share in shares {
                    sc.spawn(|| finish(share));
                }
            });
        }
        Grid {
            nb,
            offsets,
            ratings,
            n_users,
            n_items,
        }
    }

    /// The grouped ratings, block after block.
    pub fn ratings(&self) -> &'a [Rating] {
        self.ratings
    }

    /// The ratings of block `b`.
    pub fn block(&self, b: usize) -> &'a [Rating] {
        let ratings: &'a [Rating] = self.ratings;
        &ratings[self.offsets[b]..self.offsets[b + 1]]
    }

    /// Every rating's user index is below this.
    pub fn n_users(&self) -> usize {
        self.n_users
    }

    /// Every rating's item index is below this.
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// The epoch's block order: `nb` strata of `nb` mutually independent blocks.
    pub fn schedule(&self, rng: &mut ChaCha8Rng) -> Schedule {
        let nb = self.nb;
        let mut rows: Vec<usize> = (0..nb).collect();
        let mut cols: Vec<usize> = (0..nb).collect();
        let mut shifts: Vec<usize> = (0..nb).collect();
        rows.shuffle(rng);
        cols.shuffle(rng);
        shifts.shuffle(rng);
        let strata = shifts
            .iter()
            .map(|&s| (0..nb).map(|j| rows[j] * nb + cols[(j + s) % nb]).collect())
            .collect();
        Schedule { nb, strata }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_groups_every_rating_into_its_block() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        use rand::Rng;
        let mut ratings: Vec<Rating> = (0..5000)
            .map(|_| Rating {
                user: rng.gen_range(0..97),
                item: rng.gen_range(0..53),
                value: rng.gen_range(1..=5) as f32,
            })
            .collect();
        let mut before: Vec<(u32, u32, u32)> = ratings
            .iter()
            .map(|r| (r.user, r.item, r.value.to_bits()))
            .collect();
        let grid = Grid::build(&mut ratings, 97, 53, 8, 5, 3, 2);
        let ratings = grid.ratings();
        let mut after: Vec<(u32, u32, u32)> = ratings
            .iter()
            .map(|r| (r.user, r.item, r.value.to_bits()))
            .collect();
        before.sort_unstable();
        after.sort_unstable();
        assert_eq!(before, after, "a permutation");
        assert_eq!(*grid.offsets.last().unwrap(), 5000);
        // Within a block all users share a bin: no user appears in two blocks of a row.
        for b in 0..25 {
            for r in grid.block(b) {
                for c in 0..25 {
                    if c / 5 != b / 5 {
                        assert!(grid.block(c).iter().all(|s| s.user != r.user));
                    }
                }
            }
        }
        // Every stratum covers each row and column bin exactly once.
        let schedule = grid.schedule(&mut rng);
        assert_eq!(schedule.strata().len(), 5);
        for stratum in schedule.strata() {
            let mut rows: Vec<usize> = stratum.iter().map(|b| b / 5).collect();
            let mut cols: Vec<usize> = stratum.iter().map(|b| b % 5).collect();
            rows.sort_unstable();
            cols.sort_unstable();
            assert_eq!(rows, (0..5).collect::<Vec<_>>());
            assert_eq!(cols, (0..5).collect::<Vec<_>>());
        }
    }

    #[test]
    #[should_panic]
    fn build_rejects_a_rating_outside_the_id_range() {
        let mut ratings = vec![Rating {
            user: 7,
            item: 0,
            value: 3.0,
        }];
        Grid::build(&mut ratings, 7, 1, 4, 2, 1, 1);
    }
}
