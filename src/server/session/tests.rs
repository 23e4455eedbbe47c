//! Session tests: an in-memory client (`tokio::io::duplex`) and a scripted backend on
//! loopback that records every line it receives.

use super::*;
use crate::smtp::ReplyParser;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};
use tokio::net::TcpListener;
use tokio::time::timeout;

const POSTFIX_CAPS: &str = "250-PIPELINING\r\n250-SIZE 10240000\r\n\
    250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n\
    250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n";

/// A backend that accepts everything and writes down what it got.
struct FakeBackend {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeBackend {
    async fn start(caps: &'static str) -> Self {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = log.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = socket.accept().await.unwrap();
                tokio::spawn(serve_fake(stream, caps, shared.clone()));
            }
        });
        Self { addr, log }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the backend saw `line` (it records EOF as "EOF").
    async fn wait_for(&self, line: &str) {
        for _ in 0..200 {
            if self.lines().iter().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backend never saw {line:?}; it saw {:?}", self.lines());
    }
}

async fn serve_fake(stream: tokio::net::TcpStream, caps: &'static str, log: Arc<Mutex<Vec<String>>>) {
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(b"220 fake ESMTP\r\n").await.unwrap();
    let mut line = Vec::new();
    let mut greeted = false;
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            log.lock().unwrap().push("EOF".into());
            return;
        }
        let text = String::from_utf8_lossy(&line).trim_end_matches("\r\n").to_string();
        log.lock().unwrap().push(text.clone());
        if !caps.contains("PIPELINING") && !stream.buffer().is_empty() {
            log.lock().unwrap().push("PIPELINED WITHOUT PIPELINING".into());
        }
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                greeted = true;
                format!("250-fake\r\n{caps}")
            }
            // (A backend that offers STRICT wants EHLO before XCLIENT.)
            "XCLIENT" if caps.contains("STRICT501") && !greeted => "501 5.5.4 Bad XCLIENT attribute\r\n".into(),
            "XCLIENT" if caps.contains("STRICT") && !greeted => "503 5.5.1 Error: send HELO/EHLO first\r\n".into(),
            "XCLIENT" => {
                greeted = false;
                "220 fake ESMTP again\r\n".into()
            }
            "QUIT" => "221 2.0.0 Bye\r\n".into(),
            "MAIL" if text.contains("<refused@") => "550 5.1.8 Sender refused\r\n".into(),
            "BDAT" => {
                // BDAT <size> [LAST]: exactly that many bytes follow.
                let size: usize = text.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                let mut chunk = vec![0u8; size];
                if tokio::io::AsyncReadExt::read_exact(&mut stream, &mut chunk).await.is_err() {
                    log.lock().unwrap().push("EOF".into());
                    return;
                }
                log.lock().unwrap().push(format!("CHUNK:{}", String::from_utf8_lossy(&chunk)));
                "250 2.0.0 chunk ok\r\n".into()
            }
            "DATA" => {
                stream.get_mut().write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await.unwrap();
                let mut body = b"\r\n".to_vec();
                loop {
                    let mut chunk = Vec::new();
                    if stream.read_until(b'\n', &mut chunk).await.unwrap_or(0) == 0 {
                        log.lock().unwrap().push(format!("ABORTED:{}", String::from_utf8_lossy(&body[2..])));
                        log.lock().unwrap().push("EOF".into());
                        return;
                    }
                    body.extend_from_slice(&chunk);
                    if body.ends_with(b"\r\n.\r\n") {
                        break;
                    }
                }
                log.lock().unwrap().push(format!("BODY:{}", String::from_utf8_lossy(&body[2..])));
                "250 2.0.0 Ok: queued as FAKE1\r\n".into()
            }
            _ => "250 2.0.0 Ok\r\n".into(),
        };
        if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        if verb == "QUIT" {
            log.lock().unwrap().push("EOF".into());
            return;
        }
    }
}

fn config(backends: &[(SocketAddr, &str)], extra: &str) -> Arc<Config> {
    let mut text = String::from(
        "[server]\nhostname = \"proxy.test\"\n\
         [[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n\
         [relay]\nlocal_domains = [\"example.com\"]\nnetworks = [\"10.0.0.0/8\"]\n",
    );
    text.push_str(extra);
    for (addr, identity) in backends {
        // Connection reuse has tests of its own ("xforward+reuse"); elsewhere each
        // session's backend connection ends with it, as the tests expect.
        let (identity, reuse) = match identity.strip_suffix("+reuse") {
            Some(identity) => (identity, true),
            None => (*identity, false),
        };
        let reuse = if matches!(identity, "xforward" | "none") { format!("reuse = {reuse}\n") } else { String::new() };
        text.push_str(&format!(
            "[[backend]]\naddress = \"{addr}\"\nidentity = \"{identity}\"\nconnect_timeout = \"2s\"\n{reuse}"
        ));
    }
    Arc::new(crate::config::parse(&text).unwrap().config)
}

struct Client {
    io: DuplexStream,
    buf: BytesMut,
}

impl Client {
    fn start(config: Arc<Config>, peer: &str) -> Self {
        Self::start_sharing(config, peer, Arc::default())
    }

    /// A session that shares the backends' live state (what they offered) with others.
    fn start_sharing(config: Arc<Config>, peer: &str, backends: Arc<Registry>) -> Self {
        let (io, server) = tokio::io::duplex(256 * 1024);
        let listener = config.listeners[0].clone();
        let session = Session::new(config, listener, server, from(peer)).with_backends(backends);
        tokio::spawn(session.run());
        Self { io, buf: BytesMut::new() }
    }

    async fn send(&mut self, bytes: &str) {
        self.io.write_all(bytes.as_bytes()).await.unwrap();
    }

    async fn reply(&mut self) -> String {
        let read = async {
            loop {
                if let Some(r) = ReplyParser::parse(&mut self.buf).unwrap() {
                    return String::from_utf8(r.as_bytes().to_vec()).unwrap();
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return "<closed>".to_string();
                }
            }
        };
        timeout(Duration::from_secs(10), read).await.expect("reply in time")
    }

    /// Sends a command and checks that the reply starts with `expect`.
    async fn cmd(&mut self, line: &str, expect: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        let reply = self.reply().await;
        assert!(reply.starts_with(expect), "{line:?}: expected {expect:?}, got {reply:?}");
        reply
    }

    async fn greeted(config: Arc<Config>, peer: &str) -> Self {
        let mut c = Self::start(config, peer);
        assert_eq!(c.reply().await, "220 proxy.test ESMTP\r\n");
        c.cmd("EHLO client.example", "250-proxy.test").await;
        c
    }
}

const OUTSIDER: &str = "203.0.113.9:40000";

/// A client at `peer` that connected directly to 192.0.2.25:25.
fn from(peer: &str) -> crate::addr::Client {
    use crate::addr::{ClientAddr, LocalAddr};
    crate::addr::Client::direct(
        ClientAddr::new(peer.parse().unwrap()),
        LocalAddr::new("192.0.2.25:25".parse().unwrap()),
    )
}

#[tokio::test]
async fn ehlo_advertises_only_what_is_forwarded() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::start(config(&[(backend.addr, "xclient")], ""), OUTSIDER);
    assert_eq!(c.reply().await, "220 proxy.test ESMTP\r\n");
    let ehlo = c.cmd("EHLO client.example", "250").await;
    assert_eq!(
        ehlo,
        "250-proxy.test\r\n250-PIPELINING\r\n250-SIZE 50000000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n\
         250 CHUNKING\r\n"
    );
    c.cmd("HELO client.example", "250 proxy.test").await;
    c.cmd("QUIT", "221 2.0.0").await;
    assert!(backend.lines().is_empty(), "no backend connection without a transaction");
}

#[tokio::test]
async fn sequence_and_syntax_errors() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::start(config(&[(backend.addr, "xclient")], "[limits]\nmax_errors = 100\n"), OUTSIDER);
    c.reply().await;
    c.cmd("MAIL FROM:<a@example.org>", "503 5.5.1").await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd("RCPT TO:<u@example.com>", "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("FROB", "500 5.5.1").await;
    c.cmd("MAIL FROM:a@example.org", "501 5.5.4").await;
    c.cmd("MAIL FROM:<a@example.org> FOO=BAR", "555 5.5.4").await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
    c.cmd("MAIL FROM:<a@example.org>", "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("RCPT TO:<u@exa_mple.com>", "501 5.1.3").await;
    c.cmd("RCPT TO:<u@example.com> NOTIFY=NEVER", "555 5.5.4").await;
    c.cmd("VRFY root", "252").await;
    c.cmd("HELP", "214").await;
    c.cmd("NOOP", "250 2.0.0").await;
    c.cmd("STARTTLS", "502 5.5.1").await;
    c.cmd("RSET", "250 2.0.0").await;
    c.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn pipelined_transaction_with_xclient() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
    c.send(
        "MAIL FROM:<s@example.org> SIZE=30 BODY=8BITMIME\r\nRCPT TO:<a@example.com>\r\n\
         RCPT TO:<b@remote.test>\r\nRCPT TO:<c@Example.COM>\r\nDATA\r\n",
    )
    .await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert_eq!(c.reply().await, "550 5.7.1 <b@remote.test>: Relay access denied\r\n");
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert!(c.reply().await.starts_with("354"));
    c.send("Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as FAKE1\r\n");
    assert!(c.reply().await.starts_with("221"));
    backend.wait_for("EOF").await;
    assert_eq!(
        backend.lines(),
        vec![
            "EHLO proxy.test",
            "XCLIENT PROTO=ESMTP HELO=client.example PORT=40000 DESTADDR=192.0.2.25 DESTPORT=25 \
             NAME=[UNAVAILABLE] ADDR=203.0.113.9",
            "EHLO client.example",
            "MAIL FROM:<s@example.org> SIZE=30 BODY=8BITMIME",
            "RCPT TO:<a@example.com>",
            "RCPT TO:<c@Example.COM>",
            "DATA",
            "BODY:Subject: hi\r\n\r\n..dot\r\n.\r\n",
            "QUIT",
            "EOF",
        ]
    );
}

#[tokio::test]
async fn a_new_ehlo_name_reaches_the_backend() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("EHLO renamed.example", "250").await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("QUIT", "221").await;
    let xclients: Vec<String> = backend.lines().into_iter().filter(|l| l.starts_with("XCLIENT")).collect();
    assert_eq!(xclients.len(), 2, "{xclients:?}");
    assert!(
        xclients[0].contains("HELO=client.example") && xclients[1].contains("HELO=renamed.example"),
        "{xclients:?}"
    );
}

#[tokio::test]
async fn xforward_is_sent_before_every_mail() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xforward")], ""), OUTSIDER).await;
    for _ in 0..2 {
        c.cmd("MAIL FROM:<s@example.org>", "250").await;
        c.cmd("RSET", "250").await;
    }
    c.cmd("QUIT", "221").await;
    backend.wait_for("EOF").await;
    let xforward =
        "XFORWARD NAME=[UNAVAILABLE] ADDR=203.0.113.9 PORT=40000 PROTO=ESMTP HELO=client.example SOURCE=REMOTE";
    assert_eq!(
        backend.lines(),
        vec![
            "EHLO proxy.test",
            xforward,
            "MAIL FROM:<s@example.org>",
            "RSET",
            xforward,
            "MAIL FROM:<s@example.org>",
            "RSET",
            "QUIT",
            "EOF"
        ]
    );
}

/// Two clients in turn: the second session takes the first one's backend connection
/// (no new greeting or EHLO), and each transaction carries its own client.
#[tokio::test]
async fn a_kept_connection_serves_the_next_session_with_its_own_client() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = config(&[(backend.addr, "xforward+reuse")], "");
    for peer in ["203.0.113.9:40000", "198.51.100.20:40001"] {
        let mut c = Client::greeted(cfg.clone(), peer).await;
        c.cmd("MAIL FROM:<s@example.org>", "250").await;
        c.cmd("RCPT TO:<u@example.com>", "250").await;
        c.cmd("DATA", "354").await;
        c.send("Subject: x\r\n\r\nbody\r\n.\r\n").await;
        assert!(c.reply().await.starts_with("250"));
        c.cmd("QUIT", "221").await;
        // The connection goes back to the pool once the session has ended.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = backend.lines();
    assert_eq!(lines.iter().filter(|l| l.starts_with("EHLO")).count(), 1, "{lines:?}");
    let addrs: Vec<&String> = lines.iter().filter(|l| l.starts_with("XFORWARD")).collect();
    assert_eq!(addrs.len(), 2, "{lines:?}");
    assert!(addrs[0].contains("ADDR=203.0.113.9") && addrs[1].contains("ADDR=198.51.100.20"), "{addrs:?}");
    assert!(!lines.iter().any(|l| l == "QUIT" || l == "RSET"), "a finished transaction needs no RSET: {lines:?}");
}

/// A session that leaves a transaction the backend accepted gives the connection back
/// only after RSET; a session that ends without QUIT mid-transaction does not give it
/// back at all.
#[tokio::test]
async fn a_kept_connection_is_reset_or_not_kept() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = config(&[(backend.addr, "xforward+reuse")], "");
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<refused@example.org>", "550").await;
    c.cmd("QUIT", "221").await;
    backend.wait_for("RSET").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = backend.lines().iter().filter(|l| *l == "RSET").count();
    assert_eq!(before, 2, "the client's RSET, then ours after the refused MAIL: {:?}", backend.lines());

    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<u@example.com>", "250").await;
    drop(c);
    backend.wait_for("EOF").await;
    assert_eq!(backend.lines().iter().filter(|l| l.starts_with("EHLO")).count(), 1, "{:?}", backend.lines());
}

#[tokio::test]
async fn parameters_the_backend_lacks_are_dropped() {
    let backend = FakeBackend::start("250 PIPELINING\r\n").await;
    let mut c = Client::greeted(config(&[(backend.addr, "none")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org> SIZE=30 BODY=8BITMIME", "250").await;
    c.cmd("QUIT", "221").await;
    backend.wait_for("EOF").await;
    assert_eq!(backend.lines()[1], "MAIL FROM:<s@example.org>");
}

#[tokio::test]
async fn relay_from_networks_and_recipient_limit() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = config(&[(backend.addr, "xclient")], "[limits]\nmax_recipients = 2\n");
    let mut c = Client::greeted(cfg, "10.1.2.3:1025").await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<a@remote.test>", "250").await;
    c.cmd("RCPT TO:<u%b@example.com>", "250").await;
    c.cmd("RCPT TO:<c@example.com>", "452 4.5.3").await;
}

#[tokio::test]
async fn bare_lf_abandons_the_backend_transaction() {
    for body in ["a\n.\nMAIL FROM:<x@evil>\r\n.\r\n", "a\r\n.\rRCPT TO:<y@evil>\r\n.\r\n"] {
        let backend = FakeBackend::start(POSTFIX_CAPS).await;
        let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
        c.cmd("MAIL FROM:<s@example.org>", "250").await;
        c.cmd("RCPT TO:<a@example.com>", "250").await;
        c.cmd("DATA", "354").await;
        c.send(body).await;
        assert!(c.reply().await.starts_with("554 5.6.0"), "{body:?}");
        backend.wait_for("EOF").await;
        let lines = backend.lines();
        assert!(lines.iter().any(|l| l.starts_with("ABORTED:")), "{lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("BODY:") || l.contains("evil")), "{lines:?}");
        // The session goes on; a new transaction opens a new backend connection.
        c.cmd("MAIL FROM:<s@example.org>", "250").await;
    }
}

#[tokio::test]
async fn client_gone_mid_data_leaves_no_message() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send("Subject: half\r\n\r\nhalf a message\r\n").await;
    drop(c);
    backend.wait_for("EOF").await;
    assert!(backend.lines().iter().any(|l| l.starts_with("ABORTED:Subject: half")));
    assert!(!backend.lines().iter().any(|l| l.starts_with("BODY:")));
}

#[tokio::test]
async fn size_limits() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = config(&[(backend.addr, "xclient")], "[limits]\nmax_message_size = 100\n");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org> SIZE=101", "552 5.3.4").await;
    c.cmd("MAIL FROM:<s@example.org> SIZE=100", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(&format!("{}\r\n.\r\n", "x".repeat(200))).await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    backend.wait_for("EOF").await;
    assert!(!backend.lines().iter().any(|l| l.starts_with("BODY:")));
}

#[tokio::test]
async fn no_backend_gives_4xx_and_failover_uses_the_next() {
    // A port nobody listens on: bind, note, close.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut c = Client::greeted(config(&[(dead, "xclient")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "451 4.4.1").await;

    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(dead, "xclient"), (backend.addr, "xclient")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
}

#[tokio::test]
async fn a_refusal_of_the_clients_own_values_never_fails_over() {
    // A backend that refuses the client's values in XCLIENT (501), then a weaker one
    // that would take anything: the client gets 451 4.3.0, the second never a byte.
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let strict = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = socket.accept().await.unwrap();
        let mut s = BufReader::new(s);
        s.get_mut().write_all(b"220 strict\r\n").await.unwrap();
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        s.get_mut().write_all(format!("250-strict\r\n{POSTFIX_CAPS}").as_bytes()).await.unwrap();
        line.clear();
        s.read_line(&mut line).await.unwrap();
        s.get_mut().write_all(b"501 5.5.4 Bad HELO syntax\r\n").await.unwrap();
        let _ = s.read_line(&mut line).await;
    });
    let lenient = FakeBackend::start(POSTFIX_CAPS).await;
    let extra = "";
    let mut config = (*config(&[(strict, "xclient"), (lenient.addr, "none")], extra)).clone();
    config.backends[1].allow_identity_downgrade = true;
    let mut c = Client::greeted(Arc::new(config), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "451 4.3.0").await;
    c.cmd("QUIT", "221").await;
    assert!(lenient.lines().is_empty(), "{:?}", lenient.lines());
}

#[tokio::test]
async fn backend_without_xclient_is_refused_with_4xx() {
    let backend = FakeBackend::start("250 PIPELINING\r\n").await;
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "451 4.3.0").await;
    assert!(!backend.lines().iter().any(|l| l.starts_with("MAIL")));
}

#[tokio::test]
async fn client_identity_commands_are_refused_and_not_forwarded() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("XCLIENT ADDR=10.1.1.1", "550 5.7.0").await;
    c.cmd("XFORWARD ADDR=10.1.1.1", "550 5.7.0").await;
    c.cmd("RCPT TO:<a@remote.test>", "550 5.7.1").await;
    c.cmd("QUIT", "221").await;
    assert!(!backend.lines().iter().any(|l| l.contains("10.1.1.1")));
}

#[tokio::test]
async fn malformed_lines() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
    c.send("NOOP\n").await;
    assert!(c.reply().await.starts_with("500 5.5.2"));
    c.cmd("NOOP", "250 2.0.0").await;
    // Too long: one reply, then the session ends; the rest is never read.
    c.send(&"A".repeat(5000)).await;
    assert!(c.reply().await.starts_with("500 5.5.2"));
    assert_eq!(c.reply().await, "<closed>");
}

#[tokio::test(start_paused = true)]
async fn a_trickling_client_cannot_stretch_a_command_past_the_deadline() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let config = config(&[(backend.addr, "xclient")], "[limits]\ncommand_timeout = \"60s\"\n");
    let mut c = Client::greeted(config, OUTSIDER).await;
    let started = tokio::time::Instant::now();
    // One byte every 30 s: each read is well within 60 s, the line is not.
    for b in "NOOP and more and more".bytes() {
        if c.io.write_all(&[b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    assert!(c.reply().await.starts_with("421 4.4.2"));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(60) && elapsed <= Duration::from_secs(90), "{elapsed:?}");
}

#[tokio::test]
async fn commands_after_one_that_ends_a_group_are_a_sync_error() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    // MAIL, RCPT pipelined: fine. NOOP followed by more: not.
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
    c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.com>\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    c.send("NOOP\r\nRSET\r\n").await;
    assert!(c.reply().await.starts_with("554 5.5.0"));
    assert_eq!(c.reply().await, "<closed>");
    let mut c = Client::start(config(&[(backend.addr, "xclient")], ""), OUTSIDER);
    c.reply().await;
    c.send("EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n").await;
    assert!(c.reply().await.starts_with("554 5.5.0"));
}

#[tokio::test]
async fn junk_commands_beyond_the_limit_count_as_errors() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let extra = "[limits]\nmax_junk_commands = 3\nmax_errors = 2\n";
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], extra), OUTSIDER).await;
    for _ in 0..3 {
        c.cmd("NOOP", "250").await;
    }
    c.cmd("RSET", "250").await; // the 4th: one error
    // The 5th: the second error, which ends the session before it is answered.
    c.cmd("VRFY root", "421 4.7.0").await;
}

#[tokio::test]
async fn traffic_that_is_not_smtp_is_closed_at_once() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    // A TLS ClientHello on a plain port (no line end will come), message headers sent
    // as commands, binary data.
    for junk in ["\x16\x03\x01\x00\x25\x01\x00", "Subject: hello\r\n", "\x00\x01\x02", "<html>\r\n"] {
        let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
        c.send(junk).await;
        assert!(c.reply().await.starts_with("554 5.5.1"), "{junk:?}");
        assert_eq!(c.reply().await, "<closed>", "{junk:?}");
    }
}

#[tokio::test]
async fn backend_421_is_relayed_and_ends_the_session() {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = socket.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        s.write_all(b"220 hi\r\n").await.unwrap();
        let _ = s.read(&mut buf).await;
        s.write_all(b"250 hi\r\n").await.unwrap();
        let _ = s.read(&mut buf).await;
        s.write_all(b"421 4.3.2 shutting down\r\n").await.unwrap();
    });
    let mut c = Client::greeted(config(&[(addr, "none")], ""), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "421 4.3.2 shutting down").await;
    assert_eq!(c.reply().await, "<closed>");
}

// === TLS and AUTH ===

/// A self-signed certificate for "proxy.test" in a temp dir, and a users file holding
/// alice / "wonderland".
struct Secrets {
    dir: tempfile::TempDir,
    cert_pem: String,
}

impl Secrets {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["proxy.test".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        let hash = crate::auth::users::hash_password("wonderland").unwrap();
        std::fs::write(dir.path().join("users"), format!("alice:{hash}\n")).unwrap();
        Self { cert_pem: ck.cert.pem(), dir }
    }

    /// Config text for [tls] and [auth] (file mode).
    fn sections(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "[tls]\ncertificate = \"{d}/cert.pem\"\nprivate_key = \"{d}/key.pem\"\n\
             [auth]\nmode = \"file\"\nusers_file = \"{d}/users\"\n"
        )
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        roots.add(rustls::pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()).unwrap();
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A listener with TLS and AUTH settings: `listener_extra` goes into [[listener]].
fn tls_config(backend: SocketAddr, secrets: &Secrets, listener_extra: &str, relay_extra: &str) -> Arc<Config> {
    let text = format!(
        "[server]\nhostname = \"proxy.test\"\n\
         [[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n{listener_extra}\n\
         [relay]\nlocal_domains = [\"example.com\"]\n{relay_extra}\n\
         [[backend]]\naddress = \"{backend}\"\nidentity = \"xclient\"\n{}",
        secrets.sections()
    );
    Arc::new(crate::config::parse(&text).unwrap_or_else(|e| panic!("{e}")).config)
}

/// A client speaking TLS over the duplex stream, with the same helpers as [`Client`].
struct TlsClient {
    io: tokio_rustls::client::TlsStream<DuplexStream>,
    buf: BytesMut,
}

impl TlsClient {
    async fn upgrade(c: Client, secrets: &Secrets) -> Self {
        assert!(c.buf.is_empty(), "nothing may follow the 220 to STARTTLS: {:?}", c.buf);
        let name = rustls::pki_types::ServerName::try_from("proxy.test").unwrap();
        let io = secrets.connector().connect(name, c.io).await.expect("handshake");
        Self { io, buf: BytesMut::new() }
    }

    async fn reply(&mut self) -> String {
        let read = async {
            loop {
                if let Some(r) = ReplyParser::parse(&mut self.buf).unwrap() {
                    return String::from_utf8(r.as_bytes().to_vec()).unwrap();
                }
                if self.io.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return "<closed>".to_string();
                }
            }
        };
        timeout(Duration::from_secs(10), read).await.expect("reply in time")
    }

    async fn cmd(&mut self, line: &str, expect: &str) -> String {
        self.io.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        let reply = self.reply().await;
        assert!(reply.starts_with(expect), "{line:?}: expected {expect:?}, got {reply:?}");
        reply
    }
}

fn plain_b64(user: &str, pass: &str) -> String {
    crate::auth::mechanism::encode(&format!("\0{user}\0{pass}"))
}

#[tokio::test]
async fn starttls_forgets_the_session_and_offers_auth_inside() {
    let secrets = Secrets::new();
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = tls_config(backend.addr, &secrets, "tls = \"starttls\"\nauth = \"optional\"", "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    // Before TLS: STARTTLS offered, AUTH not (no plaintext AUTH).
    let ehlo = c.cmd("EHLO client.example", "250").await;
    assert!(ehlo.contains("250-STARTTLS\r\n") && !ehlo.contains("AUTH"), "{ehlo}");
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "wonderland")), "538 5.7.11").await;
    c.cmd("STARTTLS", "220 2.0.0").await;
    let mut t = TlsClient::upgrade(c, &secrets).await;
    t.cmd("MAIL FROM:<a@example.org>", "503 5.5.1").await; // EHLO again first
    let ehlo = t.cmd("EHLO client.example", "250").await;
    assert!(!ehlo.contains("STARTTLS") && ehlo.contains("250-AUTH PLAIN LOGIN\r\n"), "{ehlo}");
    t.cmd("STARTTLS", "503 5.5.1").await;
    t.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_never_executed() {
    for injected in ["RSET\r\n", "EHLO evil.example\r\n", "MAIL FROM:<x@evil.example>\r\n"] {
        let secrets = Secrets::new();
        let backend = FakeBackend::start(POSTFIX_CAPS).await;
        let cfg = tls_config(backend.addr, &secrets, "tls = \"starttls\"", "");
        let mut c = Client::greeted(cfg, OUTSIDER).await;
        c.send(&format!("STARTTLS\r\n{injected}")).await;
        assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS\r\n");
        let mut t = TlsClient::upgrade(c, &secrets).await;
        // The first reply inside TLS answers our NOOP, not the injected command.
        t.cmd("NOOP", "250 2.0.0 Ok").await;
        t.cmd("MAIL FROM:<a@example.org>", "503 5.5.1").await;
        assert!(backend.lines().is_empty(), "{injected:?} reached the backend");
    }
}

#[tokio::test]
async fn starttls_refused_in_a_transaction_and_tls_can_be_required() {
    let secrets = Secrets::new();
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = tls_config(backend.addr, &secrets, "tls = \"starttls\"", "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
    c.cmd("STARTTLS", "503 5.5.1").await;

    let cfg = tls_config(backend.addr, &secrets, "tls = \"starttls\"\nrequire_tls = true", "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.cmd("MAIL FROM:<a@example.org>", "530 5.7.0").await;
}

#[tokio::test]
async fn auth_plain_and_login_against_the_users_file() {
    let secrets = Secrets::new();
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = tls_config(backend.addr, &secrets, "auth = \"optional\"\nauth_plaintext = true", "");
    // PLAIN with an initial response.
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "wonderland")), "235 2.7.0").await;
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "wonderland")), "503 5.5.1").await;
    // PLAIN through a 334 continuation.
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.cmd("AUTH PLAIN", "334 ").await;
    c.cmd(&plain_b64("alice", "wonderland"), "235 2.7.0").await;
    // LOGIN, both steps.
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd(&crate::auth::mechanism::encode("alice"), "334 UGFzc3dvcmQ6").await;
    c.cmd(&crate::auth::mechanism::encode("wonderland"), "235 2.7.0").await;
    // Cancel, garbage, unknown mechanism.
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.cmd("AUTH LOGIN", "334").await;
    c.cmd("*", "501 5.7.0").await;
    c.cmd("AUTH PLAIN !!!", "501 5.5.2").await;
    c.cmd("AUTH CRAM-MD5", "504 5.5.4").await;
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "wrong")), "535 5.7.8").await;
}

#[tokio::test]
async fn auth_failures_are_slowed_and_end_the_session() {
    let secrets = Secrets::new();
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = tls_config(backend.addr, &secrets, "auth = \"optional\"\nauth_plaintext = true", "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    let started = std::time::Instant::now();
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "nope1")), "535 5.7.8").await;
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("mallory", "nope2")), "535 5.7.8").await;
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "nope3")), "535 5.7.8").await;
    assert_eq!(c.reply().await, "421 4.7.0 proxy.test Error: too many authentication failures\r\n");
    assert_eq!(c.reply().await, "<closed>");
    assert!(started.elapsed() >= Duration::from_secs(6), "1 + 2 + 3 seconds of delay");
}

#[tokio::test]
async fn auth_decides_relay_and_never_still_wins() {
    let secrets = Secrets::new();
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let listener = "auth = \"optional\"\nauth_plaintext = true";
    let cfg = tls_config(backend.addr, &secrets, listener, "never = [\"198.51.100.0/24\"]");
    let mut c = Client::greeted(cfg.clone(), OUTSIDER).await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
    c.cmd("RCPT TO:<x@remote.test>", "550 5.7.1").await;
    c.cmd("RSET", "250").await;
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "wonderland")), "235").await;
    c.cmd("MAIL FROM:<a@example.org> AUTH=<>", "250").await;
    c.cmd("RCPT TO:<x@remote.test>", "250").await;
    c.cmd("QUIT", "221").await;
    backend.wait_for("EOF").await;
    let lines = backend.lines();
    // The second backend connection tells the backend who logged in; AUTH= is not passed on.
    assert!(lines.iter().any(|l| l.starts_with("XCLIENT") && l.contains("LOGIN=alice")), "{lines:?}");
    assert!(lines.contains(&"MAIL FROM:<a@example.org>".to_string()), "{lines:?}");

    let mut c = Client::greeted(cfg, "198.51.100.7:1234").await;
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "wonderland")), "235").await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
    c.cmd("RCPT TO:<x@remote.test>", "550 5.7.1").await;
}

#[tokio::test]
async fn auth_required_before_mail() {
    let secrets = Secrets::new();
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = tls_config(backend.addr, &secrets, "auth = \"required\"\nauth_plaintext = true", "");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.cmd("MAIL FROM:<a@example.org>", "530 5.7.0").await;
    c.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "wonderland")), "235").await;
    c.cmd("MAIL FROM:<a@example.org>", "250").await;
}

#[tokio::test]
async fn implicit_tls_listener() {
    let secrets = Secrets::new();
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = tls_config(backend.addr, &secrets, "tls = \"implicit\"\nauth = \"optional\"", "");
    let c = Client::start(cfg, OUTSIDER);
    let mut t = TlsClient::upgrade(c, &secrets).await;
    assert_eq!(t.reply().await, "220 proxy.test ESMTP\r\n");
    let ehlo = t.cmd("EHLO client.example", "250").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"), "{ehlo}");
    t.cmd(&format!("AUTH PLAIN {}", plain_b64("alice", "wonderland")), "235").await;
}

// === limits, junk, pregreet, timeouts, shutdown ===

fn limited_config(listener_extra: &str, limits: &str) -> Arc<Config> {
    let text = format!(
        "[server]\nhostname = \"proxy.test\"\n[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n{listener_extra}\n\
         [[backend]]\naddress = \"127.0.0.1:9\"\n[limits]\n{limits}\n"
    );
    Arc::new(crate::config::parse(&text).unwrap_or_else(|e| panic!("{e}")).config)
}

#[tokio::test]
async fn too_many_errors_end_the_session() {
    let mut c = Client::greeted(limited_config("", "max_errors = 3"), OUTSIDER).await;
    c.cmd("FOO", "500 5.5.1").await;
    c.cmd("MAIL FROM:broken", "501 5.5.4").await;
    c.cmd("XCLIENT ADDR=10.0.0.1", "550 5.7.0").await;
    assert_eq!(c.reply().await, "421 4.7.0 proxy.test Error: too many errors\r\n");
    assert_eq!(c.reply().await, "<closed>");
}

#[tokio::test]
async fn an_http_request_is_closed_at_once() {
    let mut c = Client::start(limited_config("", ""), OUTSIDER);
    c.reply().await;
    c.send("GET / HTTP/1.1\r\nHost: mx.example\r\n\r\n").await;
    assert_eq!(c.reply().await, "554 5.5.1 Error: this is an SMTP server\r\n");
    assert_eq!(c.reply().await, "<closed>");
}

#[tokio::test]
async fn talking_before_the_greeting_is_refused() {
    let mut c = Client::start(limited_config("greeting_delay = \"300ms\"", ""), OUTSIDER);
    c.send("EHLO early.example\r\n").await;
    assert_eq!(c.reply().await, "554 5.5.1 Error: talking before the greeting\r\n");
    assert_eq!(c.reply().await, "<closed>");
    // A patient client is greeted after the delay.
    let mut c = Client::start(limited_config("greeting_delay = \"300ms\"", ""), OUTSIDER);
    assert_eq!(c.reply().await, "220 proxy.test ESMTP\r\n");
}

#[tokio::test(start_paused = true)]
async fn idle_clients_time_out() {
    let mut c = Client::greeted(limited_config("", "command_timeout = \"5s\""), OUTSIDER).await;
    let started = tokio::time::Instant::now();
    assert_eq!(c.reply().await, "421 4.4.2 proxy.test Error: timeout exceeded\r\n");
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(c.reply().await, "<closed>");
}

#[tokio::test]
async fn shutdown_deadline_says_421() {
    let config = limited_config("", "");
    let (io, server) = tokio::io::duplex(64 * 1024);
    let stop = tokio_util::sync::CancellationToken::new();
    let listener = config.listeners[0].clone();
    let session = Session::new(config, listener, server, from(OUTSIDER)).with_stop(stop.clone());
    tokio::spawn(session.run());
    let mut c = Client { io, buf: BytesMut::new() };
    c.reply().await;
    c.cmd("EHLO client.example", "250").await;
    stop.cancel();
    assert_eq!(c.reply().await, "421 4.3.2 proxy.test Service shutting down, try again later\r\n");
    assert_eq!(c.reply().await, "<closed>");
}

#[tokio::test]
async fn data_pipelined_before_354_is_refused() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], ""), OUTSIDER).await;
    c.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nSubject: blind\r\n\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert_eq!(c.reply().await, "554 5.5.0 Error: SMTP protocol synchronization (data sent before 354)\r\n");
    assert_eq!(c.reply().await, "<closed>");
    backend.wait_for("EOF").await;
    assert!(!backend.lines().iter().any(|l| l == "DATA" || l.starts_with("BODY:")), "{:?}", backend.lines());
}

/// An idle session is a task holding this future: keep it small (the benchmark's
/// memory per idle session depends on it).
#[tokio::test]
async fn idle_session_state_stays_small() {
    let cfg = limited_config("", "");
    let (_io, server) = tokio::io::duplex(64);
    let listener = cfg.listeners[0].clone();
    let session = Session::new(cfg, listener, server, from(OUTSIDER));
    let future = session.run();
    eprintln!("session future: {} bytes", std::mem::size_of_val(&future));
    assert!(std::mem::size_of_val(&future) <= 2048, "{} bytes", std::mem::size_of_val(&future));
}

#[tokio::test]
async fn trickled_data_is_cut_off() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg =
        config(&[(backend.addr, "xclient")], "[limits]\nmin_data_rate = 100000\nmin_data_rate_grace = \"300ms\"\n");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send("Subject: slow\r\n").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.send("x").await;
    assert_eq!(c.reply().await, "421 4.4.2 proxy.test Error: data too slow\r\n");
    backend.wait_for("EOF").await;
    assert!(!backend.lines().iter().any(|l| l.starts_with("BODY:")));
}

#[tokio::test]
async fn silent_client_inside_data_times_out() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = config(&[(backend.addr, "xclient")], "[limits]\ndata_timeout = \"1s\"\n");
    let mut c = Client::greeted(cfg, OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<a@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send("Subject: then silence\r\n").await;
    assert_eq!(c.reply().await, "421 4.4.2 proxy.test Error: timeout exceeded\r\n");
    backend.wait_for("EOF").await;
    assert!(!backend.lines().iter().any(|l| l.starts_with("BODY:")), "no message may arrive");
}

mod bdat;
mod limits;
mod lockstep;
mod pipeline;

#[tokio::test]
async fn refusals_count_toward_max_errors() {
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], "[limits]\nmax_errors = 5\n"), OUTSIDER).await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    // Relay probing, pipelined: the fifth refusal ends the session.
    let burst: String = (0..2000).map(|i| format!("RCPT TO:<u{i}@remote.test>\r\n")).collect();
    c.send(&burst).await;
    for _ in 0..5 {
        assert!(c.reply().await.starts_with("550 5.7.1"));
    }
    assert!(c.reply().await.starts_with("421 4.7.0"));
    assert_eq!(c.reply().await, "<closed>");
    assert!(!backend.lines().iter().any(|l| l.contains("remote.test")));

    // Out of sequence and bad syntax count too; a delivered message starts over.
    let mut c = Client::greeted(config(&[(backend.addr, "xclient")], "[limits]\nmax_errors = 3\n"), OUTSIDER).await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("RCPT TO:<a@remote.test>", "503 5.5.1").await;
    c.cmd("MAIL FROM:<s@example.org>", "250").await;
    c.cmd("RCPT TO:<u@example.com>", "250").await;
    c.cmd("DATA", "354").await;
    c.send("Subject: x\r\n\r\nhi\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    c.cmd("MAIL FROM:<s@example.org> FOO=1", "555 5.5.4").await;
    c.cmd("MAIL FROM:s@example.org", "501 5.5.4").await;
    c.send("AUTH FOO\r\n").await;
    assert!(c.reply().await.starts_with("502 5.5.1"));
    assert!(c.reply().await.starts_with("421 4.7.0"));
}

#[tokio::test]
async fn tls_handshake_timeout_is_the_configured_one() {
    let secrets = Secrets::new();
    let backend = FakeBackend::start(POSTFIX_CAPS).await;
    let cfg = tls_config(backend.addr, &secrets, "tls = \"implicit\"", "[limits]\ntls_handshake_timeout = \"1s\"");
    let mut c = Client::start(cfg, OUTSIDER);
    let started = tokio::time::Instant::now();
    // A client that never starts its handshake is closed after a second, not a minute.
    let mut buf = [0u8; 16];
    let n = timeout(Duration::from_secs(10), c.io.read(&mut buf)).await.expect("closed in time").unwrap();
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn xclient_goes_before_ehlo_once_the_backend_is_known() {
    for (strict, caps) in [
        (false, POSTFIX_CAPS),
        (true, "250-STRICT\r\n250-PIPELINING\r\n250 XCLIENT NAME ADDR PROTO HELO PORT\r\n"),
        // Refuses what it once took with a syntax error: still EHLO first, then on.
        (true, "250-STRICT501\r\n250-PIPELINING\r\n250 XCLIENT NAME ADDR PROTO HELO PORT\r\n"),
    ] {
        let backend = FakeBackend::start(caps).await;
        let backends = Arc::new(Registry::default());
        for _ in 0..2 {
            let mut c = Client::start_sharing(config(&[(backend.addr, "xclient")], ""), OUTSIDER, backends.clone());
            c.reply().await;
            c.cmd("EHLO client.example", "250").await;
            c.cmd("MAIL FROM:<a@example.org>", "250").await;
            c.cmd("QUIT", "221").await;
            backend.wait_for("QUIT").await;
        }
        let lines = backend.lines();
        let second: Vec<&str> = lines.iter().skip_while(|l| *l != "EOF").skip(1).map(String::as_str).collect();
        let verbs: Vec<&str> = second.iter().map(|l| l.split(' ').next().unwrap_or("")).collect();
        if strict {
            // Refused before EHLO: EHLO first, then XCLIENT again, and the message goes.
            assert_eq!(verbs[..4], ["XCLIENT", "EHLO", "XCLIENT", "EHLO"], "{second:?}");
        } else {
            // Known: XCLIENT straight after the greeting, then the client's EHLO.
            assert_eq!(verbs[..3], ["XCLIENT", "EHLO", "MAIL"], "{second:?}");
            assert_eq!(second[1], "EHLO client.example");
        }
        assert!(second.iter().any(|l| l.starts_with("XCLIENT") && l.contains("ADDR=203.0.113.9")), "{second:?}");
    }
}
