//! Commands pipelined to the backend: a client's group goes out without waiting, the
//! client's replies keep its order with ours in between, and what a pipelined command
//! is checked against is what the replies before it made of the session.

use super::*;

/// A backend that answers as Postfix does: the replies to MAIL and RCPT commands when
/// no more input is waiting, so commands that arrived together are answered together;
/// it logs "--" where it answered such a group. It keeps state as Postfix does (a
/// refused MAIL leaves RCPT and DATA without a transaction) and refuses recipients
/// named `unknown@`.
struct GroupBackend {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl GroupBackend {
    async fn start() -> Self {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = socket.accept().await {
                tokio::spawn(serve_group(stream, shared.clone()));
            }
        });
        Self { addr, log }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

async fn serve_group(stream: tokio::net::TcpStream, log: Arc<Mutex<Vec<String>>>) {
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(b"220 group ESMTP\r\n").await.unwrap();
    let mut group: Vec<String> = Vec::new();
    let (mut mail, mut recipients) = (false, 0);
    let mut line = Vec::new();
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        log.lock().unwrap().push(text.clone());
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        if matches!(verb.as_str(), "XFORWARD" | "MAIL" | "RCPT") {
            group.push(text);
            if !stream.buffer().is_empty() {
                continue;
            }
        }
        // The replies so far, in order, once no more input is waiting.
        log.lock().unwrap().push("--".into());
        let mut out = String::new();
        for l in group.drain(..) {
            let upper = l.to_ascii_uppercase();
            out.push_str(if upper.starts_with("XFORWARD") {
                "250 2.0.0 Ok\r\n"
            } else if upper.starts_with("MAIL") && l.contains("<refused@") {
                "550 5.1.8 Sender refused\r\n"
            } else if upper.starts_with("MAIL") {
                mail = true;
                "250 2.1.0 Ok\r\n"
            } else if !mail {
                "503 5.5.1 Error: need MAIL command\r\n"
            } else if l.contains("<unknown@") {
                "550 5.1.1 User unknown\r\n"
            } else {
                recipients += 1;
                "250 2.1.5 Ok\r\n"
            });
        }
        let in_data = verb == "DATA" && recipients > 0;
        out.push_str(match verb.as_str() {
            "XFORWARD" | "MAIL" | "RCPT" => "",
            "EHLO" => "250-group\r\n250-PIPELINING\r\n250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n",
            "DATA" if !mail => "503 5.5.1 Error: need MAIL command\r\n",
            "DATA" if recipients == 0 => "554 5.5.1 Error: no valid recipients\r\n",
            "DATA" => "354 End data with <CR><LF>.<CR><LF>\r\n",
            "QUIT" => "221 2.0.0 Bye\r\n",
            _ => {
                (mail, recipients) = (false, 0);
                "250 2.0.0 Ok\r\n"
            }
        });
        if stream.get_mut().write_all(out.as_bytes()).await.is_err() || verb == "QUIT" {
            return;
        }
        if in_data {
            let mut body = String::new();
            loop {
                line.clear();
                if stream.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == b".\r\n" {
                    break;
                }
                body.push_str(&String::from_utf8_lossy(&line));
            }
            log.lock().unwrap().push(format!("BODY:{body}"));
            (mail, recipients) = (false, 0);
            if stream.get_mut().write_all(b"250 2.0.0 Ok: queued\r\n").await.is_err() {
                return;
            }
        }
    }
}

impl Client {
    /// The next `n` replies, first lines only.
    async fn replies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.reply().await.lines().last().unwrap_or("").to_string());
        }
        out
    }
}

fn codes(replies: &[String]) -> Vec<&str> {
    replies.iter().map(|r| &r[..r.len().min(9)]).collect()
}

#[tokio::test]
async fn a_pipelined_group_goes_out_without_waiting_and_replies_keep_their_order() {
    let backend = GroupBackend::start().await;
    let cfg = config(&[(backend.addr, "xforward+reuse")], "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.send(
        "MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<x@elsewhere.test>\r\n\
         RCPT TO:<unknown@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    .await;
    let replies = c.replies(6).await;
    assert_eq!(codes(&replies), ["250 2.1.0", "250 2.1.5", "550 5.7.1", "550 5.1.1", "250 2.1.5", "354 End d"]);
    assert!(replies[2].contains("Relay access denied"), "{replies:?}");
    c.send("Subject: pipelined\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued\r\n");
    c.cmd("QUIT", "221").await;
    let lines = backend.lines();
    let data = lines.iter().position(|l| l == "DATA").unwrap();
    let mail = lines.iter().position(|l| l.starts_with("XFORWARD")).unwrap();
    assert!(!lines[mail..data].contains(&"--".to_string()), "one group, answered once: {lines:?}");
    assert!(!lines.iter().any(|l| l.contains("elsewhere")), "a refused recipient reached the backend: {lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("RCPT")).count(), 3, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("BODY:")).count(), 1, "{lines:?}");
}

#[tokio::test]
async fn a_refused_mail_ends_the_pipelined_group() {
    let backend = GroupBackend::start().await;
    let cfg = config(&[(backend.addr, "xforward")], "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.send("MAIL FROM:<refused@example.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n").await;
    let replies = c.replies(3).await;
    assert_eq!(codes(&replies), ["550 5.1.8", "503 5.5.1", "503 5.5.1"], "{replies:?}");
    // The session goes on: a new transaction, not pipelined.
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send("Subject: after\r\n\r\nbody\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    c.cmd("QUIT", "221").await;
    assert_eq!(backend.lines().iter().filter(|l| l.starts_with("BODY:")).count(), 1);
}

/// A backend that accepts a recipient with no transaction (it answers 250 to
/// everything) is out of step: the recipient is not taken, and no body follows.
#[tokio::test]
async fn a_recipient_accepted_after_a_refused_mail_drops_the_backend() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = config(&[(backend.addr, "xforward")], "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.send("MAIL FROM:<refused@example.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n").await;
    let replies = c.replies(3).await;
    assert_eq!(codes(&replies), ["550 5.1.8", "451 4.4.2", "503 5.5.1"], "{replies:?}");
    c.cmd("QUIT", "221").await;
    assert!(!backend.lines().iter().any(|l| l.starts_with("BODY:")), "{:?}", backend.lines());
}

#[tokio::test]
async fn pipelined_recipients_count_toward_the_limit_once_answered() {
    let backend = GroupBackend::start().await;
    let cfg = config(&[(backend.addr, "xforward")], "[limits]\nmax_recipients = 2\n");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.send(
        "MAIL FROM:<s@example.org>\r\nRCPT TO:<unknown@example.com>\r\nRCPT TO:<a@example.com>\r\n\
         RCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n",
    )
    .await;
    let replies = c.replies(5).await;
    // The refused one does not count: b is the second recipient, c one too many.
    assert_eq!(codes(&replies), ["250 2.1.0", "550 5.1.1", "250 2.1.5", "250 2.1.5", "452 4.5.3"], "{replies:?}");
    c.cmd("QUIT", "221").await;
    assert!(!backend.lines().iter().any(|l| l.contains("<c@")), "{:?}", backend.lines());
}

/// DATA after recipients that were all refused, ours and the backend's: the client
/// gets the backend's refusal of DATA, and nothing of a body is sent.
#[tokio::test]
async fn a_pipelined_data_without_a_recipient_gets_no_354() {
    let backend = GroupBackend::start().await;
    let cfg = config(&[(backend.addr, "xforward")], "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<unknown@example.com>\r\nDATA\r\n")
        .await;
    let replies = c.replies(4).await;
    assert_eq!(codes(&replies), ["250 2.1.0", "550 5.7.1", "550 5.1.1", "554 5.5.1"], "{replies:?}");
    // Only our refusal: DATA never went to the backend.
    c.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n").await;
    let replies = c.replies(3).await;
    assert_eq!(codes(&replies), ["503 5.5.1", "550 5.7.1", "503 5.5.1"], "nested MAIL, then no RCPT: {replies:?}");
    c.cmd("QUIT", "221").await;
    assert!(!backend.lines().iter().any(|l| l.starts_with("BODY:")));
}

/// A backend whose reply to a pipelined MAIL cannot answer it: the group goes out again,
/// in order, on the next backend, and the client sees only that one's replies.
#[tokio::test]
async fn a_group_whose_mail_failed_goes_out_again_on_the_next_backend() {
    // The next backend pipelines, or (a legacy one) takes one command at a time.
    for caps in [POSTFIX_CAPS, "250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n"] {
        group_sent_again(caps).await;
    }
}

async fn group_sent_again(caps: &'static str) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                stream.get_mut().write_all(b"220 broken ESMTP\r\n").await.unwrap();
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if stream.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let reply: &[u8] = match &line[..4] {
                        b"EHLO" => b"250-broken\r\n250-PIPELINING\r\n250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT\r\n",
                        b"MAIL" => b"354 broken-tag\r\n",
                        _ => b"250 broken-tag\r\n",
                    };
                    if stream.get_mut().write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let good = FakeBackend::start(caps).await;
    let cfg = config(&[(broken, "xforward"), (good.addr, "xforward")], "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n").await;
    let replies = c.replies(4).await;
    assert_eq!(codes(&replies), ["250 2.0.0", "250 2.0.0", "250 2.0.0", "354 End d"], "{replies:?}");
    assert!(!replies.iter().any(|r| r.contains("broken-tag")), "{replies:?}");
    c.send("Subject: again\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as FAKE1\r\n");
    c.cmd("QUIT", "221").await;
    let lines = good.lines();
    let commands: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(commands[1..6], ["XFORWARD", "MAIL", "RCPT", "RCPT", "DATA"], "{lines:?}");
    assert!(!lines.iter().any(|l| l == "PIPELINED WITHOUT PIPELINING"), "{lines:?}");
}

/// A legacy backend without PIPELINING gets one command at a time (XFORWARD included),
/// while the client pipelines: it sees the same replies in the same order.
#[tokio::test]
async fn a_backend_without_pipelining_gets_one_command_at_a_time() {
    let backend = FakeBackend::start("250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n").await;
    let cfg = config(&[(backend.addr, "xforward")], "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n").await;
    let replies = c.replies(4).await;
    assert_eq!(codes(&replies), ["250 2.0.0", "550 5.7.1", "250 2.0.0", "354 End d"], "{replies:?}");
    c.send("Subject: legacy\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as FAKE1\r\n");
    c.cmd("QUIT", "221").await;
    let lines = backend.lines();
    let commands: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(commands[1..5], ["XFORWARD", "MAIL", "RCPT", "DATA"], "{lines:?}");
    assert!(!lines.iter().any(|l| l == "PIPELINED WITHOUT PIPELINING"), "{lines:?}");
}
