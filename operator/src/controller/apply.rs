//! Act: server-side apply of what was rendered, and pruning of what the
//! spec no longer asks for (only objects this cluster owns).

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::info;

use super::decide::Desired;
use super::observe::{api_available, Seen};
use super::Error;
use crate::crd::{MqttCluster, TlsMode};
use crate::render::monitoring::{certificate_resource, service_monitor_resource};
use crate::render::{self, Names, Rendered, MANAGER};

/// Server-side apply of everything rendered: config and Secrets first (a
/// pod that starts must find them), then the Services, the StatefulSet and
/// the rest. Returns the StatefulSet as the API server has it now.
pub(super) async fn apply_all(
    client: &Client,
    ns: &str,
    rendered: &Rendered,
) -> Result<StatefulSet, Error> {
    apply(client, ns, &rendered.config_map).await?;
    if let Some(acl) = &rendered.acl_config_map {
        apply(client, ns, acl).await?;
    }
    for s in &rendered.secrets {
        apply(client, ns, s).await?;
    }
    // After the bridge Secret: a broker reading a new bridge finds its
    // files (it reads them again at each connection attempt anyway).
    if let Some(b) = &rendered.bridges_config_map {
        apply(client, ns, b).await?;
    }
    if let Some(c) = &rendered.certificate {
        apply_dynamic(client, ns, &certificate_resource(), c).await?;
    }
    apply(client, ns, &rendered.headless_service).await?;
    apply(client, ns, &rendered.client_service).await?;
    let sts = apply(client, ns, &rendered.statefulset).await?;
    apply(client, ns, &rendered.pdb).await?;
    if let Some(n) = &rendered.network_policy {
        apply(client, ns, n).await?;
    }
    if let Some(sm) = &rendered.service_monitor {
        apply_dynamic(client, ns, &service_monitor_resource(), sm).await?;
    }
    Ok(sts)
}

/// Deletes what the spec no longer asks for (only what this cluster owns).
pub(super) async fn prune_all(
    client: &Client,
    cluster: &MqttCluster,
    seen: &Seen,
    want: &Desired,
    sts: &StatefulSet,
) -> Result<(), Error> {
    let (ns, names, uid) = (&seen.ns, &seen.names, &seen.uid);
    let rendered = &want.rendered;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    if rendered.acl_config_map.is_none() {
        prune(&cms, &names.acl_config_map(), uid).await?;
    }
    let keep = rendered
        .config_map
        .metadata
        .name
        .clone()
        .unwrap_or_default();
    prune_configs(&cms, names, uid, &keep, sts, &seen.pods).await?;
    if rendered.bridges_config_map.is_none() {
        prune(&cms, &names.bridges_config_map(), uid).await?;
        prune(&seen.secrets, &names.bridge_secret(), uid).await?;
    }
    if !want.has_users {
        prune(&seen.secrets, &names.users_secret(), uid).await?;
    }
    let mode = cluster.spec.effective_tls().map(|t| t.mode);
    if !matches!(mode, Some(TlsMode::Operator)) {
        prune(&seen.secrets, &names.ca_secret(), uid).await?;
        if !matches!(mode, Some(TlsMode::CertManager)) {
            prune(&seen.secrets, &names.tls_secret(), uid).await?;
        }
    }
    if rendered.network_policy.is_none() {
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
        prune(&api, &names.network_policy(), uid).await?;
    }
    if rendered.service_monitor.is_none()
        && api_available(client, "monitoring.coreos.com/v1", "servicemonitors").await
    {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &service_monitor_resource());
        prune(&api, &names.service_monitor(), uid).await?;
    }
    if rendered.certificate.is_none()
        && api_available(client, "cert-manager.io/v1", "certificates").await
    {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &certificate_resource());
        prune(&api, &names.certificate(), uid).await?;
    }
    Ok(())
}

async fn server_side_apply<K>(api: Api<K>, kind: &str, name: &str, obj: &K) -> Result<K, Error>
where
    K: Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Api {
        action: format!("applying {kind} {name:?}"),
        source,
    })
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api = Api::namespaced(client.clone(), ns);
    server_side_apply(api, &K::kind(&()), &name, obj).await
}

async fn apply_dynamic(
    client: &Client,
    ns: &str,
    ar: &ApiResource,
    obj: &DynamicObject,
) -> Result<DynamicObject, Error> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let api = Api::namespaced_with(client.clone(), ns, ar);
    server_side_apply(api, &ar.kind, &name, obj).await
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
async fn prune<K>(api: &Api<K>, name: &str, uid: &str) -> Result<bool, kube::Error>
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
fn rollout_complete(sts: &StatefulSet) -> bool {
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
async fn prune_configs(
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
