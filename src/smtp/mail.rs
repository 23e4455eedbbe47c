//! The MAIL command as the backend gets it: the client's own bytes when the backend
//! takes every parameter, otherwise rebuilt without what the backend did not offer.

use super::{Capabilities, Param};

/// `line` is the client's MAIL line (CRLF included), already checked: its parameters
/// are SIZE, BODY=7BIT|8BITMIME and AUTH=. AUTH= is never passed on (the backend did
/// not see the client's AUTH); SIZE and BODY only when the backend offers them.
pub fn for_backend(caps: &Capabilities, line: &[u8], path: &str, params: &[Param<'_>]) -> Vec<u8> {
    let keep = |p: &Param<'_>| {
        if p.keyword.eq_ignore_ascii_case("SIZE") {
            caps.size
        } else if p.keyword.eq_ignore_ascii_case("BODY") {
            caps.eight_bit_mime
        } else {
            false
        }
    };
    if params.iter().all(keep) {
        return line.to_vec();
    }
    let mut out = format!("MAIL FROM:<{path}>");
    for p in params.iter().filter(|p| keep(p)) {
        out.push(' ');
        out.push_str(p.keyword);
        out.push('=');
        out.push_str(p.value.unwrap_or(""));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param<'a>(keyword: &'a str, value: &'a str) -> Param<'a> {
        Param { keyword, value: Some(value) }
    }

    #[test]
    fn client_bytes_when_everything_is_offered() {
        let caps = Capabilities { size: true, eight_bit_mime: true, ..Capabilities::default() };
        let line = b"MAIL FROM:<a@b> size=10 BODY=8BITMIME\r\n";
        let params = [param("size", "10"), param("BODY", "8BITMIME")];
        assert_eq!(for_backend(&caps, line, "a@b", &params), line.to_vec());
    }

    #[test]
    fn unoffered_and_auth_parameters_are_dropped() {
        let caps = Capabilities { size: true, ..Capabilities::default() };
        let params = [param("SIZE", "10"), param("BODY", "8BITMIME"), param("AUTH", "<>")];
        let line = b"MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME AUTH=<>\r\n";
        assert_eq!(for_backend(&caps, line, "a@b", &params), b"MAIL FROM:<a@b> SIZE=10\r\n".to_vec());
    }
}
