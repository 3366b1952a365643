//! A bridge's outgoing queue across a remote outage: mosquitto out of
//! reach for 10 s (a relay in between is cut; its subscriber stays
//! connected) while 5,000 QoS 1 messages are published here: all arrive
//! once it is back, and `$SYS/broker/connection/<name>/state` goes 1 -> 0
//! -> 1. With a smaller `max_queued_messages`, what does not fit is
//! dropped and counted.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::bridge::{
    bridge_metric, bridge_toml, wait_connected, Listener, Mosquitto, Relay, Sub,
};
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
fn remote_down_10s_while_5000_qos1_published_all_arrive() {
    let m = Mosquitto::start(Listener::Plain, false);
    let relay = Relay::start(m.addr());
    let b = Broker::start(BrokerConfig::new().raw(&bridge_toml(
        "central",
        relay.addr(),
        "3.1.1",
        &["d/# out 1"],
        "max_queued_messages = 10000\n",
    )));
    assert!(wait_connected(&b, "central", T));
    let mut state = Sub::new(
        b.tcp_addr(),
        Protocol::V5,
        "state-watch",
        true,
        "$SYS/broker/connection/central/state",
        QoS::AtLeastOnce,
    );
    let first = state.take(1, T);
    assert_eq!(
        first.first().map(|p| &p.payload[..]),
        Some(&b"1"[..]),
        "state 1 first"
    );
    // Connected to mosquitto itself throughout.
    let mut sub = Sub::new(
        m.addr(),
        Protocol::V311,
        "central-sub",
        true,
        "d/#",
        QoS::AtLeastOnce,
    );

    relay.cut();
    let down_at = Instant::now();
    let zero = state.take(1, T);
    assert_eq!(
        zero.first().map(|p| &p.payload[..]),
        Some(&b"0"[..]),
        "state 0 when the remote is gone"
    );
    let acked = publish_n(&b, 5000);
    assert_eq!(acked.len(), 5000, "every publish acknowledged here");
    let queued = bridge_metric(&b, "raftmq_bridge_queued_messages{bridge=\"central\"}");
    assert_eq!(
        queued,
        Some(5000.0),
        "all 5,000 wait in the bridge's session"
    );
    let left = Duration::from_secs(10).saturating_sub(down_at.elapsed());
    std::thread::sleep(left);
    relay.restore();
    let back = state.take(1, T);
    assert_eq!(
        back.first().map(|p| &p.payload[..]),
        Some(&b"1"[..]),
        "state 1 once back"
    );

    let started = Instant::now();
    let (ids, copies) = receive_ids(&mut sub, 5000, Duration::from_secs(120));
    let missing: Vec<u32> = acked.difference(&ids).copied().take(10).collect();
    eprintln!(
        "outage: {} of 5000 arrived ({} copies, {} duplicates) in {:?} after the remote came back",
        ids.len(),
        copies,
        copies - ids.len(),
        started.elapsed()
    );
    assert!(
        missing.is_empty(),
        "lost {} (first: {missing:?})",
        5000 - ids.len()
    );
    assert!(
        crate_dropped(&b) == 0.0,
        "nothing dropped below max_queued_messages"
    );
}

fn crate_dropped(b: &Broker) -> f64 {
    bridge_metric(b, "raftmq_bridge_dropped_messages{bridge=\"").unwrap_or(0.0)
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
