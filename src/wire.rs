//! The proxy-wasm map encoding, as pure code: a little-endian u32 count,
//! then a (key length, value length) u32 pair per entry, then each key and
//! each value followed by a NUL byte. Envoy uses it for header maps, gRPC
//! metadata and map-typed properties.

/// Decodes the encoding, checking every length against the buffer (`None`
/// when it does not add up). Never panics.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |i: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(i..i.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let n = u32_at(0)?;
    let mut p = n.checked_mul(8)?.checked_add(4)?;
    if p > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ks = u32_at(4 + i * 8)?;
        let vs = u32_at(8 + i * 8)?;
        let k = bytes.get(p..p.checked_add(ks)?)?;
        p = p.checked_add(ks)?.checked_add(1)?;
        let v = bytes.get(p..p.checked_add(vs)?)?;
        p = p.checked_add(vs)?.checked_add(1)?;
        out.push((k, v));
    }
    Some(out)
}

/// Encodes pairs in the same format.
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let n = pairs.clone().count();
    let mut out = Vec::with_capacity(4 + n * 10);
    out.extend_from_slice(&u32::try_from(n).unwrap_or(0).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(0).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn round_trip_and_truncation_never_panics() {
        let pairs: Vec<(&[u8], &[u8])> =
            vec![(b":path", b"/x"), (b"x-bin", b"\xff\xfeok"), (b"", b"")];
        let enc = encode_pairs(pairs.iter().copied());
        assert_eq!(decode_pairs(&enc).unwrap(), pairs);
        for cut in 0..enc.len() {
            let _ = decode_pairs(&enc[..cut]);
        }
        assert!(decode_pairs(&[255, 255, 255, 255]).is_none());
        let mut bad = enc.clone();
        bad[4] = 200;
        assert!(decode_pairs(&bad).is_none());
    }
}
