//! Pure decisions, no I/O: which connections are accepted, which recipients may be
//! relayed, and how a recipient path is read for that decision.

pub mod address;
pub mod domains;
pub mod relay;
pub mod rules;

pub use address::{Destination, PathError};
pub use domains::DomainSet;
pub use relay::{RelayPolicy, RelayVerdict};
pub use rules::{Action, ConnectionRules, ConnectionVerdict, Rule};
