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

/// The 6-bit values of `N` (2 to 4) characters, most significant first, or
/// `None` if one is not in the alphabet. A fixed `N` lets the loop unroll.
#[inline]
fn sextets<const N: usize>(chars: [u8; N]) -> Option<u32> {
    let mut acc = 0u32;
    let mut bad = 0u8;
    for c in chars {
        let v = TABLE[usize::from(c)];
        bad |= v;
        acc = (acc << 6) | u32::from(v & 0x3f);
    }
    // Only INVALID has the top two bits set.
    if bad & 0xc0 != 0 {
        None
    } else {
        Some(acc)
    }
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
    let mut quads = input.chunks_exact(4);
    let mut triples = out.chunks_exact_mut(3);
    for (q, o) in (&mut quads).zip(&mut triples) {
        let (&[a, b, c, d], [x, y, z]) = (q, o) else {
            return None;
        };
        let v = sextets([a, b, c, d])?;
        *x = (v >> 16) as u8;
        *y = (v >> 8) as u8;
        *z = v as u8;
    }
    let tail = quads.remainder();
    let rest = triples.into_remainder();
    match (tail, rest) {
        ([], []) => Some(()),
        (&[c0, c1], [a]) => {
            let v = sextets([c0, c1])?;
            // 12 bits carry 8: the low 4 must be zero.
            if v & 0xf != 0 {
                return None;
            }
            *a = (v >> 4) as u8;
            Some(())
        }
        (&[c0, c1, c2], [a, b]) => {
            let v = sextets([c0, c1, c2])?;
            // 18 bits carry 16: the low 2 must be zero.
            if v & 0x3 != 0 {
                return None;
            }
            *a = (v >> 10) as u8;
            *b = (v >> 2) as u8;
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
    let (body, tail) = input.split_at(full);
    if body.iter().any(|&c| TABLE[usize::from(c)] == INVALID) {
        return false;
    }
    let mut rest = [0u8; 2];
    decode_into(tail, &mut rest[..len - full / 4 * 3]).is_some()
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
                    if r % 16 == 0 {
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
