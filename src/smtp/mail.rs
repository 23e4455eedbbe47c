//! The MAIL command's parameters: checked against what the client was offered, and
//! the line as the backend gets it (the client's own bytes when the backend takes
//! every parameter, otherwise rebuilt without what it did not offer and may be left
//! out; a parameter that may not be left out is refused instead).

use super::{Capabilities, Param, dsn, ehlo::Offer};
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
    #[error("501 5.5.4 Error: MAIL parameter given twice")]
    Duplicate,
    #[error("501 5.5.4 Error: bad RET parameter")]
    BadRet,
    #[error("501 5.5.4 Error: bad ENVID parameter")]
    BadEnvid,
    #[error("555 5.5.4 Error: SMTPUTF8 takes no value")]
    BadSmtpUtf8,
    #[error("553 5.6.7 Error: a non-ASCII address needs SMTPUTF8")]
    NeedSmtpUtf8,
    /// The backend this session reached does not support what the client was offered
    /// (it failed over to one that supports less): try again later.
    #[error("451 4.3.0 Error: the mail server cannot take this transaction now, try again later")]
    BackendLacks,
}

impl MailRefusal {
    pub(crate) fn reply(&self) -> String {
        self.to_string()
    }
}

/// What the client declared in its MAIL parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=`, already checked against the limit.
    pub size: Option<u64>,
    /// `SMTPUTF8`: addresses in this transaction may be UTF-8.
    pub smtputf8: bool,
    /// `BODY=BINARYMIME`: the message comes in BDAT chunks and is passed on untouched.
    pub(crate) binary: bool,
}

/// Checks MAIL parameters against what was offered: SIZE (within the limit), BODY=7BIT
/// or 8BITMIME, AUTH= (RFC 4954: accepted, not passed on), and when offered SMTPUTF8,
/// RET and ENVID. Anything else, a parameter given twice, or any parameter after HELO,
/// is refused. A non-ASCII `path` needs SMTPUTF8.
pub fn check(path: &str, params: &[Param<'_>], esmtp: bool, offer: &Offer) -> Result<MailParams, MailRefusal> {
    if !esmtp && !params.is_empty() {
        return Err(MailRefusal::NeedEhlo);
    }
    let mut out = MailParams::default();
    for (i, p) in params.iter().enumerate() {
        match params[..i].iter().find(|q| q.keyword.eq_ignore_ascii_case(p.keyword)) {
            // Said twice, the same way (Python's smtplib repeats its own SMTPUTF8):
            // harmless, as Postfix and Exim find; the backend gets it once.
            Some(q) if same(q, p) => continue,
            Some(_) => return Err(MailRefusal::Duplicate),
            None => {}
        }
        let is = |name: &str| p.keyword.eq_ignore_ascii_case(name);
        let value = p.value.unwrap_or("");
        if !value.is_ascii() {
            return Err(MailRefusal::Unsupported);
        }
        if is("SIZE") {
            let size = value.parse::<u64>().map_err(|_| MailRefusal::BadSize)?;
            if size > offer.max_size {
                return Err(MailRefusal::TooBig);
            }
            out.size = Some(size);
        } else if is("BODY") && value.eq_ignore_ascii_case("BINARYMIME") && offer.binarymime {
            out.binary = true;
        } else if is("BODY") && (value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME"))
            || is("AUTH") && p.value.is_some()
        {
            // Taken as they are (see `fate` for what the backend gets).
        } else if is("SMTPUTF8") && offer.smtputf8 {
            if p.value.is_some() {
                return Err(MailRefusal::BadSmtpUtf8);
            }
            out.smtputf8 = true;
        } else if is("RET") && offer.dsn {
            if !dsn::ret_ok(value) {
                return Err(MailRefusal::BadRet);
            }
        } else if is("ENVID") && offer.dsn {
            if !dsn::envid_ok(value) {
                return Err(MailRefusal::BadEnvid);
            }
        } else {
            return Err(MailRefusal::Unsupported);
        }
    }
    if !path.is_ascii() && !out.smtputf8 {
        return Err(MailRefusal::NeedSmtpUtf8);
    }
    Ok(out)
}

/// Whether two parameters say the same (keywords and values compare without case).
fn same(a: &Param<'_>, b: &Param<'_>) -> bool {
    a.keyword.eq_ignore_ascii_case(b.keyword)
        && match (a.value, b.value) {
            (None, None) => true,
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
            _ => false,
        }
}

/// What happens to a checked MAIL parameter toward a backend with `caps`.
enum Fate {
    Keep,
    Drop,
    /// It changes the meaning of the transaction and the backend cannot take it.
    Refuse,
}

fn fate(caps: &Capabilities, p: &Param<'_>) -> Fate {
    let is = |name: &str| p.keyword.eq_ignore_ascii_case(name);
    let keep_or = |supported: bool, otherwise: Fate| if supported { Fate::Keep } else { otherwise };
    if is("SIZE") {
        keep_or(caps.size, Fate::Drop)
    } else if is("BODY") && p.value.is_some_and(|v| v.eq_ignore_ascii_case("BINARYMIME")) {
        keep_or(caps.chunking && caps.binarymime, Fate::Refuse)
    } else if is("BODY") {
        keep_or(caps.eight_bit_mime, Fate::Drop)
    } else if is("SMTPUTF8") {
        keep_or(caps.smtputf8, Fate::Refuse)
    } else if is("RET") || is("ENVID") {
        // Left out, the backend would send full notifications we were asked not to.
        keep_or(caps.dsn, Fate::Refuse)
    } else {
        // AUTH=: the backend did not see the client's AUTH.
        Fate::Drop
    }
}

/// The MAIL line for a backend with `caps`. `line` is the client's MAIL line (CRLF
/// included) whose parameters passed [`check`].
pub fn for_backend(caps: &Capabilities, line: &[u8], path: &str, params: &[Param<'_>]) -> Result<Vec<u8>, MailRefusal> {
    let fates: Vec<Fate> = params
        .iter()
        .enumerate()
        .map(|(i, p)| if params[..i].iter().any(|q| same(q, p)) { Fate::Drop } else { fate(caps, p) })
        .collect();
    if fates.iter().any(|f| matches!(f, Fate::Refuse)) {
        return Err(MailRefusal::BackendLacks);
    }
    if fates.iter().all(|f| matches!(f, Fate::Keep)) {
        return Ok(line.to_vec());
    }
    let mut out = format!("MAIL FROM:<{path}>");
    for (p, _) in params.iter().zip(&fates).filter(|(_, f)| matches!(f, Fate::Keep)) {
        out.push(' ');
        out.push_str(p.keyword);
        if let Some(value) = p.value {
            out.push('=');
            out.push_str(value);
        }
    }
    out.push_str("\r\n");
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param<'a>(keyword: &'a str, value: &'a str) -> Param<'a> {
        Param { keyword, value: Some(value) }
    }

    const OFFER: Offer = Offer {
        max_size: 1000,
        starttls: false,
        auth: false,
        dsn: true,
        smtputf8: true,
        binarymime: false,
        held: false,
    };

    #[test]
    fn parameters_checked_against_the_offer() {
        let ok = |params: &[Param<'_>]| check("a@b", params, true, &OFFER);
        assert_eq!(
            ok(&[param("SIZE", "1000"), param("body", "8bitmime")]),
            Ok(MailParams { size: Some(1000), ..MailParams::default() })
        );
        assert_eq!(ok(&[param("SIZE", "1001")]), Err(MailRefusal::TooBig));
        assert_eq!(ok(&[param("SIZE", "-1")]), Err(MailRefusal::BadSize));
        assert_eq!(ok(&[param("SIZE", "1"), param("size", "2")]), Err(MailRefusal::Duplicate));
        assert_eq!(ok(&[param("BODY", "BINARYMIME")]), Err(MailRefusal::Unsupported));
        assert_eq!(ok(&[param("AUTH", "<>")]), Ok(MailParams::default()));
        assert_eq!(ok(&[Param { keyword: "AUTH", value: None }]), Err(MailRefusal::Unsupported));
        assert_eq!(check("a@b", &[param("SIZE", "1")], false, &OFFER), Err(MailRefusal::NeedEhlo));
        assert_eq!(check("a@b", &[], false, &OFFER), Ok(MailParams::default()));
    }

    #[test]
    fn dsn_and_smtputf8_only_when_offered_and_well_formed() {
        let ok = |params: &[Param<'_>]| check("a@b", params, true, &OFFER);
        assert!(ok(&[param("RET", "HDRS"), param("ENVID", "QQ314159")]).is_ok());
        assert_eq!(ok(&[param("RET", "ALL")]), Err(MailRefusal::BadRet));
        assert_eq!(ok(&[param("ENVID", "a+2")]), Err(MailRefusal::BadEnvid));
        let utf8 = [Param { keyword: "SMTPUTF8", value: None }];
        assert_eq!(check("jørn@b", &utf8, true, &OFFER), Ok(MailParams { smtputf8: true, ..MailParams::default() }));
        let binary = Offer { binarymime: true, ..OFFER };
        let body = [param("BODY", "BINARYMIME")];
        assert_eq!(check("a@b", &body, true, &binary), Ok(MailParams { binary: true, ..MailParams::default() }));
        assert_eq!(check("a@b", &body, true, &OFFER), Err(MailRefusal::Unsupported));
        let chunking = Capabilities { chunking: true, ..Capabilities::default() };
        let line = b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n";
        assert_eq!(for_backend(&chunking, line, "a@b", &body), Err(MailRefusal::BackendLacks));
        let both = Capabilities { binarymime: true, ..chunking };
        assert_eq!(for_backend(&both, line, "a@b", &body), Ok(line.to_vec()));
        assert_eq!(check("jørn@b", &[], true, &OFFER), Err(MailRefusal::NeedSmtpUtf8));
        assert_eq!(ok(&[param("SMTPUTF8", "yes")]), Err(MailRefusal::BadSmtpUtf8));
        let plain = Offer { dsn: false, smtputf8: false, ..OFFER };
        assert_eq!(check("a@b", &[param("RET", "FULL")], true, &plain), Err(MailRefusal::Unsupported));
        assert_eq!(check("a@b", &utf8, true, &plain), Err(MailRefusal::Unsupported));
    }

    /// Python's smtplib with `mail_options=["SMTPUTF8"]` adds its own SMTPUTF8 too.
    #[test]
    fn a_parameter_said_twice_the_same_way_is_taken_once() {
        let utf8 = Param { keyword: "SMTPUTF8", value: None };
        let params =
            [param("size", "282"), utf8, Param { keyword: "smtputf8", value: None }, param("BODY", "8BITMIME")];
        let declared = check("jørn@b", &params, true, &OFFER);
        assert_eq!(declared, Ok(MailParams { size: Some(282), smtputf8: true, binary: false }));
        let caps = Capabilities { size: true, eight_bit_mime: true, smtputf8: true, ..Capabilities::default() };
        let line = "MAIL FROM:<jørn@b> size=282 SMTPUTF8 smtputf8 BODY=8BITMIME\r\n".as_bytes();
        assert_eq!(
            for_backend(&caps, line, "jørn@b", &params),
            Ok("MAIL FROM:<jørn@b> size=282 SMTPUTF8 BODY=8BITMIME\r\n".as_bytes().to_vec())
        );
        // Saying two different things is still refused.
        let ok = |params: &[Param<'_>]| check("a@b", params, true, &OFFER);
        assert_eq!(ok(&[param("BODY", "7BIT"), param("BODY", "8BITMIME")]), Err(MailRefusal::Duplicate));
        assert_eq!(ok(&[utf8, param("SMTPUTF8", "yes")]), Err(MailRefusal::Duplicate));
        assert_eq!(ok(&[param("body", "8bitmime"), param("BODY", "8BITMIME")]), Ok(MailParams::default()));
    }

    /// The null sender of every bounce, checked and rebuilt like any other path (the
    /// params fuzz target's own check once panicked on it, with `windows(0)`).
    #[test]
    fn null_sender() {
        let params = [param("SIZE", "10"), param("AUTH", "<>")];
        assert_eq!(check("", &params, true, &OFFER), Ok(MailParams { size: Some(10), ..MailParams::default() }));
        let line = b"MAIL FROM:<> SIZE=10 AUTH=<>\r\n";
        assert_eq!(for_backend(&Capabilities::default(), line, "", &params), Ok(b"MAIL FROM:<>\r\n".to_vec()));
        let bare = b"MAIL FROM:<>\r\n";
        assert_eq!(for_backend(&Capabilities::default(), bare, "", &[]), Ok(bare.to_vec()));
    }

    #[test]
    fn client_bytes_when_everything_is_offered() {
        let caps = Capabilities { size: true, eight_bit_mime: true, ..Capabilities::default() };
        let line = b"MAIL FROM:<a@b> size=10 BODY=8BITMIME\r\n";
        let params = [param("size", "10"), param("BODY", "8BITMIME")];
        assert_eq!(for_backend(&caps, line, "a@b", &params), Ok(line.to_vec()));
    }

    #[test]
    fn unoffered_and_auth_parameters_are_dropped() {
        let caps = Capabilities { size: true, ..Capabilities::default() };
        let params = [param("SIZE", "10"), param("BODY", "8BITMIME"), param("AUTH", "<>")];
        let line = b"MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME AUTH=<>\r\n";
        assert_eq!(for_backend(&caps, line, "a@b", &params), Ok(b"MAIL FROM:<a@b> SIZE=10\r\n".to_vec()));
    }

    #[test]
    fn what_may_not_be_dropped_is_refused() {
        let caps = Capabilities { dsn: true, ..Capabilities::default() };
        let utf8 = [Param { keyword: "SMTPUTF8", value: None }, param("AUTH", "<>")];
        let line = "MAIL FROM:<jørn@b> SMTPUTF8 AUTH=<>\r\n".as_bytes();
        assert_eq!(for_backend(&caps, line, "jørn@b", &utf8), Err(MailRefusal::BackendLacks));
        let with = Capabilities { smtputf8: true, ..caps.clone() };
        assert_eq!(
            for_backend(&with, line, "jørn@b", &utf8),
            Ok("MAIL FROM:<jørn@b> SMTPUTF8\r\n".as_bytes().to_vec())
        );
        let ret = [param("RET", "HDRS")];
        assert_eq!(
            for_backend(&Capabilities::default(), b"MAIL FROM:<a@b> RET=HDRS\r\n", "a@b", &ret),
            Err(MailRefusal::BackendLacks)
        );
    }
}
