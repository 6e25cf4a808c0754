//! Delegated verification: Envoy's `jwt_authn` (or Istio's
//! `RequestAuthentication`) verified the token and wrote its payload into
//! dynamic metadata (`payload_in_metadata`); appguard reads that payload —
//! never a header — and applies its own rules on top.
//!
//! Envoy 1.40 hands the metadata Struct to Wasm in the proxy-wasm map
//! encoding (key → value bytes: strings as UTF-8, numbers as 8-byte
//! little-endian doubles) — see [`payload_from_pairs`]. A serialized
//! `google.protobuf.Struct` (or `Value`) is understood too
//! ([`payload_from_struct`]), for hosts that send the message itself.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::{Map, Number, Value};

#[derive(Clone, PartialEq, Message)]
struct PbStruct {
    #[prost(btree_map = "string, message", tag = "1")]
    fields: BTreeMap<String, PbValue>,
}

#[derive(Clone, PartialEq, Message)]
struct PbList {
    #[prost(message, repeated, tag = "1")]
    values: Vec<PbValue>,
}

#[derive(Clone, PartialEq, Message)]
struct PbValue {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(int32, tag = "1")]
    Null(i32),
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    String(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
    #[prost(message, tag = "5")]
    Struct(PbStruct),
    #[prost(message, tag = "6")]
    List(PbList),
}

/// Largest metadata payload read.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

fn to_json(v: PbValue, depth: usize) -> Option<Value> {
    if depth > 16 {
        return None;
    }
    Some(match v.kind? {
        Kind::Null(_) => Value::Null,
        // Struct numbers are doubles: integral values (exp, iat, nbf) come
        // back as integers so the claim rules read them like a JWT's.
        Kind::Number(n) => {
            if n.fract() == 0.0 && (0.0..9.0e15).contains(&n) {
                Value::Number(Number::from(n as u64))
            } else {
                Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
        }
        Kind::String(s) => Value::String(s),
        Kind::Bool(b) => Value::Bool(b),
        Kind::Struct(s) => Value::Object(struct_to_map(s, depth + 1)?),
        Kind::List(l) => Value::Array(
            l.values
                .into_iter()
                .map(|x| to_json(x, depth + 1))
                .collect::<Option<Vec<_>>>()?,
        ),
    })
}

fn struct_to_map(s: PbStruct, depth: usize) -> Option<Map<String, Value>> {
    s.fields
        .into_iter()
        .map(|(k, v)| to_json(v, depth).map(|v| (k, v)))
        .collect()
}

/// Decodes the payload `jwt_authn` stored as the claims map. Envoy hands
/// the metadata entry over as a serialized `google.protobuf.Value` holding
/// the Struct; a bare Struct is accepted too.
pub fn payload_from_struct(bytes: &[u8]) -> Option<Map<String, Value>> {
    if bytes.is_empty() || bytes.len() > MAX_PAYLOAD_BYTES {
        return None;
    }
    if let Ok(PbValue {
        kind: Some(Kind::Struct(s)),
    }) = PbValue::decode(bytes)
    {
        return struct_to_map(s, 0);
    }
    let s = PbStruct::decode(bytes).ok()?;
    if s.fields.is_empty() {
        return None;
    }
    struct_to_map(s, 0)
}

/// Claims whose values Envoy sends as numbers (8-byte little-endian
/// doubles). Every other claim is read as UTF-8 text: the map encoding does
/// not say which type a value had, and appguard's own rules only need text
/// beyond these.
const NUMERIC_CLAIMS: [&str; 3] = ["exp", "iat", "nbf"];

/// Decodes the proxy-wasm map encoding of the payload (what Envoy 1.40
/// returns for `metadata.filter_metadata.<filter>.<key>`). Values that are
/// neither a numeric claim nor UTF-8 are left out.
pub fn payload_from_pairs(bytes: &[u8]) -> Option<Map<String, Value>> {
    if bytes.is_empty() || bytes.len() > MAX_PAYLOAD_BYTES {
        return None;
    }
    let pairs = crate::wire::decode_pairs(bytes)?;
    let mut out = Map::new();
    for (k, v) in pairs {
        let Ok(key) = String::from_utf8(k.to_vec()) else {
            continue;
        };
        let value = if NUMERIC_CLAIMS.contains(&key.as_str()) {
            let b: [u8; 8] = v.try_into().ok()?;
            let n = f64::from_le_bytes(b);
            if n.fract() != 0.0 || !(0.0..9.0e15).contains(&n) {
                return None;
            }
            Value::Number(Number::from(n as u64))
        } else {
            match std::str::from_utf8(v) {
                Ok(s) => Value::String(s.to_owned()),
                Err(_) => continue,
            }
        };
        out.insert(key, value);
    }
    (!out.is_empty()).then_some(out)
}

/// Reads the payload in either encoding.
pub fn payload(bytes: &[u8]) -> Option<Map<String, Value>> {
    payload_from_pairs(bytes).or_else(|| payload_from_struct(bytes))
}

/// Encodes a claims map as a Struct (tests and tools).
pub fn struct_from_payload(map: &Map<String, Value>) -> Vec<u8> {
    fn val(v: &Value) -> PbValue {
        let kind = match v {
            Value::Null => Kind::Null(0),
            Value::Bool(b) => Kind::Bool(*b),
            Value::Number(n) => Kind::Number(n.as_f64().unwrap_or(0.0)),
            Value::String(s) => Kind::String(s.clone()),
            Value::Array(a) => Kind::List(PbList {
                values: a.iter().map(val).collect(),
            }),
            Value::Object(o) => Kind::Struct(PbStruct {
                fields: o.iter().map(|(k, v)| (k.clone(), val(v))).collect(),
            }),
        };
        PbValue { kind: Some(kind) }
    }
    PbStruct {
        fields: map.iter().map(|(k, v)| (k.clone(), val(v))).collect(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    #[test]
    fn struct_round_trip_with_integral_numbers() {
        let claims = json!({"exp": 1900000060u64, "iss": "i", "aud": ["a", "b"], "n": {"x": true}, "f": 1.5});
        let map = claims.as_object().unwrap().clone();
        let back = payload_from_struct(&struct_from_payload(&map)).unwrap();
        assert_eq!(Value::Object(back), claims);
        // wrapped in a Value, as Envoy hands it over
        let wrapped = PbValue {
            kind: Some(Kind::Struct(
                PbStruct::decode(struct_from_payload(&map).as_slice()).unwrap(),
            )),
        }
        .encode_to_vec();
        assert_eq!(
            Value::Object(payload_from_struct(&wrapped).unwrap()),
            claims
        );
    }

    #[test]
    fn envoy_map_encoding_of_a_jwt_authn_payload() {
        // Captured from Envoy 1.40 (jwt_authn payload_in_metadata, read at
        // metadata.filter_metadata.envoy.filters.http.jwt_authn.<key>).
        let bytes: Vec<u8> = [
            &[5u8, 0, 0, 0][..],
            &[
                3, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0,
                8, 0, 0, 0, 3, 0, 0, 0, 22, 0, 0, 0,
            ],
            b"aud\0api\0sub\0u1\0iat\0",
            &[0x00, 0x00, 0x80, 0x8b, 0x2d, 0xc1, 0xda, 0x41, 0],
            b"exp\0",
            &[0x00, 0x00, 0x80, 0x9a, 0x2d, 0xc1, 0xda, 0x41, 0],
            b"iss\0https://issuer.example\0",
        ]
        .concat();
        let m = payload(&bytes).unwrap();
        assert_eq!(m["sub"], "u1");
        assert_eq!(m["aud"], "api");
        assert_eq!(m["iss"], "https://issuer.example");
        assert_eq!(m["iat"], 1_795_470_894u64);
        assert_eq!(m["exp"].as_u64().unwrap() - m["iat"].as_u64().unwrap(), 60);
        assert!(payload_from_struct(b"\xff\xff\xff").is_none());
        assert!(payload_from_struct(&[]).is_none());
    }
}
