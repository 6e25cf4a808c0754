//! Counter stores: where the per-window hit counts live.
//!
//! Both stores do the same thing for a batch of counters: add each
//! increment's hits to its key and return the counts after adding. The key
//! already names the window (it ends with the window start, or `rolling`
//! for a window that starts at the first hit), so a counter is never reset,
//! it just expires once its window is over. An increment of 0 hits is a
//! check: it reads the counter and never creates it.

pub mod memory;
pub mod redis;

use std::time::Duration;

pub use self::memory::MemoryBackend;
pub use self::redis::RedisBackend;

/// One counter to increase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    /// The counter key (see [`crate::service::cache_key`]).
    pub key: String,
    /// Hits to add (may be 0: a check that does not consume, and that
    /// creates no counter, so it does not start a rolling window either).
    pub hits: u64,
    /// The window length in seconds: the key's time to live in Redis, as in
    /// envoyproxy/ratelimit.
    pub window_seconds: i64,
    /// Unix second at which the key's window ends: after it, the in-memory
    /// store drops the key. Set by a key's first hit only.
    pub window_end: i64,
    /// The window starts at the key's first hit (`rolling: true`): the key
    /// names no window, and its time to live is set once, never extended.
    pub rolling: bool,
}

/// One counter after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The count after adding the increment's hits.
    pub count: u64,
    /// For a `rolling` counter, the seconds until its window (set by its
    /// first hit) ends, as the store reports it: what a client must wait,
    /// and what a caller that keeps hits (appguard's leases) may use them
    /// for. `None` for an epoch window, whose end the service computes.
    pub resets_in: Option<i64>,
}

/// What a counter's descriptor does to the whole call when its count goes
/// over its limit: what the service's overall code is decided by, and
/// what `--stop-increment-when-over-limit` decides by before anything is
/// counted (see [`Backend::increment_unless_refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuses {
    /// Never refuses the call: a shadow-mode limit.
    Never,
    /// Refuses the call on its own when its count would exceed this
    /// `requests_per_unit`.
    Alone(u64),
    /// A quota-mode limit with this `requests_per_unit`: refuses the call
    /// only when every quota-mode counter of the call would exceed its own.
    InQuota(u64),
    /// A quota-mode limit in shadow mode: one of the call's quota-mode
    /// limits (step 5 counts it) that is never over, so a call with one is
    /// never refused for quota.
    InQuotaNever,
}

/// Whether a call is refused, given each counter's rule and its count
/// after the call's hits (in batch order): one [`Refuses::Alone`] counter
/// over its limit, or every [`Refuses::InQuota`] counter over its own (and
/// at least one of them). The service's overall code is this rule too.
pub fn is_refused(rules: &[Refuses], after: &[u64]) -> bool {
    let mut quota = 0usize;
    let mut quota_over = 0usize;
    for (rule, &count) in rules.iter().zip(after) {
        match *rule {
            Refuses::Never => {}
            Refuses::Alone(limit) => {
                if count > limit {
                    return true;
                }
            }
            Refuses::InQuotaNever => quota += 1,
            Refuses::InQuota(limit) => {
                quota += 1;
                if count > limit {
                    quota_over += 1;
                }
            }
        }
    }
    quota > 0 && quota == quota_over
}

/// The counts of a batch, and whether the call was refused before anything
/// was counted ([`Backend::increment_unless_refused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// One per increment, in order: the count after adding, or for a
    /// refused call the count it would have reached (nothing was added).
    pub counts: Vec<Counted>,
    /// The call was refused and no counter changed.
    pub refused: bool,
}

/// Longest Redis error text shown in a log line or a gRPC answer.
pub const MAX_REDIS_ERROR_BYTES: usize = 200;

/// What is shown for an aborted transaction (`EXECABORT`) whose queued
/// commands' own errors cannot be read: Redis refused a command as it was
/// queued (the `redis` crate then reports only the abort), and the usual
/// cause is named so an operator knows where to look.
pub const EXEC_ABORT_HINT: &str = "EXECABORT a command queued in the transaction was refused by \
     Redis (most often OOM: used memory above maxmemory under the noeviction policy; \
     see INFO errorstats)";

/// An error's text after its code, cut where Redis starts echoing the
/// command's arguments (`with args beginning with: …`).
fn detail_without_args(detail: Option<&str>) -> &str {
    detail
        .unwrap_or("")
        .split("with args beginning with")
        .next()
        .unwrap_or("")
        .trim_end_matches([' ', ','])
}

/// An aborted transaction (`EXECABORT`) as [`redis_summary`] shows it: the
/// `redis` crate answers a transaction whose commands Redis refused as
/// they were queued (each `OOM command not allowed when used memory >
/// 'maxmemory'` under `noeviction`, `NOPERM` under an ACL) with a bare
/// `EXECABORT` whose text is empty, and keeps the refusals themselves
/// apart ([`::redis::RedisError::into_server_errors`]). The first
/// refusal is shown, with how many commands were refused, so the cause
/// reads as it does in script mode; [`EXEC_ABORT_HINT`] when none can be
/// read.
fn exec_abort_summary(e: &::redis::RedisError) -> String {
    let refusals: Vec<_> = e
        .clone()
        .into_server_errors()
        .map(|errors| {
            errors
                .iter()
                // The abort itself (a plain `EXECABORT` reply) names no
                // queued command's error.
                .filter(|(_, error)| error.code() != "EXECABORT")
                .map(|(_, error)| {
                    format!("{} {}", error.code(), detail_without_args(error.details()))
                })
                .collect()
        })
        .unwrap_or_default();
    match refusals.first() {
        Some(first) => format!(
            "EXECABORT transaction aborted: Redis refused {} queued command(s), the first with: {}",
            refusals.len(),
            first.trim_end()
        ),
        None => EXEC_ABORT_HINT.to_owned(),
    }
}

/// A Redis error as the service logs it and answers it: its code and text,
/// cut where Redis starts echoing the command (`unknown command 'EVALSHA',
/// with args beginning with: …`, the counter keys that hold descriptor
/// values: client IPs, key ids) and at [`MAX_REDIS_ERROR_BYTES`] (a failed
/// transaction's text may list every command, kilobytes that a gRPC client
/// refuses as a message). An aborted transaction names the refusal of its
/// queued commands (see `exec_abort_summary`). Errors without a code (I/O,
/// a refused handshake) carry no keys and are shown as the client gives
/// them.
pub fn redis_summary(e: &::redis::RedisError) -> String {
    let text = match e.code() {
        Some("EXECABORT") => exec_abort_summary(e),
        Some(code) => format!("{code} {}", detail_without_args(e.detail())),
        None => e.to_string(),
    };
    let mut end = text.len().min(MAX_REDIS_ERROR_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("").to_owned()
}

/// Why a counter store could not answer. The service turns every one of these
/// into a gRPC error (UNAVAILABLE), never into an OK.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Redis refused the command or the connection failed. Shown as
    /// [`redis_summary`] says: never with the counter keys Redis may echo.
    #[error("redis error: {}", redis_summary(.0))]
    Redis(#[from] ::redis::RedisError),
    /// The Redis URL asks for TLS (`rediss://`), which this build lacks.
    #[error(
        "TLS is not built in: rediss:// URLs cannot be used; reach a TLS-only Redis \
         through a TLS-terminating sidecar (such as stunnel) and a redis:// URL to it"
    )]
    TlsNotBuiltIn,
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The task carrying a Redis call ended without an answer (the runtime
    /// is shutting down).
    #[error("the redis call was aborted")]
    Aborted,
    /// [`redis::MAX_CALLS_IN_FLIGHT`] Redis calls were already in flight
    /// (a slow or silent Redis): the call was not sent.
    #[error("{max} redis calls already in flight; not sending another")]
    Busy {
        /// The bound.
        max: usize,
    },
    /// Redis answered with something other than the expected counts.
    #[error("unexpected redis reply: {0}")]
    UnexpectedReply(String),
    /// Redis answers PING, but the last counting calls failed (the health
    /// check's answer; see [`redis::FAILED_CALL_SHOWS_FOR`]).
    #[error("it answers PING, but counting calls fail: {0}")]
    CallsFailing(String),
    /// The in-memory store is full of keys whose windows are still open.
    #[error("in-memory counter store is full ({max_keys} live keys)")]
    MemoryFull {
        /// The configured bound.
        max_keys: usize,
    },
}

/// The memory store's `(count, window end)` per item as [`Counted`]: a
/// rolling counter reports the seconds left until its end.
fn counted_with_ends(ends: Vec<(u64, i64)>, items: &[Increment], now: i64) -> Vec<Counted> {
    ends.into_iter()
        .zip(items)
        .map(|((count, end), item)| Counted {
            count,
            resets_in: item.rolling.then(|| end.saturating_sub(now)),
        })
        .collect()
}

/// The configured counter store.
#[derive(Debug)]
pub enum Backend {
    /// Counts in this process (one instance, the default).
    Memory(MemoryBackend),
    /// Counts in Redis, shared by every replica using the same Redis.
    Redis(Box<RedisBackend>),
}

impl Backend {
    /// Adds every increment's hits to its counter, in one transaction, and returns
    /// the counts after adding, in order. `now` is the current Unix second.
    pub async fn increment(
        &self,
        items: &[Increment],
        now: i64,
    ) -> Result<Vec<Counted>, BackendError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Backend::Memory(memory) => Ok(counted_with_ends(
                memory.increment_with_ends(items, now)?,
                items,
                now,
            )),
            Backend::Redis(redis) => {
                // Only checks (0 hits): Redis answered reads, nothing was
                // stored.
                let wrote = items.iter().any(|item| item.hits > 0);
                // A rolling counter needs Redis 7 (`EXPIRE … NX`): its
                // calls are told apart for the health check.
                let kind = if items.iter().any(|item| item.rolling && item.hits > 0) {
                    redis::CallKind::RollingTransaction
                } else {
                    redis::CallKind::Transaction
                };
                redis.noted(kind, redis.increment(items).await, |_| wrote)
            }
        }
    }

    /// As [`Backend::increment`], but only if the call is not refused by
    /// `rules` (one per item, see [`is_refused`]) given the counts it
    /// would reach: a refused call adds nothing to any counter, so a
    /// client over one limit does not spend the call's other limits.
    /// Decided and counted in one step (one Redis script, or under the
    /// memory store's lock), so no other call comes in between.
    pub async fn increment_unless_refused(
        &self,
        items: &[Increment],
        rules: &[Refuses],
        now: i64,
    ) -> Result<Batch, BackendError> {
        if items.is_empty() {
            return Ok(Batch {
                counts: Vec::new(),
                refused: false,
            });
        }
        match self {
            Backend::Memory(memory) => {
                let (ends, refused) = memory.increment_unless_refused(items, rules, now)?;
                Ok(Batch {
                    counts: counted_with_ends(ends, items, now),
                    refused,
                })
            }
            Backend::Redis(redis) => {
                let hits = items.iter().any(|item| item.hits > 0);
                // A refused call, or one of checks only, was answered by
                // the script's reads: it stored nothing.
                redis.noted(
                    redis::CallKind::Script,
                    redis.increment_unless_refused(items, rules).await,
                    |batch| hits && !batch.refused,
                )
            }
        }
    }

    /// Whether the store can take requests now (Redis: a PING, and no
    /// recent failure of every counting call, see [`RedisBackend::check`];
    /// memory: room for new counters, see [`MemoryBackend::check`]).
    pub async fn check(&self) -> Result<(), BackendError> {
        match self {
            Backend::Memory(memory) => memory.check(crate::service::unix_now()),
            Backend::Redis(redis) => redis.check().await,
        }
    }

    /// A short name for logs: `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::redis::{ErrorKind, RedisError, ServerErrorKind};

    #[test]
    fn an_abort_without_readable_refusals_names_the_usual_cause() {
        let e = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ExecAbort),
            "transaction aborted",
        ));
        let text = redis_summary(&e);
        assert_eq!(text, EXEC_ABORT_HINT);
        assert!(text.contains("OOM") && text.contains("INFO errorstats"));
        assert!(text.len() <= MAX_REDIS_ERROR_BYTES);
    }

    #[test]
    fn echoed_arguments_are_cut() {
        assert_eq!(
            detail_without_args(Some("unknown command 'X', with args beginning with: 'k' ")),
            "unknown command 'X'"
        );
        assert_eq!(detail_without_args(None), "");
    }
}
