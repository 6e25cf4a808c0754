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
fn the_authority_is_the_host_the_client_sent_with_its_port() {
    // A client signs the authority it sends (`Host: API.Example:port`);
    // Envoy passes it on as `:authority`, and appguard rebuilds
    // `@authority` and `@target-uri` from it (lower case, the port kept as
    // it is not the scheme's default). The tests above all send
    // `host: localhost`.
    let (up, envoy) = start();
    let key = install_key(7);
    let t = token_for(&key);
    let host = format!("API.Example.TEST:{}", envoy.port);
    let headers = vec![
        ("approov-token".to_string(), t.clone()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let sign = |components: Vec<String>| {
        let msg = Message::request(
            "POST",
            "http",
            &host,
            "/v1/sms",
            None,
            &headers,
            Some(BODY.as_bytes()),
        );
        sign_request(
            &key,
            &msg,
            &SignatureOptions::new("install", components, now()),
        )
        .unwrap()
    };
    let mut with_target: Vec<String> = vec![
        "@method".into(),
        "@target-uri".into(),
        "approov-token".into(),
        "content-digest".into(),
    ];
    let with_authority: Vec<String> = vec![
        "@method".into(),
        "@authority".into(),
        "@path".into(),
        "approov-token".into(),
        "content-digest".into(),
    ];
    for (what, comps) in [
        ("@target-uri", with_target.clone()),
        ("@authority", with_authority),
    ] {
        let sig = sign(comps);
        let req = Req::new("POST", "/v1/sms")
            .header("host", &host)
            .header("approov-token", &t)
            .header("content-type", "application/json")
            .header("signature-input", &sig.signature_input)
            .header("signature", &sig.signature)
            .header("content-digest", sig.content_digest.as_deref().unwrap())
            .body(BODY.as_bytes());
        let r = envoy.request(req);
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    }
    assert_eq!(up.seen().len(), 2);
    // Signed for another port: refused.
    with_target.retain(|c| c != "content-digest");
    let msg = Message::request(
        "GET",
        "http",
        "api.example.test:1",
        "/v1/x",
        None,
        &headers,
        None,
    );
    let sig = sign_request(
        &key,
        &msg,
        &SignatureOptions::new("install", with_target, now()),
    )
    .unwrap();
    let r = envoy.request(
        Req::new("GET", "/v1/x")
            .header("host", &host)
            .header("approov-token", &t)
            .header("signature-input", &sig.signature_input)
            .header("signature", &sig.signature),
    );
    assert_eq!((r.status, r.reason()), (401, Some("signature_invalid")));
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
    // The decision log says why each was refused (names, never values).
    let log = envoy.log();
    for why in [
        "signature=\"content-digest does not match the body\"",
        "signature=\"signature does not verify\"",
        "signature=\"signature too old\"",
        "signature=\"signature does not cover content-digest\"",
        "signature=\"no Signature-Input or Signature field\"",
    ] {
        assert!(log.contains(why), "{why}: {log}");
    }
    // and the untouched request still passes
    assert_eq!(envoy.request(good).status, 200);
}

#[test]
fn a_streamed_body_without_content_length_is_covered_too() {
    // A body whose length the headers do not give (chunked here; HTTP/2 and
    // HTTP/3 need no content-length at all) is a body all the same: a
    // genuine signature over its digest passes, and a signature that does
    // not cover the digest cannot carry an unsigned body.
    let (up, envoy) = start();
    let key = install_key(7);
    let t = token_for(&key);
    let good = signed(&key, &t, "POST", "/v1/sms", BODY, now(), None);
    let chunked = |req: &Req| {
        let r = envoy.request(req.clone().chunked());
        (r.status, r.reason().map(str::to_string))
    };
    assert_eq!(chunked(&good), (200, None));
    assert_eq!(up.last().body, BODY.as_bytes());
    let headers_only = vec![
        "@method".into(),
        "@authority".into(),
        "@path".into(),
        "approov-token".into(),
    ];
    let mut bare = signed(&key, &t, "POST", "/v1/sms", "", now(), Some(headers_only));
    bare.body = BODY.as_bytes().to_vec();
    assert_eq!(
        chunked(&bare),
        (401, Some("signature_invalid".to_string())),
        "an unsigned body under a signature without content-digest"
    );
    assert_eq!(up.seen().len(), 1);
    envoy.assert_vm_healthy();
}

#[test]
fn a_copied_token_sent_first_does_not_burn_the_genuine_clients_jti() {
    // `replay` with `message_signing`: the jti is recorded only once the
    // signature (here over the body) and every other check passed. A copy
    // of the token sent ahead of the genuine client, unsigned or with a
    // body of its own, is refused and leaves the jti unused.
    let cfg = json!({
        "tokens": [{"name": "approov", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}],
                    "replay": {"claim": "jti", "scope": "local"},
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60}}],
        "routes": [{"name": "sms", "match": {"prefix": "/v1/"}, "tokens": ["approov"]}]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    let key = install_key(7);
    let t = hs256(&claims(
        120,
        json!({"ipk": key.public_key().to_ipk(), "jti": "burn-me-not"}),
    ));
    let genuine = signed(&key, &t, "POST", "/v1/sms", BODY, now(), None);
    let unsigned = Req::new("POST", "/v1/sms")
        .header("approov-token", &t)
        .header("content-type", "application/json")
        .body(BODY.as_bytes());
    let other_body = with_body(
        genuine.clone(),
        r#"{"to":"+447700900999","template":"otp"}"#,
    );
    for (what, copy) in [("unsigned", unsigned), ("other body", other_body)] {
        let r = envoy.request(copy);
        assert_eq!(
            (r.status, r.reason()),
            (401, Some("signature_invalid")),
            "{what}: {}",
            r.text()
        );
    }
    let r = envoy.request(genuine.clone());
    assert_eq!(r.status, 200, "the genuine client: {}", r.text());
    assert_eq!(up.seen().len(), 1, "only the genuine request went upstream");
    let r = envoy.request(genuine);
    assert_eq!((r.status, r.reason()), (401, Some("token_replayed")));
}

#[test]
fn single_use_refuses_a_captured_signed_request_sent_again() {
    // A signature stops changes, not copies: without `single_use` the same
    // signed request, byte for byte, passes again while `created` is
    // fresh. With it, the copy is refused and a new signature passes.
    let start_with = |single_use: bool| {
        let cfg = json!({
            "tokens": [{"name": "approov", "from": [{"header": "approov-token"}],
                        "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}],
                        "message_signing": {"claim": "ipk", "max_age_seconds": 60, "single_use": single_use}}],
            "routes": [{"name": "sms", "match": {"prefix": "/v1/"}, "tokens": ["approov"]}]
        });
        let up = Upstream::start();
        let envoy = EnvoyBuilder::new(cfg, up.port).start();
        (up, envoy)
    };
    let key = install_key(7);
    let t = token_for(&key);
    let created = now();
    let captured = signed(&key, &t, "POST", "/v1/sms", BODY, created, None);

    let (up, envoy) = start_with(true);
    let r = envoy.request(captured.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    let r = envoy.request(captured.clone());
    assert_eq!(
        (r.status, r.reason()),
        (401, Some("token_replayed")),
        "{}",
        r.text()
    );
    let resigned = signed(&key, &t, "POST", "/v1/sms", BODY, created + 1, None);
    let r = envoy.request(resigned);
    assert_eq!(r.status, 200, "signed again: {}", r.text());
    assert_eq!(up.seen().len(), 2, "the copy never went upstream");

    let (up, envoy) = start_with(false);
    for _ in 0..2 {
        let r = envoy.request(captured.clone());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.seen().len(), 2);
}

#[test]
fn a_signed_request_its_limit_refused_is_not_remembered_as_used() {
    // `single_use` writes a signed request's entry once the request has
    // passed its local limits: the requests a client's limit refuses
    // fill no table (one genuine token and its install key could fill it
    // for every client). A copy is still refused before the limit counts.
    let cfg = json!({
        "tokens": [{"name": "approov", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}],
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60, "single_use": true}}],
        "routes": [{"name": "sms", "match": {"prefix": "/v1/"}, "tokens": ["approov"],
                    "rate_limits": [{"entries": [{"type": "client_ip"}],
                                     "local": {"requests": 1, "per": "second"}}]}]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    // The bucket refills one request a second, exactly: the two refusals
    // prove something only if they come within a second of the request
    // that emptied it. A host that stalls longer than that makes the
    // attempt inconclusive, not failed: it is made again with another
    // install (at most three times) once the bucket is full again.
    let mut attempt = 0u8;
    let mut passed_late = 0;
    let (first, second) = loop {
        attempt += 1;
        let key = install_key(7 + attempt);
        let t = token_for(&key);
        let created = now();
        let first = signed(&key, &t, "POST", "/v1/sms", BODY, created, None);
        let second = signed(&key, &t, "POST", "/v1/sms", BODY, created + 1, None);
        let began = std::time::Instant::now();
        let r = envoy.request(first.clone());
        assert_eq!(r.status, 200, "{}", r.text());
        let refused: Vec<_> = (0..2).map(|_| envoy.request(second.clone())).collect();
        if began.elapsed() >= std::time::Duration::from_millis(900) && attempt < 3 {
            passed_late += refused.iter().filter(|r| r.status == 200).count();
            std::thread::sleep(std::time::Duration::from_millis(1200));
            continue;
        }
        for r in refused {
            assert_eq!(
                (r.status, r.reason()),
                (429, Some("rate_limited")),
                "refused by the limit, and not recorded: {}",
                r.text()
            );
        }
        break (first, second);
    };
    let r = envoy.request(first.clone());
    assert_eq!(
        (r.status, r.reason()),
        (401, Some("token_replayed")),
        "a copy, refused before the limit: {}",
        r.text()
    );
    // The limit allows one more: the request it refused passes, once.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let r = envoy.request(second.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    let r = envoy.request(second);
    assert_eq!((r.status, r.reason()), (401, Some("token_replayed")));
    // Each attempt's first request (and what a stalled one let through
    // after the refill), and the one the limit refused.
    assert_eq!(up.seen().len(), usize::from(attempt) + passed_late + 1);
    envoy.assert_vm_healthy();
}

#[test]
fn made_up_signatures_spend_the_failure_budget_then_cost_no_verification() {
    // One genuine token and made-up signatures: each costs a P-256
    // verification until the client's failure budget (2 here) is spent;
    // then the client is refused without one, counted in the stats and
    // logged, even with a right signature, until the window ends.
    let cfg = json!({
        "tokens": [{"name": "approov", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}],
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60},
                    "failure_budget": {"failures": 2, "window_seconds": 60}}],
        "routes": [{"name": "sms", "match": {"prefix": "/v1/"}, "tokens": ["approov"]}]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    let key = install_key(7);
    let t = token_for(&key);
    let good = || signed(&key, &t, "POST", "/v1/sms", BODY, now(), None);
    assert_eq!(envoy.request(good()).status, 200);
    let thief = install_key(9);
    for _ in 0..3 {
        let r = envoy.request(signed(&thief, &t, "POST", "/v1/sms", BODY, now(), None));
        assert_eq!(r.reason(), Some("signature_invalid"), "{}", r.text());
    }
    let r = envoy.request(good());
    assert_eq!(r.reason(), Some("signature_invalid"), "spent: not verified");
    assert_eq!(
        envoy.stat("appguard_verification_budget_refusals"),
        Some(2),
        "the third made-up signature and the right one"
    );
    assert!(envoy.log().contains("budget=exhausted"), "logged");
    assert_eq!(up.seen().len(), 1);
    envoy.assert_vm_healthy();
}

/// f5b702c cut the headers a token is bound to from the
/// trailers, since an upstream that merges trailers into the headers would
/// read a copy nobody checked. A header the request signature covers
/// (`message_signing.components`) is bound to the request the same way
/// ("A signature only stops a request being *changed*", README), but a
/// trailer copy still reaches the upstream: a captured signed request sent
/// again (it verifies until `created` is `max_age_seconds` old) carries
/// another `x-amount` in a trailer, and the upstream gets it beside the
/// signed one.
#[test]
fn a_signed_header_sent_again_as_a_trailer_does_not_reach_the_upstream() {
    let trailers = signed_amount_with_a_trailer_copy(Some(json!(["x-amount"])), "x-amount", false);
    assert_eq!(
        trailers,
        vec![("x-checksum".to_string(), "c1".to_string())],
        "a trailer copy of a signed header went upstream unchecked"
    );
}

/// The same with a header the client chose to cover (`x-amount` is not in
/// the configured `components`): its signature vouches for the header's
/// value all the same, and a trailer copy would stand beside it.
#[test]
fn a_header_the_client_signed_beyond_the_components_is_cut_from_the_trailers() {
    let trailers = signed_amount_with_a_trailer_copy(None, "X-Amount", false);
    assert_eq!(
        trailers,
        vec![("x-checksum".to_string(), "c1".to_string())],
        "a trailer copy of a header the client signed went upstream"
    );
}

/// A POST signed with `x-amount: 1` covered (and `components`, when
/// given, as `message_signing.components`), sent with the trailers
/// `x-checksum: c1` and `<copy>: 1000000` (with `tab_over_h2`, over
/// HTTP/2 with a tab before the `Signature-Input` value): passes, with
/// the signed `x-amount` upstream. The trailers the upstream got.
fn signed_amount_with_a_trailer_copy(
    components: Option<serde_json::Value>,
    copy: &str,
    tab_over_h2: bool,
) -> Vec<(String, String)> {
    let mut cfg = json!({
        "tokens": [{"name": "approov", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}],
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60}}],
        "routes": [{"name": "sms", "match": {"prefix": "/v1/"}, "tokens": ["approov"]}]
    });
    if let Some(c) = components {
        cfg["tokens"][0]["message_signing"]["components"] = c;
    }
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .trailers()
        .without_buffer_filter()
        .start();
    let key = install_key(7);
    let t = token_for(&key);
    let headers = vec![
        ("approov-token".to_string(), t.clone()),
        ("content-type".to_string(), "application/json".to_string()),
        ("x-amount".to_string(), "1".to_string()),
    ];
    let msg = Message::request(
        "POST",
        "http",
        "localhost",
        "/v1/sms",
        None,
        &headers,
        Some(BODY.as_bytes()),
    );
    let mut comps = default_covered_components(&msg, "approov-token");
    comps.push("x-amount".to_owned());
    let sig = sign_request(&key, &msg, &SignatureOptions::new("install", comps, now())).unwrap();
    let input = if tab_over_h2 {
        format!("\t{}", sig.signature_input)
    } else {
        sig.signature_input.clone()
    };
    let mut req = Req::new("POST", "/v1/sms")
        .header("approov-token", &t)
        .header("content-type", "application/json")
        .header("x-amount", "1")
        .header("signature-input", &input)
        .header("signature", &sig.signature)
        .body(BODY.as_bytes())
        .trailer("x-checksum", "c1")
        .trailer(copy, "1000000");
    if let Some(d) = sig.content_digest {
        req = req.header("content-digest", &d);
    }
    let r = if tab_over_h2 {
        crate::harness::http2::H2::connect(envoy.port).send(&req, 1, std::time::Duration::ZERO)
    } else {
        envoy.request(req)
    };
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header("x-amount"), Some("1"));
    envoy.assert_vm_healthy();
    seen.trailers
}

/// A header that must be covered when the request carries
/// it (a method override, a target override, a forwarded host naming
/// another host: `check_coverage` refuses a signed request that sends one
/// uncovered) is cut from the trailers too. It was not: an upstream that
/// merges trailers into the headers (the reason the token, API-key and
/// signed headers are cut from them) then ran a captured signed `POST
/// /v1/sms` as a `DELETE` of `/v1/delete-account` on another host, its
/// signature still verifying: exactly what covering these headers is for.
#[test]
fn an_override_sent_as_a_trailer_does_not_reach_the_upstream() {
    let cfg = json!({
        "tokens": [{"name": "approov", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}],
                    "message_signing": {"claim": "ipk", "max_age_seconds": 60}}],
        "routes": [{"name": "sms", "match": {"prefix": "/v1/"}, "tokens": ["approov"]}]
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .trailers()
        .without_buffer_filter()
        .start();
    let key = install_key(7);
    let t = token_for(&key);
    let req = signed(&key, &t, "POST", "/v1/sms", BODY, now(), None)
        .trailer("x-checksum", "c1")
        .trailer("x-http-method-override", "DELETE")
        .trailer("x-original-url", "/v1/delete-account")
        .trailer("x-forwarded-host", "admin.internal");
    let r = envoy.request(req);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    envoy.assert_vm_healthy();
    assert_eq!(
        seen.trailers,
        vec![("x-checksum".to_string(), "c1".to_string())],
        "an uncovered override went upstream as a trailer of a signed request"
    );
}

/// The trailer cut (`signed_fields`) parsed each
/// `Signature-Input` line as it came, the verifier (`combined_field`)
/// the lines trimmed of SP and HTAB and joined; now both read them so. Over HTTP/2 a
/// line may start with a tab: the verifier still accepts the signature
/// (the tab is nowhere in the signature base, so anyone resending a
/// captured request may add it), but the cut found no field in the line,
/// and a trailer copy of a header the client signed went upstream, as it
/// did before the fix this repeats
/// (`a_header_the_client_signed_beyond_the_components_is_cut_from_the_trailers`).
#[test]
fn a_tab_before_the_signature_input_does_not_let_a_signed_header_through_as_a_trailer() {
    let trailers = signed_amount_with_a_trailer_copy(None, "x-amount", true);
    assert_eq!(
        trailers,
        vec![("x-checksum".to_string(), "c1".to_string())],
        "a trailer copy of a header the client signed went upstream"
    );
}
