//! `ShouldRateLimit`: from a request to a response.
//!
//! The steps and the response are envoyproxy/ratelimit's
//! (`src/service/ratelimit.go`, `src/limiter/base_limiter.go`):
//!
//! 1. each descriptor gets its limit ([`crate::matching`]); a limit with
//!    `unlimited` is not counted, and a named limit that another matched
//!    limit `replaces` is dropped;
//! 2. the hits of each descriptor are its own `hits_addend` when set (0
//!    allowed: a check that neither consumes nor creates the counter),
//!    else the request's `hits_addend`, at least 1;
//! 3. all counters of the request are increased in one batch; a descriptor is
//!    over limit when its count after adding exceeds `requests_per_unit`;
//! 4. each descriptor gets a status, in request order: unmatched → OK with no
//!    limit; unlimited → OK with `limit_remaining` = u32::MAX; otherwise the
//!    code, `current_limit`, `limit_remaining` (0 when over) and
//!    `duration_until_reset`. A shadow-mode limit that is over is reported
//!    OK (and counted);
//! 5. the overall code is OVER_LIMIT when a (non-quota) descriptor is over
//!    limit, or when every quota-mode descriptor is; global shadow mode turns
//!    it back to OK.
//!
//! Before step 1, a request with more than [`MAX_DESCRIPTORS`] descriptors,
//! a descriptor with more than [`MAX_ENTRIES_PER_DESCRIPTOR`] entries, or
//! one with `is_negative_hits` is refused with INVALID_ARGUMENT, and
//! nothing is counted (envoyproxy/ratelimit
//! has no such bound).
//!
//! With [`ServiceOptions::stop_increment_when_over_limit`]
//! (envoyproxy/ratelimit's `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`),
//! step 3 first works out the counts the call would reach; if step 5 would
//! answer OVER_LIMIT with them, nothing is counted and the statuses are
//! those counts' (in one Redis script, or under the memory store's lock).
//!
//! Not implemented from envoyproxy/ratelimit (all off by default there):
//! its over-limit local cache, a separate per-second Redis, expiry jitter, `x-ratelimit-*` response
//! headers and response dynamic metadata; `detailed_metric` and
//! `value_to_metric` only shape its metrics. Refunds are not supported: a
//! descriptor with `is_negative_hits` is refused with INVALID_ARGUMENT
//! (nothing counted), rather than charged as hits it meant to give back.
//!
//! Logs: the lines written once per request or descriptor are throttled
//! to [`REQUEST_LOG_LINES_PER_SECOND`] for the whole limiter, each kind
//! (`LineKind`: `info` lines for over limit and invalid requests, `warn`
//! lines for counter store failures) on a budget of its own, so a flood of
//! over-limit calls cannot hide store failures. The next line of a kind
//! written after a suppression is preceded by a `warn` line saying how many
//! of that kind were left out; the request's `domain` and a `limit` override's name
//! (both chosen by the caller) are logged through
//! [`crate::logging::safe_text`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as PbRateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn, Level};

use crate::backend::{Backend, BackendError, Increment, Refuses};
use crate::config::{Quota, RateLimitConfig};
use crate::logging::{safe_text, LineThrottle};
use crate::matching::{LookupError, MatchedLimit};
use crate::window::{seconds_until_reset, window_end, window_start, Unit};

/// Why a request got a gRPC error instead of an answer.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// `domain` is empty (envoyproxy/ratelimit refuses it too).
    #[error("rate limit domain must not be empty")]
    EmptyDomain,
    /// No descriptor in the request.
    #[error("rate limit descriptor list must not be empty")]
    NoDescriptors,
    /// More descriptors than [`MAX_DESCRIPTORS`].
    #[error("{count} descriptors in one request; at most {MAX_DESCRIPTORS} are accepted")]
    TooManyDescriptors {
        /// Descriptors in the request.
        count: usize,
    },
    /// A descriptor with more entries than [`MAX_ENTRIES_PER_DESCRIPTOR`].
    #[error(
        "descriptor {index}: {count} entries; at most {MAX_ENTRIES_PER_DESCRIPTOR} are accepted"
    )]
    TooManyEntries {
        /// Position of the descriptor in the request.
        index: usize,
        /// Entries in the descriptor.
        count: usize,
    },
    /// A descriptor cannot be evaluated.
    #[error("descriptor {index}: {source}")]
    Lookup {
        /// Position of the descriptor in the request.
        index: usize,
        /// The problem.
        source: LookupError,
    },
    /// A `hits_addend` larger than a counter can take.
    #[error("descriptor {index}: hits_addend {hits} is too large")]
    HitsTooLarge {
        /// Position of the descriptor in the request.
        index: usize,
        /// The hits asked for.
        hits: u64,
    },
    /// A descriptor asks for hits to be given back (`is_negative_hits`):
    /// refunds are not supported, and counting them as hits would charge
    /// the caller for what it meant to return.
    #[error("descriptor {index}: is_negative_hits (refunds) is not supported")]
    NegativeHits {
        /// Position of the descriptor in the request.
        index: usize,
    },
    /// The counter store failed: the answer is unknown, so no answer is given.
    #[error("counter store unavailable: {0}")]
    Backend(#[from] BackendError),
}

impl ServiceError {
    /// The gRPC status for this error: UNAVAILABLE when the store failed (the
    /// caller's failure mode then decides), INVALID_ARGUMENT for a bad
    /// request.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            ServiceError::Backend(_) => tonic::Status::unavailable(self.to_string()),
            _ => tonic::Status::invalid_argument(self.to_string()),
        }
    }
}

/// Most descriptors accepted in one `ShouldRateLimit` request; a request
/// with more is refused with INVALID_ARGUMENT before anything is counted.
///
/// Without a bound, one call of a few megabytes (tonic's message limit)
/// could carry 100,000 distinct descriptors and create as many counters,
/// filling the in-memory store for every other caller. appguard sends one
/// descriptor per service rate limit of the route plus at most one replay
/// (`jti`) descriptor; Envoy's own ratelimit filter one per matching
/// action. 64 leaves room for any realistic route.
pub const MAX_DESCRIPTORS: usize = 64;

/// Most entries accepted in one descriptor. appguard's rate limits have at
/// most 8 entries (its configuration refuses more); 16 leaves room for
/// Envoy's own rate-limit actions. A request with a longer descriptor is
/// refused with INVALID_ARGUMENT before anything is counted.
pub const MAX_ENTRIES_PER_DESCRIPTOR: usize = 16;

/// Service-wide counters, served as JSON on `GET /stats`.
#[derive(Debug, Default)]
pub struct Stats {
    /// `ShouldRateLimit` calls answered.
    pub requests: AtomicU64,
    /// Calls answered OVER_LIMIT.
    pub over_limit: AtomicU64,
    /// Descriptors over their limit (whether or not reported as such).
    pub descriptors_over_limit: AtomicU64,
    /// Descriptors over a shadow-mode limit, reported OK.
    pub shadow_mode: AtomicU64,
    /// Calls whose OVER_LIMIT was turned into OK by global shadow mode.
    pub global_shadow_mode: AtomicU64,
    /// Calls that failed because the counter store failed.
    pub backend_errors: AtomicU64,
    /// Calls refused as malformed.
    pub invalid_requests: AtomicU64,
    /// Calls answered OVER_LIMIT that counted nothing
    /// ([`ServiceOptions::stop_increment_when_over_limit`]).
    pub over_limit_not_counted: AtomicU64,
    /// Calls that ended before they were answered: their caller gave up
    /// (its deadline, e.g. appguard's `timeout_ms`, ran out first, it
    /// reset the stream once its message was in, or its connection
    /// closed), or the service's own 30 s bound or its shutdown ended
    /// them, whether their message had arrived or not (a stream that
    /// sends its headers and never its whole message counts here too, see
    /// [`observe_call`]; one reset before its message was complete is
    /// answered INTERNAL and counts in `calls_refused_undecoded`). A
    /// counter store slower than the callers' deadlines shows here, as
    /// these calls end before they could count in `backend_errors`.
    pub calls_abandoned: AtomicU64,
    /// Calls refused before their message was decoded, so never seen by
    /// the rate limiter (see [`observe_call`]): a message over the size
    /// bound (OUT_OF_RANGE), one that is not a valid request (INTERNAL), a
    /// compressed one or an unknown method (UNIMPLEMENTED). A client or a
    /// proxy speaking the protocol wrongly shows here, not in
    /// `invalid_requests`.
    pub calls_refused_undecoded: AtomicU64,
    /// Configurations loaded again (on `SIGHUP`, or by
    /// `--watch-config-seconds`) and put in force.
    pub config_reloads: AtomicU64,
    /// Reloads refused (a file unreadable or invalid): the configuration
    /// in force stays.
    pub config_reload_errors: AtomicU64,
}

/// A point-in-time copy of [`Stats`], for serialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// See [`Stats::requests`].
    pub requests: u64,
    /// See [`Stats::over_limit`].
    pub over_limit: u64,
    /// See [`Stats::descriptors_over_limit`].
    pub descriptors_over_limit: u64,
    /// See [`Stats::shadow_mode`].
    pub shadow_mode: u64,
    /// See [`Stats::global_shadow_mode`].
    pub global_shadow_mode: u64,
    /// See [`Stats::backend_errors`].
    pub backend_errors: u64,
    /// See [`Stats::invalid_requests`].
    pub invalid_requests: u64,
    /// See [`Stats::over_limit_not_counted`].
    pub over_limit_not_counted: u64,
    /// See [`Stats::calls_abandoned`].
    pub calls_abandoned: u64,
    /// See [`Stats::calls_refused_undecoded`].
    pub calls_refused_undecoded: u64,
    /// See [`Stats::config_reloads`].
    pub config_reloads: u64,
    /// See [`Stats::config_reload_errors`].
    pub config_reload_errors: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: get(&self.requests),
            over_limit: get(&self.over_limit),
            descriptors_over_limit: get(&self.descriptors_over_limit),
            shadow_mode: get(&self.shadow_mode),
            global_shadow_mode: get(&self.global_shadow_mode),
            backend_errors: get(&self.backend_errors),
            invalid_requests: get(&self.invalid_requests),
            over_limit_not_counted: get(&self.over_limit_not_counted),
            calls_abandoned: get(&self.calls_abandoned),
            calls_refused_undecoded: get(&self.calls_refused_undecoded),
            config_reloads: get(&self.config_reloads),
            config_reload_errors: get(&self.config_reload_errors),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Options that apply to every request.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// Prepended to every counter key (envoyproxy/ratelimit's
    /// `CACHE_KEY_PREFIX`), to share one Redis between unrelated services.
    pub cache_key_prefix: String,
    /// Global shadow mode (envoyproxy/ratelimit's `SHADOW_MODE`): everything
    /// is counted, but the overall answer is always OK.
    pub global_shadow_mode: bool,
    /// A call answered OVER_LIMIT adds nothing to any of its counters
    /// (envoyproxy/ratelimit's `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`,
    /// decided atomically here): a client over its per-IP limit then no
    /// longer spends the call's shared limits (an API key's, a phone
    /// number's, a route's). Without it every descriptor of a call counts.
    pub stop_increment_when_over_limit: bool,
}

/// Longest domain, key or value copied into a counter key as is; a longer
/// one is replaced by its SHA-256 digest, so a key stays short whatever a
/// client puts in a header or JSON body.
pub const MAX_KEY_PART_LEN: usize = 128;

/// The counter key of a descriptor:
/// `prefix + part(domain) + "_" + (part(key) + "=" + part(value) + "_")… + unit + "_" + window_start`
/// (`rolling` instead of the window start for a rolling window: `None`),
/// where `part(s)` is `len(s) + ":" + s` (the length in bytes, in decimal),
/// or `"#" + hex(sha256(s))` when `s` is longer than [`MAX_KEY_PART_LEN`];
/// e.g. `8:appguard_3:jti=6:9f86d0_hour_1700002800`.
///
/// The unit is part of the key: one descriptor limited per minute and per
/// hour (through `limit` overrides) has two counters, even in the windows
/// that start at the same second (the first minute of every hour), where
/// the window start alone would make them one.
///
/// The layout follows envoyproxy/ratelimit's `GenerateCacheKey` (domain,
/// entries in order, window start), but every part is length-prefixed:
/// descriptor values come from clients, and joining them with a bare `_`
/// let `[(a, "x_b_y")]` and `[(a, "x"), (b, "y")]` share one counter. With
/// the prefixes no choice of bytes in a value can spell out another entry,
/// so the keys are not those of envoyproxy/ratelimit (the two cannot share
/// counters in one Redis).
///
/// The key holds the request's values (so a key-only config entry counts
/// each value separately), except where a `share_threshold` wildcard
/// replaces the value by its pattern.
pub fn cache_key(
    prefix: &str,
    domain: &str,
    descriptor: &RateLimitDescriptor,
    shared_values: &[Option<String>],
    unit: Unit,
    window_start: Option<i64>,
) -> String {
    let mut key = String::with_capacity(64);
    key.push_str(prefix);
    push_key_part(&mut key, domain);
    key.push('_');
    for (i, entry) in descriptor.entries.iter().enumerate() {
        push_key_part(&mut key, &entry.key);
        key.push('=');
        match shared_values.get(i).and_then(Option::as_deref) {
            Some(pattern) => push_key_part(&mut key, pattern),
            None => push_key_part(&mut key, &entry.value),
        }
        key.push('_');
    }
    key.push_str(unit.name());
    key.push('_');
    match window_start {
        Some(start) => key.push_str(&start.to_string()),
        // A rolling window: the key is the same in every window (its
        // expiry ends it), and can never read as an epoch window's.
        None => key.push_str("rolling"),
    }
    key
}

/// Appends one self-delimiting part of a counter key: `len:text`, or
/// `#sha256hex` for text longer than [`MAX_KEY_PART_LEN`]. A part starts
/// with a digit or `#`, so the two forms never read alike.
fn push_key_part(key: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if text.len() <= MAX_KEY_PART_LEN {
        key.push_str(&text.len().to_string());
        key.push(':');
        key.push_str(text);
    } else {
        key.push('#');
        for byte in Sha256::digest(text.as_bytes()) {
            key.push(char::from(HEX[usize::from(byte >> 4)]));
            key.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

/// Hits a descriptor adds: its own `hits_addend` when set (0 allowed), else
/// the request's, at least 1.
pub fn hits_for(request: &RateLimitRequest, descriptor: &RateLimitDescriptor) -> u64 {
    match &descriptor.hits_addend {
        Some(own) => own.value,
        None => u64::from(request.hits_addend.max(1)),
    }
}

/// Most hits one descriptor may add in one call: what the request-level
/// `hits_addend` (a `uint32`) can say. Bounded so that no counter can
/// overflow: Redis refuses an `INCRBY` past `i64::MAX` and fails the whole
/// batch, which would leave the descriptor unanswerable until its window
/// ends. With 64 descriptors of one key in a call, about 2^25 such calls
/// within one window would be needed; appguard sends hits from its
/// configuration (leases), so only a caller that can reach the service's
/// port could try (keep it unexposed).
pub const MAX_HITS: u64 = u32::MAX as u64;

/// Most per-request log lines of one kind (`LineKind`: `info` for over
/// limit and invalid request, `warn` for counter store failure) one limiter
/// writes in a second; past it they are counted and left out, and the next
/// line of that kind written is preceded by a summary of how many were. A flood of over-limit calls (what a limit is for) would otherwise
/// write one line per descriptor, as fast as calls arrive.
pub const REQUEST_LOG_LINES_PER_SECOND: u32 = 20;

/// Most bytes of a request's `domain` that are logged (the caller chooses
/// it, of any length); see [`crate::logging::safe_text`].
pub const MAX_LOGGED_DOMAIN_BYTES: usize = 64;

/// Most bytes of a limit's name that are logged: an override's name holds
/// the request's descriptor keys (see [`crate::matching`]), which the
/// caller chooses.
pub const MAX_LOGGED_LIMIT_BYTES: usize = 256;

/// The rate limiter: configuration, counter store and stats.
#[derive(Debug)]
pub struct RateLimiter {
    /// The limits in force: each call reads them once, so a configuration
    /// reloaded meanwhile ([`RateLimiter::replace_config`]) applies from
    /// the next call on.
    config: std::sync::RwLock<Arc<RateLimitConfig>>,
    /// Where counts live.
    backend: Arc<Backend>,
    /// Key prefix and global shadow mode.
    options: ServiceOptions,
    /// Counters served on `/stats`.
    stats: Arc<Stats>,
    /// Bounds the per-request `info` lines (over limit, invalid request).
    info_lines: LineThrottle,
    /// Bounds the per-request `warn` lines (counter store failure), apart
    /// from the `info` ones: a flood of over-limit calls must not hide them.
    warn_lines: LineThrottle,
    /// Bounds the per-request `warn` lines of calls given up on
    /// (`LineKind::Abandoned`), apart from store failures.
    abandoned_lines: LineThrottle,
    /// Keys the tags that stand for descriptor values in `debug` lines
    /// (random per process, see [`RateLimiter::value_tag`]).
    value_tags: std::collections::hash_map::RandomState,
}

/// Counts and logs a call dropped before it ended: tonic drops the call
/// when its caller resets the stream or its `grpc-timeout` passes, so the
/// lines after the `await` never run for it.
struct Abandoned<'a> {
    /// Whose stats and log budget.
    limiter: &'a RateLimiter,
    /// The call's domain, for the log line.
    domain: &'a str,
    /// When the call came, for the log budget.
    now: i64,
    /// Cleared once the call ended.
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        bump(&self.limiter.stats.calls_abandoned);
        if tracing::enabled!(Level::WARN) && self.limiter.may_log(LineKind::Abandoned, self.now) {
            warn!(
                domain = %safe_text(self.domain, MAX_LOGGED_DOMAIN_BYTES),
                "a call ended before it was answered (its caller gave up, or the service's \
                 own bound or shutdown ended it): the counter store answers slower than the \
                 callers' deadline? (its hits may still be counted)"
            );
        }
    }
}

/// The kinds of per-request log lines, each throttled on its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// `info`: over limit (shadow modes included), invalid request, a
    /// call that ended or was refused before its message was decoded.
    Info,
    /// `warn`: counter store failed.
    Warn,
    /// `warn`: a call its caller gave up on while the store was asked.
    /// Its own budget: any client can end its calls early (a short
    /// `grpc-timeout`), and must not spend the store failures' budget
    /// nor have its lines summarised as store failures.
    Abandoned,
}

impl LineKind {
    /// The `kind` field of a suppression summary.
    fn name(self) -> &'static str {
        match self {
            LineKind::Info => "info",
            LineKind::Warn => "warn",
            LineKind::Abandoned => "abandoned",
        }
    }

    /// The lines of this kind, as a suppression summary names them.
    fn lines(self) -> &'static str {
        match self {
            LineKind::Info => {
                "info: over limit, invalid request, call ended or refused before its message was read"
            }
            LineKind::Warn => "warn: counter store failed",
            LineKind::Abandoned => "warn: call ended before it was answered",
        }
    }
}

/// What the request's descriptor `i` turned into before counting.
enum Plan {
    /// No configured limit: OK, not counted.
    Unmatched,
    /// `unlimited: true`: OK with u32::MAX remaining, not counted.
    Unlimited,
    /// Counted against this limit, as batch item `item`.
    Counted {
        /// The matched limit (name, flags).
        matched: MatchedLimit,
        /// Its allowance per window.
        requests_per_unit: u32,
        /// Its window.
        unit: crate::window::Unit,
        /// Hits this descriptor adds.
        hits: u64,
        /// Index of its counter in the batch.
        item: usize,
    },
}

impl RateLimiter {
    /// A limiter over `config` counting in `backend`.
    pub fn new(
        config: Arc<RateLimitConfig>,
        backend: Arc<Backend>,
        options: ServiceOptions,
        stats: Arc<Stats>,
    ) -> Self {
        RateLimiter {
            config: std::sync::RwLock::new(config),
            backend,
            options,
            stats,
            info_lines: LineThrottle::new(REQUEST_LOG_LINES_PER_SECOND),
            warn_lines: LineThrottle::new(REQUEST_LOG_LINES_PER_SECOND),
            abandoned_lines: LineThrottle::new(REQUEST_LOG_LINES_PER_SECOND),
            value_tags: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> Arc<RateLimitConfig> {
        // A writer cannot panic while it holds the lock (it only swaps an
        // `Arc`), so a poisoned lock still holds a whole configuration.
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `config` in force for the calls that start from now on; calls
    /// already running finish with the limits they started with. Counts
    /// are kept: they live in the store, under keys made of the domain,
    /// the descriptor and the window.
    pub fn replace_config(&self, config: Arc<RateLimitConfig>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// What a `debug` line shows of a descriptor value: its length and a
    /// tag keyed per process, never the value. Values may be API keys,
    /// phone numbers or their digests (whatever the caller put in the
    /// descriptor); equal values get equal tags within one run, which is
    /// what tracing a client through the log needs.
    fn value_tag(&self, value: &str) -> String {
        use std::hash::BuildHasher;
        let tag = self.value_tags.hash_one(value) >> 32;
        format!("#{tag:08x}/{}B", value.len())
    }

    /// Whether a per-request line of `kind` may be written at `now` (see
    /// [`REQUEST_LOG_LINES_PER_SECOND`]); when lines of that kind were left
    /// out before it, writes their count first, naming the kind. Call it
    /// only when the line's level is enabled, so that lines filtered out
    /// anyway are not counted.
    fn may_log(&self, kind: LineKind, now: i64) -> bool {
        let throttle = match kind {
            LineKind::Info => &self.info_lines,
            LineKind::Warn => &self.warn_lines,
            LineKind::Abandoned => &self.abandoned_lines,
        };
        match throttle.admit(now) {
            None => false,
            Some(0) => true,
            Some(suppressed) => {
                warn!(
                    suppressed,
                    kind = kind.name(),
                    max_per_second = REQUEST_LOG_LINES_PER_SECOND,
                    "suppressed {suppressed} per-request log lines ({})",
                    kind.lines()
                );
                true
            }
        }
    }

    /// The stats this limiter updates.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Answers one request at Unix second `now`.
    pub async fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
        now: i64,
    ) -> Result<RateLimitResponse, ServiceError> {
        let mut abandoned = Abandoned {
            limiter: self,
            domain: &request.domain,
            now,
            armed: true,
        };
        let result = self.evaluate(request, now).await;
        abandoned.armed = false;
        match &result {
            Ok(response) => {
                bump(&self.stats.requests);
                if response.overall_code == Code::OverLimit as i32 {
                    bump(&self.stats.over_limit);
                }
            }
            Err(ServiceError::Backend(e)) => {
                bump(&self.stats.backend_errors);
                if tracing::enabled!(Level::WARN) && self.may_log(LineKind::Warn, now) {
                    warn!(
                        domain = %safe_text(&request.domain, MAX_LOGGED_DOMAIN_BYTES),
                        error = %e,
                        "counter store failed; answering UNAVAILABLE"
                    );
                }
            }
            Err(e) => {
                bump(&self.stats.invalid_requests);
                if tracing::enabled!(Level::INFO) && self.may_log(LineKind::Info, now) {
                    info!(
                        domain = %safe_text(&request.domain, MAX_LOGGED_DOMAIN_BYTES),
                        error = %e,
                        "invalid request"
                    );
                }
            }
        }
        result
    }

    async fn evaluate(
        &self,
        request: &RateLimitRequest,
        now: i64,
    ) -> Result<RateLimitResponse, ServiceError> {
        if request.domain.is_empty() {
            return Err(ServiceError::EmptyDomain);
        }
        if request.descriptors.is_empty() {
            return Err(ServiceError::NoDescriptors);
        }
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(ServiceError::TooManyDescriptors {
                count: request.descriptors.len(),
            });
        }
        if let Some((index, descriptor)) = request
            .descriptors
            .iter()
            .enumerate()
            .find(|(_, d)| d.entries.len() > MAX_ENTRIES_PER_DESCRIPTOR)
        {
            return Err(ServiceError::TooManyEntries {
                index,
                count: descriptor.entries.len(),
            });
        }
        if let Some(index) = request.descriptors.iter().position(|d| d.is_negative_hits) {
            return Err(ServiceError::NegativeHits { index });
        }
        let domain = request.domain.as_str();
        let logged_domain = || safe_text(domain, MAX_LOGGED_DOMAIN_BYTES);

        // 1. Limits, then unlimited and replaced ones, all from the
        // configuration in force when the call started.
        let config = self.config();
        let mut matches = Vec::with_capacity(request.descriptors.len());
        let mut replaced: HashSet<&str> = HashSet::new();
        for (index, descriptor) in request.descriptors.iter().enumerate() {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let entries: Vec<String> = descriptor
                    .entries
                    .iter()
                    .map(|e| {
                        // The key escaped and bounded, as the domain is;
                        // the value only as a tag (it may be a secret).
                        format!(
                            "({}={})",
                            safe_text(&e.key, MAX_LOGGED_DOMAIN_BYTES),
                            self.value_tag(&e.value)
                        )
                    })
                    .collect();
                debug!(domain = %logged_domain(), index, entries = %entries.join(","), "descriptor");
            }
            let matched = config
                .get_limit(domain, descriptor)
                .map_err(|source| ServiceError::Lookup { index, source })?;
            matches.push(matched);
        }
        for matched in matches.iter().flatten() {
            replaced.extend(matched.limit.replaces.iter().map(String::as_str));
        }

        // 2. Plans and the counter batch.
        let mut plans = Vec::with_capacity(matches.len());
        let mut items = Vec::new();
        // Each item's part in refusing the call, as step 5 decides it.
        let mut rules = Vec::new();
        for (index, (descriptor, matched)) in request.descriptors.iter().zip(&matches).enumerate() {
            let Some(matched) = matched else {
                plans.push(Plan::Unmatched);
                continue;
            };
            let limit = &matched.limit;
            let (requests_per_unit, unit) = match limit.quota {
                Quota::Unlimited => {
                    plans.push(Plan::Unlimited);
                    continue;
                }
                Quota::PerUnit {
                    requests_per_unit,
                    unit,
                } => (requests_per_unit, unit),
            };
            if !limit.name.is_empty() && replaced.contains(limit.name.as_str()) {
                debug!(
                    domain = %logged_domain(),
                    limit = %safe_text(&limit.full_key, MAX_LOGGED_LIMIT_BYTES),
                    "limit replaced by another"
                );
                plans.push(Plan::Unmatched);
                continue;
            }
            let hits = hits_for(request, descriptor);
            if hits > MAX_HITS {
                return Err(ServiceError::HitsTooLarge { index, hits });
            }
            let rolling = limit.rolling;
            let key = cache_key(
                &self.options.cache_key_prefix,
                domain,
                descriptor,
                &matched.shared_values,
                unit,
                (!rolling).then(|| window_start(now, unit)),
            );
            items.push(Increment {
                key,
                hits,
                window_seconds: unit.seconds(),
                window_end: if rolling {
                    now.saturating_add(unit.seconds())
                } else {
                    window_end(now, unit)
                },
                rolling,
            });
            let allowed = u64::from(requests_per_unit);
            rules.push(if limit.shadow_mode && limit.quota_mode {
                Refuses::InQuotaNever
            } else if limit.shadow_mode {
                Refuses::Never
            } else if limit.quota_mode {
                Refuses::InQuota(allowed)
            } else {
                Refuses::Alone(allowed)
            });
            plans.push(Plan::Counted {
                matched: matched.clone(),
                requests_per_unit,
                unit,
                hits,
                item: items.len() - 1,
            });
        }

        // 3. Count: everything, or (stop_increment_when_over_limit) nothing
        // if the counts the call would reach refuse it. Global shadow mode
        // refuses nothing, so it counts everything.
        let counts =
            if self.options.stop_increment_when_over_limit && !self.options.global_shadow_mode {
                let batch = self
                    .backend
                    .increment_unless_refused(&items, &rules, now)
                    .await?;
                if batch.refused {
                    bump(&self.stats.over_limit_not_counted);
                }
                batch.counts
            } else {
                self.backend.increment(&items, now).await?
            };

        // 4. Statuses.
        let mut statuses = Vec::with_capacity(plans.len());
        // Each item's count after the call, in item order (as `rules`).
        let mut afters = Vec::with_capacity(items.len());
        for plan in plans {
            match plan {
                Plan::Unmatched => statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                }),
                Plan::Unlimited => statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    limit_remaining: u32::MAX,
                    ..Default::default()
                }),
                Plan::Counted {
                    matched,
                    requests_per_unit,
                    unit,
                    hits,
                    item,
                } => {
                    let limit = &matched.limit;
                    let counted = counts.get(item).copied();
                    let after = counted.map_or(u64::MAX, |c| c.count);
                    let over = after > u64::from(requests_per_unit);
                    let remaining = if over {
                        0
                    } else {
                        // after <= requests_per_unit, so this fits in u32.
                        u32::try_from(u64::from(requests_per_unit) - after).unwrap_or(0)
                    };
                    let mut code = if over { Code::OverLimit } else { Code::Ok };
                    if over {
                        bump(&self.stats.descriptors_over_limit);
                        if limit.shadow_mode {
                            code = Code::Ok;
                            bump(&self.stats.shadow_mode);
                        }
                        if tracing::enabled!(Level::INFO) && self.may_log(LineKind::Info, now) {
                            info!(
                                domain = %logged_domain(),
                                limit = %safe_text(&limit.full_key, MAX_LOGGED_LIMIT_BYTES),
                                count = after,
                                requests_per_unit,
                                hits,
                                "{}",
                                if limit.shadow_mode {
                                    "over limit in shadow mode: reported OK"
                                } else {
                                    "over limit"
                                }
                            );
                        }
                    }
                    afters.push(after);
                    statuses.push(DescriptorStatus {
                        code: code as i32,
                        current_limit: Some(PbRateLimit {
                            name: limit.name.clone(),
                            requests_per_unit,
                            unit: unit.to_pb() as i32,
                        }),
                        limit_remaining: remaining,
                        // A rolling window ends a unit after its first
                        // hit: the store says when. Never more than that
                        // (appguard keeps leased hits until then, so it
                        // must not outlast the counter), never 0.
                        duration_until_reset: Some(PbDuration {
                            seconds: match counted.and_then(|c| c.resets_in) {
                                Some(left) if limit.rolling => left.clamp(1, unit.seconds()),
                                _ if limit.rolling => unit.seconds(),
                                _ => seconds_until_reset(now, unit),
                            },
                            nanos: 0,
                        }),
                        quota: None,
                    });
                }
            }
        }

        // 5. Overall code: by the rules step 3 decided by, so that what
        // was counted and the answer cannot disagree.
        let mut overall = if crate::backend::is_refused(&rules, &afters) {
            Code::OverLimit
        } else {
            Code::Ok
        };
        if overall == Code::OverLimit && self.options.global_shadow_mode {
            overall = Code::Ok;
            bump(&self.stats.global_shadow_mode);
            if tracing::enabled!(Level::INFO) && self.may_log(LineKind::Info, now) {
                info!(
                    domain = %logged_domain(),
                    "over limit in global shadow mode: reported OK"
                );
            }
        }

        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        })
    }
}

/// The gRPC face of [`RateLimiter`].
#[derive(Debug, Clone)]
pub struct RlsService {
    limiter: Arc<RateLimiter>,
}

impl RlsService {
    /// Serves `limiter` over gRPC.
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        RlsService { limiter }
    }
}

/// Set by [`RlsService`] once a call's message was decoded and handed to
/// it: from then on [`RateLimiter::should_rate_limit`] counts the call,
/// and [`observe_call`] leaves it alone.
#[derive(Debug, Clone, Default)]
pub struct MessageDecoded(Arc<std::sync::atomic::AtomicBool>);

/// Longest method path logged for a call refused before decoding (the
/// caller chooses it).
const MAX_LOGGED_PATH_BYTES: usize = 128;

/// Longest `grpc-message` logged for a call refused before decoding.
const MAX_LOGGED_STATUS_BYTES: usize = 200;

/// Counts a call that ended before its message was decoded (see
/// [`observe_call`]) when dropped while armed.
struct Undecoded<'a> {
    /// Whose stats and log budget.
    limiter: &'a RateLimiter,
    /// Set once the message was decoded: the limiter counts it then.
    decoded: &'a MessageDecoded,
    /// Cleared once the call was answered.
    armed: bool,
}

impl Drop for Undecoded<'_> {
    fn drop(&mut self) {
        if !self.armed || self.decoded.0.load(Ordering::Relaxed) {
            return;
        }
        self.limiter.abandoned_undecoded();
    }
}

impl RateLimiter {
    /// Counts, and logs on the `info` budget, a call that ended before its
    /// message arrived (see [`observe_call`]).
    fn abandoned_undecoded(&self) {
        bump(&self.stats.calls_abandoned);
        if tracing::enabled!(Level::INFO) && self.may_log(LineKind::Info, unix_now()) {
            info!(
                "a call ended before its message arrived (its caller gave up or never sent \
                 it, or the service's own bound or shutdown ended it)"
            );
        }
    }
}

/// Middleware around every gRPC call (the `ShouldRateLimit` method and
/// any other path), for the calls the rate limiter never sees because
/// tonic ended them before their message was decoded:
///
/// - dropped before an answer while the message had not arrived (a
///   stream that sends its headers only, or part of its message): its
///   `grpc-timeout` passed, or the service's own 30 s bound or shutdown
///   ended it: counted in [`Stats::calls_abandoned`], as the limiter
///   counts such calls once their message was decoded; so is one whose
///   connection closed while its message was on its way, which tonic
///   answers (to no one) `Unknown`;
/// - answered with an error status before decoding (a message over the
///   size bound, one that does not decode, `grpc-encoding` compression,
///   an unknown method): counted in [`Stats::calls_refused_undecoded`].
///   A caller that resets its stream before its message is complete is
///   one of these: hyper ends the body there as if the stream had ended,
///   and tonic answers (to no one) INTERNAL, `Missing request message`
///   or a decoding error.
///
/// Each is logged at `info` on the limiter's per-request budget. A call
/// whose message was decoded ([`MessageDecoded`]) is left to the limiter,
/// so no call counts twice.
pub async fn observe_call(
    axum::extract::State(limiter): axum::extract::State<Arc<RateLimiter>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let decoded = MessageDecoded::default();
    request.extensions_mut().insert(decoded.clone());
    // A clone of the URI shares its bytes: nothing is copied unless a
    // line is logged.
    let uri = request.uri().clone();
    let mut unanswered = Undecoded {
        limiter: &limiter,
        decoded: &decoded,
        armed: true,
    };
    let response = next.run(request).await;
    unanswered.armed = false;
    if decoded.0.load(Ordering::Relaxed) {
        return response;
    }
    // An error before decoding is a trailers-only answer: the status is
    // in the headers (its message percent-decoded by tonic).
    let Some(status) =
        tonic::Status::from_header_map(response.headers()).filter(|s| s.code() != tonic::Code::Ok)
    else {
        return response;
    };
    // `Unknown` is how tonic answers a body that could not be read: the
    // connection went away while the message was on its way (the caller
    // closed it, or the service's shutdown did). Nobody refused that
    // call: it was abandoned, as one ended by its deadline is.
    if status.code() == tonic::Code::Unknown {
        limiter.abandoned_undecoded();
        return response;
    }
    bump(&limiter.stats.calls_refused_undecoded);
    if tracing::enabled!(Level::INFO) && limiter.may_log(LineKind::Info, unix_now()) {
        info!(
            code = ?status.code(),
            method = %safe_text(uri.path(), MAX_LOGGED_PATH_BYTES),
            status = %safe_text(status.message(), MAX_LOGGED_STATUS_BYTES),
            "call refused before its message was decoded"
        );
    }
    response
}

/// The current Unix second.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        // From here on the call is the limiter's to count (see
        // `observe_call`).
        if let Some(decoded) = request.extensions().get::<MessageDecoded>() {
            decoded.0.store(true, Ordering::Relaxed);
        }
        let request = request.into_inner();
        self.limiter
            .should_rate_limit(&request, unix_now())
            .await
            .map(tonic::Response::new)
            .map_err(|e| e.to_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The `info` budget also holds the throttled line of
    // a call refused before its message was decoded (`observe_call`: an
    // unknown method, a message over the size bound, a bad content type,
    // which anyone reaching the port can send); after a flood of those the
    // summary named only calls ended early.
    #[test]
    fn the_info_summary_names_each_line_on_its_budget() {
        let s = LineKind::Info.lines();
        for part in ["over limit", "invalid request", "ended", "refused"] {
            assert!(s.contains(part), "{part:?} missing from {s:?}");
        }
    }
    use crate::backend::MemoryBackend;
    use crate::logging::Captured;
    use crate::matching::tests::{config, descriptor};
    use crate::window::Unit;
    use envoy_types::pb::google::protobuf::UInt64Value;

    const NOW: i64 = 1_699_999_990; // 10 s into a minute

    fn limiter(yaml: &str) -> RateLimiter {
        limiter_with(yaml, ServiceOptions::default())
    }

    fn limiter_with(yaml: &str, options: ServiceOptions) -> RateLimiter {
        RateLimiter::new(
            Arc::new(config(yaml)),
            Arc::new(Backend::Memory(MemoryBackend::new(1000))),
            options,
            Arc::new(Stats::default()),
        )
    }

    fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.to_owned(),
            descriptors,
            hits_addend: 0,
        }
    }

    async fn ask(l: &RateLimiter, req: &RateLimitRequest, now: i64) -> RateLimitResponse {
        l.should_rate_limit(req, now).await.unwrap()
    }

    const APP: &str = r#"
domain: appguard
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 3, name: per_ip}
  - key: jti
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: internal
    rate_limit: {unlimited: true}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: vip
    rate_limit: {unit: minute, requests_per_unit: 10, replaces: [{name: per_ip}]}
  - key: q1
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: q2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
"#;

    #[tokio::test]
    async fn n_allowed_then_over_limit() {
        let l = limiter(APP);
        let req = request("appguard", vec![descriptor(&[("ip", "1.2.3.4")])]);
        for remaining in [2, 1, 0] {
            let r = ask(&l, &req, NOW).await;
            assert_eq!(r.overall_code, Code::Ok as i32);
            let s = &r.statuses[0];
            assert_eq!(s.code, Code::Ok as i32);
            assert_eq!(s.limit_remaining, remaining);
            assert_eq!(
                s.current_limit,
                Some(PbRateLimit {
                    name: "per_ip".to_owned(),
                    requests_per_unit: 3,
                    unit: Unit::Minute.to_pb() as i32
                })
            );
            assert_eq!(s.duration_until_reset.unwrap().seconds, 50);
        }
        let r = ask(&l, &req, NOW + 5).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].limit_remaining, 0);
        assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 45);
        // Another value of the key-only entry has its own counter.
        let other = request("appguard", vec![descriptor(&[("ip", "5.6.7.8")])]);
        assert_eq!(ask(&l, &other, NOW).await.overall_code, Code::Ok as i32);
        // The next window starts afresh.
        let r = ask(&l, &req, NOW + 50).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, 2);
        assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 60);
        let stats = l.stats().snapshot();
        assert_eq!(stats.requests, 6);
        assert_eq!(stats.over_limit, 1);
    }

    #[tokio::test]
    async fn replay_descriptor_allows_one_use() {
        let l = limiter(APP);
        let req = request("appguard", vec![descriptor(&[("jti", "hash-of-token")])]);
        assert_eq!(ask(&l, &req, NOW).await.overall_code, Code::Ok as i32);
        assert_eq!(
            ask(&l, &req, NOW).await.overall_code,
            Code::OverLimit as i32
        );
        let fresh = request("appguard", vec![descriptor(&[("jti", "another")])]);
        assert_eq!(ask(&l, &fresh, NOW).await.overall_code, Code::Ok as i32);
    }

    #[tokio::test]
    async fn a_rolling_window_holds_a_jti_across_the_epoch_windows_end() {
        let yaml = "domain: appguard\ndescriptors:\n  - key: jti\n    rate_limit: {unit: hour, requests_per_unit: 1, rolling: true}\n";
        let rolling = limiter(yaml);
        let fixed = limiter(APP);
        let req = request("appguard", vec![descriptor(&[("jti", "hash-of-token")])]);
        let hour_end = NOW - NOW % 3600 + 3600;
        for l in [&rolling, &fixed] {
            assert_eq!(
                ask(l, &req, hour_end - 5).await.overall_code,
                Code::Ok as i32
            );
        }
        // Ten seconds later, in the next epoch hour: the fixed window
        // counts the copy afresh, the rolling one still holds the first use.
        assert_eq!(
            ask(&fixed, &req, hour_end + 5).await.overall_code,
            Code::Ok as i32,
            "the hole a rolling window closes"
        );
        let r = ask(&rolling, &req, hour_end + 5).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        let s = &r.statuses[0];
        assert_eq!(
            s.duration_until_reset.unwrap().seconds,
            3590,
            "the time left of the window its first hit opened, not a whole unit"
        );
        assert_eq!(
            s.current_limit,
            Some(PbRateLimit {
                name: String::new(),
                requests_per_unit: 1,
                unit: Unit::Hour.to_pb() as i32
            })
        );
        // Hits after the first do not extend it: an hour after the first
        // use the window is over.
        let r = ask(&rolling, &req, hour_end + 1800).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 1795);
        assert_eq!(
            ask(&rolling, &req, hour_end - 5 + 3600).await.overall_code,
            Code::Ok as i32
        );
    }

    #[tokio::test]
    async fn a_check_of_zero_hits_does_not_start_a_rolling_window() {
        let yaml = "domain: appguard\ndescriptors:\n  - key: jti\n    rate_limit: {unit: hour, requests_per_unit: 1, rolling: true}\n";
        let l = limiter(yaml);
        let mut check = descriptor(&[("jti", "hash-of-token")]);
        check.hits_addend = Some(UInt64Value { value: 0 });
        let r = ask(&l, &request("appguard", vec![check]), NOW).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, 1);
        assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 3600);
        // The first use, half an hour after the check, opens the window.
        let used = request("appguard", vec![descriptor(&[("jti", "hash-of-token")])]);
        let r = ask(&l, &used, NOW + 1800).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(
            r.statuses[0].duration_until_reset.unwrap().seconds,
            3600,
            "the window started at the check"
        );
        // So a replay an hour after the check, within an hour of the use,
        // is still refused.
        assert_eq!(
            ask(&l, &used, NOW + 1800 + 3599).await.overall_code,
            Code::OverLimit as i32
        );
    }

    #[tokio::test]
    async fn statuses_follow_request_order_for_mixed_descriptors() {
        let l = limiter(APP);
        let req = request(
            "appguard",
            vec![
                descriptor(&[("nothing", "x")]),
                descriptor(&[("internal", "svc")]),
                descriptor(&[("jti", "t1")]),
            ],
        );
        let r = ask(&l, &req, NOW).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 3);
        // Unmatched: OK, no limit, nothing remaining reported.
        assert_eq!(
            r.statuses[0],
            DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            }
        );
        // Unlimited: OK with u32::MAX remaining.
        assert_eq!(
            r.statuses[1],
            DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: u32::MAX,
                ..Default::default()
            }
        );
        assert_eq!(r.statuses[2].limit_remaining, 0);
        let r = ask(&l, &req, NOW).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        assert_eq!(r.statuses[1].code, Code::Ok as i32);
        assert_eq!(r.statuses[2].code, Code::OverLimit as i32);
    }

    #[tokio::test]
    async fn unknown_domain_is_ok_and_not_counted() {
        let l = limiter(APP);
        let req = request("other", vec![descriptor(&[("ip", "1")])]);
        for _ in 0..5 {
            let r = ask(&l, &req, NOW).await;
            assert_eq!(r.overall_code, Code::Ok as i32);
            assert_eq!(r.statuses[0].current_limit, None);
        }
    }

    #[tokio::test]
    async fn shadow_mode_reports_ok_but_counts() {
        let l = limiter(APP);
        let req = request("appguard", vec![descriptor(&[("trial", "u1")])]);
        assert_eq!(ask(&l, &req, NOW).await.statuses[0].limit_remaining, 0);
        let r = ask(&l, &req, NOW).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, 0);
        let stats = l.stats().snapshot();
        assert_eq!(stats.shadow_mode, 1);
        assert_eq!(stats.descriptors_over_limit, 1);
        assert_eq!(stats.over_limit, 0);
    }

    const STOP: &str = r#"
domain: appguard
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: phone
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: q1
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: q2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
"#;

    fn stopping() -> ServiceOptions {
        ServiceOptions {
            stop_increment_when_over_limit: true,
            ..Default::default()
        }
    }

    /// An attacker over its per-IP limit keeps asking for SMS to a
    /// victim's number: by default every call spends the number's limit
    /// and the victim is refused; with the option the refused calls count
    /// nothing and the victim still gets its code.
    #[tokio::test]
    async fn with_stop_increment_a_refused_call_spends_no_other_limit() {
        for (options, victim_code) in [
            (ServiceOptions::default(), Code::OverLimit),
            (stopping(), Code::Ok),
        ] {
            let stop = options.stop_increment_when_over_limit;
            let l = limiter_with(STOP, options);
            let attack = request(
                "appguard",
                vec![
                    descriptor(&[("ip", "192.0.2.66")]),
                    descriptor(&[("phone", "victim")]),
                ],
            );
            for _ in 0..2 {
                assert_eq!(ask(&l, &attack, NOW).await.overall_code, Code::Ok as i32);
            }
            for _ in 0..3 {
                let r = ask(&l, &attack, NOW).await;
                assert_eq!(r.overall_code, Code::OverLimit as i32, "stop {stop}");
                assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
                assert_eq!(r.statuses[0].limit_remaining, 0);
            }
            let victim = request(
                "appguard",
                vec![
                    descriptor(&[("ip", "203.0.113.7")]),
                    descriptor(&[("phone", "victim")]),
                ],
            );
            let r = ask(&l, &victim, NOW).await;
            assert_eq!(r.overall_code, victim_code as i32, "stop {stop}");
            if stop {
                // 2 of 3 were spent by the calls that were allowed.
                assert_eq!(r.statuses[1].limit_remaining, 0);
                assert_eq!(l.stats().snapshot().over_limit_not_counted, 3);
            } else {
                assert_eq!(l.stats().snapshot().over_limit_not_counted, 0);
            }
        }
    }

    /// Only what makes the answer OVER_LIMIT stops the counting: a
    /// shadow-mode limit over its allowance, one quota-mode limit of two
    /// over, or any call under global shadow mode, all still count.
    #[tokio::test]
    async fn with_stop_increment_calls_answered_ok_still_count() {
        let l = limiter_with(STOP, stopping());
        let shadowed = request(
            "appguard",
            vec![
                descriptor(&[("ip", "192.0.2.1")]),
                descriptor(&[("trial", "t")]),
            ],
        );
        let r = ask(&l, &shadowed, NOW).await;
        assert_eq!(r.statuses[0].limit_remaining, 1);
        // The trial limit (1) is over, in shadow mode: OK, and counted.
        let r = ask(&l, &shadowed, NOW).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, 0);
        assert_eq!(
            ask(&l, &shadowed, NOW).await.overall_code,
            Code::OverLimit as i32
        );

        let quota = request(
            "appguard",
            vec![descriptor(&[("q1", "a")]), descriptor(&[("q2", "a")])],
        );
        // q1 over from the second call, q2 from the third: only then is
        // the call refused, and it counts nothing.
        for _ in 0..2 {
            assert_eq!(ask(&l, &quota, NOW).await.overall_code, Code::Ok as i32);
        }
        let r = ask(&l, &quota, NOW).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        // A check (0 hits) reads q2 at 2 of 2: the refused call added none.
        let mut q2 = descriptor(&[("q2", "a")]);
        q2.hits_addend = Some(UInt64Value { value: 0 });
        let r = ask(&l, &request("appguard", vec![q2]), NOW).await;
        assert_eq!(
            r.overall_code,
            Code::Ok as i32,
            "the refused call counted q2"
        );
        assert_eq!(r.statuses[0].limit_remaining, 0);

        let l = limiter_with(
            STOP,
            ServiceOptions {
                global_shadow_mode: true,
                stop_increment_when_over_limit: true,
                ..Default::default()
            },
        );
        let ip = request("appguard", vec![descriptor(&[("ip", "192.0.2.2")])]);
        for _ in 0..3 {
            assert_eq!(ask(&l, &ip, NOW).await.overall_code, Code::Ok as i32);
        }
        let mut check = descriptor(&[("ip", "192.0.2.2")]);
        check.hits_addend = Some(UInt64Value { value: 0 });
        let r = ask(&l, &request("appguard", vec![check]), NOW).await;
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32, "3 counted of 2");
        assert_eq!(l.stats().snapshot().over_limit_not_counted, 0);
    }

    /// A key twice in one call is judged as counted in order, as without
    /// the option: 1 and 2 of 3 pass, then 3 and 4 refuse and count
    /// nothing, so one more single hit still fits.
    #[tokio::test]
    async fn with_stop_increment_a_key_twice_in_a_call_adds_up() {
        let l = limiter_with(STOP, stopping());
        let twice = request(
            "appguard",
            vec![descriptor(&[("phone", "p")]), descriptor(&[("phone", "p")])],
        );
        let r = ask(&l, &twice, NOW).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[1].limit_remaining, 1);
        let r = ask(&l, &twice, NOW).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
        let once = request("appguard", vec![descriptor(&[("phone", "p")])]);
        let r = ask(&l, &once, NOW).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, 0);
    }

    // ---- stop_increment_when_over_limit: the answer and what is counted agree ----

    const PROBE: &str = include_str!("../tests/fixtures/stop_increment_mix.yaml");

    /// A limit both in quota mode and in shadow mode (the config accepts
    /// it) takes part in step 5's quota count but can never be over, so a
    /// call with one is never refused for quota; the refusal rule treats
    /// it as `Never` and leaves it out, so the other quota-mode limit
    /// alone refuses the call: answered OK, nothing counted.
    #[tokio::test]
    async fn with_stop_increment_a_shadow_quota_limit_answered_ok_counts() {
        let l = limiter_with(PROBE, stopping());
        let call = request(
            "appguard",
            vec![descriptor(&[("q1", "a")]), descriptor(&[("qs", "a")])],
        );
        for _ in 0..2 {
            let r = ask(&l, &call, NOW).await;
            assert_eq!(r.overall_code, Code::Ok as i32, "step 5 answers OK");
        }
        let mut qs = descriptor(&[("qs", "a")]);
        qs.hits_addend = Some(UInt64Value { value: 0 });
        let r = ask(&l, &request("appguard", vec![qs]), NOW).await;
        // Two calls answered OK: 2 of 5 used, 3 left.
        assert_eq!(
            r.statuses[0].limit_remaining, 3,
            "a call answered OK counted nothing"
        );
        assert_eq!(l.stats().snapshot().over_limit_not_counted, 0);
    }

    /// The rule the option promises, over many mixed calls: each answer
    /// with the option is the answer the calls counted so far would get
    /// without it, a call answered OVER_LIMIT counts nothing, and one
    /// answered OK counts.
    #[tokio::test]
    async fn with_stop_increment_the_answer_agrees_with_what_is_counted_for_every_mix() {
        let variants: Vec<RateLimitDescriptor> = {
            let mut v = vec![
                descriptor(&[("ip", "a")]),
                descriptor(&[("zero", "z")]),
                descriptor(&[("trial", "t")]),
                descriptor(&[("q1", "a")]),
                descriptor(&[("q2", "a")]),
                descriptor(&[("qs", "a")]),
                descriptor(&[("free", "x")]),
                descriptor(&[("nomatch", "x")]),
                descriptor(&[("roll", "r")]),
                descriptor(&[("old", "o")]),
                descriptor(&[("vip", "v")]),
            ];
            for (key, hits) in [("ip", 0), ("ip", 2), ("q1", 0), ("q2", 3), ("roll", 0)] {
                let mut d = descriptor(&[(key, if key == "roll" { "r" } else { "a" })]);
                d.hits_addend = Some(UInt64Value { value: hits });
                v.push(d);
            }
            v
        };
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..40 {
            let a = limiter_with(PROBE, stopping());
            let mut counted: Vec<RateLimitRequest> = Vec::new();
            for step in 0..12 {
                let len = 1 + next(3);
                let call = request(
                    "appguard",
                    (0..len)
                        .map(|_| variants[next(variants.len())].clone())
                        .collect(),
                );
                let b = limiter_with(PROBE, ServiceOptions::default());
                for c in &counted {
                    ask(&b, c, NOW).await;
                }
                let expected = ask(&b, &call, NOW).await;
                let before = a.stats().snapshot().over_limit_not_counted;
                let got = ask(&a, &call, NOW).await;
                let refused = a.stats().snapshot().over_limit_not_counted > before;
                let what = format!("round {round} step {step}: {:?}", call.descriptors);
                assert_eq!(got, expected, "{what}");
                assert_eq!(
                    refused,
                    got.overall_code == Code::OverLimit as i32,
                    "counted iff answered OK: {what}"
                );
                if !refused {
                    counted.push(call);
                }
            }
        }
    }

    #[tokio::test]
    async fn global_shadow_mode_reports_ok() {
        let l = limiter_with(
            APP,
            ServiceOptions {
                global_shadow_mode: true,
                ..Default::default()
            },
        );
        let req = request("appguard", vec![descriptor(&[("jti", "x")])]);
        ask(&l, &req, NOW).await;
        let r = ask(&l, &req, NOW).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        // The descriptor status still says what happened.
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(l.stats().snapshot().global_shadow_mode, 1);
    }

    #[tokio::test]
    async fn replaced_limits_are_not_applied_or_counted() {
        let l = limiter(APP);
        let both = request(
            "appguard",
            vec![
                descriptor(&[("ip", "9.9.9.9")]),
                descriptor(&[("vip", "u")]),
            ],
        );
        for _ in 0..5 {
            let r = ask(&l, &both, NOW).await;
            assert_eq!(r.overall_code, Code::Ok as i32);
            assert_eq!(r.statuses[0].current_limit, None, "per_ip is replaced");
        }
        // The per-IP counter was never touched.
        let alone = request("appguard", vec![descriptor(&[("ip", "9.9.9.9")])]);
        assert_eq!(ask(&l, &alone, NOW).await.statuses[0].limit_remaining, 2);
    }

    #[tokio::test]
    async fn quota_mode_is_over_only_when_all_quota_descriptors_are() {
        let l = limiter(APP);
        let req = request(
            "appguard",
            vec![descriptor(&[("q1", "a")]), descriptor(&[("q2", "a")])],
        );
        assert_eq!(ask(&l, &req, NOW).await.overall_code, Code::Ok as i32);
        // q1 over (2 > 1), q2 at its limit (2): still OK overall.
        let r = ask(&l, &req, NOW).await;
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(r.statuses[1].code, Code::Ok as i32);
        assert_eq!(r.overall_code, Code::Ok as i32);
        // Both over: OVER_LIMIT.
        let r = ask(&l, &req, NOW).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
    }

    #[tokio::test]
    async fn hits_addend_on_request_and_descriptor() {
        let l = limiter(APP);
        let mut req = request("appguard", vec![descriptor(&[("ip", "h")])]);
        req.hits_addend = 2;
        assert_eq!(ask(&l, &req, NOW).await.statuses[0].limit_remaining, 1);
        // A descriptor's own hits_addend wins; 0 checks without consuming.
        let mut check = descriptor(&[("ip", "h")]);
        check.hits_addend = Some(UInt64Value { value: 0 });
        let mut req0 = request("appguard", vec![check]);
        req0.hits_addend = 5;
        let r = ask(&l, &req0, NOW).await;
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, 1);
        // 2 more on a count of 2: 4 > 3.
        assert_eq!(
            ask(&l, &req, NOW).await.overall_code,
            Code::OverLimit as i32
        );
        let mut huge = descriptor(&[("ip", "h")]);
        huge.hits_addend = Some(UInt64Value { value: u64::MAX });
        let err = l
            .should_rate_limit(&request("appguard", vec![huge]), NOW)
            .await
            .unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn malformed_requests_are_refused() {
        let l = limiter(APP);
        let err = l
            .should_rate_limit(&request("", vec![descriptor(&[("ip", "1")])]), NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::EmptyDomain));
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        let err = l
            .should_rate_limit(&request("appguard", vec![]), NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::NoDescriptors));
        assert_eq!(l.stats().snapshot().invalid_requests, 2);
    }

    #[tokio::test]
    async fn too_many_descriptors_or_entries_are_refused_without_counting() {
        let memory = Arc::new(Backend::Memory(MemoryBackend::new(1_000_000)));
        let l = RateLimiter::new(
            Arc::new(config(APP)),
            Arc::clone(&memory),
            ServiceOptions::default(),
            Arc::new(Stats::default()),
        );
        let stored = || match memory.as_ref() {
            Backend::Memory(m) => m.len(),
            _ => unreachable!(),
        };
        let ips = |n: usize| -> Vec<RateLimitDescriptor> {
            (0..n)
                .map(|i| descriptor(&[("ip", &format!("10.0.{}.{}", i / 256, i % 256))]))
                .collect()
        };

        // At the bounds: answered and counted.
        let r = ask(&l, &request("appguard", ips(MAX_DESCRIPTORS)), NOW).await;
        assert_eq!(r.statuses.len(), MAX_DESCRIPTORS);
        assert_eq!(stored(), MAX_DESCRIPTORS);
        let longest: Vec<(String, String)> = (0..MAX_ENTRIES_PER_DESCRIPTOR)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        let pairs = |v: &[(String, String)]| -> RateLimitDescriptor {
            let refs: Vec<(&str, &str)> = v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            descriptor(&refs)
        };
        ask(&l, &request("appguard", vec![pairs(&longest)]), NOW).await;

        // One over: refused as INVALID_ARGUMENT, nothing counted.
        let before = stored();
        for many in [MAX_DESCRIPTORS + 1, 100_000] {
            let err = l
                .should_rate_limit(&request("appguard", ips(many)), NOW)
                .await
                .unwrap_err();
            assert!(
                matches!(err, ServiceError::TooManyDescriptors { count } if count == many),
                "{err}"
            );
            assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        }
        let mut too_long = longest.clone();
        too_long.push(("ip".to_owned(), "1".to_owned()));
        let req = request(
            "appguard",
            vec![descriptor(&[("ip", "192.0.2.1")]), pairs(&too_long)],
        );
        let err = l.should_rate_limit(&req, NOW).await.unwrap_err();
        assert!(
            matches!(err, ServiceError::TooManyEntries { index: 1, count } if count == MAX_ENTRIES_PER_DESCRIPTOR + 1),
            "{err}"
        );
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        assert_eq!(stored(), before, "a refused request created counters");
        // The valid descriptor of the refused request was not counted either.
        let alone = request("appguard", vec![descriptor(&[("ip", "192.0.2.1")])]);
        assert_eq!(ask(&l, &alone, NOW).await.statuses[0].limit_remaining, 2);
        assert_eq!(l.stats().snapshot().invalid_requests, 3);

        // A refund (`is_negative_hits`) is refused, never counted as hits.
        let mut refund = descriptor(&[("ip", "192.0.2.1")]);
        refund.is_negative_hits = true;
        let req = request("appguard", vec![descriptor(&[("ip", "192.0.2.1")]), refund]);
        let err = l.should_rate_limit(&req, NOW).await.unwrap_err();
        assert!(
            matches!(err, ServiceError::NegativeHits { index: 1 }),
            "{err}"
        );
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        assert_eq!(ask(&l, &alone, NOW).await.statuses[0].limit_remaining, 1);
    }

    #[tokio::test]
    async fn a_full_store_is_unavailable_not_ok() {
        let l = RateLimiter::new(
            Arc::new(config(APP)),
            Arc::new(Backend::Memory(MemoryBackend::new(1))),
            ServiceOptions::default(),
            Arc::new(Stats::default()),
        );
        ask(
            &l,
            &request("appguard", vec![descriptor(&[("ip", "1")])]),
            NOW,
        )
        .await;
        let err = l
            .should_rate_limit(&request("appguard", vec![descriptor(&[("ip", "2")])]), NOW)
            .await
            .unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::Unavailable);
        assert_eq!(l.stats().snapshot().backend_errors, 1);
    }

    /// The key of a minute window starting at second 60, without prefix.
    fn minute_key(domain: &str, d: &RateLimitDescriptor) -> String {
        cache_key("", domain, d, &[], Unit::Minute, Some(60))
    }

    #[test]
    fn a_rolling_key_names_no_window() {
        let d = descriptor(&[("jti", "abc")]);
        assert_eq!(
            cache_key("", "appguard", &d, &[], Unit::Hour, None),
            "8:appguard_3:jti=3:abc_hour_rolling"
        );
    }

    #[test]
    fn cache_keys_hold_prefix_domain_entries_and_window_start() {
        let d = descriptor(&[("message_type", "marketing"), ("to_number", "2061111111")]);
        assert_eq!(
            cache_key("", "messaging", &d, &[], Unit::Minute, Some(1_700_000_000)),
            "9:messaging_12:message_type=9:marketing_9:to_number=10:2061111111_minute_1700000000"
        );
        assert_eq!(
            cache_key(
                "pre_",
                "d",
                &descriptor(&[("k", "")]),
                &[],
                Unit::Minute,
                Some(60)
            ),
            "pre_1:d_1:k=0:_minute_60"
        );
        assert_eq!(
            cache_key(
                "",
                "d",
                &descriptor(&[("k", "v")]),
                &[],
                Unit::Minute,
                Some(-60)
            ),
            "1:d_1:k=1:v_minute_-60"
        );
        let shared = vec![Some("files/*".to_owned())];
        assert_eq!(
            cache_key(
                "",
                "d",
                &descriptor(&[("files", "files/a.pdf")]),
                &shared,
                Unit::Minute,
                Some(0)
            ),
            "1:d_5:files=7:files/*_minute_0"
        );
    }

    #[test]
    fn a_value_cannot_spell_out_another_entry() {
        // Joined with a bare `_`, both were `d_a_x_b_y_60`: one counter.
        let one = descriptor(&[("a", "x_b_y")]);
        let two = descriptor(&[("a", "x"), ("b", "y")]);
        assert_ne!(minute_key("d", &one), minute_key("d", &two));
        // Equal descriptors still share their counter.
        assert_eq!(
            minute_key("d", &one),
            minute_key("d", &descriptor(&[("a", "x_b_y")]))
        );
        assert_eq!(
            minute_key("d", &two),
            minute_key("d", &descriptor(&[("a", "x"), ("b", "y")]))
        );
        // Nor with the length-prefix syntax itself, nor through the domain.
        assert_ne!(
            minute_key("d", &descriptor(&[("a", "1:x_1:b=1:y")])),
            minute_key("d", &two)
        );
        assert_ne!(
            minute_key("d", &descriptor(&[("a", "x=1:b")])),
            minute_key("d", &descriptor(&[("a", "x"), ("b", "")]))
        );
        assert_ne!(
            minute_key("d_1:a=1:x", &descriptor(&[])),
            minute_key("d", &descriptor(&[("a", "x")]))
        );
        // Nor the unit: a minute and an hour window that start at the
        // same second (the first minute of every hour) count apart.
        assert_ne!(
            cache_key(
                "",
                "d",
                &descriptor(&[("a", "x")]),
                &[],
                Unit::Minute,
                Some(3600)
            ),
            cache_key(
                "",
                "d",
                &descriptor(&[("a", "x")]),
                &[],
                Unit::Hour,
                Some(3600)
            )
        );
        // Nor the window start.
        assert_ne!(
            cache_key(
                "",
                "d",
                &descriptor(&[("a", "x_60")]),
                &[],
                Unit::Minute,
                Some(0)
            ),
            minute_key("d", &descriptor(&[("a", "x")]))
        );
    }

    #[test]
    fn long_parts_are_digested_and_keys_stay_short() {
        let long = "v".repeat(1_000_000);
        let key = cache_key(
            "",
            "d",
            &descriptor(&[("a", &long)]),
            &[],
            Unit::Minute,
            Some(60),
        );
        assert!(key.starts_with("1:d_1:a=#"), "{key}");
        assert!(key.ends_with("_minute_60"), "{key}");
        assert_eq!(key.len(), "1:d_1:a=#".len() + 64 + "_minute_60".len());
        // Deterministic, and distinct from a near value and from a value
        // that spells out the digest form.
        assert_eq!(key, minute_key("d", &descriptor(&[("a", &long)])));
        let mut other = long.clone();
        other.push('w');
        assert_ne!(key, minute_key("d", &descriptor(&[("a", &other)])));
        let digest = &key["1:d_1:a=".len()..key.len() - "_60".len()];
        assert_ne!(key, minute_key("d", &descriptor(&[("a", digest)])));
        // At the bound, the value is still copied as is.
        let edge = "v".repeat(MAX_KEY_PART_LEN);
        assert_eq!(
            minute_key("d", &descriptor(&[("a", &edge)])),
            format!("1:d_1:a={MAX_KEY_PART_LEN}:{edge}_minute_60")
        );
    }

    #[tokio::test]
    async fn a_value_spelling_out_two_entries_has_its_own_counter() {
        let l = limiter(
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: hour, requests_per_unit: 1}\n    descriptors:\n      - key: b\n        rate_limit: {unit: hour, requests_per_unit: 1}\n",
        );
        let one = request("d", vec![descriptor(&[("a", "x_b_y")])]);
        let two = request("d", vec![descriptor(&[("a", "x"), ("b", "y")])]);
        assert_eq!(ask(&l, &one, NOW).await.overall_code, Code::Ok as i32);
        assert_eq!(ask(&l, &two, NOW).await.overall_code, Code::Ok as i32);
        assert_eq!(
            ask(&l, &one, NOW).await.overall_code,
            Code::OverLimit as i32
        );
        assert_eq!(
            ask(&l, &two, NOW).await.overall_code,
            Code::OverLimit as i32
        );
    }

    #[tokio::test]
    async fn share_threshold_counts_all_matches_together() {
        let l = limiter(
            "domain: d\ndescriptors:\n  - key: files\n    value: files/*\n    share_threshold: true\n    rate_limit: {unit: hour, requests_per_unit: 2}\n  - key: own\n    value: own/*\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
        );
        let a = request("d", vec![descriptor(&[("files", "files/a")])]);
        let b = request("d", vec![descriptor(&[("files", "files/b")])]);
        assert_eq!(ask(&l, &a, NOW).await.overall_code, Code::Ok as i32);
        assert_eq!(ask(&l, &b, NOW).await.overall_code, Code::Ok as i32);
        assert_eq!(ask(&l, &a, NOW).await.overall_code, Code::OverLimit as i32);
        let own_a = request("d", vec![descriptor(&[("own", "own/a")])]);
        let own_b = request("d", vec![descriptor(&[("own", "own/b")])]);
        assert_eq!(ask(&l, &own_a, NOW).await.overall_code, Code::Ok as i32);
        assert_eq!(ask(&l, &own_b, NOW).await.overall_code, Code::Ok as i32);
    }

    #[tokio::test]
    async fn limit_override_from_the_request() {
        let l = limiter(APP);
        let mut d = descriptor(&[("anything", "x")]);
        d.limit = Some(
            envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride {
                requests_per_unit: 1,
                unit: Unit::Second.to_pb() as i32,
            },
        );
        let req = request("appguard", vec![d]);
        let r = ask(&l, &req, NOW).await;
        assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 1);
        assert_eq!(
            ask(&l, &req, NOW).await.overall_code,
            Code::OverLimit as i32
        );
    }

    #[tokio::test]
    async fn a_minute_and_an_hour_limit_on_one_descriptor_count_apart() {
        // Two overrides on the same entries (two Envoy actions), in the
        // first minute of an hour: the minute and hour windows start at
        // the same second, and once shared one counter.
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
        let l = limiter(APP);
        let with = |n: u32, unit: Unit| {
            let mut d = descriptor(&[("user", "u1")]);
            d.limit = Some(RateLimitOverride {
                requests_per_unit: n,
                unit: unit.to_pb() as i32,
            });
            d
        };
        let hour_start = 1_700_002_800; // a multiple of 3600
        let req = request("appguard", vec![with(3, Unit::Minute), with(5, Unit::Hour)]);
        let r = ask(&l, &req, hour_start + 10).await;
        let remaining: Vec<u32> = r.statuses.iter().map(|s| s.limit_remaining).collect();
        assert_eq!(remaining, vec![2, 4], "each limit counted one hit");
        // And the hour's count outlives the minute's window.
        let hour_only = request("appguard", vec![with(5, Unit::Hour)]);
        let r = ask(&l, &hour_only, hour_start + 130).await;
        assert_eq!(r.statuses[0].limit_remaining, 3);
    }

    impl Captured {
        /// Logs the service's way in `format` at `info` into the returned
        /// buffer, on this thread, until the guard is dropped.
        fn install(
            format: crate::logging::LogFormat,
        ) -> (Captured, tracing::subscriber::DefaultGuard) {
            let out = Captured::default();
            let subscriber = crate::logging::subscriber(format, "info", out.clone()).unwrap();
            (out, tracing::subscriber::set_default(subscriber))
        }

        fn json_lines(&self) -> Vec<serde_json::Value> {
            self.text()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    #[tokio::test]
    async fn over_limit_lines_are_throttled_and_the_rest_summarised() {
        let (out, _guard) = Captured::install(crate::logging::LogFormat::Json);
        let l = limiter(APP);
        let req = request("appguard", vec![descriptor(&[("jti", "flood")])]);
        ask(&l, &req, NOW).await;
        let flood = 200;
        for _ in 0..flood {
            let r = ask(&l, &req, NOW).await;
            assert_eq!(r.overall_code, Code::OverLimit as i32);
        }
        let msgs = |lines: &[serde_json::Value]| -> Vec<String> {
            lines
                .iter()
                .map(|v| v["msg"].as_str().unwrap().to_owned())
                .collect()
        };
        let lines = out.json_lines();
        assert_eq!(
            msgs(&lines),
            vec!["over limit"; REQUEST_LOG_LINES_PER_SECOND as usize],
            "one line per over-limit answer, unbounded"
        );
        // Every call was still counted and answered.
        assert_eq!(l.stats().snapshot().over_limit, flood);

        // The next second: the first line says how many were left out.
        ask(&l, &req, NOW + 1).await;
        let lines = out.json_lines();
        let new = &lines[REQUEST_LOG_LINES_PER_SECOND as usize..];
        assert_eq!(
            msgs(new),
            vec![
                "suppressed 180 per-request log lines (info: over limit, invalid request, call ended or refused before its message was read)",
                "over limit"
            ]
        );
        assert_eq!(new[0]["level"], "warn");
        assert_eq!(new[0]["fields"]["suppressed"], 180);
        assert_eq!(new[0]["fields"]["kind"], "info");
        ask(&l, &req, NOW + 1).await;
        assert_eq!(msgs(&out.json_lines()).last().unwrap(), "over limit");
        assert_eq!(
            out.json_lines().len(),
            REQUEST_LOG_LINES_PER_SECOND as usize + 3
        );

        // Invalid requests share the bound.
        for _ in 0..flood {
            l.should_rate_limit(&request("appguard", vec![]), NOW + 2)
                .await
                .unwrap_err();
        }
        let invalid = msgs(&out.json_lines())
            .iter()
            .filter(|m| *m == "invalid request")
            .count();
        assert_eq!(invalid, REQUEST_LOG_LINES_PER_SECOND as usize);
    }

    #[tokio::test]
    async fn calls_of_two_seconds_ending_in_turn_share_one_log_budget() {
        // A stalled store: calls that came in one second end in the next,
        // beside calls that came there. Every change of second between
        // their lines used to start a new budget: no bound at all.
        let (out, _guard) = Captured::install(crate::logging::LogFormat::Json);
        let l = limiter(APP);
        let req = request("appguard", vec![descriptor(&[("jti", "flood")])]);
        ask(&l, &req, NOW).await;
        for i in 0..200 {
            let r = ask(&l, &req, NOW + i % 2).await;
            assert_eq!(r.overall_code, Code::OverLimit as i32);
        }
        let over = out
            .json_lines()
            .iter()
            .filter(|v| v["msg"] == "over limit")
            .count();
        // One line of the first second before the next second's came.
        assert_eq!(over, 1 + REQUEST_LOG_LINES_PER_SECOND as usize);
    }

    #[tokio::test]
    async fn a_callers_domain_and_override_keys_are_logged_short_and_escaped() {
        use crate::logging::LogFormat;
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
        let forged = "\n{\"ts\":\"forged\",\"level\":\"error\"}\u{1b}[2J";
        let domain = format!("evil{forged}{}", "x".repeat(100_000));
        let key = format!("k{forged}{}", "y".repeat(100_000));
        for format in [LogFormat::Json, LogFormat::Text] {
            let (out, _guard) = Captured::install(format);
            let l = limiter(APP);
            // An invalid request logs the domain as the caller sent it.
            let err = l
                .should_rate_limit(&request(&domain, vec![]), NOW)
                .await
                .unwrap_err();
            assert!(matches!(err, ServiceError::NoDescriptors));
            // An override's limit name holds the caller's keys.
            let mut d = descriptor(&[(&key, "v")]);
            d.limit = Some(RateLimitOverride {
                requests_per_unit: 0,
                unit: Unit::Minute.to_pb() as i32,
            });
            let r = ask(&l, &request("appguard", vec![d]), NOW).await;
            assert_eq!(r.overall_code, Code::OverLimit as i32);

            let text = out.text();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{format:?}: a forged line: {text}");
            for line in &lines {
                assert!(line.len() < 2_000, "{format:?}: {} bytes", line.len());
                assert!(!line.contains('\u{1b}'), "{format:?}: {line}");
                assert!(!line.contains("forged\",\"level"), "{format:?}: {line}");
            }
            let safe_domain = safe_text(&domain, MAX_LOGGED_DOMAIN_BYTES);
            assert!(safe_domain.starts_with("evil\\n{\\\"ts"), "{safe_domain}");
            assert!(
                safe_domain.ends_with(&format!(
                    "…(+{} bytes)",
                    domain.len() - MAX_LOGGED_DOMAIN_BYTES
                )),
                "{safe_domain}"
            );
            let safe_limit =
                safe_text(&format!("appguard.{key}(override)"), MAX_LOGGED_LIMIT_BYTES);
            match format {
                LogFormat::Json => {
                    let v = out.json_lines();
                    assert_eq!(v[0]["msg"], "invalid request");
                    assert_eq!(v[0]["fields"]["domain"], safe_domain.as_str());
                    assert_eq!(v[1]["msg"], "over limit");
                    assert_eq!(v[1]["fields"]["limit"], safe_limit.as_str());
                }
                LogFormat::Text => {
                    assert!(
                        lines[0].contains(&format!("domain={safe_domain}")),
                        "{}",
                        lines[0]
                    );
                    assert!(
                        lines[1].contains(&format!("limit={safe_limit}")),
                        "{}",
                        lines[1]
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn hits_above_a_u32_are_refused_not_counted() {
        // A counter must never overflow (Redis would fail the whole batch
        // for the rest of the window); no caller needs more hits per call
        // than the request-level `hits_addend` (a u32) can say.
        let l = limiter(APP);
        let mut d = descriptor(&[("ip", "h")]);
        d.hits_addend = Some(UInt64Value {
            value: u64::from(u32::MAX) + 1,
        });
        let err = l
            .should_rate_limit(&request("appguard", vec![d]), NOW)
            .await
            .unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        // Nothing of the refused call was counted: 3 per minute, 1 used.
        let r = ask(
            &l,
            &request("appguard", vec![descriptor(&[("ip", "h")])]),
            NOW,
        )
        .await;
        assert_eq!(r.statuses[0].limit_remaining, 2);
        let mut d = descriptor(&[("ip", "h")]);
        d.hits_addend = Some(UInt64Value {
            value: u64::from(u32::MAX),
        });
        let r = ask(&l, &request("appguard", vec![d]), NOW).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
    }
}
