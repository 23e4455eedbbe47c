//! The client command parser: any line, no panic; a parsed MAIL/RCPT path is a slice
//! of the line, and a path the relay judge accepts as plain has no routing characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::address::{self, Destination};
use portcullis::smtp::command::{self, Command};

fuzz_target!(|line: &[u8]| {
    if let Ok(Command::Mail { path, .. } | Command::Rcpt { path, .. }) = command::parse(line) {
        if let Ok(Destination::Domain(domain)) = address::classify(path) {
            assert!(!path.starts_with('@'));
            assert!(!domain.contains(['@', '[', '%', '!']));
            assert!(!domain.ends_with('.'));
        }
    }
});
