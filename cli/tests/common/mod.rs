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
        // A command that refuses before it reads its input closes it.
        match child.stdin.take().unwrap().write_all(input.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.unwrap(),
        }
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

/// A request as it arrived on the wire.
pub struct Captured {
    pub method: String,
    pub target: String,
    /// Names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Captured {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A listener on a free loopback port, for [`run_curl`].
pub fn loopback() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// Runs a curl line (as `sign-request` prints it) through `sh` against
/// `listener` and returns the request curl actually sent.
pub fn run_curl(curl_line: &str, listener: std::net::TcpListener) -> Captured {
    use std::io::{BufRead as _, BufReader, Read as _};
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("{curl_line} -o /dev/null"))
        .stdin(Stdio::null())
        .spawn()
        .expect("sh and curl are needed by this test");
    // Fails, rather than hangs, when curl exits without connecting.
    listener.set_nonblocking(true).unwrap();
    let started = std::time::Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("curl exited ({status}) without sending: {curl_line}");
                }
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(30),
                    "curl did not connect: {curl_line}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next().unwrap().to_owned();
    let target = parts.next().unwrap().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        let l = l.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let mut w = stream;
    w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .unwrap();
    drop(w);
    child.wait().unwrap();
    Captured {
        method,
        target,
        headers,
        body,
    }
}

/// Verifies what curl sent (over `http`) with the filter's own verifier and
/// default policy; returns the covered components.
pub fn verify_captured(
    c: &Captured,
    authority: &str,
    token_header: &str,
    key: &appguard::signing::InstallKey,
) -> Result<Vec<String>, String> {
    use appguard::signing::{verify, Message, SigningPolicy};
    let (path, query) = match c.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (c.target.as_str(), None),
    };
    let message = Message::request(
        &c.method,
        "http",
        authority,
        path,
        query,
        &c.headers,
        Some(&c.body),
    );
    verify(
        &SigningPolicy::default(),
        &message,
        key,
        token_header,
        appguard_cli::now(),
    )
    .map(|v| v.covered)
    .map_err(|e| e.to_string())
}

/// The `curl …` command of `sign-request`'s output: from the line starting
/// `curl ` to the end (a quoted body may span lines).
pub fn curl_line_of(stdout: &str) -> String {
    let start = if stdout.starts_with("curl ") {
        0
    } else {
        stdout.find("\ncurl ").unwrap() + 1
    };
    let line = &stdout[start..];
    line.strip_suffix('\n').unwrap_or(line).to_owned()
}

/// An install key written to `dir`, and a token (HS256 with the base64
/// secret `secret_b64`) carrying its `ipk`.
pub fn install_key_and_token(dir: &Path, secret_b64: &str) -> (PathBuf, String) {
    let key = dir.join("install.pem");
    ok(&["mint", "install-key", "--out", s(&key)]);
    let token = ok(&[
        "mint",
        "--alg",
        "HS256",
        "--secret-base64",
        secret_b64,
        "--ipk-from",
        s(&key),
    ]);
    (key, token.trim().to_owned())
}
