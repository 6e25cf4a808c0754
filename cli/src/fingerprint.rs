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

/// Fingerprints of a DER X.509 certificate. The certificate's shape is
/// checked (RFC 5280 §4.1: a SEQUENCE of tbsCertificate, signatureAlgorithm
/// and a BIT STRING, nothing after it; tbsCertificate starting with an
/// optional `[0]` version and an INTEGER serial number): a keystore, a
/// PKCS#7 bundle or a key is also one DER SEQUENCE, and its hash would be a
/// plausible but wrong fingerprint. Those are refused with a hint.
pub fn of_der(der: &[u8]) -> Result<Fingerprints, CliError> {
    if certificate_shape(der).is_none() {
        return Err(CliError::invalid(format!(
            "not a DER certificate: {}",
            not_a_certificate(der)
        )));
    }
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

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OBJECT_IDENTIFIER: u8 = 0x06;
/// `[0] EXPLICIT`, the tbsCertificate's version.
const VERSION: u8 = 0xa0;
/// 1.2.840.113549.1.7.2, PKCS#7 signedData (an APK's `META-INF/CERT.RSA`).
const PKCS7_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];

/// `Some` when `der` has the shape of an X.509 certificate.
fn certificate_shape(der: &[u8]) -> Option<()> {
    let tagged = |input, tag| {
        pem::element(input)
            .ok()
            .filter(|(e, _)| e.tag == tag)
            .map(|(e, rest)| (e.content, rest))
    };
    let (cert, rest) = tagged(der, SEQUENCE)?;
    let (tbs, rest_of_cert) = tagged(cert, SEQUENCE)?;
    let (_algorithm, rest_of_cert) = tagged(rest_of_cert, SEQUENCE)?;
    let (_signature, after) = tagged(rest_of_cert, BIT_STRING)?;
    if !rest.is_empty() || !after.is_empty() {
        return None;
    }
    let tbs = tagged(tbs, VERSION).map_or(tbs, |(_, rest)| rest);
    let (_serial, tbs) = tagged(tbs, INTEGER)?;
    // tbsCertificate.signature, an AlgorithmIdentifier.
    tagged(tbs, SEQUENCE).map(|_| ())
}

/// What `der` (not a certificate) looks like, with what to do instead.
fn not_a_certificate(der: &[u8]) -> String {
    if der.starts_with(b"-----BEGIN") {
        return "this is PEM text: use --pem".into();
    }
    if der.starts_with(&[0xfe, 0xed, 0xfe, 0xed]) || der.starts_with(&[0xce, 0xce, 0xce, 0xce]) {
        return "this is a JKS keystore, not a certificate: export the certificate with \
                `keytool -exportcert -rfc -alias ALIAS -keystore FILE > signer.pem` and use \
                --pem (or read it with `keytool -list -v -keystore FILE`)"
            .into();
    }
    let generic = "its shape is not an X.509 certificate's (SEQUENCE { tbsCertificate, \
                   signatureAlgorithm, signature BIT STRING })"
        .to_owned();
    // The outer SEQUENCE's content; PKCS#12 files from some tools use a BER
    // indefinite length.
    let content = match der {
        [SEQUENCE, 0x80, rest @ ..] => rest,
        _ => match pem::element(der) {
            Ok((e, _)) if e.tag == SEQUENCE => e.content,
            Ok(_) => return generic,
            Err(m) => return m,
        },
    };
    let Ok((first, after)) = pem::element(content) else {
        return generic;
    };
    let second = pem::element(after).ok();
    match (first.tag, first.content) {
        (OBJECT_IDENTIFIER, PKCS7_SIGNED_DATA) => {
            "this is a PKCS#7 bundle (such as an APK's META-INF/CERT.RSA), not a \
             certificate: print its signer's fingerprint with `keytool -printcert -file FILE`, \
             or extract the certificate with `openssl pkcs7 -inform DER -in FILE -print_certs \
             > signer.pem` and use --pem"
                .into()
        }
        (INTEGER, [3]) if second.is_some_and(|(e, _)| e.tag == SEQUENCE) => {
            "this is a PKCS#12 keystore (what `keytool -genkeypair` writes), not a \
             certificate: export the certificate with `keytool -exportcert -rfc -alias ALIAS \
             -keystore FILE > signer.pem` and use --pem (or read it with `keytool -list -v \
             -keystore FILE`)"
                .into()
        }
        (INTEGER, [0] | [1]) => "this is a private key, not a certificate: give the \
             signing certificate instead (`keytool -exportcert -rfc`, then --pem)"
            .into(),
        (SEQUENCE, _) if second.is_some_and(|(e, rest)| e.tag == BIT_STRING && rest.is_empty()) => {
            "this is a public key, not a certificate: the fingerprint is of the whole \
             signing certificate (`keytool -exportcert -rfc`, then --pem)"
                .into()
        }
        _ => generic,
    }
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
    if certificate_shape(&cert.der).is_none() {
        return Err(CliError::invalid(format!(
            "the CERTIFICATE block is not a certificate: {}",
            not_a_certificate(&cert.der)
        )));
    }
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
        // The smallest certificate shape: SEQUENCE { SEQUENCE { [0] { INTEGER 2 },
        // INTEGER 1, SEQUENCE {} }, SEQUENCE {}, BIT STRING { 0 } }.
        let cert = [
            0x30, 0x11, 0x30, 0x0a, 0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01, 0x30, 0x00,
            0x30, 0x00, 0x03, 0x01, 0x00,
        ];
        // ... is hashed whole.
        let fp = of_der(&cert).unwrap();
        assert_eq!(fp.sha256, colon_hex(&Sha256::digest(cert)));
        assert_eq!(fp.sha1.len(), 20 * 3 - 1);
        // Without the version, too.
        let no_version = [
            0x30, 0x0c, 0x30, 0x05, 0x02, 0x01, 0x01, 0x30, 0x00, 0x30, 0x00, 0x03, 0x01, 0x00,
        ];
        assert!(of_der(&no_version[..]).is_ok());
        // A bare SEQUENCE, trailing bytes, a missing BIT STRING: refused.
        assert!(of_der(&[0x30, 0x00]).is_err());
        let mut trailing = cert.to_vec();
        trailing.push(0);
        assert!(of_der(&trailing).is_err());
        assert!(of_der(&cert[..16]).is_err());
        assert!(of_der(b"-----BEGIN CERTIFICATE-----").is_err());
    }

    #[test]
    fn not_a_certificate_says_what_it_is() {
        let e = |der: &[u8]| of_der(der).unwrap_err().to_string();
        // ContentInfo { OID signedData, [0] {} }
        let mut p7 = vec![0x30, 0x0d, 0x06, 0x09];
        p7.extend_from_slice(PKCS7_SIGNED_DATA);
        p7.extend_from_slice(&[0xa0, 0x00]);
        assert!(e(&p7).contains("keytool -printcert -file"), "{}", e(&p7));
        // PFX { INTEGER 3, SEQUENCE {} }, definite and BER indefinite.
        let p12 = [0x30, 0x05, 0x02, 0x01, 0x03, 0x30, 0x00];
        assert!(e(&p12).contains("PKCS#12"), "{}", e(&p12));
        let p12 = [0x30, 0x80, 0x02, 0x01, 0x03, 0x30, 0x00, 0x00, 0x00];
        assert!(e(&p12).contains("PKCS#12"), "{}", e(&p12));
        // PrivateKeyInfo { INTEGER 0, SEQUENCE {}, OCTET STRING {} }
        let pk8 = [0x30, 0x07, 0x02, 0x01, 0x00, 0x30, 0x00, 0x04, 0x00];
        assert!(e(&pk8).contains("private key"), "{}", e(&pk8));
        // SubjectPublicKeyInfo { SEQUENCE {}, BIT STRING { 0 } }
        let spki = [0x30, 0x05, 0x30, 0x00, 0x03, 0x01, 0x00];
        assert!(e(&spki).contains("public key"), "{}", e(&spki));
        assert!(e(&[0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2]).contains("JKS"));
    }
}
