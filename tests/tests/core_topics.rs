//! Topic matching over the wire: `+`, `#`, `$` topics, overlapping
//! subscriptions, shared subscriptions (round-robin, re-queue on loss).

use std::collections::HashMap;
use std::time::Duration;

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(5);

fn open(b: &Broker, id: &str, protocol: Protocol) -> RawClient {
    RawClient::open(b.tcp_addr(), raw::connect(protocol, id, true)).0
}

fn drain(c: &mut RawClient) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(m) = c.next_publish(Duration::from_millis(500)) {
        c.ack(&m);
        got.push(m.topic.to_string());
    }
    got.sort();
    got
}

#[test]
fn wildcards_match_as_the_spec_says() {
    let b = Broker::start(BrokerConfig::new());
    let cases: &[(&str, &[&str])] = &[
        ("a/+/c", &["a/b/c", "a//c"]),
        ("a/#", &["a", "a/b", "a/b/c", "a//c"]),
        ("+", &["a", "b"]),
        ("#", &["a", "a/b", "a/b/c", "a//c", "b", "/x"]),
        ("+/+", &["/x", "a/b"]),
        ("/+", &["/x"]),
        // A `$` topic only for a filter that names its first level.
        // (`$SYS` itself is the broker's: no client publishes there.)
        ("$dollar/#", &["$dollar/x"]),
        ("+/x", &["/x"]),
    ];
    let topics = [
        "a",
        "a/b",
        "a/b/c",
        "a//c",
        "b",
        "/x",
        "$dollar/x",
        "$other",
    ];
    let mut subs = Vec::new();
    for (i, (filter, _)) in cases.iter().enumerate() {
        let mut s = open(&b, &format!("s{i}"), Protocol::V311);
        assert_eq!(s.subscribe(1, filter, QoS::AtMostOnce), vec![0], "{filter}");
        subs.push(s);
    }
    let mut p = open(&b, "p", Protocol::V311);
    for t in topics {
        p.publish_qos1(t, b"", false, 1);
    }
    for ((filter, want), s) in cases.iter().zip(subs.iter_mut()) {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(drain(s), want, "filter {filter}");
    }
}

#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let b = Broker::start(BrokerConfig::new());
    let mut s = open(&b, "s", Protocol::V311);
    s.subscribe(1, "o/#", QoS::AtMostOnce);
    s.subscribe(2, "o/+", QoS::AtLeastOnce);
    s.subscribe(3, "o/x", QoS::AtMostOnce);
    let mut p = open(&b, "p", Protocol::V311);
    p.publish_qos1("o/x", b"1", false, 1);
    let m = s.next_publish(T).expect("one copy");
    assert_eq!(m.qos, QoS::AtLeastOnce);
    s.ack(&m);
    s.expect_no_publish(Duration::from_millis(500));
}

#[test]
fn invalid_filters_are_refused_in_suback() {
    let b = Broker::start(BrokerConfig::new());
    let mut s3 = open(&b, "s3", Protocol::V311);
    let mut s5 = open(&b, "s5", Protocol::V5);
    for bad in [
        "a/#/b",
        "a+",
        "#a",
        "",
        "$share/g",
        "$share//x",
        "$share/g+/x",
    ] {
        assert_eq!(
            s3.subscribe(1, bad, QoS::AtMostOnce),
            vec![0x80],
            "3.1.1 {bad:?}"
        );
        assert_eq!(
            s5.subscribe(1, bad, QoS::AtMostOnce),
            vec![0x8F],
            "5.0 {bad:?}"
        );
    }
}

#[test]
fn shared_subscription_round_robins_among_live_members() {
    let b = Broker::start(BrokerConfig::new());
    let mut members: Vec<RawClient> = (0..3)
        .map(|i| {
            let mut m = open(&b, &format!("m{i}"), Protocol::V5);
            assert_eq!(m.subscribe(1, "$share/g/jobs/+", QoS::AtLeastOnce), vec![1]);
            m
        })
        .collect();
    // A plain subscriber of the same filter still gets every message.
    let mut plain = open(&b, "plain", Protocol::V311);
    plain.subscribe(1, "jobs/+", QoS::AtMostOnce);
    let mut p = open(&b, "p", Protocol::V311);
    for i in 0..30u16 {
        p.publish_qos1("jobs/a", &i.to_be_bytes(), false, i + 1);
    }
    let mut per_member = HashMap::new();
    let mut seen = Vec::new();
    for (i, m) in members.iter_mut().enumerate() {
        while let Some(msg) = m.next_publish(Duration::from_millis(500)) {
            m.ack(&msg);
            *per_member.entry(i).or_insert(0) += 1;
            seen.push(u16::from_be_bytes([msg.payload[0], msg.payload[1]]));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..30).collect::<Vec<_>>(),
        "each message to exactly one member"
    );
    assert_eq!(
        per_member.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10]
    );
    assert_eq!(drain(&mut plain).len(), 30);
}

#[test]
fn unacked_shared_messages_move_to_another_member_when_one_leaves() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nmax_inflight_messages = 100"));
    let mut a = open(&b, "a", Protocol::V311);
    let mut c = open(&b, "c", Protocol::V311);
    a.subscribe(1, "$share/w/t", QoS::AtLeastOnce);
    c.subscribe(1, "$share/w/t", QoS::AtLeastOnce);
    let mut p = open(&b, "p", Protocol::V311);
    for i in 0..10u8 {
        p.publish_qos1("t", &[i], false, 1 + i as u16);
    }
    // `a` receives its share but acks nothing and vanishes.
    let mut a_got = Vec::new();
    while let Some(m) = a.next_publish(Duration::from_millis(500)) {
        a_got.push(m.payload[0]);
    }
    assert!(!a_got.is_empty());
    drop(a);
    let mut c_got = Vec::new();
    while let Some(m) = c.next_publish(Duration::from_millis(1000)) {
        c.ack(&m);
        c_got.push(m.payload[0]);
    }
    c_got.sort();
    assert_eq!(c_got, (0..10).collect::<Vec<_>>(), "c ends up with all ten");
}

#[test]
fn unsubscribe_stops_delivery() {
    let b = Broker::start(BrokerConfig::new());
    let mut s = open(&b, "s", Protocol::V5);
    s.subscribe(1, "u/+", QoS::AtMostOnce);
    s.send(&raftmq::codec::Packet::Unsubscribe(
        raftmq::codec::Unsubscribe {
            packet_id: 2,
            filters: vec!["u/+".into(), "never".into()],
            properties: Default::default(),
        },
    ));
    let codes = s
        .recv_until(T, |p| match p {
            raftmq::codec::Packet::UnsubAck(a) => Some(a.codes.clone()),
            _ => None,
        })
        .expect("UNSUBACK");
    assert_eq!(codes, vec![0x00, 0x11]);
    let mut p = open(&b, "p", Protocol::V311);
    p.publish_qos1("u/1", b"", false, 1);
    s.expect_no_publish(Duration::from_millis(500));
}
