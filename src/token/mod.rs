//! Attestation tokens (SPEC §3): where a provider's token is, its keys and
//! rules, and strict verification.
//!
//! Verification runs the cheap refusals first and the signature last:
//! 1. size, then compact structure (three base64url parts, no padding);
//! 2. the header: a known `alg`, no `crit`/`jwk`/`jku`/`x5u`/`x5c`, a key
//!    for the `kid` whose fixed algorithm is the header's;
//! 3. the claims, unverified: `exp` required, expiry, not-before, lifetime,
//!    issuer, audience, required values — refusing on them is safe, since
//!    they can only refuse;
//! 4. only then the signature, through jwt-simple with the same rules.

mod b64;
pub mod delegated;
pub mod ecdsa;
pub mod jwks;
pub mod keys;
pub mod rsa;
pub mod strict_json;

use base64::Engine;
use jwt_simple::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::ConfigError;
use crate::decision::Reason;
use crate::identity::{ct_eq, Platform};
use crate::request::Request;
pub use keys::{Alg, Key, KeyMaterial};

/// Where a provider looks for its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSource {
    /// Header name (lower case).
    pub header: String,
    /// A prefix the value must start with, removed before decoding, e.g.
    /// `Bearer ` (compared case-insensitively). Empty for none.
    pub prefix: String,
}

/// Token binding (Approov `pay`): the claim holds base64(SHA-256) of the
/// named request header values, concatenated in order. A token copied from
/// one request is then useless with another `Authorization`, say.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The claim carrying the digest (default `pay`).
    pub claim: String,
    /// The bound headers, in order (lower case).
    pub headers: Vec<String>,
    /// Refuse tokens that lack the claim (`token_binding`); otherwise such
    /// tokens pass unbound.
    pub required: bool,
}

/// Where replayed `jti`s are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayScope {
    /// Within one Envoy instance, shared by its workers (proxy-wasm shared data).
    Local,
    /// Across every instance, through the shared rate-limit service: a
    /// descriptor `{jti: <hash>}` that the service limits to 1.
    Service,
}

/// Replay protection: each value of `claim` is accepted once within its
/// token's lifetime.
#[derive(Clone, Debug)]
pub struct Replay {
    /// The claim (default `jti`).
    pub claim: String,
    /// Local or service-wide.
    pub scope: ReplayScope,
    /// Capacity of the local table (values remembered at once).
    pub max_entries: u32,
    /// Capacities the local table had under earlier configurations of this
    /// Envoy instance whose values may still be live: checked as well, so
    /// that changing `max_entries` does not let a used value through again;
    /// and, once a newer configuration replaced this one, the capacity to
    /// record under ([`crate::store::Layouts`]).
    /// Empty when compiled; the adapter fills it when the configuration
    /// loads ([`crate::store::replay_layouts`]) and refreshes it every
    /// second ([`crate::store::follow_replay_layouts`]), so that a
    /// configuration still draining and the one that replaced it find each
    /// other's values.
    pub past_layouts: crate::store::PastLayouts,
}

/// How the app claim is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppClaimFormat {
    /// The claim value is matched against the apps' `token_app_ids` (or id).
    #[default]
    Plain,
    /// Firebase App Check `sub`: `1:<project number>:<platform>:<hex>`; the
    /// platform inside must be the app's.
    Firebase,
}

/// The claim naming the app (SPEC §2).
#[derive(Clone, Debug)]
pub struct AppClaim {
    /// Claim name, e.g. `sub` or `app`.
    pub claim: String,
    /// How to read it.
    pub format: AppClaimFormat,
}

/// A remote JWKS fetched through an Envoy cluster and cached.
#[derive(Clone, Debug)]
pub struct RemoteJwks {
    /// Envoy cluster that reaches the JWKS server.
    pub cluster: String,
    /// `:authority` of the fetch (default: the cluster name, or the
    /// service host of an Istio `outbound|…` cluster).
    pub authority: String,
    /// Path of the JWKS, e.g. `/.well-known/jwks.json`.
    pub path: String,
    /// Refresh this often (seconds), in the background.
    pub refresh_seconds: u64,
    /// Keep serving the last keys this long after a refresh starts failing.
    pub grace_seconds: u64,
    /// Fetch timeout; requests held for the first keys wait at most this.
    pub timeout_ms: u64,
    /// At most one re-fetch for an unknown `kid` per this many seconds.
    pub min_refetch_seconds: u64,
}

impl RemoteJwks {
    /// The age (seconds since their fetch) past which keys are dropped:
    /// `refresh_seconds + grace_seconds`, plus the time a refresh that
    /// started when due may take to answer and reach every worker (its
    /// timeout, a tick to send it, a tick to copy it). Without that margin,
    /// a small `grace_seconds` dropped the keys while a healthy refresh was
    /// still on its way.
    pub fn keys_expire_after(&self) -> u64 {
        self.refresh_seconds
            .saturating_add(self.grace_seconds)
            .saturating_add(self.timeout_ms.div_ceil(1000))
            .saturating_add(2)
    }
}

/// The largest `max_lifetime_seconds` a provider may set: one day. An
/// attestation token is short-lived by design; no provider accepts a token
/// that lives longer, so tools that mint tokens refuse to make one.
pub const MAX_LIFETIME_CEILING_SECONDS: u64 = 86_400;

/// A token provider (`tokens[]`).
#[derive(Debug)]
pub struct Provider {
    /// Name used by routes, metrics and logs.
    pub name: String,
    /// Where the token is looked for, in order.
    pub sources: Vec<TokenSource>,
    /// Configured keys (`keys` and inline `jwks`).
    pub keys: Vec<Key>,
    /// Where, in the provider's configuration, HMAC secrets that are text
    /// or a few bytes repeated are (`keys[1].secret_base64`,
    /// `keys[2].jwk.k`, `jwks.keys[0].k`): pointed out at load
    /// ([`crate::config::Config::advisories`]), as one captured token lets
    /// anyone test guesses of such a secret offline and then sign tokens.
    pub text_secrets: Vec<String>,
    /// A digest of each configured key (`keys` and inline `jwks`, see
    /// `keys::RawKey::fingerprint`): two providers given one key accept
    /// each other's tokens, which [`crate::config::Config::advisories`]
    /// points out where each keeps a replay table of its own.
    pub key_fingerprints: Vec<keys::KeyDigest>,
    /// Remote JWKS, if any.
    pub remote_jwks: Option<RemoteJwks>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted audiences; the token's `aud` must contain one. Empty (the
    /// field left out): any. Written as `[]` it is refused.
    pub audiences: Vec<String>,
    /// Claims that must be present with exactly these values.
    pub required_claims: Vec<(String, Value)>,
    /// Longest accepted lifetime, `exp - iat` and `exp - now` (default 300).
    pub max_lifetime_seconds: u64,
    /// Tolerated clock difference (default 5).
    pub clock_skew_seconds: u64,
    /// Largest accepted token, checked before any decoding (default 4096).
    pub max_token_bytes: usize,
    /// Token binding, if configured.
    pub binding: Option<Binding>,
    /// Replay protection, if configured.
    pub replay: Option<Replay>,
    /// The app claim, if configured.
    pub app_claim: Option<AppClaim>,
    /// Platforms whose apps may present this provider's tokens; empty (the
    /// field left out) = any. Written as `[]` it is refused.
    pub platforms: Vec<Platform>,
    /// `typ` header values accepted beside `JWT` (compared without case),
    /// for a signer that types its attestation tokens (RFC 8725 §3.11).
    /// A token without `typ` or with `JWT` is always accepted. Left out
    /// (empty), any `…+jwt` is accepted too but the registered kinds of
    /// [`OTHER_JWT_KINDS`] (`at+jwt`, an OAuth access token; `dpop+jwt`, a
    /// DPoP proof), so that another kind of JWT the same key signs is not
    /// taken for an attestation token; listed, only those listed.
    pub typ: Vec<String>,
    /// Keep the token on the upstream request (default: removed).
    pub forward: bool,
    /// Claims copied to upstream request headers: (claim, header).
    pub claim_to_headers: Vec<(String, String)>,
    /// The payload was already verified by Envoy's `jwt_authn` and is read
    /// from dynamic metadata: (filter namespace, key).
    pub verified_by: Option<(String, String)>,
    /// Request signing with the install key the token carries (RFC 9421).
    pub message_signing: Option<MessageSigning>,
    /// Signature failures a client may cause before its further tokens are
    /// refused without verification (a flood of forged RS/ES tokens would
    /// otherwise buy up to a millisecond of CPU each).
    pub failure_budget: FailureBudget,
}

/// `failure_budget`: after `failures` signature failures from one client
/// (IP, or network with the prefixes) within `window_seconds`, that
/// client's unverified tokens get `token_signature` without any signature
/// work until the budget refills. Shared by the workers of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureBudget {
    /// Failures allowed per window; 0 disables the budget.
    pub failures: u32,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// IPv4 prefix the budget is kept per (32 = per address).
    pub v4_prefix: u8,
    /// IPv6 prefix the budget is kept per (64 = per typical subnet).
    pub v6_prefix: u8,
}

impl Provider {
    /// The longest a replay entry of this provider's tokens is kept after
    /// it is recorded: an accepted token expires at most
    /// `max_lifetime_seconds` plus the clock skew from now, and its entry
    /// is kept for the skew after that, plus one second: the clock is read
    /// in whole seconds, so a token whose `exp` plus skew is second `n` is
    /// still taken until `n + 1` (a service window of exactly the rest
    /// would forget its `jti` while a copy still passes).
    pub fn replay_horizon(&self) -> u64 {
        self.max_lifetime_seconds
            .saturating_add(self.clock_skew_seconds.saturating_mul(2))
            .saturating_add(1)
    }
}

impl Default for FailureBudget {
    fn default() -> Self {
        FailureBudget {
            failures: 20,
            window_seconds: 60,
            v4_prefix: 32,
            v6_prefix: 64,
        }
    }
}

/// `tokens[].failure_budget` as written in the configuration; compiled
/// into [`FailureBudget`] (left out: its defaults).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFailureBudget {
    /// Signature failures one client may cause per window (default 20; 0
    /// disables the budget). See [`FailureBudget::failures`].
    #[serde(default = "default_budget_failures")]
    failures: u32,
    /// The window, in seconds (1..=86400, default 60). See
    /// [`FailureBudget::window_seconds`].
    #[serde(default = "default_budget_window")]
    window_seconds: u64,
    /// IPv4 prefix a client is counted by (1..=32, default 32: per
    /// address). See [`FailureBudget::v4_prefix`].
    #[serde(default = "default_budget_v4")]
    v4_prefix: u8,
    /// IPv6 prefix a client is counted by (1..=128, default 64). See
    /// [`FailureBudget::v6_prefix`].
    #[serde(default = "default_budget_v6")]
    v6_prefix: u8,
}

fn default_budget_failures() -> u32 {
    FailureBudget::default().failures
}
fn default_budget_window() -> u64 {
    FailureBudget::default().window_seconds
}
fn default_budget_v4() -> u8 {
    FailureBudget::default().v4_prefix
}
fn default_budget_v6() -> u8 {
    FailureBudget::default().v6_prefix
}

/// `message_signing`: the request must carry an HTTP Message Signature made
/// with the private half of the install key in the token, so that a token
/// copied out of one request is useless without the install's key.
#[derive(Clone, Debug)]
pub struct MessageSigning {
    /// The claim with the install public key (default `ipk`: base64 DER
    /// SubjectPublicKeyInfo of a P-256 or Ed25519 key).
    pub claim: String,
    /// What the signature must cover, its label and its age limits.
    pub policy: crate::signing::SigningPolicy,
    /// Refuse tokens without the key claim (`signature_invalid`); when false
    /// such tokens pass unsigned, but a token that has the claim must
    /// always come with a valid signature.
    pub required: bool,
    /// Accept each signed request once (`token_replayed` for a copy): a
    /// signed request that passed its checks and local limits is
    /// remembered in the instance's shared data until its signature is
    /// too old to verify again, so a request captured with a proxy cannot
    /// be sent again while its signature is fresh (see
    /// [`crate::policy::SignedMark`] for when it is written).
    /// Off by default, because when on, a client that resends the very
    /// same request (same components, same `created` second, no `nonce`)
    /// is refused too.
    pub single_use: bool,
}

/// One `tokens[].from[]` entry as written in the configuration
/// (`{"header": "authorization", "prefix": "Bearer "}`); compiled into a
/// [`TokenSource`] of [`Provider::sources`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    /// Header the token is in (any case). See [`TokenSource::header`].
    header: String,
    /// Prefix the value must start with, compared without case and removed
    /// (default: none). See [`TokenSource::prefix`].
    #[serde(default)]
    prefix: String,
}

/// `tokens[].binding` as written in the configuration; compiled into
/// [`Binding`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBinding {
    /// The claim holding base64(SHA-256) of the bound header values
    /// (default `pay`). See [`Binding::claim`].
    #[serde(default = "default_pay")]
    claim: String,
    /// The bound headers, in order (at least one, none twice). See
    /// [`Binding::headers`].
    headers: Vec<String>,
    /// Refuse tokens without the claim (`token_binding`); default `false`,
    /// such tokens pass unbound. See [`Binding::required`].
    #[serde(default)]
    required: bool,
}

fn default_pay() -> String {
    "pay".into()
}

/// `tokens[].replay` as written in the configuration (`{}` takes every
/// default); compiled into [`Replay`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReplay {
    /// The claim each value of which is accepted once (default `jti`). See
    /// [`Replay::claim`].
    #[serde(default = "default_jti")]
    claim: String,
    /// `local` (default: in the Envoy instance) or `service` (across
    /// instances, through the rate-limit service). See [`Replay::scope`].
    #[serde(default = "default_scope")]
    scope: ReplayScope,
    /// Capacity of the local table (16..=4194304, default 65536). See
    /// [`Replay::max_entries`].
    #[serde(default = "default_replay_entries")]
    max_entries: u32,
}

fn default_jti() -> String {
    "jti".into()
}
fn default_scope() -> ReplayScope {
    ReplayScope::Local
}
/// The default `replay.max_entries`.
pub(crate) fn default_replay_entries() -> u32 {
    65_536
}

/// `tokens[].app_claim` as written in the configuration; compiled into
/// [`AppClaim`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppClaim {
    /// The claim naming the app, matched against the apps'
    /// `token_app_ids` (required). See [`AppClaim::claim`].
    claim: String,
    /// `plain` (default) or `firebase`, which also checks the platform
    /// inside the id. See [`AppClaim::format`].
    #[serde(default)]
    format: AppClaimFormat,
}

/// `tokens[].remote_jwks` as written in the configuration; compiled into
/// [`RemoteJwks`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRemoteJwks {
    /// Envoy cluster serving the JWKS. See [`RemoteJwks::cluster`].
    cluster: String,
    /// `:authority` of the fetch, `host[:port]` without a scheme (default:
    /// the cluster name, or an Istio `outbound|…` cluster's host). See
    /// [`RemoteJwks::authority`].
    #[serde(default, deserialize_with = "crate::config::present")]
    authority: Option<String>,
    /// Path of the JWKS, e.g. `/v1/jwks`. See [`RemoteJwks::path`].
    path: String,
    /// Refresh interval in seconds (at least 10, default 600). See
    /// [`RemoteJwks::refresh_seconds`].
    #[serde(default = "default_refresh")]
    refresh_seconds: u64,
    /// How long the last keys stay in use while refreshes fail (default
    /// 3600). See [`RemoteJwks::grace_seconds`].
    #[serde(default = "default_grace")]
    grace_seconds: u64,
    /// Fetch timeout (1..=60000, default 2000). See
    /// [`RemoteJwks::timeout_ms`].
    #[serde(default = "default_jwks_timeout")]
    timeout_ms: u64,
    /// At most one re-fetch for an unknown `kid` per this many seconds per
    /// instance (default 30). See [`RemoteJwks::min_refetch_seconds`].
    #[serde(default = "default_refetch")]
    min_refetch_seconds: u64,
}

fn default_refresh() -> u64 {
    600
}
fn default_grace() -> u64 {
    3600
}
fn default_jwks_timeout() -> u64 {
    2000
}
fn default_refetch() -> u64 {
    30
}

/// One `tokens[].claim_to_headers[]` entry as written in the configuration
/// (`{"claim": "sub", "header": "x-user-id"}`); compiled into a
/// `(claim, header)` pair of [`Provider::claim_to_headers`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClaimHeader {
    /// The verified claim whose value is copied upstream (the pair's
    /// first member).
    claim: String,
    /// The upstream request header it is copied to (the pair's second
    /// member); a client's copy of it is removed from every request.
    /// Headers appguard reads or sets itself are refused.
    header: String,
}

/// `tokens[].verified_by` as written in the configuration (delegated
/// verification by Envoy's `jwt_authn`); compiled into the
/// `(filter, key)` pair of [`Provider::verified_by`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerifiedBy {
    /// The dynamic-metadata namespace the verified payload is read from
    /// (default `envoy.filters.http.jwt_authn`; the pair's first member).
    #[serde(default = "default_jwt_authn")]
    filter: String,
    /// The key under that namespace holding the payload (`jwt_authn`'s
    /// `payload_in_metadata`; required; the pair's second member).
    key: String,
}

fn default_jwt_authn() -> String {
    "envoy.filters.http.jwt_authn".into()
}

/// `tokens[].message_signing` as written in the configuration; compiled
/// into [`MessageSigning`], whose `policy` takes `label`, `components`,
/// `max_age_seconds` and `clock_skew_seconds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMessageSigning {
    /// The claim holding the install public key (default `ipk`). See
    /// [`MessageSigning::claim`].
    #[serde(default = "default_ipk")]
    claim: String,
    /// Label of the signature to verify (default `install`). See
    /// [`crate::signing::SigningPolicy::label`].
    #[serde(default = "default_label")]
    label: String,
    /// Components the signature must cover on top of the ones always
    /// required (header names, or derived components such as
    /// `@authority`); added to
    /// [`crate::signing::SigningPolicy::required_components`].
    #[serde(default)]
    components: Vec<String>,
    /// Oldest `created` accepted, in seconds (1..=86400, default 300). See
    /// [`crate::signing::SigningPolicy::max_age_seconds`].
    #[serde(default = "default_sig_age")]
    max_age_seconds: u64,
    /// Tolerance for the signer's clock (at most 300, default 30). See
    /// [`crate::signing::SigningPolicy::clock_skew_seconds`].
    #[serde(default = "default_sig_skew")]
    clock_skew_seconds: u64,
    /// Refuse tokens without the key claim (default `true`). See
    /// [`MessageSigning::required`].
    #[serde(default = "default_true")]
    required: bool,
    /// Accept each signed request once (default `false`). See
    /// [`MessageSigning::single_use`].
    #[serde(default)]
    single_use: bool,
}

fn default_ipk() -> String {
    "ipk".into()
}
fn default_label() -> String {
    crate::signing::SigningPolicy::DEFAULT_LABEL.into()
}
fn default_sig_age() -> u64 {
    crate::signing::SigningPolicy::DEFAULT_MAX_AGE_SECONDS
}
fn default_sig_skew() -> u64 {
    crate::signing::SigningPolicy::DEFAULT_CLOCK_SKEW_SECONDS
}
fn default_true() -> bool {
    true
}

/// One `tokens[]` entry as written in the configuration; compiled into
/// [`Provider`] (the list becomes [`crate::config::Config::providers`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    /// Unique name, listed by routes in their `tokens`. See
    /// [`Provider::name`].
    name: String,
    /// `from[]`: where the token is, tried in order; compiled into
    /// [`Provider::sources`] (the name differs).
    from: Vec<RawSource>,
    /// `keys[]`: inline verification keys; they and `jwks` make up
    /// [`Provider::keys`].
    #[serde(default)]
    keys: Vec<keys::RawKey>,
    /// An inline JWK Set `{"keys": [...]}` (at most 64 keys, each must
    /// parse); added to [`Provider::keys`].
    #[serde(default, deserialize_with = "crate::config::present")]
    jwks: Option<Value>,
    /// A JWKS fetched through an Envoy cluster. See
    /// [`Provider::remote_jwks`].
    #[serde(default, deserialize_with = "crate::config::present")]
    remote_jwks: Option<RawRemoteJwks>,
    /// The required `iss` (required with `verified_by`). See
    /// [`Provider::issuer`].
    #[serde(default, deserialize_with = "crate::config::present")]
    issuer: Option<String>,
    /// The token's `aud` must contain one of these; left out, any; written
    /// empty, refused. See [`Provider::audiences`].
    #[serde(default, deserialize_with = "crate::config::restriction")]
    audiences: Vec<String>,
    /// Claims that must be present with exactly these JSON values (a name
    /// written twice is refused). See [`Provider::required_claims`].
    #[serde(default, deserialize_with = "crate::config::unique_members")]
    required_claims: Map<String, Value>,
    /// Longest accepted `exp - iat` and `exp - now` (1..=86400, default
    /// 300). See [`Provider::max_lifetime_seconds`].
    #[serde(default = "default_lifetime")]
    max_lifetime_seconds: u64,
    /// Tolerated clock difference (at most 300, default 5). See
    /// [`Provider::clock_skew_seconds`].
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
    /// Largest accepted token, checked before decoding (64..=65536, default
    /// 4096). See [`Provider::max_token_bytes`].
    // `u64`, not `usize`: see `RawConfig::max_body_bytes`.
    #[serde(default = "default_max_token")]
    max_token_bytes: u64,
    /// Token binding to request header values. See [`Provider::binding`].
    #[serde(default, deserialize_with = "crate::config::present")]
    binding: Option<RawBinding>,
    /// Replay protection: each claim value accepted once. See
    /// [`Provider::replay`].
    #[serde(default, deserialize_with = "crate::config::present")]
    replay: Option<RawReplay>,
    /// The claim naming the app. See [`Provider::app_claim`].
    #[serde(default, deserialize_with = "crate::config::present")]
    app_claim: Option<RawAppClaim>,
    /// Platforms whose apps may present this provider's tokens
    /// (`platform_denied`); left out, any; written empty, refused. See
    /// [`Provider::platforms`].
    #[serde(default, deserialize_with = "crate::config::restriction")]
    platforms: Vec<Platform>,
    /// `typ` values accepted beside `JWT`; left out, any `…+jwt` but the
    /// registered other kinds; written empty, refused. See
    /// [`Provider::typ`].
    #[serde(default, deserialize_with = "crate::config::restriction")]
    typ: Vec<String>,
    /// Keep the token on the upstream request (default `false`: removed).
    /// See [`Provider::forward`].
    #[serde(default)]
    forward: bool,
    /// `claim_to_headers[]`: verified claims copied to upstream request
    /// headers; compiled into `(claim, header)` pairs,
    /// [`Provider::claim_to_headers`].
    #[serde(default)]
    claim_to_headers: Vec<RawClaimHeader>,
    /// Delegated verification: the payload Envoy's `jwt_authn` verified,
    /// read from dynamic metadata; compiled into the `(filter, key)` pair
    /// of [`Provider::verified_by`].
    #[serde(default, deserialize_with = "crate::config::present")]
    verified_by: Option<RawVerifiedBy>,
    /// Request signing with the install key the token carries (RFC 9421).
    /// See [`Provider::message_signing`].
    #[serde(default, deserialize_with = "crate::config::present")]
    message_signing: Option<RawMessageSigning>,
    /// Signature failures one client may cause per window before its
    /// tokens are refused unverified (left out: the defaults). See
    /// [`Provider::failure_budget`].
    #[serde(default, deserialize_with = "crate::config::present")]
    failure_budget: Option<RawFailureBudget>,
}

fn default_lifetime() -> u64 {
    300
}
fn default_skew() -> u64 {
    5
}
fn default_max_token() -> u64 {
    4096
}

/// One `tokens[]` entry, checked and compiled. A value that would make the
/// provider refuse every token (no key of any kind, a blank claim name) or
/// pass every token unbound (a blank `binding.claim`) is an error at load,
/// not a surprise at the first request.
pub(crate) fn compile_provider(at: &str, raw: RawProvider) -> Result<Provider, ConfigError> {
    let err = |field: &str, msg: String| ConfigError::new(format!("{at}.{field}"), msg);
    if !crate::config::valid_name(&raw.name) {
        return Err(err(
            "name",
            "must be 1-64 characters of [A-Za-z0-9_-]".into(),
        ));
    }
    if raw.from.is_empty() {
        return Err(err(
            "from",
            "at least one source (header) is required".into(),
        ));
    }
    // A name no token, claim or filter can have: empty, or blank (a
    // template's unset value). `binding.claim: ""` would let every token
    // pass unbound; most of the others would refuse every token.
    let blank = |field: &str, v: &str| {
        if v.trim().is_empty() {
            Err(err(field, "must not be empty".into()))
        } else {
            Ok(())
        }
    };
    let mut sources = Vec::new();
    for (i, s) in raw.from.into_iter().enumerate() {
        let header = crate::config::header_name(&format!("{at}.from[{i}].header"), &s.header)?;
        // `cookie` holds every cookie of the request: a token there would
        // be found only as the request's one cookie (beside another it
        // reads `T; sid=…`, and HTTP/2 sends cookies as separate headers),
        // and removing the token would remove the session cookies with it.
        if crate::request::same_header_name(header.as_bytes(), b"cookie") {
            return Err(err(
                &format!("from[{i}].header"),
                "`cookie` holds all of the request's cookies, not one token: send the token \
                 in a header of its own"
                    .into(),
            ));
        }
        // No header value holds one (RFC 9110 §5.5): no token would be found.
        if s.prefix.contains(char::is_control) {
            return Err(err(
                &format!("from[{i}].prefix"),
                "must not hold control characters".into(),
            ));
        }
        sources.push(TokenSource {
            header,
            prefix: s.prefix,
        });
    }
    let mut keyset = Vec::new();
    let mut text_secrets = Vec::new();
    let mut key_fingerprints = Vec::new();
    let raw_keys_len = raw.keys.len();
    for (i, k) in raw.keys.into_iter().enumerate() {
        if let Some(field) = k.text_secret_field() {
            text_secrets.push(format!("keys[{i}].{field}"));
        }
        key_fingerprints.push(k.fingerprint());
        let key = keys::compile_key(k).map_err(|(field, msg)| {
            let path = if field.is_empty() {
                format!("{at}.keys[{i}]")
            } else {
                format!("{at}.keys[{i}].{field}")
            };
            ConfigError::new(path, msg)
        })?;
        keyset.push(key);
    }
    if let Some(jwks) = &raw.jwks {
        if let Some(members) = jwks.get("keys").and_then(Value::as_array) {
            for (j, k) in members.iter().enumerate() {
                if keys::oct_secret_is_text(k) {
                    text_secrets.push(format!("jwks.keys[{j}].k"));
                }
                key_fingerprints.push(keys::jwk_fingerprint(k));
            }
        }
        keyset.extend(
            keys::keys_from_jwks(jwks, keys::JwksOrigin::Configured).map_err(|m| err("jwks", m))?,
        );
    }
    let remote_jwks = match raw.remote_jwks {
        Some(r) => {
            crate::config::check_cluster(&format!("{at}.remote_jwks.cluster"), &r.cluster)?;
            crate::config::check_call_target(
                &format!("{at}.remote_jwks"),
                r.authority.as_deref(),
                &r.path,
            )?;
            if r.timeout_ms == 0 || r.timeout_ms > 60_000 {
                return Err(err("remote_jwks.timeout_ms", "must be 1..=60000".into()));
            }
            if r.refresh_seconds < 10 {
                return Err(err(
                    "remote_jwks.refresh_seconds",
                    "must be at least 10".into(),
                ));
            }
            Some(RemoteJwks {
                authority: r
                    .authority
                    .unwrap_or_else(|| crate::config::default_authority(&r.cluster)),
                cluster: r.cluster,
                path: r.path,
                refresh_seconds: r.refresh_seconds,
                grace_seconds: r.grace_seconds,
                timeout_ms: r.timeout_ms,
                min_refetch_seconds: r.min_refetch_seconds,
            })
        }
        None => None,
    };
    let verified_by = match raw.verified_by {
        Some(v) => {
            if !keyset.is_empty() || remote_jwks.is_some() {
                return Err(err(
                    "verified_by",
                    "jwt_authn verifies this provider's tokens: its `keys`, `jwks` and `remote_jwks` would never be used (leave them out, or make a separate provider)".into(),
                ));
            }
            // The payload under one metadata key may be another provider's:
            // Istio writes every RequestAuthentication rule of a workload
            // under `payload`, and an allow-any requirement passes with the
            // first token that verifies (an end user's, say).
            if raw.issuer.is_none() {
                return Err(err(
                    "issuer",
                    "required with `verified_by`: the payload in metadata must be this provider's, not that of another issuer jwt_authn also accepts".into(),
                ));
            }
            blank("verified_by.filter", &v.filter)?;
            blank("verified_by.key", &v.key)?;
            Some((v.filter, v.key))
        }
        None => None,
    };
    // No issuer or audience holds a control character; one quoted in
    // advice would write into Envoy's log as it is.
    let plain = |field: &str, v: &str| {
        blank(field, v)?;
        if v.contains(char::is_control) {
            return Err(err(field, "must not hold control characters".into()));
        }
        Ok(())
    };
    if let Some(iss) = &raw.issuer {
        plain("issuer", iss)?;
    }
    // Whether every number in `v`, at any depth, is one `ok` takes.
    fn every_number(v: &Value, ok: fn(&serde_json::Number) -> bool) -> bool {
        match v {
            Value::Number(n) => ok(n),
            Value::Array(a) => a.iter().all(|x| every_number(x, ok)),
            Value::Object(o) => o.values().all(|x| every_number(x, ok)),
            _ => true,
        }
    }
    // A number is compared as a double unless it is an integer of 64 bits:
    // `123456789012345678901234` or `0.1` would also match the neighbours
    // that round to the same double, and "exactly these values" would not
    // hold.
    let exact = |n: &serde_json::Number| !n.is_f64();
    if let Some((name, _)) = raw
        .required_claims
        .iter()
        .find(|(_, v)| !every_number(v, exact))
    {
        return Err(err(
            &format!("required_claims.{name}"),
            "a number here must be an integer of at most 64 bits: one with a fraction, an \
             exponent or more digits is compared as a double, and also matches its neighbours"
                .into(),
        ));
    }
    // jwt_authn hands a delegated payload over as a protobuf Struct, whose
    // numbers are doubles: an integer from 9e15 on comes back as a double
    // (see `delegated::number`), and would match no token.
    let within_metadata = |n: &serde_json::Number| {
        n.as_i64()
            .is_some_and(|i| i.unsigned_abs() < 9_000_000_000_000_000)
    };
    if verified_by.is_some() {
        if let Some((name, _)) = raw
            .required_claims
            .iter()
            .find(|(_, v)| !every_number(v, within_metadata))
        {
            return Err(err(
                &format!("required_claims.{name}"),
                "with `verified_by`, a number here must be within ±9e15: jwt_authn hands \
                 claims over as doubles, and a larger one would match no token"
                    .into(),
            ));
        }
    }
    for (i, a) in raw.audiences.iter().enumerate() {
        plain(&format!("audiences[{i}]"), a)?;
    }
    for (i, t) in raw.typ.iter().enumerate() {
        // A media type's characters (RFC 6838), as `typ` values are.
        let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b);
        if t.is_empty() || t.len() > 64 || !t.bytes().all(token_char) {
            return Err(err(
                &format!("typ[{i}]"),
                "must be a media type name such as \"attest+jwt\" (letters, digits, !#$&-^_.+; at most 64)".into(),
            ));
        }
    }
    if !raw.typ.is_empty() && verified_by.is_some() {
        return Err(err(
            "typ",
            "jwt_authn verifies a delegated provider's token and passes on no header: `typ` cannot be checked".into(),
        ));
    }
    if keyset.is_empty() && remote_jwks.is_none() && verified_by.is_none() {
        return Err(err(
            "keys",
            "a provider needs `keys`, `jwks`, `remote_jwks` or `verified_by`".into(),
        ));
    }
    // The later of two keys with one `kid`, named where it was written:
    // `keys[j]`, or the inline `jwks` (whose keys follow `keys`).
    let configured = raw_keys_len;
    for (j, b) in keyset.iter().enumerate() {
        if b.kid.is_some() && keyset[..j].iter().any(|a| a.kid == b.kid) {
            let field = if j < configured {
                format!("keys[{j}].kid")
            } else {
                format!("jwks.keys[{}].kid", j - configured)
            };
            return Err(err(
                &field,
                format!("duplicate kid {:?}", b.kid.as_deref().unwrap_or("")),
            ));
        }
    }
    if raw.max_lifetime_seconds == 0 || raw.max_lifetime_seconds > MAX_LIFETIME_CEILING_SECONDS {
        return Err(err("max_lifetime_seconds", "must be 1..=86400".into()));
    }
    if raw.clock_skew_seconds > 300 {
        return Err(err("clock_skew_seconds", "must be at most 300".into()));
    }
    if !(64..=65_536).contains(&raw.max_token_bytes) {
        return Err(err("max_token_bytes", "must be 64..=65536".into()));
    }
    let binding = match raw.binding {
        Some(b) => {
            blank("binding.claim", &b.claim)?;
            if b.headers.is_empty() {
                return Err(err(
                    "binding.headers",
                    "at least one header is required".into(),
                ));
            }
            let mut headers: Vec<String> = Vec::new();
            for (i, h) in b.headers.iter().enumerate() {
                let h = crate::config::header_name(&format!("{at}.binding.headers[{i}]"), h)?;
                // The digest would be of its value twice (also under
                // another spelling, as each is read in every spelling): no
                // genuine token's claim could ever match.
                if headers
                    .iter()
                    .any(|p| crate::request::same_header_name(p.as_bytes(), h.as_bytes()))
                {
                    return Err(err(&format!("binding.headers[{i}]"), "listed twice".into()));
                }
                headers.push(h);
            }
            Some(Binding {
                claim: b.claim,
                headers,
                required: b.required,
            })
        }
        None => None,
    };
    let replay = match raw.replay {
        Some(r) => {
            blank("replay.claim", &r.claim)?;
            if !(16..=4_194_304).contains(&r.max_entries) {
                return Err(err("replay.max_entries", "must be 16..=4194304".into()));
            }
            Some(Replay {
                claim: r.claim,
                scope: r.scope,
                max_entries: r.max_entries,
                past_layouts: crate::store::PastLayouts::default(),
            })
        }
        None => None,
    };
    let mut claim_to_headers = Vec::new();
    for (i, c) in raw.claim_to_headers.into_iter().enumerate() {
        blank(&format!("claim_to_headers[{i}].claim"), &c.claim)?;
        let h =
            crate::config::header_name(&format!("{at}.claim_to_headers[{i}].header"), &c.header)?;
        if crate::request::reserved_header(&h, &[]) {
            return Err(err(
                &format!("claim_to_headers[{i}].header"),
                "x-appguard-* headers (`x_appguard_*` too) are reserved for appguard's own \
                 identity headers"
                    .into(),
            ));
        }
        claim_to_headers.push((c.claim, h));
    }
    let message_signing = match raw.message_signing {
        Some(m) => {
            blank("message_signing.claim", &m.claim)?;
            // An RFC 8941 key (a lower-case letter or `*`, then lower-case
            // letters, digits, `_`, `-`, `.`, `*`): a label such as `1sig`
            // or `-x` could never be found in a client's fields.
            if !crate::signing::is_sf_key(&m.label) {
                return Err(err(
                    "message_signing.label",
                    "a structured-field key: a lower case letter or `*`, then lower case letters, digits, `_`, `-`, `.`, `*`".into(),
                ));
            }
            if m.max_age_seconds == 0 || m.max_age_seconds > 86_400 {
                return Err(err(
                    "message_signing.max_age_seconds",
                    "must be 1..=86400".into(),
                ));
            }
            // Like the token's own skew: a larger one would turn off the
            // signature's freshness check (`created`, `expires`).
            if m.clock_skew_seconds > 300 {
                return Err(err(
                    "message_signing.clock_skew_seconds",
                    "must be at most 300".into(),
                ));
            }
            let mut policy = crate::signing::SigningPolicy::new(
                m.label,
                m.max_age_seconds,
                m.clock_skew_seconds,
            );
            for (i, c) in m.components.into_iter().enumerate() {
                // A signature cannot cover its own `Signature` or
                // `Signature-Input` field: a policy asking for either could
                // never be met.
                let ok = if c.starts_with('@') {
                    crate::signing::is_bare_request_component(&c)
                } else {
                    crate::config::header_name("", &c).is_ok()
                        && !c.eq_ignore_ascii_case("signature")
                        && !c.eq_ignore_ascii_case("signature-input")
                };
                if !ok || c.len() > 64 {
                    return Err(err(
                        &format!("message_signing.components[{i}]"),
                        format!("{c:?} is not a component name"),
                    ));
                }
                let c = c.to_ascii_lowercase();
                if !policy.required_components.contains(&c) {
                    policy.required_components.push(c);
                }
            }
            Some(MessageSigning {
                claim: m.claim,
                policy,
                required: m.required,
                single_use: m.single_use,
            })
        }
        None => None,
    };
    let app_claim = match raw.app_claim {
        Some(a) => {
            blank("app_claim.claim", &a.claim)?;
            Some(AppClaim {
                claim: a.claim,
                format: a.format,
            })
        }
        None => None,
    };
    let failure_budget = match raw.failure_budget {
        Some(b) => {
            if b.window_seconds == 0 || b.window_seconds > 86_400 {
                return Err(err(
                    "failure_budget.window_seconds",
                    "must be 1..=86400".into(),
                ));
            }
            if b.v4_prefix == 0 || b.v4_prefix > 32 {
                return Err(err("failure_budget.v4_prefix", "must be 1..=32".into()));
            }
            if b.v6_prefix == 0 || b.v6_prefix > 128 {
                return Err(err("failure_budget.v6_prefix", "must be 1..=128".into()));
            }
            FailureBudget {
                failures: b.failures,
                window_seconds: b.window_seconds,
                v4_prefix: b.v4_prefix,
                v6_prefix: b.v6_prefix,
            }
        }
        None => FailureBudget::default(),
    };
    Ok(Provider {
        failure_budget,
        message_signing,
        name: raw.name,
        sources,
        keys: keyset,
        remote_jwks,
        issuer: raw.issuer,
        audiences: raw.audiences,
        required_claims: raw.required_claims.into_iter().collect(),
        max_lifetime_seconds: raw.max_lifetime_seconds,
        clock_skew_seconds: raw.clock_skew_seconds,
        max_token_bytes: usize::try_from(raw.max_token_bytes).unwrap_or(usize::MAX),
        binding,
        replay,
        app_claim,
        platforms: raw.platforms,
        typ: raw.typ,
        forward: raw.forward,
        claim_to_headers,
        verified_by,
        text_secrets,
        key_fingerprints,
    })
}

/// Why a token was refused, in more detail than the reason code (for logs
/// and tests). [`TokenError::reason`] maps it onto SPEC §4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// No token in any source.
    Missing,
    /// Not a well-formed token, or a forbidden header member.
    Malformed(&'static str),
    /// No configured key has this `kid` (a JWKS re-fetch may help).
    UnknownKid,
    /// A key exists but for another algorithm, or the signature is wrong.
    Signature(&'static str),
    /// `exp` has passed.
    Expired,
    /// `nbf` or `iat` is in the future.
    NotYetValid,
    /// No `exp`, or a lifetime beyond the maximum.
    Lifetime,
    /// Issuer, audience or a required claim does not match.
    Claims(&'static str),
}

impl TokenError {
    /// The SPEC §4 reason code.
    pub fn reason(&self) -> Reason {
        match self {
            TokenError::Missing => Reason::TokenMissing,
            TokenError::Malformed(_) => Reason::TokenMalformed,
            TokenError::UnknownKid | TokenError::Signature(_) => Reason::TokenSignature,
            TokenError::Expired => Reason::TokenExpired,
            TokenError::NotYetValid => Reason::TokenNotYetValid,
            TokenError::Lifetime => Reason::TokenLifetime,
            TokenError::Claims(_) => Reason::TokenClaims,
        }
    }
}

/// A token whose signature and rules have been checked. Its `Debug`
/// names the claims without their values (they may be personal data).
#[derive(Clone)]
pub struct VerifiedToken {
    /// Index of the provider in `Config::providers`.
    pub provider: usize,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// The whole payload.
    pub claims: Map<String, Value>,
}

impl std::fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("provider", &self.provider)
            .field("exp", &self.exp)
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl VerifiedToken {
    /// A claim as text: strings as they are, numbers and booleans printed.
    pub fn claim_text(&self, name: &str) -> Option<String> {
        claim_text(&self.claims, name)
    }
}

/// A claim as text: strings as they are, numbers and booleans printed.
pub fn claim_text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Finds the provider's token in the request. `Err(Malformed)` when the
/// source header is sent twice with different values, also under another
/// spelling of its name, or when two of the provider's sources hold
/// different tokens (which one would the upstream read?).
pub fn extract<'r>(provider: &Provider, req: &Request<'r>) -> Result<Option<&'r str>, TokenError> {
    Ok(extract_with_source(provider, req)?.map(|(_, t)| t))
}

/// [`extract`], with the header the token came from: the header a request
/// signature must cover (`message_signing`), whichever of the provider's
/// sources the client used.
pub fn extract_with_source<'p, 'r>(
    provider: &'p Provider,
    req: &Request<'r>,
) -> Result<Option<(&'p str, &'r str)>, TokenError> {
    let mut found: Option<(&'p str, &'r str)> = None;
    for src in &provider.sources {
        // Every spelling an upstream reads as this header (`approov_token`
        // is `approov-token` to PHP): a second token under another spelling
        // must be the same token, or the upstream may read the one not
        // verified.
        let value = req
            .header_unique_any_spelling(&src.header)
            .map_err(|()| TokenError::Malformed("token header repeated"))?;
        let Some(token) = value.and_then(|v| source_token(src, v)) else {
            continue;
        };
        match found {
            None => found = Some((src.header.as_str(), token)),
            // The first source's token is the one verified; another one
            // beside it would reach the upstream unverified (`forward`), as
            // Envoy's `jwt_authn` refuses too: every token must be valid.
            Some((_, first)) if first != token => {
                return Err(TokenError::Malformed("token sources disagree"))
            }
            Some(_) => {}
        }
    }
    Ok(found)
}

/// The token a header's `value` holds for the source `src`: all of it, or
/// what follows the source's prefix (`Bearer `, any case); none if the
/// prefix is not there. A value that was not UTF-8 carries a mark in
/// front (`headers::is_marked`), which would hide the prefix: where the
/// prefix follows the mark, the token is the whole marked value, which
/// equals and verifies as no token (a bad token, refused as one, not a
/// header without a token).
pub(crate) fn source_token<'r>(src: &TokenSource, value: &'r str) -> Option<&'r str> {
    let unmarked = crate::headers::unmarked(value);
    if unmarked.len() < value.len() {
        return unmarked_source_token(src, unmarked).map(|_| value);
    }
    unmarked_source_token(src, value)
}

/// [`source_token`] of a value without the mark.
fn unmarked_source_token<'r>(src: &TokenSource, value: &'r str) -> Option<&'r str> {
    if src.prefix.is_empty() {
        return Some(value.trim());
    }
    let p = src.prefix.len();
    match (value.get(..p), value.get(p..)) {
        (Some(prefix), Some(rest))
            if !rest.is_empty() && prefix.eq_ignore_ascii_case(&src.prefix) =>
        {
            Some(rest.trim())
        }
        _ => None,
    }
}

/// What the cheap checks learned about a token: the claims (unverified until
/// the signature is checked) and the key to check it with.
#[derive(Debug)]
pub struct Prechecked<'k> {
    /// The key chosen by `kid` and algorithm.
    pub key: &'k Key,
    /// The other keys tried in turn if `key` does not verify the token:
    /// for a token that names no `kid`, the provider's other keys of its
    /// algorithm (as Envoy's `jwt_authn` does), so that two secrets or a
    /// JWKS without `kid`s all work; for one that does, other keys of its
    /// algorithm under the same `kid` (a fetched JWKS may repeat one).
    /// Usually empty (no allocation).
    pub others: Vec<&'k Key>,
    /// `exp`.
    pub exp: u64,
    /// The payload.
    pub claims: Map<String, Value>,
    /// Whether the token names no `kid`: while a remote JWKS is pending,
    /// its key may be one of the set still to come.
    pub kidless: bool,
}

/// A token part decoded by the strict [`b64`] decoder: each byte string has
/// one spelling, so a token cannot be re-spelled past the negative cache
/// or the replay check.
fn b64url(part: &str) -> Result<Vec<u8>, TokenError> {
    b64::decode(part.as_bytes()).ok_or(TokenError::Malformed("not base64url without padding"))
}

/// A token's header as the cheap checks read it, and its payload part
/// (still base64url).
struct Head<'t> {
    /// The header's `alg`, one this module verifies. Only keys of this very
    /// algorithm are tried (RFC 8725 §3.1: the token never gets a key used
    /// with another algorithm).
    alg: Alg,
    /// The header (its `kid` is borrowed from it).
    header: Map<String, Value>,
    /// The payload part, still base64url: its claims are read only after
    /// the header's checks and the choice of key, the cheaper refusals.
    payload: &'t str,
}

impl Head<'_> {
    /// The `kid`, already checked to be a string of at most 256 bytes.
    fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }
}

/// The `typ` values of the registered kinds of JWT that are not
/// attestation tokens (RFC 8725 §3.11): OAuth access tokens (RFC 9068),
/// DPoP proofs (RFC 9449), security event tokens (RFC 8417), logout
/// tokens (OpenID back-channel logout), request objects (RFC 9101),
/// introspection answers (RFC 9701), client assertions and SD-JWT key
/// binding proofs. (Written without `application/`, which a `typ` may
/// carry or not: see `media_subtype`.)
pub const OTHER_JWT_KINDS: &[&str] = &[
    "at+jwt",
    "dpop+jwt",
    "secevent+jwt",
    "logout+jwt",
    "oauth-authz-req+jwt",
    "token-introspection+jwt",
    "client-authentication+jwt",
    "kb+jwt",
];

/// Whether `typ` is taken where the provider lists none: a `…+jwt`
/// (a signer's own kind, such as `attest+jwt`) that is not one of
/// [`OTHER_JWT_KINDS`].
fn typ_jwt_of_no_other_kind(typ: &str) -> bool {
    let jwt = typ
        .len()
        .checked_sub(4)
        .and_then(|at| typ.get(at..))
        .is_some_and(|s| s.eq_ignore_ascii_case("+jwt"));
    jwt && !OTHER_JWT_KINDS.iter().any(|k| k.eq_ignore_ascii_case(typ))
}

/// A `typ` as RFC 7515 §4.1.9 compares it: `application/jwt` is `JWT`
/// (a value without `/` stands for `application/` and that value; media
/// types compare without regard to case).
fn media_subtype(typ: &str) -> &str {
    const APPLICATION: &str = "application/";
    match typ.get(..APPLICATION.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(APPLICATION) => {
            typ.get(APPLICATION.len()..).unwrap_or("")
        }
        _ => typ,
    }
}

/// The checks of size, structure and header: no key, no signature work.
fn read_head<'t>(provider: &Provider, token: &'t str) -> Result<Head<'t>, TokenError> {
    if token.len() > provider.max_token_bytes {
        return Err(TokenError::Malformed("token too large"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three parts"));
    };
    // The signature part must be well-formed too (and non-empty: an
    // unsigned token is never accepted).
    if !b64::is_valid(s.as_bytes()) {
        return Err(TokenError::Malformed("not base64url without padding"));
    }
    let header = strict_json::parse_object(&b64url(h)?)
        .ok_or(TokenError::Malformed("header is not a JSON object"))?;
    for forbidden in ["crit", "jwk", "jku", "x5u", "x5c", "b64", "zip", "enc"] {
        if header.contains_key(forbidden) {
            return Err(TokenError::Malformed("forbidden header member"));
        }
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::from_name)
        .ok_or(TokenError::Malformed("unsupported alg"))?;
    match header.get("kid") {
        None => {}
        Some(Value::String(k)) if k.len() <= 256 => {}
        Some(_) => return Err(TokenError::Malformed("bad kid")),
    }
    // RFC 8725 §3.11: another kind of JWT the same key signs (an access
    // token, a DPoP proof) is not an attestation token.
    if let Some(typ) = header.get("typ") {
        let ok = typ.as_str().map(media_subtype).is_some_and(|t| {
            t.eq_ignore_ascii_case("JWT")
                || t.eq_ignore_ascii_case("JOSE")
                || if provider.typ.is_empty() {
                    typ_jwt_of_no_other_kind(t)
                } else {
                    // (Listed values hold no `/`: compile_provider refuses it.)
                    provider.typ.iter().any(|a| a.eq_ignore_ascii_case(t))
                }
        });
        if !ok {
            return Err(TokenError::Malformed("typ not accepted"));
        }
    }
    Ok(Head {
        alg,
        header,
        payload: p,
    })
}

/// The payload's claims, checked ([`check_claims`]: lifetime, issuer,
/// audience, required values); their `exp`.
fn read_claims(
    provider: &Provider,
    payload: &str,
    now: u64,
) -> Result<(Map<String, Value>, u64), TokenError> {
    let claims = strict_json::parse_object(&b64url(payload)?)
        .ok_or(TokenError::Malformed("payload is not a JSON object"))?;
    let exp = check_claims(provider, &claims, now)?;
    Ok((claims, exp))
}

/// The cheap refusals, in order: size, structure, header, key, claims. No
/// signature work. `keys` are the provider's configured keys, `extra_keys`
/// the fetched ones. `keys_pending`: the provider has a remote JWKS whose
/// keys are not loaded (not fetched yet, or dropped after the grace): a
/// `kid` no loaded key names is then unknown — the key may be in the set
/// still to come — never a case for trying keys that name no `kid`.
pub fn precheck<'k>(
    provider: &Provider,
    keys: &'k [Key],
    extra_keys: &'k [Key],
    keys_pending: bool,
    token: &str,
    now: u64,
) -> Result<Prechecked<'k>, TokenError> {
    let head = read_head(provider, token)?;
    let (alg, kid) = (head.alg, head.kid());
    let all = || keys.iter().chain(extra_keys.iter());
    // Keys that name no `kid` verify tokens that name one only where the
    // whole key set names none (see `select_key`).
    let kidless_set = !keys_pending && names_no_kid(all());
    // Nor is a token without `kid` one for keys of another algorithm while
    // the remote set is still to come: its key may be there.
    if keys_pending && kid.is_none() && !all().any(|k| k.alg == alg) {
        return Err(TokenError::UnknownKid);
    }
    let key = select_key(all(), alg, kid, kidless_set)?;
    // Without a `kid` (or with one, where no key names any), every key of
    // the algorithm; with one, the other keys of that algorithm under the
    // same `kid` (a fetched JWKS may repeat a `kid`: the first key alone
    // would refuse tokens of the second).
    let any_key = kid.is_none() || kidless_set;
    let others = all()
        .filter(|k| k.alg == alg && !std::ptr::eq(*k, key) && (any_key || k.kid.as_deref() == kid))
        .collect();
    let (claims, exp) = read_claims(provider, head.payload, now)?;
    Ok(Prechecked {
        key,
        others,
        exp,
        claims,
        kidless: kid.is_none(),
    })
}

#[cfg(test)]
thread_local! {
    /// Test-only: how many times a token's header or payload was decoded
    /// unverified, to show what the cached path costs.
    pub(crate) static UNVERIFIED_DECODES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The token's claims, unverified (only to choose among providers that
/// all hold the same token: the chosen one verifies everything). `None`
/// for anything that is not a readable token of at most `max_bytes`.
pub fn unverified_claims(max_bytes: usize, token: &str) -> Option<Map<String, Value>> {
    #[cfg(test)]
    UNVERIFIED_DECODES.with(|n| n.set(n.get() + 1));
    if token.len() > max_bytes {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    strict_json::parse_object(&b64::decode(payload.as_bytes())?)
}

/// The `kid` a token's header names, unverified (only to choose among
/// providers that all hold the same token, as [`unverified_claims`]).
/// `None` for a token over `max_bytes`, an unreadable header, or no `kid`.
pub fn unverified_kid(max_bytes: usize, token: &str) -> Option<String> {
    #[cfg(test)]
    UNVERIFIED_DECODES.with(|n| n.set(n.get() + 1));
    if token.len() > max_bytes {
        return None;
    }
    let header = token.split('.').next()?;
    strict_json::parse_object(&b64::decode(header.as_bytes())?)?
        .get("kid")?
        .as_str()
        .map(str::to_owned)
}

/// How well a token's claims (unverified, or a delegated payload) fit
/// `provider`, to choose among providers that could each take it, as
/// `jwt_authn` picks a provider by issuer: 3 for its `issuer` and one of
/// its `audiences` (one project's providers for two apps share an
/// issuer), 2 for its issuer alone, 1 for a provider that names no issuer,
/// 0 for another issuer's. The claims only choose: the chosen provider
/// checks everything.
pub fn fit(provider: &Provider, claims: &Map<String, Value>) -> u8 {
    match provider.issuer.as_deref() {
        None => 1,
        Some(i) if claims.get("iss").and_then(Value::as_str) == Some(i) => {
            2 + u8::from(accepts_audience(provider, claims))
        }
        Some(_) => 0,
    }
}

/// Whether the provider takes a token with these claims for one of its
/// `audiences` (any token, if it lists none).
pub fn accepts_audience(provider: &Provider, claims: &Map<String, Value>) -> bool {
    provider.audiences.is_empty()
        || match claims.get("aud") {
            Some(Value::String(a)) => provider.audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| provider.audiences.iter().any(|x| x == a)),
            _ => false,
        }
}

/// The cheap refusals of [`precheck`] that need no key: size, structure,
/// header, then the (unverified) claims. For a token that cannot be
/// verified because its provider has no keys and the route fails open:
/// it is then treated as absent, but one that is malformed, expired or
/// for another issuer or audience is still refused. Passed, the token's
/// `kid` if it names one: a request held for keys goes on once keys
/// naming it load.
pub fn precheck_without_keys(
    provider: &Provider,
    token: &str,
    now: u64,
) -> Result<Option<Box<str>>, TokenError> {
    let head = read_head(provider, token)?;
    read_claims(provider, head.payload, now)?;
    Ok(head.kid().map(Box::from))
}

impl Prechecked<'_> {
    /// [`check_signature`] with the chosen key, then with each of
    /// [`Prechecked::others`] until one verifies; the chosen key's error
    /// if none does.
    pub fn check_signature(&self, token: &str) -> Result<(), TokenError> {
        let first = check_signature(self.key, token);
        if first.is_ok()
            || self
                .others
                .iter()
                .any(|k| check_signature(k, token).is_ok())
        {
            return Ok(());
        }
        first
    }
}

/// The key for a token's `alg` and `kid`. `kidless_set`: no key of the
/// provider's whole set names a `kid` (see [`precheck`]).
fn select_key<'k>(
    keys: impl Iterator<Item = &'k Key> + Clone,
    alg: Alg,
    kid: Option<&str>,
    kidless_set: bool,
) -> Result<&'k Key, TokenError> {
    let mut same_kid_other_alg = false;
    for k in keys.clone() {
        let kid_ok = match (kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if !kid_ok {
            continue;
        }
        if k.alg == alg {
            return Ok(k);
        }
        same_kid_other_alg = true;
    }
    if same_kid_other_alg {
        // e.g. HS256 signed with an RSA public key as the secret.
        return Err(TokenError::Signature("algorithm does not match the key"));
    }
    if kid.is_some() && kidless_set {
        // Keys that name no `kid` at all verify tokens that carry one, as
        // with Envoy's `jwt_authn` (a secret configured without a `kid`,
        // an issuer's JWKS without them). Where any key names a `kid`, an
        // unknown one stays unknown: it may be a key the issuer has just
        // published (the re-fetch path), not one to try the others for.
        return keys
            .clone()
            .find(|k| k.alg == alg)
            .ok_or(TokenError::Signature("no key for this algorithm"));
    }
    if kid.is_some() {
        Err(TokenError::UnknownKid)
    } else {
        Err(TokenError::Signature("no key for this algorithm"))
    }
}

/// Whether no key of the set names a `kid`.
fn names_no_kid<'k>(mut keys: impl Iterator<Item = &'k Key>) -> bool {
    keys.all(|k| k.kid.is_none())
}

/// A time claim as whole seconds: the second at or before it and the one
/// at or after it, equal unless it has a fraction (RFC 7519 §2 allows
/// them; most signers write whole seconds), so that each check can read
/// it the stricter way.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<(u64, u64)>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        // Non-negative numbers below 2^40 (a date some 34,000 years away):
        // negatives, strings and larger values are malformed.
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|v| (v, v))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.is_sign_positive() && *f < (1u64 << 40) as f64)
                    .map(|f| (f.floor() as u64, f.ceil() as u64))
            })
            .filter(|(_, late)| *late < 1 << 40)
            .map(Some)
            .ok_or(TokenError::Malformed(
                "time claim is not a non-negative number",
            )),
        Some(_) => Err(TokenError::Malformed("time claim is not a number")),
    }
}

/// Whether the registered claims that must be strings are (RFC 7519 §4.1:
/// `iss`, `sub`, `jti`, and `aud` as a string or an array of strings): a
/// token that breaks this is malformed, as `jwt_authn` finds it, however
/// it was signed.
fn registered_claims_well_typed(claims: &Map<String, Value>) -> bool {
    ["iss", "sub", "jti"]
        .iter()
        .all(|name| claims.get(*name).is_none_or(Value::is_string))
        && match claims.get("aud") {
            None | Some(Value::String(_)) => true,
            Some(Value::Array(list)) => list.iter().all(Value::is_string),
            Some(_) => false,
        }
}

/// The claim rules, on unverified claims (they can only refuse). Returns `exp`.
pub fn check_claims(
    provider: &Provider,
    claims: &Map<String, Value>,
    now: u64,
) -> Result<u64, TokenError> {
    let skew = provider.clock_skew_seconds;
    // A fraction is read the stricter way for each check: `exp` down for
    // expiry and up for the lifetime cap, `iat` up for "issued in the
    // future" and down for the lifetime, `nbf` up.
    let (exp, exp_late) = time_claim(claims, "exp")?.ok_or(TokenError::Lifetime)?;
    let nbf = time_claim(claims, "nbf")?.map(|(_, late)| late);
    let iat_both = time_claim(claims, "iat")?;
    let iat = iat_both.map(|(early, _)| early);
    let iat_late = iat_both.map(|(_, late)| late);
    if exp.saturating_add(skew) < now {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|n| n > now.saturating_add(skew))
        || iat_late.is_some_and(|i| i > now.saturating_add(skew))
    {
        return Err(TokenError::NotYetValid);
    }
    let max = provider.max_lifetime_seconds;
    if iat.is_some_and(|i| exp_late.saturating_sub(i) > max)
        || exp_late.saturating_sub(now) > max.saturating_add(skew)
    {
        return Err(TokenError::Lifetime);
    }
    if let Some(iss) = &provider.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(iss.as_str()) {
            return Err(TokenError::Claims("issuer"));
        }
    }
    if !accepts_audience(provider, claims) {
        return Err(TokenError::Claims("audience"));
    }
    // After the issuer and audience: a claim of the wrong shape where the
    // provider names one is not that issuer or audience (`token_claims`);
    // the rest of a token that breaks RFC 7519's types is malformed.
    if !registered_claims_well_typed(claims) {
        return Err(TokenError::Malformed("a registered claim is not a string"));
    }
    for (name, want) in &provider.required_claims {
        if claims.get(name) != Some(want) {
            return Err(TokenError::Claims("required claim"));
        }
    }
    Ok(exp)
}

/// The signature check with the key's fixed algorithm, over the signing
/// input. Only for a token that passed [`precheck`] with this key:
/// `precheck` has parsed and checked the header and claims strictly (with
/// the provider's clock skew and `exp` required), so only the signature is
/// left, for every algorithm.
pub fn check_signature(key: &Key, token: &str) -> Result<(), TokenError> {
    // Letting jwt-simple's `verify_token` decode and parse the whole token
    // again would double the cost of a cache miss, and it reads the
    // standard claims into typed fields (a numeric `sub` or `jti` would
    // fail there, as a bad signature, where `precheck` accepted it). The
    // RSA and P-256 verifiers are ours (see `rsa` and `ecdsa`), several
    // times faster than jwt-simple's in V8; P-384 and Ed25519 use the
    // crates jwt-simple itself uses.
    let (input, sig) = token
        .rsplit_once('.')
        .ok_or(TokenError::Malformed("not three parts"))?;
    let input = input.as_bytes();
    let verdict = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(TokenError::Signature("signature does not verify"))
        }
    };
    match &key.material {
        KeyMaterial::Hs256(k) => verdict(ct_eq(&k.tag(input), &b64url(sig)?)),
        KeyMaterial::Hs384(k) => verdict(ct_eq(&k.authentication_tag(input), &b64url(sig)?)),
        KeyMaterial::Hs512(k) => verdict(ct_eq(&k.authentication_tag(input), &b64url(sig)?)),
        KeyMaterial::Rsa(k) => {
            let (hash, pss) = key
                .alg
                .rsa_scheme()
                .ok_or(TokenError::Signature("algorithm does not match the key"))?;
            let sig = b64url(sig)?;
            verdict(if pss {
                k.verify_pss(hash, input, &sig)
            } else {
                k.verify_pkcs1v15(hash, input, &sig)
            })
        }
        KeyMaterial::Es256(k) => verdict(k.verify(input, &b64url(sig)?)),
        KeyMaterial::Es384(k) => {
            use p384::ecdsa::signature::Verifier;
            let sig = b64url(sig)?;
            let ok =
                p384::ecdsa::Signature::from_slice(&sig).is_ok_and(|s| k.verify(input, &s).is_ok());
            verdict(ok)
        }
        KeyMaterial::EdDsa(k) => {
            let sig = b64url(sig)?;
            let ok = ed25519_compact::Signature::from_slice(&sig)
                .is_ok_and(|s| k.verify(input, &s).is_ok());
            verdict(ok)
        }
    }
}

/// Token binding: the claim must equal base64(SHA-256(header values
/// concatenated in order)), compared in constant time on the digest bytes.
/// Each header is read in every spelling an upstream reads as it, and its
/// copies must agree.
pub fn check_binding(
    binding: &Binding,
    claims: &Map<String, Value>,
    req: &Request<'_>,
) -> Result<(), Reason> {
    let Some(claim) = claims.get(&binding.claim) else {
        return if binding.required {
            Err(Reason::TokenBinding)
        } else {
            Ok(())
        };
    };
    let claimed = claim
        .as_str()
        .and_then(keys::decode_base64_any)
        .ok_or(Reason::TokenBinding)?;
    let mut h = Sha256::new();
    for name in &binding.headers {
        // In every spelling, as the upstream may read it: a second copy
        // under `x_session_id` must hold the bound value too.
        match req.header_unique_any_spelling(name) {
            Ok(Some(v)) => h.update(v.as_bytes()),
            _ => return Err(Reason::TokenBinding),
        }
    }
    if ct_eq(&claimed, &h.finalize()) {
        Ok(())
    } else {
        Err(Reason::TokenBinding)
    }
}

/// base64(SHA-256(values concatenated)): the value a token's binding claim
/// must carry (used by the CLI's `mint` and by tests).
pub fn binding_digest(values: &[&str]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests;

/// Token helpers shared by the core's tests.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::tests::{hs256_raw, SECRET};

    /// A deterministic generator (splitmix64), so that the tests need no
    /// extra crate and fail the same way every time. The ECDSA and RSA
    /// tests add the draws they need (`impl Rng` there).
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
}
