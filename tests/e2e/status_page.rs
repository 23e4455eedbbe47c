//! The status page in a real browser (Debian's chromium, headless): what it shows while
//! mail goes through, with and without scripts, against a real backend (Postfix's
//! smtp-sink) that is then stopped; and the Grafana dashboard's queries against the
//! metrics the same process serves.

use crate::support;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// A real SMTP sink (Postfix's smtp-sink) on a free port; killed on drop.
struct Sink {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Sink {
    fn start() -> Sink {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("smtp-sink")
            .args(["-u", "root", &addr.to_string(), "50"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink");
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok(), "smtp-sink listening");
        Sink { child, addr }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page as chromium renders it: its DOM after scripts (if any) ran. (Chromium's
/// `--dump-dom` prints nothing with scripts disabled; the page without scripts is seen
/// by its screenshot, and the page carries none.)
fn dom(url: &str) -> String {
    let mut cmd = Command::new("chromium");
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--dump-dom"]);
    let out = cmd.arg(url).stderr(Stdio::null()).output().expect("chromium");
    assert!(out.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id`.
fn by_id(dom: &str, id: &str) -> String {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let open = start + dom[start..].find('>').unwrap() + 1;
    let close = open + dom[open..].find('<').unwrap();
    dom[open..close].to_string()
}

/// The row of the backend at `addr`.
fn backend_row(dom: &str, addr: SocketAddr) -> String {
    let start = dom.find(&format!("data-backend=\"{addr}\"")).expect("the backend's row");
    let end = start + dom[start..].find("</tr>").unwrap();
    dom[start..end].to_string()
}

#[test]
fn the_status_page_shows_what_went_through_in_a_real_browser() {
    if !need(&["chromium", "smtp-sink"]) {
        return;
    }
    let sink = Sink::start();
    let rules = r#"rules = [{ name = "blocked", action = "reject", from = ["127.0.0.62/32"] }]"#;
    let conf = Conf::new()
        .listener("mx", "127.0.0.1:0", rules)
        .backend(sink.addr, "none", "check_interval = \"200ms\"\ncheck_timeout = \"1s\"\nfall = 1\nrise = 1")
        .set("limits", "max_message_size = 20000")
        .set("admin", "bind = \"127.0.0.1:0\"");
    let proxy = Spawned::start_probing(&conf.text(), 1);
    let (mx, admin) = (proxy.mx, proxy.addrs[1]);
    let url = format!("http://{admin}/");

    // One delivered, one refused (too big), one relay attempt, one client refused by rule.
    let mut c = Smtp::hello("127.0.0.61", mx);
    let reply = c.message("s@example.org", &["user@example.com"], "Subject: fine\r\n\r\nhello");
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<user@example.com>", "250");
    c.cmd("DATA", "354");
    c.send(&format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(30000)));
    assert!(c.reply().starts_with("552"), "too big");
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd("RCPT TO:<victim@elsewhere.test>", "550 5.7.1");
    c.cmd("QUIT", "221");
    let mut refused = Smtp::connect_from("127.0.0.62", mx);
    assert!(refused.reply().starts_with("554 5.7.1"));
    drop(refused);
    // A reload, shown with what it changed.
    let file = proxy.dir.path().join("p.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace("max_message_size = 20000", "max_message_size = 30000");
    std::fs::write(&file, text).unwrap();
    assert!(Command::new("kill").args(["-HUP", &proxy.child.id().to_string()]).status().unwrap().success());

    let mut page = String::new();
    wait_until(
        Duration::from_secs(15),
        || {
            page = dom(&url);
            page.contains("max_message_size") && backend_row(&page, sink.addr).contains("ok, ")
        },
        "the page to show the reload and a passed health check",
    );
    assert_eq!(by_id(&page, "messages-delivered"), "1", "one delivered");
    assert_eq!(by_id(&page, "messages-refused"), "1", "one refused");
    let row = backend_row(&page, sink.addr);
    assert!(row.contains("class=\"state up\">up"), "{row}");
    assert!(page.contains("rejected: blocked 1"), "the rule that refused 127.0.0.62");
    assert!(page.contains("127.0.0.62") && page.contains("relay (no relay rule matched)"), "refusals listed");
    assert!(page.contains("<svg id=\"history\""), "the chart");
    // Without scripts: the same page, for it has none, and its policy allows none.
    let served = http_get(admin, "/").1;
    assert!(!served.contains("<script"), "no script on the page");
    assert!(served.contains("http-equiv=\"refresh\""), "it refreshes itself");
    // Filtered by client address (a plain GET parameter).
    let only_62 = dom(&format!("{url}?client=127.0.0.62"));
    assert_eq!(only_62.matches("class=\"refusal\"").count(), 1, "one refusal of 127.0.0.62");
    assert!(!only_62.contains("127.0.0.61"));

    let shots = tempfile::tempdir().unwrap();
    let shot = shots.path().join("status-page.png");
    let status = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1400"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success() && std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot");
    if let Some(keep) = std::env::var_os("STATUS_PAGE_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    // Every metric the Grafana dashboard asks for exists in /metrics (the backend's
    // errors appear once a session meets it down, below).
    let sink_addr = sink.addr;
    drop(sink);
    let mut down = String::new();
    wait_until(
        Duration::from_secs(15),
        || {
            down = dom(&url);
            backend_row(&down, sink_addr).contains("class=\"state down\">down")
        },
        "the page to show the backend down",
    );
    assert!(down.contains("failed "), "the failed check and its error");
    let mut c = Smtp::hello("127.0.0.61", mx);
    c.send("MAIL FROM:<s@example.org>\r\n");
    assert!(c.reply().starts_with('4'), "no backend: a temporary refusal");
    let dashboard = include_str!("../../deploy/grafana/portcullis-dashboard.json");
    let mut asked: Vec<&str> = dashboard
        .match_indices("portcullis_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
        })
        .collect();
    asked.sort();
    asked.dedup();
    assert!(asked.len() >= 10, "{asked:?}");
    let missing = |metrics: &str| -> Vec<String> {
        let present = |name: &str| {
            metrics.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        };
        asked.iter().filter(|name| !present(name)).map(|n| n.to_string()).collect()
    };
    let mut absent = Vec::new();
    for _ in 0..50 {
        absent = missing(&http_get(admin, "/metrics").1);
        if absent.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(absent.is_empty(), "the dashboard queries metrics /metrics does not have: {absent:?}");
}
