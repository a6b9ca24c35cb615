//! The accept loop of `batchyard serve`, in place of `axum::serve`, which has no read timeouts
//! and no bound on connections: slow clients that sent half a header held it hostage.
//!
//! - Headers must arrive within [`Limits::header_timeout`] (hyper's timer; it also bounds an
//!   idle keep-alive connection waiting for its next request).
//! - A request body that stalls for [`Limits::body_timeout`] between two chunks fails the
//!   request (see [`super::body_timeout`]).
//! - At most [`Limits::max_connections`] are open. A new connection beyond that, or one that
//!   finds the process out of file descriptors, closes the oldest connection that has not sent
//!   a whole request yet: those are the slow clients, and a real client gets in at once instead
//!   of queueing behind them. When every open connection is serving a request, accepting waits.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for connections to finish their requests.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// File descriptors left to Redis, storage and logs when the connection cap comes from the
/// process's open-file limit.
const FD_HEADROOM: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// `max_connections`, lowered so that connections alone can't use up the process's
    /// open-file limit (`ulimit -n`).
    pub fn within_fd_limit(mut self) -> Self {
        if let Some(soft) = open_file_limit() {
            let room = soft.saturating_sub(FD_HEADROOM).max(16);
            self.max_connections = self.max_connections.min(room);
        }
        self
    }
}

/// The soft `Max open files` of this process (Linux); `None` elsewhere or when unlimited.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

struct Open {
    /// Set once hyper has read a whole request head on this connection.
    requested: Arc<AtomicBool>,
    evict: CancellationToken,
}

#[derive(Default)]
struct Registry {
    next: u64,
    /// By connection number: the oldest first.
    open: BTreeMap<u64, Open>,
}

#[derive(Clone, Default)]
struct Connections {
    registry: Arc<Mutex<Registry>>,
    closed: Arc<Notify>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self) -> usize {
        self.lock().open.len()
    }

    fn add(&self) -> (u64, Arc<AtomicBool>, CancellationToken) {
        let mut r = self.lock();
        r.next += 1;
        let (id, requested, evict) = (r.next, Arc::default(), CancellationToken::new());
        r.open.insert(
            id,
            Open {
                requested: Arc::clone(&requested),
                evict: evict.clone(),
            },
        );
        (id, requested, evict)
    }

    fn remove(&self, id: u64) {
        self.lock().open.remove(&id);
        self.closed.notify_waiters();
    }

    /// Closes the oldest connection that has not sent a whole request; false when there is none.
    fn evict_one(&self) -> bool {
        let mut r = self.lock();
        let Some(id) = r
            .open
            .iter()
            .find(|(_, c)| !c.requested.load(Ordering::Relaxed))
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(c) = r.open.remove(&id) {
            c.evict.cancel();
        }
        true
    }

    /// Waits (briefly) for some connection to close.
    async fn some_closed(&self) {
        let _ = tokio::time::timeout(Duration::from_millis(100), self.closed.notified()).await;
    }
}

/// Tells the registry when hyper hands a request to the router.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    requested: Arc<AtomicBool>,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response =
        <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Error;
    type Future =
        <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.requested.store(true, Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// Logs at most once a minute that slow connections are being closed to make room.
struct Crowded(Option<Instant>);

impl Crowded {
    fn note(&mut self, why: &str, max: usize) {
        if self
            .0
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            self.0 = Some(Instant::now());
            tracing::warn!(
                max_connections = max,
                "{why}: closing the oldest connections that have not sent a request"
            );
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in flight finish
/// (up to 30 s).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let conns = Connections::default();
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut crowded = Crowded(None);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if out_of_fds(&e) => {
                crowded.note("out of file descriptors", limits.max_connections);
                if !conns.evict_one() {
                    tracing::debug!("out of file descriptors and every connection is busy");
                }
                conns.some_closed().await;
                continue;
            }
            Err(e) => {
                // A client that reset before we accepted it; nothing to do but go on.
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        while conns.count() >= limits.max_connections {
            crowded.note("at the connection limit", limits.max_connections);
            if !conns.evict_one() {
                tokio::select! {
                    () = &mut shutdown => { stop.cancel(); break; }
                    () = conns.some_closed() => {}
                }
            }
        }
        if stop.is_cancelled() {
            break;
        }
        let _ = stream.set_nodelay(true);
        let (id, requested, evict) = conns.add();
        let service = Tracked {
            inner: TowerToHyperService::new(router.clone()),
            requested,
        };
        let (builder, conns, stop) = (Arc::clone(&builder), conns.clone(), stop.clone());
        tasks.spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // Dropping the connection closes the socket.
                () = evict.cancelled() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            conns.remove(id);
        });
    }
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(CLOSE_WAIT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {CLOSE_WAIT:?}; closing them");
    }
}

/// EMFILE / ENFILE: the process (or system) has no file descriptor left for a new socket.
fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}
