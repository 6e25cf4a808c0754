//! Platforms, apps and API keys (SPEC §1 steps 3 and 5, SPEC §2).
//!
//! Every genuine client build is an [`App`] of one [`Platform`]. The request's
//! app is established once — from the verified token's app claim when there
//! is one, else from the platform headers (or, for `server`, the client IP) —
//! and the token, the API key's restriction and the headers must all agree.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::ConfigError;
use crate::decision::Reason;
use crate::net::CidrSet;
use crate::store::{BucketSalt, Keyed128};

/// The kind of client a request comes from. Each has its own flow: a key or
/// token minted for one platform is refused on the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// An Android app: package name plus signing-certificate fingerprint.
    Android,
    /// An iOS app: bundle identifier (and optionally team id).
    Ios,
    /// A browser: `Origin` (or `Referer`) matching an allowed origin.
    Web,
    /// A server-to-server client: the client IP inside allowed ranges.
    Server,
}

impl Platform {
    /// The lower-case name, as used in headers, descriptors and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
            Platform::Web => "web",
            Platform::Server => "server",
        }
    }
}

/// One `apps[]` entry as written in the configuration; compiled into
/// [`App`]. The platform's own fields (`package`, `cert_fingerprints`,
/// `bundle_id`, `team_id`, `origins`, `cidrs`) become its [`AppProof`]
/// variant; a field of another platform is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    /// Unique id, sent upstream as `x-appguard-app` and named by key
    /// restrictions and descriptors. See [`App::id`].
    id: String,
    /// `android`, `ios`, `web` or `server`. See [`App::platform`].
    platform: Platform,
    /// Android (required): the package name; becomes
    /// [`AppProof::Android`]'s `package`.
    #[serde(default, deserialize_with = "crate::config::present")]
    package: Option<String>,
    /// Android: accepted signing-cert digests, SHA-256 or SHA-1 hex (colons
    /// optional, any case); left out, the cert is not checked; written
    /// empty, refused. Becomes [`AppProof::Android`]'s `certs`.
    #[serde(default, deserialize_with = "crate::config::restriction")]
    cert_fingerprints: Vec<String>,
    /// iOS (required): the bundle identifier; becomes [`AppProof::Ios`]'s
    /// `bundle_id`.
    #[serde(default, deserialize_with = "crate::config::present")]
    bundle_id: Option<String>,
    /// iOS: the Apple team id; a team-id header that disagrees is refused.
    /// Becomes [`AppProof::Ios`]'s `team_id`.
    #[serde(default, deserialize_with = "crate::config::present")]
    team_id: Option<String>,
    /// Web (required): allowed origins, `scheme://host[:port]`, `*.` as
    /// the whole first label allowed; becomes [`AppProof::Web`]'s
    /// `origins`.
    #[serde(default)]
    origins: Vec<String>,
    /// Server (required): ranges the client IP must be in; becomes
    /// [`AppProof::Server`]'s `cidrs`.
    #[serde(default)]
    cidrs: Vec<String>,
    /// Values of a token's app claim that name this app (Firebase app
    /// ids); empty, the claim must equal `id`. See [`App::token_app_ids`].
    #[serde(default)]
    token_app_ids: Vec<String>,
}

/// One genuine client build.
#[derive(Debug)]
pub struct App {
    /// Operator-chosen id: sent upstream as `x-appguard-app`, used in key
    /// restrictions, descriptors and logs.
    pub id: String,
    /// The platform of this build.
    pub platform: Platform,
    /// How the build proves itself in headers.
    pub proof: AppProof,
    /// Values of a token's app claim that name this app (e.g. the Firebase
    /// app id `1:123:android:abc`). When empty, the claim must equal `id`.
    pub token_app_ids: Vec<String>,
}

impl App {
    /// Whether a token's app claim `claim` names this app: one of its
    /// `token_app_ids`, or its `id` when it has none. Config checks and the
    /// request path use this one rule, so a claim the config accepted as
    /// naming one app is read the same way on a request.
    pub fn is_named_by(&self, claim: &str) -> bool {
        if self.token_app_ids.is_empty() {
            self.id == claim
        } else {
            self.token_app_ids.iter().any(|t| t == claim)
        }
    }
}

/// What a request must show for its app, per platform.
#[derive(Debug)]
pub enum AppProof {
    /// Android package and the accepted signing-certificate fingerprints
    /// (raw SHA-256 or SHA-1 digests). Empty: the cert is not checked.
    Android {
        /// Package name, e.g. `com.example.shop`.
        package: String,
        /// SHA-256 (32 bytes) or SHA-1 (20 bytes) certificate digests.
        certs: Vec<Vec<u8>>,
    },
    /// iOS bundle id and optional team id.
    Ios {
        /// Bundle identifier, e.g. `com.example.shop`.
        bundle_id: String,
        /// Apple team id; when set, a team-id header that disagrees is refused.
        team_id: Option<String>,
    },
    /// Allowed web origins.
    Web {
        /// Patterns such as `https://*.example.com`.
        origins: Vec<OriginPattern>,
    },
    /// Allowed client IP ranges.
    Server {
        /// Ranges the server's IP must be in.
        cidrs: CidrSet,
    },
}

/// `apps[]`, compiled. Each id, and each name a token's app claim may give
/// (`token_app_ids`, else the id), names one app only: with two, the first
/// listed would silently win. Fields of another platform are refused rather
/// than ignored.
pub(crate) fn compile_apps(raw: Vec<RawApp>) -> Result<Vec<App>, ConfigError> {
    let mut apps: Vec<App> = Vec::with_capacity(raw.len());
    for (i, a) in raw.into_iter().enumerate() {
        let at = format!("apps[{i}]");
        if !crate::config::valid_name(&a.id) {
            return Err(ConfigError::new(
                format!("{at}.id"),
                "must be 1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        if apps.iter().any(|x| x.id == a.id) {
            return Err(ConfigError::new(
                format!("{at}.id"),
                format!("duplicate app id {:?}", a.id),
            ));
        }
        // A token's app claim must name one app: with two, the first in
        // the list would silently win.
        // An app without `token_app_ids` is named by its `id`.
        for (j, v) in a.token_app_ids.iter().enumerate() {
            // An empty entry would name the app for a token whose claim is
            // empty; one with spaces around it or control characters names
            // nothing an issuer writes (a paste slip).
            if v.is_empty() || v.len() > 256 || v.trim() != v || v.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    format!("{at}.token_app_ids[{j}]"),
                    "must be the app claim's value: 1-256 bytes, without spaces around it \
                     or control characters",
                ));
            }
            if let Some(other) = apps.iter().find(|x| x.is_named_by(v)) {
                return Err(ConfigError::new(
                    format!("{at}.token_app_ids[{j}]"),
                    format!("{v:?} already names app {:?}", other.id),
                ));
            }
        }
        if a.token_app_ids.is_empty() {
            if let Some(other) = apps.iter().find(|x| x.is_named_by(&a.id)) {
                return Err(ConfigError::new(
                    format!("{at}.id"),
                    format!(
                        "{:?} already names app {:?} in tokens (its token_app_ids); give this app token_app_ids",
                        a.id, other.id
                    ),
                ));
            }
        }
        let not_for = |field: &str, set: bool| -> Result<(), ConfigError> {
            if set {
                Err(ConfigError::new(
                    format!("{at}.{field}"),
                    format!("not allowed for platform {}", a.platform.as_str()),
                ))
            } else {
                Ok(())
            }
        };
        let proof = match a.platform {
            Platform::Android => {
                not_for("bundle_id", a.bundle_id.is_some())?;
                not_for("team_id", a.team_id.is_some())?;
                not_for("origins", !a.origins.is_empty())?;
                not_for("cidrs", !a.cidrs.is_empty())?;
                let package = a.package.ok_or_else(|| {
                    ConfigError::new(format!("{at}.package"), "required for platform android")
                })?;
                if !valid_app_name(&package) {
                    return Err(ConfigError::new(
                        format!("{at}.package"),
                        format!("{package:?} is not an Android package name"),
                    ));
                }
                let mut certs = Vec::new();
                for (j, f) in a.cert_fingerprints.iter().enumerate() {
                    certs.push(parse_fingerprint(f).ok_or_else(|| {
                        ConfigError::new(
                            format!("{at}.cert_fingerprints[{j}]"),
                            "must be a SHA-256 (64 hex digits) or SHA-1 (40 hex digits) fingerprint, colons optional",
                        )
                    })?);
                }
                AppProof::Android { package, certs }
            }
            Platform::Ios => {
                not_for("package", a.package.is_some())?;
                not_for("cert_fingerprints", !a.cert_fingerprints.is_empty())?;
                not_for("origins", !a.origins.is_empty())?;
                not_for("cidrs", !a.cidrs.is_empty())?;
                let bundle_id = a.bundle_id.ok_or_else(|| {
                    ConfigError::new(format!("{at}.bundle_id"), "required for platform ios")
                })?;
                if !valid_app_name(&bundle_id) {
                    return Err(ConfigError::new(
                        format!("{at}.bundle_id"),
                        format!("{bundle_id:?} is not a bundle identifier"),
                    ));
                }
                // Apple's team ids are ten upper-case letters and digits
                // (`ABCDE12345`), and apps send them so: one written
                // otherwise would refuse every request that sends it.
                if let Some(t) = &a.team_id {
                    if t.len() != 10
                        || !t
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    {
                        return Err(ConfigError::new(
                            format!("{at}.team_id"),
                            "must be an Apple team id: 10 upper-case letters and digits, \
                             such as ABCDE12345",
                        ));
                    }
                }
                AppProof::Ios {
                    bundle_id,
                    team_id: a.team_id,
                }
            }
            Platform::Web => {
                not_for("package", a.package.is_some())?;
                not_for("cert_fingerprints", !a.cert_fingerprints.is_empty())?;
                not_for("bundle_id", a.bundle_id.is_some())?;
                not_for("team_id", a.team_id.is_some())?;
                not_for("cidrs", !a.cidrs.is_empty())?;
                if a.origins.is_empty() {
                    return Err(ConfigError::new(
                        format!("{at}.origins"),
                        "at least one origin is required for platform web",
                    ));
                }
                let mut origins = Vec::new();
                for (j, o) in a.origins.iter().enumerate() {
                    origins.push(
                        OriginPattern::parse(o)
                            .map_err(|m| ConfigError::new(format!("{at}.origins[{j}]"), m))?,
                    );
                }
                AppProof::Web { origins }
            }
            Platform::Server => {
                not_for("package", a.package.is_some())?;
                not_for("cert_fingerprints", !a.cert_fingerprints.is_empty())?;
                not_for("bundle_id", a.bundle_id.is_some())?;
                not_for("team_id", a.team_id.is_some())?;
                not_for("origins", !a.origins.is_empty())?;
                if a.cidrs.is_empty() {
                    return Err(ConfigError::new(
                        format!("{at}.cidrs"),
                        "at least one range is required for platform server",
                    ));
                }
                let cidrs = CidrSet::parse(&a.cidrs)
                    .map_err(|(j, m)| ConfigError::new(format!("{at}.cidrs[{j}]"), m))?;
                AppProof::Server { cidrs }
            }
        };
        // From headers, the app that names the request most closely is
        // chosen; two apps the headers name equally closely would leave it
        // to the list's order (a key restricted to the second refused on
        // every request the first takes).
        if let Some((other, field)) = apps
            .iter()
            .find_map(|x| same_header_proof(&x.proof, &proof).map(|f| (x, f)))
        {
            return Err(ConfigError::new(
                format!("{at}.{field}"),
                format!(
                    "the platform headers cannot tell this app from app {:?} (the same \
                     {field}): a request showing them would be taken as whichever is \
                     listed first; pin each build to its own certificates or team, or make \
                     them one app with several token_app_ids",
                    other.id
                ),
            ));
        }
        apps.push(App {
            id: a.id,
            platform: a.platform,
            proof,
            token_app_ids: a.token_app_ids,
        });
    }
    Ok(apps)
}

/// The field by which two apps' header proofs name the same requests
/// equally closely, if they do: one Android package with no certificates
/// pinned in either or a certificate pinned in both, one iOS bundle id
/// with the same team (or none in both), one web origin pattern in both.
/// Server apps go by list order (the README says to list the narrower
/// ranges first), so they never clash.
fn same_header_proof(a: &AppProof, b: &AppProof) -> Option<&'static str> {
    match (a, b) {
        (
            AppProof::Android {
                package: p,
                certs: c,
            },
            AppProof::Android {
                package: q,
                certs: d,
            },
        ) if p == q => {
            if c.is_empty() && d.is_empty() {
                Some("package")
            } else if c.iter().any(|x| d.contains(x)) {
                Some("cert_fingerprints")
            } else {
                None
            }
        }
        (
            AppProof::Ios {
                bundle_id: b1,
                team_id: t1,
            },
            AppProof::Ios {
                bundle_id: b2,
                team_id: t2,
            },
        ) if b1 == b2 && t1 == t2 => Some(if t1.is_some() { "team_id" } else { "bundle_id" }),
        (AppProof::Web { origins: o1 }, AppProof::Web { origins: o2 })
            if o1.iter().any(|o| o2.contains(o)) =>
        {
            Some("origins")
        }
        _ => None,
    }
}

/// Whether `s` can be an Android package name or an iOS bundle identifier
/// (ASCII letters, digits, `.`, `_`, `-`; at most 255 bytes). Anything else
/// is a mistake in the configuration that no app's header would ever match.
fn valid_app_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a certificate fingerprint: hex, colons optional, any case; 32 bytes
/// (SHA-256) or 20 bytes (SHA-1, accepted for Google API-key compatibility).
pub fn parse_fingerprint(s: &str) -> Option<Vec<u8>> {
    let (bytes, len) = fingerprint_bytes(s)?;
    Some(bytes.get(..len)?.to_vec())
}

/// [`parse_fingerprint`] into a buffer: the bytes and how many there are.
/// One pass and no allocation, since every Android request's cert header
/// is read this way.
fn fingerprint_bytes(s: &str) -> Option<([u8; 32], usize)> {
    if s.len() > 128 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut digits = 0usize;
    for b in s.bytes().filter(|b| *b != b':') {
        let v = hex_val(b)?;
        let slot = out.get_mut(digits / 2)?;
        *slot = *slot << 4 | v;
        digits += 1;
    }
    (digits == 64 || digits == 40).then_some((out, digits / 2))
}

/// One hex digit's value, in either case: fingerprints and digests are
/// written both ways (`keytool` prints upper case, `sha256sum` lower).
fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// An allowed web origin: scheme, host pattern and port. `*.` in front of the
/// host stands for one or more whole sub-domain labels. Host comparison is
/// exact and case-insensitive on whole labels, so `evil-example.com` and
/// `example.com.evil.io` never match `https://*.example.com`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    /// `http` or `https`, lower case: the same host under another scheme is
    /// another origin (RFC 6454), so it never matches.
    scheme: String,
    /// Lower-case host; for a wildcard, the suffix without `*.`.
    host: String,
    /// Written as `*.host`: `host` is then a suffix that matches only whole
    /// labels, with at least one label before it.
    wildcard: bool,
    /// The explicit port, or the scheme's default (443, 80), so that
    /// `https://a.example` and `https://a.example:443` are the same origin.
    port: u16,
}

/// Domains of two labels or more under which anyone can get a name
/// (hosting platforms that give every customer a sub-domain, dynamic DNS,
/// open registries): `*.` directly under one of them would allow any
/// stranger's site. Not the whole Public Suffix List, which is large and
/// changes: the suffixes web apps are commonly served from. Country
/// second levels (`co.uk`, `com.hk`) and the regions of [`OPEN_UNDER`]
/// are found by [`is_open_by_rule`].
const OPEN_SUFFIXES: [&str; 61] = [
    "web.app",
    "firebaseapp.com",
    "appspot.com",
    "cloudfunctions.net",
    "translate.goog",
    "vercel.app",
    "netlify.app",
    "herokuapp.com",
    "github.io",
    "readthedocs.io",
    "hf.space",
    "streamlit.app",
    "now.sh",
    "netlify.com",
    "gitlab.io",
    "bitbucket.io",
    "pages.dev",
    "workers.dev",
    "r2.dev",
    "trycloudflare.com",
    "azurewebsites.net",
    "azurestaticapps.net",
    "azureedge.net",
    "azurefd.net",
    "blob.core.windows.net",
    "cloudapp.net",
    "cloudfront.net",
    "amplifyapp.com",
    "onrender.com",
    "fly.dev",
    "deno.dev",
    "glitch.me",
    "repl.co",
    "replit.dev",
    "replit.app",
    "codesandbox.io",
    "csb.app",
    "stackblitz.io",
    "ngrok.io",
    "ngrok-free.app",
    "ngrok.app",
    "loca.lt",
    "ondigitalocean.app",
    "pythonanywhere.com",
    "surge.sh",
    "blogspot.com",
    "wixsite.com",
    "myshopify.com",
    "wordpress.com",
    "webflow.io",
    "framer.app",
    "railway.app",
    "up.railway.app",
    "uk.com",
    "us.com",
    "eu.org",
    "duckdns.org",
    "dyndns.org",
    "no-ip.org",
    "ddns.net",
    "storage.googleapis.com",
];

/// Domains whose names one or two labels down are open too: a region or
/// a service (`s3.eu-west-1.amazonaws.com`, `us-east-1.elasticbeanstalk.com`,
/// `eastus.cloudapp.azure.com`, `z13.web.core.windows.net`, `a.run.app`)
/// under which every customer gets a name; names further down are fine
/// (`*.shop.a.run.app`). Two labels under `amazonaws.com` cannot tell a
/// region's endpoint from a bucket on the global one
/// (`mybucket.s3.amazonaws.com`): both are refused, so list such origins
/// one by one. AWS Lambda function URLs are `<id>.lambda-url.<region>.on.aws`.
/// AWS's dual-stack endpoints sit one label further down
/// (`s3.dualstack.eu-west-1.amazonaws.com`, see [`is_open_by_rule`]), and
/// its China regions under `amazonaws.com.cn`.
const OPEN_UNDER: [(&str, usize); 7] = [
    ("amazonaws.com", 2),
    ("amazonaws.com.cn", 2),
    ("on.aws", 2),
    ("elasticbeanstalk.com", 1),
    ("cloudapp.azure.com", 1),
    ("web.core.windows.net", 1),
    ("run.app", 1),
];

/// Whether `host` is open to anyone besides [`OPEN_SUFFIXES`]: a country's
/// second level (`co.uk`, `com.hk`, `org.il`, `ac.jp`: a generic label
/// under a two-letter top-level domain, where anyone can register a
/// name), or a name at most [`OPEN_UNDER`]'s depth under one of its
/// domains, or an AWS dual-stack endpoint (`s3.dualstack.<region>`, with
/// `dualstack` second of three labels under `amazonaws.com`), under which
/// every bucket has a name as under `s3.<region>`.
fn is_open_by_rule(host: &str) -> bool {
    let under = OPEN_UNDER.iter().any(|(domain, depth)| {
        host == *domain
            || host
                .strip_suffix(domain)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|rest| {
                    let labels = rest.split('.').count();
                    labels <= *depth
                        || (domain.starts_with("amazonaws.")
                            && labels == 3
                            && rest.split('.').nth(1) == Some("dualstack"))
                })
    });
    if under {
        return true;
    }
    const GENERIC: [&str; 15] = [
        "co", "com", "net", "org", "gov", "edu", "ac", "or", "ne", "go", "gob", "ltd", "plc", "me",
        "nom",
    ];
    match host.split_once('.') {
        Some((second, tld)) => {
            tld.len() == 2
                && tld.bytes().all(|b| b.is_ascii_alphabetic())
                && GENERIC.contains(&second)
        }
        None => false,
    }
}

impl OriginPattern {
    /// Parses `scheme://host[:port]` where host may start with `*.`.
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        // An origin has no path, query or fragment (a trailing `/` is
        // tolerated): a pattern with one would silently allow the whole
        // origin, not the path its author meant.
        let beyond = s
            .split_once("://")
            .and_then(|(_, rest)| rest.find(['/', '?', '#']).and_then(|i| rest.get(i..)));
        if beyond.is_some_and(|b| b != "/") {
            return Err(format!(
                "{s:?}: an origin is scheme://host[:port], without a path, query or fragment"
            ));
        }
        let o = parse_origin_inner(s, true)
            .ok_or_else(|| format!("{s:?} is not an origin like https://app.example.com[:port] or https://*.example.com"))?;
        let (wildcard, host) = match o.host.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, o.host),
        };
        if host.contains('*') || !valid_host(&host) {
            return Err(format!(
                "{s:?}: `*` is only allowed as a whole first label (`*.example.com`)"
            ));
        }
        if wildcard && !host.contains('.') {
            return Err(format!(
                "{s:?}: `*.` needs a domain of two labels or more after it, not a top-level domain"
            ));
        }
        // `*.` covers names at any depth: a suffix above an open one
        // (`googleapis.com` above `storage.googleapis.com`) covers the
        // strangers' names under it too.
        if wildcard && (OPEN_SUFFIXES.contains(&host.as_str()) || is_open_by_rule(&host)) {
            return Err(format!(
                "{s:?}: `{host}` is a public suffix where anyone can register a name, so \
                 `*.{host}` allows their sites too: list your own origin(s) under it"
            ));
        }
        let over_open = OPEN_SUFFIXES
            .iter()
            .copied()
            .chain(OPEN_UNDER.iter().map(|(d, _)| *d))
            .find(|d| is_below(d, &host));
        if let Some(open) = over_open.filter(|_| wildcard) {
            return Err(format!(
                "{s:?}: `*.` matches names at any depth, so `*.{host}` also matches names \
                 under `{open}`, where anyone can get one: list your own origin(s) under it"
            ));
        }
        // No top-level domain is numeric: `*.0.0.1` would match the IPv4
        // address 127.0.0.1, not names under a domain.
        if wildcard
            && host
                .rsplit('.')
                .next()
                .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "{s:?}: `*.` covers names under a domain, not IP addresses"
            ));
        }
        Ok(OriginPattern {
            scheme: o.scheme,
            host,
            wildcard,
            port: o.port,
        })
    }

    /// How closely a matching pattern names an origin, to choose between
    /// apps that both match: an exact host beats any wildcard, and a longer
    /// wildcard suffix a shorter one (`*.pay.example.com` over
    /// `*.example.com`).
    fn specificity(&self) -> usize {
        if self.wildcard {
            self.host.len()
        } else {
            usize::MAX
        }
    }

    /// Whether the origin `o` is one this pattern names.
    pub fn matches(&self, o: &Origin) -> bool {
        if o.scheme != self.scheme || o.port != self.port {
            return false;
        }
        if self.wildcard {
            is_below(&o.host, &self.host)
        } else {
            o.host == self.host
        }
    }
}

/// Whether the host `name` is a name under `domain`, one or more whole
/// labels down (`a.b.example.com` under `example.com`; not `example.com`
/// itself, nor `badexample.com`): what a `*.` pattern matches.
fn is_below(name: &str, domain: &str) -> bool {
    name.strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty())
}

/// A request origin: scheme, lower-case host, port (defaulted by scheme).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// Lower-case ASCII host.
    pub host: String,
    /// Explicit port, or 443/80 by scheme.
    pub port: u16,
}

/// Parses an `Origin` value, or the origin part of a `Referer` URL. Only
/// `http`/`https`, ASCII hosts (browsers send IDNs as punycode), no user
/// info. `null` and anything else odd give `None`.
pub fn parse_origin(s: &str) -> Option<Origin> {
    parse_origin_inner(s, false)
}

/// Whether `value` (an `Origin` header as sent) is an origin a web app of
/// `apps` lists: scheme, host and port only (an `Origin` never carries
/// more; a `Referer`-like value with a path is not one), and one that
/// [`parse_origin`] reads.
pub fn is_listed_web_origin(apps: &[App], value: &str) -> bool {
    let pure = value
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.contains(['/', '?', '#']));
    let Some(origin) = parse_origin(value).filter(|_| pure) else {
        return false;
    };
    apps.iter().any(|app| match &app.proof {
        AppProof::Web { origins } => origins.iter().any(|p| p.matches(&origin)),
        _ => false,
    })
}

/// `allow_wildcard` is for configured patterns only: a request origin with
/// `*` in its host is not an origin at all.
fn parse_origin_inner(s: &str, allow_wildcard: bool) -> Option<Origin> {
    // Only the scheme and authority count: a `Referer` carries the whole
    // URL (up to 4 KiB in Chrome), whose path may be long.
    let end = s
        .find("://")
        .and_then(|at| {
            let rest = s.get(at + 3..)?;
            rest.find(['/', '?', '#']).map(|e| at + 3 + e)
        })
        .unwrap_or(s.len());
    let s = s.get(..end)?;
    if s.len() > 2048 || !s.is_ascii() {
        return None;
    }
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..end)?;
    if authority.contains('@') || authority.contains('%') || authority.contains('\\') {
        return None;
    }
    // An IPv6 host is bracketed (`[2001:db8::1]`): the port, if any,
    // comes after the `]`.
    let (host, port) = match authority.find(']') {
        Some(close) if authority.starts_with('[') => {
            let (h, after) = authority.split_at(close + 1);
            match after.strip_prefix(':') {
                Some(p) => (h, origin_port(p)?),
                None if after.is_empty() => (h, default_port),
                None => return None,
            }
        }
        _ => match authority.rsplit_once(':') {
            Some((h, p)) => (h, origin_port(p)?),
            None => (authority, default_port),
        },
    };
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').map(str::to_owned).unwrap_or(host);
    // An IPv6 host in the form browsers send (RFC 5952, as the URL
    // standard serialises it): one address, one spelling.
    let host = match host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
    {
        Some(addr) => format!("[{}]", ipv6_text(addr)),
        None => host,
    };
    // A host whose last label is a number is an IPv4 address to the URL
    // standard, which browsers serialise dotted-decimal (`127.1`,
    // `0x7f.0.0.1` and `2130706433` are sent as `127.0.0.1`, `010.0.0.1`
    // as `8.0.0.1`): only that spelling names what a browser sends.
    if ends_in_a_number(&host) && host.parse::<std::net::Ipv4Addr>().is_err() {
        return None;
    }
    if allow_wildcard && host.starts_with("*.") {
        // Only patterns carry `*`; the rest is checked by OriginPattern::parse.
        return Some(Origin { scheme, host, port });
    }
    if !valid_host(&host) {
        return None;
    }
    Some(Origin { scheme, host, port })
}

/// Whether the URL standard reads `host` as an IPv4 address: its last
/// label (a trailing dot already cut) is decimal digits or `0x` and hex
/// digits. `Ipv4Addr`'s parser takes only four decimal parts without
/// leading zeros, the one form browsers send.
fn ends_in_a_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or("");
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    !last.is_empty() && (last.bytes().all(|b| b.is_ascii_digit()) || hex)
}

/// An IPv6 address as the URL standard serialises a host: RFC 5952's text
/// (lower-case hex, the first longest run of two or more zero groups as
/// `::`), which `Ipv6Addr`'s `Display` writes, except that an IPv4-mapped
/// address keeps hex groups (`::ffff:102:304`, where `Display` writes
/// `::ffff:1.2.3.4`).
fn ipv6_text(addr: std::net::Ipv6Addr) -> String {
    match addr.to_ipv4_mapped() {
        Some(v4) => {
            let [a, b, c, d] = v4.octets();
            format!(
                "::ffff:{:x}:{:x}",
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d])
            )
        }
        None => addr.to_string(),
    }
}

/// An origin's explicit port: 1–5 ASCII digits that make a `u16`.
fn origin_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// Whether `h` is a host an origin may have: a bracketed IPv6 literal, or
/// ASCII labels of letters, digits and `-` (browsers send IDNs as
/// punycode). Anything else is `false` (its caller then finds no origin),
/// never a partial match.
fn valid_host(h: &str) -> bool {
    if h.starts_with('[') && h.ends_with(']') {
        return h
            .get(1..h.len() - 1)
            .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok());
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `api_keys` as written in the configuration; compiled into [`ApiKeys`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiKeys {
    /// Header carrying the key (default `x-api-key`). See
    /// [`ApiKeys::header`].
    #[serde(default = "default_key_header")]
    header: String,
    /// Also accept the key from this query parameter. See
    /// [`ApiKeys::query_param`].
    #[serde(default, deserialize_with = "crate::config::present")]
    query_param: Option<String>,
    /// Keep the key on the upstream request (default `true`); `false`
    /// removes it on every route that reads keys. See [`ApiKeys::forward`].
    #[serde(default = "forward_by_default")]
    forward: bool,
    /// `keys[]`: the configured keys. See [`ApiKeys::keys`].
    #[serde(default)]
    keys: Vec<RawApiKey>,
}

fn forward_by_default() -> bool {
    true
}

fn default_key_header() -> String {
    "x-api-key".into()
}

/// One `api_keys.keys[]` entry as written in the configuration; compiled
/// into [`ApiKey`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    /// Public id: sent upstream as `x-appguard-key-id`, logged instead of
    /// the key. See [`ApiKey::id`].
    id: String,
    /// SHA-256 of the key, 64 hex digits (`appguard-cli hash-key`); a
    /// plaintext key is refused. See [`ApiKey::sha256`].
    sha256: String,
    /// App ids that may use the key; left out, any; written empty, refused.
    /// Compiled into indexes, [`ApiKey::apps`].
    #[serde(default, deserialize_with = "crate::config::restriction")]
    apps: Vec<String>,
    /// CIDRs the key may be used from; left out, anywhere; written empty,
    /// refused. See [`ApiKey::ips`].
    #[serde(default, deserialize_with = "crate::config::restriction")]
    ips: Vec<String>,
    /// Route names the key may be used on; left out, any; written empty,
    /// refused. See [`ApiKey::routes`].
    #[serde(default, deserialize_with = "crate::config::restriction")]
    routes: Vec<String>,
    /// Revoked: the key is refused as `api_key_invalid` (default `false`).
    /// See [`ApiKey::disabled`].
    #[serde(default)]
    disabled: bool,
}

/// API keys, configured by their SHA-256 only, with Google-style application
/// restrictions.
#[derive(Debug)]
pub struct ApiKeys {
    /// Request header carrying the key (lower case).
    pub header: String,
    /// Query parameter carrying the key, when keys may come in the URL.
    pub query_param: Option<String>,
    /// Whether the key goes on upstream as the client sent it (the default:
    /// upstreams often still identify their callers by the key). With
    /// `false`, on every route that reads keys, the key header is removed
    /// and the key parameter is cut out of `:path`, so that the key reaches
    /// neither the upstream nor Envoy's access logs; the upstream gets
    /// `x-appguard-key-id` instead.
    pub forward: bool,
    /// The configured keys.
    pub keys: Vec<ApiKey>,
    /// Each key's index in `keys`, by its SHA-256: a lookup costs the same
    /// for one key or 100,000, and a client sending random keys cannot
    /// make each request compare every digest. (Only the digest of what
    /// the client sent is looked up, never the key: the lookup's timing
    /// tells nothing of a configured key.)
    by_digest: HashMap<[u8; 32], usize>,
}

/// One API key.
#[derive(Debug)]
pub struct ApiKey {
    /// Public id of the key: sent upstream as `x-appguard-key-id` and logged
    /// instead of the key.
    pub id: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// Indexes into `Config::apps` the key may be used by; empty = any app.
    pub apps: Vec<usize>,
    /// Client IP ranges the key may be used from; empty = anywhere.
    pub ips: CidrSet,
    /// Route names the key may be used on; empty = any route.
    pub routes: Vec<String>,
    /// Revoked: refused as `api_key_invalid`.
    pub disabled: bool,
}

/// `api_keys`, compiled (the defaults when the section is absent). Keys are
/// configured by SHA-256 only, never in plain text; a key given twice, or
/// an id that is the key itself (ids go upstream and into logs), is refused.
/// Sets keep 100,000 keys linear to check.
pub(crate) fn compile_api_keys(
    raw: Option<RawApiKeys>,
    apps: &[App],
    route_names: &[&str],
) -> Result<ApiKeys, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ApiKeys::new(
            default_key_header(),
            None,
            forward_by_default(),
            Vec::new(),
        ));
    };
    let header = crate::config::header_name("api_keys.header", &raw.header)?;
    if let Some(q) = &raw.query_param {
        if q.is_empty()
            || !q
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::new(
                "api_keys.query_param",
                "must be a plain parameter name",
            ));
        }
    }
    let mut keys: Vec<ApiKey> = Vec::with_capacity(raw.keys.len());
    // Ids and digests seen so far: sets, so that 100,000 keys compile in
    // linear time.
    let mut ids: HashSet<String> = HashSet::with_capacity(raw.keys.len());
    let mut digests: HashSet<[u8; 32]> = HashSet::with_capacity(raw.keys.len());
    for (i, k) in raw.keys.into_iter().enumerate() {
        let at = format!("api_keys.keys[{i}]");
        if !crate::config::valid_name(&k.id) {
            return Err(ConfigError::new(
                format!("{at}.id"),
                "must be 1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        let digest = parse_sha256_hex(&k.sha256).ok_or_else(|| {
            ConfigError::new(
                format!("{at}.sha256"),
                "must be the key's SHA-256 as 64 hex digits (`appguard-cli hash-key`); plaintext keys are not accepted",
            )
        })?;
        if !digests.insert(digest) {
            return Err(ConfigError::new(
                format!("{at}.sha256"),
                "the same key is configured twice",
            ));
        }
        // An id goes upstream (`x-appguard-key-id`) and into logs: one that
        // is the key itself would put the key there, whatever `forward`
        // says.
        if Sha256::digest(k.id.as_bytes())[..] == digest[..] {
            return Err(ConfigError::new(
                format!("{at}.id"),
                "is the key itself (its SHA-256 is `sha256`): the id is sent upstream as \
                 x-appguard-key-id and logged, so give the key a name instead",
            ));
        }
        if !ids.insert(k.id.clone()) {
            return Err(ConfigError::new(
                format!("{at}.id"),
                format!("duplicate key id {}", crate::config::shown(&k.id)),
            ));
        }
        let mut app_idx = Vec::new();
        for (j, name) in k.apps.iter().enumerate() {
            let idx = apps.iter().position(|a| &a.id == name).ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.apps[{j}]"),
                    format!("no app with id {}", crate::config::shown(name)),
                )
            })?;
            app_idx.push(idx);
        }
        for (j, r) in k.routes.iter().enumerate() {
            if !route_names.contains(&r.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.routes[{j}]"),
                    format!("no route named {}", crate::config::shown(r)),
                ));
            }
        }
        let ips = CidrSet::parse(&k.ips)
            .map_err(|(j, m)| ConfigError::new(format!("{at}.ips[{j}]"), m))?;
        keys.push(ApiKey {
            id: k.id,
            sha256: digest,
            apps: app_idx,
            ips,
            routes: k.routes,
            disabled: k.disabled,
        });
    }
    Ok(ApiKeys::new(header, raw.query_param, raw.forward, keys))
}

/// A key's `sha256`: exactly 64 hex digits, in either case. Anything else,
/// such as the key itself pasted there, is refused at load.
fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_val(*b.get(2 * i)?)? << 4 | hex_val(*b.get(2 * i + 1)?)?;
    }
    Some(out)
}

/// The longest API key, in bytes, that the filter compares: a longer one
/// is `api_key_invalid` before any hashing, so that a client cannot make
/// every request hash kilobytes. Real keys (Google's 39 characters, a
/// random 32-byte key in base64) are far shorter.
pub const MAX_API_KEY_BYTES: usize = 256;

/// The SHA-256 of an API key as lower-case hex: what goes into the config.
pub fn hash_api_key(key: &str) -> String {
    crate::hex_lower(&Sha256::digest(key.as_bytes()))
}

/// Constant-time equality of two digests.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

impl ApiKeys {
    /// The keys, with their index by digest.
    pub fn new(
        header: String,
        query_param: Option<String>,
        forward: bool,
        keys: Vec<ApiKey>,
    ) -> ApiKeys {
        let mut by_digest = HashMap::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            // The first of two equal digests, as a scan would find it (the
            // configuration refuses them anyway).
            by_digest.entry(k.sha256).or_insert(i);
        }
        ApiKeys {
            header,
            query_param,
            forward,
            keys,
            by_digest,
        }
    }

    /// Finds the key whose SHA-256 equals the presented key's.
    pub fn lookup(&self, presented: &str) -> Option<(usize, &ApiKey)> {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let i = *self.by_digest.get(&d)?;
        Some((i, self.keys.get(i)?))
    }
}

/// The API keys a worker has already found, by a keyed hash of the key as
/// sent ([`Keyed128`], SipHash under the instance's salt), so that a key's
/// later requests skip the SHA-256 and the comparison with every configured
/// digest ([`ApiKeys::lookup`]): a tenth of the work. Only keys that were
/// found are remembered, so the memo holds at most one entry per configured
/// key whatever clients send; a sent key that is not configured always
/// takes the full lookup. A key's entry answers what the full lookup
/// answered (same index, same key), and the memo lives and dies with the
/// worker's configuration. It holds no key, only its keyed hash.
pub struct KeyMemo {
    /// SipHash keys derived from the instance's salt. A memo hit skips the
    /// SHA-256 comparison, so a client must not be able to make up a key whose
    /// entry is a found key's: without the salt it cannot compute one.
    keys: Keyed128,
    /// Keyed hash of a key as sent → its index in [`ApiKeys::keys`]; only keys
    /// that were found, so it stays within the number configured.
    found: HashMap<[u8; 16], usize>,
}

impl KeyMemo {
    /// An empty memo whose hash keys are derived from the instance's salt.
    pub fn new(salt: &BucketSalt) -> KeyMemo {
        KeyMemo {
            keys: Keyed128::new(salt, "appguard/api-key-memo"),
            found: HashMap::new(),
        }
    }

    /// [`ApiKeys::lookup`], remembered.
    pub fn lookup<'k>(
        &mut self,
        keys: &'k ApiKeys,
        presented: &str,
    ) -> Option<(usize, &'k ApiKey)> {
        let id = self.keys.digest(&[presented.as_bytes()]);
        if let Some(k) = self
            .found
            .get(&id)
            .and_then(|&i| Some((i, keys.keys.get(i)?)))
        {
            return Some(k);
        }
        let found = keys.lookup(presented)?;
        // Bounded by the configured keys; a stale memo (it cannot be one: a
        // new configuration builds a new worker) is dropped, not grown.
        if self.found.len() >= keys.keys.len() {
            self.found.clear();
        }
        self.found.insert(id, found.0);
        Some(found)
    }
}

impl std::fmt::Debug for KeyMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyMemo({} keys found)", self.found.len())
    }
}

/// The platform headers a request carries (values as sent).
#[derive(Clone, Copy, Debug, Default)]
pub struct PlatformHeaders<'a> {
    /// Android package name header.
    pub android_package: Option<&'a str>,
    /// Android signing-cert fingerprint header.
    pub android_cert: Option<&'a str>,
    /// iOS bundle id header.
    pub ios_bundle_id: Option<&'a str>,
    /// iOS team id header.
    pub ios_team_id: Option<&'a str>,
    /// `Origin`.
    pub origin: Option<&'a str>,
    /// `Referer`, used when `Origin` is absent.
    pub referer: Option<&'a str>,
}

impl PlatformHeaders<'_> {
    /// Whether any Android or iOS header is present: for a web or server app,
    /// one is a mismatch (headers of another platform, see [`headers_agree`]).
    fn any_mobile(&self) -> bool {
        self.android_package.is_some()
            || self.android_cert.is_some()
            || self.ios_bundle_id.is_some()
            || self.ios_team_id.is_some()
    }

    /// The origin a browser shows: `Origin`, else `Referer` (browsers send no
    /// `Origin` on some requests, such as same-origin GETs).
    fn web_origin(&self) -> Option<&str> {
        self.origin.or(self.referer)
    }
}

/// Checks that the headers agree with an app established otherwise (by the
/// token's app claim). Headers of another platform are a mismatch: a stolen
/// mobile token used from a web page still carries the browser's `Origin`.
pub fn headers_agree(app: &App, h: &PlatformHeaders<'_>, ip: Option<IpAddr>) -> Result<(), Reason> {
    match &app.proof {
        AppProof::Android { package, certs } => {
            if h.ios_bundle_id.is_some() || h.ios_team_id.is_some() || h.web_origin().is_some() {
                return Err(Reason::AppMismatch);
            }
            if let Some(p) = h.android_package {
                if p != package {
                    return Err(Reason::AppMismatch);
                }
            }
            if let Some(c) = h.android_cert {
                if !certs.is_empty() && !cert_matches(certs, c) {
                    return Err(Reason::AppMismatch);
                }
            }
            Ok(())
        }
        AppProof::Ios { bundle_id, team_id } => {
            if h.android_package.is_some() || h.android_cert.is_some() || h.web_origin().is_some() {
                return Err(Reason::AppMismatch);
            }
            if let Some(b) = h.ios_bundle_id {
                if b != bundle_id {
                    return Err(Reason::AppMismatch);
                }
            }
            if let (Some(t), Some(want)) = (h.ios_team_id, team_id) {
                if t != want {
                    return Err(Reason::AppMismatch);
                }
            }
            Ok(())
        }
        AppProof::Web { origins } => {
            if h.any_mobile() {
                return Err(Reason::AppMismatch);
            }
            match h.web_origin().and_then(parse_origin) {
                Some(o) if origins.iter().any(|p| p.matches(&o)) => Ok(()),
                _ => Err(Reason::OriginDenied),
            }
        }
        AppProof::Server { cidrs } => {
            if h.any_mobile() || h.web_origin().is_some() {
                return Err(Reason::AppMismatch);
            }
            match ip {
                Some(ip) if cidrs.contains(ip) => Ok(()),
                _ => Err(Reason::IpDenied),
            }
        }
    }
}

/// Whether the fingerprint header names one of the app's pinned signing
/// certificates (SHA-256, or SHA-1 as Google's API keys accept), compared
/// in constant time. An unreadable header matches nothing.
fn cert_matches(certs: &[Vec<u8>], header: &str) -> bool {
    match fingerprint_bytes(header) {
        Some((fp, len)) => fp
            .get(..len)
            .is_some_and(|fp| certs.iter().any(|c| ct_eq(c, fp))),
        None => false,
    }
}

/// Establishes the app from the platform headers alone (no token): the
/// weakest evidence, since headers are forgeable; routes that matter should
/// require a token. `Ok(None)` when the request shows no platform at all.
///
/// When several apps match, the one that names the request most closely is
/// chosen, whatever their order: an Android app pinned to the certificate
/// shown over one without certificates, an iOS app pinned to the team
/// shown over one without a team (and, when no team is shown, the one
/// without a team over those pinned to one; apps of two teams are then
/// `app_mismatch`), an exact origin over a wildcard (and a longer wildcard
/// over a shorter). Otherwise a debug app without certificates listed
/// first would take every release request, and an API key restricted to
/// the release app would refuse all of them. Apps the headers name
/// equally closely are refused when the config loads.
pub fn app_from_headers<'c>(
    apps: &'c [App],
    h: &PlatformHeaders<'_>,
    ip: Option<IpAddr>,
) -> Result<Option<&'c App>, Reason> {
    let android = h.android_package.is_some() || h.android_cert.is_some();
    let ios = h.ios_bundle_id.is_some() || h.ios_team_id.is_some();
    let web = h.web_origin().is_some();
    if u8::from(android) + u8::from(ios) + u8::from(web) > 1 {
        return Err(Reason::AppMismatch);
    }
    if android {
        let package = h.android_package.ok_or(Reason::AppUnknown)?;
        let mut known = false;
        let mut unpinned = None;
        for app in apps {
            if let AppProof::Android { package: p, certs } = &app.proof {
                if p == package {
                    known = true;
                    if certs.is_empty() {
                        unpinned = unpinned.or(Some(app));
                    } else if h.android_cert.is_some_and(|c| cert_matches(certs, c)) {
                        return Ok(Some(app));
                    }
                }
            }
        }
        if unpinned.is_some() {
            return Ok(unpinned);
        }
        return Err(if known {
            Reason::AppMismatch
        } else {
            Reason::AppUnknown
        });
    }
    if ios {
        let bundle = h.ios_bundle_id.ok_or(Reason::AppUnknown)?;
        let mut known = false;
        // The app of this bundle without a team (one at most: the config
        // refuses two), and the apps pinned to a team when none is shown.
        let mut unpinned = None;
        let mut pinned = None;
        let mut pinned_more = false;
        for app in apps {
            if let AppProof::Ios { bundle_id, team_id } = &app.proof {
                if bundle_id == bundle {
                    known = true;
                    match (team_id.as_deref(), h.ios_team_id) {
                        (Some(want), Some(shown)) if want == shown => return Ok(Some(app)),
                        (Some(_), Some(_)) => {}
                        (None, _) => unpinned = unpinned.or(Some(app)),
                        (Some(_), None) => {
                            pinned_more |= pinned.is_some();
                            pinned = pinned.or(Some(app));
                        }
                    }
                }
            }
        }
        // Without a team shown, the app that asks for none names the
        // request most closely; apps of two teams cannot be told apart.
        if unpinned.is_some() {
            return Ok(unpinned);
        }
        if pinned.is_some() && !pinned_more {
            return Ok(pinned);
        }
        return Err(if known {
            Reason::AppMismatch
        } else {
            Reason::AppUnknown
        });
    }
    if let Some(value) = h.web_origin() {
        let origin = parse_origin(value).ok_or(Reason::OriginDenied)?;
        let mut best: Option<(usize, &App)> = None;
        for app in apps {
            let AppProof::Web { origins } = &app.proof else {
                continue;
            };
            let closest = origins
                .iter()
                .filter(|p| p.matches(&origin))
                .map(OriginPattern::specificity)
                .max();
            if let Some(s) = closest {
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, app));
                }
            }
        }
        return best.map(|(_, app)| Some(app)).ok_or(Reason::OriginDenied);
    }
    if let Some(ip) = ip {
        if let Some(app) = apps
            .iter()
            .find(|a| matches!(&a.proof, AppProof::Server { cidrs } if cidrs.contains(ip)))
        {
            return Ok(Some(app));
        }
    }
    Ok(None)
}

/// Finds the app a token's app claim names. `firebase` claims look like
/// `1:<project number>:<android|ios|web>:<hex>`; the platform in the claim
/// must be the app's platform.
pub fn app_from_claim<'c>(apps: &'c [App], claim: &str, firebase: bool) -> Result<&'c App, Reason> {
    let app = apps
        .iter()
        .find(|a| a.is_named_by(claim))
        .ok_or(Reason::AppUnknown)?;
    if firebase {
        let platform = claim.split(':').nth(2).ok_or(Reason::AppUnknown)?;
        if platform != app.platform.as_str() {
            return Err(Reason::AppMismatch);
        }
    }
    Ok(app)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn origin(s: &str) -> Origin {
        parse_origin(s).unwrap()
    }

    #[test]
    fn origin_patterns_match_whole_labels_only() {
        let p = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(p.matches(&origin("https://app.example.com")));
        assert!(p.matches(&origin("https://a.b.example.com")));
        assert!(p.matches(&origin("https://APP.Example.COM:443")));
        assert!(!p.matches(&origin("https://example.com")), "needs a label");
        assert!(!p.matches(&origin("https://evil-example.com")));
        assert!(!p.matches(&origin("https://app.example.com.evil.io")));
        assert!(!p.matches(&origin("https://appexample.com")));
        assert!(!p.matches(&origin("http://app.example.com")), "scheme");
        assert!(!p.matches(&origin("https://app.example.com:8443")), "port");
        let exact = OriginPattern::parse("https://shop.example.com:8443").unwrap();
        assert!(exact.matches(&origin("https://shop.example.com:8443/path?x")));
        assert!(!exact.matches(&origin("https://shop.example.com")));
        for bad in [
            "example.com",
            "ftp://x.com",
            "https://*",
            "https://a.*.com",
            "https://*example.com",
            "https://x.com:99999",
            "https://*.com",
            "https://*.localhost",
            "https://*.0.0.1",
            "http://*.168.1.1:8080",
            "https://*.web.app",
            "https://*.co.uk",
            "https://*.VERCEL.app",
            // country second levels, found by rule
            "https://*.com.hk",
            "https://*.co.il",
            "https://*.org.uk",
            "https://*.ac.jp",
            // hosting where every customer gets a name
            "https://*.blogspot.com",
            "https://*.s3.amazonaws.com",
            "https://*.s3.eu-west-1.amazonaws.com",
            "https://*.s3.dualstack.eu-west-1.amazonaws.com",
            "https://*.s3-accesspoint.dualstack.us-east-1.amazonaws.com",
            "https://*.s3.cn-north-1.amazonaws.com.cn",
            "https://*.amazonaws.com.cn",
            "https://*.lambda-url.us-east-1.on.aws",
            "https://*.on.aws",
            "https://*.readthedocs.io",
            "https://*.hf.space",
            "https://*.streamlit.app",
            "https://*.now.sh",
            "https://*.netlify.com",
            "https://*.us-east-1.elasticbeanstalk.com",
            "https://*.eastus.cloudapp.azure.com",
            "https://*.z13.web.core.windows.net",
            "https://*.a.run.app",
            "https://*.myshopify.com",
            "https://*.run.app",
            "https://*.duckdns.org",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
        // one's own names under such a suffix are fine
        for good in [
            "https://*.shop.web.app",
            "https://shop.web.app",
            "https://*.example.co.uk",
            "https://*.example.com.hk",
            "https://*.example.io",
            "https://*.shop.myshopify.com",
            "https://*.shop.a.run.app",
            "https://*.web.de",
            "https://*.mybucket.s3.dualstack.eu-west-1.amazonaws.com",
            "https://mybucket.s3.dualstack.eu-west-1.amazonaws.com",
        ] {
            assert!(OriginPattern::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "null",
            "https://user@example.com",
            "https://exa%6Dple.com",
            "https://ex\u{e4}mple.com",
            "https://",
            "javascript:alert(1)",
        ] {
            assert!(parse_origin(bad).is_none(), "{bad}");
        }
        assert_eq!(origin("https://example.com./x").host, "example.com");
        // A `Referer` is a whole URL: a long path (Chrome sends up to
        // 4 KiB) or an unusual one does not make its origin unreadable.
        let long = format!("https://shop.example.com/search?q={}", "a".repeat(3000));
        assert_eq!(origin(&long).host, "shop.example.com");
        assert_eq!(
            origin("https://shop.example.com/caf\u{e9}").host,
            "shop.example.com"
        );
        let host = format!("https://{}.com/", "a".repeat(2050));
        assert!(parse_origin(&host).is_none());
    }

    #[test]
    fn the_app_that_names_the_request_most_closely_is_chosen() {
        const CERT: &str = "14:6D:E9:83:C5:73:06:50:D8:EE:B9:95:2F:34:FC:64:16:A0:83:42:E6:1D:BE:A8:8A:04:96:B2:3F:CF:44:E5";
        let raw: Vec<RawApp> = serde_json::from_value(serde_json::json!([
            {"id": "debug", "platform": "android", "package": "com.x"},
            {"id": "release", "platform": "android", "package": "com.x", "cert_fingerprints": [CERT]},
            {"id": "ios-any", "platform": "ios", "bundle_id": "com.x"},
            {"id": "ios-team", "platform": "ios", "bundle_id": "com.x", "team_id": "ABCDE12345"},
            {"id": "web-all", "platform": "web", "origins": ["https://*.example.com"]},
            {"id": "web-pay-all", "platform": "web", "origins": ["https://*.pay.example.com"]},
            {"id": "web-pay", "platform": "web", "origins": ["https://pay.example.com"]}
        ]))
        .unwrap();
        let apps = compile_apps(raw).unwrap();
        let id = |h: PlatformHeaders<'_>| {
            app_from_headers(&apps, &h, None).map(|a| a.map(|a| a.id.as_str()))
        };
        let none = PlatformHeaders {
            android_package: None,
            android_cert: None,
            ios_bundle_id: None,
            ios_team_id: None,
            origin: None,
            referer: None,
        };
        let android = |cert| PlatformHeaders {
            android_package: Some("com.x"),
            android_cert: cert,
            ..none
        };
        assert_eq!(id(android(Some(CERT))), Ok(Some("release")));
        assert_eq!(id(android(None)), Ok(Some("debug")));
        let other = "AA:6D:E9:83:C5:73:06:50:D8:EE:B9:95:2F:34:FC:64:16:A0:83:42:E6:1D:BE:A8:8A:04:96:B2:3F:CF:44:E5";
        assert_eq!(id(android(Some(other))), Ok(Some("debug")));
        let ios = |team| PlatformHeaders {
            ios_bundle_id: Some("com.x"),
            ios_team_id: team,
            ..none
        };
        assert_eq!(id(ios(Some("ABCDE12345"))), Ok(Some("ios-team")));
        assert_eq!(id(ios(Some("ZZZZZ99999"))), Ok(Some("ios-any")));
        assert_eq!(id(ios(None)), Ok(Some("ios-any")));
        let web = |o| PlatformHeaders {
            origin: Some(o),
            ..none
        };
        assert_eq!(id(web("https://pay.example.com")), Ok(Some("web-pay")));
        assert_eq!(
            id(web("https://eu.pay.example.com")),
            Ok(Some("web-pay-all"))
        );
        assert_eq!(id(web("https://shop.example.com")), Ok(Some("web-all")));
        assert_eq!(id(web("https://example.org")), Err(Reason::OriginDenied));
        // pinned apps alone: a wrong team or cert is still a mismatch
        let raw: Vec<RawApp> = serde_json::from_value(serde_json::json!([
            {"id": "ios-team", "platform": "ios", "bundle_id": "com.x", "team_id": "ABCDE12345"},
            {"id": "release", "platform": "android", "package": "com.x", "cert_fingerprints": [CERT]}
        ]))
        .unwrap();
        let apps = compile_apps(raw).unwrap();
        let id = |h: PlatformHeaders<'_>| {
            app_from_headers(&apps, &h, None).map(|a| a.map(|a| a.id.as_str()))
        };
        assert_eq!(id(ios(Some("ZZZZZ99999"))), Err(Reason::AppMismatch));
        assert_eq!(id(ios(None)), Ok(Some("ios-team")));
        // a team id alone names no app
        let team_only = PlatformHeaders {
            ios_team_id: Some("ABCDE12345"),
            ..none
        };
        assert_eq!(id(team_only), Err(Reason::AppUnknown));
        // A token named the app: headers that disagree with it are refused.
        let pinned = apps.iter().find(|a| a.id == "ios-team").unwrap();
        assert_eq!(
            headers_agree(pinned, &ios(Some("ABCDE12345")), None),
            Ok(())
        );
        assert_eq!(headers_agree(pinned, &ios(None), None), Ok(()));
        assert_eq!(
            headers_agree(pinned, &ios(Some("ZZZZZ99999")), None),
            Err(Reason::AppMismatch)
        );
        let other_bundle = PlatformHeaders {
            ios_bundle_id: Some("com.y"),
            ..none
        };
        assert_eq!(
            headers_agree(pinned, &other_bundle, None),
            Err(Reason::AppMismatch)
        );
        assert_eq!(id(android(Some(other))), Err(Reason::AppMismatch));
        assert_eq!(id(android(None)), Err(Reason::AppMismatch));
    }

    #[test]
    fn a_token_app_id_names_one_app() {
        let raw: Vec<RawApp> = serde_json::from_value(serde_json::json!([
            {"id": "a", "platform": "android", "package": "com.example.a", "token_app_ids": ["1:1:android:x"]},
            {"id": "b", "platform": "android", "package": "com.example.b", "token_app_ids": ["1:1:android:y", "1:1:android:x"]}
        ]))
        .unwrap();
        let e = compile_apps(raw).unwrap_err();
        assert_eq!(e.path, "apps[1].token_app_ids[1]");
        assert!(e.message.contains("already names app \"a\""), "{e}");
        // An app without `token_app_ids` is named by its id: no other app
        // may claim that name, before or after it.
        for (apps, path) in [
            (
                serde_json::json!([
                    {"id": "shop-web", "platform": "web", "origins": ["https://shop.example.com"]},
                    {"id": "partner", "platform": "android", "package": "com.partner", "token_app_ids": ["shop-web"]}
                ]),
                "apps[1].token_app_ids[0]",
            ),
            (
                serde_json::json!([
                    {"id": "partner", "platform": "android", "package": "com.partner", "token_app_ids": ["shop-web"]},
                    {"id": "shop-web", "platform": "web", "origins": ["https://shop.example.com"]}
                ]),
                "apps[1].id",
            ),
        ] {
            let raw: Vec<RawApp> = serde_json::from_value(apps).unwrap();
            let e = compile_apps(raw).unwrap_err();
            assert_eq!(e.path, path, "{e}");
        }
    }

    #[test]
    fn ipv6_origins_with_and_without_a_port() {
        // Browsers leave the default port out: `https://[2001:db8::1]`.
        let o = origin("https://[2001:db8::1]");
        assert_eq!((o.host.as_str(), o.port), ("[2001:db8::1]", 443));
        let o = origin("http://[::1]:8080/x");
        assert_eq!((o.host.as_str(), o.port), ("[::1]", 8080));
        let p = OriginPattern::parse("https://[2001:db8::1]").unwrap();
        assert!(p.matches(&origin("https://[2001:db8::1]")));
        assert!(p.matches(&origin("https://[2001:DB8::1]:443/")));
        assert!(!p.matches(&origin("https://[2001:db8::2]")));
        for bad in [
            "https://[2001:db8::1]x",
            "https://[2001:db8::1]:",
            "https://[2001:db8::1]:1:2",
            "https://[2001:db8::zz]",
            "https://2001:db8::1",
        ] {
            assert!(parse_origin(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_wildcard_over_an_open_suffix_is_refused() {
        // `*.` matches one or more labels: a pattern above a suffix where
        // anyone gets a name (`storage.googleapis.com`, a region of
        // `web.core.windows.net` or `cloudapp.azure.com`) covers strangers'
        // sites under it, as `*.` directly under it would.
        for (bad, stranger) in [
            (
                "https://*.googleapis.com",
                "https://evil.storage.googleapis.com",
            ),
            (
                "https://*.core.windows.net",
                "https://evil.z13.web.core.windows.net",
            ),
            (
                "https://*.azure.com",
                "https://evil.eastus.cloudapp.azure.com",
            ),
            // Azure's CDN and Front Door endpoints, and blob storage.
            ("https://*.azureedge.net", "https://evil.azureedge.net"),
            ("https://*.azurefd.net", "https://evil.azurefd.net"),
            (
                "https://*.blob.core.windows.net",
                "https://evil.blob.core.windows.net",
            ),
        ] {
            if let Ok(p) = OriginPattern::parse(bad) {
                panic!(
                    "{bad} accepted; it matches {stranger}: {}",
                    p.matches(&origin(stranger))
                );
            }
        }
    }

    #[test]
    fn an_empty_token_app_id_is_refused() {
        // A token whose app claim is the empty string (an issuer writing
        // `"app": ""` on tokens minted without an app) must name no app.
        for bad in ["", " ", " 1:1:android:x"] {
            let raw: Vec<RawApp> = serde_json::from_value(serde_json::json!([
                {"id": "a", "platform": "android", "package": "com.example.a", "token_app_ids": [bad]}
            ]))
            .unwrap();
            if let Ok(apps) = compile_apps(raw) {
                panic!(
                    "token_app_ids [{bad:?}] accepted; a claim {bad:?} names: {:?}",
                    app_from_claim(&apps, bad, false).map(|a| a.id.as_str())
                );
            }
        }
    }

    /// The URL standard reads a host whose last label is a number as an
    /// IPv4 address and serialises it dotted-decimal: browsers send
    /// `https://127.0.0.1` for `https://127.1`, `https://0x7f.0.0.1`,
    /// `https://2130706433` and `https://127.000.000.001`, and
    /// `https://8.0.0.1` for `https://010.0.0.1` (octal). Such a pattern
    /// loads and matches no browser's request (or another address than
    /// written); it must be read as the address or refused.
    #[test]
    fn ipv4_origins_in_another_spelling_are_read_as_addresses_or_refused() {
        for (pattern, sent) in [
            ("https://127.1", "https://127.0.0.1"),
            ("https://0x7f.0.0.1", "https://127.0.0.1"),
            ("https://2130706433", "https://127.0.0.1"),
            ("https://127.000.000.001", "https://127.0.0.1"),
            ("https://010.0.0.1", "https://8.0.0.1"),
        ] {
            if let Ok(p) = OriginPattern::parse(pattern) {
                assert!(
                    p.matches(&origin(sent)),
                    "{pattern} loads but does not match {sent}, the origin a browser sends for it"
                );
            }
        }
    }

    #[test]
    fn ipv6_origins_compare_as_addresses() {
        // Browsers send an IPv6 origin in its canonical form (RFC 5952,
        // `[2001:db8::1]`, `[::ffff:102:304]`): a pattern written in
        // another form of the same address must name it, and two apps
        // listing one address in two forms cannot be told apart.
        for (pattern, sent) in [
            ("https://[2001:DB8:0::1]", "https://[2001:db8::1]"),
            ("https://[2001:db8:0:0:0:0:0:1]", "https://[2001:db8::1]"),
            ("https://[::ffff:1.2.3.4]", "https://[::ffff:102:304]"),
        ] {
            let p = OriginPattern::parse(pattern).unwrap();
            assert!(p.matches(&origin(sent)), "{pattern} does not match {sent}");
        }
        let raw: Vec<RawApp> = serde_json::from_value(serde_json::json!([
            {"id": "a", "platform": "web", "origins": ["https://[2001:db8:0::1]"]},
            {"id": "b", "platform": "web", "origins": ["https://[2001:db8::1]"]}
        ]))
        .unwrap();
        assert!(compile_apps(raw).is_err(), "one address in two apps");
    }

    #[test]
    fn origin_patterns_with_a_path_query_or_fragment_are_refused() {
        // An origin cannot say a path: allowing the whole origin instead
        // of the path its author meant would be silent widening.
        for bad in [
            "https://shop.example.com/app",
            "https://shop.example.com?x=1",
            "https://shop.example.com#x",
            "https://*.example.com/a/",
        ] {
            let e = OriginPattern::parse(bad).unwrap_err();
            assert!(e.contains("without a path"), "{bad}: {e}");
        }
        assert!(OriginPattern::parse("https://shop.example.com/").is_ok());
    }

    #[test]
    fn fingerprints_with_or_without_colons_any_case() {
        let a = parse_fingerprint("AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89").unwrap();
        let b =
            parse_fingerprint("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
                .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(
            parse_fingerprint("da39a3ee5e6b4b0d3255bfef95601890afd80709")
                .unwrap()
                .len(),
            20
        );
        assert!(parse_fingerprint("xyz").is_none());
        assert!(parse_fingerprint(&"a".repeat(62)).is_none());
        assert!(parse_fingerprint(&"g".repeat(64)).is_none());
        for bad in [
            "a".repeat(65),
            "a".repeat(66),
            "a".repeat(41),
            "a".repeat(39),
            ":".repeat(64),
            String::new(),
            format!("{}\u{e9}", "a".repeat(63)),
            format!("{}:", "ab:".repeat(43)),
        ] {
            assert!(parse_fingerprint(&bad).is_none(), "{bad:?}");
            assert!(!cert_matches(std::slice::from_ref(&a), &bad), "{bad:?}");
        }
        // Colons anywhere, as long as the digits are 40 or 64.
        assert_eq!(
            parse_fingerprint(&format!("::{}::", "0f".repeat(20))),
            Some(vec![0x0f; 20])
        );
        assert!(cert_matches(
            &[vec![1; 20], a.clone()],
            &"ab:cd:ef:01:23:45:67:89:".repeat(4)
        ));
        assert!(!cert_matches(
            &[vec![1; 20]],
            &"ab:cd:ef:01:23:45:67:89:".repeat(4)
        ));
    }

    #[test]
    fn api_key_hash_and_lookup_by_digest() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let keys = ApiKeys::new(
            "x-api-key".into(),
            None,
            true,
            vec![ApiKey {
                id: "k1".into(),
                sha256: parse_sha256_hex(&hash_api_key("secret-1")).unwrap(),
                apps: vec![],
                ips: CidrSet::default(),
                routes: vec![],
                disabled: false,
            }],
        );
        assert_eq!(
            keys.lookup("secret-1").map(|(_, k)| k.id.as_str()),
            Some("k1")
        );
        assert!(keys.lookup("secret-2").is_none());
        assert!(ct_eq(b"ab", b"ab") && !ct_eq(b"ab", b"ac") && !ct_eq(b"a", b"ab"));
    }

    #[test]
    fn key_memo_answers_as_the_lookup_and_stays_bounded() {
        let key = |id: &str, secret: &str| ApiKey {
            id: id.into(),
            sha256: parse_sha256_hex(&hash_api_key(secret)).unwrap(),
            apps: vec![],
            ips: CidrSet::default(),
            routes: vec![],
            disabled: false,
        };
        let keys = ApiKeys::new(
            "x-api-key".into(),
            None,
            true,
            vec![key("k1", "secret-1"), key("k2", "secret-2")],
        );
        let mut memo = KeyMemo::new(&BucketSalt::new([3; 16]));
        for _ in 0..3 {
            for (sent, want) in [
                ("secret-2", Some((1, "k2"))),
                ("secret-1", Some((0, "k1"))),
                ("secret-3", None),
                ("secret-1 ", None),
                ("", None),
            ] {
                let got = memo.lookup(&keys, sent).map(|(i, k)| (i, k.id.as_str()));
                assert_eq!(got, want, "{sent:?}");
                assert_eq!(got, keys.lookup(sent).map(|(i, k)| (i, k.id.as_str())));
            }
        }
        // Only keys that were found are remembered, whatever is sent.
        for i in 0..1000 {
            assert!(memo.lookup(&keys, &format!("guess-{i}")).is_none());
        }
        assert_eq!(format!("{memo:?}"), "KeyMemo(2 keys found)");
    }
}
