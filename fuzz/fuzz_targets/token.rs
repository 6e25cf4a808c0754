//! Token parsing and verification, `token::precheck` then
//! `Prechecked::check_signature`, against one fixed provider (HS256, RS256 and
//! ES256 keys from tests/fixtures, an issuer and an audience).
//!
//! The first byte picks the input's shape:
//! - even: the rest is the token as a client sends it;
//! - odd: the rest is header JSON, a NUL byte, payload JSON, encoded and
//!   signed here with the HS256 secret, so that the claim rules are reached
//!   behind a valid MAC (random bytes never forge one).
//!
//! Oracle: a token that verifies respects the time rules (exp, nbf, iat,
//! lifetime), the issuer and the audience, and says the algorithm it was
//! signed with.
#![no_main]

use std::sync::OnceLock;

use appguard::config::Config;
use appguard::token::precheck;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_900_000_000;
/// The tests' HS256 secret (tests/fixtures/README.md).
const SECRET: &[u8] = b"appguard-test-secret-0123456789-appguard-test-secret-0123456789!";

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let doc = serde_json::json!({
            "tokens": [{
                "name": "p",
                "from": [{"header": "x-token"}],
                "keys": [
                    {"kid": "hs", "alg": "HS256", "secret_base64": STANDARD.encode(SECRET)},
                    {"kid": "rs", "alg": "RS256", "pem": include_str!("../../tests/fixtures/rsa-test-key.pub.pem")},
                    {"kid": "es", "alg": "ES256", "pem": include_str!("../../tests/fixtures/ec-p256-test-key.pub.pem")}
                ],
                "issuer": "https://issuer.example",
                "audiences": ["api"]
            }]
        });
        match Config::from_json(doc.to_string().as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("the fixed configuration is refused: {e}"),
        }
    })
}

fn signed(header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), SECRET);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut parts = rest.splitn(2, |b| *b == 0);
        let header = parts.next().unwrap_or_default();
        let payload = parts.next().unwrap_or_default();
        signed(header, payload)
    };
    let p = &config().providers[0];
    let Ok(pre) = precheck(p, &p.keys, &[], false, &token, NOW) else {
        return;
    };
    if pre.check_signature(&token).is_err() {
        return;
    }
    // The payload as this oracle reads it, not as the code under test
    // does: strict base64url (RFC 7515), then plain JSON. A verified token
    // has a numeric `exp` (RFC 7519's NumericDate: a fraction or exponent
    // is taken, `1.9e9`), and it is the `exp` checked, rounded down.
    let payload: serde_json::Value = {
        use base64::Engine as _;
        let part = token.split('.').nth(1).unwrap_or("");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap_or_else(|e| panic!("verified a payload that is not base64url: {e}"));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("verified a payload that is not JSON: {e}"))
    };
    assert_eq!(
        payload.get("exp").and_then(|v| v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f.floor() as u64))),
        Some(pre.exp),
        "the exp checked is not the token's: {payload}"
    );
    assert_eq!(
        payload.get("iss"),
        pre.claims.get("iss"),
        "the iss checked is not the token's"
    );
    assert_eq!(
        payload.get("aud"),
        pre.claims.get("aud"),
        "the aud checked is not the token's"
    );
    let skew = p.clock_skew_seconds;
    assert!(
        pre.exp.saturating_add(skew) >= NOW,
        "expired token verified"
    );
    assert!(
        pre.exp <= NOW + p.max_lifetime_seconds + skew,
        "token beyond max_lifetime verified"
    );
    assert_eq!(
        pre.claims.get("iss").and_then(|v| v.as_str()),
        Some("https://issuer.example"),
        "token with another issuer verified"
    );
    // The audience: "api", as a string or one of an array's strings.
    let aud_ok = match pre.claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == "api",
        Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some("api")),
        _ => false,
    };
    assert!(aud_ok, "token for another audience verified");
    // Not before its time, not issued in the future, and no longer-lived
    // than allowed from when it was issued.
    let time = |name: &str| pre.claims.get(name).and_then(serde_json::Value::as_f64);
    if let Some(nbf) = time("nbf") {
        assert!(nbf <= (NOW + skew) as f64, "token not yet valid verified");
    }
    if let Some(iat) = time("iat") {
        assert!(
            iat <= (NOW + skew) as f64,
            "token issued in the future verified"
        );
        assert!(
            (pre.exp as f64) - iat <= (p.max_lifetime_seconds) as f64,
            "exp - iat beyond max_lifetime verified"
        );
    }
    // Only what the header's `alg` names, with that key's algorithm: a
    // MAC made here is HS256, so the header must say so.
    if mode % 2 == 1 {
        let header = token.split('.').next().unwrap_or("");
        let header = URL_SAFE_NO_PAD.decode(header).unwrap_or_default();
        let alg = serde_json::from_slice::<serde_json::Value>(&header)
            .ok()
            .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
        assert_eq!(alg.as_deref(), Some("HS256"), "another alg verified");
    }
});
