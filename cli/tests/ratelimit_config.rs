//! `appguard-cli check-config --ratelimit-config`: the rate-limit service's
//! YAML against the descriptors a configuration sends it. The fixtures in
//! tests/fixtures/ratelimit/ are one configuration (`appguard.json`: two
//! service rules and a replay descriptor) and YAML files written for it,
//! each with one mistake its header names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fmt::Write as _;

use common::{cli, Run};

const CONFIG: &str = "cli/tests/fixtures/ratelimit/appguard.json";

fn check(yaml: &[&str]) -> Run {
    let mut args = vec!["check-config", CONFIG];
    let paths: Vec<String> = yaml
        .iter()
        .map(|y| format!("cli/tests/fixtures/ratelimit/{y}"))
        .collect();
    for p in &paths {
        args.push("--ratelimit-config");
        args.push(p);
    }
    let r = cli(&args);
    assert_eq!(r.code, 0, "warnings keep exit 0:\n{}", r.all());
    assert!(r.stdout.contains("valid:"), "{}", r.all());
    r
}

/// The warnings about the rate-limit configuration, one per line.
fn findings(r: &Run) -> Vec<&str> {
    r.stderr
        .lines()
        .filter(|l| {
            l.contains("rate_limits[") || l.contains(".replay:") || l.contains("rate_limit_service")
        })
        .collect()
}

#[test]
fn a_yaml_with_a_limit_for_every_descriptor_gives_no_warning() {
    let r = check(&["good.yaml"]);
    assert_eq!(findings(&r), Vec::<&str>::new(), "{}", r.all());
}

#[test]
fn the_repositorys_own_pair_gives_no_warning() {
    // examples/three-platform.json with the service configuration `make run`
    // and docker-compose give it.
    let r = cli(&[
        "check-config",
        "examples/three-platform.json",
        "--ratelimit-config",
        "envoy/ratelimit.yaml",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(findings(&r), Vec::<&str>::new(), "{}", r.all());
}

#[test]
fn a_descriptor_no_limit_matches_is_named_with_its_keys() {
    let r = check(&["typo.yaml"]);
    assert_eq!(
        findings(&r),
        [format!(
            "{CONFIG}: warning: routes[api].rate_limits[per-tenant]: no limit in \
             cli/tests/fixtures/ratelimit/typo.yaml (domain appguard) matches \
             [route=api, x-tenant=<per request>]: the service will count nothing"
        )],
        "{}",
        r.all()
    );
}

#[test]
fn value_specific_nodes_alone_leave_most_values_unlimited() {
    let r = check(&["some-values.yaml"]);
    let f = findings(&r);
    assert_eq!(f.len(), 2, "{}", r.all());
    assert!(
        f[0].contains("routes[api].rate_limits[per-tenant]: in cli/tests/fixtures/ratelimit/some-values.yaml (domain appguard) only value-specific nodes")
            && f[0].contains("match [route=api, x-tenant=<per request>]: for most values of x-tenant no limit matches"),
        "a prefix wildcard (`acme*`): {}",
        f[0]
    );
    assert!(
        f[1].contains("routes[api].rate_limits[per-ip]:")
            && f[1].contains("only value-specific nodes")
            && f[1].contains("[client_ip=<per request>]"),
        "an exact value (a blocked IP): {}",
        f[1]
    );
    // The YAML's own values are the service's; a request's are never shown.
    assert!(!r.stderr.contains("10.0.0.1"), "{}", r.stderr);
}

#[test]
fn a_replay_descriptor_not_limited_to_one_lets_replays_pass() {
    let r = check(&["replay-loose.yaml"]);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{}", r.all());
    assert!(
        f[0].contains("tokens[0] (signer).replay: the limit `appguard.jti` in cli/tests/fixtures/ratelimit/replay-loose.yaml allows 5 per hour, not 1: replays pass the service"),
        "{}",
        f[0]
    );
    let r = check(&["replay-shadow.yaml"]);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{}", r.all());
    assert!(
        f[0].contains("tokens[0] (signer).replay:")
            && f[0].contains("is in shadow_mode")
            && f[0].contains("replays pass"),
        "{}",
        f[0]
    );
    // 1 per minute, for tokens accepted for longer.
    let r = check(&["replay-short.yaml"]);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{}", r.all());
    assert!(
        f[0].contains("tokens[0] (signer).replay: the limit `appguard.jti` in cli/tests/fixtures/ratelimit/replay-short.yaml is 1 per minute, shorter than this provider accepts a token for"),
        "{}",
        f[0]
    );
    // No limit for it at all.
    let r = check(&["replay-missing.yaml"]);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{}", r.all());
    assert!(
        f[0].contains("tokens[0] (signer).replay: no limit in cli/tests/fixtures/ratelimit/replay-missing.yaml (domain appguard) matches [jti=<per request>]: replays pass the service"),
        "{}",
        f[0]
    );
}

#[test]
fn a_domain_the_service_does_not_have_is_warned_of() {
    let r = check(&["other-domain.yaml"]);
    assert_eq!(
        findings(&r),
        [format!(
            "{CONFIG}: warning: rate_limit_service.domain: `appguard` is none of the rate-limit \
             configuration's domains (appguard-staging): the service counts nothing for any \
             descriptor, so no service rule limits anything, and replay.scope: service cannot work"
        )],
        "{}",
        r.all()
    );
    // Repeatable, as the service's --config: the domain is in the second file.
    let r = check(&["other-domain.yaml", "good.yaml"]);
    assert_eq!(findings(&r), Vec::<&str>::new(), "{}", r.all());
}

#[test]
fn a_limit_replaced_by_another_descriptor_of_the_route_is_warned_of() {
    let r = check(&["replaces.yaml"]);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{}", r.all());
    assert!(
        f[0].contains("routes[api].rate_limits[per-ip]: on route api, its limit `appguard.client_ip` is replaced by `appguard.route_api.x-tenant` (of routes[api].rate_limits[per-tenant]"),
        "{}",
        f[0]
    );
}

#[test]
fn a_yaml_the_service_refuses_is_refused() {
    let r = cli(&[
        "check-config",
        CONFIG,
        "--ratelimit-config",
        "cli/tests/fixtures/ratelimit/refused.yaml",
    ]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("the rate-limit service refuses it"),
        "{}",
        r.all()
    );
    assert!(r.stderr.contains("rate_limits"), "{}", r.all());
    let r = cli(&[
        "check-config",
        CONFIG,
        "--ratelimit-config",
        "cli/tests/fixtures/ratelimit/missing.yaml",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
}

/// The one finding of `yaml`, which must mention each of `words`.
fn one_finding(yaml: &str, words: &[&str]) {
    let r = check(&[yaml]);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{yaml}: {}", r.all());
    for w in words {
        assert!(f[0].contains(w), "{yaml}: no `{w}` in:\n{}", f[0]);
    }
}

#[test]
fn a_replay_limit_in_quota_mode_lets_replays_pass() {
    // Its rule's quota-mode limit is warned of too.
    let r = check(&["replay-quota.yaml"]);
    let f = findings(&r);
    assert_eq!(f.len(), 2, "{}", r.all());
    assert!(
        f.iter().any(|l| l.contains(
            "tokens[0] (signer).replay: the limit `appguard.jti` in \
             cli/tests/fixtures/ratelimit/replay-quota.yaml is in quota_mode, which is not \
             supported for descriptors appguard sends (ratelimit/README.md): the service \
             refuses a replay only when every quota-mode descriptor of the call is over, so \
             replays pass whenever another quota-mode descriptor of the call is under its limit"
        )),
        "{}",
        r.all()
    );
}

#[test]
fn a_rule_limit_in_quota_mode_is_warned_of() {
    one_finding(
        "rule-quota.yaml",
        &[
            "routes[api].rate_limits[per-ip]: the limit `appguard.client_ip`",
            "is in quota_mode, which is not supported for descriptors appguard sends",
            "only when every quota-mode descriptor of the call is over",
        ],
    );
}

#[test]
fn a_shared_replay_counter_refuses_every_token_after_the_first() {
    one_finding(
        "replay-shared.yaml",
        &[
            "tokens[0] (signer).replay: the limit `appguard.jti_*`",
            "share_threshold",
            "every token shares one counter: after the first, tokens are refused as replayed",
        ],
    );
}

#[test]
fn a_shared_rule_counter_is_one_bucket_for_every_client() {
    one_finding(
        "rule-shared.yaml",
        &[
            "routes[api].rate_limits[per-ip]: the limit `appguard.client_ip_*`",
            "all values of client_ip share one counter (share_threshold)",
        ],
    );
}

#[test]
fn a_replay_limit_only_some_token_ids_reach_is_checked() {
    one_finding(
        "replay-some-values.yaml",
        &[
            "tokens[0] (signer).replay: for some token ids, the limit `appguard.jti_0*`",
            "allows 100 per hour, not 1: replays pass the service",
        ],
    );
}

#[test]
fn a_replay_limit_of_zero_is_no_replay_protection() {
    // The filter takes any limit but 1 as none (src/policy.rs
    // `rls_verdict`): the route's failure_mode decides, not the service's
    // refusal.
    let r = check(&["replay-zero.yaml"]);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{}", r.all());
    assert!(
        f[0].contains(
            "tokens[0] (signer).replay: the limit `appguard.jti` in \
             cli/tests/fixtures/ratelimit/replay-zero.yaml allows none (a limit other than 1 \
             per window is no replay protection the filter can use); the filter then counts \
             the service as failing"
        ) && f[0].contains("ratelimit_unavailable (503)")
            && !f[0].contains("replays pass"),
        "{}",
        f[0]
    );
}

#[test]
fn the_configurations_own_verdict_comes_before_a_missing_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("plugin.yaml");
    std::fs::write(
        &plugin,
        "mode: monitor\nroutes:\n- name: a\n  match: {prefix: /, mehtods: [GET]}\n",
    )
    .unwrap();
    let r = cli(&[
        "check-config",
        plugin.to_str().unwrap(),
        "--ratelimit-config",
        "cli/tests/fixtures/ratelimit/missing.yaml",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("mehtods"), "{}", r.all());
    // A valid one is still said to be valid.
    let r = cli(&[
        "check-config",
        CONFIG,
        "--ratelimit-config",
        "cli/tests/fixtures/ratelimit/missing.yaml",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("valid:"), "{}", r.all());
}

/// A configuration with `n` API keys `k0..`, `apps` web apps `a0..`, and
/// one route whose service rule is `[api_key]`, or `[api_key, app]` when
/// there are apps.
fn many_keys(n: usize, apps: usize) -> String {
    let mut keys = String::new();
    for i in 0..n {
        if i > 0 {
            keys.push(',');
        }
        write!(keys, r#"{{"id": "k{i}", "sha256": "{:064x}"}}"#, i + 1).unwrap();
    }
    let mut app_list = String::new();
    for i in 0..apps {
        if i > 0 {
            app_list.push(',');
        }
        write!(
            app_list,
            r#"{{"id": "a{i}", "platform": "web", "origins": ["https://a{i}.example"]}}"#
        )
        .unwrap();
    }
    let entries = if apps == 0 {
        r#"[{"type": "api_key"}]"#
    } else {
        r#"[{"type": "api_key"}, {"type": "app"}]"#
    };
    format!(
        r#"{{"rate_limit_service": {{"cluster": "ratelimit", "domain": "appguard"}},
  "api_keys": {{"header": "x-api-key", "keys": [{keys}]}},
  "apps": [{app_list}],
  "routes": [{{"name": "api", "match": {{"prefix": "/"}}, "api_key": "required",
    "rate_limits": [{{"name": "per-key", "entries": {entries}}}]}}]}}"#
    )
}

/// check-config on `config` and `yaml`, both written to temporary files.
fn check_text(config: &str, yaml: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("appguard.json");
    std::fs::write(&c, config).unwrap();
    let y = dir.path().join("rl.yaml");
    std::fs::write(&y, yaml).unwrap();
    let r = cli(&[
        "check-config",
        c.to_str().unwrap(),
        "--ratelimit-config",
        y.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    r
}

#[test]
fn over_4096_key_ids_each_is_still_checked() {
    // k0's node only holds longer descriptors: `[api_key=k0]` gets no
    // limit, with 2 keys as with 4097 (more than the combinations checked
    // one by one: the ids of a single entry are checked one at a time).
    let yaml = "domain: appguard
descriptors:
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 600}
  - key: api_key
    value: k0
    descriptors:
      - key: route
        rate_limit: {unit: minute, requests_per_unit: 5}
";
    for n in [2, 4097] {
        let r = check_text(&many_keys(n, 0), yaml);
        let f = findings(&r);
        assert_eq!(f.len(), 1, "{n} keys: {}", r.all());
        assert!(
            f[0].contains("no limit in") && f[0].contains("matches [api_key=k0]:"),
            "{n} keys: {}",
            f[0]
        );
        assert!(!f[0].contains("not every combination"), "{}", f[0]);
    }
    // A limit for each of 4097 ids, and no default: none is unlimited.
    let mut yaml = String::from("domain: appguard\ndescriptors:\n");
    for i in 0..4097 {
        write!(
            yaml,
            "  - key: api_key\n    value: k{i}\n    rate_limit: {{unit: minute, requests_per_unit: 600}}\n"
        )
        .unwrap();
    }
    let r = check_text(&many_keys(4097, 0), &yaml);
    assert_eq!(findings(&r), Vec::<&str>::new(), "{}", r.all());
}

#[test]
fn over_4096_combinations_the_message_says_they_were_not_all_checked() {
    // 2049 keys x 2 apps: each id is checked with the other entry's ids as
    // per-request values, and the message says so.
    let yaml = "domain: appguard
descriptors:
  - key: api_key
    descriptors:
      - key: app
        value: a0
        rate_limit: {unit: minute, requests_per_unit: 600}
";
    let r = check_text(&many_keys(2049, 2), yaml);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{}", r.all());
    assert!(
        f[0].contains("matches [api_key=k0, app=<per request>] (but for some values)")
            && f[0].contains(
                "(4098 combinations of known values, more than 4096: each id was checked on \
                 its own, with the other entries' ids as per-request values, not every \
                 combination one by one)"
            ),
        "{}",
        f[0]
    );
}
