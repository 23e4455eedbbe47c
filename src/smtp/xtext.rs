//! xtext (RFC 3461 section 4): the encoding of XCLIENT and XFORWARD attribute values.

/// Writes `value` xtext-encoded (RFC 3461 4): `!`..=`~` except `+` and `=` as is,
/// others as `+HH`; runs of plain bytes at once.
pub(crate) fn write(out: &mut impl std::fmt::Write, value: &str) -> std::fmt::Result {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = value.as_bytes();
    let plain = |b: u8| (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=';
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if plain(b) {
            continue;
        }
        // Runs of plain bytes are ASCII, so always UTF-8.
        out.write_str(std::str::from_utf8(&bytes[from..i]).unwrap_or_default())?;
        let hex = [b'+', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]];
        out.write_str(std::str::from_utf8(&hex).unwrap_or_default())?;
        from = i + 1;
    }
    out.write_str(std::str::from_utf8(&bytes[from..]).unwrap_or_default())
}

pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let _ = write(&mut out, value);
    out
}

/// Decodes xtext; `None` if a `+` is not followed by two upper-case hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = bytes.get(i + 1..i + 3)?;
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            out.push(digit(hex[0])? << 4 | digit(hex[1])?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_specials() {
        assert_eq!(encode("mail.example.com"), "mail.example.com");
        assert_eq!(encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(encode("[UNAVAILABLE]"), "[UNAVAILABLE]");
        assert_eq!(encode("é\x7f\r"), "+C3+A9+7F+0D");
    }

    #[test]
    fn round_trips() {
        for s in ["", "plain", "a+b=c d", "tab\there", "ünï", "+++===", "~!"] {
            assert_eq!(decode(&encode(s)).unwrap(), s.as_bytes());
        }
    }

    #[test]
    fn rejects_bad_escapes() {
        assert_eq!(decode("+2"), None);
        assert_eq!(decode("+zz"), None);
        assert_eq!(decode("+2b"), None);
    }
}
