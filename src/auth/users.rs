//! The users file: one `name:hash` per line, the hash a PHC-format argon2 string as
//! printed by `portcullis hash-password`. Blank lines and `#` comments are ignored.
//! A user name is one word: no whitespace, no control characters, no `:`, and no `#`
//! at its start (such a line would be read as a comment).

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use std::collections::HashMap;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum UsersError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: String, error: Box<UsersError> },
    #[error("line {0}: {1}")]
    Line(usize, LineError),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// What is wrong with one line of the users file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineError {
    #[error("expected name:hash")]
    NoColon,
    #[error("{0:?}: {1}")]
    Name(String, NameError),
    #[error("the hash of {0:?} is not a PHC argon2 string")]
    NotArgon2(String),
    #[error("user {0:?} listed twice")]
    Twice(String),
}

/// Why a name cannot be a user name in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("a user name may not be empty")]
    Empty,
    #[error("a user name may not start with '#' (the line would be a comment)")]
    Comment,
    #[error("a user name may not hold ':'")]
    Colon,
    #[error("a user name may not hold whitespace or control characters")]
    Space,
}

/// Why `name` cannot be a user name in the file, if it cannot.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        Err(NameError::Empty)
    } else if name.starts_with('#') {
        Err(NameError::Comment)
    } else if name.contains(':') {
        Err(NameError::Colon)
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(NameError::Space)
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    pub(crate) fn load(path: &Path) -> Result<Self, UsersError> {
        let path_text = || path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read { path: path_text(), source })?;
        Self::parse(&text).map_err(|error| UsersError::Parse { path: path_text(), error: Box::new(error) })
    }

    pub(crate) fn parse(text: &str) -> Result<Self, UsersError> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: LineError| UsersError::Line(n + 1, what);
            let Some((name, hash)) = line.split_once(':') else {
                return Err(bad(LineError::NoColon));
            };
            check_name(name).map_err(|e| bad(LineError::Name(name.to_string(), e)))?;
            if PasswordHash::new(hash).is_err() || !hash.starts_with("$argon2") {
                return Err(bad(LineError::NotArgon2(name.to_string())));
            }
            if hashes.insert(name.to_string(), hash.to_string()).is_some() {
                return Err(bad(LineError::Twice(name.to_string())));
            }
        }
        Ok(Self { hashes })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Users added, removed, and kept with another password, since `old`.
    pub(crate) fn compared_with(&self, old: &Users) -> (usize, usize, usize) {
        let added = self.hashes.keys().filter(|u| !old.hashes.contains_key(*u)).count();
        let removed = old.hashes.keys().filter(|u| !self.hashes.contains_key(*u)).count();
        let changed = self.hashes.iter().filter(|(u, h)| old.hashes.get(*u).is_some_and(|o| o != *h)).count();
        (added, removed, changed)
    }

    /// Whether a login as `user` checked against `old` still stands here: the user is
    /// here with the same password.
    pub(crate) fn still_admits(&self, old: &Users, user: &str) -> bool {
        self.hashes.get(user).is_some_and(|hash| old.hashes.get(user) == Some(hash))
    }

    /// Checks a password. CPU-heavy by design: run it off the async threads. Unknown
    /// users cost the same as known ones, so timing does not tell which names exist.
    pub(crate) fn verify(&self, user: &str, password: &str) -> bool {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY.get_or_init(|| hash_password("not a password").expect("hashing works")).as_str(), false),
        };
        let ok =
            PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
        ok && known
    }
}

/// A PHC argon2id hash of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let users = Users::parse(&format!("# staff\n\nalice:{hash}\n")).unwrap();
        assert_eq!(users.len(), 1);
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "S3cret"));
        assert!(!users.verify("bob", "s3cret"));
    }

    #[test]
    fn bad_files() {
        let err = |text: &str| Users::parse(text).unwrap_err().to_string();
        assert!(err("alice").contains("line 1"));
        assert!(err("alice:plaintext").contains("not a PHC argon2"));
        let hash = hash_password("x").unwrap();
        assert!(err(&format!("a:{hash}\na:{hash}")).contains("twice"));
        assert!(err(&format!(":{hash}")).contains("may not be empty"));
        assert!(err(&format!("a b:{hash}")).contains("whitespace"));
        assert!(err(&format!("a\u{1b}b:{hash}")).contains("control"));
    }

    #[test]
    fn names_that_the_file_could_not_hold() {
        for name in ["#ops", "", "a:b", "a b", "tab\there", "esc\u{1b}", "nl\n"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
        for name in ["ops#1", "alice@example.com", "bob"] {
            assert!(check_name(name).is_ok(), "{name:?}");
        }
    }
}
