//! What to do next about Raft membership, decided afresh every reconcile
//! from what is observed (pods, each broker's `Status`, the StatefulSet), so
//! that an operator that crashed between two steps simply carries on. At
//! most one membership step is taken per reconcile; the StatefulSet's
//! `replicas` and rollout `partition` are derived here too:
//!
//! * scale-up: `replicas` goes up at once; each new pod, once its broker
//!   answers, is added as a learner (which waits for it to catch up), then
//!   the learners are promoted to voters together;
//! * scale-down: for the retiring pods (highest ordinal first): drain its
//!   clients, move leadership away if it leads, remove it from Raft; only
//!   when none of them is a member any more is `replicas` lowered;
//! * rollout: the partition holds every pod on its old template; one pod at
//!   a time, highest ordinal first, and only while the group is healthy
//!   (every pod ready, every voter caught up), leadership is moved away
//!   from it, it is drained, and the partition is lowered to it;
//! * a member whose broker reports an empty store is removed, then added
//!   again like a new pod.
//!
//! A removal is refused when the voters left could not form a quorum of
//! healthy nodes: the plan waits instead (never forced).

use std::collections::{BTreeMap, BTreeSet};

use crate::membership::{Member, MembershipView, NodeState};

/// Node id of a pod: ordinal + 1 (the broker's default, from `HOSTNAME`).
pub fn node_id(ordinal: i32) -> u64 {
    ordinal as u64 + 1
}

pub fn ordinal_of(id: u64) -> i32 {
    id as i32 - 1
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodFacts {
    pub ordinal: i32,
    /// The Pod object exists.
    pub exists: bool,
    /// The Pod's Ready condition.
    pub ready: bool,
    /// The Pod runs the StatefulSet's latest template.
    pub current: bool,
    /// Its broker's own Status (`None`: unreachable).
    pub node: Option<NodeState>,
    /// Why the pod does not run, when it is stuck: a container that cannot
    /// start (CrashLoopBackOff, ImagePullBackOff, ...) or not ready for
    /// longer than the operator waits.
    pub broken: Option<String>,
    /// Broken, and created long enough ago that restarting it is not a
    /// loop.
    pub restartable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// `spec.replicas`.
    pub desired: i32,
    /// The StatefulSet's replicas now (`None`: no StatefulSet yet).
    pub replicas: Option<i32>,
    /// The StatefulSet's rollout partition now.
    pub partition: Option<i32>,
    /// The pod template about to be applied differs from the one applied.
    pub template_changed: bool,
    /// The StatefulSet controller has seen the latest spec (its revisions
    /// are up to date).
    pub settled: bool,
    pub pods: BTreeMap<i32, PodFacts>,
    /// A voter is caught up when its matched index is at most this far
    /// behind the leader's last log index.
    pub max_lag: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// AddLearner on the leader (waits for catch-up).
    AddLearner { ordinal: i32 },
    /// ChangeMembership on the leader: `voters` exactly.
    Promote {
        ordinals: Vec<i32>,
        voters: Vec<u64>,
    },
    /// RemoveNode of a member whose store came back empty.
    ResetMember { ordinal: i32 },
    /// Drain on the pod itself.
    Drain { ordinal: i32 },
    /// TransferLeader on the leader (pod `from`) to node `to`.
    TransferLeader { from: i32, to: u64 },
    /// RemoveNode of a retiring member.
    RemoveMember { ordinal: i32 },
    /// Undrain on a drained pod that stays.
    Undrain { ordinal: i32 },
    /// Deletes a pod that does not run (it comes back at the StatefulSet's
    /// current revision below the partition).
    RestartPod { ordinal: i32 },
}

impl Step {
    /// The pod the step is about (`None` for a promotion of several).
    pub fn ordinal(&self) -> Option<i32> {
        match self {
            Step::AddLearner { ordinal }
            | Step::ResetMember { ordinal }
            | Step::Drain { ordinal }
            | Step::RemoveMember { ordinal }
            | Step::Undrain { ordinal }
            | Step::RestartPod { ordinal } => Some(*ordinal),
            Step::TransferLeader { from, .. } => Some(*from),
            Step::Promote { ordinals, .. } => match ordinals.as_slice() {
                [one] => Some(*one),
                _ => None,
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Step::AddLearner { .. } => "AddingLearner",
            Step::Promote { .. } => "Promoting",
            Step::ResetMember { .. } => "ResettingMember",
            Step::Drain { .. } => "Draining",
            Step::TransferLeader { .. } => "TransferringLeader",
            Step::RemoveMember { .. } => "RemovingMember",
            Step::Undrain { .. } => "Undraining",
            Step::RestartPod { .. } => "RestartingPod",
        }
    }
}

/// Why nothing can be done right now (a wait that can get stuck).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    /// Progressing reason while waiting.
    pub reason: &'static str,
    /// Degraded reason once it has waited too long.
    pub stuck_reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub replicas: i32,
    pub partition: i32,
    /// Ordinal of the leader's pod.
    pub leader: Option<i32>,
    pub step: Option<Step>,
    /// The operation in progress (Progressing=True with this reason).
    pub progress: Option<(&'static str, String)>,
    pub wait: Option<Wait>,
    /// The pod a step or wait is about (for Events).
    pub pod: Option<i32>,
    pub view: MembershipView,
}

/// The leader as the pods see it: a pod that says it leads, followed by
/// the most pods (a node that made a group of its own does not win), then
/// the highest term (a deposed leader that has not heard yet loses).
fn leader(facts: &Facts) -> Option<&NodeState> {
    let nodes: Vec<&NodeState> = facts
        .pods
        .values()
        .filter_map(|p| p.node.as_ref())
        .collect();
    nodes
        .iter()
        .copied()
        .filter(|n| n.is_leader())
        .max_by_key(|l| {
            let followers = nodes.iter().filter(|n| n.leader == Some(l.id)).count();
            (followers, l.term)
        })
}

/// A member that came back empty: its store says so, or (node 1, which
/// makes a new cluster of an empty store) it leads a group of its own.
fn came_back_empty(n: &NodeState, leader: &NodeState) -> bool {
    let alone = n.is_leader()
        && n.id != leader.id
        && n.members.iter().all(|m| m.id == n.id)
        && leader.members.iter().filter(|m| m.voter).count() > 1;
    !n.initialized || alone
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

pub fn view(facts: &Facts, pod_name: impl Fn(i32) -> String) -> MembershipView {
    let Some(l) = leader(facts) else {
        return MembershipView::default();
    };
    let mut members = Vec::new();
    let mut learners = Vec::new();
    for m in &l.members {
        let name = pod_name(ordinal_of(m.id));
        if m.voter {
            members.push(name);
        } else {
            learners.push(name);
        }
    }
    MembershipView {
        leader: Some(pod_name(ordinal_of(l.id))),
        members,
        learners,
    }
}

pub(crate) struct Group<'a> {
    facts: &'a Facts,
    leader: &'a NodeState,
    members: BTreeMap<u64, &'a Member>,
    last: u64,
}

impl Group<'_> {
    fn voters(&self) -> BTreeSet<u64> {
        self.members
            .values()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect()
    }

    fn reachable(&self, id: u64) -> Option<&NodeState> {
        self.facts
            .pods
            .get(&ordinal_of(id))
            .and_then(|p| p.node.as_ref())
    }

    /// Answers, is not draining, and the leader has replicated to it up to
    /// a small lag.
    fn caught_up(&self, id: u64) -> bool {
        if id == self.leader.id {
            return true;
        }
        let Some(n) = self.reachable(id) else {
            return false;
        };
        let matched = self.members.get(&id).and_then(|m| m.matched).unwrap_or(0);
        n.initialized && matched + self.facts.max_lag >= self.last
    }

    fn healthy(&self, id: u64) -> bool {
        self.caught_up(id) && self.reachable(id).is_some_and(|n| !n.draining)
    }

    /// Whether `voters` (a configuration about to be made) has a quorum of
    /// healthy nodes.
    fn quorum_after(&self, voters: &BTreeSet<u64>) -> bool {
        let healthy = voters.iter().filter(|id| self.healthy(**id)).count();
        !voters.is_empty() && healthy >= majority(voters.len())
    }

    /// The best voter to hand leadership to, other than `not`: healthy,
    /// preferring the most replicated, then the highest ordinal among those
    /// the rollout already restarted (`prefer`).
    fn successor(&self, not: u64, keep: impl Fn(u64) -> bool) -> Option<u64> {
        self.voters()
            .into_iter()
            .filter(|id| *id != not && keep(*id) && self.healthy(*id))
            .max_by_key(|id| {
                (
                    self.members.get(id).and_then(|m| m.matched).unwrap_or(0),
                    *id,
                )
            })
    }
}

fn with_step(base: &Plan, step: Step, message: String) -> Plan {
    Plan {
        progress: Some((step.name(), message)),
        step: Some(step),
        ..base.clone()
    }
}

fn waiting(base: &Plan, reason: &'static str, stuck: &'static str, message: String) -> Plan {
    Plan {
        progress: Some((reason, message.clone())),
        wait: Some(Wait {
            reason,
            stuck_reason: stuck,
            message,
        }),
        ..base.clone()
    }
}

mod reset;
mod rollout;
mod scale_down;
mod scale_up;
#[cfg(test)]
mod testing;

/// What every phase of the plan looks at.
pub(crate) struct Ctx<'a> {
    pub facts: &'a Facts,
    pub g: &'a Group<'a>,
    pub name: &'a dyn Fn(i32) -> String,
    /// `spec.replicas`.
    pub desired: i32,
    /// The StatefulSet's replicas now.
    pub current: i32,
    pub partition_now: i32,
    /// The partition whatever else happens (a changed template is held).
    pub hold: i32,
    pub leader_ord: i32,
    /// max(current, desired): the pods that exist or are to.
    pub target: i32,
}

/// The next thing to do: the first phase that has something to do (reset,
/// scale-down, scale-up, undrain, rollout) decides. `name` turns an
/// ordinal into a pod name (for messages).
pub fn plan(facts: &Facts, name: impl Fn(i32) -> String) -> Plan {
    let desired = facts.desired;
    let view = view(facts, &name);
    let Some(current) = facts.replicas else {
        return Plan {
            replicas: desired,
            partition: 0,
            progress: Some(("Creating", format!("creating {desired} pods"))),
            view,
            ..Plan::default()
        };
    };
    let target = current.max(desired);
    let partition_now = facts.partition.unwrap_or(0);
    // Whatever else happens, a changed template is held until the group is
    // looked at with it applied.
    let hold = if facts.template_changed {
        target
    } else {
        partition_now
    };
    let Some(l) = leader(facts) else {
        let up = facts.pods.values().filter(|p| p.node.is_some()).count();
        return Plan {
            replicas: target,
            partition: rollout::leaderless_partition(facts, hold),
            progress: Some((
                "WaitingForLeader",
                format!("{up} of {current} brokers answer; none of them leads the Raft group"),
            )),
            wait: Some(Wait {
                reason: "WaitingForLeader",
                stuck_reason: "NoLeader",
                message: format!("no Raft leader among the {up} brokers that answer"),
            }),
            view,
            ..Plan::default()
        };
    };
    let g = Group {
        facts,
        leader: l,
        members: l.members.iter().map(|m| (m.id, m)).collect(),
        last: l.last_log_index.unwrap_or(0),
    };
    let leader_ord = ordinal_of(l.id);
    let base = Plan {
        replicas: target,
        partition: hold,
        leader: Some(leader_ord),
        view,
        ..Plan::default()
    };

    let c = Ctx {
        facts,
        g: &g,
        name: &name,
        desired,
        current,
        partition_now,
        hold,
        leader_ord,
        target,
    };
    if let Some(p) = reset::reset(&c, &base) {
        return p;
    }
    if let Some(p) = scale_down::retire(&c, &base) {
        return p;
    }
    let base = Plan {
        replicas: desired,
        ..base
    };
    if let Some(p) = scale_up::join(&c, &base) {
        return p;
    }
    if let Some(p) = rollout::undrain(&c, &base) {
        return p;
    }
    rollout::next(&c, base)
}

#[cfg(test)]
mod tests {
    use super::testing::{facts, name};
    use super::*;

    #[test]
    fn steady_group_does_nothing() {
        let f = facts(3, &[1, 2, 3], &[], 1);
        let p = plan(&f, name);
        assert_eq!(p.step, None);
        assert_eq!(p.progress, None);
        assert_eq!((p.replicas, p.partition), (3, 3));
        assert_eq!(p.view.members, vec!["demo-0", "demo-1", "demo-2"]);
        assert_eq!(p.view.leader.as_deref(), Some("demo-0"));
    }
}
