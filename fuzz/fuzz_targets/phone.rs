//! Phone normalisation, `phone::normalize`, with and without a default
//! country, and the denied-prefix set.
//!
//! Oracles: a normalised number is `+` and 7 to 15 ASCII digits, the first
//! not 0; normalising it again gives it back; the input held no letters and
//! no non-ASCII character.
#![no_main]

use appguard::phone::{hash, normalize, PhoneRules, PrefixSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let denied = PrefixSet::new(["+882", "+44 9", "00 1 900"]).ok();
    for rules in [PhoneRules::with_calling_code("44"), PhoneRules::default()] {
        let Ok(n) = normalize(input, &rules) else {
            continue;
        };
        let s = n.as_str();
        assert!(s.starts_with('+'), "{s}");
        let digits = &s[1..];
        assert!((7..=15).contains(&digits.len()), "{s}");
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{s}");
        assert!(!digits.starts_with('0'), "{s}");
        assert_eq!(n.digits(), digits);
        assert!(input.is_ascii(), "non-ASCII input accepted: {input:?}");
        assert!(
            !input.bytes().any(|b| b.is_ascii_alphabetic()),
            "letters accepted: {input:?}"
        );
        let again = normalize(s, &rules);
        assert_eq!(again.as_ref().map(|e| e.as_str()), Ok(s), "not idempotent");
        if let Some(d) = &denied {
            let _ = d.matching_prefix(&n);
        }
        assert_eq!(hash(b"0123456789abcdef", &n).len(), 32);
    }
});
