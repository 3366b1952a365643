//! Rebuilding the engine's in-memory indexes from replicated state (after a
//! restart, when a snapshot replaces the state, when a session moves here
//! from another node), and following what the cluster commits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Broker, SessionCell};
use crate::codec::ByteStr;
use crate::message::SharedMessage;
use crate::retained::RetainedStore;
use crate::session::Delivery;
use crate::state::{Change, Command, Committed, PersistedSession, ReplicatedState};
use crate::topic_tree::parse_filter;

impl Broker {
    /// Loads retained messages, the cluster view and the persistent
    /// sessions this node owns. Sessions already in memory are kept as
    /// they are: they are newer than any copy in `state`. `at_start`: the
    /// process just started, so its routes are stated afresh and the wills
    /// of clients it served before it stopped are due.
    pub fn restore(self: &Arc<Self>, state: ReplicatedState, at_start: bool) {
        {
            let mut retained = self.local.retained.write();
            *retained = RetainedStore::default();
            // Never routed here: cursors of subscriptions made before
            // deliver them (see `RetainedStore::restore`).
            for m in state.retained.values() {
                retained.restore(m.clone());
            }
        }
        {
            let mut view = self.cluster.view.write();
            view.rebuild(&state);
            self.cluster
                .remote
                .store(view.has_remote(), Ordering::Release);
        }
        self.rebuild_placement(&state);
        for s in state.sessions.values() {
            for seq in s.messages.keys() {
                self.seq_seen(*seq);
            }
        }
        let mut restored = 0usize;
        for (client_id, persisted) in state.sessions {
            let ours = state.owners.get(&client_id) == Some(&self.node_id);
            if !ours || self.local.sessions.lock().contains_key(&client_id) {
                continue;
            }
            let username = state.usernames.get(&client_id).cloned();
            let cell = self.session_cell(&client_id, persisted, username);
            self.local.sessions.lock().insert(client_id, cell.clone());
            restored += 1;
            // Its clock restarts here: how long it was offline elsewhere
            // is not known to this node.
            let (expiry, generation) = {
                let s = cell.session.lock();
                (s.expiry, s.generation)
            };
            self.arm_session_expiry(&cell, expiry, generation);
        }
        self.cluster
            .restored_index
            .store(state.applied_index, Ordering::Release);
        // The view was replaced whole: matched before, a publish re-checks.
        self.cluster
            .persistent_changed
            .fetch_max(state.applied_index, Ordering::AcqRel);
        self.followed_to(state.applied_index);
        if at_start {
            self.submit(vec![Command::NodeStarted {
                node: self.node_id,
                filters: self.local_route_filters(),
            }]);
            // Our connections died with the previous process: their wills
            // are due (unless the leader has fired them already).
            for (client_id, w) in &state.wills {
                if w.node == self.node_id {
                    let will = w.will.clone();
                    self.arm_will(client_id.clone(), w.nonce, w.will.delay, |_| true, || will);
                }
            }
        }
        if restored > 0 || self.retained_count() > 0 {
            tracing::info!(
                sessions = restored,
                retained = self.retained_count(),
                "restored replicated state"
            );
        }
    }

    /// Builds a session from its replicated state and puts its
    /// subscriptions in the tree (their routes are counted, not announced).
    fn session_cell(
        &self,
        client_id: &ByteStr,
        persisted: PersistedSession,
        username: Option<ByteStr>,
    ) -> Arc<SessionCell> {
        let mut session = self.new_session(client_id.clone(), persisted.expiry);
        // Who connected last: its ACL decides what the session may read
        // until the client is back.
        session.username = username;
        for (seq, m) in persisted.messages {
            session.restore(
                Delivery {
                    message: m.message,
                    qos: m.qos,
                    retain: m.retain,
                    subscription_ids: m.subscription_ids,
                    share: None,
                    seq,
                    redelivery: false,
                },
                m.released,
            );
        }
        let cell = SessionCell::new(session);
        for (raw, (options, identifier)) in persisted.subscriptions {
            match parse_filter(&raw, self.topic_limits) {
                Ok(parsed) => {
                    self.subscribe_local(&cell, &raw, &parsed, options, identifier);
                }
                // Limits may have been lowered since; the rest of the
                // session still comes back.
                Err(e) => {
                    tracing::warn!(%client_id, filter = %raw, "subscription not restored: {e}")
                }
            }
        }
        cell
    }

    /// A session whose client just claimed it here, moved from the node
    /// that served it before (or from a node that is gone).
    pub(crate) fn install_session(
        &self,
        client_id: ByteStr,
        persisted: PersistedSession,
        username: Option<ByteStr>,
    ) {
        let filters: Vec<ByteStr> = persisted.subscriptions.keys().cloned().collect();
        let cell = self.session_cell(&client_id, persisted, username);
        if let Some(old) = self.local.sessions.lock().insert(client_id.clone(), cell) {
            // A connection here raced the claim; the claimed state wins.
            old.kick(crate::codec::reason::SESSION_TAKEN_OVER);
        }
        // The routes the session's subscriptions need, announced now.
        let routes: Vec<Command> = filters
            .into_iter()
            .map(|filter| Command::RouteAdd {
                node: self.node_id,
                filter,
            })
            .collect();
        self.submit(routes);
    }

    /// Follows one committed log entry.
    pub fn on_committed(self: &Arc<Self>, index: u64, events: Vec<Committed>) {
        if index <= self.cluster.restored_index.load(Ordering::Acquire) {
            return;
        }
        let mut view_changed = false;
        let enqueued = enqueued_by_others(self.node_id, &events);
        let mut events = events;
        let mut arriving = arriving_sessions(&mut events);
        for event in events {
            match event {
                Committed::Changed(Change::Retained {
                    origin,
                    topic,
                    message,
                }) => self.follow_retained(origin, &topic, message.as_ref(), &enqueued),
                Committed::Changed(Change::Enqueued {
                    client_id,
                    seq,
                    qos,
                    retain,
                    subscription_ids,
                    message,
                    ..
                }) => self.follow_enqueued(
                    &client_id,
                    Delivery {
                        message,
                        qos,
                        retain,
                        subscription_ids,
                        share: None,
                        seq,
                        redelivery: false,
                    },
                ),
                Committed::Changed(change) => {
                    if let Change::Owner {
                        client_id, node, ..
                    } = &change
                    {
                        if *node == self.node_id {
                            self.arrive(client_id, &mut arriving);
                        }
                    }
                    if matches!(change, Change::Subscribed { .. } | Change::Owner { .. }) {
                        self.cluster
                            .persistent_changed
                            .fetch_max(index, Ordering::AcqRel);
                    }
                    self.follow_change(&change);
                    view_changed = true;
                }
                Committed::Claimed {
                    client_id, nonce, ..
                } => {
                    self.arrive(&client_id, &mut arriving);
                    self.claimed(&client_id, nonce);
                }
                Committed::WillFired { will, .. } => self.publish_will(will, Instant::now()),
                Committed::ClaimRefused { client_id, nonce } => {
                    self.claim_refused(&client_id, nonce)
                }
            }
        }
        if view_changed {
            let remote = self.cluster.view.read().has_remote();
            self.cluster.remote.store(remote, Ordering::Release);
        }
    }

    /// Installs the session of `client_id` if this entry brought it here
    /// and it is not installed yet. Called as the view is about to name
    /// this node its owner, never after: a publish that finds the owner
    /// here in the view must find the session in the tree too, or it would
    /// owe the session a copy neither here nor through the log (one that
    /// still sees the old owner sends its copy through the log and skips
    /// the tree's: `publish.rs`, `via_log`).
    fn arrive(&self, client_id: &ByteStr, arriving: &mut Vec<Arriving>) {
        let Some(i) = arriving.iter().position(|a| a.client_id == *client_id) else {
            return;
        };
        let a = arriving.swap_remove(i);
        if !self.local.sessions.lock().contains_key(client_id) {
            self.install_session(a.client_id, a.session, a.username);
        }
    }

    /// What a committed command changed: into the view of the cluster; a
    /// claim also takes the client from this node, or confirms ours.
    fn follow_change(self: &Arc<Self>, change: &Change) {
        self.follow_placement(change);
        self.cluster.view.write().follow(change);
        if let Change::Owner {
            client_id,
            node,
            nonce,
            ..
        } = change
        {
            self.on_claim_applied(client_id, *node, *nonce);
        }
    }

    /// A retained change committed by `origin` (`message` `None`: a
    /// clear). `enqueued`: copies other nodes enqueued in the same entry.
    fn follow_retained(
        &self,
        origin: u64,
        topic: &ByteStr,
        message: Option<&SharedMessage>,
        enqueued: &[Enqueued],
    ) {
        let for_sessions: Vec<ByteStr> = match message {
            Some(_) => enqueued
                .iter()
                .filter(|e| e.origin == origin && e.topic == *topic)
                .map(|e| e.client_id.clone())
                .collect(),
            None => Vec::new(),
        };
        self.retained_committed(origin, topic, message, &for_sessions);
    }

    /// A copy owed to a persistent session, committed: into the session
    /// if it is ours.
    fn follow_enqueued(&self, client_id: &ByteStr, delivery: Delivery) {
        let cell = self.local.sessions.lock().get(client_id).cloned();
        if let Some(cell) = cell {
            self.deliver_committed(&cell, delivery);
        }
    }
}

/// A session this node's claim brought here, to install (`Broker::arrive`).
struct Arriving {
    client_id: ByteStr,
    session: PersistedSession,
    username: Option<ByteStr>,
}

/// The sessions the claims committed in one entry bring here, taken out
/// of their `Claimed` events.
fn arriving_sessions(events: &mut [Committed]) -> Vec<Arriving> {
    let mut arriving = Vec::new();
    for e in events.iter_mut() {
        if let Committed::Claimed {
            client_id,
            session,
            username,
            ..
        } = e
        {
            if let Some(session) = session.take() {
                arriving.push(Arriving {
                    client_id: client_id.clone(),
                    session,
                    username: username.take(),
                });
            }
        }
    }
    arriving
}

/// A copy another node enqueued for a persistent session (through Raft).
pub(crate) struct Enqueued {
    origin: u64,
    client_id: ByteStr,
    topic: ByteStr,
}

/// The copies other nodes enqueued in one entry, when it also holds a
/// retained message another node published (the only case that asks):
/// the sessions they were for get those copies, not a second one when the
/// retained message is applied (see `Broker::deliver_applied`).
fn enqueued_by_others(me: u64, events: &[Committed]) -> Vec<Enqueued> {
    let foreign_retain = events.iter().any(|e| {
        matches!(
            e,
            Committed::Changed(Change::Retained { origin, message: Some(_), .. }) if *origin != me
        )
    });
    if !foreign_retain {
        return Vec::new();
    }
    events
        .iter()
        .filter_map(|e| match e {
            Committed::Changed(Change::Enqueued {
                origin,
                client_id,
                message,
                local: false,
                ..
            }) => Some(Enqueued {
                origin: *origin,
                client_id: client_id.clone(),
                topic: message.topic.clone(),
            }),
            _ => None,
        })
        .collect()
}
