//! Application assembly: store, snapshot, worker and HTTP server, run until a shutdown signal.

use crate::cluster::{Cluster, ClusterTasks};
use crate::config::Settings;
use crate::fdlimit;
use crate::http::{self, AppContext, AppState};
use crate::metrics::Metrics;
use crate::rated::RecentWrites;
use crate::snapshot::{self, Serving};
use crate::store::{Store, Writer, WriterTask};
use crate::worker::{Worker, WorkerTask};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A bound, ready-to-run service.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    worker_task: WorkerTask,
    writer_task: WriterTask,
    cluster_tasks: ClusterTasks,
}

impl Application {
    /// Opens and migrates the store, loads the serving (else the newest valid) snapshot (served
    /// before any retrain), starts the worker and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.validate()?;
        let settings = Arc::new(settings);
        let store = Store::connect(&settings).await?;
        let serving = Arc::new(Serving::new());
        let recent = Arc::new(RecentWrites::new());
        let cluster = Cluster::for_settings(&settings);
        // (on PostgreSQL too: the trainer writes its model files there first)
        std::fs::create_dir_all(settings.models_dir())
            .with_context(|| format!("creating {}", settings.models_dir().display()))?;
        let (snap, last_version) = crate::cluster::initial_snapshot(&store, &settings, &cluster)
            .await
            .context("loading model snapshots")?;
        match snap {
            Some(s) => snapshot::serve_loaded(&serving, &store, &recent, Arc::new(s)),
            None => tracing::info!(
                "no model snapshot yet: serving fallbacks until the first training run"
            ),
        }
        let forgets = Arc::new(
            crate::forget::Forgets::load(&store, last_version)
                .await
                .context("loading retired items and forgotten users")?,
        );
        tokio::spawn(crate::forget::clear_covered(
            forgets.clone(),
            &serving,
            store.clone(),
        ));
        let listener = bind(&settings).await?;
        let addr = listener.local_addr()?;
        // The writer first: it takes the store's lock, so a refused start leaves no worker.
        let (writer, writer_task) = Writer::start(&store, recent.clone())?;
        let (worker, worker_task) = Worker::start(
            settings.clone(),
            store.clone(),
            serving.clone(),
            recent.clone(),
            last_version,
            cluster.clone(),
        )
        .await;
        let cluster_tasks = ClusterTasks::start(
            cluster.clone(),
            store.clone(),
            serving.clone(),
            recent.clone(),
            forgets.clone(),
            Duration::from_secs(settings.cluster.poll_secs),
        );
        tracing::info!(
            role = %settings.cluster.role,
            backend = store.backend_name(),
            "cluster role"
        );
        let state = AppState::new(AppContext {
            settings,
            store,
            writer,
            recent,
            serving,
            forgets,
            worker,
            worker_loop: worker_task.abort_handle(),
            metrics: Arc::new(Metrics::new()),
            cluster,
        });
        Ok(Application {
            listener,
            addr,
            state,
            worker_task,
            writer_task,
            cluster_tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The training worker (to watch its status and publications in tests).
    pub fn worker(&self) -> Worker {
        self.state.worker.clone()
    }

    /// The router with all middleware, for in-process tests (`tower::ServiceExt::oneshot`).
    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone())
    }

    /// Serves until SIGTERM or Ctrl-C; a second signal during the shutdown exits the
    /// process at once (every acknowledged write is already committed).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(async {
            shutdown_signal().await;
            exit_on_second_signal();
        })
        .await
    }

    /// Serves until `signal` completes: stops accepting, finishes in-flight
    /// requests (dropping the connections still open after
    /// `server.shutdown_timeout_secs`), then stops the worker (cancelling a run at its
    /// next epoch) and closes the database.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "listening");
        let store = self.state.store.clone();
        let server = &self.state.settings.server;
        let limits = http::serve::ConnLimits {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            max_connections: fdlimit::connection_cap(server.max_connections, fdlimit::soft_limit()),
            shutdown_timeout: Duration::from_secs(server.shutdown_timeout_secs),
        };
        let app = http::router(self.state);
        http::serve::serve(self.listener, app, limits, signal).await;
        // the router (and with it every writer handle) is gone: queued writes commit
        self.writer_task.finish().await;
        tracing::info!("server stopped; stopping the training worker");
        self.worker_task.shutdown().await;
        // after the worker: leadership ends (the lock is released) once no run is left
        self.cluster_tasks.shutdown().await;
        store.close().await;
        Ok(())
    }
}

/// Binds `server.bind` after checking it is safe to serve there: without API
/// keys only a loopback address is, unless `auth.allow_open` (see
/// [`Settings::check_exposure`]). Refuses before anything listens.
async fn bind(settings: &Settings) -> anyhow::Result<TcpListener> {
    let bind = &settings.server.bind;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(bind)
        .await
        .with_context(|| format!("resolving server.bind {bind}"))?
        .collect();
    match settings.check_exposure(&addrs)? {
        Some(warning) => tracing::warn!("{warning}"),
        None => tracing::info!(keys = %settings.auth.keys.summary(), "API keys required"),
    }
    TcpListener::bind(addrs.as_slice())
        .await
        .with_context(|| format!("binding {bind}"))
}

/// Exits the process (status 130) on the next SIGTERM or SIGINT. The listeners are
/// registered before this returns, so a signal sent any time after is not missed.
fn exit_on_second_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::warn!("second shutdown signal: exiting now");
            std::process::exit(130);
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
