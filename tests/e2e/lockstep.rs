//! Backends that do not speak the identity Portcullis was told to use: the backend
//! connection is given up at once (a warning names it), the client gets a 4xx or the
//! next backend, and nothing the client sent reaches the backend out of place.

use crate::support;

use support::*;

fn proxy_to(backends: &[(std::net::SocketAddr, &str)]) -> Proxy {
    init_logs();
    let mut conf = Conf::new().listener("mx", "127.0.0.1:0", "");
    for (addr, identity) in backends {
        conf = conf.backend(addr, identity, "reply_timeout = \"5s\"");
    }
    Proxy::start(&conf.text())
}

/// The session of the issue: MAIL, RCPT, DATA, a body holding command lines.
fn smuggle_attempt(proxy: &Proxy, mark: &str) -> Vec<String> {
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("mx"));
    c.try_message(&format!("Subject: {mark}\r\n\r\nRCPT TO:<{mark}@remote.test>"))
}

#[test]
fn proxy_headers_to_a_postfix_that_does_not_expect_them() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    for identity in ["proxy-v1", "proxy-v2"] {
        let proxy = proxy_to(&[(pf.plain, identity)]);
        let mark = marker(&format!("lockstep-{identity}"));
        let replies = smuggle_attempt(&proxy, &mark);
        assert_eq!(replies.len(), 1, "{identity}: {replies:?}");
        assert!(replies[0].starts_with("451 4."), "{identity}: {replies:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(pf.count(&mark), 0);
        assert!(!pf.log().contains(&format!("{mark}@remote.test")), "the body reached Postfix as a command");
    }
}

#[test]
fn a_backend_out_of_step_at_connect_fails_over_to_the_next() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    // First the service without PROXY support, then the one that expects the header.
    let proxy = proxy_to(&[(pf.plain, "proxy-v1"), (pf.proxied, "proxy-v1")]);
    let mark = marker("lockstep-failover");
    let replies = smuggle_attempt(&proxy, &mark);
    assert!(replies.last().unwrap().starts_with("250 2.0.0"), "{replies:?}");
    let delivered = pf.delivered(&mark);
    assert_eq!(pf.logged_client(&delivered.queue_id), "unknown[127.0.0.77]");
}

#[test]
fn proxy_header_to_smtp_sink() {
    if !need(&["smtp-sink"]) {
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = std::process::Command::new("smtp-sink")
        .args(["-u", "nobody", "-d", &format!("{}/%M.", dir.path().display()), &format!("127.0.0.1:{port}"), "10"])
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(std::time::Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok(), "smtp-sink");
    for identity in ["proxy-v1", "proxy-v2"] {
        let proxy = proxy_to(&[(addr, identity)]);
        let mark = marker(&format!("sink-{identity}"));
        let replies = smuggle_attempt(&proxy, &mark);
        // smtp-sink answers every line, the PROXY line too: out of step from the start.
        assert!(replies.iter().all(|r| !r.starts_with("250 2.0.0") && !r.starts_with("354")), "{replies:?}");
        assert!(replies.last().unwrap().starts_with("451 4."), "{identity}: {replies:?}");
    }
    let _ = sink.kill();
    let _ = sink.wait();
    let dumped = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(dumped, 0, "smtp-sink received a message");
}
