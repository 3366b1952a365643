//! Clean and persistent sessions, offline queues and their limits,
//! redelivery with DUP, client-id takeover and zero-length client ids.

use std::time::Duration;

use raftmq::codec::{Packet, Protocol, QoS};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(5);

fn connect5(id: &str, clean: bool, expiry: Option<u32>) -> raftmq::codec::Connect {
    let mut c = raw::connect(Protocol::V5, id, clean);
    c.properties.session_expiry_interval = expiry;
    c
}

fn publisher(b: &Broker) -> RawClient {
    RawClient::open(
        b.tcp_addr(),
        raw::connect(Protocol::V311, "publisher", true),
    )
    .0
}

#[test]
fn v311_persistent_session_keeps_subscriptions_and_queues_qos1() {
    let b = Broker::start(BrokerConfig::new());
    let (mut s, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "p311", false));
    assert!(!ack.session_present);
    s.subscribe(1, "q/#", QoS::AtLeastOnce);
    s.disconnect();

    let mut p = publisher(&b);
    for i in 0..3u8 {
        p.publish_qos1("q/a", &[i], false, 1 + i as u16);
    }
    p.publish("q/a", b"qos0", QoS::AtMostOnce, false, 0);
    // A QoS 1 round trip on another topic: the QoS 0 one was handled before.
    p.publish_qos1("sync", b"", false, 100);

    let (mut s, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "p311", false));
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Some(m) = s.next_publish(Duration::from_millis(700)) {
        s.ack(&m);
        got.push(m.payload[0]);
    }
    assert_eq!(
        got,
        vec![0, 1, 2],
        "QoS 1 queued in order; QoS 0 not queued by default"
    );

    // Clean session discards it.
    s.disconnect();
    let (s, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "p311", true));
    assert!(!ack.session_present);
    s.disconnect();
    p.publish_qos1("q/a", b"after", false, 9);
    let (mut s, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "p311", false));
    assert!(!ack.session_present);
    s.expect_no_publish(Duration::from_millis(500));
}

#[test]
fn unacked_messages_are_redelivered_with_dup_on_reconnect() {
    let b = Broker::start(BrokerConfig::new());
    let (mut s, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "dup", false));
    s.subscribe(1, "d", QoS::ExactlyOnce);
    let mut p = publisher(&b);
    p.publish_qos1("d", b"one", false, 1);
    p.publish("d", b"two", QoS::ExactlyOnce, false, 2);
    let first = s.next_publish(T).expect("first");
    let second = s.next_publish(T).expect("second");
    assert!(!first.dup && !second.dup);
    // Drop the socket without acking (no DISCONNECT).
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    let (mut s, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "dup", false));
    assert!(ack.session_present);
    let again1 = s.next_publish(T).expect("redelivered");
    let again2 = s.next_publish(T).expect("redelivered");
    assert!(again1.dup && again2.dup, "redeliveries carry DUP");
    assert_eq!(
        (again1.packet_id, &again1.payload[..]),
        (first.packet_id, &b"one"[..])
    );
    assert_eq!(
        (again2.packet_id, &again2.payload[..]),
        (second.packet_id, &b"two"[..])
    );
    s.ack(&again1);
    s.ack(&again2);
    s.expect_no_publish(Duration::from_millis(500));
}

#[test]
fn v5_session_expiry_interval_zero_ends_the_session_at_disconnect() {
    let b = Broker::start(BrokerConfig::new());
    let (mut s, _) = RawClient::open(b.tcp_addr(), connect5("e0", true, None));
    s.subscribe(1, "e", QoS::AtLeastOnce);
    s.disconnect();
    let (_s, ack) = RawClient::open(b.tcp_addr(), connect5("e0", false, Some(60)));
    assert!(!ack.session_present);
}

#[test]
fn v5_session_expires_after_its_interval() {
    let b = Broker::start(BrokerConfig::new());
    let (mut s, _) = RawClient::open(b.tcp_addr(), connect5("e2", true, Some(2)));
    s.subscribe(1, "e", QoS::AtLeastOnce);
    s.disconnect();
    // Within the interval: resumed.
    let (s, ack) = RawClient::open(b.tcp_addr(), connect5("e2", false, Some(1)));
    assert!(ack.session_present);
    s.disconnect();
    // Past it: gone.
    std::thread::sleep(Duration::from_millis(2500));
    let (_s, ack) = RawClient::open(b.tcp_addr(), connect5("e2", false, Some(1)));
    assert!(!ack.session_present);
}

#[test]
fn offline_queue_drop_new_keeps_the_oldest_and_counts_drops() {
    let b = Broker::start(BrokerConfig::new().raw(
        "[mqtt]\nmax_queued_messages = 3\nmax_inflight_messages = 1\nqueue_overflow = \"drop-new\"",
    ));
    let (mut s, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "qn", false));
    s.subscribe(1, "o", QoS::AtLeastOnce);
    s.disconnect();
    let mut p = publisher(&b);
    for i in 0..10u8 {
        p.publish_qos1("o", &[i], false, 1 + i as u16);
    }
    let (mut s, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "qn", false));
    let mut got = Vec::new();
    while let Some(m) = s.next_publish(Duration::from_millis(700)) {
        s.ack(&m);
        got.push(m.payload[0]);
    }
    // Offline, nothing is in flight: the queue (3) holds the first three.
    assert_eq!(got, vec![0, 1, 2]);
    let (_, metrics) = b.http_get("/metrics");
    let dropped = metric(&metrics, "raftmq_publish_dropped_total");
    assert_eq!(dropped, 7.0, "seven drops counted");
}

#[test]
fn offline_queue_drop_oldest_keeps_the_newest() {
    let b = Broker::start(BrokerConfig::new().raw(
        "[mqtt]\nmax_queued_messages = 3\nmax_inflight_messages = 1\nqueue_overflow = \"drop-oldest\"",
    ));
    let (mut s, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "qo", false));
    s.subscribe(1, "o", QoS::AtLeastOnce);
    s.disconnect();
    let mut p = publisher(&b);
    for i in 0..10u8 {
        p.publish_qos1("o", &[i], false, 1 + i as u16);
    }
    let (mut s, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "qo", false));
    let mut got = Vec::new();
    while let Some(m) = s.next_publish(Duration::from_millis(700)) {
        s.ack(&m);
        got.push(m.payload[0]);
    }
    assert_eq!(got, vec![7, 8, 9], "the newest three survive");
}

#[test]
fn offline_queue_byte_limit() {
    let b = Broker::start(BrokerConfig::new().raw(
        "[mqtt]\nmax_queued_messages = 1000\nmax_queued_bytes = 1000\nmax_inflight_messages = 1",
    ));
    let (mut s, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "qb", false));
    s.subscribe(1, "o", QoS::AtLeastOnce);
    s.disconnect();
    let mut p = publisher(&b);
    for i in 0..10u16 {
        p.publish_qos1("o", &[i as u8; 400], false, 1 + i);
    }
    let (mut s, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "qb", false));
    let mut n = 0;
    while let Some(m) = s.next_publish(Duration::from_millis(700)) {
        s.ack(&m);
        n += 1;
    }
    // 1000 bytes hold two 400-byte payloads.
    assert_eq!(n, 2);
}

#[test]
fn takeover_closes_the_old_connection_with_0x8e() {
    let b = Broker::start(BrokerConfig::new());
    let (mut old, _) = RawClient::open(b.tcp_addr(), connect5("same", false, Some(60)));
    old.subscribe(1, "t", QoS::AtLeastOnce);
    let (mut new, ack) = RawClient::open(b.tcp_addr(), connect5("same", false, Some(60)));
    assert!(
        ack.session_present,
        "the session moved to the new connection"
    );
    assert_eq!(old.expect_close(T), Some(0x8E));
    // The subscription came with it.
    let mut p = publisher(&b);
    p.publish_qos1("t", b"x", false, 1);
    assert_eq!(&new.next_publish(T).expect("delivered").payload[..], b"x");

    // 3.1.1: the old socket is just closed.
    let (mut old, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "same3", true));
    let (_new, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "same3", true));
    assert_eq!(old.expect_close(T), None);
}

#[test]
fn zero_length_client_ids() {
    let b = Broker::start(BrokerConfig::new());
    // 5.0: an id is assigned and returned.
    let (_c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "", true));
    assert_eq!(ack.code, 0);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!assigned.is_empty());
    // 3.1.1 with clean session: accepted.
    let (_c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "", true));
    assert_eq!(ack.code, 0);
    // 3.1.1 with clean session false: identifier rejected (2).
    let (mut c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "", false));
    assert_eq!(ack.code, 2);
    assert_eq!(c.expect_close(T), None);
}

#[test]
fn zero_length_client_ids_can_be_refused() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nallow_zero_length_clientid = false"));
    let (_c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "", true));
    assert_eq!(ack.code, 0x85);
}

#[test]
fn a_second_connect_closes_the_connection() {
    let b = Broker::start(BrokerConfig::new());
    let (mut c, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "twice", true));
    c.send(&Packet::Connect(Box::new(raw::connect(
        Protocol::V5,
        "twice",
        true,
    ))));
    assert_eq!(c.expect_close(T), Some(0x82));
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("metric {name} missing"))
}
