//! Lock step with a backend: what each backend reply answers, and which reply codes
//! are possible for it. A code outside that set means the backend and Portcullis no
//! longer agree on where the session is (or the backend is not speaking SMTP to us).

/// The command (or moment) a backend reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    Greeting,
    Hello,
    Xclient,
    Xforward,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Rset,
    /// A BDAT chunk (RFC 3030): one reply per chunk, after all its bytes.
    Bdat,
    /// The last BDAT chunk: its reply is the message's, as long in coming as the one
    /// to end of data.
    BdatLast,
}

impl Asked {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Asked::Greeting => "greeting",
            Asked::Hello => "EHLO/HELO",
            Asked::Xclient => "XCLIENT",
            Asked::Xforward => "XFORWARD",
            Asked::StartTls => "STARTTLS",
            Asked::Auth => "AUTH",
            Asked::Mail => "MAIL",
            Asked::Rcpt => "RCPT",
            Asked::Data => "DATA",
            Asked::EndOfData => "end of data",
            Asked::Rset => "RSET",
            Asked::Bdat => "BDAT",
            Asked::BdatLast => "BDAT LAST",
        }
    }

    /// Whether `code` can answer this command (RFC 5321 4.3.2, RFC 3207, RFC 4954,
    /// Postfix's XCLIENT_README). Failures (4xx, 5xx) fit everything; only DATA and
    /// AUTH have an intermediate (3xx) reply.
    pub(crate) fn allows(self, code: u16) -> bool {
        if (400..600).contains(&code) {
            return true;
        }
        match self {
            Asked::Greeting | Asked::StartTls => code == 220,
            Asked::Hello | Asked::Xforward => code == 250,
            // Postfix answers XCLIENT with a new greeting (220); others with 250.
            Asked::Xclient => code == 220 || code == 250,
            Asked::Auth => code == 235 || code == 334,
            Asked::Mail | Asked::Rcpt | Asked::EndOfData | Asked::Rset => (250..=252).contains(&code),
            Asked::Bdat | Asked::BdatLast => code == 250,
            Asked::Data => code == 354,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_takes_only_354_or_a_failure() {
        assert!(Asked::Data.allows(354));
        assert!(Asked::Data.allows(451) && Asked::Data.allows(554));
        for code in [220, 250, 251, 334, 235] {
            assert!(!Asked::Data.allows(code), "{code}");
        }
    }

    #[test]
    fn intermediate_replies_only_where_a_dialogue_goes_on() {
        for asked in [Asked::Greeting, Asked::Hello, Asked::Xclient, Asked::Xforward, Asked::Mail, Asked::Rcpt] {
            assert!(!asked.allows(354) && !asked.allows(334), "{asked:?}");
        }
        assert!(Asked::Auth.allows(334) && Asked::Auth.allows(235) && !Asked::Auth.allows(250));
        assert!(!Asked::EndOfData.allows(354) && Asked::EndOfData.allows(250));
    }

    #[test]
    fn greetings_and_positive_codes() {
        assert!(Asked::Greeting.allows(220) && !Asked::Greeting.allows(250) && Asked::Greeting.allows(554));
        assert!(Asked::Hello.allows(250) && !Asked::Hello.allows(220));
        assert!(Asked::Xclient.allows(220) && Asked::Xclient.allows(250));
        assert!(Asked::Rcpt.allows(251) && Asked::Rcpt.allows(252) && !Asked::Rcpt.allows(221));
        assert!(Asked::StartTls.allows(220) && !Asked::StartTls.allows(250));
    }
}
