//! Request signing: verification of HTTP Message Signatures (RFC 9421) made
//! with the install key an attestation token carries (SPEC §3, "request
//! signing").
//!
//! An Approov-style token may carry the app install's public key (`ipk`).
//! The app signs every request with the private half, covering the method,
//! the target, the token itself and the `Content-Digest` (RFC 9530) of the
//! body, so a token copied out of one request is useless in another.
//!
//! This module is pure like the rest of the core: it takes the message as a
//! [`Message`] value and `now` as a number, never calls the host, and returns
//! a [`VerifiedSignature`] or a [`SigningError`] saying what failed. Every
//! error maps to the reason code `signature_invalid`; the variants exist for
//! logs and tests.
//!
//! Verification order (cheap refusals first, SPEC §3): field sizes are
//! checked before parsing; parsing is bounded in members, components and
//! parameters; the label, parameters, algorithm, timestamps and coverage are
//! checked next; then the signature base is built (from the headers
//! alone), the body is hashed against `Content-Digest` (so that a genuine
//! signature replayed over another body costs no signature verification),
//! and only then is the one signature verified.

mod base;
mod digest;
mod key;
mod sfv;

/// Whether `label` is an RFC 8941 key, as a signature label must be.
pub fn is_sf_key(label: &str) -> bool {
    sfv::is_key(label)
}

/// Whether `name` is a derived component that a request can be covered by
/// without parameters (any case): `@query-param` needs a `name`, `@status`
/// is a response's, so a policy asking for either could never be met.
pub fn is_bare_request_component(name: &str) -> bool {
    [
        "@method",
        "@target-uri",
        "@authority",
        "@scheme",
        "@request-target",
        "@path",
        "@query",
    ]
    .iter()
    .any(|d| d.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests;

pub use base::MAX_BASE_BYTES;
pub use digest::{
    content_digest_value, verify_content_digest, DigestAlgorithm, MAX_CONTENT_DIGEST_BYTES,
};
pub use key::{InstallKey, InstallSigningKey, SignatureAlgorithm, MAX_IPK_CHARS};
pub(crate) use sfv::is_tchar;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sfv::{BareItem, InnerList, Limits, Member};

/// The largest combined `Signature-Input` value read, in bytes. The default
/// coverage serializes to about 200 bytes; the cap leaves room for other
/// parties' signatures on the same request.
pub const MAX_SIGNATURE_INPUT_BYTES: usize = 4096;
/// The largest combined `Signature` value read, in bytes (an ECDSA or Ed25519
/// signature is 88 base64 characters).
pub const MAX_SIGNATURE_BYTES: usize = 4096;
/// At most this many labelled signatures per field (RFC 9421 §4.3 allows
/// several).
pub const MAX_SIGNATURES: usize = 8;
/// At most this many covered components in one signature.
pub const MAX_COVERED_COMPONENTS: usize = 32;
/// At most this many parameters on a signature or on one component.
pub const MAX_PARAMETERS: usize = 8;

/// Caps on parsing `Signature-Input` and `Signature`: members, covered
/// components, parameters. Checked while parsing, after the fields' byte
/// caps, so that a hostile field costs a bounded amount of work.
const SIGNATURE_LIMITS: Limits = Limits {
    max_members: MAX_SIGNATURES,
    max_inner_items: MAX_COVERED_COMPONENTS,
    max_params: MAX_PARAMETERS,
};

/// Why a message signature was not accepted. All of these deny with
/// `signature_invalid`; the variant is for logs and tests, and never carries
/// request data beyond operator-configured names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningError {
    /// The message has no `Signature-Input` or no `Signature` field.
    Missing,
    /// The fields carry no signature under the configured label, or the label
    /// is in one field but not the other (RFC 9421 §4).
    LabelNotFound,
    /// A field is larger than its cap; refused before parsing.
    HeaderTooLarge {
        /// The field name.
        field: &'static str,
    },
    /// A field is not the structured field RFC 9421 §4 / RFC 9530 §2 define,
    /// a signature parameter has the wrong type, or a cap on members,
    /// components or parameters was passed.
    Malformed {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The signature has no `created` parameter and the policy requires one.
    MissingCreated,
    /// `created` is later than now plus the clock skew.
    CreatedInFuture,
    /// `created` is older than `max_age_seconds` plus the clock skew.
    Stale,
    /// `expires` is in the past (beyond the clock skew).
    Expired,
    /// The `alg` parameter names an algorithm other than the key's (RFC 9421
    /// §3.2 step 6.4).
    AlgorithmMismatch,
    /// The signature does not cover a component the policy requires.
    UnderCovered {
        /// The first required component found missing, e.g. `content-digest`.
        missing: String,
    },
    /// A component identifier is listed twice (RFC 9421 §2.5 step 2.0).
    DuplicateComponent,
    /// A derived component or component parameter that is unknown, not
    /// supported here (`sf`, `req`, `tr`, `@request-response`) or not
    /// applicable to this message (`@status` on a request).
    UnsupportedComponent,
    /// A covered field, query parameter or dictionary member is absent, or a
    /// derived component has no value (e.g. no authority).
    ComponentMissing,
    /// A component value cannot go into a base: a newline, non-ASCII, or a
    /// query parameter that occurs twice (RFC 9421 §2.2.8).
    InvalidComponentValue,
    /// The signature base would exceed [`MAX_BASE_BYTES`].
    BaseTooLarge,
    /// The signature does not verify with the install key (or is not 64
    /// bytes, or `r`/`s` are out of range).
    BadSignature,
    /// A covered `Content-Digest` does not match the body (RFC 9530 §2).
    DigestMismatch,
    /// A covered `Content-Digest` has no `sha-256` or `sha-512` member.
    DigestUnsupported,
    /// `Content-Digest` must be checked but the body was not buffered although
    /// the request declares one (`content-length` > 0 or
    /// `transfer-encoding`).
    BodyUnavailable,
    /// The `ipk` claim or a private key is not a well-formed key.
    InvalidKey,
    /// The key is well-formed but neither P-256 nor Ed25519.
    UnsupportedKey,
    /// [`sign_request`] was given unusable options (the field says which).
    InvalidInput(&'static str),
}

impl std::fmt::Display for SigningError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningError::Missing => f.write_str("no Signature-Input or Signature field"),
            SigningError::LabelNotFound => f.write_str("no signature with the configured label"),
            SigningError::HeaderTooLarge { field } => write!(f, "{field} field too large"),
            SigningError::Malformed { field, reason } => write!(f, "malformed {field}: {reason}"),
            SigningError::MissingCreated => f.write_str("signature has no created parameter"),
            SigningError::CreatedInFuture => f.write_str("signature created in the future"),
            SigningError::Stale => f.write_str("signature too old"),
            SigningError::Expired => f.write_str("signature expired"),
            SigningError::AlgorithmMismatch => f.write_str("alg does not match the install key"),
            SigningError::UnderCovered { missing } => {
                write!(f, "signature does not cover {missing}")
            }
            SigningError::DuplicateComponent => f.write_str("component covered twice"),
            SigningError::UnsupportedComponent => f.write_str("unsupported covered component"),
            SigningError::ComponentMissing => f.write_str("covered component absent from message"),
            SigningError::InvalidComponentValue => f.write_str("invalid covered component value"),
            SigningError::BaseTooLarge => f.write_str("signature base too large"),
            SigningError::BadSignature => f.write_str("signature does not verify"),
            SigningError::DigestMismatch => f.write_str("content-digest does not match the body"),
            SigningError::DigestUnsupported => {
                f.write_str("content-digest has no sha-256 or sha-512")
            }
            SigningError::BodyUnavailable => f.write_str("body needed for content-digest"),
            SigningError::InvalidKey => f.write_str("invalid install key"),
            SigningError::UnsupportedKey => f.write_str("unsupported install key type"),
            SigningError::InvalidInput(what) => write!(f, "invalid signing input: {what}"),
        }
    }
}

impl std::error::Error for SigningError {}

/// One HTTP message as the verifier sees it: enough to derive every component
/// RFC 9421 §2 defines. Independent of [`crate::request::Request`] so the
/// integrator maps onto it (`:method`, `:scheme`, `:authority`, `:path`
/// split at `?`).
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The method, case as sent (`@method`, RFC 9421 §2.2.1). Empty for a
    /// response.
    pub method: &'a str,
    /// The scheme of the target URI, e.g. `https` (`@scheme`, §2.2.4).
    pub scheme: &'a str,
    /// The authority, `host[:port]` (`@authority`, §2.2.3), as in
    /// `:authority` or `Host`.
    pub authority: &'a str,
    /// The path without the query, percent-encoding untouched (`@path`,
    /// §2.2.6).
    pub path: &'a str,
    /// The query after `?` (without the `?`), or `None` when the target has
    /// no `?` (`@query`, §2.2.7).
    pub query: Option<&'a str>,
    /// The header fields in message order, names in lower case as Envoy
    /// gives them. Pseudo-headers may be present; they are never read as
    /// fields (a component name cannot start with `:`).
    pub headers: Fields<'a>,
    /// The body, when buffered. `None` means no body was buffered; see
    /// [`SigningError::BodyUnavailable`].
    pub body: Option<&'a [u8]>,
    /// The status code of a response (`@status`, §2.2.9); `None` for a
    /// request.
    pub status: Option<u16>,
}

/// A message's header fields in order: the filter's decoded header map, or
/// a list of owned pairs (the CLI, tests). Either way they are read as
/// `(name, value)` pairs without copying.
#[derive(Clone, Copy, Debug)]
pub enum Fields<'a> {
    /// The request's headers as the filter read them from Envoy.
    Map(&'a crate::headers::Headers),
    /// Owned `(name, value)` pairs.
    Pairs(&'a [(String, String)]),
}

impl<'a> Fields<'a> {
    /// The fields in order, as `(name, value)`.
    pub fn iter(self) -> impl Iterator<Item = (&'a str, &'a str)> + Clone {
        let (map, pairs) = match self {
            Fields::Map(h) => (Some(h), None),
            Fields::Pairs(p) => (None, Some(p)),
        };
        map.into_iter().flat_map(|h| h.iter()).chain(
            pairs
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }
}

impl<'a> From<&'a crate::headers::Headers> for Fields<'a> {
    fn from(h: &'a crate::headers::Headers) -> Self {
        Fields::Map(h)
    }
}

impl<'a> From<&'a [(String, String)]> for Fields<'a> {
    fn from(p: &'a [(String, String)]) -> Self {
        Fields::Pairs(p)
    }
}

impl<'a> From<&'a Vec<(String, String)>> for Fields<'a> {
    fn from(p: &'a Vec<(String, String)>) -> Self {
        Fields::Pairs(p)
    }
}

impl<'a> Message<'a> {
    /// A request.
    pub fn request(
        method: &'a str,
        scheme: &'a str,
        authority: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: impl Into<Fields<'a>>,
        body: Option<&'a [u8]>,
    ) -> Self {
        Message {
            method,
            scheme,
            authority,
            path,
            query,
            headers: headers.into(),
            body,
            status: None,
        }
    }

    /// A response (for `@status`; appguard verifies requests, responses are
    /// here for the RFC's own test vectors and completeness).
    pub fn response(status: u16, headers: impl Into<Fields<'a>>, body: Option<&'a [u8]>) -> Self {
        Message {
            method: "",
            scheme: "",
            authority: "",
            path: "",
            query: None,
            headers: headers.into(),
            body,
            status: Some(status),
        }
    }

    /// Whether the message has content: a non-empty buffered body, or a
    /// declared one (`content-length` other than 0, or `transfer-encoding`).
    pub fn has_body(&self) -> bool {
        self.body.is_some_and(|b| !b.is_empty()) || self.declares_body()
    }

    /// Whether the headers announce a body (`content-length` other than 0, or
    /// any `transfer-encoding`), buffered or not: a covered `content-digest`
    /// is then never checked against an empty body in its place.
    fn declares_body(&self) -> bool {
        self.headers.iter().any(|(name, value)| {
            (name.eq_ignore_ascii_case("content-length") && value.trim() != "0")
                || name.eq_ignore_ascii_case("transfer-encoding")
        })
    }
}

/// What an operator configures per token provider (`message_signing`): which
/// signature to read and what it must prove. Plain values; the configuration
/// layer fills them with serde.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningPolicy {
    /// The label of the signature to verify in `Signature-Input` /
    /// `Signature` (RFC 9421 §4). Default `install`. Other labelled
    /// signatures on the message are ignored.
    pub label: String,
    /// Components that must always be covered, as bare component names
    /// (no parameters). Default `["@method"]`.
    pub required_components: Vec<String>,
    /// The signature must cover the target: `@target-uri`, or `@path` and
    /// `@authority` together. Default true.
    pub require_target: bool,
    /// When the `@path` + `@authority` alternative is used and the request
    /// has a non-empty query, `@query` must be covered too, so the query
    /// cannot be changed under a valid signature (`@target-uri` includes
    /// it). Default true.
    pub require_query: bool,
    /// The token header (name passed to [`verify`]) must be covered, binding
    /// the signature to this token. Default true.
    pub require_token: bool,
    /// When the request has content, `content-digest` must be covered (and
    /// is then checked against the body, RFC 9530). Default true.
    pub require_content_digest: bool,
    /// The signature must carry `created` (RFC 9421 §2.3; the RFC only
    /// recommends it, but without it there is no freshness). Default true.
    pub require_created: bool,
    /// The oldest `created` accepted, in seconds before now (RFC 9421 §3.2.1,
    /// "maximum signature age"). Default 300, the default token lifetime: a
    /// signature cannot usefully outlive its token.
    pub max_age_seconds: u64,
    /// Tolerance for the signer's clock on `created` (future) and `expires`
    /// (past), and added to `max_age_seconds`. Default 30: `created` comes
    /// from the device clock, not from a token server, so it drifts more
    /// than token timestamps do.
    pub clock_skew_seconds: u64,
}

impl SigningPolicy {
    /// The default label.
    pub const DEFAULT_LABEL: &'static str = "install";
    /// The default `max_age_seconds`.
    pub const DEFAULT_MAX_AGE_SECONDS: u64 = 300;
    /// The default `clock_skew_seconds`.
    pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 30;

    /// A policy with the given label and time limits and the default coverage:
    /// `@method`, the target (`@target-uri`, or `@path` + `@authority` \[+
    /// `@query`\]), the token header, `content-digest` when there is a body,
    /// and `created` required.
    pub fn new(label: impl Into<String>, max_age_seconds: u64, clock_skew_seconds: u64) -> Self {
        SigningPolicy {
            label: label.into(),
            required_components: vec!["@method".to_owned()],
            require_target: true,
            require_query: true,
            require_token: true,
            require_content_digest: true,
            require_created: true,
            max_age_seconds,
            clock_skew_seconds,
        }
    }
}

impl Default for SigningPolicy {
    fn default() -> Self {
        SigningPolicy::new(
            Self::DEFAULT_LABEL,
            Self::DEFAULT_MAX_AGE_SECONDS,
            Self::DEFAULT_CLOCK_SKEW_SECONDS,
        )
    }
}

/// A signature that verified, with what it said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// Its label.
    pub label: String,
    /// The algorithm, fixed by the key.
    pub algorithm: SignatureAlgorithm,
    /// `created`, seconds since the epoch.
    pub created: Option<u64>,
    /// `expires`, seconds since the epoch.
    pub expires: Option<u64>,
    /// `keyid`, informative only: the key came from the token.
    pub keyid: Option<String>,
    /// `nonce`, for a replay cache if the integrator keeps one (key it on
    /// this, never on the signature bytes: ECDSA signatures are malleable).
    pub nonce: Option<String>,
    /// `tag`.
    pub tag: Option<String>,
    /// The covered component identifiers, serialized (e.g. `"@method"`,
    /// `"@query-param";name="id"`).
    pub covered: Vec<String>,
    /// The `Content-Digest` algorithm checked against the body, when the
    /// signature covers `content-digest`.
    pub content_digest: Option<DigestAlgorithm>,
    /// SHA-256 of the signature base: what identifies the signed request
    /// (its covered components and parameters) for a replay check, rather
    /// than the signature bytes, which ECDSA lets anyone vary.
    pub base_digest: [u8; 32],
}

/// Signature parameters (RFC 9421 §2.3) read from the Signature-Input member.
#[derive(Default)]
struct SignatureParams {
    /// `created`, seconds since the epoch: judged against `max_age_seconds` and
    /// the skew, so that a captured request cannot be replayed for ever.
    created: Option<u64>,
    /// `expires`: the signer's own limit, past which (plus skew) it is refused.
    expires: Option<u64>,
    /// `alg`, when stated: it must name the install key's algorithm, which the
    /// key fixes whatever the signer says (RFC 9421 §3.2).
    alg: Option<String>,
    /// `keyid`: not checked (the token's install key is the key); reported.
    keyid: Option<String>,
    /// `nonce`: not checked here; reported in [`VerifiedSignature`].
    nonce: Option<String>,
    /// `tag`: not checked here; reported in [`VerifiedSignature`].
    tag: Option<String>,
}

impl SignatureParams {
    /// The parameters of the signature's Inner List. A known parameter of the
    /// wrong type (a string `created`, a negative time) is refused, not
    /// skipped: skipping it would skip its check. Unknown ones are signed, as
    /// part of `@signature-params`, and ignored.
    fn read(list: &InnerList) -> Result<Self, SigningError> {
        const WRONG_TYPE: SigningError = SigningError::Malformed {
            field: "signature-input",
            reason: "signature parameter has the wrong type",
        };
        let mut p = SignatureParams::default();
        for (key, value) in &list.params {
            match (key.as_str(), value) {
                ("created", BareItem::Integer(t)) => {
                    p.created = Some(u64::try_from(*t).map_err(|_| WRONG_TYPE)?)
                }
                ("expires", BareItem::Integer(t)) => {
                    p.expires = Some(u64::try_from(*t).map_err(|_| WRONG_TYPE)?)
                }
                ("alg", BareItem::String(s)) => p.alg = Some(s.clone()),
                ("keyid", BareItem::String(s)) => p.keyid = Some(s.clone()),
                ("nonce", BareItem::String(s)) => p.nonce = Some(s.clone()),
                ("tag", BareItem::String(s)) => p.tag = Some(s.clone()),
                ("created" | "expires" | "alg" | "keyid" | "nonce" | "tag", _) => {
                    return Err(WRONG_TYPE)
                }
                // Parameters registered later or private ones: they are part
                // of `@signature-params`, hence signed, and carry no meaning
                // here.
                _ => {}
            }
        }
        Ok(p)
    }
}

/// Verifies the message's signature under `policy.label` with the install
/// key from the token (RFC 9421 §3.2 and the application requirements of
/// §3.2.1 that `policy` sets).
///
/// `token_header` is the (case-insensitive) name of the header that carried
/// the attestation token, e.g. `approov-token`; with `policy.require_token`
/// it must be covered. `now` is seconds since the Unix epoch.
pub fn verify(
    policy: &SigningPolicy,
    message: &Message<'_>,
    key: &InstallKey,
    token_header: &str,
    now: u64,
) -> Result<VerifiedSignature, SigningError> {
    // 1. Sizes, then bounded parsing (§3.2 steps 1–3).
    let inputs = combined_field(message, "signature-input", MAX_SIGNATURE_INPUT_BYTES)?;
    let signatures = combined_field(message, "signature", MAX_SIGNATURE_BYTES)?;
    let (Some(inputs), Some(signatures)) = (inputs, signatures) else {
        return Err(SigningError::Missing);
    };
    let inputs = parse_signature_field(&inputs, "signature-input")?;
    let signatures = parse_signature_field(&signatures, "signature")?;
    let input = member(&inputs, &policy.label)?;
    let signature = member(&signatures, &policy.label)?;
    let Member::InnerList(covered) = input else {
        return Err(SigningError::Malformed {
            field: "signature-input",
            reason: "member is not an inner list",
        });
    };
    let signature_bytes = match signature {
        Member::Item(item) => match &item.bare {
            BareItem::ByteSeq(bytes) => bytes.as_slice(),
            _ => return Err(malformed_signature()),
        },
        Member::InnerList(_) => return Err(malformed_signature()),
    };

    // 2. Parameters, algorithm, time (§3.2 steps 4–6).
    let params = SignatureParams::read(covered)?;
    if let Some(alg) = &params.alg {
        if alg != key.algorithm().name() {
            return Err(SigningError::AlgorithmMismatch);
        }
    }
    check_times(policy, &params, now)?;

    // 3. Coverage, on the parsed identifiers only.
    let names = covered
        .items
        .iter()
        .map(base::component_name)
        .collect::<Result<Vec<_>, _>>()?;
    check_coverage(policy, message, covered, token_header)?;

    // 4. The signature base (§3.2 step 7), from the headers alone: a
    // component that cannot go into it is refused before the body is
    // hashed, as those refusals are not charged to the client's failure
    // budget (a correct digest beside a covered header that is not sent
    // would otherwise buy a hash of a whole body per request).
    let base = base::signature_base(message, covered)?;

    // 5. The body, when its digest is covered (RFC 9530 §6.3), before the
    // signature: a hash of a body the client sent, where a genuine
    // signature replayed over another body would otherwise buy a P-256
    // verification per request that no failure budget counts (it fails
    // after the signature verified).
    let content_digest = if names.contains(&"content-digest") {
        Some(check_content_digest(message)?)
    } else {
        None
    };

    // 6. The one signature operation (§3.2 steps 8–9): nothing fails after
    // it but the signature itself, which the caller charges.
    key.verify(base.as_bytes(), signature_bytes)?;

    Ok(VerifiedSignature {
        label: policy.label.clone(),
        algorithm: key.algorithm(),
        created: params.created,
        expires: params.expires,
        keyid: params.keyid,
        nonce: params.nonce,
        tag: params.tag,
        covered: covered
            .items
            .iter()
            .map(|item| {
                let mut s = String::new();
                sfv::write_item(&mut s, item);
                s
            })
            .collect(),
        content_digest,
        base_digest: {
            use sha2::Digest as _;
            sha2::Sha256::digest(base.as_bytes()).into()
        },
    })
}

/// The SHA-256 of the signature base [`verify`] would check for the
/// signature labelled `policy.label`, when the fields parse and the base
/// can be built (`None` otherwise): what [`VerifiedSignature::base_digest`]
/// holds once that signature verifies. For a table of accepted signed
/// requests to be looked up before the verification (a copy of an
/// accepted request then costs a hash, not a signature operation).
pub fn base_digest_of(policy: &SigningPolicy, message: &Message<'_>) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    let inputs = combined_field(message, "signature-input", MAX_SIGNATURE_INPUT_BYTES).ok()??;
    let inputs = parse_signature_field(&inputs, "signature-input").ok()?;
    let Member::InnerList(covered) = member(&inputs, &policy.label).ok()? else {
        return None;
    };
    let base = base::signature_base(message, covered).ok()?;
    Some(sha2::Sha256::digest(base.as_bytes()).into())
}

/// Verifies raw signature bytes over a signature base already built
/// (RFC 9421 §3.3, `HTTP_VERIFY`), with the algorithm the key fixes.
pub fn verify_base(key: &InstallKey, base: &[u8], signature: &[u8]) -> Result<(), SigningError> {
    key.verify(base, signature)
}

/// Every instance of a field, trimmed and joined with `", "` (RFC 9110 §5.3),
/// refused as soon as the result would pass `cap`.
fn combined_field(
    message: &Message<'_>,
    field: &'static str,
    cap: usize,
) -> Result<Option<String>, SigningError> {
    let values = message
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(field))
        .map(|(_, value)| value);
    joined_lines(values, cap).ok_or(SigningError::HeaderTooLarge { field })
}

/// `values` trimmed of SP and HTAB and joined with `", "`, as
/// [`combined_field`] reads a field: `None` as soon as the result would
/// pass `cap`, `Some(None)` when it is empty.
fn joined_lines<'a>(values: impl Iterator<Item = &'a str>, cap: usize) -> Option<Option<String>> {
    let mut combined: Option<String> = None;
    for value in values {
        let value = value.trim_matches([' ', '\t']);
        let out = combined.get_or_insert_with(String::new);
        let separator = if out.is_empty() { 0 } else { 2 };
        if out.len() + separator + value.len() > cap {
            return None;
        }
        if separator > 0 {
            out.push_str(", ");
        }
        out.push_str(value);
    }
    Some(combined.filter(|c| !c.is_empty()))
}

/// One of the two signature fields as an RFC 8941 Dictionary, within
/// [`SIGNATURE_LIMITS`]; an error names `field`. Duplicate labels are
/// refused (see [`sfv`]), so no second member can be smuggled in.
fn parse_signature_field(
    value: &str,
    field: &'static str,
) -> Result<sfv::Dictionary, SigningError> {
    sfv::parse_dictionary(value, &SIGNATURE_LIMITS)
        .map_err(|e| SigningError::Malformed { field, reason: e.0 })
}

/// The HTTP fields (not derived components) that a request's
/// `Signature-Input` value says its signatures cover, under any label: a
/// copy of one sent as a trailer would stand beside the signed value, so
/// the filter removes such trailers. Empty when the value does not parse
/// (the request's signature check refuses it).
pub fn covered_fields(signature_input: &str) -> Vec<String> {
    let Ok(dict) = parse_signature_field(signature_input, "signature-input") else {
        return Vec::new();
    };
    dict.iter()
        .filter_map(|(_, m)| match m {
            Member::InnerList(l) => Some(l),
            Member::Item(_) => None,
        })
        .flat_map(|l| l.items.iter())
        .filter_map(|i| base::component_name(i).ok())
        .filter(|n| !n.starts_with('@'))
        .map(str::to_owned)
        .collect()
}

/// [`covered_fields`] of a request's `Signature-Input` lines as [`verify`]
/// reads them (as `combined_field` does: each trimmed of SP and HTAB, joined
/// with `", "`), and of each line alone: a superset of the fields any
/// signature the verifier accepts covers. Parsing only the lines as they
/// came would miss a line that starts with a tab (HTTP/2 passes one): the
/// verifier trims it, and a resent request may add it, since it is nowhere
/// in the signature base.
pub fn covered_fields_of_lines<'a>(lines: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
    let joined = joined_lines(lines.clone(), MAX_SIGNATURE_INPUT_BYTES).flatten();
    let mut fields = joined.as_deref().map(covered_fields).unwrap_or_default();
    for line in lines {
        for field in covered_fields(line.trim_matches([' ', '\t'])) {
            if !fields.contains(&field) {
                fields.push(field);
            }
        }
    }
    fields
}

/// The member under the configured `label`; `LabelNotFound` when either
/// field lacks it (RFC 9421 §4). Keys are unique, so the first is the one.
fn member<'d>(dict: &'d sfv::Dictionary, label: &str) -> Result<&'d Member, SigningError> {
    dict.iter()
        .find(|(k, _)| k == label)
        .map(|(_, m)| m)
        .ok_or(SigningError::LabelNotFound)
}

/// The error for a `Signature` member that is not a Byte Sequence
/// (RFC 9421 §4.2).
fn malformed_signature() -> SigningError {
    SigningError::Malformed {
        field: "signature",
        reason: "member is not a byte sequence",
    }
}

/// The freshness checks of RFC 9421 §3.2.1, with the policy's skew both
/// ways: `created` not in the future nor older than `max_age_seconds`
/// (required with `require_created`), `expires` not passed and not before
/// `created`.
fn check_times(
    policy: &SigningPolicy,
    params: &SignatureParams,
    now: u64,
) -> Result<(), SigningError> {
    let skew = policy.clock_skew_seconds;
    match params.created {
        Some(created) => {
            if created > now.saturating_add(skew) {
                return Err(SigningError::CreatedInFuture);
            }
            let oldest = now.saturating_sub(policy.max_age_seconds.saturating_add(skew));
            if created < oldest {
                return Err(SigningError::Stale);
            }
        }
        None if policy.require_created => return Err(SigningError::MissingCreated),
        None => {}
    }
    if let Some(expires) = params.expires {
        if params.created.is_some_and(|created| expires < created) {
            return Err(SigningError::Malformed {
                field: "signature-input",
                reason: "expires before created",
            });
        }
        if expires.saturating_add(skew) < now {
            return Err(SigningError::Expired);
        }
    }
    Ok(())
}

/// The policy's coverage rules. Only bare identifiers (no parameters) count:
/// `"content-digest";bs` covers the field, but in a form this check does not
/// reason about.
fn check_coverage(
    policy: &SigningPolicy,
    message: &Message<'_>,
    covered: &InnerList,
    token_header: &str,
) -> Result<(), SigningError> {
    let covers = |name: &str| {
        covered
            .items
            .iter()
            .any(|item| item.params.is_empty() && item.bare.as_str() == Some(name))
    };
    let under = |missing: &str| {
        Err(SigningError::UnderCovered {
            missing: missing.to_owned(),
        })
    };
    for required in &policy.required_components {
        if required.starts_with('@') {
            if !covers(required) {
                return under(required);
            }
            continue;
        }
        // A header field is required where the request has it, under each
        // name an upstream reads as it (`content_type` is `Content-Type` to
        // PHP): a signature cannot cover an absent field (RFC 9421 §2.5),
        // and a request without it has nothing there to change. One added
        // to a signed request, or sent beside the signed one under another
        // spelling, is then required, and not covered.
        for (name, _) in message.headers.iter() {
            if crate::request::same_header_name(name.as_bytes(), required.as_bytes())
                && !covers(name)
            {
                return under(name);
            }
        }
    }
    // A covered header sent again under another spelling an upstream reads
    // as the same field (`content_type` beside a covered `content-type`,
    // which PHP and Symfony read as `Content-Type`): the copy is not
    // covered, and may be the one the upstream reads. It must be covered
    // too, as the required components' other spellings are.
    for item in &covered.items {
        let Some(signed) = item.bare.as_str().filter(|n| !n.starts_with('@')) else {
            continue;
        };
        for (name, _) in message.headers.iter() {
            if !name.eq_ignore_ascii_case(signed)
                && crate::request::same_header_name(name.as_bytes(), signed.as_bytes())
                && !covers(name)
            {
                return under(name);
            }
        }
    }
    if policy.require_target && !covers("@target-uri") {
        if !(covers("@path") && covers("@authority")) {
            return under("@target-uri");
        }
        if policy.require_query && message.query.is_some_and(|q| !q.is_empty()) && !covers("@query")
        {
            return under("@query");
        }
    }
    if policy.require_token {
        let token = token_header.to_ascii_lowercase();
        if token.is_empty() {
            return Err(SigningError::InvalidInput("token_header"));
        }
        if !covers(&token) {
            return under(&token);
        }
    }
    if policy.require_content_digest && message.has_body() && !covers("content-digest") {
        return under("content-digest");
    }
    // A method or target override that an upstream may honour changes what
    // a request does as much as `@method` or `@path`: one that is sent must
    // be covered too, or a signed POST could be replayed as a DELETE, or a
    // signed `GET /v1/profile` run as `/v1/delete-account`, with the header
    // added (the route match refuses only overrides that take another
    // route). So must a forwarded host naming another host than
    // `@authority`. A target override or forwarded host naming the
    // request's own target or host, as a front end sets them, changes
    // nothing.
    if message.status.is_none() {
        for (name, value) in message.headers.iter() {
            if crate::policy::is_redirecting_header(
                message.authority,
                (message.path, message.query),
                name,
                value,
            ) {
                let name = name.to_ascii_lowercase();
                if !covers(&name) {
                    return under(&name);
                }
            }
        }
    }
    Ok(())
}

/// `Content-Digest` against the body (RFC 9530), before the signature: a
/// genuine signature replayed over another body then fails at a hash, not
/// after a P-256 verification. A body declared but not buffered cannot be
/// checked, and is refused.
fn check_content_digest(message: &Message<'_>) -> Result<DigestAlgorithm, SigningError> {
    let body = match message.body {
        Some(body) => body,
        None if message.declares_body() => return Err(SigningError::BodyUnavailable),
        None => &[],
    };
    let value = combined_field(message, "content-digest", MAX_CONTENT_DIGEST_BYTES)?
        .ok_or(SigningError::ComponentMissing)?;
    verify_content_digest(&value, body)
}

/// What [`sign_request`] puts in the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureOptions {
    /// The label (an RFC 8941 key, e.g. `install`).
    pub label: String,
    /// Covered component names, in order (e.g. from
    /// [`default_covered_components`]), each optionally followed by its
    /// parameters as RFC 9421 writes them (`@query-param;name="id"`,
    /// `example-dict;key="a"`). When `content-digest` is among them, the
    /// digest of the body is computed and returned.
    pub components: Vec<String>,
    /// `created`, seconds since the epoch.
    pub created: u64,
    /// `expires`, when wanted.
    pub expires: Option<u64>,
    /// `keyid`, when wanted.
    pub keyid: Option<String>,
    /// `nonce`, when wanted.
    pub nonce: Option<String>,
    /// `tag`, when wanted.
    pub tag: Option<String>,
    /// Whether to state `alg` (RFC 9421 §2.3); appguard does not need it, the
    /// key fixes the algorithm.
    pub include_alg: bool,
    /// The digest algorithm for `Content-Digest`.
    pub digest: DigestAlgorithm,
}

impl SignatureOptions {
    /// Options with a label, components and `created`; no other parameters,
    /// `sha-256` for the digest.
    pub fn new(label: impl Into<String>, components: Vec<String>, created: u64) -> Self {
        SignatureOptions {
            label: label.into(),
            components,
            created,
            expires: None,
            keyid: None,
            nonce: None,
            tag: None,
            include_alg: false,
            digest: DigestAlgorithm::Sha256,
        }
    }
}

/// The header values [`sign_request`] produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// The `Signature-Input` value, `label=(...);created=...`.
    pub signature_input: String,
    /// The `Signature` value, `label=:base64:`.
    pub signature: String,
    /// The `Content-Digest` value to send, when `content-digest` is covered
    /// (it replaces any `content-digest` in the message).
    pub content_digest: Option<String>,
}

/// The components the default [`SigningPolicy`] asks for, in signing order:
/// `@method`, `@authority`, `@path`, `@query` (when the request has a
/// query), the token header, `content-digest` and `content-type` (when it
/// has a body), and any method or target override it carries, or
/// forwarded host other than its authority (which must be covered; see
/// [`crate::policy::is_redirecting_header`]).
/// `@path` + `@authority` rather than `@target-uri`: the scheme Envoy sees
/// differs from the client's when TLS ends in front of Envoy.
pub fn default_covered_components(message: &Message<'_>, token_header: &str) -> Vec<String> {
    let mut components = vec![
        "@method".to_owned(),
        "@authority".to_owned(),
        "@path".to_owned(),
    ];
    if message.query.is_some_and(|q| !q.is_empty()) {
        components.push("@query".to_owned());
    }
    if !token_header.is_empty() {
        components.push(token_header.to_ascii_lowercase());
    }
    if message.has_body() {
        components.push("content-digest".to_owned());
    }
    // So that an upstream that accepts more than one media type cannot be
    // handed the signed bytes as another one.
    if message.has_body()
        && message
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        components.push("content-type".to_owned());
    }
    // An override that is sent must be covered (see `check_coverage`).
    for (name, value) in message.headers.iter() {
        let name = name.to_ascii_lowercase();
        if crate::policy::is_redirecting_header(
            message.authority,
            (message.path, message.query),
            &name,
            value,
        ) && !components.contains(&name)
        {
            components.push(name);
        }
    }
    // So is another spelling of a covered header that is sent
    // (`content_type` beside `content-type`, see `check_coverage`).
    let covered_headers: Vec<String> = components
        .iter()
        .filter(|c| !c.starts_with('@'))
        .cloned()
        .collect();
    for (name, _) in message.headers.iter() {
        let name = name.to_ascii_lowercase();
        if !components.contains(&name)
            && covered_headers
                .iter()
                .any(|c| crate::request::same_header_name(name.as_bytes(), c.as_bytes()))
        {
            components.push(name);
        }
    }
    components
}

/// `t` as an RFC 8941 Integer, which has at most 15 digits (§3.3.1): a
/// larger `created` or `expires` would make a `Signature-Input` that
/// [`verify`] (any RFC 8941 parser) refuses.
fn sf_integer(t: u64) -> Option<i64> {
    const MAX_SF_INTEGER: u64 = 999_999_999_999_999;
    if t > MAX_SF_INTEGER {
        return None;
    }
    i64::try_from(t).ok()
}

/// Signs a request with an install key (RFC 9421 §3.1): for the operator
/// CLI's `mint` and for tests. Returns the `Signature-Input`, `Signature` and
/// (when `content-digest` is covered) `Content-Digest` values; the base is
/// built with that `Content-Digest` in place of any the message had.
pub fn sign_request(
    key: &InstallSigningKey,
    message: &Message<'_>,
    options: &SignatureOptions,
) -> Result<SignatureHeaders, SigningError> {
    if !sfv::is_key(&options.label) {
        return Err(SigningError::InvalidInput("label"));
    }
    let mut params: sfv::Parameters = vec![(
        "created".to_owned(),
        BareItem::Integer(
            sf_integer(options.created).ok_or(SigningError::InvalidInput("created"))?,
        ),
    )];
    if let Some(expires) = options.expires {
        let expires = sf_integer(expires).ok_or(SigningError::InvalidInput("expires"))?;
        params.push(("expires".to_owned(), BareItem::Integer(expires)));
    }
    for (name, value) in [
        ("keyid", &options.keyid),
        ("nonce", &options.nonce),
        ("tag", &options.tag),
    ] {
        if let Some(value) = value {
            if !value.bytes().all(|c| (0x20..=0x7e).contains(&c)) {
                return Err(SigningError::InvalidInput(name));
            }
            params.push((name.to_owned(), BareItem::String(value.clone())));
        }
    }
    if options.include_alg {
        params.push((
            "alg".to_owned(),
            BareItem::String(key.algorithm().name().to_owned()),
        ));
    }
    let names: Vec<&str> = options.components.iter().map(String::as_str).collect();
    let covered = base::covered_list_of(&names, params)?;

    let content_digest = names
        .contains(&"content-digest")
        .then(|| content_digest_value(options.digest, message.body.unwrap_or_default()));
    let headers: crate::headers::Headers;
    let mut signed = *message;
    if let Some(digest) = &content_digest {
        headers = message
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("content-digest"))
            .chain(std::iter::once(("content-digest", digest.as_str())))
            .collect();
        signed.headers = Fields::Map(&headers);
    }
    let base = base::signature_base(&signed, &covered)?;
    let signature = key.sign(base.as_bytes())?;

    let mut signature_input = format!("{}=", options.label);
    sfv::write_inner_list(&mut signature_input, &covered);
    Ok(SignatureHeaders {
        signature_input,
        signature: format!("{}=:{}:", options.label, STANDARD.encode(signature)),
        content_digest,
    })
}
