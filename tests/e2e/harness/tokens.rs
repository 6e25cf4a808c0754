//! Test tokens, signed with the fixture keys (tests/fixtures/README.md).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Value};

/// The tests' HS256 secret, 64 bytes (tests/fixtures/README.md).
pub const SECRET: &[u8] = b"appguard-test-secret-0123456789-appguard-test-secret-0123456789!";
/// RSA 2048 test key pair, PEM.
pub const RSA_PRIV: &str = include_str!("../../fixtures/rsa-test-key.pem");
/// Its public half.
pub const RSA_PUB: &str = include_str!("../../fixtures/rsa-test-key.pub.pem");
/// P-256 test key pair, PEM (PKCS#8).
pub const EC_PRIV: &str = include_str!("../../fixtures/ec-p256-test-key.pem");
/// Its public half.
pub const EC_PUB: &str = include_str!("../../fixtures/ec-p256-test-key.pub.pem");

/// The secret as configured (`secret_base64`).
pub fn secret_b64() -> String {
    STANDARD.encode(SECRET)
}

/// Seconds since the epoch now (the tests' tokens are minted for real time:
/// Envoy's clock is the real one).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A compact JWS over any header and claims, HMAC-SHA256 with `secret`.
pub fn hs256_raw(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), secret);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
}

/// HS256 with the test secret and a standard header.
pub fn hs256(claims: &Value) -> String {
    hs256_raw(SECRET, &json!({"alg": "HS256", "typ": "JWT"}), claims)
}

/// Valid claims for `lifetime` seconds from now, plus `extra`.
pub fn claims(lifetime: u64, extra: Value) -> Value {
    let n = now();
    let mut c = json!({"iat": n, "exp": n + lifetime});
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    c
}

fn to_claims(v: &Value) -> JWTClaims<serde_json::Map<String, Value>> {
    let mut map = v.as_object().cloned().unwrap_or_default();
    let iat = map.remove("iat").and_then(|x| x.as_u64());
    let exp = map.remove("exp").and_then(|x| x.as_u64());
    let mut c = Claims::with_custom_claims(map, Duration::from_secs(1));
    c.issued_at = iat.map(Duration::from_secs);
    c.expires_at = exp.map(Duration::from_secs);
    c.invalid_before = None;
    c
}

/// ES256 with the fixture key and `kid`.
pub fn es256(kid: &str, claims: &Value) -> String {
    ES256KeyPair::from_pem(EC_PRIV)
        .expect("EC fixture")
        .with_key_id(kid)
        .sign(to_claims(claims))
        .expect("sign ES256")
}

/// ES256 with a given key pair.
pub fn es256_with(kp: &ES256KeyPair, claims: &Value) -> String {
    kp.sign(to_claims(claims)).expect("sign ES256")
}

/// RS256 with the fixture key and `kid`.
pub fn rs256(kid: &str, claims: &Value) -> String {
    RS256KeyPair::from_pem(RSA_PRIV)
        .expect("RSA fixture")
        .with_key_id(kid)
        .sign(to_claims(claims))
        .expect("sign RS256")
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// The public JWK of an ES256 key pair.
pub fn es256_jwk(kp: &ES256KeyPair, kid: &str) -> Value {
    let p = kp.key_pair().public_key().to_bytes_uncompressed();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
           "x": b64(&p[1..33]), "y": b64(&p[33..65])})
}

/// The public JWK of the fixture EC key.
pub fn ec_fixture_jwk(kid: &str) -> Value {
    es256_jwk(&ES256KeyPair::from_pem(EC_PRIV).expect("EC fixture"), kid)
}

/// The public JWK of the fixture RSA key.
pub fn rsa_fixture_jwk(kid: &str) -> Value {
    let kp = RS256KeyPair::from_pem(RSA_PRIV).expect("RSA fixture");
    let c = kp.public_key().to_components();
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e)})
}

/// base64(SHA-256(values concatenated)), the binding claim value.
pub fn binding(values: &[&str]) -> String {
    appguard::token::binding_digest(values)
}
