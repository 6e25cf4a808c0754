//! `evaluate`: the checks of SPEC §1, in order, on a request value. Pure: no
//! host calls, the clock passed in.

use crate::config::{Action, Config, HostPattern, Mode, PathMatch, Route};
use crate::decision::{Decision, Denial, Grant, Reason};
use crate::request::Request;

/// What the core asks the adapter to do next.
#[derive(Debug)]
pub enum Step {
    /// The decision is final: carry it out.
    Done(Decision),
}

/// Finds the first route that matches the request, if any.
pub fn match_route<'c>(config: &'c Config, req: &Request<'_>) -> Option<(usize, &'c Route)> {
    let path = req.path();
    let method = req.method();
    let host = req.host();
    config
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| route_matches(r, path, method, host))
}

fn route_matches(r: &Route, path: &str, method: &str, host: &str) -> bool {
    let path_ok = match &r.path {
        PathMatch::Exact(p) => path == p,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
    };
    path_ok
        && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
        && (r.hosts.is_empty() || r.hosts.iter().any(|h| host_matches(h, host)))
}

fn host_matches(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
        HostPattern::Suffix(s) => {
            host.len() > s.len()
                && host.is_char_boundary(host.len() - s.len())
                && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
        }
    }
}

/// Evaluates the request headers. `now` is seconds since the Unix epoch, read
/// once per request by the adapter.
pub fn evaluate(config: &Config, req: &Request<'_>, _now: u64) -> Step {
    let (route, mode) = match match_route(config, req) {
        Some((_, r)) => (Some(r), r.mode),
        None => (None, config.mode),
    };
    let result = check(config, route);
    Step::Done(finish(mode, result))
}

fn check(config: &Config, route: Option<&Route>) -> Result<Grant, Denial> {
    let action = route.map_or(config.default_action, |r| r.action);
    if action == Action::Deny {
        return Err(Reason::RouteDenied.into());
    }
    Ok(Grant::default())
}

/// Applies the mode: in monitor mode a denial becomes an allow that carries
/// the would-be reason.
pub fn finish(mode: Mode, result: Result<Grant, Denial>) -> Decision {
    match (result, mode) {
        (Ok(g), _) => Decision::Allow(g),
        (Err(d), Mode::Enforce) => Decision::Deny(d),
        (Err(d), Mode::Monitor) => Decision::Allow(Grant {
            would_deny: Some(d.reason),
            ..Grant::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::test_support::headers;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cfg(json: &str) -> Config {
        Config::from_json(json.as_bytes()).unwrap()
    }

    fn decide(c: &Config, method: &str, path: &str, host: &str) -> Decision {
        let h = headers(&[(":method", method), (":path", path), (":authority", host)]);
        match evaluate(c, &Request::new(&h, None), 0) {
            Step::Done(d) => d,
        }
    }

    const ROUTES: &str = r#"{"default_action":"deny","routes":[
        {"name":"admin","match":{"prefix":"/admin/"},"action":"deny"},
        {"name":"sms","match":{"path":"/v1/sms","methods":["POST"],"hosts":["api.example.com","*.example.org"]}},
        {"name":"public","match":{"prefix":"/public"}}]}"#;

    #[test]
    fn routes_match_by_path_method_and_host() {
        let c = cfg(ROUTES);
        assert_eq!(
            decide(&c, "GET", "/admin/x", "a").reason(),
            Some(Reason::RouteDenied)
        );
        assert_eq!(
            decide(&c, "POST", "/v1/sms?to=1", "api.example.com:443").reason(),
            None
        );
        assert_eq!(
            decide(&c, "POST", "/v1/sms", "API.EXAMPLE.COM").reason(),
            None
        );
        assert_eq!(
            decide(&c, "POST", "/v1/sms", "eu.example.org").reason(),
            None
        );
        // wildcard needs at least one label; no suffix tricks
        assert_eq!(
            decide(&c, "POST", "/v1/sms", "example.org").reason(),
            Some(Reason::RouteDenied)
        );
        assert_eq!(
            decide(&c, "POST", "/v1/sms", "evilexample.org").reason(),
            Some(Reason::RouteDenied)
        );
        assert_eq!(
            decide(&c, "POST", "/v1/sms", "api.example.com.evil.io").reason(),
            Some(Reason::RouteDenied)
        );
        // exact path: no prefix match, method must match
        assert_eq!(
            decide(&c, "POST", "/v1/sms/x", "api.example.com").reason(),
            Some(Reason::RouteDenied)
        );
        assert_eq!(
            decide(&c, "GET", "/v1/sms", "api.example.com").reason(),
            Some(Reason::RouteDenied)
        );
        assert_eq!(decide(&c, "GET", "/public/a", "x").reason(), None);
        // unmatched follows default_action
        assert_eq!(
            decide(&c, "GET", "/other", "x").reason(),
            Some(Reason::RouteDenied)
        );
        assert_eq!(decide(&cfg("{}"), "GET", "/other", "x").reason(), None);
    }

    #[test]
    fn monitor_mode_allows_and_records_the_would_be_denial() {
        let c = cfg(
            r#"{"mode":"monitor","routes":[{"name":"a","match":{"prefix":"/"},"action":"deny"}]}"#,
        );
        match decide(&c, "GET", "/", "x") {
            Decision::Allow(g) => assert_eq!(g.would_deny, Some(Reason::RouteDenied)),
            d => panic!("{d:?}"),
        }
        let c = cfg(
            r#"{"mode":"monitor","routes":[{"name":"a","match":{"prefix":"/"},"action":"deny","mode":"enforce"}]}"#,
        );
        assert_eq!(
            decide(&c, "GET", "/", "x").reason(),
            Some(Reason::RouteDenied)
        );
    }
}
