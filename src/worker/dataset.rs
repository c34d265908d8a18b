//! The store → engine adapter: database rows become the engine's training set and a
//! holdout chosen by a seeded hash of each (user, item) pair.

use crate::store::TrainingRows;
use funkrec_engine::{Dataset, Rating};
use sha2::{Digest, Sha256};

/// Below this many ratings nothing is held out (the sample would say nothing).
const MIN_RATINGS_FOR_HOLDOUT: usize = 20;

/// A seeded 64-bit hash of one external id (`side` keeps user and item ids apart).
fn id_hash(seed: u64, side: u8, id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update([side]);
    h.update(id.as_bytes());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// The holdout hash of a pair from its two id hashes (splitmix64's finaliser).
fn pair_hash(user: u64, item: u64) -> u64 {
    let mut z = user ^ item.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash threshold of a holdout of `fraction` of `n` ratings, capped at `max`
/// (expected count): a pair is held out when its hash is below it.
pub fn holdout_threshold(n: usize, fraction: f64, max: usize) -> u64 {
    if n < MIN_RATINGS_FOR_HOLDOUT || fraction <= 0.0 || max == 0 {
        return 0;
    }
    let f = fraction.min(max as f64 / n as f64).clamp(0.0, 1.0);
    (f * u64::MAX as f64) as u64
}

/// Whether the pair (`user`, `item`), by external ids, is in the holdout of `seed`
/// at `threshold` ([`holdout_threshold`]). It depends on nothing else, so a pair
/// stays in or out as the data grows, across restarts and on every replica.
pub fn is_held_out(seed: u64, threshold: u64, user: &str, item: &str) -> bool {
    pair_hash(id_hash(seed, b'u', user), id_hash(seed, b'i', item)) < threshold
}

/// Builds the training set and the holdout from database rows: a rating is held
/// out when the seeded hash of its (user id, item id) is below the threshold of
/// `fraction` (lowered to expect at most `max` pairs; should the hash still pick
/// more, those with the largest hashes train). Nothing is held out below 20 ratings.
///
/// The id maps contain only users and items seen in training; holdout ratings
/// of ids the model never saw use `u32::MAX` (scored as unknown).
pub fn split(rows: &TrainingRows, fraction: f64, max: usize, seed: u64) -> (Dataset, Vec<Rating>) {
    let s = split_for(rows, fraction, max, seed, None);
    (s.data, s.holdout)
}

/// What [`split_for`] returns.
pub struct Split {
    pub data: Dataset,
    /// The held-out ratings, indexed by `data`'s id maps.
    pub holdout: Vec<Rating>,
    /// The same ratings indexed by the id maps of the model passed in (the serving
    /// one), to score it on the same holdout; None when no model was passed.
    pub holdout_for: Option<Vec<Rating>>,
}

/// [`split`], plus the holdout indexed for another model's id maps (the publish
/// gate scores the serving model on the new run's holdout).
pub fn split_for(
    rows: &TrainingRows,
    fraction: f64,
    max: usize,
    seed: u64,
    other: Option<&funkrec_engine::Model>,
) -> Split {
    let n = rows.ratings.len();
    let threshold = holdout_threshold(n, fraction, max);
    let hashes = |pairs: &[(i64, String)], side: u8| -> Vec<u64> {
        let max_key = pairs.iter().map(|p| p.0).max().unwrap_or(0).max(0) as usize;
        let mut v = vec![0u64; max_key + 1];
        if threshold > 0 {
            for (key, id) in pairs.iter().filter(|p| p.0 >= 0) {
                v[*key as usize] = id_hash(seed, side, id);
            }
        }
        v
    };
    let (user_hash, item_hash) = (hashes(&rows.users, b'u'), hashes(&rows.items, b'i'));
    let mut held = vec![false; n];
    if threshold > 0 {
        let mut picked: Vec<(u64, usize)> = Vec::new();
        for (idx, &(u, i, _)) in rows.ratings.iter().enumerate() {
            let (Some(&hu), Some(&hi)) = (user_hash.get(u as usize), item_hash.get(i as usize))
            else {
                continue;
            };
            let h = pair_hash(hu, hi);
            if h < threshold {
                picked.push((h, idx));
            }
        }
        let cap = max.min(n - 1);
        if picked.len() > cap {
            picked.select_nth_unstable(cap);
            picked.truncate(cap);
        }
        for (_, idx) in picked {
            held[idx] = true;
        }
    }
    let k = held.iter().filter(|&&h| h).count();
    let names = |pairs: &[(i64, String)]| -> Vec<Option<u32>> {
        let max_key = pairs.iter().map(|p| p.0).max().unwrap_or(0).max(0) as usize;
        let mut v = vec![None; max_key + 1];
        for (pos, (key, _)) in pairs.iter().enumerate() {
            if *key >= 0 {
                v[*key as usize] = Some(pos as u32);
            }
        }
        v
    };
    let user_pos = names(&rows.users);
    let item_pos = names(&rows.items);
    let mut user_dense = vec![u32::MAX; user_pos.len()];
    let mut item_dense = vec![u32::MAX; item_pos.len()];
    let mut data = Dataset::new();
    data.ratings.reserve(n - k);
    for (idx, &(u, i, value)) in rows.ratings.iter().enumerate() {
        if held[idx] {
            continue;
        }
        let (u, i) = (u as usize, i as usize);
        // A key without a row cannot happen with one consistent read; skip it anyway.
        let (Some(Some(up)), Some(Some(ip))) = (user_pos.get(u), item_pos.get(i)) else {
            continue;
        };
        if user_dense[u] == u32::MAX {
            user_dense[u] = data.users.intern(&rows.users[*up as usize].1);
        }
        if item_dense[i] == u32::MAX {
            item_dense[i] = data.items.intern(&rows.items[*ip as usize].1);
        }
        data.ratings.push(Rating {
            user: user_dense[u],
            item: item_dense[i],
            value,
        });
    }
    let held_rows = || {
        rows.ratings
            .iter()
            .enumerate()
            .filter(|(idx, _)| held[*idx])
            .map(|(_, r)| *r)
    };
    let holdout = held_rows()
        .map(|(u, i, value)| Rating {
            user: user_dense.get(u as usize).copied().unwrap_or(u32::MAX),
            item: item_dense.get(i as usize).copied().unwrap_or(u32::MAX),
            value,
        })
        .collect();
    let holdout_for = other.map(|m| {
        let index = |pos: &[Option<u32>],
                     names: &[(i64, String)],
                     map: &funkrec_engine::IdMap,
                     key: u32| {
            pos.get(key as usize)
                .copied()
                .flatten()
                .and_then(|p| map.get(&names[p as usize].1))
                .unwrap_or(u32::MAX)
        };
        held_rows()
            .map(|(u, i, value)| Rating {
                user: index(&user_pos, &rows.users, &m.users, u),
                item: index(&item_pos, &rows.items, &m.items, i),
                value,
            })
            .collect()
    });
    Split {
        data,
        holdout,
        holdout_for,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n_users: i64, n_items: i64) -> TrainingRows {
        let users = (1..=n_users).map(|k| (k, format!("u{k}"))).collect();
        let items = (1..=n_items).map(|k| (k, format!("i{k}"))).collect();
        let mut ratings = Vec::new();
        for u in 1..=n_users {
            for i in 1..=n_items {
                ratings.push((u as u32, i as u32, ((u + i) % 5 + 1) as f32));
            }
        }
        TrainingRows {
            users,
            items,
            ratings,
            ..Default::default()
        }
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let r = rows(40, 40);
        let (d1, h1) = split(&r, 0.1, 1000, 7);
        let (d2, h2) = split(&r, 0.1, 1000, 7);
        // a hash threshold, not an exact count: about 10 % of 1,600
        assert!((110..=210).contains(&h1.len()), "{}", h1.len());
        assert_eq!(d1.len() + h1.len(), 1600);
        assert_eq!(h1, h2);
        assert_eq!(d1.ratings, d2.ratings);
        let (_, h3) = split(&r, 0.1, 1000, 8);
        assert_ne!(h1, h3, "another seed draws another sample");
        // every training rating maps back to its original value
        for rt in &d1.ratings {
            let u: i64 = d1.users.id(rt.user)[1..].parse().unwrap();
            let i: i64 = d1.items.id(rt.item)[1..].parse().unwrap();
            assert_eq!(rt.value, ((u + i) % 5 + 1) as f32);
        }
    }

    /// The held-out pairs of `rows`, by external ids.
    fn held_pairs(r: &TrainingRows, fraction: f64, max: usize, seed: u64) -> Vec<(String, String)> {
        let threshold = holdout_threshold(r.ratings.len(), fraction, max);
        let mut v: Vec<(String, String)> = r
            .ratings
            .iter()
            .map(|&(u, i, _)| (format!("u{u}"), format!("i{i}")))
            .filter(|(u, i)| is_held_out(seed, threshold, u, i))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn adding_ratings_never_moves_an_old_pair() {
        let small = rows(30, 30);
        // a larger set: new users and new items, listed in another order
        let big = {
            let mut b = rows(60, 50);
            b.ratings.sort_by_key(|&(u, i, _)| (i, u));
            b
        };
        // the threshold depends on the fraction and the seed alone (the cap is not hit)
        let f_big = 0.05;
        assert_eq!(
            holdout_threshold(small.ratings.len(), 0.05, 1_000_000),
            holdout_threshold(big.ratings.len(), f_big, 1_000_000)
        );
        let old: std::collections::HashSet<(String, String)> = small
            .ratings
            .iter()
            .map(|&(u, i, _)| (format!("u{u}"), format!("i{i}")))
            .collect();
        let (_, h_small) = split(&small, 0.05, 1_000_000, 3);
        let (d_big, h_big) = split(&big, f_big, 1_000_000, 3);
        assert!(!h_small.is_empty());
        let in_small = held_pairs(&small, 0.05, 1_000_000, 3);
        assert_eq!(in_small.len(), h_small.len());
        let in_big: Vec<(String, String)> = held_pairs(&big, f_big, 1_000_000, 3)
            .into_iter()
            .filter(|p| old.contains(p))
            .collect();
        assert_eq!(
            in_small, in_big,
            "old pairs are held out in both or in neither"
        );
        // and split agrees with is_held_out: the big training set has none of them
        for (u, i) in &in_small {
            let (Some(uk), Some(ik)) = (d_big.users.get(u), d_big.items.get(i)) else {
                continue;
            };
            assert!(!d_big.ratings.iter().any(|r| r.user == uk && r.item == ik));
        }
        assert_eq!(d_big.len() + h_big.len(), big.ratings.len());
    }

    #[test]
    fn tiny_sets_hold_nothing_out_and_max_caps() {
        let (d, h) = split(&rows(2, 3), 0.4, 1000, 1);
        assert!(h.is_empty());
        assert_eq!(d.len(), 6);
        let (_, h) = split(&rows(10, 10), 0.4, 5, 1);
        assert!(!h.is_empty() && h.len() <= 5, "{}", h.len());
        // the cap lowers the threshold: the capped holdout is a subset of the uncapped
        let capped = held_pairs(&rows(40, 40), 0.2, 50, 1);
        let full = held_pairs(&rows(40, 40), 0.2, 100_000, 1);
        assert!(capped.len() < full.len());
        assert!(capped.iter().all(|p| full.contains(p)));
    }

    #[test]
    fn ratings_without_id_rows_are_skipped() {
        let mut r = rows(3, 3);
        r.ratings.push((77, 1, 4.0));
        r.ratings.push((1, 1000, 4.0));
        let (d, h) = split(&r, 0.0, 0, 1);
        assert!(h.is_empty());
        assert_eq!(d.len(), 9);
    }

    #[test]
    fn holdout_of_unseen_user_is_unknown() {
        let mut r = rows(5, 5);
        r.users.push((99, "lonely".into()));
        r.ratings.push((99u32, 1u32, 3.0));
        let lonely = r.ratings.len() - 1;
        // the first seed whose sample holds out the lonely user's only rating
        let (d, h) = (0..1000)
            .map(|seed| split(&r, 0.3, 1000, seed))
            .find(|(d, _)| d.users.get("lonely").is_none() && d.items.get("i1").is_some())
            .expect("some seed holds the lonely rating out");
        assert_eq!(d.len() + h.len(), r.ratings.len());
        let held = h
            .iter()
            .find(|rt| rt.user == u32::MAX)
            .expect("the lonely rating is in the holdout, as an unknown user");
        assert_eq!(held.value, r.ratings[lonely].2);
        assert_eq!(d.items.id(held.item), "i1", "its item is known");
        // every other held-out rating maps back to its own ids and value
        for rt in h.iter().filter(|rt| rt.user != u32::MAX) {
            let u: i64 = d.users.id(rt.user)[1..].parse().unwrap();
            let i: i64 = d.items.id(rt.item)[1..].parse().unwrap();
            assert_eq!(rt.value, ((u + i) % 5 + 1) as f32);
        }
    }
}
