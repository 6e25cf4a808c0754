//! Finding the limit that applies to one request descriptor.
//!
//! The walk is envoyproxy/ratelimit's `GetLimit` (`src/config/config_impl.go`):
//!
//! - an unknown domain matches nothing;
//! - a descriptor that carries its own `limit` override uses it as is (when
//!   the domain is known);
//! - otherwise the entries are walked from the domain root, one tree level
//!   per entry. At each level the child with the entry's key and value is
//!   preferred, then the first wildcard child (file order) of that key
//!   whose value pattern matches the value, then the key-only child. The
//!   key and value are compared apart, where envoyproxy/ratelimit compares
//!   them joined as `key_value` (so that its key-only node `tier_gold`
//!   also takes the entry `tier=gold`);
//! - the limit applied is the one on the node reached by the **last** entry;
//!   a limit on a node reached earlier applies only to descriptors that stop
//!   there. The walk stops at a node without children, so a descriptor longer
//!   than the configured branch matches nothing.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;

use crate::config::{child_key, Node, Quota, RateLimit, RateLimitConfig};
use crate::window::Unit;

/// The limit found for a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedLimit {
    /// The limit.
    pub limit: Arc<RateLimit>,
    /// For each entry index, the wildcard value pattern to count under
    /// instead of the request value (`share_threshold`); empty when no entry
    /// shares a threshold.
    pub shared_values: Vec<Option<String>>,
}

/// A descriptor the service cannot evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The descriptor's `limit` override has an unknown unit.
    #[error("descriptor limit override has an unknown unit ({0})")]
    InvalidOverrideUnit(i32),
}

/// Whether `value` matches a pattern split on `*`: each `*` stands for zero
/// or more characters, the pattern's first part must start the value, its
/// last part end it, and the middle parts appear in order in between.
pub fn wildcard_match(parts: &[String], value: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return first == value;
    }
    let fixed: usize = parts.iter().map(String::len).sum();
    if value.len() < fixed || !value.starts_with(first.as_str()) || !value.ends_with(last.as_str())
    {
        return false;
    }
    // Safe: value.len() >= first.len() + last.len(), and both ends matched
    // whole strings, so these are character boundaries.
    let Some(mut rest) = value.get(first.len()..value.len() - last.len()) else {
        return false;
    };
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part.as_str()) {
            Some(index) => rest = &rest[index + part.len()..],
            None => return false,
        }
    }
    true
}

impl Node {
    /// The child a request entry (`key`, `value`) reaches from this node,
    /// and whether through a wildcard: the child of that key and value,
    /// else the first wildcard child of that key whose pattern matches the
    /// value, else the key-only child. One step of
    /// [`RateLimitConfig::get_limit`]'s walk, which the operator CLI's
    /// check takes too.
    pub fn child(&self, key: &str, value: &str) -> Option<(&Node, bool)> {
        // One map key serves both lookups, on every call's every entry:
        // the key-only child's is the same cut before its `=value`.
        let mut map_key = child_key(key, value);
        if !value.is_empty() {
            if let Some(n) = self.children.get(&map_key) {
                return Some((n, false));
            }
            map_key.truncate(map_key.len().saturating_sub(value.len() + 1));
        }
        let wildcard = self
            .wildcards
            .iter()
            .find(|w| w.descriptor_key == key && wildcard_match(&w.parts, value))
            .and_then(|w| self.children.get(&w.key));
        if let Some(n) = wildcard {
            return Some((n, true));
        }
        self.children.get(&map_key).map(|n| (n, false))
    }
}

impl RateLimitConfig {
    /// The limit for `descriptor` in `domain`, or `None` when no configured
    /// limit applies (the descriptor is then answered OK without counting).
    pub fn get_limit(
        &self,
        domain: &str,
        descriptor: &RateLimitDescriptor,
    ) -> Result<Option<MatchedLimit>, LookupError> {
        let Some(root) = self.domains.get(domain) else {
            return Ok(None);
        };

        if let Some(limit_override) = &descriptor.limit {
            let unit = Unit::from_pb(limit_override.unit)
                .ok_or(LookupError::InvalidOverrideUnit(limit_override.unit))?;
            return Ok(Some(MatchedLimit {
                limit: Arc::new(RateLimit {
                    full_key: override_key(domain, descriptor),
                    quota: Quota::PerUnit {
                        requests_per_unit: limit_override.requests_per_unit,
                        unit,
                    },
                    name: String::new(),
                    replaces: Vec::new(),
                    // An override from Envoy is never in shadow mode.
                    shadow_mode: false,
                    quota_mode: false,
                    rolling: false,
                }),
                shared_values: Vec::new(),
            }));
        }

        let last = descriptor.entries.len().saturating_sub(1);
        let mut level: &Node = root;
        let mut found: Option<Arc<RateLimit>> = None;
        let mut shared_values: Vec<Option<String>> = Vec::new();

        for (i, entry) in descriptor.entries.iter().enumerate() {
            let Some((node, via_wildcard)) = level.child(&entry.key, &entry.value) else {
                break;
            };

            if via_wildcard {
                if let Some(pattern) = &node.share_threshold_pattern {
                    if shared_values.len() < descriptor.entries.len() {
                        shared_values.resize(descriptor.entries.len(), None);
                    }
                    shared_values[i] = Some(pattern.clone());
                }
            }

            if i == last {
                found = node.limit.clone();
            }
            if node.children.is_empty() {
                break;
            }
            level = node;
        }

        Ok(found.map(|limit| MatchedLimit {
            limit,
            shared_values,
        }))
    }
}

/// Marks the name of a limit that came from the request's `limit` override
/// rather than from the configuration.
pub const OVERRIDE_MARKER: &str = "(override)";

/// Name of a limit override for logs and stats:
/// `domain.key.key…(override)`, e.g. `appguard.api_key(override)`.
///
/// Only the descriptor **keys** go in, never their values: an override's
/// values are the request's own (an API key, a phone number, a token id),
/// and this name is logged at `info` on every over-limit answer, where
/// values must not appear (they are logged at `debug` only). The counter
/// key ([`crate::service::cache_key`]) still holds the values, so each
/// value keeps its own counter.
fn override_key(domain: &str, descriptor: &RateLimitDescriptor) -> String {
    let mut key = String::from(domain);
    for entry in &descriptor.entries {
        key.push('.');
        key.push_str(&entry.key);
    }
    key.push_str(OVERRIDE_MARKER);
    key
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };

    /// A request descriptor from `(key, value)` pairs.
    pub(crate) fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
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

    pub(crate) fn config(text: &str) -> RateLimitConfig {
        RateLimitConfig::from_sources(&[("t.yaml".to_owned(), text.to_owned())])
            .unwrap()
            .0
    }

    fn key_of(config: &RateLimitConfig, domain: &str, entries: &[(&str, &str)]) -> Option<String> {
        config
            .get_limit(domain, &descriptor(entries))
            .unwrap()
            .map(|m| m.limit.full_key.clone())
    }

    const MESSAGING: &str = r#"
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
"#;

    #[test]
    fn nested_match_uses_the_last_entry() {
        let c = config(MESSAGING);
        assert_eq!(
            key_of(
                &c,
                "messaging",
                &[("message_type", "marketing"), ("to_number", "2061111111")]
            ),
            Some("messaging.message_type_marketing.to_number".to_owned())
        );
        assert_eq!(
            key_of(&c, "messaging", &[("to_number", "2061111111")]),
            Some("messaging.to_number".to_owned())
        );
        // The placeholder node has no limit of its own.
        assert_eq!(
            key_of(&c, "messaging", &[("message_type", "marketing")]),
            None
        );
        // An unknown value at the first level matches nothing (no key-only node).
        assert_eq!(
            key_of(
                &c,
                "messaging",
                &[("message_type", "transactional"), ("to_number", "1")]
            ),
            None
        );
        // Unknown key, unknown domain, empty descriptor: nothing.
        assert_eq!(key_of(&c, "messaging", &[("other", "x")]), None);
        assert_eq!(key_of(&c, "nope", &[("to_number", "1")]), None);
        assert_eq!(key_of(&c, "messaging", &[]), None);
    }

    #[test]
    fn key_value_is_preferred_over_key_only() {
        let c = config(
            r#"
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
"#,
        );
        let m = c
            .get_limit(
                "edge_proxy_per_ip",
                &descriptor(&[("remote_address", "50.0.0.5")]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            m.limit.full_key,
            "edge_proxy_per_ip.remote_address_50.0.0.5"
        );
        assert_eq!(
            m.limit.quota,
            Quota::PerUnit {
                requests_per_unit: 0,
                unit: Unit::Second
            }
        );
        assert_eq!(
            key_of(&c, "edge_proxy_per_ip", &[("remote_address", "50.0.0.1")]),
            Some("edge_proxy_per_ip.remote_address".to_owned())
        );
    }

    #[test]
    fn keys_and_values_are_matched_apart() {
        // envoyproxy/ratelimit joins them as `key_value`: its key-only node
        // `tier_gold` takes the entry `tier=gold`, and the node `user_a`
        // with value `b` the entry `user=a_b`, a value a client may choose.
        let c = config(
            r#"
domain: d
descriptors:
  - key: tier_gold
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: user_a
    value: b
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: user_a
    value: "x*"
    rate_limit: {unit: minute, requests_per_unit: 4}
"#,
        );
        assert_eq!(key_of(&c, "d", &[("tier", "gold")]), None);
        assert_eq!(
            key_of(&c, "d", &[("user", "a_b")]),
            Some("d.user".to_owned())
        );
        assert_eq!(
            key_of(&c, "d", &[("user", "a_xyz")]),
            Some("d.user".to_owned())
        );
        // Each still takes its own entries.
        assert_eq!(
            key_of(&c, "d", &[("tier_gold", "")]),
            Some("d.tier_gold".to_owned())
        );
        assert_eq!(
            key_of(&c, "d", &[("tier_gold", "v")]),
            Some("d.tier_gold".to_owned())
        );
        assert_eq!(
            key_of(&c, "d", &[("user_a", "b")]),
            Some("d.user_a_b".to_owned())
        );
        assert_eq!(
            key_of(&c, "d", &[("user_a", "xyz")]),
            Some("d.user_a_x*".to_owned())
        );
        assert_eq!(key_of(&c, "d", &[("user_a", "c")]), None);
    }

    #[test]
    fn depth_must_match() {
        // README example 4: a longer request descriptor does not match a
        // shorter branch, a shorter one does not take a deeper limit.
        let c = config(
            "domain: example4\ndescriptors:\n  - key: key\n    value: value\n    rate_limit: {unit: second, requests_per_unit: 300}\n",
        );
        assert_eq!(
            key_of(&c, "example4", &[("key", "value"), ("subkey", "subvalue")]),
            None
        );
        let c = config(
            "domain: example4\ndescriptors:\n  - key: key\n    value: value\n    descriptors:\n      - key: subkey\n        rate_limit: {unit: second, requests_per_unit: 300}\n",
        );
        assert_eq!(
            key_of(&c, "example4", &[("key", "value"), ("subkey", "subvalue")]),
            Some("example4.key_value.subkey".to_owned())
        );
        assert_eq!(key_of(&c, "example4", &[("key", "value")]), None);
    }

    #[test]
    fn a_level_with_a_limit_and_children() {
        let c = config(
            r#"
domain: d
descriptors:
  - key: app
    rate_limit: {unit: minute, requests_per_unit: 100}
    descriptors:
      - key: route
        value: /sms
        rate_limit: {unit: minute, requests_per_unit: 5}
"#,
        );
        assert_eq!(key_of(&c, "d", &[("app", "a")]), Some("d.app".to_owned()));
        assert_eq!(
            key_of(&c, "d", &[("app", "a"), ("route", "/sms")]),
            Some("d.app.route_/sms".to_owned())
        );
        // The second entry matches no child: no limit, not even the parent's.
        assert_eq!(key_of(&c, "d", &[("app", "a"), ("route", "/other")]), None);
    }

    #[test]
    fn unlimited_shadow_and_flags_are_carried() {
        let c = config(
            r#"
domain: internal
descriptors:
  - key: ldap
    rate_limit: {unlimited: true}
  - key: service
    descriptors:
      - key: user
        value: user-a
        shadow_mode: true
        rate_limit: {requests_per_unit: 10, unit: second}
"#,
        );
        let m = c
            .get_limit("internal", &descriptor(&[("ldap", "x")]))
            .unwrap()
            .unwrap();
        assert_eq!(m.limit.quota, Quota::Unlimited);
        let m = c
            .get_limit(
                "internal",
                &descriptor(&[("service", "auth"), ("user", "user-a")]),
            )
            .unwrap()
            .unwrap();
        assert!(m.limit.shadow_mode);
        assert_eq!(
            key_of(&c, "internal", &[("service", "auth"), ("user", "user-b")]),
            None
        );
    }

    #[test]
    fn wildcards_match_in_file_order_after_exact_values() {
        let c = config(
            r#"
domain: w
descriptors:
  - key: path
    value: /api/*/action
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: path
    value: /api/*
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: path
    value: /api/exact/action
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: path
    rate_limit: {unit: minute, requests_per_unit: 4}
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 10}
"#,
        );
        assert_eq!(
            key_of(&c, "w", &[("path", "/api/123/action")]),
            Some("w.path_/api/*/action".to_owned())
        );
        assert_eq!(
            key_of(&c, "w", &[("path", "/api/123/other")]),
            Some("w.path_/api/*".to_owned())
        );
        assert_eq!(
            key_of(&c, "w", &[("path", "/api/exact/action")]),
            Some("w.path_/api/exact/action".to_owned())
        );
        assert_eq!(
            key_of(&c, "w", &[("path", "/other")]),
            Some("w.path".to_owned())
        );
        let m = c
            .get_limit("w", &descriptor(&[("files", "files/a.pdf")]))
            .unwrap()
            .unwrap();
        assert_eq!(m.shared_values, vec![Some("files/*".to_owned())]);
        let m = c
            .get_limit("w", &descriptor(&[("path", "/api/1/action")]))
            .unwrap()
            .unwrap();
        assert!(m.shared_values.is_empty());
    }

    #[test]
    fn wildcard_matching() {
        let p = |s: &str| s.split('*').map(str::to_owned).collect::<Vec<_>>();
        assert!(wildcard_match(&p("k_value*"), "k_value1"));
        assert!(wildcard_match(&p("k_value*"), "k_value"));
        assert!(!wildcard_match(&p("k_value*"), "k_valu"));
        assert!(wildcard_match(&p("k_/api/*/action"), "k_/api/1/action"));
        assert!(!wildcard_match(&p("k_/api/*/action"), "k_/api/1/other"));
        assert!(wildcard_match(
            &p("k_/api/*/resource/*/action"),
            "k_/api/v1/resource/123/action"
        ));
        assert!(!wildcard_match(
            &p("k_/api/*/resource/*/action"),
            "k_/api/v1/action"
        ));
        // Prefix and suffix may not overlap.
        assert!(!wildcard_match(&p("ab*ba"), "aba"));
        assert!(wildcard_match(&p("ab*ba"), "abba"));
        assert!(wildcard_match(&p("exact"), "exact"));
        assert!(!wildcard_match(&p("exact"), "exactly"));
        assert!(wildcard_match(&p("é*ü"), "éxü"));
        assert!(!wildcard_match(&[], "x"));
    }

    #[test]
    fn limit_override_is_used_for_known_domains() {
        let c = config(MESSAGING);
        let mut d = descriptor(&[("to_number", "1")]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 7,
            unit: Unit::Hour.to_pb() as i32,
        });
        let m = c.get_limit("messaging", &d).unwrap().unwrap();
        assert_eq!(
            m.limit.quota,
            Quota::PerUnit {
                requests_per_unit: 7,
                unit: Unit::Hour
            }
        );
        assert_eq!(m.limit.full_key, "messaging.to_number(override)");
        assert!(!m.limit.shadow_mode);
        assert_eq!(c.get_limit("other", &d).unwrap(), None);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 7,
            unit: 0,
        });
        assert_eq!(
            c.get_limit("messaging", &d),
            Err(LookupError::InvalidOverrideUnit(0))
        );
    }

    #[test]
    fn limit_override_name_holds_keys_not_values() {
        let c = config("domain: appguard\ndescriptors:\n  - key: api_key\n    rate_limit: {unit: hour, requests_per_unit: 9}\n");
        let mut d = descriptor(&[("api_key", "SECRET-KEY-123"), ("route", "+15551234567")]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 1,
            unit: Unit::Minute.to_pb() as i32,
        });
        let m = c.get_limit("appguard", &d).unwrap().unwrap();
        assert_eq!(m.limit.full_key, "appguard.api_key.route(override)");
        assert!(m.limit.name.is_empty());
        for value in ["SECRET-KEY-123", "+15551234567"] {
            assert!(!m.limit.full_key.contains(value), "{}", m.limit.full_key);
        }
    }
}
