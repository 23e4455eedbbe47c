//! Backend connection reuse against a real Postfix (XFORWARD): two clients in turn are
//! served over one kept connection, and Postfix logs each message with its own client,
//! nothing carried over from the first; a connection is closed after reuse_max_messages.
//! A client's pipelined group goes to Postfix pipelined, with our refusals in between.

use crate::support;

use std::time::Duration;
use support::*;

fn proxy(pf: &Postfix, extra: &str) -> Proxy {
    init_logs();
    let conf = Conf::new()
        // One worker: one pool, so the second session finds the connection.
        .set("server", "workers = 1")
        .listener("mx", "127.0.0.1:0", "")
        .backend(pf.plain, "xforward", &format!("check_interval = \"0s\"\n{extra}"));
    Proxy::start(&conf.text())
}

#[test]
fn two_clients_in_turn_over_one_kept_connection() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let proxy = proxy(pf, "reuse = true\nreuse_max_messages = 2");
    let mut ids = Vec::new();
    for (i, client) in ["127.0.0.61", "127.0.0.62", "127.0.0.63"].iter().enumerate() {
        let mark = marker(&format!("reuse-{i}"));
        let mut c = Smtp::hello(client, proxy.addr("mx"));
        let reply = c.message("s@example.org", &["u@example.com"], &format!("Subject: {mark}\r\n\r\nhi\r\n"));
        assert!(reply.starts_with("250"), "{reply}");
        c.cmd("QUIT", "221");
        ids.push(pf.delivered(&mark).queue_id);
        std::thread::sleep(Duration::from_millis(100));
    }
    for (id, client) in ids.iter().zip(["127.0.0.61", "127.0.0.62", "127.0.0.63"]) {
        assert_eq!(
            pf.client_line(id),
            format!("localhost[127.0.0.1], orig_client=unknown[{client}]"),
            "each message with its own client"
        );
    }
    // Postfix counts each connection's commands when it ends: two messages on the first
    // (then QUIT: reuse_max_messages = 2), the third on a new one, closed with QUIT
    // by the pool once it waited reuse_idle (5 s) for another session.
    wait_until(
        Duration::from_secs(20),
        || {
            let log = pf.log();
            log.contains(" ehlo=1 xforward=2 mail=2 rcpt=2 data=2 quit=1 commands=10")
                && log.contains(" ehlo=1 xforward=1 mail=1 rcpt=1 data=1 quit=1 commands=6")
        },
        "Postfix to log both connections' ends",
    );
}

#[test]
fn a_pipelined_group_reaches_postfix_with_our_refusals_in_between() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let proxy = proxy(pf, "reuse = false");
    let mark = marker("pipelined");
    let mut c = Smtp::hello("127.0.0.64", proxy.addr("mx"));
    // Addresses of this test's own: Postfix's log is shared with other tests.
    c.send(&format!(
        "MAIL FROM:<s-{mark}@example.org>\r\nRCPT TO:<u-{mark}@example.com>\r\nRCPT TO:<x-{mark}@elsewhere.test>\r\n\
         RCPT TO:<v-{mark}@example.com>\r\nDATA\r\n",
    ));
    let replies: Vec<String> = (0..5).map(|_| c.reply()).collect();
    let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
    assert_eq!(codes, ["250", "250", "550", "250", "354"], "{replies:?}");
    assert!(replies[2].contains("Relay access denied"), "{replies:?}");
    c.send(&format!("Subject: {mark}\r\n\r\nhi\r\n.\r\n"));
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT", "221");
    let delivered = pf.delivered(&mark);
    assert_eq!(pf.client_line(&delivered.queue_id), "localhost[127.0.0.1], orig_client=unknown[127.0.0.64]");
    // Both recipients got a copy (the one found may be either's).
    wait_until(Duration::from_secs(10), || pf.count(&mark) == 2, "a copy for each accepted recipient");
    // Postfix saw two recipients, never the refused one, and no improper pipelining.
    wait_until(
        Duration::from_secs(10),
        || pf.log().contains(" ehlo=1 xforward=1 mail=1 rcpt=2 data=1 quit=1 commands=7"),
        "Postfix to log the session's commands",
    );
    let log = pf.log();
    assert!(!log.contains(&format!("x-{mark}@")), "a refused recipient reached Postfix");
    let improper = log.lines().filter(|l| l.contains("improper command pipelining") && l.contains(&mark));
    assert_eq!(improper.count(), 0, "{log}");
}
