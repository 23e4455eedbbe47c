//! Pure decisions, no I/O: which connections are accepted, which recipients may be
//! relayed, and how a recipient path is read for that decision.

pub mod address;
pub mod domains;
pub(crate) mod relay;
pub(crate) mod rules;

pub(crate) use address::Destination;
pub(crate) use domains::DomainSet;
pub(crate) use relay::{RelayPolicy, RelayVerdict};
pub(crate) use rules::{Action, ConnectionRules, Rule};
