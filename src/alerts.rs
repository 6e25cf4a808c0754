//! Denial alerts: when denials of one route and reason exceed a threshold
//! within a window, one JSON POST goes to a webhook through an Envoy cluster.
//!
//! Counting is shared by the workers (shared data, CAS), so an instance
//! sends one alert per route, reason and window — the worker whose increment
//! crosses the threshold is the one that sends it — and at most
//! `max_alerts_per_window` alerts in all per window, so a flood of denials
//! produces a handful of posts, not thousands.
//!
//! That budget is first come, first served: cheap denials (unmatched paths,
//! missing API keys) can spend it at the start of a window, and the alert of
//! the attack that matters would then never be sent. So a route and reason
//! that crosses the threshold after the budget is spent is not dropped: it is
//! marked in a bitset (one bit per route and reason, so no number of cheap
//! pairs can crowd another out), and after the window ends one summary post
//! lists every such pair. An instance therefore posts at most
//! `max_alerts_per_window + 1` times per window, and every pair that crossed
//! the threshold is reported, at the latest about a second after its window.

use serde::Deserialize;

use crate::config::ConfigError;
use crate::decision::Reason;
use crate::store::{self, u32_at, u64_at, SharedStore};

/// `alerts` as written in the configuration; compiled into [`Alerts`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    /// Envoy cluster of the webhook. See [`Alerts::cluster`].
    cluster: String,
    /// `:authority` of the POST, `host[:port]` without a scheme (default:
    /// the cluster name, or an Istio `outbound|…` cluster's host). See
    /// [`Alerts::authority`].
    #[serde(default, deserialize_with = "crate::config::present")]
    authority: Option<String>,
    /// Path of the POST (default `/`). See [`Alerts::path`].
    #[serde(default = "default_path")]
    path: String,
    /// Denials of one route and reason within a window that send an alert
    /// (at least 1, default 100). See [`Alerts::threshold`].
    #[serde(default = "default_threshold")]
    threshold: u32,
    /// The counting window in seconds (1..=86400, default 60). See
    /// [`Alerts::window_seconds`].
    #[serde(default = "default_window")]
    window_seconds: u64,
    /// Alerts posted as they happen per window and instance (at least 1,
    /// default 5). See [`Alerts::max_alerts_per_window`].
    #[serde(default = "default_max")]
    max_alerts_per_window: u32,
    /// Timeout of the POST (1..=60000, default 2000). See
    /// [`Alerts::timeout_ms`].
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    /// Post a summary of the alerts `max_alerts_per_window` held back
    /// (default `true`). See [`Alerts::summarize_suppressed`].
    #[serde(default = "default_summarize")]
    summarize_suppressed: bool,
}

fn default_path() -> String {
    "/".into()
}
fn default_threshold() -> u32 {
    100
}
fn default_window() -> u64 {
    60
}
fn default_max() -> u32 {
    5
}
fn default_timeout() -> u64 {
    2000
}
fn default_summarize() -> bool {
    true
}

/// The alert webhook.
#[derive(Clone, Debug)]
pub struct Alerts {
    /// Envoy cluster of the webhook.
    pub cluster: String,
    /// `:authority` of the POST (default: the cluster name, or the
    /// service host of an Istio `outbound|…` cluster).
    pub authority: String,
    /// Path of the POST.
    pub path: String,
    /// Denials of one route and reason within a window that trigger an alert.
    pub threshold: u32,
    /// The counting window, in seconds.
    pub window_seconds: u64,
    /// Alerts sent at most per window, over all routes and reasons, as they
    /// happen. Pairs that cross the threshold once it is spent are reported
    /// by the summary (see `summarize_suppressed`).
    pub max_alerts_per_window: u32,
    /// Timeout of the POST.
    pub timeout_ms: u64,
    /// After a window in which `max_alerts_per_window` suppressed alerts,
    /// post one summary listing each suppressed route and reason (`true`
    /// by default; `false` drops them, as before this setting existed).
    pub summarize_suppressed: bool,
    /// Route names in configuration order: the suppressed-alert bitset
    /// refers to a route by its position (`_unmatched` first).
    routes: Vec<String>,
    /// Names this configuration's counters in shared data (a digest of
    /// the settings above and the route names; see [`scope_of`]).
    scope: String,
}

/// The part of every shared-data key of an `alerts` configuration that
/// tells it apart from another one in the same VM: several plugins may
/// share a `vm_id`, and with it their shared data. Without it, two
/// configurations with a route of the same name counted their denials in
/// one counter: the one with the higher threshold could take the crossing
/// of the other's, whose alert was then lost, and post its own for the
/// other's traffic. A reload that changes the settings (a lower threshold
/// under a count already past it) starts counting afresh, so it is not
/// silent for the rest of the window either.
fn scope_of(a: &Alerts) -> String {
    let (threshold, window, max, summarize) = (
        a.threshold.to_le_bytes(),
        a.window_seconds.to_le_bytes(),
        a.max_alerts_per_window.to_le_bytes(),
        [u8::from(a.summarize_suppressed)],
    );
    let mut parts: Vec<&[u8]> = vec![
        a.cluster.as_bytes(),
        a.authority.as_bytes(),
        a.path.as_bytes(),
        &threshold,
        &window,
        &max,
        &summarize,
    ];
    parts.extend(a.routes.iter().map(|r| r.as_bytes()));
    store::parts_digest_hex(&parts, 8)
}

/// Validates `alerts`; `routes` are the configured route names, in order.
pub(crate) fn compile(raw: RawAlerts, routes: &[&str]) -> Result<Alerts, ConfigError> {
    crate::config::check_cluster("alerts.cluster", &raw.cluster)?;
    crate::config::check_call_target("alerts", raw.authority.as_deref(), &raw.path)?;
    if raw.threshold == 0 {
        return Err(ConfigError::new("alerts.threshold", "must be at least 1"));
    }
    if raw.window_seconds == 0 || raw.window_seconds > 86_400 {
        return Err(ConfigError::new(
            "alerts.window_seconds",
            "must be 1..=86400",
        ));
    }
    if raw.max_alerts_per_window == 0 {
        return Err(ConfigError::new(
            "alerts.max_alerts_per_window",
            "must be at least 1",
        ));
    }
    if raw.timeout_ms == 0 || raw.timeout_ms > 60_000 {
        return Err(ConfigError::new("alerts.timeout_ms", "must be 1..=60000"));
    }
    let mut alerts = Alerts {
        authority: raw
            .authority
            .unwrap_or_else(|| crate::config::default_authority(&raw.cluster)),
        cluster: raw.cluster,
        path: raw.path,
        threshold: raw.threshold,
        window_seconds: raw.window_seconds,
        max_alerts_per_window: raw.max_alerts_per_window,
        timeout_ms: raw.timeout_ms,
        summarize_suppressed: raw.summarize_suppressed,
        routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        scope: String::new(),
    };
    alerts.scope = scope_of(&alerts);
    Ok(alerts)
}

/// An alert to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Route name (`_unmatched` for requests no route matched).
    pub route: String,
    /// The denial reason.
    pub reason: Reason,
    /// Denials counted in the window when it fired (= the threshold).
    pub count: u32,
    /// Start of the window, seconds since the epoch.
    pub window_start: u64,
}

impl Alert {
    /// The JSON body of the POST. Names and numbers only: no request data.
    pub fn body(&self, a: &Alerts) -> String {
        // Written out (keys in the order serde_json's map gives them): the
        // route is a validated name (`[A-Za-z0-9_-]`, or `_unmatched`) and
        // the rest are codes and numbers, so nothing needs escaping, and
        // the module carries no JSON writer for two alert bodies.
        format!(
            r#"{{"denials":{},"kind":"threshold","reason":"{}","route":"{}","source":"appguard","status":{},"threshold":{},"window_seconds":{},"window_start":{}}}"#,
            self.count,
            self.reason.code(),
            self.route,
            self.reason.status(),
            a.threshold,
            a.window_seconds,
            self.window_start,
        )
    }
}

/// A counter record: window start (u64 seconds) and count (u32),
/// little-endian. A field the record is too short to hold reads as 0
/// (absent: `(0, 0)`, a window long over), so counting starts afresh
/// rather than failing.
fn read_pair(b: Option<&[u8]>) -> (u64, u32) {
    let b = b.unwrap_or(&[]);
    (u64_at(b, 0).unwrap_or(0), u32_at(b, 8).unwrap_or(0))
}

/// A counter record as [`read_pair`] reads it.
fn pair(w: u64, c: u32) -> Vec<u8> {
    let mut v = w.to_le_bytes().to_vec();
    v.extend_from_slice(&c.to_le_bytes());
    v
}

/// Counts one denial; returns the alert to send when this denial is the one
/// that reaches the threshold and the window's alert budget allows it.
pub fn record<S: SharedStore + ?Sized>(
    s: &S,
    a: &Alerts,
    route: &str,
    reason: Reason,
    now: u64,
) -> Option<Alert> {
    let key = format!("appguard/alert/{}/{route}/{}", a.scope, reason.code());
    // `now` was read when the request was evaluated, which can be seconds
    // before it is denied (a rate-limit call in between). A denial decided
    // in a window that has since ended counts in the newer one instead of
    // setting the counters back to the old window, which would reset them
    // and so let a second alert and a second summary through.
    let now_window = now - now % a.window_seconds;
    // More than one window ahead of now: the clock stepped back. That
    // window is not coming back soon, and counting on in it would keep
    // its pairs past their threshold, silent, until the clock caught up.
    let ahead = |w: u64| w > now_window.saturating_add(a.window_seconds);
    let (window, count) = store::update(s, &key, |cur| {
        let (w, c) = read_pair(cur);
        let (w, c) = if w >= now_window && !ahead(w) {
            if c >= a.threshold {
                // Past the threshold: this window's alert is decided, and
                // a higher count is never read. Writing it anyway would
                // make every denial of a flood a contended shared-data
                // write (Envoy locks all shared data for each one).
                return (None, (w, c.saturating_add(1)));
            }
            (w, c.saturating_add(1))
        } else {
            (now_window, 1)
        };
        (Some(pair(w, c)), (w, c))
    })
    .ok()?;
    if count != a.threshold {
        return None;
    }
    let allowed = store::update(s, &format!("appguard/alert-budget/{}", a.scope), |cur| {
        let (w, c) = read_pair(cur);
        let (w, c) = if ahead(w) { (window, 0) } else { (w, c) };
        if w > window {
            // the budget has moved on to a newer window: summarize this one
            return (None, false);
        }
        let c = if w == window { c } else { 0 };
        if c >= a.max_alerts_per_window {
            (None, false)
        } else {
            (Some(pair(window, c + 1)), true)
        }
    })
    .ok()?;
    if !allowed {
        if a.summarize_suppressed {
            mark_suppressed(s, a, route, reason, window);
        }
        return None;
    }
    Some(Alert {
        route: route.to_owned(),
        reason,
        count,
        window_start: window,
    })
}

/// The route and reason pairs of one window whose alert the budget
/// suppressed: posted as one summary once the window is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppressed {
    /// Start of the window, seconds since the epoch.
    pub window_start: u64,
    /// Each pair that reached the threshold after the budget was spent, in
    /// configuration order (`_unmatched` first, reasons in code order).
    pub pairs: Vec<(String, Reason)>,
}

impl Suppressed {
    /// The JSON body of the summary POST. Names and numbers only, as
    /// [`Alert::body`]; each listed pair had `threshold` denials or more.
    pub fn body(&self, a: &Alerts) -> String {
        // Written out as [`Alert::body`] is.
        let pairs: Vec<String> = self
            .pairs
            .iter()
            .map(|(route, reason)| {
                format!(
                    r#"{{"reason":"{}","route":"{route}","status":{}}}"#,
                    reason.code(),
                    reason.status()
                )
            })
            .collect();
        format!(
            r#"{{"kind":"suppressed","max_alerts_per_window":{},"source":"appguard","suppressed":[{}],"threshold":{},"window_seconds":{},"window_start":{}}}"#,
            a.max_alerts_per_window,
            pairs.join(","),
            a.threshold,
            a.window_seconds,
            self.window_start,
        )
    }
}

/// Windows kept unsent at most: normally one (the current window; the past
/// one is taken within a tick). Older ones are dropped only if no worker
/// ticked for several windows.
const MAX_PENDING_WINDOWS: usize = 4;

/// Bits in a window's suppressed-alert bitset: one per (route, reason)
/// pair, route 0 being `_unmatched`.
fn slots(a: &Alerts) -> usize {
    (a.routes.len() + 1) * Reason::ALL.len()
}

/// One key per configuration scope (which covers the route names, so their
/// number too): another configuration never misreads the bitsets this one
/// left.
fn suppressed_key(a: &Alerts) -> String {
    format!("appguard/alert-suppressed/{}", a.scope)
}

/// The suppressed-alert record: the start of the oldest window not yet
/// summarized (windows before it were summarized, so a late mark for one of
/// them goes to this one, keeping one summary per window), then
/// `(window start, bitset)` entries of `8 + ceil(slots / 8)` bytes each.
struct Pending {
    /// Start of the oldest window not summarized yet: a late mark for an
    /// earlier window goes to this one, so each window gets one summary.
    open_from: u64,
    /// (window start, bitset of [`slots`] bits) for each window with suppressed
    /// alerts, oldest first, at most `MAX_PENDING_WINDOWS`.
    entries: Vec<(u64, Vec<u8>)>,
}

/// The suppressed-alert record as stored; absent or too short, empty
/// (alerts are best effort: a lost mark, never a failed request).
fn read_pending(b: Option<&[u8]>, bytes: usize) -> Pending {
    let b = b.unwrap_or(&[]);
    let (Some(open_from), Some(rest)) = (u64_at(b, 0), b.get(8..)) else {
        return Pending {
            open_from: 0,
            entries: Vec::new(),
        };
    };
    let entries = rest
        .chunks_exact(8 + bytes)
        .filter_map(|c| {
            let w = u64_at(c, 0)?;
            Some((w, c.get(8..)?.to_vec()))
        })
        .collect();
    Pending { open_from, entries }
}

/// A suppressed-alert record as [`read_pending`] reads it: `open_from`,
/// then each window's start and bitset, little-endian.
fn write_pending(open_from: u64, entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut v = open_from.to_le_bytes().to_vec();
    for (w, bits) in entries {
        v.extend_from_slice(&w.to_le_bytes());
        v.extend_from_slice(bits);
    }
    v
}

/// Marks (route, reason) as suppressed in `window`, for the summary posted
/// once the window ends. Best effort: a route this configuration does not
/// name, or a store failure, loses the mark. A bit already set is not
/// written again (each write locks all of Envoy's shared data).
fn mark_suppressed<S: SharedStore + ?Sized>(
    s: &S,
    a: &Alerts,
    route: &str,
    reason: Reason,
    window: u64,
) {
    let route_slot = if route == "_unmatched" {
        Some(0)
    } else {
        a.routes.iter().position(|r| r == route).map(|i| i + 1)
    };
    let reason_slot = Reason::ALL.iter().position(|r| *r == reason);
    let (Some(r), Some(q)) = (route_slot, reason_slot) else {
        return;
    };
    let slot = r * Reason::ALL.len() + q;
    let bytes = slots(a).div_ceil(8);
    let (byte, bit) = (slot / 8, 1u8 << (slot % 8));
    // Best effort, like the post itself: a store failure loses the mark.
    let _ = store::update(s, &suppressed_key(a), |cur| {
        let Pending {
            open_from,
            mut entries,
        } = read_pending(cur, bytes);
        // More than one window ahead: the clock stepped back (as for the
        // counters in `record`); marks go to the current window, not to
        // one that would be summarized only once the clock caught up.
        let open_from = if open_from > window.saturating_add(a.window_seconds) {
            window
        } else {
            open_from
        };
        let window = window.max(open_from);
        let at = match entries.iter().position(|(w, _)| *w == window) {
            Some(at) => at,
            None => {
                entries.push((window, vec![0; bytes]));
                entries.sort_by_key(|(w, _)| *w);
                if entries.len() > MAX_PENDING_WINDOWS {
                    entries.remove(0);
                }
                match entries.iter().position(|(w, _)| *w == window) {
                    Some(at) => at,
                    // older than every kept window: nothing to mark
                    None => return (None, ()),
                }
            }
        };
        match entries.get_mut(at).and_then(|(_, bits)| bits.get_mut(byte)) {
            Some(b) if *b & bit == 0 => {
                *b |= bit;
                (Some(write_pending(open_from, &entries)), ())
            }
            _ => (None, ()),
        }
    });
}

/// Takes the suppressed pairs of the windows that have ended, for one
/// summary post each; the worker whose write wins takes them, so each
/// summary is sent once per instance. Called from the tick.
pub fn take_suppressed<S: SharedStore + ?Sized>(s: &S, a: &Alerts, now: u64) -> Vec<Suppressed> {
    let window = now - now % a.window_seconds;
    let bytes = slots(a).div_ceil(8);
    // A window more than one ahead of now was marked before the clock
    // stepped back: summarized now rather than once the clock caught up.
    let ended = |w: u64| w < window || w > window.saturating_add(a.window_seconds);
    let Some((cur, _)) = s.get(&suppressed_key(a)) else {
        // The common case, read without a write: nothing was suppressed.
        return Vec::new();
    };
    if !read_pending(Some(&cur), bytes)
        .entries
        .iter()
        .any(|(w, _)| ended(*w))
    {
        return Vec::new();
    }
    let ended = store::update(s, &suppressed_key(a), |cur| {
        let pending = read_pending(cur, bytes);
        let (gone, kept): (Vec<_>, Vec<_>) =
            pending.entries.into_iter().partition(|(w, _)| ended(*w));
        if gone.is_empty() {
            (None, gone)
        } else {
            let open_from = if pending.open_from > window.saturating_add(a.window_seconds) {
                window
            } else {
                pending.open_from.max(window)
            };
            (Some(write_pending(open_from, &kept)), gone)
        }
    })
    .unwrap_or_default();
    ended
        .into_iter()
        .map(|(w, bits)| Suppressed {
            window_start: w,
            pairs: (0..slots(a))
                .filter(|i| bits.get(i / 8).is_some_and(|b| b & (1u8 << (i % 8)) != 0))
                .filter_map(|i| {
                    let reason = *Reason::ALL.get(i % Reason::ALL.len())?;
                    let route = match i / Reason::ALL.len() {
                        0 => "_unmatched",
                        r => a.routes.get(r - 1)?.as_str(),
                    };
                    Some((route.to_owned(), reason))
                })
                .collect(),
        })
        .filter(|x| !x.pairs.is_empty())
        .collect()
}

/// How many times one alert (or summary) post is tried in all: the first
/// post and two more. A webhook that is briefly down (a deploy, a 503 from
/// its load balancer, an Envoy timeout) would otherwise lose the alert of
/// the attack it was configured for, which alerts again only in the next
/// window, if the attack lasts that long.
pub const ALERT_ATTEMPTS: u8 = 3;

/// Most posts one worker keeps waiting to be tried again: past it the
/// oldest is given up (and logged), so that a webhook down for long does
/// not make the queue grow.
pub const MAX_RETRIES_QUEUED: usize = 32;

/// The longest wait a webhook's `Retry-After` is followed for: an alert is
/// about an attack going on now, and one posted a quarter of an hour late
/// helps no one; a webhook that asks for more is given up on (and the log
/// says it asked). Within it, a post that asked for 6 minutes of a
/// 5-minute window still reaches the webhook.
pub const MAX_RETRY_AFTER_SECONDS: u64 = 900;

/// In how many seconds a post that ended with `status` (0: no answer, or
/// no usable one) on its `attempt`-th try (1 for the first) is tried
/// again; `None` to stop: it was taken (2xx), refused as it is (a 4xx
/// other than 408 and 429: the same body would be refused again), or it
/// has had its [`ALERT_ATTEMPTS`]. Waits 2 s, then 4 s: posts go out from
/// the root's tick, about once a second. See [`next_try`] for a webhook
/// that says when to come back.
pub fn retry_in(status: u16, attempt: u8) -> Option<u64> {
    let transient = matches!(status, 0 | 408 | 429) || status >= 500;
    (transient && attempt < ALERT_ATTEMPTS).then(|| 2u64 << attempt.saturating_sub(1).min(8))
}

/// What becomes of a post the webhook did not take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTry {
    /// Tried again in this many seconds.
    In(u64),
    /// Not again: taken, refused as it is, or tried [`ALERT_ATTEMPTS`]
    /// times (see [`retry_in`]).
    Never,
    /// Not again: the webhook asked to wait this many seconds, more than
    /// [`MAX_RETRY_AFTER_SECONDS`].
    AskedTooLong(u64),
}

/// [`retry_in`], with the webhook's `Retry-After` (`retry_after`, seconds
/// from now, see [`retry_after_seconds`]) followed where RFC 9110 §10.2.3
/// and RFC 6585 §4 give it a meaning, a 429 or a 503: such a webhook (a
/// chat service throttling a channel, a load balancer during a deploy)
/// refuses a post that comes back sooner, and each early try spends one
/// of the three. It only ever waits longer than [`retry_in`]'s 2 s and
/// 4 s, never shorter. (Envoy's own 503, for a webhook it cannot reach,
/// has none.)
pub fn next_try(status: u16, attempt: u8, retry_after: Option<u64>) -> NextTry {
    let Some(wait) = retry_in(status, attempt) else {
        return NextTry::Never;
    };
    match retry_after.filter(|_| matches!(status, 429 | 503)) {
        Some(asked) if asked > MAX_RETRY_AFTER_SECONDS => NextTry::AskedTooLong(asked),
        Some(asked) => NextTry::In(wait.max(asked)),
        None => NextTry::In(wait),
    }
}

/// The seconds from `now` (seconds since the epoch) that a `Retry-After`
/// value asks for (RFC 9110 §10.2.3): delay-seconds (digits alone), or an
/// HTTP-date in the IMF-fixdate form every sender must use
/// (`Sun, 06 Nov 1994 08:49:37 GMT`; a date already past is 0). Seconds
/// past what a `u64` holds are `u64::MAX`. `None` for anything else (the obsolete date forms included), which then
/// counts as no `Retry-After`.
pub fn retry_after_seconds(value: &str, now: u64) -> Option<u64> {
    let value = value.trim_matches([' ', '\t']);
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than a u64 holds is a very long wait all the same.
        return Some(value.parse().unwrap_or(u64::MAX));
    }
    imf_fixdate(value).map(|at| at.saturating_sub(now))
}

/// Seconds since the epoch of an IMF-fixdate (RFC 9110 §5.6.7), checked
/// field by field: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn imf_fixdate(s: &str) -> Option<u64> {
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    // Bytes, not `str` slices: a value of other characters has other
    // boundaries, and is refused below anyway.
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<u64> {
        b[from..from + len].iter().try_fold(0u64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
        })
    };
    let separators = [(7, b' '), (11, b' '), (16, b' '), (19, b':'), (22, b':')];
    if !DAYS.contains(&&b[..3]) || separators.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == &b[8..11])? as u64 + 1;
    let (day, year) = (num(5, 2)?, num(12, 4)?);
    let (hour, minute, second) = (num(17, 2)?, num(20, 2)?, num(23, 2)?);
    if !(1..=31).contains(&day) || year < 1970 || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm), years from March.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// A post waiting to be tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The second from which it is due.
    pub due: u64,
    /// The second it was queued at: a clock read before it was set back
    /// since, and the post is due then (see [`RetryQueue::take_due`]).
    pub queued: u64,
    /// How many times it was tried already.
    pub attempts: u8,
    /// The JSON body, as first posted (the same alert, not a new count).
    pub body: String,
    /// What it is, for the log (`alert route=… reason=… denials=…`).
    pub what: String,
}

/// One worker's posts waiting to be tried again (see [`retry_in`]), at
/// most [`MAX_RETRIES_QUEUED`].
#[derive(Debug, Default)]
pub struct RetryQueue {
    /// In the order they failed.
    waiting: std::collections::VecDeque<Retry>,
}

impl RetryQueue {
    /// Queues `retry`; when the queue was full, gives up the oldest post
    /// and returns it (for the log).
    pub fn push(&mut self, retry: Retry) -> Option<Retry> {
        let dropped = if self.waiting.len() >= MAX_RETRIES_QUEUED {
            self.waiting.pop_front()
        } else {
            None
        };
        self.waiting.push_back(retry);
        dropped
    }

    /// Takes the posts due at `now`, oldest first. One queued after `now`
    /// was queued before the clock was set back: it waits what it had
    /// left to wait from now, not until the clock has caught up (an
    /// hour's step held it an hour late), nor less (a webhook's
    /// `Retry-After` holds).
    pub fn take_due(&mut self, now: u64) -> Vec<Retry> {
        for r in self.waiting.iter_mut().filter(|r| now < r.queued) {
            r.due = now.saturating_add(r.due.saturating_sub(r.queued));
            r.queued = now;
        }
        let (due, waiting): (std::collections::VecDeque<Retry>, _) =
            std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|r| r.due <= now);
        self.waiting = waiting;
        due.into()
    }

    /// How many posts wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_post_is_tried_again_only_when_the_webhook_may_take_it_later() {
        // No answer, a timeout, throttling, a server error: again, after
        // 2 s and 4 s, three tries in all.
        for status in [0, 408, 429, 500, 502, 503, 504] {
            assert_eq!(retry_in(status, 1), Some(2), "{status}");
            assert_eq!(retry_in(status, 2), Some(4), "{status}");
            assert_eq!(retry_in(status, 3), None, "{status}: three tries");
        }
        // Taken, or refused as it is: never again.
        for status in [200, 201, 204, 400, 401, 403, 404, 413, 422] {
            assert_eq!(retry_in(status, 1), None, "{status}");
        }
    }

    #[test]
    fn a_throttling_webhook_is_left_alone_as_long_as_it_asks() {
        // 429 and 503 say when to come back; never sooner than usual.
        assert_eq!(next_try(429, 1, Some(30)), NextTry::In(30));
        assert_eq!(next_try(503, 2, Some(120)), NextTry::In(120));
        assert_eq!(next_try(503, 1, Some(1)), NextTry::In(2), "never sooner");
        assert_eq!(next_try(429, 2, Some(0)), NextTry::In(4), "never sooner");
        assert_eq!(next_try(429, 1, None), NextTry::In(2));
        assert_eq!(
            next_try(429, 1, Some(MAX_RETRY_AFTER_SECONDS)),
            NextTry::In(MAX_RETRY_AFTER_SECONDS)
        );
        assert_eq!(
            next_try(429, 1, Some(MAX_RETRY_AFTER_SECONDS + 1)),
            NextTry::AskedTooLong(MAX_RETRY_AFTER_SECONDS + 1)
        );
        // Other statuses give Retry-After no meaning for a retry.
        assert_eq!(next_try(500, 1, Some(30)), NextTry::In(2));
        assert_eq!(next_try(0, 1, Some(30)), NextTry::In(2));
        // It does not make a post tried more often, nor a refused one again.
        assert_eq!(next_try(429, ALERT_ATTEMPTS, Some(30)), NextTry::Never);
        assert_eq!(next_try(404, 1, Some(30)), NextTry::Never);
        assert_eq!(next_try(200, 1, Some(30)), NextTry::Never);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = 1_796_564_700; // Sun, 06 Dec 2026 13:45:00 GMT
        assert_eq!(retry_after_seconds("120", now), Some(120));
        assert_eq!(retry_after_seconds(" 7\t", now), Some(7));
        assert_eq!(retry_after_seconds("0", now), Some(0));
        assert_eq!(
            retry_after_seconds("99999999999999999999", now),
            Some(u64::MAX),
            "a wait too long to count is too long"
        );
        assert_eq!(
            retry_after_seconds("Sun, 06 Dec 2026 13:46:30 GMT", now),
            Some(90)
        );
        assert_eq!(
            retry_after_seconds("Sun, 06 Dec 2026 13:45:00 GMT", now),
            Some(0)
        );
        assert_eq!(
            retry_after_seconds("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(0),
            "a date past is now"
        );
        assert_eq!(
            imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            imf_fixdate("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        assert_eq!(imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        for bad in [
            "",
            "-1",
            "1.5",
            "+30",
            "30s",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 gmt",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nox 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08-49-37 GMT",
            "Sun, 06 Nov 19+4 08:49:37 GMT",
            "\u{e9}xxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "Sun, 06 Nov 1994 08:49:37 G\u{e9}",
        ] {
            assert_eq!(retry_after_seconds(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn the_retry_queue_hands_out_what_is_due_and_stays_bounded() {
        let retry = |due: u64, n: usize| Retry {
            due,
            queued: 0,
            attempts: 1,
            body: format!("{{\"n\":{n}}}"),
            what: format!("alert {n}"),
        };
        let mut q = RetryQueue::default();
        assert!(q.push(retry(12, 0)).is_none());
        assert!(q.push(retry(10, 1)).is_none());
        assert_eq!(q.take_due(9), vec![]);
        assert_eq!(q.take_due(10), vec![retry(10, 1)]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.take_due(20), vec![retry(12, 0)]);
        assert!(q.is_empty());
        for n in 0..MAX_RETRIES_QUEUED {
            assert!(q.push(retry(30, n)).is_none());
        }
        assert_eq!(q.push(retry(30, 99)), Some(retry(30, 0)), "the oldest goes");
        assert_eq!(q.len(), MAX_RETRIES_QUEUED);
    }

    #[test]
    fn a_retry_is_not_held_back_by_a_clock_set_back() {
        // Failed at 10,000 s and due 2 s or 15 minutes later (a webhook's
        // `Retry-After`); the clock is then set back (NTP, a VM restored).
        // Each waits what it had left to wait from the step on: not as long
        // as the step, nor less than asked.
        let retry = |due: u64, queued: u64| Retry {
            due,
            queued,
            attempts: 1,
            body: "{}".into(),
            what: "alert".into(),
        };
        let late = 10_000 + MAX_RETRY_AFTER_SECONDS;
        let mut q = RetryQueue::default();
        q.push(retry(10_002, 10_000));
        q.push(retry(late, 10_000));
        assert_eq!(q.take_due(10_000), vec![]);
        assert_eq!(q.take_due(10_002), vec![retry(10_002, 10_000)]);
        let back = 10_000 - 3_600;
        assert_eq!(q.take_due(back), vec![]);
        assert_eq!(q.take_due(back + MAX_RETRY_AFTER_SECONDS - 1), vec![]);
        assert_eq!(
            q.take_due(back + MAX_RETRY_AFTER_SECONDS),
            vec![retry(back + MAX_RETRY_AFTER_SECONDS, back)]
        );
        // Set back by a second: the Retry-After still holds.
        q.push(retry(10_600, 10_000));
        assert_eq!(q.take_due(9_999), vec![]);
        assert_eq!(q.take_due(10_598), vec![]);
        assert_eq!(q.take_due(10_599), vec![retry(10_599, 9_999)]);
        assert!(q.is_empty());
    }
    use crate::store::MemStore;

    fn alerts(threshold: u32, max: u32) -> Alerts {
        let mut a = Alerts {
            cluster: "hook".into(),
            authority: "hook".into(),
            path: "/".into(),
            threshold,
            window_seconds: 60,
            max_alerts_per_window: max,
            timeout_ms: 100,
            summarize_suppressed: true,
            routes: vec!["keyed".into(), "api".into(), "sms".into()],
            scope: String::new(),
        };
        a.scope = scope_of(&a);
        a
    }

    #[test]
    fn one_alert_per_route_reason_and_window_within_the_budget() {
        let s = MemStore::default();
        let a = alerts(3, 2);
        let fired: Vec<_> = (0..10)
            .filter_map(|_| record(&s, &a, "sms", Reason::IpDenied, 120))
            .collect();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].count, 3);
        assert_eq!(fired[0].window_start, 120);
        // another reason fires too; a third pair is over the window budget
        assert_eq!(
            (0..5)
                .filter_map(|_| record(&s, &a, "sms", Reason::TokenSignature, 130))
                .count(),
            1
        );
        assert_eq!(
            (0..5)
                .filter_map(|_| record(&s, &a, "api", Reason::TokenSignature, 130))
                .count(),
            0
        );
        // next window: counting and budget restart
        assert_eq!(
            (0..5)
                .filter_map(|_| record(&s, &a, "sms", Reason::IpDenied, 180))
                .count(),
            1
        );
        let body = fired[0].body(&a);
        assert!(body.contains("\"reason\":\"ip_denied\"") && body.contains("\"route\":\"sms\""));
    }

    #[test]
    fn alert_bodies_are_the_json_documented() {
        let a = alerts(3, 2);
        let alert = Alert {
            route: "sms".into(),
            reason: Reason::IpDenied,
            count: 3,
            window_start: 1_700_000_040,
        };
        let body: serde_json::Value = serde_json::from_str(&alert.body(&a)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "source": "appguard", "kind": "threshold", "route": "sms",
                "reason": "ip_denied", "status": 403, "denials": 3, "threshold": 3,
                "window_seconds": a.window_seconds, "window_start": 1_700_000_040u64,
            })
        );
        let summary = Suppressed {
            window_start: 1_700_000_040,
            pairs: vec![
                ("_unmatched".into(), Reason::RouteDenied),
                ("sms".into(), Reason::RateLimited),
            ],
        };
        let body: serde_json::Value = serde_json::from_str(&summary.body(&a)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "source": "appguard", "kind": "suppressed",
                "suppressed": [
                    {"route": "_unmatched", "reason": "route_denied", "status": 403},
                    {"route": "sms", "reason": "rate_limited", "status": 429},
                ],
                "threshold": 3, "max_alerts_per_window": 2,
                "window_seconds": a.window_seconds, "window_start": 1_700_000_040u64,
            })
        );
        let none = Suppressed {
            window_start: 1,
            pairs: Vec::new(),
        };
        let body: serde_json::Value = serde_json::from_str(&none.body(&a)).unwrap();
        assert_eq!(body["suppressed"], serde_json::json!([]));
    }

    #[test]
    fn a_clock_step_back_does_not_silence_alerts_until_it_catches_up() {
        // Counted in the window at 1 hour, then the clock steps back to
        // 120 s: the pair alerts again in the window it is now in, and the
        // budget of the "future" window does not hold it back.
        let s = MemStore::default();
        let a = alerts(3, 1);
        assert_eq!(cross(&s, &a, "sms", Reason::IpDenied, 3_600).len(), 1);
        let fired = cross(&s, &a, "sms", Reason::IpDenied, 120);
        assert_eq!(fired.len(), 1, "alerted again after the step");
        assert_eq!(fired[0].window_start, 120);
        // A denial decided a few seconds before its window ended still
        // counts in the newer window, as before.
        let s = MemStore::default();
        assert_eq!(cross(&s, &a, "api", Reason::IpDenied, 180).len(), 1);
        assert!(record(&s, &a, "api", Reason::IpDenied, 179).is_none());
    }

    #[test]
    fn two_configurations_in_one_vm_count_apart() {
        // Two plugins share a vm_id, so their shared data; both have a
        // route `sms`. Each must alert at its own threshold, from its own
        // denials, within its own budget.
        let s = MemStore::default();
        let high = alerts(100, 1);
        let low = alerts(10, 1);
        assert_ne!(high.scope, low.scope);
        for _ in 0..9 {
            assert!(record(&s, &high, "sms", Reason::PhoneDenied, 120).is_none());
        }
        let fired = cross(&s, &low, "sms", Reason::PhoneDenied, 120);
        assert_eq!(fired.len(), 1, "the low threshold's own 10 denials");
        assert_eq!(fired[0].count, 10);
        // the low one's budget (1) is spent; the high one's is not
        let fired = (0..91)
            .filter_map(|_| record(&s, &high, "sms", Reason::PhoneDenied, 120))
            .count();
        assert_eq!(fired, 1, "the high threshold's alert at its 100th denial");
        // A reload to a lower threshold, past which the window's count
        // already is: it counts afresh, and alerts.
        let mut lowered = alerts(100, 1);
        lowered.threshold = 50;
        lowered.scope = scope_of(&lowered);
        assert_eq!(
            cross(&s, &lowered, "sms", Reason::PhoneDenied, 130).len(),
            1
        );
        // the same settings: the same counters
        assert_eq!(alerts(100, 1).scope, high.scope);
    }

    #[test]
    fn a_pair_past_its_threshold_is_not_written_again_in_its_window() {
        // A flood of one cheap denial: once the window's alert is decided,
        // further denials only read the counter, so that the workers do
        // not contend on a shared-data write per denial.
        let s = MemStore::default();
        let a = alerts(3, 2);
        let key = &format!("appguard/alert/{}/sms/ip_denied", a.scope);
        let fired = (0..50)
            .filter_map(|_| record(&s, &a, "sms", Reason::IpDenied, 120))
            .count();
        assert_eq!(fired, 1);
        let (stored, cas) = s.get(key).unwrap();
        assert_eq!(read_pair(Some(&stored)), (120, 3));
        assert!(record(&s, &a, "sms", Reason::IpDenied, 121).is_none());
        assert_eq!(s.get(key).unwrap().1, cas, "written past the threshold");
        // the next window counts again from 1, and alerts again
        assert_eq!(cross(&s, &a, "sms", Reason::IpDenied, 180).len(), 1);
        assert_eq!(read_pair(s.get(key).map(|v| v.0).as_deref()), (180, 3));
    }

    #[test]
    fn summaries_follow_the_clock_after_it_steps_back() {
        // One alert and one suppressed pair in the window of 36,000, summarized;
        // then the clock steps back an hour. The suppressed pair of the window
        // of 32,400 is summarized when that window ends, not an hour later.
        let s = MemStore::default();
        let a = alerts(1, 1);
        assert!(record(&s, &a, "api", Reason::RouteDenied, 36_000).is_some());
        assert!(record(&s, &a, "sms", Reason::RouteDenied, 36_001).is_none());
        assert_eq!(take_suppressed(&s, &a, 36_060).len(), 1);
        assert!(record(&s, &a, "api", Reason::RouteDenied, 32_400).is_some());
        assert!(record(&s, &a, "sms", Reason::RouteDenied, 32_401).is_none());
        assert_eq!(
            take_suppressed(&s, &a, 32_459),
            vec![],
            "the window is open"
        );
        let due = take_suppressed(&s, &a, 32_460);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].window_start, 32_400);
        assert_eq!(take_suppressed(&s, &a, 36_120), vec![], "summarized once");
        // A mark filed ahead of the clock before a step back (a window the
        // clock has not reached) is summarized at the next tick.
        let s = MemStore::default();
        assert!(record(&s, &a, "api", Reason::RouteDenied, 36_000).is_some());
        assert!(record(&s, &a, "sms", Reason::RouteDenied, 36_001).is_none());
        let due = take_suppressed(&s, &a, 32_400);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].window_start, 36_000);
    }

    /// Drives one pair to its threshold; the alert if one was sent.
    fn cross(s: &MemStore, a: &Alerts, route: &str, reason: Reason, now: u64) -> Vec<Alert> {
        (0..a.threshold)
            .filter_map(|_| record(s, a, route, reason, now))
            .collect()
    }

    #[test]
    fn cheap_denials_spending_the_budget_cannot_hide_the_alert_of_another_pair() {
        // The review's attack: five cheap denial kinds cross the threshold at
        // the start of the window and spend the default budget of 5; the
        // phone_denied and rate_limited denials of the SMS route come next.
        let s = MemStore::default();
        let a = alerts(3, 5);
        let cheap = [
            ("_unmatched", Reason::RouteDenied),
            ("keyed", Reason::ApiKeyMissing),
            ("api", Reason::ApiKeyMissing),
            ("api", Reason::TokenMissing),
            ("sms", Reason::ApiKeyMissing),
        ];
        for (route, reason) in cheap {
            assert_eq!(
                cross(&s, &a, route, reason, 600).len(),
                1,
                "{route} {reason:?}"
            );
        }
        assert!(cross(&s, &a, "sms", Reason::PhoneDenied, 601).is_empty());
        assert!(cross(&s, &a, "sms", Reason::RateLimited, 602).is_empty());
        // more of the same do not add entries, and nothing is due yet
        assert!(cross(&s, &a, "sms", Reason::PhoneDenied, 603).is_empty());
        assert_eq!(take_suppressed(&s, &a, 659), vec![]);
        // the window is over: one summary names both, once
        let due = take_suppressed(&s, &a, 660);
        assert_eq!(
            due,
            vec![Suppressed {
                window_start: 600,
                pairs: vec![
                    ("sms".into(), Reason::PhoneDenied),
                    ("sms".into(), Reason::RateLimited)
                ],
            }]
        );
        assert_eq!(take_suppressed(&s, &a, 661), vec![]);
        let body: serde_json::Value = serde_json::from_str(&due[0].body(&a)).unwrap_or_default();
        assert_eq!(body["kind"], "suppressed");
        assert_eq!(body["window_start"], 600);
        assert_eq!(body["suppressed"][0]["route"], "sms");
        assert_eq!(body["suppressed"][0]["reason"], "phone_denied");
        assert_eq!(body["suppressed"][0]["status"], 403);
        assert_eq!(body["suppressed"][1]["reason"], "rate_limited");
    }

    #[test]
    fn every_suppressed_pair_is_in_the_one_summary_of_its_window() {
        // However many pairs the attacker drives over the threshold, the
        // webhook gets max_alerts_per_window alerts and one summary, and the
        // summary has room for every pair (one bit each).
        let s = MemStore::default();
        let a = alerts(1, 2);
        let mut sent = 0;
        for route in ["_unmatched", "keyed", "api", "sms"] {
            for reason in Reason::ALL {
                sent += cross(&s, &a, route, reason, 60).len();
            }
        }
        assert_eq!(sent, 2);
        let due = take_suppressed(&s, &a, 120);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].pairs.len(), 4 * Reason::ALL.len() - 2);
        assert!(due[0]
            .pairs
            .contains(&("sms".into(), Reason::JwksUnavailable)));
        assert_eq!(take_suppressed(&s, &a, 120), vec![]);
        // the next window's budget and summary are its own
        assert_eq!(cross(&s, &a, "sms", Reason::PhoneDenied, 120).len(), 1);
        assert_eq!(take_suppressed(&s, &a, 180), vec![]);
    }

    #[test]
    fn summaries_off_drop_suppressed_alerts_as_before() {
        let s = MemStore::default();
        let a = Alerts {
            summarize_suppressed: false,
            ..alerts(1, 1)
        };
        assert_eq!(cross(&s, &a, "keyed", Reason::ApiKeyMissing, 60).len(), 1);
        assert!(cross(&s, &a, "sms", Reason::PhoneDenied, 60).is_empty());
        assert_eq!(take_suppressed(&s, &a, 120), vec![]);
    }

    #[test]
    fn pending_summaries_stay_bounded_and_ignore_unknown_routes() {
        let s = MemStore::default();
        let a = alerts(1, 1);
        // ten windows pass without a tick taking their summaries
        for w in 0..10 {
            let now = w * 60;
            assert_eq!(cross(&s, &a, "keyed", Reason::ApiKeyMissing, now).len(), 1);
            assert!(cross(&s, &a, "sms", Reason::PhoneDenied, now).is_empty());
            assert!(cross(&s, &a, "renamed", Reason::PhoneDenied, now).is_empty());
        }
        let stored = s.get(&suppressed_key(&a)).map_or(0, |(v, _)| v.len());
        assert_eq!(
            stored,
            8 + MAX_PENDING_WINDOWS * (8 + slots(&a).div_ceil(8))
        );
        let due = take_suppressed(&s, &a, 600);
        let windows: Vec<u64> = due.iter().map(|x| x.window_start).collect();
        assert_eq!(windows, vec![360, 420, 480, 540]);
        assert!(due
            .iter()
            .all(|x| x.pairs == vec![("sms".to_owned(), Reason::PhoneDenied)]));
        // a stored value of another shape is read as nothing, not a panic
        let _ = s.set(&suppressed_key(&a), &[1, 2, 3], 0);
        assert_eq!(take_suppressed(&s, &a, 660), vec![]);
    }

    #[test]
    fn a_denial_decided_before_the_window_turned_counts_in_the_new_one() {
        // Requests that waited on the rate-limit service are denied with
        // the `now` of their evaluation, possibly in the last window.
        let s = MemStore::default();
        let a = alerts(3, 1);
        assert!(record(&s, &a, "sms", Reason::RateLimited, 120).is_none());
        assert!(record(&s, &a, "sms", Reason::RateLimited, 121).is_none());
        // late: does not reset the window's count to 1, it is the third
        let fired = record(&s, &a, "sms", Reason::RateLimited, 119);
        assert_eq!(fired.map(|x| (x.count, x.window_start)), Some((3, 120)));
    }

    #[test]
    fn a_late_suppressed_pair_joins_the_next_summary_not_a_second_one() {
        let s = MemStore::default();
        let a = alerts(1, 1);
        assert_eq!(cross(&s, &a, "keyed", Reason::ApiKeyMissing, 60).len(), 1);
        assert!(cross(&s, &a, "sms", Reason::PhoneDenied, 61).is_empty());
        let due = take_suppressed(&s, &a, 120);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].window_start, 60);
        // a pair of window 60 suppressed after its summary was taken
        assert!(cross(&s, &a, "sms", Reason::RateLimited, 119).is_empty());
        assert_eq!(take_suppressed(&s, &a, 121), vec![]);
        assert_eq!(
            take_suppressed(&s, &a, 180),
            vec![Suppressed {
                window_start: 120,
                pairs: vec![("sms".into(), Reason::RateLimited)],
            }]
        );
    }
}
