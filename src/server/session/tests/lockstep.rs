//! Lock step with a backend that misbehaves at one step of its first connection: an
//! extra reply, an impossible code, a reply before its command, or (harmless) a reply
//! split across writes. Whatever it does, the client never gets a reply that belongs
//! to another command, and the backend never gets message bytes outside DATA.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Greeting,
    Ehlo,
    Xclient,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Rset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The reply twice, in one write.
    Extra,
    /// The reply, then the same again in a write of its own.
    ExtraLater,
    /// A code that cannot answer this step.
    Wrong,
    /// The reply sent with the previous step's, before its command came.
    Premature,
    /// The reply in two writes, cut mid-line: must work as usual.
    Split,
}

const CAPS: &str = "250-PIPELINING\r\n250-XCLIENT NAME ADDR PROTO HELO LOGIN\r\n250 8BITMIME\r\n";

fn reply_for(step: Step) -> String {
    match step {
        Step::Greeting => "220 fake ESMTP greeting-tag\r\n".into(),
        Step::Ehlo => format!("250-fake ehlo-tag\r\n{CAPS}"),
        Step::Xclient => "220 fake xclient-tag\r\n".into(),
        Step::Mail => "250 2.1.0 mail-tag\r\n".into(),
        Step::Rcpt => "250 2.1.5 rcpt-tag\r\n".into(),
        Step::Data => "354 data-tag\r\n".into(),
        Step::EndOfData => "250 2.0.0 queued-tag\r\n".into(),
        Step::Rset => "250 2.0.0 rset-tag\r\n".into(),
    }
}

fn wrong_for(step: Step) -> &'static str {
    match step {
        Step::Greeting => "250 wrong-tag\r\n",
        Step::Data => "250 2.0.0 wrong-tag\r\n",
        _ => "354 wrong-tag\r\n",
    }
}

/// The step whose reply the backend sends next, after answering `step` (the first
/// MAIL is followed by RSET).
fn successor(step: Step, ehlos: u32, mails: u32) -> Step {
    match step {
        Step::Greeting => Step::Ehlo,
        Step::Ehlo if ehlos == 1 => Step::Xclient,
        Step::Xclient => Step::Ehlo,
        Step::Ehlo | Step::Rset => Step::Mail,
        Step::Mail if mails == 1 => Step::Rset,
        Step::Mail => Step::Rcpt,
        Step::Rcpt => Step::Data,
        Step::Data => Step::EndOfData,
        Step::EndOfData => Step::Rset,
    }
}

struct Scripted {
    addr: SocketAddr,
    /// Command lines received outside DATA, and "BODY:..." for each message.
    log: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<u32>>,
}

impl Scripted {
    async fn start(step: Step, fault: Fault) -> Self {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (log, connections) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
        let (l, n) = (log.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = socket.accept().await.unwrap();
                let first = {
                    let mut n = n.lock().unwrap();
                    *n += 1;
                    *n == 1
                };
                let fault = first.then_some((step, fault));
                tokio::spawn(serve_scripted(stream, fault, l.clone()));
            }
        });
        Self { addr, log, connections }
    }
}

async fn serve_scripted(stream: tokio::net::TcpStream, fault: Option<(Step, Fault)>, log: Arc<Mutex<Vec<String>>>) {
    // Without it, Nagle holds a late extra reply until the proxy's delayed ACK.
    stream.set_nodelay(true).unwrap();
    let mut stream = BufReader::new(stream);
    let mut premature_sent = false;
    let mut skip_answer = None;
    let mut ehlos = 0;
    let mut mails = 0;
    let mut answered = Step::Greeting;
    let mut line = Vec::new();
    loop {
        // Answer `answered` (the greeting first), then maybe the next one early.
        let fault_here = fault.filter(|(s, _)| *s == answered).map(|(_, f)| f);
        let mut reply = reply_for(answered);
        let next = successor(answered, ehlos, mails);
        if fault == Some((next, Fault::Premature)) && !premature_sent {
            premature_sent = true;
            skip_answer = Some(next);
            reply.push_str(&reply_for(next));
        }
        let w = stream.get_mut();
        let sent = match fault_here {
            Some(Fault::Extra) => w.write_all(format!("{reply}{reply}").as_bytes()).await,
            Some(Fault::ExtraLater) => {
                let _ = w.write_all(reply.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                w.write_all(reply.as_bytes()).await
            }
            Some(Fault::Wrong) => w.write_all(wrong_for(answered).as_bytes()).await,
            Some(Fault::Premature) if skip_answer == Some(answered) => {
                skip_answer = None;
                Ok(())
            }
            Some(Fault::Split) => {
                let (a, b) = reply.split_at(reply.len() / 2);
                let _ = w.write_all(a.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
                w.write_all(b.as_bytes()).await
            }
            _ => w.write_all(reply.as_bytes()).await,
        };
        if sent.is_err() {
            return;
        }
        let in_data = answered == Step::Data && !(fault_here == Some(Fault::Wrong));
        if in_data {
            let mut body = Vec::new();
            loop {
                line.clear();
                if stream.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == b".\r\n" {
                    break;
                }
                body.extend_from_slice(&line);
            }
            log.lock().unwrap().push(format!("BODY:{}", String::from_utf8_lossy(&body)));
            answered = Step::EndOfData;
            continue;
        }
        line.clear();
        if stream.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        log.lock().unwrap().push(text.clone());
        answered = match text.split(' ').next().unwrap_or("").to_ascii_uppercase().as_str() {
            "EHLO" => {
                ehlos += 1;
                Step::Ehlo
            }
            "XCLIENT" => Step::Xclient,
            "MAIL" => {
                mails += 1;
                Step::Mail
            }
            "RCPT" => Step::Rcpt,
            "DATA" => Step::Data,
            "RSET" => Step::Rset,
            _ => return,
        };
    }
}

const BODY: &str =
    "Subject: lock step\r\n\r\nRCPT TO:<victim@elsewhere.test>\r\nMAIL FROM:<evil@elsewhere.test>\r\n.\r\n";

/// Runs two transactions through Portcullis against a backend with `fault` at `step`,
/// MAIL, RCPT and DATA one at a time or (`pipelined`) in one write; returns every
/// (command, reply) the client saw.
async fn run(step: Step, fault: Fault, pipelined: bool) -> (Scripted, Vec<(String, String)>) {
    let backend = Scripted::start(step, fault).await;
    let config = config(&[(backend.addr, "xclient")], "[limits]\nmax_errors = 100\n");
    let mut c = Client::greeted(config, OUTSIDER).await;
    let mut seen = Vec::new();
    // A transaction given up at once, so that the backend gets an RSET.
    for cmd in ["MAIL FROM:<r@example.org>", "RSET"] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.send(&format!("{cmd}\r\n")).await;
        seen.push((cmd.to_string(), c.reply().await));
    }
    for sender in ["a@example.org", "b@example.org"] {
        let group = [format!("MAIL FROM:<{sender}>"), "RCPT TO:<u@example.com>".into(), "DATA".into()];
        if pipelined {
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.send(&group.iter().map(|l| format!("{l}\r\n")).collect::<String>()).await;
        }
        for cmd in group.into_iter().chain([BODY.to_string()]) {
            if cmd == BODY && !seen.last().unwrap().1.starts_with("354") {
                break;
            }
            if !pipelined || cmd == BODY {
                // Give a late extra reply time to arrive before the next command.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let line = if cmd == BODY { cmd.clone() } else { format!("{cmd}\r\n") };
                c.send(&line).await;
            }
            let reply = c.reply().await;
            let ok = reply.starts_with('2') || reply.starts_with('3');
            seen.push((cmd, reply));
            if !ok && !pipelined {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.cmd("RSET", "250").await;
    }
    c.cmd("QUIT", "221").await;
    (backend, seen)
}

/// The tag a correct reply to `cmd` carries ("" for Portcullis' own).
fn tag(cmd: &str) -> &'static str {
    match cmd.split(' ').next().unwrap() {
        "RSET" => "",
        "MAIL" => "mail-tag",
        "RCPT" => "rcpt-tag",
        "DATA" => "data-tag",
        _ => "queued-tag",
    }
}

const TAGS: [&str; 9] = [
    "greeting-tag",
    "ehlo-tag",
    "xclient-tag",
    "mail-tag",
    "rcpt-tag",
    "data-tag",
    "queued-tag",
    "rset-tag",
    "wrong-tag",
];

fn check(step: Step, fault: Fault, backend: &Scripted, seen: &[(String, String)]) {
    let case = format!("{fault:?} at {step:?}: {seen:?}");
    for (cmd, reply) in seen {
        let own = TAGS.iter().all(|t| !reply.contains(t));
        let expected = match tag(cmd) {
            "" => own && reply.starts_with("250 "),
            tag => reply.contains(tag),
        };
        assert!(
            expected || (own && reply.starts_with("451 4.")),
            "{case}\nreply to {cmd:?} belongs elsewhere: {reply:?}"
        );
    }
    let log = backend.log.lock().unwrap().clone();
    for line in log.iter().filter(|l| !l.starts_with("BODY:")) {
        assert!(!line.contains("elsewhere"), "{case}\nmessage text reached the backend as a command: {line:?}");
    }
    let delivered = log.iter().filter(|l| l.starts_with("BODY:")).count();
    let refused = seen.iter().filter(|(_, r)| r.starts_with("451")).count();
    let connections = *backend.connections.lock().unwrap();
    if fault == Fault::Split {
        assert_eq!((refused, delivered, connections), (0, 2, 1), "{case}");
    } else {
        // The broken connection was given up: the client was told to retry, or a new
        // connection took over (the RSET reply is Portcullis' own).
        assert!(refused == 1 || (refused == 0 && connections >= 2), "{case}");
        assert!(delivered >= 1, "{case}");
    }
}

#[tokio::test]
async fn a_backend_out_of_step_is_dropped_at_every_step() {
    let steps =
        [Step::Greeting, Step::Ehlo, Step::Xclient, Step::Mail, Step::Rcpt, Step::Data, Step::EndOfData, Step::Rset];
    for step in steps {
        for fault in [Fault::Extra, Fault::ExtraLater, Fault::Wrong, Fault::Premature, Fault::Split] {
            if step == Step::Greeting && fault == Fault::Premature {
                continue;
            }
            let (backend, seen) = run(step, fault, false).await;
            check(step, fault, &backend, &seen);
        }
    }
}

#[tokio::test]
async fn a_backend_that_does_not_expect_a_proxy_header_is_given_up() {
    // Like Postfix without smtpd_upstream_proxy_protocol: greets at once, then answers
    // the PROXY line as an unknown command, then everything else in order.
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let log = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                stream.get_mut().write_all(b"220 plain ESMTP\r\n").await.unwrap();
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if stream.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    log.lock().unwrap().push(String::from_utf8_lossy(&line).to_string());
                    let reply: &[u8] = if line.starts_with(b"PROXY") || line.starts_with(b"\r\n") {
                        b"502 5.5.2 Error: command not recognized\r\n"
                    } else {
                        b"250 ok\r\n"
                    };
                    // Slow enough that the proxy reads the greeting alone.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if stream.get_mut().write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    for identity in ["proxy-v1", "proxy-v2"] {
        let mut c = Client::greeted(config(&[(addr, identity)], ""), OUTSIDER).await;
        c.cmd("MAIL FROM:<s@example.org>", "451 4.4.1").await;
        c.cmd("QUIT", "221").await;
    }
    let lines = got.lock().unwrap().clone();
    assert!(!lines.iter().any(|l| l.starts_with("MAIL") || l.starts_with("HELO")), "{lines:?}");
}

/// Replies to a pipelined group are matched by position, so an extra reply can answer
/// the next command of the group (as with any pipelining client). What holds: no body
/// byte goes out unless the reply taken for DATA is the backend's 354 to it, nothing of
/// a body reaches the backend as commands, and "queued" comes only from the backend's
/// reply to the dot of a message it received.
#[tokio::test]
async fn a_backend_out_of_step_in_a_pipelined_group_takes_no_message_it_did_not_answer() {
    let steps = [Step::Mail, Step::Rcpt, Step::Data, Step::EndOfData, Step::Rset];
    for step in steps {
        for fault in [Fault::Extra, Fault::ExtraLater, Fault::Wrong, Fault::Premature, Fault::Split] {
            let (backend, seen) = run(step, fault, true).await;
            let case = format!("{fault:?} at {step:?}: {seen:?}");
            let log = backend.log.lock().unwrap().clone();
            for line in log.iter().filter(|l| !l.starts_with("BODY:")) {
                assert!(!line.contains("elsewhere"), "{case}\nmessage text reached the backend as a command: {line:?}");
            }
            for (cmd, reply) in &seen {
                if reply.starts_with("354") {
                    assert!(cmd == "DATA" && reply.contains("data-tag"), "{case}\n354 not the backend's to DATA");
                }
                if reply.contains("queued-tag") {
                    assert_eq!(cmd, BODY, "{case}\n'queued' answered something else");
                }
                if cmd == BODY {
                    assert!(reply.contains("queued-tag") || reply.starts_with('4'), "{case}\nbody answered {reply:?}");
                }
            }
            let told_queued = seen.iter().filter(|(_, r)| r.contains("queued-tag")).count();
            let delivered = log.iter().filter(|l| l.starts_with("BODY:")).count();
            assert!(told_queued <= delivered && delivered >= 1, "{case}\n{log:?}");
            if fault == Fault::Split {
                assert_eq!((told_queued, *backend.connections.lock().unwrap()), (2, 1), "{case}");
            }
        }
    }
}
