//! A proxy-wasm HTTP filter that reads one request header and lets the
//! request continue: the floor under any Rust Wasm filter in Envoy's V8
//! (VM entry/exit for each callback, the SDK's context bookkeeping, one
//! host call). `make bench` compares appguard against it. The features
//! (`reply`, `peer`, `pairs`, `remove`, `metric`, `clock`, `resp`,
//! `meta`, `meta-leaf`) build variants
//! that each add one of appguard's host calls, for A/B runs that put a
//! price on each (see Cargo.toml).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot::default()) });
}}

#[derive(Default)]
struct NoopRoot {
    /// The counter of the `metric` variant, defined once at start.
    #[cfg(feature = "metric")]
    counter: Option<u32>,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_vm_start(&mut self, _: usize) -> bool {
        #[cfg(feature = "metric")]
        {
            self.counter = proxy_wasm::hostcalls::define_metric(
                proxy_wasm::types::MetricType::Counter,
                "noop_requests",
            )
            .ok();
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop {
            #[cfg(feature = "metric")]
            counter: self.counter,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop {
    /// The root's counter (`metric` variant).
    #[cfg(feature = "metric")]
    counter: Option<u32>,
}

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One header read, as any real filter does at least once.
        #[cfg(not(feature = "pairs"))]
        let _ = self.get_http_request_header("x-token");
        #[cfg(feature = "pairs")]
        let _ = self.get_http_request_headers_bytes();
        #[cfg(feature = "clock")]
        let _ = self.get_current_time();
        #[cfg(feature = "remove")]
        self.set_http_request_header("x-token", None);
        #[cfg(feature = "metric")]
        if let Some(id) = self.counter {
            let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
        }
        #[cfg(feature = "peer")]
        let _ = self.get_property(vec!["source", "address"]);
        #[cfg(feature = "meta")]
        let _ = self.get_property(vec![
            "metadata",
            "filter_metadata",
            "envoy.filters.http.jwt_authn",
            "bench_payload",
        ]);
        #[cfg(feature = "meta-leaf")]
        let _ = self.get_property(vec![
            "metadata",
            "filter_metadata",
            "envoy.filters.http.jwt_authn",
            "bench_payload",
            "sub",
        ]);
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

    // Exported only in the `resp` variant (see scripts/exports.py): the
    // price of one more callback per request, with nothing to do in it.
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}
