//! Just enough PEM (RFC 7468) for certificates and keys: the label and the
//! DER bytes of each block. No ASN.1 parsing beyond what callers ask for.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// One `-----BEGIN LABEL-----` … `-----END LABEL-----` block.
#[derive(Clone, PartialEq, Eq)]
pub struct PemBlock {
    /// The label, e.g. `CERTIFICATE`, `PRIVATE KEY`, `PUBLIC KEY`.
    pub label: String,
    /// The decoded body.
    pub der: Vec<u8>,
}

impl std::fmt::Debug for PemBlock {
    /// Never prints the body: it may be a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PemBlock({}, {} bytes)", self.label, self.der.len())
    }
}

/// Every PEM block in `text`, in order; text outside blocks (such as the
/// `subject=`/`issuer=` lines `openssl x509` prints) is ignored. Encrypted
/// PEM (RFC 1421 headers such as `Proc-Type:`) is refused: decrypt it with
/// `openssl pkey` first.
pub fn parse(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim();
        match current.take() {
            None => {
                if let Some(label) = boundary(line, "BEGIN") {
                    current = Some((label.to_owned(), String::new()));
                }
            }
            Some((label, mut body)) => {
                if let Some(end) = boundary(line, "END") {
                    if end != label {
                        return Err(format!("PEM block BEGIN {label} ends with END {end}"));
                    }
                    let der = STANDARD
                        .decode(body.as_bytes())
                        .map_err(|_| format!("PEM block {label} is not valid base64"))?;
                    blocks.push(PemBlock { label, der });
                } else if line.contains(':') {
                    return Err(format!(
                        "PEM block {label} has headers (encrypted?); decrypt it first, e.g. with `openssl pkey`"
                    ));
                } else {
                    body.extend(line.chars().filter(|c| !c.is_whitespace()));
                    current = Some((label, body));
                }
            }
        }
    }
    if let Some((label, _)) = current {
        return Err(format!("PEM block {label} has no END line"));
    }
    Ok(blocks)
}

fn boundary<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
    line.strip_prefix("-----")?
        .strip_prefix(kind)?
        .strip_prefix(' ')?
        .strip_suffix("-----")
}

/// Encodes DER as a PEM block with 64-character lines (RFC 7468 §2).
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Checks that `der` is exactly one DER SEQUENCE (tag 0x30, definite
/// length covering the rest of the input): the outer shape of a certificate,
/// a PKCS#8 key or an SPKI. Catches a PEM file given where DER is expected,
/// and trailing garbage.
pub fn check_sequence(der: &[u8]) -> Result<(), String> {
    let (&tag, rest) = der.split_first().ok_or("empty input")?;
    if tag != 0x30 {
        return Err(format!(
            "does not start with a DER SEQUENCE (first byte 0x{tag:02x}, want 0x30)"
        ));
    }
    let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("unsupported or truncated DER length".into());
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if len != rest.len() {
        return Err(format!(
            "DER SEQUENCE length {len} does not match the {} bytes that follow",
            rest.len()
        ));
    }
    Ok(())
}

/// One DER element: its tag byte and its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Element<'a> {
    /// The identifier octet (0x30 SEQUENCE, 0x02 INTEGER, ...). Multi-byte
    /// tags are refused by [`element`].
    pub tag: u8,
    /// The content octets.
    pub content: &'a [u8],
}

/// Reads one DER element (definite length, at most 4 length octets) from the
/// front of `input`; returns it and what follows it.
pub fn element(input: &[u8]) -> Result<(Element<'_>, &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("truncated DER: no element")?;
    if tag & 0x1f == 0x1f {
        return Err(format!("unsupported DER tag 0x{tag:02x}"));
    }
    let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 {
            return Err("indefinite length (BER, not DER)".into());
        }
        if n > 4 || rest.len() < n {
            return Err("unsupported or truncated DER length".into());
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if len > rest.len() {
        return Err(format!(
            "DER element length {len} is more than the {} bytes that follow",
            rest.len()
        ));
    }
    let (content, after) = rest.split_at(len);
    Ok((Element { tag, content }, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let der: Vec<u8> = (0..200u8).collect();
        let text = format!("junk\n{}more\n", encode("CERTIFICATE", &der));
        let blocks = parse(&text).unwrap_or_default();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].label, "CERTIFICATE");
        assert_eq!(blocks[0].der, der);
    }

    #[test]
    fn refuses_mismatched_and_unterminated_blocks() {
        assert!(parse("-----BEGIN A-----\nAAAA\n-----END B-----\n").is_err());
        assert!(parse("-----BEGIN A-----\nAAAA\n").is_err());
        assert!(
            parse("-----BEGIN A-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END A-----\n").is_err()
        );
    }

    #[test]
    fn sequence_check() {
        assert!(check_sequence(&[0x30, 0x02, 0x05, 0x00]).is_ok());
        assert!(check_sequence(&[0x30, 0x81, 0x02, 0x05, 0x00]).is_ok());
        assert!(check_sequence(&[0x30, 0x03, 0x05, 0x00]).is_err());
        assert!(check_sequence(&[0x31, 0x00]).is_err());
        assert!(check_sequence(b"-----BEGIN").is_err());
        assert!(check_sequence(&[]).is_err());
    }
}
