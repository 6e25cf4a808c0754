//! Helpers shared by the CLI's tests: run the real binary, find the
//! repository's files, run openssl.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// What one run of the binary produced.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout and stderr together, for "the message is somewhere" checks.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The repository root (the workspace, one level above `cli/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `appguard-cli ARGS` from the repository root, stdin closed.
pub fn cli(args: &[&str]) -> Run {
    cli_with_stdin(args, None)
}

/// Runs `appguard-cli ARGS` with `stdin` as standard input.
pub fn cli_with_stdin(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_appguard-cli"))
        .args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run appguard-cli");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap().into()
}

/// Runs `cli` and expects exit 0; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let r = cli(args);
    assert_eq!(r.code, 0, "appguard-cli {args:?} failed:\n{}", r.all());
    r.stdout
}

/// The openssl binary (`/usr/bin/openssl` on the project's machines).
pub fn openssl() -> PathBuf {
    let p = PathBuf::from("/usr/bin/openssl");
    if p.exists() {
        p
    } else {
        PathBuf::from("openssl")
    }
}

/// Runs openssl and returns its stdout; panics with its stderr on failure.
pub fn openssl_run(args: &[&str]) -> Vec<u8> {
    let o = Command::new(openssl())
        .args(args)
        .output()
        .expect("openssl is needed by these tests (apt-get install openssl)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Path as &str (the temp dirs are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
