//! Serving-time fold-in: the user vector a request uses (the snapshot's, or one solved from the user's ratings as of now) and the bounded cache of solved vectors.
//!
//! A user whose ratings changed after the snapshot's rows were read (a write or delete
//! recorded in [`RecentWrites`] with a later sequence number), or whom the snapshot does
//! not know but who has rated items it knows, is *folded in*: their bias and factors are
//! solved against the snapshot's fixed items ([`funkrec_engine::foldin`]) from the
//! ratings in the store now. The result is cached in the snapshot's [`FoldCache`], keyed
//! by the user's last recorded write, so the user's next write invalidates it, and it
//! goes away with the snapshot when a newer one (which covers those writes) is published.

use crate::domain::UserId;
use crate::rated::{self, RecentWrites};
use crate::snapshot::Snapshot;
use crate::store::{Store, StoreError};
use fixedbitset::FixedBitSet;
use funkrec_engine::foldin::{fold_in, Folded};
use std::sync::{Arc, Mutex};

/// Folded vectors kept per snapshot; past this the cache starts again empty.
pub const MAX_FOLDED: usize = 50_000;

/// The cached folded vectors of one snapshot, by user, each with the sequence number of
/// the user's last write it reflects.
#[derive(Debug, Default)]
pub struct FoldCache {
    inner: Mutex<foldhash::HashMap<String, (u64, Arc<Folded>)>>,
}

impl FoldCache {
    /// The vector folded for `user` as of write `seq`, if cached.
    fn get(&self, user: &str, seq: u64) -> Option<Arc<Folded>> {
        let g = self.inner.lock().unwrap();
        g.get(user)
            .filter(|(s, _)| *s == seq)
            .map(|(_, f)| Arc::clone(f))
    }

    fn put(&self, user: &str, seq: u64, folded: Arc<Folded>) {
        let mut g = self.inner.lock().unwrap();
        if g.len() >= MAX_FOLDED && !g.contains_key(user) {
            g.clear();
        }
        g.insert(user.to_owned(), (seq, folded));
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
    let m = &snap.model;
    let name = user.as_str();
    let known = m.users.get(name);
    // Some(seq): fold as of the user's write `seq` (0: nothing since the snapshot).
    let plan = snap.rated.get().and_then(|r| {
        let last = recent.last_change(name, r.since)?;
        let bits = match need_rated {
            true => rated::rated_now(m, &r.index, r.since, recent, name, known)?,
            false => FixedBitSet::new(),
        };
        let fold = match (last, known) {
            (Some(seq), _) => Some(seq),
            (None, _) if forgotten => Some(0),
            (None, None) if !r.index.items(name, None).is_empty() => Some(0),
            (None, _) => None,
        };
        Some((fold, bits))
    });
    match plan {
        Some((None, bits)) => Ok(UserNow {
            vector: known.map_or(UserVector::None, UserVector::Snapshot),
            rated: bits,
        }),
        Some((Some(seq), bits)) => {
            if let Some(f) = snap.folded.get(name, seq) {
                return Ok(UserNow {
                    vector: UserVector::Folded(f),
                    rated: bits,
                });
            }
            let (vector, rated) = fold_from_store(snap, store, user).await?;
            if let UserVector::Folded(f) = &vector {
                snap.folded.put(name, seq, Arc::clone(f));
            }
            Ok(UserNow { vector, rated })
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
                let (vector, rated) = fold_from_store(snap, store, user).await?;
                Ok(UserNow { vector, rated })
            }
        },
    }
}

/// Reads the user's ratings and solves their vector; also returns their rated items.
async fn fold_from_store(
    snap: &Snapshot,
    store: &Store,
    user: &UserId,
) -> Result<(UserVector, FixedBitSet), StoreError> {
    let m = &snap.model;
    let rows = store.user_ratings(user).await?;
    let ratings: Vec<(u32, f32)> = rows
        .iter()
        .filter_map(|(item, r)| Some((m.items.get(item)?, *r)))
        .collect();
    let mut bits = FixedBitSet::with_capacity(m.n_items());
    for &(i, _) in &ratings {
        bits.insert(i as usize);
    }
    let vector = match fold_in(m, &ratings) {
        Some(f) => UserVector::Folded(Arc::new(f)),
        None => UserVector::None,
    };
    Ok((vector, bits))
}
