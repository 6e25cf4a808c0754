//! Envoy stats counters, defined once per worker on first use of each
//! (route, decision, reason) and then only incremented.
//!
//! Names are `appguard_decisions.route.<route>.decision.<decision>.reason.
//! <reason|none>`, decision one of `allow`, `deny`, `monitor` (a would-be
//! denial let through), `degraded` (let through by `failure_mode: allow`
//! while a dependency was down) and `preflight` (a CORS preflight let
//! through by `bypass_cors_preflight`). Envoy prefixes custom Wasm stats
//! with `wasmcustom.` (and drops it again in Prometheus output). The
//! `stats_tags` in envoy/envoy.yaml turn the three parts into labels, so
//! Prometheus sees `appguard_decisions{route,decision,reason}`.
//!
//! Six more: the counters `appguard_verification_budget_refusals`,
//! `appguard_jwks_fetch_failures`, `appguard_jwks_waits`,
//! `appguard_jwks_wait_overflows` and `appguard_host_errors`, and
//! `appguard_vm_memory_bytes`, a gauge of the linear memory of appguard's
//! Wasm VMs in this Envoy (their sum).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::abi;

use crate::config::Config;
use crate::decision::Reason;

/// What happened to a request, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counted {
    /// Allowed.
    Allow,
    /// Denied with a local reply.
    Deny,
    /// Would have been denied; monitor mode let it through.
    Monitor,
    /// Let through by `failure_mode: allow` while a dependency was down.
    Degraded,
    /// A browser's CORS preflight let through by `bypass_cors_preflight`
    /// without the route's key, token and limit checks.
    Preflight,
}

impl Counted {
    /// The `decision` tag of the counter's name.
    const fn name(self) -> &'static str {
        match self {
            Counted::Allow => "allow",
            Counted::Deny => "deny",
            Counted::Monitor => "monitor",
            Counted::Degraded => "degraded",
            Counted::Preflight => "preflight",
        }
    }
}

/// A counter's identity: route index (None = unmatched), what happened,
/// and the reason (None for a plain allow).
type CounterKey = (Option<usize>, Counted, Option<Reason>);

/// Counter ids of one worker.
pub struct Metrics {
    /// The configured routes' names, by route index: the `route` tag
    /// ([`crate::config::UNMATCHED_ROUTE`] for none). Config-chosen, never request-chosen, so
    /// the number of counters is bounded.
    route_names: Vec<String>,
    /// Decision counters defined so far, by what they count: defined on
    /// first use, as routes × outcomes × reasons are too many to define
    /// up front.
    ids: RefCell<HashMap<CounterKey, u32>>,
    /// `appguard_verification_budget_refusals`: tokens refused unverified
    /// because their client's failure budget was spent. `None` when the
    /// host refused to define it (then it is not counted; so for the others).
    budget_refusals: Option<u32>,
    /// `appguard_jwks_fetch_failures`: remote JWKS fetches that failed.
    jwks_failures: Option<u32>,
    /// `appguard_jwks_waits`: requests held for another request's JWKS
    /// re-fetch (a key rotation's tokens, or made-up `kid`s meanwhile),
    /// or for the first keys other requests are fetching.
    jwks_waits: Option<u32>,
    /// `appguard_jwks_wait_overflows`: requests that would have waited
    /// for keys but found their worker's waiting room full, and were
    /// answered at once (an unknown `kid` refused; without keys, the
    /// route's `failure_mode`).
    jwks_wait_overflows: Option<u32>,
    /// `appguard_host_errors`: requests answered 503 because the host
    /// failed a call appguard needed, and decided requests whose local
    /// reply or resume the host refused.
    host_errors: Option<u32>,
    /// `appguard_vm_memory_bytes`: the gauge of the VM's linear memory
    /// (Envoy 1.40 has none of its own).
    vm_memory: Option<u32>,
}

impl Metrics {
    /// Metrics for the configured routes.
    pub fn new(config: &Config) -> Self {
        Metrics {
            route_names: config.routes.iter().map(|r| r.name.clone()).collect(),
            ids: RefCell::new(HashMap::new()),
            budget_refusals: abi::define_counter("appguard_verification_budget_refusals").ok(),
            jwks_failures: abi::define_counter("appguard_jwks_fetch_failures").ok(),
            jwks_waits: abi::define_counter("appguard_jwks_waits").ok(),
            jwks_wait_overflows: abi::define_counter("appguard_jwks_wait_overflows").ok(),
            host_errors: abi::define_counter("appguard_host_errors").ok(),
            vm_memory: abi::define_gauge("appguard_vm_memory_bytes").ok(),
        }
    }

    /// Brings `appguard_vm_memory_bytes` up to date with this VM's linear
    /// memory. All the filter's state (configuration, caches, key tables,
    /// requests in flight) lives there. Envoy has no gauge of its own for a
    /// Wasm VM's memory. Every VM of the plugin (one per worker thread and
    /// one on Envoy's main thread) adds what its memory grew by since it
    /// last reported, so the gauge is their sum; a VM that is torn down
    /// takes its share back ([`Metrics::withdraw_vm_memory`]).
    pub fn report_vm_memory(&self) {
        let Some(id) = self.vm_memory else { return };
        let now = linear_memory_bytes();
        let before = REPORTED.with(|r| r.replace(now));
        let delta = i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0);
        if delta != 0 && abi::increment(id, delta).is_err() {
            REPORTED.with(|r| r.set(before));
        }
    }

    /// Takes this VM's share out of `appguard_vm_memory_bytes`, when its
    /// root context goes. If another root context of the same VM lives on
    /// (a configuration update that kept the VM), its next tick adds the
    /// share back.
    pub fn withdraw_vm_memory(&self) {
        let Some(id) = self.vm_memory else { return };
        let before = REPORTED.with(|r| r.replace(0));
        if before > 0 && abi::increment(id, -i64::try_from(before).unwrap_or(0)).is_err() {
            REPORTED.with(|r| r.set(before));
        }
    }

    /// Counts a token refused without verification because its client's
    /// signature-failure budget is spent.
    pub fn budget_refusal(&self) {
        add_one(self.budget_refusals);
    }

    /// Counts a JWKS fetch or refresh that brought no keys: not sent, no
    /// answer, not a 200, or a document refused. Keys are kept for
    /// `grace_seconds` while refreshes fail, so no request is refused for
    /// it until then: this counter is what shows the failing refreshes.
    pub fn jwks_failure(&self) {
        add_one(self.jwks_failures);
    }

    /// Counts a request held for another request's JWKS re-fetch, or for
    /// the first keys other requests of its worker are fetching. A key
    /// rotation shows as a burst of these followed by allowed requests; a
    /// steady stream, with `token_signature` refusals, is a flood of
    /// made-up `kid`s.
    pub fn jwks_wait(&self) {
        add_one(self.jwks_waits);
    }

    /// Counts a request that found [`super::root::MAX_WAITERS`] already
    /// waiting on its worker and was answered without waiting.
    pub fn jwks_wait_overflow(&self) {
        add_one(self.jwks_wait_overflows);
    }

    /// Counts a request answered 503 `appguard_host_error`: Envoy could not
    /// hand over what appguard must read (headers, body, trailers), so no
    /// decision was made and none is counted in `appguard_decisions`.
    pub fn host_error(&self) {
        add_one(self.host_errors);
    }

    /// Counts one decision.
    pub fn count(&self, route: Option<usize>, what: Counted, reason: Option<Reason>) {
        let key = (route, what, reason);
        let id = self.ids.borrow().get(&key).copied();
        let id = match id {
            Some(id) => id,
            None => {
                let route_name = route
                    .and_then(|r| self.route_names.get(r))
                    .map_or(crate::config::UNMATCHED_ROUTE, String::as_str);
                let name = format!(
                    "appguard_decisions.route.{route_name}.decision.{}.reason.{}",
                    what.name(),
                    reason.map_or("none", Reason::code)
                );
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

/// Adds one to a counter, if Envoy defined it (a failed definition leaves
/// the counter out rather than the request).
fn add_one(counter: Option<u32>) {
    if let Some(id) = counter {
        let _ = abi::increment(id, 1);
    }
}

thread_local! {
    /// This VM's linear memory as last added to `appguard_vm_memory_bytes`.
    /// Every VM has its own (a static of the module instance), shared by
    /// its root contexts.
    static REPORTED: Cell<u64> = const { Cell::new(0) };
}

/// The VM's linear memory in bytes (pages of 64 KiB).
#[cfg(target_arch = "wasm32")]
fn linear_memory_bytes() -> u64 {
    (core::arch::wasm32::memory_size::<0>() as u64).saturating_mul(65_536)
}

/// Native builds have no VM.
#[cfg(not(target_arch = "wasm32"))]
fn linear_memory_bytes() -> u64 {
    0
}
