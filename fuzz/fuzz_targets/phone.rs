//! Phone normalisation, `phone::normalize`, with and without a default
//! country, and the denied-prefix set.
//!
//! Oracles: a normalised number is `+` and 7 to 15 ASCII digits, the first
//! not 0; normalising it again gives it back; the input held no letters and
//! no non-ASCII character; it is denied exactly when its E.164 form, or
//! that form without a trunk `0`, starts with a denied prefix. Every other
//! reading (`phone::other_readings`: a carrier's or another international
//! prefix read off, under a default country that has them) is a valid
//! number too, which normalises to itself.
#![no_main]

use appguard::phone::{hash, normalize, other_readings, PhoneRules, PrefixSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    // Constant prefixes: if they stopped parsing, the denied-prefix oracle
    // below would be skipped on every input, so fail loudly instead.
    let denied = PrefixSet::new(["+882", "+44 9", "00 1 900"]).expect("denied prefixes");
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
        // "+44 9" and "00 1 900" are +449 and +1900 once normalised; the
        // number is checked as written and without a trunk prefix after
        // its calling code.
        let trunkless = n.without_trunk_prefix();
        let forms = [Some(s), trunkless.as_ref().map(|t| t.as_str())];
        let want = forms
            .iter()
            .flatten()
            .any(|f| ["+882", "+449", "+1900"].iter().any(|p| f.starts_with(p)));
        assert_eq!(denied.matching_prefix(&n).is_some(), want, "{s}");
        assert_eq!(hash(b"0123456789abcdef", &n).len(), 32);
    }
    // Countries with carriers' prefixes, other international prefixes
    // (with `x` digits), a `0` one, and `00` alone.
    for cc in ["82", "972", "598", "238", "358", "81", "7", "44"] {
        for r in other_readings(input, &PhoneRules::with_calling_code(cc)) {
            let s = r.as_str();
            let digits = &s[1..];
            assert!(s.starts_with('+'), "{cc}: {s}");
            assert!((7..=15).contains(&digits.len()), "{cc}: {s}");
            assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{cc}: {s}");
            assert!(!digits.starts_with('0'), "{cc}: {s}");
            let again = normalize(s, &PhoneRules::default());
            assert_eq!(again.as_ref().map(|e| e.as_str()), Ok(s), "{cc}: {s}");
        }
    }
});
