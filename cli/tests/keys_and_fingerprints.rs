//! `appguard-cli hash-key` and `appguard-cli fingerprint`, checked against
//! independent implementations (known SHA-256 values, openssl).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{cli, cli_with_stdin, ok, openssl_run, s};

/// SHA-256("abc"), FIPS 180-2 Appendix B.1.
const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

#[test]
fn hash_key_from_argument_matches_the_known_digest() {
    assert_eq!(ok(&["hash-key", "abc"]), format!("{SHA256_ABC}\n"));
}

#[test]
fn hash_key_from_stdin_never_echoes_the_key() {
    let key = "k3y-from-stdin-0123456789";
    let r = cli_with_stdin(&["hash-key"], Some(&format!("{key}\n")));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout.trim(), appguard::identity::hash_api_key(key));
    assert!(!r.all().contains(key), "the key was printed: {}", r.all());
}

#[test]
fn hash_key_warns_when_its_key_reads_as_an_option_without_echoing_it() {
    // A mistyped flag is hashed as the key it may be, with a warning that
    // does not repeat it.
    let r = cli(&["hash-key", "--stdinn"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.trim(),
        appguard::identity::hash_api_key("--stdinn")
    );
    assert!(
        r.stderr.contains("begins with `--` as an option would"),
        "{}",
        r.all()
    );
    assert!(
        !r.stderr.contains("stdinn"),
        "the key was printed: {}",
        r.all()
    );
    // A key that merely begins with `-`, or with `--` and then a symbol,
    // is hashed without a word.
    for key in ["-abc", "--+k3y/", "---x"] {
        let r = cli(&["hash-key", key]);
        assert_eq!(r.code, 0, "{key}: {}", r.all());
        assert_eq!(r.stderr, "", "{key}");
    }
}

#[test]
fn hash_key_reads_one_key_per_line() {
    // Blank lines after the last key are ignored.
    let r = cli_with_stdin(&["hash-key"], Some("abc\r\nabc\n\n \r\n"));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout, format!("{SHA256_ABC}\n{SHA256_ABC}\n"));
    let r = cli_with_stdin(&["hash-key"], Some(""));
    assert_eq!(r.code, 1, "{}", r.all());
    // `-` is standard input, never a key to hash.
    let r = cli_with_stdin(&["hash-key", "-"], Some("abc\n"));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout, format!("{SHA256_ABC}\n"));
}

#[test]
fn hash_key_drops_a_byte_order_mark_and_refuses_control_characters() {
    // Windows tools begin a file with U+FEFF: it is no part of the key.
    let r = cli_with_stdin(&["hash-key"], Some("\u{feff}abc\r\n\u{feff} abc\n"));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout, format!("{SHA256_ABC}\n{SHA256_ABC}\n"));
    // Surrounding whitespace, tabs too, is still dropped as `str::trim` does.
    let r = cli_with_stdin(&["hash-key"], Some(" \tabc\t \r\n"));
    assert_eq!(r.stdout, format!("{SHA256_ABC}\n"), "{}", r.all());
    // A control character inside: refused, the line named, the key never
    // echoed.
    for (input, line) in [
        ("abc\ns3cr3t\rkey\n", 2),
        ("s3cr3t\0key\n", 1),
        ("abc\nabc\ns3cr3t\x7fkey", 3),
        ("s3cr3t\tkey\n", 1),
        ("\u{feff}s3cr3t\x1bkey\n", 1),
    ] {
        let r = cli_with_stdin(&["hash-key"], Some(input));
        assert_eq!(r.code, 1, "{input:?}: {}", r.all());
        assert!(r.stdout.is_empty(), "{input:?}: {}", r.stdout);
        assert!(
            r.stderr.contains(&format!(
                "the key on line {line} contains the ASCII control character"
            )),
            "{input:?}: {}",
            r.stderr
        );
        assert!(
            !r.all().contains("s3cr3t"),
            "the key was printed: {}",
            r.all()
        );
    }
    let r = cli(&["hash-key", "s3cr3t\x01key"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        !r.all().contains("s3cr3t"),
        "the key was printed: {}",
        r.all()
    );
}

#[test]
fn hash_key_refuses_a_blank_line_before_a_key() {
    // One hash per key line: a skipped blank line would shift every later
    // hash against `paste ids <(hash-key < keys)`.
    for (input, line) in [
        ("abc\n\nabc\n", 2),
        ("abc\r\n \t\r\nabc\n", 2),
        ("\nabc\n", 1),
        ("\u{feff}\nabc\n", 1),
    ] {
        let r = cli_with_stdin(&["hash-key"], Some(input));
        assert_eq!(r.code, 1, "{input:?}: {}", r.all());
        assert!(r.stdout.is_empty(), "{input:?}: {}", r.stdout);
        assert!(
            r.stderr.contains(&format!("line {line} is blank")),
            "{input:?}: {}",
            r.stderr
        );
    }
    // Only blank lines: still no key at all.
    let r = cli_with_stdin(&["hash-key"], Some("\n \n"));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("no API key given"), "{}", r.stderr);
}

/// `hash-key $KEYS` with the variable unquoted: refused without echoing
/// any of the keys (clap's own error would name the second).
#[test]
fn hash_key_with_two_arguments_names_neither() {
    let r = cli(&["hash-key", "sk_live_FIRST_KEY", "sk_live_SECOND_KEY"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(!r.all().contains("sk_live"), "{}", r.all());
    assert!(r.stderr.contains("standard input"), "{}", r.stderr);
    let r = cli(&["hash-key", "--", "-k1", "-k2"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(!r.all().contains("-k2"), "{}", r.all());
}

#[test]
fn hash_key_refuses_what_the_filter_never_compares() {
    // Over 256 bytes the filter answers `api_key_invalid` before hashing:
    // such a hash could never match, and the key is not echoed.
    let long = "k".repeat(257);
    let r = cli_with_stdin(&["hash-key"], Some(&format!("abc\n{long}\n")));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("line 2"), "{}", r.stderr);
    assert!(!r.all().contains(&long), "{}", r.all());
    assert_eq!(ok(&["hash-key", &"k".repeat(256)]).trim().len(), 64);
    // A key may start with `-`, and is hashed, never echoed by a usage tip.
    let r = cli(&["hash-key", "--FAKEKEY-123"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.trim(),
        appguard::identity::hash_api_key("--FAKEKEY-123")
    );
    assert!(ok(&["hash-key", "--help"]).contains("Usage"));
}

#[test]
fn fingerprint_of_a_pem_certificate_equals_openssls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    openssl_run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
        "-subj",
        "/CN=appguard test signer",
        "-days",
        "1",
    ]);
    let out = ok(&["fingerprint", "--pem", s(&cert)]);
    let want = |alg: &str| {
        let o = openssl_run(&["x509", "-in", s(&cert), "-noout", "-fingerprint", alg]);
        // "sha256 Fingerprint=AB:CD:..." (OpenSSL 3) or "SHA256 Fingerprint=..."
        let o = String::from_utf8(o).unwrap();
        o.trim().split_once('=').unwrap().1.to_owned()
    };
    let sha256 = want("-sha256");
    let sha1 = want("-sha1");
    assert_eq!(out, format!("SHA256: {sha256}\nSHA1: {sha1}\n"));
    // The filter accepts what we print.
    assert_eq!(
        appguard::identity::parse_fingerprint(&sha256).map(|b| b.len()),
        Some(32)
    );

    // The same certificate as DER, and a PEM with a key block before it.
    let der = dir.path().join("cert.der");
    openssl_run(&["x509", "-in", s(&cert), "-outform", "DER", "-out", s(&der)]);
    assert_eq!(ok(&["fingerprint", "--der", s(&der)]), out);
    let both = dir.path().join("both.pem");
    let text = std::fs::read_to_string(&key).unwrap() + &std::fs::read_to_string(&cert).unwrap();
    std::fs::write(&both, text).unwrap();
    assert_eq!(ok(&["fingerprint", "--pem", s(&both)]), out);

    // PEM given as DER, DER given as PEM, and a key without a certificate:
    // refused.
    assert_eq!(cli(&["fingerprint", "--der", s(&cert)]).code, 1);
    let r = cli(&["fingerprint", "--pem", s(&der)]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("--der"), "{}", r.stderr);
    assert_eq!(cli(&["fingerprint", "--pem", s(&key)]).code, 1);
    assert_eq!(cli(&["fingerprint", "--pem", "no/such.pem"]).code, 2);
}

/// A keystore, an APK's PKCS#7 `CERT.RSA` and a private key are each one
/// DER SEQUENCE too: their hash is not the certificate's fingerprint and
/// would refuse every install `app_mismatch`. Refused with what to run.
#[test]
fn fingerprint_der_refuses_keystores_pkcs7_and_keys_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let cert = dir.path().join("c.pem");
    openssl_run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
        "-subj",
        "/CN=appguard test signer",
        "-days",
        "1",
    ]);
    let p7 = dir.path().join("CERT.RSA");
    openssl_run(&[
        "crl2pkcs7",
        "-nocrl",
        "-certfile",
        s(&cert),
        "-outform",
        "DER",
        "-out",
        s(&p7),
    ]);
    let p12 = dir.path().join("release.p12");
    openssl_run(&[
        "pkcs12",
        "-export",
        "-inkey",
        s(&key),
        "-in",
        s(&cert),
        "-passout",
        "pass:x",
        "-out",
        s(&p12),
    ]);
    let pk8 = dir.path().join("k.der");
    openssl_run(&["pkey", "-in", s(&key), "-outform", "DER", "-out", s(&pk8)]);
    for (file, hint) in [
        (&p7, "keytool -printcert -file"),
        (&p7, "openssl pkcs7 -inform DER"),
        (&p12, "keytool -exportcert -rfc"),
        (&pk8, "this is a private key"),
    ] {
        let r = cli(&["fingerprint", "--der", s(file)]);
        assert_eq!(r.code, 1, "{}: {}", file.display(), r.all());
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert!(r.stderr.contains(hint), "{}: {}", file.display(), r.stderr);
    }
    // The same check for a CERTIFICATE block holding something else.
    let fake = dir.path().join("fake.pem");
    let der = std::fs::read(&pk8).unwrap();
    std::fs::write(&fake, appguard_cli::pem::encode("CERTIFICATE", &der)).unwrap();
    let r = cli(&["fingerprint", "--pem", s(&fake)]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("this is a private key"), "{}", r.stderr);
    // The real certificate still passes.
    let real = dir.path().join("c.der");
    openssl_run(&["x509", "-in", s(&cert), "-outform", "DER", "-out", s(&real)]);
    assert_eq!(
        ok(&["fingerprint", "--der", s(&real)]),
        ok(&["fingerprint", "--pem", s(&cert)])
    );
}

#[test]
fn fingerprint_hex_is_normalised() {
    let upper = "14:6D:E9:83:C5:73:06:50:D8:EE:B9:95:2F:34:FC:64:16:A0:83:42:E6:1D:BE:A8:8A:04:96:B2:3F:CF:44:E5";
    let bare = upper.replace(':', "").to_lowercase();
    assert_eq!(ok(&["fingerprint", &bare]), format!("{upper}\n"));
    assert_eq!(
        ok(&["fingerprint", &upper.to_lowercase()]),
        format!("{upper}\n")
    );
    // SHA-1 (20 bytes) is accepted too.
    assert_eq!(
        ok(&["fingerprint", "da39a3ee5e6b4b0d3255bfef95601890afd80709"]),
        "DA:39:A3:EE:5E:6B:4B:0D:32:55:BF:EF:95:60:18:90:AF:D8:07:09\n"
    );
    let r = cli(&["fingerprint", "14:6D:E9"]);
    assert_eq!(r.code, 1, "{}", r.all());
    // One of the three inputs is required.
    assert_eq!(cli(&["fingerprint"]).code, 2);
}

#[test]
fn a_closed_standard_output_is_an_error_not_a_panic() {
    // `appguard-cli hash-key < keys | head -1`: the reader goes away.
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_appguard-cli"))
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let keys = "abc\n".repeat(100_000);
    // The CLI may stop reading once its output fails: ignore our own EPIPE.
    let _ = child.stdin.take().unwrap().write_all(keys.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot write to standard output"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
