//! Rate-limit service answers: `ratelimit::decode_response` then
//! `ratelimit::interpret`, as the adapter does with the gRPC reply bytes.
//!
//! The first byte is the number of descriptors sent (0-15).
//!
//! Oracles: a reset is never beyond a year; the headers the service may add
//! are never pseudo-headers, framing headers or appguard's own.
#![no_main]

use appguard::ratelimit::{decode_response, interpret, MAX_RESET_SECS};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_900_000_000;

fn check_header(name: &str, value: &str) {
    let lower = name.to_ascii_lowercase();
    assert!(!lower.is_empty() && !lower.starts_with(':'), "{name:?}");
    assert!(!lower.starts_with("x-appguard-"), "{name:?}");
    for framing in [
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "te",
        "upgrade",
    ] {
        assert_ne!(lower, framing);
    }
    assert!(!value.contains(['\r', '\n', '\0']), "{value:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Ok(resp) = decode_response(rest) else {
        return;
    };
    let Ok(v) = interpret(&resp, usize::from(n % 16), NOW) else {
        return;
    };
    if let Some(q) = &v.quota {
        assert!(q.reset_secs.is_none_or(|r| r <= MAX_RESET_SECS));
    }
    for o in &v.over_limit_descriptors {
        assert!(o.index < usize::from(n % 16));
        assert!(o.reset_secs.is_none_or(|r| (1..=MAX_RESET_SECS).contains(&r)));
    }
    if let Some(r) = v.retry_after_secs() {
        assert!(r <= MAX_RESET_SECS);
    }
    for (k, val) in v
        .request_headers
        .iter()
        .chain(&v.response_headers)
        .chain(&v.denial_headers())
    {
        check_header(k, val);
    }
    for (k, val) in &v.limit_headers() {
        check_header(k, val);
    }
    // An over-limit answer always says when to retry (SPEC §4), at least a
    // second from now.
    if v.over_limit {
        assert!(v.retry_after_secs().is_some_and(|r| r >= 1));
    }
});
