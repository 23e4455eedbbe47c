//! MAIL and RCPT parameters: any command line, no panic; a MAIL line rebuilt for a
//! backend is one line, ends in CRLF, and names the same path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::smtp::Capabilities;
use portcullis::smtp::command::{self, Command};
use portcullis::smtp::ehlo::Offer;
use portcullis::smtp::{mail, rcpt};

fuzz_target!(|line: &[u8]| {
    let offer = Offer { max_size: 10_000_000, starttls: false, auth: true, dsn: true, smtputf8: true, binarymime: true, held: false };
    match command::parse(line) {
        Ok(Command::Mail { path, params }) => {
            if mail::check(path, &params, true, &offer).is_ok() {
                let mut full = line.to_vec();
                full.extend_from_slice(b"\r\n");
                let all = Capabilities { size: true, eight_bit_mime: true, dsn: true, smtputf8: true, ..Default::default() };
                for caps in [Capabilities::default(), all] {
                    let Ok(out) = mail::for_backend(&caps, &full, path, &params) else { continue };
                    assert!(out.ends_with(b"\r\n"));
                    assert!(!out[..out.len() - 2].contains(&b'\n') && !out[..out.len() - 2].contains(&b'\r'));
                    assert!(out.windows(path.len()).any(|w| w == path.as_bytes()));
                }
            }
        }
        Ok(Command::Rcpt { path, params }) => {
            let _ = rcpt::check(&params, &offer);
            // UTF-8 paths: the relay judge never takes a look-alike or routed form as plain.
            if let Ok(portcullis::policy::Destination::Domain(domain)) = portcullis::policy::address::classify_utf8(path) {
                assert!(domain.is_ascii() && !domain.contains(['@', '%', '!', '[']));
            }
        }
        _ => {}
    }
});
