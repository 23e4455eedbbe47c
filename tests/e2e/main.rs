//! The black-box tests, one binary: the proxy run in-process or as its own process,
//! against real peers (Postfix, swaks, HAProxy, Dovecot, unbound, Redis, milters) and
//! scripted ones, one module per area and one harness ([`support`]). The Docker and
//! packaging tests are binaries of their own (`tests/docker.rs`, `tests/packaging.rs`),
//! to be run apart: `cargo test --test e2e`, `--test docker`, `--test packaging`.

mod support;

mod acme;
mod admin;
mod auth_flood;
mod backend_abuse;
mod cli;
mod dnsbl;
mod extensions;
mod faults;
mod fleet;
mod limits;
mod lockstep;
mod log_injection;
mod milter;
mod postfix;
mod readme;
mod recipients;
mod reload;
mod reuse;
mod roundtrip;
mod scanner;
mod screen;
mod status_page;
mod tls_auth;
mod transparent;
mod trust;
