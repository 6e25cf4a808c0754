//! `scripts/render-envoy.py --config FILE`: the configuration it inlines
//! into the Envoy YAML is the one `check-config` checked, byte for byte in
//! meaning.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{cli, repo, s};
use std::process::Command;

/// The Python that `make deps` installs, else the system's (PyYAML needed).
fn python() -> std::path::PathBuf {
    let venv = repo().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

#[test]
fn render_envoy_keeps_a_duplicate_key_the_filter_refuses() {
    // `required_claims` naming `tier` twice: the filter refuses it (serde_json
    // would keep the last one without a word, see `unique_members`).
    let config = r#"{"tokens":[{"name":"t","from":[{"header":"x-t"}],
        "keys":[{"alg":"HS256","secret_base64":"q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA="}],
        "required_claims":{"tier":"gold","tier":"free"}}],
        "routes":[{"name":"r","match":{"prefix":"/"},"tokens":["t"]}]}"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dup.json");
    std::fs::write(&file, config).unwrap();
    let checked = cli(&["check-config", s(&file)]);
    assert_eq!(
        checked.code,
        1,
        "check-config refuses it: {}",
        checked.all()
    );
    let out = Command::new(python())
        .arg(repo().join("scripts/render-envoy.py"))
        .args(["--wasm", "/nonexistent/appguard.wasm", "--config", s(&file)])
        .arg(repo().join("envoy/envoy.yaml"))
        .current_dir(repo())
        .output()
        .expect("run render-envoy.py");
    let rendered = String::from_utf8_lossy(&out.stdout);
    let said = String::from_utf8_lossy(&out.stderr);
    // The script refuses the file for the member written twice (not for
    // any other reason, such as a missing PyYAML), or what Envoy then
    // hands the filter still holds both members, refused as check-config
    // refuses them.
    if !out.status.success() {
        assert!(
            said.contains("'tier' is written twice"),
            "render-envoy.py failed for another reason: {said}"
        );
    }
    assert!(
        !out.status.success() || rendered.contains("gold"),
        "render-envoy.py inlined a configuration the filter accepts (required tier \"free\" \
         only) while check-config refused the file:\n{}",
        rendered
            .lines()
            .find(|l| l.contains("required_claims"))
            .unwrap_or("")
    );
}
