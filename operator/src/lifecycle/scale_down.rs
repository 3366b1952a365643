//! Scale-down: the retiring members (highest ordinal first) drain, hand
//! leadership over and leave Raft; only then is `replicas` lowered.

use super::*;

/// Members that should not be (scale-down), highest ordinal first.
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

#[cfg(test)]
mod tests {
    use super::super::testing::{facts, name};
    use super::super::*;

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
}
