//! The proxy-wasm map encoding, `wire::decode_pairs` (header maps, gRPC
//! metadata, map properties as Envoy hands them over).
//!
//! Oracle: what decodes re-encodes to bytes that decode to the same pairs,
//! no longer than the input plus the final NUL (the decoder checks lengths,
//! not the NUL separators, so the last one may be missing from the input).
#![no_main]

use appguard::wire::{decode_pairs, encode_pairs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(pairs) = decode_pairs(data) else {
        return;
    };
    let encoded = encode_pairs(pairs.iter().copied());
    assert_eq!(decode_pairs(&encoded).as_ref(), Some(&pairs));
    if !pairs.is_empty() {
        assert!(encoded.len() <= data.len() + 1, "re-encoding grew");
    }
});
