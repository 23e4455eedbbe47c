//! Faults between Portcullis and a real Postfix, injected by a relay that cuts or
//! stalls the backend connection at each step: the client always gets a 4xx (and can
//! retry), and Postfix never delivers a message the client was told failed.

mod support;

use std::time::Duration;
use support::*;

fn proxy_via(link: &FaultyLink) -> Proxy {
    init_logs();
    Proxy::start(&format!(
        "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n[relay]\nlocal_domains = [\"example.com\"]\n\
         [[backend]]\naddress = \"{}\"\nidentity = \"xclient\"\nconnect_timeout = \"2s\"\n\
         reply_timeout = \"2s\"\ndata_timeout = \"3s\"\n",
        link.addr
    ))
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
    if !have("postfix") {
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
    if !have("postfix") {
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
