//! The broker's shared state and the lifecycle of sessions: open (new,
//! resumed, taken over), close (will, expiry), end.
//!
//! Lock order, everywhere: `sessions` map, then the topic tree, then one
//! session cell. Nothing takes them the other way round. The retained
//! store's lock comes before the topic tree's (a retained publish routes
//! under it, a subscription enters the tree under it, a retained stream
//! hands copies to its session under it) and is never taken with the
//! `sessions` map held.

mod drain;
mod follow;
mod ownership;
mod publish;
pub(crate) mod remote;
mod retain;
mod wills;

#[cfg(test)]
mod tests;

pub use drain::{DrainMode, DrainOutcome, LiveConnection};
pub use ownership::ClaimError;
pub use publish::{split_share, Forward, Routed};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, Notify};

use crate::auth::Auth;
use crate::backpressure::Drain;
use crate::engine::remote::ClusterView;
use crate::codec::{reason, ByteStr, LastWill};
use crate::config::{Config, SessionTakeover};
use crate::memory_budget::MemoryBudget;
use crate::engine::ClaimError;
use crate::retained::RetainedStore;
use crate::engine::Forward;
use crate::session::{Session, SessionLimits};
use crate::state::{Command, PersistedSession, StateError, StateSeam, Will};
use crate::stats::Stats;
use crate::topic_tree::{TopicLimits, TopicTree};

/// A session as the rest of the broker holds it.
pub struct SessionCell {
    pub client_id: ByteStr,
    pub session: Mutex<Session>,
    /// Wakes the connection task when the session's outbox has something.
    pub wake: Notify,
    /// Wakes publishers waiting for this session to drain (backpressure).
    pub drained: Notify,
    /// Mirrors `session.is_connected()` so the router can pick a live
    /// shared-subscription member without taking the lock.
    pub connected: AtomicBool,
    /// Tells the bound connection to leave (takeover, admin kick), with the
    /// MQTT 5 reason code to send.
    kick: Mutex<Option<(u64, oneshot::Sender<u8>)>>,
}

/// A connected session holds its publishers back while half its queue
/// limit is waiting (see [`crate::session::Session::congested`]); one that
/// does not move for [`crate::backpressure::STALL_AFTER`] is marked
/// stalled, so that nobody waits for it again until it reads.
impl Drain for SessionCell {
    fn must_wait(&self) -> bool {
        self.session.lock().register_waiting_publisher()
    }

    fn drained(&self) -> &Notify {
        &self.drained
    }

    fn stalled(&self) {
        tracing::debug!(subscriber = %self.client_id, "subscriber stalled: no longer waited for");
        self.session.lock().mark_stalled();
        self.drained.notify_waiters();
    }
}

impl SessionCell {
    /// A cell for `session`, with no connection bound yet.
    pub fn new(session: Session) -> Arc<SessionCell> {
        Arc::new(SessionCell {
            client_id: session.client_id.clone(),
            session: Mutex::new(session),
            wake: Notify::new(),
            drained: Notify::new(),
            connected: AtomicBool::new(false),
            kick: Mutex::new(None),
        })
    }

    /// Asks connection `conn_id` (if it is still the bound one) to close.
    pub fn kick(&self, reason_code: u8) -> bool {
        match self.kick.lock().take() {
            Some((_, tx)) => tx.send(reason_code).is_ok(),
            None => false,
        }
    }
}

pub type Subscriptions = TopicTree<ByteStr, Arc<SessionCell>>;

/// Everything a new connection gets back from [`Broker::open_session`].
pub struct OpenedSession {
    pub cell: Arc<SessionCell>,
    pub conn_id: u64,
    pub session_present: bool,
    pub kicked: oneshot::Receiver<u8>,
}

/// Parameters of a CONNECT that shape the session.
pub struct SessionRequest {
    pub client_id: ByteStr,
    pub username: Option<ByteStr>,
    /// The claim that let this connection in (see [`Claim::nonce`]).
    pub nonce: u64,
    pub clean_start: bool,
    pub expiry: u32,
    pub receive_maximum: u16,
}

/// A connection's claim of its client id (see [`Broker::claim`]).
pub struct Claim {
    pub client_id: ByteStr,
    pub clean_start: bool,
    /// The session outlives the connection (expiry > 0).
    pub persistent: bool,
    /// Names this connection in the log (its will is cleared or fired by
    /// this name only).
    pub nonce: u64,
    pub will: Option<Will>,
    pub username: Option<ByteStr>,
}

/// A connection's will and the claim that registered it.
pub struct WillHandle {
    pub will: LastWill,
    pub nonce: u64,
}

/// How a connection ended, for will handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// DISCONNECT with reason 0: the will is discarded.
    Clean,
    /// DISCONNECT 0x04, socket loss, keepalive timeout, protocol error.
    Unclean,
    /// Another connection took the session over.
    TakenOver,
    /// This node asked the client to move (Admin Drain, SIGTERM). Its will
    /// is discarded as after a normal DISCONNECT: the client did not fail,
    /// it was told to reconnect elsewhere, and that CONNECT brings its will
    /// again. Publishing it would tell subscribers a live client died.
    Moved,
}

pub struct Broker {
    pub config: Arc<Config>,
    pub node_id: u64,
    pub session_limits: SessionLimits,
    pub topic_limits: TopicLimits,
    pub(crate) sessions: Mutex<HashMap<ByteStr, Arc<SessionCell>>>,
    pub(crate) subscriptions: RwLock<Subscriptions>,
    pub(crate) retained: Arc<RwLock<RetainedStore>>,
    pub(crate) seam: Arc<dyn StateSeam>,
    pub auth: Auth,
    pub stats: Stats,
    /// The bytes held messages may take (see [`crate::memory_budget`]).
    pub memory: MemoryBudget,
    next_conn_id: AtomicU64,
    /// Set once every listener is bound.
    pub ready: AtomicBool,
    /// Whether the Raft group has a leader (always, without a cluster).
    pub has_leader: AtomicBool,
    /// Whether this node can write its Raft storage (set by the cluster).
    pub storage: OnceLock<Arc<crate::cluster::health::StorageHealth>>,
    /// What this node knows of the other nodes (routes, sessions, wills).
    pub(crate) view: RwLock<ClusterView>,
    /// `view.has_remote()`, cached for the router's fast path: a single
    /// node never reads the view.
    pub(crate) remote: AtomicBool,
    /// Sequence numbers of copies this node creates: its id in the top 16
    /// bits, so that every node can number copies for any session.
    next_seq: AtomicU64,
    /// CONNECTs waiting for their claim to be committed, by client id and
    /// claim nonce (two may race for one id); told `true` when the claim
    /// took effect, `false` when it was refused.
    pub(crate) claims: Mutex<HashMap<(ByteStr, u64), oneshot::Sender<bool>>>,
    /// Claims this node submitted that it has not applied yet (client id
    /// to nonce). Another node's claim applied meanwhile is older in the
    /// log than ours: it must not close our connection, ours will win.
    /// That happens to a node that restarts and catches up while its
    /// clients already reconnect to it.
    unapplied_claims: Mutex<HashMap<ByteStr, u64>>,
    /// Local subscriptions per filter as written: a route is announced
    /// when the first one comes and withdrawn when the last one goes.
    pub(crate) local_routes: Mutex<HashMap<ByteStr, usize>>,
    /// Sends publishes to other nodes (set when the cluster starts).
    pub(crate) forwarder: OnceLock<Arc<dyn Forward>>,
    /// The log index the indexes were last rebuilt at; committed events at
    /// or below it are already in.
    pub(crate) restored_index: AtomicU64,
    /// Nodes the leader's liveness probe finds unreachable.
    pub(crate) down_nodes: Mutex<HashSet<u64>>,
    /// One line of Raft figures for `/readyz` (term, leader, indexes).
    pub raft_summary: RwLock<String>,
    /// Set by a drain: new connections are refused, the node is not ready.
    pub(crate) drain: RwLock<Option<crate::engine::DrainMode>>,
    /// Connections past CONNACK whose socket is not shut yet.
    pub(crate) live_connections: AtomicU64,
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
        Arc::new(Broker {
            session_limits: SessionLimits {
                max_inflight: m.max_inflight_messages,
                max_queued_messages: m.max_queued_messages,
                max_queued_bytes: m.max_queued_bytes,
                overflow: m.queue_overflow,
                queue_qos0: m.queue_qos0_messages,
            },
            topic_limits: TopicLimits {
                max_levels: m.max_topic_levels,
                max_length: m.max_topic_length,
            },
            node_id,
            config,
            sessions: Mutex::new(HashMap::new()),
            subscriptions: RwLock::new(TopicTree::default()),
            retained: Arc::new(RwLock::new(RetainedStore::default())),
            seam,
            auth,
            stats: Stats::default(),
            memory,
            next_conn_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            has_leader: AtomicBool::new(true),
            storage: OnceLock::new(),
            view: RwLock::new(ClusterView::new(node_id)),
            remote: AtomicBool::new(false),
            next_seq: AtomicU64::new(seq_base(node_id)),
            claims: Mutex::new(HashMap::new()),
            unapplied_claims: Mutex::new(HashMap::new()),
            local_routes: Mutex::new(HashMap::new()),
            forwarder: OnceLock::new(),
            restored_index: AtomicU64::new(0),
            down_nodes: Mutex::new(HashSet::new()),
            raft_summary: RwLock::new(String::new()),
            drain: RwLock::new(None),
            live_connections: AtomicU64::new(0),
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
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes sure new sequence numbers are above `seq` (one of ours found
    /// in the replicated state).
    pub(crate) fn seq_seen(&self, seq: u64) {
        if seq >> SEQ_NODE_SHIFT == self.node_id {
            self.next_seq.fetch_max(seq + 1, Ordering::Relaxed);
        }
    }

    /// Claims `claim.client_id` for this node through the replicated log.
    /// A persistent session, or one to be resumed that lives on another
    /// node, waits until the claim is committed and the session's state has
    /// moved here; a clean session goes on at once (the claim then only
    /// closes a connection with the same id elsewhere). An error means the
    /// client must be refused: the cluster cannot serve its session now, or
    /// the id belongs to another identity.
    pub async fn claim(self: &Arc<Self>, claim: Claim) -> Result<(), ClaimError> {
        let client_id = claim.client_id.clone();
        let command = Command::ClaimClient {
            client_id: client_id.clone(),
            node: self.node_id,
            nonce: claim.nonce,
            clean_start: claim.clean_start,
            will: claim.will,
            username: claim.username,
            same_identity_only: self.config.auth.allow_session_takeover
                == SessionTakeover::SameIdentity,
        };
        let local = self.sessions.lock().contains_key(&client_id);
        let wait_state = self.seam.follows_log() && !claim.clean_start && !local;
        if self.seam.follows_log() {
            self.unapplied_claims
                .lock()
                .insert(client_id.clone(), claim.nonce);
        }
        if !wait_state {
            let ticket = self.seam.submit(vec![command]);
            if !claim.persistent {
                // The client goes on at once; a claim that never commits
                // must not keep shielding it from later takeovers.
                let broker = Arc::clone(self);
                tokio::spawn(async move {
                    if ticket.wait().await.is_err() {
                        broker.forget_claim(&client_id, claim.nonce);
                    }
                });
                return Ok(());
            }
            let r = match tokio::time::timeout(self.commit_wait(), ticket.wait()).await {
                Ok(r) => r,
                Err(_) => Err(StateError::Unavailable(
                    "claim not committed in time".into(),
                )),
            };
            if r.is_err() {
                self.forget_claim(&client_id, claim.nonce);
            }
            return r.map_err(ClaimError::Unavailable);
        }
        let (tx, rx) = oneshot::channel();
        self.claims
            .lock()
            .insert((client_id.clone(), claim.nonce), tx);
        let ticket = self.seam.submit(vec![command]);
        let superseded =
            || ClaimError::Unavailable(StateError::Unavailable("claim superseded".into()));
        let outcome = |took_effect: bool| {
            if took_effect {
                Ok(())
            } else {
                Err(ClaimError::OtherIdentity)
            }
        };
        let claimed = tokio::time::timeout(self.commit_wait(), async {
            // The commit can fail before the claim is ever applied here.
            let committed = ticket.wait();
            tokio::pin!(committed);
            let mut rx = rx;
            tokio::select! {
                state = &mut rx => return state.map_err(|_| superseded()).and_then(outcome),
                r = &mut committed => r.map_err(ClaimError::Unavailable)?,
            }
            rx.await.map_err(|_| superseded()).and_then(outcome)
        })
        .await;
        let state = match claimed {
            Ok(r) => r,
            Err(_) => Err(ClaimError::Unavailable(StateError::Unavailable(
                "claim not applied in time".into(),
            ))),
        };
        if state.is_err() {
            self.forget_claim(&client_id, claim.nonce);
            self.claims.lock().remove(&(client_id, claim.nonce));
        }
        state
    }

    /// Our claim `nonce` of `client_id` was applied here, or will never be.
    pub(crate) fn forget_claim(&self, client_id: &ByteStr, nonce: u64) {
        let mut unapplied = self.unapplied_claims.lock();
        if unapplied.get(client_id) == Some(&nonce) {
            unapplied.remove(client_id);
        }
    }

    /// A claim of `client_id` applied: ours (`node` is this node) is no
    /// longer pending; another node's takes the client from us, unless a
    /// claim of ours is still to come in the log.
    pub(crate) fn on_claim_applied(self: &Arc<Self>, client_id: &ByteStr, node: u64, nonce: u64) {
        if node == self.node_id {
            self.forget_claim(client_id, nonce);
        } else if !self.unapplied_claims.lock().contains_key(client_id) {
            self.release(client_id);
        }
    }

    /// A claim of `client_id` by this node is committed; `session` is the
    /// replicated session as of that point of the log. It is installed here
    /// and now, in log order, so that copies committed after the claim find
    /// it; then the waiting CONNECT (connection `nonce`) goes on.
    pub(crate) fn claimed(
        &self,
        client_id: &ByteStr,
        nonce: u64,
        session: Option<PersistedSession>,
        username: Option<ByteStr>,
    ) {
        if let Some(persisted) = session {
            if !self.sessions.lock().contains_key(client_id) {
                self.install_session(client_id.clone(), persisted, username);
            }
        }
        if let Some(tx) = self.claims.lock().remove(&(client_id.clone(), nonce)) {
            let _ = tx.send(true);
        }
    }

    /// Another node has claimed `client_id`: its connection here (if any)
    /// is closed with 0x8E and the session leaves this node. Nothing is
    /// ended in the replicated state: the session lives on over there.
    pub(crate) fn release(self: &Arc<Self>, client_id: &ByteStr) {
        self.release_with(client_id, reason::SESSION_TAKEN_OVER);
    }

    /// [`Broker::release`], telling the connection `code`.
    pub(crate) fn release_with(self: &Arc<Self>, client_id: &ByteStr, code: u8) {
        let mut sessions = self.sessions.lock();
        let Some(cell) = sessions.remove(client_id) else {
            return;
        };
        if cell.kick(code) {
            tracing::debug!(%client_id, code, "connection closed: the id is served elsewhere");
        }
        let (filters, cursors) = {
            let mut s = cell.session.lock();
            if let Some(id) = s.conn_id() {
                s.detach(id);
            }
            let filters = s.subscriptions.keys().cloned().collect::<Vec<_>>();
            (filters, s.take_cursors())
        };
        cell.connected.store(false, Ordering::Release);
        drop(sessions);
        let commands = self.remove_from_tree(client_id, &filters);
        self.submit(commands);
        self.cursors_dropped(client_id, cursors);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.read().len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Whether this node should receive traffic, and if not why.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Acquire) {
            Err("listeners are not bound yet".into())
        } else if let Some(fault) = self.storage.get().and_then(|h| h.fault()) {
            Err(fault)
        } else if self.is_draining() {
            Err("draining: clients are handed to other nodes".into())
        } else if !self.has_leader.load(Ordering::Acquire) {
            Err("the cluster has no leader".into())
        } else {
            Ok(())
        }
    }

    /// Brings the gauges that are counted rather than tracked up to date
    /// (for a scrape or a `$SYS` round).
    pub fn refresh_gauges(&self) {
        let cells: Vec<Arc<SessionCell>> = self.sessions.lock().values().cloned().collect();
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
        if let Some(h) = self.storage.get() {
            h.refresh_space();
        }
    }

    /// A snapshot of every session for the admin API.
    pub fn sessions_snapshot(&self) -> Vec<Arc<SessionCell>> {
        let mut v: Vec<Arc<SessionCell>> = self.sessions.lock().values().cloned().collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    pub fn session(&self, client_id: &str) -> Option<Arc<SessionCell>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Binds a new connection to the session of `req.client_id`: resumes
    /// it, or starts a new one (clean start, or none existed). A connection
    /// already bound to it is told to leave with 0x8E.
    pub fn open_session(&self, req: SessionRequest, now: Instant) -> OpenedSession {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let mut commands = Vec::new();
        let mut sessions = self.sessions.lock();
        let existing = sessions.get(&req.client_id).cloned();
        if let Some(old) = &existing {
            if old.kick(reason::SESSION_TAKEN_OVER) {
                tracing::debug!(client_id = %req.client_id, "session taken over");
            }
        }
        let (cell, session_present) = match existing {
            Some(old) if !req.clean_start => {
                let mut s = old.session.lock();
                if s.expiry != req.expiry {
                    if req.expiry > 0 {
                        commands.push(Command::SessionUpdate {
                            client_id: req.client_id.clone(),
                            expiry: req.expiry,
                        });
                    } else if s.is_persistent() {
                        // No longer persistent: forget the replicated copy.
                        commands.push(Command::SessionEnd {
                            client_id: req.client_id.clone(),
                        });
                    }
                    s.expiry = req.expiry;
                }
                drop(s);
                (old, true)
            }
            existing => {
                if let Some(old) = existing {
                    // Unbind the old connection first, so that its own
                    // close finds nothing of ours to tear down.
                    let mut s = old.session.lock();
                    if let Some(id) = s.conn_id() {
                        s.detach(id);
                    }
                    drop(s);
                    old.connected.store(false, Ordering::Release);
                    self.end_session_locked(&mut sessions, &old, &mut commands);
                }
                let cell = SessionCell::new(self.new_session(req.client_id.clone(), req.expiry));
                if req.expiry > 0 {
                    commands.push(Command::SessionCreate {
                        client_id: req.client_id.clone(),
                        expiry: req.expiry,
                    });
                }
                sessions.insert(req.client_id.clone(), cell.clone());
                (cell, false)
            }
        };
        let (tx, kicked) = oneshot::channel();
        *cell.kick.lock() = Some((conn_id, tx));
        {
            let mut s = cell.session.lock();
            s.username = req.username;
            s.claim_nonce = req.nonce;
            s.attach(conn_id, req.receive_maximum, now);
        }
        cell.connected.store(true, Ordering::Release);
        drop(sessions);
        self.submit(commands);
        OpenedSession {
            cell,
            conn_id,
            session_present,
            kicked,
        }
    }

    /// An empty session as this broker makes them.
    pub(crate) fn new_session(&self, client_id: ByteStr, expiry: u32) -> Session {
        let mut s = Session::new(client_id, expiry, self.session_limits);
        s.derive_packet_ids = true;
        s
    }

    /// Removes `cell`'s subscriptions and forgets it. Caller holds the map.
    fn end_session_locked(
        &self,
        sessions: &mut HashMap<ByteStr, Arc<SessionCell>>,
        cell: &Arc<SessionCell>,
        commands: &mut Vec<Command>,
    ) {
        if sessions
            .get(&cell.client_id)
            .is_some_and(|c| Arc::ptr_eq(c, cell))
        {
            sessions.remove(&cell.client_id);
        }
        let (filters, persistent) = {
            let s = cell.session.lock();
            (
                s.subscriptions.keys().cloned().collect::<Vec<_>>(),
                s.is_persistent(),
            )
        };
        commands.extend(self.remove_from_tree(&cell.client_id, &filters));
        commands.push(if persistent {
            Command::SessionEnd {
                client_id: cell.client_id.clone(),
            }
        } else {
            Command::Unclaim {
                client_id: cell.client_id.clone(),
                node: self.node_id,
            }
        });
    }

    /// The connection `conn_id` of `cell` has ended.
    pub fn close_session(
        self: &Arc<Self>,
        cell: &Arc<SessionCell>,
        conn_id: u64,
        departure: Departure,
        will: Option<WillHandle>,
    ) {
        let now = Instant::now();
        let (handed_over, expiry, generation, ours) = {
            let mut s = cell.session.lock();
            let ours = s.conn_id() == Some(conn_id);
            let handed = s.detach(conn_id);
            if ours {
                cell.connected.store(false, Ordering::Release);
                let mut k = cell.kick.lock();
                if k.as_ref().is_some_and(|(id, _)| *id == conn_id) {
                    *k = None;
                }
            }
            (handed, s.expiry, s.generation, ours)
        };
        self.hand_over(handed_over, &cell.client_id, now);

        if let Some(WillHandle { will, nonce }) = will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            if departure == Departure::Clean || departure == Departure::Moved {
                self.clear_will(&cell.client_id, nonce);
            } else if departure == Departure::TakenOver && (delay == 0 || expiry == 0) {
                // The new connection's claim replaced the will in the log:
                // this node alone still has it.
                self.publish_will(Will::from_last_will(&will, &cell.client_id), now);
            } else if delay == 0 || expiry == 0 {
                self.fire_will(&cell.client_id, nonce, || {
                    Will::from_last_will(&will, &cell.client_id)
                });
            } else if departure == Departure::Unclean && ours {
                // Sent when the delay or the session ends, whichever is
                // first, unless the client comes back before.
                let wait = delay.min(expiry);
                let broker = Arc::clone(self);
                let cell = Arc::clone(cell);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(wait))).await;
                    let back = cell.session.lock().generation != generation;
                    if !back {
                        broker.fire_will(&cell.client_id, nonce, || {
                            Will::from_last_will(&will, &cell.client_id)
                        });
                    }
                });
            }
        }

        if !ours {
            return;
        }
        if expiry == 0 {
            let mut commands = Vec::new();
            let mut sessions = self.sessions.lock();
            self.end_session_locked(&mut sessions, cell, &mut commands);
            drop(sessions);
            self.submit(commands);
        } else if expiry != u32::MAX {
            let broker = Arc::clone(self);
            let cell = Arc::clone(cell);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
                broker.expire(&cell, generation);
            });
        }
    }

    /// Ends `cell` if nobody has reconnected to it since `generation`.
    pub(crate) fn expire(&self, cell: &Arc<SessionCell>, generation: u64) {
        let mut sessions = self.sessions.lock();
        {
            let s = cell.session.lock();
            if s.generation != generation || s.is_connected() {
                return;
            }
        }
        let mut commands = Vec::new();
        self.end_session_locked(&mut sessions, cell, &mut commands);
        drop(sessions);
        self.stats.sessions_expired.inc();
        tracing::debug!(client_id = %cell.client_id, "session expired");
        self.submit(commands);
    }

    /// Sets a session's expiry interval (DISCONNECT may change it).
    pub fn set_expiry(&self, cell: &SessionCell, expiry: u32) {
        let mut s = cell.session.lock();
        if s.expiry == expiry {
            return;
        }
        let was_persistent = s.is_persistent();
        s.expiry = expiry;
        drop(s);
        let client_id = cell.client_id.clone();
        self.submit(vec![if expiry > 0 && was_persistent {
            Command::SessionUpdate { client_id, expiry }
        } else if expiry > 0 {
            Command::SessionCreate { client_id, expiry }
        } else {
            Command::SessionEnd { client_id }
        }]);
    }

    /// Hands `commands` to the seam without waiting for the commit (session
    /// bookkeeping that no client is waiting on).
    pub(crate) fn submit(&self, commands: Vec<Command>) {
        if !commands.is_empty() {
            drop(self.seam.submit(commands));
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
