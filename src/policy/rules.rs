//! Connection rules of one listener: ordered, first match wins, then the default.

use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Accept,
    Reject,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) action: Action,
    pub(crate) from: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub(crate) struct ConnectionRules {
    pub(crate) rules: Vec<Rule>,
    pub(crate) default: Action,
}

/// What the rules said about one client, and which rule said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionVerdict<'a> {
    pub(crate) action: Action,
    /// The deciding rule's name, or `"default"`.
    pub(crate) rule: &'a str,
}

/// A rule that can never match because earlier rules cover every network it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShadowedRule {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) covered_by: Vec<String>,
}

// === impl ConnectionRules ===

impl ConnectionRules {
    pub(crate) fn decide(&self, client: IpAddr) -> ConnectionVerdict<'_> {
        for rule in &self.rules {
            if rule.from.iter().any(|net| net.contains(&client)) {
                return ConnectionVerdict { action: rule.action, rule: &rule.name };
            }
        }
        ConnectionVerdict { action: self.default, rule: "default" }
    }

    /// Rules placed after others that already cover all their networks.
    pub(crate) fn shadowed(&self) -> Vec<ShadowedRule> {
        let mut out = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let earlier = &self.rules[..index];
            let mut covered_by: Vec<String> = Vec::new();
            let all_covered = !rule.from.is_empty()
                && rule.from.iter().all(|net| match earlier.iter().find(|e| e.from.iter().any(|n| n.contains(net))) {
                    Some(e) => {
                        if !covered_by.contains(&e.name) {
                            covered_by.push(e.name.clone());
                        }
                        true
                    }
                    None => false,
                });
            if all_covered {
                out.push(ShadowedRule { index, name: rule.name.clone(), covered_by });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, action: Action, from: &[&str]) -> Rule {
        Rule { name: name.into(), action, from: from.iter().map(|s| s.parse().unwrap()).collect() }
    }

    /// The Q316205 set-up: accept one scanner host, reject everyone else.
    fn q316205() -> ConnectionRules {
        ConnectionRules {
            rules: vec![
                rule("scanner", Action::Accept, &["192.0.2.10/32"]),
                rule("everyone-else", Action::Reject, &["0.0.0.0/0", "::/0"]),
            ],
            default: Action::Accept,
        }
    }

    #[test]
    fn first_match_wins() {
        let rules = q316205();
        let v = rules.decide("192.0.2.10".parse().unwrap());
        assert_eq!((v.action, v.rule), (Action::Accept, "scanner"));
        let v = rules.decide("192.0.2.11".parse().unwrap());
        assert_eq!((v.action, v.rule), (Action::Reject, "everyone-else"));
        let v = rules.decide("2001:db8::1".parse().unwrap());
        assert_eq!((v.action, v.rule), (Action::Reject, "everyone-else"));
    }

    #[test]
    fn default_applies_when_nothing_matches() {
        let rules =
            ConnectionRules { rules: vec![rule("bad", Action::Reject, &["10.66.0.0/16"])], default: Action::Accept };
        let v = rules.decide("10.1.2.3".parse().unwrap());
        assert_eq!((v.action, v.rule), (Action::Accept, "default"));
        let v = rules.decide("10.66.2.3".parse().unwrap());
        assert_eq!((v.action, v.rule), (Action::Reject, "bad"));
    }

    #[test]
    fn rule_after_catch_all_is_reported() {
        let mut rules = q316205();
        rules.rules.push(rule("too-late", Action::Accept, &["198.51.100.0/24"]));
        rules.rules.push(rule("v6-too-late", Action::Accept, &["2001:db8::/32", "10.0.0.0/8"]));
        let shadowed = rules.shadowed();
        assert_eq!(shadowed.len(), 2);
        assert_eq!(shadowed[0].name, "too-late");
        assert_eq!(shadowed[0].covered_by, vec!["everyone-else".to_string()]);
        assert_eq!(shadowed[1].index, 3);
    }

    #[test]
    fn partly_covered_rule_is_not_shadowed() {
        let rules = ConnectionRules {
            rules: vec![
                rule("a", Action::Reject, &["10.0.0.0/8"]),
                rule("b", Action::Accept, &["10.1.0.0/16", "192.0.2.0/24"]),
            ],
            default: Action::Accept,
        };
        assert!(rules.shadowed().is_empty());
    }
}
