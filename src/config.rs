//! The plugin configuration: JSON from the Wasm filter's
//! `config.configuration` (Istio: `pluginConfig`), parsed with serde into
//! raw structs (unknown fields refused) and then compiled into a validated
//! [`Config`] that the per-request path reads without parsing.
//!
//! Every error names the field it is about, as a path such as
//! `routes[2].match.prefix`, so that the line Envoy logs when it refuses the
//! configuration says exactly what to fix.

use serde::Deserialize;

use crate::identity::{self, ApiKeys, App, Platform};
use crate::limits::{self, RateLimit};
use crate::net::CidrSet;
use crate::phone::{PhoneRules, PrefixSet};
use crate::token::{self, Provider};

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
    /// One line, whatever the configuration holds: control characters in
    /// the path or message (an unknown field's name is quoted from the
    /// configuration) are written escaped, so that whoever can write a
    /// `WasmPlugin`'s `pluginConfig` cannot forge lines in Envoy's log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid configuration")?;
        if !self.path.is_empty() {
            write!(f, " at `{}`", Escaped(&self.path))?;
        }
        write!(f, ": {}", Escaped(&self.message))
    }
}

/// A text written with its control characters escaped (`\n`, `\u{1b}`):
/// one line in Envoy's log, whatever the configuration quoted into it.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
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
    /// Requests are evaluated up to the first check that would refuse; that
    /// would-be denial is counted, logged and sent upstream as
    /// `x-appguard-would-deny`, but nothing is blocked: the safe way to roll
    /// out a new policy. The checks after it are not run (a request
    /// without a token shows `token_missing`, not also a denied phone
    /// number), and the limits do not count it.
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

/// The configuration document as written by the operator (its top-level
/// keys); compiled into [`Config`]. The README's configuration reference
/// has the full rules for each field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// `enforce` (default) answers denials; `monitor` reports the first
    /// would-be denial and blocks nothing. See [`Config::mode`].
    #[serde(default)]
    mode: Mode,
    /// What happens to a request no route matches: `allow` (default, after
    /// the global network checks) or `deny` (`route_denied`). See
    /// [`Config::default_action`].
    #[serde(default)]
    default_action: Action,
    /// `client_ip`: how the client IP is read. Its one field becomes
    /// [`Config::xff_trusted_hops`] (left out: 0, Envoy's downstream
    /// address).
    #[serde(default, deserialize_with = "crate::config::present")]
    client_ip: Option<RawClientIp>,
    /// Global IP and country rules, checked for every request, routed or
    /// not. See [`Config::network`].
    #[serde(default, deserialize_with = "crate::config::present")]
    network: Option<RawNetwork>,
    /// Header names the apps prove their platform identity with (left out:
    /// the defaults). See [`Config::platform_headers`].
    #[serde(default, deserialize_with = "crate::config::present")]
    platform_headers: Option<RawPlatformHeaders>,
    /// `apps[]`: every genuine client build. See [`Config::apps`].
    #[serde(default)]
    apps: Vec<identity::RawApp>,
    /// API keys (by SHA-256) and their restrictions. See
    /// [`Config::api_keys`].
    #[serde(default, deserialize_with = "crate::config::present")]
    api_keys: Option<identity::RawApiKeys>,
    /// `tokens[]`: the attestation-token providers, which routes name in
    /// their own `tokens`. Compiled into [`Config::providers`] (the name
    /// differs).
    #[serde(default)]
    tokens: Vec<token::RawProvider>,
    /// The shared rate-limit service; needed by any rate limit without
    /// `local`, and by `replay.scope: service`. See
    /// [`Config::rate_limit_service`].
    #[serde(default, deserialize_with = "crate::config::present")]
    rate_limit_service: Option<RawRls>,
    /// Phone-number rules; needed by any `body` entry with `phone: true`.
    /// See [`Config::phone`].
    #[serde(default, deserialize_with = "crate::config::present")]
    phone: Option<RawPhone>,
    /// Largest body buffered on routes that read it (1..=1048576, default
    /// 16384); larger is `413 body_too_large`. See
    /// [`Config::max_body_bytes`].
    // `u64`, not `usize`: 32 bits in the module and 64 in the CLI, which
    // would word a refusal of 2^32 and more differently.
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    /// A webhook for denial spikes. See [`Config::alerts`].
    #[serde(default, deserialize_with = "crate::config::present")]
    alerts: Option<crate::alerts::RawAlerts>,
    /// Per-request decision log lines (deny, monitor) each worker writes
    /// per second (default 100; 0: none). See
    /// [`Config::decision_log_per_second`].
    #[serde(default = "default_decision_log_per_second")]
    decision_log_per_second: u32,
    /// `true`: a browser's CORS preflight passes once the action and network
    /// rules of the route it asks about allow it, without key, token,
    /// platform, body or rate-limit checks (default `false`). See
    /// [`Config::bypass_cors_preflight`].
    #[serde(default)]
    bypass_cors_preflight: bool,
    /// `{}` (or `{"allow_credentials": true}`): refusals of a request from
    /// a web app's origin carry CORS headers. See
    /// [`Config::cors_on_refusals`].
    #[serde(default, deserialize_with = "crate::config::present")]
    cors_on_refusals: Option<RawRefusalCors>,
    /// `true`: on a route that reads the body, the request headers are held
    /// until the body is decided (default `false`; needs the Wasm filter's
    /// `allow_on_headers_stop_iteration`). See
    /// [`Config::hold_headers_for_body`].
    #[serde(default)]
    hold_headers_for_body: bool,
    /// `routes[]`, tried in order; the first match names the policy. See
    /// [`Config::routes`].
    #[serde(default)]
    routes: Vec<RawRoute>,
}

/// Reads an optional setting: left out it is `None` (with
/// `#[serde(default)]`), but written as `null` it is refused like any other
/// wrong type. YAML reads an empty value (`issuer:`, a template's unset
/// variable) as `null`; taken for "not set", it would switch a check off
/// (the issuer, the binding, a route's network rules) without a word.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Reads a JSON object of the configuration's own (`required_claims`)
/// refusing a name written twice: serde_json keeps the last one without a
/// word, so `{"tier": "gold", "tier": "free"}` would require only `free`.
pub(crate) fn unique_members<'de, D>(
    d: D,
) -> Result<serde_json::Map<String, serde_json::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Members;
    impl<'de> serde::de::Visitor<'de> for Members {
        type Value = serde_json::Map<String, serde_json::Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some((k, v)) = a.next_entry::<String, serde_json::Value>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "{} is written twice",
                        shown(&k)
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Members)
}

/// Reads an allow-list whose absence means "no restriction". Written but
/// empty (`ip_allow: []`, often a template whose list came out empty), it
/// would read as "allow everything" where the operator most likely meant
/// "allow nothing": refused, so that the field is either left out or lists
/// what is allowed.
pub(crate) fn restriction<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    // Refused while the list is read, so that the error's position (and
    // so its path, see `json_path_at`) is the list's own.
    struct NonEmpty<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for NonEmpty<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<T>, A::Error> {
            let mut list = Vec::new();
            while let Some(item) = a.next_element()? {
                list.push(item);
            }
            if list.is_empty() {
                return Err(serde::de::Error::custom(
                    "an empty list here would mean \"no restriction\" (allow all): \
                     leave the field out for that, or list what is allowed",
                ));
            }
            Ok(list)
        }
    }
    d.deserialize_seq(NonEmpty(std::marker::PhantomData))
}

fn default_decision_log_per_second() -> u32 {
    100
}

fn default_max_body() -> u64 {
    16 * 1024
}

/// `rate_limit_service` as written in the configuration; compiled into
/// [`RateLimitService`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRls {
    /// Envoy cluster of the service (HTTP/2). See
    /// [`RateLimitService::cluster`].
    cluster: String,
    /// The `domain` of the service's own configuration. See
    /// [`RateLimitService::domain`].
    domain: String,
    /// Call timeout (1..=10000, default 200); then `failure_mode` decides.
    /// See [`RateLimitService::timeout_ms`].
    #[serde(default = "default_rls_timeout")]
    timeout_ms: u64,
    /// The routes' default for rate-limit failures (default `deny`); never
    /// for a remote JWKS. See [`RateLimitService::failure_mode`].
    #[serde(default)]
    failure_mode: FailureMode,
}

fn default_rls_timeout() -> u64 {
    200
}

/// `phone` as written in the configuration; compiled into [`PhoneConfig`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhone {
    /// Country calling code (`"44"`) put in front of national numbers; left
    /// out, every number must start with `+` or `00`. Goes into
    /// [`PhoneConfig::rules`] ([`PhoneRules::default_calling_code`]).
    #[serde(default, deserialize_with = "crate::config::present")]
    default_calling_code: Option<String>,
    /// Trunk prefix (at most 3 digits) stripped once from national numbers;
    /// left out, the calling code's usual one. Goes into
    /// [`PhoneConfig::rules`] ([`PhoneRules::national_prefix`]).
    #[serde(default, deserialize_with = "crate::config::present")]
    national_prefix: Option<String>,
    /// International prefixes (`+882`, `00883`, `+44 9`) refused with
    /// `phone_denied`; compiled into [`PhoneConfig::denied`] (the name
    /// differs).
    #[serde(default)]
    denied_prefixes: Vec<String>,
    /// Base64 of the HMAC-SHA256 key (at least 16 bytes, 32 recommended)
    /// that turns a number into its descriptor value; decoded into
    /// [`PhoneConfig::hash_key`]. The same on every instance, or shared
    /// limits split.
    hash_key_base64: String,
}

/// `client_ip` as written in the configuration; its one field becomes
/// [`Config::xff_trusted_hops`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    /// 0 (default): the client IP is Envoy's downstream address; N (at most
    /// 64): the N-th `X-Forwarded-For` entry from the right. See
    /// [`Config::xff_trusted_hops`].
    #[serde(default)]
    xff_trusted_hops: u32,
}

/// `network` (top level, and per route) as written in the configuration;
/// compiled into [`Network`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    /// CIDRs or addresses; when set, the client IP must be in one
    /// (`ip_denied`). Written empty it is refused. See [`Network::ip_allow`].
    #[serde(default, deserialize_with = "restriction")]
    ip_allow: Vec<String>,
    /// CIDRs or addresses the client IP must be in none of (checked
    /// first). See [`Network::ip_deny`].
    #[serde(default)]
    ip_deny: Vec<String>,
    /// Header holding the client's ISO 3166 alpha-2 country, set by a
    /// trusted filter; required with either country list and with
    /// `country_required`. See [`Network::country_header`].
    #[serde(default, deserialize_with = "crate::config::present")]
    country_header: Option<String>,
    /// When set, the country must be one of these (a request with no
    /// country is then denied). Written empty it is refused. See
    /// [`Network::country_allow`].
    #[serde(default, deserialize_with = "restriction")]
    country_allow: Vec<String>,
    /// Countries refused with `country_denied`; alone, it lets a request
    /// with no country through. See [`Network::country_deny`].
    #[serde(default)]
    country_deny: Vec<String>,
    /// See [`Network::country_required`].
    #[serde(default)]
    country_required: bool,
}

/// `platform_headers` as written in the configuration; compiled into
/// [`PlatformHeaderNames`], a name left out taking its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlatformHeaders {
    /// Header with the Android package name (default `x-android-package`).
    /// See [`PlatformHeaderNames::android_package`].
    #[serde(default, deserialize_with = "crate::config::present")]
    android_package: Option<String>,
    /// Header with the Android signing-cert digest (default
    /// `x-android-cert`). See [`PlatformHeaderNames::android_cert`].
    #[serde(default, deserialize_with = "crate::config::present")]
    android_cert: Option<String>,
    /// Header with the iOS bundle id (default `x-ios-bundle-identifier`).
    /// See [`PlatformHeaderNames::ios_bundle_id`].
    #[serde(default, deserialize_with = "crate::config::present")]
    ios_bundle_id: Option<String>,
    /// Header with the iOS team id (default `x-ios-team-id`). See
    /// [`PlatformHeaderNames::ios_team_id`].
    #[serde(default, deserialize_with = "crate::config::present")]
    ios_team_id: Option<String>,
}

/// One `routes[]` entry as written in the configuration; compiled into
/// [`Route`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    /// Unique name: in metrics, logs, key restrictions and the `route`
    /// descriptor entry. See [`Route::name`].
    name: String,
    /// `match`: which requests take the route. Split into [`Route::path`],
    /// [`Route::methods`] and [`Route::hosts`].
    #[serde(rename = "match")]
    matcher: RawMatch,
    /// `allow` (default), or `deny`, which refuses every request on the
    /// route (`route_denied`). See [`Route::action`].
    #[serde(default)]
    action: Action,
    /// `enforce` or `monitor` for this route; left out, the global `mode`.
    /// See [`Route::mode`].
    #[serde(default, deserialize_with = "crate::config::present")]
    mode: Option<Mode>,
    /// Platforms allowed on the route (`platform_denied` otherwise); left
    /// out, any; written empty, refused. See [`Route::platforms`].
    #[serde(default, deserialize_with = "restriction")]
    platforms: Vec<Platform>,
    /// Names of the `tokens[]` providers the route accepts, tried in order;
    /// written empty, refused. Compiled into [`Route::providers`] (indexes
    /// into [`Config::providers`]).
    #[serde(default, deserialize_with = "restriction")]
    tokens: Vec<String>,
    /// Whether a token is required (default `true` when `tokens` is set);
    /// `false` lets a request without any token go on. See
    /// [`Route::token_required`].
    #[serde(default, deserialize_with = "crate::config::present")]
    token_required: Option<bool>,
    /// `none` (default: keys not read), `optional` or `required`. See
    /// [`Route::api_key`].
    #[serde(default)]
    api_key: KeyRequirement,
    /// Route-specific IP and country rules, checked after the global ones.
    /// See [`Route::network`].
    #[serde(default, deserialize_with = "crate::config::present")]
    network: Option<RawNetwork>,
    /// `rate_limits[]`: the route's rate limits, in order (at most 32). See
    /// [`Route::rate_limits`].
    #[serde(default)]
    rate_limits: Vec<limits::RawRateLimit>,
    /// What a failing dependency does on this route: `deny` (503) or
    /// `allow`. Compiled into two fields: [`Route::failure_mode`] for
    /// rate-limit failures (left out: `rate_limit_service.failure_mode`,
    /// else `deny`) and [`Route::jwks_failure_mode`] for a remote JWKS
    /// without keys (left out: `deny`).
    #[serde(default, deserialize_with = "crate::config::present")]
    failure_mode: Option<FailureMode>,
    /// Largest body buffered on this route (1..=1048576); left out, the
    /// top-level `max_body_bytes`. See [`Route::max_body_bytes`].
    #[serde(default, deserialize_with = "crate::config::present")]
    max_body_bytes: Option<u64>,
}

/// What happens when a dependency fails: the shared rate-limit service does
/// not answer in time (or errors), or a remote JWKS has no keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse with 503 `ratelimit_unavailable` or `jwks_unavailable` (fail
    /// closed; the default for a security control).
    #[default]
    Deny,
    /// Let the request go on (without the rate-limit call, or with the token
    /// treated as absent), log it and count it as `degraded`.
    Allow,
}

/// Whether a route reads an API key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRequirement {
    /// Keys are not read on this route.
    #[default]
    None,
    /// A key is checked when sent; requests without one go on.
    Optional,
    /// A key is required (`api_key_missing` without one).
    Required,
}

/// A route's `match` as written in the configuration: `prefix` or `path`
/// (exactly one) becomes [`Route::path`], `methods` [`Route::methods`] and
/// `hosts` [`Route::hosts`]. All three select the route; none allows or
/// refuses anything by itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    /// Path prefix, query excluded, matched by bytes (end it with `/`);
    /// becomes [`PathMatch::Prefix`].
    #[serde(default, deserialize_with = "crate::config::present")]
    prefix: Option<String>,
    /// Exact path, query excluded (give or take one trailing slash);
    /// becomes [`PathMatch::Exact`].
    #[serde(default, deserialize_with = "crate::config::present")]
    path: Option<String>,
    /// Methods this route matches, any case (`GET` also takes `HEAD`); left
    /// out, any; written empty, refused. See [`Route::methods`].
    #[serde(default, deserialize_with = "restriction")]
    methods: Vec<String>,
    /// Hosts this route matches (names or `*.` patterns, compared with
    /// `:authority` without its port); left out, any; written empty,
    /// refused. See [`Route::hosts`].
    #[serde(default, deserialize_with = "restriction")]
    hosts: Vec<String>,
}

/// `cors_on_refusals` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRefusalCors {
    /// See [`RefusalCors::allow_credentials`].
    #[serde(default)]
    allow_credentials: bool,
}

// ---------------------------------------------------------------------------
// Compiled configuration.
// ---------------------------------------------------------------------------

/// CORS headers on refusals (see [`Config::cors_on_refusals`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalCors {
    /// `access-control-allow-credentials: true` on them too: needed when the
    /// web app calls with credentials (cookies, `fetch(…, {credentials:
    /// "include"})`), as the API's own CORS policy then says; a browser
    /// hides the answer to such a call without it. Default `false`.
    pub allow_credentials: bool,
}

/// The validated configuration, built once in `on_configure` and shared by
/// every request of a worker.
#[derive(Debug)]
pub struct Config {
    /// Global mode; a route may override it.
    pub mode: Mode,
    /// What happens to requests that match no route.
    pub default_action: Action,
    /// `client_ip.xff_trusted_hops`: 0 uses Envoy's downstream address
    /// (the connection's peer only when the connection manager has
    /// `use_remote_address: true`; otherwise Envoy takes it from the
    /// client's own X-Forwarded-For); N takes the N-th X-Forwarded-For
    /// entry from the right. With `use_remote_address: true` Envoy appends
    /// its peer too, so N is the trusted proxies in front of Envoy plus one.
    /// Count them here or in Envoy's `xff_num_trusted_hops`, never both.
    pub xff_trusted_hops: u32,
    /// Global network rules, checked for every request (routed or not).
    pub network: Network,
    /// Header names the platforms prove themselves with.
    pub platform_headers: PlatformHeaderNames,
    /// Every genuine client build.
    pub apps: Vec<App>,
    /// Whether any app is a `server` app, proven by the client IP: only then
    /// does establishing the app need the address (worked out once here,
    /// not per request).
    pub has_server_apps: bool,
    /// API keys by SHA-256, with their restrictions.
    pub api_keys: ApiKeys,
    /// Token providers.
    pub providers: Vec<Provider>,
    /// The shared rate-limit service (Envoy RLS v3), when configured.
    pub rate_limit_service: Option<RateLimitService>,
    /// Phone-number rules for body values marked `phone`.
    pub phone: Option<PhoneConfig>,
    /// Largest request body buffered (default 16 KiB); beyond it,
    /// `body_too_large` (413). Only routes that read the body (a `body`
    /// rate-limit entry, or a provider with `message_signing`, whose
    /// `Content-Digest` is checked) buffer it.
    pub max_body_bytes: usize,
    /// The denial-alert webhook, when configured.
    pub alerts: Option<crate::alerts::Alerts>,
    /// Most per-request decision log lines (deny, monitor) each worker
    /// writes per second (default 100; 0: none); degraded lines are
    /// warnings with a budget of their own (10 a second). A flood of bad
    /// requests must not become a flood of log lines; the stats counters
    /// stay complete, and the log says how many lines it left out.
    pub decision_log_per_second: u32,
    /// Whether a browser's CORS preflight
    /// ([`crate::policy::cors_preflight_method`]: `OPTIONS` with `Origin`
    /// and `Access-Control-Request-Method`, as Envoy's `jwt_authn` reads it
    /// for its own `bypass_cors_preflight`, and no body, credential or
    /// method override) passes once the action and the network rules of
    /// the route it asks about allow it, without API key, token, platform,
    /// body or rate-limit checks. A browser sends it before a cross-origin
    /// request that carries an API key or a token, and never with them: a
    /// route that requires them refuses every preflight, and so every
    /// cross-origin call of a web app, where no CORS filter before
    /// appguard answers it (Istio runs its CORS filter after every
    /// WasmPlugin). Off by default.
    pub bypass_cors_preflight: bool,
    /// CORS headers on refusals, when set: a refusal of a request whose one
    /// `Origin` is an origin a web app lists (`apps[].origins`) names it in
    /// `access-control-allow-origin` (with `vary: origin`) and exposes
    /// appguard's headers (`x-appguard-reason`, `retry-after`, the rate-limit
    /// headers, `grpc-status`), so that the web app can read why it was
    /// refused. Without them a browser reports the refusal as a network
    /// error, and the app cannot tell a rate limit (wait) from an expired
    /// token (fetch a new one). Needed where no CORS filter sees
    /// appguard's local replies: Istio runs its CORS filter after every
    /// WasmPlugin. Not for where Envoy's CORS filter runs before appguard:
    /// on the way out it sets the headers its policy has, for the origins
    /// it allows, over appguard's, but leaves those its policy lacks
    /// (`access-control-allow-credentials`) and those of origins it
    /// refuses, which would then say more than the policy.
    pub cors_on_refusals: Option<RefusalCors>,
    /// Whether, on a route that reads the body, the headers are held (not
    /// sent upstream) until the body is decided, as they are for every
    /// other check. Needs the Wasm filter's
    /// `allow_on_headers_stop_iteration: true` (Envoy 1.35 or later), with
    /// which Envoy hands the body to a filter whose headers are paused;
    /// without it such a request would wait for a body that never comes.
    /// Off by default: then the headers go on before the body is read, and
    /// an `envoy.filters.http.buffer` filter after appguard must hold them
    /// (Istio's `WasmPlugin` cannot set the flag).
    pub hold_headers_for_body: bool,
    /// Routes, tried in order; the first match names the policy.
    pub routes: Vec<Route>,
    /// Every header some provider's `claim_to_headers` sets from a verified
    /// claim. An upstream trusts these as verified, so a client's copy is
    /// removed from every request, on every route, before anything else
    /// (as the `x-appguard-*` identity headers are): it would otherwise
    /// reach the upstream whenever appguard sets nothing (no token on an
    /// optional-token route, a claim missing or too long, monitor mode).
    pub claim_headers: Vec<String>,
    /// Every header that carries a credential appguard checks in the
    /// headers: the API-key header, each token provider's header, each
    /// header a token is bound to, and, where a provider has
    /// `message_signing`, the signature headers, `content-digest`,
    /// `content-type` and the headers a signature must cover. A client's
    /// copy sent as a request trailer is removed (appguard checked only
    /// the headers' copy). Compiled once here so that a request with
    /// trailers compares each trailer name with one list.
    pub credential_headers: Vec<String>,
    /// Whether any provider has `message_signing`. Only then can a
    /// request's own `Signature-Input` name header fields whose trailer
    /// copies must go too, so only then is it read when trailers come.
    pub signs_requests: bool,
    /// Whether any route lists `match.methods`. Only then can a
    /// method-override header take a request to another route, so only
    /// then does route matching read those headers (a per-request cost
    /// the common method-less configuration does not pay).
    pub routes_by_method: bool,
    /// Whether any route lists `match.hosts`. Only then can a forwarded
    /// host (`X-Forwarded-Host`, `Forwarded: host=`), which some upstreams
    /// take for the request's host, take a request to another route.
    pub routes_by_host: bool,
}

/// The shared rate-limit service: one `ShouldRateLimit` call per request
/// with all of its service descriptors.
#[derive(Debug)]
pub struct RateLimitService {
    /// Envoy cluster of the service (HTTP/2).
    pub cluster: String,
    /// The RLS domain, as in the service's YAML.
    pub domain: String,
    /// Call timeout; then `failure_mode` decides.
    pub timeout_ms: u64,
    /// The routes' default for rate-limit failures only (never for a
    /// remote JWKS, see [`Route::jwks_failure_mode`]); a route's own
    /// `failure_mode` overrides it.
    pub failure_mode: FailureMode,
    /// The digest scope of replay descriptors (`replay.scope: service`),
    /// absorbed once here so that a request hashes only its `jti`.
    pub replay_scope: crate::limits::DigestScope,
}

/// Phone numbers read from bodies (SMS/OTP routes). Its `Debug` leaves
/// the hash key out, as token keys' does (`KeyMaterial(..)`).
pub struct PhoneConfig {
    /// How national numbers become E.164.
    pub rules: PhoneRules,
    /// E.164 prefixes refused with `phone_denied` (premium ranges, countries).
    pub denied: PrefixSet,
    /// Key of the HMAC-SHA256 that turns a number into its descriptor value;
    /// the number itself never leaves the filter.
    pub hash_key: Vec<u8>,
}

impl std::fmt::Debug for PhoneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneConfig")
            .field("rules", &self.rules)
            .field("denied", &self.denied)
            .field("hash_key", &format_args!(".."))
            .finish()
    }
}

/// Client IP and country rules (SPEC §1 step 2).
#[derive(Debug, Default)]
pub struct Network {
    /// When non-empty, the client IP must be in one of these ranges.
    pub ip_allow: CidrSet,
    /// The client IP must not be in any of these ranges (checked first).
    pub ip_deny: CidrSet,
    /// Header holding the client's ISO 3166 alpha-2 country, set by a
    /// trusted component (Envoy's geoip filter or a CDN) that overwrites any
    /// client copy before appguard runs.
    pub country_header: Option<String>,
    /// When non-empty, the country must be one of these (upper case).
    pub country_allow: Vec<String>,
    /// The country must not be one of these (upper case).
    pub country_deny: Vec<String>,
    /// Refuse a request with no country (the header absent or empty).
    /// Envoy's geoip filter writes the header only when its lookup
    /// succeeds, so with a deny list alone an unknown country passes
    /// (lookup misses, anonymous proxies, new ranges). An allow list
    /// implies it.
    pub country_required: bool,
}

/// Names of the headers apps prove their platform identity with (lower case).
#[derive(Debug)]
pub struct PlatformHeaderNames {
    /// Android package name (default `x-android-package`, as Google APIs use).
    pub android_package: String,
    /// Android signing-cert fingerprint (default `x-android-cert`).
    pub android_cert: String,
    /// iOS bundle id (default `x-ios-bundle-identifier`).
    pub ios_bundle_id: String,
    /// iOS team id (default `x-ios-team-id`).
    pub ios_team_id: String,
}

/// One route: which requests it matches and the policy that applies to them.
#[derive(Debug)]
pub struct Route {
    /// Operator-chosen name: used in metrics, logs and API-key restrictions.
    pub name: String,
    /// How the request path is matched.
    pub path: PathMatch,
    /// Methods this route matches, upper case; empty means any. They
    /// select the route, they allow nothing: a request with another
    /// method takes another route or `default_action`.
    pub methods: Vec<String>,
    /// Hosts this route matches (`:authority` without port), lower case;
    /// empty means any. They select the route, they allow nothing: a
    /// request for another host takes another route or `default_action`.
    pub hosts: Vec<HostPattern>,
    /// `deny` refuses every request on the route with `route_denied`.
    pub action: Action,
    /// The route's mode, or the global mode when not set.
    pub mode: Mode,
    /// Platforms allowed on the route; empty = any (including none shown).
    pub platforms: Vec<Platform>,
    /// Indexes into `Config::providers` whose tokens the route accepts.
    pub providers: Vec<usize>,
    /// Whether a token is required (default: true when `tokens` is set).
    pub token_required: bool,
    /// Whether an API key is read, and required.
    pub api_key: KeyRequirement,
    /// Route-specific network rules, checked after the global ones.
    pub network: Option<Network>,
    /// The route's rate limits, in order.
    pub rate_limits: Vec<RateLimit>,
    /// What a rate-limit failure does on this route (the rate-limit
    /// service failing to answer usably, or shared data refusing a local
    /// limit's count: `ratelimit_unavailable`): the route's
    /// `failure_mode`, else `rate_limit_service.failure_mode`, else `deny`.
    /// A remote JWKS without keys uses [`Route::jwks_failure_mode`]
    /// instead.
    pub failure_mode: FailureMode,
    /// What a remote JWKS without keys does on this route: only the route's
    /// own `failure_mode`, else `deny`. Never inherited from
    /// `rate_limit_service.failure_mode`: letting requests through when the
    /// limiter is down is common; letting tokens go unchecked because of it
    /// would be a surprise.
    pub jwks_failure_mode: FailureMode,
    /// Largest body buffered on this route.
    pub max_body_bytes: usize,
}

impl Route {
    /// Whether a rate limit of this route reads the body.
    pub fn limits_need_body(&self) -> bool {
        self.rate_limits.iter().any(RateLimit::needs_body)
    }
}

/// How a route matches the request path (query string excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The path equals this string, give or take one trailing slash
    /// (`/v1/sms` matches `/v1/sms/`, and `/v1/sms/` matches `/v1/sms`):
    /// most upstreams serve both with one handler, so both must take the
    /// same route rather than one of them a weaker one.
    Exact(String),
    /// The path starts with this string. Matching is by bytes, as Envoy's
    /// route `prefix` does: `/v1/sms` also matches `/v1/sms-bulk`, so end a
    /// prefix with `/` where that matters. A prefix ending in `/` also
    /// matches the path without it (`/v1/admin/` matches `/v1/admin`), the
    /// collection itself, which upstreams serve from the same controller.
    Prefix(String),
}

impl PathMatch {
    /// Whether `path` (the request path as routes read it) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => {
                path == p
                    || path.strip_suffix('/') == Some(p.as_str())
                    || p.strip_suffix('/')
                        .is_some_and(|q| q == path && !q.is_empty())
            }
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    || p.strip_suffix('/')
                        .is_some_and(|q| q == path && !q.is_empty())
            }
        }
    }

    /// Whether every path `later` matches, this one matches too.
    fn covers(&self, later: &PathMatch) -> bool {
        match later {
            // Exact paths match a handful of spellings: check each.
            PathMatch::Exact(b) => {
                let other = match b.strip_suffix('/').filter(|q| !q.is_empty()) {
                    Some(q) => q.to_owned(),
                    None => format!("{b}/"),
                };
                self.matches(b) && self.matches(&other)
            }
            // A prefix matches endless paths: only a shorter prefix covers
            // them (its slash-less spelling then starts with it too).
            PathMatch::Prefix(b) => {
                matches!(self, PathMatch::Prefix(a) if b.starts_with(a.as_str()))
            }
        }
    }
}

/// The methods of RFC 9110, `PATCH` (RFC 5789) and WebDAV's (RFC 4918,
/// `SEARCH` of RFC 5323), upper case: a route listing another gets advice,
/// since a typo (`PSOT`) is likelier than an extension method.
const REGISTERED_METHODS: [&str; 17] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "SEARCH",
];

/// Whether a route listing `methods` (upper case; empty: any) matches
/// `method`. Methods compare without case (an upstream's router may read
/// `get` as `GET`, and Envoy passes it on), and `HEAD` takes a `GET` route:
/// upstreams run the GET handler for it, side effects included.
pub fn method_matches(methods: &[String], method: &str) -> bool {
    methods.is_empty()
        || methods.iter().any(|m| {
            m.eq_ignore_ascii_case(method) || (m == "GET" && method.eq_ignore_ascii_case("HEAD"))
        })
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

/// The `:authority` of a call to `cluster` when the configuration gives
/// none: the cluster name, except for an Istio outbound cluster
/// (`outbound|443||hooks.example.com`), whose service host is the name the
/// far end answers to (the cluster name is no valid `Host`).
pub fn default_authority(cluster: &str) -> String {
    let mut parts = cluster.split('|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound" | "inbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => {
            host.to_owned()
        }
        _ => cluster.to_owned(),
    }
}

/// Checks a `cluster` field (`field` is its path): the name of an Envoy
/// cluster, not empty, without blanks or control characters, and not a
/// URL. A webhook URL pasted there (a common slip) never reaches its
/// host, and is often a credential (Slack's, Teams'): it is not shown in
/// the error either.
pub(crate) fn check_cluster(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(field, "required"));
    }
    if name.contains("://") {
        return Err(ConfigError::new(
            field,
            "must name an Envoy cluster, not a URL (not shown here: a webhook URL is often \
             a credential): define a cluster for the URL's host in Envoy, name it here, and \
             put the URL's path in `path` where the section has one",
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            field,
            "must name an Envoy cluster: no spaces or control characters",
        ));
    }
    Ok(())
}

/// Checks an `authority` and `path` written for an HTTP call Envoy makes
/// for appguard (a JWKS fetch, an alert POST): `host[:port]` with no scheme
/// (`https://` there is a common slip: every call would then fail, and
/// every token route answer 503), and a path of visible ASCII without a
/// fragment. `at` is the section (`tokens[0].remote_jwks`, `alerts`).
pub(crate) fn check_call_target(
    at: &str,
    authority: Option<&str>,
    path: &str,
) -> Result<(), ConfigError> {
    if let Some(a) = authority {
        // `host`, `host:port`, `[v6]` or `[v6]:port`.
        let (host, port, v6) = match a.strip_prefix('[').and_then(|v| v.split_once(']')) {
            Some((host, port)) => (host, port, true),
            None => {
                let cut = a.find(':').unwrap_or(a.len());
                (
                    a.get(..cut).unwrap_or(""),
                    a.get(cut..).unwrap_or(""),
                    false,
                )
            }
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') || (v6 && b == b':')
            });
        let port_ok = port.is_empty()
            || port
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| p > 0);
        if !(host_ok && port_ok) {
            return Err(ConfigError::new(
                format!("{at}.authority"),
                "a host name with an optional port (`keys.example.com`, `10.0.0.7:8080`), \
                 without a scheme or a path",
            ));
        }
    }
    let ok = path.starts_with('/')
        && path.len() <= 2048
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
    if !ok {
        return Err(ConfigError::new(
            format!("{at}.path"),
            "must start with `/` and be visible ASCII without `#` (percent-encode the rest)",
        ));
    }
    Ok(())
}

/// Whether `bytes` parse as a protobuf message. Envoy's Wasm host reads the
/// service argument of a gRPC call as a serialized `GrpcService` when it
/// parses as one, and as a cluster name only otherwise: a cluster name
/// that parses (`h2`, say) names no cluster, Envoy answers `BadArgument`,
/// and the proxy-wasm SDK aborts the VM on that answer. Conservative: a
/// group (wire types 3 and 4) counts as parsing.
fn reads_as_protobuf(bytes: &[u8]) -> bool {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut i = 0;
    while i < bytes.len() {
        let Some(tag) = varint(bytes, &mut i) else {
            return false;
        };
        if tag >> 3 == 0 {
            return false;
        }
        let skip = match tag & 7 {
            0 => varint(bytes, &mut i).map(|_| 0),
            1 => Some(8),
            2 => varint(bytes, &mut i).and_then(|n| usize::try_from(n).ok()),
            3 | 4 => return true,
            5 => Some(4),
            _ => None,
        };
        match skip.and_then(|n| i.checked_add(n)) {
            Some(end) if end <= bytes.len() => i = end,
            _ => return false,
        }
    }
    true
}

/// The route label of a request that matched no route, in the
/// `appguard_decisions` metric, denial alerts and decision log lines alike.
/// Reserved: no configured route may take the name.
pub const UNMATCHED_ROUTE: &str = "_unmatched";

impl Config {
    /// The name of route `route` (an index into `routes`), or
    /// [`UNMATCHED_ROUTE`] when the request matched none: the one label
    /// metrics, alerts and log lines give it.
    pub fn route_label(&self, route: Option<usize>) -> &str {
        route
            .and_then(|r| self.routes.get(r))
            .map_or(UNMATCHED_ROUTE, |r| r.name.as_str())
    }

    /// Advice on a valid configuration that probably does not do what its
    /// author meant: logged as warnings when the filter is configured, and
    /// printed by `appguard-cli check-config`. Not refusals: each case can
    /// be right for someone.
    pub fn advisories(&self) -> Vec<String> {
        let mut out = self.advice();
        // Names and values quoted from the configuration are written with
        // their control characters escaped, as in [`ConfigError`]: Envoy
        // logs each line, and a `\n` would start one of the writer's own.
        for line in &mut out {
            if line.contains(char::is_control) {
                *line = Escaped(line).to_string();
            }
        }
        out
    }

    /// [`Config::advisories`] as written, before escaping.
    fn advice(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.routes.is_empty() && self.default_action == Action::Allow {
            out.push(
                "no routes, and default_action allow: every request passes with no key, \
                 token or limit checked (a template that rendered empty?); add routes, or \
                 set default_action deny"
                    .to_owned(),
            );
        }
        // Codes ISO 3166 reserves and geolocation never sends: the list
        // entry matches nothing.
        let networks = std::iter::once(("network".to_owned(), &self.network)).chain(
            self.routes
                .iter()
                .enumerate()
                .filter_map(|(i, r)| Some((format!("routes[{i}].network"), r.network.as_ref()?))),
        );
        for (at, n) in networks {
            for (field, list) in [
                ("country_allow", &n.country_allow),
                ("country_deny", &n.country_deny),
            ] {
                for (code, meant) in [("UK", "GB"), ("EL", "GR")] {
                    if list.iter().any(|c| c == code) {
                        out.push(format!(
                            "{at}.{field}: {code} is a code ISO 3166 reserves, and geolocation \
                             headers never carry it: that country is {meant}"
                        ));
                    }
                }
            }
        }
        for (i, p) in self.providers.iter().enumerate() {
            let at = format!("tokens[{i}] ({})", p.name);
            if p.remote_jwks.is_some()
                && p.audiences.is_empty()
                && p.required_claims.is_empty()
                && p.app_claim.is_none()
            {
                if p.issuer.is_none() {
                    out.push(format!(
                        "{at}: a remote JWKS without `issuer`, `audiences`, `required_claims` or \
                         `app_claim` accepts any token its keys sign, other tenants' too where \
                         the JWKS is shared (Firebase App Check): set `issuer` and `audiences`"
                    ));
                } else {
                    // An issuer names a tenant only where the issuer
                    // gives each its own (Firebase App Check's project
                    // number); Google and Apple sign every client's
                    // tokens under one `iss`, and `aud` names the client.
                    out.push(format!(
                        "{at}: a remote JWKS scoped by `issuer` alone accepts every token that \
                         issuer signs, for any client, where it signs many under one `iss` \
                         (Google's `https://accounts.google.com`, Apple's \
                         `https://appleid.apple.com`: anyone can get one for an app of their \
                         own): set `audiences` (or `app_claim`)"
                    ));
                }
            }
            if let Some(b) = p.binding.as_ref().filter(|b| b.headers.len() > 1) {
                out.push(format!(
                    "{at}.binding: {} headers are hashed without a separator (`ab` + `c` is \
                     `a` + `bc`): bind one header, or values of a fixed length",
                    b.headers.len()
                ));
            }
            if !self.routes.iter().any(|r| r.providers.contains(&i)) {
                out.push(format!(
                    "{at}: no route lists this provider in `tokens`: its tokens are never checked"
                ));
            }
            // A Firebase app id names its platform: one listed for an
            // app of another platform refuses every token that names it
            // (`app_mismatch`). (Entries of another shape may be another
            // provider's names for the app.)
            if p.app_claim
                .as_ref()
                .is_some_and(|a| a.format == crate::token::AppClaimFormat::Firebase)
            {
                for (ai, app) in self.apps.iter().enumerate() {
                    for (j, v) in app.token_app_ids.iter().enumerate() {
                        let platform = v.split(':').nth(2);
                        if v.split(':').count() == 4 && platform != Some(app.platform.as_str()) {
                            out.push(format!(
                                "apps[{ai}] ({}).token_app_ids[{j}]: {} is a Firebase app id \
                                 of another platform than {}, and {at} reads the platform from \
                                 the app id: a token that names it is refused as app_mismatch",
                                app.id,
                                shown(v),
                                app.platform.as_str()
                            ));
                        }
                    }
                }
            }
            if !p.platforms.is_empty() && p.app_claim.is_none() {
                out.push(format!(
                    "{at}.platforms: without `app_claim` the platform is the one the client's \
                     headers show: set `app_claim`"
                ));
            }
            let b = p.failure_budget;
            if b.failures > 0 && b.v6_prefix > 64 {
                out.push(format!(
                    "{at}.failure_budget.v6_prefix: {} counts parts of a /64, and one client \
                     holds a whole /64 (what a home or a phone is given): each of its \
                     addresses gets a budget of its own; use 64 or less",
                    b.v6_prefix
                ));
            }
            if let Some((filter, _)) = &p.verified_by {
                if filter != "envoy.filters.http.jwt_authn" {
                    out.push(format!(
                        "{at}.verified_by.filter: {filter:?} is not jwt_authn's namespace; the \
                         payload there is trusted as verified"
                    ));
                }
            }
            if let Some(m) = p.message_signing.as_ref().filter(|m| m.single_use) {
                let held = m
                    .policy
                    .max_age_seconds
                    .saturating_add(m.policy.clock_skew_seconds.saturating_mul(2));
                // 2^20 entries in buckets of 16: past about 4 per bucket
                // on average, full buckets start refusing genuine requests.
                let rate = (4u64 << 16) / held.max(1);
                if rate < 100 {
                    out.push(format!(
                        "{at}.message_signing.single_use: requests are held {held} s in \
                         1,048,576 entries: above about {rate} signed requests a second per \
                         instance, genuine ones get `token_replayed`"
                    ));
                }
            }
        }
        // Replay tables are per provider: two providers that take the same
        // tokens (one issuer, or one remote JWKS without issuers) accept
        // each once per provider.
        let signer = |p: &crate::token::Provider| match (&p.issuer, &p.remote_jwks) {
            (Some(iss), _) => Some(format!("issuer \"{iss}\"")),
            (None, Some(r)) => Some(format!("JWKS {}{}", r.cluster, r.path)),
            (None, None) => None,
        };
        for (i, a) in self.providers.iter().enumerate() {
            for (j, b) in self.providers.iter().enumerate().skip(i + 1) {
                let disjoint_audiences = !a.audiences.is_empty()
                    && !b.audiences.is_empty()
                    && !a.audiences.iter().any(|x| b.audiences.contains(x));
                // A claim both require, with other values: no token is both's.
                let disjoint_claims = a
                    .required_claims
                    .iter()
                    .any(|(n, v)| b.required_claims.iter().any(|(m, w)| m == n && w != v));
                if a.replay.is_none() || b.replay.is_none() || disjoint_audiences || disjoint_claims
                {
                    continue;
                }
                let same_signer = match (signer(a), signer(b)) {
                    (Some(sa), Some(sb)) if sa == sb => Some(sa),
                    _ => None,
                };
                // One key (configured in both, or one JWKS), and issuers
                // that do not tell the tokens apart: one names none, and
                // takes the other's tokens too (Approov's tokens carry no
                // `iss` at all).
                let issuers_overlap =
                    a.issuer.is_none() || b.issuer.is_none() || a.issuer == b.issuer;
                let same_jwks = match (&a.remote_jwks, &b.remote_jwks) {
                    (Some(x), Some(y)) => x.cluster == y.cluster && x.path == y.path,
                    _ => false,
                };
                let same_key = same_jwks
                    || a.key_fingerprints
                        .iter()
                        .any(|f| b.key_fingerprints.contains(f));
                let what = match same_signer {
                    Some(s) => Some(format!("the same {s}")),
                    None if same_key && issuers_overlap => Some("a key in common".to_owned()),
                    None => None,
                };
                if let Some(what) = what {
                    out.push(format!(
                        "tokens[{i}] ({}) and tokens[{j}] ({}): {what}, and each keeps its \
                         own replay table: a token both accept can be used once with each; \
                         use one provider, or `audiences` or `required_claims` that tell \
                         their tokens apart",
                        a.name, b.name
                    ));
                }
            }
        }
        // A rule whose entry the client can leave without a value is
        // skipped for the requests that do (as Envoy's actions skip a
        // descriptor), so it binds only the clients that show one: said
        // where no other rule of the route binds every request.
        for r in &self.routes {
            use crate::limits::Source;
            for m in r
                .methods
                .iter()
                .filter(|m| !REGISTERED_METHODS.contains(&m.as_str()))
            {
                out.push(format!(
                    "routes ({}).match.methods: {m:?} is not a registered HTTP method; if it \
                     is a typo, the route never takes the method meant, and those requests \
                     fall through to a later route or `default_action`",
                    r.name
                ));
            }
            // HEAD without GET, where another route takes GET on every
            // path and host this one matches: upstreams run the GET
            // handler for HEAD, so such a HEAD is refused (`route_denied`,
            // see `policy::route_of`): the route lets no HEAD through.
            let head_only = method_matches(&r.methods, "HEAD")
                && !r.methods.is_empty()
                && !r.methods.iter().any(|m| m == "GET");
            if head_only {
                let takes_get = |b: &&Route| {
                    !std::ptr::eq(*b, r)
                        && method_matches(&b.methods, "GET")
                        && b.path.covers(&r.path)
                        && (b.hosts.is_empty()
                            || (!r.hosts.is_empty()
                                && r.hosts
                                    .iter()
                                    .all(|h| b.hosts.iter().any(|e| host_covers(e, h)))))
                };
                if let Some(b) = self.routes.iter().find(takes_get) {
                    out.push(format!(
                        "routes ({}).match.methods: HEAD without GET, and route {} takes GET \
                         on every path this one matches: upstreams run the GET handler for \
                         HEAD, so every HEAD request here is refused (route_denied); list \
                         GET on this route too, or narrow route {}",
                        r.name, b.name, b.name
                    ));
                }
            }
            // Settings that refuse every request of the route.
            if r.action == Action::Allow {
                if r.api_key == KeyRequirement::Required
                    && !self
                        .api_keys
                        .keys
                        .iter()
                        .any(|k| !k.disabled && (k.routes.is_empty() || k.routes.contains(&r.name)))
                {
                    out.push(format!(
                        "routes ({}).api_key: required, and no enabled key may be used on this \
                         route: every request is refused",
                        r.name
                    ));
                }
                for p in r
                    .platforms
                    .iter()
                    .filter(|&&p| !self.apps.iter().any(|a| a.platform == p))
                {
                    out.push(format!(
                        "routes ({}).platforms: no app of platform `{}`: its requests are refused",
                        r.name,
                        p.as_str()
                    ));
                }
            }
            let binds_all = r.rate_limits.iter().any(|rl| {
                rl.entries.iter().all(|e| {
                    matches!(
                        e.source,
                        Source::ClientIp { .. }
                            | Source::Route
                            | Source::Value(_)
                            | Source::Body { .. }
                    )
                })
            });
            // A required token whose every provider names the app
            // establishes one (or the request is refused).
            let app_always = r.token_required
                && !r.providers.is_empty()
                && r.providers
                    .iter()
                    .all(|&p| self.providers.get(p).is_some_and(|p| p.app_claim.is_some()));
            for rl in &r.rate_limits {
                let forwarded = rl.entries.iter().find_map(|e| match &e.source {
                    Source::Header(h)
                        if crate::request::is_header_of(
                            h,
                            &["x-forwarded-for", "forwarded", "x-real-ip"],
                        ) =>
                    {
                        Some(h)
                    }
                    _ => None,
                });
                let wide_v6 = rl.entries.iter().find_map(|e| match e.source {
                    Source::ClientIp { v6_prefix, .. } if v6_prefix > 64 => Some(v6_prefix),
                    _ => None,
                });
                if let Some(v6) = wide_v6 {
                    out.push(format!(
                        "routes ({}).rate_limits ({}): a `client_ip` entry with v6_prefix {v6} \
                         counts parts of a /64, and one client holds a whole /64: each of its \
                         addresses gets a limit of its own; use 64 or less",
                        r.name, rl.name
                    ));
                }
                // OpenID Connect's standard claims for personal data
                // (OIDC Core §5.1): their values would go to the service,
                // its Redis keys and logs, as they are. A `local` rule's
                // values are digested in the worker and go nowhere.
                let sent = rl.local.is_none();
                let personal = rl
                    .entries
                    .iter()
                    .filter(|_| sent)
                    .find_map(|e| match &e.source {
                        Source::Claim(c)
                            if ["phone_number", "email", "name", "address", "birthdate"]
                                .contains(&c.as_str()) =>
                        {
                            Some(c)
                        }
                        _ => None,
                    });
                // The same data read from the body without `phone: true`:
                // by the name of the pointer's last member.
                let personal_body =
                    rl.entries
                        .iter()
                        .filter(|_| sent)
                        .find_map(|e| match &e.source {
                            Source::Body {
                                pointer,
                                phone: false,
                                ..
                            } => names_personal_data(pointer.rsplit('/').next().unwrap_or(""))
                                .then_some(pointer),
                            _ => None,
                        });
                if let Some(p) = personal_body {
                    out.push(format!(
                        "routes ({}).rate_limits ({}): a `body` entry on {p:?} sends that \
                         personal data in clear to the rate-limit service (its keys and \
                         logs): for a phone number set `phone: true` (hashed), otherwise key \
                         the limit by an opaque id, or make the rule `local`",
                        r.name, rl.name
                    ));
                }
                if let Some(c) = personal {
                    out.push(format!(
                        "routes ({}).rate_limits ({}): a `claim` entry on {c:?} sends that \
                         personal data in clear to the rate-limit service (its keys and \
                         logs): key the limit by an opaque id such as `sub` (for a phone \
                         number in the body, a `body` entry with `phone: true`, hashed)",
                        r.name, rl.name
                    ));
                }
                if let Some(h) = forwarded {
                    out.push(format!(
                        "routes ({}).rate_limits ({}): a `header` entry on {h:?} counts what the \
                         client writes there too (a new value each request escapes it): use a \
                         `client_ip` entry",
                        r.name, rl.name
                    ));
                }
                let skippable =
                    rl.entries
                        .iter()
                        .filter(|_| !binds_all)
                        .find_map(|e| match e.source {
                            Source::App | Source::Platform
                                if r.platforms.is_empty() && !app_always =>
                            {
                                Some("the app or platform of a route without `platforms`")
                            }
                            Source::ApiKey if r.api_key == KeyRequirement::Optional => {
                                Some("the API key of a route where it is optional")
                            }
                            Source::Claim(_) if !r.token_required => {
                                Some("a token, on a route where it is optional,")
                            }
                            _ => None,
                        });
                if let Some(what) = skippable {
                    out.push(format!(
                        "routes ({}).rate_limits ({}): a request without {what} skips this \
                         rule: require it, or add a rule such requests cannot skip (`client_ip`)",
                        r.name, rl.name
                    ));
                }
            }
        }
        let reads_phones = self.routes.iter().any(|r| {
            r.rate_limits
                .iter()
                .any(crate::limits::RateLimit::reads_phone)
        });
        if self.phone.as_ref().is_some_and(|p| !p.denied.is_empty()) && !reads_phones {
            out.push("phone.denied_prefixes: no route reads a phone number".to_owned());
        }
        if self
            .phone
            .as_ref()
            .is_some_and(|p| !looks_random(&p.hash_key))
        {
            out.push(
                "phone.hash_key_base64: the key is text, or a few bytes repeated, not random \
                 bytes: whoever guesses it turns the hashed numbers in the rate-limit \
                 service's keys back into phone numbers (every number of a country is tried \
                 in seconds); make one with `head -c32 /dev/urandom | base64`"
                    .to_owned(),
            );
        }
        for (i, p) in self.providers.iter().enumerate() {
            for at in &p.text_secrets {
                out.push(format!(
                    "tokens[{i}].{at}: the secret is text, or a few bytes \
                     repeated, not random bytes: one captured token lets anyone test guesses \
                     offline and, once one is right, sign tokens of their own; make one with \
                     `head -c32 /dev/urandom | base64`"
                ));
            }
        }
        let uses_service = self
            .routes
            .iter()
            .any(|r| r.rate_limits.iter().any(|rl| rl.local.is_none()))
            || self.providers.iter().any(|p| {
                p.replay
                    .as_ref()
                    .is_some_and(|r| r.scope == crate::token::ReplayScope::Service)
            });
        if self.rate_limit_service.is_some() && !uses_service {
            out.push(
                "rate_limit_service: no rate limit calls it (every rule has `local`) and no \
                 replay check has `scope: service`"
                    .to_owned(),
            );
        }
        if !self.api_keys.keys.is_empty()
            && self
                .routes
                .iter()
                .all(|r| r.api_key == KeyRequirement::None)
        {
            out.push("api_keys.keys: every route has `api_key: none`".to_owned());
        }
        if self.bypass_cors_preflight
            && !self
                .apps
                .iter()
                .any(|a| a.platform == crate::identity::Platform::Web)
        {
            out.push(
                "bypass_cors_preflight: no app has `platform: web`, and only browsers send \
                 preflights: the bypass lets OPTIONS requests through to the upstream of \
                 every route whose action and network rules allow them, without key, \
                 token or limit; remove it unless a web app calls from another origin"
                    .to_owned(),
            );
        }
        out
    }

    /// Parses and validates a configuration document (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        // Straight from the bytes, so that every error keeps its line and
        // column as well as its field path.
        // serde reads a struct from an array too (`[]` would be an empty,
        // allow-everything configuration): the document must be an object.
        if bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b != b'{')
        {
            return Err(ConfigError::new(
                "",
                "the configuration must be a JSON object ({...})",
            ));
        }
        compile(raw_from_json(bytes)?)
    }
}

/// The configuration document read into its raw form, without the checks
/// of [`compile`]: errors of JSON syntax, unknown fields and values of the
/// wrong type, with their field paths.
fn raw_from_json(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let raw = RawConfig::deserialize(&mut *de).map_err(|inner| {
        let path = json_path_at(bytes, &inner);
        let message = wrong_kind_of_value(bytes, &inner)
            .unwrap_or_else(|| without_type_names(&without_string_values(&inner.to_string())));
        ConfigError::new(without_odd_names(&path), without_odd_name(&message))
    })?;
    // Only whitespace may follow the object: a stray `}` ends it early
    // (`{"default_action": "allow"}, "routes": [...]}`), and what comes
    // after it, the routes, would otherwise be dropped without a word.
    de.end().map_err(|e| {
        ConfigError::new(
            "",
            format!(
                "something follows the configuration's object, at line {} column {} \
                     (a stray `}}` closing it early?): it would be ignored",
                e.line(),
                e.column()
            ),
        )
    })?;
    Ok(raw)
}

/// Whether `key` may be random bytes, as a secret key should be: not all
/// printable ASCII (a passphrase, a name, the demo key edited; 16 random
/// bytes are all printable once in about 7 million), and at least half its
/// bytes distinct (not a run of one or a few bytes, such as base64 of
/// zeros). A heuristic for advice only: a key that passes may still be
/// known to others.
pub(crate) fn looks_random(key: &[u8]) -> bool {
    let text = key.iter().all(|b| (0x20..0x7f).contains(b));
    let mut seen = [false; 256];
    let mut distinct = 0usize;
    for &b in key {
        if let Some(s) = seen.get_mut(usize::from(b)) {
            if !*s {
                *s = true;
                distinct += 1;
            }
        }
    }
    !text && distinct.saturating_mul(2) >= key.len()
}

/// The byte offset `column` bytes into line `line` (1-based) of `bytes`:
/// with a serde_json error's line and column, just past what it had read
/// when it found the error. `None` when the document has no such line.
fn json_offset(bytes: &[u8], line: usize, column: usize) -> Option<usize> {
    let line_start = if line <= 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line.saturating_sub(2))
            .map(|(i, _)| i + 1)?
    };
    Some(line_start.saturating_add(column))
}

/// The field path (`routes[0].match.prefix`) of the value serde_json was
/// reading when it found an error at `line` and `column` of the document
/// `bytes`: the key last read in each object still open there, the element
/// that had begun (or was next, for one not read yet) in each array; `""`
/// for the document itself. The error's position is where serde_json
/// stopped: after an unknown key's name (the path ends with it), after a
/// value of the wrong type or a list or object refused as a whole (the
/// value's path), after the `}` of an object missing a field (the
/// object's path). Found by reading the document again up to there,
/// rather than by tracking the path while deserializing, which took 76 KB
/// of the module. A check that refuses a value after serde_json read it
/// must refuse it from within its visitor (see `restriction`), or its
/// error comes at the end of the enclosing object.
fn json_path_at(bytes: &[u8], e: &serde_json::Error) -> String {
    /// An object (the key last read, and whether its `:` was) or an array
    /// (the index of its current element, and whether that one began).
    enum Frame {
        Object(Option<String>, bool),
        Array(usize, bool),
    }
    fn begin(stack: &mut [Frame]) {
        if let Some(Frame::Array(_, begun)) = stack.last_mut() {
            *begun = true;
        }
    }
    let message = e.to_string();
    let mut end = json_offset(bytes, e.line(), e.column())
        .unwrap_or(bytes.len())
        .min(bytes.len());
    // serde_json's `expected value` (a `[` where a name belongs) counts the
    // value's first byte, which it only looked at: the value is what is
    // refused, not something in it.
    if message.starts_with("expected value")
        && end > 0
        && matches!(bytes.get(end - 1), Some(b'[' | b'{'))
    {
        end -= 1;
    }
    // Its `expected ident` (a literal cut short: `fals,`) counts the byte
    // that did not match, which may be the `,` or `}` after the value.
    if message.starts_with("expected ident") && end > 0 {
        end -= 1;
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        let b = bytes.get(i).copied().unwrap_or(b' ');
        i += 1;
        match b {
            b'{' | b'[' => {
                begin(&mut stack);
                stack.push(if b == b'{' {
                    Frame::Object(None, false)
                } else {
                    Frame::Array(0, false)
                });
            }
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object(key, colon)) => (*key, *colon) = (None, false),
                Some(Frame::Array(index, begun)) => (*index, *begun) = (*index + 1, false),
                None => {}
            },
            b':' => {
                if let Some(Frame::Object(_, colon)) = stack.last_mut() {
                    *colon = true;
                }
            }
            b'"' => {
                let start = i - 1;
                let mut escaped = false;
                while i < bytes.len() {
                    let c = bytes.get(i).copied().unwrap_or(b'"');
                    i += 1;
                    if c == b'"' && !escaped {
                        break;
                    }
                    escaped = !escaped && c == b'\\';
                }
                match stack.last_mut() {
                    Some(Frame::Object(key, false)) => {
                        *key = bytes
                            .get(start..i)
                            .and_then(|k| serde_json::from_slice::<String>(k).ok());
                    }
                    _ => begin(&mut stack),
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => begin(&mut stack),
        }
    }
    // A name read as an enum's variant (`{"bogus": …}` where a name
    // belongs) is the value refused, not a field.
    if message.starts_with("unknown variant") {
        if let Some(Frame::Object(key, false)) = stack.last_mut() {
            *key = None;
        }
    }
    // An array's next element, not read yet, is the one serde_json was
    // about to read (it found the error on its first byte).
    let next = bytes
        .get(end..)
        .and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()));
    if let (Some(Frame::Array(_, begun)), Some(&b)) = (stack.last_mut(), next) {
        if b != b']' {
            *begun = true;
        }
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object(Some(key), _) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Array(index, true) => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
            _ => break,
        }
    }
    path
}

/// What serde_json's bare `expected value` means where a name (`mode`,
/// `api_key`, `platforms[0]`, …) is read and a value of another kind is
/// written: it reads like a syntax error, and a value is there. `None`
/// for any other error, and for a real syntax error (`NaN`, `'x'`).
fn wrong_kind_of_value(bytes: &[u8], e: &serde_json::Error) -> Option<String> {
    if !e.to_string().starts_with("expected value") {
        return None;
    }
    // The line and column (1-based) of what was read.
    let at = json_offset(bytes, e.line(), e.column().saturating_sub(1))?;
    let rest = bytes.get(at..)?;
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let kind = if rest.starts_with(b"null") {
        return Some(format!(
            "null is not allowed here: leave the field out for its default (at line {} column {})",
            e.line(),
            e.column()
        ));
    } else if rest.starts_with(b"true") || rest.starts_with(b"false") {
        "a boolean"
    } else if rest
        .first()
        .is_some_and(|b| b.is_ascii_digit() || *b == b'-')
    {
        "a number"
    } else if rest.starts_with(b"[") {
        "a list"
    } else {
        return None;
    };
    Some(format!(
        "expected one of this field's values, as a string (see the configuration reference), \
         found {kind} (at line {} column {})",
        e.line(),
        e.column()
    ))
}

/// `message` (a serde error) with every quoted string value it shows
/// (`invalid type: string "…"`) replaced by `a string`, and a type error's
/// number by `an integer` or `a number`: the value may be a secret written
/// in the wrong place (a bare HMAC secret where a key object belongs, a
/// numeric key unquoted), and Envoy logs the message.
fn without_string_values(message: &str) -> String {
    without_wrong_type_numbers(&without_quoted_strings(message))
}

/// `message` with the number of a type error (`invalid type: integer
/// `123…`, expected a string`) replaced by `an integer` (or `a number`):
/// a numeric secret or API key written unquoted is a secret all the same.
/// A range error (`invalid value: integer `5000`, expected …`) keeps its
/// number, which only numeric settings show.
fn without_wrong_type_numbers(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let found = [
            ("invalid type: integer `", "invalid type: an integer"),
            ("invalid type: floating point `", "invalid type: a number"),
        ]
        .iter()
        .filter_map(|&(mark, said)| rest.find(mark).map(|at| (at, mark, said)))
        .min_by_key(|&(at, _, _)| at);
        let Some((at, mark, said)) = found else {
            break;
        };
        out.push_str(&rest[..at]);
        out.push_str(said);
        let value = &rest[at + mark.len()..];
        rest = value
            .find('`')
            .and_then(|end| value.get(end + 1..))
            .unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// `message` with each `string "…"` serde shows said as `a string`: the
/// value may be a secret written in the wrong place, and Envoy logs the
/// message (see [`without_string_values`]). The value is Rust-escaped, so
/// an escaped quote does not end it.
fn without_quoted_strings(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let value = &rest[at + MARK.len()..];
        // The value is Rust-escaped: `\"` and `\\` never end it.
        let mut escaped = false;
        let end = value.char_indices().find_map(|(i, c)| {
            let ends = !escaped && c == '"';
            escaped = !escaped && c == '\\';
            ends.then_some(i)
        });
        out.push_str("a string");
        // An unterminated value runs to the end of the message.
        rest = end.and_then(|end| value.get(end + 1..)).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// `message` (a serde error) with the Rust names of the configuration's
/// sections (`expected struct RawNetwork`) said as what they are written
/// as: `an object`.
fn without_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("Raw") {
        let (before, name) = rest.split_at(at);
        let (name, after) = name.split_at(
            name.find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(name.len()),
        );
        match before.strip_suffix("struct ") {
            Some(before) => {
                out.push_str(before);
                out.push_str("an object");
            }
            None => {
                out.push_str(before);
                out.push_str(name);
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Whether `name` reads like a configuration field or value name
/// (`prefix`, `v4_prefix`, `optional`, or a camel-case slip such as
/// `maxLifetimeSeconds`): it starts in lower case, has at most 40
/// characters, 4 capitals and 3 digits; or it starts with a digit and has
/// at most 8 characters (`5m` written for a unit: too short for a
/// secret). The unknown field or variant serde
/// names in an error is otherwise shown as `?`: it may be a secret written
/// where a name belongs (`"api_key": "AIzaSy…"` on a route, a key as a
/// field of `api_keys`), and Envoy logs the message.
fn plausible_name(name: &str) -> bool {
    let count = |f: fn(&u8) -> bool| name.bytes().filter(f).count();
    name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'@'))
        && count(u8::is_ascii_uppercase) <= 4
        && match name.bytes().next() {
            // `"per": "5m"`, `"60s"`: too short for a secret.
            Some(b'0'..=b'9') => name.len() <= 8,
            Some(b) => {
                (b.is_ascii_lowercase() || b == b'@' || b == b'_') && count(u8::is_ascii_digit) <= 3
            }
            None => false,
        }
}

/// A serde message with the unknown field or variant it names (``unknown
/// field `x`, expected one of …``) replaced by `?` unless it is a
/// [`plausible_name`]. The name runs to the last `` `, expected`` (or
/// `` `, there are no``), so that a backtick inside it hides nothing; the
/// expected names after it are the configuration's own.
fn without_odd_name(message: &str) -> String {
    for marker in ["unknown field `", "unknown variant `"] {
        let Some(at) = message.find(marker) else {
            continue;
        };
        let start = at + marker.len();
        let rest = message.get(start..).unwrap_or("");
        // The last backtick that closes the name: before `, expected` or
        // `, there are no` where serde says one, else the last one.
        let (mut closing, mut last) = (None, None);
        for (i, c) in rest.char_indices() {
            if c == '`' {
                let after = rest.get(i + 1..).unwrap_or("");
                if after.starts_with(", expected") || after.starts_with(", there are no") {
                    closing = Some(i);
                }
                last = Some(i);
            }
        }
        let (name, after) = rest.split_at(closing.or(last).unwrap_or(rest.len()));
        // `Allow` for `allow`, the commonest slip, is shown: a name the
        // configuration expects in another case is no secret.
        // (`after` starts with the name's closing backtick: every other
        // piece after it is an expected name.)
        let expected_in_other_case = after
            .split('`')
            .skip(2)
            .step_by(2)
            .any(|e| e.eq_ignore_ascii_case(name));
        if !plausible_name(name) && !expected_in_other_case {
            let mut out = String::with_capacity(message.len());
            out.push_str(message.get(..start).unwrap_or(""));
            out.push('?');
            out.push_str(after);
            return out;
        }
    }
    message.to_owned()
}

/// A field path with every segment that is not a [`plausible_name`]
/// replaced by `?`, its trailing `[i]` indexes kept.
fn without_odd_names(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        let (name, index) = segment.split_at(index_start(segment));
        if name.is_empty() || plausible_name(name) {
            out.push_str(segment);
        } else {
            out.push('?');
            out.push_str(index);
        }
    }
    out
}

/// Where the trailing `[0][1]` indexes of a path segment start (its
/// length if it has none; any other `[` belongs to the name).
fn index_start(segment: &str) -> usize {
    let b = segment.as_bytes();
    let mut cut = b.len();
    while b.get(cut.wrapping_sub(1)) == Some(&b']') {
        let digits = b.get(..cut - 1).map_or(0, |s| {
            s.iter().rev().take_while(|c| c.is_ascii_digit()).count()
        });
        let open = cut - 1 - digits;
        if digits == 0 || open == 0 || b.get(open - 1) != Some(&b'[') {
            break;
        }
        cut = open - 1;
    }
    cut
}

/// The parsed configuration, checked and compiled: each section by its own
/// `compile_*`, then what only the whole can show (a route an earlier one
/// shadows, one header read as two things, a claim header a client or proxy
/// owns), so that a policy that would silently do nothing fails to load.
fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    let apps = identity::compile_apps(raw.apps)?;
    let mut providers: Vec<Provider> = Vec::with_capacity(raw.tokens.len());
    for (i, p) in raw.tokens.into_iter().enumerate() {
        let at = format!("tokens[{i}]");
        let p = token::compile_provider(&at, p)?;
        if providers.iter().any(|x| x.name == p.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate provider name {:?}", p.name),
            ));
        }
        providers.push(p);
    }
    let rate_limit_service = match raw.rate_limit_service {
        Some(r) => {
            check_cluster("rate_limit_service.cluster", &r.cluster)?;
            if reads_as_protobuf(r.cluster.as_bytes()) {
                return Err(ConfigError::new(
                    "rate_limit_service.cluster",
                    format!(
                        "{:?} reads as a serialized GrpcService to Envoy, which would then refuse every call to it: rename the cluster",
                        r.cluster
                    ),
                ));
            }
            if r.domain.is_empty() {
                return Err(ConfigError::new("rate_limit_service.domain", "required"));
            }
            if r.timeout_ms == 0 || r.timeout_ms > 10_000 {
                return Err(ConfigError::new(
                    "rate_limit_service.timeout_ms",
                    "must be 1..=10000",
                ));
            }
            Some(RateLimitService {
                cluster: r.cluster,
                domain: r.domain,
                timeout_ms: r.timeout_ms,
                failure_mode: r.failure_mode,
                replay_scope: crate::limits::DigestScope::new(&["replay"]),
            })
        }
        None => None,
    };
    let phone = match raw.phone {
        Some(p) => {
            let national_prefix = p.national_prefix.unwrap_or_else(|| {
                crate::phone::default_national_prefix(p.default_calling_code.as_deref()).to_owned()
            });
            let rules = PhoneRules {
                default_calling_code: p.default_calling_code,
                national_prefix,
            };
            rules
                .validate()
                .map_err(|(field, m)| ConfigError::new(format!("phone.{field}"), m))?;
            let denied = PrefixSet::new(&p.denied_prefixes).map_err(|e| {
                ConfigError::new(format!("phone.denied_prefixes[{}]", e.index), e.to_string())
            })?;
            let hash_key = crate::token::keys::decode_base64_any(&p.hash_key_base64)
                .filter(|k| k.len() >= 16)
                .ok_or_else(|| {
                    ConfigError::new(
                        "phone.hash_key_base64",
                        "base64 of at least 16 random bytes (32 recommended)",
                    )
                })?;
            Some(PhoneConfig {
                rules,
                denied,
                hash_key,
            })
        }
        None => None,
    };
    if raw.max_body_bytes == 0 || raw.max_body_bytes > 1024 * 1024 {
        return Err(ConfigError::new("max_body_bytes", "must be 1..=1048576"));
    }
    let max_body_bytes = usize::try_from(raw.max_body_bytes).unwrap_or(usize::MAX);
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        if r.name == UNMATCHED_ROUTE {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("`{UNMATCHED_ROUTE}` is reserved for requests that match no route"),
            ));
        }
        if routes.iter().any(|x: &Route| x.name == r.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        let default_failure = rate_limit_service
            .as_ref()
            .map_or(FailureMode::Deny, |s| s.failure_mode);
        let route = compile_route(
            &at,
            r,
            raw.mode,
            &providers,
            default_failure,
            max_body_bytes,
        )?;
        // Routes are tried in order and the first match wins: a route that
        // an earlier one covers entirely never applies, and its policy
        // (tokens, keys, limits on a paid endpoint) silently does nothing.
        if let Some((k, earlier)) = routes
            .iter()
            .enumerate()
            .find(|(_, e)| route_covers(e, &route))
        {
            return Err(ConfigError::new(
                format!("{at}.match"),
                format!(
                    "never matches: route {:?} (routes[{k}]) comes first and matches every \
                     request this one would; put the more specific route first",
                    earlier.name
                ),
            ));
        }
        // A JSON pointer read as a phone number is not also read as plain
        // text on the same route: that entry would send the number in
        // clear to the rate-limit service (and its logs).
        let phone_pointers: Vec<&str> = route
            .rate_limits
            .iter()
            .flat_map(|rl| &rl.entries)
            .filter_map(|e| match &e.source {
                limits::Source::Body {
                    pointer,
                    phone: true,
                    ..
                } => Some(pointer.as_str()),
                _ => None,
            })
            .collect();
        for (j, rl) in route.rate_limits.iter().enumerate() {
            for (k, e) in rl.entries.iter().enumerate() {
                if let limits::Source::Body {
                    pointer,
                    phone: false,
                    ..
                } = &e.source
                {
                    if phone_pointers.contains(&pointer.as_str()) {
                        return Err(ConfigError::new(
                            format!("{at}.rate_limits[{j}].entries[{k}]"),
                            format!(
                                "{pointer:?} is read as a phone number on this route: without \
                                 `phone: true` this entry would send the number in clear"
                            ),
                        ));
                    }
                }
            }
        }
        for (j, rl) in route.rate_limits.iter().enumerate() {
            // The rule name scopes local buckets only: the service gets the
            // descriptor alone, so two service rules with the same entries
            // send it twice in one call, and it counts each request twice
            // under the one limit its YAML can hold for that descriptor.
            if rl.local.is_none() {
                if let Some(first) = route
                    .rate_limits
                    .iter()
                    .take(j)
                    .position(|o| o.local.is_none() && o.entries == rl.entries)
                {
                    return Err(ConfigError::new(
                        format!("{at}.rate_limits[{j}].entries"),
                        format!(
                            "the same entries as rate_limits[{first}], and both go to the \
                             rate-limit service, which would count each request twice under \
                             one limit: add an entry that tells them apart, e.g. \
                             {{\"type\": \"value\", \"key\": \"rule\", \"value\": \"{}\"}}, \
                             and give each its limit in the service's configuration",
                            rl.name
                        ),
                    ));
                }
            }
            if rl.local.is_none() && rate_limit_service.is_none() {
                return Err(ConfigError::new(
                    format!("{at}.rate_limits[{j}]"),
                    "no `local` limit and no `rate_limit_service` configured to enforce it",
                ));
            }
            // An entry without a value skips its whole descriptor; one that
            // can never have a value on this route is a limit that never
            // applies, which an operator would only find out under attack.
            for (k, e) in rl.entries.iter().enumerate() {
                let never = match e.source {
                    limits::Source::ApiKey => (route.api_key == KeyRequirement::None)
                        .then_some("the route reads no API key (`api_key` is `none`)"),
                    limits::Source::Claim(_) => route
                        .providers
                        .is_empty()
                        .then_some("the route accepts no token (`tokens` is empty)"),
                    limits::Source::App | limits::Source::Platform => apps
                        .is_empty()
                        .then_some("no `apps` are configured, so no app is ever established"),
                    _ => None,
                };
                if let Some(why) = never {
                    return Err(ConfigError::new(
                        format!("{at}.rate_limits[{j}].entries[{k}]"),
                        format!("never has a value, so this limit would never apply: {why}"),
                    ));
                }
            }
            if rl.reads_phone() && phone.is_none() {
                return Err(ConfigError::new(
                    format!("{at}.rate_limits[{j}]"),
                    "a `phone` body entry needs the top-level `phone` section",
                ));
            }
        }
        routes.push(route);
    }
    for (i, p) in providers.iter().enumerate() {
        if p.replay
            .as_ref()
            .is_some_and(|r| r.scope == token::ReplayScope::Service)
            && rate_limit_service.is_none()
        {
            return Err(ConfigError::new(
                format!("tokens[{i}].replay.scope"),
                "`service` needs `rate_limit_service`",
            ));
        }
    }
    let route_names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    let api_keys = identity::compile_api_keys(raw.api_keys, &apps, &route_names)?;
    // Header names are compared in every spelling an upstream reads as the
    // same header (`x_api_key` is `x-api-key` to PHP), as requests are.
    let same = |a: &str, b: &str| crate::request::same_header_name(a.as_bytes(), b.as_bytes());
    // One header both an API key and a token on a route: every bearer
    // token would be read as a key there (`api_key_invalid`), and
    // stripped when keys are not forwarded.
    for (k, r) in routes.iter().enumerate() {
        if r.api_key == KeyRequirement::None {
            continue;
        }
        for &i in &r.providers {
            let Some(p) = providers.get(i) else {
                continue;
            };
            if let Some(j) = p
                .sources
                .iter()
                .position(|s| same(&s.header, &api_keys.header))
            {
                return Err(ConfigError::new(
                    format!("tokens[{i}].from[{j}].header"),
                    format!(
                        "{:?} is also `api_keys.header`, and route {:?} (routes[{k}]) reads \
                         both: a header carries an API key or a token, not both",
                        api_keys.header, r.name
                    ),
                ));
            }
        }
    }
    let network = compile_network("network", raw.network.unwrap_or_default())?;
    // Every country header a request is read by: the top-level one and
    // each route's own (`routes[].network`).
    let country_headers: Vec<&str> = network
        .country_header
        .as_deref()
        .into_iter()
        .chain(
            routes
                .iter()
                .filter_map(|r| r.network.as_ref())
                .filter_map(|n| n.country_header.as_deref()),
        )
        .collect();
    // The headers HTTP framing or the proxies in front own, and those
    // appguard reads for something of their own (the country, a method,
    // URL or host override, the body's format, a signature, the web
    // origin, a preflight): neither the API key nor a claim header can be
    // one of them.
    let mut taken: Vec<&str> = vec![
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-port",
        "content-type",
        "content-encoding",
        "content-digest",
        "signature",
        "signature-input",
        "origin",
        "referer",
        "access-control-request-method",
        "access-control-request-headers",
    ];
    taken.extend(&country_headers);
    taken.extend(crate::policy::METHOD_OVERRIDE_HEADERS);
    taken.extend(crate::policy::URL_OVERRIDE_HEADERS);
    taken.extend(crate::policy::FORWARDED_HOST_HEADERS);
    // The API-key header names one thing, as the platform headers do: one
    // of those, a cookie, or one only appguard sets would make every keyed
    // request show a second thing (an `Origin` that holds a key is
    // `origin_denied`), or, with `forward: false`, lose that header.
    {
        let mut elsewhere = taken.clone();
        elsewhere.extend(["forwarded", "cookie"]);
        let h = api_keys.header.as_str();
        if crate::request::is_header_of(h, &elsewhere) || crate::request::reserved_header(h, &[]) {
            return Err(ConfigError::new(
                "api_keys.header",
                format!(
                    "{h:?} is a header appguard reads for something else (origin or referer, \
                     the country, a method, URL or host override, a body, signature or \
                     preflight header), one HTTP framing, proxies or cookies own, or an \
                     x-appguard-* header: each header must name one thing"
                ),
            ));
        }
    }
    let ph = raw.platform_headers.unwrap_or_default();
    let ph_name = |field: &str, v: Option<String>, default: &str| -> Result<String, ConfigError> {
        header_name(
            &format!("platform_headers.{field}"),
            v.as_deref().unwrap_or(default),
        )
    };
    let platform_headers = PlatformHeaderNames {
        android_package: ph_name("android_package", ph.android_package, "x-android-package")?,
        android_cert: ph_name("android_cert", ph.android_cert, "x-android-cert")?,
        ios_bundle_id: ph_name("ios_bundle_id", ph.ios_bundle_id, "x-ios-bundle-identifier")?,
        ios_team_id: ph_name("ios_team_id", ph.ios_team_id, "x-ios-team-id")?,
    };
    // A claim header is stripped from every request: it must not be one
    // clients send for appguard to read, nor one HTTP framing or the
    // proxies in front own (the upstream would lose the client's copy, or
    // take a claim for the request's host, length or client address), nor
    // one routes are matched by (a claim written there would route the
    // request upstream after appguard matched it).
    let mut owned = taken;
    owned.push(&api_keys.header);
    for p in &providers {
        owned.extend(p.sources.iter().map(|src| src.header.as_str()));
        owned.extend(
            p.binding
                .iter()
                .flat_map(|b| b.headers.iter().map(String::as_str)),
        );
    }
    // Each platform header names one thing: a header read as two (an
    // Android package and an iOS bundle id, or `origin`, a token's or the
    // country's header) makes every request that sends it look like two
    // platforms, refused as `app_mismatch`; so does the API key's header.
    {
        let named = [
            ("android_package", &platform_headers.android_package),
            ("android_cert", &platform_headers.android_cert),
            ("ios_bundle_id", &platform_headers.ios_bundle_id),
            ("ios_team_id", &platform_headers.ios_team_id),
        ];
        let mut seen: Vec<(String, &str)> =
            vec![("api_keys.header".to_owned(), api_keys.header.as_str())];
        for (field, h) in named {
            if let Some((other, _)) = seen
                .iter()
                .find(|(_, e)| crate::request::is_header_of(h, &[*e]))
            {
                return Err(ConfigError::new(
                    format!("platform_headers.{field}"),
                    format!("is the header {other} names too: each header must name one thing"),
                ));
            }
            if crate::request::is_header_of(h, &owned) {
                return Err(ConfigError::new(
                    format!("platform_headers.{field}"),
                    format!(
                        "{h:?} is a header appguard reads for something else (a token source, \
                         the country, a binding, origin or referer, a method or URL override, \
                         forwarded host, or a header the body, signature or preflight checks \
                         read), or one HTTP framing or proxies own: each header must name one \
                         thing"
                    ),
                ));
            }
            seen.push((format!("platform_headers.{field}"), h.as_str()));
        }
    }
    owned.extend([
        platform_headers.android_package.as_str(),
        platform_headers.android_cert.as_str(),
        platform_headers.ios_bundle_id.as_str(),
        platform_headers.ios_team_id.as_str(),
    ]);
    let mut claim_headers: Vec<String> = Vec::new();
    for (i, p) in providers.iter().enumerate() {
        for (j, (_, h)) in p.claim_to_headers.iter().enumerate() {
            if crate::request::is_header_of(h, &owned) {
                return Err(ConfigError::new(
                    format!("tokens[{i}].claim_to_headers[{j}].header"),
                    "cannot carry a verified claim: appguard reads this header from clients \
                     (a token source, the API key, platform, country, binding, method or \
                     URL override or forwarded-host header, or one the body, signature, web \
                     origin or preflight checks read), or HTTP framing or proxies own \
                     it (host, content-length, transfer-encoding, connection, te, \
                     x-forwarded-for/-proto/-port, forwarded, x-real-ip)",
                ));
            }
            if !claim_headers.contains(h) {
                claim_headers.push(h.clone());
            }
        }
    }
    // The API-key header, the token headers and the headers tokens are
    // bound to: never a descriptor (below), never a request trailer
    // (`credential_headers`).
    let credentials = key_and_token_headers(&api_keys, &providers);
    // A descriptor read from a header appguard removes (its own identity
    // headers, claim headers) would read the client's copy: a value the
    // client picks, or omits to skip the limit.
    for (i, r) in routes.iter().enumerate() {
        for (j, rl) in r.rate_limits.iter().enumerate() {
            for (k, e) in rl.entries.iter().enumerate() {
                if let limits::Source::Header(h) = &e.source {
                    // A descriptor value goes in clear to the rate-limit
                    // service (its logs, its Redis keys): never a secret.
                    // What a token is bound to is a credential too (a
                    // session id, a bearer token): its claim holds the
                    // digest to limit by.
                    let secret = credentials.iter().any(|c| same(h, c))
                        || ["authorization", "proxy-authorization", "cookie"]
                            .iter()
                            .any(|c| same(h, c));
                    if secret {
                        return Err(ConfigError::new(
                            format!("routes[{i}].rate_limits[{j}].entries[{k}].name"),
                            "carries a secret (API key, token, a header a token is bound to, \
                             or credentials) that would reach the rate-limit service and its \
                             logs in clear: use the `api_key` or `claim` entry instead (for a \
                             bound header, a `claim` entry on the binding's claim: its digest)",
                        ));
                    }
                    if crate::request::reserved_header(h, &claim_headers) {
                        return Err(ConfigError::new(
                            format!("routes[{i}].rate_limits[{j}].entries[{k}].name"),
                            "appguard sets this header itself (identity or claim header): \
                             use the `app`, `platform`, `api_key` or `claim` entry instead",
                        ));
                    }
                }
            }
        }
    }
    let cors_on_refusals = match raw.cors_on_refusals {
        Some(_) if !apps.iter().any(|a| a.platform == identity::Platform::Web) => {
            return Err(ConfigError::new(
                "cors_on_refusals",
                "no app has `platform: web`: only a web app's origins get CORS headers",
            ));
        }
        Some(c) => Some(RefusalCors {
            allow_credentials: c.allow_credentials,
        }),
        None => None,
    };
    let xff_trusted_hops = raw.client_ip.map_or(0, |c| c.xff_trusted_hops);
    if usize::try_from(xff_trusted_hops).map_or(true, |n| n > crate::net::MAX_XFF_ENTRIES) {
        // No chain of proxies is that long: a typo, or a count of
        // something other than the proxies in front of Envoy.
        return Err(ConfigError::new(
            "client_ip.xff_trusted_hops",
            format!(
                "must be 0..={} (the number of your proxies in front of Envoy)",
                crate::net::MAX_XFF_ENTRIES
            ),
        ));
    }
    let mut credential_headers = with_signed_headers(credentials, &providers);
    // With a key parameter, a cookie of its name is a key too (to upstreams
    // that merge cookies into their parameters): checked in the headers,
    // never in a trailer, so a `cookie` trailer is cut.
    if api_keys.query_param.is_some() {
        push_header_once(&mut credential_headers, "cookie");
    }
    let signs_requests = providers.iter().any(|p| p.message_signing.is_some());
    Ok(Config {
        mode: raw.mode,
        default_action: raw.default_action,
        xff_trusted_hops,
        network,
        platform_headers,
        has_server_apps: apps
            .iter()
            .any(|a| matches!(a.proof, identity::AppProof::Server { .. })),
        apps,
        api_keys,
        providers,
        rate_limit_service,
        phone,
        max_body_bytes,
        alerts: raw
            .alerts
            .map(|a| crate::alerts::compile(a, &route_names))
            .transpose()?,
        decision_log_per_second: raw.decision_log_per_second,
        bypass_cors_preflight: raw.bypass_cors_preflight,
        cors_on_refusals,
        hold_headers_for_body: raw.hold_headers_for_body,
        routes_by_method: routes.iter().any(|r| !r.methods.is_empty()),
        routes_by_host: routes.iter().any(|r| !r.hosts.is_empty()),
        routes,
        claim_headers,
        credential_headers,
        signs_requests,
    })
}

/// `h` added to `out` unless a spelling of it is there already.
fn push_header_once(out: &mut Vec<String>, h: &str) {
    if !out
        .iter()
        .any(|o| crate::request::same_header_name(o.as_bytes(), h.as_bytes()))
    {
        out.push(h.to_owned());
    }
}

/// The API-key header, each token provider's headers and each header a
/// token is bound to, each once: the headers that carry a credential of a
/// key or a token.
fn key_and_token_headers(api_keys: &ApiKeys, providers: &[Provider]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    push_header_once(&mut out, &api_keys.header);
    for p in providers {
        for s in &p.sources {
            push_header_once(&mut out, &s.header);
        }
        for h in p.binding.iter().flat_map(|b| b.headers.iter()) {
            push_header_once(&mut out, h);
        }
    }
    out
}

/// Whether a JSON member name `member` (a body pointer's last one) names
/// a phone number or an e-mail address: its last word is `phone`,
/// `msisdn`, `mobile` or `email` (or, written as one word, `phonenumber`,
/// `mobilenumber`, `emailaddress`), or its last two `phone number`, `mobile
/// number`, `email address` or `e mail`, words split at `_`, `-` and where
/// a capital follows a small letter or a digit, in any case
/// (`phone_number`, `phoneNumber`, `recipientPhone`, `contact_email`).
fn names_personal_data(member: &str) -> bool {
    let mut words: Vec<String> = Vec::new();
    let mut prev_small = false;
    for c in member.chars() {
        if c == '_' || c == '-' {
            words.push(String::new());
            prev_small = false;
            continue;
        }
        if (c.is_ascii_uppercase() && prev_small) || words.is_empty() {
            words.push(String::new());
        }
        prev_small = c.is_ascii_lowercase() || c.is_ascii_digit();
        if let Some(w) = words.last_mut() {
            w.push(c.to_ascii_lowercase());
        }
    }
    words.retain(|w| !w.is_empty());
    let last = words.last().map(String::as_str);
    let last_two = words
        .len()
        .checked_sub(2)
        .and_then(|at| words.get(at..))
        .map(|w| w.join(" "));
    // One word written without a break (`phonenumber`, `PHONENUMBER`).
    matches!(
        last,
        Some(
            "phone"
                | "msisdn"
                | "mobile"
                | "email"
                | "phonenumber"
                | "mobilenumber"
                | "emailaddress"
        )
    ) || matches!(
        last_two.as_deref(),
        Some("phone number" | "mobile number" | "email address" | "e mail")
    )
}

/// [`Config::credential_headers`]: `credentials` (see
/// [`key_and_token_headers`]) and, for each provider with
/// `message_signing`, the signature headers, `content-digest`,
/// `content-type` and the headers a signature must cover, each once.
fn with_signed_headers(mut credentials: Vec<String>, providers: &[Provider]) -> Vec<String> {
    for m in providers.iter().filter_map(|p| p.message_signing.as_ref()) {
        for h in [
            "signature",
            "signature-input",
            "content-digest",
            "content-type",
        ] {
            push_header_once(&mut credentials, h);
        }
        for c in &m.policy.required_components {
            if !c.starts_with('@') {
                push_header_once(&mut credentials, c);
            }
        }
    }
    credentials
}

/// One `network` section (the configuration's or a route's). A country list
/// or `country_required` without `country_header` is refused: with nothing
/// to read the country from, it would never apply.
fn compile_network(at: &str, n: RawNetwork) -> Result<Network, ConfigError> {
    let ip_allow = CidrSet::parse(&n.ip_allow)
        .map_err(|(i, m)| ConfigError::new(format!("{at}.ip_allow[{i}]"), m))?;
    let ip_deny = CidrSet::parse(&n.ip_deny)
        .map_err(|(i, m)| ConfigError::new(format!("{at}.ip_deny[{i}]"), m))?;
    let country_header = match n.country_header {
        Some(h) => Some(header_name(&format!("{at}.country_header"), &h)?),
        None => None,
    };
    let countries = |field: &str, list: Vec<String>| -> Result<Vec<String>, ConfigError> {
        list.into_iter()
            .enumerate()
            .map(|(i, c)| {
                if crate::policy::is_country_code(&c) {
                    Ok(c.to_ascii_uppercase())
                } else {
                    Err(ConfigError::new(
                        format!("{at}.{field}[{i}]"),
                        format!(
                            "{} is not a two-character country code (ISO 3166 alpha-2, \
                             or a geolocation code such as T1)",
                            shown(&c)
                        ),
                    ))
                }
            })
            .collect()
    };
    let country_allow = countries("country_allow", n.country_allow)?;
    let country_deny = countries("country_deny", n.country_deny)?;
    if country_header.is_none()
        && (!country_allow.is_empty() || !country_deny.is_empty() || n.country_required)
    {
        return Err(ConfigError::new(
            format!("{at}.country_header"),
            "required when country_allow, country_deny or country_required is set",
        ));
    }
    Ok(Network {
        ip_allow,
        ip_deny,
        country_header,
        country_allow,
        country_deny,
        country_required: n.country_required,
    })
}

/// `value`, quoted for an error message where it reads like a name, a
/// header or a host; otherwise only its length. Envoy logs the message, and
/// a value with many capitals or digits, or base64's `+`, `/` and `=`, may
/// be a secret written in the wrong place (an API key as `api_keys.header`,
/// a key as a route's provider name).
pub(crate) fn shown(value: &str) -> String {
    let count = |f: fn(&u8) -> bool| value.bytes().filter(f).count();
    if value.len() <= 64
        && !value.contains(['+', '/', '='])
        && count(u8::is_ascii_uppercase) <= 4
        && count(u8::is_ascii_digit) <= 6
    {
        format!("{value:?}")
    } else {
        format!(
            "a value of {} bytes (not shown: it may be a secret)",
            value.len()
        )
    }
}

/// Validates a header name and returns it in lower case (Envoy's form).
pub(crate) fn header_name(at: &str, h: &str) -> Result<String, ConfigError> {
    let ok = !h.is_empty()
        && h.len() <= 128
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(ConfigError::new(
            at,
            format!("{} is not a header name", shown(h)),
        ))
    }
}

/// One route, on its own (the checks across routes are [`compile`]'s).
/// Unset settings take the configuration's; `jwks_failure_mode` follows only
/// the route's own `failure_mode`: `rate_limit_service.failure_mode` never lets a
/// JWKS outage fail open.
fn compile_route(
    at: &str,
    r: RawRoute,
    global_mode: Mode,
    providers: &[Provider],
    default_failure: FailureMode,
    default_max_body: usize,
) -> Result<Route, ConfigError> {
    if !valid_name(&r.name) {
        return Err(ConfigError::new(
            format!("{at}.name"),
            "must be 1-64 characters of [A-Za-z0-9_-] (it appears in metric names)",
        ));
    }
    let m = r.matcher;
    let path = match (m.prefix, m.path) {
        (Some(p), None) => PathMatch::Prefix(check_path(&format!("{at}.match.prefix"), p, true)?),
        (None, Some(p)) => PathMatch::Exact(check_path(&format!("{at}.match.path"), p, false)?),
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
        // Any RFC 9110 method token (`M-SEARCH`); one outside the
        // registered methods gets advice instead (`advisories`).
        if meth.is_empty() || !meth.bytes().all(crate::signing::is_tchar) {
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
    let mut route_providers = Vec::with_capacity(r.tokens.len());
    for (j, name) in r.tokens.iter().enumerate() {
        let idx = providers
            .iter()
            .position(|p| &p.name == name)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.tokens[{j}]"),
                    format!("no token provider named {}", shown(name)),
                )
            })?;
        if route_providers.contains(&idx) {
            return Err(ConfigError::new(
                format!("{at}.tokens[{j}]"),
                "listed twice (a typo for another provider?)",
            ));
        }
        route_providers.push(idx);
    }
    if r.token_required == Some(true) && route_providers.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.token_required"),
            "set `tokens` to say which providers are accepted",
        ));
    }
    let network = match r.network {
        Some(n) => Some(compile_network(&format!("{at}.network"), n)?),
        None => None,
    };
    let rate_limits = limits::compile(&format!("{at}.rate_limits"), &r.name, r.rate_limits)?;
    let max_body_bytes = match r.max_body_bytes {
        None => default_max_body,
        Some(n) if (1..=1024 * 1024).contains(&n) => usize::try_from(n).unwrap_or(usize::MAX),
        Some(_) => {
            return Err(ConfigError::new(
                format!("{at}.max_body_bytes"),
                "must be 1..=1048576",
            ))
        }
    };
    Ok(Route {
        name: r.name,
        path,
        methods,
        hosts,
        action: r.action,
        mode: r.mode.unwrap_or(global_mode),
        platforms: r.platforms,
        token_required: r.token_required.unwrap_or(!route_providers.is_empty()),
        providers: route_providers,
        api_key: r.api_key,
        network,
        rate_limits,
        failure_mode: r.failure_mode.unwrap_or(default_failure),
        jwks_failure_mode: r.failure_mode.unwrap_or(FailureMode::Deny),
        max_body_bytes,
    })
}

/// Whether every request `later` matches is matched by `earlier` too
/// (path, methods and hosts all covered), so that `later` is unreachable.
fn route_covers(earlier: &Route, later: &Route) -> bool {
    let path = earlier.path.covers(&later.path);
    let methods = earlier.methods.is_empty()
        || (!later.methods.is_empty()
            && later
                .methods
                .iter()
                .all(|m| method_matches(&earlier.methods, m)));
    let hosts = earlier.hosts.is_empty()
        || (!later.hosts.is_empty()
            && later
                .hosts
                .iter()
                .all(|h| earlier.hosts.iter().any(|e| host_covers(e, h))));
    path && methods && hosts
}

/// Whether every host `later` matches is matched by `earlier`.
fn host_covers(earlier: &HostPattern, later: &HostPattern) -> bool {
    match (earlier, later) {
        (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
        (HostPattern::Exact(_), HostPattern::Suffix(_)) => false,
        // `.example.com` covers `api.example.com` and `.api.example.com`.
        (HostPattern::Suffix(s), HostPattern::Exact(b)) => {
            b.len() > s.len() && b.ends_with(s.as_str())
        }
        (HostPattern::Suffix(s), HostPattern::Suffix(b)) => b.ends_with(s.as_str()),
    }
}

/// Names that go into metric names and logs: short and unambiguous.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A route's path (or, with `prefix`, path prefix) as requests can have it
/// by the time appguard sees them: Envoy's normalisation has resolved dot
/// segments, merged slashes, turned `\` into `/` and decoded `%XX` of
/// unreserved characters, and routes are matched without `;` parameters.
/// A path written with any of those could never match: refused, rather
/// than a route that silently never applies. (In a prefix the last segment
/// may be partial: `/v1/.` is the prefix of `/v1/.well-known`.)
fn check_path(at: &str, p: String, prefix: bool) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(ConfigError::new(at, format!("{p:?} must start with `/`")));
    }
    if p.contains('?') || p.contains('#') {
        return Err(ConfigError::new(
            at,
            "must not contain `?` or `#`: the query string is not part of the matched path",
        ));
    }
    let never = |why: &str| {
        Err(ConfigError::new(
            at,
            format!("{p:?} can never match: {why}"),
        ))
    };
    if p.contains(';') {
        return never("routes match paths without their `;` parameters; leave them out");
    }
    if p.contains('\\') {
        return never("Envoy's normalize_path turns `\\` into `/`; write `/`");
    }
    let segments: Vec<&str> = p.split('/').skip(1).collect();
    let whole = segments.len().saturating_sub(usize::from(prefix));
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if seg.is_empty() && !last {
            return never("Envoy's merge_slashes leaves no `//` (and appguard refuses one)");
        }
        if i < whole && crate::policy::is_dot_segment(seg) {
            return never("Envoy's normalize_path resolves `.` and `..` segments");
        }
    }
    if let Some((i, c)) = crate::policy::encoded_unreserved(&p) {
        return never(&format!(
            "Envoy's normalize_path decodes `{}` to `{c}`; write `{c}`",
            p.get(i..i + 3).unwrap_or("%")
        ));
    }
    let lower = p.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return never("Envoy refuses requests with an encoded slash or backslash (`path_with_escaped_slashes_action: REJECT_REQUEST`)");
    }
    // Envoy sends every other byte a path may not hold as it is escaped
    // (and refuses raw non-ASCII), and upstreams that decode paths read an
    // escaped `:` or `@` as the character: a route is written the one way
    // both compare with.
    if let Some(c) = crate::policy::canonical_path(&p) {
        return never(&format!(
            "a request has it as {c:?} (a path holds `:`, `@`, `!`, `$`, `&`, `'`, `(`, \
             `)`, `*`, `+`, `,`, `=`, `[` and `]` as they are, every other character \
             escaped, in upper case); write that"
        ));
    }
    Ok(p)
}

/// One `match.hosts` entry, in lower case: a DNS name or a `*.` pattern,
/// nothing else. A port or scheme is refused, as routes match the
/// `:authority` host without them and such an entry would never match.
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
            format!(
                "{} is not a host name or `*.` pattern (no port, no scheme)",
                shown(h)
            ),
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

    /// 32 bytes from a CSPRNG (fixed here): a key no advisory points out.
    pub(super) const RANDOM_KEY: &str = "q1Jr3H0Z8Vf7yT2nQm9sKx4bWc6eLp5aUo0iR8dGzYk=";
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn err(json: &str) -> ConfigError {
        match Config::from_json(json.as_bytes()) {
            Ok(_) => panic!("config accepted: {json}"),
            Err(e) => e,
        }
    }

    #[test]
    fn advice_names_an_unscoped_remote_jwks_and_a_binding_of_several_headers() {
        // Every configuration here has a route that lists its provider
        // (one that none lists has advice of its own, below).
        let advice = |json: &str| {
            let mut doc: serde_json::Value = serde_json::from_str(json).unwrap();
            let name = doc["tokens"][0]["name"].clone();
            doc["routes"] =
                serde_json::json!([{"name": "r", "match": {"prefix": "/"}, "tokens": [name]}]);
            Config::from_json(doc.to_string().as_bytes())
                .unwrap()
                .advisories()
        };
        let jwks = r#""remote_jwks": {"cluster": "jwks", "path": "/jwks"}"#;
        let open = advice(&format!(
            r#"{{"tokens": [{{"name": "fb", "from": [{{"header": "x-t"}}], {jwks}}}]}}"#
        ));
        assert_eq!(open.len(), 1, "{open:?}");
        assert!(open[0].starts_with("tokens[0] (fb): a remote JWKS without `issuer`"));
        for scope in [
            r#""issuer": "https://i.example", "audiences": ["projects/1"]"#,
            r#""audiences": ["projects/1"]"#,
            r#""required_claims": {"tenant": "a"}"#,
            r#""app_claim": {"claim": "sub"}"#,
        ] {
            let a = advice(&format!(
                r#"{{"tokens": [{{"name": "fb", "from": [{{"header": "x-t"}}], {jwks}, {scope}}}]}}"#
            ));
            assert!(a.is_empty(), "{scope}: {a:?}");
        }
        let bound = |headers: &str| {
            advice(&format!(
                r#"{{"tokens": [{{"name": "a", "from": [{{"header": "x-t"}}], "issuer": "i",
                    "keys": [{{"alg": "HS256", "secret_base64": "{}"}}],
                    "binding": {{"headers": {headers}}}}}]}}"#,
                RANDOM_KEY.to_owned()
            ))
        };
        assert!(bound(r#"["authorization"]"#).is_empty());
        let two = bound(r#"["authorization", "x-device"]"#);
        assert_eq!(two.len(), 1, "{two:?}");
        assert!(two[0].starts_with("tokens[0] (a).binding: 2 headers"));
    }

    /// An `issuer` does not scope a JWKS whose issuer
    /// signs every client's tokens: Google signs every OAuth client's ID
    /// tokens under `https://accounts.google.com` with one JWKS (Apple
    /// likewise under `https://appleid.apple.com`), and only `aud` names
    /// the client. A provider with that issuer and no `audiences` (nor
    /// `app_claim` or `required_claims`) takes a token anyone mints for an
    /// app of their own; the advice must name it.
    #[test]
    fn advice_names_a_remote_jwks_scoped_by_its_issuer_alone() {
        let json = r#"{"tokens": [{"name": "google", "from": [{"header": "authorization", "prefix": "Bearer "}],
            "issuer": "https://accounts.google.com",
            "remote_jwks": {"cluster": "google", "path": "/oauth2/v3/certs"}}],
            "routes": [{"name": "r", "match": {"prefix": "/"}, "tokens": ["google"]}]}"#;
        let advice = Config::from_json(json.as_bytes()).unwrap().advisories();
        assert!(
            advice
                .iter()
                .any(|a| a.starts_with("tokens[0] (google): ") && a.contains("`audiences`")),
            "{advice:?}"
        );
    }

    #[test]
    fn advice_names_two_providers_of_one_signer_with_replay_tables_of_their_own() {
        let advice = |b_extra: &str| {
            let key = RANDOM_KEY.to_owned();
            Config::from_json(
                format!(
                    r#"{{"tokens": [
                        {{"name": "a", "from": [{{"header": "x-a"}}], "issuer": "i", "replay": {{}},
                          "keys": [{{"alg": "HS256", "secret_base64": "{key}"}}]}},
                        {{"name": "b", "from": [{{"header": "x-b"}}],
                          "keys": [{{"alg": "HS256", "secret_base64": "{key}"}}]{b_extra}}}],
                      "routes": [{{"name": "r", "match": {{"prefix": "/"}}, "tokens": ["a", "b"]}}]}}"#
                )
                .as_bytes(),
            )
            .unwrap()
            .advisories()
        };
        assert!(
            advice(r#", "issuer": "i""#).is_empty(),
            "b keeps no replay table"
        );
        let a = advice(r#", "issuer": "i", "replay": {}"#);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].starts_with(r#"tokens[0] (a) and tokens[1] (b): the same issuer "i""#),
            "{a:?}"
        );
        assert!(advice(r#", "replay": {}, "issuer": "j""#).is_empty());
        // b names no issuer: it takes a's tokens too.
        let a = advice(r#", "replay": {}"#);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].starts_with("tokens[0] (a) and tokens[1] (b): a key in common"),
            "{a:?}"
        );
        // Audiences that tell their tokens apart.
        let a = advice(r#", "issuer": "i", "replay": {}, "audiences": ["x"]"#);
        assert_eq!(a.len(), 1, "a takes any audience: {a:?}");
        // A claim b requires that a's tokens may lack: still one signer.
        let a = advice(r#", "replay": {}, "required_claims": {"tenant": 2}"#);
        assert_eq!(a.len(), 1, "{a:?}");
    }

    #[test]
    fn advice_names_two_providers_of_one_inline_key_with_replay_tables_of_their_own() {
        // README (`replay`): "two providers that accept the same tokens (one
        // issuer split in two for different bindings or platforms) each
        // accept a token once, which `check-config` points out". Approov
        // tokens carry no `iss`: split in two providers of one secret, both
        // with replay, a token is used once with each, and nothing is said.
        let key = RANDOM_KEY;
        let json = format!(
            r#"{{"tokens": [
                {{"name": "sms", "from": [{{"header": "approov-token"}}], "replay": {{}},
                  "keys": [{{"alg": "HS256", "secret_base64": "{key}"}}]}},
                {{"name": "login", "from": [{{"header": "approov-token"}}], "replay": {{}}, "forward": true,
                  "keys": [{{"alg": "HS256", "secret_base64": "{key}"}}]}}],
              "routes": [{{"name": "sms", "match": {{"prefix": "/sms"}}, "tokens": ["sms"]}},
                         {{"name": "login", "match": {{"prefix": "/login"}}, "tokens": ["login"]}}]}}"#
        );
        let a = Config::from_json(json.as_bytes()).unwrap().advisories();
        assert!(
            a.iter()
                .any(|x| x.starts_with("tokens[0] (sms) and tokens[1] (login)")),
            "{a:?}"
        );
    }

    #[test]
    fn advice_names_sections_that_do_nothing_and_settings_that_mislead() {
        let advice = |json: &str| Config::from_json(json.as_bytes()).unwrap().advisories();
        let hs = format!(
            r#""issuer": "i", "keys": [{{"alg": "HS256", "secret_base64": "{}"}}]"#,
            RANDOM_KEY.to_owned()
        );
        let route = |extra: &str| {
            format!(r#"{{"name": "r", "match": {{"prefix": "/"}}, "tokens": ["t"]{extra}}}"#)
        };
        let with = |provider: &str, routes: &str, rest: &str| {
            advice(&format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], {hs}{provider}}}],
                    "routes": [{routes}]{rest}}}"#
            ))
        };
        assert!(with("", &route(""), "").is_empty());
        // A preflight bypass without a web app to send preflights.
        let a = with("", &route(""), r#", "bypass_cors_preflight": true"#);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].starts_with("bypass_cors_preflight: no app has `platform: web`"));
        assert!(!a[0].contains("  "), "{}", a[0]);
        let web = r#", "bypass_cors_preflight": true,
            "apps": [{"id": "w", "platform": "web", "origins": ["https://shop.example.com"]}]"#;
        assert!(
            with("", &route(""), web).is_empty(),
            "{:?}",
            with("", &route(""), web)
        );
        // A provider no route lists.
        let a = with("", r#"{"name": "r", "match": {"prefix": "/"}}"#, "");
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].starts_with("tokens[0] (t): no route lists this provider"));
        // Platforms taken from the client's headers.
        let a = with(r#", "platforms": ["android"]"#, &route(""), "");
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].starts_with("tokens[0] (t).platforms: without `app_claim`"));
        assert!(with(
            r#", "platforms": ["android"], "app_claim": {"claim": "app"}"#,
            &route(""),
            ""
        )
        .is_empty());
        // A delegated payload from a namespace jwt_authn does not write.
        let delegated = |filter: &str| {
            advice(&format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], "issuer": "i",
                    "verified_by": {{"filter": "{filter}", "key": "p"}}}}], "routes": [{}]}}"#,
                route("")
            ))
        };
        assert!(delegated("envoy.filters.http.jwt_authn").is_empty());
        // A limit a client escapes by showing no app, or no optional key.
        let limited = |route: &str| {
            advice(&format!(
                r#"{{"apps": [{{"id": "a", "platform": "ios", "bundle_id": "b"}}],
                    "api_keys": {{"keys": [{{"id": "k", "sha256": "{}"}}]}},
                    "routes": [{route}]}}"#,
                "0".repeat(64)
            ))
        };
        let rule = |entry: &str, extra: &str| -> Vec<String> {
            limited(&format!(
                r#"{{"name": "otp", "match": {{"prefix": "/"}}{extra},
                    "rate_limits": [{{"name": "n", "entries": [{{"type": "{entry}"}}],
                                      "local": {{"requests": 1, "per": "hour"}}}}]}}"#
            ))
            .into_iter()
            .filter(|a| a.starts_with("routes ("))
            .collect()
        };
        for (entry, extra) in [
            ("app", ""),
            ("platform", ""),
            ("api_key", r#", "api_key": "optional""#),
        ] {
            let a = rule(entry, extra);
            assert_eq!(a.len(), 1, "{entry}: {a:?}");
            assert!(
                a[0].starts_with("routes (otp).rate_limits (n): a request without"),
                "{a:?}"
            );
        }
        assert!(rule("app", r#", "platforms": ["ios"]"#).is_empty());
        // Following the advice clears it.
        let both = limited(
            r#"{"name": "otp", "match": {"prefix": "/"},
                "rate_limits": [{"name": "n", "entries": [{"type": "app"}],
                                 "local": {"requests": 1, "per": "hour"}},
                                {"name": "ip", "entries": [{"type": "client_ip"}],
                                 "local": {"requests": 5, "per": "hour"}}]}"#,
        );
        assert!(!both.iter().any(|a| a.starts_with("routes (")), "{both:?}");
        // A required token that names the app always establishes one.
        let app_rule = r#", "rate_limits": [{"name": "n", "entries": [{"type": "app"}],
                                 "local": {"requests": 1, "per": "hour"}}]"#;
        let apps = r#", "apps": [{"id": "a", "platform": "ios", "bundle_id": "b"}]"#;
        let named = with(r#", "app_claim": {"claim": "app"}"#, &route(app_rule), apps);
        assert!(
            !named.iter().any(|a| a.starts_with("routes (")),
            "{named:?}"
        );
        let unnamed = with("", &route(app_rule), apps);
        assert!(
            unnamed.iter().any(|a| a.starts_with("routes (r)")),
            "{unnamed:?}"
        );
        assert!(rule("api_key", r#", "api_key": "required""#).is_empty());
        assert!(rule("client_ip", "").is_empty());
        // A per-IP limit written as a header the client writes into.
        for h in [
            "x-forwarded-for",
            "X_Forwarded_For",
            "forwarded",
            "x-real-ip",
        ] {
            let a = limited(&format!(
                r#"{{"name": "otp", "match": {{"prefix": "/"}},
                    "rate_limits": [{{"name": "n", "entries": [{{"type": "header", "name": "{h}"}}],
                                      "local": {{"requests": 1, "per": "hour"}}}}]}}"#
            ));
            assert!(
                a.iter().any(|a| a.contains("use a `client_ip` entry")),
                "{h}: {a:?}"
            );
        }
        // Per-address IPv6 budgets and limits: one /64 holds many.
        let per_ip = |v6: u8| {
            rule("client_ip", "")
                .into_iter()
                .chain(limited(&format!(
                    r#"{{"name": "otp", "match": {{"prefix": "/"}},
                        "rate_limits": [{{"name": "n",
                            "entries": [{{"type": "client_ip", "v6_prefix": {v6}}}],
                            "local": {{"requests": 1, "per": "hour"}}}}]}}"#
                )))
                .filter(|a| a.starts_with("routes ("))
                .collect::<Vec<_>>()
        };
        assert!(per_ip(64).is_empty());
        assert!(per_ip(48).is_empty());
        let a = per_ip(128);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].starts_with(
                "routes (otp).rate_limits (n): a `client_ip` entry with v6_prefix 128"
            ),
            "{a:?}"
        );
        let budget = |v6: u8, failures: u32| {
            with(
                &format!(r#", "failure_budget": {{"failures": {failures}, "v6_prefix": {v6}}}"#),
                &route(""),
                "",
            )
        };
        assert!(budget(64, 20).is_empty());
        assert!(
            budget(128, 0).is_empty(),
            "a disabled budget has no prefix to advise on"
        );
        let a = budget(96, 20);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].starts_with("tokens[0] (t).failure_budget.v6_prefix: 96 counts parts of a /64"),
            "{a:?}"
        );
        let a = delegated("envoy.filters.http.header_to_metadata");
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].contains(".verified_by.filter:"), "{a:?}");
        // Single-use signed requests held for a day: a few a second fill
        // the table.
        let signing = |age: u32| {
            with(
                &format!(
                    r#", "message_signing": {{"single_use": true, "max_age_seconds": {age}}}"#
                ),
                &route(""),
                "",
            )
        };
        assert!(signing(300).is_empty());
        let a = signing(86_400);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].contains("above about 3 signed requests a second"),
            "{a:?}"
        );
        // A rate-limit service nothing calls.
        let service = r#", "rate_limit_service": {"cluster": "rls", "domain": "d"}"#;
        let a = with("", &route(""), service);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].starts_with("rate_limit_service: no rate limit calls it"),
            "{a:?}"
        );
        let called = route(r#", "rate_limits": [{"entries": [{"type": "client_ip"}]}]"#);
        assert!(with("", &called, service).is_empty());
        assert!(with(
            r#", "replay": {"claim": "jti", "scope": "service"}"#,
            &route(""),
            service
        )
        .is_empty());
        // Denied prefixes no route checks; keys no route reads.
        // A random key (a text or repeated one is advised against too).
        let phone = format!(
            r#", "phone": {{"hash_key_base64": "{RANDOM_KEY}", "denied_prefixes": ["+882"]}}"#
        );
        let a = with("", &route(""), &phone);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].starts_with("phone.denied_prefixes: no route reads"));
        let read = route(
            r#", "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                "local": {"requests": 1, "per": "hour"}}]"#,
        );
        assert!(with("", &read, &phone).is_empty(), "{read}");
        // A route that refuses every request: a required key with none to
        // use there, or a platform no app has.
        let refusing = |route: &str, keys: &str| {
            advice(&format!(
                r#"{{"apps": [{{"id": "a", "platform": "ios", "bundle_id": "b"}}],
                    "api_keys": {{"keys": [{keys}]}}, "routes": [{route},
                    {{"name": "other", "match": {{"prefix": "/o/"}}, "api_key": "optional"}}]}}"#
            ))
        };
        let key = |extra: &str| format!(r#"{{"id": "k", "sha256": "{}"{extra}}}"#, "0".repeat(64));
        let required = r#"{"name": "pay", "match": {"prefix": "/p/"}, "api_key": "required"}"#;
        assert!(refusing(required, &key("")).is_empty());
        for keys in [
            String::new(),
            key(r#", "disabled": true"#),
            key(r#", "routes": ["other"]"#),
        ] {
            let a = refusing(required, &keys);
            assert_eq!(a.len(), 1, "{keys}: {a:?}");
            assert!(
                a[0].starts_with("routes (pay).api_key: required, and no enabled key"),
                "{a:?}"
            );
        }
        let denied = r#"{"name": "pay", "match": {"prefix": "/p/"}, "api_key": "required", "action": "deny"}"#;
        assert!(
            refusing(denied, "").is_empty(),
            "a route that denies says so itself"
        );
        let android =
            r#"{"name": "pay", "match": {"prefix": "/p/"}, "platforms": ["ios", "android"]}"#;
        let a = refusing(android, &key(""));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            a[0],
            "routes (pay).platforms: no app of platform `android`: its requests are refused"
        );
        let keys = r#", "api_keys": {"keys": [{"id": "k", "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}]}"#;
        let a = with("", &route(""), keys);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].starts_with("api_keys.keys: every route has `api_key: none`"));
        assert!(with("", &route(r#", "api_key": "optional""#), keys).is_empty());
    }

    #[test]
    fn a_name_field_given_another_kind_of_value_says_so() {
        // serde_json says only `expected value`, which reads as a syntax
        // error, where a value of the wrong kind is written.
        for (doc, path, said) in [
            (r#"{"mode": null}"#, "mode", "null is not allowed here: leave the field out"),
            (
                r#"{"routes": [{"name": "a", "match": {"prefix": "/"}, "api_key": true}]}"#,
                "routes[0].api_key",
                "found a boolean",
            ),
            (r#"{"mode": 3}"#, "mode", "found a number"),
            (
                "{\n\"routes\": [{\"name\": \"a\", \"match\": {\"prefix\": \"/\"},\n \"platforms\": [false]}]}",
                "routes[0].platforms[0]",
                "found a boolean (at line 3 column",
            ),
        ] {
            let e = err(doc);
            assert_eq!(e.path, path, "{doc}");
            assert!(e.message.contains(said), "{doc}: {e}");
        }
        // A syntax error stays one.
        let e = err(r#"{"mode": NaN}"#);
        assert!(e.message.starts_with("expected value"), "{e}");
    }

    #[test]
    fn a_cluster_is_a_name_and_a_url_there_is_refused_unshown() {
        let hook = "https://hooks.slack.com/services/T0AB12CD3/B0EF45GH6/q8Wx3Zk";
        for (cluster, shown) in [(hook, false), ("my hook", true), ("a\\tb", true)] {
            let docs = [
                (
                    format!(r#"{{"alerts": {{"cluster": "{cluster}"}}}}"#),
                    "alerts.cluster",
                ),
                (
                    format!(
                        r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], "issuer": "i",
                            "remote_jwks": {{"cluster": "{cluster}", "path": "/jwks"}}}}]}}"#
                    ),
                    "tokens[0].remote_jwks.cluster",
                ),
                (
                    format!(
                        r#"{{"rate_limit_service": {{"cluster": "{cluster}", "domain": "d"}}}}"#
                    ),
                    "rate_limit_service.cluster",
                ),
            ];
            for (doc, path) in docs {
                let e = err(&doc);
                assert_eq!(e.path, path, "{doc}");
                assert!(e.message.contains("must name an Envoy cluster"), "{e}");
                if !shown {
                    assert!(!e.to_string().contains("hooks.slack.com"), "{e}");
                }
            }
        }
        for ok in [
            "alerts",
            "outbound|8081||ratelimit.appguard.svc.cluster.local",
        ] {
            let doc = format!(r#"{{"alerts": {{"cluster": "{ok}"}}}}"#);
            assert!(Config::from_json(doc.as_bytes()).is_ok(), "{doc}");
        }
    }

    #[test]
    fn a_header_is_an_api_key_or_a_token_and_calls_go_to_a_host() {
        let hs = format!(
            r#"[{{"alg": "HS256", "secret_base64": "{}"}}]"#,
            "a".repeat(44)
        );
        let doc = |api_key: &str| {
            format!(
                r#"{{"api_keys": {{"header": "authorization"}},
                    "tokens": [{{"name": "t", "from": [{{"header": "x-t"}}, {{"header": "Authorization", "prefix": "Bearer "}}], "keys": {hs}}}],
                    "routes": [{{"name": "r", "match": {{"prefix": "/"}}, "tokens": ["t"], "api_key": "{api_key}"}}]}}"#
            )
        };
        let e = err(&doc("optional"));
        assert_eq!(e.path, "tokens[0].from[1].header");
        assert!(Config::from_json(doc("none").as_bytes()).is_ok());
        // Keys on one route, the token on another: each header means one
        // thing per route.
        let apart = format!(
            r#"{{"api_keys": {{"header": "authorization"}},
                "tokens": [{{"name": "t", "from": [{{"header": "authorization", "prefix": "Bearer "}}], "keys": {hs}}}],
                "routes": [{{"name": "v2", "match": {{"prefix": "/v2/"}}, "tokens": ["t"]}},
                           {{"name": "legacy", "match": {{"prefix": "/"}}, "api_key": "required"}}]}}"#
        );
        assert!(Config::from_json(apart.as_bytes()).is_ok(), "{apart}");
        for (authority, path) in [
            (r#""authority": "https://keys.example.com""#, "/jwks"),
            (r#""authority": """#, "/jwks"),
            (r#""authority": "keys.example.com/x""#, "/jwks"),
            (r#""authority": "keys.example.com""#, "/jwks#frag"),
            (r#""authority": "keys.example.com""#, "/a b"),
            (r#""authority": "keys.example.com:abc""#, "/jwks"),
            (r#""authority": "keys.example.com:""#, "/jwks"),
            (r#""authority": "keys.example.com:70000""#, "/jwks"),
            (r#""authority": "2001:db8::1""#, "/jwks"),
            (r#""authority": "[::1""#, "/jwks"),
        ] {
            let e = err(&format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], "issuer": "i",
                    "remote_jwks": {{"cluster": "jwks", {authority}, "path": "{path}"}}}}]}}"#
            ));
            assert!(
                e.path.starts_with("tokens[0].remote_jwks."),
                "{authority} {path}: {e}"
            );
            let e = err(&format!(
                r#"{{"alerts": {{"cluster": "hook", {authority}, "path": "{path}"}}}}"#
            ));
            assert!(e.path.starts_with("alerts."), "{authority} {path}: {e}");
        }
        for authority in [
            "keys.example.com",
            "10.0.0.7:8080",
            "[2001:db8::1]:443",
            "[::1]",
            "jwks_cluster",
            "a.b.c:65535",
        ] {
            let ok = format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], "issuer": "i",
                    "remote_jwks": {{"cluster": "jwks", "authority": "{authority}", "path": "/v1/jwks?x=1"}}}}]}}"#
            );
            assert!(Config::from_json(ok.as_bytes()).is_ok(), "{authority}");
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
    fn an_istio_cluster_name_gives_its_service_host_as_authority() {
        assert_eq!(
            default_authority("outbound|443||firebaseappcheck.googleapis.com"),
            "firebaseappcheck.googleapis.com"
        );
        assert_eq!(
            default_authority("outbound|8081|v1|ratelimit.appguard.svc.cluster.local"),
            "ratelimit.appguard.svc.cluster.local"
        );
        assert_eq!(default_authority("jwks"), "jwks");
        assert_eq!(default_authority("outbound|443||"), "outbound|443||");
    }

    #[test]
    fn a_rate_limit_cluster_name_envoy_would_read_as_a_grpc_service_is_refused() {
        for parses in ["h2", "hx", "(0", "\u{8}\u{1}"] {
            assert!(reads_as_protobuf(parses.as_bytes()), "{parses:?}");
            let e = err(&format!(
                r#"{{"rate_limit_service": {{"cluster": {parses:?}, "domain": "d"}}}}"#
            ));
            assert_eq!(e.path, "rate_limit_service.cluster", "{e}");
        }
        for name in [
            "ratelimit",
            "rls",
            "outbound|8081||ratelimit.appguard.svc.cluster.local",
            "rate_limit_cluster",
            "appguard-ratelimit",
        ] {
            assert!(!reads_as_protobuf(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn only_an_object_is_a_config() {
        for doc in ["[]", " [\"monitor\", \"deny\"]", "\"x\"", "1", "null"] {
            let e = err(doc);
            assert!(e.message.contains("JSON object"), "{doc}: {e}");
        }
        // One object and nothing after it but whitespace: a stray `}`
        // would otherwise drop the routes after it, and with them every
        // check (`default_action: allow`).
        for doc in [
            r#"{"default_action": "allow"}, "routes": [{"name": "admin",
                "match": {"prefix": "/admin/"}, "action": "deny"}]}"#,
            r#"{"default_action": "allow"} {"default_action": "deny"}"#,
            "{} this is not JSON",
            "{}}",
        ] {
            let e = err(doc);
            assert_eq!(e.path, "", "{doc}: {e}");
            assert!(
                e.message
                    .starts_with("something follows the configuration's object"),
                "{doc}: {e}"
            );
        }
        assert!(Config::from_json(b" {} \n\t\r\n").is_ok());
    }

    #[test]
    fn a_required_claim_written_twice_is_refused() {
        let doc = |claims: &str| {
            format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], "issuer": "i",
                    "keys": [{{"alg": "HS256", "secret_base64": "{}"}}],
                    "required_claims": {claims}}}]}}"#,
                "a".repeat(44)
            )
        };
        let e = err(&doc(r#"{"tier": "gold", "tier": "free"}"#));
        assert_eq!(e.path, "tokens[0].required_claims", "{e}");
        assert!(e.message.starts_with(r#""tier" is written twice"#), "{e}");
        let c = Config::from_json(doc(r#"{"tier": "gold", "plan": {"a": 1}}"#).as_bytes()).unwrap();
        assert_eq!(c.providers[0].required_claims.len(), 2);
        assert!(Config::from_json(doc("{}").as_bytes()).is_ok());
        assert_eq!(err(&doc("[]")).path, "tokens[0].required_claims");
    }

    #[test]
    fn a_setting_written_null_is_refused_not_left_out() {
        // YAML's empty value (`issuer:`) is null: read as "not set" it
        // would switch the check off.
        let hs = format!(
            r#""keys": [{{"alg": "HS256", "secret_base64": "{}"}}]"#,
            "a".repeat(44)
        );
        let provider = |field: &str| {
            format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], {hs}, "issuer": "i",
                    {field}}}], "routes": [{{"name": "r", "match": {{"prefix": "/"}},
                    "tokens": ["t"]}}]}}"#
            )
        };
        for field in [
            "binding",
            "replay",
            "app_claim",
            "message_signing",
            "failure_budget",
        ] {
            let e = err(&provider(&format!(r#""{field}": null"#)));
            assert_eq!(e.path, format!("tokens[0].{field}"), "{e}");
            assert!(
                e.message
                    .starts_with("invalid type: null, expected an object"),
                "{e}"
            );
        }
        let e = err(&provider(
            r#""remote_jwks": {"cluster": "c", "path": "/k", "authority": null}"#,
        ));
        assert_eq!(e.path, "tokens[0].remote_jwks.authority", "{e}");
        let e = err(&provider(r#""jwks": null"#));
        assert_eq!(e.path, "tokens[0].jwks", "{e}");
        let e = err(
            &provider(r#""issuer": null, "audiences": ["a"]"#).replace(r#""issuer": "i","#, "")
        );
        assert_eq!(e.path, "tokens[0].issuer", "{e}");
        assert!(
            e.message
                .starts_with("invalid type: null, expected a string"),
            "{e}"
        );
        for (doc, path) in [
            (r#"{"network": null}"#, "network"),
            (r#"{"client_ip": null}"#, "client_ip"),
            (r#"{"api_keys": null}"#, "api_keys"),
            (r#"{"phone": null}"#, "phone"),
            (r#"{"alerts": null}"#, "alerts"),
            (r#"{"rate_limit_service": null}"#, "rate_limit_service"),
            (
                r#"{"platform_headers": {"ios_team_id": null}}"#,
                "platform_headers.ios_team_id",
            ),
            (
                r#"{"network": {"country_header": null}}"#,
                "network.country_header",
            ),
            (
                r#"{"apps": [{"id": "a", "platform": "ios", "bundle_id": "b", "team_id": null}]}"#,
                "apps[0].team_id",
            ),
            (
                r#"{"api_keys": {"query_param": null}}"#,
                "api_keys.query_param",
            ),
            (
                r#"{"routes": [{"name": "r", "match": {"prefix": "/"}, "network": null}]}"#,
                "routes[0].network",
            ),
            (
                r#"{"routes": [{"name": "r", "match": {"prefix": "/"}, "mode": null}]}"#,
                "routes[0].mode",
            ),
            (
                r#"{"routes": [{"name": "r", "match": {"prefix": "/"}, "token_required": null}]}"#,
                "routes[0].token_required",
            ),
            (
                r#"{"routes": [{"name": "r", "match": {"prefix": null, "path": "/"}}]}"#,
                "routes[0].match.prefix",
            ),
            (
                r#"{"routes": [{"name": "r", "match": {"prefix": "/"}, "rate_limits": [{"name": null,
                 "entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "hour"}}]}]}"#,
                "routes[0].rate_limits[0].name",
            ),
            (
                r#"{"routes": [{"name": "r", "match": {"prefix": "/"}, "rate_limits": [{
                 "entries": [{"type": "client_ip"}], "local": null}]}]}"#,
                "routes[0].rate_limits[0].local",
            ),
            (
                r#"{"routes": [{"name": "r", "match": {"prefix": "/"}, "rate_limits": [{
                 "entries": [{"type": "route", "key": null}], "local": {"requests": 1, "per": "hour"}}]}]}"#,
                "routes[0].rate_limits[0].entries[0].key",
            ),
        ] {
            let e = err(doc);
            assert_eq!(e.path, path, "{doc}: {e}");
            // (serde_json says only `expected value` for an enum's name:
            // that is said plainly.)
            assert!(
                e.message.starts_with("invalid type: null, expected")
                    || e.message.starts_with("null is not allowed here"),
                "{doc}: {e}"
            );
            assert!(!e.message.contains("Raw"), "{doc}: {e}");
        }
        // Left out, each is still optional.
        assert!(Config::from_json(provider(r#""forward": false"#).as_bytes()).is_ok());
    }

    #[test]
    fn errors_never_show_a_string_value() {
        // A bare secret where a key object belongs: Envoy logs the message.
        let e =
            err(r#"{"tokens":[{"name":"p","from":[{"header":"x"}],"keys":["s3cr\"et\\-value"]}]}"#);
        assert_eq!(e.path, "tokens[0].keys[0]");
        assert!(!e.message.contains("s3cr"), "{e}");
        assert!(!e.message.contains("value"), "{e}");
        assert!(e.message.contains("invalid type: a string"), "{e}");
        assert_eq!(
            without_string_values(r#"invalid value: string "a\"b", expected x; string "c"#),
            "invalid value: a string, expected x; a string"
        );
        // Nor a number written where a string belongs (a numeric secret or
        // key, unquoted); a range error keeps its number.
        let e = err(
            r#"{"tokens":[{"name":"p","from":[{"header":"x"}],"keys":[{"secret_base64":12345678901234567890}]}]}"#,
        );
        assert_eq!(e.path, "tokens[0].keys[0].secret_base64");
        assert!(!e.message.contains("1234"), "{e}");
        assert!(e.message.contains("invalid type: an integer"), "{e}");
        let e = err(r#"{"api_keys":{"keys":[{"id":"k","sha256":1.5e300}]}}"#);
        assert!(!e.message.contains("1.5"), "{e}");
        assert!(e.message.contains("invalid type: a number"), "{e}");
        assert_eq!(
            without_string_values("invalid value: integer `5000`, expected u8"),
            "invalid value: integer `5000`, expected u8"
        );
    }

    #[test]
    fn an_unmatched_request_has_one_route_label_everywhere() {
        let c =
            Config::from_json(br#"{"routes":[{"name":"sms","match":{"prefix":"/sms"}}]}"#).unwrap();
        assert_eq!(c.route_label(Some(0)), "sms");
        assert_eq!(c.route_label(None), "_unmatched");
        assert_eq!(c.route_label(Some(1)), "_unmatched");
        let e = err(r#"{"routes":[{"name":"_unmatched","match":{"prefix":"/"}}]}"#);
        assert_eq!(e.path, "routes[0].name");
    }

    #[test]
    fn errors_never_show_a_secret_written_where_a_name_belongs() {
        // An API key as the value of a route's `api_key`, or as a field of
        // `api_keys`: serde names unknown variants and fields in the
        // message (and fields in the path), and Envoy logs both.
        for doc in [
            r#"{"routes":[{"name":"a","match":{"prefix":"/"},"api_key":"AIzaSyREALKEY0123"}]}"#,
            r#"{"api_keys":{"AIzaSyREALKEY0123":"android"}}"#,
            r#"{"api_keys":{"k3y-0123456789abcdef":"android"}}"#,
        ] {
            let e = err(doc);
            let shown = format!("{e} {}", e.path);
            assert!(
                !shown.contains("AIzaSy") && !shown.contains("0123456789"),
                "{shown}"
            );
        }
        let e = err(
            r#"{"routes":[{"name":"a","match":{"prefix":"/"},"api_key":"AIzaSyREALKEY0123"}]}"#,
        );
        assert_eq!(e.path, "routes[0].api_key");
        assert!(
            e.message
                .contains("unknown variant `?`, expected one of `none`"),
            "{e}"
        );
        let e = err(r#"{"api_keys":{"AIzaSyREALKEY0123":"android"}}"#);
        assert_eq!(e.path, "api_keys.?");
        // A key pasted as a value where a name or a header belongs: the
        // checks after parsing quote only what reads like one.
        let key = "AIzaSyD4-Example9Key_0123456789abcdefXY";
        for (doc, path) in [
            (
                format!(r#"{{"api_keys":{{"header":"{key}+"}}}}"#),
                "api_keys.header",
            ),
            (
                format!(
                    r#"{{"routes":[{{"name":"a","match":{{"prefix":"/"}},"tokens":["{key}"]}}]}}"#
                ),
                "routes[0].tokens[0]",
            ),
            (
                format!(r#"{{"network":{{"country_header":"x-c","country_deny":["{key}"]}}}}"#),
                "network.country_deny[0]",
            ),
            (
                format!(
                    r#"{{"apps":[{{"id":"a","platform":"ios","bundle_id":"b"}}],
                    "api_keys":{{"keys":[{{"id":"k","sha256":"{}","apps":["{key}"]}}]}},
                    "routes":[{{"name":"r","match":{{"prefix":"/"}},"api_key":"required"}}]}}"#,
                    "0".repeat(64)
                ),
                "api_keys.keys[0].apps[0]",
            ),
        ] {
            let e = err(&doc);
            assert_eq!(e.path, path, "{e}");
            assert!(!e.message.contains("AIzaSy"), "{e}");
            assert!(e.message.contains("(not shown: it may be a secret)"), "{e}");
        }
        // A name is still quoted.
        let e = err(r#"{"routes":[{"name":"a","match":{"prefix":"/"},"tokens":["firebase"]}]}"#);
        assert_eq!(e.message, r#"no token provider named "firebase""#);
        assert_eq!(
            without_odd_names("routes[0].rate_limits[1].entries[2]"),
            "routes[0].rate_limits[1].entries[2]"
        );
        assert_eq!(without_odd_names("a.B[3]"), "a.?[3]");
        // A backtick inside the name hides nothing of it.
        let e = err(r#"{"api_keys":{"ab`SECRETKEY1234":"android"}}"#);
        assert!(!format!("{e} {}", e.path).contains("SECRET"), "{e}");
        // What is a name is shown, and the names expected always.
        let e = err(r#"{"tokens":[{"name":"t","from":[{"header":"x"}],"maxLifetimeSeconds":60}]}"#);
        assert_eq!(e.path, "tokens[0].maxLifetimeSeconds");
        assert!(
            e.message
                .contains("unknown field `maxLifetimeSeconds`, expected one of `name`"),
            "{e}"
        );
        let e = err(
            r#"{"tokens":[{"name":"t","from":[{"header":"x"}],"keys":[{"alg":"hs256","secret_base64":"x"}]}]}"#,
        );
        assert!(
            e.message
                .contains("unknown variant `hs256`, expected one of `HS256`"),
            "{e}"
        );
        // An expected name in another case is shown, whatever its case.
        let e = err(r#"{"default_action":"Allow"}"#);
        assert!(
            e.message
                .contains("unknown variant `Allow`, expected `allow` or `deny`"),
            "{e}"
        );
        let e = err(
            r#"{"tokens":[{"name":"t","from":[{"header":"x"}],"keys":[{"alg":"Hs256","secret_base64":"x"}]}]}"#,
        );
        assert!(e.message.contains("unknown variant `Hs256`"), "{e}");
        let e = err(r#"{"default_action":"AllowAIzaSyREALKEY0123"}"#);
        assert!(e.message.contains("unknown variant `?`"), "{e}");
        // A duration written where a unit belongs is shown as written: it
        // is too short to be a secret. A longer value that starts with a
        // digit is not.
        let limit = |per: &str| {
            err(&format!(
                r#"{{"routes":[{{"name":"a","match":{{"prefix":"/"}},
                "rate_limits":[{{"entries":[{{"type":"client_ip"}}],"local":{{"requests":5,"per":"{per}"}}}}]}}]}}"#
            ))
        };
        for per in ["5m", "3600s", "2enforce"] {
            let e = limit(per);
            assert!(
                e.message.contains(&format!(
                    "unknown variant `{per}`, expected one of `second`"
                )),
                "{e}"
            );
        }
        let e = limit("1234567890abcdef");
        assert!(e.message.contains("unknown variant `?`"), "{e}");
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
    fn a_method_is_any_token_and_an_unregistered_one_gets_advice() {
        let route = |methods: &str| {
            Config::from_json(
                format!(
                    r#"{{"routes": [{{"name": "sms", "match": {{"path": "/v1/sms", "methods": {methods}}},
                        "api_key": "optional"}}]}}"#
                )
                .as_bytes(),
            )
        };
        // A typo never takes POST: its requests fall through, so it is named.
        let c = route(r#"["PSOT"]"#).unwrap();
        assert!(!method_matches(&c.routes[0].methods, "POST"));
        let a = c.advisories();
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].starts_with(r#"routes (sms).match.methods: "PSOT" is not a registered"#),
            "{a:?}"
        );
        // RFC 9110 tokens (UPnP's `M-SEARCH`) are methods too; compared
        // without case, as requests are.
        let c = route(r#"["m-search", "get", "Propfind", "PATCH"]"#).unwrap();
        assert!(method_matches(&c.routes[0].methods, "M-SEARCH"));
        let a = c.advisories();
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].contains(r#""M-SEARCH" is not a registered"#), "{a:?}");
        assert!(route(r#"["GET", "post", "DELETE"]"#)
            .unwrap()
            .advisories()
            .is_empty());
        for bad in [r#""P ST""#, r#""GET,POST""#, r#""GET/1""#, r#""""#] {
            let e = route(&format!("[{bad}]")).unwrap_err();
            assert_eq!(e.path, "routes[0].match.methods[0]", "{bad}");
        }
    }

    #[test]
    fn a_configuration_that_checks_nothing_or_names_a_reserved_country_is_advised_on() {
        let advice = |json: &str| Config::from_json(json.as_bytes()).unwrap().advisories();
        for empty in ["{}", r#"{"routes": []}"#, r#"{"default_action": "allow"}"#] {
            let a = advice(empty);
            assert!(
                a.iter()
                    .any(|x| x.starts_with("no routes, and default_action allow")),
                "{empty}: {a:?}"
            );
        }
        assert!(advice(r#"{"default_action": "deny"}"#).is_empty());
        let a = advice(
            r#"{"network": {"country_header": "x-country", "country_deny": ["KP", "UK"]},
                "routes": [{"name": "r", "match": {"prefix": "/"},
                            "network": {"country_header": "x-country", "country_allow": ["el", "DE"]}}]}"#,
        );
        assert_eq!(
            a,
            [
                "network.country_deny: UK is a code ISO 3166 reserves, and geolocation headers \
                 never carry it: that country is GB",
                "routes[0].network.country_allow: EL is a code ISO 3166 reserves, and \
                 geolocation headers never carry it: that country is GR",
            ]
        );
    }

    #[test]
    fn alert_settings_out_of_range_are_refused_with_their_field() {
        let base = r#""cluster":"hooks","path":"/alerts""#;
        for (field, bad) in [
            ("threshold", "0"),
            ("window_seconds", "0"),
            ("window_seconds", "86401"),
            ("max_alerts_per_window", "0"),
            ("timeout_ms", "0"),
            ("timeout_ms", "60001"),
            ("summarize_suppressed", r#""yes""#),
            ("summarize_suppressed", "1"),
        ] {
            let e = err(&format!(r#"{{"alerts":{{{base},"{field}":{bad}}}}}"#));
            assert_eq!(e.path, format!("alerts.{field}"), "{field}: {bad}");
        }
        let ok =
            Config::from_json(format!(r#"{{"alerts":{{{base},"timeout_ms":60000}}}}"#).as_bytes());
        assert_eq!(ok.unwrap().alerts.map(|a| a.timeout_ms), Some(60_000));
        // summaries of suppressed alerts are on unless turned off
        let on = Config::from_json(format!(r#"{{"alerts":{{{base}}}}}"#).as_bytes());
        assert_eq!(
            on.ok()
                .and_then(|c| c.alerts)
                .map(|a| a.summarize_suppressed),
            Some(true)
        );
        let off = Config::from_json(
            format!(r#"{{"alerts":{{{base},"summarize_suppressed":false}}}}"#).as_bytes(),
        );
        assert_eq!(
            off.ok()
                .and_then(|c| c.alerts)
                .map(|a| a.summarize_suppressed),
            Some(false)
        );
    }

    #[test]
    fn a_route_that_an_earlier_one_covers_is_refused() {
        // The catch-all first: the SMS route's token and limits would never apply.
        let e = err(r#"{"routes":[{"name":"all","match":{"prefix":"/"}},
                {"name":"sms","match":{"path":"/v1/sms","methods":["POST"]}}]}"#);
        assert_eq!(e.path, "routes[1].match");
        assert!(e.message.contains("\"all\""), "{e}");
        let two = |a: &str, b: &str| {
            format!(r#"{{"routes":[{{"name":"a","match":{a}}},{{"name":"b","match":{b}}}]}}"#)
        };
        for (a, b) in [
            (r#"{"prefix":"/v1/sms"}"#, r#"{"prefix":"/v1/sms/bulk"}"#),
            (r#"{"path":"/v1/sms"}"#, r#"{"path":"/v1/sms"}"#),
            (
                r#"{"prefix":"/v1/","methods":["POST","GET"]}"#,
                r#"{"prefix":"/v1/x","methods":["post"]}"#,
            ),
            (
                r#"{"prefix":"/","hosts":["*.example.com"]}"#,
                r#"{"prefix":"/a","hosts":["api.example.com","*.x.example.com"]}"#,
            ),
        ] {
            let json = two(a, b);
            assert_eq!(err(&json).path, "routes[1].match", "{json}");
        }
        // Reachable: narrower first, or the earlier one leaves some requests out.
        for (a, b) in [
            (r#"{"path":"/v1/sms"}"#, r#"{"prefix":"/"}"#),
            (r#"{"path":"/v1/sms"}"#, r#"{"prefix":"/v1/sms"}"#),
            (
                r#"{"prefix":"/v1/","methods":["GET"]}"#,
                r#"{"prefix":"/v1/x"}"#,
            ),
            (
                r#"{"prefix":"/v1/","methods":["GET"]}"#,
                r#"{"prefix":"/v1/x","methods":["GET","POST"]}"#,
            ),
            (
                r#"{"prefix":"/","hosts":["api.example.com"]}"#,
                r#"{"prefix":"/a"}"#,
            ),
            (
                r#"{"prefix":"/","hosts":["*.example.com"]}"#,
                r#"{"prefix":"/a","hosts":["example.com"]}"#,
            ),
        ] {
            let json = two(a, b);
            assert!(Config::from_json(json.as_bytes()).is_ok(), "{json}");
        }
    }

    #[test]
    fn errors_in_phone_rules_and_failure_budgets_name_the_field() {
        let hash = format!(r#""hash_key_base64": "{}""#, "a".repeat(44));
        for (phone, path) in [
            (
                r#""default_calling_code": "044""#,
                "phone.default_calling_code",
            ),
            // `44` mistyped: no number has a calling code of its length.
            (
                r#""default_calling_code": "440""#,
                "phone.default_calling_code",
            ),
            (r#""national_prefix": "0000""#, "phone.national_prefix"),
        ] {
            let e = err(&format!(r#"{{"phone": {{{phone}, {hash}}}}}"#));
            assert_eq!(e.path, path, "{e}");
        }
        for (budget, path) in [
            (r#""v4_prefix": 33"#, "tokens[0].failure_budget.v4_prefix"),
            (r#""v6_prefix": 0"#, "tokens[0].failure_budget.v6_prefix"),
            (
                r#""window_seconds": 0"#,
                "tokens[0].failure_budget.window_seconds",
            ),
        ] {
            let e = err(&format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}],
                    "keys": [{{"alg": "HS256", "secret_base64": "{}"}}],
                    "failure_budget": {{{budget}}}}}]}}"#,
                "a".repeat(44)
            ));
            assert_eq!(e.path, path, "{e}");
        }
    }

    #[test]
    fn a_claim_issuer_or_metadata_name_written_empty_is_refused() {
        let hs = format!(
            r#""keys": [{{"alg": "HS256", "secret_base64": "{}"}}]"#,
            "a".repeat(44)
        );
        let doc = |source: &str, keys: &str, extra: &str| {
            format!(
                r#"{{"tokens": [{{"name": "t", "from": [{source}], {keys}{extra}}}],
                    "routes": [{{"name": "r", "match": {{"prefix": "/"}}, "tokens": ["t"]}}]}}"#
            )
        };
        let x_t = r#"{"header": "x-t"}"#;
        for (extra, path) in [
            (
                r#", "binding": {"claim": "", "headers": ["authorization"]}"#,
                "binding.claim",
            ),
            (r#", "app_claim": {"claim": " "}"#, "app_claim.claim"),
            (r#", "replay": {"claim": ""}"#, "replay.claim"),
            (
                r#", "message_signing": {"claim": "", "required": false}"#,
                "message_signing.claim",
            ),
            (
                r#", "claim_to_headers": [{"claim": "", "header": "x-user"}]"#,
                "claim_to_headers[0].claim",
            ),
            (r#", "issuer": """#, "issuer"),
            (r#", "audiences": ["a", "	"]"#, "audiences[1]"),
        ] {
            let e = err(&doc(x_t, &hs, extra));
            assert_eq!(e.path, format!("tokens[0].{path}"), "{e}");
        }
        for (by, path) in [
            (r#"{"filter": "", "key": "payload"}"#, "verified_by.filter"),
            (r#"{"key": ""}"#, "verified_by.key"),
        ] {
            let by = format!(r#""verified_by": {by}, "issuer": "i""#);
            let e = err(&doc(x_t, &by, ""));
            assert_eq!(e.path, format!("tokens[0].{path}"), "{e}");
        }
        // A prefix no header value can hold: no token would ever be found.
        for prefix in [r"Bearer\n", r"Bearer\u0000", r"\u007f"] {
            let source = format!(r#"{{"header": "x-t", "prefix": "{prefix}"}}"#);
            let e = err(&doc(&source, &hs, ""));
            assert_eq!(e.path, "tokens[0].from[0].prefix", "{e}");
        }
        // `cookie` holds all of the request's cookies, not one token.
        for name in ["cookie", "Cookie", "COOKIE"] {
            let source = format!(r#"{{"header": "{name}", "prefix": "token="}}"#);
            let e = err(&doc(&source, &hs, ""));
            assert_eq!(e.path, "tokens[0].from[0].header", "{e}");
            assert!(
                e.to_string().contains("all of the request's cookies"),
                "{e}"
            );
        }
        let bearer = r#"{"header": "x-t", "prefix": "Bearer "}"#;
        let named = r#", "issuer": "i", "audiences": ["a"], "app_claim": {"claim": "sub"}"#;
        assert!(Config::from_json(doc(bearer, &hs, named).as_bytes()).is_ok());
    }

    #[test]
    fn debug_of_a_config_leaves_the_phone_hash_key_out() {
        // "0123456789abcdef": its bytes would print as [48, 49, 50, ...].
        let c = Config::from_json(
            br#"{"phone": {"hash_key_base64": "MDEyMzQ1Njc4OWFiY2RlZg==", "default_calling_code": "44"}}"#,
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("hash_key: .."), "{shown}");
        assert!(!shown.contains("48, 49, 50"), "{shown}");
        assert!(
            shown.contains(r#"default_calling_code: Some("44")"#),
            "{shown}"
        );
    }

    #[test]
    fn a_binding_header_listed_twice_is_refused() {
        let bound = |headers: &str| {
            Config::from_json(
                format!(
                    r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}],
                        "keys": [{{"alg": "HS256", "secret_base64": "{}"}}],
                        "binding": {{"headers": {headers}}}}}]}}"#,
                    "a".repeat(44)
                )
                .as_bytes(),
            )
        };
        for headers in [
            r#"["authorization", "Authorization"]"#,
            r#"["x-device", "x-session", "x_session"]"#,
        ] {
            let e = bound(headers).unwrap_err();
            let last = headers.matches(',').count();
            assert_eq!(
                e.path,
                format!("tokens[0].binding.headers[{last}]"),
                "{headers}: {e}"
            );
        }
        let c = bound(r#"["authorization", "x-device"]"#).unwrap();
        let b = c.providers[0].binding.as_ref().unwrap();
        assert_eq!(b.headers, vec!["authorization", "x-device"]);
    }

    #[test]
    fn a_duplicate_kid_is_named_where_it_was_written() {
        let hs = |kid: &str| {
            format!(
                r#"{{"alg": "HS256", "kid": "{kid}", "secret_base64": "{}"}}"#,
                "a".repeat(44)
            )
        };
        let oct = |kid: &str| {
            format!(
                r#"{{"kty": "oct", "alg": "HS256", "kid": "{kid}", "k": "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s"}}"#
            )
        };
        let provider = |keys: &str, jwks: &str| {
            err(&format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], "keys": [{keys}]{jwks}}}]}}"#
            ))
        };
        let e = provider(&[hs("a"), hs("b"), hs("a")].join(","), "");
        assert_eq!(e.path, "tokens[0].keys[2].kid", "{e}");
        assert!(e.message.contains("duplicate kid \"a\""), "{e}");
        let jwks = format!(r#", "jwks": {{"keys": [{}, {}]}}"#, oct("c"), oct("b"));
        let e = provider(&[hs("a"), hs("b")].join(","), &jwks);
        assert_eq!(e.path, "tokens[0].jwks.keys[1].kid", "{e}");
    }

    #[test]
    fn more_trusted_hops_than_a_chain_may_have_is_refused() {
        // 65 hops: no request could show a client IP, so every client
        // would be denied by IP rules or share one per-IP limit.
        let e = err(r#"{"client_ip":{"xff_trusted_hops":65}}"#);
        assert_eq!(e.path, "client_ip.xff_trusted_hops");
        let c = Config::from_json(br#"{"client_ip":{"xff_trusted_hops":64}}"#).unwrap();
        assert_eq!(c.xff_trusted_hops, 64);
    }

    #[test]
    fn a_limit_whose_entry_never_has_a_value_on_its_route_is_refused() {
        let local = r#""local":{"requests":5,"per":"minute"}"#;
        for (route, entry) in [
            (r#""api_key":"none""#, r#"{"type":"api_key"}"#),
            (r#""api_key":"none""#, r#"{"type":"claim","name":"sub"}"#),
            (r#""api_key":"none""#, r#"{"type":"app"}"#),
            (r#""api_key":"none""#, r#"{"type":"platform"}"#),
        ] {
            let json = format!(
                r#"{{"routes":[{{"name":"sms","match":{{"path":"/sms"}},{route},
                    "rate_limits":[{{"entries":[{{"type":"route"}},{entry}],{local}}}]}}]}}"#
            );
            let e = err(&json);
            assert_eq!(e.path, "routes[0].rate_limits[0].entries[1]", "{json}");
            assert!(e.message.contains("never"), "{e}");
        }
        // A key that may be absent (`optional`) is the documented skip.
        let ok = format!(
            r#"{{"routes":[{{"name":"sms","match":{{"path":"/sms"}},"api_key":"optional",
                "rate_limits":[{{"entries":[{{"type":"api_key"}}],{local}}}]}}]}}"#
        );
        assert!(Config::from_json(ok.as_bytes()).is_ok());
    }

    #[test]
    fn a_service_limit_without_a_service_is_refused() {
        let e = err(r#"{"routes":[{"name":"sms","match":{"path":"/sms"},
                "rate_limits":[{"entries":[{"type":"route"}]}]}]}"#);
        assert_eq!(e.path, "routes[0].rate_limits[0]");
        assert!(e.message.contains("no `rate_limit_service`"), "{e}");
    }

    #[test]
    fn a_client_ip_entry_names_its_bad_prefix() {
        for (prefix, path) in [
            (
                r#""v4_prefix":0"#,
                "routes[0].rate_limits[0].entries[0].v4_prefix",
            ),
            (
                r#""v6_prefix":129"#,
                "routes[0].rate_limits[0].entries[0].v6_prefix",
            ),
        ] {
            let json = format!(
                r#"{{"routes":[{{"name":"sms","match":{{"path":"/sms"}},
                    "rate_limits":[{{"entries":[{{"type":"client_ip",{prefix}}}],
                    "local":{{"requests":5,"per":"minute"}}}}]}}]}}"#
            );
            assert_eq!(err(&json).path, path, "{json}");
        }
    }

    #[test]
    fn an_entry_error_names_its_field() {
        let entry = |e: &str| {
            err(&format!(
                r#"{{"routes":[{{"name":"sms","match":{{"path":"/sms"}},
                    "rate_limits":[{{"entries":[{e}],
                    "local":{{"requests":5,"per":"minute"}}}}]}}]}}"#
            ))
        };
        let at = "routes[0].rate_limits[0].entries[0]";
        for (e, field, message) in [
            // Wrong types and ranges, inside the entry.
            (
                r#"{"type":"client_ip","v4_prefix":"24"}"#,
                "v4_prefix",
                "invalid type",
            ),
            (
                r#"{"type":"client_ip","v4_prefix":300}"#,
                "v4_prefix",
                "invalid value",
            ),
            (
                r#"{"type":"body","pointer":"/to","phone":"yes"}"#,
                "phone",
                "invalid type",
            ),
            (r#"{"type":"route","key":7}"#, "key", "invalid type"),
            // A field the type needs, or does not take.
            (
                r#"{"type":"header"}"#,
                "name",
                "required for a `header` entry",
            ),
            (
                r#"{"type":"claim"}"#,
                "name",
                "required for a `claim` entry",
            ),
            (
                r#"{"type":"body"}"#,
                "pointer",
                "required for a `body` entry",
            ),
            (
                r#"{"type":"value","key":"k"}"#,
                "value",
                "required for a `value` entry",
            ),
            (
                r#"{"type":"value","value":"v"}"#,
                "key",
                "required for a `value` entry",
            ),
            (
                r#"{"type":"value","key":"k","value":""}"#,
                "value",
                "must not be empty",
            ),
            (
                r#"{"type":"route","v4_prefix":24}"#,
                "v4_prefix",
                "not a field of a `route` entry",
            ),
            (
                r#"{"type":"client_ip","name":"x"}"#,
                "name",
                "not a field of a `client_ip` entry",
            ),
            (
                r#"{"type":"header","name":"x","phone":true}"#,
                "phone",
                "not a field of a `header` entry",
            ),
            (
                r#"{"type":"body","pointer":"/to~2"}"#,
                "pointer",
                "a JSON pointer",
            ),
            (
                r#"{"type":"body","pointer":"/to~"}"#,
                "pointer",
                "a JSON pointer",
            ),
        ] {
            let got = entry(e);
            assert_eq!(got.path, format!("{at}.{field}"), "{e}: {got}");
            assert!(got.message.contains(message), "{e}: {got}");
        }
        // An unknown field or type, named.
        let got = entry(r#"{"type":"client_ip","v4prefix":24}"#);
        assert!(got.message.starts_with("unknown field `v4prefix`"), "{got}");
        let got = entry(r#"{"type":"clientip"}"#);
        assert_eq!(got.path, format!("{at}.type"), "{got}");
        assert!(
            got.message.starts_with("unknown variant `clientip`"),
            "{got}"
        );
        let got = entry(r#"{"key":"k"}"#);
        assert!(got.message.starts_with("missing field `type`"), "{got}");
        // Every type still loads with what it takes, in any order.
        let c = Config::from_json(
            br#"{"routes":[{"name":"sms","match":{"path":"/sms"},
                "rate_limits":[{"entries":[{"v6_prefix":48,"type":"client_ip"},
                    {"type":"header","name":"X-Tenant"},{"type":"value","key":"k","value":"v"},
                    {"type":"body","pointer":"/a~1b/c~0d","phone":false},{"type":"route"}],
                "local":{"requests":5,"per":"minute"}}]}]}"#,
        )
        .unwrap();
        let keys: Vec<&str> = c.routes[0].rate_limits[0]
            .entries
            .iter()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(keys, ["client_ip", "x-tenant", "k", "body", "route"]);
    }

    #[test]
    fn a_rate_limit_name_is_a_plain_name() {
        let rule = |name: &str| {
            format!(
                r#"{{"routes":[{{"name":"sms","match":{{"path":"/sms"}},
                    "rate_limits":[{{"name":{name:?},"entries":[{{"type":"route"}}],
                    "local":{{"requests":5,"per":"minute"}}}}]}}]}}"#
            )
        };
        for bad in ["a b", "a.b", "", "x\ny", &"a".repeat(65)] {
            let e = err(&rule(bad));
            assert_eq!(e.path, "routes[0].rate_limits[0].name", "{bad:?}: {e}");
        }
        assert!(Config::from_json(rule(&"a".repeat(64)).as_bytes()).is_ok());
        assert!(Config::from_json(rule("sms-per_ip-2").as_bytes()).is_ok());
    }

    #[test]
    fn a_route_lists_a_provider_once() {
        let doc = |tokens: &str| {
            format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-t"}}], "issuer": "i",
                    "keys": [{{"alg": "HS256", "secret_base64": "{}"}}]}},
                    {{"name": "u", "from": [{{"header": "x-u"}}], "issuer": "i",
                    "keys": [{{"alg": "HS256", "secret_base64": "{}"}}]}}],
                    "routes": [{{"name": "r", "match": {{"prefix": "/"}}, "tokens": {tokens}}}]}}"#,
                "a".repeat(44),
                "b".repeat(44)
            )
        };
        let e = err(&doc(r#"["t", "u", "t"]"#));
        assert_eq!(e.path, "routes[0].tokens[2]", "{e}");
        assert!(e.message.starts_with("listed twice"), "{e}");
        assert!(Config::from_json(doc(r#"["t", "u"]"#).as_bytes()).is_ok());
    }

    #[test]
    fn two_service_rules_with_the_same_entries_are_refused() {
        let rules = |a: &str, b: &str| {
            format!(
                r#"{{"rate_limit_service":{{"cluster":"rls","domain":"d"}},
                    "routes":[{{"name":"sms","match":{{"path":"/sms"}},"rate_limits":[
                    {{"name":"burst","entries":[{{"type":"route"}}{a}]}},
                    {{"name":"daily","entries":[{{"type":"route"}}{b}]}}]}}]}}"#
            )
        };
        let e = err(&rules("", ""));
        assert_eq!(e.path, "routes[0].rate_limits[1].entries");
        assert!(
            e.message.starts_with(
                "the same entries as rate_limits[0], and both go to the rate-limit service, \
                 which would count each request twice under one limit: add an entry that \
                 tells them apart, e.g. {\"type\": \"value\", \"key\": \"rule\", \"value\": \"daily\"}, and"
            ),
            "{e}"
        );
        // told apart by an entry: accepted
        let told = r#",{"type":"value","key":"rule","value":"burst"}"#;
        assert!(Config::from_json(rules(told, "").as_bytes()).is_ok());
        // a local rule with the same entries never reaches the service
        let json = r#"{"rate_limit_service":{"cluster":"rls","domain":"d"},
            "routes":[{"name":"sms","match":{"path":"/sms"},"rate_limits":[
            {"name":"burst","entries":[{"type":"route"}],"local":{"requests":2,"per":"minute"}},
            {"name":"daily","entries":[{"type":"route"}]}]}]}"#;
        assert!(Config::from_json(json.as_bytes()).is_ok());
    }

    #[test]
    fn sizes_of_2_to_the_32_and_more_are_refused_in_the_same_words_everywhere() {
        // The module is 32-bit and the CLI 64-bit: a `usize` field would be
        // refused by serde in one and by the range check in the other.
        // (This test runs in both: `make wasm-test`.)
        let hs = r#""keys":[{"alg":"HS256","secret_base64":"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE="}]"#;
        for n in [4_294_967_296u64, 5_000_000_000, u64::MAX] {
            let e = err(&format!(r#"{{"max_body_bytes":{n}}}"#));
            assert_eq!(
                (e.path.as_str(), e.message.as_str()),
                ("max_body_bytes", "must be 1..=1048576")
            );
            let e = err(&format!(
                r#"{{"routes":[{{"name":"r","match":{{"prefix":"/"}},"max_body_bytes":{n}}}]}}"#
            ));
            assert_eq!(
                (e.path.as_str(), e.message.as_str()),
                ("routes[0].max_body_bytes", "must be 1..=1048576")
            );
            let e = err(&format!(
                r#"{{"tokens":[{{"name":"t","from":[{{"header":"x-t"}}],{hs},"max_token_bytes":{n}}}]}}"#
            ));
            assert_eq!(e.path, "tokens[0].max_token_bytes", "{e}");
            assert!(e.message.contains("must be 64..=65536"), "{e}");
        }
    }

    #[test]
    fn a_limit_keyed_by_a_secret_header_is_refused() {
        // The value would go to the rate-limit service (and its logs and
        // Redis keys) in clear.
        let rls = r#""rate_limit_service":{"cluster":"rls","domain":"d"}"#;
        let tokens = r#""tokens":[{"name":"t","from":[{"header":"approov-token"}],
            "keys":[{"alg":"HS256","secret_base64":"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE="}],
            "binding":{"headers":["x-session-id"]}}]"#;
        // In every spelling an upstream reads as the same header: a client
        // sending `x_secret_key: K` has it taken as the API key.
        for header in [
            "X-Secret-Key",
            "x_secret_key",
            "approov-token",
            "approov_token",
            "authorization",
            "proxy_authorization",
            "cookie",
            // what the token is bound to (a session)
            "x-session-id",
            "x_session_id",
        ] {
            let json = format!(
                r#"{{{rls},{tokens},"api_keys":{{"header":"x-secret-key"}},
                    "routes":[{{"name":"sms","match":{{"path":"/sms"}},
                    "rate_limits":[{{"entries":[{{"type":"header","name":"{header}"}}]}}]}}]}}"#
            );
            let e = err(&json);
            assert_eq!(
                e.path, "routes[0].rate_limits[0].entries[0].name",
                "{header}: {e}"
            );
            assert!(e.message.contains("secret"), "{e}");
        }
        let one = |header: &str| {
            format!(
                r#"{{{rls},"routes":[{{"name":"sms","match":{{"path":"/sms"}},
                    "rate_limits":[{{"entries":[{{"type":"header","name":"{header}"}}]}}]}}]}}"#
            )
        };
        // The default key header without an `api_keys` section too.
        assert_eq!(
            err(&one("x-api-key")).path,
            "routes[0].rate_limits[0].entries[0].name"
        );
        assert!(Config::from_json(one("x-device-id").as_bytes()).is_ok());
    }

    #[test]
    fn a_route_path_no_normalised_request_can_have_is_refused() {
        let route = |kind: &str, p: &str| {
            Config::from_json(
                format!(r#"{{"routes":[{{"name":"r","match":{{"{kind}":{p:?}}}}}]}}"#).as_bytes(),
            )
        };
        for p in [
            "/v1/sms;x=1",
            "/v1//sms",
            "/v1/./sms",
            "/v1/x/../sms",
            "/v1\\sms",
            "/v1/%73ms",
            "/v1/%2e/x",
            "/v1%2Fsms",
            "/v1%5csms",
            // Envoy sends these escaped, or refuses them (raw non-ASCII);
            // a decoding upstream reads `%3A` as `:`.
            "/v1/café",
            "/v1/a b",
            "/v1/a\"b",
            "/v1/a<b",
            "/v1/users/{id}",
            "/v1/a|b",
            "/v1/a`b",
            "/v1/things%3AbatchDelete",
            "/v1/users/%40me",
            "/v1/caf%c3%a9",
            "/v1/%u0073ms",
            "/v1/items%5B0%5D",
        ] {
            for kind in ["path", "prefix"] {
                let e = route(kind, p).unwrap_err();
                assert_eq!(e.path, format!("routes[0].match.{kind}"), "{p}");
                assert!(e.message.contains("can never match"), "{p}: {e}");
            }
        }
        assert!(route("path", "/v1/..").is_err());
        assert!(route("path", "/v1/.").is_err());
        // What requests do have: a partial last segment of a prefix, dots
        // inside names, escapes Envoy keeps, a trailing slash.
        for (kind, p) in [
            ("prefix", "/v1/."),
            ("prefix", "/v1/.."),
            ("path", "/.well-known/jwks.json"),
            ("path", "/v1/a%20b"),
            ("path", "/v1/caf%C3%A9"),
            ("path", "/v1/things:batchDelete"),
            ("prefix", "/v1/users/@me/"),
            ("path", "/v1/a%3Bb"),
            ("path", "/v1/a!$&'()*+,=b"),
            ("path", "/v1/items[0]"),
            ("prefix", "/v1/"),
            ("prefix", "/"),
            ("path", "/v1/sms/"),
        ] {
            assert!(route(kind, p).is_ok(), "{kind} {p}");
        }
    }

    #[test]
    fn a_config_error_is_one_line_whatever_the_configuration_holds() {
        let e = err("{\"tokens\":[{\"x\\nINJECTED line\\u001b[31m\":1}]}");
        let shown = e.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        // Not a field name: not shown at all (it could be a secret).
        assert!(!shown.contains("INJECTED"), "{shown}");
        assert!(
            shown.contains("at `tokens[0].?`: unknown field `?`"),
            "{shown}"
        );
        assert_eq!(
            ConfigError::new("a.b", "bad").to_string(),
            "invalid configuration at `a.b`: bad"
        );
        assert_eq!(
            ConfigError::new("", "bad").to_string(),
            "invalid configuration: bad"
        );
    }

    #[test]
    fn an_allow_list_written_empty_is_refused_not_read_as_allow_all() {
        for (json, path) in [
            (r#"{"network":{"ip_allow":[]}}"#, "network.ip_allow"),
            (
                r#"{"network":{"country_header":"x-c","country_allow":[]}}"#,
                "network.country_allow",
            ),
            (
                r#"{"routes":[{"name":"a","match":{"prefix":"/"},"platforms":[]}]}"#,
                "routes[0].platforms",
            ),
            (
                r#"{"routes":[{"name":"a","match":{"prefix":"/"},"network":{"ip_allow":[]}}]}"#,
                "routes[0].network.ip_allow",
            ),
            // `tokens: []` would load a paid route with no token check;
            // `methods: []` and `hosts: []` would widen a route to all.
            (
                r#"{"routes":[{"name":"a","match":{"prefix":"/"},"tokens":[]}]}"#,
                "routes[0].tokens",
            ),
            (
                r#"{"routes":[{"name":"a","match":{"prefix":"/","methods":[]}}]}"#,
                "routes[0].match.methods",
            ),
            (
                r#"{"routes":[{"name":"a","match":{"prefix":"/","hosts":[]}}]}"#,
                "routes[0].match.hosts",
            ),
            (
                r#"{"api_keys":{"keys":[{"id":"k","sha256":"0000000000000000000000000000000000000000000000000000000000000000","ips":[]}]}}"#,
                "api_keys.keys[0].ips",
            ),
            (
                r#"{"api_keys":{"keys":[{"id":"k","sha256":"0000000000000000000000000000000000000000000000000000000000000000","apps":[]}]}}"#,
                "api_keys.keys[0].apps",
            ),
            (
                r#"{"api_keys":{"keys":[{"id":"k","sha256":"0000000000000000000000000000000000000000000000000000000000000000","routes":[]}]}}"#,
                "api_keys.keys[0].routes",
            ),
            (
                r#"{"apps":[{"id":"a","platform":"android","package":"com.example.a","cert_fingerprints":[]}]}"#,
                "apps[0].cert_fingerprints",
            ),
            (
                r#"{"tokens":[{"name":"t","from":[{"header":"x-t"}],"audiences":[],
                    "keys":[{"alg":"HS256","secret_base64":"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE="}]}]}"#,
                "tokens[0].audiences",
            ),
            (
                r#"{"tokens":[{"name":"t","from":[{"header":"x-t"}],"platforms":[],
                    "keys":[{"alg":"HS256","secret_base64":"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE="}]}]}"#,
                "tokens[0].platforms",
            ),
        ] {
            let e = err(json);
            assert_eq!(e.path, path, "{json}");
            assert!(e.message.contains("empty list"), "{e}");
        }
        // Left out: no restriction, as documented.
        assert!(Config::from_json(br#"{"network":{"ip_deny":[]}}"#).is_ok());
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

    /// A route's token provider reading `x-t` with an HS256 key, and the
    /// given route fields and provider fields.
    fn with_token(provider: &str, route: &str) -> String {
        format!(
            r#"{{"tokens": [{{"name": "p", "from": [{{"header": "x-t"}}],
                "keys": [{{"secret_base64": "Zm9vYmFyU0VDUkVUU0VDUkVUU0VDUkVUU0VDUkVUU0VDUkVU"}}]
                {provider}}}],
              "routes": [{{"name": "sms", "match": {{"prefix": "/"}}, "tokens": ["p"] {route}}}]}}"#
        )
    }

    #[test]
    fn a_claim_entry_with_a_blank_claim_name_is_refused() {
        // No token has it: the rule would be skipped for every request.
        for name in ["", " "] {
            let doc = with_token(
                "",
                &format!(
                    r#", "rate_limits": [{{"entries": [{{"type": "claim", "name": "{name}",
                        "key": "user"}}], "local": {{"requests": 5, "per": "minute"}}}}]"#
                ),
            );
            assert_eq!(
                err(&doc).path,
                "routes[0].rate_limits[0].entries[0].name",
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_claim_rule_a_request_without_a_token_skips_is_advised() {
        let rule = r#", "rate_limits": [{"name": "per-user", "entries": [{"type": "claim",
            "name": "sub"}], "local": {"requests": 5, "per": "minute"}}]"#;
        let advice = |route: &str| {
            Config::from_json(with_token("", route).as_bytes())
                .unwrap()
                .advisories()
        };
        let optional = advice(&format!(r#", "token_required": false{rule}"#));
        assert!(
            optional.iter().any(|a| a.contains("per-user")
                && a.contains("without a token, on a route where it is optional, skips")),
            "{optional:?}"
        );
        assert!(!advice(rule).iter().any(|a| a.contains("per-user")));
    }

    #[test]
    fn no_issuer_or_audience_holds_a_control_character() {
        // Advice quotes the issuer (two providers of one issuer with
        // `replay`), and Envoy logs each line: a `\n` would start a line
        // of the configuration writer's own. (Advice lines are written
        // escaped too.)
        let forged = "https://iss\n[2026-12-07 05:00:00.000][1][critical][main] forged";
        for field in ["issuer", "audiences"] {
            let value = if field == "issuer" {
                format!("{forged:?}")
            } else {
                format!("[{forged:?}]")
            };
            let e = err(&with_token(&format!(r#", "{field}": {value}"#), ""));
            assert!(e.message.contains("control characters"), "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_required_claim_number_that_is_no_64_bit_integer_is_refused() {
        // As a double it would also match its neighbours: the token's
        // `123456789012345678900000` rounds to the same one.
        for v in [
            "123456789012345678901234",
            "0.1",
            "1e3",
            "[1, 2.5]",
            r#"{"a": -1.0}"#,
        ] {
            let e = err(&with_token(
                &format!(r#", "required_claims": {{"acct": {v}}}"#),
                "",
            ));
            assert_eq!(e.path, "tokens[0].required_claims.acct", "{v}");
        }
        for v in [
            "18446744073709551615",
            "-9223372036854775808",
            "[1, \"2.5\"]",
            "true",
        ] {
            let doc = with_token(&format!(r#", "required_claims": {{"acct": {v}}}"#), "");
            assert!(Config::from_json(doc.as_bytes()).is_ok(), "{v}");
        }
        // jwt_authn's metadata holds numbers as doubles: from 9e15 on, one
        // comes back as a double and matches no token.
        let delegated = |v: &str| {
            format!(
                r#"{{"tokens": [{{"name": "p", "from": [{{"header": "x-t"}}],
                    "verified_by": {{"key": "p"}}, "issuer": "i",
                    "required_claims": {{"acct": {v}}}}}],
                  "routes": [{{"name": "r", "match": {{"prefix": "/"}}, "tokens": ["p"]}}]}}"#
            )
        };
        for v in [
            "9000000000000000",
            "-12345678901234567",
            "[1, 9007199254740993]",
        ] {
            assert_eq!(
                err(&delegated(v)).path,
                "tokens[0].required_claims.acct",
                "{v}"
            );
        }
        for v in ["8999999999999999", "-1", "\"12345678901234567\""] {
            assert!(Config::from_json(delegated(v).as_bytes()).is_ok(), "{v}");
        }
    }
}

/// Config error paths against serde_path_to_error's, on hand-written
/// documents (review56): escaped keys, nested arrays, literals cut short.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod error_paths {
    use super::*;
    use serde_json::{json, Value};

    fn want_path(bytes: &[u8]) -> Option<String> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let e = serde_path_to_error::deserialize::<_, RawConfig>(de).err()?;
        let want = e.path().to_string();
        let want = if want == "." { String::new() } else { want };
        Some(without_odd_names(&want))
    }

    fn got_path(bytes: &[u8]) -> Option<String> {
        raw_from_json(bytes).err().map(|e| e.path)
    }

    fn nodes(v: &Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    let mut p = at.clone();
                    p.push(k.clone());
                    nodes(c, p, out);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    let mut p = at.clone();
                    p.push(i.to_string());
                    nodes(c, p, out);
                }
            }
            _ => {}
        }
    }

    /// Each example configuration, with the path of each of its nodes but
    /// the document itself.
    fn example_nodes() -> Vec<(Value, Vec<Vec<String>>)> {
        [
            include_str!("../examples/approov.json"),
            include_str!("../examples/firebase-app-check.json"),
            include_str!("../examples/own-signer.json"),
            include_str!("../examples/quickstart.json"),
            include_str!("../examples/three-platform.json"),
        ]
        .iter()
        .map(|text| {
            let doc: Value = serde_json::from_str(text).unwrap();
            let mut all = Vec::new();
            nodes(&doc, Vec::new(), &mut all);
            all.retain(|a| !a.is_empty());
            (doc, all)
        })
        .collect()
    }

    fn node<'v>(v: &'v mut Value, at: &[String]) -> &'v mut Value {
        at.iter().fold(v, |v, k| match v {
            Value::Object(m) => m.get_mut(k).unwrap(),
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            _ => unreachable!(),
        })
    }

    /// The error paths found from serde_json's position (`json_path_at`)
    /// are those a deserializer tracking the path as it goes
    /// (serde_path_to_error) gives, for every node of the examples turned
    /// into an unknown field, a value of another type, an empty list or
    /// object, or with a field taken out; written compact and pretty.
    #[test]
    fn error_paths_are_those_a_path_tracking_deserializer_gives() {
        let (mut compared, mut differ) = (0, Vec::new());
        for (doc, all) in example_nodes() {
            for at in &all {
                let mut variants = Vec::new();
                for with in [
                    json!(7),
                    json!(-1),
                    json!("x"),
                    json!(true),
                    json!([]),
                    json!({}),
                    json!(["x"]),
                    json!({"zz": 1}),
                ] {
                    let mut d = doc.clone();
                    *node(&mut d, at) = with;
                    variants.push(d);
                }
                let mut d = doc.clone();
                let keys: Option<Vec<String>> = match node(&mut d, at) {
                    Value::Object(m) => {
                        let keys = m.keys().cloned().collect();
                        m.insert("not_a_field".into(), json!(1));
                        Some(keys)
                    }
                    _ => None,
                };
                if let Some(keys) = keys {
                    variants.push(d);
                    for k in keys {
                        let mut d = doc.clone();
                        if let Value::Object(m) = node(&mut d, at) {
                            m.remove(&k);
                        }
                        variants.push(d);
                    }
                }
                for d in variants {
                    for bytes in [
                        serde_json::to_vec(&d).unwrap(),
                        serde_json::to_vec_pretty(&d).unwrap(),
                    ] {
                        let Some(want) = want_path(&bytes) else {
                            continue;
                        };
                        let got = got_path(&bytes);
                        compared += 1;
                        if got.as_deref() != Some(want.as_str()) {
                            differ.push(format!("{at:?}: {got:?}, want {want:?}"));
                        }
                    }
                }
            }
        }
        assert!(compared > 1000, "{compared}");
        assert!(
            differ.is_empty(),
            "{} of {compared}: {:#?}",
            differ.len(),
            &differ[..differ.len().min(20)]
        );
    }

    /// Raw-text variants: a marker value replaced by raw JSON text.
    fn raw_variants(doc: &Value, at: &[String]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let raws = [
            "[[1, [2]], [3]]",
            "[{\"a\": [1, {\"b\": 2}]}, 5]",
            "1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "4294967296",
            "65536",
            "1.5",
            "\"a\\\"b]}\"",
            "\"\\u0041\"",
            "{\"not\\u005ffield\": 1}",
            "{\"a\\\"b\": 1}",
            "{\"k.x[0]\": 1}",
            "[\"x\", ]",
            "[,]",
            "{\"a\": 1,}",
            "nul",
            "\"\u{1}\"",
            "\"\\q\"",
            "[\"\\ud800\"]",
        ];
        for r in raws {
            let mut d = doc.clone();
            *node(&mut d, at) = json!("@@MARK@@");
            for text in [
                serde_json::to_string(&d).unwrap(),
                serde_json::to_string_pretty(&d).unwrap(),
            ] {
                out.push(text.replace("\"@@MARK@@\"", r).into_bytes());
            }
        }
        // A duplicate key in an object node.
        let mut d = doc.clone();
        if let Value::Object(m) = node(&mut d, at) {
            if let Some((k, v)) = m.iter().next().map(|(k, v)| (k.clone(), v.clone())) {
                m.insert("@@DUP@@".into(), json!(0));
                let dup = format!("{}: {}", serde_json::to_string(&k).unwrap(), v);
                for text in [
                    serde_json::to_string(&d).unwrap(),
                    serde_json::to_string_pretty(&d).unwrap(),
                ] {
                    out.push(text.replace("\"@@DUP@@\": 0", &dup).into_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn error_paths_hold_under_more_mutations() {
        let (mut compared, mut differ) = (0, Vec::new());
        for (doc, all) in example_nodes() {
            for at in &all {
                for bytes in raw_variants(&doc, at) {
                    let Some(want) = want_path(&bytes) else {
                        continue;
                    };
                    let (got, e) = raw_from_json(&bytes)
                        .err()
                        .map_or((None, String::new()), |e| (Some(e.path), e.message));
                    // Syntax errors and duplicate fields: see the test below.
                    if [
                        "expected value",
                        "expected ident",
                        "duplicate field",
                        "trailing comma",
                    ]
                    .iter()
                    .any(|m| e.contains(m))
                    {
                        continue;
                    }
                    compared += 1;
                    if got.as_deref() != Some(want.as_str()) {
                        differ.push(format!("{at:?}: got {got:?}, want {want:?} ({e})"));
                    }
                }
            }
        }
        assert!(compared > 5000, "{compared}");
        assert!(
            differ.is_empty(),
            "{} of {compared}: {:#?}",
            differ.len(),
            &differ[..differ.len().min(20)]
        );
    }

    /// A literal cut short (`fals`, `nul`) is a syntax error whose position
    /// serde_json gives one byte past the literal, after the `,` or `}`
    /// that follows it: the path then loses the field (the `,` starts the
    /// next member), or names the next element of a list. The tracking
    /// deserializer named the field.
    #[test]
    fn a_literal_cut_short_names_its_field() {
        let docs = [
            r#"{"mode": "enforce", "hold_headers_for_body": fals, "routes": []}"#,
            r#"{"routes": [{"name": "a", "match": {"prefix": "/a"}, "mode": nul}]}"#,
            r#"{"apps": [{"id": "w", "platform": "web", "origins": [nul, "https://a.example.com"]}]}"#,
        ];
        let mut differ = Vec::new();
        for doc in docs {
            let want = want_path(doc.as_bytes()).unwrap();
            let got = raw_from_json(doc.as_bytes()).unwrap_err();
            if got.path != want {
                differ.push(format!(
                    "{doc}\n  got {:?} ({}), want {want:?}",
                    got.path, got.message
                ));
            }
        }
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    }

    /// review57 (secrets): the phone hash key is what keeps the hashed
    /// numbers in the rate-limit service's Redis keys from being read back
    /// (10^10 numbers per calling code are tried in seconds under a known
    /// key). A key that is text (the demo key with a few letters changed,
    /// `echo -n our-phone-key-2026 | base64`) or a run of one byte is
    /// guessable, and is taken without a word today: the loader says only
    /// "base64 of at least 16 random bytes" and checks the length.
    #[test]
    fn an_hmac_secret_that_is_not_random_is_pointed_out() {
        // One captured token lets anyone test guesses of a text secret
        // offline (hashcat's JWT mode), then sign tokens of their own.
        use super::tests::RANDOM_KEY;
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let advice = |secret: &str| {
            let doc = format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-token"}}],
                    "keys": [{{"secret_base64": "{RANDOM_KEY}"}}, {{"secret_base64": "{secret}"}}]}}]}}"#
            );
            Config::from_json(doc.as_bytes()).unwrap().advisories()
        };
        for secret in [
            b64(b"acme-production-jwt-signing-secret-2026"),
            b64(&[0u8; 32]),
        ] {
            let a = advice(&secret);
            assert!(
                a.iter()
                    .any(|a| a.starts_with("tokens[0].keys[1].secret_base64: the secret is text")),
                "{a:?}"
            );
            assert!(
                !a.iter().any(|a| a.starts_with("tokens[0].keys[0]")),
                "{a:?}"
            );
        }
        let a = advice(RANDOM_KEY);
        assert!(!a.iter().any(|a| a.contains("secret_base64")), "{a:?}");
        // The same secret as an `oct` JWK, in `keys` or in an inline `jwks`.
        let b64url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let random = base64::engine::general_purpose::STANDARD
            .decode(RANDOM_KEY)
            .unwrap();
        for (k, text) in [
            (b64url(b"acme-production-jwt-signing-secret-2026"), true),
            (b64url(&random), false),
        ] {
            let doc = format!(
                r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-token"}}],
                    "keys": [{{"jwk": {{"kty": "oct", "alg": "HS256", "k": "{k}"}}}}],
                    "jwks": {{"keys": [{{"kty": "oct", "alg": "HS256", "kid": "h2", "k": "{k}"}}]}}}}]}}"#
            );
            let a = Config::from_json(doc.as_bytes()).unwrap().advisories();
            for at in ["tokens[0].keys[0].jwk.k", "tokens[0].jwks.keys[0].k"] {
                assert_eq!(
                    a.iter()
                        .any(|a| a.starts_with(&format!("{at}: the secret is text"))),
                    text,
                    "{at}: {a:?}"
                );
            }
        }
    }

    #[test]
    fn a_phone_hash_key_that_is_not_random_is_pointed_out() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        for key in [
            b64(b"acme-prod-phone-hash-key-2026"),
            b64(&[0u8; 32]),
            b64(&[0x41u8; 16]),
        ] {
            let doc = format!(
                r#"{{"phone": {{"hash_key_base64": "{key}", "default_calling_code": "44"}},
                    "routes": [{{"name": "sms", "match": {{"path": "/sms"}},
                      "rate_limits": [{{"name": "n", "entries": [
                        {{"type": "body", "pointer": "/to", "phone": true}}],
                        "local": {{"requests": 5, "per": "hour"}}}}]}}]}}"#
            );
            let c = Config::from_json(doc.as_bytes()).unwrap();
            let advice = c.advisories();
            assert!(
                advice
                    .iter()
                    .any(|a| a.starts_with("phone.hash_key_base64")),
                "{key}: no word on a guessable phone hash key: {advice:?}"
            );
        }
        // 32 bytes from a CSPRNG (fixed here) are not pointed out.
        let random = super::tests::RANDOM_KEY;
        let doc = format!(r#"{{"phone": {{"hash_key_base64": "{random}"}}}}"#);
        let c = Config::from_json(doc.as_bytes()).unwrap();
        assert!(
            !c.advisories()
                .iter()
                .any(|a| a.starts_with("phone.hash_key_base64")),
            "{:?}",
            c.advisories()
        );
    }

    /// The advisories of a configuration whose route limits per `claim`,
    /// in a rule sent to the rate-limit service, or one that is `local`.
    fn claim_limit_advice(claim: &str, local: bool) -> Vec<String> {
        let (service, rule_tail) = if local {
            ("", r#", "local": {"requests": 5, "per": "hour"}"#)
        } else {
            (
                r#""rate_limit_service": {"cluster": "rls", "domain": "d"},"#,
                "",
            )
        };
        let doc = format!(
            r#"{{"tokens": [{{"name": "t", "from": [{{"header": "x-token"}}],
                "keys": [{{"secret_base64": "{key}"}}]}}],
              {service}
              "routes": [{{"name": "otp", "match": {{"path": "/otp"}}, "tokens": ["t"],
                "rate_limits": [{{"name": "per-user", "entries": [
                  {{"type": "claim", "name": "{claim}"}}]{rule_tail}}}]}}]}}"#,
            key = super::tests::RANDOM_KEY
        );
        Config::from_json(doc.as_bytes()).unwrap().advisories()
    }

    /// review57 (secrets): a `claim` entry sends the claim's value to the
    /// rate-limit service in clear (its Redis keys, and envoyproxy/ratelimit's
    /// debug log). README asks to key by an opaque id, never by a claim
    /// holding personal data; the configuration says nothing when the claim
    /// is OpenID Connect's own `phone_number` (Firebase Auth ID tokens carry
    /// it for phone sign-in) or `email`, although for body values it refuses
    /// the same number read in clear.
    #[test]
    fn a_claim_entry_on_a_phone_number_or_email_claim_is_pointed_out() {
        for claim in ["phone_number", "email"] {
            let advice = claim_limit_advice(claim, false);
            assert!(
                advice
                    .iter()
                    .any(|a| a.contains(claim) && a.contains("in clear")),
                "{claim}: {advice:?}"
            );
        }
    }

    /// review57 `fixes`: a `claim` entry of a `local` rule is digested in
    /// the worker (`limits::descriptor_digest`) and never reaches the
    /// rate-limit service, its keys or its logs; the advice says it is
    /// sent there "in clear", which sends an operator to rework a rule
    /// that leaks nothing (and teaches them to skip the advice).
    #[test]
    fn fixes_a_claim_entry_of_a_local_rule_is_not_said_to_reach_the_service() {
        for claim in ["phone_number", "email"] {
            let advice = claim_limit_advice(claim, true);
            assert!(
                !advice.iter().any(|a| a.contains("in clear")),
                "{claim}: a local rule's claim said to go to the service: {advice:?}"
            );
        }
    }
}

#[cfg(test)]
mod advice_on_routes {
    use super::*;

    /// The advisories of a configuration whose SMS route limits, in a rule
    /// sent to the rate-limit service, by the body value at `pointer`
    /// read without `phone: true`.
    fn body_limit_advice(pointer: &str) -> Vec<String> {
        let doc = format!(
            r#"{{"rate_limit_service": {{"cluster": "rls", "domain": "d"}},
              "routes": [{{"name": "sms", "match": {{"path": "/sms"}},
                "rate_limits": [{{"name": "per-number", "entries": [
                  {{"type": "body", "pointer": "{pointer}"}}]}}]}}]}}"#
        );
        Config::from_json(doc.as_bytes()).unwrap().advisories()
    }

    /// review57 made a `claim` entry on `phone_number` or `email` advice
    /// (its value goes to the rate-limit service, its Redis keys and logs
    /// in clear); a `body` entry on the same personal data, without
    /// `phone: true`, sends it in clear just the same: a phone number
    /// (SPEC: "hashed before they leave the filter") or an e-mail address,
    /// named in snake_case or camelCase (Firebase Auth's
    /// `sendVerificationCode` takes `phoneNumber`), alone or as the last
    /// word of a longer name (`recipientPhone`, `contact_email`).
    #[test]
    fn a_body_entry_on_a_phone_number_or_email_in_clear_is_pointed_out() {
        let in_clear = |pointer: &str| {
            body_limit_advice(pointer)
                .iter()
                .any(|a| a.contains(pointer) && a.contains("in clear"))
        };
        for pointer in [
            "/phone_number",
            "/phone",
            "/email",
            "/user/msisdn",
            "/phoneNumber",
            "/user/phoneNumber",
            "/PhoneNumber",
            "/mobileNumber",
            "/emailAddress",
            "/email_address",
            "/recipientPhone",
            "/to_phone",
            "/userEmail",
            "/contact_email",
            "/customerPhoneNumber",
            "/phonenumber",
            "/emailaddress",
            "/mobilenumber",
            "/PHONENUMBER",
            "/user/Phonenumber",
        ] {
            assert!(
                in_clear(pointer),
                "{pointer}: {:?}",
                body_limit_advice(pointer)
            );
        }
        // An opaque value is not personal data.
        for pointer in ["/device_id", "/phoneModel", "/iphone", "/microphone"] {
            assert!(!in_clear(pointer), "{pointer}");
        }
    }

    /// A route for `HEAD` alone (a load balancer's
    /// health check) before a route that takes `GET` on the same paths:
    /// every `HEAD` request it matches is refused `route_denied` (upstreams
    /// run the GET handler for HEAD, so HEAD must take GET's route), so the
    /// route never lets anything through. Accepted without a word, where a
    /// route that could never match is refused at load.
    #[test]
    fn a_head_route_that_get_takes_elsewhere_is_pointed_out() {
        let doc = |later: &str| {
            format!(
                r#"{{"routes": [
                  {{"name": "health", "match": {{"path": "/healthz", "methods": ["HEAD"]}}}},
                  {{"name": "api", "match": {later}}}]}}"#
            )
        };
        for later in [
            r#"{"prefix": "/"}"#,
            r#"{"prefix": "/", "methods": ["GET", "POST"]}"#,
        ] {
            let said = match Config::from_json(doc(later).as_bytes()) {
                Ok(c) => c.advisories().iter().any(|a| a.contains("health")),
                Err(e) => e.to_string().contains("health") || e.path.starts_with("routes[0]"),
            };
            assert!(
                said,
                "{later}: every HEAD /healthz is route_denied, and nothing says so"
            );
        }
        // GET taking no route there: the health check works, nothing to say.
        let c = Config::from_json(doc(r#"{"prefix": "/v1/"}"#).as_bytes()).unwrap();
        assert!(
            !c.advisories().iter().any(|a| a.contains("health")),
            "{:?}",
            c.advisories()
        );
    }
}
