//! The engine's [`StateSeam`] over Raft, with group commit: commands wait
//! in one queue; a single writer takes everything queued, proposes it as one
//! Raft entry, and while that entry is in flight the next batch
//! accumulates. Many concurrent writers cost few Raft round trips.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use raftmq_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use super::convert;
use super::network::Network;
use super::state_machine::StateMachine;
use super::supervisor::RaftHandle;
use super::types::{Batch, WriteGate};
use crate::state::{Command, ReplicatedState, StateError, StateSeam, Ticket};

/// Upper bounds of one group commit.
const MAX_BATCH_COMMANDS: usize = 4096;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How long a batch may wait for a quorum before its writers are told the
/// state is unavailable (a minority side of a partition).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

struct Pending {
    commands: Vec<Command>,
    done: oneshot::Sender<Result<(), StateError>>,
}

pub struct RaftSeam {
    queue: mpsc::UnboundedSender<Pending>,
    machine: StateMachine,
}

impl RaftSeam {
    pub fn start(
        raft: RaftHandle,
        node_id: u64,
        net: Network,
        machine: StateMachine,
        gate: WriteGate,
    ) -> RaftSeam {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(raft, node_id, net, gate, rx));
        RaftSeam { queue, machine }
    }
}

impl StateSeam for RaftSeam {
    fn submit(&self, commands: Vec<Command>) -> Ticket {
        let (done, rx) = oneshot::channel();
        if self.queue.send(Pending { commands, done }).is_err() {
            return Ticket::Done(Err(StateError::Unavailable("cluster stopped".into())));
        }
        Ticket::Pending(Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StateError::Unavailable("cluster stopped".into())))
        }))
    }

    fn snapshot(&self) -> ReplicatedState {
        self.machine.state()
    }

    fn follows_log(&self) -> bool {
        true
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

async fn writer(
    raft: RaftHandle,
    node_id: u64,
    net: Network,
    gate: WriteGate,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes: usize = first.commands.iter().map(weight).sum();
        let mut count = first.commands.len();
        let mut group = vec![first];
        while count < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.commands.len();
                    bytes += p.commands.iter().map(weight).sum::<usize>();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let commands: Vec<Command> = group
            .iter()
            .flat_map(|p| p.commands.iter().cloned())
            .collect();
        let batch = convert::batch_to(node_id, &commands);
        let result =
            match tokio::time::timeout(COMMIT_TIMEOUT, commit(&raft, &net, &gate, batch)).await {
                Ok(r) => r,
                Err(_) => Err(StateError::Unavailable(
                    "no quorum within the commit timeout".into(),
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

/// Proposes on the leader: locally when this node leads, else over gRPC.
/// A leader that cannot be reached is retried (an election is likely under
/// way) until the caller's commit timeout: writers see a failover as
/// latency, not as errors. A batch may then commit twice; every command is
/// idempotent.
async fn commit(
    raft: &RaftHandle,
    net: &Network,
    gate: &WriteGate,
    batch: Batch,
) -> Result<(), StateError> {
    loop {
        let written = {
            let _open = gate.read().await;
            raft.get().client_write(batch.clone()).await
        };
        match written {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_node {
                Some(leader) => match forward(net, &leader.addr, batch.clone()).await {
                    Forwarded::Committed => return Ok(()),
                    Forwarded::Refused(e) => return Err(e),
                    Forwarded::Unreachable(e) => {
                        tracing::debug!("{e}; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                // An election is under way: wait for its outcome.
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Err(e) => return Err(StateError::Unavailable(e.to_string())),
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
