//! The HTTP side port: `GET /healthcheck` and `GET /stats`.
//!
//! `/healthcheck` answers 200 `OK` when the service can answer rate-limit
//! calls: for the in-memory store while it has room for new counters (not
//! at its key cap, and no call refused for lack of room in the last
//! seconds), and for Redis only when a PING succeeds. It answers 500 once shutdown has begun: on SIGINT/SIGTERM both
//! ports keep serving for `--drain-seconds` (see [`crate::cli`]) with this
//! 500, so a load balancer stops sending traffic before the gRPC port
//! closes (as envoyproxy/ratelimit does on SIGTERM).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tracing::warn;

use crate::backend::Backend;
use crate::service::{Stats, StatsSnapshot};

/// What the HTTP handlers look at.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The counter store to check.
    pub backend: Arc<Backend>,
    /// The service counters.
    pub stats: Arc<Stats>,
    /// Set when shutdown begins.
    pub shutting_down: Arc<AtomicBool>,
}

/// Most connections the HTTP port holds at once; past it, new ones wait
/// in the kernel's accept queue until one closes. Without a bound, idle
/// connections to the probe port (which anyone on the pod network may
/// reach) could take every file descriptor the process may open, and the
/// gRPC port would then accept nothing.
pub const MAX_HTTP_CONNECTIONS: usize = 256;

/// Longest an HTTP connection stays open, whatever it does: a probe or a
/// scrape takes milliseconds, while a client that sends a request a byte
/// at a time (or nothing) would otherwise hold its connection for ever.
pub const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// The HTTP port's listener: at most [`MAX_HTTP_CONNECTIONS`] at once,
/// each closed after [`HTTP_CONNECTION_LIFETIME`].
#[derive(Debug)]
pub struct BoundedListener {
    /// The bound socket.
    inner: TcpListener,
    /// One permit per open connection.
    permits: Arc<Semaphore>,
    /// How long a connection may stay open.
    lifetime: Duration,
}

impl BoundedListener {
    /// Wraps `inner` with [`MAX_HTTP_CONNECTIONS`] and
    /// [`HTTP_CONNECTION_LIFETIME`].
    pub fn new(inner: TcpListener) -> Self {
        Self::with_bounds(inner, MAX_HTTP_CONNECTIONS, HTTP_CONNECTION_LIFETIME)
    }

    /// Wraps `inner` with other bounds (tests).
    pub fn with_bounds(inner: TcpListener, connections: usize, lifetime: Duration) -> Self {
        BoundedListener {
            inner,
            permits: Arc::new(Semaphore::new(connections)),
            lifetime,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        // The semaphore is never closed, so this waits for a permit.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let stream = BoundedStream {
            io,
            deadline: Box::pin(tokio::time::sleep(self.lifetime)),
            _permit: permit,
        };
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection of [`BoundedListener`]: reads and writes fail once its
/// lifetime is over (the server then closes it), and its permit goes back
/// when it is dropped.
#[derive(Debug)]
pub struct BoundedStream {
    /// The connection.
    io: TcpStream,
    /// When it must be closed.
    deadline: Pin<Box<Sleep>>,
    /// Its place among the open connections.
    _permit: Option<OwnedSemaphorePermit>,
}

impl BoundedStream {
    /// An error once the lifetime is over.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.deadline
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::TimedOut, "HTTP connection lifetime over"))
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router for the HTTP port.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/stats", get(stats))
        .with_state(state)
}

async fn healthcheck(State(state): State<HttpState>) -> (StatusCode, String) {
    if state.shutting_down.load(Ordering::Relaxed) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "shutting down\n".to_owned(),
        );
    }
    match state.backend.check().await {
        Ok(()) => (StatusCode::OK, "OK".to_owned()),
        Err(e) => {
            warn!(backend = state.backend.kind(), error = %e, "health check failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{} unavailable: {e}\n", state.backend.kind()),
            )
        }
    }
}

async fn stats(State(state): State<HttpState>) -> Json<StatsSnapshot> {
    Json(state.stats.snapshot())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::{Read, Write};
    use std::time::Instant;

    use super::*;

    /// Connections that send half a request (or nothing) are closed when
    /// their lifetime is over, and the ones past the bound wait for a
    /// place instead of taking a file descriptor each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_bounded_and_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let bounded = BoundedListener::with_bounds(listener, 2, Duration::from_millis(400));
        tokio::spawn(async move { axum::serve(bounded, app).await });
        let outcome = tokio::task::spawn_blocking(move || {
            let slow = |_| {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
                c
            };
            let mut held: Vec<_> = (0..2).map(slow).collect();
            std::thread::sleep(Duration::from_millis(100));
            // A third connection waits for a place, then is served.
            let started = Instant::now();
            let mut third = std::net::TcpStream::connect(addr).unwrap();
            third
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            third
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            third.read_to_string(&mut answer).unwrap();
            let waited = started.elapsed();
            // The half-sent requests were cut off by then.
            let closed = held.iter_mut().all(|c| {
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 64];
                match c.read(&mut buf) {
                    Ok(n) => n == 0,
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                }
            });
            (answer, waited, closed)
        })
        .await
        .unwrap();
        let (answer, waited, closed) = outcome;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        assert!(
            waited >= Duration::from_millis(200),
            "served at once: {waited:?}"
        );
        assert!(closed, "a half-sent request was still open");
    }
}
