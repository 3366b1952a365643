//! Report: the cluster's status subresource after a reconcile, one that
//! found the spec could not be applied, and one that failed.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::events::{self, publish};
use super::observe::Seen;
use super::{Context, Error};
use crate::crd::{MqttCluster, MqttClusterStatus};
use crate::render::MANAGER;
use crate::status::{self, Lifecycle, Rollout, DEGRADED};
use crate::validate::Problem;

/// Everything applied: the rollout, the warnings and the membership work
/// in progress.
pub(super) async fn reconciled(
    ctx: &Context,
    cluster: &MqttCluster,
    seen: &Seen,
    sts: &StatefulSet,
    warnings: &[Problem],
    life: &Lifecycle,
) -> Result<(), Error> {
    let st = status::build(
        cluster,
        &Rollout::of(Some(sts), cluster.spec.replicas),
        &[],
        warnings,
        life,
        seen.certificates.not_after.clone(),
        Timestamp::now(),
    );
    patch_status(ctx, cluster, &st).await?;
    info!(cluster = %seen.names.cluster, namespace = %seen.ns, phase = ?st.phase, "reconciled");
    Ok(())
}

/// A spec that cannot be applied: what runs is left alone, status says
/// why, and Warning Events tell it when that is news (another message, or
/// a changed spec).
pub(super) async fn invalid(
    ctx: &Context,
    cluster: &MqttCluster,
    seen: &Seen,
    life: &Lifecycle,
) -> Result<(), Error> {
    let prev_msg = seen
        .previous
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True")
        .map(|c| c.message.clone());
    let st = status::build(
        cluster,
        &Rollout::of(seen.before.as_ref(), cluster.spec.replicas),
        &seen.problems,
        &seen.warnings,
        life,
        None,
        Timestamp::now(),
    );
    let new_msg = st
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED)
        .map(|c| c.message.clone());
    if new_msg != prev_msg || seen.new_generation {
        events::problems(ctx, cluster, "Validate", &seen.problems).await;
    }
    patch_status(ctx, cluster, &st).await?;
    Ok(())
}

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
    let st = status::failed(cluster, e.reason(), &message, Timestamp::now());
    if let Err(pe) = patch_status(ctx, cluster, &st).await {
        warn!(cluster = %cluster.name_any(), error = %pe, "could not write the failure to status");
    }
}

async fn patch_status(
    ctx: &Context,
    cluster: &MqttCluster,
    st: &MqttClusterStatus,
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
