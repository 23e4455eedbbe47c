//! The admin endpoint against real peers: after a known sequence of sessions through
//! Portcullis to Postfix, `/metrics` parsed by Prometheus' own Python parser holds the
//! expected counts; `/readyz` and `portcullis health` follow the backend health checks.

use crate::support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;
use support::*;

fn config(backend: &str, extra_backend: &str) -> String {
    let rules = r#"rules = [{ name = "blocked", action = "reject", from = ["127.0.0.62/32"] }]"#;
    Conf::new()
        .listener("metered", "127.0.0.1:0", rules)
        .backend(backend, "xforward", extra_backend)
        .set("admin", "bind = \"127.0.0.1:0\"")
        .text()
}

/// `/metrics` as Prometheus reads it: (name, sorted labels) -> value.
fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let (code, page) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{page}");
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the page:\n{}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn value(metrics: &HashMap<String, f64>, key: &str) -> f64 {
    *metrics.get(key).unwrap_or_else(|| {
        let mut keys: Vec<_> = metrics.keys().filter(|k| k.starts_with(key.split('{').next().unwrap())).collect();
        keys.sort();
        panic!("no sample {key}; samples of that name: {keys:#?}")
    })
}

fn health(admin: std::net::SocketAddr) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["health", "--admin", &admin.to_string(), "--timeout", "5s"])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn metrics_count_a_known_sequence_of_sessions() {
    if !need(&["postfix"]) || !have_python_module("prometheus_client") {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    // A process of its own: metrics are the process's, and other tests run beside this.
    let proxy = Spawned::start_probing(&config(&pf.plain.to_string(), ""), 1);
    let (mx, admin) = (proxy.mx, proxy.addrs[1]);

    // Refused by a rule, from 127.0.0.62.
    let mut refused = Smtp::connect_from("127.0.0.62", mx);
    assert!(refused.reply().starts_with("554 5.7.1"));
    // One message delivered, one relay attempt refused.
    let mark = marker("metrics");
    let mut c = Smtp::hello("127.0.0.61", mx);
    let reply = c.message("s@example.org", &["user@example.com"], &format!("Subject: {mark}\r\n\r\nhello"));
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<x@elsewhere.test>", "550 5.7.1");
    c.cmd("QUIT", "221");
    pf.delivered(&mark);

    let mut m = HashMap::new();
    wait_until(
        Duration::from_secs(10),
        || {
            m = scrape(admin);
            m.get("portcullis_sessions_total{listener=metered,outcome=quit}") == Some(&1.0)
        },
        "the session to be counted",
    );
    assert_eq!(value(&m, "portcullis_connections_total{listener=metered,rule=blocked,verdict=rejected}"), 1.0);
    assert_eq!(value(&m, "portcullis_connections_total{listener=metered,rule=default,verdict=accepted}"), 1.0);
    assert_eq!(value(&m, "portcullis_relay_refusals_total{listener=metered,reason=no relay rule matched}"), 1.0);
    assert_eq!(value(&m, "portcullis_messages_total{outcome=delivered}"), 1.0);
    assert_eq!(value(&m, "portcullis_recipients_total{outcome=accepted}"), 1.0);
    assert_eq!(value(&m, "portcullis_sessions_open{}"), 0.0);
    assert!(value(&m, "portcullis_client_bytes_total{direction=in}") > 100.0);
    let backend = format!("backend={}", pf.plain);
    // The backend's verdict on each message: one message.
    assert_eq!(value(&m, &format!("portcullis_backend_reply_seconds_count{{{backend}}}")), 1.0);
    wait_until(
        Duration::from_secs(15),
        || {
            m = scrape(admin);
            m.get(&format!("portcullis_backend_up{{{backend}}}")) == Some(&1.0)
        },
        "a health check to find Postfix up",
    );
    assert_eq!(http_get(admin, "/healthz").0, 200);
    assert_eq!(http_get(admin, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(health(admin), (true, "ready".to_string()));
    assert_eq!(http_get(admin, "/nothing-here").0, 404);
}

#[test]
fn readiness_follows_the_backend_health_checks() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    // A backend that is down: nothing listens there.
    let dead = format!("127.0.0.1:{}", free_port());
    let checks = "check_interval = \"200ms\"\ncheck_timeout = \"1s\"\nrise = 2\nfall = 2\nconnect_timeout = \"1s\"";
    let proxy = Proxy::start(&config(&dead, checks));
    let admin = proxy.admin.unwrap();
    // (Before every listener is bound it says "not serving"; then, the backend down.)
    wait_until(
        Duration::from_secs(10),
        || http_get(admin, "/readyz") == (503, "not ready: no backend is up\n".to_string()),
        "/readyz to say 503: no backend is up",
    );
    let (ok, text) = health(admin);
    assert!(!ok && text.contains("503"), "{text}");
    assert_eq!(http_get(admin, "/healthz").0, 200, "alive, though not ready");

    // The backend comes back (a reload points at Postfix): ready again after `rise` checks.
    let pf = Postfix::shared();
    let changes = proxy.reload(&config(&pf.plain.to_string(), checks));
    assert!(changes.iter().any(|c| c.contains(&format!("backend {} added", pf.plain))), "{changes:?}");
    wait_until(Duration::from_secs(10), || http_get(admin, "/readyz").0 == 200, "/readyz to say 200");
    assert!(health(admin).0);

    // Nothing listens on the admin address after the proxy stops.
    drop(proxy);
    wait_until(Duration::from_secs(10), || !health(admin).0, "the admin endpoint to go away");
}

/// A flood of idle connections to the admin endpoint cannot take the descriptors that
/// SMTP needs: with a descriptor limit of 200, 400 idle admin connections leave the
/// SMTP listener serving.
#[test]
fn idle_admin_connections_cannot_starve_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp, admin) = (free_port(), free_port());
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"proxy.test\"\n[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:{smtp}\"\n\
             [[backend]]\naddress = \"127.0.0.1:9\"\n[admin]\nbind = \"127.0.0.1:{admin}\"\n"
        ),
    )
    .unwrap();
    let script =
        format!("ulimit -n 200 && exec {} run --config {}", env!("CARGO_BIN_EXE_portcullis"), config.display());
    let mut child = Command::new("sh").args(["-c", &script]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(admin_addr).is_ok(), "the admin endpoint");
    let idle: Vec<std::net::TcpStream> =
        (0..400).filter_map(|_| std::net::TcpStream::connect(admin_addr).ok()).collect();
    assert!(idle.len() >= 300, "the kernel queued the idle connections");
    std::thread::sleep(Duration::from_millis(500));
    let mx: std::net::SocketAddr = format!("127.0.0.1:{smtp}").parse().unwrap();
    // Promptly: the endpoint's own timeouts free descriptors after 10 s or so.
    let mut c = std::net::TcpStream::connect(mx).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 64];
    let n = std::io::Read::read(&mut c, &mut greeting).unwrap_or(0);
    let greeting = String::from_utf8_lossy(&greeting[..n]).into_owned();
    let _ = child.kill();
    let _ = child.wait();
    assert!(greeting.starts_with("220 proxy.test"), "SMTP starved of descriptors: {greeting:?}");
}
