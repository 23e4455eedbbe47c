//! What a session offers its client, and the EHLO reply that says so.

/// The extensions offered to one client: what Portcullis supports, narrowed to what
/// the listener allows now (STARTTLS before TLS, AUTH where configured) and to what
/// the backend supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offer {
    /// Advertised with SIZE and enforced on `SIZE=` and on the real bytes.
    pub max_size: u64,
    pub starttls: bool,
    pub auth: bool,
    pub dsn: bool,
    pub smtputf8: bool,
    /// RFC 3030 BODY=BINARYMIME: only when the backend takes BDAT and BINARYMIME, since
    /// binary content cannot become a DATA body.
    pub binarymime: bool,
    /// Messages are held for content filters: no CHUNKING (it would gain nothing, the
    /// whole message is held anyway), hence no BINARYMIME.
    pub held: bool,
}

impl Offer {
    /// The extensions that depend on the backend, as far as `caps` shows them.
    pub(crate) fn following(mut self, caps: &super::Capabilities) -> Self {
        self.dsn = caps.dsn;
        self.smtputf8 = caps.smtputf8;
        self.binarymime = caps.chunking && caps.binarymime && !self.held;
        self
    }
}

/// Appends the EHLO reply, every line ended by CRLF.
pub(crate) fn write_reply(out: &mut Vec<u8>, hostname: &str, offer: &Offer) {
    use std::io::Write;
    let keywords = [
        (true, "PIPELINING"),
        (true, "SIZE"),
        (true, "8BITMIME"),
        (offer.starttls, "STARTTLS"),
        (offer.auth, "AUTH PLAIN LOGIN"),
        (true, "ENHANCEDSTATUSCODES"),
        (!offer.held, "CHUNKING"),
        (offer.binarymime && !offer.held, "BINARYMIME"),
        (offer.dsn, "DSN"),
        (offer.smtputf8, "SMTPUTF8"),
    ];
    out.extend_from_slice(b"250-");
    out.extend_from_slice(hostname.as_bytes());
    let mut last = 0;
    for (_, keyword) in keywords.iter().filter(|(offered, _)| *offered) {
        out.extend_from_slice(b"\r\n");
        last = out.len();
        out.extend_from_slice(b"250-");
        out.extend_from_slice(keyword.as_bytes());
        if *keyword == "SIZE" {
            let _ = write!(out, " {}", offer.max_size);
        }
    }
    // The last line says "250 ".
    out[last + 3] = b' ';
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(hostname: &str, offer: &Offer) -> String {
        let mut out = Vec::new();
        write_reply(&mut out, hostname, offer);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lists_what_is_offered_and_nothing_else() {
        let offer = Offer { max_size: 1000, starttls: true, ..Offer::default() };
        assert_eq!(
            reply("mx.test", &offer),
            "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-STARTTLS\r\n\
             250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
        );
        let offer = Offer { max_size: 5, auth: true, dsn: true, ..Offer::default() };
        assert!(reply("mx.test", &offer).ends_with("250-CHUNKING\r\n250 DSN\r\n"));
        assert!(reply("mx.test", &offer).contains("250-AUTH PLAIN LOGIN\r\n"));
        assert!(!reply("mx.test", &offer).contains("STARTTLS"));
    }
}
