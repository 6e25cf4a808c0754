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

/// Reads a whole file, mapping the I/O error to [`CliError::Input`]. The
/// path `-` is standard input, so that a manifest can be piped in
/// (`kubectl get wasmplugin appguard -o yaml | appguard-cli check-config -`).
pub fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        return std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .map(|_| bytes)
            .map_err(|e| CliError::input(format!("cannot read standard input: {e}")));
    }
    std::fs::read(path).map_err(|e| CliError::read(path, &e))
}

/// Reads a whole UTF-8 text file, mapping errors to [`CliError::Input`].
pub fn read_text(path: &Path) -> Result<String, CliError> {
    let bytes = read_file(path)?;
    String::from_utf8(bytes)
        .map_err(|_| CliError::input(format!("{} is not UTF-8 text", path.display())))
}
