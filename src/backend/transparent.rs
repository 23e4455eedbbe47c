//! Transparent identity: connecting to the backend *from the client's own address*, for
//! backends and scanners that understand neither PROXY nor XCLIENT. A loopback client
//! address is local, so a plain bind works; any other address needs `IP_TRANSPARENT`
//! (CAP_NET_ADMIN) and routing that brings the backend's replies back to this host
//! (see docs/deployment.md).

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};

/// Fails unless this process may set `IP_TRANSPARENT`: checked at start, not at the
/// first message.
pub(crate) fn check_permitted() -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_ip_transparent_v4(true)
}

/// Connects to `backend` with `client` as the source address (any free port).
pub(crate) async fn connect(client: IpAddr, backend: SocketAddr) -> io::Result<TcpStream> {
    if client.is_ipv4() != backend.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("client {client} and backend {backend} are of different address families"),
        ));
    }
    let socket = Socket::new(Domain::for_address(backend), Type::STREAM, Some(Protocol::TCP))?;
    if !client.is_loopback() {
        match client {
            IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
            IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(client, 0).into())?;
    TcpSocket::from_std_stream(socket.into()).connect(backend).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_client_address_is_the_source() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _stream = connect("127.0.0.77".parse().unwrap(), addr).await.unwrap();
        let (_, seen) = listener.accept().await.unwrap();
        assert_eq!(seen.ip(), "127.0.0.77".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn families_must_match() {
        let err = connect("::1".parse().unwrap(), "127.0.0.1:25".parse().unwrap()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
