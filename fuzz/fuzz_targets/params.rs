//! MAIL and RCPT parameters: any command line, no panic; a MAIL line rebuilt for a
//! backend is one line, ends in CRLF, and names the same path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::smtp::Capabilities;
use portcullis::smtp::command::{self, Command};
use portcullis::smtp::ehlo::Offer;
use portcullis::smtp::{mail, rcpt};

fuzz_target!(|line: &[u8]| {
    let offer = Offer { max_size: 10_000_000, starttls: false, auth: true };
    match command::parse(line) {
        Ok(Command::Mail { path, params }) => {
            if mail::check(&params, true, &offer).is_ok() {
                let mut full = line.to_vec();
                full.extend_from_slice(b"\r\n");
                for caps in [Capabilities::default(), Capabilities { size: true, eight_bit_mime: true, ..Default::default() }] {
                    let out = mail::for_backend(&caps, &full, path, &params);
                    assert!(out.ends_with(b"\r\n"));
                    assert!(!out[..out.len() - 2].contains(&b'\n') && !out[..out.len() - 2].contains(&b'\r'));
                    assert!(out.windows(path.len()).any(|w| w == path.as_bytes()));
                }
            }
        }
        Ok(Command::Rcpt { params, .. }) => {
            let _ = rcpt::check(&params, &offer);
        }
        _ => {}
    }
});
