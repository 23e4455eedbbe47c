//! What is looked up for a recipient, and how it goes into an LDAP filter. Pure.
//!
//! The key is `local@domain` with the domain as the relay policy reads it (lower
//! case, an internationalised domain as its A-label) and the local part as the client
//! wrote it, quotes taken off: the directory compares local parts its own way
//! (Active Directory and OpenLDAP's `mail` without regard to case), so nothing is
//! folded here. Only plain mailboxes have a key: `<postmaster>` and the routed forms
//! (source routes, `%`, `!`, literals) do not, and the relay policy has already
//! refused those to clients that may not relay.

use crate::policy::address::{self, Destination};

/// The reserved mailbox every domain must accept (RFC 5321 4.5.1).
const POSTMASTER: &str = "postmaster";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// As written, unquoted.
    pub(crate) local: String,
    /// Lower case; an A-label for an internationalised domain.
    pub(crate) domain: String,
}

impl Key {
    /// The key of a RCPT path (the text between `<` and `>`); `smtputf8` when MAIL
    /// said SMTPUTF8. None for anything but a plain mailbox.
    pub(crate) fn parse(path: &str, smtputf8: bool) -> Option<Key> {
        let domain = Self::domain(path, smtputf8)?;
        // A plain mailbox has one `@` outside its quotes (a quoted one holding `@` is
        // a routed form), so the last one ends the local part.
        let (local, _) = path.rsplit_once('@')?;
        let local = unquote(local);
        (!local.is_empty()).then_some(Key { local, domain })
    }

    /// The domain of a plain mailbox (not a routed form, not a bare `postmaster`).
    pub(crate) fn domain(path: &str, smtputf8: bool) -> Option<String> {
        let classified = if smtputf8 { address::classify_utf8(path) } else { address::classify(path) };
        let Ok(Destination::Domain(domain)) = classified else { return None };
        Some(domain)
    }

    /// `local@domain`, as looked up.
    pub(crate) fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// `postmaster@` any domain, in any case: always accepted (RFC 5321 4.5.1).
    pub(crate) fn is_postmaster(&self) -> bool {
        self.local.eq_ignore_ascii_case(POSTMASTER)
    }

    /// The key without its extension (`user+detail` -> `user`), cut at the first of
    /// `delimiters` as Postfix does; none when there is no extension, or when the
    /// local part would be left empty (`+list@d` is an address of its own).
    pub(crate) fn without_extension(&self, delimiters: &str) -> Option<Key> {
        let at = self.local.find(|c| delimiters.contains(c))?;
        (at > 0).then(|| Key { local: self.local[..at].to_string(), domain: self.domain.clone() })
    }
}

/// `"john.doe"` -> `john.doe`, `"a\"b"` -> `a"b`; a local part without quotes as it is.
fn unquote(local: &str) -> String {
    let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else {
        return local.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// `value` as an LDAP filter assertion value (RFC 4515 3): `*`, `(`, `)`, `\` and NUL
/// must be escaped as `\XX`; so are control characters and every byte of a non-ASCII
/// character (the RFC allows any octet to be escaped), so the filter stays ASCII and
/// no value can close the assertion or add a wildcard.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        match b {
            b'*' | b'(' | b')' | b'\\' | 0x00..=0x1f | 0x7f..=0xff => {
                out.push('\\');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
            _ => out.push(char::from(b)),
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The filter for one lookup: every `%s` of `template` replaced by the escaped `value`.
pub(crate) fn filter(template: &str, value: &str) -> String {
    template.replace("%s", &escape(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Option<Key> {
        Key::parse(path, !path.is_ascii())
    }

    #[test]
    fn domain_folded_local_part_kept() {
        let k = key("John.Doe@Example.COM").unwrap();
        assert_eq!(k.address(), "John.Doe@example.com");
        assert_eq!(key("\"john doe\"@example.com").unwrap().local, "john doe");
        assert_eq!(key("\"a\\\"b\"@example.com").unwrap().local, "a\"b");
    }

    #[test]
    fn smtputf8_addresses_take_the_a_label() {
        let k = key("jörg@Bücher.example").unwrap();
        assert_eq!(k.local, "jörg");
        assert_eq!(k.domain, "xn--bcher-kva.example");
        // Without SMTPUTF8 a non-ASCII address has no key (the session refuses it first).
        assert_eq!(Key::parse("jörg@bücher.example", false), None);
    }

    #[test]
    fn only_plain_mailboxes_have_a_key() {
        for path in [
            "postmaster",
            "@relay:u@example.com",
            "a%b@example.com",
            "a!b@example.com",
            "u@[192.0.2.1]",
            "u@example.com.",
            "bad@",
            "",
        ] {
            assert_eq!(key(path), None, "{path}");
        }
        assert!(key("PostMaster@example.com").unwrap().is_postmaster());
    }

    #[test]
    fn extensions_cut_as_postfix_does() {
        let k = key("alice+news@example.com").unwrap();
        assert_eq!(k.without_extension("+").unwrap().address(), "alice@example.com");
        assert_eq!(key("a-b+c@example.com").unwrap().without_extension("+-").unwrap().local, "a");
        assert_eq!(key("alice@example.com").unwrap().without_extension("+"), None);
        assert_eq!(key("+list@example.com").unwrap().without_extension("+"), None);
    }

    #[test]
    fn escaping_per_rfc_4515() {
        assert_eq!(escape("alice@example.com"), "alice@example.com");
        assert_eq!(escape("*"), "\\2a");
        assert_eq!(escape("a)(uid=*"), "a\\29\\28uid=\\2a");
        assert_eq!(escape("back\\slash"), "back\\5cslash");
        assert_eq!(escape("nul\0x"), "nul\\00x");
        assert_eq!(escape("jörg"), "j\\c3\\b6rg");
        assert_eq!(filter("(|(mail=%s)(proxyAddresses=smtp:%s))", "a*"), "(|(mail=a\\2a)(proxyAddresses=smtp:a\\2a))");
    }

    #[test]
    fn injection_attempts_stay_one_equality_value() {
        let attempts =
            ["*", "*@example.com", "a)(objectClass=*", "*)(|(mail=*", "a\\2a", "x\0)(mail=*", "\\", "a)(&)", "\"*\""];
        for attempt in attempts {
            let f = filter("(mail=%s)", attempt);
            assert!(ldap3::parse_filter(&f).is_ok(), "{f} must parse");
            // One assertion: the only parentheses are the template's, no bare `*`.
            assert_eq!(f.matches('(').count(), 1, "{f}");
            assert_eq!(f.matches(')').count(), 1, "{f}");
            assert!(!f.contains('*'), "{f}");
            assert!(!f.contains('\0'), "{f}");
        }
    }

    #[test]
    fn escaped_values_round_trip() {
        for value in ["plain@example.com", "a*b(c)d\\e\0f", "jörg@bücher.example"] {
            let escaped = escape(value);
            assert!(escaped.is_ascii());
            assert_eq!(ldap3::ldap_unescape(escaped.as_str()).unwrap(), value);
        }
    }
}
