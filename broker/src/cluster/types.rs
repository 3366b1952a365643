//! openraft's type configuration for raftmq.

use std::io::Cursor;

use bytes::Bytes;

/// The payload of a normal Raft entry: one group commit of state commands,
/// kept prost-encoded (a `raftmq.v1.CommandBatch`) so that the log stores
/// and ships exactly the bytes the proposer built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch(pub Bytes);

openraft::declare_raft_types!(
    /// raftmq's Raft: node ids are StatefulSet ordinals + 1, nodes carry
    /// their gRPC address.
    pub TypeConfig:
        D = Batch,
        R = (),
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Held shared by every proposal on this node and exclusively by a
/// leadership transfer, which needs the log to stand still while the
/// target catches up and campaigns (see `AdminService::transfer_leader`).
pub type WriteGate = std::sync::Arc<tokio::sync::RwLock<()>>;

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type StorageError = openraft::StorageError<NodeId>;
