//! BDAT content turned into a DATA body: whatever the bytes and however they are cut
//! into chunks, the body ends only at its final dot, and in reject mode no bare LF or
//! bare CR gets through.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::smtp::BareLf;
use portcullis::smtp::bdat::ChunkScanner;

fuzz_target!(|input: (u8, Vec<u8>)| {
    let (cut, bytes) = input;
    for policy in [BareLf::Reject, BareLf::Normalize] {
        let mut scanner = ChunkScanner::new(u64::MAX, policy, true);
        let mut out = Vec::new();
        let cut = (cut as usize).min(bytes.len());
        scanner.scan(&bytes[..cut], &mut out);
        scanner.scan(&bytes[cut..], &mut out);
        scanner.finish(&mut out);
        if scanner.violation().is_some() {
            continue;
        }
        // The only end of data is the last five bytes (or the whole body when empty).
        let ends: Vec<usize> = (0..out.len().saturating_sub(2)).filter(|&i| out[i..].starts_with(b"\r\n.\r\n")).collect();
        assert!(ends.iter().all(|&i| i + 5 == out.len()), "early end of data in {out:?}");
        assert!(out.ends_with(b".\r\n"));
        // Every LF comes after a CR, every CR before an LF.
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF in {out:?}");
            }
            if b == b'\r' {
                assert!(out.get(i + 1) == Some(&b'\n'), "bare CR in {out:?}");
            }
        }
    }
});
