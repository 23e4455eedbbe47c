//! Every limit on every path: what an outside review found reachable by sending the
//! same thing another way (a line split across reads or behind a final dot, recipients
//! past the limit, a transaction whose backend went away).

use super::*;

/// `len` bytes of command line before its CRLF.
fn long_mail(len: usize) -> String {
    let path = format!("<{}@example.org>", "a".repeat(len - "MAIL FROM:<@example.org>".len()));
    let line = format!("MAIL FROM:{path}");
    assert_eq!(line.len(), len);
    line
}

#[tokio::test]
async fn a_long_line_is_refused_however_it_arrives() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = config(&[(backend.addr, "xforward")], "");

    // Whole, in one write.
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.send(&format!("{}\r\n", long_mail(3807))).await;
    assert_eq!(c.reply().await, "500 5.5.2 Error: line too long\r\n");
    assert_eq!(c.reply().await, "<closed>");

    // Half, a pause, then the rest with its CRLF.
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    let line = format!("{}\r\n", long_mail(3807));
    c.send(&line[..1900]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(&line[1900..]).await;
    assert_eq!(c.reply().await, "500 5.5.2 Error: line too long\r\n");
    assert_eq!(c.reply().await, "<closed>");

    // In the same write as a message's final dot.
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<u@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(&format!("Subject: x\r\n\r\nhi\r\n.\r\n{}\r\n", long_mail(7955))).await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued"));
    assert_eq!(c.reply().await, "500 5.5.2 Error: line too long\r\n");
    assert_eq!(c.reply().await, "<closed>");

    // The limit counts the CRLF: 2046 + 2 passes, 2047 + 2 does not.
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.cmd(&long_mail(2046), "250").await;
    c.cmd("RSET", "250").await;
    c.send(&format!("RCPT TO:<{}@example.com>\r\n", "b".repeat(2047 - "RCPT TO:<@example.com>".len()))).await;
    assert_eq!(c.reply().await, "500 5.5.2 Error: line too long\r\n");
    assert_eq!(c.reply().await, "<closed>");

    backend.wait_for("EOF").await;
    assert!(backend.lines().iter().all(|l| l.len() <= 2046), "a long line reached the backend");
}
