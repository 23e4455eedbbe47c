//! Portcullis: a transparent SMTP filtering proxy. It decides who may connect and who
//! may relay on the real client address, and forwards accepted mail to a backend MTA
//! that still learns that address.
//!
//! # Layout
//! - [`config`]: the TOML file, validated into a runtime [`config::Config`].
//! - [`policy`]: pure decisions: connection rules, relay rules, recipient forms.
//! - [`smtp`]: protocol pieces without I/O: commands, replies, DATA scanner, xtext.
//! - [`identity`]: telling the backend who the client is (XCLIENT, XFORWARD, PROXY).
//! - [`server`]: the client side: listeners, PROXY headers in, the client session.
//! - [`backend`]: the backend side: connections, failover, pool, health checks.
//! - [`tls`]: certificates, backend verification, the plain-then-TLS stream.
//! - [`acme`]: certificates obtained and renewed from an ACME CA, served without restart.
//! - [`auth`]: SMTP AUTH mechanisms and the users file.
//! - [`addr`]: address newtypes that keep the peer and the local address apart.
//! - [`explain`]: what the server would do with one client, for `portcullis explain`.
//! - [`screen`]: rate limits, bans, DNS lists and pregreet, before any backend spends a process.
//! - [`milter`]: content filters (the milter protocol), and messages held for them.
//! - [`recipients`]: recipient validation at RCPT (`[[recipients]]`: a file or a directory).
//! - [`admin`]: the admin endpoint (metrics, health, bans).
//! - [`metrics`], `log_limit`, [`activity`]: what every part counts, logs and keeps for
//!   the status page, and `deadline`, the timer a connection re-arms for every wait,
//!   on the ground floor.

pub(crate) mod acme;
pub(crate) mod activity;
pub mod addr;
pub mod admin;
pub mod auth;
pub(crate) mod backend;
pub mod config;
pub(crate) mod deadline;
pub mod explain;
pub(crate) mod http_endpoint;
pub mod identity;
pub(crate) mod log_limit;
pub(crate) mod metrics;
pub(crate) mod milter;
pub mod policy;
pub(crate) mod recipients;
pub(crate) mod screen;
pub mod server;
pub mod smtp;
pub(crate) mod tls;
