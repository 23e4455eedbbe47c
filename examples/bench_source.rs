//! A pipelining SMTP load generator for bench/run.sh (`SOURCE=pipelined`): what an MTA
//! such as Postfix's smtp client sends to a server that offers PIPELINING, where
//! Postfix's smtp-source waits for every reply.
//!
//!   cargo build --release --example bench_source
//!   target/release/examples/bench_source SESSIONS MESSAGES SIZE 127.0.0.1:PORT
//!
//! SESSIONS connections at a time, one message each (as `smtp-source -s SESSIONS -m
//! MESSAGES -l SIZE`): greeting, EHLO, then MAIL, RCPT and DATA in one write, the body
//! of SIZE bytes with the final dot in one write once the 354 came, QUIT. Prints the
//! number of messages whose reply to the dot was 2xx and of those that failed; exits
//! 1 when any failed. Bench-only: no TLS, no timeouts beyond the kernel's.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sessions, messages, size, target] = &args[..] else {
        eprintln!("usage: bench_source SESSIONS MESSAGES SIZE HOST:PORT");
        std::process::exit(2);
    };
    let (sessions, messages, size): (u64, u64, usize) =
        (sessions.parse().unwrap(), messages.parse().unwrap(), size.parse().unwrap());
    let line = [b"x".repeat(70), b"\r\n".to_vec()].concat();
    let mut body = b"Subject: bench\r\n\r\n".to_vec();
    while body.len() + line.len() <= size {
        body.extend_from_slice(&line);
    }
    body.extend_from_slice(b".\r\n");
    let body: Arc<[u8]> = body.into();
    let next = Arc::new(AtomicU64::new(0));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (next, ok, failed, body, target) = (next.clone(), ok.clone(), failed.clone(), body.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                match message(&target, &body).await {
                    Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(false) | Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("{ok} delivered, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// One connection, one message; true when the reply to the dot was 2xx. MAIL, RCPT
/// and DATA go in one write when the server offers PIPELINING, else one at a time.
async fn message(target: &str, body: &[u8]) -> io::Result<bool> {
    let mut stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let greeting = reply(&mut stream, &mut buf).await?;
    stream.write_all(b"EHLO source.bench.test\r\n").await?;
    let ehlo = reply(&mut stream, &mut buf).await?;
    if greeting[0] != b'2' || ehlo[0] != b'2' {
        return Ok(false);
    }
    let group: [&[u8]; 3] = [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n"];
    let pipelining = ehlo.windows(10).any(|w| w.eq_ignore_ascii_case(b"PIPELINING"));
    if pipelining {
        stream.write_all(&group.concat()).await?;
    }
    for (i, command) in group.iter().enumerate() {
        if !pipelining {
            stream.write_all(command).await?;
        }
        let r = reply(&mut stream, &mut buf).await?;
        if r[0] != if i == 2 { b'3' } else { b'2' } {
            return Ok(false);
        }
    }
    stream.write_all(body).await?;
    let done = reply(&mut stream, &mut buf).await?;
    stream.write_all(b"QUIT\r\n").await?;
    let _ = reply(&mut stream, &mut buf).await;
    Ok(done[0] == b'2')
}

/// Reads one complete reply (every line of it).
async fn reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut start = 0;
    loop {
        // A reply ends with a line whose fourth byte is not '-'.
        while let Some(end) = buf[start..].iter().position(|&b| b == b'\n').map(|i| start + i) {
            let line = &buf[start..=end];
            start = end + 1;
            if line.len() < 4 || line[3] != b'-' {
                return Ok(buf.drain(..start).collect());
            }
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}
