//! SMTP AUTH (RFC 4954): the PLAIN and LOGIN mechanisms, pure decoding of what the
//! client sends ([`mechanism`]), and the users file of argon2 hashes ([`users`]).

pub(crate) mod mechanism;
pub mod users;
pub(crate) mod verifier;

pub(crate) use users::Users;
