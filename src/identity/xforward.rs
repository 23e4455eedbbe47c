//! XFORWARD (Postfix XFORWARD_README): client attributes for logging, sent before
//! each MAIL; the backend forgets them when the transaction ends.

use super::{ClientFacts, UNAVAILABLE, addr_value, helo_value, pack_commands};
use crate::smtp::Capabilities;

pub(crate) fn commands(facts: &ClientFacts<'_>, caps: &Capabilities) -> Vec<String> {
    let (client, known) = (facts.client, facts.client.address_known());
    let proto = if facts.esmtp { "ESMTP" } else { "SMTP" };
    let candidates = [
        ("NAME", "[UNAVAILABLE]".to_string()),
        ("ADDR", if known { addr_value(client.addr.ip()) } else { UNAVAILABLE.into() }),
        ("PORT", if known { client.addr.socket().port().to_string() } else { UNAVAILABLE.into() }),
        ("PROTO", proto.to_string()),
        ("HELO", helo_value(facts.helo)),
        ("SOURCE", "REMOTE".to_string()),
    ];
    let attrs: Vec<_> = candidates.into_iter().filter(|(name, _)| caps.xforward_offers(name)).collect();
    pack_commands("XFORWARD", &attrs)
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
