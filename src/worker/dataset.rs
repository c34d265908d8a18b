//! The store → engine adapter: database rows become the engine's training set and a
//! seeded holdout sample.

use crate::store::TrainingRows;
use funkrec_engine::{Dataset, Rating};
use rand::SeedableRng;

/// Below this many ratings nothing is held out (the sample would say nothing).
const MIN_RATINGS_FOR_HOLDOUT: usize = 20;

/// Builds the training set and a seeded holdout sample from database rows.
///
/// The id maps contain only users and items seen in training; holdout ratings
/// of ids the model never saw use `u32::MAX` (scored as unknown).
pub fn split(rows: &TrainingRows, fraction: f64, max: usize, seed: u64) -> (Dataset, Vec<Rating>) {
    let n = rows.ratings.len();
    let k = if n < MIN_RATINGS_FOR_HOLDOUT {
        0
    } else {
        ((n as f64 * fraction).round() as usize).min(max).min(n - 1)
    };
    let mut held = vec![false; n];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for i in rand::seq::index::sample(&mut rng, n, k) {
        held[i] = true;
    }
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
    let holdout = rows
        .ratings
        .iter()
        .enumerate()
        .filter(|(idx, _)| held[*idx])
        .map(|(_, &(u, i, value))| Rating {
            user: user_dense.get(u as usize).copied().unwrap_or(u32::MAX),
            item: item_dense.get(i as usize).copied().unwrap_or(u32::MAX),
            value,
        })
        .collect();
    (data, holdout)
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
        let r = rows(10, 10);
        let (d1, h1) = split(&r, 0.1, 1000, 7);
        let (d2, h2) = split(&r, 0.1, 1000, 7);
        assert_eq!(h1.len(), 10);
        assert_eq!(d1.len(), 90);
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

    #[test]
    fn tiny_sets_hold_nothing_out_and_max_caps() {
        let (d, h) = split(&rows(2, 3), 0.4, 1000, 1);
        assert!(h.is_empty());
        assert_eq!(d.len(), 6);
        let (_, h) = split(&rows(10, 10), 0.4, 5, 1);
        assert_eq!(h.len(), 5);
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
