//! Attestation tokens through a real Envoy: HS256 (base64 secret), ES256 and
//! RS256 (inline JWKS), a remote JWKS through an Envoy cluster with rotation
//! and unknown kids, and every refusal with its exact status and reason.

use crate::harness;

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use harness::http::Req;
use harness::tokens::{self, claims, hs256, hs256_raw, now, SECRET};
use harness::upstream::{Seen, Upstream};
use harness::{wait_until, EnvoyBuilder};
use jwt_simple::prelude::ES256KeyPair;
use serde_json::{json, Value};

fn config(providers: Value) -> Value {
    json!({
        "default_action": "deny",
        "tokens": providers,
        "routes": [
            {"name": "hs", "match": {"prefix": "/hs"}, "tokens": ["hs"]},
            {"name": "inline", "match": {"prefix": "/inline"}, "tokens": ["inline"]},
            {"name": "remote", "match": {"prefix": "/remote"}, "tokens": ["remote"]}
        ]
    })
}

fn providers(jwks_cluster: bool) -> Value {
    let mut p = json!([
        {"name": "hs", "from": [{"header": "approov-token"}],
         "keys": [{"alg": "HS256", "secret_base64": tokens::secret_b64()}],
         "issuer": "https://issuer.example", "audiences": ["api"],
         "binding": {"claim": "pay", "headers": ["authorization"]},
         "replay": {"claim": "jti", "scope": "local"},
         "claim_to_headers": [{"claim": "sub", "header": "x-token-sub"}]},
        {"name": "inline", "from": [{"header": "authorization", "prefix": "Bearer "}],
         "jwks": {"keys": [tokens::ec_fixture_jwk("ec1"), tokens::rsa_fixture_jwk("rsa1")]}}
    ]);
    if jwks_cluster {
        p.as_array_mut().unwrap().push(json!(
            {"name": "remote", "from": [{"header": "x-token"}],
             "remote_jwks": {"cluster": "jwks", "path": "/jwks.json", "timeout_ms": 1000, "min_refetch_seconds": 30, "refresh_seconds": 60}}
        ));
    } else {
        p.as_array_mut().unwrap().push(json!(
            {"name": "remote", "from": [{"header": "x-token"}], "keys": [{"alg": "HS256", "secret_base64": tokens::secret_b64()}]}
        ));
    }
    p
}

fn good_hs(jti: &str, auth: &str) -> String {
    hs256(&claims(
        60,
        json!({"iss": "https://issuer.example", "aud": "api", "sub": "user-42", "jti": jti, "pay": tokens::binding(&[auth])}),
    ))
}

#[test]
fn hs256_valid_token_passes_and_is_removed_upstream() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(providers(false)), up.port).start();
    let t = good_hs("a-1", "Bearer user");
    let r = envoy.request(
        Req::get("/hs/x")
            .header("approov-token", &t)
            .header("authorization", "Bearer user"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.header("approov-token"),
        None,
        "token forwarded upstream"
    );
    assert_eq!(
        seen.header("x-token-sub"),
        Some("user-42"),
        "claim_to_headers"
    );
    // replay of the same jti
    let r = envoy.request(
        Req::get("/hs/x")
            .header("approov-token", &t)
            .header("authorization", "Bearer user"),
    );
    assert_eq!((r.status, r.reason()), (401, Some("token_replayed")));
}

/// A route that takes two providers, the second forwarding its token to
/// an upstream that reads its claims: a forged token in the second's
/// header, sent beside a valid token of the first, is never looked at and
/// so never reaches the upstream; the second's own token, once verified,
/// does.
#[test]
fn a_forwarded_providers_header_reaches_the_upstream_only_with_its_verified_token() {
    let up = Upstream::start();
    let other_secret = [9u8; 32];
    let envoy = EnvoyBuilder::new(
        json!({
            "tokens": [
                {"name": "device", "from": [{"header": "x-device-token"}],
                 "keys": [{"alg": "HS256", "secret_base64": tokens::secret_b64()}]},
                {"name": "session", "from": [{"header": "x-session-token"}], "forward": true,
                 "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(other_secret)}]}
            ],
            "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["device", "session"]}]
        }),
        up.port,
    )
    .start();
    let device = hs256(&claims(60, json!({"sub": "device-1"})));
    // Signed with the device provider's key, not the session provider's.
    let forged = hs256(&claims(60, json!({"sub": "admin"})));
    // Alone, the forged token is refused.
    let r = envoy.request(Req::get("/x").header("x-session-token", &forged));
    assert_eq!((r.status, r.reason()), (401, Some("token_signature")));
    // Beside a valid device token: allowed on the device token, and the
    // forged one (in both spellings an upstream reads) stays behind.
    let r = envoy.request(
        Req::get("/x")
            .header("x-device-token", &device)
            .header("x-session-token", &forged)
            .header("x_session_token", &forged),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header("x-session-token"), None);
    assert_eq!(seen.header("x_session_token"), None);
    assert_eq!(seen.header("x-device-token"), None);
    // The session provider's own token, verified, is forwarded.
    let session = hs256_raw(
        &other_secret,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims(60, json!({"sub": "user-9"})),
    );
    let r = envoy.request(Req::get("/x").header("x-session-token", &session));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-session-token"), Some(session.as_str()));
}

#[test]
fn copies_of_a_captured_token_do_not_spend_its_users_limit() {
    // A per-user local limit of 2 a minute: five replays of one token are
    // refused `token_replayed` before the limit counts them, and the user's
    // next genuine request still passes.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(
        json!({
            "tokens": [{"name": "hs", "from": [{"header": "approov-token"}],
                        "keys": [{"alg": "HS256", "secret_base64": tokens::secret_b64()}],
                        "replay": {"claim": "jti", "scope": "local"}}],
            "routes": [{"name": "api", "match": {"prefix": "/hs/"}, "tokens": ["hs"],
                        "rate_limits": [{"entries": [{"type": "claim", "name": "sub"}],
                                         "local": {"requests": 2, "per": "minute"}}]}]
        }),
        up.port,
    )
    .start();
    let token = |jti: &str| hs256(&claims(60, json!({"sub": "user-7", "jti": jti})));
    let send = |t: &str| envoy.request(Req::get("/hs/x").header("approov-token", t));
    let captured = token("c-1");
    assert_eq!(send(&captured).status, 200);
    for _ in 0..5 {
        let r = send(&captured);
        assert_eq!((r.status, r.reason()), (401, Some("token_replayed")));
    }
    let r = send(&token("c-2"));
    assert_eq!(r.status, 200, "the user's second request: {}", r.text());
    let r = send(&token("c-3"));
    assert_eq!((r.status, r.reason()), (429, Some("rate_limited")));
}

#[test]
fn a_token_naming_a_kid_verifies_with_a_key_that_names_none() {
    // The `hs` provider's secret names no `kid`; the issuer's tokens name
    // one (an Approov keyset, a rotated signer): as with Envoy's
    // jwt_authn, the kid-less key is tried, and only a good signature passes.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(providers(false)), up.port).start();
    let body = json!({"iss": "https://issuer.example", "aud": "api", "jti": "kid-1",
                      "pay": tokens::binding(&["Bearer user"])});
    let named = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "typ": "JWT", "kid": "2026-12"}),
        &claims(60, body.clone()),
    );
    let r = envoy.request(
        Req::get("/hs/x")
            .header("approov-token", &named)
            .header("authorization", "Bearer user"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let forged = hs256_raw(
        &[9u8; 64],
        &json!({"alg": "HS256", "typ": "JWT", "kid": "2026-12"}),
        &claims(60, body),
    );
    let r = envoy.request(
        Req::get("/hs/x")
            .header("approov-token", &forged)
            .header("authorization", "Bearer user"),
    );
    assert_eq!((r.status, r.reason()), (401, Some("token_signature")));
    envoy.assert_vm_healthy();
}

#[test]
fn a_client_copy_of_a_claim_header_never_reaches_the_upstream() {
    // `x-token-sub` is what the `hs` provider sets from a verified `sub`:
    // an upstream trusts it. A client's copy is removed on every request,
    // also where appguard sets nothing (another provider's route, no route).
    let up = Upstream::start();
    let mut cfg = config(providers(false));
    cfg["default_action"] = json!("allow");
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    let remote = hs256(&claims(60, json!({"sub": "someone"})));
    let r = envoy.request(
        Req::get("/remote/x")
            .header("x-token", &remote)
            .header("x-token-sub", "victim-42"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last().header("x-token-sub"),
        None,
        "on another provider's route"
    );
    let r = envoy.request(Req::get("/elsewhere").header("x-token-sub", "victim-42"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-token-sub"), None, "on no route");
    // Spelt with underscores, which Envoy passes on by default and servers
    // with a CGI-style environment read as the same header (HTTP_X_TOKEN_SUB).
    let r = envoy.request(
        Req::get("/elsewhere")
            .header("x_token_sub", "victim-42")
            .header("x-token_sub", "victim-42")
            .header("x_appguard_app", "shop-android")
            // with dots, which PHP's built-in server and FrankenPHP pass on
            // and PHP reads as `_`
            .header("x.token.sub", "victim-42")
            .header("x.appguard.app", "shop-android"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    let canon = |k: &str| k.replace(['_', '.'], "-");
    assert!(
        seen.headers
            .iter()
            .all(|(k, _)| !canon(k).starts_with("x-token-sub")
                && !canon(k).starts_with("x-appguard-")),
        "{:?}",
        seen.headers
    );
    // Where the provider sets it, the upstream sees the verified value only.
    let t = good_hs("claim-1", "Bearer user");
    let r = envoy.request(
        Req::get("/hs/x")
            .header("approov-token", &t)
            .header("authorization", "Bearer user")
            .header("x-token-sub", "victim-42"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-token-sub"), Some("user-42"));
    envoy.assert_vm_healthy();
}

#[test]
fn every_refusal_has_its_status_and_reason() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(providers(false)), up.port).start();
    let n = now();
    let base = json!({"iss": "https://issuer.example", "aud": "api", "pay": tokens::binding(&["Bearer user"])});
    let with = |extra: Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let rsa_pub_as_secret = hs256_raw(
        tokens::RSA_PUB.as_bytes(),
        &json!({"alg": "HS256", "kid": "rsa1"}),
        &claims(60, json!({})),
    );
    let none_alg = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(json!({"alg": "none"}).to_string()),
            e.encode(claims(60, base.clone()).to_string())
        )
    };
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "/hs/x",
            "approov-token",
            hs256(&with(json!({"iat": n - 400, "exp": n - 100}))),
            "token_expired",
        ),
        (
            "/hs/x",
            "approov-token",
            hs256(&with(json!({"iat": n, "exp": n + 60, "nbf": n + 60}))),
            "token_not_yet_valid",
        ),
        (
            "/hs/x",
            "approov-token",
            hs256(&with(json!({"iat": n, "exp": n + 3600}))),
            "token_lifetime",
        ),
        (
            "/hs/x",
            "approov-token",
            hs256(&with(json!({"iat": n}))),
            "token_lifetime",
        ),
        (
            "/hs/x",
            "approov-token",
            hs256_raw(
                &[7u8; 64],
                &json!({"alg": "HS256"}),
                &claims(60, base.clone()),
            ),
            "token_signature",
        ),
        ("/hs/x", "approov-token", none_alg, "token_malformed"),
        (
            "/hs/x",
            "approov-token",
            "not-a-token".into(),
            "token_malformed",
        ),
        (
            "/hs/x",
            "approov-token",
            hs256(&with(
                json!({"iat": n, "exp": n + 60, "iss": "https://evil"}),
            )),
            "token_claims",
        ),
        (
            "/hs/x",
            "approov-token",
            hs256(&with(json!({"iat": n, "exp": n + 60, "aud": "other"}))),
            "token_claims",
        ),
        (
            "/hs/x",
            "approov-token",
            hs256(&with(
                json!({"iat": n, "exp": n + 60, "pay": tokens::binding(&["Bearer someone-else"])}),
            )),
            "token_binding",
        ),
        (
            "/inline/x",
            "authorization",
            format!("Bearer {rsa_pub_as_secret}"),
            "token_signature",
        ),
    ];
    for (path, header, token, reason) in cases {
        let mut req = Req::get(path).header(header, &token);
        if header != "authorization" {
            req = req.header("authorization", "Bearer user");
        }
        let r = envoy.request(req);
        assert_eq!(
            (r.status, r.reason()),
            (401, Some(reason)),
            "{path} {token}: {}",
            r.text()
        );
        // RFC 9110: a 401 carries a challenge (as jwt_authn's do).
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="appguard", error="invalid_token""#),
            "{reason}"
        );
    }
    let r = envoy.request(Req::get("/hs/x"));
    assert_eq!((r.status, r.reason()), (401, Some("token_missing")));
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="appguard""#)
    );
    assert!(up.seen().is_empty(), "a refused token reached upstream");
}

#[test]
fn es256_and_rs256_from_inline_jwks() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(providers(false)), up.port).start();
    let es = tokens::es256("ec1", &claims(60, json!({})));
    let r = envoy.request(Req::get("/inline/a").header("authorization", &format!("Bearer {es}")));
    assert_eq!(r.status, 200, "{}", r.text());
    let rs = tokens::rs256("rsa1", &claims(60, json!({})));
    let r = envoy.request(Req::get("/inline/b").header("authorization", &format!("Bearer {rs}")));
    assert_eq!(r.status, 200, "{}", r.text());
    // the RS256 token re-labelled with the EC kid
    let relabelled = tokens::rs256("ec1", &claims(60, json!({})));
    let r = envoy
        .request(Req::get("/inline/c").header("authorization", &format!("Bearer {relabelled}")));
    assert_eq!((r.status, r.reason()), (401, Some("token_signature")));
}

/// A JWKS server whose document the test changes while Envoy runs.
struct JwksServer {
    doc: Arc<Mutex<(u16, String)>>,
    server: Upstream,
}

impl JwksServer {
    fn start(jwks: Value) -> JwksServer {
        let doc = Arc::new(Mutex::new((200u16, jwks.to_string())));
        let d = doc.clone();
        let server = Upstream::with_handler(Arc::new(move |_s: &Seen| {
            let (status, body) = d.lock().unwrap().clone();
            (
                status,
                vec![("content-type".into(), "application/json".into())],
                body.into_bytes(),
            )
        }));
        JwksServer { doc, server }
    }
    fn set(&self, status: u16, body: &str) {
        *self.doc.lock().unwrap() = (status, body.to_string());
    }
    fn fetches(&self) -> usize {
        self.server.seen().len()
    }
}

#[test]
fn remote_jwks_through_a_cluster_with_rotation_and_unknown_kid() {
    let k1 = ES256KeyPair::generate().with_key_id("k1");
    let k2 = ES256KeyPair::generate().with_key_id("k2");
    let jwks = JwksServer::start(json!({"keys": [tokens::es256_jwk(&k1, "k1")]}));
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(providers(true)), up.port)
        .http_cluster("jwks", jwks.server.port)
        .start();
    // the first request may arrive before any keys: held, then resumed
    let t1 = tokens::es256_with(&k1, &claims(60, json!({})));
    let r = envoy.request(Req::get("/remote/a").header("x-token", &t1));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(jwks.fetches() >= 1);
    assert_eq!(jwks.server.last().path, "/jwks.json");
    // rotation: the server now publishes k2; a k2 token triggers a re-fetch
    jwks.set(
        200,
        &json!({"keys": [tokens::es256_jwk(&k2, "k2")]}).to_string(),
    );
    let t2 = tokens::es256_with(&k2, &claims(60, json!({})));
    let r = envoy.request(Req::get("/remote/b").header("x-token", &t2));
    assert_eq!(r.status, 200, "rotated key: {}", r.text());
    // a kid nobody publishes: refused without hammering the JWKS server
    let k3 = ES256KeyPair::generate().with_key_id("k3");
    let t3 = tokens::es256_with(&k3, &claims(60, json!({})));
    let before = jwks.fetches();
    for _ in 0..5 {
        let r = envoy.request(Req::get("/remote/c").header("x-token", &t3));
        assert_eq!((r.status, r.reason()), (401, Some("token_signature")));
    }
    let paths: Vec<String> = jwks.server.seen().iter().map(|s| s.path.clone()).collect();
    assert!(
        jwks.fetches() - before <= 1,
        "unknown kid re-fetches are rate-limited: {before} then {paths:?}"
    );
}

/// A key published just after a re-fetch for a made-up `kid`: its tokens
/// are refused until the next re-fetch is allowed, but those refusals do
/// not spend their clients' failure budget, so the rotation does not lock
/// them out once its key is fetched.
#[test]
fn a_key_published_within_the_refetch_interval_does_not_spend_the_budget() {
    let k1 = ES256KeyPair::generate().with_key_id("k1");
    let k2 = ES256KeyPair::generate().with_key_id("k2");
    let jwks = JwksServer::start(json!({"keys": [tokens::es256_jwk(&k1, "k1")]}));
    let mut p = providers(false);
    p[2] = json!({"name": "remote", "from": [{"header": "x-token"}],
        "remote_jwks": {"cluster": "jwks", "path": "/jwks.json", "timeout_ms": 1000,
                        "min_refetch_seconds": 10, "refresh_seconds": 600},
        "failure_budget": {"failures": 2, "window_seconds": 3600}});
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(p), up.port)
        .http_cluster("jwks", jwks.server.port)
        .start();
    let send = |t: &str| {
        let r = envoy.request(Req::get("/remote/a").header("x-token", t));
        (r.status, r.reason().map(str::to_owned))
    };
    let t1 = tokens::es256_with(&k1, &claims(60, json!({})));
    assert_eq!(send(&t1), (200, None));
    // A made-up kid: re-fetched, still unknown, charged (1 of 2).
    let made_up = ES256KeyPair::generate().with_key_id("nobody");
    let t3 = tokens::es256_with(&made_up, &claims(60, json!({})));
    let fetched = jwks.fetches();
    let refused = (401, Some("token_signature".to_owned()));
    // The lease counts whole seconds: the next re-fetch may come as soon
    // as 9 s after this one.
    let refetch_allowed = std::time::Instant::now() + std::time::Duration::from_secs(9);
    let too_slow = "the machine is too slow for this test: the re-fetch interval passed";
    assert_eq!(send(&t3), refused);
    assert_eq!(jwks.fetches(), fetched + 1, "the made-up kid re-fetched");
    // The issuer publishes k2 now, inside the re-fetch interval.
    jwks.set(
        200,
        &json!({"keys": [tokens::es256_jwk(&k1, "k1"), tokens::es256_jwk(&k2, "k2")]}).to_string(),
    );
    let t2 = tokens::es256_with(&k2, &claims(60, json!({})));
    for _ in 0..5 {
        let answer = send(&t2);
        assert!(std::time::Instant::now() < refetch_allowed, "{too_slow}");
        assert_eq!(answer, refused, "k2 before the next re-fetch");
    }
    assert_eq!(jwks.fetches(), fetched + 1, "no re-fetch within 10 s");
    // The counter is defined (at 0) when the VM is configured: absent
    // would mean a renamed or undefined stat, not an unspent budget.
    assert_eq!(
        envoy.stat("appguard_verification_budget_refusals"),
        Some(0),
        "the client's budget was spent by a key it could not know was new"
    );
    // Once a re-fetch is allowed, the same client's k2 token passes.
    wait_until(20, "the k2 token to pass", || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        send(&t2) == (200, None)
    });
    assert_eq!(jwks.fetches(), fetched + 2);
}

/// The providers, with `remote` fetching its JWKS from the `jwks` cluster,
/// refreshed every 10 s (the least allowed), re-fetched for an unknown kid
/// at most once a minute.
fn refreshing_every_10s(timeout_ms: u64) -> Value {
    let mut p = providers(false);
    p[2] = json!({"name": "remote", "from": [{"header": "x-token"}],
        "remote_jwks": {"cluster": "jwks", "path": "/jwks.json", "timeout_ms": timeout_ms,
                        "min_refetch_seconds": 60, "refresh_seconds": 10}});
    p
}

/// Answers can come back out of order: a background refresh sent before a
/// key rotation, and slow to answer, must not replace the rotated keys that
/// a later fetch already stored for every worker.
#[test]
fn a_slow_answer_to_an_earlier_fetch_does_not_undo_a_rotation() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let k1 = ES256KeyPair::generate().with_key_id("k1");
    let k2 = ES256KeyPair::generate().with_key_id("k2");
    let only_k1 = json!({"keys": [tokens::es256_jwk(&k1, "k1")]}).to_string();
    let both =
        json!({"keys": [tokens::es256_jwk(&k1, "k1"), tokens::es256_jwk(&k2, "k2")]}).to_string();
    let doc = Arc::new(Mutex::new(only_k1));
    let calls = Arc::new(AtomicUsize::new(0));
    let late_sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (d, c, l) = (doc.clone(), calls.clone(), late_sent.clone());
    // The second GET is the background refresh: it takes the document as it
    // is when it arrives, then answers 3 s late.
    let server = Upstream::with_handler(Arc::new(move |_s: &Seen| {
        let body = d.lock().unwrap().clone();
        if c.fetch_add(1, Ordering::SeqCst) == 1 {
            std::thread::sleep(std::time::Duration::from_secs(3));
            l.store(true, Ordering::SeqCst);
        }
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            body.into_bytes(),
        )
    }));
    let p = refreshing_every_10s(5000);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(p), up.port)
        .http_cluster("jwks", server.port)
        .start();
    // The first GET, sent at start: its keys are loaded before the first
    // request, which then sends none of its own.
    envoy.wait_log("bytes loaded", 1, 10);
    let t1 = tokens::es256_with(&k1, &claims(60, json!({})));
    let r = envoy.request(Req::get("/remote/a").header("x-token", &t1));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // wait for the refresh to be under way, then rotate
    wait_until(30, "a background refresh", || {
        calls.load(Ordering::SeqCst) >= 2
    });
    *doc.lock().unwrap() = both;
    let t2 = tokens::es256_with(&k2, &claims(60, json!({})));
    let r = envoy.request(Req::get("/remote/b").header("x-token", &t2));
    assert_eq!(
        r.status,
        200,
        "the rotated key, fetched at once: {}",
        r.text()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "one re-fetch for the new kid"
    );
    // the refresh now answers with the document from before the rotation
    wait_until(10, "the late answer to be sent", || {
        late_sent.load(Ordering::SeqCst)
    });
    wait_until(10, "the late answer to be read and set aside", || {
        envoy.log().contains("an answer to an earlier fetch")
    });
    // new tokens, so that the verified-token cache cannot answer
    for (i, path) in ["/remote/c", "/remote/d"].iter().enumerate() {
        let t = tokens::es256_with(&k2, &claims(60, json!({"n": i})));
        let r = envoy.request(Req::get(path).header("x-token", &t));
        assert_eq!(r.status, 200, "k2 after the late answer: {}", r.text());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "no more fetches were needed"
    );
    assert!(
        envoy.log().contains("an answer to an earlier fetch"),
        "the late answer is logged as not stored: {}",
        envoy.log()
    );
}

/// Taking a key out of the JWKS revokes it: tokens it signed that a worker
/// had already verified and cached stop passing at the next refresh.
#[test]
fn a_key_taken_out_of_the_jwks_stops_its_cached_tokens_at_the_next_refresh() {
    let k1 = ES256KeyPair::generate().with_key_id("k1");
    let k2 = ES256KeyPair::generate().with_key_id("k2");
    let jwks = JwksServer::start(
        json!({"keys": [tokens::es256_jwk(&k1, "k1"), tokens::es256_jwk(&k2, "k2")]}),
    );
    let p = refreshing_every_10s(1000);
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(p), up.port)
        .http_cluster("jwks", jwks.server.port)
        .concurrency(1)
        .start();
    let t1 = tokens::es256_with(&k1, &claims(60, json!({})));
    let t2 = tokens::es256_with(&k2, &claims(60, json!({})));
    for t in [&t1, &t1, &t2] {
        let r = envoy.request(Req::get("/remote/a").header("x-token", t));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // k1 is compromised: the issuer publishes k2 alone
    jwks.set(
        200,
        &json!({"keys": [tokens::es256_jwk(&k2, "k2")]}).to_string(),
    );
    let fetched = jwks.fetches();
    let loaded = || envoy.log().matches("bytes loaded").count();
    let loads = loaded();
    wait_until(30, "a background refresh", || jwks.fetches() != fetched);
    wait_until(10, "the refreshed keys to be stored", || loaded() > loads);
    // Whichever VM fetched them (the main thread's or the worker's), the
    // worker uses them from its next tick, a second at most: from then on
    // the cached token of the removed key is refused. (Without the
    // version in the cache's key it would pass until its `exp`, a minute:
    // polling for up to 10 s leaves a loaded machine its ticks and still
    // tells the two apart.)
    let refused = (401, Some("token_signature".to_owned()));
    wait_until(
        10,
        "a cached token of the removed key to be refused",
        || {
            let r = envoy.request(Req::get("/remote/b").header("x-token", &t1));
            let answer = (r.status, r.reason().map(str::to_owned));
            assert!(
                answer == refused || answer == (200, None),
                "a cached token of the removed key: {answer:?}"
            );
            answer == refused
        },
    );
    let r = envoy.request(Req::get("/remote/c").header("x-token", &t2));
    assert_eq!(r.status, 200, "the kept key's token: {}", r.text());
}

#[test]
fn jwks_down_before_first_keys_is_503_jwks_unavailable() {
    let jwks = JwksServer::start(json!({}));
    jwks.set(500, "oops");
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(providers(true)), up.port)
        .http_cluster("jwks", jwks.server.port)
        .start();
    let k1 = ES256KeyPair::generate().with_key_id("k1");
    let t = tokens::es256_with(&k1, &claims(60, json!({})));
    let r = envoy.request(Req::get("/remote/a").header("x-token", &t));
    assert_eq!(
        (r.status, r.reason()),
        (503, Some("jwks_unavailable")),
        "{}",
        r.text()
    );
    // garbage is no better: once it has been fetched (a request fetches
    // again from the second after a failed fetch, the background every
    // 2 s) and every JWKS request Envoy sent, this one included, has been
    // answered and counted as failed, the token is still refused
    // (The failures are read before the document changes: a fetch on its
    // way, such as the root's first one, may be answered with the garbage
    // and counted before `fetched` is read.)
    let failures = "appguard_jwks_fetch_failures";
    let failed = envoy.stat(failures).unwrap_or(0);
    jwks.set(200, "{not json");
    let fetched = jwks.fetches();
    wait_until(15, "a fetch of the garbage document", || {
        jwks.fetches() > fetched
    });
    let now_failed = envoy.wait_stat(failures, 15, |n| {
        n >= envoy.stat("cluster.jwks.upstream_rq_total").unwrap_or(0)
    });
    assert!(
        now_failed > failed,
        "{now_failed} failures, {failed} before"
    );
    let r = envoy.request(Req::get("/remote/a").header("x-token", &t));
    assert_eq!((r.status, r.reason()), (503, Some("jwks_unavailable")));
    // and once the server is back, keys come in and the token passes: a
    // request fetches again from the second after the last failed fetch
    // (the background refresh may be first)
    jwks.set(
        200,
        &json!({"keys": [tokens::es256_jwk(&k1, "k1")]}).to_string(),
    );
    wait_until(15, "the token to pass", || {
        let r = envoy.request(Req::get("/remote/a").header("x-token", &t));
        if r.status != 200 {
            assert_eq!(r.reason(), Some("jwks_unavailable"), "{}", r.text());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        r.status == 200
    });
    assert!(up.seen().len() == 1);
    let _ = SECRET;
}

#[test]
fn a_jti_used_on_one_worker_is_a_replay_on_the_other() {
    // `replay.scope: local` is per instance, not per worker: the table is
    // Envoy's shared data. Separate connections, until a replay has been
    // refused by the worker that did not accept the token.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config(providers(false)), up.port)
        .concurrency(2)
        .start();
    let cx = |n: u8| {
        envoy
            .stat(&format!(
                "listener.127.0.0.1_{}.worker_{n}.downstream_cx_total",
                envoy.port
            ))
            .unwrap_or(0)
    };
    let t = good_hs("two-workers-1", "Bearer user");
    let send = || {
        let before = (cx(0), cx(1));
        let r = envoy.request(
            Req::get("/hs/x")
                .header("approov-token", &t)
                .header("authorization", "Bearer user"),
        );
        let worker = if cx(0) > before.0 { 0 } else { 1 };
        (r, worker)
    };
    let (first, accepted_by) = send();
    assert_eq!(first.status, 200, "{}", first.text());
    let mut refused_elsewhere = false;
    for _ in 0..100 {
        let (r, worker) = send();
        assert_eq!((r.status, r.reason()), (401, Some("token_replayed")));
        if worker != accepted_by {
            refused_elsewhere = true;
            break;
        }
    }
    assert!(refused_elsewhere, "no request reached the other worker");
    assert_eq!(up.seen().len(), 1);
}

/// The `hs` provider's replay table with `n` entries; `extra_route` adds an
/// open `/open` route, by which a test sees that a listener update took
/// effect.
fn with_max_entries(n: u32, extra_route: bool) -> Value {
    let mut p = providers(false);
    p[0]["replay"]["max_entries"] = json!(n);
    let mut c = config(p);
    if extra_route {
        c["routes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "open", "match": {"prefix": "/open"}}));
    }
    c
}

/// Waits until the `/open` route of [`with_max_entries`] answers.
fn wait_for_the_open_route(envoy: &harness::Envoy) {
    wait_until(15, "the update to take effect", || {
        envoy.request(Req::get("/open/x")).status == 200
    });
}

/// One HTTP/1.1 connection kept open across requests, so that it stays on
/// the listener configuration it was accepted under while that drains.
struct KeepAlive {
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl KeepAlive {
    fn open(port: u16) -> KeepAlive {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        KeepAlive {
            reader: std::io::BufReader::new(stream),
        }
    }

    /// Sends a GET with `token`; returns the status, the reason of a local
    /// reply, and whether Envoy announced it closes the connection.
    fn get(&mut self, token: &str) -> (u16, Option<String>, bool) {
        use std::io::{BufRead, Read, Write};
        let req = format!(
            "GET /hs/x HTTP/1.1\r\nhost: localhost\r\napproov-token: {token}\r\nauthorization: Bearer user\r\n\r\n"
        );
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let (mut len, mut closing) = (0usize, false);
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            closing |= h == "connection: close";
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).unwrap();
        let reason = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        (status, reason, closing)
    }
}

/// While a listener update drains, connections opened before it stay on the
/// old configuration: with another `max_entries`, the old and the new
/// configuration must still see each other's `jti`s.
#[test]
fn across_a_listener_drain_old_and_new_configurations_see_each_others_jtis() {
    let up = Upstream::start();
    // A day's drain: Envoy closes a draining HTTP/1.1 connection with odds
    // that grow over the drain time, negligible over these few seconds.
    let builder = EnvoyBuilder::new(with_max_entries(16, false), up.port)
        .listener_from_file()
        .drain_seconds(86_400);
    let envoy = builder.start();
    let mut old = KeepAlive::open(envoy.port);
    let before = good_hs("drain-before", "Bearer user");
    assert_eq!(old.get(&before).0, 200);

    envoy.update_listener(&builder.clone().plugin_config(with_max_entries(65536, true)));
    wait_for_the_open_route(&envoy);
    // The new configuration knows the old layout from its start; the old
    // one's ticks must have read the new layout: the main thread's root
    // and the one worker's each log it.
    wait_until(10, "the old configuration to follow the new layout", || {
        envoy
            .log()
            .matches("replaced by a configuration with 65536 replay entries")
            .count()
            >= 2
    });
    let send_new = |t: &str| {
        let r = envoy.request(
            Req::get("/hs/x")
                .header("approov-token", t)
                .header("authorization", "Bearer user"),
        );
        (r.status, r.reason().map(str::to_owned))
    };
    let replayed = (401, Some("token_replayed".to_owned()));
    // used on the new configuration, replayed on the old connection
    let on_new = good_hs("drain-on-new", "Bearer user");
    assert_eq!(send_new(&on_new), (200, None));
    let (status, reason, closing) = old.get(&on_new);
    assert!(!closing, "Envoy closed the draining connection early");
    assert_eq!(
        (status, reason),
        replayed,
        "the old configuration let a new-configuration jti through"
    );
    // used on the old connection, replayed on the new configuration
    let on_old = good_hs("drain-on-old", "Bearer user");
    assert_eq!(
        old.get(&on_old).0,
        200,
        "the old configuration still serves"
    );
    assert_eq!(send_new(&on_old), replayed);
    // and what the old one recorded before the change
    assert_eq!(send_new(&before), replayed);
    assert_eq!(old.get(&before).0, 401);
    let log = envoy.log();
    assert!(
        log.contains("replaced by a configuration with 65536 replay entries"),
        "{log}"
    );
    envoy.assert_vm_healthy();
}

#[test]
fn a_jti_used_before_max_entries_changed_is_still_a_replay_after() {
    // `max_entries` decides which bucket of the shared table a `jti` is
    // looked up in. A control plane that raises it pushes a new listener;
    // the table (Envoy's shared data) stays, and a `jti` recorded under
    // the old capacity must still be found under the new one. 16 entries
    // are one bucket, 65,536 are 4,096: each of these `jti`s lands in
    // another bucket after the change with odds of 4,095 in 4,096.
    let up = Upstream::start();
    let builder = EnvoyBuilder::new(with_max_entries(16, false), up.port).listener_from_file();
    let envoy = builder.start();
    let send = |t: &str| {
        envoy.request(
            Req::get("/hs/x")
                .header("approov-token", t)
                .header("authorization", "Bearer user"),
        )
    };
    let used: Vec<String> = (0..3)
        .map(|i| good_hs(&format!("resize-{i}"), "Bearer user"))
        .collect();
    for t in &used {
        let r = send(t);
        assert_eq!(r.status, 200, "{}", r.text());
        let r = send(t);
        assert_eq!((r.status, r.reason()), (401, Some("token_replayed")));
    }

    envoy.update_listener(&builder.clone().plugin_config(with_max_entries(65536, true)));
    wait_for_the_open_route(&envoy);
    for t in &used {
        let r = send(t);
        assert_eq!(
            (r.status, r.reason()),
            (401, Some("token_replayed")),
            "a jti used before the change passed again"
        );
    }
    // new values are recorded under the new capacity
    let fresh = good_hs("resize-new", "Bearer user");
    assert_eq!(send(&fresh).status, 200);
    assert_eq!(send(&fresh).reason(), Some("token_replayed"));
    let passed = up.seen().iter().filter(|s| s.path == "/hs/x").count();
    assert_eq!(passed, 4, "each jti reached the upstream once");
    let log = envoy.log();
    assert!(
        log.contains("tokens hs: replay.max_entries changed; values recorded under 16 entries are checked too"),
        "{log}"
    );
    envoy.assert_vm_healthy();
}

/// A provider with a configured key (no `kid`) beside a remote JWKS whose
/// keys name none. While the JWKS is down, a genuine kid-less token on a
/// `failure_mode: allow` route asks for the keys, then is let through
/// degraded (the JWKS is unavailable), not refused `token_signature`; once
/// the keys load, it verifies.
#[test]
fn a_kidless_token_waits_for_remote_keys_and_follows_the_failure_mode_without_them() {
    let issuer = ES256KeyPair::generate();
    let mut issuer_jwk = tokens::es256_jwk(&issuer, "x");
    issuer_jwk.as_object_mut().unwrap().remove("kid");
    let mut own_jwk = tokens::ec_fixture_jwk("x");
    own_jwk.as_object_mut().unwrap().remove("kid");
    let doc = json!({"keys": [issuer_jwk]}).to_string();
    let jwks = JwksServer::start(json!({"keys": []}));
    jwks.set(503, "down");
    let cfg = json!({
        "default_action": "deny",
        "tokens": [{"name": "remote", "from": [{"header": "x-token"}],
                    "keys": [{"jwk": own_jwk}],
                    "remote_jwks": {"cluster": "jwks", "path": "/jwks.json", "timeout_ms": 1000,
                                    "refresh_seconds": 600}}],
        "routes": [{"name": "remote", "match": {"prefix": "/remote"}, "tokens": ["remote"],
                    "failure_mode": "allow"}]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .http_cluster("jwks", jwks.server.port)
        .start();
    let send = |jti: &str| {
        let t = tokens::es256_with(&issuer, &claims(60, json!({"jti": jti})));
        let r = envoy.request(Req::get("/remote/a").header("x-token", &t));
        (r.status, r.reason().map(str::to_owned))
    };
    let before = jwks.fetches();
    assert_eq!(send("a"), (200, None));
    assert!(jwks.fetches() > before, "the request asked for the keys");
    assert_eq!(
        envoy.stat("appguard_decisions.route.remote.decision.degraded.reason.jwks_unavailable"),
        Some(1)
    );
    jwks.set(200, &doc);
    envoy.wait_log("bytes loaded", 1, 15);
    assert_eq!(send("b"), (200, None));
    assert_eq!(
        envoy.stat("appguard_decisions.route.remote.decision.allow.reason.none"),
        Some(1)
    );
    envoy.assert_vm_healthy();
}

/// The header a token is bound to (`binding.headers`) is
/// checked in the request headers only. Sent again as a trailer, which
/// Envoy passes on with `enable_trailers` and which an upstream that merges
/// trailers into the headers reads, it reaches the upstream unchecked: a
/// captured token is then used with another session than the one it is
/// bound to. appguard already removes the token and API-key headers from
/// trailers for this very reason (`on_http_request_trailers`); the bound
/// header is a credential too (`config.rs` says so of it: "What a token is
/// bound to is a credential too (a session id, a bearer token)").
#[test]
fn a_bound_header_sent_as_a_trailer_does_not_reach_the_upstream() {
    let cfg = json!({
        "default_action": "deny",
        "tokens": [{"name": "bound", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": tokens::secret_b64()}],
                    "binding": {"claim": "pay", "headers": ["x-session-id"], "required": true}}],
        "routes": [{"name": "api", "match": {"prefix": "/api"}, "tokens": ["bound"]}]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .trailers()
        .without_buffer_filter()
        .start();
    let t = hs256(&claims(
        60,
        json!({"pay": tokens::binding(&["victim-session"])}),
    ));
    let send = |session: &str, trailer: Option<&str>| {
        let mut req = Req::post_json("/api/x", r#"{"a":1}"#)
            .header("approov-token", &t)
            .header("x-session-id", session)
            .trailer("x-checksum", "c1");
        if let Some(v) = trailer {
            req = req.trailer("x-session-id", v);
        }
        envoy.request(req)
    };
    // The binding holds in the headers.
    let r = send("attacker-session", None);
    assert_eq!((r.status, r.reason()), (401, Some("token_binding")));
    let r = send("victim-session", Some("attacker-session"));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header("x-session-id"), Some("victim-session"));
    assert_eq!(
        seen.trailers,
        vec![("x-checksum".to_string(), "c1".to_string())],
        "a trailer copy of the bound header went upstream unchecked"
    );
    envoy.assert_vm_healthy();
}
