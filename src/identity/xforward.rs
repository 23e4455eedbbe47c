//! XFORWARD (Postfix XFORWARD_README): client attributes for logging, sent before
//! each MAIL; the backend forgets them when the transaction ends.

use super::{ClientFacts, UNAVAILABLE, Value, helo_value, pack_commands};
use crate::smtp::Capabilities;

pub(crate) fn commands(facts: &ClientFacts<'_>, caps: &Capabilities) -> Vec<String> {
    let (client, known) = (facts.client, facts.client.address_known());
    let unavailable = Value::Plain(UNAVAILABLE);
    let candidates = [
        ("NAME", unavailable),
        ("ADDR", if known { Value::Addr(client.addr.ip()) } else { unavailable }),
        ("PORT", if known { Value::Port(client.addr.socket().port()) } else { unavailable }),
        ("PROTO", Value::Plain(if facts.esmtp { "ESMTP" } else { "SMTP" })),
        ("HELO", helo_value(facts.helo)),
        ("SOURCE", Value::Plain("REMOTE")),
    ];
    let mut attrs = [("", unavailable); 6];
    let mut n = 0;
    for (name, value) in candidates {
        if caps.xforward_offers(name) {
            attrs[n] = (name, value);
            n += 1;
        }
    }
    pack_commands("XFORWARD", &attrs[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Client, ClientAddr, LocalAddr};

    #[test]
    fn postfix_attributes() {
        let facts = ClientFacts {
            client: Client::direct(
                ClientAddr::new("203.0.113.9:4000".parse().unwrap()),
                LocalAddr::new("192.0.2.25:25".parse().unwrap()),
            ),
            helo: "c.example",
            esmtp: false,
            login: None,
        };
        let caps = Capabilities {
            xforward: Some(["NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT"].map(String::from).into()),
            ..Default::default()
        };
        assert_eq!(
            commands(&facts, &caps),
            vec!["XFORWARD NAME=[UNAVAILABLE] ADDR=203.0.113.9 PORT=4000 PROTO=SMTP HELO=c.example SOURCE=REMOTE\r\n"]
        );
    }
}
