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
                broken: None,
                restartable: false,
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
        settled: true,
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
