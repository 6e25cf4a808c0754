//! Envoy stats counters, defined once per worker on first use of each
//! (route, decision, reason) and then only incremented.
//!
//! Names are `appguard_decisions.route.<route>.decision.<allow|deny|monitor>
//! .reason.<reason|none>`; Envoy prefixes custom Wasm stats with
//! `wasmcustom.` (and drops it again in Prometheus output). The
//! `stats_tags` in envoy/envoy.yaml turn the three parts into labels, so
//! Prometheus sees `appguard_decisions{route,decision,reason}`.

use std::cell::RefCell;
use std::collections::HashMap;

use super::abi;

use crate::config::Config;
use crate::decision::Reason;

/// A counter's identity: route index (None = unmatched), denial reason
/// (None = allowed), monitored (true = a would-be denial let through).
type CounterKey = (Option<usize>, Option<Reason>, bool);

/// Counter ids of one worker.
pub struct Metrics {
    route_names: Vec<String>,
    ids: RefCell<HashMap<CounterKey, u32>>,
    budget_refusals: Option<u32>,
}

impl Metrics {
    /// Metrics for the configured routes.
    pub fn new(config: &Config) -> Self {
        Metrics {
            route_names: config.routes.iter().map(|r| r.name.clone()).collect(),
            ids: RefCell::new(HashMap::new()),
            budget_refusals: abi::define_counter("appguard_verification_budget_refusals").ok(),
        }
    }

    /// Counts a token refused without verification because its client's
    /// signature-failure budget is spent.
    pub fn budget_refusal(&self) {
        if let Some(id) = self.budget_refusals {
            let _ = abi::increment(id, 1);
        }
    }

    /// Counts one decision: `route` index (None = unmatched), the denial
    /// reason (None = allowed), and whether it was only monitored.
    pub fn count(&self, route: Option<usize>, reason: Option<Reason>, monitored: bool) {
        let key = (route, reason, monitored);
        let id = self.ids.borrow().get(&key).copied();
        let id = match id {
            Some(id) => id,
            None => {
                let route_name = route
                    .and_then(|r| self.route_names.get(r))
                    .map_or("_unmatched", String::as_str);
                let decision = match (reason, monitored) {
                    (None, _) => "allow",
                    (Some(_), true) => "monitor",
                    (Some(_), false) => "deny",
                };
                let reason_code = reason.map_or("none", Reason::code);
                let name =
                    format!("appguard_decisions.route.{route_name}.decision.{decision}.reason.{reason_code}");
                let Ok(id) = abi::define_counter(&name) else {
                    return;
                };
                self.ids.borrow_mut().insert(key, id);
                id
            }
        };
        let _ = abi::increment(id, 1);
    }
}
