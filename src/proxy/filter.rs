//! The HTTP context: one per request, a thin state machine over the core.
//! An explicit state makes sure a request is decided exactly once, and that
//! a late callback (a JWKS fetch that answers after the request was decided)
//! changes nothing.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::{Rc, Weak};

use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::abi::{self, Buffer, Map};

use super::host::{self, now_millis, HostStore};
use super::metrics::Counted;
use super::root::{Awaited, CallKind, Waiter, Worker, WARN_LINES_PER_SECOND};
use crate::decision::{Decision, Denial, Grant, KeyScrub};
use crate::headers::Headers;
use crate::lograte::Admit;
use crate::policy::{self, Ctx, Facts, KeyFetch, Pending, RlsCall, Step};
use crate::ratelimit::{decode_response, MAX_RESPONSE_BYTES};
use crate::request::{reserved_header, Claims, Delegated, Peer, Request};
use crate::token::jwks::{self, RequestFetch};

/// The gRPC service and method of Envoy's rate-limit service API v3.
const RLS_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The one method of [`RLS_SERVICE`] appguard calls (unary).
const RLS_METHOD: &str = "ShouldRateLimit";
/// Request headers passed on to the rate-limit service as gRPC metadata, so
/// its logs and traces join the request's.
const TRACE_HEADERS: [&str; 9] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-ot-span-context",
];

/// Whether a trace header's value is passed on to the rate-limit service:
/// at most [`MAX_TRACE_VALUE`] bytes of visible ASCII (what W3C asks every
/// vendor to propagate of `tracestate` at least; a longer one is dropped
/// here, which costs the service's trace only). The client writes these headers:
/// one of 17 KiB (Envoy takes 60 KiB of headers) would make the service's
/// HTTP/2 server (16 KiB of metadata by default) refuse the call, and under
/// `failure_mode: allow` the request would then pass without its limits.
fn is_trace_value(v: &[u8]) -> bool {
    v.len() <= MAX_TRACE_VALUE && v.iter().all(|b| (0x20..0x7f).contains(b))
}

/// Longest trace header value passed on (see [`is_trace_value`]).
const MAX_TRACE_VALUE: usize = 512;

/// Where a request is in its life.
#[derive(Debug)]
enum State {
    /// Headers not seen yet.
    Start,
    /// Held until its own JWKS fetch answers, or keys loaded elsewhere
    /// overtake it ([`jwks::overtaken`]).
    AwaitingKeys(OwnFetch),
    /// Held until another request's re-fetch of keys answers (or, before
    /// the first keys, the fetches of other requests do), or its time is
    /// up: the root's tick decides it then ([`GuardFilter::keys_awaited`],
    /// [`jwks::RequestFetch::Wait`], [`jwks::RequestFetch::WaitFirstKeys`]).
    AwaitingRefetch,
    /// Buffering the body for the body phase.
    AwaitingBody(Box<Pending>),
    /// Held until the rate-limit service (call `token`) answers.
    AwaitingRateLimit {
        /// The gRPC call's id: an answer to any other call is not this
        /// request's.
        token: u32,
        /// The evaluation so far, finished with the service's answer.
        pending: Box<Pending>,
    },
    /// Decided: allowed upstream or answered locally.
    Done,
}

/// A JWKS fetch a request dispatched itself.
#[derive(Clone, Copy, Debug)]
struct OwnFetch {
    /// The HTTP call's id: an answer to any other call is not this
    /// request's.
    token: u32,
    /// Index of the provider in the configuration whose keys are fetched.
    provider: usize,
    /// When the GET was dispatched, in milliseconds since the epoch (see
    /// [`jwks::publish`]).
    started: u64,
}

/// The per-request filter.
pub struct GuardFilter {
    /// Envoy's id of this request's context (in log lines as `#id`).
    context_id: u32,
    /// The worker's configuration and tables, `None` until the root
    /// context was configured (the request is then answered 503).
    worker: Option<Rc<Worker>>,
    /// Where the request is in its life.
    state: State,
    /// The headers went on to the filters after appguard before the body
    /// was decided (a body route without `hold_headers_for_body`): a later
    /// filter may have changed the request (see [`GuardFilter::local_reply`]).
    headers_went_on: bool,
    /// The request headers, read from Envoy once and looked up from here.
    headers: Headers,
    /// The request ended with its headers (no body to wait for).
    headers_end_stream: bool,
    /// Body bytes arrived while the headers were held for keys. Envoy
    /// delivers them only with `allow_on_headers_stop_iteration: true`;
    /// resuming would then send them on past the body checks.
    body_while_paused: bool,
    /// The body ended (its last bytes, or trailers) while the headers were
    /// held for keys or the rate-limit service: with
    /// `hold_headers_for_body`, Envoy has it buffered whole.
    body_ended_while_paused: bool,
    /// The most body bytes Envoy said it had buffered for the body phase:
    /// trailers end the body without a size, and a body that reads back
    /// shorter is not the body that goes upstream.
    body_buffered: usize,
    /// Headers the rate-limit service asked to add to the response.
    response_headers: Vec<(String, String)>,
    /// The headers an allow set on the upstream request (identity headers,
    /// forwarded claims, the rate-limit service's `request_headers_to_add`,
    /// whose names come only with each answer): a client's trailer copy of
    /// one is cut, as of the headers appguard always sets.
    granted_headers: Vec<(String, String)>,
    /// The request's trailers came (and were cut) before it was decided:
    /// an allow then cuts the copies of its own headers from them too.
    trailers_seen: bool,
    /// Its own JWKS fetch, when keys loaded elsewhere decided the request
    /// before that fetch answered: an answer that comes while the request
    /// is still there (its upstream slower than the GET) is stored for the
    /// workers, or its failure counted, and frees its place among the
    /// fetches in flight, without deciding the request again. Once the
    /// request is gone the SDK drops the answer with its context: the
    /// keys are loaded already, the place frees itself at the fetch's
    /// timeout, and a failure goes uncounted.
    overtaken_fetch: Option<OwnFetch>,
    /// This filter as the worker reaches it from the root context: to
    /// decide it when keys it waits for arrive, and to hand it the answer
    /// to a call it dispatched then (see [`FilterHandle`]).
    me: FilterRef,
}

/// The SDK drops a stream's context when Envoy deletes the stream. One
/// dropped while it waited for the rate-limit service was abandoned (its
/// client left, or the stream was reset): see [`policy::abandon_rls`]. One
/// dropped while it waited for keys leaves their fetch to the root (see
/// [`jwks::JwksSlot::refetch_lost_at`]). Drop runs while the SDK holds its
/// map of streams mutably borrowed: the host calls it makes (the clock,
/// shared data, logging) do not call back into the module, but anything
/// that can (`dispatch_*`, a local reply, resuming the stream) would abort
/// the VM on the SDK's borrow, and must never be made from here.
impl Drop for GuardFilter {
    fn drop(&mut self) {
        if let Some(w) = self
            .worker
            .as_ref()
            .filter(|w| w.config.hold_headers_for_body)
        {
            w.held.borrow_mut().done(self.context_id, false);
        }
        // Held for keys: the fetch's answer will be dropped with this
        // context, and the root must fetch them instead.
        if let (State::AwaitingKeys(fetch), Some(worker)) = (&self.state, &self.worker) {
            if let Some(slot) = worker.jwks.borrow_mut().get_mut(fetch.provider) {
                slot.refetch_lost_at = Some(fetch.started / 1000);
            }
            return;
        }
        let Some(pending) = self.take_awaiting_rls() else {
            return;
        };
        let Some(worker) = self.worker.clone() else {
            return;
        };
        self.ctx_step(&worker, KeyFetch::NotNow, |ctx, _, _| {
            policy::abandon_rls(ctx, pending)
        });
    }
}

impl GuardFilter {
    /// The evaluation of a context held for the rate-limit service, taken
    /// out (the context is then decided); `None`, and nothing changed, in
    /// any other state.
    fn take_awaiting_rls(&mut self) -> Option<Box<Pending>> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitingRateLimit { pending, .. } => Some(pending),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// A filter for one request, sharing the worker's state; `me` is the
    /// handle the filter lives in ([`FilterHandle`]).
    fn new(context_id: u32, worker: Option<Rc<Worker>>, me: FilterRef) -> Self {
        GuardFilter {
            me,
            context_id,
            worker,
            state: State::Start,
            headers_went_on: false,
            headers: Headers::default(),
            overtaken_fetch: None,
            headers_end_stream: false,
            body_while_paused: false,
            body_ended_while_paused: false,
            body_buffered: 0,
            response_headers: Vec::new(),
            granted_headers: Vec::new(),
            trailers_seen: false,
        }
    }

    /// The request headers: read once, the client's copies of appguard's
    /// own headers removed (fail closed if they cannot be), then evaluated.
    fn on_headers(&mut self) -> Action {
        if self.worker.is_none() {
            // Unreachable in practice (Envoy refuses a failed configuration),
            // but fail closed rather than pass traffic unchecked.
            return self.reply_raw(503, "appguard_unconfigured");
        }
        self.headers = match abi::map_headers(Map::RequestHeaders) {
            Ok(h) => h,
            Err(status) => {
                warn!(
                    "#{} cannot read request headers: {status:?}",
                    self.context_id
                );
                return self.reply_raw(503, "appguard_host_error");
            }
        };
        // Identity headers and the headers set from verified claims are
        // ours: a client's copy must never reach upstream, so one that
        // cannot be removed fails closed.
        if !self.removed_ours(Map::RequestHeaders, &self.headers) {
            warn!(
                "#{} cannot remove a client's copy of an identity header",
                self.context_id
            );
            return self.reply_raw(503, "appguard_host_error");
        }
        self.run(KeyFetch::May)
    }

    /// Removes from `map` (whose pairs are `pairs`) every client copy of a
    /// header only appguard may set ([`Self::is_ours`]); false when one
    /// could not be removed, for the caller to fail closed.
    fn removed_ours(&self, map: Map, pairs: &crate::headers::Headers) -> bool {
        removed_where(map, pairs, |n| self.is_ours(n))
    }

    /// Whether only appguard may set this header: `x-appguard-*`, and the
    /// headers `claim_to_headers` sets from verified claims.
    /// (With `_` read as `-`: see [`reserved_header`].)
    fn is_ours(&self, name: &str) -> bool {
        let claim_headers = self
            .worker
            .as_ref()
            .map_or(&[][..], |w| w.config.claim_headers.as_slice());
        reserved_header(name, claim_headers)
    }

    /// Whether `name` (in any spelling, see [`reserved_header`]) carries a
    /// credential appguard checks in the headers: the API-key header, a
    /// token provider's header, a header a token is bound to (a session
    /// id, a bearer token: a trailer copy would pair a captured token with
    /// another value than the one its binding checked), or one a request
    /// signature must cover (`message_signing.components`, the signature
    /// headers, `content-digest` and `content-type`: a trailer copy would
    /// stand beside the signed value).
    fn is_credential(&self, name: &str) -> bool {
        self.worker.as_ref().is_some_and(|w| {
            w.config
                .credential_headers
                .iter()
                .any(|h| crate::request::same_header_name(name.as_bytes(), h.as_bytes()))
        })
    }

    /// The header fields the request's own signatures cover
    /// (`Signature-Input`, beyond the configured `components`), where a
    /// provider verifies request signatures: a trailer copy of one would
    /// stand beside the signed value, as for the configured ones
    /// ([`Self::is_credential`]). Read, from the request headers as they
    /// came, only when trailers come.
    fn signed_fields(&self) -> Vec<String> {
        if !self
            .worker
            .as_ref()
            .is_some_and(|w| w.config.signs_requests)
        {
            return Vec::new();
        }
        crate::signing::covered_fields_of_lines(self.headers.get_all("signature-input"))
    }

    /// Removes from the request's trailers what must not reach an
    /// upstream that merges them into the headers: a client's identity or
    /// claim header, a credential (an API key, a token: appguard checks
    /// only the headers'), a header that redirects the request or says how
    /// its body reads, a field the request's signatures cover, and a copy
    /// of a header this request's allow set. `false` when the trailers
    /// cannot be read or one cannot be removed (the caller fails closed).
    fn cut_trailers(&self) -> bool {
        let signed = self.signed_fields();
        let same = |n: &str, h: &str| crate::request::same_header_name(n.as_bytes(), h.as_bytes());
        abi::map_headers(Map::RequestTrailers).is_ok_and(|trailers| {
            removed_where(Map::RequestTrailers, &trailers, |n| {
                self.is_ours(n)
                    || self.is_credential(n)
                    || crate::policy::is_redirecting_header_name(n)
                    || crate::policy::is_body_format_header_name(n)
                    || signed.iter().any(|h| same(n, h))
                    || self.granted_headers.iter().any(|(h, _)| same(n, h))
            })
        })
    }

    /// The reply when [`Self::cut_trailers`] failed: 503, as for the
    /// headers, since the trailers would go on uncut.
    fn trailers_uncut(&mut self) -> Action {
        warn!(
            "#{} cannot read the trailers or remove a client's identity or credential header from them",
            self.context_id
        );
        self.reply_raw(503, "appguard_host_error")
    }

    /// Evaluates (or re-evaluates, after keys arrived) and acts on the step.
    fn run(&mut self, key_fetch: KeyFetch) -> Action {
        let Some(worker) = self.worker.clone() else {
            return self.reply_raw(503, "appguard_unconfigured");
        };
        let (step, now) = self.ctx_step(&worker, key_fetch, policy::evaluate);
        self.step(&worker, step, now)
    }

    /// Carries out what the core asked for.
    fn step(&mut self, worker: &Rc<Worker>, step: Step, now: u64) -> Action {
        match step {
            Step::Done(decision, facts) => self.execute(worker, decision, &facts, now),
            Step::NeedKeys {
                provider,
                key_scrub,
                kid,
            } => self.fetch_keys(worker, provider, &key_scrub, kid, now),
            Step::NeedBody(pending) => {
                // (A body declared over the route's size is refused by the
                // core, `policy::evaluate`.)
                if self.headers_end_stream {
                    self.body_complete(worker, pending, &[])
                } else if worker.config.hold_headers_for_body {
                    // The headers stay held (with
                    // `allow_on_headers_stop_iteration: true` Envoy hands
                    // the body on all the same) until the body is decided;
                    // the identity headers are set with the decision. The
                    // key and the token headers go now: if the client
                    // leaves, the access log line is written from these
                    // headers.
                    scrub(&pending.grant.scrub());
                    self.state = State::AwaitingBody(pending);
                    if self.body_ended_while_paused {
                        // All of it went by while the headers waited for
                        // keys or the rate-limit service: Envoy holds it.
                        return self.on_held_body_end();
                    }
                    if self.body_buffered > 0 {
                        // Part of it went by while they waited: one
                        // already over `max_body_bytes` is refused now,
                        // not when (if ever) the client sends more.
                        return self.on_body(self.body_buffered, false);
                    }
                    if !self.body_while_paused {
                        worker.held.borrow_mut().held(self.context_id, now_millis());
                    }
                    Action::Pause
                } else if self.body_while_paused {
                    // Fail closed: the body went by while the headers waited
                    // (a Wasm filter configured with
                    // `allow_on_headers_stop_iteration: true`), and resuming
                    // would send it on unchecked.
                    let id = self.context_id;
                    decision_log(worker, log::Level::Warn, now, || {
                        format!(
                            "#{id} the body arrived while the headers were held; keep \
                             allow_on_headers_stop_iteration at false, or set \
                             hold_headers_for_body: true"
                        )
                    });
                    // Refused: its credentials go as a refusal's do.
                    scrub(&pending.grant.scrub_refused());
                    self.reply_raw(503, "appguard_host_error")
                } else {
                    // Envoy's Wasm host turns a paused headers callback into
                    // "stop all", which holds the body back from this filter
                    // too. So the headers go on (with the identity headers
                    // and token removal decided so far: they cannot change
                    // after this point), and the body is held here instead.
                    // An `envoy.filters.http.buffer` filter after appguard
                    // keeps the headers from the upstream until the body is
                    // decided (see envoy/envoy.yaml).
                    self.apply_headers(&pending.grant);
                    mark_degraded(&pending.facts);
                    self.state = State::AwaitingBody(pending);
                    self.headers_went_on = true;
                    Action::Continue
                }
            }
            Step::NeedRateLimit(pending, call) => self.call_rls(worker, pending, &call),
        }
    }

    /// Runs one of the core's phases with this request and the worker's
    /// state; `key_fetch` is [`KeyFetch::May`] only for the headers phase
    /// before a fetch.
    fn ctx_step<R>(
        &self,
        worker: &Worker,
        key_fetch: KeyFetch,
        f: impl FnOnce(&Ctx<'_>, &Request<'_>, u64) -> R,
    ) -> (R, u64) {
        let now_ms = now_millis();
        let remote_keys = worker.remote_keys();
        let ctx = Ctx {
            config: &worker.config,
            store: &HostStore,
            bucket_salt: worker.bucket_salt,
            token_cache: &worker.token_cache,
            remote_keys: &remote_keys,
            key_fetch,
            service_cache: &worker.service_cache,
            key_memo: &worker.key_memo,
            negative: &worker.negative,
            now_ms,
        };
        let read = |p: usize| delegated_payload(&worker.config, p);
        let mut req = Request::with_peer(&self.headers, Peer::Lazy(downstream_ip));
        req.delegated = Delegated::Lazy(&read);
        req.body_follows = !self.headers_end_stream;
        (f(&ctx, &req, now_ms / 1000), now_ms / 1000)
    }

    /// The whole body is here (or there is none): the body phase, then
    /// whatever it asks for.
    fn body_complete(&mut self, worker: &Rc<Worker>, pending: Box<Pending>, body: &[u8]) -> Action {
        let (step, now) = self.ctx_step(worker, KeyFetch::NotNow, |ctx, req, now| {
            policy::evaluate_body(ctx, req, body, pending, now)
        });
        self.step(worker, step, now)
    }

    /// Calls the rate-limit service and holds the request for its answer;
    /// a call the host refuses is a failure of the service, decided by the
    /// route's `failure_mode` at once.
    fn call_rls(&mut self, worker: &Rc<Worker>, pending: Box<Pending>, call: &RlsCall) -> Action {
        let metadata: Vec<(&str, &[u8])> = TRACE_HEADERS
            .iter()
            .filter_map(|name| self.headers.get(name).map(|v| (*name, v.as_bytes())))
            .filter(|(_, v)| is_trace_value(v))
            .collect();
        match abi::grpc_call(
            &call.cluster,
            RLS_SERVICE,
            RLS_METHOD,
            &metadata,
            &call.message,
            u32::try_from(call.timeout_ms).unwrap_or(u32::MAX),
        ) {
            Ok(token) => {
                worker.relay(CallKind::Grpc, token, self.context_id, &self.me);
                // As before a key fetch: the access log of a request whose
                // client leaves during the call must not hold the key or
                // the token.
                scrub(&pending.grant.scrub());
                self.state = State::AwaitingRateLimit { token, pending };
                Action::Pause
            }
            Err(s) => {
                let id = self.context_id;
                decision_log(worker, log::Level::Warn, now_millis() / 1000, || {
                    format!(
                        "#{id} cannot call the rate-limit service: {}",
                        abi::call_refused(&call.cluster, s)
                    )
                });
                let (step, now) = self.ctx_step(worker, KeyFetch::NotNow, |ctx, _, now| {
                    policy::evaluate_rls(ctx, pending, Err(()), now)
                });
                self.step(worker, step, now)
            }
        }
    }

    /// Whether the headers are held for keys (its own fetch, or another
    /// request's): body bytes that arrive meanwhile would go on unchecked
    /// if the request were then resumed without a body phase.
    fn held_for_keys(&self) -> bool {
        matches!(self.state, State::AwaitingKeys(_) | State::AwaitingRefetch)
    }

    /// The keys this request waited for arrived, or its wait is over
    /// ([`jwks::waited`] says which `key_fetch`), or keys loaded elsewhere
    /// overtook its own fetch ([`jwks::overtaken`]; that fetch's answer is
    /// then only stored): from the root's tick, with this request's
    /// context in effect. Evaluated as after a fetch of its own, and
    /// resumed when it may go on. A request decided meanwhile is left as
    /// it is.
    pub fn keys_awaited(&mut self, key_fetch: KeyFetch) {
        match self.state {
            State::AwaitingRefetch => {}
            State::AwaitingKeys(fetch) => self.overtaken_fetch = Some(fetch),
            _ => return,
        }
        if let Some(worker) = self.worker.clone() {
            self.evaluate_after_keys(&worker, key_fetch);
        }
    }

    /// Evaluates a request held for keys again, as after a fetch of its
    /// own (`key_fetch`), and resumes it when it may go on.
    fn evaluate_after_keys(&mut self, worker: &Worker, key_fetch: KeyFetch) {
        self.state = State::Start;
        if let Action::Continue = self.run(key_fetch) {
            self.resume(worker);
        }
    }

    /// After the headers were paused: carry out the step and, when the
    /// request may go on, resume it.
    fn resume_with(&mut self, worker: &Rc<Worker>, step: Step, now: u64) {
        if let Action::Continue = self.step(worker, step, now) {
            self.resume(worker);
        }
    }

    /// Lets a paused request go on. Envoy answers Ok (a stream that has
    /// gone is a no-op there); should it not, the request stays held, which
    /// fails closed, and the log and `appguard_host_errors` say why.
    fn resume(&self, worker: &Worker) {
        if let Err(status) = abi::resume_request() {
            worker.metrics.host_error();
            let id = self.context_id;
            decision_log(worker, log::Level::Warn, now_millis() / 1000, || {
                format!("#{id} cannot resume the request: {status:?}")
            });
        }
    }

    /// This request as held for provider `p`'s keys from `now_ms`, as
    /// `awaited` says: until the `timeout_ms` (and slack) of the GET it
    /// awaits ([`jwks::wait_deadline_ms`]; the first keys' GETs went out at
    /// or before now), or until keys naming its token's `kid` load.
    fn waiter(
        &self,
        p: usize,
        remote: &crate::token::RemoteJwks,
        awaited: Awaited,
        kid: Option<Box<str>>,
        now_ms: u64,
    ) -> Waiter {
        let sent_ms = match awaited {
            Awaited::Refetch { sent_ms } => sent_ms,
            Awaited::OwnFetch { started_ms, .. } => started_ms,
            Awaited::FirstKeys => now_ms,
        };
        Waiter {
            provider: p,
            awaited,
            kid,
            arrived_ms: now_ms,
            until_ms: jwks::wait_deadline_ms(remote, sent_ms, now_ms),
            context_id: self.context_id,
            filter: self.me.clone(),
        }
    }

    /// Holds the request as `waiter` says (another request's re-fetch, or
    /// the first keys this worker's requests fetch): the root's tick
    /// decides it when keys come or its time is up
    /// ([`GuardFilter::keys_awaited`]). With [`super::root::MAX_WAITERS`]
    /// already waiting, evaluated at once instead.
    fn hold_for_keys(
        &mut self,
        worker: &Rc<Worker>,
        waiter: Waiter,
        key_scrub: &KeyScrub,
    ) -> Action {
        if !worker.wait(waiter) {
            // Too many waiting on this worker: answered as before waiting
            // was possible (an unknown `kid` refused, not charged to the
            // budget; without keys, the route's failure mode).
            worker.metrics.jwks_wait_overflow();
            return self.run(KeyFetch::NotNow);
        }
        worker.metrics.jwks_wait();
        // As before a fetch of its own: if the client leaves, the access
        // log line is written from these headers.
        scrub(key_scrub);
        self.state = State::AwaitingRefetch;
        Action::Pause
    }

    /// The core needs a remote JWKS for provider `p`: take keys another
    /// worker stored meanwhile, or start the GET when this worker may
    /// (first keys, or the refetch lease for an unknown `kid`), holding
    /// the request for it; otherwise evaluate again as the keys stand.
    fn fetch_keys(
        &mut self,
        worker: &Rc<Worker>,
        p: usize,
        key_scrub: &KeyScrub,
        kid: Option<Box<str>>,
        now: u64,
    ) -> Action {
        let Some(provider) = worker.config.providers.get(p) else {
            return self.run(KeyFetch::NotNow);
        };
        let Some(remote) = &provider.remote_jwks else {
            return self.run(KeyFetch::NotNow);
        };
        // The borrow of the worker's JWKS slots ends before any
        // re-evaluation borrows it again.
        let now_ms = now_millis();
        let next = match worker.jwks.borrow_mut().get_mut(p) {
            None => RequestFetch::Evaluate(KeyFetch::NotNow),
            Some(slot) => jwks::request_fetch(&HostStore, slot, &provider.name, remote, now_ms),
        };
        match next {
            RequestFetch::Evaluate(key_fetch) => return self.run(key_fetch),
            RequestFetch::Wait { sent_ms } => {
                let refetch = Awaited::Refetch { sent_ms };
                let waiter = self.waiter(p, remote, refetch, kid, now_ms);
                return self.hold_for_keys(worker, waiter, key_scrub);
            }
            RequestFetch::WaitFirstKeys => {
                let waiter = self.waiter(p, remote, Awaited::FirstKeys, kid, now_ms);
                return self.hold_for_keys(worker, waiter, key_scrub);
            }
            RequestFetch::Dispatch => {}
        }
        match host::http_get(
            &remote.cluster,
            &remote.authority,
            &remote.path,
            remote.timeout_ms,
        ) {
            Ok(token) => {
                let first = match worker.jwks.borrow_mut().get_mut(p) {
                    Some(slot) => {
                        slot.fetch_started(token, now, remote.timeout_ms);
                        slot.keys.keys.is_none()
                    }
                    None => false,
                };
                worker.relay(CallKind::Http, token, self.context_id, &self.me);
                // The key and the token headers go before the wait: if
                // the client leaves, the access log line is written from
                // these headers.
                scrub(key_scrub);
                let fetch = OwnFetch {
                    token,
                    provider: p,
                    // The time the re-fetch lease recorded, if it took it
                    // (see `JwksSlot::refetch_sent_ms`).
                    started: now_ms,
                };
                self.state = State::AwaitingKeys(fetch);
                // Keys another worker or the background refresh loads
                // meanwhile may decide it before its own answer comes. Not
                // counted as a wait; should the waiting room be full, its
                // own answer decides it.
                let own = Awaited::OwnFetch {
                    started_ms: now_ms,
                    first,
                };
                let _ = worker.wait(self.waiter(p, remote, own, kid, now_ms));
                Action::Pause
            }
            Err(s) => {
                // Not again for this second: every request would retry the
                // dispatch (and log) while no keys are loaded.
                if let Some(slot) = worker.jwks.borrow_mut().get_mut(p) {
                    slot.request_fetch_failed_at = Some(now);
                    jwks::refetch_failed(&HostStore, slot, &provider.name, remote, now_ms);
                }
                worker.metrics.jwks_failure();
                let id = self.context_id;
                decision_log(worker, log::Level::Warn, now, || {
                    format!(
                        "#{id} jwks {}: cannot dispatch the fetch: {}",
                        provider.name,
                        abi::call_refused(&remote.cluster, s)
                    )
                });
                self.run(KeyFetch::NotNow)
            }
        }
    }

    /// The answer to this request's own JWKS fetch `fetch`: ends it, and
    /// stores the keys it brought (for every worker) or records that it
    /// failed. `Fetched` only if this answer loaded keys (or newer ones a
    /// later fetch stored): a failed fetch has looked at nothing new.
    fn fetch_answered(&self, worker: &Worker, fetch: OwnFetch, body_size: usize) -> KeyFetch {
        let OwnFetch {
            token: token_id,
            provider,
            started,
        } = fetch;
        let now = now_millis() / 1000;
        let (status, body) = host::http_call_response(body_size, jwks::MAX_JWKS_BYTES);
        let mut key_fetch = KeyFetch::NotNow;
        let configured = worker.config.providers.get(provider);
        if let Some((p, Some(remote))) = configured.map(|p| (p, &p.remote_jwks)) {
            let mut slots = worker.jwks.borrow_mut();
            if let Some(slot) = slots.get_mut(provider) {
                slot.fetch_ended(token_id);
                let loaded = match (status, body) {
                    (200, Some(body)) => jwks::store(
                        &HostStore, slot, &p.name, remote, &body, started, now, now_millis,
                    ),
                    (s, _) => Err(format!(
                        "fetch failed ({})",
                        jwks::unread_answer(s, body_size)
                    )),
                };
                match loaded {
                    Ok(()) => key_fetch = KeyFetch::Fetched,
                    Err(e) => {
                        slot.request_fetch_failed_at = Some(now);
                        jwks::refetch_failed(&HostStore, slot, &p.name, remote, started);
                        worker.metrics.jwks_failure();
                        warn!("#{} jwks {}: {e}", self.context_id, p.name);
                    }
                }
            }
        }
        key_fetch
    }

    /// Acts on the core's decision. `now` is the evaluation's clock reading
    /// (seconds), reused for the log limiter and alerts: each host call
    /// costs a crossing out of V8.
    fn execute(&mut self, worker: &Worker, decision: Decision, facts: &Facts, now: u64) -> Action {
        self.state = State::Done;
        if facts.replay_unprotected {
            decision_log(worker, log::Level::Warn, now, || {
                format!(
                    "#{} the rate-limit service's limit for the replay descriptor \
                     (replay.scope: service) is missing, above 1, or in windows shorter \
                     than the provider's max_lifetime_seconds: its configuration needs a \
                     rule limiting it to 1 per a unit at least that long (hour for tokens \
                     of up to an hour, else day) for domain {:?}; handled as the service \
                     failing (failure_mode) {}",
                    self.context_id,
                    worker
                        .config
                        .rate_limit_service
                        .as_ref()
                        .map_or("", |s| s.domain.as_str()),
                    describe(worker, facts, &self.headers)
                )
            });
        }
        if let Some(rule) = facts.unlimited_rule {
            if now >= worker.unlimited_warned.get().saturating_add(60) {
                worker.unlimited_warned.set(now);
                let route = facts.route.and_then(|r| worker.config.routes.get(r));
                let name = route
                    .and_then(|r| r.rate_limits.get(usize::from(rule)))
                    .map_or("", |rl| rl.name.as_str());
                warn!(
                    "the rate-limit service has no limit for the descriptor of rule {name} of \
                     route {}: no rule of its domain matches it, so this one limits nothing \
                     (check the service's keys and domain; said once a minute per worker)",
                    worker.config.route_label(facts.route)
                );
            }
        }
        // Denied, or let through by monitor mode: either way the budget
        // spared the verification, and is counted the same way.
        if facts.budget_refused {
            worker.metrics.budget_refusal();
        }
        match decision {
            Decision::Allow(grant) => {
                if let Some(reason) = facts.degraded {
                    // One counter a request: a would-be denial is
                    // `monitor` (below), as in enforce mode it is `deny`.
                    if grant.would_deny.is_none() {
                        worker
                            .metrics
                            .count(facts.route, Counted::Degraded, Some(reason));
                    }
                    decision_log(worker, log::Level::Warn, now, || {
                        format!(
                            "#{} failure_mode=allow let the request through without {} {}",
                            self.context_id,
                            if reason == crate::decision::Reason::JwksUnavailable {
                                "token verification (jwks_unavailable)"
                            } else {
                                "its rate limits (ratelimit_unavailable)"
                            },
                            describe(worker, facts, &self.headers)
                        )
                    });
                }
                match (grant.would_deny, facts.degraded) {
                    (Some(r), _) => worker.metrics.count(facts.route, Counted::Monitor, Some(r)),
                    (None, Some(_)) => {} // counted as degraded above
                    (None, None) if facts.cors_preflight => {
                        worker.metrics.count(facts.route, Counted::Preflight, None)
                    }
                    (None, None) => worker.metrics.count(facts.route, Counted::Allow, None),
                }
                self.apply_grant(worker, &grant, facts, now);
                self.response_headers = grant.response_headers;
                self.granted_headers = grant.set_headers;
                // Trailers that came while the request waited (for the
                // rate-limit service, keys, the body) were cut before
                // these headers were known.
                if self.trailers_seen && !self.cut_trailers() {
                    return self.trailers_uncut();
                }
                Action::Continue
            }
            Decision::Deny(denial) => {
                worker
                    .metrics
                    .count(facts.route, Counted::Deny, Some(denial.reason));
                if let Some(a) = &worker.config.alerts {
                    let route = worker.config.route_label(facts.route);
                    if let Some(alert) =
                        crate::alerts::record(&HostStore, a, route, denial.reason, now)
                    {
                        worker.pending_alerts.borrow_mut().push(alert);
                    }
                }
                self.deny(worker, &denial, facts, now)
            }
        }
    }

    /// Removes and sets request headers as the grant says. After a body
    /// phase the headers have already gone on and the host refuses changes
    /// (ignored: everything decided before the body was applied then).
    fn apply_headers(&self, grant: &Grant) {
        for name in &grant.remove_headers {
            let _ = abi::remove_header(Map::RequestHeaders, name);
        }
        scrub(&grant.key_scrub);
        for (name, value) in &grant.set_headers {
            let _ = abi::set_header(Map::RequestHeaders, name, value);
        }
    }

    /// Carries out an allow: the grant's headers, the degraded mark, and in
    /// monitor mode the would-be denial (log line, header, filter state).
    fn apply_grant(&self, worker: &Worker, grant: &Grant, facts: &Facts, now: u64) {
        self.apply_headers(grant);
        mark_degraded(facts);
        if let Some(reason) = grant.would_deny {
            decision_log(worker, log::Level::Info, now, || {
                format!(
                    "#{} monitor would_deny reason={} {}{}",
                    self.context_id,
                    reason,
                    describe(worker, facts, &self.headers),
                    refusal_notes(facts)
                )
            });
            let _ = abi::set_header(Map::RequestHeaders, "x-appguard-would-deny", reason.code());
            // Also for the access log: after a body phase the header can no
            // longer be added (the headers went on before the body was
            // read), but the stream's filter state can.
            let _ = abi::set_filter_state(WOULD_DENY_STATE, reason.code().as_bytes());
        }
    }

    /// Carries out a refusal: the decision line, the key and token
    /// headers scrubbed for the access log, the local reply with its
    /// reason code.
    fn deny(&self, worker: &Worker, denial: &Denial, facts: &Facts, now: u64) -> Action {
        let reason = denial.reason;
        decision_log(worker, log::Level::Info, now, || {
            format!(
                "#{} deny reason={} status={} {}{}",
                self.context_id,
                reason,
                reason.status(),
                describe(worker, facts, &self.headers),
                refusal_notes(facts)
            )
        });
        scrub(&denial.key_scrub);
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(5 + denial.headers.len());
        headers.push(("x-appguard-reason", reason.code()));
        if let Some(challenge) = reason.challenge() {
            headers.push(("www-authenticate", challenge));
        }
        headers.extend(denial.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        headers.extend(crate::policy::refusal_cors_headers(
            &worker.config,
            self.headers.get_all("origin"),
        ));
        if let Err(status) = self.local_reply(reason.status(), &reason.body(), headers) {
            // The request stays held (fail closed) until Envoy's timeouts.
            worker.metrics.host_error();
            let id = self.context_id;
            decision_log(worker, log::Level::Warn, now, || {
                format!("#{id} cannot send local reply: {status:?}")
            });
        }
        Action::Pause
    }

    /// Sends a refusal with HTTP `status`, JSON `body` and `headers`, as
    /// [`crate::decision::grpc_reply`] says for a gRPC or gRPC-Web request.
    fn local_reply<'a>(
        &self,
        status: u16,
        body: &str,
        headers: Vec<(&'a str, &'a str)>,
    ) -> Result<(), abi::HostError> {
        use crate::decision::GrpcReply;
        let grpc_status = crate::decision::grpc_status(status);
        let kind = crate::decision::grpc_reply(
            self.headers.get("content-type"),
            self.headers.get("x-grpc-web").is_some(),
            self.headers_went_on,
        );
        let head = || self.headers.get(":method") == Some("HEAD");
        // The same vector, its borrows now as long as this function's.
        let mut headers: Vec<(&str, &str)> = headers;
        match kind {
            GrpcReply::No | GrpcReply::Native => {
                headers.push(("content-type", "application/json"));
                abi::send_local_response(u32::from(status), grpc_status, &headers, body.as_bytes())
            }
            GrpcReply::Web(media) if !head() => {
                let frame = crate::decision::grpc_web_body(media, grpc_status, body);
                headers.push(("content-type", media));
                abi::send_local_response(200, grpc_status, &headers, &frame)
            }
            GrpcReply::WebConverted | GrpcReply::Web(_) => {
                let code = grpc_status.to_string();
                let message = crate::decision::grpc_message(body);
                headers.push(("content-type", "application/grpc"));
                headers.push(("grpc-status", &code));
                // As Envoy answers a gRPC request itself: a HEAD has no
                // body, and so no message taken from one.
                if !head() {
                    headers.push(("grpc-message", &message));
                }
                abi::send_local_response(200, grpc_status, &headers, b"")
            }
        }
    }

    /// A local reply the core did not decide (no configuration, the host
    /// failing us): `{"error": code}` with `x-appguard-reason`, counted in
    /// `appguard_host_errors` when it is `appguard_host_error` or cannot be
    /// sent.
    fn reply_raw(&mut self, status: u16, code: &str) -> Action {
        self.state = State::Done;
        if code == "appguard_host_error" {
            if let Some(w) = &self.worker {
                w.metrics.host_error();
            }
        }
        let body = format!("{{\"error\":\"{code}\"}}");
        if let Err(e) = self.local_reply(status, &body, vec![("x-appguard-reason", code)]) {
            // The request stays held (fail closed) until Envoy's timeouts.
            let id = self.context_id;
            match &self.worker {
                Some(w) => {
                    if code != "appguard_host_error" {
                        w.metrics.host_error();
                    }
                    decision_log(w, log::Level::Warn, now_millis() / 1000, || {
                        format!("#{id} cannot send local reply {code}: {e:?}")
                    });
                }
                None => warn!("#{id} cannot send local reply {code}: {e:?}"),
            }
        }
        Action::Pause
    }
}

/// The filter state a monitor-mode would-be denial is recorded in, as
/// `wasm.appguard_would_deny` (`%FILTER_STATE(wasm.appguard_would_deny:PLAIN)%`
/// in an access log format).
const WOULD_DENY_STATE: &str = "appguard_would_deny";

/// Writes one per-request decision line, within the worker's
/// `decision_log_per_second`; the first line after a gap says how many were
/// left out. The line is only formatted when it is written.
///
/// Warnings (`Level::Warn`) have their own budget, [`WARN_LINES_PER_SECOND`]:
/// a flood of denials cannot crowd out the line saying that
/// `failure_mode: allow` let requests through, and a failing dependency
/// writes at most that many lines a second.
fn decision_log(worker: &Worker, level: log::Level, now: u64, line: impl FnOnce() -> String) {
    if admitted(worker, level, now) {
        log::log!(level, "{}", line());
    }
}

/// Whether [`decision_log`] writes a line at `level` now (and the line
/// saying how many were left out before it, when some were). Not generic:
/// every call site of `decision_log` shares it.
#[inline(never)]
fn admitted(worker: &Worker, level: log::Level, now: u64) -> bool {
    if !log::log_enabled!(level) {
        return false;
    }
    let warning = level <= log::Level::Warn;
    let limiter = if warning {
        &worker.warn_log
    } else {
        &worker.decision_log
    };
    let admit = limiter.borrow_mut().admit(now);
    if let Admit::Write { suppressed } = admit {
        left_out(worker, level, warning, suppressed);
        return true;
    }
    false
}

/// Says how many lines were left out, when some were.
fn left_out(worker: &Worker, level: log::Level, warning: bool, suppressed: u64) {
    if suppressed > 0 && warning {
        log::log!(
            level,
            "{suppressed} warning lines left out (at most {WARN_LINES_PER_SECOND} a second \
             per worker)"
        );
    } else if suppressed > 0 {
        log::log!(
            level,
            "{suppressed} decision log lines left out (decision_log_per_second = {}; \
             the appguard_decisions counters count every request)",
            worker.config.decision_log_per_second
        );
    }
}

/// From the worker's tick: says how many lines were left out in a second
/// that is over and no line followed (the tail of a flood), once.
pub fn report_left_out(worker: &Worker, now: u64) {
    let decisions = worker.decision_log.borrow_mut().take_left_out(now);
    left_out(worker, log::Level::Info, false, decisions);
    let warnings = worker.warn_log.borrow_mut().take_left_out(now);
    left_out(worker, log::Level::Warn, true, warnings);
}

/// `route=… ip=… app=… key=…`: the request's route (`_unmatched` when no
/// route matched), client IP, app and key for a log line, names and ids only, never a token, key or phone number.
/// The IP is read from the host here if no check needed it (only for lines
/// written).
fn describe(worker: &Worker, facts: &Facts, headers: &Headers) -> String {
    let c = &worker.config;
    // The label metrics and alerts use too, so that a log line and a
    // counter of one request name the same route.
    let route = c.route_label(facts.route);
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
        .or_else(|| {
            Request::with_peer(headers, Peer::Lazy(downstream_ip)).client_ip(c.xff_trusted_hops)
        })
        .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    format!("route={route} ip={ip} app={app} key={key}")
}

/// The log line of a rate-limit call that brought no usable answer: the
/// gRPC status by name, and whether the call's `timeout_ms` ran out (Envoy
/// then ends it as CANCELLED or UNAVAILABLE, which alone would not say so).
fn rls_failure(id: u32, status: u32, bytes: usize, waited_ms: u64, timeout_ms: u64) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let name = usize::try_from(status)
        .ok()
        .and_then(|i| NAMES.get(i))
        .unwrap_or(&"?");
    if status == 0 {
        let what = if bytes > MAX_RESPONSE_BYTES {
            "too large to read"
        } else {
            "that does not decode"
        };
        format!("#{id} rate-limit service failed: an answer {what} ({bytes} bytes) after {waited_ms} ms")
    } else if waited_ms.saturating_add((timeout_ms / 4).min(10)) >= timeout_ms {
        // (Envoy's timer and the Wasm clock disagree by a few ms: a call
        // that ended within 10 ms of its timeout, or a quarter of a short
        // one, ran out.)
        format!(
            "#{id} rate-limit service failed: no answer within timeout_ms ({timeout_ms} ms): \
             grpc status {status} {name} after {waited_ms} ms"
        )
    } else {
        format!(
            "#{id} rate-limit service failed: grpc status {status} {name} ({bytes} bytes) \
             after {waited_ms} ms"
        )
    }
}

impl Context for GuardFilter {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let State::AwaitingRateLimit { token, .. } = &self.state else {
            return;
        };
        if *token != token_id {
            return;
        }
        let Some(pending) = self.take_awaiting_rls() else {
            return;
        };
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let response = if status_code == 0 && response_size <= MAX_RESPONSE_BYTES {
            abi::buffer(Buffer::GrpcReceive, 0, response_size)
                .ok()
                .flatten()
                .and_then(|b| decode_response(&b).ok())
        } else {
            None
        };
        if response.is_none() {
            let id = self.context_id;
            let now_ms = now_millis();
            // The call's timeout is the service's, as `call_rls` sent it.
            let timeout_ms = worker
                .config
                .rate_limit_service
                .as_ref()
                .map_or(0, |s| s.timeout_ms);
            let waited_ms = now_ms.saturating_sub(pending.sent_ms());
            decision_log(&worker, log::Level::Warn, now_ms / 1000, || {
                rls_failure(id, status_code, response_size, waited_ms, timeout_ms)
            });
        }
        let (step, now) = self.ctx_step(&worker, KeyFetch::NotNow, |ctx, _, now| {
            policy::evaluate_rls(ctx, pending, response.as_ref().ok_or(()), now)
        });
        self.resume_with(&worker, step, now);
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        // Background refreshes are dispatched from the root's tick, and the
        // SDK hands an answer to the context that dispatched its call: only
        // this request's own fetch answers here.
        let Some(worker) = self.worker.clone() else {
            return;
        };
        match (&self.state, self.overtaken_fetch) {
            (State::AwaitingKeys(fetch), _) if fetch.token == token_id => {
                let fetch = *fetch;
                // No longer to be woken by keys from elsewhere.
                let id = self.context_id;
                worker.waiters.borrow_mut().retain(|w| w.context_id != id);
                let key_fetch = self.fetch_answered(&worker, fetch, body_size);
                self.evaluate_after_keys(&worker, key_fetch);
            }
            // Decided already by keys loaded elsewhere, and still here:
            // the answer is stored (or its failure counted), and ends the
            // fetch.
            (_, Some(fetch)) if fetch.token == token_id => {
                self.overtaken_fetch = None;
                self.fetch_answered(&worker, fetch, body_size);
            }
            _ => {}
        }
    }
}

impl HttpContext for GuardFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !matches!(self.state, State::Start) {
            return Action::Continue;
        }
        self.headers_end_stream = end_of_stream;
        self.on_headers()
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // Body bytes while the headers are held: Envoy hands them on, so
        // `hold_headers_for_body` has the flag it needs.
        if let Some(w) = self
            .worker
            .as_ref()
            .filter(|w| w.config.hold_headers_for_body)
        {
            if !matches!(self.state, State::Start | State::Done) {
                w.held.borrow_mut().done(self.context_id, true);
            }
        }
        match &self.state {
            State::AwaitingBody(_) => {
                self.body_buffered = self.body_buffered.max(body_size);
                self.on_body(body_size, end_of_stream)
            }
            // While a decision is pending the body must wait too: Continue
            // here would release the paused headers upstream.
            State::AwaitingKeys { .. }
            | State::AwaitingRefetch
            | State::AwaitingRateLimit { .. } => {
                self.body_while_paused |= self.held_for_keys();
                self.body_buffered = self.body_buffered.max(body_size);
                self.body_ended_while_paused |= end_of_stream;
                Action::Pause
            }
            State::Start | State::Done => Action::Continue,
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers reach an HTTP/2 upstream too: a client's identity or
        // claim header sent as a trailer is removed like one sent as a
        // header. So is a credential (an API key, a token) sent as one:
        // appguard checks only the headers', and an upstream that merges
        // trailers into the headers would read one nobody checked.
        // One that cannot be removed fails closed, as in the headers, and
        // so do trailers that cannot be read.
        if !self.cut_trailers() {
            return self.trailers_uncut();
        }
        self.trailers_seen = true;
        match &self.state {
            // Trailers end the body: evaluate what was buffered.
            State::AwaitingBody(_) => self.on_held_body_end(),
            State::AwaitingKeys { .. }
            | State::AwaitingRefetch
            | State::AwaitingRateLimit { .. } => {
                self.body_while_paused |= self.held_for_keys();
                self.body_ended_while_paused = true;
                Action::Pause
            }
            State::Start | State::Done => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (k, v) in &self.response_headers {
            let _ = abi::add_header(Map::ResponseHeaders, k, v);
        }
        Action::Continue
    }
}

/// Tells the upstream that `failure_mode: allow` let the request through
/// without a check (`x-appguard-degraded`), so that it can tell identity
/// from headers alone (or no limits) from a verified one. Client copies
/// were removed with every `x-appguard-*` header. Before a body phase for
/// what the headers phase skipped (a JWKS without keys): the headers go
/// on then, and cannot be changed after.
fn mark_degraded(facts: &Facts) {
    if let Some(reason) = facts.degraded {
        let _ = abi::set_header(Map::RequestHeaders, "x-appguard-degraded", reason.code());
    }
}

impl GuardFilter {
    /// The body ended outside a body callback (at its trailers, or while
    /// the headers waited): the body phase reads what Envoy buffered.
    fn on_held_body_end(&mut self) -> Action {
        match abi::buffer(Buffer::RequestBody, 0, usize::MAX) {
            Ok(Some(b)) if b.len() >= self.body_buffered => self.on_body(b.len(), true),
            Ok(None) if self.body_buffered == 0 => self.on_body(0, true),
            // Shorter than Envoy said, or unreadable: checked as it
            // reads, a body whose digest covers less (or nothing)
            // would pass while the whole one goes upstream.
            other => {
                warn!(
                    "#{} the request body cannot be read at its end ({} bytes buffered, {})",
                    self.context_id,
                    self.body_buffered,
                    match other {
                        Ok(Some(b)) => format!("{} read", b.len()),
                        Ok(None) => "none read".to_owned(),
                        Err(s) => format!("{s:?}"),
                    }
                );
                self.reply_raw(503, "appguard_host_error")
            }
        }
    }

    /// `413 body_too_large` for a body over the route's `max_body_bytes`
    /// (in monitor mode, the request goes on with it as would-deny).
    fn refuse_too_large(&mut self, worker: &Rc<Worker>, pending: Box<Pending>) -> Action {
        let (step, now) = self.ctx_step(worker, KeyFetch::NotNow, |_, _, _| {
            policy::finish_pending(pending, crate::decision::Reason::BodyTooLarge.into())
        });
        self.step(worker, step, now)
    }

    /// Body bytes of a request waiting for its body: refused by size as
    /// soon as they pass the route's limit, else buffered by Envoy until
    /// the end, then read whole for the body phase.
    fn on_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return self.reply_raw(503, "appguard_unconfigured");
        };
        let State::AwaitingBody(pending) = std::mem::replace(&mut self.state, State::Done) else {
            return Action::Continue;
        };
        let max = pending.max_body_bytes(&worker.config);
        if body_size > max {
            // Refused by size before reading or parsing any of it.
            return self.refuse_too_large(&worker, pending);
        }
        if !end_of_stream {
            self.state = State::AwaitingBody(pending);
            return Action::Pause;
        }
        // A body that cannot be read is not an empty body: checked as one,
        // an empty body's `Content-Digest` would pass while the real body
        // goes upstream. Fail closed, as when the headers cannot be read.
        let body = match abi::buffer(Buffer::RequestBody, 0, body_size) {
            // Not a shorter read either: the part checked would not be the
            // body that goes upstream (as on the trailers path).
            Ok(Some(b)) if b.len() == body_size => b,
            Ok(Some(b)) => {
                warn!(
                    "#{} the request body read back {} of {body_size} bytes",
                    self.context_id,
                    b.len()
                );
                return self.reply_raw(503, "appguard_host_error");
            }
            Ok(None) if body_size == 0 => Vec::new(),
            Ok(None) => {
                warn!(
                    "#{} the request body ({body_size} bytes) is missing",
                    self.context_id
                );
                return self.reply_raw(503, "appguard_host_error");
            }
            Err(s) => {
                warn!("#{} cannot read the request body: {s:?}", self.context_id);
                return self.reply_raw(503, "appguard_host_error");
            }
        };
        self.body_complete(&worker, pending, &body)
    }
}

/// The payload `jwt_authn` verified for provider `index` if it has
/// `verified_by`, read from the request's dynamic metadata
/// (`payload_in_metadata`): only metadata, which clients cannot write,
/// never a header. Read when a route needs the provider, not per request.
/// The whole `metadata` property, a serialized message in which claims keep
/// their types (see [`crate::token::delegated`]).
fn delegated_payload(config: &crate::config::Config, index: usize) -> Option<Claims> {
    let (filter, key) = config.providers.get(index)?.verified_by.as_ref()?;
    let bytes = abi::property(&["metadata"]).ok().flatten()?;
    crate::token::delegated::payload_from_metadata(&bytes, filter, key)
}

/// Removes from `map` each of `pairs` whose name `which` picks: false when
/// one could not be removed.
fn removed_where(map: Map, pairs: &crate::headers::Headers, which: impl Fn(&str) -> bool) -> bool {
    !pairs
        .iter()
        .filter(|(n, _)| which(n))
        .any(|(name, _)| abi::remove_header(map, name).is_err())
}

/// Takes the API key out of the request as the core decided (its header,
/// and `:path` without the key parameter). On a denial too, with the
/// token headers: the request goes no further, but Envoy's access log
/// reads these headers.
fn scrub(key: &KeyScrub) {
    for name in &key.headers {
        let _ = abi::remove_header(Map::RequestHeaders, name);
    }
    if let Some(path) = &key.path {
        let _ = abi::set_header(Map::RequestHeaders, ":path", path);
    }
    if let Some(cookie) = &key.cookie {
        // Every `cookie` header goes, and the cookies kept come back as one.
        let _ = abi::remove_header(Map::RequestHeaders, "cookie");
        if !cookie.is_empty() {
            let _ = abi::add_header(Map::RequestHeaders, "cookie", cookie);
        }
    }
}

/// Envoy's downstream remote address (`source.address`, "ip:port").
fn downstream_ip() -> Option<IpAddr> {
    let bytes = abi::property(&["source", "address"]).ok()??;
    let text = std::str::from_utf8(&bytes).ok()?;
    text.parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
}

/// The log notes of a refusal: a token refused without verification
/// because its client's failure budget is spent, and why a request
/// signature was refused.
fn refusal_notes(facts: &Facts) -> std::borrow::Cow<'static, str> {
    let budget = if facts.budget_refused {
        " budget=exhausted"
    } else {
        ""
    };
    // Why a request signature failed: component and field names only.
    match &facts.signing_error {
        Some(e) => format!("{budget} signature=\"{e}\"").into(),
        None => budget.into(),
    }
}

/// A request's filter as the worker holds it: gone once Envoy deleted the
/// request's context (the SDK then dropped its [`FilterHandle`]).
pub type FilterRef = Weak<RefCell<GuardFilter>>;

/// What the SDK holds for a request: its filter, shared with the worker
/// so that the root context can act for it ([`Waiter`], and the answers to
/// calls dispatched while it did, see [`Worker::relay`]). Every callback
/// goes to the filter. The filter is never borrowed across a call into the
/// host that could call back (Envoy defers resuming, local replies and
/// call answers until the VM call returns), so a borrow that fails is a
/// bug: it is logged, and the request is held (fail closed) rather than
/// the VM aborted.
pub struct FilterHandle {
    /// Envoy's id of the request's context, for the log line.
    context_id: u32,
    /// The request's filter.
    filter: Rc<RefCell<GuardFilter>>,
}

impl FilterHandle {
    /// The filter of a new request, sharing the worker's state.
    pub fn new(context_id: u32, worker: Option<Rc<Worker>>) -> Self {
        FilterHandle {
            context_id,
            filter: Rc::new_cyclic(|me| {
                RefCell::new(GuardFilter::new(context_id, worker, me.clone()))
            }),
        }
    }

    /// Runs `f` on the filter; `busy` when it is borrowed already.
    fn with<R>(&self, busy: R, f: impl FnOnce(&mut GuardFilter) -> R) -> R {
        match self.filter.try_borrow_mut() {
            Ok(mut filter) => f(&mut filter),
            Err(_) => {
                warn!(
                    "#{} the filter is busy (a reentrant callback): the request is held",
                    self.context_id
                );
                busy
            }
        }
    }
}

impl Context for FilterHandle {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.with((), |f| {
            f.on_grpc_call_response(token_id, status_code, response_size)
        })
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        self.with((), |f| {
            f.on_http_call_response(token_id, num_headers, body_size, num_trailers)
        })
    }
}

impl HttpContext for FilterHandle {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.with(Action::Pause, |f| {
            f.on_http_request_headers(num_headers, end_of_stream)
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with(Action::Pause, |f| {
            f.on_http_request_body(body_size, end_of_stream)
        })
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.with(Action::Pause, |f| f.on_http_request_trailers(num_trailers))
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.with(Action::Continue, |f| {
            f.on_http_response_headers(num_headers, end_of_stream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_trace_values_go_to_the_rate_limit_service() {
        // A 17 KiB `traceparent` made the service refuse the call (its
        // HTTP/2 server took 16 KiB of metadata), and `failure_mode: allow`
        // then let the request through without its limits.
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_trace_value(traceparent.as_bytes()));
        assert!(is_trace_value("a".repeat(MAX_TRACE_VALUE).as_bytes()));
        assert!(is_trace_value(b"congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"));
        assert!(!is_trace_value("a".repeat(MAX_TRACE_VALUE + 1).as_bytes()));
        assert!(!is_trace_value("a".repeat(17 * 1024).as_bytes()));
        assert!(!is_trace_value(b"abc\x01def"));
        assert!(!is_trace_value(b"abc\x7fdef"));
        assert!(!is_trace_value("caf\u{e9}".as_bytes()));
    }
}
