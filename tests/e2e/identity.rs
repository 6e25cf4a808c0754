//! Platforms, apps and API keys through a real Envoy, with the shipped
//! three-platform example (examples/three-platform.json): separate Android,
//! iOS and web flows that leaked keys and tokens cannot cross.

use crate::harness;

use harness::http::Req;
use harness::services::RateLimitService;
use harness::tokens::{claims, hs256_raw, SECRET};
use harness::upstream::Upstream;
use harness::{repo_root, wait_until, Envoy, EnvoyBuilder};
use serde_json::{json, Value};

fn example() -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples/three-platform.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The example's demo App Check secret (examples/three-platform.json).
fn demo_secret(cfg: &Value) -> Vec<u8> {
    use base64::Engine;
    let b64 = cfg["tokens"][0]["keys"][0]["secret_base64"]
        .as_str()
        .unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn app_check(cfg: &Value, sub: &str) -> String {
    hs256_raw(
        &demo_secret(cfg),
        &json!({"alg": "HS256", "typ": "JWT", "kid": "demo"}),
        &claims(
            300,
            json!({"iss": "https://firebaseappcheck.googleapis.com/123456789", "aud": ["projects/123456789"], "sub": sub}),
        ),
    )
}

const ANDROID_SUB: &str = "1:123456789:android:0a1b2c3d4e5f";
const IOS_SUB: &str = "1:123456789:ios:6f5e4d3c2b1a";
const WEB_SUB: &str = "1:123456789:web:a1b2c3d4e5f6";
const CERT: &str = "14:6d:e9:83:c5:73:06:50:d8:ee:b9:95:2f:34:fc:64:16:a0:83:42:e6:1d:be:a8:8a:04:96:b2:3f:cf:44:e5";

/// The example with its rate-limit service (envoy/ratelimit.yaml), as
/// `make run` starts it.
fn start() -> (Upstream, Envoy, Value) {
    let cfg = example();
    let rls = RateLimitService::start(&repo_root().join("envoy/ratelimit.yaml"), None);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg.clone(), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    RLS.with(|r| r.borrow_mut().push(rls));
    (up, envoy, cfg)
}

/// One client holding a genuine token, from one address, cannot spend the
/// Android app's per-key limit (600 a minute, shared by every install)
/// and lock every other user out: the example's per-IP limit comes first,
/// and what it refuses never reaches the key's count. (The clients are
/// told apart by `X-Forwarded-For` here, one trusted hop: the test's
/// connections all come from 127.0.0.1.)
#[test]
fn one_client_cannot_spend_the_apps_key_limit_for_every_install() {
    let mut cfg = example();
    cfg["client_ip"] = json!({"xff_trusted_hops": 1});
    let rls = RateLimitService::start(&repo_root().join("envoy/ratelimit.yaml"), None);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg.clone(), up.port)
        .grpc_cluster("ratelimit", rls.grpc_port)
        .start();
    let token = app_check(&cfg, ANDROID_SUB);
    // The service counts per-IP and per-key limits in minutes aligned on
    // the epoch: 610 requests that straddle one would see a fresh count.
    harness::avoid_window_edge(60, 25);
    let get = |ip: &str| {
        envoy.request(
            android(Req::get("/v1/mobile/feed"))
                .header("x-firebase-appcheck", &token)
                .header("x-forwarded-for", ip),
        )
    };
    let mut statuses = Vec::with_capacity(610);
    let mut limits = std::collections::BTreeSet::new();
    let began = std::time::Instant::now();
    for _ in 0..610 {
        let r = get("192.0.2.66");
        statuses.push(r.status);
        if r.status == 429 {
            limits.insert(r.header("x-ratelimit-limit").unwrap_or("").to_owned());
        }
    }
    // The per-IP bucket holds 120 and refills one request every 500 ms
    // (exactly, not by windows): a loop that took D seconds may pass one
    // more request per whole refill, never more. Under a loaded CI host the
    // 610 requests can take longer than 500 ms.
    let refills = (began.elapsed().as_millis() as usize).div_ceil(500);
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(passed + refused, 610, "only 200 and 429: {statuses:?}");
    assert!(
        statuses[..120].iter().all(|s| *s == 200),
        "a full bucket passes the first 120: {statuses:?}"
    );
    assert!(
        (120..=120 + refills).contains(&passed),
        "{passed} passed; 120 + at most {refills} refilled"
    );
    assert_eq!(limits, ["120".to_owned()].into_iter().collect());
    let r = get("203.0.113.9");
    assert_eq!(r.status, 200, "another install: {}", r.text());
    // What the per-IP limit refused never reached the key's shared count.
    assert_eq!(
        rls.stats()["requests"],
        passed as u64 + 1,
        "{}",
        rls.stats()
    );
}

thread_local! {
    /// Keeps each test's rate-limit service alive until the test ends.
    static RLS: std::cell::RefCell<Vec<RateLimitService>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn android(req: Req) -> Req {
    req.header("x-api-key", "demo-android-key")
        .header("x-android-package", "com.example.shop")
        .header("x-android-cert", CERT)
}

#[test]
fn allowed_requests_carry_identity_headers_and_spoofed_copies_are_removed() {
    let (up, envoy, cfg) = start();
    let r = envoy.request(
        android(Req::get("/v1/mobile/profile"))
            .header("x-firebase-appcheck", &app_check(&cfg, ANDROID_SUB))
            .header("x-appguard-app", "spoofed")
            .header("x-appguard-key-id", "spoofed")
            .header("x-appguard-platform", "server"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    let ours: Vec<(&str, &str)> = seen
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-appguard-"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut ours_sorted = ours.clone();
    ours_sorted.sort();
    assert_eq!(
        ours_sorted,
        vec![
            ("x-appguard-app", "shop-android"),
            ("x-appguard-key-id", "android-2026"),
            ("x-appguard-platform", "android")
        ],
        "exactly appguard's identity headers, once each"
    );
    assert_eq!(
        seen.header("x-firebase-appcheck"),
        None,
        "token removed upstream"
    );
    // iOS and web flows
    let r = envoy.request(
        Req::get("/v1/mobile/orders")
            .header("x-api-key", "demo-ios-key")
            .header("x-ios-bundle-identifier", "com.example.shop")
            .header("x-firebase-appcheck", &app_check(&cfg, IOS_SUB)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-appguard-platform"), Some("ios"));
    let r = envoy.request(
        Req::get("/v1/web/cart")
            .header("x-api-key", "demo-web-key")
            .header("origin", "https://eu.shop.example.com")
            .header("x-firebase-appcheck", &app_check(&cfg, WEB_SUB)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-appguard-app"), Some("shop-web"));
}

#[test]
fn android_only_route_refuses_a_web_request_with_a_valid_web_key() {
    let (up, envoy, cfg) = start();
    let r = envoy.request(
        Req::get("/v1/mobile/profile")
            .header("x-api-key", "demo-web-key")
            .header("origin", "https://shop.example.com")
            .header("x-firebase-appcheck", &app_check(&cfg, WEB_SUB)),
    );
    assert_eq!(
        (r.status, r.reason()),
        (403, Some("platform_denied")),
        "{}",
        r.text()
    );
    // and the reverse: the Android key and token from a web page
    let r = envoy.request(
        android(Req::get("/v1/web/cart"))
            .header("origin", "https://shop.example.com")
            .header("x-firebase-appcheck", &app_check(&cfg, ANDROID_SUB)),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // The token names an Android app, which the web route does not take:
    // refused for that before the headers (Android ones beside a
    // browser's Origin, two platforms at once) are compared.
    assert_eq!(r.reason(), Some("platform_denied"));
    // Without the route in the way, the two platforms' headers are a
    // mismatch.
    let r = envoy.request(
        android(Req::get("/v1/catalog/items"))
            .header("origin", "https://shop.example.com")
            .header("x-firebase-appcheck", &app_check(&cfg, ANDROID_SUB)),
    );
    assert_eq!(
        (r.status, r.reason()),
        (403, Some("app_mismatch")),
        "{}",
        r.text()
    );
    assert!(up.seen().is_empty());
}

#[test]
fn android_key_with_another_package_is_refused() {
    let (up, envoy, _) = start();
    let r = envoy.request(
        Req::get("/v1/catalog/items")
            .header("x-api-key", "demo-android-key")
            .header("x-android-package", "com.example.shop")
            .header("x-android-cert", CERT),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // a package that is not registered at all
    let r = envoy.request(
        Req::get("/v1/catalog/items")
            .header("x-api-key", "demo-android-key")
            .header("x-android-package", "com.evil.clone")
            .header("x-android-cert", CERT),
    );
    assert_eq!((r.status, r.reason()), (403, Some("app_unknown")));
    // a registered app of another platform
    let r = envoy.request(
        Req::get("/v1/catalog/items")
            .header("x-api-key", "demo-android-key")
            .header("x-ios-bundle-identifier", "com.example.shop"),
    );
    assert_eq!((r.status, r.reason()), (403, Some("api_key_restricted")));
    // the right package re-signed with another certificate
    let r = envoy.request(
        Req::get("/v1/catalog/items")
            .header("x-api-key", "demo-android-key")
            .header("x-android-package", "com.example.shop")
            .header("x-android-cert", &"AB".repeat(32)),
    );
    assert_eq!((r.status, r.reason()), (403, Some("app_mismatch")));
    assert_eq!(up.seen().len(), 1);
}

#[test]
fn ios_token_with_android_headers_is_app_mismatch() {
    let (up, envoy, cfg) = start();
    let r = envoy.request(
        android(Req::get("/v1/mobile/profile"))
            .header("x-firebase-appcheck", &app_check(&cfg, IOS_SUB)),
    );
    assert_eq!(
        (r.status, r.reason()),
        (403, Some("app_mismatch")),
        "{}",
        r.text()
    );
    assert!(up.seen().is_empty());
}

#[test]
fn denied_country_is_refused() {
    let (up, envoy, _) = start();
    let r = envoy.request(
        Req::get("/v1/catalog/items")
            .header("x-api-key", "demo-web-key")
            .header("origin", "https://shop.example.com")
            .header("x-country-code", "KP"),
    );
    assert_eq!((r.status, r.reason()), (403, Some("country_denied")));
    let r = envoy.request(
        Req::get("/v1/catalog/items")
            .header("x-api-key", "demo-web-key")
            .header("origin", "https://shop.example.com")
            .header("x-country-code", "GB"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(up.seen().len(), 1);
    let _ = SECRET;
}

#[test]
fn country_required_refuses_a_request_without_a_country() {
    // Envoy's geoip filter sets the header only on a successful lookup: a
    // deny list alone lets an unknown country through, `country_required`
    // does not. With Envoy's header_mutation filter first (README, trust
    // boundaries), a client's own copy does not survive a failed lookup.
    let cfg = json!({
        "network": {"country_header": "x-country-code", "country_deny": ["KP"],
                    "country_required": true},
        "routes": [{"name": "open", "match": {"prefix": "/"}}]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg.clone(), up.port).start();
    for (label, req) in [
        ("no header", Req::get("/a")),
        ("empty", Req::get("/a").header("x-country-code", "")),
        ("a list", Req::get("/a").header("x-country-code", "GB,FR")),
        ("denied", Req::get("/a").header("x-country-code", "kp")),
    ] {
        let r = envoy.request(req);
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("country_denied")),
            "{label}: {}",
            envoy.log()
        );
    }
    let r = envoy.request(Req::get("/a").header("x-country-code", "gb"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.seen().len(), 1);

    let strip = json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": "x-country-code"}]}
        }
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port).filter_before(strip).start();
    let r = envoy.request(Req::get("/a").header("x-country-code", "GB"));
    assert_eq!(
        (r.status, r.reason()),
        (403, Some("country_denied")),
        "the client's copy reached appguard: {}",
        envoy.log()
    );
    assert!(up.seen().is_empty());
}

#[test]
fn with_forward_false_the_api_key_reaches_neither_upstream_nor_access_log() {
    const KEY: &str = "e2e-key-0123-secret-value";
    let cfg = |forward: bool| {
        json!({
            "default_action": "deny",
            "api_keys": {"query_param": "key", "forward": forward,
                         "keys": [{"id": "k1", "sha256": appguard::identity::hash_api_key(KEY)}]},
            "routes": [{"name": "keyed", "match": {"prefix": "/keyed"}, "api_key": "required"}]
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg(false), up.port)
        .access_log(&log)
        .start();
    let query = format!("/keyed/x?a=1&key={KEY}&b=%20two");
    let encoded = format!("/keyed/y?%6Bey={KEY}");
    for (req, path) in [
        (Req::get(&query), "/keyed/x?a=1&b=%20two"),
        (Req::get(&encoded), "/keyed/y"),
        (
            Req::get("/keyed/z?a=1").header("x-api-key", KEY),
            "/keyed/z?a=1",
        ),
        // The spelling CGI and PHP upstreams read as `x-api-key` too.
        (Req::get("/keyed/u").header("x_api_key", KEY), "/keyed/u"),
        // The array form PHP, Rails and Express's `qs` read as `key`.
        (
            Req::get(&format!("/keyed/t?key[]={KEY}&c=3")),
            "/keyed/t?c=3",
        ),
    ] {
        let r = envoy.request(req);
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = up.last();
        assert_eq!(seen.path, path);
        assert_eq!(seen.header("x-api-key"), None, "key header removed");
        assert_eq!(seen.header("x_api_key"), None, "key header removed");
        assert_eq!(seen.header("x-appguard-key-id"), Some("k1"));
    }
    // A cookie named like the parameter is a copy of the key to PHP's
    // `$_REQUEST`: it goes too, the other cookies stay.
    for (req, cookie) in [
        (
            Req::get("/keyed/c")
                .header("x-api-key", KEY)
                .header("cookie", &format!("a=1; key={KEY}; b=2")),
            Some("a=1; b=2"),
        ),
        (
            Req::get(&format!("/keyed/d?key={KEY}")).header("cookie", &format!("KEY={KEY}")),
            None,
        ),
    ] {
        let r = envoy.request(req);
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = up.last();
        assert_eq!(seen.header("cookie"), cookie);
        assert_eq!(seen.header("x-appguard-key-id"), Some("k1"));
    }
    // A wrong key is refused as before, and its path is logged without it.
    let r = envoy.request(Req::get("/keyed/w?key=not-the-key"));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_invalid")));
    // Two spellings of the key header with different keys: which one
    // would the upstream read?
    let r = envoy.request(
        Req::get("/keyed/v")
            .header("x-api-key", KEY)
            .header("x_api_key", "another-key"),
    );
    assert_eq!((r.status, r.reason()), (403, Some("api_key_invalid")));
    // The key, then another one in array form: an upstream that reads the
    // array would get a key appguard never checked.
    let r = envoy.request(Req::get(&format!("/keyed/s?key={KEY}&key[0]=another-key")));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_invalid")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 10 || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "/keyed/x?a=1&b=%20two",
            "/keyed/y",
            "/keyed/z?a=1",
            "/keyed/u",
            "/keyed/t?c=3",
            "/keyed/c",
            "/keyed/d",
            "/keyed/w",
            "/keyed/v",
            "/keyed/s"
        ],
        "Envoy's access log"
    );
    assert!(!text.contains(KEY));
    drop(envoy);

    // The default: the key goes on as sent (upstreams that still read it).
    let envoy = EnvoyBuilder::new(cfg(true), up.port).start();
    let r = envoy.request(Req::get(&query).header("x-api-key", KEY));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().path, query);
    assert_eq!(up.last().header("x-api-key"), Some(KEY));
}

/// A refused request goes no further, but Envoy's access log reads its
/// headers: the token headers are cut from it as from an allowed one. A
/// genuine token refused for another check (a wrong key, another app) was
/// not used up, and would be good for a replay by whoever reads the log.
#[test]
fn a_refused_requests_token_is_not_in_the_access_log() {
    const KEY: &str = "e2e-key-0123-secret-value";
    let secret = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SECRET);
    let cfg = json!({
        "default_action": "deny",
        "api_keys": {"keys": [{"id": "k1", "sha256": appguard::identity::hash_api_key(KEY)}]},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": secret}],
                    "replay": {"claim": "jti"}}],
        "routes": [{"name": "r", "match": {"prefix": "/r/"}, "tokens": ["t"], "api_key": "required"}]
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .access_log_format(&log, "%RESPONSE_CODE% %REQ(X-TOKEN)% %REQ(X_TOKEN)%\n")
        .start();
    let token = |jti: &str| harness::tokens::hs256(&claims(60, json!({"jti": jti})));
    let (t1, t2) = (token("j1"), token("j2"));
    let cases = [
        // a genuine token, a wrong key
        (
            Req::get("/r/a")
                .header("x-token", &t1)
                .header("x-api-key", "wrong"),
            403,
        ),
        // and no key at all, the token under another spelling
        (Req::get("/r/b").header("x_token", &t1), 403),
        // used once, then replayed
        (
            Req::get("/r/c")
                .header("x-token", &t2)
                .header("x-api-key", KEY),
            200,
        ),
        (
            Req::get("/r/d")
                .header("x-token", &t2)
                .header("x-api-key", KEY),
            401,
        ),
        // forged
        (
            Req::get("/r/e")
                .header("x-token", &format!("{t1}x"))
                .header("x-api-key", KEY),
            401,
        ),
    ];
    let n = cases.len();
    for (req, status) in cases {
        let r = envoy.request(req);
        assert_eq!(r.status, status, "{}", r.text());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= n || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["403 - -", "403 - -", "200 - -", "401 - -", "401 - -"],
        "Envoy's access log"
    );
    // The token that was refused for its key is still good: it was never
    // in the log to be taken.
    let r = envoy.request(
        Req::get("/r/f")
            .header("x-token", &t1)
            .header("x-api-key", KEY),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A client that leaves while appguard waits (here for the re-fetch of a
/// JWKS, for a new `kid`) still gets an access log line, written from the
/// request's headers as they are then: with `forward: false` the key must
/// already be out.
#[test]
fn a_request_abandoned_while_waiting_leaves_no_api_key_or_token_in_the_access_log() {
    use harness::upstream::Seen;
    use jwt_simple::prelude::ES256KeyPair;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    const KEY: &str = "e2e-abandoned-key-secret-value";
    let k1 = ES256KeyPair::generate().with_key_id("k1");
    let k2 = ES256KeyPair::generate().with_key_id("k2");
    let first = json!({"keys": [harness::tokens::es256_jwk(&k1, "k1")]}).to_string();
    let later = json!({"keys": [harness::tokens::es256_jwk(&k1, "k1"),
                                harness::tokens::es256_jwk(&k2, "k2")]})
    .to_string();
    let calls = Arc::new(AtomicUsize::new(0));
    let rotated = Arc::new(AtomicBool::new(false));
    let (c, rot) = (calls.clone(), rotated.clone());
    // Fetches answer at once with `k1` (however many a cold start sends)
    // until the test rotates; from then on a fetch takes 3 s and brings `k2`.
    let jwks = Upstream::with_handler(Arc::new(move |_s: &Seen| {
        c.fetch_add(1, Ordering::SeqCst);
        if !rot.load(Ordering::SeqCst) {
            return (200, vec![], first.clone().into_bytes());
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
        (200, vec![], later.clone().into_bytes())
    }));
    let cfg = json!({
        "default_action": "deny",
        "api_keys": {"query_param": "key", "forward": false,
                     "keys": [{"id": "k1", "sha256": appguard::identity::hash_api_key(KEY)}]},
        "tokens": [{"name": "remote", "from": [{"header": "x-token"}],
                    "remote_jwks": {"cluster": "jwks", "path": "/jwks.json", "timeout_ms": 5000}}],
        "routes": [{"name": "keyed", "match": {"prefix": "/keyed"}, "api_key": "required",
                    "tokens": ["remote"]}]
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .http_cluster("jwks", jwks.port)
        .access_log_format(&log, "%REQ(:PATH)% %REQ(X-TOKEN)%\n")
        .start();
    // Keys loaded: a `k1` token passes (and is logged without the key).
    let t1 = harness::tokens::es256_with(&k1, &claims(60, json!({})));
    wait_until(15, "keys loaded", || {
        envoy
            .request(Req::get(&format!("/keyed/ok?key={KEY}")).header("x-token", &t1))
            .status
            == 200
    });
    let t2 = harness::tokens::es256_with(&k2, &claims(60, json!({})));
    rotated.store(true, Ordering::SeqCst);
    let fetched = calls.load(Ordering::SeqCst);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    write!(
        conn,
        "GET /keyed/x?a=1&key={KEY} HTTP/1.1\r\nhost: api.example.com\r\nx-token: {t2}\r\n\r\n"
    )
    .unwrap();
    // The re-fetch is under way, the request held for it: leave.
    wait_until(15, "the re-fetch", || {
        calls.load(Ordering::SeqCst) > fetched
    });
    drop(conn);
    let lines = |text: &str| text.lines().filter(|l| l.starts_with("/keyed/x")).count();
    wait_until(15, "the abandoned request's log line", || {
        lines(&std::fs::read_to_string(&log).unwrap_or_default()) > 0
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains(KEY), "Envoy's access log: {text}");
    // Nor the token, which was never used and would still be good.
    assert!(!text.contains(&t2), "Envoy's access log: {text}");
    assert!(text.lines().any(|l| l == "/keyed/x?a=1 -"), "{text}");
    assert!(up.seen().iter().all(|s| !s.path.starts_with("/keyed/x")));
    envoy.assert_vm_healthy();
}
