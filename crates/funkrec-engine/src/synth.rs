//! Netflix-shaped synthetic ratings: a planted biased low-rank model plus
//! Gaussian noise, heavy-tailed item popularity and user activity, ratings
//! rounded into 1–5, streamed to a writer (nothing but the model is held in
//! memory: O((users + items)·factors), never O(ratings)).
//!
//! * r = round(μ + b_u + b_i + p_u·q_i + ε) clamped to 1..=5, with μ = 3.6,
//!   b_u ~ N(0, 0.3²), b_i ~ N(0, 0.4²), p_u, q_i ~ N(0, σ²·I) such that p·q has
//!   standard deviation 0.8, ε ~ N(0, noise²).
//! * Item popularity w_i = exp(1.5·z_i), z_i ~ N(0, 1) (log-normal: a few
//!   blockbusters, a long tail). User activity a_u = exp(1.2·z_u); user u gets
//!   n_u ≈ R·a_u/Σa ratings, at least 1 and at most items/2, adjusted so the
//!   total is exactly R (R must be ≤ users·items/2).
//! * Each user's items are distinct: drawn ∝ w_i with an alias table and a
//!   per-user bitset rejecting repeats; users with n_u > items/8 use weighted
//!   sampling without replacement (Efraimidis–Spirakis keys) instead, so no
//!   (user, item) pair is ever written twice.
//! * Output is tab-separated `user<TAB>item<TAB>rating<TAB>timestamp`, ids
//!   1-based, grouped by user. With a holdout fraction, each rating goes to the
//!   holdout writer instead with that probability.

use fixedbitset::FixedBitSet;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, WeightedAliasIndex};
use std::io::{self, Write};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    pub users: u32,
    pub items: u32,
    pub ratings: u64,
    pub factors: usize,
    /// Standard deviation of the Gaussian noise before rounding.
    pub noise: f32,
    pub seed: u64,
    /// Probability that a rating goes to the holdout writer (0 = none).
    pub holdout: f64,
}

impl SynthSpec {
    /// The Netflix Prize shape: 480,189 users × 17,770 items, 100,480,507 ratings.
    pub fn netflix(factors: usize, noise: f32, seed: u64) -> Self {
        SynthSpec {
            users: 480_189,
            items: 17_770,
            ratings: 100_480_507,
            factors,
            noise,
            seed,
            holdout: 0.0,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.users == 0 || self.items == 0 {
            return Err("users and items must be > 0".into());
        }
        if self.factors == 0 || self.factors > 4096 {
            return Err(format!("factors must be in 1..=4096, got {}", self.factors));
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(format!("noise must be finite and >= 0, got {}", self.noise));
        }
        if !(0.0..1.0).contains(&self.holdout) {
            return Err(format!("holdout must be in [0, 1), got {}", self.holdout));
        }
        let cap = (self.items as u64 / 2).max(1);
        if self.ratings < self.users as u64 || self.ratings > cap * self.users as u64 {
            return Err(format!(
                "ratings must be between users ({}) and users·max(1, items/2) ({})",
                self.users,
                cap * self.users as u64
            ));
        }
        Ok(())
    }
}

/// Counts of what was written.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SynthSummary {
    pub train: u64,
    pub holdout: u64,
    /// How many ratings of each value 1..=5 (index 0 = rating 1).
    pub histogram: [u64; 5],
}

/// Ratings per user: heavy-tailed, each in 1..=cap, summing to exactly `total`.
fn activity(rng: &mut ChaCha8Rng, users: usize, total: u64, cap: u32) -> Vec<u32> {
    let z = Normal::new(0.0f64, 1.2).expect("finite");
    let a: Vec<f64> = (0..users).map(|_| z.sample(rng).exp()).collect();
    let sum: f64 = a.iter().sum();
    let mut n: Vec<u32> = a
        .iter()
        .map(|x| ((total as f64 * x / sum).round() as u64).clamp(1, cap as u64) as u32)
        .collect();
    let mut have: u64 = n.iter().map(|&x| x as u64).sum();
    while have != total {
        let u = rng.gen_range(0..users);
        if have < total && n[u] < cap {
            n[u] += 1;
            have += 1;
        } else if have > total && n[u] > 1 {
            n[u] -= 1;
            have -= 1;
        }
    }
    n
}

fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Writes the synthetic ratings; `on_progress` gets the number written so far
/// every million ratings or so.
pub fn write_synthetic<W: Write, H: Write>(
    spec: &SynthSpec,
    out: &mut W,
    mut holdout: Option<&mut H>,
    on_progress: &mut dyn FnMut(u64),
) -> io::Result<SynthSummary> {
    spec.validate()
        .map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    let (nu, ni, k) = (spec.users as usize, spec.items as usize, spec.factors);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    // Planted model.
    let std_f = (0.8f64 * 0.8 / k as f64).powf(0.25) as f32;
    let nf = Normal::new(0.0f32, std_f).expect("finite");
    let p: Vec<f32> = (0..nu * k).map(|_| nf.sample(&mut rng)).collect();
    let q: Vec<f32> = (0..ni * k).map(|_| nf.sample(&mut rng)).collect();
    let nbu = Normal::new(0.0f32, 0.3).expect("finite");
    let nbi = Normal::new(0.0f32, 0.4).expect("finite");
    let bu: Vec<f32> = (0..nu).map(|_| nbu.sample(&mut rng)).collect();
    let bi: Vec<f32> = (0..ni).map(|_| nbi.sample(&mut rng)).collect();
    let noise = Normal::new(0.0f32, spec.noise).expect("finite");
    // Skew.
    let zi = Normal::new(0.0f64, 1.5).expect("finite");
    let weights: Vec<f64> = (0..ni).map(|_| zi.sample(&mut rng).exp()).collect();
    let alias = WeightedAliasIndex::new(weights.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let cap = (spec.items / 2).max(1);
    let counts = activity(&mut rng, nu, spec.ratings, cap);

    // Items already drawn for the current user (cleared after each user).
    let mut seen = FixedBitSet::with_capacity(ni);
    let mut chosen: Vec<u32> = Vec::new();
    let mut keyed: Vec<(f64, u32)> = Vec::new();
    let mut line = Vec::with_capacity(64);
    let mut sum = SynthSummary::default();
    let mut written = 0u64;
    let mut next_report = 1u64 << 20;
    for (u, &n) in counts.iter().enumerate() {
        chosen.clear();
        if n as usize * 8 <= ni {
            while chosen.len() < n as usize {
                let i = alias.sample(&mut rng);
                if !seen.put(i) {
                    chosen.push(i as u32);
                }
            }
            for &i in &chosen {
                seen.set(i as usize, false);
            }
        } else {
            // Efraimidis–Spirakis: the n largest ln(U)/w_i are a weighted sample
            // without replacement.
            keyed.clear();
            keyed.extend(weights.iter().enumerate().map(|(i, &w)| {
                let x: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
                (x.ln() / w, i as u32)
            }));
            let n = n as usize;
            keyed.select_nth_unstable_by(n - 1, |a, b| b.0.total_cmp(&a.0));
            chosen.extend(keyed[..n].iter().map(|x| x.1));
        }
        let pu = &p[u * k..(u + 1) * k];
        for &i in &chosen {
            let qi = &q[i as usize * k..(i as usize + 1) * k];
            let dot: f32 = pu.iter().zip(qi).map(|(a, b)| a * b).sum();
            let raw = 3.6 + bu[u] + bi[i as usize] + dot + noise.sample(&mut rng);
            let r = raw.round().clamp(1.0, 5.0) as u64;
            let ts = 946_684_800 + rng.gen_range(0..189_216_000u64);
            line.clear();
            push_u64(&mut line, u as u64 + 1);
            line.push(b'\t');
            push_u64(&mut line, i as u64 + 1);
            line.push(b'\t');
            push_u64(&mut line, r);
            line.push(b'\t');
            push_u64(&mut line, ts);
            line.push(b'\n');
            sum.histogram[r as usize - 1] += 1;
            let to_holdout = spec.holdout > 0.0 && rng.gen_bool(spec.holdout);
            match (&mut holdout, to_holdout) {
                (Some(h), true) => {
                    h.write_all(&line)?;
                    sum.holdout += 1;
                }
                _ => {
                    out.write_all(&line)?;
                    sum.train += 1;
                }
            }
            written += 1;
        }
        if written >= next_report {
            on_progress(written);
            next_report = written + (1 << 20);
        }
    }
    on_progress(written);
    out.flush()?;
    if let Some(h) = holdout {
        h.flush()?;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn spec() -> SynthSpec {
        SynthSpec {
            users: 2000,
            items: 500,
            ratings: 60_000,
            factors: 8,
            noise: 0.5,
            seed: 11,
            holdout: 0.0,
        }
    }

    fn generate(s: &SynthSpec) -> Vec<u8> {
        let mut out = Vec::new();
        write_synthetic::<_, Vec<u8>>(s, &mut out, None, &mut |_| {}).unwrap();
        out
    }

    #[test]
    fn counts_range_uniqueness_and_determinism() {
        let s = spec();
        let a = generate(&s);
        assert_eq!(a, generate(&s), "same seed, same bytes");
        assert_ne!(
            a,
            generate(&SynthSpec {
                seed: 12,
                ..s.clone()
            })
        );
        let text = String::from_utf8(a).unwrap();
        let mut pairs = HashSet::new();
        let mut per_item: HashMap<u32, u64> = HashMap::new();
        let mut per_user: HashMap<u32, u64> = HashMap::new();
        let mut n = 0u64;
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 4);
            let (u, i, r): (u32, u32, u32) = (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            );
            assert!((1..=s.users).contains(&u) && (1..=s.items).contains(&i));
            assert!((1..=5).contains(&r), "rating {r}");
            f[3].parse::<u64>().unwrap();
            assert!(pairs.insert((u, i)), "duplicate pair {u},{i}");
            *per_item.entry(i).or_default() += 1;
            *per_user.entry(u).or_default() += 1;
            n += 1;
        }
        assert_eq!(n, s.ratings);
        assert_eq!(per_user.len(), s.users as usize, "every user rates");
        // Skew: the top 10% of items take far more than 10% of the ratings.
        let share = |m: &HashMap<u32, u64>, of: usize| {
            let mut c: Vec<u64> = m.values().copied().collect();
            c.sort_unstable_by(|a, b| b.cmp(a));
            c[..of / 10].iter().sum::<u64>() as f64 / n as f64
        };
        let items = share(&per_item, s.items as usize);
        let users = share(&per_user, s.users as usize);
        assert!(items > 0.35, "top 10% items hold {items:.2}");
        assert!(users > 0.3, "top 10% users hold {users:.2}");
    }

    #[test]
    fn holdout_splits_and_heavy_users_stay_distinct() {
        // Few items: many users exceed items/8 and take the without-replacement path.
        let s = SynthSpec {
            users: 300,
            items: 40,
            ratings: 4000,
            holdout: 0.2,
            ..spec()
        };
        let (mut tr, mut ho) = (Vec::new(), Vec::new());
        let sum = write_synthetic(&s, &mut tr, Some(&mut ho), &mut |_| {}).unwrap();
        assert_eq!(sum.train + sum.holdout, 4000);
        assert!(sum.holdout > 600 && sum.holdout < 1000, "{}", sum.holdout);
        assert_eq!(sum.histogram.iter().sum::<u64>(), 4000);
        let mut pairs = HashSet::new();
        for line in String::from_utf8(tr)
            .unwrap()
            .lines()
            .chain(String::from_utf8(ho).unwrap().lines())
        {
            let f: Vec<&str> = line.split('\t').collect();
            assert!(pairs.insert((f[0].to_owned(), f[1].to_owned())));
        }
        assert!(SynthSpec {
            ratings: 300 * 21,
            ..s
        }
        .validate()
        .is_err());
    }
}
