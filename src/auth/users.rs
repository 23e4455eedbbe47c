//! The users file: one `name:hash` per line, the hash a PHC-format argon2 string as
//! printed by `portcullis hash-password`. Blank lines and `#` comments are ignored.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected name:hash", n + 1));
            };
            if name.is_empty() {
                return Err(format!("line {}: empty user name", n + 1));
            }
            if PasswordHash::new(hash).is_err() || !hash.starts_with("$argon2") {
                return Err(format!("line {}: the hash of {name:?} is not a PHC argon2 string", n + 1));
            }
            if hashes.insert(name.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {}: user {name:?} listed twice", n + 1));
            }
        }
        Ok(Self { hashes })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Checks a password. CPU-heavy by design: run it off the async threads. Unknown
    /// users cost the same as known ones, so timing does not tell which names exist.
    pub fn verify(&self, user: &str, password: &str) -> bool {
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
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
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
        assert!(Users::parse("alice").unwrap_err().contains("line 1"));
        assert!(Users::parse("alice:plaintext").unwrap_err().contains("not a PHC argon2"));
        let hash = hash_password("x").unwrap();
        assert!(Users::parse(&format!("a:{hash}\na:{hash}")).unwrap_err().contains("twice"));
        assert!(Users::parse(&format!(":{hash}")).unwrap_err().contains("empty user"));
    }
}
