//! Protocol edges over raw sockets: packets pipelined behind CONNECT, 5.0
//! CONNECT errors a client can read, topic alias 0.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use raftmq::codec::{self, reason, Packet, Properties, Protocol, QoS, SubOptions, Subscribe};
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{Broker, BrokerConfig};

/// Generous on purpose: what is asserted is that the answers come with no
/// further write from the client, not how fast (that is measured, and
/// printed).
const T: Duration = Duration::from_secs(5);

/// CONNECT (keep alive 0: no PINGREQ will ever nudge the broker), a QoS 1
/// PUBLISH and a SUBSCRIBE, encoded back to back.
fn pipelined(protocol: Protocol, id: &str) -> BytesMut {
    let mut c = raw::connect(protocol, id, true);
    c.keep_alive = 0;
    let mut out = BytesMut::new();
    let packets = [
        Packet::Connect(Box::new(c)),
        Packet::Publish(raw::publish("pipe/a", b"x", QoS::AtLeastOnce, false, 7)),
        Packet::Subscribe(Subscribe {
            packet_id: 8,
            filters: vec![("pipe/#".into(), SubOptions::default())],
            properties: Properties::default(),
        }),
    ];
    for p in &packets {
        codec::encode(p, protocol, &mut out).expect("encode");
    }
    out
}

/// Reads CONNACK, PUBACK 7 and SUBACK 8 (in that order) without writing
/// anything; returns how long the last one took from `sent`.
fn expect_answers(c: &mut RawClient, sent: Instant) -> Duration {
    match c.recv(T) {
        Read1::Packet(Packet::ConnAck(a)) => assert_eq!(a.code, 0),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    match c.recv(T) {
        Read1::Packet(Packet::PubAck(a)) => assert_eq!(a.packet_id, 7),
        other => panic!("expected PUBACK for the pipelined PUBLISH, got {other:?}"),
    }
    match c.recv(T) {
        Read1::Packet(Packet::SubAck(a)) => assert_eq!((a.packet_id, a.codes), (8, vec![0])),
        other => panic!("expected SUBACK for the pipelined SUBSCRIBE, got {other:?}"),
    }
    sent.elapsed()
}

#[test]
fn packets_in_the_same_write_as_connect_are_answered_at_once() {
    let b = Broker::start(BrokerConfig::new());
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut c = RawClient::connect_tcp(b.tcp_addr(), protocol);
        let bytes = pipelined(protocol, &format!("pipe-{protocol:?}"));
        let sent = Instant::now();
        c.send_bytes(&bytes);
        let took = expect_answers(&mut c, sent);
        println!("{protocol:?}: CONNECT+PUBLISH+SUBSCRIBE in one write, all answered in {took:?}");
    }
}

#[test]
fn packets_split_across_writes_behind_connect_are_answered() {
    let b = Broker::start(BrokerConfig::new());
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut c = RawClient::connect_tcp(b.tcp_addr(), protocol);
        let bytes = pipelined(protocol, &format!("split-{protocol:?}"));
        // The first write ends inside the PUBLISH (its header and part of
        // its topic); the second carries the rest and the SUBSCRIBE.
        let connect_len = {
            let mut probe = bytes.clone();
            let before = probe.len();
            codec::decode(&mut probe, None, 0)
                .expect("CONNECT")
                .expect("whole");
            before - probe.len()
        };
        let cut = connect_len + 3;
        c.send_bytes(&bytes[..cut]);
        match c.recv(T) {
            Read1::Packet(Packet::ConnAck(a)) => assert_eq!(a.code, 0),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
        let sent = Instant::now();
        c.send_bytes(&bytes[cut..]);
        match c.recv(T) {
            Read1::Packet(Packet::PubAck(a)) => assert_eq!(a.packet_id, 7),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        match c.recv(T) {
            Read1::Packet(Packet::SubAck(a)) => assert_eq!(a.packet_id, 8),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        println!(
            "{protocol:?}: split PUBLISH + SUBSCRIBE answered {:?} after the second write",
            sent.elapsed()
        );
    }
}

/// A CONNECT (MQTT 5) from its parts: connect flags, the property block,
/// and the payload after the client id `c` (will properties, topic and
/// payload, username, password, as the flags say).
fn connect5(flags: u8, properties: &[u8], payload_after_id: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 0];
    body.push(properties.len() as u8);
    body.extend_from_slice(properties);
    body.extend_from_slice(&[0, 1, b'c']);
    body.extend_from_slice(payload_after_id);
    frame(0x10, &body)
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Will properties (none), will topic, will payload.
fn will(topic: &[u8], payload: &[u8], properties: &[u8]) -> Vec<u8> {
    let mut v = vec![properties.len() as u8];
    v.extend_from_slice(properties);
    v.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    v.extend_from_slice(topic);
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn every_bad_v5_connect_gets_a_connack_with_its_reason_then_the_close() {
    let b = Broker::start(
        BrokerConfig::new().raw("[mqtt]\nmax_topic_levels = 4\nmax_packet_size = 512"),
    );
    let clean = 0x02;
    let with_will = 0x02 | 0x04;
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "Receive Maximum 0",
            connect5(clean, &[0x21, 0, 0], &[]),
            reason::PROTOCOL_ERROR,
        ),
        (
            "Maximum Packet Size 0",
            connect5(clean, &[0x27, 0, 0, 0, 0], &[]),
            reason::PROTOCOL_ERROR,
        ),
        (
            "Request Problem Information 2",
            connect5(clean, &[0x17, 2], &[]),
            reason::PROTOCOL_ERROR,
        ),
        (
            "a property twice",
            connect5(clean, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1], &[]),
            reason::PROTOCOL_ERROR,
        ),
        (
            "a PUBLISH property (topic alias)",
            connect5(clean, &[0x23, 0, 1], &[]),
            reason::PROTOCOL_ERROR,
        ),
        (
            "an unknown property",
            connect5(clean, &[0x7F, 0], &[]),
            reason::MALFORMED_PACKET,
        ),
        (
            "the reserved flag",
            connect5(clean | 0x01, &[], &[]),
            reason::MALFORMED_PACKET,
        ),
        (
            "will QoS 3",
            connect5(with_will | 0x18, &[], &will(b"w", b"x", &[])),
            reason::MALFORMED_PACKET,
        ),
        (
            "will retain without a will",
            connect5(clean | 0x20, &[], &[]),
            reason::MALFORMED_PACKET,
        ),
        (
            "a wildcard will topic",
            connect5(with_will, &[], &will(b"w/#", b"x", &[])),
            reason::TOPIC_NAME_INVALID,
        ),
        (
            "an empty will topic",
            connect5(with_will, &[], &will(b"", b"x", &[])),
            reason::TOPIC_NAME_INVALID,
        ),
        (
            "a will topic past max_topic_levels",
            connect5(with_will, &[], &will(b"a/b/c/d/e", b"x", &[])),
            reason::TOPIC_NAME_INVALID,
        ),
        (
            "a will payload that is not the UTF-8 it claims",
            connect5(with_will, &[], &will(b"w", &[0xFF], &[0x01, 0x01])),
            reason::PAYLOAD_FORMAT_INVALID,
        ),
        (
            "an authentication method",
            connect5(clean, &[0x15, 0, 5, b'S', b'C', b'R', b'A', b'M'], &[]),
            reason::BAD_AUTHENTICATION_METHOD,
        ),
        (
            "authentication data without a method",
            connect5(clean, &[0x16, 0, 1, 0], &[]),
            reason::PROTOCOL_ERROR,
        ),
        (
            "a CONNECT over max_packet_size",
            connect5(with_will, &[], &will(b"w", &[b'x'; 600], &[])),
            reason::PACKET_TOO_LARGE,
        ),
    ];
    for (what, bytes, want) in cases {
        let mut c = RawClient::connect_tcp(b.tcp_addr(), Protocol::V5);
        c.send_bytes(&bytes);
        match c.recv(T) {
            Read1::Packet(Packet::ConnAck(a)) => {
                assert_eq!(a.code, want, "{what}: {a:?}");
                assert!(
                    a.properties
                        .reason_string
                        .as_deref()
                        .is_some_and(|r| !r.is_empty()),
                    "{what}: a reason string says why"
                );
            }
            other => panic!("{what}: expected CONNACK {want:#04x}, got {other:?}"),
        }
        assert!(matches!(c.recv(T), Read1::Closed), "{what}: then the close");
    }
    // 3.1.1 has no code for a malformed CONNECT: a plain close.
    let mut bad = connect5(0x03, &[], &[]);
    bad[8] = 4; // level 4, no property block: the reserved flag alone
    let mut c = RawClient::connect_tcp(b.tcp_addr(), Protocol::V311);
    c.send_bytes(&bad[..bad.len()]);
    assert!(matches!(c.recv(T), Read1::Closed));
    // The broker is unharmed.
    let (_, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "fine", true));
    assert_eq!(ack.code, 0);
}

#[test]
fn topic_alias_zero_is_topic_alias_invalid() {
    let b = Broker::start(BrokerConfig::new());
    for topic in ["alias/zero", ""] {
        let (mut c, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "a0", true));
        let mut p = raw::publish(topic, b"x", QoS::AtLeastOnce, false, 1);
        p.properties.topic_alias = Some(0);
        c.send(&Packet::Publish(p));
        assert_eq!(
            c.expect_close(T),
            Some(reason::TOPIC_ALIAS_INVALID),
            "topic {topic:?}"
        );
    }
}
