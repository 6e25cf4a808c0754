//! What the core decides about a request, as plain values the adapter carries out.

/// Why a request was refused. The string form ([`Reason::code`]) is the stable
/// reason code of SPEC §4: it is the `error` of the JSON body, the value of
/// `x-appguard-reason`, a metric label and a log field, so it never changes
/// once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// No token was found where the route's providers look for one.
    TokenMissing,
    /// The token is not a well-formed compact JWS (structure, base64url,
    /// JSON header and claims, `alg` and `typ` values), or is too large. A
    /// `kid` or algorithm the provider has no key for is `TokenSignature`.
    TokenMalformed,
    /// The signature does not verify with the provider's key.
    TokenSignature,
    /// `exp` has passed (beyond the clock skew).
    TokenExpired,
    /// `nbf` or `iat` lies in the future (beyond the clock skew).
    TokenNotYetValid,
    /// The token lives longer than `max_lifetime_seconds`.
    TokenLifetime,
    /// Issuer, audience or a required claim does not match.
    TokenClaims,
    /// The token-binding claim does not match the bound request headers.
    TokenBinding,
    /// The token's `jti` was already used.
    TokenReplayed,
    /// The HTTP Message Signature (RFC 9421) is missing, stale or wrong.
    SignatureInvalid,
    /// The matched route (or `default_action`) denies the request.
    RouteDenied,
    /// The client IP is outside the allow list or inside the deny list.
    IpDenied,
    /// The client's country is outside the allow list or inside the deny list.
    CountryDenied,
    /// The route needs an API key and none was sent.
    ApiKeyMissing,
    /// The API key is not configured, or is disabled.
    ApiKeyInvalid,
    /// The API key is valid but restricted away from this app, IP or route.
    ApiKeyRestricted,
    /// The request's platform is not allowed on the route or by the provider.
    PlatformDenied,
    /// The app named by the token or headers is not registered in `apps`.
    AppUnknown,
    /// The token, the API key and the platform headers name different apps.
    AppMismatch,
    /// A web request's `Origin`/`Referer` matches no allowed origin pattern.
    OriginDenied,
    /// The phone number in the body starts with a denied prefix.
    PhoneDenied,
    /// The body could not be read as the route expects (JSON, field, phone).
    BodyInvalid,
    /// The body is larger than `max_body_bytes`.
    BodyTooLarge,
    /// A rate limit is exceeded.
    RateLimited,
    /// The shared rate-limit service did not answer in time (`failure_mode: deny`).
    RatelimitUnavailable,
    /// No keys of a remote JWKS are available (`failure_mode: deny`).
    JwksUnavailable,
}

impl Reason {
    /// Every reason, in declaration order: used to define metrics up front.
    pub const ALL: [Reason; 26] = [
        Reason::TokenMissing,
        Reason::TokenMalformed,
        Reason::TokenSignature,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::TokenLifetime,
        Reason::TokenClaims,
        Reason::TokenBinding,
        Reason::TokenReplayed,
        Reason::SignatureInvalid,
        Reason::RouteDenied,
        Reason::IpDenied,
        Reason::CountryDenied,
        Reason::ApiKeyMissing,
        Reason::ApiKeyInvalid,
        Reason::ApiKeyRestricted,
        Reason::PlatformDenied,
        Reason::AppUnknown,
        Reason::AppMismatch,
        Reason::OriginDenied,
        Reason::PhoneDenied,
        Reason::BodyInvalid,
        Reason::BodyTooLarge,
        Reason::RateLimited,
        Reason::RatelimitUnavailable,
        Reason::JwksUnavailable,
    ];

    /// The stable reason code of SPEC §4.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::TokenMissing => "token_missing",
            Reason::TokenMalformed => "token_malformed",
            Reason::TokenSignature => "token_signature",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::TokenLifetime => "token_lifetime",
            Reason::TokenClaims => "token_claims",
            Reason::TokenBinding => "token_binding",
            Reason::TokenReplayed => "token_replayed",
            Reason::SignatureInvalid => "signature_invalid",
            Reason::RouteDenied => "route_denied",
            Reason::IpDenied => "ip_denied",
            Reason::CountryDenied => "country_denied",
            Reason::ApiKeyMissing => "api_key_missing",
            Reason::ApiKeyInvalid => "api_key_invalid",
            Reason::ApiKeyRestricted => "api_key_restricted",
            Reason::PlatformDenied => "platform_denied",
            Reason::AppUnknown => "app_unknown",
            Reason::AppMismatch => "app_mismatch",
            Reason::OriginDenied => "origin_denied",
            Reason::PhoneDenied => "phone_denied",
            Reason::BodyInvalid => "body_invalid",
            Reason::BodyTooLarge => "body_too_large",
            Reason::RateLimited => "rate_limited",
            Reason::RatelimitUnavailable => "ratelimit_unavailable",
            Reason::JwksUnavailable => "jwks_unavailable",
        }
    }

    /// The HTTP status of a local reply for this reason (SPEC §4).
    pub const fn status(self) -> u16 {
        match self {
            Reason::TokenMissing
            | Reason::TokenMalformed
            | Reason::TokenSignature
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::TokenLifetime
            | Reason::TokenClaims
            | Reason::TokenBinding
            | Reason::TokenReplayed
            | Reason::SignatureInvalid => 401,
            Reason::RouteDenied
            | Reason::IpDenied
            | Reason::CountryDenied
            | Reason::ApiKeyMissing
            | Reason::ApiKeyInvalid
            | Reason::ApiKeyRestricted
            | Reason::PlatformDenied
            | Reason::AppUnknown
            | Reason::AppMismatch
            | Reason::OriginDenied
            | Reason::PhoneDenied => 403,
            Reason::BodyInvalid => 400,
            Reason::BodyTooLarge => 413,
            Reason::RateLimited => 429,
            Reason::RatelimitUnavailable | Reason::JwksUnavailable => 503,
        }
    }

    /// The `www-authenticate` challenge of a 401 (RFC 9110 §11.6.1: a 401
    /// must carry one; Envoy's `jwt_authn` sends the same form, and some
    /// HTTP clients treat a 401 without it as a protocol error). RFC 6750's
    /// `Bearer` scheme, whatever header the token came in, with
    /// `error="invalid_token"` unless the token was missing; a fixed realm,
    /// so that nothing of the request is written back. `None` for other
    /// statuses.
    pub const fn challenge(self) -> Option<&'static str> {
        match self {
            Reason::TokenMissing => Some("Bearer realm=\"appguard\""),
            _ if self.status() == 401 => Some("Bearer realm=\"appguard\", error=\"invalid_token\""),
            _ => None,
        }
    }

    /// The gRPC status of a local reply for this reason (see
    /// [`grpc_status`]).
    pub const fn grpc_status(self) -> i32 {
        grpc_status(self.status())
    }

    /// The JSON body of the local reply: `{"error":"<code>"}`. Codes are plain
    /// ASCII identifiers, so no escaping is needed.
    pub fn body(self) -> String {
        format!("{{\"error\":\"{}\"}}", self.code())
    }
}

/// The gRPC status a local reply with HTTP `status` carries when the
/// request is gRPC (Envoy then answers HTTP 200 with `grpc-status`, as
/// gRPC requires, and appguard's headers beside it). Envoy's own mapping
/// would answer a rate limit `UNAVAILABLE`, which gRPC clients configured
/// to retry take as a cue to retry at once, and a bad body `INTERNAL`, a
/// server fault: a quota is `RESOURCE_EXHAUSTED` (8; Envoy's ratelimit
/// filter with `rate_limited_as_resource_exhausted`), as is a body over
/// the size limit, and a bad body `INVALID_ARGUMENT` (3). 401 is
/// `UNAUTHENTICATED` (16), 403 `PERMISSION_DENIED` (7), 503 `UNAVAILABLE`
/// (14); any other status `UNKNOWN` (2).
pub const fn grpc_status(status: u16) -> i32 {
    match status {
        400 => 3,
        401 => 16,
        403 => 7,
        413 | 429 => 8,
        503 => 14,
        _ => 2,
    }
}

/// How a refusal answers a gRPC or gRPC-Web request (see
/// [`grpc_reply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcReply<'a> {
    /// Not gRPC: HTTP status and JSON body.
    No,
    /// gRPC, as Envoy took the request when it arrived: the HTTP refusal
    /// as for any request, with the gRPC status to use. Envoy turns it
    /// into HTTP 200 with `grpc-status` and the body as `grpc-message`,
    /// through the connection manager's `local_reply_config` like its own
    /// replies.
    Native,
    /// gRPC-Web that Envoy's `grpc_web` filter, in front of appguard,
    /// turned into `application/grpc` (the client's `x-grpc-web`
    /// says so): Envoy did not take it for gRPC when it arrived, so its
    /// HTTP refusal would reach `grpc_web`, which maps the HTTP status
    /// itself (a rate limit `UNAVAILABLE`, which clients retry at once; a
    /// bad body `INTERNAL`). Answered as a trailers-only gRPC answer
    /// instead: HTTP 200, `grpc-status` and `grpc-message` in the headers,
    /// no body; `grpc_web` gives it its gRPC-Web `content-type`.
    WebConverted,
    /// gRPC-Web as the client sent it (no `grpc_web` filter in front):
    /// HTTP 200 with the request's media type and the status in a
    /// gRPC-Web trailer frame, the body every gRPC-Web answer ends with
    /// (base64 for `application/grpc-web-text`). Headers alone would do
    /// for some clients, but Envoy drops the `content-type` of a local
    /// reply without a body, and clients that check it first (Connect's)
    /// would read the answer as an internal error.
    Web(&'a str),
}

/// The media type of a `Content-Type` value: what comes before its
/// parameters, without the spaces and tabs around it (still in the case
/// it was sent: media types compare without regard to case, RFC 9110
/// §8.3.1).
pub fn media_type(content_type: &str) -> &str {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim_matches([' ', '\t'])
}

/// How a refusal answers a request with this `content-type` (the value
/// as appguard sees it), whether the client sent `x-grpc-web`, and
/// whether the request's headers already went on to the filters after
/// appguard (a body-phase refusal on a route that does not hold them).
/// Envoy takes a request for gRPC only by its `content-type` when it
/// arrives (`application/grpc`, `+` a subtype); a gRPC-Web one
/// (`application/grpc-web…`) never is. The media type is compared without
/// regard to case and parameters, as RFC 9110 §8.3.1 has it.
///
/// Once the headers went on, a `grpc_web` filter behind appguard has made
/// a gRPC-Web request `application/grpc`, and encodes the refusal for the
/// browser as it does the upstream's answer: it is then answered as
/// [`GrpcReply::WebConverted`], since a trailer frame of appguard's would
/// reach that filter as a non-gRPC body (`UNKNOWN` to the client).
pub fn grpc_reply(
    content_type: Option<&str>,
    x_grpc_web: bool,
    headers_went_on: bool,
) -> GrpcReply<'_> {
    let Some(media) = content_type.map(media_type) else {
        return GrpcReply::No;
    };
    let Some(rest) = media
        .get(.."application/grpc".len())
        .filter(|t| t.eq_ignore_ascii_case("application/grpc"))
        .and_then(|_| media.get("application/grpc".len()..))
    else {
        return GrpcReply::No;
    };
    if rest.is_empty() || rest.starts_with('+') {
        return if x_grpc_web {
            GrpcReply::WebConverted
        } else {
            GrpcReply::Native
        };
    }
    let web = rest
        .get(.."-web".len())
        .is_some_and(|w| w.eq_ignore_ascii_case("-web"));
    let after = rest.get("-web".len()..).unwrap_or("");
    let text = after
        .get(.."-text".len())
        .is_some_and(|t| t.eq_ignore_ascii_case("-text"));
    let tail = if text { &after["-text".len()..] } else { after };
    if web && (tail.is_empty() || tail.starts_with('+')) {
        if headers_went_on {
            GrpcReply::WebConverted
        } else {
            GrpcReply::Web(media)
        }
    } else {
        GrpcReply::No
    }
}

/// The body of a gRPC-Web refusal with media type `media`: the trailer
/// frame of [`grpc_web_trailer_frame`], base64-encoded for the `-text`
/// form (`application/grpc-web-text…`).
pub fn grpc_web_body(media: &str, status: i32, message: &str) -> Vec<u8> {
    use base64::Engine as _;
    let frame = grpc_web_trailer_frame(status, message);
    let text = media
        .get("application/grpc-web".len().."application/grpc-web-text".len())
        .is_some_and(|t| t.eq_ignore_ascii_case("-text"));
    if text {
        base64::engine::general_purpose::STANDARD
            .encode(frame)
            .into_bytes()
    } else {
        frame
    }
}

/// A gRPC-Web trailer frame (flag 0x80, big-endian length, then the
/// trailers as HTTP/1 header lines) holding `grpc-status` and
/// `grpc-message` ([`grpc_message`] of `message`).
pub fn grpc_web_trailer_frame(status: i32, message: &str) -> Vec<u8> {
    let trailers = format!(
        "grpc-status:{status}\r\ngrpc-message:{}\r\n",
        grpc_message(message)
    );
    let len = u32::try_from(trailers.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(5 + trailers.len());
    frame.push(0x80);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(trailers.as_bytes());
    frame
}

/// A `grpc-message` value: `text` percent-encoded as the gRPC protocol
/// asks (every byte outside printable ASCII, and `%`, as `%XX`).
pub fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal: the reason plus any extra response headers (rate-limit headers,
/// `retry-after`, headers the rate-limit service asked for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The stable reason code; it fixes the status too.
    pub reason: Reason,
    /// Extra headers on the local reply, beyond `x-appguard-reason`.
    pub headers: Vec<(String, String)>,
    /// The credentials cut out of the request although it goes no
    /// further (the API key with `api_keys.forward: false`, and the token
    /// headers an allowed request would lose): Envoy's access log still
    /// records the refused request's path and headers.
    pub key_scrub: KeyScrub,
}

/// The API key taken out of the request (`api_keys.forward: false`): what
/// the adapter removes before the request goes upstream, or before Envoy
/// logs a refused one (with a refused request's token headers, see
/// [`Denial::key_scrub`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyScrub {
    /// The key headers to remove, by the names the request sent them
    /// under: `api_keys.header` in every spelling an upstream reads as it
    /// (`x_api_key` for `x-api-key`). Empty when the request has none. On
    /// a denial and before a wait, the token headers to remove as well
    /// (on a denial, a forwarding provider's verified one too: see
    /// [`Grant::scrub_refused`]).
    pub headers: Vec<String>,
    /// `:path` without the key query parameter, when it had one.
    pub path: Option<String>,
    /// The `cookie` header without the cookies named like the key query
    /// parameter, when it had one: the key's copy that upstreams merging
    /// cookies into their parameters (PHP's `$_REQUEST`) read. Empty: no
    /// cookie is left, and the header goes.
    pub cookie: Option<String>,
}

impl Denial {
    /// A denial with no extra headers.
    pub fn new(reason: Reason) -> Self {
        Denial {
            reason,
            headers: Vec::new(),
            key_scrub: KeyScrub::default(),
        }
    }
}

impl From<Reason> for Denial {
    fn from(reason: Reason) -> Self {
        Denial::new(reason)
    }
}

/// What an allowed request carries upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Headers to set on the upstream request (identity headers, forwarded
    /// claims, headers the rate-limit service asked for).
    pub set_headers: Vec<(String, String)>,
    /// Request headers to remove before the request goes upstream (the token,
    /// unless the provider forwards it).
    pub remove_headers: Vec<String>,
    /// The verified token's headers that go upstream (`forward: true`):
    /// removed all the same if the request is refused after all, since
    /// nothing goes upstream then and Envoy's access log reads them.
    pub forwarded_headers: Vec<String>,
    /// The API key taken out of the request (`api_keys.forward: false`).
    pub key_scrub: KeyScrub,
    /// Headers to add to the response sent back to the client.
    pub response_headers: Vec<(String, String)>,
    /// In monitor mode: the denial that enforce mode would have answered.
    pub would_deny: Option<Reason>,
}

impl Grant {
    /// What to take off the request now, before it waits (for the body, or
    /// the rate-limit service) or is refused: the API key (`forward:
    /// false`) and the token headers it would lose if allowed. A client
    /// that leaves meanwhile leaves only Envoy's access log line, written
    /// from the headers as they are then.
    pub fn scrub(&self) -> KeyScrub {
        let mut scrub = self.key_scrub.clone();
        scrub.add_headers(self.remove_headers.iter().cloned());
        scrub
    }

    /// What to take off a request refused after all: [`Grant::scrub`], and
    /// the verified token's headers a forwarding provider would have sent
    /// upstream (nothing goes upstream now, and Envoy's access log reads
    /// them).
    pub fn scrub_refused(&self) -> KeyScrub {
        let mut scrub = self.scrub();
        scrub.add_headers(self.forwarded_headers.iter().cloned());
        scrub
    }
}

impl KeyScrub {
    /// Adds header names to remove, each once.
    pub fn add_headers(&mut self, names: impl IntoIterator<Item = String>) {
        for name in names {
            if !self.headers.contains(&name) {
                self.headers.push(name);
            }
        }
    }
}

/// The final word on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the request continue upstream, changed as the grant says.
    Allow(Grant),
    /// Answer locally with the denial.
    Deny(Denial),
}

impl Decision {
    /// The reason of a denial, or `None` when allowed.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Decision::Allow(_) => None,
            Decision::Deny(d) => Some(d.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn codes_are_unique_and_statuses_follow_the_spec() {
        let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert_eq!(Reason::TokenReplayed.status(), 401);
        assert_eq!(Reason::OriginDenied.status(), 403);
        assert_eq!(Reason::BodyTooLarge.status(), 413);
        assert_eq!(Reason::BodyInvalid.status(), 400);
        assert_eq!(Reason::RateLimited.status(), 429);
        assert_eq!(Reason::JwksUnavailable.status(), 503);
        assert_eq!(Reason::RouteDenied.body(), r#"{"error":"route_denied"}"#);
    }

    #[test]
    fn grpc_and_grpc_web_requests_are_told_apart_by_their_media_type() {
        use GrpcReply::*;
        for (request, web, answer) in [
            ("application/grpc", false, Native),
            ("application/grpc+proto", false, Native),
            ("Application/GRPC; charset=utf-8", false, Native),
            ("application/grpc", true, WebConverted),
            ("application/grpc+proto", true, WebConverted),
            ("application/grpc-web", false, Web("application/grpc-web")),
            (
                "application/grpc-web+proto",
                true,
                Web("application/grpc-web+proto"),
            ),
            (
                "application/grpc-web-text",
                false,
                Web("application/grpc-web-text"),
            ),
            (
                "application/grpc-web-text+proto",
                false,
                Web("application/grpc-web-text+proto"),
            ),
            (
                "application/GRPC-Web+json ; x=1",
                false,
                Web("application/GRPC-Web+json"),
            ),
            ("application/grpcx", true, No),
            ("application/grpc-webby", false, No),
            ("application/grpc-web-textual", false, No),
            ("application/grpc-", false, No),
            ("application/json", true, No),
            ("application/grp", false, No),
            ("", false, No),
            ("\u{e9}pplication/grpc", false, No),
            ("application/grpc\u{e9}", false, No),
            ("application/grpc-w\u{e9}b", false, No),
        ] {
            assert_eq!(
                grpc_reply(Some(request), web, false),
                answer,
                "{request:?} {web}"
            );
            // After the headers went on, gRPC-Web is answered as the
            // `grpc_web` filter behind appguard has made it: gRPC.
            let went_on = match answer {
                Web(_) => WebConverted,
                other => other,
            };
            assert_eq!(
                grpc_reply(Some(request), web, true),
                went_on,
                "{request:?} {web} (headers went on)"
            );
        }
        assert_eq!(grpc_reply(None, true, false), No);
        assert_eq!(grpc_reply(None, true, true), No);
    }

    #[test]
    fn a_media_type_is_the_content_type_without_parameters_or_blanks() {
        assert_eq!(media_type("application/json"), "application/json");
        assert_eq!(
            media_type(" Application/JSON ;charset=utf-8"),
            "Application/JSON"
        );
        assert_eq!(
            media_type("\tapplication/grpc-web\t; x=1; y=2"),
            "application/grpc-web"
        );
        assert_eq!(media_type(";charset=utf-8"), "");
        assert_eq!(media_type(""), "");
    }

    #[test]
    fn a_grpc_web_trailer_frame_is_flag_length_and_header_lines() {
        let frame = grpc_web_trailer_frame(8, "{\"error\":\"rate_limited\"}");
        let lines = b"grpc-status:8\r\ngrpc-message:{\"error\":\"rate_limited\"}\r\n";
        assert_eq!(frame[0], 0x80);
        assert_eq!(
            frame[1..5],
            u32::try_from(lines.len()).unwrap().to_be_bytes()
        );
        assert_eq!(&frame[5..], lines);
        // The same frame as the body, in base64 for the `-text` form only.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&frame);
        for (media, body) in [
            ("application/grpc-web+proto", frame.clone()),
            ("application/grpc-web", frame.clone()),
            ("application/grpc-web-text", b64.clone().into_bytes()),
            ("application/GRPC-WEB-TEXT+proto", b64.clone().into_bytes()),
        ] {
            assert_eq!(
                grpc_web_body(media, 8, "{\"error\":\"rate_limited\"}"),
                body,
                "{media}"
            );
        }
    }

    #[test]
    fn a_grpc_message_is_percent_encoded() {
        assert_eq!(
            grpc_message("{\"error\":\"rate_limited\"}"),
            "{\"error\":\"rate_limited\"}"
        );
        assert_eq!(grpc_message("50% \u{e9}\n"), "50%25 %C3%A9%0A");
    }

    #[test]
    fn every_reason_has_the_grpc_status_of_its_meaning() {
        for r in Reason::ALL {
            let want = match r.status() {
                401 => 16,      // UNAUTHENTICATED
                403 => 7,       // PERMISSION_DENIED
                400 => 3,       // INVALID_ARGUMENT
                413 | 429 => 8, // RESOURCE_EXHAUSTED
                503 => 14,      // UNAVAILABLE
                s => panic!("{r}: status {s} has no gRPC status"),
            };
            assert_eq!(r.grpc_status(), want, "{r}");
        }
        assert_eq!(grpc_status(500), 2);
    }

    #[test]
    fn every_401_and_only_a_401_carries_a_bearer_challenge() {
        for r in Reason::ALL {
            assert_eq!(r.challenge().is_some(), r.status() == 401, "{r}");
        }
        assert_eq!(
            Reason::TokenMissing.challenge(),
            Some(r#"Bearer realm="appguard""#)
        );
        assert_eq!(
            Reason::TokenExpired.challenge(),
            Some(r#"Bearer realm="appguard", error="invalid_token""#)
        );
    }
}
