//! End to end against a real Postfix backend: the client's real address reaches
//! Postfix with each identity method, relay and connection rules hold on the real peer,
//! and backend failover works. Clients use distinct 127.0.0.0/8 addresses.

use crate::support;

use support::*;

fn config(backends: &str, relay: &str, listeners: &str) -> String {
    Conf::new().set("relay", relay).raw(listeners).raw(backends).text()
}

const ONE_LISTENER: &str = "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n";

fn backend(addr: std::net::SocketAddr, identity: &str) -> String {
    format!("[[backend]]\naddress = \"{addr}\"\nidentity = \"{identity}\"\nconnect_timeout = \"3s\"\n")
}

/// swaks from 127.0.0.77 through the proxy; returns Postfix's `client=` log entry and
/// the delivered message's `Received:` header.
fn client_seen_by_postfix(identity: &str) -> (String, String) {
    init_logs();
    let pf = Postfix::shared();
    let target = if identity.starts_with("proxy") { pf.proxied } else { pf.plain };
    let proxy = Proxy::start(&config(&backend(target, identity), "", ONE_LISTENER));
    let mark = marker(&format!("identity-{identity}"));
    let (ok, transcript) = swaks_from_77(proxy.addr("mx"), "user@example.com", &mark, &["--helo", "client77.test"]);
    assert!(ok, "swaks failed:\n{transcript}");
    let msg = pf.delivered(&mark);
    let received = msg.text.lines().skip_while(|l| !l.starts_with("Received:")).take(2).collect::<Vec<_>>().join(" ");
    (pf.client_line(&msg.queue_id), received)
}

/// Postfix logs the client as 127.0.0.77 and puts it in `Received:`.
fn real_client_reaches_postfix(identity: &str) {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    let (logged, received) = client_seen_by_postfix(identity);
    assert_eq!(logged, "unknown[127.0.0.77]");
    // The client's own EHLO name, not the proxy's, whichever identity carries it.
    assert!(received.contains("from client77.test (unknown [127.0.0.77])"), "{received}");
}

#[test]
fn xclient_passes_the_real_client() {
    real_client_reaches_postfix("xclient");
}

#[test]
fn proxy_v1_passes_the_real_client() {
    real_client_reaches_postfix("proxy-v1");
}

#[test]
fn proxy_v2_passes_the_real_client() {
    real_client_reaches_postfix("proxy-v2");
}

#[test]
fn xforward_passes_the_real_client() {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    // XFORWARD is for logging: Postfix records the real client as orig_client, while
    // its access rules and Received: header still see the proxy.
    let (logged, _received) = client_seen_by_postfix("xforward");
    assert_eq!(logged, "localhost[127.0.0.1], orig_client=unknown[127.0.0.77]");
}

#[test]
fn identity_none_shows_the_proxy() {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    let (logged, received) = client_seen_by_postfix("none");
    assert_eq!(logged, "localhost[127.0.0.1]");
    assert!(!received.contains("127.0.0.77"), "{received}");
}

#[test]
fn relay_rules_on_the_real_peer() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    // One listener on all loopback addresses, so clients can reach different local addresses.
    // (A wildcard address faces the Internet: the pregreet wait is not what is tested here.)
    let listeners = "[[listener]]\nname = \"mx\"\nbind = \"0.0.0.0:0\"\n[screen]\npregreet = false\n";
    let relay = r#"networks = ["127.0.0.80/255.255.255.248", "127.0.0.90/32"]
local_addresses = ["127.0.0.10"]
never = ["127.0.0.90/32"]"#;
    let proxy = Proxy::start(&config(&backend(pf.plain, "xclient"), relay, listeners));
    let port = proxy.addr("mx").port();
    let at = |ip: &str| format!("{ip}:{port}").parse().unwrap();
    let mark = marker("relay");

    // An outsider: local domain accepted, remote refused before Postfix ever sees it.
    let mut c = Smtp::hello("127.0.0.77", at("127.0.0.1"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<local-ok@example.com>", "250");
    let refused = format!("outsider-{mark}@remote.test");
    c.cmd(&format!("RCPT TO:<{refused}>"), "550 5.7.1");
    for tricky in [
        format!("x%{mark}@example.com"),
        format!("remote.test!{mark}@example.com"),
        format!("@example.com:{mark}@remote.test"),
        format!("\"{mark}@remote.test\"@example.com"),
        "x@[127.0.0.1]".to_string(),
        "x@example.com.".to_string(),
    ] {
        c.cmd(&format!("RCPT TO:<{tricky}>"), "550 5.7.1");
    }
    let reply = {
        c.cmd("DATA", "354");
        c.send(&format!("Subject: {mark}\r\n\r\nlocal mail from an outsider\r\n.\r\n"));
        c.reply()
    };
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT", "221");
    pf.delivered(&mark);
    assert!(!pf.log().contains(&mark), "a refused recipient reached Postfix:\n{}", pf.log());

    // relay.networks (address/mask form) may relay.
    let mut c = Smtp::hello("127.0.0.81", at("127.0.0.1"));
    let reply = c.message("s@example.org", &[&format!("networks-{mark}@remote.test")], &format!("Subject: n {mark}"));
    assert!(reply.starts_with("250"), "{reply}");

    // never beats networks.
    let mut c = Smtp::hello("127.0.0.90", at("127.0.0.1"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd(&format!("RCPT TO:<never-{mark}@remote.test>"), "550 5.7.1");

    // The same outsider may relay through the local address 127.0.0.10, not through .11.
    let mut c = Smtp::hello("127.0.0.77", at("127.0.0.10"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd(&format!("RCPT TO:<local-address-{mark}@remote.test>"), "250");
    let mut c = Smtp::hello("127.0.0.77", at("127.0.0.11"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd(&format!("RCPT TO:<other-address-{mark}@remote.test>"), "550 5.7.1");

    pf.delivered(&format!("Subject: n {mark}"));
    let log = pf.log();
    assert!(log.contains(&format!("to=<networks-{mark}@remote.test>")), "{log}");
    assert!(!log.contains(&format!("never-{mark}")));
    assert!(!log.contains(&format!("other-address-{mark}")));
}

#[test]
fn relay_disabled_refuses_all_relay() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let relay = "enabled = false\nnetworks = [\"127.0.0.0/8\"]";
    let proxy = Proxy::start(&config(&backend(pf.plain, "xclient"), relay, ONE_LISTENER));
    let mut c = Smtp::hello("127.0.0.81", proxy.addr("mx"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<someone@remote.test>", "550 5.7.1");
    c.cmd("RCPT TO:<someone@example.com>", "250");
}

#[test]
fn connection_rules_per_listener() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    // Q316205: port "mx" only for the scanner host, "open" for everyone.
    let listeners = r#"
[[listener]]
name = "mx"
bind = "127.0.0.1:0"
default = "accept"
rules = [
  { name = "scanner", action = "accept", from = ["127.0.0.10/32"] },
  { name = "everyone-else", action = "reject", from = ["0.0.0.0/0", "::/0"] },
]
[[listener]]
name = "open"
bind = "127.0.0.1:0"
"#;
    let proxy = Proxy::start(&config(&backend(pf.plain, "xclient"), "", listeners));
    let mut c = Smtp::connect_from("127.0.0.10", proxy.addr("mx"));
    assert!(c.reply().starts_with("220 proxy.test"));
    let mut c = Smtp::connect_from("127.0.0.11", proxy.addr("mx"));
    assert_eq!(c.reply(), "554 5.7.1 Access denied\r\n");
    assert_eq!(c.reply(), "", "connection closed after the refusal");
    let mut c = Smtp::connect_from("127.0.0.11", proxy.addr("open"));
    assert!(c.reply().starts_with("220 proxy.test"));
}

#[test]
fn first_backend_down_second_used_all_down_4xx() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let dead = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backends = backend(dead, "xclient") + &backend(pf.plain, "xclient");
    let proxy = Proxy::start(&config(&backends, "", ONE_LISTENER));
    let mark = marker("failover");
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("mx"));
    let reply = c.message("s@example.org", &["u@example.com"], &format!("Subject: {mark}"));
    assert!(reply.starts_with("250"), "{reply}");
    let msg = pf.delivered(&mark);
    assert_eq!(pf.logged_client(&msg.queue_id), "unknown[127.0.0.77]");

    let proxy = Proxy::start(&config(&backend(dead, "xclient"), "", ONE_LISTENER));
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("mx"));
    c.cmd("MAIL FROM:<s@example.org>", "451 4.4.1");
}

#[test]
fn bare_lf_never_reaches_postfix() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let proxy = Proxy::start(&config(&backend(pf.plain, "xclient"), "", ONE_LISTENER));
    let mark = marker("smuggle");
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("mx"));
    // ("\0\r\n.\r\n" would be a real end of data: what follows it is the client's own
    // next transaction, judged like any other, so it is not in this list.)
    for smuggle in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r", "\r\n.\r", "\r.\r\n", "\0\n.\n"] {
        c.cmd("MAIL FROM:<s@example.org>", "250");
        c.cmd("RCPT TO:<u@example.com>", "250");
        c.cmd("DATA", "354");
        c.send(&format!(
            "Subject: {mark}\r\n\r\nfirst{smuggle}MAIL FROM:<evil@example.org>\r\nRCPT TO:<u@example.com>\r\n\
             DATA\r\nSubject: smuggled {mark}\r\n\r\n.\r\n"
        ));
        let reply = c.reply();
        assert!(reply.starts_with("554 5.6.0"), "{smuggle:?}: {reply}");
    }
    // A clean message afterwards arrives, so delivery was working all along.
    let reply = c.message("s@example.org", &["u@example.com"], &format!("Subject: clean {mark}"));
    assert!(reply.starts_with("250"), "{reply}");
    pf.delivered(&format!("clean {mark}"));
    assert_eq!(pf.count(&mark), 1, "only the clean message may arrive");
}

#[test]
fn normalize_mode_delivers_one_message_never_a_smuggled_one() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let text = config(&backend(pf.plain, "xclient"), "", ONE_LISTENER) + "[limits]\nbare_lf = \"normalize\"\n";
    let proxy = Proxy::start(&text);
    let mark = marker("normalize");
    let variants = ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r", "\r\n.\r", "\r.\r\n"];
    for (i, smuggle) in variants.iter().enumerate() {
        let mut c = Smtp::hello("127.0.0.77", proxy.addr("mx"));
        c.cmd("MAIL FROM:<s@example.org>", "250");
        c.cmd("RCPT TO:<u@example.com>", "250");
        c.cmd("DATA", "354");
        c.send(&format!(
            "Subject: {mark}-{i}\r\n\r\nfirst{smuggle}MAIL FROM:<evil@example.org>\r\nRCPT TO:<u@example.com>\r\n\
             DATA\r\nSubject: smuggled {mark}-{i}\r\n\r\n.\r\n"
        ));
        let reply = c.reply();
        assert!(reply.starts_with("250"), "{smuggle:?}: {reply}");
        let msg = pf.delivered(&format!("Subject: {mark}-{i}"));
        // The would-be second message is text inside the first, with clean line ends.
        assert!(msg.text.contains("MAIL FROM:<evil@example.org>"), "{}", msg.text);
    }
    // NUL is refused even here: dropping it could join "." and CRLF into an end of data.
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("mx"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<u@example.com>", "250");
    c.cmd("DATA", "354");
    c.send(&format!("Subject: {mark}-nul\r\n\r\nfirst\0\r\n.\nsecond\r\n.\r\n"));
    assert!(c.reply().starts_with("554 5.6.0"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let n = variants.len();
    assert_eq!(pf.count(&format!("Subject: smuggled {mark}")), n, "only inside the real messages");
    assert_eq!(pf.count(&mark), n);
}

#[test]
fn client_disconnect_mid_data_delivers_nothing() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let proxy = Proxy::start(&config(&backend(pf.plain, "xclient"), "", ONE_LISTENER));
    let mark = marker("half");
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("mx"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<u@example.com>", "250");
    c.cmd("DATA", "354");
    c.send(&format!("Subject: {mark}\r\n\r\nhalf a message\r\n"));
    drop(c);
    wait_until(
        std::time::Duration::from_secs(10),
        || pf.log().contains("lost connection after DATA"),
        "postfix to see the abandoned transaction",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(pf.count(&mark), 0);
}

/// Runs a Python smtplib `script` (its arguments: host, port, `mark`) against the
/// proxy's `mx` listener; its standard output and error, once it has succeeded.
fn smtplib(script: &str, proxy: &Proxy, mark: &str) -> (String, String) {
    let addr = proxy.addr("mx");
    let out = std::process::Command::new("python3")
        .args(["-c", script, &addr.ip().to_string(), &addr.port().to_string(), mark])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout.into_owned(), stderr.into_owned())
}

/// A list server's message to 150 recipients, from Python's smtplib: 100 accepted, 50
/// deferred with 452 (to be retried), the session kept, and Postfix queues the message
/// once, for the 100.
#[test]
fn recipients_over_the_limit_are_deferred_and_the_rest_delivered_once() {
    if !need(&["postfix", "python3"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let proxy = Proxy::start(&config(&backend(pf.plain, "xclient"), "", ONE_LISTENER));
    let mark = marker("overshoot");
    let script = r#"
import smtplib, sys
host, port, mark = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rcpts = ["u%d@example.com" % i for i in range(150)]
with smtplib.SMTP(host, port, source_address=("127.0.0.79", 0), timeout=30) as s:
    refused = s.sendmail("list@example.org", rcpts, "Subject: %s\r\n\r\nlist mail\r\n" % mark)
    codes = sorted(set((c, m.decode()) for c, m in refused.values()))
    print(len(refused), codes, s.noop()[0])
"#;
    let (stdout, _) = smtplib(script, &proxy, &mark);
    assert_eq!(stdout.trim(), "50 [(452, '4.5.3 Error: too many recipients')] 250");
    let msg = pf.delivered(&mark);
    let queued = format!("{}: from=<list@example.org>", msg.queue_id);
    wait_until(std::time::Duration::from_secs(10), || pf.log().contains(&queued), "qmgr's line");
    let log = pf.log();
    let line = log.lines().find(|l| l.contains(&queued)).unwrap();
    assert!(line.contains("nrcpt=100 "), "{line}");
    assert_eq!(log.matches(" from=<list@example.org>, size=").count(), 1, "queued once");
}

/// Python's smtplib, asked for SMTPUTF8, adds its own and says it twice: taken as
/// Postfix takes it, and the message to a UTF-8 address is delivered.
#[test]
fn smtputf8_said_twice_by_smtplib_is_delivered() {
    if !need(&["postfix", "python3"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let proxy = Proxy::start(&config(&backend(pf.plain, "xclient"), "", ONE_LISTENER));
    let mark = marker("utf8twice");
    let script = r#"
import smtplib, sys
host, port, mark = sys.argv[1], int(sys.argv[2]), sys.argv[3]
from email.message import EmailMessage
msg = EmailMessage()
msg["From"], msg["To"], msg["Subject"] = "jørn@example.org", "blåbær@example.com", mark
msg.set_content("hej")
with smtplib.SMTP(host, port, source_address=("127.0.0.79", 0), timeout=30) as s:
    s.set_debuglevel(1)
    refused = s.send_message(msg, mail_options=["SMTPUTF8"])
    print("refused:", refused)
"#;
    let (stdout, stderr) = smtplib(script, &proxy, &mark);
    let transcript = stdout + &stderr;
    assert!(transcript.contains("SMTPUTF8 SMTPUTF8"), "smtplib no longer repeats it: {transcript}");
    assert!(transcript.contains("refused: {}"), "{transcript}");
    pf.delivered(&mark);
}

/// A client that quits after a refused relay: Postfix sees our QUIT, and logs a client
/// that left, not "lost connection after MAIL".
#[test]
fn quitting_after_a_refused_relay_quits_at_the_backend() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let proxy = Proxy::start(&config(&backend(pf.plain, "xclient"), "", ONE_LISTENER));
    let mut c = Smtp::hello("127.0.0.201", proxy.addr("mx"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<someone@elsewhere.test>", "550 5.7.1");
    c.cmd("QUIT", "221");
    let client = "unknown[127.0.0.201]";
    wait_until(
        std::time::Duration::from_secs(10),
        || pf.log().lines().any(|l| l.contains(&format!("disconnect from {client}"))),
        "postfix to log the disconnect",
    );
    let log = pf.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(client)).collect();
    assert!(!lines.iter().any(|l| l.contains("lost connection")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("disconnect from") && l.contains("quit=1")), "{lines:#?}");
}

/// A TCP relay that passes everything and keeps what the proxy sent.
fn recording_link(target: std::net::SocketAddr) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = sent.clone();
    std::thread::spawn(move || {
        for proxy in listener.incoming().flatten() {
            let Ok(backend) = TcpStream::connect(target) else { continue };
            let (mut replies, mut to_proxy) = (backend.try_clone().unwrap(), proxy.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut replies, &mut to_proxy));
            let (mut from_proxy, mut to_backend, record) = (proxy, backend, record.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from_proxy.read(&mut buf) {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to_backend.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to_backend.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, sent)
}

/// Once Postfix has shown the proxy it may set the client (its EHLO to us offered
/// XCLIENT), later connections send XCLIENT straight after the greeting, before any
/// EHLO: Postfix takes it there, and still logs the real client.
#[test]
fn xclient_before_ehlo_is_taken_by_postfix() {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    let pf = Postfix::shared();
    let (link, sent) = recording_link(pf.plain);
    let proxy = Proxy::start(&config(&backend(link, "xclient"), "", ONE_LISTENER));
    let mut queue_ids = Vec::new();
    for i in 0..2 {
        let mark = marker(&format!("xclient-first-{i}"));
        let (ok, transcript) = swaks_from_77(proxy.addr("mx"), "user@example.com", &mark, &["--helo", "client77.test"]);
        assert!(ok, "swaks failed:\n{transcript}");
        queue_ids.push(pf.delivered(&mark).queue_id);
    }
    for id in &queue_ids {
        assert_eq!(pf.client_line(id), "unknown[127.0.0.77]");
    }
    // The health check's EHLO showed the proxy what it may set; the sessions' connections
    // then send XCLIENT straight after the greeting.
    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).to_string();
    // (The first session may have come before the first check, and learnt it itself.)
    assert!(sent.contains("EHLO proxy.test\r\n"), "{sent}");
    let connections: Vec<&str> = sent.split("QUIT\r\n").filter(|c| c.contains("MAIL FROM")).collect();
    assert_eq!(connections.len(), 2, "{sent}");
    let last = connections[1];
    assert!(last.starts_with("XCLIENT "), "XCLIENT first once known: {sent}");
    assert!(last.contains("\r\nEHLO client77.test\r\n"), "{last}");
}
