//! Rate limits (SPEC §1 steps 6–7): descriptors built per route from the
//! request, the body and what earlier checks established; local limits
//! enforced inside the Envoy instance; the over-limit cache in front of the
//! shared rate-limit service.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::ConfigError;
use crate::store::{self, u64_at, BucketSalt, Keyed128, SharedStore};

/// A window unit, as envoyproxy/ratelimit names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day.
    Day,
}

impl Per {
    /// The unit in seconds.
    pub const fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
            Per::Day => 86_400,
        }
    }
}

/// `routes[].rate_limits[].entries[]` as written: where one descriptor
/// entry's value comes from. One flat object rather than a serde enum
/// tagged by `type`, so that an error names the field it is about
/// (`entries[0].v4_prefix`); which fields each `type` takes is checked
/// when the configuration is compiled.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEntry {
    /// `type`: where the value comes from (`client_ip`, `api_key`, `app`,
    /// `platform`, `route`, `value`, `header`, `claim`, `body`); with the
    /// fields below it becomes [`EntrySpec::source`].
    #[serde(rename = "type")]
    kind: EntryKind,
    /// The descriptor key (1-64 characters), as the rate-limit service's
    /// configuration names it; left out, the type's default (required for
    /// `value`). See [`EntrySpec::key`].
    #[serde(default, deserialize_with = "crate::config::present")]
    key: Option<String>,
    /// `client_ip` only: IPv4 prefix the address is masked to (1..=32,
    /// default 32).
    #[serde(default, deserialize_with = "crate::config::present")]
    v4_prefix: Option<u8>,
    /// `client_ip` only: IPv6 prefix the address is masked to (1..=128,
    /// default 64).
    #[serde(default, deserialize_with = "crate::config::present")]
    v6_prefix: Option<u8>,
    /// `value` only (required): the fixed value, not empty.
    #[serde(default, deserialize_with = "crate::config::present")]
    value: Option<String>,
    /// `header` and `claim` only (required): the request header or the
    /// verified token claim whose value is used.
    #[serde(default, deserialize_with = "crate::config::present")]
    name: Option<String>,
    /// `body` only (required): JSON pointer (RFC 6901, e.g. `/to`) to the
    /// body value used.
    #[serde(default, deserialize_with = "crate::config::present")]
    pointer: Option<String>,
    /// `body` only: `true` reads the value as a phone number, normalised,
    /// checked against `phone.denied_prefixes` and replaced by its keyed
    /// hash (default `false`).
    #[serde(default, deserialize_with = "crate::config::present")]
    phone: Option<bool>,
}

/// An entry's `type`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum EntryKind {
    /// `client_ip`: the client IP, masked to `v4_prefix`/`v6_prefix`.
    ClientIp,
    /// `api_key`: the API key's `id`.
    ApiKey,
    /// `app`: the established app's `id`.
    App,
    /// `platform`: the established platform.
    Platform,
    /// `route`: the route's name.
    Route,
    /// `value`: a fixed `value` under a required `key`.
    Value,
    /// `header`: a request header's value (`name`).
    Header,
    /// `claim`: a verified token claim (`name`).
    Claim,
    /// `body`: a JSON body value (`pointer`, optionally `phone`).
    Body,
}

impl EntryKind {
    /// The name the entry's `type` is written as, and its descriptor
    /// key when it sets none.
    fn name(self) -> &'static str {
        match self {
            EntryKind::ClientIp => "client_ip",
            EntryKind::ApiKey => "api_key",
            EntryKind::App => "app",
            EntryKind::Platform => "platform",
            EntryKind::Route => "route",
            EntryKind::Value => "value",
            EntryKind::Header => "header",
            EntryKind::Claim => "claim",
            EntryKind::Body => "body",
        }
    }
}

impl RawEntry {
    /// The entry's source, each field checked against its `type`: one it
    /// needs and lacks, or one it does not take, is named (`eat` is the
    /// entry's path). Also its descriptor key when it sets none.
    fn source(self, eat: &str) -> Result<(Option<String>, String, Source), ConfigError> {
        let kind = self.kind;
        let field = |name: &str| format!("{eat}.{name}");
        let needed = |name: &str| {
            ConfigError::new(
                field(name),
                format!("required for a `{}` entry", kind.name()),
            )
        };
        let unused = [
            (
                "v4_prefix",
                self.v4_prefix.is_some() && kind != EntryKind::ClientIp,
            ),
            (
                "v6_prefix",
                self.v6_prefix.is_some() && kind != EntryKind::ClientIp,
            ),
            ("value", self.value.is_some() && kind != EntryKind::Value),
            (
                "name",
                self.name.is_some() && !matches!(kind, EntryKind::Header | EntryKind::Claim),
            ),
            ("pointer", self.pointer.is_some() && kind != EntryKind::Body),
            ("phone", self.phone.is_some() && kind != EntryKind::Body),
        ];
        if let Some((name, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(ConfigError::new(
                field(name),
                format!("not a field of a `{}` entry", kind.name()),
            ));
        }
        let default_key = kind.name().to_owned();
        Ok(match kind {
            EntryKind::ClientIp => {
                let v4_prefix = self.v4_prefix.unwrap_or_else(v4_default);
                let v6_prefix = self.v6_prefix.unwrap_or_else(v6_default);
                if v4_prefix == 0 || v4_prefix > 32 {
                    return Err(ConfigError::new(field("v4_prefix"), "must be 1..=32"));
                }
                if v6_prefix == 0 || v6_prefix > 128 {
                    return Err(ConfigError::new(field("v6_prefix"), "must be 1..=128"));
                }
                (
                    self.key,
                    default_key,
                    Source::ClientIp {
                        v4_prefix,
                        v6_prefix,
                    },
                )
            }
            EntryKind::ApiKey => (self.key, default_key, Source::ApiKey),
            EntryKind::App => (self.key, default_key, Source::App),
            EntryKind::Platform => (self.key, default_key, Source::Platform),
            EntryKind::Route => (self.key, default_key, Source::Route),
            EntryKind::Value => {
                let key = self.key.ok_or_else(|| needed("key"))?;
                let value = self.value.ok_or_else(|| needed("value"))?;
                // The service's protocol has no empty values (Envoy's
                // own actions skip a descriptor for one).
                if value.is_empty() {
                    return Err(ConfigError::new(field("value"), "must not be empty"));
                }
                (Some(key), default_key, Source::Value(value))
            }
            EntryKind::Header => {
                let name = self.name.ok_or_else(|| needed("name"))?;
                let h = crate::config::header_name(&field("name"), &name)?;
                (self.key, h.clone(), Source::Header(h))
            }
            EntryKind::Claim => {
                let name = self.name.ok_or_else(|| needed("name"))?;
                // No token has a blank claim (a template's unset value):
                // the rule would be skipped for every request.
                if name.trim().is_empty() {
                    return Err(ConfigError::new(field("name"), "must not be empty"));
                }
                (self.key, name.clone(), Source::Claim(name))
            }
            EntryKind::Body => {
                let pointer = self.pointer.ok_or_else(|| needed("pointer"))?;
                // RFC 6901 escapes only `~0` and `~1`: another `~` names
                // no member a JSON body can have as written.
                let escapes_ok = pointer
                    .match_indices('~')
                    .all(|(i, _)| matches!(pointer.as_bytes().get(i + 1), Some(b'0' | b'1')));
                if !(pointer.is_empty() || pointer.starts_with('/'))
                    || pointer.len() > 256
                    || !escapes_ok
                {
                    return Err(ConfigError::new(
                        field("pointer"),
                        "a JSON pointer (RFC 6901) such as `/to`",
                    ));
                }
                let phone = self.phone.unwrap_or(false);
                let default = if phone { "phone" } else { "body" };
                let dotted = dotted_path(&pointer);
                (
                    self.key,
                    default.to_owned(),
                    Source::Body {
                        pointer,
                        phone,
                        dotted,
                    },
                )
            }
        })
    }
}

/// IPv4 clients are limited per address (/32) unless the entry says
/// otherwise; IPv6 clients per /64 (see [`v6_default`]).
fn v4_default() -> u8 {
    32
}
/// IPv6 clients are limited per /64 unless the entry says otherwise: one
/// subscriber usually holds a whole /64, and per /128 a single client
/// would have 2^64 descriptors, enough to fill the local-limit table and
/// refuse every new client.
fn v6_default() -> u8 {
    64
}

/// `routes[].rate_limits[].local` as written in the configuration
/// (`{"requests": N, "per": "minute"}`); compiled into [`LocalLimit`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLocal {
    /// Bucket size and refill per period (1..=1000000). See
    /// [`LocalLimit::requests`].
    requests: u32,
    /// The period: `second`, `minute`, `hour` or `day`; compiled into
    /// seconds, [`LocalLimit::per_seconds`].
    per: Per,
}

/// One `routes[].rate_limits[]` entry as written in the configuration;
/// compiled into [`RateLimit`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    /// The rule's name, unique in its route (see [`RateLimit::name`]).
    #[serde(default, deserialize_with = "crate::config::present")]
    name: Option<String>,
    /// `entries[]` (1 to 8): the descriptor, in order. See
    /// [`RateLimit::entries`].
    entries: Vec<RawEntry>,
    /// A token bucket inside the Envoy instance; left out, the descriptor
    /// goes to the rate-limit service, whose configuration sets the limit.
    /// See [`RateLimit::local`].
    #[serde(default, deserialize_with = "crate::config::present")]
    local: Option<RawLocal>,
    /// Hits taken from the service per call (see [`RateLimit::lease`]).
    #[serde(default, deserialize_with = "crate::config::present")]
    lease: Option<u32>,
}

/// Where one descriptor entry's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The client IP, masked to the prefixes (e.g. /24 and /64 to limit
    /// networks rather than single addresses).
    ClientIp {
        /// IPv4 prefix length.
        v4_prefix: u8,
        /// IPv6 prefix length.
        v6_prefix: u8,
    },
    /// The API key's id (never the key).
    ApiKey,
    /// The established app's id.
    App,
    /// The established platform.
    Platform,
    /// The route's name.
    Route,
    /// A fixed value.
    Value(String),
    /// A request header's value.
    Header(String),
    /// A verified token claim.
    Claim(String),
    /// A JSON body value by JSON pointer (RFC 6901); with `phone`, an E.164
    /// number that is checked against denied prefixes and hashed.
    Body {
        /// The JSON pointer, e.g. `/to`.
        pointer: String,
        /// Normalise as a phone number, check, and hash.
        phone: bool,
        /// The pointer as a dotted path (`/sms/to` is `sms.to`) when it has
        /// two or more segments: a body with a top-level member of that
        /// name is refused, since path helpers such as lodash's `_.get`
        /// read that member instead. Worked out once with the
        /// configuration, not per request.
        dotted: Option<String>,
    },
}

/// A JSON pointer of two or more segments as a dotted path (`/sms/to` is
/// `sms.to`, `~1` and `~0` unescaped), as path helpers such as lodash's
/// `_.get` take it; `None` for a pointer of one segment.
fn dotted_path(pointer: &str) -> Option<String> {
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    (segments.len() >= 2).then(|| segments.join("."))
}

/// One descriptor entry: its key and where its value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySpec {
    /// The descriptor key, as the rate-limit service's YAML names it.
    pub key: String,
    /// The value's source.
    pub source: Source,
}

impl EntrySpec {
    /// The entry's value when the configuration fixes it (the route's name
    /// for `route`, the literal of `value`), as `policy` sends it;
    /// `None` when each request brings its own. For tools that check a
    /// rate-limit service's configuration against the descriptors
    /// (`appguard-cli check-config --ratelimit-config`).
    pub fn fixed_value<'a>(&'a self, route: &'a str) -> Option<&'a str> {
        match &self.source {
            Source::Route => Some(route),
            Source::Value(v) => Some(v),
            Source::ClientIp { .. }
            | Source::ApiKey
            | Source::App
            | Source::Platform
            | Source::Header(_)
            | Source::Claim(_)
            | Source::Body { .. } => None,
        }
    }
}

/// A limit enforced inside the Envoy instance (no service needed): a token
/// bucket of `requests` tokens refilled over `per`, shared by the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalLimit {
    /// Bucket size and refill per period.
    pub requests: u32,
    /// The period in seconds.
    pub per_seconds: u64,
    /// Which family of tables counts it: a failure budget and a route's
    /// local limit with the same numbers must not share a table, since a
    /// bucket whose entries are all busy sends every other descriptor to
    /// its shared overflow entry (route traffic would then spend genuine
    /// clients' budgets, and the reverse).
    pub table: LocalTable,
}

/// The family of shared-data tables a [`LocalLimit`] is counted in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LocalTable {
    /// A route's `local` rate limit.
    #[default]
    Route,
    /// A provider's failure budget (signature failures per client).
    Budget,
}

impl LocalTable {
    /// The shared-data key prefix of the family's tables.
    fn prefix(self) -> &'static str {
        match self {
            LocalTable::Route => "appguard/local/v2",
            LocalTable::Budget => "appguard/budget/v1",
        }
    }
}

/// One rate limit of a route: a descriptor and, optionally, a local limit.
/// Without `local`, the descriptor goes to the shared rate-limit service,
/// whose YAML decides the limit.
#[derive(Clone, Debug)]
pub struct RateLimit {
    /// The rule's name (default `<route>#<index>`), unique in its route:
    /// it names the rule in logs and scopes its local counts, so that two
    /// `local` rules with the same entries (a burst and a sustained limit)
    /// keep separate buckets. The service sees descriptors only: two
    /// service rules of a route with the same entries are refused.
    pub name: String,
    /// `["rate_limit", route, name]`, absorbed once: see [`DigestScope`].
    pub scope: DigestScope,
    /// The ordered entries.
    pub entries: Vec<EntrySpec>,
    /// Enforced locally when set.
    pub local: Option<LocalLimit>,
    /// Hits this worker takes from the service at once for the rule's
    /// descriptor (`lease`, 2..=[`MAX_LEASE`]); `None`: one per request.
    /// A lease of `n` sends the descriptor with `hits_addend` `n` and lets
    /// the next `n - 1` requests with the same descriptor through without a
    /// call, until the service's window resets. Every hit is counted before
    /// it is used, so the limit still holds across instances; the price is
    /// that hits leased by one worker and not used are lost to the others
    /// (see [`ServiceCache`]).
    pub lease: Option<u32>,
}

/// Largest `lease`: beyond it, hits a worker holds and may not use would
/// make most limits meaningless.
pub const MAX_LEASE: u32 = 10_000;

impl RateLimit {
    /// Whether a value comes from the body.
    pub fn needs_body(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.source, Source::Body { .. }))
    }

    /// Whether a value is a phone number read from the body.
    pub fn reads_phone(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.source, Source::Body { phone: true, .. }))
    }
}

/// Most `rate_limits` on one route: each is one descriptor of the call to
/// the rate-limit service, which refuses calls of more than 64 (with a
/// replay descriptor, 33 at most here).
pub const MAX_RULES_PER_ROUTE: usize = 32;

/// A route's `rate_limits`, compiled. Each rule is named (`route#i` by
/// default), and the name scopes its counts, so names must be unique within
/// the route; a rule counts either locally or through the service with a
/// `lease`, never both.
pub(crate) fn compile(
    at: &str,
    route: &str,
    raw: Vec<RawRateLimit>,
) -> Result<Vec<RateLimit>, ConfigError> {
    // One descriptor per rule (plus a replay descriptor) goes to the
    // rate-limit service, which refuses requests of more than 64.
    if raw.len() > MAX_RULES_PER_ROUTE {
        return Err(ConfigError::new(
            at,
            format!("at most {MAX_RULES_PER_ROUTE} rate limits per route"),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("{at}[{i}]");
        if r.entries.is_empty() || r.entries.len() > 8 {
            return Err(ConfigError::new(format!("{at}.entries"), "1 to 8 entries"));
        }
        let mut entries = Vec::with_capacity(r.entries.len());
        for (j, e) in r.entries.into_iter().enumerate() {
            let eat = format!("{at}.entries[{j}]");
            let (key, default_key, source) = e.source(&eat)?;
            let key = key.unwrap_or(default_key);
            if key.is_empty() || key.len() > 64 {
                return Err(ConfigError::new(format!("{eat}.key"), "1-64 characters"));
            }
            entries.push(EntrySpec { key, source });
        }
        let local = match r.local {
            Some(l) => {
                if l.requests == 0 || l.requests > 1_000_000 {
                    return Err(ConfigError::new(
                        format!("{at}.local.requests"),
                        "must be 1..=1000000",
                    ));
                }
                Some(LocalLimit {
                    requests: l.requests,
                    per_seconds: l.per.seconds(),
                    table: LocalTable::Route,
                })
            }
            None => None,
        };
        let lease = match (r.lease, local) {
            (None, _) => None,
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    format!("{at}.lease"),
                    "a lease takes hits from the rate-limit service; a local limit already \
                     counts inside this Envoy",
                ))
            }
            (Some(n), None) if (2..=MAX_LEASE).contains(&n) => Some(n),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    format!("{at}.lease"),
                    format!("must be 2..={MAX_LEASE} (hits taken per call; leave it out for one)"),
                ))
            }
        };
        if r.name
            .as_deref()
            .is_some_and(|n| !crate::config::valid_name(n))
        {
            return Err(ConfigError::new(
                format!("{at}.name"),
                "must be 1-64 characters of [A-Za-z0-9_-] (it appears in logs)",
            ));
        }
        let name = r.name.unwrap_or_else(|| format!("{route}#{i}"));
        // The name scopes the rule's counts: two rules with one name would
        // share a bucket.
        if name.is_empty() || out.iter().any(|o: &RateLimit| o.name == name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("must be non-empty and unique in its route: {name:?} is taken"),
            ));
        }
        out.push(RateLimit {
            scope: DigestScope::new(&["rate_limit", route, &name]),
            name,
            entries,
            local,
            lease,
        });
    }
    Ok(out)
}

/// A built descriptor: ordered (key, value) entries.
pub type Descriptor = Vec<(String, String)>;

/// Whose counts a descriptor digest keys (a route and its rule, `replay`, a
/// provider's failure budget), absorbed into SHA-256 once: at configuration
/// time for a rule, so a request hashes only its descriptor.
///
/// The scope is length-prefixed parts, zero-padded to whole 64-byte blocks
/// (the total length is then a multiple of 64 and the prefixes say where
/// the parts end, so the padding cannot be confused with a part), and the
/// hasher keeps the state after those blocks. Two scopes are apart, and no
/// scope can spell out another.
///
/// The same parts, unpadded, also scope the worker's over-limit cache
/// ([`ServiceCache::key`]), which keys by a keyed hash instead.
#[derive(Clone)]
pub struct DigestScope(Sha256, Box<[u8]>);

impl DigestScope {
    /// The scope of these parts, e.g. `["rate_limit", route, rule]`.
    pub fn new(parts: &[&str]) -> DigestScope {
        let mut bytes = Vec::with_capacity(64);
        push_part(
            &mut bytes,
            &u64::try_from(parts.len()).unwrap_or(u64::MAX).to_le_bytes(),
        );
        for p in parts {
            push_part(&mut bytes, p.as_bytes());
        }
        let unpadded: Box<[u8]> = bytes.as_slice().into();
        let padded = bytes.len().div_ceil(64).max(1) * 64;
        bytes.resize(padded, 0);
        let mut h = Sha256::new();
        h.update(&bytes);
        DigestScope(h, unpadded)
    }
}

impl std::fmt::Debug for DigestScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestScope")
    }
}

/// Appends `bytes` with its length in front (LEB128).
fn push_part(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut n = bytes.len();
    loop {
        let low = u8::try_from(n & 0x7f).unwrap_or(0);
        n >>= 7;
        if n == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(bytes);
}

/// A descriptor as the digests read it: the number of entries, then each
/// key and value, every part length-prefixed.
fn descriptor_bytes(d: &Descriptor) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    push_part(
        &mut bytes,
        &u64::try_from(d.len()).unwrap_or(u64::MAX).to_le_bytes(),
    );
    for (k, v) in d {
        push_part(&mut bytes, k.as_bytes());
        push_part(&mut bytes, v.as_bytes());
    }
    bytes
}

/// The 128-bit digest of a descriptor within its scope: the key of local
/// buckets in shared data (the worker's over-limit cache keys by
/// [`ServiceCache::key`] instead).
/// Every part is length-prefixed: values come from headers and JSON bodies,
/// and no choice of bytes in one value can make two different descriptors
/// hash alike.
pub fn descriptor_digest(scope: &DigestScope, d: &Descriptor) -> [u8; 16] {
    let mut h = scope.0.clone();
    h.update(descriptor_bytes(d));
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(full.get(..16).unwrap_or(&[0; 16]));
    out
}

/// A body value (found by JSON pointer) as text: strings as they are,
/// integers printed; anything else (objects, arrays, floats, booleans,
/// null) is not a usable value.
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// The `client_ip` descriptor value of a request whose client IP is not
/// known: an `X-Forwarded-For` chain shorter than `xff_trusted_hops` (a
/// request that did not come through the trusted proxies), or an entry
/// there that is not an address. Skipping the descriptor would let such a
/// request escape its per-IP limit; instead every such request shares
/// this one value, and so one bucket per rule.
pub const UNKNOWN_CLIENT: &str = "unknown";

/// The value of a `header` entry whose header is sent twice with different
/// values, or is longer than 256 bytes. Skipping the descriptor would let a
/// client escape a per-device limit by adding a second `x-device-id` (the
/// upstream still reads the first); instead every such request shares this
/// one value, and so one bucket per rule. (A header that is not sent at all
/// still skips its descriptor, as Envoy's `request_headers` action does.)
/// A `claim` entry whose claim is present but a list, an object or longer
/// than 256 bytes takes the same value.
pub const UNREADABLE_HEADER: &str = "(unreadable)";

/// Who a failure budget charges when the client IP is not known: the
/// unspecified address `::`, never a real client, so that every such client
/// shares one budget instead of having none.
pub const UNKNOWN_CLIENT_IP: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// The client IP as a descriptor value.
pub fn ip_value(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> String {
    crate::net::masked(ip, v4_prefix, v6_prefix)
}

/// Entries per local-limit bucket; one more slot is the bucket's overflow.
pub const LOCAL_BUCKET_ENTRIES: usize = 16;
/// Buckets of a local-limit table: at most 16 × 4096 = 65 536 live
/// descriptors per table, about 2.2 MiB of shared data when full. There is
/// one table per distinct limit (`requests` and `per`, and each failure
/// budget), and a table stays in Envoy's shared data for the life of the
/// process, including those of earlier configurations.
pub const LOCAL_BUCKETS: u32 = 4096;
/// Bytes of one entry in a bucket's shared-data value: the descriptor's
/// digest (16), its units (8), its last refill in ms (8). Fixed, so that a
/// bucket is read by whole chunks.
const LOCAL_ENTRY: usize = 32; // digest 16 + units 8 + last refill ms 8
/// The digest that marks a bucket's overflow entry, which descriptors that
/// found no room share (see [`take_local`]); no real digest is expected to
/// be all `0xff`.
const OVERFLOW: [u8; 16] = [0xff; 16];

/// A local limit's bucket in exact integer units: one token is `per`
/// milliseconds' worth of units (`per_seconds × 1000`), and the bucket
/// gains `requests` units per millisecond. Refill is then exact at any
/// request rate: no fraction of a token is rounded away when requests come
/// faster than a token's refill time (which, with rounded milli-tokens,
/// kept a drained bucket empty for as long as a client kept retrying).
#[derive(Clone, Copy)]
struct Units {
    /// Units of one token (the period in ms).
    token: u64,
    /// Units gained per ms (`requests`).
    per_ms: u64,
    /// A full bucket (`requests × token`).
    full: u64,
}

impl Units {
    /// The units of `limit`. A token is at least one unit and the products
    /// saturate: no limit, however written, makes an empty token or wraps.
    fn of(limit: LocalLimit) -> Units {
        let token = limit.per_seconds.saturating_mul(1000).max(1);
        let per_ms = u64::from(limit.requests);
        Units {
            token,
            per_ms,
            full: per_ms.saturating_mul(token),
        }
    }

    /// The units an entry holds at `now_ms`, refilled since `last`.
    fn at(self, units: u64, last: u64, now_ms: u64) -> u64 {
        let gained = u128::from(now_ms.saturating_sub(last)) * u128::from(self.per_ms);
        u64::try_from((u128::from(units) + gained).min(u128::from(self.full))).unwrap_or(self.full)
    }

    /// Whether an entry is idle at `now_ms`: refilled to a full bucket, so
    /// forgetting it loses nothing (the slot may go to another client).
    fn idle(self, units: u64, last: u64, now_ms: u64) -> bool {
        self.at(units, last, now_ms) >= self.full
    }

    /// Milliseconds until `units` reach a whole token (0 if they do).
    fn wait_ms(self, units: u64) -> u64 {
        self.token
            .saturating_sub(units)
            .div_ceil(self.per_ms.max(1))
    }
}

/// The state of one local limit after taking a token (or failing to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalOutcome {
    /// A token was taken: the request may go on.
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u32,
    /// Seconds until the next token (0 when some are left).
    pub retry_after: u64,
    /// The token was taken from the bucket's overflow entry, which the
    /// descriptor shares (see [`take_local`]): where [`give_back_local`]
    /// puts it back.
    pub shared: bool,
}

/// The shared-data key of the bucket that holds `digest` under `limit`
/// (`v2`: entries hold [`Units`]; the milli-token entries of earlier
/// modules, which shared data keeps across a module update, are not read
/// as units).
/// One table per limit: every entry of a table refills at the same rate,
/// so whether an entry is idle (full again, safe to evict) and how the
/// overflow entry refills are judged with the entry's own limit, never
/// with the limit of whichever rule touches the table next. The bucket is
/// keyed with the instance's `salt`: a client cannot search offline for
/// values that share a victim's bucket (see [`BucketSalt`]).
fn local_key(salt: &BucketSalt, digest: &[u8; 16], limit: LocalLimit) -> String {
    format!(
        "{}/{}-{}/{}",
        limit.table.prefix(),
        limit.requests,
        limit.per_seconds,
        store::bucket_of(salt, digest, LOCAL_BUCKETS)
    )
}

/// One entry of a local-limit bucket: the descriptor's digest, its
/// [`Units`], and when they were last refilled (ms).
type LocalEntry = ([u8; 16], u64, u64);

/// The entries of a bucket as shared data holds them.
fn local_entries(bytes: &[u8]) -> Vec<LocalEntry> {
    bytes
        .chunks_exact(LOCAL_ENTRY)
        .map(|e| {
            let mut d = [0u8; 16];
            d.copy_from_slice(e.get(..16).unwrap_or(&[0; 16]));
            (d, u64_at(e, 16).unwrap_or(0), u64_at(e, 24).unwrap_or(0))
        })
        .collect()
}

/// Where a descriptor is counted in its bucket.
enum Place {
    /// Its own entry, at this index.
    Own(usize),
    /// A new entry (the bucket has room): it starts full.
    New,
    /// A new entry in place of the idle (full) one at this index.
    Evict(usize),
    /// The bucket's overflow entry, at this index if it exists yet (a new
    /// one starts full), shared with every descriptor that found no room.
    Overflow(Option<usize>),
}

/// Where [`take_local`] counts `digest` in a bucket with `entries`;
/// `idle` says whether an entry (units, last refill) is full again.
fn place(entries: &[LocalEntry], digest: &[u8; 16], idle: impl Fn(u64, u64) -> bool) -> Place {
    if let Some(i) = entries.iter().position(|(d, _, _)| d == digest) {
        return Place::Own(i);
    }
    if entries.iter().filter(|(d, _, _)| *d != OVERFLOW).count() < LOCAL_BUCKET_ENTRIES {
        return Place::New;
    }
    if let Some(i) = entries
        .iter()
        .position(|&(d, t, l)| d != OVERFLOW && idle(t, l))
    {
        return Place::Evict(i);
    }
    Place::Overflow(entries.iter().position(|(d, _, _)| *d == OVERFLOW))
}

/// Takes one token from the descriptor's bucket. Buckets live in shared
/// data, updated with CAS, so every worker of the instance shares them.
///
/// Memory is bounded: a descriptor lives in one of [`LOCAL_BUCKETS`] buckets
/// of [`LOCAL_BUCKET_ENTRIES`] entries, in its limit's own table, chosen
/// with the instance's `salt`. When a bucket is full, a full (idle)
/// entry is evicted — it carries no state worth keeping. When none is idle,
/// the descriptor shares the bucket's overflow entry with every other
/// descriptor in that position: the limit then holds for them together,
/// which is stricter, never looser.
pub fn take_local<S: SharedStore + ?Sized>(
    s: &S,
    salt: &BucketSalt,
    digest: &[u8; 16],
    limit: LocalLimit,
    now_ms: u64,
) -> Result<LocalOutcome, store::StoreError> {
    take_local_n(s, salt, digest, limit, 1, now_ms)
}

/// How far behind a bucket's last refill a worker's clock reading may be
/// and still be taken for the same moment (workers read the clock apart,
/// and a request's reading is taken before its checks).
pub const CLOCK_SLACK_MS: u64 = 1000;

/// Whether a bucket's last refill at `last` (ms) is so far after `now_ms`
/// that the clock was set back since, rather than read a moment apart by
/// another worker: the bucket then counts from now.
fn clock_set_back(last: u64, now_ms: u64) -> bool {
    last.saturating_sub(now_ms) >= CLOCK_SLACK_MS
}

/// [`take_local`] for `n` tokens at once: as many whole tokens as the
/// bucket holds, up to `n`; allowed only if it held all `n`. (A failure
/// budget charges one failure per key a forged token was tried against.)
///
/// `now_ms` a little behind the stored time of the entry (less than
/// [`CLOCK_SLACK_MS`]: another worker's clock reading) leaves it as is.
pub fn take_local_n<S: SharedStore + ?Sized>(
    s: &S,
    salt: &BucketSalt,
    digest: &[u8; 16],
    limit: LocalLimit,
    n: u32,
    now_ms: u64,
) -> Result<LocalOutcome, store::StoreError> {
    let u = Units::of(limit);
    let want = u.token.saturating_mul(u64::from(n.max(1)));
    let key = local_key(salt, digest, limit);
    store::update(s, &key, |current| {
        let mut entries = local_entries(current.unwrap_or(&[]));
        // A descriptor that finds room again after sharing the bucket's
        // overflow entry must not get a full entry of its own within the
        // same period: a new entry starts with what the overflow holds.
        let start = entries
            .iter()
            .find(|(d, _, _)| *d == OVERFLOW)
            .map_or(u.full, |&(_, t, l)| u.at(t, l, now_ms).min(u.full));
        let placed = place(&entries, digest, |t, l| u.idle(t, l, now_ms));
        let existed = matches!(placed, Place::Own(_) | Place::Overflow(Some(_)));
        let idx = match placed {
            Place::Own(i) | Place::Overflow(Some(i)) => i,
            Place::New => {
                entries.push((*digest, start, now_ms));
                entries.len() - 1
            }
            Place::Evict(i) => {
                if let Some(e) = entries.get_mut(i) {
                    *e = (*digest, start, now_ms);
                }
                i
            }
            Place::Overflow(None) => {
                entries.push((OVERFLOW, u.full, now_ms));
                entries.len() - 1
            }
        };
        let Some(entry) = entries.get_mut(idx) else {
            return (
                None,
                LocalOutcome {
                    allowed: false,
                    remaining: 0,
                    retry_after: 1,
                    shared: false,
                },
            );
        };
        let (units, stepped_back) = refill(u, entry, now_ms);
        if existed && units < want && units < u.token && !stepped_back {
            // Refused with no whole token to take: the stored entry
            // already means exactly this, so nothing is written. A flood
            // of refused requests then only reads, and cannot crowd out
            // the writes of allowed ones (CAS retries).
            return (
                None,
                LocalOutcome {
                    allowed: false,
                    remaining: 0,
                    retry_after: u.wait_ms(units).div_ceil(1000).max(1),
                    shared: false,
                },
            );
        }
        let outcome = if units >= want {
            entry.1 = units - want;
            LocalOutcome {
                allowed: true,
                remaining: u32::try_from(entry.1 / u.token).unwrap_or(u32::MAX),
                retry_after: 0,
                shared: matches!(placed, Place::Overflow(_)),
            }
        } else {
            // The whole tokens it holds are taken; a fraction stays.
            entry.1 = units % u.token;
            LocalOutcome {
                allowed: false,
                remaining: 0,
                retry_after: u.wait_ms(entry.1).div_ceil(1000).max(1),
                shared: false,
            }
        };
        (Some(entries_bytes(&entries)), outcome)
    })
}

/// The units `entry` holds at `now_ms`, and whether the clock was set back
/// since its last refill; its last refill moves to now. Refill is exact,
/// so nothing earned is lost that way. A `now_ms` a little behind the
/// entry's last refill is another worker's clock reading (workers read it
/// a moment apart): it gained nothing, and `last` does not move back (that
/// span would be refilled twice). Further behind, the clock stepped back:
/// `last` follows it, or the bucket would not refill until the clock
/// caught up.
fn refill(u: Units, entry: &mut LocalEntry, now_ms: u64) -> (u64, bool) {
    let units = u.at(entry.1, entry.2, now_ms);
    let stepped_back = clock_set_back(entry.2, now_ms);
    if entry.2 <= now_ms || stepped_back {
        entry.2 = now_ms;
    }
    (units, stepped_back)
}

/// A bucket's entries as shared data holds them.
fn entries_bytes(entries: &[LocalEntry]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(entries.len() * LOCAL_ENTRY);
    for (d, t, l) in entries {
        bytes.extend_from_slice(d);
        bytes.extend_from_slice(&t.to_le_bytes());
        bytes.extend_from_slice(&l.to_le_bytes());
    }
    bytes
}

/// Gives back the token an allowed [`take_local`] took for a request that
/// was refused after all (by a later limit, the rate-limit service or the
/// replay check): refused requests must not spend a limit, or a client over
/// one of its own limits could drain another it shares with others (a
/// phone number's, an API key's) and lock their owners out.
///
/// The token goes back to the entry it was taken from (`shared`: the
/// bucket's overflow entry, see [`LocalOutcome::shared`]), never above a
/// full bucket. An own entry gone since (evicted when full again) is not
/// recreated: it would start full anyway.
///
/// Only the part of the token the bucket has not refilled since it was
/// taken goes back (`when`): the bucket refilled into the room the token
/// left while the request waited (on the rate-limit service, up to its
/// timeout), and giving the whole token back on top would let a client
/// that spent that refill spend the token again: twice its limit at once.
/// What goes back never makes the bucket hold more than it would had the
/// token not been taken.
pub fn give_back_local<S: SharedStore + ?Sized>(
    s: &S,
    salt: &BucketSalt,
    digest: &[u8; 16],
    limit: LocalLimit,
    shared: bool,
    when: TakenAt,
) -> Result<(), store::StoreError> {
    let u = Units::of(limit);
    let key = local_key(salt, digest, limit);
    let from = if shared { OVERFLOW } else { *digest };
    let refilled = u128::from(when.now_ms.saturating_sub(when.taken_ms)) * u128::from(u.per_ms);
    let back = u64::try_from(u128::from(u.token).saturating_sub(refilled)).unwrap_or(0);
    if back == 0 {
        return Ok(());
    }
    store::update(s, &key, |current| {
        let mut entries = local_entries(current.unwrap_or(&[]));
        let Some(entry) = entries.iter_mut().find(|(d, _, _)| *d == from) else {
            return (None, ());
        };
        let (units, _) = refill(u, entry, when.now_ms);
        entry.1 = units.saturating_add(back).min(u.full);
        (Some(entries_bytes(&entries)), ())
    })
}

/// When a local token was taken, and when it is given back (ms), for
/// [`give_back_local`].
#[derive(Clone, Copy, Debug)]
pub struct TakenAt {
    /// When the request took the token.
    pub taken_ms: u64,
    /// Now, as the token goes back.
    pub now_ms: u64,
}

/// The shared-data key holding the time (ms) of the last signature failure
/// counted against `scope`'s failure budgets, by any worker.
fn failure_mark_key(scope: &str) -> String {
    format!("appguard/failed/{scope}")
}

/// Records a failure against `scope`'s budgets at `now_ms` (kept as the
/// latest of all workers' marks). Written before the failure is taken from
/// the client's bucket, so that a bucket seen empty always comes with a
/// recent mark (see [`failed_within`]).
pub fn mark_failure<S: SharedStore + ?Sized>(s: &S, scope: &str, now_ms: u64) {
    let _ = store::update(s, &failure_mark_key(scope), |current| {
        let last = current
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        if last >= now_ms {
            (None, ())
        } else {
            (Some(now_ms.to_le_bytes().to_vec()), ())
        }
    });
}

/// Whether any failure was counted against `scope`'s budgets within the
/// last window of `limit`. If not, no client's budget can be spent: an empty
/// bucket holds a whole token again at most `per_seconds / requests` after
/// its last take, and every take is marked first. Lets the common case (no
/// one failing) skip the client address, its digest and its bucket. A mark
/// that cannot be read as a time counts as recent.
pub fn failed_within<S: SharedStore + ?Sized>(
    s: &S,
    scope: &str,
    limit: LocalLimit,
    now_ms: u64,
) -> bool {
    let Some((bytes, _)) = s.get(&failure_mark_key(scope)) else {
        return false;
    };
    let Ok(raw) = <[u8; 8]>::try_from(bytes.as_slice()) else {
        return true;
    };
    now_ms.saturating_sub(u64::from_le_bytes(raw)) < limit.per_seconds.saturating_mul(1000)
}

/// When the descriptor's bucket will next hold a whole token (ms since the
/// epoch), or `None` if it holds one now. A read of shared data, no write.
/// Other workers only take tokens from a failure budget's entry, never add
/// them, so it stays empty at least until then: a worker may remember the
/// answer. (A rate limit's tokens can come back early, from requests
/// refused after taking them: [`give_back_local`]; remembering then errs
/// on the strict side, and nothing remembers them.)
///
/// A descriptor without an entry of its own is judged where
/// [`take_local`] would count it: a free or idle slot holds a whole token,
/// but in a bucket whose 16 entries are all busy it shares the overflow
/// entry, and that entry's refill time is its own. An entry last refilled
/// after `now_ms` (the clock was set back since) is not known to be spent:
/// `None`, so that the take or charge that follows counts it from now.
pub fn local_refill_at<S: SharedStore + ?Sized>(
    s: &S,
    salt: &BucketSalt,
    digest: &[u8; 16],
    limit: LocalLimit,
    now_ms: u64,
) -> Option<u64> {
    let u = Units::of(limit);
    let key = local_key(salt, digest, limit);
    let (bytes, _) = s.get(&key)?;
    let entries = local_entries(&bytes);
    let i = match place(&entries, digest, |t, l| u.idle(t, l, now_ms)) {
        Place::Own(i) | Place::Overflow(Some(i)) => i,
        // A new or evicted entry, or a new overflow entry, starts full.
        Place::New | Place::Evict(_) | Place::Overflow(None) => return None,
    };
    let &(_, t, l) = entries.get(i)?;
    // A refill time well after now is a clock set back since. This read
    // writes nothing, so it cannot count the entry from now as
    // [`take_local_n`] does: each later read would count from its own now,
    // and an entry that is only read while it refuses (a failure budget,
    // whose spent clients are refused unverified and so never charged; a
    // route's limits before its last) would read as spent until the clock
    // caught up. Not known to be spent: the take or charge that follows
    // counts it from now (at most one verification, or one take, per
    // entry and step).
    if clock_set_back(l, now_ms) {
        return None;
    }
    if u.at(t, l, now_ms) >= u.token {
        return None;
    }
    // The first ms at which the entry holds a whole token.
    Some(l.saturating_add(u.wait_ms(t)).max(now_ms.saturating_add(1)))
}

/// What this worker knows from the rate-limit service's answers, per
/// descriptor. Per worker, bounded, keyed by [`ServiceCache::key`].
///
/// - **Over limit**: descriptors the service refused, until their window
///   resets: answered 429 locally without asking again. Each keeps the
///   limit the service named, so that the cached 429 carries the same
///   `x-ratelimit-limit` as the first.
/// - **Leases** (rules with `lease`): hits the service counted for this
///   worker in one call (`hits_addend` n) and not used yet. A request takes
///   one instead of calling, until the window the service counted them in
///   resets. Hits are counted before they are used, so the limit holds
///   across every instance; what a lease costs is accuracy near the limit:
///   hits one worker holds are not available to the others, and a lease
///   asked for near the limit can be refused while single hits remain.
///   The next lease asks for no more than the service last said remained,
///   which keeps a single worker exact.
/// - **Asks in flight**: leases asked for and not answered yet. Requests
///   arriving side by side (an HTTP/2 client's streams, or any busy
///   descriptor when its hits run out) would otherwise each ask for a
///   whole lease, and near the limit the service would count n hits for
///   each and refuse far below it. So a new ask is for no more than the
///   service last said remained less the hits already asked for; while
///   nothing is known of what remains (the first ask of a window), one
///   ask at a time, the others asking for a single hit.
///
/// Every request that has service descriptors looks here first, so its keys
/// are a keyed hash (SipHash under the instance's salt) rather than the
/// SHA-256 digests of the shared tables: the cache never leaves the worker,
/// and the hash costs a tenth of a SHA-256.
pub struct ServiceCache {
    /// Over limit: descriptor key → until when (s), the limit the service
    /// named, for the cached 429's `x-ratelimit-limit`, and when (s) the
    /// answer was cached: one cached later than now (and a second) is from
    /// before the clock was set back, and its `until`, read on the clock as
    /// it was, no longer says when the window resets. Bounded by
    /// `OVER_LIMIT_ENTRIES`.
    map: HashMap<[u8; 16], (u64, Option<u32>, u64)>,
    /// Leased hits this worker holds and has not used, per descriptor key.
    leases: HashMap<[u8; 16], Lease>,
    /// Lease asks in flight, per descriptor.
    asking: HashMap<[u8; 16], Vec<Ask>>,
    /// SipHash keys derived from the instance's salt, so that no client can
    /// make up descriptor values whose entries are another client's.
    keys: Keyed128,
}

/// Hits leased for one descriptor.
#[derive(Clone, Copy, Debug)]
struct Lease {
    /// Hits left to use.
    remaining: u32,
    /// Unix time (ms) at which the window they were counted in resets, at
    /// the latest: the call's start plus what
    /// [`crate::ratelimit::lease_window`] makes of the service's
    /// `duration_until_reset`.
    until_ms: u64,
    /// What the service said remained of the limit after the lease: the
    /// most the next lease in this window asks for.
    service_remaining: u32,
    /// Unix time (ms) at which the lease was granted (the earliest, for
    /// leases added up): a clock read before it by more than
    /// [`CLOCK_SLACK_MS`] was set back, and the lease's window, measured
    /// on the clock as it was, no longer says when its hits were counted.
    granted_ms: u64,
    /// A request asked for the next lease ahead of this one's running out
    /// ([`ServiceCache::ask_ahead`]): not again until a lease is kept.
    asked_ahead: bool,
    /// How long the limit's windows are (ms; 0 while no answer said):
    /// how long a reset ask sent after this lease's window ended holds
    /// ([`ServiceCache::abandon_ask`]). Kept when the lease is no longer
    /// live, as the entry is.
    window_ms: u64,
}

impl Lease {
    /// Whether the lease's hits may be used at `now_ms`: its window has
    /// not reset, and the clock was not set back since it was granted
    /// (its hits would then outlive their window by the step).
    fn live(&self, now_ms: u64) -> bool {
        self.until_ms > now_ms && now_ms.saturating_add(CLOCK_SLACK_MS) >= self.granted_ms
    }

    /// Whether the entry says its limit's windows last a second or less
    /// (so that its asks are for one hit, [`ServiceCache::lease_ask`]):
    /// worth keeping past its lease, which a purge of expired leases
    /// would otherwise drop with it.
    fn short_window(&self) -> bool {
        self.window_ms > 0 && self.window_ms <= 1000
    }
}

/// A lease asked for and not answered yet.
#[derive(Clone, Copy, Debug)]
struct Ask {
    /// The call's start (ms): with `hits`, which ask an answer ends.
    sent_ms: u64,
    /// When it is given up: the call's start plus its timeout.
    until_ms: u64,
    /// Hits asked for.
    hits: u32,
    /// Its request went away before the answer ([`ServiceCache::abandon_ask`]):
    /// the service may well have counted its hits, and only a later answer
    /// will say so. Held until one comes ([`ServiceCache::answered`]), or
    /// [`ABANDONED_ASK_MS`] at most (to the end of the window it was sent
    /// in, when that is later and known: see [`ServiceCache::abandon_ask`]).
    abandoned: bool,
    /// Abandoned, and a later answer counted its hits: they no longer
    /// hold back what remains, but the ask still quarters the next asks
    /// for [`RESET_COOLDOWN_MS`] at least, and to the end of that answer's
    /// window ([`ServiceCache::answered`], [`ServiceCache::lease_ask`]).
    counted: bool,
}

/// How long, at least, after an answer counted an abandoned ask's hits,
/// it still quarters the asks for its descriptor (and to the end of the
/// window that answer names): a client that resets a request, lets the
/// next one be answered and resets the one after would otherwise have a
/// whole lease counted for every other request.
pub const RESET_COOLDOWN_MS: u64 = 60_000;

/// How long an abandoned ask holds back the next asks when no answer for
/// its descriptor comes: an hour, the longest window leases are commonly
/// kept for, or to the end of the window it was sent in, when that is
/// later (a `per: day` limit) and the worker knows it, from its lease or
/// the window length an answer named ([`ServiceCache::abandon_ask`]).
/// Bounded so that descriptors nobody asks about again do not stay in the
/// table for good.
pub const ABANDONED_ASK_MS: u64 = 3_600_000;

impl Ask {
    /// Whether the ask still holds back the asks that follow: not past its
    /// time, nor sent after `now_ms` (the clock was set back since: no
    /// later answer could count it).
    fn holds(&self, now_ms: u64) -> bool {
        self.until_ms > now_ms && self.sent_ms <= now_ms.saturating_add(CLOCK_SLACK_MS)
    }
}

/// Most lease asks in flight per descriptor and worker; beyond, requests
/// ask for a single hit.
const MAX_ASKS: usize = 32;

/// Largest number of descriptors the cache holds per worker, for each of
/// its two tables.
pub const OVER_LIMIT_ENTRIES: usize = 4096;

impl ServiceCache {
    /// An empty cache whose keys are derived from the instance's salt.
    pub fn new(salt: &BucketSalt) -> ServiceCache {
        ServiceCache {
            map: HashMap::new(),
            leases: HashMap::new(),
            asking: HashMap::new(),
            keys: Keyed128::new(salt, "appguard/over-limit"),
        }
    }

    /// The cache key of descriptor `d` within `scope` (the rule's, or the
    /// replay descriptor's): the same input as [`descriptor_digest`]'s,
    /// the scope's parts then the descriptor's, all length-prefixed, so
    /// that no two descriptors of any scopes are one input.
    pub fn key(&self, scope: &DigestScope, d: &Descriptor) -> [u8; 16] {
        let mut h = self.keys.hasher();
        h.raw(&scope.1);
        h.raw(&descriptor_bytes(d));
        h.finish()
    }

    /// Until when a descriptor is known to be over its limit.
    pub fn until(&self, digest: &[u8; 16], now: u64) -> Option<u64> {
        self.get(digest, now).map(|(until, _)| until)
    }

    /// Until when a descriptor is known to be over its limit, and the
    /// limit's `requests_per_unit` when the service said it. Not after the
    /// clock was set back since it was cached: its window is measured on
    /// the clock as it was (the service is asked again).
    pub fn get(&self, digest: &[u8; 16], now: u64) -> Option<(u64, Option<u32>)> {
        self.map
            .get(digest)
            .filter(|(u, _, at)| *u > now && *at <= now.saturating_add(1))
            .map(|&(u, limit, _)| (u, limit))
    }

    /// Remembers a descriptor as over its `limit` (requests per unit, when
    /// known) until `until`.
    pub fn insert(&mut self, digest: [u8; 16], until: u64, limit: Option<u32>, now: u64) {
        make_room(&mut self.map, OVER_LIMIT_ENTRIES, |(u, _, _)| *u > now);
        self.map.insert(digest, (until, limit, now));
    }

    /// Takes one leased hit of a descriptor, if this worker holds one in a
    /// window that has not reset at `now_ms`.
    pub fn take_lease(&mut self, digest: &[u8; 16], now_ms: u64) -> bool {
        match self.leases.get_mut(digest) {
            Some(l) if l.live(now_ms) && l.remaining > 0 => {
                l.remaining -= 1;
                true
            }
            _ => false,
        }
    }

    /// Whether a request should ask for the next lease of a descriptor
    /// whose rule leases `size` now, instead of taking one of the hits
    /// this worker still holds; if so, the held lease is marked as asked
    /// ahead for. The others go on taking the kept hits while the call is
    /// out, so a lease that runs out under load does not set off an ask
    /// from each request (halving each other's, 100, 50, 25, …: a call
    /// for one request in eight at 16 requests side by side, where one in
    /// a hundred is the point of a lease).
    ///
    /// Only when all of these hold: less than a quarter of a lease is left
    /// (so never for leases under 8, which side-by-side asks hardly
    /// halve), and the ask ([`ServiceCache::lease_ask`], which reset
    /// requests quarter) brings it back to a quarter at least (so never
    /// for one hit); the service said a whole lease more remains in the window;
    /// the window does not reset within a second of when the call is
    /// given up (`give_up_ms`: an answer in its last second keeps no
    /// lease, and hits asked for then would mostly go unused); no ask for
    /// the descriptor is out (an abandoned one an answer has counted is
    /// not: it quarters this ask like any other), nor an over-limit answer
    /// known for it now;
    /// and this lease was not asked ahead for already. Once per lease: an
    /// ask whose answer keeps nothing (a failed call, a refusal) leaves
    /// the held hits to the requests after it, which ask again only once
    /// they are spent, as without asking ahead; only a lease kept since
    /// ([`ServiceCache::grant_lease`]) is asked ahead for again. One ask
    /// at a time: the bound on what a burst reset together has counted
    /// stays as it is.
    pub fn ask_ahead(
        &mut self,
        digest: &[u8; 16],
        size: u32,
        now_ms: u64,
        give_up_ms: u64,
    ) -> bool {
        let due = self.leases.get(digest).is_some_and(|l| {
            !l.asked_ahead
                && l.remaining > 0
                && l.remaining < size / 4
                && l.live(now_ms)
                && l.service_remaining >= size
                && l.until_ms > give_up_ms.saturating_add(1000)
                // Its grant lifts the held hits back to a quarter of a
                // lease: an ask quartered by resets to a few hits would
                // otherwise leave them under it, and each answer kept
                // would have the next request ask ahead again (a call per
                // request while up to a quarter of a lease is held).
                // Never for one hit, which keeps nothing.
                && {
                    let kept = self.lease_ask(digest, size, now_ms).saturating_sub(1);
                    l.remaining.saturating_add(kept) >= size / 4
                }
        }) && self.get(digest, now_ms / 1000).is_none()
            && !self.asking.get(digest).is_some_and(|asks| {
                // An abandoned ask an answer counted is out no more: it
                // only quarters the asks (this one's too) for the rest of
                // its window, so that one reset does not turn asking
                // ahead off for that long (a day with `per: day`).
                asks.iter().any(|a| a.holds(now_ms) && !a.counted)
            });
        if due {
            if let Some(l) = self.leases.get_mut(digest) {
                l.asked_ahead = true;
            }
        }
        due
    }

    /// Whether this worker holds a leased hit of a descriptor at `now_ms`
    /// (without taking it).
    pub fn has_lease(&self, digest: &[u8; 16], now_ms: u64) -> bool {
        self.leases
            .get(digest)
            .is_some_and(|l| l.live(now_ms) && l.remaining > 0)
    }

    /// How many hits to ask the service for, for a descriptor whose rule
    /// leases `size`: `size`, or within the window of the last lease no
    /// more than the service said remained then, less the hits of the asks
    /// still in flight, and halved for each of those (at least 1, so that
    /// the service decides). An ask whose request went away counts twice
    /// while it holds (until an answer counted it, and after that for
    /// [`RESET_COOLDOWN_MS`] at least, to the end of that answer's window):
    /// a quarter of a lease after one, a
    /// sixteenth after two, and so on. With nothing known of what remains,
    /// 1 while another ask is in flight or held; 1 too within a second of
    /// the end of the last lease (or of an answer that kept nothing),
    /// whose window may not have reset yet, and always for a limit whose
    /// windows last a second or less (once an answer said so). Never more
    /// than the limit an over-limit answer named for it.
    pub fn lease_ask(&self, digest: &[u8; 16], size: u32, now_ms: u64) -> u32 {
        // No more than the limit the service last named for it (in an
        // over-limit answer, kept past its window while the table has
        // room): a lease above the limit is refused, and counted, at the
        // start of every window.
        let size = match self.map.get(digest) {
            Some(&(_, Some(limit), _)) => size.min(limit.max(1)),
            _ => size,
        };
        let (count, asked, abandoned) = self.asking.get(digest).map_or((0, 0u32, 0), |asks| {
            asks.iter()
                .filter(|a| a.holds(now_ms))
                .fold((0, 0u32, 0), |(n, h, gone), a| {
                    let hits = if a.counted { 0 } else { a.hits };
                    (
                        n + 1,
                        h.saturating_add(hits),
                        gone + usize::from(a.abandoned),
                    )
                })
        });
        if count >= MAX_ASKS {
            return 1;
        }
        match self.leases.get(digest) {
            // Halved for each ask in flight (a lease, a half, a quarter…):
            // requests sent side by side then reset before any answer, whose
            // hits the service counts all the same, have at most two leases
            // and a hit each counted between them, not a lease each. Halved
            // twice for each held ask whose request went away: a client
            // that resets its requests one after another has at most a
            // lease and a third counted for them in a window (a lease, a
            // quarter, a sixteenth…), and other clients' requests, while
            // one reset now and then holds, still take leases (a quarter
            // of one), not one call each.
            Some(l) if l.live(now_ms) => size
                .min(l.service_remaining.saturating_sub(asked))
                .checked_shr(u32::try_from(count + abandoned).unwrap_or(u32::MAX))
                .unwrap_or(0)
                .max(1),
            // Within a second of the end of the last lease (or of an
            // answer that kept nothing): its window may not have reset
            // yet (a whole-second answer's lease ends up to a second
            // before it), and a lease counted in it now would be kept by
            // no one. One hit, which the service decides; its answer says
            // when the next window starts.
            Some(l) if l.until_ms <= now_ms && now_ms < l.until_ms.saturating_add(1000) => 1,
            // A limit whose windows last a second at most: an answer in
            // whole seconds never keeps a lease of it, however long ago
            // the last one came (each ask for more than one would be
            // counted there and kept by no one).
            Some(l) if l.short_window() => 1,
            _ if count > 0 => 1,
            _ => size,
        }
    }

    /// Records an ask for `hits` sent at `sent_ms`, given up at `until_ms`
    /// if no answer ends it first ([`ServiceCache::end_ask`]).
    pub fn begin_ask(&mut self, digest: [u8; 16], sent_ms: u64, until_ms: u64, hits: u32) {
        // Full: descriptors held only by abandoned asks go first, so that
        // a client resetting requests over many descriptors cannot have
        // the asks in flight of everyone else wiped with them.
        make_room(&mut self.asking, OVER_LIMIT_ENTRIES, |asks| {
            asks.iter().any(|a| a.holds(sent_ms) && !a.abandoned)
        });
        let asks = self.asking.entry(digest).or_default();
        asks.retain(|a| a.holds(sent_ms));
        // Bounded: a client resetting every request would otherwise add an
        // ask an hour long for each. The oldest abandoned ones go first
        // (the others still quarter the asks: with 31 held, one hit);
        // asks in flight end with their call's timeout.
        while asks.len() >= MAX_ASKS {
            let Some(i) = asks.iter().position(|a| a.abandoned) else {
                break;
            };
            asks.remove(i);
        }
        asks.push(Ask {
            sent_ms,
            until_ms,
            hits,
            abandoned: false,
            counted: false,
        });
    }

    /// The request of the ask for `hits` sent at `sent_ms` went away before
    /// the answer. Its hits count as asked for until an answer for the
    /// descriptor says what remains ([`ServiceCache::grant_lease`]): the
    /// service counted them, most likely. Ending the ask instead let the
    /// next request ask for a whole lease again, so a client that sent
    /// requests and reset them had a lease counted for each: a handful
    /// spent a limit meant for every client of an app.
    pub fn abandon_ask(&mut self, digest: &[u8; 16], sent_ms: u64, hits: u32) {
        // Held to the end of the window the lease held when it was sent
        // names, when that is further than an hour (a `per: day` limit): a
        // client alone on a descriptor, resetting every request, would
        // otherwise have a lease and a third counted every hour.
        // With the lease's window over by then, to the end of the window
        // that follows it and holds `sent_ms` (windows follow each other;
        // a lease's end is up to a second before its window's, hence the
        // second more), when an answer said how long its windows are.
        let window_end = match self.leases.get(digest) {
            Some(l) if l.live(sent_ms) => l.until_ms,
            Some(l) if l.window_ms > 0 && l.until_ms <= sent_ms => {
                let windows = (sent_ms - l.until_ms) / l.window_ms + 1;
                l.until_ms
                    .saturating_add(windows.saturating_mul(l.window_ms))
                    .saturating_add(1000)
            }
            _ => 0,
        };
        if let Some(a) = self.asking.get_mut(digest).and_then(|asks| {
            asks.iter_mut()
                .find(|a| a.sent_ms == sent_ms && a.hits == hits && !a.abandoned)
        }) {
            a.abandoned = true;
            a.until_ms = sent_ms.saturating_add(ABANDONED_ASK_MS).max(window_end);
        }
    }

    /// The service named the limit of a leased descriptor, whose windows
    /// last `window_ms` (its unit's): remembered with the worker's lease
    /// of it, if any, for the reset asks sent once that lease's window is
    /// over ([`ServiceCache::abandon_ask`]).
    ///
    /// A limit of windows of a second or less is remembered even where no
    /// lease is (its answer was a refusal): its asks are then for one hit
    /// ([`ServiceCache::lease_ask`]), as no lease of it is ever kept.
    pub fn note_window(&mut self, digest: &[u8; 16], window_ms: u64) {
        if let Some(l) = self.leases.get_mut(digest) {
            l.window_ms = window_ms;
        } else if (1..=1000).contains(&window_ms) && self.leases.len() < OVER_LIMIT_ENTRIES {
            // Not when the table is full: the next lease granted makes room.
            self.leases.insert(
                *digest,
                Lease {
                    remaining: 0,
                    until_ms: 0,
                    service_remaining: 0,
                    granted_ms: 0,
                    asked_ahead: false,
                    window_ms,
                },
            );
        }
    }

    /// The service answered, for the descriptor, a call sent at `sent_ms`
    /// (allowed or over the limit): what it said already counts the hits of
    /// abandoned asks sent before that call, which hold nothing of what
    /// remains back any more, and still quarter the next asks for
    /// [`RESET_COOLDOWN_MS`] (and to the end of that answer's window).
    /// Those sent after it may not be counted in it yet.
    /// `window_end_ms`: when the window the answer counted in ends, where
    /// its status for the descriptor says (allowed or not: a call refused
    /// for another descriptor counts this one too).
    pub fn answered(&mut self, digest: &[u8; 16], sent_ms: u64, window_end_ms: Option<u64>) {
        if let Some(asks) = self.asking.get_mut(digest) {
            let until = sent_ms
                .saturating_add(RESET_COOLDOWN_MS)
                .max(window_end_ms.unwrap_or(0));
            for a in asks
                .iter_mut()
                .filter(|a| a.abandoned && !a.counted && a.sent_ms < sent_ms)
            {
                a.counted = true;
                a.until_ms = until;
            }
        }
    }

    /// Ends the ask for `hits` sent at `sent_ms` (answered, or failed).
    pub fn end_ask(&mut self, digest: &[u8; 16], sent_ms: u64, hits: u32) {
        if let Some(asks) = self.asking.get_mut(digest) {
            if let Some(i) = asks
                .iter()
                .position(|a| a.sent_ms == sent_ms && a.hits == hits && !a.abandoned)
            {
                asks.swap_remove(i);
            }
            if asks.is_empty() {
                self.asking.remove(digest);
            }
        }
    }

    /// Records a lease: the service counted `hits` for the descriptor and
    /// allowed it; one went to the request that asked, the rest are this
    /// worker's until `until_ms`. `service_remaining` is the status's
    /// `limit_remaining`. An answer whose `until_ms` is not after `now_ms`
    /// keeps none; unless a live lease is held, it is remembered as a
    /// lease of none that ended then (see [`ServiceCache::lease_ask`]).
    pub fn grant_lease(
        &mut self,
        digest: [u8; 16],
        hits: u32,
        service_remaining: u32,
        until_ms: u64,
        now_ms: u64,
    ) {
        if until_ms <= now_ms {
            // The answer's window ends (or, in whole seconds, may end)
            // before the hits could be used: none is kept. It is
            // remembered as a lease of none that ended then (unless one
            // is still held), so that the next asks, for a second, are for
            // one hit ([`ServiceCache::lease_ask`]): each would otherwise
            // ask for (and have counted) a whole lease and keep nothing,
            // request after request, in the last second of every window
            // (and always, for a per-second limit).
            let held = self.leases.get(&digest).copied();
            if !held.is_some_and(|h| h.live(now_ms)) {
                make_lease_room(&mut self.leases, now_ms);
                self.leases.insert(
                    digest,
                    Lease {
                        remaining: 0,
                        until_ms,
                        service_remaining,
                        granted_ms: now_ms,
                        asked_ahead: false,
                        window_ms: held.map_or(0, |h| h.window_ms),
                    },
                );
            }
            return;
        }
        let mut lease = Lease {
            remaining: hits.saturating_sub(1),
            until_ms,
            service_remaining,
            granted_ms: now_ms,
            asked_ahead: false,
            window_ms: 0,
        };
        // Calls made side by side (concurrent requests before the first
        // answer) each bring hits: they add up, and all of them expire at
        // the earliest window end, so none outlives the window that
        // counted it. Within a window the service's count only rises, so
        // the smallest remainder it named is the latest, whatever order
        // the answers came back in.
        if let Some(held) = self.leases.get(&digest) {
            // The window length an answer named outlives the lease.
            lease.window_ms = held.window_ms;
            if held.live(now_ms) {
                lease.remaining = lease.remaining.saturating_add(held.remaining);
                lease.until_ms = lease.until_ms.min(held.until_ms);
                lease.service_remaining = lease.service_remaining.min(held.service_remaining);
                lease.granted_ms = lease.granted_ms.min(held.granted_ms);
                // A grant of one hit keeps none: the held lease was not
                // renewed, and is not asked ahead for again.
                lease.asked_ahead = held.asked_ahead && hits <= 1;
            }
        }
        make_lease_room(&mut self.leases, now_ms);
        self.leases.insert(digest, lease);
    }
}

/// Keeps the lease table under [`OVER_LIMIT_ENTRIES`] before an insert,
/// as [`make_room`] does, dropping first the leases that expired and say
/// nothing more, then (while the table stays over seven eighths full) the
/// entries that only say their limit's windows last a second or less, and
/// only then live leases. The per-second entries outlive a purge of
/// expired leases (else the next ask of each would be for a whole lease,
/// counted and kept by no one), and never push live leases out.
fn make_lease_room(leases: &mut HashMap<[u8; 16], Lease>, now_ms: u64) {
    if leases.len() >= OVER_LIMIT_ENTRIES {
        leases.retain(|_, l| l.live(now_ms) || l.short_window());
        if leases.len() > OVER_LIMIT_ENTRIES - OVER_LIMIT_ENTRIES / 8 {
            leases.retain(|_, l| l.live(now_ms));
        }
    }
    make_room(leases, OVER_LIMIT_ENTRIES, |l| l.live(now_ms));
}

/// Keeps a per-worker table under `max` entries before an insert (the
/// service cache's three tables, the negative cache's two): when full,
/// drops the entries no longer `live` and then, while more than seven
/// eighths of `max` remain, live ones in the map's order (arbitrary: the
/// hasher is seeded per VM).
///
/// Each scan leaves room for at least `max / 8` inserts, so a full table
/// is scanned at most once per `max / 8` of them however its entries
/// expire (dropping only what had just expired left it full again after
/// one insert: a scan of the whole table on every insert), and a flood of
/// new entries pushes out an eighth at a time, never everything at once.
pub(crate) fn make_room<K, V>(map: &mut HashMap<K, V>, max: usize, live: impl Fn(&V) -> bool) {
    if map.len() < max {
        return;
    }
    map.retain(|_, v| live(v));
    let mut excess = map.len().saturating_sub(max - max / 8);
    if excess > 0 {
        map.retain(|_, _| {
            let keep = excess == 0;
            excess = excess.saturating_sub(1);
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::store::MemStore;

    const SALT: BucketSalt = BucketSalt::new([1; 16]);

    #[test]
    fn a_full_table_is_scanned_once_per_eighth_and_never_emptied() {
        // Full of live entries: an eighth goes, not everything.
        let max = 64;
        let mut map: HashMap<u64, u64> = (0..max as u64).map(|i| (i, u64::MAX)).collect();
        make_room(&mut map, max, |_| true);
        assert_eq!(map.len(), max - max / 8);
        // Dead entries go first: a live one stays while dead ones are enough.
        let mut map: HashMap<u64, u64> = (0..max as u64).map(|i| (i, i % 2)).collect();
        make_room(&mut map, max, |&v| v == 1);
        assert_eq!(map.len(), max / 2);
        assert!(map.values().all(|&v| v == 1));
        // One entry expires per insert (entry `i` lives until `i`): a table
        // kept full that way is scanned once per eighth of it, not on every
        // insert.
        let mut map: HashMap<u64, u64> = (0..max as u64).map(|i| (i, i)).collect();
        let mut scans = 0;
        for now in 0..1_000u64 {
            let before = map.len();
            make_room(&mut map, max, |&until| until > now);
            scans += usize::from(map.len() < before);
            assert!(map.len() < max);
            map.insert(max as u64 + now, max as u64 + now);
        }
        assert!(scans <= 1_000 / (max / 8) + 1, "{scans} scans");
    }

    #[test]
    fn fixed_values_are_the_route_name_and_literals_only() {
        let json = r#"{"rate_limit_service":{"cluster":"rls","domain":"d"},
            "routes":[{"name":"sms","match":{"path":"/sms"},"rate_limits":[
            {"name":"r","entries":[{"type":"route","key":"where"},
                {"type":"value","key":"rule","value":"burst"},
                {"type":"client_ip"},{"type":"header","name":"x-tenant"},
                {"type":"body","pointer":"/to"}]}]}]}"#;
        let config = crate::config::Config::from_json(json.as_bytes()).unwrap();
        let entries = &config.routes[0].rate_limits[0].entries;
        let fixed: Vec<(&str, Option<&str>)> = entries
            .iter()
            .map(|e| (e.key.as_str(), e.fixed_value("sms")))
            .collect();
        assert_eq!(
            fixed,
            [
                ("where", Some("sms")),
                ("rule", Some("burst")),
                ("client_ip", None),
                ("x-tenant", None),
                ("body", None),
            ]
        );
    }

    #[test]
    fn a_lease_ends_when_the_clock_is_set_back() {
        // The lease's window is measured on the clock as it was: set back
        // an hour, its hits would be used in windows the service never
        // counted them in, for that hour.
        let mut c = ServiceCache::new(&SALT);
        let d = [10u8; 16];
        let t = 10_000_000;
        c.grant_lease(d, 20, 80, t + 59_000, t);
        assert!(c.take_lease(&d, t + 1));
        let back = t - 3_600_000;
        assert!(!c.has_lease(&d, back));
        assert!(!c.take_lease(&d, back + 1_800_000), "half an hour later");
        assert_eq!(c.lease_ask(&d, 20, back), 20, "nothing known: a full ask");
        // Under a second behind (another worker's clock reading): kept.
        assert!(c.take_lease(&d, t - 500));
    }

    // The per-second memory of dfc818c (`note_window`'s
    // entry of no lease, and the lease of none an answer in whole seconds
    // leaves) is "not live" to `make_room`: the first grant into a full
    // table drops it with the leases that merely expired, and the
    // descriptor then asks for (and has counted) a whole lease again. On a
    // busy worker whose other leased rules (per client, per minute) fill
    // the table with expired leases, that is every time it fills.
    #[test]
    fn a_per_second_limit_is_remembered_past_a_full_table() {
        let mut c = ServiceCache::new(&SALT);
        let t = 1_700_000_000_000;
        let a = [0xA5u8; 16];
        // A genuine client's per-second limit: its answer kept nothing and
        // said the windows last a second.
        c.grant_lease(a, 20, 80, t, t);
        c.note_window(&a, 1000);
        assert_eq!(c.lease_ask(&a, 20, t + 5_000), 1, "known per second");
        // Clients of a per-minute rule, each granted a lease, until the
        // table is full; a minute later all of them have expired.
        let mut i = 0u32;
        while c.leases.len() < OVER_LIMIT_ENTRIES {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.grant_lease(k, 20, 80, t + 60_000, t + 1_000);
            c.note_window(&k, 60_000);
            i += 1;
        }
        // One more lease granted later: room is made.
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&i.to_le_bytes());
        c.grant_lease(k, 20, 80, t + 120_000, t + 61_000);
        assert_eq!(
            c.lease_ask(&a, 20, t + 62_000),
            1,
            "the per-second limit was forgotten with the expired leases ({} left): the \
             genuine client's next request has a whole lease counted",
            c.leases.len()
        );
        // And a flood of per-second descriptors never pushes a live lease
        // out, nor grows the table past its bound.
        let live = [0x5Au8; 16];
        c.grant_lease(live, 20, 80, t + 200_000, t + 62_000);
        for j in 0..2 * OVER_LIMIT_ENTRIES as u32 {
            let mut k = [0xFFu8; 16];
            k[..4].copy_from_slice(&j.to_le_bytes());
            c.grant_lease(k, 20, 80, t + 63_000, t + 63_000);
            c.note_window(&k, 1000);
        }
        assert!(c.has_lease(&live, t + 63_000));
        assert!(c.leases.len() <= OVER_LIMIT_ENTRIES, "{}", c.leases.len());
    }

    #[test]
    fn leases_add_up_and_expire_with_the_earliest_window() {
        let mut c = ServiceCache::new(&SALT);
        let d = [9u8; 16];
        let t = 1_000_000;
        assert!(!c.take_lease(&d, t), "none held");
        assert_eq!(c.lease_ask(&d, 5, t), 5);
        // Two calls side by side: 5 and 5 hits, one used by each request.
        c.grant_lease(d, 5, 40, t + 900, t);
        c.grant_lease(d, 5, 35, t + 1_000, t);
        for i in 0..8 {
            assert!(c.take_lease(&d, t + 10), "hit {i}");
        }
        assert!(!c.take_lease(&d, t + 10), "8 kept in all");
        assert_eq!(c.lease_ask(&d, 50, t + 10), 35, "the latest remaining");
        assert_eq!(c.lease_ask(&d, 5, t + 10), 5);
        c.grant_lease(d, 3, 0, t + 1_000, t + 20);
        assert_eq!(c.lease_ask(&d, 5, t + 20), 1, "none left: ask for one");
        // The earliest window end holds for all of them.
        assert!(!c.take_lease(&d, t + 900));
        // Within a second of its end the window may not have reset (a
        // whole-second answer's lease ends up to a second before it): a
        // lease asked then would be counted and kept by no one.
        assert_eq!(c.lease_ask(&d, 5, t + 900), 1, "maybe the same window");
        assert_eq!(c.lease_ask(&d, 5, t + 1_900), 5, "a new window");
        // An answer that arrives after its window ended keeps nothing.
        c.grant_lease(d, 5, 40, t + 1_000, t + 1_000);
        assert!(!c.take_lease(&d, t + 1_000));
        // A full table drops expired leases first: filled up to the
        // brim, half of it expiring at t + 2 s.
        let held = c.leases.len();
        for i in 0..(OVER_LIMIT_ENTRIES - held) as u32 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.grant_lease(k, 2, 1, t + 2_000 + u64::from(i % 2) * 10_000, t + 1_000);
        }
        assert_eq!(c.leases.len(), OVER_LIMIT_ENTRIES);
        c.grant_lease(d, 2, 1, t + 20_000, t + 5_000);
        assert!(c.take_lease(&d, t + 5_000));
        assert!(
            c.leases.len() <= OVER_LIMIT_ENTRIES / 2 + 1,
            "{}",
            c.leases.len()
        );
    }

    #[test]
    fn answers_out_of_order_keep_the_smallest_remainder() {
        // Three asks of 3 counted in the order A, B, C (7, 4 and 1 left),
        // answered C, B, A: the service's count only rises, so 1 is what
        // remains, and the next ask is for no more.
        let mut c = ServiceCache::new(&SALT);
        let d = [7u8; 16];
        let t = 1_000_000;
        c.grant_lease(d, 3, 1, t + 30_000, t + 5);
        c.grant_lease(d, 3, 4, t + 30_000, t + 6);
        c.grant_lease(d, 3, 7, t + 30_000, t + 7);
        for i in 0..6 {
            assert!(c.take_lease(&d, t + 10), "hit {i}");
        }
        assert!(!c.has_lease(&d, t + 10));
        assert_eq!(c.lease_ask(&d, 3, t + 20), 1);
    }

    #[test]
    fn an_ask_in_flight_makes_the_others_ask_for_one_until_it_ends_or_is_given_up() {
        let mut c = ServiceCache::new(&SALT);
        let (d, other) = ([3u8; 16], [4u8; 16]);
        let t = 1_000_000;
        assert_eq!(c.lease_ask(&d, 5, t), 5);
        c.begin_ask(d, t, t + 100, 5);
        assert_eq!(c.lease_ask(&d, 5, t + 1), 1, "nothing known: one ask");
        assert_eq!(c.lease_ask(&other, 5, t + 1), 5, "per descriptor");
        // Given up when the call's timeout passed (its request went away).
        assert_eq!(c.lease_ask(&d, 5, t + 100), 5);
        // A later ask is not ended by the answer to an earlier one.
        c.begin_ask(d, t + 100, t + 200, 5);
        c.end_ask(&d, t, 5);
        assert_eq!(c.lease_ask(&d, 5, t + 101), 1);
        c.end_ask(&d, t + 100, 5);
        assert_eq!(c.lease_ask(&d, 5, t + 101), 5, "answered");
        // Bounded like the other tables.
        for i in 0..2 * OVER_LIMIT_ENTRIES as u32 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.begin_ask(k, t + 300, t + 400, 2);
        }
        assert!(c.asking.len() <= OVER_LIMIT_ENTRIES, "{}", c.asking.len());
    }

    #[test]
    fn an_abandoned_ask_holds_back_the_next_asks_until_an_answer() {
        // A client sends requests on a leased descriptor and resets each
        // while its call is out: the service counted every call's hits.
        let mut c = ServiceCache::new(&SALT);
        let d = [5u8; 16];
        let t = 1_000_000;
        assert_eq!(c.lease_ask(&d, 100, t), 100);
        c.begin_ask(d, t, t + 100, 100);
        c.abandon_ask(&d, t, 100);
        assert_eq!(c.lease_ask(&d, 100, t + 1), 1, "not a second lease");
        // ... past its timeout too: nothing has said what remains
        assert_eq!(c.lease_ask(&d, 100, t + 10_000), 1);
        c.begin_ask(d, t + 10_000, t + 10_100, 1);
        c.abandon_ask(&d, t + 10_000, 1);
        assert_eq!(c.lease_ask(&d, 100, t + 10_001), 1);
        // The answer to a call sent before them says nothing of them.
        c.answered(&d, t - 1, None);
        assert_eq!(c.lease_ask(&d, 100, t + 10_001), 1);
        // The next answer (for one hit, 850 remaining) says what remains:
        // the abandoned hits are in it. For a cooldown after it, each of
        // the two abandoned asks quarters the next asks (a sixteenth of a
        // lease), then they go on from it: a client resetting every other
        // request would otherwise have a lease counted for each.
        c.begin_ask(d, t + 10_002, t + 10_102, 1);
        c.end_ask(&d, t + 10_002, 1);
        c.answered(&d, t + 10_002, Some(t + 60_000));
        c.grant_lease(d, 1, 850, t + 60_000, t + 10_003);
        assert_eq!(c.lease_ask(&d, 100, t + 10_004), 100 / 16);
        // Past the lease's window, nothing is known of what remains: one
        // hit while the cooldown holds.
        assert_eq!(c.lease_ask(&d, 100, t + 10_002 + RESET_COOLDOWN_MS - 1), 1);
        let t2 = t + 10_002 + RESET_COOLDOWN_MS;
        c.grant_lease(d, 1, 850, t2 + 60_000, t2);
        assert_eq!(c.lease_ask(&d, 100, t2), 100);
        // With a remainder known, an abandoned ask counts against it until
        // an answer counts it.
        c.begin_ask(d, t2 + 1, t2 + 101, 100);
        c.abandon_ask(&d, t2 + 1, 100);
        c.answered(&d, t2 + 2, Some(t2 + 60_000));
        c.grant_lease(d, 1, 120, t2 + 60_000, t2 + 2);
        assert_eq!(c.lease_ask(&d, 100, t2 + 3), 25, "the cooldown");
        let t3 = t2 + 2 + RESET_COOLDOWN_MS;
        c.grant_lease(d, 1, 120, t3 + 60_000, t3);
        assert_eq!(c.lease_ask(&d, 100, t3), 100, "cleared by the answer");
        c.begin_ask(d, t3 + 1, t3 + 101, 100);
        c.abandon_ask(&d, t3 + 1, 100);
        assert_eq!(
            c.lease_ask(&d, 100, t3 + 10_000),
            5,
            "a quarter of the 20 that remain, less the 100 the abandoned ask holds"
        );
        // With no answer, it holds for an hour, then is let go (and can be
        // evicted like any ask past its time).
        let d2 = [6u8; 16];
        c.begin_ask(d2, t, t + 100, 100);
        c.abandon_ask(&d2, t, 100);
        assert_eq!(c.lease_ask(&d2, 100, t + ABANDONED_ASK_MS - 1), 1);
        assert_eq!(c.lease_ask(&d2, 100, t + ABANDONED_ASK_MS), 100);
        // Two asks of the same ms and size, one abandoned: the answer to
        // the other ends that one, not the abandoned twin.
        let d3 = [7u8; 16];
        c.begin_ask(d3, t, t + 100, 5);
        c.begin_ask(d3, t, t + 100, 5);
        c.abandon_ask(&d3, t, 5);
        c.end_ask(&d3, t, 5);
        assert_eq!(
            c.lease_ask(&d3, 100, t + 1_000),
            1,
            "the abandoned one holds"
        );
        // Full of descriptors held only by abandoned asks: those go, and an
        // ask in flight of another descriptor stays.
        let mut c = ServiceCache::new(&SALT);
        let busy = [8u8; 16];
        c.begin_ask(busy, t, t + 100, 5);
        for i in 0..OVER_LIMIT_ENTRIES as u32 {
            let mut k = [1u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.begin_ask(k, t, t + 100, 5);
            c.abandon_ask(&k, t, 5);
        }
        assert!(c.asking.len() <= OVER_LIMIT_ENTRIES);
        assert_eq!(
            c.lease_ask(&busy, 5, t + 1),
            1,
            "its ask is still in flight"
        );
    }

    #[test]
    fn the_next_lease_is_asked_for_ahead_while_a_quarter_is_left() {
        // A lease of 100 (99 kept, one went to the request that asked)
        // with 1,000 left at the service: 75 hits are taken; with 24
        // left, one request asks for the next lease while the others go
        // on taking the kept hits.
        let mut c = ServiceCache::new(&SALT);
        let d = [9u8; 16];
        let t = 1_000_000;
        c.grant_lease(d, 100, 1_000, t + 60_000, t);
        for i in 0..75 {
            assert!(!ahead(&mut c, &d, 100, t + 1), "hit {i}");
            assert!(c.take_lease(&d, t + 1));
        }
        assert!(ahead(&mut c, &d, 100, t + 2), "24 left");
        assert_eq!(c.lease_ask(&d, 100, t + 2), 100);
        c.begin_ask(d, t + 2, t + 1_000, 100);
        // One ask at a time: the others take the 24 kept hits.
        for _ in 0..24 {
            assert!(!ahead(&mut c, &d, 100, t + 3));
            assert!(c.take_lease(&d, t + 3));
        }
        assert!(!c.take_lease(&d, t + 3), "spent before the answer");
        c.end_ask(&d, t + 2, 100);
        c.grant_lease(d, 100, 900, t + 60_000, t + 4);
        assert!(!ahead(&mut c, &d, 100, t + 5), "99 held");
        // Not ahead of the service's limit: with less than a lease left
        // there, the lease runs out first, as before.
        let e = [10u8; 16];
        c.grant_lease(e, 100, 50, t + 60_000, t);
        for _ in 0..80 {
            assert!(c.take_lease(&e, t + 1));
        }
        assert!(!ahead(&mut c, &e, 100, t + 1), "50 left at the service");
        // Nor with an over-limit answer known for it, nor for a lease
        // too small to have a quarter.
        let f = [11u8; 16];
        c.grant_lease(f, 100, 1_000, t + 60_000, t);
        for _ in 0..80 {
            assert!(c.take_lease(&f, t + 1));
        }
        c.insert(f, t / 1000 + 30, Some(10), t / 1000);
        assert!(!ahead(&mut c, &f, 100, t + 1), "over limit known");
        let g = [12u8; 16];
        c.grant_lease(g, 4, 1_000, t + 60_000, t);
        assert!(c.take_lease(&g, t + 1));
        assert!(c.take_lease(&g, t + 1));
        assert!(!ahead(&mut c, &g, 4, t + 1), "1 of 4 left");
    }

    /// [`ServiceCache::ask_ahead`] for a call given up a second after
    /// `now_ms`.
    fn ahead(c: &mut ServiceCache, d: &[u8; 16], size: u32, now_ms: u64) -> bool {
        c.ask_ahead(d, size, now_ms, now_ms + 1_000)
    }

    #[test]
    fn a_lease_is_asked_ahead_for_once_and_again_only_after_a_lease_is_kept() {
        let mut c = ServiceCache::new(&SALT);
        let d = [15u8; 16];
        let t: u64 = 1_000_000_000;
        c.grant_lease(d, 100, 1_000, t + 60_000, t);
        for _ in 0..80 {
            assert!(c.take_lease(&d, t + 1));
        }
        assert!(ahead(&mut c, &d, 100, t + 2), "19 left");
        let hits = c.lease_ask(&d, 100, t + 2);
        c.begin_ask(d, t + 2, t + 1_002, hits);
        // The call fails (or is refused): nothing kept, nothing learnt.
        c.end_ask(&d, t + 2, hits);
        for i in 0..19 {
            assert!(
                !ahead(&mut c, &d, 100, t + 10 + i),
                "asked ahead again at hit {i}"
            );
            assert!(c.take_lease(&d, t + 10 + i), "a held hit {i}");
        }
        assert!(!c.has_lease(&d, t + 30), "spent: the next request asks");
        // A lease kept (the next request's ask): asked ahead for again once
        // under a quarter of it is left.
        c.grant_lease(d, 100, 800, t + 60_000, t + 40);
        for _ in 0..75 {
            assert!(!ahead(&mut c, &d, 100, t + 41));
            assert!(c.take_lease(&d, t + 41));
        }
        assert!(ahead(&mut c, &d, 100, t + 42), "a new lease");
        assert!(!ahead(&mut c, &d, 100, t + 43), "once");
    }

    /// A lease of `size` at `t` (the service said 100 leases remain),
    /// four asks reset side by side and counted by an answer, a one-hit
    /// grant, then eight tenths of the held hits used: the asks are now
    /// quartered four times.
    fn after_four_counted_resets(c: &mut ServiceCache, d: [u8; 16], size: u32, t: u64) {
        let hour = 3_600_000;
        c.grant_lease(d, size, size * 100, t + hour, t);
        for i in 0..4 {
            let hits = c.lease_ask(&d, size, t + 1 + i);
            c.begin_ask(d, t + 1 + i, t + 101 + i, hits);
            c.abandon_ask(&d, t + 1 + i, hits);
        }
        c.answered(&d, t + 10, Some(t + hour));
        c.grant_lease(d, 1, size * 90, t + hour, t + 11);
        for _ in 0..size * 8 / 10 {
            assert!(c.take_lease(&d, t + 12));
        }
    }

    /// 18 requests one after another from `t + 20`: each asks ahead and has
    /// its lease granted, or takes a held hit. How many asked ahead.
    fn asks_ahead_of_18_requests(c: &mut ServiceCache, d: [u8; 16], size: u32, t: u64) -> u32 {
        let hour = 3_600_000;
        let mut calls = 0;
        for i in 0..18 {
            let now = t + 20 + i * 10;
            if ahead(c, &d, size, now) {
                calls += 1;
                let hits = c.lease_ask(&d, size, now);
                c.begin_ask(d, now, now + 100, hits);
                c.end_ask(&d, now, hits);
                c.answered(&d, now, Some(t + hour));
                c.grant_lease(d, hits, size * 80, t + hour, now + 5);
            } else {
                assert!(c.take_lease(&d, now), "a held hit at {i}");
            }
        }
        calls
    }

    // A re-review of review58-leases' L1 fix: with counted resets holding
    // (they no longer stop asking ahead), enough of them quarter the ask
    // down to one hit. Such an ask ahead kept nothing, its one-hit grant
    // cleared the once-per-lease mark, and each request then asked ahead
    // again: a call per request while hits were held.
    #[test]
    fn no_lease_is_asked_ahead_for_a_single_hit() {
        let mut c = ServiceCache::new(&SALT);
        let d = [18u8; 16];
        let t: u64 = 1_000_000_000;
        let hour = 3_600_000;
        after_four_counted_resets(&mut c, d, 100, t);
        assert_eq!(c.lease_ask(&d, 100, t + 13), 1, "quartered four times");
        let calls = asks_ahead_of_18_requests(&mut c, d, 100, t);
        assert_eq!(
            calls, 0,
            "{calls} one-hit asks ahead while 18 hits were held"
        );
        // A one-hit grant keeps the mark of an ask ahead made for more.
        let e = [19u8; 16];
        c.grant_lease(e, 100, 10_000, t + hour, t);
        for _ in 0..80 {
            assert!(c.take_lease(&e, t + 1));
        }
        assert!(ahead(&mut c, &e, 100, t + 2));
        c.grant_lease(e, 1, 9_000, t + hour, t + 3);
        assert!(!ahead(&mut c, &e, 100, t + 4), "asked ahead already");
    }

    // review58-leasefix F1: a9bd129 stops asks ahead for one hit, but an
    // ask ahead quartered down to two or three hits loops the same way: its
    // grant keeps one or two hits, clears the once-per-lease mark, and the
    // held hits stay under a quarter of the rule's lease, so the next
    // request asks ahead again: a call per request while the worker holds
    // a couple of hundred hits (a lease of 1,000 after four counted
    // resets: 1,000 >> 8 = 3 hits an ask).
    #[test]
    fn no_lease_is_asked_ahead_for_a_few_hits_while_many_are_held() {
        let mut c = ServiceCache::new(&SALT);
        let d = [20u8; 16];
        let t: u64 = 1_000_000_000;
        after_four_counted_resets(&mut c, d, 1_000, t);
        assert_eq!(c.lease_ask(&d, 1_000, t + 13), 3, "quartered four times");
        let calls = asks_ahead_of_18_requests(&mut c, d, 1_000, t);
        assert_eq!(
            calls, 0,
            "{calls} asks ahead for 3 hits in 18 requests while 199 or more hits were held"
        );
    }

    #[test]
    fn no_lease_is_asked_ahead_for_in_the_last_second_before_its_window_resets() {
        let mut c = ServiceCache::new(&SALT);
        let d = [16u8; 16];
        let t: u64 = 1_000_000_000;
        c.grant_lease(d, 100, 1_000, t + 60_000, t);
        for _ in 0..80 {
            assert!(c.take_lease(&d, t + 1));
        }
        // A call given up at t + 59,000 + 500 may answer in the window's
        // last second: its lease would not be kept.
        assert!(!c.ask_ahead(&d, 100, t + 59_000, t + 59_500));
        assert!(!c.ask_ahead(&d, 100, t + 58_400, t + 59_000));
        assert!(c.ask_ahead(&d, 100, t + 58_400, t + 58_900));
    }

    // review57-lease F1: an over-limit answer whose window has reset is kept
    // in `map` (for `lease_ask`'s cap) but is no longer "known": it must not
    // turn asking ahead off for the descriptor for good.
    #[test]
    fn an_over_limit_answer_of_a_past_window_does_not_stop_asking_ahead() {
        let mut c = ServiceCache::new(&SALT);
        let d = [13u8; 16];
        let t: u64 = 1_000_000_000;
        // Refused in the last window, which reset a second ago.
        c.insert(d, t / 1000 - 1, Some(10_000), t / 1000 - 30);
        assert_eq!(c.until(&d, t / 1000), None, "not over the limit now");
        c.grant_lease(d, 100, 1_000, t + 60_000, t);
        for _ in 0..80 {
            assert!(c.take_lease(&d, t + 1));
        }
        assert_eq!(c.lease_ask(&d, 100, t + 2), 100);
        assert!(
            ahead(&mut c, &d, 100, t + 2),
            "19 of 100 left, 1,000 at the service, no ask out, not over the limit"
        );
    }

    // review57-lease F2: an ask ahead whose answer keeps no lease (here the
    // service answered in the last second of its window: window 0) must not
    // be made again by every following request while hits are held: each
    // such ask is counted (`size` hits) by the service and thrown away.
    #[test]
    fn an_ask_ahead_whose_lease_is_not_kept_is_not_repeated_for_each_request() {
        let mut c = ServiceCache::new(&SALT);
        let d = [14u8; 16];
        let t: u64 = 1_000_000_000;
        c.grant_lease(d, 100, 1_000, t + 60_000, t);
        for _ in 0..80 {
            assert!(c.take_lease(&d, t + 1));
        }
        let mut counted = 0;
        for i in 0..10 {
            let now = t + 59_000 + i * 10;
            if ahead(&mut c, &d, 100, now) {
                let hits = c.lease_ask(&d, 100, now);
                counted += hits;
                c.begin_ask(d, now, now + 100, hits);
                // As `rls_verdict`: the ask ends, the answer is recorded, and
                // its window (1 s in whole seconds, less a second) is over.
                c.end_ask(&d, now, hits);
                c.answered(&d, now, Some(now));
                c.grant_lease(d, hits, 1_000 - counted, now, now + 5);
            } else {
                assert!(c.take_lease(&d, now), "a held hit at {i}");
            }
        }
        assert!(
            counted <= 100,
            "{counted} hits asked ahead (all counted, none kept) by 10 requests, 19 hits held"
        );
    }

    #[test]
    fn with_a_known_remainder_asks_side_by_side_share_it() {
        // The service said 250 remain: asks in flight share it, each
        // halved for every ask already out (a lease, a half, a quarter…),
        // so that side by side they ask for at most two leases, and never
        // more than the 250 left.
        let mut c = ServiceCache::new(&SALT);
        let d = [5u8; 16];
        let t = 1_000_000;
        c.grant_lease(d, 100, 250, t + 60_000, t);
        for _ in 0..99 {
            assert!(c.take_lease(&d, t + 1));
        }
        let mut asked = Vec::new();
        for i in 0..5 {
            let hits = c.lease_ask(&d, 100, t + 2 + i);
            if hits > 1 {
                c.begin_ask(d, t + 2 + i, t + 1_000, hits);
            }
            asked.push(hits);
        }
        assert_eq!(asked, [100, 50, 25, 9, 4]);
        // The first answer in: its ask ends, and its hits are held; 88 are
        // still asked for in four asks.
        c.end_ask(&d, t + 2, 100);
        c.grant_lease(d, 100, 150, t + 60_000, t + 10);
        assert_eq!(c.lease_ask(&d, 100, t + 11), 3, "(150 - 88) / 2^4");
        // Little left: what remains less what is asked, halved.
        let f = [7u8; 16];
        c.grant_lease(f, 100, 30, t + 60_000, t);
        c.begin_ask(f, t + 1, t + 1_000, 20);
        assert_eq!(c.lease_ask(&f, 100, t + 2), 5, "(30 - 20) / 2");
        c.begin_ask(f, t + 2, t + 1_000, 5);
        assert_eq!(c.lease_ask(&f, 100, t + 3), 1, "(30 - 25) / 4");
        // Too many asks at once: single hits.
        let e = [6u8; 16];
        c.grant_lease(e, 2, u32::MAX, t + 60_000, t);
        for i in 0..MAX_ASKS as u64 {
            c.begin_ask(e, t + i, t + 1_000, 2);
        }
        assert_eq!(c.lease_ask(&e, 2, t + 100), 1);
    }

    /// A token taken at `taken_ms`, given back at `now_ms`.
    fn at(taken_ms: u64, now_ms: u64) -> TakenAt {
        TakenAt { taken_ms, now_ms }
    }

    #[test]
    fn a_token_given_back_after_the_bucket_refilled_adds_nothing() {
        // Five requests take a 5-a-second bucket and wait on the rate-limit
        // service for a second; meanwhile it refills and the client spends
        // the refill. Their tokens, given back then, must not be spent a
        // second time: ten at once against a limit of five.
        let s = MemStore::default();
        let limit = LocalLimit {
            requests: 5,
            per_seconds: 1,
            ..Default::default()
        };
        let d = [8u8; 16];
        let t = 2_000_000;
        for _ in 0..5 {
            assert!(take_local(&s, &SALT, &d, limit, t).unwrap().allowed);
        }
        for _ in 0..5 {
            assert!(take_local(&s, &SALT, &d, limit, t + 1_000).unwrap().allowed);
        }
        for _ in 0..5 {
            give_back_local(&s, &SALT, &d, limit, false, at(t, t + 1_000)).unwrap();
        }
        assert!(!take_local(&s, &SALT, &d, limit, t + 1_000).unwrap().allowed);
        // Given back a tenth of a second after it was taken, a token is
        // worth the half the bucket has not refilled since (a token is
        // 200 ms of refill here): with the half refilled, one request.
        let e = [9u8; 16];
        for _ in 0..5 {
            assert!(take_local(&s, &SALT, &e, limit, t).unwrap().allowed);
        }
        give_back_local(&s, &SALT, &e, limit, false, at(t, t + 100)).unwrap();
        assert!(take_local(&s, &SALT, &e, limit, t + 100).unwrap().allowed);
        assert!(!take_local(&s, &SALT, &e, limit, t + 100).unwrap().allowed);
        // Another half alone is not a request.
        give_back_local(&s, &SALT, &e, limit, false, at(t, t + 100)).unwrap();
        assert!(!take_local(&s, &SALT, &e, limit, t + 100).unwrap().allowed);
    }

    #[test]
    fn a_token_given_back_is_taken_again_and_never_fills_past_the_limit() {
        let s = MemStore::default();
        let limit = LocalLimit {
            requests: 2,
            per_seconds: 60,
            ..Default::default()
        };
        let d = [7u8; 16];
        let t = 1_000_000;
        // Nothing taken: nothing to give back, nothing written.
        give_back_local(&s, &SALT, &d, limit, false, at(t, t)).unwrap();
        assert!(s.get(&local_key(&SALT, &d, limit)).is_none());
        assert!(take_local(&s, &SALT, &d, limit, t).unwrap().allowed);
        assert!(take_local(&s, &SALT, &d, limit, t).unwrap().allowed);
        assert!(!take_local(&s, &SALT, &d, limit, t).unwrap().allowed);
        give_back_local(&s, &SALT, &d, limit, false, at(t, t + 5)).unwrap();
        let o = take_local(&s, &SALT, &d, limit, t + 5).unwrap();
        assert!(o.allowed, "the token given back");
        assert!(!take_local(&s, &SALT, &d, limit, t + 5).unwrap().allowed);
        // Given back to a bucket refilled meanwhile: full, not more.
        give_back_local(&s, &SALT, &d, limit, false, at(t, t + 120_000)).unwrap();
        give_back_local(&s, &SALT, &d, limit, false, at(t, t + 120_000)).unwrap();
        for _ in 0..2 {
            assert!(
                take_local(&s, &SALT, &d, limit, t + 120_000)
                    .unwrap()
                    .allowed
            );
        }
        assert!(
            !take_local(&s, &SALT, &d, limit, t + 120_000)
                .unwrap()
                .allowed
        );
        // A descriptor sharing the overflow entry gives back to it.
        let same = digests_in_one_bucket(&SALT, 17);
        let one = LocalLimit {
            requests: 1,
            per_seconds: 60,
            ..Default::default()
        };
        let taken: Vec<LocalOutcome> = same
            .iter()
            .map(|d| take_local(&s, &SALT, d, one, t).unwrap())
            .collect();
        assert!(taken.iter().all(|o| o.allowed));
        assert!(taken[..16].iter().all(|o| !o.shared));
        assert!(taken[16].shared, "the 17th shares the overflow entry");
        assert!(local_refill_at(&s, &SALT, &same[16], one, t).is_some());
        give_back_local(&s, &SALT, &same[16], one, true, at(t, t)).unwrap();
        assert_eq!(local_refill_at(&s, &SALT, &same[16], one, t), None);
        assert!(local_refill_at(&s, &SALT, &same[0], one, t).is_some());
        // Only to the entry it was taken from: an own entry gone since
        // is not made (nor the overflow entry given a token it never
        // lent).
        let fresh = LocalLimit {
            requests: 1,
            per_seconds: 3600,
            ..Default::default()
        };
        assert!(take_local(&s, &SALT, &same[0], fresh, t).unwrap().allowed);
        give_back_local(&s, &SALT, &same[1], fresh, false, at(t, t)).unwrap();
        give_back_local(&s, &SALT, &same[1], fresh, true, at(t, t)).unwrap();
        assert!(local_refill_at(&s, &SALT, &same[0], fresh, t).is_some());
        let entries = local_entries(&s.get(&local_key(&SALT, &same[0], fresh)).unwrap().0);
        assert_eq!(entries.len(), 1, "{entries:?}");
    }

    #[test]
    fn a_descriptor_counted_in_the_overflow_entry_is_seen_spent() {
        // 18 descriptors in one bucket, one token a minute each: 16 spend
        // their own entries, the 17th and 18th share the overflow entry,
        // which the 17th spends. The 18th's budget is spent with it.
        let s = MemStore::default();
        let limit = LocalLimit {
            requests: 1,
            per_seconds: 60,
            ..Default::default()
        };
        let same = digests_in_one_bucket(&SALT, 18);
        let t = 1_000_000;
        for d in &same[..17] {
            assert!(take_local(&s, &SALT, d, limit, t).unwrap().allowed);
        }
        assert!(!take_local(&s, &SALT, &same[16], limit, t).unwrap().allowed);
        for d in &same[..16] {
            assert!(local_refill_at(&s, &SALT, d, limit, t).is_some());
        }
        assert!(local_refill_at(&s, &SALT, &same[16], limit, t).is_some());
        assert!(
            local_refill_at(&s, &SALT, &same[17], limit, t).is_some(),
            "shares the spent overflow entry"
        );
        assert!(!take_local(&s, &SALT, &same[17], limit, t).unwrap().allowed);
        // A minute later every entry holds a token again.
        assert_eq!(
            local_refill_at(&s, &SALT, &same[17], limit, t + 60_000),
            None
        );
        // Elsewhere, a descriptor without an entry holds a token.
        let other = (0u32..)
            .map(|i| {
                let mut d = [9u8; 16];
                d[..4].copy_from_slice(&i.to_le_bytes());
                d
            })
            .find(|d| {
                store::bucket_of(&SALT, d, LOCAL_BUCKETS)
                    != store::bucket_of(&SALT, &same[0], LOCAL_BUCKETS)
            })
            .unwrap();
        assert_eq!(local_refill_at(&s, &SALT, &other, limit, t), None);
    }

    #[test]
    fn a_failure_budget_never_shares_a_table_with_a_route_limit_of_the_same_numbers() {
        // A route's per-client limit of 20 a minute fills one bucket (16
        // busy entries, then the overflow entry spent). A failure budget
        // of the same 20 a minute, for a client whose digest lands in the
        // same bucket, is still whole: it is counted in a table of its own.
        let s = MemStore::default();
        let route = LocalLimit {
            requests: 20,
            per_seconds: 60,
            table: LocalTable::Route,
        };
        let budget = LocalLimit {
            table: LocalTable::Budget,
            ..route
        };
        let same = digests_in_one_bucket(&SALT, 18);
        let t = 1_000_000;
        for d in &same[..17] {
            assert!(take_local_n(&s, &SALT, d, route, 20, t).unwrap().allowed);
        }
        assert!(
            local_refill_at(&s, &SALT, &same[17], route, t).is_some(),
            "the route's overflow entry is spent"
        );
        assert_eq!(local_refill_at(&s, &SALT, &same[17], budget, t), None);
        assert!(take_local(&s, &SALT, &same[17], budget, t).unwrap().allowed);
        assert_eq!(
            s.keys_with_prefix("appguard/budget/v1/20-60/").len(),
            1,
            "one bucket of the budget's own table"
        );
    }

    #[test]
    fn a_clock_reading_a_little_behind_does_not_refill_twice() {
        // 3 per minute: a token per 20 s.
        let s = MemStore::default();
        let d = [1u8; 16];
        let l = LocalLimit {
            requests: 3,
            per_seconds: 60,
            ..Default::default()
        };
        let t0 = 1_700_000_000_000;
        assert!(take_local(&s, &SALT, &d, l, t0).unwrap().allowed);
        assert!(take_local(&s, &SALT, &d, l, t0 + 10_000).unwrap().allowed);
        // another worker's reading, half a second behind: 1.5 tokens, one
        // taken, and 0.5 left as of t0 + 10 s
        assert!(take_local(&s, &SALT, &d, l, t0 + 9_500).unwrap().allowed);
        // a whole token again only 10 s after t0 + 10 s, not after t0 + 9.5 s
        assert!(!take_local(&s, &SALT, &d, l, t0 + 19_600).unwrap().allowed);
        assert!(take_local(&s, &SALT, &d, l, t0 + 20_000).unwrap().allowed);
        // A clock stepped back an hour: the bucket refills from then, not
        // once the clock has caught up.
        let back = t0 + 20_000 - 3_600_000;
        // what a failure budget asks first: not spent (only a write can
        // count the entry from now, and a budget refusing would never
        // write it), so the take that follows counts it from here
        assert_eq!(local_refill_at(&s, &SALT, &d, l, back), None);
        assert!(
            !take_local(&s, &SALT, &d, l, back).unwrap().allowed,
            "empty"
        );
        assert_eq!(local_refill_at(&s, &SALT, &d, l, back), Some(back + 20_000));
        assert!(!take_local(&s, &SALT, &d, l, back + 19_000).unwrap().allowed);
        assert!(take_local(&s, &SALT, &d, l, back + 20_000).unwrap().allowed);
    }

    #[test]
    fn token_bucket_allows_n_then_refills() {
        let s = MemStore::default();
        let d = [1u8; 16];
        let l = LocalLimit {
            requests: 3,
            per_seconds: 60,
            ..Default::default()
        };
        let t0 = 1_000_000;
        for i in 0..3 {
            let o = take_local(&s, &SALT, &d, l, t0).unwrap();
            assert!(o.allowed, "request {i}");
            assert_eq!(o.remaining, 2 - i);
        }
        let o = take_local(&s, &SALT, &d, l, t0).unwrap();
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 20, "one token per 20 s");
        // Peeking says exactly when the next token comes, and takes none.
        assert_eq!(local_refill_at(&s, &SALT, &d, l, t0), Some(t0 + 20_000));
        assert_eq!(
            local_refill_at(&s, &SALT, &d, l, t0 + 19_999),
            Some(t0 + 20_000)
        );
        assert_eq!(local_refill_at(&s, &SALT, &d, l, t0 + 20_000), None);
        assert_eq!(
            local_refill_at(&s, &SALT, &[3u8; 16], l, t0),
            None,
            "unseen"
        );
        assert!(!take_local(&s, &SALT, &d, l, t0 + 19_000).unwrap().allowed);
        assert!(take_local(&s, &SALT, &d, l, t0 + 20_000).unwrap().allowed);
        // another descriptor has its own bucket
        assert!(take_local(&s, &SALT, &[2u8; 16], l, t0).unwrap().allowed);
    }

    #[test]
    fn a_spent_bucket_always_comes_with_a_recent_failure_mark() {
        let s = MemStore::default();
        let d = [4u8; 16];
        let l = LocalLimit {
            requests: 2,
            per_seconds: 10,
            ..Default::default()
        };
        let t0 = 5_000_000;
        assert!(!failed_within(&s, "p", l, t0), "nothing failed yet");
        for t in [t0, t0 + 1_000] {
            mark_failure(&s, "p", t);
            let _ = take_local(&s, &SALT, &d, l, t);
        }
        // Spent from t0 + 1 s until a token is back (5 s per token): the
        // mark says so for the whole of that time, and for the window.
        let back = local_refill_at(&s, &SALT, &d, l, t0 + 1_000).unwrap();
        assert_eq!(back, t0 + 5_000);
        for t in (t0 + 1_000..back).step_by(250) {
            assert!(local_refill_at(&s, &SALT, &d, l, t).is_some());
            assert!(failed_within(&s, "p", l, t), "{t}");
        }
        assert!(failed_within(&s, "p", l, t0 + 10_999));
        assert!(!failed_within(&s, "p", l, t0 + 11_000), "a window later");
        // A late mark from a slower worker never moves the time back; other
        // scopes are apart.
        mark_failure(&s, "p", t0);
        assert!(failed_within(&s, "p", l, t0 + 10_999));
        assert!(!failed_within(&s, "q", l, t0 + 1_000));
        // A mark that is not a time counts as recent.
        s.set("appguard/failed/q", b"?", 0).unwrap();
        assert!(failed_within(&s, "q", l, u64::MAX));
    }

    /// `n` digests that land in the same bucket position under `salt`,
    /// `[0; 16]` first.
    fn digests_in_one_bucket(salt: &BucketSalt, n: usize) -> Vec<[u8; 16]> {
        let target = store::bucket_of(salt, &[0u8; 16], LOCAL_BUCKETS);
        let mut same = Vec::new();
        let mut i: u32 = 0;
        while same.len() < n {
            let mut d = [0u8; 16];
            d[..4].copy_from_slice(&i.to_le_bytes());
            if store::bucket_of(salt, &d, LOCAL_BUCKETS) == target {
                same.push(d);
            }
            i += 1;
        }
        same
    }

    #[test]
    fn values_aimed_at_a_victims_bucket_under_one_salt_miss_it_under_another() {
        // The attack: a client that knows which values share a victim's
        // bucket takes a token with 16 of them (16 busy entries fill the
        // bucket) and a 17th (which drains the shared overflow). The
        // victim, idle until then, is refused on its first request.
        let l = LocalLimit {
            requests: 1,
            per_seconds: 3600,
            ..Default::default()
        };
        let victim = [0u8; 16];
        let known = BucketSalt::new([0x55; 16]);
        let aimed = digests_in_one_bucket(&known, 18);
        let aimed = aimed.get(1..).unwrap();
        assert_eq!(aimed.len(), 17);
        for (salt, victim_served) in [(known, false), (BucketSalt::new([0x66; 16]), true)] {
            let s = MemStore::default();
            for d in aimed {
                assert!(take_local(&s, &salt, d, l, 0).unwrap().allowed);
            }
            assert_eq!(
                take_local(&s, &salt, &victim, l, 1_000).unwrap().allowed,
                victim_served,
                "the victim's first request, with values aimed using {} salt",
                if victim_served {
                    "another"
                } else {
                    "the instance's"
                }
            );
        }
    }

    #[test]
    fn full_buckets_evict_idle_entries_or_share_an_overflow() {
        let s = MemStore::default();
        let l = LocalLimit {
            requests: 1,
            per_seconds: 3600,
            ..Default::default()
        };
        let same = digests_in_one_bucket(&SALT, 18);
        for d in same.iter().take(16) {
            assert!(take_local(&s, &SALT, d, l, 0).unwrap().allowed);
        }
        // 16 busy entries: the 17th shares the overflow, the 18th is refused with it
        assert!(take_local(&s, &SALT, &same[16], l, 0).unwrap().allowed);
        assert!(!take_local(&s, &SALT, &same[17], l, 0).unwrap().allowed);
        // the first 16 are still limited
        assert!(!take_local(&s, &SALT, &same[0], l, 0).unwrap().allowed);
    }

    #[test]
    fn a_descriptor_leaving_the_overflow_gets_no_fresh_bucket_in_the_same_period() {
        let s = MemStore::default();
        let l = LocalLimit {
            requests: 1,
            per_seconds: 3600,
            ..Default::default()
        };
        let same = digests_in_one_bucket(&SALT, 17);
        for d in same.iter().take(16) {
            assert!(take_local(&s, &SALT, d, l, 0).unwrap().allowed);
        }
        // Half an hour later the 17th finds no room and spends the overflow.
        let d = &same[16];
        assert!(take_local(&s, &SALT, d, l, 1_800_000).unwrap().allowed);
        // An hour in, the 16 entries are idle again: the 17th may take one,
        // but not with a full token it has not earned (one an hour).
        let o = take_local(&s, &SALT, d, l, 3_600_000).unwrap();
        assert!(!o.allowed, "a second token within 30 minutes");
        assert_eq!(o.retry_after, 1_800);
        assert!(take_local(&s, &SALT, d, l, 5_400_000).unwrap().allowed);
    }

    #[test]
    fn a_refused_request_writes_nothing() {
        // A flood of refusals only reads the bucket, so its CAS writes
        // cannot crowd out the writes of the requests that are allowed.
        let s = MemStore::default();
        let l = LocalLimit {
            requests: 2,
            per_seconds: 60,
            ..Default::default()
        };
        let d = [3u8; 16];
        let key = local_key(&SALT, &d, l);
        assert!(take_local(&s, &SALT, &d, l, 0).unwrap().allowed);
        assert!(take_local(&s, &SALT, &d, l, 1_000).unwrap().allowed);
        let before = s.get(&key).unwrap();
        for t in [1_000, 2_000, 29_000] {
            let o = take_local(&s, &SALT, &d, l, t).unwrap();
            assert!(!o.allowed);
            assert_eq!(o.retry_after, (30_000 - t).div_ceil(1000), "at {t}");
        }
        assert_eq!(s.get(&key).unwrap(), before, "a refusal wrote the bucket");
        // Refill is unaffected: a token at 30 s, the next at 60 s.
        assert!(take_local(&s, &SALT, &d, l, 30_000).unwrap().allowed);
        assert!(!take_local(&s, &SALT, &d, l, 59_999).unwrap().allowed);
        assert!(take_local(&s, &SALT, &d, l, 60_000).unwrap().allowed);
    }

    #[test]
    fn a_generous_limit_never_evicts_or_refills_a_strict_one() {
        let s = MemStore::default();
        let strict = LocalLimit {
            requests: 1,
            per_seconds: 3600,
            ..Default::default()
        };
        let generous = LocalLimit {
            requests: 1000,
            per_seconds: 1,
            ..Default::default()
        };
        let same = digests_in_one_bucket(&SALT, 17);
        // 16 strict descriptors, each spent, fill their bucket position.
        for d in same.iter().take(16) {
            assert!(take_local(&s, &SALT, d, strict, 0).unwrap().allowed);
        }
        // A second later a generous rule's descriptor lands in the same
        // position: a full entry by *its* rate, but not by the entry's own.
        assert!(
            take_local(&s, &SALT, &same[16], generous, 1_000)
                .unwrap()
                .allowed
        );
        for d in same.iter().take(16) {
            assert!(
                !take_local(&s, &SALT, d, strict, 2_000).unwrap().allowed,
                "a strict bucket spent an hour long stays spent"
            );
        }
    }

    /// The dotted path is worked out with the configuration, escapes
    /// undone, and only for nested pointers.
    #[test]
    fn a_nested_pointer_has_its_dotted_path_compiled() {
        let dotted = |p: &str| {
            let raw: RawEntry = serde_json::from_value(
                serde_json::json!({"type": "body", "pointer": p, "phone": true}),
            )
            .map_err(|e| e.to_string())?;
            match raw.source("e").map_err(|e| e.to_string())?.2 {
                Source::Body { dotted, .. } => Ok(dotted),
                other => Err(format!("{other:?}")),
            }
        };
        assert_eq!(dotted("/sms/to"), Ok(Some("sms.to".to_owned())));
        assert_eq!(dotted("/a~1b/c~0d"), Ok(Some("a/b.c~d".to_owned())));
        assert_eq!(dotted("/to"), Ok(None));
    }

    #[test]
    fn pointer_values() {
        let pointer_text = |v: &Value, p: &str| v.pointer(p).and_then(value_text);
        let v: Value =
            serde_json::from_str(r#"{"to":"+44 7700","n":447700,"f":1.5,"o":{"x":"y"}}"#).unwrap();
        assert_eq!(pointer_text(&v, "/to").as_deref(), Some("+44 7700"));
        assert_eq!(pointer_text(&v, "/n").as_deref(), Some("447700"));
        assert_eq!(pointer_text(&v, "/f"), None);
        assert_eq!(pointer_text(&v, "/o"), None);
        assert_eq!(pointer_text(&v, "/o/x").as_deref(), Some("y"));
        assert_eq!(pointer_text(&v, "/missing"), None);
    }

    #[test]
    fn digests_separate_scopes_and_entries() {
        let cache = ServiceCache::new(&SALT);
        // The shared tables' SHA-256 digests and the over-limit cache's keys
        // keep apart the same things.
        for digest in [
            descriptor_digest as fn(&DigestScope, &Descriptor) -> [u8; 16],
            |s: &DigestScope, d: &Descriptor| ServiceCache::new(&SALT).key(s, d),
        ] {
            digests_separate(digest);
        }
        let other = ServiceCache::new(&BucketSalt::new([9; 16]));
        let a: Descriptor = vec![("k".into(), "v".into())];
        let scope = DigestScope::new(&["r"]);
        assert_ne!(
            cache.key(&scope, &a),
            other.key(&scope, &a),
            "keyed by the salt"
        );
        assert_ne!(cache.key(&scope, &a), descriptor_digest(&scope, &a));
    }

    fn digests_separate(digest: fn(&DigestScope, &Descriptor) -> [u8; 16]) {
        let d = |e: &[(&str, &str)]| -> Descriptor {
            e.iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect()
        };
        let a = d(&[("k", "v")]);
        assert_ne!(
            digest(&DigestScope::new(&["r"]), &a),
            digest(&DigestScope::new(&["r"]), &d(&[("kv", "")]))
        );
        assert_ne!(
            digest(&DigestScope::new(&["r1"]), &a),
            digest(&DigestScope::new(&["r2"]), &a)
        );
        // Two rules of one route with the same entries.
        assert_ne!(
            digest(&DigestScope::new(&["r", "burst"]), &a),
            digest(&DigestScope::new(&["r", "sustained"]), &a)
        );
        assert_ne!(
            digest(&DigestScope::new(&["ab", "c"]), &a),
            digest(&DigestScope::new(&["a", "bc"]), &a)
        );
        // A JSON body value may hold any byte: one entry that spells out a
        // separator and a second entry is still one entry.
        assert_ne!(
            digest(
                &DigestScope::new(&["r"]),
                &d(&[("a", "x\0b\u{1}y"), ("c", "z")])
            ),
            digest(
                &DigestScope::new(&["r"]),
                &d(&[("a", "x"), ("b", "y\0c\u{1}z")])
            )
        );
        assert_ne!(
            digest(&DigestScope::new(&["r"]), &d(&[("a", "x\0b\u{1}y")])),
            digest(&DigestScope::new(&["r"]), &d(&[("a", "x"), ("b", "y")]))
        );
        assert_eq!(
            digest(&DigestScope::new(&["r", "n"]), &a),
            digest(&DigestScope::new(&["r", "n"]), &d(&[("k", "v")]))
        );
    }

    /// Requests `every_ms` apart over `for_ms`: how many a bucket allows.
    fn allowed_when_polled(l: LocalLimit, every_ms: u64, for_ms: u64, drain_first: bool) -> u32 {
        let s = MemStore::default();
        let d = [9u8; 16];
        let t0 = 1_000_000_000u64;
        if drain_first {
            for _ in 0..l.requests {
                assert!(take_local(&s, &SALT, &d, l, t0).unwrap().allowed);
            }
        }
        let mut allowed = 0;
        let mut t = t0;
        while t < t0 + for_ms {
            t += every_ms;
            if take_local(&s, &SALT, &d, l, t).unwrap().allowed {
                allowed += 1;
            }
        }
        allowed
    }

    #[test]
    fn a_bucket_refills_at_its_rate_whatever_the_request_rate() {
        // Requests faster than a token's refill time, denied or not, must
        // not throw away what was earned since the one before: with
        // rounded milli-tokens a drained bucket stayed empty for as long
        // as the client kept retrying.
        let per_day = LocalLimit {
            requests: 10,
            per_seconds: 86_400,
            ..Default::default()
        };
        // Drained, then one request every 5 s for two days: 20 tokens.
        assert_eq!(
            allowed_when_polled(per_day, 5_000, 2 * 86_400_000, true),
            20
        );
        // 100 per hour, one request every 30 ms for two hours: the full
        // bucket's 100 and a refill of 100 per hour after them.
        let per_hour = LocalLimit {
            requests: 100,
            per_seconds: 3600,
            ..Default::default()
        };
        let n = allowed_when_polled(per_hour, 30, 2 * 3_600_000, false);
        assert!((299..=301).contains(&n), "{n}");
        // 20 per minute at 500 requests/s for 2 minutes: 20 + 40.
        let per_minute = LocalLimit {
            requests: 20,
            per_seconds: 60,
            ..Default::default()
        };
        let n = allowed_when_polled(per_minute, 2, 120_000, false);
        assert!((59..=61).contains(&n), "{n}");
    }

    #[test]
    fn the_retry_after_of_a_drained_bucket_is_kept() {
        // 10 per day: a token every 8,640 s. A request 9 s after draining
        // is told 8,631 s, and the bucket does hold a token then.
        let l = LocalLimit {
            requests: 10,
            per_seconds: 86_400,
            ..Default::default()
        };
        let s = MemStore::default();
        let d = [8u8; 16];
        let t0 = 1_000_000_000u64;
        for _ in 0..10 {
            take_local(&s, &SALT, &d, l, t0).unwrap();
        }
        let o = take_local(&s, &SALT, &d, l, t0 + 9_000).unwrap();
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 8_631);
        assert_eq!(
            local_refill_at(&s, &SALT, &d, l, t0 + 9_000),
            Some(t0 + 8_640_000)
        );
        assert!(
            !take_local(&s, &SALT, &d, l, t0 + 8_639_999)
                .unwrap()
                .allowed
        );
        assert!(
            take_local(&s, &SALT, &d, l, t0 + 8_640_000)
                .unwrap()
                .allowed
        );
    }

    // A wall clock set back after a request was reset: its ask, sent
    // "after" every later call, no answer can count; it no longer holds
    // (it held for the step plus the hour, "an hour at most" in README).
    #[test]
    fn a_clock_set_back_does_not_hold_asks_past_the_hour() {
        let mut c = ServiceCache::new(&SALT);
        let d = [9u8; 16];
        let t = 10_000_000_000;
        c.begin_ask(d, t, t + 100, 100);
        c.abandon_ask(&d, t, 100);
        // The clock is set back two hours (NTP correcting a fast clock).
        let back = t - 2 * 3_600_000;
        // A finished request's call is answered: it counts nothing.
        c.begin_ask(d, back + 10, back + 110, 1);
        c.end_ask(&d, back + 10, 1);
        c.answered(&d, back + 10, Some(back + 3_000_000));
        c.grant_lease(d, 1, 500, back + 3_000_000, back + 20);
        // Two hours on by the new clock, and 100 s past the cooldown.
        assert_eq!(
            c.lease_ask(&d, 100, back + 10 + RESET_COOLDOWN_MS + 100_000),
            100,
            "still one hit at a time, 160 s after an answer and by the clock's reading of the reset"
        );
    }

    // Abandoned asks that no answer counts hold for an hour each. The
    // filter records only lease asks (more than one hit), which the
    // abandoned ones quarter down to one hit after a few, so it never
    // piles them up; the cache bounds them itself too, at `MAX_ASKS` a
    // descriptor, whoever calls it.
    #[test]
    fn abandoned_asks_per_descriptor_are_bounded() {
        let mut c = ServiceCache::new(&SALT);
        let d = [10u8; 16];
        let t = 1_000_000;
        // 50 resets a second for 100 s (60,000 of them, 20 minutes, take
        // 69 s here: each request scans all the asks held).
        for i in 0..5_000u64 {
            let now = t + i * 20;
            let hits = c.lease_ask(&d, 100, now);
            c.begin_ask(d, now, now + 100, hits);
            c.abandon_ask(&d, now, hits);
        }
        let n = c.asking.get(&d).map_or(0, Vec::len);
        assert!(n <= 2 * MAX_ASKS, "{n} asks held for one descriptor");
    }

    // review58-leases L2: README said "after a burst of four or more, one
    // hit each"; four abandoned asks quarter four times: a 256th of a
    // lease, one hit only for leases under 512 (`lease` goes to 10,000), as
    // README now says.
    #[test]
    fn after_a_burst_of_four_reset_the_asks_are_a_256th_of_a_lease() {
        let mut c = ServiceCache::new(&SALT);
        let d = [17u8; 16];
        let t: u64 = 1_000_000_000;
        let hour = 3_600_000;
        c.grant_lease(d, 1_000, 100_000, t + hour, t);
        let mut burst = Vec::new();
        for i in 0..4 {
            let hits = c.lease_ask(&d, 1_000, t + 1 + i);
            c.begin_ask(d, t + 1 + i, t + 101 + i, hits);
            burst.push(hits);
        }
        assert_eq!(burst, [1_000, 500, 250, 125]);
        for (i, hits) in (0..4).zip(burst) {
            c.abandon_ask(&d, t + 1 + i, hits);
        }
        // An answer (another client's, for one hit) counts them.
        c.answered(&d, t + 10, Some(t + hour));
        c.grant_lease(d, 1, 98_000, t + hour, t + 11);
        assert_eq!(
            c.lease_ask(&d, 1_000, t + 20),
            1_000 >> 8,
            "the next ask after a burst of four, all reset: a 256th of a lease"
        );
    }

    /// Ten requests an hour from `t + 10` for 23 hours, each asking for a
    /// lease of 100 and reset while its ask is out: the hits asked for,
    /// and the requests.
    fn reset_ten_requests_an_hour_for_23_hours(
        c: &mut ServiceCache,
        d: [u8; 16],
        t: u64,
    ) -> (u64, u64) {
        let hour = ABANDONED_ASK_MS;
        let (mut counted, mut requests) = (0u64, 0u64);
        for h in 0..23 {
            for i in 0..10 {
                let now = t + 10 + h * hour + i * 1_000;
                let hits = c.lease_ask(&d, 100, now);
                // As `limits_phase` and `abandon_rls`: only lease asks
                // (more than one hit) are recorded.
                if hits > 1 {
                    c.begin_ask(d, now, now + 100, hits);
                    c.abandon_ask(&d, now, hits);
                }
                counted += u64::from(hits);
                requests += 1;
            }
        }
        (counted, requests)
    }

    // review58-leases L3 (README, Leases): "a client that resets its
    // requests one after another has at most a lease and a third a window
    // counted for them". An abandoned ask holds an hour when no answer
    // comes: a client alone on a descriptor (its own key, or the only one
    // on that worker) that resets every request, its one-hit calls too, has
    // a lease and a third counted every hour of a `per: day` window.
    #[test]
    fn resets_without_answers_have_a_lease_and_a_third_counted_a_day_window() {
        let mut c = ServiceCache::new(&SALT);
        let d = [18u8; 16];
        let t: u64 = 1_000_000_000;
        let hour = ABANDONED_ASK_MS;
        // A lease of a day's window, its hits spent.
        c.grant_lease(d, 100, 10_000, t + 24 * hour, t);
        while c.take_lease(&d, t + 1) {}
        let (counted, requests) = reset_ten_requests_an_hour_for_23_hours(&mut c, d, t);
        assert!(
            counted <= 100 + 100 / 3 + requests,
            "{requests} requests reset over 23 hours of a day window had {counted} hits counted"
        );
    }

    // review58-leasefix F2: 4328e22 holds an abandoned ask to the end of
    // the window of the lease live when it was sent; with none live (the
    // window just reset, the worker's lease was of yesterday's window) it
    // held an hour, and "at most a lease and a third a window" (README,
    // Leases) was a lease an hour again: a client alone on a `per: day`
    // descriptor on that worker, resetting every request from the start of
    // the day, had a whole lease counted each hour. The lease's entry
    // keeps the length of the limit's windows an answer named.
    #[test]
    fn resets_from_a_windows_start_have_a_lease_and_a_third_counted_a_day_window() {
        let mut c = ServiceCache::new(&SALT);
        let d = [21u8; 16];
        let hour = ABANDONED_ASK_MS;
        let day = 24 * hour;
        let t: u64 = 1_000 * day;
        // Yesterday's lease, its window now over; the answer named a limit
        // per day.
        c.grant_lease(d, 100, 10_000, t, t - day + 10);
        c.note_window(&d, day);
        let (counted, requests) = reset_ten_requests_an_hour_for_23_hours(&mut c, d, t);
        assert!(
            counted <= 100 + 100 / 3 + requests,
            "{requests} requests reset over the first 23 hours of a day window had {counted} hits counted"
        );
        // The next day's window: the ask no longer holds.
        assert_eq!(c.lease_ask(&d, 100, t + day + 1_001), 100);
        // A worker that never had an answer for a descriptor knows no
        // window: its reset asks hold an hour (README).
        let e = [22u8; 16];
        c.begin_ask(e, t, t + 100, 100);
        c.abandon_ask(&e, t, 100);
        assert_eq!(c.lease_ask(&e, 100, t + hour - 1), 1);
        assert_eq!(c.lease_ask(&e, 100, t + hour), 100);
    }

    // review57-state F1. A failure budget only reads its entry while it
    // refuses (a spent client's tokens are not verified, so nothing is
    // charged), and a route's local limits before its last are only read
    // while one refuses: such an entry is not written again. Set back an
    // hour after it was drained, it was counted from each read's own now,
    // so it read as spent until the clock caught up: an hour of refusals.
    #[test]
    fn a_drained_entry_that_is_only_read_is_not_spent_for_the_whole_clock_step() {
        let s = MemStore::default();
        let d = [5u8; 16];
        // 3 a minute: a token per 20 s.
        let l = LocalLimit {
            requests: 3,
            per_seconds: 60,
            ..Default::default()
        };
        let t0 = 1_700_000_000_000;
        for _ in 0..3 {
            assert!(take_local(&s, &SALT, &d, l, t0).unwrap().allowed);
        }
        assert_eq!(local_refill_at(&s, &SALT, &d, l, t0), Some(t0 + 20_000));
        // The clock is set back an hour; nothing takes from the entry.
        let back = t0 - 3_600_000;
        for later in [60_000, 600_000, 3_000_000] {
            assert_eq!(
                local_refill_at(&s, &SALT, &d, l, back + later),
                None,
                "{} s after the step, a 3-a-minute entry still reads as spent",
                later / 1000
            );
        }
    }

    // review57-state F2 (over-limit cache). A 429 the service gave is kept
    // until the window's end as the clock read it then: set back an hour,
    // the worker answered the descriptor 429 itself for that hour (and a
    // `retry-after` of an hour), where leases and asks end at a step.
    #[test]
    fn a_cached_over_limit_answer_ends_when_the_clock_is_set_back() {
        let mut c = ServiceCache::new(&SALT);
        let d = [12u8; 16];
        let t = 1_700_000_000;
        c.insert(d, t + 30, Some(10), t);
        assert_eq!(c.get(&d, t + 29), Some((t + 30, Some(10))));
        let back = t - 3_600;
        assert_eq!(c.get(&d, back), None, "refused for {} s", t + 30 - back);
        assert_eq!(c.get(&d, back + 60), None);
    }

    // An IPv4 client that reaches Envoy translated to IPv6 (RFC 6052's
    // well-known prefix `64:ff9b::/96`, which SIIT/NAT46 edges in front of
    // an IPv6-only Envoy use, RFC 7755) is keyed as the IPv4 address in its
    // last 32 bits (masked to `v4_prefix`), as an IPv4-mapped address is:
    // by the translator's /64, every IPv4 client would share one
    // `client_ip` descriptor and one failure budget.
    #[test]
    fn translated_ipv4_clients_are_keyed_apart() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (a, b) = (ip("64:ff9b::c000:207"), ip("64:ff9b::c633:6407"));
        // 192.0.2.7 and 198.51.100.7, as a translator writes them
        assert_ne!(
            ip_value(a, 32, 64),
            ip_value(b, 32, 64),
            "two IPv4 clients, one `client_ip` value"
        );
        assert_eq!(ip_value(a, 32, 64), "192.0.2.7");
        assert_eq!(ip_value(a, 24, 64), ip_value(ip("192.0.2.99"), 24, 64));
        // the failure budget's network (and its per-worker memory)
        assert_ne!(
            crate::net::network_of(a, 32, 64),
            crate::net::network_of(b, 32, 64),
            "two IPv4 clients, one failure budget"
        );
    }
}
