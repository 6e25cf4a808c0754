//! Delegated verification: Envoy's `jwt_authn` (or Istio's
//! `RequestAuthentication`) verified the token and wrote its payload into
//! dynamic metadata (`payload_in_metadata`); appguard reads that payload —
//! never a header — and applies its own rules on top.
//!
//! The payload is read from the request's whole dynamic metadata: Envoy
//! hands the `metadata` property over as a serialized
//! `envoy.config.core.v3.Metadata`, in which every claim keeps its JSON
//! type ([`payload_from_metadata`]). A path into it
//! (`metadata.filter_metadata.<filter>.<key>`) would come in the proxy-wasm
//! map encoding instead, which says no value's type (a string claim
//! `"\u0001"` reads as `true` there, eight bytes as a number) and fails
//! outright on a `null` claim.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::{Map, Number, Value};

/// `google.protobuf.Struct`, as `jwt_authn` writes a payload: decoded with
/// prost so that every claim keeps its JSON type.
#[derive(Clone, PartialEq, Message)]
struct PbStruct {
    /// Claim name → value; on the wire a repeated map entry, whose last
    /// occurrence of a name wins, as in protobuf.
    #[prost(btree_map = "string, message", tag = "1")]
    fields: BTreeMap<String, PbValue>,
}

/// `google.protobuf.ListValue`: a JSON array.
#[derive(Clone, PartialEq, Message)]
struct PbList {
    /// The array's elements, in order.
    #[prost(message, repeated, tag = "1")]
    values: Vec<PbValue>,
}

/// `google.protobuf.Value`: one JSON value.
#[derive(Clone, PartialEq, Message)]
struct PbValue {
    /// Which value it is; `None` (no field set) is not a value, and refuses the
    /// payload that holds it.
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
    kind: Option<Kind>,
}

/// The `kind` oneof of `google.protobuf.Value`, field numbers as in
/// `struct.proto`.
#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    /// `null_value`: the `NullValue` enum, whose only value is 0.
    #[prost(int32, tag = "1")]
    Null(i32),
    /// `number_value`: every number is a double (see [`number`]).
    #[prost(double, tag = "2")]
    Number(f64),
    /// `string_value`.
    #[prost(string, tag = "3")]
    String(String),
    /// `bool_value`.
    #[prost(bool, tag = "4")]
    Bool(bool),
    /// `struct_value`: a JSON object.
    #[prost(message, tag = "5")]
    Struct(PbStruct),
    /// `list_value`: a JSON array.
    #[prost(message, tag = "6")]
    List(PbList),
}

/// One entry of `Metadata.filter_metadata` (a protobuf map is a repeated
/// entry message on the wire): the filter's namespace and its Struct,
/// kept as bytes until the namespace is the one asked for.
#[derive(Clone, PartialEq, Message)]
struct MetadataEntry {
    /// The filter's namespace (`envoy.filters.http.jwt_authn`).
    #[prost(string, tag = "1")]
    key: String,
    /// Its `google.protobuf.Struct`, still encoded.
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `envoy.config.core.v3.Metadata`, only `filter_metadata` (field 1);
/// `typed_filter_metadata` and any other field are skipped.
#[derive(Clone, PartialEq, Message)]
struct Metadata {
    /// One entry per filter namespace.
    #[prost(message, repeated, tag = "1")]
    filter_metadata: Vec<MetadataEntry>,
}

/// Largest dynamic metadata read (every filter's entries, the payload
/// among them): a request's metadata past it is not read, and a provider
/// that needs it finds no payload.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// A Struct value as JSON. `None` for a value with no kind or nested more
/// than 16 deep, which refuses the whole payload: the recursion is bounded,
/// whatever the metadata holds.
fn to_json(v: PbValue, depth: usize) -> Option<Value> {
    if depth > 16 {
        return None;
    }
    Some(match v.kind? {
        Kind::Null(_) => Value::Null,
        // Struct numbers are doubles: integral values (exp, iat, nbf) come
        // back as integers so the claim rules read them like a JWT's.
        Kind::Number(n) => number(n),
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

/// A Struct's fields as a JSON object (see [`to_json`]); `None` if any
/// field's value is refused.
fn struct_to_map(s: PbStruct, depth: usize) -> Option<Map<String, Value>> {
    s.fields
        .into_iter()
        .map(|(k, v)| to_json(v, depth).map(|v| (k, v)))
        .collect()
}

/// The payload `jwt_authn` stored under `filter` (its namespace, usually
/// `envoy.filters.http.jwt_authn`) and `key` (`payload_in_metadata`), out
/// of the request's serialized dynamic metadata. `None` when the bytes are
/// not a `Metadata` of at most [`MAX_METADATA_BYTES`], or hold no such
/// entry, or its value is not an object of claims.
pub fn payload_from_metadata(bytes: &[u8], filter: &str, key: &str) -> Option<Map<String, Value>> {
    if bytes.is_empty() || bytes.len() > MAX_METADATA_BYTES {
        return None;
    }
    let metadata = Metadata::decode(bytes).ok()?;
    // A map's last entry for a key is the one that counts.
    let entry = metadata
        .filter_metadata
        .into_iter()
        .rev()
        .find(|e| e.key == filter)?;
    let namespace = PbStruct::decode(entry.value.as_slice()).ok()?;
    // By value, without a `BTreeMap::remove` (4 KB of the module).
    let (_, value) = namespace.fields.into_iter().find(|(k, _)| k == key)?;
    match value.kind? {
        Kind::Struct(s) => struct_to_map(s, 0),
        _ => None,
    }
}

/// A double as JSON: whole values in range as integers (Struct numbers
/// are doubles; `exp` reads like a JWT's), others as they are, and NaN or
/// infinities as `null`.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && (0.0..9.0e15).contains(&n) {
        Value::Number(Number::from(n as u64))
    } else if n.fract() == 0.0 && (-9.0e15..0.0).contains(&n) {
        // As a JWT's `-1` parses: `required_claims {"tier": -1}` matches.
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// A JSON value as a Struct value.
fn pb_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::Null(0),
        Value::Bool(b) => Kind::Bool(*b),
        Value::Number(n) => Kind::Number(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::String(s.clone()),
        Value::Array(a) => Kind::List(PbList {
            values: a.iter().map(pb_value).collect(),
        }),
        Value::Object(o) => Kind::Struct(pb_struct(o)),
    };
    PbValue { kind: Some(kind) }
}

/// A JSON object as a Struct: the reverse of [`struct_to_map`], for
/// [`metadata_from_payload`] (tests and tools).
fn pb_struct(map: &Map<String, Value>) -> PbStruct {
    PbStruct {
        fields: map.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
    }
}

/// Encodes a claims map as Envoy's dynamic metadata holding it under
/// `filter` and `key`, after another filter's entry (tests and tools).
pub fn metadata_from_payload(filter: &str, key: &str, map: &Map<String, Value>) -> Vec<u8> {
    let payload = PbValue {
        kind: Some(Kind::Struct(pb_struct(map))),
    };
    let namespace = PbStruct {
        fields: [(key.to_owned(), payload)].into_iter().collect(),
    };
    Metadata {
        filter_metadata: vec![
            MetadataEntry {
                key: "envoy.lb".into(),
                value: PbStruct::default().encode_to_vec(),
            },
            MetadataEntry {
                key: filter.into(),
                value: namespace.encode_to_vec(),
            },
        ],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

    fn round_trip(claims: &Value) -> Option<Map<String, Value>> {
        let bytes = metadata_from_payload(JWT_AUTHN, "p", claims.as_object()?);
        payload_from_metadata(&bytes, JWT_AUTHN, "p")
    }

    #[test]
    fn claims_keep_their_types_through_the_metadata() {
        let claims = json!({"exp": 1900000060u64, "iss": "i", "aud": ["a", "b"], "tier": -1,
                            "n": {"x": true, "l": [1, "two", null]}, "f": 1.5, "m": null});
        assert_eq!(round_trip(&claims).map(Value::Object), Some(claims));
    }

    #[test]
    fn strings_that_look_like_other_types_stay_strings() {
        // Under the map encoding these read as true, false, 2 and an
        // empty list: a user-chosen claim could pass a rule on a boolean.
        let claims = json!({"t": "\u{1}", "f": "\u{0}", "two": "\0\0\0\0\0\0\0@",
                            "list": "\0\0\0\0", "empty": {}, "none": []});
        assert_eq!(round_trip(&claims).map(Value::Object), Some(claims));
    }

    #[test]
    fn only_the_asked_namespace_and_key_and_only_an_object() {
        let claims = json!({"sub": "u1"});
        let map = claims.as_object().unwrap();
        let bytes = metadata_from_payload(JWT_AUTHN, "p", map);
        assert!(payload_from_metadata(&bytes, JWT_AUTHN, "q").is_none());
        assert!(payload_from_metadata(&bytes, "envoy.filters.http.lua", "p").is_none());
        assert!(payload_from_metadata(&bytes, "envoy.lb", "p").is_none());
        // A value that is not an object of claims.
        let namespace = PbStruct {
            fields: [(
                "p".to_owned(),
                PbValue {
                    kind: Some(Kind::String("x".into())),
                },
            )]
            .into_iter()
            .collect(),
        };
        let odd = Metadata {
            filter_metadata: vec![MetadataEntry {
                key: JWT_AUTHN.into(),
                value: namespace.encode_to_vec(),
            }],
        }
        .encode_to_vec();
        assert!(payload_from_metadata(&odd, JWT_AUTHN, "p").is_none());
        // Not a Metadata, empty, over the cap.
        assert!(payload_from_metadata(b"\xff\xff\xff", JWT_AUTHN, "p").is_none());
        assert!(payload_from_metadata(&[], JWT_AUTHN, "p").is_none());
        let big = json!({"pad": "x".repeat(MAX_METADATA_BYTES)});
        assert!(round_trip(&big).is_none());
        // Nested past the depth limits (ours, then prost's): no payload,
        // no stack overflow.
        for levels in [20, 40] {
            let mut deep = json!("x");
            for _ in 0..levels {
                deep = json!({ "d": deep });
            }
            assert!(round_trip(&json!({ "d": deep })).is_none(), "{levels}");
        }
        let mut fine = json!("x");
        for _ in 0..10 {
            fine = json!({ "d": fine });
        }
        assert!(round_trip(&json!({ "d": fine })).is_some());
    }

    #[test]
    fn a_later_entry_for_the_namespace_counts() {
        let first =
            metadata_from_payload(JWT_AUTHN, "p", json!({"sub": "old"}).as_object().unwrap());
        let second =
            metadata_from_payload(JWT_AUTHN, "p", json!({"sub": "new"}).as_object().unwrap());
        let both = [first, second].concat();
        let m = payload_from_metadata(&both, JWT_AUTHN, "p").unwrap();
        assert_eq!(m["sub"], "new");
    }
}
