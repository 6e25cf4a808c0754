//! Asymmetric tokens: cheap refusals before any signature work, the negative
//! cache and per-client verification budget against forged-token floods,
//! and delegated verification behind a real Envoy `jwt_authn`.

use crate::harness;

use base64::Engine;
use harness::http::Req;
use harness::tokens::{self, claims, now};
use harness::upstream::Upstream;
use harness::EnvoyBuilder;
use serde_json::{json, Value};

fn rs_config() -> Value {
    json!({
        "tokens": [{"name": "rs", "from": [{"header": "x-token"}],
                    "jwks": {"keys": [tokens::rsa_fixture_jwk("rsa1")]},
                    "issuer": "https://issuer.example", "audiences": ["api"],
                    "failure_budget": {"failures": 3, "window_seconds": 3600}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["rs"]}]
    })
}

/// An RS256-looking token with a random 256-byte signature: what a flood of
/// forgeries looks like.
fn forged(kid: &str, c: &Value) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig: Vec<u8> = (0..256u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    format!(
        "{}.{}.{}",
        e.encode(json!({"alg": "RS256", "typ": "JWT", "kid": kid}).to_string()),
        e.encode(c.to_string()),
        e.encode(sig)
    )
}

fn good_claims() -> Value {
    claims(
        60,
        json!({"iss": "https://issuer.example", "aud": "api", "sub": "u1"}),
    )
}

#[test]
fn cheap_refusals_each_with_their_reason() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(rs_config(), up.port).start();
    let n = now();
    let cases = [
        (
            forged(
                "rsa1",
                &json!({"iss": "https://issuer.example", "aud": "api", "iat": n - 500, "exp": n - 200}),
            ),
            "token_expired",
        ),
        (
            forged(
                "rsa1",
                &json!({"iss": "https://issuer.example", "aud": "api", "iat": n, "exp": n + 3600}),
            ),
            "token_lifetime",
        ),
        (
            forged(
                "rsa1",
                &json!({"iss": "https://other", "aud": "api", "iat": n, "exp": n + 60}),
            ),
            "token_claims",
        ),
        (
            forged(
                "rsa1",
                &json!({"iss": "https://issuer.example", "aud": "x", "iat": n, "exp": n + 60}),
            ),
            "token_claims",
        ),
        (forged("nope", &good_claims()), "token_signature"),
        ("x".repeat(5000), "token_malformed"),
    ];
    for (t, reason) in &cases {
        let r = envoy.request(Req::get("/a").header("x-token", t));
        assert_eq!(
            (r.status, r.reason()),
            (401, Some(*reason)),
            "{}",
            &t[..40.min(t.len())]
        );
    }
    // none of those cost a verification: the budget (3) is untouched
    let good = tokens::rs256("rsa1", &good_claims());
    assert_eq!(
        envoy
            .request(Req::get("/a").header("x-token", &good))
            .status,
        200
    );
    assert_eq!(envoy.stat("appguard_verification_budget_refusals"), Some(0));
}

#[test]
fn forged_floods_spend_a_small_budget_then_cost_no_verification() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(rs_config(), up.port).start();
    let attacker = "198.51.100.66";
    for i in 0..3 {
        let t = forged(
            "rsa1",
            &claims(
                60,
                json!({"iss": "https://issuer.example", "aud": "api", "n": i}),
            ),
        );
        let r = envoy.request(
            Req::get("/a")
                .header("x-token", &t)
                .header("x-forwarded-for", attacker),
        );
        assert_eq!((r.status, r.reason()), (401, Some("token_signature")));
    }
    for i in 3..40 {
        let t = forged(
            "rsa1",
            &claims(
                60,
                json!({"iss": "https://issuer.example", "aud": "api", "n": i}),
            ),
        );
        let r = envoy.request(
            Req::get("/a")
                .header("x-token", &t)
                .header("x-forwarded-for", attacker),
        );
        assert_eq!((r.status, r.reason()), (401, Some("token_signature")));
    }
    assert_eq!(
        envoy.stat("appguard_verification_budget_refusals"),
        Some(37),
        "refused without verification"
    );
    assert!(envoy.log().contains("budget=exhausted"));
    // the same forged token again is refused from the negative cache, from anywhere
    let t0 = forged(
        "rsa1",
        &claims(
            60,
            json!({"iss": "https://issuer.example", "aud": "api", "n": 0}),
        ),
    );
    let r = envoy.request(Req::get("/a").header("x-token", &t0));
    assert_eq!((r.status, r.reason()), (401, Some("token_signature")));
    // ... without a verification: four times from a fresh client would
    // spend its budget of 3 if they were verified, and its next forgery
    // would then be refused unverified (38).
    let fresh = "203.0.113.5";
    for _ in 0..4 {
        let r = envoy.request(
            Req::get("/a")
                .header("x-token", &t0)
                .header("x-forwarded-for", fresh),
        );
        assert_eq!(r.reason(), Some("token_signature"));
    }
    let t_new = forged(
        "rsa1",
        &claims(
            60,
            json!({"iss": "https://issuer.example", "aud": "api", "n": 99}),
        ),
    );
    let r = envoy.request(
        Req::get("/a")
            .header("x-token", &t_new)
            .header("x-forwarded-for", fresh),
    );
    assert_eq!(r.reason(), Some("token_signature"));
    assert_eq!(
        envoy.stat("appguard_verification_budget_refusals"),
        Some(37),
        "the negative cache spent nothing of the fresh client's budget"
    );
    // genuine clients elsewhere are unaffected
    let good = tokens::rs256("rsa1", &good_claims());
    assert_eq!(
        envoy
            .request(Req::get("/a").header("x-token", &good))
            .status,
        200
    );
}

fn delegated_envoy(up: &Upstream) -> harness::Envoy {
    delegated_envoy_with(up, json!({}))
}

/// [`delegated_envoy`] with more fields on appguard's provider.
fn delegated_envoy_with(up: &Upstream, provider: Value) -> harness::Envoy {
    let mut cfg = json!({
        "tokens": [{"name": "appcheck", "from": [{"header": "x-token"}],
                    "verified_by": {"key": "appcheck_payload"},
                    "issuer": "https://issuer.example", "max_lifetime_seconds": 300,
                    "claim_to_headers": [{"claim": "sub", "header": "x-token-sub"}]}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["appcheck"]}]
    });
    if let (Some(p), Some(extra)) = (cfg["tokens"][0].as_object_mut(), provider.as_object()) {
        p.extend(extra.clone());
    }
    let jwks = json!({"keys": [tokens::rsa_fixture_jwk("rsa1")]}).to_string();
    let jwt_authn = json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"appcheck": {
                "issuer": "https://issuer.example",
                "from_headers": [{"name": "x-token"}],
                "local_jwks": {"inline_string": jwks},
                "payload_in_metadata": "appcheck_payload",
                "forward": true
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "appcheck"}, {"allow_missing": {}}
            ]}}}]
        }
    });
    EnvoyBuilder::new(cfg, up.port)
        .filter_before(jwt_authn)
        .start()
}

#[test]
fn delegated_mode_behind_a_real_jwt_authn() {
    let up = Upstream::start();
    let envoy = delegated_envoy(&up);
    // a valid RS256 token: jwt_authn verifies, appguard reads the payload
    let good = tokens::rs256("rsa1", &good_claims());
    let r = envoy.request(Req::get("/a").header("x-token", &good));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last().header("x-token-sub"),
        Some("u1"),
        "claims came from metadata"
    );
    assert_eq!(up.last().header("x-token"), None, "token removed upstream");
    // a forged token is refused by jwt_authn and never reaches appguard
    let bad = forged("rsa1", &good_claims());
    let r = envoy.request(Req::get("/a").header("x-token", &bad));
    assert_eq!(r.status, 401);
    assert_eq!(r.reason(), None, "jwt_authn answered, not appguard");
    // no token: jwt_authn lets it through, appguard finds no metadata
    let r = envoy.request(Req::get("/a"));
    assert_eq!((r.status, r.reason()), (401, Some("token_missing")));
    // spoofed payload headers are ignored
    let fake = base64::engine::general_purpose::STANDARD.encode(good_claims().to_string());
    let r = envoy.request(
        Req::get("/a")
            .header("x-jwt-payload", &fake)
            .header("appcheck_payload", &fake)
            .header("x-appguard-payload", &fake),
    );
    assert_eq!((r.status, r.reason()), (401, Some("token_missing")));
    // appguard's own rules on top: a token jwt_authn accepts but that lives too long
    let long = tokens::rs256(
        "rsa1",
        &claims(3600, json!({"iss": "https://issuer.example", "sub": "u2"})),
    );
    let r = envoy.request(Req::get("/a").header("x-token", &long));
    assert_eq!((r.status, r.reason()), (401, Some("token_lifetime")));
    assert_eq!(up.seen().len(), 1);
}

/// jwt_authn verifies `x-token` only; a forged token beside it as
/// `x_token`, which a PHP upstream reads as the same header, is refused as
/// for a provider appguard verifies itself, and never reaches the
/// upstream (with `forward: true` it went through).
#[test]
fn a_delegated_tokens_copy_under_another_spelling_must_be_the_same_token() {
    let up = Upstream::start();
    let envoy = delegated_envoy_with(&up, json!({"forward": true}));
    let good = tokens::rs256("rsa1", &good_claims());
    let bad = forged(
        "rsa1",
        &claims(60, json!({"iss": "https://issuer.example", "sub": "admin"})),
    );
    for other in ["x_token", "X.Token"] {
        let r = envoy.request(Req::get("/a").header("x-token", &good).header(other, &bad));
        assert_eq!(
            (r.status, r.reason()),
            (401, Some("token_malformed")),
            "{other}"
        );
    }
    assert!(up.seen().is_empty());
    // The same token under both names is one token.
    let r = envoy.request(
        Req::get("/a")
            .header("x-token", &good)
            .header("x_token", &good),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-token"), Some(good.as_str()));
}

#[test]
fn a_monitor_route_counts_and_logs_its_budget_refusals() {
    // Monitor mode lets the flood through, but the budget still spares the
    // verification, and operators see it as on an enforcing route.
    let mut cfg = rs_config();
    cfg["routes"][0]["mode"] = json!("monitor");
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    for i in 0..8 {
        let t = forged(
            "rsa1",
            &claims(
                60,
                json!({"iss": "https://issuer.example", "aud": "api", "n": i}),
            ),
        );
        let r = envoy.request(
            Req::get("/a")
                .header("x-token", &t)
                .header("x-forwarded-for", "198.51.100.67"),
        );
        assert_eq!(r.status, 200, "monitor mode lets it through");
        assert_eq!(
            up.last().header("x-appguard-would-deny"),
            Some("token_signature")
        );
    }
    assert_eq!(
        envoy.stat("appguard_verification_budget_refusals"),
        Some(5),
        "3 failures spend the budget; the other 5 skip verification"
    );
    assert!(
        envoy.log().contains("would_deny reason=token_signature")
            && envoy.log().contains("budget=exhausted"),
        "{}",
        envoy.log()
    );
}

#[test]
fn delegated_claims_keep_their_types_through_envoys_metadata() {
    // A list audience (App Check tokens carry two), booleans and numbers
    // must reach appguard's own rules as such, through Envoy's metadata
    // (read whole: a path into it is an untyped map).
    let up = Upstream::start();
    let envoy = delegated_envoy_with(
        &up,
        json!({"audiences": ["projects/my-project"],
               "required_claims": {"attested": true, "level": 2}}),
    );
    let token = |aud: Value, attested: Value| {
        tokens::rs256(
            "rsa1",
            &claims(
                60,
                json!({"iss": "https://issuer.example", "sub": "u1", "aud": aud,
                       "attested": attested, "level": 2}),
            ),
        )
    };
    let ok = token(json!(["projects/123", "projects/my-project"]), json!(true));
    let r = envoy.request(Req::get("/a").header("x-token", &ok));
    assert_eq!(r.status, 200, "{}", r.text());
    for (label, t) in [
        (
            "another audience",
            token(json!(["projects/123"]), json!(true)),
        ),
        (
            "a false flag",
            token(json!(["projects/my-project"]), json!(false)),
        ),
        (
            "a string for a boolean",
            token(json!(["projects/my-project"]), json!("true")),
        ),
        // Read from Envoy's untyped map encoding, this string was `true`.
        (
            "a control character for a boolean",
            token(json!(["projects/my-project"]), json!("\u{1}")),
        ),
    ] {
        let r = envoy.request(Req::get("/a").header("x-token", &t));
        assert_eq!(
            (r.status, r.reason()),
            (401, Some("token_claims")),
            "{label}"
        );
    }
    // The eight bytes of the double 2.0 as a string are not the number 2,
    // and a `null` claim (Envoy cannot hand one over in the map encoding)
    // does not lose the payload.
    let with = |extra: Value| {
        let mut c = json!({"iss": "https://issuer.example", "sub": "u1",
                           "aud": ["projects/my-project"], "attested": true, "level": 2});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        tokens::rs256("rsa1", &claims(60, c))
    };
    let r =
        envoy.request(Req::get("/a").header("x-token", &with(json!({"level": "\0\0\0\0\0\0\0@"}))));
    assert_eq!((r.status, r.reason()), (401, Some("token_claims")));
    let r = envoy.request(Req::get("/a").header("x-token", &with(json!({"middle_name": null}))));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.seen().len(), 2);
}

/// `jwt_authn` with its default token locations (no `from_headers`:
/// `Authorization: Bearer` and the `access_token` query parameter) verifies
/// every token it finds and keeps one payload, the header's. A used token
/// in the parameter beside a fresh one in the header would reach the
/// upstream past appguard's replay check; so would one beside a header
/// `jwt_authn` removed (`forward: false`), or a second copy it never
/// verified. On a route taking a delegated provider, an `access_token`
/// parameter is refused, whatever else the request holds.
#[test]
fn a_delegated_token_beside_jwt_authns_default_query_parameter_is_refused() {
    for forward in [true, false] {
        access_token_parameters_are_refused(forward);
    }
}

fn access_token_parameters_are_refused(forward: bool) {
    let cfg = json!({
        "tokens": [{"name": "oauth",
                    "from": [{"header": "authorization", "prefix": "Bearer "}],
                    "verified_by": {"key": "oauth_payload"},
                    "issuer": "https://issuer.example", "max_lifetime_seconds": 300,
                    "replay": {}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["oauth"]}]
    });
    let jwks = json!({"keys": [tokens::rsa_fixture_jwk("rsa1")]}).to_string();
    let jwt_authn = json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"oauth": {
                "issuer": "https://issuer.example",
                "local_jwks": {"inline_string": jwks},
                "payload_in_metadata": "oauth_payload",
                "forward": forward
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "oauth"}, {"allow_missing": {}}
            ]}}}]
        }
    });
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .filter_before(jwt_authn)
        .start();
    let tok = |jti: &str| {
        tokens::rs256(
            "rsa1",
            &claims(120, json!({"iss": "https://issuer.example", "jti": jti})),
        )
    };
    let used = tok("used");
    let bearer = |t: &str| format!("Bearer {t}");
    let r = envoy.request(Req::get("/a").header("authorization", &bearer(&used)));
    assert_eq!(r.status, 200, "{forward}: {}", r.text());
    let fresh = tok("fresh-1");
    for req in [
        Req::get(&format!("/a?access_token={used}")).header("authorization", &bearer(&fresh)),
        Req::get(&format!("/a?access_token={fresh}")).header("authorization", &bearer(&used)),
        // jwt_authn finds `Bearer ` anywhere in the header.
        Req::get(&format!("/a?access_token={used}"))
            .header("authorization", &format!("Basic Zm9v, Bearer {fresh}")),
        // It verifies only the first of two parameters.
        Req::get(&format!("/a?access_token={fresh}&access_token={used}")),
        // It never reads this spelling, which PHP reads as `access_token`.
        Req::get(&format!("/a?access.token={used}")).header("authorization", &bearer(&fresh)),
        // In the parameter alone too: appguard reads tokens from headers.
        Req::get(&format!("/a?access_token={}", tok("fresh-2"))),
    ]
    .into_iter()
    .enumerate()
    {
        let r = envoy.request(req.1);
        if forward {
            assert_eq!(
                (r.status, r.reason()),
                (401, Some("token_malformed")),
                "request {}",
                req.0
            );
        } else if r.status == 200 {
            // jwt_authn removed the tokens it verified, the parameter's
            // too: nothing unchecked went on.
            let path = up.last().path;
            assert!(!path.contains("token="), "request {}: {path}", req.0);
        } else {
            assert_eq!(r.status, 401, "request {}: {}", req.0, r.text());
        }
    }
    if forward {
        assert_eq!(up.seen().len(), 1);
    }
    envoy.assert_vm_healthy();
}
