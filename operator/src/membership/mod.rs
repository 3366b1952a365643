//! The seam for Raft membership: what the controller asks of the brokers'
//! `Admin` gRPC service. [`admin::AdminMembership`] is the real one (tonic,
//! mutual TLS when the cluster has certificates); the tests' double is a
//! fake Raft group (in `tests/`). What
//! to do, step by step, is decided by [`crate::lifecycle`] from what these
//! calls observe.

pub mod admin;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::render::Names;

/// What the operator knows about the Raft group (for status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipView {
    /// Pod name of the current leader.
    pub leader: Option<String>,
    /// Pod names of the voters.
    pub members: Vec<String>,
    /// Pod names of the learners (being caught up).
    pub learners: Vec<String>,
}

/// One member as the leader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    /// The leader's replication progress to it (`None`: unknown).
    pub matched: Option<u64>,
}

/// One node's own `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub id: u64,
    /// openraft's server state: `Leader`, `Follower`, `Learner`, ...
    pub state: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    /// False: the volume came back empty (no vote, no log).
    pub initialized: bool,
    /// Drain was called (or SIGTERM received).
    pub draining: bool,
    /// Every member this node knows of (authoritative on the leader).
    pub members: Vec<Member>,
}

impl NodeState {
    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.id) && self.state.eq_ignore_ascii_case("leader")
    }
}

/// Client certificate material for mutual TLS to the Admin service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_crt: String,
    pub cert: String,
    pub key: String,
}

/// Who to talk to: the cluster's names and, when its nodes require mutual
/// TLS, the certificate to present.
#[derive(Debug, Clone)]
pub struct Target {
    pub names: Names,
    pub tls: Option<ClientTls>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MembershipError {
    #[error("cannot reach {pod} at {addr}: {reason}")]
    Unreachable {
        pod: String,
        addr: String,
        reason: String,
    },
    #[error("{call} on {pod} timed out after {after:?}")]
    Timeout {
        call: &'static str,
        pod: String,
        after: Duration,
    },
    #[error("{call} on {pod} failed: {message}")]
    Rpc {
        call: &'static str,
        pod: String,
        message: String,
    },
    #[error("client TLS: {0}")]
    Tls(String),
    /// The broker does not have this call (an older version).
    #[error("{call} is not supported by the broker on {pod}")]
    Unsupported { call: &'static str, pod: String },
    /// A Kubernetes API call a step needed (a pod restart).
    #[error("Kubernetes API: {0}")]
    Api(String),
}

impl MembershipError {
    /// The Degraded reason this error becomes.
    pub fn reason(&self) -> &'static str {
        match self {
            MembershipError::Timeout { .. } => "MembershipChangeTimeout",
            MembershipError::Unreachable { .. } => "BrokerUnreachable",
            MembershipError::Rpc { .. } => "MembershipChangeFailed",
            MembershipError::Tls(_) => "AdminTlsInvalid",
            MembershipError::Unsupported { .. } => "MembershipChangeFailed",
            MembershipError::Api(_) => "PodRestartFailed",
        }
    }
}

/// A change to the Raft group, made on its leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Node `id`, reached at `addr`, joins as a learner; answered once it
    /// has caught up.
    AddLearner { id: u64, addr: String },
    /// Exactly `voters` are the voters.
    ChangeMembership { voters: Vec<u64> },
    /// Node `id` leaves the group.
    RemoveNode { id: u64 },
    /// Node `to` becomes the leader.
    TransferLeader { to: u64 },
}

impl Change {
    /// The Admin call that makes it.
    pub fn call(&self) -> &'static str {
        match self {
            Change::AddLearner { .. } => "AddLearner",
            Change::ChangeMembership { .. } => "ChangeMembership",
            Change::RemoveNode { .. } => "RemoveNode",
            Change::TransferLeader { .. } => "TransferLeader",
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type Result<T> = std::result::Result<T, MembershipError>;

/// The Admin calls the controller makes. Pods are named by ordinal; node
/// id = ordinal + 1. Calls that change membership are sent to the leader's
/// pod (`leader`).
pub trait Membership: Send + Sync {
    /// The address peers reach pod `ordinal` at (what AddLearner records).
    fn peer_addr(&self, target: &Target, ordinal: i32) -> String;

    /// Pod `ordinal`'s own Status.
    fn status<'a>(&'a self, target: &'a Target, ordinal: i32) -> BoxFuture<'a, Result<NodeState>>;

    /// Makes `change` on the leader (pod `leader`); returns what it said.
    fn change<'a>(
        &'a self,
        target: &'a Target,
        leader: i32,
        change: Change,
    ) -> BoxFuture<'a, Result<String>>;

    /// Hands pod `ordinal`'s clients over; returns (disconnected, remaining).
    fn drain<'a>(
        &'a self,
        target: &'a Target,
        ordinal: i32,
        server_reference: String,
    ) -> BoxFuture<'a, Result<(u64, u64)>>;

    /// Ends a drain of pod `ordinal` (it takes clients and reports ready
    /// again). Not every broker has it: [`MembershipError::Unsupported`].
    fn undrain<'a>(&'a self, target: &'a Target, ordinal: i32) -> BoxFuture<'a, Result<String>> {
        let pod = target.names.pod(ordinal);
        Box::pin(async move {
            Err(MembershipError::Unsupported {
                call: "Undrain",
                pod,
            })
        })
    }
}
