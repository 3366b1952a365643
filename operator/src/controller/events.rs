//! Events about a cluster (and, for a membership step, the pod it
//! concerns), and what each reconcile tells in them: certificates issued,
//! problems and warnings in the spec, what was created or changed. The API
//! server refuses an Event whose note is over 1 KiB, so notes are cut to
//! fit: a long error chain must not cost the Event that reports it.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::observe::Seen;
use super::Context;
use crate::certs::CertOutcome;
use crate::crd::MqttCluster;
use crate::render::{Rendered, CONFIG_CHECKSUM};
use crate::validate::Problem;

/// The longest note the API server takes (`events.k8s.io/v1` validation).
pub const NOTE_MAX: usize = 1024;

/// `note` cut to at most [`NOTE_MAX`] bytes, on a character boundary, the
/// cut marked with an ellipsis.
pub fn fit(note: String) -> String {
    if note.len() <= NOTE_MAX {
        return note;
    }
    const MARK: &str = "…";
    let mut end = NOTE_MAX - MARK.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &note[..end])
}

pub async fn publish(
    ctx: &Context,
    cluster: &MqttCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_about(ctx, cluster, None, type_, reason, action, note).await
}

/// An Event about the cluster and, for a membership step, the pod it
/// concerns: the Recorder folds repeats per (reason, action, related
/// object), so each pod's step keeps its own message.
pub async fn publish_about(
    ctx: &Context,
    cluster: &MqttCluster,
    pod: Option<String>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let secondary = pod.map(|name| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: cluster.namespace(),
        ..Default::default()
    });
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(fit(note)),
        action: action.to_string(),
        secondary,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cluster.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish an Event");
    }
}

/// A Warning Event per problem or warning (`action`: the step that found
/// it).
pub async fn problems(ctx: &Context, cluster: &MqttCluster, action: &str, problems: &[Problem]) {
    for p in problems {
        publish(
            ctx,
            cluster,
            EventType::Warning,
            p.reason,
            action,
            p.message.clone(),
        )
        .await;
    }
}

/// A Warning Event per bridge problem not told yet (the Degraded message
/// as the last reconcile left it does not carry it), or all again when the
/// spec changed.
pub(super) async fn bridge_problems(ctx: &Context, cluster: &MqttCluster, seen: &Seen) {
    let told = seen
        .previous
        .conditions
        .iter()
        .find(|c| c.type_ == crate::status::DEGRADED && c.status == "True")
        .map(|c| c.message.as_str())
        .unwrap_or_default();
    let news: Vec<Problem> = seen
        .bridge_problems
        .iter()
        .filter(|p| seen.new_generation || !told.contains(&p.message))
        .cloned()
        .collect();
    problems(ctx, cluster, "ResolveBridgeSecrets", &news).await;
}

/// The CA or server certificate the operator just issued.
pub(super) async fn certificates_issued(
    ctx: &Context,
    cluster: &MqttCluster,
    out: &CertOutcome,
    any_stored: bool,
) {
    if let Some(why) = &out.ca_issued {
        let (reason, note) = if any_stored {
            ("CARotated", format!("issued a new CA: {why}"))
        } else {
            ("CAIssued", "issued the cluster CA".to_string())
        };
        issued(ctx, cluster, "ca", reason, note).await;
    }
    if let Some(why) = &out.server_issued {
        let reason = if any_stored {
            "CertificateRenewed"
        } else {
            "CertificateIssued"
        };
        let note = format!(
            "issued the server certificate (valid until {}): {why}",
            out.not_after
        );
        issued(ctx, cluster, "server", reason, note).await;
    }
}

/// The cluster plane's certificates issued: one Event saying which and why.
pub(super) async fn peer_certificates_issued(
    ctx: &Context,
    cluster: &MqttCluster,
    what: &[String],
) {
    if what.is_empty() {
        return;
    }
    issued(
        ctx,
        cluster,
        "peer",
        "PeerCertificatesIssued",
        format!("issued for the cluster port: {}", what.join("; ")),
    )
    .await;
}

/// One certificate issued: counted (by `kind`) and told.
async fn issued(ctx: &Context, cluster: &MqttCluster, kind: &str, reason: &str, note: String) {
    ctx.metrics
        .certificates_issued
        .with_label_values(&[kind])
        .inc();
    publish(
        ctx,
        cluster,
        EventType::Normal,
        reason,
        "IssueCertificate",
        note,
    )
    .await;
}

/// What the apply changed: the cluster created, its config or size
/// changed, its users updated.
pub(super) async fn changes(
    ctx: &Context,
    cluster: &MqttCluster,
    seen: &Seen,
    rendered: &Rendered,
    users_changed: bool,
) {
    let names = &seen.names;
    match &seen.before {
        None => {
            publish(
                ctx,
                cluster,
                EventType::Normal,
                "Created",
                "Apply",
                format!(
                    "created StatefulSet {} with {} replicas, Services {} and {}",
                    names.statefulset(),
                    cluster.spec.replicas,
                    names.client_service(),
                    names.headless_service()
                ),
            )
            .await
        }
        Some(b) => {
            let old_sum = b
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(CONFIG_CHECKSUM).cloned());
            if old_sum.as_deref() != Some(rendered.config_checksum.as_str()) {
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    "ConfigChanged",
                    "Apply",
                    "the broker configuration changed; rolling the pods one at a time".into(),
                )
                .await;
            }
            let old_replicas = b.spec.replicas.unwrap_or(1);
            let new_replicas = rendered.statefulset.spec.replicas.unwrap_or(1);
            if old_replicas != new_replicas {
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    "Scaled",
                    "Apply",
                    format!("scaled from {old_replicas} to {new_replicas} pods"),
                )
                .await;
            }
        }
    }
    let bridges = rendered
        .bridges_config_map
        .as_ref()
        .and_then(|c| c.data.as_ref()?.get(crate::render::BRIDGES_FILE));
    if let (Some(old), Some(new)) = (&seen.stored_bridges, bridges) {
        if old != new {
            publish(
                ctx,
                cluster,
                EventType::Normal,
                "BridgesUpdated",
                "Apply",
                format!(
                    "updated the bridges ({} configured); brokers reload them in place and only changed bridges reconnect",
                    seen.observed.bridges.resolved.len() + seen.observed.bridges.held.len()
                ),
            )
            .await;
        }
    }
    if users_changed && seen.existing_passwd.is_some() {
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "UsersUpdated",
            "Apply",
            format!(
                "updated the password file ({} users); brokers reload it without a restart",
                seen.users.len()
            ),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(fit("short".into()), "short");
        let long = "é".repeat(700);
        let cut = fit(long);
        assert!(cut.len() <= NOTE_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(fit("x".repeat(NOTE_MAX)).len(), NOTE_MAX);
    }
}
