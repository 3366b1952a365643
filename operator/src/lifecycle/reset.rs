//! A member whose volume came back empty (its store says so, or node 1
//! bootstrapped a group of its own) is removed from Raft, never trusted
//! under its old identity; scale-up then adds it again as a new member.

use super::*;

/// A member whose store came back empty: out first, in again later.
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

#[cfg(test)]
mod tests {
    use super::super::testing::{facts, member, name};
    use super::super::*;

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
}
