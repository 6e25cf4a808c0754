//! appguard: a proxy-wasm HTTP filter that decides, per request, whether it
//! comes from a genuine, allowed client on the flow it belongs to and within
//! its limits (see SPEC.md in the README).
//!
//! The crate has two halves:
//! - the pure decision core (every module but `proxy`): configuration,
//!   request value, policy evaluation. It never calls the host and takes the
//!   clock as an argument, so it runs natively, under `wasm-bindgen-test` and
//!   under fuzzers;
//! - the proxy-wasm adapter ([`proxy`], feature `proxy`): reads the request
//!   from Envoy, calls the core, carries out the decision.
// Every public item says what it is and why (the quality bar of the
// project's guide); the build fails otherwise.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod alerts;
pub mod config;
pub mod decision;
pub mod headers;
pub mod identity;
pub mod limits;
pub mod lograte;
pub mod net;
pub mod phone;
pub mod policy;
pub mod ratelimit;
pub mod request;
pub mod signing;
pub mod store;
pub mod token;
pub mod wire;

#[cfg(feature = "proxy")]
pub mod proxy;

/// `bytes` as lower-case hex, two digits a byte: digests in the
/// configuration (API-key hashes), the hashed phone numbers and `jti`s
/// sent to the rate-limit service, shared-data key parts. One writer for
/// all of them, with one allocation.
pub fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}
