//! The engine: one [`Broker`] per process, and every `impl Broker` block
//! in this folder, a file per responsibility:
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the state, its locks, readiness and gauges |
//! | `sessions.rs` | sessions opened, closed, ended, released |
//! | `ownership.rs` | claiming a client id through the log; who owns it |
//! | `subscriptions.rs` | the topic tree and the routes it announces |
//! | `publish.rs` | a publish matched and handed to each session, owed copies recorded, the rest forwarded |
//! | `settle.rs` | a QoS 1/2 answer waits until the view it was matched against held every earlier subscription |
//! | `retain.rs` | retained messages stored and routed as one step, streamed to new subscriptions |
//! | `remote.rs` | what this node knows of the other nodes (routes, remote persistent sessions, wills) |
//! | `follow.rs` | the replicated state restored, and the committed log followed |
//! | `wills.rs` | wills, published once cluster-wide |
//! | `timers.rs` | session-expiry and will-delay timers |
//! | `keepalive.rs` | one wheel for every connection's keep alive |
//! | `signal.rs` | a session's connection woken, kicked, told its keep alive is over |
//! | `drain.rs` | handing this node's clients to other nodes |
//! | `placement.rs` | which node runs each bridge, as committed |
//!
//! # Locks
//!
//! Taken in this order, never the other way round; two that are not in
//! one line of it are never held together:
//!
//! 1. `local.retained` (the store): a retained publish stores and routes
//!    under it, a subscription enters the tree under it (its stamp splits
//!    the retained messages into routed to it and streamed to it), a
//!    retained stream hands copies to its session under it. Never taken
//!    with `local.sessions` held.
//! 2. `local.sessions` (the map of sessions): a session is opened,
//!    ended, released or expired under it.
//! 3. `local.subscriptions` (the topic tree): read while a publish hands
//!    out its copies, written when a subscription comes or goes.
//! 4. `cluster.local_routes`: counted under the tree's write lock.
//! 5. One `SessionCell::session` (never two at once): under any of the
//!    above, or alone.
//! 6. `SessionCell::signal`'s slot: alone, or under the session map or
//!    the session (a connection closing unbinds).
//! 7. The keep-alive wheel's map: alone (its sweep lets go of it before
//!    it signals a connection).
//!
//! Leaves, each held alone and never while calling out: `cluster.view`,
//! `cluster.claims`, `cluster.unapplied_claims`, `cluster.down_nodes`,
//! `cluster.followed` and `cluster.placement` (watch channels, locked only
//! inside their own calls),
//! `health.drain`, `health.raft_summary`, and the auth policy's lock (a
//! clone of the policy is taken and the lock let go). The seam's batch
//! queue and the forwarder's peer queues are taken under 1-5 (a publish
//! submits and forwards under the store and the tree); they never call
//! back into the engine.

mod drain;
mod follow;
mod keepalive;
mod ownership;
mod placement;
mod publish;
mod remote;
mod retain;
mod sessions;
mod settle;
mod signal;
mod subscriptions;
mod timers;
mod wills;

#[cfg(test)]
mod tests;

pub use drain::{DrainMode, DrainOutcome, LiveConnection};
pub use ownership::ClaimError;
pub use placement::Placement;
pub use publish::{may_read, Allowed, Denied, Forward, Publisher, Routed};
pub use sessions::{Claim, Departure, OpenedSession, SessionCell, SessionRequest, WillHandle};
pub use signal::{ConnSignal, Signal};
pub use subscriptions::Subscriptions;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::auth::Auth;
use crate::codec::ByteStr;
use crate::config::Config;
use crate::memory_budget::MemoryBudget;
use crate::retained::RetainedStore;
use crate::session::SessionLimits;
use crate::state::{Command, StateSeam};
use crate::stats::Stats;
use crate::topic_tree::{TopicLimits, TopicTree};
pub(crate) use keepalive::KeepAliveWheel;
use remote::ClusterView;

pub struct Broker {
    pub config: Arc<Config>,
    pub node_id: u64,
    pub session_limits: SessionLimits,
    pub topic_limits: TopicLimits,
    pub auth: Auth,
    pub stats: Stats,
    /// The bytes held messages may take (see [`crate::memory_budget`]).
    pub memory: MemoryBudget,
    /// What this node serves: sessions, subscriptions, retained messages.
    pub(crate) local: Local,
    /// What this node shares with the others, and how.
    pub(crate) cluster: ClusterLink,
    /// Whether this node should take traffic.
    pub health: Health,
    /// Sessions whose offline queue has its own bound, by client id (a
    /// bridge's `max_queued_messages`, as in mosquitto); set by whoever
    /// makes such sessions, read when the session is made.
    queue_bounds: RwLock<HashMap<ByteStr, usize>>,
    /// Every connection's keep alive (see `keepalive.rs`).
    pub(crate) keepalive: Arc<KeepAliveWheel>,
}

/// The indexes this node serves its clients from.
pub(crate) struct Local {
    pub(crate) sessions: Mutex<HashMap<ByteStr, Arc<SessionCell>>>,
    pub(crate) subscriptions: RwLock<Subscriptions>,
    pub(crate) retained: Arc<RwLock<RetainedStore>>,
    next_conn_id: AtomicU64,
}

/// The replicated log and the other nodes, as the engine sees them.
pub(crate) struct ClusterLink {
    /// This broker, for what a publisher's answer does later (`settle.rs`).
    me: Weak<Broker>,
    pub(crate) seam: Arc<dyn StateSeam>,
    /// Sends publishes to other nodes (set when the cluster starts).
    pub(crate) forwarder: OnceLock<Arc<dyn Forward>>,
    /// What this node knows of the other nodes (routes, sessions, wills).
    view: RwLock<ClusterView>,
    /// `view.has_remote()`, cached for the publish fast path: a single
    /// node never reads the view.
    remote: AtomicBool,
    /// Sequence numbers of copies this node creates: its id in the top 16
    /// bits, so that every node can number copies for any session.
    next_seq: AtomicU64,
    /// CONNECTs waiting for their claim to be committed, by client id and
    /// claim nonce (two may race for one id); told `true` when the claim
    /// took effect, `false` when it was refused.
    claims: Mutex<HashMap<(ByteStr, u64), oneshot::Sender<bool>>>,
    /// Claims this node submitted that it has not applied yet (client id
    /// to nonce). Another node's claim applied meanwhile is older in the
    /// log than ours: it must not close our connection, ours will win.
    /// That happens to a node that restarts and catches up while its
    /// clients already reconnect to it.
    unapplied_claims: Mutex<HashMap<ByteStr, u64>>,
    /// Local subscriptions per filter as written: a route is announced
    /// when the first one comes and withdrawn when the last one goes.
    local_routes: Mutex<HashMap<ByteStr, usize>>,
    /// The log index the indexes were last rebuilt at; committed events at
    /// or below it are already in.
    restored_index: AtomicU64,
    /// The log index the engine has followed to: the view holds every
    /// entry up to it.
    followed: watch::Sender<u64>,
    /// The index of the last change followed that may owe a publish's copy
    /// to another persistent session (a subscription, a new owner).
    persistent_changed: AtomicU64,
    /// Nodes the leader's liveness probe finds down (their clients' wills
    /// go out).
    down_nodes: watch::Sender<BTreeSet<u64>>,
    /// Nodes whose bridges may move (`placement.rs`): down, or cut off
    /// long enough to have stopped them.
    unreachable: watch::Sender<BTreeSet<u64>>,
    /// The bridges' claims as committed (`placement.rs`).
    placement: watch::Sender<Placement>,
}

/// The health of this node's storage, as the cluster watches it.
pub trait StorageProbe: Send + Sync {
    /// Why the storage takes no writes, while it does not.
    fn fault(&self) -> Option<String>;
    /// Measures the free space again (for the gauges).
    fn refresh_space(&self);
}

/// What `/readyz` and a drain look at.
pub struct Health {
    /// Set once every listener is bound.
    pub ready: AtomicBool,
    /// Whether the Raft group has a leader (always, without a cluster).
    pub has_leader: AtomicBool,
    /// Whether this node is in contact with a leader still in charge: a
    /// follower while its leader's last AppendEntries is less than the
    /// election timeout `E` old, the leader itself only while a quorum
    /// acknowledged it within `E`. A leader
    /// cut off from the others thus says no within `E` of the last
    /// acknowledgement, while the others elect a new one no earlier than
    /// openraft's lease (`2E`) after it: what runs only in contact (a
    /// bridge, `bridge/run.rs`) has stopped on the old leader before a
    /// new one can place it elsewhere. Set by the cluster's watch; none
    /// until it says so (a node restarting with a claim in its log does not
    /// run the bridge before it knows).
    pub leader_contact: watch::Sender<bool>,
    /// Whether this node can write its Raft storage (set by the cluster).
    pub storage: OnceLock<Arc<dyn StorageProbe>>,
    /// One line of Raft figures for `/readyz` (term, leader, indexes).
    pub raft_summary: RwLock<String>,
    /// Set by a drain: new connections are refused, the node is not ready.
    drain: RwLock<Option<DrainMode>>,
    /// Connections past CONNACK whose socket is not shut yet.
    live_connections: AtomicU64,
}

impl Broker {
    pub fn new(
        config: Arc<Config>,
        node_id: u64,
        seam: Arc<dyn StateSeam>,
        auth: Auth,
    ) -> Arc<Broker> {
        let m = &config.mqtt;
        let memory = MemoryBudget::new(m.max_memory);
        let stats = Stats::default();
        let queue_bounds = config
            .bridges
            .iter()
            .filter_map(|b| Some((ByteStr::from(b.local_clientid()), b.max_queued_messages?)))
            .collect();
        let session_limits = SessionLimits {
            max_inflight: m.max_inflight_messages,
            max_queued_messages: m.max_queued_messages,
            max_queued_bytes: m.max_queued_bytes,
            overflow: m.queue_overflow,
            queue_qos0: m.queue_qos0_messages,
        };
        let topic_limits = TopicLimits {
            max_levels: m.max_topic_levels,
            max_length: m.max_topic_length,
        };
        Arc::new_cyclic(|me| Broker {
            session_limits,
            topic_limits,
            node_id,
            config,
            auth,
            stats,
            queue_bounds: RwLock::new(queue_bounds),
            keepalive: KeepAliveWheel::new(),
            memory,
            local: Local {
                sessions: Mutex::new(HashMap::new()),
                subscriptions: RwLock::new(TopicTree::default()),
                retained: Arc::new(RwLock::new(RetainedStore::default())),
                next_conn_id: AtomicU64::new(1),
            },
            cluster: ClusterLink {
                me: me.clone(),
                seam,
                forwarder: OnceLock::new(),
                view: RwLock::new(ClusterView::new(node_id)),
                remote: AtomicBool::new(false),
                next_seq: AtomicU64::new(seq_base(node_id)),
                claims: Mutex::new(HashMap::new()),
                unapplied_claims: Mutex::new(HashMap::new()),
                local_routes: Mutex::new(HashMap::new()),
                restored_index: AtomicU64::new(0),
                followed: watch::Sender::new(0),
                persistent_changed: AtomicU64::new(0),
                down_nodes: watch::Sender::new(BTreeSet::new()),
                unreachable: watch::Sender::new(BTreeSet::new()),
                placement: watch::Sender::new(Placement::default()),
            },
            health: Health {
                ready: AtomicBool::new(false),
                has_leader: AtomicBool::new(true),
                leader_contact: watch::Sender::new(false),
                storage: OnceLock::new(),
                raft_summary: RwLock::new(String::new()),
                drain: RwLock::new(None),
                live_connections: AtomicU64::new(0),
            },
        })
    }

    /// How long a client waits for a commit (a CONNECT's claim of its
    /// client id, QoS 2 releases) before it is told the server is
    /// unavailable: the seam's own deadline, which fails the commit first
    /// ("outcome unknown"), and a second more for that answer to arrive.
    pub fn commit_wait(&self) -> Duration {
        self.config.cluster.commit_deadline() + Duration::from_secs(1)
    }

    /// A sequence number for a new copy, unique in the cluster.
    pub fn next_seq(&self) -> u64 {
        self.cluster.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes sure new sequence numbers are above `seq` (one of ours found
    /// in the replicated state).
    pub(crate) fn seq_seen(&self, seq: u64) {
        if seq >> SEQ_NODE_SHIFT == self.node_id {
            self.cluster.next_seq.fetch_max(seq + 1, Ordering::Relaxed);
        }
    }

    pub fn subscription_count(&self) -> usize {
        self.local.subscriptions.read().len()
    }

    pub fn retained_count(&self) -> usize {
        self.local.retained.read().len()
    }

    /// Why this node's Raft storage does not take writes now (a failed
    /// write or fsync since it last recovered), if it does not.
    pub(crate) fn storage_fault(&self) -> Option<String> {
        self.health.storage.get().and_then(|h| h.fault())
    }

    /// Whether this node should receive traffic, and if not why.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.health.ready.load(Ordering::Acquire) {
            Err("listeners are not bound yet".into())
        } else if let Some(fault) = self.storage_fault() {
            Err(fault)
        } else if self.is_draining() {
            Err("draining: clients are handed to other nodes".into())
        } else if !self.health.has_leader.load(Ordering::Acquire) {
            Err("the cluster has no leader".into())
        } else {
            Ok(())
        }
    }

    /// Brings the gauges that are counted rather than tracked up to date
    /// (for a scrape or a `$SYS` round).
    pub fn refresh_gauges(&self) {
        let cells: Vec<Arc<SessionCell>> = self.local.sessions.lock().values().cloned().collect();
        let (mut inflight, mut queued) = (0usize, 0usize);
        for c in &cells {
            let s = c.session.lock();
            inflight += s.inflight_len();
            queued += s.queued_len();
        }
        let st = &self.stats;
        st.sessions.set(cells.len() as i64);
        st.messages_inflight.set(inflight as i64);
        st.messages_queued.set(queued as i64);
        st.subscriptions.set(self.subscription_count() as i64);
        st.retained_messages.set(self.retained_count() as i64);
        st.memory_budget_bytes
            .set(i64::try_from(self.memory.limit()).unwrap_or(i64::MAX));
        st.memory_held_bytes
            .set(i64::try_from(crate::memory_budget::held_bytes()).unwrap_or(i64::MAX));
        if let Some(h) = self.health.storage.get() {
            h.refresh_space();
        }
    }

    /// Hands `commands` to the seam without waiting for the commit (session
    /// bookkeeping that no client is waiting on).
    pub(crate) fn submit(&self, commands: Vec<Command>) {
        if !commands.is_empty() {
            drop(self.cluster.seam.submit(commands));
        }
    }

    /// [`Broker::submit`] for a connection's comings and goings, which
    /// nobody waits for: they may share the log entry (and its flush) of
    /// what the client does next (see [`StateSeam::submit_lazy`]).
    pub(crate) fn submit_lazy(&self, commands: Vec<Command>) {
        if !commands.is_empty() {
            drop(self.cluster.seam.submit_lazy(commands));
        }
    }
}

/// Sequence numbers: node id above this bit.
const SEQ_NODE_SHIFT: u32 = 48;

/// Where a node's sequence numbers start: its id on top, then a clock
/// reading (so that a restarted node never reuses a number still owed in
/// the log), raised by [`Broker::seq_seen`] past any found in the state.
fn seq_base(node_id: u64) -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (node_id << SEQ_NODE_SHIFT) | ((ms * 64) & ((1 << SEQ_NODE_SHIFT) - 1))
}
