//! Host services for the core, implemented with the host calls of [`abi`].

use super::abi::{self, Buffer, Map, CAS_MISMATCH};
use crate::store::{BucketSalt, SharedStore, StoreError};

/// Proxy-wasm shared data: one map per VM id, shared by every worker.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        abi::shared_get(key).ok().flatten()
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match abi::shared_set(key, value, cas) {
            Ok(()) => Ok(()),
            Err(e) if e == CAS_MISMATCH => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Host),
        }
    }
}

/// Fresh random bytes for the instance's bucket salt (WASI `random_get`,
/// which Envoy serves from its own random generator), or `None`.
pub fn random_salt() -> Option<[u8; BucketSalt::LEN]> {
    let mut bytes = [0u8; BucketSalt::LEN];
    getrandom::getrandom(&mut bytes).ok().map(|()| bytes)
}

/// Seconds since the Unix epoch, from the host clock (0 if unavailable,
/// which makes every token look expired: fail closed).
pub fn now_seconds() -> u64 {
    now_millis() / 1000
}

/// Milliseconds since the Unix epoch, from the host clock.
pub fn now_millis() -> u64 {
    abi::now_nanos().map_or(0, |n| n / 1_000_000)
}

/// Dispatches a GET through an Envoy cluster.
pub fn http_get(
    cluster: &str,
    authority: &str,
    path: &str,
    timeout_ms: u64,
) -> Result<u32, abi::HostError> {
    abi::http_call(
        cluster,
        &[
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            ("accept", "application/json"),
        ],
        None,
        u32::try_from(timeout_ms).unwrap_or(u32::MAX),
    )
}

/// Status and body of the HTTP call response being delivered (body capped).
pub fn http_call_response(body_size: usize, cap: usize) -> (u16, Option<Vec<u8>>) {
    let status = abi::map_value(Map::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if body_size > cap {
        return (status, None);
    }
    let body = abi::buffer(Buffer::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten();
    (status, body)
}

/// A header of the HTTP call response being delivered, if it has one (the
/// first of its values).
pub fn http_call_response_header(name: &str) -> Option<String> {
    abi::map_value(Map::HttpCallResponseHeaders, name)
        .ok()
        .flatten()
}

/// POSTs a JSON body through an Envoy cluster (fire and forget).
pub fn post_json(
    cluster: &str,
    authority: &str,
    path: &str,
    body: &str,
    timeout_ms: u64,
) -> Result<u32, abi::HostError> {
    abi::http_call(
        cluster,
        &[
            (":method", "POST"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/json"),
        ],
        Some(body.as_bytes()),
        u32::try_from(timeout_ms).unwrap_or(u32::MAX),
    )
}
