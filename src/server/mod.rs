//! The running proxy: listeners accept clients and apply connection rules
//! ([`listener`]), each accepted client gets a [`session::Session`], which reaches the
//! backend through an [`upstream::Upstream`]. [`health`] checks the backends,
//! [`reload`] applies a new config to the running server.

pub(crate) mod health;
pub(crate) mod limits;
pub(crate) mod listener;
pub(crate) mod log_limit;
pub(crate) mod pool;
// Public for the proxy_header fuzz target, which feeds the reader its input in pieces.
pub mod proxy_header;
pub(crate) mod reload;
pub(crate) mod session;
pub(crate) mod transparent;
pub(crate) mod upstream;

pub use listener::{Server, ServerError};
pub use reload::{ReloadError, Reloader};
