//! `appguard-cli mint`: tokens verified independently with jwt-simple,
//! install keys checked against openssl, and request signatures verified
//! with the filter's own `appguard::signing::verify`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use appguard::signing::{verify, InstallKey, Message, SigningPolicy};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{
    cli, cli_with_stdin, curl_line_of, install_key_and_token, loopback, ok, openssl_run, run_curl,
    s, verify_captured,
};
use jwt_simple::prelude::*;
use serde_json::{Map, Value};

type Custom = Map<String, Value>;

/// A 32-byte test secret (the length HS256 needs), base64.
fn secret() -> (Vec<u8>, String) {
    let bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    let b64 = STANDARD.encode(&bytes);
    (bytes, b64)
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn hs256_token_verifies_with_its_claims() {
    let (bytes, b64) = secret();
    let token = ok(&[
        "mint",
        "--alg",
        "HS256",
        "--secret-base64",
        &b64,
        "--kid",
        "dev",
        "--iss",
        "https://issuer.example",
        "--aud",
        "api",
        "--sub",
        "1:123:android:abc",
        "--claim",
        "app=com.example.shop",
        "--claim",
        "level=3",
        "--claim",
        "tags=[\"a\",\"b\"]",
        "--jti",
        "id-1",
        "--lifetime",
        "120",
        "--bind-header",
        "Bearer abc",
        "--bind-header",
        "x",
    ]);
    let token = token.trim();
    let key = HS256Key::from_bytes(&bytes);
    let opts = VerificationOptions {
        allowed_issuers: Some(set(&["https://issuer.example"])),
        allowed_audiences: Some(set(&["api"])),
        required_key_id: Some("dev".into()),
        required_subject: Some("1:123:android:abc".into()),
        ..Default::default()
    };
    let claims = key.verify_token::<Custom>(token, Some(opts)).unwrap();
    assert_eq!(claims.jwt_id.as_deref(), Some("id-1"));
    let iat = claims.issued_at.unwrap().as_secs();
    let exp = claims.expires_at.unwrap().as_secs();
    assert_eq!(exp - iat, 120);
    let c = &claims.custom;
    assert_eq!(c["app"], "com.example.shop");
    assert_eq!(c["level"], 3);
    assert_eq!(c["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        c["pay"],
        appguard::token::binding_digest(&["Bearer abc", "x"])
    );
    // The secret itself never appears.
    assert!(!token.contains(&b64));
}

#[test]
fn secret_from_file_and_random_jti() {
    let (bytes, b64) = secret();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret.b64");
    std::fs::write(&f, format!("{b64}\n")).unwrap();
    let t1 = ok(&[
        "mint",
        "--alg",
        "HS256",
        "--secret-file",
        s(&f),
        "--random-jti",
    ]);
    let t2 = ok(&[
        "mint",
        "--alg",
        "HS256",
        "--secret-file",
        s(&f),
        "--random-jti",
    ]);
    let key = HS256Key::from_bytes(&bytes);
    let j1 = key
        .verify_token::<Custom>(t1.trim(), None)
        .unwrap()
        .jwt_id
        .unwrap();
    let j2 = key
        .verify_token::<Custom>(t2.trim(), None)
        .unwrap()
        .jwt_id
        .unwrap();
    assert_eq!(j1.len(), 32);
    assert_ne!(j1, j2);
    // A secret wrapped at 64 columns, as `openssl rand -base64 64` writes it.
    let long: Vec<u8> = (0..64u8).collect();
    let wrapped = STANDARD.encode(&long);
    let (a, b) = wrapped.split_at(64);
    std::fs::write(&f, format!("{a}\n{b}\n")).unwrap();
    let t = ok(&["mint", "--alg", "HS512", "--secret-file", s(&f)]);
    HS512Key::from_bytes(&long)
        .verify_token::<Custom>(t.trim(), None)
        .unwrap();
    // Not base64 at all: the file is named, its content is not shown.
    std::fs::write(&f, "not*base64*secret\n").unwrap();
    let r = cli(&["mint", "--alg", "HS256", "--secret-file", s(&f)]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("secret.b64"), "{}", r.stderr);
    assert!(!r.all().contains("not*base64*secret"), "{}", r.all());
}

#[test]
fn claims_the_filter_would_read_otherwise_are_refused() {
    let (bytes, b64) = secret();
    let mint = |claim: &str| {
        cli(&[
            "mint",
            "--alg",
            "HS256",
            "--secret-base64",
            &b64,
            "--claim",
            claim,
        ])
    };
    let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    // 15 levels within the claim (16 with the claims object): minted.
    let r = mint(&format!("n={}", nested(15)));
    assert_eq!(r.code, 0, "{}", r.all());
    let claims = HS256Key::from_bytes(&bytes)
        .verify_token::<Custom>(r.stdout.trim(), None)
        .unwrap();
    assert!(claims.custom["n"].is_array());
    // One more, or far more: refused, exit 1.
    for levels in [16, 200] {
        let r = mint(&format!("n={}", nested(levels)));
        assert_eq!(r.code, 1, "{levels}: {}", r.all());
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert!(r.stderr.contains("levels deep"), "{}", r.stderr);
    }
    // An integer beyond 64 bits would be minted as a float: refused.
    let r = mint("id=123456789012345678901");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("beyond 64 bits"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // Quoted, the digits are a string.
    let r = mint(r#"id="123456789012345678901""#);
    assert_eq!(r.code, 0, "{}", r.all());
    // A malformed --claim is still a usage error.
    assert_eq!(mint("novalue").code, 2);
}

#[test]
fn hs512_needs_a_64_byte_secret_like_the_filter() {
    let (_, b64) = secret();
    let r = cli(&["mint", "--alg", "HS512", "--secret-base64", &b64]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("at least 64 bytes"), "{}", r.stderr);
    assert!(!r.all().contains(&b64), "the secret was printed");
}

#[test]
fn mint_refuses_mismatched_keys_and_reserved_claims() {
    let (_, b64) = secret();
    // An HMAC algorithm with a PEM key, and a claim that has its own option.
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("ec.pem");
    openssl_run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        s(&pem),
    ]);
    // Each refused with exit 1 and a message that names the problem.
    let refused = |args: &[&str], says: &str| {
        let r = cli(args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.all());
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    };
    refused(
        &["mint", "--alg", "HS256", "--key-pem", s(&pem)],
        "HS256 signs with a shared secret",
    );
    refused(
        &["mint", "--alg", "RS256", "--key-pem", s(&pem)],
        "is not a RS256 private key",
    );
    // The same key as SEC1 (`openssl ec`): the message says how to convert.
    let sec1 = dir.path().join("ec-sec1.pem");
    openssl_run(&["ec", "-in", s(&pem), "-out", s(&sec1)]);
    refused(
        &["mint", "--alg", "ES256", "--key-pem", s(&sec1)],
        "openssl pkcs8 -topk8 -nocrypt",
    );
    refused(
        &["mint", "--alg", "ES256", "--secret-base64", &b64],
        "ES256 signs with a private key",
    );
    refused(
        &[
            "mint",
            "--alg",
            "HS256",
            "--secret-base64",
            &b64,
            "--claim",
            "exp=1",
        ],
        "claim `exp` has its own option",
    );
    refused(
        &[
            "mint",
            "--alg",
            "HS256",
            "--secret-base64",
            &b64,
            "--bind-header",
            "v",
            "--claim",
            "pay=x",
        ],
        "claim `pay` is set by --bind-header",
    );
    // A lifetime past one day, which no provider accepts, or one that used
    // to overflow in jwt-simple: refused.
    for lifetime in ["86401", "31622401", "3000000000"] {
        let r = cli(&[
            "mint",
            "--alg",
            "HS256",
            "--secret-base64",
            &b64,
            "--lifetime",
            lifetime,
        ]);
        assert_eq!(r.code, 1, "--lifetime {lifetime}: {}", r.all());
        assert!(r.stderr.contains("--lifetime"), "{}", r.stderr);
        assert!(!r.all().contains("panicked"), "{}", r.all());
    }
    // Usage errors: no key, unknown algorithm.
    assert_eq!(cli(&["mint", "--alg", "HS256"]).code, 2);
    assert_eq!(
        cli(&["mint", "--alg", "none", "--secret-base64", &b64]).code,
        2
    );
}

#[test]
fn asymmetric_tokens_verify_with_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "ES256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            "ES384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        ("EdDSA", &["-algorithm", "ed25519"]),
        (
            "RS256",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
    ];
    for (alg, gen) in cases {
        let private = dir.path().join(format!("{alg}.pem"));
        let public = dir.path().join(format!("{alg}.pub.pem"));
        let mut args = vec!["genpkey"];
        args.extend_from_slice(gen);
        args.extend_from_slice(&["-out", s(&private)]);
        openssl_run(&args);
        openssl_run(&["pkey", "-in", s(&private), "-pubout", "-out", s(&public)]);
        let public = std::fs::read_to_string(&public).unwrap();
        let token = ok(&[
            "mint",
            "--alg",
            alg,
            "--key-pem",
            s(&private),
            "--kid",
            "k",
            "--sub",
            "me",
        ]);
        let token = token.trim();
        let sub = match *alg {
            "ES256" => ES256PublicKey::from_pem(&public)
                .unwrap()
                .verify_token::<Custom>(token, None),
            "ES384" => ES384PublicKey::from_pem(&public)
                .unwrap()
                .verify_token::<Custom>(token, None),
            "EdDSA" => Ed25519PublicKey::from_pem(&public)
                .unwrap()
                .verify_token::<Custom>(token, None),
            _ => RS256PublicKey::from_pem(&public)
                .unwrap()
                .verify_token::<Custom>(token, None),
        }
        .unwrap_or_else(|e| panic!("{alg}: {e}"))
        .subject;
        assert_eq!(sub.as_deref(), Some("me"), "{alg}");
    }
}

#[test]
fn install_keys_match_openssl_and_are_private() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [("p256.pem", None), ("ed.pem", Some("--ed25519"))] {
        let out = dir.path().join(name);
        let mut args = vec!["mint", "install-key", "--out", s(&out)];
        args.extend(extra);
        let r = cli(&args);
        assert_eq!(r.code, 0, "{}", r.all());
        let ipk = r.stdout.trim();
        // openssl reads the private key and derives the same public key.
        let spki = openssl_run(&["pkey", "-in", s(&out), "-pubout", "-outform", "DER"]);
        assert_eq!(ipk, STANDARD.encode(spki), "{name}");
        InstallKey::from_ipk(ipk).unwrap();
        // Nothing secret on the terminal.
        let pem = std::fs::read_to_string(&out).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!r.all().contains(&body));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{name} readable by others: {mode:o}");
        }
        // Never overwritten by accident.
        let r = cli(&["mint", "install-key", "--out", s(&out)]);
        assert_eq!(r.code, 2, "{}", r.all());
    }
}

#[cfg(unix)]
#[test]
fn install_key_force_over_a_world_readable_file_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("key.pem");
    std::fs::write(&out, "placeholder\n").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = cli(&["mint", "install-key", "--out", s(&out), "--force"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "private key left at mode {mode:o}");
    let spki = openssl_run(&["pkey", "-in", s(&out), "-pubout", "-outform", "DER"]);
    assert_eq!(r.stdout.trim(), STANDARD.encode(spki));
}

/// The signed request parsed back from `sign-request`'s output.
struct SignedOutput {
    headers: Vec<(String, String)>,
    curl: String,
}

fn parse_sign_output(out: &str) -> SignedOutput {
    let mut headers = Vec::new();
    let mut curl = String::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("curl ") {
            curl = format!("curl {rest}");
        } else if let Some((name, value)) = line.split_once(": ") {
            headers.push((name.to_ascii_lowercase(), value.to_owned()));
        }
    }
    SignedOutput { headers, curl }
}

fn token_claim(token: &str, name: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v[name].as_str().unwrap().to_owned()
}

#[test]
fn signed_requests_verify_with_the_filters_verifier() {
    let (_, b64) = secret();
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [("p256.pem", None), ("ed.pem", Some("--ed25519"))] {
        let key_file = dir.path().join(name);
        let mut args = vec!["mint", "install-key", "--out", s(&key_file)];
        args.extend(extra);
        let ipk = ok(&args).trim().to_owned();

        // The token carries the install key's public half.
        let token = ok(&[
            "mint",
            "--alg",
            "HS256",
            "--secret-base64",
            &b64,
            "--ipk-from",
            s(&key_file),
        ]);
        let token = token.trim().to_owned();
        assert_eq!(token_claim(&token, "ipk"), ipk);

        let body = r#"{"to": "+447700900123"}"#;
        let r = cli(&[
            "mint",
            "sign-request",
            "--install-key",
            s(&key_file),
            "--method",
            "POST",
            "--url",
            "https://api.example.com/v1/sms?lang=en",
            "--header",
            "Content-Type: application/json",
            "--body",
            body,
            "--token-header",
            "approov-token",
            "--token",
            &token,
        ]);
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(r.stderr.is_empty(), "unexpected warning: {}", r.stderr);
        let out = parse_sign_output(&r.stdout);
        for h in ["content-digest", "signature-input", "signature"] {
            assert!(
                out.headers.iter().any(|(n, _)| n == h),
                "no {h}: {}",
                r.stdout
            );
        }
        // Inline bodies go as they are (a leading `@` is no file name), and
        // the path as signed.
        assert!(out.curl.contains("--data-raw"), "{}", out.curl);
        assert!(out.curl.contains("--path-as-is"), "{}", out.curl);
        assert!(out.curl.contains("'approov-token: "), "{}", out.curl);

        // The request as the filter sees it: the token header, the given
        // headers and the three produced ones.
        let mut headers = vec![
            ("approov-token".to_owned(), token.clone()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ];
        headers.extend(out.headers.iter().cloned());
        let install_key = InstallKey::from_ipk(&token_claim(&token, "ipk")).unwrap();
        let message = |body: &'static [u8]| {
            Message::request(
                "POST",
                "https",
                "api.example.com",
                "/v1/sms",
                Some("lang=en"),
                &headers,
                Some(body),
            )
        };
        let policy = SigningPolicy::default();
        let now = appguard_cli::now();
        let v = verify(
            &policy,
            &message(body.as_bytes()),
            &install_key,
            "approov-token",
            now,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            v.covered.contains(&"\"@query\"".to_owned()),
            "{:?}",
            v.covered
        );
        assert!(v.content_digest.is_some());
        // A changed body does not verify.
        assert!(verify(
            &policy,
            &message(br#"{"to": "+447700900999"}"#),
            &install_key,
            "approov-token",
            now
        )
        .is_err());
        // Another install's key does not verify.
        let other = dir.path().join(format!("other-{name}"));
        let mut args = vec!["mint", "install-key", "--out", s(&other)];
        args.extend(extra);
        let other_ipk = ok(&args);
        let other_key = InstallKey::from_ipk(other_ipk.trim()).unwrap();
        assert!(verify(
            &policy,
            &message(body.as_bytes()),
            &other_key,
            "approov-token",
            now
        )
        .is_err());
    }
}

#[test]
fn ipk_from_public_key_pem_and_a_mismatch_warning() {
    let (_, b64) = secret();
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("k.pem");
    let public = dir.path().join("k.pub.pem");
    openssl_run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        s(&private),
    ]);
    openssl_run(&["pkey", "-in", s(&private), "-pubout", "-out", s(&public)]);
    let from_private = ok(&[
        "mint",
        "--alg",
        "HS256",
        "--secret-base64",
        &b64,
        "--ipk-from",
        s(&private),
    ]);
    let from_public = ok(&[
        "mint",
        "--alg",
        "HS256",
        "--secret-base64",
        &b64,
        "--ipk-from",
        s(&public),
    ]);
    assert_eq!(
        token_claim(from_private.trim(), "ipk"),
        token_claim(from_public.trim(), "ipk")
    );

    // Signing with a key that is not the token's: signed, with a warning.
    let other = dir.path().join("other.pem");
    ok(&["mint", "install-key", "--out", s(&other)]);
    let r = cli(&[
        "mint",
        "sign-request",
        "--install-key",
        s(&other),
        "--url",
        "https://api.example.com/",
        "--token",
        from_private.trim(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("warning"), "{}", r.stderr);
    // No body: no Content-Digest.
    assert!(!r.stdout.contains("Content-Digest"), "{}", r.stdout);
}

#[test]
fn a_token_without_an_install_key_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("k.pem");
    ok(&["mint", "install-key", "--out", s(&key_file)]);
    let sign = |token: &str| {
        cli(&[
            "mint",
            "sign-request",
            "--install-key",
            s(&key_file),
            "--url",
            "https://api.example.com/",
            "--token",
            token,
        ])
    };
    // Not a JWT at all: signed (the headers may still be of use), with a
    // warning that the filter will refuse it.
    let r = sign("opaque-session-token");
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("Signature: "), "{}", r.stdout);
    assert!(
        r.stderr.contains("warning: --token is not a JWT"),
        "{}",
        r.stderr
    );
    // A JWT without an `ipk` claim.
    let (_, b64) = secret();
    let token = ok(&["mint", "--alg", "HS256", "--secret-base64", &b64]);
    let r = sign(token.trim());
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("warning: the token has no `ipk` claim"),
        "{}",
        r.stderr
    );
}

#[test]
fn standard_input_is_read_for_one_argument_only() {
    // Refused before anything is read (stdin is closed here).
    let r = cli(&[
        "mint",
        "sign-request",
        "--install-key",
        "-",
        "--body-file",
        "-",
        "--url",
        "https://api.example.com/v1/sms",
        "--token",
        "x.y.z",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("both read standard input"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_host_header_is_refused_as_the_authority_comes_from_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("k.pem");
    ok(&["mint", "install-key", "--out", s(&key_file)]);
    let r = cli(&[
        "mint",
        "sign-request",
        "--install-key",
        s(&key_file),
        "--url",
        "https://api.example.com/v1/sms",
        "--header",
        "Host: other.example.com",
        "--token",
        "e30.e30.sig",
    ]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.is_empty(), "signed anyway: {}", r.stdout);
    assert!(r.stderr.contains("--url"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Host") || r.stderr.contains("host"),
        "{}",
        r.stderr
    );
}

/// Argument errors name no credential: a `--header` without its colon is
/// named by the text before its first space, and a bad `--url` is shown
/// without its query or user information.
#[test]
fn argument_errors_echo_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("k.pem");
    ok(&["mint", "install-key", "--out", s(&key_file)]);
    let sign = |extra: &[&str]| {
        let mut args = vec![
            "mint",
            "sign-request",
            "--install-key",
            s(&key_file),
            "--token",
            "e30.e30.sig",
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let r = sign(&[
        "--url",
        "https://api.example.com/",
        "-H",
        "Authorization Bearer SESSION_SECRET",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(!r.all().contains("SESSION_SECRET"), "{}", r.all());
    assert!(r.stderr.contains("\"Authorization\""), "{}", r.stderr);
    let r = sign(&[
        "--url",
        "https://api.example.com/",
        "-H",
        "X-Api-Key SESSION_SECRET: x",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(!r.all().contains("SESSION_SECRET"), "{}", r.all());
    for url in [
        "https://api.example.com:99999/?api_key=URL_SECRET",
        "https://user:URL_SECRET@api.example.com/",
    ] {
        let r = sign(&["--url", url]);
        assert_eq!(r.code, 1, "{}", r.all());
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert!(!r.all().contains("URL_SECRET"), "{}", r.all());
        assert!(r.stderr.contains("api.example.com"), "{}", r.stderr);
    }
}

/// A body without `--header content-type`: curl would send its own
/// `application/x-www-form-urlencoded`, unsigned. The CLI signs and sends
/// `content-type: application/json` instead, covered, and says so; what
/// curl sends verifies.
#[test]
fn a_body_without_content_type_is_signed_and_sent_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = install_key_and_token(dir.path(), &secret().1);
    let (listener, port) = loopback();
    let authority = format!("127.0.0.1:{port}");
    let r = cli(&[
        "mint",
        "sign-request",
        "--install-key",
        s(&key),
        "--method",
        "POST",
        "--url",
        &format!("http://{authority}/v1/sms"),
        "--body",
        r#"{"to":"+447700900123"}"#,
        "--token",
        &token,
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("content-type: application/json"),
        "{}",
        r.stderr
    );
    let sent = run_curl(&curl_line_of(&r.stdout), listener);
    assert_eq!(sent.header("content-type"), Some("application/json"));
    let ipk = InstallKey::from_ipk(&token_claim(&token, "ipk")).unwrap();
    let covered = verify_captured(&sent, &authority, "approov-token", &ipk).unwrap();
    assert!(
        covered.iter().any(|c| c == "\"content-type\""),
        "{covered:?}"
    );
}

/// An empty header value is signed as present; curl reads `-H 'Name:'` as
/// "do not send Name", so the curl line says `-H 'Name;'`, which sends it
/// empty. Here the header is a method override, which the signature must
/// cover: what curl sends verifies.
#[test]
fn an_empty_header_value_is_sent_as_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = install_key_and_token(dir.path(), &secret().1);
    let (listener, port) = loopback();
    let authority = format!("127.0.0.1:{port}");
    let r = cli(&[
        "mint",
        "sign-request",
        "--install-key",
        s(&key),
        "--url",
        &format!("http://{authority}/v1/profile"),
        "--header",
        "x-http-method-override:",
        "--token",
        &token,
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("\"x-http-method-override\""),
        "{}",
        r.stdout
    );
    let curl = curl_line_of(&r.stdout);
    assert!(curl.contains("-H 'x-http-method-override;'"), "{curl}");
    let sent = run_curl(&curl, listener);
    assert_eq!(sent.header("x-http-method-override"), Some(""));
    let ipk = InstallKey::from_ipk(&token_claim(&token, "ipk")).unwrap();
    verify_captured(&sent, &authority, "approov-token", &ipk).unwrap();
}

/// `--body-file -`: the curl line carries the body read from standard
/// input inline (`@-` would make curl read its own standard input), and
/// what curl sends verifies. A body that cannot go in a shell argument is
/// refused with a request for a file.
#[test]
fn a_body_from_standard_input_goes_inline_in_the_curl_line() {
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = install_key_and_token(dir.path(), &secret().1);
    let (listener, port) = loopback();
    let authority = format!("127.0.0.1:{port}");
    let url = format!("http://{authority}/v1/sms");
    let args = [
        "mint",
        "sign-request",
        "--install-key",
        s(&key),
        "--method",
        "POST",
        "--url",
        &url,
        "--header",
        "content-type: application/json",
        "--body-file",
        "-",
        "--token",
        &token,
    ];
    let body = "{\"to\": \"+447700900123\",\n \"text\": \"it's @here\"}\n";
    let r = cli_with_stdin(&args, Some(body));
    assert_eq!(r.code, 0, "{}", r.all());
    let curl = curl_line_of(&r.stdout);
    assert!(!curl.contains("@-"), "{curl}");
    assert!(curl.contains("--data-raw"), "{curl}");
    let sent = run_curl(&curl, listener);
    assert_eq!(sent.body, body.as_bytes());
    let ipk = InstallKey::from_ipk(&token_claim(&token, "ipk")).unwrap();
    verify_captured(&sent, &authority, "approov-token", &ipk).unwrap();

    let r = cli_with_stdin(&args, Some("a\0b"));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(r.stderr.contains("--body-file FILE"), "{}", r.stderr);
}

/// A URL no client sends as given (a space, a control character, a
/// non-ASCII character) is refused, naming the problem, not signed.
#[test]
fn a_url_curl_would_refuse_is_not_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = install_key_and_token(dir.path(), &secret().1);
    for (url, why) in [
        ("https://api.example.com/v1/a b", "space"),
        ("https://api.example.com/v1/caf\u{e9}", "non-ASCII"),
        ("https://api.example.com/v1/a\tb", "control character"),
    ] {
        let r = cli(&[
            "mint",
            "sign-request",
            "--install-key",
            s(&key),
            "--url",
            url,
            "--token",
            &token,
        ]);
        assert_eq!(r.code, 1, "{url:?}: {}", r.all());
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert!(r.stderr.contains(why), "{url:?}: {}", r.stderr);
        assert!(r.stderr.contains("percent-encode"), "{}", r.stderr);
    }
}

/// A provider reading `from: [{"header": "authorization", "prefix":
/// "Bearer "}]` needs `Bearer <jwt>`: `--token "Bearer $TOKEN"` is sent as
/// given, and the token checks (JWT, `ipk` of this key) look past the
/// prefix: no false warning, and another install's key is still caught.
#[test]
fn a_bearer_prefixed_token_is_checked_without_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = install_key_and_token(dir.path(), &secret().1);
    let sign = |key_file: &std::path::Path| {
        cli(&[
            "mint",
            "sign-request",
            "--install-key",
            s(key_file),
            "--url",
            "https://api.example.com/v1/me",
            "--token-header",
            "authorization",
            "--token",
            &format!("Bearer {token}"),
        ])
    };
    let r = sign(&key);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert!(
        curl_line_of(&r.stdout).contains(&format!("'authorization: Bearer {token}'")),
        "{}",
        r.stdout
    );
    let other = dir.path().join("other.pem");
    ok(&["mint", "install-key", "--out", s(&other)]);
    let r = sign(&other);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("is not this install key's public half"),
        "{}",
        r.stderr
    );
}

/// `--component Content-Type` names the header as `--header Content-Type`
/// does (lower case, as RFC 9421 wants), instead of failing with
/// "invalid component name"; what curl sends verifies.
#[test]
fn a_component_header_name_in_any_case_is_covered() {
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = install_key_and_token(dir.path(), &secret().1);
    let (listener, port) = loopback();
    let authority = format!("127.0.0.1:{port}");
    let r = cli(&[
        "mint",
        "sign-request",
        "--install-key",
        s(&key),
        "--method",
        "POST",
        "--url",
        &format!("http://{authority}/v1/sms"),
        "--header",
        "Content-Type: application/json",
        "--body",
        "{}",
        "--token",
        &token,
        "--component",
        "@method",
        "--component",
        "@authority",
        "--component",
        "@path",
        "--component",
        "Approov-Token",
        "--component",
        "Content-Digest",
        "--component",
        "Content-Type",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("\"content-type\""), "{}", r.stdout);
    let sent = run_curl(&curl_line_of(&r.stdout), listener);
    let ipk = InstallKey::from_ipk(&token_claim(&token, "ipk")).unwrap();
    let covered = verify_captured(&sent, &authority, "approov-token", &ipk).unwrap();
    assert!(
        covered.iter().any(|c| c == "\"content-type\""),
        "{covered:?}"
    );
}

/// A URL holding `{}` or `[]` (a JSON value or a bracketed parameter name in
/// the query, an OpenAPI-style path) is signed as given, but curl reads
/// those characters as its URL "globbing" unless told `--globoff`: `{a}`
/// is sent as `a`, `[1-2]` as two requests. The curl line must send the
/// URL that was signed.
#[test]
fn the_curl_line_sends_a_url_with_braces_as_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = install_key_and_token(dir.path(), &secret().1);
    let (listener, port) = loopback();
    let authority = format!("127.0.0.1:{port}");
    let r = cli(&[
        "mint",
        "sign-request",
        "--install-key",
        s(&key),
        "--url",
        &format!("http://{authority}/v1/items?filter={{a}}&ids[]=7"),
        "--token",
        &token,
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let sent = run_curl(&curl_line_of(&r.stdout), listener);
    assert_eq!(sent.target, "/v1/items?filter={a}&ids[]=7");
    let ipk = InstallKey::from_ipk(&token_claim(&token, "ipk")).unwrap();
    verify_captured(&sent, &authority, "approov-token", &ipk).unwrap();
}
