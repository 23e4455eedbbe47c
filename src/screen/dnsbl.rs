//! DNS block- and allowlists, the decisions without the lookups: zone entries as
//! postscreen writes them (`zen.spamhaus.org=127.0.0.[2..11]*3`), the name asked for a
//! client, how an answer is read, and the score of a client over every zone.
//!
//! Reading answers is where MTAs have gone wrong: a list that refuses a query (asked
//! through a public or blocked resolver, over its free quota) answers with an address
//! too, and counting that as "listed" rejects every client. Answers that are error
//! codes by convention ([`Answer::Unusable`]) make the zone unusable for this client;
//! they are never a listing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use thiserror::Error;

/// One `[screen] dnsbl` entry: a zone, the answers that count, and their weight
/// (negative for an allowlist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Zone {
    /// The zone without its trailing dot, lower case.
    pub(crate) name: String,
    /// Which answers count; none: any listing answer.
    filter: Option<[Octet; 4]>,
    pub(crate) weight: i32,
}

/// One octet of a reply filter: the values it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Octet(Vec<(u8, u8)>);

impl Octet {
    fn allows(&self, value: u8) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&value))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{entry:?}: {why} (expected \"zone\", \"zone*weight\", \"zone=127.0.0.2\" or \"zone=127.0.0.[2..11;20]*3\")")]
pub(crate) struct ZoneError {
    entry: String,
    why: &'static str,
}

impl Zone {
    pub(crate) fn parse(entry: &str) -> Result<Zone, ZoneError> {
        let bad = |why| ZoneError { entry: entry.to_string(), why };
        let (rest, weight) = match entry.rsplit_once('*') {
            Some((rest, w)) => (rest, w.trim().parse::<i32>().map_err(|_| bad("the weight is not a whole number"))?),
            None => (entry, 1),
        };
        if weight == 0 {
            return Err(bad("a weight of 0 counts nothing"));
        }
        let (name, filter) = match rest.split_once('=') {
            Some((name, filter)) => (name, Some(parse_filter(filter.trim()).ok_or_else(|| bad("bad reply filter"))?)),
            None => (rest, None),
        };
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        let labels_ok = name.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !name.contains('.') || !labels_ok || name.len() > 180 {
            return Err(bad("not a DNS zone name"));
        }
        Ok(Zone { name, filter, weight })
    }

    /// The name asked for `client`: its address reversed under the zone (RFC 5782),
    /// by octet for IPv4 and by nibble for IPv6. Fully qualified.
    pub(crate) fn query_name(&self, client: IpAddr) -> String {
        let mut name = String::with_capacity(80);
        match client {
            IpAddr::V4(v4) => {
                for o in v4.octets().iter().rev() {
                    name.push_str(&o.to_string());
                    name.push('.');
                }
            }
            IpAddr::V6(v6) => {
                for byte in v6.octets().iter().rev() {
                    for nibble in [byte & 0xf, byte >> 4] {
                        name.push(char::from_digit(u32::from(nibble), 16).expect("a nibble"));
                        name.push('.');
                    }
                }
            }
        }
        name.push_str(&self.name);
        name.push('.');
        name
    }

    /// How one A record of this zone's answer reads.
    pub(crate) fn read(&self, answer: Ipv4Addr) -> Answer {
        let o = answer.octets();
        // RFC 5782 2.1: listings are in 127.0.0.0/8. 127.0.0.1 is the address a list
        // never lists (it is the "is the list working" probe) and what several lists
        // answer when they refuse; 127.255.255.0/24 is Spamhaus' and others' error
        // range (252 typo, 254 public resolver, 255 over the quota); 127.0.0.255 is
        // dnswl.org's "over the quota".
        if o[0] != 127 || o[1..] == [0, 0, 1] || o[1..3] == [255, 255] || o[1..] == [0, 0, 255] {
            return Answer::Unusable;
        }
        match &self.filter {
            Some(filter) if !filter.iter().zip(o).all(|(f, v)| f.allows(v)) => Answer::Other,
            _ => Answer::Listed,
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// `127.0.0.[2..11;20]`: four octets, each a number or a bracketed list of numbers
/// and ranges separated by `;`.
fn parse_filter(text: &str) -> Option<[Octet; 4]> {
    let mut octets = Vec::with_capacity(4);
    let mut rest = text;
    while !rest.is_empty() {
        let (part, tail) = if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            (&inner[..end], &inner[end + 1..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let mut ranges = Vec::new();
        for item in part.split(';') {
            let (lo, hi) = item.split_once("..").unwrap_or((item, item));
            let (lo, hi) = (lo.trim().parse::<u8>().ok()?, hi.trim().parse::<u8>().ok()?);
            if lo > hi {
                return None;
            }
            ranges.push((lo, hi));
        }
        octets.push(Octet(ranges));
        rest = match tail.strip_prefix('.') {
            Some(t) if !t.is_empty() => t,
            Some(_) => return None,
            None if tail.is_empty() => tail,
            None => return None,
        };
    }
    octets.try_into().ok()
}

/// How one address in a zone's answer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A listing the zone's filter counts.
    Listed,
    /// A listing the filter does not count (another sublist, say).
    Other,
    /// An error code: the zone cannot answer for us now.
    Unusable,
}

/// What one zone said about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Listed,
    NotListed,
    /// An error code, a DNS failure or no answer in time: counted as nothing.
    Unusable(Unusable),
}

impl Outcome {
    /// Its name in metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Listed => "listed",
            Outcome::NotListed => "not_listed",
            Outcome::Unusable(Unusable::ErrorCode) => "error_code",
            Outcome::Unusable(Unusable::Lookup) => "lookup_failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unusable {
    /// The list answered with an error code (blocked or public resolver, quota).
    ErrorCode,
    /// The resolver failed or did not answer within the deadline.
    Lookup,
}

impl Outcome {
    /// One zone's outcome from the A records of its answer (empty: not listed). One
    /// error code spoils the whole answer: a list that says it refused us has not
    /// listed anyone.
    pub(crate) fn of(zone: &Zone, answers: &[Ipv4Addr]) -> Outcome {
        let read: Vec<Answer> = answers.iter().map(|a| zone.read(*a)).collect();
        if read.contains(&Answer::Unusable) {
            Outcome::Unusable(Unusable::ErrorCode)
        } else if read.contains(&Answer::Listed) {
            Outcome::Listed
        } else {
            Outcome::NotListed
        }
    }
}

/// A client's score: the weights of the zones that list it, and which did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Score {
    pub(crate) total: i32,
    /// Zones that listed the client (block- and allowlists), for the log.
    pub(crate) listed_by: Vec<String>,
}

impl Score {
    pub(crate) fn of<'a>(outcomes: impl IntoIterator<Item = (&'a Zone, Outcome)>) -> Score {
        let mut score = Score::default();
        for (zone, outcome) in outcomes {
            if outcome == Outcome::Listed {
                score.total += zone.weight;
                score.listed_by.push(zone.name.clone());
            }
        }
        score
    }

    /// The blocklist zone whose listing weighs most, for the reply text.
    pub(crate) fn worst<'a>(&self, zones: &'a [Zone]) -> Option<&'a Zone> {
        zones.iter().filter(|z| z.weight > 0 && self.listed_by.contains(&z.name)).max_by_key(|z| z.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_postscreen_entries() {
        let z = Zone::parse("zen.spamhaus.org=127.0.0.[2..11]*3").unwrap();
        assert_eq!((z.name.as_str(), z.weight), ("zen.spamhaus.org", 3));
        assert_eq!(z.read(ip("127.0.0.4")), Answer::Listed);
        assert_eq!(z.read(ip("127.0.0.12")), Answer::Other);
        let allow = Zone::parse("list.dnswl.org=127.0.[0..255].[1;2..3]*-2").unwrap();
        assert_eq!(allow.weight, -2);
        assert_eq!(allow.read(ip("127.0.5.3")), Answer::Listed);
        assert_eq!(allow.read(ip("127.0.5.0")), Answer::Other);
        let plain = Zone::parse("bl.example.").unwrap();
        assert_eq!((plain.name.as_str(), plain.weight), ("bl.example", 1));
        assert_eq!(plain.read(ip("127.0.0.2")), Answer::Listed);
        for bad in [
            "",
            "nodot",
            "a..b",
            "bl.example*0",
            "bl.example*x",
            "bl.example=127.0.0",
            "bl.example=127.0.0.[9..2]",
            "bl.example=127.0.0.[2",
            "bl.example=127.0.0.256",
            "bl.example=127.0.0.2.",
        ] {
            assert!(Zone::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn query_names_follow_rfc_5782() {
        let z = Zone::parse("bl.example").unwrap();
        assert_eq!(z.query_name("192.0.2.99".parse().unwrap()), "99.2.0.192.bl.example.");
        assert_eq!(
            z.query_name("2001:db8:1:2:3:4:567:89ab".parse().unwrap()),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example."
        );
    }

    #[test]
    fn error_codes_are_never_listings() {
        let z = Zone::parse("zen.spamhaus.org").unwrap();
        for code in ["127.255.255.254", "127.255.255.252", "127.255.255.255", "127.0.0.1", "127.0.0.255", "10.0.0.2"] {
            assert_eq!(z.read(ip(code)), Answer::Unusable, "{code}");
        }
        assert_eq!(Outcome::of(&z, &[ip("127.0.0.2"), ip("127.255.255.254")]), Outcome::Unusable(Unusable::ErrorCode));
        assert_eq!(Outcome::of(&z, &[]), Outcome::NotListed);
        // Even a filter that would allow the error range does not make it a listing.
        let wide = Zone::parse("zen.spamhaus.org=127.[0..255].[0..255].[0..255]").unwrap();
        assert_eq!(wide.read(ip("127.255.255.254")), Answer::Unusable);
    }

    #[test]
    fn scores_add_weights_and_allowlists_subtract() {
        let zones = [
            Zone::parse("zen.spamhaus.org=127.0.0.[2..11]*3").unwrap(),
            Zone::parse("bl.example*2").unwrap(),
            Zone::parse("list.dnswl.org*-4").unwrap(),
        ];
        let score = Score::of([
            (&zones[0], Outcome::Listed),
            (&zones[1], Outcome::Unusable(Unusable::Lookup)),
            (&zones[2], Outcome::NotListed),
        ]);
        assert_eq!(score.total, 3);
        assert_eq!(score.worst(&zones).unwrap().name, "zen.spamhaus.org");
        let score =
            Score::of([(&zones[0], Outcome::Listed), (&zones[1], Outcome::Listed), (&zones[2], Outcome::Listed)]);
        assert_eq!(score.total, 1);
        assert_eq!(score.listed_by.len(), 3);
    }
}
