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
}

impl Step {
    /// The pod the step is about (`None` for a promotion of several).
    pub fn ordinal(&self) -> Option<i32> {
        match self {
            Step::AddLearner { ordinal }
            | Step::ResetMember { ordinal }
            | Step::Drain { ordinal }
            | Step::RemoveMember { ordinal } => Some(*ordinal),
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

struct Group<'a> {
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

/// The next thing to do. `name` turns an ordinal into a pod name (for
/// messages).
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
            partition: hold,
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

    // 1. A member whose store came back empty: out first, in again later.
    for p in facts.pods.values() {
        let Some(n) = &p.node else { continue };
        let id = node_id(p.ordinal);
        let Some(m) = g.members.get(&id) else {
            continue;
        };
        if !came_back_empty(n, l) || p.ordinal >= target {
            continue;
        }
        if m.voter {
            let mut rest = g.voters();
            rest.remove(&id);
            if !g.quorum_after(&rest) {
                return waiting(
&base,
                    "WaitingForQuorum",
                    "NoQuorum",
                    format!(
                        "{} came back with an empty volume, but removing it would leave too few healthy voters",
                        name(p.ordinal)
                    ),
                );
            }
        }
        return with_step(
&base,
            Step::ResetMember { ordinal: p.ordinal },
            format!(
                "{} came back with an empty volume: removing it from Raft to add it again as a new member",
                name(p.ordinal)
            ),
        );
    }

    // 2. Members that should not be (scale-down), highest ordinal first.
    let retiring: Vec<u64> = g
        .members
        .keys()
        .rev()
        .copied()
        .filter(|id| ordinal_of(*id) >= desired)
        .collect();
    if let Some(&id) = retiring.first() {
        let o = ordinal_of(id);
        let node = g.reachable(id);
        let base = Plan {
            replicas: current,
            ..base.clone()
        };
        if node.is_some_and(|n| !n.draining) {
            return with_step(
                &base,
                Step::Drain { ordinal: o },
                format!(
                    "scaling {current} to {desired}: handing {}'s clients over to the other pods",
                    name(o)
                ),
            );
        }
        if id == l.id {
            return match g.successor(id, |v| ordinal_of(v) < desired) {
                Some(to) => with_step(
                    &base,
                    Step::TransferLeader { from: o, to },
                    format!(
                        "scaling {current} to {desired}: moving leadership from {} to {}",
                        name(o),
                        name(ordinal_of(to))
                    ),
                ),
                None => Plan {
                    replicas: current,
                    ..waiting(
                        &base,
                        "WaitingForHealthyGroup",
                        "NoQuorum",
                        format!(
                            "{} leads and no remaining voter is caught up to take over",
                            name(o)
                        ),
                    )
                },
            };
        }
        let mut rest = g.voters();
        rest.remove(&id);
        if g.members.get(&id).is_some_and(|m| m.voter) && !g.quorum_after(&rest) {
            return Plan {
                replicas: current,
                ..waiting(
                    &base,
                    "WaitingForQuorum",
                    "NoQuorum",
                    format!(
                        "removing {} would leave {} voters of which too few are healthy",
                        name(o),
                        rest.len()
                    ),
                )
            };
        }
        return with_step(
            &base,
            Step::RemoveMember { ordinal: o },
            format!(
                "scaling {current} to {desired}: removing {} from Raft",
                name(o)
            ),
        );
    }
    if current > desired {
        // Every retiring pod is out of the group: the StatefulSet may go.
        return Plan {
            replicas: desired,
            partition: hold.min(desired),
            progress: Some((
                "ScalingDown",
                format!("the retiring pods left the Raft group; scaling {current} to {desired}"),
            )),
            ..base
        };
    }
    let base = Plan {
        replicas: desired,
        ..base
    };

    // 3. Pods that should be members and are not (scale-up, re-added).
    for o in 0..desired {
        let id = node_id(o);
        if g.members.contains_key(&id) {
            continue;
        }
        let p = facts.pods.get(&o);
        if p.is_some_and(|p| p.node.is_some()) {
            return with_step(
                &base,
                Step::AddLearner { ordinal: o },
                format!(
                    "adding {} to the Raft group as a learner (waits until it has caught up)",
                    name(o)
                ),
            );
        }
        return Plan {
            pod: Some(o),
            ..waiting(
                &base,
                "ScalingUp",
                "PodNotReady",
                format!(
                    "waiting for {} to start (its broker does not answer yet)",
                    name(o)
                ),
            )
        };
    }
    let learners: Vec<i32> = g
        .members
        .values()
        .filter(|m| !m.voter && ordinal_of(m.id) < desired)
        .map(|m| ordinal_of(m.id))
        .collect();
    if !learners.is_empty() {
        let mut voters = g.voters();
        voters.extend(learners.iter().map(|o| node_id(*o)));
        return with_step(
            &base,
            Step::Promote {
                ordinals: learners.clone(),
                voters: voters.into_iter().collect(),
            },
            format!(
                "promoting {} to voter",
                learners
                    .iter()
                    .map(|o| name(*o))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }

    // 4. Rollout, one pod at a time from the highest ordinal.
    if facts.template_changed {
        return Plan {
            partition: desired,
            progress: Some((
                "RollingOut",
                "the pod template changed; pods restart one at a time, highest ordinal first"
                    .into(),
            )),
            ..base
        };
    }
    let outdated: Vec<i32> = facts
        .pods
        .values()
        .filter(|p| p.ordinal < desired && p.exists && !p.current)
        .map(|p| p.ordinal)
        .collect();
    let unhealthy = |skip: Option<i32>| -> Option<String> {
        for o in 0..desired {
            if Some(o) == skip {
                continue;
            }
            let p = facts.pods.get(&o);
            if !p.is_some_and(|p| p.ready) {
                return Some(format!("{} is not ready", name(o)));
            }
            if !g.healthy(node_id(o)) {
                return Some(format!("{} has not caught up with the leader", name(o)));
            }
        }
        None
    };
    let Some(&k) = outdated.iter().max() else {
        let partition = desired;
        return match unhealthy(None) {
            None => Plan { partition, ..base },
            Some(why) => Plan {
                partition,
                ..waiting(&base, "WaitingForHealthyGroup", "PodNotReady", why)
            },
        };
    };
    let done = desired - outdated.len() as i32;
    if k >= partition_now {
        // The StatefulSet controller is restarting it.
        return Plan {
            partition: partition_now,
            pod: Some(k),
            ..waiting(
                &base,
                "RollingPod",
                "PodNotReady",
                format!(
                    "restarting {} with the new template ({done} of {desired} updated)",
                    name(k)
                ),
            )
        };
    }
    let base = Plan {
        partition: partition_now,
        ..base
    };
    if let Some(why) = unhealthy(Some(k)) {
        return waiting(
            &base,
            "WaitingForHealthyGroup",
            "PodNotReady",
            format!("rollout ({done} of {desired} updated) waits: {why}"),
        );
    }
    if !g.caught_up(node_id(k)) {
        return waiting(
            &base,
            "WaitingForHealthyGroup",
            "PodNotReady",
            format!(
                "rollout waits: {} has not caught up with the leader",
                name(k)
            ),
        );
    }
    if k == leader_ord {
        let updated = |id: u64| facts.pods.get(&ordinal_of(id)).is_some_and(|p| p.current);
        let to = g
            .successor(node_id(k), updated)
            .or_else(|| g.successor(node_id(k), |_| true));
        return match to {
            Some(to) => Plan {
                progress: Some((
                    "TransferringLeader",
                    format!(
                        "rollout: moving leadership from {} to {} before it restarts",
                        name(k),
                        name(ordinal_of(to))
                    ),
                )),
                step: Some(Step::TransferLeader { from: k, to }),
                ..base
            },
            None => waiting(
                &base,
                "WaitingForHealthyGroup",
                "NoQuorum",
                format!("{} leads and no other voter is caught up", name(k)),
            ),
        };
    }
    if facts
        .pods
        .get(&k)
        .and_then(|p| p.node.as_ref())
        .is_some_and(|n| !n.draining)
    {
        return Plan {
            progress: Some((
                "Draining",
                format!(
                    "rollout: handing {}'s clients over before it restarts",
                    name(k)
                ),
            )),
            step: Some(Step::Drain { ordinal: k }),
            ..base
        };
    }
    Plan {
        partition: k,
        pod: Some(k),
        progress: Some((
            "RollingPod",
            format!(
                "restarting {} with the new template ({done} of {desired} updated)",
                name(k)
            ),
        )),
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, voter: bool, matched: u64) -> Member {
        Member {
            id,
            addr: format!("n{id}"),
            voter,
            matched: Some(matched),
        }
    }

    /// A group of `voters` (+ `learners`) led by `leader`, every pod up,
    /// ready and current, log at 100, everyone caught up.
    fn facts(n_pods: i32, voters: &[u64], learners: &[u64], leader: u64) -> Facts {
        let mut members: Vec<Member> = voters.iter().map(|v| member(*v, true, 100)).collect();
        members.extend(learners.iter().map(|v| member(*v, false, 100)));
        let mut pods = BTreeMap::new();
        for o in 0..n_pods {
            let id = node_id(o);
            let is_member = voters.contains(&id) || learners.contains(&id);
            pods.insert(
                o,
                PodFacts {
                    ordinal: o,
                    exists: true,
                    ready: is_member,
                    current: true,
                    node: Some(NodeState {
                        id,
                        state: if id == leader { "Leader" } else { "Follower" }.into(),
                        term: 2,
                        leader: is_member.then_some(leader),
                        last_log_index: Some(100),
                        initialized: is_member,
                        draining: false,
                        members: if id == leader {
                            members.clone()
                        } else {
                            Vec::new()
                        },
                    }),
                },
            );
        }
        Facts {
            desired: n_pods,
            replicas: Some(n_pods),
            partition: Some(n_pods),
            template_changed: false,
            pods,
            max_lag: 10,
        }
    }

    fn name(o: i32) -> String {
        format!("demo-{o}")
    }

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

    #[test]
    fn scale_up_adds_learners_lowest_first_then_promotes() {
        let mut f = facts(5, &[1, 2, 3], &[], 1);
        f.replicas = Some(3);
        f.pods.remove(&4);
        let p = plan(&f, name);
        assert_eq!(p.replicas, 5, "replicas go up at once");
        assert_eq!(p.step, Some(Step::AddLearner { ordinal: 3 }));

        // Pod 3 a learner, pod 4 not started: wait for it.
        let mut f = facts(5, &[1, 2, 3], &[4], 1);
        f.pods.remove(&4);
        let p = plan(&f, name);
        assert_eq!(p.step, None);
        assert_eq!(p.wait.map(|w| w.stuck_reason), Some("PodNotReady"));

        let f = facts(5, &[1, 2, 3], &[4, 5], 1);
        let p = plan(&f, name);
        assert_eq!(
            p.step,
            Some(Step::Promote {
                ordinals: vec![3, 4],
                voters: vec![1, 2, 3, 4, 5]
            })
        );
    }

    #[test]
    fn scale_down_drains_moves_leader_removes_then_lowers_replicas() {
        let mut f = facts(5, &[1, 2, 3, 4, 5], &[], 5);
        f.desired = 3;
        let p = plan(&f, name);
        assert_eq!(p.replicas, 5, "replicas held while members retire");
        assert_eq!(p.step, Some(Step::Drain { ordinal: 4 }));

        // Drained, and it leads: leadership moves to a staying voter.
        if let Some(n) = f.pods.get_mut(&4).and_then(|p| p.node.as_mut()) {
            n.draining = true;
        }
        let p = plan(&f, name);
        assert_eq!(p.replicas, 5);
        match p.step {
            Some(Step::TransferLeader { from: 4, to }) => assert!(to <= 3, "to {to}"),
            other => panic!("expected a transfer, got {other:?}"),
        }

        // Not the leader any more: removed.
        let mut f = facts(5, &[1, 2, 3, 4, 5], &[], 1);
        f.desired = 3;
        if let Some(n) = f.pods.get_mut(&4).and_then(|p| p.node.as_mut()) {
            n.draining = true;
        }
        let p = plan(&f, name);
        assert_eq!(p.step, Some(Step::RemoveMember { ordinal: 4 }));
        assert_eq!(p.replicas, 5);

        // Pod 4 out; pod 3 next (highest first), killed: no drain, removed.
        let mut f = facts(5, &[1, 2, 3, 4], &[], 1);
        f.desired = 3;
        if let Some(p) = f.pods.get_mut(&3) {
            p.node = None;
        }
        let p = plan(&f, name);
        assert_eq!(p.step, Some(Step::RemoveMember { ordinal: 3 }));

        // All out: replicas lowered.
        let mut f = facts(5, &[1, 2, 3], &[], 1);
        f.desired = 3;
        let p = plan(&f, name);
        assert_eq!(p.step, None);
        assert_eq!(p.replicas, 3);
    }

    #[test]
    fn removal_never_breaks_quorum() {
        // 5 voters, scaling to 3, but two of the staying ones are down:
        // the new configuration {1,2,3,4} would have 2 healthy of 4.
        let mut f = facts(5, &[1, 2, 3, 4, 5], &[], 1);
        f.desired = 3;
        for o in [1, 2] {
            if let Some(p) = f.pods.get_mut(&o) {
                p.node = None;
            }
        }
        if let Some(n) = f.pods.get_mut(&4).and_then(|p| p.node.as_mut()) {
            n.draining = true;
        }
        let p = plan(&f, name);
        assert_eq!(p.step, None);
        assert_eq!(p.wait.map(|w| w.stuck_reason), Some("NoQuorum"));
        assert_eq!(p.replicas, 5);
    }

    #[test]
    fn empty_volume_member_is_reset_then_re_added() {
        let mut f = facts(3, &[1, 2, 3], &[], 1);
        if let Some(n) = f.pods.get_mut(&2).and_then(|p| p.node.as_mut()) {
            n.initialized = false;
        }
        let p = plan(&f, name);
        assert_eq!(p.step, Some(Step::ResetMember { ordinal: 2 }));
        // Removed: it is a pod that is not a member, added as a learner.
        let f = facts(3, &[1, 2], &[], 1);
        let p = plan(&f, name);
        assert_eq!(p.step, Some(Step::AddLearner { ordinal: 2 }));
    }

    #[test]
    fn node_1_that_made_a_group_of_its_own_is_reset() {
        let mut f = facts(3, &[1, 2, 3], &[], 2);
        // Pod 0 came back empty and bootstrapped itself: it leads alone.
        if let Some(n) = f.pods.get_mut(&0).and_then(|p| p.node.as_mut()) {
            n.state = "Leader".into();
            n.leader = Some(1);
            n.term = 9;
            n.members = vec![member(1, true, 1)];
        }
        let p = plan(&f, name);
        assert_eq!(p.leader, Some(1), "the leader the others follow");
        assert_eq!(p.step, Some(Step::ResetMember { ordinal: 0 }));
    }

    #[test]
    fn rollout_holds_then_goes_highest_first_moving_the_leader() {
        let mut f = facts(3, &[1, 2, 3], &[], 3);
        f.template_changed = true;
        let p = plan(&f, name);
        assert_eq!(p.partition, 3, "a new template is held");
        assert_eq!(p.step, None);

        // Applied: every pod outdated; pod 2 first, and it leads.
        let mut f = facts(3, &[1, 2, 3], &[], 3);
        for p in f.pods.values_mut() {
            p.current = false;
        }
        let p = plan(&f, name);
        assert!(
            matches!(p.step, Some(Step::TransferLeader { from: 2, to: 1 | 2 })),
            "{:?}",
            p.step
        );
        assert_eq!(p.partition, 3);

        // Leader moved: drain pod 2, then lower the partition to it.
        let mut f = facts(3, &[1, 2, 3], &[], 1);
        for p in f.pods.values_mut() {
            p.current = false;
        }
        assert_eq!(plan(&f, name).step, Some(Step::Drain { ordinal: 2 }));
        if let Some(n) = f.pods.get_mut(&2).and_then(|p| p.node.as_mut()) {
            n.draining = true;
        }
        if let Some(p) = f.pods.get_mut(&2) {
            p.ready = false;
        }
        let p = plan(&f, name);
        assert_eq!((p.step, p.partition), (None, 2));

        // Pod 2 restarted but pod 1 lags: wait; caught up: pod 1 next.
        let mut f = facts(3, &[1, 2, 3], &[], 1);
        f.partition = Some(2);
        for o in [0, 1] {
            if let Some(p) = f.pods.get_mut(&o) {
                p.current = false;
            }
        }
        if let Some(p) = f.pods.get_mut(&0).and_then(|p| p.node.as_mut()) {
            p.members[2].matched = Some(50);
        }
        let p = plan(&f, name);
        assert_eq!(p.step, None);
        assert_eq!(p.progress.map(|p| p.0), Some("WaitingForHealthyGroup"));
        assert_eq!(p.partition, 2);
        if let Some(p) = f.pods.get_mut(&0).and_then(|p| p.node.as_mut()) {
            p.members[2].matched = Some(100);
        }
        assert_eq!(plan(&f, name).step, Some(Step::Drain { ordinal: 1 }));
    }

    #[test]
    fn no_leader_waits_and_holds() {
        let mut f = facts(3, &[1, 2, 3], &[], 1);
        for p in f.pods.values_mut() {
            p.node = None;
        }
        f.desired = 2;
        let p = plan(&f, name);
        assert_eq!(p.replicas, 3, "no scale-down without a leader");
        assert_eq!(p.wait.map(|w| w.stuck_reason), Some("NoLeader"));
    }
}
