//! Events about a cluster (and, for a membership step, the pod it
//! concerns). The API server refuses an Event whose note is over 1 KiB, so
//! notes are cut to fit: a long error chain must not cost the Event that
//! reports it.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::Context;
use crate::crd::MqttCluster;

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
