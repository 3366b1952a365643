//! Limits and bad input: each bad connection is closed alone, with the
//! reason code the spec names, counted, and nobody else notices.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use raftmq::codec::{Packet, Protocol, QoS};
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(5);

fn open(b: &Broker, id: &str, protocol: Protocol) -> RawClient {
    let (c, ack) = RawClient::open(b.tcp_addr(), raw::connect(protocol, id, true));
    assert_eq!(ack.code, 0, "{id} connects");
    c
}

fn protocol_errors(b: &Broker) -> f64 {
    let (_, text) = b.http_get("/metrics");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("raftmq_protocol_errors_total ")?
                .trim()
                .parse()
                .ok()
        })
        .expect("raftmq_protocol_errors_total")
}

/// Every malformed or forbidden input closes only its own connection, with
/// the right code (5.0) or a plain close (3.1.1), and is counted.
#[test]
fn bad_input_closes_only_that_connection() {
    let b = Broker::start(BrokerConfig::new().env("RUST_LOG", "raftmq=debug,info"));
    let mut bystander = open(&b, "bystander", Protocol::V5);
    bystander.subscribe(1, "ok/#", QoS::AtLeastOnce);
    let mut talker = open(&b, "talker", Protocol::V311);

    // (protocol, bytes after CONNECT, expected 5.0 DISCONNECT code)
    let cases: Vec<(Protocol, Vec<u8>, Option<u8>)> = vec![
        // Wildcard in a PUBLISH topic.
        (
            Protocol::V5,
            vec![0x30, 0x04, 0x00, 0x02, b'a', b'#', 0x00],
            Some(0x90),
        ),
        (Protocol::V311, vec![0x30, 0x03, 0x00, 0x01, b'+'], None),
        // Invalid UTF-8 in a topic.
        (
            Protocol::V5,
            vec![0x30, 0x04, 0x00, 0x01, 0xC3, 0x00],
            Some(0x81),
        ),
        // Reserved flags (PUBREL with flags 0).
        (Protocol::V5, vec![0x60, 0x02, 0x00, 0x01], Some(0x81)),
        // QoS 3.
        (
            Protocol::V5,
            vec![0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00],
            Some(0x81),
        ),
        (
            Protocol::V311,
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            None,
        ),
        // Reserved packet type 0.
        (Protocol::V5, vec![0x00, 0x00], Some(0x81)),
        // Remaining length over 4 bytes.
        (
            Protocol::V5,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            Some(0x81),
        ),
        // A second CONNECT.
        (
            Protocol::V5,
            {
                let mut v = bytes::BytesMut::new();
                raftmq::codec::encode(
                    &Packet::Connect(Box::new(raw::connect(Protocol::V5, "again", true))),
                    Protocol::V5,
                    &mut v,
                )
                .unwrap();
                v.to_vec()
            },
            Some(0x82),
        ),
        // Subscription with no filters.
        (Protocol::V5, vec![0x82, 0x03, 0x00, 0x01, 0x00], Some(0x82)),
    ];
    let before = protocol_errors(&b);
    for (i, (protocol, bytes, want)) in cases.iter().enumerate() {
        let (mut c, _) = RawClient::open(
            b.tcp_addr(),
            raw::connect(*protocol, &format!("bad{i}"), true),
        );
        c.send_bytes(bytes);
        let mut code = None;
        loop {
            match c.recv(T) {
                Read1::Closed => break,
                Read1::Packet(Packet::Disconnect(d)) => code = Some(d.code),
                Read1::Packet(p) => panic!("case {i}: unexpected {p:?}"),
                Read1::Timeout => panic!("case {i}: connection not closed"),
            }
        }
        assert_eq!(code, *want, "case {i}: {bytes:02x?}");
        // The bystander is untouched and still served.
        assert_eq!(
            talker.publish_qos1("ok/x", &[i as u8], false, 1 + i as u16),
            0
        );
        let m = bystander
            .next_publish(T)
            .expect("bystander still gets messages");
        assert_eq!(&m.payload[..], &[i as u8]);
        bystander.ack(&m);
    }
    let after = protocol_errors(&b);
    assert!(
        after - before >= cases.len() as f64 - 1.0,
        "counted: {before} -> {after}"
    );
    assert!(
        b.logs().contains("bad packet") || b.logs().contains("protocol"),
        "debug line logged"
    );
}

/// A QoS 1 publish reusing the id of an unreleased QoS 2 publish is not
/// routed: 5.0 answers PUBACK 0x91 and keeps the connection, 3.1.1 (which
/// has no code for it) closes the connection.
#[test]
fn packet_id_in_use_is_refused() {
    let b = Broker::start(BrokerConfig::new());
    let mut watcher = open(&b, "watcher", Protocol::V5);
    watcher.subscribe(1, "a", QoS::AtLeastOnce);
    let qos2_id5 = [0x34, 0x06, 0x00, 0x01, b'a', 0x00, 0x05, 0x00];
    let qos1_id5 = [0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x05, 0x00];

    let mut c = open(&b, "reuse5", Protocol::V5);
    c.send_bytes(&qos2_id5);
    match c.recv(T) {
        Read1::Packet(Packet::PubRec(r)) => assert_eq!((r.packet_id, r.code), (5, 0)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    c.send_bytes(&qos1_id5);
    match c.recv(T) {
        Read1::Packet(Packet::PubAck(r)) => assert_eq!((r.packet_id, r.code), (5, 0x91)),
        other => panic!("expected PUBACK 0x91, got {other:?}"),
    }
    // Only the QoS 2 copy reached the subscriber.
    let m = watcher.next_publish(T).expect("the QoS 2 message");
    watcher.ack(&m);
    watcher.expect_no_publish(Duration::from_millis(500));
    // PUBREL frees the id; the same QoS 1 is then accepted and routed.
    c.send_bytes(&[0x62, 0x02, 0x00, 0x05]);
    match c.recv(T) {
        Read1::Packet(Packet::PubComp(r)) => assert_eq!(r.packet_id, 5),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    c.send_bytes(&qos1_id5);
    match c.recv(T) {
        Read1::Packet(Packet::PubAck(r)) => assert_eq!((r.packet_id, r.code), (5, 0)),
        other => panic!("expected PUBACK 0, got {other:?}"),
    }
    assert!(watcher.next_publish(T).is_some());

    let mut c = open(&b, "reuse3", Protocol::V311);
    c.send_bytes(&[0x34, 0x05, 0x00, 0x01, b'a', 0x00, 0x05]);
    assert!(matches!(c.recv(T), Read1::Packet(Packet::PubRec(_))));
    c.send_bytes(&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x05]);
    assert_eq!(c.expect_close(T), None);
}

#[test]
fn oversize_packets_are_refused_from_the_header() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nmax_packet_size = 4096"));
    let mut c = open(&b, "big", Protocol::V5);
    // Announces a 100 MB PUBLISH and sends only its header: refused at once
    // with 0x95, before the body is waited for.
    let start = Instant::now();
    c.send_bytes(&[0x30, 0x80, 0x80, 0x80, 0x30]);
    assert_eq!(c.expect_close(T), Some(0x95));
    assert!(start.elapsed() < Duration::from_secs(2));
    // 3.1.1: a plain close.
    let mut c = open(&b, "big3", Protocol::V311);
    c.send_bytes(&[0x30, 0x80, 0x80, 0x80, 0x30]);
    assert_eq!(c.expect_close(T), None);
    // An oversize CONNECT is refused too.
    let mut raw = TcpStream::connect(b.tcp_addr()).unwrap();
    use std::io::Write;
    raw.write_all(&[0x10, 0xFF, 0xFF, 0x7F]).unwrap();
    raw.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).unwrap_or(0);
    // Either a plain close or a CONNACK refusal, never a wait for 2 MB.
    assert!(n == 0 || buf[0] == 0x20, "got {:02x?}", &buf[..n]);
}

#[test]
fn connect_timeout_closes_silent_sockets() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nconnect_timeout = 1"));
    let mut s = TcpStream::connect(b.tcp_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 8];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn max_connections_refuses_the_next_one_before_connect() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nmax_connections = 2"));
    let _a = open(&b, "a", Protocol::V311);
    let _c = open(&b, "c", Protocol::V311);
    let mut s = TcpStream::connect(b.tcp_addr()).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "third socket closed at accept"
    );
    drop(_a);
    std::thread::sleep(Duration::from_millis(300));
    let _d = open(&b, "d", Protocol::V311);
}

#[test]
fn topic_levels_length_and_subscription_count_limits() {
    let b = Broker::start(BrokerConfig::new().raw(
        "[mqtt]\nmax_topic_levels = 3\nmax_topic_length = 20\nmax_subscriptions_per_client = 2",
    ));
    let mut c = open(&b, "c", Protocol::V5);
    assert_eq!(c.subscribe(1, "a/b/c/d", QoS::AtMostOnce), vec![0x8F]);
    assert_eq!(
        c.subscribe(2, "a/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", QoS::AtMostOnce),
        vec![0x8F]
    );
    assert_eq!(c.subscribe(3, "one", QoS::AtMostOnce), vec![0]);
    assert_eq!(c.subscribe(4, "two", QoS::AtMostOnce), vec![0]);
    assert_eq!(c.subscribe(5, "three", QoS::AtMostOnce), vec![0x97]);
    // Re-subscribing an existing filter is not a new subscription.
    assert_eq!(c.subscribe(6, "two", QoS::AtLeastOnce), vec![1]);
    // A PUBLISH over the level limit closes with 0x90.
    c.publish("a/b/c/d", b"", QoS::AtMostOnce, false, 0);
    assert_eq!(c.expect_close(T), Some(0x90));
}

#[test]
fn first_packet_must_be_connect() {
    let b = Broker::start(BrokerConfig::new());
    let mut s = TcpStream::connect(b.tcp_addr()).unwrap();
    use std::io::Write;
    s.write_all(&[0xC0, 0x00]).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    // Unsupported protocol level: CONNACK 1 in 3.1.1 terms.
    let mut s = TcpStream::connect(b.tcp_addr()).unwrap();
    s.write_all(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x07, 0x02, 0x00, 0x3C, 0x00, 0x01, b'x',
    ])
    .unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(&buf[..n.min(4)], &[0x20, 0x02, 0x00, 0x01]);
}
