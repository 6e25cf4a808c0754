//! Extra services for the end-to-end tests: a real Redis and the real
//! appguard rate-limit service, each on free loopback ports, stopped on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{free_port, http, repo_root, Service};

/// A running `redis-server` (no persistence).
pub struct Redis {
    /// Its port.
    pub port: u16,
    /// The process.
    pub service: Service,
}

impl Redis {
    /// Starts redis-server on a free port.
    pub fn start() -> Redis {
        Redis::on_port(free_port())
    }

    /// Starts redis-server on `port` (to bring one back where it was).
    pub fn on_port(port: u16) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        let service = Service::start("redis", cmd, Some(port));
        Redis { port, service }
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command through `redis-cli` and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The appguard-ratelimit binary: `RATELIMIT_BIN` or the workspace build.
pub fn ratelimit_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RATELIMIT_BIN") {
        return PathBuf::from(p);
    }
    let p = repo_root().join("target/debug/appguard-ratelimit");
    assert!(
        p.exists(),
        "appguard-ratelimit not built: `cargo build -p appguard-ratelimit` (make e2e does)"
    );
    p
}

/// A running rate-limit service.
pub struct RateLimitService {
    /// gRPC port.
    pub grpc_port: u16,
    /// HTTP port (`/healthcheck`, `/stats`).
    pub http_port: u16,
    /// The process.
    pub service: Service,
}

impl RateLimitService {
    /// Starts the service with `config` (a YAML path), counting in Redis when
    /// `redis` is given, in memory otherwise.
    ///
    /// Its windows are aligned on the epoch, so this first waits past an
    /// hour boundary that is less than a minute away (a test's counts must
    /// not restart halfway).
    pub fn start(config: &std::path::Path, redis: Option<&str>) -> RateLimitService {
        Self::start_with(config, redis, &[])
    }

    /// [`RateLimitService::start`] with more command-line flags.
    pub fn start_with(
        config: &std::path::Path,
        redis: Option<&str>,
        flags: &[&str],
    ) -> RateLimitService {
        super::avoid_hour_edge(60);
        let grpc_port = free_port();
        let http_port = free_port();
        let mut cmd = Command::new(ratelimit_bin());
        cmd.arg("--config")
            .arg(config)
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(["--log-format", "text"]);
        if let Some(url) = redis {
            cmd.args(["--redis", url]);
        }
        cmd.args(flags);
        let service = Service::start("ratelimit", cmd, Some(grpc_port));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !http::get(http_port, "/healthcheck").is_ok_and(|r| r.status == 200) {
            assert!(
                std::time::Instant::now() < deadline,
                "the rate-limit service never reported healthy:\n{}",
                service.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RateLimitService {
            grpc_port,
            http_port,
            service,
        }
    }

    /// The service's `/stats` counters.
    pub fn stats(&self) -> serde_json::Value {
        http::get(self.http_port, "/stats")
            .map(|r| r.json())
            .unwrap_or_default()
    }
}

/// tests/fixtures/ratelimit.yaml.
pub fn test_limits() -> PathBuf {
    repo_root().join("tests/fixtures/ratelimit.yaml")
}
