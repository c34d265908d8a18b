//! Which items a user has rated, without a database query per request: a per-snapshot index plus the writes since.
//!
//! * [`RatedIndex`] is built from the rows a training run (or the start-up load) read
//!   from the store, in the model's item index space, and is stored in the snapshot.
//! * [`RecentWrites`] records every committed write and delete (the group-commit
//!   writer records them, in commit order, before answering). Each commit gets a
//!   sequence number; a snapshot remembers the number current when its rows were read
//!   (`since`), so a user with no recorded operation after it has rated what the index
//!   says, and a user with one ([`RecentWrites::last_change`]) is folded in, their
//!   rated set read with the ratings the fold solves from (`crate::foldin`). The
//!   recorded operations of a pair (the latest wins) are kept for inspection
//!   ([`RecentWrites::changes_since`]).
//! * Entries a published snapshot already covers are pruned. If the recent writes grow
//!   beyond [`MAX_RECENT`] they are dropped; [`RecentWrites::floor`] then says which
//!   snapshots can no longer be completed from memory, and the caller falls back to the
//!   store.
//! * Alongside, for the dashboard's Ingestion section: the ratings written per minute
//!   over the last hour ([`RecentWrites::written_per_minute`], counted where the writer
//!   records its commits) and the rating distribution of a snapshot's rows
//!   ([`RatedIndex::histogram`], counted once when the index is built).

use crate::store::TrainingRows;
use fixedbitset::FixedBitSet;
use funkrec_engine::{IdMap, Model};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

/// Pairs kept in [`RecentWrites`] before it gives up (and readers query the store
/// until the next snapshot). About 100 bytes each.
pub const MAX_RECENT: usize = 500_000;

/// Items each user had rated when a snapshot's rows were read (model index space).
#[derive(Debug, Default)]
pub struct RatedIndex {
    /// By model user index: sorted model item indices.
    known: Vec<Box<[u32]>>,
    /// Users the model does not know (e.g. all their ratings were held out).
    other: HashMap<String, Box<[u32]>>,
    /// (rating rounded to the nearest half, count) over every row read, by rating.
    histogram: Vec<(f32, u64)>,
}

impl RatedIndex {
    /// From training rows (ordered by user key) and the model's id maps; items the
    /// model does not know are left out (they are never recommended anyway).
    pub fn build(rows: &TrainingRows, users: &IdMap, items: &IdMap) -> RatedIndex {
        let dense = |pairs: &[(i64, String)], map: &IdMap| -> HashMap<u32, Option<u32>> {
            pairs
                .iter()
                .filter_map(|(k, id)| Some((u32::try_from(*k).ok()?, map.get(id))))
                .collect()
        };
        let item_of = dense(&rows.items, items);
        let user_name: HashMap<u32, &str> = rows
            .users
            .iter()
            .filter_map(|(k, id)| Some((u32::try_from(*k).ok()?, id.as_str())))
            .collect();
        let mut known: Vec<Vec<u32>> = vec![Vec::new(); users.len()];
        let mut other: HashMap<String, Vec<u32>> = HashMap::new();
        let mut current: Option<(u32, Option<u32>)> = None;
        for &(u, i, _) in &rows.ratings {
            let Some(Some(item)) = item_of.get(&i).copied() else {
                continue;
            };
            let slot = match current {
                Some((key, slot)) if key == u => slot,
                _ => {
                    let Some(name) = user_name.get(&u) else {
                        continue;
                    };
                    let slot = users.get(name);
                    if slot.is_none() {
                        other.entry((*name).to_owned()).or_default();
                    }
                    current = Some((u, slot));
                    slot
                }
            };
            match slot {
                Some(s) => known[s as usize].push(item),
                None => {
                    if let Some(v) = user_name.get(&u).and_then(|n| other.get_mut(*n)) {
                        v.push(item);
                    }
                }
            }
        }
        let seal = |mut v: Vec<u32>| {
            v.sort_unstable();
            v.dedup();
            v.into_boxed_slice()
        };
        RatedIndex {
            known: known.into_iter().map(seal).collect(),
            other: other.into_iter().map(|(k, v)| (k, seal(v))).collect(),
            histogram: histogram(&rows.ratings),
        }
    }

    /// How many of the rows read had each rating (rounded to the nearest half), by rating.
    pub fn histogram(&self) -> &[(f32, u64)] {
        &self.histogram
    }

    /// Items `user` (model index `index`, if known) had rated.
    pub fn items(&self, user: &str, index: Option<u32>) -> &[u32] {
        match index {
            Some(u) => self.known.get(u as usize).map(|b| &b[..]).unwrap_or(&[]),
            None => self.other.get(user).map(|b| &b[..]).unwrap_or(&[]),
        }
    }
}

/// (rating rounded to the nearest half, count), by rating: one pass over the rows.
fn histogram(ratings: &[(u32, u32, f32)]) -> Vec<(f32, u64)> {
    let mut halves: std::collections::BTreeMap<i64, u64> = Default::default();
    for &(_, _, r) in ratings {
        if r.is_finite() {
            *halves.entry((r * 2.0).round() as i64).or_default() += 1;
        }
    }
    halves
        .into_iter()
        .map(|(h, n)| (h as f32 / 2.0, n))
        .collect()
}

/// Minutes of per-minute write counts kept.
pub const MINUTES: usize = 60;

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    rated: bool,
}

/// One user's recorded operations, by item, and the largest sequence number among
/// them (what a request asks first: did this user change since the snapshot?).
#[derive(Debug, Default)]
struct UserWrites {
    last: u64,
    items: foldhash::HashMap<String, Entry>,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    floor: u64,
    len: usize,
    /// foldhash (seeded per process): these hashes are on the write path.
    by_user: foldhash::HashMap<String, UserWrites>,
    /// Ring of (Unix minute, ratings written in it), slot = minute % [`MINUTES`].
    minutes: Vec<(u64, u64)>,
}

/// Committed writes and deletes since the oldest snapshot still completed from memory,
/// and a count of every rating change committed since start (what retraining waits for).
#[derive(Debug, Default)]
pub struct RecentWrites {
    inner: Mutex<Inner>,
    /// Ratings written plus ratings deleted, over every recorded commit.
    changes: AtomicU64,
    /// Woken after each recorded commit.
    changed: Notify,
}

impl RecentWrites {
    pub fn new() -> Self {
        Self::default()
    }

    /// The sequence number of the last recorded commit. Read it *before* reading rows
    /// for a snapshot: every commit with a larger number may be missing from them.
    pub fn seq(&self) -> u64 {
        self.inner.lock().unwrap().seq
    }

    /// Snapshots whose `since` is below this cannot be completed from memory.
    pub fn floor(&self) -> u64 {
        self.inner.lock().unwrap().floor
    }

    /// Rating changes (writes and deletes) committed since start.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Completes after the next recorded commit (or at once if one was recorded since
    /// the last waiter was woken): the retrain policy waits on this.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Records one committed transaction: `rated` pairs written, or deleted when false.
    /// The writer calls this after the commit and before answering the requests.
    pub fn record<'a>(&self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>, rated: bool) {
        let n = self.record_pairs(pairs, rated, unix_minute());
        self.changes.fetch_add(n, Ordering::AcqRel);
        self.changed.notify_one();
    }

    fn record_pairs<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        rated: bool,
        minute: u64,
    ) -> u64 {
        let mut n = 0;
        let mut g = self.inner.lock().unwrap();
        g.seq += 1;
        let seq = g.seq;
        let Inner { len, by_user, .. } = &mut *g;
        for (user, item) in pairs {
            n += 1;
            let writes = match by_user.get_mut(user) {
                Some(m) => m,
                None => by_user.entry(user.to_owned()).or_default(),
            };
            writes.last = seq;
            let items = &mut writes.items;
            match items.get_mut(item) {
                Some(e) => *e = Entry { seq, rated },
                None => {
                    items.insert(item.to_owned(), Entry { seq, rated });
                    *len += 1;
                }
            }
        }
        if rated && n > 0 {
            if g.minutes.is_empty() {
                g.minutes = vec![(0, 0); MINUTES];
            }
            let slot = &mut g.minutes[(minute % MINUTES as u64) as usize];
            if slot.0 != minute {
                *slot = (minute, 0);
            }
            slot.1 += n;
        }
        if g.len > MAX_RECENT {
            tracing::warn!(
                pairs = g.len,
                "too many writes since the last snapshot to track in memory: rated items \
                 are read from the store until the next snapshot"
            );
            g.by_user.clear();
            g.len = 0;
            g.floor = seq;
        }
        n
    }

    /// Ratings written (committed by this process; deletions not counted) in each of
    /// the last [`MINUTES`] minutes, oldest first; the last is the current minute, so far.
    pub fn written_per_minute(&self) -> Vec<u64> {
        self.written_per_minute_at(unix_minute())
    }

    fn written_per_minute_at(&self, now: u64) -> Vec<u64> {
        let g = self.inner.lock().unwrap();
        (0..MINUTES as u64)
            .rev()
            .map(|ago| {
                let Some(minute) = now.checked_sub(ago) else {
                    return 0;
                };
                match g.minutes.get((minute % MINUTES as u64) as usize) {
                    Some(&(m, n)) if m == minute => n,
                    _ => 0,
                }
            })
            .collect()
    }

    /// Forgets what a snapshot with `since` covers (called once it is published).
    pub fn prune(&self, since: u64) {
        let mut g = self.inner.lock().unwrap();
        if since <= g.floor {
            return;
        }
        g.floor = since;
        let mut removed = 0;
        // `last` stays right: if any entry is left, the latest one is
        g.by_user.retain(|_, w| {
            let before = w.items.len();
            w.items.retain(|_, e| e.seq > since);
            removed += before - w.items.len();
            !w.items.is_empty()
        });
        g.len -= removed;
    }

    /// The sequence number of the user's latest operation recorded after `since`
    /// (`Some(None)`: none). None when entries after `since` may have been dropped.
    pub fn last_change(&self, user: &str, since: u64) -> Option<Option<u64>> {
        let g = self.inner.lock().unwrap();
        if since < g.floor {
            return None;
        }
        Some(g.by_user.get(user).map(|w| w.last).filter(|&s| s > since))
    }

    /// Calls `apply(item, rated)` for the user's latest operation on each pair recorded
    /// after `since`. False when entries after `since` may have been dropped (the
    /// caller must ask the store instead).
    pub fn changes_since(&self, user: &str, since: u64, mut apply: impl FnMut(&str, bool)) -> bool {
        let g = self.inner.lock().unwrap();
        if since < g.floor {
            return false;
        }
        if let Some(w) = g.by_user.get(user) {
            for (item, e) in &w.items {
                if e.seq > since {
                    apply(item, e.rated);
                }
            }
        }
        true
    }
}

/// Minutes since the Unix epoch.
fn unix_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// Model item indices as a bit set over the model's items.
pub fn item_bits(model: &Model, items: &[u32]) -> FixedBitSet {
    let mut bits = FixedBitSet::with_capacity(model.n_items());
    for &i in items {
        bits.insert(i as usize);
    }
    bits
}

/// The model's items among the external ids `items` (unknown ones skipped), as a bit set.
pub fn item_set<S: AsRef<str>>(model: &Model, items: impl IntoIterator<Item = S>) -> FixedBitSet {
    let mut bits = FixedBitSet::with_capacity(model.n_items());
    for item in items {
        if let Some(i) = model.items.get(item.as_ref()) {
            bits.insert(i as usize);
        }
    }
    bits
}

/// Whether item `i` is in the set (false past its end).
pub fn contains(bits: &FixedBitSet, i: u32) -> bool {
    bits.contains(i as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The items a user has rated now, as a bit set over the snapshot model's items:
    /// the index of the snapshot plus the recent writes. None when the recent writes
    /// no longer reach back to the snapshot (ask the store).
    fn rated_now(
        model: &Model,
        index: &RatedIndex,
        since: u64,
        recent: &RecentWrites,
        user: &str,
        user_index: Option<u32>,
    ) -> Option<FixedBitSet> {
        let mut bits = item_bits(model, index.items(user, user_index));
        let complete = recent.changes_since(user, since, |item, rated| {
            if let Some(i) = model.items.get(item) {
                bits.set(i as usize, rated);
            }
        });
        complete.then_some(bits)
    }

    fn ids(names: &[&str]) -> IdMap {
        let mut m = IdMap::new();
        for n in names {
            m.intern(n);
        }
        m
    }

    #[test]
    fn index_maps_keys_to_model_indices_and_keeps_unknown_users() {
        let rows = TrainingRows {
            users: vec![(1, "a".into()), (2, "ghost".into()), (3, "b".into())],
            items: vec![(10, "x".into()), (11, "y".into()), (12, "held".into())],
            ratings: vec![
                (1, 10, 4.0),
                (1, 12, 3.0),
                (2, 11, 5.0),
                (3, 11, 1.0),
                (3, 10, 2.0),
            ],
            ..Default::default()
        };
        let users = ids(&["b", "a"]);
        let items = ids(&["y", "x"]);
        let idx = RatedIndex::build(&rows, &users, &items);
        assert_eq!(idx.items("a", Some(1)), &[1]); // x; "held" is unknown to the model
        assert_eq!(idx.items("b", Some(0)), &[0, 1]);
        assert_eq!(idx.items("ghost", None), &[0]);
        assert_eq!(idx.items("nobody", None), &[] as &[u32]);
    }

    #[test]
    fn rated_now_is_the_snapshot_index_plus_the_recent_writes() {
        let rows = TrainingRows {
            users: vec![(1, "a".into())],
            items: vec![(10, "x".into()), (11, "y".into()), (12, "z".into())],
            ratings: vec![(1, 10, 4.0), (1, 11, 3.0)],
            ..Default::default()
        };
        let (users, items) = (ids(&["a"]), ids(&["x", "y", "z"]));
        let model = Model::zeros(Default::default(), users.clone(), items.clone(), 3.0);
        let idx = RatedIndex::build(&rows, &users, &items);
        let recent = RecentWrites::new();
        let since = recent.seq();
        recent.record([("a", "z"), ("a", "unknown-item")], true);
        recent.record([("a", "x")], false);
        let bits = rated_now(&model, &idx, since, &recent, "a", Some(0)).unwrap();
        let rated: Vec<u32> = (0..4).filter(|&i| contains(&bits, i)).collect();
        assert_eq!(rated, [1, 2], "y from the index, z written, x deleted");
        let from_store = item_set(&model, ["z", "gone", "y"]);
        assert_eq!(from_store, bits, "the same set from the store's ids");
        recent.prune(since + 1);
        assert!(rated_now(&model, &idx, since, &recent, "a", Some(0)).is_none());
    }

    #[test]
    fn writes_per_minute_ring_and_histogram() {
        let r = RecentWrites::new();
        r.record_pairs([("a", "x"), ("a", "y")], true, 1000);
        r.record_pairs([("b", "x")], true, 1000);
        r.record_pairs([("a", "x")], false, 1001); // deletions are not counted
        r.record_pairs([("c", "x")], true, 1002);
        let w = r.written_per_minute_at(1002);
        assert_eq!(w.len(), MINUTES);
        assert_eq!(&w[MINUTES - 3..], &[3, 0, 1]);
        assert_eq!(w.iter().sum::<u64>(), 4);
        // an hour later the old minutes have left the window, and their slots are reused
        r.record_pairs([("d", "x")], true, 1000 + MINUTES as u64);
        let w = r.written_per_minute_at(1000 + MINUTES as u64);
        assert_eq!(
            w.iter().sum::<u64>(),
            2,
            "1002's one and the new one: {w:?}"
        );
        assert_eq!(w[MINUTES - 1], 1);
        let rows = [
            (1, 1, 4.0),
            (1, 2, 4.0),
            (2, 1, 3.5),
            (2, 2, 1.0),
            (3, 3, 4.1),
        ];
        assert_eq!(histogram(&rows), [(1.0, 1), (3.5, 1), (4.0, 3)]);
    }

    #[test]
    fn recent_writes_latest_operation_wins_and_prune_and_overflow_raise_the_floor() {
        let r = RecentWrites::new();
        let since = r.seq();
        r.record([("u", "a"), ("u", "b")], true);
        r.record([("u", "a")], false);
        let mut seen = Vec::new();
        assert!(r.changes_since("u", since, |i, rated| seen.push((i.to_owned(), rated))));
        seen.sort();
        assert_eq!(seen, [("a".to_owned(), false), ("b".to_owned(), true)]);
        // a snapshot taken after the first commit only needs the second
        let mut n = 0;
        assert!(r.changes_since("u", since + 1, |_, _| n += 1));
        assert_eq!(n, 1);
        assert_eq!(r.last_change("u", since), Some(Some(since + 2)));
        assert_eq!(r.last_change("u", since + 2), Some(None));
        assert_eq!(r.last_change("nobody", since), Some(None));
        r.prune(since + 1);
        assert_eq!(r.last_change("u", since), None, "below the floor");
        assert!(
            !r.changes_since("u", since, |_, _| {}),
            "pruned entries are gone"
        );
        assert!(r.changes_since("u", since + 1, |_, _| {}));
        // overflow drops everything and raises the floor to the last commit
        let many: Vec<(String, String)> = (0..=MAX_RECENT)
            .map(|k| ("v".to_owned(), format!("i{k}")))
            .collect();
        r.record(many.iter().map(|(u, i)| (u.as_str(), i.as_str())), true);
        assert_eq!(r.floor(), r.seq());
        assert!(!r.changes_since("v", since + 1, |_, _| {}));
    }
}
