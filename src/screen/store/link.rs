//! The store's one connection, multiplexed: made at the first call, dropped after any
//! call that failed. The redis crate's connection manager replaces a connection on I/O
//! errors only, so after a call timed out it went on reading whatever the store sent.
//! Here a failure drops the connection, which ends its task and closes its socket; the
//! first call after the store's rest makes a new one. Replies are bounded by
//! [`Bounded`].

use super::reply::Bounded;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, RedisConnectionInfo, RedisResult};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tokio::task::AbortHandle;

pub(crate) struct Link {
    info: ConnectionInfo,
    timeout: Duration,
    max_reply: u64,
    live: Mutex<Option<Live>>,
    made: AtomicU64,
}

/// A connection and the task that drives it.
struct Live {
    conn: MultiplexedConnection,
    driver: AbortHandle,
    id: u64,
}

impl Drop for Live {
    /// The task owns the socket: ending it closes the socket, even with a reply half read
    /// or calls still waiting (they fail).
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Link {
    pub(crate) fn new(info: ConnectionInfo, timeout: Duration, max_reply: u64) -> Link {
        Link { info, timeout, max_reply, live: Mutex::new(None), made: AtomicU64::new(0) }
    }

    /// Runs `call` on the connection within the timeout (connecting first if need be);
    /// when it fails, the connection it used is dropped. Must run on the store's runtime.
    pub(crate) async fn run<T, F>(&self, call: impl FnOnce(MultiplexedConnection) -> F) -> Result<T, String>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let mut used = None;
        let attempt = async {
            let (conn, id) = self.connection().await?;
            used = Some(id);
            call(conn).await
        };
        let error = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        if let Some(id) = used {
            self.drop_connection(id).await;
        }
        Err(error)
    }

    /// The live connection and its id, made first if there is none.
    async fn connection(&self) -> RedisResult<(MultiplexedConnection, u64)> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref().filter(|l| !l.driver.is_finished()) {
            return Ok((l.conn.clone(), l.id));
        }
        let made = self.connect().await?;
        let handed = (made.conn.clone(), made.id);
        *live = Some(made);
        Ok(handed)
    }

    /// Drops connection `id` unless another has replaced it already.
    async fn drop_connection(&self, id: u64) {
        let mut live = self.live.lock().await;
        if live.as_ref().is_some_and(|l| l.id == id) {
            *live = None;
        }
    }

    async fn connect(&self) -> RedisResult<Live> {
        let settings = AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let redis = self.info.redis_settings();
        let (conn, driver) = match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                // Calls are small and waited on: no Nagle delay.
                stream.set_nodelay(true)?;
                attach(stream, redis, settings, self.max_reply).await?
            }
            ConnectionAddr::Unix(path) => {
                attach(tokio::net::UnixStream::connect(path).await?, redis, settings, self.max_reply).await?
            }
            _ => return Err((redis::ErrorKind::InvalidClientConfig, "store address not supported").into()),
        };
        Ok(Live { conn, driver, id: self.made.fetch_add(1, Ordering::Relaxed) })
    }
}

/// Sets up a connection over `stream` (authentication, database) and starts its task.
async fn attach<S>(
    stream: S,
    redis: &RedisConnectionInfo,
    settings: AsyncConnectionConfig,
    max_reply: u64,
) -> RedisResult<(MultiplexedConnection, AbortHandle)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (conn, driver) =
        MultiplexedConnection::new_with_config(redis, Bounded::new(stream, max_reply), settings).await?;
    Ok((conn, tokio::spawn(driver).abort_handle()))
}
