//! The backend side: a connection to a backend ([`upstream::Upstream`]: failover, the
//! identity step, lock step with its replies), connections kept between sessions
//! ([`pool`]), active health checks ([`health`]) and connecting from the client's own
//! address ([`transparent`]). What is live about each backend (slots, health, what it
//! offered) is in [`registry`], keyed by address; the config stays plain data.

pub(crate) mod health;
pub(crate) mod pool;
pub(crate) mod registry;
pub(crate) mod transparent;
pub(crate) mod upstream;
