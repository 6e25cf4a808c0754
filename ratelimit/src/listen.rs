//! The two ports' listeners, with bounds: a connection takes a file
//! descriptor and some memory for as long as it is open, so neither port
//! may hold more than a fixed number at once, and a connection that sends
//! nothing is closed.
//!
//! - The HTTP port ([`BoundedListener`]) answers probes and scrapes, which
//!   take milliseconds: at most [`MAX_HTTP_CONNECTIONS`] at once, each
//!   closed after [`HTTP_CONNECTION_LIFETIME`] whatever it does.
//! - The gRPC port ([`grpc_incoming`]) keeps Envoy's connections (one per
//!   worker, open for hours): at most `--max-grpc-connections` at once, and
//!   one that has not sent a byte [`GRPC_FIRST_BYTES_WITHIN`] after it was
//!   accepted is closed. Once the HTTP/2 connection runs, the keepalive
//!   pings of [`crate::cli`] find a peer that vanished.
//!
//! Past a bound, new connections wait in the kernel's accept queue until an
//! open one closes: nothing is refused, and the descriptors the process
//! needs for Redis and the other port are never all taken by one port.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

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

/// The default of `--max-grpc-connections`: Envoy opens one connection per
/// worker to the service, so this serves a thousand Envoys of four workers
/// from one replica.
pub const DEFAULT_MAX_GRPC_CONNECTIONS: usize = 4096;

/// How soon a gRPC connection must send its first bytes, the whole HTTP/2
/// preface (which Envoy sends at once), before it is closed: a connection
/// that sends nothing, or part of it, would otherwise hold its place, and
/// its descriptor, for ever.
pub const GRPC_FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);

/// Bytes of the HTTP/2 connection preface (RFC 9113 §3.4), which a gRPC
/// client sends first: the first-bytes deadline ends once they came.
const HTTP2_PREFACE_BYTES: usize = 24;

/// Descriptors the process needs besides its connections: Redis, the
/// listeners, the runtime, logs.
const OTHER_DESCRIPTORS: u64 = 128;

/// What closes a connection early.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// The connection is closed this long after it was accepted.
    Lifetime(Duration),
    /// The connection is closed if it has sent nothing this long after it
    /// was accepted.
    FirstBytes(Duration),
}

impl Deadline {
    /// The timer for a connection accepted now, and whether its first
    /// bytes end it.
    fn start(self) -> (Pin<Box<Sleep>>, bool) {
        match self {
            Deadline::Lifetime(d) => (Box::pin(tokio::time::sleep(d)), false),
            Deadline::FirstBytes(d) => (Box::pin(tokio::time::sleep(d)), true),
        }
    }
}

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
        (
            BoundedStream::new(io, Deadline::Lifetime(self.lifetime), permit),
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The gRPC port's connections, for tonic's `serve_with_incoming`: at most
/// `max` open at once (the others wait to be accepted), each closed if it
/// sends nothing within `first_bytes`, with `TCP_NODELAY` set (an answer is
/// a few small HTTP/2 frames; with Nagle on, one that follows another on a
/// quiet connection waits for the client's delayed ACK, 40 ms on Linux).
///
/// The accepting runs in a task of its own that ends when the server drops
/// the stream (at shutdown).
pub fn grpc_incoming(
    listener: TcpListener,
    max: usize,
    first_bytes: Duration,
) -> ReceiverStream<io::Result<BoundedStream>> {
    let (tx, rx) = mpsc::channel(1);
    let permits = Arc::new(Semaphore::new(max));
    tokio::spawn(async move {
        // When the port was last said to be full: at most once a minute.
        let mut said_full: Option<tokio::time::Instant> = None;
        loop {
            let permit = match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if said_full.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        warn!(
                            max_grpc_connections = max,
                            "the gRPC port holds as many connections as it may; \
                             new ones wait until one closes (--max-grpc-connections)"
                        );
                        said_full = Some(tokio::time::Instant::now());
                    }
                    tokio::select! {
                        permit = Arc::clone(&permits).acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                        () = tx.closed() => return,
                    }
                }
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            match accepted {
                Ok((io, _)) => {
                    // Best effort: a connection without it is slower, not
                    // wrong.
                    let _ = io.set_nodelay(true);
                    let stream =
                        BoundedStream::new(io, Deadline::FirstBytes(first_bytes), Some(permit));
                    if tx.send(Ok(stream)).await.is_err() {
                        return;
                    }
                }
                // The peer gave up before it was accepted: nothing to do.
                Err(e) if is_connection_error(&e) => {}
                // Out of descriptors, or memory: wait rather than spin.
                Err(e) => {
                    warn!(error = %e, "cannot accept a gRPC connection; trying again in 1 s");
                    drop(permit);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = tx.closed() => return,
                    }
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Errors of one connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Raises the soft limit on open files to the hard one (as Go's runtime
/// does for envoyproxy/ratelimit), so that the connection bounds, not the
/// limit a shell or a unit file happened to set (often 1024), decide how
/// many connections the service holds. Returns the soft limit now in
/// force, and a warning when it is below what `max_grpc_connections` and
/// the HTTP port need.
pub fn raise_open_file_limit(max_grpc_connections: usize) -> (Option<u64>, Option<String>) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // Linux refuses an infinite limit on open files.
    const CEILING: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(CEILING).min(CEILING);
    let mut soft = limit.current;
    let mut failure = None;
    if soft.is_some_and(|soft| soft < hard) {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: limit.maximum,
            },
        ) {
            Ok(()) => soft = Some(hard),
            Err(e) => failure = Some(e),
        }
    }
    let need = (max_grpc_connections as u64)
        .saturating_add(MAX_HTTP_CONNECTIONS as u64)
        .saturating_add(OTHER_DESCRIPTORS);
    let warning = match soft {
        Some(soft) if soft < need => Some(format!(
            "the open-file limit is {soft}{}, below the {need} descriptors that \
             --max-grpc-connections {max_grpc_connections} and the HTTP port may take: \
             raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower --max-grpc-connections",
            failure.map_or(String::new(), |e| format!(" (raising it failed: {e})")),
        )),
        _ => None,
    };
    (soft, warning)
}

/// A connection of [`BoundedListener`] or [`grpc_incoming`]: reads and
/// writes fail once its deadline passes (the server then closes it), and
/// its permit goes back when it is dropped.
#[derive(Debug)]
pub struct BoundedStream {
    /// The connection.
    io: TcpStream,
    /// When it must be closed, if it still is by then.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether the first bytes read end the deadline (the gRPC port's).
    first_bytes_only: bool,
    /// Bytes read so far, up to [`HTTP2_PREFACE_BYTES`].
    first_read: usize,
    /// Its place among the open connections.
    _permit: Option<OwnedSemaphorePermit>,
}

impl BoundedStream {
    /// A connection accepted now, with its deadline and its place.
    fn new(io: TcpStream, deadline: Deadline, permit: Option<OwnedSemaphorePermit>) -> Self {
        let (timer, first_bytes_only) = deadline.start();
        BoundedStream {
            io,
            deadline: Some(timer),
            first_bytes_only,
            first_read: 0,
            _permit: permit,
        }
    }

    /// An error once the deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let passed = self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        passed.then(|| {
            let what = if self.first_bytes_only {
                "no bytes from the peer in time"
            } else {
                "connection lifetime over"
            };
            io::Error::new(io::ErrorKind::TimedOut, what)
        })
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
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.first_bytes_only {
            // The whole HTTP/2 preface, not a byte of it: a peer that sends
            // part and stops would hold its place for ever.
            self.first_read = self
                .first_read
                .saturating_add(buf.filled().len().saturating_sub(before));
            if self.first_read >= HTTP2_PREFACE_BYTES {
                self.deadline = None;
            }
        }
        read
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

impl tonic::transport::server::Connected for BoundedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::Instant;

    use axum::routing::get;
    use axum::Router;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

    use super::*;
    use crate::backend::{Backend, MemoryBackend};
    use crate::matching::tests::config;
    use crate::service::{RateLimiter, RlsService, ServiceOptions, Stats};

    /// Whether the peer closed `c` (or reset it) within two seconds.
    fn closed_by_peer(c: &mut std::net::TcpStream) -> bool {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                // The server's own SETTINGS frame, on the gRPC port.
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }

    /// Connections that send half a request (or nothing) are closed when
    /// their lifetime is over, and the ones past the bound wait for a
    /// place instead of taking a file descriptor each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_http_connections_are_bounded_and_closed() {
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
            let closed = held.iter_mut().all(closed_by_peer);
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

    /// A gRPC server on [`grpc_incoming`] with the given bounds, answering
    /// from an in-memory store.
    async fn grpc_server(max: usize, first_bytes: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limiter = RateLimiter::new(
            Arc::new(config("domain: d\ndescriptors:\n  - key: k\n")),
            Arc::new(Backend::Memory(MemoryBackend::new(10))),
            ServiceOptions::default(),
            Arc::new(Stats::default()),
        );
        let server = tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::new(RlsService::new(Arc::new(
                limiter,
            ))))
            .serve_with_incoming(grpc_incoming(listener, max, first_bytes));
        tokio::spawn(server);
        addr
    }

    /// One `ShouldRateLimit` call on a new connection; its error if any.
    async fn call(addr: SocketAddr) -> Result<(), String> {
        let mut client = RateLimitServiceClient::connect(format!("http://{addr}"))
            .await
            .map_err(|e| e.to_string())?;
        let request = RateLimitRequest {
            domain: "d".to_owned(),
            descriptors: Vec::new(),
            hits_addend: 0,
        };
        // No descriptors is INVALID_ARGUMENT: an answer all the same.
        match client.should_rate_limit(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(()),
            Err(status) => Err(status.to_string()),
        }
    }

    /// A gRPC connection that sends part of the HTTP/2 preface and stops is
    /// closed once the whole preface is late, and its place goes to the
    /// next; one that sent its preface stays open however quiet it is
    /// afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_grpc_connections_are_closed_and_quiet_ones_kept() {
        let addr = grpc_server(1, Duration::from_millis(300)).await;
        // A real client, quiet for longer than the deadline after its call.
        let mut client = RateLimitServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let request = || RateLimitRequest {
            domain: "d".to_owned(),
            descriptors: Vec::new(),
            hits_addend: 0,
        };
        let first = client.should_rate_limit(request()).await.unwrap_err();
        assert_eq!(first.code(), tonic::Code::InvalidArgument, "{first}");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let again = client.should_rate_limit(request()).await.unwrap_err();
        assert_eq!(again.code(), tonic::Code::InvalidArgument, "{again}");
        // The bound is one connection, and the client holds it: a second
        // (silent) one waits to be accepted, so nothing closes it...
        let waiting = tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            // A part of the preface only: not enough to stay.
            c.write_all(b"PRI * HTTP/2.0").unwrap();
            let started = Instant::now();
            c.set_read_timeout(Some(Duration::from_millis(800)))
                .unwrap();
            let mut buf = [0u8; 64];
            let outcome = c.read(&mut buf).map_err(|e| e.kind());
            (c, outcome, started.elapsed())
        })
        .await
        .unwrap();
        let (mut silent, outcome, waited) = waiting;
        assert!(
            matches!(
                outcome,
                Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            ),
            "a connection past the bound was answered: {outcome:?} after {waited:?}"
        );
        // ...until the client's connection closes: then it is accepted, and
        // closed for its silence.
        drop(client);
        let closed = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            (closed_by_peer(&mut silent), started.elapsed())
        })
        .await
        .unwrap();
        assert!(closed.0, "a silent connection stayed open");
        // Its place is free again.
        call(addr).await.unwrap();
    }
}
