//! Drive: runs the lifecycle plan's membership step (if any) and works out
//! what status says about the operation in progress.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::events::EventType;
use kube::Api;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::decide::Desired;
use super::events::{publish, publish_about};
use super::observe::Seen;
use super::{api_message, Context, RESYNC};
use crate::crd::{MqttCluster, Operation};
use crate::lifecycle::{self, node_id, Step};
use crate::membership::{Change, MembershipError, Target};
use crate::status::Lifecycle;

/// Plans the next membership step from the group as observed and the
/// template about to be applied, sets the StatefulSet's `replicas` and
/// rollout `partition` from the plan, and drives the step.
pub(super) async fn lifecycle(
    ctx: &Context,
    cluster: &MqttCluster,
    seen: &Seen,
    want: &mut Desired,
) -> (Lifecycle, Duration) {
    let before = seen.before.as_ref();
    let facts = seen
        .group
        .facts(cluster, before, Some(&want.hash), &ctx.lifecycle, seen.now);
    let plan = lifecycle::plan(&facts, |o| seen.names.pod(o));
    let spec = &mut want.rendered.statefulset.spec;
    spec.replicas = Some(plan.replicas);
    if let Some(ru) = spec
        .update_strategy
        .as_mut()
        .and_then(|u| u.rolling_update.as_mut())
    {
        ru.partition = Some(plan.partition);
    }
    let (life, requeue) = drive(ctx, cluster, &seen.target, &plan).await;
    let life = Lifecycle {
        troubles: seen.troubles.clone(),
        ..life
    };
    (life, requeue)
}

/// Runs the plan's step (if any) and works out what status says about it:
/// the operation in progress, Degraded when it fails or is stuck, and when
/// to look again (exponential backoff after failures).
async fn drive(
    ctx: &Context,
    cluster: &MqttCluster,
    target: &Target,
    plan: &lifecycle::Plan,
) -> (Lifecycle, Duration) {
    let now = (ctx.now)();
    let mut life = Lifecycle {
        view: plan.view.clone(),
        ..Lifecycle::default()
    };
    let Some((reason, message)) = plan.progress.clone() else {
        return (life, RESYNC);
    };
    // The same operation as last time keeps its start and attempts.
    let same = cluster
        .status
        .as_ref()
        .and_then(|s| s.operation.clone())
        .filter(|o| o.reason == reason && o.message == message);
    let fresh = same.is_none();
    let mut op = same.unwrap_or(Operation {
        reason: reason.to_string(),
        message: message.clone(),
        since: now.format(&Rfc3339).unwrap_or_default(),
        attempts: 0,
        last_error: None,
    });
    let (degraded, requeue) = match &plan.step {
        Some(step) => take_step(ctx, cluster, target, plan, step, &mut op).await,
        None => {
            if fresh {
                let pod = plan.pod.map(|o| target.names.pod(o));
                let (t, note) = (EventType::Normal, message.clone());
                publish_about(ctx, cluster, pod, t, reason, "Lifecycle", note).await;
            }
            match &plan.wait {
                Some(w) => judge_wait(ctx, cluster, w, &mut op, now).await,
                None => (None, ctx.lifecycle.poll),
            }
        }
    };
    life.degraded = degraded;
    life.progress = Some((op.reason.clone(), op.message.clone()));
    life.operation = Some(op);
    (life, requeue)
}

/// Takes `step`; a failure is Degraded and retried with backoff.
async fn take_step(
    ctx: &Context,
    cluster: &MqttCluster,
    target: &Target,
    plan: &lifecycle::Plan,
    step: &Step,
    op: &mut Operation,
) -> (Option<(String, String)>, Duration) {
    let settings = &ctx.lifecycle;
    let pod = step.ordinal().map(|o| target.names.pod(o));
    match execute(ctx, target, plan, step).await {
        Ok((done, note)) => {
            info!(cluster = %target.names.cluster, step = step.name(), %note, "membership step done");
            let t = EventType::Normal;
            publish_about(ctx, cluster, pod, t, done, step.name(), note).await;
            op.attempts = 0;
            op.last_error = None;
            // The next step can usually start at once.
            (None, Duration::from_millis(500).min(settings.poll))
        }
        Err(e) => {
            op.attempts += 1;
            op.last_error = Some(e.to_string());
            let wait = settings.backoff(op.attempts);
            let msg = format!(
                "{}: {e} (attempt {}, next in {}s)",
                op.message,
                op.attempts,
                wait.as_secs_f32()
            );
            warn!(cluster = %target.names.cluster, step = step.name(), error = %e, "membership step failed");
            let (t, note) = (EventType::Warning, msg.clone());
            publish_about(ctx, cluster, pod, t, e.reason(), step.name(), note).await;
            (Some((e.reason().to_string(), msg)), wait)
        }
    }
}

/// A wait that has lasted `stuck_after` becomes Degraded (told once) and
/// is looked at again with backoff.
async fn judge_wait(
    ctx: &Context,
    cluster: &MqttCluster,
    w: &lifecycle::Wait,
    op: &mut Operation,
    now: OffsetDateTime,
) -> (Option<(String, String)>, Duration) {
    let settings = &ctx.lifecycle;
    let since = OffsetDateTime::parse(&op.since, &Rfc3339).unwrap_or(now);
    let waited = (now - since).whole_seconds().max(0) as u64;
    if waited < settings.stuck_after.as_secs() {
        return (None, settings.poll);
    }
    op.attempts += 1;
    let msg = format!("{} (for {waited}s)", w.message);
    if op.attempts == 1 {
        let (t, note) = (EventType::Warning, msg.clone());
        publish(ctx, cluster, t, w.stuck_reason, "Lifecycle", note).await;
    }
    (
        Some((w.stuck_reason.to_string(), msg)),
        settings.backoff(op.attempts),
    )
}

async fn execute(
    ctx: &Context,
    target: &Target,
    plan: &lifecycle::Plan,
    step: &Step,
) -> Result<(&'static str, String), MembershipError> {
    let m = &ctx.membership;
    let leader = plan.leader.unwrap_or(0);
    let pod = |o: i32| target.names.pod(o);
    match step {
        Step::AddLearner { ordinal } => {
            let addr = m.peer_addr(target, *ordinal);
            let id = node_id(*ordinal);
            let r = m
                .change(
                    target,
                    leader,
                    Change::AddLearner {
                        id,
                        addr: addr.clone(),
                    },
                )
                .await?;
            Ok((
                "LearnerAdded",
                format!(
                    "{} (node {}, {addr}) joined as a learner and caught up: {r}",
                    pod(*ordinal),
                    node_id(*ordinal)
                ),
            ))
        }
        Step::Promote { ordinals, voters } => {
            let change = Change::ChangeMembership {
                voters: voters.clone(),
            };
            let r = m.change(target, leader, change).await?;
            Ok((
                "Promoted",
                format!(
                    "{} promoted to voter; voters are now {}: {r}",
                    ordinals
                        .iter()
                        .map(|o| pod(*o))
                        .collect::<Vec<_>>()
                        .join(", "),
                    voters
                        .iter()
                        .map(|v| pod(lifecycle::ordinal_of(*v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
        Step::ResetMember { ordinal } => {
            let id = node_id(*ordinal);
            let r = m.change(target, leader, Change::RemoveNode { id }).await?;
            Ok((
                "MemberReset",
                format!(
                    "{} came back with an empty volume: removed from Raft, to be added again as a new member: {r}",
                    pod(*ordinal)
                ),
            ))
        }
        Step::Drain { ordinal } => {
            let (gone, left) = m
                .drain(target, *ordinal, target.names.client_host())
                .await?;
            Ok((
                "Drained",
                format!(
                    "{}: {gone} clients handed over to the other pods ({left} still connected)",
                    pod(*ordinal)
                ),
            ))
        }
        Step::TransferLeader { from, to } => {
            // Sent to `from`, which leads.
            let r = m
                .change(target, *from, Change::TransferLeader { to: *to })
                .await?;
            Ok((
                "LeaderTransferred",
                format!(
                    "leadership moved from {} to {}: {r}",
                    pod(*from),
                    pod(lifecycle::ordinal_of(*to))
                ),
            ))
        }
        Step::RemoveMember { ordinal } => {
            let id = node_id(*ordinal);
            let r = m.change(target, leader, Change::RemoveNode { id }).await?;
            Ok((
                "MemberRemoved",
                format!("{} removed from the Raft group: {r}", pod(*ordinal)),
            ))
        }
        Step::Undrain { ordinal } => match m.undrain(target, *ordinal).await {
            Ok(r) => Ok((
                "Undrained",
                format!("{} takes clients again: {r}", pod(*ordinal)),
            )),
            // A broker without Undrain: a restart ends the drain too.
            Err(MembershipError::Unsupported { .. }) => {
                delete_pod(ctx, target, *ordinal).await?;
                Ok((
                    "Undrained",
                    format!(
                        "{} restarted to take clients again (its broker has no Undrain)",
                        pod(*ordinal)
                    ),
                ))
            }
            Err(e) => Err(e),
        },
        Step::RestartPod { ordinal } => {
            delete_pod(ctx, target, *ordinal).await?;
            Ok((
                "PodRestarted",
                format!(
                    "deleted {} (it did not run); it comes back at the StatefulSet's current revision",
                    pod(*ordinal)
                ),
            ))
        }
    }
}

async fn delete_pod(ctx: &Context, target: &Target, ordinal: i32) -> Result<(), MembershipError> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &target.names.namespace);
    match api
        .delete(&target.names.pod(ordinal), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(MembershipError::Api(api_message(&e))),
    }
}
