//! The policy end to end on request values: routes, network, keys, tokens
//! and identity, as a matrix of platform × route × token × key × headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::identity::hash_api_key;
use crate::request::test_support::headers;
use crate::request::{Claims, Delegated};
use crate::store::{BucketSalt, MemStore};
use crate::token::tests_support::{hs256_raw, SECRET};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

const NOW: u64 = 1_900_000_000;
const ANDROID_CERT: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

fn config_json() -> Value {
    json!({
        "default_action": "deny",
        "client_ip": {"xff_trusted_hops": 0},
        "network": {"ip_deny": ["203.0.113.0/24", "2001:db8:bad::/48"], "country_header": "x-country", "country_deny": ["KP"]},
        "apps": [
            {"id": "shop-android", "platform": "android", "package": "com.example.shop", "cert_fingerprints": [ANDROID_CERT]},
            {"id": "shop-ios", "platform": "ios", "bundle_id": "com.example.shop", "team_id": "TEAM123456"},
            {"id": "shop-web", "platform": "web", "origins": ["https://*.example.com", "https://example.com"]},
            {"id": "backend", "platform": "server", "cidrs": ["10.0.0.0/8"]},
            {"id": "fb-android", "platform": "android", "package": "com.example.fb", "token_app_ids": ["1:123:android:abc"]},
            {"id": "fb-ios", "platform": "ios", "bundle_id": "com.example.fb", "token_app_ids": ["1:123:ios:def"]}
        ],
        "api_keys": {
            "header": "x-api-key",
            "query_param": "key",
            "keys": [
                {"id": "k-android", "sha256": hash_api_key("key-android"), "apps": ["shop-android"]},
                {"id": "k-web", "sha256": hash_api_key("key-web"), "apps": ["shop-web"]},
                {"id": "k-any", "sha256": hash_api_key("key-any")},
                {"id": "k-office", "sha256": hash_api_key("key-office"), "ips": ["192.0.2.0/24"]},
                {"id": "k-sms-only", "sha256": hash_api_key("key-sms"), "routes": ["sms"]},
                {"id": "k-revoked", "sha256": hash_api_key("key-revoked"), "disabled": true}
            ]
        },
        "tokens": [
            {"name": "own", "from": [{"header": "x-app-token"}],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
             "app_claim": {"claim": "app"}, "platforms": ["android", "ios"],
             "binding": {"claim": "pay", "headers": ["authorization"]},
             "replay": {"claim": "jti"},
             "claim_to_headers": [{"claim": "sub", "header": "x-user"}]},
            {"name": "firebase", "from": [{"header": "x-firebase-appcheck"}],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
             "issuer": "https://firebaseappcheck.googleapis.com/123",
             "audiences": ["projects/123"],
             "app_claim": {"claim": "sub", "format": "firebase"}}
        ],
        "routes": [
            {"name": "mobile", "match": {"prefix": "/mobile/"}, "platforms": ["android", "ios"], "api_key": "required"},
            {"name": "web", "match": {"prefix": "/web/"}, "platforms": ["web"], "api_key": "required"},
            {"name": "sms", "match": {"prefix": "/sms"}, "api_key": "required"},
            {"name": "attested", "match": {"prefix": "/attested/"}, "tokens": ["own"]},
            {"name": "appcheck", "match": {"prefix": "/appcheck/"}, "tokens": ["firebase"], "api_key": "optional"},
            {"name": "internal", "match": {"prefix": "/internal/"}, "platforms": ["server"]},
            {"name": "office", "match": {"prefix": "/office/"}, "api_key": "required", "network": {"ip_allow": ["192.0.2.0/24"]}},
            {"name": "open", "match": {"prefix": "/open/"}}
        ]
    })
}

struct World {
    config: Config,
    store: MemStore,
    cache: RefCell<TokenCache>,
    over: RefCell<ServiceCache>,
    keys: RefCell<KeyMemo>,
    neg: RefCell<NegativeCache>,
}

impl World {
    fn new() -> World {
        World::from(config_json())
    }
    fn from(v: Value) -> World {
        World {
            config: Config::from_json(v.to_string().as_bytes()).unwrap(),
            store: MemStore::default(),
            cache: RefCell::new(TokenCache::default()),
            over: RefCell::new(ServiceCache::new(&BucketSalt::new([7; 16]))),
            keys: RefCell::new(KeyMemo::new(&BucketSalt::new([7; 16]))),
            neg: RefCell::new(NegativeCache::default()),
        }
    }
    fn run(&self, path: &str, ip: &str, hs: &[(&str, &str)]) -> (Decision, Facts) {
        let mut all = vec![
            (":method", "POST"),
            (":path", path),
            (":authority", "api.example.com"),
        ];
        // A JSON body unless the test says otherwise.
        if !hs.iter().any(|(n, _)| *n == "content-type") {
            all.push(("content-type", "application/json"));
        }
        all.extend_from_slice(hs);
        let h = headers(&all);
        let ctx = self.ctx();
        match evaluate(&ctx, &Request::new(&h, Some(ip.parse().unwrap())), NOW) {
            Step::Done(d, f) => (d, f),
            s => panic!("{s:?}"),
        }
    }
    fn reason(&self, path: &str, hs: &[(&str, &str)]) -> Option<Reason> {
        self.run(path, "198.51.100.1", hs).0.reason()
    }
    /// The reason for `method path` on `api.example.com` with `extra`
    /// headers (and no others) from 192.0.2.1, once decided.
    fn route(&self, method: &str, path: &str, extra: &[(&str, &str)]) -> Option<Reason> {
        let mut pairs = vec![
            (":method", method),
            (":path", path),
            (":authority", "api.example.com"),
        ];
        pairs.extend_from_slice(extra);
        let h = headers(&pairs);
        evaluate(
            &self.ctx(),
            &Request::new(&h, "192.0.2.1".parse().ok()),
            NOW,
        )
        .done_reason()
    }
}

fn set_headers(d: &Decision) -> Vec<(String, String)> {
    match d {
        Decision::Allow(g) => g.set_headers.clone(),
        Decision::Deny(_) => panic!("denied: {d:?}"),
    }
}

fn own_token(app: &str, jti: &str, auth: &str) -> String {
    hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iat": NOW, "exp": NOW + 60, "app": app, "jti": jti, "sub": "user-7", "pay": crate::token::binding_digest(&[auth])}),
    )
}

fn firebase_token(sub: &str) -> String {
    hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iat": NOW, "exp": NOW + 60, "sub": sub, "iss": "https://firebaseappcheck.googleapis.com/123", "aud": ["projects/123", "projects/shop"]}),
    )
}

const ANDROID: [(&str, &str); 2] = [
    ("x-android-package", "com.example.shop"),
    (
        "x-android-cert",
        "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
    ),
];

#[test]
fn platform_route_key_header_matrix() {
    let w = World::new();
    let ios = [("x-ios-bundle-identifier", "com.example.shop")];
    let web = [("origin", "https://app.example.com")];
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Option<Reason>);
    let cases: Vec<Case> = vec![
        // mobile route: android and ios apps with a matching key
        ("/mobile/a", "key-android", ANDROID.to_vec(), None),
        ("/mobile/a", "key-any", ios.to_vec(), None),
        ("/mobile/a", "key-any", ANDROID.to_vec(), None),
        // a web key on the mobile route, from the web: platform refused
        (
            "/mobile/a",
            "key-web",
            web.to_vec(),
            Some(Reason::PlatformDenied),
        ),
        (
            "/mobile/a",
            "key-any",
            web.to_vec(),
            Some(Reason::PlatformDenied),
        ),
        // the android key from iOS, from the web, or with no platform at all
        (
            "/mobile/a",
            "key-android",
            ios.to_vec(),
            Some(Reason::ApiKeyRestricted),
        ),
        (
            "/web/a",
            "key-android",
            web.to_vec(),
            Some(Reason::ApiKeyRestricted),
        ),
        (
            "/sms",
            "key-android",
            vec![],
            Some(Reason::ApiKeyRestricted),
        ),
        // the android key with another package or a wrong cert
        (
            "/mobile/a",
            "key-android",
            vec![("x-android-package", "com.evil.clone"), ANDROID[1]],
            Some(Reason::AppUnknown),
        ),
        (
            "/mobile/a",
            "key-android",
            vec![ANDROID[0], ("x-android-cert", "00".repeat(32).leak())],
            Some(Reason::AppMismatch),
        ),
        (
            "/mobile/a",
            "key-android",
            vec![ANDROID[0]],
            Some(Reason::AppMismatch),
        ),
        // web route
        ("/web/a", "key-web", web.to_vec(), None),
        (
            "/web/a",
            "key-web",
            vec![("referer", "https://shop.example.com/cart?x=1")],
            None,
        ),
        (
            "/web/a",
            "key-web",
            vec![("origin", "https://evil-example.com")],
            Some(Reason::OriginDenied),
        ),
        (
            "/web/a",
            "key-web",
            vec![("origin", "https://example.com.evil.io")],
            Some(Reason::OriginDenied),
        ),
        (
            "/web/a",
            "key-web",
            vec![("origin", "null")],
            Some(Reason::OriginDenied),
        ),
        ("/web/a", "key-web", vec![], Some(Reason::ApiKeyRestricted)),
        ("/web/a", "key-any", vec![], Some(Reason::PlatformDenied)),
        // mixed platform headers are a mismatch
        (
            "/mobile/a",
            "key-any",
            vec![
                ANDROID[0],
                ANDROID[1],
                ("origin", "https://app.example.com"),
            ],
            Some(Reason::AppMismatch),
        ),
        // keys: missing, unknown, revoked, route-restricted
        (
            "/mobile/a",
            "",
            ANDROID.to_vec(),
            Some(Reason::ApiKeyMissing),
        ),
        (
            "/mobile/a",
            "nope",
            ANDROID.to_vec(),
            Some(Reason::ApiKeyInvalid),
        ),
        (
            "/mobile/a",
            "key-revoked",
            ANDROID.to_vec(),
            Some(Reason::ApiKeyInvalid),
        ),
        (
            "/mobile/a",
            "key-sms",
            ANDROID.to_vec(),
            Some(Reason::ApiKeyRestricted),
        ),
        ("/sms", "key-sms", vec![], None),
        // a key restricted to an IP range, from elsewhere
        ("/sms", "key-office", vec![], Some(Reason::ApiKeyRestricted)),
    ];
    for (path, key, hs, want) in cases {
        let mut all = hs.clone();
        if !key.is_empty() {
            all.push(("x-api-key", key));
        }
        assert_eq!(
            w.reason(path, &all),
            want,
            "{path} key={key} headers={hs:?}"
        );
    }
}

#[test]
fn identity_headers_go_upstream() {
    let w = World::new();
    let (d, f) = w.run(
        "/mobile/x",
        "198.51.100.1",
        &[ANDROID[0], ANDROID[1], ("x-api-key", "key-android")],
    );
    let set = set_headers(&d);
    assert!(set.contains(&("x-appguard-app".into(), "shop-android".into())));
    assert!(set.contains(&("x-appguard-platform".into(), "android".into())));
    assert!(set.contains(&("x-appguard-key-id".into(), "k-android".into())));
    assert_eq!(f.app, Some(0));
    assert_eq!(f.key, Some(0));
}

#[test]
fn api_key_from_query_parameter() {
    let w = World::new();
    assert_eq!(w.reason("/sms?key=key-sms", &[]), None);
    assert_eq!(
        w.reason("/sms?key=key-sms&key=other", &[]),
        Some(Reason::ApiKeyInvalid)
    );
    assert_eq!(w.reason("/sms?key=", &[]), Some(Reason::ApiKeyMissing));
    // A `?` inside the fragment starts no query: the upstream sees no key
    // there, so neither does appguard.
    assert_eq!(
        w.reason("/sms#x?key=key-sms", &[]),
        Some(Reason::ApiKeyMissing)
    );
    // Read as loosely as any upstream reads it: a name in another case
    // (ASP.NET) or after a `;` (older Go and Python parsers) is the key
    // too, so a second key there must agree with the first.
    assert_eq!(w.reason("/sms?KEY=key-sms", &[]), None);
    assert_eq!(w.reason("/sms?a=1;key=key-sms", &[]), None);
    for path in [
        "/sms?key=key-sms&KEY=other",
        "/sms?key=key-sms;key=other",
        "/sms?a=1;Key=other",
    ] {
        assert_eq!(
            w.reason(path, &[("x-api-key", "key-sms")]),
            Some(Reason::ApiKeyInvalid),
            "{path}"
        );
    }
}

#[test]
fn a_key_under_another_spelling_of_its_header_or_parameter_is_a_copy() {
    // An upstream that reads `x_api_key` or `?key%00;…` as the key must
    // get the key appguard checked, or none.
    let w = World::new();
    for (path, hs) in [
        (
            "/sms",
            &[("x-api-key", "key-sms"), ("x_api_key", "key-other")][..],
        ),
        (
            "/sms",
            &[("x-api-key", "key-sms"), ("X.API.KEY", "key-other")],
        ),
        ("/sms?key%00;x=key-sms", &[]),
        ("/sms?key=key-sms&key%00x=key-other", &[]),
        ("/sms?+KEY=key-other", &[("x-api-key", "key-sms")]),
        // PHP splits on `&` only: its key is `key-sms;a=1`.
        ("/sms?key=key-sms;a=1&b=2", &[]),
        // PHP, Rails and Express's `qs` read `key[]` and `key[0]` as `key`.
        ("/sms?key=key-sms&key[]=key-other", &[]),
        ("/sms?key%5B0%5D=key-other", &[("x-api-key", "key-sms")]),
        ("/sms?a=1&key=key-sms;b=2", &[]),
    ] {
        assert_eq!(
            w.reason(path, hs),
            Some(Reason::ApiKeyInvalid),
            "{path} {hs:?}"
        );
    }
    // One key under any one spelling is that key.
    for (path, hs) in [
        ("/sms", &[("x_api_key", "key-sms")][..]),
        (
            "/sms",
            &[("x-api-key", "key-sms"), ("x_api_key", "key-sms")],
        ),
        ("/sms?key%00x=key-sms", &[]),
        ("/sms?key[]=key-sms", &[]),
    ] {
        assert_eq!(w.reason(path, hs), None, "{path} {hs:?}");
    }
}

#[test]
fn api_keys_go_upstream_unless_forward_is_false() {
    let grant = |w: &World, path: &str, hs: &[(&str, &str)]| match w.run(path, "198.51.100.1", hs).0
    {
        Decision::Allow(g) => g,
        d => panic!("{path}: {d:?}"),
    };
    let path_set = |g: &Grant| g.key_scrub.path.clone();
    let header_cut = |g: &Grant| !g.key_scrub.headers.is_empty();
    // The default: the key goes on as sent.
    let w = World::new();
    let g = grant(&w, "/sms?key=key-sms&a=1", &[]);
    assert_eq!(path_set(&g), None);
    assert!(!header_cut(&g));

    let mut cfg = config_json();
    cfg["api_keys"]["forward"] = json!(false);
    let w = World::from(cfg);
    for (path, want) in [
        ("/sms?key=key-sms", "/sms"),
        ("/sms?a=1&key=key-sms&b=%20x", "/sms?a=1&b=%20x"),
        ("/sms?%6Bey=key-sms&a=1", "/sms?a=1"),
        ("/sms?key=key-sms&key=key-sms", "/sms"),
        ("/sms?a=1&key=key-sms#frag", "/sms?a=1#frag"),
        ("/sms?a=1;KEY=key-sms&b=2", "/sms?a=1&b=2"),
        ("/sms?a=1;b=2&Key=key-sms", "/sms?a=1;b=2"),
    ] {
        let g = grant(&w, path, &[]);
        assert_eq!(path_set(&g).as_deref(), Some(want), "{path}");
    }
    // A parameter merely starting with the name stays.
    let g = grant(&w, "/sms?keys=1&key=key-sms", &[]);
    assert_eq!(path_set(&g).as_deref(), Some("/sms?keys=1"));
    // The header is removed; a path without the parameter is left alone.
    let g = grant(&w, "/sms?a=1", &[("x-api-key", "key-sms")]);
    assert!(header_cut(&g));
    assert_eq!(path_set(&g), None);
    // In every spelling an upstream reads as the key header (CGI and PHP
    // read `x_api_key` as `x-api-key`), and in PHP's spellings of the
    // parameter.
    let g = grant(
        &w,
        "/sms?a=1",
        &[("x-api-key", "key-sms"), ("x_api_key", "key-sms")],
    );
    assert_eq!(g.key_scrub.headers, vec!["x-api-key", "x_api_key"]);
    let g = grant(&w, "/sms?a=1", &[("x.api.key", "key-sms")]);
    assert_eq!(g.key_scrub.headers, vec!["x.api.key"]);
    let g = grant(&w, "/sms?a=1&key%00x=key-sms", &[]);
    assert_eq!(path_set(&g).as_deref(), Some("/sms?a=1"));
    let g = grant(&w, "/sms?key[]=key-sms&a=1&key%5B0%5D=key-sms", &[]);
    assert_eq!(path_set(&g).as_deref(), Some("/sms?a=1"));
    // A refused request goes no further, but Envoy logs it: the denial
    // carries the same changes for the adapter to apply.
    match w
        .run(
            "/sms?key=wrong&a=1",
            "198.51.100.1",
            &[("x-api-key", "wrong")],
        )
        .0
    {
        Decision::Deny(d) => {
            assert_eq!(d.reason, Reason::ApiKeyInvalid);
            assert_eq!(d.key_scrub.path.as_deref(), Some("/sms?a=1"));
            assert_eq!(d.key_scrub.headers, vec!["x-api-key".to_owned()]);
        }
        d => panic!("{d:?}"),
    }
    // A key that PHP reads with more after a `;` is refused; what Envoy
    // logs still has it cut, and a reader that splits on `&` only still
    // finds `a=1` and `b=2`.
    match w.run("/sms?a=1&key=key-sms;b=2", "198.51.100.1", &[]).0 {
        Decision::Deny(d) => {
            assert_eq!(d.reason, Reason::ApiKeyInvalid);
            assert_eq!(d.key_scrub.path.as_deref(), Some("/sms?a=1&b=2"));
        }
        d => panic!("{d:?}"),
    }
    // Also when the request is refused in monitor mode (it goes upstream),
    // and before any other check decides.
    let mut cfg = config_json();
    cfg["api_keys"]["forward"] = json!(false);
    cfg["mode"] = json!("monitor");
    let w = World::from(cfg);
    let g = grant(&w, "/sms?key=wrong", &[("x-api-key", "wrong")]);
    assert_eq!(g.would_deny, Some(Reason::ApiKeyInvalid));
    assert!(header_cut(&g));
    assert_eq!(path_set(&g).as_deref(), Some("/sms"));
    let g = grant(&w, "/office/x?key=key-office", &[]);
    assert_eq!(g.would_deny, Some(Reason::IpDenied));
    assert_eq!(path_set(&g).as_deref(), Some("/office/x"));
    // A route that does not read keys does not touch them.
    let g = grant(&w, "/open/x?key=key-any", &[("x-api-key", "key-any")]);
    assert_eq!(path_set(&g), None);
    assert!(!header_cut(&g));
}

#[test]
fn refused_keys_are_named_in_the_facts_the_log_line_reads() {
    // A revoked or restricted key is configured, so its public id belongs
    // in the denial's log line (`key=...`): rotation (README "API-key
    // rotation") watches the revoked id's `api_key_invalid` there.
    let w = World::new();
    let id = |f: Facts| f.key.map(|k| w.config.api_keys.keys[k].id.clone());
    for (path, ip, key, reason, want) in [
        (
            "/sms",
            "198.51.100.1",
            "key-revoked",
            Reason::ApiKeyInvalid,
            "k-revoked",
        ),
        (
            "/sms",
            "198.51.100.1",
            "key-office",
            Reason::ApiKeyRestricted,
            "k-office",
        ),
        (
            "/mobile/a",
            "198.51.100.1",
            "key-sms",
            Reason::ApiKeyRestricted,
            "k-sms-only",
        ),
    ] {
        let (d, f) = w.run(path, ip, &[("x-api-key", key)]);
        assert_eq!(d.reason(), Some(reason), "{key} on {path}");
        assert_eq!(id(f).as_deref(), Some(want), "{key} on {path}");
    }
    // An unknown key names nothing.
    let (d, f) = w.run("/sms", "198.51.100.1", &[("x-api-key", "nope")]);
    assert_eq!(d.reason(), Some(Reason::ApiKeyInvalid));
    assert_eq!(f.key, None);
}

#[test]
fn an_api_key_sent_twice_or_unreadable_is_invalid_not_absent() {
    let w = World::new();
    // Header and query disagree: appguard would check one key while the
    // upstream may read the other.
    assert_eq!(
        w.reason("/sms?key=key-any", &[("x-api-key", "key-sms")]),
        Some(Reason::ApiKeyInvalid)
    );
    assert_eq!(
        w.reason("/sms?key=key-sms", &[("x-api-key", "key-sms")]),
        None
    );
    // The parameter name and value as the upstream decodes them.
    assert_eq!(
        w.reason("/sms?%6Bey=key-any", &[("x-api-key", "key-sms")]),
        Some(Reason::ApiKeyInvalid)
    );
    assert_eq!(w.reason("/sms?k%65y=key%2Dsms", &[]), None);
    assert_eq!(w.reason("/sms?key=key%2", &[]), Some(Reason::ApiKeyInvalid));
    // On an optional-key route a key that is sent is checked, even when
    // it is too long to be one (it used to pass as "no key").
    let long = "k".repeat(300);
    assert_eq!(
        w.reason("/appcheck/x", &[("x-api-key", long.as_str())]),
        Some(Reason::ApiKeyInvalid)
    );
    assert_eq!(
        w.reason(&format!("/appcheck/x?key={long}"), &[]),
        Some(Reason::ApiKeyInvalid)
    );
}

#[test]
fn network_rules() {
    let w = World::new();
    let key = [("x-api-key", "key-office")];
    assert_eq!(w.run("/office/x", "192.0.2.5", &key).0.reason(), None);
    assert_eq!(
        w.run("/office/x", "::ffff:192.0.2.5", &key).0.reason(),
        None,
        "mapped IPv4"
    );
    assert_eq!(
        w.run("/office/x", "198.51.100.1", &key).0.reason(),
        Some(Reason::IpDenied)
    );
    assert_eq!(
        w.run("/open/x", "203.0.113.77", &[]).0.reason(),
        Some(Reason::IpDenied)
    );
    assert_eq!(
        w.run("/open/x", "::ffff:203.0.113.77", &[]).0.reason(),
        Some(Reason::IpDenied)
    );
    assert_eq!(
        w.run("/open/x", "2001:db8:bad::1", &[]).0.reason(),
        Some(Reason::IpDenied)
    );
    assert_eq!(w.run("/open/x", "2001:db8:600d::1", &[]).0.reason(), None);
    assert_eq!(
        w.reason("/open/x", &[("x-country", "kp")]),
        Some(Reason::CountryDenied)
    );
    assert_eq!(w.reason("/open/x", &[("x-country", "GB")]), None);
    assert_eq!(
        w.reason("/open/x", &[("x-country", "GB"), ("x-country", "KP")]),
        Some(Reason::CountryDenied)
    );
    // the route check comes first; with default_action allow, the global
    // deny list applies to unmatched requests too
    assert_eq!(
        w.run("/nowhere", "203.0.113.1", &[]).0.reason(),
        Some(Reason::RouteDenied)
    );
    let mut v = config_json();
    v["default_action"] = json!("allow");
    let w = World::from(v);
    assert_eq!(
        w.run("/nowhere", "203.0.113.1", &[]).0.reason(),
        Some(Reason::IpDenied)
    );
    assert_eq!(w.run("/nowhere", "198.51.100.1", &[]).0.reason(), None);
}

#[test]
fn xff_spoofing_does_not_move_the_client_ip() {
    let mut v = config_json();
    v["client_ip"]["xff_trusted_hops"] = json!(1);
    let w = World::from(v);
    // The client prepends a "clean" address; the trusted proxy appended the real one.
    let h = [("x-forwarded-for", "192.0.2.9, 203.0.113.50")];
    assert_eq!(
        w.run("/open/x", "10.0.0.1", &h).0.reason(),
        Some(Reason::IpDenied)
    );
    let h = [("x-forwarded-for", "203.0.113.50, 198.51.100.20")];
    assert_eq!(w.run("/open/x", "10.0.0.1", &h).0.reason(), None);
    // no XFF at all from behind a trusted proxy: cannot tell, refused where IP rules apply
    assert_eq!(
        w.run("/office/x", "10.0.0.1", &[("x-api-key", "key-office")])
            .0
            .reason(),
        Some(Reason::IpDenied)
    );
}

#[test]
fn server_platform_by_ip() {
    let w = World::new();
    assert_eq!(w.run("/internal/x", "10.1.2.3", &[]).0.reason(), None);
    assert_eq!(
        w.run("/internal/x", "198.51.100.1", &[]).0.reason(),
        Some(Reason::PlatformDenied)
    );
}

#[test]
fn attested_route_identity_comes_from_the_token() {
    let w = World::new();
    let auth = "Bearer u1";
    let t = own_token("shop-android", "j1", auth);
    let (d, _) = w.run(
        "/attested/x",
        "198.51.100.1",
        &[("x-app-token", &t), ("authorization", auth), ANDROID[0]],
    );
    let set = set_headers(&d);
    assert!(set.contains(&("x-appguard-app".into(), "shop-android".into())));
    assert!(
        set.contains(&("x-user".into(), "user-7".into())),
        "claim_to_headers"
    );
    match &d {
        Decision::Allow(g) => assert_eq!(g.remove_headers, vec!["x-app-token".to_string()]),
        _ => unreachable!(),
    }
    // the same token again: replayed (jti once), even though the signature is cached
    assert_eq!(
        w.reason(
            "/attested/x",
            &[("x-app-token", &t), ("authorization", auth)]
        ),
        Some(Reason::TokenReplayed)
    );
    // token says android, headers claim iOS
    let t2 = own_token("shop-android", "j2", auth);
    assert_eq!(
        w.reason(
            "/attested/x",
            &[
                ("x-app-token", &t2),
                ("authorization", auth),
                ("x-ios-bundle-identifier", "com.example.shop")
            ]
        ),
        Some(Reason::AppMismatch)
    );
    // a mobile token used from a web page (the browser adds Origin)
    let t3 = own_token("shop-ios", "j3", auth);
    assert_eq!(
        w.reason(
            "/attested/x",
            &[
                ("x-app-token", &t3),
                ("authorization", auth),
                ("origin", "https://app.example.com")
            ]
        ),
        Some(Reason::AppMismatch)
    );
    // provider restricted to mobile: a token naming the web app is refused
    let t4 = own_token("shop-web", "j4", auth);
    assert_eq!(
        w.reason(
            "/attested/x",
            &[("x-app-token", &t4), ("authorization", auth)]
        ),
        Some(Reason::PlatformDenied)
    );
    // unknown app
    let t5 = own_token("who", "j5", auth);
    assert_eq!(
        w.reason(
            "/attested/x",
            &[("x-app-token", &t5), ("authorization", auth)]
        ),
        Some(Reason::AppUnknown)
    );
    // binding: the token was minted for another Authorization
    let t6 = own_token("shop-ios", "j6", auth);
    assert_eq!(
        w.reason(
            "/attested/x",
            &[("x-app-token", &t6), ("authorization", "Bearer u2")]
        ),
        Some(Reason::TokenBinding)
    );
    // missing token
    assert_eq!(w.reason("/attested/x", &[]), Some(Reason::TokenMissing));
}

#[test]
fn token_and_binding_headers_are_read_in_every_spelling_an_upstream_reads() {
    // PHP, CGI and Symfony read `x_app_token` and `x.session.id` as
    // `x-app-token` and `x-session-id`: a second copy under such a name
    // must agree, or the upstream may read the one appguard did not check.
    let w = World::from(json!({
        "apps": [{"id": "a", "platform": "android", "package": "com.example.a"}],
        "tokens": [{"name": "t", "from": [{"header": "x-app-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "binding": {"claim": "sid", "headers": ["x-session-id"]}}],
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t"]}]
    }));
    let token = |sid: &str| {
        hs256_raw(
            SECRET,
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60, "sid": crate::token::binding_digest(&[sid])}),
        )
    };
    let (t, other) = (token("s1"), token("s2"));
    let reason = |hs: &[(&str, &str)]| w.reason("/v1/x", hs);
    assert_eq!(reason(&[("x-app-token", &t), ("x-session-id", "s1")]), None);
    // a second token under another spelling
    assert_eq!(
        reason(&[
            ("x-app-token", &t),
            ("x_app_token", &other),
            ("x-session-id", "s1")
        ]),
        Some(Reason::TokenMalformed)
    );
    // the same token twice is one token, and both copies stay behind
    match w.run(
        "/v1/x",
        "198.51.100.1",
        &[
            ("x-app-token", &t),
            ("x.app.token", &t),
            ("x-session-id", "s1"),
        ],
    ) {
        (Decision::Allow(g), _) => assert_eq!(
            g.remove_headers,
            vec!["x-app-token".to_string(), "x.app.token".to_string()]
        ),
        (d, _) => panic!("{d:?}"),
    }
    // the token alone under another spelling is the token
    assert_eq!(reason(&[("x_app_token", &t), ("x-session-id", "s1")]), None);
    // the bound header under another spelling with another value
    assert_eq!(
        reason(&[
            ("x-app-token", &t),
            ("x-session-id", "s1"),
            ("x_session_id", "s2")
        ]),
        Some(Reason::TokenBinding)
    );
    assert_eq!(reason(&[("x-app-token", &t), ("x_session_id", "s1")]), None);
}

#[test]
fn a_refused_requests_token_headers_are_cut_like_its_api_key() {
    // A refused request goes no further, but Envoy's access log (or ALS,
    // or tap) still reads its headers. A token refused for another check
    // than its own was not used up: whoever reads the log could replay it.
    let w = World::from(json!({
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("key-1")}]},
        "tokens": [{"name": "t", "from": [{"header": "x-app-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
                   {"name": "f", "from": [{"header": "x-fwd-token"}], "forward": true,
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}],
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t", "f"],
                    "api_key": "required"},
                   {"name": "p", "match": {"prefix": "/p/"}, "tokens": ["f"],
                    "platforms": ["android"]}]
    }));
    let t = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let denial = |hs: &[(&str, &str)]| match w.run("/v1/x", "198.51.100.1", hs).0 {
        Decision::Deny(d) => d,
        d => panic!("{d:?}"),
    };
    // A genuine token with a wrong key: cut in every spelling sent, and a
    // forwarding provider's too (it goes upstream only once verified).
    let d = denial(&[
        ("x-app-token", &t),
        ("x_app_token", &t),
        ("x-fwd-token", &t),
        ("x-api-key", "wrong"),
    ]);
    assert_eq!(d.reason, Reason::ApiKeyInvalid);
    assert_eq!(
        d.key_scrub.headers,
        vec!["x-app-token", "x_app_token", "x-fwd-token"]
    );
    // A good key (forwarded: `api_keys.forward` is true by default) and
    // a malformed token: the token only.
    let d = denial(&[("x-api-key", "key-1"), ("x-app-token", "a.b.c")]);
    assert_eq!(d.reason, Reason::TokenMalformed);
    assert_eq!(d.key_scrub.headers, vec!["x-app-token"]);
    // A forwarding provider's token that verified, in a request refused
    // after all (no platform here): nothing goes upstream, so it goes too.
    match w.run("/p/x", "198.51.100.1", &[("x-fwd-token", &t)]).0 {
        Decision::Deny(d) => {
            assert_ne!(d.reason, Reason::TokenSignature);
            assert_eq!(d.key_scrub.headers, vec!["x-fwd-token"]);
        }
        d => panic!("{d:?}"),
    }
    // Allowed, it goes upstream.
    let w = World::from(json!({
        "tokens": [{"name": "f", "from": [{"header": "x-fwd-token"}], "forward": true,
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}],
        "routes": [{"name": "p", "match": {"prefix": "/p/"}, "tokens": ["f"]}]
    }));
    match w.run("/p/x", "198.51.100.1", &[("x-fwd-token", &t)]).0 {
        Decision::Allow(g) => assert!(g.remove_headers.is_empty(), "{g:?}"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn a_providers_sources_must_hold_one_token() {
    // A genuine token in one source and a forged one in another: the
    // first is verified, and with `forward` the other would reach the
    // upstream unverified (Envoy's jwt_authn refuses this too).
    let w = World::from(json!({
        "tokens": [{"name": "p", "forward": true,
                    "from": [{"header": "x-app-token"}, {"header": "authorization", "prefix": "Bearer "}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["p"]}]
    }));
    let good = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "sub": "device-1"}),
    );
    let forged = hs256_raw(
        &[9u8; 64],
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "sub": "admin"}),
    );
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(
        w.reason(
            "/x",
            &[("x-app-token", &good), ("authorization", &bearer(&forged))]
        ),
        Some(Reason::TokenMalformed)
    );
    // The other order too: the forged token first.
    assert_eq!(
        w.reason(
            "/x",
            &[("x-app-token", &forged), ("authorization", &bearer(&good))]
        ),
        Some(Reason::TokenMalformed)
    );
    // The same token in both is one token; either source alone is the token.
    assert_eq!(
        w.reason(
            "/x",
            &[("x-app-token", &good), ("authorization", &bearer(&good))]
        ),
        None
    );
    assert_eq!(w.reason("/x", &[("authorization", &bearer(&good))]), None);
    assert_eq!(w.reason("/x", &[("x-app-token", &good)]), None);
    // A header without the source's prefix holds no token for it.
    assert_eq!(
        w.reason(
            "/x",
            &[
                ("x-app-token", &good),
                ("authorization", "Basic dXNlcjpwYXNz")
            ]
        ),
        None
    );
    // Nor does it go upstream with the verified token: under another
    // scheme (`JWT …`, `Token …`) it is a token nobody checked to an
    // upstream that splits the value at its space.
    for other in [format!("JWT {forged}"), format!("Token {forged}")] {
        match w
            .run(
                "/x",
                "198.51.100.1",
                &[("x-app-token", &good), ("authorization", &other)],
            )
            .0
        {
            Decision::Allow(g) => {
                assert!(
                    g.remove_headers.iter().any(|h| h == "authorization"),
                    "{g:?}"
                );
                assert_eq!(g.forwarded_headers, ["x-app-token"], "{g:?}");
            }
            d => panic!("{other}: {d:?}"),
        }
    }
    // The token's own source goes on, whichever it is.
    match w
        .run("/x", "198.51.100.1", &[("authorization", &bearer(&good))])
        .0
    {
        Decision::Allow(g) => assert_eq!(g.forwarded_headers, ["authorization"], "{g:?}"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn firebase_app_check_sub_names_the_app_and_its_platform() {
    let w = World::new();
    let t = firebase_token("1:123:ios:def");
    let (d, _) = w.run(
        "/appcheck/x",
        "198.51.100.1",
        &[("x-firebase-appcheck", &t)],
    );
    assert!(set_headers(&d).contains(&("x-appguard-platform".into(), "ios".into())));
    // the sub says ios, the headers say android
    let t = firebase_token("1:123:ios:def");
    assert_eq!(
        w.reason(
            "/appcheck/x",
            &[
                ("x-firebase-appcheck", &t),
                ("x-android-package", "com.example.fb")
            ]
        ),
        Some(Reason::AppMismatch)
    );
    // an app id registered as android but the sub's platform says web
    let mut v = config_json();
    v["apps"][4]["token_app_ids"] = json!(["1:123:web:abc"]);
    let w2 = World::from(v);
    let t = firebase_token("1:123:web:abc");
    assert_eq!(
        w2.reason("/appcheck/x", &[("x-firebase-appcheck", &t)]),
        Some(Reason::AppMismatch)
    );
    // unregistered app id
    let t = firebase_token("1:123:android:zzz");
    assert_eq!(
        w.reason("/appcheck/x", &[("x-firebase-appcheck", &t)]),
        Some(Reason::AppUnknown)
    );
    // an optional key that names another app than the token
    let t = firebase_token("1:123:android:abc");
    assert_eq!(
        w.reason(
            "/appcheck/x",
            &[("x-firebase-appcheck", &t), ("x-api-key", "key-android")]
        ),
        Some(Reason::ApiKeyRestricted)
    );
    assert_eq!(
        w.reason(
            "/appcheck/x",
            &[("x-firebase-appcheck", &t), ("x-api-key", "key-any")]
        ),
        None
    );
}

#[test]
fn platform_headers_are_read_in_every_spelling_an_upstream_reads() {
    let w = World::new();
    let mobile = |extra: &[(&str, &str)]| {
        let mut hs = vec![("x-api-key", "key-any")];
        hs.extend_from_slice(extra);
        w.reason("/mobile/a", &hs)
    };
    // An agreeing copy, or the header only in another spelling, is the
    // header.
    assert_eq!(
        mobile(&[
            ANDROID[0],
            ANDROID[1],
            ("x_android_package", "com.example.shop")
        ]),
        None
    );
    assert_eq!(
        mobile(&[("X.IOS.Bundle.Identifier", "com.example.shop")]),
        None
    );
    // A copy naming another app, or another platform's header in another
    // spelling, is a mismatch.
    assert_eq!(
        mobile(&[ANDROID[0], ANDROID[1], ("x_android_package", "com.evil")]),
        Some(Reason::AppMismatch)
    );
    assert_eq!(
        mobile(&[
            ANDROID[0],
            ANDROID[1],
            ("x_ios_bundle_identifier", "com.example.shop")
        ]),
        Some(Reason::AppMismatch)
    );
}

#[test]
fn a_token_of_a_platform_the_route_does_not_take_is_platform_denied() {
    // A web App Check token replayed on a mobile-only route: refused for
    // its platform, whether the script copied the browser's Origin, left
    // it out, or sent an app's headers instead.
    let mut v = config_json();
    v["apps"].as_array_mut().unwrap().push(json!(
        {"id": "fb-web", "platform": "web", "origins": ["https://fb.example.com"],
         "token_app_ids": ["1:123:web:ghi"]}
    ));
    v["routes"].as_array_mut().unwrap().push(json!(
        {"name": "mobile-appcheck", "match": {"prefix": "/mobile-appcheck/"},
         "platforms": ["android", "ios"], "tokens": ["firebase"]}
    ));
    let w = World::from(v);
    let web = firebase_token("1:123:web:ghi");
    for extra in [
        vec![],
        vec![("origin", "https://fb.example.com")],
        vec![("x-android-package", "com.example.fb")],
        vec![("referer", "https://elsewhere.example/")],
    ] {
        let mut hs = vec![("x-firebase-appcheck", web.as_str())];
        hs.extend(extra.iter().copied());
        assert_eq!(
            w.reason("/mobile-appcheck/x", &hs),
            Some(Reason::PlatformDenied),
            "{extra:?}"
        );
    }
    let android = firebase_token("1:123:android:abc");
    assert_eq!(
        w.reason(
            "/mobile-appcheck/x",
            &[
                ("x-firebase-appcheck", &android),
                ("x-android-package", "com.example.fb")
            ]
        ),
        None
    );
    // An app's token with another app's headers is still a mismatch.
    assert_eq!(
        w.reason(
            "/mobile-appcheck/x",
            &[
                ("x-firebase-appcheck", &android),
                ("x-ios-bundle-identifier", "com.example.fb")
            ]
        ),
        Some(Reason::AppMismatch)
    );
}

#[test]
fn verified_tokens_are_cached_but_rules_still_run() {
    let w = World::new();
    let t = firebase_token("1:123:android:abc");
    assert_eq!(
        w.reason("/appcheck/x", &[("x-firebase-appcheck", &t)]),
        None
    );
    assert_eq!(w.cache.borrow().len(), 1);
    assert_eq!(
        w.reason("/appcheck/x", &[("x-firebase-appcheck", &t)]),
        None
    );
    // a cached token with mismatching headers is still refused
    assert_eq!(
        w.reason(
            "/appcheck/x",
            &[
                ("x-firebase-appcheck", &t),
                ("origin", "https://app.example.com")
            ]
        ),
        Some(Reason::AppMismatch)
    );
}

#[test]
fn monitor_mode_keeps_the_grant_and_records_the_reason() {
    let mut v = config_json();
    v["mode"] = json!("monitor");
    let w = World::from(v);
    let (d, _) = w.run(
        "/mobile/a",
        "198.51.100.1",
        &[
            ("x-api-key", "key-web"),
            ("origin", "https://app.example.com"),
        ],
    );
    match d {
        Decision::Allow(g) => {
            assert_eq!(g.would_deny, Some(Reason::PlatformDenied));
            assert!(g
                .set_headers
                .contains(&("x-appguard-key-id".into(), "k-web".into())));
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn many_api_keys_are_found_by_digest() {
    // 20,000 keys: each found, the last as the first, and a key that is
    // not configured is not (the lookup is by digest, not a scan).
    let keys: Vec<Value> = (0..20_000)
        .map(|i| json!({"id": format!("k{i}"), "sha256": hash_api_key(&format!("secret-{i}"))}))
        .collect();
    let c = Config::from_json(
        json!({"api_keys": {"keys": keys}, "routes": [{"name": "r", "match": {"prefix": "/"}, "api_key": "required"}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    for i in [0, 1, 9_999, 19_999] {
        let (at, key) = c.api_keys.lookup(&format!("secret-{i}")).unwrap();
        assert_eq!((at, key.id.as_str()), (i, format!("k{i}").as_str()));
    }
    assert!(c.api_keys.lookup("secret-20000").is_none());
    assert!(c.api_keys.lookup("").is_none());
}

#[test]
fn identity_config_errors_name_the_field() {
    let err = |patch: &dyn Fn(&mut Value)| {
        let mut v = config_json();
        patch(&mut v);
        Config::from_json(v.to_string().as_bytes()).unwrap_err()
    };
    assert_eq!(
        err(&|v| v["apps"][0]["bundle_id"] = json!("x")).path,
        "apps[0].bundle_id"
    );
    assert_eq!(
        err(&|v| v["apps"][0]["cert_fingerprints"] = json!(["zz"])).path,
        "apps[0].cert_fingerprints[0]"
    );
    // One header, one meaning: read as a package and a bundle id, every
    // request that sends it would be two platforms.
    for (field, value, other) in [
        (
            "ios_bundle_id",
            "x-android-package",
            "platform_headers.android_package",
        ),
        (
            "ios_team_id",
            "X_Android_Cert",
            "platform_headers.android_cert",
        ),
        ("android_package", "x-api-key", "api_keys.header"),
    ] {
        let e = err(&|v| v["platform_headers"] = json!({field: value}));
        assert_eq!(e.path, format!("platform_headers.{field}"), "{value}");
        assert!(e.message.contains(other), "{e}");
    }
    // Apple's form only: a lower-case or short team id would refuse every
    // request that sends the real one.
    for team in ["abcde12345", "ABC", "ABCDE-1234", "ABCDE123456"] {
        let at = config_json()["apps"]
            .as_array()
            .unwrap()
            .iter()
            .position(|a| a["platform"] == "ios")
            .unwrap();
        let e = err(&|v| v["apps"][at]["team_id"] = json!(team));
        assert_eq!(e.path, format!("apps[{at}].team_id"), "{team}");
    }
    assert_eq!(
        err(&|v| v["apps"][2]["origins"] = json!(["https://a.*.com"])).path,
        "apps[2].origins[0]"
    );
    assert_eq!(
        err(&|v| v["apps"][3]["cidrs"] = json!(["10.0.0.1/8"])).path,
        "apps[3].cidrs[0]"
    );
    assert_eq!(
        err(&|v| v["api_keys"]["keys"][0]["sha256"] = json!("key-android")).path,
        "api_keys.keys[0].sha256"
    );
    assert_eq!(
        err(&|v| v["api_keys"]["keys"][0]["apps"] = json!(["ghost"])).path,
        "api_keys.keys[0].apps[0]"
    );
    // An id that is the key itself would go upstream and into logs.
    let e = err(&|v| {
        v["api_keys"]["keys"][1]["id"] = json!("k-1Sup3r");
        v["api_keys"]["keys"][1]["sha256"] = json!(hash_api_key("k-1Sup3r"));
    });
    assert_eq!(e.path, "api_keys.keys[1].id");
    assert!(e.message.contains("is the key itself"), "{}", e.message);
    assert!(!e.to_string().contains("k-1Sup3r"), "{e}");
    assert_eq!(
        err(&|v| v["api_keys"]["keys"][4]["routes"] = json!(["ghost"])).path,
        "api_keys.keys[4].routes[0]"
    );
    assert_eq!(
        err(&|v| v["routes"][3]["tokens"] = json!(["ghost"])).path,
        "routes[3].tokens[0]"
    );
    assert_eq!(
        err(&|v| v["routes"][0]["platforms"] = json!(["desktop"])).path,
        "routes[0].platforms[0]"
    );
    assert_eq!(
        err(&|v| v["network"]["country_deny"] = json!(["North Korea"])).path,
        "network.country_deny[0]"
    );
    assert_eq!(
        err(&|v| v["network"]["ip_allow"] = json!(["x"])).path,
        "network.ip_allow[0]"
    );
}

fn limits_world() -> World {
    World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "phone": {"default_calling_code": "44", "denied_prefixes": ["+882", "+44 70"], "hash_key_base64": STANDARD.encode([5u8; 32])},
        "routes": [
            {"name": "sms", "match": {"path": "/sms"}, "failure_mode": "deny", "max_body_bytes": 256,
             "rate_limits": [
                {"entries": [{"type": "client_ip", "v4_prefix": 24}], "local": {"requests": 2, "per": "minute"}},
                {"entries": [{"type": "route"}, {"type": "body", "pointer": "/to", "phone": true}]}
             ]},
            {"name": "open", "match": {"prefix": "/open"}, "failure_mode": "allow",
             "rate_limits": [{"entries": [{"type": "header", "name": "x-user"}]}]}
        ]
    }))
}

impl World {
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            config: &self.config,
            store: &self.store,
            bucket_salt: BucketSalt::new([7; 16]),
            token_cache: &self.cache,
            remote_keys: &[],
            key_fetch: KeyFetch::NotNow,
            service_cache: &self.over,
            key_memo: &self.keys,
            negative: &self.neg,
            now_ms: NOW * 1000,
        }
    }

    /// Headers, then the body phase when asked; returns the final step
    /// (Done or NeedRateLimit).
    fn post(&self, path: &str, ip: &str, hs: &[(&str, &str)], body: &str) -> Step {
        let mut all = vec![
            (":method", "POST"),
            (":path", path),
            (":authority", "api.example.com"),
        ];
        // A JSON body unless the test says otherwise.
        if !hs.iter().any(|(n, _)| *n == "content-type") {
            all.push(("content-type", "application/json"));
        }
        all.extend_from_slice(hs);
        let h = headers(&all);
        let req = Request::new(&h, Some(ip.parse().unwrap()));
        match evaluate(&self.ctx(), &req, NOW) {
            Step::NeedBody(p) => evaluate_body(&self.ctx(), &req, body.as_bytes(), p, NOW),
            s => s,
        }
    }
}

fn rls_descriptors(call: &RlsCall) -> Vec<Vec<(String, String)>> {
    rls_hits(call).into_iter().map(|(d, _)| d).collect()
}

#[test]
fn body_values_are_read_only_from_a_body_declared_as_plain_json() {
    // An upstream that also takes forms would read its own `to` from this
    // body, past the denied prefix and the per-number limit.
    let w = limits_world();
    let smuggled = r#"{"to":"+447700900123","x":"&to=%2B88212345678&y="}"#;
    // A new /24 each time: the route's local limit is 2 a minute per /24.
    let n = std::cell::Cell::new(0);
    let reason = |hs: &[(&str, &str)]| {
        n.set(n.get() + 1);
        let ip = format!("198.{}.77.1", n.get());
        match w.post("/sms", &ip, hs, smuggled) {
            Step::Done(d, _) => d.reason(),
            Step::NeedRateLimit(..) => None,
            s => panic!("{hs:?}: {s:?}"),
        }
    };
    for refused in [
        &[("content-type", "application/x-www-form-urlencoded")][..],
        &[("content-type", "text/plain")],
        &[("content-type", "application/jsonx")],
        &[("content-type", "application/+json")],
        &[("content-type", "multipart/form-data; boundary=x")],
        &[("content-type", "")],
        &[
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
        ],
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        &[
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
            ("content-encoding", "br"),
        ],
        // JSON is read as UTF-8: a body an upstream decodes in another
        // charset may hold other keys (`t+AG8-` is `to` in UTF-7).
        &[("content-type", "application/json; charset=utf-7")],
        &[("content-type", "application/json;charset=UTF-16")],
        &[("content-type", "application/json; charset=\"ibm037\"")],
        &[(
            "content-type",
            "application/json; charset=utf-8; charset=utf-16",
        )],
        // A form type first: Rack cuts a type at `,`, PHP at `,` or a
        // space, so these are forms to Rails and PHP, whatever they end
        // with.
        &[(
            "content-type",
            "application/x-www-form-urlencoded, application/vnd.api+json",
        )],
        &[("content-type", "application/x-www-form-urlencoded,+json")],
        &[(
            "content-type",
            "application/x-www-form-urlencoded application/a+json",
        )],
        &[("content-type", "application/json, application/json")],
        &[("content-type", "application /json")],
    ] {
        assert_eq!(reason(refused), Some(Reason::BodyInvalid), "{refused:?}");
    }
    // No Content-Type at all (the helper adds one when none is given).
    let h = headers(&[
        (":method", "POST"),
        (":path", "/sms"),
        (":authority", "api.example.com"),
    ]);
    let req = Request::new(&h, Some("198.51.77.2".parse().unwrap()));
    match evaluate(&w.ctx(), &req, NOW) {
        Step::NeedBody(p) => match evaluate_body(&w.ctx(), &req, smuggled.as_bytes(), p, NOW) {
            Step::Done(d, _) => assert_eq!(d.reason(), Some(Reason::BodyInvalid)),
            s => panic!("{s:?}"),
        },
        s => panic!("{s:?}"),
    }
    for accepted in [
        &[("content-type", "application/json")][..],
        &[("content-type", "Application/JSON; charset=utf-8")],
        &[("content-type", "application/json;charset=\"UTF-8\"")],
        &[("content-type", "application/json; charset=utf8; v=1")],
        &[("content-type", "application/json; Charset = us-ascii")],
        &[("content-type", "application/json; charset=ISO-8859-1")],
        &[("content-type", "application/json; charset=windows-1252")],
        &[("content-type", "application/vnd.api+json")],
        &[
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
        ],
        &[
            ("content-type", "application/json"),
            ("content-type", "application/json"),
        ],
    ] {
        assert_eq!(reason(accepted), None, "{accepted:?}");
    }
}

#[test]
fn a_trunk_zero_after_the_calling_code_is_the_same_phone() {
    // Gateways deliver `+44 07700 900123` to `+44 7700 900123`: one limit,
    // and `+44 070 …` is the denied `+44 70 …`.
    let w = limits_world();
    let descriptors =
        |to: &str| match w.post("/sms", "198.51.9.1", &[], &json!({"to": to}).to_string()) {
            Step::NeedRateLimit(_, call) => rls_descriptors(&call),
            s => panic!("{to}: {s:?}"),
        };
    assert_eq!(
        descriptors("+44 07700 900123"),
        descriptors("+44 7700 900123")
    );
    match w.post(
        "/sms",
        "198.51.9.2",
        &[],
        &json!({"to": "+44 070 1234 5678"}).to_string(),
    ) {
        Step::Done(d, _) => assert_eq!(d.reason(), Some(Reason::PhoneDenied)),
        s => panic!("{s:?}"),
    }
    // Two trunk zeros: no number, where a gateway dropping both would
    // reach `+44 70 …` past the denied prefix.
    match w.post(
        "/sms",
        "198.51.9.3",
        &[],
        &json!({"to": "+44 00 70 1234 5678"}).to_string(),
    ) {
        Step::Done(d, _) => assert_eq!(d.reason(), Some(Reason::BodyInvalid)),
        s => panic!("{s:?}"),
    }
}

#[test]
fn a_carriers_international_prefix_does_not_take_a_number_past_denied_prefixes() {
    // South Korea dials abroad with `001`, `002`, `005`, `008`: an upstream
    // parsing for `KR` (libphonenumber) reads `002 371 …` as `+371 …`,
    // which `00` alone reads as `+2371 …`.
    let outcome = |w: &World, to: &str| {
        let body = json!({"to": to, "msg": {"lang": "en"}}).to_string();
        sms_outcome(w, "/sms", &body).0
    };
    let w = sms_world(json!({"default_calling_code": "82",
                             "denied_prefixes": ["+882", "+371"],
                             "hash_key_base64": STANDARD.encode([5u8; 32])}));
    assert_eq!(outcome(&w, "+371 2123 4567"), Some(Reason::PhoneDenied));
    for to in [
        "002 371 2123 4567",
        "008 371 2123 4567",
        "002 882 1234 5678",
        "005 882 1234 5678",
    ] {
        assert_eq!(outcome(&w, to), Some(Reason::PhoneDenied), "{to}");
    }
    // `00700 …` is `+7 00…` to `00` alone: outside `+7`'s plan, refused.
    assert_eq!(
        outcome(&w, "00700 882 1234 5678"),
        Some(Reason::BodyInvalid)
    );
    // A number no reading denies goes on, counted as `00` reads it.
    assert_eq!(outcome(&w, "0044 7700 900123"), None);
    // Under a country whose only prefix is `00`, `002 …` stays `+2 …`.
    let w = sms_world(json!({"default_calling_code": "44",
                             "denied_prefixes": ["+882"],
                             "hash_key_base64": STANDARD.encode([5u8; 32])}));
    assert_eq!(outcome(&w, "002 882 1234 5678"), None);
}

#[test]
fn phone_formats_give_one_descriptor_and_denied_prefixes_are_refused() {
    let w = limits_world();
    let mut seen = Vec::new();
    for (i, to) in [
        "+44 7700 900123",
        "0044-7700-900-123",
        "07700 900123",
        "(0)7700.900.123",
    ]
    .iter()
    .enumerate()
    {
        let ip = format!("198.51.{i}.1");
        match w.post(
            "/sms",
            &ip,
            &[],
            &json!({"to": to, "text": "hi"}).to_string(),
        ) {
            Step::NeedRateLimit(_, call) => seen.push(rls_descriptors(&call)),
            s => panic!("{to}: {s:?}"),
        }
    }
    assert!(seen.windows(2).all(|p| p[0] == p[1]), "{seen:?}");
    let d = &seen[0][0];
    assert_eq!(d[0], ("route".to_string(), "sms".to_string()));
    assert_eq!(d[1].0, "phone");
    assert!(!d[1].1.contains("7700"), "the number is hashed: {}", d[1].1);
    assert_eq!(d[1].1.len(), 32);
    let reason = |to: &str| match w.post("/sms", "192.0.2.50", &[], &json!({"to": to}).to_string())
    {
        Step::Done(d, _) => d.reason(),
        Step::NeedRateLimit(..) => None,
        s => panic!("{s:?}"),
    };
    assert_eq!(reason("+882 123 456 789"), Some(Reason::PhoneDenied));
    assert_eq!(reason("070 1234 5678"), Some(Reason::PhoneDenied));
    // A calling code written without `+`: `44 70 1234 5678` is the
    // national `+44 4470 …` here, and `+44 70 …` to libphonenumber
    // (`GB`), which drops a calling code that makes the number too long.
    assert_eq!(reason("44 70 1234 5678"), Some(Reason::PhoneDenied));
    assert_eq!(reason("4470 1234 5678"), Some(Reason::PhoneDenied));
    assert_eq!(
        reason("+44 7(0) 1234 5678"),
        Some(Reason::PhoneDenied),
        "(0) past the calling code is a digit"
    );
    assert_eq!(
        reason("+44 77OO 900123"),
        Some(Reason::BodyInvalid),
        "letters"
    );
    // A JSON integer is a national number; a negative one is no number at
    // all (its `-` is not a separator there: the upstream reads a negative
    // integer, which one gateway may print as `-882…`, another refuse).
    let number = |n: i64| match w.post("/sms", "192.0.2.51", &[], &json!({"to": n}).to_string()) {
        Step::Done(d, _) => d.reason(),
        Step::NeedRateLimit(..) => None,
        s => panic!("{s:?}"),
    };
    assert_eq!(number(7_700_900_123), None);
    assert_eq!(number(-7_700_900_123), Some(Reason::BodyInvalid));
    assert_eq!(number(-88_212_345_678), Some(Reason::BodyInvalid));
}

#[test]
fn bodies_that_cannot_be_read_are_body_invalid_or_too_large() {
    let w = limits_world();
    let reason = |body: &str| w.post("/sms", "192.0.2.60", &[], body).done_reason();
    assert_eq!(reason("not json"), Some(Reason::BodyInvalid));
    assert_eq!(
        reason(r#"{"text": "no number"}"#),
        Some(Reason::BodyInvalid)
    );
    assert_eq!(
        reason(r#"{"to": "+447700900123", "to": "+447700900124"}"#),
        Some(Reason::BodyInvalid),
        "duplicate keys"
    );
    // A Go or ASP.NET upstream reads "To" as "to" (the last one wins): it
    // would deliver to the number appguard did not check.
    assert_eq!(
        reason(r#"{"to": "+447700900123", "To": "+882 123 456 789"}"#),
        Some(Reason::BodyInvalid),
        "keys that differ only in case"
    );
    assert_eq!(
        reason(&format!("{}1{}", "[".repeat(100), "]".repeat(100))),
        Some(Reason::BodyInvalid),
        "deep"
    );
    assert_eq!(
        reason(&format!(
            r#"{{"to": "+447700900123", "pad": "{}"}}"#,
            "x".repeat(300)
        )),
        Some(Reason::BodyTooLarge)
    );
}

/// A body declared longer than the route reads is refused from its
/// headers, before any byte of it: a held request would otherwise wait for
/// bytes that may never come. Up to the limit, the body is asked for.
#[test]
fn a_body_declared_over_the_route_limit_is_refused_from_the_headers() {
    let w = limits_world();
    let eval = |len: &str| {
        let h = headers(&[
            (":method", "POST"),
            (":path", "/sms"),
            (":authority", "api.example.com"),
            ("content-type", "application/json"),
            ("content-length", len),
        ]);
        let req = Request::new(&h, Some("192.0.2.60".parse().unwrap()));
        evaluate(&w.ctx(), &req, NOW)
    };
    match eval("257") {
        Step::Done(d, _) => assert_eq!(d.reason(), Some(Reason::BodyTooLarge)),
        s => panic!("{s:?}"),
    }
    match eval(" 18446744073709551615 ") {
        Step::Done(d, _) => assert_eq!(d.reason(), Some(Reason::BodyTooLarge)),
        s => panic!("{s:?}"),
    }
    for len in ["256", "0", "x"] {
        assert!(matches!(eval(len), Step::NeedBody(_)), "{len}");
    }
}

#[test]
fn local_limit_then_429_with_headers() {
    let w = limits_world();
    let body = json!({"to": "+447700900123"}).to_string();
    for _ in 0..2 {
        assert!(matches!(
            w.post("/sms", "203.0.113.7", &[], &body),
            Step::NeedRateLimit(..)
        ));
    }
    // same /24, third request
    match w.post("/sms", "203.0.113.99", &[], &body) {
        Step::Done(Decision::Deny(d), _) => {
            assert_eq!(d.reason, Reason::RateLimited);
            let h: HashMap<_, _> = d.headers.into_iter().collect();
            assert_eq!(h.get("x-ratelimit-limit").map(String::as_str), Some("2"));
            assert_eq!(
                h.get("x-ratelimit-remaining").map(String::as_str),
                Some("0")
            );
            assert_eq!(h.get("retry-after").map(String::as_str), Some("30"));
        }
        s => panic!("{s:?}"),
    }
}

fn over_limit_response(reset: i64) -> RateLimitResponse {
    use crate::ratelimit::rls::*;
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![DescriptorStatus {
            code: Code::OverLimit as i32,
            current_limit: Some(RateLimit {
                name: String::new(),
                requests_per_unit: 5,
                unit: Unit::Minute as i32,
            }),
            limit_remaining: 0,
            duration_until_reset: Some(Duration {
                seconds: reset,
                nanos: 0,
            }),
        }],
        ..Default::default()
    }
}

#[test]
fn service_over_limit_is_cached_and_failures_follow_the_failure_mode() {
    let w = limits_world();
    let body = json!({"to": "+447700900123"}).to_string();
    let Step::NeedRateLimit(p, _) = w.post("/sms", "192.0.2.1", &[], &body) else {
        panic!()
    };
    let resp = over_limit_response(42);
    match evaluate_rls(&w.ctx(), p, Ok(&resp), NOW) {
        Step::Done(Decision::Deny(d), _) => {
            assert_eq!(d.reason, Reason::RateLimited);
            assert!(
                d.headers.contains(&("retry-after".into(), "42".into())),
                "{:?}",
                d.headers
            );
            assert!(d
                .headers
                .contains(&("x-ratelimit-limit".into(), "5".into())));
        }
        s => panic!("{s:?}"),
    }
    // same descriptor: refused locally, no call
    match w.post("/sms", "192.0.3.2", &[], &body) {
        Step::Done(Decision::Deny(d), _) => assert_eq!(d.reason, Reason::RateLimited),
        s => panic!("expected a local 429: {s:?}"),
    }
    // another number still goes to the service
    assert!(matches!(
        w.post(
            "/sms",
            "192.0.4.3",
            &[],
            &json!({"to": "+447700900999"}).to_string()
        ),
        Step::NeedRateLimit(..)
    ));
    // service down: deny on /sms, allow on /open
    let Step::NeedRateLimit(p, _) = w.post(
        "/sms",
        "192.0.5.4",
        &[],
        &json!({"to": "+447700900555"}).to_string(),
    ) else {
        panic!()
    };
    assert_eq!(
        evaluate_rls(&w.ctx(), p, Err(()), NOW).done_reason(),
        Some(Reason::RatelimitUnavailable)
    );
    let Step::NeedRateLimit(p, call) = w.post("/open/x", "192.0.2.4", &[("x-user", "u1")], "")
    else {
        panic!()
    };
    assert_eq!(
        rls_descriptors(&call),
        vec![vec![("x-user".to_string(), "u1".to_string())]]
    );
    assert_eq!(evaluate_rls(&w.ctx(), p, Err(()), NOW).done_reason(), None);
    // no header: descriptor skipped, no call at all
    assert!(matches!(
        w.post("/open/x", "192.0.2.4", &[], ""),
        Step::Done(Decision::Allow(_), _)
    ));
}

#[test]
fn a_cached_429_lasts_from_the_call_not_from_the_answer() {
    // The service's reset is counted from its own clock reading, made
    // while the call was out: an answer that comes back in the next
    // second must not hold the 429 for a second more.
    let w = limits_world();
    let get = |now_ms: u64| {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/open/x"),
            (":authority", "api.example.com"),
            ("x-user", "u1"),
        ]);
        let req = Request::new(&h, Some("192.0.2.4".parse().unwrap()));
        let ctx = Ctx { now_ms, ..w.ctx() };
        evaluate(&ctx, &req, now_ms / 1000)
    };
    let sent = NOW * 1000 + 900;
    let answered = (NOW + 1) * 1000 + 200;
    for (reset, cached) in [(1, false), (2, true)] {
        let Step::NeedRateLimit(p, _) = get(sent) else {
            panic!("a call")
        };
        let ctx = Ctx {
            now_ms: answered,
            ..w.ctx()
        };
        let resp = over_limit_response(reset);
        assert_eq!(
            evaluate_rls(&ctx, p, Ok(&resp), answered / 1000).done_reason(),
            Some(Reason::RateLimited)
        );
        match get(answered + 100) {
            Step::Done(Decision::Deny(d), _) if cached => assert_eq!(d.reason, Reason::RateLimited),
            Step::NeedRateLimit(..) if !cached => {}
            s => panic!("reset {reset}: {s:?}"),
        }
        *w.over.borrow_mut() = ServiceCache::new(&BucketSalt::new([7; 16]));
    }
}

impl Step {
    fn done_reason(&self) -> Option<Reason> {
        match self {
            Step::Done(d, _) => d.reason(),
            s => panic!("{s:?}"),
        }
    }
}

/// One HS256 provider `t` (header `x-t`) with a failure budget of 3 per
/// minute, on the route `r` for every path.
fn budgeted_world() -> World {
    World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "failure_budget": {"failures": 3, "window_seconds": 60}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
    }))
}

/// A token MACed with another secret than [`budgeted_world`]'s: a forgery,
/// one per `i`.
fn forged(i: u32) -> String {
    hs256_raw(
        &[9u8; 64],
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "n": i}),
    )
}

#[test]
fn a_worker_remembers_a_spent_budget_by_network_not_by_address() {
    // The budget counts a /64: a spent /64 that changes its address each
    // request must still be refused from the worker's memory (a map
    // lookup), not by hashing each token and reading shared data again.
    let w = budgeted_world();
    for i in 0..4 {
        let ip = format!("2001:db8:1:2::{i}");
        w.run("/x", &ip, &[("x-t", &forged(i))]);
    }
    // with the shared table gone, only the worker's memory can refuse
    w.store.clear();
    let (d, f) = w.run("/x", "2001:db8:1:2:ffff::7", &[("x-t", "not-a-token")]);
    assert_eq!(
        (d.reason(), f.budget_refused),
        (Some(Reason::TokenSignature), true)
    );
    // another /64 is another client
    let (d, f) = w.run("/x", "2001:db8:1:3::1", &[("x-t", &forged(9))]);
    assert_eq!(
        (d.reason(), f.budget_refused),
        (Some(Reason::TokenSignature), false)
    );
}

#[test]
fn failed_signatures_are_cached_and_a_client_budget_stops_verification() {
    let w = budgeted_world();
    let run = |ip: &str, t: &str| w.run("/x", ip, &[("x-t", t)]);
    // three distinct forgeries from one client: verified and refused
    for i in 0..3 {
        let (d, f) = run("198.51.100.9", &forged(i));
        assert_eq!(d.reason(), Some(Reason::TokenSignature));
        assert!(!f.budget_refused, "{i}");
    }
    // budget spent: refused without verification, even a valid token
    let good = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let (d, f) = run("198.51.100.9", &good);
    assert_eq!(d.reason(), Some(Reason::TokenSignature));
    assert!(f.budget_refused);
    // a spent client's tokens are not even parsed: garbage gets the same answer
    let (d, f) = run("198.51.100.9", "not-a-token");
    assert_eq!(d.reason(), Some(Reason::TokenSignature));
    assert!(f.budget_refused);
    // the worker remembers the spent budget until it refills (20 s here),
    // without reading shared data again: with the shared bucket gone, the
    // client is still refused
    assert!(w
        .neg
        .borrow()
        .budget_spent(0, "198.51.100.9".parse().unwrap(), NOW * 1000));
    assert!(!w
        .neg
        .borrow()
        .budget_spent(0, "198.51.100.9".parse().unwrap(), NOW * 1000 + 20_000));
    w.store.clear();
    let (d, f) = run("198.51.100.9", "still-not-a-token");
    assert_eq!(d.reason(), Some(Reason::TokenSignature));
    assert!(f.budget_refused);
    // another client is unaffected, and a failed token stays refused (negative cache)
    assert_eq!(run("198.51.100.10", &good).0.reason(), None);
    // a token verified already (now in the cache) passes, even from the spent client
    assert_eq!(run("198.51.100.9", &good).0.reason(), None);
    assert_eq!(w.neg.borrow().map.len(), 3);
    let (d, f) = run("198.51.100.11", &forged(0));
    assert_eq!(d.reason(), Some(Reason::TokenSignature));
    assert!(!f.budget_refused, "negative cache, not the budget");
    assert_eq!(w.neg.borrow().map.len(), 3, "no new verification");
    // cheap refusals never touch the budget: expired tokens from a fresh client
    for _ in 0..10 {
        let t = hs256_raw(
            &[9u8; 64],
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW - 100}),
        );
        assert_eq!(
            run("198.51.100.12", &t).0.reason(),
            Some(Reason::TokenExpired)
        );
    }
    assert_eq!(run("198.51.100.12", &good).0.reason(), None);
}

#[test]
fn jwks_unavailable_follows_the_route_failure_mode() {
    let w = World::from(json!({
        "tokens": [{"name": "r", "from": [{"header": "x-t"}], "remote_jwks": {"cluster": "jwks", "path": "/jwks"}}],
        "routes": [
            {"name": "strict", "match": {"prefix": "/strict"}, "tokens": ["r"]},
            {"name": "open", "match": {"prefix": "/open"}, "tokens": ["r"], "failure_mode": "allow"}
        ]
    }));
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k"}),
        &json!({"exp": NOW + 60}),
    );
    let (d, f) = w.run("/strict", "192.0.2.1", &[("x-t", &t)]);
    assert_eq!(d.reason(), Some(Reason::JwksUnavailable));
    assert_eq!(Reason::JwksUnavailable.status(), 503);
    assert_eq!(f.degraded, None);
    let (d, f) = w.run("/open", "192.0.2.1", &[("x-t", &t)]);
    assert_eq!(d.reason(), None, "fails open as configured");
    assert_eq!(f.degraded, Some(Reason::JwksUnavailable));
    assert!(f.token.is_none(), "the token was not trusted");
    // Failing open does not let through what needs no key to refuse:
    // junk, an expired token, one past the lifetime cap.
    let (d, f) = w.run("/open", "192.0.2.1", &[("x-t", "x")]);
    assert_eq!(d.reason(), Some(Reason::TokenMalformed));
    assert_eq!(f.degraded, None);
    let expired = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k"}),
        &json!({"exp": NOW - 60}),
    );
    let (d, _) = w.run("/open", "192.0.2.1", &[("x-t", &expired)]);
    assert_eq!(d.reason(), Some(Reason::TokenExpired));
    let long = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k"}),
        &json!({"exp": NOW + 86_400, "iat": NOW}),
    );
    let (d, _) = w.run("/open", "192.0.2.1", &[("x-t", &long)]);
    assert_eq!(d.reason(), Some(Reason::TokenLifetime));
    // With no token at all the route still asks for one.
    let (d, _) = w.run("/open", "192.0.2.1", &[]);
    assert_eq!(d.reason(), Some(Reason::TokenMissing));
    // Junk is malformed whether keys are there or not, on a route that
    // fails closed too (not a 503 that blames the JWKS).
    let (d, _) = w.run("/strict", "192.0.2.1", &[("x-t", "x")]);
    assert_eq!(d.reason(), Some(Reason::TokenMalformed));
}

#[test]
fn both_dependencies_failing_open_keep_the_identity_one() {
    // Keys missing and the service down on one request: the upstream must
    // still learn that identity rested on headers alone.
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "d", "failure_mode": "allow"},
        "tokens": [{"name": "r", "from": [{"header": "x-t"}], "remote_jwks": {"cluster": "jwks", "path": "/jwks"}}],
        "routes": [{"name": "open", "match": {"prefix": "/open"}, "tokens": ["r"], "failure_mode": "allow",
                    "rate_limits": [{"entries": [{"type": "client_ip"}]}]}]
    }));
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k"}),
        &json!({"exp": NOW + 60}),
    );
    let Step::NeedRateLimit(p, _) = w.post("/open/x", "192.0.2.9", &[("x-t", &t)], "") else {
        panic!("the limits go to the service")
    };
    match evaluate_rls(&w.ctx(), p, Err(()), NOW) {
        Step::Done(d, f) => assert_eq!(
            (d.reason(), f.degraded),
            (None, Some(Reason::JwksUnavailable))
        ),
        s => panic!("{s:?}"),
    }
}

#[test]
fn a_rate_limit_service_that_fails_open_does_not_open_the_token_check() {
    // `rate_limit_service.failure_mode: allow` is the routes' default for
    // the limiter; a JWKS without keys fails open only where the route
    // itself says so.
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "d", "failure_mode": "allow"},
        "tokens": [{"name": "r", "from": [{"header": "x-t"}], "remote_jwks": {"cluster": "jwks", "path": "/jwks"}}],
        "routes": [
            {"name": "inherits", "match": {"prefix": "/inherits"}, "tokens": ["r"]},
            {"name": "open", "match": {"prefix": "/open"}, "tokens": ["r"], "failure_mode": "allow"}
        ]
    }));
    assert_eq!(w.config.routes[0].failure_mode, FailureMode::Allow);
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k"}),
        &json!({"exp": NOW + 60}),
    );
    let (d, _) = w.run("/inherits", "192.0.2.1", &[("x-t", &t)]);
    assert_eq!(d.reason(), Some(Reason::JwksUnavailable));
    let (d, f) = w.run("/open", "192.0.2.1", &[("x-t", &t)]);
    assert_eq!(
        (d.reason(), f.degraded),
        (None, Some(Reason::JwksUnavailable))
    );
}

thread_local! {
    static PEER_READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn counted_peer() -> Option<std::net::IpAddr> {
    PEER_READS.with(|c| c.set(c.get() + 1));
    "192.0.2.7".parse().ok()
}

#[test]
fn the_downstream_address_is_read_only_when_a_check_needs_it() {
    let run = |w: &World, path: &str, hs: &[(&str, &str)]| {
        let mut all = vec![(":method", "GET"), (":path", path), (":authority", "a")];
        all.extend_from_slice(hs);
        let h = headers(&all);
        let ctx = w.ctx();
        PEER_READS.with(|c| c.set(0));
        let req = Request::with_peer(&h, crate::request::Peer::Lazy(counted_peer));
        let step = evaluate(&ctx, &req, NOW);
        let reads = PEER_READS.with(|c| c.get());
        match step {
            Step::Done(d, f) => (d.reason(), f.client_ip, reads),
            s => panic!("{s:?}"),
        }
    };
    let token = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let ip = "192.0.2.7".parse().ok();
    // no IP rule anywhere, and no signature has failed yet: no client's
    // failure budget can be spent, so verifying a new token needs no
    // address; the same token again, from the cache, needs none either
    let plain = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
    }));
    assert_eq!(run(&plain, "/x", &[("x-t", &token)]), (None, None, 0));
    assert_eq!(run(&plain, "/x", &[("x-t", &token)]), (None, None, 0));
    // a failure is counted against the client's budget (one read) ...
    let forged = hs256_raw(
        &[7u8; 64],
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60}),
    );
    assert_eq!(
        run(&plain, "/x", &[("x-t", &forged)]),
        (Some(Reason::TokenSignature), ip, 1)
    );
    // ... and from then on, within the budget's window, a new token's
    // client budget is consulted again (one read)
    let other = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "n": 2}),
    );
    assert_eq!(run(&plain, "/x", &[("x-t", &other)]), (None, ip, 1));
    // IP rules read it once, however many checks use it
    let ruled = World::from(json!({
        "network": {"ip_deny": ["203.0.113.0/24"]},
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("key-1"), "ips": ["192.0.2.0/24"]}]},
        "routes": [{"name": "r", "match": {"prefix": "/"}, "api_key": "required",
                    "network": {"ip_allow": ["192.0.2.0/24"]},
                    "rate_limits": [{"entries": [{"type": "client_ip"}], "local": {"requests": 5, "per": "minute"}}]}]
    }));
    assert_eq!(run(&ruled, "/x", &[("x-api-key", "key-1")]), (None, ip, 1));
    // the world's main config (a server app, global IP rules) as well
    let w = World::new();
    let (_, f, reads) = run(&w, "/open/x", &[]);
    assert_eq!((f, reads), (ip, 1));
}

#[test]
fn a_budget_spent_on_one_worker_stops_verification_on_another() {
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "failure_budget": {"failures": 2, "window_seconds": 60}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
    }));
    // Worker B: the same instance's shared data, its own caches.
    let b_cache = RefCell::new(TokenCache::default());
    let b_neg = RefCell::new(NegativeCache::default());
    let on_b = |ip: &str, token: &str| {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "a"),
            ("x-t", token),
        ]);
        let ctx = Ctx {
            config: &w.config,
            store: &w.store,
            bucket_salt: BucketSalt::new([7; 16]),
            token_cache: &b_cache,
            remote_keys: &[],
            key_fetch: KeyFetch::NotNow,
            service_cache: &w.over,
            key_memo: &w.keys,
            negative: &b_neg,
            now_ms: NOW * 1000,
        };
        match evaluate(&ctx, &Request::new(&h, ip.parse().ok()), NOW) {
            Step::Done(d, f) => (d.reason(), f.budget_refused),
            s => panic!("{s:?}"),
        }
    };
    let valid = |n: u32| {
        hs256_raw(
            SECRET,
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60, "n": n}),
        )
    };
    // Before any failure B verifies new tokens from anyone.
    assert_eq!(on_b("198.51.100.20", &valid(0)), (None, false));
    // Worker A sees two forgeries from one client: its budget is spent.
    for i in 0..2 {
        let forged = hs256_raw(
            &[9u8; 64],
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60, "n": i}),
        );
        let (d, f) = w.run("/x", "198.51.100.20", &[("x-t", &forged)]);
        assert_eq!(d.reason(), Some(Reason::TokenSignature));
        assert!(!f.budget_refused);
    }
    // B has seen no failure itself, yet refuses that client's new tokens
    // without verifying them, and still verifies another client's.
    assert_eq!(
        on_b("198.51.100.20", &valid(1)),
        (Some(Reason::TokenSignature), true)
    );
    assert_eq!(on_b("198.51.100.21", &valid(2)), (None, false));
    // The token B verified before the budget ran out is cached there.
    assert_eq!(on_b("198.51.100.20", &valid(0)), (None, false));
}

/// A delegated provider's payload is asked of the host (a metadata read in
/// Envoy) only on routes that take that provider's token, once per
/// evaluation; other routes never pay for it.
#[test]
fn delegated_payloads_are_read_only_for_routes_that_need_them() {
    let w = World::from(json!({
        "tokens": [{"name": "mesh", "from": [{"header": "x-token"}],
                    "verified_by": {"key": "mesh_payload"},
                    "issuer": "https://issuer.example", "max_lifetime_seconds": 300}],
        "routes": [
            {"name": "meshed", "match": {"prefix": "/meshed/"}, "tokens": ["mesh"]},
            {"name": "open", "match": {"prefix": "/open/"}}
        ]
    }));
    let reads = std::cell::Cell::new(0);
    let claims: Claims = serde_json::from_value(json!({
        "iss": "https://issuer.example", "iat": NOW - 10, "exp": NOW + 100, "sub": "device-1"
    }))
    .unwrap();
    let read = |p: usize| {
        reads.set(reads.get() + 1);
        (p == 0).then(|| claims.clone())
    };
    let run = |path: &str| {
        let h = headers(&[
            (":method", "GET"),
            (":path", path),
            (":authority", "api.example.com"),
        ]);
        let ctx = w.ctx();
        let mut req = Request::new(&h, Some("198.51.100.1".parse().unwrap()));
        req.delegated = Delegated::Lazy(&read);
        match evaluate(&ctx, &req, NOW) {
            Step::Done(d, _) => d,
            s => panic!("{s:?}"),
        }
    };
    assert_eq!(run("/open/x").reason(), None);
    assert_eq!(
        reads.get(),
        0,
        "a route without the provider read no metadata"
    );
    assert_eq!(run("/meshed/x").reason(), None);
    assert_eq!(
        reads.get(),
        1,
        "one read for the route's delegated provider"
    );
}

/// On a route that takes a delegated provider's token, an `access_token`
/// query parameter is a token appguard cannot tie to the payload it reads
/// (`jwt_authn` verifies it beside the header's, whose payload it keeps;
/// only its first copy; or none, where it reads the header alone or
/// removed it): a used or forged token would reach an upstream that reads
/// it. Refused in any spelling, with or without the header.
#[test]
fn a_delegated_token_beside_an_access_token_parameter_is_refused() {
    let w = World::from(json!({
        "tokens": [{"name": "mesh", "from": [{"header": "authorization", "prefix": "Bearer "}],
                    "verified_by": {"key": "mesh_payload"},
                    "issuer": "https://issuer.example", "max_lifetime_seconds": 300}],
        "routes": [{"name": "meshed", "match": {"prefix": "/meshed/"}, "tokens": ["mesh"]},
                   {"name": "open", "match": {"prefix": "/"}}]
    }));
    let claims: Claims = serde_json::from_value(json!({
        "iss": "https://issuer.example", "iat": NOW - 10, "exp": NOW + 100, "sub": "device-1"
    }))
    .unwrap();
    let read = |p: usize| (p == 0).then(|| claims.clone());
    let run = |path: &str, header: Option<&str>| {
        let mut pairs = vec![
            (":method", "GET"),
            (":path", path),
            (":authority", "api.example.com"),
        ];
        if let Some(v) = header {
            pairs.push(("authorization", v));
        }
        let h = headers(&pairs);
        let ctx = w.ctx();
        let mut req = Request::new(&h, Some("198.51.100.1".parse().unwrap()));
        req.delegated = Delegated::Lazy(&read);
        match evaluate(&ctx, &req, NOW) {
            Step::Done(d, _) => d.reason(),
            s => panic!("{s:?}"),
        }
    };
    let bearer = Some("Bearer a.b.c");
    assert_eq!(run("/meshed/x", bearer), None);
    assert_eq!(run("/meshed/x?access_tokens=1&token=2", bearer), None);
    for query in [
        "access_token=v.v.v",
        "x=1&access_token=",
        "ACCESS_TOKEN=v.v.v",
        "access%5Ftoken=v.v.v",
        "access.token=v.v.v",
        "x=1;access_token=v.v.v",
        "access_token=v.v.v&access_token=w.w.w",
    ] {
        for header in [bearer, Some("x Bearer a.b.c"), None] {
            assert_eq!(
                run(&format!("/meshed/x?{query}"), header),
                Some(Reason::TokenMalformed),
                "{query} {header:?}"
            );
        }
    }
    // Routes without a delegated provider are not concerned.
    assert_eq!(run("/other?access_token=v.v.v", None), None);
}

#[test]
fn delegated_providers_on_one_metadata_key_take_the_payload_of_their_issuer() {
    // Istio writes every RequestAuthentication rule's payload under
    // `payload`: a user JWT provider and an App Check one then read the
    // same entry, and the one whose issuer issued it decides.
    let w = World::from(json!({
        "tokens": [
            {"name": "users", "from": [{"header": "authorization", "prefix": "Bearer "}],
             "verified_by": {"key": "payload"}, "issuer": "https://idp.example"},
            {"name": "appcheck", "from": [{"header": "x-firebase-appcheck"}],
             "verified_by": {"key": "payload"}, "issuer": "https://firebaseappcheck.googleapis.com/123"}
        ],
        "routes": [
            {"name": "either", "match": {"prefix": "/either/"}, "tokens": ["users", "appcheck"]},
            {"name": "users", "match": {"prefix": "/users/"}, "tokens": ["users"]}
        ]
    }));
    let payload = |iss: &str| -> Claims {
        serde_json::from_value(json!({
            "iss": iss, "iat": NOW - 10, "exp": NOW + 100, "sub": "1:123:android:abc"
        }))
        .unwrap()
    };
    let run = |path: &str, claims: &Claims| {
        let payloads = [(0usize, claims.clone()), (1usize, claims.clone())];
        let h = headers(&[
            (":method", "GET"),
            (":path", path),
            (":authority", "api.example.com"),
        ]);
        let mut req = Request::new(&h, Some("198.51.100.1".parse().unwrap()));
        req.delegated = Delegated::Known(&payloads);
        match evaluate(&w.ctx(), &req, NOW) {
            Step::Done(d, f) => (d.reason(), f.token.map(|t| t.provider)),
            s => panic!("{s:?}"),
        }
    };
    let appcheck = payload("https://firebaseappcheck.googleapis.com/123");
    assert_eq!(run("/either/x", &appcheck), (None, Some(1)));
    let user = payload("https://idp.example");
    assert_eq!(run("/either/x", &user), (None, Some(0)));
    // Of one issuer, the provider whose audiences take the payload.
    let w2 = World::from(json!({
        "tokens": [
            {"name": "a", "from": [{"header": "x-t"}], "verified_by": {"key": "payload"},
             "issuer": "https://idp.example", "audiences": ["app-a"]},
            {"name": "b", "from": [{"header": "x-t"}], "verified_by": {"key": "payload"},
             "issuer": "https://idp.example", "audiences": ["app-b"]}
        ],
        "routes": [{"name": "both", "match": {"prefix": "/"}, "tokens": ["a", "b"]}]
    }));
    let for_b: Claims = serde_json::from_value(json!({
        "iss": "https://idp.example", "aud": "app-b", "iat": NOW - 10, "exp": NOW + 100
    }))
    .unwrap();
    let payloads = [(0usize, for_b.clone()), (1usize, for_b)];
    let h = headers(&[
        (":method", "GET"),
        (":path", "/x"),
        (":authority", "api.example.com"),
    ]);
    let mut req = Request::new(&h, Some("198.51.100.1".parse().unwrap()));
    req.delegated = Delegated::Known(&payloads);
    match evaluate(&w2.ctx(), &req, NOW) {
        Step::Done(d, f) => assert_eq!((d.reason(), f.token.map(|t| t.provider)), (None, Some(1))),
        s => panic!("{s:?}"),
    }
    // A provider the route does not list is not chosen, and a payload no
    // listed provider issued is refused by the first.
    assert_eq!(run("/users/x", &appcheck).0, Some(Reason::TokenClaims));
    assert_eq!(
        run("/either/x", &payload("https://other.example")).0,
        Some(Reason::TokenClaims)
    );
}

#[test]
fn providers_of_one_issuer_are_chosen_by_audience_too() {
    // One project, two apps: the same issuer, an audience each. A token
    // for `b` must not go to `a` (and be refused for its audience) on a
    // route that accepts both, whatever the cache holds.
    let w = World::from(json!({
        "tokens": [
            {"name": "a", "from": [{"header": "x-t"}], "issuer": "https://iss.example", "audiences": ["app-a"],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
            {"name": "b", "from": [{"header": "x-t"}], "issuer": "https://iss.example", "audiences": ["app-b"],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}
        ],
        "routes": [
            {"name": "both", "match": {"prefix": "/both/"}, "tokens": ["a", "b"]},
            {"name": "a", "match": {"prefix": "/a/"}, "tokens": ["a"]}
        ]
    }));
    let token = |aud: Value| {
        hs256_raw(
            SECRET,
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60, "iss": "https://iss.example", "aud": aud}),
        )
    };
    assert_eq!(
        w.reason("/both/x", &[("x-t", &token(json!("app-b")))]),
        None
    );
    assert_eq!(
        w.reason("/both/x", &[("x-t", &token(json!(["other", "app-b"])))]),
        None
    );
    assert_eq!(
        w.reason("/both/x", &[("x-t", &token(json!("app-a")))]),
        None
    );
    // Neither audience: the first of the issuer refuses it.
    assert_eq!(
        w.reason("/both/x", &[("x-t", &token(json!("app-c")))]),
        Some(Reason::TokenClaims)
    );
    // Choosing is not accepting: `a` alone still refuses `b`'s token.
    assert_eq!(
        w.reason("/a/x", &[("x-t", &token(json!("app-b")))]),
        Some(Reason::TokenClaims)
    );
}

#[test]
fn two_local_limits_on_one_descriptor_keep_their_own_buckets() {
    // A burst limit and a sustained limit on the same descriptor (the usual
    // "2 a minute and 100 an hour per client"): each has its own bucket, so
    // the generous one does not drain the strict one.
    let w = World::from(json!({
        "routes": [{"name": "otp", "match": {"path": "/otp"}, "rate_limits": [
            {"name": "burst", "entries": [{"type": "client_ip"}], "local": {"requests": 2, "per": "minute"}},
            {"name": "sustained", "entries": [{"type": "client_ip"}], "local": {"requests": 100, "per": "hour"}}
        ]}]
    }));
    for i in 0..2 {
        assert!(
            matches!(
                w.post("/otp", "203.0.113.7", &[], ""),
                Step::Done(Decision::Allow(_), _)
            ),
            "request {i} is within both limits"
        );
    }
    match w.post("/otp", "203.0.113.7", &[], "") {
        Step::Done(Decision::Deny(d), _) => {
            assert_eq!(d.reason, Reason::RateLimited);
            let h: HashMap<_, _> = d.headers.into_iter().collect();
            assert_eq!(h.get("x-ratelimit-limit").map(String::as_str), Some("2"));
        }
        s => panic!("the burst limit refuses the third: {s:?}"),
    }
    // One name for both would put them in one bucket again: refused.
    let e = Config::from_json(
        json!({"routes": [{"name": "otp", "match": {"path": "/otp"}, "rate_limits": [
            {"name": "per-ip", "entries": [{"type": "client_ip"}], "local": {"requests": 2, "per": "minute"}},
            {"name": "per-ip", "entries": [{"type": "client_ip"}], "local": {"requests": 100, "per": "hour"}}
        ]}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.path, "routes[0].rate_limits[1].name");
    assert!(e.to_string().contains("unique"), "{e}");
}

#[test]
fn a_request_one_local_limit_refuses_spends_none_of_the_others() {
    // A client over its own per-IP limit that keeps asking for codes to a
    // victim's number must not spend the number's limit with requests
    // that were never let through, or the victim is locked out.
    let w = World::from(json!({
        "routes": [{"name": "sms", "match": {"path": "/sms"}, "rate_limits": [
            {"name": "per-number", "entries": [{"type": "header", "name": "x-to"}], "local": {"requests": 3, "per": "hour"}},
            {"name": "per-ip", "entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "minute"}}
        ]}]
    }));
    let victim = [("x-to", "+447700900123")];
    assert_eq!(
        w.post("/sms", "203.0.113.5", &victim, "").done_reason(),
        None
    );
    for i in 0..5 {
        match w.post("/sms", "203.0.113.5", &victim, "") {
            Step::Done(Decision::Deny(d), _) => {
                assert_eq!(d.reason, Reason::RateLimited);
                let h: HashMap<_, _> = d.headers.into_iter().collect();
                assert_eq!(
                    h.get("x-ratelimit-limit").map(String::as_str),
                    Some("1"),
                    "refusal {i} is the per-IP limit's"
                );
            }
            s => panic!("the per-IP limit refuses request {i}: {s:?}"),
        }
    }
    // The number spent one token of three, on the one request let through.
    for ip in ["203.0.113.9", "198.51.100.4"] {
        assert_eq!(
            w.post("/sms", ip, &victim, "").done_reason(),
            None,
            "{ip}: the number's limit is not spent by the refusals"
        );
    }
    match w.post("/sms", "192.0.2.8", &victim, "") {
        Step::Done(Decision::Deny(d), _) => {
            let h: HashMap<_, _> = d.headers.into_iter().collect();
            assert_eq!(h.get("x-ratelimit-limit").map(String::as_str), Some("3"));
        }
        s => panic!("the number's limit holds at 3: {s:?}"),
    }
}

#[test]
fn local_tokens_come_back_when_the_service_refuses_or_fails_not_when_the_client_leaves() {
    // limits_world's /sms: 2 a minute per /24 locally, then the phone
    // number at the service. A request the service refuses (429) or cannot
    // answer (503 under `failure_mode: deny`) never went upstream: it
    // leaves the local limit as it found it. One whose client leaves
    // before the answer keeps its token: the service counted its hit, and
    // a client resetting its requests must not spend the number's limit
    // past its own.
    let w = limits_world();
    let post = |to: &str| w.post("/sms", "192.0.2.1", &[], &json!({ "to": to }).to_string());
    let Step::NeedRateLimit(p, _) = post("+447700900001") else {
        panic!("to the service")
    };
    assert_eq!(
        evaluate_rls(&w.ctx(), p, Ok(&over_limit_response(42)), NOW).done_reason(),
        Some(Reason::RateLimited)
    );
    let Step::NeedRateLimit(p, _) = post("+447700900002") else {
        panic!("to the service after a 429")
    };
    assert_eq!(
        evaluate_rls(&w.ctx(), p, Err(()), NOW).done_reason(),
        Some(Reason::RatelimitUnavailable)
    );
    let Step::NeedRateLimit(p, _) = post("+447700900003") else {
        panic!("to the service after a 503")
    };
    abandon_rls(&w.ctx(), p);
    // One token is left.
    assert!(matches!(post("+447700900004"), Step::NeedRateLimit(..)));
    assert_eq!(
        post("+447700900005").done_reason(),
        Some(Reason::RateLimited)
    );
}

#[test]
fn a_delegated_token_jwt_authn_did_not_verify_is_refused_even_where_tokens_are_optional() {
    // jwt_authn under `allow_missing_or_failed` lets a token that failed
    // through without a payload: that is a bad token, not no token.
    let w = World::from(json!({
        "tokens": [{"name": "mesh", "from": [{"header": "x-token"}],
                    "verified_by": {"key": "mesh_payload"},
                    "issuer": "https://issuer.example"}],
        "routes": [
            {"name": "optional", "match": {"prefix": "/opt/"}, "tokens": ["mesh"], "token_required": false},
            {"name": "required", "match": {"prefix": "/req/"}, "tokens": ["mesh"]}
        ]
    }));
    let reason = |path: &str, hs: &[(&str, &str)]| w.run(path, "198.51.100.7", hs).0.reason();
    assert_eq!(reason("/opt/x", &[]), None, "no token: optional");
    assert_eq!(
        reason("/opt/x", &[("x-token", "a.b.c")]),
        Some(Reason::TokenSignature)
    );
    assert_eq!(reason("/req/x", &[]), Some(Reason::TokenMissing));
    assert_eq!(
        reason("/req/x", &[("x-token", "a.b.c")]),
        Some(Reason::TokenSignature)
    );
}

#[test]
fn a_token_that_failed_one_provider_still_passes_another() {
    // Two providers read the same header on different routes: a token of
    // `b` sent to `a`'s route fails there, and must still pass on `b`'s.
    let other = [7u8; 32];
    let w = World::from(json!({
        "tokens": [
            {"name": "a", "from": [{"header": "x-t"}], "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
            {"name": "b", "from": [{"header": "x-t"}], "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(other)}]}
        ],
        "routes": [
            {"name": "ra", "match": {"prefix": "/a/"}, "tokens": ["a"]},
            {"name": "rb", "match": {"prefix": "/b/"}, "tokens": ["b"]}
        ]
    }));
    let b_token = hs256_raw(&other, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let on = |path: &str| w.run(path, "198.51.100.7", &[("x-t", &b_token)]).0.reason();
    assert_eq!(on("/a/x"), Some(Reason::TokenSignature));
    assert_eq!(on("/a/x"), Some(Reason::TokenSignature), "remembered for a");
    assert_eq!(on("/b/x"), None, "the failure on a says nothing of b");
}

/// With `xff_trusted_hops: 2`, a request that came through one proxy only
/// (sent to the inner one directly): its client IP is not known.
fn short_xff() -> String {
    "203.0.113.9".into()
}

/// 64 entries the client wrote before the two the proxies appended.
fn padded_xff(client: &str) -> String {
    vec![""; 64].join(",") + "," + client + ",10.1.1.1"
}

#[test]
fn a_client_that_hides_its_ip_shares_one_bucket_instead_of_escaping_the_limit() {
    let w = World::from(json!({
        "client_ip": {"xff_trusted_hops": 2},
        "routes": [{"name": "otp", "match": {"path": "/otp"}, "rate_limits": [
            {"entries": [{"type": "client_ip"}], "local": {"requests": 2, "per": "minute"}}
        ]}]
    }));
    let xff = short_xff();
    let from = |hs: &[(&str, &str)]| w.run("/otp", "10.0.0.1", hs).0.reason();
    assert_eq!(from(&[("x-forwarded-for", &xff)]), None);
    // No X-Forwarded-For at all (the request did not come through the
    // trusted proxy): also unknown, the same bucket.
    assert_eq!(from(&[]), None);
    assert_eq!(
        from(&[("x-forwarded-for", &xff)]),
        Some(Reason::RateLimited),
        "the unknown client's bucket is spent"
    );
    assert_eq!(
        from(&[("x-forwarded-for", "203.0.113.10, 10.1.1.1")]),
        None,
        "known clients keep theirs"
    );
    // Padding the header does not hide a client, nor put it in the
    // unknown clients' bucket: it is counted as itself.
    let padded = padded_xff("203.0.113.10");
    assert_eq!(from(&[("x-forwarded-for", &padded)]), None);
    assert_eq!(
        from(&[("x-forwarded-for", &padded)]),
        Some(Reason::RateLimited),
        "its own bucket, with the request above"
    );
    assert_eq!(
        from(&[("x-forwarded-for", &padded_xff("203.0.113.11"))]),
        None,
        "another client behind the padding"
    );
}

#[test]
fn a_client_that_hides_its_ip_is_charged_a_failure_budget() {
    let w = World::from(json!({
        "client_ip": {"xff_trusted_hops": 2},
        "tokens": [{"name": "t", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "failure_budget": {"failures": 2, "window_seconds": 60}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
    }));
    let xff = short_xff();
    let forged = |n: u32| {
        hs256_raw(
            &[9u8; 64],
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60, "n": n}),
        )
    };
    for n in 0..2 {
        let (d, f) = w.run(
            "/x",
            "10.0.0.1",
            &[("x-forwarded-for", &xff), ("x-t", &forged(n))],
        );
        assert_eq!(
            (d.reason(), f.budget_refused),
            (Some(Reason::TokenSignature), false)
        );
    }
    let (d, f) = w.run(
        "/x",
        "10.0.0.1",
        &[("x-forwarded-for", &xff), ("x-t", &forged(2))],
    );
    assert_eq!(
        (d.reason(), f.budget_refused),
        (Some(Reason::TokenSignature), true),
        "the third forgery is refused without verification"
    );
}

#[test]
fn a_route_named_like_a_budget_does_not_share_its_bucket() {
    // Scopes differ in kind and arity: a route "budget" with a rule "t"
    // keyed "ip" is not provider t's failure budget.
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "failure_budget": {"failures": 2, "window_seconds": 60}}],
        "routes": [
            {"name": "budget", "match": {"prefix": "/budget"}, "rate_limits": [
                {"name": "t", "entries": [{"type": "client_ip", "key": "ip"}], "local": {"requests": 3, "per": "minute"}}]},
            {"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}
        ]
    }));
    for _ in 0..4 {
        w.run("/budget", "198.51.100.7", &[]);
    }
    // One failure somewhere marks "a signature failed recently".
    let forged = hs256_raw(
        &[9u8; 64],
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60}),
    );
    w.run("/x", "192.0.2.99", &[("x-t", &forged)]);
    let good = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let (d, f) = w.run("/x", "198.51.100.7", &[("x-t", &good)]);
    assert_eq!((d.reason(), f.budget_refused), (None, false));
}

#[test]
fn a_token_verified_under_a_key_taken_out_of_the_jwks_is_verified_again() {
    use crate::token::keys::{keys_from_jwks, JwksOrigin};
    let w = World::from(json!({
        "tokens": [{"name": "r", "from": [{"header": "x-t"}], "remote_jwks": {"cluster": "jwks", "path": "/jwks"}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["r"]}]
    }));
    let set = |kids: &[&str], version: u64| {
        let keys: Vec<Value> = kids
            .iter()
            .map(|kid| {
                json!({"kty": "oct", "alg": "HS256", "kid": kid,
                       "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET)})
            })
            .collect();
        let keys = keys_from_jwks(&json!({ "keys": keys }), JwksOrigin::Configured).unwrap();
        [RemoteKeys {
            keys: Some(Rc::new(keys)),
            version,
        }]
    };
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "old"}),
        &json!({"exp": NOW + 60}),
    );
    let run = |remote: &[RemoteKeys]| {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "a"),
            ("x-t", &t),
        ]);
        let mut ctx = w.ctx();
        ctx.remote_keys = remote;
        match evaluate(&ctx, &Request::new(&h, "192.0.2.1".parse().ok()), NOW) {
            Step::Done(d, _) => d.reason(),
            s => panic!("{s:?}"),
        }
    };
    let both = set(&["old", "new"], 1);
    assert_eq!(run(&both), None, "verified, and cached");
    assert_eq!(w.cache.borrow().len(), 1);
    // a refresh with the same document keeps its version, and the cache
    // answers (shown here with a set that could not verify the token)
    assert_eq!(run(&set(&["new"], 1)), None, "a cache hit");
    // the JWKS now lacks `old`: the cached verification no longer counts
    assert_eq!(run(&set(&["new"], 2)), Some(Reason::TokenSignature));
    // and the key put back verifies it again
    assert_eq!(run(&set(&["old", "new"], 3)), None);
}

#[test]
fn a_token_that_failed_is_checked_again_once_the_jwks_changes() {
    // A signer rotates to a new key and issues tokens without `kid` before
    // the JWKS here is refreshed: they fail under the old set. Once the
    // refresh brings the new key, the same tokens must pass, not stay
    // refused from the negative cache until it forgets them.
    use crate::token::keys::{keys_from_jwks, JwksOrigin};
    let w = World::from(json!({
        "tokens": [{"name": "r", "from": [{"header": "x-t"}], "remote_jwks": {"cluster": "jwks", "path": "/jwks"}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["r"]}]
    }));
    let set = |secret: &[u8], version: u64| {
        let jwk = json!({"kty": "oct", "alg": "HS256",
                         "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)});
        [RemoteKeys {
            keys: Some(Rc::new(
                keys_from_jwks(&json!({ "keys": [jwk] }), JwksOrigin::Configured).unwrap(),
            )),
            version,
        }]
    };
    let t = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let run = |remote: &[RemoteKeys]| {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "a"),
            ("x-t", &t),
        ]);
        let mut ctx = w.ctx();
        ctx.remote_keys = remote;
        match evaluate(&ctx, &Request::new(&h, "192.0.2.1".parse().ok()), NOW) {
            Step::Done(d, _) => d.reason(),
            s => panic!("{s:?}"),
        }
    };
    let old = set(b"an older secret, since rotated!!", 1);
    assert_eq!(run(&old), Some(Reason::TokenSignature));
    assert_eq!(run(&old), Some(Reason::TokenSignature), "from the cache");
    assert_eq!(run(&set(SECRET, 2)), None, "the new key verifies it");
}

#[test]
fn made_up_kids_for_a_remote_jwks_spend_the_budget_and_then_ask_for_no_keys() {
    use crate::token::keys::{keys_from_jwks, JwksOrigin};
    let w = World::from(json!({
        "tokens": [{"name": "r", "from": [{"header": "x-t"}], "remote_jwks": {"cluster": "jwks", "path": "/jwks"},
                    "failure_budget": {"failures": 3, "window_seconds": 60}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["r"]}]
    }));
    let jwk = json!({"kty": "oct", "alg": "HS256", "kid": "k1",
                     "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET)});
    let remote = [RemoteKeys {
        keys: Some(Rc::new(
            keys_from_jwks(&json!({ "keys": [jwk] }), JwksOrigin::Configured).unwrap(),
        )),
        version: 1,
    }];
    // `May`: the headers phase (an unknown kid asks for keys); `Fetched`:
    // the evaluation after keys newer than the request were loaded;
    // `NotNow`: after the adapter declined to re-fetch (one was recent).
    let step = |kid: &str, key_fetch: KeyFetch| {
        let t = hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "kid": kid}),
            &json!({"exp": NOW + 60}),
        );
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "a"),
            ("x-t", &t),
        ]);
        let mut ctx = w.ctx();
        ctx.remote_keys = &remote;
        ctx.key_fetch = key_fetch;
        evaluate(&ctx, &Request::new(&h, "192.0.2.9".parse().ok()), NOW)
    };
    // A kid the issuer may have just published, refused while a re-fetch
    // is not allowed yet: refused, but no budget spent, however many.
    for _ in 0..10 {
        match step("k2", KeyFetch::NotNow) {
            Step::Done(d, f) => assert_eq!(
                (d.reason(), f.budget_refused),
                (Some(Reason::TokenSignature), false)
            ),
            s => panic!("{s:?}"),
        }
    }
    for i in 0..3 {
        let kid = format!("made-up-{i}");
        assert!(
            matches!(step(&kid, KeyFetch::May), Step::NeedKeys { .. }),
            "{i}"
        );
        match step(&kid, KeyFetch::Fetched) {
            Step::Done(d, f) => assert_eq!(
                (d.reason(), f.budget_refused),
                (Some(Reason::TokenSignature), false),
                "{i}"
            ),
            s => panic!("{s:?}"),
        }
    }
    // Spent: the next made-up kid asks for nothing, and is refused at once.
    match step("made-up-3", KeyFetch::May) {
        Step::Done(d, f) => assert_eq!(
            (d.reason(), f.budget_refused),
            (Some(Reason::TokenSignature), true)
        ),
        s => panic!("a spent client must not ask for keys: {s:?}"),
    }
}

#[test]
fn before_a_key_fetch_only_the_tokens_that_never_go_upstream_are_taken_off() {
    // The request waits for the JWKS: its credentials go first, so that a
    // client leaving meanwhile leaves none in the access log. A forwarding
    // provider's token stays: it may yet verify and go upstream.
    let w = World::from(json!({
        "api_keys": {"forward": false, "keys": [{"id": "k", "sha256": hash_api_key("key-1")}]},
        "tokens": [{"name": "r", "from": [{"header": "x-t"}], "remote_jwks": {"cluster": "jwks", "path": "/jwks"}},
                   {"name": "f", "from": [{"header": "x-f"}], "forward": true,
                    "remote_jwks": {"cluster": "jwks", "path": "/jwks"}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["r", "f"],
                    "api_key": "required"}]
    }));
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k"}),
        &json!({"exp": NOW + 60}),
    );
    let h = headers(&[
        (":method", "GET"),
        (":path", "/x"),
        (":authority", "a"),
        ("x-api-key", "key-1"),
        ("x-t", &t),
        ("x_t", &t),
        ("x-f", &t),
    ]);
    let mut ctx = w.ctx();
    ctx.key_fetch = KeyFetch::May;
    match evaluate(&ctx, &Request::new(&h, "192.0.2.1".parse().ok()), NOW) {
        Step::NeedKeys { key_scrub, .. } => {
            assert_eq!(key_scrub.headers, vec!["x-api-key", "x-t", "x_t"]);
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn without_keys_a_known_forgery_or_a_spent_client_starts_no_fetch() {
    let w = World::from(json!({
        "tokens": [{"name": "r", "from": [{"header": "x-t"}], "remote_jwks": {"cluster": "jwks", "path": "/jwks"},
                    "failure_budget": {"failures": 2, "window_seconds": 60}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["r"]}]
    }));
    let step = |ip: &str, token: &str| {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "a"),
            ("x-t", token),
        ]);
        let mut ctx = w.ctx();
        ctx.key_fetch = KeyFetch::May;
        evaluate(&ctx, &Request::new(&h, ip.parse().ok()), NOW)
    };
    let t = |n: u32| {
        hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "kid": "k"}),
            &json!({"exp": NOW + 60, "n": n}),
        )
    };
    // No keys loaded: a new token asks for them.
    assert!(matches!(step("192.0.2.1", &t(0)), Step::NeedKeys { .. }));
    // A token that failed before: refused, no fetch.
    let salt = w.ctx().bucket_salt;
    w.neg
        .borrow_mut()
        .insert(0, 0, negative_key(&salt, &t(1)), NOW + 60, NOW);
    match step("192.0.2.1", &t(1)) {
        Step::Done(d, _) => assert_eq!(d.reason(), Some(Reason::TokenSignature)),
        s => panic!("a known forgery must not start a fetch: {s:?}"),
    }
    // A client this worker knows to be spent: refused, no fetch.
    let ip: IpAddr = "192.0.2.66".parse().unwrap();
    w.neg
        .borrow_mut()
        .note_spent(0, ip, NOW * 1000 + 30_000, NOW * 1000);
    match step("192.0.2.66", &t(2)) {
        Step::Done(d, f) => assert_eq!(
            (d.reason(), f.budget_refused),
            (Some(Reason::TokenSignature), true)
        ),
        s => panic!("a spent client must not start a fetch: {s:?}"),
    }
    // Junk, or a token past its expiry: refused for what it is, no fetch.
    let expired = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k"}),
        &json!({"exp": NOW - 60}),
    );
    for (token, reason) in [
        ("x", Reason::TokenMalformed),
        (expired.as_str(), Reason::TokenExpired),
    ] {
        match step("192.0.2.1", token) {
            Step::Done(d, _) => assert_eq!(d.reason(), Some(reason)),
            s => panic!("{token}: a token refused without keys must not start a fetch: {s:?}"),
        }
    }
}

/// `Authorization: Bearer` with an HS256 token of `claims` under `secret`.
fn hs256_bearer(secret: &[u8], claims: &Value) -> String {
    format!(
        "Bearer {}",
        hs256_raw(secret, &json!({"alg": "HS256"}), claims)
    )
}

/// The request's refusal, if any, and which provider's token it used.
fn provider_of(w: &World, authorization: &str) -> (Option<Reason>, Option<usize>) {
    let (d, f) = w.run("/x", "192.0.2.1", &[("authorization", authorization)]);
    (d.reason(), f.token.map(|t| t.provider))
}

#[test]
fn two_issuers_on_one_header_each_get_their_own_provider() {
    // Both providers read `Authorization: Bearer`: a token goes to the
    // provider whose `issuer` is its `iss` (as jwt_authn picks), not always
    // to the first; a token of neither is the first provider's to refuse.
    let other = [7u8; 32];
    let w = World::from(json!({
        "tokens": [
            {"name": "a", "from": [{"header": "authorization", "prefix": "Bearer "}], "issuer": "https://a",
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
            {"name": "b", "from": [{"header": "authorization", "prefix": "Bearer "}], "issuer": "https://b",
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(other)}]}
        ],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["a", "b"]}]
    }));
    let bearer =
        |secret: &[u8], iss: &str| hs256_bearer(secret, &json!({"exp": NOW + 60, "iss": iss}));
    let run = |auth: &str| provider_of(&w, auth);
    assert_eq!(run(&bearer(SECRET, "https://a")), (None, Some(0)));
    assert_eq!(run(&bearer(&other, "https://b")), (None, Some(1)));
    // b's issuer claimed, a's key: b verifies it, and refuses it.
    assert_eq!(
        run(&bearer(SECRET, "https://b")).0,
        Some(Reason::TokenSignature)
    );
    // Neither issuer: the first provider's checks answer (its issuer
    // check comes before any signature work).
    for secret in [&other[..], SECRET] {
        assert_eq!(
            run(&bearer(secret, "https://c")).0,
            Some(Reason::TokenClaims)
        );
    }
}

#[test]
fn the_verified_token_cache_holds_big_tokens_within_its_byte_budget() {
    let held =
        |c: &TokenCache| -> usize { c.map.iter().map(|(k, (_, t))| TokenCache::cost(k, t)).sum() };
    let verified = |claims: Value| {
        Rc::new(VerifiedToken {
            provider: 0,
            exp: NOW + 60,
            claims: claims.as_object().cloned().unwrap_or_default(),
        })
    };
    // 4,096 tokens of the default 4 KiB with ordinary claims (a 3 KB
    // payload of strings): all held, as before the byte budget.
    let mut cache = TokenCache::default();
    let groups: Vec<String> = (0..60).map(|g| format!("group-{g:040}")).collect();
    let ordinary = verified(json!({"sub": "u", "iss": "https://issuer.example", "groups": groups}));
    for i in 0..TOKEN_CACHE_ENTRIES - 1 {
        cache.put(&format!("{i:05}{}", "x".repeat(4091)), 0, ordinary.clone());
    }
    assert_eq!(
        cache.len(),
        TOKEN_CACHE_ENTRIES - 1,
        "{} bytes",
        cache.bytes
    );
    // Tokens of 60 KiB (max_token_bytes allows 64), or claims that parse
    // into many small values, minted with a leaked key: the cache keeps
    // what fits in its bytes.
    let zeros = verified(json!({"a": vec![0; 20_000]}));
    for (i, v) in [ordinary.clone(), zeros].iter().enumerate() {
        let mut cache = TokenCache::default();
        for n in 0..1_000 {
            let token = format!("{i}{n:05}{}", "x".repeat(60 * 1024));
            cache.put(&token, 0, v.clone());
            assert!(cache.bytes <= TOKEN_CACHE_BYTES, "{n}: {}", cache.bytes);
            assert!(cache.get(0, 0, &token, NOW, 0).is_some(), "{n}: just put");
        }
        // Without the budget all 1,000 would be held (~60 MiB of text).
        assert!(
            cache.len() <= TOKEN_CACHE_BYTES / (60 * 1024),
            "{}",
            cache.len()
        );
        assert_eq!(held(&cache), cache.bytes, "the count follows the entries");
    }
    // The entry cap still holds, and a token put twice counts once.
    let mut cache = TokenCache::default();
    for i in 0..(TOKEN_CACHE_ENTRIES + 10) {
        cache.put(&format!("t{i}"), 0, ordinary.clone());
        cache.put(&format!("t{i}"), 0, ordinary.clone());
    }
    assert!(cache.len() <= TOKEN_CACHE_ENTRIES);
    assert_eq!(held(&cache), cache.bytes);
}

#[test]
fn a_full_token_cache_makes_room_by_its_oldest_entries_one_at_a_time() {
    let verified = Rc::new(VerifiedToken {
        provider: 0,
        exp: NOW + 60,
        claims: json!({"sub": "u"}).as_object().cloned().unwrap_or_default(),
    });
    let mut cache = TokenCache::default();
    for i in 0..TOKEN_CACHE_ENTRIES {
        cache.put(&format!("t{i}"), 0, verified.clone());
    }
    assert_eq!(cache.len(), TOKEN_CACHE_ENTRIES);
    // Put again: it keeps its place (and is not counted twice).
    cache.put("t0", 0, verified.clone());
    // Each new token past the cap takes the place of the oldest alone:
    // the rest stay cached (before, the whole cache was emptied at once).
    for n in 0..10 {
        let new = format!("new{n}");
        cache.put(&new, 0, verified.clone());
        assert_eq!(cache.len(), TOKEN_CACHE_ENTRIES, "{n}");
        assert!(cache.get(0, 0, &new, NOW, 0).is_some(), "{n}: just put");
        assert!(
            cache.get(0, 0, &format!("t{n}"), NOW, 0).is_none(),
            "{n}: the oldest made room"
        );
        assert!(
            cache.get(0, 0, &format!("t{}", n + 1), NOW, 0).is_some(),
            "{n}: the next stays"
        );
        assert!(cache
            .get(0, 0, &format!("t{}", TOKEN_CACHE_ENTRIES - 1), NOW, 0)
            .is_some());
    }
    let held: usize = cache.order.iter().map(|(_, c)| c).sum();
    assert_eq!(held, cache.bytes);
    assert_eq!(cache.order.len(), cache.len());
    // A token bigger than the whole byte budget is verified, not kept.
    let huge = "x".repeat(TOKEN_CACHE_BYTES + 1);
    cache.put(&huge, 0, verified);
    assert!(cache.get(0, 0, &huge, NOW, 0).is_none());
    assert_eq!(cache.len(), TOKEN_CACHE_ENTRIES, "nothing made room for it");
}

#[test]
fn a_provider_that_names_no_issuer_takes_tokens_of_issuers_no_other_names() {
    // b names its issuer, a names none, both on one header: a token of
    // b's issuer is b's; any other is a's (b would refuse it for its
    // issuer). Before, a was never reached while b came first.
    let other = [7u8; 32];
    let w = World::from(json!({
        "tokens": [
            {"name": "b", "from": [{"header": "authorization", "prefix": "Bearer "}], "issuer": "https://b",
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(other)}]},
            {"name": "a", "from": [{"header": "authorization", "prefix": "Bearer "}],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}
        ],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["b", "a"]}]
    }));
    let bearer = |secret: &[u8], claims: Value| hs256_bearer(secret, &claims);
    let run = |auth: &str| provider_of(&w, auth);
    let a = bearer(SECRET, json!({"exp": NOW + 60, "iss": "https://x"}));
    assert_eq!(run(&a), (None, Some(1)));
    assert_eq!(run(&a), (None, Some(1)), "again, from the cache");
    let a_no_iss = bearer(SECRET, json!({"exp": NOW + 60}));
    assert_eq!(run(&a_no_iss), (None, Some(1)));
    let b = bearer(&other, json!({"exp": NOW + 60, "iss": "https://b"}));
    assert_eq!(run(&b), (None, Some(0)));
    // b's issuer claimed, a's key: b's to refuse.
    let forged = bearer(SECRET, json!({"exp": NOW + 60, "iss": "https://b"}));
    assert_eq!(run(&forged).0, Some(Reason::TokenSignature));
}

#[test]
fn a_token_in_another_header_does_not_take_the_request_from_the_first_provider() {
    // An app sends its attestation token (provider a, no issuer) and, as
    // its binding asks, a user's bearer token that b (issuer https://b)
    // would refuse for its lifetime: a's token decides, as before the
    // choice by issuer (which is for providers reading the same token).
    let other = [7u8; 32];
    let w = World::from(json!({
        "tokens": [
            {"name": "a", "from": [{"header": "x-a"}],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
            {"name": "b", "from": [{"header": "authorization", "prefix": "Bearer "}], "issuer": "https://b",
             "max_lifetime_seconds": 300,
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(other)}]}
        ],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["a", "b"]}]
    }));
    let a = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let user = hs256_bearer(
        &other,
        &json!({"iat": NOW, "exp": NOW + 3600, "iss": "https://b"}),
    );
    let (d, f) = w.run("/x", "192.0.2.1", &[("x-a", &a), ("authorization", &user)]);
    assert_eq!((d.reason(), f.token.map(|t| t.provider)), (None, Some(0)));
}

#[test]
fn a_kid_of_keys_still_to_come_waits_for_them_and_an_expired_one_asks_for_none() {
    use crate::token::keys::{keys_from_jwks, JwksOrigin};
    // A configured secret without `kid` beside a remote JWKS. Before the
    // JWKS is loaded, a token naming a `kid` may be for one of its keys:
    // it asks for them, rather than being tried against the configured
    // secret (refused, charged, negative-cached). Once keys are loaded,
    // an expired token naming a `kid` no key has is refused for its
    // expiry, asks for no re-fetch, and spends no budget.
    let w = World::from(json!({
        "tokens": [{"name": "r", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode([9u8; 32])}],
                    "remote_jwks": {"cluster": "jwks", "path": "/jwks"},
                    "failure_budget": {"failures": 1, "window_seconds": 60}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["r"]}]
    }));
    let token = |kid: &str, exp: u64| {
        hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "kid": kid}),
            &json!({"exp": exp}),
        )
    };
    let step = |t: &str, remote: &[RemoteKeys], key_fetch: KeyFetch| {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "a"),
            ("x-t", t),
        ]);
        let mut ctx = w.ctx();
        ctx.remote_keys = remote;
        ctx.key_fetch = key_fetch;
        evaluate(&ctx, &Request::new(&h, "192.0.2.9".parse().ok()), NOW)
    };
    let none = [RemoteKeys {
        keys: None,
        version: 0,
    }];
    assert!(matches!(
        step(&token("k1", NOW + 60), &none, KeyFetch::May),
        Step::NeedKeys { .. }
    ));
    // The fetch failed: the JWKS is unavailable for it (the route fails
    // closed), not a forged signature.
    match step(&token("k1", NOW + 60), &none, KeyFetch::NotNow) {
        Step::Done(d, f) => assert_eq!(
            (d.reason(), f.budget_refused),
            (Some(Reason::JwksUnavailable), false)
        ),
        s => panic!("{s:?}"),
    }
    let jwk = json!({"kty": "oct", "alg": "HS256", "kid": "k1",
                     "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET)});
    let loaded = [RemoteKeys {
        keys: Some(Rc::new(
            keys_from_jwks(&json!({ "keys": [jwk] }), JwksOrigin::Configured).unwrap(),
        )),
        version: 1,
    }];
    assert!(matches!(
        step(&token("k1", NOW + 60), &loaded, KeyFetch::May),
        Step::Done(..)
    ));
    for fetch in [KeyFetch::May, KeyFetch::Fetched, KeyFetch::May] {
        match step(&token("gone", NOW - 60), &loaded, fetch) {
            Step::Done(d, f) => assert_eq!(
                (d.reason(), f.budget_refused),
                (Some(Reason::TokenExpired), false),
                "{fetch:?}"
            ),
            s => panic!("{fetch:?}: an expired token must ask for no keys: {s:?}"),
        }
    }
    // The budget (one failure) is untouched: a made-up kid, unexpired,
    // after a fetch, is the first failure; the next is refused at once.
    match step(&token("made-up", NOW + 60), &loaded, KeyFetch::Fetched) {
        Step::Done(d, f) => assert_eq!(
            (d.reason(), f.budget_refused),
            (Some(Reason::TokenSignature), false)
        ),
        s => panic!("{s:?}"),
    }
    match step(&token("made-up-2", NOW + 60), &loaded, KeyFetch::May) {
        Step::Done(d, f) => assert_eq!(
            (d.reason(), f.budget_refused),
            (Some(Reason::TokenSignature), true)
        ),
        s => panic!("{s:?}"),
    }
}

#[test]
fn an_encoded_slash_that_would_take_another_route_is_refused() {
    // With Envoy's `path_with_escaped_slashes_action` left at its default
    // (keep), `%2F` and `%5C` reach appguard as such, and an upstream that
    // decodes before routing reads `/`.
    let w = World::from(json!({
        "routes": [
            {"name": "sms", "match": {"path": "/v1/sms"}, "action": "deny"},
            {"name": "api", "match": {"prefix": "/v1/"}},
            {"name": "files", "match": {"prefix": "/files/"}}
        ]
    }));
    let denied = Some(Reason::RouteDenied);
    for path in [
        "/v1%2Fsms",
        "/v1%2fsms",
        "/v1%5Csms",
        "/v1/x%2F..%2Fsms",
        "/v1/x%2F%2e%2e%2Fsms",
        "/v1/x%5c..%5csms",
        "/v1/a%2F%2Fb",
        // Inside a `;` parameter, which routes drop: an upstream that
        // decodes `%2F`, then resolves dot segments without knowing `;`
        // parameters (nginx; IIS for `\`) serves `/v1/sms`.
        "/v1/x;%2F..%2Fsms",
        "/v1/x;p%2F%2e%2e%2Fsms",
        "/v1/x;%5C..%5Csms",
        "/v1/x;\\..\\sms",
        "/v1/x;%2F%2Fsms",
        "/v1/%u0073ms",
        "/v1/x/%u002e%u002e/sms",
        "/v1/x;%u002F..%u002Fsms",
    ] {
        assert_eq!(w.route("GET", path, &[]), denied, "{path}");
    }
    // A slash encoded where it changes no route is the upstream's business.
    for path in [
        "/files/a%2Fb",
        "/files/dir%5Cname.txt",
        "/v1/users/a%2Fb",
        "/v1/%2",
        "/v1/x;p=1",
        "/v1/x;a%2Fb/y",
        "/v1/x;%2Fsms",
        "/v1/x;%3B",
    ] {
        assert_eq!(w.route("GET", path, &[]), None, "{path}");
    }
}

#[test]
fn an_escaped_character_a_path_holds_as_it_is_takes_no_weaker_route() {
    // Envoy's `normalize_path` decodes only unreserved escapes: `%3A`,
    // `%40` and a lower-case `%c3%a9` reach the upstream as sent, and one
    // that decodes paths before routing (Go, Spring, Tomcat, Werkzeug)
    // runs the handler of `/v1/things:batchDelete` for the first.
    let w = World::from(json!({
        "default_action": "allow",
        "routes": [
            {"name": "batch", "match": {"path": "/v1/things:batchDelete"}, "action": "deny"},
            {"name": "me", "match": {"prefix": "/v1/users/@me/"}, "action": "deny"},
            {"name": "cafe", "match": {"path": "/v1/caf%C3%A9"}, "action": "deny"},
            {"name": "api", "match": {"prefix": "/v1/"}}
        ]
    }));
    let denied = Some(Reason::RouteDenied);
    for path in [
        "/v1/things:batchDelete",
        "/v1/users/@me/x",
        "/v1/caf%C3%A9",
        "/v1/things%3AbatchDelete",
        "/v1/things%3abatchDelete",
        "/v1/users/%40me/x",
        "/v1/caf%c3%a9",
        "/v1/caf%C3%a9",
        "/v1/caf\u{e9}",
        "/v1/things%3AbatchDelete.json",
        "/v1/things%u003AbatchDelete",
        "/v1/users/%u0040me/x",
        "/v1/caf%u00e9",
    ] {
        assert_eq!(w.route("POST", path, &[]), denied, "{path}");
    }
    for path in [
        "/v1/things",
        "/v1/users/%40you/x",
        "/v1/caf%C3%A8",
        "/v1/a%3Bb",
    ] {
        assert_eq!(w.route("POST", path, &[]), None, "{path}");
    }
}

#[test]
fn paths_are_written_one_way_for_the_readings_of_decoding_upstreams() {
    use crate::policy::canonical_path;
    for (path, want) in [
        ("/v1/sms", None),
        ("/v1/a%20b", None),
        ("/v1/caf%C3%A9", None),
        ("/v1/a%2Fb", None),
        ("/v1/a%3Bb", None),
        ("/v1/a%25", None),
        ("/v1/%", None),
        ("/v1/%zz", None),
        ("/v1/things:x@y!$&'()*+,;=~", None),
        ("/v1/%73ms", Some("/v1/sms")),
        ("/v1/things%3Ax", Some("/v1/things:x")),
        ("/v1/%40me%2c", Some("/v1/@me,")),
        ("/v1/caf%c3%a9", Some("/v1/caf%C3%A9")),
        ("/v1/a%2fb", Some("/v1/a%2Fb")),
        ("/v1/caf\u{e9}", Some("/v1/caf%C3%A9")),
        ("/v1/a{b}|`\"<> ", Some("/v1/a%7Bb%7D%7C%60%22%3C%3E%20")),
        ("/v1\\sms", Some("/v1%5Csms")),
        ("/v1/%2e%2E", Some("/v1/..")),
        ("/v1/%u0073ms", Some("/v1/sms")),
        ("/v1/%U0073ms", Some("/v1/sms")),
        ("/v1/%u00e9%u20AC", Some("/v1/%C3%A9%E2%82%AC")),
        ("/v1/%u002F%u003b", Some("/v1/%2F%3B")),
        ("/v1/%uD800", None),
        ("/v1/%u12", None),
        ("/v1/a[0]", None),
        ("/v1/a%5B0%5d", Some("/v1/a[0]")),
    ] {
        assert_eq!(canonical_path(path).as_deref(), want, "{path}");
    }
}

#[test]
fn an_encoded_unreserved_character_or_a_backslash_takes_no_weaker_route() {
    // With Envoy's `normalize_path` off (its default), `%73` and `\` reach
    // appguard as such: Spring, Go's `net/http` and Werkzeug decode `%73`
    // to `s` before routing, and `\` is `/` to the upstreams an encoded
    // `%5C` is (`normalize_path` would have made it one).
    let w = World::from(json!({
        "default_action": "allow",
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("key")}]},
        "routes": [{"name": "sms", "match": {"path": "/v1/sms"}, "api_key": "required"}]
    }));
    assert_eq!(w.route("POST", "/v1/sms", &[]), Some(Reason::ApiKeyMissing));
    let denied = Some(Reason::RouteDenied);
    // Decoded, these take another route than the request's own: refused.
    // So are those whose decoded path has a format suffix or a dot
    // segment (`/v1%2Fsms.json` is `/v1/sms` to an upstream that decodes
    // and strips suffixes).
    for path in [
        "/v1/%73ms",
        "/v1/sm%73",
        "/%761/sms",
        "/v1/%73ms.json",
        "/v1%2Fsms.json",
        "/v1\\sms.json",
        "/v1/x/%2e%2e/sms",
    ] {
        assert_eq!(w.route("POST", path, &[]), denied, "{path}");
    }
    for path in ["/v1\\sms", "/v1\\sms/", "/v1/x\\..\\sms", "\\v1/sms"] {
        assert_eq!(w.route("POST", path, &[]), denied, "{path}");
    }
    // Decoded, these take the route they take as sent (none): Java's
    // `URLEncoder` writes `~` as `%7E`, and paths are case-sensitive.
    for path in [
        "/v1/%53MS",
        "/files/%7e",
        "/files/%7Ebob/a.png",
        "/files/a%2Db",
        "/files/a%5fb",
        "/files/a%2Eb",
        "/files/a%30",
    ] {
        assert_eq!(w.route("POST", path, &[]), None, "{path}");
    }
    // Other escapes stay encoded upstream too; a `\` that changes no route
    // is the upstream's business.
    for path in [
        "/v1/a%20b",
        "/v1/%C3%A9",
        "/v1/%2",
        "/v1/%zz",
        "/v1/%25",
        "/files\\a",
    ] {
        assert_eq!(w.route("POST", path, &[]), None, "{path}");
    }
}

#[test]
fn a_forwarded_host_that_would_take_another_route_is_refused() {
    // Rack, Django (USE_X_FORWARDED_HOST), Express (trust proxy) and
    // Spring take the host from these headers, which Envoy passes on.
    let w = World::from(json!({
        "routes": [
            {"name": "admin", "match": {"prefix": "/", "hosts": ["admin.example.com"]}},
            {"name": "api", "match": {"prefix": "/v1/", "hosts": ["api.example.com", "*.api.example.com"]}}
        ]
    }));
    let route = |extra: &[(&str, &str)]| {
        let mut pairs = vec![
            (":method", "GET"),
            (":path", "/v1/orders"),
            (":authority", "api.example.com:443"),
        ];
        pairs.extend_from_slice(extra);
        let h = headers(&pairs);
        match match_route(&w.config, &Request::new(&h, None)) {
            Ok(m) => m.map(|(_, r)| r.name.clone()),
            Err(UnclearPath) => Some("(unclear)".to_owned()),
        }
    };
    let unclear = Some("(unclear)");
    assert_eq!(route(&[]).as_deref(), Some("api"));
    for (name, value) in [
        ("x-forwarded-host", "admin.example.com"),
        ("X-Forwarded-Host", "ADMIN.example.com:8443"),
        ("x_forwarded_host", "admin.example.com."),
        ("x-forwarded-host", "api.example.com, admin.example.com"),
        ("x-forwarded-host", "admin.example.com,api.example.com"),
        ("x-forwarded-host", "elsewhere.example"),
        (
            "forwarded",
            "for=192.0.2.1;host=admin.example.com;proto=https",
        ),
        (
            "Forwarded",
            "host=api.example.com, for=192.0.2.2;HOST=\"admin.example.com\"",
        ),
    ] {
        assert_eq!(
            route(&[(name, value)]).as_deref(),
            unclear,
            "{name}: {value}"
        );
    }
    // Hosts that take the same route change nothing.
    for (name, value) in [
        ("x-forwarded-host", "api.example.com"),
        (
            "x-forwarded-host",
            "eu.api.example.com:443, API.example.com.",
        ),
        ("x-forwarded-host", ""),
        ("forwarded", "for=192.0.2.1;proto=https"),
        ("forwarded", "host=api.example.com"),
    ] {
        assert_eq!(
            route(&[(name, value)]).as_deref(),
            Some("api"),
            "{name}: {value}"
        );
    }
    // Without `hosts` on any route, the headers are not read.
    let plain = World::from(json!({"routes": [{"name": "api", "match": {"prefix": "/v1/"}}]}));
    let h = headers(&[
        (":method", "GET"),
        (":path", "/v1/orders"),
        (":authority", "api.example.com"),
        ("x-forwarded-host", "admin.example.com"),
    ]);
    assert!(match_route(&plain.config, &Request::new(&h, None)).is_ok_and(|m| m.is_some()));
}

#[test]
fn an_authority_whose_port_is_not_digits_takes_the_route_of_its_host_too() {
    // Envoy passes `host:abc` on as sent; Go's `net.SplitHostPort` and
    // Express's `req.hostname` read the host before the first `:`.
    let w = World::from(json!({
        "routes": [
            {"name": "static", "match": {"prefix": "/", "hosts": ["*.cdn.example.com"]}},
            {"name": "api", "match": {"prefix": "/v1/", "hosts": ["api.example.com"]}, "action": "deny"}
        ]
    }));
    let route = |authority: &str, extra: &[(&str, &str)]| {
        let mut pairs = vec![
            (":method", "GET"),
            (":path", "/v1/admin"),
            (":authority", authority),
        ];
        pairs.extend_from_slice(extra);
        let h = headers(&pairs);
        match match_route(&w.config, &Request::new(&h, None)) {
            Ok(m) => m.map(|(_, r)| r.name.clone()),
            Err(UnclearPath) => Some("(unclear)".to_owned()),
        }
    };
    for authority in [
        "api.example.com:x.cdn.example.com",
        "api.example.com:443.cdn.example.com",
        "api.example.com.:x.cdn.example.com",
        // read whole, these take no route
        "api.example.com:abc",
        "api.example.com:80:80",
        "a.cdn.example.com:x",
    ] {
        assert_eq!(
            route(authority, &[]).as_deref(),
            Some("(unclear)"),
            "{authority}"
        );
    }
    // A forwarded host read the same way.
    assert_eq!(
        route(
            "a.cdn.example.com",
            &[("x-forwarded-host", "api.example.com:x")]
        )
        .as_deref(),
        Some("(unclear)")
    );
    // An authority or forwarded host with userinfo, percent-encoding or a
    // second host: WHATWG URL parsing reads each as `api.example.com`.
    for authority in [
        "u@api.example.com",
        "a.cdn.example.com:1@api.example.com",
        "%61pi.example.com",
        "api%2eexample.com",
        "api%E3%80%82example.com",
        "api.example.com,a.cdn.example.com",
        "api.example.com\\@a.cdn.example.com",
    ] {
        assert_eq!(
            route(authority, &[]).as_deref(),
            Some("(unclear)"),
            "{authority}"
        );
        assert_eq!(
            route("a.cdn.example.com", &[("x-forwarded-host", authority)]).as_deref(),
            Some("(unclear)"),
            "forwarded {authority}"
        );
    }
    assert_eq!(
        route(
            "a.cdn.example.com",
            &[("forwarded", "host=\"u@api.example.com\"")]
        )
        .as_deref(),
        Some("(unclear)")
    );
    assert_eq!(route("[::1]:8080", &[]).as_deref(), None);
    assert_eq!(route("a_b.cdn.example.com", &[]).as_deref(), Some("static"));
    // Spellings that take the same route (or none) either way change
    // nothing.
    assert_eq!(route("api.example.com:443", &[]).as_deref(), Some("api"));
    assert_eq!(
        route("a.cdn.example.com:443", &[]).as_deref(),
        Some("static")
    );
    assert_eq!(route("elsewhere.example:abc", &[]).as_deref(), None);
    // No route but by the cut host: `default_action` would take the
    // request, where the upstream serves the named host's route.
    let deny = World::from(json!({
        "default_action": "allow",
        "routes": [{"name": "internal", "match": {"prefix": "/", "hosts": ["internal.example.com"]}, "action": "deny"}]
    }));
    for authority in [
        "internal.example.com:abc",
        "internal.example.com:-1",
        "INTERNAL.example.com:+80",
    ] {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", authority),
        ]);
        assert!(
            match_route(&deny.config, &Request::new(&h, None)).is_err(),
            "{authority}"
        );
    }
}

#[test]
fn a_forwarded_host_is_checked_with_every_path_and_method_variant() {
    // Rails takes the host from `X-Forwarded-Host`, strips `(.:format)`
    // and honours `X-HTTP-Method-Override` (Rack::MethodOverride) at once:
    // each alone is caught, so together they must be too.
    let w = World::from(json!({
        "default_action": "allow",
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("key")}]},
        "routes": [
            {"name": "probe", "match": {"path": "/v1/report", "methods": ["HEAD"]}},
            {"name": "internal-report", "match": {"path": "/v1/report", "methods": ["GET"],
             "hosts": ["internal.example.com"]}, "api_key": "required"},
            {"name": "internal-sms", "match": {"path": "/v1/sms", "hosts": ["internal.example.com"]},
             "api_key": "required"},
            {"name": "internal-del", "match": {"prefix": "/v1/orders/", "methods": ["DELETE"],
             "hosts": ["internal.example.com"]}, "action": "deny"},
            {"name": "open", "match": {"prefix": "/v1/", "methods": ["POST", "DELETE"]}}
        ]
    }));
    let denied = Some(Reason::RouteDenied);
    let xfh = ("x-forwarded-host", "internal.example.com");
    let delete = ("x-http-method-override", "DELETE");
    assert_eq!(w.route("POST", "/v1/sms", &[xfh]), denied);
    assert_eq!(w.route("DELETE", "/v1/orders/1", &[xfh]), denied);
    // Without the host, the variants keep the open route.
    assert_eq!(w.route("POST", "/v1/sms.json", &[]), None);
    assert_eq!(w.route("POST", "/v1/orders/1", &[delete]), None);
    assert_eq!(w.route("HEAD", "/v1/report", &[]), None);
    // With it, they reach the internal host's handlers.
    assert_eq!(w.route("POST", "/v1/sms.json", &[xfh]), denied);
    assert_eq!(w.route("POST", "/v1/sms.json/", &[xfh]), denied);
    assert_eq!(w.route("POST", "/v1/orders/1", &[xfh, delete]), denied);
    assert_eq!(
        w.route("POST", "/v1/orders/1?_method=DELETE", &[xfh]),
        denied
    );
    assert_eq!(
        w.route("POST", "/v1/x", &[xfh, ("x-original-url", "/v1/sms")]),
        denied
    );
    let fwd = ("forwarded", "for=192.0.2.1;host=internal.example.com");
    assert_eq!(w.route("POST", "/v1/sms.json", &[fwd]), denied);
    // HEAD runs the GET handler, the internal host's here.
    assert_eq!(w.route("HEAD", "/v1/report", &[xfh]), denied);
    // A forwarded host that takes the same routes changes nothing.
    let other = ("x-forwarded-host", "api.example.com, cdn.example.net");
    assert_eq!(w.route("POST", "/v1/sms.json", &[other]), None);
    assert_eq!(w.route("POST", "/v1/orders/1", &[other, delete]), None);

    // Hosts, paths and methods together make no more combinations than two
    // full lists (17 × 17); past that the request is refused, as past the
    // bound of one list.
    let b = World::from(json!({
        "default_action": "allow",
        "routes": [
            {"name": "internal", "match": {"prefix": "/admin/", "methods": ["GET"],
             "hosts": ["internal.example.com"]}},
            {"name": "open", "match": {"prefix": "/v1/"}}
        ]
    }));
    let hosts = (0..16)
        .map(|i| format!("h{i}.example"))
        .collect::<Vec<_>>()
        .join(",");
    let paths: Vec<String> = (0..16).map(|i| format!("/v1/public/{i}")).collect();
    let mut extra: Vec<(&str, &str)> = vec![("x-forwarded-host", &hosts)];
    extra.extend(paths.iter().map(|p| ("x-original-url", p.as_str())));
    assert_eq!(b.route("POST", "/v1/public/x", &extra), None);
    extra.push(("x-http-method-override", "PUT"));
    assert_eq!(b.route("POST", "/v1/public/x", &extra), denied);
    let methods = (0..16).map(|i| format!("M{i}")).collect::<Vec<_>>();
    let methods = methods.join(",");
    let override_all = ("x-http-method-override", methods.as_str());
    assert_eq!(
        b.route("POST", "/v1/public/x", &[extra[0], override_all]),
        None
    );
    assert_eq!(
        b.route("POST", "/v1/public/x", &[extra[0], extra[1], override_all]),
        denied
    );
}

#[test]
fn path_parameters_trailing_slashes_and_host_dots_take_the_route_the_upstream_serves() {
    let w = World::from(json!({
        "routes": [
            {"name": "payments", "match": {"prefix": "/v1/payments/"}},
            {"name": "sms", "match": {"path": "/v1/sms", "methods": ["POST"]}},
            {"name": "admin", "match": {"prefix": "/", "hosts": ["admin.example.com"]}},
            {"name": "api", "match": {"prefix": "/v1/"}}
        ]
    }));
    let route = |method: &str, path: &str, authority: &str| {
        let h = headers(&[
            (":method", method),
            (":path", path),
            (":authority", authority),
        ]);
        match match_route(&w.config, &Request::new(&h, None)) {
            Ok(m) => m.map(|(_, r)| r.name.clone()),
            Err(UnclearPath) => Some("(unclear)".to_owned()),
        }
    };
    let api = "api.example.com";
    // `;` parameters, which Tomcat or Spring drop before routing.
    assert_eq!(
        route("GET", "/v1/payments;jsessionid=1/charge", api).as_deref(),
        Some("payments")
    );
    assert_eq!(
        route("GET", "/v1;x/payments;y/charge?z=1", api).as_deref(),
        Some("payments")
    );
    assert_eq!(
        route("GET", "/v1/paymentsX/charge", api).as_deref(),
        Some("api")
    );
    // One trailing slash on an exact path.
    assert_eq!(route("POST", "/v1/sms/", api).as_deref(), Some("sms"));
    assert_eq!(route("POST", "/v1/sms;x", api).as_deref(), Some("sms"));
    // The collection a prefix ending in `/` is for.
    assert_eq!(
        route("GET", "/v1/payments", api).as_deref(),
        Some("payments")
    );
    assert_eq!(route("GET", "/v1/payment", api).as_deref(), Some("api"));
    // Dot and empty segments, which Envoy's normalisation leaves none of,
    // come back from `;` (or arrive with that normalisation off): an
    // upstream that resolves them serves another path than the spelling
    // names, so no route is trusted with them.
    for path in [
        "/v1/sms//",
        "/v1//sms",
        "/v1/public/..;/sms",
        "/v1/public/..;x/sms",
        "/x/..;/v1/sms",
        "/v1/;x/sms",
        "/v1/sms/.;/send",
        "/v1/./sms",
        "/v1/x/../sms",
        "/v1/sms/..",
    ] {
        assert_eq!(
            route("POST", path, api).as_deref(),
            Some("(unclear)"),
            "{path}"
        );
    }
    // Dots inside a segment are just names.
    assert_eq!(
        route("GET", "/v1/.well-known/x", api).as_deref(),
        Some("api")
    );
    assert_eq!(route("GET", "/v1/a..b/", api).as_deref(), Some("api"));
    assert_eq!(route("GET", "/", "x").as_deref(), None);
    // Methods: any case, and HEAD takes a GET route (the upstream runs the
    // GET handler for it).
    assert_eq!(route("post", "/v1/sms", api).as_deref(), Some("sms"));
    assert_eq!(route("GET", "/v1/sms", api).as_deref(), Some("api"));
    // A fully qualified host name.
    assert_eq!(
        route("GET", "/v1/x", "admin.example.com.").as_deref(),
        Some("admin")
    );
    assert_eq!(
        route("GET", "/v1/x", "admin.example.com.:8443").as_deref(),
        Some("admin")
    );
    assert_eq!(route("GET", "/v1/x", api).as_deref(), Some("api"));
}

#[test]
fn a_pointer_read_as_a_phone_number_is_not_also_read_as_plain_text() {
    // A plain `body` entry on the phone's pointer would send the number in
    // clear to the rate-limit service: the configuration is refused, in
    // either order, naming the plain entry.
    for plain_first in [true, false] {
        let plain =
            json!({"name": "raw", "entries": [{"type": "body", "pointer": "/to", "key": "to"}]});
        let phone = json!({"name": "per-number", "entries": [{"type": "body", "pointer": "/to", "phone": true}]});
        let rules = if plain_first {
            vec![plain, phone]
        } else {
            vec![phone, plain]
        };
        let e = Config::from_json(
            json!({
                "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
                "phone": {"default_calling_code": "44", "hash_key_base64": STANDARD.encode([5u8; 32])},
                "routes": [{"name": "sms", "match": {"path": "/sms"}, "rate_limits": rules}]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap_err();
        let at = if plain_first { 0 } else { 1 };
        assert_eq!(e.path, format!("routes[0].rate_limits[{at}].entries[0]"));
        assert!(e.message.contains("in clear"), "{e}");
    }
    // Another pointer read as text on the same route is fine.
    assert!(Config::from_json(
        json!({
            "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
            "phone": {"default_calling_code": "44", "hash_key_base64": STANDARD.encode([5u8; 32])},
            "routes": [{"name": "sms", "match": {"path": "/sms"}, "rate_limits": [
                {"entries": [{"type": "body", "pointer": "/template", "key": "t"}]},
                {"entries": [{"type": "body", "pointer": "/to", "phone": true}]}]}]
        })
        .to_string()
        .as_bytes(),
    )
    .is_ok());
}

#[test]
fn every_token_header_of_the_route_is_removed_whatever_the_outcome() {
    let w = World::from(json!({
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("key")}]},
        "tokens": [
            {"name": "own", "from": [{"header": "x-app-token"}], "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
            {"name": "firebase", "from": [{"header": "x-firebase-appcheck"}], "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
            {"name": "fwd", "from": [{"header": "x-fwd"}], "forward": true, "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}
        ],
        "routes": [
            {"name": "both", "match": {"prefix": "/both"}, "tokens": ["own", "firebase", "fwd"]},
            {"name": "watch", "match": {"prefix": "/watch"}, "tokens": ["own"], "api_key": "required", "mode": "monitor"},
            {"name": "watch-fwd", "match": {"prefix": "/fwd-watch"}, "tokens": ["fwd"], "mode": "monitor"}
        ]
    }));
    let good = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let removed = |d: &Decision| match d {
        Decision::Allow(g) => {
            let mut r = g.remove_headers.clone();
            r.sort();
            r
        }
        Decision::Deny(_) => panic!("{d:?}"),
    };
    // A verified token and unverified ones of other providers beside it:
    // none goes upstream, a forwarded provider's neither (its header is
    // read upstream as a token appguard checked).
    let (d, _) = w.run(
        "/both",
        "192.0.2.1",
        &[
            ("x-app-token", &good),
            ("x-firebase-appcheck", "forged.unverified.token"),
            ("x-fwd", "x"),
            ("X_Fwd", "y"),
        ],
    );
    assert_eq!(
        removed(&d),
        vec!["X_Fwd", "x-app-token", "x-firebase-appcheck", "x-fwd"]
    );
    // The forwarded provider's own verified token stays, in its spellings.
    let (d, _) = w.run("/both", "192.0.2.1", &[("x-fwd", &good), ("x_fwd", &good)]);
    assert_eq!(removed(&d), Vec::<String>::new());
    // Monitor mode lets a request through that an earlier check refused:
    // its token is still removed.
    let (d, _) = w.run("/watch", "192.0.2.1", &[("x-app-token", &good)]);
    match &d {
        Decision::Allow(g) => assert_eq!(g.would_deny, Some(Reason::ApiKeyMissing)),
        d => panic!("{d:?}"),
    }
    assert_eq!(removed(&d), vec!["x-app-token"]);
    // A forwarded provider's token that did not verify, let through by
    // monitor mode: it does not go upstream either.
    let (d, _) = w.run(
        "/fwd-watch",
        "192.0.2.1",
        &[("x-fwd", "forged.unverified.token")],
    );
    match &d {
        Decision::Allow(g) => assert_eq!(g.would_deny, Some(Reason::TokenMalformed)),
        d => panic!("{d:?}"),
    }
    assert_eq!(removed(&d), vec!["x-fwd"]);
    // Its verified token does.
    let (d, _) = w.run("/fwd-watch", "192.0.2.1", &[("x-fwd", &good)]);
    assert_eq!(removed(&d), Vec::<String>::new());
}

#[test]
fn headers_appguard_sets_cannot_be_read_from_clients_or_carry_claims() {
    let err = |v: Value| Config::from_json(v.to_string().as_bytes()).unwrap_err();
    let key = STANDARD.encode(SECRET);
    let e = err(
        json!({"tokens": [{"name": "t", "from": [{"header": "x-t"}], "keys": [{"alg": "HS256", "secret_base64": key}],
                                   "claim_to_headers": [{"claim": "sub", "header": "x-t"}]}]}),
    );
    assert_eq!(e.path, "tokens[0].claim_to_headers[0].header");
    // in another spelling of the token or API key header, too: stripping
    // it from every request would strip the client's real one
    for header in ["x_t", "x_api_key", "X.Api.Key"] {
        let e = err(
            json!({"tokens": [{"name": "t", "from": [{"header": "x-t"}], "keys": [{"alg": "HS256", "secret_base64": key}],
                               "claim_to_headers": [{"claim": "sub", "header": header}]}]}),
        );
        assert_eq!(e.path, "tokens[0].claim_to_headers[0].header", "{header}");
    }
    // Nor one appguard reads for another role (platform, country, binding;
    // a platform header renamed too), one of its own in another spelling,
    // or one HTTP framing or the proxies in front own.
    for header in [
        "x_appguard_app",
        "x.appguard.app",
        "x-android-package",
        "X_IOS_Bundle_Identifier",
        "x-pkg",
        "x-country",
        "authorization",
        "host",
        "content-length",
        "Transfer-Encoding",
        "connection",
        "te",
        "x_forwarded_for",
        "forwarded",
        "x-real-ip",
        // the headers routes are matched by
        "x-forwarded-host",
        "X_HTTP_Method_Override",
        "x-method-override",
        "x-original-url",
        "x.rewrite.url",
        "x-forwarded-proto",
        // and those the body, signature, origin and preflight checks read
        "content-type",
        "Content-Encoding",
        "content-digest",
        "signature-input",
        "origin",
        "referer",
        "access-control-request-method",
    ] {
        let e = err(json!({
            "platform_headers": {"android_cert": "x-pkg"},
            "network": {"country_header": "x-country", "country_deny": ["RU"]},
            "tokens": [{"name": "t", "from": [{"header": "x-t"}], "keys": [{"alg": "HS256", "secret_base64": key}],
                        "binding": {"headers": ["authorization"]},
                        "claim_to_headers": [{"claim": "sub", "header": header}]}]}));
        assert_eq!(e.path, "tokens[0].claim_to_headers[0].header", "{header}");
    }
    let e = err(
        json!({"tokens": [{"name": "t", "from": [{"header": "x-t"}], "keys": [{"alg": "HS256", "secret_base64": key}],
                                   "claim_to_headers": [{"claim": "sub", "header": "x-user"}]}],
                       "routes": [{"name": "r", "match": {"prefix": "/"}, "rate_limits": [
                           {"entries": [{"type": "header", "name": "x-user"}], "local": {"requests": 1, "per": "minute"}}]}]}),
    );
    assert_eq!(e.path, "routes[0].rate_limits[0].entries[0].name");
    for header in ["x-appguard-app", "x_appguard_app", "X_APPGUARD_APP"] {
        let e = err(
            json!({"routes": [{"name": "r", "match": {"prefix": "/"}, "rate_limits": [
                               {"entries": [{"type": "header", "name": header}], "local": {"requests": 1, "per": "minute"}}]}]}),
        );
        assert_eq!(
            e.path, "routes[0].rate_limits[0].entries[0].name",
            "{header}"
        );
    }
    let e = err(
        json!({"tokens": [{"name": "t", "from": [{"header": "x-t"}], "keys": [{"alg": "HS256", "secret_base64": key}],
                           "claim_to_headers": [{"claim": "sub", "header": "x-user"}]}],
               "routes": [{"name": "r", "match": {"prefix": "/"}, "rate_limits": [
                   {"entries": [{"type": "header", "name": "x_user"}], "local": {"requests": 1, "per": "minute"}}]}]}),
    );
    assert_eq!(e.path, "routes[0].rate_limits[0].entries[0].name", "x_user");
    let e = err(json!({"routes": [{"name": "_unmatched", "match": {"prefix": "/"}}]}));
    assert_eq!(e.path, "routes[0].name");
    // The claim headers, for the adapter to strip from every request.
    let c = Config::from_json(
        json!({"tokens": [{"name": "t", "from": [{"header": "x-t"}], "keys": [{"alg": "HS256", "secret_base64": key}],
                           "claim_to_headers": [{"claim": "sub", "header": "x-user"}, {"claim": "tier", "header": "x-tier"}]}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(c.claim_headers, vec!["x-user", "x-tier"]);
}

#[test]
fn the_credential_headers_a_trailer_may_not_carry_are_compiled_once() {
    // The adapter removes a request trailer named like any of these; each
    // is listed once, whichever providers name it and in whichever spelling.
    let key = STANDARD.encode(SECRET);
    let c = Config::from_json(
        json!({"api_keys": {"header": "x-api-key", "keys": []},
               "tokens": [{"name": "a", "from": [{"header": "x-app-token"}, {"header": "authorization", "prefix": "Bearer "}],
                           "keys": [{"alg": "HS256", "secret_base64": key}],
                           "binding": {"claim": "sid", "headers": ["x-session-id"]}},
                          {"name": "b", "from": [{"header": "x_app_token"}],
                           "keys": [{"alg": "HS256", "secret_base64": key}],
                           "message_signing": {"claim": "ipk", "components": ["@method", "x-session-id", "x-nonce"]}}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        c.credential_headers,
        vec![
            "x-api-key",
            "x-app-token",
            "authorization",
            "x-session-id",
            "signature",
            "signature-input",
            "content-digest",
            "content-type",
            "x-nonce"
        ]
    );
    // Without API keys, tokens or signing, only the API-key header (its
    // default name) is one.
    let c = Config::from_json(b"{}").unwrap();
    assert_eq!(c.credential_headers, vec![c.api_keys.header.clone()]);
}

/// A `host` request trailer (Envoy passes one on: an
/// HTTP/1.1 chunked trailer is no `:authority`) is cut like the
/// forwarded-host trailers: an upstream that merges trailers into its
/// headers would take the request for another host than the one
/// `match.hosts` checked (RFC 9110 6.5.1 forbids `Host` in trailers, which
/// is why no client needs it there).
#[test]
fn a_host_trailer_is_a_redirecting_header() {
    for name in ["host", "Host", "x-forwarded-host", "forwarded"] {
        assert!(crate::policy::is_redirecting_header_name(name), "{name}");
    }
    assert!(!crate::policy::is_redirecting_header_name("x-checksum"));
}

/// The body's format headers are cut from trailers.
#[test]
fn the_body_format_headers_are_cut_from_trailers() {
    for name in [
        "content-type",
        "Content-Type",
        "content_type",
        "content-encoding",
    ] {
        assert!(crate::policy::is_body_format_header_name(name), "{name}");
    }
    assert!(!crate::policy::is_body_format_header_name("content-length"));
    assert!(!crate::policy::is_body_format_header_name("x-checksum"));
}

/// With a key parameter, a cookie of its name is a key
/// to upstreams that merge cookies into their parameters (README
/// `query_param`), and appguard checks the headers' cookies for one. A
/// `cookie` sent as a request trailer is not checked: it must be cut like
/// a trailer copy of the key header, or such an upstream that also merges
/// trailers reads a key nobody checked (the victim's, while appguard checked
/// the attacker's own key in the query).
#[test]
fn with_a_key_parameter_a_cookie_trailer_is_a_credential() {
    let c = Config::from_json(
        json!({"api_keys": {"header": "x-api-key", "query_param": "key", "keys": []}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert!(
        c.credential_headers.iter().any(|h| h == "cookie"),
        "{:?}",
        c.credential_headers
    );
    // Without a key parameter no cookie is a key: nothing changes.
    let c = Config::from_json(b"{}").unwrap();
    assert!(!c.credential_headers.iter().any(|h| h == "cookie"));
}

#[test]
fn a_signature_covers_the_header_the_token_came_from() {
    use crate::signing::{sign_request, InstallSigningKey, SignatureOptions};
    let w = World::from(json!({
        "tokens": [{"name": "t",
                    "from": [{"header": "approov-token"}, {"header": "authorization", "prefix": "Bearer "}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60}}],
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t"]}]
    }));
    let key = InstallSigningKey::p256_from_bytes(&[7u8; 32]).unwrap();
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "ipk": key.public_key().to_ipk()}),
    );
    let bearer = format!("Bearer {token}");
    let sign = |token_header: &str, value: &str| {
        let hs = vec![(token_header.to_string(), value.to_string())];
        let msg = crate::signing::Message::request(
            "GET",
            "https",
            "api.example.com",
            "/v1/x",
            None,
            &hs,
            None,
        );
        let comps = vec![
            "@method".into(),
            "@authority".into(),
            "@path".into(),
            token_header.into(),
        ];
        let sig = sign_request(&key, &msg, &SignatureOptions::new("install", comps, NOW)).unwrap();
        (sig.signature_input, sig.signature)
    };
    let run = |token_header: &str, value: &str| {
        let (input, sig) = sign(token_header, value);
        let h = headers(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/v1/x"),
            (":authority", "api.example.com"),
            (token_header, value),
            ("signature-input", &input),
            ("signature", &sig),
        ]);
        evaluate(&w.ctx(), &Request::new(&h, None), NOW).done_reason()
    };
    assert_eq!(run("approov-token", &token), None, "the first source");
    assert_eq!(
        run("authorization", &bearer),
        None,
        "the second source, covered"
    );
}

#[test]
fn a_route_has_at_most_32_rate_limits() {
    // More rules than the rate-limit service takes descriptors: refused.
    let many: Vec<Value> = (0..33)
        .map(|i| json!({"name": format!("r{i}"), "entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "minute"}}))
        .collect();
    let e = Config::from_json(
        json!({"routes": [{"name": "r", "match": {"prefix": "/"}, "rate_limits": many}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.path, "routes[0].rate_limits");
}

#[test]
fn failures_on_a_monitor_route_do_not_spend_the_budget_of_enforce_routes() {
    // Rolling out a provider in monitor mode with keys that are not right
    // yet: every signature fails there. Its enforce routes keep refusing by
    // their own budget only.
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "failure_budget": {"failures": 2, "window_seconds": 60}}],
        "routes": [
            {"name": "watch", "match": {"prefix": "/watch"}, "tokens": ["t"], "mode": "monitor"},
            {"name": "api", "match": {"prefix": "/api"}, "tokens": ["t"]}
        ]
    }));
    let forged = |n: u32| {
        hs256_raw(
            &[9u8; 64],
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60, "n": n}),
        )
    };
    for n in 0..3 {
        let (d, _) = w.run("/watch", "198.51.100.7", &[("x-t", &forged(n))]);
        match d {
            Decision::Allow(g) => assert_eq!(g.would_deny, Some(Reason::TokenSignature)),
            d => panic!("monitor mode never blocks: {d:?}"),
        }
    }
    // The monitor route's own budget is spent: a flood there stops costing
    // verifications.
    let (_, f) = w.run("/watch", "198.51.100.7", &[("x-t", &forged(3))]);
    assert!(f.budget_refused);
    // The same client's genuine token on the enforce route passes.
    let good = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "n": 99}),
    );
    let (d, f) = w.run("/api", "198.51.100.7", &[("x-t", &good)]);
    assert_eq!((d.reason(), f.budget_refused), (None, false));
}

#[test]
fn request_signing_is_checked_before_the_body_checks() {
    // SPEC §1: the token (step 4, request signing included) comes before
    // the body checks (step 6), and the first failure decides. A request
    // whose signature is missing or forged is `signature_invalid`, whatever
    // its body says: it learns nothing about denied prefixes or the body
    // format without the install's key.
    let w = World::from(json!({
        "phone": {"default_calling_code": "44", "denied_prefixes": ["+882"], "hash_key_base64": STANDARD.encode([5u8; 32])},
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "message_signing": {"claim": "ipk"}}],
        "routes": [{"name": "sms", "match": {"path": "/sms"}, "tokens": ["t"],
                    "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                                     "local": {"requests": 10, "per": "minute"}}]}]
    }));
    let key = crate::signing::InstallSigningKey::p256_from_bytes(&[7u8; 32]).unwrap();
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "ipk": key.public_key().to_ipk()}),
    );
    let reason = |body: &str| {
        w.post(
            "/sms",
            "198.51.100.1",
            &[("approov-token", &token), ("content-length", "20")],
            body,
        )
        .done_reason()
    };
    assert_eq!(
        reason(r#"{"to":"+882123456789"}"#),
        Some(Reason::SignatureInvalid)
    );
    assert_eq!(reason("not json"), Some(Reason::SignatureInvalid));
    assert_eq!(
        reason(r#"{"to":"+447911123456"}"#),
        Some(Reason::SignatureInvalid)
    );
}

#[test]
fn a_429_from_the_over_limit_cache_carries_every_rate_limit_header() {
    // SPEC §4: a 429 carries `retry-after` and the three `x-ratelimit-*`
    // headers, whether the service said no just now or said it earlier
    // and the worker's over-limit cache answers for it.
    let w = limits_world();
    let body = json!({"to": "+447700900123"}).to_string();
    let Step::NeedRateLimit(p, _) = w.post("/sms", "192.0.2.1", &[], &body) else {
        panic!()
    };
    let first = match evaluate_rls(&w.ctx(), p, Ok(&over_limit_response(42)), NOW) {
        Step::Done(Decision::Deny(d), _) => d.headers,
        s => panic!("{s:?}"),
    };
    let cached = match w.post("/sms", "192.0.3.2", &[], &body) {
        Step::Done(Decision::Deny(d), _) => d.headers,
        s => panic!("expected a 429 from the cache: {s:?}"),
    };
    let names = |h: &[(String, String)]| {
        let mut n: Vec<String> = h.iter().map(|(k, _)| k.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&cached), names(&first), "{cached:?} vs {first:?}");
    assert!(cached.contains(&("x-ratelimit-limit".into(), "5".into())));
    assert!(cached.contains(&("x-ratelimit-remaining".into(), "0".into())));
    assert!(cached.contains(&("retry-after".into(), "42".into())));
    assert!(
        cached.contains(&("x-ratelimit-reset".into(), "42".into())),
        "{cached:?}"
    );
}

#[test]
fn a_country_allow_list_refuses_every_other_country_and_none() {
    // SPEC §1 step 2: country allow lists, read from the header a trusted
    // component set. Outside the list, or no country at all: refused.
    let w = World::from(json!({
        "network": {"country_header": "x-country", "country_allow": ["GB", "FR"]},
        "routes": [{"name": "open", "match": {"prefix": "/"}}]
    }));
    assert_eq!(w.reason("/x", &[("x-country", "GB")]), None);
    assert_eq!(w.reason("/x", &[("x-country", "fr")]), None);
    assert_eq!(
        w.reason("/x", &[("x-country", "US")]),
        Some(Reason::CountryDenied)
    );
    assert_eq!(w.reason("/x", &[]), Some(Reason::CountryDenied));
    assert_eq!(
        w.reason("/x", &[("x-country", "GBR")]),
        Some(Reason::CountryDenied)
    );
}

#[test]
fn country_required_refuses_an_unknown_country_under_a_deny_list() {
    // Envoy's geoip filter sets the header only when its lookup succeeds:
    // with a deny list alone, an unknown country passes, unless the
    // configuration asks for a country (globally or on a route).
    let w = World::from(json!({
        "network": {"country_header": "x-country", "country_deny": ["KP"]},
        "routes": [
            {"name": "strict", "match": {"prefix": "/strict/"},
             "network": {"country_header": "x-country", "country_required": true}},
            {"name": "open", "match": {"prefix": "/"}}
        ]
    }));
    // Without the field, today's behaviour: no country is no refusal.
    assert_eq!(w.reason("/x", &[]), None);
    assert_eq!(w.reason("/x", &[("x-country", "")]), None);
    assert_eq!(w.reason("/x", &[("x-country", "GB")]), None);
    // With it, on the route: no header, an empty or blank one, refused.
    for hs in [
        &[][..],
        &[("x-country", "")][..],
        &[("x-country", "  ")][..],
    ] {
        assert_eq!(
            w.reason("/strict/x", hs),
            Some(Reason::CountryDenied),
            "{hs:?}"
        );
    }
    assert_eq!(w.reason("/strict/x", &[("x-country", "GB")]), None);
    assert_eq!(w.reason("/strict/x", &[("x-country", "gb")]), None);
    assert_eq!(
        w.reason("/strict/x", &[("x-country", "KP")]),
        Some(Reason::CountryDenied)
    );
    // And globally, with no list at all.
    let w = World::from(json!({
        "network": {"country_header": "x-country", "country_required": true},
        "routes": [{"name": "open", "match": {"prefix": "/"}}]
    }));
    assert_eq!(w.reason("/x", &[]), Some(Reason::CountryDenied));
    assert_eq!(w.reason("/x", &[("x-country", "FR")]), None);
}

#[test]
fn a_country_value_that_is_not_one_code_is_refused_not_read_as_none() {
    // A deny list must not be dodged by a value no trusted component
    // writes: a list, a longer code, digits, non-ASCII letters. The case
    // of a real code does not matter, as in the configured lists.
    let deny = World::from(json!({
        "network": {"country_header": "x-country", "country_deny": ["KP", "DE"]},
        "routes": [{"name": "open", "match": {"prefix": "/"}}]
    }));
    let allow = World::from(json!({
        "network": {"country_header": "x-country", "country_allow": ["GB", "FR"]},
        "routes": [{"name": "open", "match": {"prefix": "/"}}]
    }));
    // The header named with no list at all: still one code, or refused.
    let header_only = World::from(json!({
        "network": {"country_header": "x-country"},
        "routes": [{"name": "open", "match": {"prefix": "/"}}]
    }));
    assert_eq!(header_only.reason("/x", &[]), None);
    assert_eq!(header_only.reason("/x", &[("x-country", "us")]), None);
    for bad in [
        "DE,FR", "GB,FR", "GB FR", "zz1", "GBR", "G", "\u{e9}", "K\u{130}", "--", "T-",
    ] {
        for (name, w) in [
            ("deny", &deny),
            ("allow", &allow),
            ("header only", &header_only),
        ] {
            assert_eq!(
                w.reason("/x", &[("x-country", bad)]),
                Some(Reason::CountryDenied),
                "{name} {bad:?}"
            );
        }
    }
    for (value, deny_reason, allow_reason) in [
        (
            "de",
            Some(Reason::CountryDenied),
            Some(Reason::CountryDenied),
        ),
        (
            "kP",
            Some(Reason::CountryDenied),
            Some(Reason::CountryDenied),
        ),
        (" gb ", None, None),
        ("fr", None, None),
        ("US", None, Some(Reason::CountryDenied)),
    ] {
        assert_eq!(
            deny.reason("/x", &[("x-country", value)]),
            deny_reason,
            "deny {value:?}"
        );
        assert_eq!(
            allow.reason("/x", &[("x-country", value)]),
            allow_reason,
            "allow {value:?}"
        );
    }
}

#[test]
fn geolocation_codes_like_tor_t1_are_codes_the_lists_can_name() {
    // Cloudflare writes `T1` for Tor and MaxMind `A1` for anonymous
    // proxies: codes a trusted component sets, so a deny list can name
    // them, an allow list refuses them, and a deny list without them
    // lets them through like any other unlisted code.
    let deny_tor = World::from(json!({
        "network": {"country_header": "x-country", "country_deny": ["t1", "A1"]},
        "routes": [{"name": "open", "match": {"prefix": "/"}}]
    }));
    let deny_kp = World::from(json!({
        "network": {"country_header": "x-country", "country_deny": ["KP"]},
        "routes": [{"name": "open", "match": {"prefix": "/"}}]
    }));
    let allow = World::from(json!({
        "network": {"country_header": "x-country", "country_allow": ["GB"]},
        "routes": [{"name": "open", "match": {"prefix": "/"}}]
    }));
    for code in ["T1", "t1", "A1"] {
        let h = [("x-country", code)];
        assert_eq!(
            deny_tor.reason("/x", &h),
            Some(Reason::CountryDenied),
            "{code}"
        );
        assert_eq!(deny_kp.reason("/x", &h), None, "{code}");
        assert_eq!(
            allow.reason("/x", &h),
            Some(Reason::CountryDenied),
            "{code}"
        );
    }
    assert_eq!(deny_tor.reason("/x", &[("x-country", "GB")]), None);
}

#[test]
fn country_required_needs_the_country_header() {
    for (json, path) in [
        (
            json!({"network": {"country_required": true}}),
            "network.country_header",
        ),
        (
            json!({"routes": [{"name": "r", "match": {"prefix": "/"},
                               "network": {"country_required": true}}]}),
            "routes[0].network.country_header",
        ),
    ] {
        let e = Config::from_json(json.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains("country_required"), "{e}");
    }
    assert!(Config::from_json(br#"{"network":{"country_required":false}}"#).is_ok());
}

#[test]
fn request_signing_is_checked_before_the_platform_and_app() {
    // SPEC §1: the token (step 4, request signing included) decides before
    // platform and app identity (step 5). A request without the install's
    // signature is `signature_invalid`, whatever platform headers it shows.
    let w = World::from(json!({
        "apps": [{"id": "a", "platform": "android", "package": "com.example.a"}],
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "message_signing": {"claim": "ipk"}}],
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t"], "platforms": ["android"]}]
    }));
    let key = crate::signing::InstallSigningKey::p256_from_bytes(&[7u8; 32]).unwrap();
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "ipk": key.public_key().to_ipk()}),
    );
    let reason = |extra: &[(&str, &str)]| {
        let mut all = vec![
            (":method", "GET"),
            (":path", "/v1/x"),
            (":authority", "api.example.com"),
            ("approov-token", token.as_str()),
        ];
        all.extend_from_slice(extra);
        let h = headers(&all);
        evaluate(&w.ctx(), &Request::new(&h, None), NOW).done_reason()
    };
    assert_eq!(
        reason(&[("x-android-package", "com.unknown")]),
        Some(Reason::SignatureInvalid)
    );
    assert_eq!(
        reason(&[("origin", "https://evil.example")]),
        Some(Reason::SignatureInvalid)
    );
    assert_eq!(reason(&[]), Some(Reason::SignatureInvalid));
}

fn lease_world() -> World {
    lease_world_of(3)
}

/// [`lease_world`] with its per-user rules leased `size` at a time.
fn lease_world_of(size: u32) -> World {
    World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "routes": [
            {"name": "open", "match": {"prefix": "/open"}, "failure_mode": "deny",
             "rate_limits": [
                {"name": "per-user", "entries": [{"type": "header", "name": "x-user"}], "lease": size},
                {"name": "per-ip", "entries": [{"type": "client_ip"}]}
             ]},
            {"name": "leased", "match": {"prefix": "/leased"}, "failure_mode": "deny",
             "rate_limits": [{"name": "per-user", "entries": [{"type": "header", "name": "x-user"}], "lease": size}]}
        ]
    }))
}

/// The descriptors of a call, each with its own `hits_addend` (None: the
/// request's).
fn rls_hits(call: &RlsCall) -> Vec<(Descriptor, Option<u64>)> {
    use prost::Message;
    let r = crate::ratelimit::rls::RateLimitRequest::decode(call.message.as_slice()).unwrap();
    assert_eq!(r.domain, "appguard");
    r.descriptors
        .iter()
        .map(|d| {
            (
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
                d.hits_addend.map(|h| h.value),
            )
        })
        .collect()
}

/// An `OK` answer: every descriptor within a limit of 10 a minute, with
/// `remaining` left and the window resetting in `reset_ms`.
fn ok_response(n: usize, remaining: u32, reset_ms: Option<i64>) -> RateLimitResponse {
    use crate::ratelimit::rls::*;
    RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: (0..n)
            .map(|_| DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: 10,
                    unit: Unit::Minute as i32,
                }),
                limit_remaining: remaining,
                duration_until_reset: reset_ms.map(|ms| Duration {
                    seconds: ms / 1000,
                    nanos: i32::try_from(ms % 1000).unwrap() * 1_000_000,
                }),
            })
            .collect(),
        ..Default::default()
    }
}

impl World {
    /// A GET of `path` for user `user` at `now_ms`: the final step.
    fn leased_get(&self, path: &str, user: &str, now_ms: u64) -> Step {
        self.leased_get_from(path, user, "192.0.2.7", now_ms)
    }

    /// [`World::leased_get`] from client `ip`.
    fn leased_get_from(&self, path: &str, user: &str, ip: &str, now_ms: u64) -> Step {
        let h = headers(&[
            (":method", "GET"),
            (":path", path),
            (":authority", "api.example.com"),
            ("x-user", user),
        ]);
        let req = Request::new(&h, Some(ip.parse().unwrap()));
        let ctx = Ctx {
            now_ms,
            ..self.ctx()
        };
        evaluate(&ctx, &req, now_ms / 1000)
    }

    /// The service's answer to a pending call, at `now_ms`.
    fn answer(&self, p: Box<Pending>, resp: &RateLimitResponse, now_ms: u64) -> Step {
        let ctx = Ctx {
            now_ms,
            ..self.ctx()
        };
        evaluate_rls(&ctx, p, Ok(resp), now_ms / 1000)
    }
}

impl World {
    /// The call a request for `user` makes at `now_ms` (it must make one),
    /// and its descriptors with their hits.
    fn leased_call(
        &self,
        user: &str,
        now_ms: u64,
    ) -> (Box<Pending>, Vec<(Descriptor, Option<u64>)>) {
        match self.leased_get("/leased", user, now_ms) {
            Step::NeedRateLimit(p, call) => {
                let hits = rls_hits(&call);
                (p, hits)
            }
            s => panic!("expected a call at {now_ms}: {s:?}"),
        }
    }

    /// The first request for `user` on `/leased` from `now_ms` on (one a
    /// millisecond) that makes a call, the others taking held hits: the
    /// request a client resetting its calls resets. Its call's hits, and
    /// the time it was sent.
    fn next_call(&self, user: &str, now_ms: u64) -> (Box<Pending>, u64, u64) {
        for at in now_ms..now_ms + 1_000 {
            match self.leased_get("/leased", user, at) {
                Step::NeedRateLimit(p, call) => {
                    let hits = rls_hits(&call)[0].1.unwrap_or(1);
                    return (p, hits, at);
                }
                Step::Done(Decision::Allow(_), _) => {}
                s => panic!("{s:?}"),
            }
        }
        panic!("no call in 1,000 requests from {now_ms}");
    }

    /// `n` requests for `u1` sent side by side from `from_ms` (one a
    /// millisecond), each making a call, then reset with the request of
    /// the call `also` while all are out: the hits the service counted for
    /// the `n`.
    fn burst_then_reset(&self, n: u64, from_ms: u64, also: Option<Box<Pending>>) -> u64 {
        let mut pending: Vec<_> = also.into_iter().collect();
        let mut counted = 0;
        for i in 0..n {
            let (p, sent) = self.leased_call("u1", from_ms + i);
            counted += sent[0].1.unwrap_or(1);
            pending.push(p);
        }
        for p in pending {
            abandon_rls(&self.ctx(), p);
        }
        counted
    }

    /// Whether a request for `user` at `now_ms` passes without a call.
    fn leased_pass(&self, user: &str, now_ms: u64) -> bool {
        matches!(
            self.leased_get("/leased", user, now_ms),
            Step::Done(Decision::Allow(_), _)
        )
    }

    /// Answers a call `OK` at `now_ms` (see [`ok_response`]): allowed.
    fn leased_ok(&self, p: Box<Pending>, remaining: u32, reset_ms: i64, now_ms: u64) {
        let resp = ok_response(1, remaining, Some(reset_ms));
        let step = self.answer(p, &resp, now_ms);
        assert!(
            matches!(step, Step::Done(Decision::Allow(_), _)),
            "{step:?}"
        );
    }
}

#[test]
fn a_lease_spares_the_service_until_its_hits_are_used_or_its_window_resets() {
    let w = lease_world();
    let t = NOW * 1000;
    let u1 = |hits| vec![(vec![("x-user".to_owned(), "u1".to_owned())], hits)];
    // The first request asks for the lease's 3 hits; the next two take the
    // kept ones, without a call.
    let (p, sent) = w.leased_call("u1", t);
    assert_eq!(sent, u1(Some(3)));
    w.leased_ok(p, 7, 30_000, t + 5);
    assert!(w.leased_pass("u1", t + 10) && w.leased_pass("u1", t + 11));
    // Another user has a descriptor (and a lease) of its own.
    let _ = w.leased_call("u2", t + 20);
    // Used up: the next call asks again, for no more than the service said
    // remained.
    let (p, sent) = w.leased_call("u1", t + 30);
    assert_eq!(sent, u1(Some(3)));
    w.leased_ok(p, 1, 29_000, t + 35);
    assert!(w.leased_pass("u1", t + 40) && w.leased_pass("u1", t + 41));
    // One hit remained in the service: a lease of 1 is a plain call.
    let (p, sent) = w.leased_call("u1", t + 50);
    assert_eq!(sent, u1(None));
    w.leased_ok(p, 0, 28_900, t + 55);
    // Still in that window (it ends at t + 50 + 28.9 s; an answer with
    // milliseconds is taken as exact): the service said none remained, so
    // the next call asks for 1 and lets it decide.
    let (p, sent) = w.leased_call("u1", t + 28_000);
    assert_eq!(sent, u1(None), "none left in the window");
    w.leased_ok(p, 0, 950, t + 28_001);
    // The window reset: a full lease again.
    let (p, sent) = w.leased_call("u1", t + 30_000);
    assert_eq!(sent, u1(Some(3)));
    w.leased_ok(p, 7, 60_000, t + 30_001);
    // 60 s in whole seconds, counted from the start of the service's
    // second: the window may end a second sooner, and the lease with it.
    assert!(w.leased_pass("u1", t + 88_999), "within the window");
    // The lease is over, but its window may not be: a lease asked for in
    // its last second would be counted there and kept by no one.
    let (_, sent) = w.leased_call("u1", t + 89_000);
    assert_eq!(sent, u1(None), "the window's last second: one hit");
    let (_, sent) = w.leased_call("u1", t + 90_000);
    assert_eq!(sent, u1(Some(3)), "a new window: the last kept hit is gone");
}

/// A rate-limit service for one descriptor with a limit of 10 per minute,
/// counting every hit it is asked for (refused ones too, as
/// envoyproxy/ratelimit and appguard-ratelimit do).
struct CountingService(std::cell::Cell<u32>);

impl CountingService {
    /// Counts a call's hits and answers it.
    fn count(&self, sent: &[(Descriptor, Option<u64>)]) -> RateLimitResponse {
        let hits = u32::try_from(sent[0].1.unwrap_or(1)).unwrap();
        let n = self.0.get() + hits;
        self.0.set(n);
        let mut r = ok_response(1, 10u32.saturating_sub(n), Some(30_000));
        if n > 10 {
            r.overall_code = crate::ratelimit::Code::OverLimit as i32;
            r.statuses[0].code = crate::ratelimit::Code::OverLimit as i32;
        }
        r
    }
}

#[test]
fn requests_side_by_side_ask_for_one_lease_and_a_worker_admits_exactly_the_limit() {
    // Bursts of 4 requests before any answer (an HTTP/2 client's streams),
    // answered in the order sent or the reverse: a worker leasing 3 of a
    // limit of 10 admits 10, not fewer and not more.
    for reverse in [false, true] {
        let w = lease_world();
        let service = CountingService(std::cell::Cell::new(0));
        let t = NOW * 1000;
        let (mut admitted, mut asks_of_3) = (0, 0);
        for burst in 0..6u64 {
            let at = t + burst * 100;
            let mut calls = Vec::new();
            for i in 0..4 {
                match w.leased_get("/leased", "u1", at + i) {
                    Step::NeedRateLimit(p, call) => {
                        let sent = rls_hits(&call);
                        asks_of_3 += usize::from(sent[0].1 == Some(3));
                        let answer = service.count(&sent);
                        calls.push((p, answer));
                    }
                    Step::Done(Decision::Allow(_), _) => admitted += 1,
                    s => assert_eq!(s.done_reason(), Some(Reason::RateLimited)),
                }
            }
            if reverse {
                calls.reverse();
            }
            for (p, answer) in calls {
                if matches!(
                    w.answer(p, &answer, at + 50),
                    Step::Done(Decision::Allow(_), _)
                ) {
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, 10, "reverse: {reverse}");
        assert!(asks_of_3 <= 3, "one lease asked at a time: {asks_of_3}");
    }
}

#[test]
fn hits_held_are_used_after_a_later_ask_was_refused() {
    // A lease ask and a single-hit ask side by side; other instances used
    // the rest of the limit, so the single hit is refused, and its answer
    // comes first. The 2 hits the lease holds were counted within the
    // limit: the worker still admits them.
    let w = lease_world();
    let t = NOW * 1000;
    let (lease, sent) = w.leased_call("u1", t);
    assert_eq!(sent[0].1, Some(3));
    let (single, sent) = w.leased_call("u1", t + 1);
    assert_eq!(sent[0].1, None, "one lease ask in flight");
    let mut over = ok_response(1, 0, Some(30_000));
    over.overall_code = crate::ratelimit::Code::OverLimit as i32;
    over.statuses[0].code = crate::ratelimit::Code::OverLimit as i32;
    assert_eq!(
        w.answer(single, &over, t + 5).done_reason(),
        Some(Reason::RateLimited)
    );
    w.leased_ok(lease, 0, 30_000, t + 6);
    assert!(w.leased_pass("u1", t + 10) && w.leased_pass("u1", t + 11));
    // Then the over-limit cache refuses, without a call.
    assert_eq!(
        w.leased_get("/leased", "u1", t + 12).done_reason(),
        Some(Reason::RateLimited)
    );
}

#[test]
fn a_leased_descriptor_is_left_out_of_the_call_while_the_others_go() {
    let w = lease_world();
    let t = NOW * 1000;
    let Step::NeedRateLimit(p, call) = w.leased_get("/open", "u1", t) else {
        panic!()
    };
    let sent = rls_hits(&call);
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].1, sent[1].1), (Some(3), None));
    // The per-IP limit refuses. The service may have counted the per-user
    // lease (envoyproxy/ratelimit's default) or not (a service that counts
    // nothing for a refused call): none of it is kept.
    let mut resp = ok_response(2, 7, Some(30_000));
    resp.overall_code = crate::ratelimit::Code::OverLimit as i32;
    resp.statuses[1].code = crate::ratelimit::Code::OverLimit as i32;
    resp.statuses[1].limit_remaining = 0;
    assert_eq!(
        w.answer(p, &resp, t + 1).done_reason(),
        Some(Reason::RateLimited)
    );
    // This client's per-IP descriptor is now refused from the over-limit
    // cache, before any leased hit is taken.
    assert_eq!(
        w.leased_get("/open", "u1", t + 2).done_reason(),
        Some(Reason::RateLimited)
    );
    // From another address: no leased hit, the per-user descriptor goes
    // with the per-IP one, and asks for a lease again.
    let Step::NeedRateLimit(p, call) = w.leased_get_from("/open", "u1", "192.0.2.8", t + 3) else {
        panic!()
    };
    let sent = rls_hits(&call);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!((sent[0].1, sent[1].1), (Some(3), None));
    // Allowed this time: the lease is kept, and its two other hits spare
    // the per-user descriptor the next two calls.
    assert_eq!(
        w.answer(p, &ok_response(2, 7, Some(30_000)), t + 4)
            .done_reason(),
        None
    );
    for i in 0..2 {
        let Step::NeedRateLimit(_, call) = w.leased_get_from("/open", "u1", "192.0.2.8", t + 5 + i)
        else {
            panic!()
        };
        let sent = rls_hits(&call);
        assert_eq!(
            sent,
            vec![(vec![("client_ip".into(), "192.0.2.8".into())], None)],
            "leased hit {i}"
        );
    }
    // Both leased hits used: the per-user descriptor is sent again.
    let Step::NeedRateLimit(_, call) = w.leased_get_from("/open", "u1", "192.0.2.8", t + 7) else {
        panic!()
    };
    assert_eq!(rls_hits(&call).len(), 2);
}

#[test]
fn no_lease_is_kept_without_a_window_end_or_a_limit() {
    let w = lease_world();
    let t = NOW * 1000;
    for resp in [
        ok_response(1, 7, None),
        RateLimitResponse {
            overall_code: crate::ratelimit::Code::Ok as i32,
            statuses: vec![Default::default()],
            ..Default::default()
        },
    ] {
        let (p, _) = w.leased_call("u9", t);
        let step = w.answer(p, &resp, t + 1);
        assert!(
            matches!(step, Step::Done(Decision::Allow(_), _)),
            "{step:?}"
        );
        let _ = w.leased_call("u9", t + 2);
    }
    // A failed call keeps none either.
    let (p, _) = w.leased_call("u9", t);
    assert_eq!(
        evaluate_rls(&w.ctx(), p, Err(()), NOW).done_reason(),
        Some(Reason::RatelimitUnavailable)
    );
    let _ = w.leased_call("u9", t + 2);
}

#[test]
fn a_lease_must_be_a_service_limit_of_2_to_10000() {
    let with = |rule: Value| {
        Config::from_json(
            json!({
                "rate_limit_service": {"cluster": "rls", "domain": "appguard"},
                "routes": [{"name": "r", "match": {"prefix": "/"}, "rate_limits": [rule]}]
            })
            .to_string()
            .as_bytes(),
        )
    };
    let entries = json!([{"type": "route"}]);
    assert!(with(json!({"entries": entries, "lease": 2})).is_ok());
    assert!(with(json!({"entries": entries, "lease": 10000})).is_ok());
    for bad in [0, 1, 10001] {
        let e = with(json!({"entries": entries, "lease": bad})).unwrap_err();
        assert_eq!(e.path, "routes[0].rate_limits[0].lease", "{bad}");
    }
    let e =
        with(json!({"entries": entries, "lease": 5, "local": {"requests": 5, "per": "minute"}}))
            .unwrap_err();
    assert_eq!(e.path, "routes[0].rate_limits[0].lease");
    assert!(e.to_string().contains("local"), "{e}");
}

#[test]
fn a_lease_never_spares_a_replay_descriptor() {
    // Replay protection through the service is a limit of 1 per token:
    // leasing the route's other limit must leave it in every call.
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "service"}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"],
                    "rate_limits": [{"entries": [{"type": "route"}], "lease": 5}]}]
    }));
    let get = |jti: &str| {
        let token = hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "typ": "JWT"}),
            &json!({"iat": NOW, "exp": NOW + 60, "jti": jti}),
        );
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "api.example.com"),
            ("x-token", &token),
        ]);
        match evaluate(&w.ctx(), &Request::new(&h, None), NOW) {
            Step::NeedRateLimit(p, call) => (p, rls_hits(&call)),
            s => panic!("{jti}: every token is checked by the service: {s:?}"),
        }
    };
    let (p, sent) = get("a");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0], (vec![("route".into(), "r".into())], Some(5)));
    assert_eq!((sent[1].0[0].0.as_str(), sent[1].1), ("jti", None));
    // The service limits the route to 10 a minute, and the `jti`, as its
    // rule must, to 1 an hour.
    let mut resp = ok_response(2, 10, Some(30_000));
    resp.statuses[1].current_limit = Some(crate::ratelimit::rls::RateLimit {
        name: String::new(),
        requests_per_unit: 1,
        unit: crate::ratelimit::rls::Unit::Hour as i32,
    });
    let step = evaluate_rls(&w.ctx(), p, Ok(&resp), NOW);
    assert!(
        matches!(step, Step::Done(Decision::Allow(_), _)),
        "{step:?}"
    );
    // The same token again goes to the service too (which refuses it),
    // whatever the lease holds; so do new tokens.
    for jti in ["a", "b"] {
        let (_, sent) = get(jti);
        assert_eq!(sent.len(), 1, "the route's hit is leased: {sent:?}");
        assert_eq!((sent[0].0[0].0.as_str(), sent[0].1), ("jti", None));
    }
}

#[test]
fn the_rate_limit_service_cannot_set_a_header_only_appguard_sets() {
    // The service may add request headers, but not a claim header (the
    // upstream reads `x-user` as a verified `sub`) nor an `x-appguard-*`
    // one, in either spelling.
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "claim_to_headers": [{"claim": "sub", "header": "x-user"}]}],
        "routes": [{"name": "r", "match": {"prefix": "/"},
                    "rate_limits": [{"entries": [{"type": "route"}]}]}]
    }));
    let h = headers(&[(":method", "GET"), (":path", "/x"), (":authority", "a")]);
    let Step::NeedRateLimit(p, _) = evaluate(&w.ctx(), &Request::new(&h, None), NOW) else {
        panic!("a call")
    };
    let mut resp = ok_response(1, 5, None);
    resp.request_headers_to_add = ["x-user", "X_User", "x_appguard_app", "x-tier"]
        .iter()
        .map(|k| crate::ratelimit::rls::HeaderValue {
            key: (*k).into(),
            value: "gold".into(),
            raw_value: vec![],
        })
        .collect();
    let step = evaluate_rls(&w.ctx(), p, Ok(&resp), NOW);
    let Step::Done(d @ Decision::Allow(_), _) = step else {
        panic!("{step:?}")
    };
    assert_eq!(set_headers(&d), vec![("x-tier".into(), "gold".into())]);
}

#[test]
fn a_token_refused_for_another_reason_keeps_its_jti() {
    // The jti is recorded only once the request passed every other check:
    // a copy of the genuine client's token, sent with the wrong platform
    // headers, must not burn it.
    let w = World::new();
    let auth = "Bearer u1";
    let t = own_token("shop-android", "keep-1", auth);
    assert_eq!(
        w.reason(
            "/attested/x",
            &[
                ("x-app-token", &t),
                ("authorization", auth),
                ("x-ios-bundle-identifier", "com.example.shop")
            ]
        ),
        Some(Reason::AppMismatch)
    );
    let genuine = [("x-app-token", t.as_str()), ("authorization", auth)];
    assert_eq!(
        w.reason("/attested/x", &genuine),
        None,
        "the genuine request"
    );
    assert_eq!(
        w.reason("/attested/x", &genuine),
        Some(Reason::TokenReplayed),
        "and its replay"
    );
}

/// A provider with request signing and a failure budget of 2 per minute,
/// its install key, and a token carrying that key.
fn budgeted_signing_world() -> (World, crate::signing::InstallSigningKey, String) {
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60},
                    "failure_budget": {"failures": 2, "window_seconds": 60}}],
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t"]}]
    }));
    let key = crate::signing::InstallSigningKey::p256_from_bytes(&[7u8; 32]).unwrap();
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "ipk": key.public_key().to_ipk()}),
    );
    (w, key, token)
}

#[test]
fn bodies_that_do_not_match_their_digest_spend_the_failure_budget() {
    // A genuine signed POST replayed over other bodies costs a hash each
    // (the digest is checked before the signature), and is charged, so a
    // flood of them stops at the budget.
    let (w, key, token) = budgeted_signing_world();
    let body = r#"{"to":"+447700900123"}"#;
    let sig = signed_sms_post(&key, &token, body);
    let digest = sig.content_digest.clone().unwrap();
    let run = |body: &str| {
        let len = body.len().to_string();
        let step = w.post(
            "/v1/sms",
            "192.0.2.1",
            &[
                (":scheme", "https"),
                ("approov-token", &token),
                ("content-length", &len),
                ("content-digest", &digest),
                ("signature-input", &sig.signature_input),
                ("signature", &sig.signature),
            ],
            body,
        );
        match step {
            Step::Done(d, f) => (d.reason(), f.budget_refused),
            s => panic!("{s:?}"),
        }
    };
    let other = r#"{"to":"+447700900999"}"#;
    assert_eq!(run(body), (None, false), "the genuine request");
    assert_eq!(run(other), (Some(Reason::SignatureInvalid), false));
    assert_eq!(run(other), (Some(Reason::SignatureInvalid), false));
    // spent: refused before any work, the genuine body too
    assert_eq!(run(other), (Some(Reason::SignatureInvalid), true));
    assert_eq!(run(body), (Some(Reason::SignatureInvalid), true));
}

#[test]
fn replays_do_not_spend_the_genuine_clients_local_limit() {
    // A captured token sent again is refused `token_replayed` before any
    // local limit counts it: ten copies must not lock its user out.
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "local"}}],
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t"],
                    "rate_limits": [{"entries": [{"type": "claim", "name": "sub"}],
                                     "local": {"requests": 2, "per": "minute"}}]}]
    }));
    let run = |jti: &str| {
        let token = hs256_raw(
            SECRET,
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60, "jti": jti, "sub": "user-1"}),
        );
        let h = headers(&[
            (":method", "GET"),
            (":path", "/v1/x"),
            (":authority", "api.example.com"),
            ("approov-token", token.as_str()),
        ]);
        evaluate(&w.ctx(), &Request::new(&h, None), NOW).done_reason()
    };
    assert_eq!(run("a"), None);
    for _ in 0..5 {
        assert_eq!(run("a"), Some(Reason::TokenReplayed));
    }
    assert_eq!(run("b"), None, "the second of 2 a minute");
    assert_eq!(run("c"), Some(Reason::RateLimited), "the third");
}

/// A provider with `replay` (local) and `message_signing`, the install
/// key its token names, and a token with `jti`: for the tests of a
/// signed request's copies.
fn replay_and_signing_world(jti: &str) -> (World, crate::signing::InstallSigningKey, String) {
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "local"},
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60}}],
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t"]}]
    }));
    let key = crate::signing::InstallSigningKey::p256_from_bytes(&[7u8; 32]).unwrap();
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "jti": jti, "ipk": key.public_key().to_ipk()}),
    );
    (w, key, token)
}

/// A provider with `message_signing.single_use`, the install key its
/// token names, and a token expiring at `exp`.
fn single_use_signing_world(exp: u64) -> (World, crate::signing::InstallSigningKey, String) {
    let key = crate::signing::InstallSigningKey::p256_from_bytes(&[9u8; 32]).unwrap();
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60, "single_use": true}}],
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t"]}]
    }));
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": exp, "ipk": key.public_key().to_ipk()}),
    );
    (w, key, token)
}

/// `GET /v1/x` with `token` and `extra` headers, without a valid request
/// signature.
fn unsigned_get(token: &str, extra: &[(&str, &str)]) -> crate::headers::Headers {
    let mut all = vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/v1/x"),
        (":authority", "api.example.com"),
        ("approov-token", token),
    ];
    all.extend_from_slice(extra);
    headers(&all)
}

#[test]
fn a_copied_token_without_the_install_signature_keeps_its_jti() {
    let (w, key, token) = replay_and_signing_world("once");
    let signed_h = signed_get(&key, &token, "/v1/x", NOW);
    let copy = unsigned_get(&token, &[]);
    let run = |signed: bool| {
        let h = if signed { &signed_h } else { &copy };
        evaluate(&w.ctx(), &Request::new(h, None), NOW).done_reason()
    };
    assert_eq!(run(false), Some(Reason::SignatureInvalid), "the copy");
    assert_eq!(run(false), Some(Reason::SignatureInvalid), "the copy again");
    assert_eq!(run(true), None, "the genuine client, after the copies");
    assert_eq!(run(true), Some(Reason::TokenReplayed), "its replay");
}

#[test]
fn a_token_that_expires_while_its_body_is_awaited_is_not_recorded_as_fresh() {
    // The replay table keeps an entry until the token's `exp` plus skew and
    // drops older ones: a token checked in the headers phase before then,
    // whose body came after, would find its earlier uses dropped and be
    // recorded already expired, fresh every time.
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "clock_skew_seconds": 30,
                    "replay": {"claim": "jti", "scope": "local"}}],
        "routes": [{"name": "sms", "match": {"path": "/sms"}, "tokens": ["t"], "failure_mode": "deny",
                    "rate_limits": [{"entries": [{"type": "body", "pointer": "/to"}],
                                     "local": {"requests": 100, "per": "minute"}}]}]
    }));
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 10, "jti": "once"}),
    );
    let h = headers(&[
        (":method", "POST"),
        (":path", "/sms"),
        (":authority", "api.example.com"),
        ("content-type", "application/json"),
        ("approov-token", token.as_str()),
    ]);
    let req = Request::new(&h, Some("192.0.2.1".parse().unwrap()));
    // Headers within the token's life (and its skew), body after it.
    let late = NOW + 10 + 30 + 1;
    let run = |body_at: u64| match evaluate(&w.ctx(), &req, NOW + 10 + 30) {
        Step::NeedBody(p) => {
            evaluate_body(&w.ctx(), &req, br#"{"to":"a"}"#, p, body_at).done_reason()
        }
        // A `jti` used before is refused in the headers phase (step 4).
        s => s.done_reason(),
    };
    assert_eq!(run(late), Some(Reason::TokenExpired));
    assert_eq!(run(late), Some(Reason::TokenExpired));
    // In time, the token is single-use as ever.
    assert_eq!(run(NOW + 10 + 30), None);
    assert_eq!(run(NOW + 10 + 30), Some(Reason::TokenReplayed));
}

/// The install signature (created at `NOW`) of `POST /v1/sms` with
/// `body`: the method, authority, path, token and `content-digest`.
fn signed_sms_post(
    key: &crate::signing::InstallSigningKey,
    token: &str,
    body: &str,
) -> crate::signing::SignatureHeaders {
    use crate::signing::{sign_request, SignatureOptions};
    let hs = vec![
        ("approov-token".to_string(), token.to_string()),
        ("content-length".to_string(), body.len().to_string()),
    ];
    let msg = crate::signing::Message::request(
        "POST",
        "https",
        "api.example.com",
        "/v1/sms",
        None,
        &hs,
        Some(body.as_bytes()),
    );
    let comps = vec![
        "@method".into(),
        "@authority".into(),
        "@path".into(),
        "approov-token".into(),
        "content-digest".into(),
    ];
    sign_request(key, &msg, &SignatureOptions::new("install", comps, NOW)).unwrap()
}

/// A GET of `path` at api.example.com with `token` in `approov-token`,
/// signed with `key` at `created` over `@method`, `@authority`, `@path` and
/// the token header, as an app with an install key sends it.
fn signed_get(
    key: &crate::signing::InstallSigningKey,
    token: &str,
    path: &str,
    created: u64,
) -> crate::headers::Headers {
    use crate::signing::{sign_request, SignatureOptions};
    let msg_headers = vec![("approov-token".to_string(), token.to_string())];
    let msg = crate::signing::Message::request(
        "GET",
        "https",
        "api.example.com",
        path,
        None,
        &msg_headers,
        None,
    );
    let comps = vec![
        "@method".into(),
        "@authority".into(),
        "@path".into(),
        "approov-token".into(),
    ];
    let sig = sign_request(key, &msg, &SignatureOptions::new("install", comps, created)).unwrap();
    headers(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "api.example.com"),
        ("approov-token", token),
        ("signature-input", &sig.signature_input),
        ("signature", &sig.signature),
    ])
}

#[test]
fn single_use_signing_accepts_a_signed_request_once() {
    // A signed request captured with a proxy verifies as long as its
    // `created` is fresh; `single_use` remembers it, so a copy sent again
    // is refused while a new signature of the same request passes.
    use crate::signing::InstallSigningKey;
    let key = InstallSigningKey::p256_from_bytes(&[9u8; 32]).unwrap();
    let world = |single_use: bool| {
        World::from(json!({
            "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                        "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                        "message_signing": {"claim": "ipk", "max_age_seconds": 60, "single_use": single_use}}],
            "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t"]}]
        }))
    };
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 300, "ipk": key.public_key().to_ipk()}),
    );
    let (first, later) = (
        signed_get(&key, &token, "/v1/x", NOW),
        signed_get(&key, &token, "/v1/x", NOW + 1),
    );
    let run = |w: &World, h: &crate::headers::Headers| {
        evaluate(&w.ctx(), &Request::new(h, None), NOW + 2).done_reason()
    };
    let once = world(true);
    assert_eq!(run(&once, &first), None);
    assert_eq!(run(&once, &first), Some(Reason::TokenReplayed), "the copy");
    assert_eq!(run(&once, &later), None, "signed again");
    assert_eq!(run(&once, &later), Some(Reason::TokenReplayed));
    // Off (the default): the copy passes while its signature is fresh.
    let off = world(false);
    assert_eq!(run(&off, &first), None);
    assert_eq!(run(&off, &first), None);
}

#[test]
fn a_signed_request_is_recorded_only_once_the_limits_let_it_through() {
    // `single_use` keeps one entry per signed request accepted. Recorded
    // when the signature verified, a client with a genuine token and its
    // install key wrote one per request it signed, also for those its
    // limits refused, until buckets filled and other clients' signed
    // requests were refused as replays (review-memory46). A copy is still
    // refused before any limit counts it.
    use crate::signing::InstallSigningKey;
    let key = InstallSigningKey::p256_from_bytes(&[9u8; 32]).unwrap();
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "message_signing": {"claim": "ipk", "max_age_seconds": 300, "single_use": true}}],
        "routes": [
            {"name": "local", "match": {"prefix": "/v1/"}, "tokens": ["t"],
             "rate_limits": [{"entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "minute"}}]},
            {"name": "service", "match": {"prefix": "/v2/"}, "tokens": ["t"], "failure_mode": "deny",
             "rate_limits": [{"entries": [{"type": "client_ip"}]}]},
            {"name": "watched", "match": {"prefix": "/v3/"}, "tokens": ["t"], "failure_mode": "deny",
             "mode": "monitor", "rate_limits": [{"entries": [{"type": "client_ip"}]}]}
        ]
    }));
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 200, "ipk": key.public_key().to_ipk()}),
    );
    let sign = |path: &str, created: u64| signed_get(&key, &token, path, created);
    let get_from = |ip: &str, h: &crate::headers::Headers, now: u64| {
        let req = Request::new(h, Some(ip.parse().unwrap()));
        let ctx = Ctx {
            now_ms: now * 1000,
            ..w.ctx()
        };
        evaluate(&ctx, &req, now)
    };
    let get = |h: &crate::headers::Headers, now: u64| get_from("192.0.2.7", h, now);
    // Local limit: one a minute.
    let (first, second) = (sign("/v1/x", NOW), sign("/v1/x", NOW + 1));
    assert_eq!(get(&first, NOW + 2).done_reason(), None);
    assert_eq!(
        get(&second, NOW + 3).done_reason(),
        Some(Reason::RateLimited),
        "over the limit"
    );
    assert_eq!(
        get(&first, NOW + 4).done_reason(),
        Some(Reason::TokenReplayed),
        "a copy: refused before the limit"
    );
    assert_eq!(
        get(&second, NOW + 5).done_reason(),
        Some(Reason::RateLimited),
        "not recorded when refused: still the limit's"
    );
    // The next window: the request the limit refused is accepted once.
    assert_eq!(get(&second, NOW + 62).done_reason(), None);
    assert_eq!(
        get(&second, NOW + 63).done_reason(),
        Some(Reason::TokenReplayed)
    );
    // Refused by the service: taken back out, as a `jti` is. (Each time
    // from another client, whose descriptor the over-limit cache does not
    // hold.)
    let third = sign("/v2/x", NOW + 10);
    let Step::NeedRateLimit(p, _) = get(&third, NOW + 11) else {
        panic!("to the service")
    };
    assert_eq!(
        evaluate_rls(&w.ctx(), p, Ok(&over_limit_response(42)), NOW + 11).done_reason(),
        Some(Reason::RateLimited)
    );
    let Step::NeedRateLimit(p, _) = get_from("192.0.2.8", &third, NOW + 12) else {
        panic!("not recorded: to the service again")
    };
    // Abandoned (the client left): taken back out too.
    abandon_rls(&w.ctx(), p);
    let Step::NeedRateLimit(p, _) = get_from("192.0.2.9", &third, NOW + 13) else {
        panic!("not recorded: to the service again")
    };
    assert_eq!(
        evaluate_rls(&w.ctx(), p, Err(()), NOW + 13).done_reason(),
        Some(Reason::RatelimitUnavailable)
    );
    // Let through by the service: recorded, the copy refused.
    let Step::NeedRateLimit(p, _) = get_from("192.0.2.10", &third, NOW + 14) else {
        panic!("to the service")
    };
    assert_eq!(
        evaluate_rls(&w.ctx(), p, Ok(&ok_response(1, 5, None)), NOW + 14).done_reason(),
        None
    );
    assert_eq!(
        get_from("192.0.2.11", &third, NOW + 15).done_reason(),
        Some(Reason::TokenReplayed)
    );
    // Monitor mode counts as enforce mode would: a request the service
    // refuses passes marked, and its entry is taken back out, so its copy
    // is not marked a replay (enforce mode would have let it through).
    let would_deny = |s: Step| match s {
        Step::Done(Decision::Allow(g), _) => g.would_deny,
        s => panic!("monitor mode lets it through: {s:?}"),
    };
    let fourth = sign("/v3/x", NOW + 20);
    let Step::NeedRateLimit(p, _) = get_from("192.0.2.20", &fourth, NOW + 21) else {
        panic!("to the service")
    };
    assert_eq!(
        would_deny(evaluate_rls(
            &w.ctx(),
            p,
            Ok(&over_limit_response(42)),
            NOW + 21
        )),
        Some(Reason::RateLimited)
    );
    let Step::NeedRateLimit(p, _) = get_from("192.0.2.21", &fourth, NOW + 22) else {
        panic!("not recorded: to the service again, not marked a replay")
    };
    assert_eq!(
        would_deny(evaluate_rls(
            &w.ctx(),
            p,
            Ok(&ok_response(1, 5, None)),
            NOW + 22
        )),
        None
    );
    assert_eq!(
        would_deny(get_from("192.0.2.22", &fourth, NOW + 23)),
        Some(Reason::TokenReplayed)
    );
}

#[test]
fn a_route_that_asks_nothing_does_not_refuse_on_platform_headers() {
    // A browser sends Origin/Referer from any site; an open route (no
    // platforms, no API key, no token) must not refuse it, as an
    // unmatched request is not refused either.
    let w = World::from(json!({"routes": [{"name": "open", "match": {"prefix": "/"}}]}));
    for h in [
        ("referer", "https://www.google.com/search?q=x"),
        ("origin", "https://other.example"),
        ("origin", "null"),
    ] {
        assert_eq!(w.reason("/x", &[h]), None, "{h:?}");
    }
    let w = World::new();
    for hs in [
        vec![("referer", "https://www.google.com/")],
        vec![("x-android-package", "com.unknown")],
        vec![
            ("x-android-package", "com.example.shop"),
            ("origin", "https://app.example.com"),
        ],
    ] {
        let (d, f) = w.run("/open/x", "198.51.100.1", &hs);
        assert_eq!(d.reason(), None, "{hs:?}");
        assert_eq!(f.app, None, "{hs:?}: no app established");
        assert!(
            !set_headers(&d).iter().any(|(n, _)| n == "x-appguard-app"),
            "{hs:?}"
        );
    }
    // Headers that name a registered app still establish it.
    let (d, _) = w.run("/open/x", "198.51.100.1", &[ANDROID[0], ANDROID[1]]);
    assert!(set_headers(&d).contains(&("x-appguard-app".into(), "shop-android".into())));
    // Where the request shows an API key, the identity must hold.
    assert_eq!(
        w.reason(
            "/sms",
            &[("x-api-key", "key-any"), ("origin", "https://evil.example")]
        ),
        Some(Reason::OriginDenied)
    );
    // And on a route that names platforms.
    assert_eq!(
        w.reason(
            "/web/x",
            &[("x-api-key", "key-web"), ("origin", "https://evil.example")]
        ),
        Some(Reason::OriginDenied)
    );
}

#[test]
fn ipv6_clients_are_limited_per_64_by_default() {
    // Per /128 one client would hold 2^64 descriptors: enough to fill the
    // local-limit table. A /64 is one subscriber.
    let w = World::from(json!({
        "routes": [{"name": "r", "match": {"prefix": "/"},
                    "rate_limits": [{"entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "hour"}}]}]
    }));
    assert_eq!(w.run("/x", "2001:db8:1:2::1", &[]).0.reason(), None);
    assert_eq!(
        w.run("/x", "2001:db8:1:2:ffff::99", &[]).0.reason(),
        Some(Reason::RateLimited),
        "the same /64"
    );
    assert_eq!(w.run("/x", "2001:db8:1:3::1", &[]).0.reason(), None);
    // IPv4 stays per address.
    assert_eq!(w.run("/x", "192.0.2.1", &[]).0.reason(), None);
    assert_eq!(w.run("/x", "192.0.2.2", &[]).0.reason(), None);
}

/// Shared data that holds nothing and fails every write with its error.
struct FailingStore(crate::store::StoreError);

impl crate::store::SharedStore for FailingStore {
    fn get(&self, _: &str) -> Option<(Vec<u8>, u32)> {
        None
    }
    fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), crate::store::StoreError> {
        Err(self.0)
    }
}

#[test]
fn a_local_limit_that_cannot_be_counted_is_degraded_or_refused() {
    // Shared data refuses every write: the route's failure mode decides,
    // and letting the request through unlimited is reported as degraded.
    let w = World::from(json!({
        "routes": [
            {"name": "open", "match": {"prefix": "/open"}, "failure_mode": "allow",
             "rate_limits": [{"entries": [{"type": "client_ip"}], "local": {"requests": 5, "per": "minute"}}]},
            {"name": "strict", "match": {"prefix": "/strict"}, "failure_mode": "deny",
             "rate_limits": [{"entries": [{"type": "client_ip"}], "local": {"requests": 5, "per": "minute"}}]}
        ]
    }));
    let mut ctx = w.ctx();
    ctx.store = &FailingStore(crate::store::StoreError::Host);
    let run = |path: &str| {
        let h = headers(&[(":method", "GET"), (":path", path), (":authority", "a")]);
        let req = Request::new(&h, Some("192.0.2.1".parse().unwrap()));
        match evaluate(&ctx, &req, NOW) {
            Step::Done(d, f) => (d.reason(), f.degraded),
            s => panic!("{s:?}"),
        }
    };
    assert_eq!(run("/open"), (None, Some(Reason::RatelimitUnavailable)));
    assert_eq!(run("/strict"), (Some(Reason::RatelimitUnavailable), None));
}

#[test]
fn a_local_limit_under_write_contention_is_rate_limited_whatever_the_failure_mode() {
    // Every write loses its CAS race (other workers keep writing the
    // bucket): that is a flood on the descriptor, not a store that cannot
    // count, so `failure_mode: allow` must not let it through.
    let w = World::from(json!({
        "routes": [
            {"name": "open", "match": {"prefix": "/open"}, "failure_mode": "allow",
             "rate_limits": [{"entries": [{"type": "client_ip"}], "local": {"requests": 5, "per": "minute"}}]}
        ]
    }));
    let mut ctx = w.ctx();
    ctx.store = &FailingStore(crate::store::StoreError::CasMismatch);
    let h = headers(&[(":method", "GET"), (":path", "/open"), (":authority", "a")]);
    let req = Request::new(&h, Some("192.0.2.1".parse().unwrap()));
    match evaluate(&ctx, &req, NOW) {
        Step::Done(d, f) => {
            assert_eq!(d.reason(), Some(Reason::RateLimited));
            assert_eq!(f.degraded, None);
            let Decision::Deny(denial) = d else {
                panic!("{d:?}")
            };
            assert!(denial
                .headers
                .contains(&("retry-after".to_owned(), "1".to_owned())));
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn a_kidless_forgery_spends_one_failure_per_key_it_was_tried_against() {
    // Without `kid` a token is tried against every key of its algorithm:
    // the budget must bound verifications, so each key tried counts.
    let keys: Vec<Value> = (1..=4u8)
        .map(|i| json!({"kid": format!("k{i}"), "alg": "HS256", "secret_base64": STANDARD.encode([i; 32])}))
        .collect();
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "x-token"}], "keys": keys,
                    "failure_budget": {"failures": 4, "window_seconds": 60}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
    }));
    let forged = |n: u64| {
        hs256_raw(
            &[9u8; 32],
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60, "n": n}),
        )
    };
    let (d, f) = w.run("/x", "198.51.100.9", &[("x-token", &forged(1))]);
    assert_eq!(d.reason(), Some(Reason::TokenSignature));
    assert!(!f.budget_refused, "verified, against 4 keys");
    let (d, f) = w.run("/x", "198.51.100.9", &[("x-token", &forged(2))]);
    assert_eq!(d.reason(), Some(Reason::TokenSignature));
    assert!(f.budget_refused, "4 failures spent the budget of 4");
    // Another client is not charged.
    let (_, f) = w.run("/x", "198.51.100.10", &[("x-token", &forged(3))]);
    assert!(!f.budget_refused);
}

#[test]
fn head_takes_the_get_route_and_an_unclear_path_is_refused_even_when_unrouted_is_allowed() {
    let w = World::from(json!({
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("secret-key")}]},
        "routes": [
            {"name": "quote", "match": {"path": "/v1/quote", "methods": ["GET"]}, "api_key": "required"},
            {"name": "public", "match": {"prefix": "/v1/public/"}}
        ]
    }));
    let reason = |method: &str, path: &str| {
        let h = headers(&[
            (":method", method),
            (":path", path),
            (":authority", "api.example.com"),
        ]);
        evaluate(&w.ctx(), &Request::new(&h, "192.0.2.1".parse().ok()), NOW).done_reason()
    };
    // Without a key, a HEAD of the quote must not get past as unrouted.
    assert_eq!(reason("HEAD", "/v1/quote"), Some(Reason::ApiKeyMissing));
    assert_eq!(reason("get", "/v1/quote"), Some(Reason::ApiKeyMissing));
    assert_eq!(reason("POST", "/v1/quote"), None, "unrouted, allowed");
    // `default_action` is `allow`, yet a path whose `;` hides a dot segment
    // names no route it can be trusted with.
    assert_eq!(
        reason("GET", "/v1/public/..;/quote"),
        Some(Reason::RouteDenied)
    );
    assert_eq!(reason("GET", "/v1/public/x"), None);
    // Spelled with `%2e` (as it arrives when Envoy's normalize_path is
    // off), the same.
    for path in [
        "/v1/public/%2e%2e/quote",
        "/v1/public/%2E%2e;/quote",
        "/v1/public/.%2e/quote",
        "/v1/public/%2e/quote",
    ] {
        assert_eq!(reason("GET", path), Some(Reason::RouteDenied), "{path}");
    }
    assert_eq!(reason("GET", "/v1/public/.../x"), None, "a name");
    // Spelled `%2e%2e%2e`, it is the same name decoded.
    assert_eq!(reason("GET", "/v1/public/%2e%2e%2e/x"), None, "a name");
    // Global monitor mode with an enforce route: the unclear path may
    // reach that route's handler, so it is refused all the same.
    let rollout = World::from(json!({"mode": "monitor", "routes": [
        {"name": "sms", "match": {"path": "/v1/sms"}, "api_key": "required", "mode": "enforce"},
        {"name": "public", "match": {"prefix": "/v1/public/"}}
    ]}));
    let h = headers(&[(":method", "GET"), (":path", "/v1/public/..;/sms")]);
    match evaluate(&rollout.ctx(), &Request::new(&h, None), NOW) {
        Step::Done(Decision::Deny(d), _) => assert_eq!(d.reason, Reason::RouteDenied),
        s => panic!("{s:?}"),
    }
    // With `forward: false` the key leaves the path Envoy logs, as on a
    // routed refusal.
    let mut cfg = config_json();
    cfg["api_keys"]["forward"] = json!(false);
    let scrubbing = World::from(cfg);
    let h = headers(&[(":method", "GET"), (":path", "/sms/.;/x?a=1&key=key-sms")]);
    match evaluate(&scrubbing.ctx(), &Request::new(&h, None), NOW) {
        Step::Done(Decision::Deny(d), _) => {
            assert_eq!(d.reason, Reason::RouteDenied);
            assert_eq!(d.key_scrub.path.as_deref(), Some("/sms/.;/x?a=1"));
        }
        s => panic!("{s:?}"),
    }
    // In monitor mode (every route too) it is let through, marked.
    let m = World::from(json!({"mode": "monitor", "routes": [
        {"name": "public", "match": {"prefix": "/v1/public/"}}
    ]}));
    let h = headers(&[(":method", "GET"), (":path", "/v1/public/..;/x")]);
    match evaluate(&m.ctx(), &Request::new(&h, None), NOW) {
        Step::Done(Decision::Allow(g), _) => assert_eq!(g.would_deny, Some(Reason::RouteDenied)),
        s => panic!("{s:?}"),
    }
}

#[test]
fn a_prefix_ending_in_a_slash_covers_its_collection_and_the_later_exact_route_is_refused() {
    // `/v1/payments` is the collection `/v1/payments/` is for: a later exact
    // route for it could never match.
    let e = Config::from_json(
        json!({"routes": [
            {"name": "items", "match": {"prefix": "/v1/payments/"}, "action": "deny"},
            {"name": "list", "match": {"path": "/v1/payments"}}
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.path, "routes[1].match");
    // The other order is the way to give the collection its own policy.
    assert!(Config::from_json(
        json!({"routes": [
            {"name": "list", "match": {"path": "/v1/payments"}},
            {"name": "items", "match": {"prefix": "/v1/payments/"}, "action": "deny"}
        ]})
        .to_string()
        .as_bytes(),
    )
    .is_ok());
    // A GET route covers a later HEAD route of the same path.
    let e = Config::from_json(
        json!({"routes": [
            {"name": "get", "match": {"path": "/q", "methods": ["GET"]}},
            {"name": "head", "match": {"path": "/q", "methods": ["HEAD"]}}
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.path, "routes[1].match");
}

#[test]
fn a_header_limit_holds_when_the_header_is_sent_twice_or_padded() {
    let w = World::from(json!({
        "routes": [{"name": "r", "match": {"prefix": "/"}, "rate_limits": [
            {"entries": [{"type": "header", "name": "x-device"}], "local": {"requests": 1, "per": "hour"}}]}]
    }));
    let long = "d".repeat(300);
    assert_eq!(w.reason("/x", &[("x-device", "d1")]), None);
    assert_eq!(
        w.reason("/x", &[("x-device", "d1")]),
        Some(Reason::RateLimited)
    );
    // Two values, or one too long to count: not a way out of the limit,
    // but one bucket that every such request shares.
    assert_eq!(
        w.reason("/x", &[("x-device", "d1"), ("x-device", "zz")]),
        None
    );
    assert_eq!(
        w.reason("/x", &[("x-device", "d1"), ("x-device", "yy")]),
        Some(Reason::RateLimited)
    );
    assert_eq!(
        w.reason("/x", &[("x-device", long.as_str())]),
        Some(Reason::RateLimited)
    );
    // Copies of one value are that value.
    assert_eq!(
        w.reason("/x", &[("x-device", "d2"), ("x-device", "d2")]),
        None
    );
    // Not sent: no descriptor, as with Envoy's own actions.
    assert_eq!(w.reason("/x", &[]), None);
    assert_eq!(w.reason("/x", &[]), None);
}

#[test]
fn with_the_service_down_under_allow_a_service_replay_is_still_refused_in_the_instance() {
    // `failure_mode: allow` lets requests through without the shared
    // limits while the service is down (or answers without a `jti` rule),
    // but a captured token must not become good for any number of uses:
    // the instance's replay table takes over.
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100,
                               "failure_mode": "allow"},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "service"}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
    }));
    let send = |jti: &str, answer: Result<&RateLimitResponse, ()>| {
        let token = hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "typ": "JWT"}),
            &json!({"iat": NOW, "exp": NOW + 60, "jti": jti}),
        );
        let h = headers(&[(":method", "GET"), (":path", "/x"), ("x-token", &token)]);
        let Step::NeedRateLimit(p, _) = evaluate(&w.ctx(), &Request::new(&h, None), NOW) else {
            panic!("a call")
        };
        match evaluate_rls(&w.ctx(), p, answer, NOW) {
            Step::Done(d, f) => (d.reason(), f.degraded),
            s => panic!("{s:?}"),
        }
    };
    let degraded = Some(Reason::RatelimitUnavailable);
    assert_eq!(send("a", Err(())), (None, degraded));
    assert_eq!(send("a", Err(())), (Some(Reason::TokenReplayed), None));
    assert_eq!(send("b", Err(())), (None, degraded));
    // An answer without a limit for the `jti` protects nothing: the same.
    let no_rule = ok_response(1, 0, Some(1_000));
    assert_eq!(send("c", Ok(&no_rule)), (None, degraded));
    assert_eq!(send("c", Ok(&no_rule)), (Some(Reason::TokenReplayed), None));
    // A service that answers decides alone (it counts the `jti`).
    let mut ok = ok_response(1, 0, Some(1_000));
    ok.statuses[0].current_limit = Some(crate::ratelimit::rls::RateLimit {
        name: String::new(),
        requests_per_unit: 1,
        unit: crate::ratelimit::rls::Unit::Hour as i32,
    });
    assert_eq!(send("d", Ok(&ok)), (None, None));
    assert_eq!(send("d", Err(())), (None, degraded));
    // The table stands in where nobody sized it: full, it lets a token
    // through (as the route lets its limits go), and still refuses a use
    // it holds.
    let small = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100,
                               "failure_mode": "allow"},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "service", "max_entries": 16}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
    }));
    let send = |jti: &str| {
        let token = hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "typ": "JWT"}),
            &json!({"iat": NOW, "exp": NOW + 60, "jti": jti}),
        );
        let h = headers(&[(":method", "GET"), (":path", "/x"), ("x-token", &token)]);
        let Step::NeedRateLimit(p, _) = evaluate(&small.ctx(), &Request::new(&h, None), NOW) else {
            panic!("a call")
        };
        evaluate_rls(&small.ctx(), p, Err(()), NOW).done_reason()
    };
    for i in 0..40 {
        assert_eq!(send(&format!("j{i}")), None, "j{i}");
    }
    assert_eq!(send("j0"), Some(Reason::TokenReplayed));
}

#[test]
fn a_service_replay_rule_must_make_a_jti_single_use_for_the_tokens_life() {
    use crate::ratelimit::rls::{RateLimit, Unit};
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "max_lifetime_seconds": 300,
                    "replay": {"claim": "jti", "scope": "service"}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
    }));
    let answer = |limit: Option<(u32, Unit)>| {
        let token = hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "typ": "JWT"}),
            &json!({"iat": NOW, "exp": NOW + 60, "jti": "j"}),
        );
        let h = headers(&[(":method", "GET"), (":path", "/x"), ("x-token", &token)]);
        let Step::NeedRateLimit(p, _) = evaluate(&w.ctx(), &Request::new(&h, None), NOW) else {
            panic!("a call")
        };
        let mut resp = ok_response(1, 0, Some(1_000));
        resp.statuses[0].current_limit = limit.map(|(n, unit)| RateLimit {
            name: String::new(),
            requests_per_unit: n,
            unit: unit as i32,
        });
        match evaluate_rls(&w.ctx(), p, Ok(&resp), NOW) {
            Step::Done(d, f) => (d.reason(), f.replay_unprotected),
            s => panic!("{s:?}"),
        }
    };
    for good in [(1, Unit::Hour), (1, Unit::Day), (1, Unit::Month)] {
        assert_eq!(answer(Some(good)), (None, false), "{good:?}");
    }
    // What the answer `1 per unit` decides for a provider whose tokens
    // live up to `max` seconds, for a token that lives `life`.
    let one_per = |unit: Unit, max: u64, life: u64| {
        let w = World::from(json!({
            "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
            "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                        "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                        "max_lifetime_seconds": max,
                        "replay": {"claim": "jti", "scope": "service"}}],
            "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
        }));
        let token = hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "typ": "JWT"}),
            &json!({"iat": NOW, "exp": NOW + life, "jti": format!("{unit:?}")}),
        );
        let h = headers(&[(":method", "GET"), (":path", "/x"), ("x-token", &token)]);
        let Step::NeedRateLimit(p, _) = evaluate(&w.ctx(), &Request::new(&h, None), NOW) else {
            panic!("a call")
        };
        let mut resp = ok_response(1, 0, Some(1_000));
        resp.statuses[0].current_limit = Some(RateLimit {
            name: String::new(),
            requests_per_unit: 1,
            unit: unit as i32,
        });
        evaluate_rls(&w.ctx(), p, Ok(&resp), NOW).done_reason()
    };
    // Hour-long tokens (Firebase App Check's) are accepted for an hour plus
    // twice the skew and a second: 1 per hour leaves the last 11 s of that
    // open to one replay (README, known limitations), so it counts as no
    // protection; 1 per day protects them.
    for (unit, expected) in [
        (Unit::Hour, Some(Reason::RatelimitUnavailable)),
        (Unit::Day, None),
    ] {
        assert_eq!(one_per(unit, 3600, 3600), expected, "{unit:?}");
    }
    // The clock is read in whole seconds: a token whose `exp` plus skew is
    // second n passes until n + 1, so 1 per hour protects tokens accepted
    // for up to 3,599 s in all (3,589 s with the default 5 s skew), and no
    // longer (3,590 s: a copy would pass in the second after the counter
    // expired).
    for (max, expected) in [(3589, None), (3590, Some(Reason::RatelimitUnavailable))] {
        assert_eq!(one_per(Unit::Hour, max, 60), expected, "{max}");
    }
    // No rule; more than one use; windows shorter than 300 s + skew, in
    // which the token would pass once per window.
    for bad in [
        None,
        Some((2, Unit::Hour)),
        Some((10, Unit::Minute)),
        Some((1, Unit::Minute)),
        Some((1, Unit::Second)),
        Some((1, Unit::Unknown)),
    ] {
        assert_eq!(
            answer(bad),
            (Some(Reason::RatelimitUnavailable), true),
            "{bad:?}"
        );
    }
}

#[test]
fn a_jti_whose_request_the_service_refused_or_never_answered_is_not_used_up() {
    // `replay.scope: local` and a service limit: the entry is recorded
    // before the call. A request the service then refuses (over a limit,
    // or down with `failure_mode: deny`) was never let through, so the
    // genuine client's retry with the same token must not be a replay.
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "local"}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"],
                    "rate_limits": [{"entries": [{"type": "route"}]}]}]
    }));
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iat": NOW, "exp": NOW + 60, "jti": "retry-me"}),
    );
    let h = headers(&[(":method", "GET"), (":path", "/x"), ("x-token", &token)]);
    let call_at = |t: u64| match evaluate(&w.ctx(), &Request::new(&h, None), t) {
        Step::NeedRateLimit(p, _) => p,
        s => panic!("a call, not {s:?}"),
    };
    let over = over_limit_response(1);
    assert_eq!(
        evaluate_rls(&w.ctx(), call_at(NOW), Ok(&over), NOW).done_reason(),
        Some(Reason::RateLimited)
    );
    // (The refusal is cached for its second: the retries come after it.)
    let t = NOW + 2;
    assert_eq!(
        evaluate_rls(&w.ctx(), call_at(t), Err(()), t).done_reason(),
        Some(Reason::RatelimitUnavailable)
    );
    // A client that left while its request waited for the service: the
    // request never went upstream.
    abandon_rls(&w.ctx(), call_at(t));
    assert_eq!(
        evaluate_rls(&w.ctx(), call_at(t), Ok(&ok_response(1, 5, None)), t).done_reason(),
        None,
        "accepted on its first request let through"
    );
    match evaluate(&w.ctx(), &Request::new(&h, None), t) {
        Step::Done(d, _) => assert_eq!(d.reason(), Some(Reason::TokenReplayed)),
        s => panic!("{s:?}"),
    }
}

#[test]
fn an_install_key_claim_that_is_not_text_is_not_taken_for_an_unsigned_token() {
    // An issuer that sends `ipk` as a JWK object must not turn signing off
    // (`required: false` lets tokens without the claim through unsigned).
    let w = World::from(json!({
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "message_signing": {"claim": "ipk", "required": false}}],
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "tokens": ["t"]}]
    }));
    let run = |claims: Value| {
        let token = hs256_raw(SECRET, &json!({"alg": "HS256"}), &claims);
        let h = headers(&[
            (":method", "GET"),
            (":path", "/v1/x"),
            (":authority", "api.example.com"),
            ("approov-token", &token),
        ]);
        evaluate(&w.ctx(), &Request::new(&h, "192.0.2.1".parse().ok()), NOW).done_reason()
    };
    assert_eq!(run(json!({"exp": NOW + 60})), None, "no claim: unsigned");
    for ipk in [json!({"kty": "EC"}), Value::Null, json!(["x"])] {
        assert_eq!(
            run(json!({"exp": NOW + 60, "ipk": ipk})),
            Some(Reason::SignatureInvalid),
            "{ipk}"
        );
    }
}

#[test]
fn made_up_request_signatures_spend_the_clients_failure_budget() {
    // One genuine token buys no endless P-256 verifications: each failed
    // request signature is charged to the token provider's failure budget
    // of the client, and a spent client is refused without verifying.
    use crate::signing::{sign_request, SignatureOptions};
    let (w, key, token) = budgeted_signing_world();
    let hs = vec![("approov-token".to_string(), token.clone())];
    let msg = crate::signing::Message::request(
        "GET",
        "https",
        "api.example.com",
        "/v1/x",
        None,
        &hs,
        None,
    );
    let comps = vec![
        "@method".into(),
        "@authority".into(),
        "@path".into(),
        "approov-token".into(),
    ];
    let good = sign_request(&key, &msg, &SignatureOptions::new("install", comps, NOW)).unwrap();
    // The same signature with one bit of `s` flipped: still 64 bytes, so
    // it takes a real P-256 verification to refuse (a changed length is
    // refused before any).
    let bad = {
        let b64 = good
            .signature
            .trim_start_matches("install=:")
            .trim_end_matches(':');
        let mut bytes = STANDARD.decode(b64).unwrap();
        assert_eq!(bytes.len(), 64);
        bytes[40] ^= 1;
        format!("install=:{}:", STANDARD.encode(bytes))
    };
    let run = |ip: &str, sig: &str| {
        let h = headers(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/v1/x"),
            (":authority", "api.example.com"),
            ("approov-token", &token),
            ("signature-input", &good.signature_input),
            ("signature", sig),
        ]);
        match evaluate(&w.ctx(), &Request::new(&h, ip.parse().ok()), NOW) {
            Step::Done(d, f) => (d.reason(), f.budget_refused),
            s => panic!("{s:?}"),
        }
    };
    let verified_and_failed = (Some(Reason::SignatureInvalid), false);
    let refused_unverified = (Some(Reason::SignatureInvalid), true);
    assert_eq!(run("192.0.2.1", &good.signature), (None, false));
    // Refusals that cost no verification are not charged.
    for _ in 0..3 {
        assert_eq!(run("192.0.2.1", "not a dictionary"), verified_and_failed);
    }
    assert_eq!(run("192.0.2.1", &bad), verified_and_failed);
    assert_eq!(run("192.0.2.1", &bad), verified_and_failed);
    // Spent: not verified any more, even when the signature is right.
    assert_eq!(run("192.0.2.1", &bad), refused_unverified);
    assert_eq!(run("192.0.2.1", &good.signature), refused_unverified);
    // Another client is not affected.
    assert_eq!(run("198.51.100.9", &good.signature), (None, false));
}

#[test]
fn every_entry_type_sends_the_value_it_names() {
    // What the service counts: the key's id (never the key), the app id,
    // its platform, a verified claim, a fixed value and the route name.
    let world = |rate_limits: Value| {
        World::from(json!({
            "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
            "apps": [{"id": "droid", "platform": "android", "package": "com.example.a"}],
            "api_keys": {"keys": [{"id": "k-droid", "sha256": hash_api_key("key-droid"), "apps": ["droid"]}]},
            "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                        "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                        "app_claim": {"claim": "app"}}],
            "routes": [{"name": "pay", "match": {"prefix": "/pay"}, "api_key": "required", "tokens": ["t"],
                        "rate_limits": rate_limits}]
        }))
    };
    let w = world(json!([
        {"entries": [{"type": "api_key"}]},
        {"entries": [{"type": "app"}, {"type": "platform"}]},
        {"entries": [{"type": "claim", "name": "sub"}]},
        {"entries": [{"type": "value", "key": "tier", "value": "gold"}, {"type": "route"}]}
    ]));
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "app": "droid", "sub": "user-7"}),
    );
    let h = headers(&[
        (":method", "POST"),
        (":path", "/pay"),
        ("x-api-key", "key-droid"),
        ("x-token", &token),
        ("x-android-package", "com.example.a"),
    ]);
    let Step::NeedRateLimit(_, call) = evaluate(&w.ctx(), &Request::new(&h, None), NOW) else {
        panic!("a call")
    };
    let d = |pairs: &[(&str, &str)]| -> Descriptor {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        rls_hits(&call),
        vec![
            (d(&[("api_key", "k-droid")]), None),
            (d(&[("app", "droid"), ("platform", "android")]), None),
            (d(&[("sub", "user-7")]), None),
            (d(&[("tier", "gold"), ("route", "pay")]), None),
        ]
    );
    // A claim that is present but not a short scalar (a signer that copies
    // client input into it) is one shared value, never a skipped limit; an
    // absent one skips its descriptor, as an absent header does. (A claim
    // of the signer's own: `sub` must be a string, or the token is
    // malformed.)
    let w = world(json!([
        {"entries": [{"type": "claim", "name": "user"}]},
        {"entries": [{"type": "route"}]}
    ]));
    let long = "u".repeat(257);
    for (user, want) in [
        (json!(["a", "b"]), Some("(unreadable)")),
        (json!({"id": 1}), Some("(unreadable)")),
        (json!(long), Some("(unreadable)")),
        (json!(7), Some("7")),
        (json!(null), None),
    ] {
        let token = hs256_raw(
            SECRET,
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60, "app": "droid", "user": user}),
        );
        let h = headers(&[
            (":method", "POST"),
            (":path", "/pay"),
            ("x-api-key", "key-droid"),
            ("x-token", &token),
            ("x-android-package", "com.example.a"),
        ]);
        let Step::NeedRateLimit(_, call) = evaluate(&w.ctx(), &Request::new(&h, None), NOW) else {
            panic!("a call")
        };
        let subs: Vec<String> = rls_hits(&call)
            .into_iter()
            .filter_map(|(d, _)| d.into_iter().find(|(k, _)| k == "user").map(|(_, v)| v))
            .collect();
        assert_eq!(
            subs,
            want.into_iter().map(str::to_owned).collect::<Vec<_>>(),
            "{user}"
        );
    }
}

#[test]
fn a_format_suffix_or_a_target_header_that_would_take_another_route_is_refused() {
    // Rails runs `/v1/sms`'s handler for `/v1/sms.json`; Zend Framework 1
    // and old Symfony take the target from `X-Original-URL`. Neither may
    // carry a request past the route its handler is protected by.
    let w = World::from(json!({
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("secret-key")}]},
        "routes": [
            {"name": "sms", "match": {"path": "/v1/sms", "methods": ["POST"]}, "api_key": "required"},
            {"name": "orders", "match": {"path": "/v1/orders"}, "api_key": "required"},
            {"name": "order", "match": {"prefix": "/v1/orders/"}, "api_key": "required"},
            {"name": "file", "match": {"path": "/v1/files/terms.pdf"}},
            {"name": "rest", "match": {"prefix": "/"}, "api_key": "optional"}
        ]
    }));
    let reason = |method: &str, path: &str, extra: &[(&str, &str)]| w.route(method, path, extra);
    let denied = Some(Reason::RouteDenied);
    assert_eq!(reason("POST", "/v1/sms.json", &[]), denied);
    assert_eq!(reason("POST", "/v1/sms.json?x=1", &[]), denied);
    assert_eq!(reason("GET", "/v1/orders.xml", &[]), denied);
    // a trailing slash, several dots, `%2e` (Envoy keeps it with
    // `normalize_path` off, and appguard refuses it as such)
    assert_eq!(reason("POST", "/v1/sms.json/", &[]), denied);
    assert_eq!(reason("POST", "/v1/sms.x.json", &[]), denied);
    assert_eq!(reason("POST", "/v1/sms%2ejson", &[]), denied);
    assert_eq!(reason("POST", "/v1/sms%2Ejson", &[]), denied);
    // the suffix keeps the route: nothing changes
    assert_eq!(
        reason("GET", "/v1/orders/7.json", &[]),
        Some(Reason::ApiKeyMissing)
    );
    assert_eq!(reason("GET", "/assets/app.js", &[]), None);
    assert_eq!(reason("GET", "/.env", &[]), None);
    // a route naming the dotted path itself
    assert_eq!(reason("GET", "/v1/files/terms.pdf", &[]), None);
    // target headers, in any spelling
    for name in [
        "x-original-url",
        "x-rewrite-url",
        "X_Original_URL",
        "x.rewrite.url",
    ] {
        assert_eq!(
            reason("GET", "/v1/public", &[(name, "/v1/orders/1")]),
            denied,
            "{name}"
        );
        assert_eq!(
            reason("GET", "/v1/public", &[(name, "v1/orders/1")]),
            denied,
            "{name}"
        );
        assert_eq!(
            reason("GET", "/v1/public", &[(name, "/v1/x/../orders/1")]),
            denied,
            "{name}"
        );
        assert_eq!(
            reason("GET", "/v1/public", &[(name, "/v1/other?a=1")]),
            None,
            "{name}"
        );
        // not decoded by Envoy: read as another path upstream; and a `#`,
        // which no request-target has (`path.Clean` of the whole value is
        // `/v1/orders/1`)
        for target in [
            "/v1/%6Frders/1",
            "/v1\\orders\\1",
            "/v1/orders.json",
            "/v1/public#/../orders/1",
        ] {
            assert_eq!(
                reason("GET", "/v1/public", &[(name, target)]),
                denied,
                "{name} {target}"
            );
        }
    }
}

#[test]
fn an_empty_format_suffix_takes_the_route_of_the_path_without_it() {
    // Spring before 5.3 matches `/v1/sms` as `/v1/sms.*` (AntPathMatcher's
    // `*` matches nothing too), so `/v1/sms.` runs the `/v1/sms` handler.
    let w = World::from(json!({
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("key")}]},
        "routes": [
            {"name": "sms", "match": {"path": "/v1/sms"}, "api_key": "required"},
            {"name": "open", "match": {"prefix": "/v1/"}}
        ]
    }));
    let denied = Some(Reason::RouteDenied);
    assert_eq!(w.route("POST", "/v1/sms", &[]), Some(Reason::ApiKeyMissing));
    for path in [
        "/v1/sms.json",
        "/v1/sms.",
        "/v1/sms./",
        "/v1/sms..",
        "/v1/sms.?x=1",
    ] {
        assert_eq!(w.route("POST", path, &[]), denied, "{path}");
    }
    // A final dot that keeps the route, or a dot-only name, changes nothing.
    assert_eq!(w.route("POST", "/v1/other.", &[]), None);
    assert_eq!(w.route("POST", "/v1/.", &[]), denied, "a dot segment");
    assert_eq!(w.route("POST", "/v1/.x", &[]), None);
}

#[test]
fn path_and_method_variants_are_checked_together() {
    // Rails runs `sms#destroy` for `POST /v1/sms.json` with
    // `X-HTTP-Method-Override: DELETE`: neither the suffix alone (POST
    // takes `rest` either way) nor the override alone (DELETE on the
    // dotted path takes `rest`) shows it.
    let w = World::from(json!({
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("secret-key")}]},
        "routes": [
            {"name": "sms", "match": {"path": "/v1/sms", "methods": ["DELETE"]}, "api_key": "required"},
            {"name": "probe", "match": {"path": "/healthz", "methods": ["HEAD"]}},
            {"name": "rest", "match": {"prefix": "/"}, "api_key": "optional"}
        ]
    }));
    let reason = |method: &str, path: &str, extra: &[(&str, &str)]| w.route(method, path, extra);
    let denied = Some(Reason::RouteDenied);
    assert_eq!(reason("POST", "/v1/sms.json", &[]), None);
    assert_eq!(
        reason(
            "POST",
            "/v1/sms.json",
            &[("x-http-method-override", "DELETE")]
        ),
        denied
    );
    assert_eq!(reason("POST", "/v1/sms.json?_method=DELETE", &[]), denied);
    assert_eq!(
        reason(
            "POST",
            "/v1/x",
            &[
                ("x-original-url", "/v1/sms"),
                ("x-http-method-override", "DELETE")
            ]
        ),
        denied
    );
    // A HEAD-only route whose path GET takes no route of its own (a load
    // balancer's health check) is not refused.
    let only_head = World::from(json!({
        "default_action": "deny",
        "routes": [{"name": "probe", "match": {"path": "/healthz", "methods": ["HEAD"]}}]
    }));
    let h = headers(&[
        (":method", "HEAD"),
        (":path", "/healthz"),
        (":authority", "a"),
    ]);
    assert_eq!(
        evaluate(&only_head.ctx(), &Request::new(&h, None), NOW).done_reason(),
        None
    );
    // Where GET takes another route (`rest`), it is.
    assert_eq!(reason("HEAD", "/healthz", &[]), denied);
}

#[test]
fn a_head_request_that_would_take_another_route_than_get_is_refused() {
    // Upstreams run the GET handler for HEAD: a HEAD-only route before the
    // GET route must not let HEAD reach that handler without a key.
    let w = World::from(json!({
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("secret-key")}]},
        "routes": [
            {"name": "probe", "match": {"path": "/v1/report", "methods": ["HEAD"]}},
            {"name": "report", "match": {"path": "/v1/report", "methods": ["GET"]}, "api_key": "required"},
            {"name": "items", "match": {"prefix": "/v1/items/", "methods": ["GET"]}}
        ]
    }));
    let reason = |method: &str, path: &str| {
        let h = headers(&[
            (":method", method),
            (":path", path),
            (":authority", "api.example.com"),
        ]);
        evaluate(&w.ctx(), &Request::new(&h, "192.0.2.1".parse().ok()), NOW).done_reason()
    };
    assert_eq!(reason("HEAD", "/v1/report"), Some(Reason::RouteDenied));
    assert_eq!(reason("GET", "/v1/report"), Some(Reason::ApiKeyMissing));
    // HEAD on the GET route's own path takes that route, as ever
    assert_eq!(reason("HEAD", "/v1/items/1"), None);
}

#[test]
fn override_variants_are_deduplicated_and_bounded() {
    // Every override path is checked with every override method against
    // every route: thousands of values made one request cost milliseconds.
    // Repeats are one variant; more than 16 distinct ones are refused.
    let w = World::from(json!({
        "routes": [
            {"name": "orders", "match": {"prefix": "/v1/orders/", "methods": ["GET", "POST"]}},
            {"name": "public", "match": {"prefix": "/v1/public/"}}
        ]
    }));
    let denied = Some(Reason::RouteDenied);
    let many_posts = vec!["POST"; 12_000].join(",");
    let same_path: Vec<(&str, &str)> = std::iter::repeat_n(("x-original-url", "/v1/orders/1"), 95)
        .chain([("x-http-method-override", many_posts.as_str())])
        .chain([("x-http-method", "post,Post,GET")])
        .collect();
    assert_eq!(w.route("POST", "/v1/orders/1", &same_path), None);
    let methods = |n: usize| {
        (0..n)
            .map(|i| format!("M{i}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    for (n, expect) in [(16, None), (17, denied)] {
        let m = methods(n);
        assert_eq!(
            w.route("POST", "/v1/public/x", &[("x-http-method-override", &m)]),
            expect,
            "{n} methods"
        );
        let q = format!(
            "/v1/public/x?_method=M0&{}",
            (1..n)
                .map(|i| format!("_method=M{i}"))
                .collect::<Vec<_>>()
                .join("&")
        );
        assert_eq!(w.route("POST", &q, &[]), expect, "{n} methods in the query");
    }
    for (n, expect) in [(16, None), (17, denied)] {
        let paths: Vec<String> = (0..n).map(|i| format!("/v1/public/{i}")).collect();
        let headers: Vec<(&str, &str)> = paths
            .iter()
            .map(|p| ("x-original-url", p.as_str()))
            .collect();
        assert_eq!(
            w.route("POST", "/v1/public/x", &headers),
            expect,
            "{n} paths"
        );
    }
}

#[test]
fn a_method_override_that_would_take_another_route_is_refused() {
    // `POST /v1/orders/1` with `X-HTTP-Method-Override: DELETE` runs the
    // DELETE handler on an upstream that honours the header: it must not
    // pass under the POST route's weaker policy (here: no API key).
    let w = World::from(json!({
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("secret-key")}]},
        "routes": [
            {"name": "delete", "match": {"prefix": "/v1/orders/", "methods": ["DELETE"]}, "api_key": "required"},
            {"name": "orders", "match": {"prefix": "/v1/orders/", "methods": ["GET", "POST", "PUT"]}},
            {"name": "public", "match": {"prefix": "/v1/public/"}}
        ]
    }));
    let reason = |method: &str, path: &str, extra: &[(&str, &str)]| w.route(method, path, extra);
    let denied = Some(Reason::RouteDenied);
    assert_eq!(reason("POST", "/v1/orders/1", &[]), None);
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        for value in [
            "DELETE",
            "delete",
            " DELETE ",
            "DELETE, POST",
            "POST,DELETE",
        ] {
            assert_eq!(
                reason("POST", "/v1/orders/1", &[(name, value)]),
                denied,
                "{name}: {value}"
            );
        }
        // A method no route takes, where the request's own has one.
        assert_eq!(reason("POST", "/v1/orders/1", &[(name, "PATCH")]), denied);
        // Overrides that keep the route change nothing.
        for value in ["PUT", "get", "POST, PUT", "HEAD", ""] {
            assert_eq!(
                reason("POST", "/v1/orders/1", &[(name, value)]),
                None,
                "{name}: {value}"
            );
        }
        // A route that takes every method, and no route at all.
        assert_eq!(reason("POST", "/v1/public/x", &[(name, "DELETE")]), None);
        assert_eq!(reason("POST", "/elsewhere", &[(name, "DELETE")]), None);
    }
    // The `_method` query parameter (Laravel), read as loosely as the key
    // parameter.
    for path in [
        "/v1/orders/1?_method=DELETE",
        "/v1/orders/1?a=1&_method=delete",
        "/v1/orders/1?a=1;_METHOD=DELETE",
        "/v1/orders/1?%5Fmethod=%44ELETE",
        "/v1/orders/1?_method=PUT&_method=DELETE",
        "/v1/orders/1?_method=%zz",
        // PHP's `$_GET` names (Symfony, Laravel): `.`, ` ` and `[` are `_`,
        // leading spaces go, and a NUL ends the name.
        "/v1/orders/1?.method=DELETE",
        "/v1/orders/1?%2Emethod=DELETE",
        "/v1/orders/1?+_method=DELETE",
        "/v1/orders/1?%20%20_method=DELETE",
        // (PHP drops `[method`: refused conservatively)
        "/v1/orders/1?[method=DELETE",
        "/v1/orders/1?_method%00=DELETE",
        // `;` splits for some parsers, not for PHP
        "/v1/orders/1?_method%00;x=DELETE",
        "/v1/orders/1?_method%00;=DELETE",
        "/v1/orders/1?_method%00%ff%zz=DELETE",
    ] {
        assert_eq!(reason("POST", path, &[]), denied, "{path}");
    }
    for path in [
        "/v1/orders/1?_method=PUT",
        "/v1/orders/1?_method=",
        "/v1/orders/1?method=DELETE",
        "/v1/orders/1?x_method=DELETE",
        "/v1/orders/1?_method_=DELETE",
        "/v1/orders/1?%00_method=DELETE",
        "/v1/orders/1?_meth%zzod=DELETE",
        // a leading space goes before the others turn into `_`
        "/v1/orders/1?+method=DELETE",
    ] {
        assert_eq!(reason("POST", path, &[]), None, "{path}");
    }
    // Header names spelt with `_` are the same header to PHP servers and
    // Symfony's header bag (Envoy passes them on by default).
    for name in [
        "x_http_method_override",
        "x-http_method-override",
        "x_http_method",
        "x_method_override",
        "x.http.method.override",
    ] {
        assert_eq!(
            reason("POST", "/v1/orders/1", &[(name, "DELETE")]),
            denied,
            "{name}"
        );
    }
    assert_eq!(
        reason("POST", "/v1/orders/1", &[("x_http_method_override", "PUT")]),
        None
    );
    // One copy of the header agreeing is not enough: every copy counts.
    assert_eq!(
        reason(
            "POST",
            "/v1/orders/1",
            &[
                ("x-http-method-override", "PUT"),
                ("x-http-method-override", "DELETE")
            ]
        ),
        denied
    );
    // The genuine DELETE still needs its key, and with it passes.
    assert_eq!(
        reason("DELETE", "/v1/orders/1", &[]),
        Some(Reason::ApiKeyMissing)
    );
    assert_eq!(
        reason("DELETE", "/v1/orders/1", &[("x-api-key", "secret-key")]),
        None
    );
}

#[test]
fn a_token_without_its_replay_claim_is_refused() {
    // `replay.claim: jti` makes the claim required: a token without one
    // could never be recorded, and would pass any number of times. An
    // empty one is none: it would be one value for all such tokens, the
    // first taken and every other refused as a replay.
    let w = World::new();
    let auth = "Bearer u1";
    for jti in [None, Some("")] {
        let mut claims = json!({"iat": NOW, "exp": NOW + 60, "app": "shop-android",
                                "sub": "user-7", "pay": crate::token::binding_digest(&[auth])});
        if let Some(j) = jti {
            claims["jti"] = json!(j);
        }
        let t = hs256_raw(SECRET, &json!({"alg": "HS256", "typ": "JWT"}), &claims);
        for _ in 0..2 {
            assert_eq!(
                w.reason(
                    "/attested/x",
                    &[("x-app-token", &t), ("authorization", auth), ANDROID[0]]
                ),
                Some(Reason::TokenClaims),
                "{jti:?}"
            );
        }
    }
}

#[test]
fn a_providers_platforms_hold_without_an_app_claim() {
    // Without `app_claim` the app comes from the platform headers, and the
    // provider's `platforms` still restrict it.
    let mut v = config_json();
    v["tokens"].as_array_mut().unwrap().push(
        json!({"name": "plain", "from": [{"header": "x-plain-token"}],
                          "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                          "platforms": ["android"]}),
    );
    v["routes"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "r", "match": {"prefix": "/r/"}, "tokens": ["plain"]}),
    );
    let w = World::from(v);
    let t = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let token = ("x-plain-token", t.as_str());
    assert_eq!(w.reason("/r/x", &[token, ANDROID[0], ANDROID[1]]), None);
    assert_eq!(
        w.reason(
            "/r/x",
            &[
                token,
                ("x-ios-bundle-identifier", "com.example.shop"),
                ("x-ios-team-id", "TEAM123456")
            ]
        ),
        Some(Reason::PlatformDenied)
    );
    assert_eq!(w.reason("/r/x", &[token]), Some(Reason::PlatformDenied));
}

#[test]
fn a_server_app_named_by_a_token_must_call_from_its_cidrs() {
    let mut v = config_json();
    v["tokens"].as_array_mut().unwrap().push(
        json!({"name": "svc", "from": [{"header": "x-svc-token"}],
                          "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                          "app_claim": {"claim": "app"}}),
    );
    v["routes"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "r", "match": {"prefix": "/r/"}, "tokens": ["svc"]}),
    );
    let w = World::from(v);
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "app": "backend"}),
    );
    let run = |ip: &str| w.run("/r/x", ip, &[("x-svc-token", &t)]).0.reason();
    assert_eq!(run("10.1.2.3"), None);
    assert_eq!(run("198.51.100.1"), Some(Reason::IpDenied));
}

#[test]
fn an_android_app_may_be_pinned_by_its_sha1_certificate() {
    // Older Play listings show the SHA-1 of the signing certificate.
    let sha1 = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01";
    let mut v = config_json();
    v["apps"][0]["cert_fingerprints"] = json!([sha1]);
    let w = World::from(v);
    let headers = |cert: &str| {
        w.reason(
            "/mobile/x",
            &[
                ("x-api-key", "key-android"),
                ("x-android-package", "com.example.shop"),
                ("x-android-cert", cert),
            ],
        )
    };
    assert_eq!(headers("abcdef0123456789abcdef0123456789abcdef01"), None);
    assert_eq!(headers(sha1), None);
    assert_eq!(
        headers("abcdef0123456789abcdef0123456789abcdef02"),
        Some(Reason::AppMismatch)
    );
    // The SHA-256 of another certificate is not a match for a SHA-1 pin.
    assert_eq!(headers(ANDROID[1].1), Some(Reason::AppMismatch));
}

#[test]
fn a_cors_preflight_passes_only_where_bypass_cors_preflight_is_set() {
    // The `web` route requires an API key, which a browser's preflight
    // never carries: refused, unless the configuration lets preflights by.
    let preflight = [
        ("origin", "https://shop.example.com"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "x-api-key"),
    ];
    let off = World::new();
    assert_eq!(
        off.route("OPTIONS", "/web/cart", &preflight),
        Some(Reason::ApiKeyMissing)
    );
    let mut json = config_json();
    json["bypass_cors_preflight"] = json!(true);
    let routes = json["routes"].as_array_mut().unwrap();
    routes.insert(
        0,
        json!({"name": "closed", "match": {"prefix": "/closed/"}, "action": "deny"}),
    );
    routes.insert(
        0,
        json!({"name": "post-only", "match": {"prefix": "/post/", "methods": ["POST"]},
               "api_key": "required",
               "rate_limits": [{"entries": [{"type": "client_ip"}],
                                "local": {"requests": 1, "per": "hour"}}]}),
    );
    let on = World::from(json);
    assert_eq!(on.route("OPTIONS", "/web/cart", &preflight), None);
    // No key or token checked, nothing set upstream, no limit counted.
    let h = headers(&[
        (":method", "OPTIONS"),
        (":path", "/sms/send"),
        (":authority", "api.example.com"),
        ("origin", "https://shop.example.com"),
        ("access-control-request-method", "POST"),
    ]);
    match evaluate(&on.ctx(), &Request::new(&h, "192.0.2.1".parse().ok()), NOW) {
        Step::Done(Decision::Allow(g), f) => {
            assert!(g.set_headers.is_empty(), "{:?}", g.set_headers);
            assert!(f.cors_preflight);
        }
        s => panic!("{s:?}"),
    }
    // Not a preflight: another method, no Origin, no requested method, or
    // an empty one.
    let no = |method: &str, extra: &[(&str, &str)]| on.route(method, "/web/cart", extra);
    assert_eq!(no("GET", &preflight), Some(Reason::ApiKeyMissing));
    assert_eq!(no("options", &preflight), Some(Reason::ApiKeyMissing));
    assert_eq!(
        no("OPTIONS", &[("origin", "https://shop.example.com")]),
        Some(Reason::ApiKeyMissing)
    );
    assert_eq!(
        no("OPTIONS", &[("access-control-request-method", "POST")]),
        Some(Reason::ApiKeyMissing)
    );
    assert_eq!(
        no(
            "OPTIONS",
            &[
                ("origin", "https://shop.example.com"),
                ("access-control-request-method", "")
            ]
        ),
        Some(Reason::ApiKeyMissing)
    );
    assert_eq!(
        no(
            "OPTIONS",
            &[("origin", ""), ("access-control-request-method", "POST")]
        ),
        Some(Reason::ApiKeyMissing),
        "an empty Origin"
    );
    // An OPTIONS that asks the upstream for another method is none either.
    for override_header in [
        "x-http-method-override",
        "X_HTTP_Method",
        "x-method-override",
    ] {
        let mut hs = preflight.to_vec();
        hs.push((override_header, "POST"));
        assert_eq!(
            no("OPTIONS", &hs),
            Some(Reason::ApiKeyMissing),
            "{override_header}"
        );
    }
    for path in [
        "/web/cart?_method=POST",
        "/web/cart?a=1&_METHOD=POST",
        "/web/cart?_method",
    ] {
        assert_eq!(
            on.route("OPTIONS", path, &preflight),
            Some(Reason::ApiKeyMissing),
            "{path}"
        );
    }
    // A preflight takes the route of the method it asks about, one that
    // lists `methods` too; a method no route takes is unrouted.
    let asking = |method: &str| {
        let h = headers(&[
            (":method", "OPTIONS"),
            (":path", "/post/x"),
            (":authority", "api.example.com"),
            ("origin", "https://shop.example.com"),
            ("access-control-request-method", method),
        ]);
        match evaluate(&on.ctx(), &Request::new(&h, "192.0.2.1".parse().ok()), NOW) {
            Step::Done(d, f) => (d.reason(), f.route, f.cors_preflight),
            s => panic!("{s:?}"),
        }
    };
    // Not counted by the route's limit (one an hour per client).
    for _ in 0..3 {
        assert_eq!(asking("POST"), (None, Some(0), true));
    }
    assert_eq!(asking("GET"), (Some(Reason::RouteDenied), None, true));
    // Nothing a browser never sends with a preflight: a body, an API key
    // (header in any spelling, or parameter), a token header in any
    // spelling. Such a request is checked as any request, its key too.
    for (extra, want) in [
        (("content-length", "5"), Reason::ApiKeyMissing),
        (("transfer-encoding", "chunked"), Reason::ApiKeyMissing),
        (("x-api-key", "not-a-key"), Reason::ApiKeyInvalid),
        (("X_API_KEY", "not-a-key"), Reason::ApiKeyInvalid),
        (("x-app-token", "x.y.z"), Reason::ApiKeyMissing),
        (("x_firebase_appcheck", "x.y.z"), Reason::ApiKeyMissing),
    ] {
        let mut hs = preflight.to_vec();
        hs.push(extra);
        assert_eq!(no("OPTIONS", &hs), Some(want), "{extra:?}");
    }
    for path in ["/web/cart?key=not-a-key", "/web/cart?key[]=not-a-key"] {
        assert_eq!(
            on.route("OPTIONS", path, &preflight),
            Some(Reason::ApiKeyInvalid),
            "{path}"
        );
    }
    // The route's action and the network rules still apply.
    assert_eq!(
        on.route("OPTIONS", "/closed/x", &preflight),
        Some(Reason::RouteDenied)
    );
    // A route no web app may use (`platforms` without `web`) takes no
    // browser's preflight: checked as any request, and not counted as one,
    // under the route `OPTIONS` itself takes, not the route of the method
    // it asks about.
    let preflight_to = |w: &World, path: &str| {
        let h = headers(&[
            (":method", "OPTIONS"),
            (":path", path),
            (":authority", "api.example.com"),
            ("origin", "https://shop.example.com"),
            ("access-control-request-method", "POST"),
        ]);
        match evaluate(&w.ctx(), &Request::new(&h, "192.0.2.1".parse().ok()), NOW) {
            Step::Done(d, f) => (d.reason(), f.route.is_some(), f.cors_preflight),
            s => panic!("{s:?}"),
        }
    };
    assert_eq!(
        preflight_to(&on, "/mobile/x"),
        (Some(Reason::ApiKeyMissing), true, false)
    );
    // Here no route takes `OPTIONS` (a POST-only mobile route), so
    // `default_action: deny` decides.
    let w = World::from(json!({
        "default_action": "deny",
        "bypass_cors_preflight": true,
        "apps": [{"id": "a", "platform": "android", "package": "com.example.a"}],
        "routes": [{"name": "sms", "match": {"prefix": "/sms/", "methods": ["POST"]},
                    "platforms": ["android"]}]
    }));
    assert_eq!(
        preflight_to(&w, "/sms/send"),
        (Some(Reason::RouteDenied), false, false)
    );
    // Nor where the method asked about takes an open route but `OPTIONS`
    // itself takes a mobile-only one (its handler is the one reached).
    let w = World::from(json!({
        "default_action": "deny",
        "bypass_cors_preflight": true,
        "apps": [{"id": "a", "platform": "android", "package": "com.example.a"}],
        "api_keys": {"keys": [{"id": "k", "sha256": "0".repeat(64)}]},
        "routes": [
            {"name": "open", "match": {"prefix": "/v1/", "methods": ["POST"]}},
            {"name": "sms", "match": {"prefix": "/v1/sms/"}, "platforms": ["android"],
             "api_key": "required"}
        ]
    }));
    assert_eq!(
        preflight_to(&w, "/v1/sms/send"),
        (Some(Reason::ApiKeyMissing), true, false)
    );
    assert_eq!(preflight_to(&w, "/v1/other"), (None, true, true));
    let mut hs = preflight.to_vec();
    hs.push(("x-country", "KP"));
    assert_eq!(no("OPTIONS", &hs), Some(Reason::CountryDenied));
    assert_eq!(
        on.route("OPTIONS", "/office/x", &preflight),
        None,
        "from 192.0.2.1, inside the route's ip_allow"
    );
    let h = headers(&[
        (":method", "OPTIONS"),
        (":path", "/office/x"),
        (":authority", "api.example.com"),
        ("origin", "https://shop.example.com"),
        ("access-control-request-method", "POST"),
    ]);
    assert_eq!(
        evaluate(
            &on.ctx(),
            &Request::new(&h, "198.51.100.1".parse().ok()),
            NOW
        )
        .done_reason(),
        Some(Reason::IpDenied)
    );
}

/// A route counting SMS per destination number (`/to`), with `phone`.
fn sms_world(phone: Value) -> World {
    World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "phone": phone,
        "routes": [
            {"name": "sms", "match": {"prefix": "/sms"}, "failure_mode": "deny",
             "rate_limits": [
                {"entries": [{"type": "route"}, {"type": "body", "pointer": "/to", "phone": true}]},
                {"entries": [{"type": "body", "pointer": "/msg/lang"}]}
             ]}
        ]
    }))
}

/// The service descriptors of a rate-limit call.
type Descriptors = Vec<Vec<(String, String)>>;

/// [`sms_world`] with these denied prefixes and default calling code (the
/// phone hash key fixed).
fn phone_world(denied: &[&str], default: Option<&str>) -> World {
    let mut phone = json!({"denied_prefixes": denied,
                           "hash_key_base64": STANDARD.encode([5u8; 32])});
    if let Some(cc) = default {
        phone["default_calling_code"] = json!(cc);
    }
    sms_world(phone)
}

/// Those of `numbers` whose SMS `w` neither denies nor refuses
/// (`phone_denied`, `body_invalid`), each as `label`, the number and what
/// it got: for tests where every spelling of a denied number must stop.
fn let_through<'n>(
    w: &World,
    label: &str,
    numbers: impl IntoIterator<Item = &'n str>,
) -> Vec<String> {
    numbers
        .into_iter()
        .filter_map(|n| {
            let got = sms_to(w, n).0;
            (!matches!(got, Some(Reason::PhoneDenied) | Some(Reason::BodyInvalid)))
                .then(|| format!("{label}{n:?} -> {got:?}"))
        })
        .collect()
}

/// [`sms_outcome`] of an SMS to the number `n` on `/sms`.
fn sms_to(w: &World, n: &str) -> (Option<Reason>, Option<Descriptors>) {
    sms_outcome(
        w,
        "/sms",
        &format!(r#"{{"to":"{n}","msg":{{"lang":"en"}}}}"#),
    )
}

/// The decision's reason (`None`: on to the rate-limit call, whose
/// descriptors come second).
fn sms_outcome(w: &World, path: &str, body: &str) -> (Option<Reason>, Option<Descriptors>) {
    match w.post(path, "198.51.100.7", &[], body) {
        Step::Done(d, _) => (d.reason(), None),
        Step::NeedRateLimit(_, call) => (None, Some(rls_descriptors(&call))),
        s => panic!("{s:?}"),
    }
}

#[test]
fn a_query_parameter_named_like_a_body_value_is_refused() {
    // Rails' `params[:to]` and Symfony's and Laravel's `$request->get('to')`
    // take `?to=` over the body's `to`: the premium number would get the
    // SMS while appguard checked and counted the body's.
    let w = sms_world(
        json!({"default_calling_code": "44", "denied_prefixes": ["+882"],
                             "hash_key_base64": STANDARD.encode([5u8; 32])}),
    );
    let body = r#"{"to":"+447700900123","msg":{"lang":"en"}}"#;
    assert_eq!(sms_outcome(&w, "/sms", body).0, None);
    assert_eq!(
        sms_outcome(&w, "/sms?lang=en&x=1", body).0,
        None,
        "other names pass"
    );
    for query in [
        "to=%2B88212345678",
        "x=1&to=%2B88212345678",
        "TO=1",
        "t%6F=1",
        "to[]=1",
        "msg[lang]=fr",
        "msg%5Blang%5D=fr",
        "x=1;msg=1",
    ] {
        assert_eq!(
            sms_outcome(&w, &format!("/sms?{query}"), body).0,
            Some(Reason::BodyInvalid),
            "{query}"
        );
    }
    // `tomorrow` is not `to`, nor `message` `msg`.
    assert_eq!(sms_outcome(&w, "/sms?tomorrow=1&message=2", body).0, None);
}

#[test]
fn trunk_prefixes_other_than_zero_are_read_off_for_denied_prefixes_and_keys() {
    // libphonenumber (as gateways) reads each as the number without the
    // trunk prefix, premium-rate ranges included.
    let w = sms_world(json!({"default_calling_code": "1",
                             "denied_prefixes": ["+1 900", "+7 809", "+36 90", "+370 900"],
                             "hash_key_base64": STANDARD.encode([5u8; 32])}));
    let to = |n: &str| sms_to(&w, n);
    for n in [
        "+1 900 555 1234",
        "+1 1900 555 1234",
        "1 900 555 1234",
        "900 555 1234",
        "+7 809 123 45 67",
        "+7 8 809 123 45 67",
        "+36 90 123 456",
        "+36 06 90 123 456",
        "+370 900 12345",
        "+370 8 900 12345",
    ] {
        assert_eq!(to(n).0, Some(Reason::PhoneDenied), "{n}");
    }
    // An `8` that is part of a number of the right length stays:
    // St Petersburg's `+7 812 …` is not `+7 12 …`.
    let spb = crate::phone::PrefixSet::new(["+7 12"]).unwrap();
    let n =
        crate::phone::normalize("+7 812 123 45 67", &crate::phone::PhoneRules::default()).unwrap();
    assert!(!spb.contains_prefix_of(&n));
    // One phone, one per-number key.
    assert_eq!(to("+1 415 555 2671").1, to("+1 1 415 555 2671").1);
    assert_eq!(to("+7 495 123 45 67").1, to("+7 8 495 123 45 67").1);
    assert_ne!(to("+7 495 123 45 67").1, to("+7 812 123 45 67").1);
    // Mexico's mobiles were written `+52 1 …` until 2019; gateways still
    // deliver that form to the ten-digit number.
    assert_eq!(to("+52 55 1234 5678").1, to("+52 1 55 1234 5678").1);
    assert_ne!(to("+52 1 55 1234 5678").1, to("+52 155 123 4567").1);
    // Hungary's `06` only where a Hungarian number follows it: `+36 0 62 …`
    // is Szeged with a trunk `0`, one phone with `+36 62 …`.
    assert_eq!(to("+36 62 123 456").1, to("+36 0 62 123 456").1);
    assert_eq!(to("+36 90 123 456").0, Some(Reason::PhoneDenied));
}

#[test]
fn the_national_prefix_defaults_to_the_calling_codes_own() {
    // North America writes national numbers with `1`, Italy keeps its `0`.
    let us = sms_world(
        json!({"default_calling_code": "1", "denied_prefixes": ["+1 900"],
                              "hash_key_base64": STANDARD.encode([5u8; 32])}),
    );
    let it = sms_world(
        json!({"default_calling_code": "39", "denied_prefixes": ["+39 06"],
                              "hash_key_base64": STANDARD.encode([5u8; 32])}),
    );
    let to = |w: &World, n: &str| sms_to(w, n).0;
    assert_eq!(to(&us, "1 900 555 1234"), Some(Reason::PhoneDenied));
    assert_eq!(to(&it, "06 1234 5678"), Some(Reason::PhoneDenied));
    // Hungary writes them with `06`: read as `0` (the old default),
    // `06 90 …` was `+36 6 90 …`, past a denied `+36 90`.
    let hu = sms_world(
        json!({"default_calling_code": "36", "denied_prefixes": ["+36 90"],
                              "hash_key_base64": STANDARD.encode([5u8; 32])}),
    );
    assert_eq!(to(&hu, "06 90 123 456"), Some(Reason::PhoneDenied));
    assert_eq!(to(&hu, "90 123 456"), Some(Reason::PhoneDenied));
    assert_eq!(to(&hu, "06 20 123 4567"), None);
    assert_eq!(to(&it, "+39 06 1234 5678"), Some(Reason::PhoneDenied));
    // A national prefix that is configured is the operator's word.
    let it0 = sms_world(json!({"default_calling_code": "39", "national_prefix": "0",
                               "denied_prefixes": ["+39 06"],
                               "hash_key_base64": STANDARD.encode([5u8; 32])}));
    assert_eq!(to(&it0, "06 1234 5678"), None);
}

#[test]
fn a_body_key_holding_a_nul_is_refused() {
    // An upstream keeping keys as C strings (cJSON) reads `"to\u0000"` as
    // `to`, and takes the first.
    let w = sms_world(
        json!({"default_calling_code": "44", "denied_prefixes": ["+882"],
                             "hash_key_base64": STANDARD.encode([5u8; 32])}),
    );
    assert_eq!(
        sms_outcome(
            &w,
            "/sms",
            r#"{"to\u0000":"+88212345678","to":"+447700900123","msg":{"lang":"en"}}"#
        )
        .0,
        Some(Reason::BodyInvalid)
    );
    // Nor in a value another rule counts by.
    assert_eq!(
        sms_outcome(
            &w,
            "/sms",
            r#"{"to":"+447700900123","msg":{"lang":"en\u0000x"}}"#
        )
        .0,
        Some(Reason::BodyInvalid)
    );
}

#[test]
fn a_rule_the_service_has_no_limit_for_is_named_in_the_facts() {
    // envoyproxy/ratelimit and appguard-ratelimit answer a descriptor no
    // rule matches (a misspelt key or domain) `OK` without a limit: the
    // rule then limits nothing, which the adapter logs.
    let w = sms_world(json!({"default_calling_code": "44",
                             "hash_key_base64": STANDARD.encode([5u8; 32])}));
    let body = r#"{"to":"+447700900123","msg":{"lang":"en"}}"#;
    let answer = |resp: &RateLimitResponse| {
        let Step::NeedRateLimit(p, _) = w.post("/sms", "198.51.100.7", &[], body) else {
            panic!("no call")
        };
        match evaluate_rls(&w.ctx(), p, Ok(resp), NOW) {
            Step::Done(Decision::Allow(_), facts) => facts.unlimited_rule,
            s => panic!("{s:?}"),
        }
    };
    assert_eq!(answer(&ok_response(2, 7, None)), None);
    let mut resp = ok_response(2, 7, None);
    resp.statuses[1].current_limit = None;
    assert_eq!(answer(&resp), Some(1));
    resp.statuses[0].current_limit = None;
    assert_eq!(answer(&resp), Some(0), "the first");
    // `unlimited: true` is answered OK without a limit too, with all that
    // remains (u32::MAX): an allowlist, not a misconfiguration.
    let mut allow = ok_response(2, u32::MAX, None);
    allow.statuses[1].current_limit = None;
    assert_eq!(answer(&allow), None);
}

#[test]
fn refusals_name_a_listed_web_origin_only_where_cors_on_refusals_is_set() {
    let off = World::new();
    let one = |o: &'static str| std::iter::once(o);
    assert!(refusal_cors_headers(&off.config, one("https://shop.example.com")).is_empty());
    let mut json = config_json();
    json["cors_on_refusals"] = json!({});
    let on = World::from(json.clone());
    assert_eq!(
        refusal_cors_headers(&on.config, one("https://shop.example.com")),
        vec![
            ("access-control-allow-origin", "https://shop.example.com"),
            ("vary", "origin"),
            ("access-control-expose-headers", REFUSAL_EXPOSED_HEADERS),
        ]
    );
    // As sent, whichever listed pattern it matches (here `https://*.example.com`
    // with an explicit default port, and `https://example.com`).
    for listed in ["https://a.b.example.com:443", "https://example.com"] {
        assert_eq!(
            refusal_cors_headers(&on.config, one(listed)).first(),
            Some(&("access-control-allow-origin", listed)),
        );
    }
    // Not an origin a web app lists, not an origin at all, or not one.
    for other in [
        "https://example.org",
        "http://shop.example.com",
        "https://shop.example.com/cart",
        "https://shop.example.com?x",
        "null",
        "",
        "https://evil.com#https://shop.example.com",
    ] {
        assert!(
            refusal_cors_headers(&on.config, one(other)).is_empty(),
            "{other:?}"
        );
    }
    assert!(refusal_cors_headers(&on.config, std::iter::empty()).is_empty());
    assert!(
        refusal_cors_headers(
            &on.config,
            ["https://shop.example.com", "https://shop.example.com"].into_iter()
        )
        .is_empty(),
        "two Origin headers"
    );
    json["cors_on_refusals"] = json!({"allow_credentials": true});
    let credentials = World::from(json.clone());
    assert_eq!(
        refusal_cors_headers(&credentials.config, one("https://example.com")).last(),
        Some(&("access-control-allow-credentials", "true"))
    );
    // Refused where it can do nothing, or written wrong.
    json["cors_on_refusals"] = json!({"allow_credential": true});
    let e = Config::from_json(json.to_string().as_bytes()).unwrap_err();
    assert!(e.to_string().contains("allow_credential"), "{e}");
    json["cors_on_refusals"] = json!({});
    json["apps"] = json!([{"id": "a", "platform": "ios", "bundle_id": "com.example.a"}]);
    json["api_keys"] = json!({"keys": []});
    json["routes"] = json!([{"name": "r", "match": {"prefix": "/"}}]);
    let e = Config::from_json(json.to_string().as_bytes()).unwrap_err();
    assert!(
        e.to_string().contains("cors_on_refusals") && e.to_string().contains("platform: web"),
        "{e}"
    );
}

/// The test configuration with an `optional` API-key route at `/opt/`.
fn with_optional_key_route() -> World {
    let mut cfg = config_json();
    if let Some(routes) = cfg["routes"].as_array_mut() {
        routes.insert(
            0,
            json!({"name": "opt", "match": {"prefix": "/opt/"}, "api_key": "optional"}),
        );
    }
    World::from(cfg)
}

#[test]
fn a_percent_u_spelling_of_the_key_parameter_is_read_as_it() {
    // ASP.NET on .NET Framework (`HttpUtility.UrlDecode`, behind
    // `Request.QueryString`) decodes `%uXXXX` in names and compares them
    // without case: `?%u006Bey=` and `?%u004B%u0045%u0059=` are its `key`.
    let w = with_optional_key_route();
    assert_eq!(
        w.reason("/opt/x?key=key-revoked", &[]),
        Some(Reason::ApiKeyInvalid)
    );
    for (path, hs) in [
        // a revoked key on an optional-key route
        ("/opt/x?%u006Bey=key-revoked", &[][..]),
        ("/opt/x?%U006Bey=key-revoked", &[][..]),
        // the header's key checked, another read upstream
        ("/sms?%u006Bey=key-office", &[("x-api-key", "key-sms")][..]),
        ("/sms?key=key-sms&%u004B%u0045%u0059=key-office", &[][..]),
    ] {
        assert_eq!(w.reason(path, hs), Some(Reason::ApiKeyInvalid), "{path}");
    }
    // A name that decodes to another, or outside ASCII, is not the key's.
    for path in ["/opt/x?%u006Bez=1", "/opt/x?%u212Aey=1", "/opt/x?%u00=1"] {
        assert_eq!(w.reason(path, &[]), None, "{path}");
    }
}

#[test]
fn a_percent_u_key_parameter_is_cut_with_forward_false() {
    let mut cfg = config_json();
    cfg["api_keys"]["forward"] = json!(false);
    let w = World::from(cfg);
    match w
        .run(
            "/sms?a=1&%u006Bey=key-sms",
            "198.51.100.1",
            &[("x-api-key", "key-sms")],
        )
        .0
    {
        Decision::Allow(g) => assert_eq!(g.key_scrub.path.as_deref(), Some("/sms?a=1")),
        d => panic!("{d:?}"),
    }
}

#[test]
fn a_cookie_named_like_the_key_parameter_carries_the_checked_key_or_none() {
    // PHP's `$_REQUEST` without a php.ini (the official images) takes
    // cookies over the query: a cookie `key=` is a key to it.
    let w = with_optional_key_route();
    for (path, hs) in [
        ("/sms?key=key-sms", &[("cookie", "key=key-office")][..]),
        (
            "/sms",
            &[("x-api-key", "key-sms"), ("cookie", "a=1; KEY=key-office")][..],
        ),
        (
            "/sms?key=key-sms",
            &[("cookie", "a=1"), ("cookie", "key%5B0%5D=key-office")][..],
        ),
        // no key checked, one in a cookie: it would pass unchecked
        ("/opt/x", &[("cookie", "key=key-revoked")][..]),
    ] {
        assert_eq!(
            w.reason(path, hs),
            Some(Reason::ApiKeyInvalid),
            "{path} {hs:?}"
        );
    }
    // The checked key itself, an empty one, and other cookies are fine.
    for (path, hs) in [
        (
            "/sms?key=key-sms",
            &[("cookie", "key=key-sms; session=abc")][..],
        ),
        ("/opt/x", &[("cookie", "key=; keys=1; monkey=2")][..]),
    ] {
        assert_eq!(w.reason(path, hs), None, "{path} {hs:?}");
    }
}

#[test]
fn a_preflight_is_held_to_the_action_and_network_of_the_route_options_takes() {
    // The route `OPTIONS` itself takes (whose handler the request reaches)
    // restricts it to the office network, or denies it outright. Asking
    // about a method those routes do not list (the client's choice) would
    // take the open catch-all: the preflight is then checked as any
    // OPTIONS under the route it takes, and refused as one.
    let w = World::from(json!({
        "default_action": "deny",
        "bypass_cors_preflight": true,
        "apps": [{"id": "w", "platform": "web", "origins": ["https://shop.example.com"]}],
        "routes": [
            {"name": "admin", "match": {"prefix": "/admin/", "methods": ["GET", "POST", "OPTIONS"]},
             "network": {"ip_allow": ["10.0.0.0/8"]}},
            {"name": "closed", "match": {"prefix": "/closed/", "methods": ["GET", "OPTIONS"]},
             "action": "deny"},
            {"name": "public", "match": {"prefix": "/"}}
        ]
    }));
    let options = |path: &str, asked: Option<&str>, from: &str| {
        let mut pairs = vec![
            (":method", "OPTIONS"),
            (":path", path),
            (":authority", "api.example.com"),
            ("origin", "https://shop.example.com"),
        ];
        if let Some(m) = asked {
            pairs.push(("access-control-request-method", m));
        }
        let h = headers(&pairs);
        match evaluate(&w.ctx(), &Request::new(&h, from.parse().ok()), NOW) {
            Step::Done(d, f) => (d.reason(), f.route, f.cors_preflight),
            _ => panic!("no decision"),
        }
    };
    let outside = "198.51.100.1";
    assert_eq!(options("/admin/x", None, outside).0, Some(Reason::IpDenied));
    assert_eq!(
        options("/closed/x", None, outside).0,
        Some(Reason::RouteDenied)
    );
    // Asking about a method the route lists, the preflight is that
    // route's, held to its rules as before.
    assert_eq!(
        options("/admin/x", Some("POST"), outside),
        (Some(Reason::IpDenied), Some(0), true)
    );
    for asked in ["PUT", "XYZ"] {
        assert_eq!(
            options("/admin/x", Some(asked), outside),
            (Some(Reason::IpDenied), Some(0), false),
            "{asked}"
        );
        assert_eq!(
            options("/closed/x", Some(asked), outside),
            (Some(Reason::RouteDenied), Some(1), false),
            "{asked}"
        );
    }
    assert_eq!(
        options("/closed/x", Some("GET"), outside),
        (Some(Reason::RouteDenied), Some(1), true)
    );
    // From inside admin's network a preflight asking about a method the
    // catch-all takes passes as one; elsewhere preflights pass as before.
    assert_eq!(
        options("/admin/x", Some("PUT"), "10.1.2.3"),
        (None, Some(2), true)
    );
    assert_eq!(
        options("/admin/x", Some("POST"), "10.1.2.3"),
        (None, Some(0), true)
    );
    assert_eq!(
        options("/other", Some("PUT"), outside),
        (None, Some(2), true)
    );
    // A later route that takes every method is the catch-all a browser's
    // preflight to the earlier route falls under too: it does not hold the
    // preflight; one that lists OPTIONS itself does.
    let w = World::from(json!({
        "bypass_cors_preflight": true,
        "apps": [{"id": "w", "platform": "web", "origins": ["https://shop.example.com"]}],
        "routes": [
            {"name": "send", "match": {"path": "/v1/sms/send", "methods": ["POST"]}},
            {"name": "opts", "match": {"prefix": "/v1/sms/", "methods": ["OPTIONS"]},
             "network": {"ip_allow": ["10.0.0.0/8"]}},
            {"name": "sms", "match": {"path": "/v1/sms", "methods": ["GET", "OPTIONS"]},
             "network": {"ip_allow": ["10.0.0.0/8"]}},
            {"name": "rest", "match": {"prefix": "/v1/"}, "action": "deny"},
            {"name": "open", "match": {"prefix": "/"}}
        ]
    }));
    let preflight = |path: &str, asked: &str| {
        let h = headers(&[
            (":method", "OPTIONS"),
            (":path", path),
            (":authority", "api.example.com"),
            ("origin", "https://shop.example.com"),
            ("access-control-request-method", asked),
        ]);
        match evaluate(&w.ctx(), &Request::new(&h, outside.parse().ok()), NOW) {
            Step::Done(d, f) => (d.reason(), f.route, f.cors_preflight),
            _ => panic!("no decision"),
        }
    };
    assert_eq!(
        preflight("/v1/other", "POST"),
        (Some(Reason::RouteDenied), Some(3), true)
    );
    assert_eq!(
        preflight("/v1/sms/send", "POST"),
        (Some(Reason::IpDenied), Some(1), false),
        "a later route listing OPTIONS holds it"
    );
    // Where the plain OPTIONS is unclear (`/v1/sms.json` is `/v1/sms` to
    // Rails, whose route takes OPTIONS), so is the preflight, whatever
    // method it asks about.
    assert_eq!(
        preflight("/v1/sms.json", "PUT"),
        (Some(Reason::RouteDenied), None, false)
    );
    let w = World::from(json!({
        "bypass_cors_preflight": true,
        "apps": [{"id": "w", "platform": "web", "origins": ["https://shop.example.com"]}],
        "routes": [
            {"name": "send", "match": {"path": "/v1/sms/send", "methods": ["POST"]}},
            {"name": "rest", "match": {"prefix": "/v1/"}, "action": "deny"}
        ]
    }));
    let h = headers(&[
        (":method", "OPTIONS"),
        (":path", "/v1/sms/send"),
        (":authority", "api.example.com"),
        ("origin", "https://shop.example.com"),
        ("access-control-request-method", "POST"),
    ]);
    match evaluate(&w.ctx(), &Request::new(&h, outside.parse().ok()), NOW) {
        Step::Done(d, f) => assert_eq!(
            (d.reason(), f.route, f.cors_preflight),
            (None, Some(0), true)
        ),
        _ => panic!("no decision"),
    }
}

/// A provider with a configured key (no `kid`) beside a remote JWKS.
/// Before the JWKS loads (cold start, or dropped after the grace), a token
/// without `kid` may be for one of its keys as much as a token naming one:
/// it asks for the keys first, and where they cannot be had, one the
/// configured key does not verify is answered by the route's failure mode,
/// not refused as forged.
#[test]
fn a_token_without_kid_waits_for_remote_keys_still_to_come() {
    use crate::token::keys::{keys_from_jwks, JwksOrigin};
    use jwt_simple::prelude::*;
    let ec_pub = include_str!("../../tests/fixtures/ec-p256-test-key.pub.pem");
    let w = World::from(json!({
        "tokens": [{"name": "r", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "ES256", "pem": ec_pub}],
                    "remote_jwks": {"cluster": "jwks", "path": "/jwks"}}],
        "routes": [{"name": "open", "match": {"prefix": "/open"}, "tokens": ["r"], "failure_mode": "allow"},
                   {"name": "api", "match": {"prefix": "/"}, "tokens": ["r"]}]
    }));
    // The issuer's key, published in the remote JWKS without a `kid`.
    let issuer = ES256KeyPair::from_bytes(&[5u8; 32]).unwrap();
    let pk = issuer.public_key().public_key().to_bytes_uncompressed();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&pk[1..33]), "y": b64(&pk[33..65])});
    let token = |jti: &str| {
        let mut c = Claims::create(Duration::from_secs(60)).with_jwt_id(jti);
        c.issued_at = Some(Duration::from_secs(NOW));
        c.expires_at = Some(Duration::from_secs(NOW + 60));
        c.invalid_before = None;
        issuer.sign(c).unwrap()
    };
    let step = |path: &str, t: &str, remote: &[RemoteKeys], key_fetch: KeyFetch| {
        let h = headers(&[
            (":method", "GET"),
            (":path", path),
            (":authority", "a"),
            ("x-t", t),
        ]);
        let mut ctx = w.ctx();
        ctx.remote_keys = remote;
        ctx.key_fetch = key_fetch;
        evaluate(&ctx, &Request::new(&h, "192.0.2.9".parse().ok()), NOW)
    };
    let none = [RemoteKeys {
        keys: None,
        version: 0,
    }];
    let loaded = [RemoteKeys {
        keys: Some(Rc::new(
            keys_from_jwks(&json!({ "keys": [jwk] }), JwksOrigin::Fetched).unwrap(),
        )),
        version: 7,
    }];
    // With the keys loaded, the issuer's kid-less token passes.
    assert!(
        matches!(step("/x", &token("a"), &loaded, KeyFetch::May), Step::Done(ref d, _) if d.reason().is_none()),
        "the genuine token verifies once the keys are there"
    );
    // Before the keys load, it asks for them, before any signature work.
    assert!(matches!(
        step("/x", &token("b"), &none, KeyFetch::May),
        Step::NeedKeys { .. }
    ));
    // They could not be had: the route's failure mode decides.
    let outcome = |path: &str, t: &str| match step(path, t, &none, KeyFetch::NotNow) {
        Step::Done(d, f) => (d.reason(), f.degraded),
        s => panic!("{s:?}"),
    };
    assert_eq!(
        outcome("/open", &token("c")),
        (None, Some(Reason::JwksUnavailable))
    );
    assert_eq!(
        outcome("/x", &token("d")),
        (Some(Reason::JwksUnavailable), None)
    );
    // A token of another algorithm than the configured key's too, with no
    // signature work.
    let rs = jwt_simple::prelude::RS256KeyPair::from_pem(include_str!(
        "../../tests/fixtures/rsa-test-key.pem"
    ))
    .unwrap();
    let mut c = Claims::create(Duration::from_secs(60));
    c.issued_at = Some(Duration::from_secs(NOW));
    c.expires_at = Some(Duration::from_secs(NOW + 60));
    c.invalid_before = None;
    let rs_token = rs.sign(c).unwrap();
    assert_eq!(
        outcome("/open", &rs_token),
        (None, Some(Reason::JwksUnavailable))
    );
    // Once the keys have loaded, the client's genuine tokens pass.
    match step("/x", &token("e"), &loaded, KeyFetch::May) {
        Step::Done(d, f) => assert_eq!((d.reason(), f.budget_refused), (None, false)),
        s => panic!("{s:?}"),
    }
}

/// `u1`'s first lease on `w` ([`lease_world_of`] 100), asked for at `t`
/// and granted with 900 of the limit remaining in the service's window
/// (50 s of it), and 75 of its 99 kept hits used by requests until `t +
/// 85`: the next request asks ahead. The descriptor's key.
fn use_75_of_a_lease_of_100(w: &World, t: u64) -> [u8; 16] {
    let (p, sent) = w.leased_call("u1", t);
    assert_eq!(sent[0].1, Some(100));
    let key = p.service[0].key;
    w.leased_ok(p, 900, 50_000, t + 5);
    for i in 0..75 {
        assert!(w.leased_pass("u1", t + 10 + i), "kept hit {i}");
    }
    key
}

/// Makes `u1`'s descriptor on `w` ([`lease_world_of`] 100) a busy one at
/// `t`: one lease of 100 asked for, granted with 900 of the limit
/// remaining in the service's window, and all its hits used.
fn use_a_lease_of_100(w: &World, t: u64) {
    let key = use_75_of_a_lease_of_100(w, t);
    // With under a quarter left the next request would ask ahead (leaving an
    // ask out, which the callers set up themselves): the last 25 are
    // taken as requests side by side with that ask would take them.
    for i in 75..99 {
        assert!(
            w.over.borrow_mut().take_lease(&key, t + 10 + i),
            "kept hit {i}"
        );
    }
}

// Requests a client resets while their lease ask is out (README, Leases:
// "a client resetting its requests must not have a whole lease counted for
// each"): with a remainder known (any busy descriptor after its first
// answer), each asked for a whole lease, until the asks added up to what
// remained. While an abandoned ask holds, it quarters the next asks.
#[test]
fn requests_reset_while_asking_do_not_each_have_a_whole_lease_counted() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    use_a_lease_of_100(&w, t);
    // A client sends 5 requests and resets each while its call is out:
    // the service counts every call's hits.
    let mut counted = 0;
    let mut asks = Vec::new();
    for i in 0..5 {
        let (p, sent) = w.leased_call("u1", t + 200 + i);
        counted += sent[0].1.unwrap_or(1);
        asks.push(sent[0].1.unwrap_or(1));
        abandon_rls(&w.ctx(), p);
    }
    // A lease, then a quarter, a sixteenth…: a lease and a third at most.
    assert_eq!(asks, [100, 25, 6, 1, 1]);
    assert!(
        counted <= 100 + 100 / 3 + 5,
        "5 requests reset while asking had {counted} hits counted by the service"
    );
}

// A burst of requests sent side by side on a busy descriptor, all out
// before any is reset (README, Leases): each asked for a whole lease while
// what remained allowed, so a client resetting the burst had a lease
// counted for each request. Asks in flight now halve the next ask: the
// burst has at most two leases and a hit a request counted.
#[test]
fn a_burst_reset_together_has_at_most_two_leases_counted() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    use_a_lease_of_100(&w, t);
    let counted = w.burst_then_reset(8, t + 200, None);
    assert!(
        counted <= 2 * 100 + 8,
        "8 requests sent side by side and reset had {counted} hits counted by the service"
    );
}

// The same burst as it comes on a busy descriptor (review57-lease F4): the
// lease is used by requests, one of them asks ahead while a quarter is
// left, the others take the held hits, then a burst finds them spent while
// the ask ahead is out; all are reset. The bound stays: two leases and a
// hit a request.
#[test]
fn a_burst_after_an_ask_ahead_reset_together_has_at_most_two_leases_counted() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    use_75_of_a_lease_of_100(&w, t);
    let (ahead, sent) = w.leased_call("u1", t + 100);
    assert_eq!(sent[0].1, Some(100), "asked ahead, 24 held");
    for i in 0..24 {
        assert!(w.leased_pass("u1", t + 101 + i), "held hit {i}");
    }
    // Within the ask ahead's timeout (100 ms).
    let counted = 100 + w.burst_then_reset(8, t + 130, Some(ahead));
    assert!(
        counted <= 2 * 100 + 9,
        "an ask ahead and 8 requests side by side, all reset, had {counted} hits counted"
    );
}

// An ask ahead that the service answers: its lease is added to the hits
// still held, and the requests side by side with it took those hits
// without a call.
#[test]
fn an_answered_ask_ahead_adds_its_lease_to_the_held_hits() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    use_75_of_a_lease_of_100(&w, t);
    let (ahead, sent) = w.leased_call("u1", t + 100);
    assert_eq!(sent[0].1, Some(100), "asked ahead, 24 held");
    for i in 0..10 {
        assert!(w.leased_pass("u1", t + 101 + i), "held hit {i}");
    }
    w.leased_ok(ahead, 800, 49_000, t + 120);
    // 14 held and 99 kept of the new lease: 113 hits, of which 89 are
    // taken before under a quarter of a lease is left and the next lease
    // is asked for ahead.
    for i in 0..89 {
        assert!(w.leased_pass("u1", t + 200 + i), "hit {i} after the answer");
    }
    let (_, sent) = w.leased_call("u1", t + 400);
    assert_eq!(sent[0].1, Some(100), "24 held: asked ahead again");
    assert!(w.leased_pass("u1", t + 401), "the held hits still serve");
}

// A CORS preflight (under `bypass_cors_preflight`) with an `access_token`
// query parameter, which a delegated provider's route refuses whatever else
// the request holds, is no preflight: it is checked, and refused.
#[test]
fn a_preflight_carries_no_access_token_parameter_to_a_delegated_route() {
    let w = World::from(json!({
        "bypass_cors_preflight": true,
        "tokens": [{"name": "mesh", "from": [{"header": "authorization", "prefix": "Bearer "}],
                    "verified_by": {"key": "mesh_payload"},
                    "issuer": "https://issuer.example", "max_lifetime_seconds": 300}],
        "routes": [{"name": "meshed", "match": {"prefix": "/meshed/"}, "tokens": ["mesh"]}]
    }));
    let h = headers(&[
        (":method", "OPTIONS"),
        (":path", "/meshed/x?access_token=used.or.forged"),
        (":authority", "api.example.com"),
        ("origin", "https://shop.example.com"),
        ("access-control-request-method", "POST"),
    ]);
    let read = |_: usize| -> Option<Claims> { None };
    let mut req = Request::new(&h, Some("198.51.100.1".parse().unwrap()));
    req.delegated = Delegated::Lazy(&read);
    match evaluate(&w.ctx(), &req, NOW) {
        Step::Done(d, f) => assert_eq!(
            d.reason(),
            Some(Reason::TokenMalformed),
            "let through as a preflight: {}",
            f.cors_preflight
        ),
        s => panic!("{s:?}"),
    }
}

// One client resets one request while its lease ask is out (a phone that
// loses its network): the descriptor's other requests on that worker went
// on to make a call each for the rest of the window (a minute at least),
// as if it had no lease. Now they take a quarter of a lease at a time.
#[test]
fn one_reset_leaves_the_others_leases_of_a_quarter_not_a_call_each() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    use_a_lease_of_100(&w, t);
    let (p, sent) = w.leased_call("u1", t + 200);
    assert_eq!(sent[0].1, Some(100));
    abandon_rls(&w.ctx(), p);
    let mut remaining: u32 = 800;
    let mut calls = 0;
    let mut at = t + 300;
    let mut requests = 0;
    while requests < 200 {
        match w.leased_get("/leased", "u1", at) {
            Step::Done(Decision::Allow(_), _) => {}
            Step::NeedRateLimit(p, call) => {
                calls += 1;
                let hits = rls_hits(&call)[0].1.unwrap_or(1);
                remaining -= u32::try_from(hits).unwrap();
                w.leased_ok(p, remaining, 50_000, at + 1);
            }
            s => panic!("{s:?}"),
        }
        requests += 1;
        at += 2;
    }
    assert!(
        calls <= 200 / 25 + 2,
        "{calls} calls for {requests} requests after one reset"
    );
}

// review58-leases L1: one reset while a lease ask is out (a phone losing its
// network) turned asking ahead off on that worker for as long as the reset
// ask holds, which after an answer counted it is the rest of the window (a
// day with `per: day`): a busy descriptor's requests side by side then
// halve each other's quartered asks (25, 12, 6, 3, then one hit each) and
// make a call for one request in about four, where README promises
// "leases, a quarter of one after a single reset, rather than a call
// each". Once an answer counted the reset ask, the next lease should be
// asked for ahead again (its hits quartered like any ask's).
#[test]
fn one_reset_leaves_a_busy_descriptor_asking_ahead() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    use_a_lease_of_100(&w, t);
    let (p, sent) = w.leased_call("u1", t + 200);
    assert_eq!(sent[0].1, Some(100));
    abandon_rls(&w.ctx(), p);
    // 20 rounds of 16 requests side by side (an HTTP/2 client's streams,
    // or 16 clients of one key), each round's calls answered before the
    // next round.
    let mut remaining: u32 = 40_000;
    let (mut calls, mut requests) = (0u32, 0u32);
    let mut at = t + 300;
    for _ in 0..20 {
        let mut out = Vec::new();
        for _ in 0..16 {
            match w.leased_get("/leased", "u1", at) {
                Step::Done(Decision::Allow(_), _) => {}
                Step::NeedRateLimit(p, call) => {
                    calls += 1;
                    let hits = rls_hits(&call)[0].1.unwrap_or(1);
                    remaining -= u32::try_from(hits).unwrap();
                    out.push(p);
                }
                s => panic!("{s:?}"),
            }
            requests += 1;
            at += 1;
        }
        for p in out {
            w.leased_ok(p, remaining, 50_000, at);
            at += 1;
        }
    }
    assert!(
        calls <= 16 + requests / 20,
        "{calls} calls for {requests} requests (16 side by side) after one reset"
    );
}

// review58-leasefix F1, through the filter: after a burst of four reset
// (README: the asks are then a 256th of a lease, 3 hits for `lease: 1000`),
// every request asked ahead for 3 hits while the worker held hits, its
// answer keeping 2 and clearing the once-per-lease mark: a call per
// request, where taking the held hits and then asking for 3 makes one in
// three.
#[test]
fn after_a_burst_reset_small_asks_ahead_do_not_make_a_call_per_request() {
    let w = lease_world_of(1000);
    let t = NOW * 1000;
    let (p, sent) = w.leased_call("u1", t);
    assert_eq!(sent[0].1, Some(1000));
    let key = p.service[0].key;
    w.leased_ok(p, 99_000, 3_000_000, t + 5);
    for i in 0..750 {
        assert!(w.leased_pass("u1", t + 10 + i), "kept hit {i}");
    }
    // The last quarter taken as requests side by side with an ask ahead
    // would take them (as `use_a_lease_of_100`).
    for i in 750..999 {
        assert!(
            w.over.borrow_mut().take_lease(&key, t + 10 + i),
            "kept hit {i}"
        );
    }
    let mut at = t + 1_010;
    let mut remaining: u32 = 99_000;
    remaining -= u32::try_from(w.burst_then_reset(4, at, None)).unwrap();
    at += 10;
    // Another request's call, answered: it counts the four.
    let (p, hits, _) = w.next_call("u2", at);
    assert_eq!(hits, 1000, "u2's own descriptor");
    w.leased_ok(p, 98_000, 3_000_000, at + 1);
    let (p, hits, sent) = w.next_call("u1", at + 2);
    assert_eq!(hits, 3, "a 256th of a lease");
    remaining -= 3;
    w.leased_ok(p, remaining, 3_000_000, sent + 1);
    at = sent + 2;
    let (mut calls, requests) = (0u32, 30u32);
    for _ in 0..requests {
        match w.leased_get("/leased", "u1", at) {
            Step::Done(Decision::Allow(_), _) => {}
            Step::NeedRateLimit(p, call) => {
                calls += 1;
                let hits = rls_hits(&call)[0].1.unwrap_or(1);
                remaining -= u32::try_from(hits).unwrap();
                w.leased_ok(p, remaining, 3_000_000, at + 1);
            }
            s => panic!("{s:?}"),
        }
        at += 2;
    }
    assert!(
        calls <= requests / 3 + 1,
        "{calls} calls for {requests} requests one after another, each answered before the next"
    );
}

// review58-leasefix F2 through the policy: the answer that granted the
// worker's lease named a limit per day, and that lease's window ended (the
// service said 10 s were left). A client alone on the descriptor then
// resets every request for 23 hours: its reset ask holds to the end of
// the day's window, not an hour, so it has a lease, not one an hour,
// counted.
#[test]
fn resets_after_a_day_limits_lease_ended_hold_to_the_next_windows_end() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    let (p, _) = w.leased_call("u1", t);
    let mut resp = ok_response(1, 900, Some(10_000));
    if let Some(l) = resp.statuses[0].current_limit.as_mut() {
        l.requests_per_unit = 1000;
        l.unit = crate::ratelimit::rls::Unit::Day as i32;
    }
    assert!(matches!(
        w.answer(p, &resp, t + 5),
        Step::Done(Decision::Allow(_), _)
    ));
    let hour = 3_600_000;
    let mut counted = 0;
    let mut requests = 0;
    for h in 0..23 {
        for i in 0..10 {
            let at = t + 20_000 + h * hour + i * 1_000;
            match w.leased_get("/leased", "u1", at) {
                Step::NeedRateLimit(p, call) => {
                    counted += rls_hits(&call)[0].1.unwrap_or(1);
                    abandon_rls(&w.ctx(), p);
                }
                s => panic!("{s:?}"),
            }
            requests += 1;
        }
    }
    assert!(
        counted <= 100 + 100 / 3 + requests,
        "{requests} requests reset over 23 hours after the lease's window ended had {counted} hits counted"
    );
}

// A client that alternates (a request it resets while its lease ask is
// out, then one it lets finish, whose call's answer counts the first) keeps
// the asks at a quarter of a lease for a cooldown after that answer, and a
// sixteenth after the next: it had a whole lease counted for every reset
// request (README, Leases). The requests it lets finish take the hits
// their answers kept until the next one makes a call.
#[test]
fn alternating_resets_do_not_each_have_a_whole_lease_counted() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    use_a_lease_of_100(&w, t);
    let mut remaining: u64 = 900;
    let mut counted_for_resets = 0;
    let mut at = t + 200;
    for _ in 0..5 {
        // Reset while its call is out: the service counts its hits.
        let (p, hits, sent) = w.next_call("u1", at);
        counted_for_resets += hits;
        remaining = remaining.saturating_sub(hits);
        abandon_rls(&w.ctx(), p);
        // Then one it lets finish, whose answer (which counts both) ends
        // the hold.
        let (p, hits, sent) = w.next_call("u1", sent + 1);
        remaining = remaining.saturating_sub(hits);
        w.leased_ok(p, u32::try_from(remaining).unwrap(), 50_000, sent + 1);
        at = sent + 2;
    }
    assert!(
        counted_for_resets <= 100 + 100 / 3 + 5,
        "5 requests reset while asking (5 others finished) had {counted_for_resets} hits counted; {remaining} of the 1000 remain"
    );
}

// The cooldown after a counted reset lasts to the end of the lease's
// window: a client that resets one request a minute (and lets one finish,
// so that an answer counts it) had a whole lease counted every minute; on
// an hourly limit of 1000 with `lease: 100`, 20 requests in ten minutes
// spent the whole hour's limit of every client sharing the descriptor.
// Now a lease, a quarter, a sixteenth…: a lease and a third a window.
#[test]
fn one_reset_a_minute_has_at_most_a_lease_and_a_third_counted_a_window() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    let hour: u64 = 3_600_000;
    let mut remaining: u64 = 1000;
    let mut counted_for_resets = 0;
    let mut requests = 0;
    let mut at = t;
    for _ in 0..10 {
        // Reset while its call is out: the service counts its hits.
        let (p, hits, sent) = w.next_call("u1", at);
        requests += sent - at + 1;
        counted_for_resets += hits;
        remaining = remaining.saturating_sub(hits);
        abandon_rls(&w.ctx(), p);
        // Then one it lets finish, whose answer counts the first.
        let (p, hits, sent) = w.next_call("u1", sent + 1);
        remaining = remaining.saturating_sub(hits);
        let left = i64::try_from(t + hour - sent).unwrap();
        let mut resp = ok_response(1, u32::try_from(remaining).unwrap(), Some(left));
        if let Some(l) = resp.statuses[0].current_limit.as_mut() {
            l.requests_per_unit = 1000;
            l.unit = crate::ratelimit::rls::Unit::Hour as i32;
        }
        assert!(matches!(
            w.answer(p, &resp, sent + 1),
            Step::Done(Decision::Allow(_), _)
        ));
        requests += 1;
        at += 61_000;
    }
    assert!(
        counted_for_resets <= 100 + 100 / 3 + 10,
        "{requests} requests over ten minutes (10 reset) had {counted_for_resets} hits counted; {remaining} of the hour's 1000 remain"
    );
}

// The answer that counts a reset ask may refuse the call for another
// descriptor (the client's own per-IP limit, README's example): its status
// for this descriptor still names the window, and the hold lasts to its
// end. (It was extended only where a lease was granted: one reset request
// plus one request over its per-IP limit a minute spent an hour's limit
// of 1000, `lease: 100`, in ten minutes.)
#[test]
fn a_refused_answer_counts_a_reset_with_the_window_s_cooldown() {
    let w = lease_world_of(100);
    let call = |at: u64| match w.leased_get("/open", "u1", at) {
        Step::NeedRateLimit(p, call) => (p, rls_hits(&call)),
        s => panic!("expected a call at {at}: {s:?}"),
    };
    let t = NOW * 1000;
    let hour: u64 = 3_600_000;
    let mut remaining: u64 = 1000;
    let mut counted_for_resets = 0;
    let mut at = t;
    for _ in 0..10 {
        // Reset while its call is out: the service counts its hits.
        let (p, sent) = call(at);
        assert_eq!(sent[0].0[0].0, "x-user");
        let hits = sent[0].1.unwrap_or(1);
        counted_for_resets += hits;
        remaining = remaining.saturating_sub(hits);
        abandon_rls(&w.ctx(), p);
        // Then one over the client's per-IP limit (a minute's): the
        // service counts its one hit of the user's limit and refuses it.
        let (p, sent) = call(at + 1);
        remaining = remaining.saturating_sub(sent[0].1.unwrap_or(1));
        let left = i64::try_from(t + hour - (at + 1)).unwrap();
        let mut resp = ok_response(2, u32::try_from(remaining).unwrap(), Some(left));
        if let Some(l) = resp.statuses[0].current_limit.as_mut() {
            l.requests_per_unit = 1000;
            l.unit = crate::ratelimit::rls::Unit::Hour as i32;
        }
        resp.overall_code = crate::ratelimit::Code::OverLimit as i32;
        resp.statuses[1].code = crate::ratelimit::Code::OverLimit as i32;
        resp.statuses[1].limit_remaining = 0;
        resp.statuses[1].duration_until_reset = Some(crate::ratelimit::rls::Duration {
            seconds: 50,
            nanos: 0,
        });
        assert_eq!(
            w.answer(p, &resp, at + 2).done_reason(),
            Some(Reason::RateLimited)
        );
        at += 61_000;
    }
    assert!(
        counted_for_resets <= 100 + 10,
        "20 requests over ten minutes (10 reset, 10 over their per-IP limit) had {counted_for_resets} hits counted; {remaining} of the hour's 1000 remain"
    );
}

// ---------------------------------------------------------------------
// Platform and app identity, API keys (review56).
// ---------------------------------------------------------------------

/// README (`apps[]`): "From headers, the app that names the request most
/// closely is chosen, whatever the order of the list". Two apps that the
/// headers cannot tell apart (one package, no pins: a prod and a staging
/// Firebase registration of one build, told apart only by
/// `token_app_ids`) are accepted, and then the first listed silently
/// takes every header-identified request: a key restricted to the second
/// is refused on all of them, and listing them the other way round
/// flips it. The configuration refuses the same ambiguity for token app
/// names (`a_token_app_id_names_one_app`); here it should be refused too
/// (or the request refused as ambiguous), never decided by list order.
#[test]
fn apps_the_headers_cannot_tell_apart_do_not_depend_on_list_order() {
    let cfg = |first: &str, second: &str| {
        json!({
            "apps": [
                {"id": first, "platform": "android", "package": "com.example.shop",
                 "token_app_ids": [format!("1:1:android:{first}")]},
                {"id": second, "platform": "android", "package": "com.example.shop",
                 "token_app_ids": [format!("1:2:android:{second}")]}
            ],
            "api_keys": {"keys": [
                {"id": "k-staging", "sha256": hash_api_key("key-staging"), "apps": ["staging"]}
            ]},
            "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "api_key": "required"}]
        })
    };
    let outcome = |first: &str, second: &str| -> Result<Option<Reason>, String> {
        let v = cfg(first, second);
        Config::from_json(v.to_string().as_bytes()).map_err(|e| e.path)?;
        Ok(World::from(v).reason(
            "/v1/x",
            &[
                ("x-api-key", "key-staging"),
                ("x-android-package", "com.example.shop"),
            ],
        ))
    };
    let a = outcome("prod", "staging");
    let b = outcome("staging", "prod");
    // Refused at load (both orders), or the same answer in both orders.
    let refused = a.is_err() && b.is_err();
    assert!(
        refused || a == b,
        "the decision depends on the order of apps[]: prod first {a:?}, staging first {b:?}"
    );
}

/// README (`api_keys.forward`): "`false`: ... so that the key reaches
/// neither the upstream nor Envoy's access log". A cookie named like the
/// key parameter that holds the checked key is let through
/// (`a_cookie_named_like_the_key_parameter_carries_the_checked_key_or_none`),
/// and with `forward: false` nothing takes it out: the header and the
/// parameter go, the `Cookie: key=<the key>` reaches the upstream (and
/// whatever logs cookies), which PHP's `$_REQUEST` then reads as the key.
#[test]
fn with_forward_false_a_cookie_copy_of_the_key_does_not_go_upstream() {
    let mut cfg = config_json();
    cfg["api_keys"]["forward"] = json!(false);
    let w = World::from(cfg);
    for (path, hs, want) in [
        ("/sms?key=key-sms", vec![("cookie", "key=key-sms")], ""),
        (
            "/sms",
            vec![("x-api-key", "key-sms"), ("cookie", "a=1; key=key-sms")],
            "a=1",
        ),
    ] {
        match w.run(path, "198.51.100.1", &hs).0 {
            // Refusing such a cookie where keys are not forwarded is fine.
            Decision::Deny(d) => assert_eq!(d.reason, Reason::ApiKeyInvalid),
            Decision::Allow(g) => assert_eq!(
                g.key_scrub.cookie.as_deref(),
                Some(want),
                "{path} {hs:?}: the key header/parameter are cut ({:?}) but the cookie \
                 carrying the same key goes upstream",
                g.key_scrub
            ),
        }
    }
    // Several cookie headers come back as one, in their order; cookies
    // not named like the parameter, and requests without one, are left
    // alone.
    let (d, _) = w.run(
        "/sms?key=key-sms",
        "198.51.100.1",
        &[
            ("cookie", "a=1;key=key-sms"),
            ("cookie", " b=2 ;\tKEY[]=key-sms;c"),
        ],
    );
    let Decision::Allow(g) = d else {
        panic!("{d:?}")
    };
    assert_eq!(g.key_scrub.cookie.as_deref(), Some("a=1; b=2; c"));
    for hs in [vec![("cookie", "keys=1; monkey=2")], vec![]] {
        let (d, _) = w.run("/sms?key=key-sms", "198.51.100.1", &hs);
        let Decision::Allow(g) = d else {
            panic!("{d:?}")
        };
        assert_eq!(g.key_scrub.cookie, None, "{hs:?}");
    }
}

/// README (`platform_headers`): "Each header names one thing". A platform
/// header that is `origin` or `referer` (every browser request would show
/// two platforms and be `app_mismatch`), a token source, the country
/// header, or one HTTP framing owns is refused when the config loads.
#[test]
fn a_platform_header_cannot_be_a_header_appguard_reads_for_something_else() {
    for (field, name) in [
        ("android_package", "origin"),
        ("ios_bundle_id", "referer"),
        ("android_cert", "x-firebase-appcheck"),
        ("ios_team_id", "x-country"),
        ("android_package", "Host"),
        ("ios_bundle_id", "x_forwarded_for"),
        ("android_cert", "content-type"),
    ] {
        let mut v = config_json();
        v["platform_headers"] = json!({ field: name });
        let e = Config::from_json(v.to_string().as_bytes()).expect_err(name);
        assert_eq!(e.path, format!("platform_headers.{field}"), "{name}");
        assert!(
            e.message.contains("each header must name one thing"),
            "{e:?}"
        );
    }
    // Headers of its own are fine.
    let mut v = config_json();
    v["platform_headers"] = json!({"android_package": "x-app-package", "ios_team_id": "x-team"});
    Config::from_json(v.to_string().as_bytes()).expect("own header names");
}

/// Probes that hold today (kept as regression tests): mixed, empty or
/// repeated platform evidence next to a verified token, and the reason
/// each gets.
#[test]
fn probes_of_identity_evidence_that_hold() {
    let w = World::new();
    let t = firebase_token("1:123:android:abc");
    for (hs, want) in [
        // an empty Origin or Referer is still a browser's header
        (vec![("origin", "")], Some(Reason::AppMismatch)),
        (vec![("referer", "")], Some(Reason::AppMismatch)),
        (
            vec![("referer", "https://app.example.com/")],
            Some(Reason::AppMismatch),
        ),
        // an empty package is another package
        (vec![("x-android-package", "")], Some(Reason::AppMismatch)),
        (vec![("X_Android_Package", "com.example.fb")], None),
        (
            vec![
                ("x-android-package", "com.example.fb"),
                ("x.android.package", "com.example.FB"),
            ],
            Some(Reason::AppMismatch),
        ),
        // a team id alone is iOS evidence
        (
            vec![("x-ios-team-id", "TEAM123456")],
            Some(Reason::AppMismatch),
        ),
    ] {
        let mut all = vec![("x-firebase-appcheck", t.as_str())];
        all.extend(hs.iter().copied());
        assert_eq!(w.reason("/appcheck/x", &all), want, "{hs:?}");
    }
    // Package names are compared exactly (Android's are case-sensitive).
    assert_eq!(
        w.reason(
            "/mobile/a",
            &[
                ("x-api-key", "key-android"),
                ("x-android-package", "com.example.Shop"),
                ANDROID[1]
            ]
        ),
        Some(Reason::AppUnknown)
    );
    // A pinned cert in SHA-1 form is not the SHA-256 pinned.
    assert_eq!(
        w.reason(
            "/mobile/a",
            &[
                ("x-api-key", "key-android"),
                ANDROID[0],
                ("x-android-cert", "abcdef0123456789abcdef0123456789abcdef01")
            ]
        ),
        Some(Reason::AppMismatch)
    );
    // Cert digests with other separators are not read as the pin.
    for cert in [
        "ab cd ef 01 23 45 67 89 ab cd ef 01 23 45 67 89 ab cd ef 01 23 45 67 89 ab cd ef 01 23 45 67 89",
        "ab-cd-ef-01-23-45-67-89-ab-cd-ef-01-23-45-67-89-ab-cd-ef-01-23-45-67-89-ab-cd-ef-01-23-45-67-89",
        "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=",
    ] {
        assert_eq!(
            w.reason(
                "/mobile/a",
                &[("x-api-key", "key-android"), ANDROID[0], ("x-android-cert", cert)]
            ),
            Some(Reason::AppMismatch),
            "{cert}"
        );
    }
}

/// Apps the platform headers cannot tell apart are refused when the
/// configuration loads, in either order; apps they can are accepted.
#[test]
fn apps_with_the_same_header_proof_are_refused_and_others_accepted() {
    const C1: &str = "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99";
    const C2: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    let load = |a: Value, b: Value| {
        let (mut a, mut b) = (a, b);
        a["id"] = json!("one");
        b["id"] = json!("two");
        let both = |x: &Value, y: &Value| {
            Config::from_json(json!({"apps": [x, y]}).to_string().as_bytes()).map_err(|e| e.path)
        };
        (both(&a, &b).map(|_| ()), both(&b, &a).map(|_| ()))
    };
    let android = |certs: &[&str]| {
        let mut v = json!({"platform": "android", "package": "com.example.shop"});
        if !certs.is_empty() {
            v["cert_fingerprints"] = json!(certs);
        }
        v
    };
    let ios = |team: Option<&str>| {
        let mut v = json!({"platform": "ios", "bundle_id": "com.example.shop"});
        if let Some(t) = team {
            v["team_id"] = json!(t);
        }
        v
    };
    let web = |o: &[&str]| json!({"platform": "web", "origins": o});
    for (a, b, field) in [
        (android(&[]), android(&[]), "package"),
        (
            android(&[C1]),
            android(&[C2, &C1.replace(':', "")]),
            "cert_fingerprints",
        ),
        (ios(None), ios(None), "bundle_id"),
        (ios(Some("ABCDE12345")), ios(Some("ABCDE12345")), "team_id"),
        (
            web(&["https://a.example.com"]),
            web(&["https://b.example.com", "https://A.example.com:443"]),
            "origins",
        ),
        (
            web(&["https://*.example.com"]),
            web(&["https://*.EXAMPLE.com"]),
            "origins",
        ),
    ] {
        let (x, y) = load(a.clone(), b.clone());
        assert_eq!(x, Err(format!("apps[1].{field}")), "{a} {b}");
        assert_eq!(y, Err(format!("apps[1].{field}")), "{b} {a}");
    }
    for (a, b) in [
        (android(&[]), android(&[C1])),
        (android(&[C1]), android(&[C2])),
        (ios(None), ios(Some("ABCDE12345"))),
        (ios(Some("ABCDE12345")), ios(Some("FGHIJ67890"))),
        (
            web(&["https://*.example.com"]),
            web(&["https://a.example.com"]),
        ),
        (
            web(&["https://a.example.com"]),
            web(&["http://a.example.com"]),
        ),
        (
            json!({"platform": "server", "cidrs": ["10.0.0.0/8"]}),
            json!({"platform": "server", "cidrs": ["10.0.0.0/8"]}),
        ),
    ] {
        assert_eq!(load(a.clone(), b.clone()), (Ok(()), Ok(())), "{a} {b}");
    }
}

/// An iOS request without a team id is the app of its bundle without a
/// team, whatever the order; between apps pinned to two teams it is
/// ambiguous (`app_mismatch`); with a team, the app pinned to it.
#[test]
fn an_ios_request_without_a_team_id_is_the_app_without_one_whatever_the_order() {
    let world = |apps: Value| {
        World::from(json!({
            "apps": apps,
            "api_keys": {"keys": [
                {"id": "k-pinned", "sha256": hash_api_key("key-pinned"), "apps": ["pinned"]},
                {"id": "k-loose", "sha256": hash_api_key("key-loose"), "apps": ["loose"]}
            ]},
            "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "api_key": "required"}]
        }))
    };
    let pinned = json!({"id": "pinned", "platform": "ios", "bundle_id": "com.example.shop", "team_id": "ABCDE12345"});
    let loose = json!({"id": "loose", "platform": "ios", "bundle_id": "com.example.shop"});
    let bundle = ("x-ios-bundle-identifier", "com.example.shop");
    for apps in [json!([pinned, loose]), json!([loose, pinned])] {
        let w = world(apps.clone());
        assert_eq!(
            w.reason("/v1/x", &[("x-api-key", "key-loose"), bundle]),
            None,
            "{apps}"
        );
        assert_eq!(
            w.reason("/v1/x", &[("x-api-key", "key-pinned"), bundle]),
            Some(Reason::ApiKeyRestricted),
            "{apps}"
        );
        let team = ("x-ios-team-id", "ABCDE12345");
        assert_eq!(
            w.reason("/v1/x", &[("x-api-key", "key-pinned"), bundle, team]),
            None
        );
        let other = ("x-ios-team-id", "FGHIJ67890");
        assert_eq!(
            w.reason("/v1/x", &[("x-api-key", "key-loose"), bundle, other]),
            None
        );
    }
    let mut other_team = pinned.clone();
    other_team["id"] = json!("loose");
    other_team["team_id"] = json!("FGHIJ67890");
    let w = world(json!([pinned, other_team]));
    for key in ["key-pinned", "key-loose"] {
        assert_eq!(
            w.reason("/v1/x", &[("x-api-key", key), bundle]),
            Some(Reason::AppMismatch),
            "{key}"
        );
    }
    // A single app pinned to a team still takes requests that show none.
    let w = World::from(json!({
        "apps": [pinned],
        "api_keys": {"keys": [
            {"id": "k-pinned", "sha256": hash_api_key("key-pinned"), "apps": ["pinned"]}
        ]},
        "routes": [{"name": "r", "match": {"prefix": "/v1/"}, "api_key": "required"}]
    }));
    assert_eq!(
        w.reason("/v1/x", &[("x-api-key", "key-pinned"), bundle]),
        None
    );
}

/// The 429 of a request two local limits refuse says when
/// the request can pass, not when the first of them refills: a client that
/// waits `retry-after` must not be refused again at once (the service path
/// already lets the limit that resets last decide).
#[test]
fn the_retry_after_of_two_spent_local_limits_is_the_later_refill() {
    let w = World::from(json!({
        "routes": [{"name": "otp", "match": {"path": "/otp"}, "rate_limits": [
            {"name": "burst", "entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "second"}},
            {"name": "sustained", "entries": [{"type": "client_ip"}], "local": {"requests": 2, "per": "minute"}}
        ]}]
    }));
    let t0 = NOW * 1000;
    let reason = |at: u64| {
        w.leased_get_from("/otp", "u", "203.0.113.7", at)
            .done_reason()
    };
    assert_eq!(reason(t0), None);
    assert_eq!(reason(t0 + 1_000), None, "both limits hold a token");
    // Both spent now: the burst limit refills in 0.5 s, the sustained one
    // in about 28.5 s.
    let retry_after = match w.leased_get_from("/otp", "u", "203.0.113.7", t0 + 1_500) {
        Step::Done(Decision::Deny(d), _) => {
            assert_eq!(d.reason, Reason::RateLimited);
            let h: HashMap<_, _> = d.headers.into_iter().collect();
            h.get("retry-after").unwrap().parse::<u64>().unwrap()
        }
        s => panic!("{s:?}"),
    };
    // The client waits as told, and tries again.
    assert_eq!(
        reason(t0 + 1_500 + retry_after * 1000),
        None,
        "retry-after {retry_after} s was too early: refused again"
    );
}

// Token rules after the signature: binding, replay, claim headers (review56).

/// An `own` token (see `config_json`) for the Android app with `sub` and
/// `jti` as given, bound to `auth`.
fn own_token_with(sub: &str, jti: &str, auth: &str) -> String {
    hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iat": NOW, "exp": NOW + 60, "app": "shop-android", "jti": jti, "sub": sub,
                "pay": crate::token::binding_digest(&[auth])}),
    )
}

#[test]
fn claim_headers_skip_values_with_control_characters_outside_ascii() {
    // README, `claim_to_headers[]`: "Values over 1024 bytes or with control
    // characters are skipped (the header is then absent)". The C1 controls
    // (U+0080..U+009F: NEL U+0085, CSI U+009B) are control characters
    // (Unicode category Cc, Rust's `char::is_control`), which the
    // configuration's own checks refuse (`from[].prefix`, `issuer`); the
    // claim check only looks at ASCII bytes, so they go upstream.
    let w = World::new();
    let auth = "Bearer u1";
    for (i, sub) in ["user\u{85}admin", "user\u{9b}31m", "user\u{1}x"]
        .iter()
        .enumerate()
    {
        let t = own_token_with(sub, &format!("c1-{i}"), auth);
        let (d, _) = w.run(
            "/attested/x",
            "198.51.100.1",
            &[("x-app-token", &t), ("authorization", auth), ANDROID[0]],
        );
        let set = set_headers(&d);
        assert!(
            !set.iter().any(|(h, _)| h == "x-user"),
            "sub {sub:?} went upstream as x-user: {set:?}"
        );
    }
}

/// With asks halved for every ask in
/// flight (74e57b0), a worker still admits exactly the limit of 10, for
/// every lease size, burst size and answer order.
#[test]
fn halved_asks_still_admit_exactly_the_limit() {
    for size in 2..=10u32 {
        for burst in 1..=8u64 {
            for order in 0..3 {
                let w = lease_world_of(size);
                let service = CountingService(std::cell::Cell::new(0));
                let t = NOW * 1000;
                let mut admitted = 0;
                for round in 0..12u64 {
                    let at = t + round * 100;
                    let mut calls = Vec::new();
                    for i in 0..burst {
                        match w.leased_get("/leased", "u1", at + i) {
                            Step::NeedRateLimit(p, call) => {
                                let sent = rls_hits(&call);
                                let answer = service.count(&sent);
                                calls.push((p, answer));
                            }
                            Step::Done(Decision::Allow(_), _) => admitted += 1,
                            s => assert_eq!(s.done_reason(), Some(Reason::RateLimited)),
                        }
                    }
                    match order {
                        1 => calls.reverse(),
                        2 => {
                            let n = calls.len();
                            calls.rotate_left(n / 2);
                        }
                        _ => {}
                    }
                    for (p, answer) in calls {
                        if matches!(
                            w.answer(p, &answer, at + 50),
                            Step::Done(Decision::Allow(_), _)
                        ) {
                            admitted += 1;
                        }
                    }
                }
                assert_eq!(admitted, 10, "size {size}, burst {burst}, order {order}");
            }
        }
    }
}

/// The shadow-mode replay check (f5b702c)
/// with a misbehaving service: no status for the `jti` descriptor (fewer
/// statuses than descriptors) is the service failing, never a pass; and
/// with `replay.scope: local` a service status is not read as a replay.
#[test]
fn shadow_mode_replay_check_with_missing_statuses_and_local_scope() {
    use crate::ratelimit::rls::Code;
    let world = |scope: &str| {
        World::from(json!({
            "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
            "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                        "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                        "replay": {"claim": "jti", "scope": scope}}],
            "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"],
                        "rate_limits": [{"name": "per-user",
                                         "entries": [{"type": "header", "name": "x-user"}]}]}]
        }))
    };
    let token = |jti: &str| {
        hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "typ": "JWT"}),
            &json!({"iat": NOW, "exp": NOW + 60, "jti": jti}),
        )
    };
    // Service scope, the answer has one status for two descriptors.
    let w = world("service");
    let t = token("short");
    let h = headers(&[
        (":method", "GET"),
        (":path", "/x"),
        ("x-token", &t),
        ("x-user", "u1"),
    ]);
    let Step::NeedRateLimit(p, call) = evaluate(&w.ctx(), &Request::new(&h, None), NOW) else {
        panic!("a call")
    };
    assert_eq!(rls_hits_any(&call), 2);
    let resp = ok_response(1, 5, Some(1_000));
    let r = evaluate_rls(&w.ctx(), p, Ok(&resp), NOW).done_reason();
    assert_eq!(
        r,
        Some(Reason::RatelimitUnavailable),
        "no status for the jti"
    );
    // Local scope: the service's statuses are the route's only; a status
    // OVER_LIMIT under an overall OK (shadow mode) refuses nothing.
    let w = world("local");
    let t = token("local-1");
    let h = headers(&[
        (":method", "GET"),
        (":path", "/x"),
        ("x-token", &t),
        ("x-user", "u1"),
    ]);
    let Step::NeedRateLimit(p, call) = evaluate(&w.ctx(), &Request::new(&h, None), NOW) else {
        panic!("a call")
    };
    assert_eq!(rls_hits_any(&call), 1);
    let mut resp = ok_response(1, 0, Some(1_000));
    resp.statuses[0].code = Code::OverLimit as i32;
    let r = evaluate_rls(&w.ctx(), p, Ok(&resp), NOW).done_reason();
    assert_eq!(
        r, None,
        "global shadow mode: the route's limit refuses nothing"
    );
}

/// The number of descriptors of a call, any domain.
fn rls_hits_any(call: &RlsCall) -> usize {
    use prost::Message;
    crate::ratelimit::rls::RateLimitRequest::decode(call.message.as_slice())
        .unwrap()
        .descriptors
        .len()
}

#[test]
fn binding_edges_hold() {
    // Probes that hold (kept as regression tests): the bound header absent,
    // empty, sent twice with different values, or under another spelling
    // with another value is `token_binding`; an empty value a token was
    // bound to passes only as itself.
    let w = World::new();
    let run = |jti: &str, bound: &str, hs: &[(&str, &str)]| {
        let t = own_token_with("user-7", jti, bound);
        let mut all = vec![("x-app-token", t.as_str()), ANDROID[0]];
        all.extend_from_slice(hs);
        w.reason("/attested/x", &all)
    };
    let binding = Some(Reason::TokenBinding);
    assert_eq!(run("b1", "Bearer u1", &[]), binding, "absent");
    assert_eq!(run("b2", "Bearer u1", &[("authorization", "")]), binding);
    assert_eq!(
        run(
            "b3",
            "Bearer u1",
            &[
                ("authorization", "Bearer u1"),
                ("authorization", "Bearer u2")
            ]
        ),
        binding,
        "two values"
    );
    assert_eq!(
        run(
            "b4",
            "Bearer u1",
            &[
                ("authorization", "Bearer u1"),
                ("Authorization", "Bearer u2")
            ]
        ),
        binding,
        "two values, another case"
    );
    assert_eq!(
        run(
            "b5",
            "Bearer u1",
            &[
                ("authorization", "Bearer u1"),
                ("authorization_", "Bearer u2")
            ]
        ),
        None,
        "another header altogether"
    );
    assert_eq!(
        run("b6", "Bearer u1", &[("authorization", "Bearer u1")]),
        None
    );
    // Bound to an empty value: the header must be there, empty.
    assert_eq!(run("b7", "", &[]), binding);
    assert_eq!(run("b8", "", &[("authorization", "")]), None);
}

#[test]
fn replay_of_jti_variants_holds() {
    // A replay is the same signed token sent again: every respelling of
    // the token (the cache is keyed on its text) keeps its `jti`. Distinct
    // `jti`s that differ in case, whitespace or Unicode form are distinct
    // values the issuer signed, each accepted once; a long one too.
    let w = World::new();
    let auth = "Bearer u1";
    let long = "j".repeat(1500);
    for jti in ["v", "V", "v ", " v", "v\u{301}", "\u{1e7d}", long.as_str()] {
        let t = own_token_with("user-7", jti, auth);
        let hs = [
            ("x-app-token", t.as_str()),
            ("authorization", auth),
            ANDROID[0],
        ];
        assert_eq!(w.reason("/attested/x", &hs), None, "{jti:?} first");
        assert_eq!(
            w.reason("/attested/x", &hs),
            Some(Reason::TokenReplayed),
            "{jti:?} again"
        );
        // The same token with padding around it in its header.
        let padded = format!("  {t}\t");
        let hs = [
            ("x-app-token", padded.as_str()),
            ("authorization", auth),
            ANDROID[0],
        ];
        assert_eq!(
            w.reason("/attested/x", &hs),
            Some(Reason::TokenReplayed),
            "{jti:?} padded"
        );
    }
}

#[test]
fn a_replay_the_service_reports_over_limit_in_global_shadow_mode_is_refused() {
    // `replay.scope: service`. A rate-limit service in global shadow mode
    // (envoyproxy/ratelimit's `SHADOW_MODE=true`, appguard-ratelimit's
    // `--shadow-mode`) counts every descriptor and keeps each status's
    // `OVER_LIMIT`, but reports the call's overall code as OK (see
    // envoyproxy/ratelimit `TestServiceGlobalShadowMode`, and
    // ratelimit/src/service.rs: only `overall` is rewritten). The answer
    // to a replayed `jti` then says so, in its own status: the `jti`
    // descriptor is over its limit of 1. appguard reads only the overall
    // code and accepts the copy (README: "which appguard cannot tell from
    // a first use" — it can, for this mode).
    use crate::ratelimit::rls::{Code, RateLimit, Unit};
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "service"}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"]}]
    }));
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iat": NOW, "exp": NOW + 60, "jti": "shadowed"}),
    );
    let h = headers(&[(":method", "GET"), (":path", "/x"), ("x-token", &token)]);
    let send = |code: Code| {
        let Step::NeedRateLimit(p, _) = evaluate(&w.ctx(), &Request::new(&h, None), NOW) else {
            panic!("a call")
        };
        let mut resp = ok_response(1, 0, Some(1_000));
        resp.statuses[0].code = code as i32;
        resp.statuses[0].current_limit = Some(RateLimit {
            name: String::new(),
            requests_per_unit: 1,
            unit: Unit::Hour as i32,
        });
        // Global shadow mode: the overall code stays OK.
        resp.overall_code = Code::Ok as i32;
        evaluate_rls(&w.ctx(), p, Ok(&resp), NOW).done_reason()
    };
    assert_eq!(send(Code::Ok), None, "the first use");
    assert_eq!(
        send(Code::OverLimit),
        Some(Reason::TokenReplayed),
        "the service says this jti was used: the copy must not pass"
    );
}

/// A rule leased 20 at a time against a service limit of 10 a minute
/// (`check-config --ratelimit-config` warns of it): every window's first
/// ask was for 20, which the service refuses (20 > 10, as appguard-ratelimit
/// and envoyproxy/ratelimit count), the refusal was cached until the window
/// reset, and the next window started the same way: not one request was
/// ever admitted. The refusal names the limit, and later asks stay within
/// it.
#[test]
fn a_lease_larger_than_the_services_limit_is_asked_within_it_after_a_refusal() {
    let w = lease_world_of(20);
    let t = NOW * 1000;
    let mut admitted = 0;
    let mut asks = Vec::new();
    for window in 0..3u64 {
        // The service's window resets: a fresh count of 0.
        let service = CountingService(std::cell::Cell::new(0));
        let at = t + window * 60_000;
        for i in 0..5u64 {
            match w.leased_get("/leased", "u1", at + i * 10) {
                Step::NeedRateLimit(p, call) => {
                    let sent = rls_hits(&call);
                    asks.push(sent[0].1);
                    let answer = service.count(&sent);
                    if matches!(
                        w.answer(p, &answer, at + i * 10 + 1),
                        Step::Done(Decision::Allow(_), _)
                    ) {
                        admitted += 1;
                    }
                }
                Step::Done(Decision::Allow(_), _) => admitted += 1,
                s => assert_eq!(s.done_reason(), Some(Reason::RateLimited)),
            }
        }
    }
    // The first window's ask of 20 is refused (and counted); once the
    // refusal named the limit, the asks stay within it and the next two
    // windows admit their 5 requests each.
    assert_eq!(asks.first(), Some(&Some(20)), "{asks:?}");
    assert!(
        asks.iter().skip(1).all(|a| a.unwrap_or(1) <= 10),
        "{asks:?}"
    );
    assert_eq!(
        admitted, 10,
        "15 requests over 3 windows of a limit of 10; asks: {asks:?}"
    );
}

#[test]
fn international_prefixes_other_than_00_do_not_take_a_number_past_denied_prefixes() {
    // libphonenumber's `internationalPrefix`: Japan dials abroad with
    // `010`, Mexico with `00` or `09`, Singapore with `0[0-3]\d` (`012`,
    // `013`, `018`, `019`, `020`…). An upstream parsing numbers for that
    // country reads `010 1 900 555 1234` (JP) as `+1 900 555 1234`, and
    // `09 882 1234 5678` (MX) and `012 882 1234 5678` (SG) as `+882 …`.
    // appguard reads them as national numbers (`+81 10 1 900 …`,
    // `+52 9 882 …`, `+65 12 882 …`) of a valid length in zones with no
    // fixed plan: past the denied prefixes (and under another per-number
    // key than the number the upstream sends to).
    let mut passed = Vec::new();
    for (cc, spellings) in [
        ("81", ["010 1 900 555 1234", "010 882 1234 5678"]),
        // And JP's carrier prefix for national calls (libphonenumber's
        // `nationalPrefixForParsing` `…|(?:003768)0?|0`): `0037680 990 …`
        // is Japan's premium `+81 990 …` there, `+376 80990 …` (Andorra)
        // to `00` alone.
        ("81", ["0037680 990 123 456", "003768 0990 123 456"]),
        ("52", ["09 1 900 555 1234", "09 882 1234 5678"]),
        ("65", ["012 1 900 555 1234", "012 882 1234 5678"]),
    ] {
        let w = phone_world(&["+882", "+1 900", "+81 990"], Some(cc));
        let to = |n: &str| sms_to(&w, n);
        assert_eq!(to("+1 900 555 1234").0, Some(Reason::PhoneDenied));
        assert_eq!(to("+882 1234 5678").0, Some(Reason::PhoneDenied));
        assert_eq!(to("+81 990 123 456").0, Some(Reason::PhoneDenied));
        passed.extend(let_through(&w, &format!("default {cc}: "), spellings));
    }
    assert!(
        passed.is_empty(),
        "denied numbers to an upstream parsing for the default country, let through: {passed:#?}"
    );
}

/// The other countries whose `internationalPrefix` (libphonenumber) is not
/// `00`, or `00` and digits beyond `CARRIER_PREFIX_COUNTRIES`' one to
/// three: each spelling below is a `+882 …` (or `+1 900 …`) number to an
/// upstream parsing numbers for the default country, and a national
/// number of a valid length to appguard reading `00` alone.
#[test]
fn every_known_international_prefix_is_read_for_denied_prefixes() {
    let cases: &[(&str, &[&str])] = &[
        (
            "972",
            &["012 882 1234 567", "019 1 900 555 1234", "0105 882 1234 56"],
        ), // Israel
        (
            "358",
            &["990 882 1234 56", "999 882 1234 56", "99511 882 1234"],
        ), // Finland
        ("56", &["1100 882 1234 56", "1880 882 1234 56"]), // Chile
        ("51", &["191100 882 1234", "199000 882 1234"]),   // Peru
        ("53", &["119 882 1234 567"]),                     // Cuba
        ("375", &["810 882 1234 56"]),                     // Belarus
        ("992", &["810 882 1234 56"]),                     // Tajikistan
        ("993", &["810 882 1234 56"]),                     // Turkmenistan
        ("354", &["1001 882 1234 5", "1100 882 1234 5"]),  // Iceland
        ("386", &["1022 882 1234 5", "1099 882 1234 5"]),  // Slovenia
        ("64", &["0161 882 1234 567"]),                    // New Zealand
        ("230", &["020 882 1234 56", "033 882 1234 56"]),  // Mauritius
        ("235", &["16 882 1234 567"]),                     // Chad
        ("238", &["0 882 1234 5678"]),                     // Cape Verde
        ("248", &["02 882 1234 567", "010 882 1234 56"]),  // Seychelles
        ("675", &["1401 882 1234 5"]),                     // Papua New Guinea
        ("677", &["01 882 1234 567"]),                     // Solomon Islands
        ("679", &["052 882 1234 56"]),                     // Fiji
        ("680", &["011 882 1234 56", "012 882 1234 56"]),  // Palau
        ("685", &["0 882 1234 5678"]),                     // Samoa
        ("692", &["011 882 1234 56"]),                     // Marshall Islands
        ("850", &["99 882 1234 567"]),                     // North Korea
        ("886", &["019 882 1234 56"]),                     // Taiwan
        ("960", &["019 882 1234 56"]),                     // Maldives
        ("598", &["0130 882 1234 5", "0199 882 1234 5"]),  // Uruguay
        ("591", &["0012 882 234 567"]),                    // Bolivia: `00 1X`
        ("592", &["001 882 2345 678"]),                    // Guyana: `001`
    ];
    let mut passed = Vec::new();
    for (cc, spellings) in cases {
        let w = phone_world(&["+882", "+1 900"], Some(cc));
        let to = |n: &str| sms_to(&w, n);
        assert_eq!(to("+882 1234 5678").0, Some(Reason::PhoneDenied));
        passed.extend(let_through(
            &w,
            &format!("default {cc}: "),
            spellings.iter().copied(),
        ));
    }
    assert!(
        passed.is_empty(),
        "denied numbers to an upstream parsing for the default country, let through: {passed:#?}"
    );
}

/// Turkmenistan (`+993`) writes its trunk prefix `8` before its eight
/// digits (libphonenumber's `nationalPrefix` `8`), as Lithuania does:
/// `+993 8 12 345678` is `+993 12 345678`, for denied prefixes and the
/// per-number key; a national `8 …` under a `993` default too.
#[test]
fn turkmenistan_trunk_prefix_8_is_read_off() {
    for default in [None, Some("993")] {
        let w = phone_world(&["+993 12"], default);
        let to = |n: &str| sms_to(&w, n);
        assert_eq!(to("+993 12 345678").0, Some(Reason::PhoneDenied));
        assert_eq!(
            to("+993 8 12 345678").0,
            Some(Reason::PhoneDenied),
            "{default:?}"
        );
        if default.is_some() {
            assert_eq!(to("8 12 345678").0, Some(Reason::PhoneDenied));
        }
        let mobile = to("+993 66 123456");
        assert_eq!(mobile.0, None);
        assert_eq!(to("+993 8 66 123456"), mobile, "{default:?}");
    }
}

#[test]
fn belarus_trunk_prefix_8_does_not_take_a_number_past_denied_prefixes() {
    // Belarus (`+375`) writes its trunk prefix `8` (libphonenumber's
    // `nationalPrefix` `8`, `nationalPrefixForParsing` `0|80?`), as Russia
    // and Lithuania do, and libphonenumber strips it from international
    // input too: `+375 8 902 …` and `+375 80 902 …` are the premium-rate
    // `+375 902 …`, and `8 029 …` under a `375` default is `+375 29 …`.
    // appguard reads the `8` off only for `+7` and `+370` (`split_trunk`),
    // and defaults `national_prefix` to `0` for `375`.
    let mut passed = Vec::new();
    for default in [None, Some("375")] {
        let w = phone_world(&["+375 902"], default);
        let to = |n: &str| sms_to(&w, n);
        assert_eq!(to("+375 902 123 4567").0, Some(Reason::PhoneDenied));
        let mut spellings = vec!["+375 8 902 123 4567", "+375 80 902 123 4567"];
        if default.is_some() {
            spellings.extend(["8 902 123 4567", "8 0902 123 4567"]);
        }
        passed.extend(let_through(
            &w,
            &format!("default {default:?}: "),
            spellings,
        ));
        // One phone, one per-number key.
        let mut same = vec!["+375 8 029 123 45 67"];
        if default.is_some() {
            same.push("8 029 123 45 67");
        }
        for n in same {
            if to(n).0.is_none() && to(n).1 != to("+375 29 123 45 67").1 {
                passed.push(format!(
                    "default {default:?}: {n:?} counted apart from +375 29 123 45 67"
                ));
            }
        }
    }
    assert!(passed.is_empty(), "{passed:#?}");
}

#[test]
fn json_an_upstream_may_read_otherwise_is_body_invalid() {
    // Probes that hold today: JSON other parsers read leniently, or
    // another way, is refused rather than read one way here.
    let w = sms_world(
        json!({"default_calling_code": "44", "denied_prefixes": ["+882"],
                             "hash_key_base64": STANDARD.encode([5u8; 32])}),
    );
    let reason = |body: &str| sms_outcome(&w, "/sms", body).0;
    for body in [
        "\u{feff}{\"to\":\"+447700900123\",\"msg\":{\"lang\":\"en\"}}",
        r#"{"to":"+447700900123","msg":{"lang":"en"}} // c"#,
        r#"{"to":"+447700900123",/*c*/"msg":{"lang":"en"}}"#,
        r#"{"to":"+447700900123","msg":{"lang":"en"},}"#,
        r#"{"to":"+447700900123","msg":{"lang":"en"}}{"to":"+88212345678"}"#,
        r#"{"to":"\ud800+447700900123","msg":{"lang":"en"}}"#,
        r#"{"to":-0,"msg":{"lang":"en"}}"#,
        r#"{"to":7.7009e9,"msg":{"lang":"en"}}"#,
        r#"{"to":7700900123.0,"msg":{"lang":"en"}}"#,
        r#"{"to":"+44 7700 900123 x12","msg":{"lang":"en"}}"#,
        r#"{"to":"tel:+447700900123","msg":{"lang":"en"}}"#,
        r#"{"to":"+４４7700900123","msg":{"lang":"en"}}"#,
        r#"{"to":"+447700900123","msg":{"lang":"en","LANG":"fr"}}"#,
        r#"{"to":"+447700900123","msg":{"lang":1.0}}"#,
        r#"{'to':'+447700900123','msg':{'lang':'en'}}"#,
    ] {
        assert_eq!(reason(body), Some(Reason::BodyInvalid), "{body}");
    }
    // Escapes decode as every parser decodes them: `\u002b` is `+`, and
    // `"t\u006f"` is `to`.
    let plain = sms_outcome(&w, "/sms", r#"{"to":"+882 1234 5678","msg":{"lang":"en"}}"#).0;
    assert_eq!(plain, Some(Reason::PhoneDenied));
    assert_eq!(
        reason(r#"{"t\u006f":"\u002b882 1234 5678","msg":{"lang":"en"}}"#),
        Some(Reason::PhoneDenied)
    );
}

#[test]
fn body_sizes_at_the_limit_and_empty_bodies() {
    // `/sms` of `limits_world` reads at most 256 bytes.
    let w = limits_world();
    let body_of = |len: usize| {
        let head = r#"{"to":"+447700900123","p":""#;
        let pad = "x".repeat(len - head.len() - 2);
        format!("{head}{pad}\"}}")
    };
    assert_eq!(body_of(256).len(), 256);
    assert!(matches!(
        w.post("/sms", "203.0.113.81", &[], &body_of(256)),
        Step::NeedRateLimit(..)
    ));
    assert_eq!(
        w.post("/sms", "203.0.113.82", &[], &body_of(257))
            .done_reason(),
        Some(Reason::BodyTooLarge)
    );
    // No body at all (a GET, or a POST whose headers end the stream).
    assert_eq!(
        w.post("/sms", "203.0.113.83", &[], "").done_reason(),
        Some(Reason::BodyInvalid)
    );
}

#[test]
fn belarus_trunk_8_before_the_810_premium_range() {
    // libphonenumber (BY: nationalPrefixForParsing `0|80?`, premiumRate
    // `(?:810|902)\d{7}`) reads `+375 8 810 123 4567` and `+375 80 810 123
    // 4567` as the premium `+375 810 123 4567` (`88101234567` is no BY
    // number; `8101234567` is). 79293b5 reads the `8` off only before nine
    // digits or ten of `9…`: the `810` premium range, ten digits of `8…`,
    // keeps its trunk prefix, and goes past a denied `+375 810`.
    let mut passed = Vec::new();
    for default in [None, Some("375")] {
        let w = phone_world(&["+375 810"], default);
        let to = |n: &str| sms_to(&w, n);
        assert_eq!(to("+375 810 123 4567").0, Some(Reason::PhoneDenied));
        let mut spellings = vec!["+375 8 810 123 4567", "+375 80 810 123 4567"];
        if default.is_some() {
            spellings.extend(["8 810 123 4567"]);
        }
        passed.extend(let_through(
            &w,
            &format!("default {default:?}: "),
            spellings,
        ));
    }
    assert!(
        passed.is_empty(),
        "denied +375 810 premium let through: {passed:#?}"
    );
}

#[test]
fn path_characters_are_pchar_but_percent_with_slash_and_brackets() {
    // `is_path_char` is a `match` for speed: the same set as the list of
    // RFC 3986's marks it replaced.
    for b in 0..=255u8 {
        assert_eq!(
            crate::policy::is_path_char(b),
            b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/[]".contains(&b),
            "byte {b}"
        );
    }
}

// ---------------------------------------------------------------------------
// SPEC conformance (review57 `spec`): §4's table row by row, §1's order
// of checks pair by pair, the denial log's app (§4), and a replayed token
// refused as a token problem (§3, step 4).
// ---------------------------------------------------------------------------

/// SPEC §4, row by row: each reason code the table lists has its row's
/// status and the body `{"error": "<reason>"}`, and there is no other.
#[test]
fn spec_every_reason_code_has_the_status_of_its_row() {
    let rows: [(&[&str], u16); 6] = [
        (
            &[
                "token_missing",
                "token_malformed",
                "token_signature",
                "token_expired",
                "token_not_yet_valid",
                "token_lifetime",
                "token_claims",
                "token_binding",
                "token_replayed",
                "signature_invalid",
            ],
            401,
        ),
        (
            &[
                "route_denied",
                "ip_denied",
                "country_denied",
                "api_key_missing",
                "api_key_invalid",
                "api_key_restricted",
                "platform_denied",
                "app_unknown",
                "app_mismatch",
                "origin_denied",
                "phone_denied",
            ],
            403,
        ),
        (&["body_invalid"], 400),
        (&["body_too_large"], 413),
        (&["rate_limited"], 429),
        (&["ratelimit_unavailable", "jwks_unavailable"], 503),
    ];
    let mut listed = 0;
    for (codes, status) in rows {
        for code in codes {
            let r = Reason::ALL
                .iter()
                .find(|r| r.code() == *code)
                .unwrap_or_else(|| panic!("no reason {code}"));
            assert_eq!(r.status(), status, "{code}");
            assert_eq!(r.body(), format!("{{\"error\":\"{code}\"}}"), "{code}");
            listed += 1;
        }
    }
    assert_eq!(listed, Reason::ALL.len(), "a reason the spec does not list");
}

/// SPEC §1: "the first failure decides", in the order route, network, API
/// key, token, platform and app, body, rate limits. Each case fails two
/// adjacent steps at once and must get the earlier step's reason.
#[test]
fn spec_the_first_failing_check_in_spec_order_decides() {
    let w = World::new();
    let denied_ip = "203.0.113.5";
    let ok_ip = "198.51.100.1";
    let ios = ("x-ios-bundle-identifier", "com.example.shop");
    let web = ("origin", "https://app.example.com");
    let reason = |path: &str, ip: &str, hs: &[(&str, &str)]| w.run(path, ip, hs).0.reason();
    // 1 route before 2 network: unrouted (`default_action: deny`) from a
    // denied address.
    assert_eq!(
        reason("/nowhere", denied_ip, &[]),
        Some(Reason::RouteDenied)
    );
    // 2 network before 3 API key: no key where one is required.
    assert_eq!(reason("/mobile/a", denied_ip, &[]), Some(Reason::IpDenied));
    assert_eq!(
        reason("/mobile/a", ok_ip, &[("x-country", "KP")]),
        Some(Reason::CountryDenied)
    );
    // 3 API key (validity, IP and route restrictions) before 4 token: no
    // token where one is required.
    for (key, want) in [
        ("nope", Reason::ApiKeyInvalid),
        ("key-revoked", Reason::ApiKeyInvalid),
        ("key-sms", Reason::ApiKeyRestricted),
        ("key-office", Reason::ApiKeyRestricted),
    ] {
        assert_eq!(
            reason("/appcheck/x", ok_ip, &[("x-api-key", key)]),
            Some(want),
            "{key}"
        );
    }
    // 4 token before 5 platform and app: a bad token sent with another
    // platform's headers.
    let auth = "Bearer order-1";
    let forged = hs256_raw(
        &[9u8; 64],
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iat": NOW, "exp": NOW + 60, "app": "shop-android", "jti": "f-1"}),
    );
    let expired = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iat": NOW - 100, "exp": NOW - 50, "app": "shop-android", "jti": "e-1"}),
    );
    let unbound = own_token("shop-android", "u-1", "Bearer someone-else");
    for (t, want) in [
        (forged.as_str(), Reason::TokenSignature),
        (expired.as_str(), Reason::TokenExpired),
        (unbound.as_str(), Reason::TokenBinding),
    ] {
        for other in [ios, web] {
            assert_eq!(
                reason(
                    "/attested/x",
                    ok_ip,
                    &[("x-app-token", t), ("authorization", auth), other]
                ),
                Some(want),
                "{want:?} with {other:?}"
            );
        }
    }
    // 5 platform and app before 6 body, and 6 body before 7 rate limits.
    let w = World::from(json!({
        "apps": [{"id": "droid", "platform": "android", "package": "com.example.droid"},
                 {"id": "site", "platform": "web", "origins": ["https://app.example.com"]}],
        "phone": {"denied_prefixes": ["+882"], "hash_key_base64": STANDARD.encode([5u8; 32])},
        "routes": [{"name": "sms", "match": {"path": "/sms"}, "platforms": ["android"],
                    "rate_limits": [
                        {"entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "minute"}},
                        {"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                         "local": {"requests": 100, "per": "minute"}}]}]
    }));
    let droid = ("x-android-package", "com.example.droid");
    let sms = |hs: &[(&str, &str)], body: &str| match w.post("/sms", ok_ip, hs, body) {
        Step::Done(d, _) => d.reason(),
        s => panic!("{s:?}"),
    };
    assert_eq!(
        sms(&[web], r#"{"to":"+88212345678"}"#),
        Some(Reason::PlatformDenied)
    );
    assert_eq!(sms(&[web], "not json"), Some(Reason::PlatformDenied));
    assert_eq!(sms(&[droid], r#"{"to":"+447700900123"}"#), None);
    // The client's one request a minute is spent: body refusals first.
    assert_eq!(
        sms(&[droid], r#"{"to":"+88212345678"}"#),
        Some(Reason::PhoneDenied)
    );
    assert_eq!(sms(&[droid], "not json"), Some(Reason::BodyInvalid));
    assert_eq!(
        sms(&[droid], r#"{"to":"+447700900124"}"#),
        Some(Reason::RateLimited)
    );
}

/// SPEC §4: "denials are logged with route, reason, client IP and app".
/// A refusal decided after the request established its app (an API key
/// restricted to another app, a platform the route does not take) names
/// that app in the facts the log line reads (README: `-` is an app "the
/// request did not show"), as it names the refused key.
#[test]
fn spec_a_denial_after_the_app_is_established_names_the_app() {
    let w = World::new();
    let app = |f: &Facts| f.app.map(|a| w.config.apps[a].id.clone());
    // The Android-only key, used by the iOS app: which app used it is what
    // the operator needs to see.
    let (d, f) = w.run(
        "/mobile/a",
        "198.51.100.1",
        &[
            ("x-ios-bundle-identifier", "com.example.shop"),
            ("x-api-key", "key-android"),
        ],
    );
    assert_eq!(d.reason(), Some(Reason::ApiKeyRestricted));
    assert_eq!(app(&f).as_deref(), Some("shop-ios"), "api_key_restricted");
    // The web app on a mobile-only route.
    let (d, f) = w.run(
        "/mobile/a",
        "198.51.100.1",
        &[
            ("origin", "https://app.example.com"),
            ("x-api-key", "key-any"),
        ],
    );
    assert_eq!(d.reason(), Some(Reason::PlatformDenied));
    assert_eq!(app(&f).as_deref(), Some("shop-web"), "platform_denied");
}

/// SPEC §3 puts replay among the token's rules (step 4 of §1), and "the
/// first failure decides": a used `jti` (`replay.scope: local`) is
/// `token_replayed` whatever the platform headers sent with the copy
/// (step 5). Today the copy is judged on its headers first
/// (`app_mismatch`).
#[test]
fn spec_a_replayed_token_is_refused_before_the_platform_and_app_checks() {
    let w = World::new();
    let auth = "Bearer replay-1";
    let t = own_token("shop-android", "replay-order-1", auth);
    let genuine = [("x-app-token", t.as_str()), ("authorization", auth)];
    assert_eq!(
        w.reason("/attested/x", &genuine),
        None,
        "the genuine request"
    );
    assert_eq!(
        w.reason("/attested/x", &genuine),
        Some(Reason::TokenReplayed)
    );
    for other in [
        ("x-ios-bundle-identifier", "com.example.shop"),
        ("origin", "https://app.example.com"),
        ("x-android-package", "com.evil.clone"),
    ] {
        assert_eq!(
            w.reason(
                "/attested/x",
                &[("x-app-token", &t), ("authorization", auth), other]
            ),
            Some(Reason::TokenReplayed),
            "a copy with {other:?}"
        );
    }
}

/// The same for the body checks (step 6): a copy of a used token with a
/// body aimed at a denied prefix, or one that is not JSON, is a replay.
/// Today it is buffered and parsed first (`phone_denied`, `body_invalid`).
#[test]
fn spec_a_replayed_token_is_refused_before_the_body_checks() {
    let w = World::from(json!({
        "phone": {"denied_prefixes": ["+882"], "hash_key_base64": STANDARD.encode([5u8; 32])},
        "tokens": [{"name": "t", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "local"}}],
        "routes": [{"name": "sms", "match": {"path": "/sms"}, "tokens": ["t"],
                    "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                                     "local": {"requests": 100, "per": "minute"}}]}]
    }));
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "jti": "sms-once"}),
    );
    let sms = |body: &str| match w.post("/sms", "192.0.2.1", &[("approov-token", &token)], body) {
        Step::Done(d, _) => d.reason(),
        s => panic!("{s:?}"),
    };
    assert_eq!(
        sms(r#"{"to":"+447700900123"}"#),
        None,
        "the genuine request"
    );
    assert_eq!(
        sms(r#"{"to":"+447700900123"}"#),
        Some(Reason::TokenReplayed)
    );
    assert_eq!(
        sms(r#"{"to":"+88212345678"}"#),
        Some(Reason::TokenReplayed),
        "a copy to a denied prefix"
    );
    assert_eq!(
        sms("not json"),
        Some(Reason::TokenReplayed),
        "a copy, not JSON"
    );
}

/// SPEC §3: replay comes before request signing among the token's rules,
/// and "cheap refusals come before any signature work". A used `jti` is
/// a cheap refusal (a lookup in the instance's table): a copy of the
/// token is `token_replayed` without its RFC 9421 signature being
/// verified. Today the signature is verified first, so a copy with a
/// made-up signature is `signature_invalid`, and an exact copy of the
/// whole signed request costs a P-256 verification every time it is sent
/// (never charged to the failure budget: it verifies) before it is
/// refused.
#[test]
fn spec_a_replayed_token_is_refused_before_its_request_signature_is_verified() {
    let (w, key, token) = replay_and_signing_world("signed-once");
    let signed = signed_get(&key, &token, "/v1/x", NOW);
    let unsigned = unsigned_get(
        &token,
        &[
            (
                "signature-input",
                "install=(\"@method\");created=1900000000",
            ),
            ("signature", "install=:AAAA:"),
        ],
    );
    let run = |h: &crate::headers::Headers| {
        let (d, f) = match evaluate(&w.ctx(), &Request::new(h, None), NOW) {
            Step::Done(d, f) => (d, f),
            s => panic!("{s:?}"),
        };
        (d.reason(), f.signing_error.is_some())
    };
    assert_eq!(run(&signed), (None, false), "the genuine request");
    assert_eq!(
        run(&unsigned),
        (Some(Reason::TokenReplayed), false),
        "a copy of the used token with a made-up signature: no signature work"
    );
    assert_eq!(run(&signed), (Some(Reason::TokenReplayed), false));
}

/// SPEC §5: the shared rate-limit service slow or down (its call failed
/// or timed out after `timeout_ms`): the route's `failure_mode` decides,
/// `deny` (the default, left out everywhere) → 503 `ratelimit_unavailable`,
/// `allow` → the request goes on, counted as degraded. The call carries
/// the configured `timeout_ms` (default 200).
#[test]
fn spec_the_rate_limit_service_down_follows_the_routes_failure_mode() {
    for (svc, route, want) in [
        (None, None, Some(Reason::RatelimitUnavailable)),
        (Some("deny"), None, Some(Reason::RatelimitUnavailable)),
        (Some("allow"), None, None),
        (
            Some("allow"),
            Some("deny"),
            Some(Reason::RatelimitUnavailable),
        ),
        (None, Some("allow"), None),
    ] {
        let mut rls = json!({"cluster": "rls", "domain": "d"});
        if let Some(m) = svc {
            rls["failure_mode"] = json!(m);
        }
        let mut r = json!({"name": "r", "match": {"prefix": "/"},
                           "rate_limits": [{"entries": [{"type": "client_ip"}]}]});
        if let Some(m) = route {
            r["failure_mode"] = json!(m);
        }
        let w = World::from(json!({"rate_limit_service": rls, "routes": [r]}));
        let Step::NeedRateLimit(p, call) = w.post("/x", "192.0.2.1", &[], "") else {
            panic!("the limit goes to the service")
        };
        assert_eq!(call.timeout_ms, 200);
        match evaluate_rls(&w.ctx(), p, Err(()), NOW) {
            Step::Done(d, f) => {
                assert_eq!(d.reason(), want, "service {svc:?}, route {route:?}");
                if let Some(r) = want {
                    assert_eq!(r.status(), 503);
                    assert_eq!(f.degraded, None);
                } else {
                    assert_eq!(f.degraded, Some(Reason::RatelimitUnavailable));
                }
            }
            s => panic!("{s:?}"),
        }
    }
}

/// With `message_signing.single_use`, a request whose signature base was
/// accepted before is a copy of an accepted signed request: SPEC §3's
/// "cheap refusals come before any signature work" asks for it to be
/// refused `token_replayed` by the table lookup, before the P-256
/// verification. Today the copy is verified first: an exact copy costs
/// one verification per request sent (never charged to the failure
/// budget, since it verifies) before `token_replayed`, and one with its
/// signature bytes altered is `signature_invalid` (charged to the
/// sender's budget after the verification ran).
#[test]
fn spec_a_copy_of_an_accepted_signed_request_is_refused_before_verification() {
    let (w, key, token) = single_use_signing_world(NOW + 300);
    let first = signed_get(&key, &token, "/v1/x", NOW);
    let zeros = format!("install=:{}:", STANDARD.encode([0u8; 64]));
    let altered: Vec<(&str, &str)> = first
        .iter()
        .map(|(n, v)| {
            if n == "signature" {
                (n, zeros.as_str())
            } else {
                (n, v)
            }
        })
        .collect();
    let altered = headers(&altered);
    let run =
        |h: &crate::headers::Headers| match evaluate(&w.ctx(), &Request::new(h, None), NOW + 1) {
            Step::Done(d, f) => (d.reason(), f.signing_error.is_some()),
            s => panic!("{s:?}"),
        };
    assert_eq!(run(&first), (None, false), "the genuine request");
    assert_eq!(
        run(&altered),
        (Some(Reason::TokenReplayed), false),
        "a copy of its base, signature altered: refused without verification"
    );
    assert_eq!(run(&first), (Some(Reason::TokenReplayed), false));
}

// ---------------------------------------------------------------------
// review57-state: refusals after the clock is set back.

/// Evaluates `path` from `ip` with `hs` at second `t` (the clock as the
/// request reads it), on a worker whose state is `w`'s.
fn at_time(w: &World, t: u64, path: &str, ip: &str, hs: &[(&str, &str)]) -> (Decision, Facts) {
    let mut all = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "api.example.com"),
    ];
    all.extend_from_slice(hs);
    let h = headers(&all);
    let mut ctx = w.ctx();
    ctx.now_ms = t * 1000;
    match evaluate(&ctx, &Request::new(&h, ip.parse().ok()), t) {
        Step::Done(d, f) => (d, f),
        s => panic!("{s:?}"),
    }
}

// review57-state F1: a route's local limits before its last are only read
// while one refuses (`local_refill_at`), so a drained burst limit is never
// written again while it refuses; set back an hour, it counted from each
// request's own now and refused (with `retry-after: 60`) until the clock
// caught up: an hour.
#[test]
fn a_burst_limit_drained_before_a_clock_step_back_refills_in_a_minute_of_the_new_clock() {
    let w = World::from(json!({
        "routes": [{"name": "otp", "match": {"path": "/otp"}, "rate_limits": [
            {"name": "burst", "entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "minute"}},
            {"name": "sustained", "entries": [{"type": "client_ip"}], "local": {"requests": 100, "per": "hour"}}
        ]}]
    }));
    let reason = |t: u64| at_time(&w, t, "/otp", "203.0.113.7", &[]).0.reason();
    assert_eq!(reason(NOW), None);
    assert_eq!(reason(NOW + 1), Some(Reason::RateLimited));
    // NTP sets the clock back an hour. The first request after may be
    // refused (the bucket counts from then), but not an hour of them.
    let back = NOW - 3600;
    let _ = reason(back);
    for later in [120, 600, 1800] {
        assert_eq!(
            reason(back + later),
            None,
            "{later} s after the step, a 1-a-minute limit still refuses"
        );
    }
}

// review57-state F1, the failure budget: a spent client's tokens are
// refused unverified, so nothing charges (writes) its entry; set back an
// hour, the shared table said "spent" for the whole hour, to every worker,
// valid tokens included. (A worker that never saw the client spent: its
// own memory is F2, below.)
#[test]
fn a_budget_spent_before_a_clock_step_back_refills_on_the_new_clock() {
    let w = budgeted_world();
    for i in 0..3 {
        let (d, f) = at_time(&w, NOW, "/x", "198.51.100.9", &[("x-t", &forged(i))]);
        assert_eq!(
            (d.reason(), f.budget_refused),
            (Some(Reason::TokenSignature), false)
        );
    }
    let back = NOW - 3600;
    let t = back + 120; // two windows of 60 s after the step
    let good = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": t + 60}));
    // Another worker (nothing remembered of the client).
    *w.neg.borrow_mut() = NegativeCache::default();
    let (d, f) = at_time(&w, t, "/x", "198.51.100.9", &[("x-t", &good)]);
    assert_eq!(
        (d.reason(), f.budget_refused),
        (None, false),
        "a valid token refused unverified two budget windows after the step"
    );
}

// review57-state F2: the worker's memory of a spent budget keeps its
// refill time as the clock read it: set back an hour, the client is
// refused unverified by that worker for the hour, while the shared table
// (with F1 fixed) lets it be verified.
#[test]
fn a_worker_forgets_a_spent_budget_when_the_clock_is_set_back() {
    let ip: IpAddr = "198.51.100.9".parse().unwrap();
    let mut neg = NegativeCache::default();
    let t = NOW * 1000;
    neg.note_spent(0, ip, t + 20_000, t);
    assert!(neg.budget_spent(0, ip, t + 19_999));
    let back = t - 3_600_000;
    assert!(neg.may_hold_spent(back));
    assert!(
        !neg.budget_spent(0, ip, back + 60_000),
        "still spent a minute after an hour's step back"
    );
    // and through the policy: a valid token from the client, on the
    // worker that remembered it spent
    let w = budgeted_world();
    for i in 0..3 {
        at_time(&w, NOW, "/x", "198.51.100.9", &[("x-t", &forged(i))]);
    }
    // The next one finds the budget spent, and the worker remembers it.
    let (_, f) = at_time(&w, NOW, "/x", "198.51.100.9", &[("x-t", &forged(3))]);
    assert!(f.budget_refused);
    let t = NOW - 3600 + 120;
    let good = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": t + 60}));
    // The shared table is dropped (F1 aside), so that only the worker's
    // memory can refuse.
    w.store.clear();
    let (d, f) = at_time(&w, t, "/x", "198.51.100.9", &[("x-t", &good)]);
    assert_eq!(
        (d.reason(), f.budget_refused),
        (None, false),
        "refused from the worker's memory of a budget spent before the step"
    );
}

// ---------------------------------------------------------------------------
// review57 `fixes`: re-review of the review57 fixes.
// ---------------------------------------------------------------------------

/// Monitor mode never blocks, and before the early `jti` look-up a copy
/// of a used token went upstream as the first use had (its
/// `forward: true` header given back, its app's headers set), marked
/// `would_deny: token_replayed`. Refused in `check` right after the token
/// is verified, the copy now returns before `keep_token_headers` and the
/// identity step: in monitor mode a client's retry with the same token
/// reaches the upstream without the token it authenticates by, and
/// without `x-appguard-app` — monitor mode refuses it in effect.
#[test]
fn fixes_monitor_mode_forwards_a_replayed_token_as_it_forwards_the_first_use() {
    let w = World::from(json!({
        "mode": "monitor",
        "tokens": [{"name": "f", "from": [{"header": "x-fwd-token"}], "forward": true,
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "local"}}],
        "routes": [{"name": "p", "match": {"prefix": "/p/"}, "tokens": ["f"]}]
    }));
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "jti": "retry-1"}),
    );
    let grant = |d: Decision| match d {
        Decision::Allow(g) => g,
        d => panic!("monitor mode refused: {d:?}"),
    };
    let first = grant(w.run("/p/x", "198.51.100.1", &[("x-fwd-token", &t)]).0);
    assert_eq!(first.would_deny, None);
    assert!(first.remove_headers.is_empty(), "{first:?}");
    let copy = grant(w.run("/p/x", "198.51.100.1", &[("x-fwd-token", &t)]).0);
    assert_eq!(copy.would_deny, Some(Reason::TokenReplayed));
    assert!(
        copy.remove_headers.is_empty(),
        "monitor mode took the forwarded token off a replayed request: {:?}",
        copy.remove_headers
    );
}

/// Coverage (passes): the clock-step fix must not turn a spent budget
/// into an open one: after the step, one forged token is verified (and
/// charged, which counts the entry from the new clock), the next is
/// refused unverified again, on a fresh worker too.
#[test]
fn fixes_a_budget_spent_before_a_clock_step_back_still_refuses_after_one_verification() {
    let w = budgeted_world();
    for i in 0..3 {
        at_time(&w, NOW, "/x", "198.51.100.9", &[("x-t", &forged(i))]);
    }
    let back = NOW - 3600;
    for worker_fresh in [false, true] {
        if worker_fresh {
            *w.neg.borrow_mut() = NegativeCache::default();
        }
        let mut verified = 0;
        for i in 10..20 {
            let t = hs256_raw(
                &[9u8; 64],
                &json!({"alg": "HS256"}),
                &json!({"exp": back + 60, "n": i}),
            );
            let (d, f) = at_time(&w, back + 5, "/x", "198.51.100.9", &[("x-t", &t)]);
            assert_eq!(d.reason(), Some(Reason::TokenSignature));
            verified += u32::from(!f.budget_refused);
        }
        assert!(
            verified <= 1,
            "{verified} forged tokens verified after the step (fresh worker: {worker_fresh})"
        );
    }
}

/// README (bc1d212): "a copy of a signed request accepted before
/// (`message_signing.single_use`), is refused with the token's rules,
/// before the identity, body and signature checks". Not for a signature
/// that covers `content-digest` (the default for a request with a body):
/// its look-up waits for the body phase, so an exact copy of an accepted
/// signed POST is held for its body (up to `max_body_bytes` buffered) and
/// passes the platform and app checks before `token_replayed`. The
/// signature base holds the `content-digest` header, not the body: the
/// copy can be looked up in the header phase.
#[test]
fn fixes_a_copy_of_an_accepted_signed_post_is_refused_in_the_header_phase() {
    let (w, key, token) = single_use_signing_world(NOW + 60);
    let body = r#"{"to":"+447700900123"}"#;
    let sig = signed_sms_post(&key, &token, body);
    let digest = sig.content_digest.clone().unwrap();
    let len = body.len().to_string();
    let request = [
        (":scheme", "https"),
        ("approov-token", token.as_str()),
        ("content-length", len.as_str()),
        ("content-digest", digest.as_str()),
        ("signature-input", sig.signature_input.as_str()),
        ("signature", sig.signature.as_str()),
    ];
    match w.post("/v1/sms", "192.0.2.1", &request, body) {
        Step::Done(d, _) => assert_eq!(d.reason(), None, "the genuine request"),
        s => panic!("{s:?}"),
    }
    let mut all = vec![
        (":method", "POST"),
        (":path", "/v1/sms"),
        (":authority", "api.example.com"),
        ("content-type", "application/json"),
    ];
    all.extend_from_slice(&request);
    let h = headers(&all);
    match evaluate(&w.ctx(), &Request::new(&h, "192.0.2.1".parse().ok()), NOW) {
        Step::Done(d, f) => assert_eq!(
            (d.reason(), f.signing_error.is_some()),
            (Some(Reason::TokenReplayed), false)
        ),
        Step::NeedBody(_) => {
            panic!("an exact copy of an accepted signed POST is held for its body")
        }
        s => panic!("{s:?}"),
    }
}

// review57-lease F2a/F3: a request that asks ahead while the worker holds
// hits, and whose call fails (service down, timeout, circuit breaker), is
// refused under `failure_mode: deny`; the requests after it must go on
// taking the held hits (which the service counted), not each ask again and
// each be refused 503 until the lease's window resets.
#[test]
fn a_failed_ask_ahead_leaves_the_held_hits_to_the_next_requests() {
    let w = lease_world_of(100);
    let t = NOW * 1000;
    use_75_of_a_lease_of_100(&w, t);
    // 24 held: this request asks ahead; the call fails.
    let (p, sent) = w.leased_call("u1", t + 100);
    assert_eq!(sent[0].1, Some(100), "asked ahead");
    let ctx = Ctx {
        now_ms: t + 150,
        ..w.ctx()
    };
    assert_eq!(
        evaluate_rls(&ctx, p, Err(()), (t + 150) / 1000).done_reason(),
        Some(Reason::RatelimitUnavailable)
    );
    // One at a time, as a single client's requests come; every call fails.
    let mut refused = 0;
    for i in 0..24 {
        let now = t + 200 + 10 * i;
        match w.leased_get("/leased", "u1", now) {
            Step::Done(Decision::Allow(_), _) => {}
            Step::NeedRateLimit(p, _) => {
                let ctx = Ctx {
                    now_ms: now + 5,
                    ..w.ctx()
                };
                let _ = evaluate_rls(&ctx, p, Err(()), (now + 5) / 1000);
                refused += 1;
            }
            s => panic!("{s:?}"),
        }
    }
    assert_eq!(
        refused, 0,
        "{refused} of 24 requests called again (and, the service down, were refused 503) while the worker held hits"
    );
}

/// Headers as Envoy hands them to the filter (the proxy-wasm map
/// encoding), bytes that are not UTF-8 included: Envoy's HTTP/2 codec
/// passes bytes 0x80–0xFF in the query on, and both codecs in other
/// header values (README, "A request header value that is not UTF-8").
fn wire_headers(pairs: &[(&[u8], &[u8])]) -> crate::headers::Headers {
    crate::headers::Headers::from_wire(&crate::wire::encode_pairs(pairs.iter().copied())).unwrap()
}

/// A `:path` with a byte that is not UTF-8 in its query
/// (`POST /v1/sms?x=\xff` over HTTP/2: Envoy's `normalize_path` escapes
/// such bytes in the path but leaves the query as sent) is refused as an
/// unclear path (`route_denied`), as Envoy's HTTP/1 codec refuses it.
/// Read lossily and marked with a leading NUL, it matched no route, not
/// even a catch-all `/`, and went on under `default_action` (`allow` by
/// default) past every route's key, token, platform and limit checks; the
/// upstream served `/v1/sms`.
#[test]
fn a_path_with_a_byte_that_is_not_utf8_is_refused_not_unrouted() {
    let w = World::from(json!({
        "api_keys": {"keys": [{"id": "k", "sha256": hash_api_key("key-any")}]},
        "routes": [
            {"name": "sms", "match": {"path": "/v1/sms"}, "api_key": "required"},
            {"name": "all", "match": {"prefix": "/"}, "api_key": "required"}
        ]
    }));
    for path in [
        &b"/v1/sms?x=\xff"[..],
        b"/v1/sms?to=%2B44&n=\xe9",
        b"/v1/sms/\xc3",
        b"/other?\xff",
    ] {
        let h = wire_headers(&[
            (b":method", b"POST"),
            (b":path", path),
            (b":authority", b"api.example.com"),
        ]);
        let got =
            evaluate(&w.ctx(), &Request::new(&h, "192.0.2.1".parse().ok()), NOW).done_reason();
        assert!(
            got.is_some(),
            "{:?}: let through without the key its route requires",
            String::from_utf8_lossy(path)
        );
    }
    // With `forward: false`, a refusal cuts the key parameter out of the
    // `:path` Envoy logs; never by writing the lossy, NUL-marked reading
    // back into `:path`.
    let w = World::from(json!({
        "api_keys": {"forward": false, "query_param": "key",
                     "keys": [{"id": "k", "sha256": hash_api_key("key-any")}]},
        "routes": [{"name": "sms", "match": {"path": "/v1/sms"}, "api_key": "required"}]
    }));
    let h = wire_headers(&[
        (b":method", b"POST"),
        (b":path", b"/v1/sms?key=key-any&x=\xff"),
        (b":authority", b"api.example.com"),
    ]);
    match evaluate(&w.ctx(), &Request::new(&h, "192.0.2.1".parse().ok()), NOW) {
        Step::Done(Decision::Deny(d), _) => assert!(
            !d.key_scrub
                .path
                .as_deref()
                .is_some_and(|p| p.contains('\0')),
            "{:?}",
            d.key_scrub.path
        ),
        s => panic!("not refused: {s:?}"),
    }
}

/// A cookie named like the key parameter holding
/// another key is `api_key_invalid` (PHP's `$_REQUEST` takes it over the
/// query), and with `forward: false` it is cut. A byte that is not UTF-8
/// anywhere in the `cookie` header (HTTP/1 too) put the NUL mark in front
/// of its first cookie's name, which then named nothing: the other key
/// went upstream unseen, and with `forward: false` the key's copy stayed.
#[test]
fn a_cookie_header_with_a_byte_that_is_not_utf8_still_shows_its_key_cookie() {
    let w = World::new();
    for cookie in [
        &b"key=key-web; x=\xff"[..],
        b"key=key-web; \xe9=1",
        b"KEY[]=key-web;\xff",
    ] {
        let h = wire_headers(&[
            (b":method", b"GET"),
            (b":path", b"/sms?key=key-sms"),
            (b":authority", b"api.example.com"),
            (b"cookie", cookie),
        ]);
        let got = evaluate(
            &w.ctx(),
            &Request::new(&h, "198.51.100.1".parse().ok()),
            NOW,
        )
        .done_reason();
        assert_eq!(
            got,
            Some(Reason::ApiKeyInvalid),
            "{:?}: a cookie with another key than the one checked",
            String::from_utf8_lossy(cookie)
        );
    }
    // `forward: false`: the key's cookie copy is cut like any other.
    let mut cfg = config_json();
    cfg["api_keys"]["forward"] = json!(false);
    let w = World::from(cfg);
    let h = wire_headers(&[
        (b":method", b"GET"),
        (b":path", b"/sms?key=key-sms"),
        (b":authority", b"api.example.com"),
        (b"cookie", b"key=key-sms; x=\xff"),
    ]);
    let scrub = match evaluate(
        &w.ctx(),
        &Request::new(&h, "198.51.100.1".parse().ok()),
        NOW,
    ) {
        Step::Done(Decision::Allow(g), _) => g.key_scrub,
        Step::Done(Decision::Deny(d), _) => d.key_scrub,
        s => panic!("{s:?}"),
    };
    assert!(
        scrub
            .cookie
            .as_deref()
            .is_some_and(|c| !c.contains("key-sms")),
        "the key's cookie copy goes upstream: {:?}",
        scrub.cookie
    );
}

/// `Forwarded: host=admin.example.com;for=…` takes the
/// admin host's route (Spring's `ForwardedHeaderFilter` reads the first
/// element's `host`). With a byte that is not UTF-8 anywhere in the value
/// the NUL mark hid that first element's `host` key, and the request kept
/// the weaker route of its `:authority`.
#[test]
fn a_forwarded_host_is_read_past_a_byte_that_is_not_utf8() {
    let w = World::from(json!({
        "routes": [
            {"name": "admin", "match": {"prefix": "/", "hosts": ["admin.example.com"]}},
            {"name": "api", "match": {"prefix": "/v1/", "hosts": ["api.example.com"]}}
        ]
    }));
    assert_unclear_with(
        &w,
        b"GET",
        b"/v1/orders",
        b"forwarded",
        &[
            b"host=admin.example.com;for=\xff",
            b"host=admin.example.com;for=192.0.2.1, for=\xe9",
        ],
    );
}

/// A method override whose first comma-separated value
/// is another route's method takes that route's check (README: "each
/// comma-separated value of each copy, as Express reads the first and
/// others the last"). A byte that is not UTF-8 later in the value put the
/// NUL mark in front of that first value, which then named no method.
#[test]
fn a_method_override_is_read_past_a_byte_that_is_not_utf8() {
    let w = World::from(json!({
        "routes": [
            {"name": "delete", "match": {"prefix": "/v1/items", "methods": ["DELETE"]}, "action": "deny"},
            {"name": "api", "match": {"prefix": "/v1/"}}
        ]
    }));
    assert_unclear_with(
        &w,
        b"POST",
        b"/v1/items",
        b"x-http-method-override",
        &[b"DELETE, \xff", b"DELETE,x\xe9"],
    );
}

/// Asserts that `method path` on `api.example.com`, with `header` set to
/// each of `values` (bytes as Envoy hands them over), takes no route:
/// route matching finds it unclear.
fn assert_unclear_with(w: &World, method: &[u8], path: &[u8], header: &[u8], values: &[&[u8]]) {
    for value in values {
        let h = wire_headers(&[
            (b":method", method),
            (b":path", path),
            (b":authority", b"api.example.com"),
            (header, value),
        ]);
        let m = match_route(&w.config, &Request::new(&h, None));
        assert!(
            m.is_err(),
            "{:?}: taken as {:?}",
            String::from_utf8_lossy(value),
            m.map(|m| m.map(|(_, r)| r.name.clone()))
        );
    }
}

/// Under a `+7` default (Russia, Kazakhstan), `810` is the
/// international prefix (libphonenumber's `internationalPrefix` `810`,
/// `preferredInternationalPrefix` `8~10`). `ABROAD_PREFIXES` left it out
/// as "numbers of no valid shape there (rule 8)", but rule 8 asks a `+7`
/// number for ten digits after its trunk `8`, and `810` + an eight-digit
/// number is just that: `810 682 71234` is `+7 8 1068271234` to appguard
/// (ten digits after the trunk `8`) and `+682 71234` (Cook Islands, a
/// common revenue-share fraud destination) to an upstream parsing for RU.
/// Eight-digit numbers: Cook Islands, Falklands, St Helena, Tokelau,
/// Tuvalu, Kiribati, Solomon Islands, Vanuatu, Samoa, Tonga.
#[test]
fn an_810_under_7_before_an_eight_digit_number_is_read_off() {
    let mut passed = Vec::new();
    for national_prefix in [None, Some("8")] {
        let mut phone = json!({"denied_prefixes": ["+682", "+500", "+690", "+688", "+683"],
                               "default_calling_code": "7",
                               "hash_key_base64": STANDARD.encode([5u8; 32])});
        if let Some(p) = national_prefix {
            phone["national_prefix"] = json!(p);
        }
        let w = sms_world(phone);
        let to = |n: &str| sms_to(&w, n);
        assert_eq!(to("+682 71234").0, Some(Reason::PhoneDenied));
        for n in [
            "810 682 71234",
            "8 10 500 51234",
            "810 690 12345",
            "810 688 20123",
            // Seven digits (Niue): ten after `7` where `8` is not the
            // national prefix.
            "810 683 4123",
        ] {
            passed.extend(let_through(
                &w,
                &format!("national_prefix {national_prefix:?}: "),
                [n],
            ));
        }
    }
    assert!(
        passed.is_empty(),
        "denied numbers to an upstream parsing for RU, let through: {passed:#?}"
    );
}

/// A token header holding a byte that is not UTF-8 carries
/// the NUL mark in front (`Headers::from_wire`), which hides a source's
/// prefix (`\0Bearer …`): the header then holds "no token" for it, and on a
/// route where tokens are optional the request went on as one without a
/// token, where the same header without that byte is refused (a delegated
/// provider's header without a payload: `token_signature`, see
/// `a_delegated_token_jwt_authn_did_not_verify_is_refused_even_where_tokens_are_optional`;
/// a native provider's bad token: refused). A token that cannot be read is
/// a bad token, not no token.
#[test]
fn a_token_header_with_a_byte_that_is_not_utf8_is_not_taken_for_none() {
    let w = World::from(json!({
        "tokens": [
            {"name": "mesh", "from": [{"header": "authorization", "prefix": "Bearer "}],
             "verified_by": {"key": "mesh_payload"}, "issuer": "https://issuer.example"},
            {"name": "own", "from": [{"header": "x-token", "prefix": "Bearer "}],
             "issuer": "https://a", "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}
        ],
        "routes": [
            {"name": "mesh", "match": {"prefix": "/mesh/"}, "tokens": ["mesh"], "token_required": false},
            {"name": "own", "match": {"prefix": "/own/"}, "tokens": ["own"], "token_required": false}
        ]
    }));
    let run = |path: &[u8], name: &[u8], value: &[u8]| {
        let h = wire_headers(&[
            (b":method", b"GET"),
            (b":path", path),
            (b":authority", b"api.example.com"),
            (name, value),
        ]);
        evaluate(
            &w.ctx(),
            &Request::new(&h, "198.51.100.7".parse().ok()),
            NOW,
        )
        .done_reason()
    };
    let mut passed = Vec::new();
    for (path, name) in [
        (&b"/mesh/x"[..], &b"authorization"[..]),
        (b"/own/x", b"x-token"),
    ] {
        // Without the byte: refused.
        assert!(run(path, name, b"Bearer a.b.c").is_some());
        for value in [&b"Bearer a.b.c\xff"[..], b"Bearer \xe9a.b.c"] {
            if run(path, name, value).is_none() {
                passed.push(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    assert!(passed.is_empty(), "taken for no token: {passed:?}");
}

/// A cookie named like the key parameter is a key to
/// upstreams that merge cookies into their parameters (PHP's `$_REQUEST`
/// without a php.ini; README `query_param`), and no browser sends a cookie
/// with a preflight. Like a key header or parameter, it makes an `OPTIONS`
/// no preflight, checked as any request: otherwise, under
/// `bypass_cors_preflight`, a key nobody checked reaches an upstream that
/// runs the route's handler for `OPTIONS` (PHP scripts run for any method).
#[test]
fn a_key_cookie_makes_an_options_no_preflight() {
    let mut json = config_json();
    json["bypass_cors_preflight"] = json!(true);
    let on = World::from(json);
    let preflight = [
        ("origin", "https://shop.example.com"),
        ("access-control-request-method", "POST"),
    ];
    assert_eq!(on.route("OPTIONS", "/web/cart", &preflight), None);
    for cookie in ["key=not-a-key", "a=1; KEY[]=not-a-key"] {
        let mut hs = preflight.to_vec();
        hs.push(("cookie", cookie));
        assert_eq!(
            on.route("OPTIONS", "/web/cart", &hs),
            Some(Reason::ApiKeyInvalid),
            "{cookie}"
        );
    }
    // Other cookies change nothing.
    let mut hs = preflight.to_vec();
    hs.push(("cookie", "session=abc"));
    assert_eq!(on.route("OPTIONS", "/web/cart", &hs), None);
}

// A provider with a configured key beside a remote JWKS, whose issuer
// signs without `kid`. While the remote set cannot be had, a genuine
// kidless token is tried against the configured key and fails: it is not
// known to be forged, so the route's `failure_mode` decides, every time,
// and its failure must not spend the budget the client is refused
// `token_signature` by (with `failures` such requests it would be refused
// on a route that fails open, and still, unverified, once the JWKS is
// back, until the budget refilled).
#[test]
fn a_jwks_outage_does_not_spend_genuine_kidless_clients_budgets() {
    use crate::token::keys::{keys_from_jwks, JwksOrigin};
    let w = World::from(json!({
        "tokens": [{"name": "r", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode([9u8; 32])}],
                    "remote_jwks": {"cluster": "jwks", "path": "/jwks"},
                    "failure_budget": {"failures": 2, "window_seconds": 60}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["r"], "failure_mode": "allow"}]
    }));
    // Signed with the issuer's key (in the remote set), no `kid`.
    let genuine = hs256_raw(SECRET, &json!({"alg": "HS256"}), &json!({"exp": NOW + 60}));
    let step = |remote: &[RemoteKeys]| {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "a"),
            ("x-t", &genuine),
        ]);
        let mut ctx = w.ctx();
        ctx.remote_keys = remote;
        match evaluate(&ctx, &Request::new(&h, "192.0.2.9".parse().ok()), NOW) {
            Step::Done(d, f) => (d.reason(), f.degraded),
            s => panic!("{s:?}"),
        }
    };
    let none = [RemoteKeys {
        keys: None,
        version: 0,
    }];
    // The JWKS cannot be had: the route fails open, every time.
    for i in 0..5 {
        assert_eq!(
            step(&none),
            (None, Some(Reason::JwksUnavailable)),
            "request {i} of a genuine client during the outage"
        );
    }
    // The JWKS is back: the genuine token verifies.
    let jwk = json!({"kty": "oct", "alg": "HS256",
                     "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET)});
    let loaded = [RemoteKeys {
        keys: Some(Rc::new(
            keys_from_jwks(&json!({ "keys": [jwk] }), JwksOrigin::Configured).unwrap(),
        )),
        version: 1,
    }];
    assert_eq!(step(&loaded), (None, None), "once the keys are back");
}

// The other side of the same outage: tokens without `kid` that no
// configured key verifies spend a budget of their own, so a flood of
// forged ones costs at most `failures` verifications per client; once it
// is spent, that client's kidless tokens get the route's failure mode
// without any signature work (a token the configured key would verify
// too), while another client's still verify and the budget tokens are
// refused by once the keys are back stays whole.
#[test]
fn while_remote_keys_are_missing_kidless_failures_spend_a_budget_of_their_own() {
    let configured = [9u8; 32];
    let w = World::from(json!({
        "tokens": [{"name": "r", "from": [{"header": "x-t"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(configured)}],
                    "remote_jwks": {"cluster": "jwks", "path": "/jwks"},
                    "failure_budget": {"failures": 2, "window_seconds": 60}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["r"]}]
    }));
    let none = [RemoteKeys {
        keys: None,
        version: 0,
    }];
    let step = |token: &str, ip: &str| {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "a"),
            ("x-t", token),
        ]);
        let mut ctx = w.ctx();
        ctx.remote_keys = &none;
        match evaluate(&ctx, &Request::new(&h, ip.parse().ok()), NOW) {
            Step::Done(d, f) => (d.reason(), f.budget_refused),
            s => panic!("{s:?}"),
        }
    };
    let good = hs256_raw(
        &configured,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60}),
    );
    // Before any failure, the configured key verifies it.
    assert_eq!(step(&good, "192.0.2.9"), (None, false));
    for i in 0..4 {
        let forged = hs256_raw(
            b"not the key",
            &json!({"alg": "HS256"}),
            &json!({"exp": NOW + 60 + i}),
        );
        assert_eq!(
            step(&forged, "192.0.2.9"),
            (Some(Reason::JwksUnavailable), false),
            "forged kidless token {i} during the outage"
        );
    }
    // Spent: this client's kidless tokens are no longer verified, so even
    // one the configured key signed gets the failure mode (fail closed here).
    let fresh = hs256_raw(
        &configured,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 61}),
    );
    assert_eq!(
        step(&fresh, "192.0.2.9"),
        (Some(Reason::JwksUnavailable), false)
    );
    // Another client's is verified.
    assert_eq!(step(&fresh, "198.51.100.7"), (None, false));
}

#[test]
fn a_firebase_app_id_of_another_platform_is_advised_on() {
    // With `format: firebase` the platform in the claim must be the app's:
    // an Android app listing a web app id refuses every token that names
    // it (`app_mismatch`); the configuration should say so when it loads.
    let mut v = config_json();
    v["apps"][4]["token_app_ids"] = json!(["1:123:web:abc"]);
    let w = World::from(v);
    let t = firebase_token("1:123:web:abc");
    assert_eq!(
        w.reason("/appcheck/x", &[("x-firebase-appcheck", &t)]),
        Some(Reason::AppMismatch)
    );
    let advice = w.config.advisories();
    assert!(
        advice.iter().any(|a| a.contains("token_app_ids")),
        "no advice: {advice:?}"
    );
}

#[test]
fn the_api_key_header_cannot_be_a_header_appguard_reads_for_something_else() {
    // As for the platform headers: a key header that is also the web
    // origin, the country, a routing override, framing or a header only
    // appguard sets makes every keyed request show a second thing (an
    // `Origin` holding a key is `origin_denied` on every keyed route), or
    // with `forward: false` removes that header from every request.
    for name in [
        "origin",
        "referer",
        "x-country",
        "x-appguard-key",
        "x-forwarded-host",
        "x-original-url",
        "x-http-method-override",
        "cookie",
        "Host",
        "x_forwarded_for",
        "content-type",
    ] {
        let mut v = config_json();
        v["api_keys"]["header"] = json!(name);
        match Config::from_json(v.to_string().as_bytes()) {
            Ok(_) => panic!("api_keys.header {name:?} accepted"),
            Err(e) => assert_eq!(e.path, "api_keys.header", "{name}: {e:?}"),
        }
    }
    let mut v = config_json();
    v["api_keys"]["header"] = json!("x-goog-api-key");
    Config::from_json(v.to_string().as_bytes()).expect("a header of its own");
}

/// The API-key header may not be the
/// country header, a route's own (`routes[].network.country_header`) no
/// more than the top-level one: on that route every keyed request would
/// show its key as the country (and a geolocation filter in front would
/// overwrite the key).
#[test]
fn the_api_key_header_cannot_be_a_routes_country_header() {
    let cfg = json!({
        "api_keys": {"header": "x-country", "keys": []},
        "routes": [{"name": "eu", "match": {"prefix": "/"}, "api_key": "required",
                    "network": {"country_header": "x-country", "country_allow": ["DE"]}}]
    });
    match Config::from_json(cfg.to_string().as_bytes()) {
        Ok(_) => panic!("api_keys.header \"x-country\" accepted beside routes[0].network.country_header \"x-country\""),
        Err(e) => assert_eq!(e.path, "api_keys.header", "{e:?}"),
    }
}

/// A calling code written without `+` under a default whose national
/// numbers are short: libphonenumber drops it when the number is too long
/// for the country with it (longer than the country's longest national
/// number: nine digits in Belgium and Hungary, eight in Denmark and
/// Norway), or is no
/// number of the country with it and one without. `other_readings` used to
/// read it so only when the whole was longer than 12 digits, which fits
/// countries of ten-digit numbers: `32 900 12345` under `32` (appguard:
/// `+32 3290012345`) is `+32 900 12345`, Belgium's premium 0900, to an
/// upstream parsing for BE, and went past a denied `+32 90`.
#[test]
fn a_calling_code_before_a_short_national_number_is_read_off() {
    let mut passed = Vec::new();
    for (cc, denied, n) in [
        ("32", "+32 90", "32 900 12345"),
        ("32", "+32 90", "32 90012345"),
        ("45", "+45 90", "45 90 12 34 56"),
        ("47", "+47 82", "47 820 12 345"),
        // Hungary: eight or nine digits (premium `9[01]` and six more).
        ("36", "+36 90", "36 90 123 456"),
        ("36", "+36 90", "3690123456"),
        ("36", "+36 91", "36 91 123 456"),
    ] {
        let w = phone_world(&[denied], Some(cc));
        // The same number with `+` is denied.
        assert_eq!(
            sms_to(&w, &format!("+{n}")).0,
            Some(Reason::PhoneDenied),
            "+{n}"
        );
        passed.extend(let_through(
            &w,
            &format!("under {cc}, past {denied}: "),
            [n],
        ));
    }
    assert!(passed.is_empty(), "denied numbers let through: {passed:#?}");
}

/// Hungary's trunk prefix is `06`, not `0`: `scan` drops a `(0)` right
/// after the calling code as a trunk `0`, which leaves the `6` as the
/// first digit of the number. `+36 (0)6 90 123 456` read `+36 690 123 456`
/// (no trunk prefix left to read off), while libphonenumber (and a gateway
/// keeping only the digits) reads `+36 06 90 123 456`, strips the
/// national prefix `06` as it does for international input, and dials
/// `+36 90 123 456`, premium rate: past a denied `+36 90`.
#[test]
fn a_zero_group_before_the_rest_of_a_trunk_prefix_is_not_dropped() {
    let mut passed = Vec::new();
    for default in [None, Some("36"), Some("44")] {
        let w = phone_world(&["+36 90"], default);
        // Written without the group, with `06` or with `(06)`: denied.
        for n in ["+36 06 90 123 456", "+36 (06) 90 123 456", "+36 90 123 456"] {
            assert_eq!(sms_to(&w, n).0, Some(Reason::PhoneDenied), "{n}");
        }
        passed.extend(let_through(
            &w,
            &format!("default {default:?}: "),
            [
                "+36 (0)6 90 123 456",
                "0036 (0)6 90 123 456",
                "+36(0)690123456",
            ],
        ));
    }
    assert!(
        passed.is_empty(),
        "premium numbers let through: {passed:#?}"
    );
}

/// A nested phone pointer (`/sms/to`) beside a top-level key that spells
/// the same path with dots (`"sms.to"`): lodash's `_.get(body, "sms.to")`
/// (and `_.has`, `_.result`) take a key of the object named exactly like
/// the whole path before splitting it at dots, so a Node upstream
/// reading the number so sends to `"sms.to"`'s number, not the one
/// appguard checked and counted.
#[test]
fn a_key_spelling_a_nested_pointer_with_dots_is_refused() {
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "phone": {"denied_prefixes": ["+882"], "hash_key_base64": STANDARD.encode([5u8; 32])},
        "routes": [
            {"name": "sms", "match": {"prefix": "/sms"}, "failure_mode": "deny",
             "rate_limits": [
                {"entries": [{"type": "route"}, {"type": "body", "pointer": "/sms/to", "phone": true}]}
             ]}
        ]
    }));
    let ok = r#"{"sms":{"to":"+447700900123"}}"#;
    assert_eq!(sms_outcome(&w, "/sms", ok).0, None);
    let smuggled = r#"{"sms":{"to":"+447700900123"},"sms.to":"+88212345678"}"#;
    assert_eq!(
        sms_outcome(&w, "/sms", smuggled).0,
        Some(Reason::BodyInvalid),
        "`sms.to` beside `sms`/`to`"
    );
}

/// Hungary's trunk prefix written twice: `+44 00 909 …` and `+36 06 0 90 …`
/// are refused as no number (`trunk_written_twice`: a gateway that drops
/// every trunk prefix there delivers them past the denied prefix), but
/// `+36 06 06 90 …` passed: the `06` is read off only before eight or
/// nine digits, and ten follow it here, so the second `06` was never
/// looked at. A gateway dropping both reaches `+36 90 …`.
#[test]
fn hungarys_trunk_prefix_written_twice_is_no_number() {
    let w = phone_world(&["+36 90"], Some("36"));
    for n in ["+36 06 0 90 123 456", "+44 0 0 909 123 4567"] {
        assert_eq!(sms_to(&w, n).0, Some(Reason::BodyInvalid), "{n}");
    }
    let passed = let_through(
        &w,
        "",
        [
            "+36 06 06 90 123 456",
            "+36 0606 90123456",
            "0036 06 06 90 123 456",
        ],
    );
    assert!(
        passed.is_empty(),
        "premium numbers let through: {passed:#?}"
    );
}

/// Legitimate international spellings with `(0)` that
/// real clients send must still be accepted and count as the number
/// without the `0` (guards the 9d3952b change against over-reach).
#[test]
fn zero_group_after_a_zero_trunk_country_still_accepted() {
    let w = phone_world(&["+44 909"], None);
    for (with, without) in [
        ("+44 (0)20 7946 0000", "+44 20 7946 0000"),
        ("+49 (0)30 1234 5678", "+49 30 1234 5678"),
        ("+33 (0)1 23 45 67 89", "+33 1 23 45 67 89"),
        ("+36 (0)1 234 5678", "+36 1 234 5678"),
    ] {
        let a = sms_to(&w, with);
        let b = sms_to(&w, without);
        assert_eq!(a.0, None, "{with}");
        assert_eq!(
            format!("{:?}", a.1),
            format!("{:?}", b.1),
            "{with} and {without} are one phone"
        );
    }
}

/// A route's own `network.country_header` is a header a claim header or
/// a platform header may not be, as the top-level one is. A
/// claim header named like a route's country header strips the edge's
/// country from every request and writes a token's claim in its place;
/// a platform header named so reads the country as a package name. Both
/// are refused when the country header is the top-level one.
#[test]
fn claim_and_platform_headers_cannot_be_a_routes_country_header() {
    let key = STANDARD.encode(SECRET);
    let route = json!([{"name": "eu", "match": {"prefix": "/"},
                        "network": {"country_header": "x-country", "country_allow": ["DE"]}}]);
    let mut accepted = Vec::new();
    let claim = json!({
        "tokens": [{"name": "t", "from": [{"header": "x-t"}], "keys": [{"alg": "HS256", "secret_base64": key}],
                    "claim_to_headers": [{"claim": "sub", "header": "x-country"}]}],
        "routes": route,
    });
    if Config::from_json(claim.to_string().as_bytes()).is_ok() {
        accepted.push("tokens[0].claim_to_headers[0].header \"x-country\"");
    }
    let platform = json!({
        "platform_headers": {"android_package": "x-country"},
        "routes": route,
    });
    if Config::from_json(platform.to_string().as_bytes()).is_ok() {
        accepted.push("platform_headers.android_package \"x-country\"");
    }
    assert!(
        accepted.is_empty(),
        "accepted beside routes[0].network.country_header \"x-country\": {accepted:?}"
    );
}

/// A rate-limit service for one descriptor, counting in fixed windows of
/// the epoch (as envoyproxy/ratelimit and appguard-ratelimit do), answering
/// in whole seconds ("the unit less the current second's place in it") and
/// counting refused hits too: `limit` a `unit`.
struct WindowService {
    limit: u32,
    unit: crate::ratelimit::rls::Unit,
    counts: std::cell::RefCell<std::collections::HashMap<u64, u32>>,
}

impl WindowService {
    fn new(limit: u32, unit: crate::ratelimit::rls::Unit) -> WindowService {
        WindowService {
            limit,
            unit,
            counts: Default::default(),
        }
    }

    /// Counts a call's hits at `at_ms` (the service's reading of the
    /// clock) and answers it.
    fn count(&self, sent: &[(Descriptor, Option<u64>)], at_ms: u64) -> RateLimitResponse {
        use crate::ratelimit::rls::*;
        let hits = u32::try_from(sent[0].1.unwrap_or(1)).unwrap();
        let unit_s = self.unit.max_window_secs().unwrap();
        let window = at_ms / 1000 / unit_s;
        let mut counts = self.counts.borrow_mut();
        let n = counts.entry(window).or_insert(0);
        *n += hits;
        let over = *n > self.limit;
        let secs = unit_s - (at_ms / 1000) % unit_s;
        let code = if over { Code::OverLimit } else { Code::Ok };
        RateLimitResponse {
            overall_code: code as i32,
            statuses: vec![DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: self.limit,
                    unit: self.unit as i32,
                }),
                limit_remaining: self.limit.saturating_sub(*n),
                duration_until_reset: Some(Duration {
                    seconds: i64::try_from(secs).unwrap(),
                    nanos: 0,
                }),
            }],
            ..Default::default()
        }
    }
}

impl World {
    /// `n` requests for `u1` on `/leased`, one every `every_ms` from
    /// `start_ms`, each call answered by `service` a millisecond after it
    /// is sent: how many were refused, and the calls and hits asked in the
    /// last second of a minute.
    fn steady_leased(
        &self,
        service: &WindowService,
        start_ms: u64,
        every_ms: u64,
        n: u64,
    ) -> (u32, u32, u64) {
        let (mut refused, mut calls_last_second, mut hits_last_second) = (0, 0, 0u64);
        for i in 0..n {
            let at = start_ms + i * every_ms;
            let last_second = at % 60_000 >= 59_000;
            match self.leased_get("/leased", "u1", at) {
                Step::NeedRateLimit(p, call) => {
                    let sent = rls_hits(&call);
                    if last_second {
                        calls_last_second += 1;
                        hits_last_second += sent[0].1.unwrap_or(1);
                    }
                    let answer = service.count(&sent, at + 1);
                    match self.answer(p, &answer, at + 1) {
                        Step::Done(Decision::Allow(_), _) => {}
                        _ => refused += 1,
                    }
                }
                Step::Done(Decision::Allow(_), _) => {}
                _ => refused += 1,
            }
        }
        (refused, calls_last_second, hits_last_second)
    }
}

#[test]
fn the_last_second_of_a_window_does_not_spend_a_lease_a_request() {
    // One worker, one client's steady 50 requests a second (one every
    // 20 ms, each answered a millisecond after it is sent) against a leased
    // (100) limit of 4,000 a minute: 3,000 requests a minute, well under
    // the limit, so none should be refused. But from the moment the held
    // lease ends (up to a second before the window does) until the window
    // resets, every answer is in whole seconds with 1 s left, which keeps
    // nothing, and each request asks (and the service counts) a whole
    // lease again.
    let w = lease_world_of(100);
    let service = WindowService::new(4_000, crate::ratelimit::rls::Unit::Minute);
    let start = (NOW * 1000 / 60_000 + 1) * 60_000 + 137;
    let (refused, calls, hits) = w.steady_leased(&service, start, 20, 3 * 60 * 50);
    let counted: Vec<u32> = service.counts.borrow().values().copied().collect();
    assert_eq!(
        refused, 0,
        "{refused} of 9,000 requests refused at 3,000 a minute under a limit of 4,000 \
         ({calls} calls asking {hits} hits in the windows' last seconds; counted per \
         window: {counted:?})"
    );
}

#[test]
fn a_leased_per_second_limit_costs_a_hit_a_request() {
    // README: "A per-second limit therefore keeps no lease from those
    // services". It keeps none, but each request still asks for (and the
    // service counts) a whole lease: a limit of 100 a second leased 10 at
    // a time admits 10 requests a second, not 100.
    let w = lease_world_of(10);
    let service = WindowService::new(100, crate::ratelimit::rls::Unit::Second);
    let start = (NOW + 1) * 1000 + 3;
    let (refused, _, _) = w.steady_leased(&service, start, 20, 5 * 50);
    let mut counted: Vec<u32> = service.counts.borrow().values().copied().collect();
    counted.sort_unstable();
    assert_eq!(
        refused, 0,
        "{refused} of 250 requests refused at 50 a second under a limit of 100 a second \
         (counted per second: {counted:?})"
    );
}

#[test]
fn copies_of_a_used_token_do_not_spend_a_lease_each() {
    // `replay.scope: service` beside a leased route-wide limit (10,000 a
    // minute, `lease: 100`), with a service that counts every descriptor of
    // a call, refused ones too (envoyproxy/ratelimit's default,
    // appguard-ratelimit without --stop-increment-when-over-limit). A
    // client sends its token once, then copies of it. The service refuses
    // each copy (`token_replayed`), and counts the call's other
    // descriptors: without a lease, a hit a copy (README, "A refused call
    // counts"). With the lease, once the held hits are gone each copy asks
    // for (and has counted) a whole lease of the route's limit, which the
    // refusal does not keep: the replayed answer is never cached, the
    // client's local limits get their tokens back, so nothing slows the
    // copies down. 200 copies from one client spend 10,000 hits: every
    // client of the route is refused for the rest of the minute.
    use crate::ratelimit::rls::*;
    let w = World::from(json!({
        "rate_limit_service": {"cluster": "rls", "domain": "appguard", "timeout_ms": 100},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                    "replay": {"claim": "jti", "scope": "service"}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["t"],
                    "rate_limits": [{"entries": [{"type": "route"}], "lease": 100}]}]
    }));
    let token = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iat": NOW, "exp": NOW + 300, "jti": "a"}),
    );
    let route_hits = std::cell::Cell::new(0u64);
    let seen = std::cell::RefCell::new(std::collections::HashSet::<String>::new());
    let status = |code: Code, rpu: u32, unit: Unit, remaining: u32, secs: i64| DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: String::new(),
            requests_per_unit: rpu,
            unit: unit as i32,
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(Duration {
            seconds: secs,
            nanos: 0,
        }),
    };
    let t0 = NOW * 1000 + 5_000;
    let send = |at: u64| -> Option<Reason> {
        let h = headers(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "api.example.com"),
            ("x-token", &token),
        ]);
        let ctx = Ctx {
            now_ms: at,
            ..w.ctx()
        };
        match evaluate(
            &ctx,
            &Request::new(&h, Some("192.0.2.7".parse().unwrap())),
            at / 1000,
        ) {
            Step::NeedRateLimit(p, call) => {
                let sent = rls_hits(&call);
                let mut statuses = Vec::new();
                let mut over = false;
                for (d, hits) in &sent {
                    if d[0].0 == "jti" {
                        let again = !seen.borrow_mut().insert(d[0].1.clone());
                        over |= again;
                        let code = if again { Code::OverLimit } else { Code::Ok };
                        statuses.push(status(code, 1, Unit::Hour, 0, 3_000));
                    } else {
                        route_hits.set(route_hits.get() + hits.unwrap_or(1));
                        let left = 10_000u64.saturating_sub(route_hits.get());
                        statuses.push(status(
                            Code::Ok,
                            10_000,
                            Unit::Minute,
                            u32::try_from(left).unwrap(),
                            50,
                        ));
                    }
                }
                let resp = RateLimitResponse {
                    overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
                    statuses,
                    ..Default::default()
                };
                let ctx = Ctx {
                    now_ms: at + 1,
                    ..w.ctx()
                };
                match evaluate_rls(&ctx, p, Ok(&resp), (at + 1) / 1000) {
                    Step::Done(d, _) => d.reason(),
                    s => panic!("{s:?}"),
                }
            }
            Step::Done(d, _) => d.reason(),
            s => panic!("{s:?}"),
        }
    };
    assert_eq!(send(t0), None, "the first use");
    let before = route_hits.get();
    for i in 1..=200 {
        assert_eq!(send(t0 + i * 10), Some(Reason::TokenReplayed), "copy {i}");
    }
    let spent = route_hits.get() - before;
    assert!(
        spent <= 200,
        "200 copies of one used token had {spent} hits of the route's limit counted \
         (at most a hit a copy, as without a lease)"
    );
}

#[test]
fn a_cached_token_does_not_move_to_a_laxer_provider_of_the_route() {
    // An issuer migration: `new` names the issuer and binds its tokens to
    // `authorization`; `legacy` names no issuer (same key) and binds
    // nothing, for the old read-only routes. On a route that takes both, a
    // token of the issuer goes to `new` (token::fit): its binding holds.
    // Sending the token once to a `legacy`-only route must not make the
    // route that takes both verify it with `legacy`'s rules instead: the
    // decision would then depend on the worker's cache, and the attacker
    // chooses it.
    let w = World::from(json!({
        "tokens": [
            {"name": "legacy", "from": [{"header": "x-t"}],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
            {"name": "new", "from": [{"header": "x-t"}], "issuer": "https://iss.example",
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
             "binding": {"claim": "pay", "headers": ["authorization"], "required": true},
             "replay": {}}
        ],
        "routes": [
            {"name": "sms", "match": {"prefix": "/sms/"}, "tokens": ["legacy", "new"]},
            {"name": "read", "match": {"prefix": "/read/"}, "tokens": ["legacy"]}
        ]
    }));
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "iss": "https://iss.example", "jti": "j-61",
                "pay": crate::token::binding_digest(&["Bearer alice"])}),
    );
    let on = |path: &str, auth: &str| {
        w.run(
            path,
            "198.51.100.7",
            &[("x-t", &t), ("authorization", auth)],
        )
        .0
        .reason()
    };
    // Cold cache: `new` decides, and refuses another Authorization.
    assert_eq!(on("/sms/x", "Bearer mallory"), Some(Reason::TokenBinding));
    // The genuine use, once.
    assert_eq!(on("/sms/x", "Bearer alice"), None);
    assert_eq!(on("/sms/x", "Bearer alice"), Some(Reason::TokenReplayed));
    // The token once on a legacy route (it is a valid legacy token there).
    assert_eq!(on("/read/x", "Bearer mallory"), None);
    // The same requests as above, decided the same way.
    assert_eq!(
        on("/sms/x", "Bearer mallory"),
        Some(Reason::TokenBinding),
        "the binding of `new` is skipped once `legacy` cached the token"
    );
    assert_eq!(
        on("/sms/x", "Bearer alice"),
        Some(Reason::TokenReplayed),
        "the replay check of `new` is skipped once `legacy` cached the token"
    );
}

#[test]
fn a_route_that_takes_two_providers_of_one_issuer_split_by_platform_takes_both() {
    // README (`replay`): "one issuer split in two for different bindings
    // or platforms". A route that lists both providers must take the
    // tokens of each: an iOS app's token is the `ios` provider's, and goes
    // to it, not to the first provider of the issuer, which refuses it.
    let w = World::from(json!({
        "apps": [
            {"id": "a-android", "platform": "android", "package": "com.example.a"},
            {"id": "a-ios", "platform": "ios", "bundle_id": "com.example.a", "team_id": "TEAM123456"}
        ],
        "tokens": [
            {"name": "android", "from": [{"header": "x-t"}], "issuer": "https://iss.example",
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
             "app_claim": {"claim": "app"}, "platforms": ["android"]},
            {"name": "ios", "from": [{"header": "x-t"}], "issuer": "https://iss.example",
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
             "app_claim": {"claim": "app"}, "platforms": ["ios"]}
        ],
        "routes": [
            {"name": "both", "match": {"prefix": "/both/"}, "tokens": ["android", "ios"]},
            {"name": "ios", "match": {"prefix": "/ios/"}, "tokens": ["ios"]}
        ]
    }));
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "iss": "https://iss.example", "app": "a-ios"}),
    );
    let on = |path: &str| {
        w.run(
            path,
            "198.51.100.7",
            &[("x-t", &t), ("x-ios-bundle-id", "com.example.a")],
        )
        .0
        .reason()
    };
    // Cold cache: the route that takes both (at HEAD, the cache only hid
    // this once the ios-only route had verified the token).
    assert_eq!(
        on("/both/x"),
        None,
        "a route that lists the ios provider takes its token"
    );
    assert_eq!(on("/ios/x"), None, "the ios provider takes it");
}

#[test]
fn providers_naming_no_issuer_are_chosen_by_audience_too() {
    // Two providers of one key without `issuer` (Approov's tokens carry
    // none), told apart by `audiences`: a route that lists both takes the
    // tokens of each.
    let w = World::from(json!({
        "tokens": [
            {"name": "a", "from": [{"header": "x-t"}], "audiences": ["app-a"],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
            {"name": "b", "from": [{"header": "x-t"}], "audiences": ["app-b"],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}
        ],
        "routes": [{"name": "both", "match": {"prefix": "/both/"}, "tokens": ["a", "b"]}]
    }));
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256"}),
        &json!({"exp": NOW + 60, "aud": "app-b"}),
    );
    assert_eq!(w.reason("/both/x", &[("x-t", &t)]), None);
}

/// A token naming an Android app pinned to its
/// signing certificate, sent with the fingerprint of another certificate
/// (a repackaged app that reports its own): `app_mismatch`. No test sent
/// a wrong certificate beside a token, so the certificate check of
/// `headers_agree` could be dropped with the whole suite passing.
#[test]
fn a_token_for_a_pinned_android_app_with_another_certificate_is_app_mismatch() {
    let w = World::new();
    let auth = "Bearer u1";
    let other = "00".repeat(32);
    let t = own_token("shop-android", "jc1", auth);
    assert_eq!(
        w.reason(
            "/attested/x",
            &[
                ("x-app-token", &t),
                ("authorization", auth),
                ANDROID[0],
                ("x-android-cert", &other)
            ]
        ),
        Some(Reason::AppMismatch)
    );
    // The pinned certificate passes.
    let t = own_token("shop-android", "jc2", auth);
    assert_eq!(
        w.reason(
            "/attested/x",
            &[
                ("x-app-token", &t),
                ("authorization", auth),
                ANDROID[0],
                ANDROID[1]
            ]
        ),
        None
    );
}

/// One `network` with both an allow list and a deny
/// list (the configuration's or a route's): an address in neither is
/// refused by the allow list, one in both by the deny list. Every test
/// gave a network one list or the other, so skipping the allow list
/// whenever a deny list was there passed the whole suite.
#[test]
fn a_network_with_both_lists_holds_each_of_them() {
    let mut v = config_json();
    v["network"]["ip_allow"] = json!(["192.0.2.0/24", "203.0.113.0/24"]);
    let w = World::from(v);
    assert_eq!(w.run("/open/x", "192.0.2.7", &[]).0.reason(), None);
    assert_eq!(
        w.run("/open/x", "198.51.100.1", &[]).0.reason(),
        Some(Reason::IpDenied),
        "outside the allow list"
    );
    assert_eq!(
        w.run("/open/x", "203.0.113.7", &[]).0.reason(),
        Some(Reason::IpDenied),
        "in both: the deny list wins"
    );
    // A route's own network, the same way.
    let mut v = config_json();
    v["routes"][6]["network"]["ip_deny"] = json!(["192.0.2.128/25"]);
    let w = World::from(v);
    let key = [("x-api-key", "key-office")];
    assert_eq!(w.run("/office/x", "192.0.2.5", &key).0.reason(), None);
    assert_eq!(
        w.run("/office/x", "198.51.100.1", &key).0.reason(),
        Some(Reason::IpDenied)
    );
    assert_eq!(
        w.run("/office/x", "192.0.2.200", &key).0.reason(),
        Some(Reason::IpDenied)
    );
}

#[test]
fn a_cached_token_is_not_decoded_again_to_choose_among_providers() {
    // On a route where two providers read one token (an
    // issuer migration: `legacy` names no issuer, `new` names it), the
    // choice is by fit; once a provider verified the token its cached
    // claims are used, "nothing decoded on the cached path" (the doc of
    // `choose_provider`). Since 01d22a4 the token's header is base64-
    // decoded and parsed as JSON on every request all the same, for the
    // `kid` of a tie-break that cannot happen here (the fits differ).
    let w = World::from(json!({
        "tokens": [
            {"name": "legacy", "from": [{"header": "x-t"}],
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]},
            {"name": "new", "from": [{"header": "x-t"}], "issuer": "https://iss.example",
             "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}
        ],
        "routes": [
            {"name": "both", "match": {"prefix": "/both/"}, "tokens": ["legacy", "new"]}
        ]
    }));
    let t = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k1"}),
        &json!({"exp": NOW + 60, "iss": "https://iss.example"}),
    );
    // Cold: decoded to choose, verified and cached.
    assert_eq!(w.reason("/both/x", &[("x-t", &t)]), None);
    crate::token::UNVERIFIED_DECODES.with(|n| n.set(0));
    // Warm: the cached claims choose; nothing of the token is decoded.
    assert_eq!(w.reason("/both/x", &[("x-t", &t)]), None);
    let decodes = crate::token::UNVERIFIED_DECODES.with(std::cell::Cell::get);
    assert_eq!(
        decodes, 0,
        "the cached path decoded the token {decodes} time(s) to choose its provider"
    );
}

#[test]
fn a_leased_per_second_limit_costs_a_hit_a_request_when_requests_are_a_second_apart() {
    // README (Leases): "A per-second limit therefore
    // keeps no lease from those services, and costs a hit a request as
    // without `lease`". That holds only while a worker's requests come
    // less than a second apart: the one-hit guard lasts a second after the
    // last answer (whose lease ended when it came), and a request after
    // that asks for a whole lease again, which the service counts and the
    // worker cannot keep. Twenty workers (Envoys, replicas) each seeing a
    // request every 1.5 s on one descriptor, 100 a second leased 10 at a
    // time: about 14 requests a second, each counted as 10, and the
    // service refuses about a third of them, far under the limit.
    let service = WindowService::new(100, crate::ratelimit::rls::Unit::Second);
    let workers: Vec<World> = (0..20).map(|_| lease_world_of(10)).collect();
    let start = (NOW + 1) * 1000 + 3;
    let mut refused_after_first_round = 0;
    let mut hits_after_first_round = Vec::new();
    for round in 0..10u64 {
        for (i, w) in workers.iter().enumerate() {
            let at = start + round * 1_500 + i as u64 * 20;
            match w.leased_get("/leased", "u1", at) {
                Step::NeedRateLimit(p, call) => {
                    let sent = rls_hits(&call);
                    if round > 0 {
                        hits_after_first_round.push(sent[0].1.unwrap_or(1));
                    }
                    let answer = service.count(&sent, at + 1);
                    match w.answer(p, &answer, at + 1) {
                        Step::Done(Decision::Allow(_), _) => {}
                        _ if round > 0 => refused_after_first_round += 1,
                        _ => {}
                    }
                }
                Step::Done(Decision::Allow(_), _) => {}
                _ if round > 0 => refused_after_first_round += 1,
                _ => {}
            }
        }
    }
    let whole = hits_after_first_round.iter().filter(|&&h| h > 1).count();
    assert_eq!(
        whole,
        0,
        "{whole} of {} asks after the first round were for a whole lease of a \
         per-second limit, which is never kept ({refused_after_first_round} refused)",
        hits_after_first_round.len()
    );
    assert_eq!(
        refused_after_first_round, 0,
        "refused at ~14 requests a second under a limit of 100 a second"
    );
}
