//! `mint sign-request`: an RFC 9421 signature over a request with an install
//! key, made by the filter's own [`appguard::signing::sign_request`] with the
//! coverage its default policy asks for, printed as headers and as a curl
//! command line.

use appguard::signing::{
    default_covered_components, sign_request, InstallKey, InstallSigningKey, Message,
    SignatureHeaders, SignatureOptions, SigningPolicy,
};
use serde_json::{Map, Value};

use crate::error::CliError;

/// A request to sign.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// The method, as sent.
    pub method: String,
    /// The absolute `http://` or `https://` URL.
    pub url: String,
    /// Header fields other than the token, as `(name, value)`; names are
    /// lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, when there is one.
    pub body: Option<Vec<u8>>,
    /// The token header's name (e.g. `approov-token`), covered by the
    /// signature.
    pub token_header: String,
    /// The token sent in it.
    pub token: String,
}

/// The parts of an absolute URL RFC 9421 derives components from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    /// `http` or `https`, lower case.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// The path, `/` when empty.
    pub path: String,
    /// The query without `?`, when the URL has a `?`.
    pub query: Option<String>,
}

/// Splits an absolute URL; the fragment is dropped (it is never sent).
pub fn split_url(url: &str) -> Result<UrlParts, CliError> {
    let bad = |why: &str| CliError::invalid(format!("--url {:?}: {why}", redact_url(url)));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("not an absolute URL"))?;
    // What curl (and any HTTP client) refuses or rewrites would be signed
    // as given and sent otherwise, or not at all.
    if let Some(b) = url.bytes().find(|b| *b <= b' ' || *b >= 0x7f) {
        return Err(bad(&match b {
            b' ' => "contains a space: percent-encode it (%20)".to_owned(),
            0x80.. => "contains a non-ASCII character: percent-encode its UTF-8 bytes".to_owned(),
            _ => format!("contains the control character 0x{b:02x}: percent-encode it"),
        }));
    }
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("scheme must be http or https"));
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("needs a host (and no user info)"));
    }
    // A port, if any (after an IPv6 literal's `]`), is a number below 65536.
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    if let Some((_, port)) = authority.get(host_end..).and_then(|a| a.rsplit_once(':')) {
        if port.parse::<u16>().is_err() {
            return Err(bad("the port is not a number from 0 to 65535"));
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    Ok(UrlParts {
        scheme,
        authority: authority.to_owned(),
        path: if path.is_empty() { "/" } else { path }.to_owned(),
        query,
    })
}

/// A URL for an error message: without its query and fragment (an
/// `api_key=` or a session in the query is a credential) and without user
/// information (`user:password@`).
pub fn redact_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let (shown, rest) = url.split_at(cut);
    let mut shown = shown.to_owned();
    let after_scheme = shown.find("://").map_or(0, |i| i + 3);
    let authority_end = shown
        .get(after_scheme..)
        .and_then(|a| a.find('/'))
        .map_or(shown.len(), |i| after_scheme + i);
    if let Some(at) = shown
        .get(after_scheme..authority_end)
        .and_then(|a| a.rfind('@'))
    {
        shown.replace_range(after_scheme..after_scheme + at, "…");
    }
    if !rest.is_empty() {
        shown.push_str("?…");
    }
    shown
}

/// Parses a `--header` argument, `Name: value`. Errors name the header by
/// the text before its first space or colon only: the rest may be a
/// credential (`-H "Authorization Bearer …"` without its colon).
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let shown = s
        .trim_start()
        .split([' ', '\t', ':'])
        .next()
        .unwrap_or_default();
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("--header {shown:?}…: expected 'Name: value' (no colon)"))?;
    let name = name.trim();
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return Err(format!(
            "--header {shown:?}…: the text before ':' is not a header name"
        ));
    }
    Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
}

/// The media type signed and sent for a body given without a
/// `content-type` header.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// Adds `content-type: application/json` when there is a body and no
/// `content-type` header; returns whether it did. curl would otherwise send
/// its own `application/x-www-form-urlencoded` for `--data-raw` and
/// `--data-binary`, outside the signature, so the media type could be
/// changed under it. With the header in the message, the default coverage
/// covers it and the curl line sends it.
pub fn add_default_content_type(req: &mut RequestSpec) -> bool {
    if req.body.is_none() || req.headers.iter().any(|(n, _)| n == "content-type") {
        return false;
    }
    req.headers
        .push(("content-type".to_owned(), DEFAULT_CONTENT_TYPE.to_owned()));
    true
}

/// A `--component` as RFC 9421 names it: a header field name in lower
/// case, as `--header` names are (`Content-Type` is `content-type`); derived
/// components (`@method`) and parameters after `;` are kept as given.
pub fn component_name(c: &str) -> String {
    if c.starts_with('@') {
        return c.to_owned();
    }
    match c.split_once(';') {
        Some((name, params)) => format!("{};{params}", name.to_ascii_lowercase()),
        None => c.to_ascii_lowercase(),
    }
}

/// What signing produced.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The header values.
    pub headers: SignatureHeaders,
    /// The covered components, in order.
    pub components: Vec<String>,
}

/// Signs a request. `components` overrides the default coverage (that of
/// [`default_covered_components`], which the filter's default
/// [`SigningPolicy`] accepts).
pub fn sign(
    key: &InstallSigningKey,
    req: &RequestSpec,
    options: &SignatureOptions,
    components: Option<Vec<String>>,
) -> Result<Signed, CliError> {
    let url = split_url(&req.url)?;
    let headers = message_headers(req)?;
    let message = Message::request(
        &req.method,
        &url.scheme,
        &url.authority,
        &url.path,
        url.query.as_deref(),
        &headers,
        req.body.as_deref(),
    );
    let components =
        components.unwrap_or_else(|| default_covered_components(&message, &req.token_header));
    let mut options = options.clone();
    options.components = components.clone();
    let headers = sign_request(key, &message, &options)
        .map_err(|e| CliError::invalid(format!("cannot sign: {e}")))?;
    Ok(Signed {
        headers,
        components,
    })
}

/// The header fields of the signed message: the token and the given
/// headers. Fields the signature produces may not be given, nor `Host`:
/// `@authority` is signed from `--url`, while curl would send the given
/// `Host`, so the filter would refuse the signature.
pub fn message_headers(req: &RequestSpec) -> Result<Vec<(String, String)>, CliError> {
    let token_header = req.token_header.to_ascii_lowercase();
    let mut headers = vec![(token_header.clone(), req.token.clone())];
    for (name, value) in &req.headers {
        if name.eq_ignore_ascii_case("host") {
            return Err(CliError::invalid(format!(
                "--header {name}: @authority is signed from --url, so a Host header would \
                 make a signature the filter refuses; put the host (and port) in --url"
            )));
        }
        if *name == token_header {
            return Err(CliError::invalid(format!(
                "--header {name}: the token header comes from --token"
            )));
        }
        if ["signature", "signature-input", "content-digest"].contains(&name.as_str()) {
            return Err(CliError::invalid(format!(
                "--header {name}: produced by the signature, not an input"
            )));
        }
        headers.push((name.clone(), value.clone()));
    }
    Ok(headers)
}

/// A JWT's header and claims, read without verifying it, as the filter
/// reads them: exactly three `.`-separated parts (surrounding whitespace
/// aside, which Envoy strips from the header), the first two strict
/// base64url without padding of JSON objects (the filter's own strict
/// parser: no duplicate keys, bounded nesting). `None` for anything else,
/// which the filter refuses as malformed.
pub fn jwt_parts(token: &str) -> Option<(Map<String, Value>, Map<String, Value>)> {
    use base64::Engine as _;
    let mut parts = token.trim().split('.');
    let (header, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let object = |part: &str| {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .ok()?;
        appguard::token::strict_json::parse_object(&bytes)
    };
    Some((object(header)?, object(payload)?))
}

/// A string claim of a JWT, read without verifying it (to warn about a
/// token whose `ipk` is not the signing key's).
pub fn token_claim(token: &str, name: &str) -> Option<String> {
    let (_, claims) = jwt_parts(token)?;
    claims.get(name)?.as_str().map(str::to_owned)
}

/// Why the filter will refuse a signature by `key` sent with `token`, when
/// that shows without the token's own key: the filter takes the install key
/// from the token's `claim` (`message_signing.claim`), so a token that is
/// no JWT, a JWT without that claim, or one whose claim is another key's
/// fails `message_signing` however good the signature. `None` when the
/// claim is `key`'s public half.
///
/// A leading `Bearer ` (any case) is not part of the token: a provider
/// reading `from: [{"header": "authorization", "prefix": "Bearer "}]` needs
/// the header sent as `Bearer <jwt>`, which `--token` then holds.
pub fn token_warning(token: &str, claim: &str, key: &InstallSigningKey) -> Option<String> {
    let token = strip_bearer(token);
    let Some((_, claims)) = jwt_parts(token) else {
        return Some(
            "--token is not a JWT (three base64url parts, the first two JSON objects); the filter will refuse it, and the signature with it"
                .to_owned(),
        );
    };
    let Some(ipk) = claims.get(claim).and_then(Value::as_str) else {
        return Some(format!(
            "the token has no `{claim}` claim (a string) to take the install key from; the filter will refuse the signature (mint the token with --ipk-from)"
        ));
    };
    if InstallKey::from_ipk(ipk).ok() != Some(key.public_key()) {
        return Some(format!(
            "the token's `{claim}` is not this install key's public half; the filter will refuse the signature"
        ));
    }
    None
}

/// `token` without a leading `Bearer ` (any case, surrounding whitespace
/// aside).
pub fn strip_bearer(token: &str) -> &str {
    let token = token.trim();
    match (token.get(..7), token.get(7..)) {
        (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("bearer ") => rest.trim_start(),
        _ => token,
    }
}

/// The default signature label (`install`), as the filter's policy expects.
pub fn default_label() -> String {
    SigningPolicy::DEFAULT_LABEL.to_owned()
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The curl command that sends the signed request. `body_file`, when set,
/// is sent with `--data-binary @FILE` instead of inline; it is never `-`
/// (the curl line would read curl's own standard input, not the body
/// signed): see [`inline_body`].
pub fn curl_line(req: &RequestSpec, signed: &Signed, body_file: Option<&str>) -> String {
    // `--path-as-is`: curl would otherwise resolve `/a/../b` in the URL,
    // and `@path` was signed as given. `--globoff`: curl would otherwise
    // read `{a,b}` and `[1-9]` in the URL as lists of URLs to send
    // (`?filter={a}` sent as `?filter=a`), while `@path` and `@query`
    // were signed as given.
    let mut args = vec![
        "curl".to_owned(),
        "-sS".to_owned(),
        "--path-as-is".to_owned(),
        "--globoff".to_owned(),
        "-X".to_owned(),
        shell_quote(&req.method),
        shell_quote(&req.url),
        "-H".to_owned(),
        shell_quote(&format!("{}: {}", req.token_header, req.token)),
    ];
    for (name, value) in &req.headers {
        args.push("-H".to_owned());
        // curl reads `Name:` as "do not send Name"; `Name;` sends it empty.
        args.push(shell_quote(&if value.is_empty() {
            format!("{name};")
        } else {
            format!("{name}: {value}")
        }));
    }
    let h = &signed.headers;
    if let Some(d) = &h.content_digest {
        args.push("-H".to_owned());
        args.push(shell_quote(&format!("Content-Digest: {d}")));
    }
    args.push("-H".to_owned());
    args.push(shell_quote(&format!(
        "Signature-Input: {}",
        h.signature_input
    )));
    args.push("-H".to_owned());
    args.push(shell_quote(&format!("Signature: {}", h.signature)));
    match (body_file, &req.body) {
        (Some(file), _) => {
            args.push("--data-binary".to_owned());
            args.push(shell_quote(&format!("@{file}")));
        }
        (None, Some(body)) => {
            // `--data-raw`: a body starting with `@` is the body, not a
            // file name.
            args.push("--data-raw".to_owned());
            args.push(shell_quote(&String::from_utf8_lossy(body)));
        }
        (None, None) => {}
    }
    args.join(" ")
}

/// Whether a body read from standard input can go inline in the curl line
/// (`--data-raw '…'`): UTF-8 text without NUL, which a shell argument
/// cannot hold. Otherwise the caller asks for a file.
pub fn inline_body(body: &[u8]) -> Result<(), CliError> {
    match std::str::from_utf8(body) {
        Ok(text) if !text.contains('\0') => Ok(()),
        _ => Err(CliError::input(
            "--body-file -: the body is not text (not UTF-8, or it holds NUL), so the curl \
             line cannot carry it inline and `@-` would read curl's own standard input: \
             give the body as --body-file FILE",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_components() {
        let u = split_url("https://api.example.com:8443/v1/sms?x=1&y=2#frag").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.authority, "api.example.com:8443");
        assert_eq!(u.path, "/v1/sms");
        assert_eq!(u.query.as_deref(), Some("x=1&y=2"));
        let u = split_url("HTTP://h?q").unwrap();
        assert_eq!((u.scheme.as_str(), u.path.as_str()), ("http", "/"));
        assert!(split_url("/v1/sms").is_err());
        assert!(split_url("http://h:99999999999999999999/").is_err());
        assert!(split_url("http://h:x/").is_err());
        assert_eq!(
            split_url("http://[::1]:8080/a").unwrap().authority,
            "[::1]:8080"
        );
        assert!(split_url("http://[::1]/a").is_ok());
        assert!(split_url("ftp://h/").is_err());
        assert!(split_url("https://user@h/").is_err());
        for (url, why) in [
            ("https://h/a b", "space"),
            ("https://h/a?b=c d", "space"),
            ("https://h/caf\u{e9}", "non-ASCII"),
            ("https://h/a\tb", "0x09"),
            ("https://h/a\nb", "0x0a"),
            ("https://h/a\x7fb", "0x7f"),
        ] {
            let e = split_url(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url:?}: {e}");
            assert!(e.contains("percent-encode"), "{url:?}: {e}");
        }
        assert!(split_url("https://h/caf%C3%A9?q=a%20b").is_ok());
        // Errors show no query, fragment or user information.
        for url in [
            "https://h:99999/?api_key=SECRET",
            "https://h:99999/#SECRET",
            "https://u:SECRET@h/",
            "ftp://h/x?SECRET",
        ] {
            let e = split_url(url).unwrap_err().to_string();
            assert!(!e.contains("SECRET"), "{e}");
        }
        assert_eq!(redact_url("https://u:p@h:1/a?b#c"), "https://…@h:1/a?…");
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("Content-Type: application/json").unwrap(),
            ("content-type".into(), "application/json".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
        // The value, or what may be one, is never in the message.
        for h in [
            "Authorization Bearer SECRET",
            "X-Key SECRET: x",
            "Bad\tSECRET",
        ] {
            let e = parse_header(h).unwrap_err();
            assert!(!e.contains("SECRET"), "{e}");
        }
        assert!(parse_header("Authorization Bearer SECRET")
            .unwrap_err()
            .contains("\"Authorization\""));
    }

    #[test]
    fn a_host_header_is_refused() {
        let req = |name: &str| RequestSpec {
            method: "GET".to_owned(),
            url: "https://api.example.com/".to_owned(),
            headers: vec![(name.to_owned(), "other.example.com".to_owned())],
            body: None,
            token_header: "approov-token".to_owned(),
            token: "t".to_owned(),
        };
        for name in ["host", "Host", "HOST"] {
            let err = message_headers(&req(name)).unwrap_err();
            assert_eq!(err.exit_code(), 1, "{name}");
            let message = err.to_string();
            assert!(message.contains("--url"), "{message}");
            assert!(message.contains("@authority"), "{message}");
        }
        // Other headers still go in.
        assert_eq!(message_headers(&req("x-host")).unwrap().len(), 2);
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        // {"ipk":"abc"} in base64url.
        assert_eq!(
            token_claim("e30.eyJpcGsiOiJhYmMifQ.sig", "ipk").as_deref(),
            Some("abc")
        );
        assert_eq!(token_claim("e30.eyJpcGsiOiJhYmMifQ.sig", "x"), None);
        assert_eq!(token_claim("garbage", "ipk"), None);
    }

    #[test]
    fn tokens_the_filter_takes_no_install_key_from_are_warned_of() {
        use crate::install_key::{generate, KeyType};
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let (key, _) = generate(KeyType::P256).unwrap();
        let (other, _) = generate(KeyType::Ed25519).unwrap();
        let ipk = key.public_key().to_ipk();
        let jwt = |claims: &str| format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(claims));
        let good = jwt(&format!(r#"{{"ipk":"{ipk}"}}"#));
        assert_eq!(token_warning(&good, "ipk", &key), None);
        assert_eq!(token_warning(&format!(" {good}\n"), "ipk", &key), None);
        let warn = |token: &str, claim: &str, k| token_warning(token, claim, k).unwrap_or_default();
        // Not a JWT at all.
        for not_jwt in [
            "opaque-token",
            "x.y.z",
            "e30.e30",
            "e30.e30.sig.more",
            "e30=.e30.sig",
            "W10.e30.sig",
            &jwt(r#"{"ipk":"a","ipk":"b"}"#),
        ] {
            assert!(
                warn(not_jwt, "ipk", &key).starts_with("--token is not a JWT"),
                "{not_jwt}"
            );
        }
        // A JWT without the claim (or with a claim that is no string).
        for claims in ["{}", r#"{"ipk": 1}"#, &format!(r#"{{"key":"{ipk}"}}"#)] {
            assert_eq!(
                warn(&jwt(claims), "ipk", &key),
                "the token has no `ipk` claim (a string) to take the install key from; \
                 the filter will refuse the signature (mint the token with --ipk-from)",
                "{claims}"
            );
        }
        assert!(warn(&good, "key", &key).contains("no `key` claim"));
        // Another key's.
        assert!(warn(&good, "ipk", &other).contains("is not this install key's public half"));
        // A `Bearer ` prefix (any case) is not part of the token.
        for prefix in ["Bearer ", "bearer ", "BEARER  "] {
            let bearer = format!("{prefix}{good}");
            assert_eq!(token_warning(&bearer, "ipk", &key), None, "{bearer}");
            assert!(warn(&bearer, "ipk", &other).contains("is not this install key's public half"));
        }
        assert!(warn("Bearer opaque", "ipk", &key).starts_with("--token is not a JWT"));
        assert_eq!(strip_bearer("Bearerx.y.z"), "Bearerx.y.z");
        assert_eq!(strip_bearer("Bear"), "Bear");
    }

    #[test]
    fn component_names_are_lower_case_header_names() {
        assert_eq!(component_name("Content-Type"), "content-type");
        assert_eq!(component_name("@method"), "@method");
        assert_eq!(
            component_name("@query-param;name=\"Foo\""),
            "@query-param;name=\"Foo\""
        );
        assert_eq!(component_name("X-Dict;key=\"A\""), "x-dict;key=\"A\"");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    /// `--component` keeps parameters after `;` (see [`component_name`]):
    /// `@query-param;name="id"` or `example-dict;key="a"` are RFC 9421
    /// components the filter verifies, so `sign-request` must sign them,
    /// not fail with "invalid component name".
    #[test]
    fn a_component_with_parameters_is_signed() {
        use crate::install_key::{generate, KeyType};
        let (key, _) = generate(KeyType::P256).unwrap();
        let req = RequestSpec {
            method: "GET".to_owned(),
            url: "https://api.example.com/v1/x?id=7".to_owned(),
            headers: vec![("example-dict".to_owned(), "a=1, b=2".to_owned())],
            body: None,
            token_header: "approov-token".to_owned(),
            token: "t".to_owned(),
        };
        let components: Vec<String> = [
            "@method",
            "@authority",
            "@path",
            "@query",
            "approov-token",
            "@query-param;name=\"id\"",
            "example-dict;key=\"a\"",
        ]
        .iter()
        .map(|c| component_name(c))
        .collect();
        let options = SignatureOptions::new("install", Vec::new(), crate::now());
        let signed = sign(&key, &req, &options, Some(components));
        let signed = match signed {
            Ok(s) => s,
            Err(e) => panic!("not signed: {e}"),
        };
        assert!(
            signed
                .headers
                .signature_input
                .contains(r#""@query-param";name="id" "example-dict";key="a""#),
            "{}",
            signed.headers.signature_input
        );
        // And the filter's verifier accepts what was signed.
        let headers = vec![
            ("approov-token".to_owned(), "t".to_owned()),
            ("example-dict".to_owned(), "a=1, b=2".to_owned()),
            (
                "signature-input".to_owned(),
                signed.headers.signature_input.clone(),
            ),
            ("signature".to_owned(), signed.headers.signature.clone()),
        ];
        let message = Message::request(
            "GET",
            "https",
            "api.example.com",
            "/v1/x",
            Some("id=7"),
            &headers,
            None,
        );
        assert!(appguard::signing::verify(
            &SigningPolicy::default(),
            &message,
            &key.public_key(),
            "approov-token",
            crate::now(),
        )
        .is_ok());
    }
}
