//! The engine's [`StateSeam`] over Raft, with group commit: commands wait
//! in one queue; a single writer takes everything queued, proposes it as one
//! Raft entry, and while that entry is in flight the next batch
//! accumulates. Many concurrent writers cost few Raft round trips.
//!
//! A leader change costs latency, not errors: a batch in flight to a leader
//! that stops answering (paused, dead, cut off) is proposed again to the
//! next leader as soon as this node learns of it, under the same batch id
//! (see `state_machine.rs`: engines hear of a batch committed twice once).
//! Writers are told "unavailable" only when no commit comes within the
//! commit deadline (`ClusterConfig::commit_deadline`), which outlasts an
//! election: an answer that means "outcome unknown", never "not done".
//!
//! Read indexes (what a publish's answer waits for, see
//! `engine/settle.rs`) are grouped the same way: one request to the leader
//! at a time, answering every caller that asked before it was sent.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use raftmq_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use super::convert::{self, BatchId};
use super::network::Network;
use super::state_machine::StateMachine;
use super::supervisor::RaftHandle;
use super::types::{Batch, Raft, WriteGate};
use crate::state::{Command, ReadIndex, ReplicatedState, StateError, StateSeam, Ticket};

/// Upper bounds of one group commit.
const MAX_BATCH_COMMANDS: usize = 4096;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// How long commands submitted lazily ([`StateSeam::submit_lazy`]) wait
/// for others to share their entry. A log flush takes milliseconds on a
/// shared virtual disk: a new persistent session's claim and start, not
/// waited for, would otherwise take one flush and its SUBSCRIBE, which is
/// waited for, the next; this way both go in one. Nothing waits longer
/// than this for the commands' sake: whoever needs a commit submits
/// eagerly, and takes the lazy ones queued before it along.
const LAZY_WINDOW: Duration = Duration::from_millis(5);

struct Pending {
    commands: Vec<Command>,
    done: oneshot::Sender<Result<(), StateError>>,
    /// Submitted lazily, at this moment.
    lazy: Option<tokio::time::Instant>,
}

/// One try at the leader's read index: it takes a round trip or two, so
/// a leader that does not answer in this long is asked again (it may have
/// been replaced meanwhile).
const READ_ATTEMPT: Duration = Duration::from_secs(1);

type ReadWaiter = oneshot::Sender<Result<u64, StateError>>;

pub struct RaftSeam {
    queue: mpsc::UnboundedSender<Pending>,
    reads: mpsc::UnboundedSender<ReadWaiter>,
    raft: RaftHandle,
    machine: StateMachine,
}

impl RaftSeam {
    /// `deadline`: how long a batch may wait for its commit before its
    /// writers are told the state is unavailable (a minority side of a
    /// partition; see `ClusterConfig::commit_deadline`).
    pub fn start(
        raft: RaftHandle,
        node_id: u64,
        net: Network,
        machine: StateMachine,
        gate: WriteGate,
        deadline: Duration,
    ) -> RaftSeam {
        let (queue, rx) = mpsc::unbounded_channel();
        let (reads, read_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_indexes(raft.clone(), net.clone(), deadline, read_rx));
        let w = Writer {
            raft: raft.clone(),
            node_id,
            net,
            gate,
            deadline,
        };
        tokio::spawn(w.run(rx));
        RaftSeam {
            queue,
            reads,
            raft,
            machine,
        }
    }
}

/// Answers read-index requests: everyone queued when a request is sent
/// shares its answer; who asks meanwhile waits for the next one (whose
/// request is sent after they asked, as a read index must be).
async fn read_indexes(
    raft: RaftHandle,
    net: Network,
    deadline: Duration,
    mut rx: mpsc::UnboundedReceiver<ReadWaiter>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while let Ok(w) = rx.try_recv() {
            group.push(w);
        }
        let index = match tokio::time::timeout(deadline, read_index(&raft, &net)).await {
            Ok(i) => Ok(i),
            Err(_) => Err(StateError::Unavailable(
                "no read index within the commit deadline".into(),
            )),
        };
        for w in group {
            let _ = w.send(index.clone());
        }
    }
}

/// The leader's read index, asked again (of whoever leads by then) until
/// one answers.
async fn read_index(raft: &RaftHandle, net: &Network) -> u64 {
    loop {
        let core = raft.get();
        match tokio::time::timeout(READ_ATTEMPT, super::service::read_index(&core, net, true)).await
        {
            Ok(Ok(index)) => return index,
            Ok(Err(e)) => tracing::debug!("read index: {}; asking again", e.message()),
            Err(_) => tracing::debug!("read index: no answer; asking again"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl RaftSeam {
    fn enqueue(&self, commands: Vec<Command>, lazy: bool) -> Ticket {
        let (done, rx) = oneshot::channel();
        let lazy = lazy.then(tokio::time::Instant::now);
        let pending = Pending {
            commands,
            done,
            lazy,
        };
        if self.queue.send(pending).is_err() {
            return Ticket::Done(Err(StateError::Unavailable("cluster stopped".into())));
        }
        Ticket::Pending(Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StateError::Unavailable("cluster stopped".into())))
        }))
    }
}

impl StateSeam for RaftSeam {
    fn submit(&self, commands: Vec<Command>) -> Ticket {
        self.enqueue(commands, false)
    }

    fn submit_lazy(&self, commands: Vec<Command>) -> Ticket {
        self.enqueue(commands, true)
    }

    fn snapshot(&self) -> ReplicatedState {
        self.machine.state()
    }

    fn follows_log(&self) -> bool {
        true
    }

    fn has_peers(&self) -> bool {
        let raft = self.raft.get();
        let m = raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().nodes().count() >= 2
    }

    fn read_index(&self) -> Option<ReadIndex> {
        if !self.has_peers() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.reads.send(tx);
        Some(Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StateError::Unavailable("cluster stopped".into())))
        }))
    }
}

/// Bytes a command adds to an entry, roughly: its message payload.
fn weight(c: &Command) -> usize {
    match c {
        Command::RetainSet(m) | Command::Enqueue { message: m, .. } => {
            m.payload.len() + m.topic.len() + 64
        }
        _ => 64,
    }
}

/// One group commit: `first` and what is queued behind it, up to the
/// batch's bounds. While everything in it was submitted lazily, it waits
/// (until the first is [`LAZY_WINDOW`] old) for more.
async fn gather(first: Pending, rx: &mut mpsc::UnboundedReceiver<Pending>) -> Vec<Pending> {
    let until = first.lazy.map(|at| at + LAZY_WINDOW);
    let mut group = Group::default();
    let mut room = group.add(first);
    loop {
        while room {
            match rx.try_recv() {
                Ok(p) => room = group.add(p),
                Err(_) => break,
            }
        }
        let Some(until) = until.filter(|_| room && !group.eager) else {
            return group.pending;
        };
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(p)) => room = group.add(p),
            _ => return group.pending,
        }
    }
}

#[derive(Default)]
struct Group {
    pending: Vec<Pending>,
    count: usize,
    bytes: usize,
    /// Someone waits for this group's commit.
    eager: bool,
}

impl Group {
    /// Adds `p`; whether the group has room for more.
    fn add(&mut self, p: Pending) -> bool {
        self.count += p.commands.len();
        self.bytes += p.commands.iter().map(weight).sum::<usize>();
        self.eager |= p.lazy.is_none();
        self.pending.push(p);
        self.count < MAX_BATCH_COMMANDS && self.bytes < MAX_BATCH_BYTES
    }
}

/// The one task that proposes this node's batches, in order.
struct Writer {
    raft: RaftHandle,
    node_id: u64,
    net: Network,
    gate: WriteGate,
    deadline: Duration,
}

impl Writer {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        // Names this process's batches (see `CommandBatch` in the proto).
        let mut id = BatchId {
            writer: rand::random::<u64>() | 1,
            number: 0,
        };
        let mut carry: Option<Pending> = None;
        loop {
            let first = match carry.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            let group = gather(first, &mut rx).await;
            let commands: Vec<Command> = group
                .iter()
                .flat_map(|p| p.commands.iter().cloned())
                .collect();
            id.number += 1;
            let batch = convert::batch_numbered(self.node_id, id, &commands);
            // Counted in the memory budget while it is on its way: its
            // bytes, and the log's copy of them as they are written.
            let _in_flight = crate::memory_budget::Held::new(2 * batch.0.len());
            let result = match tokio::time::timeout(self.deadline, self.commit(batch)).await {
                Ok(r) => r,
                Err(_) => Err(StateError::Unavailable(
                    "no quorum within the commit deadline".into(),
                )),
            };
            if let Err(e) = &result {
                tracing::warn!(commands = commands.len(), "raft commit failed: {e}");
            }
            for p in group {
                let _ = p.done.send(result.clone());
            }
        }
    }

    /// Proposes on the leader: locally when this node leads, else over
    /// gRPC. A leader that cannot be reached is retried (an election is
    /// likely under way), and one that stops answering is given up for the
    /// next leader this node learns of: writers see a failover as latency,
    /// not as errors (until the caller's deadline). A batch may so commit
    /// twice: every command is idempotent, and the state machine tells the
    /// engines of it once.
    async fn commit(&self, batch: Batch) -> Result<(), StateError> {
        loop {
            let written = {
                let _open = self.gate.read().await;
                self.raft.get().client_write(batch.clone()).await
            };
            let f = match written {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f,
                Err(e) => return Err(StateError::Unavailable(e.to_string())),
            };
            let Some(leader) = f.leader_node else {
                // An election is under way: wait for its outcome.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // A paused leader holds the call open and answers nothing: the
            // proposal goes to whoever leads next, once this node knows.
            let core = self.raft.get();
            let forwarded = tokio::select! {
                r = forward(&self.net, &leader.addr, batch.clone()) => r,
                () = leader_changes(&core, f.leader_id) => {
                    Forwarded::Unreachable(format!("leader {:?} replaced", f.leader_id))
                }
            };
            match forwarded {
                Forwarded::Committed => return Ok(()),
                Forwarded::Refused(e) => return Err(e),
                Forwarded::Unreachable(e) => {
                    tracing::debug!("{e}; proposing again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Resolves once this node's Raft no longer names `leader` as the leader
/// (it voted in an election, or heard from a new leader).
async fn leader_changes(raft: &Raft, leader: Option<u64>) {
    let mut metrics = raft.metrics();
    loop {
        if metrics.borrow_and_update().current_leader != leader {
            return;
        }
        if metrics.changed().await.is_err() {
            // Raft stopped: the deadline ends the wait.
            std::future::pending::<()>().await;
        }
    }
}

enum Forwarded {
    Committed,
    /// The leader answered no (e.g. this node is no longer a member).
    Refused(StateError),
    /// No answer: the leader may be gone, or may have moved.
    Unreachable(String),
}

async fn forward(net: &Network, addr: &str, batch: Batch) -> Forwarded {
    let mut client = match net.raft_client(addr) {
        Ok(c) => c,
        Err(e) => return Forwarded::Unreachable(format!("leader at {addr}: {e}")),
    };
    match client.propose(pb::ProposeRequest { batch: batch.0 }).await {
        Err(e) => Forwarded::Unreachable(format!("leader at {addr}: {e}")),
        Ok(resp) => {
            let resp = resp.into_inner();
            if resp.error.is_empty() {
                Forwarded::Committed
            } else if resp.retry {
                // It stepped down since; ask the new one.
                Forwarded::Unreachable(format!("leader at {addr}: {}", resp.error))
            } else {
                Forwarded::Refused(StateError::Unavailable(format!(
                    "leader at {addr}: {}",
                    resp.error
                )))
            }
        }
    }
}
