//! `check-config`: find the appguard configuration(s) in a file and parse
//! each with [`appguard::config::Config::from_json`], the parser the filter
//! runs in `on_configure`, so the verdict and the message are the ones Envoy
//! logs (``invalid configuration at `PATH`: MESSAGE``).
//!
//! Three kinds of file are understood, in JSON or YAML:
//! - the plugin configuration itself (what goes into
//!   `plugin_config.configuration`);
//! - an Envoy bootstrap: every object with `root_id: appguard` (the `config`
//!   of an `envoy.filters.http.wasm` filter, wherever it sits: listeners,
//!   ECDS, per-route config) has its `configuration` checked;
//! - an Istio `WasmPlugin`: `spec.pluginConfig` is checked (resources of
//!   other kinds in a multi-document file are skipped). A Kubernetes
//!   `List` (`kubectl get wasmplugins -o yaml`) is read as the documents
//!   of its `items`.
//!
//! Wasm filters with another `root_id` and WasmPlugins with another
//! `pluginName` are not checked, but those with a configuration are named
//! in the report ([`Report::skipped`]): appguard's module serves every root
//! id, so a canary loading it under another name would run unchecked.

use std::path::Path;

use appguard::config::{Config, ConfigError};
use serde_json::Value;

use crate::error::{read_file, CliError, Limit};

/// What a checked file turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// An appguard plugin configuration.
    PluginConfig,
    /// An Envoy bootstrap (or any Envoy config) with appguard Wasm filters.
    Envoy,
    /// Kubernetes resources with one or more Istio `WasmPlugin`s.
    Istio,
}

/// One appguard configuration found in a file, with its verdict.
#[derive(Debug)]
pub struct Checked {
    /// Where in the file it was found, e.g.
    /// `static_resources.listeners[0]…http_filters[0].typed_config.config`
    /// or `WasmPlugin istio-system/appguard`; empty for a plugin
    /// configuration file.
    pub location: String,
    /// The filter's verdict.
    pub result: Result<Config, ConfigError>,
    /// Warnings about what may reach the filter otherwise than checked
    /// here (an Istio WasmPlugin's unquoted `no` or `0123`), whatever the verdict,
    /// then the filter's own advice on a valid configuration
    /// ([`Config::advisories`], which it also logs when configured).
    pub notes: Vec<String>,
    /// For a refusal, what the CLI can tell beyond the filter's message
    /// (an integer field's expected form, what is wrong with a PEM key):
    /// the filter's messages stay short, as the module has no bytes to
    /// spare.
    pub hint: Option<String>,
}

impl Checked {
    /// `json`: the configuration as the filter reads it, for the notes on
    /// published demo values ([`demo_values`]).
    fn new(
        location: String,
        result: Result<Config, ConfigError>,
        mut notes: Vec<String>,
        json: Option<&[u8]>,
    ) -> Self {
        let doc = json.and_then(|b| serde_json::from_slice::<Value>(b).ok());
        if let Ok(config) = &result {
            notes.extend(config.advisories());
            notes.extend(prefix_advice(config));
            if let Some(doc) = &doc {
                notes.extend(demo_values(doc));
            }
        }
        let hint = result.as_ref().err().and_then(|e| hint(e, doc.as_ref()));
        Checked {
            location,
            result,
            notes,
            hint,
        }
    }
}

/// A route `prefix` that does not end in `/` matches by bytes: `/web`
/// also takes `/webhooks` and `/web-admin`. Advice, not a refusal: the
/// operator may mean it. (Here, not in the filter's advisories: the module
/// has no bytes to spare.)
fn prefix_advice(config: &Config) -> Vec<String> {
    config
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.path {
            appguard::config::PathMatch::Prefix(p) if !p.ends_with('/') => Some(format!(
                "routes[{i}].match.prefix ({}): \"{p}\" matches by bytes, so also \"{p}-admin\" \
                 and \"{p}hooks\": end it with / unless that is meant (a prefix ending in / \
                 still takes \"{p}\" itself)",
                r.name
            )),
            _ => None,
        })
        .collect()
}

/// A hint for a refusal: for a message naming a Rust integer type
/// (serde's `expected u64` for `"timeout_ms": "250ms"`), the same in the
/// configuration's words; for a PEM key the filter cannot read, what is
/// wrong with it ([`pem_hint`]), read from the configuration `doc`.
fn hint(e: &ConfigError, doc: Option<&Value>) -> Option<String> {
    let integer = ["u8", "u16", "u32", "u64", "usize"].iter().any(|t| {
        e.message.contains(&format!("expected {t} "))
            || e.message.ends_with(&format!("expected {t}"))
    });
    if integer {
        let field = e.path.rsplit('.').next().unwrap_or("");
        let field = field.split('[').next().unwrap_or(field);
        return Some(format!(
            "a whole number is expected here, without a unit or quotes: `\"{field}\": 300`, \
             not `\"300\"` or `\"5m\"`; a duration is in the unit the field's name says \
             (`_ms`, `_seconds`)"
        ));
    }
    if e.path.ends_with(".pem")
        && (e.message.contains("public key in PEM") || e.message.contains("a private key"))
    {
        let pem = string_at(doc?, &e.path)?;
        let alg = string_at(doc?, &format!("{}alg", e.path.strip_suffix("pem")?));
        return pem_hint(&pem, alg.as_deref());
    }
    None
}

/// The string at a field path such as `tokens[0].keys[1].pem`, written as
/// [`walk`] writes paths (and the filter its errors').
fn string_at(doc: &Value, path: &str) -> Option<String> {
    let mut found = None;
    walk(doc, &mut String::new(), &mut |at, node| {
        if at == path {
            found = node.as_str().map(str::to_owned);
        }
    });
    found
}

/// What is wrong with a PEM the filter refused as a public key for `alg`:
/// a private key, a certificate, line breaks lost in pasting, or a key of
/// another type than `alg` names.
fn pem_hint(text: &str, alg: Option<&str>) -> Option<String> {
    if text.contains("PRIVATE KEY") {
        return Some(
            "this PEM is a private key: configure its public half (`openssl pkey -in key.pem \
             -pubout`), and keep the private key with the signer only"
                .to_owned(),
        );
    }
    if text.contains("BEGIN CERTIFICATE") {
        return Some(
            "this PEM is a certificate: configure its public key (`openssl x509 -in cert.pem \
             -pubkey -noout`)"
                .to_owned(),
        );
    }
    if text.contains("-----BEGIN") && !text.trim().contains('\n') {
        return Some(
            "the PEM is on one line: its line breaks were lost (in JSON write each as \\n, \
             or give the key as a `jwk`)"
                .to_owned(),
        );
    }
    let blocks = crate::pem::parse(text).ok()?;
    let der = &blocks.iter().find(|b| b.label == "PUBLIC KEY")?.der;
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    const EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    let (kind, algs, fits): (&str, &str, fn(&str) -> bool) = if has(EC) && has(P256) {
        ("an EC P-256 key", "ES256", |a| a == "ES256")
    } else if has(EC) && has(P384) {
        ("an EC P-384 key", "ES384", |a| a == "ES384")
    } else if has(RSA) {
        ("an RSA key", "one of RS256/384/512, PS256/384/512", |a| {
            a.starts_with("RS") || a.starts_with("PS")
        })
    } else if has(ED25519) {
        ("an Ed25519 key", "EdDSA", |a| a == "EdDSA")
    } else {
        return None;
    };
    (!alg.is_some_and(fits)).then(|| {
        format!(
            "this PEM is {kind}: its `alg` is {algs}, not {}",
            alg.unwrap_or("unset")
        )
    })
}

/// The outcome of checking one file.
#[derive(Debug)]
pub struct Report {
    /// What the file is.
    pub kind: FileKind,
    /// Every appguard configuration in it, in file order (at least one).
    pub configs: Vec<Checked>,
    /// The Wasm filter configurations and WasmPlugins that carry a
    /// configuration but were not checked, because their `root_id` or
    /// `pluginName` is not `appguard`, in file order.
    pub skipped: Vec<Skipped>,
}

/// A Wasm filter configuration or WasmPlugin with a configuration that was
/// left unchecked for its `root_id` or `pluginName`. appguard's module
/// serves every root id (it registers one root context whatever the
/// name), so if such a filter loads the module, a canary under
/// `root_id: appguard-canary` say, its configuration reaches the filter
/// unchecked: the operator is told rather than the file passed as valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where it is: a path in an Envoy configuration, or
    /// `WasmPlugin NAMESPACE/NAME`.
    pub location: String,
    /// `root_id` or `pluginName`.
    pub field: &'static str,
    /// The field's value; `None` when unset.
    pub value: Option<String>,
}

impl Skipped {
    /// What was skipped, in a few words, for the message of a file with
    /// nothing else to check.
    pub fn short(&self) -> String {
        match &self.value {
            Some(v) => format!("{} ({} `{v}`)", self.location, self.field),
            None => format!("{} ({} unset)", self.location, self.field),
        }
    }
}

impl std::fmt::Display for Skipped {
    /// The warning: why it was skipped and what that means.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, config) = if self.field == "root_id" {
            ("Wasm filter", "configuration")
        } else {
            ("WasmPlugin", "pluginConfig")
        };
        match &self.value {
            Some(v) => write!(
                f,
                "not checked: its {} is `{v}`, not `appguard`",
                self.field
            )?,
            None => write!(f, "not checked: it has no {}", self.field)?,
        }
        write!(
            f,
            "; appguard's module serves any {}, so if this {what} loads it, the filter runs this {config} unchecked: check it as a file of its own",
            self.field
        )
    }
}

impl Report {
    /// Whether every configuration in the file was accepted.
    pub fn all_valid(&self) -> bool {
        self.configs.iter().all(|c| c.result.is_ok())
    }
}

/// A configuration's one-line summary, counted as the filter logs them in
/// `on_configure`.
pub fn summary(c: &Config) -> String {
    format!(
        "{}, {}, {}, {} (mode {}, default_action {})",
        plural(c.routes.len(), "route"),
        plural(c.apps.len(), "app"),
        plural(c.api_keys.keys.len(), "API key"),
        plural(c.providers.len(), "token provider"),
        format!("{:?}", c.mode).to_ascii_lowercase(),
        format!("{:?}", c.default_action).to_ascii_lowercase(),
    )
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Reads and checks a file. `Err` only when it cannot be read, is empty,
/// is YAML that does not parse, is not a kind of file this understands, or
/// holds no appguard configuration (exit 2); refused configurations are in
/// the report, a JSON file that does not parse among them (the filter
/// reads JSON itself, and refuses it with the message returned).
pub fn check_file(path: &Path) -> Result<Report, CliError> {
    let bytes = read_file(path, Limit::CONFIG)?;
    check_bytes(path, &bytes)
}

/// Checks the contents of a file; `path` only decides the format by its
/// extension (`.json`, `.yaml`, `.yml`), else the content does (`{` or `[`
/// first means JSON).
pub fn check_bytes(path: &Path, bytes: &[u8]) -> Result<Report, CliError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let json = match ext.as_deref() {
        Some("json") => true,
        Some("yaml" | "yml") => false,
        _ => matches!(
            bytes.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        ),
    };
    if json {
        check_json(path, bytes)
    } else {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| CliError::input(format!("{} is not UTF-8 text", path.display())))?;
        check_yaml(path, text)
    }
}

/// The error for a file with nothing in it: whatever the format, there is
/// no configuration to check (most often the output of a command that
/// failed), so it is not reported as the filter's refusal.
fn empty(path: &Path) -> CliError {
    CliError::input(format!(
        "{}: empty: no configuration in it, nothing to check",
        path.display()
    ))
}

fn check_json(path: &Path, bytes: &[u8]) -> Result<Report, CliError> {
    // JSON's whitespace only: empty, as a YAML file of blank lines is.
    if bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Err(empty(path));
    }
    // Not even JSON: to the filter this is a configuration with a syntax
    // error, and it says so in its own words.
    let Ok(doc) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(plugin_report(bytes));
    };
    match classify(&doc) {
        // The exact bytes, not a re-serialisation: duplicate keys and
        // positions in messages stay what the filter would see.
        Kind::Plugin => Ok(plugin_report(bytes)),
        _ => check_resources(path, &[doc], ""),
    }
}

/// The deepest YAML nesting `check-config` parses. serde_norway refuses
/// deeper documents too, but only after loading the whole event stream, in
/// time quadratic in the depth (100 000 nested `[` take most of a minute);
/// no configuration comes near this.
pub const MAX_YAML_DEPTH: usize = 128;

/// The first line (1-based) at which `text` nests deeper than `max`
/// levels, counting block indentation levels, `- ` sequence entries that
/// open a line and flow collections (`[`, `{`) outside quoted scalars,
/// comments and block scalars. A linear pre-scan, an estimate on the safe
/// side for real files (which nest a few dozen levels at most): it bounds
/// the parser's work, and the parser decides the rest.
pub fn yaml_too_deep(text: &str, max: usize) -> Option<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut quote = Quote::None;
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    // A block scalar (`|`, `>`) opened on a line indented so much: lines
    // indented more (and blank ones) are its content.
    let mut block_scalar: Option<usize> = None;
    for (number, line) in text.lines().enumerate() {
        let indent = line.bytes().take_while(|b| *b == b' ').count();
        let content = line.get(indent..).unwrap_or_default();
        if let Some(parent) = block_scalar {
            if content.trim().is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut depth = 0;
        let mut rest = content;
        if quote == Quote::None && flow == 0 {
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            if content.starts_with("---") || content.starts_with("...") {
                indents.clear();
            }
            while indents.last().is_some_and(|&top| top > indent) {
                indents.pop();
            }
            if indents.last().is_none_or(|&top| top < indent) {
                indents.push(indent);
            }
            // `- - - x`: each entry indicator opens a level.
            while let Some(r) = rest
                .strip_prefix('-')
                .filter(|r| r.is_empty() || r.starts_with(' '))
            {
                depth += 1;
                rest = r.trim_start_matches(' ');
            }
        }
        let mut prev = b' ';
        let mut bytes = rest.bytes().peekable();
        let mut last_token = Vec::new();
        while let Some(b) = bytes.next() {
            match quote {
                Quote::Single => {
                    if b == b'\'' {
                        if bytes.peek() == Some(&b'\'') {
                            bytes.next();
                        } else {
                            quote = Quote::None;
                        }
                    }
                }
                Quote::Double => match b {
                    b'\\' => {
                        bytes.next();
                    }
                    b'"' => quote = Quote::None,
                    _ => {}
                },
                Quote::None => {
                    let token_start = prev == b' ' || (flow > 0 && b"[{,".contains(&prev));
                    match b {
                        b'#' if prev == b' ' => break,
                        b'\'' if token_start => quote = Quote::Single,
                        b'"' if token_start => quote = Quote::Double,
                        b'[' | b'{' if token_start || flow > 0 => {
                            flow += 1;
                            if indents.len() + depth + flow > max {
                                return Some(number + 1);
                            }
                        }
                        b']' | b'}' if flow > 0 => flow -= 1,
                        _ => {}
                    }
                    if b != b' ' {
                        if prev == b' ' {
                            last_token.clear();
                        }
                        last_token.push(b);
                    }
                }
            }
            prev = b;
        }
        if indents.len() + depth + flow > max {
            return Some(number + 1);
        }
        // A block scalar header ends the line: `key: |`, `- >-`, `|2+`.
        let header = last_token
            .strip_prefix(b"|")
            .or_else(|| last_token.strip_prefix(b">"));
        if quote == Quote::None
            && flow == 0
            && header.is_some_and(|h| h.iter().all(|c| b"+-123456789".contains(c)))
        {
            block_scalar = Some(indent);
        }
    }
    None
}

fn check_yaml(path: &Path, text: &str) -> Result<Report, CliError> {
    if let Some(line) = yaml_too_deep(text, MAX_YAML_DEPTH) {
        return Err(CliError::input(format!(
            "{}: line {line}: YAML nested deeper than {MAX_YAML_DEPTH} levels; not parsed \
             (no configuration nests so deep)",
            path.display()
        )));
    }
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(text) {
        let mut v: serde_norway::Value = serde::Deserialize::deserialize(de)
            .map_err(|e| CliError::input(format!("{}: not valid YAML: {e}", path.display())))?;
        v.apply_merge()
            .map_err(|e| CliError::input(format!("{}: YAML merge keys: {e}", path.display())))?;
        if let Some(at) = non_finite(&v, String::new()) {
            return Err(CliError::invalid(format!(
                "{}: `{at}` is .inf or .nan: JSON, which the filter is handed, has no such \
                 number (it would reach the filter as null); write a finite number",
                path.display()
            )));
        }
        let v = serde_json::to_value(v).map_err(|e| {
            CliError::input(format!(
                "{}: YAML that has no JSON form: {e}",
                path.display()
            ))
        })?;
        docs.push(v);
    }
    docs.retain(|d| !d.is_null());
    match docs.as_slice() {
        [] => Err(empty(path)),
        [doc] if classify(doc) == Kind::Plugin => {
            let json = serde_json::to_vec(doc).map_err(|e| CliError::input(e.to_string()))?;
            Ok(plugin_report(&json))
        }
        _ => check_resources(path, &docs, text),
    }
}

/// The path of the first `.inf` or `.nan` in `v`, a YAML document:
/// `serde_json` makes them `null`, which the filter would refuse as such
/// (`invalid type: null`), naming what nobody wrote.
fn non_finite(v: &serde_norway::Value, at: String) -> Option<String> {
    use serde_norway::Value as Y;
    match v {
        Y::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => Some(at),
        Y::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| non_finite(item, format!("{at}[{i}]"))),
        Y::Mapping(map) => map.iter().find_map(|(k, item)| {
            let name = k.as_str().map_or_else(|| "?".to_owned(), str::to_owned);
            let at = if at.is_empty() {
                name
            } else {
                format!("{at}.{name}")
            };
            non_finite(item, at)
        }),
        Y::Tagged(t) => non_finite(&t.value, at),
        _ => None,
    }
}

/// Checks Envoy configurations and Kubernetes resources (one or more, from
/// JSON or a multi-document YAML file). `text` is the YAML they came from
/// (empty for JSON), searched for scalars Kubernetes reads otherwise.
fn check_resources(path: &Path, docs: &[Value], text: &str) -> Result<Report, CliError> {
    let mut kind = None;
    let mut configs = Vec::new();
    let mut skipped = Vec::new();
    let mut others = Vec::new();
    let mut resources = Vec::new();
    unlist(docs, &mut resources, &mut others);
    for doc in resources {
        match classify(doc) {
            Kind::Envoy => {
                kind.get_or_insert(FileKind::Envoy);
                envoy_configs(doc, &mut configs, &mut skipped);
            }
            Kind::WasmPlugin => {
                kind.get_or_insert(FileKind::Istio);
                match wasm_plugin(doc, text) {
                    Ok(c) => configs.push(c),
                    Err(Some(s)) => skipped.push(s),
                    Err(None) => {}
                }
            }
            Kind::OtherResource(k) => others.push(k),
            // A plugin configuration among Kubernetes resources is
            // not something Envoy or Istio would ever read.
            Kind::Plugin => others.push("a document of unknown kind".into()),
        }
    }
    let also = if skipped.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = skipped.iter().map(Skipped::short).collect();
        format!("; not checked: {}", list.join(", "))
    };
    match kind {
        Some(kind) if !configs.is_empty() => Ok(Report {
            kind,
            configs,
            skipped,
        }),
        Some(FileKind::Istio) => Err(CliError::input(format!(
            "{}: nothing to check: no WasmPlugin for appguard (pluginName `appguard`){also}",
            path.display()
        ))),
        Some(_) => Err(CliError::input(format!(
            "{}: nothing to check: an Envoy configuration without an appguard Wasm filter (`root_id: appguard`){also}",
            path.display()
        ))),
        None => Err(not_ours(&others.join(", "))),
    }
}

/// `docs` with each Kubernetes list (`kind: List` from `kubectl get -o
/// yaml`, or a typed `WasmPluginList`) replaced by its `items`, as if they
/// were documents of a multi-document file; an empty list is noted in
/// `others`.
fn unlist<'a>(docs: &'a [Value], out: &mut Vec<&'a Value>, others: &mut Vec<String>) {
    for doc in docs {
        let list_kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .filter(|k| k.ends_with("List") && doc.get("apiVersion").is_some());
        match (list_kind, doc.get("items").and_then(Value::as_array)) {
            (Some(k), Some(items)) if items.is_empty() => others.push(format!("an empty {k}")),
            (Some(_), Some(items)) => unlist(items, out, others),
            _ => out.push(doc),
        }
    }
}

fn not_ours(what: &str) -> CliError {
    CliError::input(format!(
        "not an appguard configuration, an Envoy configuration with an appguard filter, or an Istio WasmPlugin ({what})"
    ))
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Plugin,
    Envoy,
    WasmPlugin,
    OtherResource(String),
}

/// Top-level fields of an Envoy bootstrap (config.bootstrap.v3.Bootstrap)
/// that an appguard configuration never has.
const BOOTSTRAP_FIELDS: &[&str] = &[
    "static_resources",
    "dynamic_resources",
    "admin",
    "node",
    "layered_runtime",
    "cluster_manager",
    "overload_manager",
    "stats_config",
];

/// Top-level fields of an appguard configuration (the filter's
/// `RawConfig`). A mapping with any of them is an appguard configuration
/// even with a bootstrap field name beside it (a stray `admin`): the filter
/// refuses that as an unknown field, and so must the check, rather than
/// calling it an Envoy configuration with nothing to check.
const APPGUARD_FIELDS: &[&str] = &[
    "mode",
    "default_action",
    "client_ip",
    "network",
    "platform_headers",
    "apps",
    "api_keys",
    "tokens",
    "rate_limit_service",
    "phone",
    "max_body_bytes",
    "alerts",
    "decision_log_per_second",
    "bypass_cors_preflight",
    "cors_on_refusals",
    "hold_headers_for_body",
    "routes",
];

fn classify(doc: &Value) -> Kind {
    let Some(obj) = doc.as_object() else {
        return Kind::Plugin;
    };
    // A mapping with appguard's own top-level fields is an appguard
    // configuration, whatever else it holds (`kind`, a bootstrap field, an
    // object deep inside that looks like a Wasm filter): the filter reads
    // it whole, and refuses what it does not know.
    if APPGUARD_FIELDS.iter().any(|f| obj.contains_key(*f)) {
        return Kind::Plugin;
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str) {
        if obj.contains_key("apiVersion") {
            return if kind == "WasmPlugin" {
                Kind::WasmPlugin
            } else {
                Kind::OtherResource(kind.to_owned())
            };
        }
    }
    if BOOTSTRAP_FIELDS.iter().any(|f| obj.contains_key(*f)) {
        return Kind::Envoy;
    }
    let mut found = false;
    walk(doc, &mut String::new(), &mut |_, node| {
        found |= is_appguard_filter(node) || is_other_wasm_filter(node);
    });
    if found {
        Kind::Envoy
    } else {
        Kind::Plugin
    }
}

fn plugin_report(bytes: &[u8]) -> Report {
    let result = Config::from_json(bytes);
    let notes = match &result {
        Ok(c) if c.hold_headers_for_body => vec![format!(
            "hold_headers_for_body: {HOLD_NEEDS_FLAG} (checked when this command is given the \
             Envoy configuration)"
        )],
        _ => Vec::new(),
    };
    Report {
        kind: FileKind::PluginConfig,
        configs: vec![Checked::new(String::new(), result, notes, Some(bytes))],
        skipped: Vec::new(),
    }
}

/// What `hold_headers_for_body` asks of the Wasm filter that runs it.
const HOLD_NEEDS_FLAG: &str = "needs the Wasm filter's allow_on_headers_stop_iteration: true \
     (Envoy 1.35 or later): without it a request on a route that reads the body waits for a \
     body Envoy never hands on, until Envoy's stream idle timeout";

/// The filter's verdict on an appguard configuration under the Envoy Wasm
/// filter `filter` (its `PluginConfig`): `hold_headers_for_body` needs
/// the filter's `allow_on_headers_stop_iteration`, and the flag without
/// it answers `503 appguard_host_error` to a body that arrives while the
/// headers wait (a note).
fn with_filter_flags(
    result: Result<Config, ConfigError>,
    filter: &Value,
    notes: &mut Vec<String>,
) -> Result<Config, ConfigError> {
    let flag = envoy_true(filter.get("allow_on_headers_stop_iteration"));
    match result {
        Ok(c) if c.hold_headers_for_body && !flag => {
            Err(ConfigError::new("hold_headers_for_body", HOLD_NEEDS_FLAG))
        }
        Ok(c) => {
            if flag && !c.hold_headers_for_body {
                notes.push(
                    "allow_on_headers_stop_iteration: true without hold_headers_for_body: a body \
                     that arrives while the headers wait for a JWKS or the rate-limit service is \
                     answered 503 appguard_host_error on routes that read it; set \
                     \"hold_headers_for_body\": true (no buffer filter is then needed)"
                        .to_owned(),
                );
            }
            Ok(c)
        }
        Err(e) => Err(e),
    }
}

/// Envoy's `per_connection_buffer_limit_bytes` when a listener leaves it
/// out: 1 MiB.
const ENVOY_BUFFER_LIMIT: u64 = 1024 * 1024;

/// With `hold_headers_for_body`, a body waits in Envoy's buffer for the
/// stream, which the listener's `per_connection_buffer_limit_bytes` caps:
/// a body over it gets Envoy's own 413 (HTTP/1.1) before appguard decides
/// anything, though `max_body_bytes` takes it (a note naming both).
fn held_body_limit(config: &Config, limit: u64, notes: &mut Vec<String>) {
    if !config.hold_headers_for_body {
        return;
    }
    let largest = config
        .routes
        .iter()
        .map(|r| r.max_body_bytes)
        .chain(std::iter::once(config.max_body_bytes))
        .max()
        .unwrap_or(0);
    if u64::try_from(largest).is_ok_and(|m| m > limit) {
        notes.push(format!(
            "hold_headers_for_body with the listener's per_connection_buffer_limit_bytes at \
             {limit}, below max_body_bytes {largest}: a held body over {limit} bytes gets Envoy's \
             own 413 before appguard decides (no reason code, no count); raise the limit to at \
             least {largest}, or lower max_body_bytes"
        ));
    }
}

/// The `config` of an appguard Wasm filter: `root_id: appguard` (Envoy's
/// `PluginConfig`).
fn is_appguard_filter(node: &Value) -> bool {
    node.get("root_id").and_then(Value::as_str) == Some("appguard")
}

/// The `config` of another Wasm filter (Envoy's `PluginConfig`: a
/// `root_id` or a `vm_config`) that carries a `configuration`: skipped,
/// with a warning, as it may load appguard's module all the same.
fn is_other_wasm_filter(node: &Value) -> bool {
    node.get("configuration").is_some()
        && (node.get("root_id").is_some() || node.get("vm_config").is_some())
        && !is_appguard_filter(node)
}

fn walk(node: &Value, path: &mut String, f: &mut dyn FnMut(&str, &Value)) {
    f(path, node);
    let len = path.len();
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk(v, path, f);
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                walk(v, path, f);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Adds the appguard Wasm filter configurations in `doc` to `configs`, and
/// the other Wasm filters with a configuration to `skipped`.
/// The names of the clusters an Envoy bootstrap defines, when it defines
/// all of them: `static_resources` and no CDS (nor ADS, which may carry
/// clusters). `None` when clusters may come from elsewhere.
fn static_clusters(doc: &Value) -> Option<Vec<&str>> {
    let resources = doc.get("static_resources")?;
    let dynamic = doc.get("dynamic_resources");
    if dynamic.is_some_and(|d| d.get("cds_config").is_some() || d.get("ads_config").is_some()) {
        return None;
    }
    Some(
        resources
            .get("clusters")
            .and_then(Value::as_array)
            .map(|clusters| {
                clusters
                    .iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Notes for each cluster `config` calls that `clusters` lacks: every
/// call to it fails, and requests take the failure mode.
fn missing_clusters(config: &Config, clusters: &[&str], notes: &mut Vec<String>) {
    let mut called: Vec<(String, &str)> = Vec::new();
    if let Some(r) = &config.rate_limit_service {
        called.push(("rate_limit_service.cluster".to_owned(), &r.cluster));
    }
    for (i, p) in config.providers.iter().enumerate() {
        if let Some(r) = &p.remote_jwks {
            called.push((format!("tokens[{i}].remote_jwks.cluster"), &r.cluster));
        }
    }
    for (field, cluster) in called {
        if !clusters.contains(&cluster) {
            notes.push(format!(
                "{field}: `{cluster}` is not a cluster of this Envoy configuration (its \
                 static_resources, with no CDS): every call to it fails, and requests take \
                 the failure mode"
            ));
        }
    }
    if let Some(a) = config
        .alerts
        .as_ref()
        .filter(|a| !clusters.contains(&&*a.cluster))
    {
        notes.push(format!(
            "alerts.cluster: `{}` is not a cluster of this Envoy configuration (its \
             static_resources, with no CDS): every alert fails to send (requests are not \
             affected)",
            a.cluster
        ));
    }
}

/// Notes for each remote JWKS `config` fetches through a static cluster
/// of `doc` that has no `transport_socket` (nor `transport_socket_matches`)
/// and an endpoint off this host: the keys come in the clear, and anyone
/// on the path to the issuer can hand the filter keys of their own, then
/// sign tokens it accepts. A cluster to this host (a local sidecar that
/// serves the JWKS) is left alone.
fn cleartext_jwks_clusters(config: &Config, doc: &Value, notes: &mut Vec<String>) {
    let Some(clusters) = doc
        .get("static_resources")
        .and_then(|r| r.get("clusters"))
        .and_then(Value::as_array)
    else {
        return;
    };
    let local = |host: &str| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    for (i, p) in config.providers.iter().enumerate() {
        let Some(r) = &p.remote_jwks else { continue };
        let Some(cluster) = clusters
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(r.cluster.as_str()))
        else {
            continue;
        };
        if cluster.get("transport_socket_matches").is_some() {
            continue;
        }
        let Some(why) = unchecked_transport(cluster) else {
            continue;
        };
        let mut hosts = Vec::new();
        walk(cluster, &mut String::new(), &mut |_, node| {
            if let Some(a) = node
                .get("socket_address")
                .and_then(|s| s.get("address"))
                .and_then(Value::as_str)
            {
                hosts.push(a.to_owned());
            } else if node.get("pipe").is_some() || node.get("envoy_internal_address").is_some() {
                // A Unix socket or an internal listener: this host.
                hosts.push("localhost".to_owned());
            }
        });
        if hosts.iter().all(|h| local(h)) && !hosts.is_empty() {
            continue;
        }
        notes.push(format!(
            "tokens[{i}].remote_jwks.cluster: `{}` {why}: anyone on the path to the issuer \
             can serve keys of their own and sign tokens appguard accepts; give the cluster \
             TLS with certificate checking (examples/firebase-app-check.envoy-cluster.yaml)",
            r.cluster
        ));
    }
}

/// Why a cluster's `transport_socket` leaves its peer unchecked, if it
/// does: none (plain text), `raw_buffer`, or an `UpstreamTlsContext`
/// whose inline `validation_context` checks no chain (none, no
/// `trusted_ca`, `ACCEPT_UNTRUSTED`) or no name (Envoy checks a server's
/// name only when told: `match_typed_subject_alt_names`, or the cluster's
/// `auto_san_validation`; a pinned key or certificate hash needs none).
/// A validation context from SDS or a certificate provider, and another
/// socket (one wrapping TLS, a tap), are not judged.
fn unchecked_transport(cluster: &Value) -> Option<&'static str> {
    let Some(socket) = cluster.get("transport_socket") else {
        return Some("has no transport_socket: the JWKS is fetched without TLS");
    };
    let name = socket.get("name").and_then(Value::as_str).unwrap_or("");
    let config = socket.get("typed_config");
    let kind = config
        .and_then(|c| c.get("@type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if name == "envoy.transport_sockets.raw_buffer" || kind.ends_with(".RawBuffer") {
        return Some("has a raw_buffer transport_socket: the JWKS is fetched without TLS");
    }
    if !kind.ends_with("tls.v3.UpstreamTlsContext") {
        return None;
    }
    let common = config.and_then(|c| c.get("common_tls_context"));
    let elsewhere = common.is_some_and(|c| {
        [
            "validation_context_sds_secret_config",
            "combined_validation_context",
            "validation_context_certificate_provider",
            "validation_context_certificate_provider_instance",
        ]
        .iter()
        .any(|k| c.get(*k).is_some())
    });
    if elsewhere {
        return None;
    }
    let Some(v) = common.and_then(|c| c.get("validation_context")) else {
        return Some(
            "has TLS without a validation_context: Envoy takes any certificate the JWKS host shows",
        );
    };
    let has = |k: &str| {
        v.get(k)
            .is_some_and(|x| !x.is_null() && x.as_array().is_none_or(|a| !a.is_empty()))
    };
    if has("custom_validator_config") {
        return None;
    }
    let pinned = has("verify_certificate_spki") || has("verify_certificate_hash");
    let untrusted =
        v.get("trust_chain_verification").and_then(Value::as_str) == Some("ACCEPT_UNTRUSTED");
    if untrusted || (!has("trusted_ca") && !pinned) {
        return Some(
            "has TLS whose validation_context checks no certificate chain (no trusted_ca, or \
             ACCEPT_UNTRUSTED): Envoy takes any certificate the JWKS host shows",
        );
    }
    let auto_san = cluster
        .get("typed_extension_protocol_options")
        .and_then(Value::as_object)
        .is_some_and(|o| {
            o.values().any(|p| {
                p.get("upstream_http_protocol_options")
                    .and_then(|u| u.get("auto_san_validation"))
                    .and_then(Value::as_bool)
                    == Some(true)
            })
        });
    let named = has("match_typed_subject_alt_names") || has("match_subject_alt_names");
    (!pinned && !named && !auto_san).then_some(
        "has TLS that checks the certificate's chain but not its name (no \
         match_typed_subject_alt_names or auto_san_validation): Envoy takes any publicly \
         trusted certificate, for any domain",
    )
}

/// What a connection manager (`HttpConnectionManager`) sets of what
/// appguard's trust model relies on (README, Trust boundaries).
struct Hcm {
    /// Where it is: its `http_filters` are under `{path}.http_filters`.
    path: String,
    /// `use_remote_address: true`: Envoy takes the downstream address from
    /// the connection, not from the client's `X-Forwarded-For`.
    remote_address: bool,
    /// `use_remote_address: true` without `skip_xff_append: true`: Envoy
    /// appends the peer's address to `X-Forwarded-For`, an entry
    /// `client_ip.xff_trusted_hops` counts.
    appends_xff: bool,
    /// The path settings it lacks.
    path_settings_missing: Vec<&'static str>,
    /// Per filter, in order: the request headers it removes (a
    /// `header_mutation`'s `remove`s, lower-cased), or `*` for a Lua
    /// filter, whose script may do anything.
    removes: Vec<Vec<String>>,
}

impl Hcm {
    fn read(path: &str, node: &Value, filters: &[Value]) -> Hcm {
        let is_true = |k: &str| envoy_true(node.get(k));
        let mut path_settings_missing = Vec::new();
        if !is_true("normalize_path") {
            path_settings_missing.push("normalize_path: true");
        }
        if !is_true("merge_slashes") {
            path_settings_missing.push("merge_slashes: true");
        }
        let escaped = node
            .get("path_with_escaped_slashes_action")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !matches!(
            escaped,
            "REJECT_REQUEST" | "UNESCAPE_AND_REDIRECT" | "UNESCAPE_AND_FORWARD"
        ) {
            path_settings_missing.push("path_with_escaped_slashes_action: REJECT_REQUEST");
        }
        let removes = filters.iter().map(removed_headers).collect();
        // An original IP detection extension (a trusted `x-real-ip`)
        // gives Envoy the client's address without use_remote_address.
        let detects_ip = node
            .get("original_ip_detection_extensions")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        Hcm {
            path: path.to_owned(),
            remote_address: is_true("use_remote_address") || detects_ip,
            appends_xff: (is_true("use_remote_address") && !is_true("skip_xff_append"))
                || xff_extension_appends(node),
            path_settings_missing,
            removes,
        }
    }

    /// The index in `http_filters` of the filter whose `config` is at
    /// `config_path`, if it is one of this manager's.
    fn filter_index(&self, config_path: &str) -> Option<usize> {
        let rest = config_path
            .strip_prefix(self.path.as_str())?
            .strip_prefix(".http_filters[")?;
        let (index, rest) = rest.split_once(']')?;
        (rest == ".typed_config.config")
            .then(|| index.parse().ok())
            .flatten()
    }

    /// Notes on what this manager leaves open for `config`, run by its
    /// filter `index`.
    fn notes(&self, config: &Config, index: usize, notes: &mut Vec<String>) {
        if config.xff_trusted_hops == 0 && !self.remote_address {
            notes.push(
                "the connection manager that runs appguard has no use_remote_address: true: \
                 with client_ip.xff_trusted_hops 0 the client is Envoy's downstream address, \
                 which Envoy then takes from the client's own X-Forwarded-For, so a client \
                 chooses its IP for IP rules, per-IP limits and failure budgets; set it where \
                 Envoy is the edge, or count your proxies in xff_trusted_hops (README, Trust \
                 boundaries)"
                    .to_owned(),
            );
        }
        if config.xff_trusted_hops > 0 && !self.appends_xff {
            notes.push(format!(
                "client_ip.xff_trusted_hops {}: the connection manager that runs appguard \
                 appends no X-Forwarded-For entry of its own (it has no use_remote_address: \
                 true, or has skip_xff_append: true), so the hops must count the load \
                 balancers' entries alone: one more, for an Envoy entry that is not there, \
                 lets a client choose its IP (README, Trust boundaries)",
                config.xff_trusted_hops
            ));
        }
        if !self.path_settings_missing.is_empty() {
            notes.push(format!(
                "the connection manager that runs appguard lacks {}: paths then reach appguard \
                 as sent, and it refuses (route_denied) the dot, empty-segment and encoded \
                 forms it cannot match with confidence; keep these settings wherever appguard \
                 runs (README, Trust boundaries)",
                self.path_settings_missing.join(", ")
            ));
        }
        let country_headers: Vec<&str> = std::iter::once(&config.network)
            .chain(config.routes.iter().filter_map(|r| r.network.as_ref()))
            .filter_map(|n| n.country_header.as_deref())
            .collect();
        let before = self.removes.get(..index).unwrap_or(&[]);
        let removed = |h: &str| {
            before
                .iter()
                .flatten()
                .any(|r| r == "*" || r.eq_ignore_ascii_case(h))
        };
        if let Some(header) = country_headers.into_iter().find(|h| !removed(h)) {
            notes.push(format!(
                "network.country_header `{header}`: no filter before appguard in this chain \
                 removes the client's copy (a header_mutation with `remove: {header}`; geoip \
                 alone leaves it where its lookup fails): unless a proxy in front of Envoy \
                 removes it, clients choose their country (README, Trust boundaries)"
            ));
        }
    }
}

/// Whether an HCM's XFF original IP detection extension has
/// `skip_xff_append: false`: Envoy then appends the peer's address to
/// `X-Forwarded-For` without `use_remote_address` (its default, unset, is
/// true: no entry).
fn xff_extension_appends(node: &Value) -> bool {
    node.get("original_ip_detection_extensions")
        .and_then(Value::as_array)
        .is_some_and(|e| {
            e.iter().filter_map(|x| x.get("typed_config")).any(|t| {
                let xff = t
                    .get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|ty| ty.ends_with(".http.original_ip_detection.xff.v3.XffConfig"));
                let off = match t.get("skip_xff_append") {
                    Some(Value::Bool(b)) => !*b,
                    Some(Value::String(s)) => {
                        matches!(s.to_lowercase().as_str(), "false" | "n" | "no" | "off")
                    }
                    _ => false,
                };
                xff && off
            })
        })
}

/// The request headers an HTTP filter entry removes: a `header_mutation`'s
/// `request_mutations[].remove`, lower-cased; `*` for a Lua filter.
fn removed_headers(filter: &Value) -> Vec<String> {
    let config = filter.get("typed_config");
    let ty = config
        .and_then(|t| t.get("@type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if ty.ends_with(".filters.http.lua.v3.Lua") {
        return vec!["*".to_owned()];
    }
    if !ty.ends_with(".filters.http.header_mutation.v3.HeaderMutation") {
        return Vec::new();
    }
    config
        .and_then(|t| t.pointer("/mutations/request_mutations"))
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|m| m.get("remove").and_then(Value::as_str))
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default()
}

fn envoy_configs(doc: &Value, configs: &mut Vec<Checked>, skipped: &mut Vec<Skipped>) {
    let clusters = static_clusters(doc);
    // The connection managers met so far: the walk meets one before the
    // filters in its `http_filters`.
    let mut hcms: Vec<Hcm> = Vec::new();
    // The filter entries that hold an appguard filter and are off until a
    // route turns them on (`disabled: true` on the `HttpFilter`), by the
    // location of their `config`: the walk meets an entry before its
    // `config`.
    let mut disabled = Vec::new();
    // The listeners met so far, by location, with their
    // `per_connection_buffer_limit_bytes`: the walk meets a listener
    // before the filters in its filter chains.
    let mut listeners: Vec<(String, u64)> = Vec::new();
    walk(doc, &mut String::new(), &mut |path, node| {
        if node.get("filter_chains").is_some() {
            let limit = node.get("per_connection_buffer_limit_bytes");
            let limit = limit
                .and_then(Value::as_u64)
                .or_else(|| limit.and_then(Value::as_str).and_then(|l| l.parse().ok()))
                .unwrap_or(ENVOY_BUFFER_LIMIT);
            listeners.push((path.to_owned(), limit));
        }
        if let Some(filters) = node.get("http_filters").and_then(Value::as_array) {
            hcms.push(Hcm::read(path, node, filters));
        }
        let config = node.get("typed_config").and_then(|t| t.get("config"));
        if envoy_true(node.get("disabled")) && config.is_some_and(is_appguard_filter) {
            disabled.push(format!("{path}.typed_config.config"));
        }
        if is_appguard_filter(node) {
            let bytes = envoy_plugin_bytes(node);
            let mut notes = Vec::new();
            if disabled.iter().any(|d| d == path) {
                notes.push(
                    "the filter entry is `disabled: true`: appguard runs only on the routes \
                     whose typed_per_filter_config turns it on, and every other request \
                     passes unchecked"
                        .to_owned(),
                );
            }
            let open = node.get("failure_policy").and_then(Value::as_str) == Some("FAIL_OPEN")
                || envoy_true(node.get("fail_open"));
            if open {
                notes.push(
                    "failure_policy FAIL_OPEN (or fail_open: true): when the VM fails (a \
                     crash, a reload that fails), Envoy lets requests through unchecked; leave \
                     it at FAIL_CLOSED, or FAIL_RELOAD to get a new VM and refuse meanwhile"
                        .to_owned(),
                );
            }
            let result = bytes
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|b| Config::from_json(b));
            // Envoy's Wasm filter takes no per-route configuration: it
            // refuses the whole file, whatever the configuration holds.
            let result = if path.contains("typed_per_filter_config") {
                Err(ConfigError::new(
                    "",
                    "Envoy refuses a Wasm filter's configuration under \
                     typed_per_filter_config (\"doesn't support virtual host or route specific \
                     configurations\"): configure appguard once, in http_filters, and give \
                     routes their policies in its configuration",
                ))
            } else {
                result
            };
            let result = with_filter_flags(result, node, &mut notes);
            if let Ok(c) = &result {
                let listener = listeners
                    .iter()
                    .filter(|(at, _)| path.starts_with(&format!("{at}.")))
                    .max_by_key(|(at, _)| at.len());
                if let Some((_, limit)) = listener {
                    held_body_limit(c, *limit, &mut notes);
                }
            }
            if let (Ok(c), Some(clusters)) = (&result, &clusters) {
                missing_clusters(c, clusters, &mut notes);
            }
            if let Ok(c) = &result {
                cleartext_jwks_clusters(c, doc, &mut notes);
            }
            if let Ok(c) = &result {
                if let Some((hcm, i)) = hcms
                    .iter()
                    .rev()
                    .find_map(|h| h.filter_index(path).map(|i| (h, i)))
                {
                    hcm.notes(c, i, &mut notes);
                }
            }
            configs.push(Checked::new(
                path.to_owned(),
                result,
                notes,
                bytes.as_deref().ok(),
            ));
        } else if is_other_wasm_filter(node) {
            let root_id = node.get("root_id").map(|r| match r {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            skipped.push(Skipped {
                location: path.to_owned(),
                field: "root_id",
                value: root_id,
            });
        }
    });
}

/// The bytes Envoy hands the plugin in `on_configure`: Envoy's
/// `PluginConfig.configuration` is an `Any`; a `StringValue` or
/// `BytesValue` is passed without the wrapper, any other message as its
/// protobuf encoding (so a `Struct` reaches the filter as bytes it cannot
/// read as JSON, and Envoy refuses the configuration). An `Any` without
/// `@type` is refused by Envoy's own parser.
fn envoy_plugin_bytes(config: &Value) -> Result<Vec<u8>, ConfigError> {
    const NONE: &str = "no plugin configuration: set plugin_config.configuration";
    let Some(conf) = config.get("configuration") else {
        return Err(ConfigError::new("", NONE));
    };
    let Some(ty) = conf.get("@type").and_then(Value::as_str) else {
        return Err(ConfigError::new(
            "",
            "plugin_config.configuration has no \"@type\" (Envoy refuses an Any without one): \
             use type.googleapis.com/google.protobuf.StringValue",
        ));
    };
    // Envoy reads an Any's type URL as `host/name`, and refuses one
    // without a `/` or with nothing before it.
    let Some(name) = ty
        .rsplit_once('/')
        .filter(|(host, _)| !host.is_empty())
        .map(|(_, name)| name)
    else {
        return Err(ConfigError::new(
            "",
            format!(
                "plugin_config.configuration \"@type\" {ty:?} has no host (Envoy refuses \
                 it): use type.googleapis.com/google.protobuf.StringValue"
            ),
        ));
    };
    let value = conf.get("value");
    let bytes = match name {
        "google.protobuf.StringValue" => match value {
            Some(Value::String(s)) => s.clone().into_bytes(),
            None => Vec::new(),
            Some(_) => {
                return Err(ConfigError::new(
                    "",
                    "plugin_config.configuration.value is not a string",
                ))
            }
        },
        "google.protobuf.BytesValue" => {
            // Protobuf's JSON mapping takes standard or URL-safe base64,
            // padded or not, as Envoy does.
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            use base64::Engine as _;
            let s = value.and_then(Value::as_str).unwrap_or("");
            [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|e| e.decode(s).ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        "",
                        "plugin_config.configuration (BytesValue) is not base64",
                    )
                })?
        }
        other => {
            return Err(ConfigError::new(
                "",
                format!(
                    "plugin_config.configuration of type {other} reaches the filter as protobuf bytes, not JSON; use google.protobuf.StringValue"
                ),
            ))
        }
    };
    if bytes.is_empty() {
        return Err(ConfigError::new("", NONE));
    }
    Ok(bytes)
}

/// `spec.pluginConfig` of a WasmPlugin for appguard. A WasmPlugin that
/// names another plugin is `Err`: with what to warn of when it carries a
/// `pluginConfig`, else `None`. `text` is the YAML it came from (empty for
/// JSON), searched for scalars Kubernetes reads otherwise.
fn wasm_plugin(doc: &Value, text: &str) -> Result<Checked, Option<Skipped>> {
    let spec = doc.get("spec");
    let meta = doc.get("metadata");
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    let location = match (field("namespace"), field("name")) {
        (Some(ns), Some(n)) => format!("WasmPlugin {ns}/{n}"),
        (None, Some(n)) => format!("WasmPlugin {n}"),
        _ => "WasmPlugin".to_owned(),
    };
    match spec.and_then(|s| s.get("pluginName")) {
        None => {}
        Some(Value::String(n)) if n == "appguard" => {}
        Some(other) => {
            let has_config = spec.is_some_and(|s| s.get("pluginConfig").is_some());
            return Err(has_config.then(|| Skipped {
                location,
                field: "pluginName",
                value: Some(match other {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            }));
        }
    }
    // Istio hands pluginConfig (a protobuf Struct) to the filter as JSON,
    // and none at all when the Struct has no fields.
    let mut sent = None;
    let result = match spec.and_then(|s| s.get("pluginConfig")) {
        Some(pc) if pc.as_object().is_some_and(|o| !o.is_empty()) => {
            serde_json::to_vec(&as_istio_sends(pc))
                .map_err(|e| ConfigError::new("", e.to_string()))
                .and_then(|b| {
                    let r = Config::from_json(&b);
                    sent = Some(b);
                    r
                })
        }
        Some(pc) if pc.is_object() => Err(ConfigError::new(
            "",
            "an empty spec.pluginConfig: Istio then sends no configuration, and the filter refuses to start without one",
        )),
        Some(_) => Err(ConfigError::new(
            "",
            "spec.pluginConfig must be a mapping (Istio reads it as a protobuf Struct)",
        )),
        None => Err(ConfigError::new(
            "",
            "no plugin configuration: set spec.pluginConfig",
        )),
    };
    let mut notes = Vec::new();
    if let Some(pc) = spec.and_then(|s| s.get("pluginConfig")) {
        istio_rounded(pc, &as_istio_sends(pc), "spec.pluginConfig", &mut notes);
    }
    // What Kubernetes reads where it differs (an unquoted `NO` is `false`
    // there), and whether it surely does: the configuration the filter
    // gets is that one, so it is the one that must pass.
    let read = spec.and_then(|s| s.get("pluginConfig")).map(|pc| {
        let uncommented = without_comments(text);
        let mut changed = false;
        let read = yaml11_scalars(
            pc,
            &mut "spec.pluginConfig".to_owned(),
            &uncommented,
            &mut notes,
            &mut changed,
        );
        (read, changed)
    });
    // Where Kubernetes reads the manifest otherwise, its reading decides,
    // whether or not this one passed (`max_body_bytes: 1_000` is a string
    // here, refused, and the number 1000 there, taken).
    let result = match (result, read) {
        (_, Some((read, true))) => {
            match serde_json::to_vec(&as_istio_sends(&read))
                .map_err(|e| ConfigError::new("", e.to_string()))
                .and_then(|b| {
                    let r = Config::from_json(&b);
                    sent = Some(b);
                    r
                }) {
                Ok(c) => Ok(c),
                Err(e) => Err(ConfigError::new(
                    e.path.clone(),
                    format!(
                        // The line and column are the JSON's this check
                        // wrote, not the manifest's.
                        "{} (as Kubernetes reads this manifest, YAML 1.1: see the warnings, \
                         and quote those values)",
                        e.message
                            .split(" at line ")
                            .next()
                            .and_then(|m| m.split(" (at line ").next())
                            .unwrap_or(&e.message)
                    ),
                )),
            }
        }
        (result, _) => result,
    };
    if let Some(strategy) = spec
        .and_then(|s| s.get("failStrategy"))
        .and_then(Value::as_str)
        .filter(|s| *s == "FAIL_OPEN")
    {
        notes.push(format!(
            "failStrategy: {strategy}: when the VM fails (a crash, a reload that fails), \
             requests pass unchecked; use FAIL_RELOAD (as examples/istio does) or FAIL_CLOSE"
        ));
    }
    if result.as_ref().is_ok_and(|c| c.hold_headers_for_body) {
        notes.push(format!(
            "hold_headers_for_body: {HOLD_NEEDS_FLAG}; a WasmPlugin has no field for it, so \
             unless an EnvoyFilter sets it on this filter, leave hold_headers_for_body out and \
             keep the buffer filter"
        ));
    }
    Ok(Checked::new(location, result, notes, sent.as_deref()))
}

/// Values published in appguard's examples and README, with what they
/// are. Anyone can read them: a configuration that keeps one trusts
/// tokens anyone can sign, API keys anyone can send, or phone digests
/// anyone can reverse.
const DEMO_VALUES: [(&str, &str); 8] = [
    (
        "ZGVtby1vbmx5LXNlY3JldC1kby1ub3QtdXNlLWluLXByb2R1Y3Rpb24tMDEyMzQ1Njc4OWFiY2RlZi14eXoh",
        "the demo HMAC secret: anyone can sign tokens with it",
    ),
    (
        "ZGVtby1vbmx5LXNlY3JldC1kby1ub3QtdXNlLWluLXByb2R1Y3Rpb24=",
        "the HMAC secret of examples/bad/unknown-provider.json: anyone can sign tokens with it",
    ),
    (
        "YXBwcm9vdi1leGFtcGxlLXNlY3JldC1OT1QtUkVBTC1yZXBsYWNlLXdpdGgteW91cnMh",
        "the Approov example's secret: anyone can sign tokens with it",
    ),
    (
        "ZGVtby1vbmx5LXBob25lLWhhc2gta2V5LTAxMjM0NTY=",
        "the demo phone hash key: anyone can reverse the phone digests it keys",
    ),
    (
        "41172213354f5fc5b103633b020992398ae89ebb96dfb142284450802c3cece4",
        "the hash of the demo API key `demo-android-key`",
    ),
    (
        "749795776c05eea4f6d67991ae9184950eac532f745b01ac46e20c16bc3aedac",
        "the hash of the demo API key `demo-ios-key`",
    ),
    (
        "742aa448448fa95823a8dd6136752019b25af04d56f8f47eba37db1f7e27df12",
        "the hash of the demo API key `demo-web-key`",
    ),
    (
        "81705bf28c1d90386216161ddd21979fc5b0d3248c8fcd20858c2946c26d96c6",
        "the hash of a demo API key",
    ),
];

/// Notes on the values of `doc` that appguard's examples publish
/// ([`DEMO_VALUES`]), each with its path: fine for a demo, never for
/// traffic that matters. Compared as the filter reads them: around
/// spaces, base64 padding and the case of hex digits make no difference.
fn demo_values(doc: &Value) -> Vec<String> {
    let bare = |v: &str| v.trim().trim_end_matches('=').to_owned();
    let mut notes = Vec::new();
    walk(doc, &mut String::new(), &mut |path, node| {
        let Some(text) = node.as_str() else {
            return;
        };
        let text = bare(text);
        if let Some((_, what)) = DEMO_VALUES
            .iter()
            .find(|(v, _)| bare(v).eq_ignore_ascii_case(&text))
        {
            notes.push(format!(
                "{path} is {what}; it is published in appguard's examples: replace it before real traffic"
            ));
        }
    });
    notes
}

/// The scalars YAML 1.1 reads as booleans besides `true` and `false`.
/// Kubernetes (`kubectl`, the API server) reads manifests that way, so an
/// unquoted `NO` in a WasmPlugin reaches the filter as `false`. This
/// checker reads YAML 1.2, where it is the string `"NO"`.
const YAML11_BOOLEANS: [&str; 16] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// The number Kubernetes reads in a plain scalar that this checker read as
/// the string `s`, if any. Kubernetes reads manifests with go-yaml v2
/// (through sigs.k8s.io/yaml), YAML 1.1 style: it drops every `_` and
/// parses the rest as Go's `strconv.ParseInt(s, 0, 64)` does (a leading
/// `0` is octal, `0x`/`0o`/`0b` in either case are hex, octal, binary),
/// then as an unsigned integer, then as a float written
/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`. So `0123` is 83,
/// `08` is 8, `1_000` is 1000 and `0X1F` is 31, where YAML 1.2 (and this
/// checker) reads strings. Scalars that both read the same way (`0b1010`,
/// `0o17`, `0x1f`, `1e3`: numbers here too) never get here, and go-yaml
/// has no sexagesimal numbers (`1:20` is a string to both).
fn yaml11_number(s: &str) -> Option<serde_json::Number> {
    // go-yaml tries numbers only for scalars starting with these.
    if !s.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.')) {
        return None;
    }
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    if let Some(n) = go_parse_int(&plain) {
        return Some(n);
    }
    if yaml_style_float(&plain) {
        return plain
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64);
    }
    None
}

/// Go's `strconv.ParseInt(s, 0, 64)`, falling back on `ParseUint(s, 0,
/// 64)` (no sign) as go-yaml does; `s` has no `_` left.
fn go_parse_int(s: &str) -> Option<serde_json::Number> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = lower.strip_prefix('0').filter(|d| !d.is_empty()) {
        (8, d)
    } else {
        (10, lower.as_str())
    };
    // from_str_radix would take a second sign; Go does not.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if !negative {
        return Some(magnitude.into());
    }
    // -2^63 is the one magnitude beyond i64::MAX that is still an i64.
    let n = 0i64.checked_sub_unsigned(magnitude)?;
    Some(n.into())
}

/// go-yaml v2's `yamlStyleFloat`:
/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_style_float(s: &str) -> bool {
    fn digits(s: &str) -> (&str, &str) {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s.split_at(end)
    }
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let rest = if let Some(frac) = s.strip_prefix('.') {
        let (d, rest) = digits(frac);
        if d.is_empty() {
            return false;
        }
        rest
    } else {
        let (d, rest) = digits(s);
        if d.is_empty() {
            return false;
        }
        match rest.strip_prefix('.') {
            Some(frac) => digits(frac).1,
            None => rest,
        }
    };
    if rest.is_empty() {
        return true;
    }
    let Some(exp) = rest.strip_prefix(['e', 'E']) else {
        return false;
    };
    let (d, rest) = digits(exp.strip_prefix(['+', '-']).unwrap_or(exp));
    !d.is_empty() && rest.is_empty()
}

/// `v` as Kubernetes (YAML 1.1) reads the manifest `text` (its comments
/// taken out), with a note, for every string of `v` that Kubernetes reads
/// as a boolean or a number and that `text` holds unquoted somewhere, of
/// where it is and what the filter gets instead. `changed` is set when a
/// value was surely read otherwise: one that `text` also holds quoted
/// somewhere (`"NO"` here, `NO` there) may be either, so it is noted but
/// kept as this checker read it.
fn yaml11_scalars(
    v: &Value,
    path: &mut String,
    text: &str,
    notes: &mut Vec<String>,
    changed: &mut bool,
) -> Value {
    match v {
        Value::String(s) => {
            let read = if let Some(b) = yaml11_boolean(s) {
                Some(Value::Bool(b))
            } else if serde_norway::from_str::<Value>(s).is_ok_and(|v| v.is_number()) {
                // Plain, YAML 1.2 would read a number too: so the string
                // was quoted, and Kubernetes reads it as a string as well.
                None
            } else {
                yaml11_number(s).map(|n| as_istio_sends(&Value::Number(n)))
            };
            let Some(read) = read.filter(|_| unquoted_in(text, s)) else {
                return v.clone();
            };
            notes.push(match &read {
                Value::Bool(_) => format!(
                    "{path}: `{s}` unquoted is a boolean to Kubernetes (YAML 1.1), and reaches the filter as one; write \"{s}\""
                ),
                // As Istio's Struct passes it on: `08` is the double 8,
                // written `8`.
                n => format!(
                    "{path}: `{s}` unquoted is the number {n} to Kubernetes (YAML 1.1), and reaches the filter as one; write \"{s}\" for the string, or {n}"
                ),
            });
            if quoted_in(text, s) {
                return v.clone();
            }
            *changed = true;
            read
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    let read = yaml11_scalars(x, path, text, notes, changed);
                    path.truncate(len);
                    read
                })
                .collect(),
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    let read = yaml11_scalars(x, path, text, notes, changed);
                    // A key too: sigs.k8s.io/yaml writes a boolean key as
                    // "true" or "false" (an EC JWK's `y`, an RSA JWK's `n`).
                    let key = match yaml11_boolean(k).filter(|_| unquoted_key_in(text, k)) {
                        Some(b) => {
                            notes.push(format!(
                                "{path}: the key `{k}` unquoted is the boolean {b} to Kubernetes \
                                 (YAML 1.1), and reaches the filter as the key \"{b}\"; write \"{k}\""
                            ));
                            if quoted_key_in(text, k) {
                                k.clone()
                            } else {
                                *changed = true;
                                b.to_string()
                            }
                        }
                        None => k.clone(),
                    };
                    path.truncate(len);
                    (key, read)
                })
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Whether Envoy reads `v` as `true`. Envoy reads its YAML with yaml-cpp,
/// which takes a plain `y`, `yes`, `true` or `on` (all in lower or upper
/// case, or capitalised) for true: `disabled: yes` turns a filter off,
/// though YAML 1.2, as this checker reads it, has the string "yes".
fn envoy_true(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => {
            let flexible = s == &s.to_lowercase()
                || s == &s.to_uppercase()
                || s.get(1..).is_some_and(|rest| rest == rest.to_lowercase());
            flexible && matches!(s.to_lowercase().as_str(), "y" | "yes" | "true" | "on")
        }
        _ => false,
    }
}

/// The boolean Kubernetes (go-yaml v2, YAML 1.1) reads in the plain scalar
/// `s`, if it reads one where YAML 1.2 reads a string.
fn yaml11_boolean(s: &str) -> Option<bool> {
    YAML11_BOOLEANS.contains(&s).then_some(matches!(
        s,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON"
    ))
}

/// Whether `text` holds `key` as a plain mapping key somewhere: first on
/// its line (after any `- `), or after `{` or `,` in a flow mapping, and
/// followed by `:` and a blank or the line's end.
fn unquoted_key_in(text: &str, key: &str) -> bool {
    text.match_indices(key).any(|(at, _)| {
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let before = text[line_start..at].trim_end_matches([' ', '\t']);
        let starts = before.is_empty()
            || before.ends_with(['{', ','])
            || before
                .trim_start()
                .trim_start_matches(['-', ' '])
                .is_empty();
        let after = text[at + key.len()..].trim_start_matches([' ', '\t']);
        let colon = after
            .strip_prefix(':')
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t', '\n', '\r']));
        starts && colon
    })
}

/// Whether `text` holds `key` quoted as a mapping key (`"y":`, `'y':`).
fn quoted_key_in(text: &str, key: &str) -> bool {
    ['"', '\''].iter().any(|q| {
        text.match_indices(&format!("{q}{key}{q}")).any(|(at, m)| {
            text[at + m.len()..]
                .trim_start_matches([' ', '\t'])
                .starts_with(':')
        })
    })
}

/// Whether `text` holds `word` quoted (`"word"` or `'word'`) somewhere.
fn quoted_in(text: &str, word: &str) -> bool {
    text.contains(&format!("\"{word}\"")) || text.contains(&format!("'{word}'"))
}

/// `text` without its YAML comments: from a `#` at the start of a line or
/// after a blank, outside quotes, to the end of the line.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (mut single, mut double, mut cut) = (false, false, None);
        let mut previous = ' ';
        for (i, c) in line.char_indices() {
            match c {
                '\'' if !double => single = !single,
                '"' if !single => double = !double,
                '#' if !single && !double && previous.is_whitespace() => {
                    cut = Some(i);
                    break;
                }
                _ => {}
            }
            previous = c;
        }
        match cut {
            Some(i) => {
                out.push_str(&line[..i]);
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

/// Whether `text` holds `word` as a plain (unquoted) scalar value: after
/// `:`, `-`, `[`, `{` or `,` (and spaces), and before the end of the line,
/// `,`, `]`, `}` or a comment.
fn unquoted_in(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].trim_end();
        let after = &text[at + word.len()..];
        let rest = after.trim_start_matches([' ', '\t']);
        let ends = after.is_empty()
            || after.starts_with([',', ']', '}', '\n', '\r'])
            || (rest.len() < after.len()
                && (rest.is_empty() || rest.starts_with(['#', '\n', '\r', ',', ']', '}'])));
        matches!(before.chars().last(), Some(':' | '-' | '[' | '{' | ',')) && ends
    })
}

/// `v` as Istio hands it to the filter: a protobuf `Struct` holds every
/// number as a double, and its JSON form writes a whole one under 1e21
/// without a fraction or exponent, as Go formats a float: the fewest
/// digits that read back as that double, then zeros (`20.0` in the YAML
/// arrives as `20`, which an integer field takes; `1541815603606036481`,
/// beyond 2^53, as `1541815603606036500`, and `2^60`, which a double holds
/// exactly, as `1152921504606847000`: see [`istio_rounded`]). Rust's
/// `Display` of an `f64` writes the same digits.
fn as_istio_sends(v: &Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            // From 1e21 on Go writes an exponent: read as a double here
            // too. Written back and read as the filter reads it, a value
            // outside the 64-bit integers (`u64::MAX` arrives as
            // `18446744073709552000`) is a double no integer field takes.
            Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => {
                serde_json::from_str::<Value>(&format!("{f}")).unwrap_or_else(|_| v.clone())
            }
            _ => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(as_istio_sends).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), as_istio_sends(v)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Notes on the integers of `written` (a `pluginConfig`) that Istio hands
/// the filter as another number (`sent`, [`as_istio_sends`]): beyond 2^53
/// a double does not hold every integer, so a `required_claims` id such as
/// a snowflake would require the rounded one, refusing the genuine tokens
/// and taking those of the id it rounded to.
fn istio_rounded(written: &Value, sent: &Value, at: &str, notes: &mut Vec<String>) {
    match (written, sent) {
        (Value::Number(w), Value::Number(s)) if (w.is_i64() || w.is_u64()) && w != s => {
            notes.push(format!(
                "{at}: {w} is beyond 2^53, and Istio (which holds pluginConfig numbers as \
                     doubles) hands the filter {s} instead: write an id this large as a string, \
                     or configure it where it is not rounded"
            ));
        }
        (Value::Array(w), Value::Array(s)) => {
            for (i, (w, s)) in w.iter().zip(s).enumerate() {
                istio_rounded(w, s, &format!("{at}[{i}]"), notes);
            }
        }
        (Value::Object(w), Value::Object(s)) => {
            for (k, w) in w {
                if let Some(s) = s.get(k) {
                    istio_rounded(w, s, &format!("{at}.{k}"), notes);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_nesting_is_bounded_before_parsing() {
        let flow = |n: usize| format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        // The key's level and 127 sequences: 128.
        assert_eq!(yaml_too_deep(&flow(127), 128), None);
        assert_eq!(yaml_too_deep(&flow(128), 128), Some(1));
        assert_eq!(yaml_too_deep(&format!("x: 1\n{}", flow(200)), 128), Some(2));
        // Block mappings, one level per indentation.
        let block: String = (0..130)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert_eq!(yaml_too_deep(&block, 128), Some(129));
        assert_eq!(yaml_too_deep(&block, 200), None);
        // Block sequences on one line.
        assert_eq!(
            yaml_too_deep(&format!("{}x\n", "- ".repeat(129)), 128),
            Some(1)
        );
        // Brackets that open nothing: in quotes, comments, block scalars,
        // plain scalars.
        let many = "[".repeat(500);
        for text in [
            format!("a: '{many}'\n"),
            format!("a: \"{many}\\\"{many}\"\n"),
            format!("a: 'it''s {many}\n  {many}'\n"),
            format!("a: 1 # {many}\n"),
            format!("# {many}\n"),
            format!("a: |\n  {many}\n\n  {many}\nb: 1\n"),
            format!("- >- # folded\n  {many}\n"),
            format!("a: x{many}\n"),
            format!("a: it's [x\nb: \"{many}\"\n"),
        ] {
            assert_eq!(yaml_too_deep(&text, 128), None, "{text}");
        }
        // But a block scalar ends where its indentation does.
        assert_eq!(
            yaml_too_deep(&format!("a: |\n  x\nb: {many}\n"), 128),
            Some(3)
        );
    }

    fn report(name: &str, text: &str) -> Report {
        check_bytes(Path::new(name), text.as_bytes()).unwrap()
    }

    #[test]
    fn plugin_config_json_keeps_the_filters_message() {
        let r = report("c.json", r#"{"mdoe": "monitor"}"#);
        assert_eq!(r.kind, FileKind::PluginConfig);
        let e = r.configs[0].result.as_ref().unwrap_err();
        assert_eq!(e.path, "mdoe");
        assert!(e.message.ends_with("at line 1 column 7"), "{e}");
    }

    #[test]
    fn plugin_config_yaml() {
        let r = report(
            "c.yaml",
            "mode: monitor\nroutes:\n- name: a\n  match: {prefix: /}\n",
        );
        assert_eq!(r.kind, FileKind::PluginConfig);
        let c = r.configs[0].result.as_ref().unwrap();
        assert_eq!(
            summary(c),
            "1 route, 0 apps, 0 API keys, 0 token providers (mode monitor, default_action allow)"
        );
    }

    /// The notes check-config gives on an Envoy file whose appguard
    /// provider fetches its JWKS through the cluster `idp_jwks`, to `host`,
    /// with `socket` (the YAML under `transport_socket:`) or none.
    fn jwks_cluster_notes(host: &str, socket: Option<&str>) -> Vec<String> {
        let socket = socket.map_or(String::new(), |s| format!("    transport_socket:\n{s}"));
        let yaml = format!(
            r#"
static_resources:
  listeners:
  - filter_chains:
    - filters:
      - typed_config:
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              config:
                root_id: appguard
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{{"tokens": [{{"name": "idp", "from": [{{"header": "x-t"}}], "issuer": "https://idp.example", "audiences": ["a"], "remote_jwks": {{"cluster": "idp_jwks", "authority": "idp.example", "path": "/jwks"}}}}], "routes": [{{"name": "a", "match": {{"prefix": "/"}}, "tokens": ["idp"]}}]}}'
  clusters:
  - name: idp_jwks
    type: LOGICAL_DNS
    load_assignment:
      cluster_name: idp_jwks
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: 443}}}}}}
{socket}"#
        );
        let r = report("envoy.yaml", &yaml);
        let c = &r.configs[0];
        assert!(c.result.is_ok(), "{:?}", c.result.as_ref().err());
        c.notes.clone()
    }

    /// A remote JWKS fetched without TLS, or with TLS that checks no
    /// certificate, lets anyone on the path to the issuer hand the filter
    /// keys of their own, and sign tokens it accepts (SECURITY.md: "serve
    /// remote JWKS over TLS"). Envoy checks a chain only with a
    /// `validation_context` that names one, and a name only when told:
    /// with `trusted_ca` alone it takes any publicly trusted certificate
    /// (the one an attacker holds for a domain of their own), with an
    /// empty `validation_context` anything, and with `ACCEPT_UNTRUSTED`
    /// any chain. check-config names each such cluster; one that checks
    /// chain and name (the shipped examples), or one to this host (a
    /// local sidecar), is left alone.
    #[test]
    fn a_remote_jwks_cluster_that_checks_no_certificate_is_named() {
        let tls = |validation: &str| {
            format!(
                "      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        sni: idp.example\n{validation}"
            )
        };
        let context = |inner: &str| {
            tls(&format!(
                "        common_tls_context:\n          validation_context:\n{inner}"
            ))
        };
        let ca = "            trusted_ca: {filename: /etc/ssl/certs/ca-certificates.crt}\n";
        let san = "            match_typed_subject_alt_names:\n            - san_type: DNS\n              matcher: {exact: idp.example}\n";
        let raw = "      name: envoy.transport_sockets.raw_buffer\n".to_owned();
        for (what, socket) in [
            ("no transport_socket", None),
            ("TLS without a validation_context", Some(tls(""))),
            ("raw_buffer", Some(raw)),
            ("a trusted CA and no name check", Some(context(ca))),
            (
                "an empty validation_context",
                Some(context("            {}\n")),
            ),
            (
                "ACCEPT_UNTRUSTED",
                Some(context(&format!(
                    "{ca}{san}            trust_chain_verification: ACCEPT_UNTRUSTED\n"
                ))),
            ),
        ] {
            let n = jwks_cluster_notes("idp.example", socket.as_deref());
            assert!(
                n.iter()
                    .any(|n| n.contains("tokens[0].remote_jwks.cluster") && n.contains("TLS")),
                "{what}: anyone on the path serves the keys, and nothing says so: {n:?}"
            );
        }
        let checked = context(&format!("{ca}{san}"));
        for (host, socket) in [
            ("idp.example", Some(checked.as_str())),
            ("127.0.0.1", None),
            ("localhost", None),
        ] {
            let n = jwks_cluster_notes(host, socket);
            assert!(
                !n.iter().any(|n| n.contains("remote_jwks.cluster")),
                "{host} {socket:?}: {n:?}"
            );
        }
    }

    #[test]
    fn envoy_filters_are_found_by_root_id() {
        let yaml = r#"
static_resources:
  listeners:
  - filter_chains:
    - filters:
      - typed_config:
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              config:
                root_id: appguard
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"routes": [{"name": "a b", "match": {"prefix": "/"}}]}'
          - name: other
            typed_config:
              config:
                root_id: someone-else
                configuration: {value: 'not json'}
          - name: struct
            typed_config:
              config:
                root_id: appguard
                configuration:
                  "@type": type.googleapis.com/google.protobuf.Struct
                  value: {mode: monitor}
"#;
        let r = report("envoy.yaml", yaml);
        assert_eq!(r.kind, FileKind::Envoy);
        assert_eq!(r.configs.len(), 2);
        let e = r.configs[0].result.as_ref().unwrap_err();
        assert_eq!(e.path, "routes[0].name");
        assert!(r.configs[0]
            .location
            .ends_with("http_filters[0].typed_config.config"));
        // Envoy hands a Struct over as protobuf bytes: the filter cannot
        // read them, and Envoy refuses the configuration.
        let e = r.configs[1].result.as_ref().unwrap_err();
        assert!(e.message.contains("protobuf bytes"), "{e:?}");
    }

    #[test]
    fn configurations_envoy_refuses_or_reads_otherwise() {
        let conf = |c: &str| {
            format!("static_resources: {{x: {{root_id: appguard, configuration: {c}}}}}\n")
        };
        // No @type: Envoy's parser refuses the Any.
        let r = report("e.yaml", &conf("{value: '{}'}"));
        let e = r.configs[0].result.as_ref().unwrap_err();
        assert!(e.message.contains("@type"), "{e:?}");
        // BytesValue in either base64 alphabet, padded or not, as Envoy
        // takes it.
        let json = br#"{"mode":"monitor"}"#;
        for engine in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let b64 = base64::Engine::encode(&engine, json);
            let r = report(
                "e.yaml",
                &conf(&format!(
                    "{{\"@type\": type.googleapis.com/google.protobuf.BytesValue, value: '{b64}'}}"
                )),
            );
            assert!(
                r.configs[0].result.is_ok(),
                "{b64}: {:?}",
                r.configs[0].result
            );
        }
    }

    #[test]
    fn missing_configuration_is_refused_like_the_filter() {
        let r = report("e.yaml", "static_resources: {x: {root_id: appguard}}\n");
        let e = r.configs[0].result.as_ref().unwrap_err();
        assert!(e.message.starts_with("no plugin configuration"));
    }

    #[test]
    fn istio_wasm_plugins_in_multi_document_files() {
        let yaml = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: appguard, namespace: istio-system}
spec:
  pluginName: appguard
  pluginConfig:
    default_action: deny
    routes:
    - {name: a, match: {prefix: /v1/}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: buffer}
spec: {}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: other}
spec: {pluginName: other, pluginConfig: {anything: 1}}
"#;
        let r = report("w.yaml", yaml);
        assert_eq!(r.kind, FileKind::Istio);
        assert_eq!(r.configs.len(), 1);
        assert_eq!(r.configs[0].location, "WasmPlugin istio-system/appguard");
        assert!(r.all_valid());
    }

    #[test]
    fn wasm_plugin_config_is_read_as_istio_sends_it() {
        let plugin = |config: &str| {
            format!(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                 metadata: {{name: appguard}}\nspec:\n  pluginName: appguard\n  pluginConfig: {config}\n"
            )
        };
        // A Struct holds numbers as doubles: `20.0` arrives as `20`.
        let r = report("w.yaml", &plugin("{max_body_bytes: 4096.0}"));
        assert!(r.all_valid(), "{:?}", r.configs[0].result.as_ref().err());
        let r = report("w.yaml", &plugin("{max_body_bytes: 4096.5}"));
        assert!(!r.all_valid());
        // An empty Struct: Istio sends no configuration at all.
        let r = report("w.yaml", &plugin("{}"));
        let e = r.configs[0].result.as_ref().unwrap_err();
        assert!(e.message.contains("empty spec.pluginConfig"), "{e}");
        let r = report("w.yaml", &plugin("[1]"));
        assert!(!r.all_valid());
    }

    #[test]
    fn an_unquoted_yaml_1_1_boolean_in_a_wasm_plugin_is_warned_of() {
        // `NO` (Norway) unquoted: a string to this YAML 1.2 reader, `false`
        // to Kubernetes, which the filter then refuses.
        let plugin = |countries: &str| {
            format!(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                 metadata: {{name: appguard}}\nspec:\n  pluginName: appguard\n  pluginConfig:\n    \
                 network:\n      country_header: x-country\n      country_deny: {countries}  # sanctions\n    \
                 routes:\n    - {{name: a, match: {{prefix: /}}}}\n"
            )
        };
        // The filter gets `false` and refuses it: so does the check.
        let r = report("w.yaml", &plugin("[KP, NO]"));
        assert!(!r.all_valid());
        let e = r.configs[0].result.as_ref().unwrap_err();
        assert_eq!(e.path, "network.country_deny[1]", "{e}");
        assert!(
            e.message.contains("as Kubernetes reads this manifest"),
            "{e}"
        );
        assert_eq!(r.configs[0].notes.len(), 1, "{:?}", r.configs[0].notes);
        assert!(
            r.configs[0].notes[0]
                .starts_with("spec.pluginConfig.network.country_deny[1]: `NO` unquoted"),
            "{:?}",
            r.configs[0].notes
        );
        // in block style too
        let r = report("w.yaml", &plugin("\n      - KP\n      - NO\n"));
        assert_eq!(r.configs[0].notes.len(), 1, "{:?}", r.configs[0].notes);
        // quoted either way: nothing to say
        for quoted in [r#"[KP, "NO"]"#, "[KP, 'NO']", "[KP, NOR]"] {
            let r = report("w.yaml", &plugin(quoted));
            assert!(
                r.configs[0].notes.is_empty(),
                "{quoted}: {:?}",
                r.configs[0].notes
            );
        }
        // Quoted, with the same word plain elsewhere only in a comment, or
        // a quoted number whose digits appear plain elsewhere: valid, and
        // nothing to say (YAML 1.2 would read a plain `10` as a number, so a
        // string "10" was quoted).
        let quoted_here =
            plugin("[KP, \"NO\"]").replace("  # sanctions", "  # sanctions: - NO, see the list");
        let r = report("w.yaml", &quoted_here);
        assert!(r.all_valid(), "{:?}", r.configs[0].result.as_ref().err());
        assert!(r.configs[0].notes.is_empty(), "{:?}", r.configs[0].notes);
        let ten = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                   metadata: {name: appguard}\nspec:\n  pluginName: appguard\n  pluginConfig:\n    \
                   max_body_bytes: 10\n    \
                   routes:\n    - {name: \"10\", match: {prefix: /}}\n";
        let r = report("w.yaml", ten);
        assert!(r.all_valid(), "{:?}", r.configs[0].result.as_ref().err());
        assert!(r.configs[0].notes.is_empty(), "{:?}", r.configs[0].notes);
        // Quoted in one place and plain in another: either may be the
        // plain one, so both are said, and the check keeps this reader's
        // values.
        let both =
            plugin("[KP, NO]").replace("routes:\n    - {name: a,", "routes:\n    - {name: \"NO\",");
        let r = report("w.yaml", &both);
        assert!(r.all_valid(), "{:?}", r.configs[0].result.as_ref().err());
        assert_eq!(r.configs[0].notes.len(), 2, "{:?}", r.configs[0].notes);
        // An Istio plugin that fails open is said to.
        let open = plugin("[KP]").replace(
            "  pluginName: appguard\n",
            "  pluginName: appguard\n  failStrategy: FAIL_OPEN\n",
        );
        let r = report("w.yaml", &open);
        assert!(r.all_valid(), "{:?}", r.configs[0].result.as_ref().err());
        assert!(
            r.configs[0]
                .notes
                .iter()
                .any(|n| n.starts_with("failStrategy: FAIL_OPEN")),
            "{:?}",
            r.configs[0].notes
        );
        // the plain token elsewhere (a key, a longer word) is no value
        assert!(!unquoted_in("NO: 1\nx: NOT\ny: 'NO'\n", "NO"));
        assert!(unquoted_in("x: [a,NO]", "NO"));
        assert!(unquoted_in("x: off # comment", "off"));
        assert!(
            unquoted_in("x: [KP,\n  NO]", "NO"),
            "a flow list over lines"
        );
        assert!(unquoted_in("x:\n  NO\n", "NO"), "a value on the next line");
        assert!(!unquoted_in("x: off#tag", "off"));
    }

    #[test]
    fn unquoted_yaml_1_1_numbers_in_a_wasm_plugin_are_warned_of() {
        let plugin = |values: &str| {
            format!(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                 metadata: {{name: appguard}}\nspec:\n  pluginName: appguard\n  pluginConfig:\n    \
                 x: {values}\n"
            )
        };
        // What this YAML 1.2 reader takes as strings, Kubernetes as numbers.
        for (plain, n) in [
            ("0123", "83"),
            ("-0123", "-83"),
            ("+0123", "83"),
            ("08", "8"),
            ("1_000", "1000"),
            ("1_000.5", "1000.5"),
            ("0X1F", "31"),
            ("0B101", "5"),
            ("0_17", "15"),
        ] {
            let r = report("w.yaml", &plugin(&format!("[a, {plain}]  # note")));
            let notes = &r.configs[0].notes;
            assert_eq!(notes.len(), 1, "{plain}: {notes:?}");
            assert_eq!(
                notes[0],
                format!(
                    "spec.pluginConfig.x[1]: `{plain}` unquoted is the number {n} to Kubernetes (YAML 1.1), \
                     and reaches the filter as one; write \"{plain}\" for the string, or {n}"
                ),
            );
            // Block style too.
            let r = report("w.yaml", &plugin(&format!("\n    - {plain}\n")));
            assert_eq!(
                r.configs[0].notes.len(),
                1,
                "{plain}: {:?}",
                r.configs[0].notes
            );
            // Quoted: a string to both.
            for quoted in [format!("\"{plain}\""), format!("'{plain}'")] {
                let r = report("w.yaml", &plugin(&format!("[{quoted}]")));
                assert!(
                    r.configs[0].notes.is_empty(),
                    "{quoted}: {:?}",
                    r.configs[0].notes
                );
            }
        }
        // Read alike by both: numbers here too (`0b1010`, `0o17`), or
        // strings to both (go-yaml has no sexagesimal `1:20`), or plain
        // numbers and words.
        for same in [
            "0b1010", "0o17", "0x1f", "1e3", ".5", "0", "-7", "1:20", "a_1", "1.2.3", "0x", "09a",
        ] {
            let r = report("w.yaml", &plugin(&format!("[{same}]")));
            assert!(
                r.configs[0].notes.is_empty(),
                "{same}: {:?}",
                r.configs[0].notes
            );
        }
    }

    #[test]
    fn go_yaml_numbers() {
        let n = |s: &str| yaml11_number(s).map(|n| n.to_string());
        assert_eq!(n("0123").as_deref(), Some("83"));
        assert_eq!(n("0b1010").as_deref(), Some("10"));
        assert_eq!(n("0o17").as_deref(), Some("15"));
        assert_eq!(n("1_000").as_deref(), Some("1000"));
        assert_eq!(
            n("18446744073709551615").as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(
            n("-9223372036854775808").as_deref(),
            Some("-9223372036854775808")
        );
        // Past u64: a float, as go-yaml falls back on one.
        assert_eq!(
            n("18446744073709551616").as_deref(),
            Some("1.8446744073709552e+19")
        );
        assert_eq!(n("08").as_deref(), Some("8.0"));
        assert_eq!(n("1.5e3").as_deref(), Some("1500.0"));
        for not in [
            "1:20", "0x", "--1", "+-1", "0x-1", "1e", ".", "e3", "1_a", "inf", ".inf", "",
        ] {
            assert_eq!(n(not), None, "{not}");
        }
        assert!(yaml_style_float("-1.e+5"));
        assert!(!yaml_style_float("1.5.1"));
    }

    #[test]
    fn other_wasm_filters_with_a_configuration_are_named_not_checked() {
        let yaml = r#"
static_resources:
  listeners:
  - filter_chains:
    - filters:
      - typed_config:
          http_filters:
          - name: appguard
            typed_config:
              config:
                root_id: appguard
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"mode": "monitor"}'
          - name: canary
            typed_config:
              config:
                root_id: appguard-canary
                vm_config: {code: {local: {filename: appguard.wasm}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"mdoe": "monitor"}'
          - name: no-root-id
            typed_config:
              config:
                vm_config: {code: {local: {filename: appguard.wasm}}}
                configuration: {"@type": type.googleapis.com/google.protobuf.StringValue, value: '{}'}
          - name: no-configuration
            typed_config:
              config: {root_id: stats, vm_config: {code: {local: {filename: stats.wasm}}}}
"#;
        let r = report("envoy.yaml", yaml);
        assert_eq!(r.kind, FileKind::Envoy);
        assert_eq!(r.configs.len(), 1);
        assert!(r.all_valid(), "unchanged verdict");
        let at =
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters";
        assert_eq!(
            r.skipped,
            vec![
                Skipped {
                    location: format!("{at}[1].typed_config.config"),
                    field: "root_id",
                    value: Some("appguard-canary".into()),
                },
                Skipped {
                    location: format!("{at}[2].typed_config.config"),
                    field: "root_id",
                    value: None,
                },
            ]
        );
        assert_eq!(
            r.skipped[0].to_string(),
            "not checked: its root_id is `appguard-canary`, not `appguard`; appguard's module serves \
             any root_id, so if this Wasm filter loads it, the filter runs this configuration \
             unchecked: check it as a file of its own"
        );
        assert!(r.skipped[1]
            .to_string()
            .starts_with("not checked: it has no root_id;"));

        // Only a canary: nothing to check (exit 2), and it is named.
        let canary = "static_resources: {x: {root_id: appguard-canary, configuration: {}}}\n";
        let e = check_bytes(Path::new("e.yaml"), canary.as_bytes()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .ends_with("; not checked: static_resources.x (root_id `appguard-canary`)"),
            "{e}"
        );
        // Not even an Envoy bootstrap: found all the same.
        let e = check_bytes(
            Path::new("l.json"),
            br#"{"config": {"root_id": "canary", "configuration": {}}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("config (root_id `canary`)"), "{e}");
    }

    #[test]
    fn other_wasm_plugins_with_a_configuration_are_named_not_checked() {
        let plugin = |name: &str, spec: &str| {
            format!(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                 metadata: {{name: {name}, namespace: ns}}\nspec: {spec}\n"
            )
        };
        let yaml = [
            plugin(
                "appguard",
                "{pluginName: appguard, pluginConfig: {mode: monitor}}",
            ),
            plugin(
                "canary",
                "{pluginName: appguard-canary, pluginConfig: {mdoe: x}}",
            ),
            plugin("stats", "{pluginName: stats}"),
        ]
        .join("---\n");
        let r = report("w.yaml", &yaml);
        assert_eq!(r.configs.len(), 1);
        assert!(r.all_valid(), "unchanged verdict");
        assert_eq!(
            r.skipped,
            vec![Skipped {
                location: "WasmPlugin ns/canary".into(),
                field: "pluginName",
                value: Some("appguard-canary".into()),
            }]
        );
        assert!(
            r.skipped[0].to_string().contains(
                "so if this WasmPlugin loads it, the filter runs this pluginConfig unchecked"
            ),
            "{}",
            r.skipped[0]
        );
        // Only the canary, in YAML or JSON: nothing to check, and it is named.
        let only = plugin(
            "canary",
            "{pluginName: appguard-canary, pluginConfig: {mdoe: x}}",
        );
        let e = check_bytes(Path::new("w.yaml"), only.as_bytes()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .ends_with("; not checked: WasmPlugin ns/canary (pluginName `appguard-canary`)"),
            "{e}"
        );
        let json = br#"{"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "canary"}, "spec": {"pluginName": "c", "pluginConfig": {}}}"#;
        let e = check_bytes(Path::new("w.json"), json).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(
            e.to_string().contains("WasmPlugin canary (pluginName `c`)"),
            "{e}"
        );
    }

    #[test]
    fn a_kubernetes_list_is_read_as_its_items() {
        // What `kubectl get wasmplugins -A -o yaml` prints.
        let yaml = r#"
apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
- apiVersion: extensions.istio.io/v1alpha1
  kind: WasmPlugin
  metadata: {name: appguard, namespace: istio-system}
  spec:
    pluginName: appguard
    pluginConfig:
      network: {country_header: x-country, country_deny: [KP, NO]}
- apiVersion: extensions.istio.io/v1alpha1
  kind: WasmPlugin
  metadata: {name: strict, namespace: shop}
  spec: {pluginConfig: {mdoe: enforce}}
- apiVersion: extensions.istio.io/v1alpha1
  kind: WasmPlugin
  metadata: {name: canary, namespace: shop}
  spec: {pluginName: appguard-canary, pluginConfig: {mode: monitor}}
"#;
        let r = report("list.yaml", yaml);
        assert_eq!(r.kind, FileKind::Istio);
        let at: Vec<_> = r.configs.iter().map(|c| c.location.as_str()).collect();
        assert_eq!(
            at,
            ["WasmPlugin istio-system/appguard", "WasmPlugin shop/strict"]
        );
        // The unquoted `NO` is `false` to Kubernetes: refused as the filter
        // would, and noted.
        let e = r.configs[0].result.as_ref().unwrap_err();
        assert_eq!(e.path, "network.country_deny[1]", "{e}");
        assert_eq!(r.configs[0].notes.len(), 1, "{:?}", r.configs[0].notes);
        let e = r.configs[1].result.as_ref().unwrap_err();
        assert_eq!(e.path, "mdoe");
        assert_eq!(r.skipped.len(), 1);
        // The same in JSON (`-o json`), and a typed list.
        let mut doc: Value = serde_norway::from_str(yaml).unwrap();
        doc["kind"] = "WasmPluginList".into();
        let json = serde_json::to_vec(&doc).unwrap();
        let r = check_bytes(Path::new("list.json"), &json).unwrap();
        assert_eq!(r.configs.len(), 2);
        // In JSON the string is quoted: the first one is valid there.
        assert!(r.configs[0].result.is_ok());
        // An empty list: nothing to check.
        let e = check_bytes(
            Path::new("l.yaml"),
            b"apiVersion: v1\nkind: List\nitems: []\n",
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("(an empty List)"), "{e}");
        // A list of other kinds: not ours, as the kinds are.
        let e = check_bytes(
            Path::new("l.yaml"),
            b"apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: ConfigMap}]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("(ConfigMap)"), "{e}");
    }

    #[test]
    fn an_empty_file_is_nothing_to_check_in_either_format() {
        for (name, text) in [
            ("c.json", ""),
            ("c.json", " \n\t\r\n"),
            ("c.yaml", ""),
            ("c.yaml", "# only a comment\n---\n"),
            ("c", "\n\n"),
        ] {
            let e = check_bytes(Path::new(name), text.as_bytes()).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{name} {text:?}: {e}");
            assert_eq!(
                e.to_string(),
                format!("{name}: empty: no configuration in it, nothing to check")
            );
        }
        // JSON that is not whitespace is the filter's to refuse (exit 1).
        let r = report("c.json", "\u{c}");
        assert!(r.configs[0].result.is_err());
    }

    #[test]
    fn unknown_kinds_and_bad_yaml_are_input_errors() {
        let e = check_bytes(Path::new("x.yaml"), b"apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = check_bytes(Path::new("x.yaml"), b"a: [unclosed\n").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        // Not JSON at all: the filter's own syntax error, exit 1.
        let r = report("x.json", "{not json");
        assert!(r.configs[0].result.is_err());
    }
}
