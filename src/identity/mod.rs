//! How the backend learns who the client really is: XCLIENT, XFORWARD or a PROXY
//! header. Everything here only builds bytes; the backend client sends them.

pub mod proxy;
pub(crate) mod xclient;
pub(crate) mod xforward;

use crate::addr::Client;
use std::net::IpAddr;

/// The identity method configured for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    Xclient,
    Xforward,
    ProxyV1,
    ProxyV2,
    /// Connect from the client's own address (see `server::transparent`).
    Transparent,
    None,
}

impl Identity {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Identity::Xclient => "xclient",
            Identity::Xforward => "xforward",
            Identity::ProxyV1 => "proxy-v1",
            Identity::ProxyV2 => "proxy-v2",
            Identity::Transparent => "transparent",
            Identity::None => "none",
        }
    }

    /// How much the backend learns about the client, to compare identities: a session
    /// never fails over to a backend that learns less unless the config allows it.
    /// XCLIENT carries the address, HELO name and login; PROXY headers and a
    /// transparent source the address, which the backend also uses for its access
    /// checks; XFORWARD only reaches the backend's logs (Postfix); none, nothing.
    pub(crate) fn tells(&self) -> u8 {
        match self {
            Identity::Xclient => 3,
            Identity::ProxyV1 | Identity::ProxyV2 | Identity::Transparent => 2,
            Identity::Xforward => 1,
            Identity::None => 0,
        }
    }

    /// Whether the backend is spoken to before its greeting (the PROXY header), so a
    /// backend that does not expect it answers a "command" we never sent.
    pub(crate) fn speaks_first(&self) -> bool {
        matches!(self, Identity::ProxyV1 | Identity::ProxyV2)
    }
}

/// What is passed on about the client, borrowed from the session for each connect or
/// MAIL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientFacts<'a> {
    /// The client as made at accept. When a PROXY header did not say who the client is,
    /// its address is the load balancer's, and the backend must not be told it is the
    /// client's.
    pub(crate) client: Client,
    /// The name the client gave in HELO/EHLO.
    pub(crate) helo: &'a str,
    /// Whether the client said EHLO (ESMTP) rather than HELO.
    pub(crate) esmtp: bool,
    /// The user the client authenticated as, if it did.
    pub(crate) login: Option<&'a str>,
}

/// Longest XCLIENT / XFORWARD command line, CRLF included (Postfix's limit).
pub(crate) const MAX_COMMAND: usize = 512;

/// The XCLIENT/XFORWARD value for "not known".
pub(crate) const UNAVAILABLE: &str = "[UNAVAILABLE]";

/// Longest HELO value Postfix takes in XCLIENT and XFORWARD (its VALID_HOSTNAME_LEN);
/// a longer one would be refused with 501, so it is sent as `[UNAVAILABLE]`.
pub(crate) const MAX_HELO: usize = 255;

/// An attribute value of XCLIENT or XFORWARD, written straight into the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// Sent as is: already in xtext's alphabet (`[UNAVAILABLE]`, `ESMTP`, ...).
    Plain(&'a str),
    /// Sent xtext-encoded (what comes from the client).
    Xtext(&'a str),
    Port(u16),
    /// The `ADDR` form: IPv6 gets an `IPV6:` prefix.
    Addr(IpAddr),
}

impl Value<'_> {
    /// Appends the value; IPv4 addresses and ports without the formatting machinery
    /// (this runs for every connection or message).
    fn write_to(&self, out: &mut String) {
        match self {
            Value::Plain(text) => out.push_str(text),
            Value::Xtext(text) => {
                let _ = crate::smtp::xtext::write(out, text);
            }
            Value::Port(port) => push_decimal(out, u32::from(*port)),
            Value::Addr(IpAddr::V4(v4)) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push('.');
                    }
                    push_decimal(out, u32::from(octet));
                }
            }
            Value::Addr(IpAddr::V6(v6)) => {
                use std::fmt::Write;
                let _ = write!(out, "IPV6:{v6}");
            }
        }
    }
}

fn push_decimal(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
}

/// For tests: the value as it goes on the line.
#[cfg(test)]
impl std::fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::new();
        self.write_to(&mut text);
        f.write_str(&text)
    }
}

/// The `HELO` attribute value shared by XCLIENT and XFORWARD.
pub(crate) fn helo_value(helo: &str) -> Value<'_> {
    if helo.len() > MAX_HELO { Value::Plain(UNAVAILABLE) } else { Value::Xtext(helo) }
}

/// Packs `NAME=value` attributes, in order, into as few `verb ...` lines as fit
/// [`MAX_COMMAND`] bytes each. An attribute too long for a line of its own is sent as
/// `[UNAVAILABLE]`.
pub(crate) fn pack_commands(verb: &str, attrs: &[(&str, Value<'_>)]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::with_capacity(128);
    for (name, value) in attrs {
        let before = current.len();
        if current.is_empty() {
            current.push_str(verb);
        }
        let start = current.len();
        current.push(' ');
        current.push_str(name);
        current.push('=');
        value.write_to(&mut current);
        if verb.len() + (current.len() - start) + 2 > MAX_COMMAND {
            // One attribute too long for a line of its own is sent as unavailable.
            current.truncate(start + 1 + name.len() + 1);
            current.push_str(UNAVAILABLE);
        }
        if before > 0 && current.len() + 2 > MAX_COMMAND {
            let attr = current.split_off(start);
            current.push_str("\r\n");
            lines.push(std::mem::replace(&mut current, format!("{verb}{attr}")));
        }
    }
    if !current.is_empty() {
        current.push_str("\r\n");
        lines.push(current);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_within_512_bytes_keeping_order() {
        let long = "h".repeat(300);
        let name = "x".repeat(200);
        let attrs = [
            ("HELO", Value::Plain(&long)),
            ("PROTO", Value::Plain("ESMTP")),
            ("NAME", Value::Plain(&name)),
            ("ADDR", Value::Addr("192.0.2.1".parse().unwrap())),
        ];
        let lines = pack_commands("XCLIENT", &attrs);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() <= MAX_COMMAND && l.ends_with("\r\n")));
        assert_eq!(lines[0], format!("XCLIENT HELO={long} PROTO=ESMTP\r\n"));
        assert!(lines[1].starts_with("XCLIENT NAME=") && lines[1].ends_with(" ADDR=192.0.2.1\r\n"));
    }

    #[test]
    fn oversized_value_becomes_unavailable() {
        let long = "h".repeat(600);
        let lines = pack_commands("XCLIENT", &[("HELO", Value::Xtext(&long)), ("ADDR", Value::Plain("192.0.2.1"))]);
        assert_eq!(lines, vec!["XCLIENT HELO=[UNAVAILABLE] ADDR=192.0.2.1\r\n".to_string()]);
    }

    #[test]
    fn a_helo_postfix_would_refuse_is_not_sent() {
        assert_eq!(helo_value(&"h".repeat(255)).to_string(), "h".repeat(255));
        assert_eq!(helo_value(&"h".repeat(256)).to_string(), "[UNAVAILABLE]");
        assert_eq!(helo_value("a b").to_string(), "a+20b");
    }

    #[test]
    fn ipv6_addr_form() {
        assert_eq!(Value::Addr("2001:db8::1".parse().unwrap()).to_string(), "IPV6:2001:db8::1");
        assert_eq!(Value::Addr("192.0.2.1".parse().unwrap()).to_string(), "192.0.2.1");
        assert_eq!(Value::Addr("0.10.255.100".parse().unwrap()).to_string(), "0.10.255.100");
        assert_eq!(Value::Port(0).to_string(), "0");
        assert_eq!(Value::Port(65535).to_string(), "65535");
    }
}
