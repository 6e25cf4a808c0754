//! Delegated payloads, `token::delegated::payload_from_metadata`: the
//! claims Envoy's `jwt_authn` left in the request's dynamic metadata, read
//! from the serialized `envoy.config.core.v3.Metadata` Envoy hands over.
//!
//! Oracle: a payload read from any bytes, encoded again as metadata, reads
//! back as the same claims (no claim changes type or value on the way).
#![no_main]

use appguard::token::delegated::{metadata_from_payload, payload_from_metadata};
use libfuzzer_sys::fuzz_target;

const FILTER: &str = "envoy.filters.http.jwt_authn";

fuzz_target!(|data: &[u8]| {
    // Re-encoding adds another filter's entry (some 14 bytes): an input
    // that close to the cap could come back over it.
    if data.len() > appguard::token::delegated::MAX_METADATA_BYTES - 64 {
        return;
    }
    if let Some(map) = payload_from_metadata(data, FILTER, "p") {
        let again = payload_from_metadata(&metadata_from_payload(FILTER, "p", &map), FILTER, "p");
        assert_eq!(again.as_ref(), Some(&map), "a payload changes on re-encoding");
    }
});
