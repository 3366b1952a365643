//! Who a cluster certificate speaks for, written as a URI SAN: a node's
//! certificate names its Raft node id (`raftmq://node/3`), an admin's its
//! name (`raftmq://admin/operator`). Brokers read it from the caller's
//! certificate; `raftmq cluster certs` and the operator write it. Only the
//! text form lives here (no X.509 parsing), so that both sides agree on it.

use std::fmt;

/// The URI scheme and authority every identity starts with.
const PREFIX: &str = "raftmq://";

/// An identity a cluster certificate may carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A broker, by its Raft node id (never 0).
    Node(u64),
    /// A client allowed to change the cluster (the operator, the CLI).
    Admin(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not a raftmq identity (expected raftmq://node/<id> or raftmq://admin/<name>): {0:?}")]
    Unknown(String),
    #[error("node id in {0:?} is not a positive integer")]
    NodeId(String),
    #[error("admin name in {0:?} is empty or not [A-Za-z0-9._-]")]
    AdminName(String),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Identity {
    /// An admin identity; `None` when the name is not `[A-Za-z0-9._-]{1,64}`.
    pub fn admin(name: &str) -> Option<Identity> {
        valid_name(name).then(|| Identity::Admin(name.to_string()))
    }

    /// The URI SAN: `raftmq://node/<id>` or `raftmq://admin/<name>`.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{PREFIX}node/{id}"),
            Identity::Admin(name) => format!("{PREFIX}admin/{name}"),
        }
    }

    /// Reads a URI SAN. Strict: no trailing slash, query, leading zeros or
    /// sign, so that one identity has exactly one spelling.
    pub fn parse(uri: &str) -> Result<Identity, IdentityError> {
        let unknown = || IdentityError::Unknown(uri.to_string());
        let rest = uri.strip_prefix(PREFIX).ok_or_else(unknown)?;
        let (kind, value) = rest.split_once('/').ok_or_else(unknown)?;
        match kind {
            "node" => {
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                match value.parse::<u64>() {
                    Ok(id) if digits && id > 0 && !value.starts_with('0') => Ok(Identity::Node(id)),
                    _ => Err(IdentityError::NodeId(uri.to_string())),
                }
            }
            "admin" if valid_name(value) => Ok(Identity::Admin(value.to_string())),
            "admin" => Err(IdentityError::AdminName(uri.to_string())),
            _ => Err(unknown()),
        }
    }

    /// The one raftmq identity among a certificate's URI SANs. A
    /// certificate naming two different identities names none (it would
    /// otherwise be read differently depending on the order).
    pub fn from_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Option<Identity> {
        let mut found: Option<Identity> = None;
        for uri in uris {
            let Ok(id) = Identity::parse(uri) else {
                continue;
            };
            match &found {
                Some(f) if *f != id => return None,
                _ => found = Some(id),
            }
        }
        found
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Admin(name) => write!(f, "admin {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for id in [
            Identity::Node(1),
            Identity::Node(u64::MAX),
            Identity::Admin("operator".into()),
        ] {
            assert_eq!(Identity::parse(&id.uri()), Ok(id));
        }
    }

    #[test]
    fn one_spelling_only() {
        for bad in [
            "raftmq://node/0",
            "raftmq://node/03",
            "raftmq://node/+3",
            "raftmq://node/3/",
            "raftmq://node/",
            "raftmq://node/18446744073709551616",
            "raftmq://admin/",
            "raftmq://admin/a/b",
            "raftmq://admin/a b",
            "raftmq://nodes/3",
            "RAFTMQ://node/3",
            "spiffe://node/3",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_identities_in_one_certificate_are_none() {
        assert_eq!(
            Identity::from_uris(["https://x", "raftmq://node/2"]),
            Some(Identity::Node(2))
        );
        assert_eq!(
            Identity::from_uris(["raftmq://node/2", "raftmq://node/2"]),
            Some(Identity::Node(2))
        );
        assert_eq!(
            Identity::from_uris(["raftmq://node/2", "raftmq://node/3"]),
            None
        );
        assert_eq!(
            Identity::from_uris(["raftmq://node/2", "raftmq://admin/x"]),
            None
        );
    }
}
