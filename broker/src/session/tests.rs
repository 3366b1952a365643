use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::message::{Message, MessageParts};

fn limits(max_inflight: u16, max_queued: usize) -> SessionLimits {
    SessionLimits {
        max_inflight,
        max_queued_messages: max_queued,
        max_queued_bytes: 0,
        overflow: QueueOverflow::DropNew,
        queue_qos0: false,
    }
}

fn delivery(n: u8, qos: QoS) -> Delivery {
    Delivery {
        message: Arc::new(Message::new(MessageParts {
            topic: ByteStr::from("t"),
            payload: bytes::Bytes::from(vec![n]),
            qos,
            retain: false,
            origin: ByteStr::default(),
            expires_at: None,
            properties: None,
            received_at: std::time::Instant::now(),
        })),
        qos,
        retain: false,
        subscription_ids: SmallVec::new(),
        share: None,
        seq: 0,
        redelivery: false,
    }
}

/// The packet id copy `seq` goes out with.
fn id(seq: u64) -> u16 {
    Session::derived_packet_id(seq)
}

fn sent(out: &[Outgoing]) -> Vec<(u16, bool, u8)> {
    out.iter()
        .filter_map(|o| match o {
            Outgoing::Publish {
                packet_id,
                dup,
                delivery,
            } => Some((*packet_id, *dup, delivery.message.payload[0])),
            Outgoing::PubRel { .. } => None,
        })
        .collect()
}

#[test]
fn window_limits_inflight_and_acks_refill_it() {
    let now = Instant::now();
    let mut s = Session::new("c".into(), 0, limits(2, 10));
    s.attach(1, 65535, now);
    for n in 0..5 {
        s.deliver(delivery(n, QoS::AtLeastOnce));
    }
    assert_eq!(
        sent(&s.take_outbox()),
        vec![(id(1), false, 0), (id(2), false, 1)]
    );
    assert_eq!(s.queued_len(), 3);
    let (acked, _) = s.on_puback(id(1), now);
    assert_eq!(acked, Some(1));
    assert_eq!(sent(&s.take_outbox()), vec![(id(3), false, 2)]);
    // Unknown or repeated ids change nothing.
    assert_eq!(s.on_puback(id(1), now).0, None);
    assert!(s.take_outbox().is_empty());
}

/// Acks read together do what they do one by one: the same copies
/// acknowledged (unknown and repeated ids skipped), the window refilled
/// with the same copies in the same order, once.
#[test]
fn a_batch_of_acks_is_the_acks_one_by_one() {
    let now = Instant::now();
    let run = |batch: bool| {
        let mut s = Session::new("c".into(), 0, limits(4, 20));
        s.attach(1, 65535, now);
        for n in 0..12 {
            s.deliver(delivery(n, QoS::AtLeastOnce));
        }
        let first = sent(&s.take_outbox());
        let acks = [id(2), id(1), id(99), id(2), id(4)];
        let mut done = Vec::new();
        if batch {
            s.on_pubacks(&acks, now, |seq| done.push(seq));
        } else {
            for a in acks {
                let (acked, expired) = s.on_puback(a, now);
                done.extend(acked.into_iter().chain(expired));
            }
        }
        (
            first,
            done,
            sent(&s.take_outbox()),
            s.inflight_len(),
            s.queued_len(),
        )
    };
    let batch = run(true);
    assert_eq!(batch, run(false));
    assert_eq!(batch.1, vec![2, 1, 4]);
    assert_eq!(
        batch.2,
        vec![(id(5), false, 4), (id(6), false, 5), (id(7), false, 6)]
    );
}

/// A copy is written two or three times on its way (queue, window,
/// outbox), a thousand times over for a fan-out to a thousand sessions:
/// it stays within a cache line.
#[test]
fn a_copy_fits_a_cache_line() {
    let size = std::mem::size_of::<Delivery>();
    assert!(size <= 64, "Delivery is {size} bytes");
}

#[test]
fn receive_maximum_of_the_client_narrows_the_window() {
    let now = Instant::now();
    let mut s = Session::new("c".into(), 0, limits(20, 10));
    s.attach(1, 1, now);
    s.deliver(delivery(0, QoS::AtLeastOnce));
    s.deliver(delivery(1, QoS::AtLeastOnce));
    assert_eq!(s.take_outbox().len(), 1);
}

#[test]
fn reconnect_resends_unacked_with_dup() {
    let now = Instant::now();
    let mut s = Session::new("c".into(), 60, limits(10, 10));
    s.attach(1, 65535, now);
    s.deliver(delivery(7, QoS::AtLeastOnce));
    s.deliver(delivery(8, QoS::ExactlyOnce));
    s.take_outbox();
    assert!(matches!(
        s.on_pubrec(id(2), false, now),
        PubRecOutcome::Released { seq: 2 }
    ));
    s.take_outbox();
    assert!(s.detach(1).is_empty());
    s.attach(2, 65535, now);
    let out = s.take_outbox();
    assert_eq!(sent(&out), vec![(id(1), true, 7)]);
    assert!(matches!(out[1], Outgoing::PubRel { packet_id } if packet_id == id(2)));
    assert_eq!(s.on_pubcomp(id(2), now).0, Some(2));
}

#[test]
fn offline_queue_is_bounded_drop_new() {
    let mut s = Session::new("c".into(), 60, limits(10, 3));
    for n in 0..5 {
        s.deliver(delivery(n, QoS::AtLeastOnce));
    }
    assert_eq!(s.dropped, 2);
    s.attach(1, 65535, Instant::now());
    assert_eq!(
        sent(&s.take_outbox())
            .iter()
            .map(|x| x.2)
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

#[test]
fn offline_queue_drop_oldest_keeps_the_newest() {
    let mut l = limits(10, 3);
    l.overflow = QueueOverflow::DropOldest;
    let mut s = Session::new("c".into(), 60, l);
    for n in 0..5 {
        s.deliver(delivery(n, QoS::AtLeastOnce));
    }
    assert_eq!(s.dropped, 2);
    s.attach(1, 65535, Instant::now());
    assert_eq!(
        sent(&s.take_outbox())
            .iter()
            .map(|x| x.2)
            .collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
}

#[test]
fn byte_limit_counts_payloads() {
    let mut l = limits(10, 100);
    l.max_queued_bytes = 2;
    let mut s = Session::new("c".into(), 60, l);
    for n in 0..4 {
        s.deliver(delivery(n, QoS::AtLeastOnce));
    }
    assert_eq!(s.queued_len(), 2);
    assert_eq!(s.dropped, 2);
}

#[test]
fn qos0_offline_is_discarded_unless_configured() {
    let mut s = Session::new("c".into(), 60, limits(10, 10));
    assert_eq!(
        s.deliver(delivery(0, QoS::AtMostOnce)).0,
        Disposition::Discarded
    );
    let mut l = limits(10, 10);
    l.queue_qos0 = true;
    let mut s = Session::new("c".into(), 60, l);
    assert_eq!(
        s.deliver(delivery(0, QoS::AtMostOnce)).0,
        Disposition::Queued
    );
}

#[test]
fn expired_messages_are_not_delivered() {
    let now = Instant::now();
    let mut s = Session::new("c".into(), 60, limits(10, 10));
    let mut d = delivery(1, QoS::AtLeastOnce);
    let mut m = (*d.message).clone();
    m.expires_at = Some(now + Duration::from_secs(1));
    d.message = Arc::new(m);
    s.deliver(d);
    s.deliver(delivery(2, QoS::AtLeastOnce));
    s.attach(1, 65535, now + Duration::from_secs(2));
    assert_eq!(
        sent(&s.take_outbox())
            .iter()
            .map(|x| x.2)
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(s.expired, 1);
}

#[test]
fn shared_copies_are_handed_over_on_detach() {
    let now = Instant::now();
    let mut s = Session::new("c".into(), 60, limits(1, 10));
    s.attach(1, 65535, now);
    for n in 0..3 {
        let mut d = delivery(n, QoS::AtLeastOnce);
        d.share = Some(Box::new(ShareRef {
            group: "g".into(),
            filter: "t".into(),
        }));
        s.deliver(d);
    }
    s.deliver(delivery(9, QoS::AtLeastOnce));
    let handed = s.detach(1);
    assert_eq!(
        handed
            .iter()
            .map(|d| d.message.payload[0])
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(s.queued_len(), 1);
    assert_eq!(s.inflight_len(), 0);
    // A stale detach from an old connection is ignored.
    s.attach(2, 65535, now);
    assert!(s.detach(1).is_empty());
    assert!(s.is_connected());
}

#[test]
fn inbound_qos2_ids_are_bounded_and_deduplicated() {
    let mut s = Session::new("c".into(), 0, limits(10, 10));
    assert_eq!(s.begin_inbound_qos2(1, 2), InboundQos2::New);
    assert_eq!(s.begin_inbound_qos2(1, 2), InboundQos2::Duplicate);
    assert_eq!(s.begin_inbound_qos2(2, 2), InboundQos2::New);
    assert_eq!(s.begin_inbound_qos2(3, 2), InboundQos2::OverLimit);
    assert!(s.end_inbound_qos2(1));
    assert!(!s.end_inbound_qos2(1));
    assert_eq!(s.begin_inbound_qos2(3, 2), InboundQos2::New);
}

/// Packet ids come from sequence numbers, the same on every node that
/// serves the session: never 0, and a copy whose id is still in flight
/// waits for it (even with room in the window), then goes out with it.
#[test]
fn a_copy_waits_while_its_packet_id_is_in_flight() {
    assert!((0..100_000).all(|seq| id(seq) != 0));
    let clash = (2u64..).find(|seq| id(*seq) == id(1)).unwrap_or(u64::MAX);
    assert_eq!(id(clash), id(1));
    let now = Instant::now();
    let mut s = Session::new("c".into(), 0, limits(10, 10));
    s.attach(1, 65535, now);
    for (n, seq) in [(0, 1), (1, clash), (2, 2)] {
        let mut d = delivery(n, QoS::AtLeastOnce);
        d.seq = seq;
        s.deliver(d);
    }
    assert_eq!(sent(&s.take_outbox()), vec![(id(1), false, 0)]);
    assert_eq!(s.queued_len(), 2, "the clash waits, and what is behind it");
    assert_eq!(s.on_puback(id(1), now).0, Some(1));
    assert_eq!(
        sent(&s.take_outbox()),
        vec![(id(clash), false, 1), (id(2), false, 2)]
    );
}

#[test]
fn qos0_outbox_at_half_the_limit_pushes_back_until_drained() {
    let now = Instant::now();
    let mut s = Session::new("c".into(), 0, limits(10, 10));
    s.attach(1, 65535, now);
    for n in 0..4 {
        s.deliver(delivery(n, QoS::AtMostOnce));
    }
    assert!(!s.congested(), "below half the limit");
    s.deliver(delivery(4, QoS::AtMostOnce));
    assert!(s.congested(), "five of ten waiting");
    assert!(s.register_waiting_publisher());
    assert!(!s.publishers_to_wake(), "still congested: nobody to wake");
    let mut out = Vec::new();
    s.swap_outbox(&mut out);
    assert_eq!(out.len(), 5);
    assert!(!s.congested());
    assert!(
        s.publishers_to_wake(),
        "drained: the waiting publisher is woken"
    );
    assert!(!s.publishers_to_wake(), "once");
}

#[test]
fn queued_qos1_pushes_back_and_acks_release_it() {
    let now = Instant::now();
    let mut s = Session::new("c".into(), 0, limits(1, 4));
    s.attach(1, 65535, now);
    for n in 0..3 {
        s.deliver(delivery(n, QoS::AtLeastOnce));
    }
    // One in flight, two queued: half of four.
    assert!(s.congested());
    assert!(s.register_waiting_publisher());
    s.take_outbox();
    assert!(s.congested(), "writing does not empty the queue");
    s.on_puback(id(1), now);
    assert!(!s.congested(), "the ack moved one into the window");
    assert!(s.publishers_to_wake());
}

#[test]
fn a_stalled_client_is_not_waited_for_until_it_reads() {
    let now = Instant::now();
    let mut s = Session::new("c".into(), 0, limits(10, 4));
    s.attach(1, 65535, now);
    for n in 0..3 {
        s.deliver(delivery(n, QoS::AtMostOnce));
    }
    assert!(s.register_waiting_publisher());
    s.mark_stalled();
    assert!(!s.congested(), "stalled: publishers go on");
    assert!(s.publishers_to_wake(), "and those waiting are let go");
    // The limit still holds, drops counted.
    assert_eq!(s.deliver(delivery(3, QoS::AtMostOnce)).0, Disposition::Sent);
    assert_eq!(
        s.deliver(delivery(4, QoS::AtMostOnce)).0,
        Disposition::Dropped
    );
    assert_eq!(s.dropped, 1);
    // Reading again ends the stall.
    s.take_outbox();
    for n in 0..2 {
        s.deliver(delivery(n, QoS::AtMostOnce));
    }
    assert!(s.congested());
}

#[test]
fn offline_sessions_never_push_back() {
    let now = Instant::now();
    let mut s = Session::new("c".into(), 60, limits(1, 2));
    s.attach(1, 65535, now);
    s.detach(1);
    for n in 0..5 {
        s.deliver(delivery(n, QoS::AtLeastOnce));
    }
    assert!(!s.congested());
    assert!(!s.register_waiting_publisher());
}

/// Every idle client's session is this size (issue 21: 1.5 KiB a
/// connection in all): what waits, streams or is in flight is boxed,
/// made when it first is (it was 376 bytes with those inline).
#[test]
fn an_idle_session_stays_small() {
    let size = std::mem::size_of::<Session>();
    assert!(size <= 256, "Session is {size} bytes");
    let mut s = Session::new(ByteStr::from("c"), 0, limits(20, 1000));
    s.attach(1, 20, Instant::now());
    assert!(!s.congested() && s.cursor_room() == 0 && !s.end_inbound_qos2(1));
    assert!(s.detach(1).is_empty());
    assert!(s.pending.is_none(), "nothing waited, yet the box was made");
}

/// A persistent session that streamed its retained messages, or had its
/// copies acknowledged, gives the box back once offline and owed nothing.
#[test]
fn a_session_done_with_its_copies_gives_the_box_back() {
    let mut s = Session::new(ByteStr::from("c"), 600, limits(20, 1000));
    s.attach(1, 20, Instant::now());
    s.deliver(delivery(1, QoS::AtLeastOnce));
    assert!(s.pending.is_some());
    let sent = s.take_outbox();
    let Some(Outgoing::Publish { packet_id, .. }) = sent.first() else {
        panic!("nothing sent: {sent:?}");
    };
    let (acked, _) = s.on_puback(*packet_id, Instant::now());
    assert!(acked.is_some());
    assert!(s.detach(1).is_empty());
    assert!(s.pending.is_none(), "an idle offline session kept its box");
}
