//! The MQTT 5 feature set over the wire: topic aliases both ways, message
//! expiry, subscription options and identifiers, properties passed through,
//! request/response information, maximum packet size both ways, reason
//! strings, payload format validation.

use std::time::Duration;

use bytes::Bytes;
use raftmq::codec::{Packet, Protocol, QoS, SubOptions, Subscribe, UserProperties};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(5);

fn open5(b: &Broker, id: &str) -> RawClient {
    RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, id, true)).0
}

#[test]
fn inbound_topic_aliases() {
    let b = Broker::start(BrokerConfig::new());
    let (mut p, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "p", true));
    assert_eq!(ack.properties.topic_alias_maximum, Some(10));
    let mut s = open5(&b, "s");
    s.subscribe(1, "alias/#", QoS::AtMostOnce);

    let mut first = raw::publish("alias/long/topic", b"1", QoS::AtMostOnce, false, 0);
    first.properties.topic_alias = Some(3);
    p.send(&Packet::Publish(first));
    let mut second = raw::publish("", b"2", QoS::AtMostOnce, false, 0);
    second.properties.topic_alias = Some(3);
    p.send(&Packet::Publish(second));
    for want in [&b"1"[..], b"2"] {
        let m = s.next_publish(T).expect("delivered");
        assert_eq!((&*m.topic, &m.payload[..]), ("alias/long/topic", want));
        assert!(
            m.properties.topic_alias.is_none(),
            "no alias towards a client that allowed none"
        );
    }
    // An alias above the maximum closes with 0x94.
    let mut bad = raw::publish("alias/x", b"", QoS::AtMostOnce, false, 0);
    bad.properties.topic_alias = Some(11);
    p.send(&Packet::Publish(bad));
    assert_eq!(p.expect_close(T), Some(0x94));
    // An unknown alias with an empty topic is a protocol error.
    let mut p2 = open5(&b, "p2");
    let mut unknown = raw::publish("", b"", QoS::AtMostOnce, false, 0);
    unknown.properties.topic_alias = Some(1);
    p2.send(&Packet::Publish(unknown));
    assert_eq!(p2.expect_close(T), Some(0x82));
}

#[test]
fn outbound_topic_aliases_within_the_clients_maximum() {
    let b = Broker::start(BrokerConfig::new());
    let mut c = raw::connect(Protocol::V5, "s", true);
    c.properties.topic_alias_maximum = Some(1);
    let (mut s, _) = RawClient::open(b.tcp_addr(), c);
    s.subscribe(1, "o/#", QoS::AtMostOnce);
    let mut p = open5(&b, "p");
    for t in ["o/a", "o/a", "o/b"] {
        p.publish_qos1(t, b"", false, 1);
    }
    let m1 = s.next_publish(T).expect("1");
    assert_eq!((&*m1.topic, m1.properties.topic_alias), ("o/a", Some(1)));
    let m2 = s.next_publish(T).expect("2");
    assert_eq!((&*m2.topic, m2.properties.topic_alias), ("", Some(1)));
    let m3 = s.next_publish(T).expect("3");
    assert_eq!((&*m3.topic, m3.properties.topic_alias), ("o/b", None));
}

#[test]
fn message_expiry_is_decremented_and_expired_messages_are_not_delivered() {
    let b = Broker::start(BrokerConfig::new());
    let mut c = raw::connect(Protocol::V5, "s", false);
    c.properties.session_expiry_interval = Some(300);
    let (mut s, _) = RawClient::open(b.tcp_addr(), c.clone());
    s.subscribe(1, "x/#", QoS::AtLeastOnce);
    s.disconnect();
    let mut p = open5(&b, "p");
    let mut short = raw::publish("x/short", b"s", QoS::AtLeastOnce, false, 1);
    short.properties.message_expiry_interval = Some(1);
    p.send(&Packet::Publish(short));
    let mut long = raw::publish("x/long", b"l", QoS::AtLeastOnce, false, 2);
    long.properties.message_expiry_interval = Some(100);
    p.send(&Packet::Publish(long));
    std::thread::sleep(Duration::from_millis(2200));
    let (mut s, _) = RawClient::open(b.tcp_addr(), c);
    let m = s.next_publish(T).expect("the long one");
    assert_eq!(&*m.topic, "x/long");
    let left = m.properties.message_expiry_interval.expect("expiry kept");
    assert!(
        (97..100).contains(&left),
        "decremented by the time queued: {left}"
    );
    s.ack(&m);
    s.expect_no_publish(Duration::from_millis(500));
}

#[test]
fn no_local_and_subscription_identifiers() {
    let b = Broker::start(BrokerConfig::new());
    let mut c = open5(&b, "c");
    let nl = SubOptions {
        qos: QoS::AtMostOnce,
        no_local: true,
        ..SubOptions::default()
    };
    let mut sub = Subscribe {
        packet_id: 1,
        filters: vec![("n/#".into(), nl)],
        properties: Default::default(),
    };
    sub.properties.subscription_identifiers = vec![42];
    c.send(&Packet::Subscribe(sub));
    assert!(c
        .recv_until(T, |p| matches!(p, Packet::SubAck(_)).then_some(()))
        .is_some());
    let mut sub2 = Subscribe {
        packet_id: 2,
        filters: vec![("n/+".into(), SubOptions::default())],
        properties: Default::default(),
    };
    sub2.properties.subscription_identifiers = vec![7];
    c.send(&Packet::Subscribe(sub2));
    assert!(c
        .recv_until(T, |p| matches!(p, Packet::SubAck(_)).then_some(()))
        .is_some());

    // Own publish: only the non-no-local subscription matches (id 7).
    c.publish_qos1("n/1", b"own", false, 10);
    let m = c.next_publish(T).expect("via n/+");
    assert_eq!(m.properties.subscription_identifiers, vec![7]);
    c.expect_no_publish(Duration::from_millis(400));

    // Someone else's: both match, one copy carrying both identifiers.
    let mut o = open5(&b, "other");
    o.publish_qos1("n/1", b"theirs", false, 1);
    let m = c.next_publish(T).expect("delivered");
    let mut ids = m.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![7, 42]);
}

#[test]
fn properties_pass_through_unchanged() {
    let b = Broker::start(BrokerConfig::new());
    let mut s = open5(&b, "s");
    s.subscribe(1, "req", QoS::AtMostOnce);
    let mut p = open5(&b, "p");
    let mut m = raw::publish("req", "{\"a\":1}".as_bytes(), QoS::AtLeastOnce, false, 1);
    m.properties.user_properties =
        UserProperties::from_pairs([("k", "v1"), ("k", "v2"), ("trace", "abc")]).unwrap();
    m.properties.content_type = Some("application/json".into());
    m.properties.response_topic = Some("resp/1".into());
    m.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
    m.properties.payload_format_indicator = Some(1);
    p.send(&Packet::Publish(m.clone()));
    let got = s.next_publish(T).expect("delivered");
    assert_eq!(
        got.properties.user_properties, m.properties.user_properties,
        "order and duplicates kept"
    );
    assert_eq!(got.properties.content_type, m.properties.content_type);
    assert_eq!(got.properties.response_topic, m.properties.response_topic);
    assert_eq!(
        got.properties.correlation_data,
        m.properties.correlation_data
    );
    assert_eq!(got.properties.payload_format_indicator, Some(1));
}

#[test]
fn request_response_information() {
    let b = Broker::start(BrokerConfig::new());
    let mut c = raw::connect(Protocol::V5, "rr", true);
    c.properties.request_response_information = Some(1);
    let (_c, ack) = RawClient::open(b.tcp_addr(), c);
    let info = ack
        .properties
        .response_information
        .expect("response information");
    assert!(!info.is_empty());
    // Not asked for: not given.
    let (_c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "rr2", true));
    assert!(ack.properties.response_information.is_none());
}

#[test]
fn maximum_packet_size_both_ways() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nmax_packet_size = 1000"));
    let (mut p, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "p", true));
    assert_eq!(ack.properties.maximum_packet_size, Some(1000));

    // The client allows at most 200 bytes: a bigger message is not sent to
    // it (and the next small one still is).
    let mut c = raw::connect(Protocol::V5, "small", true);
    c.properties.maximum_packet_size = Some(200);
    let (mut s, _) = RawClient::open(b.tcp_addr(), c);
    s.subscribe(1, "m", QoS::AtLeastOnce);
    p.publish_qos1("m", &[1u8; 500], false, 1);
    p.publish_qos1("m", &[2u8; 10], false, 2);
    let got = s.next_publish(T).expect("small one");
    assert_eq!(got.payload.len(), 10);

    // Over the server's maximum: closed with 0x95, others unaffected.
    p.publish("m", &[0u8; 2000], QoS::AtMostOnce, false, 0);
    assert_eq!(p.expect_close(T), Some(0x95));
    let mut p2 = open5(&b, "p2");
    assert_eq!(p2.publish_qos1("m", b"ok", false, 1), 0);
}

#[test]
fn payload_format_indicator_is_validated() {
    let b = Broker::start(BrokerConfig::new());
    let mut p = open5(&b, "p");
    // Hand-built: the codec would not let us encode an invalid one.
    // PUBLISH QoS 0, topic "a", properties {0x01: 1}, payload 0xFF.
    p.send_bytes(&[0x30, 0x07, 0x00, 0x01, b'a', 0x02, 0x01, 0x01, 0xFF]);
    assert_eq!(p.expect_close(T), Some(0x99));
}

#[test]
fn reason_strings_accompany_errors_when_allowed() {
    let b = Broker::start(BrokerConfig::new());
    let mut p = open5(&b, "p");
    let mut bad = raw::publish("x", b"", QoS::AtMostOnce, false, 0);
    bad.properties.topic_alias = Some(200);
    p.send(&Packet::Publish(bad));
    let mut reason = None;
    while let raftmq_e2e::raw::Read1::Packet(pk) = p.recv(T) {
        if let Packet::Disconnect(d) = pk {
            reason = d.properties.reason_string.clone();
        }
    }
    assert!(
        reason.is_some_and(|r| !r.is_empty()),
        "DISCONNECT carries a reason string"
    );
}
