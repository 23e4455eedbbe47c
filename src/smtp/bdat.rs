//! BDAT (RFC 3030 CHUNKING) content: the command's arguments, and the scanner that
//! holds chunk content to the same rules as a DATA body (bare LF, bare CR and NUL by
//! the `bare_lf` policy; the size limit across chunks). Toward a backend without
//! CHUNKING the content becomes a DATA body: dot-stuffed, ended with CRLF and the dot,
//! so that no line of it can end the message early.

use super::data::{BareLf, Violation};

/// `BDAT <size> [LAST]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub size: u64,
    pub last: bool,
}

/// Parses the arguments of BDAT; `None` if they are not `size [LAST]`.
pub(crate) fn parse_args(args: &str) -> Option<Chunk> {
    let mut words = args.split_ascii_whitespace();
    let size = words.next()?;
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some(Chunk { size: size.parse().ok()?, last })
}

/// Scans the content of every chunk of one message, in order.
#[derive(Debug, Clone)]
pub struct ChunkScanner {
    policy: BareLf,
    max_size: u64,
    /// Dot-stuff for a DATA backend.
    stuff: bool,
    size: u64,
    /// The last byte passed on ended a line (or nothing was passed on yet).
    line_start: bool,
    /// The last byte was a CR whose LF has not come yet.
    cr: bool,
    violation: Option<Violation>,
}

impl ChunkScanner {
    pub fn new(max_size: u64, policy: BareLf, stuff: bool) -> Self {
        Self { policy, max_size, stuff, size: 0, line_start: true, cr: false, violation: None }
    }

    /// The first reason to refuse the message, if any. Nothing after it may be sent on.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Message size so far, as received.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Scans `buf` (content, in order) and appends what the backend gets to `out`.
    pub fn scan(&mut self, buf: &[u8], out: &mut Vec<u8>) {
        self.size += buf.len() as u64;
        if self.size > self.max_size && self.violation.is_none() {
            self.violation = Some(Violation::TooBig);
        }
        for &b in buf {
            if self.cr && b != b'\n' {
                // The CR before was bare.
                self.bare(Violation::BareCr, out);
            }
            match b {
                b'\n' if !self.cr => {
                    self.bare(Violation::BareLf, out);
                    continue;
                }
                b'\n' => {
                    self.cr = false;
                    out.push(b'\n');
                    self.line_start = true;
                    continue;
                }
                0 if self.policy != BareLf::Allow => self.refuse(Violation::Nul),
                _ => {}
            }
            if self.line_start && self.stuff && b == b'.' {
                out.push(b'.');
            }
            self.line_start = false;
            self.cr = b == b'\r';
            out.push(b);
        }
    }

    /// The bytes that end the message toward a DATA backend: the missing line end, if
    /// the content did not end with CRLF, and the dot.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.cr {
            self.bare(Violation::BareCr, out);
        }
        if self.stuff {
            if !self.line_start {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
        }
    }

    /// A bare CR (already passed on) or bare LF (not yet): refused, rewritten to CRLF,
    /// or passed on, by policy.
    fn bare(&mut self, what: Violation, out: &mut Vec<u8>) {
        match self.policy {
            BareLf::Reject => self.refuse(what),
            BareLf::Normalize => {
                if what == Violation::BareLf {
                    out.push(b'\r');
                }
                out.push(b'\n');
                self.line_start = true;
            }
            BareLf::Allow => {
                if what == Violation::BareLf {
                    out.push(b'\n');
                    self.line_start = true;
                }
            }
        }
        self.cr = false;
    }

    fn refuse(&mut self, what: Violation) {
        self.violation.get_or_insert(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(policy: BareLf, stuff: bool, chunks: &[&[u8]]) -> (Vec<u8>, Option<Violation>) {
        let mut s = ChunkScanner::new(1000, policy, stuff);
        let mut out = Vec::new();
        for c in chunks {
            s.scan(c, &mut out);
        }
        s.finish(&mut out);
        (out, s.violation())
    }

    #[test]
    fn arguments() {
        assert_eq!(parse_args("1000"), Some(Chunk { size: 1000, last: false }));
        assert_eq!(parse_args("0 last"), Some(Chunk { size: 0, last: true }));
        for bad in ["", "LAST", "-1", "1 2", "1 LAST x", "1e3", "99999999999999999999"] {
            assert_eq!(parse_args(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_data_backend_gets_a_dot_stuffed_body_that_cannot_end_early() {
        let (out, v) = run(BareLf::Reject, true, &[b"Subject: x\r\n\r\n.\r\n", b".hidden\r\nlast line"]);
        assert_eq!(v, None);
        assert_eq!(out, b"Subject: x\r\n\r\n..\r\n..hidden\r\nlast line\r\n.\r\n");
        // A line start carried across chunks, and a CR and its LF split between them.
        let (out, v) = run(BareLf::Reject, true, &[b"a\r", b"\n.b\r\n"]);
        assert_eq!((out.as_slice(), v), (&b"a\r\n..b\r\n.\r\n"[..], None));
    }

    #[test]
    fn smuggling_material_follows_the_policy() {
        assert_eq!(run(BareLf::Reject, true, &[b"a\n.\nb\r\n"]).1, Some(Violation::BareLf));
        assert_eq!(run(BareLf::Reject, false, &[b"a\r.\rb\r\n"]).1, Some(Violation::BareCr));
        assert_eq!(run(BareLf::Reject, false, &[b"a\r"]).1, Some(Violation::BareCr));
        assert_eq!(run(BareLf::Reject, false, &[b"a\0b\r\n"]).1, Some(Violation::Nul));
        let (out, v) = run(BareLf::Normalize, true, &[b"a\n.\nb\r.\rc"]);
        assert_eq!((out.as_slice(), v), (&b"a\r\n..\r\nb\r\n..\r\nc\r\n.\r\n"[..], None));
        let (out, v) = run(BareLf::Allow, false, &[b"a\n.\nb"]);
        assert_eq!((out.as_slice(), v), (&b"a\n.\nb"[..], None));
    }

    #[test]
    fn passthrough_is_unchanged_and_the_size_counts_every_chunk() {
        let (out, v) = run(BareLf::Reject, false, &[b"one\r\n", b".two\r\n"]);
        assert_eq!((out.as_slice(), v), (&b"one\r\n.two\r\n"[..], None));
        let mut s = ChunkScanner::new(10, BareLf::Reject, false);
        let mut out = Vec::new();
        s.scan(b"0123456789", &mut out);
        assert_eq!(s.violation(), None);
        s.scan(b"x", &mut out);
        assert_eq!(s.violation(), Some(Violation::TooBig));
    }

    proptest::proptest! {
        /// Whatever the bytes and however they are cut into chunks, a DATA body made of
        /// them ends only at its final dot, with no bare CR or LF (reject mode refuses
        /// them; normalize mode rewrites them).
        #[test]
        fn a_data_body_ends_only_at_its_dot(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), cut in 0usize..200) {
            for policy in [BareLf::Reject, BareLf::Normalize] {
                let mut s = ChunkScanner::new(u64::MAX, policy, true);
                let mut out = Vec::new();
                let cut = cut.min(bytes.len());
                s.scan(&bytes[..cut], &mut out);
                s.scan(&bytes[cut..], &mut out);
                s.finish(&mut out);
                if s.violation().is_some() {
                    continue;
                }
                let early = (0..out.len()).filter(|&i| out[i..].starts_with(b"\r\n.\r\n")).any(|i| i + 5 != out.len());
                proptest::prop_assert!(!early, "early end of data in {:?}", out);
                for (i, &b) in out.iter().enumerate() {
                    proptest::prop_assert!(b != b'\n' || (i > 0 && out[i - 1] == b'\r'), "bare LF in {:?}", out);
                    proptest::prop_assert!(b != b'\r' || out.get(i + 1) == Some(&b'\n'), "bare CR in {:?}", out);
                }
            }
        }
    }
}
