//! The binary starts with defaults, serves MQTT, and exits cleanly.

use std::time::Duration;

use raftmq::codec::{Packet, Protocol, QoS};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::{Broker, BrokerConfig};

#[test]
fn publish_subscribe_round_trip_over_tcp() {
    let broker = Broker::start(BrokerConfig::new());
    let (mut sub, ack) =
        RawClient::open(broker.tcp_addr(), raw::connect(Protocol::V311, "sub", true));
    assert_eq!(ack.code, 0);
    assert_eq!(sub.subscribe(1, "a/+", QoS::AtLeastOnce), vec![1]);
    let (mut publ, _) =
        RawClient::open(broker.tcp_addr(), raw::connect(Protocol::V311, "pub", true));
    publ.publish("a/b", b"hi", QoS::AtLeastOnce, false, 9);
    let acked = publ.recv_until(Duration::from_secs(5), |p| match p {
        Packet::PubAck(a) => Some(a.packet_id),
        _ => None,
    });
    assert_eq!(acked, Some(9));
    let got = sub.next_publish(Duration::from_secs(5)).expect("delivered");
    assert_eq!(
        (&*got.topic, &got.payload[..], got.qos),
        ("a/b", &b"hi"[..], QoS::AtLeastOnce)
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut broker = Broker::start(BrokerConfig::new());
    assert_eq!(broker.terminate(), Some(0));
}
