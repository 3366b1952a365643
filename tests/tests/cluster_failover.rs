//! A leader paused (SIGSTOP) or killed (kill -9) while a majority stays up
//! costs clients on the other nodes latency, never their connection: a
//! 3.1.1 and a 5.0 QoS 1 publisher on a healthy follower keep their
//! connections through it, and nothing they had acknowledged is lost.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq::codec::{Packet, Protocol, PubResp, QoS};
use raftmq_e2e::cluster::{self, grpc_addr, wait_leader};
use raftmq_e2e::load::publish_acked_as;
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{eventually, Broker};

const T: Duration = Duration::from_secs(20);
/// One publish per this per publisher at most (250/s).
const PACE: Duration = Duration::from_millis(4);

#[derive(Clone, Copy, Debug)]
enum Fault {
    Pause,
    Kill,
}

struct Publisher {
    protocol: Protocol,
    thread: std::thread::JoinHandle<BTreeSet<u32>>,
    reconnects: Arc<AtomicUsize>,
    /// Failing PUBACKs (5.0 0x88).
    refused: Arc<AtomicUsize>,
}

/// A QoS 1 publisher on `addrs[0]` (the others only if it is thrown off),
/// publishing ids from `first` until `stop`.
fn publisher(
    protocol: Protocol,
    addrs: Vec<SocketAddr>,
    first: u32,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Publisher {
    let reconnects = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (r, f) = (reconnects.clone(), refused.clone());
    let thread = std::thread::spawn(move || {
        let mut id = first;
        let start = Instant::now();
        let next = || {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            // Paced, so that the run (and the subscriber's drain) takes
            // the same time on a fast machine as on a slow one.
            let due = start + PACE * (id - first);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            id += 1;
            Some(id)
        };
        let id = format!("pub-{protocol:?}");
        publish_acked_as(protocol, &addrs, &id, next, 16, &acked, &r, &f)
    });
    Publisher {
        protocol,
        thread,
        reconnects,
        refused,
    }
}

/// The longest time the acknowledged count stood still while `busy`.
fn watch_stalls(
    acked: Arc<AtomicUsize>,
    busy: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let (mut last, mut since, mut worst) = (0, Instant::now(), Duration::ZERO);
        while busy.load(Ordering::Relaxed) {
            let now = acked.load(Ordering::Relaxed);
            if now != last {
                last = now;
                since = Instant::now();
            }
            worst = worst.max(since.elapsed());
            std::thread::sleep(Duration::from_millis(20));
        }
        worst
    })
}

/// Every id the durable subscriber on `node` holds for it.
fn drain_subscriber(node: &Broker) -> BTreeSet<u32> {
    let mut c = raw::connect(Protocol::V5, "durable", false);
    c.properties.session_expiry_interval = Some(3600);
    let (mut s, ack) = RawClient::open(node.tcp_addr(), c);
    assert!(ack.session_present);
    let mut got = BTreeSet::new();
    loop {
        match s.recv(Duration::from_secs(5)) {
            Read1::Packet(Packet::Publish(p)) => {
                let id = p
                    .payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes);
                got.insert(id.expect("4-byte payload"));
                s.send(&Packet::PubAck(PubResp::new(p.packet_id, 0)));
            }
            Read1::Timeout => return got,
            other => panic!("subscriber: {other:?}"),
        }
    }
}

fn leader_fails_under_load(fault: Fault) {
    // Queues hold everything: drops by policy are not what this is about.
    let mut nodes = cluster::start(3, "\n[mqtt]\nmax_queued_messages = 100000\n");
    assert_eq!(wait_leader(&grpc_addr(&nodes[0], 1), None, T), Some(1));
    // Copies for a persistent subscriber (offline, on node 3) go through
    // Raft: every publish is a commit.
    let mut c = raw::connect(Protocol::V5, "durable", true);
    c.properties.session_expiry_interval = Some(3600);
    let (mut s, _) = RawClient::open(nodes[2].tcp_addr(), c);
    assert_eq!(s.subscribe(1, "d/#", QoS::AtLeastOnce), vec![1]);
    s.disconnect();

    let follower = vec![nodes[1].tcp_addr(), nodes[2].tcp_addr()];
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<Publisher> = [(Protocol::V311, 0), (Protocol::V5, 1_000_000)]
        .into_iter()
        .map(|(p, first)| publisher(p, follower.clone(), first, stop.clone(), acked.clone()))
        .collect();
    assert!(
        eventually(T, || acked.load(Ordering::Relaxed) >= 300),
        "publishing did not start"
    );
    let busy = Arc::new(AtomicBool::new(true));
    let stalls = watch_stalls(acked.clone(), busy.clone());
    let at = Instant::now();
    match fault {
        Fault::Pause => nodes[0].pause(),
        Fault::Kill => nodes[0].kill9(),
    }
    let new_leader = wait_leader(&grpc_addr(&nodes[1], 2), Some(1), T).expect("a new leader");
    let elected = at.elapsed();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(at.elapsed()));
    if let Fault::Pause = fault {
        nodes[0].resume();
    }
    let during = acked.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut all = BTreeSet::new();
    let mut disconnects = Vec::new();
    for p in publishers {
        let got = p.thread.join().expect("publisher");
        disconnects.push((
            p.protocol,
            p.reconnects.load(Ordering::Relaxed),
            p.refused.load(Ordering::Relaxed),
        ));
        all.extend(got);
    }
    busy.store(false, Ordering::Relaxed);
    let worst = stalls.join().expect("stall watcher");
    let drain = Instant::now();
    let received = drain_subscriber(&nodes[2]);
    println!("{fault:?}: subscriber drained in {:?}", drain.elapsed());
    let lost: Vec<u32> = all.difference(&received).copied().take(10).collect();
    println!(
        "{fault:?}: new leader {new_leader} after {elected:?}; {} acknowledged ({during} by \
         the end of the fault), longest stall {worst:?}; (publisher, disconnects, failing PUBACKs) {disconnects:?}; \
         {} lost",
        all.len(),
        all.difference(&received).count()
    );
    for (protocol, lost_connection, refused) in disconnects {
        assert_eq!(
            lost_connection, 0,
            "{fault:?}: the {protocol:?} publisher lost its connection"
        );
        assert_eq!(refused, 0, "{fault:?}: the {protocol:?} publisher got 0x88");
    }
    assert!(
        lost.is_empty(),
        "{fault:?}: acknowledged but lost (first 10): {lost:?}"
    );
}

#[test]
fn a_paused_leader_costs_publishers_on_a_follower_latency_not_their_connection() {
    leader_fails_under_load(Fault::Pause);
}

#[test]
fn a_killed_leader_costs_publishers_on_a_follower_latency_not_their_connection() {
    leader_fails_under_load(Fault::Kill);
}
