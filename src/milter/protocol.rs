//! The milter protocol (Sendmail 8's, version 6, as libmilter and Postfix speak it),
//! the MTA's side, as plain values: commands encoded into packets, filter responses
//! decoded from them. A packet is a 32-bit big-endian length (of what follows), a
//! command byte, and its data; strings are NUL-terminated.

use bytes::{BufMut, BytesMut};
use std::net::IpAddr;
use thiserror::Error;

/// The protocol version we speak.
pub(crate) const VERSION: u32 = 6;
/// Body chunks are at most this long (libmilter's MILTER_CHUNK_SIZE).
pub(crate) const CHUNK: usize = 65_535;
/// Packets from a filter larger than this are refused (libmilter allows 64 KiB by
/// default and 1 MiB with its largest option).
pub(crate) const MAX_PACKET: usize = 1024 * 1024 + 64;

// Actions a filter may take at end of message (SMFIF_*): all of them are offered.
pub(crate) const ADD_HEADERS: u32 = 0x01;
pub(crate) const CHANGE_BODY: u32 = 0x02;
pub(crate) const ADD_RCPT: u32 = 0x04;
pub(crate) const DELETE_RCPT: u32 = 0x08;
pub(crate) const CHANGE_HEADERS: u32 = 0x10;
pub(crate) const QUARANTINE: u32 = 0x20;
pub(crate) const CHANGE_FROM: u32 = 0x40;
pub(crate) const ADD_RCPT_PAR: u32 = 0x80;
pub(crate) const ALL_ACTIONS: u32 = 0x1ff;

// Protocol steps (SMFIP_*): what the filter does not want sent, or not answered.
pub(crate) const NO_CONNECT: u32 = 0x1;
pub(crate) const NO_HELO: u32 = 0x2;
pub(crate) const NO_MAIL: u32 = 0x4;
pub(crate) const NO_RCPT: u32 = 0x8;
pub(crate) const NO_BODY: u32 = 0x10;
pub(crate) const NO_HEADERS: u32 = 0x20;
pub(crate) const NO_EOH: u32 = 0x40;
pub(crate) const NR_HEADER: u32 = 0x80;
pub(crate) const NO_UNKNOWN: u32 = 0x100;
pub(crate) const NO_DATA: u32 = 0x200;
pub(crate) const SKIP: u32 = 0x400;
pub(crate) const NR_CONNECT: u32 = 0x1000;
pub(crate) const NR_HELO: u32 = 0x2000;
pub(crate) const NR_MAIL: u32 = 0x4000;
pub(crate) const NR_RCPT: u32 = 0x8000;
pub(crate) const NR_DATA: u32 = 0x10000;
pub(crate) const NR_UNKNOWN: u32 = 0x20000;
pub(crate) const NR_EOH: u32 = 0x40000;
pub(crate) const NR_BODY: u32 = 0x80000;
pub(crate) const HEADER_LEADING_SPACE: u32 = 0x100000;
/// The steps and options we can honour when a filter asks (we never send unknown
/// commands, so NO_UNKNOWN and NR_UNKNOWN are granted trivially; we do not send
/// rejected recipients, so RCPT_REJECTED is not offered).
pub(crate) const OFFERED_PROTOCOL: u32 = NO_CONNECT
    | NO_HELO
    | NO_MAIL
    | NO_RCPT
    | NO_BODY
    | NO_HEADERS
    | NO_EOH
    | NR_HEADER
    | NO_UNKNOWN
    | NO_DATA
    | SKIP
    | NR_CONNECT
    | NR_HELO
    | NR_MAIL
    | NR_RCPT
    | NR_DATA
    | NR_UNKNOWN
    | NR_EOH
    | NR_BODY
    | HEADER_LEADING_SPACE;

/// A step of a session, for macros, skips and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    EndOfHeaders,
    Body,
    EndOfMessage,
}

impl Step {
    /// The command byte, also the byte a macro packet names its step by.
    fn code(self) -> u8 {
        match self {
            Step::Connect => b'C',
            Step::Helo => b'H',
            Step::Mail => b'M',
            Step::Rcpt => b'R',
            Step::Data => b'T',
            Step::Header => b'L',
            Step::EndOfHeaders => b'N',
            Step::Body => b'B',
            Step::EndOfMessage => b'E',
        }
    }

    /// The filter asked not to get this step.
    pub(crate) fn skipped(self, protocol: u32) -> bool {
        protocol & self.flag() != 0
    }

    /// The `SMFIP_NO*` flag that skips this step.
    pub(crate) fn flag(self) -> u32 {
        match self {
            Step::Connect => NO_CONNECT,
            Step::Helo => NO_HELO,
            Step::Mail => NO_MAIL,
            Step::Rcpt => NO_RCPT,
            Step::Data => NO_DATA,
            Step::Header => NO_HEADERS,
            Step::EndOfHeaders => NO_EOH,
            Step::Body => NO_BODY,
            Step::EndOfMessage => 0,
        }
    }

    /// The filter said it will not answer this step.
    pub(crate) fn unanswered(self, protocol: u32) -> bool {
        let flag = match self {
            Step::Connect => NR_CONNECT,
            Step::Helo => NR_HELO,
            Step::Mail => NR_MAIL,
            Step::Rcpt => NR_RCPT,
            Step::Data => NR_DATA,
            Step::Header => NR_HEADER,
            Step::EndOfHeaders => NR_EOH,
            Step::Body => NR_BODY,
            Step::EndOfMessage => 0,
        };
        protocol & flag != 0
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Helo => "helo",
            Step::Mail => "mail",
            Step::Rcpt => "rcpt",
            Step::Data => "data",
            Step::Header => "header",
            Step::EndOfHeaders => "eoh",
            Step::Body => "body",
            Step::EndOfMessage => "eom",
        }
    }

    /// The name a config's `skip` list uses.
    pub(crate) fn parse(name: &str) -> Option<Step> {
        Some(match name {
            "connect" => Step::Connect,
            "helo" => Step::Helo,
            "mail" => Step::Mail,
            "rcpt" => Step::Rcpt,
            "data" => Step::Data,
            "header" | "headers" => Step::Header,
            "eoh" => Step::EndOfHeaders,
            "body" => Step::Body,
            _ => return None,
        })
    }
}

/// Where the client connected from, as CONNECT tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Family {
    Inet(IpAddr, u16),
    Unknown,
}

/// One packet for a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    Negotiate {
        actions: u32,
        protocol: u32,
    },
    Macros {
        step: Step,
        pairs: &'a [(&'a str, String)],
    },
    Connect {
        hostname: &'a str,
        family: Family,
    },
    Helo(&'a str),
    /// The address with its angle brackets, then the ESMTP parameters.
    Mail(&'a [&'a str]),
    Rcpt(&'a [&'a str]),
    Data,
    Header {
        name: &'a str,
        value: &'a str,
    },
    EndOfHeaders,
    Body(&'a [u8]),
    EndOfMessage,
    Abort,
    Quit,
}

impl Command<'_> {
    /// Appends this command's packet to `out`.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        match self {
            Command::Negotiate { actions, protocol } => {
                out.put_u8(b'O');
                out.put_u32(VERSION);
                out.put_u32(*actions);
                out.put_u32(*protocol);
            }
            Command::Macros { step, pairs } => {
                out.put_u8(b'D');
                out.put_u8(step.code());
                for (name, value) in pairs.iter() {
                    put_str(out, name);
                    put_str(out, value);
                }
            }
            Command::Connect { hostname, family } => {
                out.put_u8(b'C');
                put_str(out, hostname);
                match family {
                    Family::Inet(ip, port) => {
                        out.put_u8(if ip.is_ipv4() { b'4' } else { b'6' });
                        out.put_u16(*port);
                        put_str(out, &ip.to_string());
                    }
                    Family::Unknown => out.put_u8(b'U'),
                }
            }
            Command::Helo(name) => {
                out.put_u8(b'H');
                put_str(out, name);
            }
            Command::Mail(args) | Command::Rcpt(args) => {
                out.put_u8(if matches!(self, Command::Mail(_)) { b'M' } else { b'R' });
                for a in args.iter() {
                    put_str(out, a);
                }
            }
            Command::Data => out.put_u8(b'T'),
            Command::Header { name, value } => {
                out.put_u8(b'L');
                put_str(out, name);
                put_str(out, value);
            }
            Command::EndOfHeaders => out.put_u8(b'N'),
            Command::Body(chunk) => {
                out.put_u8(b'B');
                out.put_slice(chunk);
            }
            Command::EndOfMessage => out.put_u8(b'E'),
            Command::Abort => out.put_u8(b'A'),
            Command::Quit => out.put_u8(b'Q'),
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// A string as the protocol carries it: NUL-terminated, with any NUL of its own
/// dropped (it would end the string early, and no SMTP value may hold one).
fn put_str(out: &mut BytesMut, s: &str) {
    out.extend(s.bytes().filter(|b| *b != 0));
    out.put_u8(0);
}

/// What a filter answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    Negotiated {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    Continue,
    /// Accept: nothing more of this message (or of this session, at connect).
    Accept,
    Reject,
    Tempfail,
    Discard,
    /// A whole SMTP reply of the filter's own ("550 5.7.1 text").
    ReplyCode(String),
    /// Still working: wait on (the timeout starts again).
    Progress,
    /// No more body chunks, please.
    Skip,
    /// Drop the connection (421).
    Shutdown,
    ConnectionFail,
    Modify(Modification),
}

/// A change a filter makes at end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Modification {
    AddHeader {
        name: String,
        value: String,
    },
    /// At `index` (0: first) among all headers.
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// The `index`-th (1-based) header called `name`; an empty value deletes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    ReplaceBody(Vec<u8>),
    AddRecipient {
        address: String,
        params: Option<String>,
    },
    DeleteRecipient(String),
    ChangeFrom {
        address: String,
        params: Option<String>,
    },
    Quarantine(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ProtocolError {
    #[error("packet of {0} bytes, over the limit")]
    TooLong(usize),
    #[error("empty packet")]
    Empty,
    #[error("unknown response {0:?}")]
    Unknown(char),
    #[error("malformed {0:?} response")]
    Malformed(char),
}

/// Whether a filter's own reply is one well-formed 4xx or 5xx SMTP reply: lines
/// joined by CRLF, each `ddd-text` but the last `ddd text` (or `ddd`), one code for
/// all, no empty line, no stray CR or LF. Anything else would put the client out of
/// step with the session (a second reply it never asked for).
fn reply_ok(text: &str) -> bool {
    let lines: Vec<&str> = text.split("\r\n").collect();
    let code = &text.as_bytes()[..text.len().min(3)];
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) || !matches!(code[0], b'4' | b'5') {
        return false;
    }
    lines.iter().enumerate().all(|(i, line)| {
        let b = line.as_bytes();
        let last = i + 1 == lines.len();
        b.len() >= 3
            && &b[..3] == code
            && match b.get(3) {
                None => last,
                Some(b' ') => last,
                Some(b'-') => !last,
                _ => false,
            }
            && !b.iter().any(|c| *c == b'\r' || *c == b'\n' || *c < 0x20 && *c != b'\t')
    })
}

/// Whether a header a filter adds or changes can be written as it is: a field name of
/// printable ASCII without a colon, a value without CR or NUL whose line breaks are
/// folds (LF followed by a space or tab). Anything else could end the header section
/// or the message early at the backend.
pub(crate) fn header_ok(name: &str, value: &str) -> bool {
    let name_ok = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    let v = value.as_bytes();
    let value_ok = !v.iter().any(|b| *b == b'\r' || *b == 0)
        && v.iter().enumerate().all(|(i, b)| *b != b'\n' || matches!(v.get(i + 1), Some(b' ' | b'\t')));
    name_ok && value_ok
}

/// Whether an address and parameters a filter gives for MAIL or RCPT can go into a
/// command line: no control characters or spaces in the address, parameters of
/// printable ASCII only.
pub(crate) fn envelope_ok(address: &str, params: Option<&str>) -> bool {
    let address_ok = !address.is_empty() && address.len() <= 512 && address.bytes().all(|b| b > 0x20 && b != 0x7f);
    let params_ok = params.is_none_or(|p| p.len() <= 512 && p.bytes().all(|b| (0x20..0x7f).contains(&b)));
    address_ok && params_ok
}

/// The length a packet header announces, checked; `Ok(None)` while fewer than four
/// bytes are at hand.
pub(crate) fn packet_len(header: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(bytes) = header.get(..4) else { return Ok(None) };
    let len = u32::from_be_bytes(bytes.try_into().expect("four bytes")) as usize;
    match len {
        0 => Err(ProtocolError::Empty),
        n if n > MAX_PACKET => Err(ProtocolError::TooLong(n)),
        n => Ok(Some(n)),
    }
}

/// Decodes one packet's command byte and data (the length already taken off).
pub(crate) fn decode(packet: &[u8]) -> Result<Response, ProtocolError> {
    let (&code, data) = packet.split_first().ok_or(ProtocolError::Empty)?;
    let c = code as char;
    let bad = || ProtocolError::Malformed(c);
    let mut strings = data.split(|b| *b == 0);
    let mut string = || strings.next().map(|s| String::from_utf8_lossy(s).into_owned()).ok_or_else(bad);
    let nul_terminated = || data.last() == Some(&0);
    Ok(match code {
        b'O' => {
            if data.len() < 12 {
                return Err(bad());
            }
            let word = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().expect("four bytes"));
            // Macro lists a filter may append (SMFIR_SETSYMLIST) are not needed: we
            // send our fixed set whatever a filter asks for.
            Response::Negotiated { version: word(0), actions: word(4), protocol: word(8) }
        }
        b'c' => Response::Continue,
        b'a' => Response::Accept,
        b'r' => Response::Reject,
        b't' => Response::Tempfail,
        b'd' => Response::Discard,
        b'p' => Response::Progress,
        b's' => Response::Skip,
        b'4' => Response::Shutdown,
        b'f' => Response::ConnectionFail,
        b'y' => {
            let text = string()?;
            if !reply_ok(&text) {
                return Err(bad());
            }
            Response::ReplyCode(text)
        }
        b'h' if nul_terminated() => Response::Modify(Modification::AddHeader { name: string()?, value: string()? }),
        b'i' | b'm' if data.len() >= 4 && nul_terminated() => {
            let index = u32::from_be_bytes(data[..4].try_into().expect("four bytes"));
            let mut parts = data[4..].split(|b| *b == 0);
            let mut next = || parts.next().map(|s| String::from_utf8_lossy(s).into_owned()).ok_or_else(bad);
            let (name, value) = (next()?, next()?);
            if code == b'i' {
                Response::Modify(Modification::InsertHeader { index, name, value })
            } else {
                Response::Modify(Modification::ChangeHeader { index, name, value })
            }
        }
        b'b' => Response::Modify(Modification::ReplaceBody(data.to_vec())),
        b'+' if nul_terminated() => Response::Modify(Modification::AddRecipient { address: string()?, params: None }),
        b'2' if nul_terminated() => {
            let address = string()?;
            let params = string().ok().filter(|p| !p.is_empty());
            Response::Modify(Modification::AddRecipient { address, params })
        }
        b'-' if nul_terminated() => Response::Modify(Modification::DeleteRecipient(string()?)),
        b'e' if nul_terminated() => {
            let address = string()?;
            let params = string().ok().filter(|p| !p.is_empty());
            Response::Modify(Modification::ChangeFrom { address, params })
        }
        b'q' => Response::Modify(Modification::Quarantine(string().unwrap_or_default())),
        b'h' | b'i' | b'm' | b'+' | b'2' | b'-' | b'e' => return Err(bad()),
        _ => return Err(ProtocolError::Unknown(c)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(cmd: &Command) -> Vec<u8> {
        let mut out = BytesMut::new();
        cmd.encode(&mut out);
        out.to_vec()
    }

    #[test]
    fn commands_encode_as_libmilter_reads_them() {
        assert_eq!(
            packet(&Command::Negotiate { actions: ALL_ACTIONS, protocol: OFFERED_PROTOCOL }),
            [&[0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 1, 0xff][..], &OFFERED_PROTOCOL.to_be_bytes()].concat()
        );
        assert_eq!(
            packet(&Command::Connect {
                hostname: "mx.example",
                family: Family::Inet("192.0.2.7".parse().unwrap(), 25)
            }),
            b"\0\0\0\x19Cmx.example\x004\x00\x19192.0.2.7\0"
        );
        assert_eq!(packet(&Command::Mail(&["<a@b>", "SIZE=10"])), b"\0\0\0\x0fM<a@b>\0SIZE=10\0");
        let pairs = [("{client_addr}", "192.0.2.7".to_string())];
        assert_eq!(
            packet(&Command::Macros { step: Step::Connect, pairs: &pairs }),
            b"\0\0\0\x1aDC{client_addr}\x00192.0.2.7\0"
        );
        assert_eq!(packet(&Command::Header { name: "Subject", value: "hi\0there" }), b"\0\0\0\x11LSubject\0hithere\0");
        assert_eq!(packet(&Command::Body(b"x\r\n")), b"\0\0\0\x04Bx\r\n");
        assert_eq!(packet(&Command::Quit), b"\0\0\0\x01Q");
    }

    #[test]
    fn responses_decode_and_bad_ones_are_named() {
        assert_eq!(decode(b"c"), Ok(Response::Continue));
        assert_eq!(decode(b"y550 5.7.1 Virus found\0"), Ok(Response::ReplyCode("550 5.7.1 Virus found".into())));
        assert!(decode(b"y250 ok\0").is_err(), "a filter cannot make a refusal a success");
        assert!(decode(b"yabc\0").is_err());
        assert_eq!(
            decode(b"y550-5.7.1 one\r\n550 5.7.1 two\0"),
            Ok(Response::ReplyCode("550-5.7.1 one\r\n550 5.7.1 two".into()))
        );
        for bad in [&b"y550 x\r\n250 ok\0"[..], b"y550 x\r\n\0", b"y550-x\0", b"y550 x\n550 y\0", b"y550 a\rb\0"] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(header_ok("X-Spam", "yes;\n\tscore=5"));
        for (n, v) in
            [("X", "a\n.\nRSET"), ("X", "a\r\nb"), ("X Y", "v"), ("X:", "v"), ("", "v"), ("X", "a\0"), ("X", "end\n")]
        {
            assert!(!header_ok(n, v), "{n:?} {v:?}");
        }
        assert!(envelope_ok("<a@b>", Some("NOTIFY=NEVER")));
        assert!(!envelope_ok("<a@b>\r\nRCPT TO:<x@y>", None));
        assert!(!envelope_ok("<a@b>", Some("X=1\r\nDATA")));
        assert_eq!(
            decode(b"m\0\0\0\x01Subject\0\0"),
            Ok(Response::Modify(Modification::ChangeHeader { index: 1, name: "Subject".into(), value: String::new() }))
        );
        assert_eq!(
            decode(b"hX-Virus\0clean\0"),
            Ok(Response::Modify(Modification::AddHeader { name: "X-Virus".into(), value: "clean".into() }))
        );
        assert_eq!(
            decode(b"2<x@y>\0NOTIFY=NEVER\0"),
            Ok(Response::Modify(Modification::AddRecipient {
                address: "<x@y>".into(),
                params: Some("NOTIFY=NEVER".into())
            }))
        );
        assert_eq!(decode(b"hX-Virus"), Err(ProtocolError::Malformed('h')), "not NUL-terminated");
        assert_eq!(decode(b"i\0\0"), Err(ProtocolError::Malformed('i')));
        assert_eq!(decode(b"Z"), Err(ProtocolError::Unknown('Z')));
        assert_eq!(decode(b""), Err(ProtocolError::Empty));
        let mut neg = b"O".to_vec();
        for w in [6u32, 0x3, 0x10] {
            neg.extend(w.to_be_bytes());
        }
        neg.extend(b"\0\0\0\x00{j}\0");
        assert_eq!(decode(&neg), Ok(Response::Negotiated { version: 6, actions: 3, protocol: 0x10 }));
        assert_eq!(packet_len(&[0, 0, 0, 5]), Ok(Some(5)));
        assert_eq!(packet_len(&[0, 0]), Ok(None));
        assert!(packet_len(&[0x7f, 0, 0, 0]).is_err());
        assert!(packet_len(&[0, 0, 0, 0]).is_err());
    }
}
