//! A failing store seen from outside: the log lines its health checks
//! write, and how often a Redis that cannot take calls is connected to;
//! and what the documents say global shadow mode does to replays.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use appguard_ratelimit::backend::{Backend, Increment, MemoryBackend};
use appguard_ratelimit::http::HttpState;
use appguard_ratelimit::logging::{subscriber, LogFormat};
use appguard_ratelimit::service::{unix_now, Stats};

/// A log sink the test can read.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Sink {
        self.clone()
    }
}

/// One hit on the counter `key`, in a minute's window from now.
fn one_hit(key: &str) -> [Increment; 1] {
    [Increment {
        key: key.to_owned(),
        hits: 1,
        window_seconds: 60,
        window_end: unix_now() + 60,
        rolling: false,
    }]
}

/// Every failed health check wrote a `warn` line, without the
/// per-second budget the per-call lines have. The gRPC health service is
/// on the unauthenticated gRPC port: a client that filled the in-memory
/// store (README: possible with client-chosen values) and then calls
/// `grpc.health.v1.Health/Check` in a loop writes one `warn` line per
/// call, which buries the throttled `counter store failed` lines the
/// README promises stay visible.
#[tokio::test]
async fn a_flood_of_failing_health_checks_is_not_a_flood_of_warn_lines() {
    let memory = MemoryBackend::new(1);
    let now = unix_now();
    memory
        .increment_with_ends(
            &[Increment {
                key: "filler".to_owned(),
                hits: 1,
                window_seconds: 86_400,
                window_end: now + 86_400,
                rolling: false,
            }],
            now,
        )
        .unwrap();
    let state = HttpState {
        backend: Arc::new(Backend::Memory(memory)),
        stats: Arc::new(Stats::default()),
        shutting_down: Arc::new(AtomicBool::new(false)),
    };
    let sink = Sink::default();
    let log = subscriber(LogFormat::Json, "info", sink.clone()).unwrap();
    let _guard = tracing::subscriber::set_default(log);
    for _ in 0..500 {
        assert!(state.health().await.is_err());
    }
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines = text
        .lines()
        .filter(|l| l.contains("health check failed"))
        .count();
    assert!(
        lines <= 2 * 20,
        "{lines} `health check failed` warn lines for 500 checks within a second or two"
    );
}

mod reconnects {
    use super::*;
    use appguard_ratelimit::backend::RedisBackend;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// A Redis endpoint that accepts connections and closes them at once
    /// (Redis down behind a proxy or load balancer that still listens:
    /// twemproxy, an Envoy `redis_proxy`, a cloud endpoint during
    /// failover) got a new TCP connection for every call, as only a
    /// refused connect (`ECONNREFUSED`) started the 100 ms wait (README
    /// "Errors": "at most ten connection attempts a second"): at a few
    /// hundred calls a second, as many connections a second to an
    /// endpoint that is already failing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endpoint_that_accepts_and_closes_is_not_reconnected_at_the_call_rate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                if let Ok((socket, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(socket);
                }
            }
        });
        let backend = Backend::Redis(Box::new(
            RedisBackend::new(&format!("redis://{addr}"), Duration::from_secs(1)).unwrap(),
        ));
        let item = one_hit("k");
        let start = Instant::now();
        let mut calls = 0;
        while start.elapsed() < Duration::from_secs(1) {
            assert!(backend.increment(&item, unix_now()).await.is_err());
            calls += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let connections = accepted.load(Ordering::Relaxed);
        assert!(
            connections <= 30,
            "{connections} connections opened in one second for {calls} calls"
        );
    }
}

mod maxclients {
    use super::*;
    use appguard_ratelimit::backend::RedisBackend;
    use std::time::{Duration, Instant};

    /// The same with Redis itself: at `maxclients` Redis accepts a
    /// connection, answers `-ERR max number of clients reached` and
    /// closes it. Every call opened a new connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_at_maxclients_is_not_reconnected_at_the_call_rate() {
        let redis = common::Redis::start_with(common::free_port(), &["--maxclients", "1"]);
        let _held = redis.conn();
        let backend = Backend::Redis(Box::new(
            RedisBackend::new(&redis.url(), Duration::from_secs(1)).unwrap(),
        ));
        let item = one_hit("k");
        let start = Instant::now();
        let mut calls = 0;
        let mut last_err = String::new();
        while start.elapsed() < Duration::from_secs(1) {
            match backend.increment(&item, unix_now()).await {
                Err(e) => last_err = e.to_string(),
                Ok(_) => panic!("counted past maxclients"),
            }
            calls += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Redis counts the connections it refused for maxclients.
        let mut conn = redis::Client::open(redis.url()).unwrap();
        drop(_held);
        std::thread::sleep(Duration::from_millis(100));
        let info: String = redis::cmd("INFO").arg("stats").query(&mut conn).unwrap();
        let rejected: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("rejected_connections:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        assert!(
            rejected <= 30,
            "{rejected} connections rejected for maxclients in one second for {calls} calls \
             (last error: {last_err})"
        );
    }
}

/// One connection dropped under many calls (a failover's `CLIENT KILL`)
/// fails the calls in flight on it, and only those: it counts as one
/// connection failure, not one per call, so the next call is sent on a
/// new connection at once instead of failing through a 100 ms wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_killed_under_many_calls_does_not_fail_the_next() {
    use appguard_ratelimit::backend::RedisBackend;
    use std::time::Duration;
    let redis = common::Redis::start_with(common::free_port(), &["--enable-debug-command", "yes"]);
    let backend = Arc::new(Backend::Redis(Box::new(
        RedisBackend::new(&redis.url(), Duration::from_secs(3)).unwrap(),
    )));
    backend
        .increment(&one_hit("warm"), unix_now())
        .await
        .unwrap();
    // Redis busy for 500 ms while eight calls wait on the connection,
    // which is then killed.
    let mut sleeper = redis.conn();
    let mut killer = redis.conn();
    let sleeping = std::thread::spawn(move || {
        let _: redis::RedisResult<String> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.5")
            .query(&mut sleeper);
    });
    std::thread::sleep(Duration::from_millis(30));
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let backend = Arc::clone(&backend);
            let items = one_hit(&format!("k{i}"));
            tokio::spawn(async move { backend.increment(&items, unix_now()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut killer)
        .unwrap();
    let mut failed = 0;
    for call in calls {
        if call.await.unwrap().is_err() {
            failed += 1;
        }
    }
    sleeping.join().unwrap();
    assert!(failed >= 2, "only {failed} of the 8 calls saw the kill");
    let next = backend.increment(&one_hit("next"), unix_now()).await;
    assert!(next.is_ok(), "the call after the kill: {next:?}");
}

/// Since f5b702c appguard refuses a replay that a service in
/// global shadow mode reports OVER_LIMIT in the `jti` descriptor's status
/// (README.md `replay`, the service's own start-up warning "a replayed
/// token is still refused", `global_shadow_mode_lets_replays_through_and_says_so`),
/// but the service's flag table and SECURITY.md still tell operators that
/// `--shadow-mode` turns replay protection off.
#[test]
fn the_docs_do_not_say_global_shadow_mode_turns_replay_protection_off() {
    let service_readme = include_str!("../README.md");
    let row = service_readme
        .lines()
        .find(|l| l.starts_with("| `--shadow-mode`"))
        .unwrap();
    assert!(
        !row.contains("turns off appguard's `replay.scope: service`"),
        "ratelimit/README.md: {row}"
    );
    let security = include_str!("../../SECURITY.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        !security.contains("or `--shadow-mode`) answers OK to every replay"),
        "SECURITY.md still says --shadow-mode answers OK to every replay"
    );
}
