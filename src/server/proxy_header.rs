//! Reading an inbound PROXY header from a trusted load balancer: bounded in size and
//! time, strictly decoded ([`crate::identity::proxy::decode`]). What follows the header
//! is handed to the session untouched.

use crate::identity::proxy::{self, Proxied, ProxyHeaderError, V2_MAX};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::timeout;

/// How long a load balancer may take to send the whole header.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one header into `buf`; on success `buf` keeps only the bytes after it.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<Proxied, ProxyHeaderError> {
    let reading = async {
        loop {
            if !buf.is_empty()
                && let Some((proxied, used)) = proxy::decode(buf)?
            {
                let _ = buf.split_to(used);
                return Ok(proxied);
            }
            // Never read past the longest possible header.
            let room = V2_MAX.saturating_sub(buf.len()).max(1);
            buf.reserve(room);
            let mut limited = (&mut *stream).take(room as u64);
            match limited.read_buf(buf).await {
                Ok(0) => return Err(ProxyHeaderError::Malformed("connection closed inside the header".into())),
                Ok(_) => {}
                Err(e) => return Err(ProxyHeaderError::Malformed(format!("read failed: {e}"))),
            }
        }
    };
    timeout(HEADER_TIMEOUT, reading)
        .await
        .unwrap_or_else(|_| Err(ProxyHeaderError::Malformed("header not complete in time".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn header_then_smtp() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 4000 25\r\nEHLO x\r\n").await.unwrap();
        let mut buf = BytesMut::new();
        let got = read(&mut b, &mut buf).await.unwrap();
        assert_eq!(
            got,
            Proxied::Tcp { source: "192.0.2.1:4000".parse().unwrap(), destination: "192.0.2.2:25".parse().unwrap() }
        );
        assert_eq!(&buf[..], b"EHLO x\r\n");
    }

    #[tokio::test]
    async fn split_across_reads() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            read(&mut b, &mut buf).await
        });
        for part in [&b"PROX"[..], b"Y TCP4 192.0.2.1 192.0.2.2", b" 4000 25\r", b"\n"] {
            a.write_all(part).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert!(matches!(task.await.unwrap(), Ok(Proxied::Tcp { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_or_partial_headers_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"PROXY TCP4 192.0.2.1").await.unwrap();
        let mut buf = BytesMut::new();
        assert!(matches!(read(&mut b, &mut buf).await, Err(ProxyHeaderError::Malformed(m)) if m.contains("in time")));

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"PROXY TCP4 192.0.2.1").await.unwrap();
        drop(a);
        let mut buf = BytesMut::new();
        assert!(matches!(read(&mut b, &mut buf).await, Err(ProxyHeaderError::Malformed(m)) if m.contains("closed")));
    }

    #[tokio::test]
    async fn junk_is_not_a_header() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"EHLO spoofer\r\n").await.unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(read(&mut b, &mut buf).await, Err(ProxyHeaderError::Missing));
    }
}
