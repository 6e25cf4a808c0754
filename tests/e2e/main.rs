//! End-to-end tests: a real Envoy 1.40 loading the built module
//! (`target/appguard.wasm`), with the real rate-limit service, Redis and
//! JWKS servers where a test needs them; see `harness` for what is started
//! and how it is stopped.
//!
//! One test binary with a module per area, so that the harness and the
//! dependencies are compiled and linked once, and one port registry
//! (`harness::free_port`) serves every test of the run. Run one area with
//! `cargo test --test e2e tokens::`, one test by its name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

/// Asymmetric tokens: cheap refusals, negative cache, failure budget,
/// delegated verification behind `jwt_authn`.
mod asymmetric;
/// Hostile input: token and input attacks, the VM survives.
mod attacks;
/// The module in Envoy against the native core, on seeded generated requests.
mod differential;
/// Dependency faults and fail-closed deployment.
mod faults;
/// Routes, local replies, spoofed identity headers, bad configuration.
mod foundation;
/// `hold_headers_for_body`: body routes without a buffer filter.
mod held_headers;
/// Platforms, apps and API keys (the three-platform example).
mod identity;
/// The API key's cookie copy cut with `api_keys.forward: false`.
mod key_cookies;
/// Monitor mode, stats, alerts, logs without secrets.
mod operations;
/// Shared rate limits through the rate-limit service and Redis.
mod ratelimit;
/// A JWKS rotation under concurrent traffic: waiting for the re-fetch.
mod rotation;
/// Request signing (RFC 9421) bound to the attested install.
mod signing;
/// Attestation tokens: HS256, ES256, RS256, remote JWKS.
mod tokens;
