//! A fast SMTP sink for bench/run.sh: accepts everything, stores nothing.
//!
//!   cargo build --release --example bench_sink
//!   target/release/examples/bench_sink 127.0.0.1:12600 proxy@127.0.0.1:12601 ...
//!
//! Every argument is an address to listen on; `proxy@ADDR` expects a PROXY header
//! (v1 or v2, told apart by their first bytes; v2 LOCAL and v1 UNKNOWN included) before
//! the greeting. Greets 220, answers EHLO with PIPELINING, 8BITMIME, XCLIENT and
//! XFORWARD, XCLIENT with a fresh 220, HELO/MAIL/RCPT/RSET/NOOP/XFORWARD with 250,
//! DATA with 354 and the end of data with 250, QUIT with 221. Pipelining-safe: every
//! complete line in the buffer is handled, and the replies to them go out in one write.
//! Bench-only: no limits, no timeouts, no checks of syntax or order.

use std::io;

use memchr::memchr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GREETING: &[u8] = b"220 sink.test ESMTP bench_sink\r\n";
const EHLO: &[u8] = b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
250-XCLIENT ADDR NAME HELO PROTO\r\n250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT\r\n";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

#[tokio::main]
async fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: bench_sink [proxy@]ADDR...");
        std::process::exit(2);
    }
    let mut tasks = Vec::new();
    for arg in args {
        let (proxy, addr) = match arg.strip_prefix("proxy@") {
            Some(addr) => (true, addr.to_string()),
            None => (false, arg),
        };
        let listener = TcpListener::bind(&addr).await?;
        tasks.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(async move {
                            let _ = session(stream, proxy).await;
                        });
                    }
                    // Out of descriptors and the like: wait a little rather than spin.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Reads more into `buf`; false once the peer closed.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.reserve(8192);
    Ok(stream.read_buf(buf).await? > 0)
}

/// Consumes a PROXY v1 or v2 header at the start of the stream.
async fn skip_proxy_header(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        match buf.first() {
            None => {}
            Some(b'\r') if buf.len() >= 16 => {
                if !buf.starts_with(V2_SIGNATURE) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad PROXY v2 signature"));
                }
                let total = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
                if buf.len() >= total {
                    buf.drain(..total);
                    return Ok(true);
                }
            }
            Some(b'P') => {
                if let Some(end) = memchr(b'\n', buf) {
                    buf.drain(..=end);
                    return Ok(true);
                }
            }
            Some(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "no PROXY header")),
        }
        if !fill(stream, buf).await? {
            return Ok(false);
        }
    }
}

async fn session(mut stream: TcpStream, proxy: bool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(8192);
    if proxy && !skip_proxy_header(&mut stream, &mut buf).await? {
        return Ok(());
    }
    stream.write_all(GREETING).await?;
    let mut out = Vec::with_capacity(1024);
    let mut in_data = false;
    loop {
        let mut start = 0;
        let mut quit = false;
        while let Some(nl) = memchr(b'\n', &buf[start..]) {
            let line = &buf[start..start + nl + 1];
            start += nl + 1;
            if in_data {
                if line == b".\r\n" || line == b".\n" {
                    in_data = false;
                    out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
                }
                continue;
            }
            let verb = line.get(..4).map(|v| v.to_ascii_uppercase());
            match verb.as_deref() {
                Some(b"EHLO") => out.extend_from_slice(EHLO),
                Some(b"HELO") => out.extend_from_slice(b"250 sink.test\r\n"),
                Some(b"XCLI") => out.extend_from_slice(GREETING),
                Some(b"DATA") => {
                    in_data = true;
                    out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                }
                Some(b"QUIT") => {
                    out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                    quit = true;
                    break;
                }
                Some(b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" | b"XFOR") => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
                _ => out.extend_from_slice(b"502 5.5.2 Error: command not recognized\r\n"),
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
        if !fill(&mut stream, &mut buf).await? {
            return Ok(());
        }
    }
}
