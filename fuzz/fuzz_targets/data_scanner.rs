//! The DATA scanner: the end of data is found exactly where CRLF.CRLF first appears
//! (counting the CRLF of the DATA command), however the bytes are split; in normalize
//! mode the output holds clean CRLF lines and at most one end of data, at its end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::smtp::{BareLf, DataScanner, Scan};

fuzz_target!(|input: (u16, Vec<u8>)| {
    let (cut, body) = input;
    let cut = usize::from(cut) % (body.len() + 1);

    // Reject mode, in two pieces.
    let mut s = DataScanner::new(u64::MAX, BareLf::Reject);
    let end = match s.feed(&body[..cut]) {
        Scan::End(n) => Some(n),
        Scan::More => match s.feed(&body[cut..]) {
            Scan::End(n) => Some(cut + n),
            Scan::More => None,
        },
    };
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(&body);
    let first = framed.windows(5).position(|w| w == b"\r\n.\r\n").map(|i| i + 5 - 2);
    assert_eq!(end, first);

    // Normalize mode.
    let mut s = DataScanner::new(u64::MAX, BareLf::Normalize);
    let mut out = Vec::new();
    let ended = matches!(s.normalize(&body, &mut out), Scan::End(_));
    if s.violation().is_some() {
        return; // refused (NUL): nothing of it is forwarded
    }
    assert!(!out.contains(&0));
    for (i, &b) in out.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'));
        }
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r');
        }
    }
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(&out);
    let ends: Vec<usize> = framed.windows(5).enumerate().filter(|(_, w)| *w == b"\r\n.\r\n").map(|(i, _)| i).collect();
    if ended {
        assert_eq!(ends, vec![framed.len() - 5]);
    } else {
        assert!(ends.is_empty());
    }
});
