//! A fleet: three Portcullis processes behind a real HAProxy (`send-proxy-v2`, round
//! robin, health checks on `/readyz`) sharing a real Redis, in front of Postfix. A
//! per-address connection rate and a ban hold across the fleet; bans are listed and
//! lifted through any instance; with Redis gone the fleet goes on with local limits
//! (fail open) and takes the store back when it returns; an instance killed in the
//! middle of a message costs the client a retry, and Postfix gets the message once.

use crate::support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Instance {
    name: String,
    smtp: SocketAddr,
    admin: SocketAddr,
    child: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Fleet {
    instances: Vec<Instance>,
    lb: SocketAddr,
    haproxy: Child,
    token_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
    }
}

impl Fleet {
    fn start(pf: &Postfix, redis: &Redis, limits: &str) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "fleet-token-0123456789\n").unwrap();
        let mut instances = Vec::new();
        for i in 1..=3 {
            let (smtp, admin) = (free_port(), free_port());
            let config = format!(
                r#"
[server]
hostname = "mx{i}.fleet.test"
drain_timeout = "2s"
[[listener]]
name = "mx"
bind = "127.0.0.1:{smtp}"
proxy_protocol = true
[trust]
proxies = ["127.0.0.1/32"]
[relay]
local_domains = ["example.com"]
[[backend]]
address = "{backend}"
identity = "xclient"
[limits]
max_errors = 100
{limits}
[screen]
ban_after = 3
ban_window = "10m"
ban_time = "1h"
[store]
redis = "{url}"
timeout = "300ms"
prefix = "fleet-{port}:"
[admin]
bind = "127.0.0.1:{admin}"
token_file = "{token}"
"#,
                backend = pf.plain,
                url = redis.url(),
                port = redis.port,
                token = token_file.display()
            );
            let file = dir.path().join(format!("mx{i}.toml"));
            std::fs::write(&file, config).unwrap();
            let log_path = dir.path().join(format!("mx{i}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(["run", "--config"])
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut instance = Instance {
                name: format!("mx{i}.fleet.test"),
                smtp: format!("127.0.0.1:{smtp}").parse().unwrap(),
                admin: format!("127.0.0.1:{admin}").parse().unwrap(),
                child,
            };
            wait_ready(&mut instance, &log_path);
            instances.push(instance);
        }
        let lb_port = free_port();
        let servers: String = instances
            .iter()
            .enumerate()
            .map(|(i, x)| {
                format!(
                    "  server mx{} {} send-proxy-v2 check port {} inter 300ms fall 1 rise 1\n",
                    i + 1,
                    x.smtp,
                    x.admin.port()
                )
            })
            .collect();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  \
                 timeout server 30s\n  retries 3\n  option redispatch\nfrontend lb\n  bind 127.0.0.1:{lb_port}\n  \
                 default_backend fleet\nbackend fleet\n  balance roundrobin\n  option httpchk GET /readyz\n{servers}"
            ),
        )
        .unwrap();
        let haproxy = Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lb: SocketAddr = format!("127.0.0.1:{lb_port}").parse().unwrap();
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(lb).is_ok(), "haproxy listening");
        // Every server up in HAProxy's eyes (one check interval after start).
        std::thread::sleep(Duration::from_millis(800));
        Fleet { instances, lb, haproxy, token_file, _dir: dir }
    }

    /// The instance that greeted with `greeting`.
    fn greeted_by(&self, greeting: &str) -> usize {
        self.instances
            .iter()
            .position(|x| greeting.contains(&x.name))
            .unwrap_or_else(|| panic!("no instance named in {greeting:?}"))
    }
}

/// Waits until the instance is ready; an exit, or no readiness in 10 s, fails the test
/// with its log.
fn wait_ready(instance: &mut Instance, log: &std::path::Path) {
    let start = Instant::now();
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    while !http_get_ok(instance.admin, "/readyz") {
        if let Ok(Some(status)) = instance.child.try_wait() {
            panic!("instance exited ({status}): {}", text());
        }
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for instance ready: {}", text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get_ok(addr: SocketAddr, path: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok() && http_get(addr, path).0 == 200
}

fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, page) = http_get(admin, "/metrics");
    page.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A connection through the balancer from `from`: the greeting (or refusal) line.
fn greeting(fleet: &Fleet, from: &str) -> (Smtp, String) {
    let mut c = Smtp::connect_from(from, fleet.lb);
    let g = c.reply();
    (c, g)
}

#[test]
fn a_connection_rate_and_a_ban_hold_across_the_fleet() {
    if !need(&["postfix", "haproxy", "redis-server", "redis-cli"]) {
        return;
    }
    let pf = Postfix::shared();
    let redis = Redis::start();
    let fleet = Fleet::start(pf, &redis, "max_connection_rate = \"4/min\"");

    // Four connections from one address, spread over the three instances: all served;
    // the fifth is refused by whichever instance gets it. Alone, each would allow four.
    let mut seen = std::collections::BTreeSet::new();
    let mut held = Vec::new();
    for _ in 0..4 {
        let (c, g) = greeting(&fleet, "127.0.0.111");
        assert!(g.starts_with("220 "), "{g}");
        seen.insert(fleet.greeted_by(&g));
        held.push(c);
    }
    assert!(seen.len() >= 2, "round robin reached {seen:?}");
    for _ in 0..3 {
        let (_, g) = greeting(&fleet, "127.0.0.111");
        assert!(g.starts_with("421 4.7.0"), "over the fleet-wide rate: {g}");
    }
    let (_, g) = greeting(&fleet, "127.0.0.112");
    assert!(g.starts_with("220 "), "another address is not held back: {g}");
    drop(held);

    // Three relay attempts, one per instance: a ban for the fleet.
    for _ in 0..3 {
        let (mut c, g) = greeting(&fleet, "127.0.0.113");
        assert!(g.starts_with("220 "), "{g}");
        c.cmd("EHLO client.test", "250");
        c.cmd("MAIL FROM:<s@example.org>", "250");
        c.cmd("RCPT TO:<victim@elsewhere.test>", "550 5.7.1");
        c.cmd("QUIT", "221");
    }
    wait_until(
        Duration::from_secs(5),
        || redis.cli(&["EXISTS", &format!("fleet-{}:ban:127.0.0.113/32", redis.port)]).trim() == "1",
        "the ban in Redis",
    );
    for _ in 0..3 {
        let (_, g) = greeting(&fleet, "127.0.0.113");
        assert!(g.starts_with("421 4.7.0 Too many errors"), "banned on every instance: {g}");
    }
    // Listed by any instance, lifted through another.
    let listed = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["bans", "--admin", &fleet.instances[1].admin.to_string(), "--token-file"])
        .arg(&fleet.token_file)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("127.0.0.113/32") && listed.contains("relay_attempt"), "{listed}");
    let lifted = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["bans", "--admin", &fleet.instances[2].admin.to_string(), "--lift", "127.0.0.113", "--token-file"])
        .arg(&fleet.token_file)
        .output()
        .unwrap();
    assert!(lifted.status.success(), "{}", String::from_utf8_lossy(&lifted.stderr));
    assert_eq!(redis.cli(&["EXISTS", &format!("fleet-{}:ban:127.0.0.113/32", redis.port)]).trim(), "0");
    // (One connection: the three relay sessions used 3 of the 4 a minute.)
    let (_, g) = greeting(&fleet, "127.0.0.113");
    assert!(g.starts_with("220 "), "lifted: {g}");
}

#[test]
fn with_the_store_down_the_fleet_fails_open_on_local_limits_and_recovers() {
    if !need(&["postfix", "haproxy", "redis-server", "redis-cli"]) {
        return;
    }
    let pf = Postfix::shared();
    let mut redis = Redis::start();
    let fleet = Fleet::start(pf, &redis, "max_connection_rate = \"2/min\"");
    redis.stop();

    // Each instance now counts alone: 2 a minute each, 6 for the fleet; and a dead
    // store costs no wait (after the first failure it is not asked for a while).
    let started = Instant::now();
    let mut served = 0;
    for _ in 0..9 {
        let (_, g) = greeting(&fleet, "127.0.0.114");
        if g.starts_with("220 ") {
            served += 1;
        } else {
            assert!(g.starts_with("421 4.7.0"), "{g}");
        }
    }
    let took = started.elapsed();
    assert_eq!(served, 6, "local limits, one per instance");
    assert!(took < Duration::from_secs(3), "9 connections took {took:?} with the store down");
    let mark = marker("fleet-store-down");
    let mut c = Smtp::connect_from("127.0.0.115", fleet.lb);
    assert!(c.reply().starts_with("220 "));
    c.cmd("EHLO client.test", "250");
    let reply = c.message("s@example.org", &["u@example.com"], &format!("Subject: {mark}\r\n\r\nhi\r\n"));
    assert!(reply.starts_with("250"), "mail flows with the store down: {reply}");
    pf.delivered(&mark);
    assert!(fleet.instances.iter().any(|x| metric(x.admin, "portcullis_store_errors_total") >= 1.0));
    assert!(fleet.instances.iter().any(|x| metric(x.admin, "portcullis_store_up") == 0.0));

    // Back: after the retry pause the store is used again.
    redis.restart();
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..6 {
        greeting(&fleet, "127.0.0.116");
    }
    let key = format!("fleet-{}:rate:conn:127.0.0.116/32", redis.port);
    wait_until(Duration::from_secs(5), || redis.cli(&["EXISTS", &key]).trim() == "1", "rates in Redis again");
}

#[test]
fn an_instance_killed_mid_message_costs_a_retry_and_delivers_once() {
    if !need(&["postfix", "haproxy", "redis-server", "redis-cli"]) {
        return;
    }
    let pf = Postfix::shared();
    let redis = Redis::start();
    let mut fleet = Fleet::start(pf, &redis, "");
    let mark = marker("fleet-killed");
    let body = format!("Subject: {mark}\r\n\r\n{}\r\n", "a line of the message body\r\n".repeat(200));

    let (mut c, g) = greeting(&fleet, "127.0.0.117");
    let victim = fleet.greeted_by(&g);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<u@example.com>", "250");
    c.cmd("DATA", "354");
    c.send(&body[..body.len() / 2]);
    std::thread::sleep(Duration::from_millis(200));
    let _ = fleet.instances[victim].child.kill();
    let _ = fleet.instances[victim].child.wait();
    // The client sees its connection end (or a 4xx), never a 250.
    let end = c.reply();
    assert!(end.is_empty() || end.starts_with('4'), "{end:?}");

    // The retry, as an MTA would: through the balancer, to a live instance.
    std::thread::sleep(Duration::from_millis(700));
    let (mut c, g) = greeting(&fleet, "127.0.0.117");
    assert!(g.starts_with("220 "), "{g}");
    assert_ne!(fleet.greeted_by(&g), victim, "the dead instance is out of rotation");
    c.cmd("EHLO client.test", "250");
    let reply = c.message("s@example.org", &["u@example.com"], &body);
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = pf.delivered(&mark);
    assert_eq!(pf.logged_client(&delivered.queue_id), "unknown[127.0.0.117]", "the real client, through HAProxy");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pf.count(&mark), 1, "exactly once: the half message never reached Postfix");
}
