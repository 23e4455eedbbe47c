//! The set of local domains: exact names, and `.example.com` entries that cover every
//! subdomain. Matching is case-insensitive; names are stored lower-case.

use std::collections::HashSet;

#[derive(Debug, Clone, Default)]
pub(crate) struct DomainSet {
    exact: HashSet<String>,
    /// Suffixes with their leading dot, e.g. `.example.com`.
    subdomains_of: Vec<String>,
}

/// Why a configured domain was refused.
pub fn check_domain(name: &str) -> Result<(), &'static str> {
    let bare = name.strip_prefix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("empty domain");
    }
    if bare.ends_with('.') {
        return Err("trailing dot; write the domain without it");
    }
    if bare.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("empty or over-long label");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("only letters, digits, '-' and '.' are allowed (use the A-label form for IDN)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with '-'");
        }
    }
    Ok(())
}

impl DomainSet {
    /// Builds the set; callers validate each entry with [`check_domain`] first.
    pub(crate) fn new<'a>(entries: impl IntoIterator<Item = &'a str>) -> Self {
        let mut set = Self::default();
        for entry in entries {
            let entry = entry.to_ascii_lowercase();
            if entry.starts_with('.') {
                set.subdomains_of.push(entry);
            } else {
                set.exact.insert(entry);
            }
        }
        set
    }

    /// `domain` must be a plain DNS name (no trailing dot, no literal).
    /// Every entry as configured (lower-case), sorted: exact names, `.suffix` entries.
    pub(crate) fn entries(&self) -> Vec<String> {
        let mut all: Vec<String> = self.exact.iter().chain(&self.subdomains_of).cloned().collect();
        all.sort();
        all
    }

    /// Whether every domain `entry` names (a name, or `.suffix`: all its subdomains)
    /// is in the set.
    pub(crate) fn covers(&self, entry: &str) -> bool {
        let entry = entry.to_ascii_lowercase();
        if entry.starts_with('.') {
            self.subdomains_of.iter().any(|suffix| entry.ends_with(suffix.as_str()))
        } else {
            self.contains(&entry)
        }
    }

    pub(crate) fn contains(&self, domain: &str) -> bool {
        // Most names come in lower case already: those are not copied.
        let lower = match domain.bytes().any(|b| b.is_ascii_uppercase()) {
            true => std::borrow::Cow::Owned(domain.to_ascii_lowercase()),
            false => std::borrow::Cow::Borrowed(domain),
        };
        self.exact.contains(lower.as_ref()) || self.subdomains_of.iter().any(|suffix| lower.ends_with(suffix.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_subdomains_case_insensitive() {
        let set = DomainSet::new(["Example.com", ".example.com", "other.org"]);
        assert!(set.contains("example.com"));
        assert!(set.contains("EXAMPLE.COM"));
        assert!(set.contains("mail.example.com"));
        assert!(set.contains("a.b.Example.Com"));
        assert!(set.contains("other.org"));
        assert!(!set.contains("sub.other.org"));
        assert!(!set.contains("badexample.com"));
        assert!(!set.contains("example.com.evil.net"));
    }

    #[test]
    fn covers_names_and_suffixes() {
        let set = DomainSet::new(["example.com", ".example.org"]);
        assert!(set.covers("EXAMPLE.com"));
        assert!(set.covers("a.example.org"));
        assert!(set.covers(".example.org"));
        assert!(set.covers(".b.example.org"));
        assert!(!set.covers(".example.com"));
        assert!(!set.covers("example.org"));
        assert!(!set.covers("other.net"));
    }

    #[test]
    fn leading_dot_alone_does_not_cover_the_parent() {
        let set = DomainSet::new([".example.com"]);
        assert!(!set.contains("example.com"));
        assert!(set.contains("x.example.com"));
    }

    #[test]
    fn domain_syntax() {
        assert!(check_domain("example.com").is_ok());
        assert!(check_domain(".example.com").is_ok());
        assert!(check_domain("example.com.").is_err());
        assert!(check_domain("exa mple.com").is_err());
        assert!(check_domain("").is_err());
        assert!(check_domain(".").is_err());
        assert!(check_domain("a..b").is_err());
        assert!(check_domain("-a.com").is_err());
    }
}
