//! mosquitto password files: lines of `user:$7$iterations$salt$hash`
//! (PBKDF2-HMAC-SHA512, mosquitto 2.x) or `user:$6$salt$hash` (salted
//! SHA-512, mosquitto 1.x), salt and hash in standard base64 with padding.
//! New hashes are always `$7$` with mosquitto_passwd's parameters, so a file
//! either side writes is one mosquitto_passwd would.

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::{digest, pbkdf2};

/// mosquitto_passwd's iteration count for new `$7$` hashes.
pub const ITERATIONS: u32 = 101;
/// mosquitto_passwd's salt length (bytes) for new `$7$` hashes.
pub const SALT_LEN: usize = 12;
/// PBKDF2-HMAC-SHA512's output, as mosquitto stores it.
pub const HASH_LEN: usize = 64;

/// Why a stored hash (or a line) cannot be read. The messages are what the
/// broker reports against the file's line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("a $7$ hash has the form $7$iterations$salt$hash")]
    Pbkdf2Shape,
    #[error("bad iteration count `{0}`")]
    Iterations(String),
    #[error("a $6$ hash has the form $6$salt$hash")]
    Sha512Shape,
    #[error("{what} is not base64: {message}")]
    Base64 { what: &'static str, message: String },
    #[error("plaintext password (hash the file with `raftmq passwd -U FILE`)")]
    Plaintext,
    #[error("expected `username:hash`")]
    NoSeparator,
    #[error("empty username")]
    EmptyUser,
}

/// A stored password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    /// `$7$`: mosquitto 2.x.
    Pbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$6$`: mosquitto 1.x, read but never written.
    SaltedSha512 { salt: Vec<u8>, hash: Vec<u8> },
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, HashError> {
    STANDARD.decode(part).map_err(|e| HashError::Base64 {
        what,
        message: e.to_string(),
    })
}

impl Hash {
    pub fn parse(s: &str) -> Result<Hash, HashError> {
        if let Some(rest) = s.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iter), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(HashError::Pbkdf2Shape);
            };
            let iterations = iter
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| HashError::Iterations(iter.to_string()))?;
            Ok(Hash::Pbkdf2Sha512 {
                iterations,
                salt: b64(salt, "salt")?,
                hash: b64(hash, "hash")?,
            })
        } else if let Some(rest) = s.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err(HashError::Sha512Shape);
            };
            Ok(Hash::SaltedSha512 {
                salt: b64(salt, "salt")?,
                hash: b64(hash, "hash")?,
            })
        } else {
            Err(HashError::Plaintext)
        }
    }

    pub fn verify(&self, password: &str) -> bool {
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

/// `$7$101$<b64 salt>$<b64 hash>`: `password` hashed as mosquitto_passwd
/// does, with the caller's salt (each side draws it from its own RNG).
pub fn hash_with_salt(password: &str, salt: &[u8; SALT_LEN]) -> String {
    let mut out = [0u8; HASH_LEN];
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "$7${ITERATIONS}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
}

/// Whether `hash` is a `$7$` hash of `password` (what a writer keeps; a
/// legacy `$6$` one is hashed anew).
pub fn verify_pbkdf2(hash: &str, password: &str) -> bool {
    matches!(Hash::parse(hash), Ok(h @ Hash::Pbkdf2Sha512 { .. }) if h.verify(password))
}

/// One line of the file, without its newline: `user:hash`.
pub fn entry(user: &str, hash: &str) -> String {
    format!("{user}:{hash}")
}

/// Reads one line of the file: `None` for a blank or `#` comment line,
/// else the user and the hash text (not yet parsed).
pub fn parse_entry(line: &str) -> Option<Result<(&str, &str), HashError>> {
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() || line.starts_with('#') {
        return None;
    }
    Some(match line.split_once(':') {
        None => Err(HashError::NoSeparator),
        Some(("", _)) => Err(HashError::EmptyUser),
        Some(pair) => Ok(pair),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_has_mosquitto_shape_and_verifies() {
        let h = hash_with_salt("s3cret", &[7u8; SALT_LEN]);
        let parts: Vec<&str> = h.split('$').collect();
        assert_eq!(parts[..3], ["", "7", "101"]);
        assert_eq!(STANDARD.decode(parts[3]).map(|v| v.len()).ok(), Some(12));
        assert_eq!(STANDARD.decode(parts[4]).map(|v| v.len()).ok(), Some(64));
        assert!(verify_pbkdf2(&h, "s3cret"));
        assert!(!verify_pbkdf2(&h, "other"));
    }

    #[test]
    fn known_vector_matches_mosquitto_passwd() {
        // PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt, 64-byte hash,
        // standard base64: mosquitto_passwd 2.0's construction.
        let h = hash_with_salt("password", b"0123456789ab");
        assert!(h.starts_with("$7$101$MDEyMzQ1Njc4OWFi$"), "{h}");
        assert!(verify_pbkdf2(&h, "password"));
    }

    #[test]
    fn legacy_sha512_verifies_but_is_not_kept() {
        // SHA-512("password" || "salt"), the mosquitto 1.x construction.
        let mut ctx = digest::Context::new(&digest::SHA512);
        ctx.update(b"password");
        ctx.update(b"salt");
        let h = format!(
            "$6${}${}",
            STANDARD.encode(b"salt"),
            STANDARD.encode(ctx.finish().as_ref())
        );
        assert!(Hash::parse(&h).is_ok_and(|h| h.verify("password")));
        assert!(!verify_pbkdf2(&h, "password"));
    }

    #[test]
    fn lines() {
        assert_eq!(entry("alice", "$7$x"), "alice:$7$x");
        assert_eq!(parse_entry("alice:$7$x\r"), Some(Ok(("alice", "$7$x"))));
        assert_eq!(parse_entry("# comment"), None);
        assert_eq!(parse_entry("  "), None);
        assert_eq!(parse_entry("bob"), Some(Err(HashError::NoSeparator)));
        assert_eq!(parse_entry(":h"), Some(Err(HashError::EmptyUser)));
        assert_eq!(Hash::parse("plain"), Err(HashError::Plaintext));
        assert_eq!(
            Hash::parse("$7$0$AA==$AA=="),
            Err(HashError::Iterations("0".into()))
        );
    }
}
