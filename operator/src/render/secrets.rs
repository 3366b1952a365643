//! Secrets: the password file (mosquitto `$7$` hashes), in
//! operator-issued TLS mode the CA and the server certificate, and the
//! cluster plane's certificates (every cluster).
//!
//! Hashing has a random salt, so a naive re-render would rewrite the
//! password file on every reconcile. [`password_file`] keeps an existing
//! line whose hash still verifies against the user's current password and
//! only hashes anew what changed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use raftmq_shared::passwd::{entry, hash_with_salt, parse_entry};

use super::{meta, Names, TlsMaterial, PASSWD_FILE};
use crate::peer_certs::PeerMaterial;

/// The hash itself is `raftmq_shared::passwd`'s, the one the broker reads;
/// an existing hash is kept only when it is a `$7$` one of the password.
pub use raftmq_shared::passwd::{verify_pbkdf2 as verify_password, SALT_LEN};

/// Builds the password file for `users` (username -> password, in the
/// order given), reusing the hashes of `existing` that still verify, and
/// salting new ones with `salt()`.
pub fn password_file(
    users: &[(String, String)],
    existing: Option<&str>,
    mut salt: impl FnMut() -> [u8; SALT_LEN],
) -> String {
    let old: BTreeMap<&str, &str> = existing
        .unwrap_or("")
        .lines()
        .filter_map(|l| parse_entry(l)?.ok())
        .collect();
    let mut out = String::new();
    for (user, password) in users {
        let hash = match old.get(user.as_str()) {
            Some(h) if verify_password(h, password) => (*h).to_string(),
            _ => hash_with_salt(password, &salt()),
        };
        out.push_str(&entry(user, &hash));
        out.push('\n');
    }
    out
}

fn secret(
    names: &Names,
    owner: &OwnerReference,
    name: String,
    type_: &str,
    data: Vec<(&str, &str)>,
) -> Secret {
    Secret {
        metadata: meta(names, name, owner, &BTreeMap::new()),
        type_: Some(type_.to_string()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

pub fn users_secret(names: &Names, owner: &OwnerReference, passwd: &str) -> Secret {
    secret(
        names,
        owner,
        names.users_secret(),
        "Opaque",
        vec![(PASSWD_FILE, passwd)],
    )
}

/// The bridges' credentials and certificates (file name -> content),
/// copied from the Secrets `spec.bridges` names.
pub fn bridge_secret(
    names: &Names,
    owner: &OwnerReference,
    files: &BTreeMap<String, String>,
) -> Secret {
    let data = files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    secret(names, owner, names.bridge_secret(), "Opaque", data)
}

pub fn ca_secret(names: &Names, owner: &OwnerReference, m: &TlsMaterial) -> Secret {
    secret(
        names,
        owner,
        names.ca_secret(),
        "Opaque",
        vec![("ca.crt", &m.ca_crt), ("ca.key", &m.ca_key)],
    )
}

pub fn tls_secret(names: &Names, owner: &OwnerReference, m: &TlsMaterial) -> Secret {
    secret(
        names,
        owner,
        names.tls_secret(),
        "kubernetes.io/tls",
        vec![
            ("tls.crt", &m.tls_crt),
            ("tls.key", &m.tls_key),
            ("ca.crt", &m.ca_crt),
        ],
    )
}

/// Mounted by every broker: the peer CA certificate and `node-<id>.crt` /
/// `node-<id>.key` for each node (the broker reads its own by node id).
pub fn peer_secret(names: &Names, owner: &OwnerReference, m: &PeerMaterial) -> Secret {
    let files: Vec<(String, &str)> = m
        .nodes
        .iter()
        .flat_map(|(id, pair)| {
            [
                (format!("node-{id}.crt"), pair.crt.as_str()),
                (format!("node-{id}.key"), pair.key.as_str()),
            ]
        })
        .collect();
    let mut data: Vec<(&str, &str)> = vec![("ca.crt", m.ca.crt.as_str())];
    data.extend(files.iter().map(|(k, v)| (k.as_str(), *v)));
    secret(names, owner, names.peer_secret(), "Opaque", data)
}

/// The operator's only: the peer CA's key (whoever holds it can mint an
/// admin) and the operator's admin client certificate.
pub fn peer_ca_secret(names: &Names, owner: &OwnerReference, m: &PeerMaterial) -> Secret {
    secret(
        names,
        owner,
        names.peer_ca_secret(),
        "Opaque",
        vec![
            ("ca.crt", &m.ca.crt),
            ("ca.key", &m.ca.key),
            ("admin.crt", &m.admin.crt),
            ("admin.key", &m.admin.key),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_hashes_are_kept_changed_ones_rehashed() {
        let users = vec![
            ("alice".to_string(), "a".to_string()),
            ("bob".to_string(), "b".to_string()),
        ];
        let first = password_file(&users, None, || [1u8; SALT_LEN]);
        let again = password_file(&users, Some(&first), || [2u8; SALT_LEN]);
        assert_eq!(first, again);
        let changed = vec![
            ("alice".to_string(), "a".to_string()),
            ("bob".to_string(), "new".to_string()),
        ];
        let third = password_file(&changed, Some(&first), || [3u8; SALT_LEN]);
        let lines: Vec<&str> = third.lines().collect();
        assert_eq!(lines[0], first.lines().next().unwrap_or_default());
        assert_ne!(lines[1], first.lines().nth(1).unwrap_or_default());
        assert!(verify_password(
            lines[1].split_once(':').map(|x| x.1).unwrap_or_default(),
            "new"
        ));
    }
}
