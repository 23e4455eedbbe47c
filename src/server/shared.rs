//! What the workers, the control thread and reloads share: the listening sockets
//! ([`Bound`]), the live config and state ([`Shared`]), and how starting can fail
//! ([`ServerError`]). Listeners and reloads both build on it; neither on the other.

use super::limits::ConnectionLimits;
use crate::admin::Status;
use crate::backend::registry::Registry;
use crate::config::Live;
use crate::recipients::Recipients;
use crate::screen::Screen;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 1024;

#[derive(Debug, Error)]
pub enum ServerError {
    // The cause is in the message, so it is not also a `source` (printed twice then).
    #[error("listener {name:?}: cannot listen on {addr}: {error}")]
    Bind { name: String, addr: SocketAddr, error: io::Error },
    #[error("admin endpoint: cannot listen on {addr}: {error}")]
    Admin { addr: SocketAddr, error: io::Error },
    #[error("cannot start worker thread: {0}")]
    Worker(io::Error),
    #[error(
        "a backend uses identity = \"transparent\", which needs the IP_TRANSPARENT socket option \
         (root or CAP_NET_ADMIN): {0}"
    )]
    Transparent(io::Error),
    #[error("[store] redis: {0}")]
    Store(redis::RedisError),
    #[error("[acme] http_bind: cannot listen on {addr}: {error}")]
    AcmeHttp { addr: SocketAddr, error: io::Error },
    #[error("[[recipients]]: {0}")]
    Recipients(crate::recipients::RecipientsError),
}

/// One listening socket, shared by every worker. A reload that keeps a listener keeps
/// its `Bound`; one that removes it cancels `stop`, which ends its accept loops (not
/// its sessions).
pub(crate) struct Bound {
    pub(crate) name: String,
    /// The address as configured (port 0 stays 0), to recognise it in a new config.
    pub(crate) configured: SocketAddr,
    pub(crate) socket: std::net::TcpListener,
    pub(crate) stop: CancellationToken,
}

impl Bound {
    pub(crate) fn new(name: &str, configured: SocketAddr) -> Result<Self, ServerError> {
        let socket = listen(configured).map_err(|error| ServerError::Bind {
            name: name.to_string(),
            addr: configured,
            error,
        })?;
        Ok(Self { name: name.to_string(), configured, socket, stop: CancellationToken::new() })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket has an address")
    }
}

pub(crate) type ListenerSet = Arc<Vec<Arc<Bound>>>;

/// What the workers, the control thread and reloads share.
pub(crate) struct Shared {
    pub(crate) live: Arc<Live>,
    /// The backends' live state, kept across reloads by address.
    pub(crate) backends: Arc<Registry>,
    pub(crate) screen: Arc<Screen>,
    /// The recipient tables, live (files read, directory connections); rebuilt by reloads.
    pub(crate) recipients: Arc<Recipients>,
    pub(crate) limits: Arc<ConnectionLimits>,
    pub(crate) listeners: watch::Sender<ListenerSet>,
    pub(crate) status: Arc<Status>,
    /// The certificates of `[acme]`, when configured (kept for the process: `[acme]`
    /// changes need a restart).
    pub(crate) certs: Option<Arc<crate::acme::Certificates>>,
    /// One reload at a time.
    pub(crate) reloading: std::sync::Mutex<()>,
}

/// A listening socket. Its accepted connections inherit `TCP_NODELAY` (Linux), so a
/// reply goes out when written, without one more system call per connection.
pub(crate) fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_connections_send_without_delay() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY inherited from the listener");
    }
}
