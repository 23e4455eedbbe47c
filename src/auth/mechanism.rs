//! Decoding the AUTH command and the client's base64 responses. No I/O here; the
//! session drives the 334 exchange.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mechanism {
    Plain,
    Login,
}

/// What is wrong with an AUTH exchange; each carries its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum AuthError {
    #[error("unsupported mechanism")]
    UnknownMechanism,
    #[error("syntax error")]
    Syntax,
    #[error("cannot decode the response")]
    Undecodable,
    #[error("client cancelled")]
    Cancelled,
}

impl AuthError {
    pub(crate) fn reply(&self) -> &'static str {
        match self {
            AuthError::UnknownMechanism => "504 5.5.4 Unrecognized authentication type",
            AuthError::Syntax => "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
            AuthError::Undecodable => "501 5.5.2 Cannot decode response",
            AuthError::Cancelled => "501 5.7.0 Authentication aborted",
        }
    }
}

/// Splits `AUTH` arguments into the mechanism and an optional initial response.
pub(crate) fn parse_command(args: &str) -> Result<(Mechanism, Option<&str>), AuthError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = match words.next() {
        Some(m) if m.eq_ignore_ascii_case("PLAIN") => Mechanism::Plain,
        Some(m) if m.eq_ignore_ascii_case("LOGIN") => Mechanism::Login,
        Some(_) => return Err(AuthError::UnknownMechanism),
        None => return Err(AuthError::Syntax),
    };
    let initial = words.next();
    if words.next().is_some() {
        return Err(AuthError::Syntax);
    }
    Ok((mechanism, initial))
}

/// Decodes one client response line: `*` cancels, `=` is an empty response.
pub(crate) fn decode(line: &str) -> Result<Vec<u8>, AuthError> {
    match line {
        "*" => Err(AuthError::Cancelled),
        "=" => Ok(Vec::new()),
        _ => STANDARD.decode(line).map_err(|_| AuthError::Undecodable),
    }
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`. Returns (user, password). An authzid
/// other than the user itself is refused: nobody may act for somebody else here.
pub(crate) fn plain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut parts = response.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(pass), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Undecodable);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| AuthError::Undecodable);
    let (authzid, user, pass) = (text(authzid)?, text(user)?, text(pass)?);
    if user.is_empty() || (!authzid.is_empty() && authzid != user) {
        return Err(AuthError::Undecodable);
    }
    Ok((user, pass))
}

/// A LOGIN response (user name or password) as text.
pub(crate) fn login_text(response: &[u8]) -> Result<String, AuthError> {
    String::from_utf8(response.to_vec()).map_err(|_| AuthError::Undecodable)
}

/// Base64 of `text`, as a client sends it (for tests).
#[cfg(test)]
pub(crate) fn encode(text: &str) -> String {
    STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command() {
        assert_eq!(parse_command("PLAIN"), Ok((Mechanism::Plain, None)));
        assert_eq!(parse_command("plain AHUAcA=="), Ok((Mechanism::Plain, Some("AHUAcA=="))));
        assert_eq!(parse_command("LOGIN dQ=="), Ok((Mechanism::Login, Some("dQ=="))));
        assert_eq!(parse_command("CRAM-MD5"), Err(AuthError::UnknownMechanism));
        assert_eq!(parse_command(""), Err(AuthError::Syntax));
        assert_eq!(parse_command("PLAIN a b"), Err(AuthError::Syntax));
    }

    #[test]
    fn plain_responses() {
        assert_eq!(plain(b"\0user\0pass"), Ok(("user".into(), "pass".into())));
        assert_eq!(plain(b"user\0user\0pass"), Ok(("user".into(), "pass".into())));
        assert_eq!(plain(b"admin\0user\0pass"), Err(AuthError::Undecodable));
        assert_eq!(plain(b"\0\0pass"), Err(AuthError::Undecodable));
        assert_eq!(plain(b"user\0pass"), Err(AuthError::Undecodable));
        assert_eq!(plain(b"\0u\0p\0x"), Err(AuthError::Undecodable));
        assert_eq!(plain(b"\0u\0\xff"), Err(AuthError::Undecodable));
    }

    #[test]
    fn decoding() {
        assert_eq!(decode("*"), Err(AuthError::Cancelled));
        assert_eq!(decode("="), Ok(vec![]));
        assert_eq!(decode("dXNlcg=="), Ok(b"user".to_vec()));
        assert_eq!(decode("not base64!"), Err(AuthError::Undecodable));
        assert_eq!(encode("Username:"), "VXNlcm5hbWU6");
    }
}
