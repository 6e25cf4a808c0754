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

/// Claims whose values are always numbers (8-byte little-endian doubles),
/// and must be whole seconds.
const NUMERIC_CLAIMS: [&str; 3] = ["exp", "iat", "nbf"];

/// Decodes the proxy-wasm map encoding of the payload (what Envoy 1.40
/// returns for `metadata.filter_metadata.<filter>.<key>`). `None` only when
/// the bytes are not that encoding (or are empty).
///
/// The encoding does not say which type a value had; Envoy 1.40 writes a
/// string as its UTF-8 bytes, a number as an 8-byte little-endian double, a
/// boolean as one byte (0 or 1), a list as nested pairs whose keys are the
/// elements (values empty), and an object as nested pairs. A claim is read
/// as text when its bytes are UTF-8 without control characters (no JSON
/// string a signer means as text has them), and else by its shape. A claim
/// that is present but readable as none of these becomes `null`, so that it
/// still counts as present: a rule that needs it as text refuses it rather
/// than taking it for absent.
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
            // Not whole seconds (jwt_authn truncates a fraction) is kept as
            // the number it is, for the claim rules to refuse as malformed.
            match <[u8; 8]>::try_from(v).map(f64::from_le_bytes) {
                Ok(n) => number(n),
                Err(_) => Value::Null,
            }
        } else {
            pairs_value(v, 0)
        };
        out.insert(key, value);
    }
    (!out.is_empty()).then_some(out)
}

/// Text with no control characters: how every string claim arrives.
fn plain_text(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.chars().any(char::is_control))
}

/// One value of the map encoding, by its shape (see [`payload_from_pairs`]).
fn pairs_value(v: &[u8], depth: usize) -> Value {
    if let Some(s) = plain_text(v) {
        return Value::String(s.to_owned());
    }
    match v {
        [0] => return Value::Bool(false),
        [1] => return Value::Bool(true),
        _ => {}
    }
    if let Some(nested) = nested_pairs(v).filter(|_| depth < 4) {
        if nested.iter().all(|(_, val)| val.is_empty()) {
            // A list: its elements are the keys.
            return Value::Array(
                nested
                    .iter()
                    .map(|(e, _)| {
                        plain_text(e).map_or(Value::Null, |s| Value::String(s.to_owned()))
                    })
                    .collect(),
            );
        }
        return Value::Object(
            nested
                .iter()
                .filter_map(|(k, val)| {
                    let k = plain_text(k)?;
                    Some((k.to_owned(), pairs_value(val, depth + 1)))
                })
                .collect(),
        );
    }
    match <[u8; 8]>::try_from(v) {
        Ok(b) => number(f64::from_le_bytes(b)),
        Err(_) => Value::Null,
    }
}

/// `v` as nested pairs, only when they take up its bytes exactly: an
/// 8-byte double that starts with four zero bytes is not an empty list.
fn nested_pairs(v: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let pairs = crate::wire::decode_pairs(v)?;
    let used = pairs.iter().try_fold(4 + 8 * pairs.len(), |n, (k, val)| {
        n.checked_add(k.len())?
            .checked_add(val.len())?
            .checked_add(2)
    })?;
    (v.len() >= 4 && used == v.len()).then_some(pairs)
}

/// A double as JSON: whole values in range as integers (Struct numbers
/// are doubles; `exp` reads like a JWT's), others as they are, and NaN or
/// infinities as `null`.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && (0.0..9.0e15).contains(&n) {
        Value::Number(Number::from(n as u64))
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
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

    #[test]
    fn envoy_map_encoding_of_lists_objects_booleans_and_numbers() {
        // Captured from Envoy 1.40's jwt_authn for the claims
        // {"iss": "https://issuer.example", "sub": "u1", "aud": ["p1", "p2"],
        //  "b": true, "f": false, "n": 7, "x": 1.5, "o": {"k": "v", "m": 2},
        //  "iat": …, "exp": iat + 60}.
        let bytes: Vec<u8> = vec![
            0x0a, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00,
            0x00, 0x00, 0x23, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00,
            0x03, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x08, 0x00,
            0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
            0x02, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00,
            0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x65, 0x78, 0x70, 0x00, 0x00, 0x00, 0x40, 0x3c, 0xb0, 0xc4, 0xda, 0x41, 0x00, 0x6f,
            0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x6d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x40, 0x00, 0x6b, 0x00, 0x76, 0x00, 0x00, 0x61, 0x75, 0x64, 0x00, 0x02,
            0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x70, 0x31, 0x00, 0x00, 0x70, 0x32, 0x00, 0x00, 0x00,
            0x69, 0x73, 0x73, 0x00, 0x68, 0x74, 0x74, 0x70, 0x73, 0x3a, 0x2f, 0x2f, 0x69, 0x73,
            0x73, 0x75, 0x65, 0x72, 0x2e, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x00, 0x78,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f, 0x00, 0x62, 0x00, 0x01, 0x00,
            0x73, 0x75, 0x62, 0x00, 0x75, 0x31, 0x00, 0x69, 0x61, 0x74, 0x00, 0x00, 0x00, 0x40,
            0x2d, 0xb0, 0xc4, 0xda, 0x41, 0x00, 0x6e, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x1c, 0x40, 0x00, 0x66, 0x00, 0x00, 0x00,
        ];
        let m = payload(&bytes).unwrap();
        assert_eq!(m["aud"], json!(["p1", "p2"]));
        assert_eq!(m["b"], json!(true));
        assert_eq!(m["f"], json!(false));
        assert_eq!(m["n"], json!(7));
        assert_eq!(m["x"], json!(1.5));
        assert_eq!(m["o"], json!({"k": "v", "m": 2}));
        assert_eq!(m["sub"], "u1");
        assert_eq!(m["iss"], "https://issuer.example");
        assert_eq!(m["exp"].as_u64().unwrap() - m["iat"].as_u64().unwrap(), 60);
    }

    #[test]
    fn a_claim_of_no_known_shape_is_present_as_null() {
        // Control characters, bytes that are not UTF-8, a fractional `exp`:
        // present, so that a rule needing the claim refuses it rather than
        // taking it for absent.
        let exp = 1_900_000_000.5f64.to_le_bytes();
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b"ipk", b"\xff\xfe\x00"),
            (b"pay", b"a\x07b"),
            (b"exp", &exp),
            (b"sub", b"u1"),
        ];
        let m = payload(&crate::wire::encode_pairs(pairs.iter().copied())).unwrap();
        assert_eq!(m["ipk"], Value::Null);
        assert_eq!(m["pay"], Value::Null);
        assert_eq!(m["exp"], json!(1_900_000_000.5));
        assert_eq!(m["sub"], "u1");
        // A double that starts with four zero bytes is a number, not an
        // empty list.
        let seven = 7.0f64.to_le_bytes();
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"n", &seven)];
        let m = payload(&crate::wire::encode_pairs(pairs.iter().copied())).unwrap();
        assert_eq!(m["n"], json!(7));
    }
}
