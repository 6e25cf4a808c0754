//! `evaluate`: the checks of SPEC §1, in order, on a request value. Pure: no
//! host calls; the clock, the shared store and the worker's caches are
//! passed in.
//!
//! Order (cheap checks first, the first failure decides):
//! route → network (IP, country) → API key → token → platform and app
//! identity → (body, rate limits: later phases).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::config::{
    Action, Config, FailureMode, HostPattern, KeyRequirement, Mode, Network, PathMatch, Route,
};
use crate::decision::{Decision, Denial, Grant, KeyScrub, Reason};
use crate::identity::{self, KeyMemo, PlatformHeaders};
use crate::limits::{self, Descriptor, ServiceCache, Source};
use crate::phone;
use crate::ratelimit::{self, RateLimitResponse};
use crate::request::{same_header_name, Request};
use crate::signing::{self, InstallKey, Message, SigningError};
use crate::store::{self, BucketSalt, ReplayOutcome, SharedStore};
use crate::token::{
    self, AppClaimFormat, Key, Provider, Replay, ReplayScope, TokenError, VerifiedToken,
};

/// Upper bound of the per-worker verified-token cache.
pub const TOKEN_CACHE_ENTRIES: usize = 4096;

/// Tokens whose signature was verified, by token text, until their `exp`,
/// and only while the provider's fetched keys are the set that verified
/// them ([`RemoteKeys::version`]): a key taken out of the JWKS stops
/// passing at the next refresh, cached or not.
/// Per worker (no locking, no host calls); binding, replay, route and
/// identity checks still run on every request. Bounded in entries
/// ([`TOKEN_CACHE_ENTRIES`]) and in bytes ([`TOKEN_CACHE_BYTES`]); when
/// full, the oldest entries make room, one new token at a time.
#[derive(Default)]
pub struct TokenCache {
    /// Token text → the [`RemoteKeys::version`] it was verified under, and the
    /// verified token. `get` hands an entry back only for the same provider and
    /// key version, and only until its `exp` plus the provider's skew.
    map: HashMap<Rc<str>, (u64, Rc<VerifiedToken>)>,
    /// The tokens of `map` in the order they were put, oldest first, each
    /// with its [`TokenCache::cost`]: the next to make room.
    order: VecDeque<(Rc<str>, usize)>,
    /// What the entries hold, as [`TokenCache::cost`] counts it.
    bytes: usize,
}

/// Most bytes the verified-token cache of a worker holds (token texts and
/// their parsed claims, estimated by `TokenCache::cost`): room for
/// 4,096 tokens of the default 4 KiB with ordinary claims. Tokens of up
/// to 64 KiB (`max_token_bytes`), or claims that parse into many small
/// values, minted freely with a leaked signing key, would otherwise keep
/// hundreds of MiB of a worker's memory, which Wasm never gives back; such
/// tokens are now simply fewer.
pub const TOKEN_CACHE_BYTES: usize = 40 << 20;

impl TokenCache {
    /// The verified token for `token`, when it was verified for this
    /// `provider` under the keys of `keys_version` and its `exp` (plus
    /// `skew`) has not passed at `now`: a token of keys rotated since, or
    /// one another provider verified, is verified again.
    fn get(
        &self,
        provider: usize,
        keys_version: u64,
        token: &str,
        now: u64,
        skew: u64,
    ) -> Option<Rc<VerifiedToken>> {
        let (version, v) = self.map.get(token)?;
        (v.provider == provider && *version == keys_version && v.exp.saturating_add(skew) >= now)
            .then(|| v.clone())
    }

    /// An entry's share of [`TOKEN_CACHE_BYTES`]: its text, the map's own
    /// overhead and what its claims hold.
    fn cost(token: &str, v: &VerifiedToken) -> usize {
        use serde_json::{Map, Value};
        /// A parsed value: its node, an allocation's overhead, its text.
        fn value(v: &Value) -> usize {
            let own = std::mem::size_of::<Value>() + 16;
            own.saturating_add(match v {
                Value::String(s) => s.len(),
                Value::Array(a) => a.iter().map(value).fold(0, usize::saturating_add),
                Value::Object(m) => map(m),
                _ => 0,
            })
        }
        fn map(m: &Map<String, Value>) -> usize {
            m.iter()
                .map(|(k, v)| k.len().saturating_add(48).saturating_add(value(v)))
                .fold(0, usize::saturating_add)
        }
        token
            .len()
            .saturating_add(128)
            .saturating_add(map(&v.claims))
    }

    /// Caches a token verified under the keys of `keys_version`. When the
    /// cache is full (by entries or [`TOKEN_CACHE_BYTES`]), the tokens put
    /// longest ago go first (with lifetimes of minutes, the first to
    /// expire), as many as make room for this one. A flood of unique valid
    /// tokens costs verifications, never unbounded memory, and no request
    /// pays for a scan of the whole cache: emptying 4,096 entries at once
    /// (as this did before) stalled one request in 4,096 by milliseconds.
    /// A token put again keeps its place; one bigger than the whole byte
    /// budget is not kept.
    fn put(&mut self, token: &str, keys_version: u64, v: Rc<VerifiedToken>) {
        if let Some(entry) = self.map.get_mut(token) {
            // The same text: the same claims, so the same cost.
            *entry = (keys_version, v);
            return;
        }
        let cost = Self::cost(token, &v);
        if cost > TOKEN_CACHE_BYTES {
            return;
        }
        while self.map.len() >= TOKEN_CACHE_ENTRIES
            || self.bytes.saturating_add(cost) > TOKEN_CACHE_BYTES
        {
            let Some((oldest, its_cost)) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&*oldest);
            self.bytes = self.bytes.saturating_sub(its_cost);
        }
        let key: Rc<str> = Rc::from(token);
        self.map.insert(key.clone(), (keys_version, v));
        self.order.push_back((key, cost));
        self.bytes = self.bytes.saturating_add(cost);
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

/// Tokens whose signature failed, until their `exp` (at most 10 minutes):
/// refused again without verifying. Per worker, bounded. Also the clients
/// this worker saw with a spent failure budget, until their budget refills,
/// so that a flood from a spent client costs a map lookup per request, not
/// a shared-data read and a digest.
#[derive(Default)]
pub struct NegativeCache {
    /// Keyed digest of the token text (see [`negative_key`]) → the
    /// providers it failed for, each with the version of the provider's
    /// fetched keys it failed under (see [`RemoteKeys::version`]: a JWKS
    /// that brings a new key makes the token worth checking again) and its
    /// `until`. By provider: a token
    /// that fails one provider's keys (two providers may read the same
    /// header on different routes) says nothing of the other's. A digest,
    /// not the text: forged tokens padded to `max_token_bytes` would
    /// otherwise hold up to 4096 × 64 KiB of a worker's memory, which Wasm
    /// never gives back.
    map: HashMap<[u8; 16], Vec<(usize, u64, u64)>>,
    /// (budget slot, client network) → when its spent failure budget refills
    /// (ms), and when that was noted (ms): a client of a flood that already
    /// spent its budget is refused after a map lookup, without a digest or
    /// shared-data reads (see `Budget::known_spent`). Noted later than now
    /// (beyond `limits::CLOCK_SLACK_MS`), it is from before the clock was
    /// set back, and its refill time, read on the clock as it was, says
    /// nothing any more: the shared table is asked again.
    spent: HashMap<(usize, IpAddr), (u64, u64)>,
    /// The latest `until` in `spent`: past it, every entry has expired.
    spent_latest: u64,
}

/// A provider's failure budget as one request's checks use it: whether
/// the client may have a signature verified (a token's or a request's),
/// and the charge when one fails. The client's IP and its bucket digest
/// are worked out at most once, and only when needed.
struct Budget<'a> {
    /// The evaluation's context: trusted hops, clock, shared store, bucket salt,
    /// and the worker's negative cache, where spent budgets are remembered.
    ctx: &'a Ctx<'a>,
    /// The request, read only for the client's IP.
    req: &'a Request<'a>,
    /// The provider whose `failure_budget` this is: its name scopes the shared
    /// bucket, its prefixes group clients by network.
    provider: &'a token::Provider,
    /// The budget as a local limit in the `Budget` table: `failures` per
    /// `window_seconds`; 0 failures disables it.
    limit: limits::LocalLimit,
    /// Monitor-mode routes keep budgets of their own: rolling out a
    /// provider in monitor mode (keys not right yet, every signature
    /// failing) must not spend the budgets its enforce routes refuse by.
    /// They still spare the CPU of a flood on the monitor route.
    monitor: bool,
    /// The provider, by index: with `monitor` and `keys_missing`, which
    /// budget this is ([`budget_slot`]).
    pi: usize,
    /// Whether this is the budget of tokens tried while the provider's
    /// remote keys are missing (see [`Budget::while_keys_missing`]).
    keys_missing: bool,
    /// The budget's key in the negative cache ([`budget_slot`]): one per
    /// provider, mode and state of the remote keys.
    slot: usize,
    /// The client IP once worked out (see `client`): most requests never need it.
    ip: Option<IpAddr>,
    /// The client's bucket digest once computed (see `key`).
    digest: Option<[u8; 16]>,
}

impl<'a> Budget<'a> {
    /// Provider `pi`'s `failure_budget` for this request's client, in the
    /// slot of the route's mode ([`budget_slot`]): what monitor-mode
    /// routes let through does not spend the enforced routes' budget.
    fn new(
        ctx: &'a Ctx<'a>,
        req: &'a Request<'a>,
        pi: usize,
        provider: &'a token::Provider,
        monitor: bool,
    ) -> Self {
        let b = provider.failure_budget;
        Budget {
            ctx,
            req,
            provider,
            limit: limits::LocalLimit {
                requests: b.failures,
                per_seconds: b.window_seconds,
                table: limits::LocalTable::Budget,
            },
            monitor,
            pi,
            keys_missing: false,
            slot: budget_slot(pi, monitor, false),
            ip: None,
            digest: None,
        }
    }

    /// Whether the provider has a budget at all (`failures: 0` turns it
    /// off).
    fn enabled(&self) -> bool {
        self.limit.requests > 0
    }

    /// The client charged: its IP, or, when that is not known (see
    /// `client_ip`), the unknown client: hiding the address must not lift
    /// the budget.
    fn client(&mut self) -> IpAddr {
        let hops = self.ctx.config.xff_trusted_hops;
        let req = self.req;
        *self
            .ip
            .get_or_insert_with(|| req.client_ip(hops).unwrap_or(limits::UNKNOWN_CLIENT_IP))
    }

    /// The client's bucket digest.
    fn key(&mut self) -> [u8; 16] {
        if let Some(d) = self.digest {
            return d;
        }
        let ip = self.client();
        let b = self.provider.failure_budget;
        let d: Descriptor = vec![("ip".into(), limits::ip_value(ip, b.v4_prefix, b.v6_prefix))];
        let name = self.provider.name.as_str();
        let scope = match (self.monitor, self.keys_missing) {
            (false, false) => limits::DigestScope::new(&["budget", name]),
            (true, false) => limits::DigestScope::new(&["budget", name, "monitor"]),
            (false, true) => limits::DigestScope::new(&["budget", name, "keys-missing"]),
            (true, true) => limits::DigestScope::new(&["budget", name, "monitor", "keys-missing"]),
        };
        let digest = limits::descriptor_digest(&scope, &d);
        self.digest = Some(digest);
        digest
    }

    /// The client's network as the budget counts it (`v4_prefix`,
    /// `v6_prefix`): what this worker remembers a spent budget by, so that
    /// a spent /64 that changes its address each request still costs a
    /// map lookup, not a digest and shared-data reads.
    fn network(&mut self) -> IpAddr {
        let b = self.provider.failure_budget;
        crate::net::network_of(self.client(), b.v4_prefix, b.v6_prefix)
    }

    /// From here on, the client's budget of tokens tried while the
    /// provider's remote keys are missing: a token without `kid` that no
    /// configured key verifies may be signed by a key of the missing set,
    /// so its failure is not known to be a forgery and must not spend the
    /// budget its client's tokens are refused by once the keys are back.
    /// It spends this one instead, which bounds the verifications such
    /// tokens cost during an outage; once it is spent, they get the
    /// route's failure mode without any.
    fn while_keys_missing(&mut self) {
        if !self.keys_missing {
            self.keys_missing = true;
            self.digest = None;
            self.slot = budget_slot(self.pi, self.monitor, true);
        }
    }

    /// Whether this worker already found the client spent: a map lookup.
    fn known_spent(&mut self) -> bool {
        let ctx = self.ctx;
        if !self.enabled() || !ctx.negative.borrow_mut().may_hold_spent(ctx.now_ms) {
            return false;
        }
        let network = self.network();
        ctx.negative
            .borrow()
            .budget_spent(self.slot, network, ctx.now_ms)
    }

    /// Whether the client's budget is spent in the instance's shared
    /// table (remembered by this worker if so). No budget can be spent if
    /// no signature failed within a window: then the client's address, its
    /// digest and its bucket are not needed (one shared-data read instead).
    fn shared_spent(&mut self) -> bool {
        let ctx = self.ctx;
        if !self.enabled()
            || !limits::failed_within(ctx.store, &self.provider.name, self.limit, ctx.now_ms)
        {
            return false;
        }
        let key = self.key();
        let Some(until) =
            limits::local_refill_at(ctx.store, &ctx.bucket_salt, &key, self.limit, ctx.now_ms)
        else {
            return false;
        };
        let network = self.network();
        ctx.negative
            .borrow_mut()
            .note_spent(self.slot, network, until, ctx.now_ms);
        true
    }

    /// Charges `n` failed verifications (at most the whole budget).
    fn charge(&mut self, n: u32) {
        if !self.enabled() {
            return;
        }
        let ctx = self.ctx;
        // The mark first: a worker that sees the bucket spent must also
        // see a recent failure.
        limits::mark_failure(ctx.store, &self.provider.name, ctx.now_ms);
        let key = self.key();
        let _ = limits::take_local_n(
            ctx.store,
            &ctx.bucket_salt,
            &key,
            self.limit,
            n.min(self.limit.requests),
            ctx.now_ms,
        );
    }
}

/// The negative cache's key of a token: a digest keyed with the instance's
/// salt, so that no one can make two tokens share an entry.
fn negative_key(salt: &BucketSalt, token: &str) -> [u8; 16] {
    store::Keyed128::new(salt, "negative-cache").digest(&[token.as_bytes()])
}

/// Upper bound of the negative cache.
pub const NEGATIVE_CACHE_ENTRIES: usize = 4096;

impl NegativeCache {
    /// Whether the token whose [`negative_key`] `key` computes failed for
    /// `provider` under its keys' `version` (the key is computed only if
    /// anything failed at all).
    fn contains(
        &self,
        provider: usize,
        version: u64,
        key: impl FnOnce() -> [u8; 16],
        now: u64,
    ) -> bool {
        !self.map.is_empty()
            && self.map.get(&key()).is_some_and(|f| {
                f.iter()
                    .any(|&(p, v, until)| p == provider && v == version && until >= now)
            })
    }

    /// Remembers that the token whose [`negative_key`] is `key` failed
    /// for `provider` under keys `version`, until `until`. Bounded at
    /// [`NEGATIVE_CACHE_ENTRIES`] (stale entries dropped first, then live
    /// ones down to seven eighths of it: `limits::make_room`); the token's earlier
    /// failure for the same provider is replaced.
    fn insert(&mut self, provider: usize, version: u64, key: [u8; 16], until: u64, now: u64) {
        limits::make_room(&mut self.map, NEGATIVE_CACHE_ENTRIES, |f| {
            f.iter().any(|&(_, _, u)| u >= now)
        });
        let failed = self.map.entry(key).or_default();
        failed.retain(|&(p, _, u)| p != provider && u >= now);
        failed.push((provider, version, until));
    }

    /// Whether the failure budget `slot` (see [`budget_slot`]) of the
    /// network `ip` (see `Budget::network`) is known to be spent at `now_ms`.
    fn budget_spent(&self, slot: usize, ip: IpAddr, now_ms: u64) -> bool {
        self.spent.get(&(slot, ip)).is_some_and(|&(until, noted)| {
            until > now_ms && noted <= now_ms.saturating_add(limits::CLOCK_SLACK_MS)
        })
    }

    /// Whether any remembered spent budget may still hold at `now_ms`; if
    /// none can, forgets them all (so a past flood costs nothing later).
    fn may_hold_spent(&mut self, now_ms: u64) -> bool {
        if self.spent_latest > now_ms {
            return true;
        }
        self.spent.clear();
        false
    }

    /// Remembers that the budget `slot` of the network `ip` stays spent
    /// until `until_ms`.
    fn note_spent(&mut self, slot: usize, ip: IpAddr, until_ms: u64, now_ms: u64) {
        self.spent_latest = self.spent_latest.max(until_ms);
        limits::make_room(&mut self.spent, NEGATIVE_CACHE_ENTRIES, |&(u, _)| {
            u > now_ms
        });
        self.spent.insert((slot, ip), (until_ms, now_ms));
    }
}

/// Which failure budget of provider `provider` a route spends: enforce
/// routes share one, monitor-mode routes another, and each has one more
/// for tokens tried while the remote keys are missing
/// (`4 × provider + 2 × keys_missing + mode`).
fn budget_slot(provider: usize, monitor: bool, keys_missing: bool) -> usize {
    provider.saturating_mul(4) + 2 * usize::from(keys_missing) + usize::from(monitor)
}

/// Remote JWKS keys currently known for one provider.
#[derive(Clone, Default)]
pub struct RemoteKeys {
    /// The keys, once fetched.
    pub keys: Option<Rc<Vec<Key>>>,
    /// A digest of the fetched key set, 0 without keys. Tokens verified
    /// under one version are verified again under another (see
    /// [`TokenCache`]), so that removing a key from the JWKS revokes it.
    pub version: u64,
}

/// Where a request stands with the remote keys of its token's provider.
///
/// An unknown `kid` means a made-up token only once keys fetched after the
/// request asked have been looked at. Before that, it may be a key the
/// issuer has just published, and its genuine clients must not spend their
/// failure budget on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFetch {
    /// The adapter may fetch now (first keys, or an unknown `kid` outside
    /// the re-fetch rate limit): the evaluation asks for them (`Step::NeedKeys`).
    May,
    /// No fetch now: a re-fetch was made recently (by any worker), a fetch
    /// just failed, or this phase never fetches. Missing keys answer
    /// `jwks_unavailable` and an unknown `kid` `token_signature`, without
    /// charging the budget.
    NotNow,
    /// Keys were loaded after this request asked (its own fetch, or another
    /// worker's just copied): an unknown `kid` is in no key the issuer
    /// publishes, and is charged to the budget like a forged signature.
    Fetched,
}

/// What the core needs besides the request: the worker's state.
pub struct Ctx<'a> {
    /// The compiled configuration.
    pub config: &'a Config,
    /// Shared data of the Envoy instance.
    pub store: &'a dyn SharedStore,
    /// The instance's secret that picks buckets in the shared tables (local
    /// limits, failure budgets, local replay): the same for every worker.
    pub bucket_salt: BucketSalt,
    /// The worker's verified-token cache.
    pub token_cache: &'a RefCell<TokenCache>,
    /// Remote JWKS keys per provider (same index as `Config::providers`).
    pub remote_keys: &'a [RemoteKeys],
    /// What the adapter can do, in this evaluation, about missing remote
    /// keys or an unknown `kid` (see [`KeyFetch`]).
    pub key_fetch: KeyFetch,
    /// The worker's memory of the service's answers: descriptors it
    /// refused, and hits leased from it.
    pub service_cache: &'a RefCell<ServiceCache>,
    /// The worker's memo of API keys already found.
    pub key_memo: &'a RefCell<KeyMemo>,
    /// The worker's cache of tokens whose signature failed.
    pub negative: &'a RefCell<NegativeCache>,
    /// Milliseconds since the epoch (local token buckets refill by the ms).
    pub now_ms: u64,
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
    /// The token's `jti` (or other replay claim), checked once every other
    /// check of the request has passed: see [`ReplayMark`].
    pub replay: Option<ReplayMark>,
    /// A verified request signature of a `single_use` provider, recorded
    /// once the request has passed every check and its local limits: see
    /// [`SignedMark`].
    pub signed: Option<SignedMark>,
    /// The token was refused without verification: the client's signature
    /// failure budget is spent (counted and logged by the adapter).
    pub budget_refused: bool,
    /// Why a request signature was refused (`signature_invalid`), for the
    /// decision log: names of components and fields only, never request
    /// data.
    pub signing_error: Option<crate::signing::SigningError>,
    /// A dependency was down and the route's `failure_mode: allow` let the
    /// request go on without it (counted and logged by the adapter, and
    /// told to the upstream): the first that was, so `jwks_unavailable`
    /// (identity from headers alone) when the rate-limit service failed
    /// too.
    pub degraded: Option<Reason>,
    /// The rate-limit service's limit for the replay descriptor
    /// (`replay.scope: service`) does not make a `jti` single-use: there is
    /// none (its YAML has no rule for it, so it counts nothing), it allows
    /// more than 1, or its windows are shorter than a token lives (a token
    /// would pass once per window). Treated as the service failing (the
    /// route's `failure_mode`); the adapter logs the cause.
    pub replay_unprotected: bool,
    /// The rule (an index into its route's `rate_limits`) whose descriptor
    /// the rate-limit service answered `OK` without a limit: no rule of the
    /// service's configuration matches it (a misspelt key or domain), so
    /// the rule limits nothing, silently (as envoyproxy/ratelimit answers).
    /// The adapter logs it.
    pub unlimited_rule: Option<u16>,
    /// A CORS preflight under `bypass_cors_preflight`
    /// ([`cors_preflight_method`]), matched to the route of the method it
    /// asks about: only the route's action and the network rules are
    /// checked (counted as `decision="preflight"` when it passes).
    pub cors_preflight: bool,
}

/// A verified token's replay claim, waiting to be recorded as used.
///
/// It is recorded last, once the request has passed every other check
/// (request signing, platform and app, body) and its local limits (a
/// local one already recorded is refused before those limits count the
/// request). Recorded earlier, a copied token sent without the install's
/// signature, or with the wrong platform headers, would burn the genuine
/// client's `jti` although appguard refused the copy.
#[derive(Clone, Debug)]
pub struct ReplayMark {
    /// `local`: an entry in the instance's shared replay table. `service`:
    /// a descriptor counted by the rate-limit service with limit 1, in the
    /// same call as the route's limits; and, should the call fail under
    /// `failure_mode: allow`, the entry the instance's table takes instead
    /// (see `rls_verdict`).
    pub scope: ReplayScope,
    /// Index of the provider (its name names the table, its replay claim
    /// the descriptor's key).
    pub provider: usize,
    /// Truncated SHA-256 of the provider name and the claim value (sent in
    /// hex as the descriptor's value).
    pub digest: [u8; 16],
    /// Until when a local entry is kept: the token's `exp` plus skew.
    pub expires: u64,
}

/// A verified request signature (`message_signing.single_use`), waiting to
/// be recorded in its provider's table of signed requests.
///
/// Like a [`ReplayMark`], it is recorded last, once the request has passed
/// every other check and its local limits, and taken back out if the
/// rate-limit service refuses the request: a copy already recorded is
/// refused when the signature verifies, before any limit counts it.
/// Recorded when the signature verified, a client with a genuine token and
/// its install key could write one entry per request it signs, limited or
/// not, until buckets filled and other clients' signed requests were
/// refused as replays.
#[derive(Clone, Debug)]
pub struct SignedMark {
    /// Index of the provider (its name names the table).
    pub provider: usize,
    /// The keyed digest of the signature base: the entry's key.
    pub digest: [u8; 16],
    /// Until when the entry is kept: until the signature is too old to
    /// verify (`created` plus `max_age_seconds` plus skew).
    pub until: u64,
}

/// An evaluation that waits for the body or the rate-limit service: what
/// the header checks established, carried to the next phase.
#[derive(Debug)]
pub struct Pending {
    /// The route's mode (or the configuration's, unrouted), applied by [`deny`]
    /// when a later phase refuses: in monitor mode a refusal after the body or
    /// the rate-limit service still lets the request through, marked.
    mode: Mode,
    /// What the request carries upstream if allowed, as decided so far.
    pub grant: Grant,
    /// What is known so far (route, client IP, app, key, token).
    pub facts: Facts,
    /// Request signing left for the body phase: (provider, install key).
    signing: Option<(usize, InstallKey)>,
    /// Service descriptors sent.
    service: Vec<Sent>,
    /// When the call to the service was made (ms since the epoch): the
    /// start of a lease's time, which the service's `duration_until_reset`
    /// counts from at the latest.
    sent_ms: u64,
    /// Index in `service` of the replay descriptor (`replay.scope: service`).
    replay_index: Option<usize>,
    /// The token's replay claim, recorded once the other checks passed.
    replay: Option<ReplayMark>,
    /// The local replay entry recorded before the call to the service:
    /// (provider, digest), taken back out if the service refuses the
    /// request, so that the `jti` is not used up by a request that was not
    /// let through.
    local_replay: Option<(usize, [u8; 16], u32)>,
    /// The signed request recorded before the call to the service (see
    /// [`SignedMark`]), taken back out if the service refuses the request.
    signed_recorded: Option<SignedMark>,
    /// With `replay.scope: service`, the entry the instance's replay table
    /// records if the call fails and `failure_mode: allow` lets the request
    /// through: replays are then still refused within the instance, not
    /// let through for as long as the service is down.
    replay_fallback: Option<ReplayMark>,
    /// The local limits' tokens taken: given back if the rate-limit
    /// service or the replay check refuses the request after all (see
    /// [`take_locals`]).
    local_taken: Vec<LocalTaken>,
}

impl Pending {
    /// Largest body the route buffers.
    pub fn max_body_bytes(&self, config: &Config) -> usize {
        self.facts
            .route
            .and_then(|r| config.routes.get(r))
            .map_or(config.max_body_bytes, |r| r.max_body_bytes)
    }

    /// When the call to the rate-limit service was made (ms since the
    /// epoch; 0 before it was).
    pub fn sent_ms(&self) -> u64 {
        self.sent_ms
    }
}

/// A descriptor for the rate-limit service, as sent.
#[derive(Debug)]
struct Sent {
    /// The descriptor's entries, as encoded in the call to the service.
    descriptor: Descriptor,
    /// Its [`ServiceCache`] key.
    key: [u8; 16],
    /// Hits asked for (above 1 only for a lease).
    hits: u32,
    /// Its rule's `lease`, if any: an `OK` status is then kept as a lease.
    lease: Option<u32>,
    /// Its rule's index in the route's `rate_limits` (`u16::MAX`: the
    /// replay descriptor).
    rule: u16,
}

impl Sent {
    /// Whether this call asks for a lease (more than one hit), recorded
    /// as in flight ([`ServiceCache::begin_ask`]) until its answer.
    fn asks_lease(&self) -> bool {
        self.lease.is_some() && self.hits > 1
    }
}

/// A `ShouldRateLimit` call to make.
#[derive(Debug)]
pub struct RlsCall {
    /// Envoy cluster of the service.
    pub cluster: String,
    /// Encoded `RateLimitRequest`.
    pub message: Vec<u8>,
    /// Call timeout.
    pub timeout_ms: u64,
}

/// What the core asks the adapter to do next.
///
/// `Done` is much larger than the other variants (a decision and its
/// facts, ~280 bytes), and stays unboxed on purpose: it is what nearly
/// every request ends with, returned once and moved a few times, where a
/// box would cost an allocation per request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// The decision is final: carry it out.
    Done(Decision, Facts),
    /// The keys of a remote JWKS are not in yet: hold the request, fetch
    /// them, and evaluate again (nothing has been recorded yet).
    NeedKeys {
        /// Provider index.
        provider: usize,
        /// The credentials to take off the request before it waits: the
        /// API key (`api_keys.forward: false`) and the token headers of
        /// providers that do not forward them. A client that goes away
        /// during the fetch leaves only Envoy's access log line, which
        /// must not hold them.
        key_scrub: KeyScrub,
        /// The token's `kid`, if it names one: keys loaded meanwhile that
        /// name it end the request's wait, wherever they came from
        /// ([`crate::token::jwks::names_kid`]).
        kid: Option<Box<str>>,
    },
    /// Buffer the whole body (up to `Pending::max_body_bytes`), then call
    /// [`evaluate_body`].
    NeedBody(Box<Pending>),
    /// Call the rate-limit service, then [`evaluate_rls`] with its answer.
    NeedRateLimit(Box<Pending>, RlsCall),
}

/// A request that routes cannot be matched against with confidence: its
/// path still has dot or empty segments once its `;` parameters are
/// dropped, or an upstream may read it as another path, method or host
/// that takes another route than its own (see [`match_route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnclearPath;

/// Headers through which a client asks the upstream to run another method
/// than the request's: `X-HTTP-Method-Override` (Express's
/// `method-override`, Symfony, Laravel, Google APIs), `X-HTTP-Method`
/// (OData, ASP.NET Web API) and `X-Method-Override`. An upstream that honours
/// one runs, say, its `DELETE` handler for a `POST`.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether a header name is one of [`METHOD_OVERRIDE_HEADERS`] to an
/// upstream, spellings with `_` or `.` included (`X_HTTP_Method_Override`,
/// which Envoy passes on by default, and which PHP servers and Symfony's
/// header bag read as the same header; see
/// [`crate::request::same_header_name`]).
pub fn is_method_override_header(name: &str) -> bool {
    crate::request::is_header_of(name, &METHOD_OVERRIDE_HEADERS)
}

/// Headers through which some upstreams take the request target from the
/// client instead of the request line: Zend Framework 1 (Magento 1),
/// Symfony before 2018 and IIS URL Rewrite read `X-Original-URL` and
/// `X-Rewrite-URL`. Read as [`METHOD_OVERRIDE_HEADERS`] are: one naming a
/// path that would take another route is refused.
pub const URL_OVERRIDE_HEADERS: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// Whether `name` is one of [`URL_OVERRIDE_HEADERS`] in any spelling an
/// upstream reads as it (`_` or `.` for `-`, any case), as
/// [`is_method_override_header`] reads method overrides.
fn is_url_override_header(name: &str) -> bool {
    crate::request::is_header_of(name, &URL_OVERRIDE_HEADERS)
}

/// Headers through which some upstreams take the request's host from the
/// client instead of `:authority`: Rack (Rails), Django with
/// `USE_X_FORWARDED_HOST`, Express with `trust proxy`, Spring's
/// `ForwardedHeaderFilter`. Envoy passes them on. Where routes list
/// `hosts`, one naming a host that would take another route is refused.
pub const FORWARDED_HOST_HEADERS: [&str; 2] = ["x-forwarded-host", "forwarded"];

/// Adds the hosts a forwarded-host header `name: value` names to `list`
/// (see [`add_variant`]): every `host=` of every element of `Forwarded`
/// (`for=…;host=a, host=b`), every value of `X-Forwarded-Host` (`a, b`:
/// Express reads the first, Rack the last).
#[inline(never)]
fn add_forwarded_hosts<'a>(
    list: &mut Vec<std::borrow::Cow<'a, str>>,
    own: &str,
    name: &str,
    value: &'a str,
) -> Result<(), UnclearPath> {
    // A value that is not UTF-8 carries a leading mark, which would hide
    // its first element's `host` key: it names hosts no one can read here.
    if crate::headers::is_marked(value) {
        return Err(UnclearPath);
    }
    let forwarded = name.eq_ignore_ascii_case("forwarded");
    for part in value.split([',', ';']) {
        let h = match part.split_once('=') {
            Some((k, v)) if forwarded && k.trim().eq_ignore_ascii_case("host") => v,
            _ if forwarded => continue,
            _ => part,
        };
        let h = unquote(h.trim());
        if !crate::request::is_plain_authority(h) {
            return Err(UnclearPath);
        }
        for h in crate::request::host_readings(h) {
            add_variant(
                list,
                own,
                std::borrow::Cow::Borrowed(h),
                str::eq_ignore_ascii_case,
            )?;
        }
    }
    Ok(())
}

/// A header parameter's value without the double quotes of a quoted
/// string around it (`host="a.example"`, `charset="utf-8"`).
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Whether `name` is one of [`FORWARDED_HOST_HEADERS`] in any spelling an
/// upstream reads as it (`X_Forwarded_Host` too), so that no spelling
/// Envoy passes on can name another route's host unseen.
fn is_forwarded_host_header(name: &str) -> bool {
    crate::request::is_header_of(name, &FORWARDED_HOST_HEADERS)
}

/// Whether an upstream may take a request carrying a header named `name`
/// (any value) for another method, target or host than its own: a method
/// override, a target override or a forwarded host, in any spelling. Such
/// a header is never a trailer a client needs: the filter cuts it from
/// request trailers, where no route match and no signature coverage
/// (see [`is_redirecting_header`]) reads it, but an upstream that merges
/// trailers into the headers would. So is `host` itself: in a trailer it
/// is no `:authority` (Envoy passes it on as it came), and RFC 9110 (6.5.1)
/// forbids it there.
pub fn is_redirecting_header_name(name: &str) -> bool {
    is_method_override_header(name)
        || is_url_override_header(name)
        || is_forwarded_host_header(name)
        || crate::request::is_header_of(name, &["host"])
}

/// Whether `name` (in any spelling, see [`crate::request::is_header_of`])
/// says how the body reads: `Content-Type`, `Content-Encoding`. A route
/// that reads body values checks them in the headers (`is_plain_json`:
/// one JSON type, no encoding); a trailer copy would stand beside them for
/// an upstream that merges trailers into its headers (a form type over a
/// body built to read as both). No client needs one as a trailer (RFC 9110
/// 6.5.1): the filter cuts them from every request's trailers.
pub fn is_body_format_header_name(name: &str) -> bool {
    crate::request::is_header_of(name, &["content-type", "content-encoding"])
}

/// Whether an upstream may take a request carrying header `name: value`
/// for another method, target or host than its own (`target`: its path
/// and query, as `@path` and `@query` read them; `authority`: its
/// authority): a method override ([`METHOD_OVERRIDE_HEADERS`]) in any
/// spelling; a target override ([`URL_OVERRIDE_HEADERS`]) naming another
/// path or query; a forwarded-host header ([`FORWARDED_HOST_HEADERS`])
/// naming another host (or more of them than are told apart). A signed
/// request must cover such a header (see `signing`): otherwise a captured
/// `GET /v1/profile` could be sent on with `X-Original-URL:
/// /v1/delete-account` added. One naming the request's own target or
/// host changes nothing and need not be covered: a front end sets it
/// (Azure Application Gateway adds `X-Original-URL` to every request, a
/// proxy `X-Forwarded-Host`), and the client could not sign it.
pub fn is_redirecting_header(
    authority: &str,
    target: (&str, Option<&str>),
    name: &str,
    value: &str,
) -> bool {
    if is_method_override_header(name) {
        return true;
    }
    if is_url_override_header(name) {
        // A request-target has no fragment: an override carrying one names
        // something else to an upstream that takes it as it is
        // (`/v1/status#/../admin`, its dot segments then removed).
        let (path, query, fragment) = crate::request::split_target(value.trim());
        let query = query.unwrap_or("");
        return fragment.is_some() || path != target.0 || query != target.1.unwrap_or("");
    }
    if !is_forwarded_host_header(name) {
        return false;
    }
    let mut hosts = Vec::new();
    add_forwarded_hosts(
        &mut hosts,
        crate::request::host_name(authority),
        name,
        value,
    )
    .is_err()
        || !hosts.is_empty()
}

/// The query parameter through which a client asks the same: `_method`
/// (Laravel reads it from the query as from a form; Express's
/// `method-override` can be set to). Read as the API key parameter is: the
/// name in any case, between `&` or `;`, `%XX` decoded. The `_method` of a
/// form body is not read.
pub const METHOD_OVERRIDE_PARAM: &str = "_method";

/// Finds the first route that matches the request, if any; [`UnclearPath`]
/// when the request could reach a different handler upstream than the one
/// its path and method name (refused as `route_denied`): a path with dot or
/// empty segments; or, where the upstream may take the request for another
/// path, method or host, one that takes another route than the request's
/// own:
/// - paths: the path with its percent-encoded unreserved characters
///   (`%73`) decoded and `%2F`, `%5C` and `\` read as `/` (and that
///   path's format stems); the path
///   without a format suffix (`/v1/sms.json`, also with a trailing slash,
///   at its first or last dot), unless an exact route names the dotted
///   path itself; each target override
///   ([`URL_OVERRIDE_HEADERS`]; one that is not a plain path, with `%` or
///   `\`, is refused outright);
/// - methods, where a route lists `methods`: each method override
///   ([`METHOD_OVERRIDE_HEADERS`], each comma-separated value of each
///   copy, as Express reads the first and others the last;
///   [`METHOD_OVERRIDE_PARAM`], each copy; one that cannot be decoded is
///   refused), and GET for a HEAD request (upstreams run the GET handler
///   for it) when GET takes a route;
/// - hosts, where a route lists `hosts`: each forwarded host
///   ([`FORWARDED_HOST_HEADERS`]);
///
/// every host with every path and every method. A variant that keeps the
/// route changes nothing; more than [`MAX_ROUTE_VARIANTS`] distinct
/// override paths, methods or forwarded hosts (or more combinations of
/// the three than two such lists make) make the request unclear.
pub fn match_route<'c>(
    config: &'c Config,
    req: &Request<'_>,
) -> Result<Option<(usize, &'c Route)>, UnclearPath> {
    match_route_for(config, req, req.method())
}

/// [`match_route`] for `req` as if its method were `method` (a CORS
/// preflight takes the route of the method it asks about).
fn match_route_for<'c>(
    config: &'c Config,
    req: &Request<'_>,
    method: &str,
) -> Result<Option<(usize, &'c Route)>, UnclearPath> {
    use std::borrow::Cow;
    // A `:path` that is not UTF-8 was read lossily and marked
    // (`headers::is_marked`; Envoy never passes a NUL). Its path names
    // no route then, not even `/`, while the upstream serves the route its
    // readable part names (Envoy's HTTP/2 codec passes bytes 0x80-0xFF in
    // the query on, and `normalize_path` leaves the query as sent): no
    // route can be trusted with it, as Envoy's HTTP/1 codec refuses it.
    if req.header(":path").is_some_and(crate::headers::is_marked) {
        return Err(UnclearPath);
    }
    let path = route_path(req.path()).ok_or(UnclearPath)?;
    let host = req.host();
    let route_at = |p: &str, method: &str, host: &str| {
        config
            .routes
            .iter()
            .position(|r| route_matches(r, p, method, host))
    };
    let index = route_at(&path, method, host);
    let matched = index.and_then(|i| config.routes.get(i).map(|r| (i, r)));
    // The other paths and methods an upstream may read (no allocation
    // when there are none, the common case). One pass over the headers.
    let mut paths: Vec<Cow<'_, str>> = Vec::new();
    let mut methods: Vec<Cow<'_, str>> = Vec::new();
    let mut hosts: Vec<Cow<'_, str>> = Vec::new();
    // The path as an upstream that decodes it before routing reads it
    // (Tomcat, Spring, Go's `net/http`, Werkzeug, ASP.NET Core), read from
    // the path as it came, `;` parameters and all (a `%2F..` inside one is
    // a traversal to an upstream that decodes first): every escape of a
    // character a path holds as it is decoded, as Envoy's `normalize_path`
    // does only for unreserved ones (`%73` for `s`, and `%3A` for the `:`
    // of `/v1/things:batchDelete`), the rest in one case (see
    // [`canonical_path`]); then also with `%2F` and `%5C`, which Envoy
    // passes on unless told to reject or decode them
    // (`path_with_escaped_slashes_action`), and `\`, which only
    // `normalize_path` turns into `/`, read as `/`. Each must take the
    // request's route.
    let raw = req.path();
    let canonical = canonical_path(raw);
    let slashes = decode_slashes(canonical.as_deref().unwrap_or(raw));
    for decoded in [canonical, slashes].into_iter().flatten() {
        let decoded = route_path(&decoded).ok_or(UnclearPath)?.into_owned();
        // `/v1/a%2Fsms.json` is `/v1/a/sms` to an upstream that both
        // decodes and strips format suffixes.
        for stem in format_stems(&decoded).into_iter().flatten() {
            add_variant(&mut paths, &path, Cow::Owned(stem.to_owned()), str::eq)?;
        }
        add_variant(&mut paths, &path, Cow::Owned(decoded), str::eq)?;
    }
    if config.routes_by_host {
        // `api.example.com:x.cdn.example.com` is `api.example.com` to an
        // upstream that cuts the authority at its first `:`.
        // (The first reading is `host` itself, which adds nothing.)
        let authority = req.header(":authority").unwrap_or("");
        if !crate::request::is_plain_authority(authority) {
            return Err(UnclearPath);
        }
        for h in crate::request::host_readings(authority) {
            add_variant(
                &mut hosts,
                host,
                Cow::Borrowed(h),
                str::eq_ignore_ascii_case,
            )?;
        }
    }
    for (name, value) in req.headers.iter() {
        if config.routes_by_host && is_forwarded_host_header(name) {
            add_forwarded_hosts(&mut hosts, host, name, value)?;
        } else if config.routes_by_method && is_method_override_header(name) {
            // Not UTF-8: the mark in front would hide the first value's
            // method.
            if crate::headers::is_marked(value) {
                return Err(UnclearPath);
            }
            for m in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                add_variant(
                    &mut methods,
                    method,
                    Cow::Borrowed(m),
                    str::eq_ignore_ascii_case,
                )?;
            }
        } else if is_url_override_header(name) {
            // Not decoded by Envoy: `%61` or `\` would be read as another
            // path upstream than here; nor is a `#`, which no request-target
            // has, cut off upstream (`/v1/status#/../admin`).
            let (target, _, fragment) = crate::request::split_target(value.trim());
            if !target.starts_with('/') || target.contains(['%', '\\']) || fragment.is_some() {
                return Err(UnclearPath);
            }
            let target = route_path(target).ok_or(UnclearPath)?.into_owned();
            for stem in format_stems(&target).into_iter().flatten() {
                add_variant(&mut paths, &path, Cow::Owned(stem.to_owned()), str::eq)?;
            }
            add_variant(&mut paths, &path, Cow::Owned(target), str::eq)?;
        }
    }
    if config.routes_by_method {
        // `?_method%00;x=DELETE` is a `_method` without a value to one
        // reading and `_method=DELETE` to PHP's: both are read.
        for pair in query_pairs(req.query().unwrap_or("")) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if is_method_param(k) {
                let m = form_decode(v).ok_or(UnclearPath)?;
                let m = m.trim();
                if !m.is_empty() {
                    add_variant(
                        &mut methods,
                        method,
                        Cow::Owned(m.to_owned()),
                        str::eq_ignore_ascii_case,
                    )?;
                }
            }
        }
    }
    // `/v1/sms.json` runs `/v1/sms`'s handler on Rails (whose routes take
    // an optional `(.:format)`), Grape, and Spring before 5.3. A route
    // whose `path` names the dotted path itself is the operator's word.
    if !matched.is_some_and(|(_, r)| matches!(r.path, PathMatch::Exact(_))) {
        paths.extend(format_stems(&path).into_iter().flatten().map(Cow::Borrowed));
    }
    let head = config.routes_by_method && method.eq_ignore_ascii_case("HEAD");
    if paths.is_empty() && methods.is_empty() && hosts.is_empty() && !head {
        return Ok(matched);
    }
    // Every host (`:authority`, then each forwarded one an upstream may
    // take for it) with every path and every method: Rails takes the host
    // from `X-Forwarded-Host`, strips `(.:format)` and honours method
    // overrides all at once. Each list is bounded; together they may not
    // make more combinations than two full lists, as before hosts joined.
    let bound = MAX_ROUTE_VARIANTS + 1;
    if (hosts.len() + 1) * (paths.len() + 1) * (methods.len() + 1) > bound * bound {
        return Err(UnclearPath);
    }
    for (j, h) in std::iter::once(host)
        .chain(hosts.iter().map(|h| &**h))
        .enumerate()
    {
        for (n, p) in std::iter::once(&*path)
            .chain(paths.iter().map(|p| &**p))
            .enumerate()
        {
            for (k, m) in std::iter::once(method)
                .chain(methods.iter().map(|m| &**m))
                .enumerate()
            {
                if j + n + k == 0 {
                    continue;
                }
                if route_at(p, m, h) != index {
                    return Err(UnclearPath);
                }
            }
            // Upstreams serve HEAD with the GET handler (side effects
            // included): where GET takes a route, HEAD must take the same.
            if head && route_at(p, "GET", h).is_some_and(|g| Some(g) != index) {
                return Err(UnclearPath);
            }
        }
    }
    Ok(matched)
}

/// Most distinct override paths, most distinct override methods, and most
/// distinct forwarded hosts, one request may carry (each checked against
/// every route with each of the others; all three together make at most
/// as many combinations as two full lists): no client needs more than one
/// or two, and without a bound a request of thousands of
/// `X-HTTP-Method-Override` values and dozens of `X-Original-URL` copies
/// cost milliseconds of route matching.
pub const MAX_ROUTE_VARIANTS: usize = 16;

/// Adds `variant` to `list` unless it is the request's own (`own`) or
/// already there (by `same`); more than [`MAX_ROUTE_VARIANTS`] distinct
/// ones make the request [`UnclearPath`].
#[inline(never)]
fn add_variant<'a>(
    list: &mut Vec<std::borrow::Cow<'a, str>>,
    own: &str,
    variant: std::borrow::Cow<'a, str>,
    same: fn(&str, &str) -> bool,
) -> Result<(), UnclearPath> {
    if same(&variant, own) || list.iter().any(|v| same(v, &variant)) {
        return Ok(());
    }
    if list.len() >= MAX_ROUTE_VARIANTS {
        return Err(UnclearPath);
    }
    list.push(variant);
    Ok(())
}

/// Whether a raw query parameter name is [`METHOD_OVERRIDE_PARAM`] as the
/// upstreams that read it see it (see [`php_name_is`]): `?.method=`,
/// `?+_method=` and `?_method%00x=` are `_method` there.
fn is_method_param(raw: &str) -> bool {
    php_name_is(raw, METHOD_OVERRIDE_PARAM)
}

/// What a refusal exposes to a web app under
/// [`Config::cors_on_refusals`]: appguard's reason and every header a
/// refusal of its may carry.
pub const REFUSAL_EXPOSED_HEADERS: &str = "x-appguard-reason, retry-after, x-ratelimit-limit, \
     x-ratelimit-remaining, x-ratelimit-reset, www-authenticate, grpc-status, grpc-message";

/// The CORS headers a refusal carries under [`Config::cors_on_refusals`],
/// given the request's `Origin` values: none unless there is exactly one
/// and a web app lists it ([`identity::is_listed_web_origin`]). It goes
/// back as sent: a browser compares it with its own, byte for byte.
pub fn refusal_cors_headers<'h>(
    config: &Config,
    mut origins: impl Iterator<Item = &'h str>,
) -> Vec<(&'static str, &'h str)> {
    let Some(cors) = &config.cors_on_refusals else {
        return Vec::new();
    };
    let (Some(origin), None) = (origins.next(), origins.next()) else {
        return Vec::new();
    };
    if !identity::is_listed_web_origin(&config.apps, origin) {
        return Vec::new();
    }
    let mut headers = vec![
        ("access-control-allow-origin", origin),
        ("vary", "origin"),
        ("access-control-expose-headers", REFUSAL_EXPOSED_HEADERS),
    ];
    if cors.allow_credentials {
        headers.push(("access-control-allow-credentials", "true"));
    }
    headers
}

/// The method a browser's CORS preflight asks about, if `req` is one:
/// `OPTIONS` with a non-empty `Origin` and `Access-Control-Request-Method`
/// (what Envoy's `jwt_authn` bypasses), and nothing a browser never sends
/// with a preflight: no body, no API key (header, parameter, or a cookie
/// named like the parameter) and no header any token provider reads, in
/// any spelling (an upstream that runs
/// a route's handler for `OPTIONS` then gets no credential appguard did
/// not check), and nothing that asks an upstream for another method (no
/// method-override header in any spelling, no `_method` parameter: it
/// would run another handler than the preflight's).
pub fn cors_preflight_method<'r>(config: &Config, req: &Request<'r>) -> Option<&'r str> {
    let asked = req.header("access-control-request-method")?.trim();
    let names = |name: &str| {
        req.headers
            .iter()
            .any(|(n, _)| crate::request::same_header_name(n.as_bytes(), name.as_bytes()))
    };
    let params = |name: &str| {
        query_pairs(req.query().unwrap_or("")).any(|p| php_name_is_or_under(param_name(p), name))
    };
    // A cookie named like the key parameter is a key to an upstream that
    // merges cookies into its parameters (see `api_key_of`); no browser
    // sends cookies with a preflight.
    let key_cookie = |name: &str| has_param_cookie(req, name);
    let preflight = req.method() == "OPTIONS"
        && !asked.is_empty()
        && req.header("origin").is_some_and(|v| !v.is_empty())
        && !req.has_body()
        && !names(&config.api_keys.header)
        && !config.api_keys.query_param.as_deref().is_some_and(params)
        && !config.api_keys.query_param.as_deref().is_some_and(key_cookie)
        && !config
            .providers
            .iter()
            .flat_map(|p| &p.sources)
            .any(|s| names(&s.header))
        && !req
            .headers
            .iter()
            .any(|(n, _)| is_method_override_header(n))
        && !params(METHOD_OVERRIDE_PARAM)
        // Nor the token parameter a delegated provider's route refuses
        // (see `check_token`).
        && !(config.providers.iter().any(|p| p.verified_by.is_some())
            && params(JWT_AUTHN_QUERY_PARAM));
    preflight.then_some(asked)
}

/// The query's `name=value` pairs in every reading an upstream may make:
/// split on `&` and `;` (older Go and Python parsers), then, when the query
/// holds a `;` (the only case where they differ), split on `&` alone (PHP).
fn query_pairs(query: &str) -> impl Iterator<Item = &str> {
    let php_pairs = query.contains(';').then(|| query.split('&'));
    query
        .split(['&', ';'])
        .chain(php_pairs.into_iter().flatten())
}

/// The raw name of a query pair (`name=value`, or a bare `name`).
fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k)
}

/// Whether the raw query parameter name `raw` is `want` to some upstream:
/// decoded, in any case, and as PHP names `$_GET` keys (which Symfony and
/// Laravel read): cut at a NUL, without leading spaces, with `.`, ` ` and
/// `[` read as `_` (PHP maps `[` only inside a name, so this matches a
/// little more than it must; `want` is read the same way). Bytes are
/// compared as they decode, so no length or encoding of the rest of the
/// name hides one, and nothing is allocated.
fn php_name_is(raw: &str, want: &str) -> bool {
    php_name(raw, want, false)
}

/// [`php_name_is`], or `want[…]`: a parameter PHP and Rails read into
/// `want` (`?sms[to]=` is `params[:sms][:to]`, `$_GET['sms']['to']`).
fn php_name_is_or_under(raw: &str, want: &str) -> bool {
    php_name(raw, want, true)
}

/// [`php_name_is`] (`under` false) and [`php_name_is_or_under`] (`under`
/// true) in one pass. Decodes `%XX` and `+` as it compares, as PHP builds
/// `$_GET` keys, and `%uXXXX` as ASP.NET does, so that an escaped
/// spelling of the name cannot hide it.
fn php_name(raw: &str, want: &str, under: bool) -> bool {
    let canon = |b: u8| {
        if matches!(b, b'.' | b' ' | b'[') {
            b'_'
        } else {
            b.to_ascii_lowercase()
        }
    };
    let want = want.as_bytes();
    let bytes = raw.as_bytes();
    let mut seen = 0;
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        let b = match c {
            b'+' => b' ',
            b'%' => match escape_at(bytes, i) {
                Some((3, v)) => {
                    i += 2;
                    u8::try_from(v).unwrap_or(b'%')
                }
                // ASP.NET on .NET Framework (`HttpUtility.UrlDecode`)
                // decodes `%uXXXX`: `%u006Bey` is its `key`. A character
                // outside ASCII matches no name here.
                Some((len, v)) => {
                    i += len - 1;
                    u8::try_from(v).ok().filter(u8::is_ascii).unwrap_or(0xFF)
                }
                // PHP keeps a `%` that starts no escape as it is.
                None => b'%',
            },
            _ => c,
        };
        i += 1;
        if b == 0 {
            break;
        }
        if seen == 0 && b == b' ' {
            continue;
        }
        if under && b == b'[' && seen == want.len() && seen > 0 {
            return true;
        }
        if want.get(seen).map(|&w| canon(w)) != Some(canon(b)) {
            return false;
        }
        seen += 1;
    }
    seen == want.len()
}

/// The path as routes read it: without its segments' `;` parameters
/// (`/v1/pay;x/charge` → `/v1/pay/charge`). Envoy's normalisation keeps
/// them, while many upstreams (Tomcat, Spring, Jetty) drop them and serve
/// the same handler: matched with them, such a request could take a
/// weaker route than the handler it reaches.
///
/// `None` when the result has a `.` or `..` segment, or an empty one
/// before the end: Envoy's `normalize_path` and `merge_slashes` leave none
/// of those, but they come back from `;` (`/v1/public/..;/sms`,
/// `/v1/;x/sms`, `/v1/sms/.;/send`), or arrive when those settings are off,
/// and an upstream that resolves them serves another path than the one
/// appguard would match (`/v1/sms` for `/v1/public/..;/sms`).
fn route_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    // The common path: nothing to drop, nothing to resolve.
    if !path.contains(';') && !path.contains("//") && !path.contains("/.") && !path.contains('%') {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut segments = path.split('/').enumerate().peekable();
    while let Some((i, segment)) = segments.next() {
        let segment = segment.split(';').next().unwrap_or("");
        let last = segments.peek().is_none();
        if is_dot_segment(segment) || (segment.is_empty() && i > 0 && !last) {
            return None;
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment);
    }
    Some(std::borrow::Cow::Owned(out))
}

/// The first `%XX` in `path` (its offset) that decodes to a character
/// RFC 3986 (2.3) calls unreserved: ALPHA, DIGIT, `-`, `.`, `_`, `~`.
/// Envoy's `normalize_path` decodes those, so one reaches appguard only
/// with that setting off, and Tomcat/Spring, Go's `net/http` and Werkzeug
/// decode it before routing (`/v1/%73ms` is `/v1/sms` there).
pub(crate) fn encoded_unreserved(path: &str) -> Option<(usize, char)> {
    path.match_indices('%')
        .find_map(|(i, _)| unreserved_escape(path.get(i..)?).map(|c| (i, c)))
}

/// The unreserved character (see [`encoded_unreserved`]) that `s` starts
/// with the escape of (`%73…` → `s`), if it does.
fn unreserved_escape(s: &str) -> Option<char> {
    let (3, v) = escape_at(s.as_bytes(), 0)? else {
        return None;
    };
    let c = char::from_u32(v)?;
    (c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')).then_some(c)
}

/// Whether a path may hold `b` as it is (RFC 3986 `pchar` but `%`, and
/// `/`), and `[` and `]`, which Envoy passes on unescaped (as browsers send
/// them): what Envoy hands over unescaped once `normalize_path` ran.
pub(crate) fn is_path_char(b: u8) -> bool {
    // A `match` compiles to range and bit tests; `contains` on the list of
    // marks was a scan for each `/` of every request's path.
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')'
        | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@' | b'/' | b'[' | b']')
}

/// The escape `b` holds at `i`, if any, as its length and value: `%XX`
/// (3 bytes, a byte) or `%uXXXX` (6 bytes, a character), which IIS's
/// http.sys decodes in paths (`/v1/%u0073ms` is `/v1/sms` there).
fn escape_at(b: &[u8], i: usize) -> Option<(usize, u32)> {
    let hex = |j: usize| b.get(j).and_then(|&h| char::from(h).to_digit(16));
    if b.get(i) != Some(&b'%') {
        return None;
    }
    if matches!(b.get(i + 1), Some(b'u' | b'U')) {
        let mut v = 0;
        for j in i + 2..i + 6 {
            v = v << 4 | hex(j)?;
        }
        return Some((6, v));
    }
    Some((3, hex(i + 1)? << 4 | hex(i + 2)?))
}

/// `path` written one way, so that two spellings an upstream that decodes
/// paths reads as one compare equal (and route paths, which are written
/// this way, compare with them): the escape of each character a path may
/// hold as it is decoded (`%73` → `s`, `%3A` → `:`, `%40` → `@`, IIS's
/// `%u0073` → `s`), but for `%2F` and `%3B` (a decoded `/` or `;` would
/// make another segment or a `;` parameter of it); every other escape in
/// upper case (`%c3%a9` → `%C3%A9`, `%u00e9` → `%C3%A9`); and every byte a
/// path never holds as it is but `%` escaped (`{` → `%7B`, `\\` → `%5C`,
/// `é` → `%C3%A9`), as Envoy's `normalize_path` sends them. A `%` that
/// starts no escape stays. `None` when `path` is written so already.
pub(crate) fn canonical_path(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let keeps =
        |c: u32| u8::try_from(c).is_ok_and(|c| is_path_char(c) && !matches!(c, b'/' | b';'));
    let changes = |i: usize, c: u8| match (c, escape_at(b, i)) {
        (b'%', Some((6, e))) => char::from_u32(e).is_some(),
        (b'%', Some((_, e))) => {
            keeps(e)
                || b.get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().any(u8::is_ascii_lowercase))
        }
        (b'%', None) => false,
        _ => !is_path_char(c),
    };
    let first = b.iter().enumerate().position(|(i, &c)| changes(i, c))?;
    let mut out = String::with_capacity(path.len() + 8);
    out.push_str(path.get(..first)?);
    let mut i = first;
    while let Some(&c) = b.get(i) {
        match (c, escape_at(b, i)) {
            (b'%', Some((len, e))) => {
                match (u8::try_from(e), char::from_u32(e)) {
                    (Ok(byte), _) if len == 3 || byte < 0x80 => {
                        if keeps(e) {
                            out.push(char::from(byte));
                        } else {
                            push_escape(&mut out, byte);
                        }
                    }
                    (_, Some(ch)) => {
                        let mut utf8 = [0u8; 4];
                        for &byte in ch.encode_utf8(&mut utf8).as_bytes() {
                            push_escape(&mut out, byte);
                        }
                    }
                    // A `%u` of a lone surrogate: no character, kept.
                    _ => {
                        out.push('%');
                        i += 1;
                        continue;
                    }
                }
                i += len;
            }
            _ => {
                if is_path_char(c) || c == b'%' {
                    out.push(char::from(c));
                } else {
                    push_escape(&mut out, c);
                }
                i += 1;
            }
        }
    }
    Some(out)
}

/// Appends `%XX` for `b`, in upper case.
fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    for nibble in [b >> 4, b & 0xf] {
        out.push(char::from(
            HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
        ));
    }
}

/// `path` with every `%2F` and `%5C` (any case) and every `\` turned into
/// `/`; `None` when it has none. Envoy's `normalize_path` turns `\` into
/// `/` (as IIS does); with it off, `\` arrives as such, and an upstream
/// that reads it as `/` serves another path, as one that decodes `%5C`
/// does.
fn decode_slashes(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = String::new();
    let mut from = 0;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let len = if c == b'\\' {
            1
        } else if c == b'%'
            && b.get(i + 1..i + 3)
                .is_some_and(|h| h.eq_ignore_ascii_case(b"2f") || h.eq_ignore_ascii_case(b"5c"))
        {
            3
        } else {
            i += 1;
            continue;
        };
        out.push_str(path.get(from..i)?);
        out.push('/');
        i += len;
        from = i;
    }
    if out.is_empty() {
        return None;
    }
    out.push_str(path.get(from..)?);
    Some(out)
}

/// The path without the format suffix of its last segment (`/v1/sms` for
/// `/v1/sms.json` and `/v1/sms.json/`), cut at the segment's first and at
/// its last `.`, if it has one after its first character: at most two
/// stems. A `.` that ends the segment counts (`/v1/sms.`, `/v1/sms./`):
/// Spring's suffix pattern `/v1/sms.*` matches it. (A `%2e` is not a
/// dot here: the decoded path, whose stems are variants too, has it as
/// one.)
fn format_stems(path: &str) -> [Option<&str>; 2] {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let start = trimmed.rfind('/').map_or(0, |i| i + 1);
    let segment = trimmed.get(start..).unwrap_or("");
    let b = segment.as_bytes();
    let dots = || (1..b.len()).filter(|&i| b.get(i) == Some(&b'.'));
    let stem = |i: usize| trimmed.get(..start + i);
    let first = dots().next();
    let last = dots().next_back().filter(|&l| Some(l) != first);
    [first.and_then(stem), last.and_then(stem)]
}

/// `.` or `..`, also spelled with `%2e` (which an upstream decodes before
/// resolving them, and which reaches appguard as such when Envoy's
/// `normalize_path` is off).
pub(crate) fn is_dot_segment(segment: &str) -> bool {
    let b = segment.as_bytes();
    let mut dots = 0;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'.' {
            i += 1;
        } else if b
            .get(i..i + 3)
            .is_some_and(|e| e.eq_ignore_ascii_case(b"%2e"))
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Whether route `r` takes a request to `path` (as [`route_path`] reads it,
/// or one of the variants an upstream may read) with `method` (GET also
/// takes HEAD, which upstreams serve with the GET handler) and `host`
/// (`:authority` without its port; any host when the route lists none).
fn route_matches(r: &Route, path: &str, method: &str, host: &str) -> bool {
    r.path.matches(path)
        && crate::config::method_matches(&r.methods, method)
        && (r.hosts.is_empty() || r.hosts.iter().any(|h| host_matches(h, host)))
}

/// Whether `host` matches a route's host pattern, without case (DNS names
/// are case-insensitive). `*.example.com` does not match `example.com`
/// itself; the boundary check keeps a non-ASCII host from panicking the
/// slice.
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
    /// The provider (by index) whose remote JWKS must be fetched before the
    /// token can be judged, and the token's `kid`: [`evaluate`] turns it
    /// into [`Step::NeedKeys`] and runs again once keys came, nothing
    /// having been recorded.
    NeedKeys(usize, Option<Box<str>>),
    /// The request is refused; the mode is applied by the caller (see
    /// [`finish`]), so that monitor mode still lets it through, marked.
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
    // A preflight takes the route of the request it asks about: a route
    // that lists `methods` lists that method, not `OPTIONS`.
    let mut preflight = if config.bypass_cors_preflight {
        cors_preflight_method(config, req)
    } else {
        None
    };
    let mut matched = match_route_for(config, req, preflight.unwrap_or(req.method()));
    // Only a route a web app may use takes a browser's preflight, and
    // only where the route `OPTIONS` itself takes is one too (the handler
    // an `OPTIONS` reaches may be that route's): a preflight to a
    // mobile-only route is no browser's, and is checked as any `OPTIONS`,
    // under the route that method takes. So is one the `action` or the
    // network rules of that route refuse, where it comes before the route
    // asked about or lists `OPTIONS` itself: the method asked about is the
    // client's to choose, and naming one that route does not list must
    // not take its `OPTIONS` past them to a laxer route. (A later route
    // that takes every method is the catch-all a browser's preflight to
    // the earlier route falls under too.) And one whose plain `OPTIONS`
    // is unclear (`/v1/sms.json` where `/v1/sms` has a route) is too.
    if preflight.is_some() {
        let plain = match_route_for(config, req, req.method());
        let mobile_only = |m: &Result<Option<(usize, &Route)>, UnclearPath>| {
            matches!(m, Ok(Some((_, r))) if !r.platforms.is_empty()
                && !r.platforms.contains(&identity::Platform::Web))
        };
        let plain_refuses = match (&matched, &plain) {
            (Ok(_), Err(UnclearPath)) => true,
            (Ok(m), Ok(Some((i, r)))) if m.map(|(mi, _)| mi) != Some(*i) => {
                let earlier = m.is_none_or(|(mi, _)| *i < mi);
                let lists_options =
                    !r.methods.is_empty() && crate::config::method_matches(&r.methods, "OPTIONS");
                (earlier || lists_options)
                    && (r.action == Action::Deny
                        || r.network.as_ref().is_some_and(|n| {
                            check_network(n, req, config.xff_trusted_hops).is_err()
                        }))
            }
            _ => false,
        };
        if mobile_only(&matched) || mobile_only(&plain) || plain_refuses {
            preflight = None;
            matched = plain;
        }
    }
    let Ok(matched) = matched else {
        // No route can be trusted to name the handler: refused as if
        // unrouted under `default_action: deny`. Enforced whenever any
        // route is (the handler it reaches may be that route's: monitor
        // mode must not let it through there), and with the API key cut
        // out of the path Envoy logs, as a routed refusal would be.
        let facts = Facts {
            client_ip: req.client_ip_if_known(),
            ..Facts::default()
        };
        let enforced =
            config.mode == Mode::Enforce || config.routes.iter().any(|r| r.mode == Mode::Enforce);
        let mode = if enforced {
            Mode::Enforce
        } else {
            Mode::Monitor
        };
        let mut grant = Grant::default();
        if !config.api_keys.forward {
            grant.key_scrub = key_scrub(config, req);
        }
        return Step::Done(finish(mode, grant, Reason::RouteDenied.into()), facts);
    };
    let mode = matched.map_or(config.mode, |(_, r)| r.mode);
    let mut facts = Facts {
        route: matched.map(|(i, _)| i),
        cors_preflight: preflight.is_some(),
        ..Facts::default()
    };
    let mut grant = Grant::default();
    let route = matched.map(|(_, r)| r);
    let checked = check(ctx, req, now, route, &mut facts, &mut grant);
    facts.client_ip = req.client_ip_if_known();
    let signing = match checked {
        Ok(s) => s,
        Err(Flow::NeedKeys(p, kid)) => {
            // The token headers of providers that never forward go too
            // (evaluated again, the request is read from the headers as
            // they came); a forwarding provider's stay, since its token
            // may yet verify and go upstream.
            let forwarding = |name: &String| {
                route.is_some_and(|r| {
                    r.providers
                        .iter()
                        .filter_map(|&pi| config.providers.get(pi))
                        .filter(|p| p.forward)
                        .flat_map(|p| p.sources.iter())
                        .any(|s| same_header_name(s.header.as_bytes(), name.as_bytes()))
                })
            };
            grant.remove_headers.retain(|name| !forwarding(name));
            return Step::NeedKeys {
                provider: p,
                key_scrub: grant.scrub(),
                kid,
            };
        }
        Err(Flow::Deny(d)) => return Step::Done(finish(mode, grant, d), facts),
    };
    let replay = facts.replay.take();
    let pending = Box::new(Pending {
        mode,
        grant,
        facts,
        signing,
        service: Vec::new(),
        sent_ms: 0,
        replay_index: None,
        local_replay: None,
        signed_recorded: None,
        replay_fallback: None,
        local_taken: Vec::new(),
        replay,
    });
    let Some(route) = route.filter(|_| !pending.facts.cors_preflight) else {
        return done(pending);
    };
    if pending.signing.is_some() || route.limits_need_body() {
        // A body declared longer than the route reads is refused now, by
        // its `content-length`, not when (if ever) that many bytes have
        // come: a held request would otherwise wait for them until
        // Envoy's timeouts.
        let declared = req
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let max = u64::try_from(route.max_body_bytes).unwrap_or(u64::MAX);
        if declared.is_some_and(|n| n > max) {
            return deny(pending, Reason::BodyTooLarge.into());
        }
        return Step::NeedBody(pending);
    }
    // The `jti` was looked up in `check` in this same callback (enforce
    // mode): nothing can have recorded it since. Monitor mode looks here.
    let replay_again = route.mode == Mode::Monitor;
    limits_phase(ctx, req, route, &HashMap::new(), pending, now, replay_again)
}

/// The decision for a pending evaluation refused by the adapter (a body
/// over the size limit), with the mode applied.
pub fn finish_pending(p: Box<Pending>, d: Denial) -> Step {
    deny(p, d)
}

/// Ends a pending evaluation with an allow: the mode needs no applying, an
/// allow is one in both modes.
fn done(p: Box<Pending>) -> Step {
    let p = *p;
    Step::Done(Decision::Allow(p.grant), p.facts)
}

/// Ends a pending evaluation with `d`, under the mode the header phase
/// recorded: monitor mode turns it into an allow that carries the reason.
fn deny(p: Box<Pending>, d: Denial) -> Step {
    let p = *p;
    Step::Done(finish(p.mode, p.grant, d), p.facts)
}

/// Continues with the whole body (bodies declared or read over
/// `max_body_bytes` are refused before: [`evaluate`] by `content-length`,
/// the adapter as the bytes come): request signing, body values, then
/// rate limits.
pub fn evaluate_body(
    ctx: &Ctx<'_>,
    req: &Request<'_>,
    body: &[u8],
    mut pending: Box<Pending>,
    now: u64,
) -> Step {
    let config = ctx.config;
    let Some(route) = pending.facts.route.and_then(|r| config.routes.get(r)) else {
        return done(pending);
    };
    if body.len() > route.max_body_bytes {
        return deny(pending, Reason::BodyTooLarge.into());
    }
    // Request signing belongs to the token (SPEC §1 step 4), so it decides
    // before the body checks (step 6): without the install's key a client
    // learns nothing about the body rules (denied prefixes, format).
    if let Some((pi, key)) = pending.signing.take() {
        let monitor = route.mode == Mode::Monitor;
        let checked = verify_signature_within_budget(
            ctx,
            req,
            (pi, &key),
            Some(body),
            now,
            monitor,
            &mut pending.facts,
        );
        if let Err(r) = checked {
            return deny(pending, r.into());
        }
    }
    if route.limits_need_body() && (!is_plain_json(req) || query_shadows_body(route, req)) {
        return deny(pending, Reason::BodyInvalid.into());
    }
    let values = match body_values(config, route, body) {
        Ok(v) => v,
        Err(r) => return deny(pending, r.into()),
    };
    limits_phase(ctx, req, route, &values, pending, now, true)
}

/// Whether the query carries a parameter named like the first key of a
/// value the route reads from the body (`?to=` for `/to`, `?sms[to]=` for
/// `/sms/to`; named as loosely as `_method` is, see [`php_name_is`]).
/// Rails (`params`), Symfony and Laravel (`$request->get`) take such a
/// parameter over the body's member: the upstream would send to another
/// number than the one checked and counted here.
fn query_shadows_body(route: &Route, req: &Request<'_>) -> bool {
    let Some(query) = req.query().filter(|q| !q.is_empty()) else {
        return false;
    };
    route
        .rate_limits
        .iter()
        .flat_map(|rl| &rl.entries)
        .any(|e| {
            let Source::Body { pointer, .. } = &e.source else {
                return false;
            };
            let first = pointer.split('/').nth(1).unwrap_or("");
            let first = if first.contains('~') {
                std::borrow::Cow::Owned(first.replace("~1", "/").replace("~0", "~"))
            } else {
                std::borrow::Cow::Borrowed(first)
            };
            !first.is_empty()
                && query_pairs(query).any(|p| php_name_is_or_under(param_name(p), &first))
        })
}

/// The `charset` labels a JSON body may carry (see `is_plain_json`):
/// UTF-8, and single-byte charsets in which ASCII is itself.
const ASCII_SAFE_CHARSETS: &[&str] = &[
    "utf-8",
    "utf8",
    "us-ascii",
    "ascii",
    "iso-8859-1",
    "latin1",
    "iso-8859-15",
    "windows-1252",
    "cp1252",
];

/// Whether the request declares its body as JSON that needs no decoding:
/// one `Content-Type` of `application/json` or `application/<x>+json` (any
/// parameters, but a `charset` outside [`ASCII_SAFE_CHARSETS`]), and no
/// `Content-Encoding` but `identity`. A route whose
/// limits read body values reads them as JSON, so an upstream must too:
/// an upstream that also takes forms would otherwise read its own `to`
/// (`application/x-www-form-urlencoded` and a body such as
/// `{"to":"+447700900123","x":"&to=%2B88212345678&"}`) past the denied
/// prefixes and the per-number limits.
fn is_plain_json(req: &Request<'_>) -> bool {
    let Ok(Some(content_type)) = req.header_unique("content-type") else {
        return false;
    };
    let media = crate::decision::media_type(content_type);
    let mut parts = content_type.split(';').skip(1);
    // JSON is UTF-8 (RFC 8259 §8.1), as read here: an upstream that
    // decodes the body in another declared charset (UTF-16, UTF-7, where
    // `+AG8-` is `o`) may read other keys and values than were checked.
    // The single-byte charsets that keep ASCII as it is are taken too
    // (clients still label JSON `ISO-8859-1`): every byte of JSON's
    // syntax and of a phone number reads the same in them, and a byte
    // above 0x7F never becomes one of those there.
    let utf8 = parts.all(|param| match param.split_once('=') {
        Some((name, value))
            if name
                .trim_matches([' ', '\t'])
                .eq_ignore_ascii_case("charset") =>
        {
            let value = unquote(value.trim_matches([' ', '\t']));
            ASCII_SAFE_CHARSETS
                .iter()
                .any(|c| value.eq_ignore_ascii_case(c))
        }
        _ => true,
    });
    // Type and subtype each one token (RFC 9110 §8.3.1): Rack and PHP cut
    // a type at `,` (PHP at a space too), so that
    // `application/x-www-form-urlencoded, application/a+json` is a form
    // to them, whatever it ends with.
    let token = |t: &str| !t.is_empty() && t.bytes().all(crate::signing::is_tchar);
    let json = media.split_once('/').is_some_and(|(kind, sub)| {
        if !token(kind) || !token(sub) {
            return false;
        }
        let suffixed = sub
            .len()
            .checked_sub(5)
            .filter(|&at| at > 0)
            .and_then(|at| sub.get(at..))
            .is_some_and(|s| s.eq_ignore_ascii_case("+json"));
        kind.eq_ignore_ascii_case("application") && (sub.eq_ignore_ascii_case("json") || suffixed)
    });
    let plain = match req.header_unique("content-encoding") {
        Ok(None) => true,
        Ok(Some(e)) => e.trim_matches([' ', '\t']).eq_ignore_ascii_case("identity"),
        Err(()) => false,
    };
    json && utf8 && plain
}

/// The 429 of a local limit, with the headers a client waits by.
fn local_refusal(local: limits::LocalLimit, retry_after: u64) -> Denial {
    let headers = vec![
        ("retry-after".to_owned(), retry_after.to_string()),
        ("x-ratelimit-limit".to_owned(), local.requests.to_string()),
        ("x-ratelimit-remaining".to_owned(), "0".to_owned()),
        ("x-ratelimit-reset".to_owned(), retry_after.to_string()),
    ];
    Denial {
        headers,
        ..Denial::new(Reason::RateLimited)
    }
}

/// A local limit's token a request took: the limit, the descriptor's
/// digest, whether it came from the bucket's overflow entry
/// ([`limits::LocalOutcome::shared`]), and when (ms).
type LocalTaken = (limits::LocalLimit, [u8; 16], bool, u64);

/// Takes a token from each of the route's local limits that applies
/// (`local`: limit and descriptor digest, in the route's order), or none:
/// a request one of them refuses spends none of the others. Otherwise a
/// client over its own limit (per IP) could drain a limit it shares with
/// others (a phone number's, an API key's) with requests that were never
/// let through, and lock their owners out.
///
/// With more than one, each but the last is read before any is taken (a
/// read of shared data, no write): the usual refusal then writes nothing,
/// so a flood of refused requests cannot crowd out the writes of allowed
/// ones. A limit that still refuses when its token is taken (another
/// worker took the last one meanwhile) gives back the ones already taken.
/// The tokens taken are kept in `pending`, to be given back if the
/// request is refused later (replay, the rate-limit service).
fn take_locals(
    ctx: &Ctx<'_>,
    route: &Route,
    local: &[(limits::LocalLimit, [u8; 16])],
    pending: &mut Pending,
) -> Result<(), Denial> {
    let salt = &ctx.bucket_salt;
    // The refusal whose limit refills last, of `first` (a limit and its
    // wait in seconds) and the limits of `rest` that refuse too: a client
    // that waits as told is not refused again by another spent limit.
    let latest = |first: (limits::LocalLimit, u64), rest: &[(limits::LocalLimit, [u8; 16])]| {
        let (limit, wait) = rest
            .iter()
            .filter_map(|&(limit, digest)| {
                let at = limits::local_refill_at(ctx.store, salt, &digest, limit, ctx.now_ms)?;
                Some((limit, at.saturating_sub(ctx.now_ms).div_ceil(1000).max(1)))
            })
            .fold(first, |a, b| if b.1 > a.1 { b } else { a });
        local_refusal(limit, wait)
    };
    if let Some((_, before_last)) = local.split_last() {
        for (i, &(limit, digest)) in before_last.iter().enumerate() {
            if let Some(at) = limits::local_refill_at(ctx.store, salt, &digest, limit, ctx.now_ms) {
                let wait = at.saturating_sub(ctx.now_ms).div_ceil(1000).max(1);
                return Err(latest((limit, wait), local.get(i + 1..).unwrap_or(&[])));
            }
        }
    }
    for (i, &(limit, digest)) in local.iter().enumerate() {
        let rest = local.get(i + 1..).unwrap_or(&[]);
        let refusal = match limits::take_local(ctx.store, salt, &digest, limit, ctx.now_ms) {
            Ok(o) if o.allowed => {
                pending
                    .local_taken
                    .push((limit, digest, o.shared, ctx.now_ms));
                continue;
            }
            Ok(o) => latest((limit, o.retry_after), rest),
            // Other workers kept writing the same bucket through every
            // retry: the descriptor is under a flood, so it is refused
            // as over its limit. `failure_mode` is for a store that
            // cannot count; letting contention through would let the
            // flood buy itself unlimited requests.
            Err(store::StoreError::CasMismatch) => latest((limit, 1), rest),
            // Shared data refused the update: the count cannot be kept,
            // so the route's failure mode decides; letting the request
            // go unlimited is counted and logged as degraded.
            Err(_) if route.failure_mode == FailureMode::Allow => {
                pending
                    .facts
                    .degraded
                    .get_or_insert(Reason::RatelimitUnavailable);
                continue;
            }
            Err(_) => Reason::RatelimitUnavailable.into(),
        };
        give_back_locals(ctx, &mut pending.local_taken);
        return Err(refusal);
    }
    Ok(())
}

/// Gives back the local tokens a request took ([`take_locals`]) when it is
/// refused after all, and forgets them. One that cannot be given back
/// stays spent: strict.
fn give_back_locals(ctx: &Ctx<'_>, taken: &mut Vec<LocalTaken>) {
    for (limit, digest, shared, taken_ms) in taken.drain(..) {
        let salt = &ctx.bucket_salt;
        let when = limits::TakenAt {
            taken_ms,
            now_ms: ctx.now_ms,
        };
        let _ = limits::give_back_local(ctx.store, salt, &digest, limit, shared, when);
    }
}

/// Values read from a JSON body: (pointer, read as a phone number) → value.
type BodyValues<'r> = HashMap<(&'r str, bool), String>;

/// Body values the route's descriptors read, by JSON pointer and whether
/// the entry reads a phone number. Phone numbers are normalised, checked
/// against denied prefixes and hashed here, so the number itself goes no
/// further: even if another entry read the same pointer as plain text (the
/// configuration refuses that), the phone entry would get the hash and the
/// prefix check would still run.
fn body_values<'r>(
    config: &Config,
    route: &'r Route,
    body: &[u8],
) -> Result<BodyValues<'r>, Reason> {
    let mut out = HashMap::new();
    if !route.limits_need_body() {
        return Ok(out);
    }
    let doc = token::strict_json::parse_value(body).ok_or(Reason::BodyInvalid)?;
    for rl in &route.rate_limits {
        for e in &rl.entries {
            let Source::Body {
                pointer,
                phone: is_phone,
                dotted,
            } = &e.source
            else {
                continue;
            };
            let key = (pointer.as_str(), *is_phone);
            if out.contains_key(&key) {
                continue;
            }
            let node = doc.pointer(pointer).ok_or(Reason::BodyInvalid)?;
            // lodash's `_.get(body, "sms.to")` takes a top-level key named
            // like the whole dotted path before it splits the path: beside
            // `{"sms":{"to":…}}`, a `"sms.to"` member is the value such an
            // upstream reads.
            if dotted
                .as_ref()
                .is_some_and(|d| doc.as_object().is_some_and(|o| o.contains_key(d)))
            {
                return Err(Reason::BodyInvalid);
            }
            // A negative JSON integer is no phone number: its `-` is a
            // sign, not a separator.
            if *is_phone && node.as_i64().is_some_and(|n| n < 0) {
                return Err(Reason::BodyInvalid);
            }
            let raw = limits::value_text(node).ok_or(Reason::BodyInvalid)?;
            let value = if *is_phone {
                let pc = config.phone.as_ref().ok_or(Reason::BodyInvalid)?;
                let number = phone::normalize(&raw, &pc.rules).map_err(|_| Reason::BodyInvalid)?;
                if number.trunk_written_twice() {
                    return Err(Reason::BodyInvalid);
                }
                let trunkless = number.without_trunk_prefix();
                // Denied under any reading an upstream may dial (a
                // carrier's `00X` prefix, a calling code written without
                // `+`), counted under this one.
                if pc
                    .denied
                    .matching_prefix_of(&number, trunkless.as_ref())
                    .is_some()
                    || (!pc.denied.is_empty()
                        && phone::other_readings(&raw, &pc.rules)
                            .iter()
                            .any(|n| pc.denied.contains_prefix_of(n)))
                {
                    return Err(Reason::PhoneDenied);
                }
                // One key per phone: a trunk `0` after the calling code
                // would otherwise double the per-number limit.
                phone::hash(&pc.hash_key, trunkless.as_ref().unwrap_or(&number))
            } else {
                // A NUL ends the value to an upstream keeping C strings:
                // `en\u0000x` is its `en`, another count here.
                if raw.len() > 256 || raw.contains('\0') {
                    return Err(Reason::BodyInvalid);
                }
                raw
            };
            out.insert(key, value);
        }
    }
    Ok(out)
}

/// The value of one descriptor entry, or `None` when the request has none
/// (the whole descriptor is then skipped, as Envoy's rate-limit actions do).
/// A client IP always has a value: [`limits::UNKNOWN_CLIENT`] when it is
/// not known, so that hiding it does not lift the limit; a header sent but
/// unreadable, or a claim present but not a short scalar, is
/// [`limits::UNREADABLE_HEADER`] for the same reason.
fn entry_value(
    config: &Config,
    route: &Route,
    source: &Source,
    req: &Request<'_>,
    facts: &Facts,
    body: &BodyValues<'_>,
) -> Option<String> {
    match source {
        Source::ClientIp {
            v4_prefix,
            v6_prefix,
        } => Some(req.client_ip(config.xff_trusted_hops).map_or_else(
            || limits::UNKNOWN_CLIENT.to_owned(),
            |ip| limits::ip_value(ip, *v4_prefix, *v6_prefix),
        )),
        Source::ApiKey => facts
            .key
            .and_then(|k| config.api_keys.keys.get(k))
            .map(|k| k.id.clone()),
        Source::App => facts
            .app
            .and_then(|a| config.apps.get(a))
            .map(|a| a.id.clone()),
        Source::Platform => facts
            .app
            .and_then(|a| config.apps.get(a))
            .map(|a| a.platform.as_str().to_owned()),
        Source::Route => Some(route.name.clone()),
        Source::Value(v) => Some(v.clone()),
        Source::Header(h) => match req.header_unique(h) {
            Ok(None) => None,
            Ok(Some("")) => None,
            Ok(Some(v)) if v.len() <= 256 => Some(v.to_owned()),
            // Sent, but not one readable value: one shared bucket.
            Ok(Some(_)) | Err(()) => Some(limits::UNREADABLE_HEADER.to_owned()),
        },
        Source::Claim(c) => {
            let token = facts.token.as_ref()?;
            match token.claims.get(c) {
                None | Some(serde_json::Value::Null) => None,
                // Present, but a list, an object or over 256 bytes: one
                // shared bucket, as for an unreadable header, so that a
                // signer copying client input into the claim cannot lift
                // the limit.
                Some(_) => Some(
                    token
                        .claim_text(c)
                        .filter(|v| v.len() <= 256)
                        .unwrap_or_else(|| limits::UNREADABLE_HEADER.to_owned()),
                ),
            }
        }
        Source::Body { pointer, phone, .. } => body.get(&(pointer.as_str(), *phone)).cloned(),
    }
}

/// Local limits, the over-limit cache, then one call to the service with
/// every service descriptor. `replay_again`: whether to look the token's
/// `jti` up again (after the body was awaited, another request may have
/// used it since `check` looked).
#[allow(clippy::too_many_arguments)]
fn limits_phase(
    ctx: &Ctx<'_>,
    req: &Request<'_>,
    route: &Route,
    body: &BodyValues<'_>,
    mut pending: Box<Pending>,
    now: u64,
    replay_again: bool,
) -> Step {
    let config = ctx.config;
    // A `jti` already used is refused before any limit counts the request:
    // copies of a captured token must not spend the genuine client's local
    // limits (the claim is still recorded last, below, so that a request
    // the limits refuse does not burn it).
    if let Some(m) = pending
        .replay
        .as_ref()
        .filter(|m| replay_again && m.scope == ReplayScope::Local)
    {
        if local_replay_seen(ctx, m.provider, &m.digest, now) {
            return deny(pending, Reason::TokenReplayed.into());
        }
    }
    // A `jti` the service already refused as used (`replay.scope:
    // service`) is refused from the over-limit cache, until the service's
    // window for it resets, before any limit counts the request and
    // without a call: each copy would otherwise make a call that the
    // service counts for the request's other descriptors (by default, a
    // whole lease for a leased one whose held hits are gone), and nothing
    // else slows copies down (their local tokens are given back).
    // (Built once: the same descriptor goes in the call below.)
    let mut replay_descriptor = pending
        .replay
        .as_ref()
        .filter(|m| m.scope == ReplayScope::Service)
        .and_then(|m| service_replay_descriptor(config, m));
    if service_replay_refused(ctx, replay_descriptor.as_ref(), now) {
        return deny(pending, Reason::TokenReplayed.into());
    }
    let mut service: Vec<Sent> = Vec::new();
    let mut local: Vec<(limits::LocalLimit, [u8; 16])> = Vec::new();
    for (rule, rl) in (0u16..).zip(&route.rate_limits) {
        let mut d: Descriptor = Vec::with_capacity(rl.entries.len());
        for e in &rl.entries {
            match entry_value(config, route, &e.source, req, &pending.facts, body) {
                Some(v) => d.push((e.key.clone(), v)),
                None => {
                    d.clear();
                    break;
                }
            }
        }
        if d.is_empty() {
            continue;
        }
        match rl.local {
            Some(limit) => local.push((limit, limits::descriptor_digest(&rl.scope, &d))),
            None => {
                let key = ctx.service_cache.borrow().key(&rl.scope, &d);
                service.push(Sent {
                    descriptor: d,
                    key,
                    hits: 1,
                    lease: rl.lease,
                    rule,
                });
            }
        }
    }
    // Over-limit cache: the service already said no for this descriptor.
    // The one that resets last decides (ties: the smaller limit), as it
    // does in the service's own answer (`ratelimit::interpret`). A leased
    // descriptor this worker still holds a hit of is not refused here: the
    // service counted that hit within the limit, before the ask it
    // refused. Before the local limits, which a refused request must not
    // spend.
    let cached = {
        let cache = ctx.service_cache.borrow();
        service
            .iter()
            .filter(|s| !(s.lease.is_some() && cache.has_lease(&s.key, ctx.now_ms)))
            .filter_map(|s| cache.get(&s.key, now))
            .min_by_key(|&(until, limit)| (std::cmp::Reverse(until), limit.unwrap_or(u32::MAX)))
    };
    if let Some((until, limit)) = cached {
        let secs = until.saturating_sub(now).max(1).to_string();
        let mut headers = Vec::with_capacity(4);
        headers.push(("retry-after".to_owned(), secs.clone()));
        if let Some(limit) = limit {
            headers.push(("x-ratelimit-limit".to_owned(), limit.to_string()));
        }
        headers.push(("x-ratelimit-remaining".to_owned(), "0".to_owned()));
        headers.push(("x-ratelimit-reset".to_owned(), secs));
        return deny(
            pending,
            Denial {
                headers,
                ..Denial::new(Reason::RateLimited)
            },
        );
    }
    if let Err(denial) = take_locals(ctx, route, &local, &mut pending) {
        return deny(pending, denial);
    }
    // The signed request and the replay claim last (see `SignedMark` and
    // `ReplayMark`): the request passed every check, and the limits
    // counted it without refusing it.
    if let Some(m) = pending.facts.signed.take() {
        if let Err(r) = record_signed(ctx, &m, now) {
            give_back_locals(ctx, &mut pending.local_taken);
            return deny(pending, r.into());
        }
        pending.signed_recorded = Some(m);
    }
    let service_replay = match pending.replay.take() {
        Some(m) if m.scope == ReplayScope::Local => {
            match local_replay(ctx, m.provider, &m.digest, m.expires, now) {
                Ok(capacity) => pending.local_replay = Some((m.provider, m.digest, capacity)),
                Err(r) => {
                    forget_signed(ctx, pending.signed_recorded.take());
                    give_back_locals(ctx, &mut pending.local_taken);
                    return deny(pending, r.into());
                }
            }
            None
        }
        Some(m) => {
            pending.replay_fallback = Some(m);
            replay_descriptor.take()
        }
        None => None,
    };
    let Some(svc) = &config.rate_limit_service else {
        return done(pending);
    };
    // Leases: a descriptor whose rule leases and for which this worker
    // holds a hit takes it and is not sent; the others ask for a lease's
    // worth of hits, within what the service said remained less the asks
    // in flight (see `ServiceCache`). After the over-limit cache, so that a request
    // refused from it takes no leased hit. (One the service then refuses
    // for another descriptor has used its hit: that errs on the strict
    // side.)
    {
        let mut cache = ctx.service_cache.borrow_mut();
        let give_up_ms = ctx.now_ms.saturating_add(svc.timeout_ms);
        service.retain_mut(|s| match s.lease {
            Some(size)
                if !cache.ask_ahead(&s.key, size, ctx.now_ms, give_up_ms)
                    && cache.take_lease(&s.key, ctx.now_ms) =>
            {
                false
            }
            Some(size) => {
                s.hits = cache.lease_ask(&s.key, size, ctx.now_ms);
                if s.asks_lease() {
                    cache.begin_ask(s.key, ctx.now_ms, give_up_ms, s.hits);
                }
                true
            }
            None => true,
        });
    }
    if let Some(replay) = service_replay {
        pending.replay_index = Some(service.len());
        let key = ctx.service_cache.borrow().key(&svc.replay_scope, &replay);
        service.push(Sent {
            descriptor: replay,
            key,
            hits: 1,
            lease: None,
            rule: u16::MAX,
        });
    }
    if service.is_empty() {
        return done(pending);
    }
    let descriptors: Vec<&Descriptor> = service.iter().map(|s| &s.descriptor).collect();
    let hits: Vec<u32> = service.iter().map(|s| s.hits).collect();
    let message = ratelimit::encode_request(&svc.domain, &descriptors, 1, &hits);
    pending.service = service;
    pending.sent_ms = ctx.now_ms;
    Step::NeedRateLimit(
        pending,
        RlsCall {
            cluster: svc.cluster.clone(),
            message,
            timeout_ms: svc.timeout_ms,
        },
    )
}

/// The `replay.scope: service` descriptor of a token's replay claim.
fn service_replay_descriptor(config: &Config, m: &ReplayMark) -> Option<Descriptor> {
    replay_table(config, m.provider)
        .map(|(_, r)| vec![(r.claim.clone(), crate::hex_lower(&m.digest))])
}

/// Whether the service refused this token's replay descriptor
/// (`replay.scope: service`, see [`service_replay_descriptor`]) as used in
/// a window that has not reset at `now`: remembered in the worker's
/// over-limit cache ([`rls_verdict`]).
fn service_replay_refused(ctx: &Ctx<'_>, d: Option<&Descriptor>, now: u64) -> bool {
    let (Some(d), Some(svc)) = (d, &ctx.config.rate_limit_service) else {
        return false;
    };
    let cache = ctx.service_cache.borrow();
    cache.get(&cache.key(&svc.replay_scope, d), now).is_some()
}

/// Finishes with the service's answer: `Ok(response)`, or `Err(())` when the
/// call failed or timed out (the route's failure mode decides). A request
/// refused here gives back the `jti` its local replay entry took, and its
/// signed request's entry.
pub fn evaluate_rls(
    ctx: &Ctx<'_>,
    mut pending: Box<Pending>,
    answer: Result<&RateLimitResponse, ()>,
    now: u64,
) -> Step {
    let recorded = pending.local_replay.take();
    let signed = pending.signed_recorded.take();
    let mut taken = std::mem::take(&mut pending.local_taken);
    let step = rls_verdict(ctx, pending, answer, now);
    // What a refusal must not use up is given back: in monitor mode too,
    // where a refusal goes upstream marked, so that the local limits, the
    // `jti` and the signed request count as enforce mode would (where the
    // request never reached the upstream, and a copy would not be a
    // replay).
    let refused = match &step {
        Step::Done(Decision::Deny(_), _) => true,
        Step::Done(Decision::Allow(g), _) => g.would_deny.is_some(),
        _ => false,
    };
    if refused {
        if let Some((provider, digest, capacity)) = recorded {
            if let Some((name, _)) = replay_table(ctx.config, provider) {
                // A failure leaves the `jti` used up: strict, as before.
                let _ = store::replay_forget(ctx.store, &ctx.bucket_salt, name, capacity, &digest);
            }
        }
        forget_signed(ctx, signed);
        give_back_locals(ctx, &mut taken);
    }
    step
}

/// A request that waited for the rate-limit service and was abandoned
/// before the answer (its client left, or Envoy reset the stream): it never
/// reached the upstream, so the `jti` its local replay entry took is given
/// back, as for a refusal (its signed request's entry too). The local
/// limits' tokens it took are not: the service most likely counted its
/// hits, and a client resetting its requests while the call is out would
/// otherwise spend a key's or a number's shared limit past its own
/// per-client one.
/// Its lease asks were most likely counted by the service: they hold back
/// the next asks until an answer says what remains
/// ([`crate::limits::ServiceCache::abandon_ask`]).
pub fn abandon_rls(ctx: &Ctx<'_>, mut pending: Box<Pending>) {
    if let Some((provider, digest, capacity)) = pending.local_replay.take() {
        if let Some((name, _)) = replay_table(ctx.config, provider) {
            let _ = store::replay_forget(ctx.store, &ctx.bucket_salt, name, capacity, &digest);
        }
    }
    forget_signed(ctx, pending.signed_recorded.take());
    let mut cache = ctx.service_cache.borrow_mut();
    for s in pending.service.iter().filter(|s| s.asks_lease()) {
        cache.abandon_ask(&s.key, pending.sent_ms, s.hits);
    }
}

/// The decision from the rate-limit service's answer, before
/// [`evaluate_rls`] gives back what a refusal must not use up. A failed
/// call, an unreadable answer, or a replay descriptor the service does not
/// limit to 1 in windows a token's lifetime long, goes to the route's
/// `failure_mode`: such an answer protects nothing.
fn rls_verdict(
    ctx: &Ctx<'_>,
    pending: Box<Pending>,
    answer: Result<&RateLimitResponse, ()>,
    now: u64,
) -> Step {
    let config = ctx.config;
    let failure_mode = pending
        .facts
        .route
        .and_then(|r| config.routes.get(r))
        .map_or(FailureMode::Deny, |r| r.failure_mode);
    // Replay protection through the service holds only if the service
    // limits the replay descriptor to 1 in windows no shorter than a
    // token is accepted in (`max_lifetime_seconds` plus twice the skew and
    // a second, [`Provider::replay_horizon`]): an answer without a limit
    // for it (no rule in its YAML, a misspelt key or domain) protects
    // nothing, and `5 per minute` lets a five-minute token through up to
    // 30 times.
    // (Fixed windows still let a token through once on each side of a
    // boundary it lives across: see README, known limitations.)
    let replay_unprotected = match (answer, pending.replay_index) {
        (Ok(resp), Some(i)) => {
            let lifetime = pending
                .facts
                .token
                .as_ref()
                .and_then(|t| config.providers.get(t.provider))
                .map_or(0, crate::token::Provider::replay_horizon);
            resp.statuses
                .get(i)
                .and_then(|s| s.current_limit.as_ref())
                .is_none_or(|l| {
                    l.requests_per_unit != 1
                        || ratelimit::rls::Unit::try_from(l.unit)
                            .ok()
                            .and_then(ratelimit::rls::Unit::min_window_secs)
                            .is_none_or(|w| w < lifetime)
                })
        }
        _ => false,
    };
    let mut pending = pending;
    pending.facts.replay_unprotected = replay_unprotected;
    // Whatever the answer, this call's lease asks are no longer in flight.
    {
        let mut cache = ctx.service_cache.borrow_mut();
        for s in pending.service.iter().filter(|s| s.asks_lease()) {
            cache.end_ask(&s.key, pending.sent_ms, s.hits);
        }
    }
    let verdict = answer
        .and_then(|resp| ratelimit::interpret(resp, pending.service.len(), now).map_err(|_| ()))
        .and_then(|v| if replay_unprotected { Err(()) } else { Ok(v) });
    let verdict = match verdict {
        Ok(v) => v,
        Err(()) => {
            return match failure_mode {
                FailureMode::Allow => {
                    // Without the service the limits go, but a token is
                    // still used once: in this instance, as with
                    // `replay.scope: local`. (The service does not learn
                    // of these uses: once back, it takes a token used
                    // only during the outage once more.)
                    // A full table lets it through, as the route lets
                    // its limits go: only a use seen before is refused.
                    if let Some(m) = pending.replay_fallback.take() {
                        if let Err(r) =
                            local_replay_strict(ctx, m.provider, &m.digest, m.expires, now, false)
                        {
                            return deny(pending, r.into());
                        }
                    }
                    pending
                        .facts
                        .degraded
                        .get_or_insert(Reason::RatelimitUnavailable);
                    done(pending)
                }
                FailureMode::Deny => deny(pending, Reason::RatelimitUnavailable.into()),
            };
        }
    };
    // A service in global shadow mode (envoyproxy/ratelimit's
    // `SHADOW_MODE`, appguard-ratelimit's `--shadow-mode`) answers OK
    // overall but keeps each descriptor's `OVER_LIMIT`: the `jti`
    // descriptor over its limit of 1 is a replay, whatever the overall
    // code says.
    if !verdict.over_limit {
        if let (Ok(resp), Some(i)) = (answer, pending.replay_index) {
            if resp
                .statuses
                .get(i)
                .is_some_and(|s| s.code == ratelimit::rls::Code::OverLimit as i32)
            {
                return deny(pending, Reason::TokenReplayed.into());
            }
        }
    }
    // A rule the service has no limit for (no rule of its configuration
    // matches the descriptor: `OK`, no limit, nothing remaining) limits
    // nothing: said, not silent (the replay descriptor's own case is
    // handled above).
    if let Ok(resp) = answer {
        pending.facts.unlimited_rule = pending
            .service
            .iter()
            .zip(&resp.statuses)
            .find(|(sent, st)| {
                sent.rule != u16::MAX
                    && st.code == ratelimit::rls::Code::Ok as i32
                    && st.current_limit.is_none()
                    // `unlimited: true` (an allowlist) is answered the same,
                    // with all that remains: it is meant.
                    && st.limit_remaining != u32::MAX
            })
            .map(|(sent, _)| sent.rule);
    }
    // Leased descriptors the service allowed, in a call it allowed: their
    // hits are counted, so the rest are this worker's. In a call it
    // refused for another descriptor, none is kept: envoyproxy/ratelimit
    // (by default) counted them, but a service that counts nothing for a
    // refused call (appguard-ratelimit's `--stop-increment-when-over-limit`,
    // envoyproxy/ratelimit's `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`)
    // did not, and the answer does not say which: strict, never looser.
    // (An answer that cannot be read, or leaves the replay descriptor
    // unlimited, returned above and keeps none: strict again.)
    if let Ok(resp) = answer {
        let mut cache = ctx.service_cache.borrow_mut();
        for (s, status) in pending.service.iter().zip(&resp.statuses) {
            if s.lease.is_none() {
                continue;
            }
            let window = ratelimit::lease_window(status);
            let window_end = window.map(|(ms, _)| pending.sent_ms.saturating_add(ms));
            cache.answered(&s.key, pending.sent_ms, window_end);
            if !verdict.over_limit {
                if let (Some(until_ms), Some((_, remaining))) = (window_end, window) {
                    cache.grant_lease(s.key, s.hits, remaining, until_ms, ctx.now_ms);
                }
            }
            if let Some(ms) = ratelimit::unit_window_ms(status) {
                cache.note_window(&s.key, ms);
            }
        }
    }
    if verdict.over_limit {
        {
            let mut cache = ctx.service_cache.borrow_mut();
            // Counted from the second the call went out: the service's
            // reset is from its own reading of the clock, before the
            // answer came back (an answer that crossed a second would
            // otherwise hold a per-second limit's 429 through the next
            // window, in which the service counted nothing).
            // The replay descriptor too, when it is the one over: copies
            // of the token are then refused without a call
            // ([`service_replay_refused`]).
            let sent_at = pending.sent_ms / 1000;
            for o in &verdict.over_limit_descriptors {
                if let (Some(reset), Some(sent)) = (o.reset_secs, pending.service.get(o.index)) {
                    cache.insert(sent.key, sent_at.saturating_add(reset), o.limit, now);
                }
            }
        }
        let replayed = verdict
            .over_limit_descriptors
            .iter()
            .any(|o| Some(o.index) == pending.replay_index);
        if replayed {
            return deny(pending, Reason::TokenReplayed.into());
        }
        return deny(
            pending,
            Denial {
                headers: verdict.denial_headers(),
                ..Denial::new(Reason::RateLimited)
            },
        );
    }
    // Never one of the headers only appguard sets: the upstream trusts
    // those to come from a verified token or appguard's own checks.
    pending.grant.set_headers.extend(
        verdict
            .request_headers
            .iter()
            .filter(|(name, _)| !crate::request::reserved_header(name, &config.claim_headers))
            .cloned(),
    );
    pending
        .grant
        .response_headers
        .extend(verdict.response_headers.iter().cloned());
    done(pending)
}

/// [`verify_signature`], within the token provider's failure budget: a
/// client whose budget is spent gets `signature_invalid` without the
/// verification, and a signature that fails is charged to it. A request
/// signature costs a P-256 or Ed25519 verification, and one genuine token
/// (or a copied one: its `jti` is recorded only once the signature passed)
/// would otherwise buy one per request with made-up signatures.
fn verify_signature_within_budget(
    ctx: &Ctx<'_>,
    req: &Request<'_>,
    (pi, key): (usize, &InstallKey),
    body: Option<&[u8]>,
    now: u64,
    monitor: bool,
    facts: &mut Facts,
) -> Result<(), Reason> {
    let provider = ctx
        .config
        .providers
        .get(pi)
        .ok_or(Reason::SignatureInvalid)?;
    let mut budget = Budget::new(ctx, req, pi, provider, monitor);
    if budget.known_spent() || budget.shared_spent() {
        facts.budget_refused = true;
        return Err(Reason::SignatureInvalid);
    }
    // A copy of a signed request accepted before (`single_use`) is a
    // cheap refusal: looked up by its signature base before the signature
    // operation (SPEC §3), so that copies of a captured request cost a
    // hash each, not a verification the budget never counts (they verify).
    if signed_copy_seen(ctx, (pi, provider), req, body, now) {
        return Err(Reason::TokenReplayed);
    }
    let verified = verify_signature(ctx.config, pi, key, req, body, now).map_err(|e| {
        // Charged for the verification it cost, as a token's signature is:
        // malformed fields, a stale `created` or a missing component are
        // refused before any. A body that does not match its digest is
        // charged too, though checked first: no genuine client sends one,
        // and a flood of them would otherwise hash bodies forever.
        if matches!(e, SigningError::BadSignature | SigningError::DigestMismatch) {
            budget.charge(1);
        }
        facts.signing_error = Some(e);
        Reason::SignatureInvalid
    })?;
    if let Some(ms) = provider.message_signing.as_ref().filter(|ms| ms.single_use) {
        facts.signed = Some(signed_once(ctx, pi, provider, ms, &verified, now)?);
    }
    Ok(())
}

/// Capacity of a provider's table of signed requests seen
/// (`message_signing.single_use`). Fixed, unlike `replay.max_entries`, so
/// that a value never moves to another bucket when a configuration changes.
pub const SIGNED_REQUEST_ENTRIES: u32 = 1 << 20;

/// The name of provider `provider`'s table of signed requests. (`#` is not
/// in provider names: no table of a provider's `jti`s.)
fn signed_table(provider: &str) -> String {
    format!("{provider}#signed")
}

/// A verified request signature of a `single_use` provider, refused as
/// `token_replayed` when its table shows it was accepted before: a copy is
/// refused here, before any limit counts it. It is recorded later
/// ([`record_signed`]), once the request has passed its other checks and
/// local limits.
fn signed_once(
    ctx: &Ctx<'_>,
    pi: usize,
    provider: &token::Provider,
    ms: &token::MessageSigning,
    verified: &signing::VerifiedSignature,
    now: u64,
) -> Result<SignedMark, Reason> {
    let digest = signed_digest(ctx, &verified.base_digest);
    if signed_seen(ctx, provider, &verified.base_digest, now) {
        return Err(Reason::TokenReplayed);
    }
    // Verifiable until `created` is older than the maximum age plus skew.
    let until = verified
        .created
        .unwrap_or(now)
        .saturating_add(ms.policy.max_age_seconds)
        .saturating_add(ms.policy.clock_skew_seconds);
    Ok(SignedMark {
        provider: pi,
        digest,
        until,
    })
}

/// Whether the request is a copy of a signed request provider `pi`
/// accepted before (`single_use`), by its signature base: a hash and a
/// shared-data read, no signature operation. The base holds the
/// `content-digest` header, never the body, so this needs no body.
fn signed_copy_seen(
    ctx: &Ctx<'_>,
    (pi, provider): (usize, &token::Provider),
    req: &Request<'_>,
    body: Option<&[u8]>,
    now: u64,
) -> bool {
    let Some(ms) = provider.message_signing.as_ref().filter(|ms| ms.single_use) else {
        return false;
    };
    signing_message(ctx.config, pi, req, body)
        .and_then(|m| signing::base_digest_of(&ms.policy, &m))
        .is_some_and(|base| signed_seen(ctx, provider, &base, now))
}

/// The key of a signed request in its provider's table: its signature
/// base's SHA-256, keyed with the instance's salt.
fn signed_digest(ctx: &Ctx<'_>, base_digest: &[u8; 32]) -> [u8; 16] {
    store::Keyed128::new(&ctx.bucket_salt, "signed-request").digest(&[base_digest])
}

/// Whether a signed request with this signature base was accepted before
/// (its provider's table of signed requests, `single_use`).
fn signed_seen(
    ctx: &Ctx<'_>,
    provider: &token::Provider,
    base_digest: &[u8; 32],
    now: u64,
) -> bool {
    store::replay_seen(
        ctx.store,
        &ctx.bucket_salt,
        &signed_table(&provider.name),
        SIGNED_REQUEST_ENTRIES,
        &[],
        &signed_digest(ctx, base_digest),
        now,
    )
}

/// Records a verified request signature in its provider's table of signed
/// requests until it is too old to verify: `token_replayed` when it was
/// seen before (a copy verified at the same moment on another worker), and
/// when the table cannot show it was not (a full bucket, a store failure:
/// fail closed).
fn record_signed(ctx: &Ctx<'_>, m: &SignedMark, now: u64) -> Result<(), Reason> {
    let provider = ctx
        .config
        .providers
        .get(m.provider)
        .ok_or(Reason::TokenReplayed)?;
    match store::replay_check(
        ctx.store,
        &ctx.bucket_salt,
        &signed_table(&provider.name),
        SIGNED_REQUEST_ENTRIES,
        &[],
        &m.digest,
        m.until,
        now,
    ) {
        Ok(ReplayOutcome::Fresh) => Ok(()),
        Ok(ReplayOutcome::Replayed | ReplayOutcome::Full) | Err(_) => Err(Reason::TokenReplayed),
    }
}

/// Takes a recorded signed request back out of its table: the request was
/// refused after it was recorded (by the rate-limit service, or its own
/// `jti`), or abandoned, so it was never accepted.
fn forget_signed(ctx: &Ctx<'_>, m: Option<SignedMark>) {
    let Some(m) = m else { return };
    if let Some(provider) = ctx.config.providers.get(m.provider) {
        let _ = store::replay_forget(
            ctx.store,
            &ctx.bucket_salt,
            &signed_table(&provider.name),
            SIGNED_REQUEST_ENTRIES,
            &m.digest,
        );
    }
}

/// Verifies the request's RFC 9421 signature with the token's install key.
fn verify_signature(
    config: &Config,
    provider: usize,
    key: &InstallKey,
    req: &Request<'_>,
    body: Option<&[u8]>,
    now: u64,
) -> Result<signing::VerifiedSignature, SigningError> {
    let ms = config
        .providers
        .get(provider)
        .and_then(|p| Some((p, p.message_signing.as_ref()?)));
    let (p, ms) = ms.ok_or(SigningError::Missing)?;
    // The header the token came from (a provider may read several); for a
    // delegated token no longer in the request, the first source.
    let token_header = token::extract_with_source(p, req)
        .ok()
        .flatten()
        .map(|(h, _)| h)
        .or_else(|| p.sources.first().map(|s| s.header.as_str()))
        .unwrap_or("");
    let msg = signing_message(config, provider, req, body).ok_or(SigningError::Missing)?;
    signing::verify(&ms.policy, &msg, key, token_header, now)
}

/// The request as provider `provider`'s request signatures cover it
/// (`None` for a provider without `message_signing`).
fn signing_message<'m>(
    config: &Config,
    provider: usize,
    req: &'m Request<'_>,
    body: Option<&'m [u8]>,
) -> Option<Message<'m>> {
    config
        .providers
        .get(provider)
        .and_then(|p| p.message_signing.as_ref())?;
    Some(Message::request(
        req.method(),
        req.header(":scheme").unwrap_or("https"),
        req.header(":authority").unwrap_or(""),
        req.path(),
        req.query(),
        req.headers,
        body,
    ))
}

/// Steps 1 to 5 of SPEC §1 on the header phase: route, network, API key,
/// token (with request signing when it needs no body), then platform and
/// app identity; the first failure decides. Token headers are marked for
/// removal before any step can fail. `Ok(Some(..))`: a signature that must
/// wait for the body, verified first by [`evaluate_body`].
fn check(
    ctx: &Ctx<'_>,
    req: &Request<'_>,
    now: u64,
    route: Option<&Route>,
    facts: &mut Facts,
    grant: &mut Grant,
) -> Result<Option<(usize, InstallKey)>, Flow> {
    let config = ctx.config;
    // Token headers first, whatever the outcome: with `forward: false`
    // (the default) no token of any provider the route accepts goes
    // upstream — not the one verified, not a second one beside it, and
    // not one let through by monitor mode after an earlier check failed.
    // A `forward: true` provider's header goes only with the token
    // appguard verified: marked too, and given back below once its token
    // is the one verified (an upstream reading that provider's claims
    // must never be handed one nobody checked: beside another provider's
    // token, under `failure_mode: allow` without keys, in monitor mode).
    let mut forwarded = 0..0;
    if let Some(route) = route {
        let providers = || {
            route
                .providers
                .iter()
                .filter_map(|&pi| config.providers.get(pi))
        };
        for p in providers().filter(|p| !p.forward) {
            remove_token_headers(p, req, grant);
        }
        let start = grant.remove_headers.len();
        for p in providers().filter(|p| p.forward) {
            remove_token_headers(p, req, grant);
        }
        forwarded = start..grant.remove_headers.len();
        // The API key likewise with `api_keys.forward: false`, on routes
        // that read keys: its header, and its parameter cut out of `:path`.
        if !config.api_keys.forward && route.api_key != KeyRequirement::None {
            grant.key_scrub = key_scrub(config, req);
        }
    }
    // 1. route
    let action = route.map_or(config.default_action, |r| r.action);
    if action == Action::Deny {
        return Err(Reason::RouteDenied.into());
    }
    // 2. network (the client IP is worked out only when a rule needs it)
    let hops = config.xff_trusted_hops;
    check_network(&config.network, req, hops)?;
    let Some(route) = route else {
        return Ok(None);
    };
    if let Some(n) = &route.network {
        check_network(n, req, hops)?;
    }
    // A browser's CORS preflight, where the configuration lets it pass
    // (see `cors_preflight_method`; only to a route a web app may use):
    // it carries none of what the checks below ask for.
    if facts.cors_preflight {
        return Ok(None);
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
                    let (idx, key) = ctx
                        .key_memo
                        .borrow_mut()
                        .lookup(&config.api_keys, &k)
                        .ok_or(Reason::ApiKeyInvalid)?;
                    // Named from here on, also when refused below: its id is
                    // public, and the denial's log line shows which key it was.
                    facts.key = Some(idx);
                    if key.disabled {
                        return Err(Reason::ApiKeyInvalid.into());
                    }
                    if !key.ips.is_empty()
                        && !req.client_ip(hops).is_some_and(|ip| key.ips.contains(ip))
                    {
                        return Err(Reason::ApiKeyRestricted.into());
                    }
                    if !key.routes.is_empty() && !key.routes.iter().any(|r| r == &route.name) {
                        return Err(Reason::ApiKeyRestricted.into());
                    }
                    grant
                        .set_headers
                        .push(("x-appguard-key-id".into(), key.id.clone()));
                    Some(key)
                }
            }
        }
    };
    // 4. token
    let token = check_token(ctx, req, now, route, grant, facts)?;
    // A `jti` already used (`replay.scope: local`) is one of the token's
    // rules (SPEC §3, step 4), and a cheap refusal: it is looked up here,
    // before the request signature is verified and before the identity,
    // body and limit checks, so that a copy of a used token costs no
    // signature work and is refused as what it is. Only looked up: the
    // value is recorded once every check passed (`limits_phase`, which
    // looks again, for a copy decided meanwhile on another worker).
    // Enforce mode only: monitor mode forwards a copy as it forwarded the
    // first use (its `forward` header given back, its app's headers set,
    // marked `token_replayed` by `limits_phase`, which looks again there),
    // or a client's retry would reach the upstream without the token it
    // authenticates by: refused in effect.
    if let Some(m) = facts
        .replay
        .as_ref()
        .filter(|m| m.scope == ReplayScope::Local && route.mode == Mode::Enforce)
    {
        if local_replay_seen(ctx, m.provider, &m.digest, now) {
            return Err(Reason::TokenReplayed.into());
        }
    }
    // The verified token's own headers go on when its provider forwards
    // them (those another provider of the route removes stay removed).
    if let Some(used) = token
        .as_ref()
        .and_then(|t| config.providers.get(t.provider))
    {
        if used.forward {
            keep_token_headers(used, req, forwarded, grant);
        }
    }
    // Request signing with the token's install key is part of the token
    // (SPEC §3 under step 4), so it decides before the identity checks.
    // When the signature must cover the body's digest it can only be
    // verified with the body: then the header checks below go first, and
    // the body phase verifies it before anything else.
    let mut deferred = None;
    if let Some(t) = &token {
        let p = config
            .providers
            .get(t.provider)
            .ok_or(Reason::SignatureInvalid)?;
        if let Some(ms) = &p.message_signing {
            match t.claim_text(&ms.claim) {
                // Present but not text (a JWK object, null): not a key this
                // module can use, and a token that has the claim must come
                // with a valid signature, so it is not taken as unsigned.
                None if ms.required || t.claims.contains_key(&ms.claim) => {
                    return Err(Reason::SignatureInvalid.into())
                }
                None => {}
                Some(ipk) => {
                    let key = InstallKey::from_ipk(&ipk).map_err(|_| Reason::SignatureInvalid)?;
                    if req.has_body() && ms.policy.require_content_digest {
                        // A copy of an accepted signed request is known
                        // by its headers: refused now (enforce mode, as
                        // for a used `jti`), not once its body came.
                        if route.mode == Mode::Enforce
                            && signed_copy_seen(ctx, (t.provider, p), req, None, now)
                        {
                            return Err(Reason::TokenReplayed.into());
                        }
                        deferred = Some((t.provider, key));
                    } else {
                        let monitor = route.mode == Mode::Monitor;
                        verify_signature_within_budget(
                            ctx,
                            req,
                            (t.provider, &key),
                            None,
                            now,
                            monitor,
                            facts,
                        )?;
                    }
                }
            }
        }
    }
    // 5. platform and app identity
    // Only server-to-server apps are proven by the client IP.
    let ip = if config.has_server_apps {
        req.client_ip(hops)
    } else {
        None
    };
    // A route that asks nothing of the client (no platforms, and neither an
    // API key nor a token on this request) does not refuse on platform
    // headers: a browser's `Origin` or `Referer` from any site, or an app
    // that is not registered, leaves the app unestablished there, as on an
    // unmatched request. Headers that name a registered app still establish
    // it (`x-appguard-app`).
    let lenient = route.platforms.is_empty() && key.is_none() && token.is_none();
    let app = match establish_app(config, req, token.as_deref(), &route.platforms, ip) {
        Ok(app) => app,
        Err(Flow::Deny(_)) if lenient => None,
        Err(e) => return Err(e),
    };
    let app_idx = app.and_then(|a| config.apps.iter().position(|x| std::ptr::eq(x, a)));
    // Named from here on, also when refused below (a key restricted to
    // another app, a platform the route does not take): the denial's log
    // line shows which app the request established (SPEC §4).
    facts.app = app_idx;
    if let Some(key) = key {
        if !key.apps.is_empty() && !app_idx.is_some_and(|i| key.apps.contains(&i)) {
            return Err(Reason::ApiKeyRestricted.into());
        }
    }
    if !route.platforms.is_empty() && !app.is_some_and(|a| route.platforms.contains(&a.platform)) {
        return Err(Reason::PlatformDenied.into());
    }
    if let Some(app) = app {
        grant
            .set_headers
            .push(("x-appguard-app".into(), app.id.clone()));
        grant
            .set_headers
            .push(("x-appguard-platform".into(), app.platform.as_str().into()));
    }
    facts.token = token;
    Ok(deferred)
}

/// Step 5: the app the request shows, from the token's app claim (which the
/// platform headers must agree with) or from the platform headers alone.
fn establish_app<'c>(
    config: &'c Config,
    req: &Request<'_>,
    token: Option<&VerifiedToken>,
    route_platforms: &[identity::Platform],
    ip: Option<IpAddr>,
) -> Result<Option<&'c identity::App>, Flow> {
    let ph = platform_headers(config, req)?;
    let app = match token {
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
                    // The token names a platform the provider or the route
                    // does not take: that is the refusal, whatever headers
                    // a replaying script copied or left out.
                    let takes = |list: &[identity::Platform]| {
                        list.is_empty() || list.contains(&app.platform)
                    };
                    if !takes(&provider.platforms) || !takes(route_platforms) {
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
    Ok(app)
}

/// Step 2 for one [`Network`] (the configuration's, then the route's): any
/// IP list needs the client IP, and an unknown IP is refused, never taken
/// as allowed. A missing country refuses only with `country_required` or an
/// allow list.
fn check_network(n: &Network, req: &Request<'_>, hops: u32) -> Result<(), Flow> {
    if !n.ip_deny.is_empty() || !n.ip_allow.is_empty() {
        let ip = req.client_ip(hops).ok_or(Reason::IpDenied)?;
        if n.ip_deny.contains(ip) {
            return Err(Reason::IpDenied.into());
        }
        if !n.ip_allow.is_empty() && !n.ip_allow.contains(ip) {
            return Err(Reason::IpDenied.into());
        }
    }
    if let Some(h) = &n.country_header {
        match country_of(req, h)? {
            Some(c) => {
                let listed = |list: &[String]| list.iter().any(|l| l.eq_ignore_ascii_case(c));
                if listed(&n.country_deny)
                    || (!n.country_allow.is_empty() && !listed(&n.country_allow))
                {
                    return Err(Reason::CountryDenied.into());
                }
            }
            None => {
                if n.country_required || !n.country_allow.is_empty() {
                    return Err(Reason::CountryDenied.into());
                }
            }
        }
    }
    Ok(())
}

/// Two ASCII letters or digits: an ISO 3166 alpha-2 code, or a
/// geolocation service's own (`T1`, `A1`, `XX`).
pub(crate) fn is_country_code(c: &str) -> bool {
    c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The country the trusted header `header` names, `None` when it names none (the
/// header absent, or empty: Envoy's geoip filter leaves it unset when its
/// lookup fails). A value is one two-character code in any case,
/// surrounding whitespace ignored: ISO 3166 alpha-2, or the letter-digit
/// codes geolocation services write besides (Cloudflare's `T1` for Tor,
/// MaxMind's `A1` anonymous proxy), which the lists can name. Anything
/// else (`DE,FR`, `zz1`, `GBR`, the header sent twice with different
/// values) is refused rather than read as no country: a deny list would
/// let it through, and no trusted component writes it.
fn country_of<'r>(req: &Request<'r>, header: &str) -> Result<Option<&'r str>, Flow> {
    match req
        .header_unique(header)
        .map_err(|()| Reason::CountryDenied)?
        .map(str::trim)
    {
        None | Some("") => Ok(None),
        Some(c) if is_country_code(c) => Ok(Some(c)),
        Some(_) => Err(Reason::CountryDenied.into()),
    }
}

/// The presented API key. A key sent in the header and the query
/// parameter at once, or twice in the query, must be one key: with two,
/// appguard would check one while the upstream may read the other. Query
/// names and values are read as `application/x-www-form-urlencoded`, as
/// upstream frameworks read them (`?%6Bey=…` is the parameter `key`), and
/// read as loosely as any upstream does: names without case (ASP.NET's
/// `?KEY=`), and `;` between parameters as well as `&` (older Go and
/// Python parsers), and in array form (`?key[]=K`, `?key[0]=K`, which PHP,
/// Rails and Express's `qs` read as `key`), so that no upstream finds a key
/// appguard did not. A key
/// that is sent but over-long, or whose encoding is broken, is
/// `api_key_invalid`, not "no key": on an optional-key route it must not
/// pass unchecked.
fn api_key_of<'r>(
    config: &Config,
    req: &Request<'r>,
) -> Result<Option<std::borrow::Cow<'r, str>>, Flow> {
    let from_header = req
        .header_unique_any_spelling(&config.api_keys.header)
        .map_err(|()| Reason::ApiKeyInvalid)?
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let mut from_query: Option<String> = None;
    if let (Some(param), Some(query)) = (&config.api_keys.query_param, req.query()) {
        // `?api_key%00;x=K` has an empty key to one reading and `K` to
        // PHP's, so the two must agree.
        for pair in query_pairs(query) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !php_name_is_or_under(k, param) {
                continue;
            }
            let v = form_decode(v).ok_or(Reason::ApiKeyInvalid)?;
            if from_query.as_ref().is_some_and(|f| *f != v) {
                return Err(Reason::ApiKeyInvalid.into());
            }
            from_query = Some(v);
        }
    }
    let from_query = from_query.filter(|k| !k.is_empty());
    // A cookie named like the key parameter is one to upstreams that merge
    // cookies into their parameters (PHP's `$_REQUEST` without a php.ini,
    // as in the official images, takes it over the query): it may carry no
    // other key than the one checked, nor one where none is.
    if let Some(param) = &config.api_keys.query_param {
        let checked = from_header.or(from_query.as_deref());
        for cookie in cookie_values(req) {
            for pair in cookie.split(';') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if !php_name_is_or_under(k.trim_start_matches([' ', '\t']), param) {
                    continue;
                }
                let v = form_decode(v.trim_matches([' ', '\t'])).ok_or(Reason::ApiKeyInvalid)?;
                if !v.is_empty() && checked != Some(v.as_str()) {
                    return Err(Reason::ApiKeyInvalid.into());
                }
            }
        }
    }
    let key = match (from_header, from_query) {
        (Some(h), Some(q)) if h != q => return Err(Reason::ApiKeyInvalid.into()),
        (Some(h), _) => std::borrow::Cow::Borrowed(h),
        (None, Some(q)) => std::borrow::Cow::Owned(q),
        (None, None) => return Ok(None),
    };
    if key.len() > identity::MAX_API_KEY_BYTES {
        return Err(Reason::ApiKeyInvalid.into());
    }
    Ok(Some(key))
}

/// What `api_keys.forward: false` takes off the request: the key header
/// (if sent), the key parameter cut out of `:path` (if any), and cookies
/// named like the key parameter (a copy of the key, see [`api_key_of`]).
fn key_scrub(config: &Config, req: &Request<'_>) -> KeyScrub {
    let keys = &config.api_keys;
    KeyScrub {
        headers: req.header_spellings(&keys.header),
        path: keys
            .query_param
            .as_deref()
            .and_then(|param| path_without_param(req.header(":path").unwrap_or(""), param)),
        cookie: keys
            .query_param
            .as_deref()
            .and_then(|param| cookie_without_param(req, param)),
    }
}

/// The request's cookies, every `cookie` header's, without those named
/// like the key parameter `param` (names read as [`api_key_of`] reads
/// them), joined by `; `; or `None` when none is so named. The others keep
/// their order and their bytes.
fn cookie_without_param(req: &Request<'_>, param: &str) -> Option<String> {
    if !has_param_cookie(req, param) {
        return None;
    }
    let mut out = String::new();
    for pair in cookie_values(req).flat_map(|c| c.split(';')) {
        let pair = pair.trim_matches([' ', '\t']);
        if pair.is_empty() || is_param_cookie(pair, param) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(pair);
    }
    Some(out)
}

/// Every `cookie` header's value, without the mark of one that was not
/// UTF-8 (`headers::unmarked`): with it in front, the first cookie's name
/// named nothing (`\0key=…`), and a key cookie beside any such byte went
/// unseen.
fn cookie_values<'s, 'r>(req: &'s Request<'r>) -> impl Iterator<Item = &'r str> + 's {
    req.header_all("cookie").map(crate::headers::unmarked)
}

/// Whether the cookie `pair` (`name=value`) is named like the key
/// parameter `param`, read as [`api_key_of`] reads cookie names.
fn is_param_cookie(pair: &str, param: &str) -> bool {
    php_name_is_or_under(param_name(pair).trim_start_matches([' ', '\t']), param)
}

/// Whether any of the request's cookies is named like the key parameter
/// `param` ([`is_param_cookie`]).
fn has_param_cookie(req: &Request<'_>, param: &str) -> bool {
    cookie_values(req).any(|c| c.split(';').any(|pair| is_param_cookie(pair, param)))
}

/// `path` without the query parameters named `param` (names read as
/// [`api_key_of`] reads them, between `&` or `;`), or `None` when it has
/// none. The other parameters keep their order, their separators and their
/// encoding as sent; a query left empty goes with its `?`.
fn path_without_param(path: &str, param: &str) -> Option<String> {
    // A `:path` that was not UTF-8 (`headers::is_marked`) is never
    // rewritten: its bytes cannot be given back as they came, and the
    // mark must not go into `:path`. Such a request is refused as unclear
    // (see `match_route_for`).
    if crate::headers::is_marked(path) {
        return None;
    }
    let (base, query, fragment) = crate::request::split_target(path);
    let query = query?;
    let is_param = |pair: &str| php_name_is_or_under(param_name(pair), param);
    // Each parameter with the separator before it (none for the first).
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut sep = None;
    for (i, c) in query.char_indices().filter(|&(_, c)| c == '&' || c == ';') {
        pieces.push((sep, query.get(start..i).unwrap_or("")));
        sep = Some(c);
        start = i + 1;
    }
    pieces.push((sep, query.get(start..).unwrap_or("")));
    if !pieces.iter().any(|&(_, p)| is_param(p)) {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    out.push_str(base);
    let mut first = true;
    // The separator before a kept parameter: its own, or, after cut ones,
    // `&` if any of theirs was (an upstream that splits on `&` only then
    // still finds the parameters it found before, the key aside).
    let mut carried: Option<char> = None;
    for (sep, piece) in pieces {
        // `&` wins over `;`: of two separators, the one every parser
        // splits on.
        let stronger = |a: Option<char>, b: Option<char>| {
            if a == Some('&') || b == Some('&') {
                Some('&')
            } else {
                a.or(b)
            }
        };
        if is_param(piece) {
            carried = stronger(carried, sep);
            continue;
        }
        let sep = stronger(carried.take(), sep).unwrap_or('&');
        out.push(if first { '?' } else { sep });
        first = false;
        out.push_str(piece);
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
}

/// Decodes a form-urlencoded query name or value (`+` is a space, `%XX` a
/// byte); `None` when a `%` is not followed by two hex digits, the input is
/// over-long, or the bytes are not UTF-8.
fn form_decode(raw: &str) -> Option<String> {
    if raw.len() > 1024 {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|&h| char::from(h).to_digit(16));
                let (hi, lo) = (hex(i + 1)?, hex(i + 2)?);
                out.push(u8::try_from(hi << 4 | lo).ok()?);
                i += 2;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The platform headers. One sent twice with different values claims two
/// identities at once (and the upstream might read the other copy):
/// `app_mismatch`.
fn platform_headers<'r>(config: &Config, req: &Request<'r>) -> Result<PlatformHeaders<'r>, Reason> {
    let names = &config.platform_headers;
    // In every spelling an upstream reads as the header (`x_android_package`
    // is `HTTP_X_ANDROID_PACKAGE` to PHP), as the credential headers are:
    // a copy that says another app, or another platform's header in
    // another spelling, must not pass unseen to an upstream that reads it.
    let one = |name: &str| {
        req.header_unique_any_spelling(name)
            .map_err(|()| Reason::AppMismatch)
    };
    Ok(PlatformHeaders {
        android_package: one(&names.android_package)?,
        android_cert: one(&names.android_cert)?,
        ios_bundle_id: one(&names.ios_bundle_id)?,
        ios_team_id: one(&names.ios_team_id)?,
        // No `-` to spell otherwise: the exact name is every spelling.
        origin: req
            .header_unique("origin")
            .map_err(|()| Reason::AppMismatch)?,
        referer: req
            .header_unique("referer")
            .map_err(|()| Reason::AppMismatch)?,
    })
}

/// Marks every spelling of `p`'s token headers in the request for removal.
fn remove_token_headers(p: &Provider, req: &Request<'_>, grant: &mut Grant) {
    // Every spelling, as the token is read in every spelling.
    for src in &p.sources {
        for name in req.header_spellings(&src.header) {
            if !grant.remove_headers.contains(&name) {
                grant.remove_headers.push(name);
            }
        }
    }
}

/// Unmarks, among the names `marked` spans in `grant.remove_headers` (a
/// forwarding provider's, see `check`), those `p`'s sources read and that
/// hold a token for them: the verified one, since the sources that hold
/// one must agree ([`token::extract_with_source`]). A source header that
/// holds none for its source (`Authorization: JWT …` where the source
/// takes `Bearer `) stays removed: to an upstream that splits the value at
/// its space, it is a token nobody checked.
fn keep_token_headers(
    p: &Provider,
    req: &Request<'_>,
    marked: std::ops::Range<usize>,
    grant: &mut Grant,
) {
    let mut at = 0;
    let mut kept = Vec::new();
    grant.remove_headers.retain(|name| {
        let i = at;
        at += 1;
        let keep = marked.contains(&i)
            && p.sources.iter().any(|s| {
                same_header_name(s.header.as_bytes(), name.as_bytes())
                    && req.header(name).is_some()
                    && req
                        .header_all(name)
                        .all(|v| token::source_token(s, v).is_some())
            });
        if keep {
            kept.push(name.clone());
        }
        !keep
    });
    grant.forwarded_headers = kept;
}

/// The query parameter Envoy's `jwt_authn` (and Istio's
/// `RequestAuthentication`) reads a token from when its provider names no
/// token location: on a route that takes a delegated provider it is
/// refused (by `check_token`).
pub const JWT_AUTHN_QUERY_PARAM: &str = "access_token";

/// Step 4: the route's token, delegated (the payload jwt_authn verified)
/// or verified here (cache, negative cache and failure budget first, then
/// keys and signature). `Ok(None)`: no token where none is required, or one
/// that could not be checked under `jwks_failure_mode: allow`.
fn check_token(
    ctx: &Ctx<'_>,
    req: &Request<'_>,
    now: u64,
    route: &Route,
    grant: &mut Grant,
    facts: &mut Facts,
) -> Result<Option<Rc<VerifiedToken>>, Flow> {
    if route.providers.is_empty() {
        return Ok(None);
    }
    let config = ctx.config;
    // A token in an `access_token` query parameter, on a route that takes
    // a delegated provider's, is one appguard cannot tie to the payload it
    // reads: `jwt_authn` with its default token locations verifies it
    // beside the header's (whose payload it keeps), only its first copy,
    // and none at all where the provider names its header or the header's
    // token it verified was removed (`forward: false`). Tokens come in
    // headers: such a parameter is refused, in any spelling an upstream
    // reads as it (a used or forged token otherwise reached an upstream
    // that reads it, past replay, binding and signing).
    let delegated_route = route.providers.iter().any(|&pi| {
        config
            .providers
            .get(pi)
            .is_some_and(|p| p.verified_by.is_some())
    });
    if delegated_route
        && query_pairs(req.query().unwrap_or(""))
            .any(|pair| php_name_is(param_name(pair), JWT_AUTHN_QUERY_PARAM))
    {
        return Err(Reason::TokenMalformed.into());
    }
    // Delegated providers: the payload jwt_authn verified, from metadata.
    // Several may read one key (Istio writes every rule's payload under
    // `payload`): the first that fits it best decides ([`token::fit`]:
    // issuer and audience, then issuer), else the first. The payload is
    // verified, so choosing by its claims is safe.
    let mut delegated: Option<(u8, usize, &token::Provider, _)> = None;
    for &pi in &route.providers {
        let Some(p) = config.providers.get(pi) else {
            continue;
        };
        if p.verified_by.is_none() {
            continue;
        }
        let Some(claims) = req.delegated.payload(pi) else {
            continue;
        };
        let fit = token::fit(p, &claims);
        if delegated.as_ref().is_none_or(|(best, ..)| fit > *best) {
            delegated = Some((fit, pi, p, claims));
        }
        if fit == 3 {
            break;
        }
    }
    if let Some((_, pi, p, claims)) = delegated {
        // jwt_authn verified the header under its one name; a copy under
        // another spelling (`x_token`, which PHP reads as `x-token`) must
        // be the same token, as for a provider appguard verifies itself.
        token::extract(p, req).map_err(|e| Flow::from(e.reason()))?;
        let exp = token::check_claims(p, &claims, now).map_err(|e| Flow::from(e.reason()))?;
        let verified = Rc::new(VerifiedToken {
            provider: pi,
            exp,
            claims,
        });
        token_rules(req, p, &verified, grant, &mut facts.replay)?;
        return Ok(Some(verified));
    }
    // The first provider (in the route's order) whose sources hold a token.
    let mut found = None;
    let mut another = false;
    for &pi in &route.providers {
        let Some(p) = config.providers.get(pi) else {
            continue;
        };
        if p.verified_by.is_some() {
            // Only metadata counts for a delegated provider, never the header.
            continue;
        }
        if let Some((_, _, first)) = found {
            // Only whether another provider reads the same token (its
            // errors are not this request's: the first provider's token is
            // used). A token in another header is another provider's
            // matter only when the first finds none.
            if matches!(token::extract(p, req), Ok(Some(t)) if t == first) {
                another = true;
                break;
            }
            continue;
        }
        let t = token::extract(p, req).map_err(|e| Flow::from(e.reason()))?;
        if let Some(t) = t {
            found = Some((pi, p, t));
        }
    }
    if let (true, Some(first)) = (another, found) {
        found = Some(choose_provider(ctx, route, req, first, now));
    }
    let Some((pi, provider, raw)) = found else {
        // A delegated provider's token in the request, but no payload:
        // jwt_authn did not verify it (it failed under an
        // `allow_missing_or_failed` requirement, or jwt_authn does not
        // cover this path). A bad token is refused, as a native provider's
        // is, even where a request without one may go on.
        let unverified = route
            .providers
            .iter()
            .filter_map(|&pi| config.providers.get(pi))
            .filter(|p| p.verified_by.is_some())
            .any(|p| !matches!(token::extract(p, req), Ok(None)));
        return if unverified {
            Err(Reason::TokenSignature.into())
        } else if route.token_required {
            Err(Reason::TokenMissing.into())
        } else {
            Ok(None)
        };
    };
    let keys_version = ctx.remote_keys.get(pi).map_or(0, |r| r.version);
    let cached =
        ctx.token_cache
            .borrow()
            .get(pi, keys_version, raw, now, provider.clock_skew_seconds);
    let verified = match cached {
        Some(v) => v,
        None => {
            // Before any work on a token that is not verified already: a
            // token that failed before, or a client whose failure budget is
            // spent, is refused at once, without even parsing it. A flood
            // of forged tokens then costs a hash lookup per request, and a
            // spent client cannot make the filter fetch a JWKS either.
            // Tokens verified earlier (the cache above) still pass.
            let mut budget = Budget::new(ctx, req, pi, provider, route.mode == Mode::Monitor);
            // A client this worker already found spent: a map lookup, and
            // first, since it spares hashing the (attacker-sized) token for
            // the negative cache below on every request of a flood.
            if budget.known_spent() {
                facts.budget_refused = true;
                return Err(Reason::TokenSignature.into());
            }
            if ctx.negative.borrow().contains(
                pi,
                keys_version,
                || negative_key(&ctx.bucket_salt, raw),
                now,
            ) {
                return Err(Reason::TokenSignature.into());
            }
            if budget.shared_spent() {
                facts.budget_refused = true;
                return Err(Reason::TokenSignature.into());
            }
            // No keys yet: fetch them (or answer by the failure mode). Only
            // after the negative cache and the budget, so that a spent
            // client or a known forgery never starts a fetch.
            let remote = ctx.remote_keys.get(pi).and_then(|r| r.keys.clone());
            let has_remote = provider.remote_jwks.is_some();
            // A remote JWKS whose keys are not loaded (not fetched yet, or
            // dropped after the grace).
            let pending = has_remote && remote.is_none();
            // The cheap refusals: size, structure, algorithm and key, then
            // the unverified claims. Only then the signature. With no key
            // at all yet, every token waits for the remote set, as one
            // whose `kid` no loaded key names.
            let extra: &[Key] = remote.as_deref().map_or(&[], |v| v.as_slice());
            let pre = if pending && provider.keys.is_empty() {
                Err(TokenError::UnknownKid)
            } else {
                token::precheck(provider, &provider.keys, extra, pending, raw, now)
            };
            let pre = match pre {
                // A token naming no `kid` may be signed by a key of the set
                // still to come: it waits for it first, as one naming an
                // unknown `kid` does (and is then tried against them all).
                Ok(pre) if pending && pre.kidless && ctx.key_fetch == KeyFetch::May => {
                    Err(TokenError::UnknownKid)
                }
                other => other,
            };
            let pre = match pre {
                Ok(pre) => pre,
                Err(TokenError::UnknownKid) => {
                    // What needs no key is checked first: junk, an expired
                    // token or another issuer's is refused as it would be
                    // with keys. It neither asks for keys nor passes a route
                    // that fails open because they are missing.
                    let kid = token::precheck_without_keys(provider, raw, now)
                        .map_err(|e| Flow::from(e.reason()))?;
                    if has_remote && ctx.key_fetch == KeyFetch::May {
                        return Err(Flow::NeedKeys(pi, kid));
                    }
                    if pending {
                        // Its key may be in the remote set, which could not
                        // be had: the route's own failure mode decides. Fail
                        // open: the token cannot be checked, so it is
                        // treated as absent (identity then comes from the
                        // headers alone). Counted and logged.
                        if route.jwks_failure_mode == FailureMode::Allow {
                            facts.degraded = Some(Reason::JwksUnavailable);
                            return Ok(None);
                        }
                        return Err(Reason::JwksUnavailable.into());
                    }
                    // A `kid` no key of a remote JWKS has, in keys loaded
                    // since the request asked: made up, as a forged
                    // signature is. It spends the client's budget like one,
                    // so that a flood of random `kid`s cannot keep asking
                    // for keys once the budget is spent. Refused while no
                    // re-fetch could be made, it is not charged: the issuer
                    // may have just published that key, and the clients of
                    // a rotation must not lock themselves out (such a
                    // refusal costs no signature work).
                    if has_remote && ctx.key_fetch == KeyFetch::Fetched {
                        budget.charge(1);
                    }
                    return Err(Flow::from(TokenError::UnknownKid.reason()));
                }
                Err(e) => return Err(Flow::from(e.reason())),
            };
            // The remote set could not be had, and a token without `kid`
            // may be signed by a key of it: one that the configured keys
            // do not verify is not known to be forged (not remembered as
            // such, and charged to a budget of its own), and the route's
            // failure mode decides, as for an unknown `kid`.
            let keys_missing = pending && pre.kidless;
            let missing_keys = |facts: &mut Facts| {
                if route.jwks_failure_mode == FailureMode::Allow {
                    facts.degraded = Some(Reason::JwksUnavailable);
                    return Ok(None);
                }
                Err(Reason::JwksUnavailable.into())
            };
            if keys_missing {
                budget.while_keys_missing();
                if budget.known_spent() || budget.shared_spent() {
                    return missing_keys(facts);
                }
            }
            if let Err(e) = pre.check_signature(raw) {
                // One failure per key the token was tried against: a forged
                // token without `kid`, tried against every key of its
                // algorithm, spends the budget as fast as that many forged
                // tokens would (the budget bounds the verifications, not
                // the tokens).
                budget.charge(u32::try_from(1 + pre.others.len()).unwrap_or(u32::MAX));
                if keys_missing {
                    return missing_keys(facts);
                }
                let until = pre
                    .exp
                    .min(now.saturating_add(600))
                    .max(now.saturating_add(1));
                ctx.negative.borrow_mut().insert(
                    pi,
                    keys_version,
                    negative_key(&ctx.bucket_salt, raw),
                    until,
                    now,
                );
                return Err(e.reason().into());
            }
            let v = Rc::new(VerifiedToken {
                provider: pi,
                exp: pre.exp,
                claims: pre.claims,
            });
            ctx.token_cache
                .borrow_mut()
                .put(raw, keys_version, v.clone());
            v
        }
    };
    token_rules(req, provider, &verified, grant, &mut facts.replay)?;
    Ok(Some(verified))
}

/// Several of the route's providers read the same token (two issuers both
/// sending `Authorization: Bearer`, or an issuer migration): the first
/// that fits the token's claims best ([`token::fit`]: its issuer and
/// audience, then its issuer, then a provider naming no issuer; one naming
/// another would refuse the token for it), else `first`. The claims are
/// those a provider of the route verified before, where one did (nothing
/// decoded on the cached path), else the unverified ones: the choice is
/// the same either way. Among providers of the best fit, the first that
/// could take the token ([`could_take`]; the token's header is decoded for
/// its `kid` only then). The claims only choose: the chosen provider's
/// checks all apply.
fn choose_provider<'c, 'r>(
    ctx: &Ctx<'c>,
    route: &Route,
    req: &'r Request<'r>,
    first: (usize, &'c token::Provider, &'r str),
    now: u64,
) -> (usize, &'c token::Provider, &'r str) {
    let raw = first.2;
    let mut same: Vec<(usize, &'c token::Provider)> = Vec::new();
    let mut max_bytes = 0;
    // A provider that verified the token before lends its claims (the
    // token's own, so nothing is decoded on the cached path); the choice
    // is still made by fit, so that it is the same whatever this worker
    // cached: a token once verified by a laxer provider of the route (one
    // naming no issuer, sent to a route of its own) must not take that
    // provider's rules on a route where another fits it better.
    let mut known: Option<Rc<VerifiedToken>> = None;
    {
        let cache = ctx.token_cache.borrow();
        for &pi in &route.providers {
            let Some(p) = ctx.config.providers.get(pi) else {
                continue;
            };
            if p.verified_by.is_some() || !matches!(token::extract(p, req), Ok(Some(t)) if t == raw)
            {
                continue;
            }
            if known.is_none() {
                let version = ctx.remote_keys.get(pi).map_or(0, |r| r.version);
                known = cache.get(pi, version, raw, now, p.clock_skew_seconds);
            }
            max_bytes = max_bytes.max(p.max_token_bytes);
            same.push((pi, p));
        }
    }
    let decoded;
    let claims = match &known {
        Some(v) => &v.claims,
        None => {
            decoded = token::unverified_claims(max_bytes, raw).unwrap_or_default();
            &decoded
        }
    };
    // The best fit first; among providers of that fit (one issuer split
    // in two for different platforms, say), the first that could take the
    // token: the others would refuse it for what needs no signature to
    // tell. Without a tie nothing more is read (the token's header is
    // decoded for its `kid` only to break one).
    let fit = |p: &token::Provider| token::fit(p, claims);
    let top = same.iter().map(|&(_, p)| fit(p)).max().unwrap_or(0);
    if top == 0 {
        return first;
    }
    let mut tied = same.iter().copied().filter(|&(_, p)| fit(p) == top);
    let Some((pi, p)) = tied.next() else {
        return first;
    };
    if same.iter().filter(|&&(_, p)| fit(p) == top).count() == 1 {
        return (pi, p, raw);
    }
    let kid = token::unverified_kid(max_bytes, raw);
    std::iter::once((pi, p))
        .chain(tied)
        .find(|&(_, p)| could_take(ctx, p, claims, kid.as_deref()))
        .map_or((pi, p, raw), |(pi, p)| (pi, p, raw))
}

/// Whether provider `p` could take a token with these claims and header
/// `kid`, as far as needs no signature: a configured key under the `kid`
/// (where its keys name any; a remote JWKS may publish one at any time,
/// so a provider that has one is not judged by its `kid`s), its
/// `audiences`, its `required_claims`, and an app claim naming an app of
/// its `platforms`.
/// Only to choose among the route's providers of one [`token::fit`] (see
/// [`choose_provider`]): the chosen one checks everything.
fn could_take(
    ctx: &Ctx<'_>,
    p: &token::Provider,
    claims: &serde_json::Map<String, serde_json::Value>,
    kid: Option<&str>,
) -> bool {
    if let Some(kid) = kid {
        if p.remote_jwks.is_none()
            && p.keys.iter().any(|k| k.kid.is_some())
            && !p.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
        {
            return false;
        }
    }
    // Its audiences (`token::fit` weighs them only beside an issuer).
    if !token::accepts_audience(p, claims)
        || p.required_claims
            .iter()
            .any(|(name, want)| claims.get(name) != Some(want))
    {
        return false;
    }
    if let Some(ac) = p.app_claim.as_ref().filter(|_| !p.platforms.is_empty()) {
        let Some(named) = token::claim_text(claims, &ac.claim) else {
            return false;
        };
        let firebase = ac.format == AppClaimFormat::Firebase;
        return identity::app_from_claim(&ctx.config.apps, &named, firebase)
            .is_ok_and(|app| p.platforms.contains(&app.platform));
    }
    true
}

/// The rules that run on every request with a verified token, cached or
/// not: binding, replay and claim headers.
fn token_rules(
    req: &Request<'_>,
    provider: &token::Provider,
    verified: &VerifiedToken,
    grant: &mut Grant,
    replay_out: &mut Option<ReplayMark>,
) -> Result<(), Flow> {
    if let Some(b) = &provider.binding {
        token::check_binding(b, &verified.claims, req)?;
    }
    if let Some(r) = &provider.replay {
        // An empty value is none: it would be one `jti` for every token
        // that has it, the first of them taken and all the others refused.
        let value = verified
            .claim_text(&r.claim)
            .filter(|v| !v.is_empty())
            .ok_or(Reason::TokenClaims)?;
        let mut h = Sha256::new();
        h.update(provider.name.as_bytes());
        h.update(b":");
        h.update(value.as_bytes());
        let d = h.finalize();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
        // Recorded once the other checks passed (`limits_phase`).
        *replay_out = Some(ReplayMark {
            scope: r.scope,
            provider: verified.provider,
            digest,
            expires: verified.exp.saturating_add(provider.clock_skew_seconds),
        });
    }
    for (claim, header) in &provider.claim_to_headers {
        if let Some(v) = verified.claim_text(claim) {
            // Control characters in any range (C0, DEL and the C1
            // controls U+0080..U+009F, such as NEL), as the README says.
            if v.len() <= 1024 && !v.chars().any(char::is_control) {
                grant.set_headers.push((header.clone(), v));
            }
        }
    }
    Ok(())
}

/// The local replay table of provider `provider`: its name and settings.
fn replay_table(config: &Config, provider: usize) -> Option<(&str, &Replay)> {
    config
        .providers
        .get(provider)
        .and_then(|p| Some((p.name.as_str(), p.replay.as_ref()?)))
}

/// Runs `f` on `provider`'s local replay table: its name, the capacity
/// entries are recorded under now, and its past layouts; `None` when the
/// provider has no replay table.
fn with_replay_layout<R>(
    ctx: &Ctx<'_>,
    provider: usize,
    f: impl FnOnce(&str, u32, &[store::PastLayout]) -> R,
) -> Option<R> {
    let (name, replay) = replay_table(ctx.config, provider)?;
    Some(
        replay
            .past_layouts
            .with(|l| f(name, l.record_under.unwrap_or(replay.max_entries), &l.past)),
    )
}

/// Whether a token's replay claim is already in the instance's replay
/// table (`replay.scope: local`), without recording it.
fn local_replay_seen(ctx: &Ctx<'_>, provider: usize, digest: &[u8; 16], now: u64) -> bool {
    with_replay_layout(ctx, provider, |name, capacity, past| {
        store::replay_seen(
            ctx.store,
            &ctx.bucket_salt,
            name,
            capacity,
            past,
            digest,
            now,
        )
    })
    .unwrap_or(false)
}

/// Records a token's replay claim in the instance's replay table
/// (`replay.scope: local`): `Err(token_replayed)` when it was seen before,
/// else the capacity it was recorded under (to take it back out).
fn local_replay(
    ctx: &Ctx<'_>,
    provider: usize,
    digest: &[u8; 16],
    expires: u64,
    now: u64,
) -> Result<u32, Reason> {
    local_replay_strict(ctx, provider, digest, expires, now, true)
}

/// [`local_replay`], failing closed on a full bucket or a store failure
/// when `strict`; otherwise only a value seen before (or an expired token)
/// is refused. Not strict where the table stands in for the rate-limit
/// service under `failure_mode: allow` (see `rls_verdict`): a route that
/// lets requests through without their limits during an outage should
/// not refuse genuine tokens because a table it was never sized for is
/// full.
fn local_replay_strict(
    ctx: &Ctx<'_>,
    provider: usize,
    digest: &[u8; 16],
    expires: u64,
    now: u64,
    strict: bool,
) -> Result<u32, Reason> {
    // The table keeps an entry until `expires` and drops it after: a token
    // checked in time in the headers phase whose body came after that
    // would find its earlier uses gone and be recorded already expired,
    // fresh at every use.
    if now > expires {
        return Err(Reason::TokenExpired);
    }
    let (capacity, checked) = with_replay_layout(ctx, provider, |name, capacity, past| {
        let checked = store::replay_check(
            ctx.store,
            &ctx.bucket_salt,
            name,
            capacity,
            past,
            digest,
            expires,
            now,
        );
        (capacity, checked)
    })
    .ok_or(Reason::TokenReplayed)?;
    match checked {
        Ok(ReplayOutcome::Fresh) => Ok(capacity),
        Ok(ReplayOutcome::Replayed) => Err(Reason::TokenReplayed),
        // A full table or a store failure cannot prove freshness: fail
        // closed, where the table is the protection.
        Ok(ReplayOutcome::Full) | Err(_) if strict => Err(Reason::TokenReplayed),
        Ok(ReplayOutcome::Full) | Err(_) => Ok(capacity),
    }
}

/// Applies the mode: in monitor mode a denial becomes an allow that carries
/// the would-be reason (and whatever the checks before it granted).
pub fn finish(mode: Mode, grant: Grant, denial: Denial) -> Decision {
    match mode {
        // The request goes no further, but Envoy still logs it (its path,
        // and whatever headers an access log, ALS or tap records): an API
        // key cut out of it stays out of the log too, and so do the token
        // headers an allowed request would lose (`forward: false`). A
        // token refused for another check (a wrong key, `app_mismatch`)
        // was not used up, and would be good for a replay by whoever reads
        // the log.
        Mode::Enforce => Decision::Deny(Denial {
            key_scrub: grant.scrub_refused(),
            ..denial
        }),
        Mode::Monitor => Decision::Allow(Grant {
            would_deny: Some(denial.reason),
            ..grant
        }),
    }
}

#[cfg(test)]
mod tests;
