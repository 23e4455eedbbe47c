//! The MAIL command's parameters: checked against what the client was offered, and
//! the line as the backend gets it (the client's own bytes when the backend takes
//! every parameter, otherwise rebuilt without what the backend did not offer).

use super::{Capabilities, Param, ehlo::Offer};
use thiserror::Error;

/// Why a MAIL command's parameters are refused; each has its complete reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MailRefusal {
    #[error("555 5.5.4 Error: MAIL parameters need EHLO")]
    NeedEhlo,
    #[error("501 5.5.4 Error: bad SIZE parameter")]
    BadSize,
    #[error("552 5.3.4 Message size exceeds fixed limit")]
    TooBig,
    #[error("555 5.5.4 Error: unsupported MAIL parameter")]
    Unsupported,
}

impl MailRefusal {
    pub fn reply(&self) -> String {
        self.to_string()
    }
}

/// What the client declared in its MAIL parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=`, already checked against the limit.
    pub size: Option<u64>,
}

/// Checks MAIL parameters against what was offered: SIZE (within the limit), BODY=7BIT
/// or 8BITMIME, and AUTH= (RFC 4954: accepted, not passed on). Anything else, or any
/// parameter after HELO, is refused.
pub fn check(params: &[Param<'_>], esmtp: bool, offer: &Offer) -> Result<MailParams, MailRefusal> {
    if !esmtp && !params.is_empty() {
        return Err(MailRefusal::NeedEhlo);
    }
    let mut out = MailParams::default();
    for p in params {
        let value = p.value.unwrap_or("");
        if p.keyword.eq_ignore_ascii_case("SIZE") {
            let size = value.parse::<u64>().map_err(|_| MailRefusal::BadSize)?;
            if size > offer.max_size {
                return Err(MailRefusal::TooBig);
            }
            out.size = Some(size);
        } else {
            let body = p.keyword.eq_ignore_ascii_case("BODY")
                && (value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME"));
            let auth = p.keyword.eq_ignore_ascii_case("AUTH") && p.value.is_some();
            if !body && !auth {
                return Err(MailRefusal::Unsupported);
            }
        }
    }
    Ok(out)
}

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

    const OFFER: Offer = Offer { max_size: 1000, starttls: false, auth: false };

    #[test]
    fn parameters_checked_against_the_offer() {
        let ok = |params: &[Param<'_>]| check(params, true, &OFFER);
        assert_eq!(ok(&[param("SIZE", "1000"), param("body", "8bitmime")]), Ok(MailParams { size: Some(1000) }));
        assert_eq!(ok(&[param("SIZE", "1001")]), Err(MailRefusal::TooBig));
        assert_eq!(ok(&[param("SIZE", "-1")]), Err(MailRefusal::BadSize));
        assert_eq!(ok(&[param("BODY", "BINARYMIME")]), Err(MailRefusal::Unsupported));
        assert_eq!(ok(&[param("AUTH", "<>")]), Ok(MailParams::default()));
        assert_eq!(ok(&[Param { keyword: "AUTH", value: None }]), Err(MailRefusal::Unsupported));
        assert_eq!(check(&[param("SIZE", "1")], false, &OFFER), Err(MailRefusal::NeedEhlo));
        assert_eq!(check(&[], false, &OFFER), Ok(MailParams::default()));
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
