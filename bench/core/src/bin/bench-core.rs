//! Runs appguard's pure decision core on one request in a loop, natively,
//! so that `valgrind --tool=callgrind` can say where the per-request
//! instructions go (the Wasm module runs the same Rust code inside V8).
//!
//! ```text
//! bench-core SCENARIO.json [ITERATIONS]
//! ```
//!
//! The scenario file (written by `scripts/bench.py --profile`) holds:
//! - `config`: an appguard configuration (object);
//! - `headers`: the request headers as `[[name, value], …]`, pseudo-headers
//!   included, as Envoy hands them to the filter;
//! - `token_header` and `tokens` (optional): a token stream; iteration `i`
//!   sends `tokens[i % len]` in `token_header`, with a fresh verified-token
//!   cache each time when `unique` is true (every token verified);
//! - `body` (optional): the request body, for routes that read it;
//! - `client_ip`: the downstream address;
//! - `delegated` (optional): the claims `jwt_authn` verified, for the
//!   config's first provider (`verified_by`): encoded once as Envoy hands
//!   them over (the request's dynamic metadata, a serialized `Metadata`)
//!   and decoded on every request, as the filter does after its property
//!   read.
//!
//! When the core asks for the rate-limit service, an OK answer for every
//! descriptor is fed back (`evaluate_rls`), as the service would send.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::Instant;

use appguard::config::Config;
use appguard::headers::Headers;
use appguard::identity::KeyMemo;
use appguard::limits::ServiceCache;
use appguard::policy::{self, Ctx, KeyFetch, NegativeCache, RemoteKeys, Step, TokenCache};
use appguard::ratelimit::rls::DescriptorStatus;
use appguard::ratelimit::{Code, RateLimitResponse};
use appguard::request::Request;
use appguard::store::{BucketSalt, MemStore};
use serde_json::Value;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: bench-core SCENARIO.json [ITERATIONS]");
        std::process::exit(2);
    };
    let iterations: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    let scenario: Value = serde_json::from_str(&text).unwrap_or_else(|e| fail(&format!("{e}")));

    let config_text = scenario["config"].to_string();
    let config =
        Config::from_json(config_text.as_bytes()).unwrap_or_else(|e| fail(&format!("config: {e}")));
    let headers: Vec<(String, String)> = scenario["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let token_header = scenario["token_header"].as_str().unwrap_or("").to_owned();
    let tokens: Vec<String> = scenario["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let unique = scenario["unique"].as_bool().unwrap_or(false);
    let body = scenario["body"].as_str().map(|s| s.as_bytes().to_vec());
    let ip: Option<IpAddr> = scenario["client_ip"].as_str().and_then(|s| s.parse().ok());
    let (filter, key) = config
        .providers
        .first()
        .and_then(|p| p.verified_by.clone())
        .unwrap_or_default();
    let delegated_wire: Option<Vec<u8>> = scenario["delegated"]
        .as_object()
        .map(|claims| appguard::token::delegated::metadata_from_payload(&filter, &key, claims));
    let read_delegated = |_: usize| {
        delegated_wire
            .as_deref()
            .and_then(|b| appguard::token::delegated::payload_from_metadata(b, &filter, &key))
    };
    // One header list per token of the stream, built before the loop: the
    // filter decodes Envoy's map in the adapter, outside the core measured
    // here.
    let lists: Vec<Headers> = if tokens.is_empty() {
        vec![headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()]
    } else {
        tokens
            .iter()
            .map(|t| {
                headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .chain(std::iter::once((token_header.as_str(), t.as_str())))
                    .collect()
            })
            .collect()
    };

    let store = MemStore::default();
    let mut token_cache = RefCell::new(TokenCache::default());
    let over_limit = RefCell::new(ServiceCache::new(&BucketSalt::new([7; 16])));
    let key_memo = RefCell::new(KeyMemo::new(&BucketSalt::new([7; 16])));
    let negative = RefCell::new(NegativeCache::default());
    let remote: Vec<RemoteKeys> = config
        .providers
        .iter()
        .map(|_| RemoteKeys::default())
        .collect();

    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    let start = Instant::now();
    for i in 0..iterations {
        let list = &lists[(i as usize) % lists.len()];
        if unique && !tokens.is_empty() {
            token_cache = RefCell::new(TokenCache::default());
        }
        let now_ms = now_millis();
        let now = now_ms / 1000;
        let ctx = Ctx {
            config: &config,
            store: &store,
            bucket_salt: BucketSalt::new([7; 16]),
            token_cache: &token_cache,
            remote_keys: &remote,
            key_fetch: KeyFetch::NotNow,
            service_cache: &over_limit,
            key_memo: &key_memo,
            negative: &negative,
            now_ms,
        };
        let mut req = Request::new(list, ip);
        if delegated_wire.is_some() {
            req.delegated = appguard::request::Delegated::Lazy(&read_delegated);
        }
        let mut step = policy::evaluate(&ctx, &req, now);
        // Follow the phases as the adapter does.
        let step = loop {
            step = match step {
                Step::NeedBody(p) => {
                    policy::evaluate_body(&ctx, &req, body.as_deref().unwrap_or(&[]), p, now)
                }
                Step::NeedRateLimit(p, call) => {
                    let n = descriptors_in(&call.message);
                    let resp = ok_response(n);
                    policy::evaluate_rls(&ctx, p, Ok(&resp), now)
                }
                other => break other,
            };
        };
        let label = match &step {
            Step::Done(appguard::decision::Decision::Allow(_), _) => "allow".to_owned(),
            Step::Done(appguard::decision::Decision::Deny(d), _) => format!("deny:{}", d.reason),
            Step::NeedKeys { .. } => "need_keys".to_owned(),
            _ => "other".to_owned(),
        };
        *outcomes.entry(label).or_default() += 1;
        std::hint::black_box(&step);
    }
    let elapsed = start.elapsed();
    println!(
        "{{\"iterations\": {iterations}, \"ns_per_iteration\": {:.0}, \"outcomes\": {}}}",
        elapsed.as_nanos() as f64 / iterations as f64,
        serde_json::to_string(&outcomes).unwrap_or_default()
    );
}

/// Descriptors in an encoded `RateLimitRequest` (field 2, length-delimited,
/// at top level): counted so the OK answer has one status per descriptor.
fn descriptors_in(msg: &[u8]) -> usize {
    let mut i = 0;
    let mut n = 0;
    while i < msg.len() {
        let (key, used) = varint(&msg[i..]);
        i += used;
        match key & 7 {
            0 => i += varint(&msg[i..]).1,
            2 => {
                let (len, used) = varint(&msg[i..]);
                i += used + len as usize;
                if key >> 3 == 2 {
                    n += 1;
                }
            }
            1 => i += 8,
            5 => i += 4,
            _ => break,
        }
    }
    n
}

fn varint(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    (v, b.len())
}

fn ok_response(n: usize) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: (0..n)
            .map(|_| DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: None,
                limit_remaining: u32::MAX,
                duration_until_reset: None,
            })
            .collect(),
        response_headers_to_add: Vec::new(),
        request_headers_to_add: Vec::new(),
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-core: {msg}");
    std::process::exit(1);
}
