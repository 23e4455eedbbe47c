//! Network notation of the config: CIDR (`10.0.0.0/8`), address/mask
//! (`192.0.2.0/255.255.255.0`) or a single address.

use ipnet::IpNet;
use std::net::IpAddr;
use thiserror::Error;

/// Why a network in the config is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum NetError {
    #[error("not an address or network")]
    NotAnAddress,
    #[error("not an address before '/'")]
    BadAddress,
    #[error("mask is not an address")]
    BadMask,
    #[error("mask does not fit the address family")]
    FamilyMismatch,
    #[error("mask is not contiguous")]
    NotContiguous,
    #[error("not a network (CIDR or address/mask)")]
    NotANetwork,
}

pub(crate) fn parse_network(text: &str) -> Result<IpNet, NetError> {
    let net = match text.split_once('/') {
        None => {
            let ip: IpAddr = text.parse().map_err(|_| NetError::NotAnAddress)?;
            IpNet::from(ip)
        }
        Some((addr, mask)) if mask.contains(['.', ':']) => {
            let addr: IpAddr = addr.parse().map_err(|_| NetError::BadAddress)?;
            let mask: IpAddr = mask.parse().map_err(|_| NetError::BadMask)?;
            if addr.is_ipv4() != mask.is_ipv4() {
                return Err(NetError::FamilyMismatch);
            }
            let prefix = ipnet::ip_mask_to_prefix(mask).map_err(|_| NetError::NotContiguous)?;
            IpNet::new(addr, prefix).map_err(|_| NetError::FamilyMismatch)?
        }
        Some(_) => text.parse::<IpNet>().map_err(|_| NetError::NotANetwork)?,
    };
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        // Rules are matched against normalised (IPv4) peers.
        return Ok(IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("prefix in range").trunc());
    }
    Ok(net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse_network("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_network("192.0.2.0/255.255.255.0").unwrap().to_string(), "192.0.2.0/24");
        assert_eq!(parse_network("192.0.2.9/255.255.255.0").unwrap().to_string(), "192.0.2.0/24");
        assert_eq!(parse_network("192.0.2.10").unwrap().to_string(), "192.0.2.10/32");
        assert_eq!(parse_network("::/0").unwrap().to_string(), "::/0");
        assert_eq!(parse_network("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(parse_network("::ffff:10.0.0.0/104").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn errors() {
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("10.0.0.0/255.0.255.0").is_err());
        assert!(parse_network("10.0.0.0/ffff::").is_err());
        assert!(parse_network("example.com").is_err());
        assert!(parse_network("10.0.0/8").is_err());
        assert!(parse_network("").is_err());
    }
}
