//! The RCPT command's parameters, checked against what the client was offered.

use super::{Param, ehlo::Offer};
use thiserror::Error;

/// Why a RCPT command's parameters are refused; each has its complete reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RcptRefusal {
    #[error("555 5.5.4 Error: unsupported RCPT parameter")]
    Unsupported,
}

impl RcptRefusal {
    pub fn reply(&self) -> String {
        self.to_string()
    }
}

/// Checks RCPT parameters: none is offered in this version.
pub fn check(params: &[Param<'_>], _offer: &Offer) -> Result<(), RcptRefusal> {
    if params.is_empty() { Ok(()) } else { Err(RcptRefusal::Unsupported) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_parameter_is_taken() {
        let offer = Offer::default();
        assert_eq!(check(&[], &offer), Ok(()));
        assert_eq!(check(&[Param { keyword: "NOTIFY", value: Some("NEVER") }], &offer), Err(RcptRefusal::Unsupported));
    }
}
