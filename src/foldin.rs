//! Serving-time fold-in: the user vector a request uses (the snapshot's, or one solved from the user's ratings as of now) and the bounded cache of solved vectors.
//!
//! A user whose ratings changed after the snapshot's rows were read, or whom the
//! snapshot does not know but who has rated items it knows, is *folded in*: their bias
//! and factors are solved against the snapshot's fixed items ([`funkrec_engine::foldin`])
//! from the ratings in the store now, and the items they rated now are excluded. Who
//! changed: on PostgreSQL the database says (a change by a transaction not visible in
//! the scan's snapshot, by any replica: [`Store::changed_since`]); on SQLite, where one
//! process writes, a write or delete recorded in [`RecentWrites`] with a later sequence
//! number. The result is cached in the snapshot's [`FoldCache`], keyed by the user's
//! last change, so the user's next change invalidates it, and it goes away with the
//! snapshot when a newer one (which covers those changes) is published.

use crate::domain::UserId;
use crate::rated::{self, RecentWrites};
use crate::snapshot::{Rated, Snapshot};
use crate::store::{Store, StoreError};
use fixedbitset::FixedBitSet;
use funkrec_engine::foldin::{fold_in, Folded};
use std::sync::{Arc, Mutex};

/// Folded vectors kept per snapshot; past this the cache starts again empty.
pub const MAX_FOLDED: usize = 50_000;

/// The cached folded vectors of one snapshot, by user, each with the change it reflects
/// (the sequence number of the user's last write in [`RecentWrites`], or on PostgreSQL
/// the id of the last transaction that changed the user) and the items rated then.
#[derive(Debug, Default)]
pub struct FoldCache {
    inner: Mutex<foldhash::HashMap<String, Cached>>,
}

#[derive(Debug, Clone)]
struct Cached {
    change: u64,
    folded: Arc<Folded>,
    /// Model item indices the user had rated, sorted.
    rated: Arc<[u32]>,
}

impl FoldCache {
    /// The vector folded for `user` as of `change`, if cached.
    fn get(&self, user: &str, change: u64) -> Option<Cached> {
        let g = self.inner.lock().unwrap();
        g.get(user).filter(|c| c.change == change).cloned()
    }

    fn put(&self, user: &str, entry: Cached) {
        let mut g = self.inner.lock().unwrap();
        if g.len() >= MAX_FOLDED && !g.contains_key(user) {
            g.clear();
        }
        g.insert(user.to_owned(), entry);
    }

    /// Cached users (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which vector serves a user, and the items they have rated now (model index space).
pub enum UserVector {
    /// The snapshot's own row for a user it knows, unchanged since.
    Snapshot(u32),
    /// Solved from the user's ratings as of now.
    Folded(Arc<Folded>),
    /// Nothing personal: unknown user without a rating of a known item.
    None,
}

/// The user's vector and rated items as of now.
pub struct UserNow {
    pub vector: UserVector,
    /// Empty unless asked for.
    pub rated: FixedBitSet,
}

/// How a request resolves the user, decided before any rating is read or any bit set
/// is built ([`plan`]); [`resolve`] then builds the vector and rated items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Unchanged since the snapshot: its own vector (if it knows the user), the rated
    /// items of its index.
    Snapshot,
    /// Fold in as of `change` (0: nothing since the snapshot, which does not know the
    /// user or must ignore their vector); `indexed`: the rated items are the snapshot
    /// index's (nothing changed), else they come with the fold.
    Fold { change: u64, indexed: bool },
    /// The rated index is not built yet or the recent writes no longer reach back to
    /// the snapshot: the store says what the user rated.
    Unindexed,
}

impl Plan {
    /// What the user's served vector and rated items are a function of, within one
    /// snapshot: None for the snapshot's own, the change folded in otherwise; no
    /// answer for [`Plan::Unindexed`] (nothing stable to key a cached result by).
    pub fn user_state(&self) -> Option<Option<u64>> {
        match *self {
            Plan::Snapshot => Some(None),
            Plan::Fold { change, .. } => Some(Some(change)),
            Plan::Unindexed => None,
        }
    }
}

/// Resolves the vector serving `user` from `snap`, folding in when the user's ratings
/// changed since the snapshot (or the snapshot does not know them); reads the store
/// only for a user who must be folded and is not cached. The rated items are filled
/// in only when `need_rated` is true. A `forgotten` user (all their ratings deleted
/// after the snapshot was trained, [`crate::forget`]) never gets the snapshot's vector:
/// they are always folded from the store (no ratings: [`UserVector::None`]).
pub async fn user_now(
    snap: &Snapshot,
    recent: &RecentWrites,
    store: &Store,
    user: &UserId,
    need_rated: bool,
    forgotten: bool,
) -> Result<UserNow, StoreError> {
    let plan = plan(snap, recent, store, user, forgotten).await?;
    resolve(plan, snap, store, user, need_rated, forgotten).await
}

/// Whether `user` changed since the snapshot, and so how [`resolve`] serves them.
///
/// On PostgreSQL (a snapshot whose scan recorded its database snapshot) the database
/// is asked, one indexed query that sees the writes of every replica
/// ([`Store::changed_since`]); otherwise this process's [`RecentWrites`] say (SQLite:
/// one process writes).
pub async fn plan(
    snap: &Snapshot,
    recent: &RecentWrites,
    store: &Store,
    user: &UserId,
    forgotten: bool,
) -> Result<Plan, StoreError> {
    let name = user.as_str();
    let known = snap.model.users.get(name);
    let Some(r) = snap.rated.get() else {
        return Ok(Plan::Unindexed);
    };
    let Some(scan) = &r.snapshot else {
        return Ok(local_plan(r, recent, name, known, forgotten));
    };
    match store.changed_since(user, scan).await {
        Ok(Some(change)) => Ok(Plan::Fold {
            change,
            indexed: false,
        }),
        Ok(None) => Ok(unchanged(r, name, known, forgotten)),
        // Database down: keep serving the model, with this process's own writes (no
        // replica can acknowledge a write meanwhile either).
        Err(e) if e.is_unavailable() => {
            tracing::debug!(error = %e, "change check unavailable; local writes only");
            Ok(local_plan(r, recent, name, known, forgotten))
        }
        Err(e) => Err(e),
    }
}

/// The vector and (when `need_rated`) rated items of `user` under `plan`.
pub async fn resolve(
    plan: Plan,
    snap: &Snapshot,
    store: &Store,
    user: &UserId,
    need_rated: bool,
    forgotten: bool,
) -> Result<UserNow, StoreError> {
    let m = &snap.model;
    let name = user.as_str();
    let known = m.users.get(name);
    let index_bits = || match (need_rated, snap.rated.get()) {
        (true, Some(r)) => rated::item_bits(m, r.index.items(name, known)),
        _ => FixedBitSet::new(),
    };
    match plan {
        Plan::Snapshot => Ok(UserNow {
            vector: known.map_or(UserVector::None, UserVector::Snapshot),
            rated: index_bits(),
        }),
        Plan::Fold { change, indexed } => {
            if let Some(c) = snap.folded.get(name, change) {
                let rated = match (indexed, need_rated) {
                    (true, _) => index_bits(),
                    (false, true) => rated::item_bits(m, &c.rated),
                    (false, false) => FixedBitSet::new(),
                };
                return Ok(UserNow {
                    vector: UserVector::Folded(c.folded),
                    rated,
                });
            }
            let (vector, items) = fold_from_store(snap, store, user).await?;
            if let UserVector::Folded(f) = &vector {
                let entry = Cached {
                    change,
                    folded: Arc::clone(f),
                    rated: items.clone().into(),
                };
                snap.folded.put(name, entry);
            }
            Ok(UserNow {
                vector,
                rated: rated::item_bits(m, &items),
            })
        }
        // A known user keeps the snapshot's vector (whether it changed is unknown
        // without the index); an unknown one is folded, uncached.
        Plan::Unindexed => match known.filter(|_| !forgotten) {
            Some(u) => Ok(UserNow {
                vector: UserVector::Snapshot(u),
                rated: match need_rated {
                    true => rated::item_set(m, store.rated_items(user).await?),
                    false => FixedBitSet::new(),
                },
            }),
            None => {
                let (vector, items) = fold_from_store(snap, store, user).await?;
                Ok(UserNow {
                    vector,
                    rated: rated::item_bits(m, &items),
                })
            }
        },
    }
}

/// A user with no change since the snapshot: its own vector, or (a forgotten user, or
/// a user it does not know who rated items it knows) a fold as of nothing new.
fn unchanged(r: &Rated, name: &str, known: Option<u32>, forgotten: bool) -> Plan {
    let fold = Plan::Fold {
        change: 0,
        indexed: true,
    };
    match known {
        _ if forgotten => fold,
        None if !r.index.items(name, None).is_empty() => fold,
        _ => Plan::Snapshot,
    }
}

/// The plan from this process's record of its own writes ([`Plan::Unindexed`]: the
/// record no longer reaches back to the snapshot).
fn local_plan(
    r: &Rated,
    recent: &RecentWrites,
    name: &str,
    known: Option<u32>,
    forgotten: bool,
) -> Plan {
    // A changed user's rated items come with the fold (cached with it, or read from
    // the store with the ratings it folds), so nothing is rebuilt from the recent
    // writes on this path.
    match recent.last_change(name, r.since) {
        None => Plan::Unindexed,
        Some(Some(seq)) => Plan::Fold {
            change: seq,
            indexed: false,
        },
        Some(None) => unchanged(r, name, known, forgotten),
    }
}

/// Reads the user's ratings and solves their vector; also returns their rated items
/// (model item indices, sorted).
async fn fold_from_store(
    snap: &Snapshot,
    store: &Store,
    user: &UserId,
) -> Result<(UserVector, Vec<u32>), StoreError> {
    let m = &snap.model;
    let rows = store.user_ratings(user).await?;
    let ratings: Vec<(u32, f32)> = rows
        .iter()
        .filter_map(|(item, r)| Some((m.items.get(item)?, *r)))
        .collect();
    let mut items: Vec<u32> = ratings.iter().map(|&(i, _)| i).collect();
    items.sort_unstable();
    let vector = match fold_in(m, &ratings) {
        Some(f) => UserVector::Folded(Arc::new(f)),
        None => UserVector::None,
    };
    Ok((vector, items))
}
