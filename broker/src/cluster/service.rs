//! The gRPC services a node serves: `Raft` (openraft's RPCs and forwarded
//! proposals) and `Admin` (status and membership).

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use raftmq_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::Guard;
use super::convert;
use super::log_store::LogStore;
use super::network::Network;
use super::snapshot_inbox::SnapshotInbox;
use super::standing::Standing;
use super::state_machine::StateMachine;
use super::supervisor::RaftHandle;
use super::types::{Batch, NodeId, Raft, WriteGate};
use crate::engine::Broker;
use crate::engine::DrainMode;
use crate::state::Command;

fn bad_request(e: convert::Invalid) -> Status {
    Status::invalid_argument(e.to_string())
}

/// openraft refused: this node cannot take part right now (shutting down,
/// storage failure); the peer retries later.
fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

pub struct RaftService {
    pub raft: RaftHandle,
    pub gate: WriteGate,
    pub node_id: NodeId,
    pub standing: Arc<Standing>,
    /// Snapshot chunks from the leader, checked before they are installed.
    pub inbox: Arc<SnapshotInbox>,
    pub guard: Guard,
}

/// The node a Raft request's vote names: the leader (or candidate) that
/// sent it. 0 (no vote) matches no certificate.
fn voter(vote: &Option<pb::Vote>) -> NodeId {
    vote.as_ref().map_or(0, |v| v.node_id)
}

impl RaftService {
    /// A node that came up with an empty store takes Raft traffic only once
    /// a leader adds it afresh (see [`Standing`]).
    fn refuse_if_unjoined(&self) -> Result<(), Status> {
        if self.standing.unjoined() {
            return Err(Status::failed_precondition(format!(
                "node {} has an empty store and has not been added to a cluster",
                self.node_id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.guard
            .node(&req, "AppendEntries", voter(&req.get_ref().vote))?;
        self.refuse_if_unjoined()?;
        let r = req.into_inner();
        let rpc = openraft::raft::AppendEntriesRequest {
            vote: convert::vote_from(r.vote).map_err(bad_request)?,
            prev_log_id: convert::opt_log_id_from(r.prev_log_id),
            entries: r
                .entries
                .into_iter()
                .map(convert::entry_from)
                .collect::<Result<_, _>>()
                .map_err(bad_request)?,
            leader_commit: convert::opt_log_id_from(r.leader_commit),
        };
        let resp = self
            .raft
            .get()
            .append_entries(rpc)
            .await
            .map_err(unavailable)?;
        use openraft::raft::AppendEntriesResponse as A;
        use pb::append_entries_response::Result as R;
        let result = match resp {
            A::Success => R::Success(pb::Empty {}),
            A::PartialSuccess(m) => R::PartialSuccess(pb::PartialSuccess {
                matching: convert::opt_log_id_to(&m),
            }),
            A::Conflict => R::Conflict(pb::Empty {}),
            A::HigherVote(v) => R::HigherVote(convert::vote_to(&v)),
        };
        if !matches!(result, R::HigherVote(_)) {
            self.standing.heard_from_leader();
        }
        Ok(Response::new(pb::AppendEntriesResponse {
            result: Some(result),
        }))
    }

    async fn vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.guard.node(&req, "Vote", voter(&req.get_ref().vote))?;
        self.refuse_if_unjoined()?;
        let r = req.into_inner();
        let rpc = openraft::raft::VoteRequest {
            vote: convert::vote_from(r.vote).map_err(bad_request)?,
            last_log_id: convert::opt_log_id_from(r.last_log_id),
        };
        let resp = self.raft.get().vote(rpc).await.map_err(unavailable)?;
        Ok(Response::new(pb::VoteResponse {
            vote: Some(convert::vote_to(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: convert::opt_log_id_to(&resp.last_log_id),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        self.guard
            .node(&req, "InstallSnapshot", voter(&req.get_ref().vote))?;
        self.refuse_if_unjoined()?;
        let r = req.into_inner();
        let vote = convert::vote_from(r.vote).map_err(bad_request)?;
        let meta = convert::snapshot_meta_from(r.meta).map_err(bad_request)?;
        // A leader whose term has passed gets our vote back, as openraft
        // answers, before any of its bytes are kept.
        let mine = self.raft.get().metrics().borrow().vote;
        if vote < mine {
            return Ok(Response::new(pb::InstallSnapshotResponse {
                vote: Some(convert::vote_to(&mine)),
            }));
        }
        let blob = self
            .inbox
            .take(&meta.snapshot_id, r.offset, &r.data, r.done)?;
        let Some(blob) = blob else {
            return Ok(Response::new(pb::InstallSnapshotResponse {
                vote: Some(convert::vote_to(&mine)),
            }));
        };
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: Box::new(std::io::Cursor::new(blob)),
        };
        let resp = self
            .raft
            .get()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::InstallSnapshotResponse {
            vote: Some(convert::vote_to(&resp.vote)),
        }))
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.guard.member_or_admin(&req, "ReadIndex")?;
        let raft = self.raft.get();
        let index = match req.into_inner().lease {
            true => leader_index(&raft).await?,
            false => leader_read_index(&raft).await?,
        };
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn notify_membership(
        &self,
        req: Request<pb::MembershipNotice>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.guard.notice(&req, "NotifyMembership")?;
        let r = req.into_inner();
        if r.node_id != self.node_id {
            return Err(Status::invalid_argument(format!(
                "this is node {}, not node {}",
                self.node_id, r.node_id
            )));
        }
        self.standing
            .set_member(&self.raft.get(), r.member)
            .map_err(|e| Status::internal(format!("membership marker: {e}")))?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn propose(
        &self,
        req: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        self.guard.reader(&req, "Propose")?;
        // The proposer's origin and commands are checked when applied; a
        // batch that does not decode is refused here so it never reaches
        // the log.
        let (origin, _) =
            convert::batch_from(&Batch(req.get_ref().batch.clone())).map_err(bad_request)?;
        // A node proposes in its own name only.
        self.guard.node(&req, "Propose", origin)?;
        let batch = Batch(req.into_inner().batch);
        // A node removed from the cluster may not know it yet; its writes
        // must not commit any more.
        let member = self.raft.membership(|m| m.get_node(&origin).is_some());
        if !member {
            return Ok(Response::new(pb::ProposeResponse {
                error: format!("node {origin} is not a member of the cluster"),
                leader_hint: None,
                retry: false,
            }));
        }
        let written = {
            let _open = self.gate.read().await;
            self.raft.get().client_write(batch).await
        };
        let resp = match written {
            Ok(_) => pb::ProposeResponse::default(),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => pb::ProposeResponse {
                error: "not the leader".into(),
                leader_hint: f.leader_id,
                retry: true,
            },
            Err(e) => pb::ProposeResponse {
                error: e.to_string(),
                leader_hint: None,
                retry: false,
            },
        };
        Ok(Response::new(resp))
    }
}

/// On the leader: confirms leadership with a quorum and returns the index
/// a linearizable read must wait for.
async fn leader_read_index(raft: &Raft) -> Result<u64, Status> {
    raft.ensure_linearizable()
        .await
        .map(|l| l.map_or(0, |l| l.index))
        .map_err(|e| Status::failed_precondition(e.to_string()))
}

/// On the leader, while its lease holds: its committed index, without a
/// round of heartbeats (which also logs an error for every member that is
/// down). The lease: it heard from a quorum within the minimum election
/// timeout (followers honour a leader for the maximum one, so no other
/// leader can have been elected since) and has committed an entry of its
/// own term (so everything committed before it led is below). Every write
/// committed before the call is then at or below the answer. Otherwise the
/// read index confirmed with heartbeats.
async fn leader_index(raft: &Raft) -> Result<u64, Status> {
    let state = raft
        .with_raft_state(|st| {
            let leading = st.server_state == ServerState::Leader;
            let term = st.vote_ref().leader_id().term;
            st.committed
                .filter(|c| leading && c.leader_id.term == term)
                .map(|c| c.index)
        })
        .await;
    let lease_ms = raft.config().election_timeout_min;
    let acked = raft.metrics().borrow().millis_since_quorum_ack;
    match (state, acked) {
        (Ok(Some(index)), Some(ms)) if ms < lease_ms => Ok(index),
        _ => leader_read_index(raft).await,
    }
}

/// The leader's read index: every write committed before the call is at or
/// below it (asked over gRPC from a follower). `lease`: the leader may
/// answer from its lease (see [`leader_index`]).
pub async fn read_index(raft: &Raft, net: &Network, lease: bool) -> Result<u64, Status> {
    let (leader, addr) = {
        let m = raft.metrics();
        let m = m.borrow();
        let addr = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l))
            .map(|n| n.addr.clone());
        (m.current_leader == Some(m.id), addr)
    };
    if leader {
        return match lease {
            true => leader_index(raft).await,
            false => leader_read_index(raft).await,
        };
    }
    let addr = addr.ok_or_else(|| Status::unavailable("no leader known"))?;
    let mut client = net
        .raft_client(&addr)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let req = pb::ReadIndexRequest { lease };
    Ok(client.read_index(req).await?.into_inner().index)
}

/// Waits until this node's state reflects every write committed before the
/// call: the leader's read index (asked over gRPC from a follower), then
/// this node's apply up to it.
pub async fn read_fresh(raft: &Raft, net: &Network) -> Result<(), Status> {
    let index = read_index(raft, net, false).await?;
    raft.wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(index), "read index")
        .await
        .map_err(|e| Status::deadline_exceeded(e.to_string()))?;
    Ok(())
}

#[derive(Clone)]
pub struct AdminService {
    pub raft: RaftHandle,
    pub machine: StateMachine,
    pub net: Network,
    pub gate: WriteGate,
    /// The node's own log store, read for `Status.initialized`.
    pub log: LogStore,
    /// The engine, for Drain (set once the cluster is attached).
    pub engine: Arc<OnceLock<Arc<Broker>>>,
    pub standing: Arc<Standing>,
    pub guard: Guard,
}

/// The longest a node holds its elections for a transfer.
const ELECTION_HOLD_MAX: Duration = Duration::from_secs(15);
/// How long a transfer waits for the target to win.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the leader waits for a node to take a membership notice.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long Drain waits for clients to be gone when the caller says 0.
const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

impl AdminService {
    /// Commits a membership change; `retain`: voters it removes stay on
    /// as learners.
    async fn change(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
        retain: bool,
    ) -> Result<(), Status> {
        self.raft
            .get()
            .change_membership(change, retain)
            .await
            .map_err(write_err)?;
        Ok(())
    }

    /// Waits until `target` holds this leader's whole log.
    async fn caught_up(&self, target: NodeId, limit: Duration) -> Result<(), Status> {
        let mut watch = self.raft.get().metrics();
        let done = tokio::time::timeout(limit, async {
            loop {
                {
                    let m = watch.borrow_and_update();
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&target).copied().flatten())
                        .map(|l| l.index);
                    if m.last_log_index.is_some() && matched >= m.last_log_index {
                        return;
                    }
                }
                if watch.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        done.map_err(|_| {
            Status::deadline_exceeded(format!("node {target} did not catch up with the log"))
        })
    }

    /// Asks `target` to campaign every 200 ms until it leads.
    async fn campaign(&self, target: NodeId, addr: &str, limit: Duration) -> Result<(), Status> {
        let channel = self
            .net
            .channel(addr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut client = pb::admin_client::AdminClient::new(channel);
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.raft.get().metrics().borrow().current_leader == Some(target) {
                return Ok(());
            }
            if let Err(e) = client.elect(pb::Empty {}).await {
                tracing::debug!(target, "transfer: elect: {e}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(Status::deadline_exceeded(format!(
            "node {target} did not win an election"
        )))
    }
}

impl AdminService {
    /// Makes `target` the leader (see the comment inside); used by the
    /// TransferLeader RPC and by this node's own SIGTERM. Each of its two
    /// waits (catch-up, election) takes at most `limit`; it is not to be
    /// cancelled from outside, which would leave elections held.
    pub async fn transfer(&self, target: NodeId, limit: Duration) -> Result<String, Status> {
        let m = self.raft.get().metrics().borrow().clone();
        if m.current_leader == Some(target) {
            return Ok(format!("node {target} already leads"));
        }
        let addr = m
            .membership_config
            .membership()
            .get_node(&target)
            .map(|n| n.addr.clone())
            .ok_or_else(|| Status::not_found(format!("node {target} is not a member")))?;
        // openraft 0.9 has no leader transfer. The same effect: writes
        // wait at this node's gate (latency, not errors), the target
        // catches up with the whole log, the other followers hold their own
        // elections, this leader stops its heartbeats, and the target
        // campaigns until the followers' lease on this leader runs out and
        // they vote for it. Everything is given back however it ends; the
        // writes then go to the new leader.
        let _closed = self.gate.write().await;
        self.caught_up(target, limit).await?;
        let others: Vec<String> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != target && *id != m.id)
            .filter_map(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            })
            .collect();
        let hold = |addr: String, hold: bool| {
            let net = self.net.clone();
            async move {
                let channel = net.channel(&addr).ok()?;
                pb::admin_client::AdminClient::new(channel)
                    .hold_elections(pb::HoldElectionsRequest { hold })
                    .await
                    .ok()
            }
        };
        futures_util::future::join_all(others.iter().cloned().map(|a| hold(a, true))).await;
        self.raft.get().runtime_config().elect(false);
        self.raft.get().runtime_config().heartbeat(false);
        let moved = self.campaign(target, &addr, limit).await;
        self.raft.get().runtime_config().heartbeat(true);
        self.raft.get().runtime_config().elect(true);
        futures_util::future::join_all(others.into_iter().map(|a| hold(a, false))).await;
        moved.map(|()| format!("node {target} leads"))
    }

    /// Tells node `id` at `addr` that it is being added, or was removed.
    async fn notify(&self, id: NodeId, addr: &str, member: bool) -> Result<(), Status> {
        let mut target = self
            .net
            .raft_client(addr)
            .map_err(|e| Status::invalid_argument(format!("address {addr}: {e}")))?;
        let notice = target.notify_membership(pb::MembershipNotice {
            node_id: id,
            member,
        });
        match tokio::time::timeout(NOTIFY_TIMEOUT, notice).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Status::unavailable(format!(
                "node {id} at {addr}: {}",
                e.message()
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "node {id} at {addr}: no answer in {NOTIFY_TIMEOUT:?}"
            ))),
        }
    }

    /// Whether this node's Raft store holds anything of a group: a vote,
    /// a log entry (or a purge point), or a snapshot. False means a fresh
    /// volume. The operator needs it because a member's pod may come back
    /// with an empty volume (a lost or replaced PVC): that node must be
    /// removed and re-added as a new member, never trusted with its old
    /// identity (it has forgotten its votes and the entries it promised
    /// to keep).
    fn initialized(&self) -> Result<bool, Status> {
        let holds = self
            .log
            .holds_state()
            .map_err(|e| Status::internal(format!("raft store: {e}")))?;
        // A member that lost committed entries to damage waits like one
        // with a wiped volume (see Standing).
        Ok((holds || self.machine.has_snapshot()) && !self.standing.unjoined())
    }
}

/// A membership call made on a follower names the leader, so that the
/// caller (the CLI, the operator) can go there.
fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Status::failed_precondition(format!(
                "not the leader; leader is {}",
                match (f.leader_id, f.leader_node) {
                    (Some(id), Some(n)) => format!("node {id} at {}", n.addr),
                    _ => "unknown".to_string(),
                }
            ))
        }
        RaftError::APIError(e) => Status::failed_precondition(e.to_string()),
        RaftError::Fatal(e) => Status::unavailable(e.to_string()),
    }
}

fn ok(message: impl Into<String>) -> Result<Response<pb::AdminResponse>, Status> {
    Ok(Response::new(pb::AdminResponse {
        message: message.into(),
    }))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.guard.reader(&req, "Status")?;
        let m = self.raft.get().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        // A removed node's log still lists it (see Standing): it says what
        // it was told instead.
        let removed = self.standing.removed();
        let nodes = membership
            .nodes()
            .filter(|(id, _)| !removed || **id != m.id)
            .map(|(id, n)| pb::NodeStatus {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index),
            })
            .collect();
        let state = match m.state {
            _ if removed => "removed",
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        Ok(Response::new(pb::StatusResponse {
            node_id: m.id,
            state: state.into(),
            term: m.current_term,
            leader_id: m.current_leader.filter(|_| !removed),
            last_log_index: m.last_log_index,
            committed_index: m.last_applied.map(|l| l.index),
            applied_index: m.last_applied.map(|l| l.index),
            nodes,
            snapshot_index: m.snapshot.map(|l| l.index),
            initialized: self.initialized()?,
            draining: self.engine.get().is_some_and(|b| b.is_draining()),
        }))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        self.guard.admin(&req, "AddLearner")?;
        let r = req.into_inner();
        if r.node_id == 0 || r.addr.is_empty() {
            return Err(Status::invalid_argument("node_id and addr are required"));
        }
        // The node takes Raft traffic only from a leader that says it adds
        // it (a fresh store otherwise waits: see Standing).
        self.notify(r.node_id, &r.addr, true).await?;
        self.raft
            .get()
            .add_learner(r.node_id, BasicNode::new(&r.addr), true)
            .await
            .map_err(write_err)?;
        ok(format!(
            "node {} at {} added as a learner and caught up",
            r.node_id, r.addr
        ))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        self.guard.admin(&req, "ChangeMembership")?;
        let voters: BTreeSet<u64> = req.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("at least one voter is required"));
        }
        self.change(ChangeMembers::ReplaceAllVoters(voters.clone()), true)
            .await?;
        ok(format!("voters are now {voters:?}"))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        self.guard.admin(&req, "RemoveNode")?;
        let id = req.into_inner().node_id;
        let membership = self.raft.membership(Clone::clone);
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) {
            let rest: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
            if rest.is_empty() {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            self.change(ChangeMembers::ReplaceAllVoters(rest), false)
                .await?;
        } else if membership.get_node(&id).is_some() {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await?;
        } else {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        // Its routes go with it (its sessions stay until their clients
        // claim them elsewhere; its wills are fired by the liveness probe).
        let gone = convert::batch_to(
            self.raft.get().metrics().borrow().id,
            &[Command::NodeGone { node: id }],
        );
        if let Err(e) = self.raft.get().client_write(gone).await {
            tracing::warn!(node = id, "routes of the removed node not dropped: {e}");
        }
        // It will not hear the final membership from the log; a node that
        // is down now learns nothing, and stays out anyway (nobody votes
        // for it or replicates to it).
        if let Some(node) = membership.get_node(&id) {
            if let Err(e) = self.notify(id, &node.addr, false).await {
                tracing::warn!(node = id, "removed node not told: {}", e.message());
            }
        }
        ok(format!("node {id} removed"))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        self.guard.admin(&req, "TransferLeader")?;
        let target = req.into_inner().node_id;
        ok(self.transfer(target, TRANSFER_TIMEOUT).await?)
    }

    async fn hold_elections(
        &self,
        req: Request<pb::HoldElectionsRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        self.guard.member_or_admin(&req, "HoldElections")?;
        let hold = req.into_inner().hold;
        self.raft.get().runtime_config().elect(!hold);
        if hold {
            // Never held for good, whatever happens to the transfer.
            let raft = self.raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ELECTION_HOLD_MAX).await;
                raft.get().runtime_config().elect(true);
            });
        }
        ok(if hold {
            "elections held"
        } else {
            "elections resumed"
        })
    }

    async fn digest(
        &self,
        req: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        self.guard.reader(&req, "Digest")?;
        if req.into_inner().fresh {
            read_fresh(&self.raft.get(), &self.net).await?;
        }
        let state = self.machine.state();
        Ok(Response::new(pb::DigestResponse {
            applied_index: state.applied_index,
            retained: state.retained.len() as u64,
            sessions: state.sessions.len() as u64,
            queued: state
                .sessions
                .values()
                .map(|s| s.messages.len() as u64)
                .sum(),
            routes: state.routes.values().map(|n| n.len() as u64).sum(),
            digest: state.digest(),
        }))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.guard.admin(&req, "Drain")?;
        let r = req.into_inner();
        let broker = self
            .engine
            .get()
            .ok_or_else(|| Status::unavailable("the broker is not started yet"))?;
        let timeout = match r.timeout_ms {
            0 => DRAIN_TIMEOUT_DEFAULT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let outcome = broker
            .drain(DrainMode::hand_over(&r.server_reference), timeout)
            .await;
        Ok(Response::new(pb::DrainResponse {
            disconnected: outcome.disconnected,
            remaining: outcome.remaining,
        }))
    }

    async fn undrain(
        &self,
        req: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::UndrainResponse>, Status> {
        self.guard.admin(&req, "Undrain")?;
        let broker = self
            .engine
            .get()
            .ok_or_else(|| Status::unavailable("the broker is not started yet"))?;
        let was_draining = broker.undrain().map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::UndrainResponse { was_draining }))
    }

    async fn elect(&self, req: Request<pb::Empty>) -> Result<Response<pb::AdminResponse>, Status> {
        self.guard.member_or_admin(&req, "Elect")?;
        self.raft
            .get()
            .trigger()
            .elect()
            .await
            .map_err(unavailable)?;
        ok("election started")
    }
}
