//! The RFC 9421 signature parser and verifier, `signing::verify`, on
//! arbitrary headers, with the RFC's own test keys (B.1.3 P-256, B.1.4
//! Ed25519) and a policy that covers nothing by default, so every input
//! reaches the structured-field parser, the signature base and the key.
//!
//! Input: a line `METHOD AUTHORITY PATH[?QUERY] LABEL`, header lines
//! `name: value`, an empty line, the body. The seeds are RFC 9421's own
//! signed requests, so mutations explore both sides of the signature check.
#![no_main]

use appguard::signing::{verify, InstallKey, Message, SigningPolicy};
use libfuzzer_sys::fuzz_target;

/// RFC 9421 B.1.3 and B.1.4 public keys (SPKI, base64).
const P256: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==";
const ED25519: &str = "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";
/// Just after the `created` of every RFC 9421 Appendix B signature.
const NOW: u64 = 1_618_884_483;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h, Some(b.as_bytes())),
        None => (text.as_ref(), None),
    };
    let mut lines = head.split('\n');
    let first = lines.next().unwrap_or("");
    let mut words = first.split(' ');
    let method = words.next().unwrap_or("GET");
    let authority = words.next().unwrap_or("example.com");
    let target = words.next().unwrap_or("/");
    let label = words.next().unwrap_or("sig");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let message = Message::request(method, "https", authority, path, query, &headers, body);
    let lax = SigningPolicy {
        label: label.to_owned(),
        required_components: Vec::new(),
        require_target: false,
        require_query: false,
        require_token: false,
        require_content_digest: false,
        require_created: false,
        max_age_seconds: u64::MAX / 4,
        clock_skew_seconds: 30,
    };
    let strict = SigningPolicy::new(label, 300, 30);
    for ipk in [P256, ED25519] {
        // Constants: a key that stopped parsing would silently turn the
        // target into a no-op, so it fails loudly instead.
        let key = InstallKey::from_ipk(ipk).expect("RFC 9421 test key");
        if let Ok(v) = verify(&strict, &message, &key, "approov-token", NOW) {
            // The default policy's coverage held.
            assert!(v.covered.iter().any(|c| c == "\"@method\""));
            assert!(v.created.is_some());
        }
        let _ = verify(&lax, &message, &key, "approov-token", NOW);
    }
});
