//! Request signing (RFC 9421) bound to the attested install, through a real
//! Envoy: a copied token is useless without the install's private key.

use crate::harness;

use appguard::signing::{
    default_covered_components, sign_request, InstallSigningKey, Message, SignatureOptions,
};
use harness::http::Req;
use harness::tokens::{claims, hs256, now};
use harness::upstream::Upstream;
use harness::{Envoy, EnvoyBuilder};
use serde_json::json;

const BODY: &str = r#"{"to":"+447700900123","template":"otp"}"#;

fn start() -> (Upstream, Envoy) {
    let cfg = json!({
        "tokens": [{"name": "approov", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}],
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60}}],
        "routes": [{"name": "sms", "match": {"prefix": "/v1/"}, "tokens": ["approov"]}]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    (up, envoy)
}

fn install_key(seed: u8) -> InstallSigningKey {
    InstallSigningKey::p256_from_bytes(&[seed; 32]).unwrap()
}

fn token_for(key: &InstallSigningKey) -> String {
    hs256(&claims(120, json!({"ipk": key.public_key().to_ipk()})))
}

/// A request signed by `key` for (method, path, body) with the default
/// coverage; `components` overrides the covered list when given.
fn signed(
    key: &InstallSigningKey,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
    created: u64,
    components: Option<Vec<String>>,
) -> Req {
    let headers = vec![
        ("approov-token".to_string(), token.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let b = (!body.is_empty()).then_some(body.as_bytes());
    let msg = Message::request(method, "http", "localhost", p, q, &headers, b);
    let comps = components.unwrap_or_else(|| default_covered_components(&msg, "approov-token"));
    let sig = sign_request(key, &msg, &SignatureOptions::new("install", comps, created)).unwrap();
    let mut req = Req::new(method, path)
        .header("approov-token", token)
        .header("content-type", "application/json")
        .header("signature-input", &sig.signature_input)
        .header("signature", &sig.signature)
        .body(body.as_bytes());
    if let Some(d) = sig.content_digest {
        req = req.header("content-digest", &d);
    }
    req
}

fn with_body(mut r: Req, body: &str) -> Req {
    r.body = body.as_bytes().to_vec();
    r
}

#[test]
fn a_signed_request_passes() {
    let (up, envoy) = start();
    let key = install_key(7);
    let t = token_for(&key);
    let r = envoy.request(signed(&key, &t, "POST", "/v1/sms", BODY, now(), None));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body, BODY.as_bytes());
    let r = envoy.request(signed(
        &key,
        &t,
        "GET",
        "/v1/status?verbose=1",
        "",
        now(),
        None,
    ));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn tampering_and_replays_are_signature_invalid() {
    let (up, envoy) = start();
    let key = install_key(7);
    let t = token_for(&key);
    let deny = |r: harness::http::Resp, what: &str| {
        assert_eq!(
            (r.status, r.reason()),
            (401, Some("signature_invalid")),
            "{what}: {}",
            r.text()
        );
    };
    // the same token and signature replayed with another body
    let good = signed(&key, &t, "POST", "/v1/sms", BODY, now(), None);
    deny(
        envoy.request(with_body(
            good.clone(),
            r#"{"to":"+447700900999","template":"otp"}"#,
        )),
        "other body",
    );
    // ... with another path
    let mut moved = good.clone();
    moved.path = "/v1/sms-bulk".into();
    deny(envoy.request(moved), "other path");
    // a signature older than the maximum age (60 s)
    deny(
        envoy.request(signed(&key, &t, "POST", "/v1/sms", BODY, now() - 600, None)),
        "stale",
    );
    // a POST whose signature does not cover content-digest
    let no_digest = vec![
        "@method".into(),
        "@authority".into(),
        "@path".into(),
        "approov-token".into(),
    ];
    deny(
        envoy.request(signed(
            &key,
            &t,
            "POST",
            "/v1/sms",
            BODY,
            now(),
            Some(no_digest),
        )),
        "digest not covered",
    );
    // signed by another key than the one in the token
    let thief = install_key(9);
    deny(
        envoy.request(signed(&thief, &t, "POST", "/v1/sms", BODY, now(), None)),
        "wrong key",
    );
    // no signature at all with a token that carries an install key
    deny(
        envoy.request(Req::post_json("/v1/sms", BODY).header("approov-token", &t)),
        "unsigned",
    );
    assert!(up.seen().is_empty(), "nothing reached the upstream");
    // and the untouched request still passes
    assert_eq!(envoy.request(good).status, 200);
}
