//! Screening against a real Postfix: connection, message and recipient rates per client
//! address, and a ban for a client that keeps trying to relay, listed and lifted with
//! `portcullis bans` through the admin endpoint.

use crate::support;

use std::process::Command;
use support::*;

fn config(pf: &Postfix, limits: &str, extra: &str) -> String {
    Conf::new()
        .listener("mx", "127.0.0.1:0", "")
        .backend(pf.plain, "xforward", "")
        .set("limits", "max_errors = 100")
        .set("limits", limits)
        .raw(extra)
        .text()
}

#[test]
fn rates_per_client_address() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let limits = "max_connection_rate = \"3/min\"\nmax_message_rate = \"2/h\"\nmax_recipient_rate = \"3/h\"";
    let proxy = Proxy::start(&config(pf, limits, ""));
    let mx = proxy.addr("mx");
    let mut held: Vec<Smtp> = (0..2).map(|_| Smtp::hello("127.0.0.91", mx)).collect();
    let mut c = Smtp::hello("127.0.0.91", mx);
    // The 4th connection within the minute, from the same address.
    let mut over = Smtp::connect_from("127.0.0.91", mx);
    assert!(over.reply().starts_with("421 4.7.0"));
    assert!(Smtp::hello("127.0.0.92", mx).cmd("NOOP", "250").starts_with("250"), "another address is not held back");

    c.cmd("MAIL FROM:<s@example.org>", "250");
    for r in ["a", "b", "c"] {
        c.cmd(&format!("RCPT TO:<{r}@example.com>"), "250");
    }
    c.cmd("RCPT TO:<d@example.com>", "450 4.7.1");
    c.cmd("RSET", "250");
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RSET", "250");
    c.cmd("MAIL FROM:<s@example.org>", "450 4.7.1");
    // The limits hold for the address, not the session.
    held[0].cmd("MAIL FROM:<s@example.org>", "450 4.7.1");
    held.clear();
}

#[test]
fn a_client_that_keeps_trying_to_relay_is_banned_until_lifted() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    let extra = format!(
        "[screen]\nban_after = 3\nban_window = \"10m\"\nban_time = \"1h\"\n[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token_file.display()
    );
    let proxy = Proxy::start(&config(pf, "", &extra));
    let (mx, admin) = (proxy.addr("mx"), proxy.admin.unwrap().to_string());
    let mut c = Smtp::hello("127.0.0.93", mx);
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<x1@elsewhere.test>", "550 5.7.1");
    c.cmd("RCPT TO:<x2@elsewhere.test>", "550 5.7.1");
    // The third failure bans: told at once, and the session ends.
    c.send("RCPT TO:<x3@elsewhere.test>\r\n");
    assert!(c.reply().starts_with("550 5.7.1"));
    assert!(c.reply().starts_with("421 4.7.0"));
    assert_eq!(c.reply(), "");
    let mut again = Smtp::connect_from("127.0.0.93", mx);
    assert!(again.reply().starts_with("421 4.7.0"), "banned at connect");
    Smtp::hello("127.0.0.94", mx).cmd("QUIT", "221");

    let bans = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["bans", "--admin", &admin])
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let token = ["--token-file", token_file.to_str().unwrap()];
    // The list names client addresses: it needs the token too.
    let (ok, out) = bans(&[]);
    assert!(!ok && out.contains("401"), "no token: {out}");
    let (ok, list) = bans(&token);
    assert!(ok && list.starts_with("127.0.0.93/32 ") && list.contains("relay_attempt"), "{list}");
    let (ok, out) = bans(&["--lift", "127.0.0.93"]);
    assert!(!ok && out.contains("401"), "no token: {out}");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token-at-all").unwrap();
    let (ok, out) = bans(&["--lift", "127.0.0.93", "--token-file", &wrong.display().to_string()]);
    assert!(!ok && out.contains("401"), "wrong token: {out}");
    let (ok, out) = bans(&["--lift", "127.0.0.93", "--token-file", &token_file.display().to_string()]);
    assert!(ok && out.contains("lifted 127.0.0.93/32"), "{out}");
    assert_eq!(bans(&token), (true, "no bans\n".to_string()));
    Smtp::hello("127.0.0.93", mx).cmd("QUIT", "221");
}

#[test]
fn early_talkers_are_refused_and_patient_clients_remembered() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let extra = "[screen]\npregreet = true\npregreet_wait = \"1s\"\npregreet_ttl = \"1h\"\n";
    let proxy = Proxy::start(&config(pf, "", extra));
    let mx = proxy.addr("mx");
    // Talks at once, without waiting for the end of the greeting.
    let mut talker = Smtp::connect_from("127.0.0.95", mx);
    talker.send("EHLO eager.example\r\n");
    let reply = talker.reply();
    assert!(reply.starts_with("220-") && reply.contains("\r\n554 5.5.1"), "{reply:?}");
    assert_eq!(talker.reply(), "");
    // Waits for the final line: served, and greeted at once next time.
    let started = std::time::Instant::now();
    let mut patient = Smtp::connect_from("127.0.0.96", mx);
    let greeting = patient.reply();
    let first_contact = started.elapsed();
    assert!(greeting.starts_with("220-") && greeting.contains("\r\n220 "), "{greeting:?}");
    patient.cmd("EHLO patient.example", "250");
    patient.cmd("QUIT", "221");
    let mut again = Smtp::connect_from("127.0.0.96", mx);
    let greeting = again.reply();
    assert!(greeting.starts_with("220 ") && !greeting.contains("220-"), "remembered: {greeting:?}");
    again.cmd("QUIT", "221");
    eprintln!("first contact greeted after {first_contact:?} (pregreet_wait 1s)");
}
