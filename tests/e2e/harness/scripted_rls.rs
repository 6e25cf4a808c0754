//! A rate-limit service (Envoy RLS v3 over real gRPC) that answers every
//! call `OK` with the request headers it was told to ask for
//! (`request_headers_to_add`). The project's service never asks for
//! request headers; other services (envoyproxy/ratelimit forks, a
//! customer's own) do, and appguard sets what they ask for on the
//! upstream request. Bound to a free 127.0.0.1 port, stopped on drop.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

/// The running service; dropping it stops it (its runtime goes).
pub struct ScriptedRls {
    /// The gRPC port on 127.0.0.1.
    pub port: u16,
    _rt: tokio::runtime::Runtime,
}

struct Answer {
    request_headers: Vec<(String, String)>,
    delay: std::time::Duration,
}

#[tonic::async_trait]
impl RateLimitService for Answer {
    async fn should_rate_limit(
        &self,
        _request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        tokio::time::sleep(self.delay).await;
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            request_headers_to_add: self
                .request_headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.clone(),
                    value: v.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }))
    }
}

impl ScriptedRls {
    /// Starts the service, answering `OK` and asking for `request_headers`,
    /// each answer `delay` after its call came.
    pub fn start(request_headers: &[(&str, &str)], delay: std::time::Duration) -> ScriptedRls {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local address").port();
        let answer = Answer {
            request_headers: request_headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            delay,
        };
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(RateLimitServiceServer::new(answer))
                .serve_with_incoming(incoming),
        );
        ScriptedRls { port, _rt: rt }
    }
}
