//! PROXY protocol headers (HAProxy's proxy-protocol.txt) sent to a backend right after
//! connecting: source is the client, destination the address it reached.

use crate::addr::{ClientAddr, LocalAddr};
use ppp::{v1, v2};

pub fn v1_header(client: ClientAddr, local: LocalAddr) -> Vec<u8> {
    v1::Addresses::from((client.socket(), local.socket())).to_string().into_bytes()
}

pub fn v2_header(client: ClientAddr, local: LocalAddr) -> Vec<u8> {
    let addresses = v2::Addresses::from((client.socket(), local.socket()));
    v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, addresses)
        .build()
        .expect("a v2 header with two addresses and no TLVs is far below its size limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(c: &str, l: &str) -> (ClientAddr, LocalAddr) {
        (ClientAddr::new(c.parse().unwrap()), LocalAddr::new(l.parse().unwrap()))
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let (c, l) = pair("127.0.0.77:40000", "127.0.0.1:2525");
        assert_eq!(v1_header(c, l), b"PROXY TCP4 127.0.0.77 127.0.0.1 40000 2525\r\n");
        let (c, l) = pair("[2001:db8::7]:1", "[2001:db8::1]:25");
        assert_eq!(v1_header(c, l), b"PROXY TCP6 2001:db8::7 2001:db8::1 1 25\r\n");
    }

    #[test]
    fn v2_round_trips_through_the_parser() {
        let (c, l) = pair("127.0.0.77:40000", "127.0.0.1:2525");
        let bytes = v2_header(c, l);
        let header = v2::Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(header.command, v2::Command::Proxy);
        assert_eq!(
            header.addresses,
            v2::Addresses::from(("127.0.0.77:40000".parse::<std::net::SocketAddr>().unwrap(),
                                 "127.0.0.1:2525".parse::<std::net::SocketAddr>().unwrap()))
        );
    }
}
