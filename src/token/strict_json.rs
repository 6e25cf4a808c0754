//! JSON for untrusted token parts: duplicate object keys are refused at
//! every level (serde_json's `Value` silently keeps the last one, which lets
//! two parsers disagree about a claim), and nesting is bounded.
//!
//! Request bodies ([`parse_value`]) also refuse keys that differ only in
//! case: Go's `encoding/json` and ASP.NET match member names without
//! regard to case (the last one wins), so an upstream in either would read
//! `"To"` where appguard checked `"to"`; and keys holding a NUL, which an
//! upstream keeping keys as C strings reads up to it.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The deepest nesting of arrays and objects accepted, the outer object
/// counted as one level: deeper JSON is refused as malformed (a bounded
/// recursion, and no real header or claims need more). `appguard-cli mint`
/// refuses claims that would pass it.
pub const MAX_DEPTH: usize = 16;

/// The value a [`StrictVisitor`] builds: serde_json's `Value`, reached
/// only through the strict rules.
struct StrictValue(Value);

/// Builds a `Value` as serde_json does, but refuses duplicate keys and
/// nesting past [`MAX_DEPTH`]: two parsers must never read one token two
/// ways.
struct StrictVisitor {
    /// Arrays and objects enclosing the value being read: a container at
    /// [`MAX_DEPTH`] (one level too many) is refused, bounding the recursion.
    depth: usize,
    /// Refuse keys equal under case folding too (request bodies).
    fold_keys: bool,
}

/// A key in lower case, close to how Go's `strings.EqualFold` compares:
/// the Kelvin sign `K` reads as `k`, and the long `ſ` as `s` (the two
/// letters outside ASCII that fold to an ASCII one), and the final `ς` as
/// `σ`.
fn folded(key: &str) -> String {
    if key.is_ascii() {
        key.to_ascii_lowercase()
    } else {
        key.chars()
            .flat_map(|c| match c {
                '\u{17f}' => 's'.to_lowercase(),
                '\u{3c2}' => '\u{3c3}'.to_lowercase(),
                c => c.to_lowercase(),
            })
            .collect()
    }
}

impl<'de> de::DeserializeSeed<'de> for StrictVisitor {
    type Value = StrictValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<StrictValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_none<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("nested too deeply"));
        }
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element_seed(StrictVisitor {
            depth: self.depth + 1,
            fold_keys: self.fold_keys,
        })? {
            out.push(v);
        }
        Ok(StrictValue(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("nested too deeply"));
        }
        let mut out = Map::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            // A NUL ends the key to an upstream that keeps keys as C
            // strings (cJSON): `"to\u0000"` would be its `to`.
            if self.fold_keys && (k.contains('\0') || !seen.insert(folded(&k))) {
                return Err(de::Error::custom(
                    "duplicate key (ignoring case, or up to a NUL)",
                ));
            }
            let StrictValue(v) = map.next_value_seed(StrictVisitor {
                depth: self.depth + 1,
                fold_keys: self.fold_keys,
            })?;
            if out.insert(k, v).is_some() {
                return Err(de::Error::custom("duplicate key"));
            }
        }
        Ok(StrictValue(Value::Object(out)))
    }
}

/// Parses a JSON object, refusing duplicate keys at any depth, nesting deeper
/// than 16, trailing data, and anything that is not an object at the top.
pub fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = de::DeserializeSeed::deserialize(
        StrictVisitor {
            depth: 0,
            fold_keys: false,
        },
        &mut de,
    )
    .ok()?;
    de.end().ok()?;
    match v.0 {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Parses any JSON value with the same rules as [`parse_object`], and
/// refuses keys of one object that differ only in case (used for request
/// bodies: duplicate keys, deep nesting and invalid UTF-8 refused).
pub fn parse_value(bytes: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = de::DeserializeSeed::deserialize(
        StrictVisitor {
            depth: 0,
            fold_keys: true,
        },
        &mut de,
    )
    .ok()?;
    de.end().ok()?;
    Some(v.0)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn body_keys_that_differ_only_in_case_are_refused() {
        // What Go's encoding/json would read as one member (the last).
        assert!(parse_value(br#"{"to":"+447700900123","To":"+882123"}"#).is_none());
        assert!(parse_value(br#"{"a":{"msisdn":1,"MSISDN":2}}"#).is_none());
        assert!(
            parse_value(br#"[{"x":1},{"X":1}]"#).is_some(),
            "other objects"
        );
        assert!(
            parse_value("{\"k\":1,\"\u{212a}\":2}".as_bytes()).is_none(),
            "Kelvin sign"
        );
        assert!(
            parse_value("{\"ms\":1,\"m\u{17f}\":2}".as_bytes()).is_none(),
            "long s"
        );
        assert!(parse_value(br#"{"to":1,"too":2}"#).is_some());
        // Tokens keep exact-match keys: their issuer signed them.
        assert!(parse_object(br#"{"sub":"a","Sub":"b"}"#).is_some());
    }

    #[test]
    fn duplicates_and_depth_are_refused() {
        assert!(parse_object(br#"{"a":1,"b":{"c":[1,2]}}"#).is_some());
        assert!(parse_object(br#"{"a":1,"a":2}"#).is_none());
        assert!(parse_object(br#"{"a":{"x":1,"x":1}}"#).is_none());
        assert!(parse_object(br#"[1]"#).is_none());
        assert!(parse_object(br#"{"a":1} x"#).is_none());
        assert!(parse_object(b"{\"a\":\"\xff\"}").is_none(), "not UTF-8");
        let deep = format!("{}1{}", "{\"a\":".repeat(20), "}".repeat(20));
        assert!(parse_object(deep.as_bytes()).is_none());
        let ok = format!("{}1{}", "{\"a\":".repeat(10), "}".repeat(10));
        assert!(parse_object(ok.as_bytes()).is_some());
    }
}
