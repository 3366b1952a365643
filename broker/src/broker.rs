//! The broker's shared state and the lifecycle of sessions: open (new,
//! resumed, taken over), close (will, expiry), end.
//!
//! Lock order, everywhere: `sessions` map, then the topic tree, then one
//! session cell. Nothing takes them the other way round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, Notify};

use crate::auth::Auth;
use crate::codec::{reason, ByteStr, LastWill};
use crate::config::Config;
use crate::message::{ForwardedProperties, Message};
use crate::retained::RetainedStore;
use crate::session::{Session, SessionLimits};
use crate::state::{Command, StateSeam};
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
    pub clean_start: bool,
    pub expiry: u32,
    pub receive_maximum: u16,
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
}

pub struct Broker {
    pub config: Arc<Config>,
    pub node_id: u64,
    pub session_limits: SessionLimits,
    pub topic_limits: TopicLimits,
    pub(crate) sessions: Mutex<HashMap<ByteStr, Arc<SessionCell>>>,
    pub(crate) subscriptions: RwLock<Subscriptions>,
    pub(crate) retained: RwLock<RetainedStore>,
    pub(crate) seam: Arc<dyn StateSeam>,
    pub auth: Auth,
    pub stats: Stats,
    next_conn_id: AtomicU64,
    /// Set once every listener is bound.
    pub ready: AtomicBool,
    /// Whether the Raft group has a leader (always, without a cluster).
    pub has_leader: AtomicBool,
}

impl Broker {
    pub fn new(
        config: Arc<Config>,
        node_id: u64,
        seam: Arc<dyn StateSeam>,
        auth: Auth,
    ) -> Arc<Broker> {
        let m = &config.mqtt;
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
            retained: RwLock::new(RetainedStore::default()),
            seam,
            auth,
            stats: Stats::default(),
            next_conn_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            has_leader: AtomicBool::new(true),
        })
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
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.ready.load(Ordering::Acquire) {
            Err("listeners are not bound yet")
        } else if !self.has_leader.load(Ordering::Acquire) {
            Err("the cluster has no leader")
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
        let mut commands = vec![Command::ClaimClient {
            client_id: req.client_id.clone(),
            node: self.node_id,
        }];
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
                let cell = SessionCell::new(Session::new(
                    req.client_id.clone(),
                    req.expiry,
                    self.session_limits,
                ));
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
        self.remove_from_tree(&cell.client_id, &filters);
        if persistent {
            commands.push(Command::SessionEnd {
                client_id: cell.client_id.clone(),
            });
        }
    }

    /// The connection `conn_id` of `cell` has ended.
    pub fn close_session(
        self: &Arc<Self>,
        cell: &Arc<SessionCell>,
        conn_id: u64,
        departure: Departure,
        will: Option<LastWill>,
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

        if let Some(will) = will.filter(|_| departure != Departure::Clean) {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            if delay == 0 || expiry == 0 {
                self.publish_will(&will, &cell.client_id, now);
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
                        broker.publish_will(&will, &cell.client_id, Instant::now());
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

    fn publish_will(&self, will: &LastWill, client_id: &ByteStr, now: Instant) {
        let message = Arc::new(Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            origin: client_id.clone(),
            expires_at: will
                .properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            properties: ForwardedProperties::from_properties(&will.properties),
            received_at: now,
        });
        tracing::debug!(%client_id, topic = %will.topic, "publishing will");
        if message.retain && self.config.mqtt.retain_available {
            // The will is fire-and-forget: nobody waits on its commit.
            drop(self.retain(message.clone()));
        }
        drop(self.publish(message));
    }

    /// Hands `commands` to the seam without waiting for the commit (session
    /// bookkeeping that no client is waiting on).
    pub(crate) fn submit(&self, commands: Vec<Command>) {
        if !commands.is_empty() {
            drop(self.seam.submit(commands));
        }
    }
}
