//! A proxy-wasm HTTP filter that reads one request header and lets the
//! request continue: the floor under any Rust Wasm filter in Envoy's V8
//! (VM entry/exit for each callback, the SDK's context bookkeeping, one
//! host call). `make bench` compares appguard against it. The `reply` and
//! `peer` features build variants for A/B runs (see Cargo.toml).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One header read, as any real filter does at least once.
        let _ = self.get_http_request_header("x-token");
        #[cfg(feature = "peer")]
        let _ = self.get_property(vec!["source", "address"]);
        if cfg!(feature = "reply") {
            self.send_http_response(
                401,
                vec![
                    ("content-type", "application/json"),
                    ("x-appguard-reason", "token_signature"),
                ],
                Some(br#"{"error":"token_signature"}"#),
            );
            return Action::Pause;
        }
        Action::Continue
    }
}
