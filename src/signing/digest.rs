//! `Content-Digest` (RFC 9530 §2): the digest of the message content that a
//! signature covers in place of the body itself.
//!
//! Only the algorithms RFC 9530 §5 registers as "Active" are computed,
//! `sha-256` and `sha-512`; the deprecated ones (`md5`, `sha`, `unixsum`, ...)
//! are ignored as §2 allows, so that a digest made only of them never counts
//! as verified. At most one pass of each hash runs over the body, whatever the
//! field holds (RFC 9530 §6.7, resource exhaustion).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256, Sha512};

use super::sfv::{self, BareItem, Limits, Member};
use super::SigningError;

/// The largest `Content-Digest` value read, in bytes. A sha-512 member is 99
/// bytes, so this leaves room for a handful of algorithms.
pub const MAX_CONTENT_DIGEST_BYTES: usize = 1024;

/// Caps on parsing a `Content-Digest` Dictionary: a few members, no Inner
/// Lists (each member is a Byte Sequence), a few parameters, so that a
/// hostile field costs bounded work (RFC 9530 §6.7).
const DIGEST_LIMITS: Limits = Limits {
    max_members: 8,
    max_inner_items: 0,
    max_params: 4,
};

/// A hash algorithm from the "Hash Algorithms for HTTP Digest Fields"
/// registry (RFC 9530 §7.2) that appguard computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// `sha-256` (RFC 9530 §7.2, Active).
    Sha256,
    /// `sha-512` (RFC 9530 §7.2, Active).
    Sha512,
}

impl DigestAlgorithm {
    /// The Dictionary key naming the algorithm in the field.
    pub fn key(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha-256",
            DigestAlgorithm::Sha512 => "sha-512",
        }
    }

    /// The algorithm a member's key names; `None` for any other, such as the
    /// deprecated `md5` or `sha`, which are ignored (RFC 9530 §2) and never
    /// count as verifying the body.
    fn from_key(key: &str) -> Option<Self> {
        match key {
            "sha-256" => Some(DigestAlgorithm::Sha256),
            "sha-512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }

    /// The body's digest under this algorithm: one pass of the hash.
    fn digest(self, body: &[u8]) -> Vec<u8> {
        match self {
            DigestAlgorithm::Sha256 => Sha256::digest(body).to_vec(),
            DigestAlgorithm::Sha512 => Sha512::digest(body).to_vec(),
        }
    }
}

/// The `Content-Digest` field value for `body` with one algorithm, e.g.
/// `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:` (RFC 9530 §2).
pub fn content_digest_value(algorithm: DigestAlgorithm, body: &[u8]) -> String {
    format!(
        "{}=:{}:",
        algorithm.key(),
        STANDARD.encode(algorithm.digest(body))
    )
}

/// Checks a `Content-Digest` field value against the body.
///
/// Every `sha-256` / `sha-512` member must match; other members are ignored.
/// A field with no member appguard can compute is
/// [`SigningError::DigestUnsupported`]: an unverifiable digest is no
/// evidence about the body. Returns the strongest algorithm that matched.
pub fn verify_content_digest(value: &str, body: &[u8]) -> Result<DigestAlgorithm, SigningError> {
    if value.len() > MAX_CONTENT_DIGEST_BYTES {
        return Err(SigningError::HeaderTooLarge {
            field: "content-digest",
        });
    }
    let dict =
        sfv::parse_dictionary(value, &DIGEST_LIMITS).map_err(|e| SigningError::Malformed {
            field: "content-digest",
            reason: e.0,
        })?;
    let mut strongest: Option<DigestAlgorithm> = None;
    for (key, member) in &dict {
        let Some(algorithm) = DigestAlgorithm::from_key(key) else {
            continue;
        };
        let expected = match member {
            Member::Item(item) => match &item.bare {
                BareItem::ByteSeq(bytes) => bytes,
                _ => {
                    return Err(SigningError::Malformed {
                        field: "content-digest",
                        reason: "digest is not a byte sequence",
                    })
                }
            },
            Member::InnerList(_) => {
                return Err(SigningError::Malformed {
                    field: "content-digest",
                    reason: "digest is not a byte sequence",
                })
            }
        };
        if !constant_time_eq(&algorithm.digest(body), expected) {
            return Err(SigningError::DigestMismatch);
        }
        strongest = match (strongest, algorithm) {
            (Some(DigestAlgorithm::Sha512), _) | (_, DigestAlgorithm::Sha512) => {
                Some(DigestAlgorithm::Sha512)
            }
            _ => Some(DigestAlgorithm::Sha256),
        };
    }
    strongest.ok_or(SigningError::DigestUnsupported)
}

/// Equality without an early exit. Digests are not secret, but this costs
/// nothing and keeps timing out of the picture.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// RFC 9530 Appendix D ("Sample Digest Values"): the digests of the JSON
    /// object `{"hello": "world"}` (no trailing newline).
    const HELLO: &[u8] = br#"{"hello": "world"}"#;
    const HELLO_SHA256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
    const HELLO_SHA512: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    #[test]
    fn rfc9530_appendix_d_sample_values() {
        assert_eq!(
            content_digest_value(DigestAlgorithm::Sha256, HELLO),
            HELLO_SHA256
        );
        assert_eq!(
            content_digest_value(DigestAlgorithm::Sha512, HELLO),
            HELLO_SHA512
        );
        assert_eq!(
            verify_content_digest(HELLO_SHA256, HELLO),
            Ok(DigestAlgorithm::Sha256)
        );
        assert_eq!(
            verify_content_digest(HELLO_SHA512, HELLO),
            Ok(DigestAlgorithm::Sha512)
        );
        let both = format!("{HELLO_SHA256}, {HELLO_SHA512}");
        assert_eq!(
            verify_content_digest(&both, HELLO),
            Ok(DigestAlgorithm::Sha512)
        );
    }

    #[test]
    fn rfc9530_appendix_b1_full_representation() {
        // RFC 9530 Appendix B.1: `{"hello": "world"}` followed by an LF.
        let body = b"{\"hello\": \"world\"}\n";
        let value = "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:";
        assert_eq!(content_digest_value(DigestAlgorithm::Sha256, body), value);
        assert_eq!(
            verify_content_digest(value, body),
            Ok(DigestAlgorithm::Sha256)
        );
        assert_eq!(
            verify_content_digest(value, HELLO),
            Err(SigningError::DigestMismatch)
        );
    }

    #[test]
    fn every_supported_member_must_match() {
        let bad512 = content_digest_value(DigestAlgorithm::Sha512, b"other");
        let v = format!("{HELLO_SHA256}, {bad512}");
        assert_eq!(
            verify_content_digest(&v, HELLO),
            Err(SigningError::DigestMismatch)
        );
        // Deprecated algorithms are ignored, not trusted.
        let md5_only = "md5=:Sd/dVLAcvNLSq16eXua5uQ==:";
        assert_eq!(
            verify_content_digest(md5_only, HELLO),
            Err(SigningError::DigestUnsupported)
        );
        let with_md5 = format!("md5=:AAAA:, {HELLO_SHA256}");
        assert_eq!(
            verify_content_digest(&with_md5, HELLO),
            Ok(DigestAlgorithm::Sha256)
        );
    }

    #[test]
    fn malformed_and_oversized() {
        assert!(matches!(
            verify_content_digest("sha-256=X48E", HELLO),
            Err(SigningError::Malformed { .. })
        ));
        assert!(matches!(
            verify_content_digest("sha-256=(:AAAA:)", HELLO),
            Err(SigningError::Malformed { .. })
        ));
        assert!(matches!(
            verify_content_digest("sha-256=:AAAA:, sha-256=:AAAA:", HELLO),
            Err(SigningError::Malformed { .. })
        ));
        let huge = format!("{HELLO_SHA256}, x={}", "1".repeat(MAX_CONTENT_DIGEST_BYTES));
        assert_eq!(
            verify_content_digest(&huge, HELLO),
            Err(SigningError::HeaderTooLarge {
                field: "content-digest"
            })
        );
        // A truncated digest is simply wrong.
        assert_eq!(
            verify_content_digest("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9D:", HELLO),
            Err(SigningError::DigestMismatch)
        );
    }
}
