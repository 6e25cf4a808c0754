//! Foundation end to end: a real Envoy loads the module, routes decide, local
//! replies follow SPEC §4, spoofed identity headers never reach upstream, and
//! a bad configuration is refused with its field named.

use crate::harness;

use harness::http::Req;
use harness::upstream::Upstream;
use harness::EnvoyBuilder;
use serde_json::json;

fn routes_config() -> serde_json::Value {
    json!({
        "default_action": "deny",
        "routes": [
            {"name": "admin", "match": {"prefix": "/admin/"}, "action": "deny"},
            {"name": "public", "match": {"prefix": "/public/", "methods": ["GET"]}},
            {"name": "trial", "match": {"path": "/trial"}, "action": "deny", "mode": "monitor"}
        ]
    })
}

#[test]
fn denying_route_gets_403_route_denied_with_json_body() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(routes_config(), up.port).start();
    let r = envoy.request(Req::get("/admin/users"));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.reason(), Some("route_denied"));
    assert_eq!(r.json(), json!({"error": "route_denied"}));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // unmatched path follows default_action: deny
    let r = envoy.request(Req::get("/elsewhere"));
    assert_eq!(r.status, 403);
    assert_eq!(r.reason(), Some("route_denied"));
    // method not on the route: unmatched
    let r = envoy.request(Req::new("DELETE", "/public/x"));
    assert_eq!((r.status, r.reason()), (403, Some("route_denied")));
    assert!(up.seen().is_empty(), "denied requests reached upstream");
    // HEAD takes the GET route, as upstreams serve it with the GET handler.
    let r = envoy.request(Req::new("HEAD", "/public/x"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.last().method, "HEAD");
    // A method override the upstream may honour names the DELETE that no
    // route allows: refused, not passed as a GET.
    let before = up.seen().len();
    for name in [
        "X-HTTP-Method-Override",
        "x-http-method",
        "x-method-override",
        // Envoy passes `_` names on by default, and PHP reads them as `-`
        "X_HTTP_Method_Override",
        "x.http.method.override",
    ] {
        let r = envoy.request(Req::get("/public/x").header(name, "DELETE"));
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("route_denied")),
            "{name}"
        );
    }
    // `.method` is `_method` in PHP's `$_GET` (Symfony, Laravel)
    for query in [
        "a=1&_method=DELETE",
        "%2Emethod=DELETE",
        "_method%00x=DELETE",
        "_method%00;x=DELETE",
    ] {
        let r = envoy.request(Req::get(&format!("/public/x?{query}")));
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("route_denied")),
            "{query}"
        );
    }
    assert_eq!(up.seen().len(), before, "an override reached upstream");
    // One that keeps the route changes nothing, repeated thousands of
    // times too (one variant); 17 distinct ones are refused, as each is
    // checked against every route.
    let r = envoy.request(Req::get("/public/x").header("x-http-method-override", "GET"));
    assert_eq!(r.status, 200, "{r:?}");
    let gets = vec!["GET"; 5_000].join(",");
    let r = envoy.request(Req::get("/public/x").header("x-http-method-override", &gets));
    assert_eq!(r.status, 200, "{r:?}");
    let distinct: Vec<String> = (0..17).map(|i| format!("GET{i}")).collect();
    let r =
        envoy.request(Req::get("/public/x").header("x-http-method-override", &distinct.join(",")));
    assert_eq!((r.status, r.reason()), (403, Some("route_denied")), "{r:?}");
}

/// Envoy passes on an authority whose port is not digits as sent, and an
/// upstream that cuts it at the first `:` (Go's `net/http`, Express)
/// serves the named host: it cannot ride another route, or
/// `default_action`, past that host's route. Nor can one with userinfo or
/// percent-encoding, which Envoy's HTTP/1 codec passes on too.
#[test]
fn an_authority_with_a_port_that_is_not_digits_cannot_leave_its_hosts_route() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(
        json!({
            "default_action": "allow",
            "routes": [
                {"name": "static", "match": {"prefix": "/", "hosts": ["*.cdn.example.com"]}},
                {"name": "internal", "match": {"prefix": "/", "hosts": ["internal.example.com"]}, "action": "deny"}
            ]
        }),
        up.port,
    )
    .start();
    let get = |host: &str| envoy.request(Req::get("/admin/users").header("host", host));
    assert_eq!(get("a.cdn.example.com").status, 200);
    assert_eq!(get("a.cdn.example.com:443").status, 200);
    let before = up.seen().len();
    for host in [
        "internal.example.com",
        "internal.example.com:abc",
        "internal.example.com:-1",
        "internal.example.com:x.cdn.example.com",
        // Node's `new URL` reads each of these as internal.example.com.
        "u@internal.example.com",
        "a.cdn.example.com:1@internal.example.com",
        "%69nternal.example.com",
        "internal%2eexample.com",
    ] {
        let r = get(host);
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("route_denied")),
            "{host}"
        );
    }
    assert_eq!(up.seen().len(), before, "a request reached the upstream");
}

/// gRPC services behind appguard: one denied, one that needs a token, one
/// limited to a call an hour, one that reads a phone number from a JSON
/// body of at most 64 bytes.
fn grpc_services() -> serde_json::Value {
    json!({
        "phone": {"default_calling_code": "44",
                  "hash_key_base64": "YXBwZ3VhcmQtZ3JwYy10ZXN0LXBob25lLWtleS0wMQ=="},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}]}],
        "routes": [
            {"name": "admin", "match": {"prefix": "/admin.v1.Admin/"}, "action": "deny"},
            {"name": "secure", "match": {"prefix": "/secure.v1.Secure/"}, "tokens": ["t"]},
            {"name": "quota", "match": {"prefix": "/quota.v1.Quota/"},
             "rate_limits": [{"entries": [{"type": "route"}], "local": {"requests": 1, "per": "hour"}}]},
            {"name": "sms", "match": {"prefix": "/sms.v1.Sms/"}, "max_body_bytes": 64,
             "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                              "local": {"requests": 5, "per": "hour"}}]}
        ]
    })
}

/// A gRPC message: no compression, 4-byte length, then the payload.
fn grpc_message(payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8];
    m.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// A gRPC request's refusal is a gRPC answer (HTTP 200 with
/// `grpc-status`, as Envoy turns every local reply for a gRPC request):
/// its status says what the reason means, a quota `RESOURCE_EXHAUSTED`
/// (not `UNAVAILABLE`, which clients retry), and appguard's headers stay.
#[test]
fn a_grpc_request_is_refused_with_the_grpc_status_of_its_reason() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(grpc_services(), up.port).start();
    let grpc = |path: &str, payload: &[u8]| {
        Req::new("POST", path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(&grpc_message(payload))
    };
    let check = |req: Req, reason: &str, grpc_status: &str| {
        let r = envoy.request(req);
        assert_eq!(r.status, 200, "{reason}: {r:?}");
        assert_eq!(
            r.header("grpc-status"),
            Some(grpc_status),
            "{reason}: {r:?}"
        );
        assert_eq!(r.reason(), Some(reason), "{r:?}");
        for name in ["grpc-status", "grpc-message", "content-type"] {
            let n = r.headers.iter().filter(|(k, _)| k == name).count();
            assert_eq!(n, 1, "{reason}: one {name}: {r:?}");
        }
        assert_eq!(r.header("content-type"), Some("application/grpc"), "{r:?}");
        r
    };
    check(grpc("/admin.v1.Admin/Drop", b""), "route_denied", "7");
    check(grpc("/secure.v1.Secure/Get", b""), "token_missing", "16");
    check(
        grpc("/sms.v1.Sms/Send", b"\x0a\x03abc"),
        "body_invalid",
        "3",
    );
    check(
        grpc("/sms.v1.Sms/Send", &[b'x'; 100]),
        "body_too_large",
        "8",
    );
    let before = up.seen().len();
    assert_eq!(envoy.request(grpc("/quota.v1.Quota/Get", b"")).status, 200);
    assert_eq!(
        up.seen().len(),
        before + 1,
        "the first call reached the upstream"
    );
    let r = check(grpc("/quota.v1.Quota/Get", b""), "rate_limited", "8");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert_eq!(up.seen().len(), before + 1);
    // Not gRPC: the HTTP status, as before.
    let r = envoy.request(Req::new("POST", "/admin.v1.Admin/Drop"));
    assert_eq!((r.status, r.reason()), (403, Some("route_denied")));
    assert_eq!(r.header("grpc-status"), None);
}

#[test]
fn a_forwarded_host_naming_another_route_is_refused() {
    // Envoy passes `X-Forwarded-Host` and `Forwarded` on, and Rails,
    // Django, Express and Spring may take the host from them: where routes
    // choose by host, one that names the admin host cannot ride the public
    // route.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(
        json!({
            "default_action": "deny",
            "routes": [
                {"name": "admin", "match": {"prefix": "/", "hosts": ["admin.example.com"]}, "action": "deny"},
                {"name": "api", "match": {"prefix": "/v1/", "hosts": ["api.example.com"]}}
            ]
        }),
        up.port,
    )
    .start();
    let api = |extra: Option<(&str, &str)>| {
        let mut r = Req::get("/v1/orders").header("host", "api.example.com");
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        envoy.request(r)
    };
    assert_eq!(api(None).status, 200);
    assert_eq!(
        api(Some(("x-forwarded-host", "api.example.com"))).status,
        200
    );
    let before = up.seen().len();
    for (name, value) in [
        ("x-forwarded-host", "admin.example.com"),
        ("x-forwarded-host", "api.example.com, admin.example.com"),
        ("forwarded", "for=192.0.2.1;host=admin.example.com"),
    ] {
        let r = api(Some((name, value)));
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("route_denied")),
            "{name}: {value}"
        );
    }
    assert_eq!(
        up.seen().len(),
        before,
        "a forwarded admin host reached upstream"
    );
}

#[test]
fn a_public_route_serves_browsers_from_any_site() {
    // No platforms, API key or token on the route: a browser's Origin or
    // Referer from another site, or an app nobody registered, is no reason
    // to refuse (there are no apps in this configuration at all).
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(routes_config(), up.port).start();
    for (name, value) in [
        ("referer", "https://www.google.com/search?q=appguard"),
        ("origin", "https://partner.example"),
        ("x-android-package", "com.example.unknown"),
    ] {
        let r = envoy.request(
            Req::get("/public/page")
                .header(name, value)
                .header("x-appguard-app", "forged"),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(up.last().header("x-appguard-app"), None);
    }
    assert_eq!(up.seen().len(), 3);
    // appguard decided each of them (not a configuration that let it pass
    // them by).
    assert_eq!(
        envoy.stat("appguard_decisions.route.public.decision.allow.reason.none"),
        Some(3)
    );
}

#[test]
fn allowed_request_reaches_upstream_without_spoofed_appguard_headers() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(routes_config(), up.port).start();
    let r = envoy.request(
        Req::get("/public/hello")
            .header("x-appguard-app", "spoofed-app")
            .header("X-AppGuard-Platform", "android")
            .header("x-appguard-anything", "1")
            .header("x-other", "kept"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.path, "/public/hello");
    assert_eq!(seen.header("x-other"), Some("kept"));
    for (k, _) in &seen.headers {
        assert!(
            !k.starts_with("x-appguard-"),
            "spoofed header {k} reached upstream"
        );
    }
}

#[test]
fn monitor_mode_passes_and_marks_the_would_be_denial() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(routes_config(), up.port).start();
    let r = envoy.request(Req::get("/trial").header("x-appguard-would-deny", "spoof"));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    let values: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "x-appguard-would-deny")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(values, vec!["route_denied"]);
}

#[test]
fn envoy_refuses_a_config_with_an_unknown_field_and_names_it() {
    let bad = json!({"routes": [{"name": "a", "match": {"prefx": "/"}}]});
    let err = match EnvoyBuilder::new(bad, 1).try_start() {
        Ok(_) => panic!("Envoy started with an invalid appguard configuration"),
        Err(log) => log,
    };
    assert!(
        err.contains("routes[0].match.prefx") && err.contains("unknown field `prefx`"),
        "Envoy log does not name the bad field:\n{err}"
    );
}

/// The `grpc-status` and `grpc-message` of a gRPC-Web answer: in its
/// headers when it has no body (trailers only), else in the trailer frame
/// that ends the body (base64 for `-text`), and never in both.
fn grpc_web_status(r: &harness::http::Resp) -> (String, String) {
    if r.body.is_empty() {
        let get = |n: &str| r.header(n).unwrap_or_default().to_owned();
        return (get("grpc-status"), get("grpc-message"));
    }
    assert_eq!(
        r.header("grpc-status"),
        None,
        "in the body and the headers: {r:?}"
    );
    let bytes = if r
        .header("content-type")
        .is_some_and(|c| c.contains("-text"))
    {
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &r.body).unwrap()
    } else {
        r.body.clone()
    };
    assert_eq!(bytes[0], 0x80, "a trailer frame: {r:?}");
    let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 5 + len, "one frame: {r:?}");
    let text = String::from_utf8(bytes[5..].to_vec()).unwrap();
    let get = |n: &str| {
        text.split("\r\n")
            .find_map(|l| l.strip_prefix(&format!("{n}:")))
            .unwrap_or_default()
            .to_owned()
    };
    (get("grpc-status"), get("grpc-message"))
}

/// A gRPC-Web request (a browser's) is refused with the same gRPC status
/// as a gRPC one, whichever side of appguard Envoy's `grpc_web` filter
/// sits: Envoy never takes it for gRPC, so appguard answers it as gRPC
/// itself (HTTP 200, `grpc-status` and `grpc-message`). Before, the
/// filter in front mapped the HTTP status (a rate limit `UNAVAILABLE`,
/// which clients retry at once; a bad body `INTERNAL`), and behind it the
/// browser got plain JSON without any `grpc-status`.
#[test]
fn a_grpc_web_request_is_refused_with_the_grpc_status_of_its_reason() {
    let up = Upstream::start();
    let grpc_web = json!({"name": "envoy.filters.http.grpc_web",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"}});
    for (order, builder) in [
        (
            "grpc_web before appguard",
            EnvoyBuilder::new(grpc_services(), up.port).filter_before(grpc_web.clone()),
        ),
        (
            "grpc_web after appguard",
            EnvoyBuilder::new(grpc_services(), up.port).filter_after(grpc_web.clone()),
        ),
        // An upstream that speaks gRPC-Web itself.
        (
            "no grpc_web filter",
            EnvoyBuilder::new(grpc_services(), up.port),
        ),
    ] {
        let envoy = builder.start();
        let call = |path: &str, content_type: &str, payload: &[u8]| {
            let frame = grpc_message(payload);
            let body = if content_type.contains("text") {
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, frame)
                    .into_bytes()
            } else {
                frame
            };
            envoy.request(
                Req::new("POST", path)
                    .header("content-type", content_type)
                    .header("x-grpc-web", "1")
                    .body(&body),
            )
        };
        let before = up.seen().len();
        for content_type in ["application/grpc-web+proto", "application/grpc-web-text"] {
            for (path, payload, reason, grpc_status) in [
                ("/admin.v1.Admin/Drop", &b""[..], "route_denied", "7"),
                ("/secure.v1.Secure/Get", b"", "token_missing", "16"),
                ("/sms.v1.Sms/Send", b"\x0a\x03abc", "body_invalid", "3"),
            ] {
                let r = call(path, content_type, payload);
                let what = format!("{order}, {content_type}, {reason}: {r:?}");
                assert_eq!(r.status, 200, "{what}");
                let message = format!("{{\"error\":\"{reason}\"}}");
                assert_eq!(
                    grpc_web_status(&r),
                    (grpc_status.to_owned(), message),
                    "{what}"
                );
                assert_eq!(r.reason(), Some(reason), "{what}");
                // (Without `grpc_web`, a body-phase refusal has none: see
                // README, gRPC-Web.)
                if !(order.starts_with("no ") && reason == "body_invalid") {
                    assert_eq!(
                        r.header("content-type")
                            .map(|c| c.starts_with("application/grpc-web")),
                        Some(true),
                        "{what}"
                    );
                }
            }
        }
        assert_eq!(up.seen().len(), before, "{order}: a refused call went up");
        // One call an hour: the second is RESOURCE_EXHAUSTED, with the
        // rate-limit headers beside it, not the UNAVAILABLE clients retry.
        let r = call("/quota.v1.Quota/Get", "application/grpc-web+proto", b"");
        assert_eq!(r.reason(), None, "{order}: {r:?}");
        assert_eq!(
            up.seen().len(),
            before + 1,
            "{order}: the first call goes up"
        );
        let r = call("/quota.v1.Quota/Get", "application/grpc-web+proto", b"");
        assert_eq!(
            (r.status, grpc_web_status(&r).0, r.reason()),
            (200, "8".to_owned(), Some("rate_limited")),
            "{order}: {r:?}"
        );
        assert!(r.header("retry-after").is_some(), "{order}: {r:?}");
    }
}
