//! appguard-ratelimit: a rate-limit service that speaks Envoy's rate-limit
//! service API v3 (`envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`) so that appguard, and Envoy's own
//! `envoy.filters.http.ratelimit` filter, share limits across many Envoy
//! instances.
//!
//! It reads envoyproxy/ratelimit's YAML descriptor format ([`config`]),
//! matches descriptors the same way ([`matching`]), counts in fixed windows
//! ([`window`]) in memory or in Redis ([`backend`]) with the same counter
//! keys, and answers like envoyproxy/ratelimit ([`service`]). Production may
//! run envoyproxy/ratelimit itself with the same YAML.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod backend;
pub mod cli;
pub mod config;
pub mod health;
pub mod http;
pub mod listen;
pub mod logging;
pub mod matching;
pub mod service;
pub mod window;
