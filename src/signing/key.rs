//! The install key: the public key an attestation token carries (Approov
//! `ipk`) and, for the operator CLI, its private half.
//!
//! The algorithm is fixed by the key type, never read from the request
//! (RFC 9421 §3.2 step 6 and §7.3.6, "key and algorithm specification
//! downgrades"): a P-256 key verifies `ecdsa-p256-sha256` only and an Ed25519
//! key `ed25519` only.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::der::asn1::OctetStringRef;
use p256::pkcs8::der::Decode as _;
use p256::pkcs8::{DecodePrivateKey as _, PrivateKeyInfo, SubjectPublicKeyInfoRef};

use super::SigningError;

/// The longest `ipk` claim read. A P-256 SPKI in base64 is 124 characters and
/// an Ed25519 one 60; anything much longer is not a key we accept.
pub const MAX_IPK_CHARS: usize = 256;

/// DER content of OID 1.2.840.10045.2.1, id-ecPublicKey (RFC 5480 §2.1.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER content of OID 1.2.840.10045.3.1.7, secp256r1 (RFC 5480 §2.1.1.1).
const OID_SECP256R1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER content of OID 1.3.101.112, id-Ed25519 (RFC 8410 §3).
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// The SubjectPublicKeyInfo header of an uncompressed P-256 key (RFC 5480),
/// followed by the 65-byte SEC1 point.
const SPKI_P256_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// The SubjectPublicKeyInfo header of an Ed25519 key (RFC 8410 §4), followed
/// by the 32-byte key.
const SPKI_ED25519_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// `ipk` claims come in both base64 alphabets, padded or not.
const B64_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// The URL-safe alphabet, padding optional: the other alphabet `ipk` claims
/// come in, chosen when the claim holds `-` or `_`.
const B64_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An algorithm from the HTTP Signature Algorithms registry (RFC 9421 §6.2.2)
/// that appguard verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// `ecdsa-p256-sha256` (RFC 9421 §3.3.4): ECDSA over P-256 on the
    /// SHA-256 of the signature base, signature `r || s`, 64 bytes.
    EcdsaP256Sha256,
    /// `ed25519` (RFC 9421 §3.3.6): Ed25519 (RFC 8032) on the signature base
    /// itself, signature 64 bytes.
    Ed25519,
}

impl SignatureAlgorithm {
    /// The registry name, as it appears in the `alg` parameter.
    pub fn name(self) -> &'static str {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            SignatureAlgorithm::Ed25519 => "ed25519",
        }
    }
}

impl std::fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An install's public key, as carried by the attestation token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallKey {
    /// A P-256 key: verifies `ecdsa-p256-sha256`.
    P256(p256::ecdsa::VerifyingKey),
    /// An Ed25519 key (already checked to be a canonical point of large
    /// order): verifies `ed25519`.
    Ed25519(ed25519_compact::PublicKey),
}

impl InstallKey {
    /// Parses the `ipk` claim: base64 (standard or URL-safe alphabet, padding
    /// optional) of a DER SubjectPublicKeyInfo whose algorithm OID says P-256
    /// (id-ecPublicKey with secp256r1, RFC 5480) or Ed25519 (RFC 8410).
    /// Anything else, including other curves and RSA, is refused.
    pub fn from_ipk(claim: &str) -> Result<Self, SigningError> {
        let claim = claim.trim();
        if claim.is_empty() || claim.len() > MAX_IPK_CHARS {
            return Err(SigningError::InvalidKey);
        }
        let url_safe = claim.bytes().any(|c| c == b'-' || c == b'_');
        let der = if url_safe {
            B64_URL_SAFE.decode(claim)
        } else {
            B64_STANDARD.decode(claim)
        }
        .map_err(|_| SigningError::InvalidKey)?;
        Self::from_spki_der(&der)
    }

    /// Parses a DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7), choosing the
    /// algorithm from its OID. Trailing bytes and non-DER encodings are
    /// refused by the `der` crate.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, SigningError> {
        let spki = SubjectPublicKeyInfoRef::try_from(der).map_err(|_| SigningError::InvalidKey)?;
        let algorithm = spki.algorithm.oid.as_bytes();
        let key_bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or(SigningError::InvalidKey)?;
        if algorithm == OID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters_oid()
                .map_err(|_| SigningError::UnsupportedKey)?;
            if curve.as_bytes() != OID_SECP256R1 {
                return Err(SigningError::UnsupportedKey);
            }
            p256::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
                .map(InstallKey::P256)
                .map_err(|_| SigningError::InvalidKey)
        } else if algorithm == OID_ED25519 {
            // RFC 8410 §3: the parameters MUST be absent.
            if spki.algorithm.parameters.is_some() {
                return Err(SigningError::InvalidKey);
            }
            let key = ed25519_compact::PublicKey::from_slice(key_bytes)
                .map_err(|_| SigningError::InvalidKey)?;
            key.validate().map_err(|_| SigningError::InvalidKey)?;
            Ok(InstallKey::Ed25519(key))
        } else {
            Err(SigningError::UnsupportedKey)
        }
    }

    /// The only algorithm this key verifies.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            InstallKey::P256(_) => SignatureAlgorithm::EcdsaP256Sha256,
            InstallKey::Ed25519(_) => SignatureAlgorithm::Ed25519,
        }
    }

    /// The key as DER SubjectPublicKeyInfo (P-256 uncompressed).
    pub fn to_spki_der(&self) -> Vec<u8> {
        match self {
            InstallKey::P256(key) => {
                let point = key.to_encoded_point(false);
                [SPKI_P256_PREFIX, point.as_bytes()].concat()
            }
            InstallKey::Ed25519(key) => [SPKI_ED25519_PREFIX, key.as_ref()].concat(),
        }
    }

    /// The key as an `ipk` claim value: base64 (standard alphabet, padded) of
    /// the SPKI, the form [`InstallKey::from_ipk`] reads.
    pub fn to_ipk(&self) -> String {
        STANDARD.encode(self.to_spki_der())
    }

    /// Verifies a raw signature over a signature base (RFC 9421 §3.3.4 and
    /// §3.3.6, `HTTP_VERIFY`).
    ///
    /// ECDSA: `signature` is `r || s`, each 32 bytes big-endian; `r` and `s`
    /// must be in `[1, n)`. Both `s` and `n - s` are accepted, as FIPS 186-4
    /// ECDSA (which RFC 9421 §3.3.4 names) and the `p256` crate do. RFC 9421
    /// sets no low-S rule (its own Appendix B.2.4 signature has a high `s`),
    /// and Android Keystore and the iOS Secure Enclave do not normalise `s`,
    /// so requiring low-S would refuse about half of genuine signatures. The
    /// resulting malleability (a second valid signature over the same base)
    /// gives an attacker nothing new, as long as replay detection is never
    /// keyed on the signature bytes.
    ///
    /// Ed25519: RFC 8032 §5.1.7 with the strict checks `ed25519-compact`
    /// makes (canonical `S`, no small-order `R` or key).
    pub fn verify(&self, base: &[u8], signature: &[u8]) -> Result<(), SigningError> {
        if signature.len() != 64 {
            return Err(SigningError::BadSignature);
        }
        match self {
            // Verified by `token::ecdsa` (variable-time, public data only;
            // several times faster in V8 than the `p256` crate's
            // constant-time code, which stays for parsing and signing).
            InstallKey::P256(key) => {
                if crate::token::ecdsa::verify_once(
                    key.to_encoded_point(false).as_bytes(),
                    base,
                    signature,
                ) {
                    Ok(())
                } else {
                    Err(SigningError::BadSignature)
                }
            }
            InstallKey::Ed25519(key) => {
                let sig = ed25519_compact::Signature::from_slice(signature)
                    .map_err(|_| SigningError::BadSignature)?;
                key.verify(base, &sig)
                    .map_err(|_| SigningError::BadSignature)
            }
        }
    }
}

/// The private half of an install key, for signing requests: the operator
/// CLI's `mint`, and tests. The filter itself never signs.
#[derive(Clone)]
pub enum InstallSigningKey {
    /// A P-256 private key: signs `ecdsa-p256-sha256`.
    P256(p256::ecdsa::SigningKey),
    /// An Ed25519 key pair: signs `ed25519`.
    Ed25519(ed25519_compact::KeyPair),
}

impl std::fmt::Debug for InstallSigningKey {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InstallSigningKey({})", self.algorithm())
    }
}

impl InstallSigningKey {
    /// A P-256 key from its 32-byte big-endian secret scalar (JWK `d`).
    /// Fails when the bytes are zero or not below the group order, so a CLI
    /// generating a key from 32 random bytes retries on error.
    pub fn p256_from_bytes(secret: &[u8]) -> Result<Self, SigningError> {
        p256::ecdsa::SigningKey::from_slice(secret)
            .map(InstallSigningKey::P256)
            .map_err(|_| SigningError::InvalidKey)
    }

    /// An Ed25519 key from its 32-byte seed (RFC 8032 §5.1.5, JWK `d`).
    pub fn ed25519_from_seed(seed: &[u8]) -> Result<Self, SigningError> {
        let seed = ed25519_compact::Seed::from_slice(seed).map_err(|_| SigningError::InvalidKey)?;
        Ok(InstallSigningKey::Ed25519(
            ed25519_compact::KeyPair::from_seed(seed),
        ))
    }

    /// A key from an unencrypted PKCS#8 `PrivateKeyInfo` (RFC 5208 / RFC
    /// 5958), as `openssl genpkey` writes: P-256 (RFC 5915 inside) or Ed25519
    /// (RFC 8410 §7).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, SigningError> {
        let info = PrivateKeyInfo::try_from(der).map_err(|_| SigningError::InvalidKey)?;
        let algorithm = info.algorithm.oid.as_bytes();
        if algorithm == OID_EC_PUBLIC_KEY {
            p256::ecdsa::SigningKey::from_pkcs8_der(der)
                .map(InstallSigningKey::P256)
                .map_err(|_| SigningError::UnsupportedKey)
        } else if algorithm == OID_ED25519 {
            if info.algorithm.parameters.is_some() {
                return Err(SigningError::InvalidKey);
            }
            // CurvePrivateKey ::= OCTET STRING, inside the privateKey OCTET STRING.
            let seed =
                OctetStringRef::from_der(info.private_key).map_err(|_| SigningError::InvalidKey)?;
            let key = Self::ed25519_from_seed(seed.as_bytes())?;
            if let (Some(public), InstallSigningKey::Ed25519(pair)) = (info.public_key, &key) {
                if public != pair.pk.as_ref() {
                    return Err(SigningError::InvalidKey);
                }
            }
            Ok(key)
        } else {
            Err(SigningError::UnsupportedKey)
        }
    }

    /// The public half, for the token's `ipk` claim.
    pub fn public_key(&self) -> InstallKey {
        match self {
            InstallSigningKey::P256(key) => InstallKey::P256(*key.verifying_key()),
            InstallSigningKey::Ed25519(pair) => InstallKey::Ed25519(pair.pk),
        }
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            InstallSigningKey::P256(_) => SignatureAlgorithm::EcdsaP256Sha256,
            InstallSigningKey::Ed25519(_) => SignatureAlgorithm::Ed25519,
        }
    }

    /// Signs a signature base (RFC 9421 §3.3.4 / §3.3.6, `HTTP_SIGN`),
    /// returning the 64 raw signature bytes. ECDSA nonces are deterministic
    /// (RFC 6979) and `s` is normalised to the low half, which every verifier
    /// accepts; Ed25519 is deterministic by construction (RFC 8032).
    pub fn sign(&self, base: &[u8]) -> Result<[u8; 64], SigningError> {
        match self {
            InstallSigningKey::P256(key) => {
                let sig: p256::ecdsa::Signature =
                    key.try_sign(base).map_err(|_| SigningError::InvalidKey)?;
                let sig = sig.normalize_s().unwrap_or(sig);
                let mut out = [0u8; 64];
                for (o, b) in out.iter_mut().zip(sig.to_bytes().iter()) {
                    *o = *b;
                }
                Ok(out)
            }
            InstallSigningKey::Ed25519(pair) => Ok(*pair.sk.sign(base, None)),
        }
    }
}
