//! Act: server-side apply of what was rendered, and pruning of what the
//! spec no longer asks for (only objects this cluster owns).

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::info;

use super::Error;
use crate::render::{self, Names, MANAGER};

pub(super) async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Api {
        action: format!("applying {} {name:?}", K::kind(&())),
        source,
    })
}

pub(super) async fn apply_dynamic(
    client: &Client,
    ns: &str,
    ar: &ApiResource,
    obj: &DynamicObject,
) -> Result<DynamicObject, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let name = obj.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Api {
        action: format!("applying {} {name:?}", ar.kind),
        source,
    })
}

pub(super) fn owned_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    uid: &str,
) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.uid == uid))
}

/// Deletes `name` if it exists and this cluster owns it.
pub(super) async fn prune<K>(api: &Api<K>, name: &str, uid: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.get_opt(name).await? {
        Some(o) if owned_by(o.meta(), uid) => {
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
                Err(e) => Err(e),
            }
        }
        _ => Ok(false),
    }
}

/// Whether every pod runs the StatefulSet's latest template.
pub(super) fn rollout_complete(sts: &StatefulSet) -> bool {
    let Some(s) = &sts.status else {
        return false;
    };
    s.observed_generation >= sts.metadata.generation
        && s.current_revision.is_some()
        && s.current_revision == s.update_revision
        && s.updated_replicas.unwrap_or(0) >= sts.spec.replicas.unwrap_or(1)
}

/// Deletes the broker config ConfigMaps of earlier configs once the roll
/// to the current one is complete and no pod mounts them (until then a pod
/// that restarts, or comes back at the StatefulSet's current revision,
/// needs its own).
pub(super) async fn prune_configs(
    cms: &Api<ConfigMap>,
    names: &Names,
    uid: &str,
    keep: &str,
    sts: &StatefulSet,
    pods: &[Pod],
) -> Result<(), kube::Error> {
    if !rollout_complete(sts) {
        return Ok(());
    }
    let mounted: std::collections::BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.volumes.clone())
        .flatten()
        .filter_map(|v| v.config_map.map(|c| c.name))
        .collect();
    let lp = kube::api::ListParams::default().labels(&format!(
        "{}={}",
        render::CONFIG_OF,
        names.cluster
    ));
    let mut old: Vec<String> = cms
        .list(&lp)
        .await?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    old.push(names.legacy_config_map());
    for name in old {
        if name != keep && !mounted.contains(&name) && prune(cms, &name, uid).await? {
            info!(cluster = %names.cluster, configmap = %name, "pruned an earlier broker config");
        }
    }
    Ok(())
}
