//! The proxy-wasm adapter: the only module that talks to the host. It reads
//! the request from Envoy, calls the pure core, and carries out the decision.
//!
//! Host calls go through [`abi`], which returns every host status as a
//! `Result`, never through the SDK's `hostcalls` or trait helpers, which
//! panic on unexpected statuses and on non-UTF-8 header bytes: a panic
//! aborts the VM for every later request of the worker. The SDK is used
//! only for its context dispatcher and memory allocator.

pub mod abi;
mod filter;
mod host;
mod metrics;
mod root;

/// The module's entry (`_initialize`, run by the host once per VM): the
/// logger, and a root context per plugin configuration. A private module,
/// so the SDK's generated function needs no public documentation.
mod start {
    use super::{abi, root};

    proxy_wasm::main! {{
        abi::init_logging(log::LevelFilter::Info);
        proxy_wasm::set_root_context(|context_id| Box::new(root::FilterRoot::new(context_id)));
    }}
}
