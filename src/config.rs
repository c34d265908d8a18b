//! Layered configuration: built-in `config/default.toml`, an optional file, then `FUNKREC__*` env vars.

use crate::auth::ApiKeys;
use anyhow::{bail, Context};
use funkrec_engine::Hyper;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The built-in defaults (the documented `config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Everything the service can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub training: TrainingSettings,
    /// Engine hyperparameters (the worker's thread budget is `model.threads`).
    pub model: Hyper,
    pub log: LogSettings,
    pub auth: AuthSettings,
    pub cluster: ClusterSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    pub body_limit_bytes: usize,
    pub request_timeout_secs: u64,
    pub max_batch: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
    pub default_n: usize,
    pub max_n: usize,
    /// Users whose last recommendation list (n ≤ 100) each served model keeps, reused
    /// until the user's ratings change, an item is retired or another model serves;
    /// 0 = every request ranks again.
    pub list_cache_users: usize,
    /// Requests handled at once (all routes but the probes and /metrics); more
    /// are shed with `503 overloaded` instead of queueing.
    pub max_concurrent_requests: usize,
    /// `Retry-After` seconds sent with `503 overloaded`.
    pub retry_after_secs: u64,
    /// Seconds a connection may take to send a complete request header, counted from
    /// accept or from the end of the previous response (so also the idle keep-alive timeout).
    pub header_read_timeout_secs: u64,
    /// Seconds a request may take to send its whole body (separate from
    /// `request_timeout_secs`, which counts handler time only).
    pub body_timeout_secs: u64,
    /// Open connections at most; 0 = the open-file limit minus a reserve. More clients
    /// evict the oldest connection that has no request in flight.
    pub max_connections: usize,
    /// Seconds graceful shutdown waits for open connections before dropping them.
    pub shutdown_timeout_secs: u64,
}

/// Access control. `Debug` and `Serialize` never show a key (only digests are kept).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `role:key` entries (TOML list, or one comma-separated string in
    /// `FUNKREC__AUTH__KEYS`). The keys of `keys_file` are added on load.
    pub keys: ApiKeys,
    /// A file with one `role:key` per line (`#` comments); empty = none.
    pub keys_file: String,
    /// Allow listening on a non-loopback address without any key (everyone may
    /// read, write and retrain). Off by default: the server refuses to start.
    pub allow_open: bool,
}

/// `Debug` shows `database_url` with its password hidden ([`redact_url`]).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub max_connections: u32,
    pub keep_snapshots: usize,
    /// `/readyz` fails (`disk`) when the data directory's file system has less free space.
    pub min_free_bytes: u64,
    /// PostgreSQL: before serving a user, ask the database whether their ratings changed
    /// since the model's scan (read-your-writes across replicas). False: only this
    /// process's own writes count (one replica). No effect on SQLite.
    pub check_user_changes: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainingSettings {
    pub retrain_after_ratings: u64,
    pub retrain_interval_secs: u64,
    pub train_on_start: bool,
    pub holdout_fraction: f64,
    pub holdout_max: usize,
    pub holdout_seed: u64,
    pub min_ratings: usize,
    /// The publish gate: a new model whose holdout RMSE is worse than the serving
    /// model's on the same holdout by more than this fraction is rejected.
    pub max_regression: f64,
    /// A run that starts with no model serving stops at the first epoch end after this
    /// many seconds (0 = no limit), publishes the best epoch so far, and a full run
    /// follows at once.
    pub first_model_secs: u64,
    /// How much lower than the request threads' the training threads' CPU priority is
    /// (a Linux nice increment, 0..=19; 0 = the same).
    pub nice: i32,
}

/// What this process does when several share one PostgreSQL database (`[cluster]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    pub role: ClusterRole,
    /// Seconds between two checks of the serving model version (besides `LISTEN`).
    pub poll_secs: u64,
}

/// `cluster.role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ClusterRole {
    /// Serves the API and trains (the single-process default).
    All,
    /// Serves the API, never trains.
    Api,
    /// Trains when elected; serves `/healthz`, `/readyz` and `/metrics` only.
    Trainer,
}

impl ClusterRole {
    /// Serves the `/v1` API, the dashboard and the OpenAPI document.
    pub fn serves_api(self) -> bool {
        self != ClusterRole::Trainer
    }

    /// May train (on PostgreSQL: when it holds the trainer lock).
    pub fn trains(self) -> bool {
        self != ClusterRole::Api
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub json: bool,
}

impl Default for Settings {
    /// The built-in defaults alone (no file, no environment).
    fn default() -> Self {
        Settings::load_from(None, Some(Default::default())).expect("built-in defaults are valid")
    }
}

impl Settings {
    /// Defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(file, None)
    }

    /// Like [`Settings::load`], with the environment given as a map (`None` = the
    /// process environment), so layering can be tested without touching env vars.
    pub fn load_from(
        file: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> anyhow::Result<Self> {
        let mut b = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.is_file() {
                bail!("config file {} does not exist", path.display());
            }
            b = b.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        b = b.add_source(
            config::Environment::with_prefix("FUNKREC")
                .prefix_separator("__")
                .separator("__")
                .source(env),
        );
        let mut settings: Settings = b
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        settings.load_keys_file()?;
        if settings.model.threads == 0 {
            // `model.threads = 0`: one training thread per core
            settings.model.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Adds the keys of `auth.keys_file` (if set) to `auth.keys`.
    fn load_keys_file(&mut self) -> anyhow::Result<()> {
        let path = self.auth.keys_file.trim();
        if path.is_empty() {
            return Ok(());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("auth.keys_file: reading {path}"))?;
        let keys = ApiKeys::parse_file_content(&text)
            .map_err(|e| anyhow::anyhow!("auth.keys_file {path}: {e}"))?;
        self.auth
            .keys
            .extend(keys)
            .map_err(|e| anyhow::anyhow!("auth.keys_file {path}: {e}"))
    }

    /// Whether serving on `addrs` (the resolved `server.bind`) is safe: with no API
    /// keys only loopback addresses are, unless `auth.allow_open` says otherwise.
    /// Ok carries a warning to log when the API is open.
    pub fn check_exposure(&self, addrs: &[std::net::SocketAddr]) -> anyhow::Result<Option<String>> {
        if !self.auth.keys.is_empty() {
            return Ok(None);
        }
        let loopback = !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback());
        if loopback {
            return Ok(Some(format!(
                "no API keys configured: the API is open to every local process on {} \
                 (set auth.keys or auth.keys_file before exposing it)",
                self.server.bind
            )));
        }
        if self.auth.allow_open {
            return Ok(Some(format!(
                "no API keys configured and auth.allow_open = true: anyone who can reach {} \
                 may read, write ratings and retrain",
                self.server.bind
            )));
        }
        bail!(
            "refusing to listen on the non-loopback address {} without API keys: configure \
             auth.keys (FUNKREC__AUTH__KEYS) or auth.keys_file (FUNKREC__AUTH__KEYS_FILE), \
             or set auth.allow_open = true (FUNKREC__AUTH__ALLOW_OPEN=true) to serve without \
             authentication",
            self.server.bind
        )
    }

    /// Checks values serde cannot (ranges, consistency).
    pub fn validate(&self) -> anyhow::Result<()> {
        self.model
            .validate()
            .map_err(|e| anyhow::anyhow!("model: {e}"))?;
        let s = &self.server;
        if s.max_batch == 0 || s.body_limit_bytes == 0 || s.request_timeout_secs == 0 {
            bail!("server: max_batch, body_limit_bytes and request_timeout_secs must be > 0");
        }
        if s.default_page_size == 0 || s.default_page_size > s.max_page_size {
            bail!("server: need 0 < default_page_size <= max_page_size");
        }
        if s.default_n == 0 || s.default_n > s.max_n {
            bail!("server: need 0 < default_n <= max_n");
        }
        if s.max_concurrent_requests == 0 {
            bail!("server: max_concurrent_requests must be > 0");
        }
        if s.header_read_timeout_secs == 0 || s.body_timeout_secs == 0 {
            bail!("server: header_read_timeout_secs and body_timeout_secs must be > 0");
        }
        let t = &self.training;
        if !(0.0..0.5).contains(&t.holdout_fraction) {
            bail!("training: holdout_fraction must be in [0, 0.5)");
        }
        if !(t.max_regression.is_finite() && t.max_regression >= 0.0) {
            bail!("training: max_regression must be finite and >= 0");
        }
        if !(0..=19).contains(&t.nice) {
            bail!("training: nice must be in 0..=19");
        }
        if self.storage.max_connections == 0 || self.storage.keep_snapshots == 0 {
            bail!("storage: max_connections and keep_snapshots must be > 0");
        }
        if self.cluster.poll_secs == 0 {
            bail!("cluster: poll_secs must be > 0");
        }
        if self.cluster.role != ClusterRole::All && !self.is_postgres() {
            bail!(
                "cluster.role = {} needs a PostgreSQL database shared by the processes \
                 (storage.database_url = postgres://USER@HOST:PORT/DB); an SQLite store \
                 belongs to one process, which runs with role `all`",
                self.cluster.role
            );
        }
        Ok(())
    }

    /// The database URL: the configured one, or `sqlite://DATA_DIR/funkrec.db`.
    pub fn database_url(&self) -> String {
        if self.storage.database_url.trim().is_empty() {
            format!(
                "sqlite://{}",
                self.storage.data_dir.join("funkrec.db").display()
            )
        } else {
            self.storage.database_url.clone()
        }
    }

    /// True when `storage.database_url` names a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        let url = self.storage.database_url.trim_start();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    /// Where snapshot files live.
    pub fn models_dir(&self) -> PathBuf {
        self.storage.data_dir.join("models")
    }
}

impl std::fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSettings")
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("max_connections", &self.max_connections)
            .field("keep_snapshots", &self.keep_snapshots)
            .finish()
    }
}

/// The password of a `scheme://user:password@host/...` URL, if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, pw)| pw)
}

/// `url` with its password (in the user part or a `password=` query parameter)
/// replaced by `***`: what logs, errors, metrics and the API may show.
pub fn redact_url(url: &str) -> String {
    let mut out = match url_password(url) {
        Some(pw) => {
            let at = url.find("://").map_or(0, |i| i + 3);
            let start = at + url[at..].find(':').unwrap_or(0) + 1;
            format!("{}***{}", &url[..start], &url[start + pw.len()..])
        }
        None => url.to_owned(),
    };
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], query.join("&"));
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_everything_else_kept() {
        assert_eq!(
            redact_url("postgres://app:s3cr:et@db.example:5432/funkrec"),
            "postgres://app:***@db.example:5432/funkrec"
        );
        assert_eq!(
            redact_url("postgres://app@db/funkrec?password=hunter2&sslmode=require"),
            "postgres://app@db/funkrec?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            redact_url("sqlite://./data/funkrec.db"),
            "sqlite://./data/funkrec.db"
        );
        assert_eq!(url_password("postgres://a:b@h/d"), Some("b"));
        let mut s = Settings::default();
        s.storage.database_url = "postgres://app:hunter2@db/funkrec".into();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(format!("{s:?}").contains("postgres://app:***@db/funkrec"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<config::Map<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_match_engine_and_docs() {
        let s = Settings::default();
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.server.max_batch, 10_000);
        assert_eq!(s.storage.data_dir, PathBuf::from("./data"));
        // the engine's values, except `threads`: the service's 0 means one per core
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(s.model.threads, cores);
        assert_eq!(
            s.model,
            Hyper {
                threads: cores,
                ..Hyper::default()
            }
        );
        assert!(s.database_url().starts_with("sqlite://"));
        assert!(s.database_url().ends_with("funkrec.db"));
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[server]\nbind = \"0.0.0.0:9000\"\nmax_batch = 5\n[model]\nfactors = 7\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&f),
            env(&[
                ("FUNKREC__SERVER__MAX_BATCH", "9"),
                ("FUNKREC__MODEL__TRAINER", "funk"),
                ("FUNKREC__MODEL__SCALE__MIN", "0.5"),
                ("FUNKREC__LOG__JSON", "true"),
                ("OTHER__SERVER__BIND", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.bind, "0.0.0.0:9000");
        assert_eq!(s.server.max_batch, 9);
        assert_eq!(s.model.factors, 7);
        assert_eq!(s.model.trainer, funkrec_engine::TrainerKind::Funk);
        assert_eq!(s.model.scale.min, 0.5);
        assert!(s.log.json);
        // untouched keys keep their defaults
        assert_eq!(s.model.epochs, Hyper::default().epochs);
        // the file names the trainer too
        std::fs::write(&f, "[model]\ntrainer = \"svdpp\"\n").unwrap();
        let s = Settings::load_from(Some(&f), env(&[])).unwrap();
        assert_eq!(s.model.trainer, funkrec_engine::TrainerKind::Svdpp);
    }

    #[test]
    fn cluster_roles_need_postgres() {
        let s = Settings::default();
        assert_eq!(
            (s.cluster.role, s.cluster.poll_secs),
            (ClusterRole::All, 10)
        );
        let e = Settings::load_from(None, env(&[("FUNKREC__CLUSTER__ROLE", "api")])).unwrap_err();
        assert!(
            format!("{e:#}").contains("needs a PostgreSQL database"),
            "{e:#}"
        );
        assert!(Settings::load_from(None, env(&[("FUNKREC__CLUSTER__ROLE", "trainer")])).is_err());
        assert!(Settings::load_from(None, env(&[("FUNKREC__CLUSTER__ROLE", "boss")])).is_err());
        let s = Settings::load_from(
            None,
            env(&[
                ("FUNKREC__CLUSTER__ROLE", "trainer"),
                (
                    "FUNKREC__STORAGE__DATABASE_URL",
                    "postgres://u@127.0.0.1/db",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(s.cluster.role, ClusterRole::Trainer);
        assert!(!s.cluster.role.serves_api() && s.cluster.role.trains());
    }

    #[test]
    fn production_file_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.toml");
        let s = Settings::load_from(Some(&p), env(&[])).unwrap();
        assert_eq!(s.server.bind, "0.0.0.0:8080");
        assert!(s.log.json);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Settings::load_from(None, env(&[("FUNKREC__MODEL__FACTORS", "0")])).is_err());
        assert!(Settings::load_from(None, env(&[("FUNKREC__SERVER__MAX_BATCH", "x")])).is_err());
        assert!(Settings::load_from(None, env(&[("FUNKREC__SERVER__NOPE", "1")])).is_err());
        assert!(Settings::load_from(Some(Path::new("/nonexistent.toml")), env(&[])).is_err());
    }

    const ADMIN: &str = "admin-0123456789abcdef";
    const READER: &str = "reader-0123456789abcdef";

    #[test]
    fn keys_from_env_and_file_and_debug_redacts_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys");
        std::fs::write(&f, format!("# ops keys\nread:{READER}\n")).unwrap();
        let admin_spec = format!("admin:{ADMIN}");
        let s = Settings::load_from(
            None,
            env(&[
                ("FUNKREC__AUTH__KEYS", admin_spec.as_str()),
                ("FUNKREC__AUTH__KEYS_FILE", f.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(s.auth.keys.len(), 2);
        assert_eq!(s.auth.keys.role_of(ADMIN), Some(crate::auth::Role::Admin));
        assert_eq!(s.auth.keys.role_of(READER), Some(crate::auth::Role::Read));
        let dbg = format!("{s:?} {s:#?}");
        assert!(!dbg.contains(ADMIN) && !dbg.contains(READER), "{dbg}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains(ADMIN) && !json.contains(READER), "{json}");
        // a TOML list works too; a missing file or a bad key refuses to load
        let t = dir.path().join("c.toml");
        std::fs::write(&t, format!("[auth]\nkeys = [\"write:{ADMIN}\"]\n")).unwrap();
        let s = Settings::load_from(Some(&t), env(&[])).unwrap();
        assert_eq!(s.auth.keys.role_of(ADMIN), Some(crate::auth::Role::Write));
        assert!(
            Settings::load_from(None, env(&[("FUNKREC__AUTH__KEYS_FILE", "/nonexistent")]))
                .is_err()
        );
        let e =
            Settings::load_from(None, env(&[("FUNKREC__AUTH__KEYS", "admin:short")])).unwrap_err();
        assert!(!format!("{e:#}").contains("short"), "{e:#}");
    }

    #[test]
    fn exposure_needs_keys_or_allow_open() {
        let addr = |s: &str| vec![s.parse::<std::net::SocketAddr>().unwrap()];
        let mut s = Settings::default();
        assert!(!s.auth.allow_open && s.auth.keys.is_empty());
        // loopback without keys: allowed, with a warning
        assert!(s.check_exposure(&addr("127.0.0.1:8080")).unwrap().is_some());
        assert!(s.check_exposure(&addr("[::1]:8080")).unwrap().is_some());
        // anything else without keys: refused, unless allow_open
        let e = s.check_exposure(&addr("0.0.0.0:8080")).unwrap_err();
        assert!(e.to_string().contains("allow_open"), "{e}");
        assert!(s.check_exposure(&addr("10.1.2.3:8080")).is_err());
        assert!(s.check_exposure(&[]).is_err());
        s.auth.allow_open = true;
        assert!(s.check_exposure(&addr("0.0.0.0:8080")).unwrap().is_some());
        // with keys: anywhere, no warning
        s.auth.allow_open = false;
        s.auth.keys = crate::auth::ApiKeys::parse_all([format!("read:{READER}").as_str()]).unwrap();
        assert!(s.check_exposure(&addr("0.0.0.0:8080")).unwrap().is_none());
    }
}
