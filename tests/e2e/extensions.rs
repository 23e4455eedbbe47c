//! SMTP extensions that follow the backend: DSN and SMTPUTF8 are offered when the
//! backend offers them, their parameters arrive intact (smtp-sink's dump, Postfix's
//! log), and a backend without them never gets them. Clients: Python's smtplib and
//! raw commands.

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

/// smtp-sink dumping every transaction into a folder; `flags` such as "-N" (no DSN).
struct Sink {
    child: Child,
    addr: std::net::SocketAddr,
    dump: tempfile::TempDir,
}

impl Sink {
    fn start(flags: &[&str]) -> Sink {
        let dump = tempfile::tempdir().unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("smtp-sink")
            .args(["-u", "root"])
            .args(flags)
            .args(["-d", &format!("{}/%M.", dump.path().display()), &addr.to_string(), "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok(), "smtp-sink");
        Sink { child, addr, dump }
    }

    /// The dump holding `marker`, waiting for it.
    fn dumped(&self, marker: &str) -> String {
        let mut found = String::new();
        wait_until(
            Duration::from_secs(10),
            || {
                found = std::fs::read_dir(self.dump.path())
                    .unwrap()
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .find(|t| t.contains(marker))
                    .unwrap_or_default();
                !found.is_empty()
            },
            &format!("a dump containing {marker:?}"),
        );
        found
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (Without connection reuse: some tests read what Postfix logs when a connection ends.)
fn proxy_to(backend: std::net::SocketAddr, local_domains: &str) -> Proxy {
    init_logs();
    let conf = Conf::new()
        .listener("mx", "127.0.0.1:0", "")
        .backend(backend, "xforward", "check_interval = \"200ms\"\nreuse = false")
        .local_domains(local_domains);
    Proxy::start(&conf.text())
}

/// EHLO through the proxy once it has learnt the backend's extensions (the first
/// health check runs at start-up).
fn ehlo_when(proxy: &Proxy, from: &str, wanted: &str) -> (Smtp, String) {
    let mut last = String::new();
    for _ in 0..50 {
        let mut c = Smtp::connect_from(from, proxy.addr("mx"));
        c.reply();
        last = c.cmd("EHLO client.test", "250");
        if last.contains(wanted) {
            return (c, last);
        }
        c.cmd("QUIT", "221");
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("EHLO never offered {wanted:?}: {last}");
}

fn python(script: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("python3").args(["-c", script]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn dsn_parameters_reach_a_backend_that_offers_dsn_intact() {
    if !need(&["smtp-sink"]) {
        return;
    }
    let sink = Sink::start(&[]);
    let proxy = proxy_to(sink.addr, "\"example.com\"");
    let (mut c, ehlo) = ehlo_when(&proxy, "127.0.0.81", "DSN\r\n");
    assert!(!ehlo.contains("SMTPUTF8"), "smtp-sink does not offer SMTPUTF8, so neither do we: {ehlo}");
    let mark = marker("dsn");
    c.cmd("MAIL FROM:<s@example.org> RET=HDRS ENVID=QQ314159", "250");
    c.cmd("RCPT TO:<u@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u+2Bx@example.com", "250");
    c.cmd("RCPT TO:<v@example.com> NOTIFY=NEVER", "250");
    // Malformed DSN parameters never reach the backend.
    c.cmd("RCPT TO:<w@example.com> NOTIFY=NEVER,SUCCESS", "501 5.5.4");
    c.cmd("RCPT TO:<w@example.com> ORCPT=u@example.com", "501 5.5.4");
    c.cmd("RCPT TO:<w@example.com> NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4");
    c.cmd("DATA", "354");
    c.send(&format!("Subject: {mark}\r\n\r\nhi\r\n.\r\n"));
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT", "221");
    let dump = sink.dumped(&mark);
    assert!(dump.contains("X-Mail-Args: <s@example.org> RET=HDRS ENVID=QQ314159"), "{dump}");
    assert!(
        dump.contains("X-Rcpt-Args: <u@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u+2Bx@example.com"),
        "{dump}"
    );
    assert!(dump.contains("X-Rcpt-Args: <v@example.com> NOTIFY=NEVER"), "{dump}");
    assert!(!dump.contains("w@example.com"), "{dump}");
}

#[test]
fn a_backend_without_dsn_is_offered_none_and_gets_none() {
    if !need(&["smtp-sink"]) {
        return;
    }
    let sink = Sink::start(&["-N"]);
    let proxy = proxy_to(sink.addr, "\"example.com\"");
    let (mut c, ehlo) = ehlo_when(&proxy, "127.0.0.82", "PIPELINING");
    assert!(!ehlo.contains("DSN"), "{ehlo}");
    c.cmd("MAIL FROM:<s@example.org> RET=HDRS", "555 5.5.4");
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<u@example.com> NOTIFY=NEVER", "555 5.5.4");
    c.cmd("RCPT TO:<u@example.com>", "250");
    c.cmd("QUIT", "221");
}

#[test]
fn utf8_addresses_reach_postfix_intact_with_smtputf8() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let proxy = proxy_to(pf.plain, "\"example.com\"");
    ehlo_when(&proxy, "127.0.0.83", "SMTPUTF8").0.cmd("QUIT", "221");
    let mark = marker("utf8");
    let script = r#"
import smtplib, sys
host, port, mark = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = smtplib.SMTP(host, port, source_address=("127.0.0.83", 0))
s.ehlo("client.test")
assert s.has_extn("smtputf8"), s.esmtp_features
msg = f"From: jørn@example.org\r\nTo: bjørn@example.com\r\nSubject: {mark}\r\n\r\nhej\r\n".encode()
s.sendmail("jørn@example.org", ["bjørn@example.com"], msg, mail_options=["SMTPUTF8"])
s.quit()
print("sent")
"#;
    let (ok, out) = python(script, &["127.0.0.1", &proxy.addr("mx").port().to_string(), &mark]);
    assert!(ok, "{out}");
    let msg = pf.delivered(&mark);
    let log = pf.log();
    assert!(log.contains(&format!("{}: from=<jørn@example.org>", msg.queue_id)), "{log}");
    assert!(log.contains("to=<bjørn@example.com>"), "{log}");
}

#[test]
fn utf8_addresses_need_smtputf8_offered_and_asked_for() {
    if !need(&["smtp-sink"]) {
        return;
    }
    let sink = Sink::start(&[]);
    let proxy = proxy_to(sink.addr, "\"example.com\"");
    let (mut c, ehlo) = ehlo_when(&proxy, "127.0.0.84", "PIPELINING");
    assert!(!ehlo.contains("SMTPUTF8"), "{ehlo}");
    c.cmd("MAIL FROM:<jørn@example.org>", "553 5.6.7");
    c.cmd("MAIL FROM:<jørn@example.org> SMTPUTF8", "555 5.5.4");
    c.cmd("MAIL FROM:<jorn@example.org>", "250");
    c.cmd("RCPT TO:<jørn@example.com>", "553 5.6.7");
    c.cmd("RCPT TO:<jorn@example.com>", "250");
    c.cmd("QUIT", "221");
}

#[test]
fn a_u_label_domain_is_judged_as_its_a_label() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let proxy = proxy_to(pf.plain, "\"xn--bcher-kva.example\"");
    let (mut c, _) = ehlo_when(&proxy, "127.0.0.85", "SMTPUTF8");
    c.cmd("MAIL FROM:<jørn@example.org> SMTPUTF8", "250");
    // Local in either form, whatever the case.
    c.cmd("RCPT TO:<jørn@BÜCHER.example>", "250");
    c.cmd("RCPT TO:<jorn@xn--bcher-kva.example>", "250");
    // Not local, and no relay rights here.
    c.cmd("RCPT TO:<jørn@straße.example>", "550 5.7.1");
    // A full-width '@' that a later NFKC normalisation would make a real one.
    c.cmd("RCPT TO:<victim\u{FF20}elsewhere.example@bücher.example>", "550 5.7.1");
    c.cmd("RCPT TO:<ü%elsewhere.example@bücher.example>", "550 5.7.1");
    c.cmd("RSET", "250");
    c.cmd("QUIT", "221");
}

/// A message in two BDAT chunks, split inside a line; a line starts with a dot.
fn send_in_chunks(c: &mut Smtp, mark: &str) -> String {
    let first = format!("Subject: {mark}\r\n\r\nfirst line\r\n.a line with a leading dot\r\nsplit ");
    let second = "across chunks\r\nlast line\r\n";
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<user@example.com>", "250");
    c.send(&format!("BDAT {}\r\n{first}", first.len()));
    let reply = c.reply();
    assert!(reply.starts_with("250"), "{reply}");
    c.send(&format!("BDAT {} LAST\r\n{second}", second.len()));
    let reply = c.reply();
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT", "221");
    format!("{first}{second}")
}

#[test]
fn bdat_reaches_a_chunking_backend_as_chunks() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let proxy = proxy_to(pf.plain, "\"example.com\"");
    let (mut c, ehlo) = ehlo_when(&proxy, "127.0.0.86", "SMTPUTF8");
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    let mark = marker("bdat-chunking");
    let sent = send_in_chunks(&mut c, &mark);
    let msg = pf.delivered(&mark);
    let body = sent.split_once("\r\n\r\n").unwrap().1.replace("\r\n", "\n");
    assert!(msg.text.replace("\r\n", "\n").ends_with(&body), "{}", msg.text);
    // Postfix counts the commands of each connection: the chunks arrived as BDAT.
    wait_until(Duration::from_secs(10), || pf.log().contains(" bdat=2 "), "Postfix to log bdat=2");
}

#[test]
fn bdat_reaches_a_backend_without_chunking_as_the_same_bytes() {
    if !need(&["smtp-sink"]) {
        return;
    }
    let sink = Sink::start(&[]);
    let proxy = proxy_to(sink.addr, "\"example.com\"");
    let (mut c, ehlo) = ehlo_when(&proxy, "127.0.0.87", "PIPELINING");
    assert!(ehlo.contains("CHUNKING"), "CHUNKING is ours to offer: {ehlo}");
    let mark = marker("bdat-data");
    let sent = send_in_chunks(&mut c, &mark);
    let dump = sink.dumped(&mark);
    // smtp-sink writes lines with LF and undoes the dot-stuffing of DATA.
    let expected = sent.replace("\r\n", "\n");
    assert!(dump.contains(&expected), "expected:\n{expected}\ndump:\n{dump}");
}
