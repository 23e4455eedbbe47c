//! SMTP protocol pieces, free of I/O: command parsing, replies, backend capabilities,
//! what a client is offered (EHLO), MAIL and RCPT parameters, the DATA scanner, xtext,
//! and which replies fit which command.

pub mod bdat;
pub(crate) mod capabilities;
pub mod command;
pub(crate) mod data;
pub mod dsn;
pub mod ehlo;
pub mod mail;
pub mod rcpt;
pub(crate) mod reply;
pub mod sequence;
pub mod xtext;

pub use capabilities::Capabilities;
pub use command::{Command, CommandError, Param};
pub use data::{BareLf, DataScanner, Scan, Violation};
pub use reply::{Reply, ReplyError, ReplyParser};
pub(crate) use sequence::Asked;
