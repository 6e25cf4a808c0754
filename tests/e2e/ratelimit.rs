//! Shared rate limits end to end: real Envoy, the real appguard-ratelimit
//! service over gRPC (RLS v3), and a real Redis.

use crate::harness;

use std::time::{Duration, Instant};

use harness::http::Req;
use harness::services::{test_limits, RateLimitService, Redis};
use harness::tokens::{claims, hs256};
use harness::upstream::Upstream;
use harness::{free_port, EnvoyBuilder};
use serde_json::{json, Value};

fn config(failure_mode: &str, timeout_ms: u64) -> Value {
    json!({
        "client_ip": {"xff_trusted_hops": 1},
        "rate_limit_service": {"cluster": "ratelimit", "domain": "appguard", "timeout_ms": timeout_ms, "failure_mode": failure_mode},
        "phone": {"default_calling_code": "44", "denied_prefixes": ["+882", "+44 909"], "hash_key_base64": "c2VjcmV0LWtleS1mb3ItcGhvbmUtaGFzaGluZy0wMTIz"},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}],
                    "replay": {"claim": "jti", "scope": "service"}}],
        "routes": [
            {"name": "api", "match": {"prefix": "/api"},
             "rate_limits": [{"entries": [{"type": "client_ip"}]}]},
            {"name": "sms", "match": {"path": "/sms", "methods": ["POST"]},
             "rate_limits": [{"entries": [{"type": "route"}, {"type": "body", "pointer": "/to", "phone": true}]}]},
            {"name": "user", "match": {"prefix": "/user"},
             "rate_limits": [{"entries": [{"type": "header", "name": "x-user", "key": "user"}]}]},
            {"name": "local", "match": {"prefix": "/local"},
             "rate_limits": [{"entries": [{"type": "client_ip"}], "local": {"requests": 5, "per": "minute"}}]},
            {"name": "otp", "match": {"prefix": "/otp"},
             "rate_limits": [
                {"name": "burst", "entries": [{"type": "client_ip"}], "local": {"requests": 2, "per": "minute"}},
                {"name": "sustained", "entries": [{"type": "client_ip"}], "local": {"requests": 100, "per": "hour"}}]},
            {"name": "once", "match": {"prefix": "/once"}, "tokens": ["t"]},
            {"name": "device", "match": {"prefix": "/device"},
             "rate_limits": [{"entries": [{"type": "header", "name": "x-device", "key": "device"}]}]},
            {"name": "leased", "match": {"prefix": "/leased"},
             "rate_limits": [{"entries": [{"type": "header", "name": "x-tenant", "key": "tenant"}], "lease": 4}]}
        ]
    })
}

fn from_ip(req: Req, ip: &str) -> Req {
    req.header("x-forwarded-for", ip)
}

#[test]
fn per_ip_limit_gives_429_with_headers_on_the_fourth_request() {
    let rls = RateLimitService::start(&test_limits(), None);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    for i in 0..3 {
        let r = envoy.request(from_ip(Req::get("/api/x"), "192.0.2.10"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = envoy.request(from_ip(Req::get("/api/x"), "192.0.2.10"));
    assert_eq!(
        (r.status, r.reason()),
        (429, Some("rate_limited")),
        "{}",
        r.text()
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=3600).contains(&reset) && retry == reset,
        "reset {reset} retry {retry}"
    );
    // another IP is unaffected
    assert_eq!(
        envoy
            .request(from_ip(Req::get("/api/x"), "192.0.2.11"))
            .status,
        200
    );
    assert_eq!(up.seen().len(), 4);
}

#[test]
fn an_oversized_trace_header_does_not_fail_the_call_and_lift_the_limits_under_allow() {
    // The client writes `traceparent`: passed on as gRPC metadata as it
    // was, 17 KiB of it made the service refuse the call (HTTP 431 from
    // its 16 KiB default), and `failure_mode: allow` then let the request
    // through unlimited. The service now takes 64 KiB of metadata, so the
    // trace headers here are 80 KiB in all (Envoy told to take 96 KiB of
    // request headers): only the filter's check keeps the call whole.
    let rls = RateLimitService::start(&test_limits(), None);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("allow", 500), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .hcm("max_request_headers_kb", json!(96))
        .start();
    let big = "a".repeat(40 * 1024);
    let send = || {
        envoy.request(
            from_ip(Req::get("/api/x"), "192.0.2.20")
                .header("traceparent", &big)
                .header("b3", &big),
        )
    };
    for i in 0..3 {
        assert_eq!(send().status, 200, "request {i}");
    }
    // Only a call the service answered can say OVER_LIMIT.
    let r = send();
    assert_eq!(
        (r.status, r.reason()),
        (429, Some("rate_limited")),
        "the limit holds"
    );
    assert_eq!(
        rls.stats()["requests"].as_u64(),
        Some(4),
        "every call reached the service (a refused one is never counted)"
    );
}

#[test]
fn a_rule_the_service_has_no_limit_for_is_logged_not_silent() {
    // tests/fixtures/ratelimit.yaml has no rule for `device`: the service
    // answers OK without a limit, and the rule limits nothing.
    let rls = RateLimitService::start(&test_limits(), None);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .concurrency(1)
        .start();
    let warning = "the rate-limit service has no limit for the descriptor of rule";
    // A rule it has a limit for is not named.
    assert_eq!(
        envoy
            .request(from_ip(Req::get("/api/x"), "192.0.2.30"))
            .status,
        200
    );
    assert!(!envoy.log().contains(warning), "{}", envoy.log());
    for _ in 0..3 {
        let r = envoy.request(Req::get("/device/x").header("x-device", "d-1"));
        assert_eq!(r.status, 200);
    }
    let log = envoy.log();
    assert!(
        log.contains(&format!("{warning} device#0 of route device")),
        "{log}"
    );
    assert_eq!(log.matches(warning).count(), 1, "once a minute: {log}");
    assert!(!log.contains("d-1"), "the value is not logged");
}

#[test]
fn per_phone_limit_holds_across_formats_and_denied_prefixes_are_refused() {
    let rls = RateLimitService::start(&test_limits(), None);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    let send = |to: &str| {
        envoy.request(Req::post_json(
            "/sms",
            &json!({"to": to, "text": "code 1234"}).to_string(),
        ))
    };
    assert_eq!(send("+44 7700 900123").status, 200);
    assert_eq!(send("07700-900-123").status, 200);
    let r = send("0044 (7700) 900.123");
    assert_eq!(
        (r.status, r.reason()),
        (429, Some("rate_limited")),
        "a reformatted number is the same number"
    );
    assert_eq!(
        send("+447700900456").status,
        200,
        "another number has its own limit"
    );
    let r = send("+882 1234 5678");
    assert_eq!((r.status, r.reason()), (403, Some("phone_denied")));
    let r = send("0909 876 5432");
    assert_eq!((r.status, r.reason()), (403, Some("phone_denied")));
    // `(0)` past the calling code is the digit 0, as gateways read it: it
    // neither slips past a denied prefix nor makes the number a new one.
    let r = send("+44 9(0)9 876 5432");
    assert_eq!((r.status, r.reason()), (403, Some("phone_denied")));
    let r = send("+44 770(0) 900123");
    assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
    let r = send("call me maybe");
    assert_eq!((r.status, r.reason()), (400, Some("body_invalid")));
    // Australia's and South Korea's international prefixes, read as `00`
    // + `1 …`: a `+1` number no one has, where a dialler there reads
    // `+882 …` (and `+44 7700 900123` under a new key).
    for to in [
        "0011 882 1234 5678",
        "001 882 1234 5678",
        "0011 44 7700 900123",
    ] {
        let r = send(to);
        assert_eq!((r.status, r.reason()), (400, Some("body_invalid")), "{to}");
    }
    // Rails, Symfony and Laravel take `?to=` over the body's `to`: the
    // number checked and counted here would not be the one sent to.
    let r = envoy.request(Req::post_json(
        "/sms?to=%2B88212345678",
        &json!({"to": "+447700900777", "text": "code 1234"}).to_string(),
    ));
    assert_eq!((r.status, r.reason()), (400, Some("body_invalid")));
    let r = envoy.request(Req::post_json(
        "/sms",
        &format!(r#"{{"to":"+447700900999","pad":"{}"}}"#, "x".repeat(20_000)),
    ));
    assert_eq!((r.status, r.reason()), (413, Some("body_too_large")));
    // the number never reaches the upstream changed, and never appears in Envoy's log
    assert_eq!(up.seen().len(), 3);
    assert!(
        envoy.log().contains("deny reason=body_too_large"),
        "decision lines logged"
    );
    assert!(!envoy.log().contains("7700900123") && !envoy.log().contains("7700 900123"));
}

/// The SMS-pumping case `--stop-increment-when-over-limit` is for, through
/// Envoy, appguard and the service counting in Redis: a client that used
/// up its per-IP limit keeps asking for codes to a victim's number. Its
/// refused requests count nothing, so the victim (another IP) still gets
/// the number's two codes an hour; without the flag those five refused
/// calls would have spent one of them (the first; appguard's over-limit
/// cache answers the others without a call).
#[test]
fn with_stop_increment_a_blocked_client_cannot_spend_a_victims_sms_limit() {
    let redis = Redis::start();
    let rls = RateLimitService::start_with(
        &test_limits(),
        Some(&redis.url()),
        &["--stop-increment-when-over-limit"],
    );
    let up = Upstream::start();
    let mut cfg = config("deny", 500);
    cfg["routes"] = json!([
        {"name": "sms", "match": {"path": "/sms", "methods": ["POST"]},
         "rate_limits": [
            {"name": "per-ip", "entries": [{"type": "client_ip"}]},
            {"name": "per-number", "entries": [{"type": "route"}, {"type": "body", "pointer": "/to", "phone": true}]}]}
    ]);
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    let send = |ip: &str, to: &str| {
        envoy.request(from_ip(
            Req::post_json("/sms", &json!({"to": to, "text": "code"}).to_string()),
            ip,
        ))
    };
    // The attacker spends its 3 an hour on other numbers...
    for to in ["+447700900001", "+447700900002", "+447700900003"] {
        assert_eq!(send("192.0.2.66", to).status, 200);
    }
    // ...then is refused for every code it asks for the victim's number.
    for _ in 0..5 {
        let r = send("192.0.2.66", "+447700900123");
        assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
    }
    for _ in 0..2 {
        let r = send("203.0.113.9", "07700 900123");
        assert_eq!(
            r.status,
            200,
            "the victim's number was spent: {:?}",
            r.reason()
        );
    }
    let r = send("203.0.113.9", "07700 900123");
    assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
    // The attacker's first refusal and the victim's third reached the
    // service; appguard's over-limit cache refused the attacker's next
    // four without a call.
    assert_eq!(rls.stats()["over_limit_not_counted"], 2, "{}", rls.stats());
    assert_eq!(up.seen().len(), 5);
}

#[test]
fn a_refused_request_spends_no_local_limit_of_its_route() {
    // A client over its per-IP limit that keeps asking for codes to a
    // victim's number, before the fix, spent the number's local limit with
    // every refusal and locked its owner out; and a request the service
    // refused kept the local tokens it had taken.
    let rls = RateLimitService::start(&test_limits(), None);
    let up = Upstream::start();
    let mut cfg = config("deny", 500);
    cfg["routes"] = json!([
        {"name": "otp", "match": {"path": "/otp", "methods": ["POST"]},
         "rate_limits": [
            {"name": "per-number", "entries": [{"type": "body", "pointer": "/to", "phone": true}],
             "local": {"requests": 3, "per": "hour"}},
            {"name": "per-ip", "entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "minute"}}]},
        {"name": "sms", "match": {"path": "/sms", "methods": ["POST"]},
         "rate_limits": [
            {"name": "per-ip", "entries": [{"type": "client_ip"}], "local": {"requests": 2, "per": "minute"}},
            {"name": "per-number", "entries": [{"type": "route"}, {"type": "body", "pointer": "/to", "phone": true}]}]}
    ]);
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    let send = |path: &str, ip: &str, to: &str| {
        envoy.request(from_ip(
            Req::post_json(path, &json!({"to": to, "text": "code"}).to_string()),
            ip,
        ))
    };
    let refused_by = |r: &harness::http::Resp| {
        assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
        r.header("x-ratelimit-limit").map(str::to_owned)
    };
    // Two local limits: the per-IP one refuses the attacker's next four.
    assert_eq!(send("/otp", "192.0.2.66", "+447700900123").status, 200);
    for _ in 0..4 {
        let r = send("/otp", "192.0.2.66", "+447700900123");
        assert_eq!(refused_by(&r).as_deref(), Some("1"));
    }
    for ip in ["203.0.113.9", "203.0.113.10"] {
        let r = send("/otp", ip, "07700 900123");
        assert_eq!(r.status, 200, "{ip}: the number's limit was spent");
    }
    let r = send("/otp", "203.0.113.11", "07700 900123");
    assert_eq!(
        refused_by(&r).as_deref(),
        Some("3"),
        "3 an hour, all let through"
    );
    // A local limit, then the service's 2 an hour per number: two numbers
    // spent by others, which the service refuses to 192.0.2.77...
    for (ip, to) in [
        ("198.51.100.1", "+447700900201"),
        ("198.51.100.2", "+447700900201"),
        ("198.51.100.3", "+447700900202"),
        ("198.51.100.4", "+447700900202"),
    ] {
        assert_eq!(send("/sms", ip, to).status, 200);
    }
    for to in ["+447700900201", "+447700900202"] {
        let r = send("/sms", "192.0.2.77", to);
        assert_eq!(refused_by(&r).as_deref(), Some("2"), "the service refused");
    }
    // ...which leaves its 2 a minute whole.
    for to in ["+447700900203", "+447700900204"] {
        assert_eq!(send("/sms", "192.0.2.77", to).status, 200, "{to}");
    }
    let r = send("/sms", "192.0.2.77", "+447700900205");
    assert_eq!(refused_by(&r).as_deref(), Some("2"));
    assert_eq!(up.seen().len(), 1 + 2 + 4 + 2);
    envoy.assert_vm_healthy();
}

/// Redis, the rate-limit service counting in it (tests/fixtures'
/// limits), an upstream, and an Envoy calling the service (failure mode
/// deny, 500 ms).
struct Stack {
    /// Kept for the test's length: the service counts in it.
    _redis: Redis,
    rls: RateLimitService,
    up: Upstream,
    envoy: harness::Envoy,
}

impl Stack {
    fn start() -> Stack {
        let redis = Redis::start();
        let rls = RateLimitService::start(&test_limits(), Some(&redis.url()));
        let up = Upstream::start();
        let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
            .grpc_cluster("ratelimit", rls.grpc_port)
            .start();
        Stack {
            _redis: redis,
            rls,
            up,
            envoy,
        }
    }
}

#[test]
fn a_lease_admits_exactly_the_limit_in_four_calls() {
    // 10 a day per tenant, leased 4 at a time, counted in Redis: calls for
    // 4, 4, then 2 (what the service said remained), then 1 that is over.
    let stack = Stack::start();
    let (rls, up, envoy) = (&stack.rls, &stack.up, &stack.envoy);
    let req = || Req::get("/leased/x").header("x-tenant", "acme");
    let statuses: Vec<u16> = (0..14).map(|_| envoy.request(req()).status).collect();
    assert_eq!(
        statuses,
        [vec![200; 10], vec![429; 4]].concat(),
        "exactly the limit passes"
    );
    assert_eq!(
        rls.stats()["requests"].as_u64().unwrap(),
        4,
        "4 calls for 10 admitted and 4 refused"
    );
    assert_eq!(up.seen().len(), 10);
    // Another tenant has its own count and lease.
    assert_eq!(
        envoy
            .request(Req::get("/leased/x").header("x-tenant", "globex"))
            .status,
        200
    );
}

#[test]
fn a_burst_of_side_by_side_requests_asks_for_one_lease_and_uses_its_hits() {
    // 14 requests at once on one worker, the tenant's 10 a day leased 4 at
    // a time. One of them asks for the lease and the others for a hit
    // each, so the burst and the requests after it admit the limit, less
    // at most the lease's 3 unused hits if the service counts the lease
    // after the single hits; never more. (When each asked for 4, the
    // service counted 4, 8, then refused, and the refusal kept the worker
    // from using the 6 hits it held: 2 of 20 passed.)
    let stack = Stack::start();
    let (up, envoy) = (&stack.up, &stack.envoy);
    let req = || Req::get("/leased/x").header("x-tenant", "hooli");
    let burst: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..14)
            .map(|_| s.spawn(|| envoy.request(req()).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after: Vec<u16> = (0..6).map(|_| envoy.request(req()).status).collect();
    let statuses: Vec<u16> = burst.iter().chain(&after).copied().collect();
    assert!(
        statuses.iter().all(|s| [200, 429].contains(s)),
        "{statuses:?}"
    );
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (7..=10).contains(&passed),
        "{passed} of 20 passed: {burst:?} then {after:?}"
    );
    assert_eq!(up.seen().len(), passed);
}

#[test]
fn leases_of_two_envoys_never_admit_more_than_the_limit() {
    // Each instance leases 4 of the tenant's 10 hits a day. Hits one holds
    // are not the other's: fewer than 10 may pass (8 here), never more.
    let redis = Redis::start();
    let rls = RateLimitService::start(&test_limits(), Some(&redis.url()));
    let up = Upstream::start();
    let start = || {
        EnvoyBuilder::new(config("deny", 500), up.port)
            .grpc_cluster("ratelimit", rls.grpc_port)
            .start()
    };
    let (a, b) = (start(), start());
    let req = || Req::get("/leased/x").header("x-tenant", "initech");
    let mut passed = 0;
    for _ in 0..10 {
        for e in [&a, &b] {
            if e.request(req()).status == 200 {
                passed += 1;
            }
        }
    }
    assert_eq!(
        passed, 8,
        "two leases of 4; the next asks are over the limit"
    );
    assert_eq!(up.seen().len(), 8);
}

#[test]
fn two_envoys_with_one_service_and_redis_share_the_limit() {
    let redis = Redis::start();
    let rls_a = RateLimitService::start(&test_limits(), Some(&redis.url()));
    let rls_b = RateLimitService::start(&test_limits(), Some(&redis.url()));
    let up = Upstream::start();
    let a = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls_a.grpc_port)
        .start();
    let b = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls_b.grpc_port)
        .start();
    let req = || Req::get("/user/me").header("x-user", "alice");
    assert_eq!(a.request(req()).status, 200);
    assert_eq!(b.request(req()).status, 200);
    let r = a.request(req());
    assert_eq!(
        (r.status, r.reason()),
        (429, Some("rate_limited")),
        "third request across two Envoys"
    );
    let r = b.request(req());
    assert_eq!(r.status, 429);
}

#[test]
fn service_down_gives_503_under_deny_and_200_under_allow_within_the_timeout() {
    let dead = free_port(); // nothing listens here
    let up = Upstream::start();
    let deny = EnvoyBuilder::new(config("deny", 300), up.port)
        .grpc_cluster("ratelimit", dead)
        .start();
    let allow = EnvoyBuilder::new(config("allow", 300), up.port)
        .grpc_cluster("ratelimit", dead)
        .start();
    let t = Instant::now();
    let r = deny.request(from_ip(Req::get("/api/x"), "192.0.2.20"));
    assert_eq!(
        (r.status, r.reason()),
        (503, Some("ratelimit_unavailable")),
        "{}",
        r.text()
    );
    let r = allow.request(from_ip(Req::get("/api/x"), "192.0.2.20"));
    assert_eq!(r.status, 200, "{}", r.text());
    // Both answered by the failure mode, not left hanging: a call that
    // never timed out would hold the request until the client's 20 s read
    // timeout. (10 s, not the 300 ms timeouts: a loaded machine is slow.)
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "answered within the timeout: {:?}",
        t.elapsed()
    );
    assert_eq!(up.seen().len(), 1);
    // Refused at once: the log names the status, and no timeout.
    deny.wait_log("rate-limit service failed", 1, 10);
    let log = deny.log();
    let line = log
        .lines()
        .find(|l| l.contains("rate-limit service failed"))
        .unwrap();
    assert!(line.contains("grpc status 14 UNAVAILABLE"), "{line}");
    assert!(!line.contains("timeout_ms"), "{line}");
    // a service that was up and is stopped
    let mut rls = RateLimitService::start(&test_limits(), None);
    let deny2 = EnvoyBuilder::new(config("deny", 300), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    assert_eq!(
        deny2
            .request(from_ip(Req::get("/api/x"), "192.0.2.21"))
            .status,
        200
    );
    rls.service.stop();
    let r = deny2.request(from_ip(Req::get("/api/x"), "192.0.2.21"));
    assert_eq!((r.status, r.reason()), (503, Some("ratelimit_unavailable")));
}

/// A service that accepts the connection and never answers: the call
/// ends at `timeout_ms`, by the failure mode, and the log says it was the
/// timeout (not only a gRPC status number).
#[test]
fn a_silent_service_times_out_and_the_log_says_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Holds every connection open, reading nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            match c {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 300), up.port)
        .grpc_cluster("ratelimit", port)
        .start();
    let t = Instant::now();
    let r = envoy.request(from_ip(Req::get("/api/x"), "192.0.2.22"));
    assert_eq!(
        (r.status, r.reason()),
        (503, Some("ratelimit_unavailable")),
        "{}",
        r.text()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    envoy.wait_log("rate-limit service failed", 1, 10);
    let log = envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("rate-limit service failed"))
        .unwrap();
    assert!(
        line.contains("no answer within timeout_ms (300 ms)"),
        "{line}"
    );
}

#[test]
fn over_limit_cache_spares_the_service() {
    let rls = RateLimitService::start(&test_limits(), None);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    // an hourly limit; the service started clear of an hour boundary
    // (`RateLimitService::start`), so its window holds for the test
    let req = || Req::get("/user/me").header("x-user", "bob");
    for _ in 0..2 {
        assert_eq!(envoy.request(req()).status, 200);
    }
    assert_eq!(envoy.request(req()).status, 429);
    let calls = rls.stats()["requests"].as_u64().unwrap();
    assert_eq!(calls, 3);
    for _ in 0..20 {
        let r = envoy.request(req());
        assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
        assert!(r.header("retry-after").is_some());
        // SPEC §4: the cached 429 names the limit like the first one, and
        // carries the other rate-limit headers; the reset is the wait.
        assert!(r.header("x-ratelimit-limit").is_some(), "{:?}", r.headers);
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some("0"),
            "{:?}",
            r.headers
        );
        assert!(
            r.header("x-ratelimit-reset").is_some()
                && r.header("x-ratelimit-reset") == r.header("retry-after"),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(
        rls.stats()["requests"].as_u64().unwrap(),
        calls,
        "no further calls while over the limit"
    );
}

#[test]
fn local_limits_hold_across_two_workers() {
    let up = Upstream::start();
    let cfg = config("deny", 500);
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .grpc_cluster("ratelimit", free_port())
        .concurrency(2)
        .start();
    // Separate connections, until both workers have served some (the
    // kernel spreads them; Envoy counts each worker's).
    let worker = |n: u8| {
        envoy
            .stat(&format!(
                "listener.127.0.0.1_{}.worker_{n}.downstream_cx_total",
                envoy.port
            ))
            .unwrap_or(0)
    };
    let mut statuses = Vec::new();
    while statuses.len() < 12 || (worker(0) == 0 || worker(1) == 0) && statuses.len() < 200 {
        statuses.push(
            envoy
                .request(from_ip(Req::get("/local/x"), "192.0.2.40"))
                .status,
        );
    }
    assert!(
        worker(0) > 0 && worker(1) > 0,
        "both workers took connections: {} and {}",
        worker(0),
        worker(1)
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        statuses.len() - 5,
        "{statuses:?}"
    );
}

#[test]
fn a_burst_and_a_sustained_limit_on_one_descriptor_keep_their_own_counts() {
    // "2 a minute and 100 an hour per client": before each rule had its own
    // bucket, the hourly rule drained the per-minute one and the second
    // request was refused.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", free_port())
        .start();
    for i in 0..2 {
        let r = envoy.request(from_ip(Req::get("/otp/send"), "192.0.2.50"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = envoy.request(from_ip(Req::get("/otp/send"), "192.0.2.50"));
    assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
    assert_eq!(
        r.header("x-ratelimit-limit"),
        Some("2"),
        "the burst rule refused"
    );
    assert_eq!(
        envoy
            .request(from_ip(Req::get("/otp/send"), "192.0.2.51"))
            .status,
        200,
        "another client has its own buckets"
    );
    assert_eq!(up.seen().len(), 3);
    envoy.assert_vm_healthy();
}

#[test]
fn a_service_whose_replay_rule_lets_a_jti_through_twice_is_a_failure_not_silent_replays() {
    // The service's YAML forgot the `jti` rule (it answers OK with no limit
    // for the replay descriptor and counts nothing), or limits it to 5 a
    // minute (a 60-second token would pass five times): every replay, or
    // four of them, would pass. appguard treats that as the service
    // failing, and says why.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let client_ip =
        "  - key: client_ip\n    rate_limit:\n      unit: hour\n      requests_per_unit: 3\n";
    for (i, jti_rule) in [
        "",
        "  - key: jti\n    rate_limit:\n      unit: minute\n      requests_per_unit: 5\n",
    ]
    .into_iter()
    .enumerate()
    {
        let yaml = dir.join(format!("ratelimit-{i}.yaml"));
        std::fs::write(
            &yaml,
            format!("domain: appguard\ndescriptors:\n{client_ip}{jti_rule}"),
        )
        .unwrap();
        let rls = RateLimitService::start(&yaml, None);
        let up = Upstream::start();
        let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
            .grpc_cluster("ratelimit", rls.grpc_port)
            .start();
        let t = hs256(&claims(60, json!({"jti": format!("no-rule-{i}")})));
        for _ in 0..2 {
            let r = envoy.request(Req::get("/once").header("x-token", &t));
            assert_eq!(
                (r.status, r.reason()),
                (503, Some("ratelimit_unavailable")),
                "{jti_rule}: {}",
                r.text()
            );
        }
        assert!(up.seen().is_empty(), "nothing passed unprotected");
        assert!(
            envoy.log().contains(
                "limit for the replay descriptor (replay.scope: service) is missing, above 1"
            ),
            "the log names the cause"
        );
        envoy.assert_vm_healthy();
    }
}

#[test]
fn a_rolling_jti_rule_holds_a_token_for_an_hour_from_its_first_use() {
    // The shipped envoy/ratelimit.yaml counts `jti`s in a rolling hour
    // (`rolling: true`): appguard takes its answer as a replay rule (1 per
    // hour), and Redis keeps each `jti` an hour from its first use, not to
    // the end of the epoch hour, which a token could outlive.
    let redis = Redis::start();
    let rls = RateLimitService::start(
        &harness::repo_root().join("envoy/ratelimit.yaml"),
        Some(&redis.url()),
    );
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    let t = hs256(&claims(60, json!({"jti": "rolling-1"})));
    let r = envoy.request(Req::get("/once").header("x-token", &t));
    assert_eq!(r.status, 200, "{}", r.text());
    let keys = redis.cli(&["--raw", "KEYS", "*jti*"]);
    let key = keys.lines().next().unwrap_or_default().to_owned();
    assert!(
        key.ends_with("_hour_rolling") && keys.lines().count() == 1,
        "{keys}"
    );
    let ttl: i64 = redis.cli(&["TTL", &key]).parse().unwrap();
    assert!(ttl > 3590 && ttl <= 3600, "ttl {ttl}");
    // As if the first use was 59 minutes ago: the replay is refused, and
    // does not move the end of the window.
    assert_eq!(redis.cli(&["EXPIRE", &key, "60"]), "1");
    let r = envoy.request(Req::get("/once").header("x-token", &t));
    assert_eq!(
        (r.status, r.reason()),
        (401, Some("token_replayed")),
        "{}",
        r.text()
    );
    let ttl: i64 = redis.cli(&["TTL", &key]).parse().unwrap();
    assert!((0..=60).contains(&ttl), "a replay moved the end: ttl {ttl}");
    envoy.assert_vm_healthy();
}

#[test]
fn a_jti_replayed_through_another_instance_is_refused() {
    let redis = Redis::start();
    let rls = RateLimitService::start(&test_limits(), Some(&redis.url()));
    let up = Upstream::start();
    let a = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    let b = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    let t = hs256(&claims(60, json!({"jti": "once-only-1"})));
    let r = a.request(Req::get("/once").header("x-token", &t));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = b.request(Req::get("/once").header("x-token", &t));
    assert_eq!(
        (r.status, r.reason()),
        (401, Some("token_replayed")),
        "{}",
        r.text()
    );
    let t2 = hs256(&claims(60, json!({"jti": "once-only-2"})));
    assert_eq!(
        b.request(Req::get("/once").header("x-token", &t2)).status,
        200
    );
}

#[test]
fn with_the_service_down_under_allow_a_service_replay_is_refused_in_the_instance() {
    // `failure_mode: allow` lets requests through without the shared
    // limits while the service is down, but a captured token must not be
    // good for any number of uses meanwhile: the instance's replay table
    // takes over from the service's `jti` rule.
    let rls = RateLimitService::start(&test_limits(), None);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("allow", 300), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .concurrency(2)
        .start();
    let t = hs256(&claims(60, json!({"jti": "down-1"})));
    let r = envoy.request(Req::get("/once").header("x-token", &t));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-appguard-degraded"), None);
    drop(rls);
    let t2 = hs256(&claims(60, json!({"jti": "down-2"})));
    let r = envoy.request(Req::get("/once").header("x-token", &t2));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last().header("x-appguard-degraded"),
        Some("ratelimit_unavailable")
    );
    for _ in 0..3 {
        // New connections, so that both workers see it.
        let r = envoy.request(
            Req::get("/once")
                .header("x-token", &t2)
                .header("connection", "close"),
        );
        assert_eq!(
            (r.status, r.reason()),
            (401, Some("token_replayed")),
            "{}",
            r.text()
        );
    }
    envoy.assert_vm_healthy();
}

#[test]
fn a_rate_limit_cluster_without_hosts_fails_by_the_failure_mode_and_says_so() {
    // The cluster is defined, but has no host to send to (DNS that does not
    // resolve, an EDS cluster not fed yet): not a missing cluster.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
        .cluster_without_hosts("ratelimit", true)
        .start();
    for _ in 0..3 {
        let r = envoy.request(from_ip(Req::get("/api/x"), "192.0.2.79"));
        assert_eq!(
            (r.status, r.reason()),
            (503, Some("ratelimit_unavailable")),
            "{}",
            r.text()
        );
    }
    // The log says what to look at: the cluster's hosts, not whether it
    // exists.
    let log = envoy.log();
    assert!(
        log.contains(
            "cannot call the rate-limit service: Envoy refused to dispatch it to cluster \"ratelimit\""
        ),
        "{log}"
    );
    assert!(log.contains("has that cluster a host to send to"), "{log}");
    assert!(!log.contains("is that cluster defined"), "{log}");
    envoy.assert_vm_healthy();
}

#[test]
fn a_rate_limit_cluster_envoy_does_not_have_fails_by_the_failure_mode_without_a_crash() {
    // `rate_limit_service.cluster` names no cluster of this Envoy (a typo,
    // or a cluster removed by CDS): Envoy refuses the gRPC call. Every
    // request that needs the service then takes the failure mode, and the
    // VM keeps running.
    let up = Upstream::start();
    for (mode, status) in [("deny", 503), ("allow", 200)] {
        let envoy = EnvoyBuilder::new(config(mode, 500), up.port).start();
        for _ in 0..3 {
            let r = envoy.request(from_ip(Req::get("/api/x"), "192.0.2.77"));
            assert_eq!(r.status, status, "{mode}: {}", r.text());
            if status == 503 {
                assert_eq!(r.reason(), Some("ratelimit_unavailable"));
            }
        }
        // Refused at once by Envoy, not a call that timed out; the log
        // names the cluster and asks whether it is defined.
        let log = envoy.log();
        assert!(
            log.contains(
                "cannot call the rate-limit service: Envoy refused to dispatch it to cluster \"ratelimit\""
            ),
            "{log}"
        );
        assert!(log.contains("is that cluster defined"), "{log}");
        assert!(!log.contains("has that cluster a host"), "{log}");
        envoy.assert_vm_healthy();
    }
    // Every request fails the same way: the warning is written at most 10
    // times a second (per worker), not once per request.
    let envoy = EnvoyBuilder::new(config("allow", 500), up.port).start();
    let start = std::time::Instant::now();
    for _ in 0..60 {
        let r = envoy.request(from_ip(Req::get("/api/x"), "192.0.2.78"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seconds = start.elapsed().as_secs() + 1;
    let log = envoy.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("cannot call the rate-limit service"))
        .count() as u64;
    assert!(
        (1..=10 * (seconds + 1)).contains(&lines),
        "{lines} warning lines in about {seconds} s"
    );
    assert!(lines < 60, "{lines} warning lines for 60 requests");
    // The next line written says how many were left out.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = envoy.request(from_ip(Req::get("/api/x"), "192.0.2.78"));
    assert_eq!(r.status, 200, "{}", r.text());
    let log = envoy.log();
    assert!(log.contains("warning lines left out"), "{log}");
}

#[test]
fn a_client_that_leaves_while_the_service_is_asked_does_not_use_up_its_jti() {
    // `replay.scope: local` records the `jti` before the rate-limit call. A
    // client that leaves while the call is out never reached the upstream:
    // its token must still be good for its retry. The service here accepts
    // connections and never answers, so the request waits out the timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let up = Upstream::start();
    let cfg = json!({
        "client_ip": {"xff_trusted_hops": 1},
        "rate_limit_service": {"cluster": "ratelimit", "domain": "appguard", "timeout_ms": 1500, "failure_mode": "allow"},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}],
                    "replay": {"claim": "jti", "scope": "local"}}],
        "routes": [{"name": "api", "match": {"prefix": "/api"}, "tokens": ["t"],
                    "rate_limits": [{"entries": [{"type": "route"}]}]}]
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .grpc_cluster("ratelimit", silent_port)
        .access_log_format(&log, "%REQ(:PATH)% %REQ(X-TOKEN)%\n")
        .start();
    let token = hs256(&claims(60, json!({"jti": "left-early"})));
    {
        use std::io::Write as _;
        let mut c = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
        write!(
            c,
            "GET /api/x HTTP/1.1\r\nhost: localhost\r\nx-token: {token}\r\nx-forwarded-for: 192.0.2.30\r\n\r\n"
        )
        .unwrap();
        // Until the request is held for the service: its `jti` recorded,
        // the call out (Envoy counts the gRPC request when it is sent).
        let deadline = Instant::now() + Duration::from_secs(10);
        while envoy
            .stat("cluster.ratelimit.upstream_rq_total")
            .unwrap_or(0)
            < 1
        {
            assert!(Instant::now() < deadline, "the call never went out");
            std::thread::sleep(Duration::from_millis(20));
        }
        // dropped: the client leaves while the call is out
    }
    // Until Envoy has let go of the stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy.stat("http.ingress.downstream_rq_active").unwrap_or(1) > 0 {
        assert!(Instant::now() < deadline, "the stream is still active");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its access log line, written from the headers as they were while it
    // waited, holds no token: taken out before the call, as the API key.
    harness::wait_until(15, "the abandoned request's log line", || {
        std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text, "/api/x -\n", "Envoy's access log");
    let r = envoy.request(from_ip(
        Req::get("/api/x").header("x-token", &token),
        "192.0.2.30",
    ));
    assert_eq!(r.status, 200, "the retry, after the timeout: {}", r.text());
    assert_eq!(up.seen().len(), 1, "only the retry went upstream");
    let r = envoy.request(from_ip(
        Req::get("/api/x").header("x-token", &token),
        "192.0.2.30",
    ));
    assert_eq!((r.status, r.reason()), (401, Some("token_replayed")));
    drop(silent);
}

/// A TCP proxy to `port` that passes the client's
/// bytes at once and holds the server's for `delay` (the service counts a
/// call as soon as it reads it; its answer comes late).
fn slow_answers(port: u16, delay: Duration) -> u16 {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut down) = conn else { return };
            let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return;
            };
            let (mut down2, mut up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = down.read(&mut buf) {
                    if n == 0 || up.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = up2.read(&mut buf) {
                    if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            });
            std::thread::spawn(move || {
                for (at, bytes) in rx {
                    let due = at + delay;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if down2.write_all(&bytes).is_err() {
                        break;
                    }
                }
            });
        }
    });
    proxy_port
}

/// Sends `GET path` with `headers` over a connection of its own, waits
/// until the service has been called `calls` times in all (this request's
/// call among them), then resets the connection while the answer is held
/// back (see [`slow_answers`]), and waits for Envoy to end the stream.
fn reset_while_asking(
    envoy: &harness::Envoy,
    rls: &RateLimitService,
    path: &str,
    headers: &[(&str, &str)],
    calls: u64,
) {
    use std::io::Write as _;
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut c = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    harness::wait_until(10, "the call to go out", || {
        rls.stats()["requests"].as_u64().unwrap() >= calls
    });
    drop(c); // the client resets it while the call is out
    harness::wait_until(10, "the stream to end", || {
        envoy.stat("http.ingress.downstream_rq_active").unwrap_or(1) == 0
    });
}

#[test]
fn requests_reset_while_asking_do_not_each_spend_a_lease() {
    // README (Leases): "a client resetting its requests must not have a
    // whole lease counted for each". The tenant's limit is 10 a day, leased
    // 4 at a time. 4 requests pass on one lease (the service said 6
    // remain); then the client sends 2 requests and resets each while its
    // call is out. The first asks for a lease (4); while it holds, the
    // second asks for one hit: 9 are counted, and the next request passes.
    // (Each asked for what remained before: all 10 were spent.)
    let redis = Redis::start();
    let rls = RateLimitService::start(&test_limits(), Some(&redis.url()));
    let slow = slow_answers(rls.grpc_port, Duration::from_millis(400));
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 3000), up.port)
        .grpc_cluster("ratelimit", slow)
        .start();
    let req = || Req::get("/leased/x").header("x-tenant", "umbrella");
    for i in 0..4 {
        assert_eq!(envoy.request(req()).status, 200, "request {i}");
    }
    assert_eq!(rls.stats()["requests"].as_u64().unwrap(), 1, "one call");
    for i in 0..2u64 {
        reset_while_asking(
            &envoy,
            &rls,
            "/leased/x",
            &[("x-tenant", "umbrella")],
            2 + i,
        );
    }
    assert_eq!(up.seen().len(), 4, "the reset requests never went upstream");
    let r = envoy.request(req());
    assert_eq!(
        r.status,
        200,
        "2 requests reset while asking spent the rest of the tenant's 10 a day: {:?}",
        r.reason()
    );
    envoy.assert_vm_healthy();
}

#[test]
fn one_request_reset_while_asking_leaves_the_others_their_leases() {
    // A busy descriptor (a fleet's 1,000 a day, leased 40 at a time): one
    // client resets its request while its call is out (a phone losing its
    // network). The requests after it, other clients' too, went on to make
    // a call each for the rest of the day; now each reset quarters the
    // leases while it holds (README, Leases).
    let redis = Redis::start();
    let rls = RateLimitService::start(&test_limits(), Some(&redis.url()));
    let slow = slow_answers(rls.grpc_port, Duration::from_millis(100));
    let up = Upstream::start();
    let cfg = json!({
        "rate_limit_service": {"cluster": "ratelimit", "domain": "appguard", "timeout_ms": 3000, "failure_mode": "deny"},
        "routes": [{"name": "fleet", "match": {"prefix": "/fleet"},
                    "rate_limits": [{"entries": [{"type": "header", "name": "x-fleet", "key": "fleet"}], "lease": 40}]}]
    });
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .grpc_cluster("ratelimit", slow)
        .start();
    reset_while_asking(&envoy, &rls, "/fleet/x", &[("x-fleet", "f1")], 1);
    for i in 0..60 {
        let r = envoy.request(Req::get("/fleet/x").header("x-fleet", "f1"));
        assert_eq!(r.status, 200, "request {i}: {:?}", r.reason());
    }
    let calls = rls.stats()["requests"].as_u64().unwrap();
    // One for the reset request, one for a single hit (nothing known of
    // what remains until an answer), then leases of 10: 8 in all.
    assert!(
        calls <= 10,
        "{calls} calls for 61 requests, one of them reset while asking"
    );
    envoy.assert_vm_healthy();
}

#[test]
fn a_per_client_local_limit_bounds_requests_reset_while_asking() {
    // README (`local`): "a client over its own per-IP limit cannot use up a
    // number's or a key's limit for its owner". The per-client limit is 1 a
    // minute, the shared (tenant's) service limit 10 a day. A request whose
    // client resets it while its call is out keeps its local token: the
    // service counted the shared hit. (It was given back, and one client
    // spent the tenant's whole limit, 10 times its own.)
    let redis = Redis::start();
    let rls = RateLimitService::start(&test_limits(), Some(&redis.url()));
    let slow = slow_answers(rls.grpc_port, Duration::from_millis(400));
    let up = Upstream::start();
    let cfg = json!({
        "client_ip": {"xff_trusted_hops": 1},
        "rate_limit_service": {"cluster": "ratelimit", "domain": "appguard", "timeout_ms": 3000, "failure_mode": "deny"},
        "routes": [{"name": "shared", "match": {"prefix": "/shared"},
                    "rate_limits": [
                        {"name": "per-client", "entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "minute"}},
                        {"name": "per-tenant", "entries": [{"type": "header", "name": "x-tenant", "key": "tenant"}]}]}]
    });
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .grpc_cluster("ratelimit", slow)
        .start();
    reset_while_asking(
        &envoy,
        &rls,
        "/shared/x",
        &[("x-tenant", "acme"), ("x-forwarded-for", "192.0.2.50")],
        1,
    );
    // Its token is spent: the client's next requests are refused locally,
    // with no call to the service.
    for i in 0..9 {
        let r = envoy.request(
            Req::get("/shared/x")
                .header("x-tenant", "acme")
                .header("x-forwarded-for", "192.0.2.50"),
        );
        assert_eq!((r.status, r.reason()), (429, Some("rate_limited")), "{i}");
    }
    assert_eq!(rls.stats()["requests"].as_u64().unwrap(), 1);
    assert_eq!(up.seen().len(), 0);
    let victim = envoy.request(
        Req::get("/shared/x")
            .header("x-tenant", "acme")
            .header("x-forwarded-for", "198.51.100.60"),
    );
    assert_eq!(victim.status, 200, "{:?}", victim.reason());
    envoy.assert_vm_healthy();
}

/// appguard-ratelimit's `--shadow-mode` (envoyproxy/ratelimit's
/// `SHADOW_MODE=true`) counts the `jti` and answers its descriptor
/// `OVER_LIMIT` on a replay, rewriting only the overall code to OK. The
/// replay is then accepted, although the answer says the `jti` was used
/// (README: "which appguard cannot tell from a first use").
#[test]
fn a_replay_the_service_reports_in_global_shadow_mode_is_refused() {
    let rls = RateLimitService::start_with(&test_limits(), None, &["--shadow-mode"]);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("deny", 500), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    let t = hs256(&claims(60, json!({"jti": "shadowed-1"})));
    let r = envoy.request(Req::get("/once").header("x-token", &t));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = envoy.request(Req::get("/once").header("x-token", &t));
    assert_eq!(
        (r.status, r.reason()),
        (401, Some("token_replayed")),
        "the copy went upstream: {} (upstream saw {} requests)",
        r.text(),
        up.seen().len()
    );
}

/// A rate-limit service that asks for request headers
/// (`request_headers_to_add`: a tier, a quota left) gets them set on the
/// upstream request, and a client's trailer copy of one does not reach
/// the upstream beside it: an upstream merging trailers into the headers
/// would read the client's value. The names come only with each answer,
/// so the cut must also cover trailers that came while the call was out
/// (`waiting`: the service answers after the whole request came, and
/// Envoy hands the trailers on before) as well as those after the answer
/// (the body sent slowly).
#[test]
fn a_header_the_rate_limit_service_adds_cannot_be_sent_as_a_trailer() {
    use harness::scripted_rls::ScriptedRls;
    let cfg = json!({
        "rate_limit_service": {"cluster": "ratelimit", "domain": "appguard", "timeout_ms": 3000, "failure_mode": "deny"},
        "routes": [{"name": "api", "match": {"prefix": "/api"},
                    "rate_limits": [{"entries": [{"type": "route"}]}]}]
    });
    for waiting in [false, true] {
        let delay = Duration::from_millis(if waiting { 600 } else { 0 });
        let rls = ScriptedRls::start(&[("x-tier", "gold")], delay);
        let up = Upstream::start();
        let builder = EnvoyBuilder::new(cfg.clone(), up.port)
            .grpc_cluster("ratelimit", rls.port)
            .trailers()
            .without_buffer_filter();
        // Envoy hands the trailers on while the headers wait only with
        // `allow_on_headers_stop_iteration`; by default they come after.
        let builder = if waiting {
            builder.allow_on_headers_stop_iteration()
        } else {
            builder
        };
        let envoy = builder.start();
        let req = Req::post_json("/api/orders", r#"{"item":1}"#)
            .trailer("x-checksum", "c1")
            .trailer("x-tier", "platinum");
        let req = if waiting {
            req
        } else {
            req.chunked_in(2, Duration::from_millis(500))
        };
        let r = envoy.request(req);
        assert_eq!(r.status, 200, "waiting={waiting}: {}", r.text());
        let seen = up.last();
        assert_eq!(seen.header("x-tier"), Some("gold"), "waiting={waiting}");
        assert_eq!(
            seen.trailers,
            vec![("x-checksum".to_string(), "c1".to_string())],
            "waiting={waiting}: the client's trailer copy of the service's header went upstream"
        );
        envoy.assert_vm_healthy();
    }
}
