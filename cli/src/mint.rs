//! `mint`: development tokens signed with a provider's test keys, shaped the
//! way appguard verifies them (`exp` always set, a short lifetime, optional
//! binding `pay` and install key `ipk`).

use std::collections::HashSet;

use appguard::token::keys::{hmac_key, Alg, KeyMaterial};
use jwt_simple::prelude::*;
use serde_json::{Map, Value};

use crate::error::CliError;

/// The key a token is signed with.
pub enum SigningMaterial {
    /// An HMAC secret (HS256/384/512), raw bytes.
    Secret(Vec<u8>),
    /// A private key in PEM (RS*, PS*, ES256, ES384, EdDSA): PKCS#8, or
    /// PKCS#1 / SEC1 where jwt-simple reads them.
    PrivatePem(String),
}

impl std::fmt::Debug for SigningMaterial {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningMaterial::Secret(_) => f.write_str("Secret(..)"),
            SigningMaterial::PrivatePem(_) => f.write_str("PrivatePem(..)"),
        }
    }
}

/// Claims the dedicated options set; `--claim` may not set them, so that a
/// token never carries a claim twice (appguard refuses duplicate members).
pub const REGISTERED_CLAIMS: &[&str] = &["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// Longest `--lifetime` accepted: one day, in seconds, the largest
/// `max_lifetime_seconds` any provider may set
/// ([`appguard::token::MAX_LIFETIME_CEILING_SECONDS`]): a token living
/// longer is refused by every provider (`token_lifetime`). The cap also
/// keeps jwt-simple, which adds the lifetime to the current time unchecked,
/// far from an overflow.
pub const MAX_LIFETIME_SECONDS: u64 = appguard::token::MAX_LIFETIME_CEILING_SECONDS;

/// The deepest nesting of arrays and objects the filter accepts in a
/// token's claims, the claims object itself counted as one level: its strict
/// JSON parser refuses a token nested deeper as malformed.
pub const MAX_JSON_DEPTH: usize = appguard::token::strict_json::MAX_DEPTH;

/// What goes into a minted token.
#[derive(Debug)]
pub struct TokenSpec {
    /// The algorithm; must suit the key.
    pub alg: Alg,
    /// The signing key.
    pub key: SigningMaterial,
    /// `kid` header.
    pub kid: Option<String>,
    /// `iss`.
    pub issuer: Option<String>,
    /// `aud`: one value is written as a string, several as an array.
    pub audiences: Vec<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// `jti`.
    pub jwt_id: Option<String>,
    /// Other claims, in order.
    pub claims: Vec<(String, Value)>,
    /// Seconds from now to `exp` (`iat` and `nbf` are now).
    pub lifetime_seconds: u64,
}

/// Parses `name=value`: the value as JSON when it parses (`n=3`,
/// `flag=true`, `l=["a"]`, `s="3"`), else as a string.
pub fn parse_claim(s: &str) -> Result<(String, Value), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: empty claim name"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}

/// A `--claim NAME=VALUE` argument as [`parse_claim`] reads it, refusing
/// (exit 1) an integer beyond 64 bits: serde_json, like most JSON readers,
/// would turn it into a float (`18446744073709551616` becomes
/// `1.8446744073709552e19`), so the token would not carry what was
/// written. A malformed argument is a usage error (exit 2).
pub fn claim_from_arg(s: &str) -> Result<(String, Value), CliError> {
    let (name, value) = parse_claim(s).map_err(|e| CliError::input(format!("--claim {e}")))?;
    let text = s.split_once('=').map_or("", |(_, text)| text);
    match serde_json::from_str::<Value>(text) {
        // Only JSON is read as numbers; other text is a string as written.
        Ok(_) => {
            if let Some(int) = oversized_integer(text) {
                return Err(CliError::invalid(format!(
                    "--claim {name}: {int} is an integer beyond 64 bits, which would be minted as the float {}; write it as a JSON string (\"{int}\") for the digits as they are",
                    value_of(int)
                )));
            }
        }
        // JSON too deep for serde_json: not to be minted as a string.
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
            return Err(CliError::invalid(format!(
                "--claim {name}: nests arrays and objects over 128 levels deep; the filter reads at most {} within a claim",
                MAX_JSON_DEPTH - 1
            )));
        }
        Err(_) => {}
    }
    Ok((name, value))
}

/// How serde_json reads the number `int`, for the message.
fn value_of(int: &str) -> String {
    serde_json::from_str::<Value>(int).map_or_else(|_| int.to_owned(), |v| v.to_string())
}

/// The first integer literal (no `.`, `e` or `E`) in the JSON text `json`,
/// outside strings, that fits neither an `i64` nor a `u64`.
fn oversized_integer(json: &str) -> Option<&str> {
    let b = json.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => {
                i += 1;
                while let Some(&c) = b.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while b
                    .get(i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
                {
                    i += 1;
                }
                let literal = json.get(start..i)?;
                let integer = !literal.contains(['.', 'e', 'E']);
                if integer && literal.parse::<i64>().is_err() && literal.parse::<u64>().is_err() {
                    return Some(literal);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// How deeply arrays and objects nest in `v`: 0 for a scalar.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses an algorithm name exactly as a provider's `keys[].alg` does.
pub fn parse_alg(s: &str) -> Result<Alg, String> {
    Alg::from_name(s).ok_or_else(|| {
        format!(
            "{s:?}: one of HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"
        )
    })
}

/// Signs the token.
pub fn mint(spec: &TokenSpec) -> Result<String, CliError> {
    if spec.lifetime_seconds == 0 {
        return Err(CliError::invalid("--lifetime must be at least 1 second"));
    }
    if spec.lifetime_seconds > MAX_LIFETIME_SECONDS {
        return Err(CliError::invalid(format!(
            "--lifetime {} is too long: at most {MAX_LIFETIME_SECONDS} seconds (one day); no provider accepts a token living longer",
            spec.lifetime_seconds
        )));
    }
    let mut custom = Map::new();
    for (name, value) in &spec.claims {
        if REGISTERED_CLAIMS.contains(&name.as_str()) {
            return Err(CliError::invalid(format!(
                "claim `{name}` has its own option (--iss, --sub, --aud, --jti, --lifetime)"
            )));
        }
        // Inside the claims object, one level down.
        let d = depth(value);
        if d >= MAX_JSON_DEPTH {
            return Err(CliError::invalid(format!(
                "claim `{name}` nests arrays and objects {d} levels deep; the filter refuses a token whose claims nest deeper than {MAX_JSON_DEPTH} levels (the claims object is the first), so at most {} within a claim",
                MAX_JSON_DEPTH - 1
            )));
        }
        if custom.insert(name.clone(), value.clone()).is_some() {
            return Err(CliError::invalid(format!("claim `{name}` given twice")));
        }
    }
    let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(spec.lifetime_seconds));
    if let Some(iss) = &spec.issuer {
        claims = claims.with_issuer(iss);
    }
    if let Some(sub) = &spec.subject {
        claims = claims.with_subject(sub);
    }
    if let Some(jti) = &spec.jwt_id {
        claims = claims.with_jwt_id(jti);
    }
    match spec.audiences.as_slice() {
        [] => {}
        [one] => claims = claims.with_audience(one),
        many => claims = claims.with_audiences(many.iter().cloned().collect::<HashSet<_>>()),
    }
    let kid = spec.kid.as_deref();
    // The filter refuses a `kid` over 256 bytes as malformed.
    if kid.is_some_and(|k| k.len() > 256) {
        return Err(CliError::invalid(
            "--kid: at most 256 bytes (the filter refuses longer ones)",
        ));
    }
    let pem = |what: &str| -> Result<&str, CliError> {
        match &spec.key {
            SigningMaterial::PrivatePem(p) => Ok(p),
            SigningMaterial::Secret(_) => Err(CliError::invalid(format!(
                "{what} signs with a private key: use --key-pem"
            ))),
        }
    };
    let bad_pem = |e: jwt_simple::Error| {
        // `openssl ecparam -genkey` and `openssl ec` write SEC1, which
        // jwt-simple does not read.
        let hint = match &spec.key {
            SigningMaterial::PrivatePem(p) if p.contains("-----BEGIN EC PRIVATE KEY-----") => {
                " (a SEC1 `EC PRIVATE KEY`: convert it with `openssl pkcs8 -topk8 -nocrypt`)"
            }
            _ => "",
        };
        CliError::invalid(format!(
            "--key-pem is not a {} private key: {e}{hint}",
            spec.alg.name()
        ))
    };
    let failed = |e: jwt_simple::Error| CliError::invalid(format!("cannot sign: {e}"));
    macro_rules! keypair {
        ($ty:ty) => {{
            let mut k = <$ty>::from_pem(pem(spec.alg.name())?).map_err(bad_pem)?;
            if let Some(kid) = kid {
                k = k.with_key_id(kid);
            }
            k.sign(claims).map_err(failed)
        }};
    }
    match spec.alg {
        Alg::HS256 | Alg::HS384 | Alg::HS512 => {
            let SigningMaterial::Secret(secret) = &spec.key else {
                return Err(CliError::invalid(format!(
                    "{} signs with a shared secret: use --secret-base64 or --secret-file",
                    spec.alg.name()
                )));
            };
            // The filter's own rule for secrets (RFC 7518 §3.2 sizes).
            let material = hmac_key(spec.alg, secret).map_err(CliError::invalid)?;
            macro_rules! mac {
                ($k:expr) => {{
                    let mut k = $k;
                    if let Some(kid) = kid {
                        k = k.with_key_id(kid);
                    }
                    k.authenticate(claims).map_err(failed)
                }};
            }
            match material {
                KeyMaterial::Hs256(_) => mac!(HS256Key::from_bytes(secret)),
                KeyMaterial::Hs384(k) => mac!(k),
                KeyMaterial::Hs512(k) => mac!(k),
                _ => Err(CliError::invalid("not an HMAC key")),
            }
        }
        Alg::RS256 => keypair!(RS256KeyPair),
        Alg::RS384 => keypair!(RS384KeyPair),
        Alg::RS512 => keypair!(RS512KeyPair),
        Alg::PS256 => keypair!(PS256KeyPair),
        Alg::PS384 => keypair!(PS384KeyPair),
        Alg::PS512 => keypair!(PS512KeyPair),
        Alg::ES256 => keypair!(ES256KeyPair),
        Alg::ES384 => keypair!(ES384KeyPair),
        Alg::EdDSA => keypair!(Ed25519KeyPair),
    }
}

/// A random `jti`: 16 bytes from the OS, as 32 hex digits.
pub fn random_jti() -> Result<String, CliError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| CliError::input(format!("no OS randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HS256 spec with a 32-byte secret, no options, a minute to live.
    fn hs256() -> TokenSpec {
        TokenSpec {
            alg: Alg::HS256,
            key: SigningMaterial::Secret(vec![7; 32]),
            kid: None,
            issuer: None,
            audiences: vec![],
            subject: None,
            jwt_id: None,
            claims: vec![],
            lifetime_seconds: 60,
        }
    }

    #[test]
    fn claims_parse_as_json_or_string() {
        assert_eq!(parse_claim("n=3").unwrap(), ("n".into(), Value::from(3)));
        assert_eq!(
            parse_claim("s=\"3\"").unwrap(),
            ("s".into(), Value::from("3"))
        );
        assert_eq!(
            parse_claim("app=com.example=x").unwrap(),
            ("app".into(), Value::from("com.example=x"))
        );
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=x").is_err());
    }

    #[test]
    fn the_depth_bound_is_the_filters() {
        // At the bound a token is minted and the filter's parser reads its
        // claims; one level deeper it is refused here, as there.
        let nested = |levels: usize| {
            let mut v = Value::from(1);
            for _ in 0..levels {
                v = Value::Array(vec![v]);
            }
            v
        };
        let spec = |levels| TokenSpec {
            claims: vec![("n".into(), nested(levels))],
            ..hs256()
        };
        let payload = |token: &str| {
            use base64::Engine as _;
            let part = token.split('.').nth(1).unwrap();
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap()
        };
        let token = mint(&spec(MAX_JSON_DEPTH - 1)).unwrap();
        assert!(appguard::token::strict_json::parse_object(&payload(&token)).is_some());
        let e = mint(&spec(MAX_JSON_DEPTH)).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string()
                .contains("claim `n` nests arrays and objects 16 levels deep"),
            "{e}"
        );
        let deeper = serde_json::json!({ "n": nested(MAX_JSON_DEPTH) });
        let bytes = serde_json::to_vec(&deeper).unwrap();
        assert!(appguard::token::strict_json::parse_object(&bytes).is_none());
    }

    #[test]
    fn integers_beyond_64_bits_are_refused() {
        for arg in [
            "n=18446744073709551616",
            "n=-9223372036854775809",
            "n=[1, 99999999999999999999]",
            r#"n={"a": {"b": 123456789012345678901234567890}}"#,
        ] {
            let e = claim_from_arg(arg).unwrap_err();
            assert_eq!(e.exit_code(), 1, "{arg}: {e}");
            assert!(e.to_string().contains("beyond 64 bits"), "{arg}: {e}");
        }
        let e = claim_from_arg("n=18446744073709551616").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--claim n: 18446744073709551616 is an integer beyond 64 bits, which would be minted as \
             the float 1.8446744073709552e+19; write it as a JSON string (\"18446744073709551616\") \
             for the digits as they are"
        );
        // In range, floats as written, digits in strings: as before.
        for (arg, want) in [
            ("n=18446744073709551615", Value::from(u64::MAX)),
            ("n=-9223372036854775808", Value::from(i64::MIN)),
            ("n=1e30", Value::from(1e30)),
            (
                "n=18446744073709551616.0",
                Value::from(18446744073709551616.0),
            ),
            (
                r#"n="18446744073709551616""#,
                Value::from("18446744073709551616"),
            ),
            (
                r#"n=["\"", "99999999999999999999"]"#,
                serde_json::json!(["\"", "99999999999999999999"]),
            ),
            (
                "n=99999999999999999999x",
                Value::from("99999999999999999999x"),
            ),
        ] {
            assert_eq!(claim_from_arg(arg).unwrap(), ("n".into(), want), "{arg}");
        }
        // Deeper than serde_json reads: refused, not minted as a string.
        let deep = format!("n={}{}", "[".repeat(200), "]".repeat(200));
        let e = claim_from_arg(&deep).unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e}");
        assert!(e.to_string().contains("over 128 levels deep"), "{e}");
        // Malformed: a usage error, as clap's.
        assert_eq!(claim_from_arg("novalue").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn registered_claims_have_their_own_options() {
        let spec = TokenSpec {
            claims: vec![("exp".into(), Value::from(1))],
            ..hs256()
        };
        assert!(mint(&spec).is_err());
    }

    #[test]
    fn a_kid_the_filter_would_refuse_is_refused() {
        let spec = |kid: String| TokenSpec {
            kid: Some(kid),
            ..hs256()
        };
        assert!(mint(&spec("k".repeat(256))).is_ok());
        let e = mint(&spec("k".repeat(257))).unwrap_err();
        assert!(e.to_string().contains("--kid"), "{e}");
    }

    #[test]
    fn lifetimes_past_the_cap_are_refused_without_overflow() {
        let spec = |lifetime_seconds| TokenSpec {
            lifetime_seconds,
            ..hs256()
        };
        for too_long in [MAX_LIFETIME_SECONDS + 1, 3_000_000_000, u64::MAX] {
            let e = mint(&spec(too_long)).unwrap_err();
            assert_eq!(e.exit_code(), 1, "{e}");
            assert!(e.to_string().contains("--lifetime"), "{e}");
        }
        assert!(mint(&spec(MAX_LIFETIME_SECONDS)).is_ok());
    }

    #[test]
    fn short_secrets_are_refused_like_the_filter_does() {
        let spec = TokenSpec {
            key: SigningMaterial::Secret(vec![7; 16]),
            ..hs256()
        };
        let e = mint(&spec).unwrap_err();
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");
    }
}
