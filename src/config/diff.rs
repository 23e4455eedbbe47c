//! What a reload changes, in words an operator can check: `relay.networks:
//! +10.2.0.0/16`, `listener "mx" rule "office" removed`, `limits.max_recipients: 100 ->
//! 50`. Pure: two configs in, lines out.

use super::{Backend, Config, Listener};
use crate::recipients::{Source, Table};
use std::fmt::Debug;

fn users(config: &Config) -> Option<&crate::auth::users::Users> {
    match config.auth.as_ref().map(|a| &a.source) {
        Some(super::AuthSource::File(users)) => Some(users),
        _ => None,
    }
}

pub(crate) fn changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |key: &str, a: &dyn Debug, b: &dyn Debug| field(&mut out, key, a, b);
    field("server.hostname", &old.hostname, &new.hostname);
    field("server.drain_timeout", &old.drain_timeout, &new.drain_timeout);
    field("relay.enabled", &old.relay.enabled, &new.relay.enabled);
    field("relay.authenticated", &old.relay.authenticated, &new.relay.authenticated);
    let (o, n) = (&old.limits, &new.limits);
    field("limits.max_line_length", &o.max_line_length, &n.max_line_length);
    field("limits.max_message_size", &o.max_message_size, &n.max_message_size);
    field("limits.max_recipients", &o.max_recipients, &n.max_recipients);
    field("limits.recipient_overshoot_limit", &o.recipient_overshoot_limit, &n.recipient_overshoot_limit);
    field("limits.bare_lf", &o.bare_lf, &n.bare_lf);
    field("limits.max_connections", &o.max_connections, &n.max_connections);
    field("limits.max_connections_per_ip", &o.max_connections_per_ip, &n.max_connections_per_ip);
    field("limits.max_errors", &o.max_errors, &n.max_errors);
    field("limits.max_junk_commands", &o.max_junk_commands, &n.max_junk_commands);
    field("limits.command_timeout", &o.command_timeout, &n.command_timeout);
    field("limits.data_timeout", &o.data_timeout, &n.data_timeout);
    field("limits.min_data_rate", &o.min_data_rate, &n.min_data_rate);
    field("limits.tls_handshake_timeout", &o.tls_handshake_timeout, &n.tls_handshake_timeout);
    let show = |r: &Option<crate::screen::rate::Rate>| r.map_or("none".to_string(), |r| r.to_string());
    field("limits.max_connection_rate", &show(&o.connection_rate), &show(&n.connection_rate));
    field("limits.max_message_rate", &show(&o.message_rate), &show(&n.message_rate));
    field("limits.max_recipient_rate", &show(&o.recipient_rate), &show(&n.recipient_rate));
    field("limits.ipv6_prefix", &o.ipv6_prefix, &n.ipv6_prefix);
    field("limits.max_headers", &o.max_headers, &n.max_headers);
    field("limits.max_header_size", &o.max_header_size, &n.max_header_size);
    field("screen bans", &old.bans, &new.bans);
    field("screen pregreet", &old.pregreet, &new.pregreet);
    let zones = |l: &Option<crate::screen::dns::DnsLists>| {
        l.as_ref().map(|l| l.zones.iter().map(|z| format!("{}*{}", z.name, z.weight)).collect::<Vec<_>>())
    };
    field("screen.dnsbl", &zones(&old.dns_lists), &zones(&new.dns_lists));
    let rest =
        |l: &Option<crate::screen::dns::DnsLists>| l.as_ref().map(|l| (l.threshold, l.nameservers.clone(), l.timeout));
    field("screen threshold, nameservers, dnsbl_timeout", &rest(&old.dns_lists), &rest(&new.dns_lists));
    let acme = |c: &Config| c.acme.as_ref().map_or("none".to_string(), |a| a.settings());
    field("acme", &acme(old), &acme(new));
    field("auth.max_failures", &old.auth.as_ref().map(|a| a.max_failures), &new.auth.as_ref().map(|a| a.max_failures));
    if let (Some(o), Some(n)) = (users(old), users(new)) {
        let (added, removed, changed) = n.compared_with(o);
        if added + removed + changed > 0 {
            out.push(format!("auth.users_file: {added} added, {removed} removed, {changed} with a new password"));
        }
    }

    set(&mut out, "relay.local_domains", &old.relay.local_domains.entries(), &new.relay.local_domains.entries());
    set(&mut out, "relay.networks", &old.relay.networks, &new.relay.networks);
    set(&mut out, "relay.local_addresses", &old.relay.local_addresses, &new.relay.local_addresses);
    set(&mut out, "relay.never", &old.relay.never, &new.relay.never);
    set(&mut out, "trust.proxies", &old.trusted_proxies, &new.trusted_proxies);

    for l in &new.listeners {
        match old.listeners.iter().find(|o| o.name == l.name) {
            None => out.push(format!("listener {:?} added on {}", l.name, l.bind)),
            Some(o) => listener(&mut out, o, l),
        }
    }
    for o in old.listeners.iter().filter(|o| !new.listeners.iter().any(|l| l.name == o.name)) {
        out.push(format!("listener {:?} on {} removed", o.name, o.bind));
    }

    let order = |c: &Config| c.backends.iter().map(|b| b.address.clone()).collect::<Vec<_>>();
    for b in &new.backends {
        match old.backends.iter().find(|o| o.address == b.address) {
            None => out.push(format!("backend {} added (identity {})", b.address, b.identity.name())),
            Some(o) => backend(&mut out, o, b),
        }
    }
    for o in old.backends.iter().filter(|o| !new.backends.iter().any(|b| b.address == o.address)) {
        out.push(format!("backend {} removed", o.address));
    }
    let (o, n) = (order(old), order(new));
    if o != n && o.len() == n.len() && o.iter().all(|a| n.contains(a)) {
        out.push(format!("backend order: {} -> {}", o.join(", "), n.join(", ")));
    }
    recipients(&mut out, &old.recipients, &new.recipients);
    out
}

/// `[[recipients]]` tables, by position: added, removed, and each changed setting.
/// (A file's contents are not in the config: reloads read it again and log its size.)
fn recipients(out: &mut Vec<String>, old: &[Table], new: &[Table]) {
    let settings = |t: &Table| {
        let source = match &t.source {
            Source::File(path) => format!("file {}", path.display()),
            Source::Ldap(d) => format!("ldap {}", d.settings()),
        };
        [
            ("domains", format!("{:?}", t.domains.entries())),
            ("source", source),
            ("cache_ttl", format!("{:?}", t.cache_ttl)),
            ("on_error", t.on_error.as_str().to_string()),
            ("recipient_delimiter", format!("{:?}", t.delimiters)),
        ]
    };
    for (i, n) in new.iter().enumerate() {
        let Some(o) = old.get(i) else {
            out.push(format!("{} added: {} for {:?}", n.name(), n.source, n.domains.entries()));
            continue;
        };
        for ((key, was), (_, now)) in settings(o).into_iter().zip(settings(n)) {
            if was != now {
                out.push(format!("{}.{key}: {was} -> {now}", n.name()));
            }
        }
        if let (Source::Ldap(a), Source::Ldap(b)) = (&o.source, &n.source)
            && a.bind.as_ref().map(|b| &b.password) != b.bind.as_ref().map(|b| &b.password)
        {
            out.push(format!("{}.bind_password_file: a new password", n.name()));
        }
    }
    for o in old.iter().skip(new.len()) {
        out.push(format!("{} removed: {} for {:?}", o.name(), o.source, o.domains.entries()));
    }
}

/// `+added` and `-removed` entries of a list, order ignored.
fn set<T: PartialEq + std::fmt::Display>(out: &mut Vec<String>, key: &str, old: &[T], new: &[T]) {
    let added = new.iter().filter(|x| !old.contains(x)).map(|x| format!("+{x}"));
    let removed = old.iter().filter(|x| !new.contains(x)).map(|x| format!("-{x}"));
    let all: Vec<String> = added.chain(removed).collect();
    if !all.is_empty() {
        out.push(format!("{key}: {}", all.join(" ")));
    }
}

/// `key: old -> new` when the two differ.
fn field(out: &mut Vec<String>, key: &str, a: &dyn Debug, b: &dyn Debug) {
    let (a, b) = (format!("{a:?}"), format!("{b:?}"));
    if a != b {
        out.push(format!("{key}: {a} -> {b}"));
    }
}

fn listener(out: &mut Vec<String>, o: &Listener, n: &Listener) {
    let key = format!("listener {:?}", n.name);
    let mut field = |name: &str, a: &dyn Debug, b: &dyn Debug| field(out, &format!("{key} {name}"), a, b);
    field("bind", &o.bind, &n.bind);
    field("default", &o.rules.default, &n.rules.default);
    field("tls", &o.tls, &n.tls);
    field("require_tls", &o.require_tls, &n.require_tls);
    field("auth", &o.auth, &n.auth);
    field("auth_plaintext", &o.auth_plaintext, &n.auth_plaintext);
    field("proxy_protocol", &o.proxy_protocol, &n.proxy_protocol);
    field("greeting_delay", &o.greeting_delay, &n.greeting_delay);
    field("pregreet", &o.pregreet, &n.pregreet);
    field("screen_action", &o.screen_action, &n.screen_action);
    let milters = |l: &Listener| l.milters.iter().map(|m| format!("{} ({})", m.name, m.address)).collect::<Vec<_>>();
    field("milters", &milters(o), &milters(n));
    for (i, r) in n.rules.rules.iter().enumerate() {
        match o.rules.rules.iter().position(|x| x.name == r.name) {
            None => out.push(format!("{key} rule {} ({:?}) added", i + 1, r.name)),
            Some(j) => {
                let (was, now) = (&o.rules.rules[j], r);
                if was.action != now.action || was.from != now.from {
                    out.push(format!(
                        "{key} rule {} ({:?}) changed: {:?} {:?} -> {:?} {:?}",
                        i + 1,
                        r.name,
                        was.action,
                        was.from.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        now.action,
                        now.from.iter().map(ToString::to_string).collect::<Vec<_>>()
                    ));
                } else if i != j {
                    out.push(format!("{key} rule {:?} moved: {} -> {}", r.name, j + 1, i + 1));
                }
            }
        }
    }
    for (j, r) in o.rules.rules.iter().enumerate() {
        if !n.rules.rules.iter().any(|x| x.name == r.name) {
            out.push(format!("{key} rule {} ({:?}) removed", j + 1, r.name));
        }
    }
}

fn backend(out: &mut Vec<String>, o: &Backend, n: &Backend) {
    let prefix = format!("backend {}", n.address);
    let mut field = |name: &str, a: &dyn Debug, b: &dyn Debug| field(out, &format!("{prefix} {name}"), a, b);
    field("identity", &o.identity.name(), &n.identity.name());
    field("tls", &o.tls, &n.tls);
    field("connect_timeout", &o.connect_timeout, &n.connect_timeout);
    field("reply_timeout", &o.reply_timeout, &n.reply_timeout);
    field("data_timeout", &o.data_timeout, &n.data_timeout);
    field("max_connections", &o.max_connections, &n.max_connections);
    field("queue_timeout", &o.queue_timeout, &n.queue_timeout);
    field("idle_timeout", &o.idle_timeout, &n.idle_timeout);
    field("allow_identity_downgrade", &o.allow_identity_downgrade, &n.allow_identity_downgrade);
    field("health checks", &o.check, &n.check);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_relay: &str, rules: &str) -> Config {
        let text = format!(
            r#"
[[listener]]
name = "mx"
bind = "127.0.0.1:0"
rules = [{rules}]
[relay]
local_domains = ["example.com"]
{extra_relay}
[[backend]]
address = "127.0.0.1:10025"
"#
        );
        crate::config::parse(&text).unwrap().config
    }

    #[test]
    fn names_what_changed_and_nothing_else() {
        let old = config(
            r#"networks = ["10.1.0.0/16"]"#,
            r#"{ name = "office", action = "accept", from = ["10.1.0.0/16"] }, { name = "bad", action = "reject", from = ["10.9.0.0/16"] }"#,
        );
        assert_eq!(changes(&old, &old), Vec::<String>::new());
        let new = config(
            "networks = [\"10.2.0.0/16\"]\nenabled = false",
            r#"{ name = "bad", action = "reject", from = ["10.9.0.0/16"] }"#,
        );
        assert_eq!(
            changes(&old, &new),
            [
                "relay.enabled: true -> false",
                "relay.networks: +10.2.0.0/16 -10.1.0.0/16",
                "listener \"mx\" rule \"bad\" moved: 2 -> 1",
                "listener \"mx\" rule 1 (\"office\") removed",
            ]
        );
    }
}
