//! Structured logs on stderr.
//!
//! `json` (the default) writes one object per line:
//! `{"ts":"2024-01-01T00:00:00.000000Z","level":"info","msg":"…","target":"…","fields":{…}}`.
//! `text` writes tracing-subscriber's plain format, for people.
//!
//! Request descriptor values (which may be hashed identifiers of people or
//! keys) are only logged at `debug`.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
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

/// Installs the global logger writing `format` lines at `level` (a level
/// such as `info`, or an `EnvFilter` directive such as
/// `info,appguard_ratelimit=debug`) to stderr.
pub fn init(format: LogFormat, level: &str) -> Result<(), LogError> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| LogError::Filter(level.to_owned(), e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let result = match format {
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| LogError::Init(e.to_string()))
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
