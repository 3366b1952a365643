//! Groups to plan for, for the unit tests of every phase.

use super::*;

pub(super) fn member(id: u64, voter: bool, matched: u64) -> Member {
    Member {
        id,
        addr: format!("n{id}"),
        voter,
        matched: Some(matched),
    }
}

/// A group of `voters` (+ `learners`) led by `leader`, every pod up,
/// ready and current, log at 100, everyone caught up.
pub(super) fn facts(n_pods: i32, voters: &[u64], learners: &[u64], leader: u64) -> Facts {
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

pub(super) fn name(o: i32) -> String {
    format!("demo-{o}")
}
