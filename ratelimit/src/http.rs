//! The HTTP side port: `GET /healthcheck` and `GET /stats`.
//!
//! `/healthcheck` answers 200 `OK` when the service can answer rate-limit
//! calls: for the in-memory store while it has room for new counters (not
//! at its key cap, and no call refused for lack of room in the last
//! seconds), and for Redis only when a PING succeeds. It answers 500 once shutdown has begun: on SIGINT/SIGTERM both
//! ports keep serving for `--drain-seconds` (see [`crate::cli`]) with this
//! 500, so a load balancer stops sending traffic before the gRPC port
//! closes (as envoyproxy/ratelimit does on SIGTERM).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tracing::warn;

use crate::backend::Backend;
use crate::logging::LineThrottle;
use crate::service::{unix_now, Stats, StatsSnapshot};

/// Most `health check failed` lines written in a second. Health checks
/// come from probes, and from anyone who reaches the gRPC port
/// (`grpc.health.v1.Health/Check`): while the store fails, a client
/// calling it in a loop would otherwise write one `warn` line per call and
/// bury the service's other warnings. The next line written after some
/// were left out says how many (`suppressed`).
pub const HEALTH_LOG_LINES_PER_SECOND: u32 = 1;

/// Bounds the `health check failed` lines of the process (one service per
/// process: the HTTP port and the gRPC health service share it).
static HEALTH_LINES: LineThrottle = LineThrottle::new(HEALTH_LOG_LINES_PER_SECOND);

/// What the HTTP handlers look at.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The counter store to check.
    pub backend: Arc<Backend>,
    /// The service counters.
    pub stats: Arc<Stats>,
    /// Set when shutdown begins.
    pub shutting_down: Arc<AtomicBool>,
}

/// The router for the HTTP port.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/stats", get(stats))
        .with_state(state)
}

impl HttpState {
    /// Whether the service can answer rate-limit calls: not shutting down,
    /// and the store able to count (a failed check is logged). The one
    /// rule of `/healthcheck` and the gRPC health service
    /// ([`crate::health`]); the error says why, for `/healthcheck`'s body.
    pub async fn health(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down\n".to_owned());
        }
        self.backend.check().await.map_err(|e| {
            if let Some(suppressed) = HEALTH_LINES.admit(unix_now()) {
                warn!(
                    backend = self.backend.kind(),
                    error = %e,
                    suppressed,
                    "health check failed"
                );
            }
            format!("{} unavailable: {e}\n", self.backend.kind())
        })
    }
}

async fn healthcheck(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.health().await {
        Ok(()) => (StatusCode::OK, "OK".to_owned()),
        Err(why) => (StatusCode::INTERNAL_SERVER_ERROR, why),
    }
}

async fn stats(State(state): State<HttpState>) -> Json<StatsSnapshot> {
    Json(state.stats.snapshot())
}
