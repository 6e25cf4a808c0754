//! The root context: one per worker VM. It parses the configuration once in
//! `on_configure`, owns the worker's state (shared with every HTTP context
//! through an `Rc`), and refreshes remote JWKS from its tick.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use super::abi::{self, Buffer};

use super::filter::{FilterHandle, FilterRef, GuardFilter};
use super::host::{self, now_seconds, HostStore};
use super::metrics::Metrics;
use crate::alerts::{
    next_try, retry_after_seconds, NextTry, Retry, ALERT_ATTEMPTS, MAX_RETRIES_QUEUED,
    MAX_RETRY_AFTER_SECONDS,
};
use crate::config::Config;
use crate::identity::KeyMemo;
use crate::limits::ServiceCache;
use crate::policy::{KeyFetch, NegativeCache, RemoteKeys, TokenCache};
use crate::store::{self, BucketSalt};
use crate::token::jwks::{self, JwksSlot};
use crate::token::ReplayScope;

/// Per-request warning lines each worker writes per second at most (see
/// [`Worker::warn_log`]); the first line after a gap says how many were
/// left out.
pub const WARN_LINES_PER_SECOND: u32 = 10;

/// Everything one worker keeps between requests.
pub struct Worker {
    /// The compiled configuration.
    pub config: Config,
    /// The instance's secret that picks buckets in the shared tables, the
    /// same for every worker (see [`store::instance_salt`]). Never logged.
    pub bucket_salt: BucketSalt,
    /// Verified tokens, until their `exp`.
    pub token_cache: RefCell<TokenCache>,
    /// Remote JWKS state per provider (same index as `config.providers`).
    pub jwks: RefCell<Vec<JwksSlot>>,
    /// Stats counters.
    pub metrics: Metrics,
    /// What the rate-limit service said, per descriptor: refused until
    /// their reset, and hits leased (see [`ServiceCache`]).
    pub service_cache: RefCell<ServiceCache>,
    /// API keys already found (see [`KeyMemo`]).
    pub key_memo: RefCell<KeyMemo>,
    /// Whether any provider has a remote JWKS (else there is nothing to
    /// maintain or hand to the policy).
    pub has_remote_jwks: bool,
    /// Tokens whose signature failed, refused again without verifying.
    pub negative: RefCell<NegativeCache>,
    /// Alerts fired by requests, posted from the next tick.
    pub pending_alerts: RefCell<Vec<crate::alerts::Alert>>,
    /// Keeps per-request decision log lines to `decision_log_per_second`.
    pub decision_log: RefCell<crate::lograte::LogLimiter>,
    /// Keeps per-request warnings (a dependency failing, a request let
    /// through by `failure_mode: allow`) to [`WARN_LINES_PER_SECOND`], apart
    /// from the decision lines, so that a flood of cheap denials cannot
    /// crowd them out, nor a failing dependency flood the log.
    pub warn_log: RefCell<crate::lograte::LogLimiter>,
    /// Background JWKS refreshes in flight: call token → provider index
    /// and when the GET was dispatched (milliseconds since the epoch).
    pub refreshes: RefCell<HashMap<u32, (usize, u64)>>,
    /// Alert posts in flight: call token → what was posted, its body and
    /// how many times it was tried (for the log line that says whether the
    /// webhook took it, and to try it again when it did not).
    pub alert_calls: RefCell<HashMap<u32, crate::alerts::Retry>>,
    /// Alert posts the webhook did not take, waiting to be tried again
    /// (see [`crate::alerts::next_try`]).
    pub alert_retries: RefCell<crate::alerts::RetryQueue>,
    /// When (seconds) this worker last logged a rule the rate-limit
    /// service has no limit for: once a minute, outside [`Worker::warn_log`],
    /// so that a misconfiguration met by every request neither floods the
    /// log nor crowds out the warnings that budget keeps.
    pub unlimited_warned: std::cell::Cell<u64>,
    /// `hold_headers_for_body` until Envoy has shown that it hands a body to
    /// this filter while its headers are held (the Wasm filter's
    /// `allow_on_headers_stop_iteration: true`): the requests held for
    /// their body meanwhile (context id, since when in ms; a few). Without
    /// the flag no body ever comes, and the tick says so instead of
    /// leaving an operator with requests that hang.
    pub held: RefCell<HeldForBody>,
    /// Requests held for another request's re-fetch of keys, or for the
    /// first keys other requests are fetching (at most [`MAX_WAITERS`]),
    /// and requests fetching keys themselves (at most [`MAX_FETCHING`]
    /// more), decided from the root's tick when keys come (see
    /// [`FilterRoot::wake_waiters`]).
    pub waiters: RefCell<Vec<Waiter>>,
    /// Calls dispatched by a request while the root acted for it: call
    /// token → the request's context id and filter. The SDK hands their
    /// answers to the root (the context it was running), which hands them
    /// on (see [`Worker::relay`]).
    pub relayed: RefCell<HashMap<(CallKind, u32), (u32, FilterRef)>>,
    /// The request the root is acting for right now, if any (its context
    /// id): calls it dispatches are relayed.
    pub acting_for: Cell<Option<u32>>,
    /// Whether the root's tick runs at [`FAST_TICK_MS`] (else [`TICK_MS`]).
    pub fast_tick: Cell<bool>,
}

/// What a held request waits for (see [`Waiter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaited {
    /// Another request's re-fetch, dispatched at `sent_ms` (ms since the
    /// epoch): [`jwks::RequestFetch::Wait`], decided by [`jwks::waited`].
    Refetch {
        /// When that re-fetch was dispatched.
        sent_ms: u64,
    },
    /// The first keys, which other requests of this worker are fetching:
    /// [`jwks::RequestFetch::WaitFirstKeys`], decided by
    /// [`jwks::waited_first_keys`].
    FirstKeys,
    /// Its own fetch, dispatched at `started_ms`: its answer decides it as
    /// before, unless keys loaded elsewhere overtake it
    /// ([`jwks::overtaken`]). Not counted as a wait.
    OwnFetch {
        /// When its GET was dispatched (ms since the epoch).
        started_ms: u64,
        /// No keys were loaded when it went out.
        first: bool,
    },
}

/// A request held for keys: another request's re-fetch of a provider's
/// keys, the first keys, or (to be decided sooner when keys come from
/// elsewhere) its own fetch.
pub struct Waiter {
    /// Index of the provider whose keys are awaited.
    pub provider: usize,
    /// What it waits for.
    pub awaited: Awaited,
    /// Its token's `kid`, if it names one: keys that name it end the wait
    /// whatever GET brought them ([`jwks::names_kid`]).
    pub kid: Option<Box<str>>,
    /// When the request asked for keys (ms since the epoch): keys fetched
    /// since make a `kid` they lack made up (see [`jwks::waited`]).
    pub arrived_ms: u64,
    /// When it stops waiting (ms since the epoch, [`jwks::wait_deadline_ms`]).
    /// Not read for [`Awaited::OwnFetch`]: Envoy answers its GET by
    /// `timeout_ms` at the latest, and that answer ends the watch.
    pub until_ms: u64,
    /// Envoy's id of its context, made the effective context to act for it.
    pub context_id: u32,
    /// Its filter; gone once Envoy deleted the request's context.
    pub filter: FilterRef,
}

/// The kind of a call relayed to a request ([`Worker::relay`]): Envoy
/// numbers HTTP calls and gRPC calls apart (1, 2, 3… and 1, 3, 5…), so a
/// token alone could name a root's own HTTP call and a request's gRPC
/// call at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// `proxy_http_call` (a JWKS fetch).
    Http,
    /// `proxy_grpc_call` (the rate-limit service).
    Grpc,
}

/// How many waiting requests the root decides in one tick (the others in
/// the next ticks, 10 ms apart). Envoy runs the local replies and resumes
/// made for other contexts during a VM call after it, each one's answer
/// reaching the module (`proxy_on_response_headers`) inside the VM call of
/// the one before: a few hundred in one tick overflowed V8's stack and
/// crashed the VM (review-wait50 F1, about 306 a worker). Thirty-two is a
/// tenth of that, and still drains the most a worker holds
/// ([`MAX_WAITERS`]) in a third of a second.
pub const MAX_WOKEN_PER_TICK: usize = 32;

/// How many requests each worker holds for keys at once (another request's
/// re-fetch, or the first keys). Beyond them, a request with an unknown
/// `kid` is refused at once as while no re-fetch may be made (`401
/// token_signature`, not charged), and one that finds no keys answers by
/// its route's `failure_mode`.
pub const MAX_WAITERS: usize = 1024;

/// How many requests fetching keys themselves each worker watches besides
/// ([`Awaited::OwnFetch`]), so that keys loaded elsewhere decide them
/// sooner: they do not take the room of the [`MAX_WAITERS`], and there
/// are few (at most four a provider fetch the first keys; a re-fetch for
/// an unknown `kid` once per `min_refetch_seconds`, each in flight for at
/// most `timeout_ms`). Past them, a request's own answer decides it.
pub const MAX_FETCHING: usize = 64;

/// What [`Worker::held`] keeps.
#[derive(Default)]
pub struct HeldForBody {
    /// A body came while the headers were held: the flag is set.
    pub confirmed: bool,
    /// Requests held for their body, not yet handed one.
    pub waiting: Vec<(u32, u64)>,
    /// When (seconds) the tick last warned.
    pub warned_at: Option<u64>,
}

/// How long a held request may wait for its first body bytes before the
/// tick suspects the flag is missing.
const HELD_WARN_AFTER_MS: u64 = 5000;

impl HeldForBody {
    /// At most this many held requests are followed (the first ones tell).
    const MAX_WAITING: usize = 16;

    /// Request `id` is held for its body from `now_ms`.
    pub fn held(&mut self, id: u32, now_ms: u64) {
        if !self.confirmed && self.waiting.len() < Self::MAX_WAITING {
            self.waiting.push((id, now_ms));
        }
    }

    /// Request `id` got body bytes while held, or ended: when it got them,
    /// the flag is set and nothing more is followed.
    pub fn done(&mut self, id: u32, got_body: bool) {
        if got_body {
            self.confirmed = true;
            self.waiting = Vec::new();
        } else {
            self.waiting.retain(|(w, _)| *w != id);
        }
    }

    /// Whether the tick at `now_ms` warns: a request has waited for its
    /// body past [`HELD_WARN_AFTER_MS`] and no body ever came while held;
    /// at most once a minute.
    pub fn warn_now(&mut self, now_ms: u64) -> bool {
        let now = now_ms / 1000;
        let overdue = self
            .waiting
            .iter()
            .any(|(_, since)| now_ms.saturating_sub(*since) >= HELD_WARN_AFTER_MS);
        let quiet = self.warned_at.is_none_or(|at| now >= at.saturating_add(60));
        if !self.confirmed && overdue && quiet {
            self.warned_at = Some(now);
            return true;
        }
        false
    }
}

impl Worker {
    /// Refreshes the layouts each local replay table is checked under
    /// besides its own (see [`store::follow_replay_layouts`]). A store
    /// failure keeps the layouts it had.
    pub fn follow_replay_layouts(&self, now: u64) {
        for p in &self.config.providers {
            let Some(replay) = p.replay.as_ref().filter(|r| r.scope == ReplayScope::Local) else {
                continue;
            };
            match store::follow_replay_layouts(
                &host::HostStore,
                &p.name,
                replay.max_entries,
                p.replay_horizon(),
                now,
            ) {
                Ok(layouts) => {
                    let capacities = |l: &store::Layouts| {
                        let past = l.past.iter().map(|l| l.capacity).collect::<Vec<_>>();
                        (l.record_under, past)
                    };
                    let now_checked = capacities(&layouts);
                    let before = replay.past_layouts.replace(layouts);
                    if capacities(&before) != now_checked {
                        match now_checked {
                            (Some(current), past) => info!(
                                "tokens {}: replaced by a configuration with {current} replay entries: recording there, also checking {past:?}",
                                p.name
                            ),
                            (None, past) if !past.is_empty() => info!(
                                "tokens {}: the replay table is also checked under {past:?} entries",
                                p.name
                            ),
                            (None, _) => {}
                        }
                    }
                }
                Err(e) => warn!(
                    "tokens {}: cannot read the replay table's layout ({e:?})",
                    p.name
                ),
            }
        }
    }

    /// Handles the answer to a background JWKS refresh, if `token` is one.
    /// Returns whether it was.
    pub fn refresh_answered(&self, token: u32, body_size: usize) -> bool {
        let Some((p, started)) = self.refreshes.borrow_mut().remove(&token) else {
            return false;
        };
        let Some(provider) = self.config.providers.get(p) else {
            return true;
        };
        let Some(remote) = &provider.remote_jwks else {
            return true;
        };
        let (status, body) = host::http_call_response(body_size, jwks::MAX_JWKS_BYTES);
        let now = now_seconds();
        let mut slots = self.jwks.borrow_mut();
        if let Some(slot) = slots.get_mut(p) {
            let failure = match (status, body) {
                (200, Some(body)) => {
                    match jwks::store(
                        &HostStore,
                        slot,
                        &provider.name,
                        remote,
                        &body,
                        started,
                        now,
                        host::now_millis,
                    ) {
                        Ok(()) => None,
                        Err(e) => Some(format!("refresh refused: {e}")),
                    }
                }
                (s, _) => Some(format!(
                    "refresh failed ({})",
                    jwks::unread_answer(s, body_size)
                )),
            };
            match failure {
                None => slot.refresh_succeeded(),
                Some(what) => {
                    self.metrics.jwks_failure();
                    if let Some(held) = slot.refresh_failed(now, &what) {
                        warn!(
                            "jwks {}: {what}; keeping the previous keys{}",
                            provider.name,
                            jwks::held_note(held)
                        );
                    }
                }
            }
        }
        true
    }

    /// Upkeep of remote JWKS, from the root's tick: at most once
    /// a second per worker, load what another worker stored, and when the
    /// keys are due for refresh and this worker wins the instance-wide lease,
    /// fetch them in the background.
    pub fn maintain_jwks(&self, now: u64) {
        if !self.has_remote_jwks {
            return;
        }
        for (p, provider) in self.config.providers.iter().enumerate() {
            let Some(remote) = &provider.remote_jwks else {
                continue;
            };
            let refresh = {
                let mut slots = self.jwks.borrow_mut();
                let Some(slot) = slots.get_mut(p) else {
                    continue;
                };
                // Once a second; while the slot has no keys, or a
                // request's re-fetch lost its answer, at every tick (fast
                // after a configuration, or while requests wait for keys:
                // see `FAST_TICK_MS`).
                if slot.last_maintained == now
                    && slot.keys.keys.is_some()
                    && !jwks::lost_refetch_pending(slot)
                {
                    continue;
                }
                slot.last_maintained = now;
                jwks::sync(&HostStore, slot, &provider.name, remote, now);
                // Also while no keys are loaded (a cold start whose first
                // fetch failed, keys past their grace): then every
                // `timeout_ms` + 1 s per instance, whether requests come
                // or not.
                // A lost re-fetch is made again at once, without the
                // refresh lease (which the last refresh may still hold).
                !self.refreshes.borrow().values().any(|(x, _)| *x == p)
                    && (jwks::redo_lost_refetch(slot)
                        || jwks::take_refresh_lease(
                            &HostStore,
                            slot,
                            &provider.name,
                            remote,
                            host::now_millis(),
                        ))
            };
            if refresh {
                let token = host::http_get(
                    &remote.cluster,
                    &remote.authority,
                    &remote.path,
                    remote.timeout_ms,
                );
                match token {
                    Ok(t) => {
                        self.refreshes
                            .borrow_mut()
                            .insert(t, (p, host::now_millis()));
                    }
                    Err(s) => {
                        self.metrics.jwks_failure();
                        let what = format!(
                            "cannot dispatch the refresh: {}",
                            abi::call_refused(&remote.cluster, s)
                        );
                        let held = self
                            .jwks
                            .borrow_mut()
                            .get_mut(p)
                            .and_then(|slot| slot.refresh_failed(now, &what));
                        if let Some(held) = held {
                            warn!("jwks {}: {what}{}", provider.name, jwks::held_note(held));
                        }
                    }
                }
            }
        }
    }

    /// Posts the alerts the requests queued (from the root's tick, so the
    /// call belongs to the root context and outlives the denied request),
    /// then the summary of a window that ended with alerts suppressed, then
    /// the posts the webhook did not take that are due again.
    pub fn send_alerts(&self, now: u64) {
        let Some(a) = &self.config.alerts else { return };
        let alerts: Vec<_> = self.pending_alerts.borrow_mut().drain(..).collect();
        let summaries = crate::alerts::take_suppressed(&HostStore, a, now);
        let first = |body: String, what: String| Retry {
            due: now,
            queued: now,
            attempts: 0,
            body,
            what,
        };
        let posts = alerts
            .iter()
            .map(|alert| {
                first(
                    alert.body(a),
                    format!(
                        "alert route={} reason={} denials={}",
                        alert.route, alert.reason, alert.count
                    ),
                )
            })
            .chain(summaries.iter().map(|summary| {
                first(
                    summary.body(a),
                    format!(
                        "alert summary window_start={} suppressed={}",
                        summary.window_start,
                        summary.pairs.len()
                    ),
                )
            }))
            .chain(self.alert_retries.borrow_mut().take_due(now));
        for mut post in posts {
            match host::post_json(&a.cluster, &a.authority, &a.path, &post.body, a.timeout_ms) {
                Ok(token) => {
                    post.attempts = post.attempts.saturating_add(1);
                    self.alert_calls.borrow_mut().insert(token, post);
                }
                Err(e) => warn!(
                    "{} not sent: {}",
                    post.what,
                    abi::call_refused(&a.cluster, e)
                ),
            }
        }
    }

    /// Logs whether the webhook took the alert posted with call `token`,
    /// and queues it to be tried again when it may take it later
    /// ([`crate::alerts::next_try`]); false when `token` is no alert post.
    pub fn alert_answered(&self, token: u32, now: u64) -> bool {
        let Some(post) = self.alert_calls.borrow_mut().remove(&token) else {
            return false;
        };
        // Status 0: no answer at all. Envoy answers a webhook it cannot
        // reach with its own 503, and one slower than `timeout_ms` with
        // its own 504: the status alone cannot say whose it is.
        let (status, _) = host::http_call_response(0, 0);
        let what = &post.what;
        let tried = if post.attempts > 1 {
            format!(" (try {} of {ALERT_ATTEMPTS})", post.attempts)
        } else {
            String::new()
        };
        if (200..300).contains(&status) {
            info!("{what} delivered (status {status}){tried}");
            return true;
        }
        let why = match status {
            0 => "no answer from the webhook".to_owned(),
            503 | 504 => format!(
                "status {status} (the webhook's, or Envoy's when it cannot reach it in \
                 timeout_ms)"
            ),
            _ => format!("status {status}"),
        };
        let asked = host::http_call_response_header(crate::ratelimit::RETRY_AFTER)
            .and_then(|v| retry_after_seconds(&v, now));
        match next_try(status, post.attempts, asked) {
            NextTry::In(wait) => {
                let followed = asked.filter(|_| matches!(status, 429 | 503));
                let as_asked = if followed.is_some_and(|a| a == wait) {
                    " (as its retry-after asks)"
                } else {
                    ""
                };
                warn!("{what} not delivered: {why}; trying again in {wait} s{as_asked}{tried}");
                let dropped = self.alert_retries.borrow_mut().push(Retry {
                    due: now.saturating_add(wait),
                    queued: now,
                    ..post
                });
                if let Some(d) = dropped {
                    warn!(
                        "{} not delivered: given up, {MAX_RETRIES_QUEUED} later posts wait to \
                         be tried again",
                        d.what
                    );
                }
            }
            NextTry::AskedTooLong(asked) => warn!(
                "{what} not delivered: {why}; given up: its retry-after asks for {asked} s, more \
                 than {MAX_RETRY_AFTER_SECONDS}{tried}"
            ),
            NextTry::Never if crate::alerts::retry_in(status, 1).is_some() => {
                warn!("{what} not delivered: {why}; given up after {ALERT_ATTEMPTS} tries");
            }
            NextTry::Never => warn!(
                "{what} not delivered: {why}; not sent again (the webhook will not take it as it \
                 is)"
            ),
        }
        true
    }

    /// Holds `waiter` until its keys come (see [`FilterRoot::wake_waiters`]),
    /// with the root's tick fast meanwhile; false when [`MAX_WAITERS`]
    /// already wait (for a request fetching keys itself: when
    /// [`MAX_FETCHING`] more are watched besides).
    pub fn wait(&self, waiter: Waiter) -> bool {
        {
            let mut waiters = self.waiters.borrow_mut();
            if waiters.len() >= MAX_WAITERS {
                waiters.retain(|w| w.filter.strong_count() > 0);
                let full = if let Awaited::OwnFetch { .. } = waiter.awaited {
                    waiters.len() >= MAX_WAITERS + MAX_FETCHING
                } else {
                    let fetching = waiters
                        .iter()
                        .filter(|w| matches!(w.awaited, Awaited::OwnFetch { .. }))
                        .count();
                    waiters.len() - fetching >= MAX_WAITERS
                };
                if full {
                    return false;
                }
            }
            waiters.push(waiter);
        }
        // Set from a request's context, the period is its root's.
        self.set_fast_tick(true);
        true
    }

    /// Sets the root's tick to [`FAST_TICK_MS`] or back to [`TICK_MS`],
    /// when it is not so already.
    pub fn set_fast_tick(&self, fast: bool) {
        if self.fast_tick.get() == fast {
            return;
        }
        let period = if fast { FAST_TICK_MS } else { TICK_MS };
        match abi::set_tick_period_ms(period) {
            Ok(()) => self.fast_tick.set(fast),
            Err(e) => warn!("cannot set the tick period to {period} ms ({e:?})"),
        }
    }

    /// Call `token` was dispatched by request `context_id` (its filter
    /// `filter`): when the root is acting for that request, the SDK
    /// registered the call to the context it was running, the root, and
    /// hands the answer to the root, which hands it on
    /// ([`Worker::relayed_to`]). Otherwise nothing to do.
    pub fn relay(&self, kind: CallKind, token: u32, context_id: u32, filter: &FilterRef) {
        if self.acting_for.get() != Some(context_id) {
            return;
        }
        let mut relayed = self.relayed.borrow_mut();
        if relayed.len() >= MAX_WAITERS {
            relayed.retain(|_, (_, f)| f.strong_count() > 0);
        }
        relayed.insert((kind, token), (context_id, filter.clone()));
    }

    /// The request to hand the answer to call `token` to, made the
    /// effective context: `None` when the call is not relayed, or the
    /// request is gone.
    pub fn relayed_to(
        &self,
        kind: CallKind,
        token: u32,
    ) -> Option<(u32, Rc<RefCell<GuardFilter>>)> {
        let (id, filter) = self.relayed.borrow_mut().remove(&(kind, token))?;
        let filter = filter.upgrade()?;
        abi::set_effective_context(id).ok()?;
        Some((id, filter))
    }

    /// Runs `f` on request `id`'s filter as the root acting for it (its
    /// context already made the effective one): calls it dispatches
    /// meanwhile are relayed to it ([`Worker::relay`]). A filter found
    /// borrowed is left as it is (fail closed), and the log says what was
    /// `left` undone.
    pub fn act_for(
        &self,
        id: u32,
        filter: &RefCell<GuardFilter>,
        left: &str,
        f: impl FnOnce(&mut GuardFilter),
    ) {
        self.acting_for.set(Some(id));
        match filter.try_borrow_mut() {
            Ok(mut filter) => f(&mut filter),
            Err(_) => warn!("#{id} the filter is busy: {left}"),
        }
        self.acting_for.set(None);
    }

    /// Whether a provider with remote JWKS has no keys on this worker.
    pub fn lacks_remote_keys(&self) -> bool {
        let slots = self.jwks.borrow();
        self.config
            .providers
            .iter()
            .zip(slots.iter())
            .any(|(p, slot)| p.remote_jwks.is_some() && slot.keys.keys.is_none())
    }

    /// The remote keys as the policy reads them.
    pub fn remote_keys(&self) -> Vec<RemoteKeys> {
        if !self.has_remote_jwks {
            // The common case: no allocation on the request path.
            return Vec::new();
        }
        self.jwks.borrow().iter().map(|s| s.keys.clone()).collect()
    }
}

/// The root's tick period: memory gauge, JWKS upkeep and alerts.
const TICK_MS: u32 = 1000;

/// The tick period after a configuration with remote JWKS, while this
/// worker has no keys for one of them (for at most [`FAST_TICKS`] ticks).
/// With the 1 s tick alone the first background fetch came a second after
/// the configuration, and the other workers loaded its keys a second after
/// that: a worker that took requests before then had them fetch the keys
/// themselves, at most four at once (`jwks::MAX_REQUEST_FETCHES`), the
/// rest of a burst answered by the route's `failure_mode`. Fast ticks only
/// look sooner: the fetches stay under the instance-wide lease. The tick
/// is also fast while any request of the worker waits for keys or fetches
/// them itself ([`Worker::wait`]; the shared copy of the keys is looked at
/// each tick then), so for at most `timeout_ms` and a quarter second after
/// the last such request came.
const FAST_TICK_MS: u32 = 10;

/// How many fast ticks may follow a configuration (3 s of them): a JWKS
/// endpoint that is down at start leaves the worker to the 1 s tick after
/// these. Counted, not timed, so that a clock step cannot prolong them.
const FAST_TICKS: u32 = 300;

/// Owns the worker of one root context.
pub struct FilterRoot {
    /// Envoy's id of the root context.
    context_id: u32,
    /// The worker built from the last configuration accepted; `None`
    /// before the first (new request contexts then answer 503).
    worker: Option<Rc<Worker>>,
    /// How many more ticks may run at [`FAST_TICK_MS`]: set while a remote
    /// JWKS has no keys on this worker yet.
    fast_ticks_left: Option<u32>,
}

impl FilterRoot {
    /// A root context with no configuration yet.
    pub fn new(context_id: u32) -> Self {
        FilterRoot {
            context_id,
            worker: None,
            fast_ticks_left: None,
        }
    }
}

impl FilterRoot {
    /// Decides the requests held for another request's re-fetch whose
    /// wait is over ([`jwks::waited`]): keys dispatched since it went out
    /// are loaded (stored by this worker, or copied from shared data here,
    /// at every tick while requests wait), it failed (on any worker: see
    /// [`jwks::notice_failed_refetch`]), or its time is up; likewise those
    /// held for the first keys ([`jwks::waited_first_keys`]) and those
    /// fetching keys themselves that keys loaded elsewhere overtook
    /// ([`jwks::overtaken`]). Each is
    /// evaluated again with its own context in effect, as after a fetch of
    /// its own: its local reply or resumption apply to it, and Envoy defers
    /// them until this tick returns. Calls it dispatches then are
    /// registered by the SDK to the root, which relays their answers
    /// ([`Worker::relay`]). A request Envoy deleted meanwhile is skipped.
    /// At most [`MAX_WOKEN_PER_TICK`] a tick, in the order they came.
    fn wake_waiters(&self, worker: &Rc<Worker>) {
        if worker.waiters.borrow().is_empty() {
            if !worker.relayed.borrow().is_empty() {
                // Calls of requests that went away are cancelled by Envoy.
                worker
                    .relayed
                    .borrow_mut()
                    .retain(|_, (_, f)| f.strong_count() > 0);
            }
            return;
        }
        let now_ms = host::now_millis();
        let mut providers: Vec<usize> =
            worker.waiters.borrow().iter().map(|w| w.provider).collect();
        providers.sort_unstable();
        providers.dedup();
        {
            let mut slots = worker.jwks.borrow_mut();
            for p in providers {
                let (Some(slot), Some(provider)) =
                    (slots.get_mut(p), worker.config.providers.get(p))
                else {
                    continue;
                };
                if let Some(remote) = &provider.remote_jwks {
                    jwks::sync(&HostStore, slot, &provider.name, remote, now_ms / 1000);
                    jwks::notice_failed_refetch(&HostStore, slot, &provider.name, remote);
                }
            }
        }
        let mut ready = Vec::new();
        {
            let slots = worker.jwks.borrow();
            worker.waiters.borrow_mut().retain(|w| {
                if w.filter.strong_count() == 0 {
                    return false;
                }
                // The rest in the next ticks (see `MAX_WOKEN_PER_TICK`):
                // in the order they came.
                if ready.len() >= MAX_WOKEN_PER_TICK {
                    return true;
                }
                let next = match slots.get(w.provider) {
                    Some(slot) => match w.awaited {
                        Awaited::Refetch { sent_ms } => {
                            jwks::waited(slot, sent_ms, w.arrived_ms, w.until_ms, now_ms)
                        }
                        Awaited::FirstKeys => {
                            jwks::waited_first_keys(slot, w.arrived_ms, w.until_ms, now_ms)
                        }
                        Awaited::OwnFetch { started_ms, first } => {
                            jwks::overtaken(slot, started_ms, first, now_ms)
                        }
                    }
                    .or_else(|| {
                        w.kid
                            .as_deref()
                            .is_some_and(|kid| jwks::names_kid(slot, kid))
                            .then_some(KeyFetch::NotNow)
                    }),
                    None => Some(KeyFetch::NotNow),
                };
                match next {
                    Some(key_fetch) => {
                        ready.push((w.context_id, w.filter.clone(), key_fetch));
                        false
                    }
                    None => true,
                }
            });
        }
        if ready.is_empty() {
            return;
        }
        for (id, filter, key_fetch) in ready {
            let Some(filter) = filter.upgrade() else {
                continue;
            };
            if abi::set_effective_context(id).is_err() {
                continue;
            }
            worker.act_for(id, &filter, "the request stays held", |f| {
                f.keys_awaited(key_fetch)
            });
        }
        // Anything else this tick does is the root's own again.
        if let Err(e) = abi::set_effective_context(self.context_id) {
            warn!("cannot act for the root context again ({e:?})");
        }
    }
}

impl Drop for FilterRoot {
    /// The SDK drops a root context when Envoy deletes it (the VM or this
    /// configuration is going away).
    fn drop(&mut self) {
        if let Some(w) = &self.worker {
            w.metrics.withdraw_vm_memory();
        }
    }
}

impl Context for FilterRoot {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        // Only the answers to the rate-limit calls of requests the root
        // acted for (see `wake_waiters`). Envoy keeps every call's answer
        // on the root context, readable from any; the request's context
        // is made the effective one for what the answer decides (its
        // local reply, or resuming it), which would otherwise apply to
        // the root and leave the request held.
        let Some(worker) = self.worker.clone() else {
            return;
        };
        if let Some((id, filter)) = worker.relayed_to(CallKind::Grpc, token_id) {
            worker.act_for(id, &filter, "the rate-limit answer is dropped", |f| {
                f.on_grpc_call_response(token_id, status_code, response_size)
            });
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        // A call of a request the root acted for (see `wake_waiters`).
        if let Some((id, filter)) = worker.relayed_to(CallKind::Http, token_id) {
            worker.act_for(id, &filter, "the call's answer is dropped", |f| {
                f.on_http_call_response(token_id, num_headers, body_size, num_trailers)
            });
            return;
        }
        // Answers to calls dispatched for the root: background JWKS
        // refreshes and alert posts.
        if let Some(worker) = &self.worker {
            if !Worker::refresh_answered(worker, token_id, body_size) {
                worker.alert_answered(token_id, now_seconds());
            }
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
                error!("no plugin configuration: set the Wasm filter's config.configuration");
                return false;
            }
            Err(status) => {
                error!("cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let mut config = match Config::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                // Returning false makes Envoy refuse the configuration:
                // nothing half-works. The message names the field.
                error!("{e}");
                return false;
            }
        };
        for advice in config.advisories() {
            warn!("configuration: {advice}");
        }
        if config.hold_headers_for_body {
            info!(
                "hold_headers_for_body: the headers of a request on a route that reads the body \
                 are held until it is decided; this needs the Wasm filter's \
                 allow_on_headers_stop_iteration: true, without which such requests wait for a \
                 body Envoy never hands on"
            );
        }
        // The instance's bucket salt: local limits, failure budgets and
        // local replay pick their buckets with it, so that clients cannot
        // aim at a victim's. Without it those tables cannot be kept safely,
        // and no stand-in will do: a fixed salt is the guessable bucket the
        // salt exists to prevent, and one drawn by this VM alone would put
        // its counts in other buckets than its neighbours' (limits
        // multiplied by the worker count). Shared data and `random_get` are
        // in-process calls that do not fail on Envoy, so this is refused
        // like a bad configuration: loudly, and nothing half-works.
        let bucket_salt = match store::instance_salt(&host::HostStore, host::random_salt) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot read or create the instance's bucket salt ({e:?}): configuration refused");
                return false;
            }
        };
        // Local replay tables whose capacity changed keep being checked
        // under the old one until the values recorded there expire.
        let now = host::now_seconds();
        for p in &mut config.providers {
            let horizon = p.replay_horizon();
            let Some(replay) = p.replay.as_mut().filter(|r| r.scope == ReplayScope::Local) else {
                continue;
            };
            match store::replay_layouts(&host::HostStore, &p.name, replay.max_entries, horizon, now)
            {
                Ok(past) => {
                    for l in &past {
                        info!(
                            "tokens {}: replay.max_entries changed; values recorded under {} entries are checked too for {} s",
                            p.name,
                            l.capacity,
                            l.until.saturating_sub(now)
                        );
                    }
                    replay.past_layouts.replace(store::Layouts {
                        record_under: None,
                        past,
                    });
                }
                Err(e) => {
                    error!(
                        "tokens {}: cannot read or write the replay table's layout ({e:?}): configuration refused",
                        p.name
                    );
                    return false;
                }
            }
        }
        info!(
            "configured (root {}, build {}): {} routes, {} apps, {} keys, {} token providers, mode {:?}",
            self.context_id,
            // The commit and its time in UTC (`make build` sets it):
            // which CHANGELOG entries the running module has.
            option_env!("APPGUARD_BUILD").unwrap_or("unknown"),
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
        let decision_log = crate::lograte::LogLimiter::new(config.decision_log_per_second);
        self.worker = Some(Rc::new(Worker {
            decision_log: RefCell::new(decision_log),
            warn_log: RefCell::new(crate::lograte::LogLimiter::new(WARN_LINES_PER_SECOND)),
            alert_calls: RefCell::new(HashMap::new()),
            alert_retries: RefCell::new(crate::alerts::RetryQueue::default()),
            unlimited_warned: std::cell::Cell::new(0),
            held: RefCell::new(HeldForBody::default()),
            config,
            bucket_salt,
            token_cache: RefCell::new(TokenCache::default()),
            jwks: RefCell::new(slots),
            metrics,
            service_cache: RefCell::new(ServiceCache::new(&bucket_salt)),
            key_memo: RefCell::new(KeyMemo::new(&bucket_salt)),
            negative: RefCell::new(NegativeCache::default()),
            pending_alerts: RefCell::new(Vec::new()),
            has_remote_jwks: has_remote,
            refreshes: RefCell::new(HashMap::new()),
            waiters: RefCell::new(Vec::new()),
            relayed: RefCell::new(HashMap::new()),
            acting_for: Cell::new(None),
            fast_tick: Cell::new(has_remote),
        }));
        // A 1 s tick reports the VM's memory, keeps remote JWKS fresh and
        // posts queued alerts. Calls made from the root's own callback are
        // answered to the root, so a refresh survives the request that
        // happened to be running. The memory is not reported from here:
        // Envoy configures a canary VM first and discards it without
        // deleting its root context, so its share would stay in the gauge.
        // With remote JWKS the tick is fast until this worker has their
        // keys (see `FAST_TICK_MS`): they are then fetched, and loaded by
        // every worker, before the first requests come rather than by them.
        self.fast_ticks_left = has_remote.then_some(FAST_TICKS);
        let period = if has_remote { FAST_TICK_MS } else { TICK_MS };
        if let Err(e) = abi::set_tick_period_ms(period) {
            warn!(
                "cannot set the tick period ({e:?}): JWKS refresh, alerts and \
                 appguard_vm_memory_bytes need it"
            );
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        // Follow Envoy's level for the wasm logger (`/logging?wasm=debug`
        // on the admin port) without a restart.
        if let Ok(level) = abi::log_level() {
            log::set_max_level(abi::level_filter(level));
        }
        worker.metrics.report_vm_memory();
        let now = now_seconds();
        worker.maintain_jwks(now);
        if let Some(left) = self.fast_ticks_left {
            if left == 0 || !worker.lacks_remote_keys() {
                self.fast_ticks_left = None;
            } else {
                self.fast_ticks_left = Some(left - 1);
            }
        }
        if worker.config.hold_headers_for_body
            && worker.held.borrow_mut().warn_now(host::now_millis())
        {
            warn!(
                "hold_headers_for_body: requests on routes that read the body have waited over \
                 {} s for their body, and Envoy has handed on no body while headers were held: \
                 if they all hang, set the Wasm filter's allow_on_headers_stop_iteration: true \
                 (Envoy 1.35 or later), or leave hold_headers_for_body out and keep a buffer \
                 filter after appguard",
                HELD_WARN_AFTER_MS / 1000
            );
        }
        worker.send_alerts(now);
        worker.follow_replay_layouts(now);
        super::filter::report_left_out(&worker, now);
        // Last: it makes the waiting requests' contexts the effective one.
        self.wake_waiters(&worker);
        let waiting = !worker.waiters.borrow().is_empty();
        worker.set_fast_tick(self.fast_ticks_left.is_some() || waiting);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on None. Without a configuration the
        // filter fails closed (see `GuardFilter`).
        Some(Box::new(FilterHandle::new(context_id, self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_held_for_a_body_that_never_comes_is_warned_of_once_a_minute() {
        let mut h = HeldForBody::default();
        h.held(7, 10_000);
        h.held(8, 12_000);
        assert!(!h.warn_now(14_999), "not yet 5 s");
        assert!(h.warn_now(15_000));
        assert!(!h.warn_now(16_000), "once a minute");
        assert!(h.warn_now(75_000));
        // Requests that ended leave; with none waiting, nothing to say.
        h.done(7, false);
        h.done(8, false);
        assert!(!h.warn_now(200_000));
        // Followed up to a bound.
        for id in 0..100 {
            h.held(id, 300_000);
        }
        assert_eq!(h.waiting.len(), HeldForBody::MAX_WAITING);
    }

    #[test]
    fn one_body_handed_on_while_held_shows_the_flag_is_set() {
        let mut h = HeldForBody::default();
        h.held(7, 10_000);
        h.done(9, true);
        assert!(h.confirmed && h.waiting.is_empty());
        h.held(10, 20_000);
        assert!(h.waiting.is_empty(), "nothing followed once confirmed");
        assert!(!h.warn_now(60_000));
    }
}
