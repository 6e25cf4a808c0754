//! Install keys for request signing (RFC 9421): generating a key pair,
//! writing and reading its private half as PKCS#8 PEM, and reading the
//! public half from any of the forms an operator has at hand.

use std::io::Write as _;
use std::path::Path;

use appguard::signing::{InstallKey, InstallSigningKey};

use crate::error::{read_text, CliError};
use crate::pem;

/// The curve of a generated install key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA P-256 (`ecdsa-p256-sha256`): what Android Keystore and the iOS
    /// Secure Enclave hold.
    P256,
    /// Ed25519 (`ed25519`).
    Ed25519,
}

/// PKCS#8 `PrivateKeyInfo` (RFC 5958) of a P-256 key, up to the 32-byte
/// secret: version 0, id-ecPublicKey with secp256r1, then an RFC 5915
/// `ECPrivateKey` (version 1, the secret, and `[1]` the public point that
/// follows in [`P256_PUBLIC_PREFIX`]). The layout `openssl genpkey` writes.
const P256_PKCS8_PREFIX: &[u8] = &[
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02,
    0x01, 0x01, 0x04, 0x20,
];
/// `[1] BIT STRING` header of the uncompressed public point (65 bytes).
const P256_PUBLIC_PREFIX: &[u8] = &[0xa1, 0x44, 0x03, 0x42, 0x00];
/// PKCS#8 of an Ed25519 key up to the 32-byte seed (RFC 8410 §7).
const ED25519_PKCS8_PREFIX: &[u8] = &[
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// 32 bytes from the operating system's random source.
pub fn random_32() -> Result<[u8; 32], CliError> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| CliError::input(format!("no OS randomness: {e}")))?;
    Ok(b)
}

/// Generates a key pair and returns it with its PKCS#8 DER encoding.
pub fn generate(kind: KeyType) -> Result<(InstallSigningKey, Vec<u8>), CliError> {
    // A random 32-byte string is a valid P-256 scalar except with
    // probability about 2^-32; retry on the rare miss.
    for _ in 0..16 {
        let secret = random_32()?;
        let (key, der) = match kind {
            KeyType::Ed25519 => (
                InstallSigningKey::ed25519_from_seed(&secret),
                [ED25519_PKCS8_PREFIX, &secret].concat(),
            ),
            KeyType::P256 => {
                let key = InstallSigningKey::p256_from_bytes(&secret);
                let spki = match &key {
                    Ok(k) => k.public_key().to_spki_der(),
                    Err(_) => continue,
                };
                // The SPKI ends with the 65-byte uncompressed point.
                let point = spki
                    .get(spki.len().saturating_sub(65)..)
                    .unwrap_or_default();
                (
                    key,
                    [P256_PKCS8_PREFIX, &secret, P256_PUBLIC_PREFIX, point].concat(),
                )
            }
        };
        let Ok(key) = key else { continue };
        // Read it back with the filter's own parser: what we write must be
        // what `sign-request` (and openssl) will read.
        let back = InstallSigningKey::from_pkcs8_der(&der)
            .map_err(|e| CliError::invalid(format!("internal: generated key unreadable: {e}")))?;
        if back.public_key() != key.public_key() {
            return Err(CliError::invalid(
                "internal: generated key does not round-trip",
            ));
        }
        return Ok((key, der));
    }
    Err(CliError::input("could not generate a key"))
}

/// Writes PEM to a new file readable by its owner only; refuses to replace
/// an existing file unless `force`.
pub fn write_private(path: &Path, pem_text: &str, force: bool) -> Result<(), CliError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        CliError::input(format!(
            "cannot create {}: {e}{}",
            path.display(),
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                " (use --force to replace it)"
            } else {
                ""
            }
        ))
    })?;
    f.write_all(pem_text.as_bytes())
        .map_err(|e| CliError::input(format!("cannot write {}: {e}", path.display())))
}

/// Reads a private install key: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`),
/// as `mint install-key` and `openssl genpkey` write. P-256 or Ed25519.
pub fn read_private(path: &Path) -> Result<InstallSigningKey, CliError> {
    let text = read_text(path)?;
    let blocks =
        pem::parse(&text).map_err(|m| CliError::invalid(format!("{}: {m}", path.display())))?;
    let block = blocks
        .iter()
        .find(|b| b.label == "PRIVATE KEY")
        .ok_or_else(|| {
            CliError::invalid(format!(
                "{}: no `-----BEGIN PRIVATE KEY-----` (PKCS#8) block; convert with `openssl pkcs8 -topk8 -nocrypt`",
                path.display()
            ))
        })?;
    InstallSigningKey::from_pkcs8_der(&block.der).map_err(|e| {
        CliError::invalid(format!(
            "{}: {e} (P-256 or Ed25519 PKCS#8 expected)",
            path.display()
        ))
    })
}

/// Reads an install public key from a file holding any of: a PKCS#8 private
/// key PEM (its public half is used), a `PUBLIC KEY` (SPKI) PEM, or the
/// `ipk` claim value itself (base64 SPKI).
pub fn read_public(path: &Path) -> Result<InstallKey, CliError> {
    let text = read_text(path)?;
    let bad = |m: String| CliError::invalid(format!("{}: {m}", path.display()));
    if text.contains("-----BEGIN") {
        let blocks = pem::parse(&text).map_err(bad)?;
        if let Some(b) = blocks.iter().find(|b| b.label == "PRIVATE KEY") {
            return InstallSigningKey::from_pkcs8_der(&b.der)
                .map(|k| k.public_key())
                .map_err(|e| bad(e.to_string()));
        }
        if let Some(b) = blocks.iter().find(|b| b.label == "PUBLIC KEY") {
            return InstallKey::from_spki_der(&b.der).map_err(|e| bad(e.to_string()));
        }
        return Err(bad("no PRIVATE KEY or PUBLIC KEY block".into()));
    }
    InstallKey::from_ipk(text.trim()).map_err(|e| bad(format!("not an ipk value: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pkcs8() {
        for kind in [KeyType::P256, KeyType::Ed25519] {
            let (key, der) = generate(kind).unwrap();
            let back = InstallSigningKey::from_pkcs8_der(&der).unwrap();
            assert_eq!(back.public_key(), key.public_key());
            pem::check_sequence(&der).unwrap();
            let ipk = key.public_key().to_ipk();
            assert_eq!(InstallKey::from_ipk(&ipk).unwrap(), key.public_key());
        }
    }
}
