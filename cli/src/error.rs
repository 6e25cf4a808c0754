//! The CLI's error type and its exit codes.

use std::fmt;
use std::path::Path;

/// Why a command failed. The variant decides the exit code, so scripts can
/// tell "the input is wrong" from "the input could not be read".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// The input was read and is not acceptable: a configuration the filter
    /// refuses, a malformed fingerprint, a key too short for its algorithm.
    /// Exit code 1.
    Invalid(String),
    /// The input could not be read or is not of the expected kind at all: a
    /// missing file, a YAML syntax error, bad arguments. Exit code 2, the
    /// code clap uses for usage errors too.
    Input(String),
}

impl CliError {
    /// An [`CliError::Invalid`] with this message.
    pub fn invalid(message: impl Into<String>) -> Self {
        CliError::Invalid(message.into())
    }

    /// An [`CliError::Input`] with this message.
    pub fn input(message: impl Into<String>) -> Self {
        CliError::Input(message.into())
    }

    /// An [`CliError::Input`] for a file that could not be read.
    pub fn read(path: &Path, e: &std::io::Error) -> Self {
        CliError::Input(format!("cannot read {}: {e}", path.display()))
    }

    /// The process exit code: 1 for invalid input, 2 for unreadable input.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Invalid(_) => 1,
            CliError::Input(_) => 2,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Invalid(m) | CliError::Input(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CliError {}

/// The most a command reads from one file or from standard input, and what
/// it expected there. Without a bound, `check-config /dev/zero` or
/// `--secret-file /dev/zero` would read until memory runs out; every
/// bound is far above any real input of its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The most bytes read.
    pub bytes: usize,
    /// What was expected, for the message: "a configuration".
    pub what: &'static str,
}

impl Limit {
    /// `check-config`: 16 MiB. Envoy bootstraps and `kubectl get -o yaml`
    /// lists of many resources stay far below it.
    pub const CONFIG: Limit = Limit {
        bytes: 16 << 20,
        what: "a configuration",
    };
    /// HMAC secrets, private and public key PEMs, ipk files: 64 KiB (a
    /// 4096-bit RSA private key PEM is about 3.3 KB).
    pub const KEY: Limit = Limit {
        bytes: 64 << 10,
        what: "a key file",
    };
    /// Certificates for `fingerprint`: 1 MiB (one certificate is a few KB;
    /// a PEM bundle of hundreds still fits).
    pub const CERTIFICATE: Limit = Limit {
        bytes: 1 << 20,
        what: "a certificate file",
    };
    /// API keys for `hash-key` on standard input: 1 MiB, thousands of keys
    /// of the longest kind the filter compares (256 bytes). Larger batches
    /// can be split.
    pub const API_KEYS: Limit = Limit {
        bytes: 1 << 20,
        what: "a list of API keys (split a longer one)",
    };
    /// A request body for `mint sign-request --body-file`: 16 MiB, sixteen
    /// times the largest body the filter reads (`max_body_bytes`, at most
    /// 1 MiB), so a test of an oversized body still works.
    pub const BODY: Limit = Limit {
        bytes: 16 << 20,
        what: "a request body",
    };
}

/// `n` bytes for a message: in MiB or KiB when a whole number of them.
fn size(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// Reads all of `reader` (named `name` in messages), refusing more than
/// `limit` bytes with a [`CliError::Input`]. Reads one byte past the limit
/// at most, so an endless source (`/dev/zero`) is refused at once.
pub fn read_capped(
    reader: impl std::io::Read,
    limit: Limit,
    name: &str,
) -> Result<Vec<u8>, CliError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit.bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::input(format!("cannot read {name}: {e}")))?;
    if bytes.len() > limit.bytes {
        return Err(CliError::input(format!(
            "cannot read {name}: it is larger than {}, the most appguard-cli reads as {}",
            size(limit.bytes),
            limit.what
        )));
    }
    Ok(bytes)
}

/// Reads a whole file, at most `limit` bytes of it, mapping the I/O error
/// to [`CliError::Input`]. The path `-` is standard input, so that a
/// manifest can be piped in
/// (`kubectl get wasmplugin appguard -o yaml | appguard-cli check-config -`).
pub fn read_file(path: &Path, limit: Limit) -> Result<Vec<u8>, CliError> {
    if path == Path::new("-") {
        return read_capped(std::io::stdin().lock(), limit, "standard input");
    }
    let file = std::fs::File::open(path).map_err(|e| CliError::read(path, &e))?;
    read_capped(file, limit, &path.display().to_string())
}

/// Reads a whole UTF-8 text file, at most `limit` bytes of it, mapping
/// errors to [`CliError::Input`].
pub fn read_text(path: &Path, limit: Limit) -> Result<String, CliError> {
    let bytes = read_file(path, limit)?;
    String::from_utf8(bytes)
        .map_err(|_| CliError::input(format!("{} is not UTF-8 text", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_capped_at_their_limit() {
        let limit = Limit {
            bytes: 4,
            what: "a thing",
        };
        assert_eq!(read_capped(&b"abcd"[..], limit, "x").unwrap(), b"abcd");
        let e = read_capped(&b"abcde"[..], limit, "x").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "cannot read x: it is larger than 4 bytes, the most appguard-cli reads as a thing"
        );
        // An endless source is refused, not read to the end.
        let e = read_capped(std::io::repeat(0), Limit::CONFIG, "zeros").unwrap_err();
        assert!(e.to_string().contains("larger than 16 MiB"), "{e}");
        assert_eq!(size(64 << 10), "64 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
    }
}
