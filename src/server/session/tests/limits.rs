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

/// A list server's 150 recipients: the first 100 are accepted, the rest deferred
/// without ending the session, and the message goes to the backend once, for the 100.
#[tokio::test]
async fn recipients_over_the_limit_are_deferred_not_errors() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = config(&[(backend.addr, "xforward")], "");
    assert_eq!((cfg.limits.max_recipients, cfg.limits.max_errors), (100, 10));
    for pipelined in [true, false] {
        let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
        c.cmd("MAIL FROM:<list@example.org>", "250").await;
        let rcpts: Vec<String> = (0..150).map(|i| format!("RCPT TO:<u{i}@example.com>\r\n")).collect();
        let mut replies = Vec::new();
        if pipelined {
            c.send(&rcpts.concat()).await;
            for _ in &rcpts {
                replies.push(c.reply().await);
            }
        } else {
            for rcpt in &rcpts {
                c.send(rcpt).await;
                replies.push(c.reply().await);
            }
        }
        assert!(replies[..100].iter().all(|r| r.starts_with("250")), "{pipelined}: {replies:?}");
        assert!(replies[100..].iter().all(|r| r == "452 4.5.3 Error: too many recipients\r\n"), "{replies:?}");
        c.cmd("DATA", "354").await;
        c.send("Subject: list\r\n\r\nhi\r\n.\r\n").await;
        assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued"));
        c.cmd("QUIT", "221").await;
    }
    backend.wait_for("EOF").await;
    let lines = backend.lines();
    assert_eq!(lines.iter().filter(|l| l.starts_with("RCPT")).count(), 200, "100 for each of two sessions");
    assert_eq!(lines.iter().filter(|l| l.starts_with("BODY:")).count(), 2);
    assert!(!lines.iter().any(|l| l.contains("<u100@")), "a deferred recipient reached the backend");

    // Past the overshoot allowance, each one more is an error.
    let cfg = config(
        &[(backend.addr, "xforward")],
        "[limits]\nmax_recipients = 2\nrecipient_overshoot_limit = 3\nmax_errors = 2\n",
    );
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.cmd("MAIL FROM:<list@example.org>", "250").await;
    for i in 0..2 {
        c.cmd(&format!("RCPT TO:<u{i}@example.com>"), "250").await;
    }
    for i in 2..6 {
        c.cmd(&format!("RCPT TO:<u{i}@example.com>"), "452 4.5.3").await;
    }
    c.send("RCPT TO:<u6@example.com>\r\n").await;
    assert_eq!(c.reply().await, "452 4.5.3 Error: too many recipients\r\n");
    assert_eq!(c.reply().await, "421 4.7.0 proxy.test Error: too many errors\r\n");
}

/// A backend whose first connection dies at the second recipient; later ones serve.
async fn dies_at_second_rcpt() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((stream, _)) = socket.accept().await {
            let dies = std::mem::take(&mut first);
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                stream.get_mut().write_all(b"220 fragile ESMTP\r\n").await.unwrap();
                let mut rcpts = 0;
                let mut line = String::new();
                while stream.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let verb = line[..4.min(line.len())].to_ascii_uppercase();
                    line.clear();
                    let reply = match verb.as_str() {
                        "EHLO" => "250-fragile\r\n250 ENHANCEDSTATUSCODES\r\n",
                        "RCPT" => {
                            rcpts += 1;
                            if dies && rcpts == 2 {
                                return;
                            }
                            "250 2.1.5 Ok\r\n"
                        }
                        "QUIT" => "221 2.0.0 Bye\r\n",
                        _ => "250 2.0.0 Ok\r\n",
                    };
                    stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
                }
            });
        }
    });
    addr
}

/// A backend lost between two recipients: every later command of that transaction
/// is told to retry (4xx, not counted as an error); RSET or MAIL start afresh.
#[tokio::test]
async fn a_transaction_whose_backend_died_stays_temporary() {
    let backend = dies_at_second_rcpt().await;
    let lost = "451 4.4.2 Connection to the mail server lost, try again later\r\n";
    let cfg = config(&[(backend, "none")], "[limits]\nmax_errors = 2\n");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("RCPT TO:<b@example.com>", "451 4.4.2").await;
    for command in ["RCPT TO:<c@example.com>", "DATA", "RCPT TO:<d@example.com>", "BDAT 3 LAST"] {
        c.send(&format!("{command}\r\n")).await;
        if command.starts_with("BDAT") {
            c.send("abc").await;
        }
        assert_eq!(c.reply().await, lost, "{command}");
    }
    c.cmd("RSET", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "503 5.5.1").await;
    // MAIL starts a new transaction on a new connection, with or without RSET.
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("RCPT TO:<b@example.com>", "250").await;
    c.cmd("QUIT", "221").await;
}

/// A client that keeps sending after a line that ends its session reads the reply and
/// then the end of the stream, never a reset: the session shuts its writing down and
/// reads what still comes for a moment before it closes.
#[tokio::test]
async fn a_refused_client_reads_the_reply_then_the_end() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = config(&[(backend.addr, "none")], "");
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, peer) = socket.accept().await.unwrap();
        let listener = cfg.listeners[0].clone();
        let client = crate::addr::Client::direct(crate::addr::ClientAddr::new(peer), crate::addr::LocalAddr::new(addr));
        Session::new(cfg, listener, stream, client).run().await;
    });
    let mut client = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut greeting = String::new();
    client.read_line(&mut greeting).await.unwrap();
    assert_eq!(greeting, "220 proxy.test ESMTP\r\n");
    let junk = vec![b'x'; 64 * 1024];
    let mut burst = format!("{}\r\n", long_mail(3000)).into_bytes();
    burst.extend_from_slice(&junk);
    client.get_mut().write_all(&burst).await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.expect("the end, not a reset");
    assert_eq!(String::from_utf8_lossy(&rest), "500 5.5.2 Error: line too long\r\n");
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.get_mut().write_all(&junk).await.expect("still read, not reset");
    }
    drop(client);
    timeout(Duration::from_secs(5), server).await.expect("closed once the client is gone").unwrap();
}

/// A backend that closes each connection with 421 at its second transaction, as one
/// whose idle timeout fires just as a kept connection is taken again.
async fn closes_kept_connections() -> (SocketAddr, Arc<Mutex<u32>>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let connections = Arc::new(Mutex::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            *counted.lock().unwrap() += 1;
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                stream.get_mut().write_all(b"220 sleepy ESMTP\r\n").await.unwrap();
                let (mut transactions, mut in_data) = (0, false);
                let mut line = String::new();
                while stream.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let verb = line[..4.min(line.len())].to_ascii_uppercase();
                    let ended = in_data && line == ".\r\n";
                    line.clear();
                    if in_data && !ended {
                        continue;
                    }
                    let reply = match verb.as_str() {
                        _ if ended => {
                            in_data = false;
                            "250 2.0.0 Ok: queued\r\n"
                        }
                        "EHLO" => "250-sleepy\r\n250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT\r\n250 PIPELINING\r\n",
                        "XFOR" | "MAIL" if transactions == 1 => {
                            let _ = stream.get_mut().write_all(b"421 4.4.2 sleepy Error: timeout exceeded\r\n").await;
                            return;
                        }
                        "MAIL" => {
                            transactions += 1;
                            "250 2.1.0 Ok\r\n"
                        }
                        "DATA" => {
                            in_data = true;
                            "354 go on\r\n"
                        }
                        "QUIT" => "221 2.0.0 Bye\r\n",
                        _ => "250 2.0.0 Ok\r\n",
                    };
                    stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, connections)
}

/// The next session that takes a kept connection the backend is just closing with 421
/// is served on a fresh one, as when the close itself comes in that window.
#[tokio::test]
async fn a_kept_connection_closing_with_421_is_replaced() {
    for identity in ["none+reuse", "xforward+reuse"] {
        let (backend, connections) = closes_kept_connections().await;
        let cfg = config(&[(backend, identity)], "");
        for peer in ["203.0.113.9:40000", "198.51.100.20:40001"] {
            let mut c = Client::greeted(cfg.clone(), peer).await;
            c.cmd("MAIL FROM:<s@example.org>", "250").await;
            c.cmd("RCPT TO:<u@example.com>", "250").await;
            c.cmd("DATA", "354").await;
            c.send("Subject: x\r\n\r\nbody\r\n.\r\n").await;
            assert!(c.reply().await.starts_with("250"), "{identity}");
            c.cmd("QUIT", "221").await;
        }
        assert_eq!(*connections.lock().unwrap(), 2, "{identity}: the kept one, then a fresh one");
    }
}
