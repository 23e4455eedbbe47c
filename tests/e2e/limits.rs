//! Connection limits over real sockets: per client address and in total.

use crate::support;

use support::*;

#[test]
fn connections_per_address_and_in_total() {
    init_logs();
    let dead = format!("127.0.0.1:{}", free_port());
    let conf = Conf::new()
        .listener("mx", "127.0.0.1:0", "")
        .backend(dead, "none", "")
        .set("limits", "max_connections = 4\nmax_connections_per_ip = 2");
    let proxy = Proxy::start(&conf.text());
    let mx = proxy.addr("mx");
    let mut held = vec![Smtp::hello("127.0.0.50", mx), Smtp::hello("127.0.0.50", mx)];
    let mut third = Smtp::connect_from("127.0.0.50", mx);
    assert_eq!(third.reply(), "421 4.7.0 Too many connections, try again later\r\n");
    held.push(Smtp::hello("127.0.0.51", mx));
    held.push(Smtp::hello("127.0.0.52", mx));
    let mut fifth = Smtp::connect_from("127.0.0.53", mx);
    assert_eq!(fifth.reply(), "421 4.7.0 Too many connections, try again later\r\n");
    // A place is given back when a session ends.
    held[0].cmd("QUIT", "221");
    held.remove(0);
    wait_until(
        std::time::Duration::from_secs(5),
        || {
            let mut c = Smtp::connect_from("127.0.0.50", mx);
            c.reply().starts_with("220 ")
        },
        "a freed place",
    );
}

/// SIGTERM: new connections are refused at once, open sessions get 421 at the deadline.
#[test]
fn sigterm_drains_then_says_421() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"proxy.test\"\ndrain_timeout = \"1s\"\n[[listener]]\nname = \"mx\"\n\
             bind = \"127.0.0.1:{port}\"\n[[backend]]\naddress = \"127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(
        std::time::Duration::from_secs(10),
        || std::net::TcpStream::connect(addr).is_ok(),
        "portcullis listening",
    );
    let mut c = Smtp::hello("127.0.0.60", addr);
    let started = std::time::Instant::now();
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(c.reply(), "421 4.3.2 proxy.test Service shutting down, try again later\r\n");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "only at the deadline");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "no longer listening");
}
