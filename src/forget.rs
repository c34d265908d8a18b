//! Forget on request, in memory: the retired items (never served again) and the forgotten users (whose snapshot vector is ignored), loaded from the store.
//!
//! * Retired items (`DELETE /v1/items/{item}`): the set of ids, and per served snapshot
//!   a bit mask over its items that the top-N and similar-items paths exclude (built
//!   once per snapshot and change of the set, then one word-wise OR per request).
//! * Forgotten users (`DELETE /v1/users/{user}`): while the served snapshot still holds
//!   a forgotten user's vector, [`crate::foldin::user_now`] ignores it and folds the user
//!   in from the ratings written since (none: the unknown-user fallback). An entry is
//!   dropped (here and in the store) once a snapshot trained from rows read after the
//!   deletion serves: see [`Forgets::covered_by`].
//!
//! Both sets are read lock-free on the request path (`ArcSwap`) and replaced whole on
//! a change (they are small and change rarely). [`Forgets::reload`] reads them again
//! from the store (for replicas that share one database).

use crate::snapshot::Snapshot;
use crate::store::{Store, StoreError};
use arc_swap::{ArcSwap, ArcSwapOption};
use fixedbitset::FixedBitSet;
use std::sync::{Arc, Mutex};

/// A forgotten user's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Forgotten {
    /// [`crate::rated::RecentWrites`] sequence number at or after the deletion's commit
    /// (0: loaded from the store).
    seq: u64,
    /// The store row's tag (a later deletion of the same user writes a new one).
    tag: i64,
    /// The highest model version that may hold the user's vector: only a newer
    /// version can cover the deletion.
    version: u64,
}

impl Forgotten {
    /// Whether a snapshot of `version`, complete up to write number `since`, was
    /// trained without the user's deleted ratings and replaces every version that may
    /// hold their vector.
    fn covered(&self, since: u64, version: u64) -> bool {
        self.seq <= since && version > self.version
    }
}

#[derive(Debug, Default)]
struct RetiredSet {
    /// Changes with every retirement and reload (invalidates the masks).
    generation: u64,
    items: foldhash::HashSet<String>,
}

/// The retired items of one snapshot as a bit mask over its item indices.
#[derive(Debug)]
struct Mask {
    version: u64,
    generation: u64,
    /// None: no retired item is in the snapshot.
    bits: Option<Arc<FixedBitSet>>,
}

/// Retired items and forgotten users (see the module docs).
#[derive(Debug, Default)]
pub struct Forgets {
    retired: ArcSwap<RetiredSet>,
    forgotten: ArcSwap<foldhash::HashMap<String, Forgotten>>,
    mask: ArcSwapOption<Mask>,
    /// Serialises the read-copy-update of both sets.
    edit: Mutex<()>,
}

impl Forgets {
    /// Both sets as the store holds them; `version` is the highest model version that
    /// exists (the loaded forgotten users may be in any of them).
    pub async fn load(store: &Store, version: u64) -> Result<Forgets, StoreError> {
        let f = Forgets::default();
        f.reload(store, version).await?;
        Ok(f)
    }

    /// Reads both sets from the store again and replaces the ones in memory (entries
    /// already known keep what they know; new ones get `version`).
    pub async fn reload(&self, store: &Store, version: u64) -> Result<(), StoreError> {
        let items = store.retired_items().await?;
        let users = store.forgotten_users().await?;
        let _g = self.edit.lock().unwrap();
        let generation = self.retired.load().generation + 1;
        self.retired.store(Arc::new(RetiredSet {
            generation,
            items: items.into_iter().collect(),
        }));
        let old = self.forgotten.load();
        let fresh = users
            .into_iter()
            .map(|(user, tag)| {
                let e = match old.get(&user) {
                    Some(e) if e.tag == tag => *e,
                    _ => Forgotten {
                        seq: 0,
                        tag,
                        version,
                    },
                };
                (user, e)
            })
            .collect();
        self.forgotten.store(Arc::new(fresh));
        Ok(())
    }

    /// Whether `item` is retired.
    pub fn is_retired(&self, item: &str) -> bool {
        let set = self.retired.load();
        !set.items.is_empty() && set.items.contains(item)
    }

    /// A number that changes with every retirement (and reload of the set): a result
    /// computed under one generation is stale under another.
    pub fn retired_generation(&self) -> u64 {
        self.retired.load().generation
    }

    /// The first of `items` that is retired (one load of the set for all of them).
    pub fn first_retired<'a>(&self, items: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let set = self.retired.load();
        if set.items.is_empty() {
            return None;
        }
        items.into_iter().find(|i| set.items.contains(*i))
    }

    /// Whether `user`'s vector in `snap` must be ignored: the user was forgotten and
    /// `snap` does not cover the deletion (the test of [`Forgets::covered_by`], so a
    /// request that sees a new snapshot before its entries are dropped already uses it).
    pub fn is_forgotten(&self, user: &str, snap: &Snapshot) -> bool {
        let map = self.forgotten.load();
        if map.is_empty() {
            return false;
        }
        let Some(e) = map.get(user) else {
            return false;
        };
        !snap
            .rated
            .get()
            .is_some_and(|r| e.covered(r.since, snap.version))
    }

    /// Users forgotten and not yet covered by a served snapshot.
    pub fn forgotten_count(&self) -> usize {
        self.forgotten.load().len()
    }

    /// Records a retirement (after its commit).
    pub fn retire(&self, item: &str) {
        let _g = self.edit.lock().unwrap();
        let old = self.retired.load();
        let mut items = old.items.clone();
        items.insert(item.to_owned());
        self.retired.store(Arc::new(RetiredSet {
            generation: old.generation + 1,
            items,
        }));
    }

    /// Records a user's deletion (after its commit): `seq` is the recent-writes number
    /// read after the commit, `tag` the store row's, `version` the highest model version
    /// that may hold the user.
    pub fn forget(&self, user: &str, seq: u64, tag: i64, version: u64) {
        let _g = self.edit.lock().unwrap();
        let mut map = (**self.forgotten.load()).clone();
        map.insert(user.to_owned(), Forgotten { seq, tag, version });
        self.forgotten.store(Arc::new(map));
    }

    /// The retired items of `snap` as a mask over its items; None when none of them is
    /// in the snapshot (the common case costs one atomic load).
    pub fn retired_mask(&self, snap: &Snapshot) -> Option<Arc<FixedBitSet>> {
        let set = self.retired.load();
        if set.items.is_empty() {
            return None;
        }
        if let Some(m) = &*self.mask.load() {
            if m.version == snap.version && m.generation == set.generation {
                return m.bits.clone();
            }
        }
        let items = &snap.model.items;
        let mut bits = FixedBitSet::with_capacity(snap.model.n_items());
        for id in &set.items {
            if let Some(i) = items.get(id) {
                bits.insert(i as usize);
            }
        }
        let bits = (!bits.is_clear()).then(|| Arc::new(bits));
        self.mask.store(Some(Arc::new(Mask {
            version: snap.version,
            generation: set.generation,
            bits: bits.clone(),
        })));
        bits
    }

    /// Drops the forgotten users a newly served `snap` covers (trained from rows read
    /// after their deletion, and newer than every version that may hold them) and
    /// returns their (user, tag) for the store to delete.
    pub fn covered_by(&self, snap: &Snapshot) -> Vec<(String, i64)> {
        let Some(since) = snap.rated.get().map(|r| r.since) else {
            return Vec::new();
        };
        let _g = self.edit.lock().unwrap();
        let old = self.forgotten.load();
        let covered = |e: &Forgotten| e.covered(since, snap.version);
        let gone: Vec<(String, i64)> = old
            .iter()
            .filter(|(_, e)| covered(e))
            .map(|(u, e)| (u.clone(), e.tag))
            .collect();
        if !gone.is_empty() {
            let kept = old
                .iter()
                .filter(|(_, e)| !covered(e))
                .map(|(u, e)| (u.clone(), *e))
                .collect();
            self.forgotten.store(Arc::new(kept));
        }
        gone
    }
}

/// Clears the forgotten users each newly served snapshot covers; the future (spawned
/// with the server) ends when `serving` is dropped.
pub fn clear_covered(
    forgets: Arc<Forgets>,
    serving: &Arc<crate::snapshot::Serving>,
    store: Store,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut published = serving.subscribe();
    let serving = Arc::downgrade(serving);
    async move {
        while published.changed().await.is_ok() {
            let Some(snap) = serving.upgrade().and_then(|s| s.get()) else {
                continue;
            };
            let gone = forgets.covered_by(&snap);
            if gone.is_empty() {
                continue;
            }
            match store.clear_forgotten(&gone).await {
                Ok(()) => tracing::info!(
                    users = gone.len(),
                    version = snap.version,
                    "forgotten users covered by the new snapshot"
                ),
                // the rows stay: at the next start they are loaded again (harmless: the
                // users are folded in from the store, which holds what they rated since)
                Err(e) => tracing::warn!(error = %e, "could not clear covered forgotten users"),
            }
        }
    }
}
