//! Faults between Portcullis and a real Postfix, injected by a relay that cuts or
//! stalls the backend connection at each step: the client always gets a 4xx (and can
//! retry), and Postfix never delivers a message the client was told failed. A backend
//! that hangs is found by the health checks and passed over.

use crate::support;

use std::time::Duration;
use support::*;

fn proxy_via(link: &FaultyLink) -> Proxy {
    init_logs();
    let timeouts = "connect_timeout = \"2s\"\nreply_timeout = \"2s\"\ndata_timeout = \"3s\"";
    Proxy::start(&Conf::new().listener("mx", "127.0.0.1:0", "").backend(link.addr, "xclient", timeouts).text())
}

/// Runs one message through a link with `fault`; returns the replies to MAIL, RCPT,
/// DATA and end of data (empty once a step failed).
fn attempt(fault: Fault, mark: &str) -> Vec<String> {
    let pf = Postfix::shared();
    let link = FaultyLink::start(pf.plain, fault);
    let proxy = proxy_via(&link);
    let mut c = Smtp::hello("127.0.0.77", proxy.addr("mx"));
    c.try_message(&format!("Subject: {mark}\r\n\r\nhalf-way\r\n{}", "x".repeat(5000)))
}

fn assert_retry_later(replies: &[String]) {
    let last = replies.last().unwrap();
    assert!(last.starts_with("451 4.4."), "the failed step must get a 4xx: {replies:?}");
}

#[test]
fn backend_gone_at_each_step_gives_4xx_and_no_message() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    for (i, fault) in [
        Fault::AtConnect,
        Fault::CutAfter("MAIL FROM"),
        Fault::CutAfter("RCPT TO"),
        Fault::CutAfter("DATA\r\n"),
        Fault::CutAfter("half-way"),
    ]
    .into_iter()
    .enumerate()
    {
        let mark = marker(&format!("cut-{i}"));
        let replies = attempt(fault, &mark);
        assert_retry_later(&replies);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pf.count(&mark), 0, "step {i}: {replies:?}");
    }
}

#[test]
fn hanging_backend_times_out_with_4xx() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let mark = marker("stall-mail");
    let replies = attempt(Fault::StallAfter("MAIL FROM"), &mark);
    assert_eq!(replies.len(), 1);
    assert_retry_later(&replies);
    // Hanging after the final dot: Postfix has the whole message and delivers it, but
    // its reply never comes, so the client is told to retry. This is the one case
    // where a message can arrive twice (RFC 1047); it is never lost.
    let mark = marker("stall-dot");
    let replies = attempt(Fault::StallAfter("\r\n.\r\n"), &mark);
    assert_retry_later(&replies);
    std::thread::sleep(Duration::from_millis(500));
    assert!(pf.count(&mark) <= 1);
}

/// A backend whose connect never completes: its accept queue is full and nobody
/// accepts, so the kernel drops further SYNs. The queue's connections are held by the
/// returned values.
fn unconnectable_backend() -> (std::net::SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![listener];
    for _ in 0..3 {
        let filler = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        filler.set_nonblocking(true).unwrap();
        let _ = filler.connect(&addr.into());
        held.push(filler);
    }
    (addr, held)
}

#[test]
fn a_backend_that_never_completes_the_connect_times_out_with_4xx() {
    init_logs();
    let (addr, _held) = unconnectable_backend();
    let proxy = Proxy::start(
        &Conf::new().listener("mx", "127.0.0.1:0", "").backend(addr, "xclient", "connect_timeout = \"1s\"").text(),
    );
    let mut c = Smtp::hello("127.0.0.78", proxy.addr("mx"));
    let started = std::time::Instant::now();
    c.cmd("MAIL FROM:<s@example.org>", "451 4.4.1");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "connect_timeout is 1s: {took:?}");
    c.cmd("QUIT", "221");
}

/// A backend that accepts connections and never says a word; holds them open.
fn silent_backend() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

#[test]
fn a_backend_down_by_its_health_checks_is_passed_over() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    // First a backend that hangs: without health checks every session would wait its
    // whole reply timeout (longer than the test client's 30 s read timeout) before
    // failing over.
    let hanging = silent_backend();
    let text = format!(
        r#"
[[listener]]
name = "passover"
bind = "127.0.0.1:0"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "{hanging}"
identity = "xforward"
reply_timeout = "120s"
check_interval = "100ms"
check_timeout = "300ms"
fall = 1
[[backend]]
address = "{}"
identity = "xforward"
[admin]
bind = "127.0.0.1:0"
"#,
        pf.plain
    );
    let proxy = Proxy::start(&text);
    let admin = proxy.admin.unwrap();
    wait_until(
        Duration::from_secs(10),
        || http_get(admin, "/metrics").1.contains(&format!("portcullis_backend_up{{backend=\"{hanging}\"}} 0")),
        "the hanging backend to be marked down",
    );
    assert_eq!(http_get(admin, "/readyz").0, 200, "one backend is still up");
    let mark = marker("passover");
    let mut c = Smtp::hello("127.0.0.63", proxy.addr("passover"));
    let reply = c.message("s@example.org", &["user@example.com"], &format!("Subject: {mark}\r\n\r\nhi"));
    assert!(reply.starts_with("250"), "{reply}");
    pf.delivered(&mark);
}
