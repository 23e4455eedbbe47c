//! DNS block- and allowlists against a real DNS server (Debian's unbound serving test
//! zones on loopback) and a real Postfix behind: weights, reply filters, allowlists,
//! the three actions, a list answering with an error code (never a listing), and a
//! resolver that does not answer (mail still flows).

use crate::support;

use std::time::{Duration, Instant};
use support::*;

/// 127.0.0.77: listed (127.0.0.2). 78: the list answers 127.255.255.254 ("public
/// resolver"). 79: listed, but allowlisted too. 80: in a sublist the filter leaves out.
const RECORDS: &[&str] = &[
    "77.0.0.127.bl.test. 300 IN A 127.0.0.2",
    "78.0.0.127.bl.test. 300 IN A 127.255.255.254",
    "79.0.0.127.bl.test. 300 IN A 127.0.0.2",
    "79.0.0.127.al.test. 300 IN A 127.0.10.2",
    "80.0.0.127.bl.test. 300 IN A 127.0.0.20",
];

fn config(backend: &str, nameserver: &str) -> String {
    Conf::new()
        .listener("reject", "127.0.0.1:0", "screen_action = \"reject\"")
        .listener("enforce", "127.0.0.1:0", "screen_action = \"enforce\"")
        .listener("log", "127.0.0.1:0", "screen_action = \"log\"")
        .backend(backend, "xforward", "")
        .set("limits", "max_errors = 100")
        .set(
            "screen",
            &format!(
                r#"nameservers = ["{nameserver}"]
dnsbl = ["bl.test=127.0.0.[2..11]*2", "al.test=127.0.[0..255].[1..3]*-2"]
threshold = 2
dnsbl_timeout = "1s""#
            ),
        )
        .set("admin", "bind = \"127.0.0.1:0\"")
        .text()
}

fn metric(admin: std::net::SocketAddr, line_start: &str) -> u64 {
    let (_, page) = http_get(admin, "/metrics");
    page.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn listed_clients_are_refused_and_error_codes_are_not_listings() {
    if !need(&["postfix", "unbound"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let dns = Unbound::start(&["bl.test", "al.test"], RECORDS);
    let proxy = Proxy::start(&config(&pf.plain.to_string(), &dns.addr.to_string()));
    let admin = proxy.admin.unwrap();

    // Listed: the refusal is the whole greeting, naming the list.
    let mut c = Smtp::connect_from("127.0.0.77", proxy.addr("reject"));
    let greeting = c.reply();
    assert!(greeting.starts_with("554 5.7.1 ") && greeting.contains("bl.test"), "{greeting}");

    // The error code, the allowlisted and the filtered-out client all get mail through.
    for client in ["127.0.0.78", "127.0.0.79", "127.0.0.80", "127.0.0.81"] {
        let mark = marker(&format!("dnsbl-{client}"));
        let mut c = Smtp::hello(client, proxy.addr("reject"));
        let reply = c.message("s@example.org", &["u@example.com"], &format!("Subject: {mark}\r\n\r\nhi\r\n"));
        assert!(reply.starts_with("250"), "{client}: {reply}");
        pf.delivered(&mark);
    }
    assert!(metric(admin, "portcullis_dnsbl_lookups_total{zone=\"bl.test\",result=\"error_code\"}") >= 1);
    assert!(metric(admin, "portcullis_dnsbl_lookups_total{zone=\"bl.test\",result=\"listed\"}") >= 2);
    assert!(metric(admin, "portcullis_dnsbl_verdicts_total{listener=\"reject\",action=\"reject\"}") >= 1);
}

#[test]
fn enforce_refuses_at_rcpt_without_a_backend_and_log_only_logs() {
    if !need(&["postfix", "unbound"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let dns = Unbound::start(&["bl.test", "al.test"], RECORDS);

    // Enforce: greeted, MAIL answered by us (the only backend is a closed port: a MAIL
    // that reached for it would get 4xx), every RCPT refused.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(&config(&nowhere, &dns.addr.to_string()));
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("enforce"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    let refused = c.cmd("RCPT TO:<u@example.com>", "550 5.7.1");
    assert!(refused.contains("bl.test"), "{refused}");
    c.cmd("RCPT TO:<v@example.com>", "550 5.7.1");
    c.cmd("DATA", "503");
    c.cmd("RSET", "250");
    c.cmd("QUIT", "221");
    // An unlisted client does reach for the backend: the 4xx shows the 250 above was ours.
    let mut c = Smtp::hello("127.0.0.81", proxy.addr("enforce"));
    c.cmd("MAIL FROM:<s@example.org>", "4");

    // Log: the listed client is served as any other.
    let proxy = Proxy::start(&config(&pf.plain.to_string(), &dns.addr.to_string()));
    let mark = marker("dnsbl-log");
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("log"));
    let reply = c.message("s@example.org", &["u@example.com"], &format!("Subject: {mark}\r\n\r\nhi\r\n"));
    assert!(reply.starts_with("250"), "{reply}");
    pf.delivered(&mark);
}

#[test]
fn a_resolver_that_does_not_answer_delays_the_greeting_but_refuses_nobody() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    // A UDP port nobody answers on (and TCP refused).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let proxy = Proxy::start(&config(&pf.plain.to_string(), &silent.local_addr().unwrap().to_string()));
    let started = Instant::now();
    let mark = marker("dnsbl-silent");
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("reject"));
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "greeting after {waited:?} with dnsbl_timeout = 1s");
    let reply = c.message("s@example.org", &["u@example.com"], &format!("Subject: {mark}\r\n\r\nhi\r\n"));
    assert!(reply.starts_with("250"), "{reply}");
    pf.delivered(&mark);
    let failed =
        metric(proxy.admin.unwrap(), "portcullis_dnsbl_lookups_total{zone=\"bl.test\",result=\"lookup_failed\"}");
    assert!(failed >= 1, "lookup failures counted");
}
