//! The proxy-wasm adapter: the only module that talks to the host. It reads
//! the request from Envoy, calls the pure core, and carries out the decision.
//!
//! Host calls go through `proxy_wasm::hostcalls`, which return `Result`, never
//! through the SDK's trait helpers that unwrap host errors: a panic would
//! abort the VM for every later request of the worker.

mod filter;
mod host;
mod jwks;
mod metrics;
mod root;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::FilterRoot::new(context_id)));
}}
