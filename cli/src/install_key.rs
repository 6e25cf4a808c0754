//! Install keys for request signing (RFC 9421): generating a key pair,
//! writing and reading its private half as PKCS#8 PEM, and reading the
//! public half from any of the forms an operator has at hand.

use std::io::Write as _;
use std::path::Path;

use appguard::signing::{InstallKey, InstallSigningKey};

use crate::error::{read_text, CliError, Limit};
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

/// Writes PEM to a file readable by its owner only (mode 0600 on Unix);
/// refuses to replace an existing file unless `force`.
///
/// The key is always written to a file this call creates with mode 0600:
/// `path` itself when it does not exist, else (with `force`) a new
/// temporary file next to it that is then renamed over it. Truncating and
/// rewriting the existing file would keep that file's mode, so a private
/// key written over a 0644 file would be readable by everyone; the rename
/// also means `path` never holds half a key.
pub fn write_private(path: &Path, pem_text: &str, force: bool) -> Result<(), CliError> {
    if !force {
        return write_new(path, path, pem_text);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| CliError::input(format!("{} is not a file name", path.display())))?;
    let suffix: String = random_32()?
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{suffix}.tmp"));
    let temp = dir.join(temp_name);
    let result = write_new(&temp, path, pem_text).and_then(|()| {
        std::fs::rename(&temp, path)
            .map_err(|e| CliError::input(format!("cannot replace {}: {e}", path.display())))
    });
    if result.is_err() {
        // Nothing to do if it was never created or already renamed.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Creates `file` (which must not exist) with mode 0600 on Unix and writes
/// `pem_text` to it; errors name `shown`, the path the user asked for.
fn write_new(file: &Path, shown: &Path, pem_text: &str) -> Result<(), CliError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(file).map_err(|e| {
        CliError::input(format!(
            "cannot create {}: {e}{}",
            shown.display(),
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                " (use --force to replace it)"
            } else {
                ""
            }
        ))
    })?;
    f.write_all(pem_text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::input(format!("cannot write {}: {e}", shown.display())))
}

/// Reads a private install key: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`),
/// as `mint install-key` and `openssl genpkey` write. P-256 or Ed25519.
pub fn read_private(path: &Path) -> Result<InstallSigningKey, CliError> {
    let text = read_text(path, Limit::KEY)?;
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
    let text = read_text(path, Limit::KEY)?;
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

    #[cfg(unix)]
    #[test]
    fn force_over_a_world_readable_file_leaves_it_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "old contents that are longer than nothing\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "NEW KEY\n", true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "NEW KEY\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.pem")]);
        // Without --force the existing file is left alone.
        let e = write_private(&path, "OTHER\n", false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "NEW KEY\n");
    }
}
