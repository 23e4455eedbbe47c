//! The running proxy: listeners accept clients and apply connection rules
//! ([`listener`]), each accepted client gets a [`session::Session`], which reaches the
//! backend through an [`upstream::Upstream`]. [`health`] checks the backends,
//! [`reload`] applies a new config to the running server.

pub mod health;
pub mod limits;
pub mod listener;
mod log_limit;
pub mod proxy_header;
pub mod reload;
pub mod session;
pub mod transparent;
pub mod upstream;

pub use listener::{Server, ServerError};
pub use reload::{ReloadError, Reloader};
