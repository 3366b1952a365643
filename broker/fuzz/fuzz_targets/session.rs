//! The session engine under an arbitrary sequence of operations: deliveries
//! at QoS 0/1/2 (plain and shared, some expiring), PUBACK / PUBREC / PUBCOMP
//! and discards with arbitrary or known packet ids, attach (bind, takeover)
//! and detach (current or stale connection), outbox drains, time passing,
//! inbound QoS 2 ids and, before the first connection, restores.
//!
//! The outbox is drained into the model before every operation but a
//! delivery (a client cannot answer what was not written yet), so acks with
//! known ids hit copies in flight and raw ids mostly miss.
//!
//! Invariants, checked after every operation, computed only from what the
//! public API returns:
//! - no panic (the build has debug assertions and overflow checks);
//! - every QoS 1/2 PUBLISH written has a non-zero packet id, and a new one
//!   (not DUP) never reuses the id of a copy still in flight;
//! - in flight <= the window (or what was already in flight at attach,
//!   when a reconnect narrowed it); nothing enters flight while detached;
//! - queued <= max_queued_messages;
//! - conservation: accepted - completed - evicted - expired - handed over -
//!   queued QoS 0 flushed to the outbox == in flight + queued, where
//!   `accepted` counts Sent (QoS 1/2) and Queued dispositions and restores,
//!   `completed` counts acks and discards that returned a sequence number,
//!   `evicted` is the growth of `dropped` beyond Dropped dispositions, and
//!   `expired` is the growth of `expired`;
//! - every sequence number the session hands back (acks, expiries, hand
//!   over, flushed QoS 0) names a copy it holds, at most once.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use raftmq::codec::{ByteStr, QoS};
use raftmq::config::QueueOverflow;
use raftmq::message::{Message, MessageParts};
use raftmq::session::{
    Delivery, Disposition, InboundQos2, Outgoing, PubRecOutcome, Session, SessionLimits, ShareRef,
};
use smallvec::SmallVec;

#[derive(Arbitrary, Debug)]
struct Input {
    max_inflight: u8,
    max_queued_messages: u8,
    max_queued_bytes: u8,
    drop_oldest: bool,
    queue_qos0: bool,
    expiry: u8,
    restores: Vec<Restore>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Restore {
    qos: u8,
    released: bool,
    seq_gap: u8,
    payload: u8,
    shared: bool,
}

#[derive(Arbitrary, Debug)]
enum Id {
    /// Any packet id, mostly unknown to the session.
    Raw(u16),
    /// The n-th id the model knows to be in flight.
    Known(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Deliver {
        qos: u8,
        payload: u8,
        /// Seconds from the start until the message expires.
        expires: Option<u8>,
        shared: bool,
        retain: bool,
    },
    PubAck(Id),
    PubRec(Id, bool),
    PubComp(Id),
    Discard(Id),
    Attach {
        receive_maximum: u16,
    },
    Detach {
        stale: bool,
    },
    TakeOutbox,
    Advance(u8),
    InboundBegin(u8, u8),
    InboundEnd(u8),
}

fn qos(b: u8) -> QoS {
    QoS::from_u8(b % 3).unwrap_or_default()
}

fn delivery(
    start: Instant,
    qos: QoS,
    payload: u8,
    expires: Option<u8>,
    shared: bool,
    retain: bool,
) -> Delivery {
    Delivery {
        message: Arc::new(Message::new(MessageParts {
            topic: ByteStr::from_static("t"),
            payload: Bytes::from(vec![0u8; usize::from(payload % 6)]),
            qos,
            retain,
            origin: ByteStr::default(),
            expires_at: expires.map(|s| start + Duration::from_secs(u64::from(s % 32))),
            properties: None,
            received_at: start,
        })),
        qos,
        retain,
        subscription_ids: SmallVec::new(),
        share: shared.then(|| {
            Box::new(ShareRef {
                group: ByteStr::from_static("g"),
                filter: ByteStr::from_static("t"),
            })
        }),
        seq: 0,
        redelivery: false,
    }
}

/// What the target knows, from return values only.
struct Model {
    /// Copies the session holds (in flight or queued), by sequence number.
    owed: HashMap<u64, QoS>,
    /// Queued QoS 0 copies: when they reach the outbox they leave `owed`.
    queued_qos0: HashSet<u64>,
    /// Copies restored from persisted state: they may have reached the
    /// client before, so they go out with DUP even the first time here.
    restored: HashSet<u64>,
    /// Packet ids known to be in flight, and the copy each names (None for
    /// a restored released copy first seen as a PUBREL).
    ids: HashMap<u16, Option<u64>>,
    accepted: u64,
    completed: u64,
    handed: u64,
    flushed: u64,
    dropped_dispositions: u64,
    /// Largest in-flight count allowed now: the window, or more if a
    /// reconnect narrowed it below what was already in flight.
    inflight_cap: Option<usize>,
    last_inflight: usize,
    queue_cap: usize,
    inbound: HashSet<u16>,
}

impl Model {
    fn take(&mut self, seq: u64, what: &str) {
        assert!(
            self.owed.remove(&seq).is_some(),
            "{what}: seq {seq} is not held"
        );
        self.queued_qos0.remove(&seq);
    }

    fn forget_id_of(&mut self, seq: u64) {
        self.ids.retain(|_, s| *s != Some(seq));
    }

    /// An ack by id returned `seq`: the id named that copy, if known.
    fn acked(&mut self, id: u16, seq: u64, what: &str) {
        if let Some(known) = self.ids.remove(&id) {
            if let Some(known) = known {
                assert_eq!(known, seq, "{what} {id} returned another copy");
            }
        }
        self.forget_id_of(seq);
        self.take(seq, what);
        self.completed += 1;
    }

    fn expired(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            self.take(seq, "expired");
        }
    }

    fn pick(&self, id: &Id) -> u16 {
        match id {
            Id::Raw(v) => *v,
            Id::Known(n) => {
                if self.ids.is_empty() {
                    return 1;
                }
                let mut known: Vec<u16> = self.ids.keys().copied().collect();
                known.sort_unstable();
                known[usize::from(*n) % known.len()]
            }
        }
    }

    fn drain(&mut self, s: &mut Session) {
        self.absorb(s.take_outbox());
    }

    /// Learns from what the connection writes.
    fn absorb(&mut self, out: Vec<Outgoing>) {
        for o in out {
            match o {
                Outgoing::Publish {
                    packet_id,
                    dup,
                    delivery,
                } => {
                    let seq = delivery.seq;
                    if delivery.qos == QoS::AtMostOnce {
                        assert_eq!(packet_id, 0, "QoS 0 with a packet id");
                        assert!(!dup, "QoS 0 with DUP");
                        if self.queued_qos0.remove(&seq) {
                            self.take(seq, "flushed QoS 0");
                            self.flushed += 1;
                        }
                        continue;
                    }
                    assert_ne!(packet_id, 0, "QoS {:?} with packet id 0", delivery.qos);
                    assert!(
                        self.owed.contains_key(&seq),
                        "PUBLISH of seq {seq} not held"
                    );
                    match self.ids.get(&packet_id) {
                        Some(Some(other)) if *other != seq => {
                            panic!("packet id {packet_id} of seq {other} reused for seq {seq}")
                        }
                        Some(_) => assert!(dup, "new PUBLISH reuses in-flight id {packet_id}"),
                        None => {
                            assert!(
                                !self.ids.values().any(|s| *s == Some(seq)),
                                "seq {seq} in flight under two ids"
                            );
                            self.ids.insert(packet_id, Some(seq));
                        }
                    }
                }
                Outgoing::PubRel { packet_id } => {
                    assert_ne!(packet_id, 0, "PUBREL with packet id 0");
                    self.ids.entry(packet_id).or_insert(None);
                }
            }
        }
    }

    fn check(&mut self, s: &Session) {
        let inflight = s.inflight_len();
        let queued = s.queued_len();
        match self.inflight_cap {
            Some(cap) => assert!(inflight <= cap, "{inflight} in flight, window {cap}"),
            None => assert!(
                inflight <= self.last_inflight,
                "in flight grew from {} to {inflight} while detached",
                self.last_inflight
            ),
        }
        self.last_inflight = inflight;
        assert!(
            queued <= self.queue_cap,
            "{queued} queued, limit {}",
            self.queue_cap
        );
        assert!(self.ids.len() <= inflight, "more known ids than in flight");
        assert!(s.dropped >= self.dropped_dispositions);
        let evicted = s.dropped - self.dropped_dispositions;
        let gone = self.completed + evicted + s.expired + self.handed + self.flushed;
        assert_eq!(
            self.accepted,
            gone + (inflight + queued) as u64,
            "conservation: accepted {} completed {} evicted {evicted} expired {} handed {} \
             flushed {} inflight {inflight} queued {queued}",
            self.accepted,
            self.completed,
            s.expired,
            self.handed,
            self.flushed
        );
        // Evictions and expiries at attach are not named: the model may
        // hold more than the session, never less.
        assert!(
            self.owed.len() >= inflight + queued,
            "session holds unknown copies"
        );
        assert_eq!(s.is_connected(), self.inflight_cap.is_some());
    }
}

fuzz_target!(|input: Input| {
    let start = Instant::now();
    let mut now = start;
    let limits = SessionLimits {
        max_inflight: u16::from(input.max_inflight % 12),
        max_queued_messages: usize::from(input.max_queued_messages % 12),
        max_queued_bytes: usize::from(input.max_queued_bytes % 24),
        overflow: if input.drop_oldest {
            QueueOverflow::DropOldest
        } else {
            QueueOverflow::DropNew
        },
        queue_qos0: input.queue_qos0,
    };
    // Packet ids derived from sequence numbers, as for every session the
    // broker makes.
    let mut s = Session::new(ByteStr::from_static("c"), u32::from(input.expiry), limits);
    let mut m = Model {
        owed: HashMap::new(),
        queued_qos0: HashSet::new(),
        restored: HashSet::new(),
        ids: HashMap::new(),
        accepted: 0,
        completed: 0,
        handed: 0,
        flushed: 0,
        dropped_dispositions: 0,
        inflight_cap: None,
        last_inflight: 0,
        queue_cap: limits.max_queued_messages,
        inbound: HashSet::new(),
    };

    // Owed copies from persisted state, as after a restart.
    let mut seq = 0u64;
    for r in input.restores.iter().take(32) {
        seq += 1 + u64::from(r.seq_gap);
        let q = qos(r.qos);
        let mut d = delivery(start, q, r.payload, None, r.shared, false);
        d.seq = seq;
        s.restore(d, r.released);
        m.owed.insert(seq, q);
        m.restored.insert(seq);
        m.accepted += 1;
        if !r.released && q == QoS::AtMostOnce {
            m.queued_qos0.insert(seq);
        }
        m.last_inflight = s.inflight_len();
        m.queue_cap = m.queue_cap.max(s.queued_len());
        m.check(&s);
    }
    let mut last_seq = seq;
    let mut conn = 0u64;
    let mut generation = s.generation;

    for op in input.ops.iter().take(512) {
        // The connection writes what the session queued before the client
        // can answer it: drain before anything but a delivery (deliveries
        // pile up in the outbox, which bounds its QoS 0 copies).
        if !matches!(op, Op::Deliver { .. }) {
            m.drain(&mut s);
        }
        match op {
            Op::Deliver {
                qos: q,
                payload,
                expires,
                shared,
                retain,
            } => {
                let q = qos(*q);
                let before = (s.inflight_len(), s.queued_len());
                let (disp, seq) =
                    s.deliver(delivery(start, q, *payload, *expires, *shared, *retain));
                assert!(
                    seq > last_seq,
                    "sequence numbers go back: {seq} after {last_seq}"
                );
                last_seq = seq;
                match disp {
                    Disposition::Sent => {
                        assert!(s.is_connected(), "Sent while detached");
                        if q != QoS::AtMostOnce {
                            assert_eq!(s.inflight_len(), before.0 + 1);
                            m.owed.insert(seq, q);
                            m.accepted += 1;
                        }
                    }
                    Disposition::Queued => {
                        m.owed.insert(seq, q);
                        m.accepted += 1;
                        if q == QoS::AtMostOnce {
                            m.queued_qos0.insert(seq);
                        }
                    }
                    Disposition::Dropped => m.dropped_dispositions += 1,
                    Disposition::Discarded => {
                        assert!(
                            !s.is_connected() && q == QoS::AtMostOnce && !limits.queue_qos0,
                            "Discarded a copy that should be kept"
                        );
                        assert_eq!((s.inflight_len(), s.queued_len()), before);
                    }
                }
            }
            Op::PubAck(id) => {
                let id = m.pick(id);
                let (acked, expired) = s.on_puback(id, now);
                if let Some(seq) = acked {
                    assert_eq!(
                        m.owed.get(&seq),
                        Some(&QoS::AtLeastOnce),
                        "PUBACK ended {seq}"
                    );
                    m.acked(id, seq, "PUBACK");
                }
                m.expired(&expired);
            }
            Op::PubRec(id, failed) => {
                let id = m.pick(id);
                match s.on_pubrec(id, *failed, now) {
                    PubRecOutcome::Unknown => {}
                    PubRecOutcome::Released { seq } => {
                        assert!(!failed);
                        assert_eq!(m.owed.get(&seq), Some(&QoS::ExactlyOnce), "PUBREC of {seq}");
                        if let Some(Some(known)) = m.ids.get(&id) {
                            assert_eq!(*known, seq, "PUBREC {id} released another copy");
                        }
                    }
                    PubRecOutcome::Ended { seq, expired } => {
                        assert!(failed);
                        let seq = seq.expect("a failed PUBREC of a known id names its copy");
                        assert_eq!(m.owed.get(&seq), Some(&QoS::ExactlyOnce), "PUBREC of {seq}");
                        m.acked(id, seq, "PUBREC failure");
                        m.expired(&expired);
                    }
                }
            }
            Op::PubComp(id) => {
                let id = m.pick(id);
                let (done, expired) = s.on_pubcomp(id, now);
                if let Some(seq) = done {
                    m.acked(id, seq, "PUBCOMP");
                }
                m.expired(&expired);
            }
            Op::Discard(id) => {
                let id = m.pick(id);
                let (gone, expired) = s.discard(id, now);
                if let Some(seq) = gone {
                    m.acked(id, seq, "discard");
                }
                m.expired(&expired);
            }
            Op::Attach { receive_maximum } => {
                m.drain(&mut s);
                conn += 1;
                let carried = s.inflight_len();
                s.attach(conn, *receive_maximum, now);
                assert!(s.generation > generation, "generation did not increase");
                generation = s.generation;
                assert_eq!(s.conn_id(), Some(conn));
                let window = usize::from(limits.max_inflight.min(*receive_maximum)).max(1);
                m.inflight_cap = Some(window.max(carried));
                // Everything still in flight is written again first.
                let out = s.take_outbox();
                assert!(out.len() >= carried, "attach did not resend all in flight");
                for o in &out[..carried] {
                    if let Outgoing::Publish { dup, delivery, .. } = o {
                        assert!(*dup, "resend without DUP");
                        assert!(m.owed.contains_key(&delivery.seq), "resent a copy not held");
                    }
                }
                for o in &out[carried..] {
                    match o {
                        Outgoing::Publish { dup, delivery, .. } => assert!(
                            !dup || m.restored.contains(&delivery.seq),
                            "new copy with DUP"
                        ),
                        Outgoing::PubRel { .. } => panic!("PUBREL after the resends"),
                    }
                }
                m.absorb(out);
            }
            Op::Detach { stale } => {
                m.drain(&mut s);
                let id = if *stale { conn.wrapping_sub(1) } else { conn };
                let was = s.conn_id();
                let handed = s.detach(id);
                if was != Some(id) {
                    assert!(handed.is_empty(), "stale detach handed copies over");
                    assert_eq!(s.conn_id(), was, "stale detach unbound");
                } else {
                    assert!(!s.is_connected());
                    m.inflight_cap = None;
                    for d in &handed {
                        assert!(d.share.is_some(), "handed over a non-shared copy");
                        m.forget_id_of(d.seq);
                        m.take(d.seq, "handed over");
                        m.handed += 1;
                    }
                }
            }
            Op::TakeOutbox => m.drain(&mut s),
            Op::Advance(secs) => now += Duration::from_secs(u64::from(*secs % 8)),
            Op::InboundBegin(id, limit) => {
                let id = u16::from(*id % 16);
                let limit = usize::from(*limit % 8);
                let got = s.begin_inbound_qos2(id, limit);
                let want = if m.inbound.contains(&id) {
                    InboundQos2::Duplicate
                } else if m.inbound.len() >= limit {
                    InboundQos2::OverLimit
                } else {
                    m.inbound.insert(id);
                    InboundQos2::New
                };
                assert_eq!(got, want, "inbound QoS 2 id {id}");
                assert!(s.inbound_qos2_pending(id) == m.inbound.contains(&id));
            }
            Op::InboundEnd(id) => {
                let id = u16::from(*id % 16);
                assert_eq!(s.end_inbound_qos2(id), m.inbound.remove(&id));
                assert!(!s.inbound_qos2_pending(id));
            }
        }
        // Acks and attaches move queued QoS 0 copies to the outbox: learn
        // of them before counting. (A delivery never does.)
        if !matches!(op, Op::Deliver { .. }) {
            m.drain(&mut s);
        }
        m.check(&s);
    }
    m.drain(&mut s);
    m.check(&s);
});
