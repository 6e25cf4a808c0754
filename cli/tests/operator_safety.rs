//! What operators get wrong on a command line, and what `appguard-cli`
//! must still get right: secrets split by the shell, bodies from pipes,
//! leases above the service's limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use appguard::signing::InstallKey;
use common::{
    cli, cli_with_stdin, curl_line_of, install_key_and_token, loopback, ok, repo, run_curl, s,
    verify_captured,
};

/// The HMAC secret of the tokens minted here (32 bytes of 7, base64).
const SECRET_B64: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
use std::process::{Command, Stdio};

/// `openssl rand -base64 64` wraps its output at 64 columns (the CLI's own
/// `--secret-file` reader says so), so `--secret-base64 $SECRET` with the
/// variable unquoted passes the secret as two arguments. clap's error then
/// prints the second half of the HMAC secret to standard error (a CI log, a
/// terminal), though the README promises "Secrets are never printed", and
/// `hash-key` already takes extra arguments precisely so that clap does not
/// echo a second key.
#[test]
fn mint_with_a_wrapped_unquoted_secret_does_not_echo_it() {
    // 64 bytes of secret as `openssl rand -base64 64` prints it: 64 + 24
    // characters on two lines.
    let line1 = "rOLUD/dkUJSL3mmqDeq5pOG0DzqAxPBi+Uvsdwn8IRp9Zye7RWQtcKjYSGEbEyAU";
    let line2 = "4WJjVXbnCmgzbCo8BTRTZQ==";
    let r = cli(&["mint", "--alg", "HS512", "--secret-base64", line1, line2]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        !r.all().contains(line2),
        "part of the HMAC secret echoed:\n{}",
        r.all()
    );
}

/// A secret with a space, unquoted: the shell passes its end as an
/// argument of its own, shorter than the 8 bytes below which a value is
/// not hidden everywhere in clap's message; where clap quotes it, it is.
#[test]
fn a_short_stray_piece_of_a_secret_is_not_quoted_back() {
    let r = cli(&["check-config", "missing.json", "Zq9!x"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains("Zq9!x"), "piece echoed:\n{}", r.all());
    assert!(r.all().contains("<an argument, not shown>"), "{}", r.all());
}

/// The README's sign-request section: "For a provider whose `from[]` has
/// `"prefix": "Bearer "`, pass `--token "Bearer $TOKEN"`". Unquoted, the
/// token becomes a second argument, and clap's "unexpected argument" error
/// prints the whole token.
#[test]
fn sign_request_with_an_unquoted_bearer_token_does_not_echo_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    ok(&["mint", "install-key", "--out", s(&key)]);
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJUT0tFTl9TRUNSRVQifQ.c2ln";
    let r = cli(&[
        "mint",
        "sign-request",
        "--install-key",
        s(&key),
        "--url",
        "https://api.example.com/",
        "--token",
        "Bearer",
        token,
    ]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains(token), "token echoed:\n{}", r.all());
}

/// A rule with a lease whose service limit is per second: the services
/// answer in whole seconds, so no lease of it is kept (README, *Leases*):
/// each request still costs a call and each worker's first ask has the
/// whole lease counted. `--ratelimit-config` says so.
#[test]
fn ratelimit_config_notes_a_lease_on_a_per_second_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("appguard.json");
    std::fs::write(
        &config,
        r#"{
  "rate_limit_service": {"cluster": "rls", "domain": "appguard"},
  "routes": [
    {"name": "api", "match": {"prefix": "/api/"}, "action": "allow",
     "rate_limits": [
       {"name": "per-tenant", "entries": [{"type": "header", "name": "x-tenant"}], "lease": 10}
     ]}
  ]
}"#,
    )
    .unwrap();
    let yaml = |unit: &str| {
        let path = dir.path().join(format!("ratelimit-{unit}.yaml"));
        std::fs::write(
            &path,
            format!(
                "domain: appguard\ndescriptors:\n  - key: x-tenant\n    rate_limit: {{unit: {unit}, requests_per_unit: 100}}\n"
            ),
        )
        .unwrap();
        path
    };
    let per_second = yaml("second");
    let r = cli(&[
        "check-config",
        s(&config),
        "--ratelimit-config",
        s(&per_second),
    ]);
    assert!(r.stdout.contains("valid:"), "{}", r.all());
    assert!(
        r.stderr
            .contains("lease 10 on the limit `appguard.x-tenant`")
            && r.stderr.contains("per second"),
        "no note that a lease of a per-second limit is never kept:\n{}",
        r.all()
    );
    // A per-minute limit keeps its leases: nothing to say.
    let per_minute = yaml("minute");
    let r = cli(&[
        "check-config",
        s(&config),
        "--ratelimit-config",
        s(&per_minute),
    ]);
    assert!(r.stdout.contains("valid:"), "{}", r.all());
    assert!(!r.stderr.contains("lease"), "{}", r.all());
}

/// A rule with `lease: 20` whose service limit is 10 a minute: the filter's
/// first ask of every window is for the whole lease (`ServiceCache::lease_ask`
/// returns `size` while nothing is known), the service counts 20 > 10 and
/// answers OVER_LIMIT, the filter caches the 429 until the window resets, and
/// the next window starts the same way: the rule refuses every request, for
/// ever. `--ratelimit-config` loads both files to say whether the service's
/// limits work for the descriptors the configuration sends, and warns of far
/// milder things (quota_mode, share_threshold), but says nothing here.
#[test]
fn ratelimit_config_warns_of_a_lease_larger_than_the_services_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("appguard.json");
    std::fs::write(
        &config,
        r#"{
  "rate_limit_service": {"cluster": "rls", "domain": "appguard"},
  "routes": [
    {"name": "api", "match": {"prefix": "/api/"}, "action": "allow",
     "rate_limits": [
       {"name": "per-tenant", "entries": [{"type": "header", "name": "x-tenant"}], "lease": 20}
     ]}
  ]
}"#,
    )
    .unwrap();
    let yaml = dir.path().join("ratelimit.yaml");
    std::fs::write(
        &yaml,
        "domain: appguard\ndescriptors:\n  - key: x-tenant\n    rate_limit: {unit: minute, requests_per_unit: 10}\n",
    )
    .unwrap();
    let r = cli(&["check-config", s(&config), "--ratelimit-config", s(&yaml)]);
    assert!(r.stdout.contains("valid:"), "{}", r.all());
    assert!(
        r.stderr.contains("lease"),
        "no warning that a lease of 20 against a limit of 10 is refused on every ask:\n{}",
        r.all()
    );
    // And with --strict, a CI step, the rollout goes ahead.
    let r = cli(&[
        "check-config",
        "--strict",
        s(&config),
        "--ratelimit-config",
        s(&yaml),
    ]);
    assert_eq!(r.code, 1, "--strict passes it:\n{}", r.all());
}

/// `--body-file -` is special-cased because "`@-` would make curl read its
/// own standard input" (README): the body goes inline. The same standard
/// input named `/dev/stdin` (or a process substitution, `--body-file
/// <(echo …)`, which is `/dev/fd/63`) is read and signed, but the curl line
/// says `--data-binary @/dev/stdin`: curl then reads its own standard input
/// (here: nothing) and sends a body other than the one signed, which the
/// filter refuses (content-digest does not match).
#[test]
fn a_body_from_dev_stdin_is_sent_as_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = install_key_and_token(dir.path(), SECRET_B64);
    let (listener, port) = loopback();
    let authority = format!("127.0.0.1:{port}");
    let url = format!("http://{authority}/v1/sms");
    let body = "{\"to\": \"+447700900123\"}";
    let r = cli_with_stdin(
        &[
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
            "/dev/stdin",
            "--token",
            &token,
        ],
        Some(body),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let curl = curl_line_of(&r.stdout);
    let sent = run_curl(&curl, listener);
    let ipk =
        InstallKey::from_ipk(&appguard_cli::sign::token_claim(&token, "ipk").unwrap()).unwrap();
    // What the filter makes of what curl sent.
    if let Err(e) = verify_captured(&sent, &authority, "approov-token", &ipk) {
        panic!(
            "the filter refuses the signed request ({e}): curl sent the body {:?}, not the \
             one signed; curl line: {curl}",
            String::from_utf8_lossy(&sent.body)
        );
    }
}

/// `appguard-cli mint sign-request --body-file /dev/stdin < body.json`:
/// standard input is a regular file, so `/dev/stdin` (a link to
/// `/proc/self/fd/0`, then to body.json) passes 762a5cd's `is_file()` test
/// and the curl line says `--data-binary @/dev/stdin`. Run later, curl reads
/// its own standard input (a terminal, or nothing) and sends another body
/// than the one signed: the filter refuses it (content-digest). The case
/// the commit meant to mend, in its most usual shell form.
#[test]
fn a_body_from_dev_stdin_redirected_from_a_file_is_inlined() {
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = install_key_and_token(dir.path(), SECRET_B64);
    let body_path = dir.path().join("body.json");
    std::fs::write(&body_path, "{\"to\": \"+447700900123\"}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_appguard-cli"))
        .args([
            "mint",
            "sign-request",
            "--install-key",
            s(&key),
            "--method",
            "POST",
            "--url",
            "http://127.0.0.1:9/v1/sms",
            "--header",
            "content-type: application/json",
            "--body-file",
            "/dev/stdin",
            "--token",
            &token,
        ])
        .current_dir(repo())
        .stdin(Stdio::from(std::fs::File::open(&body_path).unwrap()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let curl = curl_line_of(&stdout);
    assert!(
        !curl.contains("@/dev/stdin"),
        "curl will read its own standard input, not the body signed: {curl}"
    );
}

/// 762a5cd's `command_line_error` replaces every argument of 8 characters
/// or more in clap's message, subcommand names included: `check-config`,
/// `sign-request`, `install-key`, `fingerprint`, `hash-key`. The usage line
/// of every error under them names no command.
#[test]
fn a_command_line_error_keeps_the_subcommand_in_its_usage_line() {
    let r = cli(&["check-config", "appguard.yaml", "--no-such-option"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("Usage: appguard-cli check-config"),
        "usage line without its command:\n{}",
        r.stderr
    );
}

/// `--install-key - --body-file -` is refused ("both read standard
/// input"); 762a5cd makes `/dev/stdin` standard input for the body too, but
/// `--install-key - --body-file /dev/stdin` is still taken: the key reads
/// all of standard input, the body reads nothing, and the request is signed
/// (exit 0) for an empty body the operator never meant to send.
#[test]
fn install_key_and_body_both_from_standard_input_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("install.pem");
    ok(&["mint", "install-key", "--out", s(&key)]);
    let pem = std::fs::read_to_string(&key).unwrap();
    let r = common::cli_with_stdin(
        &[
            "mint",
            "sign-request",
            "--install-key",
            "-",
            "--method",
            "POST",
            "--url",
            "http://127.0.0.1:9/v1/sms",
            "--body-file",
            "/dev/stdin",
            "--token",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        ],
        Some(&pem),
    );
    assert_ne!(
        r.code,
        0,
        "signed an empty body, standard input read twice:\n{}",
        r.all()
    );
}
