//! Model snapshots: the immutable served model, its atomic publication, and its files on disk.

use crate::rated::RatedIndex;
use crate::store::{ModelRow, ScanSnapshot, Store};
use arc_swap::ArcSwapOption;
use funkrec_engine::topn::ItemIndex;
use funkrec_engine::Model;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;

/// A trained model plus what the API reports about it. Never mutated once published.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    /// RFC 3339, UTC.
    pub trained_at: String,
    pub model: Model,
    /// Compact copy of the item factors for fast exact top-N (built from `model`).
    pub index: ItemIndex,
    /// RMSE on the held-out sample (None when nothing was held out).
    pub holdout_rmse: Option<f64>,
    pub n_holdout: usize,
    /// Ratings in the store when the run loaded them (training + holdout).
    pub n_ratings_total: u64,
    /// Which items each user had rated when the rows were read, and the
    /// [`crate::rated::RecentWrites`] sequence number at that moment. Set before
    /// publication by a training run; for a snapshot loaded at start it is built in
    /// the background (until then, rated items are read from the store).
    pub rated: OnceLock<Rated>,
    /// Users folded in against this snapshot since it was published.
    pub folded: crate::foldin::FoldCache,
    /// Recommendation lists served from this snapshot, per user.
    pub lists: crate::listcache::ListCache,
}

/// A snapshot's rated-items index and the write sequence number it is complete up to.
#[derive(Debug)]
pub struct Rated {
    pub since: u64,
    /// The database snapshot the index's rows were read in (PostgreSQL with
    /// `storage.check_user_changes`): whether a user changed since is then asked of the
    /// database, which knows the writes of every replica, not of [`crate::rated::RecentWrites`].
    pub snapshot: Option<ScanSnapshot>,
    pub index: RatedIndex,
}

impl Snapshot {
    /// The training RMSE of the epoch whose parameters the model holds.
    pub fn train_rmse(&self) -> Option<f64> {
        self.model.report.kept().map(|e| e.train_rmse)
    }

    /// A snapshot of a stored model (a file, or bytes from the database), described by
    /// its `model` row when there is one (`trained_at` is asked otherwise). Its rated
    /// index is not built yet (see [`index_rated`]).
    pub fn loaded(
        version: u64,
        model: Model,
        row: Option<&ModelRow>,
        trained_at: impl FnOnce() -> String,
    ) -> Snapshot {
        Snapshot {
            version,
            trained_at: row.map(|r| r.trained_at.clone()).unwrap_or_else(trained_at),
            holdout_rmse: row.and_then(|r| r.holdout_rmse),
            n_holdout: row.map(|r| r.n_holdout as usize).unwrap_or(0),
            n_ratings_total: row
                .map(|r| r.n_ratings as u64)
                .unwrap_or(model.report.n_ratings as u64),
            index: ItemIndex::new(&model),
            model,
            rated: OnceLock::new(),
            folded: Default::default(),
            lists: Default::default(),
        }
    }

    /// The `model` table row describing this snapshot.
    pub fn row(&self) -> ModelRow {
        ModelRow {
            version: self.version as i64,
            file: file_name(self.version),
            trained_at: self.trained_at.clone(),
            trainer: self.model.hyper.trainer.to_string(),
            n_users: self.model.n_users() as i64,
            n_items: self.model.n_items() as i64,
            n_ratings: self.n_ratings_total as i64,
            n_holdout: self.n_holdout as i64,
            train_rmse: self.train_rmse(),
            holdout_rmse: self.holdout_rmse,
            train_secs: self.model.report.train_seconds,
            state: crate::store::MODEL_SERVING.to_owned(),
            reason: None,
        }
    }
}

/// The snapshot being served: readers load it without locking, the worker swaps it.
#[derive(Debug)]
pub struct Serving {
    current: ArcSwapOption<Snapshot>,
    /// The version last published, for whoever waits for a new model.
    published: watch::Sender<Option<u64>>,
}

impl Default for Serving {
    fn default() -> Self {
        Serving {
            current: ArcSwapOption::empty(),
            published: watch::Sender::new(None),
        }
    }
}

impl Serving {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot (None before the first model exists).
    pub fn get(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        let version = snapshot.version;
        self.current.store(Some(snapshot));
        self.published.send_replace(Some(version));
    }

    /// The version served now and every later publication.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.published.subscribe()
    }
}

/// `model-0000000042.fkm`
pub fn file_name(version: u64) -> String {
    format!("model-{version:010}.fkm")
}

/// The version in a snapshot file name, if it is one.
pub fn parse_version(name: &str) -> Option<u64> {
    name.strip_prefix("model-")?
        .strip_suffix(".fkm")?
        .parse()
        .ok()
}

fn versions_on_disk(dir: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| parse_version(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default()
}

/// Finds the snapshot to serve at start: the version the `model` table marks as
/// serving, if its file loads and verifies; otherwise (no serving row, or its file is
/// gone or corrupt) the newest one that loads, newest first over both the files in
/// `dir` and the rows of the `model` table, never a rejected version. Corrupt,
/// truncated or missing files are logged and skipped. Also returns the highest
/// version seen anywhere, so new versions never reuse a number.
pub async fn load_newest(store: &Store, dir: &Path) -> anyhow::Result<(Option<Snapshot>, u64)> {
    std::fs::create_dir_all(dir)?;
    remove_temp_files(dir);
    let rows: HashMap<u64, ModelRow> = store
        .model_rows()
        .await?
        .into_iter()
        .map(|r| (r.version as u64, r))
        .collect();
    let mut versions = versions_on_disk(dir);
    versions.extend(rows.keys().copied());
    let max_seen = versions.iter().next_back().copied().unwrap_or(0);
    let serving = rows
        .values()
        .find(|r| r.state == crate::store::MODEL_SERVING)
        .map(|r| r.version as u64);
    let candidates = serving.into_iter().chain(
        versions
            .into_iter()
            .rev()
            .filter(|v| Some(*v) != serving)
            .filter(|v| {
                !rows
                    .get(v)
                    .is_some_and(|r| r.state == crate::store::MODEL_REJECTED)
            }),
    );
    for version in candidates {
        match load_version(dir, version, rows.get(&version)).await? {
            Ok(snapshot) => {
                if Some(version) != serving && rows.contains_key(&version) {
                    tracing::warn!(
                        version,
                        ?serving,
                        "the serving version does not load: serving the newest that does"
                    );
                    store.set_serving(version).await?;
                }
                return Ok((Some(snapshot), max_seen));
            }
            Err(e) => tracing::warn!(version, error = %e, "skipping unreadable model snapshot"),
        }
    }
    Ok((None, max_seen))
}

/// Loads and verifies the file of `version` in `dir` as a snapshot described by its
/// `model` row (if any). The inner error says why it cannot be served (no file, or
/// the file does not verify); the outer one is a failed blocking task.
pub async fn load_version(
    dir: &Path,
    version: u64,
    row: Option<&ModelRow>,
) -> anyhow::Result<Result<Snapshot, String>> {
    let path = dir.join(file_name(version));
    if !path.exists() {
        return Ok(Err(format!(
            "the file {} is no longer on disk",
            path.display()
        )));
    }
    let p = path.clone();
    let row = row.cloned();
    let loaded = tokio::task::spawn_blocking(move || {
        funkrec_engine::persist::load(&p).map(|model| {
            let trained_at = || {
                std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .map(|t| rfc3339(time::OffsetDateTime::from(t)))
                    .unwrap_or_default()
            };
            Snapshot::loaded(version, model, row.as_ref(), trained_at)
        })
    })
    .await?;
    match loaded {
        Ok(snapshot) => {
            tracing::info!(version, path = %path.display(), "loaded model snapshot");
            Ok(Ok(snapshot))
        }
        Err(e) => Ok(Err(format!("{}: {e}", path.display()))),
    }
}

/// Serves a snapshot loaded from its file (at start, or by a rollback) and builds its
/// rated-items index in the background.
pub fn serve_loaded(
    serving: &Serving,
    store: &Store,
    recent: &Arc<crate::rated::RecentWrites>,
    snap: Arc<Snapshot>,
) {
    serving.publish(snap.clone());
    let (store, recent) = (store.clone(), recent.clone());
    tokio::spawn(async move {
        if let Err(e) = index_rated(&store, snap, &recent).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not index rated items; reading them from the store"
            );
        }
    });
}

/// Builds the rated-items index of a snapshot loaded at start from the store (in the
/// background: it reads every rating). Until it is set, requests read rated items
/// from the store.
pub async fn index_rated(
    store: &Store,
    snap: Arc<Snapshot>,
    recent: &crate::rated::RecentWrites,
) -> anyhow::Result<()> {
    // Before the read: every commit numbered after this may be missing from the rows.
    let since = recent.seq();
    let rows = store.load_training_rows().await?;
    tokio::task::spawn_blocking(move || {
        let index = RatedIndex::build(&rows, &snap.model.users, &snap.model.items);
        let snapshot = rows.snapshot;
        let _ = snap.rated.set(Rated {
            since,
            snapshot,
            index,
        });
    })
    .await?;
    Ok(())
}

/// Writes the snapshot's model file (temp + fsync + rename) and returns its path.
pub fn write_file(
    dir: &Path,
    version: u64,
    model: &Model,
) -> Result<PathBuf, funkrec_engine::EngineError> {
    let path = dir.join(file_name(version));
    funkrec_engine::persist::save(model, &path)?;
    Ok(path)
}

/// Deletes the `*.tmp` files a snapshot write interrupted by a crash left in `dir`.
pub fn remove_temp_files(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "tmp") && path.is_file() {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed an unfinished snapshot file")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove an unfinished snapshot file")
                }
            }
        }
    }
}

/// Deletes all but the `keep` newest snapshot files, never the file of `serving`
/// (the version served now, which a rollback may have made an old one).
pub fn prune(dir: &Path, keep: usize, serving: Option<u64>) {
    let versions = versions_on_disk(dir);
    let n = versions.len();
    for v in versions.into_iter().take(n.saturating_sub(keep)) {
        if Some(v) == serving {
            continue;
        }
        let path = dir.join(file_name(v));
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not delete old snapshot");
        }
    }
}

/// Whether the file of `version` is still in `dir` (pruned versions stay listed).
pub fn file_kept(dir: &Path, version: u64) -> bool {
    dir.join(file_name(version)).is_file()
}

/// Formats a timestamp as RFC 3339.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_roundtrip() {
        assert_eq!(parse_version(&file_name(42)), Some(42));
        assert_eq!(parse_version("model-x.fkm"), None);
        assert_eq!(parse_version("model-0000000001.tmp"), None);
        assert!(file_name(9) < file_name(10), "names sort like versions");
    }

    #[test]
    fn prune_keeps_the_newest_and_the_serving_file() {
        let dir = std::env::temp_dir().join(format!("funkrec-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for v in 1..=6 {
            std::fs::write(dir.join(file_name(v)), b"x").unwrap();
        }
        prune(&dir, 2, Some(2));
        let left: Vec<u64> = versions_on_disk(&dir).into_iter().collect();
        assert_eq!(left, vec![2, 5, 6]);
        assert!(file_kept(&dir, 2) && !file_kept(&dir, 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
