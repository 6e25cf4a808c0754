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
use crate::service::{Stats, StatsSnapshot};

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
            warn!(backend = self.backend.kind(), error = %e, "health check failed");
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
