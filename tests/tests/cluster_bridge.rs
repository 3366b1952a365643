//! Bridges in a 3-node raftmq cluster bridging out to mosquitto. Exactly
//! one node runs each bridge (its claim in the replicated state, shown by
//! `GET /api/v1/bridges` on every node); under a steady load, kill -9 of
//! the node running the bridge: another node takes it over within the
//! election timeout plus a few seconds and resumes from the replicated
//! session. Every message acknowledged to the publisher reaches the
//! mosquitto subscriber; duplicates are counted at QoS 1 and there are
//! none at QoS 2.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::bridge::{
    bridge_toml, bridges_api, collect_ids, wait_connected, Listener, Mosquitto,
};
use raftmq_e2e::cluster::{self, cli, grpc_addr, wait_leader, ELECTION_TIMEOUT_MS};
use raftmq_e2e::load::publish_acked_at;
use raftmq_e2e::Broker;

const MESSAGES: u32 = 3000;
const TOKEN: &str = "cluster-bridge-token";
/// The bound: the election timeout plus a few seconds (the
/// leader's liveness probe counts a node down after 3 s).
const TAKEOVER_BOUND: Duration = Duration::from_secs(8);

fn start_cluster(bridges: &str) -> Vec<Broker> {
    cluster::start_each(3, "", |_, c| {
        c.raw(bridges).env("RAFTMQ_HTTP__ADMIN_TOKEN", TOKEN)
    })
}

/// The node (index) whose claim `name` is, once every live node agrees
/// on it and that node runs it, connected; the others do not run it.
fn wait_placed(nodes: &[Broker], live: &[usize], name: &str, timeout: Duration) -> Option<usize> {
    let mut placed = None;
    let ok = raftmq_e2e::eventually(timeout, || {
        let views: Vec<_> = live
            .iter()
            .map(|i| (*i, bridges_api(&nodes[*i], TOKEN)))
            .collect();
        let holders: BTreeSet<Option<u64>> = views
            .iter()
            .map(|(_, v)| v.get(name).and_then(|b| b.0))
            .collect();
        let [Some(h)] = holders.into_iter().collect::<Vec<_>>()[..] else {
            return false;
        };
        let hi = (h - 1) as usize;
        let right = views.iter().all(|(i, v)| {
            let (_, running, connected) = v[name];
            if *i == hi {
                running && connected
            } else {
                !running && !connected
            }
        });
        placed = Some(hi);
        right && live.contains(&hi)
    });
    ok.then_some(placed).flatten()
}

struct Figures {
    takeover: Duration,
    acked: usize,
    lost: usize,
    duplicates: usize,
}

/// Whether the node running the bridge leads when it is killed: then the
/// election comes first, and the new leader moves the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Leads,
    Follows,
}

/// What happens to the node running the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Kill9,
    /// SIGSTOP until another node runs the bridge, then SIGCONT: the old
    /// holder comes back and must not run it any more.
    Pause,
}

/// Makes node `hi` (index) lead, or not, as `holder` says.
fn set_leader(nodes: &[Broker], hi: usize, holder: Holder) {
    let first = grpc_addr(&nodes[0], 1);
    let leader = wait_leader(&first, None, Duration::from_secs(20)).expect("a leader");
    let me = hi as u64 + 1;
    let (from, to) = match holder {
        Holder::Follows if leader == me => (leader, if hi == 0 { 2 } else { 1 }),
        Holder::Leads if leader != me => (leader, me),
        _ => return,
    };
    let at = grpc_addr(&nodes[from as usize - 1], from);
    let (code, out) = cli(&at, &["transfer-leader", "--id", &to.to_string()]);
    assert_eq!(code, Some(0), "transfer-leader: {out}");
    let led = raftmq_e2e::eventually(Duration::from_secs(20), || {
        wait_leader(&first, None, Duration::from_secs(1)) == Some(to)
    });
    assert!(led, "node {to} leads after transfer-leader");
}

/// One run: a bridge at `qos` under a steady load at `qos` from
/// publishers on the two other nodes; kill -9 (or `how`) of the node
/// running it, which leads or follows as `holder` says.
fn takeover_run(qos: QoS, holder: Holder, how: Failure) -> Figures {
    let m = Mosquitto::start(Listener::Plain, false);
    let rx = collect_ids(m.addr(), "collector", "d/#", qos);
    let bridge = bridge_toml(
        "central",
        m.addr(),
        "3.1.1",
        &[&format!("d/# out {}", qos as u8)],
        // The same remote client id from every node, its session kept:
        // the remote's QoS 2 state carries over a takeover.
        "max_queued_messages = 100000\nremote_clientid = \"raftmq-test.central\"\nclean_start = false\n",
    );
    let mut nodes = start_cluster(&bridge);
    let hi = wait_placed(&nodes, &[0, 1, 2], "central", Duration::from_secs(30))
        .expect("one node runs the bridge");
    // At QoS 2 the holder follows: with the leader alive, no publisher
    // sends a message again (which would be a duplicate of its own), so
    // the run measures the bridge alone.
    set_leader(&nodes, hi, holder);

    let addrs: Vec<_> = (0..3)
        .filter(|i| *i != hi)
        .map(|i| nodes[i].tcp_addr())
        .collect();
    let acked_count = AtomicUsize::new(0);
    let reconnects = AtomicUsize::new(0);
    let (acked, takeover) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut next = 0u32;
            publish_acked_at(
                Protocol::V5,
                qos,
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
                &AtomicUsize::new(0),
            )
        });
        while acked_count.load(Ordering::Relaxed) < (MESSAGES / 3) as usize {
            std::thread::sleep(Duration::from_millis(10));
        }
        match how {
            Failure::Kill9 => nodes[hi].kill9(),
            Failure::Pause => nodes[hi].pause(),
        }
        let killed = Instant::now();
        let others: Vec<usize> = (0..3).filter(|i| *i != hi).collect();
        let took = raftmq_e2e::eventually(Duration::from_secs(60), || {
            others
                .iter()
                .any(|i| wait_connected(&nodes[*i], "central", Duration::ZERO))
        });
        assert!(took, "no node took the bridge over");
        let takeover = killed.elapsed();
        if how == Failure::Pause {
            nodes[hi].resume();
        }
        (load.join().expect("load"), takeover)
    });
    assert_eq!(acked.len(), MESSAGES as usize, "every publish acknowledged");
    if how == Failure::Pause {
        // Back, the old holder sees the claim moved: one node runs the
        // bridge, and not it.
        let now = wait_placed(&nodes, &[0, 1, 2], "central", Duration::from_secs(30));
        assert!(
            now.is_some_and(|n| n != hi),
            "node {} came back; the bridge runs on {now:?}",
            hi + 1
        );
    }

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
    let f = Figures {
        takeover,
        acked: acked.len(),
        lost: lost.len(),
        duplicates: copies - got.len(),
    };
    eprintln!(
        "bridge failover at QoS {}, holder {holder:?}, {how:?}: takeover {:?} after the failure (election timeout {ELECTION_TIMEOUT_MS} ms); \
         {} acknowledged, {} lost, {} duplicates, {} publisher reconnects",
        qos as u8,
        f.takeover,
        f.acked,
        f.lost,
        f.duplicates,
        reconnects.load(Ordering::Relaxed)
    );
    if !lost.is_empty() || f.duplicates > 0 {
        // What mosquitto says of the bridge's session around the loss.
        let log = m.log();
        let notes: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("Received PUB") && !l.contains("Sending PUB"))
            .filter(|l| !l.contains("PINGREQ") && !l.contains("PINGRESP"))
            .collect();
        eprintln!(
            "---- mosquitto ({} lines; lost {:?}) ----\n{}",
            log.lines().count(),
            &lost[..lost.len().min(10)],
            notes.join("\n")
        );
    }
    assert!(
        lost.is_empty(),
        "lost {} acknowledged (first {:?})",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        f.takeover < Duration::from_millis(ELECTION_TIMEOUT_MS) + TAKEOVER_BOUND,
        "takeover took {:?}",
        f.takeover
    );
    f
}

#[test]
fn kill9_of_the_bridging_node_loses_no_acknowledged_message() {
    takeover_run(QoS::AtLeastOnce, Holder::Follows, Failure::Kill9);
}

#[test]
fn kill9_of_the_bridging_leader_loses_no_acknowledged_message() {
    takeover_run(QoS::AtLeastOnce, Holder::Leads, Failure::Kill9);
}

/// A leader cut off (paused) stops running its bridge before another node
/// can take it (`bridge/run.rs`); back, it runs it no more.
#[test]
fn a_paused_bridging_leader_hands_the_bridge_over_and_loses_nothing() {
    takeover_run(QoS::AtLeastOnce, Holder::Leads, Failure::Pause);
}

#[test]
fn at_qos_2_a_takeover_loses_nothing_and_duplicates_nothing() {
    let f = takeover_run(QoS::ExactlyOnce, Holder::Follows, Failure::Kill9);
    assert_eq!(f.duplicates, 0, "duplicates at QoS 2");
}

#[test]
fn each_bridge_runs_on_exactly_one_node_and_moves_when_it_dies() {
    let m = Mosquitto::start(Listener::Plain, false);
    let bridges = [
        bridge_toml("east", m.addr(), "3.1.1", &["e/# out 1"], ""),
        bridge_toml("west", m.addr(), "5.0", &["w/# out 1"], ""),
    ]
    .concat();
    let mut nodes = start_cluster(&bridges);
    let all = [0, 1, 2];
    // Node 1 was alone when it placed them; they spread as the others
    // join.
    let mut placed = BTreeMap::new();
    let spread = raftmq_e2e::eventually(Duration::from_secs(30), || {
        for name in ["east", "west"] {
            let at = wait_placed(&nodes, &all, name, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("{name} runs on exactly one node"));
            placed.insert(name, at);
        }
        placed["east"] != placed["west"]
    });
    assert!(spread, "two bridges on three nodes are spread: {placed:?}");

    let victim = placed["east"];
    nodes[victim].kill9();
    let killed = Instant::now();
    let live: Vec<usize> = all.into_iter().filter(|i| *i != victim).collect();
    let moved = wait_placed(&nodes, &live, "east", Duration::from_secs(60))
        .expect("east moved to a live node");
    let took = killed.elapsed();
    eprintln!(
        "bridge east moved from node {} to node {} in {took:?}",
        victim + 1,
        moved + 1
    );
    assert_ne!(moved, victim);
    assert!(
        took < Duration::from_millis(ELECTION_TIMEOUT_MS) + TAKEOVER_BOUND,
        "moving took {took:?}"
    );
    // The other bridge stayed where it was.
    assert_eq!(
        wait_placed(&nodes, &live, "west", Duration::from_secs(10)),
        Some(placed["west"])
    );
}
