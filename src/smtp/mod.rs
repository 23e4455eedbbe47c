//! SMTP protocol pieces, free of I/O: command parsing, replies, backend capabilities,
//! the DATA scanner, xtext, and which replies fit which command.

pub mod capabilities;
pub mod command;
pub mod data;
pub mod mail;
pub mod reply;
pub mod sequence;
pub mod xtext;

pub use capabilities::Capabilities;
pub use command::{Command, CommandError, Param};
pub use data::{BareLf, DataScanner, Scan, Violation};
pub use reply::{Reply, ReplyError, ReplyParser};
pub use sequence::Asked;
