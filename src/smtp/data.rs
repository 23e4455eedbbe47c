//! The DATA scanner: finds the end of a message (exactly CRLF.CRLF, where the first
//! CRLF may be the one that ended the DATA command), counts its size, and handles the
//! material of SMTP smuggling — bare LF, bare CR and NUL — by policy: refuse the
//! message, pass it on as received, or rewrite stray line ends so that no backend can
//! read a second message into it. Only the rewriting mode copies bytes.

/// What to do with a bare LF or bare CR in a message body. A NUL byte refuses the
/// message in every mode but `Allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLf {
    /// Refuse the message (the default): no backend ever sees it.
    Reject,
    /// Forward as received; only for peers known to send clean mail.
    Allow,
    /// Rewrite stray CR and LF to CRLF, and dot-stuff a lone dot that such a rewrite
    /// would turn into an end of data.
    Normalize,
}

/// Why a message is refused after its end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    BareLf,
    BareCr,
    Nul,
    TooBig,
}

impl Violation {
    pub(crate) fn reply(&self) -> &'static str {
        match self {
            Violation::BareLf => "554 5.6.0 Message refused: bare LF in message body (lines must end with CRLF)",
            Violation::BareCr => "554 5.6.0 Message refused: bare CR in message body (lines must end with CRLF)",
            Violation::Nul => "554 5.6.0 Message refused: NUL character in message body",
            Violation::TooBig => "552 5.3.4 Message size exceeds fixed limit",
        }
    }

    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Violation::BareLf => "bare LF in body",
            Violation::BareCr => "bare CR in body",
            Violation::Nul => "NUL in body",
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
    /// At the start of a line; `genuine` if the line break before was a real CRLF.
    LineStart { genuine: bool },
    /// `.` at the start of a line (held back in normalize mode).
    Dot { genuine: bool },
    /// `.` CR at the start of a line (held back in normalize mode).
    DotCr { genuine: bool },
    /// Inside a line.
    Mid,
    /// CR inside a line, LF expected (held back in normalize mode).
    Cr,
}

#[derive(Debug, Clone)]
pub struct DataScanner {
    state: State,
    size: u64,
    max_size: u64,
    policy: BareLf,
    violation: Option<Violation>,
}

impl DataScanner {
    pub fn new(max_size: u64, policy: BareLf) -> Self {
        Self { state: State::LineStart { genuine: true }, size: 0, max_size, policy, violation: None }
    }

    /// Whether [`DataScanner::normalize`] must be used instead of [`DataScanner::feed`].
    pub(crate) fn rewrites(&self) -> bool {
        self.policy == BareLf::Normalize
    }

    /// The first reason to refuse the message, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Message size so far as received, end-of-data terminator excluded.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Scans without rewriting (reject and allow modes): forward `buf[..n]` as is.
    pub fn feed(&mut self, buf: &[u8]) -> Scan {
        self.run(buf, None)
    }

    /// Scans and appends the rewritten bytes to `out` (normalize mode).
    pub fn normalize(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Scan {
        self.run(buf, Some(out))
    }

    fn run(&mut self, buf: &[u8], mut out: Option<&mut Vec<u8>>) -> Scan {
        let mut i = 0;
        let mut end = None;
        while i < buf.len() {
            if self.state == State::Mid {
                // Fast path: ordinary text up to the next CR, LF or NUL.
                let run = memchr::memchr3(b'\r', b'\n', 0, &buf[i..]).unwrap_or(buf.len() - i);
                // A CRLF followed by anything but a dot: after it, the next line's first
                // byte means what it would inside a line, so the line goes on as one.
                let p = i + run;
                let line_end = buf.get(p..p + 3).is_some_and(|t| t[0] == b'\r' && t[1] == b'\n' && t[2] != b'.');
                let through = if line_end { p + 2 } else { p };
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(&buf[i..through]);
                }
                i = through;
                if line_end {
                    continue;
                }
                if i == buf.len() {
                    break;
                }
            }
            let b = buf[i];
            i += 1;
            if self.step(b, &mut out) {
                end = Some(i);
                break;
            }
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
                self.state = State::LineStart { genuine: true };
                Scan::End(n)
            }
            None => Scan::More,
        }
    }

    /// One byte through the state machine; true at the end of the message.
    fn step(&mut self, b: u8, out: &mut Option<&mut Vec<u8>>) -> bool {
        let mut emit = |bytes: &[u8]| {
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(bytes);
            }
        };
        if b == 0 && self.policy != BareLf::Allow && self.violation.is_none() {
            // No message may hold NUL (RFC 5321 2.3.8, RFC 6152), not even rewritten:
            // dropping it could join "." and CRLF into an end of data.
            self.violation = Some(Violation::Nul);
        }
        // For framing, NUL is an ordinary byte: ".\r\0\n" is no end of data.
        self.state = match (self.state, b) {
            (State::LineStart { genuine }, b'.') => State::Dot { genuine },
            (State::LineStart { .. } | State::Mid, b'\r') => State::Cr,
            (State::Dot { genuine }, b'\r') => State::DotCr { genuine },
            (State::DotCr { genuine: true }, b'\n') => {
                emit(b".\r\n");
                return true;
            }
            (State::DotCr { genuine: false }, b'\n') => {
                // CRLF.CRLF only counts after a real CRLF; this lone dot is text.
                self.note(Violation::BareLf);
                emit(b"..\r\n");
                State::LineStart { genuine: true }
            }
            (State::Cr, b'\n') => {
                emit(b"\r\n");
                State::LineStart { genuine: true }
            }
            (State::Dot { .. }, b'\n') => {
                // A lone dot ended by a stray LF: stuffed, never an end of data.
                self.note(Violation::BareLf);
                emit(b"..\r\n");
                State::LineStart { genuine: false }
            }
            (State::LineStart { .. } | State::Mid, b'\n') => {
                self.note(Violation::BareLf);
                emit(b"\r\n");
                State::LineStart { genuine: false }
            }
            (State::DotCr { .. }, _) => {
                self.note(Violation::BareCr);
                emit(b"..\r\n");
                return self.restep(b, out);
            }
            (State::Cr, _) => {
                self.note(Violation::BareCr);
                emit(b"\r\n");
                return self.restep(b, out);
            }
            (State::Dot { .. }, _) => {
                emit(&[b'.', b]);
                State::Mid
            }
            (_, _) => {
                emit(&[b]);
                State::Mid
            }
        };
        false
    }

    /// A byte that follows a stray CR starts a new (not genuine) line.
    fn restep(&mut self, b: u8, out: &mut Option<&mut Vec<u8>>) -> bool {
        self.state = State::LineStart { genuine: false };
        self.step(b, out)
    }

    fn note(&mut self, v: Violation) {
        if self.policy == BareLf::Reject && self.violation.is_none() {
            self.violation = Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The state machine alone, a byte at a time: what the fast paths must agree with.
    fn reference(input: &[u8], policy: BareLf) -> (Option<usize>, Option<Violation>, u64, Vec<u8>) {
        let mut s = DataScanner::new(1 << 20, policy);
        let mut out = Vec::new();
        let mut sink = (policy == BareLf::Normalize).then_some(&mut out);
        let mut end = None;
        for (i, &b) in input.iter().enumerate() {
            if s.step(b, &mut sink) {
                end = Some(i + 1);
                break;
            }
        }
        s.size = end.map_or(input.len() as u64, |n| n as u64 - 3);
        (end, s.violation, s.size, out)
    }

    fn scanned(input: &[u8], cut: usize, policy: BareLf) -> (Option<usize>, Option<Violation>, u64, Vec<u8>) {
        let mut s = DataScanner::new(1 << 20, policy);
        let mut out = Vec::new();
        let mut feed = |s: &mut DataScanner, part: &[u8]| match policy {
            BareLf::Normalize => s.normalize(part, &mut out),
            _ => s.feed(part),
        };
        let end = match feed(&mut s, &input[..cut]) {
            Scan::End(n) => Some(n),
            Scan::More => match feed(&mut s, &input[cut..]) {
                Scan::End(n) => Some(cut + n),
                Scan::More => None,
            },
        };
        (end, s.violation, s.size, out)
    }

    proptest! {
        /// Inputs of the bytes that matter between stretches of plain lines, in every
        /// mode, cut anywhere: the fast paths end, count, refuse and rewrite exactly as
        /// the state machine does byte by byte.
        #[test]
        fn fast_paths_agree_with_the_state_machine(
            input in proptest::collection::vec(
                prop_oneof![
                    // Plain text around a CRLF: the fast paths' ground.
                    8 => Just(&b"abc\r\nxyz"[..]),
                    2 => Just(&b"."[..]),
                    2 => Just(&b"\r"[..]),
                    2 => Just(&b"\n"[..]),
                    1 => Just(&b"\0"[..]),
                    1 => Just(&b"\r\n.\r\n"[..]),
                    1 => Just(&b"\r\n."[..]),
                ],
                0..400,
            ).prop_map(|pieces| pieces.concat()),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(input.len() + 1);
            for policy in [BareLf::Reject, BareLf::Allow, BareLf::Normalize] {
                prop_assert_eq!(scanned(&input, cut, policy), reference(&input, policy), "{:?} cut at {}", policy, cut);
            }
        }
    }

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

    fn normalized(input: &[u8]) -> (Option<usize>, Vec<u8>) {
        let mut s = DataScanner::new(1 << 20, BareLf::Normalize);
        let mut out = Vec::new();
        let end = match s.normalize(input, &mut out) {
            Scan::End(n) => Some(n),
            Scan::More => None,
        };
        assert_eq!(s.violation(), None, "normalize mode refuses nothing");
        (end, out)
    }

    #[test]
    fn normalize_rewrites_stray_line_ends_and_stuffs_lone_dots() {
        assert_eq!(normalized(b"a\r\nb\r\n.\r\n"), (Some(9), b"a\r\nb\r\n.\r\n".to_vec()));
        assert_eq!(normalized(b"a\nb\r\n.\r\n"), (Some(8), b"a\r\nb\r\n.\r\n".to_vec()));
        assert_eq!(normalized(b"a\rb\r\n.\r\n"), (Some(8), b"a\r\nb\r\n.\r\n".to_vec()));
        // The smuggling shapes: the lone dot becomes "..", so no second message appears.
        assert_eq!(normalized(b"a\n.\nMAIL FROM:<x>\r\n"), (None, b"a\r\n..\r\nMAIL FROM:<x>\r\n".to_vec()));
        assert_eq!(normalized(b"a\n.\r\nMAIL FROM:<x>\r\n"), (None, b"a\r\n..\r\nMAIL FROM:<x>\r\n".to_vec()));
        assert_eq!(normalized(b"a\r\n.\nMAIL FROM:<x>\r\n"), (None, b"a\r\n..\r\nMAIL FROM:<x>\r\n".to_vec()));
        assert_eq!(normalized(b"a\r.\rMAIL FROM:<x>\r\n"), (None, b"a\r\n..\r\nMAIL FROM:<x>\r\n".to_vec()));
        assert_eq!(normalized(b".x\r\n..\r\n.\r\n"), (Some(11), b".x\r\n..\r\n.\r\n".to_vec()));
    }

    #[test]
    fn nul_is_refused_and_is_no_line_end() {
        assert_eq!(scan_split(b"a\0b\r\n.\r\n"), (Some(8), Some(Violation::Nul)));
        // Found by fuzzing: a NUL between ".\r" and "\n" must not make an end of data.
        assert_eq!(scan_split(b".\r\0\n\n"), (None, Some(Violation::Nul)));
        assert_eq!(scan_split(b"x\r\n.\0\r\n"), (None, Some(Violation::Nul)));
        let mut s = DataScanner::new(1 << 20, BareLf::Normalize);
        assert_eq!(s.normalize(b"x\r\n.\0\r\n", &mut Vec::new()), Scan::More);
        assert_eq!(s.violation(), Some(Violation::Nul));
        let mut s = DataScanner::new(1 << 20, BareLf::Allow);
        assert_eq!(s.feed(b".\r\0\n\n"), Scan::More);
        assert_eq!(s.violation(), None);
    }

    /// Feeding in pieces gives the same output as feeding whole.
    #[test]
    fn normalize_does_not_depend_on_chunking() {
        let input = b"x\r\n.\r\ra\n.\n\r.\r\n.\r\n.\r\n";
        let whole = normalized(input);
        for cut in 0..input.len() {
            let mut s = DataScanner::new(1 << 20, BareLf::Normalize);
            let mut out = Vec::new();
            let end = match s.normalize(&input[..cut], &mut out) {
                Scan::End(n) => Some(n),
                Scan::More => match s.normalize(&input[cut..], &mut out) {
                    Scan::End(n) => Some(cut + n),
                    Scan::More => None,
                },
            };
            assert_eq!((end, out), whole, "cut at {cut}");
        }
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
