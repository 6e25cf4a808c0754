//! The HTTP context: one per request. An explicit state makes sure a request
//! is decided exactly once.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use crate::config::Config;
use crate::decision::{Decision, Denial, Grant};
use crate::policy::{self, Step};
use crate::request::{Request, HEADER_PREFIX};

/// Where a request is in its life.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Headers not seen yet.
    Start,
    /// Decided: allowed upstream or answered locally.
    Done,
}

/// The per-request filter.
pub struct GuardFilter {
    context_id: u32,
    config: Option<Rc<Config>>,
    state: State,
}

impl GuardFilter {
    /// A filter for one request, sharing the worker's configuration.
    pub fn new(context_id: u32, config: Option<Rc<Config>>) -> Self {
        GuardFilter {
            context_id,
            config,
            state: State::Start,
        }
    }

    fn on_headers(&mut self) -> Action {
        let Some(config) = self.config.clone() else {
            // Unreachable in practice (Envoy refuses a failed configuration),
            // but fail closed rather than pass traffic unchecked.
            return self.reply_raw(503, "appguard_unconfigured");
        };
        let headers = match hostcalls::get_map(MapType::HttpRequestHeaders) {
            Ok(h) => h,
            Err(status) => {
                warn!(
                    "#{} cannot read request headers: {status:?}",
                    self.context_id
                );
                return self.reply_raw(503, "appguard_host_error");
            }
        };
        // Identity headers are ours: a client's copy must never reach upstream.
        for (name, _) in headers.iter().filter(|(n, _)| n.starts_with(HEADER_PREFIX)) {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
        let req = Request::new(&headers, downstream_ip());
        let now = now_seconds();
        match policy::evaluate(&config, &req, now) {
            Step::Done(decision) => self.execute(&req, decision),
        }
    }

    fn execute(&mut self, req: &Request<'_>, decision: Decision) -> Action {
        self.state = State::Done;
        match decision {
            Decision::Allow(grant) => {
                self.apply_grant(req, &grant);
                Action::Continue
            }
            Decision::Deny(denial) => self.deny(req, &denial),
        }
    }

    fn apply_grant(&self, req: &Request<'_>, grant: &Grant) {
        for name in &grant.remove_headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
        for (name, value) in &grant.set_headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
        if let Some(reason) = grant.would_deny {
            info!(
                "#{} monitor would_deny reason={} path={} ip={}",
                self.context_id,
                reason,
                req.path(),
                ip_text(req.downstream_ip)
            );
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "x-appguard-would-deny",
                Some(reason.code()),
            );
        }
    }

    fn deny(&self, req: &Request<'_>, denial: &Denial) -> Action {
        let reason = denial.reason;
        info!(
            "#{} deny reason={} status={} path={} ip={}",
            self.context_id,
            reason,
            reason.status(),
            req.path(),
            ip_text(req.downstream_ip)
        );
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(2 + denial.headers.len());
        headers.push(("content-type", "application/json"));
        headers.push(("x-appguard-reason", reason.code()));
        headers.extend(denial.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let body = reason.body();
        if let Err(status) = hostcalls::send_http_response(
            u32::from(reason.status()),
            headers,
            Some(body.as_bytes()),
        ) {
            warn!("#{} cannot send local reply: {status:?}", self.context_id);
        }
        Action::Pause
    }

    fn reply_raw(&mut self, status: u32, code: &str) -> Action {
        self.state = State::Done;
        let body = format!("{{\"error\":\"{code}\"}}");
        let _ = hostcalls::send_http_response(
            status,
            vec![
                ("content-type", "application/json"),
                ("x-appguard-reason", code),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}

impl Context for GuardFilter {}

impl HttpContext for GuardFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.state != State::Start {
            return Action::Continue;
        }
        self.on_headers()
    }
}

/// Envoy's downstream remote address (`source.address`, "ip:port").
fn downstream_ip() -> Option<IpAddr> {
    let bytes = hostcalls::get_property(vec!["source", "address"]).ok()??;
    let text = std::str::from_utf8(&bytes).ok()?;
    text.parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
}

fn now_seconds() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn ip_text(ip: Option<IpAddr>) -> String {
    ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string())
}
