//! Every read is bounded: a file or standard input larger than anything of
//! its kind is refused with exit 2 before memory runs out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};

use base64::Engine as _;
use common::{cli, cli_with_stdin, repo, s, Run};

const MIB: usize = 1 << 20;

/// A 32-byte HMAC secret in base64.
fn secret_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode([0x5a; 32])
}

fn refused(r: &Run, size: &str) {
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(&format!("it is larger than {size}")),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}

#[test]
fn a_configuration_over_16_mib_is_refused_unread() {
    // Valid JSON, padded with whitespace past the bound.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.json");
    let config = r#"{"default_action": "deny"}"#;
    let mut text = config.to_owned();
    text.push_str(&" ".repeat(16 * MIB + 1 - config.len()));
    std::fs::write(&f, &text).unwrap();
    refused(&cli(&["check-config", s(&f)]), "16 MiB");
    // At the bound it is read.
    std::fs::write(&f, &text[..16 * MIB]).unwrap();
    assert_eq!(cli(&["check-config", s(&f)]).code, 0);
}

#[test]
fn a_secret_file_over_64_kib_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret.b64");
    let b64 = secret_b64();
    let mut text = format!("{b64}\n");
    text.push_str(&"\n".repeat(64 * 1024 + 1 - text.len()));
    std::fs::write(&f, &text).unwrap();
    let r = cli(&["mint", "--alg", "HS256", "--secret-file", s(&f)]);
    refused(&r, "64 KiB");
    assert!(!r.all().contains(&b64), "the secret was printed");
    // The same for a private key PEM.
    let r = cli(&["mint", "--alg", "ES256", "--key-pem", s(&f)]);
    refused(&r, "64 KiB");
}

#[test]
fn a_certificate_over_1_mib_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cert.der");
    std::fs::write(&f, vec![0x30; MIB + 1]).unwrap();
    refused(&cli(&["fingerprint", "--der", s(&f)]), "1 MiB");
    refused(&cli(&["fingerprint", "--pem", s(&f)]), "1 MiB");
}

#[test]
fn api_keys_over_1_mib_are_refused_unread() {
    let keys = "abc\n".repeat(MIB / 4 + 1);
    let r = cli_with_stdin(&["hash-key"], Some(&keys));
    refused(&r, "1 MiB");
    assert!(r.stderr.contains("standard input"), "{}", r.stderr);
}

#[test]
fn a_body_file_over_16_mib_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    common::ok(&["mint", "install-key", "--out", s(&key)]);
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 16 * MIB + 1]).unwrap();
    let r = cli(&[
        "mint",
        "sign-request",
        "--install-key",
        s(&key),
        "--url",
        "https://api.example.com/",
        "--body-file",
        s(&body),
        "--token",
        "e30.e30.sig",
    ]);
    refused(&r, "16 MiB");
}

/// Endless input: refused at once (without the bound, each of these reads
/// until memory runs out).
#[cfg(unix)]
#[test]
fn dev_zero_is_refused_at_once() {
    let zero = std::path::Path::new("/dev/zero");
    if !zero.exists() {
        return;
    }
    refused(&cli(&["check-config", "/dev/zero"]), "16 MiB");
    // The rate-limit service's limits too (read by its own loader; the
    // plugin configuration before them is checked and reported).
    let r = cli(&[
        "check-config",
        "examples/three-platform.json",
        "--ratelimit-config",
        "/dev/zero",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("/dev/zero: cannot read: it is larger than 16 MiB"),
        "{}",
        r.stderr
    );
    let r = cli(&["mint", "--alg", "HS256", "--secret-file", "/dev/zero"]);
    refused(&r, "64 KiB");
    let r: Run = Command::new(env!("CARGO_BIN_EXE_appguard-cli"))
        .arg("hash-key")
        .current_dir(repo())
        .stdin(std::fs::File::open(zero).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
        .into();
    refused(&r, "1 MiB");
}

/// YAML nested deeper than 128 levels is refused before it is parsed:
/// serde_norway refuses it too, but only after quadratic work (100 000
/// nested `[` in 200 KB took most of a minute), so a file from a pull
/// request could hold a CI job for hours within the 16 MiB bound.
#[test]
fn deeply_nested_yaml_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000;
    let block: String = (0..2_000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    for (name, text) in [
        (
            "flow.yaml",
            format!("a: {}{}\n", "[".repeat(n), "]".repeat(n)),
        ),
        (
            "map.yaml",
            format!("a: {}\n", "{b: ".repeat(n) + &"}".repeat(n)),
        ),
        ("block.yaml", block),
    ] {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        let start = std::time::Instant::now();
        let r = cli(&["check-config", s(&f)]);
        let took = start.elapsed();
        assert_eq!(r.code, 2, "{name}: {}", r.all());
        assert!(
            r.stderr.contains("nested deeper than 128 levels"),
            "{name}: {}",
            r.stderr
        );
        assert!(
            took < std::time::Duration::from_secs(5),
            "{name}: took {took:?}"
        );
    }
    // Within the bound, the parser decides as before.
    let f = dir.path().join("ok.yaml");
    std::fs::write(
        &f,
        format!("routes: {}{}\n", "[".repeat(100), "]".repeat(100)),
    )
    .unwrap();
    let r = cli(&["check-config", s(&f)]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("nested deeper"), "{}", r.stderr);
}
