//! The DATA scanner: finds the end of a message (exactly CRLF.CRLF, where the first
//! CRLF may be the one that ended the DATA command), counts its size, and spots bare LF
//! and bare CR, the material of SMTP smuggling. It never copies or rewrites bytes.

/// What to do with a bare LF or bare CR in a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLf {
    /// Refuse the message (the default): no backend ever sees it.
    Reject,
    /// Forward as received; only for peers known to send clean mail.
    Allow,
}

/// Why a message is refused after its end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    BareLf,
    BareCr,
    TooBig,
}

impl Violation {
    pub fn reply(&self) -> &'static str {
        match self {
            Violation::BareLf => "554 5.6.0 Message refused: bare LF in message body (lines must end with CRLF)",
            Violation::BareCr => "554 5.6.0 Message refused: bare CR in message body (lines must end with CRLF)",
            Violation::TooBig => "552 5.3.4 Message size exceeds fixed limit",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Violation::BareLf => "bare LF in body",
            Violation::BareCr => "bare CR in body",
            Violation::TooBig => "message too big",
        }
    }
}

/// Result of feeding one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// All bytes consumed; the message goes on.
    More,
    /// The message ended; this many bytes (terminator included) belong to it.
    End(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF).
    LineStart,
    /// `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// CR inside a line, LF expected.
    Cr,
}

#[derive(Debug, Clone)]
pub struct DataScanner {
    state: State,
    size: u64,
    max_size: u64,
    bare_lf: BareLf,
    violation: Option<Violation>,
}

impl DataScanner {
    pub fn new(max_size: u64, bare_lf: BareLf) -> Self {
        Self { state: State::LineStart, size: 0, max_size, bare_lf, violation: None }
    }

    /// The first reason to refuse the message, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Message size so far, end-of-data terminator excluded.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn feed(&mut self, buf: &[u8]) -> Scan {
        let mut i = 0;
        let mut end = None;
        while i < buf.len() {
            if self.state == State::Mid {
                // Fast path: skip ordinary text up to the next CR or LF.
                match memchr::memchr2(b'\r', b'\n', &buf[i..]) {
                    Some(off) => i += off,
                    None => {
                        i = buf.len();
                        break;
                    }
                }
            }
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::LineStart | State::Dot | State::Mid, b'\r') => {
                    if self.state == State::Dot { State::DotCr } else { State::Cr }
                }
                (State::DotCr, b'\n') => {
                    end = Some(i);
                    break;
                }
                (State::Cr, b'\n') => State::LineStart,
                (_, b'\n') => {
                    // LF not preceded by CR. What follows is not at a line start:
                    // only CRLF starts a line, so "\n.\r\n" never ends the message.
                    self.note(Violation::BareLf);
                    State::Mid
                }
                (State::Cr | State::DotCr, b'\r') => {
                    self.note(Violation::BareCr);
                    State::Cr
                }
                (State::Cr | State::DotCr, _) => {
                    self.note(Violation::BareCr);
                    State::Mid
                }
                (_, _) => State::Mid,
            };
        }
        let consumed = end.unwrap_or(i);
        self.size += consumed as u64;
        if end.is_some() {
            self.size -= 3; // ".\r\n"
        }
        if self.size > self.max_size && self.violation.is_none() {
            self.violation = Some(Violation::TooBig);
        }
        match end {
            Some(n) => {
                self.state = State::LineStart;
                Scan::End(n)
            }
            None => Scan::More,
        }
    }

    fn note(&mut self, v: Violation) {
        if self.bare_lf == BareLf::Reject && self.violation.is_none() {
            self.violation = Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8], bare_lf: BareLf) -> (Option<usize>, Option<Violation>) {
        let mut s = DataScanner::new(1 << 20, bare_lf);
        match s.feed(input) {
            Scan::End(n) => (Some(n), s.violation()),
            Scan::More => (None, s.violation()),
        }
    }

    /// Feeds the input in every possible two-way split and byte by byte; the result
    /// must not depend on how the bytes arrived.
    fn scan_split(input: &[u8]) -> (Option<usize>, Option<Violation>) {
        let whole = scan_all(input, BareLf::Reject);
        for cut in 0..=input.len() {
            let mut s = DataScanner::new(1 << 20, BareLf::Reject);
            let got = match s.feed(&input[..cut]) {
                Scan::End(n) => Some(n),
                Scan::More => match s.feed(&input[cut..]) {
                    Scan::End(n) => Some(cut + n),
                    Scan::More => None,
                },
            };
            assert_eq!((got, s.violation()), whole, "split at {cut} of {:?}", String::from_utf8_lossy(input));
        }
        let mut s = DataScanner::new(1 << 20, BareLf::Reject);
        let mut got = None;
        for (k, b) in input.iter().enumerate() {
            if let Scan::End(n) = s.feed(std::slice::from_ref(b)) {
                assert_eq!(n, 1);
                got = Some(k + 1);
                break;
            }
        }
        assert_eq!((got, s.violation()), whole, "byte by byte");
        whole
    }

    #[test]
    fn ends_only_on_crlf_dot_crlf() {
        assert_eq!(scan_split(b"Subject: x\r\n\r\nbody\r\n.\r\n"), (Some(23), None));
        assert_eq!(scan_split(b".\r\n"), (Some(3), None), "empty message");
        assert_eq!(scan_split(b"a\r\n.\r\nMAIL FROM:<x>\r\n"), (Some(6), None));
        assert_eq!(scan_split(b"..\r\n.\r\n"), (Some(7), None), "dot-stuffed line");
        assert_eq!(scan_split(b"a\r\n.x\r\n"), (None, None));
    }

    #[test]
    fn smuggling_variants_are_flagged_and_never_end_the_message() {
        for (input, v) in [
            (&b"a\n.\nMAIL FROM:<x>\r\n"[..], Violation::BareLf),
            (b"a\r\n.\nMAIL FROM:<x>\r\n", Violation::BareLf),
            (b"a\n.\r\nMAIL FROM:<x>\r\n", Violation::BareLf),
            (b"a\r.\rMAIL FROM:<x>\r\n", Violation::BareCr),
            (b"a\r\n.\rMAIL FROM:<x>\r\n", Violation::BareCr),
            (b"a\r.\r\nMAIL FROM:<x>\r\n", Violation::BareCr),
            (b"a\r\r\n", Violation::BareCr),
            (b"\n", Violation::BareLf),
        ] {
            assert_eq!(scan_split(input), (None, Some(v)), "{:?}", String::from_utf8_lossy(input));
        }
        // A real end after the smuggling attempt still ends the message, flagged.
        assert_eq!(scan_split(b"a\n.\nX\r\n.\r\n"), (Some(10), Some(Violation::BareLf)));
    }

    #[test]
    fn allow_mode_forwards_bare_lf_but_still_ends_on_crlf_dot_crlf() {
        assert_eq!(scan_all(b"a\n.\nb\r\n.\r\n", BareLf::Allow), (Some(10), None));
    }

    #[test]
    fn size_limit() {
        let mut s = DataScanner::new(10, BareLf::Reject);
        assert_eq!(s.feed(b"0123456789"), Scan::More);
        assert_eq!(s.violation(), None);
        assert_eq!(s.feed(b"\r\n.\r\n"), Scan::End(5));
        assert_eq!(s.size(), 12);
        assert_eq!(s.violation(), Some(Violation::TooBig));
        let mut s = DataScanner::new(10, BareLf::Reject);
        assert_eq!(s.feed(b"01234567\r\n.\r\n"), Scan::End(13));
        assert_eq!(s.violation(), None);
    }
}
