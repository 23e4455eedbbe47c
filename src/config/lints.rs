//! Checks of a config that parses but is likely not what its author meant: an open
//! relay (an error unless acknowledged), `never` entries with nothing to override,
//! a backend told nothing about the client, broad trusted proxies, passwords in clear
//! text on a public listener. Each names the key it is about.

use super::raw::RawConfig;
use super::{AuthPolicy, Backend, ListenerTls, Validator, parse_network};
use crate::identity::Identity;
use crate::policy::RelayPolicy;
use ipnet::IpNet;
use std::net::IpAddr;

/// Ranges no stranger on the Internet can send from: private, loopback, link-local,
/// shared (CGNAT), benchmarking and documentation ranges.
const NOT_PUBLIC: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "2001:db8::/32",
];

/// Whether `net` holds any address outside [`NOT_PUBLIC`].
pub(crate) fn holds_public(net: &IpNet) -> bool {
    !NOT_PUBLIC.iter().any(|n| n.parse::<IpNet>().expect("valid literal").contains(net))
}

/// Whether a listener bound to `ip` is reachable by strangers: a wildcard or public
/// address.
pub(crate) fn faces_the_internet(ip: IpAddr) -> bool {
    is_public_address(ip)
}

fn is_public_address(ip: IpAddr) -> bool {
    ip.is_unspecified() || holds_public(&IpNet::from(ip))
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Validator {
    pub(super) fn lint(
        &mut self,
        raw: &RawConfig,
        listeners: &[(usize, super::Listener)],
        relay: &RelayPolicy,
        backends: &[Backend],
        trusted_proxies: &[IpNet],
    ) {
        self.open_relay(raw, relay);
        for (i, never) in relay.never.iter().enumerate() {
            let allowed_otherwise = relay.authenticated || relay.networks.iter().any(|n| overlap(n, never));
            if !allowed_otherwise && relay.local_addresses.is_empty() {
                self.warnings.push(format!(
                    "relay.never[{i}] ({never}): nothing else would let these clients relay (no relay.networks \
                     overlap it, relay.authenticated and relay.local_addresses are off); the entry changes nothing"
                ));
            }
        }
        for (i, b) in backends.iter().enumerate() {
            if b.identity == Identity::None {
                self.warnings.push(format!(
                    "backend[{i}].identity = \"none\" ({}): the backend sees every client as this proxy; its own \
                     checks, logs and relay rules cannot tell clients apart",
                    b.address
                ));
            }
        }
        for (i, net) in trusted_proxies.iter().enumerate() {
            let broad = match net {
                IpNet::V4(n) => n.prefix_len() < 24,
                IpNet::V6(n) => n.prefix_len() < 64,
            };
            if broad {
                self.warnings.push(format!(
                    "trust.proxies[{i}] ({net}) is broad: every host in it may claim to be any client, with that \
                     client's relay rights; list the load balancers themselves"
                ));
            }
        }
        if raw.limits.bare_lf.as_deref() == Some("allow") {
            self.warnings.push(
                "limits.bare_lf = \"allow\": bare LF and bare CR reach the backend as they came; a backend that \
                 takes them for line ends (Postfix before 3.9 with its defaults, most legacy servers) can be made \
                 to queue a second, smuggled message (SMTP smuggling), and a retry then duplicates the real one. \
                 Use \"reject\" or \"normalize\" unless every backend is known to be strict"
                    .to_string(),
            );
        }
        if let Some(admin) = &raw.admin
            && admin.token_file.is_none()
            && let Ok(bind) = admin.bind.parse::<std::net::SocketAddr>()
            && !bind.ip().is_loopback()
        {
            self.warnings.push(format!(
                "admin.bind ({bind}) is reachable from other hosts and admin.token_file is not set: anyone who \
                 reaches it reads the metrics; bind it to loopback, or set a token_file (which /bans needs)"
            ));
        }
        for (i, l) in listeners {
            if l.auth != AuthPolicy::Off
                && l.auth_plaintext
                && l.tls == ListenerTls::None
                && is_public_address(l.bind.ip())
            {
                self.warnings.push(format!(
                    "listener[{i}].auth_plaintext ({:?} on {}): passwords cross the network in clear text on an \
                     address reachable from outside",
                    l.name, l.bind
                ));
            }
        }
    }

    /// Public networks in `relay.networks` make an open relay for everyone in them:
    /// an error unless repeated in `relay.public_networks_acknowledged`.
    fn open_relay(&mut self, raw: &RawConfig, relay: &RelayPolicy) {
        let mut acknowledged = Vec::new();
        for (i, text) in raw.relay.public_networks_acknowledged.iter().enumerate() {
            let key = format!("relay.public_networks_acknowledged[{i}]");
            match parse_network(text) {
                Ok(net) if relay.networks.contains(&net) => acknowledged.push(net),
                Ok(net) => self.error(key, format!("{net} is not in relay.networks: it acknowledges nothing")),
                Err(e) => self.error(key, format!("{text:?}: {e}")),
            }
        }
        if !relay.enabled {
            return;
        }
        for (i, net) in relay.networks.iter().enumerate() {
            if !holds_public(net) {
                continue;
            }
            let everyone = net.prefix_len() == 0;
            if !acknowledged.contains(net) {
                let what = if everyone { "every address: this is an open relay" } else { "public addresses" };
                self.error(
                    format!("relay.networks[{i}]"),
                    format!(
                        "{net} holds {what}; anyone sending from there may relay mail through this server. If \
                         that is meant, repeat it in relay.public_networks_acknowledged"
                    ),
                );
            } else if everyone {
                self.warnings
                    .push(format!("relay.networks[{i}] ({net}): open relay, acknowledged; every client may relay"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_or_not() {
        for public in ["0.0.0.0/0", "::/0", "8.8.8.0/24", "10.0.0.0/7", "2a00:1450::/32", "198.51.100.0/23"] {
            assert!(holds_public(&public.parse().unwrap()), "{public}");
        }
        for private in ["10.2.0.0/16", "127.0.0.1/32", "192.168.1.0/24", "fd00::/8", "::1/128", "203.0.113.0/28"] {
            assert!(!holds_public(&private.parse().unwrap()), "{private}");
        }
    }
}
