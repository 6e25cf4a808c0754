//! Token rules, one by one, with fixed keys (tests/fixtures) and a pinned
//! clock. Also compiled to wasm and run under Node (`make wasm-test`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::request::test_support::headers;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

/// The tests' HS256 secret (tests/fixtures/README.md), 64 bytes.
pub(crate) const SECRET: &[u8] =
    b"appguard-test-secret-0123456789-appguard-test-secret-0123456789!";
pub(crate) const RSA_PRIV: &str = include_str!("../../tests/fixtures/rsa-test-key.pem");
pub(crate) const RSA_PUB: &str = include_str!("../../tests/fixtures/rsa-test-key.pub.pem");
pub(crate) const EC_PRIV: &str = include_str!("../../tests/fixtures/ec-p256-test-key.pem");
pub(crate) const EC_PUB: &str = include_str!("../../tests/fixtures/ec-p256-test-key.pub.pem");
const NOW: u64 = 1_900_000_000;

fn provider(extra: Value) -> Provider {
    let mut raw = json!({
        "name": "p",
        "from": [{"header": "authorization", "prefix": "Bearer "}, {"header": "x-token"}],
        "keys": [
            {"kid": "hs", "alg": "HS256", "secret_base64": STANDARD.encode(SECRET)},
            {"kid": "rs", "alg": "RS256", "pem": RSA_PUB},
            {"kid": "es", "alg": "ES256", "pem": EC_PUB}
        ]
    });
    if let (Some(o), Some(e)) = (raw.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    let raw: RawProvider = serde_json::from_value(raw).unwrap();
    compile_provider("tokens[0]", raw).unwrap()
}

/// A compact JWS signed with HMAC-SHA256 over any header and claims.
pub(crate) fn hs256_raw(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), secret);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
}

fn claims_at(now: u64, lifetime: u64) -> Value {
    json!({"iat": now, "exp": now + lifetime, "sub": "user", "jti": "j-1"})
}

fn hs(claims: &Value) -> String {
    hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "typ": "JWT", "kid": "hs"}),
        claims,
    )
}

fn signed_claims(extra: Map<String, Value>, iat: u64, exp: u64) -> JWTClaims<Map<String, Value>> {
    let mut c = Claims::with_custom_claims(extra, Duration::from_secs(1));
    c.issued_at = Some(Duration::from_secs(iat));
    c.expires_at = Some(Duration::from_secs(exp));
    c.invalid_before = None;
    c
}

fn es256(iat: u64, exp: u64) -> String {
    let kp = ES256KeyPair::from_pem(EC_PRIV).unwrap().with_key_id("es");
    kp.sign(signed_claims(Map::new(), iat, exp)).unwrap()
}

fn rs256(iat: u64, exp: u64) -> String {
    let kp = RS256KeyPair::from_pem(RSA_PRIV).unwrap().with_key_id("rs");
    kp.sign(signed_claims(Map::new(), iat, exp)).unwrap()
}

fn verify(p: &Provider, token: &str, now: u64) -> Result<u64, TokenError> {
    let pre = precheck(p, &p.keys, &[], false, token, now)?;
    pre.check_signature(token)?;
    Ok(pre.exp)
}

#[test]
fn a_token_without_kid_is_tried_against_every_key_of_its_algorithm() {
    // Two HS256 secrets without `kid` (a rotation): a token signed with
    // either verifies, as with Envoy's jwt_authn; one signed with neither
    // does not. Where a key names a kid, a token naming a kid is tried
    // against that key only, and a kid no key has is unknown (the
    // re-fetch path of a remote JWKS); where none does, a token naming
    // one is tried against them all (jwt_authn does so too).
    let old_secret = [1u8; 32];
    let p = provider(json!({"keys": [
        {"alg": "HS256", "secret_base64": STANDARD.encode(old_secret)},
        {"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)},
        {"kid": "k3", "alg": "HS256", "secret_base64": STANDARD.encode([3u8; 32])}
    ]}));
    let header = json!({"alg": "HS256"});
    for secret in [&old_secret[..], SECRET, &[3u8; 32][..]] {
        let t = hs256_raw(secret, &header, &claims_at(NOW, 60));
        assert_eq!(verify(&p, &t, NOW), Ok(NOW + 60));
    }
    let forged = hs256_raw(&[9u8; 32], &header, &claims_at(NOW, 60));
    assert!(matches!(
        verify(&p, &forged, NOW),
        Err(TokenError::Signature(_))
    ));
    let named = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k3"}),
        &claims_at(NOW, 60),
    );
    assert!(matches!(
        verify(&p, &named, NOW),
        Err(TokenError::Signature(_))
    ));
    let unknown = hs256_raw(
        SECRET,
        &json!({"alg": "HS256", "kid": "k9"}),
        &claims_at(NOW, 60),
    );
    assert_eq!(verify(&p, &unknown, NOW), Err(TokenError::UnknownKid));
    // No key names a kid: a token naming one is tried against each.
    let kidless = provider(json!({"keys": [
        {"alg": "HS256", "secret_base64": STANDARD.encode(old_secret)},
        {"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}
    ]}));
    for secret in [&old_secret[..], SECRET] {
        let t = hs256_raw(
            secret,
            &json!({"alg": "HS256", "kid": "2026-12"}),
            &claims_at(NOW, 60),
        );
        assert_eq!(verify(&kidless, &t, NOW), Ok(NOW + 60));
    }
    let forged_named = hs256_raw(
        &[9u8; 32],
        &json!({"alg": "HS256", "kid": "2026-12"}),
        &claims_at(NOW, 60),
    );
    assert!(matches!(
        verify(&kidless, &forged_named, NOW),
        Err(TokenError::Signature(_))
    ));
}

#[test]
fn valid_tokens_of_each_algorithm_verify() {
    let p = provider(json!({}));
    assert_eq!(verify(&p, &hs(&claims_at(NOW, 300)), NOW), Ok(NOW + 300));
    assert_eq!(verify(&p, &es256(NOW, NOW + 60), NOW), Ok(NOW + 60));
    assert_eq!(verify(&p, &rs256(NOW, NOW + 60), NOW), Ok(NOW + 60));
}

#[test]
fn time_rules() {
    let p = provider(json!({}));
    // expired, beyond the 5 s skew; within the skew still fine
    assert_eq!(
        verify(&p, &hs(&claims_at(NOW - 100, 90)), NOW),
        Err(TokenError::Expired)
    );
    assert!(verify(&p, &hs(&claims_at(NOW - 100, 96)), NOW).is_ok());
    // iat / nbf in the future
    assert_eq!(
        verify(&p, &hs(&claims_at(NOW + 10, 60)), NOW),
        Err(TokenError::NotYetValid)
    );
    assert!(verify(&p, &hs(&claims_at(NOW + 4, 60)), NOW).is_ok());
    let nbf = json!({"exp": NOW + 60, "nbf": NOW + 30});
    assert_eq!(verify(&p, &hs(&nbf), NOW), Err(TokenError::NotYetValid));
    // lifetime: exp - iat, and exp - now without iat
    assert_eq!(
        verify(&p, &hs(&claims_at(NOW, 301)), NOW),
        Err(TokenError::Lifetime)
    );
    assert_eq!(
        verify(&p, &hs(&json!({"exp": NOW + 3600})), NOW),
        Err(TokenError::Lifetime)
    );
    // exp required
    assert_eq!(
        verify(&p, &hs(&json!({"iat": NOW})), NOW),
        Err(TokenError::Lifetime)
    );
    // a longer configured lifetime
    let long = provider(json!({"max_lifetime_seconds": 3600}));
    assert!(verify(&long, &hs(&claims_at(NOW, 3600)), NOW).is_ok());
}

#[test]
fn time_claims_must_be_non_negative_numbers() {
    let p = provider(json!({}));
    for exp in [
        json!(-1),
        json!(-0.5),
        json!(-0.0),
        json!("1900000060"),
        json!(u64::MAX),
        json!(1e300),
        json!(null),
    ] {
        let t = hs(&json!({"exp": exp, "iat": NOW}));
        assert!(
            matches!(verify(&p, &t, NOW), Err(TokenError::Malformed(_))),
            "exp {exp}"
        );
    }
    let t = hs(&json!({"exp": NOW + 10, "iat": -1.5}));
    assert!(matches!(verify(&p, &t, NOW), Err(TokenError::Malformed(_))));
    // RFC 7519 §2: a NumericDate may have a fraction (and an exponent);
    // each is read the stricter way for its claim.
    let t = hs(&json!({"exp": NOW as f64 + 10.5, "iat": NOW as f64 - 0.5}));
    assert_eq!(verify(&p, &t, NOW), Ok(NOW + 10), "exp rounded down");
    let t = hs(&json!({"exp": 1.9e9, "iat": 1_899_999_990}));
    assert_eq!(verify(&p, &t, 1_899_999_995), Ok(1_900_000_000));
    // `exp` 0.9 s in the past is past (down), with no skew.
    let strict = provider(json!({"clock_skew_seconds": 0}));
    let t = hs(&json!({"exp": NOW as f64 - 0.1}));
    assert_eq!(verify(&strict, &t, NOW), Err(TokenError::Expired));
    // `nbf` 0.1 s ahead is not yet (up).
    let t = hs(&json!({"exp": NOW + 60, "nbf": NOW as f64 + 0.1}));
    assert_eq!(verify(&strict, &t, NOW), Err(TokenError::NotYetValid));
    let t = hs(&json!({"exp": NOW + 60, "nbf": NOW as f64 - 0.1}));
    assert_eq!(verify(&strict, &t, NOW), Ok(NOW + 60));
    // `iat` 0.1 s ahead is issued in the future (up), and a lifetime of
    // the cap and a fraction is over it (`exp` up there).
    let t = hs(&json!({"exp": NOW + 60, "iat": NOW as f64 + 0.1}));
    assert_eq!(verify(&strict, &t, NOW), Err(TokenError::NotYetValid));
    let capped = provider(json!({"clock_skew_seconds": 0, "max_lifetime_seconds": 60}));
    let t = hs(&json!({"exp": NOW as f64 + 60.5, "iat": NOW}));
    assert_eq!(verify(&capped, &t, NOW), Err(TokenError::Lifetime));
    let t = hs(&json!({"exp": NOW + 60, "iat": NOW}));
    assert_eq!(verify(&capped, &t, NOW), Ok(NOW + 60));
}

#[test]
fn registered_claims_that_are_strings_must_be_strings() {
    // RFC 7519 §4.1, as `jwt_authn` holds them: a token that breaks it is
    // malformed whoever signed it, for every provider.
    let p = provider(json!({"audiences": ["api"]}));
    let open = provider(json!({}));
    for bad in [
        json!({"aud": [1, "api"]}),
        json!({"aud": [null, "api"]}),
        json!({"aud": ["api", ["x"]]}),
        json!({"sub": 42}),
        json!({"jti": 7}),
        json!({"iss": {"a": 1}}),
    ] {
        let mut claims = bad.clone();
        claims["exp"] = json!(NOW + 60);
        if claims.get("aud").is_none() {
            claims["aud"] = json!("api");
        }
        let t = hs(&claims);
        for p in [&p, &open] {
            assert_eq!(
                verify(p, &t, NOW),
                Err(TokenError::Malformed("a registered claim is not a string")),
                "{bad}"
            );
        }
    }
    // Where the provider names an audience, one of another shape is not
    // it (`token_claims`, checked first); elsewhere it is malformed.
    let t = hs(&json!({"exp": NOW + 60, "aud": 7}));
    assert_eq!(verify(&p, &t, NOW), Err(TokenError::Claims("audience")));
    assert_eq!(
        verify(&open, &t, NOW),
        Err(TokenError::Malformed("a registered claim is not a string"))
    );
    let good = json!({"exp": NOW + 60, "aud": ["x", "api"], "sub": "s", "jti": "j", "iss": "i"});
    assert!(verify(&p, &hs(&good), NOW).is_ok());
}

#[test]
fn issuer_audience_and_required_claims() {
    let p = provider(
        json!({"issuer": "https://iss", "audiences": ["a1", "a2"], "required_claims": {"tier": "gold"}}),
    );
    let good = json!({"exp": NOW + 60, "iss": "https://iss", "aud": ["x", "a2"], "tier": "gold"});
    assert!(verify(&p, &hs(&good), NOW).is_ok());
    let mut bad = good.clone();
    bad["iss"] = json!("https://other");
    assert_eq!(
        verify(&p, &hs(&bad), NOW),
        Err(TokenError::Claims("issuer"))
    );
    let mut bad = good.clone();
    bad["aud"] = json!("x");
    assert_eq!(
        verify(&p, &hs(&bad), NOW),
        Err(TokenError::Claims("audience"))
    );
    let mut bad = good.clone();
    bad["tier"] = json!("silver");
    assert_eq!(
        verify(&p, &hs(&bad), NOW),
        Err(TokenError::Claims("required claim"))
    );
    let mut single = good;
    single["aud"] = json!("a1");
    assert!(verify(&p, &hs(&single), NOW).is_ok());
}

#[test]
fn signature_and_algorithm_attacks() {
    let p = provider(json!({}));
    let claims = claims_at(NOW, 60);
    // wrong secret
    let t = hs256_raw(&[9u8; 64], &json!({"alg": "HS256", "kid": "hs"}), &claims);
    assert_eq!(
        verify(&p, &t, NOW).unwrap_err().reason(),
        Reason::TokenSignature
    );
    // alg none, in any case, with or without a signature
    for alg in ["none", "None", "NONE"] {
        let h = URL_SAFE_NO_PAD.encode(json!({"alg": alg}).to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        for t in [
            format!("{h}.{c}."),
            format!("{h}.{c}"),
            format!("{h}.{c}.AAAA"),
        ] {
            assert_eq!(
                verify(&p, &t, NOW).unwrap_err().reason(),
                Reason::TokenMalformed,
                "{t}"
            );
        }
    }
    // signature stripped from a good token
    let good = hs(&claims);
    let stripped = &good[..good.rfind('.').unwrap() + 1];
    assert_eq!(
        verify(&p, stripped, NOW).unwrap_err().reason(),
        Reason::TokenMalformed
    );
    // the RSA public key (PEM bytes) used as an HMAC secret, header claiming HS256 with the RSA kid
    let t = hs256_raw(
        RSA_PUB.as_bytes(),
        &json!({"alg": "HS256", "kid": "rs"}),
        &claims,
    );
    assert_eq!(
        verify(&p, &t, NOW),
        Err(TokenError::Signature("algorithm does not match the key"))
    );
    // ES256 token relabelled RS256
    let es = es256(NOW, NOW + 60);
    let mut parts: Vec<String> = es.split('.').map(str::to_owned).collect();
    parts[0] = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "kid": "es"}).to_string());
    assert_eq!(
        verify(&p, &parts.join("."), NOW).unwrap_err().reason(),
        Reason::TokenSignature
    );
    // psychic signature (CVE-2022-21449): r = s = 0
    let mut parts: Vec<&str> = es.split('.').collect();
    let zero = URL_SAFE_NO_PAD.encode([0u8; 64]);
    parts[2] = &zero;
    assert_eq!(
        verify(&p, &parts.join("."), NOW),
        Err(TokenError::Signature("signature does not verify"))
    );
    // unknown kid
    let t = hs256_raw(SECRET, &json!({"alg": "HS256", "kid": "nope"}), &claims);
    assert_eq!(verify(&p, &t, NOW), Err(TokenError::UnknownKid));
}

#[test]
fn hmac_tag_covers_header_and_payload_exactly() {
    let p = provider(json!({}));
    let good = hs(&claims_at(NOW, 60));
    assert!(verify(&p, &good, NOW).is_ok());
    let parts: Vec<&str> = good.split('.').collect();
    // another payload under the good tag
    let other = URL_SAFE_NO_PAD.encode(claims_at(NOW, 61).to_string());
    let swapped = format!("{}.{other}.{}", parts[0], parts[2]);
    assert_eq!(
        verify(&p, &swapped, NOW),
        Err(TokenError::Signature("signature does not verify"))
    );
    // the tag cut short, extended, or with one bit flipped
    let tag = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    let mut flipped = tag.clone();
    flipped[31] ^= 1;
    let mut longer = tag.clone();
    longer.push(0);
    for bad in [&tag[..16], &longer[..], &flipped[..]] {
        let t = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(bad));
        assert_eq!(
            verify(&p, &t, NOW).unwrap_err().reason(),
            Reason::TokenSignature,
            "{t}"
        );
    }
}

#[test]
fn forbidden_and_odd_headers() {
    let p = provider(json!({}));
    let claims = claims_at(NOW, 60);
    for extra in [
        json!({"jwk": {"kty": "oct", "k": "AAAA"}}),
        json!({"jku": "https://evil/jwks"}),
        json!({"x5u": "https://evil/cert"}),
        json!({"x5c": ["MII..."]}),
        json!({"crit": ["exp"]}),
        json!({"kid": 5}),
        json!({"kid": "x".repeat(300)}),
        json!({"typ": "JWE"}),
    ] {
        let mut h = json!({"alg": "HS256", "kid": "hs"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        let t = hs256_raw(SECRET, &h, &claims);
        assert_eq!(
            verify(&p, &t, NOW).unwrap_err().reason(),
            Reason::TokenMalformed,
            "{h}"
        );
    }
    // kid with traversal or injection characters is just an unknown kid
    for kid in ["../../etc/passwd", "' OR 1=1 --", "$(reboot)"] {
        let t = hs256_raw(SECRET, &json!({"alg": "HS256", "kid": kid}), &claims);
        assert_eq!(verify(&p, &t, NOW), Err(TokenError::UnknownKid));
    }
}

#[test]
fn only_jwt_or_a_listed_typ_is_an_attestation_token() {
    // RFC 8725 §3.11: an access token (`at+jwt`) or a DPoP proof the same
    // key signs is not an attestation token.
    let claims = claims_at(NOW, 60);
    let with_typ = |typ: &str| {
        hs256_raw(
            SECRET,
            &json!({"alg": "HS256", "kid": "hs", "typ": typ}),
            &claims,
        )
    };
    let p = provider(json!({}));
    // Without a list: JWT, none, or a signer's own `…+jwt`.
    // RFC 7515 §4.1.9: `application/jwt` is `JWT`; `JOSE` is a JWS in
    // compact form, as every token here is.
    for typ in [
        "JWT",
        "jwt",
        "application/jwt",
        "Application/JWT",
        "JOSE",
        "attest+jwt",
        "Attest+JWT",
        "application/attest+jwt",
    ] {
        assert!(verify(&p, &with_typ(typ), NOW).is_ok(), "{typ}");
    }
    assert!(verify(
        &p,
        &hs256_raw(SECRET, &json!({"alg": "HS256", "kid": "hs"}), &claims),
        NOW
    )
    .is_ok());
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "dpop+jwt",
        "secevent+jwt",
        "logout+jwt",
        "kb+jwt",
        "JOSE+JSON",
        "JWT ",
        "application/",
        "text/jwt",
        "jwt+",
    ] {
        assert_eq!(
            verify(&p, &with_typ(typ), NOW),
            Err(TokenError::Malformed("typ not accepted")),
            "{typ}"
        );
    }
    // With a list: JWT, none, and those listed only.
    let typed = provider(json!({"typ": ["attest+jwt"]}));
    for typ in ["JWT", "attest+jwt", "Attest+JWT", "application/attest+jwt"] {
        assert!(verify(&typed, &with_typ(typ), NOW).is_ok(), "{typ}");
    }
    for typ in ["at+jwt", "device+jwt"] {
        assert!(verify(&typed, &with_typ(typ), NOW).is_err(), "{typ}");
    }
}

#[test]
fn structure_encoding_and_size() {
    let p = provider(json!({}));
    let good = hs(&claims_at(NOW, 60));
    // padding and the standard alphabet are not base64url-without-padding
    let padded = good.replacen('.', "=.", 1);
    assert_eq!(
        verify(&p, &padded, NOW).unwrap_err().reason(),
        Reason::TokenMalformed
    );
    // `-` and `_` spelled `+` and `/`: in the signature (this token's has
    // a `_`) and in the claims (`???` encodes to `Pz8_`). Both tokens are
    // genuine: only the alphabet is wrong.
    let std_alphabet = |s: &str| s.replace('-', "+").replace('_', "/");
    let mut odd_claims = claims_at(NOW, 60);
    odd_claims["sub"] = json!("???");
    let odd = hs(&odd_claims);
    assert!(verify(&p, &odd, NOW).is_ok());
    let mut parts = odd.split('.');
    let (head, payload, sig) = (parts.next(), parts.next(), parts.next());
    let (head, payload, sig) = (head.unwrap(), payload.unwrap(), sig.unwrap());
    for (what, token, spelled) in [
        ("signature", good.as_str(), std_alphabet(&good)),
        (
            "claims",
            odd.as_str(),
            format!("{head}.{}.{sig}", std_alphabet(payload)),
        ),
    ] {
        assert_ne!(spelled, token, "no `-` or `_` in the {what}");
        assert_eq!(
            verify(&p, &spelled, NOW).unwrap_err().reason(),
            Reason::TokenMalformed,
            "the standard alphabet in the {what}: {spelled}"
        );
    }
    for t in ["", "a", "a.b", "a.b.c.d", "..", "....", "e30.e30.e30"] {
        assert!(verify(&p, t, NOW).is_err(), "{t}");
    }
    // duplicated claims
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"hs"}"#);
    let c = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{},"exp":{}}}"#, NOW + 60, NOW + 99999));
    let input = format!("{h}.{c}");
    let t = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(hmac_sha256::HMAC::mac(input.as_bytes(), SECRET))
    );
    assert_eq!(
        verify(&p, &t, NOW).unwrap_err().reason(),
        Reason::TokenMalformed
    );
    // 1 MB token: refused by size before decoding
    let huge = format!("{}.{}.{}", "a".repeat(500_000), "b".repeat(500_000), "c");
    assert_eq!(
        verify(&p, &huge, NOW),
        Err(TokenError::Malformed("token too large"))
    );
}

#[test]
fn extraction_from_sources() {
    let p = provider(json!({}));
    let h = headers(&[("authorization", "bearer abc.def.ghi")]);
    assert_eq!(
        extract(&p, &Request::new(&h, None)),
        Ok(Some("abc.def.ghi"))
    );
    let h = headers(&[("authorization", "Basic xyz"), ("x-token", "t.t.t")]);
    assert_eq!(extract(&p, &Request::new(&h, None)), Ok(Some("t.t.t")));
    let h = headers(&[("x-token", "a.b.c"), ("x-token", "d.e.f")]);
    assert!(extract(&p, &Request::new(&h, None)).is_err());
    let h = headers(&[]);
    assert_eq!(extract(&p, &Request::new(&h, None)), Ok(None));
}

#[test]
fn binding_compares_digest_of_headers_in_order() {
    let b = Binding {
        claim: "pay".into(),
        headers: vec!["authorization".into(), "x-device".into()],
        required: true,
    };
    let pay = binding_digest(&["Bearer user-token", "dev-1"]);
    // Known answers, as Approov computes `pay` (standard base64 of the
    // SHA-256 of the values, concatenated), from
    // `printf '…' | openssl dgst -sha256 -binary | base64`:
    assert_eq!(pay, "147FYDkG85UjozBImJwf0NUHQ9YEIHqm3f+H5ZO3Gyg=");
    assert_eq!(
        binding_digest(&["Bearer user-token"]),
        "uPLCXW6NAPzx8oROgrJ5gOz3fspdA7CsIoBvVTLebzo="
    );
    let claims: Map<String, Value> = json!({"pay": pay}).as_object().unwrap().clone();
    let h = headers(&[
        ("authorization", "Bearer user-token"),
        ("x-device", "dev-1"),
    ]);
    assert_eq!(check_binding(&b, &claims, &Request::new(&h, None)), Ok(()));
    let h = headers(&[("authorization", "Bearer other"), ("x-device", "dev-1")]);
    assert_eq!(
        check_binding(&b, &claims, &Request::new(&h, None)),
        Err(Reason::TokenBinding)
    );
    let h = headers(&[("authorization", "Bearer user-token")]);
    assert_eq!(
        check_binding(&b, &claims, &Request::new(&h, None)),
        Err(Reason::TokenBinding)
    );
    // absent claim: refused only when required
    let empty = Map::new();
    assert_eq!(
        check_binding(&b, &empty, &Request::new(&h, None)),
        Err(Reason::TokenBinding)
    );
    let optional = Binding {
        required: false,
        ..b
    };
    assert_eq!(
        check_binding(&optional, &empty, &Request::new(&h, None)),
        Ok(())
    );
}

#[test]
fn provider_config_errors_name_the_field() {
    let bad = |v: Value| -> ConfigError {
        let raw: RawProvider = serde_json::from_value(v).unwrap();
        compile_provider("tokens[0]", raw).unwrap_err()
    };
    let e = bad(
        json!({"name": "p", "from": [{"header": "x"}], "keys": [{"alg": "HS256", "secret_base64": "c2hvcnQ="}]}),
    );
    assert_eq!(e.path, "tokens[0].keys[0].secret_base64");
    let e = bad(json!({"name": "p", "from": [{"header": "x"}], "keys": [{"pem": EC_PUB}]}));
    assert_eq!(e.path, "tokens[0].keys[0].alg");
    let e = bad(
        json!({"name": "p", "from": [{"header": "x"}], "keys": [{"alg": "RS256", "pem": "garbage"}]}),
    );
    assert_eq!(e.path, "tokens[0].keys[0].pem");
    let e = bad(json!({"name": "p", "from": [{"header": "x"}]}));
    assert_eq!(e.path, "tokens[0].keys");
    for typ in [
        json!([]),
        json!([""]),
        json!(["a b"]),
        json!(["x".repeat(65)]),
    ] {
        let v = json!({"name": "p", "from": [{"header": "x"}], "typ": typ,
                       "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]});
        match serde_json::from_value::<RawProvider>(v) {
            Ok(raw) => assert!(
                compile_provider("tokens[0]", raw)
                    .unwrap_err()
                    .path
                    .starts_with("tokens[0].typ"),
                "{typ}"
            ),
            // `[]` is refused while parsing, as every empty restriction.
            Err(e) => assert!(e.to_string().contains("empty"), "{typ}: {e}"),
        }
    }
    let e = bad(
        json!({"name": "p", "from": [{"header": "x"}], "typ": ["attest+jwt"],
                       "issuer": "https://i.example", "verified_by": {"key": "payload"}}),
    );
    assert_eq!(e.path, "tokens[0].typ");
    let e = bad(json!({"name": "p", "from": [], "keys": []}));
    assert_eq!(e.path, "tokens[0].from");
    let e = bad(
        json!({"name": "p", "from": [{"header": "x"}], "keys": [{"alg": "RS256", "secret_base64": "AAAA"}]}),
    );
    assert_eq!(e.path, "tokens[0].keys[0].alg");
    let e = bad(json!({"name": "p", "from": [{"header": "x"}],
                       "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                       "message_signing": {"claim": "ipk", "clock_skew_seconds": 301}}));
    assert_eq!(e.path, "tokens[0].message_signing.clock_skew_seconds");
    // A label no client field can carry (an RFC 8941 key starts with a
    // letter), and components a request can never cover as asked.
    for (signing, path) in [
        (json!({"claim": "ipk", "label": "1sig"}), "label"),
        (json!({"claim": "ipk", "label": "-x"}), "label"),
        (
            json!({"claim": "ipk", "components": ["@query-param"]}),
            "components[0]",
        ),
        (
            json!({"claim": "ipk", "components": ["@method", "@status"]}),
            "components[1]",
        ),
        (
            json!({"claim": "ipk", "components": ["@signature-params"]}),
            "components[0]",
        ),
        (
            json!({"claim": "ipk", "components": ["@method", "Signature"]}),
            "components[1]",
        ),
        (
            json!({"claim": "ipk", "components": ["signature-input"]}),
            "components[0]",
        ),
    ] {
        let e = bad(json!({"name": "p", "from": [{"header": "x"}],
                           "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}],
                           "message_signing": signing}));
        assert_eq!(e.path, format!("tokens[0].message_signing.{path}"), "{e}");
    }
    for ok in [
        "@METHOD",
        "@target-uri",
        "@scheme",
        "@request-target",
        "@query",
        "content-type",
    ] {
        provider(json!({"message_signing": {"claim": "ipk", "components": [ok]}}));
    }
    for ok in ["sig.v1", "*x", "install"] {
        provider(json!({"message_signing": {"claim": "ipk", "label": ok}}));
    }
    // Delegated providers: pinned to one issuer (the metadata key may hold
    // another provider's payload), and without keys they would never use.
    let e = bad(json!({"name": "p", "from": [{"header": "x"}], "verified_by": {"key": "payload"}}));
    assert_eq!(e.path, "tokens[0].issuer", "{e}");
    let e = bad(
        json!({"name": "p", "from": [{"header": "x"}], "verified_by": {"key": "payload"},
                       "issuer": "https://i.example",
                       "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]}),
    );
    assert_eq!(e.path, "tokens[0].verified_by", "{e}");
    let ok = json!({"tokens": [{"name": "p", "from": [{"header": "x"}], "verified_by": {"key": "payload"},
                                "issuer": "https://i.example"}]});
    crate::config::Config::from_json(ok.to_string().as_bytes()).unwrap();
}

#[test]
fn es384_and_eddsa_tokens_with_unusual_claims_verify_like_the_others() {
    // Claims that pass `precheck` for every algorithm (a fractional `exp`,
    // numbers in claims of the signer's own) must not be refused as a bad
    // signature for some; a numeric `sub` or `jti` is malformed for all.
    let es384 = ES384KeyPair::from_bytes(&[7u8; 48]).unwrap();
    let seed = ed25519_compact::Seed::new([9u8; 32]);
    let ed = Ed25519KeyPair::from_bytes(&ed25519_compact::KeyPair::from_seed(seed)[..]).unwrap();
    let p = provider(json!({"keys": [
        {"kid": "es384", "alg": "ES384", "pem": es384.public_key().to_pem().unwrap()},
        {"kid": "ed", "alg": "EdDSA", "pem": ed.public_key().to_pem()}
    ]}));
    // jwt-simple would sign typed fields; sign the raw JSON instead.
    let sign_raw = |kid: &str, alg: &str, sign: &dyn Fn(&[u8]) -> Vec<u8>| {
        let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let body = json!({"iat": NOW, "exp": NOW as f64 + 60.5, "sub": "s", "jti": "j",
                          "uid": 42, "n": 7.5});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body.to_string())
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    let es_token = sign_raw("es384", "ES384", &|m| {
        use p384::ecdsa::signature::Signer;
        let sk = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap();
        let sig: p384::ecdsa::Signature = sk.sign(m);
        sig.to_bytes().to_vec()
    });
    let ed_token = sign_raw("ed", "EdDSA", &|m| {
        ed25519_compact::KeyPair::from_seed(seed)
            .sk
            .sign(m, None)
            .to_vec()
    });
    for t in [&es_token, &ed_token] {
        assert_eq!(verify(&p, t, NOW), Ok(NOW + 60), "{t}");
        let mut forged = t.to_string();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'Q' } else { 'A' });
        assert!(matches!(
            verify(&p, &forged, NOW),
            Err(TokenError::Signature(_))
        ));
    }
}

#[test]
fn every_key_kind_of_the_spec_verifies_as_pem_jwk_or_secret() {
    // SPEC §3: HS256/384/512 secrets in base64; RS256/PS256/ES256/ES384/
    // EdDSA public keys as PEM or JWK. Keys from fixed seeds (no
    // randomness, so the test runs the same natively and under wasm).
    let es384 = ES384KeyPair::from_bytes(&[7u8; 48]).unwrap();
    let seed = ed25519_compact::Seed::new([9u8; 32]);
    let ed = Ed25519KeyPair::from_bytes(&ed25519_compact::KeyPair::from_seed(seed)[..]).unwrap();
    let ps = PS256KeyPair::from_pem(RSA_PRIV).unwrap();
    // SubjectPublicKeyInfo ends with the uncompressed point 04 || x || y.
    let der = es384.public_key().to_der().unwrap();
    let p384 = &der[der.len() - 97..];
    assert_eq!(p384[0], 4);
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let rsa = ps.public_key().to_components();
    let pkcs1 = {
        use ::rsa::pkcs1::EncodeRsaPublicKey;
        use ::rsa::pkcs8::DecodePublicKey;
        ::rsa::RsaPublicKey::from_public_key_pem(RSA_PUB)
            .unwrap()
            .to_pkcs1_pem(::rsa::pkcs8::LineEnding::LF)
            .unwrap()
    };
    let p = provider(json!({"keys": [
        {"kid": "es384-pem", "alg": "ES384", "pem": es384.public_key().to_pem().unwrap()},
        {"kid": "es384-jwk", "jwk": {"kty": "EC", "crv": "P-384", "x": b64(&p384[1..49]), "y": b64(&p384[49..97])}},
        {"kid": "ed-pem", "alg": "EdDSA", "pem": ed.public_key().to_pem()},
        {"kid": "ed-jwk", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(&ed.public_key().to_bytes())}},
        {"kid": "ps-pem", "alg": "PS256", "pem": RSA_PUB},
        {"kid": "rs-pkcs1", "alg": "RS256", "pem": pkcs1},
        {"kid": "ps-jwk", "alg": "PS256", "jwk": {"kty": "RSA", "n": b64(&rsa.n), "e": b64(&rsa.e)}},
        {"kid": "hs384", "alg": "HS384", "secret_base64": STANDARD.encode([3u8; 48])},
        {"kid": "hs512", "alg": "HS512", "secret_base64": STANDARD.encode([4u8; 64])}
    ]}));
    let claims = || signed_claims(Map::new(), NOW, NOW + 60);
    let mut tokens = vec![
        ES384KeyPair::from_bytes(&es384.to_bytes())
            .unwrap()
            .with_key_id("es384-pem")
            .sign(claims())
            .unwrap(),
        es384.with_key_id("es384-jwk").sign(claims()).unwrap(),
        ed.clone().with_key_id("ed-pem").sign(claims()).unwrap(),
        ed.with_key_id("ed-jwk").sign(claims()).unwrap(),
        ps.clone().with_key_id("ps-pem").sign(claims()).unwrap(),
        RS256KeyPair::from_pem(RSA_PRIV)
            .unwrap()
            .with_key_id("rs-pkcs1")
            .sign(claims())
            .unwrap(),
        ps.with_key_id("ps-jwk").sign(claims()).unwrap(),
    ];
    tokens.extend(hs384_and_hs512());
    for t in &tokens {
        assert_eq!(verify(&p, t, NOW), Ok(NOW + 60), "{t}");
        // the same token with its signature's last character changed
        let mut forged = t.to_string();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'Q' } else { 'A' });
        assert!(
            matches!(verify(&p, &forged, NOW), Err(TokenError::Signature(_))),
            "{forged}"
        );
    }
}

#[test]
fn one_rsa_key_verifies_only_the_padding_of_its_configured_alg() {
    // The same RSA key pair signs RS256 and PS256 tokens; a key configured
    // for one algorithm refuses the other, with or without a `kid`.
    let (rs, ps) = (
        RS256KeyPair::from_pem(RSA_PRIV).unwrap(),
        PS256KeyPair::from_pem(RSA_PRIV).unwrap(),
    );
    let claims = || signed_claims(Map::new(), NOW, NOW + 60);
    for (configured, good, other) in [
        (
            "RS256",
            rs.clone().with_key_id("k").sign(claims()).unwrap(),
            ps.clone().with_key_id("k").sign(claims()).unwrap(),
        ),
        (
            "PS256",
            ps.clone().with_key_id("k").sign(claims()).unwrap(),
            rs.clone().with_key_id("k").sign(claims()).unwrap(),
        ),
    ] {
        let p = provider(json!({"keys": [{"kid": "k", "alg": configured, "pem": RSA_PUB}]}));
        assert_eq!(verify(&p, &good, NOW), Ok(NOW + 60), "{configured}");
        assert!(
            matches!(verify(&p, &other, NOW), Err(TokenError::Signature(_))),
            "{configured} key, the other padding"
        );
        let kidless = provider(json!({"keys": [{"alg": configured, "pem": RSA_PUB}]}));
        assert!(matches!(
            verify(&kidless, &other, NOW),
            Err(TokenError::Signature(_))
        ));
    }
}

/// An HS384 and an HS512 token, valid for 60 s at `NOW`, under the keys
/// `hs384` ([3; 48]) and `hs512` ([4; 64]).
fn hs384_and_hs512() -> [String; 2] {
    let claims = || signed_claims(Map::new(), NOW, NOW + 60);
    [
        HS384Key::from_bytes(&[3u8; 48])
            .with_key_id("hs384")
            .authenticate(claims())
            .unwrap(),
        HS512Key::from_bytes(&[4u8; 64])
            .with_key_id("hs512")
            .authenticate(claims())
            .unwrap(),
    ]
}

#[test]
fn hs384_and_hs512_refuse_truncated_and_extended_tags() {
    let p = provider(json!({"keys": [
        {"kid": "hs384", "alg": "HS384", "secret_base64": STANDARD.encode([3u8; 48])},
        {"kid": "hs512", "alg": "HS512", "secret_base64": STANDARD.encode([4u8; 64])}
    ]}));
    for t in hs384_and_hs512() {
        assert_eq!(verify(&p, &t, NOW), Ok(NOW + 60));
        let (input, sig) = t.rsplit_once('.').unwrap();
        let tag = URL_SAFE_NO_PAD.decode(sig).unwrap();
        for bad in [
            tag[..tag.len() - 1].to_vec(),
            tag[..32].to_vec(),
            [&tag[..], &[0u8]].concat(),
        ] {
            let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&bad));
            assert!(
                matches!(verify(&p, &forged, NOW), Err(TokenError::Signature(_))),
                "{} tag bytes of {}",
                bad.len(),
                tag.len()
            );
        }
    }
}

#[test]
fn a_jwk_restricted_to_other_uses_or_with_a_zero_modulus_is_refused() {
    let ps = PS256KeyPair::from_pem(RSA_PRIV).unwrap();
    let rsa = ps.public_key().to_components();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let jwk = |extra: serde_json::Value| {
        let mut j = json!({"kty": "RSA", "n": b64(&rsa.n), "e": b64(&rsa.e)});
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        keys::key_from_jwk(&j, None, Some("k".into()))
    };
    assert!(jwk(json!({})).is_ok());
    assert!(jwk(json!({"use": "sig", "key_ops": ["verify"]})).is_ok());
    // RFC 7517 §4.3: listed operations that do not include verify.
    let e = jwk(json!({"key_ops": ["encrypt", "wrapKey"]})).unwrap_err();
    assert!(e.contains("key_ops"), "{e}");
    assert!(jwk(json!({"key_ops": "verify"})).is_err(), "not a list");
    // `use` that is not the string "sig" is refused, not ignored.
    assert!(jwk(json!({"use": ["enc"]})).is_err());
    assert!(jwk(json!({"use": "enc"})).is_err());
    // An all-zero modulus is an error, never an arithmetic overflow.
    let zero = json!({"kty": "RSA", "n": b64(&[0u8; 256]), "e": "AQAB"});
    let e = keys::key_from_jwk(&zero, None, None).unwrap_err();
    assert!(e.contains("0 bits"), "{e}");
}

#[test]
fn a_jwk_alg_or_kid_that_is_not_a_string_is_refused_not_ignored() {
    let ps = PS256KeyPair::from_pem(RSA_PRIV).unwrap();
    let rsa = ps.public_key().to_components();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let rsa_jwk = |extra: serde_json::Value| {
        let mut j = json!({"kty": "RSA", "n": b64(&rsa.n), "e": b64(&rsa.e)});
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        j
    };
    // Read as absent, `["PS256"]` gave the key RS256, and `7` a key for
    // tokens without a kid.
    for (extra, member) in [
        (json!({"alg": ["PS256"]}), "alg"),
        (json!({"alg": 256}), "alg"),
        (json!({"kid": 7}), "kid"),
        (json!({"kid": {"id": "k1"}}), "kid"),
    ] {
        let e = keys::key_from_jwk(&rsa_jwk(extra.clone()), None, None).unwrap_err();
        assert!(
            e.contains(&format!("`{member}` is not a string")),
            "{extra}: {e}"
        );
        // In configuration that is an error of the set; a fetched set
        // skips the key rather than guess at it.
        let set = json!({"keys": [rsa_jwk(extra.clone())]});
        let e = keys::keys_from_jwks(&set, keys::JwksOrigin::Configured).unwrap_err();
        assert!(e.starts_with("keys[0]: "), "{e}");
        let fetched = keys::keys_from_jwks(&set, keys::JwksOrigin::Fetched).unwrap();
        assert!(fetched.is_empty(), "{extra}");
    }
    let ok = keys::key_from_jwk(&rsa_jwk(json!({"alg": "PS256", "kid": "k1"})), None, None);
    let ok = ok.unwrap();
    assert_eq!((ok.alg, ok.kid.as_deref()), (Alg::PS256, Some("k1")));
    // `null` is an unset member, as serializers write it: the key loads.
    let unset = json!({"alg": null, "kid": null});
    let key = keys::key_from_jwk(&rsa_jwk(unset), None, None).unwrap();
    assert_eq!((key.alg, key.kid), (Alg::RS256, None));
}

#[test]
fn a_kid_repeated_in_a_fetched_jwks_tries_each_of_its_keys() {
    // A JWKS may list two keys under one kid: a token signed by the
    // second must verify (the first key alone refused it, and a genuine
    // client's failures went to the negative cache and its budget).
    let p = provider(json!({}));
    let jwk = |secret: &[u8]| {
        keys::key_from_jwk(
            &json!({"kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret)}),
            None,
            Some("dup".into()),
        )
        .unwrap()
    };
    let fetched = vec![jwk(&[1u8; 32]), jwk(&[2u8; 32])];
    let header = json!({"alg": "HS256", "kid": "dup"});
    for secret in [[1u8; 32], [2u8; 32]] {
        let t = hs256_raw(&secret, &header, &claims_at(NOW, 60));
        let pre = precheck(&p, &p.keys, &fetched, false, &t, NOW).unwrap();
        assert_eq!(pre.others.len(), 1);
        assert!(pre.check_signature(&t).is_ok());
    }
    let forged = hs256_raw(&[3u8; 32], &header, &claims_at(NOW, 60));
    let pre = precheck(&p, &p.keys, &fetched, false, &forged, NOW).unwrap();
    assert!(pre.check_signature(&forged).is_err());
}

#[test]
fn a_verified_token_debugs_its_claim_names_not_their_values() {
    let mut claims = Map::new();
    claims.insert("phone".into(), Value::String("+447700900123".into()));
    claims.insert("sub".into(), Value::String("user-42".into()));
    let t = VerifiedToken {
        provider: 1,
        exp: 99,
        claims,
    };
    let d = format!("{t:?}");
    assert_eq!(
        d,
        r#"VerifiedToken { provider: 1, exp: 99, claims: ["phone", "sub"] }"#
    );
}

/// Each time rule at its exact edge with the default
/// 5 s skew. `time_rules` tests `nbf` 30 s ahead only, so a skew doubled
/// (or any `nbf` tolerance up to 29 s) for `nbf` passed the whole suite.
#[test]
fn each_time_rule_holds_at_its_edge() {
    let p = provider(json!({}));
    let skew = p.clock_skew_seconds;
    assert_eq!(skew, 5, "the edges below are for the default skew");
    // `nbf`: up to the skew ahead is taken, a second more is not.
    let nbf = |n: u64| json!({"exp": NOW + 60, "nbf": n, "sub": "u"});
    assert!(verify(&p, &hs(&nbf(NOW + skew)), NOW).is_ok());
    assert_eq!(
        verify(&p, &hs(&nbf(NOW + skew + 1)), NOW),
        Err(TokenError::NotYetValid)
    );
    // `iat` likewise.
    assert!(verify(&p, &hs(&claims_at(NOW + skew, 60)), NOW).is_ok());
    assert_eq!(
        verify(&p, &hs(&claims_at(NOW + skew + 1, 60)), NOW),
        Err(TokenError::NotYetValid)
    );
    // `exp`: up to the skew behind is taken, a second more is not.
    assert!(verify(&p, &hs(&claims_at(NOW - 60, 60 - skew)), NOW).is_ok());
    assert_eq!(
        verify(&p, &hs(&claims_at(NOW - 60, 60 - skew - 1)), NOW),
        Err(TokenError::Expired)
    );
    // Lifetime from `iat`: exactly the cap is taken, a second more is not.
    assert!(verify(&p, &hs(&claims_at(NOW - 10, 300)), NOW).is_ok());
    assert_eq!(
        verify(&p, &hs(&claims_at(NOW - 10, 301)), NOW),
        Err(TokenError::Lifetime)
    );
    // Without `iat`: `exp` up to the cap plus the skew ahead.
    assert!(verify(&p, &hs(&json!({"exp": NOW + 300 + skew})), NOW).is_ok());
    assert_eq!(
        verify(&p, &hs(&json!({"exp": NOW + 301 + skew})), NOW),
        Err(TokenError::Lifetime)
    );
}

/// The configuration's ceilings on the token's time
/// rules hold at their edge. Only `message_signing.clock_skew_seconds` was
/// tested: the token's own `clock_skew_seconds` (300), `max_lifetime_seconds`
/// (86 400) and `message_signing.max_age_seconds` (86 400) could each be
/// lifted with the suite passing, and a skew of an hour then taken.
#[test]
fn time_ceilings_of_a_provider_hold_at_their_edge() {
    let compile = |extra: Value| {
        let mut v = json!({"name": "p", "from": [{"header": "x"}],
                           "keys": [{"alg": "HS256", "secret_base64": STANDARD.encode(SECRET)}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let raw: RawProvider = serde_json::from_value(v).unwrap();
        compile_provider("tokens[0]", raw).err().map(|e| e.path)
    };
    assert_eq!(compile(json!({"clock_skew_seconds": 300})), None);
    assert_eq!(
        compile(json!({"clock_skew_seconds": 301})).as_deref(),
        Some("tokens[0].clock_skew_seconds")
    );
    assert_eq!(compile(json!({"max_lifetime_seconds": 86_400})), None);
    assert_eq!(
        compile(json!({"max_lifetime_seconds": 86_401})).as_deref(),
        Some("tokens[0].max_lifetime_seconds")
    );
    assert_eq!(
        compile(json!({"message_signing": {"claim": "ipk", "max_age_seconds": 86_400}})),
        None
    );
    assert_eq!(
        compile(json!({"message_signing": {"claim": "ipk", "max_age_seconds": 86_401}})).as_deref(),
        Some("tokens[0].message_signing.max_age_seconds")
    );
}
