//! What a backend said it supports in its EHLO reply. Only the extensions Portcullis
//! uses are kept; unknown keywords are ignored. [`Learned`] keeps the latest list of
//! one backend, so that a client can be offered what that backend supports before a
//! connection to it is open.

use super::Reply;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

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
    pub auth: Option<Arc<[String]>>,
    /// XCLIENT attribute names, upper-case; `None` if XCLIENT is not offered.
    pub xclient: Option<Arc<[String]>>,
    /// XFORWARD attribute names, upper-case; `None` if XFORWARD is not offered.
    pub xforward: Option<Arc<[String]>>,
}

/// EHLO replies read lately on this thread: a backend answers every connection's EHLO
/// with the same bytes, so each is read once (cheap to clone: the lists are shared).
const REMEMBERED: usize = 4;

thread_local! {
    static READ: RefCell<Vec<(Box<[u8]>, Capabilities)>> = const { RefCell::new(Vec::new()) };
}

impl Capabilities {
    /// Reads the keywords of a positive EHLO reply (its first line is the greeting).
    pub(crate) fn from_ehlo(reply: &Reply) -> Self {
        let raw = reply.as_bytes();
        let known = READ.with(|read| read.borrow().iter().find(|(r, _)| **r == *raw).map(|(_, caps)| caps.clone()));
        if let Some(caps) = known {
            return caps;
        }
        let caps = Self::read(reply);
        READ.with(|read| {
            let mut read = read.borrow_mut();
            if read.len() == REMEMBERED {
                read.remove(0);
            }
            read.push((raw.into(), caps.clone()));
        });
        caps
    }

    fn read(reply: &Reply) -> Self {
        let mut caps = Capabilities { esmtp: true, ..Default::default() };
        for line in reply.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            let attrs = || Some(words.clone().map(|w| w.to_ascii_uppercase()).collect::<Arc<[String]>>());
            let is = |name: &str| keyword.eq_ignore_ascii_case(name);
            if is("PIPELINING") {
                caps.pipelining = true;
            } else if is("8BITMIME") {
                caps.eight_bit_mime = true;
            } else if is("SIZE") {
                caps.size = true;
            } else if is("STARTTLS") {
                caps.starttls = true;
            } else if is("DSN") {
                caps.dsn = true;
            } else if is("SMTPUTF8") {
                caps.smtputf8 = true;
            } else if is("CHUNKING") {
                caps.chunking = true;
            } else if is("BINARYMIME") {
                caps.binarymime = true;
            } else if is("AUTH") {
                caps.auth = attrs();
            } else if is("XCLIENT") {
                caps.xclient = attrs();
            } else if is("XFORWARD") {
                caps.xforward = attrs();
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

    #[test]
    fn the_same_reply_again_reads_the_same_and_another_differently() {
        let parse = |text: &str| {
            let mut buf = BytesMut::from(text);
            Capabilities::from_ehlo(&ReplyParser::parse(&mut buf).unwrap().unwrap())
        };
        let before = "250-b.test\r\n250-pipelining\r\n250 XCLIENT addr helo\r\n";
        let after = "250-b.test\r\n250 PIPELINING\r\n";
        for _ in 0..3 {
            let caps = parse(before);
            assert!(caps.pipelining && caps.xclient_offers("ADDR") && caps.xclient_offers("HELO"));
            let caps = parse(after);
            assert!(caps.pipelining && caps.xclient.is_none());
        }
        for i in 0..(REMEMBERED + 2) {
            let caps = parse(&format!("250-b{i}.test\r\n250 DSN\r\n"));
            assert!(caps.dsn && !caps.pipelining);
        }
        assert!(parse(before).xclient_offers("ADDR"), "read again once forgotten");
    }
}
