//! Decide: what the cluster should consist of. The password file (hashes
//! kept while they still verify, so it is not rewritten every time), every
//! object rendered from the spec and what was observed, and the pod
//! template's hash.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;

use super::observe::Seen;
use super::{Error, TEMPLATE_HASH};
use crate::crd::MqttCluster;
use crate::render::{self, Rendered};

/// The objects to apply and what the rest of the reconcile needs to know
/// about them.
pub(super) struct Desired {
    pub rendered: Rendered,
    /// The pod template's hash (before it was annotated with it).
    pub hash: String,
    /// The cluster has users (a password file, in the users Secret).
    pub has_users: bool,
    /// The password file differs from the one stored.
    pub users_changed: bool,
}

pub(super) fn desired(cluster: &MqttCluster, seen: &Seen) -> Result<Desired, Error> {
    let mut observed = seen.observed.clone();
    observed.password_file = (!seen.users.is_empty()).then(|| {
        render::secrets::password_file(&seen.users, seen.existing_passwd.as_deref(), || {
            let mut salt = [0u8; render::secrets::SALT_LEN];
            // ring's system RNG; a failure leaves a zero salt, which is
            // still a valid (if weaker) hash and is replaced when the
            // password changes.
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt);
            salt
        })
    });
    let users_changed =
        observed.password_file.is_some() && observed.password_file != seen.existing_passwd;
    let mut rendered = render::render(cluster, &observed)?;
    let hash = template_hash(&rendered.statefulset);
    if let Some(a) = rendered
        .statefulset
        .spec
        .template
        .metadata
        .as_mut()
        .map(|m| m.annotations.get_or_insert_with(BTreeMap::new))
    {
        a.insert(TEMPLATE_HASH.into(), hash.clone());
    }
    Ok(Desired {
        rendered,
        hash,
        has_users: observed.password_file.is_some(),
        users_changed,
    })
}

/// Hex SHA-256 (first 16 digits) of a StatefulSet's pod template.
pub fn template_hash(sts: &StatefulSet) -> String {
    let text = serde_json::to_string(&sts.spec.template).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
