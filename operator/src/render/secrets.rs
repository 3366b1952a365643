//! Secrets: the password file (mosquitto `$7$` hashes) and, in
//! operator-issued TLS mode, the CA and the server certificate.
//!
//! Hashing has a random salt, so a naive re-render would rewrite the
//! password file on every reconcile. [`password_file`] keeps an existing
//! line whose hash still verifies against the user's current password and
//! only hashes anew what changed.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use ring::pbkdf2;

use super::{meta, Names, TlsMaterial, PASSWD_FILE};

/// mosquitto_passwd's parameters for `$7$`.
pub const ITERATIONS: u32 = 101;
pub const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

/// `$7$101$<b64 salt>$<b64 hash>` (standard base64 with padding).
pub fn hash_password(password: &str, salt: &[u8; SALT_LEN]) -> String {
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

/// Whether a `$7$` hash matches `password`.
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Some(rest) = hash.strip_prefix("$7$") else {
        return false;
    };
    let mut parts = rest.split('$');
    let (Some(iter), Some(salt), Some(h), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(iterations) = iter.parse::<u32>().ok().and_then(NonZeroU32::new) else {
        return false;
    };
    let (Ok(salt), Ok(h)) = (STANDARD.decode(salt), STANDARD.decode(h)) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        &salt,
        password.as_bytes(),
        &h,
    )
    .is_ok()
}

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
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .collect();
    let mut out = String::new();
    for (user, password) in users {
        let hash = match old.get(user.as_str()) {
            Some(h) if verify_password(h, password) => (*h).to_string(),
            _ => hash_password(password, &salt()),
        };
        out.push_str(user);
        out.push(':');
        out.push_str(&hash);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_has_mosquitto_shape_and_verifies() {
        let h = hash_password("s3cret", &[7u8; SALT_LEN]);
        let parts: Vec<&str> = h.split('$').collect();
        assert_eq!(parts[..3], ["", "7", "101"]);
        assert_eq!(STANDARD.decode(parts[3]).map(|v| v.len()).ok(), Some(12));
        assert_eq!(STANDARD.decode(parts[4]).map(|v| v.len()).ok(), Some(64));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "other"));
    }

    #[test]
    fn known_vector_matches_mosquitto_passwd() {
        // Produced by mosquitto_passwd 2.0 semantics: PBKDF2-HMAC-SHA512,
        // 101 iterations, 12-byte salt, 64-byte hash, standard base64.
        let h = hash_password("password", b"0123456789ab");
        assert!(h.starts_with("$7$101$MDEyMzQ1Njc4OWFi$"), "{h}");
        assert!(verify_password(&h, "password"));
    }

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
