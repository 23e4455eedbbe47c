//! Trust boundaries end to end: a real HAProxy sending PROXY v1/v2 in front of
//! Portcullis, headers from untrusted or broken sources refused, clients' own identity
//! commands refused, IPv6 clients passed on.

use crate::support;

use std::net::SocketAddr;
use support::*;

fn config(pf: &Postfix, listeners: &str, relay: &str) -> String {
    Conf::new()
        .backend(pf.plain, "xclient", "")
        .set("trust", "proxies = [\"127.0.0.1/32\"]")
        .set("relay", relay)
        .raw(listeners)
        .text()
}

const BEHIND_LB: &str = r#"
[[listener]]
name = "lb"
bind = "127.0.0.1:0"
proxy_protocol = true
rules = [ { name = "blocked", action = "reject", from = ["127.0.0.78/32"] } ]
[[listener]]
name = "direct"
bind = "127.0.0.1:0"
"#;

#[test]
fn haproxy_headers_carry_the_real_client_to_rules_relay_and_postfix() {
    if !need(&["postfix", "haproxy", "swaks"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let proxy = Proxy::start(&config(pf, BEHIND_LB, "networks = [\"127.0.0.77/32\"]"));
    for send in ["send-proxy", "send-proxy-v2"] {
        let lb = HaProxy::start(proxy.addr("lb"), send);
        let mark = marker(send);
        // Delivered, and Postfix sees 127.0.0.77 behind two proxies.
        let (ok, transcript) = swaks_from_77(lb.addr, "u@example.com", &mark, &[]);
        assert!(ok, "{send}: {transcript}");
        let msg = pf.delivered(&mark);
        assert_eq!(pf.logged_client(&msg.queue_id), "unknown[127.0.0.77]", "{send}");
        // Relay is decided on the header's client: .77 is in relay.networks, .79 is not.
        let mut c = Smtp::hello("127.0.0.77", lb.addr);
        c.cmd("MAIL FROM:<s@example.org>", "250");
        c.cmd("RCPT TO:<x@remote.test>", "250");
        let mut c = Smtp::hello("127.0.0.79", lb.addr);
        c.cmd("MAIL FROM:<s@example.org>", "250");
        c.cmd("RCPT TO:<x@remote.test>", "550 5.7.1");
        // Connection rules too: .78 is refused although HAProxy (127.0.0.1) connected.
        let mut c = Smtp::connect_from("127.0.0.78", lb.addr);
        assert_eq!(c.reply(), "554 5.7.1 Access denied\r\n", "{send}");
    }
}

#[test]
fn proxy_headers_from_untrusted_or_broken_sources_are_refused() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let proxy = Proxy::start(&config(pf, BEHIND_LB, ""));
    let lb = proxy.addr("lb");
    // Not in [trust] proxies: refused before anything is read.
    let mut c = Smtp::connect_from("127.0.0.5", lb);
    c.send("PROXY TCP4 192.0.2.1 127.0.0.1 1234 25\r\n");
    assert_eq!(c.reply(), "554 5.7.1 Access denied\r\n");
    assert_eq!(c.reply(), "");
    // Trusted address, but no header or a broken one: closed without a greeting.
    for bad in [
        "EHLO no-header\r\n",
        "PROXY TCP4 192.0.2.1 127.0.0.1 1234\r\n",
        "PROXY TCP4 192.0.2.1 127.0.0.1 1234 25\n",
        "PROXY TCP9 192.0.2.1 127.0.0.1 1234 25\r\n",
        "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04abcd",
    ] {
        let mut c = Smtp::connect_from("127.0.0.1", lb);
        c.send(bad);
        assert_eq!(c.reply(), "", "{bad:?} must get no greeting");
    }
    // A header on a listener that does not expect one is refused as a command.
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("direct"));
    c.cmd("PROXY TCP4 10.9.9.9 127.0.0.1 1234 25", "550 5.7.0");
}

#[test]
fn a_header_without_a_usable_client_never_relays_and_names_no_client() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    // Relay for everyone on loopback: the load balancer's own address is in it.
    let proxy = Proxy::start(&config(pf, BEHIND_LB, "networks = [\"127.0.0.0/8\"]"));
    for (i, header) in
        ["PROXY UNKNOWN\r\n", "PROXY TCP4 0.0.0.0 127.0.0.1 0 25\r\n", "PROXY TCP4 224.0.0.1 127.0.0.1 99 25\r\n"]
            .into_iter()
            .enumerate()
    {
        let mut c = Smtp::connect_from("127.0.0.1", proxy.addr("lb"));
        c.send(header);
        assert!(c.reply().starts_with("220"), "{header:?}");
        c.cmd("EHLO client.test", "250");
        c.cmd("MAIL FROM:<s@example.org>", "250");
        c.cmd("RCPT TO:<x@elsewhere.test>", "550 5.7.1");
        let mark = marker(&format!("unknown-{i}"));
        c.cmd("RCPT TO:<u@example.com>", "250");
        c.cmd("DATA", "354");
        c.send(&format!("Subject: {mark}\r\n\r\nhi\r\n.\r\n"));
        assert!(c.reply().starts_with("250"), "{header:?}");
        c.cmd("QUIT", "221");
        // The backend is not told that the load balancer is the client.
        let msg = pf.delivered(&mark);
        assert_eq!(pf.logged_client(&msg.queue_id), "unknown[unknown]", "{header:?}");
    }
}

#[test]
fn an_unknown_client_is_not_passed_off_as_the_proxy() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    // With PROXY toward the backend, "unknown" would make the backend take this proxy's
    // own address for the client: such a client gets 451 instead.
    let text = format!(
        "[[listener]]\nname = \"lb\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [trust]\nproxies = [\"127.0.0.1/32\"]\n[relay]\nlocal_domains = [\"example.com\"]\n\
         [[backend]]\naddress = \"{}\"\nidentity = \"proxy-v1\"\n",
        pf.proxied
    );
    let proxy = Proxy::start(&text);
    let mut c = Smtp::connect_from("127.0.0.1", proxy.addr("lb"));
    c.send("PROXY UNKNOWN\r\n");
    assert!(c.reply().starts_with("220"));
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<s@example.org>", "451 4.3.0");
    c.cmd("QUIT", "221");
}

#[test]
fn clients_cannot_claim_another_identity() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let proxy = Proxy::start(&config(pf, BEHIND_LB, ""));
    let mark = marker("spoof");
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("direct"));
    c.cmd("XCLIENT ADDR=10.9.9.9 NAME=spoofed.example", "550 5.7.0");
    c.cmd("XFORWARD ADDR=10.9.9.8", "550 5.7.0");
    let reply = c.message("s@example.org", &["u@example.com"], &format!("Subject: {mark}"));
    assert!(reply.starts_with("250"), "{reply}");
    let msg = pf.delivered(&mark);
    assert_eq!(pf.logged_client(&msg.queue_id), "unknown[127.0.0.77]");
    let log = pf.log();
    assert!(!log.contains("10.9.9.9") && !log.contains("10.9.9.8") && !log.contains("spoofed.example"));
}

#[test]
fn ipv6_client_is_passed_on() {
    if !need(&["postfix"]) {
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        assert!(std::env::var_os("CI").is_none(), "IPv6 loopback is needed under CI");
        eprintln!("SKIPPED: no IPv6 loopback here");
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let listeners = "[[listener]]\nname = \"v6\"\nbind = \"[::1]:0\"\n";
    let proxy = Proxy::start(&config(pf, listeners, "networks = [\"::1/128\"]"));
    let mark = marker("ipv6");
    let to: SocketAddr = proxy.addr("v6");
    let mut c = Smtp::hello("::1", to);
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<x@remote.test>", "250");
    c.cmd("RCPT TO:<u@example.com>", "250");
    c.cmd("DATA", "354");
    c.send(&format!("Subject: {mark}\r\n\r\nover IPv6\r\n.\r\n"));
    assert!(c.reply().starts_with("250"));
    let msg = pf.delivered(&mark);
    assert_eq!(pf.logged_client(&msg.queue_id), "unknown[::1]");
}
