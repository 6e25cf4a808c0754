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
