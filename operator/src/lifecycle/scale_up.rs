//! Scale-up: each pod that should be a member joins as a learner (once its
//! broker answers), then the learners are promoted to voters together.

use super::*;

/// Pods that should be members and are not (scale-up, re-added).
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

#[cfg(test)]
mod tests {
    use super::super::testing::{facts, name};
    use super::super::*;

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
}
