//! mosquitto password files: `user:$7$iterations$salt$hash` (PBKDF2-HMAC-
//! SHA512, mosquitto 2.x) and `user:$6$salt$hash` (salted SHA-512,
//! mosquitto 1.x). Plaintext lines are refused: a broker that accepted them
//! would quietly keep passwords readable on disk.

use std::collections::HashMap;
use std::path::Path;

use raftmq_shared::passwd::{self, Hash};

use super::AuthFileError;

/// A `$7$` hash of `password` with a fresh random salt, as mosquitto_passwd
/// writes it.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; passwd::SALT_LEN] = rand::random();
    passwd::hash_with_salt(password, &salt)
}

/// Users and their password hashes.
#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, AuthFileError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let err = |e: passwd::HashError| AuthFileError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            };
            let Some(entry) = passwd::parse_entry(line) else {
                continue;
            };
            let (user, hash) = entry.map_err(err)?;
            let hash = Hash::parse(hash).map_err(err)?;
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile { users })
    }

    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.users.get(user).is_some_and(|h| h.verify(password))
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_round_trip() {
        let h = hash_password("s3cret");
        assert!(h.starts_with("$7$101$"));
        let f = PasswordFile::parse(&format!("alice:{h}\n"), Path::new("pw")).unwrap();
        assert!(f.verify("alice", "s3cret"));
        assert!(!f.verify("alice", "wrong"));
        assert!(!f.verify("bob", "s3cret"));
    }

    #[test]
    fn known_sha512_vector() {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        use ring::digest;
        // SHA-512("password" || "salt"), the mosquitto 1.x construction.
        let salt = b"salt";
        let mut ctx = digest::Context::new(&digest::SHA512);
        ctx.update(b"password");
        ctx.update(salt);
        let hash = ctx.finish();
        let line = format!(
            "u:$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(hash.as_ref())
        );
        let f = PasswordFile::parse(&line, Path::new("pw")).unwrap();
        assert!(f.verify("u", "password"));
        assert!(!f.verify("u", "Password"));
    }

    #[test]
    fn plaintext_and_garbage_name_their_line() {
        let e = PasswordFile::parse("# c\n\nalice:plain\n", Path::new("/etc/pw")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/etc/pw:3: plaintext"), "{msg}");
        let e = PasswordFile::parse("bob\n", Path::new("pw")).unwrap_err();
        assert!(e.to_string().contains("pw:1"), "{e}");
        let e = PasswordFile::parse("x:$7$0$AA==$AA==\n", Path::new("pw")).unwrap_err();
        assert!(e.to_string().contains("iteration"), "{e}");
    }
}
