//! `appguard-cli check-config --ratelimit-config`: the rate-limit service's
//! YAML against the descriptors a configuration sends it. The fixtures in
//! tests/fixtures/ratelimit/ are one configuration (`appguard.json`: two
//! service rules and a replay descriptor) and YAML files written for it,
//! each with one mistake its header names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

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
