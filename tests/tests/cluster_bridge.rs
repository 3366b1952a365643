//! A 3-node raftmq cluster bridging out to mosquitto under a steady QoS 1
//! load; kill -9 of the node running the bridge (the leader). Another node
//! takes the bridge over within the election timeout plus a few seconds
//! and resumes from the replicated session: every message acknowledged to
//! the publisher reaches the mosquitto subscriber (duplicates counted).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::bridge::{bridge_toml, wait_connected, Listener, Mosquitto, Sub};
use raftmq_e2e::cluster::{self, grpc_addr, wait_leader, ELECTION_TIMEOUT_MS};
use raftmq_e2e::load::publish_acked;

const MESSAGES: u32 = 3000;

#[test]
fn kill9_of_the_bridging_node_loses_no_acknowledged_message() {
    let m = Mosquitto::start(Listener::Plain, false);
    // Collects at mosquitto from the start, acknowledging each.
    let (tx, rx) = mpsc::channel::<u32>();
    let mut sub = Sub::new(
        m.addr(),
        Protocol::V311,
        "collector",
        true,
        "d/#",
        QoS::AtLeastOnce,
    );
    std::thread::spawn(move || loop {
        for p in sub.take(100, Duration::from_millis(500)) {
            if let Ok(b) = <[u8; 4]>::try_from(&p.payload[..]) {
                if tx.send(u32::from_be_bytes(b)).is_err() {
                    return;
                }
            }
        }
    });
    let bridge = bridge_toml(
        "central",
        m.addr(),
        "3.1.1",
        &["d/# out 1"],
        "max_queued_messages = 100000\n",
    );
    let mut nodes = cluster::start_each(3, "", |_, c| c.raw(&bridge));
    let first = grpc_addr(&nodes[0], 1);
    let leader = wait_leader(&first, None, Duration::from_secs(20)).expect("a leader");
    let li = (leader - 1) as usize;
    assert!(
        wait_connected(&nodes[li], "central", Duration::from_secs(30)),
        "the leader runs the bridge"
    );
    for (i, n) in nodes.iter().enumerate() {
        if i != li {
            assert!(
                !wait_connected(n, "central", Duration::ZERO),
                "only the leader runs it"
            );
        }
    }

    // Publishers on the two other nodes.
    let addrs: Vec<_> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, n)| n.tcp_addr())
        .collect();
    let acked_count = AtomicUsize::new(0);
    let reconnects = AtomicUsize::new(0);
    let (acked, takeover) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut next = 0u32;
            publish_acked(
                &addrs,
                "load",
                || {
                    next += 1;
                    // A steady rate: ~500/s.
                    std::thread::sleep(Duration::from_millis(2));
                    (next <= MESSAGES).then_some(next)
                },
                10,
                &acked_count,
                &reconnects,
            )
        });
        while acked_count.load(Ordering::Relaxed) < (MESSAGES / 3) as usize {
            std::thread::sleep(Duration::from_millis(10));
        }
        nodes[li].kill9();
        let killed = Instant::now();
        let others: Vec<usize> = (0..3).filter(|i| *i != li).collect();
        let took = raftmq_e2e::eventually(Duration::from_secs(60), || {
            others
                .iter()
                .any(|i| wait_connected(&nodes[*i], "central", Duration::ZERO))
        });
        assert!(took, "no node took the bridge over");
        let takeover = killed.elapsed();
        (load.join().expect("load"), takeover)
    });
    assert_eq!(acked.len(), MESSAGES as usize, "every publish acknowledged");

    let mut got = BTreeSet::new();
    let mut copies = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < acked.len() && Instant::now() < deadline {
        if let Ok(id) = rx.recv_timeout(Duration::from_millis(500)) {
            copies += 1;
            got.insert(id);
        }
    }
    // Late duplicates.
    while let Ok(id) = rx.recv_timeout(Duration::from_secs(2)) {
        copies += 1;
        got.insert(id);
    }
    let lost: Vec<u32> = acked.difference(&got).copied().collect();
    eprintln!(
        "bridge failover: takeover {takeover:?} after kill -9 (election timeout {ELECTION_TIMEOUT_MS} ms); \
         {} acknowledged, {} lost, {} duplicates",
        acked.len(),
        lost.len(),
        copies - got.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} acknowledged (first {:?})",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        takeover < Duration::from_millis(ELECTION_TIMEOUT_MS) + Duration::from_secs(8),
        "takeover took {takeover:?}"
    );
}
