//! The root context: one per worker VM. It parses the configuration once in
//! `on_configure` and hands it to every HTTP context behind an `Rc`.

use std::rc::Rc;

use log::{error, info};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};

use super::filter::GuardFilter;
use crate::config::Config;

/// Owns the compiled configuration of one worker.
pub struct FilterRoot {
    context_id: u32,
    config: Option<Rc<Config>>,
}

impl FilterRoot {
    /// A root context with no configuration yet.
    pub fn new(context_id: u32) -> Self {
        FilterRoot {
            context_id,
            config: None,
        }
    }
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Follow Envoy's own level for the wasm component, so that debug
        // lines are not even formatted when Envoy would drop them.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        } else {
            proxy_wasm::set_log_level(LogLevel::Info);
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
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
        match Config::from_json(&bytes) {
            Ok(config) => {
                info!(
                    "configured (root {}): {} routes, mode {:?}",
                    self.context_id,
                    config.routes.len(),
                    config.mode
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                // Returning false makes Envoy refuse the configuration: nothing
                // half-works. The message names the field.
                error!("{e}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on None. Without a configuration the
        // filter fails closed (see `GuardFilter`).
        Some(Box::new(GuardFilter::new(context_id, self.config.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
