//! The plugin configuration: JSON from `plugin_config.configuration`, parsed
//! with serde into raw structs (unknown fields refused) and then compiled into
//! a validated [`Config`] that the per-request path reads without parsing.
//!
//! Every error names the field it is about, as a path such as
//! `routes[2].match.prefix`, so that the line Envoy logs when it refuses the
//! configuration says exactly what to fix.

use serde::Deserialize;

/// A configuration error: the field path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the problem is, e.g. `routes[0].match.methods[1]`; empty for the
    /// document as a whole.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl ConfigError {
    /// An error about the field at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid configuration at `{}`: {}",
                self.path, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Whether denials are answered (`enforce`) or only recorded (`monitor`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Denials are answered locally with their status and reason.
    #[default]
    Enforce,
    /// Everything is evaluated and counted, the would-be denial is logged and
    /// sent upstream as `x-appguard-would-deny`, but nothing is blocked: the
    /// safe way to roll out a new policy.
    Monitor,
}

/// What happens to a request that no route matches, or on a route whose
/// `action` is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The request goes on to the remaining checks (or upstream).
    #[default]
    Allow,
    /// The request is refused with `route_denied`.
    Deny,
}

// ---------------------------------------------------------------------------
// Raw configuration, exactly as written by the operator.
// ---------------------------------------------------------------------------

/// The configuration document as written. Field documentation lives on the
/// compiled types and in the README's configuration reference.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    default_action: Action,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(rename = "match")]
    matcher: RawMatch,
    #[serde(default)]
    action: Action,
    #[serde(default)]
    mode: Option<Mode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
}

// ---------------------------------------------------------------------------
// Compiled configuration.
// ---------------------------------------------------------------------------

/// The validated configuration, built once in `on_configure` and shared by
/// every request of a worker.
#[derive(Debug)]
pub struct Config {
    /// Global mode; a route may override it.
    pub mode: Mode,
    /// What happens to requests that match no route.
    pub default_action: Action,
    /// Routes, tried in order; the first match names the policy.
    pub routes: Vec<Route>,
}

/// One route: which requests it matches and the policy that applies to them.
#[derive(Debug)]
pub struct Route {
    /// Operator-chosen name: used in metrics, logs and API-key restrictions.
    pub name: String,
    /// How the request path is matched.
    pub path: PathMatch,
    /// Allowed methods, upper case; empty means any.
    pub methods: Vec<String>,
    /// Allowed hosts (`:authority` without port), lower case; empty means any.
    pub hosts: Vec<HostPattern>,
    /// `deny` refuses every request on the route with `route_denied`.
    pub action: Action,
    /// The route's mode, or the global mode when not set.
    pub mode: Mode,
}

/// How a route matches the request path (query string excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The path equals this string exactly.
    Exact(String),
    /// The path starts with this string. Matching is by bytes, as Envoy's
    /// route `prefix` does: `/v1/sms` also matches `/v1/sms-bulk`, so end a
    /// prefix with `/` where that matters.
    Prefix(String),
}

/// A host name to match `:authority` against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// The host equals this name (lower case).
    Exact(String),
    /// `*.example.com`: the host ends in `.example.com` with at least one
    /// label before it. Stored as `.example.com`.
    Suffix(String),
}

impl Config {
    /// Parses and validates a configuration document (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigError::new(path, e.into_inner().to_string())
        })?;
        compile(raw)
    }
}

fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        if routes.iter().any(|x: &Route| x.name == r.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        routes.push(compile_route(&at, r, raw.mode)?);
    }
    Ok(Config {
        mode: raw.mode,
        default_action: raw.default_action,
        routes,
    })
}

fn compile_route(at: &str, r: RawRoute, global_mode: Mode) -> Result<Route, ConfigError> {
    if !valid_name(&r.name) {
        return Err(ConfigError::new(
            format!("{at}.name"),
            "must be 1-64 characters of [A-Za-z0-9_-] (it appears in metric names)",
        ));
    }
    let m = r.matcher;
    let path = match (m.prefix, m.path) {
        (Some(p), None) => PathMatch::Prefix(check_path(&format!("{at}.match.prefix"), p)?),
        (None, Some(p)) => PathMatch::Exact(check_path(&format!("{at}.match.path"), p)?),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{at}.match"),
                "set either `prefix` or `path`, not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(
                format!("{at}.match"),
                "one of `prefix` or `path` is required",
            ))
        }
    };
    let mut methods = Vec::with_capacity(m.methods.len());
    for (j, meth) in m.methods.iter().enumerate() {
        if meth.is_empty() || !meth.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ConfigError::new(
                format!("{at}.match.methods[{j}]"),
                format!("{meth:?} is not an HTTP method"),
            ));
        }
        methods.push(meth.to_ascii_uppercase());
    }
    let mut hosts = Vec::with_capacity(m.hosts.len());
    for (j, h) in m.hosts.iter().enumerate() {
        hosts.push(compile_host(&format!("{at}.match.hosts[{j}]"), h)?);
    }
    Ok(Route {
        name: r.name,
        path,
        methods,
        hosts,
        action: r.action,
        mode: r.mode.unwrap_or(global_mode),
    })
}

/// Names that go into metric names and logs: short and unambiguous.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_path(at: &str, p: String) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(ConfigError::new(at, format!("{p:?} must start with `/`")));
    }
    if p.contains('?') || p.contains('#') {
        return Err(ConfigError::new(
            at,
            "must not contain `?` or `#`: the query string is not part of the matched path",
        ));
    }
    Ok(p)
}

fn compile_host(at: &str, h: &str) -> Result<HostPattern, ConfigError> {
    let lower = h.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(ConfigError::new(
            at,
            format!("{h:?} is not a host name or `*.` pattern (no port, no scheme)"),
        ));
    }
    Ok(if suffix {
        HostPattern::Suffix(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn err(json: &str) -> ConfigError {
        match Config::from_json(json.as_bytes()) {
            Ok(_) => panic!("config accepted: {json}"),
            Err(e) => e,
        }
    }

    #[test]
    fn empty_object_is_a_valid_config() {
        let c = Config::from_json(b"{}").unwrap();
        assert_eq!(c.mode, Mode::Enforce);
        assert_eq!(c.default_action, Action::Allow);
        assert!(c.routes.is_empty());
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let e = err(r#"{"routes":[{"name":"a","match":{"prefx":"/"}}]}"#);
        assert_eq!(e.path, "routes[0].match.prefx");
        assert!(e.message.contains("unknown field `prefx`"), "{e}");
        let e = err(r#"{"mdoe":"monitor"}"#);
        assert_eq!(e.path, "mdoe");
    }

    #[test]
    fn wrong_types_and_values_name_the_field() {
        let e = err(r#"{"default_action":"maybe"}"#);
        assert_eq!(e.path, "default_action");
        let e = err(r#"{"routes":[{"name":"a","match":{"prefix":"v1"}}]}"#);
        assert_eq!(e.path, "routes[0].match.prefix");
        let e = err(r#"{"routes":[{"name":"a","match":{}}]}"#);
        assert_eq!(e.path, "routes[0].match");
        let e = err(r#"{"routes":[{"name":"a","match":{"prefix":"/","path":"/x"}}]}"#);
        assert_eq!(e.path, "routes[0].match");
        let e = err(r#"{"routes":[{"name":"a","match":{"prefix":"/","methods":["GET","P ST"]}}]}"#);
        assert_eq!(e.path, "routes[0].match.methods[1]");
        let e = err(r#"{"routes":[{"name":"a","match":{"prefix":"/","hosts":["https://x"]}}]}"#);
        assert_eq!(e.path, "routes[0].match.hosts[0]");
        let e = err(r#"{"routes":[{"name":"a b","match":{"prefix":"/"}}]}"#);
        assert_eq!(e.path, "routes[0].name");
        let e = err(
            r#"{"routes":[{"name":"a","match":{"prefix":"/"}},{"name":"a","match":{"prefix":"/"}}]}"#,
        );
        assert_eq!(e.path, "routes[1].name");
        let e = err("not json");
        assert_eq!(e.path, "");
        assert!(e.to_string().starts_with("invalid configuration"));
    }

    #[test]
    fn routes_compile() {
        let c = Config::from_json(
            br#"{"mode":"monitor","routes":[
                {"name":"sms","match":{"path":"/v1/sms","methods":["post"],"hosts":["API.example.com","*.example.org"]},"action":"deny","mode":"enforce"},
                {"name":"rest","match":{"prefix":"/"}}]}"#,
        )
        .unwrap();
        assert_eq!(c.routes[0].methods, vec!["POST"]);
        assert_eq!(
            c.routes[0].hosts,
            vec![
                HostPattern::Exact("api.example.com".into()),
                HostPattern::Suffix(".example.org".into())
            ]
        );
        assert_eq!(c.routes[0].mode, Mode::Enforce);
        assert_eq!(c.routes[1].mode, Mode::Monitor);
        assert_eq!(c.routes[0].action, Action::Deny);
    }
}
