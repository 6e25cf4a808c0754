//! Structured logs on stderr.
//!
//! `json` (the default) writes one object per line:
//! `{"ts":"2024-01-01T00:00:00.000000Z","level":"info","msg":"…","target":"…","fields":{…}}`.
//! `text` writes tracing-subscriber's plain format, for people.
//!
//! Request descriptor values (which may be hashed identifiers of people or
//! keys) are only logged at `debug`.
//!
//! Text a caller chooses (the request's `domain`, the keys of a `limit`
//! override) goes through [`safe_text`] before it is logged: bounded and
//! with no raw control character, so a request cannot write a huge line
//! or a forged one (a newline) in either format. Lines written once per
//! request (over limit, invalid request, store failure) go through a
//! [`LineThrottle`], so a flood of such requests cannot flood the logs.

use std::fmt;
use std::fmt::Write as _;
use std::sync::Mutex;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The level or filter directive is not valid.
    #[error("invalid log level '{0}': {1}")]
    Filter(String, String),
    /// A global logger was already installed.
    #[error("logging already initialised: {0}")]
    Init(String),
}

/// The HTTP/2 and HTTP libraries whose lines are capped at `error` unless
/// the operator's filter names them (see [`filter_directives`]): they log
/// per connection (h2 warns once for every connection that sends rapid
/// resets), outside the service's per-request [`LineThrottle`], so one
/// client opening connections fast could write thousands of lines a second
/// and bury the service's own warnings.
pub const QUIETED_TARGETS: &[&str] = &["h2", "hyper", "hyper_util"];

/// Whether the `EnvFilter` directive list `level` names `target` (the
/// target itself or a module under it: `h2`, `h2::proto=debug`), so that
/// the operator's own level for it stands.
fn names_target(level: &str, target: &str) -> bool {
    level.split(',').any(|directive| {
        // `target[span{field=value}]=level`: the target ends at `[` or `=`.
        let named = directive.split(['[', '=']).next().unwrap_or("").trim();
        named == target
            || named
                .strip_prefix(target)
                .is_some_and(|rest| rest.starts_with("::"))
    })
}

/// The level a directive list gives every target it does not name (its
/// last bare `error` … `trace` or `off`), `None` when it gives none: then
/// `EnvFilter` logs nothing of the targets it does not name.
fn global_level(level: &str) -> Option<String> {
    level
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .rfind(|d| ["off", "error", "warn", "info", "debug", "trace"].contains(&d.as_str()))
}

/// The filter the logger uses for the operator's `level`: `level` itself,
/// followed by `<target>=error` for each of [`QUIETED_TARGETS`] it does
/// not name. `info` becomes `info,h2=error,hyper=error,hyper_util=error`;
/// `info,h2=warn` keeps h2's warnings (and quiets only the others). A
/// filter that logs nothing of unnamed targets (`off`, or only named
/// targets such as `appguard_ratelimit=debug`) stays as it is: adding
/// `h2=error` there would log more, not less.
pub fn filter_directives(level: &str) -> String {
    if global_level(level).is_none_or(|g| g == "off") {
        return level.trim().to_owned();
    }
    let mut directives = level.trim().to_owned();
    for target in QUIETED_TARGETS {
        if !names_target(level, target) {
            if !directives.is_empty() {
                directives.push(',');
            }
            directives.push_str(target);
            directives.push_str("=error");
        }
    }
    directives
}

/// Installs the global logger writing `format` lines at `level` (a level
/// such as `info`, or an `EnvFilter` directive such as
/// `info,appguard_ratelimit=debug`) to stderr; the targets of
/// [`QUIETED_TARGETS`] it does not name log at `error` only (see
/// [`filter_directives`]).
pub fn init(format: LogFormat, level: &str) -> Result<(), LogError> {
    tracing::subscriber::set_global_default(subscriber(format, level, std::io::stderr)?)
        .map_err(|e| LogError::Init(e.to_string()))
}

/// The logger [`init`] installs, writing to `writer` instead of stderr
/// (tests read what the service logs with it), with the filter of
/// [`filter_directives`] for `level`.
pub fn subscriber<W>(
    format: LogFormat,
    level: &str,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // The operator's own filter is checked as written, so that an error
    // names what they wrote.
    EnvFilter::try_new(level).map_err(|e| LogError::Filter(level.to_owned(), e.to_string()))?;
    let filter = EnvFilter::try_new(filter_directives(level))
        .map_err(|e| LogError::Filter(level.to_owned(), e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    Ok(match format {
        LogFormat::Json => Box::new(builder.event_format(JsonLines).finish()),
        LogFormat::Text => Box::new(builder.finish()),
    })
}

/// Caller-chosen `text` as it may be logged: at most `max_bytes` of it
/// (cut at a character boundary), every control character, quote and
/// backslash escaped as Rust's `escape_debug` does (`\n`, `\u{1b}`, `\"`),
/// and, when cut, followed by `…(+N bytes)` naming what was left out.
///
/// The result holds no control character, so it cannot end a text log line
/// or start a forged one, and its length is bounded whatever the caller
/// sent (at most about six times `max_bytes`, when every byte is escaped).
pub fn safe_text(text: &str, max_bytes: usize) -> String {
    let mut cut = max_bytes.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let (kept, left_out) = text.split_at(cut);
    let mut out = String::with_capacity(kept.len() + 16);
    for c in kept.chars() {
        out.extend(c.escape_debug());
    }
    if !left_out.is_empty() {
        // Writing to a String cannot fail.
        let _ = write!(out, "…(+{} bytes)", left_out.len());
    }
    out
}

/// How many seconds before a [`LineThrottle`]'s current second a line's
/// second must be for the throttle to take it as the wall clock set back
/// (a new budget) rather than a call that took long (the current budget):
/// longer than a call waits on the counter store at the default
/// `--redis-timeout-ms` many times over.
pub const CLOCK_STEPPED_BACK: i64 = 60;

/// A bound on how many lines of one kind are written per second, process
/// wide: past `max_per_second` in one second, lines are suppressed and
/// counted, and the count is handed to the next line allowed, so that it
/// can say how many were left out.
///
/// A line's second is the second its call came in, and calls end out of
/// order (a call that waited on a slow store beside calls of the next
/// second that failed at once): only a later second starts a new budget,
/// and a line of an earlier one spends the current budget. A second more
/// than [`CLOCK_STEPPED_BACK`] earlier is the wall clock set back, not a
/// slow call, and starts a new budget too.
#[derive(Debug)]
pub struct LineThrottle {
    /// Most lines allowed in one second.
    max_per_second: u32,
    /// The current second, lines allowed in it, and lines suppressed since
    /// the last one allowed.
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    second: i64,
    allowed: u32,
    suppressed: u64,
}

impl LineThrottle {
    /// A throttle allowing `max_per_second` lines in each second.
    pub const fn new(max_per_second: u32) -> Self {
        LineThrottle {
            max_per_second,
            state: Mutex::new(ThrottleState {
                second: i64::MIN,
                allowed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written at Unix second `now`: `Some(k)` when it
    /// may, `k` being the lines suppressed since the last one allowed (to be
    /// reported with it), `None` when it must be left out (it is counted).
    pub fn admit(&self, now: i64) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now > state.second || now < state.second.saturating_sub(CLOCK_STEPPED_BACK) {
            state.second = now;
            state.allowed = 0;
        }
        if state.allowed >= self.max_per_second {
            state.suppressed = state.suppressed.saturating_add(1);
            return None;
        }
        state.allowed += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

/// The JSON line formatter.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

#[derive(Default)]
struct Fields {
    msg: String,
    fields: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.msg = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let meta = event.metadata();
        // Written by hand (rather than as one map) to keep the field order
        // ts, level, msg, target, fields.
        let text = |s: &str| Value::String(s.to_owned()).to_string();
        writeln!(
            writer,
            "{{\"ts\":{},\"level\":{},\"msg\":{},\"target\":{},\"fields\":{}}}",
            text(&ts),
            text(&meta.level().as_str().to_ascii_lowercase()),
            text(&fields.msg),
            text(meta.target()),
            Value::Object(fields.fields)
        )
    }
}

/// Log output written into memory, for the crate's tests that read what
/// a [`subscriber`] writes.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[cfg(test)]
impl Captured {
    /// What was written so far (UTF-8, as the logger writes).
    pub(crate) fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("log output not UTF-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_text_escapes_control_characters_and_bounds_the_length() {
        assert_eq!(safe_text("appguard", 64), "appguard");
        assert_eq!(safe_text("", 64), "");
        assert_eq!(
            safe_text("a\nfake line\r\u{1b}[31m\"\\", 64),
            "a\\nfake line\\r\\u{1b}[31m\\\"\\\\"
        );
        let long = "x".repeat(10_000);
        assert_eq!(
            safe_text(&long, 64),
            format!("{}…(+9936 bytes)", "x".repeat(64))
        );
        // Cut at a character boundary: 'é' is two bytes.
        assert_eq!(safe_text("éé", 3), "é…(+2 bytes)");
        // Even all escaped, the result stays bounded and one line.
        let nasty = "\n".repeat(10_000);
        let safe = safe_text(&nasty, 64);
        assert!(safe.len() < 64 * 6 + 20, "{}", safe.len());
        assert!(!safe.chars().any(char::is_control), "{safe}");
        // A Unicode line separator is escaped too.
        assert!(!safe_text("a\u{2028}b", 64).contains('\u{2028}'));
    }

    #[test]
    fn h2_and_hyper_log_errors_only_unless_the_filter_names_them() {
        assert_eq!(
            filter_directives("info"),
            "info,h2=error,hyper=error,hyper_util=error"
        );
        assert_eq!(
            filter_directives("debug"),
            "debug,h2=error,hyper=error,hyper_util=error"
        );
        // Named (a module under it too, spaces and span filters aside):
        // the operator's level stands.
        assert_eq!(
            filter_directives("info,h2=warn"),
            "info,h2=warn,hyper=error,hyper_util=error"
        );
        assert_eq!(
            filter_directives("info, h2::proto=debug,hyper[conn]=trace"),
            "info, h2::proto=debug,hyper[conn]=trace,hyper_util=error"
        );
        assert_eq!(
            filter_directives("warn,hyper_util"),
            "warn,hyper_util,h2=error,hyper=error"
        );
        // A target that only starts with the same letters is not named.
        assert_eq!(
            filter_directives("info,h2x=debug,hyperx=debug"),
            "info,h2x=debug,hyperx=debug,h2=error,hyper=error,hyper_util=error"
        );
        // Nothing of unnamed targets is logged: nothing is added, which
        // would log h2's errors where the operator asked for none.
        assert_eq!(filter_directives(""), "");
        assert_eq!(filter_directives("off"), "off");
        assert_eq!(filter_directives("info,OFF"), "info,OFF");
        assert_eq!(
            filter_directives("appguard_ratelimit=debug"),
            "appguard_ratelimit=debug"
        );
        assert_eq!(
            filter_directives("off,warn"),
            "off,warn,h2=error,hyper=error,hyper_util=error"
        );
        // Every result is a filter EnvFilter takes.
        for level in ["info", "info,", "info,h2=warn", "error", ""] {
            assert!(
                EnvFilter::try_new(filter_directives(level)).is_ok(),
                "{level}"
            );
        }
        assert!(matches!(
            subscriber(LogFormat::Json, "info,=x=", std::io::sink),
            Err(LogError::Filter(level, _)) if level == "info,=x="
        ));
    }

    /// What the logger built for `level` writes of an h2 warning (as h2
    /// writes one per connection under rapid resets) and of the service's
    /// own warning.
    fn written(level: &str) -> String {
        let out = Captured::default();
        let Ok(logger) = subscriber(LogFormat::Json, level, out.clone()) else {
            return "filter refused".to_owned();
        };
        tracing::subscriber::with_default(logger, || {
            tracing::warn!(
                target: "h2::proto::streams::recv",
                "recv_reset; remotely-reset pending-accept streams reached limit (20)"
            );
            tracing::warn!(target: "hyper::proto::h2::server", "hyper warning");
            tracing::error!(target: "h2::proto::connection", "h2 error");
            tracing::warn!(
                target: "appguard_ratelimit::service",
                "counter store failed; answering UNAVAILABLE"
            );
        });
        out.text()
    }

    #[test]
    fn h2_warnings_are_left_out_and_the_service_lines_kept() {
        let logs = written("info");
        assert!(!logs.contains("recv_reset"), "{logs}");
        assert!(!logs.contains("hyper warning"), "{logs}");
        assert!(logs.contains("h2 error"), "{logs}");
        assert!(logs.contains("counter store failed"), "{logs}");
        // The operator asked for them.
        let logs = written("info,h2=warn");
        assert!(logs.contains("recv_reset"), "{logs}");
        assert!(!logs.contains("hyper warning"), "{logs}");
        assert!(logs.contains("counter store failed"), "{logs}");
    }

    #[test]
    fn the_throttle_allows_n_lines_a_second_and_reports_the_rest() {
        let t = LineThrottle::new(3);
        assert_eq!(t.admit(100), Some(0));
        assert_eq!(t.admit(100), Some(0));
        assert_eq!(t.admit(100), Some(0));
        for _ in 0..5 {
            assert_eq!(t.admit(100), None);
        }
        // The next second: the first line allowed reports the 5 left out,
        // the next ones nothing.
        assert_eq!(t.admit(101), Some(5));
        assert_eq!(t.admit(101), Some(0));
        assert_eq!(t.admit(101), Some(0));
        assert_eq!(t.admit(101), None);
        assert_eq!(t.admit(200), Some(1));
        // A clock set back starts a new second too.
        assert_eq!(t.admit(100), Some(0));
        let never = LineThrottle::new(0);
        assert_eq!(never.admit(1), None);
    }

    #[test]
    fn lines_of_an_earlier_second_spend_the_current_budget() {
        // Lines of two seconds in turn (calls that came in one second and
        // ended in the next, beside calls of the next) get one budget
        // each, not one per change of second.
        let t = LineThrottle::new(3);
        let admitted = (0..100).filter(|i| t.admit(100 + i % 2).is_some()).count();
        assert_eq!(admitted, 1 + 3, "1 in second 100 before 101 came, then 3");
        assert_eq!(t.admit(100), None);
        assert_eq!(t.admit(102), Some(100 - 4 + 1));
        // Up to CLOCK_STEPPED_BACK earlier is a slow call; further, the
        // clock set back.
        for _ in 0..2 {
            t.admit(102);
        }
        assert_eq!(t.admit(102 - CLOCK_STEPPED_BACK), None);
        assert_eq!(t.admit(101 - CLOCK_STEPPED_BACK), Some(1));
    }
}
