//! mosquitto password files: `user:$7$iterations$salt$hash` (PBKDF2-HMAC-
//! SHA512, mosquitto 2.x) and `user:$6$salt$hash` (salted SHA-512,
//! mosquitto 1.x). Plaintext lines are refused: a broker that accepted them
//! would quietly keep passwords readable on disk.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::{digest, pbkdf2};

use super::AuthFileError;

/// mosquitto_passwd's defaults for new `$7$` hashes.
pub const ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    Pbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    SaltedSha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl Hash {
    fn parse(s: &str) -> Result<Hash, String> {
        let b64 = |part: &str, what: &str| {
            STANDARD
                .decode(part)
                .map_err(|e| format!("{what} is not base64: {e}"))
        };
        if let Some(rest) = s.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iter), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a $7$ hash has the form $7$iterations$salt$hash".into());
            };
            let iterations = iter
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| format!("bad iteration count `{iter}`"))?;
            Ok(Hash::Pbkdf2Sha512 {
                iterations,
                salt: b64(salt, "salt")?,
                hash: b64(hash, "hash")?,
            })
        } else if let Some(rest) = s.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("a $6$ hash has the form $6$salt$hash".into());
            };
            Ok(Hash::SaltedSha512 {
                salt: b64(salt, "salt")?,
                hash: b64(hash, "hash")?,
            })
        } else {
            Err("plaintext password (hash the file with `raftmq passwd -U FILE`)".into())
        }
    }

    fn verify(&self, password: &str) -> bool {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password.as_bytes(),
                hash,
            )
            .is_ok(),
            Hash::SaltedSha512 { salt, hash } => {
                let mut ctx = digest::Context::new(&digest::SHA512);
                ctx.update(password.as_bytes());
                ctx.update(salt);
                let got = ctx.finish();
                // Compare without an early exit, so timing tells nothing.
                got.as_ref().len() == hash.len()
                    && got
                        .as_ref()
                        .iter()
                        .zip(hash)
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            }
        }
    }
}

/// A `$7$` hash of `password` with a fresh random salt, as mosquitto_passwd
/// writes it.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; SALT_LEN] = rand::random();
    hash_with_salt(password, &salt, ITERATIONS)
}

fn hash_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; HASH_LEN];
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "$7${}${}${}",
        iterations,
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
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
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| AuthFileError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected `username:hash`".into()))?;
            if user.is_empty() {
                return Err(err("empty username".into()));
            }
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
