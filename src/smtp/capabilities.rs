//! What a backend said it supports in its EHLO reply. Only the extensions Portcullis
//! uses are kept; unknown keywords are ignored. [`Learned`] keeps the latest list of
//! one backend, so that a client can be offered what that backend supports before a
//! connection to it is open.

use super::Reply;
use std::sync::Mutex;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    /// `SIZE` was advertised (with or without a limit).
    pub size: bool,
    pub starttls: bool,
    /// RFC 3461 delivery status notifications (NOTIFY, ORCPT, RET, ENVID).
    pub dsn: bool,
    /// RFC 6531 internationalized addresses.
    pub smtputf8: bool,
    /// RFC 3030 BDAT.
    pub chunking: bool,
    /// RFC 3030 BODY=BINARYMIME (needs CHUNKING).
    pub binarymime: bool,
    /// AUTH mechanisms, upper-case; `None` if AUTH is not offered.
    pub auth: Option<Vec<String>>,
    /// XCLIENT attribute names, upper-case; `None` if XCLIENT is not offered.
    pub xclient: Option<Vec<String>>,
    /// XFORWARD attribute names, upper-case; `None` if XFORWARD is not offered.
    pub xforward: Option<Vec<String>>,
}

impl Capabilities {
    /// Reads the keywords of a positive EHLO reply (its first line is the greeting).
    pub(crate) fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Capabilities { esmtp: true, ..Default::default() };
        for line in reply.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            let keyword = keyword.to_ascii_uppercase();
            let attrs = || words.clone().map(|w| w.to_ascii_uppercase()).collect::<Vec<_>>();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SIZE" => caps.size = true,
                "STARTTLS" => caps.starttls = true,
                "DSN" => caps.dsn = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                "BINARYMIME" => caps.binarymime = true,
                "AUTH" => caps.auth = Some(attrs()),
                "XCLIENT" => caps.xclient = Some(attrs()),
                "XFORWARD" => caps.xforward = Some(attrs()),
                _ => {}
            }
        }
        caps
    }

    pub(crate) fn xclient_offers(&self, attr: &str) -> bool {
        self.xclient.as_ref().is_some_and(|a| a.iter().any(|x| x == attr))
    }

    pub(crate) fn xforward_offers(&self, attr: &str) -> bool {
        self.xforward.as_ref().is_some_and(|a| a.iter().any(|x| x == attr))
    }
}

/// The capabilities a backend showed last (health check or session), if any yet.
#[derive(Debug, Default)]
pub(crate) struct Learned(Mutex<Option<Capabilities>>);

impl Learned {
    /// `f` of the capabilities learnt, if any yet, without copying them.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Capabilities) -> R) -> Option<R> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(f)
    }

    pub(crate) fn set(&self, caps: &Capabilities) {
        let mut learned = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if learned.as_ref() != Some(caps) {
            *learned = Some(caps.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::ReplyParser;
    use bytes::BytesMut;

    #[test]
    fn reads_postfix_ehlo() {
        let mut buf = BytesMut::from(
            "250-backend.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n\
             250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n\
             250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n250-ENHANCEDSTATUSCODES\r\n\
             250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        );
        let caps = Capabilities::from_ehlo(&ReplyParser::parse(&mut buf).unwrap().unwrap());
        assert!(caps.pipelining && caps.size && caps.eight_bit_mime);
        assert!(caps.dsn && caps.smtputf8 && caps.chunking && !caps.binarymime);
        assert!(caps.xclient_offers("ADDR") && caps.xclient_offers("DESTPORT"));
        assert!(caps.xforward_offers("SOURCE") && !caps.xforward_offers("LOGIN"));
    }

    #[test]
    fn greeting_line_is_not_a_keyword() {
        let mut buf = BytesMut::from("250-XCLIENT\r\n250 8bitmime\r\n");
        let caps = Capabilities::from_ehlo(&ReplyParser::parse(&mut buf).unwrap().unwrap());
        assert_eq!(caps.xclient, None);
        assert!(caps.eight_bit_mime);
    }
}
