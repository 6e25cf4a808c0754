//! The HTTP context: one per request, a thin state machine over the core.
//! An explicit state makes sure a request is decided exactly once, and that
//! a late callback (a JWKS fetch that answers after the request was decided)
//! changes nothing.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::{self, now_seconds, HostStore};
use super::jwks;
use super::root::Worker;
use crate::decision::{Decision, Denial, Grant};
use crate::policy::{self, Ctx, Facts, Step};
use crate::request::{Request, HEADER_PREFIX};

/// Where a request is in its life.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Headers not seen yet.
    Start,
    /// Held until a JWKS fetch (call `token`) for `provider` answers.
    AwaitingKeys { token: u32, provider: usize },
    /// Decided: allowed upstream or answered locally.
    Done,
}

/// The per-request filter.
pub struct GuardFilter {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    state: State,
    headers: Vec<(String, String)>,
    downstream_ip: Option<IpAddr>,
}

impl GuardFilter {
    /// A filter for one request, sharing the worker's state.
    pub fn new(context_id: u32, worker: Option<Rc<Worker>>) -> Self {
        GuardFilter {
            context_id,
            worker,
            state: State::Start,
            headers: Vec::new(),
            downstream_ip: None,
        }
    }

    fn on_headers(&mut self) -> Action {
        if self.worker.is_none() {
            // Unreachable in practice (Envoy refuses a failed configuration),
            // but fail closed rather than pass traffic unchecked.
            return self.reply_raw(503, "appguard_unconfigured");
        }
        self.headers = match hostcalls::get_map(MapType::HttpRequestHeaders) {
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
        for (name, _) in self
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with(HEADER_PREFIX))
        {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
        self.downstream_ip = downstream_ip();
        self.run(true)
    }

    /// Evaluates (or re-evaluates, after keys arrived) and acts on the step.
    fn run(&mut self, may_fetch_keys: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return self.reply_raw(503, "appguard_unconfigured");
        };
        let now = now_seconds();
        let remote_keys = worker.remote_keys();
        let step = {
            let ctx = Ctx {
                config: &worker.config,
                store: &HostStore,
                token_cache: &worker.token_cache,
                remote_keys: &remote_keys,
                may_fetch_keys,
            };
            let req = Request::new(&self.headers, self.downstream_ip);
            policy::evaluate(&ctx, &req, now)
        };
        match step {
            Step::Done(decision, facts) => self.execute(&worker, decision, &facts),
            Step::NeedKeys { provider } => self.fetch_keys(&worker, provider, now),
        }
    }

    fn fetch_keys(&mut self, worker: &Rc<Worker>, p: usize, now: u64) -> Action {
        let Some(provider) = worker.config.providers.get(p) else {
            return self.run(false);
        };
        let Some(remote) = &provider.remote_jwks else {
            return self.run(false);
        };
        // Another worker may have fetched already. The borrow of the
        // worker's JWKS slots ends before any re-evaluation borrows it again.
        let fetch = {
            let mut slots = worker.jwks.borrow_mut();
            match slots.get_mut(p) {
                None => false,
                Some(slot) => {
                    let before = slot.loaded_cas;
                    jwks::sync(slot, &provider.name, remote, now);
                    let had_keys = slot.keys.keys.is_some();
                    if slot.loaded_cas != before && had_keys {
                        false
                    } else if !had_keys {
                        true
                    } else if now.saturating_sub(slot.last_refetch) >= remote.min_refetch_seconds
                        && jwks::take_lease(
                            &provider.name,
                            "refetch",
                            remote.min_refetch_seconds.max(1),
                            now,
                        )
                    {
                        // Unknown kid with keys loaded: at most one re-fetch
                        // per `min_refetch_seconds` per instance.
                        slot.last_refetch = now;
                        true
                    } else {
                        false
                    }
                }
            }
        };
        if !fetch {
            return self.run(false);
        }
        match host::http_get(
            &remote.cluster,
            &remote.authority,
            &remote.path,
            remote.timeout_ms,
        ) {
            Ok(token) => {
                self.state = State::AwaitingKeys { token, provider: p };
                Action::Pause
            }
            Err(s) => {
                warn!(
                    "#{} jwks {}: cannot dispatch the fetch: {s:?}",
                    self.context_id, provider.name
                );
                self.run(false)
            }
        }
    }

    fn execute(&mut self, worker: &Worker, decision: Decision, facts: &Facts) -> Action {
        self.state = State::Done;
        match decision {
            Decision::Allow(grant) => {
                worker.metrics.count(facts.route, grant.would_deny, true);
                self.apply_grant(worker, &grant, facts);
                Action::Continue
            }
            Decision::Deny(denial) => {
                worker
                    .metrics
                    .count(facts.route, Some(denial.reason), false);
                self.deny(worker, &denial, facts)
            }
        }
    }

    fn apply_grant(&self, worker: &Worker, grant: &Grant, facts: &Facts) {
        for name in &grant.remove_headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
        for (name, value) in &grant.set_headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
        if let Some(reason) = grant.would_deny {
            info!(
                "#{} monitor would_deny reason={} {}",
                self.context_id,
                reason,
                describe(worker, facts)
            );
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "x-appguard-would-deny",
                Some(reason.code()),
            );
        }
    }

    fn deny(&self, worker: &Worker, denial: &Denial, facts: &Facts) -> Action {
        let reason = denial.reason;
        info!(
            "#{} deny reason={} status={} {}",
            self.context_id,
            reason,
            reason.status(),
            describe(worker, facts)
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

/// `route=… ip=… app=… key=…` for a log line: names and ids only, never a
/// token, key or phone number.
fn describe(worker: &Worker, facts: &Facts) -> String {
    let c = &worker.config;
    let route = facts
        .route
        .and_then(|r| c.routes.get(r))
        .map_or("-", |r| r.name.as_str());
    let app = facts
        .app
        .and_then(|a| c.apps.get(a))
        .map_or("-", |a| a.id.as_str());
    let key = facts
        .key
        .and_then(|k| c.api_keys.keys.get(k))
        .map_or("-", |k| k.id.as_str());
    let ip = facts
        .client_ip
        .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    format!("route={route} ip={ip} app={app} key={key}")
}

impl Context for GuardFilter {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let State::AwaitingKeys { token, provider } = self.state else {
            return;
        };
        if token != token_id {
            return;
        }
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = now_seconds();
        let (status, body) = host::http_call_response(body_size, jwks::MAX_JWKS_BYTES);
        if let Some(p) = worker.config.providers.get(provider) {
            let mut slots = worker.jwks.borrow_mut();
            if let Some(slot) = slots.get_mut(provider) {
                match (status, body) {
                    (200, Some(body)) => {
                        if let Err(e) = jwks::store(slot, &p.name, &body, now) {
                            warn!("#{} jwks {}: {e}", self.context_id, p.name);
                        }
                    }
                    (s, _) => warn!(
                        "#{} jwks {}: fetch failed (status {s})",
                        self.context_id, p.name
                    ),
                }
            }
        }
        self.state = State::Start;
        if let Action::Continue = self.run(false) {
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl HttpContext for GuardFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.state != State::Start {
            return Action::Continue;
        }
        self.on_headers()
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // While a decision is pending the body must wait too: Continue here
        // would release the paused headers upstream.
        match self.state {
            State::AwaitingKeys { .. } => Action::Pause,
            _ => Action::Continue,
        }
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
