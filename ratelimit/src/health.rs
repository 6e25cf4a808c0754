//! The standard gRPC health service (`grpc.health.v1.Health/Check`) on the
//! gRPC port, as envoyproxy/ratelimit answers it: a Kubernetes `grpc:`
//! probe, or a gRPC load balancer's health check, sees the same state as
//! `GET /healthcheck` on the HTTP port (see [`crate::http`]).
//!
//! `Check` with the service `""` (the server as a whole), `ratelimit` (the
//! name envoyproxy/ratelimit registers its status under) or
//! `envoy.service.ratelimit.v3.RateLimitService` answers `SERVING` when
//! `/healthcheck` would answer 200, `NOT_SERVING` when it would answer
//! 500 (the store cannot count, or shutdown has begun); any other service
//! name is `NOT_FOUND`. `Watch` is not implemented (`UNIMPLEMENTED`):
//! probes use `Check`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::http::HttpState;

/// The service's name, as gRPC clients address it.
pub const SERVICE_NAME: &str = "grpc.health.v1.Health";

/// The rate-limit service's name, which `Check` also answers for.
const RLS_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// The service asked about; `""` for the server as a whole.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// `ServingStatus`: 1 `SERVING`, 2 `NOT_SERVING`.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `ServingStatus.SERVING`.
pub const SERVING: i32 = 1;
/// `ServingStatus.NOT_SERVING`.
pub const NOT_SERVING: i32 = 2;

/// The health service, looking at what `/healthcheck` looks at.
#[derive(Debug, Clone)]
pub struct HealthServer {
    state: HttpState,
}

impl HealthServer {
    /// A health service answering from `state`.
    pub fn new(state: HttpState) -> Self {
        HealthServer { state }
    }
}

/// Answers one `Check`.
#[derive(Clone)]
struct CheckSvc(HttpState);

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl tonic::server::UnaryService<HealthCheckRequest> for CheckSvc {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<tonic::Response<HealthCheckResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<HealthCheckRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let service = request.into_inner().service;
            // `ratelimit`: the name envoyproxy/ratelimit registers its status
            // under (NewHealthChecker(.., "ratelimit", ..)).
            if !service.is_empty() && service != RLS_NAME && service != "ratelimit" {
                return Err(tonic::Status::not_found("unknown service"));
            }
            let status = match state.health().await {
                Ok(()) => SERVING,
                Err(_) => NOT_SERVING,
            };
            Ok(tonic::Response::new(HealthCheckResponse { status }))
        })
    }
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for HealthServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        if req.uri().path() == "/grpc.health.v1.Health/Check" {
            let method = CheckSvc(self.state.clone());
            return Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                    .apply_max_message_size_config(Some(1024), None);
                Ok(grpc.unary(method, req).await)
            });
        }
        Box::pin(async move { Ok(tonic::Status::unimplemented("").into_http()) })
    }
}

impl tonic::server::NamedService for HealthServer {
    const NAME: &'static str = SERVICE_NAME;
}
