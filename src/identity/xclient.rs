//! XCLIENT (Postfix XCLIENT_README): the backend takes over the client's identity for
//! the whole session, answers with a fresh 220, and wants EHLO again.

use super::{ClientFacts, UNAVAILABLE, Value, helo_value, pack_commands};
use crate::smtp::Capabilities;

/// The XCLIENT lines to send, holding only attributes the backend advertised, with
/// NAME and ADDR last. Empty if the backend offers none of them.
pub(crate) fn commands(facts: &ClientFacts<'_>, caps: &Capabilities) -> Vec<String> {
    let (client, known) = (facts.client, facts.client.address_known());
    let unavailable = Value::Plain(UNAVAILABLE);
    let candidates = [
        ("PROTO", Value::Plain(if facts.esmtp { "ESMTP" } else { "SMTP" })),
        ("HELO", helo_value(facts.helo)),
        ("PORT", if known { Value::Port(client.addr.socket().port()) } else { unavailable }),
        ("DESTADDR", Value::Addr(client.local.ip())),
        ("DESTPORT", Value::Port(client.local.socket().port())),
        // Tells the backend the session is authenticated (Postfix: smtpd_sasl_* sees it).
        ("LOGIN", facts.login.map_or(unavailable, Value::Xtext)),
        // No reverse DNS here: the backend is told the name is unknown.
        ("NAME", unavailable),
        ("ADDR", if known { Value::Addr(client.addr.ip()) } else { unavailable }),
    ];
    let mut attrs = [("", unavailable); 8];
    let mut n = 0;
    for (name, value) in candidates {
        if caps.xclient_offers(name) && (name != "LOGIN" || facts.login.is_some()) {
            attrs[n] = (name, value);
            n += 1;
        }
    }
    pack_commands("XCLIENT", &attrs[..n])
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
