//! The running proxy: listeners accept clients and apply connection rules
//! ([`listener`]), each accepted client gets a [`session::Session`], which reaches the
//! backend through an [`upstream::Upstream`].

pub mod limits;
pub mod listener;
pub mod proxy_header;
pub mod session;
pub mod transparent;
pub mod upstream;

pub use listener::{Server, ServerError};
