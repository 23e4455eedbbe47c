//! XCLIENT (Postfix XCLIENT_README): the backend takes over the client's identity for
//! the whole session, answers with a fresh 220, and wants EHLO again.

use super::{ClientFacts, UNAVAILABLE, addr_value, helo_value, pack_commands};
use crate::smtp::{Capabilities, xtext};

/// The XCLIENT lines to send, holding only attributes the backend advertised, with
/// NAME and ADDR last. Empty if the backend offers none of them.
pub(crate) fn commands(facts: &ClientFacts<'_>, caps: &Capabilities) -> Vec<String> {
    let (client, known) = (facts.client, facts.client.address_known());
    let proto = if facts.esmtp { "ESMTP" } else { "SMTP" };
    let candidates = [
        ("PROTO", proto.to_string()),
        ("HELO", helo_value(facts.helo)),
        ("PORT", if known { client.addr.socket().port().to_string() } else { UNAVAILABLE.into() }),
        ("DESTADDR", addr_value(client.local.ip())),
        ("DESTPORT", client.local.socket().port().to_string()),
        // Tells the backend the session is authenticated (Postfix: smtpd_sasl_* sees it).
        ("LOGIN", facts.login.map_or_else(|| "[UNAVAILABLE]".to_string(), xtext::encode)),
        // No reverse DNS here: the backend is told the name is unknown.
        ("NAME", "[UNAVAILABLE]".to_string()),
        ("ADDR", if known { addr_value(client.addr.ip()) } else { UNAVAILABLE.into() }),
    ];
    let attrs: Vec<_> = candidates
        .into_iter()
        .filter(|(name, _)| caps.xclient_offers(name) && (*name != "LOGIN" || facts.login.is_some()))
        .collect();
    pack_commands("XCLIENT", &attrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Client, ClientAddr, LocalAddr};

    fn facts(client: &str) -> ClientFacts<'static> {
        ClientFacts {
            client: Client::direct(
                ClientAddr::new(client.parse().unwrap()),
                LocalAddr::new("192.0.2.25:25".parse().unwrap()),
            ),
            helo: "client name+x",
            esmtp: true,
            login: None,
        }
    }

    fn caps(attrs: &[&str]) -> Capabilities {
        Capabilities { xclient: Some(attrs.iter().map(|s| s.to_string()).collect()), ..Default::default() }
    }

    #[test]
    fn only_advertised_attributes_name_and_addr_last() {
        let all = caps(&["NAME", "ADDR", "PROTO", "HELO", "REVERSE_NAME", "PORT", "LOGIN", "DESTADDR", "DESTPORT"]);
        assert_eq!(
            commands(&facts("203.0.113.9:40000"), &all),
            vec![
                "XCLIENT PROTO=ESMTP HELO=client+20name+2Bx PORT=40000 DESTADDR=192.0.2.25 \
                 DESTPORT=25 NAME=[UNAVAILABLE] ADDR=203.0.113.9\r\n"
                    .to_string()
            ]
        );
        assert_eq!(
            commands(&facts("[2001:db8::9]:1"), &caps(&["ADDR", "HELO"])),
            vec!["XCLIENT HELO=client+20name+2Bx ADDR=IPV6:2001:db8::9\r\n".to_string()]
        );
        let mut v6 = facts("[2001:db8::9]:1");
        v6.client.local = LocalAddr::new("[2001:db8::25]:25".parse().unwrap());
        assert_eq!(
            commands(&v6, &caps(&["ADDR", "DESTADDR"])),
            vec!["XCLIENT DESTADDR=IPV6:2001:db8::25 ADDR=IPV6:2001:db8::9\r\n".to_string()]
        );
        assert!(commands(&facts("203.0.113.9:1"), &caps(&[])).is_empty());
        let mut logged_in = facts("203.0.113.9:1");
        logged_in.login = Some("alice smith");
        assert_eq!(
            commands(&logged_in, &caps(&["ADDR", "LOGIN"])),
            vec!["XCLIENT LOGIN=alice+20smith ADDR=203.0.113.9\r\n".to_string()]
        );
    }
}
