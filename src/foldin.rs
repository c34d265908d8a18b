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

/// How a request resolves the user before any rating is read.
enum Plan {
    /// Unchanged since the snapshot: its own vector (if it knows the user), these
    /// rated items.
    Snapshot(FixedBitSet),
    /// Fold in as of this change (0: nothing since the snapshot, which does not know
    /// the user); the rated items when already known, else from the fold.
    Fold(u64, Option<FixedBitSet>),
}

/// Resolves the vector serving `user` from `snap`, folding in when the user's ratings
/// changed since the snapshot (or the snapshot does not know them); reads the store
/// only for a user who must be folded and is not cached. The rated items are filled
/// in only when `need_rated` is true. A `forgotten` user (all their ratings deleted
/// after the snapshot was trained, [`crate::forget`]) never gets the snapshot's vector:
/// they are always folded from the store (no ratings: [`UserVector::None`]).
///
///
/// Whether the user changed: on PostgreSQL (a snapshot whose scan recorded its
/// database snapshot) the database is asked, one indexed query that sees the writes of
/// every replica ([`Store::changed_since`]); otherwise this process's [`RecentWrites`]
/// say (SQLite: one process writes).
pub async fn user_now(
    snap: &Snapshot,
    recent: &RecentWrites,
    store: &Store,
    user: &UserId,
    need_rated: bool,
    forgotten: bool,
) -> Result<UserNow, StoreError> {
    let m = &snap.model;
    let name = user.as_str();
    let known = m.users.get(name);
    let plan = match snap.rated.get() {
        None => None,
        Some(r) => match &r.snapshot {
            Some(scan) => match store.changed_since(user, scan).await {
                Ok(Some(change)) => Some(Plan::Fold(change, None)),
                Ok(None) => {
                    let bits = match need_rated {
                        true => rated::item_bits(m, r.index.items(name, known)),
                        false => FixedBitSet::new(),
                    };
                    Some(unchanged(r, name, known, forgotten, bits))
                }
                // Database down: keep serving the model, with this process's own
                // writes (no replica can acknowledge a write meanwhile either).
                Err(e) if e.is_unavailable() => {
                    tracing::debug!(error = %e, "change check unavailable; local writes only");
                    local_plan(snap, r, recent, name, known, forgotten, need_rated)
                }
                Err(e) => return Err(e),
            },
            None => local_plan(snap, r, recent, name, known, forgotten, need_rated),
        },
    };
    match plan {
        Some(Plan::Snapshot(bits)) => Ok(UserNow {
            vector: known.map_or(UserVector::None, UserVector::Snapshot),
            rated: bits,
        }),
        Some(Plan::Fold(change, bits)) => {
            if let Some(c) = snap.folded.get(name, change) {
                let rated = match (bits, need_rated) {
                    (Some(b), _) => b,
                    (None, true) => rated::item_bits(m, &c.rated),
                    (None, false) => FixedBitSet::new(),
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
        // The rated index is not built yet or the recent writes overflowed: the store
        // says what the user rated. A known user keeps the snapshot's vector (whether
        // it changed is unknown without the index); an unknown one is folded, uncached.
        None => match known.filter(|_| !forgotten) {
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
fn unchanged(
    r: &Rated,
    name: &str,
    known: Option<u32>,
    forgotten: bool,
    bits: FixedBitSet,
) -> Plan {
    match known {
        _ if forgotten => Plan::Fold(0, Some(bits)),
        None if !r.index.items(name, None).is_empty() => Plan::Fold(0, Some(bits)),
        _ => Plan::Snapshot(bits),
    }
}

/// The plan from this process's record of its own writes (None: the record no longer
/// reaches back to the snapshot).
fn local_plan(
    snap: &Snapshot,
    r: &Rated,
    recent: &RecentWrites,
    name: &str,
    known: Option<u32>,
    forgotten: bool,
    need_rated: bool,
) -> Option<Plan> {
    // A changed user's rated items come with the fold (cached with it, or read from
    // the store with the ratings it folds), so nothing is rebuilt from the recent
    // writes on this path.
    Some(match recent.last_change(name, r.since)? {
        Some(seq) => Plan::Fold(seq, None),
        None => {
            let bits = match need_rated {
                true => rated::item_bits(&snap.model, r.index.items(name, known)),
                false => FixedBitSet::new(),
            };
            unchanged(r, name, known, forgotten, bits)
        }
    })
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
