//! Strict base64url without padding (RFC 7515 §2), for the parts of every
//! token that reaches the filter.
//!
//! The `base64` crate's general engine spent ~10k native instructions per
//! unique HS256 token on three short parts (about a seventh of a cache
//! miss): it is built for long inputs and many configurations. This decoder
//! does one thing with one table. It is exactly as strict as the crate's
//! `URL_SAFE_NO_PAD` engine (checked against it in the tests): only
//! `A–Z a–z 0–9 - _`, no padding, no length that leaves a lone character,
//! and the unused low bits of the last character must be zero, so every
//! byte string has exactly one accepted spelling (a token cannot be
//! re-spelled past the negative cache or the replay check).

/// Marks a byte that is not in the alphabet.
const INVALID: u8 = 0xff;

/// Each byte's 6-bit value, or [`INVALID`].
const TABLE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 26 {
        t[b'A' as usize + i] = i as u8;
        t[b'a' as usize + i] = 26 + i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 10 {
        t[b'0' as usize + d] = 52 + d as u8;
        d += 1;
    }
    t[b'-' as usize] = 62;
    t[b'_' as usize] = 63;
    t
};

/// A character's 6-bit value, or [`INVALID`]. The index is a byte, so the
/// lookup needs no bounds check.
#[inline(always)]
fn sextet(c: u8) -> u8 {
    TABLE[usize::from(c)]
}

/// The 24 bits of four characters, most significant first, or `None` if
/// one is not in the alphabet.
///
/// Written out by hand, like the loops below: the module is built for size
/// (`opt-level = "s"`), where the small iterator helpers of an array loop
/// or a `zip` are not inlined, and in V8 each such call cost more than the
/// character it decodes (a third of a unique HS256 token's decoding time).
#[inline(always)]
fn quad(q: &[u8; 4]) -> Option<u32> {
    let (a, b, c, d) = (sextet(q[0]), sextet(q[1]), sextet(q[2]), sextet(q[3]));
    // Only INVALID has the top two bits set.
    if (a | b | c | d) & 0xc0 != 0 {
        return None;
    }
    Some(u32::from(a) << 18 | u32::from(b) << 12 | u32::from(c) << 6 | u32::from(d))
}

/// The decoded length of `input`, or `None` if no canonical encoding has
/// that length (empty inputs are refused: every JWT part has content).
fn decoded_len(input: &[u8]) -> Option<usize> {
    match input.len() % 4 {
        _ if input.is_empty() => None,
        1 => None,
        r => Some(input.len() / 4 * 3 + r.saturating_sub(1)),
    }
}

/// Decodes `input` into `out`, whose length must be [`decoded_len`].
fn decode_into(input: &[u8], out: &mut [u8]) -> Option<()> {
    let (mut input, mut out) = (input, out);
    while let Some((q, more_in)) = input.split_first_chunk::<4>() {
        let (o, more_out) = std::mem::take(&mut out).split_first_chunk_mut::<3>()?;
        let v = quad(q)?;
        *o = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        input = more_in;
        out = more_out;
    }
    match (input, out) {
        ([], []) => Some(()),
        (&[c0, c1], [a]) => {
            let (s0, s1) = (sextet(c0), sextet(c1));
            // 12 bits carry 8: the low 4 must be zero.
            if (s0 | s1) & 0xc0 != 0 || s1 & 0xf != 0 {
                return None;
            }
            *a = s0 << 2 | s1 >> 4;
            Some(())
        }
        (&[c0, c1, c2], [a, b]) => {
            let (s0, s1, s2) = (sextet(c0), sextet(c1), sextet(c2));
            // 18 bits carry 16: the low 2 must be zero.
            if (s0 | s1 | s2) & 0xc0 != 0 || s2 & 0x3 != 0 {
                return None;
            }
            *a = s0 << 2 | s1 >> 4;
            *b = s1 << 4 | s2 >> 2;
            Some(())
        }
        _ => None,
    }
}

/// Decodes unpadded base64url, refusing anything but its one canonical
/// spelling, and empty input.
pub fn decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; decoded_len(input)?];
    decode_into(input, &mut out)?;
    Some(out)
}

/// Whether `input` is canonical unpadded base64url (what [`decode`] would
/// accept), without keeping the bytes.
pub fn is_valid(input: &[u8]) -> bool {
    let Some(len) = decoded_len(input) else {
        return false;
    };
    // Full groups only need their characters checked; the tail also needs
    // its unused bits.
    let full = input.len() / 4 * 4;
    let (mut body, tail) = input.split_at(full);
    let mut bad = 0u8;
    while let Some((q, more)) = body.split_first_chunk::<4>() {
        bad |= sextet(q[0]) | sextet(q[1]) | sextet(q[2]) | sextet(q[3]);
        body = more;
    }
    if bad & 0xc0 != 0 {
        return false;
    }
    let mut rest = [0u8; 2];
    rest.get_mut(..len - full / 4 * 3)
        .is_some_and(|r| decode_into(tail, r).is_some())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use base64::Engine as _;

    fn reference(input: &[u8]) -> Option<Vec<u8>> {
        if input.is_empty() {
            return None;
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(input)
            .ok()
    }

    /// A small deterministic generator (xorshift), so the test needs no
    /// extra crate and fails the same way every time.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn agrees_with_the_base64_crate_on_encodings_of_every_length() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for len in 0..200 {
            for _ in 0..8 {
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
                let want = if bytes.is_empty() { None } else { Some(bytes) };
                assert_eq!(decode(text.as_bytes()), want, "{text}");
                assert_eq!(is_valid(text.as_bytes()), want.is_some(), "{text}");
            }
        }
    }

    #[test]
    fn agrees_with_the_base64_crate_on_hostile_input() {
        // Mostly alphabet characters, with padding, the standard alphabet's
        // `+` and `/`, spaces, dots and high bytes mixed in, at all lengths:
        // non-canonical tails and lone characters come up often.
        let extra = b"=+/ .\x00\xff\x80\n";
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut rng = Rng(42);
        for _ in 0..50_000 {
            let len = (rng.next() % 24) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    let r = rng.next();
                    if r.is_multiple_of(16) {
                        extra[(r >> 8) as usize % extra.len()]
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            let want = reference(&input);
            assert_eq!(decode(&input), want, "{input:?}");
            assert_eq!(is_valid(&input), want.is_some(), "{input:?}");
        }
    }

    #[test]
    fn refuses_non_canonical_tails_and_lone_characters() {
        // "QQ" is "A"; "QR" spells it with a non-zero unused bit.
        assert_eq!(decode(b"QQ"), Some(b"A".to_vec()));
        assert_eq!(decode(b"QR"), None);
        assert_eq!(decode(b"QUI"), Some(b"AB".to_vec()));
        assert_eq!(decode(b"QUJ"), None);
        assert_eq!(decode(b"QUJD"), Some(b"ABC".to_vec()));
        assert_eq!(decode(b"QUJDR"), None);
        assert_eq!(decode(b"QQ=="), None);
        assert_eq!(decode(b""), None);
        assert!(!is_valid(b"QR"));
        assert!(!is_valid(b""));
        assert!(is_valid(b"QUJD-w"));
        assert!(!is_valid(b"QUJD-_"));
    }
}
