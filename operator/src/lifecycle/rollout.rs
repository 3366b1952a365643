//! Rollout: a changed template is held until the group is looked at with
//! it applied; then one pod at a time from the highest ordinal, only while
//! the group is healthy, leadership moved away and clients handed over
//! before the partition is lowered to it.

use super::*;

/// Rollout, one pod at a time from the highest ordinal.
pub(super) fn next(c: &Ctx, base: Plan) -> Plan {
    let (facts, g, name) = (c.facts, c.g, c.name);
    let (desired, partition_now) = (c.desired, c.partition_now);
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
    let Some(&k) = outdated.iter().max() else {
        return all_current(c, base);
    };
    let done = desired - outdated.len() as i32;
    if let Some(p) = broken_first(c, &base, &outdated, k, done) {
        return p;
    }
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
    if let Some(why) = unhealthy(c, Some(k)) {
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
    hand_over(c, base, k, done)
}

/// The rollout's pod `k`, healthy group around it: leadership moved off
/// it, its clients handed over, then the partition lowered to it.
fn hand_over(c: &Ctx, base: Plan, k: i32, done: i32) -> Plan {
    let (facts, g, name) = (c.facts, c.g, c.name);
    let (desired, leader_ord) = (c.desired, c.leader_ord);
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

/// Every pod runs the new template (or is about to): the partition goes
/// up to `desired` once no pod the rollout deleted is still missing.
fn all_current(c: &Ctx, base: Plan) -> Plan {
    let (facts, name) = (c.facts, c.name);
    let (desired, partition_now) = (c.desired, c.partition_now);
    // A pod the rollout deleted and the StatefulSet controller has not
    // made again yet: raising the partition now would have it made at
    // the old revision, and rolled again.
    if let Some(m) = (partition_now..desired).find(|o| !facts.pods.contains_key(o)) {
        return Plan {
            partition: partition_now,
            pod: Some(m),
            ..waiting(
                &base,
                "RollingPod",
                "PodNotReady",
                format!("waiting for {} to come back with the new template", name(m)),
            )
        };
    }
    let partition = desired;
    match unhealthy(c, None) {
        None => Plan { partition, ..base },
        Some(why) => Plan {
            partition,
            ..waiting(&base, "WaitingForHealthyGroup", "PodNotReady", why)
        },
    }
}

/// Why the group is not healthy enough to restart a pod (every pod but
/// `skip` ready and caught up), if it is not.
fn unhealthy(c: &Ctx, skip: Option<i32>) -> Option<String> {
    let (facts, g, name) = (c.facts, c.g, c.name);
    for o in 0..c.desired {
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
}

/// An outdated pod that does not run (crash-looping, its image not pulled,
/// not ready for too long) serves nobody: waiting for it to be healthy
/// before rolling it would wait forever, and rolling it costs the group
/// nothing. The highest outdated pod, when broken, gets the partition at
/// once (no drain, no health gate); a broken pod below healthy outdated
/// ones is restarted (it comes back at the current revision) once it has
/// been broken for long enough.
fn broken_first(c: &Ctx, base: &Plan, outdated: &[i32], k: i32, done: i32) -> Option<Plan> {
    let (facts, name, desired) = (c.facts, c.name, c.desired);
    let broken = |o: &i32| facts.pods.get(o).and_then(|p| p.broken.clone());
    let b = outdated
        .iter()
        .copied()
        .filter(|o| broken(o).is_some())
        .max()?;
    let why = broken(&b).unwrap_or_default();
    if b == k {
        let leads = facts
            .pods
            .get(&k)
            .and_then(|p| p.node.as_ref())
            .is_some_and(|n| n.is_leader());
        if leads || k >= c.partition_now {
            // A leader is moved away first; at or above the partition the
            // StatefulSet controller is replacing it already.
            return None;
        }
        return Some(Plan {
            partition: k,
            pod: Some(k),
            progress: Some((
                "RollingBrokenPod",
                format!(
                    "{} does not run ({why}) and has an old template: replacing it at once ({done} of {desired} updated)",
                    name(k)
                ),
            )),
            ..base.clone()
        });
    }
    let restartable = facts.pods.get(&b).is_some_and(|p| p.restartable);
    restartable.then(|| {
        with_step(
            &Plan {
                partition: c.partition_now,
                ..base.clone()
            },
            Step::RestartPod { ordinal: b },
            format!(
                "{} does not run ({why}): restarting it before the rollout goes on",
                name(b)
            ),
        )
    })
}

/// The partition when no broker leads: held, except that a broken
/// outdated pod that is the highest outdated one is rolled (there is no
/// quorum to protect, and it may be why there is none: a one-pod cluster
/// given a bad image).
pub(super) fn leaderless_partition(facts: &Facts, hold: i32) -> i32 {
    if facts.template_changed {
        return hold;
    }
    let partition_now = facts.partition.unwrap_or(0);
    let k = facts
        .pods
        .values()
        .filter(|p| p.ordinal < facts.desired && p.exists && !p.current)
        .map(|p| p.ordinal)
        .max();
    match k {
        Some(k) if k < partition_now && facts.pods.get(&k).is_some_and(|p| p.broken.is_some()) => k,
        _ => hold,
    }
}

/// A member that is to stay but is draining (a scale-down cancelled after
/// its drain step; a rollout whose template was reverted after it drained
/// this pod) refuses clients for good unless it is told to take them again.
pub(super) fn undrain(c: &Ctx, base: &Plan) -> Option<Plan> {
    let (facts, g, name) = (c.facts, c.g, c.name);
    // Which pods are current is only sure once the StatefulSet controller
    // has seen the latest spec.
    if !facts.settled || facts.template_changed {
        return None;
    }
    let o = (0..c.desired).rev().find(|o| {
        let p = facts.pods.get(o);
        g.members.contains_key(&node_id(*o))
            && p.is_some_and(|p| p.current && p.node.as_ref().is_some_and(|n| n.draining))
    })?;
    Some(with_step(
        base,
        Step::Undrain { ordinal: o },
        format!("{} was drained but stays: it takes clients again", name(o)),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{facts, name};
    use super::super::*;

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

    #[test]
    fn a_pod_the_rollout_deleted_keeps_the_partition_until_it_is_back() {
        // Pods 1 and 2 rolled; the partition went to 0 and pod 0 was deleted,
        // not made again yet.
        let mut f = facts(3, &[1, 2, 3], &[], 2);
        f.partition = Some(0);
        f.pods.remove(&0);
        let p = plan(&f, name);
        assert_eq!(p.partition, 0, "raised now, pod 0 would come back old");
        assert_eq!(p.progress.map(|p| p.0), Some("RollingPod"));
        // Back, current: the partition goes up again.
        let mut f = facts(3, &[1, 2, 3], &[], 2);
        f.partition = Some(0);
        assert_eq!(plan(&f, name).partition, 3);
    }
}
