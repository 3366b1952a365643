//! The replicated-state seam: every change that a cluster must agree on is
//! a [`Command`], submitted through [`StateSeam`].
//!
//! The engine keeps its own fast in-memory indexes (topic tree, sessions,
//! retained tree) and tells the seam what changed; the seam decides when the
//! change is *committed*. `cluster::RaftSeam` commits through the Raft log,
//! and the engine rebuilds its indexes from [`ReplicatedState`] on restart
//! (`engine/follow.rs`); [`MemoryState`] commits at once, for the engine's
//! unit tests. The engine answers a QoS 1/2 publisher only once the
//! commands its publish caused are committed, so the implementation changes
//! latency, not semantics.

mod machine;
#[cfg(test)]
mod memory;
mod node_set;

pub use machine::{
    Effect, Ignored, PersistedMessage, PersistedSession, ReplicatedState, WillRecord,
};
#[cfg(test)]
pub use memory::MemoryState;
pub use node_set::NodeSet;

use std::future::Future;
use std::pin::Pin;

use smallvec::SmallVec;

use crate::codec::{ByteStr, QoS, SubOptions};
use crate::message::SharedMessage;

/// Options and subscription identifier of one subscription.
pub type SubscriptionEntry = (SubOptions, Option<u32>);

/// A persistent session's subscriptions in the replicated state.
pub type SubscriptionMap = crate::filter_map::FilterMap<SubscriptionEntry>;

/// A client's will as the cluster keeps it, so that another node can
/// publish it when the client's own node dies.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    /// Topic, payload, QoS, retain and properties; no expiry instant (the
    /// clock starts when the will is published).
    pub message: SharedMessage,
    /// MQTT 5 Will Delay Interval, seconds.
    pub delay: u32,
    /// MQTT 5 Message Expiry Interval of the will, seconds.
    pub expiry_interval: Option<u32>,
}

/// A change to replicated state.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A retained message set for its topic.
    RetainSet(SharedMessage),
    /// The retained message of a topic cleared (empty retained payload).
    RetainClear {
        topic: ByteStr,
    },
    /// `node` now serves `client_id`: the previous owner lets go of the
    /// session, `node` resumes it from the replicated state as of this
    /// command. `nonce` names the connection that claimed; `will` replaces
    /// the client's will; `clean_start` discards the old session.
    ClaimClient {
        client_id: ByteStr,
        node: u64,
        nonce: u64,
        clean_start: bool,
        will: Option<Will>,
        /// Who the connection authenticated as: the ACL a resumed or
        /// restored session's copies are checked against, and the
        /// identity that owns the client id once the claim takes effect.
        username: Option<ByteStr>,
        /// The claim counts only if the client id is free or owned by the
        /// same identity (`username`); otherwise it changes nothing and its
        /// proposer hears [`Committed::ClaimRefused`]. Records written
        /// before the field existed read as `false`: they took effect
        /// whoever owned the id, and replaying them must do the same.
        same_identity_only: bool,
    },
    /// A clean session on `node` ended: the id is nobody's now.
    Unclaim {
        client_id: ByteStr,
        node: u64,
    },
    /// The will registered by claim `nonce` is void (normal DISCONNECT,
    /// or published by its own node).
    WillClear {
        client_id: ByteStr,
        nonce: u64,
    },
    /// The proposer will publish the will registered by claim `nonce`, if
    /// it is still registered: the guard that makes a will go out once even
    /// when several nodes think it is theirs to publish.
    WillFire {
        client_id: ByteStr,
        nonce: u64,
    },
    /// `node` has local subscribers on `filter` (as written, `$share/`
    /// included): publishes matching it are forwarded there.
    RouteAdd {
        node: u64,
        filter: ByteStr,
    },
    RouteRemove {
        node: u64,
        filter: ByteStr,
    },
    /// `node` (re)started with these routes; clean sessions it served
    /// before are gone.
    NodeStarted {
        node: u64,
        filters: Vec<ByteStr>,
    },
    /// `node` left the cluster: its routes go.
    NodeGone {
        node: u64,
    },
    /// `node` runs bridge `name` from now on, if `previous` still holds
    /// it (`None`: nobody): a compare-and-set, so of two claims made on
    /// the same view only the first committed counts.
    ClaimBridge {
        name: ByteStr,
        node: u64,
        previous: Option<u64>,
    },
    /// `node` is draining: it lets go of its bridges and takes no new ones
    /// until it starts again (`NodeStarted`).
    NodeDraining {
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
    /// A QoS 1/2 message owed to a persistent session. `seq` is unique in
    /// the cluster (the proposing node's id in the top 16 bits). `local`:
    /// the proposer's own engine already holds the copy.
    Enqueue {
        client_id: ByteStr,
        seq: u64,
        qos: QoS,
        retain: bool,
        subscription_ids: SmallVec<[u32; 1]>,
        local: bool,
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

/// What a committed command changed in the part of the replicated state
/// the engine keeps an index of: the view of the cluster
/// (`engine/remote.rs`: who owns each client id, the persistent sessions
/// and their subscriptions, routes, wills), the retained store and the
/// copies owed to sessions (`engine/follow.rs`). Noted by
/// [`ReplicatedState::apply_with_changes`] as it applies the command, so
/// that what a command means is decided there alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The retained message of `topic` is `message` now (`None`: cleared),
    /// by a publish made on node `origin`.
    Retained {
        origin: u64,
        topic: ByteStr,
        message: Option<SharedMessage>,
    },
    /// A copy of `message` owed to the persistent session `client_id`,
    /// enqueued by node `origin`; `local`: the origin's own engine already
    /// holds it (the session is served there).
    Enqueued {
        origin: u64,
        client_id: ByteStr,
        seq: u64,
        qos: QoS,
        retain: bool,
        subscription_ids: SmallVec<[u32; 1]>,
        local: bool,
        message: SharedMessage,
    },
    /// `node` owns `client_id` now, by claim `nonce`, as `username`.
    Owner {
        client_id: ByteStr,
        node: u64,
        nonce: u64,
        username: Option<ByteStr>,
        /// The subscriptions of the persistent session the new owner
        /// resumes (empty: none, or a clean start): the view indexes only
        /// other nodes' sessions, and keeps no list of its own.
        subscriptions: SubscriptionMap,
    },
    /// Nobody owns `client_id` any more.
    Disowned {
        client_id: ByteStr,
    },
    /// A persistent session began, with no subscriptions.
    SessionStarted {
        client_id: ByteStr,
    },
    /// A persistent session ended, its subscriptions with it.
    SessionEnded {
        client_id: ByteStr,
        subscriptions: SubscriptionMap,
    },
    Subscribed {
        client_id: ByteStr,
        /// As written (`$share/` included).
        filter: ByteStr,
        options: SubOptions,
        identifier: Option<u32>,
    },
    Unsubscribed {
        client_id: ByteStr,
        filter: ByteStr,
    },
    RouteAdded {
        node: u64,
        filter: ByteStr,
    },
    RouteRemoved {
        node: u64,
        filter: ByteStr,
    },
    /// The will registered for `client_id` now (`None`: none).
    Will {
        client_id: ByteStr,
        record: Option<WillRecord>,
    },
    /// Who runs bridge `name` now (`None`: nobody).
    BridgeHolder {
        name: ByteStr,
        node: Option<u64>,
    },
    /// Whether `node` is draining now.
    Draining {
        node: u64,
        draining: bool,
    },
}

/// What the engine learns from the committed log, in log order.
#[derive(Debug)]
pub enum Committed {
    /// What a committed command changed (see [`Change`]).
    Changed(Change),
    /// This node's claim of `client_id` is committed; the session's
    /// replicated state at that point of the log.
    Claimed {
        client_id: ByteStr,
        nonce: u64,
        session: Option<PersistedSession>,
        username: Option<ByteStr>,
    },
    /// A will this node asked to fire passed its guard: publish it.
    WillFired { client_id: ByteStr, will: Will },
    /// This node's claim `nonce` of `client_id` did not take effect: the id
    /// belongs to another identity (see `ClaimClient::same_identity_only`).
    ClaimRefused { client_id: ByteStr, nonce: u64 },
}

/// Where replicable changes go. Implementations batch as they see fit; a
/// ticket resolves once its commands are committed (and applied in order).
pub trait StateSeam: Send + Sync + 'static {
    fn submit(&self, commands: Vec<Command>) -> Ticket;

    /// [`StateSeam::submit`] for commands that nobody waits for and that
    /// gain nothing from being flushed early (a connection's claim, its
    /// session's start and end): they may wait a moment for commands
    /// submitted after them to share their log entry and its flush. Order
    /// with everything submitted is kept.
    fn submit_lazy(&self, commands: Vec<Command>) -> Ticket {
        self.submit(commands)
    }

    /// A copy of the replicated state, for restore and inspection.
    fn snapshot(&self) -> ReplicatedState;

    /// Whether the engine hears of commits ([`Committed`]) and must wait
    /// for them where other nodes are involved (claims, wills). The
    /// in-memory seam commits at once and has nobody else to wait for.
    fn follows_log(&self) -> bool {
        false
    }

    /// The log index every command committed before this call is at or
    /// below (the leader's read index), asked for now; `None` when no other
    /// node can commit anything (one member, or no log): what this node
    /// has applied is then all there is.
    fn read_index(&self) -> Option<ReadIndex> {
        None
    }

    /// Whether another node is a member (voter or learner): someone who
    /// may route to this node from what is committed. Without one, what
    /// only other nodes read (routes) need not be waited for.
    fn has_peers(&self) -> bool {
        false
    }
}

/// A read index on its way (see [`StateSeam::read_index`]).
pub type ReadIndex = Pin<Box<dyn Future<Output = Result<u64, StateError>> + Send>>;
