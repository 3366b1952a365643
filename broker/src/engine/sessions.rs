//! The lifecycle of sessions on this node: opened (new, resumed, taken
//! over) by a CONNECT, closed when the connection ends (its will handed to
//! `wills.rs`, its expiry to `timers.rs`), ended, or released to the node
//! that claimed its client id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Broker, ConnSignal};
use crate::backpressure::Drain;
use crate::codec::{reason, ByteStr, LastWill};
use crate::session::Session;
use crate::state::{Command, Ticket, Will};

/// A session as the rest of the broker holds it.
pub struct SessionCell {
    pub client_id: ByteStr,
    pub session: Mutex<Session>,
    /// Wakes the bound connection when the session's outbox has
    /// something, or kicks it (takeover, admin kick, drain).
    pub signal: ConnSignal,
    /// Wakes publishers waiting for this session to drain (backpressure).
    pub drained: Notify,
    /// Mirrors `session.is_connected()` so a publish can pick a live
    /// shared-subscription member without taking the lock.
    pub connected: AtomicBool,
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
            signal: ConnSignal::default(),
            drained: Notify::new(),
            connected: AtomicBool::new(false),
        })
    }

    /// Asks the bound connection, if any, to close with `reason_code`;
    /// whether one was there to ask (a kick goes once per connection).
    pub fn kick(&self, reason_code: u8) -> bool {
        self.signal.kick(reason_code)
    }

    /// Whether a connection is bound (without taking the session's lock).
    pub fn is_live(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// Everything a new connection gets back from [`Broker::open_session`].
pub struct OpenedSession {
    pub cell: Arc<SessionCell>,
    pub conn_id: u64,
    pub session_present: bool,
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

impl Broker {
    /// Binds a new connection to the session of `req.client_id`: resumes
    /// it, or starts a new one (clean start, or none existed). A connection
    /// already bound to it is told to leave with 0x8E.
    pub fn open_session(&self, req: SessionRequest, now: Instant) -> OpenedSession {
        let conn_id = self.local.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let mut commands = Vec::new();
        let mut sessions = self.local.sessions.lock();
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
        cell.signal.bind(conn_id, self.keepalive.now());
        {
            let mut s = cell.session.lock();
            s.username = req.username;
            s.claim_nonce = req.nonce;
            s.attach(conn_id, req.receive_maximum, now);
        }
        cell.connected.store(true, Ordering::Release);
        drop(sessions);
        self.submit_lazy(commands);
        OpenedSession {
            cell,
            conn_id,
            session_present,
        }
    }

    /// Gives the session `client_id` its own bound on queued messages
    /// (`None`: the broker's), from the next time the session is made.
    pub fn set_queue_bound(&self, client_id: &str, max: Option<usize>) {
        let mut bounds = self.queue_bounds.write();
        match max {
            Some(m) => bounds.insert(ByteStr::from(client_id), m),
            None => bounds.remove(client_id),
        };
    }

    /// An empty session as this broker makes them.
    pub(crate) fn new_session(&self, client_id: ByteStr, expiry: u32) -> Session {
        let mut limits = self.session_limits;
        if let Some(max) = self.queue_bounds.read().get(&client_id) {
            limits.max_queued_messages = *max;
        }
        Session::new(client_id, expiry, limits)
    }

    /// Removes `cell`'s subscriptions and forgets it. Caller holds the map.
    pub(super) fn end_session_locked(
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
            }
            cell.signal.unbind(conn_id);
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
                let (watched, client_id) = (Arc::clone(cell), cell.client_id.clone());
                self.arm_will(
                    cell.client_id.clone(),
                    nonce,
                    delay.min(expiry),
                    move |_| watched.session.lock().generation == generation,
                    move || Will::from_last_will(&will, &client_id),
                );
            }
        }

        if !ours {
            return;
        }
        if expiry == 0 {
            let mut commands = Vec::new();
            let mut sessions = self.local.sessions.lock();
            self.end_session_locked(&mut sessions, cell, &mut commands);
            drop(sessions);
            self.submit_lazy(commands);
        } else {
            self.arm_session_expiry(cell, expiry, generation);
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
        let mut sessions = self.local.sessions.lock();
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

    pub fn session_count(&self) -> usize {
        self.local.sessions.lock().len()
    }

    /// A snapshot of every session for the admin API.
    pub fn sessions_snapshot(&self) -> Vec<Arc<SessionCell>> {
        let mut v: Vec<Arc<SessionCell>> = self.local.sessions.lock().values().cloned().collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    pub fn session(&self, client_id: &str) -> Option<Arc<SessionCell>> {
        self.local.sessions.lock().get(client_id).cloned()
    }

    /// Records that a persistent session's client acknowledged copies
    /// `seqs` (or that they were discarded): the log forgets them.
    pub fn record_acks(&self, client_id: &ByteStr, seqs: impl Iterator<Item = u64>) {
        let commands: Vec<Command> = seqs
            .map(|seq| Command::Ack {
                client_id: client_id.clone(),
                seq,
            })
            .collect();
        self.submit(commands);
    }

    /// Records that copy `seq` of a persistent session reached PUBREC:
    /// only PUBREL is owed now. The ticket resolves once that is in the
    /// log (PUBREL waits for it).
    pub fn record_release(&self, client_id: &ByteStr, seq: u64) -> Ticket {
        self.cluster.seam.submit(vec![Command::Release {
            client_id: client_id.clone(),
            seq,
        }])
    }
}
