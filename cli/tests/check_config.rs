//! `appguard-cli check-config`: the filter's own verdicts on the shipped
//! examples, the broken examples in examples/bad/, Envoy and Istio files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{cli, ok, openssl_run, repo, s, Run};

/// `appguard-cli check-config [flags] FILE`, FILE being `text` written as
/// `name` in a fresh temporary directory (its name tells the CLI JSON from
/// YAML).
fn check_text(name: &str, text: &str, flags: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, text).unwrap();
    let mut args = vec!["check-config"];
    args.extend_from_slice(flags);
    args.push(s(&file));
    cli(&args)
}

#[test]
fn three_platform_example_is_valid_with_a_summary() {
    let out = ok(&["check-config", "examples/three-platform.json"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("valid: 5 routes, 3 apps, 4 API keys, 1 token provider"),
        "{out}"
    );
}

#[test]
fn every_shipped_example_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.ends_with(".json") && !name.ends_with(".demo.json") {
            ok(&["check-config", s(&path)]);
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} examples found");
}

#[test]
fn envoy_bootstrap_yaml_is_checked_inside() {
    let out = ok(&["check-config", "envoy/envoy.yaml"]);
    assert!(out.contains("http_filters[0].typed_config.config"), "{out}");
    assert!(out.contains("valid: 5 routes"), "{out}");
}

#[test]
fn istio_wasm_plugin_is_checked() {
    let out = ok(&["check-config", "examples/istio/wasmplugin.yaml"]);
    assert!(out.contains("WasmPlugin istio-system/appguard"), "{out}");
    assert!(out.contains("valid:"), "{out}");
}

#[test]
fn istio_delegated_wasm_plugin_is_checked_and_runs_after_jwt_authn() {
    // The RequestAuthentication is skipped; the WasmPlugin beside it is
    // checked, and is the delegated form examples/istio/README.md describes.
    let out = ok(&["check-config", "examples/istio/jwt-authn-delegated.yaml"]);
    assert!(out.contains("WasmPlugin istio-system/appguard"), "{out}");
    assert!(
        out.contains("valid: 2 routes, 2 apps, 0 API keys, 1 token provider"),
        "{out}"
    );
    let text =
        std::fs::read_to_string(repo().join("examples/istio/jwt-authn-delegated.yaml")).unwrap();
    let plugin = serde_norway::Deserializer::from_str(&text)
        .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|doc| doc["kind"] == "WasmPlugin")
        .unwrap();
    assert_eq!(plugin["spec"]["phase"], "AUTHZ");
    let token = &plugin["spec"]["pluginConfig"]["tokens"][0];
    assert_eq!(
        token["verified_by"]["filter"],
        "envoy.filters.http.jwt_authn"
    );
    assert_eq!(token["verified_by"]["key"], "payload");
    assert!(token["issuer"].is_string(), "{token}");
}

#[test]
fn the_istio_plugin_config_is_three_platform_json_but_for_the_cluster() {
    // examples/istio/README.md promises the copy; this keeps it true.
    let text = std::fs::read_to_string(repo().join("examples/istio/wasmplugin.yaml")).unwrap();
    let plugin = serde_norway::Deserializer::from_str(&text)
        .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|doc| doc["kind"] == "WasmPlugin")
        .unwrap();
    let mut from_istio = plugin["spec"]["pluginConfig"].clone();
    let json = std::fs::read_to_string(repo().join("examples/three-platform.json")).unwrap();
    let mut shipped: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        from_istio["rate_limit_service"]["cluster"],
        "outbound|8081||ratelimit.appguard.svc.cluster.local"
    );
    from_istio["rate_limit_service"]["cluster"] = serde_json::Value::Null;
    shipped["rate_limit_service"]["cluster"] = serde_json::Value::Null;
    assert_eq!(from_istio, shipped);
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_RELOAD");
}

#[test]
fn every_shipped_kubernetes_and_prometheus_yaml_parses() {
    // Manifests that check-config does not read (no appguard configuration
    // inside) are still parsed, each document a mapping with its kind.
    for dir in ["examples/istio", "examples/prometheus"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
                .map(|d| {
                    <serde_json::Value as serde::Deserialize>::deserialize(d)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                })
                .collect();
            assert!(!docs.is_empty(), "{}", path.display());
            for doc in docs {
                let ok = doc.get("kind").is_some_and(|k| k.is_string())
                    || doc.get("groups").is_some_and(|g| g.is_array());
                assert!(ok, "{}: a document without kind or groups", path.display());
            }
        }
    }
}

/// Each file in examples/bad/ and the field its mistake is reported at.
const BAD: &[(&str, &str, &str)] = &[
    (
        "unknown-field.json",
        "routes[0].match.prefx",
        "unknown field `prefx`",
    ),
    ("bad-cidr.json", "network.ip_deny[1]", "prefix length"),
    (
        "short-hmac-secret.json",
        "tokens[0].keys[0].secret_base64",
        "at least 32 bytes",
    ),
    (
        "unknown-provider.json",
        "routes[0].tokens[0]",
        "no token provider named \"firebase\"",
    ),
    (
        "duplicate-route.json",
        "routes[2].name",
        "duplicate route name",
    ),
    ("bad-origin.json", "apps[0].origins[1]", "is not an origin"),
];

#[test]
fn bad_examples_are_refused_with_their_field() {
    let listed: Vec<_> = std::fs::read_dir(repo().join("examples/bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(
        listed.len(),
        BAD.len(),
        "examples/bad/ and BAD differ: {listed:?}"
    );
    for (file, path, words) in BAD {
        let r = cli(&["check-config", &format!("examples/bad/{file}")]);
        assert_eq!(r.code, 1, "{file}: {}", r.all());
        let want = format!("invalid configuration at `{path}`: ");
        assert!(r.all().contains(&want), "{file}: want {want}: {}", r.all());
        assert!(r.all().contains(words), "{file}: want {words}: {}", r.all());
    }
}

#[test]
fn unknown_field_in_yaml_plugin_config_and_in_envoy_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("plugin.yaml");
    std::fs::write(
        &plugin,
        "mode: monitor\nroutes:\n- name: a\n  match: {prefix: /, mehtods: [GET]}\n",
    )
    .unwrap();
    let r = cli(&["check-config", s(&plugin)]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.all().contains("`routes[0].match.mehtods`"), "{}", r.all());

    // envoy/envoy.yaml with a typo in its inline configuration.
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let broken = envoy.replacen("\"default_action\"", "\"default_acton\"", 1);
    assert_ne!(broken, envoy);
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, broken).unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all()
            .contains("invalid configuration at `default_acton`: unknown field"),
        "{}",
        r.all()
    );
}

/// `hold_headers_for_body` needs the Wasm filter's
/// `allow_on_headers_stop_iteration: true`: without it a request on a body
/// route would wait for a body Envoy never hands on, so check-config
/// refuses the pair in an Envoy configuration; the flag without it is a
/// note; a plugin configuration alone, or a WasmPlugin, gets the note.
#[test]
fn hold_headers_for_body_is_checked_against_the_wasm_filters_flag() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let hold = envoy.replacen(
        r#""default_action""#,
        r#""hold_headers_for_body": true, "default_action""#,
        1,
    );
    let flag = |text: &str| {
        text.replacen(
            "root_id: appguard\n",
            "root_id: appguard\n                allow_on_headers_stop_iteration: true\n",
            1,
        )
    };
    let check = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        cli(&["check-config", s(&file)])
    };
    // Hold without the flag: refused, naming both.
    assert_ne!(hold, envoy);
    let r = check("hold.yaml", &hold);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains("`hold_headers_for_body`")
            && r.all().contains("allow_on_headers_stop_iteration: true"),
        "{}",
        r.all()
    );
    // Both: valid, and nothing to say.
    assert_ne!(flag(&hold), hold);
    let r = check("both.yaml", &flag(&hold));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        !r.all().contains("allow_on_headers_stop_iteration"),
        "{}",
        r.all()
    );
    // The flag alone: valid, with a note saying what to add.
    let r = check("flag.yaml", &flag(&envoy));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.all().contains("without hold_headers_for_body"),
        "{}",
        r.all()
    );
    // A plugin configuration alone cannot be checked against the flag:
    // valid, with the note.
    let plugin = dir.path().join("plugin.json");
    std::fs::write(
        &plugin,
        r#"{"hold_headers_for_body": true, "routes": [{"name": "a", "match": {"prefix": "/"}}]}"#,
    )
    .unwrap();
    let r = cli(&["check-config", s(&plugin)]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.all().contains("allow_on_headers_stop_iteration: true"),
        "{}",
        r.all()
    );
}

/// Held, a body waits in Envoy's buffer, which the listener's
/// `per_connection_buffer_limit_bytes` caps: check-config says so when
/// `max_body_bytes` takes more (Envoy would answer 413 itself first).
#[test]
fn a_held_body_larger_than_the_listeners_buffer_limit_is_noted() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let held = envoy
        .replacen(
            r#""default_action""#,
            r#""hold_headers_for_body": true, "max_body_bytes": 65536, "default_action""#,
            1,
        )
        .replacen(
            "root_id: appguard\n",
            "root_id: appguard\n                allow_on_headers_stop_iteration: true\n",
            1,
        );
    let limited = |limit: &str| {
        held.replacen(
            "    filter_chains:\n",
            &format!("    per_connection_buffer_limit_bytes: {limit}\n    filter_chains:\n"),
            1,
        )
    };
    let check = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        cli(&["check-config", s(&file)])
    };
    assert_ne!(limited("32768"), held);
    let r = check("limited.yaml", &limited("32768"));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.all()
            .contains("per_connection_buffer_limit_bytes at 32768, below max_body_bytes 65536"),
        "{}",
        r.all()
    );
    // Envoy's default (1 MiB), or a limit that holds the largest body:
    // nothing to say; nor without hold_headers_for_body.
    for (name, text) in [
        ("default.yaml", held.clone()),
        ("enough.yaml", limited("65536")),
        (
            "buffered.yaml",
            envoy.replacen(
                "    filter_chains:\n",
                "    per_connection_buffer_limit_bytes: 32768\n    filter_chains:\n",
                1,
            ),
        ),
    ] {
        let r = check(name, &text);
        assert_eq!(r.code, 0, "{name}: {}", r.all());
        assert!(
            !r.all().contains("per_connection_buffer_limit_bytes"),
            "{name}: {}",
            r.all()
        );
    }
}

/// An appguard configuration with a stray field that happens to be an
/// Envoy bootstrap field name (`admin`, `node`, `stats_config`) is still an
/// appguard configuration: refused with the filter's own unknown-field
/// message (exit 1), not "nothing to check" (exit 2). A bootstrap without
/// appguard's fields is still a bootstrap.
#[test]
fn a_stray_bootstrap_field_in_an_appguard_configuration_is_the_filters_refusal() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        (
            "c.json",
            r#"{"mode": "enforce", "admin": {}, "routes": []}"#,
        ),
        (
            "c.yaml",
            "tokens: []
node: {id: x}
",
        ),
        (
            "d.yaml",
            "stats_config: {}
api_keys: {header: x-api-key, keys: []}
",
        ),
    ] {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        let r = cli(&["check-config", s(&f)]);
        assert_eq!(r.code, 1, "{name}: {}", r.all());
        assert!(r.stderr.contains("unknown field"), "{name}: {}", r.stderr);
        assert!(!r.stderr.contains("nothing to check"), "{}", r.stderr);
    }
    let filter =
        appguard::config::Config::from_json(br#"{"mode": "enforce", "admin": {}, "routes": []}"#)
            .unwrap_err()
            .to_string();
    let r = cli(&["check-config", s(&dir.path().join("c.json"))]);
    assert!(r.stderr.contains(&filter), "{filter}\n{}", r.stderr);

    let bootstrap = dir.path().join("b.yaml");
    std::fs::write(
        &bootstrap,
        "admin: {}
static_resources: {}
",
    )
    .unwrap();
    let r = cli(&["check-config", s(&bootstrap)]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("nothing to check"), "{}", r.stderr);
}

#[test]
fn format_is_detected_from_content_without_extension() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("config");
    std::fs::write(&json, r#"{"default_action": "deny"}"#).unwrap();
    assert!(ok(&["check-config", s(&json)]).contains("default_action deny"));
    let yaml = dir.path().join("config2");
    std::fs::write(&yaml, "default_action: deny\n").unwrap();
    assert!(ok(&["check-config", s(&yaml)]).contains("default_action deny"));
}

#[test]
fn unreadable_or_foreign_input_exits_2() {
    let r = cli(&["check-config", "does/not/exist.json"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("cannot read"), "{}", r.stderr);

    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = dir.path().join("x.yaml");
    std::fs::write(&bad_yaml, "a: [unclosed\n").unwrap();
    assert_eq!(cli(&["check-config", s(&bad_yaml)]).code, 2);

    // Kubernetes resources without a WasmPlugin: nothing to check.
    let r = cli(&["check-config", "examples/istio/ratelimit.yaml"]);
    assert_eq!(r.code, 2, "{}", r.all());
}

#[test]
fn json_syntax_errors_are_the_filters_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.json");
    std::fs::write(&f, "{\"mode\": \"enforce\",}").unwrap();
    let r = cli(&["check-config", s(&f)]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("invalid configuration"), "{}", r.stderr);
    assert!(
        r.stderr.contains("trailing comma at line 1 column 20"),
        "{}",
        r.stderr
    );
    // A stray `}` ends the object early: what follows it (the routes) is
    // refused, not dropped.
    std::fs::write(
        &f,
        "{\"default_action\": \"allow\"},\n \"routes\": [{\"name\": \"admin\", \
         \"match\": {\"prefix\": \"/admin/\"}, \"action\": \"deny\"}]}\n",
    )
    .unwrap();
    let r = cli(&["check-config", s(&f)]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("something follows the configuration's object, at line 1 column 28"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_manifest_piped_in_is_checked_and_an_unquoted_no_is_warned_of() {
    let manifest = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                    metadata: {name: appguard, namespace: istio-system}\nspec:\n  \
                    pluginName: appguard\n  pluginConfig:\n    network:\n      \
                    country_header: x-country\n      country_deny: [KP, NO]\n    \
                    routes: [{name: a, match: {prefix: /}}]\n";
    // Kubernetes sends `false`, which the filter refuses: so does the check
    // (exit 1), with the warning that says why.
    let r = common::cli_with_stdin(&["check-config", "-"], Some(manifest));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains(
            "invalid configuration at `network.country_deny[1]`: invalid type: boolean `false`, \
             expected a string (as Kubernetes reads this manifest"
        ),
        "{}",
        r.all()
    );
    assert!(
        r.stderr.contains(
            "warning: spec.pluginConfig.network.country_deny[1]: `NO` unquoted is a boolean to Kubernetes"
        ),
        "{}",
        r.stderr
    );
    let quoted = manifest.replace("[KP, NO]", r#"[KP, "NO"]"#);
    let r = common::cli_with_stdin(&["check-config", "-"], Some(&quoted));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn a_valid_configuration_that_probably_misleads_is_warned_of() {
    // A remote JWKS with nothing that scopes its tokens to this tenant:
    // valid (exit 0), with the filter's advice on standard error.
    let config = r#"{"tokens": [{"name": "fb", "from": [{"header": "x-t"}],
        "remote_jwks": {"cluster": "jwks", "path": "/jwks"}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["fb"]}]}"#;
    let r = common::cli_with_stdin(&["check-config", "-"], Some(config));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("valid:"), "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "warning: tokens[0] (fb): a remote JWKS without `issuer`, `audiences`, `required_claims` or `app_claim`"
        ),
        "{}",
        r.stderr
    );
    // An issuer alone: scoped where the issuer is the tenant's own, not
    // where it signs every client's tokens.
    let issuer = config.replace(r#""path": "/jwks"}"#, r#""path": "/jwks"}, "issuer": "i""#);
    let r = common::cli_with_stdin(&["check-config", "-"], Some(&issuer));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains("warning: tokens[0] (fb): a remote JWKS scoped by `issuer` alone"),
        "{}",
        r.stderr
    );
    let scoped = config.replace(
        r#""path": "/jwks"}"#,
        r#""path": "/jwks"}, "issuer": "i", "audiences": ["a"]"#,
    );
    let r = common::cli_with_stdin(&["check-config", "-"], Some(&scoped));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn an_unquoted_yaml_1_1_number_in_a_manifest_is_warned_of() {
    // `0100` is the string "0100" to YAML 1.2, the octal 64 to Kubernetes.
    let manifest = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                    metadata: {name: appguard, namespace: istio-system}\nspec:\n  \
                    pluginName: appguard\n  pluginConfig:\n    \
                    routes: [{name: 0100, match: {prefix: /}}]\n";
    let r = common::cli_with_stdin(&["check-config", "-"], Some(manifest));
    assert_eq!(r.code, 1, "a route name the filter gets as 64: {}", r.all());
    assert!(
        r.stderr.contains(
            "warning: spec.pluginConfig.routes[0].name: `0100` unquoted is the number 64 to Kubernetes (YAML 1.1)"
        ),
        "{}",
        r.stderr
    );
    let quoted = manifest.replace("name: 0100", "name: '0100'");
    let r = common::cli_with_stdin(&["check-config", "-"], Some(&quoted));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    // A number YAML 1.2 reads as a string (refused) and Kubernetes as a
    // number (taken): Kubernetes' reading decides, with the warning.
    for (written, number) in [("1_000", "1000"), ("0200", "128")] {
        let sized = quoted.replace(
            "routes:",
            &format!("max_body_bytes: {written}\n    routes:"),
        );
        let r = common::cli_with_stdin(&["check-config", "-"], Some(&sized));
        assert_eq!(r.code, 0, "{written}: {}", r.all());
        assert!(
            r.stderr
                .contains(&format!("unquoted is the number {number} to Kubernetes")),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn envoy_settings_that_let_requests_pass_unchecked_are_warned_of() {
    // `disabled: true` on the filter entry, and FAIL_OPEN: the
    // configuration is valid, and appguard would not see every request.
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let entry = "          - name: envoy.filters.http.wasm\n            typed_config:\n";
    assert!(envoy.contains(entry), "the example changed");
    assert!(
        envoy.contains("failure_policy: FAIL_RELOAD\n"),
        "the example changed"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    for (edited, warning) in [
        (
            envoy.replacen(
                entry,
                "          - name: envoy.filters.http.wasm\n            disabled: true\n            typed_config:\n",
                1,
            ),
            "the filter entry is `disabled: true`",
        ),
        (
            envoy.replacen("failure_policy: FAIL_RELOAD\n", "failure_policy: FAIL_OPEN\n", 1),
            "failure_policy FAIL_OPEN",
        ),
        (
            envoy.replacen("failure_policy: FAIL_RELOAD\n", "fail_open: true\n", 1),
            "failure_policy FAIL_OPEN (or fail_open: true)",
        ),
    ] {
        std::fs::write(&file, edited).unwrap();
        let r = cli(&["check-config", s(&file)]);
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(r.stdout.contains("valid:"), "{}", r.stdout);
        assert!(r.stderr.contains(warning), "{warning}: {}", r.stderr);
    }
    // A cluster the configuration calls that this Envoy lacks (renamed):
    // valid, with a warning naming the field.
    assert!(
        envoy.contains("  - name: ratelimit\n"),
        "the example changed"
    );
    let renamed = envoy.replacen("  - name: ratelimit\n", "  - name: rls\n", 1);
    std::fs::write(&file, &renamed).unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains(
            "rate_limit_service.cluster: `ratelimit` is not a cluster of this Envoy configuration"
        ),
        "{}",
        r.stderr
    );
    // An alerts cluster it lacks fails the alerts, not the requests.
    assert!(
        envoy.contains(r#"{"mode": "enforce", "#),
        "the example changed"
    );
    let alerting = envoy.replacen(
        r#"{"mode": "enforce", "#,
        r#"{"alerts": {"cluster": "hooks", "path": "/hook"}, "mode": "enforce", "#,
        1,
    );
    std::fs::write(&file, &alerting).unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains(
            "alerts.cluster: `hooks` is not a cluster of this Envoy configuration (its \
             static_resources, with no CDS): every alert fails to send (requests are not affected)"
        ),
        "{}",
        r.stderr
    );
    // With CDS the clusters may come from elsewhere: nothing said.
    std::fs::write(
        &file,
        renamed
            + "dynamic_resources:\n  cds_config: {resource_api_version: V3, path_config_source: {path: /tmp/cds.yaml}}\n",
    )
    .unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert!(!r.stderr.contains("is not a cluster"), "{}", r.all());
    // The example as shipped: neither.
    let r = cli(&["check-config", "envoy/envoy.yaml"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("disabled: true"), "{}", r.stderr);
    assert!(!r.stderr.contains("FAIL_OPEN"), "{}", r.stderr);
    assert!(!r.stderr.contains("is not a cluster"), "{}", r.stderr);
}

#[test]
fn a_connection_manager_without_the_trust_settings_is_named() {
    // README, Trust boundaries: without use_remote_address a client
    // chooses its IP; without the path settings paths arrive as sent;
    // a country header nothing before appguard sets is the client's.
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    for line in [
        "          use_remote_address: true\n",
        "          normalize_path: true\n",
        "          merge_slashes: true\n",
        "          path_with_escaped_slashes_action: REJECT_REQUEST\n",
        "          http_filters:\n          - name: envoy.filters.http.wasm\n",
    ] {
        assert!(envoy.contains(line), "the example changed: {line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    let bare = envoy
        .replace("          use_remote_address: true\n", "")
        .replace("          normalize_path: true\n", "")
        .replace("          merge_slashes: true\n", "");
    std::fs::write(&file, &bare).unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert_eq!(r.code, 0, "notes, not errors: {}", r.all());
    assert!(
        r.stderr.contains("has no use_remote_address: true"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("lacks normalize_path: true, merge_slashes: true: paths then reach"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("network.country_header `x-country-code`: no filter before"),
        "{}",
        r.stderr
    );
    // appguard reading the client from X-Forwarded-For itself needs no
    // use_remote_address; a header_mutation first owns the country header.
    let guarded = envoy
        .replace(
            "\"xff_trusted_hops\": 0",
            "\"xff_trusted_hops\": 2",
        )
        .replace("          use_remote_address: true\n", "")
        .replace(
            "          http_filters:\n          - name: envoy.filters.http.wasm\n",
            "          http_filters:\n          - name: envoy.filters.http.header_mutation\n            \
             typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n              \
             mutations:\n                request_mutations:\n                - remove: x-country-code\n          \
             - name: envoy.filters.http.wasm\n",
        );
    assert!(
        guarded.contains("\"xff_trusted_hops\": 2"),
        "the example changed"
    );
    std::fs::write(&file, &guarded).unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        !r.stderr.contains("with client_ip.xff_trusted_hops 0"),
        "{}",
        r.stderr
    );
    // Envoy appends no entry of its own here: the hops count the load
    // balancers alone, which the note asks to check.
    assert!(
        r.stderr.contains(
            "client_ip.xff_trusted_hops 2: the connection manager that runs appguard \
             appends no X-Forwarded-For entry of its own"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("country_header"), "{}", r.stderr);
    assert!(
        !r.stderr
            .contains("connection manager that runs appguard has no"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr
            .contains("connection manager that runs appguard lacks"),
        "{}",
        r.stderr
    );
    // With use_remote_address (and no skip_xff_append), Envoy's own entry
    // is one of the hops: no note.
    let edge = guarded.replace(
        "          stat_prefix:",
        "          use_remote_address: true\n          stat_prefix:",
    );
    assert_ne!(edge, guarded, "the example changed");
    std::fs::write(&file, &edge).unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert!(!r.stderr.contains("X-Forwarded-For entry"), "{}", r.stderr);
    let skipped = edge.replace(
        "          use_remote_address: true\n",
        "          use_remote_address: true\n          skip_xff_append: true\n",
    );
    std::fs::write(&file, &skipped).unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert!(r.stderr.contains("X-Forwarded-For entry"), "{}", r.stderr);
    std::fs::write(&file, &guarded).unwrap();
    // A header_mutation that removes another header, or geoip alone
    // (which leaves the client's copy where its lookup fails), does not.
    let first = |filter: &str| {
        envoy.replace(
            "          http_filters:\n          - name: envoy.filters.http.wasm\n",
            &format!(
                "          http_filters:\n{filter}          - name: envoy.filters.http.wasm\n"
            ),
        )
    };
    for filter in [
        "          - name: envoy.filters.http.header_mutation\n            typed_config:\n              \
         \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n              \
         mutations:\n                request_mutations:\n                - remove: x-other\n",
        "          - name: envoy.filters.http.geoip\n            typed_config:\n              \
         \"@type\": type.googleapis.com/envoy.extensions.filters.http.geoip.v3.Geoip\n",
    ] {
        std::fs::write(&file, first(filter)).unwrap();
        let r = cli(&["check-config", s(&file)]);
        assert!(
            r.stderr.contains("network.country_header `x-country-code`: no filter before"),
            "{filter}: {}",
            r.stderr
        );
    }
    // An original IP detection extension finds the client without
    // use_remote_address.
    let detected = bare.replace(
        "          path_with_escaped_slashes_action",
        "          original_ip_detection_extensions:\n          - name: envoy.extensions.http.original_ip_detection.custom_header\n            \
         typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig\n              \
         header_name: x-real-ip\n          path_with_escaped_slashes_action",
    );
    assert_ne!(detected, bare, "the example changed");
    std::fs::write(&file, &detected).unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("use_remote_address"), "{}", r.stderr);
}

#[test]
fn a_canary_under_another_root_id_is_named_as_not_checked() {
    // appguard's module serves every root_id: a canary filter loading it
    // under another one runs its configuration unchecked.
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    assert!(envoy.contains("root_id: appguard\n"), "the example changed");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    std::fs::write(
        &file,
        envoy.replacen("root_id: appguard\n", "root_id: appguard-canary\n", 1),
    )
    .unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("not checked: ") && r.stderr.contains("(root_id `appguard-canary`)"),
        "{}",
        r.stderr
    );
    // Next to the real plugin: valid (exit 0), with a warning naming it.
    let manifest = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                    metadata: {name: appguard, namespace: istio-system}\nspec:\n  \
                    pluginName: appguard\n  pluginConfig: {mode: monitor}\n---\n\
                    apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                    metadata: {name: canary, namespace: istio-system}\nspec:\n  \
                    pluginName: appguard-canary\n  pluginConfig: {mdoe: monitor}\n";
    let r = common::cli_with_stdin(&["check-config", "-"], Some(manifest));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains(
            "- (WasmPlugin istio-system/canary): warning: not checked: its pluginName is `appguard-canary`, not `appguard`"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn kubectl_get_output_a_list_is_checked_item_by_item() {
    let list = "apiVersion: v1\nkind: List\nitems:\n\
                - apiVersion: extensions.istio.io/v1alpha1\n  kind: WasmPlugin\n  \
                metadata: {name: appguard, namespace: istio-system}\n  \
                spec: {pluginName: appguard, pluginConfig: {mode: monitor}}\n\
                metadata: {resourceVersion: \"\"}\n";
    let r = common::cli_with_stdin(&["check-config", "-"], Some(list));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .starts_with("- (WasmPlugin istio-system/appguard): valid:"),
        "{}",
        r.stdout
    );
}

#[test]
fn syntax_errors_and_empty_files_exit_as_documented() {
    let run = |name: &str, text: &str| check_text(name, text, &[]);
    // JSON is what the filter reads: its syntax error is the filter's
    // refusal, with the message Envoy logs (exit 1).
    let r = run("bad.json", "{\"mode\": ");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("invalid configuration"), "{}", r.stderr);
    // YAML never reaches the filter as such: exit 2.
    let r = run("bad.yaml", "mode: [\n");
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("not valid YAML"), "{}", r.stderr);
    // Empty, in either format: nothing to check (exit 2).
    for name in ["empty.json", "empty.yaml"] {
        for text in ["", "\n  \n"] {
            let r = run(name, text);
            assert_eq!(r.code, 2, "{name} {text:?}: {}", r.all());
            assert!(
                r.stderr.contains("empty: no configuration in it"),
                "{name}: {}",
                r.stderr
            );
        }
    }
}

#[test]
fn published_demo_secrets_keys_and_hashes_are_warned_of() {
    // Every secret, phone hash key and API key hash that the shipped
    // examples publish is named where a configuration keeps it, in each
    // kind of file; the configuration stays valid (exit 0).
    let mut published = std::collections::BTreeSet::new();
    let files = ["examples", "examples/bad"]
        .iter()
        .flat_map(|d| std::fs::read_dir(repo().join(d)).unwrap())
        .map(|e| e.unwrap().path());
    for path in files {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        // A broken example's refused secret (too short) is no risk.
        if path.ends_with("short-hmac-secret.json") {
            continue;
        }
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        collect_secrets(&doc, &mut published);
    }
    assert!(published.len() >= 7, "{published:?}");
    for file in [
        "examples/three-platform.json",
        "examples/approov.json",
        "envoy/envoy.yaml",
        "examples/istio/wasmplugin.yaml",
    ] {
        let r = cli(&["check-config", file]);
        assert_eq!(r.code, 0, "{file}: {}", r.all());
        assert!(r.stdout.contains("valid:"), "{file}: {}", r.stdout);
        assert!(
            r.stderr
                .contains("it is published in appguard's examples: replace it before real traffic"),
            "{file}: {}",
            r.stderr
        );
    }
    for value in &published {
        let config = format!(
            r#"{{"api_keys": {{"keys": [{{"id": "k", "sha256": "{}"}}]}},
                "tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], "issuer": "i",
                             "keys": [{{"alg": "HS256", "secret_base64": "{}"}}]}}],
                "phone": {{"default_calling_code": "44", "hash_key_base64": "{}"}},
                "routes": [{{"name": "r", "match": {{"prefix": "/"}}, "tokens": ["t"],
                             "api_key": "required",
                             "rate_limits": [{{"entries": [{{"type": "body", "pointer": "/to", "phone": true}}],
                                              "local": {{"requests": 1, "per": "second"}}}}]}}]}}"#,
            pick(value, 64, "a".repeat(64)),
            pick(value, 0, STANDARD_SECRET.into()),
            pick(value, 1, STANDARD_PHONE_KEY.into()),
        );
        let r = common::cli_with_stdin(&["check-config", "-"], Some(&config));
        assert_eq!(r.code, 0, "{value}: {}", r.all());
        assert_eq!(
            r.stderr.matches("published in appguard's examples").count(),
            1,
            "{value}: {}",
            r.stderr
        );
    }
    // Spelled otherwise, as the filter still reads them: upper-case hex,
    // base64 without its padding or with spaces around.
    let spelled = r#"{"api_keys": {"keys": [{"id": "k", "sha256": "41172213354F5FC5B103633B020992398AE89EBB96DFB142284450802C3CECE4"}]},
        "phone": {"default_calling_code": "44", "hash_key_base64": " ZGVtby1vbmx5LXBob25lLWhhc2gta2V5LTAxMjM0NTY "},
        "routes": [{"name": "r", "match": {"prefix": "/"}, "api_key": "required",
                    "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                                     "local": {"requests": 1, "per": "second"}}]}]}"#;
    let r = common::cli_with_stdin(&["check-config", "-"], Some(spelled));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stderr.matches("published in appguard's examples").count(),
        2,
        "{}",
        r.stderr
    );
    // Values of one's own: no such warning.
    let own = format!(
        r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], "issuer": "i",
             "keys": [{{"alg": "HS256", "secret_base64": "{STANDARD_SECRET}"}}]}}],
             "routes": [{{"name": "r", "match": {{"prefix": "/"}}, "tokens": ["t"]}}]}}"#
    );
    let r = common::cli_with_stdin(&["check-config", "-"], Some(&own));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

/// A secret of one's own (48 random-looking bytes, base64).
const STANDARD_SECRET: &str = "YaplJpuwaPhpQz2OVGx/HFnJAp7whhgNWvsCKygZPYRdV+EI16wSgoRgYNwwaiCi";
/// A phone hash key of one's own.
const STANDARD_PHONE_KEY: &str = "c29tZS1vdGhlci1waG9uZS1oYXNoLWtleS0wMTIz";

/// `value` in the field it was published in: a 64-hex API key hash for
/// `len` 64, else a base64 secret (`slot` 0) or phone key (`slot` 1) when
/// it decodes as one would; `own` otherwise.
fn pick(value: &str, slot: usize, own: String) -> String {
    let is_hash = value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit());
    let is_phone_key = value.starts_with("ZGVtby1vbmx5LXBob25l");
    let fits = match slot {
        64 => is_hash,
        0 => !is_hash && !is_phone_key,
        _ => is_phone_key,
    };
    if fits {
        value.to_owned()
    } else {
        own
    }
}

/// The values of `secret_base64`, `hash_key_base64` and API keys'
/// `sha256` in `doc`.
fn collect_secrets(doc: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match doc {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if let (true, Some(s)) = (
                    ["secret_base64", "hash_key_base64", "sha256"].contains(&k.as_str()),
                    v.as_str(),
                ) {
                    out.insert(s.to_owned());
                }
                collect_secrets(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_secrets(v, out)),
        _ => {}
    }
}

#[test]
fn the_check_agrees_with_envoy_on_shapes_it_used_to_misread() {
    let run = |name: &str, text: &str| check_text(name, text, &[]);
    // An appguard configuration holding, deep inside, an object that looks
    // like a Wasm filter: the filter reads the whole document, and refuses
    // the field.
    let nested = r#"{"mode":"enforce","routes":[{"name":"a","match":{"prefix":"/"},
        "x":{"root_id":"appguard","configuration":{"@type":"type.googleapis.com/google.protobuf.StringValue","value":"{}"}}}]}"#;
    let r = run("nested.json", nested);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("routes[0].x"), "{}", r.stderr);
    // `kind` and `apiVersion` beside appguard's fields: the filter's
    // unknown field, not "not an appguard configuration".
    let r = run(
        "kind.json",
        r#"{"kind":"Config","apiVersion":"v1","mode":"enforce"}"#,
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("kind"), "{}", r.stderr);
    // A type URL without a host: Envoy refuses the Any.
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let typed = "type.googleapis.com/google.protobuf.StringValue";
    assert!(envoy.contains(typed), "the example changed");
    let r = run(
        "nohost.yaml",
        &envoy.replacen(typed, "google.protobuf.StringValue", 1),
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("has no host"), "{}", r.stderr);
    let r = run(
        "otherhost.yaml",
        &envoy.replacen(typed, "example.com/google.protobuf.StringValue", 1),
    );
    assert_eq!(r.code, 0, "any host will do: {}", r.all());
    // A Wasm configuration under a route's typed_per_filter_config: Envoy
    // refuses any, whatever it holds.
    let per_route = serde_json::json!({"static_resources": {"listeners": [{
        "name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{
                "match": {"prefix": "/"}, "direct_response": {"status": 200},
                "typed_per_filter_config": {"envoy.filters.http.wasm": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                        "config": {"root_id": "appguard", "configuration": {
                            "@type": typed, "value": "{\"mode\":\"enforce\"}"}}}}}}]}]}}}]}]}]}});
    let r = run("per-route.json", &per_route.to_string());
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("typed_per_filter_config"), "{}", r.stderr);
}

#[test]
fn strict_fails_on_warnings_and_a_prefix_without_a_slash_gets_advice() {
    let web =
        r#"{"default_action": "deny", "routes": [{"name": "web", "match": {"prefix": "/web"}}]}"#;
    // Valid, with the advice: exit 0 by default, 1 under --strict.
    let r = check_text("web.json", web, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains(
            r#"warning: routes[0].match.prefix (web): "/web" matches by bytes, so also "/web-admin""#
        ),
        "{}",
        r.stderr
    );
    let r = check_text("web.json", web, &["--strict"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("1 warning(s), and --strict: failed"),
        "{}",
        r.stderr
    );
    // A prefix ending in `/` gets none, and passes --strict.
    let r = check_text("web.json", &web.replace("/web", "/web/"), &["--strict"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn a_duration_where_a_whole_number_belongs_gets_a_hint() {
    let r = check_text(
        "t.json",
        r#"{"rate_limit_service": {"cluster": "c", "domain": "d", "timeout_ms": "250ms"}}"#,
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("expected u64"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("hint: a whole number is expected here, without a unit or quotes: `\"timeout_ms\": 300`"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_pem_the_filter_cannot_read_gets_a_hint_that_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    openssl_run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        s(&key),
    ]);
    let private = std::fs::read_to_string(&key).unwrap();
    let public = String::from_utf8(openssl_run(&["ec", "-in", s(&key), "-pubout"])).unwrap();
    let check = |pem: &str, alg: &str| {
        let config = serde_json::json!({"tokens": [{"name": "t", "from": [{"header": "x-t"}],
            "keys": [{"kid": "k", "alg": alg, "pem": pem}]}]});
        check_text("c.json", &config.to_string(), &[])
    };
    for (pem, alg, hint) in [
        (
            public.as_str(),
            "RS256",
            "hint: this PEM is an EC P-256 key: its `alg` is ES256, not RS256",
        ),
        (
            private.as_str(),
            "ES256",
            "hint: this PEM is a private key: configure its public half",
        ),
        (
            &public.replace('\n', " "),
            "ES256",
            "hint: the PEM is on one line",
        ),
    ] {
        let r = check(pem, alg);
        assert_eq!(r.code, 1, "{}", r.all());
        assert!(r.stderr.contains(hint), "{hint}: {}", r.stderr);
        assert!(
            !r.stderr.contains("BEGIN"),
            "no key material echoed: {}",
            r.stderr
        );
    }
    let r = check(&public, "ES256");
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn an_infinite_number_in_yaml_is_named_where_it_is() {
    // serde_json has no .inf: it became null, and the filter's refusal
    // then named a null nobody wrote.
    let r = check_text(
        "p.yaml",
        "default_action: deny\nroutes:\n- name: sms\n  match: {path: /sms}\n  max_body_bytes: .inf\n",
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("`routes[0].max_body_bytes` is .inf or .nan"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("invalid type: null"), "{}", r.stderr);
}

/// Envoy reads its YAML with yaml-cpp, which takes the
/// YAML 1.1 booleans (`yes`, `on`, `y`, any case form) as booleans: an
/// appguard filter entry with `disabled: yes` is off on every route (a
/// request appguard would refuse gets the upstream's 200 with Envoy
/// 1.40). check-config reads YAML 1.2, sees the string "yes", and passes
/// the file without the warning it gives `disabled: true`.
#[test]
fn a_filter_entry_disabled_in_yaml_1_1_spelling_is_warned_of() {
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let entry = "          - name: envoy.filters.http.wasm\n            typed_config:\n";
    assert!(envoy.contains(entry), "the example changed");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    for spelling in ["yes", "on", "Yes", "ON"] {
        let edited = envoy.replacen(
            entry,
            &format!(
                "          - name: envoy.filters.http.wasm\n            disabled: {spelling}\n            typed_config:\n"
            ),
            1,
        );
        std::fs::write(&file, edited).unwrap();
        let r = cli(&["check-config", s(&file)]);
        assert!(
            r.stderr.contains("the filter entry is `disabled: true`"),
            "disabled: {spelling} (appguard off on every route) passed without the warning \
             `disabled: true` gets: code {}: {}",
            r.code,
            r.all()
        );
    }
}

/// Kubernetes reads a WasmPlugin with go-yaml v2
/// (YAML 1.1) through sigs.k8s.io/yaml, which resolves the plain keys `y`
/// and `n` (like `yes`, `no`, `on`, `off`) as booleans and writes them as
/// the JSON keys "true" and "false" (ghodss/yaml `convertToJSONableObject`:
/// `case bool: keyString = "true"`). An inline EC JWK written as YAML
/// (its `y` member; an RSA JWK's `n`) reaches the filter without it, and
/// the filter refuses the configuration; check-config, which converts
/// scalar values the Kubernetes way but not keys, calls it valid.
#[test]
fn a_jwk_member_kubernetes_reads_as_a_boolean_key_is_checked_as_it_reads_it() {
    let manifest = "\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: appguard, namespace: istio-system}
spec:
  pluginName: appguard
  failStrategy: FAIL_CLOSE
  pluginConfig:
    tokens:
    - name: signer
      from: [{header: x-app-token}]
      issuer: https://signer.example.com
      jwks:
        keys:
        - kty: EC
          crv: P-256
          kid: signer-2026-01
          alg: ES256
          use: sig
          x: snkJelxVvRvSjzxKcaLBlQ6mVaX58iHIn4TpuniZdKs
          y: r4j2ww7SLo2OsdCLglfCN10r1LBM7ojEtuY4A1XCFJE
    routes:
    - name: api
      match: {prefix: /}
      tokens: [signer]
";
    // What the filter gets once Kubernetes has read the manifest: the
    // member `y` is now "true"; the filter refuses that configuration.
    let as_kubernetes_sends = r#"{"tokens": [{"name": "signer", "from": [{"header": "x-app-token"}],
        "issuer": "https://signer.example.com",
        "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "signer-2026-01", "alg": "ES256",
          "use": "sig", "x": "snkJelxVvRvSjzxKcaLBlQ6mVaX58iHIn4TpuniZdKs",
          "true": "r4j2ww7SLo2OsdCLglfCN10r1LBM7ojEtuY4A1XCFJE"}]}}],
      "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["signer"]}]}"#;
    let filter = check_text("sent.json", as_kubernetes_sends, &[]);
    assert_eq!(filter.code, 1, "the filter's verdict: {}", filter.all());
    let r = check_text("wasmplugin.yaml", manifest, &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("the key `y` unquoted is the boolean true to Kubernetes"),
        "{}",
        r.all()
    );
    // Quoted, it is the member `y`.
    let quoted = manifest.replace("          y: r4j2", "          \"y\": r4j2");
    let r = check_text("wasmplugin.yaml", &quoted, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("the key `y`"), "{}", r.all());
}

/// examples/prometheus/appguard-alerts.yaml, `AppguardHostErrors`, tells
/// the operator paged at night what check-config does with the Wasm
/// filter's `allow_on_headers_stop_iteration: true` without
/// `hold_headers_for_body`: a warning (exit 0), a failure with `--strict`.
/// It once said check-config refused the pair.
#[test]
fn the_host_error_alert_says_what_check_config_does_with_the_flag_alone() {
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let flag = envoy.replacen(
        "root_id: appguard\n",
        "root_id: appguard\n                allow_on_headers_stop_iteration: true\n",
        1,
    );
    assert_ne!(flag, envoy);
    let r = check_text("flag.yaml", &flag, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.all()
            .contains("allow_on_headers_stop_iteration: true without hold_headers_for_body"),
        "{}",
        r.all()
    );
    let r = check_text("flag.yaml", &flag, &["--strict"]);
    assert_eq!(r.code, 1, "{}", r.all());
    let alerts =
        std::fs::read_to_string(repo().join("examples/prometheus/appguard-alerts.yaml")).unwrap();
    let alerts = alerts.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        alerts.contains("check-config warns of that pair; with --strict it fails"),
        "the alert's description must say what check-config does"
    );
    assert!(!alerts.contains("check-config refuses that pair"));
}

/// Envoy also appends its own X-Forwarded-For entry
/// without `use_remote_address`, where the connection manager's XFF
/// original IP detection extension has `skip_xff_append: false` (Envoy
/// 1.40, the version the e2e tests run: shown with a real Envoy, a request
/// with `x-forwarded-for: 9.9.9.9, 10.0.0.1` reached the upstream as
/// `9.9.9.9, 10.0.0.1,192.0.2.2`). The note that Envoy "appends no
/// X-Forwarded-For entry of its own" and that the hops "must count the load
/// balancers' entries alone" is then wrong: an operator who follows it
/// drops Envoy's entry from the count, and appguard then reads the entry
/// Envoy wrote (the load balancer's address) as every client's IP.
#[test]
fn xff_hops_note_knows_the_xff_extension_appends() {
    let envoy = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let line = "          use_remote_address: true\n";
    assert!(envoy.contains(line), "the example changed");
    assert!(
        envoy.contains("\"xff_trusted_hops\": 0"),
        "the example changed"
    );
    let appending = envoy
        .replace("\"xff_trusted_hops\": 0", "\"xff_trusted_hops\": 2")
        .replace(
            line,
            "          original_ip_detection_extensions:\n          \
             - name: envoy.http.original_ip_detection.xff\n            \
             typed_config:\n              \
             \"@type\": type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig\n              \
             xff_num_trusted_hops: 1\n              \
             skip_xff_append: false\n",
        );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, &appending).unwrap();
    let r = cli(&["check-config", s(&file)]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        !r.stderr
            .contains("appends no X-Forwarded-For entry of its own"),
        "the note says Envoy appends no entry, but this Envoy does:\n{}",
        r.stderr
    );
}

/// Istio hands `pluginConfig` over as a protobuf
/// `Struct`, whose numbers are doubles: a `required_claims` integer beyond
/// 2^53 (a snowflake id) reaches the filter rounded, so the genuine tokens
/// are refused and those of the id it rounded to pass. `check-config` must
/// not call that WasmPlugin valid without a word.
#[test]
fn a_wasm_plugin_integer_istio_rounds_is_not_passed_silently() {
    let manifest = r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: appguard, namespace: istio-system}
spec:
  pluginName: appguard
  url: oci://example/appguard:1
  pluginConfig:
    tokens:
    - name: t
      from: [{header: x-t}]
      keys: [{alg: HS256, secret_base64: "3q2+7wEjRWeJq83vEjRWeDJrze8SNFZ4kKvN7xI0Vng="}]
      required_claims: {org_id: ORG}
    routes:
    - name: r
      match: {prefix: /}
      tokens: [t]
"#;
    // Within 2^53 it is valid, and said nothing of.
    let small = check_text("plugin.yaml", &manifest.replace("ORG", "1541815603"), &[]);
    assert_eq!(small.code, 0, "{}", small.all());
    assert!(!small.all().contains("org_id"), "{}", small.all());
    let r = check_text(
        "plugin.yaml",
        &manifest.replace("ORG", "1541815603606036481"),
        &[],
    );
    let all = r.all();
    assert!(
        // Refused (exit 1, not a crash's 101) or warned of: either names it.
        (r.code == 0 || r.code == 1) && all.contains("org_id"),
        "Istio sends 1541815603606036480 (the nearest double), not 1541815603606036481, and \
         check-config says nothing:\n{all}"
    );
}

/// Istio writes a `pluginConfig` number (a protobuf `Struct` double) as Go
/// formats a float: the fewest digits that read back as that double, then
/// zeros (`1541815603606036481` reaches the filter as
/// `1541815603606036500`, `2^60` as `1152921504606847000`, as
/// `format!("{}", f)` and JavaScript print them). An integer beyond 2^53
/// that a double holds exactly (every 256th snowflake id near 1.5e18) is
/// still changed, and one near `u64::MAX` or `i64::MIN` becomes a number
/// no integer field takes, so the filter refuses the configuration that
/// check-config called valid.
#[test]
fn a_wasm_plugin_integer_istio_rewrites_is_noted_even_when_a_double_holds_it() {
    let manifest = |org: &str| {
        format!(
            r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: appguard, namespace: istio-system}}
spec:
  pluginName: appguard
  url: oci://example/appguard:1
  pluginConfig:
    tokens:
    - name: t
      from: [{{header: x-t}}]
      keys: [{{alg: HS256, secret_base64: "3q2+7wEjRWeJq83vEjRWeDJrze8SNFZ4kKvN7xI0Vng="}}]
      required_claims: {{org_id: {org}}}
    routes:
    - name: r
      match: {{prefix: /}}
      tokens: [t]
"#
        )
    };
    // (written, what Istio hands the filter)
    for (written, sent) in [
        // a double exactly: 2^60, and the snowflake id 256 below the README's
        ("1152921504606846976", "1152921504606847000"),
        ("1541815603606036480", "1541815603606036500"),
        // the README's example: said, but with the number Istio does not send
        ("1541815603606036481", "1541815603606036500"),
        // no 64-bit integer once Istio wrote it: the filter refuses the plugin
        ("18446744073709551615", "18446744073709552000"),
        ("-9223372036854775808", "-9223372036854776000"),
    ] {
        let r = check_text("plugin.yaml", &manifest(written), &[]);
        let all = r.all();
        assert!(
            // Refused (exit 1, not a crash's 101) or warned of.
            (r.code == 1 && all.contains("org_id"))
                || (r.code == 0 && all.contains("org_id") && all.contains(sent)),
            "{written}: Istio hands the filter {sent}, and check-config does not say so:\n{all}"
        );
    }
}
