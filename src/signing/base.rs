//! The signature base (RFC 9421 §2.5): the exact bytes that are signed,
//! rebuilt from the message and the covered components.
//!
//! Component values follow RFC 9421 §2.1 (HTTP fields) and §2.2 (derived
//! components). Anything this module does not understand is an error, never
//! skipped (§2.5: "If the component identifier has a parameter that is not
//! understood, produce an error"), so a signer cannot get a component left
//! out of the base by decorating it.

use super::sfv::{self, BareItem, InnerList, Item, Limits, Parameters};
use super::{Message, SigningError};

/// The largest signature base built, in bytes. The default coverage makes a
/// base well under 2 KiB (the token is the longest line); 16 KiB leaves room
/// for a few more covered headers while keeping hashing cheap.
pub const MAX_BASE_BYTES: usize = 16 * 1024;

/// The most input read to build one base, in bytes: the query once per
/// `@query-param` and a field's values once per component naming it. A
/// component's value can be small while the input it is read from is not
/// (`@query-param` of a 60 KiB query, a `key=` member of a long
/// Dictionary), so the base's own size bounds nothing here: without this, a
/// request with 32 such components would make appguard read its 60 KiB of
/// headers 32 times before the signature is even checked.
pub const MAX_READ_BYTES: usize = 4 * MAX_BASE_BYTES;

/// Limits for a covered Dictionary field read with the `key` parameter.
const FIELD_DICT_LIMITS: Limits = Limits {
    max_members: 64,
    max_inner_items: 64,
    max_params: 16,
};

/// Builds the signature base for `covered` (the parsed Signature-Input member:
/// covered components as its items, signature parameters as its parameters)
/// over `message`, as RFC 9421 §2.5 specifies. The last line is
/// `"@signature-params": ` followed by `covered` re-serialized strictly
/// (RFC 9421 §2.3, RFC 8941 §4.1.1.1); there is no trailing newline.
pub fn signature_base(message: &Message<'_>, covered: &InnerList) -> Result<String, SigningError> {
    let mut out = String::with_capacity(512);
    let mut read = 0usize;
    for (i, component) in covered.items.iter().enumerate() {
        let name = component_name(component)?;
        // The input this component reads, charged before it is read.
        read = read.saturating_add(match name {
            "@query-param" => message.query.map_or(0, str::len),
            n if n.starts_with('@') => 0,
            n => message
                .headers
                .iter()
                .filter(|(h, _)| h.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.len())
                .sum(),
        });
        if read > MAX_READ_BYTES {
            return Err(SigningError::BaseTooLarge);
        }
        // §2.5 step 2.0: each identifier (name and parameters, parameters
        // compared as a set) at most once.
        if covered
            .items
            .iter()
            .take(i)
            .any(|earlier| same_identifier(earlier, component))
        {
            return Err(SigningError::DuplicateComponent);
        }
        let value = if name.starts_with('@') {
            derived_value(message, name, &component.params)?
        } else {
            field_value(message, name, &component.params)?
        };
        sfv::write_item(&mut out, component);
        out.push_str(": ");
        out.push_str(&value);
        out.push('\n');
        if out.len() > MAX_BASE_BYTES {
            return Err(SigningError::BaseTooLarge);
        }
    }
    out.push_str("\"@signature-params\": ");
    sfv::write_inner_list(&mut out, covered);
    if out.len() > MAX_BASE_BYTES {
        return Err(SigningError::BaseTooLarge);
    }
    // §2.5 step 4: the base is ASCII. Values were checked one by one; the
    // serializer only writes ASCII.
    if !out.is_ascii() {
        return Err(SigningError::InvalidComponentValue);
    }
    Ok(out)
}

/// The component name of a covered item: a String (RFC 9421 §2, `sf-string`),
/// either a derived component (`@...`) or a lower-case field name (§2.1).
pub fn component_name(item: &Item) -> Result<&str, SigningError> {
    let name = item.bare.as_str().ok_or(SigningError::Malformed {
        field: "signature-input",
        reason: "component identifier is not a string",
    })?;
    let valid = match name.strip_prefix('@') {
        Some(derived) => {
            !derived.is_empty()
                && derived
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        }
        None => {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|c| sfv::is_tchar(c) && !c.is_ascii_uppercase())
        }
    };
    if valid {
        Ok(name)
    } else {
        Err(SigningError::Malformed {
            field: "signature-input",
            reason: "invalid component name",
        })
    }
}

/// Whether two covered components are one identifier (RFC 9421 §2.5): the
/// same name and the same parameters in any order (`;bs;req` is `;req;bs`),
/// so that no reordering lists a component twice.
fn same_identifier(a: &Item, b: &Item) -> bool {
    a.bare == b.bare
        && a.params.len() == b.params.len()
        && a.params.iter().all(|p| b.params.contains(p))
}

/// Derived component values (RFC 9421 §2.2).
fn derived_value(
    message: &Message<'_>,
    name: &str,
    params: &Parameters,
) -> Result<String, SigningError> {
    let is_response = message.status.is_some();
    if name == "@signature-params" {
        // §2.3: never listed among the covered components.
        return Err(SigningError::Malformed {
            field: "signature-input",
            reason: "@signature-params listed as a covered component",
        });
    }
    if name == "@status" {
        // §2.2.9: response only.
        let status = match (message.status, params.is_empty()) {
            (Some(s), true) if (100..=999).contains(&s) => s,
            _ => return Err(SigningError::UnsupportedComponent),
        };
        return Ok(status.to_string());
    }
    // Everything else targets the request. `req` (§2.4) would need the
    // request of a response, which this view does not carry; on a request
    // it is an error anyway (§2.5).
    if is_response {
        return Err(SigningError::UnsupportedComponent);
    }
    if name == "@query-param" {
        return query_param_value(message, params);
    }
    if !params.is_empty() {
        return Err(SigningError::UnsupportedComponent);
    }
    let value = match name {
        // §2.2.1: case-sensitive, as sent.
        "@method" => non_empty(message.method)?.to_owned(),
        // §2.2.2
        "@target-uri" => {
            let scheme = non_empty(message.scheme)?.to_ascii_lowercase();
            let authority = normalized_authority(&scheme, non_empty(message.authority)?);
            let mut uri = format!("{scheme}://{authority}{}", path_or_slash(message.path));
            if let Some(q) = message.query {
                uri.push('?');
                uri.push_str(q);
            }
            uri
        }
        // §2.2.3: lower case, default port omitted (RFC 9110 §4.2.3).
        "@authority" => normalized_authority(
            &message.scheme.to_ascii_lowercase(),
            non_empty(message.authority)?,
        ),
        // §2.2.4
        "@scheme" => non_empty(message.scheme)?.to_ascii_lowercase(),
        // §2.2.5: origin-form, or authority-form for CONNECT.
        "@request-target" => {
            if message.method == "CONNECT" {
                non_empty(message.authority)?.to_owned()
            } else {
                let mut target = path_or_slash(message.path).to_owned();
                if let Some(q) = message.query {
                    target.push('?');
                    target.push_str(q);
                }
                target
            }
        }
        // §2.2.6: an empty path is `/`.
        "@path" => path_or_slash(message.path).to_owned(),
        // §2.2.7: with the leading `?`; `?` alone when there is no query.
        "@query" => format!("?{}", message.query.unwrap_or("")),
        _ => return Err(SigningError::UnsupportedComponent),
    };
    check_derived_value(&value)?;
    Ok(value)
}

/// A derived component's source, which must not be empty: an empty
/// `@method` or `@authority` cannot be derived (RFC 9421 §2.2), and is
/// refused as missing.
fn non_empty(s: &str) -> Result<&str, SigningError> {
    if s.is_empty() {
        Err(SigningError::ComponentMissing)
    } else {
        Ok(s)
    }
}

/// `@path`'s value: the path, or `/` when it is empty (RFC 9421 §2.2.6).
fn path_or_slash(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

/// `@authority` normalisation (RFC 9421 §2.2.3, RFC 9110 §4.2.3): host in
/// lower case, the scheme's default port dropped.
pub fn normalized_authority(scheme: &str, authority: &str) -> String {
    let lower = authority.to_ascii_lowercase();
    let default_port = match scheme {
        "https" | "wss" => ":443",
        "http" | "ws" => ":80",
        _ => return lower,
    };
    match lower.strip_suffix(default_port) {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ => lower,
    }
}

/// §2.2: derived values are printable ASCII and spaces, without leading or
/// trailing whitespace.
fn check_derived_value(value: &str) -> Result<(), SigningError> {
    let printable = value.bytes().all(|c| (0x20..=0x7e).contains(&c));
    if printable && !value.starts_with(' ') && !value.ends_with(' ') {
        Ok(())
    } else {
        Err(SigningError::InvalidComponentValue)
    }
}

/// `@query-param;name="..."` (RFC 9421 §2.2.8): the query parsed as
/// `application/x-www-form-urlencoded` (WHATWG URL §5.1), names and values
/// re-encoded with the form-urlencoded percent-encode set, spaces as `%20`
/// (as the RFC's examples show). A name that occurs more than once is refused.
fn query_param_value(message: &Message<'_>, params: &Parameters) -> Result<String, SigningError> {
    let wanted = match params.as_slice() {
        [(key, BareItem::String(name))] if key == "name" => name,
        _ => return Err(SigningError::UnsupportedComponent),
    };
    let query = message.query.unwrap_or("");
    let mut found: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_reencode(name) != *wanted {
            continue;
        }
        if found.is_some() {
            return Err(SigningError::InvalidComponentValue);
        }
        found = Some(form_reencode(value));
    }
    found.ok_or(SigningError::ComponentMissing)
}

/// Decodes a form-urlencoded name or value (`+` is a space, `%XX` a byte,
/// a stray `%` itself), reads it as UTF-8 with replacement (WHATWG "UTF-8
/// decode without BOM"), and percent-encodes every byte outside
/// ALPHA / DIGIT / `*-._`.
fn form_reencode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'+' => decoded.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&h| hex_value(h));
                let lo = bytes.get(i + 2).and_then(|&l| hex_value(l));
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    decoded.push(hi << 4 | lo);
                    i += 2;
                } else {
                    decoded.push(b'%');
                }
            }
            _ => decoded.push(c),
        }
        i += 1;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let text = String::from_utf8_lossy(&decoded);
    let mut out = String::with_capacity(text.len());
    for c in text.bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'*' | b'-' | b'.' | b'_') {
            out.push(char::from(c));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 15)]));
        }
    }
    out
}

/// One hex digit's value, in either case (RFC 3986 §2.1: `%2f` is `%2F`).
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// HTTP field values (RFC 9421 §2.1): every instance, trimmed, joined with
/// `", "`; with `bs` (§2.1.3) each instance wrapped as a Byte Sequence; with
/// `key` (§2.1.2) one Dictionary member, strictly re-serialized. `sf`, `req`
/// and `tr` are not supported and are errors.
fn field_value(
    message: &Message<'_>,
    name: &str,
    params: &Parameters,
) -> Result<String, SigningError> {
    let mut bs = false;
    let mut key: Option<&str> = None;
    for (param, value) in params {
        match (param.as_str(), value) {
            ("bs", BareItem::Boolean(true)) => bs = true,
            ("key", BareItem::String(k)) => key = Some(k),
            _ => return Err(SigningError::UnsupportedComponent),
        }
    }
    if bs && key.is_some() {
        return Err(SigningError::UnsupportedComponent);
    }
    let mut values = message
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim_matches([' ', '\t']))
        .peekable();
    if values.peek().is_none() {
        return Err(SigningError::ComponentMissing);
    }
    if bs {
        let mut out = String::new();
        for (i, v) in values.enumerate() {
            // U+FFFD: the header map had bytes that are not UTF-8 and were
            // replaced (see `Headers::from_wire`), so these are not the
            // bytes the client signed, and two different values would
            // give one base.
            if v.contains(['\r', '\n', '\u{FFFD}']) {
                return Err(SigningError::InvalidComponentValue);
            }
            if i > 0 {
                out.push_str(", ");
            }
            sfv::write_bare_item(&mut out, &BareItem::ByteSeq(v.as_bytes().to_vec()));
        }
        return Ok(out);
    }
    let mut combined = String::new();
    for (i, v) in values.enumerate() {
        // field-content: VCHAR, SP and HTAB only; no obs-fold, no obs-text.
        if !v.bytes().all(|c| c == b'\t' || (0x20..=0x7e).contains(&c)) {
            return Err(SigningError::InvalidComponentValue);
        }
        if i > 0 {
            combined.push_str(", ");
        }
        combined.push_str(v);
    }
    match key {
        None => Ok(combined),
        Some(k) => {
            let dict = sfv::parse_dictionary(&combined, &FIELD_DICT_LIMITS)
                .map_err(|_| SigningError::InvalidComponentValue)?;
            let member = dict
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, m)| m)
                .ok_or(SigningError::ComponentMissing)?;
            let mut out = String::new();
            sfv::write_member(&mut out, member);
            Ok(out)
        }
    }
}

/// A covered list from components written as a signer names them: a name,
/// optionally followed by parameters (`@query-param;name="id"`,
/// `example-dict;key="a"`). Each is read with the strict parser as the
/// item `"name";params`, so the rules a received `Signature-Input` meets
/// apply (a name that is not a component name, a parameter that does not
/// parse, are `Malformed`).
pub fn covered_list_of(components: &[&str], params: Parameters) -> Result<InnerList, SigningError> {
    const MALFORMED: SigningError = SigningError::Malformed {
        field: "signature-input",
        reason: "invalid component",
    };
    const ONE: Limits = Limits {
        max_members: 1,
        max_inner_items: 1,
        max_params: super::MAX_PARAMETERS,
    };
    let mut items = Vec::with_capacity(components.len());
    for component in components {
        let (name, parameters) = match component.split_once(';') {
            Some((name, parameters)) => (name, Some(parameters)),
            None => (*component, None),
        };
        let mut text = String::from("c=(");
        sfv::write_string(&mut text, name);
        if let Some(parameters) = parameters {
            text.push(';');
            text.push_str(parameters);
        }
        text.push(')');
        let mut dict = sfv::parse_dictionary(&text, &ONE).map_err(|_| MALFORMED)?;
        let item = match dict.pop() {
            Some((_, sfv::Member::InnerList(mut list))) if list.items.len() == 1 => {
                list.items.pop().ok_or(MALFORMED)?
            }
            _ => return Err(MALFORMED),
        };
        // The name as given: `write_string` drops what a String cannot hold.
        if item.bare.as_str() != Some(name) {
            return Err(MALFORMED);
        }
        component_name(&item)?;
        items.push(item);
    }
    Ok(InnerList { items, params })
}

#[cfg(test)]
mod tests {
    use super::sfv::Member;
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const L: Limits = Limits {
        max_members: 8,
        max_inner_items: 32,
        max_params: 8,
    };

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn request<'a>(
        headers: &'a [(String, String)],
        path: &'a str,
        query: Option<&'a str>,
    ) -> Message<'a> {
        Message::request(
            "POST",
            "https",
            "www.example.com",
            path,
            query,
            headers,
            None,
        )
    }

    /// Parses `("a" "b");params` the way Signature-Input members look.
    fn covered(s: &str) -> InnerList {
        match sfv::parse_dictionary(&format!("x={s}"), &L)
            .unwrap()
            .remove(0)
            .1
        {
            Member::InnerList(l) => l,
            Member::Item(_) => panic!("not an inner list"),
        }
    }

    fn lines(base: &str) -> Vec<&str> {
        base.lines().collect()
    }

    #[test]
    fn rfc9421_section_2_1_field_values() {
        // RFC 9421 §2.1 example fields (obs-fold excluded: Envoy never passes
        // folded lines, and such a value is refused here).
        let h = headers(&[
            ("host", "www.example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:56 GMT"),
            ("x-ows-header", "   Leading and trailing whitespace.   "),
            ("cache-control", "max-age=60"),
            ("cache-control", "   must-revalidate"),
            ("example-dict", " a=1,    b=2;x=1;y=2,   c=(a   b   c)"),
            ("x-empty-header", ""),
        ]);
        let m = request(&h, "/", None);
        let base = signature_base(
            &m,
            &covered(
                r#"("host" "date" "x-ows-header" "cache-control" "example-dict" "x-empty-header")"#,
            ),
        )
        .unwrap();
        assert_eq!(
            lines(&base)[..6],
            [
                "\"host\": www.example.com",
                "\"date\": Tue, 20 Apr 2021 02:07:56 GMT",
                "\"x-ows-header\": Leading and trailing whitespace.",
                "\"cache-control\": max-age=60, must-revalidate",
                "\"example-dict\": a=1,    b=2;x=1;y=2,   c=(a   b   c)",
                "\"x-empty-header\": ",
            ]
        );
    }

    #[test]
    fn rfc9421_section_2_1_2_dictionary_members() {
        // RFC 9421 §2.1.2 example.
        let h = headers(&[("example-dict", "  a=1, b=2;x=1;y=2, c=(a   b    c), d")]);
        let m = request(&h, "/", None);
        let base = signature_base(
            &m,
            &covered(r#"("example-dict";key="a" "example-dict";key="d" "example-dict";key="b" "example-dict";key="c")"#),
        )
        .unwrap();
        assert_eq!(
            lines(&base)[..4],
            [
                "\"example-dict\";key=\"a\": 1",
                "\"example-dict\";key=\"d\": ?1",
                "\"example-dict\";key=\"b\": 2;x=1;y=2",
                "\"example-dict\";key=\"c\": (a b c)",
            ]
        );
        let missing = signature_base(&m, &covered(r#"("example-dict";key="z")"#));
        assert_eq!(missing, Err(SigningError::ComponentMissing));
    }

    #[test]
    fn rfc9421_section_2_1_3_binary_wrapped() {
        // RFC 9421 §2.1.3 example.
        let two = headers(&[
            ("example-header", "value, with, lots"),
            ("example-header", "of, commas"),
        ]);
        let one = headers(&[("example-header", "value, with, lots, of, commas")]);
        let c = covered(r#"("example-header";bs)"#);
        assert_eq!(
            lines(&signature_base(&request(&two, "/", None), &c).unwrap())[0],
            "\"example-header\";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:"
        );
        assert_eq!(
            lines(&signature_base(&request(&one, "/", None), &c).unwrap())[0],
            "\"example-header\";bs: :dmFsdWUsIHdpdGgsIGxvdHMsIG9mLCBjb21tYXM=:"
        );
    }

    #[test]
    fn rfc9421_section_2_2_derived_components() {
        // RFC 9421 §2.2.1–§2.2.7 examples, all on
        // `POST /path?param=value HTTP/1.1` / `Host: www.example.com` over HTTPS.
        let h = headers(&[]);
        let m = request(&h, "/path", Some("param=value"));
        let base = signature_base(
            &m,
            &covered(r#"("@method" "@target-uri" "@authority" "@scheme" "@request-target" "@path" "@query")"#),
        )
        .unwrap();
        assert_eq!(
            lines(&base)[..7],
            [
                "\"@method\": POST",
                "\"@target-uri\": https://www.example.com/path?param=value",
                "\"@authority\": www.example.com",
                "\"@scheme\": https",
                "\"@request-target\": /path?param=value",
                "\"@path\": /path",
                "\"@query\": ?param=value",
            ]
        );
        // §2.2.7: no query is `?` alone.
        let none = request(&h, "/path", None);
        assert_eq!(
            lines(&signature_base(&none, &covered(r#"("@query")"#)).unwrap())[0],
            "\"@query\": ?"
        );
        // §2.2.6: empty path is `/`.
        let empty = request(&h, "", None);
        assert_eq!(
            lines(&signature_base(&empty, &covered(r#"("@path")"#)).unwrap())[0],
            "\"@path\": /"
        );
    }

    #[test]
    fn authority_is_normalised() {
        assert_eq!(
            normalized_authority("https", "WWW.Example.com:443"),
            "www.example.com"
        );
        assert_eq!(
            normalized_authority("http", "example.com:80"),
            "example.com"
        );
        assert_eq!(
            normalized_authority("https", "example.com:8443"),
            "example.com:8443"
        );
        assert_eq!(
            normalized_authority("http", "example.com:443"),
            "example.com:443"
        );
        assert_eq!(normalized_authority("https", "[::1]:443"), "[::1]");
    }

    #[test]
    fn rfc9421_section_2_2_8_query_params() {
        // RFC 9421 §2.2.8 examples.
        let h = headers(&[]);
        let m = request(&h, "/path", Some("param=value&foo=bar&baz=batman&qux="));
        let base = signature_base(
            &m,
            &covered(r#"("@query-param";name="baz" "@query-param";name="qux" "@query-param";name="param")"#),
        )
        .unwrap();
        assert_eq!(
            lines(&base)[..3],
            [
                "\"@query-param\";name=\"baz\": batman",
                "\"@query-param\";name=\"qux\": ",
                "\"@query-param\";name=\"param\": value",
            ]
        );
        let m = request(
            &h,
            "/parameters",
            Some("var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something"),
        );
        let base = signature_base(
            &m,
            &covered(r#"("@query-param";name="var" "@query-param";name="bar" "@query-param";name="fa%C3%A7ade%22%3A%20")"#),
        )
        .unwrap();
        assert_eq!(
            lines(&base)[..3],
            [
                "\"@query-param\";name=\"var\": this%20is%20a%20big%0Amultiline%20value",
                "\"@query-param\";name=\"bar\": with%20plus%20whitespace",
                "\"@query-param\";name=\"fa%C3%A7ade%22%3A%20\": something",
            ]
        );
        // Missing and repeated names are errors.
        assert_eq!(
            signature_base(&m, &covered(r#"("@query-param";name="nope")"#)),
            Err(SigningError::ComponentMissing)
        );
        let twice = request(&h, "/", Some("a=1&a=2"));
        assert_eq!(
            signature_base(&twice, &covered(r#"("@query-param";name="a")"#)),
            Err(SigningError::InvalidComponentValue)
        );
    }

    #[test]
    fn status_only_on_responses() {
        let h = headers(&[]);
        let resp = Message::response(200, &h, None);
        assert_eq!(
            lines(&signature_base(&resp, &covered(r#"("@status")"#)).unwrap())[0],
            "\"@status\": 200"
        );
        let req = request(&h, "/", None);
        assert_eq!(
            signature_base(&req, &covered(r#"("@status")"#)),
            Err(SigningError::UnsupportedComponent)
        );
        assert_eq!(
            signature_base(&resp, &covered(r#"("@method")"#)),
            Err(SigningError::UnsupportedComponent)
        );
    }

    #[test]
    fn refusals() {
        let h = headers(&[
            ("a", "x"),
            ("example-dict", "a=1"),
            ("nl", "bad\nvalue"),
            ("utf", "caf\u{e9}"),
        ]);
        let m = request(&h, "/", None);
        for (list, err) in [
            (r#"("a" "a")"#, SigningError::DuplicateComponent),
            (
                r#"("example-dict";key="a" "example-dict";key="a")"#,
                SigningError::DuplicateComponent,
            ),
            (r#"("missing")"#, SigningError::ComponentMissing),
            (r#"("a";sf)"#, SigningError::UnsupportedComponent),
            (r#"("a";req)"#, SigningError::UnsupportedComponent),
            (r#"("a";tr)"#, SigningError::UnsupportedComponent),
            (r#"("a";bs;key="x")"#, SigningError::UnsupportedComponent),
            (r#"("@method";req)"#, SigningError::UnsupportedComponent),
            (r#"("@unknown")"#, SigningError::UnsupportedComponent),
            (
                r#"("@request-response";key="sig1")"#,
                SigningError::UnsupportedComponent,
            ),
            (r#"("nl")"#, SigningError::InvalidComponentValue),
            (r#"("utf")"#, SigningError::InvalidComponentValue),
        ] {
            assert_eq!(signature_base(&m, &covered(list)), Err(err), "{list}");
        }
        for list in [
            r#"("A")"#,
            r#"(":path")"#,
            r#"("@signature-params")"#,
            "(a)",
            r#"("")"#,
        ] {
            assert!(
                matches!(
                    signature_base(&m, &covered(list)),
                    Err(SigningError::Malformed { .. })
                ),
                "{list}"
            );
        }
        // Duplicate detection compares parameters as a set.
        let h = headers(&[("d", "a=1, b=2")]);
        let m = request(&h, "/", None);
        assert!(signature_base(&m, &covered(r#"("d";key="a" "d";key="b" "d")"#)).is_ok());
    }

    #[test]
    fn base_size_is_capped() {
        let big = "x".repeat(MAX_BASE_BYTES);
        let h = headers(&[("big", &big)]);
        let m = request(&h, "/", None);
        assert_eq!(
            signature_base(&m, &covered(r#"("big")"#)),
            Err(SigningError::BaseTooLarge)
        );
    }
}
