//! PROXY protocol headers (HAProxy's proxy-protocol.txt): encoding the header sent to
//! a backend (source: the client, destination: the address it reached), and strict
//! decoding of a header received from a trusted load balancer.

use crate::addr::{ClientAddr, LocalAddr};
use ppp::{v1, v2};
use std::net::{SocketAddr, SocketAddrV4};
use thiserror::Error;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the spec's 107 bytes).
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted: 16 fixed bytes and up to 1 KiB of addresses and TLVs.
pub const V2_MAX: usize = 16 + 1024;

/// The v2 family and transport bytes the spec defines, datagrams left out: UNSPEC,
/// TCP over IPv4, TCP over IPv6, UNIX stream.
const V2_STREAM_FAMILIES: [u8; 4] = [0x00, 0x11, 0x21, 0x31];

/// Who the load balancer says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// A proxied TCP connection: the real client and the address it connected to.
    Tcp { source: SocketAddr, destination: SocketAddr },
    /// v2 LOCAL (health checks): the connection is the proxy's own.
    Local,
    /// v1 UNKNOWN or a v2 family without addresses: nothing is known of the client.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY header: the connection did not start with one")]
    Missing,
    #[error("PROXY header longer than allowed")]
    TooLong,
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Decodes a header at the start of `buf`: `Ok(None)` until it is complete, then the
/// header and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Proxied, usize)>, ProxyHeaderError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return decode_v2(buf);
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return decode_v1(buf);
    }
    Err(ProxyHeaderError::Missing)
}

fn decode_v1(buf: &[u8]) -> Result<Option<(Proxied, usize)>, ProxyHeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        return if buf.len() >= V1_MAX { Err(ProxyHeaderError::TooLong) } else { Ok(None) };
    };
    if lf == 0 || window[lf - 1] != b'\r' || window[..lf - 1].contains(&b'\r') {
        return Err(ProxyHeaderError::Malformed("v1 header not ended by CRLF".into()));
    }
    let line = std::str::from_utf8(&window[..=lf]).map_err(|_| ProxyHeaderError::Malformed("not text".into()))?;
    let header = v1::Header::try_from(line).map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
    // ppp reads ports with `u16::from_str`, which also takes a leading `+`; the spec's
    // ports are decimal digits only (a TCP line ppp accepts has exactly six words).
    let digits = |word: &str| !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit());
    let mut ports = line.trim_end_matches("\r\n").split(' ').skip(4);
    if !matches!(header.addresses, v1::Addresses::Unknown) && !ports.all(digits) {
        return Err(ProxyHeaderError::Malformed("v1 port not in decimal digits".into()));
    }
    let proxied = match header.addresses {
        v1::Addresses::Tcp4(a) => Proxied::Tcp {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        v1::Addresses::Tcp6(a) => Proxied::Tcp {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        v1::Addresses::Unknown => Proxied::Unknown,
    };
    Ok(Some((proxied, lf + 1)))
}

fn decode_v2(buf: &[u8]) -> Result<Option<(Proxied, usize)>, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > V2_MAX {
        return Err(ProxyHeaderError::TooLong);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let header = v2::Header::try_from(&buf[..total]).map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
    check_tlvs(&header, &buf[..total])?;
    let family = buf[13];
    let proxied = match (header.command, header.protocol, header.addresses) {
        (v2::Command::Local, _, _) => Proxied::Local,
        (v2::Command::Proxy, v2::Protocol::Datagram, _) => {
            return Err(ProxyHeaderError::Malformed("a datagram connection cannot carry SMTP".into()));
        }
        // ppp takes any family with any transport, so AF_INET with no transport (0x10)
        // would read as TCP; the spec says receivers must reject undefined values.
        (v2::Command::Proxy, _, _) if !V2_STREAM_FAMILIES.contains(&family) => {
            return Err(ProxyHeaderError::Malformed(format!("undefined v2 family and transport {family:#04x}")));
        }
        (v2::Command::Proxy, _, v2::Addresses::IPv4(a)) => Proxied::Tcp {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        (v2::Command::Proxy, _, v2::Addresses::IPv6(a)) => Proxied::Tcp {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        (v2::Command::Proxy, _, _) => Proxied::Unknown,
    };
    Ok(Some((proxied, total)))
}

/// The spec's receiver rules for TLVs: each must fit the header, and a CRC32C TLV, if
/// present, must match the header (computed with its own value as zeros).
fn check_tlvs(header: &v2::Header<'_>, bytes: &[u8]) -> Result<(), ProxyHeaderError> {
    const CRC32C: u8 = 0x03;
    let tlv_start = bytes.len() - header.tlv_bytes().len();
    let mut offset = tlv_start;
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|e| ProxyHeaderError::Malformed(format!("TLV: {e}")))?;
        let value_at = offset + 3;
        offset = value_at + tlv.value.len();
        if tlv.kind != CRC32C {
            continue;
        }
        if tlv.value.len() != 4 {
            return Err(ProxyHeaderError::Malformed("CRC32C TLV of the wrong length".into()));
        }
        let mut zeroed = bytes.to_vec();
        zeroed[value_at..value_at + 4].fill(0);
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&zeroed);
        if crc.to_be_bytes() != tlv.value.as_ref() {
            return Err(ProxyHeaderError::Malformed("CRC32C does not match the header".into()));
        }
    }
    Ok(())
}

/// The two addresses in one family. `ClientAddr` and `LocalAddr` turn IPv4-mapped IPv6
/// into IPv4, so a load balancer's `::ffff:192.0.2.1` reaching `2001:db8::1` comes out
/// as IPv4 and IPv6: both are written as IPv6 then, since ppp encodes a mixed pair as
/// UNKNOWN (v1) or as no addresses (v2), and the backend would take the connection for
/// ours.
fn one_family(client: ClientAddr, local: LocalAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddrV4| SocketAddr::from((a.ip().to_ipv6_mapped(), a.port()));
    match (client.socket(), local.socket()) {
        (SocketAddr::V4(c), l @ SocketAddr::V6(_)) => (v6(c), l),
        (c @ SocketAddr::V6(_), SocketAddr::V4(l)) => (c, v6(l)),
        same => same,
    }
}

pub fn v1_header(client: ClientAddr, local: LocalAddr) -> Vec<u8> {
    v1::Addresses::from(one_family(client, local)).to_string().into_bytes()
}

pub fn v2_header(client: ClientAddr, local: LocalAddr) -> Vec<u8> {
    let addresses = v2::Addresses::from(one_family(client, local));
    v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, addresses)
        .build()
        .expect("a v2 header with two addresses and no TLVs is far below its size limit")
}

/// The header of a connection that is the proxy's own (a health check): v1 `UNKNOWN`,
/// which the spec tells receivers to treat as their own connection.
pub(crate) fn v1_local() -> Vec<u8> {
    b"PROXY UNKNOWN\r\n".to_vec()
}

/// v2 `LOCAL`: the connection is the proxy's own (a health check).
pub(crate) fn v2_local() -> Vec<u8> {
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Local,
        v2::Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    .expect("an empty v2 header is far below its size limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(c: &str, l: &str) -> (ClientAddr, LocalAddr) {
        (ClientAddr::new(c.parse().unwrap()), LocalAddr::new(l.parse().unwrap()))
    }

    /// A v2 header for 192.0.2.1:1 -> 192.0.2.2:25 with `tlvs` appended.
    fn v2_with_tlvs(tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11]);
        h.extend_from_slice(&(12 + tlvs.len() as u16).to_be_bytes());
        h.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 25]);
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn tlvs_must_fit_and_a_crc32c_must_match() {
        let expected = tcp("192.0.2.1:1", "192.0.2.2:25");
        // NOOP TLV: fine.
        let noop = v2_with_tlvs(&[0x04, 0x00, 0x02, 0xaa, 0xbb]);
        assert_eq!(decode(&noop), Ok(Some((expected, noop.len()))));
        // A TLV longer than what is left of the header.
        assert!(decode(&v2_with_tlvs(&[0x04, 0x00, 0x09, 0xaa])).is_err());
        // CRC32C: right, then one address byte changed.
        let mut with_crc = v2_with_tlvs(&[0x03, 0x00, 0x04, 0, 0, 0, 0]);
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&with_crc).to_be_bytes();
        let at = with_crc.len() - 4;
        with_crc[at..].copy_from_slice(&crc);
        assert_eq!(decode(&with_crc), Ok(Some((expected, with_crc.len()))));
        with_crc[19] ^= 1;
        assert_eq!(decode(&with_crc), Err(ProxyHeaderError::Malformed("CRC32C does not match the header".into())));
        assert!(decode(&v2_with_tlvs(&[0x03, 0x00, 0x02, 0, 0])).is_err(), "wrong CRC32C length");
    }

    #[test]
    fn health_check_headers_decode_as_local() {
        assert_eq!(decode(&v1_local()), Ok(Some((Proxied::Unknown, 15))));
        assert_eq!(decode(&v2_local()), Ok(Some((Proxied::Local, 16))));
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let (c, l) = pair("127.0.0.77:40000", "127.0.0.1:2525");
        assert_eq!(v1_header(c, l), b"PROXY TCP4 127.0.0.77 127.0.0.1 40000 2525\r\n");
        let (c, l) = pair("[2001:db8::7]:1", "[2001:db8::1]:25");
        assert_eq!(v1_header(c, l), b"PROXY TCP6 2001:db8::7 2001:db8::1 1 25\r\n");
    }

    fn tcp(source: &str, destination: &str) -> Proxied {
        Proxied::Tcp { source: source.parse().unwrap(), destination: destination.parse().unwrap() }
    }

    /// Every prefix of a complete header is "incomplete", never an error or a result.
    fn decode_whole(bytes: &[u8]) -> Result<Option<(Proxied, usize)>, ProxyHeaderError> {
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        decode(bytes)
    }

    #[test]
    fn decodes_what_it_encodes() {
        let (c, l) = pair("127.0.0.77:40000", "127.0.0.1:2525");
        let expected = tcp("127.0.0.77:40000", "127.0.0.1:2525");
        let v1 = v1_header(c, l);
        assert_eq!(decode_whole(&v1), Ok(Some((expected, v1.len()))));
        let v2 = v2_header(c, l);
        assert_eq!(decode_whole(&v2), Ok(Some((expected, v2.len()))));
        let (c, l) = pair("[2001:db8::7]:1", "[2001:db8::1]:25");
        let v1 = v1_header(c, l);
        assert_eq!(decode(&v1), Ok(Some((tcp("[2001:db8::7]:1", "[2001:db8::1]:25"), v1.len()))));
        let v2 = v2_header(c, l);
        assert_eq!(decode(&v2), Ok(Some((tcp("[2001:db8::7]:1", "[2001:db8::1]:25"), v2.len()))));
    }

    #[test]
    fn leaves_what_follows_the_header() {
        let mut bytes = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 25\r\n".to_vec();
        let len = bytes.len();
        bytes.extend_from_slice(b"EHLO x\r\n");
        assert_eq!(decode(&bytes).unwrap().unwrap().1, len);
    }

    #[test]
    fn local_and_unknown() {
        assert_eq!(decode(b"PROXY UNKNOWN\r\n"), Ok(Some((Proxied::Unknown, 15))));
        assert_eq!(
            decode(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n").unwrap().unwrap().0,
            Proxied::Unknown
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(decode(&local), Ok(Some((Proxied::Local, 16))));
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert_eq!(decode(&unspec), Ok(Some((Proxied::Unknown, 16))));
    }

    #[test]
    fn refuses_malformed_and_oversized() {
        use ProxyHeaderError::*;
        assert_eq!(decode(b"EHLO x\r\n"), Err(Missing));
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(Missing));
        assert!(matches!(decode(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 25\n"), Err(Malformed(_))));
        assert!(matches!(decode(b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n"), Err(Malformed(_))));
        assert!(matches!(decode(b"PROXY TCP4 999.0.2.1 192.0.2.2 1 25\r\n"), Err(Malformed(_))));
        assert!(matches!(decode(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 99999\r\n"), Err(Malformed(_))));
        assert!(matches!(decode(b"PROXY TCP4 2001:db8::1 192.0.2.2 1 25\r\n"), Err(Malformed(_))));
        assert!(matches!(decode(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 25\rX\r\n"), Err(Malformed(_))));
        let long = format!("PROXY TCP4 {}", " ".repeat(V1_MAX));
        assert_eq!(decode(long.as_bytes()), Err(TooLong));
        // v2 with a length beyond the cap, a bad version, and a datagram.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(decode(&big), Err(TooLong));
        let mut v3 = V2_SIGNATURE.to_vec();
        v3.extend_from_slice(&[0x31, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert!(matches!(decode(&v3), Err(Malformed(_))));
        let mut dgram = V2_SIGNATURE.to_vec();
        dgram.extend_from_slice(&[0x21, 0x12, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert!(matches!(decode(&dgram), Err(Malformed(_))));
        // A v2 length too short for its address family.
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(decode(&short), Err(Malformed(_))));
    }

    /// ppp reads `+25` as port 25.
    #[test]
    fn v1_ports_are_decimal_digits() {
        for bad in [&b"PROXY TCP4 192.0.2.1 192.0.2.2 +1 25\r\n"[..], b"PROXY TCP6 ::1 ::2 1 +25\r\n"] {
            assert!(matches!(decode(bad), Err(ProxyHeaderError::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            decode(b"PROXY TCP4 192.0.2.1 192.0.2.2 0 25\r\n").unwrap().unwrap().0,
            tcp("192.0.2.1:0", "192.0.2.2:25")
        );
    }

    /// The spec's limit: a v1 header of 107 bytes is taken, one of 108 never.
    #[test]
    fn v1_header_at_most_107_bytes() {
        let line = |len: usize| format!("PROXY UNKNOWN {}\r\n", "x".repeat(len - 16)).into_bytes();
        assert_eq!(decode(&line(V1_MAX)), Ok(Some((Proxied::Unknown, V1_MAX))));
        assert_eq!(decode(&line(V1_MAX + 1)), Err(ProxyHeaderError::TooLong));
        assert_eq!(decode(&line(V1_MAX + 1)[..V1_MAX]), Err(ProxyHeaderError::TooLong));
    }

    /// Found by the proxy_header fuzz target: ppp takes AF_INET or AF_INET6 without a
    /// transport (0x10, 0x20) and UNSPEC over STREAM (0x01); the spec's receivers
    /// reject them.
    #[test]
    fn v2_undefined_family_bytes_are_refused() {
        for family in [0x10, 0x20, 0x01] {
            // 36 zero bytes: addresses of any family, then empty TLVs.
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[0x21, family, 0, 36]);
            h.extend_from_slice(&[0; 36]);
            assert!(matches!(decode(&h), Err(ProxyHeaderError::Malformed(_))), "{family:#04x}");
            // LOCAL discards the address block, whatever its family.
            h[12] = 0x20;
            assert_eq!(decode(&h), Ok(Some((Proxied::Local, h.len()))), "{family:#04x}");
        }
        let mut unix = v2_with_tlvs(&[0; 204]);
        unix[13] = 0x31;
        assert_eq!(decode(&unix), Ok(Some((Proxied::Unknown, unix.len()))));
    }

    /// A load balancer's `::ffff:192.0.2.1` reaching `2001:db8::1` is IPv4 and IPv6 once
    /// normalised; the header sent on must still name the client.
    #[test]
    fn mixed_families_still_name_the_client() {
        let (c, l) = pair("[::ffff:192.0.2.1]:4000", "[2001:db8::1]:25");
        assert_eq!(v1_header(c, l), b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 4000 25\r\n");
        let expected = tcp("[::ffff:192.0.2.1]:4000", "[2001:db8::1]:25");
        let v2 = v2_header(c, l);
        assert_eq!(decode(&v2), Ok(Some((expected, v2.len()))));
        let (c, l) = pair("[2001:db8::7]:4000", "[::ffff:192.0.2.2]:25");
        let v1 = v1_header(c, l);
        assert_eq!(decode(&v1), Ok(Some((tcp("[2001:db8::7]:4000", "[::ffff:192.0.2.2]:25"), v1.len()))));
    }

    #[test]
    fn v2_round_trips_through_the_parser() {
        let (c, l) = pair("127.0.0.77:40000", "127.0.0.1:2525");
        let bytes = v2_header(c, l);
        let header = v2::Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(header.command, v2::Command::Proxy);
        assert_eq!(
            header.addresses,
            v2::Addresses::from((
                "127.0.0.77:40000".parse::<std::net::SocketAddr>().unwrap(),
                "127.0.0.1:2525".parse::<std::net::SocketAddr>().unwrap()
            ))
        );
    }
}
