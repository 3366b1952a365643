//! Retained messages on their way to subscribers: a retained publish is
//! stored and routed as one step; a new subscription's retained messages
//! are streamed to it under flow control; other nodes store and deliver a
//! retained message as one step when they apply it from the log.
//!
//! **Exactly once in the race.** A retained publish stores and routes
//! under the store's write lock; a subscription goes into the topic tree
//! and takes the store's stamp under its read lock (`Broker::subscribe`).
//! Either the publish came first (its entry's stamp is at most the
//! subscription's: not routed to it, the cursor delivers it) or the
//! subscription did (routed to it live; the stamp is larger and the cursor
//! leaves it out). On other nodes the store change and the live delivery
//! to plain subscribers happen together when the change is applied; only
//! shared groups, which get no retained messages at subscribe time, have
//! the message forwarded.
//!
//! **Streaming.** A cursor walks the store in topic order a batch at a
//! time: no copy of the set, and only as much as the client's window (or,
//! at QoS 0, one write's worth) takes. The session keeps its cursors, so a
//! persistent session that goes offline pauses its stream and goes on
//! where it stopped when its client is back on this node.

use std::time::Instant;

use super::Routed;
use super::{Broker, SessionCell};
use crate::codec::{ByteStr, QoS};
use crate::message::SharedMessage;
use crate::session::{Delivery, RetainedCursor};
use crate::state::{Command, Ticket};

impl Broker {
    /// Publishes a message with RETAIN set: stores it (an empty payload
    /// clears the topic's) and routes it under the store's lock (see the
    /// module comment). `replicate`: the change goes through the log, in
    /// the same entry as the copies owed to persistent sessions (false for
    /// `$SYS`, which describes one node). A change that cannot commit (no
    /// quorum) is undone here, so that a node cut off from the cluster
    /// never keeps a retained message the others lack.
    pub(crate) fn publish_retained(&self, message: SharedMessage, replicate: bool) -> Routed {
        let topic = message.topic.clone();
        let set = !message.payload.is_empty();
        if set && message.qos == QoS::AtMostOnce && !self.admit_qos0() {
            // Past the memory budget: not stored (its copies go too; QoS
            // 1/2 ones were admitted with their publish).
            return self.route(message, Vec::new(), false);
        }
        // Our own change comes back from the log: it must not undo a newer
        // one of ours by then (see `RetainedStore::applied`).
        let follows = replicate && self.cluster.seam.follows_log();
        let mut commands = Vec::new();
        let mut store = self.local.retained.write();
        match (set, follows) {
            (true, true) => store.set_local(message.clone()),
            (true, false) => store.set(message.clone()),
            (false, true) => store.clear_local(&topic),
            (false, false) => {
                store.clear(&topic);
            }
        }
        if replicate {
            commands.push(if set {
                Command::RetainSet(message.clone())
            } else {
                Command::RetainClear {
                    topic: topic.clone(),
                }
            });
        }
        let mut routed = self.route(message, commands, follows && set);
        drop(store);
        if follows {
            routed.committed = self.put_back_if_failed(routed.committed, topic);
        }
        routed
    }

    /// Puts the committed value of `topic` back if `ticket` fails.
    fn put_back_if_failed(&self, ticket: Ticket, topic: ByteStr) -> Ticket {
        let (retained, seam) = (self.local.retained.clone(), self.cluster.seam.clone());
        Ticket::Pending(Box::pin(async move {
            let r = ticket.wait().await;
            if r.is_err() {
                let committed = seam.snapshot().retained.get(&topic).cloned();
                let mut store = retained.write();
                store.local_failed(&topic);
                match committed {
                    Some(m) => store.set(m),
                    None => {
                        store.clear(&topic);
                    }
                }
            }
            r
        }))
    }

    /// A retained change committed by `origin` is applied here (`message`
    /// `None`: a clear). Another node's is stored and delivered to the
    /// local plain subscribers as one step, unless a retained publish made
    /// here on the same topic is still on its way through the log: that
    /// one is newer, so it stays stored (the message is still delivered).
    /// `enqueued`: the persistent sessions the origin enqueued a copy for
    /// in the same entry.
    pub(crate) fn retained_committed(
        &self,
        origin: u64,
        topic: &ByteStr,
        message: Option<&SharedMessage>,
        enqueued: &[ByteStr],
    ) {
        let mut store = self.local.retained.write();
        if origin == self.node_id {
            store.applied(topic, message.cloned());
            return;
        }
        let newer_here = store.local_pending(topic);
        match message {
            Some(m) => {
                if !newer_here {
                    store.set(m.clone());
                }
                self.deliver_applied(m, enqueued);
            }
            // The empty publish itself was forwarded like any other.
            None if !newer_here => {
                store.clear(topic);
            }
            None => {}
        }
    }

    /// Hands `cell`'s client the next retained messages of its first
    /// cursor, as many as its window (QoS 1/2) or one write (QoS 0) takes
    /// now; finished cursors are dropped. Returns whether any cursor is
    /// left (the connection calls again once there is room).
    pub fn pump_retained(&self, cell: &SessionCell) -> bool {
        let now = Instant::now();
        // The store's lock is held while the copies go into the session: a
        // publish that replaces one of them must come after it, not before.
        let store = self.local.retained.read();
        let mut s = cell.session.lock();
        let room = s.cursor_room();
        let Some(c) = s.cursor().filter(|_| room > 0) else {
            return s.has_cursors();
        };
        let batch = store.next_batch(&c.filter, c.after.as_deref(), c.since, now, room);
        let (qos, identifier) = (c.qos, c.identifier);
        s.advance_cursor(batch.last, batch.done);
        let more = s.has_cursors();
        drop(s);
        let policy = self.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        let mut commands = Vec::new();
        for message in batch.messages {
            let d = Delivery {
                qos: message.qos.min(qos),
                retain: true,
                message,
                subscription_ids: identifier.into_iter().collect(),
                share: None,
                seq: 0,
                redelivery: false,
            };
            // Retained messages come from the store, not a publisher.
            let _ = self.deliver_to(cell, d, acl, false, &mut commands);
        }
        drop(store);
        self.submit(commands);
        more
    }

    /// Cursors that cannot go on (their session moved to another node,
    /// which has no copy of them): what they still had to deliver is
    /// counted as dropped.
    pub(crate) fn cursors_dropped(&self, client_id: &ByteStr, cursors: Vec<RetainedCursor>) {
        if cursors.is_empty() {
            return;
        }
        let now = Instant::now();
        let store = self.local.retained.read();
        let left: usize = cursors
            .iter()
            .map(|c| store.remaining(&c.filter, c.after.as_deref(), c.since, now))
            .sum();
        drop(store);
        if left > 0 {
            tracing::info!(%client_id, left, "retained messages not streamed: the session left this node");
            self.stats.publish_dropped.inc_by(left as u64);
        }
    }

    /// Retained messages for a new subscription on `filter`.
    pub fn retained_matching(&self, filter: &str, now: Instant) -> Vec<SharedMessage> {
        self.local.retained.read().matching(filter, now)
    }
}
