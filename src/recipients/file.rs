//! The file source: one address a line, `@domain` for every address of a domain,
//! blank lines and `#` comments ignored. Read at start and again at every reload.
//!
//! Entries are compared without regard to case, local part included, as Postfix's
//! `hash:` tables and most mail systems compare them: the file is the directory here.

use super::key::Key;
use std::collections::HashSet;
use std::path::Path;

/// Lines read at most: a listing this large belongs in a directory.
const MAX_ENTRIES: usize = 1_000_000;

/// The addresses of one file.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// `local@domain`, lower case.
    addresses: HashSet<String>,
    /// Domains listed whole (`@domain`), lower case.
    domains: HashSet<String>,
}

impl Listing {
    pub(crate) fn load(path: &Path) -> Result<Listing, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Listing::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every line checked; the first mistakes (with their line numbers) in the error.
    pub(crate) fn parse(text: &str) -> Result<Listing, String> {
        let mut listing = Listing::default();
        let mut mistakes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match entry(line) {
                Ok(Entry::Address(a)) => {
                    listing.addresses.insert(a);
                }
                Ok(Entry::Domain(d)) => {
                    listing.domains.insert(d);
                }
                Err(e) if mistakes.len() < 10 => mistakes.push(format!("line {}: {line:?}: {e}", n + 1)),
                Err(_) => {}
            }
            if listing.len() > MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} entries; use a directory"));
            }
        }
        if mistakes.is_empty() { Ok(listing) } else { Err(mistakes.join("; ")) }
    }

    pub(crate) fn len(&self) -> usize {
        self.addresses.len() + self.domains.len()
    }

    pub(crate) fn knows(&self, key: &Key) -> bool {
        self.domains.contains(&key.domain) || self.addresses.contains(&key.address().to_lowercase())
    }
}

enum Entry {
    Address(String),
    Domain(String),
}

fn entry(line: &str) -> Result<Entry, &'static str> {
    if line.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("one address a line, without spaces (comments start a line with '#')");
    }
    if let Some(domain) = line.strip_prefix('@') {
        let key = Key::parse(&format!("x@{domain}"), !domain.is_ascii()).ok_or("not a domain")?;
        return Ok(Entry::Domain(key.domain));
    }
    let key = Key::parse(line, !line.is_ascii()).ok_or("not a plain address (local@domain)")?;
    Ok(Entry::Address(key.address().to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Key {
        Key::parse(path, !path.is_ascii()).unwrap()
    }

    #[test]
    fn addresses_domains_and_comments() {
        let listing =
            Listing::parse("# staff\nAlice@Example.com\n\n  bob@example.com  \n@Whole.example\njörg@bücher.example\n")
                .unwrap();
        assert_eq!(listing.len(), 4);
        assert!(listing.knows(&key("alice@example.com")));
        assert!(listing.knows(&key("ALICE@EXAMPLE.COM")));
        assert!(listing.knows(&key("bob@example.com")));
        assert!(listing.knows(&key("anyone@whole.example")));
        assert!(listing.knows(&key("Jörg@xn--bcher-kva.example")) || listing.knows(&key("jörg@bücher.example")));
        assert!(!listing.knows(&key("carol@example.com")));
        assert!(!listing.knows(&key("alice@other.example")));
    }

    #[test]
    fn mistakes_name_their_lines() {
        let e = Listing::parse("ok@example.com\nnot an address\nalso@\n@bad..domain\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("line 3") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn wildcards_are_not_patterns() {
        let listing = Listing::parse("*@example.com\n").unwrap();
        assert!(!listing.knows(&key("alice@example.com")));
        assert!(listing.knows(&key("*@example.com")));
    }
}
