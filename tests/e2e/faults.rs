//! Dependency faults and fail-closed deployment, through a real Envoy.
//!
//! The peers are the real ones where a real one exists (the appguard
//! rate-limit service over Redis, an HTTP JWKS server); where the fault is
//! the peer misbehaving (answering nothing, answering garbage), the peer is
//! a deliberately broken server written here: a TCP listener that never
//! answers, one that writes garbage, and a minimal HTTP/2 gRPC responder
//! whose framing is right but whose message is not. Every case must give
//! the documented status, let nothing through that should not pass, and
//! leave the Wasm VM as Envoy started it.

use crate::harness;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::http::{self, Req};
use harness::services::{RateLimitService, Redis};
use harness::tokens::{self, claims};
use harness::upstream::{Seen, Upstream};
use harness::{envoy_bin, free_port, temp_file, wait_until, Envoy, EnvoyBuilder, Service};
use jwt_simple::prelude::ES256KeyPair;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// The rate-limit service
// ---------------------------------------------------------------------------

const RLS_TIMEOUT_MS: u64 = 300;

fn rls_config(failure_mode: &str) -> Value {
    json!({
        "rate_limit_service": {"cluster": "ratelimit", "domain": "appguard",
                               "timeout_ms": RLS_TIMEOUT_MS, "failure_mode": failure_mode},
        "routes": [{"name": "api", "match": {"prefix": "/api"},
                    "rate_limits": [{"entries": [{"type": "route"}]}]}]
    })
}

/// An Envoy whose route `api` asks the service on `rls_port`, failing `mode`.
fn rls_envoy(up: &Upstream, rls_port: u16, mode: &str) -> Envoy {
    EnvoyBuilder::new(rls_config(mode), up.port)
        .grpc_cluster("ratelimit", rls_port)
        .start()
}

/// Under `deny` the request gets 503 `ratelimit_unavailable`, under `allow`
/// it passes and is counted as degraded; both within the call timeout.
fn assert_fails_by_mode(deny: &Envoy, allow: &Envoy, up: &Upstream, what: &str) {
    let before = up.seen().len();
    let t = Instant::now();
    let r = deny.request(Req::get("/api/x"));
    assert_eq!(
        (r.status, r.reason()),
        (503, Some("ratelimit_unavailable")),
        "{what}, deny: {}",
        r.text()
    );
    assert_eq!(
        up.seen().len(),
        before,
        "{what}: deny let a request through"
    );
    let degraded = "appguard_decisions.route.api.decision.degraded.reason.ratelimit_unavailable";
    let counted = allow.stat(degraded).unwrap_or(0);
    let r = allow.request(Req::get("/api/x").header("x-appguard-degraded", "spoof"));
    assert_eq!(r.status, 200, "{what}, allow: {}", r.text());
    assert_eq!(up.seen().len(), before + 1);
    // The upstream can tell: the request went on without its limits.
    assert_eq!(
        up.last().header("x-appguard-degraded"),
        Some("ratelimit_unavailable"),
        "{what}"
    );
    assert_eq!(allow.stat(degraded), Some(counted + 1), "{what}: counted");
    // Answered by the failure mode, not left hanging: a call that never
    // timed out would hold the request until the client's 20 s read
    // timeout. (10 s, not a few timeouts: a loaded machine is slow.)
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "{what}: answered in {:?}",
        t.elapsed()
    );
}

/// What a deliberately broken rate-limit service does with a connection.
#[derive(Clone)]
enum Broken {
    /// Accepts and reads, never writes: every call runs into its timeout.
    Silent,
    /// Writes these bytes instead of HTTP/2, then closes.
    Garbage(&'static [u8]),
    /// Speaks just enough HTTP/2 to answer each gRPC call with this message
    /// and `grpc-status`.
    Grpc(Arc<Mutex<(Vec<u8>, u32)>>),
}

/// Starts a broken service on a free port; returns the port and a counter of
/// connections (Silent, Garbage) or answered calls (Grpc).
fn broken_service(b: Broken) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (b, c) = (b.clone(), c.clone());
            thread::spawn(move || serve_broken(conn, &b, &c));
        }
    });
    (port, count)
}

fn serve_broken(mut conn: TcpStream, b: &Broken, count: &AtomicUsize) {
    let mut buf = [0u8; 16 * 1024];
    match b {
        Broken::Silent => {
            count.fetch_add(1, Ordering::SeqCst);
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
        Broken::Garbage(bytes) => {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(bytes);
        }
        Broken::Grpc(answer) => {
            let _ = grpc_answers(&mut conn, answer, count);
        }
    }
}

/// An HTTP/2 frame (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK (RFC 7541) literal header field without indexing, new name.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, u8::try_from(name.len()).unwrap()];
    out.extend_from_slice(name.as_bytes());
    out.push(u8::try_from(value.len()).unwrap());
    out.extend_from_slice(value.as_bytes());
    out
}

/// Answers every gRPC call on the connection: settings and pings are
/// acknowledged, and each stream that ends gets `:status 200`, one gRPC
/// message, and `grpc-status` in the trailers.
fn grpc_answers(
    conn: &mut TcpStream,
    answer: &Mutex<(Vec<u8>, u32)>,
    count: &AtomicUsize,
) -> std::io::Result<()> {
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const END_STREAM: u8 = 0x1;
    const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    let mut preface = [0u8; 24];
    conn.read_exact(&mut preface)?;
    conn.write_all(&frame(SETTINGS, 0, 0, &[]))?;
    loop {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head)?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload)?;
        match kind {
            SETTINGS if flags & ACK == 0 => conn.write_all(&frame(SETTINGS, ACK, 0, &[]))?,
            PING if flags & ACK == 0 => conn.write_all(&frame(PING, ACK, 0, &payload))?,
            DATA | HEADERS if flags & END_STREAM != 0 && stream != 0 => {
                let (message, status) = answer.lock().unwrap().clone();
                // :status 200 (static index 8), content-type (static name 31).
                let mut h = vec![0x88, 0x0f, 0x10, 16];
                h.extend_from_slice(b"application/grpc");
                let mut data = vec![0u8];
                data.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
                data.extend_from_slice(&message);
                let trailers = literal("grpc-status", &status.to_string());
                let mut out = frame(HEADERS, END_HEADERS, stream, &h);
                out.extend(frame(DATA, 0, stream, &data));
                out.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &trailers));
                conn.write_all(&out)?;
                count.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

#[test]
fn a_rate_limit_service_that_never_answers_times_out_to_the_failure_mode() {
    let (port, connections) = broken_service(Broken::Silent);
    let up = Upstream::start();
    let deny = rls_envoy(&up, port, "deny");
    let allow = rls_envoy(&up, port, "allow");
    for _ in 0..3 {
        assert_fails_by_mode(&deny, &allow, &up, "silent service");
    }
    assert!(
        connections.load(Ordering::SeqCst) >= 1,
        "Envoy never reached the silent service: the test would prove nothing"
    );
    deny.assert_vm_healthy();
    allow.assert_vm_healthy();
}

#[test]
fn a_rate_limit_service_answering_garbage_fails_by_the_failure_mode() {
    // Control first: the hand-made gRPC server is understood when its
    // message is a RateLimitResponse with overall_code OK (field 1 = 1).
    let answer = Arc::new(Mutex::new((vec![0x08, 0x01], 0u32)));
    let (port, calls) = broken_service(Broken::Grpc(answer.clone()));
    let up = Upstream::start();
    let deny = rls_envoy(&up, port, "deny");
    let allow = rls_envoy(&up, port, "allow");
    let r = deny.request(Req::get("/api/x"));
    assert_eq!(r.status, 200, "control answer: {}", r.text());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The same server answering OVER_LIMIT (2) is obeyed: it is really read.
    *answer.lock().unwrap() = (vec![0x08, 0x02], 0);
    let r = deny.request(Req::get("/api/x"));
    assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
    let cases: [(&str, Vec<u8>, u32); 6] = [
        // Not protobuf: field 1 with wire type 7, which does not exist.
        (
            "bytes that are not protobuf",
            vec![0x0f, 0xff, 0xff, 0xff],
            0,
        ),
        ("text", b"<html>502 Bad Gateway</html>".to_vec(), 0),
        // A length that runs past the message.
        ("truncated field", vec![0x12, 0x40, 0x08], 0),
        // overall_code UNKNOWN (0): no decision in it.
        ("overall_code UNKNOWN", Vec::new(), 0),
        ("overall_code out of range", vec![0x08, 0x63], 0),
        // A clean OK message, but the call failed (UNAVAILABLE).
        ("grpc-status 14", vec![0x08, 0x01], 14),
    ];
    for (what, message, status) in cases {
        *answer.lock().unwrap() = (message, status);
        assert_fails_by_mode(&deny, &allow, &up, what);
    }
    // Garbage where HTTP/2 should be: a reset before any answer.
    for bytes in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        &[0xffu8; 64][..],
    ] {
        let (gport, conns) = broken_service(Broken::Garbage(bytes));
        let d = rls_envoy(&up, gport, "deny");
        let a = rls_envoy(&up, gport, "allow");
        assert_fails_by_mode(&d, &a, &up, "garbage bytes");
        assert!(conns.load(Ordering::SeqCst) >= 1);
        d.assert_vm_healthy();
        a.assert_vm_healthy();
    }
    deny.assert_vm_healthy();
    allow.assert_vm_healthy();
}

#[test]
fn redis_stopped_under_the_real_service_fails_by_the_failure_mode_then_recovers() {
    let (_dir, limits) = temp_file(
        "limits.yaml",
        "domain: appguard\ndescriptors:\n  - key: route\n    value: api\n    rate_limit: {unit: hour, requests_per_unit: 1000}\n",
    );
    let mut redis = Redis::start();
    let redis_port = redis.port;
    let rls = RateLimitService::start(&limits, Some(&redis.url()));
    let up = Upstream::start();
    let deny = rls_envoy(&up, rls.grpc_port, "deny");
    let allow = rls_envoy(&up, rls.grpc_port, "allow");
    assert_eq!(deny.request(Req::get("/api/x")).status, 200);
    assert_eq!(allow.request(Req::get("/api/x")).status, 200);
    redis.service.stop();
    for _ in 0..3 {
        assert_fails_by_mode(&deny, &allow, &up, "redis stopped");
    }
    // The service reconnects when Redis is back; requests pass again.
    let _redis_again = Redis::on_port(redis_port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = deny.request(Req::get("/api/x"));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.reason(), Some("ratelimit_unavailable"));
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis came back"
        );
        thread::sleep(Duration::from_millis(200));
    }
    deny.assert_vm_healthy();
    allow.assert_vm_healthy();
}

// ---------------------------------------------------------------------------
// The JWKS server
// ---------------------------------------------------------------------------

const JWKS_TIMEOUT_MS: u64 = 500;

/// How the JWKS server answers.
#[derive(Clone)]
enum Jwks {
    /// 200 with this document.
    Doc(String),
    /// This status and body.
    Status(u16, String),
    /// The document, after holding the response this long.
    Slow(Duration, String),
    /// The document, once the test has opened the gate.
    Gated(Gate, String),
    /// The document: after holding the response this long while the
    /// count is above 0 (and taking one off), at once after.
    SlowFirst(Arc<AtomicUsize>, Duration, String),
}

/// Holds JWKS answers back until the test opens it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let (open, opened) = &*self.0;
        drop(opened.wait_while(open.lock().unwrap(), |o| !*o).unwrap());
    }
}

/// A JWKS endpoint whose behaviour the test changes while Envoy runs.
struct JwksServer {
    mode: Arc<Mutex<Jwks>>,
    server: Upstream,
    /// When the first fetch arrived (the keys' age counts from it).
    first_fetch: Arc<Mutex<Option<Instant>>>,
}

impl JwksServer {
    fn start(mode: Jwks) -> JwksServer {
        let mode = Arc::new(Mutex::new(mode));
        let first_fetch = Arc::new(Mutex::new(None));
        let (m, first) = (mode.clone(), first_fetch.clone());
        let server = Upstream::with_handler(Arc::new(move |_s: &Seen| {
            first.lock().unwrap().get_or_insert_with(Instant::now);
            let current = m.lock().unwrap().clone();
            let (status, body) = match current {
                Jwks::Doc(d) => (200, d),
                Jwks::Status(s, b) => (s, b),
                Jwks::Slow(wait, d) => {
                    thread::sleep(wait);
                    (200, d)
                }
                Jwks::Gated(gate, d) => {
                    gate.wait();
                    (200, d)
                }
                Jwks::SlowFirst(left, wait, d) => {
                    let slow = left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if slow {
                        thread::sleep(wait);
                    }
                    (200, d)
                }
            };
            (
                status,
                vec![("content-type".into(), "application/json".into())],
                body.into_bytes(),
            )
        }));
        JwksServer {
            mode,
            server,
            first_fetch,
        }
    }

    /// When the first fetch arrived; now if none has.
    fn first_fetch(&self) -> Instant {
        self.first_fetch
            .lock()
            .unwrap()
            .unwrap_or_else(Instant::now)
    }

    fn set(&self, mode: Jwks) {
        *self.mode.lock().unwrap() = mode;
    }

    fn fetches(&self) -> usize {
        self.server.seen().len()
    }
}

fn jwks_config(refresh: u64, grace: u64, failure_mode: &str) -> Value {
    json!({
        "tokens": [{"name": "remote", "from": [{"header": "x-token"}],
                    "remote_jwks": {"cluster": "jwks", "path": "/jwks.json",
                                    "timeout_ms": JWKS_TIMEOUT_MS, "refresh_seconds": refresh,
                                    "grace_seconds": grace, "min_refetch_seconds": 30}}],
        "routes": [{"name": "api", "match": {"prefix": "/api"}, "tokens": ["remote"],
                    "failure_mode": failure_mode}]
    })
}

fn jwks_envoy(up: &Upstream, jwks_port: u16, failure_mode: &str) -> Envoy {
    EnvoyBuilder::new(jwks_config(600, 3600, failure_mode), up.port)
        .http_cluster("jwks", jwks_port)
        .start()
}

#[test]
fn jwks_down_under_failure_mode_allow_is_told_upstream_on_a_body_route_too() {
    // A route that reads the body sends the headers on before the body
    // is decided: the mark must go with them.
    let (k, _doc) = key();
    let up = Upstream::start();
    let mut config = jwks_config(600, 3600, "allow");
    config["routes"] = json!([{"name": "api", "match": {"prefix": "/api"}, "tokens": ["remote"],
        "failure_mode": "allow",
        "rate_limits": [{"entries": [{"type": "body", "pointer": "/user"}],
                         "local": {"requests": 100, "per": "minute"}}]}]);
    let e = EnvoyBuilder::new(config, up.port)
        .http_cluster("jwks", free_port())
        .start();
    let t = tokens::es256_with(&k, &claims(60, json!({})));
    let r = e.request(
        Req::post_json("/api/x", r#"{"user": "u1"}"#)
            .header("x-token", &t)
            .header("x-appguard-degraded", "spoof"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last().header("x-appguard-degraded"),
        Some("jwks_unavailable")
    );
    assert_eq!(up.last().header("x-token"), None);
    e.assert_vm_healthy();
}

#[test]
fn a_monitored_would_be_denial_let_through_degraded_counts_once() {
    // JWKS down under `failure_mode: allow` (the token is taken as absent)
    // and no platform headers on an Android route in monitor mode: one
    // request, one counter (`monitor`), as enforce mode counts one `deny`.
    // It counted `degraded` and `monitor` both.
    let (k, _doc) = key();
    let up = Upstream::start();
    let mut config = jwks_config(600, 3600, "allow");
    config["apps"] = json!([{"id": "a", "platform": "android", "package": "com.example.a"}]);
    config["routes"] = json!([{"name": "api", "match": {"prefix": "/api"}, "tokens": ["remote"],
        "mode": "monitor", "platforms": ["android"], "failure_mode": "allow"}]);
    let e = EnvoyBuilder::new(config, up.port)
        .http_cluster("jwks", free_port())
        .start();
    for _ in 0..3 {
        let r = e.request(token_req(&k));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            up.last().header("x-appguard-would-deny"),
            Some("platform_denied")
        );
    }
    let stat = |decision: &str, reason: &str| {
        e.stat(&format!(
            "appguard_decisions.route.api.decision.{decision}.reason.{reason}"
        ))
        .unwrap_or(0)
    };
    assert_eq!(stat("monitor", "platform_denied"), 3);
    assert_eq!(stat("degraded", "jwks_unavailable"), 0);
    assert!(
        e.log()
            .contains("failure_mode=allow let the request through"),
        "the degradation is still logged"
    );
    e.assert_vm_healthy();
}

fn key() -> (ES256KeyPair, String) {
    let k = ES256KeyPair::generate().with_key_id("k1");
    let doc = json!({"keys": [tokens::es256_jwk(&k, "k1")]}).to_string();
    (k, doc)
}

fn key_doc(k: &ES256KeyPair) -> String {
    json!({"keys": [tokens::es256_jwk(k, "k1")]}).to_string()
}

fn token_req(k: &ES256KeyPair) -> Req {
    Req::get("/api/x").header("x-token", &tokens::es256_with(k, &claims(60, json!({}))))
}

/// An Envoy (one worker, routes under `failure_mode`) whose fetch of the
/// keys at start failed (503), and its JWKS endpoint, now answering `doc`
/// in 300 ms: no keys are loaded, and the next fetches bring them.
fn without_keys_yet(up: &Upstream, doc: String, failure_mode: &str) -> (JwksServer, Envoy) {
    let (jwks, e) = keys_down_at_start(up, jwks_config(600, 3600, failure_mode));
    thread::sleep(Duration::from_millis(100));
    jwks.set(Jwks::Slow(Duration::from_millis(300), doc));
    (jwks, e)
}

/// An Envoy (one worker) with `config`, once its fetch of the keys at
/// start has failed (503), and its JWKS endpoint, still answering 503.
fn keys_down_at_start(up: &Upstream, config: Value) -> (JwksServer, Envoy) {
    let jwks = JwksServer::start(Jwks::Status(503, "down".into()));
    let e = EnvoyBuilder::new(config, up.port)
        .http_cluster("jwks", jwks.server.port)
        .start();
    wait_until(10, "the fetch at start", || jwks.fetches() > 0);
    (jwks, e)
}

/// A request of [`token_req`] for each token, sent at once, each on a
/// thread of its own: their statuses and reasons, and how long each took.
fn timed_burst(e: &Envoy, tokens: &[String]) -> (Vec<(u16, Option<String>)>, Vec<Duration>) {
    thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .map(|t| {
                s.spawn(move || {
                    let at = Instant::now();
                    let r = e.request(Req::get("/api/x").header("x-token", t));
                    ((r.status, r.reason().map(str::to_owned)), at.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).unzip()
    })
}

/// [`timed_burst`] of `n` tokens of `k`.
fn timed_token_burst(
    e: &Envoy,
    k: &ES256KeyPair,
    n: usize,
) -> (Vec<(u16, Option<String>)>, Vec<Duration>) {
    let tokens: Vec<String> = (0..n)
        .map(|_| tokens::es256_with(k, &claims(60, json!({}))))
        .collect();
    timed_burst(e, &tokens)
}

/// [`timed_token_burst`]'s answers.
fn token_burst(e: &Envoy, k: &ES256KeyPair, n: usize) -> Vec<(u16, Option<String>)> {
    timed_token_burst(e, k, n).0
}

fn expect_jwks_unavailable(envoy: &Envoy, k: &ES256KeyPair, what: &str) {
    let t = Instant::now();
    let r = envoy.request(token_req(k));
    assert_eq!(
        (r.status, r.reason()),
        (503, Some("jwks_unavailable")),
        "{what}: {}",
        r.text()
    );
    // Answered, not left hanging until the client's 20 s read timeout.
    // (10 s, not a few timeouts: a loaded machine is slow.)
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "{what}: answered in {:?}",
        t.elapsed()
    );
}

#[test]
fn jwks_down_slow_or_garbage_before_the_first_keys_is_503_and_nothing_passes() {
    let (k, doc) = key();
    let up = Upstream::start();
    // Nothing listens on the cluster's port.
    let closed = free_port();
    let e = jwks_envoy(&up, closed, "deny");
    expect_jwks_unavailable(&e, &k, "connection refused");
    e.assert_vm_healthy();
    // Garbage instead of HTTP.
    let (gport, conns) = broken_service(Broken::Garbage(&[0x16, 0x03, 0x01, 0xff, 0xff]));
    let e = jwks_envoy(&up, gport, "deny");
    expect_jwks_unavailable(&e, &k, "garbage bytes");
    assert!(conns.load(Ordering::SeqCst) >= 1);
    e.assert_vm_healthy();
    // A real server: slow past timeout_ms, then over the size cap, then a
    // document with no usable key; each refused. Then the real document.
    let jwks = JwksServer::start(Jwks::Slow(
        Duration::from_millis(3 * JWKS_TIMEOUT_MS),
        doc.clone(),
    ));
    let e = jwks_envoy(&up, jwks.server.port, "deny");
    expect_jwks_unavailable(&e, &k, "slow server");
    // Every JWKS request Envoy sent has answered (or timed out) and was
    // counted as a failed fetch: nothing loads keys before the last step.
    let all_refused = || {
        e.wait_stat("appguard_jwks_fetch_failures", 15, |n| {
            n >= e.stat("cluster.jwks.upstream_rq_total").unwrap_or(0)
        })
    };
    let pad = "x".repeat(70 * 1024);
    jwks.set(Jwks::Doc(
        json!({"keys": [tokens::es256_jwk(&k, "k1")], "pad": pad}).to_string(),
    ));
    expect_jwks_unavailable(&e, &k, "JWKS over 64 KiB");
    e.wait_log("over the 65536-byte limit", 1, 15);
    assert!(all_refused() >= 1);
    // Each document is really fetched (by a request, from the second after
    // a failed fetch, or by the background) and refused.
    for unusable in [
        r#"{"keys": []}"#,
        r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
        r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#,
        r#"{"keys": {"kty": "EC"}}"#,
        "\u{feff}[]",
    ] {
        jwks.set(Jwks::Doc(unusable.to_string()));
        let before = jwks.server.seen().len();
        wait_until(15, &format!("a fetch of {unusable}"), || {
            jwks.server.seen().len() > before
        });
        all_refused();
        expect_jwks_unavailable(&e, &k, unusable);
    }
    assert!(up.seen().is_empty(), "a token passed without keys");
    jwks.set(Jwks::Doc(doc));
    wait_until(15, "the token to pass", || {
        let r = e.request(token_req(&k));
        if r.status != 200 {
            assert_eq!(r.reason(), Some("jwks_unavailable"), "{}", r.text());
        }
        r.status == 200
    });
    e.assert_vm_healthy();
}

#[test]
fn clients_that_go_away_do_not_free_their_fetch_slots() {
    // The same cap against clients that send a token and hang up while the
    // fetch is in flight: Envoy keeps the GET running for the plugin, so
    // a slot is free only when its fetch answers or times out. (When a
    // request gave its slot back on going away, 12 clients sent 12 GETs.)
    let (k, doc) = key();
    let up = Upstream::start();
    let jwks = JwksServer::start(Jwks::Slow(Duration::from_millis(3 * JWKS_TIMEOUT_MS), doc));
    let e = jwks_envoy(&up, jwks.server.port, "deny");
    let before = e.stat("cluster.jwks.upstream_rq_total").unwrap_or(0);
    let closed = || e.stat("http.ingress.downstream_cx_destroy").unwrap_or(0);
    let closed_before = closed();
    let token = tokens::es256_with(&k, &claims(60, json!({})));
    for _ in 0..12 {
        let mut s = TcpStream::connect(("127.0.0.1", e.port)).unwrap();
        write!(
            s,
            "GET /api/x HTTP/1.1\r\nhost: localhost\r\nx-token: {token}\r\n\r\n"
        )
        .unwrap();
        thread::sleep(Duration::from_millis(20));
        drop(s);
    }
    // Envoy has read every request (their fetches, if any, are sent from
    // the headers callback) once it has seen all 12 connections close.
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed() < closed_before + 12 {
        assert!(
            Instant::now() < deadline,
            "Envoy did not see the 12 clients go"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let sent = e.stat("cluster.jwks.upstream_rq_total").unwrap_or(0) - before;
    // 4 from requests, plus the root's background refresh (one per second
    // while no keys are loaded).
    assert!(
        (1..=6).contains(&sent),
        "{sent} JWKS requests for 12 clients that went away"
    );
    assert!(up.seen().is_empty());
    e.assert_vm_healthy();
}

#[test]
fn without_keys_a_burst_of_requests_sends_a_bounded_number_of_fetches() {
    // A JWKS endpoint slower than timeout_ms: every fetch times out. 16
    // requests at once on one worker: at most MAX_REQUEST_FETCHES (4) of
    // them fetch; the others wait for those four instead of each sending
    // a GET to an endpoint that is already struggling, and answer 503
    // when they time out.
    let (k, doc) = key();
    let up = Upstream::start();
    let jwks = JwksServer::start(Jwks::Slow(Duration::from_millis(3 * JWKS_TIMEOUT_MS), doc));
    let e = jwks_envoy(&up, jwks.server.port, "deny");
    let before = e.stat("cluster.jwks.upstream_rq_total").unwrap_or(0);
    let answers = token_burst(&e, &k, 16);
    for a in &answers {
        assert_eq!((a.0, a.1.as_deref()), (503, Some("jwks_unavailable")));
    }
    let sent = e.stat("cluster.jwks.upstream_rq_total").unwrap_or(0) - before;
    // 4 from requests, plus the root's background refresh (one per second
    // while no keys are loaded) during the burst.
    assert!(
        (1..=7).contains(&sent),
        "{sent} JWKS requests for 16 concurrent requests"
    );
    assert!(up.seen().is_empty());
    // Those fetches timed out a moment ago. A second burst, after the
    // second of that failure (when fetches may go out again) and within
    // the timeout and a second after it, does not wait for the next ones:
    // the endpoint hangs, and they would time out too. All but the four
    // that fetch are answered at once.
    thread::sleep(Duration::from_millis(1_100));
    let (answers, times) = timed_token_burst(&e, &k, 16);
    assert!(answers
        .iter()
        .all(|a| (a.0, a.1.as_deref()) == (503, Some("jwks_unavailable"))));
    let quick = times
        .iter()
        .filter(|t| **t < Duration::from_millis(JWKS_TIMEOUT_MS / 2))
        .count();
    assert!(quick >= 12, "{quick} of 16 answered at once: {times:?}");
    assert_eq!(e.stat("appguard_jwks_waits"), Some(12), "the first burst's");
    // Once the endpoint answers in time, keys load and requests pass.
    jwks.set(Jwks::Doc(key_doc(&k)));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = e.request(token_req(&k));
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", r.text());
        thread::sleep(Duration::from_millis(200));
    }
    e.assert_vm_healthy();
}

#[test]
fn without_keys_a_burst_past_the_four_fetches_waits_for_them_and_passes() {
    // No keys yet (the fetch at start failed), then a JWKS endpoint that
    // answers in 300 ms (timeout 500 ms), and 16 requests at once on one
    // worker: 4 fetch the keys. The other 12 used to answer 503
    // jwks_unavailable at once (or, under failure_mode allow, go on
    // unverified); now they wait for those fetches and pass.
    let (k, doc) = key();
    let up = Upstream::start();
    let (jwks, e) = without_keys_yet(&up, doc, "deny");
    let before = jwks.server.seen().len();
    let answers = token_burst(&e, &k, 16);
    assert_eq!(answers, vec![(200, None); 16], "{}", e.log());
    assert_eq!(up.seen().len(), 16);
    // Four GETs of the requests', and perhaps the background's.
    let sent = jwks.server.seen().len() - before;
    assert!((1..=5).contains(&sent), "{sent} GETs for 16 requests");
    let waits = e.stat("appguard_jwks_waits").unwrap_or_default();
    assert!(
        (1..=12).contains(&waits),
        "{waits} waited for the first keys"
    );
    e.assert_vm_healthy();
}

#[test]
fn requests_fetching_the_first_keys_pass_once_keys_come_from_elsewhere() {
    // review51 F5: the requests that fetch the first keys themselves were
    // decided only by their own GET's answer, even when keys came first
    // from elsewhere (another worker, the background refresh): behind GETs
    // that hang they waited the whole timeout_ms while later requests
    // passed at once. Here four requests fetch (their GETs hang past the
    // 3 s timeout); one client hangs up, and the root fetches the keys at
    // once in its stead (that GET answers at once). The other three pass
    // with those keys, not 3 s later when their own GETs time out.
    let (k, doc) = key();
    let up = Upstream::start();
    let mut config = jwks_config(600, 3600, "deny");
    config["tokens"][0]["remote_jwks"]["timeout_ms"] = json!(3000);
    let (jwks, e) = keys_down_at_start(&up, config);
    let before = jwks.fetches();
    jwks.set(Jwks::SlowFirst(
        Arc::new(AtomicUsize::new(4)),
        Duration::from_secs(10),
        doc,
    ));
    let token = tokens::es256_with(&k, &claims(60, json!({})));
    let mut leaving = TcpStream::connect(("127.0.0.1", e.port)).unwrap();
    write!(
        leaving,
        "GET /api/x HTTP/1.1\r\nhost: localhost\r\nx-token: {token}\r\n\r\n"
    )
    .unwrap();
    let gone = thread::scope(|s| {
        let staying: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let r = e.request(Req::get("/api/x").header("x-token", &token));
                    (r.status, r.reason().map(str::to_owned), Instant::now())
                })
            })
            .collect();
        wait_until(10, "the four requests' GETs", || {
            jwks.fetches() >= before + 4
        });
        drop(leaving);
        let gone = Instant::now();
        for h in staying {
            let (status, reason, done) = h.join().unwrap();
            assert_eq!((status, reason), (200, None), "{}", e.log());
            let took = done.duration_since(gone);
            assert!(
                took < Duration::from_millis(1_500),
                "passed {took:?} after the keys could come (timeout 3 s)"
            );
        }
        gone
    });
    assert_eq!(up.seen().len(), 3);
    // The root's GET in the leaving request's stead, after the four.
    assert!(jwks.fetches() >= before + 5);
    assert!(gone.elapsed() < Duration::from_secs(3));
    assert_eq!(
        e.stat("appguard_jwks_waits"),
        Some(0),
        "fetching is not waiting"
    );
    e.assert_vm_healthy();
}

#[test]
fn under_failure_mode_allow_a_burst_before_the_first_keys_is_verified_not_let_through() {
    // failure_mode allow, no keys yet, the JWKS answering in 300 ms: 16
    // genuine tokens and 8 forged ones (the same `kid`, another key) at
    // once on one worker. Past the four that fetch, requests used to take
    // the failure mode at once: let through unverified (their token
    // treated as absent, `x-appguard-degraded`), the forged ones too.
    // Now they wait for the keys and are verified.
    let (k, doc) = key();
    let forger = ES256KeyPair::generate().with_key_id("k1");
    let up = Upstream::start();
    let (_jwks, e) = without_keys_yet(&up, doc, "allow");
    let genuine =
        (0..16).map(|i| tokens::es256_with(&k, &claims(60, json!({"sub": format!("g{i}")}))));
    let forged =
        (0..8).map(|i| tokens::es256_with(&forger, &claims(60, json!({"sub": format!("f{i}")}))));
    let all: Vec<String> = genuine.chain(forged).collect();
    let (answers, _) = timed_burst(&e, &all);
    let expected: Vec<(u16, Option<String>)> = [
        vec![(200, None); 16],
        vec![(401, Some("token_signature".to_owned())); 8],
    ]
    .concat();
    assert_eq!(answers, expected, "{}", e.log());
    let seen = up.seen();
    assert_eq!(seen.len(), 16);
    assert!(
        seen.iter()
            .all(|r| r.header("x-appguard-degraded").is_none()),
        "none let through degraded"
    );
    e.assert_vm_healthy();
}

#[test]
fn keys_are_fetched_at_start_and_a_first_burst_sends_no_fetch_of_its_own() {
    // The root fetches the keys right after the configuration, and every
    // worker loads them, before any request: a burst that comes first
    // (here on two workers) neither waits for fetches of its own nor
    // meets a worker without keys (at most four requests per worker
    // would fetch; the rest would answer 503 jwks_unavailable).
    let (k, doc) = key();
    let up = Upstream::start();
    let jwks = JwksServer::start(Jwks::Doc(doc));
    let e = EnvoyBuilder::new(jwks_config(600, 3600, "deny"), up.port)
        .http_cluster("jwks", jwks.server.port)
        .concurrency(2)
        .start();
    let ready = Instant::now();
    wait_until(10, "the first JWKS fetch", || {
        !jwks.server.seen().is_empty()
    });
    // The first tick used to come a second after the configuration, which
    // Envoy applies just before it is ready.
    let first = jwks.first_fetch();
    assert!(
        first <= ready + Duration::from_millis(500),
        "the first fetch came {:?} after Envoy was ready",
        first - ready
    );
    thread::sleep(Duration::from_millis(200));
    assert_eq!(token_burst(&e, &k, 16), vec![(200, None); 16]);
    assert_eq!(up.seen().len(), 16);
    // One background fetch for the instance (two when the lease, kept in
    // whole seconds, ran out at a second boundary while the first was on
    // its way), and none of the requests'.
    let fetches = jwks.server.seen().len();
    assert!((1..=2).contains(&fetches), "{fetches} fetches");
    e.assert_vm_healthy();
}

#[test]
fn without_keys_the_background_keeps_fetching_and_fast_failures_are_not_one_get_per_request() {
    // A JWKS endpoint that fails at once (503). With no request at all, the
    // root's background refresh keeps trying (every timeout_ms + 1 s per
    // instance); and a run of requests with tokens does not turn into one
    // GET each, although every failed fetch frees its slot at once.
    let (k, doc) = key();
    let up = Upstream::start();
    let jwks = JwksServer::start(Jwks::Status(503, "down".into()));
    let e = jwks_envoy(&up, jwks.server.port, "deny");
    // Two periods are 3 s; a loaded machine gets 10 s, still far from a
    // background that gave up after its first failure.
    wait_until(10, "two background fetches without requests", || {
        jwks.server.seen().len() >= 2
    });
    let before = jwks.server.seen().len();
    let started = Instant::now();
    for _ in 0..40 {
        let r = e.request(token_req(&k));
        assert_eq!((r.status, r.reason()), (503, Some("jwks_unavailable")));
    }
    let seconds = started.elapsed().as_secs() + 1;
    let sent = (jwks.server.seen().len() - before) as u64;
    // At most one failed request fetch per second and worker (up to the
    // four that may be in flight at once), and the background's.
    assert!(
        sent <= 5 * seconds + 1,
        "{sent} GETs for 40 requests in about {seconds} s"
    );
    // The background brings the keys in once the endpoint is back.
    jwks.set(Jwks::Doc(doc));
    wait_until(15, "the keys to load", || {
        let passed = e.request(token_req(&k)).status == 200;
        if !passed {
            thread::sleep(Duration::from_millis(200));
        }
        passed
    });
    assert!(!up.seen().is_empty());
    e.assert_vm_healthy();
}

#[test]
fn jwks_down_under_failure_mode_allow_passes_without_the_token() {
    let (k, _doc) = key();
    let up = Upstream::start();
    let e = jwks_envoy(&up, free_port(), "allow");
    let r = e.request(token_req(&k));
    assert_eq!(r.status, 200, "{}", r.text());
    // The token could not be checked: it is not forwarded as if it had been,
    // and the upstream is told so.
    assert_eq!(up.last().header("x-token"), None);
    assert_eq!(
        up.last().header("x-appguard-degraded"),
        Some("jwks_unavailable")
    );
    assert_eq!(
        e.stat("appguard_decisions.route.api.decision.degraded.reason.jwks_unavailable"),
        Some(1)
    );
    // What needs no key is still refused: junk in the token header does
    // not pass where sending no token is refused.
    let r = e.request(Req::get("/api/x").header("x-token", "x"));
    assert_eq!((r.status, r.reason()), (401, Some("token_malformed")));
    let r = e.request(Req::get("/api/x"));
    assert_eq!((r.status, r.reason()), (401, Some("token_missing")));
    // The provider names no issuer or audience: the filter said so when
    // it was configured.
    assert!(
        e.log()
            .contains("configuration: tokens[0] (remote): a remote JWKS without `issuer`"),
        "{}",
        e.log()
    );
    assert_eq!(
        e.stat("appguard_decisions.route.api.decision.degraded.reason.jwks_unavailable"),
        Some(1)
    );
    e.assert_vm_healthy();
}

/// A provider that forwards its token to the upstream: with no keys to
/// check it, under `failure_mode: allow`, the token still does not go on
/// as if checked, nor does a forged one.
#[test]
fn jwks_down_under_failure_mode_allow_forwards_no_unchecked_token() {
    let (k, _doc) = key();
    let up = Upstream::start();
    let mut config = jwks_config(600, 3600, "allow");
    config["tokens"][0]["forward"] = json!(true);
    let e = EnvoyBuilder::new(config, up.port)
        .http_cluster("jwks", free_port())
        .start();
    let genuine = tokens::es256_with(&k, &claims(60, json!({})));
    let other = ES256KeyPair::generate().with_key_id("k1");
    let forged = tokens::es256_with(&other, &claims(60, json!({"sub": "admin"})));
    for t in [&genuine, &forged] {
        let r = e.request(Req::get("/api/x").header("x-token", t));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(up.last().header("x-token"), None);
        assert_eq!(
            up.last().header("x-appguard-degraded"),
            Some("jwks_unavailable")
        );
    }
    e.assert_vm_healthy();
}

#[test]
fn keys_survive_failed_refreshes_until_refresh_plus_grace() {
    const REFRESH: u64 = 10;
    const GRACE: u64 = 8;
    let (k, doc) = key();
    let jwks = JwksServer::start(Jwks::Doc(doc.clone()));
    let up = Upstream::start();
    let e = EnvoyBuilder::new(jwks_config(REFRESH, GRACE, "deny"), up.port)
        .http_cluster("jwks", jwks.server.port)
        .start();
    // The keys fetched at start, before the first request, which then
    // fetches none of its own.
    e.wait_log("bytes loaded", 1, 10);
    assert_eq!(e.request(token_req(&k)).status, 200);
    assert_eq!(jwks.fetches(), 1);
    // The keys' age counts from their fetch, which may have come when the
    // VM started, before Envoy was ready.
    let loaded = jwks.first_fetch();
    // Every refresh after this fails, in a different way each time.
    let failures = [
        Jwks::Status(500, "oops".into()),
        Jwks::Doc("{not json".into()),
        Jwks::Slow(Duration::from_millis(3 * JWKS_TIMEOUT_MS), doc.clone()),
        Jwks::Status(200, r#"{"keys": []}"#.into()),
    ];
    jwks.set(failures[0].clone());
    wait_until(REFRESH + 15, "the first refresh", || jwks.fetches() >= 2);
    let first_refresh = loaded.elapsed();
    let mut i = 0;
    // Until refresh + grace has passed, the last good keys still verify:
    // checked after each failed refresh, which the loop must have done
    // (the first refresh comes about REFRESH s after the fetch, then one
    // a second: some six checks).
    let checked_until = Duration::from_secs(REFRESH + GRACE - 2);
    while loaded.elapsed() < checked_until {
        jwks.set(failures[i % failures.len()].clone());
        let before = jwks.fetches();
        let r = e.request(token_req(&k));
        assert_eq!(
            r.status,
            200,
            "keys dropped after a failed refresh: {}",
            r.text()
        );
        // The keys are due: the background refreshes about every second,
        // and this refresh fails.
        wait_until(10, "the next refresh", || jwks.fetches() > before);
        i += 1;
    }
    assert!(
        i >= 2,
        "the machine is too slow for this test: the first refresh came \
         {first_refresh:?} after the keys were fetched, and only {i} request(s) \
         after a failed refresh fitted before {checked_until:?}"
    );
    assert!(
        jwks.fetches() >= 3,
        "refreshes were attempted: {}",
        jwks.fetches()
    );
    // No request was refused, but the failing refreshes are counted: the
    // metric an operator alerts on long before the grace ends. (The first
    // fetch succeeded; the last refresh may still be on its way.)
    let failed = e.stat("appguard_jwks_fetch_failures").unwrap_or(0);
    assert!(
        failed >= 1 && failed < jwks.fetches() as u64,
        "{failed} failures counted of {} fetches",
        jwks.fetches()
    );
    // After refresh + grace (and the time a refresh may take on its way:
    // its timeout and two ticks) the stale keys are dropped: refused, not
    // trusted forever. Until the worker's next tick drops them they pass.
    jwks.set(Jwks::Status(503, "down".into()));
    let on_its_way = JWKS_TIMEOUT_MS.div_ceil(1000) + 2;
    let dropped_by = REFRESH + GRACE + on_its_way + 15;
    wait_until(
        dropped_by.saturating_sub(loaded.elapsed().as_secs()),
        "the stale keys to be dropped",
        || {
            let r = e.request(token_req(&k));
            if r.status == 200 {
                thread::sleep(Duration::from_millis(200));
                return false;
            }
            assert_eq!((r.status, r.reason()), (503, Some("jwks_unavailable")));
            true
        },
    );
    expect_jwks_unavailable(&e, &k, "stale keys");
    // By now every refresh but perhaps the last has answered, and failed.
    let failed = e.stat("appguard_jwks_fetch_failures").unwrap_or(0);
    assert!(
        failed >= 3 && failed < jwks.fetches() as u64,
        "{failed} failures counted of {} fetches",
        jwks.fetches()
    );
    assert!(
        e.log().contains("keys older than refresh + grace, dropped"),
        "dropped for age"
    );
    // Back: from the second after the failed fetch, a request fetches again.
    jwks.set(Jwks::Doc(doc));
    wait_until(15, "the token to pass", || {
        let r = e.request(token_req(&k));
        if r.status != 200 {
            assert_eq!(r.reason(), Some("jwks_unavailable"), "{}", r.text());
        }
        r.status == 200
    });
    e.assert_vm_healthy();
}

// ---------------------------------------------------------------------------
// Fail closed: a VM that cannot start, or that crashes
// ---------------------------------------------------------------------------

/// A hand-assembled proxy-wasm (ABI 0.2.1) module, about 250 bytes: it
/// starts (`proxy_on_vm_start` returns `vm_start`), configures (returns
/// `configure`), and runs `headers_body` (a function body after its local
/// declarations) in `proxy_on_request_headers`. `[0x00]` is `unreachable`,
/// a trap; `[0x41, 0x00]` returns 0, Continue.
fn proxy_wasm_module(headers_body: &[u8], vm_start: u8, configure: u8) -> Vec<u8> {
    /// Unsigned LEB128, the length encoding of the binary format.
    fn leb(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = u8::try_from(n & 0x7f).unwrap();
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }
    fn vec_of(items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = leb(items.len());
        for i in items {
            out.extend_from_slice(i);
        }
        out
    }
    fn section(id: u8, body: Vec<u8>) -> Vec<u8> {
        let mut out = vec![id];
        out.extend(leb(body.len()));
        out.extend(body);
        out
    }
    fn name(s: &str) -> Vec<u8> {
        let mut out = leb(s.len());
        out.extend_from_slice(s.as_bytes());
        out
    }
    const I32: u8 = 0x7f;
    const FUNC: u8 = 0x60;
    let types = vec_of(&[
        vec![FUNC, 1, I32, 1, I32],
        vec![FUNC, 0, 0],
        vec![FUNC, 2, I32, I32, 0],
        vec![FUNC, 2, I32, I32, 1, I32],
        vec![FUNC, 3, I32, I32, I32, 1, I32],
    ]);
    // function i has type funcs[i]
    let funcs = vec_of(&[vec![0], vec![1], vec![2], vec![3], vec![3], vec![4]]);
    let body = |code: &[u8]| {
        let mut b = vec![0x00]; // no locals
        b.extend_from_slice(code);
        b.push(0x0b); // end
        let mut out = leb(b.len());
        out.extend(b);
        out
    };
    let code = vec_of(&[
        body(&[0x41, 0x80, 0x08]), // malloc: i32.const 1024
        body(&[]),
        body(&[]),
        body(&[0x41, vm_start]),
        body(&[0x41, configure]),
        body(headers_body),
    ]);
    let export = |n: &str, kind: u8, index: u8| {
        let mut e = name(n);
        e.extend([kind, index]);
        e
    };
    let exports = vec_of(&[
        export("memory", 2, 0),
        export("proxy_on_memory_allocate", 0, 0),
        export("malloc", 0, 0),
        export("proxy_abi_version_0_2_1", 0, 1),
        export("proxy_on_context_create", 0, 2),
        export("proxy_on_vm_start", 0, 3),
        export("proxy_on_configure", 0, 4),
        export("proxy_on_request_headers", 0, 5),
    ]);
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend(section(1, types));
    m.extend(section(3, funcs));
    m.extend(section(5, vec![1, 0x00, 2])); // one memory, min 2 pages
    m.extend(section(7, exports));
    m.extend(section(10, code));
    m
}

/// An Envoy started from the harness's bootstrap with another module file
/// and failure policy in the wasm filter.
struct RawEnvoy {
    port: u16,
    admin_port: u16,
    service: Service,
    _dir: tempfile::TempDir,
}

impl RawEnvoy {
    fn stat(&self, name: &str) -> u64 {
        let text = http::get(self.admin_port, "/stats").unwrap().text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Starts Envoy; `Ok` once ready, `Err(log)` when it exits first. As the
/// harness does, it starts again on other ports (at most three times) when
/// a port handed out as free was taken before Envoy bound it: that is the
/// machine, not the module under test.
fn start_envoy(up: &Upstream, module: &Path, failure_policy: &str) -> Result<RawEnvoy, String> {
    let code = json!({"local": {"filename": module.display().to_string()}});
    start_envoy_code(up, &code, None, failure_policy)
}

/// [`start_envoy`] with the module's `vm_config.code` as given, and an
/// extra HTTP cluster (`name`, port) for a remote one.
fn start_envoy_code(
    up: &Upstream,
    code: &Value,
    cluster: Option<(&str, u16)>,
    failure_policy: &str,
) -> Result<RawEnvoy, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start_envoy_once(up, code, cluster, failure_policy) {
            Err((_, true)) if attempt < 3 => continue,
            r => return r.map_err(|(log, _)| log),
        }
    }
}

/// One start: `Err((log, port taken))` when Envoy exits first.
fn start_envoy_once(
    up: &Upstream,
    code: &Value,
    cluster: Option<(&str, u16)>,
    failure_policy: &str,
) -> Result<RawEnvoy, (String, bool)> {
    let (port, admin_port) = (free_port(), free_port());
    let mut builder = EnvoyBuilder::new(json!({}), up.port);
    if let Some((name, p)) = cluster {
        builder = builder.http_cluster(name, p);
    }
    let mut bootstrap = builder.bootstrap(port, admin_port);
    let filters = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array_mut()
        .unwrap();
    let wasm = filters
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .unwrap();
    let cfg = &mut wasm["typed_config"]["config"];
    assert_eq!(cfg["failure_policy"], "FAIL_RELOAD", "the harness default");
    cfg["failure_policy"] = json!(failure_policy);
    cfg["vm_config"]["code"] = code.clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.json");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    let mut cmd = Command::new(envoy_bin());
    cmd.arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "--log-level",
            "info",
        ])
        .arg("--base-id-path")
        .arg(dir.path().join("base-id"));
    let mut service = Service::start("envoy", cmd, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = service.wait_exit(Duration::from_millis(50)) {
            // Envoy's own lines about the module, not its list of extensions.
            let log = service.log_text();
            let port_taken = log.contains("Address already in use");
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("[wasm]") || l.contains("[critical]"))
                .collect();
            return Err((format!("exit {status}\n{}", lines.join("\n")), port_taken));
        }
        if http::get(admin_port, "/ready").is_ok_and(|r| r.status == 200)
            && TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return Ok(RawEnvoy {
                port,
                admin_port,
                service,
                _dir: dir,
            });
        }
        assert!(Instant::now() < deadline, "Envoy neither ready nor exited");
    }
}

#[test]
fn envoy_refuses_to_start_when_the_vm_cannot_start() {
    let up = Upstream::start();
    let real = std::fs::read(harness::wasm_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let modules: [(&str, Vec<u8>); 5] = [
        ("not wasm", b"this is not a wasm module\n".to_vec()),
        ("empty file", Vec::new()),
        ("truncated appguard", real[..real.len() / 2].to_vec()),
        (
            "proxy_on_vm_start fails",
            proxy_wasm_module(&[0x41, 0x00], 0, 1),
        ),
        (
            "proxy_on_configure fails",
            proxy_wasm_module(&[0x41, 0x00], 1, 0),
        ),
    ];
    for (what, bytes) in modules {
        let path = dir.path().join(format!("{}.wasm", what.replace(' ', "-")));
        std::fs::write(&path, bytes).unwrap();
        match start_envoy(&up, &path, "FAIL_RELOAD") {
            Ok(e) => panic!(
                "{what}: Envoy started and serves on {}:\n{}",
                e.port,
                e.service.log_text()
            ),
            Err(log) => {
                assert!(
                    log.contains("Plugin configured to fail closed failed to load"),
                    "{what}: not the fail-closed refusal:\n{log}"
                );
                assert!(!log.contains("starting main dispatch loop"), "{what}");
            }
        }
    }
    // Control: the hand-assembled module that starts is served.
    let ok = dir.path().join("ok.wasm");
    std::fs::write(&ok, proxy_wasm_module(&[0x41, 0x00], 1, 1)).unwrap();
    let e = start_envoy(&up, &ok, "FAIL_RELOAD").unwrap();
    let r = http::send(e.port, &Req::get("/x")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.seen().len(), 1);
}

#[test]
fn a_vm_that_crashes_on_every_request_refuses_every_request() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let trap = dir.path().join("trap.wasm");
    std::fs::write(&trap, proxy_wasm_module(&[0x00], 1, 1)).unwrap();
    let e = start_envoy(&up, &trap, "FAIL_RELOAD").unwrap();
    for i in 0..8 {
        let r = http::send(e.port, &Req::get("/x")).unwrap();
        assert_eq!(r.status, 503, "request {i} after a crash: {}", r.text());
        assert_eq!(r.reason(), None, "answered by Envoy, not by a filter");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(up.seen().is_empty(), "a request passed a crashed VM");
    let log = e.service.log_text();
    assert!(
        log.contains("Function: proxy_on_request_headers failed"),
        "{log}"
    );
    let reloads =
        e.stat("wasm.appguard.vm_reload_success") + e.stat("wasm.appguard.vm_reload_backoff");
    assert!(
        reloads >= 1,
        "FAIL_RELOAD reloaded (or backed off): {reloads}"
    );
    // The contrast that makes this test mean something: the same module
    // with FAIL_OPEN lets requests through unchecked after the first crash.
    let open = start_envoy(&up, &trap, "FAIL_OPEN").unwrap();
    for _ in 0..3 {
        let _ = http::send(open.port, &Req::get("/x")).unwrap();
    }
    assert!(
        !up.seen().is_empty(),
        "FAIL_OPEN passed nothing either: the crash test is not discriminating"
    );
}

#[test]
fn the_module_loads_from_a_remote_source_only_with_its_sha256() {
    // SPEC §6: the wasm loaded from a local file or a remote source with
    // sha256. Served over an Envoy cluster, the right digest gives the
    // filter (a client's x-appguard-app is removed before the upstream);
    // a wrong one is refused, closed.
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(harness::wasm_path()).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let body = bytes.clone();
    let source = Upstream::with_handler(std::sync::Arc::new(move |_s: &Seen| {
        (
            200,
            vec![("content-type".into(), "application/wasm".into())],
            body.clone(),
        )
    }));
    let up = Upstream::start();
    let remote = |digest: &str| {
        json!({"remote": {
            "http_uri": {"uri": format!("http://127.0.0.1:{}/appguard.wasm", source.port),
                         "cluster": "wasm_source", "timeout": "10s"},
            "sha256": digest
        }})
    };
    let e = start_envoy_code(
        &up,
        &remote(&sha),
        Some(("wasm_source", source.port)),
        "FAIL_RELOAD",
    )
    .unwrap_or_else(|log| panic!("the right digest: {log}"));
    let r = http::send(e.port, &Req::get("/x").header("x-appguard-app", "spoofed")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-appguard-app"), None, "appguard ran");
    drop(e);
    let wrong = "0".repeat(64);
    match start_envoy_code(
        &up,
        &remote(&wrong),
        Some(("wasm_source", source.port)),
        "FAIL_RELOAD",
    ) {
        Err(log) => panic!("Envoy 1.40 starts and fails the plugin closed: {log}"),
        Ok(e) => {
            // Envoy 1.40 starts, gives up fetching a module whose digest
            // does not match, fails the plugin closed and answers 503:
            // nothing passes unchecked.
            let r = http::send(e.port, &Req::get("/x")).unwrap();
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(e
                .service
                .log_text()
                .contains("Plugin configured to fail closed failed to load"));
        }
    }
    assert_eq!(up.seen().len(), 1, "only the request to the right module");
}

/// With `allow_on_headers_stop_iteration: true` (the README says to keep
/// it `false`), Envoy hands the body on while appguard's headers callback
/// waits for the first JWKS. That body can no longer be read whole, so a
/// route that reads it answers 503 `appguard_host_error` rather than let
/// it through unchecked, and the reply is counted.
#[test]
fn a_body_handed_on_while_the_headers_wait_fails_closed_and_is_counted() {
    let (k, doc) = key();
    // No keys until the test opens the gate, however late Envoy is ready.
    // A fetch times out after 30 s: the fetches held at the gate answer
    // once it opens, and the root's background fetches are a 31 s lease
    // apart.
    let gate = Gate::default();
    let jwks = JwksServer::start(Jwks::Gated(gate.clone(), doc));
    let up = Upstream::start();
    let cfg = json!({
        "phone": {"default_calling_code": "44", "hash_key_base64": "c2VjcmV0LWtleS1mb3ItcGhvbmUtaGFzaGluZy0wMTIz"},
        "tokens": [{"name": "remote", "from": [{"header": "x-token"}],
                    "remote_jwks": {"cluster": "jwks", "path": "/jwks.json", "timeout_ms": 30000,
                                    "refresh_seconds": 600}}],
        "routes": [{"name": "sms", "match": {"path": "/sms"}, "tokens": ["remote"],
                    "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                                     "local": {"requests": 5, "per": "hour"}}]}]
    });
    let e = EnvoyBuilder::new(cfg, up.port)
        .http_cluster("jwks", jwks.server.port)
        .allow_on_headers_stop_iteration()
        .start();
    // The root's first background fetch, held: the next fetch is the
    // request's.
    wait_until(15, "the background fetch", || jwks.fetches() >= 1);
    let token = tokens::es256_with(&k, &claims(60, json!({})));
    let send = || {
        e.request(Req::post_json("/sms", r#"{"to": "+44 7700 900123"}"#).header("x-token", &token))
    };
    let r = thread::scope(|s| {
        let first = s.spawn(send);
        // Its headers wait for keys, and its body, sent with them, has
        // been handed on by the time its fetch arrives: let the keys in.
        wait_until(15, "the request's fetch", || jwks.fetches() >= 2);
        // The body was sent with the headers; give Envoy a moment to hand
        // it on (the slow server this replaced answered after 700 ms).
        thread::sleep(Duration::from_millis(300));
        gate.open();
        first.join().unwrap()
    });
    assert_eq!(
        (r.status, r.reason()),
        (503, Some("appguard_host_error")),
        "{}",
        r.text()
    );
    assert!(up.seen().is_empty(), "the body went upstream unchecked");
    assert_eq!(e.stat("appguard_host_errors"), Some(1));
    assert!(
        e.log()
            .contains("keep allow_on_headers_stop_iteration at false"),
        "the log says why"
    );
    // The worker stored its fetch's keys before it answered.
    e.wait_log("bytes loaded", 1, 10);
    // With the keys loaded nothing waits: the same request passes.
    let r = send();
    assert_eq!(r.status, 200, "{}", r.text());
    e.assert_vm_healthy();
}

#[test]
fn a_rotated_key_is_fetched_even_when_the_client_that_named_it_went_away() {
    // The one request that may re-fetch for an unknown `kid` (one per
    // `min_refetch_seconds`, 30 s here, per instance) hangs up while its
    // GET is out: the SDK drops the answer with the request's context.
    // The root fetches the keys instead, on its next tick, so the rotated
    // key verifies within seconds, not after the 30 s lease or the
    // 600 s refresh.
    let (k1, doc1) = key();
    let up = Upstream::start();
    let jwks = JwksServer::start(Jwks::Doc(doc1));
    let e = jwks_envoy(&up, jwks.server.port, "deny");
    let r = e.request(token_req(&k1));
    assert_eq!(r.status, 200, "{}", r.text());
    let k2 = ES256KeyPair::generate().with_key_id("k2");
    let rotated =
        json!({"keys": [tokens::es256_jwk(&k1, "k1"), tokens::es256_jwk(&k2, "k2")]}).to_string();
    jwks.set(Jwks::Slow(
        Duration::from_millis(JWKS_TIMEOUT_MS / 2),
        rotated,
    ));
    let fetched = jwks.fetches();
    let token = tokens::es256_with(&k2, &claims(60, json!({})));
    let closed = || e.stat("http.ingress.downstream_cx_destroy").unwrap_or(0);
    let closed_before = closed();
    let mut s = TcpStream::connect(("127.0.0.1", e.port)).unwrap();
    write!(
        s,
        "GET /api/x HTTP/1.1\r\nhost: localhost\r\nx-token: {token}\r\n\r\n"
    )
    .unwrap();
    wait_until(10, "the re-fetch for k2", || jwks.fetches() > fetched);
    drop(s);
    wait_until(10, "Envoy to see the client go", || {
        closed() > closed_before
    });
    wait_until(10, "k2 to verify", || {
        let r = e.request(Req::get("/api/x").header("x-token", &token));
        match (r.status, r.reason()) {
            (200, _) => true,
            (401, Some("token_signature")) => false,
            other => panic!("{other:?}: {}", r.text()),
        }
    });
    assert!(up.seen().iter().all(|s| s.path == "/api/x"));
    e.assert_vm_healthy();
}

/// A JWKS cluster without hosts, one Envoy does not define, and an alerts
/// cluster without hosts: each dispatch fails, the route's failure mode
/// answers, and the VM lives on (also once the alerts' tick has tried to
/// post).
#[test]
fn jwks_and_alert_clusters_without_hosts_do_not_abort_the_vm() {
    let (k, _doc) = key();
    let up = Upstream::start();
    for (missing, mode) in [(false, "deny"), (true, "deny"), (false, "allow")] {
        let mut cfg = jwks_config(600, 3600, mode);
        cfg["alerts"] = json!({"cluster": "alerts", "path": "/hook", "threshold": 2,
                               "window_seconds": 3600, "max_alerts_per_window": 5});
        let mut b = EnvoyBuilder::new(cfg, up.port).cluster_without_hosts("alerts", false);
        if !missing {
            b = b.cluster_without_hosts("jwks", false);
        }
        let e = b.start();
        for _ in 0..6 {
            let r = e.request(token_req(&k));
            let want = if mode == "deny" { 503 } else { 200 };
            assert_eq!(r.status, want, "missing={missing} {mode}: {:?}", r.reason());
            let r = e.request(Req::get("/api/x"));
            assert_eq!(r.status, 401, "{:?}", r.reason());
        }
        thread::sleep(Duration::from_millis(2500));
        let r = e.request(token_req(&k));
        assert_eq!(r.status, if mode == "deny" { 503 } else { 200 });
        e.assert_vm_healthy();
        let log = e.log();
        assert!(!log.contains("panicked"), "{log}");
    }
}
