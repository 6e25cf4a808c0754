//! `evaluate`: the checks of SPEC §1, in order, on a request value. Pure: no
//! host calls; the clock, the shared store and the worker's caches are
//! passed in.
//!
//! Order (cheap checks first, the first failure decides):
//! route → network (IP, country) → API key → token → platform and app
//! identity → (body, rate limits: later phases).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::config::{Action, Config, HostPattern, KeyRequirement, Mode, Network, PathMatch, Route};
use crate::decision::{Decision, Denial, Grant, Reason};
use crate::identity::{self, PlatformHeaders};
use crate::net;
use crate::request::Request;
use crate::store::{self, ReplayOutcome, SharedStore};
use crate::token::{self, AppClaimFormat, Key, ReplayScope, TokenError, VerifiedToken};

/// Upper bound of the per-worker verified-token cache.
pub const TOKEN_CACHE_ENTRIES: usize = 4096;

/// Tokens whose signature was verified, by token text, until their `exp`.
/// Per worker (no locking, no host calls); binding, replay, route and
/// identity checks still run on every request.
#[derive(Default)]
pub struct TokenCache {
    map: HashMap<Box<str>, Rc<VerifiedToken>>,
}

impl TokenCache {
    fn get(&self, provider: usize, token: &str, now: u64, skew: u64) -> Option<Rc<VerifiedToken>> {
        let v = self.map.get(token)?;
        (v.provider == provider && v.exp.saturating_add(skew) >= now).then(|| v.clone())
    }

    fn put(&mut self, token: &str, v: Rc<VerifiedToken>, now: u64) {
        if self.map.len() >= TOKEN_CACHE_ENTRIES {
            self.map.retain(|_, t| t.exp >= now);
            if self.map.len() >= TOKEN_CACHE_ENTRIES {
                self.map.clear();
            }
        }
        self.map.insert(token.into(), v);
    }

    /// Entries held (for tests and stats).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Remote JWKS keys currently known for one provider.
#[derive(Clone, Default)]
pub struct RemoteKeys {
    /// The keys, once fetched.
    pub keys: Option<Rc<Vec<Key>>>,
}

/// What the core needs besides the request: the worker's state.
pub struct Ctx<'a> {
    /// The compiled configuration.
    pub config: &'a Config,
    /// Shared data of the Envoy instance.
    pub store: &'a dyn SharedStore,
    /// The worker's verified-token cache.
    pub token_cache: &'a RefCell<TokenCache>,
    /// Remote JWKS keys per provider (same index as `Config::providers`).
    pub remote_keys: &'a [RemoteKeys],
    /// Whether the adapter may fetch remote keys now (first keys, or an
    /// unknown `kid` outside the re-fetch rate limit). When false, missing
    /// keys answer `jwks_unavailable` and an unknown `kid` `token_signature`.
    pub may_fetch_keys: bool,
}

/// Facts established while evaluating, for logs, metrics and later phases.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Index of the matched route.
    pub route: Option<usize>,
    /// The client IP used for the decision.
    pub client_ip: Option<IpAddr>,
    /// Index of the established app.
    pub app: Option<usize>,
    /// Index of the API key used.
    pub key: Option<usize>,
    /// The verified token.
    pub token: Option<Rc<VerifiedToken>>,
}

/// What the core asks the adapter to do next.
#[derive(Debug)]
pub enum Step {
    /// The decision is final: carry it out.
    Done(Decision, Facts),
    /// The keys of a remote JWKS are not in yet: hold the request, fetch
    /// them, and evaluate again (nothing has been recorded yet).
    NeedKeys {
        /// Provider index.
        provider: usize,
    },
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

/// Internal result of a phase: a denial ends the evaluation.
enum Flow {
    NeedKeys(usize),
    Deny(Denial),
}

impl From<Reason> for Flow {
    fn from(r: Reason) -> Self {
        Flow::Deny(Denial::new(r))
    }
}

/// Evaluates the request headers. `now` is seconds since the Unix epoch, read
/// once per request by the adapter.
pub fn evaluate(ctx: &Ctx<'_>, req: &Request<'_>, now: u64) -> Step {
    let config = ctx.config;
    let matched = match_route(config, req);
    let mode = matched.map_or(config.mode, |(_, r)| r.mode);
    let mut facts = Facts {
        route: matched.map(|(i, _)| i),
        ..Facts::default()
    };
    let mut grant = Grant::default();
    match check(
        ctx,
        req,
        now,
        matched.map(|(_, r)| r),
        &mut facts,
        &mut grant,
    ) {
        Ok(()) => Step::Done(Decision::Allow(grant), facts),
        Err(Flow::NeedKeys(p)) => Step::NeedKeys { provider: p },
        Err(Flow::Deny(d)) => Step::Done(finish(mode, grant, d), facts),
    }
}

fn check(
    ctx: &Ctx<'_>,
    req: &Request<'_>,
    now: u64,
    route: Option<&Route>,
    facts: &mut Facts,
    grant: &mut Grant,
) -> Result<(), Flow> {
    let config = ctx.config;
    // 1. route
    let action = route.map_or(config.default_action, |r| r.action);
    if action == Action::Deny {
        return Err(Reason::RouteDenied.into());
    }
    // 2. network
    let ip = net::client_ip(
        req.downstream_ip,
        req.header_all("x-forwarded-for"),
        config.xff_trusted_hops,
    );
    facts.client_ip = ip;
    check_network(&config.network, req, ip)?;
    let Some(route) = route else {
        return Ok(());
    };
    if let Some(n) = &route.network {
        check_network(n, req, ip)?;
    }
    // 3. API key (validity, IP and route restrictions; app restriction in 5)
    let key = match route.api_key {
        KeyRequirement::None => None,
        req_kind => {
            let presented = api_key_of(config, req)?;
            match presented {
                None if req_kind == KeyRequirement::Required => {
                    return Err(Reason::ApiKeyMissing.into())
                }
                None => None,
                Some(k) => {
                    let (idx, key) = config.api_keys.lookup(k).ok_or(Reason::ApiKeyInvalid)?;
                    if key.disabled {
                        return Err(Reason::ApiKeyInvalid.into());
                    }
                    if !key.ips.is_empty() && !ip.is_some_and(|ip| key.ips.contains(ip)) {
                        return Err(Reason::ApiKeyRestricted.into());
                    }
                    if !key.routes.is_empty() && !key.routes.iter().any(|r| r == &route.name) {
                        return Err(Reason::ApiKeyRestricted.into());
                    }
                    facts.key = Some(idx);
                    grant
                        .set_headers
                        .push(("x-appguard-key-id".into(), key.id.clone()));
                    Some(key)
                }
            }
        }
    };
    // 4. token
    let token = check_token(ctx, req, now, route, grant)?;
    // 5. platform and app identity
    let ph = platform_headers(config, req);
    let app = match &token {
        Some(t) => {
            let provider = config
                .providers
                .get(t.provider)
                .ok_or(Reason::TokenMalformed)?;
            match &provider.app_claim {
                Some(ac) => {
                    let claim = t.claim_text(&ac.claim).ok_or(Reason::AppUnknown)?;
                    let app = identity::app_from_claim(
                        &config.apps,
                        &claim,
                        ac.format == AppClaimFormat::Firebase,
                    )?;
                    if !provider.platforms.is_empty() && !provider.platforms.contains(&app.platform)
                    {
                        return Err(Reason::PlatformDenied.into());
                    }
                    identity::headers_agree(app, &ph, ip)?;
                    Some(app)
                }
                None => {
                    let app = identity::app_from_headers(&config.apps, &ph, ip)?;
                    if !provider.platforms.is_empty()
                        && !app.is_some_and(|a| provider.platforms.contains(&a.platform))
                    {
                        return Err(Reason::PlatformDenied.into());
                    }
                    app
                }
            }
        }
        None => identity::app_from_headers(&config.apps, &ph, ip)?,
    };
    let app_idx = app.and_then(|a| config.apps.iter().position(|x| std::ptr::eq(x, a)));
    if let Some(key) = key {
        if !key.apps.is_empty() && !app_idx.is_some_and(|i| key.apps.contains(&i)) {
            return Err(Reason::ApiKeyRestricted.into());
        }
    }
    if !route.platforms.is_empty() && !app.is_some_and(|a| route.platforms.contains(&a.platform)) {
        return Err(Reason::PlatformDenied.into());
    }
    facts.app = app_idx;
    facts.token = token;
    if let Some(app) = app {
        grant
            .set_headers
            .push(("x-appguard-app".into(), app.id.clone()));
        grant
            .set_headers
            .push(("x-appguard-platform".into(), app.platform.as_str().into()));
    }
    Ok(())
}

fn check_network(n: &Network, req: &Request<'_>, ip: Option<IpAddr>) -> Result<(), Flow> {
    if !n.ip_deny.is_empty() || !n.ip_allow.is_empty() {
        let ip = ip.ok_or(Reason::IpDenied)?;
        if n.ip_deny.contains(ip) {
            return Err(Reason::IpDenied.into());
        }
        if !n.ip_allow.is_empty() && !n.ip_allow.contains(ip) {
            return Err(Reason::IpDenied.into());
        }
    }
    if let Some(h) = &n.country_header {
        let country = req
            .header_unique(h)
            .map_err(|()| Reason::CountryDenied)?
            .map(str::trim)
            .filter(|c| c.len() == 2)
            .map(str::to_ascii_uppercase);
        if let Some(c) = &country {
            if n.country_deny.iter().any(|d| d == c) {
                return Err(Reason::CountryDenied.into());
            }
        }
        if !n.country_allow.is_empty() && !country.is_some_and(|c| n.country_allow.contains(&c)) {
            return Err(Reason::CountryDenied.into());
        }
    }
    Ok(())
}

fn api_key_of<'r>(config: &Config, req: &Request<'r>) -> Result<Option<&'r str>, Flow> {
    let from_header = req
        .header_unique(&config.api_keys.header)
        .map_err(|()| Reason::ApiKeyInvalid)?;
    if let Some(k) = from_header {
        return Ok(Some(k.trim()).filter(|k| !k.is_empty() && k.len() <= 256));
    }
    if let (Some(param), Some(query)) = (&config.api_keys.query_param, req.query()) {
        let mut found = None;
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == param {
                if found.is_some_and(|f| f != v) {
                    return Err(Reason::ApiKeyInvalid.into());
                }
                found = Some(v);
            }
        }
        return Ok(found.filter(|k| !k.is_empty() && k.len() <= 256));
    }
    Ok(None)
}

fn platform_headers<'r>(config: &Config, req: &Request<'r>) -> PlatformHeaders<'r> {
    let names = &config.platform_headers;
    PlatformHeaders {
        android_package: req.header(&names.android_package),
        android_cert: req.header(&names.android_cert),
        ios_bundle_id: req.header(&names.ios_bundle_id),
        ios_team_id: req.header(&names.ios_team_id),
        origin: req.header("origin"),
        referer: req.header("referer"),
    }
}

fn check_token(
    ctx: &Ctx<'_>,
    req: &Request<'_>,
    now: u64,
    route: &Route,
    grant: &mut Grant,
) -> Result<Option<Rc<VerifiedToken>>, Flow> {
    if route.providers.is_empty() {
        return Ok(None);
    }
    let config = ctx.config;
    // The first provider (in the route's order) whose sources hold a token.
    let mut found = None;
    for &pi in &route.providers {
        let Some(p) = config.providers.get(pi) else {
            continue;
        };
        let t = token::extract(p, req).map_err(|e| Flow::from(e.reason()))?;
        if let Some(t) = t {
            found = Some((pi, p, t));
            break;
        }
    }
    let Some((pi, provider, raw)) = found else {
        return if route.token_required {
            Err(Reason::TokenMissing.into())
        } else {
            Ok(None)
        };
    };
    if !provider.forward {
        for src in &provider.sources {
            if req.header(&src.header).is_some() {
                grant.remove_headers.push(src.header.clone());
            }
        }
    }
    let cached = ctx
        .token_cache
        .borrow()
        .get(pi, raw, now, provider.clock_skew_seconds);
    let verified = match cached {
        Some(v) => v,
        None => {
            let remote = ctx.remote_keys.get(pi).and_then(|r| r.keys.clone());
            let has_remote = provider.remote_jwks.is_some();
            if has_remote && remote.is_none() && provider.keys.is_empty() {
                return Err(if ctx.may_fetch_keys {
                    Flow::NeedKeys(pi)
                } else {
                    Reason::JwksUnavailable.into()
                });
            }
            let extra: &[Key] = remote.as_deref().map_or(&[], |v| v.as_slice());
            let pre = token::precheck(provider, &provider.keys, extra, raw, now).map_err(|e| {
                if e == TokenError::UnknownKid && has_remote && ctx.may_fetch_keys {
                    Flow::NeedKeys(pi)
                } else {
                    Flow::from(e.reason())
                }
            })?;
            token::check_signature(provider, pre.key, raw, now)
                .map_err(|e| Flow::from(e.reason()))?;
            let v = Rc::new(VerifiedToken {
                provider: pi,
                exp: pre.exp,
                claims: pre.claims,
            });
            ctx.token_cache.borrow_mut().put(raw, v.clone(), now);
            v
        }
    };
    if let Some(b) = &provider.binding {
        token::check_binding(b, &verified.claims, req)?;
    }
    if let Some(r) = &provider.replay {
        if r.scope == ReplayScope::Local {
            let value = verified.claim_text(&r.claim).ok_or(Reason::TokenClaims)?;
            let mut h = Sha256::new();
            h.update(provider.name.as_bytes());
            h.update(b":");
            h.update(value.as_bytes());
            let d = h.finalize();
            let mut digest = [0u8; 16];
            digest.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
            let expires = verified.exp.saturating_add(provider.clock_skew_seconds);
            match store::replay_check(
                ctx.store,
                &provider.name,
                r.max_entries,
                &digest,
                expires,
                now,
            ) {
                Ok(ReplayOutcome::Fresh) => {}
                // A full table or a store failure cannot prove freshness:
                // fail closed.
                Ok(ReplayOutcome::Replayed | ReplayOutcome::Full) | Err(_) => {
                    return Err(Reason::TokenReplayed.into())
                }
            }
        }
    }
    for (claim, header) in &provider.claim_to_headers {
        if let Some(v) = verified.claim_text(claim) {
            if v.len() <= 1024 && !v.bytes().any(|b| b < 0x20 || b == 0x7f) {
                grant.set_headers.push((header.clone(), v));
            }
        }
    }
    Ok(Some(verified))
}

/// Applies the mode: in monitor mode a denial becomes an allow that carries
/// the would-be reason (and whatever the checks before it granted).
pub fn finish(mode: Mode, grant: Grant, denial: Denial) -> Decision {
    match mode {
        Mode::Enforce => Decision::Deny(denial),
        Mode::Monitor => Decision::Allow(Grant {
            would_deny: Some(denial.reason),
            ..grant
        }),
    }
}

#[cfg(test)]
mod tests;
