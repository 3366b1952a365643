//! A bridge's outgoing queue while the remote is away: what fits in
//! `max_queued_messages` arrives once it is back, the rest is dropped and
//! counted.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::bridge::{bridge_metric, bridge_toml, wait_connected, Listener, Mosquitto, Sub};
use raftmq_e2e::load::publish_acked;
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(30);

/// The ids the subscriber got, and how many copies in all.
fn receive_ids(sub: &mut Sub, want: usize, timeout: Duration) -> (BTreeSet<u32>, usize) {
    let deadline = Instant::now() + timeout;
    let mut ids = BTreeSet::new();
    let mut copies = 0;
    while ids.len() < want && Instant::now() < deadline {
        for p in sub.take(want - ids.len(), Duration::from_secs(2)) {
            copies += 1;
            if let Ok(b) = <[u8; 4]>::try_from(&p.payload[..]) {
                ids.insert(u32::from_be_bytes(b));
            }
        }
    }
    (ids, copies)
}

fn publish_n(b: &Broker, n: u32) -> BTreeSet<u32> {
    let mut next = 0u32;
    publish_acked(
        &[b.tcp_addr()],
        "load",
        || {
            next += 1;
            (next <= n).then_some(next)
        },
        50,
        &AtomicUsize::new(0),
        &AtomicUsize::new(0),
    )
}

#[test]
fn beyond_max_queued_messages_drops_are_counted() {
    let mut m = Mosquitto::start(Listener::Plain, true);
    let b = Broker::start(BrokerConfig::new().raw(&bridge_toml(
        "small",
        m.addr(),
        "5.0",
        &["d/# out 1"],
        "max_queued_messages = 500\n",
    )));
    assert!(wait_connected(&b, "small", T));
    let sub = Sub::new(
        m.addr(),
        Protocol::V311,
        "small-sub",
        false,
        "d/#",
        QoS::AtLeastOnce,
    );
    sub.0.disconnect();
    m.stop();
    assert!(raftmq_e2e::eventually(T, || !wait_connected(
        &b,
        "small",
        Duration::ZERO
    )));
    let acked = publish_n(&b, 2000);
    assert_eq!(acked.len(), 2000);
    let dropped =
        bridge_metric(&b, "raftmq_bridge_dropped_messages{bridge=\"small\"}").unwrap_or(0.0);
    m.start_again();
    let mut sub = Sub::new(
        m.addr(),
        Protocol::V311,
        "small-sub",
        false,
        "d/#",
        QoS::AtLeastOnce,
    );
    let (ids, _) = receive_ids(&mut sub, 2000, Duration::from_secs(20));
    eprintln!(
        "max_queued_messages 500: {} arrived, {dropped} dropped",
        ids.len()
    );
    assert_eq!(ids.len(), 500, "the queue's worth arrives");
    assert_eq!(dropped, 1500.0, "the rest is counted as dropped");
}
