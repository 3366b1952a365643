//! What the cluster's Secrets hold: the users' passwords, stored TLS
//! material, and the client certificate for the Admin service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::crd::{ListenerKind, MqttCluster};
use crate::render::TlsMaterial;
use crate::validate::Problem;

/// The text under `key` (`data`, else `stringData`): `None` when the key
/// is missing, `Err` when it is not UTF-8.
pub(in crate::controller) fn secret_string(s: &Secret, key: &str) -> Option<Result<String, ()>> {
    if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8(v.0.clone()).map_err(|_| ()));
    }
    s.string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| Ok(v.clone()))
}

/// Reads every user's password from its Secret.
pub(in crate::controller) async fn resolve_users(
    secrets: &Api<Secret>,
    cluster: &MqttCluster,
    ns: &str,
    problems: &mut Vec<Problem>,
) -> Result<Vec<(String, String)>, kube::Error> {
    let mut out = Vec::new();
    let mut cache: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    for u in &cluster.spec.auth.users {
        let r = &u.password_secret_ref;
        if !cache.contains_key(&r.name) {
            cache.insert(r.name.clone(), secrets.get_opt(&r.name).await?);
        }
        let Some(Some(secret)) = cache.get(&r.name) else {
            problems.push(Problem {
                reason: "SecretNotFound",
                message: format!(
                    "user {}: Secret {:?} (auth.users passwordSecretRef) does not exist in namespace {ns}",
                    u.username, r.name
                ),
            });
            continue;
        };
        match secret_string(secret, &r.key) {
            None => problems.push(Problem {
                reason: "SecretKeyMissing",
                message: format!(
                    "user {}: Secret {:?} has no key {:?}",
                    u.username, r.name, r.key
                ),
            }),
            Some(Err(())) => problems.push(Problem {
                reason: "SecretInvalid",
                message: format!(
                    "user {}: key {:?} of Secret {:?} is not UTF-8 text",
                    u.username, r.key, r.name
                ),
            }),
            Some(Ok(pw)) if pw.is_empty() => problems.push(Problem {
                reason: "SecretInvalid",
                message: format!(
                    "user {}: key {:?} of Secret {:?} is empty",
                    u.username, r.key, r.name
                ),
            }),
            Some(Ok(pw)) => out.push((u.username.clone(), pw)),
        }
    }
    Ok(out)
}

pub(in crate::controller) fn material_from(
    ca: Option<&Secret>,
    tls: Option<&Secret>,
) -> Option<TlsMaterial> {
    let get =
        |s: Option<&Secret>, k: &str| s.and_then(|s| secret_string(s, k)).and_then(Result::ok);
    Some(TlsMaterial {
        ca_crt: get(ca, "ca.crt")?,
        ca_key: get(ca, "ca.key")?,
        tls_crt: get(tls, "tls.crt")?,
        tls_key: get(tls, "tls.key")?,
    })
}

/// The PSK identities' Secret, when a PSK listener is on.
pub(in crate::controller) async fn check_psk(
    secrets: &Api<Secret>,
    cluster: &MqttCluster,
    ns: &str,
    problems: &mut Vec<Problem>,
) -> Result<(), kube::Error> {
    let psk_on = cluster
        .spec
        .listeners
        .active()
        .iter()
        .any(|l| l.kind == ListenerKind::Psk);
    let (true, Some(psk)) = (psk_on, &cluster.spec.psk) else {
        return Ok(());
    };
    match secrets.get_opt(&psk.secret_name).await? {
        None => problems.push(Problem {
            reason: "SecretNotFound",
            message: format!(
                "psk.secretName: Secret {:?} does not exist in namespace {ns}",
                psk.secret_name
            ),
        }),
        Some(s) if secret_string(&s, &psk.key).is_none() => problems.push(Problem {
            reason: "SecretKeyMissing",
            message: format!("psk: Secret {:?} has no key {:?}", psk.secret_name, psk.key),
        }),
        Some(_) => {}
    }
    Ok(())
}
