//! `fingerprint`: Android signing-certificate fingerprints in the form
//! `apps[].cert_fingerprints` accepts, colon-separated upper-case hex, as
//! `keytool -printcert` and `openssl x509 -fingerprint` print them.

use sha2::{Digest as _, Sha256};

use crate::error::CliError;
use crate::pem;

/// The fingerprints of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprints {
    /// SHA-256 of the DER certificate: what `cert_fingerprints` should hold.
    pub sha256: String,
    /// SHA-1 of the DER certificate: accepted for Google API-key
    /// compatibility, weaker.
    pub sha1: String,
}

/// Bytes as colon-separated upper-case hex: `14:6D:E9:…`.
pub fn colon_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Fingerprints of a DER X.509 certificate. Only the outer shape is checked
/// (one DER SEQUENCE, nothing after it): the fingerprint is a hash of the
/// bytes, whatever they hold.
pub fn of_der(der: &[u8]) -> Result<Fingerprints, CliError> {
    pem::check_sequence(der)
        .map_err(|m| CliError::invalid(format!("not a DER certificate: {m}")))?;
    let sha256 = colon_hex(&Sha256::digest(der));
    let sha1 = colon_hex(&hmac_sha1_compact::Hash::hash(der));
    // The filter's parser must read back what we print.
    for fp in [&sha256, &sha1] {
        if appguard::identity::parse_fingerprint(fp).is_none() {
            return Err(CliError::invalid(format!(
                "internal: the filter does not accept {fp}"
            )));
        }
    }
    Ok(Fingerprints { sha256, sha1 })
}

/// Fingerprints of the first `CERTIFICATE` block of a PEM file (blocks of
/// other kinds, such as keys, are skipped).
pub fn of_pem(text: &str) -> Result<Fingerprints, CliError> {
    let blocks = pem::parse(text).map_err(CliError::invalid)?;
    let cert = blocks
        .iter()
        .find(|b| b.label == "CERTIFICATE")
        .ok_or_else(|| {
            CliError::invalid(
                "no `-----BEGIN CERTIFICATE-----` block (for a binary certificate use --der)",
            )
        })?;
    of_der(&cert.der)
}

/// Normalises a fingerprint given as hex (colons optional, any case; 32
/// bytes for SHA-256 or 20 for SHA-1), after checking it with the filter's
/// own [`appguard::identity::parse_fingerprint`].
pub fn normalise(hex: &str) -> Result<String, CliError> {
    let hex = hex.trim();
    appguard::identity::parse_fingerprint(hex)
        .map(|bytes| colon_hex(&bytes))
        .ok_or_else(|| {
            CliError::invalid(format!(
                "{hex:?} is not a certificate fingerprint: 64 hex digits (SHA-256) or 40 (SHA-1), colons optional"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_any_case_and_colons() {
        let want = "14:6D:E9:83:C5:73:06:50:D8:EE:B9:95:2F:34:FC:64:16:A0:83:42:E6:1D:BE:A8:8A:04:96:B2:3F:CF:44:E5";
        assert_eq!(normalise(&want.to_lowercase()).unwrap(), want);
        assert_eq!(normalise(&want.replace(':', "")).unwrap(), want);
        assert_eq!(
            normalise("da39a3ee5e6b4b0d3255bfef95601890afd80709").unwrap(),
            "DA:39:A3:EE:5E:6B:4B:0D:32:55:BF:EF:95:60:18:90:AF:D8:07:09"
        );
        assert!(normalise("14:6D").is_err());
        assert!(normalise(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn der_is_hashed_whole() {
        // SHA-256 and SHA-1 of the 2-byte input 30 00.
        let fp = of_der(&[0x30, 0x00]).unwrap();
        assert_eq!(fp.sha256.len(), 32 * 3 - 1);
        assert_eq!(fp.sha1.len(), 20 * 3 - 1);
        assert!(of_der(b"-----BEGIN CERTIFICATE-----").is_err());
    }
}
