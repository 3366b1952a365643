//! Status: conditions (Ready, Progressing, Degraded) with reasons and
//! messages a person can act on, endpoints, replica counts.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{Endpoint, ListenerKindExt, MqttCluster, MqttClusterStatus, Operation};
use crate::membership::MembershipView;
use crate::render::{selector_string, Names, HTTP_PORT};
use crate::validate::Problem;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What every condition of one status is stamped with: the generation
/// it speaks for, and the conditions before (a transition time only moves
/// when the status flips).
struct Stamp<'a> {
    generation: Option<i64>,
    previous: &'a [Condition],
    now: Timestamp,
}

impl Stamp<'_> {
    fn condition(&self, type_: &str, is_true: bool, reason: &str, message: String) -> Condition {
        let status = if is_true { "True" } else { "False" }.to_string();
        let last = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: self.generation,
            last_transition_time: last,
        }
    }
}

/// Rollout facts read off the StatefulSet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    pub desired: i32,
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    /// The StatefulSet controller has not seen the latest template yet, or
    /// revisions differ.
    pub in_progress: bool,
}

impl Rollout {
    pub fn of(sts: Option<&StatefulSet>, desired: i32) -> Rollout {
        let Some(sts) = sts else {
            return Rollout {
                desired,
                in_progress: true,
                ..Rollout::default()
            };
        };
        let s = sts.status.clone().unwrap_or_default();
        let generation = sts.metadata.generation.unwrap_or(0);
        let seen = s.observed_generation.unwrap_or(0) >= generation;
        let revisions_differ = match (&s.current_revision, &s.update_revision) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        let updated = s.updated_replicas.unwrap_or(0);
        let ready = s.ready_replicas.unwrap_or(0);
        Rollout {
            desired,
            replicas: s.replicas,
            ready,
            updated,
            in_progress: !seen || revisions_differ || updated < desired || s.replicas != desired,
        }
    }
}

pub fn endpoints(names: &Names, cluster: &MqttCluster) -> Vec<Endpoint> {
    let host = names.client_host();
    let mut v: Vec<Endpoint> = cluster
        .spec
        .listeners
        .active()
        .iter()
        .map(|l| {
            let path = match l.kind {
                crate::crd::ListenerKind::Ws | crate::crd::ListenerKind::Wss => {
                    l.spec.path.clone().unwrap_or_else(|| "/mqtt".into())
                }
                _ => String::new(),
            };
            Endpoint {
                name: l.kind.as_str().to_string(),
                url: format!("{}://{host}:{}{path}", l.kind.url_scheme(), l.port),
            }
        })
        .collect();
    v.push(Endpoint {
        name: "metrics".into(),
        url: format!(
            "http://{}.{}.svc:{HTTP_PORT}/metrics",
            names.headless_service(),
            names.namespace
        ),
    });
    v
}

/// What membership management reports for status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub view: MembershipView,
    /// The step in progress (Progressing=True with this reason).
    pub progress: Option<(String, String)>,
    /// A stuck or failing step (Degraded=True with this reason).
    pub degraded: Option<(String, String)>,
    pub operation: Option<Operation>,
    /// What keeps pods from running (Pending claims, unschedulable pods,
    /// containers that cannot start), for the Ready message.
    pub troubles: Vec<String>,
}

/// The status after a reconcile. `problems` non-empty means Degraded (the
/// spec could not be applied as written).
pub fn build(
    cluster: &MqttCluster,
    rollout: &Rollout,
    problems: &[Problem],
    warnings: &[Problem],
    life: &Lifecycle,
    certificate_not_after: Option<String>,
    now: Timestamp,
) -> MqttClusterStatus {
    let membership = &life.view;
    let names = Names::of(cluster);
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let stamp = Stamp {
        generation,
        previous: &previous.conditions,
        now,
    };
    let busy = rollout.in_progress || life.progress.is_some();
    let conditions = vec![
        ready(&stamp, rollout, problems, life),
        progressing(&stamp, rollout, life),
        degraded(&stamp, problems, warnings, life),
    ];
    MqttClusterStatus {
        observed_generation: generation,
        replicas: rollout.replicas,
        ready_replicas: rollout.ready,
        leader: membership.leader.clone(),
        members: membership.members.clone(),
        learners: membership.learners.clone(),
        phase: Some(match (&life.degraded, &life.progress) {
            (Some((r, _)), _) => format!("Degraded: {r}"),
            (None, Some((r, _))) => r.clone(),
            (None, None) if busy => "RollingOut".to_string(),
            (None, None) => "Running".to_string(),
        }),
        operation: life.operation.clone(),
        selector: Some(selector_string(&names)),
        conditions,
        endpoints: endpoints(&names, cluster),
        certificate_not_after: certificate_not_after.or(previous.certificate_not_after.clone()),
    }
}

/// Degraded: the spec's problems, else a failing or stuck step, else the
/// warnings (or that all is as expected).
fn degraded(
    stamp: &Stamp,
    problems: &[Problem],
    warnings: &[Problem],
    life: &Lifecycle,
) -> Condition {
    if let Some(p) = problems.first() {
        let mut msg = p.message.clone();
        for q in &problems[1..] {
            msg.push_str("; ");
            msg.push_str(&q.message);
        }
        return stamp.condition(DEGRADED, true, p.reason, msg);
    }
    if let Some((reason, msg)) = &life.degraded {
        return stamp.condition(DEGRADED, true, reason, msg.clone());
    }
    let msg = if warnings.is_empty() {
        "the spec is applied".to_string()
    } else {
        warnings
            .iter()
            .map(|w| format!("warning: {}", w.message))
            .collect::<Vec<_>>()
            .join("; ")
    };
    stamp.condition(DEGRADED, false, "AsExpected", msg)
}

/// Progressing: the membership operation, else the StatefulSet's rollout.
fn progressing(stamp: &Stamp, rollout: &Rollout, life: &Lifecycle) -> Condition {
    if let Some((reason, msg)) = &life.progress {
        stamp.condition(PROGRESSING, true, reason, msg.clone())
    } else if rollout.in_progress {
        let msg = format!(
            "{} of {} pods updated, {} ready",
            rollout.updated, rollout.desired, rollout.ready
        );
        stamp.condition(PROGRESSING, true, "RollingOut", msg)
    } else {
        let msg = format!("all {} pods run the current spec", rollout.desired);
        stamp.condition(PROGRESSING, false, "Complete", msg)
    }
}

/// Ready: every pod ready and nothing in progress; otherwise why not.
fn ready(stamp: &Stamp, rollout: &Rollout, problems: &[Problem], life: &Lifecycle) -> Condition {
    let all_ready = rollout.ready >= rollout.desired && rollout.desired > 0;
    let busy = rollout.in_progress || life.progress.is_some();
    if !problems.is_empty() {
        let msg = format!(
            "{} of {} pods ready; the latest spec is not applied (see Degraded)",
            rollout.ready, rollout.desired
        );
        return stamp.condition(READY, all_ready, "SpecNotApplied", msg);
    }
    if all_ready && !busy {
        let msg = format!("all {} pods are ready", rollout.desired);
        return stamp.condition(READY, true, "AllPodsReady", msg);
    }
    let reason = if let Some((reason, _)) = &life.progress {
        reason.as_str()
    } else if rollout.in_progress {
        "RollingOut"
    } else {
        "PodsNotReady"
    };
    let msg = if life.troubles.is_empty() {
        format!("{} of {} pods ready", rollout.ready, rollout.desired)
    } else {
        format!(
            "{} of {} pods ready: {}",
            rollout.ready,
            rollout.desired,
            life.troubles.join("; ")
        )
    };
    stamp.condition(READY, false, reason, msg)
}

/// The status after a failed reconcile: what was there, with Ready=False
/// and Degraded=True saying what failed.
pub fn failed(
    cluster: &MqttCluster,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> MqttClusterStatus {
    let mut st = cluster.status.clone().unwrap_or_default();
    let prev = st.conditions.clone();
    let stamp = Stamp {
        generation: cluster.metadata.generation,
        previous: &prev,
        now,
    };
    for type_ in [READY, DEGRADED] {
        let c = stamp.condition(type_, type_ == DEGRADED, reason, message.to_string());
        match st.conditions.iter_mut().find(|x| x.type_ == c.type_) {
            Some(x) => *x = c,
            None => st.conditions.push(c),
        }
    }
    st.phase = Some(format!("Degraded: {reason}"));
    st
}
