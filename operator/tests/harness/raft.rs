//! The tests' one fake Raft group, behind the `Membership` seam, whose
//! brokers live in the API double's pods: a broker answers while its pod
//! runs (the kubelet has it Running), a replaced pod is a restarted broker
//! (its drain is gone), the leader's pod going away means another voter
//! leads. It records the Admin calls made, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raftmq_operator::membership::{
    BoxFuture, Change, Member, Membership, MembershipError, NodeState, Result, Target,
};
use serde_json::Value;

use crate::api_double::ApiDouble;
use crate::harness::NS;

#[derive(Default)]
pub struct Group {
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub leader: u64,
    /// Node ids whose broker starts with an empty volume (uninitialized)
    /// until it is added again.
    pub empty: BTreeSet<u64>,
    /// Drained brokers: node id -> the uid of the pod that was drained.
    pub draining: BTreeMap<u64, String>,
    /// `add_learner <id> <addr> via <leader id>`, `change_membership
    /// [ids]`, `remove_node <id>`, `transfer_leader <from> -> <to>`,
    /// `drain <id> -> <server reference>`, `undrain <id>`.
    pub calls: Vec<String>,
    /// Whether the brokers have Undrain.
    pub no_undrain: bool,
    /// AddLearner times out while set.
    pub fail_add: bool,
}

#[derive(Clone)]
pub struct PodGroup {
    api: ApiDouble,
    cluster: String,
    g: Arc<Mutex<Group>>,
    /// Images whose brokers never answer (stuck starting).
    pub mute_images: Arc<Mutex<BTreeSet<String>>>,
}

fn ready<T: Send + 'static>(v: Result<T>) -> BoxFuture<'static, Result<T>> {
    Box::pin(async move { v })
}

impl PodGroup {
    pub fn new(api: &ApiDouble, cluster: &str) -> PodGroup {
        PodGroup {
            api: api.clone(),
            cluster: cluster.into(),
            g: Arc::default(),
            mute_images: Arc::default(),
        }
    }

    pub fn g(&self) -> MutexGuard<'_, Group> {
        self.g.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn calls(&self) -> Vec<String> {
        std::mem::take(&mut self.g().calls)
    }

    fn pod(&self, id: u64) -> Option<Value> {
        let ordinal = id.checked_sub(1)?;
        self.api
            .get("v1", "pods", NS, &format!("{}-{ordinal}", self.cluster))
    }

    /// The broker of node `id` runs: its pod exists, its container is
    /// running, and its image is not one that never answers.
    pub fn up(&self, id: u64) -> bool {
        let mute = self
            .mute_images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.pod(id).is_some_and(|p| {
            p["status"]["phase"] == "Running"
                && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
                && !p["spec"]["containers"][0]["image"]
                    .as_str()
                    .is_some_and(|i| mute.contains(i))
        })
    }

    /// The nodes whose broker (the pod that was drained, not a new one)
    /// is draining.
    pub fn draining(&self) -> Vec<u64> {
        let d = self.g().draining.clone();
        d.into_iter()
            .filter(|(id, uid)| self.uid(*id) == *uid)
            .map(|(id, _)| id)
            .collect()
    }

    fn uid(&self, id: u64) -> String {
        self.pod(id)
            .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// A voter that runs leads when the leader's broker does not.
    fn elect(&self, g: &mut Group) {
        if !self.up(g.leader) {
            if let Some(v) = g.voters.iter().copied().find(|v| self.up(*v)) {
                g.leader = v;
            }
        }
    }

    fn unreachable<T: Send + 'static>(&self, id: u64) -> BoxFuture<'static, Result<T>> {
        ready(Err(MembershipError::Unreachable {
            pod: format!("{}-{}", self.cluster, id - 1),
            addr: String::new(),
            reason: "connection refused".into(),
        }))
    }
}

impl Membership for PodGroup {
    fn peer_addr(&self, _: &Target, ordinal: i32) -> String {
        format!("pod{ordinal}:7100")
    }

    fn status<'a>(&'a self, _: &'a Target, ordinal: i32) -> BoxFuture<'a, Result<NodeState>> {
        let id = ordinal as u64 + 1;
        if !self.up(id) {
            return self.unreachable(id);
        }
        let uid = self.uid(id);
        let mut g = self.g();
        self.elect(&mut g);
        let member = g.voters.contains(&id) || g.learners.contains(&id);
        let members = if id == g.leader {
            g.voters
                .iter()
                .map(|v| (*v, true))
                .chain(g.learners.iter().map(|l| (*l, false)))
                .map(|(id, voter)| Member {
                    id,
                    addr: format!("pod{}:7100", id - 1),
                    voter,
                    matched: Some(100),
                })
                .collect()
        } else {
            Vec::new()
        };
        ready(Ok(NodeState {
            id,
            state: if id == g.leader { "Leader" } else { "Follower" }.into(),
            term: 3,
            leader: member.then_some(g.leader),
            last_log_index: Some(100),
            initialized: !g.empty.contains(&id),
            draining: g.draining.get(&id) == Some(&uid),
            members,
        }))
    }

    fn change<'a>(
        &'a self,
        _: &'a Target,
        leader: i32,
        change: Change,
    ) -> BoxFuture<'a, Result<String>> {
        let mut g = self.g();
        match change {
            Change::AddLearner { id, addr } => {
                g.calls
                    .push(format!("add_learner {id} {addr} via {}", leader + 1));
                if g.fail_add {
                    return ready(Err(MembershipError::Timeout {
                        call: "AddLearner",
                        pod: format!("{}-{leader}", self.cluster),
                        after: Duration::from_secs(120),
                    }));
                }
                g.learners.insert(id);
                g.empty.remove(&id);
                ready(Ok("added".into()))
            }
            Change::ChangeMembership { voters } => {
                g.calls.push(format!("change_membership {voters:?}"));
                for v in &voters {
                    g.learners.remove(v);
                }
                g.voters = voters.into_iter().collect();
                ready(Ok("changed".into()))
            }
            Change::RemoveNode { id } => {
                g.calls.push(format!("remove_node {id}"));
                g.voters.remove(&id);
                g.learners.remove(&id);
                ready(Ok("removed".into()))
            }
            Change::TransferLeader { to } => {
                g.calls
                    .push(format!("transfer_leader {} -> {to}", leader + 1));
                g.leader = to;
                ready(Ok("transferred".into()))
            }
        }
    }

    fn drain<'a>(
        &'a self,
        _: &'a Target,
        ordinal: i32,
        server_reference: String,
    ) -> BoxFuture<'a, Result<(u64, u64)>> {
        let id = ordinal as u64 + 1;
        if !self.up(id) {
            return self.unreachable(id);
        }
        let uid = self.uid(id);
        let mut g = self.g();
        g.calls.push(format!("drain {id} -> {server_reference}"));
        g.draining.insert(id, uid);
        ready(Ok((3, 0)))
    }

    fn undrain<'a>(&'a self, target: &'a Target, ordinal: i32) -> BoxFuture<'a, Result<String>> {
        let id = ordinal as u64 + 1;
        let mut g = self.g();
        if g.no_undrain {
            return ready(Err(MembershipError::Unsupported {
                call: "Undrain",
                pod: target.names.pod(ordinal),
            }));
        }
        g.calls.push(format!("undrain {id}"));
        g.draining.remove(&id);
        ready(Ok("drain ended".into()))
    }
}

/// The Raft groups of every cluster the API double has: a [`PodGroup`] per
/// cluster, made the first time the controller asks about it.
#[derive(Clone)]
pub struct Groups {
    api: ApiDouble,
    groups: Arc<Mutex<BTreeMap<String, PodGroup>>>,
}

impl Groups {
    pub fn new(api: &ApiDouble) -> Groups {
        Groups {
            api: api.clone(),
            groups: Arc::default(),
        }
    }

    /// The group of cluster `name`.
    pub fn of(&self, name: &str) -> PodGroup {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .entry(name.to_string())
            .or_insert_with(|| PodGroup::new(&self.api, name))
            .clone()
    }
}

impl Membership for Groups {
    fn peer_addr(&self, target: &Target, ordinal: i32) -> String {
        self.of(&target.names.cluster).peer_addr(target, ordinal)
    }

    fn status<'a>(&'a self, target: &'a Target, ordinal: i32) -> BoxFuture<'a, Result<NodeState>> {
        let g = self.of(&target.names.cluster);
        Box::pin(async move { g.status(target, ordinal).await })
    }

    fn change<'a>(
        &'a self,
        target: &'a Target,
        leader: i32,
        change: Change,
    ) -> BoxFuture<'a, Result<String>> {
        let g = self.of(&target.names.cluster);
        Box::pin(async move { g.change(target, leader, change).await })
    }

    fn drain<'a>(
        &'a self,
        target: &'a Target,
        ordinal: i32,
        server_reference: String,
    ) -> BoxFuture<'a, Result<(u64, u64)>> {
        let g = self.of(&target.names.cluster);
        Box::pin(async move { g.drain(target, ordinal, server_reference).await })
    }

    fn undrain<'a>(&'a self, target: &'a Target, ordinal: i32) -> BoxFuture<'a, Result<String>> {
        let g = self.of(&target.names.cluster);
        Box::pin(async move { g.undrain(target, ordinal).await })
    }
}

/// Fast pacing for tests driven reconcile by reconcile.
pub fn settings() -> raftmq_operator::controller::LifecycleSettings {
    raftmq_operator::controller::LifecycleSettings {
        stuck_after: Duration::from_secs(60),
        retry_base: Duration::from_secs(2),
        retry_max: Duration::from_secs(30),
        poll: Duration::from_secs(2),
        max_lag: 10,
        unready_after: Duration::from_secs(120),
    }
}
