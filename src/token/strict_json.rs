//! JSON for untrusted token parts: duplicate object keys are refused at
//! every level (serde_json's `Value` silently keeps the last one, which lets
//! two parsers disagree about a claim), and nesting is bounded.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

const MAX_DEPTH: usize = 16;

struct StrictValue(Value);

struct StrictVisitor {
    depth: usize,
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
        while let Some(k) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value_seed(StrictVisitor {
                depth: self.depth + 1,
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
    let v = de::DeserializeSeed::deserialize(StrictVisitor { depth: 0 }, &mut de).ok()?;
    de.end().ok()?;
    match v.0 {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Parses any JSON value with the same rules as [`parse_object`] (used for
/// request bodies: duplicate keys, deep nesting and invalid UTF-8 refused).
pub fn parse_value(bytes: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = de::DeserializeSeed::deserialize(StrictVisitor { depth: 0 }, &mut de).ok()?;
    de.end().ok()?;
    Some(v.0)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

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
