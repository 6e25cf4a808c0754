//! Hostile input through a real Envoy: token attacks that the unit tests
//! (src/token/tests.rs) prove on the core, proven here end to end with the
//! reason the client sees, and input attacks on headers, paths, origins,
//! client addresses, phone numbers and JSON bodies. After each suite the
//! Wasm VM must still be the one Envoy started (no crash, no reload) and
//! still decide correctly.

use crate::harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use harness::http::{Req, Resp};
use harness::tokens::{self, now, SECRET};
use harness::upstream::{Seen, Upstream};
use harness::{Envoy, EnvoyBuilder};
use jwt_simple::prelude::*;
use serde_json::{json, Value};

const ISS: &str = "https://issuer.example";
const API_KEY: &str = "attack-suite-key-1";

/// The JWKS server of the `remote` provider; it also answers any other path,
/// so a token that made the filter fetch a URL of its choosing would show.
fn jwks_server() -> Upstream {
    let jwks = json!({"keys": [tokens::ec_fixture_jwk("ec1")]}).to_string();
    Upstream::with_handler(Arc::new(move |_s: &Seen| {
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            jwks.clone().into_bytes(),
        )
    }))
}

fn config() -> Value {
    // failure_budget off: these suites send many forged tokens from one
    // address, and a spent budget would answer for the signature check.
    let no_budget = json!({"failures": 0});
    json!({
        "default_action": "allow",
        "client_ip": {"xff_trusted_hops": 1},
        "network": {"country_header": "x-country-code", "country_deny": ["KP"]},
        "apps": [
            {"id": "shop-web", "platform": "web",
             "origins": ["https://shop.example.com", "https://*.shop.example.com"]},
            {"id": "shop-android", "platform": "android", "package": "com.example.shop"}
        ],
        "api_keys": {"keys": [{"id": "k1", "sha256": appguard::identity::hash_api_key(API_KEY)}]},
        "phone": {"default_calling_code": "44", "denied_prefixes": ["+882"],
                  "hash_key_base64": STANDARD.encode(b"attack-suite-phone-hash-key-0123")},
        "tokens": [
            {"name": "hs", "from": [{"header": "approov-token"}],
             "keys": [{"kid": "hs1", "alg": "HS256", "secret_base64": tokens::secret_b64()}],
             "issuer": ISS, "audiences": ["api"], "failure_budget": no_budget},
            {"name": "bearer", "from": [{"header": "authorization", "prefix": "Bearer "}],
             "keys": [{"alg": "HS256", "secret_base64": tokens::secret_b64()}],
             "failure_budget": no_budget},
            {"name": "es", "from": [{"header": "x-token"}],
             "jwks": {"keys": [tokens::ec_fixture_jwk("ec1"), tokens::rsa_fixture_jwk("rsa1")]},
             "failure_budget": no_budget},
            {"name": "remote", "from": [{"header": "x-remote-token"}],
             "remote_jwks": {"cluster": "jwks", "path": "/jwks.json", "timeout_ms": 1000,
                             "min_refetch_seconds": 30, "refresh_seconds": 600},
             "failure_budget": no_budget}
        ],
        "routes": [
            {"name": "hs", "match": {"prefix": "/hs"}, "tokens": ["hs"]},
            {"name": "bearer", "match": {"prefix": "/bearer"}, "tokens": ["bearer"]},
            {"name": "es", "match": {"prefix": "/es"}, "tokens": ["es"]},
            {"name": "remote", "match": {"prefix": "/remote"}, "tokens": ["remote"]},
            {"name": "sms-admin", "match": {"prefix": "/v1/sms"}, "action": "deny"},
            {"name": "admin", "match": {"path": "/v1/admin"}, "action": "deny"},
            {"name": "web", "match": {"prefix": "/web"}, "platforms": ["web"]},
            {"name": "android", "match": {"prefix": "/android"}, "platforms": ["android"]},
            {"name": "key", "match": {"prefix": "/key"}, "api_key": "required"},
            {"name": "net", "match": {"prefix": "/net"},
             "network": {"ip_deny": ["2001:db8::/32", "10.0.0.0/8"]}},
            {"name": "link-local", "match": {"prefix": "/only-fe80"},
             "network": {"ip_allow": ["fe80::/10"]}},
            {"name": "sms", "match": {"path": "/sms", "methods": ["POST"]},
             "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                              "local": {"requests": 2, "per": "hour"}}]}
        ]
    })
}

/// Envoy with the attack configuration, its upstream and the JWKS server.
struct Rig {
    envoy: Envoy,
    up: Upstream,
    jwks: Upstream,
}

fn start() -> Rig {
    let jwks = jwks_server();
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(), up.port)
        .http_cluster("jwks", jwks.port)
        .start();
    Rig { envoy, up, jwks }
}

/// A compact JWS over these exact header and payload texts (duplicate
/// members, odd numbers: what serde_json would never write), HS256 with the
/// tests' secret.
fn hs_raw(header: &str, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), SECRET);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
}

/// Claims the `hs` provider accepts, plus `extra`.
fn hs_claims(extra: Value) -> Value {
    let mut c = tokens::claims(60, json!({"iss": ISS, "aud": "api"}));
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn hs_with(header: Value, extra: Value) -> String {
    tokens::hs256_raw(SECRET, &header, &hs_claims(extra))
}

fn good_hs() -> String {
    hs_with(
        json!({"alg": "HS256", "typ": "JWT", "kid": "hs1"}),
        json!({}),
    )
}

fn hs_req(token: &str) -> Req {
    Req::get("/hs/x").header("approov-token", token)
}

/// Sends every (label, request) and expects 401 with `reason`.
fn expect_401(envoy: &Envoy, reason: &str, cases: Vec<(String, Req)>) {
    for (label, req) in cases {
        let r = envoy.request(req);
        assert_eq!(
            (r.status, r.reason()),
            (401, Some(reason)),
            "{label}: {}",
            r.text()
        );
    }
}

// ---------------------------------------------------------------------------
// Token attacks
// ---------------------------------------------------------------------------

#[test]
fn crit_jwk_jku_x5u_x5c_headers_are_malformed_and_no_key_url_is_fetched() {
    let rig = start();
    let jwks = format!("http://127.0.0.1:{}", rig.jwks.port);
    // Each is correctly signed with the genuine secret: only the header
    // member is wrong.
    let base = json!({"alg": "HS256", "kid": "hs1"});
    let with = |k: &str, v: Value| {
        let mut h = base.clone();
        h[k] = v;
        hs_with(h, json!({}))
    };
    let mut cases = vec![
        ("crit exp".to_string(), with("crit", json!(["exp"]))),
        ("crit unknown".into(), with("crit", json!(["x-ext"]))),
        ("crit empty".into(), with("crit", json!([]))),
        (
            "jku to attacker".into(),
            with("jku", json!(format!("{jwks}/attacker-jwks.json"))),
        ),
        (
            "x5u to attacker".into(),
            with("x5u", json!(format!("{jwks}/attacker-cert.pem"))),
        ),
        ("x5c".into(), with("x5c", json!(["MIIBszCCAVmgAwIBAgIU"]))),
        (
            "jwk oct".into(),
            with(
                "jwk",
                json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET)}),
            ),
        ),
    ]
    .into_iter()
    .map(|(l, t)| (l, hs_req(&t)))
    .collect::<Vec<_>>();
    // An attacker's own EC key, offered in `jwk` and used to sign: the
    // classic embedded-key attack on the ES provider.
    let attacker = ES256KeyPair::generate();
    let jwk = tokens::es256_jwk(&attacker, "ec1");
    let claims = tokens::claims(60, json!({}));
    let signed_by_attacker = |header: Value| es256_raw(&attacker, &header, &claims);
    for (label, h) in [
        (
            "jwk with kid",
            json!({"alg": "ES256", "kid": "ec1", "jwk": jwk}),
        ),
        ("jwk without kid", json!({"alg": "ES256", "jwk": jwk})),
    ] {
        let t = signed_by_attacker(h);
        cases.push((label.into(), Req::get("/es/x").header("x-token", &t)));
    }
    // The provider that can fetch keys (`remote`, from its configured
    // JWKS URL) offered a key URL in the header: `jku` and `x5u` at the
    // attacker's path on the very server the JWKS comes from, in tokens
    // genuinely signed with the key that JWKS holds (`ec1`), and with a
    // `kid` the JWKS lacks (which makes the provider look for keys).
    let genuine = ES256KeyPair::from_pem(tokens::EC_PRIV).unwrap();
    let remote_cases = [
        ("remote jku", "ec1", "jku", "attacker-jwks.json"),
        ("remote x5u", "ec1", "x5u", "attacker-cert.pem"),
        (
            "remote jku, unknown kid",
            "ec9",
            "jku",
            "attacker-jwks.json",
        ),
        ("remote x5u, unknown kid", "ec9", "x5u", "attacker-cert.pem"),
    ];
    for (label, kid, member, file) in remote_cases {
        let t = es256_raw(
            &genuine,
            &json!({"alg": "ES256", "kid": kid, member: format!("{jwks}/{file}")}),
            &claims,
        );
        cases.push((
            label.into(),
            Req::get("/remote/x").header("x-remote-token", &t),
        ));
    }
    expect_401(&rig.envoy, "token_malformed", cases);
    assert_eq!(
        rig.envoy
            .stat("appguard_decisions.route.remote.decision.deny.reason.token_malformed"),
        Some(remote_cases.len() as u64),
        "the key-URL tokens were decided by the remote provider"
    );
    // Without the `jwk` member the attacker's token is just a bad signature:
    // the member changes the reason, never the outcome.
    let plain = signed_by_attacker(json!({"alg": "ES256", "kid": "ec1"}));
    let r = rig
        .envoy
        .request(Req::get("/es/x").header("x-token", &plain));
    assert_eq!((r.status, r.reason()), (401, Some("token_signature")));
    // No URL a token named was ever fetched.
    let fetched: Vec<String> = rig.jwks.seen().iter().map(|s| s.path.clone()).collect();
    assert!(
        fetched.iter().all(|p| p == "/jwks.json"),
        "a token-supplied URL was fetched: {fetched:?}"
    );
    assert!(rig.up.seen().is_empty(), "a refused token reached upstream");
    // The genuine tokens still pass, the remote provider's with the keys
    // of its configured URL, which was fetched.
    assert_eq!(rig.envoy.request(hs_req(&good_hs())).status, 200);
    let t = tokens::es256("ec1", &claims);
    let r = rig
        .envoy
        .request(Req::get("/remote/x").header("x-remote-token", &t));
    assert_eq!(r.status, 200, "{}", r.text());
    let fetched: Vec<String> = rig.jwks.seen().iter().map(|s| s.path.clone()).collect();
    assert!(
        fetched.iter().all(|p| p == "/jwks.json") && !fetched.is_empty(),
        "{fetched:?}"
    );
    rig.envoy.assert_vm_healthy();
}

/// A compact JWS over exactly this header, ES256 with `key` (jwt-simple
/// signs only a header of its own making).
fn es256_raw(key: &ES256KeyPair, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sk = p256::ecdsa::SigningKey::from_slice(&key.to_bytes()).unwrap();
    let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&sk, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

#[test]
fn psychic_and_degenerate_ecdsa_signatures_are_refused() {
    let rig = start();
    let good = tokens::es256("ec1", &tokens::claims(60, json!({})));
    let (input, sig) = good.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    // The order n of P-256: r = s = n is r = s = 0 modulo n.
    let n = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    let mut variants: Vec<(&str, Vec<u8>)> = vec![
        ("r = s = 0 (CVE-2022-21449)", vec![0; 64]),
        ("r = s = n", [n.clone(), n.clone()].concat()),
        (
            "r = 0, s genuine",
            [vec![0; 32], sig[32..].to_vec()].concat(),
        ),
        (
            "r genuine, s = 0",
            [sig[..32].to_vec(), vec![0; 32]].concat(),
        ),
        ("all ones", vec![0xff; 64]),
        ("r = s = 1", [one32(), one32()].concat()),
        ("one byte short", sig[..63].to_vec()),
        ("one byte long", [sig.clone(), vec![0]].concat()),
    ];
    // DER instead of the raw r||s of JWS (RFC 7518 §3.4): refused, not
    // re-interpreted.
    let der = p256::ecdsa::Signature::from_slice(&sig).unwrap().to_der();
    variants.push(("DER encoded", der.as_bytes().to_vec()));
    let cases = variants
        .into_iter()
        .map(|(label, s)| {
            let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(s));
            (label.to_string(), Req::get("/es/x").header("x-token", &t))
        })
        .collect();
    expect_401(&rig.envoy, "token_signature", cases);
    assert!(rig.up.seen().is_empty());
    let r = rig
        .envoy
        .request(Req::get("/es/x").header("x-token", &good));
    assert_eq!(r.status, 200, "{}", r.text());
    rig.envoy.assert_vm_healthy();
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn one32() -> Vec<u8> {
    let mut v = vec![0; 32];
    v[31] = 1;
    v
}

#[test]
fn kid_injection_is_only_ever_an_unknown_kid() {
    let rig = start();
    let hostile = [
        "../../../../etc/passwd",
        "/dev/null",
        "file:///etc/shadow",
        "' OR '1'='1",
        "hs1' --",
        "hs1\"; DROP TABLE keys; --",
        "$(touch /tmp/appguard-pwned)",
        "`id`",
        "hs1\u{0000}",
        "hs1%00",
        "hs1/../hs1",
        "HS1",
        "hs1 ",
        " hs1",
        "hs\u{0131}",
        "http://127.0.0.1:1/jwks",
    ];
    let mut cases: Vec<(String, Req)> = hostile
        .iter()
        .map(|kid| {
            let t = hs_with(json!({"alg": "HS256", "kid": kid}), json!({}));
            (format!("kid {kid:?}"), hs_req(&t))
        })
        .collect();
    // The longest kid accepted by size (256 bytes) is just unknown too.
    let t = hs_with(json!({"alg": "HS256", "kid": "k".repeat(256)}), json!({}));
    cases.push(("256-byte kid".into(), hs_req(&t)));
    // Against a remote JWKS an unknown kid may trigger one re-fetch: of the
    // configured path, never of anything the kid says.
    for kid in ["../../admin?x=", "/etc/passwd", "http://127.0.0.1:1/x"] {
        let t = tokens::es256(kid, &tokens::claims(60, json!({})));
        cases.push((
            format!("remote kid {kid:?}"),
            Req::get("/remote/x").header("x-remote-token", &t),
        ));
    }
    expect_401(&rig.envoy, "token_signature", cases);
    // Over 256 bytes, and far over (the whole token past max_token_bytes):
    // refused by size before any lookup.
    let long = hs_with(json!({"alg": "HS256", "kid": "k".repeat(257)}), json!({}));
    let huge = hs_with(json!({"alg": "HS256", "kid": "k".repeat(4000)}), json!({}));
    let not_text = hs_with(json!({"alg": "HS256", "kid": ["hs1"]}), json!({}));
    expect_401(
        &rig.envoy,
        "token_malformed",
        vec![
            ("257-byte kid".into(), hs_req(&long)),
            ("4000-byte kid".into(), hs_req(&huge)),
            ("kid not a string".into(), hs_req(&not_text)),
        ],
    );
    let fetched: Vec<String> = rig.jwks.seen().iter().map(|s| s.path.clone()).collect();
    assert!(!fetched.is_empty(), "the remote provider fetched its keys");
    assert!(
        fetched.iter().all(|p| p == "/jwks.json"),
        "the kid reached the fetch: {fetched:?}"
    );
    assert!(rig.up.seen().is_empty());
    assert_eq!(rig.envoy.request(hs_req(&good_hs())).status, 200);
    let remote_ok = tokens::es256("ec1", &tokens::claims(60, json!({})));
    let r = rig
        .envoy
        .request(Req::get("/remote/x").header("x-remote-token", &remote_ok));
    assert_eq!(r.status, 200, "{}", r.text());
    rig.envoy.assert_vm_healthy();
}

#[test]
fn duplicated_and_nested_claims_are_refused() {
    let rig = start();
    let n = now();
    let (iat, exp) = (n, n + 60);
    let std = format!(r#""iss":"{ISS}","aud":"api","iat":{iat}"#);
    let h = r#"{"alg":"HS256","kid":"hs1"}"#;
    let malformed = [
        (
            "duplicate exp",
            format!(r#"{{{std},"exp":{exp},"exp":{}}}"#, exp + 99_999),
        ),
        (
            "duplicate iss",
            format!(r#"{{{std},"exp":{exp},"iss":"https://evil"}}"#),
        ),
        (
            "duplicate nested",
            format!(r#"{{{std},"exp":{exp},"ctx":{{"a":1,"a":2}}}}"#),
        ),
        (
            "duplicate by escape",
            format!(r#"{{{std},"exp":{exp},"\u0065xp":{}}}"#, exp + 99_999),
        ),
        (
            "exp nested in an object",
            format!(r#"{{{std},"exp":{{"exp":{exp}}}}}"#),
        ),
        ("exp in an array", format!(r#"{{{std},"exp":[{exp}]}}"#)),
        (
            "nested 20 deep",
            format!(
                r#"{{{std},"exp":{exp},"x":{}1{}}}"#,
                r#"{"a":"#.repeat(20),
                "}".repeat(20)
            ),
        ),
        ("trailing data", format!(r#"{{{std},"exp":{exp}}} {{}}"#)),
        ("not an object", format!(r#"[{{{std},"exp":{exp}}}]"#)),
        (
            "byte order mark",
            format!("\u{feff}{{{std},\"exp\":{exp}}}"),
        ),
        ("a comment", format!(r#"{{{std},"exp":{exp} /* hi */}}"#)),
        (
            "lone surrogate",
            format!(r#"{{{std},"exp":{exp},"s":"\ud800"}}"#),
        ),
    ];
    let mut cases: Vec<(String, Req)> = malformed
        .iter()
        .map(|(l, p)| (l.to_string(), hs_req(&hs_raw(h, p))))
        .collect();
    // Duplicates in the header: which `alg` would a second parser read?
    let p = format!(r#"{{{std},"exp":{exp}}}"#);
    for (l, hh) in [
        (
            "duplicate alg",
            r#"{"alg":"HS256","alg":"none","kid":"hs1"}"#,
        ),
        (
            "duplicate kid",
            r#"{"alg":"HS256","kid":"other","kid":"hs1"}"#,
        ),
    ] {
        cases.push((l.into(), hs_req(&hs_raw(hh, &p))));
    }
    expect_401(&rig.envoy, "token_malformed", cases);
    // Claims of the wrong shape are not the configured issuer or audience.
    let claims = [
        ("iss in an array", json!({"iss": [ISS]})),
        ("iss as an object", json!({"iss": {"iss": ISS}})),
        ("aud nested twice", json!({"aud": [["api"]]})),
        ("aud as an object", json!({"aud": {"api": true}})),
        ("aud as a number", json!({"aud": 1})),
        ("iss with a NUL", json!({"iss": format!("{ISS}\u{0000}")})),
    ];
    let cases = claims
        .iter()
        .map(|(l, c)| {
            (
                l.to_string(),
                hs_req(&hs_with(json!({"alg": "HS256"}), c.clone())),
            )
        })
        .collect();
    expect_401(&rig.envoy, "token_claims", cases);
    assert!(rig.up.seen().is_empty());
    // The same token with each claim once passes.
    let r = rig.envoy.request(hs_req(&hs_raw(h, &p)));
    assert_eq!(r.status, 200, "{}", r.text());
    rig.envoy.assert_vm_healthy();
}

#[test]
fn time_claims_that_are_not_non_negative_numbers_are_malformed() {
    let rig = start();
    let n = now();
    let good_exp = (n + 60).to_string();
    let good_iat = n.to_string();
    // As JSON text, so that overflowing and odd numbers are sent as written.
    // (A fraction or an exponent is a NumericDate: RFC 7519 §2; below.)
    let odd = [
        "\"1900000000\"",
        "-1",
        "-0",
        "-0.5",
        "1e300",
        "18446744073709551616",
        "99999999999999999999999999",
        "18446744073709551615",
        "1099511627776",
        "true",
        "null",
        "[1]",
        "{\"$numberLong\":\"1\"}",
    ];
    let h = r#"{"alg":"HS256","kid":"hs1"}"#;
    let mut cases = Vec::new();
    for v in odd {
        for (claim, payload) in [
            (
                "exp",
                format!(r#"{{"iss":"{ISS}","aud":"api","iat":{good_iat},"exp":{v}}}"#),
            ),
            (
                "iat",
                format!(r#"{{"iss":"{ISS}","aud":"api","iat":{v},"exp":{good_exp}}}"#),
            ),
            (
                "nbf",
                format!(
                    r#"{{"iss":"{ISS}","aud":"api","iat":{good_iat},"nbf":{v},"exp":{good_exp}}}"#
                ),
            ),
        ] {
            cases.push((format!("{claim} = {v}"), hs_req(&hs_raw(h, &payload))));
        }
    }
    expect_401(&rig.envoy, "token_malformed", cases);
    assert!(rig.up.seen().is_empty());
    let p = format!(
        r#"{{"iss":"{ISS}","aud":"api","iat":{good_iat},"nbf":{good_iat},"exp":{good_exp}}}"#
    );
    assert_eq!(rig.envoy.request(hs_req(&hs_raw(h, &p))).status, 200);
    // With a fraction, or written with an exponent, as jwt_authn takes them.
    for p in [
        format!(
            r#"{{"iss":"{ISS}","aud":"api","iat":{good_iat}.25,"nbf":{}.5,"exp":{good_exp}.75}}"#,
            n - 2
        ),
        format!(
            r#"{{"iss":"{ISS}","aud":"api","iat":{n}e0,"exp":{}E+0}}"#,
            n + 60
        ),
    ] {
        let r = rig.envoy.request(hs_req(&hs_raw(h, &p)));
        assert_eq!(r.status, 200, "{p}: {}", r.text());
    }
    rig.envoy.assert_vm_healthy();
}

#[test]
fn base64_padding_alphabet_and_structure_variants_are_malformed() {
    let rig = start();
    // A token whose signature holds a `-` or `_`, so that the standard
    // alphabet gives a different string.
    let (good, (h, p, s)) = (0..)
        .map(|i| hs_with(json!({"alg": "HS256", "kid": "hs1"}), json!({"n": i})))
        .find_map(|t| {
            let mut it = t.split('.');
            let parts = (
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            );
            (parts.2.contains('-') || parts.2.contains('_')).then_some((t, parts))
        })
        .unwrap();
    // The 32-byte HMAC is 43 characters; the last one carries 4 unused
    // bits. Setting them gives a non-canonical encoding of the same bytes.
    let last = s.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let noncanonical_last = alphabet.chars().nth(idx | 0b11).unwrap();
    let noncanonical = format!("{h}.{p}.{}{noncanonical_last}", &s[..s.len() - 1]);
    assert_ne!(
        noncanonical, good,
        "the fixture needs a canonical last char"
    );
    let variants = [
        ("padded header", format!("{h}=.{p}.{s}")),
        ("padded payload", format!("{h}.{p}==.{s}")),
        ("padded signature", format!("{h}.{p}.{s}=")),
        (
            "standard alphabet",
            format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/")),
        ),
        ("non-canonical last character", noncanonical),
        ("space inside", format!("{h}. {p}.{s}")),
        ("tab inside", format!("{h}.{p}\t.{s}")),
        ("leading dot", format!(".{h}.{p}.{s}")),
        ("trailing dot", format!("{h}.{p}.{s}.")),
        ("empty payload", format!("{h}..{s}")),
        ("percent-encoded dots", format!("{h}%2E{p}%2E{s}")),
        ("four parts", format!("{h}.{p}.{s}.{s}")),
        ("header as JSON", format!(r#"{{"alg":"HS256"}}.{p}.{s}"#)),
    ];
    let cases = variants
        .iter()
        .map(|(l, t)| (l.to_string(), hs_req(t)))
        .collect();
    expect_401(&rig.envoy, "token_malformed", cases);
    assert!(rig.up.seen().is_empty());
    assert_eq!(rig.envoy.request(hs_req(&good)).status, 200);
    rig.envoy.assert_vm_healthy();
}

/// Sends raw request bytes and reads whatever comes back, tolerating a
/// connection Envoy closes while the request is still being written.
fn send_raw(port: u16, raw: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    line.split(' ').nth(1).and_then(|c| c.parse().ok())
}

#[test]
fn a_one_megabyte_token_is_refused_by_envoy_and_a_large_one_by_appguard() {
    let rig = start();
    // 1 MB: over Envoy's own request-header limit (max_request_headers_kb,
    // 60 KiB by default), so Envoy's codec answers 431 before any filter
    // runs; the connection may also be reset while the client still writes.
    let big = format!(
        "{}.{}.{}",
        "a".repeat(500_000),
        "b".repeat(500_000),
        "c".repeat(48_576)
    );
    let raw = format!(
        "GET /hs/x HTTP/1.1\r\nhost: localhost\r\napproov-token: {big}\r\nconnection: close\r\n\r\n"
    );
    let status = send_raw(rig.envoy.port, raw.as_bytes());
    eprintln!("1 MB token: Envoy answered {status:?}");
    assert!(
        matches!(status, Some(431) | None),
        "1 MB token: expected Envoy's 431 (or a reset), got {status:?}"
    );
    // Many headers that together pass the limit: 431 as well.
    let many: String = (0..70)
        .map(|i| format!("x-pad-{i}: {}\r\n", "p".repeat(1000)))
        .collect();
    let raw = format!("GET /hs/x HTTP/1.1\r\nhost: localhost\r\n{many}connection: close\r\n\r\n");
    assert_eq!(send_raw(rig.envoy.port, raw.as_bytes()), Some(431));
    // More than 100 headers (max_headers_count): 431.
    let count: String = (0..120).map(|i| format!("x-h-{i}: v\r\n")).collect();
    let raw = format!("GET /hs/x HTTP/1.1\r\nhost: localhost\r\n{count}connection: close\r\n\r\n");
    assert_eq!(send_raw(rig.envoy.port, raw.as_bytes()), Some(431));
    // Under Envoy's limit but over max_token_bytes (4096): appguard refuses
    // it by size, before decoding. A real signed token, 40 KB of claims.
    let fat = hs_with(
        json!({"alg": "HS256", "kid": "hs1"}),
        json!({"pad": "z".repeat(40_000)}),
    );
    // The shortest such token just over the limit.
    let just_over = (2000..)
        .map(|pad| {
            hs_with(
                json!({"alg": "HS256", "kid": "hs1"}),
                json!({"pad": "z".repeat(pad)}),
            )
        })
        .find(|t| t.len() > 4096)
        .unwrap();
    assert!(just_over.len() <= 4099);
    expect_401(
        &rig.envoy,
        "token_malformed",
        vec![
            (format!("{} KB token", fat.len() / 1024), hs_req(&fat)),
            (
                format!("{}-byte token", just_over.len()),
                hs_req(&just_over),
            ),
        ],
    );
    assert!(
        rig.up.seen().is_empty(),
        "an oversized token reached upstream"
    );
    assert_eq!(rig.envoy.request(hs_req(&good_hs())).status, 200);
    rig.envoy.assert_vm_healthy();
}

#[test]
fn a_token_header_repeated_with_different_values_is_refused() {
    let rig = start();
    let good = good_hs();
    let other = hs_with(
        json!({"alg": "HS256", "kid": "hs1"}),
        json!({"sub": "other"}),
    );
    let bearer = tokens::hs256(&tokens::claims(60, json!({})));
    let cases = vec![
        (
            "valid then garbage".to_string(),
            Req::get("/hs/x")
                .header("approov-token", &good)
                .header("approov-token", "garbage"),
        ),
        (
            "garbage then valid".into(),
            Req::get("/hs/x")
                .header("approov-token", "garbage")
                .header("approov-token", &good),
        ),
        (
            "two valid tokens".into(),
            Req::get("/hs/x")
                .header("approov-token", &good)
                .header("approov-token", &other),
        ),
        (
            "same name, other case".into(),
            Req::get("/hs/x")
                .header("Approov-Token", &good)
                .header("APPROOV-TOKEN", &other),
        ),
        (
            "empty second copy".into(),
            Req::get("/hs/x")
                .header("approov-token", &good)
                .header("approov-token", ""),
        ),
        (
            // Envoy joins repeated `authorization` lines into one value
            // ("Bearer a,Bearer b"), which is no token.
            "two bearer tokens".into(),
            Req::get("/bearer/x")
                .header("authorization", &format!("Bearer {bearer}"))
                .header("authorization", "Bearer x.y.z"),
        ),
    ];
    expect_401(&rig.envoy, "token_malformed", cases);
    assert!(rig.up.seen().is_empty());
    // Two identical copies are not ambiguous.
    let r = rig.envoy.request(
        Req::get("/hs/x")
            .header("approov-token", &good)
            .header("approov-token", &good),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rig.up.last().header("approov-token"), None, "token removed");
    rig.envoy.assert_vm_healthy();
}

// ---------------------------------------------------------------------------
// Input attacks
// ---------------------------------------------------------------------------

fn deny(envoy: &Envoy, req: Req, status: u16, reason: &str, label: &str) {
    let r = envoy.request(req);
    assert_eq!(
        (r.status, r.reason()),
        (status, Some(reason)),
        "{label}: {}",
        r.text()
    );
}

#[test]
fn duplicated_security_headers_are_refused_or_read_unambiguously() {
    let rig = start();
    let e = &rig.envoy;
    deny(
        e,
        Req::get("/key/x")
            .header("x-api-key", API_KEY)
            .header("x-api-key", "another-key"),
        403,
        "api_key_invalid",
        "valid key then another",
    );
    deny(
        e,
        Req::get("/key/x")
            .header("x-api-key", "another-key")
            .header("x-api-key", API_KEY),
        403,
        "api_key_invalid",
        "another key then the valid one",
    );
    deny(
        e,
        Req::get("/key/x")
            .header("x-country-code", "US")
            .header("x-country-code", "KP")
            .header("x-api-key", API_KEY),
        403,
        "country_denied",
        "two countries",
    );
    // X-Forwarded-For lines are one list (Envoy joins them, RFC 9110
    // §5.3); the trusted hop is the rightmost entry whatever the split.
    deny(
        e,
        Req::get("/net/x")
            .header("x-forwarded-for", "192.0.2.1")
            .header("x-forwarded-for", "10.1.2.3"),
        403,
        "ip_denied",
        "denied address in the second XFF line",
    );
    let r = e.request(
        Req::get("/net/x")
            .header("x-forwarded-for", "10.1.2.3")
            .header("x-forwarded-for", "192.0.2.1"),
    );
    assert_eq!(r.status, 200, "a client-written entry left of the hop");
    // Envoy joins repeated `origin` lines too: the joined value is no origin.
    deny(
        e,
        Req::get("/web/x")
            .header("origin", "https://shop.example.com")
            .header("origin", "https://evil.example"),
        403,
        "origin_denied",
        "two origins",
    );
    assert_eq!(rig.up.seen().len(), 1);
    e.assert_vm_healthy();
}

#[test]
fn a_platform_header_repeated_with_different_values_is_app_mismatch() {
    let rig = start();
    // One copy names the genuine app, the other another package: the
    // evidence disagrees with itself, so it cannot agree with anything.
    for (first, second) in [
        ("com.example.shop", "com.evil.app"),
        ("com.evil.app", "com.example.shop"),
    ] {
        let r = rig.envoy.request(
            Req::get("/android/x")
                .header("x-android-package", first)
                .header("x-android-package", second),
        );
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("app_mismatch")),
            "{first} + {second}: {}",
            r.text()
        );
    }
    assert!(rig.up.seen().is_empty());
}

#[test]
fn oversized_header_values_are_refused_without_harm() {
    let rig = start();
    let e = &rig.envoy;
    let big = "k".repeat(59 * 1024);
    // A sent key over 256 bytes is no key of ours: invalid, not missing
    // (on an optional-key route it must not pass as "no key").
    deny(
        e,
        Req::get("/key/x").header("x-api-key", &big),
        403,
        "api_key_invalid",
        "59 KB API key",
    );
    deny(
        e,
        Req::get("/web/x").header("origin", &format!("https://{big}.shop.example.com")),
        403,
        "origin_denied",
        "59 KB origin",
    );
    deny(
        e,
        Req::get("/net/x").header("x-forwarded-for", &big),
        403,
        "ip_denied",
        "59 KB XFF entry",
    );
    // A chain of 3000 hops is read from the right only, as far as the
    // trusted hop: the client is its last entry, whatever is padded before.
    let hops = vec!["192.0.2.1"; 3000].join(",") + ",10.1.2.3";
    deny(
        e,
        Req::get("/net/x").header("x-forwarded-for", &hops),
        403,
        "ip_denied",
        "3000 XFF hops before a denied client",
    );
    deny(
        e,
        Req::get("/android/x").header("x-android-package", &big),
        403,
        "app_unknown",
        "59 KB package",
    );
    assert!(e.log().contains("deny"), "decisions were logged");
    assert!(
        !e.log().contains(&big[..1024]),
        "a header value was logged in full"
    );
    assert!(rig.up.seen().is_empty());
    // ... and an allowed client behind 3000 denied ones passes: the padding
    // is never read.
    let hops = vec!["10.1.2.3"; 3000].join(",") + ",192.0.2.1";
    let r = e.request(Req::get("/net/x").header("x-forwarded-for", &hops));
    assert_eq!(
        (r.status, r.reason()),
        (200, None),
        "3000 denied hops before an allowed client"
    );
    assert_eq!(rig.up.seen().len(), 1);
    e.assert_vm_healthy();
}

#[test]
fn header_values_that_are_not_utf8_never_crash_the_vm() {
    let rig = start();
    let e = &rig.envoy;
    // Invalid UTF-8: a lone continuation byte, an overlong `/`, a UTF-16
    // surrogate, bytes that never occur, a truncated sequence.
    let junk: [&[u8]; 5] = [
        b"\x80abc",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xff\xfe",
        b"ok\xe2\x82",
    ];
    for j in junk {
        let label = format!("{j:x?}");
        let good = good_hs();
        let mut token = good.clone().into_bytes();
        token.extend_from_slice(j);
        let r = e.request(Req::get("/hs/x").header_bytes("approov-token", &token));
        assert_eq!(
            (r.status, r.reason()),
            (401, Some("token_malformed")),
            "token {label}"
        );
        let r = e.request(Req::get("/key/x").header_bytes("x-api-key", j));
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("api_key_invalid")),
            "key {label}"
        );
        let mut origin = b"https://shop.example.com".to_vec();
        origin.extend_from_slice(j);
        let r = e.request(Req::get("/web/x").header_bytes("origin", &origin));
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("origin_denied")),
            "origin {label}"
        );
        let r = e.request(Req::get("/net/x").header_bytes("x-forwarded-for", j));
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("ip_denied")),
            "xff {label}"
        );
        let r = e.request(Req::get("/android/x").header_bytes("x-android-package", j));
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("app_unknown")),
            "package {label}"
        );
        // A spoofed identity header with junk bytes is still removed (the
        // test upstream cannot read a header that is not UTF-8: had it been
        // forwarded, the upstream would have reset and Envoy answered 503).
        let r = e.request(
            Req::get("/hs/x")
                .header("approov-token", &good)
                .header_bytes("x-appguard-app", j)
                .header_bytes("x-appguard-platform", j),
        );
        assert_eq!(r.status, 200, "spoof {label}: {}", r.text());
        let seen = rig.up.last();
        assert!(
            seen.headers
                .iter()
                .all(|(k, _)| !k.starts_with("x-appguard-")),
            "spoofed header reached upstream: {:?}",
            seen.headers
        );
        // A country that is not two letters is no code a trusted component
        // writes: refused, even by a deny list that does not name it.
        let r = e.request(Req::get("/key/x").header_bytes("x-country-code", j));
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("country_denied")),
            "country {label}"
        );
    }
    // A name that is not a token (RFC 9110 §5.1) is refused by Envoy's codec.
    let status = send_raw(
        e.port,
        b"GET /hs/x HTTP/1.1\r\nhost: localhost\r\nx-\xffname: 1\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status, Some(400));
    assert_eq!(rig.up.seen().len(), junk.len());
    // Later requests are still decided, by the same VM.
    assert_eq!(e.request(hs_req(&good_hs())).status, 200);
    deny(e, hs_req("x.y.z"), 401, "token_malformed", "after the junk");
    e.assert_vm_healthy();
}

/// Path variants against the deny routes `/v1/sms` (prefix) and `/v1/admin`
/// (exact), with `default_action: allow`, so that a bypass would reach the
/// upstream. Envoy's connection manager normalises the path before any
/// filter (`normalize_path`: RFC 3986 dot segments and percent-decoding of
/// unreserved characters, backslashes as slashes; `merge_slashes`;
/// `path_with_escaped_slashes_action: REJECT_REQUEST` answers 400 to
/// `%2F`/`%5C`), and appguard and the upstream both see that path.
#[test]
fn path_tricks_cannot_bypass_a_deny_route() {
    let rig = start();
    let e = &rig.envoy;
    // Normalised onto the denied path, then refused by appguard.
    let refused_by_appguard = [
        "/v1/sms",
        "/v1/sms/send",
        "/v1/%73ms",
        "/v1/%73%6D%73/send",
        "/v1/%73%6d%73",
        "/v1//sms",
        "/v1///sms",
        "//v1/sms",
        "/v1/./sms",
        "/v1/x/../sms",
        "/v1/%2e/sms",
        "/v1/%2E%2E/v1/sms",
        "/x/%2e%2e/v1/sms",
        "/v1\\sms",
        "/v1/sms/../sms/send",
        "/v1/sms-bulk",
        "/v1/sms;x=1",
        "/v1/sms?to=/public",
        "/v1/admin",
        "/v1//admin",
        "/v1/%61dmin",
        "/v1/./admin",
        "/v1/admin?x=1",
        // `;` parameters, which Tomcat or Spring drop before routing, and
        // one trailing slash on an exact path: the route of the handler
        // such an upstream serves.
        "/v1;x/sms",
        "/v1/sms;x/send",
        "/v1/admin/",
        "/v1/admin;jsessionid=1",
        "/v1;a=b/admin;c",
        // Dot and empty segments hidden in `;` parameters. Envoy resolves
        // `..;` itself (see below), but decodes `%2e%2e;` into one only
        // after, and keeps `/;x/`; Tomcat or Spring resolve them after
        // dropping the parameters (`/open/..;/v1/sms` serves `/v1/sms`).
        // No route is trusted with them, though unrouted paths are allowed
        // here.
        "/open/..;/v1/sms",
        "/open/..;x=1/v1/admin",
        "/open/%2e%2e;/v1/sms",
        "/open/%2E%2e;x/v1/admin",
        "/v1/;x/sms",
        "/v1/;/admin",
    ];
    for p in refused_by_appguard {
        deny(e, Req::get(p), 403, "route_denied", p);
    }
    // Refused by Envoy before any filter: encoded slashes and backslashes,
    // NUL, a fragment, no leading slash, raw non-ASCII.
    let refused_by_envoy: [&[u8]; 10] = [
        b"/v1%2Fsms",
        b"/v1%2fsms",
        b"/v1/sms%2F",
        b"/v1%5Csms",
        b"/v1/%2e%2e%2Fv1/sms",
        b"/v1/%00sms",
        b"/v1/sms#frag",
        b"v1/sms",
        b"/v1/s\xc5\xbfms",
        b"/v1/s\xffms",
    ];
    for p in refused_by_envoy {
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(p);
        raw.extend_from_slice(b" HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        assert_eq!(
            send_raw(e.port, &raw),
            Some(400),
            "{}",
            String::from_utf8_lossy(p)
        );
    }
    // Paths that normalise to something else are that something else, for
    // appguard and the upstream alike (matching is case-sensitive, as
    // Envoy's own routes are).
    let elsewhere = [
        ("/v1/sms/..", "/v1/"),
        ("/v1/sms/%2e%2e", "/v1/"),
        ("/V1/SMS", "/V1/SMS"),
        ("/v1/%53ms", "/v1/Sms"),
        ("/v1/%C5%BFms", "/v1/%C5%BFms"),
        ("/v1/sm%2573", "/v1/sm%2573"),
        ("/v1/admin/x", "/v1/admin/x"),
        ("/v1/adminx;jsessionid=1", "/v1/adminx;jsessionid=1"),
        // Envoy resolves `.;` and `..;` segments itself.
        ("/open/.;/v1/admin", "/open/v1/admin"),
        ("/open/..;/x", "/x"),
    ];
    for (sent, upstream_path) in elsewhere {
        let r = e.request(Req::get(sent));
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        assert_eq!(rig.up.last().path, upstream_path, "{sent}");
    }
    // Whatever reached the upstream is not under the denied prefix.
    for s in rig.up.seen() {
        assert!(!s.path.starts_with("/v1/sms"), "bypass: {}", s.path);
        assert_ne!(s.path, "/v1/admin", "bypass");
    }
    assert_eq!(rig.up.seen().len(), elsewhere.len());
    e.assert_vm_healthy();
}

/// What Envoy passes on escaped and upstreams that decode paths before
/// routing (Go, Spring, Tomcat, Werkzeug) read decoded: `%3A` is the `:` of
/// `/v1/things:batchDelete`, `%40` the `@` of `/v1/users/@me/`, `%c3%a9`
/// the `%C3%A9` a route names; with `path_with_escaped_slashes_action` at
/// Envoy's default (keep), a `%2F..%2F` inside a `;` parameter is a
/// traversal to an upstream that decodes, then resolves dot segments
/// without knowing `;` parameters (nginx). None takes the open catch-all.
#[test]
fn escaped_path_characters_take_no_weaker_route() {
    let up = Upstream::start();
    let config = json!({
        "default_action": "allow",
        "routes": [
            {"name": "batch", "match": {"path": "/v1/things:batchDelete"}, "action": "deny"},
            {"name": "me", "match": {"prefix": "/v1/users/@me/"}, "action": "deny"},
            {"name": "cafe", "match": {"path": "/v1/caf%C3%A9"}, "action": "deny"},
            {"name": "sms", "match": {"path": "/v1/sms"}, "action": "deny"},
            {"name": "item", "match": {"path": "/v1/items[0]"}, "action": "deny"},
            {"name": "api", "match": {"prefix": "/v1/"}}
        ]
    });
    let envoy = EnvoyBuilder::new(config, up.port)
        .hcm("path_with_escaped_slashes_action", json!("KEEP_UNCHANGED"))
        .start();
    for p in [
        "/v1/things:batchDelete",
        "/v1/things%3AbatchDelete",
        "/v1/things%3abatchDelete",
        "/v1/users/@me/x",
        "/v1/users/%40me/x",
        "/v1/caf%C3%A9",
        "/v1/caf%c3%a9",
        "/v1/x%2F..%2Fsms",
        "/v1/x;%2F..%2Fsms",
        "/v1/x;p%2F%2e%2e%2Fsms",
        "/v1/x;%5C..%5Csms",
        // IIS (http.sys) decodes `%uXXXX`; Envoy passes `[` on as it is.
        "/v1/%u0073ms",
        "/v1/things%u003AbatchDelete",
        "/v1/items[0]",
        "/v1/items%5B0%5D",
    ] {
        let r = envoy.request(Req::new("POST", p));
        assert_eq!((r.status, r.reason()), (403, Some("route_denied")), "{p}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    for p in [
        "/v1/things",
        "/v1/users/%40you/x",
        "/v1/x;p=1",
        "/v1/x;a%2Fb",
    ] {
        let r = envoy.request(Req::new("POST", p));
        assert_eq!(r.status, 200, "{p}: {}", r.text());
    }
    assert_eq!(up.seen().len(), 4);
    envoy.assert_vm_healthy();
}

#[test]
fn format_suffixes_target_headers_and_token_spellings_cannot_reach_another_handler() {
    // What Envoy passes on unchanged and upstream frameworks read as
    // another request: Rails runs `/v1/admin`'s handler for
    // `/v1/admin.json`; Zend Framework 1 and old Symfony take the target
    // from `X-Original-URL`; PHP reads `approov_token` as `approov-token`.
    let rig = start();
    let e = &rig.envoy;
    deny(e, Req::get("/v1/admin.json"), 403, "route_denied", "suffix");
    deny(
        e,
        Req::get("/v1/admin.xml?x=1"),
        403,
        "route_denied",
        "suffix+query",
    );
    for name in ["x-original-url", "x-rewrite-url", "x_original_url"] {
        deny(
            e,
            Req::get("/open/x").header(name, "/v1/admin"),
            403,
            "route_denied",
            name,
        );
        let r = e.request(Req::get("/open/x").header(name, "/open/y"));
        assert_eq!(r.status, 200, "{name} keeping the route: {}", r.text());
    }
    // A suffix that keeps the route changes nothing.
    let r = e.request(Req::get("/open/app.js"));
    assert_eq!(r.status, 200, "{}", r.text());
    // A second token under another spelling of the token header.
    let other = hs_with(
        json!({"alg": "HS256", "kid": "hs1"}),
        json!({"sub": "someone-else"}),
    );
    let r = e.request(hs_req(&good_hs()).header("approov_token", &other));
    assert_eq!(
        (r.status, r.reason()),
        (401, Some("token_malformed")),
        "{}",
        r.text()
    );
    // The same token twice: one token, and neither copy goes upstream.
    let t = good_hs();
    let r = e.request(hs_req(&t).header("approov_token", &t));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = rig.up.last();
    assert_eq!(seen.header("approov-token"), None);
    assert_eq!(seen.header("approov_token"), None);
    for s in rig.up.seen() {
        assert!(!s.path.starts_with("/v1/admin"), "bypass: {}", s.path);
    }
    e.assert_vm_healthy();
}

#[test]
fn origin_tricks_are_origin_denied() {
    let rig = start();
    let e = &rig.envoy;
    let allowed = [
        "https://shop.example.com",
        "https://a.shop.example.com",
        "https://a.b.shop.example.com",
        // RFC 6454 §6.1 serialises scheme and host in lower case; the same
        // origin in upper case is the same origin.
        "HTTPS://SHOP.EXAMPLE.COM",
        // The fully qualified form of the same DNS name.
        "https://shop.example.com.",
        "https://shop.example.com:443",
    ];
    for o in allowed {
        let r = e.request(Req::get("/web/x").header("origin", o));
        assert_eq!(r.status, 200, "{o}: {}", r.text());
        assert_eq!(rig.up.last().header("x-appguard-app"), Some("shop-web"));
    }
    let denied = [
        "https://evil.com%2eshop.example.com",
        "https://evil.com%2Eshop.example.com",
        "https://shop.example.com%2eevil.com",
        "https://shop%2eexample.com",
        "https://shop.example.com.evil.com",
        "https://evilshop.example.com",
        "https://shop-example.com",
        "https://shop.example.com@evil.com",
        "https://evil.com@shop.example.com",
        "https://evil.com\\@shop.example.com",
        "https://evil.com\\.shop.example.com",
        "https://shop.example.com:8443",
        "https://shop.example.com:99999",
        "http://shop.example.com",
        "wss://shop.example.com",
        "null",
        "",
        "https://",
        "https://.shop.example.com",
        "https://shop..example.com",
        "https://xn--shp-lna.example.com",
        "shop.example.com",
        "//shop.example.com",
        "javascript://shop.example.com",
    ];
    for o in denied {
        deny(
            e,
            Req::get("/web/x").header("origin", o),
            403,
            "origin_denied",
            o,
        );
    }
    // IDN lookalikes and other non-ASCII hosts, as raw UTF-8: browsers send
    // punycode, so any non-ASCII origin is refused.
    for o in [
        "https://sh\u{043e}p.example.com",
        "https://shop\u{ff0e}example\u{ff0e}com",
        "https://shop.example.com\u{3002}",
        "https://ｓhop.example.com",
    ] {
        deny(
            e,
            Req::get("/web/x").header_bytes("origin", o.as_bytes()),
            403,
            "origin_denied",
            o,
        );
    }
    // Referer stands in for Origin only when Origin is absent.
    deny(
        e,
        Req::get("/web/x").header("referer", "https://shop.example.com.evil.com/x"),
        403,
        "origin_denied",
        "referer lookalike",
    );
    deny(
        e,
        Req::get("/web/x")
            .header("origin", "https://evil.com")
            .header("referer", "https://shop.example.com/page"),
        403,
        "origin_denied",
        "good referer, bad origin",
    );
    let r = e.request(Req::get("/web/x").header("referer", "https://shop.example.com/page?q=1"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rig.up.seen().len(), allowed.len() + 1);
    e.assert_vm_healthy();
}

#[test]
fn a_wildcard_in_a_request_origin_is_origin_denied() {
    let rig = start();
    for o in [
        "https://*.shop.example.com",
        "https://*.*.shop.example.com",
        "https://*.example.com",
    ] {
        deny(
            &rig.envoy,
            Req::get("/web/x").header("origin", o),
            403,
            "origin_denied",
            o,
        );
    }
    assert!(rig.up.seen().is_empty());
}

#[test]
fn ipv6_zone_ids_and_address_spellings_in_xff_fail_closed() {
    let rig = start();
    let e = &rig.envoy;
    // `/net` denies 2001:db8::/32 and 10.0.0.0/8. An address it cannot
    // read is no address: refused (ip_denied), never let through.
    let denied = [
        "2001:db8::1%eth0",
        "2001:db8::1%25eth0",
        "[2001:db8::1%eth0]:443",
        "fe80::1%1",
        "2001:db8::1%",
        "::ffff:10.1.2.3",
        "::ffff:a01:203",
        "[::ffff:10.1.2.3]:80",
        "2001:0db8:0000:0000:0000:0000:0000:0001",
        "2001:DB8::1",
        "[2001:db8::1]:8080",
        " 2001:db8::1 ",
        "010.1.2.3",
        "0x0a.1.2.3",
        "167838211",
        "10.1.2.3.nip.io",
        "10.1.2.3:80:80",
        "unknown",
        "",
    ];
    for ip in denied {
        deny(
            e,
            Req::get("/net/x").header("x-forwarded-for", ip),
            403,
            "ip_denied",
            ip,
        );
    }
    // `/only-fe80` allows fe80::/10: an address with a zone id is refused
    // even there (a zone id names a link of the proxy, not a client).
    deny(
        e,
        Req::get("/only-fe80/x").header("x-forwarded-for", "fe80::1%eth0"),
        403,
        "ip_denied",
        "zone id in the allowed range",
    );
    for (path, ip) in [
        ("/net/x", "2001:db9::1"),
        ("/net/x", "192.0.2.1"),
        ("/net/x", "[2001:db9::1]:443"),
        ("/only-fe80/x", "fe80::1"),
    ] {
        let r = e.request(Req::get(path).header("x-forwarded-for", ip));
        assert_eq!(r.status, 200, "{path} {ip}: {}", r.text());
    }
    assert_eq!(rig.up.seen().len(), 4);
    e.assert_vm_healthy();
}

/// A deny list of the size of a cloud provider's published ranges loads,
/// and a request is refused inside any of its ranges and let through in a
/// gap between them (the list is kept as merged, sorted intervals).
#[test]
fn a_deny_list_of_twenty_thousand_ranges_loads_and_holds() {
    let up = Upstream::start();
    // 20.0.0.0/24 … 20.78.31.0/24, but for the gap 20.5.5.0/24; one IPv6
    // range beside them.
    let mut ranges: Vec<String> = (0u32..20_000)
        .filter(|i| *i != 5 * 256 + 5)
        .map(|i| format!("20.{}.{}.0/24", i / 256, i % 256))
        .collect();
    ranges.push("2001:db8::/32".into());
    let cfg = json!({
        "default_action": "allow",
        "routes": [{"name": "r", "match": {"prefix": "/"},
                    "network": {"ip_deny": ranges}}]
    });
    // Envoy's default reads the client from X-Forwarded-For.
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    let from = |ip: &str| Req::get("/x").header("x-forwarded-for", ip);
    for ip in [
        "20.0.0.1",
        "20.5.4.255",
        "20.5.6.0",
        "20.78.31.200",
        "2001:db8::7",
    ] {
        deny(&envoy, from(ip), 403, "ip_denied", ip);
    }
    for ip in ["20.5.5.9", "20.78.32.1", "19.255.255.255", "2001:db9::1"] {
        assert_eq!(envoy.request(from(ip)).status, 200, "{ip}");
    }
}

#[test]
fn a_client_written_x_forwarded_for_never_chooses_the_client_ip() {
    // With `xff_trusted_hops: 0` appguard takes Envoy's downstream address,
    // and Envoy derives that from X-Forwarded-For unless the connection
    // manager has `use_remote_address: true` (envoy/envoy.yaml and the
    // examples set it): then only the connection's peer counts. When Envoy
    // trusts proxies in front (`xff_num_trusted_hops`, Istio's
    // `numTrustedProxies`), the entry they wrote is the client, with
    // appguard's hops still at 0.
    let up = Upstream::start();
    let cfg = json!({
        "default_action": "allow",
        "client_ip": {"xff_trusted_hops": 0},
        "routes": [{"name": "r", "match": {"prefix": "/"},
                    "network": {"ip_deny": ["198.51.100.0/24"]}}]
    });
    let spoofed = || Req::get("/x").header("x-forwarded-for", "192.0.2.1");
    let denied = || Req::get("/x").header("x-forwarded-for", "198.51.100.7");
    // Envoy's default: the client's own X-Forwarded-For names the client.
    let default = EnvoyBuilder::new(cfg.clone(), up.port).start();
    deny(
        &default,
        denied(),
        403,
        "ip_denied",
        "Envoy's default reads XFF",
    );
    // use_remote_address: the peer (127.0.0.1), whatever the header says.
    let edge = EnvoyBuilder::new(cfg.clone(), up.port)
        .hcm("use_remote_address", json!(true))
        .start();
    assert_eq!(
        edge.request(denied()).status,
        200,
        "XFF ignored at the edge"
    );
    assert_eq!(edge.request(spoofed()).status, 200);
    // Behind one trusted proxy: the entry it appended is the client; what
    // the client wrote before it is not.
    let behind = EnvoyBuilder::new(cfg, up.port)
        .hcm("use_remote_address", json!(true))
        .hcm("xff_num_trusted_hops", json!(1))
        .start();
    deny(&behind, denied(), 403, "ip_denied", "the proxy's entry");
    let r = behind.request(Req::get("/x").header("x-forwarded-for", "198.51.100.7, 192.0.2.1"));
    assert_eq!(
        r.status,
        200,
        "a client-written entry before the proxy's: {}",
        r.text()
    );
    assert_eq!(up.seen().len(), 3);
}

fn sms(envoy: &Envoy, body: &[u8]) -> Resp {
    envoy.request(
        Req::new("POST", "/sms")
            .header("content-type", "application/json")
            .body(body),
    )
}

#[test]
fn phone_numbers_with_letters_foreign_digits_or_excess_length_are_body_invalid() {
    let rig = start();
    let e = &rig.envoy;
    // The local limit is 2 per number per hour: two genuine sends.
    for to in ["+44 7700 900123", "07700 900123"] {
        let r = sms(e, json!({"to": to}).to_string().as_bytes());
        assert_eq!(r.status, 200, "{to}: {}", r.text());
    }
    // Spellings of the same number that are not ASCII digits are refused,
    // not counted as new numbers.
    let long = "1".repeat(10_000);
    let spaced = format!("+44 7700 900123{}", " ".repeat(60));
    let invalid = [
        "+44 77OO 900123",
        "+44 7700 9OO123",
        "+44 7700 900l23",
        "+\u{0664}\u{0664} \u{0667}\u{0667}\u{0660}\u{0660} \u{0669}\u{0660}\u{0660}\u{0661}\u{0662}\u{0663}",
        "+\u{ff14}\u{ff14} \u{ff17}\u{ff17}\u{ff10}\u{ff10} \u{ff19}\u{ff10}\u{ff10}\u{ff11}\u{ff12}\u{ff13}",
        "\u{ff0b}447700900123",
        "+447700900123\u{200b}",
        "+44\u{00a0}7700900123",
        "+44\u{2007}7700900123",
        "+44 7700 900123 ext. 1",
        "tel:+447700900123",
        "+44 7700 900123\n",
        "+44\t7700900123",
        "++447700900123",
        "+44+7700900123",
        "+",
        "",
        "1e10",
        long.as_str(),
        spaced.as_str(),
    ];
    for to in invalid {
        let r = sms(e, json!({"to": to}).to_string().as_bytes());
        assert_eq!(
            (r.status, r.reason()),
            (400, Some("body_invalid")),
            "{to:?}: {}",
            r.text()
        );
    }
    // JSON escapes decode to the same ASCII number: counted, over the limit.
    let r = sms(e, br#"{"to": "\u002b\u0034\u0034 7700 900123"}"#);
    assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
    let r = sms(
        e,
        json!({"to": "(+44) 7700.900.123"}).to_string().as_bytes(),
    );
    assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
    // A value that is not a string or number is no phone number.
    for body in [
        r#"{"to": ["+447700900123"]}"#,
        r#"{"to": {"n": 1}}"#,
        r#"{"to": null}"#,
    ] {
        let r = sms(e, body.as_bytes());
        assert_eq!(
            (r.status, r.reason()),
            (400, Some("body_invalid")),
            "{body}"
        );
    }
    assert_eq!(rig.up.seen().len(), 2);
    // The decision lines are there (so the check below reads them), and
    // none holds the number.
    assert!(
        e.log().contains("deny reason=body_invalid"),
        "decision lines logged"
    );
    assert!(!e.log().contains("7700900123") && !e.log().contains("7700 900123"));
    e.assert_vm_healthy();
}

#[test]
fn hostile_json_bodies_are_body_invalid() {
    let rig = start();
    let e = &rig.envoy;
    let deep_array = format!("{}{}", "[".repeat(8000), "]".repeat(8000));
    let deep_object = format!(
        "{}\"+447700900777\"{}",
        "{\"to\":".repeat(2000),
        "}".repeat(2000)
    );
    let nested20 = format!(
        "{{\"to\":\"+447700900777\",\"x\":{}1{}}}",
        "{\"a\":".repeat(20),
        "}".repeat(20)
    );
    let mut utf16 = vec![0xff, 0xfe];
    for u in r#"{"to":"+447700900777"}"#.encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("8000 nested arrays", deep_array.into_bytes()),
        ("2000 nested objects", deep_object.into_bytes()),
        ("nested 20 deep beside the number", nested20.into_bytes()),
        (
            "duplicate key",
            br#"{"to":"+447700900111","to":"+447700900222"}"#.to_vec(),
        ),
        (
            "duplicate key by escape",
            br#"{"to":"+447700900111","\u0074o":"+447700900222"}"#.to_vec(),
        ),
        (
            // Go's encoding/json and ASP.NET read "To" as "to", the last
            // one winning: the upstream would send to the unchecked number.
            "keys that differ only in case",
            br#"{"to":"+447700900111","To":"+882123456789"}"#.to_vec(),
        ),
        (
            "keys equal under Unicode case folding (Kelvin sign)",
            "{\"k\":1,\"\u{212a}\":2,\"to\":\"+447700900111\"}"
                .as_bytes()
                .to_vec(),
        ),
        (
            "duplicate key elsewhere",
            br#"{"to":"+447700900111","x":{"y":1,"y":2}}"#.to_vec(),
        ),
        (
            "invalid UTF-8 in another field",
            b"{\"to\":\"+447700900111\",\"x\":\"\xff\"}".to_vec(),
        ),
        (
            "invalid UTF-8 in the number",
            b"{\"to\":\"+44770090\xc0\xb1111\"}".to_vec(),
        ),
        ("UTF-16 with a BOM", utf16),
        (
            "UTF-8 BOM",
            b"\xef\xbb\xbf{\"to\":\"+447700900111\"}".to_vec(),
        ),
        ("trailing data", br#"{"to":"+447700900111"} {}"#.to_vec()),
        (
            "two documents",
            br#"{"to":"+447700900111"}{"to":"+1"}"#.to_vec(),
        ),
        ("NaN", br#"{"to":"+447700900111","x":NaN}"#.to_vec()),
        (
            "huge exponent",
            br#"{"to":"+447700900111","x":1e999}"#.to_vec(),
        ),
        (
            "lone surrogate",
            br#"{"to":"+447700900111","x":"\ud800"}"#.to_vec(),
        ),
        (
            "NUL in the number",
            br#"{"to":"+447700900111\u0000"}"#.to_vec(),
        ),
        ("single quotes", br#"{'to':'+447700900111'}"#.to_vec()),
        ("no number", br#"{"from":"+447700900111"}"#.to_vec()),
        ("empty", Vec::new()),
    ];
    for (label, body) in &bodies {
        let r = sms(e, body);
        assert_eq!(
            (r.status, r.reason()),
            (400, Some("body_invalid")),
            "{label}: {}",
            r.text()
        );
    }
    // A body not declared as plain JSON: an upstream that also reads forms
    // would find its own `to` in these bytes, past the denied `+882`.
    let smuggled = br#"{"to":"+447700900111","x":"&to=%2B88212345678&y="}"#;
    for (label, headers) in [
        (
            "a form",
            &[("content-type", "application/x-www-form-urlencoded")][..],
        ),
        ("no content type", &[][..]),
        // A form to Rack (which cuts the type at `,`) and PHP, whatever
        // it ends with.
        (
            "a form type listed before a +json one",
            &[(
                "content-type",
                "application/x-www-form-urlencoded, application/vnd.api+json",
            )][..],
        ),
        (
            "gzip-encoded",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ][..],
        ),
    ] {
        let mut req = Req::new("POST", "/sms").body(smuggled);
        for (n, v) in headers {
            req = req.header(n, v);
        }
        let r = e.request(req);
        assert_eq!(
            (r.status, r.reason()),
            (400, Some("body_invalid")),
            "{label}: {}",
            r.text()
        );
    }
    assert!(rig.up.seen().is_empty(), "a refused body reached upstream");
    let r = sms(e, json!({"to": "+447700900111"}).to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let r = e.request(
        Req::new("POST", "/sms")
            .header(
                "content-type",
                "application/vnd.example+json; charset=utf-8",
            )
            .body(json!({"to": "+447700900112"}).to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    e.assert_vm_healthy();
}

#[test]
fn a_body_ended_by_trailers_is_checked_and_trailers_carry_no_identity() {
    // A chunked HTTP/1.1 body (or an HTTP/2 stream) may end with trailers
    // instead of a last data frame; with `enable_trailers` Envoy passes
    // them upstream, where frameworks merge them into the request's
    // headers. The body must be decided at the trailers, and a client's
    // identity header sent as a trailer must not reach the upstream.
    let cfg = json!({
        "default_action": "deny",
        "max_body_bytes": 4096,
        "apps": [{"id": "shop-android", "platform": "android", "package": "com.example.shop"}],
        "phone": {"default_calling_code": "44", "denied_prefixes": ["+882"],
                  "hash_key_base64": STANDARD.encode(b"attack-suite-phone-hash-key-0123")},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(b"attack-suite-token-secret-0123456789")}]}],
        "routes": [{"name": "sms", "match": {"path": "/sms", "methods": ["POST"]},
                    "platforms": ["android"],
                    "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                                     "local": {"requests": 100, "per": "hour"}}]}]
    });
    let sms = |to: &str| {
        Req::post_json("/sms", &format!(r#"{{"to": "{to}"}}"#))
            .header("x-android-package", "com.example.shop")
            .trailer("x-checksum", "c1")
    };
    let body = r#"{"to": "+44 7700 900461"}"#;
    // The trailers reach an HTTP/1.1 upstream only while the body stays
    // chunked, that is without the buffer filter (as they reach an HTTP/2
    // upstream with it).
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg.clone(), up.port)
        .trailers()
        .without_buffer_filter()
        .start();
    // Credentials too: appguard checks the headers' API key and token,
    // not a trailer's, which an upstream merging trailers would read.
    let r = envoy.request(
        sms("+44 7700 900461")
            .trailer("x-appguard-app", "admin-console")
            .trailer("x_appguard_platform", "server")
            .trailer("x-api-key", "unchecked-key")
            .trailer("x_token", "unchecked.token.value"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(seen.header("x-appguard-app"), Some("shop-android"));
    assert_eq!(seen.header("x-appguard-platform"), Some("android"));
    assert_eq!(
        seen.trailers,
        vec![("x-checksum".to_string(), "c1".to_string())],
        "the client's identity and credential trailers are removed, its other trailers kept"
    );
    envoy.assert_vm_healthy();
    // Decided at the trailers, with the buffer filter as deployed: a
    // denied number, a body that is no JSON and one over the route's
    // limit (learnt from the chunks alone) never reach the upstream.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port).trailers().start();
    let r = envoy.request(sms("+44 7700 900461"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body, body.as_bytes());
    let r = envoy.request(sms("+882 1234 5678"));
    assert_eq!((r.status, r.reason()), (403, Some("phone_denied")));
    let r = envoy.request(sms("x").body(b"{\"to\": "));
    assert_eq!((r.status, r.reason()), (400, Some("body_invalid")));
    let big = format!(
        r#"{{"to": "+44 7700 900461", "pad": "{}"}}"#,
        "a".repeat(10_000)
    );
    let r = envoy.request(sms("x").body(big.as_bytes()));
    assert_eq!((r.status, r.reason()), (413, Some("body_too_large")));
    assert_eq!(up.seen().len(), 1, "only the allowed request went upstream");
    envoy.assert_vm_healthy();
}

#[test]
fn a_cors_preflight_reaches_the_upstream_only_with_bypass_cors_preflight() {
    // A browser's preflight before a cross-origin call with an API key
    // carries no key: refused on a route that requires one, unless the
    // configuration lets preflights by. An OPTIONS that also asks the
    // upstream for another method is no preflight.
    let cfg = |bypass: bool| {
        json!({
            "default_action": "deny",
            "bypass_cors_preflight": bypass,
            "apps": [{"id": "shop-web", "platform": "web", "origins": ["https://shop.example.com"]}],
            "api_keys": {"keys": [{"id": "k1", "sha256": appguard::identity::hash_api_key(API_KEY)}]},
            "routes": [{"name": "web", "match": {"prefix": "/v1/web/"}, "platforms": ["web"],
                        "api_key": "required"},
                       {"name": "send", "match": {"path": "/v1/send", "methods": ["POST"]},
                        "api_key": "required"}]
        })
    };
    let preflight = || {
        Req::new("OPTIONS", "/v1/web/cart")
            .header("origin", "https://shop.example.com")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-api-key")
    };
    let up = Upstream::start();
    let off = EnvoyBuilder::new(cfg(false), up.port).start();
    let r = off.request(preflight());
    assert_eq!((r.status, r.reason()), (403, Some("api_key_missing")));
    let on = EnvoyBuilder::new(cfg(true), up.port).start();
    let r = on.request(preflight());
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.method, "OPTIONS");
    assert!(
        !seen
            .headers
            .iter()
            .any(|(k, _)| k.starts_with("x-appguard-")),
        "{:?}",
        seen.headers
    );
    // It takes the route of the method it asks about, one that lists
    // `methods` too, and is counted as a preflight.
    let r = on.request(
        Req::new("OPTIONS", "/v1/send")
            .header("origin", "https://shop.example.com")
            .header("access-control-request-method", "POST"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        on.stat("appguard_decisions.route.send.decision.preflight.reason.none"),
        Some(1)
    );
    assert_eq!(up.seen().len(), 2);
    // Not preflights: another method asked for upstream, a body, a key.
    let r = on.request(preflight().header("x-http-method-override", "POST"));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_missing")));
    let r = on.request(preflight().body(b"{}"));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_missing")));
    let r = on.request(preflight().header("x-api-key", "not-the-key"));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_invalid")));
    let r = on
        .request(Req::new("OPTIONS", "/v1/web/cart").header("origin", "https://shop.example.com"));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_missing")));
    // The real call after it is checked as ever.
    let r = on.request(
        Req::post_json("/v1/web/cart", "{}")
            .header("origin", "https://shop.example.com")
            .header("x-api-key", API_KEY),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-appguard-app"), Some("shop-web"));
    assert_eq!(up.seen().len(), 3);
    on.assert_vm_healthy();
}

#[test]
fn a_preflight_asking_about_another_method_keeps_the_network_rule_of_the_route_options_takes() {
    // `admin` takes OPTIONS (and GET, POST) only from 10.0.0.0/8; the
    // catch-all after it is open. Dressed as a preflight asking about a
    // method `admin` does not list, an OPTIONS /admin/x from outside would
    // take the catch-all and reach admin's handler: it is refused as the
    // plain OPTIONS is.
    let cfg = json!({
        "default_action": "deny",
        "bypass_cors_preflight": true,
        "apps": [{"id": "shop-web", "platform": "web", "origins": ["https://shop.example.com"]}],
        "routes": [
            {"name": "admin", "match": {"prefix": "/admin/", "methods": ["GET", "POST", "OPTIONS"]},
             "network": {"ip_allow": ["10.0.0.0/8"]}},
            {"name": "public", "match": {"prefix": "/"}}
        ]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    let dressed = |path: &str| {
        Req::new("OPTIONS", path)
            .header("origin", "https://shop.example.com")
            .header("access-control-request-method", "PUT")
    };
    let r = envoy.request(Req::new("OPTIONS", "/admin/x"));
    assert_eq!((r.status, r.reason()), (403, Some("ip_denied")));
    let r = envoy.request(dressed("/admin/x"));
    assert_eq!((r.status, r.reason()), (403, Some("ip_denied")));
    assert_eq!(
        envoy.stat("appguard_decisions.route.admin.decision.deny.reason.ip_denied"),
        Some(2)
    );
    assert!(up.seen().is_empty());
    // A preflight elsewhere still passes as one.
    let r = envoy.request(dressed("/shop/cart"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        envoy.stat("appguard_decisions.route.public.decision.preflight.reason.none"),
        Some(1)
    );
    assert_eq!(up.seen().len(), 1);
    envoy.assert_vm_healthy();
}

#[test]
fn a_web_app_can_read_its_refusals_with_cors_on_refusals() {
    // Istio runs its CORS filter after every WasmPlugin: appguard's local
    // replies never pass it, and a browser hid them as network errors. With
    // `cors_on_refusals`, a refusal names a listed web origin itself. (A
    // CORS filter before appguard sets its policy's headers over them:
    // still one of each.)
    let cfg = |on: bool| {
        let mut c = json!({
            "default_action": "deny",
            "apps": [{"id": "shop-web", "platform": "web", "origins": ["https://shop.example.com"]}],
            "api_keys": {"keys": [{"id": "k1", "sha256": appguard::identity::hash_api_key(API_KEY)}]},
            "routes": [{"name": "web", "match": {"prefix": "/v1/web/"}, "platforms": ["web"],
                        "api_key": "required",
                        "rate_limits": [{"entries": [{"type": "api_key"}],
                                         "local": {"requests": 1, "per": "hour"}}]}]
        });
        if on {
            c["cors_on_refusals"] = json!({"allow_credentials": true});
        }
        c
    };
    let call = |origin: &str| Req::get("/v1/web/cart").header("origin", origin);
    let count = |r: &Resp, name: &str| r.headers.iter().filter(|(k, _)| k == name).count();
    let up = Upstream::start();
    let cors_filter = json!({"name": "envoy.filters.http.cors",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}});
    let policy = json!({"virtual_hosts": [{"name": "all", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
        "typed_per_filter_config": {"envoy.filters.http.cors": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [{"exact": "https://shop.example.com"}],
            "allow_credentials": true,
            "expose_headers": "x-appguard-reason,x-from-policy"}}}]});

    // No CORS filter sees the refusal (Istio's order: after appguard).
    for (what, builder) in [
        ("no CORS filter", EnvoyBuilder::new(cfg(true), up.port)),
        (
            "CORS filter after appguard",
            EnvoyBuilder::new(cfg(true), up.port)
                .filter_after(cors_filter.clone())
                .hcm("route_config", policy.clone()),
        ),
    ] {
        let envoy = builder.start();
        let r = envoy.request(call("https://shop.example.com"));
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("api_key_missing")),
            "{what}"
        );
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://shop.example.com"),
            "{what}: {r:?}"
        );
        assert_eq!(count(&r, "access-control-allow-origin"), 1, "{what}: {r:?}");
        assert_eq!(
            r.header("access-control-allow-credentials"),
            Some("true"),
            "{what}"
        );
        assert_eq!(r.header("vary"), Some("origin"), "{what}");
        let exposed = r
            .header("access-control-expose-headers")
            .unwrap_or_default();
        for name in ["x-appguard-reason", "retry-after", "x-ratelimit-reset"] {
            assert!(exposed.contains(name), "{what}: {name} in {exposed:?}");
        }
        // A rate limit, the refusal a web app most needs to read.
        let keyed = || call("https://shop.example.com").header("x-api-key", API_KEY);
        assert_eq!(envoy.request(keyed()).status, 200, "{what}");
        let r = envoy.request(keyed());
        assert_eq!(
            (r.status, r.reason()),
            (429, Some("rate_limited")),
            "{what}"
        );
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://shop.example.com"),
            "{what}: {r:?}"
        );
        // Another origin, or the origin of no web app: nothing to read.
        for other in ["https://evil.example", "https://shop.example.com/cart"] {
            let r = envoy.request(call(other));
            assert_eq!(r.status, 403, "{what}");
            assert_eq!(
                r.header("access-control-allow-origin"),
                None,
                "{what}: {other}"
            );
        }
    }

    // Off by default.
    let envoy = EnvoyBuilder::new(cfg(false), up.port).start();
    let r = envoy.request(call("https://shop.example.com"));
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (403, None)
    );

    // A CORS filter before appguard answers for the policy: its headers
    // replace appguard's, one of each.
    let envoy = EnvoyBuilder::new(cfg(true), up.port)
        .filter_before(cors_filter)
        .hcm("route_config", policy)
        .start();
    let r = envoy.request(call("https://shop.example.com"));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_missing")));
    assert_eq!(count(&r, "access-control-allow-origin"), 1, "{r:?}");
    assert_eq!(count(&r, "access-control-expose-headers"), 1, "{r:?}");
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-appguard-reason,x-from-policy"),
        "{r:?}"
    );
    envoy.assert_vm_healthy();
}

#[test]
fn a_route_opted_out_of_the_buffer_filter_streams_and_body_routes_stay_held() {
    // envoy/envoy.yaml buffers every route and shows how a streaming
    // route opts out (`BufferPerRoute` `disabled: true`). Opted out, a
    // 2 MiB upload goes through; elsewhere the buffer filter refuses it
    // (413, not appguard's), and a body route still holds the headers
    // until appguard decided: a refused number never reaches the upstream.
    let cfg = json!({
        "default_action": "deny",
        "phone": {"default_calling_code": "44", "denied_prefixes": ["+882"],
                  "hash_key_base64": STANDARD.encode(b"attack-suite-phone-hash-key-0123")},
        "routes": [
            {"name": "sms", "match": {"path": "/sms", "methods": ["POST"]},
             "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                              "local": {"requests": 100, "per": "hour"}}]},
            {"name": "files", "match": {"prefix": "/upload/"}},
            {"name": "other", "match": {"prefix": "/other/"}}
        ]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .unbuffered_prefix("/upload/")
        .start();
    let big = vec![b'a'; 2 << 20];
    let r = envoy.request(Req::new("POST", "/upload/f").body(&big));
    assert_eq!(r.status, 200, "{}", r.reason().unwrap_or(""));
    assert_eq!(up.last().body.len(), big.len());
    let r = envoy.request(Req::new("POST", "/other/f").body(&big));
    assert_eq!(
        (r.status, r.reason()),
        (413, None),
        "the buffer filter's own 413"
    );
    let r = envoy.request(Req::post_json("/sms", r#"{"to": "+882 1234 5678"}"#).chunked());
    assert_eq!((r.status, r.reason()), (403, Some("phone_denied")));
    // The upstream records a request once it read its body: give one that
    // leaked the time to show.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(up.seen().len(), 1);
    envoy.assert_vm_healthy();
}

/// README (Trust boundaries, Client IP): with appguard reading
/// `X-Forwarded-For`, its hops count the load balancers, plus Envoy's own
/// entry only where Envoy appends one (`use_remote_address: true`). One
/// load balancer in front: 2 hops with it, 1 without (Envoy's default,
/// Istio's sidecars, where 2 would read an entry the client wrote). The
/// client (203.0.113.5, denied) writes 198.51.100.7; the load balancer
/// appends the address it saw.
#[test]
fn appguards_hops_count_envoys_entry_only_where_envoy_appends_one() {
    let up = Upstream::start();
    let cfg = |hops: u32| {
        json!({
            "default_action": "allow",
            "client_ip": {"xff_trusted_hops": hops},
            "routes": [{"name": "r", "match": {"prefix": "/"},
                        "network": {"ip_deny": ["203.0.113.0/24"]}}]
        })
    };
    let through_lb = || Req::get("/x").header("x-forwarded-for", "198.51.100.7, 203.0.113.5");
    let edge = EnvoyBuilder::new(cfg(2), up.port)
        .hcm("use_remote_address", json!(true))
        .start();
    deny(
        &edge,
        through_lb(),
        403,
        "ip_denied",
        "use_remote_address: true, 2 hops",
    );
    drop(edge);
    let default = EnvoyBuilder::new(cfg(1), up.port).start();
    deny(
        &default,
        through_lb(),
        403,
        "ip_denied",
        "Envoy's default, 1 hop",
    );
    assert!(up.seen().is_empty());
}

/// A byte that is not UTF-8 in the query of an HTTP/2 `:path` (Envoy's
/// HTTP/2 codec passes it on; `normalize_path` escapes such bytes in the
/// path only, and its HTTP/1 codec answers 400) made appguard read the
/// path lossily, marked, as one no route matched, not even `prefix: "/"`:
/// the request went on under `default_action` (`allow` when left out)
/// past its route's API key and every other route check, and the upstream
/// served `/v1/sms`. It is refused, `route_denied`, as other unclear paths
/// are. (The control requests show the frames reach the upstream when
/// nothing is wrong.)
#[test]
fn an_http2_query_byte_that_is_not_utf8_takes_no_request_past_its_route() {
    use harness::http2::raw_request;
    let up = Upstream::start();
    let cfg = json!({
        "api_keys": {"keys": [{"id": "k", "sha256": appguard::identity::hash_api_key("e2e-raw-key-0123")}]},
        "routes": [
            {"name": "open", "match": {"prefix": "/open"}},
            {"name": "sms", "match": {"path": "/v1/sms"}, "api_key": "required"},
            {"name": "all", "match": {"prefix": "/"}, "api_key": "required"}
        ]
    });
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    let req = |path: &[u8], key: Option<&[u8]>| {
        let mut h: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", b"api.example.com"),
        ];
        if let Some(k) = key {
            h.push((b"x-api-key", k));
        }
        raw_request(envoy.port, &h)
    };
    // Controls: the frames are read, an open route is served, a keyed
    // one with its key too, and refused without it.
    let status = |r: Option<(bool, Vec<u8>)>| r.map(|(ok, _)| ok);
    assert_eq!(status(req(b"/open?x=1", None)), Some(true));
    assert_eq!(
        status(req(b"/v1/sms?x=1", Some(b"e2e-raw-key-0123"))),
        Some(true)
    );
    let served = up.seen().len();
    let (ok, body) = req(b"/v1/sms?x=1", None).unwrap();
    assert!(!ok && String::from_utf8_lossy(&body).contains("api_key_missing"));
    // appguard's own refusal, not Envoy's or the upstream's (an HTTP/1
    // upstream cannot be sent such a target: Envoy answers 503 then).
    for path in [
        &b"/v1/sms?x=\xff"[..],
        b"/v1/sms?to=1&n=\xc3",
        b"/other?\xe9",
    ] {
        let r = req(path, None);
        let body = r
            .as_ref()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned());
        assert!(
            r.as_ref().is_some_and(|(ok, _)| !ok)
                && body.as_deref().is_some_and(|b| b.contains("route_denied")),
            "{:?} without the key its route requires: {body:?}",
            String::from_utf8_lossy(path)
        );
    }
    assert_eq!(up.seen().len(), served, "a request reached the upstream");
}

/// A route whose limits read body values takes only a
/// body with one `Content-Type` of JSON and no `Content-Encoding` but
/// `identity` (`is_plain_json`): an upstream that also takes forms would
/// read its own `to` out of a body built for both readings. Sent as a
/// trailer, a second `Content-Type` (or a `Content-Encoding`) is not
/// checked, and an upstream that merges trailers into its headers reads
/// it: the trailers must not carry one.
#[test]
fn a_content_type_sent_as_a_trailer_does_not_reach_the_upstream() {
    let cfg = json!({
        "default_action": "deny",
        "max_body_bytes": 4096,
        "phone": {"default_calling_code": "44", "denied_prefixes": ["+882"],
                  "hash_key_base64": STANDARD.encode(b"attack-suite-phone-hash-key-0123")},
        "routes": [{"name": "sms", "match": {"path": "/sms", "methods": ["POST"]},
                    "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                                     "local": {"requests": 100, "per": "hour"}}]}]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .trailers()
        .without_buffer_filter()
        .start();
    // JSON to appguard (`to` +447700900123, allowed); to a form reader,
    // `to` is +88212345678, a denied prefix.
    let body = r#"{"to":"+447700900123","x":"&to=%2B88212345678&"}"#;
    let r = envoy.request(
        Req::post_json("/sms", body)
            .trailer("x-checksum", "c1")
            .trailer("content-type", "application/x-www-form-urlencoded")
            .trailer("content-encoding", "identity"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.trailers,
        vec![("x-checksum".to_string(), "c1".to_string())],
        "a content-type or content-encoding trailer went upstream unchecked"
    );
    envoy.assert_vm_healthy();
}
