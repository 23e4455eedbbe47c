//! The PROXY header reader: any bytes, no panic; a decoded header never claims more
//! bytes than it was given, nor more than the size caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::identity::proxy::{self, V1_MAX, V2_MAX};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Some((_, used))) = proxy::decode(bytes) {
        assert!(used <= bytes.len());
        assert!(used <= V1_MAX.max(V2_MAX));
    }
});
