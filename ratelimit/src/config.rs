//! The rate-limit configuration: envoyproxy/ratelimit's YAML descriptor
//! format, read from files, validated and compiled into one lookup tree per
//! domain.
//!
//! The format and its checks follow envoyproxy/ratelimit
//! (`src/config/config_impl.go` and the README's "Configuration" section) so
//! that a file written for that service loads, or is refused, the same way
//! here:
//!
//! ```yaml
//! domain: appguard            # unique across all files
//! descriptors:
//!   - key: remote_address     # required
//!     value: 10.0.0.1         # optional: without it, any value matches and
//!                             # each distinct value gets its own counter
//!     rate_limit:             # optional
//!       unit: second          # second|minute|hour|day|week|month|year
//!       requests_per_unit: 10
//!       name: per_ip          # optional, for `replaces`
//!       unlimited: false      # true: never limited (then no `unit`)
//!       rolling: false        # appguard's extension: see `RateLimit::rolling`
//!       replaces: [{name: other_limit}]
//!     shadow_mode: false      # count and log, but always answer OK
//!     quota_mode: false
//!     descriptors: [ ... ]    # nested entries of the same shape
//! ```
//!
//! One key is this service's own: `rolling` in a `rate_limit` block (see
//! [`RateLimit::rolling`]). envoyproxy/ratelimit refuses a file with it.
//!
//! Like envoyproxy/ratelimit, a key name that the format does not know
//! anywhere is an error (it is strict), while a known key in a place where it
//! has no meaning is ignored; here it also produces a warning. Its YAML
//! library applies merge keys (`<<: *anchor`); here they are refused with
//! a message saying so (see [`Problem::MergeKey`]). It reads a file's first
//! YAML document and ignores the rest: here documents after the first must
//! be empty (a trailing `---`), since limits in them would not hold there.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use crate::window::Unit;

/// Every key name envoyproxy/ratelimit accepts somewhere in a file
/// (`validKeys` in its `config_impl.go`). Any other key is an error.
const VALID_KEYS: &[&str] = &[
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "quota_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
    // This service's own (see `RateLimit::rolling`).
    "rolling",
];

/// Keys that mean something at the top level of a file.
const ROOT_KEYS: &[&str] = &["domain", "descriptors"];
/// Keys that mean something in a descriptor entry.
const DESCRIPTOR_KEYS: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];
/// Keys that mean something in a `rate_limit` block.
const RATE_LIMIT_KEYS: &[&str] = &[
    "unit",
    "requests_per_unit",
    "unlimited",
    "name",
    "replaces",
    "rolling",
];
/// Keys that mean something in a `replaces` entry.
const REPLACES_KEYS: &[&str] = &["name"];

/// Why a configuration could not be loaded. Every variant names the file;
/// the ones about content also give the YAML path (`descriptors[0].rate_limit`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `--config` path was given.
    #[error("no configuration given: pass --config FILE_OR_DIRECTORY (repeatable)")]
    NoConfig,
    /// A file or directory could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path as given or found in a directory.
        file: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A directory given to `--config` has no `.yaml`/`.yml` file.
    #[error("{dir}: no .yaml or .yml file in this directory")]
    EmptyDirectory {
        /// The directory.
        dir: String,
    },
    /// The file is not YAML, or a value has the wrong type.
    #[error("{file}: {}{message}", at_path(path))]
    Yaml {
        /// The file.
        file: String,
        /// Where in the document (may be empty when the parser gives none).
        path: String,
        /// The parser's message (with line and column when it has them).
        message: String,
    },
    /// The YAML is well-formed but breaks a rule of the format.
    #[error("{file}: {}{problem}", at_path(path))]
    Invalid {
        /// The file.
        file: String,
        /// Where in the document.
        path: String,
        /// What is wrong.
        problem: Problem,
    },
    /// Two files define the same domain; domains must be unique.
    #[error("{file}: duplicate domain '{domain}' (already defined in {first})")]
    DuplicateDomain {
        /// The later file.
        file: String,
        /// The domain.
        domain: String,
        /// The file that defined it first.
        first: String,
    },
}

fn at_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("at {path}: ")
    }
}

/// A rule of the format that a file breaks (envoyproxy/ratelimit refuses the
/// same files).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `domain` is missing or empty.
    #[error("config file cannot have an empty domain")]
    EmptyDomain,
    /// The document is not a mapping.
    #[error("the document must be a mapping with `domain` and `descriptors`")]
    NotAMapping,
    /// A YAML merge key (`<<: *anchor`).
    #[error(
        "YAML merge keys (`<<`) are not read here: write the fields out (anchors and \
         aliases of whole values are fine). envoyproxy/ratelimit's YAML library merges \
         them, with rules of its own (a field before `<<` is overwritten); here the \
         merged document could not keep values as written (`+44` would be read as `44`)"
    )]
    MergeKey,
    /// A file's second or later YAML document is not empty.
    #[error(
        "YAML document {0} of the file is not empty: envoyproxy/ratelimit reads only the \
         first and would ignore its limits; put each domain in a file of its own"
    )]
    LaterDocument(usize),
    /// A mapping key is not a string.
    #[error("key is not a string: {0}")]
    NonStringKey(String),
    /// A key the format does not know.
    #[error("unknown key '{0}' (known keys: {known})", known = VALID_KEYS.join(", "))]
    UnknownKey(String),
    /// A list holds something other than mappings.
    #[error("list item must be a mapping, found {0}")]
    ListItemNotMapping(String),
    /// A floating-point scalar (envoyproxy/ratelimit refuses these too).
    #[error("floating-point value {0} is not accepted; quote it if it is a string")]
    FloatValue(String),
    /// A descriptor without `key`.
    #[error("descriptor has an empty key")]
    EmptyKey,
    /// A `*` in a descriptor's `key`: wildcards are for values.
    #[error("descriptor key '{0}' has a '*': wildcards are for values (`value: \"prefix*\"`)")]
    WildcardKey(String),
    /// Two entries of one list have the same key and value.
    #[error("duplicate descriptor composite key '{0}'")]
    DuplicateDescriptor(String),
    /// Two entries of one list with another key and value each, which
    /// envoyproxy/ratelimit's stats name alike (`tier_gold` key-only, and
    /// `tier` with `gold`).
    #[error(
        "'{0}' is also the stats name of another node of this list (a key-only `a_b` and \
         `a` with value `b` are named alike): they are matched apart, but their stats would \
         merge; rename one"
    )]
    StatsNameClash(String),
    /// `unit` is missing or not a unit name.
    #[error("invalid rate limit unit '{0}' (expected one of: {units})", units = unit_names())]
    InvalidUnit(String),
    /// `unlimited: true` together with a unit.
    #[error("should not specify rate limit unit when unlimited (unit '{0}')")]
    UnitWithUnlimited(String),
    /// `rolling` outside a `rate_limit` block. It is this service's own key,
    /// so there is no envoyproxy/ratelimit file to stay lenient for, and
    /// ignored it would leave the limit in epoch windows (the replay gap
    /// it closes) without a word.
    #[error("rolling belongs inside rate_limit (rate_limit: {{unit: …, requests_per_unit: …, rolling: true}})")]
    MisplacedRolling,
    /// `rolling: true` on an `unlimited` limit, which counts nothing.
    #[error("rolling has no meaning on an unlimited limit: remove one of them")]
    RollingUnlimited,
    /// A `replaces` entry without a name.
    #[error("should not have an empty replaces entry")]
    EmptyReplaces,
    /// A limit that replaces itself.
    #[error("replaces should not contain the name of the same descriptor ('{0}')")]
    ReplacesItself(String),
    /// `share_threshold` on a descriptor whose key/value has no `*`.
    #[error(
        "share_threshold can only be used with wildcard values (containing '*'), but found key '{0}'"
    )]
    ShareThresholdWithoutWildcard(String),
}

fn unit_names() -> String {
    Unit::ALL
        .iter()
        .map(|u| u.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Something in a file that loads but probably is not what its author meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file.
    pub file: String,
    /// Where in the document.
    pub path: String,
    /// What was noticed.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}{}", self.file, at_path(&self.path), self.message)
    }
}

// ---------------------------------------------------------------------------
// The YAML schema.

/// One file: a domain and its descriptor list.
#[derive(Debug, Deserialize)]
struct YamlRoot {
    /// The domain the file's limits belong to (`RateLimitRequest.domain`).
    #[serde(default)]
    domain: Option<String>,
    /// Top-level descriptor entries.
    #[serde(default)]
    descriptors: Option<Vec<YamlDescriptor>>,
}

/// One descriptor entry (a node of the matching tree).
#[derive(Debug, Deserialize)]
struct YamlDescriptor {
    /// Entry key to match (`RateLimitDescriptor.Entry.key`); required.
    #[serde(default)]
    key: Option<String>,
    /// Entry value to match exactly (or by `*` wildcard); when absent, any
    /// value matches and each value counts separately.
    #[serde(default)]
    value: Option<String>,
    /// The limit applied when a request descriptor ends on this node.
    #[serde(default)]
    rate_limit: Option<YamlRateLimit>,
    /// Nested entries, matched against the request descriptor's next entry.
    #[serde(default)]
    descriptors: Option<Vec<YamlDescriptor>>,
    /// Count and report, but never make the answer OVER_LIMIT.
    #[serde(default, deserialize_with = "yaml_bool")]
    shadow_mode: bool,
    /// Over limit only when every quota-mode descriptor is over limit.
    #[serde(default, deserialize_with = "yaml_bool")]
    quota_mode: bool,
    /// Metrics detail in envoyproxy/ratelimit; accepted, no effect here.
    #[serde(default, deserialize_with = "yaml_bool")]
    #[allow(dead_code)]
    detailed_metric: bool,
    /// Metrics detail in envoyproxy/ratelimit; accepted, no effect here.
    #[serde(default, deserialize_with = "yaml_bool")]
    #[allow(dead_code)]
    value_to_metric: bool,
    /// All values matching this wildcard share one counter.
    #[serde(default, deserialize_with = "yaml_bool")]
    share_threshold: bool,
}

/// A `rate_limit` block.
#[derive(Debug, Deserialize)]
struct YamlRateLimit {
    /// Requests allowed per window; 0 refuses every request.
    #[serde(default)]
    requests_per_unit: u32,
    /// Window length name; required unless `unlimited`.
    #[serde(default)]
    unit: Option<String>,
    /// Never limited: answered OK with `limit_remaining` = u32::MAX.
    #[serde(default, deserialize_with = "yaml_bool")]
    unlimited: bool,
    /// Name other limits can `replaces`.
    #[serde(default)]
    name: Option<String>,
    /// Limits (by name) that this one switches off when both match.
    #[serde(default)]
    replaces: Option<Vec<YamlReplaces>>,
    /// Count in a window that starts at the first hit (see
    /// [`RateLimit::rolling`]).
    #[serde(default, deserialize_with = "yaml_bool")]
    rolling: bool,
}

/// A `replaces` entry.
#[derive(Debug, Deserialize)]
struct YamlReplaces {
    /// Name of the limit to replace.
    #[serde(default)]
    name: Option<String>,
}

/// Accepts YAML 1.1 booleans as envoyproxy/ratelimit's YAML library does
/// (`yes`/`no`/`on`/`off`/`y`/`n`), besides `true`/`false`, and null as false.
fn yaml_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrString {
        Bool(bool),
        Str(String),
        Null(()),
    }
    match BoolOrString::deserialize(deserializer)? {
        BoolOrString::Bool(b) => Ok(b),
        BoolOrString::Null(()) => Ok(false),
        BoolOrString::Str(s) => match s.as_str() {
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
                Ok(true)
            }
            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False"
            | "FALSE" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "invalid boolean '{other}', expected true or false"
            ))),
        },
    }
}

// ---------------------------------------------------------------------------
// The compiled configuration.

/// How much a limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// `requests_per_unit` hits per window of `unit`.
    PerUnit {
        /// Hits allowed in one window; a request is over limit when the
        /// count after adding its hits exceeds this.
        requests_per_unit: u32,
        /// The window length.
        unit: Unit,
    },
    /// `unlimited: true`: never counted, always OK.
    Unlimited,
}

/// One configured limit (the `rate_limit` block of a descriptor node, with
/// the node's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// The node's path in envoyproxy/ratelimit's stats notation
    /// (`domain.key_value.key`): configured text only, never a request value,
    /// so it is safe to log.
    pub full_key: String,
    /// The allowance.
    pub quota: Quota,
    /// `rate_limit.name` (empty when absent): what `replaces` refers to, and
    /// returned in `current_limit.name`.
    pub name: String,
    /// Names of limits this one replaces when both apply to one request.
    pub replaces: Vec<String>,
    /// Over-limit results are reported as OK (and counted).
    pub shadow_mode: bool,
    /// Quota mode: the request is over limit only if all its quota-mode
    /// descriptors are.
    pub quota_mode: bool,
    /// `rolling: true` (this service's own key, not envoyproxy/ratelimit's):
    /// the window starts at a counter's first hit and lasts one `unit`,
    /// instead of being aligned on the epoch. For appguard's replay
    /// descriptor (`jti`, 1 per hour): with epoch windows a token that
    /// lives across a window's end can be used once on each side of it;
    /// with a rolling window its `jti` stays counted for a whole unit after
    /// its first use, which covers its lifetime.
    pub rolling: bool,
}

/// A wildcard child of a node: its map key, its descriptor key, and its
/// value split on `*`.
#[derive(Debug, Clone)]
pub struct WildcardEntry {
    /// The child's map key ([`child_key`]).
    pub key: String,
    /// The descriptor key a request entry must have, exactly.
    pub descriptor_key: String,
    /// The value pattern split on `*`.
    pub parts: Vec<String>,
}

/// The map key of a node's child: its descriptor `key` and `value` (empty
/// for a key-only child), the key length-prefixed so that no pair reads as
/// another. envoyproxy/ratelimit joins them with `_`, so that a key-only
/// `tier_gold` also took the request entry `tier=gold`, and a node
/// `user_a=b` the entry `user=a_b`: a value a client chooses could reach
/// another node's limit.
pub fn child_key(key: &str, value: &str) -> String {
    if value.is_empty() {
        format!("{}:{key}", key.len())
    } else {
        format!("{}:{key}={value}", key.len())
    }
}

/// A node of the matching tree: a domain root or a descriptor entry.
///
/// Public, read-only through [`RateLimitConfig::domain_root`], so that a
/// tool can reason about descriptors whose values are not known yet (the
/// operator CLI's `check-config --ratelimit-config`) by the same tree
/// [`RateLimitConfig::get_limit`] walks.
#[derive(Debug, Default)]
pub struct Node {
    /// Children by [`child_key`] of their key and value.
    pub children: HashMap<String, Node>,
    /// Children whose map key contains `*`, in file order.
    pub wildcards: Vec<WildcardEntry>,
    /// The limit of this node, if it has one.
    pub limit: Option<Arc<RateLimit>>,
    /// `share_threshold: true` (only allowed on wildcard nodes): the node's
    /// value pattern, which replaces the request value in counter keys.
    pub share_threshold_pattern: Option<String>,
}

/// The loaded configuration: one tree per domain.
#[derive(Debug, Default)]
pub struct RateLimitConfig {
    /// Domain name to its root node.
    pub(crate) domains: HashMap<String, Node>,
    /// Domain name to the file that defined it.
    files: HashMap<String, String>,
}

/// A loaded configuration and what was noticed while loading it.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: RateLimitConfig,
    /// The files read, in load order.
    pub files: Vec<String>,
    /// Non-fatal findings (ignored keys), to be logged.
    pub warnings: Vec<ConfigWarning>,
    /// SHA-256 of the files' names and texts, in load order: equal digests
    /// mean the same files with the same content (`--watch-config-seconds`
    /// reloads only when it changes).
    pub digest: [u8; 32],
}

impl RateLimitConfig {
    /// Loads every file named by `paths`: a file is read as is; a directory
    /// contributes its `*.yaml`/`*.yml` files (not hidden ones, not
    /// recursively) in name order.
    pub fn load_paths(paths: &[PathBuf]) -> Result<Loaded, ConfigError> {
        if paths.is_empty() {
            return Err(ConfigError::NoConfig);
        }
        let mut files = Vec::new();
        for path in paths {
            files.extend(expand_path(path)?);
        }
        let mut sources = Vec::with_capacity(files.len());
        for file in &files {
            let name = file.display().to_string();
            let text =
                read_text(file, MAX_CONFIG_FILE_BYTES).map_err(|source| ConfigError::Read {
                    file: name.clone(),
                    source,
                })?;
            // A byte-order mark (editors on Windows write one) is not YAML
            // content; envoyproxy/ratelimit's parser skips it too.
            let text = match text.strip_prefix('\u{feff}') {
                Some(rest) => rest.to_owned(),
                None => text,
            };
            sources.push((name, text));
        }
        let (config, warnings) = Self::from_sources(&sources)?;
        let digest = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            for (name, text) in &sources {
                for part in [name.as_bytes(), text.as_bytes()] {
                    h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
                    h.update(part);
                }
            }
            h.finalize().into()
        };
        Ok(Loaded {
            config,
            files: sources.into_iter().map(|(name, _)| name).collect(),
            warnings,
            digest,
        })
    }

    /// Builds the configuration from `(file name, YAML text)` pairs. Domains
    /// must be unique across them.
    pub fn from_sources(
        sources: &[(String, String)],
    ) -> Result<(RateLimitConfig, Vec<ConfigWarning>), ConfigError> {
        let mut config = RateLimitConfig::default();
        let mut warnings = Vec::new();
        for (file, text) in sources {
            let (domain, node) = compile_file(file, text, &mut warnings)?;
            if let Some(first) = config.files.get(&domain) {
                return Err(ConfigError::DuplicateDomain {
                    file: file.clone(),
                    domain,
                    first: first.clone(),
                });
            }
            config.files.insert(domain.clone(), file.clone());
            config.domains.insert(domain, node);
        }
        Ok((config, warnings))
    }

    /// The root of `domain`'s matching tree, `None` for an unknown domain:
    /// for tools that reason about descriptors [`Self::get_limit`] would
    /// be asked about (the operator CLI's `check-config`).
    pub fn domain_root(&self, domain: &str) -> Option<&Node> {
        self.domains.get(domain)
    }

    /// The file that defines `domain`, as it was named when loaded.
    pub fn domain_file(&self, domain: &str) -> Option<&str> {
        self.files.get(domain).map(String::as_str)
    }

    /// The configured domains, sorted.
    pub fn domains(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Every configured limit with its stats key, sorted by key (for the
    /// start-up log and tests).
    pub fn limits(&self) -> Vec<Arc<RateLimit>> {
        fn walk(node: &Node, out: &mut Vec<Arc<RateLimit>>) {
            if let Some(limit) = &node.limit {
                out.push(Arc::clone(limit));
            }
            for child in node.children.values() {
                walk(child, out);
            }
        }
        let mut out = Vec::new();
        for node in self.domains.values() {
            walk(node, &mut out);
        }
        out.sort_by(|a, b| a.full_key.cmp(&b.full_key));
        out
    }
}

/// The largest limits file read (each file of `--config`): far beyond any
/// real one, so that `--config /dev/zero` or a log file given by mistake
/// is refused instead of filling memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads `path` as UTF-8 text of at most `max` bytes: a longer file (or an
/// endless one, such as `/dev/zero`) is an error, read no further than the
/// bound.
pub fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            match max {
                m if m % (1 << 20) == 0 => format!("it is larger than {} MiB", m >> 20),
                m if m % (1 << 10) == 0 => format!("it is larger than {} KiB", m >> 10),
                m => format!("it is larger than {m} bytes"),
            },
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Files named by one `--config` argument.
fn expand_path(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        file: name.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| ConfigError::Read {
        file: name.clone(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read {
            file: name.clone(),
            source,
        })?;
        let file = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let is_yaml = file_name.ends_with(".yaml") || file_name.ends_with(".yml");
        if is_yaml && !file_name.starts_with('.') && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(ConfigError::EmptyDirectory { dir: name });
    }
    files.sort();
    Ok(files)
}

/// Which part of the format a mapping is, for the key check.
#[derive(Clone, Copy)]
enum Level {
    Root,
    Descriptor,
    RateLimit,
    Replaces,
    /// Under a key that is known but has no meaning where it is: its content
    /// is ignored, only key names are checked (as envoyproxy/ratelimit does).
    Ignored,
}

impl Level {
    fn keys(self) -> Option<&'static [&'static str]> {
        match self {
            Level::Root => Some(ROOT_KEYS),
            Level::Descriptor => Some(DESCRIPTOR_KEYS),
            Level::RateLimit => Some(RATE_LIMIT_KEYS),
            Level::Replaces => Some(REPLACES_KEYS),
            Level::Ignored => None,
        }
    }

    /// The level of the value under `key` at this level.
    fn child(self, key: &str) -> Level {
        match (self, key) {
            (Level::Root, "descriptors") | (Level::Descriptor, "descriptors") => Level::Descriptor,
            (Level::Descriptor, "rate_limit") => Level::RateLimit,
            (Level::RateLimit, "replaces") => Level::Replaces,
            _ => Level::Ignored,
        }
    }
}

fn describe(value: &serde_norway::Value) -> String {
    match value {
        serde_norway::Value::Null => "null".to_owned(),
        serde_norway::Value::Bool(b) => format!("boolean {b}"),
        serde_norway::Value::Number(n) => format!("number {n}"),
        serde_norway::Value::String(s) => format!("string '{s}'"),
        serde_norway::Value::Sequence(_) => "a list".to_owned(),
        serde_norway::Value::Mapping(_) => "a mapping".to_owned(),
        serde_norway::Value::Tagged(t) => format!("tagged value {}", t.tag),
    }
}

/// Checks key names everywhere in a document, like envoyproxy/ratelimit's
/// `validateYamlKeys`: unknown names, non-string keys, lists of non-mappings
/// and floating-point leaves are errors; known names in the wrong place are
/// warnings.
fn check_keys(
    file: &str,
    value: &serde_norway::Value,
    path: &str,
    level: Level,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<(), ConfigError> {
    let invalid = |path: &str, problem: Problem| ConfigError::Invalid {
        file: file.to_owned(),
        path: path.to_owned(),
        problem,
    };
    match value {
        serde_norway::Value::Mapping(map) => {
            for (k, v) in map {
                let Some(key) = k.as_str() else {
                    return Err(invalid(path, Problem::NonStringKey(describe(k))));
                };
                let child_path = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                if key == "<<" {
                    return Err(invalid(&child_path, Problem::MergeKey));
                }
                if !VALID_KEYS.contains(&key) {
                    return Err(invalid(&child_path, Problem::UnknownKey(key.to_owned())));
                }
                if key == "metadata" {
                    // Free-form; envoyproxy/ratelimit does not check it either.
                    continue;
                }
                if let Some(allowed) = level.keys() {
                    if key == "rolling" && !allowed.contains(&key) {
                        return Err(invalid(&child_path, Problem::MisplacedRolling));
                    }
                    if !allowed.contains(&key) {
                        warnings.push(ConfigWarning {
                            file: file.to_owned(),
                            path: child_path.clone(),
                            message: format!(
                                "key '{key}' has no meaning here and is ignored (allowed here: {})",
                                allowed.join(", ")
                            ),
                        });
                    }
                }
                check_keys(file, v, &child_path, level.child(key), warnings)?;
            }
            Ok(())
        }
        serde_norway::Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                if !matches!(item, serde_norway::Value::Mapping(_)) {
                    return Err(invalid(
                        &item_path,
                        Problem::ListItemNotMapping(describe(item)),
                    ));
                }
                check_keys(file, item, &item_path, level, warnings)?;
            }
            Ok(())
        }
        serde_norway::Value::Number(n) if n.is_f64() => {
            Err(invalid(path, Problem::FloatValue(n.to_string())))
        }
        serde_norway::Value::Tagged(tagged) => {
            check_keys(file, &tagged.value, path, level, warnings)
        }
        _ => Ok(()),
    }
}

/// Parses, checks and compiles one file into its domain's tree.
fn compile_file(
    file: &str,
    text: &str,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<(String, Node), ConfigError> {
    let yaml_error = |path: String, message: String| ConfigError::Yaml {
        file: file.to_owned(),
        path,
        message,
    };
    let invalid = |path: &str, problem: Problem| ConfigError::Invalid {
        file: file.to_owned(),
        path: path.to_owned(),
        problem,
    };

    // envoyproxy/ratelimit (yaml.v2) reads a file's first document, and
    // applies merge keys (`<<: *anchor`) before it checks the names.
    let mut documents = serde_norway::Deserializer::from_str(text);
    let value = match documents.next() {
        Some(d) => serde_norway::Value::deserialize(d)
            .map_err(|e| yaml_error(String::new(), e.to_string()))?,
        None => serde_norway::Value::Null,
    };
    // It ignores the documents after the first; a limit written there would
    // silently not hold, so only empty ones (a trailing `---`) are let be.
    for (i, d) in documents.enumerate() {
        let later = serde_norway::Value::deserialize(d)
            .map_err(|e| yaml_error(String::new(), e.to_string()))?;
        if !later.is_null() {
            return Err(invalid("", Problem::LaterDocument(i + 2)));
        }
    }
    match &value {
        // An empty file: no domain.
        serde_norway::Value::Null => return Err(invalid("", Problem::EmptyDomain)),
        serde_norway::Value::Mapping(_) => {}
        _ => return Err(invalid("", Problem::NotAMapping)),
    }
    check_keys(file, &value, "", Level::Root, warnings)?;

    // Read from the text, as envoyproxy/ratelimit reads it (an unquoted
    // `42` where a string is expected is the string "42"), with the
    // error's line: its first document.
    let first = serde_norway::Deserializer::from_str(text).next();
    let first = first.ok_or_else(|| invalid("", Problem::EmptyDomain))?;
    let root: YamlRoot = serde_path_to_error::deserialize(first).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // The parser's own message may start with the path too; the error
        // names it once, in front.
        let message = match message.strip_prefix(path.as_str()) {
            Some(rest) if !path.is_empty() => rest.strip_prefix(": ").unwrap_or(rest).to_owned(),
            _ => message,
        };
        yaml_error(path, message)
    })?;

    let domain = root.domain.unwrap_or_default();
    if domain.is_empty() {
        return Err(invalid("domain", Problem::EmptyDomain));
    }
    let mut node = Node::default();
    compile_descriptors(
        file,
        &mut node,
        &format!("{domain}."),
        "descriptors",
        root.descriptors.unwrap_or_default(),
    )?;
    Ok((domain, node))
}

/// Adds `descriptors` (found at YAML path `path`) as children of `parent`,
/// whose stats key is `parent_key` (ending in `.`).
fn compile_descriptors(
    file: &str,
    parent: &mut Node,
    parent_key: &str,
    path: &str,
    descriptors: Vec<YamlDescriptor>,
) -> Result<(), ConfigError> {
    let invalid = |path: &str, problem: Problem| ConfigError::Invalid {
        file: file.to_owned(),
        path: path.to_owned(),
        problem,
    };
    let mut stats_names = std::collections::HashSet::new();
    for (i, descriptor) in descriptors.into_iter().enumerate() {
        let here = format!("{path}[{i}]");
        let key = descriptor.key.unwrap_or_default();
        if key.is_empty() {
            return Err(invalid(&here, Problem::EmptyKey));
        }
        if key.contains('*') {
            return Err(invalid(&here, Problem::WildcardKey(key)));
        }
        // An empty value is the same as no value, as in envoyproxy/ratelimit,
        // whose stats name a node `key` or `key_value`. Two nodes of one
        // list with one such name (`tier_gold`, and `tier` with `gold`) are
        // refused: they are matched apart, but their stats would merge.
        let value = descriptor.value.unwrap_or_default();
        let stats_name = if value.is_empty() {
            key.clone()
        } else {
            format!("{key}_{value}")
        };
        let full_key = format!("{parent_key}{stats_name}");
        let map_key = child_key(&key, &value);
        if parent.children.contains_key(&map_key) {
            return Err(invalid(&here, Problem::DuplicateDescriptor(full_key)));
        }
        if !stats_names.insert(stats_name.clone()) {
            return Err(invalid(&here, Problem::StatsNameClash(full_key)));
        }

        let limit = match descriptor.rate_limit {
            None => None,
            Some(rate_limit) => Some(Arc::new(compile_rate_limit(
                file,
                &format!("{here}.rate_limit"),
                rate_limit,
                full_key.clone(),
                descriptor.shadow_mode,
                descriptor.quota_mode,
            )?)),
        };

        let is_wildcard = value.contains('*');
        if descriptor.share_threshold && !is_wildcard {
            return Err(invalid(
                &here,
                Problem::ShareThresholdWithoutWildcard(stats_name),
            ));
        }
        if is_wildcard {
            parent.wildcards.push(WildcardEntry {
                key: map_key.clone(),
                descriptor_key: key.clone(),
                parts: value.split('*').map(str::to_owned).collect(),
            });
        }

        let mut node = Node {
            limit,
            share_threshold_pattern: descriptor.share_threshold.then(|| value.clone()),
            ..Node::default()
        };
        compile_descriptors(
            file,
            &mut node,
            &format!("{full_key}."),
            &format!("{here}.descriptors"),
            descriptor.descriptors.unwrap_or_default(),
        )?;
        parent.children.insert(map_key, node);
    }
    Ok(())
}

fn compile_rate_limit(
    file: &str,
    path: &str,
    rate_limit: YamlRateLimit,
    full_key: String,
    shadow_mode: bool,
    quota_mode: bool,
) -> Result<RateLimit, ConfigError> {
    let invalid = |path: &str, problem: Problem| ConfigError::Invalid {
        file: file.to_owned(),
        path: path.to_owned(),
        problem,
    };
    let unit_text = rate_limit.unit.unwrap_or_default();
    let unit = Unit::parse(&unit_text);
    if rate_limit.unlimited && rate_limit.rolling {
        return Err(invalid(
            &format!("{path}.rolling"),
            Problem::RollingUnlimited,
        ));
    }
    let quota = if rate_limit.unlimited {
        // envoyproxy/ratelimit refuses a valid unit next to `unlimited`, and
        // ignores an invalid one.
        if unit.is_some() {
            return Err(invalid(
                &format!("{path}.unit"),
                Problem::UnitWithUnlimited(unit_text),
            ));
        }
        Quota::Unlimited
    } else {
        match unit {
            Some(unit) => Quota::PerUnit {
                requests_per_unit: rate_limit.requests_per_unit,
                unit,
            },
            None => {
                return Err(invalid(
                    &format!("{path}.unit"),
                    Problem::InvalidUnit(unit_text),
                ))
            }
        }
    };
    let name = rate_limit.name.unwrap_or_default();
    let mut replaces = Vec::new();
    for (i, entry) in rate_limit
        .replaces
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let entry_path = format!("{path}.replaces[{i}]");
        let replaced = entry.name.unwrap_or_default();
        if replaced.is_empty() {
            return Err(invalid(&entry_path, Problem::EmptyReplaces));
        }
        if replaced == name {
            return Err(invalid(&entry_path, Problem::ReplacesItself(replaced)));
        }
        replaces.push(replaced);
    }
    Ok(RateLimit {
        full_key,
        quota,
        name,
        replaces,
        shadow_mode,
        quota_mode,
        rolling: rate_limit.rolling,
    })
}

/// Names of all limits and the limits they replace, to warn about a
/// `replaces` that names no limit (a likely typo).
pub fn unknown_replaced_names(config: &RateLimitConfig) -> Vec<String> {
    let limits = config.limits();
    let names: HashSet<&str> = limits
        .iter()
        .map(|l| l.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    let mut unknown: Vec<String> = limits
        .iter()
        .flat_map(|l| l.replaces.iter())
        .filter(|r| !names.contains(r.as_str()))
        .cloned()
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<(RateLimitConfig, Vec<ConfigWarning>), ConfigError> {
        RateLimitConfig::from_sources(&[("test.yaml".to_owned(), text.to_owned())])
    }

    fn problem(text: &str) -> (String, Problem) {
        match load(text) {
            Err(ConfigError::Invalid { path, problem, .. }) => (path, problem),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn rolling_is_read_and_refused_on_an_unlimited_limit() {
        let (config, warnings) = load(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1, rolling: true}\n  - key: f\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let rolling: Vec<bool> = ["k", "f"]
            .iter()
            .map(|k| {
                let d = crate::matching::tests::descriptor(&[(k, "v")]);
                config.get_limit("d", &d).unwrap().unwrap().limit.rolling
            })
            .collect();
        assert_eq!(rolling, [true, false]);
        let (path, problem) = problem(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, rolling: true}\n",
        );
        assert_eq!(path, "descriptors[0].rate_limit.rolling");
        assert!(matches!(problem, Problem::RollingUnlimited), "{problem:?}");
        // Beside `rate_limit` instead of in it: refused, not a warning that
        // leaves the limit in epoch windows.
        let (path, problem) = self::problem(
            "domain: d\ndescriptors:\n  - key: jti\n    rolling: true\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
        );
        assert_eq!(path, "descriptors[0].rolling");
        assert!(matches!(problem, Problem::MisplacedRolling), "{problem:?}");
    }

    #[test]
    fn parses_nested_descriptors() {
        let (config, warnings) = load(
            r#"
domain: messaging
descriptors:
  # Only allow 5 marketing messages a day
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5
  - key: to_number
    rate_limit:
      unit: DAY
      requests_per_unit: 100
      name: per_number
  - key: ldap
    rate_limit:
      unlimited: true
  - key: user
    value: user-a
    shadow_mode: true
    quota_mode: yes
    detailed_metric: true
    value_to_metric: true
    metadata: {anything: [1, 2.5, {nested: true}]}
    rate_limit:
      unit: second
      requests_per_unit: 10
      replaces:
        - name: per_number
"#,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.domains(), vec!["messaging"]);
        let limits = config.limits();
        let keys: Vec<&str> = limits.iter().map(|l| l.full_key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "messaging.ldap",
                "messaging.message_type_marketing.to_number",
                "messaging.to_number",
                "messaging.user_user-a",
            ]
        );
        assert_eq!(limits[0].quota, Quota::Unlimited);
        assert_eq!(
            limits[1].quota,
            Quota::PerUnit {
                requests_per_unit: 5,
                unit: Unit::Day
            }
        );
        assert_eq!(limits[2].name, "per_number");
        let user = &limits[3];
        assert!(user.shadow_mode);
        assert!(user.quota_mode);
        assert_eq!(user.replaces, vec!["per_number".to_owned()]);
        assert_eq!(
            user.quota,
            Quota::PerUnit {
                requests_per_unit: 10,
                unit: Unit::Second
            }
        );
        assert!(unknown_replaced_names(&config).is_empty());
    }

    #[test]
    fn scalars_are_read_as_text_like_envoyproxy_ratelimit() {
        let (config, _) = load(
            "domain: 42\ndescriptors:\n  - key: zip\n    value: 01234\n    rate_limit: {unit: minute, requests_per_unit: 3}\n",
        )
        .unwrap();
        assert_eq!(config.domains(), vec!["42"]);
        assert_eq!(config.limits()[0].full_key, "42.zip_01234");
    }

    /// envoyproxy/ratelimit's YAML library applies merge keys
    /// (`<<: *anchor`), with rules of its own; here they are refused with a
    /// message that says so, not as an unknown key: the merged document
    /// would lose values as written (`+44` read as `44`). Anchors and
    /// aliases of whole values load.
    #[test]
    fn yaml_merge_keys_are_refused_with_a_message_that_says_so() {
        let text = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: &per_minute\n      unit: minute\n      requests_per_unit: 10\n  - key: b\n    rate_limit:\n      <<: *per_minute\n      requests_per_unit: 20\n";
        let e = load(text).unwrap_err();
        assert_eq!(
            problem(text),
            ("descriptors[1].rate_limit.<<".to_owned(), Problem::MergeKey),
            "{e}"
        );
        assert!(e.to_string().contains("write the fields out"), "{e}");
        let aliased = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: &per_minute\n      unit: minute\n      requests_per_unit: 10\n  - key: b\n    value: +44\n    rate_limit: *per_minute\n";
        let (config, _) = load(aliased).unwrap_or_else(|e| panic!("refused: {e}"));
        let d = crate::matching::tests::descriptor(&[("b", "+44")]);
        let limit = config.get_limit("d", &d).unwrap().unwrap().limit;
        assert_eq!(
            limit.quota,
            Quota::PerUnit {
                requests_per_unit: 10,
                unit: Unit::Minute
            }
        );
    }

    /// yaml.v2's `Unmarshal` (envoyproxy/ratelimit) reads
    /// the first document of a file and ignores what follows, so a file
    /// ending in a document marker (`---`, as generated or concatenated
    /// YAML often does) loads there, and here. A second document that is
    /// not empty is refused: its limits would not hold there.
    #[test]
    fn a_trailing_document_marker_loads_as_in_envoyproxy_ratelimit() {
        let text = "---\ndomain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n---\n";
        let (config, _) = load(text).unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(config.domains(), vec!["d"]);
        let e = load(&format!("{text}domain: e\n")).unwrap_err().to_string();
        assert!(
            e.contains("YAML document 2 of the file is not empty"),
            "{e}"
        );
    }

    #[test]
    fn all_units_are_accepted() {
        for unit in [
            "second", "minute", "hour", "day", "week", "month", "year", "Second",
        ] {
            let text = format!(
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: {unit}, requests_per_unit: 1}}\n"
            );
            load(&text).unwrap();
        }
    }

    #[test]
    fn missing_requests_per_unit_is_zero() {
        let (config, _) =
            load("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second}\n").unwrap();
        assert_eq!(
            config.limits()[0].quota,
            Quota::PerUnit {
                requests_per_unit: 0,
                unit: Unit::Second
            }
        );
    }

    #[test]
    fn empty_or_missing_domain_is_refused() {
        assert_eq!(problem("").1, Problem::EmptyDomain);
        assert_eq!(problem("descriptors: []\n").1, Problem::EmptyDomain);
        assert_eq!(problem("domain: ''\n").1, Problem::EmptyDomain);
    }

    #[test]
    fn unknown_key_is_refused_with_its_path() {
        let (path, p) = problem(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      burst: 3\n",
        );
        assert_eq!(path, "descriptors[0].rate_limit.burst");
        assert_eq!(p, Problem::UnknownKey("burst".to_owned()));
        let err = load("domain: d\nrules: []\n").unwrap_err().to_string();
        assert!(
            err.starts_with("test.yaml: at rules: unknown key 'rules'"),
            "{err}"
        );
    }

    #[test]
    fn misplaced_known_key_is_a_warning() {
        let (config, warnings) = load(
            "domain: d\ndescriptors:\n  - key: k\n    unit: second\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
        )
        .unwrap();
        assert_eq!(config.limits().len(), 1);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].path, "descriptors[0].unit");
        assert!(
            warnings[0].to_string().contains("ignored"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn bad_units_are_refused() {
        let (path, p) = problem(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
        );
        assert_eq!(path, "descriptors[0].rate_limit.unit");
        assert_eq!(p, Problem::InvalidUnit("fortnight".to_owned()));
        assert_eq!(
            problem(
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 1}\n"
            )
            .1,
            Problem::InvalidUnit(String::new())
        );
        assert_eq!(
            problem("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: unknown}\n").1,
            Problem::InvalidUnit("unknown".to_owned())
        );
        assert_eq!(
            problem(
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}\n"
            )
            .1,
            Problem::UnitWithUnlimited("second".to_owned())
        );
    }

    #[test]
    fn structural_errors_are_refused() {
        assert_eq!(
            problem("domain: d\ndescriptors:\n  - value: v\n").1,
            Problem::EmptyKey
        );
        // A wildcard in a key: envoyproxy/ratelimit matched it against
        // `key_value`; this service compares keys exactly.
        assert_eq!(
            problem("domain: d\ndescriptors:\n  - key: \"user*\"\n").1,
            Problem::WildcardKey("user*".to_owned())
        );
        // Two nodes envoyproxy/ratelimit would name alike in its stats.
        let (path, p) = problem(
            "domain: d\ndescriptors:\n  - key: tier_gold\n  - key: tier\n    value: gold\n",
        );
        assert_eq!(path, "descriptors[1]");
        assert_eq!(p, Problem::StatsNameClash("d.tier_gold".to_owned()));
        let (path, p) = problem(
            "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        value: c\n      - key: b\n        value: c\n",
        );
        assert_eq!(path, "descriptors[0].descriptors[1]");
        assert_eq!(p, Problem::DuplicateDescriptor("d.a.b_c".to_owned()));
        assert_eq!(
            problem("domain: d\ndescriptors:\n  - key: a\n    share_threshold: true\n").1,
            Problem::ShareThresholdWithoutWildcard("a".to_owned())
        );
        assert_eq!(
            problem(
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, replaces: [{name: ''}]}\n"
            )
            .1,
            Problem::EmptyReplaces
        );
        assert_eq!(
            problem(
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, name: x, replaces: [{name: x}]}\n"
            )
            .1,
            Problem::ReplacesItself("x".to_owned())
        );
        assert_eq!(
            problem("domain: d\ndescriptors:\n  - just a string\n").1,
            Problem::ListItemNotMapping("string 'just a string'".to_owned())
        );
        assert_eq!(
            problem("domain: d\ndescriptors:\n  - key: a\n    value: 1.5\n").1,
            Problem::FloatValue("1.5".to_owned())
        );
        assert_eq!(problem("- a\n- b\n").1, Problem::NotAMapping);
        assert_eq!(
            problem("domain: d\n1: x\n").1,
            Problem::NonStringKey("number 1".to_owned())
        );
    }

    #[test]
    fn type_errors_name_the_yaml_path() {
        let err = load(
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: -1\n",
        )
        .unwrap_err();
        match &err {
            ConfigError::Yaml { path, message, .. } => {
                assert_eq!(path, "descriptors[0].rate_limit.requests_per_unit");
                assert!(message.contains("line 6"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with("test.yaml: at descriptors[0].rate_limit.requests_per_unit: "),
            "{text}"
        );
        let err = load("domain: d\ndescriptors:\n  - key: a\n    shadow_mode: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("descriptors[0].shadow_mode"), "{err}");
        assert!(err.contains("invalid boolean 'maybe'"), "{err}");
    }

    #[test]
    fn malformed_yaml_is_refused() {
        let err = load("domain: d\ndescriptors: [\n").unwrap_err();
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err:?}");
        assert!(err.to_string().starts_with("test.yaml: "), "{err}");
    }

    #[test]
    fn duplicate_domains_across_files_are_refused() {
        let a = ("a.yaml".to_owned(), "domain: d\n".to_owned());
        let b = ("b.yaml".to_owned(), "domain: d\n".to_owned());
        let err = RateLimitConfig::from_sources(&[a, b]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "b.yaml: duplicate domain 'd' (already defined in a.yaml)"
        );
    }

    #[test]
    fn loads_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), "domain: b\n").unwrap();
        // With a byte-order mark, as Windows editors write it.
        std::fs::write(
            dir.path().join("a.yml"),
            "\u{feff}domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "domain: hidden\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
        let single = dir.path().join("single.conf");
        std::fs::write(&single, "domain: c\n").unwrap();
        let loaded = RateLimitConfig::load_paths(&[dir.path().to_path_buf(), single]).unwrap();
        assert_eq!(loaded.config.domains(), vec!["a", "b", "c"]);
        assert_eq!(loaded.files.len(), 3);

        let empty = tempfile::tempdir().unwrap();
        let err = RateLimitConfig::load_paths(&[empty.path().to_path_buf()]).unwrap_err();
        assert!(matches!(err, ConfigError::EmptyDirectory { .. }), "{err:?}");
        let err = RateLimitConfig::load_paths(&[dir.path().join("missing.yaml")]).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(matches!(
            RateLimitConfig::load_paths(&[]),
            Err(ConfigError::NoConfig)
        ));
    }

    #[test]
    fn replaces_naming_no_limit_is_reported() {
        let (config, _) = load(
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, replaces: [{name: nope}]}\n",
        )
        .unwrap();
        assert_eq!(unknown_replaced_names(&config), vec!["nope".to_owned()]);
    }
}
