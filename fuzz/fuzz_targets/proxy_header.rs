//! The PROXY header reader. Properties: a v1 header is never taken beyond the spec's
//! 107 bytes, nor a v2 one beyond its declared length; the decision does not depend on
//! how the bytes arrive (each prefix is "incomplete" or already the final answer, and
//! the async reader fed in pieces agrees, leaving exactly the bytes after the header);
//! the addresses decoded are the bytes' own (what the library's v1/v2 encoder writes
//! for them), and what it encodes for them decodes back to the same client.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::addr::{ClientAddr, LocalAddr, normalize};
use portcullis::identity::proxy::{self, Proxied, ProxyHeaderError, V1_MAX, V2_MAX};
use portcullis::server::proxy_header;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

type Decoded = Result<Option<(Proxied, usize)>, ProxyHeaderError>;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime")
});

fuzz_target!(|bytes: &[u8]| {
    // Twice the longest header is room enough for every decision; the prefix scan
    // below is quadratic.
    let bytes = &bytes[..bytes.len().min(2 * V2_MAX)];
    let answer = first_answer(bytes);
    let whole = proxy::decode(bytes);
    assert_eq!(whole, answer.clone().map_or(Ok(None), |(_, a)| a));
    // The reader reads at most V2_MAX bytes before it decides: it never waits for more.
    if bytes.len() >= V2_MAX || bytes.starts_with(b"PROXY ") && bytes.len() >= V1_MAX {
        assert_ne!(whole, Ok(None));
    }
    for sizes in [vec![], vec![1; bytes.len()], bytes.iter().map(|&b| usize::from(b % 16) + 1).collect()] {
        reader_agrees(bytes, sizes, &answer);
    }
    if let Ok(Some((proxied, used))) = whole {
        let header = &bytes[..used];
        if header.starts_with(b"PROXY ") {
            assert!(used <= V1_MAX, "v1 header of {used} bytes");
            assert!(header.ends_with(b"\r\n"));
        } else {
            assert_eq!(used, 16 + usize::from(u16::from_be_bytes([header[14], header[15]])));
            assert!(used <= V2_MAX);
        }
        if let Proxied::Tcp { source, destination } = proxied {
            addresses_are_the_headers(header, source, destination);
            encodings_name_the_same_client(source, destination);
        }
    }
});

/// Decodes every prefix: the first that is not "incomplete" (and where) is the answer,
/// and every longer prefix gives the same one.
fn first_answer(bytes: &[u8]) -> Option<(usize, Decoded)> {
    let mut answer: Option<(usize, Decoded)> = None;
    for k in 0..=bytes.len() {
        let got = proxy::decode(&bytes[..k]);
        match &answer {
            Some((at, first)) => assert_eq!(&got, first, "prefix of {k} bytes changed the answer given at {at}"),
            None if got != Ok(None) => answer = Some((k, got)),
            None => {}
        }
    }
    answer
}

/// Hands out the input one piece per read (the last size repeating), then end of stream.
struct Pieces<'a> {
    rest: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let size = this.sizes.get(this.next).copied().unwrap_or(usize::MAX);
        this.next += 1;
        let n = size.min(this.rest.len()).min(buf.remaining());
        buf.put_slice(&this.rest[..n]);
        this.rest = &this.rest[n..];
        Poll::Ready(Ok(()))
    }
}

/// The server's reader, fed in pieces of `sizes`, reaches the answer of the prefixes,
/// and what it keeps after the header plus what it left unread is the rest of the input.
fn reader_agrees(bytes: &[u8], sizes: Vec<usize>, answer: &Option<(usize, Decoded)>) {
    let mut stream = Pieces { rest: bytes, sizes, next: 0 };
    let mut buf = BytesMut::new();
    let got = RUNTIME.block_on(proxy_header::read(&mut stream, &mut buf));
    match answer {
        Some((_, Ok(Some((proxied, used))))) => {
            assert_eq!(got, Ok(*proxied));
            assert_eq!([&buf[..], stream.rest].concat(), &bytes[*used..]);
        }
        Some((_, Err(e))) => assert_eq!(got.as_ref(), Err(e)),
        // Every prefix incomplete: the stream ended inside the header.
        _ => assert!(matches!(got, Err(ProxyHeaderError::Malformed(_)))),
    }
}

/// The decoded addresses are the ones in the header, as the library's encoder writes
/// them: byte for byte in v2 (signature, command, family, address block) and in a v1
/// TCP4 line; a v1 TCP6 line may spell its addresses otherwise, so words are compared
/// there. Mapped addresses are left out: the encoder writes them normalised.
fn addresses_are_the_headers(header: &[u8], source: SocketAddr, destination: SocketAddr) {
    if normalize(source) != source || normalize(destination) != destination {
        return;
    }
    let (client, local) = (ClientAddr::new(source), LocalAddr::new(destination));
    if header.starts_with(b"PROXY ") {
        let encoded = proxy::v1_header(client, local);
        let words =
            |line: &[u8]| String::from_utf8_lossy(line).trim_end().split(' ').map(String::from).collect::<Vec<_>>();
        let (got, want) = (words(header), words(&encoded));
        assert_eq!(got.len(), 6);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let same_ip = (2..4).contains(&i) && g.parse::<IpAddr>().ok() == w.parse::<IpAddr>().ok();
            assert!(g == w || same_ip && source.is_ipv6(), "word {i}: {g:?} decoded as {w:?}");
        }
    } else {
        let encoded = proxy::v2_header(client, local);
        assert_eq!(header[..14], encoded[..14], "signature, command or family");
        assert_eq!(header[16..encoded.len()], encoded[16..], "address block");
    }
}

/// What the library sends a backend for this client (v1 and v2) decodes back to it.
fn encodings_name_the_same_client(source: SocketAddr, destination: SocketAddr) {
    let (client, local) = (ClientAddr::new(source), LocalAddr::new(destination));
    for encoded in [proxy::v1_header(client, local), proxy::v2_header(client, local)] {
        match proxy::decode(&encoded) {
            Ok(Some((Proxied::Tcp { source: s, destination: d }, used))) => {
                assert_eq!(used, encoded.len());
                assert_eq!((normalize(s), normalize(d)), (client.socket(), local.socket()));
            }
            other => panic!("{client} -> {local} encoded as {encoded:?}, decoded as {other:?}"),
        }
    }
}
