//! `raftmq passwd`: mosquitto_passwd's workflow on mosquitto's file format,
//! writing `$7$` (PBKDF2-SHA512) hashes.

use std::path::Path;

use raftmq_shared::passwd::entry;

use crate::auth::password::hash_password;

#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    #[error("{0}")]
    Usage(String),
}

/// What to do to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Add or replace `user` (`create`: start from an empty file).
    Set {
        user: String,
        password: String,
        create: bool,
    },
    Delete {
        user: String,
    },
    /// Hash every plaintext `user:password` line in place.
    Upgrade,
}

fn is_hashed(secret: &str) -> bool {
    secret.starts_with("$7$") || secret.starts_with("$6$")
}

/// Applies `edit` to the file's text and returns the new text.
pub fn apply(text: &str, edit: &Edit) -> Result<String, PasswdError> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match edit {
        Edit::Set {
            user,
            password,
            create,
        } => {
            if user.contains(':') || user.is_empty() {
                return Err(PasswdError::Usage(
                    "a username must be non-empty and may not contain ':'".into(),
                ));
            }
            if *create {
                lines.clear();
            }
            let line = entry(user, &hash_password(password));
            match lines
                .iter_mut()
                .find(|l| l.split_once(':').is_some_and(|(u, _)| u == user))
            {
                Some(l) => *l = line,
                None => lines.push(line),
            }
        }
        Edit::Delete { user } => {
            let before = lines.len();
            lines.retain(|l| l.split_once(':').is_none_or(|(u, _)| u != user));
            if lines.len() == before {
                return Err(PasswdError::Usage(format!("user {user} not found")));
            }
        }
        Edit::Upgrade => {
            for l in lines.iter_mut() {
                if l.starts_with('#') {
                    continue;
                }
                if let Some((u, secret)) = l.split_once(':') {
                    if !is_hashed(secret) {
                        *l = entry(u, &hash_password(secret));
                    }
                }
            }
        }
    }
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

/// Reads (unless creating), edits and writes `path` (mode 0600 when new).
pub fn edit_file(path: &Path, edit: &Edit) -> Result<(), PasswdError> {
    let name = path.display().to_string();
    let creating = matches!(edit, Edit::Set { create: true, .. });
    let text = if creating {
        String::new()
    } else {
        std::fs::read_to_string(path).map_err(|e| PasswdError::Read(name.clone(), e))?
    };
    let new = apply(&text, edit)?;
    write_private(path, &new).map_err(|e| PasswdError::Write(name, e))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::PasswordFile;

    fn verify(text: &str, user: &str, pw: &str) -> bool {
        PasswordFile::parse(text, Path::new("t"))
            .unwrap()
            .verify(user, pw)
    }

    #[test]
    fn set_replace_delete() {
        let set = |u: &str, p: &str, create| Edit::Set {
            user: u.into(),
            password: p.into(),
            create,
        };
        let t = apply("", &set("a", "1", true)).unwrap();
        let t = apply(&t, &set("b", "2", false)).unwrap();
        let t = apply(&t, &set("a", "3", false)).unwrap();
        assert_eq!(t.lines().count(), 2);
        assert!(verify(&t, "a", "3") && verify(&t, "b", "2"));
        let t = apply(&t, &Edit::Delete { user: "a".into() }).unwrap();
        assert!(!verify(&t, "a", "3") && verify(&t, "b", "2"));
        assert!(apply(&t, &Edit::Delete { user: "zz".into() }).is_err());
        assert!(apply(&t, &set("x:y", "p", false)).is_err());
    }

    #[test]
    fn upgrade_hashes_only_plaintext() {
        let hashed = apply(
            "",
            &Edit::Set {
                user: "h".into(),
                password: "k".into(),
                create: true,
            },
        )
        .unwrap();
        let text = format!("# users\n{hashed}p:plain\n");
        let t = apply(&text, &Edit::Upgrade).unwrap();
        assert!(t.contains(hashed.trim()));
        assert!(verify(&t, "p", "plain") && verify(&t, "h", "k"));
    }
}
