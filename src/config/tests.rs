use super::*;

const FULL: &str = r#"
[server]
hostname = "mx.example.com"

[[listener]]
name = "mx"
bind = "0.0.0.0:25"
default = "accept"
rules = [
  { name = "scanner", action = "accept", from = ["192.0.2.10/32"] },
  { name = "everyone-else", action = "reject", from = ["0.0.0.0/0", "::/0"] },
]

[[listener]]
name = "open"
bind = "[::]:2526"

[relay]
enabled = true
local_domains = ["example.com", ".example.com"]
authenticated = true
networks = ["10.0.0.0/8", "192.0.2.0/255.255.255.0"]
local_addresses = ["10.0.0.25"]
never = ["10.66.0.0/16"]

[[backend]]
address = "127.0.0.1:10025"
identity = "xclient"

[[backend]]
address = "mta.internal:25"
identity = "proxy-v2"
connect_timeout = "3s"
allow_identity_downgrade = true

[limits]
max_message_size = "50MB"
max_recipients = 100
bare_lf = "reject"
"#;

#[test]
fn the_design_example_loads() {
    let loaded = parse(FULL).unwrap();
    let c = loaded.config;
    // The second backend learns less than the first: allowed, and said.
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("tell it less about the client"), "{:?}", loaded.warnings);
    assert_eq!(c.hostname, "mx.example.com");
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].rules.rules.len(), 2);
    assert_eq!(c.listeners[1].rules.default, Action::Accept);
    assert_eq!(c.relay.networks[1].to_string(), "192.0.2.0/24");
    assert_eq!(c.backends[1].identity, Identity::ProxyV2);
    assert_eq!(c.backends[1].connect_timeout, Duration::from_secs(3));
    assert_eq!(c.limits.max_message_size, 50_000_000);
}

#[test]
fn the_shipped_example_config_loads() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/portcullis.toml")).unwrap();
    let loaded = parse(&text).unwrap();
    assert_eq!(loaded.config.listeners[0].bind.to_string(), "127.0.0.1:2525");
    assert_eq!(loaded.config.backends[0].identity, Identity::Xclient);
}

#[test]
fn every_error_is_reported_with_its_key() {
    let text = r#"
[server]
hostname = "bad host"
[[listener]]
name = "mx"
bind = "0.0.0.0"
default = "maybe"
rules = [ { name = "r", action = "allow", from = ["10.0.0.0/33", "192.0.2.0/255.0.255.0"] } ]
[relay]
local_domains = ["example.com."]
networks = ["nonsense"]
local_addresses = ["10.0.0.0/8"]
never = ["10.66.0.0/16"]
[[backend]]
address = "127.0.0.1"
identity = "magic"
connect_timeout = "soon"
[limits]
max_message_size = "lots"
bare_lf = "sometimes"
"#;
    let err = parse(text).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        keys,
        vec![
            "server.hostname",
            "listener[0].bind",
            "listener[0].default",
            "listener[0].rules[0].action",
            "listener[0].rules[0].from[0]",
            "listener[0].rules[0].from[1]",
            "relay.local_domains[0]",
            "relay.local_addresses[0]",
            "relay.networks[0]",
            "backend[0].address",
            "backend[0].identity",
            "backend[0].connect_timeout",
            "limits.max_message_size",
            "limits.bare_lf",
        ],
        "{err}"
    );
}

#[test]
fn unknown_keys_are_errors() {
    let err = parse("[server]\nhostname = \"a.example\"\nhost = \"x\"\n").unwrap_err();
    assert!(err.problems[0].contains("unknown field `host`"), "{err}");
    let err = parse(&FULL.replace("identity = \"xclient\"", "identity = \"xclient\"\nweight = 3")).unwrap_err();
    assert!(err.problems[0].contains("unknown field `weight`"), "{err}");
}

#[test]
fn missing_listener_and_backend() {
    let err = parse("").unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
}

#[test]
fn duplicate_listeners() {
    let text = FULL.replace("name = \"open\"\nbind = \"[::]:2526\"", "name = \"mx\"\nbind = \"0.0.0.0:25\"");
    let err = parse(&text).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
}

#[test]
fn rule_after_catch_all_is_a_warning() {
    let text = FULL.replace(
        "{ name = \"everyone-else\", action = \"reject\", from = [\"0.0.0.0/0\", \"::/0\"] },",
        "{ name = \"everyone-else\", action = \"reject\", from = [\"0.0.0.0/0\", \"::/0\"] },\n  \
         { name = \"partner\", action = \"accept\", from = [\"198.51.100.0/24\"] },",
    );
    let loaded = parse(&text).unwrap();
    assert_eq!(loaded.warnings.len(), 2);
    assert!(loaded.warnings[0].contains("(\"partner\") can never match"), "{:?}", loaded.warnings);
}

#[test]
fn transparent_identity() {
    let loaded = parse(&FULL.replace("identity = \"proxy-v2\"", "identity = \"transparent\"")).unwrap();
    assert_eq!(loaded.config.backends[1].identity, Identity::Transparent);
}

const MINIMAL: &str =
    "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n{L}\n[[backend]]\naddress = \"127.0.0.1:25\"\n{B}\n{X}";

fn minimal(listener: &str, backend: &str, extra: &str) -> String {
    MINIMAL.replace("{L}", listener).replace("{B}", backend).replace("{X}", extra)
}

#[test]
fn tls_files_must_exist_and_be_readable() {
    let err = parse(&minimal(
        "tls = \"starttls\"",
        "",
        "[tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"\n",
    ))
    .unwrap_err();
    assert!(err.problems[0].starts_with("tls: /nonexistent/cert.pem"), "{err}");

    let err = parse(&minimal("tls = \"implicit\"", "", "")).unwrap_err();
    assert!(err.problems[0].starts_with("listener[0].tls: needs a [tls] section"), "{err}");
}

#[test]
fn auth_without_tls_needs_explicit_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("alice:{}\n", crate::auth::users::hash_password("x").unwrap())).unwrap();
    let auth = format!("[auth]\nmode = \"file\"\nusers_file = \"{}\"\n", users.display());
    let err = parse(&minimal("auth = \"optional\"", "", &auth)).unwrap_err();
    assert!(err.problems[0].contains("clear text"), "{err}");
    assert!(parse(&minimal("auth = \"optional\"\nauth_plaintext = true", "", &auth)).is_ok());

    let err = parse(&minimal("auth = \"required\"\nauth_plaintext = true", "", "")).unwrap_err();
    assert!(err.problems[0].contains("needs an [auth] section"), "{err}");
    let err = parse(&minimal("", "", "[auth]\nmode = \"file\"\nusers_file = \"/nonexistent\"\n")).unwrap_err();
    assert!(err.problems[0].starts_with("auth.users_file: /nonexistent"), "{err}");
    let err = parse(&minimal("", "", "[auth]\nmode = \"ldap\"\n")).unwrap_err();
    assert!(err.problems[0].starts_with("auth.mode"), "{err}");
    // A users file alone means mode "file"; nothing at all is an error.
    let file_only = format!("[auth]\nusers_file = \"{}\"\n", users.display());
    let ok = parse(&minimal("auth = \"optional\"\nauth_plaintext = true", "", &file_only)).unwrap();
    assert!(matches!(ok.config.auth.as_ref().unwrap().source, AuthSource::File(_)));
    let err = parse(&minimal("", "", "[auth]\nmax_failures = 2\n")).unwrap_err();
    assert!(err.problems[0].starts_with("auth.mode: missing"), "{err}");
}

#[test]
fn errors_name_the_listener_by_its_place_in_the_file() {
    let text = r#"
[[listener]]
name = "broken"
bind = "nonsense"
[[listener]]
name = "second"
bind = "127.0.0.1:2526"
tls = "starttls"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:10025"
"#;
    let err = parse(text).unwrap_err();
    assert!(err.problems.iter().any(|p| p.starts_with("listener[0].bind")), "{err}");
    assert!(err.problems.iter().any(|p| p.starts_with("listener[1].tls")), "{err}");
}

#[test]
fn backend_tls_options() {
    let ok = parse(&minimal("", "tls = \"starttls-required\"\ntls_verify = false", "")).unwrap();
    assert_eq!(ok.config.backends[0].tls, BackendTls::Required);
    assert!(ok.config.backends[0].tls_client.is_some());

    let err =
        parse(&minimal("", "tls = \"starttls\"\ntls_verify = false", "").replace("127.0.0.1:25", "mx.example.net:25"))
            .unwrap_err();
    assert!(err.problems[0].starts_with("backend[0].tls_verify: may be false only for a loopback"), "{err}");
    let err = parse(&minimal("", "tls = \"starttls\"\nca_file = \"/nonexistent.pem\"", "")).unwrap_err();
    assert!(err.problems[0].starts_with("backend[0].ca_file"), "{err}");
    let err = parse(&minimal("", "tls = \"always\"", "")).unwrap_err();
    assert!(err.problems[0].starts_with("backend[0].tls"), "{err}");
}

#[test]
fn min_data_rate() {
    let rate = MinDataRate { bytes_per_second: 500, grace: Duration::from_secs(30) };
    assert!(!rate.too_slow(0, Duration::from_secs(29)), "within the grace period");
    assert!(rate.too_slow(1000, Duration::from_secs(31)));
    assert!(!rate.too_slow(20_000, Duration::from_secs(31)));
    let off = MinDataRate { bytes_per_second: 0, grace: Duration::ZERO };
    assert!(!off.too_slow(0, Duration::from_secs(3600)));
    let loaded = parse(&FULL.replace("bare_lf = \"reject\"", "bare_lf = \"reject\"\nmin_data_rate = 0")).unwrap();
    assert_eq!(loaded.config.limits.min_data_rate.bytes_per_second, 0);
}

#[test]
fn risky_settings_are_warned_about() {
    let base = "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:25\"\n[[backend]]\naddress = \"127.0.0.1:10025\"\n\
                identity = \"xforward\"\n";
    let warnings = |extra: &str| parse(&format!("{base}{extra}")).unwrap().warnings;
    assert!(warnings("").is_empty());
    let allow = warnings("[limits]\nbare_lf = \"allow\"\n");
    assert!(allow.len() == 1 && allow[0].contains("SMTP smuggling"), "{allow:?}");
    assert!(warnings("[limits]\nbare_lf = \"normalize\"\n").is_empty());
    let open = warnings("[admin]\nbind = \"0.0.0.0:9925\"\n");
    assert!(open.len() == 1 && open[0].starts_with("admin.bind (0.0.0.0:9925) is reachable"), "{open:?}");
    assert!(warnings("[admin]\nbind = \"127.0.0.1:9925\"\n").is_empty());
    assert!(warnings("[admin]\nbind = \"[::1]:9925\"\n").is_empty());
}

#[test]
fn a_backend_that_learns_less_is_never_failed_over_to_unless_allowed() {
    let text = FULL.replace("allow_identity_downgrade = true\n", "");
    let loaded = parse(&text).unwrap();
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("backend[1] (mta.internal:25) is never used"), "{:?}", loaded.warnings);
    assert!(!loaded.config.backends[1].allow_identity_downgrade);
    // Same or more: no warning.
    let loaded = parse(&FULL.replace("identity = \"proxy-v2\"", "identity = \"xclient\"")).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn backend_connection_bounds_and_handshake_timeout() {
    let c = parse(FULL).unwrap().config;
    assert_eq!(c.backends[0].max_connections, 50);
    assert_eq!(c.backends[0].idle_timeout, Duration::from_secs(10));
    assert_eq!(c.backends[0].queue_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.tls_handshake_timeout, Duration::from_secs(60));
    let text = FULL.replace(
        "connect_timeout = \"3s\"\n",
        "connect_timeout = \"3s\"\nmax_connections = 2\nidle_timeout = \"2s\"\nqueue_timeout = \"0s\"\n",
    ) + "tls_handshake_timeout = \"15s\"\n";
    let c = parse(&text).unwrap().config;
    assert_eq!(c.backends[1].max_connections, 2);
    assert_eq!(c.backends[1].idle_timeout, Duration::from_secs(2));
    assert_eq!(c.backends[1].queue_timeout, Duration::ZERO);
    assert_eq!(c.limits.tls_handshake_timeout, Duration::from_secs(15));
    let bad = FULL.replace("connect_timeout = \"3s\"\n", "max_connections = 0\nidle_timeout = \"0s\"\n")
        + "tls_handshake_timeout = \"0s\"\n";
    let err = parse(&bad).unwrap_err();
    assert_eq!(err.problems.len(), 3, "{err}");
}

#[test]
fn screening_keys_load_and_bad_ones_are_named() {
    let text = r#"
[[listener]]
name = "mx"
bind = "0.0.0.0:25"
[[listener]]
name = "submission"
bind = "0.0.0.0:587"
auth = "required"
auth_plaintext = true
screen_action = "reject"
[[listener]]
name = "inside"
bind = "10.0.0.1:25"
screen_action = "off"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:10025"
identity = "xclient"
[auth]
mode = "backend"
[screen]
nameservers = ["127.0.0.1", "[::1]:5353"]
dnsbl = ["zen.spamhaus.org=127.0.0.[2..11]*3", "list.dnswl.org=127.0.[0..255].[1..3]*-2"]
threshold = 3
action = "enforce"
[store]
redis = "redis://10.0.0.9:6379/2"
"#;
    let loaded = parse(text).unwrap();
    let c = &loaded.config;
    let lists = c.dns_lists.as_ref().unwrap();
    assert_eq!(lists.nameservers[0].to_string(), "127.0.0.1:53");
    assert_eq!(lists.nameservers[1].to_string(), "[::1]:5353");
    assert_eq!((lists.zones.len(), lists.threshold, lists.timeout), (2, 3, Duration::from_secs(3)));
    let actions: Vec<ScreenAction> = c.listeners.iter().map(|l| l.screen_action).collect();
    assert_eq!(actions, [ScreenAction::Enforce, ScreenAction::Reject, ScreenAction::Off]);
    assert!(loaded.warnings.iter().any(|w| w.contains("submission") && w.contains("enforce")), "{:?}", loaded.warnings);
    let store = c.store.as_ref().unwrap();
    assert_eq!((store.prefix.as_str(), store.timeout), ("portcullis:", Duration::from_millis(200)));
    assert_eq!(store.max_reply_size, 1024 * 1024);
    let larger = text.replace("[store]\n", "[store]\nmax_reply_size = \"4MiB\"\n");
    assert_eq!(parse(&larger).unwrap().config.store.unwrap().max_reply_size, 4 << 20);

    let bad = text
        .replace("127.0.0.[2..11]*3", "127.0.0.[11..2]*3")
        .replace("[::1]:5353", "resolver")
        .replace("threshold = 3", "threshold = 0")
        .replace("action = \"enforce\"", "action = \"drop\"")
        .replace("redis://10.0.0.9:6379/2", "http://nope")
        .replace("[store]\n", "[store]\nmax_reply_size = \"1KB\"\n");
    let err = parse(&bad).unwrap_err().to_string();
    for key in ["screen.dnsbl[0]", "screen.nameservers[1]", "screen.threshold", "screen.action", "store.redis"] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
    assert!(err.contains("store.max_reply_size"), "a bound too small for the ban list:\n{err}");
    let no_resolver = text.replace("nameservers = [\"127.0.0.1\", \"[::1]:5353\"]", "");
    assert!(parse(&no_resolver).unwrap_err().to_string().contains("screen.nameservers"));
}

#[test]
fn milter_keys_load_and_bad_ones_are_named() {
    let text = r#"
[[listener]]
name = "mx"
bind = "127.0.0.1:25"
milters = ["clamav", "dkim"]
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:10025"
identity = "xclient"
[limits]
held_in_memory = "2MB"
max_headers = 500
max_header_size = "64KiB"
[[milter]]
name = "clamav"
address = "inet:127.0.0.1:7357"
default_action = "accept"
skip = ["helo"]
[[milter]]
name = "dkim"
address = "unix:/run/opendkim/opendkim.sock"
message_timeout = "60s"
[[milter]]
name = "spare"
address = "inet:7358@localhost"
"#;
    let loaded = parse(text).unwrap();
    let l = &loaded.config.listeners[0];
    let names: Vec<&str> = l.milters.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["clamav", "dkim"]);
    assert_eq!(l.milters[0].default_action, DefaultAction::Accept);
    assert_eq!(l.milters[0].skip, Step::Helo.flag());
    assert_eq!(l.milters[1].default_action, DefaultAction::Tempfail);
    assert_eq!(
        (l.milters[1].command_timeout, l.milters[1].message_timeout),
        (Duration::from_secs(30), Duration::from_secs(60))
    );
    assert_eq!(loaded.config.limits.held_in_memory, 2_000_000);
    assert_eq!((loaded.config.limits.max_headers, loaded.config.limits.max_header_size), (500, 65536));
    assert!(loaded.warnings.iter().any(|w| w.contains("\"spare\"")), "{:?}", loaded.warnings);

    let bad = text
        .replace("inet:127.0.0.1:7357", "127.0.0.1:7357")
        .replace("default_action = \"accept\"", "default_action = \"quarantine\"")
        .replace("skip = [\"helo\"]", "skip = [\"hello\"]")
        .replace("milters = [\"clamav\", \"dkim\"]", "milters = [\"clamav\", \"dkim\", \"nope\"]")
        .replace("max_headers = 500", "max_headers = 0")
        .replace("\"64KiB\"", "\"100\"");
    let err = parse(&bad).unwrap_err().to_string();
    for key in [
        "milter[0].address",
        "milter[0].default_action",
        "milter[0].skip[0]",
        "listener[0].milters[2]",
        "limits.max_headers",
        "limits.max_header_size",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

#[test]
fn acme_stands_in_for_tls_files() {
    let acme = "[acme]\ndirectory = \"https://ca.test/dir\"\ndomains = [\"MX.example.com\"]\n\
                state_dir = \"/var/lib/portcullis/acme\"\ncontact = \"mailto:postmaster@example.com\"\n";
    let loaded = parse(&minimal("tls = \"starttls\"", "", acme)).unwrap();
    let a = loaded.config.acme.as_ref().unwrap();
    assert!(loaded.config.tls.is_none());
    assert_eq!(a.domains, ["mx.example.com"]);
    assert_eq!(a.challenge, acme::Challenge::Http01);
    assert_eq!(a.http_bind, Some("0.0.0.0:80".parse().unwrap()));
    assert_eq!(a.renew_before, acme::DEFAULT_RENEW_BEFORE);
    assert_eq!(a.contact, ["mailto:postmaster@example.com"]);
    // server.hostname is not among the names: said, not refused.
    assert!(
        loaded.warnings.iter().any(|w| w.contains("acme.domains does not name server.hostname")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn acme_mistakes_are_reported_together() {
    let acme = "[acme]\ndirectory = \"http://ca.test/dir\"\ndomains = [\"*.example.com\", \"a..b\", \"ok.example.com\", \"ok.example.com\"]\n\
                state_dir = \"relative/dir\"\ncontact = [\"postmaster@example.com\"]\nchallenge = \"dns-01\"\n\
                renew_before = \"soon\"\nca_file = \"/nonexistent/ca.pem\"\n";
    let err = parse(&minimal("", "", acme)).unwrap_err();
    for key in [
        "acme.directory:",
        "acme.contact[0]:",
        "acme.domains[0]:",
        "acme.domains[1]:",
        "acme.domains[3]:",
        "acme.challenge:",
        "acme.state_dir:",
        "acme.renew_before:",
        "acme.ca_file:",
    ] {
        assert!(err.problems.iter().any(|p| p.starts_with(key)), "{key} missing in:\n{err}");
    }
    assert!(err.problems.iter().any(|p| p.contains("DNS-01")), "{err}");

    // Unknown keys are refused like everywhere else.
    let err = parse(&minimal(
        "",
        "",
        "[acme]\ndirectory = \"https://ca.test/\"\ndomains = [\"a.example\"]\nstate_dir = \"/x\"\nemail = \"x\"\n",
    ))
    .unwrap_err();
    assert!(err.problems.iter().any(|p| p.contains("email")), "{err}");
}

#[test]
fn tls_alpn_needs_an_implicit_listener() {
    let acme = "[acme]\ndirectory = \"https://ca.test/dir\"\ndomains = [\"mx.example.com\"]\n\
                state_dir = \"/var/lib/portcullis/acme\"\nchallenge = \"tls-alpn-01\"\n";
    let err = parse(&minimal("tls = \"starttls\"", "", acme)).unwrap_err();
    assert!(err.problems.iter().any(|p| p.starts_with("acme.challenge") && p.contains("implicit")), "{err}");
    let ok = parse(&minimal("tls = \"implicit\"", "", acme).replace("127.0.0.1:0", "127.0.0.1:465")).unwrap();
    assert_eq!(ok.config.acme.as_ref().unwrap().http_bind, None);
    // Listening elsewhere than 443: the CA cannot reach it without a forward.
    assert!(ok.warnings.iter().any(|w| w.contains("port 443")), "{:?}", ok.warnings);
}

#[test]
fn acme_http_bind_must_not_collide_with_a_listener() {
    let acme = "[acme]\ndirectory = \"https://ca.test/dir\"\ndomains = [\"mx.example.com\"]\n\
                state_dir = \"/var/lib/portcullis/acme\"\nhttp_bind = \"127.0.0.1:2525\"\n";
    let err = parse(&minimal("", "", acme).replace("127.0.0.1:0", "127.0.0.1:2525")).unwrap_err();
    assert!(err.problems.iter().any(|p| p.starts_with("acme.http_bind") && p.contains("listener")), "{err}");
}

#[test]
fn acme_changes_are_named_by_the_reload_diff() {
    let acme = |renew: &str| {
        format!(
            "[acme]\ndirectory = \"https://ca.test/dir\"\ndomains = [\"mx.example.com\"]\n\
             state_dir = \"/var/lib/portcullis/acme\"\nrenew_before = \"{renew}\"\n"
        )
    };
    let old = parse(&minimal("", "", &acme("30d"))).unwrap().config;
    let new = parse(&minimal("", "", &acme("20d"))).unwrap().config;
    let changes = diff::changes(&old, &new);
    assert!(changes.iter().any(|c| c.starts_with("acme:") && c.contains("1728000s")), "{changes:?}");
    assert!(diff::changes(&old, &old).is_empty());
}
