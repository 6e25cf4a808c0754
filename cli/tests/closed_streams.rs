//! The binary with standard error gone (a pipe whose reader has exited, as
//! in `appguard-cli … 2>&1 | head -0`): messages are lost, but the exit
//! status is still the command's, never a panic's 101.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{repo, s};

/// Runs `appguard-cli ARGS` with `stdin` as standard input and standard
/// error a pipe already closed at its reading end; returns the exit code.
/// `sh` holds the command back until the pipe is closed (it waits for a
/// first line on standard input), so the test does not race the child.
fn without_stderr(args: &[&str], stdin: &str) -> i32 {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"read -r _ && exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_appguard-cli"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sh");
    drop(child.stderr.take());
    let mut input = child.stdin.take().unwrap();
    // The child may exit before reading it all: a broken pipe here is fine.
    let _ = input.write_all(format!("go\n{stdin}").as_bytes());
    drop(input);
    child.wait().unwrap().code().unwrap_or(-1)
}

#[test]
fn an_error_with_standard_error_gone_keeps_its_exit_code() {
    // "no API key given" goes to standard error: exit 1, not a panic.
    assert_eq!(without_stderr(&["hash-key"], ""), 1);
    assert_eq!(
        without_stderr(&["check-config", "does/not/exist.json"], ""),
        2
    );
}

#[test]
fn notes_and_warnings_with_standard_error_gone_are_dropped() {
    // A valid configuration with the filter's advice (a warning line).
    let config = r#"{"tokens": [{"name": "fb", "from": [{"header": "x-t"}],
        "remote_jwks": {"cluster": "jwks", "path": "/jwks"}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["fb"]}]}"#;
    assert_eq!(without_stderr(&["check-config", "-"], config), 0);
    // `mint install-key` says where it wrote the key on standard error.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    assert_eq!(
        without_stderr(&["mint", "install-key", "--out", s(&key)], ""),
        0
    );
}
