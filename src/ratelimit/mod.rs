//! Rate limits enforced by the shared rate-limit service (SPEC §1 step 7):
//! the Envoy RLS v3 messages ([`rls`]) and what a `ShouldRateLimit` answer
//! means for the request ([`interpret`]).
//!
//! The adapter sends [`encode_request`] bytes with `dispatch_grpc_call`,
//! passes the reply bytes to [`decode_response`] and the message to
//! [`interpret`], then carries out the [`RlsVerdict`]: a local 429 with
//! [`RlsVerdict::denial_headers`], or the request continues with
//! [`RlsVerdict::request_headers`] and the response gets
//! [`RlsVerdict::response_headers`]. Nothing here calls the host; the clock
//! comes in as `now`.

pub mod rls;

pub use rls::{
    build_request, decode_response, encode_request, Code, RateLimitResponse, RlsError,
    MAX_RESPONSE_BYTES,
};

use crate::request::HEADER_PREFIX;
use rls::{DescriptorStatus, HeaderValue, Unit};
use std::cmp::Reverse;

/// `Retry-After` (RFC 9110 §10.2.3): seconds the client should wait.
pub const RETRY_AFTER: &str = "retry-after";
/// Requests per window of the limit that decided (IETF draft
/// `ratelimit-headers` -03, as Envoy's `enable_x_ratelimit_headers` names it).
pub const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
/// Requests left in the current window of that limit (0 when over).
pub const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
/// Seconds until that limit's window resets.
pub const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";

/// The longest wait appguard believes from the service: a year (the longest
/// RLS unit). It bounds both `retry-after` and how long an over-limit cache
/// keeps answering locally, whatever `duration_until_reset` says.
pub const MAX_RESET_SECS: u64 = 366 * 86_400;

/// At most this many headers of each list the service asks to add are taken;
/// the rest are skipped (and counted in [`RlsVerdict::skipped_headers`]).
pub const MAX_SERVICE_HEADERS: usize = 32;
/// Header names longer than this are skipped.
pub const MAX_HEADER_NAME_BYTES: usize = 256;
/// Header values longer than this are skipped.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

/// Headers the service may never set, in either direction: they frame the
/// message or the connection, and a wrong value would desynchronise Envoy
/// and the upstream (request smuggling) or the client. Pseudo-headers
/// (`:path`, …) and `x-appguard-*` are refused separately.
const FORBIDDEN_HEADERS: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// The limit that the `x-ratelimit-*` headers describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitState {
    /// `requests_per_unit` of that limit, when the service named one.
    pub limit: Option<u32>,
    /// Hits left in its window (0 when over the limit).
    pub remaining: u32,
    /// Seconds until its window resets, rounded up and capped (at least 1
    /// when over the limit); `None` when the service did not say.
    pub reset_secs: Option<u64>,
}

/// One descriptor that is over its limit, for an over-limit cache that
/// answers 429 locally until the window resets instead of asking the service
/// again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverLimitDescriptor {
    /// Its index in the request's descriptor list (always below the
    /// `descriptor_count` given to [`interpret`]).
    pub index: usize,
    /// Seconds until its window resets (rounded up, at least 1, at most
    /// [`MAX_RESET_SECS`] and the limit unit's window); `None` when the
    /// service did not say, in which case it must not be cached.
    pub reset_secs: Option<u64>,
    /// Its limit's `requests_per_unit`, when the service said it: the
    /// `x-ratelimit-limit` of a 429 answered later from the cache.
    pub limit: Option<u32>,
}

/// What a `ShouldRateLimit` answer means for the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RlsVerdict {
    /// The service's overall answer is `OVER_LIMIT`: deny with 429
    /// `rate_limited`. This is `overall_code`, not the descriptor statuses:
    /// a service in (global) shadow mode reports `OVER_LIMIT` statuses under
    /// an `OK` overall code, and means the request to pass, as Envoy's own
    /// rate-limit filter reads it.
    pub over_limit: bool,
    /// The limit the `x-ratelimit-*` headers describe. When over: the
    /// over-limit status that resets last (the request stays refused until
    /// then), ties going to the smaller `requests_per_unit`, then the first.
    /// When allowed: the status with the fewest hits remaining, the first on
    /// ties (Envoy's rule). `None` when no status qualifies.
    pub quota: Option<LimitState>,
    /// The descriptors over their limit, when [`RlsVerdict::over_limit`]
    /// (empty otherwise: shadow-mode statuses are not cached).
    pub over_limit_descriptors: Vec<OverLimitDescriptor>,
    /// Headers the service asked to add to the response (already checked:
    /// see [`interpret`]), names in lower case.
    pub response_headers: Vec<(String, String)>,
    /// Headers the service asked to add to the upstream request (already
    /// checked), names in lower case.
    pub request_headers: Vec<(String, String)>,
    /// How many headers of either list were refused, for a metric or a log.
    pub skipped_headers: usize,
}

impl RlsVerdict {
    /// The `retry-after` value of a 429, in seconds (at least 1), when over
    /// the limit and the deciding status said when it resets.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if !self.over_limit {
            return None;
        }
        self.quota.and_then(|q| q.reset_secs)
    }

    /// `retry-after` (only when over the limit) and the `x-ratelimit-*`
    /// headers of [`RlsVerdict::quota`]; headers whose value is unknown are
    /// left out. Empty when there is no quota.
    pub fn limit_headers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Some(q) = self.quota else {
            return out;
        };
        if let Some(secs) = self.retry_after_secs() {
            out.push((RETRY_AFTER.to_owned(), secs.to_string()));
        }
        if let Some(limit) = q.limit {
            out.push((X_RATELIMIT_LIMIT.to_owned(), limit.to_string()));
        }
        out.push((X_RATELIMIT_REMAINING.to_owned(), q.remaining.to_string()));
        if let Some(reset) = q.reset_secs {
            out.push((X_RATELIMIT_RESET.to_owned(), reset.to_string()));
        }
        out
    }

    /// Every extra header of the local 429: [`RlsVerdict::limit_headers`],
    /// then the service's response headers except those naming a header
    /// already set (appguard's computed value wins).
    pub fn denial_headers(&self) -> Vec<(String, String)> {
        let mut out = self.limit_headers();
        let ours = out.len();
        for (k, v) in &self.response_headers {
            if !out.iter().take(ours).any(|(n, _)| n == k) {
                out.push((k.clone(), v.clone()));
            }
        }
        out
    }
}

/// Reads a decoded `RateLimitResponse` for a request that sent
/// `descriptor_count` descriptors, at Unix time `now` (seconds).
///
/// - An `overall_code` of `UNKNOWN` (or outside the enum) is an error: the
///   reply does not say whether to allow, so the route's `failure_mode`
///   decides, as for an unreachable service.
/// - `statuses[i]` answers descriptor `i` (RLS v3); statuses beyond
///   `descriptor_count` are ignored.
/// - Durations are rounded up to whole seconds and capped by the limit
///   unit's window and by [`MAX_RESET_SECS`], so a faulty service cannot
///   make an over-limit cache refuse a key for years.
/// - The service's headers are taken only when the name is a valid HTTP
///   token (RFC 9110 §5.1, so no pseudo-headers), is not `x-appguard-*`
///   (the filter's own trusted headers) nor a framing header such as
///   `content-length` or `host`, and the value (`value`, or `raw_value` when
///   `value` is empty) is UTF-8 without control characters other than tab;
///   both within size caps. Anything else is skipped, not an error: one bad
///   header does not turn a clear answer into a failure.
pub fn interpret(
    response: &RateLimitResponse,
    descriptor_count: usize,
    now: u64,
) -> Result<RlsVerdict, RlsError> {
    let over_limit = match Code::try_from(response.overall_code) {
        Ok(Code::Ok) => false,
        Ok(Code::OverLimit) => true,
        Ok(Code::Unknown) | Err(_) => return Err(RlsError::UnknownCode(response.overall_code)),
    };
    let statuses = || response.statuses.iter().take(descriptor_count).enumerate();

    let (quota, over_limit_descriptors) = if over_limit {
        // A 429 always says when to retry (SPEC §4): from the service's
        // duration, else from the end of the status's fixed window (as
        // envoyproxy/ratelimit counts them), else in a second. The status
        // that resets last decides; only the service's own durations are
        // cached (below): the rest is a hint.
        let over: Vec<(usize, &DescriptorStatus, Option<u64>)> = statuses()
            .filter(|(_, s)| s.code() == Code::OverLimit)
            .map(|(i, s)| (i, s, reset_secs(s).map(|r| r.max(1))))
            .collect();
        let hint =
            |s: &DescriptorStatus, reset: Option<u64>| reset.or_else(|| fixed_window_reset(s, now));
        let deciding = over.iter().min_by_key(|(_, s, reset)| {
            (
                Reverse(hint(s, *reset)),
                requests_per_unit(s).unwrap_or(u32::MAX),
            )
        });
        let quota = Some(match deciding {
            Some((_, s, reset)) => LimitState {
                limit: requests_per_unit(s),
                remaining: 0,
                reset_secs: hint(s, *reset).or(Some(1)),
            },
            None => LimitState {
                limit: None,
                remaining: 0,
                reset_secs: Some(1),
            },
        });
        let cached = over
            .iter()
            .map(|&(index, s, reset)| OverLimitDescriptor {
                index,
                reset_secs: reset,
                limit: requests_per_unit(s),
            })
            .collect();
        (quota, cached)
    } else {
        let quota = statuses()
            .filter(|(_, s)| s.current_limit.is_some())
            .min_by_key(|(_, s)| s.limit_remaining)
            .map(|(_, s)| LimitState {
                limit: requests_per_unit(s),
                remaining: s.limit_remaining,
                reset_secs: reset_secs(s),
            });
        (quota, Vec::new())
    };

    let mut skipped = 0;
    let response_headers = service_headers(&response.response_headers_to_add, &mut skipped);
    let request_headers = service_headers(&response.request_headers_to_add, &mut skipped);
    Ok(RlsVerdict {
        over_limit,
        quota,
        over_limit_descriptors,
        response_headers,
        request_headers,
        skipped_headers: skipped,
    })
}

/// For a descriptor sent with a lease: how long (ms, rounded down, less a
/// second when the service answered in whole seconds) the hits it counted
/// surely stay in its current window, and what it said remains of the
/// limit. `None` unless the status is `OK` with a limit and
/// a `duration_until_reset`: without them no lease can be kept (a request
/// the service does not limit needs none; one whose window end is unknown
/// cannot be held safely).
pub fn lease_window(s: &DescriptorStatus) -> Option<(u64, u32)> {
    if s.code() != Code::Ok {
        return None;
    }
    s.current_limit.as_ref()?;
    let d = s.duration_until_reset.as_ref()?;
    let mut ms = d.floor_millis();
    // A whole-second answer (envoyproxy/ratelimit's and appguard-ratelimit's:
    // the unit less the current second's place in it) counts from the start
    // of the service's current second, so the window may end up to a second
    // sooner than it says.
    if d.nanos == 0 {
        ms = ms.saturating_sub(1000);
    }
    Some((
        ms.min(window_secs(s).saturating_mul(1000)),
        s.limit_remaining,
    ))
}

/// The limit the service named for a status; `None` when it named none (no
/// rule of its configuration matched), so no `x-ratelimit-limit` is made up.
fn requests_per_unit(s: &DescriptorStatus) -> Option<u32> {
    s.current_limit.as_ref().map(|l| l.requests_per_unit)
}

/// `duration_until_reset` in whole seconds, rounded up, capped by the unit's
/// window (when known) and by [`MAX_RESET_SECS`].
fn reset_secs(s: &DescriptorStatus) -> Option<u64> {
    let secs = s.duration_until_reset.as_ref()?.ceil_secs();
    Some(secs.min(window_secs(s)))
}

/// Seconds until the end of `s`'s fixed window at `now`, for units whose
/// windows are whole multiples of a second since the epoch (second to
/// day), as envoyproxy/ratelimit and appguard-ratelimit count them: for a
/// service that answers over the limit without `duration_until_reset`.
fn fixed_window_reset(s: &DescriptorStatus, now: u64) -> Option<u64> {
    let unit = Unit::try_from(s.current_limit.as_ref()?.unit).ok()?;
    let w = match unit {
        Unit::Second | Unit::Minute | Unit::Hour | Unit::Day => unit.max_window_secs()?,
        _ => return None,
    };
    Some(w - now % w)
}

/// How long the windows of a status's limit last, in milliseconds, when
/// it names a limit of a known unit (at most [`MAX_RESET_SECS`]): how
/// long a lease's reset asks may have to hold ([`crate::limits::ServiceCache::note_window`]).
pub fn unit_window_ms(s: &DescriptorStatus) -> Option<u64> {
    unit_window_secs(s).map(|w| w.saturating_mul(1000))
}

/// The window of a status's limit unit, when it names a limit of a known
/// unit, at most [`MAX_RESET_SECS`].
fn unit_window_secs(s: &DescriptorStatus) -> Option<u64> {
    s.current_limit
        .as_ref()
        .and_then(|l| Unit::try_from(l.unit).ok())
        .and_then(Unit::max_window_secs)
        .map(|w| w.min(MAX_RESET_SECS))
}

/// The longest a status's window can last: its limit unit's window (when
/// known), at most [`MAX_RESET_SECS`].
fn window_secs(s: &DescriptorStatus) -> u64 {
    unit_window_secs(s).unwrap_or(MAX_RESET_SECS)
}

/// The headers of one list the service asks to add that may be set
/// ([`checked_header`]), of the first [`MAX_SERVICE_HEADERS`]; every other
/// one counts in `skipped`. Skipped, not an error: one bad header does not
/// turn a clear answer into a failure.
fn service_headers(list: &[HeaderValue], skipped: &mut usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        match (i < MAX_SERVICE_HEADERS)
            .then(|| checked_header(h))
            .flatten()
        {
            Some(pair) => out.push(pair),
            None => *skipped += 1,
        }
    }
    out
}

/// The header as `(lower-case name, value)`, or `None` when it must not be
/// set (the rules of [`interpret`]).
fn checked_header(h: &HeaderValue) -> Option<(String, String)> {
    let name = &h.key;
    if name.is_empty()
        || name.len() > MAX_HEADER_NAME_BYTES
        || !name.bytes().all(crate::signing::is_tchar)
    {
        return None;
    }
    let name = name.to_ascii_lowercase();
    if name.starts_with(HEADER_PREFIX) || FORBIDDEN_HEADERS.contains(&name.as_str()) {
        return None;
    }
    let value = if h.value.is_empty() {
        std::str::from_utf8(&h.raw_value).ok()?
    } else {
        h.value.as_str()
    };
    if value.len() > MAX_HEADER_VALUE_BYTES || value.chars().any(|c| c.is_control() && c != '\t') {
        return None;
    }
    Some((name, value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::rls::{DescriptorStatus, Duration, HeaderValue, RateLimit, Unit};
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: u64 = 1_700_000_000;

    fn status(
        code: Code,
        rpu: u32,
        unit: Unit,
        remaining: u32,
        reset: Option<(i64, i32)>,
    ) -> DescriptorStatus {
        DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit {
                name: String::new(),
                requests_per_unit: rpu,
                unit: unit as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: reset.map(|(seconds, nanos)| Duration { seconds, nanos }),
        }
    }

    fn response(code: Code, statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
        RateLimitResponse {
            overall_code: code as i32,
            statuses,
            response_headers_to_add: vec![],
            request_headers_to_add: vec![],
        }
    }

    fn header(key: &str, value: &str) -> HeaderValue {
        HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: vec![],
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ok_answer_allows_and_reports_the_tightest_limit() {
        let r = response(
            Code::Ok,
            vec![
                status(Code::Ok, 100, Unit::Hour, 57, Some((1800, 0))),
                status(Code::Ok, 5, Unit::Minute, 2, Some((41, 300_000_000))),
                DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                },
            ],
        );
        let v = interpret(&r, 3, NOW).unwrap();
        assert!(!v.over_limit);
        assert!(v.over_limit_descriptors.is_empty());
        assert_eq!(v.retry_after_secs(), None);
        assert_eq!(
            v.limit_headers(),
            pairs(&[
                ("x-ratelimit-limit", "5"),
                ("x-ratelimit-remaining", "2"),
                ("x-ratelimit-reset", "42")
            ])
        );
    }

    #[test]
    fn over_limit_gives_429_headers_from_the_status_that_resets_last() {
        let r = response(
            Code::OverLimit,
            vec![
                status(Code::Ok, 100, Unit::Hour, 57, Some((1800, 0))),
                status(Code::OverLimit, 5, Unit::Minute, 0, Some((41, 200_000_000))),
                status(Code::OverLimit, 3, Unit::Hour, 0, Some((120, 0))),
            ],
        );
        let v = interpret(&r, 3, NOW).unwrap();
        assert!(v.over_limit);
        assert_eq!(v.retry_after_secs(), Some(120));
        assert_eq!(
            v.denial_headers(),
            pairs(&[
                ("retry-after", "120"),
                ("x-ratelimit-limit", "3"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "120"),
            ])
        );
        assert_eq!(
            v.over_limit_descriptors,
            vec![
                OverLimitDescriptor {
                    index: 1,
                    reset_secs: Some(42),
                    limit: Some(5)
                },
                OverLimitDescriptor {
                    index: 2,
                    reset_secs: Some(120),
                    limit: Some(3)
                },
            ]
        );
    }

    #[test]
    fn ties_go_to_the_smaller_limit_then_the_first() {
        let r = response(
            Code::OverLimit,
            vec![
                status(Code::OverLimit, 10, Unit::Minute, 0, Some((30, 0))),
                status(Code::OverLimit, 4, Unit::Minute, 0, Some((30, 0))),
                status(Code::OverLimit, 4, Unit::Hour, 0, Some((30, 0))),
            ],
        );
        let v = interpret(&r, 3, NOW).unwrap();
        assert_eq!(v.quota.and_then(|q| q.limit), Some(4));
        let ok = response(
            Code::Ok,
            vec![
                status(Code::Ok, 10, Unit::Minute, 3, Some((30, 0))),
                status(Code::Ok, 4, Unit::Minute, 3, Some((20, 0))),
            ],
        );
        assert_eq!(
            interpret(&ok, 2, NOW).unwrap().quota.and_then(|q| q.limit),
            Some(10)
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        for reset in [Some((0, 0)), Some((0, 1)), Some((-3, 0))] {
            let r = response(
                Code::OverLimit,
                vec![status(Code::OverLimit, 1, Unit::Second, 0, reset)],
            );
            let v = interpret(&r, 1, NOW).unwrap();
            assert_eq!(v.retry_after_secs(), Some(1), "{reset:?}");
            assert_eq!(v.over_limit_descriptors[0].reset_secs, Some(1));
        }
    }

    #[test]
    fn resets_are_capped_by_the_window_and_a_year() {
        let r = response(
            Code::OverLimit,
            vec![
                status(
                    Code::OverLimit,
                    5,
                    Unit::Minute,
                    0,
                    Some((i64::MAX, 999_999_999)),
                ),
                status(Code::OverLimit, 5, Unit::Unknown, 0, Some((i64::MAX, 0))),
            ],
        );
        let v = interpret(&r, 2, u64::MAX - 5).unwrap();
        assert_eq!(v.over_limit_descriptors[0].reset_secs, Some(60));
        assert_eq!(v.over_limit_descriptors[1].reset_secs, Some(MAX_RESET_SECS));
        assert_eq!(v.retry_after_secs(), Some(MAX_RESET_SECS));
    }

    #[test]
    fn over_limit_without_durations_or_statuses() {
        // No duration: not cacheable, but the 429 still says when to
        // retry: at the end of the minute's fixed window.
        let r = response(
            Code::OverLimit,
            vec![status(Code::OverLimit, 5, Unit::Minute, 0, None)],
        );
        let v = interpret(&r, 1, NOW).unwrap();
        assert!(v.over_limit);
        assert_eq!(v.over_limit_descriptors[0].reset_secs, None);
        let left = (60 - NOW % 60).to_string();
        assert_eq!(
            v.limit_headers(),
            pairs(&[
                ("retry-after", &left),
                ("x-ratelimit-limit", "5"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &left)
            ])
        );
        // Two limits over without durations: the one that resets last.
        let r = response(
            Code::OverLimit,
            vec![
                status(Code::OverLimit, 5, Unit::Minute, 0, None),
                status(Code::OverLimit, 100, Unit::Day, 0, None),
            ],
        );
        let v = interpret(&r, 2, NOW).unwrap();
        assert_eq!(v.retry_after_secs(), Some(86_400 - NOW % 86_400));
        assert_eq!(v.quota.and_then(|q| q.limit), Some(100));
        // A unit whose windows are not counted from the epoch: a second.
        let r = response(
            Code::OverLimit,
            vec![status(Code::OverLimit, 5, Unit::Month, 0, None)],
        );
        assert_eq!(interpret(&r, 1, NOW).unwrap().retry_after_secs(), Some(1));
        // One without a duration is taken to reset at the end of its fixed
        // window, and the later reset decides; only the other is cached.
        let r = response(
            Code::OverLimit,
            vec![
                status(Code::OverLimit, 1, Unit::Minute, 0, None),
                status(Code::OverLimit, 9, Unit::Minute, 0, Some((5, 0))),
            ],
        );
        let v = interpret(&r, 2, NOW).unwrap();
        let end_of_minute = 60 - NOW % 60;
        assert!(end_of_minute > 5);
        assert_eq!(v.retry_after_secs(), Some(end_of_minute));
        assert_eq!(v.over_limit_descriptors[0].reset_secs, None);
        assert_eq!(v.over_limit_descriptors[1].reset_secs, Some(5));
        // No statuses at all: still a retry-after, and nothing remains.
        let v = interpret(&response(Code::OverLimit, vec![]), 1, NOW).unwrap();
        assert!(v.over_limit);
        assert_eq!(
            v.denial_headers(),
            pairs(&[
                ("retry-after", "1"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1")
            ])
        );
    }

    #[test]
    fn shadow_mode_statuses_under_ok_are_not_cached() {
        let r = response(
            Code::Ok,
            vec![status(Code::OverLimit, 5, Unit::Minute, 0, Some((10, 0)))],
        );
        let v = interpret(&r, 1, NOW).unwrap();
        assert!(!v.over_limit);
        assert!(v.over_limit_descriptors.is_empty());
        assert_eq!(v.retry_after_secs(), None);
    }

    #[test]
    fn statuses_beyond_the_request_are_ignored() {
        let r = response(
            Code::OverLimit,
            vec![
                status(Code::Ok, 5, Unit::Minute, 4, Some((10, 0))),
                status(Code::OverLimit, 5, Unit::Minute, 0, Some((10, 0))),
            ],
        );
        let v = interpret(&r, 1, NOW).unwrap();
        assert!(v.over_limit);
        assert!(v.over_limit_descriptors.is_empty());
        // Not the ignored status's limit and reset: only the fallback.
        assert_eq!(
            v.quota,
            Some(LimitState {
                limit: None,
                remaining: 0,
                reset_secs: Some(1)
            })
        );
    }

    #[test]
    fn unknown_overall_code_is_an_error() {
        assert_eq!(
            interpret(&response(Code::Unknown, vec![]), 0, NOW),
            Err(RlsError::UnknownCode(0))
        );
        let mut r = response(Code::Ok, vec![]);
        r.overall_code = 7;
        assert_eq!(interpret(&r, 0, NOW), Err(RlsError::UnknownCode(7)));
        assert_eq!(
            decode_response(&[]).and_then(|r| interpret(&r, 0, NOW)),
            Err(RlsError::UnknownCode(0))
        );
    }

    #[test]
    fn service_headers_are_checked() {
        let mut r = response(Code::Ok, vec![]);
        r.request_headers_to_add = vec![
            header("X-Tenant", "acme"),
            header("x-appguard-app", "forged"),
            header("X-AppGuard-Key-Id", "forged"),
            header(":path", "/admin"),
            header(":authority", "evil"),
            header("content-length", "0"),
            header("Transfer-Encoding", "chunked"),
            header("host", "evil"),
            header("bad name", "v"),
            header("", "v"),
            header("x-crlf", "a\r\nx-appguard-app: forged"),
            header("x-nul", "a\0b"),
            header("x-tab", "a\tb"),
            HeaderValue {
                key: "x-raw".into(),
                value: String::new(),
                raw_value: b"raw bytes".to_vec(),
            },
            HeaderValue {
                key: "x-not-utf8".into(),
                value: String::new(),
                raw_value: vec![0xff, 0xfe],
            },
            HeaderValue {
                key: "x-both".into(),
                value: "text".into(),
                raw_value: b"raw".to_vec(),
            },
            header("x-empty", ""),
            header("x-unicode", "café"),
            header(&"x".repeat(MAX_HEADER_NAME_BYTES + 1), "v"),
            header("x-long", &"v".repeat(MAX_HEADER_VALUE_BYTES + 1)),
        ];
        r.response_headers_to_add =
            vec![header("X-AppGuard-Reason", "ok"), header("x-custom", "1")];
        let v = interpret(&r, 0, NOW).unwrap();
        assert_eq!(
            v.request_headers,
            pairs(&[
                ("x-tenant", "acme"),
                ("x-tab", "a\tb"),
                ("x-raw", "raw bytes"),
                ("x-both", "text"),
                ("x-empty", ""),
                ("x-unicode", "café"),
            ])
        );
        assert_eq!(v.response_headers, pairs(&[("x-custom", "1")]));
        assert_eq!(v.skipped_headers, 15);
    }

    /// The service's header values are "UTF-8 without
    /// control characters other than tab" (`interpret`'s contract), and
    /// f5b702c made `claim_to_headers` skip every control character,
    /// C1 included (U+0085 NEL, U+009B CSI), "as the README says". The
    /// service's headers, which reach the same upstream, still let the C1
    /// controls through.
    #[test]
    fn service_headers_skip_c1_controls() {
        let mut r = response(Code::Ok, vec![]);
        r.request_headers_to_add = vec![
            header("x-nel", "a\u{85}x-appguard-app: forged"),
            header("x-csi", "a\u{9b}31m"),
            header("x-ok", "v"),
        ];
        let v = interpret(&r, 0, NOW).unwrap();
        assert_eq!(v.request_headers, pairs(&[("x-ok", "v")]));
        assert_eq!(v.skipped_headers, 2);
    }

    #[test]
    fn service_headers_are_capped_in_number() {
        let mut r = response(Code::Ok, vec![]);
        r.response_headers_to_add = (0..MAX_SERVICE_HEADERS + 5)
            .map(|i| header(&format!("x-h{i}"), "v"))
            .collect();
        let v = interpret(&r, 0, NOW).unwrap();
        assert_eq!(v.response_headers.len(), MAX_SERVICE_HEADERS);
        assert_eq!(v.skipped_headers, 5);
    }

    #[test]
    fn our_values_win_over_the_services_in_a_429() {
        let mut r = response(
            Code::OverLimit,
            vec![status(Code::OverLimit, 5, Unit::Minute, 0, Some((9, 0)))],
        );
        r.response_headers_to_add = vec![
            header("Retry-After", "3600"),
            header("x-ratelimit-policy", "5;w=60"),
        ];
        let v = interpret(&r, 1, NOW).unwrap();
        assert_eq!(
            v.denial_headers(),
            pairs(&[
                ("retry-after", "9"),
                ("x-ratelimit-limit", "5"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "9"),
                ("x-ratelimit-policy", "5;w=60"),
            ])
        );
    }

    #[test]
    fn end_to_end_bytes_to_verdict() {
        let r = response(
            Code::OverLimit,
            vec![status(
                Code::OverLimit,
                2,
                Unit::Second,
                0,
                Some((0, 500_000_000)),
            )],
        );
        let bytes = prost::Message::encode_to_vec(&r);
        let v = decode_response(&bytes)
            .and_then(|r| interpret(&r, 1, NOW))
            .unwrap();
        assert_eq!(v.retry_after_secs(), Some(1));
        assert_eq!(v.over_limit_descriptors[0].index, 0);
    }
}
