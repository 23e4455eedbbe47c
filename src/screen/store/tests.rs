//! The store against a fake one on 127.0.0.1 that speaks just enough RESP for
//! connection setup, then answers a call badly: a hostile or silent store must cost
//! little memory, lose its connection, and leave the caller on local limits.

use super::*;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;

/// Bytes the fake streams at most before it decides the client will never stop reading.
const CAP: u64 = 16 << 20;

/// How the fake answers the first command after connection setup.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// `$1000000000`, then bytes as fast as the client reads them.
    HugeBulk,
    /// A status line that never ends.
    EndlessLine,
    /// Nothing, ever.
    Silent,
    /// `:1` to every command, as a real store would to EXISTS.
    One,
}

/// What became of a connection the fake answered badly.
#[derive(Debug)]
enum Fate {
    /// The client closed it, `sent` bytes into the answer.
    Closed { sent: u64 },
    /// Still open after `sent` bytes: the fake gave up.
    StillOpen { sent: u64 },
}

/// A fake store whose n-th connection gets `answers[n]` (later ones [`Answer::One`]);
/// each bad answer reports its connection's fate.
async fn fake_store(answers: Vec<Answer>, cap: u64) -> (SocketAddr, mpsc::UnboundedReceiver<Fate>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (fates, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((stream, _)) = listener.accept().await else { return };
            let answer = answers.get(n).copied().unwrap_or(Answer::One);
            tokio::spawn(serve(stream, answer, cap, fates.clone()));
        }
    });
    (addr, rx)
}

async fn serve(stream: tokio::net::TcpStream, answer: Answer, cap: u64, fates: mpsc::UnboundedSender<Fate>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    while let Some(command) = read_command(&mut read).await {
        let fate = match (command.as_str(), answer) {
            ("CLIENT" | "SELECT" | "AUTH" | "HELLO", _) => {
                write.write_all(b"+OK\r\n").await.unwrap();
                continue;
            }
            (_, Answer::One) => {
                write.write_all(b":1\r\n").await.unwrap();
                continue;
            }
            (_, Answer::HugeBulk) => stream_out(&mut write, b"$1000000000\r\n", cap).await,
            (_, Answer::EndlessLine) => stream_out(&mut write, b"+", cap).await,
            (_, Answer::Silent) => {
                // Only the client closing ends this read.
                let _ = read.read(&mut [0; 64]).await;
                Fate::Closed { sent: 0 }
            }
        };
        let _ = fates.send(fate);
        return;
    }
}

/// Writes `head` and then `x`s until the client closes or `cap` bytes went out.
async fn stream_out(write: &mut tokio::net::tcp::OwnedWriteHalf, head: &[u8], cap: u64) -> Fate {
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0u64;
    if write.write_all(head).await.is_err() {
        return Fate::Closed { sent };
    }
    while sent < cap {
        if write.write_all(&chunk).await.is_err() {
            return Fate::Closed { sent };
        }
        sent += chunk.len() as u64;
    }
    Fate::StillOpen { sent }
}

/// The name of the next command (a RESP array of bulk strings); `None` at the end.
async fn read_command(read: &mut BufReader<OwnedReadHalf>) -> Option<String> {
    let count = header(read, '*').await?;
    let mut words = Vec::new();
    for _ in 0..count {
        let len = header(read, '$').await?;
        let mut word = vec![0; len + 2];
        read.read_exact(&mut word).await.ok()?;
        word.truncate(len);
        words.push(word);
    }
    Some(String::from_utf8_lossy(words.first()?).to_ascii_uppercase())
}

async fn header(read: &mut BufReader<OwnedReadHalf>, kind: char) -> Option<usize> {
    let mut line = String::new();
    if read.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    line.strip_prefix(kind)?.trim_end().parse().ok()
}

fn config(addr: SocketAddr) -> StoreConfig {
    StoreConfig {
        url: format!("redis://{addr}/0"),
        timeout: Duration::from_millis(200),
        prefix: "t:".into(),
        max_reply_size: super::DEFAULT_STORE_MAX_REPLY,
    }
}

fn client() -> IpNet {
    "192.0.2.1/32".parse().unwrap()
}

/// The call fails open at once, the fake sees its connection closed long before `CAP`,
/// the store rests, and after the rest a new connection serves.
async fn hostile(answer: Answer) {
    let (addr, mut fates) = fake_store(vec![answer], CAP).await;
    let store = Store::start(&config(addr)).unwrap();
    let started = Instant::now();
    assert_eq!(store.passed(client()).await, None, "{answer:?}: fails open");
    assert!(started.elapsed() < Duration::from_secs(1), "{answer:?}: within the timeout");
    match tokio::time::timeout(Duration::from_secs(5), fates.recv()).await {
        Ok(Some(Fate::Closed { sent })) => assert!(sent < CAP, "{answer:?}: closed only after {sent} bytes"),
        Ok(Some(Fate::StillOpen { sent })) => panic!("{answer:?}: the connection still open after {sent} bytes"),
        Ok(None) | Err(_) => panic!("{answer:?}: the store's connection was not dropped"),
    }
    let again = Instant::now();
    assert_eq!(store.passed(client()).await, None, "{answer:?}: resting, local limits");
    assert!(again.elapsed() < Duration::from_millis(50), "{answer:?}: resting costs no wait");
    *store.down_until.lock().unwrap() = None;
    assert_eq!(store.passed(client()).await, Some(true), "{answer:?}: a new connection serves");
}

#[tokio::test]
async fn a_huge_bulk_reply_drops_the_connection_and_fails_open() {
    hostile(Answer::HugeBulk).await;
}

#[tokio::test]
async fn an_endless_line_drops_the_connection_and_fails_open() {
    hostile(Answer::EndlessLine).await;
}

#[tokio::test]
async fn the_failure_names_the_bound() {
    let (addr, _fates) = fake_store(vec![Answer::HugeBulk], CAP).await;
    let info = redis::Client::open(config(addr).url).unwrap().get_connection_info().clone();
    let link = Link::new(info, Duration::from_secs(5), 4096);
    let exists =
        |mut c: MultiplexedConnection| async move { redis::cmd("EXISTS").arg("k").query_async::<bool>(&mut c).await };
    let error = link.run(exists).await.unwrap_err();
    assert!(error.contains("max_reply_size (4096 bytes)"), "{error}");
}

#[tokio::test]
async fn a_call_that_times_out_drops_the_connection() {
    hostile(Answer::Silent).await;
}

/// Resident memory at its peak, from `/proc/self/status`.
fn peak_memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: unknown").to_string()
}

/// The figure for docs/security.md: this process's peak memory while a store answers
/// `$1000000000` and streams all of it. Run alone:
/// `cargo test --lib store::tests::peak_memory -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement; may stream a gigabyte"]
async fn peak_memory_with_a_hostile_store() {
    let (addr, mut fates) = fake_store(vec![Answer::HugeBulk], 1_000_000_000).await;
    let store = Store::start(&config(addr)).unwrap();
    let before = peak_memory();
    assert_eq!(store.passed(client()).await, None);
    let fate = tokio::time::timeout(Duration::from_secs(120), fates.recv()).await;
    // What the kernel still holds reaches the client too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("before the call {before}; after {}; the store's connection: {fate:?}", peak_memory());
}
