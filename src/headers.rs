//! A request's header list as one string and the positions of its names and
//! values in it.
//!
//! The filter reads every request header on every request. Decoding Envoy's
//! map into a `Vec<(String, String)>` took two allocations and two copies
//! per header, more native instructions than the whole cached-token check
//! (see BENCH.md). [`Headers`] keeps the names and values in one `String`
//! with one list of positions beside it: two allocations per request, and a
//! single UTF-8 check over the header bytes when they are all valid, as
//! they nearly always are.

/// The mark in front of a header value that was not UTF-8 (see
/// [`Headers::from_wire`]): a NUL, which no header value Envoy accepts
/// holds.
const MARK: char = '\0';

/// Whether a header value is marked as not UTF-8 (it holds the NUL
/// mark, which nothing else puts there). Read lossily, such a value
/// must not be taken apart: the mark hides its first element (a list's
/// first item, a path, a parameter's name), so a reader of targets,
/// hosts or methods refuses it instead.
pub fn is_marked(value: &str) -> bool {
    value.contains(MARK)
}

/// A header value without the mark in front ([`is_marked`]), for reading
/// the ASCII names in it (a cookie's): a name reads the same lossily,
/// while a value with a byte that was not UTF-8 keeps its U+FFFD and
/// still equals nothing a check compares it with.
pub fn unmarked(value: &str) -> &str {
    value.strip_prefix(MARK).unwrap_or(value)
}

/// A header list in message order: names in lower case as Envoy gives them,
/// pseudo-headers included. A value that is not UTF-8 is read lossily and
/// marked with a leading NUL, which no header value Envoy accepts holds,
/// so that it equals no value a check compares it with; a name is read
/// lossily. No header can make a lookup fail. Its `Debug` shows names and the
/// length of each value, never a value (tokens, API keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Every name and value, back to back (or as the wire laid them out,
    /// separators included); [`Span`]s say where each lies.
    text: String,
    /// One per header, in message order: repetitions stay separate, so each
    /// copy of a header can be read.
    spans: Vec<Span>,
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(name, value)| (name, value.len())))
            .finish()
    }
}

/// Where one header's name and value lie in [`Headers::text`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    /// Start and end of the name in `text` (`u32`: see [`to_u32`]).
    name: (u32, u32),
    /// Start and end of the value in `text`.
    value: (u32, u32),
}

impl Headers {
    /// Decodes the proxy-wasm map encoding ([`crate::wire`]); `None` when
    /// its lengths do not add up. Never panics.
    pub fn from_wire(bytes: &[u8]) -> Option<Headers> {
        let pairs = crate::wire::decode_pairs(bytes)?;
        if let Some(h) = Self::laid_out(bytes, &pairs) {
            return Some(h);
        }
        let mut h = Headers::with_capacity(bytes.len().saturating_add(pairs.len()), pairs.len());
        for (k, v) in pairs {
            let k = String::from_utf8_lossy(k);
            match std::str::from_utf8(v) {
                Ok(v) => h.push(&k, v),
                // Lossy, a value would read the same as others (every bad
                // byte is U+FFFD) and as one a client sent in UTF-8: a
                // binding or signature over it would be checked against
                // bytes the upstream never gets. Marked with a NUL, which
                // no header value can hold (Envoy refuses it), it equals
                // no value a token bound, a key hashed or an app names.
                Err(_) => h.push(&k, &format!("{MARK}{}", String::from_utf8_lossy(v))),
            }
        }
        Some(h)
    }

    /// The fast path of [`Headers::from_wire`]: the names and values lie
    /// one after the other in `bytes` (each followed by a NUL), so when
    /// that region is UTF-8 and every name and value starts and ends on a
    /// character boundary in it, the region is copied once and the
    /// positions are the wire's own. `None` sends the caller to the
    /// per-part decoding. The boundary check matters: the decoder checks
    /// lengths, not the separators, and a separator that is not NUL could
    /// join the region into UTF-8 that no single part is (found by the
    /// `wire_pairs` fuzz target).
    fn laid_out(bytes: &[u8], pairs: &[(&[u8], &[u8])]) -> Option<Headers> {
        let ((first, _), (_, last)) = (pairs.first()?, pairs.last()?);
        let start = offset_in(bytes, first)?;
        let end = offset_in(bytes, last)?.checked_add(last.len())?;
        let text = std::str::from_utf8(bytes.get(start..end)?).ok()?;
        let mut spans = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let k0 = offset_in(bytes, k)?.checked_sub(start)?;
            let v0 = offset_in(bytes, v)?.checked_sub(start)?;
            let (k1, v1) = (k0.checked_add(k.len())?, v0.checked_add(v.len())?);
            if ![k0, k1, v0, v1]
                .into_iter()
                .all(|i| text.is_char_boundary(i))
            {
                return None;
            }
            spans.push(Span {
                name: (to_u32(k0)?, to_u32(k1)?),
                value: (to_u32(v0)?, to_u32(v1)?),
            });
        }
        Some(Headers {
            text: text.to_owned(),
            spans,
        })
    }

    /// An empty list with room for `bytes` of text and `n` headers.
    pub fn with_capacity(bytes: usize, n: usize) -> Headers {
        Headers {
            text: String::with_capacity(bytes),
            spans: Vec::with_capacity(n),
        }
    }

    /// Appends a header. A list over 4 GiB is not representable; such a
    /// header is dropped (Envoy's own limit is 60 KiB by default).
    pub fn push(&mut self, name: &str, value: &str) {
        let n0 = self.text.len();
        let Some(end) = n0
            .checked_add(name.len())
            .and_then(|e| e.checked_add(value.len()))
        else {
            return;
        };
        let (Some(a), Some(b), Some(c)) = (to_u32(n0), to_u32(n0 + name.len()), to_u32(end)) else {
            return;
        };
        self.text.push_str(name);
        self.text.push_str(value);
        self.spans.push(Span {
            name: (a, b),
            value: (b, c),
        });
    }

    /// The headers in order, as `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
        self.spans
            .iter()
            .map(|s| (self.slice(s.name), self.slice(s.value)))
    }

    /// The values of the headers called `name` (lower case), in order.
    /// Names are compared as bytes, length first, and a value is sliced
    /// only for a header whose name matched: the core looks headers up
    /// several times per request, and most names do not match.
    pub fn get_all<'h, 'n>(&'h self, name: &'n str) -> Values<'h, 'n> {
        Values {
            headers: self,
            name,
            next: 0,
        }
    }

    /// The first value of the header called `name` (lower case).
    pub fn get<'h>(&'h self, name: &str) -> Option<&'h str> {
        self.get_all(name).next()
    }

    /// Whether the span's name is `name`, byte for byte: names are lower case
    /// as Envoy gives them, and callers ask in lower case.
    fn name_is(&self, s: &Span, name: &str) -> bool {
        let (a, b) = s.name;
        b.wrapping_sub(a) as usize == name.len()
            && self.text.as_bytes().get(a as usize..b as usize) == Some(name.as_bytes())
    }

    /// How many headers (each repetition counted).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The text between two positions; `""` if they were not char boundaries,
    /// which the constructors make impossible, so that no header can panic.
    fn slice(&self, (a, b): (u32, u32)) -> &str {
        // Positions are char boundaries by construction; "" if they were not.
        self.text.get(a as usize..b as usize).unwrap_or("")
    }
}

/// The values of one header name, in order ([`Headers::get_all`]).
#[derive(Clone, Debug)]
pub struct Values<'h, 'n> {
    /// The list searched.
    headers: &'h Headers,
    /// The name asked for, in lower case.
    name: &'n str,
    /// The next span to look at.
    next: usize,
}

impl<'h> Iterator for Values<'h, '_> {
    type Item = &'h str;

    fn next(&mut self) -> Option<&'h str> {
        let h = self.headers;
        while let Some(s) = h.spans.get(self.next) {
            self.next += 1;
            if h.name_is(s, self.name) {
                return Some(h.slice(s.value));
            }
        }
        None
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::default();
        for (k, v) in iter {
            h.push(k.as_ref(), v.as_ref());
        }
        h
    }
}

/// Where `part`, a subslice of `whole`, starts in it.
fn offset_in(whole: &[u8], part: &[u8]) -> Option<usize> {
    (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)
}

/// A position as `u32`, `None` past 4 GiB: the header is then dropped
/// rather than truncated.
fn to_u32(n: usize) -> Option<u32> {
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::wire::encode_pairs;

    #[test]
    fn debug_shows_names_and_lengths_never_values() {
        let h: Headers = [
            ("x-api-key", "secret-key-1"),
            ("approov-token", "eyJhbGciOi"),
        ]
        .into_iter()
        .collect();
        let d = format!("{h:?}");
        assert_eq!(d, r#"[("x-api-key", 12), ("approov-token", 10)]"#);
    }

    fn wire(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        encode_pairs(pairs.iter().copied())
    }

    #[test]
    fn decodes_in_order_with_repeats_and_empty_parts() {
        let enc = wire(&[
            (b":path", b"/x?y=1"),
            (b"a", b"1"),
            (b"a", b""),
            (b"", b"v"),
            (b"x-token", b"t.t.t"),
        ]);
        let h = Headers::from_wire(&enc).unwrap();
        let got: Vec<_> = h.iter().collect();
        assert_eq!(
            got,
            [
                (":path", "/x?y=1"),
                ("a", "1"),
                ("a", ""),
                ("", "v"),
                ("x-token", "t.t.t")
            ]
        );
        assert_eq!(h.len(), 5);
        let built: Headers = got.iter().copied().collect();
        assert_eq!(built.iter().collect::<Vec<_>>(), got);
        assert_eq!(h.get("a"), Some("1"));
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), ["1", ""]);
        assert_eq!(h.get(""), Some("v"));
        assert_eq!(h.get("x-token"), Some("t.t.t"));
        assert_eq!(h.get("x-toke"), None);
        assert_eq!(h.get("b"), None);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_and_marked_not_refused() {
        let enc = wire(&[(b"a", b"ok"), (b"x-bin", b"\xff\xfeok"), (b"b\xc3", b"2")]);
        let h = Headers::from_wire(&enc).unwrap();
        let got: Vec<_> = h.iter().collect();
        assert_eq!(
            got,
            [
                ("a", "ok"),
                ("x-bin", "\0\u{fffd}\u{fffd}ok"),
                ("b\u{fffd}", "2")
            ]
        );
    }

    #[test]
    fn a_value_that_is_not_utf8_matches_no_binding() {
        // Replaced alone, 0xFF, 0xFE and a client's own U+FFFD read the
        // same: a token bound to the UTF-8 value passed with either byte in
        // its place, which is what the upstream then got.
        let one = |v: &[u8]| Headers::from_wire(&wire(&[(b"authorization", v)])).unwrap();
        let (ff, fe) = (one(b"Bearer abc\xff"), one(b"Bearer abc\xfe"));
        let text = one("Bearer abc\u{fffd}".as_bytes());
        assert_ne!(ff.get("authorization"), text.get("authorization"));
        assert_eq!(text.get("authorization"), Some("Bearer abc\u{fffd}"));
        let binding = crate::token::Binding {
            claim: "pay".into(),
            headers: vec!["authorization".into()],
            required: true,
        };
        let pay = crate::token::binding_digest(&["Bearer abc\u{fffd}"]);
        let claims: serde_json::Map<String, serde_json::Value> =
            [("pay".to_owned(), serde_json::Value::String(pay))]
                .into_iter()
                .collect();
        let check = |h: &Headers| {
            let req = crate::request::Request::new(h, None);
            crate::token::check_binding(&binding, &claims, &req)
        };
        assert_eq!(check(&text), Ok(()));
        for h in [&ff, &fe] {
            assert_eq!(check(h), Err(crate::decision::Reason::TokenBinding));
        }
    }

    #[test]
    fn a_separator_that_is_not_nul_cannot_join_parts_into_utf8() {
        // Found by the wire_pairs fuzz target: the byte before the last
        // value (a separator, unchecked by the decoder) is 0xd0, which with
        // the value's 0x87 makes the region valid UTF-8, while the value
        // alone is not.
        let mut enc = vec![3, 0, 0, 0];
        for (k, v) in [(0u32, 0u32), (0, 0), (0, 3)] {
            enc.extend(k.to_le_bytes());
            enc.extend(v.to_le_bytes());
        }
        enc.extend([5, 0, 0, 0, 0xd0, 0x87, 0, 1, 0]);
        let h = Headers::from_wire(&enc).unwrap();
        let got: Vec<_> = h.iter().collect();
        assert_eq!(got, [("", ""), ("", ""), ("", "\0\u{fffd}\0\u{1}")]);
    }

    #[test]
    fn empty_and_hostile_encodings_never_panic() {
        assert!(Headers::from_wire(&[]).unwrap().is_empty());
        assert!(Headers::from_wire(&wire(&[])).unwrap().is_empty());
        let enc = wire(&[(b":path", b"/x"), (b"x-bin", b"\xff\xfeok"), (b"", b"")]);
        let h = Headers::from_wire(&enc).unwrap();
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [(":path", "/x"), ("x-bin", "\0\u{fffd}\u{fffd}ok"), ("", "")]
        );
        for cut in 0..enc.len() {
            let _ = Headers::from_wire(&enc[..cut]);
        }
        assert!(Headers::from_wire(&[255, 255, 255, 255]).is_none());
        let mut bad = enc.clone();
        bad[4] = 200;
        assert!(Headers::from_wire(&bad).is_none());
    }
}
