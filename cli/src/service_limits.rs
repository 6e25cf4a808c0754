//! `check-config --ratelimit-config`: whether the rate-limit service's YAML
//! has a limit for every descriptor the configuration sends it.
//!
//! A service rule (a `rate_limits[]` entry without `local`) and a
//! `replay.scope: service` provider each send a descriptor to the domain
//! `rate_limit_service.domain`. When no limit of the service's YAML matches
//! it, the service answers OK without counting: the rule limits nothing,
//! and the filter only notices at run time ("no limit for rule").
//!
//! The YAML is loaded by the service's own loader
//! ([`RateLimitConfig::load_paths`]), so it is accepted or refused as the
//! service would. Each descriptor is then walked down the service's
//! matching tree by its rules ([`RateLimitConfig::get_limit`]: the child
//! of that key and value, else the first wildcard child of that key whose
//! value pattern matches, else the key-only child; the limit is the one on
//! the node the last entry
//! reaches). An entry whose value the configuration fixes (`route`,
//! `value`) is walked with that value; one that takes one of a few known
//! values (`app`, `platform`, `api_key`) with each of them; one whose value
//! each request brings (client IP, header, claim, body) follows both the
//! branch most values take (a wildcard taking every value, or the key-only
//! child) and the branches only some values take (an exact value, a
//! wildcard with a prefix), which are reported as covering some values
//! only.
//!
//! Findings are warnings, as the filter's advisories are: the
//! configurations still load, and the exit status stays 0.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use appguard::config::{Config, Route};
use appguard::limits::{RateLimit as Rule, Source};
use appguard::token::ReplayScope;
use appguard_ratelimit::config::{
    child_key, ConfigError, Loaded, Node, Quota, RateLimit as Limit, RateLimitConfig,
};
use appguard_ratelimit::window::Unit;

use crate::CliError;

/// Loads the rate-limit configuration from `paths` exactly as the service's
/// `--config` does. A path that cannot be read is an input error (exit 2),
/// a file the service refuses an invalid one (exit 1).
pub fn load(paths: &[PathBuf]) -> Result<Loaded, CliError> {
    RateLimitConfig::load_paths(paths).map_err(|e| match e {
        ConfigError::NoConfig | ConfigError::Read { .. } | ConfigError::EmptyDirectory { .. } => {
            CliError::input(e.to_string())
        }
        _ => CliError::invalid(format!("the rate-limit service refuses it: {e}")),
    })
}

/// What a descriptor entry's value can be, as far as the configuration
/// tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryValue {
    /// Fixed by the configuration: the route's name, a `value` literal.
    Fixed(String),
    /// One of these, all known from the configuration: the ids of the apps
    /// or API keys a route accepts, their platforms.
    OneOf(Vec<String>),
    /// Brought by each request: a client IP, a header, a claim, a body
    /// value, a token id's hash.
    PerRequest,
}

/// One entry of a descriptor as the configuration shapes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeEntry {
    /// The descriptor key.
    pub key: String,
    /// Its value.
    pub value: EntryValue,
}

/// The most combinations of known values checked one by one for one
/// descriptor. Beyond it each known value is checked on its own (linear in
/// the number of values), with the other entries' known values walked as
/// per-request values.
const MAX_COMBINATIONS: usize = 4096;

/// The descriptor `rule` of `route` sends, with what the configuration
/// says of each value.
pub fn rule_shape(config: &Config, route: &Route, rule: &Rule) -> Vec<ShapeEntry> {
    let apps = || {
        config
            .apps
            .iter()
            .filter(move |a| route.platforms.is_empty() || route.platforms.contains(&a.platform))
    };
    let one_of = |mut values: Vec<String>| {
        values.sort();
        values.dedup();
        if values.is_empty() {
            EntryValue::PerRequest
        } else {
            EntryValue::OneOf(values)
        }
    };
    rule.entries
        .iter()
        .map(|e| {
            let value = match (e.fixed_value(&route.name), &e.source) {
                (Some(v), _) => EntryValue::Fixed(v.to_owned()),
                (None, Source::App) => one_of(apps().map(|a| a.id.clone()).collect()),
                (None, Source::Platform) => {
                    one_of(apps().map(|a| a.platform.as_str().to_owned()).collect())
                }
                (None, Source::ApiKey) => one_of(
                    config
                        .api_keys
                        .keys
                        .iter()
                        .filter(|k| {
                            !k.disabled && (k.routes.is_empty() || k.routes.contains(&route.name))
                        })
                        .map(|k| k.id.clone())
                        .collect(),
                ),
                (None, _) => EntryValue::PerRequest,
            };
            ShapeEntry {
                key: e.key.clone(),
                value,
            }
        })
        .collect()
}

/// `[route=sms, phone=<per request>]`: keys, and only the values the
/// configuration fixes (never a request's).
pub fn describe(shape: &[ShapeEntry]) -> String {
    let parts: Vec<String> = shape
        .iter()
        .map(|e| match &e.value {
            EntryValue::Fixed(v) => format!("{}={v}", e.key),
            _ => format!("{}=<per request>", e.key),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// One entry as walked: a known value, or any value.
#[derive(Clone, Copy)]
enum Step<'a> {
    Known(&'a str, &'a str),
    Any(&'a str),
}

/// The step of an entry walked without choosing among known values.
fn general(e: &ShapeEntry) -> Step<'_> {
    match &e.value {
        EntryValue::Fixed(v) => Step::Known(&e.key, v),
        _ => Step::Any(&e.key),
    }
}

/// How many combinations of known values `shape` has (saturating).
fn combination_count(shape: &[ShapeEntry]) -> usize {
    shape
        .iter()
        .map(|e| match &e.value {
            EntryValue::OneOf(v) => v.len(),
            _ => 1,
        })
        .try_fold(1usize, |acc, n| acc.checked_mul(n))
        .unwrap_or(usize::MAX)
}

/// The walks that check `shape`'s known values: every combination of them
/// when there are at most [`MAX_COMBINATIONS`]; else each known value on
/// its own, the other entries' known values as per-request values (linear
/// in the number of values, exact when one entry has known values).
fn combinations(shape: &[ShapeEntry]) -> Vec<Vec<Step<'_>>> {
    if combination_count(shape) > MAX_COMBINATIONS {
        let mut out = Vec::new();
        for (i, e) in shape.iter().enumerate() {
            let EntryValue::OneOf(values) = &e.value else {
                continue;
            };
            for v in values {
                let mut steps: Vec<Step<'_>> = shape.iter().map(general).collect();
                steps[i] = Step::Known(&e.key, v);
                out.push(steps);
            }
        }
        return out;
    }
    let mut out: Vec<Vec<Step<'_>>> = vec![Vec::new()];
    for e in shape {
        out = match &e.value {
            EntryValue::OneOf(values) => out
                .into_iter()
                .flat_map(|steps| {
                    values.iter().map(move |v| {
                        let mut steps = steps.clone();
                        steps.push(Step::Known(&e.key, v));
                        steps
                    })
                })
                .collect(),
            _ => out
                .into_iter()
                .map(|mut steps| {
                    steps.push(general(e));
                    steps
                })
                .collect(),
        };
    }
    out
}

/// The child a known value reaches: the service's own step
/// ([`Node::child`]).
fn next_known<'n>(node: &'n Node, key: &str, value: &str) -> Option<&'n Node> {
    node.child(key, value).map(|(n, _)| n)
}

/// For a value chosen per request: the child most values reach (the first
/// wildcard that takes every value, else the key-only child), and the
/// children only some values reach (exact values, wildcards with a prefix
/// or suffix that come before one taking every value).
fn next_any<'n>(node: &'n Node, key: &str) -> (Option<&'n Node>, Vec<&'n Node>) {
    // Children with a value of this key: `child_key(key, "")` and then `=`
    // (values with `*` are the wildcards, below).
    let prefix = format!("{}=", child_key(key, ""));
    let mut some: Vec<&Node> = node
        .children
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix) && !k.contains('*'))
        .map(|(_, n)| n)
        .collect();
    for w in node.wildcards.iter().filter(|w| w.descriptor_key == key) {
        let Some(child) = node.children.get(&w.key) else {
            continue;
        };
        if takes_every_value(&w.parts) {
            return (Some(child), some);
        }
        some.push(child);
    }
    (node.children.get(&child_key(key, "")), some)
}

/// Whether a value pattern (split on `*`) matches any value: it is `*`
/// alone (or `**`…).
fn takes_every_value(parts: &[String]) -> bool {
    parts.len() > 1 && parts.iter().all(String::is_empty)
}

/// Where one path of the walk ends.
struct Reach {
    /// Every per-request value on the way took the branch most values take.
    general: bool,
    /// The keys of the per-request values that, on the way, took a
    /// `share_threshold` wildcard: all their values share one counter.
    shared: Vec<String>,
    /// The limit found there.
    limit: Option<Arc<Limit>>,
}

/// One path's state on the way down.
#[derive(Clone)]
struct Path {
    general: bool,
    shared: Vec<String>,
}

fn walk(node: &Node, steps: &[Step<'_>], path: &Path, out: &mut Vec<Reach>) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    let (main, some) = match *step {
        Step::Known(key, value) => (next_known(node, key, value), Vec::new()),
        Step::Any(key) => next_any(node, key),
    };
    // The service shares a value's counter when it took a wildcard with
    // `share_threshold` (matching.rs `shared_values`); the children a
    // per-request value takes with `share_threshold` are all wildcards.
    let along = |child: &Node, general: bool| {
        let mut p = Path {
            general,
            shared: path.shared.clone(),
        };
        if let (Step::Any(key), Some(_)) = (step, &child.share_threshold_pattern) {
            p.shared.push((*key).to_owned());
        }
        p
    };
    match main {
        Some(child) => reach(Some(child), rest, &along(child, path.general), out),
        None => reach(None, rest, path, out),
    }
    for child in some {
        reach(Some(child), rest, &along(child, false), out);
    }
}

fn reach(child: Option<&Node>, rest: &[Step<'_>], path: &Path, out: &mut Vec<Reach>) {
    let end = |limit: Option<Arc<Limit>>| Reach {
        general: path.general,
        shared: path.shared.clone(),
        limit,
    };
    match child {
        None => out.push(end(None)),
        Some(n) if rest.is_empty() => out.push(end(n.limit.clone())),
        // A descriptor longer than the branch matches nothing.
        Some(n) if n.children.is_empty() => out.push(end(None)),
        Some(n) => walk(n, rest, path, out),
    }
}

/// Every path `steps` can take down from `root`, with what it reaches.
fn reaches(root: &Node, steps: &[Step<'_>]) -> Vec<Reach> {
    let mut out = Vec::new();
    let start = Path {
        general: true,
        shared: Vec::new(),
    };
    walk(root, steps, &start, &mut out);
    out
}

/// What the service makes of a descriptor for one combination of known
/// values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Most values (all, when none is per request) get this limit
    /// (`unlimited: true` and shadow-mode limits included: both are meant).
    Limited(Arc<Limit>),
    /// Only some per-request values reach a limit (value-specific nodes,
    /// wildcards with a prefix); the others none.
    SomeValues,
    /// No value reaches a limit.
    Nothing,
}

#[cfg(test)]
fn outcome(root: &Node, steps: &[Step<'_>]) -> Outcome {
    outcome_of(&reaches(root, steps))
}

fn outcome_of(reaches: &[Reach]) -> Outcome {
    if let Some(limit) = reaches
        .iter()
        .find(|r| r.general)
        .and_then(|r| r.limit.clone())
    {
        Outcome::Limited(limit)
    } else if reaches.iter().any(|r| r.limit.is_some()) {
        Outcome::SomeValues
    } else {
        Outcome::Nothing
    }
}

/// A descriptor sent on a route, for the `replaces` check: who sends it
/// and the limits it gets.
struct Sent {
    at: String,
    limits: Vec<Arc<Limit>>,
}

/// What the filter does when the service does not limit a replay
/// descriptor to 1 per long enough a window (src/policy.rs `rls_verdict`).
const REPLAY_TAIL: &str = "the filter then counts the service as failing for this \
    provider's tokens: on a route with failure_mode deny it answers them \
    ratelimit_unavailable (503); with failure_mode allow it lets them through without the \
    route's service limits, each token accepted once per Envoy instance (its local replay \
    table stands in)";

/// Warnings about the descriptors `config` sends that the rate-limit
/// configuration `rls` does not limit: (a) a rule no limit matches, (b) a
/// rule only some values of which have a limit, (c) a replay descriptor not
/// limited to exactly 1 per long enough a window, (d) a domain the service
/// does not have; a limit in `quota_mode` (not supported for appguard's
/// descriptors) or reached through a `share_threshold` wildcard by a
/// per-request value; and a rule whose limit another descriptor sent with
/// it `replaces`.
pub fn check(config: &Config, rls: &RateLimitConfig) -> Vec<String> {
    let Some(service) = &config.rate_limit_service else {
        return vec![
            "rate_limit_service is not set: nothing goes to the rate-limit service, \
                     so --ratelimit-config has nothing to check"
                .to_owned(),
        ];
    };
    let domain = service.domain.as_str();
    let Some(root) = rls.domain_root(domain) else {
        return vec![format!(
            "rate_limit_service.domain: `{domain}` is none of the rate-limit configuration's \
             domains ({}): the service counts nothing for any descriptor, so no service rule \
             limits anything, and replay.scope: service cannot work",
            rls.domains().join(", ")
        )];
    };
    let file = rls
        .domain_file(domain)
        .unwrap_or("the rate-limit configuration");
    let mut out = Vec::new();
    let mut routes: Vec<Vec<Sent>> = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let mut sent = Vec::new();
        for rule in route.rate_limits.iter().filter(|r| r.local.is_none()) {
            let at = format!("routes[{}].rate_limits[{}]", route.name, rule.name);
            let shape = rule_shape(config, route, rule);
            let desc = describe(&shape);
            let count = combination_count(&shape);
            // Over the cap, a walk with known values of two entries or more
            // takes all but one of them as per-request values.
            let approximate = count > MAX_COMBINATIONS
                && shape
                    .iter()
                    .filter(|e| matches!(e.value, EntryValue::OneOf(_)))
                    .count()
                    > 1;
            let mut limits: Vec<Arc<Limit>> = Vec::new();
            let mut general_limit = false;
            let mut missing: Vec<(String, bool)> = Vec::new();
            let mut any_limit = false;
            let mut notes: Vec<String> = Vec::new();
            for steps in combinations(&shape) {
                let reached = reaches(root, &steps);
                for r in &reached {
                    let Some(limit) = &r.limit else { continue };
                    if !limits.contains(limit) {
                        limits.push(limit.clone());
                    }
                    if limit.quota_mode {
                        push_new(
                            &mut notes,
                            format!(
                                "{at}: the limit `{}` in {file} is in quota_mode, which is not \
                                 supported for descriptors appguard sends (ratelimit/README.md): \
                                 the service refuses a call for it only when every quota-mode \
                                 descriptor of the call is over, and appguard caches it as over \
                                 whenever the call is refused for another descriptor",
                                limit.full_key
                            ),
                        );
                    }
                    // The first ask of a window is for the whole lease:
                    // more than the limit, the service refuses it (and
                    // counts it), and the filter keeps the refusal to the
                    // window's end, window after window.
                    if let (
                        Some(lease),
                        Quota::PerUnit {
                            requests_per_unit,
                            unit,
                        },
                    ) = (rule.lease, &limit.quota)
                    {
                        // Answers come in whole seconds: no lease of a
                        // per-second limit is ever kept (README, Leases).
                        if *unit == Unit::Second && lease > 1 {
                            push_new(
                                &mut notes,
                                format!(
                                    "{at}: lease {lease} on the limit `{}` in {file}, which is \
                                     per second: the service answers in whole seconds, so no \
                                     lease of it is kept; each request still costs a call, and \
                                     each worker's first ask has {lease} hits counted; leave \
                                     lease out, or lease a per-minute limit",
                                    limit.full_key
                                ),
                            );
                        }
                        if lease > *requests_per_unit {
                            push_new(
                                &mut notes,
                                format!(
                                    "{at}: lease {lease} is more than the limit `{}` in {file} \
                                     ({requests_per_unit} a window): the first ask of every window \
                                     is for {lease} hits, which the service refuses (and counts), \
                                     so the rule refuses every request; set lease well under \
                                     {requests_per_unit}",
                                    limit.full_key
                                ),
                            );
                        }
                    }
                    if !r.shared.is_empty() && matches!(limit.quota, Quota::PerUnit { .. }) {
                        push_new(
                            &mut notes,
                            format!(
                                "{at}: the limit `{}` in {file} is reached through a \
                                 share_threshold wildcard: all values of {} share one counter \
                                 (share_threshold), so one client can use it up for everyone",
                                limit.full_key,
                                r.shared.join(", ")
                            ),
                        );
                    }
                }
                match outcome_of(&reached) {
                    Outcome::Limited(_) => {
                        any_limit = true;
                        general_limit = true;
                    }
                    o => {
                        any_limit |= o == Outcome::SomeValues;
                        missing.push((walked(&steps), o == Outcome::SomeValues));
                    }
                }
            }
            let per_request: Vec<&str> = shape
                .iter()
                .filter(|e| e.value == EntryValue::PerRequest)
                .map(|e| e.key.as_str())
                .collect();
            let caveat = if approximate {
                format!(
                    " ({count} combinations of known values, more than {MAX_COMBINATIONS}: each \
                     id was checked on its own, with the other entries' ids as per-request \
                     values, not every combination one by one)"
                )
            } else {
                String::new()
            };
            if !any_limit {
                out.push(format!(
                    "{at}: no limit in {file} (domain {domain}) matches {desc}: the service will \
                     count nothing{caveat}"
                ));
            } else if !general_limit && !per_request.is_empty() {
                out.push(format!(
                    "{at}: in {file} (domain {domain}) only value-specific nodes (an exact \
                     `value`, a wildcard with a prefix) match {desc}: for most values of {} no \
                     limit matches, and the service will count nothing{caveat}",
                    per_request.join(", ")
                ));
            } else if !missing.is_empty() {
                out.push(format!(
                    "{at}: no limit in {file} (domain {domain}) matches {}: the service will \
                     count nothing for those requests{caveat}",
                    listed(&missing)
                ));
            }
            out.extend(notes);
            sent.push(Sent { at, limits });
        }
        routes.push(sent);
    }
    for (i, provider) in config.providers.iter().enumerate() {
        let Some(replay) = provider
            .replay
            .as_ref()
            .filter(|r| r.scope == ReplayScope::Service)
        else {
            continue;
        };
        let at = format!("tokens[{i}] ({}).replay", provider.name);
        let shape = [ShapeEntry {
            key: replay.claim.clone(),
            value: EntryValue::PerRequest,
        }];
        let steps = [Step::Any(&replay.claim)];
        let reached = reaches(root, &steps);
        if !matches!(outcome_of(&reached), Outcome::Limited(_)) {
            out.push(format!(
                "{at}: no limit in {file} (domain {domain}) matches {}: replays pass the \
                 service; {REPLAY_TAIL}",
                describe(&shape)
            ));
        }
        // Every limit a token id can reach, the general one and those only
        // some token ids reach (an exact value, a prefix wildcard).
        let mut limits: Vec<Arc<Limit>> = Vec::new();
        for r in &reached {
            let Some(limit) = &r.limit else { continue };
            let which = if r.general {
                ""
            } else {
                "for some token ids, "
            };
            let mut problems: Vec<String> = Vec::new();
            if let Some(problem) = replay_problem(limit, provider.replay_horizon()) {
                problems.push(problem);
            }
            if !r.shared.is_empty()
                && matches!(limit.quota, Quota::PerUnit { requests_per_unit, .. } if requests_per_unit > 0)
            {
                problems.push(
                    "is reached through a share_threshold wildcard: every token shares one \
                     counter: after the first, tokens are refused as replayed"
                        .to_owned(),
                );
            }
            for problem in problems {
                push_new(
                    &mut out,
                    format!(
                        "{at}: {which}the limit `{}` in {file} {problem}",
                        limit.full_key
                    ),
                );
            }
            if !limits.contains(limit) {
                limits.push(limit.clone());
            }
        }
        for (route, sent) in config.routes.iter().zip(routes.iter_mut()) {
            if route.providers.contains(&i) {
                sent.push(Sent {
                    at: at.clone(),
                    limits: limits.clone(),
                });
            }
        }
    }
    for (route, sent) in config.routes.iter().zip(&routes) {
        for (i, s) in sent.iter().enumerate() {
            for limit in s.limits.iter().filter(|l| !l.name.is_empty()) {
                let by = sent.iter().enumerate().find_map(|(j, other)| {
                    (j != i)
                        .then(|| {
                            other
                                .limits
                                .iter()
                                .find(|o| o.replaces.contains(&limit.name))
                        })
                        .flatten()
                        .map(|o| (other, o))
                });
                let Some((other, replacing)) = by else {
                    continue;
                };
                let mut message = format!(
                    "{}: on route {}, its limit `{}` is replaced by `{}` (of {}, `replaces: \
                     [{{name: {}}}]`) whenever both are sent: the service then counts nothing \
                     for it",
                    s.at, route.name, limit.full_key, replacing.full_key, other.at, limit.name
                );
                if s.at.starts_with("tokens[") {
                    let _ = write!(message, "; replays pass the service, and {REPLAY_TAIL}");
                }
                if !out.contains(&message) {
                    out.push(message);
                }
            }
        }
    }
    out
}

/// What is wrong with `limit` for a replay descriptor, whose tokens are
/// accepted for `horizon` seconds; `None` when it makes each value single
/// use, as the filter requires (1 per unit, a window at least `horizon`).
fn replay_problem(limit: &Limit, horizon: u64) -> Option<String> {
    let (requests, unit) = match limit.quota {
        Quota::Unlimited => {
            return Some(format!(
                "is `unlimited: true`: replays pass the service; {REPLAY_TAIL}"
            ))
        }
        Quota::PerUnit {
            requests_per_unit,
            unit,
        } => (requests_per_unit, unit),
    };
    if requests == 0 {
        return Some(format!(
            "allows none (a limit other than 1 per window is no replay protection the filter \
             can use); {REPLAY_TAIL}"
        ));
    }
    if requests != 1 {
        return Some(format!(
            "allows {requests} per {}, not 1: replays pass the service; {REPLAY_TAIL}",
            unit.name()
        ));
    }
    let window = appguard::ratelimit::rls::Unit::try_from(unit.to_pb() as i32)
        .ok()
        .and_then(appguard::ratelimit::rls::Unit::min_window_secs)
        .unwrap_or(0);
    if window < horizon {
        return Some(format!(
            "is 1 per {}, shorter than this provider accepts a token for ({horizon} s: \
             max_lifetime_seconds plus twice clock_skew_seconds and one second): a token can be replayed in \
             the next window; {REPLAY_TAIL}",
            unit.name()
        ));
    }
    if limit.shadow_mode {
        return Some(
            "is in shadow_mode: the service answers OK to a replay, and the filter cannot tell: \
             replays pass"
                .to_owned(),
        );
    }
    if limit.quota_mode {
        return Some(
            "is in quota_mode, which is not supported for descriptors appguard sends \
             (ratelimit/README.md): the service refuses a replay only when every quota-mode \
             descriptor of the call is over, so replays pass whenever another quota-mode \
             descriptor of the call is under its limit, and the filter cannot tell"
                .to_owned(),
        );
    }
    None
}

/// The descriptor as one walk takes it: the known values it chose, and
/// `<per request>` for the others.
fn walked(steps: &[Step<'_>]) -> String {
    let parts: Vec<String> = steps
        .iter()
        .map(|step| match step {
            Step::Known(k, v) => format!("{k}={v}"),
            Step::Any(k) => format!("{k}=<per request>"),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Appends `message` unless it is already there.
fn push_new(out: &mut Vec<String>, message: String) {
    if !out.contains(&message) {
        out.push(message);
    }
}

/// Up to five descriptors, and how many more.
fn listed(missing: &[(String, bool)]) -> String {
    let mut text: Vec<String> = missing
        .iter()
        .take(5)
        .map(|(d, some)| {
            if *some {
                format!("{d} (but for some values)")
            } else {
                d.clone()
            }
        })
        .collect();
    if missing.len() > 5 {
        text.push(format!("and {} more", missing.len() - 5));
    }
    text.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;

    fn rls(text: &str) -> RateLimitConfig {
        RateLimitConfig::from_sources(&[("rl.yaml".to_owned(), text.to_owned())])
            .unwrap()
            .0
    }

    fn steps<'a>(entries: &'a [(&'a str, Option<&'a str>)]) -> Vec<Step<'a>> {
        entries
            .iter()
            .map(|(k, v)| match v {
                Some(v) => Step::Known(k, v),
                None => Step::Any(k),
            })
            .collect()
    }

    const YAML: &str = r#"
domain: d
descriptors:
  - key: client_ip
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: blocked
    value: 10.0.0.1
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: tenant
    value: "acme*"
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: path
    value: "*"
    rate_limit: {unit: minute, requests_per_unit: 7}
  - key: route
    value: sms
    descriptors:
      - key: phone
        rate_limit: {unit: hour, requests_per_unit: 2}
  - key: platform
    value: android
    rate_limit: {unlimited: true}
"#;

    #[test]
    fn a_replay_window_must_outlast_the_last_second_a_token_is_taken_in() {
        // 1 per hour, rolling: enough for tokens of up to 3,589 s with the
        // default 5 s skew, not for 3,590 s, which the whole-second clock
        // takes until 3,601 s after their first use.
        let c = rls("domain: d\ndescriptors:\n  - key: jti\n    rate_limit: {unit: hour, requests_per_unit: 1, rolling: true}\n");
        let limit = c.domain_root("d").unwrap().children[&child_key("jti", "")]
            .limit
            .clone()
            .unwrap();
        let provider = |max: u64| {
            let json = format!(
                r#"{{"tokens":[{{"name":"t","from":[{{"header":"x-t"}}],
                "keys":[{{"alg":"HS256","secret_base64":"{}"}}],"max_lifetime_seconds":{max}}}]}}"#,
                "A".repeat(44)
            );
            appguard::config::Config::from_json(json.as_bytes())
                .unwrap()
                .providers[0]
                .replay_horizon()
        };
        assert_eq!(replay_problem(&limit, provider(3589)), None);
        let problem = replay_problem(&limit, provider(3590)).unwrap();
        assert!(
            problem
                .contains("is 1 per hour, shorter than this provider accepts a token for (3601 s"),
            "{problem}"
        );
    }

    #[test]
    fn known_values_are_matched_as_the_service_matches_them() {
        let c = rls(YAML);
        let root = c.domain_root("d").unwrap();
        // The walk agrees with the service's own lookup for known values.
        for entries in [
            vec![("route", Some("sms")), ("phone", Some("x"))],
            vec![("route", Some("other")), ("phone", Some("x"))],
            vec![("client_ip", Some("1.2.3.4"))],
            vec![("platform", Some("android"))],
            vec![("platform", Some("ios"))],
            vec![("route", Some("sms"))],
            vec![("client_ip", Some("1")), ("x", Some("y"))],
        ] {
            let pairs: Vec<(String, String)> = entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.unwrap().to_owned()))
                .collect();
            let descriptor = envoy_descriptor(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            );
            let service = c.get_limit("d", &descriptor).unwrap().map(|m| m.limit);
            let ours = match outcome(root, &steps(&entries)) {
                Outcome::Limited(l) => Some(l),
                _ => None,
            };
            assert_eq!(ours, service, "{entries:?}");
        }
    }

    /// A request descriptor from `(key, value)` pairs, as Envoy sends it.
    pub(super) fn envoy_descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).to_owned(),
                    value: (*v).to_owned(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn per_request_values_take_the_branch_most_values_take() {
        let c = rls(YAML);
        let root = c.domain_root("d").unwrap();
        let o = |e: &[(&str, Option<&str>)]| outcome(root, &steps(e));
        assert!(matches!(o(&[("client_ip", None)]), Outcome::Limited(_)));
        assert!(matches!(o(&[("path", None)]), Outcome::Limited(_)));
        assert!(matches!(
            o(&[("route", Some("sms")), ("phone", None)]),
            Outcome::Limited(_)
        ));
        assert_eq!(o(&[("blocked", None)]), Outcome::SomeValues);
        assert_eq!(o(&[("tenant", None)]), Outcome::SomeValues);
        assert_eq!(o(&[("phone", None)]), Outcome::Nothing);
        assert_eq!(
            o(&[("route", Some("sms")), ("phone", None), ("x", None)]),
            Outcome::Nothing
        );
    }

    #[test]
    fn known_values_are_checked_one_by_one() {
        // Two web apps and a rule per app: a YAML that names one app only
        // leaves the other unlimited, and says which.
        let config = Config::from_json(
            br#"{"rate_limit_service": {"cluster": "rls", "domain": "d"},
            "apps": [{"id": "web-a", "platform": "web", "origins": ["https://a.example"]},
                     {"id": "web-b", "platform": "web", "origins": ["https://b.example"]}],
            "routes": [{"name": "r", "match": {"prefix": "/"}, "platforms": ["web"],
              "rate_limits": [{"name": "per-app", "entries": [{"type": "app"}]},
                              {"name": "per-platform", "entries": [{"type": "platform"}]}]}]}"#,
        )
        .unwrap();
        let yaml = "domain: d\ndescriptors:\n  - key: app\n    value: web-a\n    rate_limit: {unit: minute, requests_per_unit: 5}\n  - key: platform\n    value: web\n    rate_limit: {unit: minute, requests_per_unit: 9}\n";
        assert_eq!(
            check(&config, &rls(yaml)),
            ["routes[r].rate_limits[per-app]: no limit in rl.yaml (domain d) matches [app=web-b]: \
              the service will count nothing for those requests"]
        );
        let shape = rule_shape(&config, &config.routes[0], &config.routes[0].rate_limits[1]);
        assert_eq!(shape[0].value, EntryValue::OneOf(vec!["web".to_owned()]));
    }

    #[test]
    fn takes_every_value_only_for_a_bare_star() {
        let p = |s: &str| s.split('*').map(str::to_owned).collect::<Vec<_>>();
        assert!(takes_every_value(&p("*")));
        assert!(takes_every_value(&p("**")));
        assert!(!takes_every_value(&p("a*")));
        assert!(!takes_every_value(&p("*a")));
        assert!(!takes_every_value(&p("")));
    }
}

#[cfg(test)]
mod agreement {
    //! The walk against the service's own `get_limit`, over every
    //! descriptor of up to three entries drawn from a small alphabet, on a
    //! YAML with exact values, wildcards before and after exact values,
    //! nested wildcards, placeholders without limits, and share_threshold.
    use super::tests::envoy_descriptor as descriptor;
    use super::*;

    const YAML: &str = r#"
domain: d
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 1}
    descriptors:
      - key: b
        value: "x*"
        rate_limit: {unit: minute, requests_per_unit: 2}
      - key: b
        rate_limit: {unit: minute, requests_per_unit: 3}
        descriptors:
          - key: c
            rate_limit: {unit: minute, requests_per_unit: 4}
  - key: a
    value: x
    descriptors:
      - key: b
        value: "*"
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 5}
  - key: a
    value: "x*"
    rate_limit: {unit: minute, requests_per_unit: 6}
    descriptors:
      - key: c
        value: y
        rate_limit: {unit: minute, requests_per_unit: 7}
  - key: b
    value: "*y"
    rate_limit: {unit: minute, requests_per_unit: 8}
  - key: b
    value: xy
    descriptors:
      - key: a
        rate_limit: {unit: minute, requests_per_unit: 9}
  - key: c
    value: "*"
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: c
    rate_limit: {unit: minute, requests_per_unit: 11}
  - key: a_z
    rate_limit: {unit: minute, requests_per_unit: 12}
  - key: b_x
    value: y
    rate_limit: {unit: minute, requests_per_unit: 13}
"#;

    #[test]
    fn known_values_agree_with_get_limit_exhaustively() {
        let c = RateLimitConfig::from_sources(&[("rl.yaml".to_owned(), YAML.to_owned())])
            .unwrap()
            .0;
        let root = c.domain_root("d").unwrap();
        // (`a_z` and `b_x=y` are nodes that `a=z` and `b=x_y` reach when
        // keys and values are joined; `=` and `:` are in the map keys.)
        let keys = ["a", "b", "c", "a_z", "b_x"];
        let values = ["x", "xy", "y", "z", "xz", "", "x_y", "=y", "1:a"];
        let mut pairs = Vec::new();
        for k in keys {
            for v in values {
                pairs.push((k, v));
            }
        }
        let mut n = 0;
        let mut check = |entries: &[(&str, &str)]| {
            let service = c
                .get_limit("d", &descriptor(entries))
                .unwrap()
                .map(|m| m.limit);
            let steps: Vec<Step<'_>> = entries.iter().map(|(k, v)| Step::Known(k, v)).collect();
            let ours = match outcome(root, &steps) {
                Outcome::Limited(l) => Some(l),
                _ => None,
            };
            assert_eq!(ours, service, "{entries:?}");
            n += 1;
        };
        for p in &pairs {
            check(&[*p]);
            for q in &pairs {
                check(&[*p, *q]);
                for r in &pairs {
                    check(&[*p, *q, *r]);
                }
            }
        }
        assert!(n > 5000);
    }

    #[test]
    fn per_request_general_branch_is_what_an_unnamed_value_gets() {
        let c = RateLimitConfig::from_sources(&[("rl.yaml".to_owned(), YAML.to_owned())])
            .unwrap()
            .0;
        let root = c.domain_root("d").unwrap();
        let keys = ["a", "b", "c"];
        let known = ["x", "xy", "z"];
        // A value no pattern names: takes the branch "most values" take.
        let fresh = "q-unnamed";
        for k1 in keys {
            for k2 in keys {
                for v1 in known {
                    // [k1=v1 (known), k2=<per request>]
                    let steps = [Step::Known(k1, v1), Step::Any(k2)];
                    let service = c
                        .get_limit("d", &descriptor(&[(k1, v1), (k2, fresh)]))
                        .unwrap()
                        .map(|m| m.limit);
                    match outcome(root, &steps) {
                        Outcome::Limited(l) => {
                            assert_eq!(Some(l), service, "{k1}={v1},{k2}=*")
                        }
                        _ => assert_eq!(service, None, "{k1}={v1},{k2}=*"),
                    }
                }
                // [k1=<per request>, k2=<per request>]
                let steps = [Step::Any(k1), Step::Any(k2)];
                let service = c
                    .get_limit("d", &descriptor(&[(k1, fresh), (k2, fresh)]))
                    .unwrap()
                    .map(|m| m.limit);
                match outcome(root, &steps) {
                    Outcome::Limited(l) => assert_eq!(Some(l), service, "{k1}=*,{k2}=*"),
                    _ => assert_eq!(service, None, "{k1}=*,{k2}=*"),
                }
            }
        }
    }
}
