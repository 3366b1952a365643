//! The pods' volumes: claim templates cannot change on a StatefulSet, so a
//! larger `storage.size` grows each bound claim in place.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::Api;
use serde_json::json;

use super::events::publish;
use super::observe::Seen;
use super::{api_message, Context, Error};
use crate::crd::MqttCluster;
use crate::render::{Names, Rendered};
use crate::status::DEGRADED;
use crate::validate::Problem;

/// Bytes in a Kubernetes quantity (`1Gi`, `500M`, `1.5Ti`, `1e9`).
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let m: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return None,
    };
    Some(n * m)
}

/// The volumes of an existing StatefulSet: its claim templates are kept
/// (they cannot change; a warning says what was asked that cannot be
/// done), and the claims are grown in place instead. Returns a refused
/// growth, to report as Degraded (told in an Event the first time).
pub(super) async fn reconcile_volumes(
    ctx: &Context,
    cluster: &MqttCluster,
    seen: &Seen,
    rendered: &mut Rendered,
    warnings: &mut Vec<Problem>,
) -> Result<Option<Problem>, Error> {
    let Some(b) = &seen.before else {
        return Ok(None);
    };
    keep_claims(cluster, b, rendered, warnings);
    let replicas = b.spec.replicas.unwrap_or(1);
    let expansion = expand_volumes(ctx, cluster, &seen.names, &seen.ns, replicas).await?;
    if let Some(p) = &expansion {
        let told = seen
            .previous
            .conditions
            .iter()
            .any(|c| c.type_ == DEGRADED && c.reason == p.reason && c.message == p.message);
        if !told {
            publish(
                ctx,
                cluster,
                EventType::Warning,
                p.reason,
                "ExpandVolumes",
                p.message.clone(),
            )
            .await;
        }
    }
    Ok(expansion)
}

/// The claim templates of `before` in place of the rendered ones, and a
/// warning for a storage class change or a shrink that cannot happen.
fn keep_claims(
    cluster: &MqttCluster,
    before: &StatefulSet,
    rendered: &mut Rendered,
    warnings: &mut Vec<Problem>,
) {
    let old_claims = before.spec.volume_claim_templates.clone();
    if old_claims == rendered.statefulset.spec.volume_claim_templates {
        return;
    }
    let claim = |c: &Option<Vec<PersistentVolumeClaim>>| {
        let spec = c
            .as_ref()
            .and_then(|v| v.first())
            .and_then(|c| c.spec.clone())
            .unwrap_or_default();
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").map(|q| q.0.clone()));
        (size, spec.storage_class_name)
    };
    let (old_size, old_class) = claim(&old_claims);
    rendered.statefulset.spec.volume_claim_templates = old_claims;
    if old_class != cluster.spec.storage.storage_class_name {
        warnings.push(Problem {
            reason: "StorageImmutable",
            message: format!(
                "storage.storageClassName cannot change for existing volumes; they stay on {}",
                old_class.as_deref().unwrap_or("the default class")
            ),
        });
    }
    let want = &cluster.spec.storage.size;
    match (old_size.as_deref().and_then(quantity), quantity(want)) {
        (Some(old), Some(new)) if new < old => warnings.push(Problem {
            reason: "StorageImmutable",
            message: format!(
                "storage.size {want} is smaller than the existing volumes ({}); volumes cannot shrink",
                old_size.clone().unwrap_or_default()
            ),
        }),
        _ => {}
    }
}

/// Grows each pod's volume to `storage.size`, best effort: it needs a
/// StorageClass with `allowVolumeExpansion` and a bound claim (unbound
/// ones are skipped: there is nothing to grow yet). A refusal is returned
/// as a problem to report (Degraded `VolumeExpansionFailed`), never as an
/// error: the rest of the reconcile goes on. Runs on every reconcile: a pod
/// added by a scale-up gets the template's (old) size and is grown the
/// next time round.
async fn expand_volumes(
    ctx: &Context,
    cluster: &MqttCluster,
    names: &Names,
    ns: &str,
    replicas: i32,
) -> Result<Option<Problem>, kube::Error> {
    let Some(want) = quantity(&cluster.spec.storage.size) else {
        return Ok(None);
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let mut grown = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    for i in 0..replicas.max(cluster.spec.replicas) {
        let name = format!("data-{}", names.pod(i));
        let Some(pvc) = pvcs.get_opt(&name).await? else {
            continue;
        };
        let bound = pvc
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Bound");
        let have = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| quantity(&q.0));
        if !bound || !have.is_some_and(|h| h < want) {
            continue;
        }
        let patch =
            json!({"spec": {"resources": {"requests": {"storage": cluster.spec.storage.size}}}});
        match pvcs
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => grown.push(name),
            Err(e) => refused.push((name, api_message(&e))),
        }
    }
    let size = &cluster.spec.storage.size;
    if !grown.is_empty() {
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "VolumesExpanding",
            "ExpandVolumes",
            format!("asked to grow {} to {size}", grown.join(", ")),
        )
        .await;
    }
    let Some((_, why)) = refused.first() else {
        return Ok(None);
    };
    let claims: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
    Ok(Some(Problem {
        reason: VOLUME_EXPANSION_FAILED,
        message: format!(
            "could not grow {} to {size}: {why}; the StorageClass must allow volume expansion (allowVolumeExpansion: true), or set storage.size back",
            claims.join(", ")
        ),
    }))
}

/// Degraded reason of a refused volume resize.
pub const VOLUME_EXPANSION_FAILED: &str = "VolumeExpansionFailed";

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities() {
        assert_eq!(quantity("1Gi"), Some(1073741824.0));
        assert_eq!(quantity("500M"), Some(5e8));
        assert_eq!(quantity("1.5Ki"), Some(1536.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("12"), Some(12.0));
        assert!(quantity("10Gi").unwrap_or_default() > quantity("5Gi").unwrap_or_default());
        assert_eq!(quantity("lots"), None);
        assert_eq!(quantity("1Qi"), None);
    }
}
