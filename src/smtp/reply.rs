//! Backend replies: parsing (multi-line included, bounded) and the exact bytes to relay.

use bytes::{Buf, BytesMut};
use thiserror::Error;

/// Longest reply accepted from a backend, all lines together.
pub(crate) const MAX_REPLY: usize = 64 * 1024;

/// A complete reply: its code and its lines, each re-terminated with CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    raw: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply longer than {MAX_REPLY} bytes")]
    TooLong,
}

// === impl Reply ===

impl Reply {
    /// The bytes to send to a client: the backend's reply, unchanged but for line ends.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    pub(crate) fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub(crate) fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// Lines' texts after `NNN-` / `NNN `, for reading EHLO keywords.
    pub(crate) fn lines(&self) -> impl Iterator<Item = &str> {
        self.raw
            .split(|&b| b == b'\n')
            .filter(|l| l.len() >= 4)
            .map(|l| std::str::from_utf8(&l[4..l.len() - 1]).unwrap_or(""))
    }

    /// The first line, for logs.
    pub(crate) fn first_line(&self) -> String {
        let end = self.raw.iter().position(|&b| b == b'\r').unwrap_or(self.raw.len());
        String::from_utf8_lossy(&self.raw[..end]).into_owned()
    }
}

/// Takes complete replies off the front of a receive buffer.
pub struct ReplyParser;

impl ReplyParser {
    /// `Ok(None)` until a whole reply is buffered; it is then removed from `buf`.
    pub fn parse(buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        let mut start = 0;
        let mut code = None;
        loop {
            let Some(nl) = memchr::memchr(b'\n', &buf[start..]) else {
                return if buf.len() > MAX_REPLY { Err(ReplyError::TooLong) } else { Ok(None) };
            };
            let end = start + nl + 1;
            let line = trim_eol(&buf[start..end]);
            let this_code = line_code(line)?;
            if *code.get_or_insert(this_code) != this_code {
                return Err(ReplyError::Malformed(String::from_utf8_lossy(line).into_owned()));
            }
            let last = match line.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(ReplyError::Malformed(String::from_utf8_lossy(line).into_owned())),
            };
            if end > MAX_REPLY {
                return Err(ReplyError::TooLong);
            }
            start = end;
            if last {
                let raw = normalize(&buf[..end]);
                buf.advance(end);
                return Ok(Some(Reply { code: this_code, raw }));
            }
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn line_code(line: &[u8]) -> Result<u16, ReplyError> {
    match line.get(..3) {
        Some(d) if d.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&d[0]) => {
            Ok(u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0'))
        }
        _ => Err(ReplyError::Malformed(String::from_utf8_lossy(line).into_owned())),
    }
}

/// Re-terminates every line with CRLF; a bare `NNN` line becomes `NNN ` + CRLF.
fn normalize(lines: &[u8]) -> Vec<u8> {
    // Usually there is nothing to change: one copy.
    if lines.split_inclusive(|&b| b == b'\n').all(|line| line.len() > 5 && line.ends_with(b"\r\n")) {
        return lines.to_vec();
    }
    let mut out = Vec::with_capacity(lines.len() + 2);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let line = trim_eol(line);
        out.extend_from_slice(line);
        if line.len() == 3 {
            out.push(b' ');
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Reply>, ReplyError> {
        ReplyParser::parse(&mut BytesMut::from(s))
    }

    #[test]
    fn single_and_multi_line() {
        let r = parse("250 2.1.0 Ok\r\n").unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.as_bytes(), b"250 2.1.0 Ok\r\n");
        let r = parse("250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n").unwrap().unwrap();
        assert_eq!(r.lines().collect::<Vec<_>>(), ["mx", "PIPELINING", "SIZE 100"]);
        assert_eq!(r.first_line(), "250-mx");
    }

    #[test]
    fn incomplete_waits_and_leaves_the_rest() {
        assert_eq!(parse("250-mx\r\n250 PIPE").unwrap(), None);
        let mut buf = BytesMut::from("354 go\r\n250 next\r\n");
        assert_eq!(ReplyParser::parse(&mut buf).unwrap().unwrap().code, 354);
        assert_eq!(&buf[..], b"250 next\r\n");
    }

    #[test]
    fn lf_only_and_bare_code_are_normalized() {
        let r = parse("220 hi\n").unwrap().unwrap();
        assert_eq!(r.as_bytes(), b"220 hi\r\n");
        let r = parse("250\r\n").unwrap().unwrap();
        assert_eq!(r.as_bytes(), b"250 \r\n");
    }

    #[test]
    fn malformed_and_oversized() {
        assert!(parse("hello\r\n").is_err());
        assert!(parse("250-a\r\n251 b\r\n").is_err());
        assert!(parse("250xa\r\n").is_err());
        assert!(parse("650 x\r\n").is_err());
        let long = "250-".to_string() + &"x".repeat(MAX_REPLY) + "\r\n";
        assert_eq!(parse(&long), Err(ReplyError::TooLong));
        assert_eq!(parse(&"x".repeat(MAX_REPLY + 1)), Err(ReplyError::TooLong));
    }
}
