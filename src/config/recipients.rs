//! `[[recipients]]` validated into [`Table`]s: plain data (the password read from its
//! file, the TLS trust loaded); files are read here only to report their mistakes,
//! their contents live in [`crate::recipients::Recipients`].

use super::Validator;
use super::raw::RawRecipients;
use crate::policy::domains::check_domain;
use crate::policy::{DomainSet, RelayPolicy};
use crate::recipients::table::{self, Bind, DEFAULT_CACHE_TTL, DEFAULT_LOOKUP_TIMEOUT, OnError, Source, Table};
use crate::tls::{self as tlsconf, Verify};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Keys that only a directory takes.
const LDAP_ONLY: &[&str] = &["starttls", "ca_file", "bind_dn", "bind_password_file", "base", "filter", "timeout"];

impl Validator {
    pub(super) fn recipients(&mut self, raw: &[RawRecipients], relay: &RelayPolicy) -> Vec<Table> {
        let mut out: Vec<Table> = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let key = format!("recipients[{i}]");
            let domains = self.recipient_domains(&key, r, relay);
            for d in &r.domains {
                if let Some(first) = out.iter().find(|t| t.domains.covers(d)) {
                    self.warnings.push(format!(
                        "{key}.domains: {d:?} is answered by {} before this table (the first table naming a domain answers for it)",
                        first.name()
                    ));
                }
            }
            let source = match (&r.file, &r.ldap) {
                (Some(_), Some(_)) => {
                    self.error(&key, "takes file or ldap, not both");
                    None
                }
                (None, None) => {
                    self.error(&key, "needs a source: file = \"...\" or ldap = \"ldaps://...\"");
                    None
                }
                (Some(path), None) => self.recipient_file(&key, path, r),
                (None, Some(url)) => self.directory(&key, url, r).map(Source::Ldap),
            };
            let cache_ttl = self.duration(&format!("{key}.cache_ttl"), r.cache_ttl.as_deref(), DEFAULT_CACHE_TTL, true);
            let on_error = self.choice(
                &format!("{key}.on_error"),
                r.on_error.as_deref().unwrap_or("tempfail"),
                &[("tempfail", OnError::Tempfail), ("accept", OnError::Accept)],
            );
            let delimiters = match r.recipient_delimiter.as_deref() {
                None => None,
                Some(d) if !d.is_empty() && d.chars().all(|c| c.is_ascii_punctuation() && !"@\"\\<>".contains(c)) => {
                    Some(d.to_string())
                }
                Some(d) => {
                    self.error(
                        format!("{key}.recipient_delimiter"),
                        format!(
                            "{d:?}: expected one or more punctuation characters such as \"+\" (not @, quotes, <, >)"
                        ),
                    );
                    None
                }
            };
            if let (Some(domains), Some(source), Some(on_error)) = (domains, source, on_error) {
                out.push(Table { index: i, domains, source, cache_ttl, on_error, delimiters });
            }
        }
        out
    }

    fn recipient_domains(&mut self, key: &str, r: &RawRecipients, relay: &RelayPolicy) -> Option<DomainSet> {
        if r.domains.is_empty() {
            self.error(format!("{key}.domains"), "names no domain: which local domains does this table answer for?");
            return None;
        }
        let mut ok = true;
        for (j, d) in r.domains.iter().enumerate() {
            if let Err(e) = check_domain(d) {
                self.error(format!("{key}.domains[{j}]"), format!("{d:?}: {e}"));
                ok = false;
            } else if !relay.local_domains.covers(d) {
                self.error(
                    format!("{key}.domains[{j}]"),
                    format!("{d:?} is not a local domain (relay.local_domains): recipients are validated for local domains only"),
                );
                ok = false;
            }
        }
        ok.then(|| DomainSet::new(r.domains.iter().map(String::as_str)))
    }

    fn recipient_file(&mut self, key: &str, path: &str, r: &RawRecipients) -> Option<Source> {
        let given = [
            r.starttls.is_some(),
            r.ca_file.is_some(),
            r.bind_dn.is_some(),
            r.bind_password_file.is_some(),
            r.base.is_some(),
            r.filter.is_some(),
            r.timeout.is_some(),
        ];
        for (name, _) in LDAP_ONLY.iter().zip(given).filter(|(_, g)| *g) {
            self.error(format!("{key}.{name}"), "only a directory (ldap = ...) takes it, not a file");
        }
        // Read now to report its mistakes; the contents are read again when served.
        match crate::recipients::check_file(Path::new(path)) {
            Ok(_) => Some(Source::File(PathBuf::from(path))),
            Err(e) => {
                self.error(format!("{key}.file"), e);
                None
            }
        }
    }

    fn directory(&mut self, key: &str, url: &str, r: &RawRecipients) -> Option<table::Directory> {
        let (secure, host) = match ldap_url(url) {
            Ok(parts) => parts,
            Err(e) => {
                self.error(format!("{key}.ldap"), format!("{url:?}: {e}"));
                return None;
            }
        };
        let starttls = r.starttls.unwrap_or(false);
        if secure && starttls {
            self.error(format!("{key}.starttls"), "ldaps:// is TLS already; StartTLS is for ldap://");
        }
        let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !secure && !starttls && !loopback {
            self.warnings.push(format!(
                "{key}.ldap: {url:?} without starttls = true: the bind password and every recipient cross the network in clear text"
            ));
        }
        let tls = if secure || starttls {
            let verify = match &r.ca_file {
                Some(ca) => Verify::CaFile(ca.into()),
                None => Verify::SystemRoots,
            };
            tlsconf::client_config(&verify).map_err(|e| self.error(format!("{key}.ca_file"), e)).ok()
        } else {
            if r.ca_file.is_some() {
                self.error(format!("{key}.ca_file"), "not used without TLS: use ldaps:// or starttls = true");
            }
            None
        };
        let bind = match (&r.bind_dn, &r.bind_password_file) {
            (None, None) => None,
            (Some(_), None) => {
                self.error(format!("{key}.bind_password_file"), "needed with bind_dn");
                None
            }
            (None, Some(_)) => {
                self.error(format!("{key}.bind_dn"), "needed with bind_password_file");
                None
            }
            (Some(dn), Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim_end_matches(['\r', '\n']).is_empty() => {
                    Some(Bind { dn: dn.clone(), password: text.trim_end_matches(['\r', '\n']).to_string() })
                }
                // An empty password is an unauthenticated bind (RFC 4513 5.1.2): it
                // succeeds and proves nothing.
                Ok(_) => {
                    self.error(format!("{key}.bind_password_file"), format!("{path}: empty"));
                    None
                }
                Err(e) => {
                    self.error(format!("{key}.bind_password_file"), format!("{path}: {e}"));
                    None
                }
            },
        };
        let base = match r.base.as_deref() {
            Some(b) if !b.trim().is_empty() => Some(b.to_string()),
            _ => {
                self.error(format!("{key}.base"), "needed: where to search, such as \"DC=example,DC=com\"");
                None
            }
        };
        let filter = match r.filter.as_deref() {
            None => {
                self.error(format!("{key}.filter"), "needed, such as \"(mail=%s)\"");
                None
            }
            Some(f) if !f.contains("%s") => {
                self.error(
                    format!("{key}.filter"),
                    format!("{f:?} has no %s: every recipient would get the same answer"),
                );
                None
            }
            Some(f) if ldap3::parse_filter(crate::recipients::key::filter(f, "probe@example.com")).is_err() => {
                self.error(format!("{key}.filter"), format!("{f:?} is not an LDAP filter (RFC 4515)"));
                None
            }
            Some(f) => Some(f.to_string()),
        };
        let timeout = self.duration(&format!("{key}.timeout"), r.timeout.as_deref(), DEFAULT_LOOKUP_TIMEOUT, false);
        let tls = if secure || starttls { Some(tls?) } else { None };
        Some(table::Directory {
            url: url.to_string(),
            starttls,
            tls,
            ca_file: r.ca_file.as_ref().map(PathBuf::from),
            bind: match (&r.bind_dn, bind) {
                (Some(_), None) => return None,
                (_, bind) => bind,
            },
            base: base?,
            filter: filter?,
            timeout,
        })
    }
}

/// `ldaps://host[:port]` or `ldap://host[:port]`: whether TLS from the start, and the host.
fn ldap_url(url: &str) -> Result<(bool, String), &'static str> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("ldaps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("ldap://") {
        (false, rest)
    } else {
        return Err("expected ldaps://host or ldap://host");
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '@', ' ']) {
        return Err("expected ldaps://host[:port] (base and filter are keys of their own)");
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or("unterminated [IPv6 address]")?;
            (host, after.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err("expected ldaps://host[:port]");
    }
    Ok((secure, host.to_string()))
}

#[cfg(test)]
mod tests {
    use super::ldap_url;
    use crate::recipients::{OnError, Source};
    use std::time::Duration;

    const BASE: &str = "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:10025\"\n\
                        [relay]\nlocal_domains = [\"example.com\", \".example.org\"]\n";

    fn parse(tables: &str) -> Result<crate::config::Loaded, crate::config::ConfigError> {
        crate::config::parse(&format!("{BASE}{tables}"))
    }

    #[test]
    fn a_directory_table_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("pw");
        std::fs::write(&password, "s3cret\n").unwrap();
        let loaded = parse(&format!(
            "[[recipients]]\ndomains = [\"example.com\", \"a.example.org\"]\nldap = \"ldap://127.0.0.1:3890\"\n\
             bind_dn = \"cn=portcullis,dc=example,dc=com\"\nbind_password_file = \"{}\"\nbase = \"dc=example,dc=com\"\n\
             filter = \"(|(mail=%s)(proxyAddresses=smtp:%s))\"\nrecipient_delimiter = \"+\"\n",
            password.display()
        ))
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let t = &loaded.config.recipients[0];
        assert_eq!(t.cache_ttl, Duration::from_secs(600));
        assert_eq!(t.on_error, OnError::Tempfail);
        assert_eq!(t.delimiters.as_deref(), Some("+"));
        let Source::Ldap(d) = &t.source else { panic!() };
        assert_eq!(d.bind.as_ref().unwrap().password, "s3cret");
        assert!(d.tls.is_none());
        assert!(!format!("{t:?}").contains("s3cret"), "the password stays out of debug output");
    }

    #[test]
    fn every_mistake_at_once() {
        let e = parse(
            "[[recipients]]\ndomains = [\"example.net\", \"bad..name\"]\nfile = \"/nonexistent/recipients\"\nbase = \"dc=x\"\n\
             on_error = \"maybe\"\ncache_ttl = \"soon\"\nrecipient_delimiter = \"@\"\n\
             [[recipients]]\ndomains = [\"example.com\"]\n\
             [[recipients]]\ndomains = [\"example.com\"]\nfile = \"/x\"\nldap = \"ldaps://dc1\"\n\
             [[recipients]]\ndomains = [\"example.com\"]\nldap = \"ldaps://dc1\"\nstarttls = true\nfilter = \"(mail=alice)\"\n\
             bind_dn = \"cn=x\"\n\
             [[recipients]]\ndomains = [\"example.com\"]\nldap = \"ldap://dc1/dc=example\"\nbase = \"dc=x\"\nfilter = \"(mail=%s\"\n",
        )
        .unwrap_err();
        let all = e.problems.join("\n");
        for expected in [
            "recipients[0].domains[0]: \"example.net\" is not a local domain",
            "recipients[0].domains[1]: \"bad..name\"",
            "recipients[0].base: only a directory",
            "recipients[0].file: /nonexistent/recipients",
            "recipients[0].cache_ttl",
            "recipients[0].on_error: \"maybe\"",
            "recipients[0].recipient_delimiter",
            "recipients[1]: needs a source",
            "recipients[2]: takes file or ldap, not both",
            "recipients[3].starttls: ldaps:// is TLS already",
            "recipients[3].bind_password_file: needed with bind_dn",
            "recipients[3].base: needed",
            "recipients[3].filter: \"(mail=alice)\" has no %s",
            "recipients[4].ldap: \"ldap://dc1/dc=example\"",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
    }

    #[test]
    fn a_bad_filter_and_an_empty_password() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("pw");
        std::fs::write(&password, "\n").unwrap();
        let e = parse(&format!(
            "[[recipients]]\ndomains = [\"example.com\"]\nldap = \"ldap://127.0.0.1\"\nbase = \"dc=x\"\nfilter = \"(mail=%s\"\n\
             bind_dn = \"cn=x\"\nbind_password_file = \"{}\"\n",
            password.display()
        ))
        .unwrap_err();
        let all = e.problems.join("\n");
        assert!(all.contains("recipients[0].filter: \"(mail=%s\" is not an LDAP filter"), "{all}");
        assert!(all.contains("recipients[0].bind_password_file:") && all.contains("empty"), "{all}");
    }

    #[test]
    fn warnings_plain_ldap_beyond_loopback_and_shadowed_domains() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r");
        std::fs::write(&file, "a@example.com\n").unwrap();
        let loaded = parse(&format!(
            "[[recipients]]\ndomains = [\"example.com\"]\nfile = \"{f}\"\n\
             [[recipients]]\ndomains = [\"example.com\", \"b.example.org\"]\nldap = \"ldap://dc1.example.com\"\nbase = \"dc=x\"\n\
             filter = \"(mail=%s)\"\n",
            f = file.display()
        ))
        .unwrap();
        let all = loaded.warnings.join("\n");
        assert!(all.contains("recipients[1].domains: \"example.com\" is answered by recipients[0]"), "{all}");
        assert!(all.contains("recipients[1].ldap: \"ldap://dc1.example.com\" without starttls"), "{all}");
        assert!(!all.contains("b.example.org"), "{all}");
    }

    #[test]
    fn reload_diff_names_table_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r");
        std::fs::write(&file, "a@example.com\n").unwrap();
        let one = format!("[[recipients]]\ndomains = [\"example.com\"]\nfile = \"{}\"\n", file.display());
        let old = parse(&one).unwrap().config;
        let new = parse(&format!(
            "{}on_error = \"accept\"\n[[recipients]]\ndomains = [\"x.example.org\"]\nfile = \"{}\"\n",
            one,
            file.display()
        ))
        .unwrap()
        .config;
        let changes = crate::config::diff::changes(&old, &new);
        assert!(changes.contains(&"recipients[0].on_error: tempfail -> accept".to_string()), "{changes:?}");
        assert!(changes.iter().any(|c| c.starts_with("recipients[1] added: file ")), "{changes:?}");
        let back = crate::config::diff::changes(&new, &old);
        assert!(back.iter().any(|c| c.starts_with("recipients[1] removed")), "{back:?}");
    }

    #[test]
    fn urls() {
        assert_eq!(ldap_url("ldaps://dc1.example.com"), Ok((true, "dc1.example.com".into())));
        assert_eq!(ldap_url("ldap://127.0.0.1:3890/"), Ok((false, "127.0.0.1".into())));
        assert_eq!(ldap_url("ldap://[::1]:389"), Ok((false, "::1".into())));
        for bad in ["http://x", "ldap://", "ldap://x:0", "ldap://x:port", "ldap://x/dc=example", "ldapi:///run/ldap"] {
            assert!(ldap_url(bad).is_err(), "{bad}");
        }
    }
}
