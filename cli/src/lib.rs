//! The operator tool for appguard (SPEC §6): validate a configuration
//! offline with the filter's own parser, hash API keys, normalise
//! certificate fingerprints, mint development tokens, install keys and
//! request signatures.
//!
//! Everything that decides is the filter's own code (the `appguard` crate
//! without its proxy-wasm adapter), so a verdict here is the filter's
//! verdict. The binary (`src/main.rs`) only parses arguments and prints.
//!
//! Secrets are never printed: API keys, HMAC secrets and private keys go in
//! (from files or standard input where possible) and only hashes, public
//! keys, and the tokens and signatures the user asked for come out.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod check;
pub mod error;
pub mod fingerprint;
pub mod install_key;
pub mod mint;
pub mod pem;
pub mod service_limits;
pub mod sign;

pub use error::CliError;

/// Seconds since the Unix epoch, from the system clock.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Hashes each API key read from `input`, one per line, with the filter's
/// [`appguard::identity::hash_api_key`]; returns the hashes in input order,
/// one per key line, so that `paste ids <(hash-key < keys)` pairs them
/// right.
///
/// Each line loses a leading byte order mark (U+FEFF, which Windows tools
/// write) and then its surrounding whitespace with [`str::trim`], exactly as
/// the filter trims the header it reads the key from. Refused (exit 1,
/// naming the line, never the key):
/// - a blank line before the last key: the hashes would no longer line up
///   with the lines (blank lines after the last key are ignored);
/// - a key with an ASCII control character (a lone carriage return, NUL,
///   a tab): Envoy refuses CR, LF and NUL in a header value and no real
///   key has the others, so such a line comes from a mangled file (mixed
///   line endings, a tab-separated list), not from a key;
/// - a key longer than the filter compares
///   ([`appguard::identity::MAX_API_KEY_BYTES`]): its hash could never
///   match either.
pub fn hash_keys(input: &str) -> Result<Vec<String>, CliError> {
    let keys: Vec<&str> = input
        .lines()
        .map(|line| line.strip_prefix('\u{feff}').unwrap_or(line).trim())
        .collect();
    let Some(last) = keys.iter().rposition(|k| !k.is_empty()) else {
        return Err(CliError::invalid("no API key given"));
    };
    let mut hashes = Vec::with_capacity(last + 1);
    for (n, key) in keys.iter().take(last + 1).enumerate() {
        let line = n + 1;
        if key.is_empty() {
            return Err(CliError::invalid(format!(
                "line {line} is blank: each line must hold one key, so that the hashes (one per line) line up with the keys; remove it"
            )));
        }
        if let Some(c) = key.bytes().find(u8::is_ascii_control) {
            return Err(CliError::invalid(format!(
                "the key on line {line} contains the ASCII control character 0x{c:02X}, which no API key holds (Envoy refuses CR, LF and NUL in a header value): a stray carriage return, or a tab-separated file?"
            )));
        }
        if key.len() > appguard::identity::MAX_API_KEY_BYTES {
            return Err(CliError::invalid(format!(
                "the key on line {line} is {} bytes long; the filter refuses keys over {} bytes (api_key_invalid), so its hash could never match",
                key.len(),
                appguard::identity::MAX_API_KEY_BYTES
            )));
        }
        hashes.push(appguard::identity::hash_api_key(key));
    }
    Ok(hashes)
}
