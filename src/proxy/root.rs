//! The root context: one per worker VM. It parses the configuration once in
//! `on_configure`, owns the worker's state (shared with every HTTP context
//! through an `Rc`), and refreshes remote JWKS from its tick.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use super::abi::{self, Buffer};

use super::filter::GuardFilter;
use super::host::{self, now_seconds};
use super::jwks::{self, JwksSlot};
use super::metrics::Metrics;
use crate::config::Config;
use crate::limits::OverLimitCache;
use crate::policy::{RemoteKeys, TokenCache};

/// Everything one worker keeps between requests.
pub struct Worker {
    /// The compiled configuration.
    pub config: Config,
    /// Verified tokens, until their `exp`.
    pub token_cache: RefCell<TokenCache>,
    /// Remote JWKS state per provider (same index as `config.providers`).
    pub jwks: RefCell<Vec<JwksSlot>>,
    /// Stats counters.
    pub metrics: Metrics,
    /// Descriptors the rate-limit service refused, until their reset.
    pub over_limit: RefCell<OverLimitCache>,
}

impl Worker {
    /// The remote keys as the policy reads them.
    pub fn remote_keys(&self) -> Vec<RemoteKeys> {
        self.jwks.borrow().iter().map(|s| s.keys.clone()).collect()
    }
}

/// Owns the worker of one root context.
pub struct FilterRoot {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    /// In-flight JWKS refreshes: call token → provider index.
    refreshes: HashMap<u32, usize>,
}

impl FilterRoot {
    /// A root context with no configuration yet.
    pub fn new(context_id: u32) -> Self {
        FilterRoot {
            context_id,
            worker: None,
            refreshes: HashMap::new(),
        }
    }
}

impl Context for FilterRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(p) = self.refreshes.remove(&token_id) else {
            return;
        };
        let Some(worker) = &self.worker else { return };
        let Some(provider) = worker.config.providers.get(p) else {
            return;
        };
        let (status, body) = host::http_call_response(body_size, jwks::MAX_JWKS_BYTES);
        let now = now_seconds();
        let mut slots = worker.jwks.borrow_mut();
        let Some(slot) = slots.get_mut(p) else { return };
        match (status, body) {
            (200, Some(body)) => {
                if let Err(e) = jwks::store(slot, &provider.name, &body, now) {
                    warn!(
                        "jwks {}: refresh refused: {e}; keeping the previous keys",
                        provider.name
                    );
                }
            }
            (s, _) => warn!(
                "jwks {}: refresh failed (status {s}); keeping the previous keys",
                provider.name
            ),
        }
    }
}

impl RootContext for FilterRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Follow Envoy's own level for the wasm component, so that debug
        // lines are not even formatted when Envoy would drop them.
        abi::init_logging(abi::level_filter(abi::log_level().unwrap_or(2)));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match abi::buffer(Buffer::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            Ok(None) => {
                error!("no plugin configuration: set plugin_config.configuration");
                return false;
            }
            Err(status) => {
                error!("cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let config = match Config::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                // Returning false makes Envoy refuse the configuration:
                // nothing half-works. The message names the field.
                error!("{e}");
                return false;
            }
        };
        info!(
            "configured (root {}): {} routes, {} apps, {} keys, {} token providers, mode {:?}",
            self.context_id,
            config.routes.len(),
            config.apps.len(),
            config.api_keys.keys.len(),
            config.providers.len(),
            config.mode
        );
        let slots = config
            .providers
            .iter()
            .map(|_| JwksSlot::default())
            .collect();
        let metrics = Metrics::new(&config);
        let has_remote = config.providers.iter().any(|p| p.remote_jwks.is_some());
        self.worker = Some(Rc::new(Worker {
            config,
            token_cache: RefCell::new(TokenCache::default()),
            jwks: RefCell::new(slots),
            metrics,
            over_limit: RefCell::new(OverLimitCache::default()),
        }));
        if has_remote {
            if let Err(s) = abi::set_tick_period_ms(1000) {
                warn!("cannot set the tick period ({s:?}): JWKS refresh only on demand");
            }
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = now_seconds();
        for (p, provider) in worker.config.providers.iter().enumerate() {
            let Some(remote) = &provider.remote_jwks else {
                continue;
            };
            let mut slots = worker.jwks.borrow_mut();
            let Some(slot) = slots.get_mut(p) else {
                continue;
            };
            jwks::sync(slot, &provider.name, remote, now);
            if self.refreshes.values().any(|x| *x == p) {
                continue;
            }
            if jwks::take_refresh_lease(slot, &provider.name, remote, now) {
                match host::http_get(
                    &remote.cluster,
                    &remote.authority,
                    &remote.path,
                    remote.timeout_ms,
                ) {
                    Ok(token) => {
                        self.refreshes.insert(token, p);
                    }
                    Err(s) => warn!("jwks {}: cannot dispatch the fetch: {s:?}", provider.name),
                }
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on None. Without a configuration the
        // filter fails closed (see `GuardFilter`).
        Some(Box::new(GuardFilter::new(context_id, self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
