//! One client's session: subscriptions, outbound QoS 1/2 state, the offline
//! queue and inbound QoS 2 packet ids. Pure state, no I/O: the connection
//! task drains [`Session::swap_outbox`] into its socket, the engine feeds
//! [`Session::deliver`]. Everything here is bounded by configuration.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use smallvec::SmallVec;

use crate::codec::{ByteStr, QoS, SubOptions};
use crate::config::QueueOverflow;
use crate::filter_map::FilterMap;
use crate::message::SharedMessage;

#[cfg(test)]
mod tests;

/// Limits a session works within (from `[mqtt]`).
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub overflow: QueueOverflow,
    pub queue_qos0: bool,
}

/// The shared subscription a copy came through, so that it can be handed to
/// another member if this one leaves without acknowledging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRef {
    pub group: ByteStr,
    pub filter: ByteStr,
}

/// One copy of a message on its way to this session's client.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: SharedMessage,
    pub qos: QoS,
    /// The RETAIN flag as it goes out.
    pub retain: bool,
    pub subscription_ids: SmallVec<[u32; 1]>,
    /// Boxed: most copies come through no shared group, and each copy is
    /// written two or three times on its way (queue, window, outbox);
    /// inline, the two names were more than half of it.
    pub share: Option<Box<ShareRef>>,
    /// Names the copy in the seam; unique within the session.
    pub seq: u64,
    /// The copy may have reached the client before (restored from the
    /// replicated state): it goes out with DUP set.
    pub redelivery: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitAck,
    /// PUBREL sent; waiting for PUBCOMP.
    AwaitComp,
}

#[derive(Debug)]
struct Inflight {
    packet_id: u16,
    stage: Stage,
    delivery: Delivery,
}

/// What the connection writes next, in order.
#[derive(Debug)]
pub enum Outgoing {
    Publish {
        packet_id: u16,
        dup: bool,
        delivery: Delivery,
    },
    PubRel {
        packet_id: u16,
    },
}

#[derive(Debug)]
struct Binding {
    conn_id: u64,
    window: usize,
    outbox: Vec<Outgoing>,
    /// QoS 0 copies waiting in `outbox` (bounded so a slow reader cannot
    /// make us hold unbounded memory).
    outbox_qos0: usize,
    /// A publisher waits for this client to drain (see [`Session::congested`]).
    publishers_waiting: bool,
    /// A publisher waited the longest it may and the client did not move:
    /// publishers stop waiting for it (its copies are dropped at the limit,
    /// as before) until it reads again.
    stalled: bool,
}

/// How [`Session::deliver`] disposed of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handed to the connection (outbox) — it must be woken.
    Sent,
    /// Kept in the queue (offline, or the window is full).
    Queued,
    /// Refused by a limit; counted.
    Dropped,
    /// QoS 0 for an offline client that does not queue QoS 0: not an error.
    Discarded,
}

/// A new subscription's walk through the retained store (see
/// `engine/retain.rs`). The session keeps it while it has messages to
/// go, across reconnects of its client to this node.
#[derive(Debug, Clone)]
pub struct RetainedCursor {
    /// The subscription as written (its key in `subscriptions`).
    pub key: ByteStr,
    /// The filter it walks (never a shared one: those get no retained).
    pub filter: ByteStr,
    /// The QoS granted: each copy goes at the lower of this and its own.
    pub qos: QoS,
    pub identifier: Option<u32>,
    /// The store's stamp when the subscription went into the tree.
    pub since: u64,
    /// The topic the last step ended on; `None`: from the start.
    pub after: Option<ByteStr>,
}

/// Retained copies a cursor puts into the outbox at most per step (one
/// write's worth at QoS 0: the socket paces the rest).
const CURSOR_STEP: usize = 64;

/// A subscription as the session remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub options: SubOptions,
    pub identifier: Option<u32>,
}

#[derive(Debug)]
pub struct Session {
    pub client_id: ByteStr,
    /// The username of the connection bound last (ACL checks on delivery).
    pub username: Option<ByteStr>,
    /// The claim (see `Claim::nonce`) of the connection bound last.
    pub claim_nonce: u64,
    /// Seconds the session outlives its connection; 0 = it ends with it,
    /// `u32::MAX` = never expires.
    pub expiry: u32,
    pub subscriptions: FilterMap<SubscriptionRecord>,
    limits: SessionLimits,
    /// The copies in flight, queued or streaming and the inbound QoS 2
    /// ids: made when the first one is (most sessions of idle clients
    /// never have any, and empty collections inline were ~180 bytes of
    /// every session). Kept once made, with their capacity.
    pending: Option<Box<Pending>>,
    /// The sequence number of the next copy without one. Packet ids are
    /// derived from sequence numbers ([`Session::derived_packet_id`]),
    /// never counted: a node that resumes the session after another one
    /// sends each copy with the packet id the client may already have
    /// seen, which is what keeps QoS 2 exactly-once across nodes. Every
    /// session is made so, a single node's too: any session may move.
    next_seq: u64,
    binding: Option<Binding>,
    /// Increases on every attach, so that timers armed at a disconnect can
    /// tell whether the client has been back since.
    pub generation: u64,
    /// Copies refused by limits over the session's life.
    pub dropped: u64,
    /// Copies that expired before delivery.
    pub expired: u64,
}

/// The rarely used part of a [`Session`] (see `Session::pending`).
#[derive(Debug, Default)]
struct Pending {
    inflight: VecDeque<Inflight>,
    /// The packet ids of `inflight`, in the same order: the scans for a
    /// free or acknowledged id read 2 bytes per copy in flight instead of a
    /// whole `Inflight` (they were the largest cost of QoS 1 fan-out).
    inflight_ids: VecDeque<u16>,
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    /// Inbound QoS 2 packet ids between PUBREC and PUBREL.
    inbound_qos2: HashSet<u16>,
    /// Retained messages still to stream to new subscriptions, oldest
    /// subscription first.
    cursors: Vec<RetainedCursor>,
}

impl Pending {
    /// An idle session keeps no room for cursors (four of them, ~480
    /// bytes, stayed from each session's last SUBSCRIBE).
    fn release_cursors(&mut self) {
        if self.cursors.is_empty() {
            self.cursors = Vec::new();
        }
    }

    fn is_empty(&self) -> bool {
        self.inflight.is_empty()
            && self.queue.is_empty()
            && self.inbound_qos2.is_empty()
            && self.cursors.is_empty()
    }
}

/// What a session without [`Pending`] reads as.
static NO_PENDING: std::sync::LazyLock<Pending> = std::sync::LazyLock::new(Pending::default);

impl Session {
    pub fn new(client_id: ByteStr, expiry: u32, limits: SessionLimits) -> Self {
        Session {
            client_id,
            username: None,
            claim_nonce: 0,
            expiry,
            subscriptions: FilterMap::default(),
            limits,
            pending: None,
            next_seq: 1,
            binding: None,
            generation: 0,
            dropped: 0,
            expired: 0,
        }
    }

    /// The copies waiting and the like, read (empty if never made).
    fn p(&self) -> &Pending {
        self.pending.as_deref().unwrap_or(&NO_PENDING)
    }

    /// The same, to change: made on first use.
    fn p_mut(&mut self) -> &mut Pending {
        self.pending.get_or_insert_with(Box::default)
    }

    pub fn is_persistent(&self) -> bool {
        self.expiry > 0
    }

    pub fn is_connected(&self) -> bool {
        self.binding.is_some()
    }

    pub fn conn_id(&self) -> Option<u64> {
        self.binding.as_ref().map(|b| b.conn_id)
    }

    pub fn queued_len(&self) -> usize {
        self.p().queue.len()
    }

    pub fn inflight_len(&self) -> usize {
        self.p().inflight.len()
    }

    /// Binds a connection. Unacknowledged copies are resent (PUBLISH with
    /// DUP, or PUBREL), then the queue fills the window. `window` is the
    /// smaller of our in-flight limit and the client's Receive Maximum.
    pub fn attach(&mut self, conn_id: u64, receive_maximum: u16, now: Instant) {
        self.generation += 1;
        let window = usize::from(self.limits.max_inflight.min(receive_maximum)).max(1);
        let inflight = &self.p().inflight;
        let mut outbox = Vec::with_capacity(inflight.len());
        for f in inflight {
            outbox.push(match f.stage {
                Stage::AwaitAck => Outgoing::Publish {
                    packet_id: f.packet_id,
                    dup: true,
                    delivery: f.delivery.clone(),
                },
                Stage::AwaitComp => Outgoing::PubRel {
                    packet_id: f.packet_id,
                },
            });
        }
        self.binding = Some(Binding {
            conn_id,
            window,
            outbox,
            outbox_qos0: 0,
            publishers_waiting: false,
            stalled: false,
        });
        self.fill_window(now);
    }

    /// Unbinds connection `conn_id` (no-op if another one has taken over).
    /// Returns the copies that came through shared subscriptions and were
    /// not yet acknowledged, for the engine to hand to another member.
    pub fn detach(&mut self, conn_id: u64) -> Vec<Delivery> {
        if self.conn_id() != Some(conn_id) {
            return Vec::new();
        }
        self.binding = None;
        let mut handed_over = Vec::new();
        let Some(p) = self.pending.as_deref_mut() else {
            return handed_over;
        };
        // Copies still awaiting their first ack (not PUBREL: a QoS 2
        // message past PUBREC has been received by this member).
        p.inflight.retain(|f| {
            if f.delivery.share.is_some() && f.stage == Stage::AwaitAck {
                handed_over.push(f.delivery.clone());
                false
            } else {
                true
            }
        });
        p.inflight_ids = p.inflight.iter().map(|f| f.packet_id).collect();
        let mut kept = VecDeque::with_capacity(p.queue.len());
        for d in p.queue.drain(..) {
            if d.share.is_some() {
                p.queued_bytes -= d.message.body_len();
                handed_over.push(d);
            } else {
                kept.push_back(d);
            }
        }
        p.queue = kept;
        // Offline with nothing owed: the box goes too.
        self.release_idle();
        handed_over
    }

    /// Takes one copy for the client. A copy without a sequence number
    /// (0) gets the session's next one.
    pub fn deliver(&mut self, mut d: Delivery) -> (Disposition, u64) {
        if d.seq == 0 {
            d.seq = self.next_seq;
            self.next_seq += 1;
        }
        let seq = d.seq;
        let Some(b) = self.binding.as_mut() else {
            if d.qos == QoS::AtMostOnce && !self.limits.queue_qos0 {
                return (Disposition::Discarded, seq);
            }
            return (self.enqueue(d), seq);
        };
        if d.qos == QoS::AtMostOnce {
            if b.outbox_qos0 >= self.limits.max_queued_messages.max(1) {
                self.dropped += 1;
                return (Disposition::Dropped, seq);
            }
            b.outbox_qos0 += 1;
            b.outbox.push(Outgoing::Publish {
                packet_id: 0,
                dup: false,
                delivery: d,
            });
            return (Disposition::Sent, seq);
        }
        let window = b.window;
        let p = self.p();
        if p.queue.is_empty() && p.inflight.len() < window && self.id_free(seq) {
            self.send_inflight(d);
            return (Disposition::Sent, seq);
        }
        (self.enqueue(d), seq)
    }

    /// The packet id of the copy `seq` (never 0), on whichever node
    /// serves the session.
    pub fn derived_packet_id(seq: u64) -> u16 {
        // splitmix64's finaliser: neighbouring sequence numbers spread over
        // the whole id space, so collisions among a window are rare.
        let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % 65535) as u16 + 1
    }

    /// Whether copy `seq` can take its packet id now. A copy whose id is
    /// still in flight waits for it: the id must be the same on every
    /// node, so it cannot be swapped for a free one.
    fn id_free(&self, seq: u64) -> bool {
        let id = Self::derived_packet_id(seq);
        let (a, b) = self.p().inflight_ids.as_slices();
        !holds(a, id) && !holds(b, id)
    }

    fn enqueue(&mut self, d: Delivery) -> Disposition {
        let size = d.message.body_len();
        let limits = self.limits;
        let over = |p: &Pending| {
            p.queue.len() >= limits.max_queued_messages
                || (limits.max_queued_bytes > 0 && p.queued_bytes + size > limits.max_queued_bytes)
        };
        let p = self.pending.get_or_insert_with(Box::default);
        if over(p) {
            match limits.overflow {
                QueueOverflow::DropNew => {
                    self.dropped += 1;
                    return Disposition::Dropped;
                }
                QueueOverflow::DropOldest => {
                    while over(p) {
                        let Some(old) = p.queue.pop_front() else {
                            // Larger than the whole byte budget on its own.
                            self.dropped += 1;
                            return Disposition::Dropped;
                        };
                        p.queued_bytes -= old.message.body_len();
                        self.dropped += 1;
                    }
                }
            }
        }
        p.queued_bytes += size;
        p.queue.push_back(d);
        Disposition::Queued
    }

    fn send_inflight(&mut self, d: Delivery) {
        let packet_id = Self::derived_packet_id(d.seq);
        self.push_inflight(Inflight {
            packet_id,
            stage: Stage::AwaitAck,
            delivery: d.clone(),
        });
        if let Some(b) = self.binding.as_mut() {
            b.outbox.push(Outgoing::Publish {
                packet_id,
                dup: d.redelivery,
                delivery: d,
            });
        }
    }

    /// Moves queued copies into the window while there is room. Returns
    /// the sequence numbers of copies dropped because they expired.
    fn fill_window(&mut self, now: Instant) -> Vec<u64> {
        let mut expired = Vec::new();
        let Some(b) = self.binding.as_mut() else {
            return expired;
        };
        let window = b.window;
        let Some(p) = self.pending.as_deref() else {
            // Nothing queued.
            return expired;
        };
        if !p.queue.is_empty() && p.inflight.len() < window {
            // An ack made room: the client is moving.
            b.stalled = false;
        }
        while let Some(front) = self.p().queue.front() {
            let dead = front.message.is_expired(now);
            // Queued QoS 0 (queue_qos0_messages) takes no window slot.
            if !dead
                && front.qos != QoS::AtMostOnce
                && (self.p().inflight.len() >= window || !self.id_free(front.seq))
            {
                break;
            }
            let p = self.p_mut();
            let Some(d) = p.queue.pop_front() else {
                break;
            };
            p.queued_bytes -= d.message.body_len();
            if dead {
                expired.push(d.seq);
                self.expired += 1;
            } else if d.qos == QoS::AtMostOnce {
                if let Some(b) = self.binding.as_mut() {
                    b.outbox.push(Outgoing::Publish {
                        packet_id: 0,
                        dup: false,
                        delivery: d,
                    });
                }
            } else {
                self.send_inflight(d);
            }
        }
        expired
    }

    fn push_inflight(&mut self, f: Inflight) {
        let p = self.p_mut();
        p.inflight_ids.push_back(f.packet_id);
        p.inflight.push_back(f);
    }

    fn remove_inflight(&mut self, i: usize) -> Option<Inflight> {
        let p = self.pending.as_deref_mut()?;
        p.inflight_ids.remove(i);
        let f = p.inflight.remove(i);
        debug_assert!(p
            .inflight
            .iter()
            .map(|f| f.packet_id)
            .eq(p.inflight_ids.iter().copied()));
        f
    }

    fn position(&self, packet_id: u16, stage: Stage) -> Option<usize> {
        // Acks mostly arrive in order: the front is the usual answer.
        let p = self.p();
        p.inflight_ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id == packet_id)
            .map(|(i, _)| i)
            .find(|&i| p.inflight[i].stage == stage)
    }

    /// PUBACK from the client. Returns the acknowledged copy's sequence
    /// number (None for an unknown id) and the sequence numbers of copies
    /// that expired while the window refilled.
    pub fn on_puback(&mut self, packet_id: u16, now: Instant) -> (Option<u64>, Vec<u64>) {
        let acked = self.acknowledge(packet_id);
        (acked, self.fill_window(now))
    }

    /// PUBACKs the client sent together, each as [`Session::on_puback`],
    /// the window refilled once after them all (in queue order, as one by
    /// one). `done` is given the sequence numbers of the acknowledged
    /// copies, then of those that expired while the window refilled.
    pub fn on_pubacks(&mut self, packet_ids: &[u16], now: Instant, mut done: impl FnMut(u64)) {
        for &id in packet_ids {
            if let Some(seq) = self.acknowledge(id) {
                done(seq);
            }
        }
        for seq in self.fill_window(now) {
            done(seq);
        }
    }

    /// Ends the QoS 1 copy awaiting PUBACK under `packet_id`: its sequence
    /// number, or `None` for an unknown id.
    fn acknowledge(&mut self, packet_id: u16) -> Option<u64> {
        self.position(packet_id, Stage::AwaitAck)
            .filter(|&i| self.p().inflight[i].delivery.qos == QoS::AtLeastOnce)
            .and_then(|i| self.remove_inflight(i))
            .map(|f| f.delivery.seq)
    }

    /// PUBREC from the client: answer PUBREL (queued in the outbox). A
    /// failure reason code ends the exchange like an ack. Returns the
    /// copy's sequence number and whether it was released (vs ended).
    pub fn on_pubrec(&mut self, packet_id: u16, failed: bool, now: Instant) -> PubRecOutcome {
        let Some(i) = self
            .position(packet_id, Stage::AwaitAck)
            .filter(|&i| self.p().inflight[i].delivery.qos == QoS::ExactlyOnce)
        else {
            return PubRecOutcome::Unknown;
        };
        if failed {
            let seq = self.remove_inflight(i).map(|f| f.delivery.seq);
            let expired = self.fill_window(now);
            return PubRecOutcome::Ended { seq, expired };
        }
        let f = &mut self.p_mut().inflight[i];
        f.stage = Stage::AwaitComp;
        let seq = f.delivery.seq;
        if let Some(b) = self.binding.as_mut() {
            b.outbox.push(Outgoing::PubRel { packet_id });
        }
        PubRecOutcome::Released { seq }
    }

    /// PUBCOMP from the client.
    pub fn on_pubcomp(&mut self, packet_id: u16, now: Instant) -> (Option<u64>, Vec<u64>) {
        let done = self
            .position(packet_id, Stage::AwaitComp)
            .and_then(|i| self.remove_inflight(i))
            .map(|f| f.delivery.seq);
        (done, self.fill_window(now))
    }

    /// Forgets an in-flight copy the connection could not send (larger than
    /// the client's Maximum Packet Size).
    pub fn discard(&mut self, packet_id: u16, now: Instant) -> (Option<u64>, Vec<u64>) {
        let gone = self
            .p()
            .inflight_ids
            .iter()
            .position(|id| *id == packet_id)
            .and_then(|i| self.remove_inflight(i))
            .map(|f| f.delivery.seq);
        (gone, self.fill_window(now))
    }

    /// Everything the connection should write now, in order: the tests'
    /// way to read the outbox (connections swap it, see below).
    #[cfg(any(test, feature = "test-support"))]
    pub fn take_outbox(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        self.swap_outbox(&mut out);
        out
    }

    /// Swaps the outbox with `spare` (which must be empty): the connection
    /// keeps one vector for itself and hands it back, so that steady
    /// traffic costs no allocation per batch.
    pub fn swap_outbox(&mut self, spare: &mut Vec<Outgoing>) {
        debug_assert!(spare.is_empty());
        if let Some(b) = self.binding.as_mut() {
            if !b.outbox.is_empty() {
                // The client reads again: it is no longer stalled.
                b.stalled = false;
            }
            b.outbox_qos0 = 0;
            std::mem::swap(&mut b.outbox, spare);
        }
    }

    /// Whether publishers should hold off for this session: it is connected
    /// and has half its queue limit waiting (QoS 0 copies in the outbox, or
    /// QoS 1/2 copies queued behind a full window). Publishers that stop
    /// reading their sockets then pass the pressure back to their clients,
    /// so that a subscriber that is only slower than its publishers loses
    /// nothing; only one that stops reading altogether gets copies dropped
    /// (at the limit, counted, as ever). Offline sessions never push back.
    pub fn congested(&self) -> bool {
        let Some(b) = self.binding.as_ref() else {
            return false;
        };
        let high = (self.limits.max_queued_messages / 2).max(1);
        let p = self.p();
        !b.stalled
            && (b.outbox_qos0 >= high
                || p.queue.len() >= high
                || (self.limits.max_queued_bytes > 0
                    && p.queued_bytes >= self.limits.max_queued_bytes / 2))
    }

    /// A publisher is about to wait for this session: true if it still must
    /// (then the connection will wake it, see [`Session::publishers_to_wake`]).
    pub fn register_waiting_publisher(&mut self) -> bool {
        let congested = self.congested();
        if let (true, Some(b)) = (congested, self.binding.as_mut()) {
            b.publishers_waiting = true;
        }
        congested
    }

    /// A publisher waited in vain: stop making publishers wait for this
    /// client until it reads again.
    pub fn mark_stalled(&mut self) {
        if let Some(b) = self.binding.as_mut() {
            b.stalled = true;
        }
    }

    /// True (once) when publishers wait and the session has drained below
    /// the mark: the connection then wakes them.
    pub fn publishers_to_wake(&mut self) -> bool {
        let congested = self.congested();
        match self.binding.as_mut() {
            Some(b) if b.publishers_waiting && (!congested || b.stalled) => {
                b.publishers_waiting = false;
                true
            }
            _ => false,
        }
    }

    pub fn has_outbox(&self) -> bool {
        self.binding.as_ref().is_some_and(|b| !b.outbox.is_empty())
    }

    /// Starts streaming a new subscription's retained messages; it
    /// replaces an unfinished cursor of the same subscription (subscribing
    /// again sends them again).
    pub fn start_cursor(&mut self, cursor: RetainedCursor) {
        let cursors = &mut self.p_mut().cursors;
        cursors.retain(|c| c.key != cursor.key);
        if cursors.capacity() == 0 {
            cursors.reserve_exact(1);
        }
        cursors.push(cursor);
    }

    /// The subscription `key` is gone: so is what it had still to get.
    pub fn stop_cursor(&mut self, key: &str) {
        if let Some(p) = self.pending.as_deref_mut() {
            p.cursors.retain(|c| &*c.key != key);
        }
        self.release_idle();
    }

    /// A session whose streams are done and with nothing waiting gives
    /// its box back (a persistent session streams its retained messages
    /// once per SUBSCRIBE, then sits idle for long). Not on acks: steady
    /// QoS 1 traffic keeps the box and its capacity.
    fn release_idle(&mut self) {
        let Some(p) = self.pending.as_deref_mut() else {
            return;
        };
        p.release_cursors();
        if p.is_empty() {
            self.pending = None;
        }
    }

    pub fn has_cursors(&self) -> bool {
        !self.p().cursors.is_empty()
    }

    /// The cursor to take the next step of.
    pub fn cursor(&self) -> Option<&RetainedCursor> {
        self.p().cursors.first()
    }

    /// The first cursor's step ended on `last`; `done`: it is finished.
    pub fn advance_cursor(&mut self, last: Option<ByteStr>, done: bool) {
        let Some(p) = self.pending.as_deref_mut() else {
            return;
        };
        if done {
            if !p.cursors.is_empty() {
                p.cursors.remove(0);
            }
            self.release_idle();
        } else if let Some(c) = p.cursors.first_mut() {
            if last.is_some() {
                c.after = last;
            }
        }
    }

    /// Takes every cursor away (the session leaves this node).
    pub fn take_cursors(&mut self) -> Vec<RetainedCursor> {
        let cursors = self
            .pending
            .as_deref_mut()
            .map(|p| std::mem::take(&mut p.cursors))
            .unwrap_or_default();
        self.release_idle();
        cursors
    }

    /// How many retained copies the first cursor may hand over now: none
    /// while offline or while anything is queued; at QoS 1/2 what the
    /// window has free; at most one step of the outbox. A client that
    /// reads nothing so holds at most a window or a step of them.
    pub fn cursor_room(&self) -> usize {
        let p = self.p();
        let (Some(b), Some(c)) = (self.binding.as_ref(), p.cursors.first()) else {
            return 0;
        };
        if !p.queue.is_empty() {
            return 0;
        }
        let step = CURSOR_STEP.min(self.limits.max_queued_messages.max(1));
        let outbox = step.saturating_sub(b.outbox.len());
        if c.qos == QoS::AtMostOnce {
            outbox
        } else {
            outbox.min(b.window.saturating_sub(p.inflight.len()))
        }
    }

    /// Inbound QoS 2: records `packet_id` between PUBREC and PUBREL, at
    /// most `limit` at a time (our Receive Maximum).
    pub fn begin_inbound_qos2(&mut self, packet_id: u16, limit: usize) -> InboundQos2 {
        let ids = &mut self.p_mut().inbound_qos2;
        if ids.contains(&packet_id) {
            return InboundQos2::Duplicate;
        }
        if ids.len() >= limit {
            return InboundQos2::OverLimit;
        }
        ids.insert(packet_id);
        InboundQos2::New
    }

    /// True while `packet_id` names an inbound QoS 2 publish awaiting PUBREL.
    pub fn inbound_qos2_pending(&self, packet_id: u16) -> bool {
        self.p().inbound_qos2.contains(&packet_id)
    }

    /// Inbound PUBREL: true if the id was open.
    pub fn end_inbound_qos2(&mut self, packet_id: u16) -> bool {
        self.pending
            .as_deref_mut()
            .is_some_and(|p| p.inbound_qos2.remove(&packet_id))
    }

    /// Restores an owed copy from persisted state (after a restart, or on
    /// the node that took the session over), oldest first. A copy past
    /// PUBREC only awaits PUBCOMP; the others are queued, to be sent again
    /// with DUP within the window once a connection is bound.
    pub fn restore(&mut self, mut d: Delivery, released: bool) {
        self.next_seq = self.next_seq.max(d.seq + 1);
        if released {
            self.push_inflight(Inflight {
                packet_id: Self::derived_packet_id(d.seq),
                stage: Stage::AwaitComp,
                delivery: d,
            });
        } else {
            d.redelivery = d.qos != QoS::AtMostOnce;
            let p = self.p_mut();
            p.queued_bytes += d.message.body_len();
            p.queue.push_back(d);
        }
    }
}

/// Whether `ids` holds `id`: `contains`, in blocks the compiler compares
/// at once (every copy sent scans the window's ids, up to 65,535 of them).
fn holds(ids: &[u16], id: u16) -> bool {
    let mut blocks = ids.chunks_exact(16);
    let found = blocks
        .by_ref()
        .any(|b| b.iter().fold(false, |found, &x| found | (x == id)));
    found || blocks.remainder().contains(&id)
}

/// What an inbound QoS 2 PUBLISH is to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundQos2 {
    /// A new packet id: route the message.
    New,
    /// A resend of one we have (before PUBREL): acknowledge, don't route.
    Duplicate,
    /// More open ids than our Receive Maximum allows.
    OverLimit,
}

/// What a PUBREC did.
#[derive(Debug, PartialEq, Eq)]
pub enum PubRecOutcome {
    /// No QoS 2 copy awaits PUBREC under that id.
    Unknown,
    /// PUBREL queued; the copy now awaits PUBCOMP.
    Released { seq: u64 },
    /// The client refused it with a failure code; the copy is gone.
    Ended { seq: Option<u64>, expired: Vec<u64> },
}
