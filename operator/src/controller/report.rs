//! Report: the cluster's status subresource, and what a failed reconcile
//! leaves there.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::events::publish;
use super::{Context, Error};
use crate::crd::MqttCluster;
use crate::render::MANAGER;
use crate::status;

/// Ready=False and Degraded=True with the error's reason and message, and a
/// Warning Event (repeats fold into one Event's series).
pub(super) async fn report_failure(ctx: &Context, cluster: &MqttCluster, e: &Error) {
    warn!(cluster = %cluster.name_any(), namespace = ?cluster.namespace(), error = %e, "reconcile failed");
    let message = format!("reconcile failed: {e}");
    publish(
        ctx,
        cluster,
        EventType::Warning,
        e.reason(),
        "Reconcile",
        message.clone(),
    )
    .await;
    let st = status::failed(
        cluster,
        e.reason(),
        &message,
        k8s_openapi::jiff::Timestamp::now(),
    );
    if let Err(pe) = patch_status(ctx, cluster, &st).await {
        warn!(cluster = %cluster.name_any(), error = %pe, "could not write the failure to status");
    }
}

pub(super) async fn patch_status(
    ctx: &Context,
    cluster: &MqttCluster,
    st: &crate::crd::MqttClusterStatus,
) -> Result<(), kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let api: Api<MqttCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let body = json!({
        "apiVersion": MqttCluster::api_version(&()),
        "kind": MqttCluster::kind(&()),
        "status": st,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}
