//! SMTP AUTH (RFC 4954): the PLAIN and LOGIN mechanisms, pure decoding of what the
//! client sends ([`mechanism`]), and the users file of argon2 hashes ([`users`]).

pub mod mechanism;
pub mod users;
pub mod verifier;

pub use mechanism::{AuthError, Mechanism};
pub use users::Users;
