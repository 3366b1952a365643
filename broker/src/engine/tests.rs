//! The engine without sockets: sessions, publish, retained store and state
//! seam driven through the same calls the connection makes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Allowed, Broker, Departure, OpenedSession, Publisher, SessionRequest};
use crate::auth::{Auth, Policy};
use crate::codec::{ByteStr, QoS, SubOptions};
use crate::config::Config;
use crate::message::{Message, MessageParts};
use crate::session::{Outgoing, RetainedCursor};
use crate::state::{Command, MemoryState, StateSeam};
use crate::topic_tree::parse_filter;

/// What the HTTP API's publishes pass: no ACL.
fn admin(b: &Broker) -> Allowed {
    b.authorize(Publisher::Admin, "").unwrap()
}

fn broker() -> (Arc<Broker>, Arc<MemoryState>) {
    let seam = Arc::new(MemoryState::new(1));
    let b = Broker::new(
        Arc::new(Config::default()),
        1,
        seam.clone(),
        Auth::new(Policy {
            allow_anonymous: true,
            ..Default::default()
        }),
    );
    (b, seam)
}

/// What a CONNECT does: claim the id through the seam, then bind.
fn open(b: &Broker, id: &str, clean: bool, expiry: u32) -> OpenedSession {
    drop(b.cluster.seam.submit(vec![Command::ClaimClient {
        client_id: ByteStr::from(id),
        node: b.node_id,
        nonce: 1,
        clean_start: clean,
        will: None,
        username: None,
        same_identity_only: false,
    }]));
    b.open_session(
        SessionRequest {
            client_id: ByteStr::from(id),
            username: None,
            nonce: 1,
            clean_start: clean,
            expiry,
            receive_maximum: u16::MAX,
        },
        Instant::now(),
    )
}

fn sub(b: &Broker, s: &OpenedSession, filter: &str, qos: QoS) {
    sub_opts(
        b,
        s,
        filter,
        SubOptions {
            qos,
            ..Default::default()
        },
        None,
    );
}

fn sub_opts(b: &Broker, s: &OpenedSession, filter: &str, o: SubOptions, id: Option<u32>) {
    let parsed = parse_filter(filter, b.topic_limits).unwrap();
    b.subscribe(&s.cell, &ByteStr::from(filter), &parsed, o, id);
}

fn msg(topic: &str, qos: QoS, origin: &str) -> Arc<Message> {
    Arc::new(Message::new(MessageParts {
        topic: ByteStr::from(topic),
        payload: Bytes::from_static(b"m"),
        qos,
        retain: false,
        origin: ByteStr::from(origin),
        expires_at: None,
        properties: None,
        received_at: std::time::Instant::now(),
    }))
}

/// (qos, subscription ids, retain) of each PUBLISH in the outbox.
fn drained(s: &OpenedSession) -> Vec<(QoS, Vec<u32>, bool)> {
    s.cell
        .session
        .lock()
        .take_outbox()
        .into_iter()
        .filter_map(|o| match o {
            Outgoing::Publish { delivery, .. } => Some((
                delivery.qos,
                delivery.subscription_ids.to_vec(),
                delivery.retain,
            )),
            Outgoing::PubRel { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_at_the_highest_qos() {
    let (b, _) = broker();
    let s = open(&b, "s", true, 0);
    let o = |qos| SubOptions {
        qos,
        ..Default::default()
    };
    sub_opts(&b, &s, "a/+", o(QoS::AtMostOnce), Some(1));
    sub_opts(&b, &s, "a/#", o(QoS::AtLeastOnce), Some(2));
    let routed = b.publish(msg("a/b", QoS::ExactlyOnce, "p"), admin(&b));
    assert_eq!(routed.matched, 1);
    let out = drained(&s);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, QoS::AtLeastOnce);
    let mut ids = out[0].1.clone();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
}

#[tokio::test]
async fn no_local_skips_the_publisher_only() {
    let (b, _) = broker();
    let me = open(&b, "me", true, 0);
    let other = open(&b, "other", true, 0);
    let nl = SubOptions {
        qos: QoS::AtMostOnce,
        no_local: true,
        ..Default::default()
    };
    sub_opts(&b, &me, "t", nl, None);
    sub_opts(&b, &other, "t", nl, None);
    b.publish(msg("t", QoS::AtMostOnce, "me"), admin(&b));
    assert!(drained(&me).is_empty());
    assert_eq!(drained(&other).len(), 1);
}

#[tokio::test]
async fn shared_group_round_robins_live_members() {
    let (b, _) = broker();
    let members: Vec<_> = (0..3)
        .map(|i| open(&b, &format!("m{i}"), true, 0))
        .collect();
    for m in &members {
        sub(&b, m, "$share/g/jobs/#", QoS::AtLeastOnce);
    }
    for _ in 0..9 {
        assert_eq!(
            b.publish(msg("jobs/x", QoS::AtLeastOnce, "p"), admin(&b))
                .matched,
            1
        );
    }
    let counts: Vec<usize> = members.iter().map(|m| drained(m).len()).collect();
    assert_eq!(counts, vec![3, 3, 3]);
}

#[tokio::test]
async fn unacked_shared_copies_move_to_another_member_on_disconnect() {
    let (b, _) = broker();
    let a = open(&b, "a", true, 0);
    let c = open(&b, "c", true, 0);
    sub(&b, &a, "$share/g/t", QoS::AtLeastOnce);
    sub(&b, &c, "$share/g/t", QoS::AtLeastOnce);
    for _ in 0..4 {
        b.publish(msg("t", QoS::AtLeastOnce, "p"), admin(&b));
    }
    assert_eq!(drained(&a).len(), 2);
    assert_eq!(drained(&c).len(), 2);
    b.close_session(&a.cell, a.conn_id, Departure::Unclean, None);
    // c now holds all four: its own two in flight, a's two handed over.
    assert_eq!(drained(&c).len(), 2);
    assert_eq!(c.cell.session.lock().inflight_len(), 4);
}

#[tokio::test]
async fn retained_set_clear_and_seam_agree() {
    let (b, seam) = broker();
    let mut m = (*msg("r/1", QoS::AtLeastOnce, "p")).clone();
    m.retain = true;
    let routed = b.publish_retained(Arc::new(m.clone()), true);
    routed.committed.wait().await.unwrap();
    assert_eq!(b.retained_count(), 1);
    assert_eq!(seam.snapshot().retained.len(), 1);
    let s = open(&b, "s", true, 0);
    assert_eq!(b.retained_matching("r/#", Instant::now()).len(), 1);
    sub_streaming(&b, &s, "r/#", QoS::AtMostOnce);
    assert_eq!(streamed(&b, &s).len(), 1);
    m.payload = Bytes::new();
    let routed = b.publish_retained(Arc::new(m), true);
    routed.committed.wait().await.unwrap();
    assert_eq!(b.retained_count(), 0);
    assert!(seam.snapshot().retained.is_empty());
}

fn retained(topic: &str, payload: &'static [u8], qos: QoS) -> Arc<Message> {
    let mut m = (*msg(topic, qos, "p")).clone();
    m.retain = true;
    m.payload = Bytes::from_static(payload);
    Arc::new(m)
}

/// Subscribes as a connection does: into the tree, then a cursor over the
/// retained messages from the stamp the subscription took.
fn sub_streaming(b: &Broker, s: &OpenedSession, filter: &str, qos: QoS) {
    let parsed = parse_filter(filter, b.topic_limits).unwrap();
    let o = SubOptions {
        qos,
        ..Default::default()
    };
    let (_, _, since) = b.subscribe(&s.cell, &ByteStr::from(filter), &parsed, o, None);
    s.cell.session.lock().start_cursor(RetainedCursor {
        key: ByteStr::from(filter),
        filter: ByteStr::from(filter),
        qos,
        identifier: None,
        since,
        after: None,
    });
}

/// (packet id, topic, payload) of each PUBLISH in the outbox.
fn publishes(s: &OpenedSession) -> Vec<(u16, String, Bytes)> {
    s.cell
        .session
        .lock()
        .take_outbox()
        .into_iter()
        .filter_map(|o| match o {
            Outgoing::Publish {
                packet_id,
                delivery,
                ..
            } => Some((
                packet_id,
                delivery.message.topic.to_string(),
                delivery.message.payload.clone(),
            )),
            Outgoing::PubRel { .. } => None,
        })
        .collect()
}

/// Pumps a QoS 0 stream to its end as a connection does, writing (taking)
/// the outbox between steps; returns what went out.
fn streamed(b: &Broker, s: &OpenedSession) -> Vec<(u16, String, Bytes)> {
    let mut out = Vec::new();
    loop {
        let more = b.pump_retained(&s.cell);
        out.extend(publishes(s));
        if !more {
            return out;
        }
    }
}

#[tokio::test]
async fn a_retained_publish_meets_a_new_subscription_exactly_once() {
    let (b, _) = broker();
    // Stored before the subscription: from the store, not live.
    let s = open(&b, "s", true, 0);
    b.publish_retained(retained("t", b"1", QoS::ExactlyOnce), true);
    sub_streaming(&b, &s, "t", QoS::ExactlyOnce);
    assert!(publishes(&s).is_empty(), "nothing live");
    b.pump_retained(&s.cell);
    let got = publishes(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].2[..], b"1");
    // Subscribed before the publish: live, and the cursor leaves it out.
    let s2 = open(&b, "s2", true, 0);
    sub_streaming(&b, &s2, "t", QoS::ExactlyOnce);
    b.publish_retained(retained("t", b"2", QoS::ExactlyOnce), true);
    let live = publishes(&s2);
    assert_eq!(live.len(), 1);
    assert_eq!(&live[0].2[..], b"2");
    while b.pump_retained(&s2.cell) {}
    assert!(publishes(&s2).is_empty(), "not again from the store");
}

#[tokio::test]
async fn a_retained_stream_goes_as_fast_as_the_window_takes_it() {
    let (b, _) = broker();
    let topics: Vec<String> = (0..100).map(|i| format!("w/{i:03}")).collect();
    for t in &topics {
        b.publish_retained(retained(t, b"x", QoS::AtLeastOnce), true);
    }
    let s = open(&b, "s", true, 0);
    sub_streaming(&b, &s, "w/#", QoS::AtLeastOnce);
    let window = usize::from(b.session_limits.max_inflight);
    let mut got = Vec::new();
    let mut inflight = Vec::new();
    loop {
        let more = b.pump_retained(&s.cell);
        b.pump_retained(&s.cell);
        let out = publishes(&s);
        inflight.extend(out.iter().map(|o| o.0));
        got.extend(out.into_iter().map(|o| o.1));
        let sess = s.cell.session.lock();
        assert!(sess.inflight_len() <= window, "{}", sess.inflight_len());
        assert_eq!(sess.queued_len(), 0, "nothing piles up in the queue");
        drop(sess);
        if !more && inflight.is_empty() {
            break;
        }
        for id in inflight.drain(..) {
            s.cell.session.lock().on_puback(id, Instant::now());
        }
    }
    assert_eq!(got, topics, "all of them, in topic order");
}

#[tokio::test]
async fn persistent_sessions_resume_and_the_seam_tracks_owed_copies() {
    let (b, seam) = broker();
    let s = open(&b, "p", false, 3600);
    sub(&b, &s, "q/#", QoS::AtLeastOnce);
    b.close_session(&s.cell, s.conn_id, Departure::Clean, None);
    for _ in 0..3 {
        b.publish(msg("q/1", QoS::AtLeastOnce, "x"), admin(&b));
    }
    let snap = seam.snapshot();
    let persisted = &snap.sessions[&ByteStr::from("p")];
    assert_eq!(persisted.messages.len(), 3);
    assert_eq!(persisted.subscriptions.len(), 1);

    let again = open(&b, "p", false, 3600);
    assert!(again.session_present);
    let out = again.cell.session.lock().take_outbox();
    assert_eq!(out.len(), 3);
    let Outgoing::Publish { packet_id, .. } = &out[0] else {
        panic!("a PUBLISH first, not {:?}", out[0]);
    };
    let (acked, _) = again
        .cell
        .session
        .lock()
        .on_puback(*packet_id, Instant::now());
    assert!(acked.is_some());

    // A clean start ends the old session: subscriptions and owed copies go.
    let fresh = open(&b, "p", true, 0);
    assert!(!fresh.session_present);
    assert_eq!(
        b.publish(msg("q/1", QoS::AtLeastOnce, "x"), admin(&b))
            .matched,
        0
    );
    assert!(!seam.snapshot().sessions.contains_key("p"));
}

#[tokio::test]
async fn takeover_kicks_the_old_connection_and_keeps_the_session() {
    let (b, _) = broker();
    let first = open(&b, "dup", false, 60);
    sub(&b, &first, "t", QoS::AtLeastOnce);
    let second = open(&b, "dup", false, 60);
    assert!(second.session_present);
    assert_eq!(
        first.cell.signal.kicked(first.conn_id),
        Some(crate::codec::reason::SESSION_TAKEN_OVER)
    );
    // The old connection's close must not tear down the session it lost.
    b.close_session(&first.cell, first.conn_id, Departure::TakenOver, None);
    b.publish(msg("t", QoS::AtLeastOnce, "x"), admin(&b));
    assert_eq!(drained(&second).len(), 1);
}

#[tokio::test]
async fn clean_sessions_vanish_on_disconnect() {
    let (b, _) = broker();
    let s = open(&b, "gone", true, 0);
    sub(&b, &s, "t", QoS::AtMostOnce);
    assert_eq!(b.subscription_count(), 1);
    b.close_session(&s.cell, s.conn_id, Departure::Clean, None);
    assert_eq!(b.subscription_count(), 0);
    assert_eq!(b.session_count(), 0);
}

#[tokio::test]
async fn a_drain_kicks_every_connected_client_once_and_marks_the_node() {
    use super::DrainMode;
    use crate::codec::reason;
    use std::time::Duration;
    let (b, _) = broker();
    let a = open(&b, "a", false, 3600);
    let c = open(&b, "c", true, 0);
    let offline = open(&b, "o", false, 3600);
    b.close_session(&offline.cell, offline.conn_id, Departure::Clean, None);
    b.health
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    assert!(b.readiness().is_ok());
    let out = b
        .drain(
            DrainMode::hand_over("elsewhere:1883"),
            Duration::from_secs(1),
        )
        .await;
    assert_eq!((out.disconnected, out.remaining), (2, 0));
    assert_eq!(
        a.cell.signal.kicked(a.conn_id),
        Some(reason::USE_ANOTHER_SERVER)
    );
    assert_eq!(
        c.cell.signal.kicked(c.conn_id),
        Some(reason::USE_ANOTHER_SERVER)
    );
    assert!(b.readiness().is_err_and(|why| why.contains("draining")));
    // Again: nothing left to kick; a shutdown then overrides the reason,
    // and a later hand-over does not turn it back.
    let again = b
        .drain(DrainMode::hand_over(""), Duration::from_secs(1))
        .await;
    assert_eq!(again.disconnected, 0);
    b.drain(DrainMode::shutdown(), Duration::from_secs(1)).await;
    b.drain(DrainMode::hand_over("x:1"), Duration::from_secs(1))
        .await;
    assert_eq!(b.drain_mode(), Some(DrainMode::shutdown()));
    // A shutdown is never undone.
    assert!(b.undrain().is_err());
    assert_eq!(b.drain_mode(), Some(DrainMode::shutdown()));
}

#[tokio::test]
async fn an_undrain_makes_the_node_ready_again() {
    use super::DrainMode;
    use std::time::Duration;
    let (b, _) = broker();
    b.health
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(b.undrain(), Ok(false), "not draining: nothing to end");
    b.drain(
        DrainMode::hand_over("elsewhere:1883"),
        Duration::from_secs(1),
    )
    .await;
    assert!(b.readiness().is_err());
    assert_eq!(b.undrain(), Ok(true));
    assert!(b.readiness().is_ok());
    assert_eq!(b.drain_mode(), None, "new connections are accepted");
}

#[tokio::test]
async fn a_session_that_leaves_the_node_mid_stream_counts_what_it_did_not_get() {
    let (b, _) = broker();
    for i in 0..30 {
        b.publish_retained(retained(&format!("m/{i:02}"), b"x", QoS::AtLeastOnce), true);
    }
    let s = open(&b, "mover", false, 3600);
    sub_streaming(&b, &s, "m/#", QoS::AtLeastOnce);
    b.pump_retained(&s.cell);
    let window = usize::from(b.session_limits.max_inflight);
    assert_eq!(publishes(&s).len(), window);
    // Offline: the stream pauses, nothing more is taken from the store.
    b.close_session(&s.cell, s.conn_id, Departure::Unclean, None);
    assert!(b.pump_retained(&s.cell), "the cursor is kept");
    let sess = s.cell.session.lock();
    assert_eq!((sess.inflight_len(), sess.queued_len()), (window, 0));
    drop(sess);
    // Another node claims it: the cursor cannot follow.
    b.release(&ByteStr::from("mover"));
    assert_eq!(b.stats.publish_dropped.get(), (30 - window) as u64);
}

/// A seam whose commits never come (a slow log), with or without peers:
/// what SUBACK waits for is whatever `subscribe` hands back as a ticket.
struct UncommittedSeam {
    applied: MemoryState,
    peers: bool,
    submitted: parking_lot::Mutex<Vec<Command>>,
}

impl StateSeam for UncommittedSeam {
    fn submit(&self, commands: Vec<Command>) -> crate::state::Ticket {
        drop(self.applied.submit(commands.clone()));
        self.submitted.lock().extend(commands);
        crate::state::Ticket::Pending(Box::pin(std::future::pending()))
    }

    fn snapshot(&self) -> crate::state::ReplicatedState {
        self.applied.snapshot()
    }

    fn has_peers(&self) -> bool {
        self.peers
    }
}

fn broker_on(peers: bool) -> (Arc<Broker>, Arc<UncommittedSeam>) {
    let seam = Arc::new(UncommittedSeam {
        applied: MemoryState::new(1),
        peers,
        submitted: parking_lot::Mutex::default(),
    });
    let b = Broker::new(
        Arc::new(Config::default()),
        1,
        seam.clone(),
        Auth::new(Policy {
            allow_anonymous: true,
            ..Default::default()
        }),
    );
    (b, seam)
}

/// Subscribes `s` to `filter`: whether SUBACK would wait (a ticket).
fn sub_ticket(b: &Broker, s: &OpenedSession, filter: &str) -> bool {
    let parsed = parse_filter(filter, b.topic_limits).unwrap();
    let (_, ticket, _) = b.subscribe(
        &s.cell,
        &ByteStr::from(filter),
        &parsed,
        SubOptions::default(),
        None,
    );
    ticket.is_some()
}

fn routes_submitted(seam: &UncommittedSeam) -> Vec<(bool, String)> {
    seam.submitted
        .lock()
        .iter()
        .filter_map(|c| match c {
            Command::RouteAdd { filter, .. } => Some((true, filter.to_string())),
            Command::RouteRemove { filter, .. } => Some((false, filter.to_string())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_clean_subscription_on_a_node_without_peers_waits_for_no_commit() {
    let (b, seam) = broker_on(false);
    let s = open(&b, "clean", true, 0);
    assert!(!sub_ticket(&b, &s, "a/#"), "nothing to wait for alone");
    // It serves this node's publishers at once...
    assert_eq!(
        b.publish(msg("a/1", QoS::AtMostOnce, "x"), admin(&b))
            .matched,
        1
    );
    // ...and its route still goes to the log, in order with its withdrawal.
    let parsed = parse_filter("a/#", b.topic_limits).unwrap();
    assert!(b.unsubscribe(&s.cell, &ByteStr::from("a/#"), &parsed));
    assert!(!sub_ticket(&b, &s, "a/#"));
    assert_eq!(
        routes_submitted(&seam),
        vec![
            (true, "a/#".to_string()),
            (false, "a/#".to_string()),
            (true, "a/#".to_string())
        ]
    );
}

#[tokio::test]
async fn persistent_subscriptions_and_peers_still_wait_for_the_commit() {
    let (b, _) = broker_on(false);
    let p = open(&b, "durable", false, 3600);
    assert!(
        sub_ticket(&b, &p, "d/#"),
        "a persistent session's subscription is durable first"
    );

    let (b, _) = broker_on(true);
    let s = open(&b, "clean", true, 0);
    assert!(
        sub_ticket(&b, &s, "c/#"),
        "peers route by the committed route"
    );
}
