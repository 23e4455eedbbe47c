//! The RCPT command's parameters: checked against what the client was offered, and
//! whether the backend reached can take them. The backend gets the client's own line.

use super::{Capabilities, Param, dsn, ehlo::Offer};
use thiserror::Error;

/// Why a RCPT command's parameters are refused; each has its complete reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RcptRefusal {
    #[error("555 5.5.4 Error: unsupported RCPT parameter")]
    Unsupported,
    #[error("501 5.5.4 Error: RCPT parameter given twice")]
    Duplicate,
    #[error("501 5.5.4 Error: bad NOTIFY parameter")]
    BadNotify,
    #[error("501 5.5.4 Error: bad ORCPT parameter")]
    BadOrcpt,
    #[error("451 4.3.0 Error: the mail server cannot take this recipient now, try again later")]
    BackendLacks,
}

impl RcptRefusal {
    pub(crate) fn reply(&self) -> String {
        self.to_string()
    }
}

/// Checks RCPT parameters: NOTIFY and ORCPT (RFC 3461) when DSN was offered, each at
/// most once and well-formed; nothing else.
pub fn check(params: &[Param<'_>], offer: &Offer) -> Result<(), RcptRefusal> {
    for (i, p) in params.iter().enumerate() {
        if params[..i].iter().any(|q| q.keyword.eq_ignore_ascii_case(p.keyword)) {
            return Err(RcptRefusal::Duplicate);
        }
        let value = p.value.unwrap_or("");
        if p.keyword.eq_ignore_ascii_case("NOTIFY") && offer.dsn {
            if !dsn::notify_ok(value) {
                return Err(RcptRefusal::BadNotify);
            }
        } else if p.keyword.eq_ignore_ascii_case("ORCPT") && offer.dsn {
            if !dsn::orcpt_ok(value) {
                return Err(RcptRefusal::BadOrcpt);
            }
        } else {
            return Err(RcptRefusal::Unsupported);
        }
    }
    Ok(())
}

/// Whether a backend with `caps` can take these (checked) parameters; dropping them
/// would change what notifications the sender gets.
pub fn for_backend(caps: &Capabilities, params: &[Param<'_>]) -> Result<(), RcptRefusal> {
    if params.is_empty() || caps.dsn { Ok(()) } else { Err(RcptRefusal::BackendLacks) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param<'a>(keyword: &'a str, value: &'a str) -> Param<'a> {
        Param { keyword, value: Some(value) }
    }

    #[test]
    fn dsn_parameters_only_when_offered_and_well_formed() {
        let dsn = Offer { dsn: true, ..Offer::default() };
        assert_eq!(check(&[], &Offer::default()), Ok(()));
        assert_eq!(check(&[param("NOTIFY", "NEVER")], &Offer::default()), Err(RcptRefusal::Unsupported));
        assert_eq!(check(&[param("NOTIFY", "SUCCESS,FAILURE"), param("ORCPT", "rfc822;u@example.com")], &dsn), Ok(()));
        assert_eq!(check(&[param("NOTIFY", "NEVER,DELAY")], &dsn), Err(RcptRefusal::BadNotify));
        assert_eq!(check(&[param("ORCPT", "u@example.com")], &dsn), Err(RcptRefusal::BadOrcpt));
        assert_eq!(check(&[param("NOTIFY", "NEVER"), param("notify", "NEVER")], &dsn), Err(RcptRefusal::Duplicate));
        assert_eq!(check(&[param("XYZ", "1")], &dsn), Err(RcptRefusal::Unsupported));
    }

    #[test]
    fn a_backend_without_dsn_takes_no_dsn_parameter() {
        let params = [param("NOTIFY", "NEVER")];
        assert_eq!(for_backend(&Capabilities::default(), &params), Err(RcptRefusal::BackendLacks));
        assert_eq!(for_backend(&Capabilities { dsn: true, ..Capabilities::default() }, &params), Ok(()));
        assert_eq!(for_backend(&Capabilities::default(), &[]), Ok(()));
    }
}
