//! The replicated-state seam: every change that a cluster must agree on is
//! a [`Command`], submitted through [`StateSeam`].
//!
//! The engine keeps its own fast in-memory indexes (topic tree, sessions,
//! retained tree) and tells the seam what changed; the seam decides when the
//! change is *committed*. Today [`MemoryState`] commits at once; the Raft
//! layer will implement the same trait, commit through the log, and rebuild
//! the engine's indexes from [`ReplicatedState`] on restart. The engine
//! answers a QoS 1/2 publisher only once the commands its publish caused are
//! committed, so swapping the implementation changes latency, not semantics.

mod machine;
mod memory;

pub use machine::{PersistedMessage, PersistedSession, ReplicatedState};
pub use memory::MemoryState;

use std::future::Future;
use std::pin::Pin;

use crate::codec::{ByteStr, QoS, SubOptions};
use crate::message::SharedMessage;

/// A change to replicated state.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A retained message set for its topic.
    RetainSet(SharedMessage),
    /// The retained message of a topic cleared (empty retained payload).
    RetainClear {
        topic: ByteStr,
    },
    /// `node` now serves `client_id` (takeover across nodes follows it).
    ClaimClient {
        client_id: ByteStr,
        node: u64,
    },
    /// A persistent session was created (or restarted with clean start).
    SessionCreate {
        client_id: ByteStr,
        expiry: u32,
    },
    /// A persistent session's expiry interval changed (reconnect, or a
    /// DISCONNECT with a new Session Expiry Interval).
    SessionUpdate {
        client_id: ByteStr,
        expiry: u32,
    },
    /// A session ended: expired, or replaced by a clean start.
    SessionEnd {
        client_id: ByteStr,
    },
    Subscribe {
        client_id: ByteStr,
        /// The filter as the client wrote it (`$share/g/f` included).
        filter: ByteStr,
        options: SubOptions,
        identifier: Option<u32>,
    },
    Unsubscribe {
        client_id: ByteStr,
        filter: ByteStr,
    },
    /// A QoS 1/2 message owed to a persistent session, numbered by the
    /// session's sequence.
    Enqueue {
        client_id: ByteStr,
        seq: u64,
        qos: QoS,
        retain: bool,
        message: SharedMessage,
    },
    /// A QoS 2 message reached PUBREC: only PUBREL/PUBCOMP remain.
    Release {
        client_id: ByteStr,
        seq: u64,
    },
    /// The session's client acknowledged (or the message was discarded).
    Ack {
        client_id: ByteStr,
        seq: u64,
    },
}

/// Why a submission was not committed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// No quorum, no leader: the caller answers "server unavailable".
    #[error("replicated state unavailable: {0}")]
    Unavailable(String),
}

/// The outcome of a submission: already known, or arriving later.
pub enum Ticket {
    Done(Result<(), StateError>),
    Pending(Pin<Box<dyn Future<Output = Result<(), StateError>> + Send>>),
}

impl Ticket {
    pub async fn wait(self) -> Result<(), StateError> {
        match self {
            Ticket::Done(r) => r,
            Ticket::Pending(f) => f.await,
        }
    }
}

/// Where replicable changes go. Implementations batch as they see fit; a
/// ticket resolves once its commands are committed (and applied in order).
pub trait StateSeam: Send + Sync + 'static {
    fn submit(&self, commands: Vec<Command>) -> Ticket;

    /// A copy of the replicated state, for restore and inspection.
    fn snapshot(&self) -> ReplicatedState;
}
