//! Origin and CIDR matching: `identity::parse_origin`, `OriginPattern`,
//! `net::Cidr::parse`, `net::parse_client_ip` and `net::client_ip`.
//!
//! The input is lines: a pattern, an origin, a CIDR, then X-Forwarded-For
//! values; the first byte also gives the trusted hop count.
//!
//! Oracles: a parsed origin is lower-case ASCII without `%`, `@` or `\`; an
//! exact pattern matches only its own host; a wildcard match ends in
//! `.<suffix>`; a CIDR round-trips through its text form, contains its own
//! network address and contains an address exactly when their first
//! prefix bits agree; a client IP has no zone id and is the N-th entry from
//! the right.
#![no_main]

use std::net::IpAddr;

use appguard::identity::{parse_origin, OriginPattern};
use appguard::net::{client_ip, parse_client_ip, Cidr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&hops, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let pattern = lines.next().unwrap_or("");
    let origin = lines.next().unwrap_or("");
    let cidr = lines.next().unwrap_or("");
    let xff: Vec<&str> = lines.collect();

    let parsed = parse_origin(origin);
    if let Some(o) = &parsed {
        assert!(o.host.is_ascii(), "non-ASCII host {:?}", o.host);
        assert_eq!(o.host, o.host.to_ascii_lowercase());
        assert!(
            !o.host.contains(['%', '@', '\\', '/', '?', '#']),
            "{:?}",
            o.host
        );
        assert!(o.scheme == "http" || o.scheme == "https");
    }
    if let (Ok(p), Some(o)) = (OriginPattern::parse(pattern), &parsed) {
        if p.matches(o) {
            // The pattern's own host, as the origin parser reads it. Request
            // origins never carry `*`, so a wildcard pattern is read without
            // its `*.` and the rest is the suffix a match must end with.
            let (wildcard, base) = match pattern.split_once("://") {
                Some((scheme, rest)) if rest.starts_with("*.") => {
                    (true, format!("{scheme}://{}", &rest[2..]))
                }
                _ => (false, pattern.to_owned()),
            };
            let want = parse_origin(&base).map(|w| w.host).unwrap_or_default();
            match wildcard.then_some(want.as_str()) {
                Some(suffix) => assert!(
                    o.host.ends_with(&format!(".{suffix}")) && o.host.len() > suffix.len() + 1,
                    "{pattern:?} matched {:?}",
                    o.host
                ),
                None => assert_eq!(o.host, want, "{pattern:?} matched {:?}", o.host),
            }
        }
    }

    if let Ok(c) = Cidr::parse(cidr) {
        let again = Cidr::parse(&c.to_string());
        assert_eq!(again, Ok(c), "{cidr:?} does not round-trip");
        let net: IpAddr = match c {
            Cidr::V4(a, _) => IpAddr::V4(a.into()),
            Cidr::V6(a, _) => IpAddr::V6(a.into()),
        };
        assert!(c.contains(net), "{cidr:?} does not contain its network");
        if let Some(ip) = parse_client_ip(origin) {
            // Bit by bit, IPv4-mapped IPv6 read as IPv4.
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            let want = match (c, ip) {
                (Cidr::V4(net, len), IpAddr::V4(a)) => {
                    (0..u32::from(len)).all(|i| (u32::from(a) ^ net) & (1 << (31 - i)) == 0)
                }
                (Cidr::V6(net, len), IpAddr::V6(a)) => {
                    (0..u32::from(len)).all(|i| (u128::from(a) ^ net) & (1 << (127 - i)) == 0)
                }
                _ => false,
            };
            assert_eq!(c.contains(ip), want, "{cidr:?} {ip}");
        }
    }

    for v in &xff {
        if let Some(ip) = parse_client_ip(v) {
            assert!(!v.contains('%'), "zone id accepted: {v:?}");
            let _ = ip;
        }
    }
    let hops = hops % 8;
    let ip = client_ip(|| None, xff.iter().copied(), u32::from(hops));
    // The `hops`-th entry from the right of all the values' entries, however
    // many the client put to its left; with 0 hops the (here absent)
    // downstream address.
    let entries: Vec<&str> = xff.iter().flat_map(|v| v.split(',')).collect();
    let want = if hops == 0 {
        None
    } else {
        entries
            .iter()
            .rev()
            .nth(usize::from(hops) - 1)
            .and_then(|e| parse_client_ip(e))
    };
    assert_eq!(ip, want, "{hops} {xff:?}");
});
