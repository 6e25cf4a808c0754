//! The Envoy RLS v3 messages appguard exchanges with the shared rate-limit
//! service, as prost derives of exactly the fields it uses.
//!
//! The filter sends `RateLimitRequest` bytes to
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` through
//! proxy-wasm `dispatch_grpc_call` (Envoy adds the gRPC framing) and reads
//! `RateLimitResponse` bytes back. Field numbers and types are those of
//! Envoy's protos:
//! - `envoy/service/ratelimit/v3/rls.proto` (request, response, statuses),
//! - `envoy/extensions/common/ratelimit/v3/ratelimit.proto` (descriptors),
//! - `envoy/config/core/v3/base.proto` (`HeaderValue`),
//! - `google/protobuf/duration.proto` and `wrappers.proto`.
//!
//! Fields appguard does not use are left out: prost skips unknown fields
//! when decoding, so a response carrying `raw_body`, `dynamic_metadata` or
//! `quota` decodes the same. The tests check both directions, byte for byte,
//! against the `envoy-types` crate generated from the real protos.
//!
//! Deriving a handful of messages here rather than depending on
//! `envoy-types` keeps tonic and thousands of unrelated messages out of the
//! Wasm module.

/// `envoy.service.ratelimit.v3.RateLimitRequest`: one `ShouldRateLimit`
/// call, every descriptor of the request at once.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RateLimitRequest {
    /// The rate-limit domain: the namespace of the service's configuration
    /// that these descriptors are looked up in.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// The descriptors to count and check; each is answered by the status at
    /// the same index of [`RateLimitResponse::statuses`].
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// How many hits to add to every descriptor; 0 means 1 (the service's
    /// default).
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`: an ordered
/// list of key/value entries that the service matches against its rules.
/// The optional `limit` override (field 2) and `is_negative_hits` (field 4)
/// are not used by appguard and left out.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RateLimitDescriptor {
    /// The entries, in order (`[("remote_address", "1.2.3.4"), ("route", "sms")]`).
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// Hits to add for this descriptor alone, overriding the request's
    /// `hits_addend` (a `google.protobuf.UInt64Value`, so that 0 can be told
    /// from unset).
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<UInt64Value>,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry`: one
/// key/value pair of a descriptor.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Entry {
    /// The descriptor key (`"remote_address"`, `"phone"`, …).
    #[prost(string, tag = "1")]
    pub key: String,
    /// The descriptor value (an IP, a key id, a hashed phone number, …).
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.UInt64Value`: a `uint64` that can be absent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct UInt64Value {
    /// The wrapped value.
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse`: the service's answer.
/// `raw_body` (5), `dynamic_metadata` (6) and `quota` (7) are skipped.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RateLimitResponse {
    /// The overall answer, a [`Code`]: `OVER_LIMIT` when any descriptor is
    /// over its limit (and the service is not in shadow mode).
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    /// One status per request descriptor, in the request's order.
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    /// Headers the service asks to add to the response sent to the client.
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    /// Headers the service asks to add to the request sent upstream.
    #[prost(message, repeated, tag = "4")]
    pub request_headers_to_add: Vec<HeaderValue>,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    /// Unset: a reply that does not say whether the request is allowed.
    Unknown = 0,
    /// Within limits.
    Ok = 1,
    /// Over a limit.
    OverLimit = 2,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus`: the
/// service's answer for one descriptor. `quota` (5) is skipped.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct DescriptorStatus {
    /// This descriptor's [`Code`].
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    /// The limit that matched, if any (absent when no rule matched).
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    /// Hits left in the current window.
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    /// Time until the current window ends and the count resets.
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit`: a limit as
/// "`requests_per_unit` per `unit`".
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct RateLimit {
    /// The rule's name, if the service gives one.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Requests allowed per unit of time.
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// The window, a [`Unit`].
    #[prost(enumeration = "Unit", tag = "2")]
    pub unit: i32,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit` (note that
/// `WEEK`, added last, is 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum Unit {
    /// Unset.
    Unknown = 0,
    /// Per second.
    Second = 1,
    /// Per minute.
    Minute = 2,
    /// Per hour.
    Hour = 3,
    /// Per day.
    Day = 4,
    /// Per month.
    Month = 5,
    /// Per year.
    Year = 6,
    /// Per week.
    Week = 7,
}

impl Unit {
    /// The longest a window of this unit lasts, in seconds (a month as 31
    /// days, a year as 366); `None` for [`Unit::Unknown`]. A service's
    /// `duration_until_reset` never exceeds it for a fixed window.
    pub fn max_window_secs(self) -> Option<u64> {
        match self {
            Unit::Unknown => None,
            Unit::Second => Some(1),
            Unit::Minute => Some(60),
            Unit::Hour => Some(3_600),
            Unit::Day => Some(86_400),
            Unit::Week => Some(7 * 86_400),
            Unit::Month => Some(31 * 86_400),
            Unit::Year => Some(366 * 86_400),
        }
    }
}

impl Unit {
    /// The shortest a window of this unit lasts, in seconds (a month as 28
    /// days, a year as 365); `None` for [`Unit::Unknown`].
    pub fn min_window_secs(self) -> Option<u64> {
        match self {
            Unit::Month => Some(28 * 86_400),
            Unit::Year => Some(365 * 86_400),
            other => other.max_window_secs(),
        }
    }
}

/// `envoy.config.core.v3.HeaderValue`: a header the service asks to add.
/// Envoy sends the value in `value`, or in `raw_value` when it is not valid
/// UTF-8 (or when configured so); appguard reads `raw_value` only when
/// `value` is empty.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct HeaderValue {
    /// The header name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The header value as text.
    #[prost(string, tag = "2")]
    pub value: String,
    /// The header value as bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// `google.protobuf.Duration`: a signed span of `seconds` plus `nanos`
/// (both of the same sign, `|nanos| < 10^9`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Duration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Fraction of a second, in nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Duration {
    /// Whole seconds, rounded up (1.2 s is 2 s); negative spans count as 0.
    /// Out-of-range `nanos` are clamped, so no input overflows.
    pub fn ceil_secs(&self) -> u64 {
        let secs = u64::try_from(self.seconds).unwrap_or(0);
        if self.seconds >= 0 && self.nanos > 0 {
            secs.saturating_add(1)
        } else {
            secs
        }
    }

    /// Whole milliseconds, rounded down; negative spans count as 0.
    pub fn floor_millis(&self) -> u64 {
        let secs = u64::try_from(self.seconds).unwrap_or(0);
        let ms = u64::try_from(self.nanos.clamp(0, 999_999_999) / 1_000_000).unwrap_or(0);
        if self.seconds >= 0 {
            secs.saturating_mul(1000).saturating_add(ms)
        } else {
            0
        }
    }
}

/// Responses larger than this are refused before decoding. A real answer is
/// a few hundred bytes (one status per descriptor, a few headers); the cap
/// bounds what a misbehaving service can make the filter allocate.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a rate-limit service reply could not be used. The adapter treats all
/// of them like an unreachable service: the route's `failure_mode` decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RlsError {
    /// The reply is larger than [`MAX_RESPONSE_BYTES`]; it was not decoded.
    TooLarge {
        /// Its size in bytes.
        len: usize,
    },
    /// The bytes are not a valid `RateLimitResponse`.
    Malformed(prost::DecodeError),
    /// `overall_code` is `UNKNOWN` or a value outside the enum: the reply
    /// does not say whether the request is allowed.
    UnknownCode(i32),
}

impl core::fmt::Display for RlsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RlsError::TooLarge { len } => {
                write!(
                    f,
                    "rate-limit response of {len} bytes exceeds {MAX_RESPONSE_BYTES}"
                )
            }
            RlsError::Malformed(e) => write!(f, "malformed rate-limit response: {e}"),
            RlsError::UnknownCode(c) => {
                write!(f, "rate-limit response has no usable overall_code ({c})")
            }
        }
    }
}

impl std::error::Error for RlsError {}

/// Builds the request message: `descriptors` in order, each a list of
/// `(key, value)` entries. `hits_addend` 0 means one hit (the service's
/// default). Descriptor `i` adds `descriptor_hits[i]` hits instead (its own
/// `hits_addend`: a lease) when that is above 1; descriptors beyond the
/// slice, or at 0 or 1, add the request's. Accepts
/// `&[Vec<(String, String)>]`, `&[&[(&str, &str)]]`, arrays, …
pub fn build_request<D, K, V>(
    domain: &str,
    descriptors: &[D],
    hits_addend: u32,
    descriptor_hits: &[u32],
) -> RateLimitRequest
where
    D: AsRef<[(K, V)]>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: descriptors
            .iter()
            .enumerate()
            .map(|(i, d)| RateLimitDescriptor {
                entries: d
                    .as_ref()
                    .iter()
                    .map(|(k, v)| Entry {
                        key: k.as_ref().to_owned(),
                        value: v.as_ref().to_owned(),
                    })
                    .collect(),
                hits_addend: descriptor_hits
                    .get(i)
                    .filter(|&&h| h > 1)
                    .map(|&h| UInt64Value {
                        value: u64::from(h),
                    }),
            })
            .collect(),
        hits_addend,
    }
}

/// The protobuf bytes of [`build_request`], ready for `dispatch_grpc_call`.
pub fn encode_request<D, K, V>(
    domain: &str,
    descriptors: &[D],
    hits_addend: u32,
    descriptor_hits: &[u32],
) -> Vec<u8>
where
    D: AsRef<[(K, V)]>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    prost::Message::encode_to_vec(&build_request(
        domain,
        descriptors,
        hits_addend,
        descriptor_hits,
    ))
}

/// Decodes the bytes of `get_grpc_call_response_body`, refusing more than
/// [`MAX_RESPONSE_BYTES`] before any decoding.
pub fn decode_response(bytes: &[u8]) -> Result<RateLimitResponse, RlsError> {
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(RlsError::TooLarge { len: bytes.len() });
    }
    <RateLimitResponse as prost::Message>::decode(bytes).map_err(RlsError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn request_accepts_owned_and_borrowed_descriptors() {
        let owned = vec![vec![("remote_address".to_owned(), "10.0.0.1".to_owned())]];
        let borrowed: [&[(&str, &str)]; 1] = [&[("remote_address", "10.0.0.1")]];
        assert_eq!(
            encode_request("appguard", &owned, 0, &[]),
            encode_request("appguard", &borrowed, 0, &[])
        );
        let none: [Vec<(&str, &str)>; 0] = [];
        assert_eq!(encode_request("d", &none, 0, &[]), vec![0x0a, 0x01, b'd']);
    }

    #[test]
    fn request_wire_format_by_hand() {
        // domain "d" (field 1), one descriptor (field 2) with one entry
        // (field 1) k="a" v="b", hits_addend 2 (field 3).
        let bytes = encode_request("d", &[[("a", "b")]], 2, &[]);
        let entry = [0x0a, 0x01, b'a', 0x12, 0x01, b'b'];
        let mut want = vec![0x0a, 0x01, b'd', 0x12, 0x08, 0x0a, 0x06];
        want.extend_from_slice(&entry);
        want.extend_from_slice(&[0x18, 0x02]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn response_size_is_capped_before_decoding() {
        let big = vec![0u8; MAX_RESPONSE_BYTES + 1];
        assert_eq!(
            decode_response(&big),
            Err(RlsError::TooLarge {
                len: MAX_RESPONSE_BYTES + 1
            })
        );
        assert!(matches!(
            decode_response(&[0xff, 0xff]),
            Err(RlsError::Malformed(_))
        ));
        // A truncated length-delimited field.
        assert!(matches!(
            decode_response(&[0x12, 0x05, 0x08]),
            Err(RlsError::Malformed(_))
        ));
        // Empty bytes are a valid, empty message (overall_code UNKNOWN).
        assert_eq!(decode_response(&[]).map(|r| r.overall_code), Ok(0));
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // overall_code OVER_LIMIT, then field 5 raw_body (bytes) and field 99
        // (varint) that these types do not declare.
        let bytes = [0x08, 0x02, 0x2a, 0x02, b'h', b'i', 0x98, 0x06, 0x01];
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert!(r.statuses.is_empty());
    }

    #[test]
    fn duration_rounds_up_and_never_overflows() {
        let d = |seconds, nanos| Duration { seconds, nanos }.ceil_secs();
        assert_eq!(d(0, 0), 0);
        assert_eq!(d(0, 1), 1);
        assert_eq!(d(1, 200_000_000), 2);
        assert_eq!(d(5, 0), 5);
        assert_eq!(d(-5, -1), 0);
        assert_eq!(d(i64::MAX, 1), i64::MAX as u64 + 1);
        assert_eq!(d(0, i32::MIN), 0);
        assert_eq!(Unit::Week.max_window_secs(), Some(604_800));
        assert_eq!(Unit::Unknown.max_window_secs(), None);
        // A lease ends no later than the window: rounded down.
        let f = |seconds, nanos| Duration { seconds, nanos }.floor_millis();
        assert_eq!(f(1, 999_999_999), 1_999);
        assert_eq!(f(0, 1), 0);
        assert_eq!(f(-1, 500_000_000), 0);
        assert_eq!(f(0, i32::MAX), 999);
        assert_eq!(f(i64::MAX, 0), u64::MAX);
    }

    #[test]
    fn a_lease_sets_its_descriptor_hits_and_only_above_one() {
        let d: [&[(&str, &str)]; 3] = [&[("a", "1")], &[("b", "2")], &[("c", "3")]];
        let r = build_request("d", &d, 1, &[5, 1]);
        let hits: Vec<Option<u64>> = r
            .descriptors
            .iter()
            .map(|x| x.hits_addend.map(|h| h.value))
            .collect();
        assert_eq!(hits, vec![Some(5), None, None]);
        assert_eq!(r.hits_addend, 1);
        // Without per-descriptor hits, every descriptor adds the request's.
        assert!(build_request("d", &d, 0, &[])
            .descriptors
            .iter()
            .all(|x| x.hits_addend.is_none()));
        assert_eq!(
            encode_request("d", &d, 1, &[5]),
            build_request("d", &d, 1, &[5]).encode_to_vec()
        );
    }

    #[test]
    fn our_response_round_trips() {
        let r = RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: Some(RateLimit {
                    name: "per-ip".into(),
                    requests_per_unit: 10,
                    unit: Unit::Minute as i32,
                }),
                limit_remaining: 9,
                duration_until_reset: Some(Duration {
                    seconds: 42,
                    nanos: 0,
                }),
            }],
            response_headers_to_add: vec![],
            request_headers_to_add: vec![],
        };
        assert_eq!(decode_response(&r.encode_to_vec()), Ok(r));
    }

    /// Checks against the messages `envoy-types` generates from Envoy's own
    /// protos: native only, `envoy-types` is never built for wasm.
    #[cfg(not(target_arch = "wasm32"))]
    mod against_envoy_types {
        use super::super::*;
        use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeaderValue;
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
            rate_limit_descriptor::{Entry as EnvoyEntry, RateLimitOverride},
            RateLimitDescriptor as EnvoyDescriptor,
        };
        use envoy_types::pb::envoy::service::ratelimit::v3::{
            rate_limit_response::{
                self as rr, rate_limit::Unit as EnvoyUnit, Code as EnvoyCode,
                DescriptorStatus as EnvoyStatus, Quota, RateLimit as EnvoyRateLimit,
            },
            RateLimitRequest as EnvoyRequest, RateLimitResponse as EnvoyResponse,
        };
        use envoy_types::pb::google::protobuf::{
            Duration as PbDuration, Struct, Timestamp, UInt64Value as PbUInt64Value, Value,
        };
        use prost::Message;

        fn entry(k: &str, v: &str) -> EnvoyEntry {
            EnvoyEntry {
                key: k.into(),
                value: v.into(),
            }
        }

        #[test]
        fn our_request_decodes_as_envoys_and_reencodes_identically() {
            let descriptors = vec![
                vec![
                    ("remote_address".to_owned(), "203.0.113.7".to_owned()),
                    ("route".to_owned(), "sms".to_owned()),
                ],
                vec![(
                    "phone".to_owned(),
                    "0f3a9c1d2e4b5a69788796a5b4c3d2e1".to_owned(),
                )],
                vec![],
            ];
            let ours = encode_request("appguard", &descriptors, 3, &[]);
            let theirs = EnvoyRequest::decode(ours.as_slice()).unwrap();
            assert_eq!(
                theirs,
                EnvoyRequest {
                    domain: "appguard".into(),
                    descriptors: vec![
                        EnvoyDescriptor {
                            entries: vec![
                                entry("remote_address", "203.0.113.7"),
                                entry("route", "sms")
                            ],
                            ..Default::default()
                        },
                        EnvoyDescriptor {
                            entries: vec![entry("phone", "0f3a9c1d2e4b5a69788796a5b4c3d2e1")],
                            ..Default::default()
                        },
                        EnvoyDescriptor::default(),
                    ],
                    hits_addend: 3,
                }
            );
            assert_eq!(theirs.encode_to_vec(), ours);
        }

        #[test]
        fn descriptor_hits_addend_matches_envoys_wrapper() {
            let mut ours = build_request("d", &[[("k", "v")]], 0, &[]);
            if let Some(d) = ours.descriptors.first_mut() {
                d.hits_addend = Some(UInt64Value { value: 0 });
            }
            let bytes = ours.encode_to_vec();
            let theirs = EnvoyRequest::decode(bytes.as_slice()).unwrap();
            assert_eq!(
                theirs.descriptors[0].hits_addend,
                Some(PbUInt64Value { value: 0 })
            );
            assert_eq!(theirs.encode_to_vec(), bytes);
            // Envoy's fields that appguard leaves out are skipped, not misread.
            let with_extras = EnvoyRequest {
                domain: "d".into(),
                descriptors: vec![EnvoyDescriptor {
                    entries: vec![entry("k", "v")],
                    limit: Some(RateLimitOverride {
                        requests_per_unit: 5,
                        unit: 2,
                    }),
                    hits_addend: Some(PbUInt64Value { value: 7 }),
                    is_negative_hits: true,
                }],
                hits_addend: 1,
            };
            let decoded = RateLimitRequest::decode(with_extras.encode_to_vec().as_slice()).unwrap();
            assert_eq!(
                decoded.descriptors[0].hits_addend,
                Some(UInt64Value { value: 7 })
            );
            assert_eq!(decoded.descriptors[0].entries[0].value, "v");
        }

        fn envoy_status(
            code: EnvoyCode,
            rpu: u32,
            unit: EnvoyUnit,
            remaining: u32,
            reset: i64,
        ) -> EnvoyStatus {
            EnvoyStatus {
                code: code as i32,
                current_limit: Some(EnvoyRateLimit {
                    name: format!("{rpu}-per-{}", unit.as_str_name()),
                    requests_per_unit: rpu,
                    unit: unit as i32,
                }),
                limit_remaining: remaining,
                duration_until_reset: Some(PbDuration {
                    seconds: reset,
                    nanos: 250_000_000,
                }),
                quota: None,
            }
        }

        fn envoy_response() -> EnvoyResponse {
            EnvoyResponse {
                overall_code: EnvoyCode::OverLimit as i32,
                statuses: vec![
                    envoy_status(EnvoyCode::Ok, 100, EnvoyUnit::Hour, 57, 1800),
                    envoy_status(EnvoyCode::OverLimit, 5, EnvoyUnit::Minute, 0, 41),
                    EnvoyStatus {
                        code: EnvoyCode::Ok as i32,
                        ..Default::default()
                    },
                    envoy_status(EnvoyCode::OverLimit, 1, EnvoyUnit::Week, 0, 600_000),
                ],
                response_headers_to_add: vec![EnvoyHeaderValue {
                    key: "x-custom".into(),
                    value: "a".into(),
                    raw_value: vec![],
                }],
                request_headers_to_add: vec![EnvoyHeaderValue {
                    key: "x-raw".into(),
                    value: String::new(),
                    raw_value: b"bytes".to_vec(),
                }],
                ..Default::default()
            }
        }

        #[test]
        fn envoys_response_decodes_as_ours_and_reencodes_identically() {
            let theirs = envoy_response();
            let bytes = theirs.encode_to_vec();
            let ours = decode_response(&bytes).unwrap();
            assert_eq!(ours.overall_code, Code::OverLimit as i32);
            assert_eq!(ours.statuses.len(), 4);
            let s = &ours.statuses[3];
            assert_eq!(s.code(), Code::OverLimit);
            let limit = s.current_limit.as_ref().unwrap();
            assert_eq!(
                (limit.name.as_str(), limit.requests_per_unit),
                ("1-per-WEEK", 1)
            );
            assert_eq!(limit.unit(), Unit::Week);
            assert_eq!(
                s.duration_until_reset,
                Some(Duration {
                    seconds: 600_000,
                    nanos: 250_000_000
                })
            );
            assert_eq!(ours.statuses[0].limit_remaining, 57);
            assert_eq!(ours.statuses[2].current_limit, None);
            assert_eq!(ours.response_headers_to_add[0].value, "a");
            assert_eq!(ours.request_headers_to_add[0].raw_value, b"bytes");
            assert_eq!(ours.encode_to_vec(), bytes);
            // And back: what we encode, Envoy's types read identically.
            assert_eq!(
                EnvoyResponse::decode(ours.encode_to_vec().as_slice()).unwrap(),
                theirs
            );
        }

        #[test]
        fn every_code_and_unit_value_agrees() {
            for (o, t) in [
                (Code::Unknown, EnvoyCode::Unknown),
                (Code::Ok, EnvoyCode::Ok),
                (Code::OverLimit, EnvoyCode::OverLimit),
            ] {
                assert_eq!(o as i32, t as i32);
            }
            for (o, t) in [
                (Unit::Unknown, EnvoyUnit::Unknown),
                (Unit::Second, EnvoyUnit::Second),
                (Unit::Minute, EnvoyUnit::Minute),
                (Unit::Hour, EnvoyUnit::Hour),
                (Unit::Day, EnvoyUnit::Day),
                (Unit::Week, EnvoyUnit::Week),
                (Unit::Month, EnvoyUnit::Month),
                (Unit::Year, EnvoyUnit::Year),
            ] {
                assert_eq!(o as i32, t as i32, "{t:?}");
            }
        }

        #[test]
        fn fields_appguard_skips_are_ignored() {
            let mut theirs = envoy_response();
            theirs.raw_body = b"{\"error\":\"slow down\"}".to_vec();
            theirs.dynamic_metadata = Some(Struct {
                fields: [("k".to_owned(), Value::default())].into_iter().collect(),
            });
            theirs.quota = Some(Quota {
                requests: 3,
                id: "q".into(),
                expiration_specifier: Some(rr::quota::ExpirationSpecifier::ValidUntil(Timestamp {
                    seconds: 1,
                    nanos: 0,
                })),
            });
            if let Some(s) = theirs.statuses.first_mut() {
                s.quota = Some(Quota::default());
            }
            let ours = decode_response(&theirs.encode_to_vec()).unwrap();
            let plain = decode_response(&envoy_response().encode_to_vec()).unwrap();
            assert_eq!(ours, plain);
        }
    }
}
