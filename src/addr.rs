//! The client, made once at accept ([`Client`]: its address, the local address it
//! reached, how the address is known), read by every decision, identity line, filter
//! and `explain`. The address newtypes keep the client and the local address apart so
//! a rule can never be checked against the wrong one. IPv4-mapped IPv6 is normalised
//! on entry.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The client of a session, as made at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Client {
    /// The TCP peer, or the source a trusted proxy's PROXY header named.
    pub(crate) addr: ClientAddr,
    /// The local address and port the client connected to (or the PROXY destination).
    pub(crate) local: LocalAddr,
    /// Whether the address is the TCP peer, named by a proxy, or unknown.
    pub(crate) origin: Origin,
}

impl Client {
    /// A client that connected directly.
    pub(crate) fn direct(addr: ClientAddr, local: LocalAddr) -> Client {
        Client { addr, local, origin: Origin::Direct }
    }

    /// Whether `addr` is really the client's (a proxy may not have said).
    pub(crate) fn address_known(&self) -> bool {
        self.origin.address_known()
    }

    /// The network the client is counted in, for rates and bans.
    pub(crate) fn network(&self, ipv6_prefix: u8) -> IpNet {
        network(self.addr.ip(), ipv6_prefix)
    }
}

/// The network an address is counted in: itself for IPv4, its `ipv6_prefix` for IPv6
/// (one host has a whole prefix).
pub(crate) fn network(ip: IpAddr, ipv6_prefix: u8) -> IpNet {
    let prefix = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => ipv6_prefix.min(128),
    };
    IpNet::new(ip, prefix).expect("prefix within range").trunc()
}

/// Turns `::ffff:192.0.2.1` into `192.0.2.1`, so IPv4 rules match dual-stack sockets.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Where the client address of a session comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The TCP peer is the client (or a trusted proxy's own connection, PROXY LOCAL).
    Direct,
    /// A trusted proxy at `proxy` named the client in its PROXY header.
    Proxied { proxy: ClientAddr },
    /// A trusted proxy at `proxy` did not say who the client is (v1 UNKNOWN, a v2
    /// family without addresses): the session's address is the proxy's own, which must
    /// never be taken for a client's, so it never relays.
    Unknown { proxy: ClientAddr },
}

impl Origin {
    /// Whether the session's client address is really the client's.
    pub(crate) fn address_known(&self) -> bool {
        !matches!(self, Origin::Unknown { .. })
    }

    /// The proxy the connection came through, if any.
    pub(crate) fn proxy(&self) -> Option<ClientAddr> {
        match self {
            Origin::Direct => None,
            Origin::Proxied { proxy } | Origin::Unknown { proxy } => Some(*proxy),
        }
    }
}

/// The client as Portcullis judges it: the TCP peer of an accepted connection, or the
/// source a trusted proxy's PROXY header names (see [`Origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(SocketAddr);

/// The local address and port the client connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr(SocketAddr);

// === impl ClientAddr ===

impl ClientAddr {
    pub fn new(addr: SocketAddr) -> Self {
        Self(normalize(addr))
    }
    pub(crate) fn ip(&self) -> IpAddr {
        self.0.ip()
    }
    pub fn socket(&self) -> SocketAddr {
        self.0
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// === impl LocalAddr ===

impl LocalAddr {
    pub fn new(addr: SocketAddr) -> Self {
        Self(normalize(addr))
    }
    pub(crate) fn ip(&self) -> IpAddr {
        self.0.ip()
    }
    pub fn socket(&self) -> SocketAddr {
        self.0
    }
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv6_becomes_ipv4() {
        let a = ClientAddr::new("[::ffff:192.0.2.7]:25".parse().unwrap());
        assert_eq!(a.socket(), "192.0.2.7:25".parse::<SocketAddr>().unwrap());
        let b = ClientAddr::new("[2001:db8::1]:25".parse().unwrap());
        assert_eq!(b.ip(), "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}
