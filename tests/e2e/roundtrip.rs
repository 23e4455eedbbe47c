//! Property tests: encoders and decoders agree, and parsers never panic on any input.

use bytes::BytesMut;
use portcullis::addr::{ClientAddr, LocalAddr};
use portcullis::identity::proxy::{self, Proxied};
use portcullis::smtp::{ReplyParser, xtext};
use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};

fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>(), any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(a, p, b, q)| { (SocketAddr::new(IpAddr::from(a), p), SocketAddr::new(IpAddr::from(b), q)) }),
        (any::<[u8; 16]>(), any::<u16>(), any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(a, p, b, q)| { (SocketAddr::new(IpAddr::from(a), p), SocketAddr::new(IpAddr::from(b), q)) }),
    ]
}

proptest! {
    #[test]
    fn xtext_round_trips(s in ".*") {
        let encoded = xtext::encode(&s);
        prop_assert!(encoded.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='));
        prop_assert_eq!(xtext::decode(&encoded).unwrap(), s.as_bytes());
    }

    #[test]
    fn proxy_headers_round_trip((client, local) in socket_pair()) {
        let (c, l) = (ClientAddr::new(client), LocalAddr::new(local));
        // Mapped IPv6 addresses are normalised to IPv4 on the way in.
        let expected = Proxied::Tcp { source: c.socket(), destination: l.socket() };
        if c.socket().is_ipv4() == l.socket().is_ipv4() {
            for header in [proxy::v1_header(c, l), proxy::v2_header(c, l)] {
                prop_assert_eq!(proxy::decode(&header).unwrap(), Some((expected, header.len())));
            }
        }
    }

    #[test]
    fn proxy_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = proxy::decode(&bytes);
        let mut prefixed = b"PROXY ".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = proxy::decode(&prefixed);
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&bytes);
        let _ = proxy::decode(&v2);
    }

    #[test]
    fn replies_round_trip(code in 200u16..=599, lines in proptest::collection::vec("[ -~]{0,40}", 1..6)) {
        let mut text = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            text.push_str(&format!("{code}{sep}{line}\r\n"));
        }
        let mut buf = BytesMut::from(text.as_str());
        let reply = ReplyParser::parse(&mut buf).unwrap().unwrap();
        prop_assert_eq!(reply.code, code);
        prop_assert_eq!(reply.as_bytes(), text.as_bytes());
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn reply_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = ReplyParser::parse(&mut BytesMut::from(&bytes[..]));
    }

    #[test]
    fn command_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = portcullis::smtp::command::parse(&bytes);
    }
}

proptest! {
    /// Whatever a client sends, normalize mode hands the backend clean CRLF lines with
    /// at most one end of data, and only as the very last bytes.
    #[test]
    fn normalized_bodies_hold_exactly_one_message(
        body in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'.'), Just(b'\r'), Just(b'\n')], 0..60)
    ) {
        use portcullis::smtp::{BareLf, DataScanner, Scan};
        let mut scanner = DataScanner::new(1 << 20, BareLf::Normalize);
        let mut out = Vec::new();
        let ended = matches!(scanner.normalize(&body, &mut out), Scan::End(_));
        prop_assert!(scanner.violation().is_none());
        for (i, &b) in out.iter().enumerate() {
            if b == b'\r' { prop_assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR in {:?}", out); }
            if b == b'\n' { prop_assert!(i > 0 && out[i - 1] == b'\r', "bare LF in {:?}", out); }
        }
        // The end of data as a backend sees it: CRLF.CRLF, or ".\r\n" at the very start.
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(&out);
        let ends: Vec<usize> = framed.windows(5).enumerate().filter(|(_, w)| w == b"\r\n.\r\n").map(|(i, _)| i).collect();
        if ended {
            prop_assert_eq!(ends, vec![framed.len() - 5]);
        } else {
            prop_assert!(ends.is_empty(), "a second message could start in {:?}", out);
        }
    }
}
