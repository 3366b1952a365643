//! Scaling: a member whose volume came back empty is reset, members that
//! should not be (scale-down) drain, hand leadership over and leave, pods
//! that should be members (scale-up, re-added) join as learners and are
//! promoted together.

use super::*;

/// 1. A member whose store came back empty: out first, in again later.
pub(super) fn reset(c: &Ctx, base: &Plan) -> Option<Plan> {
    let (facts, g, name) = (c.facts, c.g, c.name);
    let target = c.target;
    let l = c.g.leader;
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
                return Some(waiting(
                base,
                    "WaitingForQuorum",
                    "NoQuorum",
                    format!(
                        "{} came back with an empty volume, but removing it would leave too few healthy voters",
                        name(p.ordinal)
                    ),
                ));
            }
        }
        return Some(with_step(
                base,
            Step::ResetMember { ordinal: p.ordinal },
            format!(
                "{} came back with an empty volume: removing it from Raft to add it again as a new member",
                name(p.ordinal)
            ),
        ));
    }
    None
}

/// 2. Members that should not be (scale-down), highest ordinal first.
pub(super) fn retire(c: &Ctx, base: &Plan) -> Option<Plan> {
    let (g, name) = (c.g, c.name);
    let (desired, current, hold) = (c.desired, c.current, c.hold);
    let l = c.g.leader;
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
            return Some(with_step(
                &base,
                Step::Drain { ordinal: o },
                format!(
                    "scaling {current} to {desired}: handing {}'s clients over to the other pods",
                    name(o)
                ),
            ));
        }
        if id == l.id {
            return Some(match g.successor(id, |v| ordinal_of(v) < desired) {
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
            });
        }
        let mut rest = g.voters();
        rest.remove(&id);
        if g.members.get(&id).is_some_and(|m| m.voter) && !g.quorum_after(&rest) {
            return Some(Plan {
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
            });
        }
        return Some(with_step(
            &base,
            Step::RemoveMember { ordinal: o },
            format!(
                "scaling {current} to {desired}: removing {} from Raft",
                name(o)
            ),
        ));
    }
    if current > desired {
        // Every retiring pod is out of the group: the StatefulSet may go.
        return Some(Plan {
            replicas: desired,
            partition: hold.min(desired),
            progress: Some((
                "ScalingDown",
                format!("the retiring pods left the Raft group; scaling {current} to {desired}"),
            )),
            ..base.clone()
        });
    }
    None
}

/// 3. Pods that should be members and are not (scale-up, re-added).
pub(super) fn join(c: &Ctx, base: &Plan) -> Option<Plan> {
    let (facts, g, name) = (c.facts, c.g, c.name);
    let desired = c.desired;
    for o in 0..desired {
        let id = node_id(o);
        if g.members.contains_key(&id) {
            continue;
        }
        let p = facts.pods.get(&o);
        if p.is_some_and(|p| p.node.is_some()) {
            return Some(with_step(
                base,
                Step::AddLearner { ordinal: o },
                format!(
                    "adding {} to the Raft group as a learner (waits until it has caught up)",
                    name(o)
                ),
            ));
        }
        return Some(Plan {
            pod: Some(o),
            ..waiting(
                base,
                "ScalingUp",
                "PodNotReady",
                format!(
                    "waiting for {} to start (its broker does not answer yet)",
                    name(o)
                ),
            )
        });
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
        return Some(with_step(
            base,
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
        ));
    }
    None
}
