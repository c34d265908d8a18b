//! The HTTP/1 connection loop: header-read timeout, connection cap with eviction of idle
//! connections, graceful shutdown with a deadline.
//!
//! `axum::serve` offers none of these: its hyper builder has no timer, so a client that
//! sends half a header keeps its connection (and file descriptor) forever, and graceful
//! shutdown waits for such a client without end. This loop drives hyper's HTTP/1
//! connection directly (the `hyper-util` glue axum itself uses), which gives:
//! - hyper's own `header_read_timeout`, with a Tokio timer: it runs from the moment a
//!   connection waits for a request head (after accept, and again after each response), so
//!   it closes half-sent headers and idle keep-alive connections alike;
//! - a cap on open connections below the open-file limit ([`crate::fdlimit`]): at the cap,
//!   the oldest connection with no request in flight (idle or still sending its header) is
//!   closed to admit the next one, so `accept` never meets `EMFILE` and a fresh client (a
//!   probe) gets in within one round of evictions instead of waiting for timeouts;
//! - shutdown: stop accepting, let each connection finish its request and close
//!   (`graceful_shutdown`), and after `deadline` drop whatever is still open.

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The limits the loop enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Time to receive a complete request head (from accept or the previous response).
    pub header_read_timeout: Duration,
    /// Open connections at most (clamped to `u32::MAX`).
    pub max_connections: usize,
    /// How long shutdown waits for open connections before dropping them.
    pub shutdown_timeout: Duration,
}

/// One open connection, as the accept loop sees it.
#[derive(Default)]
struct ConnState {
    /// Requests of this connection inside the application right now.
    in_flight: AtomicUsize,
    /// Cancelled to close the connection at once (eviction).
    evict: CancellationToken,
}

/// Open connections in accept order (ids increase), for eviction of the oldest idle one.
#[derive(Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(self: &Arc<Self>, id: u64) -> Registered {
        let state = Arc::new(ConnState::default());
        self.lock().insert(id, state.clone());
        Registered {
            registry: self.clone(),
            id,
            state,
        }
    }

    /// Closes the oldest connection that has no request in flight; false when every
    /// open connection is serving a request.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.lock();
        let victim = conns
            .values()
            .find(|c| c.in_flight.load(Ordering::Acquire) == 0 && !c.evict.is_cancelled());
        match victim {
            Some(c) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A connection's entry; removed from the registry when the connection task ends.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
    state: Arc<ConnState>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Counts a request as in flight on its connection until dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn enter(state: &Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `signal` completes, then shuts down within
/// `limits.shutdown_timeout` (see the module documentation).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    let cap = limits.max_connections.clamp(1, u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(cap));
    let registry = Arc::new(Registry::default());
    let shutdown = CancellationToken::new();
    let drop_all = CancellationToken::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // above the field limit `hygiene` enforces, so that one answers (in JSON)
        .max_headers(4 * crate::http::hygiene::MAX_HEADER_FIELDS)
        .keep_alive(true);
    let builder = Arc::new(builder);
    tracing::info!(
        max_connections = cap,
        header_read_timeout_secs = limits.header_read_timeout.as_secs_f64(),
        "accepting connections"
    );
    let mut next_id = 0u64;
    let mut last_accept_error: Option<Instant> = None;
    tokio::pin!(signal);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if registry.evict_oldest_idle() {
                    tracing::debug!(
                        max_connections = cap,
                        "at the connection cap: closed the oldest idle connection"
                    );
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    () = &mut signal => break,
                }
            }
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // e.g. ECONNABORTED, or a descriptor shortage the reserve did not cover:
                    // log at most once a second, back off briefly, keep serving
                    if last_accept_error.map_or(true, |t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let entry = registry.add(next_id);
        let (builder, app) = (builder.clone(), app.clone());
        let (shutdown, drop_all) = (shutdown.clone(), drop_all.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let state = entry.state.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let guard = InFlight::enter(&state);
                let call = app.clone().oneshot(req.map(Body::new));
                async move {
                    let res = call.await;
                    drop(guard);
                    res
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection closed with an error");
                        }
                        break;
                    }
                    () = entry.state.evict.cancelled() => break,
                    () = drop_all.cancelled() => break,
                    () = shutdown.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    let open = registry.len();
    tracing::info!(
        open_connections = open,
        deadline_secs = limits.shutdown_timeout.as_secs_f64(),
        "no longer accepting; waiting for open connections"
    );
    shutdown.cancel();
    let all = cap as u32;
    if tokio::time::timeout(limits.shutdown_timeout, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open_connections = registry.len(),
            "shutdown deadline reached: dropping the remaining connections"
        );
        drop_all.cancel();
        // every task ends at its next poll; bounded in case one is stuck in a handler
        let _ = tokio::time::timeout(Duration::from_secs(5), permits.acquire_many(all)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_takes_the_oldest_idle_connection() {
        let r = Arc::new(Registry::default());
        let (a, b, c) = (r.add(1), r.add(2), r.add(3));
        let busy = InFlight::enter(&a.state);
        assert!(r.evict_oldest_idle());
        assert!(!a.state.evict.is_cancelled(), "a request is in flight");
        assert!(b.state.evict.is_cancelled());
        assert!(r.evict_oldest_idle());
        assert!(c.state.evict.is_cancelled());
        assert!(!r.evict_oldest_idle(), "only a busy one is left");
        drop(busy);
        assert!(r.evict_oldest_idle());
        drop((a, b, c));
        assert_eq!(r.len(), 0);
    }
}
