//! Who may connect (mosquitto password files) and what they may do
//! (mosquitto ACL files). Both formats are read unchanged so that existing
//! files carry over from mosquitto.

pub mod acl;
pub mod password;
pub mod reload;

use std::path::PathBuf;

/// A problem in an auth file, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::AuthConfig;
use acl::{AclFile, Action, Principal};
use password::PasswordFile;

/// The verdict on a CONNECT's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Accepted,
    /// Unknown user or wrong password.
    BadCredentials,
    /// No credentials, and anonymous clients are not allowed.
    NotAuthorized,
}

/// The users and rules in force; replaced whole on reload so a check never
/// sees half of an old file and half of a new one.
#[derive(Debug, Default)]
pub struct Policy {
    pub allow_anonymous: bool,
    pub passwords: Option<PasswordFile>,
    pub acl: Option<AclFile>,
}

impl Policy {
    pub fn load(config: &AuthConfig) -> Result<Policy, AuthFileError> {
        Ok(Policy {
            allow_anonymous: config.anonymous_allowed(),
            passwords: config
                .password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()?,
            acl: config.acl_file.as_deref().map(AclFile::load).transpose()?,
        })
    }

    pub fn login(&self, username: Option<&str>, password: Option<&[u8]>) -> Login {
        match (username, &self.passwords) {
            (None, _) if self.allow_anonymous => Login::Accepted,
            (None, _) => Login::NotAuthorized,
            (Some(user), Some(file)) => {
                let ok = password
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .is_some_and(|p| file.verify(user, p));
                if ok {
                    Login::Accepted
                } else {
                    Login::BadCredentials
                }
            }
            // No password file: a username only names the client for ACLs.
            (Some(_), None) if self.allow_anonymous => Login::Accepted,
            (Some(_), None) => Login::NotAuthorized,
        }
    }

    /// May `who` do `action` on `topic`? Nobody publishes (or leaves a
    /// will) under `$SYS`, whatever the ACL grants: those topics are the
    /// broker's own, and a forged `$SYS/broker/version` would mislead
    /// every monitor that reads it (mosquitto refuses them too).
    pub fn may(&self, who: Principal<'_>, topic: &str, action: Action) -> bool {
        if action == Action::Write && is_sys_topic(topic) {
            return false;
        }
        self.acl
            .as_ref()
            .is_none_or(|a| a.check_topic(who, topic, action))
    }

    pub fn may_subscribe(&self, who: Principal<'_>, filter: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|a| a.check_subscribe(who, filter))
    }

    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }
}

/// Whether `topic` is under `$SYS` (the broker's own topics).
pub fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// The policy in force, swappable at run time.
#[derive(Debug, Default)]
pub struct Auth {
    current: RwLock<Arc<Policy>>,
}

impl Auth {
    pub fn new(policy: Policy) -> Self {
        Auth {
            current: RwLock::new(Arc::new(policy)),
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.current.read().clone()
    }

    /// Re-reads the files; on error the old policy stays in force.
    pub fn reload(&self, config: &AuthConfig) -> Result<(), AuthFileError> {
        let policy = Policy::load(config)?;
        *self.current.write() = Arc::new(policy);
        Ok(())
    }
}
