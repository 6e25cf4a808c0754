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
                KeyMaterial::Hs256(k) => mac!(k.key),
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
