//! Command line and process life cycle: load the configuration, bind the
//! ports, serve until SIGINT/SIGTERM, stop cleanly.
//!
//! SIGHUP loads the configuration files again and puts them in force for
//! the calls that start from then on, counts kept; a configuration that
//! does not load is logged and the one in force stays.
//!
//! Shutdown drains: on the first SIGINT/SIGTERM `/healthcheck` starts
//! answering 500 while both servers keep accepting and answering for
//! `--drain-seconds` (default 5), so load balancers and Kubernetes see the
//! instance leave and move traffic away before its ports close; then both
//! listeners stop, in-flight calls get up to 5 more seconds, and the
//! process exits 0. A second signal during the drain ends it at once.
//!
//! Exit codes: 0 after a clean shutdown (or a successful `--validate`),
//! 2 for a bad command line or configuration (including a malformed or
//! `rediss://` Redis URL, an unreadable `--redis-url-file`, and a 0
//! `--redis-timeout-ms` or `--memory-max-keys`), 1 when the service cannot
//! run (a port cannot be bound, a server fails).
//!
//! The Redis URL comes from `--redis`, else from the file named by
//! `--redis-url-file`, else from the environment variable
//! [`REDIS_URL_ENV`]; the last two keep a password off the command line
//! (which every local user can read in the process list).

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::backend::redis::{check_url, mask_password};
use crate::backend::{Backend, MemoryBackend, RedisBackend};
use crate::config::{unknown_replaced_names, ConfigError, Loaded, Quota, RateLimitConfig};
use crate::logging::{self, LogFormat};
use crate::service::{unix_now, RateLimiter, RlsService, ServiceOptions, Stats};

/// How long servers get to finish in-flight calls once the listeners stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the in-memory store drops expired windows in the background.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Largest `ShouldRateLimit` request accepted (tonic's default is 4 MiB).
/// The largest request the service would answer (64 descriptors of 16
/// entries) is a few kilobytes with the values callers send; a message of
/// empty descriptors takes some 40 times its size in memory once decoded,
/// before the descriptor bound refuses it, so the bytes are bounded first.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Calls of one connection handled at once; more wait. With
/// [`MAX_REQUEST_BYTES`] it bounds what one caller's connection can hold
/// in decoded requests. Envoy keeps one connection per worker.
pub const MAX_CALLS_PER_CONNECTION: usize = 256;

/// HTTP/2 streams one gRPC connection may have open at once (the calls
/// answered at once, [`MAX_CALLS_PER_CONNECTION`], and as many waiting).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 512;

/// Longest a gRPC call may take on the server, message included: a call
/// that sends its headers and never its message ends with
/// CANCELLED then (tonic's answer to its own timeout) instead of holding
/// its place for ever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable holding the Redis URL when neither `--redis`
/// nor `--redis-url-file` is given.
pub const REDIS_URL_ENV: &str = "APPGUARD_RATELIMIT_REDIS_URL";

/// appguard's rate-limit service: Envoy RLS v3 over gRPC, configured with
/// envoyproxy/ratelimit YAML, counting in memory or in Redis.
#[derive(Debug, Parser)]
#[command(name = "appguard-ratelimit", version, about)]
pub struct Cli {
    /// Address of the gRPC server (RateLimitService/ShouldRateLimit).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server (GET /healthcheck, GET /stats).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// A YAML file in envoyproxy/ratelimit's format, or a directory whose
    /// *.yaml/*.yml files are all loaded. Repeatable; domains must be unique.
    #[arg(long, required = true, value_name = "FILE_OR_DIR")]
    pub config: Vec<PathBuf>,

    /// Count in Redis (e.g. redis://127.0.0.1:6379) so that replicas share
    /// counts. Without it (nor --redis-url-file, nor
    /// APPGUARD_RATELIMIT_REDIS_URL), counts live in this process. TLS
    /// (rediss://) is not built in.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// A file holding the Redis URL (surrounding whitespace ignored), to
    /// keep a password off the command line.
    #[arg(long, value_name = "FILE", conflicts_with = "redis")]
    pub redis_url_file: Option<PathBuf>,

    /// Bound on each Redis call, in milliseconds (at least 1); past it the
    /// call fails with UNAVAILABLE.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = at_least_one::<u64>)]
    pub redis_timeout_ms: u64,

    /// Prefix for every counter key (envoyproxy/ratelimit's CACHE_KEY_PREFIX).
    #[arg(long, default_value = "", value_name = "PREFIX")]
    pub cache_key_prefix: String,

    /// Most counters the in-memory store keeps at once (at least 1); past
    /// it calls fail with UNAVAILABLE until windows expire.
    #[arg(long, default_value_t = 1_000_000, value_name = "N", value_parser = at_least_one::<usize>)]
    pub memory_max_keys: usize,

    /// Global shadow mode: count and log, but always answer OK.
    #[arg(long)]
    pub shadow_mode: bool,

    /// A call answered OVER_LIMIT counts nothing, so a client over one
    /// limit (its IP's) stops spending the call's other limits (an API
    /// key's, a phone number's). envoyproxy/ratelimit's
    /// STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT; off by default, as there.
    /// No effect with --shadow-mode.
    #[arg(long)]
    pub stop_increment_when_over_limit: bool,

    /// Most gRPC connections held at once (1 to 1048576); past it, new ones
    /// wait to be accepted until one closes. Envoy keeps one connection per
    /// worker. The soft open-file limit is raised to the hard one at start.
    #[arg(long, default_value_t = crate::listen::DEFAULT_MAX_GRPC_CONNECTIONS, value_name = "N", value_parser = grpc_connections)]
    pub max_grpc_connections: usize,

    /// Load the configuration files again every this many seconds, and put
    /// them in force when they changed (as a SIGHUP does): a Kubernetes
    /// ConfigMap mounted as a volume then takes effect without a restart.
    /// 0 (the default) turns it off; at most 86400 (a day).
    #[arg(long, default_value_t = 0, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub watch_config_seconds: u64,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// Log level or filter directive (error, warn, info, debug, trace;
    /// or `info,appguard_ratelimit=debug`). The h2, hyper and hyper_util
    /// targets (a line per connection, e.g. per rapid-reset connection,
    /// not throttled) log at error only unless the filter names them
    /// (`info,h2=warn`). Descriptor values are only logged at debug.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,

    /// On SIGINT/SIGTERM, keep serving this many seconds with /healthcheck
    /// answering 500, so load balancers stop sending traffic before the
    /// ports close; 0 stops the listeners at once.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub drain_seconds: u64,

    /// Load and check the configuration and the Redis URL (without
    /// connecting), print a summary, and exit.
    #[arg(long)]
    pub validate: bool,
}

/// Reports a command line clap could not read, as clap would (help and
/// version as asked, exit 2 for an error), but with every argument value
/// that is not an option name left out: clap's "unexpected argument"
/// message echoes a stray value, and a Redis URL on the command line
/// (`--redis` left out, or split by the shell at a space in its password)
/// would reach the service's log with its password. `args` are the
/// arguments as given, without the program name.
pub fn command_line_error(e: &clap::Error, args: &[String]) -> ExitCode {
    use std::io::Write as _;
    if let Some(code) = clap_help_or_version(e) {
        return code;
    }
    let message = without_argument_values(&e.render().to_string(), args);
    // Nowhere left to say that standard error failed.
    let _ = writeln!(std::io::stderr(), "{}", message.trim_end());
    ExitCode::from(2)
}

/// Prints what clap's "error" `e` is when it is help or a version asked
/// for (no values in it), and gives the exit code; `None` for a real error.
/// Shared with `appguard-cli`'s command-line errors.
pub fn clap_help_or_version(e: &clap::Error) -> Option<ExitCode> {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return Some(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)));
    }
    None
}

/// `message` with each value of `args` (an argument that is no `--name`,
/// or what follows the `=` of `--name=value`) hidden ([`hide_values`]).
fn without_argument_values(message: &str, args: &[String]) -> String {
    let values: Vec<&str> = args
        .iter()
        .map(|a| match a.split_once('=') {
            Some((name, value)) if name.starts_with("--") => value,
            _ if a.starts_with("--") => "",
            _ => a.as_str(),
        })
        .collect();
    hide_values(message, values)
}

/// `message` (clap's rendering of a command-line error) with each of
/// `values` replaced by `<an argument, not shown>`, longest first so that
/// no part of one is left: wherever it stands when 8 bytes or more, and
/// where clap quotes it when shorter (the end of a secret the shell split
/// at a space; replaced everywhere, a short value would eat words of the
/// message). Shared with `appguard-cli`.
pub fn hide_values(message: &str, mut values: Vec<&str>) -> String {
    values.retain(|v| !v.is_empty());
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = message.to_owned();
    for v in values {
        if v.len() >= 8 {
            out = out.replace(v, "<an argument, not shown>");
        } else {
            out = out
                .replace(&format!("'{v}'"), "'<an argument, not shown>'")
                .replace(&format!("'-- {v}'"), "'-- <an argument, not shown>'");
        }
    }
    out
}

/// Parses a number that must be at least 1: 0 would make every call fail
/// (a zero timeout, an in-memory store that holds nothing).
fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialEq + From<u8>,
    T::Err: fmt::Display,
{
    let value: T = text.trim().parse().map_err(|e: T::Err| e.to_string())?;
    if value == T::from(0) {
        return Err("must be at least 1 (0 would answer every call UNAVAILABLE)".to_owned());
    }
    Ok(value)
}

/// The most `--max-grpc-connections` may be: more than any open-file limit
/// lets a process hold (and the connection semaphore's own bound is far
/// above it).
pub const MAX_GRPC_CONNECTIONS: usize = 1 << 20;

/// Parses `--max-grpc-connections`: 1 to [`MAX_GRPC_CONNECTIONS`].
fn grpc_connections(text: &str) -> Result<usize, String> {
    let n: usize = at_least_one(text)?;
    if n > MAX_GRPC_CONNECTIONS {
        return Err(format!(
            "must be at most {MAX_GRPC_CONNECTIONS} (no open-file limit allows more connections)"
        ));
    }
    Ok(n)
}

/// Where the Redis URL came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrlSource {
    /// `--redis`.
    Flag,
    /// The file named by `--redis-url-file`.
    File(PathBuf),
    /// The environment variable [`REDIS_URL_ENV`].
    Env,
}

impl fmt::Display for RedisUrlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisUrlSource::Flag => f.write_str("--redis"),
            RedisUrlSource::File(path) => write!(f, "--redis-url-file {}", path.display()),
            RedisUrlSource::Env => f.write_str(REDIS_URL_ENV),
        }
    }
}

/// The Redis URL to count in and where it came from, or `None` to count in
/// memory: `--redis`, else the content of `--redis-url-file` (trimmed),
/// else `env`, the value of [`REDIS_URL_ENV`] if set. An unreadable or
/// empty file, and a variable that is set but empty or not UTF-8, are
/// errors (a typo must not silently count in memory). The URL itself is
/// checked by [`check_url`], not here.
pub fn redis_url(
    cli: &Cli,
    env: Option<OsString>,
) -> Result<Option<(String, RedisUrlSource)>, String> {
    if let Some(url) = &cli.redis {
        return Ok(Some((url.clone(), RedisUrlSource::Flag)));
    }
    if let Some(path) = &cli.redis_url_file {
        // A URL is short: a file given by mistake (or `/dev/zero`) is
        // refused unread past the bound.
        let text = crate::config::read_text(path, 64 * 1024).map_err(|e| {
            // The "file" may be the URL itself (`--redis-url-file
            // redis://:secret@host`, the flag read as "the Redis URL"): named
            // as the URL would be logged, its password masked.
            // Not shown at all: `mask_password` splits as a URL parser
            // does, and a password with a `#`, `/` or `?` typed as it is
            // would end the user-info early and be printed whole.
            let shown = path.display().to_string();
            if shown.contains("://") {
                format!(
                    "cannot read --redis-url-file (a URL, not shown): {e} (that is a URL, not a \
                     file: give the URL with --redis or {REDIS_URL_ENV}, or write it to a file)"
                )
            } else {
                format!("cannot read --redis-url-file {shown}: {e}")
            }
        })?;
        let url = text.trim();
        if url.is_empty() {
            return Err(format!("--redis-url-file {} is empty", path.display()));
        }
        return Ok(Some((url.to_owned(), RedisUrlSource::File(path.clone()))));
    }
    match env {
        None => Ok(None),
        Some(value) => match value.into_string() {
            Ok(url) if url.trim().is_empty() => Err(format!(
                "{REDIS_URL_ENV} is set but empty (unset it to count in memory)"
            )),
            Ok(url) => Ok(Some((url.trim().to_owned(), RedisUrlSource::Env))),
            Err(_) => Err(format!("{REDIS_URL_ENV} is not UTF-8")),
        },
    }
}

/// Loads the configuration from `paths` and logs what it holds (see
/// [`log_loaded`]).
fn load_config(paths: &[PathBuf], done: &str) -> Result<Loaded, ConfigError> {
    let loaded = RateLimitConfig::load_paths(paths)?;
    log_loaded(&loaded, done);
    Ok(loaded)
}

/// Logs what `loaded` holds: its warnings, each limit (at debug), and a
/// summary line saying `done`.
fn log_loaded(loaded: &Loaded, done: &str) {
    for warning in &loaded.warnings {
        warn!(file = %warning.file, path = %warning.path, "configuration: {}", warning.message);
    }
    for name in unknown_replaced_names(&loaded.config) {
        warn!(name = %name, "configuration: `replaces` names a limit that no rate_limit defines");
    }
    let limits = loaded.config.limits();
    for limit in &limits {
        let (requests_per_unit, unit) = match limit.quota {
            Quota::PerUnit {
                requests_per_unit,
                unit,
            } => (i64::from(requests_per_unit), unit.name()),
            Quota::Unlimited => (-1, "unlimited"),
        };
        debug!(
            limit = %limit.full_key,
            requests_per_unit,
            unit,
            shadow_mode = limit.shadow_mode,
            "limit loaded"
        );
    }
    info!(
        files = %loaded.files.join(","),
        domains = %loaded.config.domains().join(","),
        limits = limits.len(),
        "{done}"
    );
}

/// Runs the service as described by `cli`; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        eprintln!("appguard-ratelimit: {e}");
        return ExitCode::from(2);
    }

    let loaded = match load_config(&cli.config, "configuration loaded") {
        Ok(loaded) => loaded,
        Err(e) => {
            error!("invalid rate-limit configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let limits = loaded.config.limits();

    let env = std::env::var_os(REDIS_URL_ENV);
    if cli.redis.is_some() && env.is_some() {
        warn!("--redis is given: {REDIS_URL_ENV} is ignored");
    }
    let redis = match redis_url(&cli, env) {
        Ok(redis) => redis,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some((url, source)) = &redis {
        if let Err(e) = check_url(url) {
            error!("invalid Redis URL ({source}): {e}");
            return ExitCode::from(2);
        }
        if *source == RedisUrlSource::Flag && mask_password(url) != *url {
            warn!(
                "the --redis URL holds credentials, which other local users can read in the \
                 process list; give it with --redis-url-file or {REDIS_URL_ENV}"
            );
        }
    }

    if cli.validate {
        println!(
            "configuration OK: {} file(s), domains: {}, {} limit(s)",
            loaded.files.len(),
            loaded.config.domains().join(", "),
            limits.len()
        );
        if let Some((url, source)) = &redis {
            println!(
                "redis URL OK ({source}, not connected): {}",
                mask_password(url)
            );
        }
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(cli, loaded.config, loaded.digest, redis))
}

async fn serve(
    cli: Cli,
    config: RateLimitConfig,
    config_digest: [u8; 32],
    redis: Option<(String, RedisUrlSource)>,
) -> ExitCode {
    let backend = match &redis {
        Some((url, source)) => {
            match RedisBackend::new(url, Duration::from_millis(cli.redis_timeout_ms))
                .map(|redis| redis.with_key_prefix(&cli.cache_key_prefix))
            {
                Ok(redis) => {
                    info!(url = %redis.display_url(), source = %source, "counting in redis");
                    Backend::Redis(Box::new(redis))
                }
                Err(e) => {
                    error!("invalid Redis URL ({source}): {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => {
            info!(max_keys = cli.memory_max_keys, "counting in memory");
            Backend::Memory(MemoryBackend::new(cli.memory_max_keys))
        }
    };
    if cli.shadow_mode {
        warn!(
            "--shadow-mode: every call is answered OK, so no limit refuses anything; \
             each descriptor's status still says OVER_LIMIT, which appguard reads for its \
             replay limits (replay.scope: service): a replayed token is still refused"
        );
    }
    if cli.stop_increment_when_over_limit {
        if cli.shadow_mode {
            warn!(
                "--stop-increment-when-over-limit has no effect with --shadow-mode: \
                 no call is answered OVER_LIMIT, so every call counts"
            );
        } else {
            info!("a call answered OVER_LIMIT counts nothing (--stop-increment-when-over-limit)");
        }
    }
    let backend = Arc::new(backend);
    let stats = Arc::new(Stats::default());
    let limiter = Arc::new(RateLimiter::new(
        Arc::new(config),
        Arc::clone(&backend),
        ServiceOptions {
            cache_key_prefix: cli.cache_key_prefix.clone(),
            global_shadow_mode: cli.shadow_mode,
            stop_increment_when_over_limit: cli.stop_increment_when_over_limit,
        },
        Arc::clone(&stats),
    ));

    let (open_files, warning) = crate::listen::raise_open_file_limit(cli.max_grpc_connections);
    match warning {
        Some(warning) => warn!("{warning}"),
        None => debug!(
            open_files = open_files.map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
            max_grpc_connections = cli.max_grpc_connections,
            "open-file limit"
        ),
    }
    let grpc_listener = match tokio::net::TcpListener::bind(cli.grpc_addr).await {
        Ok(listener) => listener,
        Err(e) => {
            error!(addr = %cli.grpc_addr, error = %e, "cannot bind the gRPC address");
            return ExitCode::from(1);
        }
    };
    let http_listener = match tokio::net::TcpListener::bind(cli.http_addr).await {
        Ok(listener) => listener,
        Err(e) => {
            error!(addr = %cli.http_addr, error = %e, "cannot bind the HTTP address");
            return ExitCode::from(1);
        }
    };

    let shutting_down = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let drain = Duration::from_secs(cli.drain_seconds);
    let signals = {
        let shutting_down = Arc::clone(&shutting_down);
        tokio::spawn(async move {
            let mut signals = match Signals::new() {
                Ok(signals) => Some(signals),
                Err(e) => {
                    error!(error = %e, "cannot listen for signals; shutting down");
                    None
                }
            };
            if let Some(signals) = signals.as_mut() {
                let signal = signals.next().await;
                // From here /healthcheck answers 500; both servers still
                // accept and answer until the drain ends.
                shutting_down.store(true, Ordering::Relaxed);
                info!(
                    signal,
                    drain_seconds = drain.as_secs(),
                    "shutting down: draining"
                );
                if !drain.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(drain) => {}
                        signal = signals.next() => {
                            warn!(signal, "second signal: ending the drain early");
                        }
                    }
                }
            }
            // Also when signals could not be listened for.
            shutting_down.store(true, Ordering::Relaxed);
            info!("closing the listeners");
            // Nobody listening only means the servers already stopped.
            let _ = shutdown_tx.send(true);
        })
    };

    // Listened for before the ports open, so that a SIGHUP sent once the
    // service answers never meets the default action (the end of the
    // process).
    let reloader = Arc::new(Reloader::new(
        cli.config.clone(),
        Arc::clone(&limiter),
        Arc::clone(&stats),
        config_digest,
    ));
    let reloads = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => Some(tokio::spawn(reload_on_hangup(
            hangup,
            Arc::clone(&reloader),
        ))),
        Err(e) => {
            error!(error = %e, "cannot listen for SIGHUP: the configuration cannot be reloaded");
            None
        }
    };
    let watch = (cli.watch_config_seconds > 0).then(|| {
        tokio::spawn(watch_config(
            Duration::from_secs(cli.watch_config_seconds),
            reloader,
        ))
    });

    if let Backend::Memory(_) = backend.as_ref() {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                interval.tick().await;
                if let Backend::Memory(memory) = backend.as_ref() {
                    memory.sweep(unix_now());
                }
            }
        });
    }

    let http_state = crate::http::HttpState {
        backend: Arc::clone(&backend),
        stats,
        shutting_down: Arc::clone(&shutting_down),
    };
    let grpc = tonic::transport::Server::builder()
        // Calls answered at once per connection; the rest wait their turn
        // (not refused), before their message is decoded.
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        // Room for the trace metadata a caller passes on (appguard passes
        // at most 512 bytes of each trace header; hyper's default is
        // 16 KiB): a call refused for its metadata fails by the caller's
        // `failure_mode`, which under `allow` lets the request through
        // unlimited.
        .http2_max_header_list_size(64 * 1024)
        // Streams a connection may open at once, as the HTTP/2 setting:
        // beyond the calls answered at once, those waiting are bounded
        // too (tonic's default is none, and each waiting stream keeps its
        // headers), and a caller opens another connection or waits.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        // A call that never sends its message (headers, then nothing)
        // would hold its place for ever: every call ends by then
        // (CANCELLED), far past any caller's own deadline.
        .timeout(CALL_TIMEOUT)
        // A peer that vanished without closing is found and its
        // connection dropped.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Every call passes `observe_call`, which counts the calls tonic
        // ends before their message reaches the limiter (never sent in
        // full, too large, not decodable).
        .add_routes(
            tonic::service::Routes::from(
                tonic::service::Routes::new(
                    RateLimitServiceServer::new(RlsService::new(Arc::clone(&limiter)))
                        .max_decoding_message_size(MAX_REQUEST_BYTES),
                )
                .into_axum_router()
                .layer(axum::middleware::from_fn_with_state(
                    limiter,
                    crate::service::observe_call,
                )),
            )
            // The standard health check, for Kubernetes `grpc:` probes (not a
            // rate-limit call: outside `observe_call`).
            .add_service(crate::health::HealthServer::new(http_state.clone())),
        )
        .serve_with_incoming_shutdown(
            // Bounded, and with TCP_NODELAY (see crate::listen): Envoy sets
            // it on its side; without it here, sparse calls (leases, quiet
            // hours) paid 40 ms each.
            crate::listen::grpc_incoming(
                grpc_listener,
                cli.max_grpc_connections,
                crate::listen::GRPC_FIRST_BYTES_WITHIN,
            ),
            shutdown_signalled(shutdown_rx.clone()),
        );
    let http = axum::serve(
        crate::listen::BoundedListener::new(http_listener),
        crate::http::router(http_state),
    )
    .with_graceful_shutdown(shutdown_signalled(shutdown_rx.clone()));

    info!(
        grpc_addr = %cli.grpc_addr,
        http_addr = %cli.http_addr,
        backend = backend.kind(),
        "listening"
    );

    let servers = async { tokio::join!(grpc, http) };
    let deadline = async {
        shutdown_signalled(shutdown_rx).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let code = tokio::select! {
        (grpc_result, http_result) = servers => {
            let mut code = ExitCode::SUCCESS;
            if let Err(e) = grpc_result {
                error!(error = %e, "gRPC server failed");
                code = ExitCode::from(1);
            }
            if let Err(e) = http_result {
                error!(error = %e, "HTTP server failed");
                code = ExitCode::from(1);
            }
            code
        }
        () = deadline => {
            warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; exiting");
            ExitCode::SUCCESS
        }
    };
    signals.abort();
    for task in [reloads, watch].into_iter().flatten() {
        task.abort();
    }
    if !shutting_down.load(Ordering::Relaxed) {
        // A server stopped on its own: that is a failure.
        error!("a server stopped without a shutdown signal");
        return ExitCode::from(1);
    }
    info!("stopped");
    code
}

/// Resolves when the shutdown flag becomes true (or its sender is gone).
async fn shutdown_signalled(mut rx: watch::Receiver<bool>) {
    // An error means the sender was dropped: treat it as shutdown too.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// What asked for the configuration to be loaded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reload {
    /// A SIGHUP: put in force whatever loads.
    Hangup,
    /// `--watch-config-seconds`: put in force only what changed, and say
    /// only once that the same files fail to load.
    Watch,
}

/// Loads the configuration again and puts it in force for the calls that
/// start from then on; counts are kept (they live in the store). One that
/// does not load (a file unreadable or invalid, a domain twice) is logged
/// and counted, and the configuration in force stays: a bad edit never
/// leaves the service without limits.
struct Reloader {
    /// The `--config` paths.
    paths: Vec<PathBuf>,
    /// Whose limits are replaced.
    limiter: Arc<RateLimiter>,
    /// Where reloads and failed ones are counted.
    stats: Arc<Stats>,
    /// The digest of the files in force ([`Loaded::digest`]), and the
    /// last failure to load them, for [`Reload::Watch`].
    /// Held from loading the files to putting them in force, so that a
    /// SIGHUP and a watch tick at once never put the older files last.
    seen: tokio::sync::Mutex<([u8; 32], Option<String>)>,
}

impl Reloader {
    /// A reloader of `paths`, whose configuration in force has `digest`.
    fn new(
        paths: Vec<PathBuf>,
        limiter: Arc<RateLimiter>,
        stats: Arc<Stats>,
        digest: [u8; 32],
    ) -> Self {
        Reloader {
            paths,
            limiter,
            stats,
            seen: tokio::sync::Mutex::new((digest, None)),
        }
    }

    /// Loads the files (on a blocking thread) and acts as `why` says.
    async fn reload(self: &Arc<Self>, why: Reload) {
        let mut seen = self.seen.lock().await;
        let paths = self.paths.clone();
        let loaded = tokio::task::spawn_blocking(move || RateLimitConfig::load_paths(&paths))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match loaded {
            Ok(loaded) => {
                if why == Reload::Watch && loaded.digest == seen.0 {
                    seen.1 = None;
                    return;
                }
                log_loaded(
                    &loaded,
                    match why {
                        Reload::Hangup => "configuration reloaded",
                        Reload::Watch => "configuration changed on disk: reloaded",
                    },
                );
                *seen = (loaded.digest, None);
                self.limiter.replace_config(Arc::new(loaded.config));
                self.stats.config_reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if why == Reload::Watch && seen.1.as_deref() == Some(e.as_str()) {
                    return;
                }
                error!("configuration not reloaded, the one in force stays: {e}");
                self.stats
                    .config_reload_errors
                    .fetch_add(1, Ordering::Relaxed);
                seen.1 = Some(e);
            }
        }
    }
}

/// Reloads on each SIGHUP.
async fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, reloader: Arc<Reloader>) {
    while hangup.recv().await.is_some() {
        info!("SIGHUP: loading the configuration again");
        reloader.reload(Reload::Hangup).await;
    }
}

/// Loads the files every `every` and reloads when they changed.
async fn watch_config(every: Duration, reloader: Arc<Reloader>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the files were just loaded.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        reloader.reload(Reload::Watch).await;
    }
}

/// The SIGINT and SIGTERM streams, registered once so that a second signal
/// during the drain is not missed.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening for SIGINT and SIGTERM.
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM; returns the signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["appguard-ratelimit", "--config", "a.yaml"]).unwrap();
        assert_eq!(cli.grpc_addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(cli.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(cli.redis.is_none());
        assert_eq!(cli.drain_seconds, 5);
        let cli = Cli::try_parse_from([
            "appguard-ratelimit",
            "--config",
            "a.yaml",
            "--config",
            "dir",
            "--log-format",
            "text",
            "--redis",
            "redis://127.0.0.1:1",
        ])
        .unwrap();
        assert_eq!(cli.config.len(), 2);
        assert_eq!(cli.log_format, LogFormat::Text);
        assert!(Cli::try_parse_from(["appguard-ratelimit"]).is_err());
    }

    #[test]
    fn a_zero_timeout_or_key_cap_is_refused() {
        for flag in ["--redis-timeout-ms", "--memory-max-keys"] {
            let err = Cli::try_parse_from(["appguard-ratelimit", "--config", "a.yaml", flag, "0"])
                .unwrap_err();
            // clap's usage error: exit code 2.
            assert_eq!(err.exit_code(), 2, "{flag}");
            let message = err.to_string();
            assert!(message.contains(flag), "{message}");
            assert!(message.contains("at least 1"), "{message}");
            let cli = Cli::try_parse_from(["appguard-ratelimit", "--config", "a.yaml", flag, "1"])
                .unwrap();
            let set = if flag == "--redis-timeout-ms" {
                cli.redis_timeout_ms
            } else {
                u64::try_from(cli.memory_max_keys).unwrap()
            };
            assert_eq!(set, 1, "{flag}");
        }
        assert!(Cli::try_parse_from([
            "appguard-ratelimit",
            "--config",
            "a.yaml",
            "--memory-max-keys",
            "-1"
        ])
        .is_err());
    }

    fn parse(extra: &[&str]) -> Cli {
        let mut args = vec!["appguard-ratelimit", "--config", "a.yaml"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn the_redis_url_comes_from_the_flag_then_the_file_then_the_environment() {
        let env = || Some(OsString::from(" redis://from-env:6379 \n"));
        // None anywhere: memory.
        assert_eq!(redis_url(&parse(&[]), None).unwrap(), None);
        // The environment.
        assert_eq!(
            redis_url(&parse(&[]), env()).unwrap(),
            Some(("redis://from-env:6379".to_owned(), RedisUrlSource::Env))
        );
        // The flag wins over the environment.
        assert_eq!(
            redis_url(&parse(&["--redis", "redis://flag:1"]), env()).unwrap(),
            Some(("redis://flag:1".to_owned(), RedisUrlSource::Flag))
        );
        // A file, trimmed, wins over the environment.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis-url");
        std::fs::write(&file, "redis://:hunter2@file:6379/0\n").unwrap();
        let path = file.to_str().unwrap();
        assert_eq!(
            redis_url(&parse(&["--redis-url-file", path]), env()).unwrap(),
            Some((
                "redis://:hunter2@file:6379/0".to_owned(),
                RedisUrlSource::File(file.clone())
            ))
        );
        // The flag and the file together are a usage error.
        assert!(Cli::try_parse_from([
            "appguard-ratelimit",
            "--config",
            "a.yaml",
            "--redis",
            "redis://x",
            "--redis-url-file",
            path
        ])
        .is_err());
        // An empty or missing file, an empty variable: errors, not memory.
        std::fs::write(&file, " \n").unwrap();
        let err = redis_url(&parse(&["--redis-url-file", path]), None).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let missing = dir.path().join("missing");
        let err = redis_url(
            &parse(&["--redis-url-file", missing.to_str().unwrap()]),
            None,
        )
        .unwrap_err();
        assert!(err.contains("cannot read --redis-url-file"), "{err}");
        let err = redis_url(&parse(&[]), Some(OsString::new())).unwrap_err();
        assert!(err.contains(REDIS_URL_ENV), "{err}");
    }

    // review57 `fixes`: what the review57-secrets fixes still print.

    /// A URL handed to `--redis-url-file` is shown with `mask_password`,
    /// a URL parser's split: a password with a `#`, `/` or `?` in it (not
    /// percent-encoded, as people type them) ends the user-info early, so
    /// nothing is masked and the password is printed whole.
    #[test]
    fn fixes_a_url_given_as_the_url_file_is_not_printed_whatever_its_password_holds() {
        for url in [
            "redis://:hunter2#s3cret@redis.internal:6379",
            "redis://default:hunter2/s3cret@redis.internal:6379",
            "redis://default:hunter2?s3cret@redis.internal:6379",
        ] {
            let e = redis_url(&parse(&["--redis-url-file", url]), None).unwrap_err();
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
    }

    /// clap's "unexpected argument" error for a stray piece of a split
    /// URL shorter than 8 bytes is printed as it is: `--redis
    /// redis://default:hunter2 s3cr@r1` (a space in the password) shows
    /// `s3cr@r1`, the end of the password.
    #[test]
    fn fixes_a_short_stray_piece_of_a_split_url_is_not_echoed() {
        let args: Vec<String> = [
            "--config",
            "a.yaml",
            "--redis",
            "redis://default:hunter2",
            "s3cr@r1",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        let e = Cli::try_parse_from(
            std::iter::once("appguard-ratelimit".to_owned()).chain(args.clone()),
        )
        .unwrap_err();
        let shown = without_argument_values(&e.render().to_string(), &args);
        assert!(shown.contains("unexpected argument"), "{shown}");
        assert!(!shown.contains("s3cr"), "{shown}");
    }
}
