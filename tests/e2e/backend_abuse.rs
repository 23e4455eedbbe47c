//! Abuse that needs no credentials, against a real Postfix: idle sessions holding the
//! backend's connections, and a client steering failover to a backend that learns
//! less about it.

use crate::support;

use std::time::{Duration, Instant};
use support::*;

fn proxy(backends: &str) -> Proxy {
    init_logs();
    Proxy::start(&Conf::new().listener("mx", "127.0.0.1:0", "").raw(backends).text())
}

#[test]
fn idle_sessions_do_not_hold_the_backend() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let p = proxy(&format!(
        "[[backend]]\naddress = \"{}\"\nidentity = \"xclient\"\nmax_connections = 2\nidle_timeout = \"2s\"\n\
         queue_timeout = \"500ms\"\n",
        pf.plain
    ));
    let addr = p.addr("mx");
    // Two sessions send MAIL and go quiet: both backend connections are theirs...
    let mut idle: Vec<Smtp> = (0..2)
        .map(|i| {
            let mut c = Smtp::hello(&format!("127.0.0.{}", 90 + i), addr);
            c.cmd("MAIL FROM:<idle@example.org>", "250");
            c
        })
        .collect();
    // ...so a third waits briefly and is told to come back.
    let mut third = Smtp::hello("127.0.0.92", addr);
    let asked = Instant::now();
    third.cmd("MAIL FROM:<third@example.org>", "451 4.3.2");
    assert!(asked.elapsed() >= Duration::from_millis(400));
    // Without a recipient they give their connections back after idle_timeout.
    std::thread::sleep(Duration::from_millis(2500));
    let mark = marker("after-idle");
    let reply = third.message("third@example.org", &["u@example.com"], &format!("Subject: {mark}\r\n\r\nhi"));
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    pf.delivered(&mark);
    third.cmd("QUIT", "221");
    // The idle sessions go on where they were: their MAIL is sent again at RCPT.
    for (i, c) in idle.iter_mut().enumerate() {
        let mark = marker(&format!("resumed-{i}"));
        c.cmd("RCPT TO:<u@example.com>", "250");
        c.cmd("DATA", "354");
        c.send(&format!("Subject: {mark}\r\n\r\nhi\r\n.\r\n"));
        assert!(c.reply().starts_with("250 2.0.0"));
        let delivered = pf.delivered(&mark);
        assert_eq!(pf.logged_client(&delivered.queue_id), format!("unknown[127.0.0.{}]", 90 + i));
        assert!(delivered.text.contains("idle@example.org"), "{}", delivered.text);
        c.cmd("QUIT", "221");
    }
}

#[test]
fn a_helo_postfix_would_refuse_is_never_passed_on() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    // A HELO name over Postfix's 255 characters would get XCLIENT refused (501): it is
    // sent as [UNAVAILABLE], and the session stays on the XCLIENT backend, even where
    // failing over to a weaker identity is allowed.
    let p = proxy(&format!(
        "[[backend]]\naddress = \"{0}\"\nidentity = \"xclient\"\n\
         [[backend]]\naddress = \"{0}\"\nidentity = \"none\"\nallow_identity_downgrade = true\n",
        pf.plain
    ));
    let mut c = Smtp::connect_from("127.0.0.93", p.addr("mx"));
    assert!(c.reply().starts_with("220"));
    c.cmd(&format!("EHLO {}.example", "h".repeat(300)), "250");
    let mark = marker("long-helo");
    let reply = c.message("s@example.org", &["u@example.com"], &format!("Subject: {mark}\r\n\r\nhi"));
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT", "221");
    let msg = pf.delivered(&mark);
    assert_eq!(pf.logged_client(&msg.queue_id), "unknown[127.0.0.93]", "told by XCLIENT, not seen as the proxy");
}

#[test]
fn failover_never_goes_to_a_weaker_identity_unless_allowed() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let dead = format!("127.0.0.1:{}", free_port());
    for (allowed, expect) in [(false, "451 4.4.1"), (true, "250")] {
        let p = proxy(&format!(
            "[[backend]]\naddress = \"{dead}\"\nidentity = \"xclient\"\nconnect_timeout = \"1s\"\n\
             [[backend]]\naddress = \"{}\"\nidentity = \"none\"\nallow_identity_downgrade = {allowed}\n",
            pf.plain
        ));
        let mut c = Smtp::hello("127.0.0.94", p.addr("mx"));
        c.cmd("MAIL FROM:<s@example.org>", expect);
        c.cmd("QUIT", "221");
    }
}
