//! The API key's cookie copy cut with `api_keys.forward: false`, through a
//! real Envoy: across cookie headers, HTTP/2 crumbs, refused requests.

use serde_json::json;

use crate::harness::http::Req;
use crate::harness::upstream::Upstream;
use crate::harness::EnvoyBuilder;

const KEY: &str = "e2e-key-0123-secret-value";

fn cfg(forward: bool) -> serde_json::Value {
    json!({
        "default_action": "deny",
        "api_keys": {"query_param": "key", "forward": forward,
                     "keys": [{"id": "k1", "sha256": appguard::identity::hash_api_key(KEY)}]},
        "routes": [{"name": "keyed", "match": {"prefix": "/keyed"}, "api_key": "required"}]
    })
}

/// PHP (php_default_treat_data, PARSE_COOKIE) skips every
/// `isspace` byte before a cookie's name, so `\x0bkey=X` and `\x0ckey=X`
/// are `$_REQUEST['key']` there, while appguard skips only ` ` and `\t`.
/// Envoy answers 400 to both bytes in a header value, so neither reaches
/// appguard or the upstream.
#[test]
fn key_cookie_after_vertical_tab_or_form_feed() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg(false), up.port).start();
    let mut failures = Vec::new();
    for sep in [b'\x0b', b'\x0c'] {
        let mut cookie = b"a=1;".to_vec();
        cookie.push(sep);
        cookie.extend_from_slice(b"key=another-key");
        let r = envoy.request(
            Req::get("/keyed/c")
                .header("x-api-key", KEY)
                .header_bytes("cookie", &cookie),
        );
        if r.status == 200 {
            let seen = up.last();
            failures.push(format!(
                "{sep:#04x}: allowed, upstream cookie {:?}",
                seen.header("cookie")
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// HTTP/1 with two cookie headers, and odd whitespace: the other cookies
/// reach the upstream, the key's copy does not.
#[test]
fn key_cookie_cut_across_cookie_headers() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg(false), up.port).start();
    let r = envoy.request(
        Req::get("/keyed/c")
            .header("x-api-key", KEY)
            .header("cookie", &format!("a=1;\tkey={KEY}"))
            .header("cookie", &format!("key[x]={KEY} ;b=\"q v\"")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    let cookies: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(cookies, ["a=1; b=\"q v\""]);
}

/// A refused request's cookie copy of the key is cut before Envoy's access
/// log reads the headers.
#[test]
fn key_cookie_not_in_access_log_of_refused_request() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let up = Upstream::start();
    let mut c = cfg(false);
    c["routes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "closed", "match": {"prefix": "/closed"}, "action": "deny", "api_key": "required"}));
    let envoy = EnvoyBuilder::new(c, up.port)
        .access_log_format(&log, "%REQ(COOKIE)%\n")
        .start();
    // A key refused for its route, and a good key on a denied route.
    let r = envoy
        .request(Req::get("/keyed/w?key=not-the-key").header("cookie", "a=1; key=not-the-key"));
    assert_eq!(r.status, 403);
    let r = envoy.request(Req::get("/closed/x").header("cookie", &format!("key={KEY}; z=9")));
    assert_eq!(r.status, 403);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        !text.contains(KEY) && !text.contains("not-the-key"),
        "{text}"
    );
}

/// Over HTTP/2 the cookie crumbs (one header per cookie)
/// come to appguard joined; the key's crumb is cut, the others go on.
#[test]
fn key_cookie_cut_from_http2_crumbs() {
    use crate::harness::http2::H2;
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg(false), up.port).start();
    let h = H2::connect(envoy.port);
    let r = h.send(
        &Req::get("/keyed/h2")
            .header("x-api-key", KEY)
            .header("cookie", "a=1")
            .header("cookie", &format!("key={KEY}"))
            .header("cookie", "b=2"),
        1,
        std::time::Duration::ZERO,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    let all: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(all, ["a=1; b=2"]);
}

/// With `query_param`, a cookie of the parameter's name
/// is a key to upstreams that merge cookies into their parameters, and
/// appguard checks the headers' cookies for one. A `cookie` request trailer
/// (Envoy passes trailers on with `enable_trailers`) is not checked: it
/// must not reach the upstream, as a trailer copy of the key header does
/// not.
#[test]
fn a_key_cookie_sent_as_a_trailer_does_not_reach_the_upstream() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(cfg(true), up.port)
        .trailers()
        .without_buffer_filter()
        .start();
    let r = envoy.request(
        Req::post_json("/keyed/c", r#"{"a":1}"#)
            .header("x-api-key", KEY)
            .trailer("x-checksum", "c1")
            .trailer("cookie", "key=victims-key"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.trailers,
        vec![("x-checksum".to_string(), "c1".to_string())],
        "a key cookie sent as a trailer went upstream unchecked"
    );
    envoy.assert_vm_healthy();
}

/// A `host` request trailer is cut like the
/// forwarded-host trailers (`X-Forwarded-Host`, `Forwarded`): an upstream
/// that merges trailers into its headers would take the request for
/// another host than the one the routes' `match.hosts` checked.
#[test]
fn a_host_sent_as_a_trailer_does_not_reach_the_upstream() {
    let up = Upstream::start();
    let cfg = json!({
        "default_action": "deny",
        "api_keys": {"keys": [{"id": "k1", "sha256": appguard::identity::hash_api_key(KEY)}]},
        "routes": [{"name": "admin", "match": {"prefix": "/", "hosts": ["admin.example.com"]}, "action": "deny"},
                   {"name": "pub", "match": {"prefix": "/"}, "api_key": "required"}]
    });
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .trailers()
        .without_buffer_filter()
        .start();
    let r = envoy.request(
        Req::post_json("/c", r#"{"a":1}"#)
            .header("x-api-key", KEY)
            .trailer("x-checksum", "c1")
            .trailer("x-forwarded-host", "admin.example.com")
            .trailer("host", "admin.example.com"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.trailers,
        vec![("x-checksum".to_string(), "c1".to_string())],
        "a host trailer went upstream unchecked"
    );
    envoy.assert_vm_healthy();
}
