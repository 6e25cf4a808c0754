//! The request as a value the core reads: the adapter fills it from Envoy's
//! header map once, and tests build it directly.

use std::cell::OnceCell;
use std::net::IpAddr;

use crate::headers::Headers;

/// Header names the filter sets upstream; any copy the client sent is removed
/// first (together with every other `x-appguard-*` header).
pub const HEADER_PREFIX: &str = "x-appguard-";

/// Whether a header the client sent is one only appguard may set: an
/// `x-appguard-*` header or one of `claim_headers` (the headers
/// `claim_to_headers` sets from verified claims). `_` counts as `-`: Envoy
/// passes header names with underscores on by default, and upstream
/// servers that build a CGI-style environment (`HTTP_X_USER`) read
/// `x_user` as `x-user`, so a client's `x_appguard_app` must go too (and
/// `x.appguard.app`, see [`same_header_name`]).
pub fn reserved_header(name: &str, claim_headers: &[String]) -> bool {
    let n = name.as_bytes();
    n.get(..HEADER_PREFIX.len())
        .is_some_and(|p| same_header_name(p, HEADER_PREFIX.as_bytes()))
        || claim_headers
            .iter()
            .any(|h| same_header_name(n, h.as_bytes()))
}

/// Whether `name` is one of `names` to such an upstream (see
/// [`same_header_name`]): the one reading of a header name against a list.
pub fn is_header_of(name: &str, names: &[&str]) -> bool {
    names
        .iter()
        .any(|h| same_header_name(name.as_bytes(), h.as_bytes()))
}

/// Whether two header names are the same to an upstream that builds a
/// CGI-style environment (PHP, Symfony's header bag): compared without
/// case, `_` and `.` counting as `-` (servers that pass `X.Y` on as
/// `HTTP_X.Y`, such as PHP's built-in server and FrankenPHP, leave PHP to
/// turn the `.` into `_`).
pub fn same_header_name(a: &[u8], b: &[u8]) -> bool {
    let canon = |c: u8| {
        if c == b'_' || c == b'.' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| canon(x) == canon(y))
}

/// The one value among `values` (every copy of a header), `None` when there
/// is none, `Err(())` when copies differ.
fn one_value<'a>(values: impl Iterator<Item = &'a str>) -> Result<Option<&'a str>, ()> {
    let mut found: Option<&'a str> = None;
    for v in values {
        match found {
            None => found = Some(v),
            Some(prev) if prev == v => {}
            Some(_) => return Err(()),
        }
    }
    Ok(found)
}

/// One HTTP request as seen by the decision core.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// All request headers in the order Envoy holds them, pseudo-headers
    /// (`:method`, `:path`, `:authority`) included. Names are lower case, as
    /// Envoy normalises them for both HTTP/1 and HTTP/2.
    pub headers: &'a Headers,
    /// Envoy's downstream remote address (`source.address`), the client IP
    /// unless `client_ip.xff_trusted_hops` says to read X-Forwarded-For.
    pub peer: Peer,
    /// The client IP, once something asked for it.
    client_ip: OnceCell<Option<IpAddr>>,
    /// Token payloads already verified by Envoy's `jwt_authn`, for
    /// providers with `verified_by`. Only dynamic metadata, never a header,
    /// can fill this.
    pub delegated: Delegated<'a>,
    /// Whether a body follows the headers, as Envoy told the filter (the
    /// headers did not end the stream). HTTP/2 and HTTP/3 requests need no
    /// `content-length`, so the headers alone cannot say; `false` where
    /// only the headers are known (tests, tools), which then decide.
    pub body_follows: bool,
}

/// Claims of a token payload.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Where the payloads of delegated providers come from.
#[derive(Clone, Copy)]
pub enum Delegated<'a> {
    /// Given up front as (provider index, claims): tests, fuzzers, the
    /// benchmarks, and requests with none.
    Known(&'a [(usize, Claims)]),
    /// Read from the host for a provider when a route needs its token. In
    /// Envoy that is a dynamic-metadata property read costing ~12 µs, so
    /// requests on routes without a delegated provider never pay it.
    Lazy(&'a dyn Fn(usize) -> Option<Claims>),
}

impl std::fmt::Debug for Delegated<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Delegated::Known(p) => f.debug_tuple("Known").field(p).finish(),
            Delegated::Lazy(_) => f.write_str("Lazy(..)"),
        }
    }
}

impl Delegated<'_> {
    /// The verified payload for provider `index`, if there is one.
    pub fn payload(&self, index: usize) -> Option<Claims> {
        match self {
            Delegated::Known(list) => list
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, claims)| claims.clone()),
            Delegated::Lazy(read) => read(index),
        }
    }
}

/// Where the downstream address comes from.
#[derive(Clone, Copy, Debug)]
pub enum Peer {
    /// Known up front (tests, fuzzers, the benchmarks).
    Known(Option<IpAddr>),
    /// Asked of the host the first time a check needs it. In Envoy this is a
    /// property read costing ~3 µs of V8 time, and most requests (a cached
    /// token, no IP rules) never need the address.
    Lazy(fn() -> Option<IpAddr>),
}

impl<'a> Request<'a> {
    /// A request over the given header list, with a known downstream address.
    pub fn new(headers: &'a Headers, downstream_ip: Option<IpAddr>) -> Self {
        Self::with_peer(headers, Peer::Known(downstream_ip))
    }

    /// A request whose downstream address comes from `peer`.
    pub fn with_peer(headers: &'a Headers, peer: Peer) -> Self {
        Request {
            headers,
            peer,
            client_ip: OnceCell::new(),
            delegated: Delegated::Known(&[]),
            body_follows: false,
        }
    }

    /// Whether the request has a body: the stream goes on after the
    /// headers, or they declare one (`content-length` other than 0, or
    /// `transfer-encoding`).
    pub fn has_body(&self) -> bool {
        self.body_follows
            || self
                .header("content-length")
                .is_some_and(|v| v.trim() != "0")
            || self.header("transfer-encoding").is_some()
    }

    /// The client IP (SPEC §1 step 2): the downstream address, or the
    /// `xff_trusted_hops`-th X-Forwarded-For entry from the right. Worked
    /// out on first use and remembered for this request.
    pub fn client_ip(&self, xff_trusted_hops: u32) -> Option<IpAddr> {
        *self.client_ip.get_or_init(|| {
            // `net::client_ip` asks for the downstream address (a host
            // property read in Envoy) only when no proxy is trusted.
            let downstream = || match self.peer {
                Peer::Known(ip) => ip,
                Peer::Lazy(read) => read(),
            };
            crate::net::client_ip(
                downstream,
                self.header_all("x-forwarded-for"),
                xff_trusted_hops,
            )
        })
    }

    /// The client IP if a check has already worked it out.
    pub fn client_ip_if_known(&self) -> Option<IpAddr> {
        self.client_ip.get().copied().flatten()
    }

    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name)
    }

    /// All values of a header, in order.
    pub fn header_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers.get_all(name)
    }

    /// The single value of a security-relevant header. A header sent more than
    /// once with different values is ambiguous (which copy does the upstream
    /// read?), so it is reported as `Err(())` and refused by the caller.
    #[allow(clippy::result_unit_err)]
    pub fn header_unique(&self, name: &str) -> Result<Option<&'a str>, ()> {
        one_value(self.headers.get_all(name))
    }

    /// [`Request::header_unique`] over every spelling of `name` that an
    /// upstream may read as it ([`same_header_name`]: `x_api_key` and
    /// `x.api.key` are `x-api-key` to CGI, PHP and Symfony): copies under
    /// different spellings must agree too. Every header is looked at, so
    /// this is for the headers that carry credentials, not for each lookup.
    #[allow(clippy::result_unit_err)]
    pub fn header_unique_any_spelling(&self, name: &str) -> Result<Option<&'a str>, ()> {
        one_value(
            self.headers
                .iter()
                .filter(|(n, _)| same_header_name(n.as_bytes(), name.as_bytes()))
                .map(|(_, v)| v),
        )
    }

    /// The names, as sent, of the headers that are `name` in any spelling
    /// ([`same_header_name`]).
    pub fn header_spellings(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (n, _) in self.headers.iter() {
            if same_header_name(n.as_bytes(), name.as_bytes()) && !out.iter().any(|o| o == n) {
                out.push(n.to_owned());
            }
        }
        out
    }

    /// `:method`, or empty when absent.
    pub fn method(&self) -> &'a str {
        self.header(":method").unwrap_or("")
    }

    /// `:path` without the query string or fragment.
    pub fn path(&self) -> &'a str {
        split_target(self.header(":path").unwrap_or("")).0
    }

    /// The query string of `:path` (after `?`, before `#`), if any.
    pub fn query(&self) -> Option<&'a str> {
        split_target(self.header(":path").unwrap_or("")).1
    }

    /// `:authority` without its port, as written (compare case-insensitively).
    pub fn host(&self) -> &'a str {
        host_name(self.header(":authority").unwrap_or(""))
    }
}

/// The host name of an authority (`host[:port]`, `[v6]:port`), without a
/// trailing dot: `api.example.com.` is the same name (fully qualified), and
/// Envoy routes it unless `strip_trailing_host_dot` is set, so it must
/// match the same routes.
pub fn host_name(authority: &str) -> &str {
    let h = strip_port(authority.trim());
    h.strip_suffix('.').unwrap_or(h)
}

/// The host name an upstream that cuts an authority at its first `:`
/// reads (Go's `net.SplitHostPort`, which takes any text for a port,
/// Express's `req.hostname`), where that is not [`host_name`]'s: an
/// authority whose port is not digits (`api.example.com:x.cdn.example.com`,
/// `internal.example.com:-1`, `a.example.com:80:80`), which Envoy passes on
/// as sent. `None` for a well-formed authority and a bracketed IPv6 one.
pub fn host_name_cut_at_colon(authority: &str) -> Option<&str> {
    let a = authority.trim();
    if a.starts_with('[') {
        return None;
    }
    let (cut, _) = a.split_once(':')?;
    let cut = cut.strip_suffix('.').unwrap_or(cut);
    (cut != host_name(a)).then_some(cut)
}

/// Whether an authority (`host[:port]`, `[v6]:port`) holds only what a
/// host name, an IP literal and a port are made of: ASCII letters and
/// digits, `-`, `.`, `_`, `:`, `[` and `]`. Anything else is another host
/// to some upstream: WHATWG URL parsing (Node's `new URL`, Koa's
/// `ctx.URL`) drops `user@`, percent-decodes `%69nternal` and maps `。` to
/// `.`, and a comma joins two `Host` headers Envoy merged. Envoy's HTTP/1
/// codec passes all of these on.
pub fn is_plain_authority(authority: &str) -> bool {
    authority
        .trim()
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']'))
}

/// Every host name an upstream may read an authority as: [`host_name`]'s,
/// then [`host_name_cut_at_colon`]'s where there is one; none empty.
pub fn host_readings(authority: &str) -> impl Iterator<Item = &str> {
    std::iter::once(host_name(authority))
        .chain(host_name_cut_at_colon(authority))
        .filter(|h| !h.is_empty())
}

/// A request target split into path, query and fragment, the one split
/// every reader of `:path` uses so that they agree: the query runs from the
/// first `?` to the first `#`, and a `?` inside the fragment starts none.
pub fn split_target(target: &str) -> (&str, Option<&str>, Option<&str>) {
    let (before, fragment) = match target.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (target, None),
    };
    match before.split_once('?') {
        Some((path, query)) => (path, Some(query), fragment),
        None => (before, None, fragment),
    }
}

/// `host[:port]` or `[v6]:port` → host.
fn strip_port(a: &str) -> &str {
    if let Some(rest) = a.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &rest[..i],
            None => a,
        };
    }
    match a.rfind(':') {
        Some(i) if a[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &a[..i],
        _ => a,
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    /// Builds a header list from string pairs.
    pub fn headers(pairs: &[(&str, &str)]) -> crate::headers::Headers {
        pairs.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::headers;
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn reserved_headers_are_found_with_underscores_for_dashes() {
        let claims = vec!["x-user".to_owned()];
        for name in [
            "x-appguard-app",
            "x_appguard_app",
            "x-appguard_platform",
            "X_AppGuard-",
            "x-user",
            "x_user",
            // PHP's built-in server and FrankenPHP pass `.` on; PHP then
            // reads it as `_`
            "x.appguard.app",
            "x.user",
        ] {
            assert!(reserved_header(name, &claims), "{name}");
        }
        for name in [
            "x-appguard",
            "x_appguar",
            "x-users",
            "x_use",
            "user",
            "",
            "x-api-key",
        ] {
            assert!(!reserved_header(name, &claims), "{name}");
        }
        assert!(!reserved_header("x_user", &[]));
    }

    #[test]
    fn pseudo_headers_are_split() {
        let h = headers(&[
            (":method", "POST"),
            (":path", "/v1/sms?x=1#frag"),
            (":authority", "API.example.com:8443"),
        ]);
        let r = Request::new(&h, None);
        assert_eq!(r.method(), "POST");
        assert_eq!(r.path(), "/v1/sms");
        assert_eq!(r.query(), Some("x=1"));
        // A `?` inside the fragment starts no query (the upstream sees none).
        let hf = headers(&[(":path", "/sms#frag?key=k")]);
        let rf = Request::new(&hf, None);
        assert_eq!((rf.path(), rf.query()), ("/sms", None));
        let he = headers(&[(":path", "/sms?#x")]);
        assert_eq!(Request::new(&he, None).query(), Some(""));
        assert_eq!(r.host(), "API.example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        for authority in ["api.example.com.", "api.example.com.:443"] {
            let h = headers(&[(":authority", authority)]);
            assert_eq!(Request::new(&h, None).host(), "api.example.com");
        }
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(host_name_cut_at_colon("example.com"), None);
        assert_eq!(host_name_cut_at_colon("example.com:443"), None);
        assert_eq!(host_name_cut_at_colon("example.com.:443"), None);
        assert_eq!(host_name_cut_at_colon("example.com:"), None);
        assert_eq!(host_name_cut_at_colon("[::1]:x"), None);
        for odd in [
            "example.com:abc",
            "example.com:-1",
            "example.com:+80",
            "example.com:80.",
            "example.com.:80:80",
            " example.com:x.cdn.example.com",
        ] {
            assert_eq!(host_name_cut_at_colon(odd), Some("example.com"), "{odd}");
        }
    }

    #[test]
    fn every_reader_of_the_target_splits_it_the_same_way() {
        for (target, want) in [
            ("/a", ("/a", None, None)),
            ("/a?b=1", ("/a", Some("b=1"), None)),
            ("/a?b=1#f", ("/a", Some("b=1"), Some("f"))),
            ("/a#f?b=1", ("/a", None, Some("f?b=1"))),
            ("/a?b?c#f#g", ("/a", Some("b?c"), Some("f#g"))),
            ("?", ("", Some(""), None)),
            ("#", ("", None, Some(""))),
        ] {
            assert_eq!(split_target(target), want, "{target}");
            let h = headers(&[(":path", target)]);
            let r = Request::new(&h, None);
            assert_eq!((r.path(), r.query()), (want.0, want.1), "{target}");
        }
    }

    #[test]
    fn duplicated_headers_with_different_values_are_ambiguous() {
        let h = headers(&[("a", "1"), ("a", "1"), ("b", "1"), ("b", "2")]);
        let r = Request::new(&h, None);
        assert_eq!(r.header_unique("a"), Ok(Some("1")));
        assert_eq!(r.header_unique("b"), Err(()));
        assert_eq!(r.header_unique("c"), Ok(None));
        assert_eq!(r.header_all("b").collect::<Vec<_>>(), vec!["1", "2"]);
    }

    #[test]
    fn the_downstream_address_is_read_only_when_no_proxy_is_trusted() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static READS: AtomicUsize = AtomicUsize::new(0);
        fn read() -> Option<IpAddr> {
            READS.fetch_add(1, Ordering::SeqCst);
            "192.0.2.7".parse().ok()
        }
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9")]);
        // Behind one trusted proxy: the rightmost entry, the host not asked.
        let r = Request::with_peer(&h, Peer::Lazy(read));
        assert_eq!(r.client_ip(1), "203.0.113.9".parse().ok());
        assert_eq!(READS.load(Ordering::SeqCst), 0);
        // A chain shorter than the trusted hops has no client, and the
        // downstream address does not stand in for it.
        let r = Request::with_peer(&h, Peer::Lazy(read));
        assert_eq!(r.client_ip(3), None);
        assert_eq!(READS.load(Ordering::SeqCst), 0);
        // No trusted proxy: the downstream address, read once per request.
        let r = Request::with_peer(&h, Peer::Lazy(read));
        assert_eq!(r.client_ip(0), "192.0.2.7".parse().ok());
        assert_eq!(r.client_ip(0), "192.0.2.7".parse().ok());
        assert_eq!(READS.load(Ordering::SeqCst), 1);
    }
}
