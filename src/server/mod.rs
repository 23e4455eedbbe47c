//! The client side of the running proxy: listeners accept clients and apply connection
//! rules ([`listener`]), PROXY headers are read where expected ([`proxy_header`]), each
//! accepted client gets a [`session::Session`], which reaches the backend through
//! [`crate::backend`]; [`reload`] applies a new config to the running server.

pub(crate) mod limits;
pub(crate) mod listener;
// Public for the proxy_header fuzz target, which feeds the reader its input in pieces.
pub mod proxy_header;
pub(crate) mod reload;
pub(crate) mod session;
pub(crate) mod shared;

pub use listener::Server;
pub use reload::{ReloadError, Reloader};
