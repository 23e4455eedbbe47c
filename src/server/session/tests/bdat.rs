//! BDAT from the client toward a backend without CHUNKING (the fake one): the body it
//! gets is dot-stuffed and complete, chunk bytes are never read as commands, and
//! smuggling material in a chunk refuses the message.

use super::*;

fn chunk(body: &str, last: bool) -> String {
    format!("BDAT {}{}\r\n{body}", body.len(), if last { " LAST" } else { "" })
}

async fn in_transaction(backend: &FakeBackend) -> Client {
    let mut c = Client::greeted(config(&[(backend.addr, "xforward")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
    c.cmd("RCPT TO:<u@example.com>", "250").await;
    c
}

#[tokio::test]
async fn chunks_become_one_dot_stuffed_data_body() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = in_transaction(&backend).await;
    let (first, second) = ("Subject: x\r\n\r\n.\r\nline\r", "\n.hidden\r\nno line end at the end");
    c.send(&chunk(first, false)).await;
    assert_eq!(c.reply().await, format!("250 2.0.0 {} octets received\r\n", first.len()));
    c.send(&chunk(second, true)).await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as FAKE1\r\n");
    c.cmd("QUIT", "221").await;
    backend.wait_for("EOF").await;
    let body = "Subject: x\r\n\r\n..\r\nline\r\n..hidden\r\nno line end at the end\r\n.\r\n";
    assert!(backend.lines().contains(&format!("BODY:{body}")), "{:?}", backend.lines());
}

#[tokio::test]
async fn pipelined_transaction_with_bdat_last() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xforward")], ""), OUTSIDER).await;
    let body = "Subject: pipelined\r\n\r\nhi\r\n";
    c.send(&format!("MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.com>\r\n{}", chunk(body, true))).await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as FAKE1\r\n");
    c.cmd("QUIT", "221").await;
    backend.wait_for("EOF").await;
    assert!(backend.lines().contains(&format!("BODY:{body}.\r\n")), "{:?}", backend.lines());
}

#[tokio::test]
async fn a_refused_chunk_is_read_whole_and_never_taken_for_commands() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xforward")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
    // No recipient yet: refused, and its bytes (commands in disguise) are dropped.
    c.send(&chunk("RSET\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@remote.test>\r\n", true)).await;
    assert!(c.reply().await.starts_with("503 5.5.1"));
    c.cmd("NOOP", "250").await;
    c.cmd("QUIT", "221").await;
    backend.wait_for("EOF").await;
    assert!(!backend.lines().iter().any(|l| l.contains("evil") || l.contains("victim")), "{:?}", backend.lines());
}

#[tokio::test]
async fn a_bare_lf_in_a_chunk_refuses_the_message_and_the_backend_keeps_nothing() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = in_transaction(&backend).await;
    c.send(&chunk("Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@example.org>\r\n", true)).await;
    assert!(c.reply().await.starts_with("554 5.6.0"));
    c.cmd("NOOP", "250").await;
    backend.wait_for("EOF").await;
    assert!(!backend.lines().iter().any(|l| l.starts_with("BODY:")), "{:?}", backend.lines());
}

#[tokio::test]
async fn limits_per_chunk_and_rules_of_order() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let config = config(&[(backend.addr, "xforward")], "[limits]\nmax_message_size = 100\n");
    let mut c = Client::greeted(config, OUTSIDER).await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
    c.cmd("RCPT TO:<u@example.com>", "250").await;
    c.send(&chunk(&"x".repeat(60), false)).await;
    assert!(c.reply().await.starts_with("250"));
    c.cmd("RCPT TO:<v@example.com>", "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    // Over the size limit with this chunk: refused before a byte of it is sent on.
    c.send(&chunk(&"y".repeat(60), true)).await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    // A size that cannot be read: nothing after it can be read as a command.
    c.send("BDAT lots\r\n").await;
    assert!(c.reply().await.starts_with("501 5.5.4"));
    assert_eq!(c.reply().await, "<closed>");
}

const CHUNKING_CAPS: &str = "250-PIPELINING\r\n250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n\
    250-CHUNKING\r\n250-BINARYMIME\r\n250 8BITMIME\r\n";

#[tokio::test]
async fn binarymime_goes_on_untouched_in_chunks_to_a_backend_that_takes_it() {
    let backend = FakeBackend::start(CHUNKING_CAPS).await;
    let config = config(&[(backend.addr, "xforward")], "");
    // The first backend connection teaches the proxy what the backend offers.
    let backends = Arc::new(Registry::default());
    let mut c = Client::start_sharing(config.clone(), OUTSIDER, backends.clone());
    c.reply().await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
    c.cmd("QUIT", "221").await;
    let mut c = Client::start_sharing(config, OUTSIDER, backends);
    c.reply().await;
    let ehlo = c.cmd("EHLO client.example", "250").await;
    assert!(ehlo.contains("BINARYMIME"), "{ehlo}");
    c.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME", "250").await;
    c.cmd("RCPT TO:<u@example.com>", "250").await;
    c.cmd("DATA", "503 5.5.1").await;
    let binary = "bare\nlines\r.and\0NUL";
    c.send(&chunk(binary, true)).await;
    assert_eq!(c.reply().await, "250 2.0.0 chunk ok\r\n");
    c.cmd("QUIT", "221").await;
    backend.wait_for("EOF").await;
    let lines = backend.lines();
    assert!(lines.contains(&format!("BDAT {} LAST", binary.len())), "{lines:?}");
    assert!(lines.contains(&format!("CHUNK:{binary}")), "{lines:?}");
}

#[tokio::test]
async fn a_cr_left_bare_at_the_very_end_refuses_the_message() {
    for caps in [POSTFIX_CAPS, CHUNKING_CAPS] {
        let backend = FakeBackend::start(caps).await;
        let mut c = in_transaction(&backend).await;
        c.send(&chunk("Subject: x\r\n\r\nab\r", true)).await;
        assert!(c.reply().await.starts_with("554 5.6.0"), "{caps}");
        c.cmd("QUIT", "221").await;
        backend.wait_for("EOF").await;
        let lines = backend.lines();
        assert!(!lines.iter().any(|l| l.starts_with("BODY:") || l.starts_with("CHUNK:")), "{lines:?}");
    }
}

#[tokio::test]
async fn a_bdat_line_with_control_bytes_closes_the_session() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = in_transaction(&backend).await;
    c.send("BDAT 20\x0b\r\nRCPT TO:<x@remote.test>\r\n").await;
    assert!(c.reply().await.starts_with("501 5.5.4"));
    assert_eq!(c.reply().await, "<closed>");
}

#[tokio::test]
async fn empty_chunks_count_as_junk() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let config = config(&[(backend.addr, "xforward")], "[limits]\nmax_junk_commands = 2\nmax_errors = 1\n");
    let mut c = Client::greeted(config, OUTSIDER).await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
    c.cmd("RCPT TO:<u@example.com>", "250").await;
    c.cmd("BDAT 0", "250").await;
    c.cmd("BDAT 0", "250").await;
    c.cmd("BDAT 0", "421 4.7.0").await;
}
