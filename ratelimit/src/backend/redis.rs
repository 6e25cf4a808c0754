//! The Redis counter store, shared by every replica that uses the same Redis.
//!
//! A batch is one `MULTI`/`EXEC` transaction holding, per counter,
//! `INCRBY key hits` and `EXPIRE key window_seconds`, the commands
//! envoyproxy/ratelimit pipelines (`src/redis/fixed_cache_impl.go`), so the
//! count and its expiry are set together and replicas never lose updates.
//! A `rolling` counter's `EXPIRE` has `NX` (Redis 7 or later): only its
//! first hit sets when it ends. A counter of 0 hits (a check) gets a `GET`
//! instead (and a `PTTL` when rolling), which neither creates the key nor
//! sets its expiry: a check does not start a rolling window.
//!
//! Redis does not roll back a transaction in which one command fails when
//! it runs (`INCRBY` of a key that holds no integer, or past `i64::MAX`):
//! the other counters of the batch are counted, while the call is answered
//! UNAVAILABLE.
//!
//! With `--stop-increment-when-over-limit` a batch is one script instead
//! ([`STOP_WHEN_REFUSED_SCRIPT`], run by its SHA-1 with `EVALSHA`, its
//! body sent with `EVAL` only when Redis does not hold it): it reads every
//! counter, and counts (the same commands) only if the call is not
//! refused. A key that holds no string (`WRONGTYPE`) stops it at the
//! first read, before any write; an `INCRBY` that fails halfway leaves the
//! earlier counters counted, as the transaction does. The reads take a
//! stored value as Lua's `tonumber` does (`" 5"` or `1e3` as numbers,
//! where `INCRBY` would refuse them; a negative count as 0): only another
//! writer of the keys can store such values, and the answer still agrees
//! with what is counted.
//!
//! TLS (`rediss://`) is not built in: the `redis` crate is built without
//! its TLS features, and [`RedisBackend::new`] refuses such a URL (see
//! [`check_url`]).
//!
//! The connection is a `redis` crate connection manager: it connects lazily
//! (the service starts, and reports unhealthy, while Redis is down), and
//! reconnects after an I/O error. A counting call is never sent twice: the
//! crate answers the same error for a call its closed connection never
//! wrote and for one Redis ran before the connection closed (a failover's
//! `CLIENT KILL`, a restart or a proxy dropping the connection right
//! after), so a counting call whose connection closed fails. To keep that
//! from hitting the first call on a connection Redis closed while it was
//! idle (a restart, Redis's own `timeout` for idle clients), a counting
//! call on a connection quiet for 100 ms (`PING_WHEN_QUIET_FOR`) is
//! preceded by a PING, which is sent again on the new connection when the
//! old one turns out closed (see `closed_connection`). Every call is
//! bounded by a timeout; any failure is returned as an error, never as a
//! count. A connection that goes silent without an error (a half-open TCP
//! flow after a failover, a NAT or firewall dropping it) only ever times
//! out, which the manager does not take for a broken connection: when a
//! call times out, no call on the connection completed within the timeout for the whole Redis timeout,
//! and either another call is in flight on it or an earlier call already
//! timed out on it since the last one completed (so one call stalled on a
//! connection idle until then is not enough), the backend opens a new one
//! (at most once a [`REPLACE_TIMED_OUT_EVERY`]), instead of answering
//! UNAVAILABLE until the kernel gives up on the old flow. TCP keepalive
//! and, on Linux, `TCP_USER_TIMEOUT` let the kernel close a dead flow too.
//!
//! Each call runs in its own task, which waits for the reply (or the Redis
//! timeout) even when the caller gave up first (its `grpc-timeout`, often
//! shorter than `--redis-timeout-ms`): a reply that comes after the caller
//! left still shows the connection is alive, so a Redis that is slow but
//! answers (a `BGSAVE` fork, an expiry cycle, a noisy neighbour) keeps its
//! connection, while a silent one is still found by the calls' own
//! timeouts. Such a late call has usually been counted by Redis although
//! its caller saw a failure.
//!
//! Since a call's task outlives its caller, the per-connection bound on
//! gRPC calls handled at once no longer bounds the Redis calls in flight
//! (a caller with a 20 ms deadline frees its slot while its Redis call
//! waits on for up to the Redis timeout). So the backend bounds them
//! itself: at most [`MAX_CALLS_IN_FLIGHT`] at once, for the whole process;
//! past it a call fails at once with [`BackendError::Busy`] (UNAVAILABLE)
//! rather than queueing more work for a Redis that is already behind.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{socket2, TcpSettings};
use redis::{ErrorKind, ServerErrorKind};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::{BackendError, Batch, Counted, Increment, Refuses};

/// Idle time before the first keepalive probe on the Redis connection.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// Time between keepalive probes.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel closes the connection.
const TCP_KEEPALIVE_PROBES: u32 = 3;
/// How long written data may stay unacknowledged before the kernel closes
/// the connection (Linux `TCP_USER_TIMEOUT`).
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most Redis calls in flight at once (each in its own task, see
/// `RedisBackend::bounded`), across every gRPC connection and the
/// health check. A call past it fails at once with [`BackendError::Busy`].
///
/// 16 connections' worth of the 256 gRPC calls each handles at once: far
/// above what a Redis that answers needs (calls in flight are the call
/// rate times Redis's latency: 4096 is 4 million calls a second at 1 ms,
/// 40 000 at 100 ms), while a silent or stalled Redis, whose calls each
/// last the whole `--redis-timeout-ms`, holds at most this many
/// transactions waiting for it (about 4096 small tasks and their
/// commands: a few MB).
pub const MAX_CALLS_IN_FLIGHT: usize = 4096;

/// Shortest time between two replacements of the connection for replies
/// saying the server is no longer the primary (see
/// `Inner::error_reply`): while a failover is under way a new
/// connection may still reach the old primary.
pub const REPLACE_NOT_PRIMARY_EVERY: Duration = Duration::from_secs(1);

/// One counter of a reply: its count and, for a rolling counter, the
/// milliseconds its key has left (`PTTL`). A negative count can only come
/// from someone else's `DECRBY`: nothing used. The time left is rounded up
/// to whole seconds; a key without an expiry (-1, someone else's
/// `PERSIST`) or a missing one (-2) reports the whole unit.
fn counted(item: &Increment, count: i64, ms: i64) -> Counted {
    Counted {
        count: u64::try_from(count).unwrap_or(0),
        resets_in: item.rolling.then_some(if ms < 0 {
            item.window_seconds
        } else {
            ms.saturating_add(999) / 1000
        }),
    }
}

/// The script of [`RedisBackend::increment_unless_refused`]. `KEYS` are
/// the counters; `ARGV` has five values per key: hits, window seconds,
/// rolling (1/0), rule (0 never refuses, 1 refuses alone, 2 quota mode) and
/// the limit. It first reads every counter and adds the call's hits as if
/// counted in order (a key may come twice); if that refuses the call it
/// counts nothing (it only gives a rolling key found without an expiry
/// its window, see below). Otherwise it counts as the transaction of
/// [`RedisBackend::increment`] does (`GET` for 0 hits), but gives a key its
/// expiry as it creates it (`SET key 0 EX window NX`, then `INCRBY`): a
/// script is not undone when a command of it fails, and `INCRBY` followed
/// by a failing `EXPIRE` (Redis before 7 refuses `EXPIRE … NX`, an ACL may
/// lack `EXPIRE`) would leave a count without an expiry, which refused
/// calls, counting nothing, would never repair: a rolling limit would
/// refuse for ever. A rolling key found without an expiry (from such a
/// failure, or another writer) gets one. An epoch-window key's expiry then
/// runs from its first hit rather than its last, which counts the same
/// (its window is in its name). It answers the refusal (1/0), then per
/// key the count and its `PTTL` (-3 for an epoch window).
pub const STOP_WHEN_REFUSED_SCRIPT: &str = r#"
local n = #KEYS
local would = {}
local added = {}
local alone_over = false
local quota, quota_over = 0, 0
for i = 1, n do
  local b = (i - 1) * 5
  local hits = tonumber(ARGV[b + 1])
  local rule = tonumber(ARGV[b + 4])
  local limit = tonumber(ARGV[b + 5])
  local count = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if count < 0 then count = 0 end
  added[KEYS[i]] = (added[KEYS[i]] or 0) + hits
  would[i] = count + added[KEYS[i]]
  if rule == 1 and would[i] > limit then alone_over = true end
  if rule == 2 then
    quota = quota + 1
    if would[i] > limit then quota_over = quota_over + 1 end
  end
  if rule == 3 then quota = quota + 1 end
end
local refused = alone_over or (quota > 0 and quota == quota_over)
local out = { refused and 1 or 0 }
for i = 1, n do
  local b = (i - 1) * 5
  local hits = tonumber(ARGV[b + 1])
  local window = ARGV[b + 2]
  local rolling = ARGV[b + 3] == '1'
  local count
  if refused then
    count = would[i]
  elseif hits == 0 then
    count = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  else
    -- The expiry comes with the key, before the count: an error between
    -- the two (an ACL without EXPIRE) can never leave a count that lasts
    -- for ever. A rolling key is given its end by its first hit only.
    redis.call('SET', KEYS[i], 0, 'EX', window, 'NX')
    count = redis.call('INCRBY', KEYS[i], hits)
  end
  -- Lua numbers are doubles, and a double of 2^63 or more comes back as
  -- i64::MIN: cap what is answered (any count this high is over any
  -- u32 limit, and stays over).
  if count > 9007199254740992 then count = 9007199254740992 end
  out[#out + 1] = count
  if rolling then
    local ttl = redis.call('PTTL', KEYS[i])
    -- A rolling count without an expiry (left by an earlier version whose
    -- EXPIRE failed, or by another writer) would refuse for ever: its
    -- window starts now.
    if ttl == -1 then
      redis.call('EXPIRE', KEYS[i], window)
      ttl = redis.call('PTTL', KEYS[i])
    end
    out[#out + 1] = ttl
  else
    out[#out + 1] = -3
  end
end
return out
"#;

/// Whether an error reply says the server is no longer a writable primary.
fn not_primary(e: &redis::RedisError) -> bool {
    let stale = |k: Option<ServerErrorKind>| {
        matches!(
            k,
            Some(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
    };
    match e.kind() {
        ErrorKind::Server(k) if stale(Some(k)) => true,
        ErrorKind::Server(ServerErrorKind::ExecAbort) => e
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, s)| stale(s.kind()))),
        _ => false,
    }
}

/// Whether a call failed with `e` because its connection was closed: the
/// `redis` crate answers `BrokenPipe` for a call it could not hand to a
/// connection already closed (Redis restarted, or closed it under its own
/// `timeout`, while it was idle), and for every call still waiting when
/// the connection closed, which Redis may have run (a `CLIENT KILL` read
/// in the same turn as the call, Redis killed right after running it, a
/// proxy closing the connection before passing the reply on). So only a
/// call that may run twice (PING, reads) is sent again on such an error
/// (see `RedisBackend::bounded`). A reset or timeout says no more, and a
/// call that failed to connect is not sent again either (Redis down: a
/// second try would only double the time every call takes to fail).
fn closed_connection(e: &redis::RedisError) -> bool {
    // The crate keeps an I/O error as the source behind an `Arc`.
    let io = std::error::Error::source(e).and_then(|source| {
        match source.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            Some(shared) => shared.downcast_ref::<std::io::Error>(),
            None => source.downcast_ref::<std::io::Error>(),
        }
    });
    io.is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::NotConnected
        )
    })
}

/// Whether an error says Redis refused the connection's credentials.
fn auth_refused(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// How long a connection may have received nothing before a counting call
/// on it is preceded by a PING (see [`RedisBackend::ready_to_count`]). A
/// connection Redis closed while idle (a restart, Redis's `timeout` for
/// idle clients, at least a second) has been quiet at least this long, so
/// its first counting call does not find it closed and fail. Busy
/// connections pay nothing; below ten calls a second, one round trip more
/// per call.
const PING_WHEN_QUIET_FOR: Duration = Duration::from_millis(100);

/// Shortest time between a replacement of the connection and one for a
/// timeout (see `Inner::timed_out`): a Redis that stopped answering
/// altogether gets a new connection attempt once a second, not one per
/// call.
pub const REPLACE_TIMED_OUT_EVERY: Duration = Duration::from_secs(1);

/// How long calls fail at once after Redis refused a connection (nothing
/// listens: Redis down or restarting), before a call connects again: at
/// most one connection attempt per this while Redis is down, and a Redis
/// that is back is used within about this (the first call after the wait
/// gets the last failed attempt's error from the manager, and is sent
/// again on the attempt that starts).
pub const CONNECT_REFUSED_WAIT: Duration = Duration::from_millis(100);

/// Connections failed one after another under their calls (closed,
/// reset), with no answer between them, before the calls of the next
/// [`CONNECT_REFUSED_WAIT`] fail at once, as after a refused connect (see
/// `Inner::connection_failed`).
pub const CONNECTION_FAILURES_BEFORE_WAIT: u64 = 2;

/// How long a counting call's failure keeps the health check failing when
/// no counting call succeeded since: a Redis that answers PING but refuses
/// every write (`OOM` under `noeviction`, an ACL without `EVALSHA`) fails
/// every call, and must not look healthy.
pub const FAILED_CALL_SHOWS_FOR: Duration = Duration::from_secs(10);

/// The key the health check counts in while counting calls fail, after the
/// service's key prefix; it expires `HEALTH_KEY_SECONDS` after.
pub const HEALTH_KEY: &str = "appguard-ratelimit:healthcheck";

/// The time to live of [`HEALTH_KEY`].
const HEALTH_KEY_SECONDS: i64 = 60;

/// When a call on one connection (one generation) last completed within
/// the timeout, and the calls on it in flight and timed out since.
#[derive(Debug)]
struct Heard {
    /// When the connection was opened: the origin of `at_nanos`.
    opened: Instant,
    /// Nanoseconds after `opened` of the last answer; 0 while none.
    at_nanos: AtomicU64,
    /// Calls on the connection not yet ended (answered or timed out).
    in_flight: AtomicUsize,
    /// Calls on the connection that timed out since the last answer.
    timeouts: AtomicU64,
}

impl Heard {
    fn new() -> Self {
        Heard {
            opened: Instant::now(),
            at_nanos: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    /// Notes that an answer was received now.
    fn now(&self) {
        let nanos = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.at_nanos.fetch_max(nanos, Ordering::Relaxed);
        self.timeouts.store(0, Ordering::Relaxed);
    }

    /// Counts a call on the connection as in flight until the returned
    /// guard is dropped.
    fn call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// How long nothing has been received (since the opening, if nothing
    /// ever was).
    fn quiet_for(&self) -> Duration {
        let last = Duration::from_nanos(self.at_nanos.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

/// One call in flight on a connection (see [`Heard::call`]).
struct InFlight(Arc<Heard>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shared, reconnecting connection as it stands.
struct Connection {
    /// How many times it was replaced.
    generation: u64,
    /// The connection itself (cheap to clone: a handle).
    manager: ConnectionManager,
    /// When it was opened.
    opened: Instant,
    /// When something was last received on it.
    heard: Arc<Heard>,
}

/// A Redis-backed counter store.
pub struct RedisBackend {
    /// Shared with the tasks that carry the calls.
    inner: Arc<Inner>,
    /// The key the health check counts in while counting calls fail (see
    /// [`RedisBackend::check`]): under the service's key prefix, so that
    /// an ACL that allows the counters' keys allows it too.
    health_key: String,
}

/// The kinds of counting call, as the health check repeats one that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `MULTI`/`INCRBY`/`EXPIRE`/`EXEC` ([`RedisBackend::increment`]).
    Transaction,
    /// A transaction that counts a `rolling` counter (`EXPIRE … NX`,
    /// which a Redis before 7 refuses: every such call fails there while
    /// the others succeed).
    RollingTransaction,
    /// `EVALSHA` of the script ([`RedisBackend::increment_unless_refused`]).
    Script,
}

impl CallKind {
    /// Every kind, in the order the health check probes them.
    const ALL: [CallKind; 3] = [
        CallKind::Transaction,
        CallKind::RollingTransaction,
        CallKind::Script,
    ];

    /// Its place in [`Inner::failing`].
    fn index(self) -> usize {
        match self {
            CallKind::Transaction => 0,
            CallKind::RollingTransaction => 1,
            CallKind::Script => 2,
        }
    }
}

/// The store's state, shared with the tasks that carry the calls.
struct Inner {
    /// Opens connections (a new one for a silent or demoted one).
    client: redis::Client,
    /// How connections are opened and bounded.
    config: ConnectionManagerConfig,
    /// The shared, reconnecting connection.
    manager: Mutex<Connection>,
    /// Bound on each call (connect + transaction).
    timeout: Duration,
    /// The URL with any password masked, for logs.
    display_url: String,
    /// One permit per call in flight (see [`MAX_CALLS_IN_FLIGHT`]).
    in_flight: Arc<Semaphore>,
    /// The number of permits of `in_flight`, for the error.
    max_in_flight: usize,
    /// The SHA-1 of [`STOP_WHEN_REFUSED_SCRIPT`] in hex, for `EVALSHA`.
    script_sha1: String,
    /// When the last counting call failed and its kind, while no counting
    /// call succeeded since (see [`FAILED_CALL_SHOWS_FOR`]).
    failing: Mutex<[Option<Instant>; 3]>,
    /// When Redis last refused a connection, and how, for the
    /// [`CONNECT_REFUSED_WAIT`] after it.
    refused: Mutex<Option<(Instant, redis::RedisError)>>,
    /// Connections that failed one after another under their calls
    /// (closed, reset), since the last answer: at most one a failure, however
    /// many calls were in flight on it (see `Inner::connection_failed`).
    connection_failures: AtomicU64,
    /// How many connection failures were counted so far (never reset): a
    /// call notes it when it starts, so that of the calls in flight on a
    /// connection that fails, only the first to see it counts.
    connection_drops: AtomicU64,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.display_url)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A store for `url` (`redis://host:port[/db]`, `redis+unix://…`; not
    /// `rediss://`, see [`check_url`]). Does not connect yet; fails only on
    /// a URL [`check_url`] refuses. Must be called inside a Tokio runtime.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, BackendError> {
        Self::with_max_in_flight(url, timeout, MAX_CALLS_IN_FLIGHT)
    }

    /// [`RedisBackend::new`] with at most `max_in_flight` calls in flight
    /// instead of [`MAX_CALLS_IN_FLIGHT`].
    fn with_max_in_flight(
        url: &str,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Self, BackendError> {
        let client = check_url(url)?;
        // A peer that vanished (a failover, a NAT dropping the flow) is
        // found by the kernel: keepalive probes on an idle connection, and
        // TCP_USER_TIMEOUT on one with unacknowledged writes. The manager
        // then sees an I/O error and reconnects.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE_IDLE)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_PROBES);
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(keepalive);
        #[cfg(target_os = "linux")]
        let tcp = tcp.set_user_timeout(TCP_USER_TIMEOUT);
        let client =
            redis::Client::open(client.get_connection_info().clone().set_tcp_settings(tcp))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Fail fast: the caller (Envoy, appguard) has its own timeout
            // and failure mode. A refused connect is not tried again within
            // the call (which made every call wait ~150 ms through an
            // outage, under `failure_mode: allow` every request); the calls
            // of the next [`CONNECT_REFUSED_WAIT`] fail at once, and the
            // first call after it connects again.
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                client,
                config,
                manager: Mutex::new(Connection {
                    generation: 0,
                    manager,
                    opened: Instant::now(),
                    heard: Arc::new(Heard::new()),
                }),
                timeout,
                display_url: mask_password(url),
                in_flight: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                script_sha1: redis::Script::new(STOP_WHEN_REFUSED_SCRIPT)
                    .get_hash()
                    .to_owned(),
                failing: Mutex::new([None; 3]),
                refused: Mutex::new(None),
                connection_failures: AtomicU64::new(0),
                connection_drops: AtomicU64::new(0),
            }),
            health_key: HEALTH_KEY.to_owned(),
        })
    }

    /// Runs `call` on the connection within the timeout, in a task of its
    /// own that outlives a caller giving up: it notes a reply whenever it
    /// comes, and a timeout (see `Inner::timed_out`) whoever still waits.
    /// With [`MAX_CALLS_IN_FLIGHT`] tasks already running, fails at once
    /// with [`BackendError::Busy`] and starts none. `may_repeat`: the call
    /// changes nothing in Redis (PING, reads), so that it is sent again
    /// when its connection turns out closed.
    async fn bounded<T, F>(
        &self,
        may_repeat: bool,
        call: impl Fn(ConnectionManager) -> F + Send + 'static,
    ) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = Result<T, redis::RedisError>> + Send + 'static,
        T: Send + 'static,
    {
        // `Some(true)`: Redis refused a connection, longer ago than the
        // wait; the manager then still holds that attempt's error.
        let after_refusal = match self.inner.refused_lately() {
            Err(e) => return Err(BackendError::Redis(e)),
            Ok(after) => after,
        };
        // Held by the task, so released when it ends (answer, timeout,
        // abort), not when the caller leaves.
        let Ok(permit) = Arc::clone(&self.inner.in_flight).try_acquire_owned() else {
            return Err(BackendError::Busy {
                max: self.inner.max_in_flight,
            });
        };
        let (generation, conn, heard) = {
            let current = self.inner.manager();
            (
                current.generation,
                current.manager.clone(),
                Arc::clone(&current.heard),
            )
        };
        let drops_before = self.inner.connection_drops.load(Ordering::Relaxed);
        let inner = Arc::clone(&self.inner);
        // Ended after `timed_out`, which counts this call among those in
        // flight.
        let in_flight = heard.call();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let _in_flight = in_flight;
            // The manager's own response timeout (the same bound) usually
            // fires first, as an error: a timeout either way.
            // A call that may run twice is sent once more when its
            // connection was closed (while idle: Redis restarted, or closed
            // it under its own `timeout`), on the connection the manager
            // opens in its place, within the same timeout. A counting call
            // is not: Redis may have run it (see `closed_connection`).
            // The first call after a refused connect's wait gets that
            // attempt's error back from the manager (which starts the next
            // attempt as it answers): it is sent again, to be answered by
            // the attempt it started, so that a Redis that came back is
            // used at once, not after another wait.
            let call = async move {
                match call(conn.clone()).await {
                    Err(e) if may_repeat && closed_connection(&e) => {
                        debug!(error = %e, "redis: connection closed; sending the call again");
                        call(conn).await
                    }
                    Err(e) if after_refusal && e.is_connection_refusal() => {
                        debug!(error = %e, "redis: connecting again after a refused connect");
                        call(conn).await
                    }
                    answer => answer,
                }
            };
            let answer = match tokio::time::timeout(inner.timeout, call).await {
                Ok(Err(e)) if e.is_timeout() => None,
                Ok(answer) => Some(answer),
                Err(_) => None,
            };
            match answer {
                Some(answer) => {
                    // Any other answer, an error reply included, shows the
                    // connection carries traffic.
                    match &answer {
                        Err(e) => {
                            if e.is_connection_refusal() {
                                inner.connect_refused(e);
                                return Err(BackendError::Redis(e.clone()));
                            }
                            inner.connection_failed(e, drops_before);
                            inner.error_reply(generation, e);
                        }
                        Ok(_) => inner.connection_failures.store(0, Ordering::Relaxed),
                    }
                    heard.now();
                    Ok(answer?)
                }
                None => {
                    inner.timed_out(generation);
                    Err(BackendError::Timeout(inner.timeout))
                }
            }
        });
        task.await.unwrap_or(Err(BackendError::Aborted))
    }

    /// The URL with any password replaced by `*****`.
    pub fn display_url(&self) -> &str {
        &self.inner.display_url
    }

    /// Runs the increments in one transaction and returns the new counts,
    /// with a rolling counter's time left (`PTTL`, in the same transaction).
    pub async fn increment(&self, items: &[Increment]) -> Result<Vec<Counted>, BackendError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for item in items {
            if item.hits == 0 {
                // A check: read, never create the key or set its expiry.
                pipe.cmd("GET").arg(&item.key);
                if item.rolling {
                    pipe.cmd("PTTL").arg(&item.key);
                }
                continue;
            }
            pipe.cmd("INCRBY").arg(&item.key).arg(item.hits);
            let expire = pipe.cmd("EXPIRE").arg(&item.key).arg(item.window_seconds);
            if item.rolling {
                // Set by the first hit only (Redis 7): the window runs from
                // there, however often the key is hit after.
                expire.arg("NX").ignore();
                pipe.cmd("PTTL").arg(&item.key);
            } else {
                expire.ignore();
            }
        }
        // Only checks (no hit): nothing changes in Redis.
        let may_repeat = items.iter().all(|item| item.hits == 0);
        if !may_repeat {
            self.ready_to_count().await?;
        }
        // `GET` of a missing key is nil: no hit yet.
        let replies: Vec<Option<i64>> = self
            .bounded(may_repeat, move |mut conn| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let expected = items.len() + items.iter().filter(|i| i.rolling).count();
        if replies.len() != expected {
            return Err(BackendError::UnexpectedReply(format!(
                "{} replies for {} increments",
                replies.len(),
                items.len()
            )));
        }
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let count = replies.next().flatten().unwrap_or(0);
            // `GET` of a missing key is nil, as `PTTL` -2 (a check before
            // the first hit).
            let ms = if item.rolling {
                replies.next().flatten().unwrap_or(-1)
            } else {
                -1
            };
            out.push(counted(item, count, ms));
        }
        Ok(out)
    }

    /// As [`RedisBackend::increment`], unless the counts the call would
    /// reach refuse it by `rules` (see [`super::is_refused`]): then no key
    /// is changed or created, and each item gets the count it would have
    /// reached. One script ([`STOP_WHEN_REFUSED_SCRIPT`]), so the decision
    /// and the counting are atomic, like the transaction of `increment`.
    pub async fn increment_unless_refused(
        &self,
        items: &[Increment],
        rules: &[Refuses],
    ) -> Result<Batch, BackendError> {
        let script = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(items.len());
            for item in items {
                cmd.arg(&item.key);
            }
            for (item, rule) in items.iter().zip(rules) {
                let (kind, limit) = match *rule {
                    Refuses::Never => (0u8, 0u64),
                    Refuses::Alone(limit) => (1, limit),
                    Refuses::InQuota(limit) => (2, limit),
                    Refuses::InQuotaNever => (3, 0),
                };
                cmd.arg(item.hits)
                    .arg(item.window_seconds)
                    .arg(u8::from(item.rolling))
                    .arg(kind)
                    .arg(limit);
            }
            cmd
        };
        // By its SHA-1: the script's 2 KB are sent only when Redis does
        // not hold it (a restart, a failover to a replica that never ran
        // it, `SCRIPT FLUSH`). `NOSCRIPT` runs nothing, so sending the
        // body then with `EVAL` (which caches it again) counts once.
        let by_hash = script("EVALSHA", &self.inner.script_sha1);
        self.ready_to_count().await?;
        let replies: Vec<i64> = match self
            .bounded(false, move |mut conn| {
                let by_hash = by_hash.clone();
                async move { by_hash.query_async(&mut conn).await }
            })
            .await
        {
            Err(BackendError::Redis(e))
                if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                let with_body = script("EVAL", STOP_WHEN_REFUSED_SCRIPT);
                self.bounded(false, move |mut conn| {
                    let with_body = with_body.clone();
                    async move { with_body.query_async(&mut conn).await }
                })
                .await?
            }
            replies => replies?,
        };
        let unexpected = || {
            BackendError::UnexpectedReply(format!(
                "{} replies for {} increments",
                replies.len(),
                items.len()
            ))
        };
        let Some((&refused, pairs)) = replies.split_first() else {
            return Err(unexpected());
        };
        if pairs.len() != 2 * items.len() || rules.len() != items.len() {
            return Err(unexpected());
        }
        let counts = items
            .iter()
            .zip(pairs.chunks_exact(2))
            .map(|(item, pair)| match *pair {
                [count, ms] => counted(item, count, ms),
                _ => counted(item, 0, -1),
            })
            .collect();
        let refused = refused == 1;
        Ok(Batch { counts, refused })
    }

    /// Counts the health check's probe under `prefix` (the service's
    /// `--cache-key-prefix`).
    pub fn with_key_prefix(mut self, prefix: &str) -> Self {
        self.health_key = format!("{prefix}{HEALTH_KEY}");
        self
    }

    /// Notes how a counting call of `kind` ended, for
    /// [`RedisBackend::check`], and hands its result on. A failure is
    /// noted; a success clears the failure only when `wrote` says the call
    /// stored something: a call Redis answered from reads alone (a call
    /// the script refused, checks of 0 hits) says nothing of writes, which
    /// a Redis full under `noeviction` refuses while it answers reads.
    pub fn noted<T>(
        &self,
        kind: CallKind,
        result: Result<T, BackendError>,
        wrote: impl FnOnce(&T) -> bool,
    ) -> Result<T, BackendError> {
        let slot = kind.index();
        match &result {
            Err(_) => self.failing()[slot] = Some(Instant::now()),
            Ok(answer) if wrote(answer) => self.failing()[slot] = None,
            Ok(_) => {}
        }
        result
    }

    /// When a counting call of each kind ([`CallKind::index`]) last
    /// failed, with none of that kind storing anything since.
    fn failing(&self) -> std::sync::MutexGuard<'_, [Option<Instant>; 3]> {
        self.inner
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether Redis can take calls: it answers PING, and when a counting
    /// call failed in the last [`FAILED_CALL_SHOWS_FOR`] with none
    /// succeeding since, a call of the same kind on [`HEALTH_KEY`] succeeds
    /// now (a Redis that answers PING but refuses writes, `OOM` under
    /// `noeviction` or an ACL without `EVALSHA`, fails every call and must
    /// not look healthy; one that recovered is healthy at once).
    pub async fn check(&self) -> Result<(), BackendError> {
        self.ping().await?;
        // Each kind of call is judged apart: with a Redis before 7 every
        // transaction counting a rolling limit fails while the others
        // succeed, and one kind's success says nothing of the other's.
        let failing: Vec<CallKind> = {
            let slots = self.failing();
            CallKind::ALL
                .into_iter()
                .filter(|kind| {
                    slots[kind.index()].is_some_and(|at| at.elapsed() < FAILED_CALL_SHOWS_FOR)
                })
                .collect()
        };
        for kind in failing {
            let probe = [super::Increment {
                key: self.health_key.clone(),
                hits: 1,
                window_seconds: HEALTH_KEY_SECONDS,
                window_end: 0,
                rolling: kind == CallKind::RollingTransaction,
            }];
            let result = match kind {
                CallKind::Transaction | CallKind::RollingTransaction => {
                    self.increment(&probe).await.map(drop)
                }
                CallKind::Script => self
                    .increment_unless_refused(&probe, &[super::Refuses::Never])
                    .await
                    .map(drop),
            };
            // The probe counts one hit: a success is a write.
            self.noted(kind, result, |()| true)
                .map_err(|e| BackendError::CallsFailing(e.to_string()))?;
        }
        Ok(())
    }

    /// Readies the connection for a call that must not be sent twice: when
    /// nothing was received on it for [`PING_WHEN_QUIET_FOR`], a PING first,
    /// which finds a connection Redis closed while it was idle (and is
    /// answered on the new one). Its error, if any, is the call's: the
    /// call is then not made.
    async fn ready_to_count(&self) -> Result<(), BackendError> {
        let quiet_for = self.inner.manager().heard.quiet_for();
        if quiet_for >= PING_WHEN_QUIET_FOR {
            self.ping().await?;
        }
        Ok(())
    }

    /// Sends PING and expects PONG.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let reply: String = self
            .bounded(true, |mut conn| async move {
                redis::cmd("PING").query_async(&mut conn).await
            })
            .await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(BackendError::UnexpectedReply(reply))
        }
    }
}

impl Inner {
    /// The error of a connection Redis refused within the last
    /// [`CONNECT_REFUSED_WAIT`], if any: calls fail with it at once
    /// instead of each trying to connect (one attempt per call is a
    /// connection storm at the call rate while Redis is down). Otherwise
    /// whether Redis ever refused one.
    fn refused_lately(&self) -> Result<bool, redis::RedisError> {
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*refused {
            Some((at, e)) if at.elapsed() < CONNECT_REFUSED_WAIT => Err(e.clone()),
            other => Ok(other.is_some()),
        }
    }

    /// Counts a call that failed with `e`, having started when
    /// `drops_before` connection failures had been counted. A connection
    /// that failed under it (closed, reset, broken pipe) counts towards
    /// [`CONNECTION_FAILURES_BEFORE_WAIT`] once, for the first of its calls
    /// to see it (the others in flight on it started before that count),
    /// after which the calls of the next [`CONNECT_REFUSED_WAIT`] fail at
    /// once, as after a refused connect; any other error (an error reply:
    /// the connection works) starts the count again, as an answer does.
    /// An endpoint that accepts connections and closes them at once (Redis
    /// at `maxclients`, a proxy or load balancer in front of a Redis that
    /// is down) is then tried about ten times a second, not at the call
    /// rate. One dropped connection (a failover's `CLIENT KILL`, a
    /// restart), with however many calls in flight, does not start the
    /// wait: the calls after it are sent on a new connection.
    fn connection_failed(&self, e: &redis::RedisError, drops_before: u64) {
        if !(e.is_io_error() || e.is_connection_dropped() || closed_connection(e)) {
            self.connection_failures.store(0, Ordering::Relaxed);
            return;
        }
        let first_to_see_it = self
            .connection_drops
            .compare_exchange(
                drops_before,
                drops_before.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        if !first_to_see_it {
            return;
        }
        let failures = self
            .connection_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= CONNECTION_FAILURES_BEFORE_WAIT {
            self.connect_refused(e);
        }
    }

    /// Notes that Redis refused a connection now.
    fn connect_refused(&self, e: &redis::RedisError) {
        *self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), e.clone()));
    }

    fn manager(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a timeout of a call made on connection `generation`: that
    /// connection is replaced when no call on it completed within the
    /// timeout for the whole Redis timeout (a silent, half-open flow),
    /// another call is in flight on it or an earlier one timed out on it
    /// since the last answer, and the last replacement is at least
    /// [`REPLACE_TIMED_OUT_EVERY`] old. One call stalled on a connection
    /// that was idle until then (a `BGSAVE` fork, an expiry cycle) is not
    /// enough: the idle time says nothing about the connection. A Redis
    /// that is slow but answers is heard from (calls whose caller left
    /// included, see [`RedisBackend::bounded`]) and keeps its connection:
    /// a new one would only add a connect to its load. Calls still in
    /// flight on a connection already replaced count nothing, so a burst
    /// of them replaces it once.
    fn timed_out(&self, generation: u64) {
        let mut current = self.manager();
        if current.generation != generation {
            return;
        }
        let heard = &current.heard;
        let timeouts = heard
            .timeouts
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        // This call is still counted in flight.
        let others_in_flight = heard.in_flight.load(Ordering::Relaxed) > 1;
        if heard.quiet_for() < self.timeout || (timeouts < 2 && !others_in_flight) {
            return;
        }
        if current.generation != 0 && current.opened.elapsed() < REPLACE_TIMED_OUT_EVERY {
            return;
        }
        self.replace(&mut current, "no call on it completed within the timeout");
    }

    /// Counts an error reply to a call made on connection `generation`:
    /// one saying the server is no longer a primary (`READONLY`,
    /// `MASTERDOWN`, also inside an aborted transaction) replaces the
    /// connection at once, at most once a [`REPLACE_NOT_PRIMARY_EVERY`].
    /// After a failover behind a stable endpoint (a DNS name, a managed
    /// service's primary endpoint) the old connection still reaches the
    /// demoted server, which the `redis` crate does not leave on such a
    /// reply: every call would fail until a restart.
    ///
    /// So does a failed authentication: the `redis` crate keeps a
    /// connection whose handshake Redis refused (a password rotated in the
    /// wrong order, an ACL user not made yet) and answers every later call
    /// with that error without connecting again, so the service would stay
    /// UNAVAILABLE after Redis takes the credentials.
    fn error_reply(&self, generation: u64, e: &redis::RedisError) {
        let why = if not_primary(e) {
            "the server is no longer the primary"
        } else if auth_refused(e) {
            "redis refused the credentials"
        } else {
            return;
        };
        let mut current = self.manager();
        if current.generation != generation || current.opened.elapsed() < REPLACE_NOT_PRIMARY_EVERY
        {
            return;
        }
        self.replace(&mut current, why);
    }

    /// Opens a new connection in place of `current`'s, logging `why`.
    fn replace(&self, current: &mut Connection, why: &str) {
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(fresh) => {
                *current = Connection {
                    generation: current.generation.wrapping_add(1),
                    manager: fresh,
                    opened: Instant::now(),
                    heard: Arc::new(Heard::new()),
                };
                warn!(redis = %self.display_url, "redis: {why}; opening a new connection");
            }
            Err(e) => {
                warn!(redis = %self.display_url, error = %e, "redis: cannot open a new connection")
            }
        }
    }
}

/// URL schemes that ask for TLS, which this build cannot speak.
const TLS_SCHEMES: &[&str] = &["rediss", "valkeys"];

/// Checks a Redis URL without connecting, and returns its client: a
/// malformed URL, or one asking for TLS (`rediss://`), is refused.
///
/// The `redis` crate is built without its TLS features (they need rustls,
/// which this build does not carry), so a `rediss://` URL could never
/// connect: it is refused with [`BackendError::TlsNotBuiltIn`] rather than
/// failing every call. Reach a TLS-only Redis through a local
/// TLS-terminating sidecar (stunnel, ghostunnel) and a `redis://` URL to
/// it.
pub fn check_url(url: &str) -> Result<redis::Client, BackendError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if scheme.is_some_and(|s| TLS_SCHEMES.iter().any(|tls| s.eq_ignore_ascii_case(tls))) {
        return Err(BackendError::TlsNotBuiltIn);
    }
    Ok(redis::Client::open(url)?)
}

/// Query parameters whose value is a password: the `redis` crate reads
/// `pass` in `redis+unix://` URLs; `password` is masked too, as other
/// clients spell it so and a URL may be shared between them.
const SECRET_QUERY_PARAMS: &[&str] = &["pass", "password"];

/// The URL as it may be logged: the user-info of the authority
/// (`redis://user:secret@host` → `redis://*****@host`) and the value of a
/// `pass`/`password` query parameter
/// (`redis+unix:///tmp/r.sock?db=1&pass=secret` →
/// `redis+unix:///tmp/r.sock?db=1&pass=*****`) are replaced by `*****`.
///
/// The URL is logged at `info` when the service starts, and a password
/// must never reach the logs, whichever place in the URL holds it.
pub fn mask_password(url: &str) -> String {
    const MASK: &str = "*****";
    // Fragment, then query, then the rest, as a URL parser splits them.
    let (before_fragment, fragment) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (before_query, query) = match before_fragment.find('?') {
        Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
        None => (before_fragment, None),
    };

    let mut out = String::with_capacity(url.len());
    // User-info: between `scheme://` and the last `@` of the authority,
    // which ends at the first `/` after it (query and fragment are already
    // split off).
    match before_query.find("://") {
        Some(scheme_end) => {
            let authority_start = scheme_end + 3;
            let rest = &before_query[authority_start..];
            let authority_len = rest.find('/').unwrap_or(rest.len());
            let authority = &rest[..authority_len];
            out.push_str(&before_query[..authority_start]);
            match authority.rfind('@') {
                Some(at) => {
                    out.push_str(MASK);
                    out.push_str(&authority[at..]);
                }
                None => out.push_str(authority),
            }
            out.push_str(&rest[authority_len..]);
        }
        None => out.push_str(before_query),
    }

    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(MASK);
                }
                _ => out.push_str(pair),
            }
        }
    }
    out.push_str(fragment);
    out
}

/// Whether a query parameter name (possibly percent-encoded, any case)
/// names a password.
fn is_secret_param(name: &str) -> bool {
    let decoded = percent_decode(name);
    SECRET_QUERY_PARAMS
        .iter()
        .any(|secret| decoded.eq_ignore_ascii_case(secret))
}

/// `%XX` sequences decoded and `+` read as a space, as in a query string;
/// invalid sequences are kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(value) = hex {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(if byte == b'+' { b' ' } else { byte });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_is_told_from_other_failures() {
        use std::io::{Error, ErrorKind as Io};
        let io = |kind: Io| redis::RedisError::from(Error::from(kind));
        assert!(closed_connection(&io(Io::BrokenPipe)));
        assert!(closed_connection(&io(Io::NotConnected)));
        for kind in [
            Io::ConnectionReset,
            Io::ConnectionAborted,
            Io::UnexpectedEof,
            Io::TimedOut,
            Io::ConnectionRefused,
        ] {
            assert!(!closed_connection(&io(kind)), "{kind:?}");
        }
        let reply = redis::RedisError::from((ErrorKind::Io, "broken pipe"));
        assert!(!closed_connection(&reply), "a message alone says nothing");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            mask_password("redis://user:pa@ss@10.0.0.1:6379/0"),
            "redis://*****@10.0.0.1:6379/0"
        );
        assert_eq!(
            mask_password("rediss://:secret@host"),
            "rediss://*****@host"
        );
    }

    #[test]
    fn query_passwords_are_masked() {
        let cases = [
            (
                "redis+unix:///tmp/x.sock?pass=hunter2",
                "redis+unix:///tmp/x.sock?pass=*****",
            ),
            (
                "redis+unix:///tmp/x.sock?db=1&pass=hunter2&user=u",
                "redis+unix:///tmp/x.sock?db=1&pass=*****&user=u",
            ),
            (
                "redis://10.0.0.1:6379/0?password=hunter2&protocol=resp3",
                "redis://10.0.0.1:6379/0?password=*****&protocol=resp3",
            ),
            (
                "redis+unix:///tmp/x.sock?PASS=hunter2",
                "redis+unix:///tmp/x.sock?PASS=*****",
            ),
            (
                "redis+unix:///tmp/x.sock?pa%73s=hunter2",
                "redis+unix:///tmp/x.sock?pa%73s=*****",
            ),
            // Both places at once, and an `@` inside the query is not
            // taken for the end of a user-info.
            (
                "redis://u:hunter2@host:6379?password=hunter2",
                "redis://*****@host:6379?password=*****",
            ),
            (
                "redis+unix:///tmp/x.sock?pass=hun@ter2",
                "redis+unix:///tmp/x.sock?pass=*****",
            ),
            (
                "redis+unix:///tmp/x.sock?db=2",
                "redis+unix:///tmp/x.sock?db=2",
            ),
        ];
        for (url, masked) in cases {
            assert_eq!(mask_password(url), masked, "{url}");
            assert!(!mask_password(url).contains("hunter2"), "{url}");
            assert!(!mask_password(url).contains("ter2"), "{url}");
        }
    }

    #[tokio::test]
    async fn timeouts_replace_only_a_quiet_connection_and_at_most_once_a_second() {
        // Nothing listens on port 1; the connection is lazy and never used.
        let backend = RedisBackend::new("redis://127.0.0.1:1", Duration::from_millis(30)).unwrap();
        let inner = &backend.inner;
        let generation = || inner.manager().generation;
        // Heard from just now: a timeout does not replace it.
        inner.manager().heard.now();
        inner.timed_out(0);
        assert_eq!(generation(), 0);
        // Quiet for longer than the Redis timeout: replaced.
        tokio::time::sleep(Duration::from_millis(50)).await;
        inner.timed_out(0);
        assert_eq!(generation(), 1);
        // The new one is quiet as long, but was opened under a second ago;
        // and a late timeout from the old one counts nothing.
        tokio::time::sleep(Duration::from_millis(50)).await;
        inner.timed_out(1);
        inner.timed_out(0);
        assert_eq!(generation(), 1);
        tokio::time::sleep(REPLACE_TIMED_OUT_EVERY).await;
        inner.timed_out(1);
        assert_eq!(generation(), 2);
    }

    #[tokio::test]
    async fn one_timeout_alone_does_not_replace_an_idle_connection() {
        // Nothing listens on port 1; the connection is lazy and never used.
        let backend = RedisBackend::new("redis://127.0.0.1:1", Duration::from_millis(30)).unwrap();
        let inner = &backend.inner;
        let generation = || inner.manager().generation;
        let heard = Arc::clone(&inner.manager().heard);
        let time_out = |generation| {
            let _call = heard.call();
            inner.timed_out(generation);
        };
        // Idle for longer than the Redis timeout, then one call times out
        // with nothing else in flight: kept.
        heard.now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        time_out(0);
        assert_eq!(generation(), 0);
        // An answer since: one more timeout is again the first.
        heard.now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        time_out(0);
        assert_eq!(generation(), 0);
        // A second timeout with no answer in between: replaced.
        time_out(0);
        assert_eq!(generation(), 1);
        // On the new one (once the second is up), a first timeout while
        // another call is in flight: replaced.
        tokio::time::sleep(REPLACE_TIMED_OUT_EVERY).await;
        let heard = Arc::clone(&inner.manager().heard);
        let _other = heard.call();
        {
            let _call = heard.call();
            inner.timed_out(1);
        }
        assert_eq!(generation(), 2);
    }

    #[tokio::test]
    async fn calls_in_flight_are_bounded_and_past_the_bound_fail_at_once() {
        // A server that accepts connections and never answers: every call
        // on it lasts the whole Redis timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let timeout = Duration::from_millis(1500);
        let backend =
            RedisBackend::with_max_in_flight(&format!("redis://127.0.0.1:{port}"), timeout, 2)
                .unwrap();
        // Two callers give up early (as tonic drops a handler at its
        // deadline); their calls go on, holding the two places.
        for _ in 0..2 {
            let r = tokio::time::timeout(Duration::from_millis(20), backend.ping()).await;
            assert!(r.is_err(), "the caller gave up");
        }
        // A third is not sent: it fails at once rather than after the
        // Redis timeout.
        let asked = Instant::now();
        let err = backend.ping().await.unwrap_err();
        assert!(matches!(err, BackendError::Busy { max: 2 }), "{err}");
        assert!(asked.elapsed() < Duration::from_millis(500), "{err}");
        // Once the two have timed out, calls are sent again.
        tokio::time::sleep(timeout + Duration::from_millis(300)).await;
        let asked = Instant::now();
        let err = backend.ping().await.unwrap_err();
        assert!(!matches!(err, BackendError::Busy { .. }), "{err}");
        assert!(asked.elapsed() >= Duration::from_millis(500), "{err}");
        server.abort();
    }

    #[tokio::test]
    async fn a_unix_socket_password_is_not_in_the_display_url() {
        let backend = RedisBackend::new(
            "redis+unix:///tmp/appguard-test-none.sock?pass=hunter2",
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(!backend.display_url().contains("hunter2"));
        assert!(!format!("{backend:?}").contains("hunter2"));
    }

    #[test]
    fn tls_urls_are_refused_with_a_clear_error() {
        for url in [
            "rediss://127.0.0.1:6380",
            "REDISS://:secret@host:6380/0",
            "valkeys://host",
        ] {
            let err = check_url(url).unwrap_err();
            assert!(matches!(err, BackendError::TlsNotBuiltIn), "{url}: {err}");
            let message = err.to_string();
            assert!(message.contains("TLS is not built in"), "{message}");
            assert!(message.contains("stunnel"), "{message}");
        }
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("redis+unix:///tmp/r.sock?db=1").is_ok());
        assert!(matches!(
            check_url("http://nope"),
            Err(BackendError::Redis(_))
        ));
    }

    #[tokio::test]
    async fn malformed_urls_are_refused_and_down_redis_is_an_error() {
        assert!(RedisBackend::new("http://nope", Duration::from_millis(200)).is_err());
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let backend = RedisBackend::new(
            &format!("redis://127.0.0.1:{port}"),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(backend.ping().await.is_err());
        let item = Increment {
            key: "k".to_owned(),
            hits: 1,
            window_seconds: 60,
            window_end: 60,
            rolling: false,
        };
        assert!(backend.increment(&[item]).await.is_err());
    }
}
