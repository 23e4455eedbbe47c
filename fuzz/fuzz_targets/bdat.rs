//! BDAT content, read as a client sends it (`BDAT n [LAST]` lines, each followed by its
//! n bytes; input that is not framed so is one chunk). Properties: the scanner's output
//! and verdict do not depend on how the content is cut into chunks (as sent, whole,
//! byte by byte); passed through, clean content is unchanged; made a DATA body, it
//! un-stuffs back to the content, and the DATA reader finds its end exactly at its
//! last byte, with no bare CR or LF and no earlier CRLF.CRLF, in reject and normalize
//! modes alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::smtp::bdat::ChunkScanner;
use portcullis::smtp::command::{self, Command};
use portcullis::smtp::{BareLf, DataScanner, Scan, Violation};

fuzz_target!(|input: &[u8]| {
    let chunks = bdat_chunks(input).unwrap_or_else(|| vec![input]);
    let content = chunks.concat();
    let whole = [content.as_slice()];
    let bytes: Vec<&[u8]> = content.chunks(1).collect();
    for policy in [BareLf::Reject, BareLf::Normalize, BareLf::Allow] {
        for stuff in [true, false] {
            let (out, violation) = scan(policy, stuff, u64::MAX, &chunks);
            for cut in [&whole[..], &bytes] {
                assert_eq!(scan(policy, stuff, u64::MAX, cut), (out.clone(), violation), "{policy:?} {stuff}");
            }
            // Over the size limit: refused however it is cut (the reason given may be
            // another refusal met first).
            if let Some(max) = (content.len() as u64).checked_sub(1) {
                for cut in [&chunks[..], &whole, &bytes] {
                    assert!(scan(policy, stuff, max, cut).1.is_some(), "{policy:?} {stuff}: size limit missed");
                }
            }
            if violation.is_some() {
                continue;
            }
            match (policy, stuff) {
                (BareLf::Reject, false) | (BareLf::Allow, false) => assert_eq!(out, content, "passed through"),
                (BareLf::Reject, true) => {
                    let mut lines = content.clone();
                    if !lines.is_empty() && !lines.ends_with(b"\r\n") {
                        lines.extend_from_slice(b"\r\n");
                    }
                    assert_eq!(unstuff(&out), lines);
                    a_whole_data_body(&out);
                }
                (BareLf::Normalize, true) => a_whole_data_body(&out),
                _ => {}
            }
        }
    }
});

/// The chunks of `BDAT n [LAST]` framing (a short last chunk taken as it is), or `None`
/// if the input does not start with a BDAT command.
fn bdat_chunks(mut input: &[u8]) -> Option<Vec<&[u8]>> {
    let mut chunks = Vec::new();
    while let Some(crlf) = input.windows(2).position(|w| w == b"\r\n") {
        let Ok(Command::Bdat(chunk)) = command::parse(&input[..crlf]) else { break };
        input = &input[crlf + 2..];
        let size = usize::try_from(chunk.size).unwrap_or(usize::MAX).min(input.len());
        chunks.push(&input[..size]);
        input = &input[size..];
        if chunk.last {
            break;
        }
    }
    (!chunks.is_empty()).then_some(chunks)
}

fn scan(policy: BareLf, stuff: bool, max_size: u64, chunks: &[&[u8]]) -> (Vec<u8>, Option<Violation>) {
    let mut scanner = ChunkScanner::new(max_size, policy, stuff);
    let mut out = Vec::new();
    for chunk in chunks {
        scanner.scan(chunk, &mut out);
    }
    scanner.finish(&mut out);
    assert_eq!(scanner.size(), chunks.iter().map(|c| c.len() as u64).sum::<u64>());
    (out, scanner.violation())
}

/// A DATA body as sent: one message, ending exactly at its last byte.
fn a_whole_data_body(body: &[u8]) {
    let mut reader = DataScanner::new(u64::MAX, BareLf::Reject);
    assert_eq!(reader.feed(body), Scan::End(body.len()), "{body:?}");
    assert_eq!(reader.violation(), None, "{body:?}");
    // The same, without the reader: CRLF.CRLF only at the end, every CR with its LF.
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(body);
    let ends: Vec<usize> = framed.windows(5).enumerate().filter(|(_, w)| *w == b"\r\n.\r\n").map(|(i, _)| i).collect();
    assert_eq!(ends, vec![framed.len() - 5], "{body:?}");
    for (i, &b) in body.iter().enumerate() {
        assert!(b != b'\n' || i > 0 && body[i - 1] == b'\r', "bare LF in {body:?}");
        assert!(b != b'\r' || body.get(i + 1) == Some(&b'\n'), "bare CR in {body:?}");
    }
}

/// The lines of a dot-stuffed DATA body, its final dot removed and the added dot of
/// each line that starts with one.
fn unstuff(body: &[u8]) -> Vec<u8> {
    let body = body.strip_suffix(b".\r\n").expect("a DATA body ends with its dot");
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            assert!(line.starts_with(b".."), "a line starting with an unstuffed dot: {line:?}");
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}
