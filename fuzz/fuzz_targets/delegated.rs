//! Delegated payloads, `token::delegated::payload`: the claims Envoy's
//! `jwt_authn` left in dynamic metadata, in the proxy-wasm map encoding or
//! as a serialized `google.protobuf.Struct`/`Value`.
//!
//! Oracles: a payload from the map encoding is never empty, and its `exp`,
//! `iat` and `nbf` are numbers or `null` (a value that is not a
//! non-negative integer stays what it is, for the claim rules to refuse as
//! malformed); a payload re-encoded as a Struct decodes again. (A `Value` holding an empty Struct decodes to an
//! empty payload: harmless, since the claim rules then refuse it for
//! lacking `exp`.)
#![no_main]

use appguard::token::delegated::{
    payload, payload_from_pairs, payload_from_struct, struct_from_payload,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(map) = payload_from_pairs(data) {
        assert!(!map.is_empty());
        for c in ["exp", "iat", "nbf"] {
            if let Some(v) = map.get(c) {
                assert!(v.is_number() || v.is_null(), "{c} = {v}");
            }
        }
    }
    let _ = payload_from_struct(data);
    if let Some(map) = payload(data).filter(|m| !m.is_empty()) {
        let again = payload_from_struct(&struct_from_payload(&map));
        assert!(again.is_some(), "a payload does not survive re-encoding");
    }
});
