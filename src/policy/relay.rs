//! The relay decision at RCPT: mail to local domains from anyone; anything else only
//! for clients the config lets relay, and never for `relay.never`.

use super::{Destination, DomainSet};
use crate::addr::Client;
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone)]
pub(crate) struct RelayPolicy {
    pub(crate) enabled: bool,
    pub(crate) local_domains: DomainSet,
    pub(crate) authenticated: bool,
    pub(crate) networks: Vec<IpNet>,
    pub(crate) local_addresses: Vec<IpAddr>,
    pub(crate) never: Vec<IpNet>,
}

/// The decision and the name of the rule that made it (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayVerdict {
    /// Mail for a local domain: not relaying at all.
    Local,
    Relay(&'static str),
    Denied(&'static str),
}

#[cfg(test)]
impl RelayVerdict {
    fn allowed(&self) -> bool {
        !matches!(self, RelayVerdict::Denied(_))
    }
}

impl RelayPolicy {
    /// Whether `client` (`authenticated` or not) may send to `destination`. A client
    /// whose address a proxy did not name never relays: the address is the proxy's.
    pub(crate) fn decide(&self, client: &Client, authenticated: bool, destination: &Destination) -> RelayVerdict {
        match destination {
            Destination::Postmaster => return RelayVerdict::Local,
            Destination::Domain(d) if self.local_domains.contains(d) => return RelayVerdict::Local,
            _ => {}
        }
        if !self.enabled {
            return RelayVerdict::Denied("relay.enabled = false");
        }
        if !client.address_known() {
            return RelayVerdict::Denied("client address unknown (PROXY UNKNOWN)");
        }
        let ip = client.addr.ip();
        if self.never.iter().any(|n| n.contains(&ip)) {
            return RelayVerdict::Denied("relay.never");
        }
        if self.networks.iter().any(|n| n.contains(&ip)) {
            return RelayVerdict::Relay("relay.networks");
        }
        if self.local_addresses.contains(&client.local.ip()) {
            return RelayVerdict::Relay("relay.local_addresses");
        }
        if self.authenticated && authenticated {
            return RelayVerdict::Relay("relay.authenticated");
        }
        RelayVerdict::Denied("no relay rule matched")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::address::classify;

    fn policy() -> RelayPolicy {
        RelayPolicy {
            enabled: true,
            local_domains: DomainSet::new(["example.com", ".example.com"]),
            authenticated: true,
            networks: vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.0/24".parse().unwrap()],
            local_addresses: vec!["10.0.0.25".parse().unwrap()],
            never: vec!["10.66.0.0/16".parse().unwrap()],
        }
    }

    /// A client at `ip` that reached `local`, and whether it authenticated.
    fn client(ip: &str, local: &str, authenticated: bool) -> (Client, bool) {
        use crate::addr::{ClientAddr, LocalAddr};
        let at = |ip: &str| std::net::SocketAddr::new(ip.parse().unwrap(), 25);
        (Client::direct(ClientAddr::new(at(ip)), LocalAddr::new(at(local))), authenticated)
    }

    fn decide(p: &RelayPolicy, (c, authenticated): &(Client, bool), rcpt: &str) -> RelayVerdict {
        p.decide(c, *authenticated, &classify(rcpt).unwrap())
    }

    const OUTSIDER: &str = "203.0.113.9";
    const PUBLIC: &str = "198.51.100.1";

    #[test]
    fn local_domains_accepted_from_anyone() {
        let p = policy();
        for ip in [OUTSIDER, "10.66.1.1"] {
            let c = client(ip, PUBLIC, false);
            assert_eq!(decide(&p, &c, "u@example.com"), RelayVerdict::Local);
            assert_eq!(decide(&p, &c, "u@Sub.Example.COM"), RelayVerdict::Local);
            assert_eq!(decide(&p, &c, "postmaster"), RelayVerdict::Local);
        }
    }

    #[test]
    fn outsider_may_not_relay() {
        let p = policy();
        let c = client(OUTSIDER, PUBLIC, false);
        assert_eq!(decide(&p, &c, "u@remote.test"), RelayVerdict::Denied("no relay rule matched"));
    }

    #[test]
    fn networks_local_addresses_and_auth_allow_relay() {
        let p = policy();
        assert_eq!(
            decide(&p, &client("10.1.2.3", PUBLIC, false), "u@remote.test"),
            RelayVerdict::Relay("relay.networks")
        );
        assert_eq!(
            decide(&p, &client("192.0.2.77", PUBLIC, false), "u@remote.test"),
            RelayVerdict::Relay("relay.networks")
        );
        assert_eq!(
            decide(&p, &client(OUTSIDER, "10.0.0.25", false), "u@remote.test"),
            RelayVerdict::Relay("relay.local_addresses")
        );
        assert_eq!(
            decide(&p, &client(OUTSIDER, "10.0.0.26", false), "u@remote.test"),
            RelayVerdict::Denied("no relay rule matched")
        );
        assert_eq!(
            decide(&p, &client(OUTSIDER, PUBLIC, true), "u@remote.test"),
            RelayVerdict::Relay("relay.authenticated")
        );
        let mut no_auth = policy();
        no_auth.authenticated = false;
        assert!(!decide(&no_auth, &client(OUTSIDER, PUBLIC, true), "u@remote.test").allowed());
    }

    #[test]
    fn never_beats_everything() {
        let p = policy();
        // 10.66.0.0/16 is inside networks 10.0.0.0/8, connects to a local address, and logged in.
        let c = client("10.66.1.1", "10.0.0.25", true);
        assert_eq!(decide(&p, &c, "u@remote.test"), RelayVerdict::Denied("relay.never"));
    }

    #[test]
    fn unknown_client_never_relays() {
        let p = policy();
        let mut c = client("10.1.2.3", "10.0.0.25", true);
        c.0.origin = crate::addr::Origin::Unknown { proxy: c.0.addr };
        assert_eq!(decide(&p, &c, "u@remote.test"), RelayVerdict::Denied("client address unknown (PROXY UNKNOWN)"));
        assert_eq!(decide(&p, &c, "u@example.com"), RelayVerdict::Local);
    }

    #[test]
    fn disabled_relay_refuses_all_relay_but_not_local_mail() {
        let mut p = policy();
        p.enabled = false;
        let c = client("10.1.2.3", "10.0.0.25", true);
        assert_eq!(decide(&p, &c, "u@remote.test"), RelayVerdict::Denied("relay.enabled = false"));
        assert_eq!(decide(&p, &c, "u@example.com"), RelayVerdict::Local);
    }

    #[test]
    fn routed_forms_need_relay_permission() {
        let p = policy();
        let outsider = client(OUTSIDER, PUBLIC, false);
        let insider = client("10.1.2.3", PUBLIC, false);
        for rcpt in [
            "u%remote.test@example.com",
            "remote.test!u@example.com",
            "@example.com:u@remote.test",
            "\"u@remote.test\"@example.com",
            "u@remote.test@example.com",
            "u@[192.0.2.1]",
            "u@example.com.",
            "u",
        ] {
            assert!(!decide(&p, &outsider, rcpt).allowed(), "{rcpt} from an outsider");
            assert!(decide(&p, &insider, rcpt).allowed(), "{rcpt} from relay.networks");
        }
    }
}
