//! Verification keys: HMAC secrets, public keys as PEM or JWK, JWK Sets.
//!
//! The algorithm is fixed by the key, never taken from the token: a key is
//! configured (or published in a JWKS) with exactly one algorithm, and a
//! token whose header names another is refused. That closes `alg: none` and
//! the HMAC-with-a-public-key confusion by construction.

use base64::Engine;
use jwt_simple::prelude::*;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::ecdsa::P256Key;
use super::rsa::RsaPublicKey;

/// A JWS algorithm appguard verifies (RFC 7518 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum Alg {
    /// HMAC SHA-256.
    HS256,
    /// HMAC SHA-384.
    HS384,
    /// HMAC SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 SHA-512.
    RS512,
    /// RSASSA-PSS SHA-256.
    PS256,
    /// RSASSA-PSS SHA-384.
    PS384,
    /// RSASSA-PSS SHA-512.
    PS512,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// ECDSA P-384 SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// The `alg` header value.
    pub const fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// Parses an `alg` value exactly (case-sensitive, as RFC 7515 says).
    pub fn from_name(s: &str) -> Option<Alg> {
        Some(match s {
            "HS256" => Alg::HS256,
            "HS384" => Alg::HS384,
            "HS512" => Alg::HS512,
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    /// HMAC algorithms take a shared secret; the others a public key.
    pub const fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    /// The shortest HMAC secret accepted for the algorithm: the hash's output
    /// size (RFC 7518 §3.2). A shorter secret is easier to brute-force from
    /// one captured token.
    const fn min_secret_len(self) -> usize {
        // RFC 7518 §3.2: a key of the same size as the hash output or larger.
        match self {
            Alg::HS384 => 48,
            Alg::HS512 => 64,
            _ => 32,
        }
    }
}

impl Alg {
    /// For RS* and PS*: the hash, and whether the padding is PSS (else
    /// PKCS #1 v1.5). `None` for every other algorithm.
    pub fn rsa_scheme(self) -> Option<(super::rsa::Hash, bool)> {
        use super::rsa::Hash;
        Some(match self {
            Alg::RS256 => (Hash::Sha256, false),
            Alg::RS384 => (Hash::Sha384, false),
            Alg::RS512 => (Hash::Sha512, false),
            Alg::PS256 => (Hash::Sha256, true),
            Alg::PS384 => (Hash::Sha384, true),
            Alg::PS512 => (Hash::Sha512, true),
            _ => return None,
        })
    }
}

/// An HS256 secret with HMAC's two padded key blocks already hashed
/// (RFC 2104 §2): a tag then costs the message's SHA-256 blocks plus two,
/// instead of plus four. Unique HS256 tokens are the busiest verification
/// path, and this is about a tenth of its work.
pub struct Hs256Secret {
    /// SHA-256 state after `K ⊕ ipad`.
    inner: hmac_sha256::Hash,
    /// SHA-256 state after `K ⊕ opad`.
    outer: hmac_sha256::Hash,
}

impl Hs256Secret {
    /// Prepares `secret` (a key longer than the 64-byte block is hashed
    /// first, as RFC 2104 says).
    pub fn new(secret: &[u8]) -> Self {
        let mut block = [0u8; 64];
        if secret.len() > block.len() {
            block[..32].copy_from_slice(&hmac_sha256::Hash::hash(secret));
        } else {
            block[..secret.len()].copy_from_slice(secret);
        }
        let mut inner = hmac_sha256::Hash::new();
        inner.update(block.map(|b| b ^ 0x36));
        let mut outer = hmac_sha256::Hash::new();
        outer.update(block.map(|b| b ^ 0x5c));
        Hs256Secret { inner, outer }
    }

    /// HMAC-SHA256 of `msg`.
    pub fn tag(&self, msg: &[u8]) -> [u8; 32] {
        let mut inner = self.inner;
        inner.update(msg);
        let mut outer = self.outer;
        outer.update(inner.finalize());
        outer.finalize()
    }
}

/// The key material, typed by algorithm.
pub enum KeyMaterial {
    /// HS256 secret, with HMAC's padded key blocks hashed once.
    Hs256(Box<Hs256Secret>),
    /// HS384 secret.
    Hs384(HS384Key),
    /// HS512 secret.
    Hs512(HS512Key),
    /// RSA public key for RS256/384/512 or PS256/384/512, verified by
    /// [`super::rsa`] (not jwt-simple: see there why); the padding and hash
    /// come from the key's algorithm ([`Alg::rsa_scheme`]).
    Rsa(RsaPublicKey),
    /// ES256 public key, verified by [`super::ecdsa`] (not jwt-simple: see
    /// there why), with its table of multiples computed at load.
    Es256(P256Key),
    /// ES384 public key, verified with the `p384` crate over the signing
    /// input (jwt-simple's ES384 links the same crate).
    Es384(p384::ecdsa::VerifyingKey),
    /// Ed25519 public key, verified with `ed25519-compact` (the crate
    /// jwt-simple's EdDSA uses).
    EdDsa(ed25519_compact::PublicKey),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (secrets in particular).
        f.write_str("KeyMaterial(..)")
    }
}

/// One verification key: optional `kid`, fixed algorithm, material.
#[derive(Debug)]
pub struct Key {
    /// Key id matched against the token's `kid` header.
    pub kid: Option<String>,
    /// The only algorithm this key verifies.
    pub alg: Alg,
    /// The key itself.
    pub material: KeyMaterial,
}

/// `tokens[].keys[]` as written: exactly one of `secret_base64`, `pem`, `jwk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    /// Key id matched against the token's `kid` header; left out, the key
    /// is tried for tokens of its algorithm. See [`Key::kid`].
    #[serde(default, deserialize_with = "crate::config::present")]
    kid: Option<String>,
    /// The one algorithm the key verifies: required with `pem`; with
    /// `secret_base64` HS256 (default), HS384 or HS512; with `jwk`, the
    /// JWK's own `alg`, else its type's default (none for `oct`). See
    /// [`Key::alg`].
    #[serde(default, deserialize_with = "crate::config::present")]
    alg: Option<Alg>,
    /// HMAC secret, standard or url-safe base64 (at least 32/48/64 bytes
    /// for HS256/384/512); becomes [`Key::material`].
    #[serde(default, deserialize_with = "crate::config::present")]
    secret_base64: Option<String>,
    /// A PEM public key (RSA, EC or Ed25519); becomes [`Key::material`].
    #[serde(default, deserialize_with = "crate::config::present")]
    pem: Option<String>,
    /// A JWK: an RSA, EC or OKP public key, or an `oct` secret (private
    /// members refused); becomes [`Key::material`].
    #[serde(default, deserialize_with = "crate::config::present")]
    jwk: Option<Value>,
}

/// Decodes base64 in any of the common forms: standard or url-safe alphabet,
/// with or without padding (Approov and Kong hand out both).
pub fn decode_base64_any(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

/// Builds an HMAC key of the given algorithm from raw secret bytes.
pub fn hmac_key(alg: Alg, secret: &[u8]) -> Result<KeyMaterial, String> {
    if secret.len() < alg.min_secret_len() {
        return Err(format!(
            "{} needs a secret of at least {} bytes (RFC 7518 §3.2); this one has {}",
            alg.name(),
            alg.min_secret_len(),
            secret.len()
        ));
    }
    Ok(match alg {
        Alg::HS256 => KeyMaterial::Hs256(Box::new(Hs256Secret::new(secret))),
        Alg::HS384 => KeyMaterial::Hs384(HS384Key::from_bytes(secret)),
        Alg::HS512 => KeyMaterial::Hs512(HS512Key::from_bytes(secret)),
        _ => return Err(format!("{} is not an HMAC algorithm", alg.name())),
    })
}

/// An ES256 key from a SEC1 point, compressed or not: the `p256` crate
/// decodes it and checks it is on the curve, [`P256Key`] keeps it ready
/// for verification.
fn es256(sec1: &[u8]) -> Result<KeyMaterial, String> {
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
        .map_err(|_| "not a valid P-256 public key".to_string())?;
    Ok(KeyMaterial::Es256(P256Key::from_sec1(
        key.to_encoded_point(false).as_bytes(),
    )?))
}

/// A PEM public key for `alg`: SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`)
/// for every algorithm, or PKCS #1 (`BEGIN RSA PUBLIC KEY`) for RSA. The
/// RustCrypto crates jwt-simple itself calls decode it; calling them
/// directly keeps jwt-simple's `anyhow` errors, and with them std's
/// backtrace printer, out of the module (BENCH.md, *Module size*).
fn from_pem(alg: Alg, pem: &str) -> Result<KeyMaterial, String> {
    use p256::pkcs8::DecodePublicKey;
    let pem = pem.trim();
    // Refused by name, whatever else the text holds, rather than as "not a
    // public key": a private key does not belong in a proxy's
    // configuration, which many can read, and the operator should hear
    // why.
    if pem.contains("PRIVATE KEY") {
        return Err("the PEM holds a private key; give the public key only".into());
    }
    let err = || format!("not a {} public key in PEM", alg.name());
    Ok(match alg {
        // The same SubjectPublicKeyInfo for every RS*/PS* algorithm.
        Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::traits::PublicKeyParts;
            let k = match rsa::RsaPublicKey::from_public_key_pem(pem)
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem))
            {
                Ok(k) => k,
                // The crate's own checks (more than 4096 bits, an even
                // exponent) refuse some keys before ours can say why: the
                // reason, where the text holds an RSA key, else "not a
                // key". Never a key: only the error changes.
                Err(_) => {
                    return Err(rsa_components(pem)
                        .and_then(|(n, e)| RsaPublicKey::new(&n, &e).err())
                        .unwrap_or_else(err))
                }
            };
            KeyMaterial::Rsa(RsaPublicKey::new(
                &k.n().to_bytes_be(),
                &k.e().to_bytes_be(),
            )?)
        }
        Alg::ES256 => {
            let k = p256::ecdsa::VerifyingKey::from_public_key_pem(pem).map_err(|_| err())?;
            es256(k.to_encoded_point(false).as_bytes())?
        }
        Alg::ES384 => KeyMaterial::Es384(
            p384::ecdsa::VerifyingKey::from_public_key_pem(pem).map_err(|_| err())?,
        ),
        // Read as the RSA and EC keys are (RFC 7468, one `PUBLIC KEY`
        // block): Ed25519's own reader takes the last public key of the
        // text and ignores what surrounds it.
        Alg::EdDSA => {
            let (label, der) =
                p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).map_err(|_| err())?;
            if label != "PUBLIC KEY" {
                return Err(err());
            }
            ed25519(ed25519_compact::PublicKey::from_der(&der).map_err(|_| err())?)?
        }
        Alg::HS256 | Alg::HS384 | Alg::HS512 => {
            return Err("HMAC keys are given as `secret_base64`, not PEM".into())
        }
    })
}

/// The modulus and exponent of an RSA public key in PEM (SubjectPublicKeyInfo
/// with the rsaEncryption OID, or PKCS #1), read without the `rsa` crate's
/// checks of size and exponent: only for [`from_pem`]'s error message.
fn rsa_components(pem: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    use rsa::pkcs1::der::Decode as _;
    let (label, der) = p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).ok()?;
    let pkcs1 = match label {
        "PUBLIC KEY" => {
            let spki = rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(&der).ok()?;
            if spki.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
                return None;
            }
            spki.subject_public_key.as_bytes()?.to_vec()
        }
        "RSA PUBLIC KEY" => der,
        _ => return None,
    };
    let k = rsa::pkcs1::RsaPublicKey::from_der(&pkcs1).ok()?;
    Some((
        k.modulus.as_bytes().to_vec(),
        k.public_exponent.as_bytes().to_vec(),
    ))
}

/// An Ed25519 key that can verify something: a canonical encoding of a
/// point of the curve, not of small order (the identity among them). Any
/// other is refused at load, as every signature would fail under it.
fn ed25519(pk: ed25519_compact::PublicKey) -> Result<KeyMaterial, String> {
    pk.validate().map_err(|_| {
        "not a usable Ed25519 public key (not a point, or of small order)".to_string()
    })?;
    Ok(KeyMaterial::EdDsa(pk))
}

/// A JWK member's bytes (RFC 7518 §6: base64url). Trailing `=` is tolerated,
/// as this reads keys the operator or the issuer wrote, not client input
/// (tokens get the strict decoder).
fn b64url_field(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let s = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("JWK member `{name}` is missing"))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("JWK member `{name}` is not base64url"))
}

/// The members of a JWK that hold private key material (RFC 7518 §6.2.2
/// for EC and OKP, §6.3.2 for RSA). A JWK holding any of them is refused.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Parses one JWK (RFC 7517/7518) into a key. `alg` from the configuration
/// wins; otherwise the JWK's own `alg`; RSA keys without either default to
/// RS256 (what Firebase and most IdPs publish). Private keys are refused:
/// they do not belong in a proxy's configuration.
pub fn key_from_jwk(jwk: &Value, alg: Option<Alg>, kid: Option<String>) -> Result<Key, String> {
    let obj = jwk.as_object().ok_or("a JWK must be a JSON object")?;
    // Every private member RFC 7518 §6.2.2 and §6.3.2 define: `q`, `dp`
    // or `dq` alone factors an RSA modulus as surely as `d` or `p` does,
    // and a key published with one can be signed with by anyone.
    if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Err("the JWK contains private key material; give the public key only".into());
    }
    match obj.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err("JWK `use` is not \"sig\"".into()),
    }
    // RFC 7517 §4.3: a key whose operations are listed is usable for those
    // only.
    if let Some(ops) = obj.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err("JWK `key_ops` lists no \"verify\"".into());
        }
    }
    // RFC 7517 §4.4/§4.5: `alg` and `kid` are strings. One of another type
    // is an error, not an absent member: read as absent, a wrong `alg`
    // would give the key a guessed algorithm (RS256 for RSA) and a wrong
    // `kid` would make it a key for tokens that name none. `null` is read
    // as absent, as it always was: serializers write it for unset fields.
    let text_member = |name: &str| match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("JWK `{name}` is not a string")),
    };
    let jwk_alg = match text_member("alg")? {
        Some(a) => Some(Alg::from_name(a).ok_or_else(|| format!("unsupported JWK alg {a:?}"))?),
        None => None,
    };
    let jwk_kid = text_member("kid")?;
    if let (Some(a), Some(j)) = (alg, jwk_alg) {
        if a != j {
            return Err(format!(
                "alg {} disagrees with the JWK's alg {}",
                a.name(),
                j.name()
            ));
        }
    }
    let kid = kid.or_else(|| jwk_kid.map(str::to_owned));
    let kty = obj
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("JWK `kty` is missing")?;
    let (alg, material) = match kty {
        "oct" => {
            let alg = alg
                .or(jwk_alg)
                .ok_or("an `oct` JWK needs an alg (HS256/384/512)")?;
            let k = b64url_field(jwk, "k")?;
            (alg, hmac_key(alg, &k)?)
        }
        "RSA" => {
            let alg = alg.or(jwk_alg).unwrap_or(Alg::RS256);
            let n = b64url_field(jwk, "n")?;
            let e = b64url_field(jwk, "e")?;
            if n.len() < 256 {
                return Err("RSA modulus shorter than 2048 bits".into());
            }
            if alg.rsa_scheme().is_none() {
                return Err(format!("an RSA JWK cannot be used with {}", alg.name()));
            }
            (alg, KeyMaterial::Rsa(RsaPublicKey::new(&n, &e)?))
        }
        "EC" => {
            let crv = obj.get("crv").and_then(Value::as_str).unwrap_or("");
            let x = b64url_field(jwk, "x")?;
            let y = b64url_field(jwk, "y")?;
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(4u8);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            match (crv, alg.or(jwk_alg)) {
                ("P-256", None | Some(Alg::ES256)) if x.len() == 32 && y.len() == 32 => {
                    (Alg::ES256, es256(&point)?)
                }
                ("P-384", None | Some(Alg::ES384)) if x.len() == 48 && y.len() == 48 => (
                    Alg::ES384,
                    KeyMaterial::Es384(
                        p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                            .map_err(|_| "bad EC JWK: not a point of P-384".to_string())?,
                    ),
                ),
                _ => {
                    return Err(format!(
                        "unsupported EC JWK (crv {crv:?}) or alg/coordinate mismatch"
                    ))
                }
            }
        }
        "OKP" => {
            let crv = obj.get("crv").and_then(Value::as_str).unwrap_or("");
            if crv != "Ed25519" || !matches!(alg.or(jwk_alg), None | Some(Alg::EdDSA)) {
                return Err(format!("unsupported OKP JWK (crv {crv:?})"));
            }
            let x = b64url_field(jwk, "x")?;
            let pk = ed25519_compact::PublicKey::from_slice(&x)
                .map_err(|_| "bad Ed25519 JWK: `x` is not a 32-byte public key".to_string())?;
            (Alg::EdDSA, ed25519(pk)?)
        }
        other => return Err(format!("unsupported JWK kty {other:?}")),
    };
    Ok(Key { kid, alg, material })
}

/// Where a JWK Set comes from, which decides what [`keys_from_jwks`]
/// accepts from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwksOrigin {
    /// Inline in the configuration (`jwks`): every key must parse, and HMAC
    /// (`oct`) secrets are allowed, the configuration being as private as
    /// the secrets it holds.
    Configured,
    /// Fetched over the network (`remote_jwks`): public material. Keys that
    /// cannot be used for signatures here (other `kty`, `use: enc`) are
    /// skipped, an IdP may publish more than we need; HMAC (`oct`) keys are
    /// skipped too, since a secret anyone can fetch lets anyone forge tokens.
    Fetched,
}

/// Parses a JWK Set from `origin` (see [`JwksOrigin`]): in configuration
/// every key must parse; a fetched set keeps only its usable asymmetric
/// keys, possibly none (the caller decides whether that is an error).
pub fn keys_from_jwks(jwks: &Value, origin: JwksOrigin) -> Result<Vec<Key>, String> {
    let arr = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWKS is an object with a `keys` array")?;
    if arr.len() > 64 {
        return Err("more than 64 keys in the JWKS".into());
    }
    let mut out = Vec::with_capacity(arr.len());
    for (i, k) in arr.iter().enumerate() {
        match (key_from_jwk(k, None, None), origin) {
            // Decided on the parsed key, not on `kty`: whatever the JWK
            // says, no HMAC key comes from a fetched set.
            (Ok(key), JwksOrigin::Fetched) if key.alg.is_hmac() => {}
            (Ok(key), _) => out.push(key),
            (Err(e), JwksOrigin::Configured) => return Err(format!("keys[{i}]: {e}")),
            (Err(_), JwksOrigin::Fetched) => {}
        }
    }
    Ok(out)
}

impl RawKey {
    /// The field of the entry that holds an HMAC secret that is text or a
    /// few bytes repeated (see [`crate::config::looks_random`]), if it
    /// does: `secret_base64`, or `jwk.k` for an `oct` JWK. A secret anyone
    /// may guess, offline, from one captured token.
    pub(crate) fn text_secret_field(&self) -> Option<&'static str> {
        if let Some(b) = self.secret_base64.as_deref().and_then(decode_base64_any) {
            return (!crate::config::looks_random(&b)).then_some("secret_base64");
        }
        self.jwk
            .as_ref()
            .is_some_and(oct_secret_is_text)
            .then_some("jwk.k")
    }
}

impl RawKey {
    /// A digest of the key as written (the secret's bytes, the PEM without
    /// its whitespace, the JWK's members), only to tell whether two
    /// providers were given one key (see `Config::advisories`): never
    /// logged, and not the secret.
    pub(crate) fn fingerprint(&self) -> KeyDigest {
        let mut text: Vec<u8> = b"appguard configured key\0".to_vec();
        if let Some(b) = self.secret_base64.as_deref().and_then(decode_base64_any) {
            text.extend_from_slice(b"secret\0");
            text.extend_from_slice(&b);
        } else if let Some(pem) = &self.pem {
            text.extend_from_slice(b"pem\0");
            text.extend(pem.bytes().filter(|b| !b.is_ascii_whitespace()));
        } else if let Some(jwk) = &self.jwk {
            text.extend_from_slice(b"jwk\0");
            jwk_members(&mut text, jwk);
        }
        let d = Sha256::digest(&text);
        let mut out = [0u8; 16];
        out.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
        KeyDigest(out)
    }
}

/// A digest of a configured key (`RawKey::fingerprint`): compared to
/// tell whether two providers were given one key, never shown (its
/// `Debug` prints no bytes, so a provider's `Debug` leaks nothing of a
/// low-entropy secret to guess offline).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 16]);

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// A JWK's key members, for [`RawKey::fingerprint`] and the inline `jwks`:
/// those that make the key (RFC 7518 §6: `kty`, `crv`, `x`, `y`, `n`, `e`,
/// `k`), in that order; `kid`, `alg` and `use` say nothing of it (one key
/// under two names is one key).
fn jwk_members(out: &mut Vec<u8>, jwk: &Value) {
    for name in ["kty", "crv", "x", "y", "n", "e", "k"] {
        if let Some(v) = jwk.get(name).and_then(Value::as_str) {
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
    }
}

/// A digest of an inline `jwks` member, as [`RawKey::fingerprint`] has it
/// for a `jwk`.
pub(crate) fn jwk_fingerprint(jwk: &Value) -> KeyDigest {
    RawKey {
        kid: None,
        alg: None,
        secret_base64: None,
        pem: None,
        jwk: Some(jwk.clone()),
    }
    .fingerprint()
}

/// Whether `jwk` is an `oct` JWK whose secret `k` is text or a few bytes
/// repeated (see [`RawKey::text_secret_field`]).
pub(crate) fn oct_secret_is_text(jwk: &Value) -> bool {
    jwk.get("kty").and_then(Value::as_str) == Some("oct")
        && b64url_field(jwk, "k").is_ok_and(|k| !crate::config::looks_random(&k))
}

/// One configured `keys[]` entry: exactly one of a secret, a PEM or a JWK.
/// A PEM needs `alg`, as it does not say which algorithm (one RSA key
/// serves RS* and PS* alike); a secret is HMAC only. Errors name the field
/// (`"alg"`, `"pem"`, …) for [`super::compile_provider`]'s path.
pub(crate) fn compile_key(raw: RawKey) -> Result<Key, (&'static str, String)> {
    let set = [
        raw.secret_base64.is_some(),
        raw.pem.is_some(),
        raw.jwk.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set != 1 {
        return Err((
            "",
            "give exactly one of `secret_base64`, `pem`, `jwk`".into(),
        ));
    }
    if let Some(secret) = raw.secret_base64 {
        let alg = raw.alg.unwrap_or(Alg::HS256);
        if !alg.is_hmac() {
            return Err((
                "alg",
                format!(
                    "{} is not an HMAC algorithm; use `pem` or `jwk`",
                    alg.name()
                ),
            ));
        }
        let bytes = decode_base64_any(&secret).ok_or((
            "secret_base64",
            "not valid base64 (standard or url-safe)".to_string(),
        ))?;
        let material = hmac_key(alg, &bytes).map_err(|e| ("secret_base64", e))?;
        return Ok(Key {
            kid: raw.kid,
            alg,
            material,
        });
    }
    if let Some(pem) = raw.pem {
        let alg = raw.alg.ok_or((
            "alg",
            "required with `pem` (the algorithm is fixed per key)".to_string(),
        ))?;
        let material = from_pem(alg, &pem).map_err(|e| ("pem", e))?;
        return Ok(Key {
            kid: raw.kid,
            alg,
            material,
        });
    }
    match raw.jwk {
        Some(jwk) => key_from_jwk(&jwk, raw.alg, raw.kid).map_err(|e| ("jwk", e)),
        None => Err(("", "no key material".into())),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    #[test]
    fn prepared_hmac_matches_jwt_simple_for_every_key_length() {
        for len in [32usize, 63, 64, 65, 100] {
            let secret: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let k = Hs256Secret::new(&secret);
            for msg in [&b""[..], b"a.b", &[0x61; 200]] {
                assert_eq!(
                    k.tag(msg).to_vec(),
                    HS256Key::from_bytes(&secret).authentication_tag(msg),
                    "len {len}"
                );
            }
        }
    }

    /// Every PEM form a user pastes parses for its own algorithm (RSA as
    /// SubjectPublicKeyInfo or PKCS #1, surrounding blank lines allowed),
    /// and a key of another type is refused with the algorithm named: the
    /// key's type, not the text's header, decides.
    #[test]
    fn pem_keys_parse_for_their_algorithm_only() {
        use super::super::tests::{EC_PUB, RSA_PUB};
        use ::rsa::pkcs1::EncodeRsaPublicKey;
        use ::rsa::pkcs8::DecodePublicKey;
        let pkcs1 = ::rsa::RsaPublicKey::from_public_key_pem(RSA_PUB)
            .unwrap()
            .to_pkcs1_pem(::rsa::pkcs8::LineEnding::LF)
            .unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        let es384 = ES384KeyPair::from_bytes(&[7u8; 48]).unwrap();
        let es384 = es384.public_key().to_pem().unwrap();
        let seed = ed25519_compact::Seed::new([9u8; 32]);
        let ed = ed25519_compact::KeyPair::from_seed(seed).pk.to_pem();
        let padded = format!("\n\n{EC_PUB}\n  \n");
        let good = [
            (Alg::RS256, RSA_PUB),
            (Alg::PS512, RSA_PUB),
            (Alg::RS256, pkcs1.as_str()),
            (Alg::ES256, EC_PUB),
            (Alg::ES256, padded.as_str()),
            (Alg::ES384, es384.as_str()),
            (Alg::EdDSA, ed.as_str()),
        ];
        for (alg, pem) in good {
            assert!(from_pem(alg, pem).is_ok(), "{alg:?} {pem}");
        }
        let wrong = [
            (Alg::RS256, EC_PUB),
            (Alg::ES256, RSA_PUB),
            (Alg::ES256, es384.as_str()),
            (Alg::ES384, EC_PUB),
            (Alg::EdDSA, EC_PUB),
            (Alg::ES256, pkcs1.as_str()),
            (
                Alg::RS256,
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            ),
        ];
        for (alg, pem) in wrong {
            let e = from_pem(alg, pem).err().unwrap();
            assert_eq!(e, format!("not a {} public key in PEM", alg.name()));
        }
        assert!(from_pem(Alg::HS256, EC_PUB)
            .unwrap_err()
            .contains("secret_base64"));
        // A private key is refused by name, even with its public key after
        // it.
        let private = ed25519_compact::KeyPair::from_seed(seed).sk.to_pem();
        for (alg, pem) in [
            (Alg::EdDSA, format!("{private}{ed}")),
            (Alg::ES256, format!("{EC_PUB}-----BEGIN PRIVATE KEY-----\n")),
            (
                Alg::RS256,
                "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n".to_string(),
            ),
        ] {
            assert!(
                from_pem(alg, &pem).unwrap_err().contains("private key"),
                "{alg:?}"
            );
        }
    }

    /// an RSA key outside the size and exponent rules
    /// is refused with the reason, as a PEM as it is as a JWK (README:
    /// "RSA 2048–4096 bits with an odd exponent below 2³²"), not as "not
    /// a RS256 public key in PEM", which sends the operator looking for a
    /// malformed file. The `rsa` crate's own checks (above 4096 bits, an
    /// even exponent) refuse it before ours can say why. The moduli are
    /// not real keys: only their size and parity are read.
    #[test]
    fn an_rsa_pem_outside_the_size_rules_says_why() {
        use ::rsa::pkcs1::EncodeRsaPublicKey as _;
        use ::rsa::pkcs8::EncodePublicKey as _;
        use ::rsa::BigUint;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let odd = |bytes: usize| {
            let mut n = vec![0xc5u8; bytes];
            n[bytes - 1] |= 1;
            n
        };
        for (n, e, why) in [
            (odd(1024), 65537u32, "8192 bits"),
            (odd(256), 65536, "not odd"),
        ] {
            let jwk = json!({"kty": "RSA", "n": b64(&n), "e": b64(&e.to_be_bytes())});
            let from_jwk = key_from_jwk(&jwk, None, None).unwrap_err();
            assert!(from_jwk.contains(why), "{from_jwk}");
            let key =
                ::rsa::RsaPublicKey::new_unchecked(BigUint::from_bytes_be(&n), BigUint::from(e));
            let lf = ::rsa::pkcs8::LineEnding::LF;
            for pem in [
                key.to_pkcs1_pem(lf).unwrap(),
                key.to_public_key_pem(lf).unwrap(),
            ] {
                let e = from_pem(Alg::RS256, &pem).err().unwrap();
                assert!(e.contains(why), "{e}");
            }
        }
    }

    /// One PEM block and nothing else, whatever the algorithm: text after
    /// `END` or a second block is refused, as the RSA and EC readers
    /// always did (Ed25519's own reader took the last public key of the
    /// text and ignored the rest), so that what loads is what the
    /// operator sees.
    #[test]
    fn a_pem_is_one_block_and_nothing_more() {
        use super::super::tests::{EC_PUB, RSA_PUB};
        let ed = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([9u8; 32]))
            .pk
            .to_pem();
        let other = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([3u8; 32]))
            .pk
            .to_pem();
        for (alg, pem) in [
            (Alg::RS256, RSA_PUB),
            (Alg::ES256, EC_PUB),
            (Alg::EdDSA, ed.as_str()),
        ] {
            assert!(from_pem(alg, pem).is_ok(), "{alg:?}");
            assert!(
                from_pem(alg, &format!("  {pem}\n\n")).is_ok(),
                "{alg:?} blank around"
            );
            // RFC 7468 §2: text before the block is allowed.
            assert!(
                from_pem(alg, &format!("prod key:\n{pem}")).is_ok(),
                "{alg:?} text before"
            );
            for bad in [
                format!("{pem}\nsee the wiki for the rotation\n"),
                format!("{pem}\n{pem}"),
                format!("{other}{pem}"),
            ] {
                assert_eq!(
                    from_pem(alg, &bad).err(),
                    Some(format!("not a {} public key in PEM", alg.name())),
                    "{alg:?} {bad}"
                );
            }
        }
    }

    /// An Ed25519 key no signature can verify under (the identity, a point
    /// of small order, a non-canonical encoding) is refused when it loads,
    /// as PEM or JWK, rather than refusing every token later.
    #[test]
    fn ed25519_keys_that_cannot_verify_are_refused() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // y = p (2^255 - 19), not canonical.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xed;
        non_canonical[31] = 0x7f;
        for x in [identity, [0u8; 32], non_canonical] {
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&x)});
            let e = key_from_jwk(&jwk, None, None).unwrap_err();
            assert!(e.contains("not a usable Ed25519"), "{e}");
            let mut der = vec![
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            der.extend_from_slice(&x);
            let pem = format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(&der)
            );
            let e = from_pem(Alg::EdDSA, &pem).err().unwrap();
            assert!(e.contains("not a usable Ed25519"), "{e}");
        }
        let seed = ed25519_compact::Seed::new([9u8; 32]);
        let good = ed25519_compact::KeyPair::from_seed(seed).pk;
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&good[..])});
        assert!(key_from_jwk(&jwk, None, None).is_ok());
    }

    #[test]
    fn base64_variants_decode_to_the_same_secret() {
        let raw: Vec<u8> = (0u8..40)
            .map(|i| i.wrapping_mul(37).wrapping_add(250))
            .collect();
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        assert_eq!(decode_base64_any(&STANDARD.encode(&raw)).unwrap(), raw);
        assert_eq!(
            decode_base64_any(&URL_SAFE_NO_PAD.encode(&raw)).unwrap(),
            raw
        );
        assert!(decode_base64_any("not base64!").is_none());
    }

    #[test]
    fn short_hmac_secrets_are_refused() {
        assert!(hmac_key(Alg::HS256, &[1; 31]).is_err());
        assert!(hmac_key(Alg::HS256, &[1; 32]).is_ok());
        assert!(hmac_key(Alg::HS512, &[1; 32]).is_err());
    }

    #[test]
    fn jwks_parsing() {
        let kp = ES256KeyPair::generate();
        let pk = kp.key_pair().public_key().to_bytes_uncompressed();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "e1", "x": b64(&pk[1..33]), "y": b64(&pk[33..65]), "use": "sig"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "h1", "alg": "HS256", "k": b64(&[7u8; 32])}
        ]});
        let keys = keys_from_jwks(&jwks, JwksOrigin::Fetched).unwrap();
        assert_eq!(keys.len(), 1, "the enc and oct keys are skipped");
        assert_eq!(
            (keys[0].kid.as_deref(), keys[0].alg),
            (Some("e1"), Alg::ES256)
        );
        assert!(
            keys_from_jwks(&jwks, JwksOrigin::Configured).is_err(),
            "strict mode refuses the enc key"
        );
        let private = json!({"kty": "EC", "crv": "P-256", "x": "", "y": "", "d": "secret"});
        assert!(key_from_jwk(&private, None, None)
            .unwrap_err()
            .contains("private"));
    }

    /// A JWK that carries any RSA private member (RFC
    /// 7518 §6.3.2: `d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`) is refused,
    /// not only one with `d` or `p`. `q` is the other prime (n / q = p, and
    /// then `d`), and `dp` or `dq` alone factor `n` too (gcd(m^(e·dp) − m,
    /// n) = p): a fetched JWKS holding one hands anyone who fetches it the
    /// issuer's private key, and its keys must not verify tokens, as an
    /// `oct` secret in a fetched set does not.
    #[test]
    fn rsa_jwk_with_any_private_member_is_refused() {
        use ::rsa::pkcs8::DecodePrivateKey;
        use ::rsa::traits::{PrivateKeyParts, PublicKeyParts};
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let private = ::rsa::RsaPrivateKey::from_pkcs8_pem(super::super::tests::RSA_PRIV).unwrap();
        let q = private.primes()[1].to_bytes_be();
        let n = private.n().to_bytes_be();
        let e = private.e().to_bytes_be();
        // The key a forger rebuilds from `n`, `e` and `q` alone signs
        // tokens the published key verifies.
        let p = private.n() / &private.primes()[1];
        let rebuilt =
            ::rsa::RsaPrivateKey::from_p_q(p, private.primes()[1].clone(), private.e().clone())
                .unwrap();
        assert_eq!(rebuilt.d(), private.d(), "q gives the private key away");
        for member in ["q", "dp", "dq", "qi", "oth"] {
            let mut jwk =
                json!({"kty": "RSA", "kid": "r1", "alg": "RS256", "n": b64(&n), "e": b64(&e)});
            jwk[member] = if member == "oth" {
                json!([])
            } else {
                json!(b64(&q))
            };
            let e = key_from_jwk(&jwk, None, None).err();
            assert!(
                e.as_deref().is_some_and(|e| e.contains("private")),
                "{member}: accepted ({e:?})"
            );
            let fetched = keys_from_jwks(&json!({"keys": [jwk]}), JwksOrigin::Fetched).unwrap();
            assert!(
                fetched.is_empty(),
                "{member}: a fetched key with it verifies tokens"
            );
        }
    }

    /// A fetched JWKS is public: an HMAC secret in it would let anyone who
    /// fetched it forge tokens, so only its asymmetric keys are kept. In
    /// the configuration an `oct` key is still accepted.
    #[test]
    fn fetched_jwks_skips_oct_keys() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let rsa = RS256KeyPair::from_pem(super::super::tests::RSA_PRIV).unwrap();
        let c = rsa.public_key().to_components();
        let oct = json!({"kty": "oct", "kid": "h1", "alg": "HS256", "k": b64(&[7u8; 32])});
        let oct_no_alg = json!({"kty": "oct", "kid": "h2", "k": b64(&[7u8; 32])});
        let rsa_jwk = json!({"kty": "RSA", "kid": "r1", "n": b64(&c.n), "e": b64(&c.e)});

        let mixed = json!({"keys": [oct.clone(), rsa_jwk]});
        let keys = keys_from_jwks(&mixed, JwksOrigin::Fetched).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (keys[0].kid.as_deref(), keys[0].alg),
            (Some("r1"), Alg::RS256)
        );

        let only_oct = json!({"keys": [oct.clone(), oct_no_alg]});
        assert!(keys_from_jwks(&only_oct, JwksOrigin::Fetched)
            .unwrap()
            .is_empty());

        let configured = keys_from_jwks(&json!({"keys": [oct]}), JwksOrigin::Configured).unwrap();
        assert_eq!(
            (configured[0].kid.as_deref(), configured[0].alg),
            (Some("h1"), Alg::HS256)
        );
    }

    /// One key written two ways (base64 with and without padding, a JWK
    /// under another `kid`) has one digest, another key another; and a
    /// digest's `Debug` (in a provider's) prints none of its bytes.
    #[test]
    fn a_key_digest_tells_keys_apart_and_shows_nothing() {
        let raw = |v: serde_json::Value| -> RawKey { serde_json::from_value(v).unwrap() };
        let a = raw(
            serde_json::json!({"alg": "HS256", "secret_base64": "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ=="}),
        );
        let a2 = raw(
            serde_json::json!({"alg": "HS256", "secret_base64": "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ"}),
        );
        let b = raw(
            serde_json::json!({"alg": "HS256", "secret_base64": "b3RoZXIta2V5LWZvci10ZXN0cy0wMTIzNDU2Nzg5"}),
        );
        assert_eq!(a.fingerprint(), a2.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let jwk = |kid: &str| serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": "AA", "y": "BB"});
        assert_eq!(jwk_fingerprint(&jwk("1")), jwk_fingerprint(&jwk("2")));
        assert_eq!(format!("{:?}", a.fingerprint()), "KeyDigest(..)");
    }

    /// A JWK whose own `alg` is not the one the
    /// configuration (or the JWKS entry) asks for is refused, for RSA (PS256
    /// published, RS256 asked) and HMAC: RFC 8725 §3.1, a key is used with
    /// its one algorithm. No test gave a disagreeing pair, so the check
    /// could go with the suite passing.
    #[test]
    fn a_jwk_whose_alg_disagrees_with_the_one_asked_for_is_refused() {
        use ::rsa::pkcs8::DecodePrivateKey;
        use ::rsa::traits::PublicKeyParts;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let private = ::rsa::RsaPrivateKey::from_pkcs8_pem(super::super::tests::RSA_PRIV).unwrap();
        let n = b64(&private.n().to_bytes_be());
        let e = b64(&private.e().to_bytes_be());
        let rsa = json!({"kty": "RSA", "alg": "PS256", "n": n, "e": e});
        assert!(key_from_jwk(&rsa, Some(Alg::PS256), None).is_ok());
        let err = key_from_jwk(&rsa, Some(Alg::RS256), None).err();
        assert!(
            err.as_deref().is_some_and(|m| m.contains("disagrees")),
            "{err:?}"
        );
        let oct = json!({"kty": "oct", "alg": "HS512", "k": b64(&[7u8; 64])});
        assert!(key_from_jwk(&oct, Some(Alg::HS512), None).is_ok());
        assert!(key_from_jwk(&oct, Some(Alg::HS256), None).is_err());
    }
}
