//! The proxy-wasm map encoding, `wire::decode_pairs` (header maps, gRPC
//! metadata, map properties as Envoy hands them over), and the request's
//! header list decoded from it, `headers::Headers::from_wire`.
//!
//! Oracles: what decodes re-encodes to bytes that decode to the same pairs,
//! no longer than the input plus the final NUL (the decoder checks lengths,
//! not the NUL separators, so the last one may be missing from the input).
//! `Headers::from_wire` accepts exactly what `decode_pairs` accepts and
//! yields the same pairs, each decoded lossily as UTF-8 (a value that is
//! not UTF-8 marked with a leading NUL), whether it took its one-copy path
//! or the per-header one.
#![no_main]

use appguard::headers::Headers;
use appguard::wire::{decode_pairs, encode_pairs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let headers = Headers::from_wire(data);
    let Some(pairs) = decode_pairs(data) else {
        assert!(
            headers.is_none(),
            "Headers accepted what decode_pairs refused"
        );
        return;
    };
    let Some(headers) = headers else {
        panic!("Headers refused what decode_pairs accepted");
    };
    assert_eq!(headers.len(), pairs.len());
    for ((k, v), (hk, hv)) in pairs.iter().zip(headers.iter()) {
        assert_eq!(String::from_utf8_lossy(k), hk);
        match std::str::from_utf8(v) {
            Ok(v) => assert_eq!(v, hv),
            Err(_) => assert_eq!(format!("\0{}", String::from_utf8_lossy(v)), hv),
        }
    }
    let encoded = encode_pairs(pairs.iter().copied());
    assert_eq!(decode_pairs(&encoded).as_ref(), Some(&pairs));
    if !pairs.is_empty() {
        assert!(encoded.len() <= data.len() + 1, "re-encoding grew");
    }
});
