//! `appguard-cli`: the operator tool. Argument parsing and printing only;
//! the work is in the library (and, below it, the filter's own code).
//!
//! Exit codes: 0 success, 1 the input is invalid (a configuration the filter
//! refuses, a bad fingerprint or key), 2 the input could not be read or the
//! arguments are wrong.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use appguard::signing::SignatureOptions;
use appguard::token::keys::Alg;
use appguard_cli::error::{read_capped, read_file, read_text, Limit};
use appguard_cli::install_key::{self, KeyType};
use appguard_cli::mint::{self, SigningMaterial, TokenSpec};
use appguard_cli::{check, fingerprint, pem, service_limits, sign, CliError};
use clap::{ArgGroup, Args, Parser, Subcommand};
use serde_json::Value;

/// appguard's operator tool: check configurations with the filter's own
/// parser, hash API keys, normalise certificate fingerprints, mint
/// development tokens.
#[derive(Debug, Parser)]
#[command(name = "appguard-cli", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate an appguard configuration (JSON or YAML), an Envoy
    /// configuration with appguard filters, or an Istio WasmPlugin, exactly
    /// as the filter would; with --ratelimit-config, also whether the
    /// rate-limit service has a limit for each descriptor it is sent.
    /// Exit 0 valid (warnings included, unless --strict), 1 refused, 2
    /// unreadable.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Warnings fail the check too (exit 1), for a CI step: a missing
        /// rate-limit cluster, a replay rule the service does not enforce,
        /// a demo secret are valid configurations that do not work as meant.
        #[arg(long)]
        strict: bool,
        /// The rate-limit service's configuration (envoyproxy/ratelimit
        /// YAML: a file, or a directory of .yaml/.yml files; repeatable, as
        /// the service's --config): warn of every service rule and
        /// replay descriptor it has no limit for.
        #[arg(long = "ratelimit-config", value_name = "FILE_OR_DIR")]
        ratelimit_config: Vec<PathBuf>,
    },
    /// Print the SHA-256 of an API key, as `api_keys.keys[].sha256` wants it.
    /// Without KEY, reads keys from standard input, one per line (keeps them
    /// out of shell history). Never prints a key.
    HashKey {
        /// The key (prefer standard input). A key may begin with `-`.
        #[arg(allow_hyphen_values = true)]
        key: Option<String>,
        // Taken so that `run` refuses them without naming any: clap's
        // "unexpected argument" error would echo a second key (`hash-key
        // $KEYS`, unquoted).
        #[arg(hide = true, allow_hyphen_values = true, num_args = 0..)]
        extra: Vec<String>,
    },
    /// Print an Android signing certificate's SHA-256 and SHA-1 fingerprints
    /// (from PEM or DER), or normalise a fingerprint given as hex, in the form
    /// `apps[].cert_fingerprints` accepts.
    Fingerprint(FingerprintArgs),
    /// Mint a development token with a provider's test key (or, with a
    /// subcommand, an install key or a request signature).
    Mint(Box<MintArgs>),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["pem", "der", "hex"])))]
struct FingerprintArgs {
    /// A PEM certificate file (the first CERTIFICATE block), e.g. from
    /// `keytool -exportcert -rfc`.
    #[arg(long, value_name = "FILE")]
    pem: Option<PathBuf>,
    /// A DER certificate file.
    #[arg(long, value_name = "FILE")]
    der: Option<PathBuf>,
    /// A fingerprint in hex (colons optional, any case) to normalise.
    hex: Option<String>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct MintArgs {
    #[command(subcommand)]
    action: Option<MintAction>,
    #[command(flatten)]
    token: TokenArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("key").required(true).args(["secret_base64", "secret_file", "key_pem"])))]
struct TokenArgs {
    /// The signing algorithm (must match the provider's key).
    #[arg(long, required = true, value_parser = mint::parse_alg)]
    alg: Option<Alg>,
    /// HMAC secret in base64 (standard or URL-safe, padding optional), as in
    /// `tokens[].keys[].secret_base64`. Visible in the process list: prefer
    /// --secret-file.
    #[arg(long, value_name = "B64", allow_hyphen_values = true)]
    secret_base64: Option<String>,
    /// A file holding the HMAC secret in base64.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// A private key PEM for RS*/PS*/ES256/ES384/EdDSA.
    #[arg(long, value_name = "FILE")]
    key_pem: Option<PathBuf>,
    /// The `kid` header.
    #[arg(long)]
    kid: Option<String>,
    /// The `iss` claim.
    #[arg(long)]
    iss: Option<String>,
    /// An `aud` value (repeatable).
    #[arg(long)]
    aud: Vec<String>,
    /// The `sub` claim (e.g. a Firebase App Check app id
    /// `1:123:android:abc`).
    #[arg(long)]
    sub: Option<String>,
    /// Another claim, NAME=VALUE (repeatable); VALUE is JSON when it parses,
    /// else a string. An integer beyond 64 bits, or nesting deeper than the
    /// filter reads, is refused.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
    /// Seconds until `exp` (appguard's default `max_lifetime_seconds` is 300);
    /// at most 86400 (one day), the largest `max_lifetime_seconds` a
    /// provider may set.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    lifetime: u64,
    /// The `jti` claim.
    #[arg(long, conflicts_with = "random_jti")]
    jti: Option<String>,
    /// A random `jti` (16 bytes from the OS, hex).
    #[arg(long)]
    random_jti: bool,
    /// A bound header value (repeatable, in the provider's `binding.headers`
    /// order): sets the binding claim to base64(SHA-256(values)).
    #[arg(long, value_name = "VALUE")]
    bind_header: Vec<String>,
    /// The binding claim's name (`binding.claim`).
    #[arg(long, default_value = "pay", value_name = "NAME")]
    bind_claim: String,
    /// Put this install public key in the `ipk` claim: a private key PEM from
    /// `mint install-key`, a PUBLIC KEY PEM, or a file with the ipk value.
    #[arg(long, value_name = "FILE")]
    ipk_from: Option<PathBuf>,
    /// The install key claim's name (`message_signing.claim`).
    #[arg(long, default_value = "ipk", value_name = "NAME")]
    ipk_claim: String,
}

#[derive(Debug, Subcommand)]
enum MintAction {
    /// Generate an install key pair from OS randomness: the private key goes
    /// to --out (PKCS#8 PEM, mode 0600), the `ipk` claim value to standard
    /// output.
    InstallKey {
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Ed25519 instead of P-256.
        #[arg(long)]
        ed25519: bool,
        /// Replace --out if it exists (with a new file of mode 0600).
        #[arg(long)]
        force: bool,
    },
    /// Sign a request with an install key (RFC 9421) as the filter's
    /// `message_signing` expects, and print the headers and a curl line.
    SignRequest(Box<SignArgs>),
}

#[derive(Debug, Args)]
struct SignArgs {
    /// The install private key (PKCS#8 PEM, from `mint install-key` or
    /// `openssl genpkey`).
    #[arg(long, value_name = "FILE")]
    install_key: PathBuf,
    /// The method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The absolute URL, e.g. https://api.example.com/v1/sms?x=1.
    #[arg(long)]
    url: String,
    /// A header, 'Name: value' (repeatable).
    // Parsed by `sign::parse_header` in `sign_request`, not by clap: clap's
    // error would echo the whole value, which may be a credential.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The body.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// A file holding the body (curl sends it with --data-binary @FILE;
    /// `-` reads standard input, and the curl line carries the text inline).
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
    /// The header carrying the token (the provider's `from[].header`).
    #[arg(long, default_value = "approov-token")]
    token_header: String,
    /// The token (whose `ipk` is this key's public half).
    #[arg(long)]
    token: String,
    /// The token claim that carries the install key
    /// (`message_signing.claim`), checked against --install-key.
    #[arg(long, default_value = "ipk", value_name = "NAME")]
    ipk_claim: String,
    /// The signature label (`message_signing.label`).
    #[arg(long, default_value_t = sign::default_label())]
    label: String,
    /// `created`, seconds since the epoch (default: now).
    #[arg(long, value_name = "SECONDS")]
    created: Option<u64>,
    /// Add `expires`, this many seconds after `created`.
    #[arg(long, value_name = "SECONDS")]
    expires_in: Option<u64>,
    /// The `nonce` parameter.
    #[arg(long)]
    nonce: Option<String>,
    /// The `keyid` parameter.
    #[arg(long)]
    keyid: Option<String>,
    /// A covered component (repeatable), replacing the default coverage:
    /// @method @authority @path [@query] TOKEN-HEADER [content-digest].
    #[arg(long = "component", value_name = "NAME")]
    components: Vec<String>,
}

/// Writes a line to standard output. A closed pipe (`| head -1`) or a full
/// disk is reported as an error (exit 2), never a panic as `println!`'s.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
            .map_err(|e| CliError::input(format!("cannot write to standard output: {e}")))?
    }};
}

/// Writes a line to standard error. `eprintln!` panics (exit 101) when
/// standard error is closed (`2>&-`); this drops the line instead: there is
/// nowhere to report it, and the exit status still says what happened.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        // Nowhere left to say that standard error failed.
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return command_line_error(&e),
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            err!("appguard-cli: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Reports a command line clap could not read, as clap would (help and
/// version as asked, exit 2 for an error), but without the arguments as
/// given that are not option names: an unquoted secret or token split by
/// the shell (`--secret-base64 $SECRET` of a wrapped `openssl rand
/// -base64 64`, `--token Bearer $TOKEN`) would otherwise be echoed to a
/// terminal or a CI log in clap's "unexpected argument" message.
fn command_line_error(e: &clap::Error) -> ExitCode {
    if let Some(code) = appguard_ratelimit::cli::clap_help_or_version(e) {
        return code;
    }
    // The command's own words (subcommand names) are no secrets.
    fn names(c: &clap::Command, out: &mut Vec<String>) {
        for sub in c.get_subcommands() {
            out.push(sub.get_name().to_owned());
            names(sub, out);
        }
    }
    let mut words = Vec::new();
    names(&<Cli as clap::CommandFactory>::command(), &mut words);
    // Option names stay (`--secret-base64`); values go, also after `=`.
    let values: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .map(|a| match a.split_once('=') {
            Some((name, value)) if name.starts_with("--") => value.to_owned(),
            _ if looks_like_an_option(&a) || words.contains(&a) => String::new(),
            _ => a,
        })
        .collect();
    let message = appguard_ratelimit::cli::hide_values(
        &e.render().to_string(),
        values.iter().map(String::as_str).collect(),
    );
    err!("{}", message.trim_end());
    ExitCode::from(2)
}

/// Whether a `hash-key` argument reads as a long option (`--stdin`,
/// `--help=x`): `--`, then a letter, then letters, digits, `-` or `=`.
fn looks_like_an_option(key: &str) -> bool {
    key.strip_prefix("--").is_some_and(|rest| {
        rest.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'=')
    })
}

fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::CheckConfig {
            file,
            ratelimit_config,
            strict,
        } => check_config(&file, &ratelimit_config, strict),
        Command::HashKey { key, extra } => {
            if !extra.is_empty() {
                return Err(CliError::input(format!(
                    "hash-key takes one KEY argument, not {} (an unquoted variable?); \
                     give several keys on standard input, one per line",
                    extra.len() + 1
                )));
            }
            // `-` reads standard input, as the other commands' file
            // arguments do (it is never an API key to hash).
            let input = match key.as_deref() {
                Some("-") | None => read_stdin("API key(s), one per line", Limit::API_KEYS)?,
                Some(k) => {
                    // `hash-key --stdin` or a mistyped flag would otherwise
                    // print a hash of that text, silently. Said without
                    // the text: it may be a key after all.
                    if looks_like_an_option(k) {
                        err!(
                            "warning: the key begins with `--` as an option would; hash-key \
                             has no options (keys come as its one argument, or on standard \
                             input): the hash below is of that text"
                        );
                    }
                    k.to_owned()
                }
            };
            for h in appguard_cli::hash_keys(&input)? {
                out!("{h}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fingerprint(a) => {
            if let Some(path) = a.pem {
                let bytes = read_file(&path, Limit::CERTIFICATE)?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    CliError::invalid(format!(
                        "{} is binary, not PEM: for a DER certificate use --der",
                        path.display()
                    ))
                })?;
                let fp = fingerprint::of_pem(&text)?;
                out!("SHA256: {}", fp.sha256);
                out!("SHA1: {}", fp.sha1);
            } else if let Some(path) = a.der {
                let fp = fingerprint::of_der(&read_file(&path, Limit::CERTIFICATE)?)?;
                out!("SHA256: {}", fp.sha256);
                out!("SHA1: {}", fp.sha1);
            } else if let Some(hex) = a.hex {
                out!("{}", fingerprint::normalise(&hex)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Mint(m) => match m.action {
            Some(MintAction::InstallKey {
                out,
                ed25519,
                force,
            }) => {
                let kind = if ed25519 {
                    KeyType::Ed25519
                } else {
                    KeyType::P256
                };
                let (key, der) = install_key::generate(kind)?;
                install_key::write_private(&out, &pem::encode("PRIVATE KEY", &der), force)?;
                err!(
                    "wrote the {} install private key to {} (PKCS#8 PEM); its ipk:",
                    key.algorithm(),
                    out.display()
                );
                out!("{}", key.public_key().to_ipk());
                Ok(ExitCode::SUCCESS)
            }
            Some(MintAction::SignRequest(s)) => sign_request(*s),
            None => mint_token(m.token),
        },
    }
}

fn check_config(file: &Path, ratelimit: &[PathBuf], strict: bool) -> Result<ExitCode, CliError> {
    let report = check::check_file(file)?;
    let mut warnings = 0usize;
    let mut warn = |line: String| {
        warnings += 1;
        err!("{line}");
    };
    let name = file.display();
    let at = |location: &str| {
        if location.is_empty() {
            String::new()
        } else {
            format!(" ({location})")
        }
    };
    // The configuration's own verdict first: a rate-limit YAML that cannot
    // be read or is refused (which ends the command) must not hide it.
    for c in &report.configs {
        let at = at(&c.location);
        match &c.result {
            Ok(config) => out!("{name}{at}: valid: {}", check::summary(config)),
            Err(e) => {
                err!("{name}{at}: {e}");
                if let Some(hint) = &c.hint {
                    err!("{name}{at}: hint: {hint}");
                }
            }
        }
        for note in &c.notes {
            warn(format!("{name}{at}: warning: {note}"));
        }
    }
    for s in &report.skipped {
        warn(format!("{name}{}: warning: {s}", at(&s.location)));
    }
    if !ratelimit.is_empty() {
        let loaded = service_limits::load(ratelimit)?;
        for w in &loaded.warnings {
            if w.path.is_empty() {
                warn(format!("{}: warning: {}", w.file, w.message));
            } else {
                warn(format!("{}: warning: {}: {}", w.file, w.path, w.message));
            }
        }
        for c in &report.configs {
            if let Ok(config) = &c.result {
                let at = at(&c.location);
                for note in service_limits::check(config, &loaded.config) {
                    warn(format!("{name}{at}: warning: {note}"));
                }
            }
        }
    }
    Ok(if !report.all_valid() {
        ExitCode::from(1)
    } else if strict && warnings > 0 {
        err!("{name}: {warnings} warning(s), and --strict: failed");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn read_stdin(what: &str, limit: Limit) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        err!("reading {what} from standard input; end with Ctrl-D");
    }
    let bytes = read_capped(stdin.lock(), limit, "standard input")?;
    String::from_utf8(bytes).map_err(|_| CliError::input("standard input is not UTF-8 text"))
}

fn mint_token(t: TokenArgs) -> Result<ExitCode, CliError> {
    let alg = t.alg.ok_or_else(|| CliError::input("--alg is required"))?;
    let decode = |b64: &str, from: &str| {
        appguard::token::keys::decode_base64_any(b64).ok_or_else(|| {
            CliError::invalid(format!(
                "the HMAC secret in {from} is not base64 (standard or URL-safe)"
            ))
        })
    };
    let key = match (t.secret_base64, t.secret_file, t.key_pem) {
        (Some(b64), _, _) => SigningMaterial::Secret(decode(&b64, "--secret-base64")?),
        (_, Some(path), _) => {
            // `openssl rand -base64 64` wraps its output at 64 columns.
            let text: String = read_text(&path, Limit::KEY)?
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            SigningMaterial::Secret(decode(&text, &path.display().to_string())?)
        }
        (_, _, Some(path)) => SigningMaterial::PrivatePem(read_text(&path, Limit::KEY)?),
        _ => {
            return Err(CliError::input(
                "one of --secret-base64, --secret-file, --key-pem is required",
            ))
        }
    };
    let mut claims = t
        .claims
        .iter()
        .map(|c| mint::claim_from_arg(c))
        .collect::<Result<Vec<_>, _>>()?;
    let reserved = |claims: &[(String, Value)], name: &str, option: &str| {
        if claims.iter().any(|(n, _)| n == name) {
            return Err(CliError::invalid(format!(
                "claim `{name}` is set by {option}; drop the --claim"
            )));
        }
        Ok(())
    };
    if !t.bind_header.is_empty() {
        reserved(&claims, &t.bind_claim, "--bind-header")?;
        let values: Vec<&str> = t.bind_header.iter().map(String::as_str).collect();
        claims.push((
            t.bind_claim.clone(),
            Value::String(appguard::token::binding_digest(&values)),
        ));
    }
    if let Some(path) = &t.ipk_from {
        reserved(&claims, &t.ipk_claim, "--ipk-from")?;
        let ipk = install_key::read_public(path)?.to_ipk();
        claims.push((t.ipk_claim.clone(), Value::String(ipk)));
    }
    let jwt_id = match (t.jti, t.random_jti) {
        (Some(j), _) => Some(j),
        (None, true) => Some(mint::random_jti()?),
        (None, false) => None,
    };
    if t.lifetime > 300 {
        err!(
            "note: a provider refuses tokens living longer than its max_lifetime_seconds (default 300)"
        );
    }
    let token = mint::mint(&TokenSpec {
        alg,
        key,
        kid: t.kid,
        issuer: t.iss,
        audiences: t.aud,
        subject: t.sub,
        jwt_id,
        claims,
        lifetime_seconds: t.lifetime,
    })?;
    out!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn sign_request(s: SignArgs) -> Result<ExitCode, CliError> {
    // Standard input can be read once: the second reader would get nothing
    // and sign an empty body without a word.
    let headers = s
        .headers
        .iter()
        .map(|h| sign::parse_header(h).map_err(CliError::input))
        .collect::<Result<Vec<_>, _>>()?;
    let stdin = std::path::Path::new("-");
    // Standard input by any name: `-`, `/dev/stdin`, `/dev/fd/0`.
    let reads_stdin = |path: &Path| {
        path == stdin
            || path == Path::new("/dev/stdin")
            || path == Path::new("/dev/fd/0")
            || path == Path::new("/proc/self/fd/0")
    };
    if reads_stdin(&s.install_key) && s.body_file.as_deref().is_some_and(reads_stdin) {
        return Err(CliError::input(
            "--install-key and --body-file both read standard input: give one of them a file",
        ));
    }
    let key = install_key::read_private(&s.install_key)?;
    // A body file curl cannot read again later (standard input by any
    // name, even redirected from a file; a pipe; a process substitution's
    // `/dev/fd/N`; anything under `/dev` or not a regular file) goes
    // inline in the curl line, as `-` does.
    let inline = |path: &Path| {
        reads_stdin(path)
            || path.starts_with("/dev")
            || path.starts_with("/proc")
            || !std::fs::metadata(path).is_ok_and(|m| m.is_file())
    };
    let body = match (&s.body, &s.body_file) {
        (Some(b), _) => Some(b.clone().into_bytes()),
        (None, Some(path)) => {
            let body = read_file(path, Limit::BODY)?;
            if inline(path) {
                sign::inline_body(&body)?;
            }
            Some(body)
        }
        (None, None) => None,
    };
    let mut req = sign::RequestSpec {
        method: s.method,
        url: s.url,
        headers,
        body,
        token_header: s.token_header,
        token: s.token,
    };
    if sign::add_default_content_type(&mut req) {
        err!(
            "note: a body without --header content-type: signing and sending \
             `content-type: {}`",
            sign::DEFAULT_CONTENT_TYPE
        );
    }
    let created = s.created.unwrap_or_else(appguard_cli::now);
    let mut options = SignatureOptions::new(s.label, Vec::new(), created);
    options.expires = s.expires_in.map(|e| created.saturating_add(e));
    options.nonce = s.nonce;
    options.keyid = s.keyid;
    let components = (!s.components.is_empty()).then(|| {
        s.components
            .iter()
            .map(|c| sign::component_name(c))
            .collect::<Vec<_>>()
    });
    let signed = sign::sign(&key, &req, &options, components)?;
    if let Some(warning) = sign::token_warning(&req.token, &s.ipk_claim, &key) {
        err!("warning: {warning}");
    }
    let h = &signed.headers;
    if let Some(d) = &h.content_digest {
        out!("Content-Digest: {d}");
    }
    out!("Signature-Input: {}", h.signature_input);
    out!("Signature: {}", h.signature);
    out!();
    // A body from standard input goes inline: `@-` would make curl read
    // its own standard input.
    let body_file = s
        .body_file
        .as_deref()
        .filter(|p| !inline(p))
        .map(|p| p.to_string_lossy().into_owned());
    out!("{}", sign::curl_line(&req, &signed, body_file.as_deref()));
    Ok(ExitCode::SUCCESS)
}
