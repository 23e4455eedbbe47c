//! Live reload against Postfix: every RCPT follows the policy of the moment while relay
//! is switched on and off under open sessions; a broken or unsafe file keeps the running
//! policy (real binary, SIGHUP); listeners come and go without disturbing the others;
//! reloads during a load lose no session and no message.

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn config(backend: std::net::SocketAddr, relay_networks: &str, listeners: &str) -> String {
    Conf::new()
        .listener("mx", "127.0.0.1:0", "")
        .backend(backend, "xforward", "")
        .set("relay", &format!("networks = [{relay_networks}]"))
        .set("limits", "max_errors = 1000\nmax_recipients = 1000")
        .raw(listeners)
        .text()
}

#[test]
fn every_rcpt_follows_the_policy_of_the_moment() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let (on, off) = (config(pf.plain, "\"127.0.0.0/8\"", ""), config(pf.plain, "", ""));
    let proxy = Proxy::start(&off);
    let mut sessions: Vec<Smtp> = (71..74)
        .map(|i| {
            let mut c = Smtp::hello(&format!("127.0.0.{i}"), proxy.addr("mx"));
            c.cmd("MAIL FROM:<s@example.org>", "250");
            c
        })
        .collect();
    for round in 0..20 {
        let relay = round % 2 == 1;
        let changes = proxy.reload(if relay { &on } else { &off });
        if round > 0 {
            let expected = if relay { "relay.networks: +127.0.0.0/8" } else { "relay.networks: -127.0.0.0/8" };
            assert_eq!(changes, [expected], "round {round}");
        }
        for c in &mut sessions {
            let expect = if relay { "250" } else { "550 5.7.1" };
            c.cmd(&format!("RCPT TO:<r{round}@elsewhere.test>"), expect);
            // Local mail is never relaying: accepted either way.
            c.cmd("RCPT TO:<user@example.com>", "250");
        }
        // A new session sees the same policy as the open ones.
        let mut fresh = Smtp::hello("127.0.0.74", proxy.addr("mx"));
        fresh.cmd("MAIL FROM:<s@example.org>", "250");
        fresh.cmd("RCPT TO:<fresh@elsewhere.test>", if relay { "250" } else { "550 5.7.1" });
        fresh.cmd("QUIT", "221");
    }
    // Switched off once more: no permission is left anywhere.
    assert_eq!(proxy.reload(&off), ["relay.networks: -127.0.0.0/8"]);
    for c in &mut sessions {
        c.cmd("RSET", "250");
        c.cmd("MAIL FROM:<s@example.org>", "250");
        c.cmd("RCPT TO:<late@elsewhere.test>", "550 5.7.1");
        c.cmd("QUIT", "221");
    }
}

#[test]
fn listeners_come_and_go_without_disturbing_open_sessions() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let port = free_port();
    let extra = format!("[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:{port}\"\n");
    let proxy = Proxy::start(&config(pf.plain, "", ""));
    let mut open = Smtp::hello("127.0.0.75", proxy.addr("mx"));

    let changes = proxy.reload(&config(pf.plain, "", &extra));
    assert!(changes.contains(&format!("listener \"extra\" added on 127.0.0.1:{port}")), "{changes:?}");
    let extra_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut via_extra = Smtp::hello("127.0.0.76", extra_addr);
    open.cmd("NOOP", "250");

    let changes = proxy.reload(&config(pf.plain, "", ""));
    assert!(changes.contains(&format!("listener \"extra\" on 127.0.0.1:{port} removed")), "{changes:?}");
    wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(extra_addr).is_err(), "the port to close");
    // Sessions of the removed listener and of the kept one both go on.
    let mark = marker("reload-listener");
    for c in [&mut open, &mut via_extra] {
        let reply = c.message("s@example.org", &["user@example.com"], &format!("Subject: {mark}\r\n\r\nhi"));
        assert!(reply.starts_with("250"), "{reply}");
        c.cmd("QUIT", "221");
    }
    wait_until(Duration::from_secs(30), || pf.count(&mark) == 2, "both messages delivered");
}

/// The real binary with its config in a file, logging to a file.
struct Running {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    admin: std::net::SocketAddr,
}

impl Running {
    fn start(text: &str, port: u16, admin: u16) -> Running {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config", &dir.path().join("p.toml").display().to_string()])
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let admin = format!("127.0.0.1:{admin}").parse().unwrap();
        let addr = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok(), "portcullis listening");
        Running { child, dir, port, admin }
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Writes `text` as the config file and sends SIGHUP; waits for the reload to be logged.
    fn reload(&self, text: &str) {
        let before = self.log().matches("reloading the configuration").count();
        std::fs::write(self.dir.path().join("p.toml"), text).unwrap();
        let status = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        wait_until(
            Duration::from_secs(10),
            || {
                let log = self.log();
                log.matches("reloading the configuration").count() > before
                    && log.matches("configuration reloaded").count() + log.matches("configuration NOT reloaded").count()
                        > before
            },
            "the reload to be logged",
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn file_config(port: u16, admin: u16, backend: std::net::SocketAddr, networks: &str) -> String {
    Conf::new()
        .listener("mx", &format!("127.0.0.1:{port}"), "")
        .backend(backend, "xforward", "")
        .set("relay", &format!("networks = [{networks}]"))
        .set("limits", "max_connections_per_ip = 1000")
        .set("admin", &format!("bind = \"127.0.0.1:{admin}\""))
        .text()
}

#[test]
fn sighup_with_a_broken_or_unsafe_file_keeps_the_running_policy() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let (port, admin) = (free_port(), free_port());
    let relaying = file_config(port, admin, pf.plain, "\"127.0.0.0/8\"");
    let p = Running::start(&relaying, port, admin);
    let relay_reply = |expect: &str| {
        let mut c = Smtp::hello("127.0.0.77", p.addr());
        c.cmd("MAIL FROM:<s@example.org>", "250");
        c.cmd("RCPT TO:<x@elsewhere.test>", expect);
        c.cmd("QUIT", "221");
    };
    relay_reply("250");

    // A syntax error, then an open relay without acknowledgement: both refused.
    p.reload(&format!("{relaying}\n[relay.oops\n"));
    relay_reply("250");
    p.reload(&file_config(port, admin, pf.plain, "\"127.0.0.0/8\", \"0.0.0.0/0\""));
    relay_reply("250");
    let log = p.log();
    assert_eq!(log.matches("configuration NOT reloaded; the running one stays in force").count(), 2, "{log}");
    assert!(log.contains("relay.networks[1]: 0.0.0.0/0 holds every address: this is an open relay"), "{log}");

    // A good file applies, and says what changed.
    p.reload(&file_config(port, admin, pf.plain, ""));
    relay_reply("550 5.7.1");
    assert!(p.log().contains("change=relay.networks: -127.0.0.0/8"), "{}", p.log());
    let (_, metrics) = http_get(p.admin, "/metrics");
    assert!(metrics.contains("portcullis_reloads_total{result=\"failed\"} 2"), "{metrics}");
    assert!(metrics.contains("portcullis_reloads_total{result=\"ok\"} 1"), "{metrics}");
}

#[test]
fn reloads_during_a_load_lose_no_session_and_no_message() {
    if !need(&["postfix", "smtp-source"]) {
        return;
    }
    let pf = Postfix::shared();
    let (port, admin) = (free_port(), free_port());
    let texts =
        [file_config(port, admin, pf.plain, "\"10.2.0.0/16\""), file_config(port, admin, pf.plain, "\"10.3.0.0/16\"")];
    let p = Running::start(&texts[0], port, admin);
    let mark = marker("reload-load");
    let messages = 1500;
    let mut load = Command::new("smtp-source")
        .args(["-s", "10", "-m", &messages.to_string(), "-c", "-f", "s@example.org", "-t", "user@example.com"])
        .args(["-S", &mark, &p.addr().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut reloads = 0;
    while load.try_wait().unwrap().is_none() {
        p.reload(&texts[reloads % 2]);
        reloads += 1;
        std::thread::sleep(Duration::from_millis(20));
        assert!(started.elapsed() < Duration::from_secs(120), "the load did not finish");
    }
    let out = load.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("fatal"), "smtp-source failed: {stderr}");
    wait_until(Duration::from_secs(60), || pf.count(&mark) == messages, "every message delivered");
    let log = p.log();
    assert_eq!(log.matches("configuration reloaded").count(), reloads, "{log}");
    assert!(!log.contains("backend failed"), "{log}");
    eprintln!("{reloads} reloads during {messages} messages in {:?}, none lost", started.elapsed());
    assert!(reloads >= 5, "too few reloads ({reloads}) to show anything");
}

#[test]
fn a_reload_reads_the_users_file_again() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let text = format!(
        "[[listener]]\nname = \"sub\"\nbind = \"127.0.0.1:0\"\nauth = \"optional\"\nauth_plaintext = true\n\
         [auth]\nmode = \"file\"\nusers_file = \"{}\"\n[relay]\nlocal_domains = [\"example.com\"]\n\
         [[backend]]\naddress = \"{}\"\nidentity = \"xclient\"\n",
        users.display(),
        pf.plain
    );
    let set_password = |password: &str| {
        let hash = portcullis::auth::users::hash_password(password).unwrap();
        std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
    };
    let login = |addr, password: &str, expect: &str| {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0alice\0{password}"));
        let mut c = Smtp::hello("127.0.0.78", addr);
        c.cmd(&format!("AUTH PLAIN {token}"), expect);
        c.cmd("QUIT", "221");
    };
    set_password("first");
    let proxy = Proxy::start(&text);
    login(proxy.addr("sub"), "first", "235");
    set_password("second");
    login(proxy.addr("sub"), "second", "535");
    let changes = proxy.reload(&text);
    assert_eq!(changes, ["auth.users_file: 0 added, 0 removed, 1 with a new password"]);
    login(proxy.addr("sub"), "second", "235");
    login(proxy.addr("sub"), "first", "535");

    // A session logged in before a reload keeps its login while the users file still
    // has it, and loses it when the file no longer does: it may not relay any more.
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode("\0alice\0second");
    let mut c = Smtp::hello("127.0.0.78", proxy.addr("sub"));
    c.cmd(&format!("AUTH PLAIN {token}"), "235");
    c.cmd("MAIL FROM:<alice@example.org>", "250");
    c.cmd("RCPT TO:<someone@remote.test>", "250");
    c.cmd("RSET", "250");
    let hash = portcullis::auth::users::hash_password("x").unwrap();
    let alice = std::fs::read_to_string(&users).unwrap();
    std::fs::write(&users, format!("{alice}bob:{hash}\n")).unwrap();
    proxy.reload(&text);
    c.cmd("MAIL FROM:<alice@example.org>", "250");
    c.cmd("RCPT TO:<someone@remote.test>", "250");
    c.cmd("RSET", "250");
    std::fs::write(&users, format!("bob:{hash}\n")).unwrap();
    proxy.reload(&text);
    c.cmd("MAIL FROM:<alice@example.org>", "250");
    c.cmd("RCPT TO:<someone@remote.test>", "550 5.7.1");
    c.cmd("QUIT", "221");
}
