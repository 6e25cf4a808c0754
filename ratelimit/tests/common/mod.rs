//! Test harness: starts the real `appguard-ratelimit` binary and a real
//! `redis-server` on free loopback ports, and kills them on drop (also when
//! a test panics).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_appguard-ratelimit");

/// The variable the service reads a Redis URL from: removed from every
/// child's environment unless a test sets it.
pub const REDIS_URL_ENV: &str = "APPGUARD_RATELIMIT_REDIS_URL";

/// A port nothing listens on right now (bound to port 0, then released)
/// and that this test process has not handed out before: two test threads
/// binding port 0 and letting go could otherwise both get the same port
/// before either service binds it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Sleeps past the end of the current window of `unit_seconds` when fewer
/// than `margin` seconds are left in it, so a test's calls share a window.
pub fn avoid_window_edge(unit_seconds: i64, margin: i64) {
    let left = unit_seconds - unix_now() % unit_seconds;
    if left < margin {
        std::thread::sleep(Duration::from_secs(left as u64 + 1));
    }
}

/// A child process killed (and reaped) on drop.
pub struct Guard {
    pub child: Child,
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` with no persistence on a free loopback port, working
/// in a directory of its own: a replica still writes the data it receives
/// from its primary to a file there (`REPLICAOF` in the failover test),
/// which must not land in the source tree.
pub struct Redis {
    pub port: u16,
    pub guard: Guard,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        Self::start_with(port, &[])
    }

    /// A Redis on `port` with `extra` arguments (`--rename-command …`).
    pub fn start_with(port: u16, extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("/usr/bin/redis-server")
            .args([
                "--dir",
                &dir.path().display().to_string(),
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/bin/redis-server (apt-get install redis-server)");
        let mut redis = Redis {
            port,
            guard: Guard { child },
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if redis.ping() {
                return redis;
            }
            if let Some(status) = redis.guard.child.try_wait().unwrap() {
                panic!("redis-server exited early: {status}");
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn stop(&mut self) {
        self.guard.kill();
    }
}

/// A running `appguard-ratelimit`.
pub struct Service {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub guard: Guard,
    stderr: tempfile::NamedTempFile,
}

impl Service {
    /// Starts the binary with `args` plus free gRPC/HTTP ports, and waits
    /// until `/healthcheck` answers (any status: with Redis down it is 500).
    pub fn start(args: &[&str]) -> Service {
        Self::start_expect(args, &[], None, None)
    }

    /// Like [`Service::start_healthy`], started by `sh -c script` with the
    /// binary and its arguments as `$0 "$@"` (a script that sets limits,
    /// then `exec "$0" "$@"`).
    pub fn start_healthy_under(script: &str, args: &[&str]) -> Service {
        Self::start_expect(args, &[], Some(200), Some(script))
    }

    /// Like [`Service::start`], waiting for `/healthcheck` to answer 200.
    pub fn start_healthy(args: &[&str]) -> Service {
        Self::start_expect(args, &[], Some(200), None)
    }

    /// Like [`Service::start_healthy`], with `env` added to the
    /// environment.
    pub fn start_healthy_with_env(args: &[&str], env: &[(&str, &str)]) -> Service {
        Self::start_expect(args, env, Some(200), None)
    }

    fn start_expect(
        args: &[&str],
        env: &[(&str, &str)],
        want: Option<u16>,
        script: Option<&str>,
    ) -> Service {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut command = match script {
            Some(script) => {
                let mut command = Command::new("sh");
                command.args(["-c", script, BIN]);
                command
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--http-addr", &http.to_string()])
            .args(args)
            .env_remove(REDIS_URL_ENV)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut service = Service {
            grpc,
            http,
            guard: Guard { child },
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((status, _)) = service.try_http_get("/healthcheck") {
                if want.is_none_or(|w| w == status) {
                    return service;
                }
            }
            if let Some(status) = service.guard.child.try_wait().unwrap() {
                panic!(
                    "appguard-ratelimit exited early ({status}): {}",
                    service.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "appguard-ratelimit not ready: {}",
                service.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    pub fn try_http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path)
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.try_http_get(path).expect("HTTP request failed")
    }

    /// `grpc.health.v1.Health/Check` for `service` on the gRPC port (or
    /// `Watch`, with `watch`): the serving status, or the call's status.
    pub async fn health(&self, service: &str, watch: bool) -> Result<i32, tonic::Status> {
        use appguard_ratelimit::health::{HealthCheckRequest, HealthCheckResponse};
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = if watch {
            "/grpc.health.v1.Health/Watch"
        } else {
            "/grpc.health.v1.Health/Check"
        };
        let r: tonic::Response<HealthCheckResponse> = grpc
            .unary(
                tonic::Request::new(HealthCheckRequest {
                    service: service.to_owned(),
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await?;
        Ok(r.into_inner().status)
    }

    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }
}

/// A minimal HTTP/1.1 GET; `None` when the connection fails.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

pub async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    req: &RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(req.clone())
        .await
        .unwrap()
        .into_inner()
}

/// Runs the binary to completion (it must exit within 10 s); returns its
/// exit code and stderr.
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let (code, _, stderr) = run_to_exit_with_env(args, &[]);
    (code, stderr)
}

/// Like [`run_to_exit`], with `env` added to the environment; returns the
/// exit code, stdout and stderr.
pub fn run_to_exit_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let stdout = tempfile::NamedTempFile::new().unwrap();
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(BIN)
        .args(args)
        .env_remove(REDIS_URL_ENV)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout.reopen().unwrap())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut guard = Guard { child };
    let status = guard
        .wait_timeout(Duration::from_secs(10))
        .expect("the process did not exit");
    (
        status.code(),
        std::fs::read_to_string(stdout.path()).unwrap(),
        std::fs::read_to_string(stderr.path()).unwrap(),
    )
}

/// Fills Redis past its memory: 2 MiB stored under the key `filler`,
/// then `noeviction` and a `maxmemory` of 1 MB, so that it refuses every
/// command that would store more (OOM).
pub fn fill_past_maxmemory(admin: &mut redis::Connection) {
    let filler = "x".repeat(2 << 20);
    let _: () = redis::cmd("SET")
        .arg("filler")
        .arg(&filler)
        .query(admin)
        .unwrap();
    for (setting, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1mb")] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(setting)
            .arg(value)
            .query(admin)
            .unwrap();
    }
}
