//! The whole per-request decision, `policy::evaluate` then `evaluate_body`
//! and `evaluate_rls` (service down), on a fixed configuration with a deny
//! route, a token route, an API-key route, a web route, a phone-limited
//! body route and network rules.
//!
//! Input: a line `METHOD PATH`, header lines `name: value`, an empty line,
//! the body.
//!
//! Oracle: a path with dot or empty segments once its `;` parameters are
//! dropped is refused (`route_denied`); nothing under the deny prefix is
//! ever allowed, a request on the token route is never allowed without a
//! token header, and on the API-key route (`forward: false`) a `key` query
//! parameter never stays in the path that goes upstream or into Envoy's
//! access log.
#![no_main]

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use appguard::config::Config;
use appguard::decision::Decision;
use appguard::headers::Headers;
use appguard::identity::KeyMemo;
use appguard::limits::ServiceCache;
use appguard::policy::{
    evaluate, evaluate_body, evaluate_rls, Ctx, KeyFetch, NegativeCache, Step, TokenCache,
};
use appguard::request::Request;
use appguard::store::{BucketSalt, MemStore};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_900_000_000;
const SECRET: &[u8] = b"appguard-test-secret-0123456789-appguard-test-secret-0123456789!";

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let doc = serde_json::json!({
            "default_action": "allow",
            "client_ip": {"xff_trusted_hops": 1},
            "network": {"country_header": "x-country-code", "country_deny": ["KP"]},
            "apps": [
                {"id": "web", "platform": "web", "origins": ["https://*.example.com"]},
                {"id": "droid", "platform": "android", "package": "com.example.app"}
            ],
            "api_keys": {"query_param": "key", "forward": false,
                         "keys": [{"id": "k", "sha256": appguard::identity::hash_api_key("key-1"), "apps": ["droid"]}]},
            "phone": {"default_calling_code": "44", "denied_prefixes": ["+882"],
                      "hash_key_base64": STANDARD.encode(b"fuzz-phone-hash-key-0123456789ab")},
            "rate_limit_service": {"cluster": "rls", "domain": "d", "failure_mode": "deny"},
            "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                        "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                        "binding": {"headers": ["authorization"]},
                        "replay": {"scope": "local"},
                        "app_claim": {"claim": "app"}}],
            "routes": [
                {"name": "admin", "match": {"prefix": "/admin"}, "action": "deny"},
                {"name": "tok", "match": {"prefix": "/tok"}, "tokens": ["t"]},
                {"name": "key", "match": {"prefix": "/key"}, "api_key": "required", "platforms": ["android"]},
                {"name": "web", "match": {"prefix": "/web"}, "platforms": ["web"],
                 "network": {"ip_deny": ["10.0.0.0/8"]}},
                {"name": "sms", "match": {"path": "/sms"},
                 "rate_limits": [
                     {"entries": [{"type": "body", "pointer": "/to", "phone": true}], "local": {"requests": 3, "per": "hour"}},
                     {"entries": [{"type": "client_ip"}, {"type": "header", "name": "x-user"}]},
                     {"name": "leased", "entries": [{"type": "header", "name": "x-tenant"}], "lease": 5}
                 ]}
            ]
        });
        match Config::from_json(doc.to_string().as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("the fixed configuration is refused: {e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h, b.as_bytes()),
        None => (text.as_ref(), &b""[..]),
    };
    let mut lines = head.split('\n');
    let first = lines.next().unwrap_or("");
    let (method, path) = first.split_once(' ').unwrap_or(("GET", first));
    let mut headers = vec![
        (":method".to_owned(), method.to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":authority".to_owned(), "api.example.com".to_owned()),
    ];
    headers.extend(
        lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())),
    );
    let store = MemStore::default();
    let token_cache = RefCell::new(TokenCache::default());
    let over_limit = RefCell::new(ServiceCache::new(&BucketSalt::new([7; 16])));
    let key_memo = RefCell::new(KeyMemo::new(&BucketSalt::new([7; 16])));
    let negative = RefCell::new(NegativeCache::default());
    let ctx = Ctx {
        config: config(),
        store: &store,
        bucket_salt: BucketSalt::new([7; 16]),
        token_cache: &token_cache,
        remote_keys: &[],
        key_fetch: KeyFetch::NotNow,
        service_cache: &over_limit,
        key_memo: &key_memo,
        negative: &negative,
        now_ms: NOW * 1000,
    };
    let headers: Headers = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = Request::new(&headers, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let mut step = evaluate(&ctx, &req, NOW);
    for _ in 0..3 {
        step = match step {
            Step::NeedBody(p) => evaluate_body(&ctx, &req, body, p, NOW),
            Step::NeedRateLimit(p, _) => evaluate_rls(&ctx, p, Err(()), NOW),
            other => other,
        };
    }
    let Step::Done(decision, _) = step else {
        panic!("not decided after the body and the service: {step:?}");
    };
    let has_key_param = |query: &str| {
        // As loosely as appguard reads it: any case, `&` or `;` between.
        query.split(['&', ';']).any(|pair| {
            pair.split_once('=')
                .map_or(pair, |(k, _)| k)
                .eq_ignore_ascii_case("key")
        })
    };
    let route = appguard::policy::match_route(config(), &req);
    // Decided here, not by `match_route`: a path (before its query or
    // fragment) with a `.`, `..` (`%2e` in any case counted) or empty
    // middle segment once each segment's `;` parameters are dropped.
    let raw_path = path.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<&str> = raw_path
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect();
    let unclear = raw_path.starts_with('/')
        && segments.iter().enumerate().any(|(i, s)| {
            let d = s.to_ascii_lowercase().replace("%2e", ".");
            d == "." || d == ".." || (s.is_empty() && i > 0 && i + 1 < segments.len())
        });
    if unclear {
        assert!(route.is_err(), "{path:?} matched a route");
    }
    let Ok(route) = route else {
        // A path whose spelling cannot be trusted to name its handler
        // (dot or empty segments once `;` parameters are dropped) is
        // refused outright, whatever the route it seems to start with.
        assert!(
            matches!(&decision, Decision::Deny(d) if d.reason == appguard::decision::Reason::RouteDenied),
            "{path:?}: {decision:?}"
        );
        return;
    };
    let on_key_route = route.is_some_and(|(_, r)| r.name == "key");
    if on_key_route && req.query().is_some_and(has_key_param) {
        let scrub = match &decision {
            Decision::Allow(g) => &g.key_scrub,
            Decision::Deny(d) => &d.key_scrub,
        };
        let Some(cut) = scrub.path.as_deref() else {
            panic!("the key parameter stayed in {path:?}");
        };
        // RFC 3986: the fragment goes first; a `?` inside it starts no query.
        let before_fragment = cut.split_once('#').map_or(cut, |(b, _)| b);
        let query = before_fragment.split_once('?').map_or("", |(_, q)| q);
        assert!(!has_key_param(query), "{path:?} became {cut:?}");
        assert_eq!(cut.split(['?', '#']).next(), Some(req.path()));
    }
    if let Decision::Allow(_) = decision {
        assert!(
            !req.path().starts_with("/admin"),
            "deny route allowed: {path:?}"
        );
        if req.path().starts_with("/tok") {
            assert!(
                req.header("x-token").is_some(),
                "token route allowed without a token"
            );
        }
    }
});
