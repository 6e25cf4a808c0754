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

async fn healthcheck(State(state): State<HttpState>) -> (StatusCode, String) {
    if state.shutting_down.load(Ordering::Relaxed) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "shutting down\n".to_owned(),
        );
    }
    match state.backend.check().await {
        Ok(()) => (StatusCode::OK, "OK".to_owned()),
        Err(e) => {
            warn!(backend = state.backend.kind(), error = %e, "health check failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{} unavailable: {e}\n", state.backend.kind()),
            )
        }
    }
}

async fn stats(State(state): State<HttpState>) -> Json<StatsSnapshot> {
    Json(state.stats.snapshot())
}
