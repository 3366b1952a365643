//! A full disk, for real: a node's data_dir on a 2 MB tmpfs the test mounts
//! itself (it needs root; without it the test fails and says so), filled to
//! the last byte. While writes fail the node refuses what needs Raft
//! (PUBACK 0x88) and answers 503 on `/readyz` with the reason; once space
//! is freed it recovers by itself, within seconds and without a restart
//! (same process), and nothing acknowledged is lost. On a single node, and
//! on a follower and the leader of a 3-node cluster.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use raftmq::codec::{Packet, Protocol, QoS};
use raftmq_e2e::cluster::{self, grpc_addr, wait_leader};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::storage::{drain_subscriber, metric, park_subscriber, publish_one, success, Tmpfs};
use raftmq_e2e::{eventually, Broker, BrokerConfig};

/// Publishes ids `from..to` one at a time on `addr`, each retried until it
/// is acknowledged (0x88 is an honest "not now" while a node recovers, or
/// an election runs) or `limit` passes; returns those acknowledged.
fn publish_all(
    addr: std::net::SocketAddr,
    ids: std::ops::Range<u32>,
    limit: Duration,
) -> BTreeSet<u32> {
    let deadline = Instant::now() + limit;
    let mut acked = BTreeSet::new();
    for id in ids {
        while Instant::now() < deadline {
            if success(publish_one(addr, "d/full", id)) {
                acked.insert(id);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    acked
}

fn readyz(b: &Broker) -> (u16, String) {
    b.http_get("/readyz")
}

/// With the node's disk full and a write tried: it refuses what needs Raft
/// and says why, on `/readyz`, in its metrics.
fn see_refusals(b: &Broker, fs: &Tmpfs, id: u32) {
    assert!(
        fs.free() < 4096,
        "the tmpfs is full: {} bytes free",
        fs.free()
    );
    // A QoS 1 publish through the full node: its write (or its core, which
    // stopped on the failed write) refuses, honestly 0x88.
    let refused = eventually(Duration::from_secs(20), || {
        publish_one(b.tcp_addr(), "d/full", id) == Some(0x88)
    });
    assert!(
        refused,
        "a publish on the full node is refused with 0x88\n{}",
        b.logs()
    );
    let unready = eventually(Duration::from_secs(10), || {
        let (code, body) = readyz(b);
        code == 503 && body.contains("storage failing")
    });
    assert!(unready, "/readyz 503 with the reason: {:?}", readyz(b));
    let m = b.http_get("/metrics").1;
    assert_eq!(metric(&m, "raftmq_storage_healthy"), Some(0.0), "{m}");
    assert!(metric(&m, "raftmq_storage_errors_total").unwrap_or(0.0) >= 1.0);
    assert!(metric(&m, "raftmq_data_dir_free_bytes").unwrap_or(f64::MAX) < 65536.0);
    // A persistent session needs Raft too.
    let (_, ack) = RawClient::open(
        b.tcp_addr(),
        raw::connect(Protocol::V311, "persistent-while-full", false),
    );
    assert_ne!(ack.code, 0, "a persistent CONNECT is refused while full");
}

/// Frees the disk and waits for the node to be ready again on its own.
fn free_and_recover(b: &mut Broker, filler: &Path, pid: i32) -> Duration {
    let freed = Instant::now();
    std::fs::remove_file(filler).expect("free the tmpfs");
    let ready = eventually(Duration::from_secs(20), || readyz(b).0 == 200);
    assert!(
        ready,
        "ready again after space came back: {:?}\n{}",
        readyz(b),
        b.logs()
    );
    let took = freed.elapsed();
    assert!(
        b.running() && b.pid() == pid,
        "recovered in the same process"
    );
    let m = b.http_get("/metrics").1;
    assert_eq!(metric(&m, "raftmq_storage_healthy"), Some(1.0), "{m}");
    took
}

#[test]
fn a_single_node_on_a_full_disk_refuses_then_recovers_by_itself() {
    let fs = Tmpfs::mount("2m");
    let mut b = Broker::start(
        BrokerConfig::new()
            .sys_interval(1)
            .env("RAFTMQ_DATA_DIR", &fs.dir.display().to_string()),
    );
    let pid = b.pid();
    park_subscriber(b.tcp_addr(), "keeper", "d/full");
    let mut notices = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "sys", true)).0;
    notices.subscribe(1, "$SYS/broker/storage/healthy", QoS::AtMostOnce);
    let mut acked = publish_all(b.tcp_addr(), 0..50, Duration::from_secs(30));
    assert_eq!(acked.len(), 50);
    let filler = fs.fill();
    see_refusals(&b, &fs, 1000);
    let saw = |c: &mut RawClient, v: &[u8]| {
        c.recv_until(Duration::from_secs(10), |p| match p {
            Packet::Publish(p) if &p.payload[..] == v => Some(()),
            _ => None,
        })
        .is_some()
    };
    assert!(saw(&mut notices, b"0"), "$SYS notice: storage unhealthy");
    let took = free_and_recover(&mut b, &filler, pid);
    assert!(
        saw(&mut notices, b"1"),
        "$SYS notice: storage healthy again"
    );
    acked.extend(publish_all(b.tcp_addr(), 50..100, Duration::from_secs(30)));
    assert_eq!(acked.len(), 100, "writes succeed again");
    let got = drain_subscriber(b.tcp_addr(), "keeper", Duration::from_secs(3));
    let lost: Vec<&u32> = acked.difference(&got).collect();
    println!("single node: ready {took:.1?} after space came back; 0x88 while full; {} acknowledged, {} lost", acked.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // And it was all on disk: a restart finds the same.
    b.restart();
    assert!(matches!(
        RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "keeper", false))
            .1
            .code,
        0
    ));
}

/// Node `full` of three has its data_dir on the tmpfs.
fn three_nodes(fs: &Tmpfs, full: u64) -> Vec<Broker> {
    let dir = fs.dir.display().to_string();
    cluster::start_each(3, "", |id, c| {
        if id == full {
            c.env("RAFTMQ_DATA_DIR", &dir)
        } else {
            c
        }
    })
}

/// The state digest a node reports (`raftmq cluster digest --fresh`).
fn digest(b: &Broker, id: u64) -> String {
    let out = cluster::cli(&grpc_addr(b, id), &["digest", "--fresh"]).1;
    out.rsplit("digest ")
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn full_member(full: u64, leader: bool) {
    let fs = Tmpfs::mount("2m");
    let mut nodes = three_nodes(&fs, full);
    assert_eq!(
        wait_leader(&grpc_addr(&nodes[0], 1), None, Duration::from_secs(20)),
        Some(1)
    );
    // Node 3 is never the full one: clients stay there.
    let steady = nodes[2].tcp_addr();
    park_subscriber(steady, "keeper", "d/full");
    let mut acked = publish_all(steady, 0..50, Duration::from_secs(30));
    let pid = nodes[(full - 1) as usize].pid();
    // The full node finds out when it writes what these commit.
    let filler = fs.fill();
    acked.extend(publish_all(steady, 50..100, Duration::from_secs(60)));
    see_refusals(&nodes[(full - 1) as usize], &fs, 1000);
    if leader {
        let now = wait_leader(
            &grpc_addr(&nodes[2], 3),
            Some(full),
            Duration::from_secs(20),
        );
        assert!(
            now.is_some_and(|l| l != full),
            "the full leader gave up: {now:?}"
        );
    }
    acked.extend(publish_all(steady, 100..150, Duration::from_secs(60)));
    let took = free_and_recover(&mut nodes[(full - 1) as usize], &filler, pid);
    // It catches up and takes writes again.
    let again = nodes[(full - 1) as usize].tcp_addr();
    acked.extend(publish_all(again, 150..200, Duration::from_secs(60)));
    assert_eq!(acked.len(), 200, "every write acknowledged in the end");
    let got = drain_subscriber(steady, "keeper", Duration::from_secs(3));
    let lost: Vec<&u32> = acked.difference(&got).collect();
    println!(
        "3 nodes, node {full} ({}) full: ready {took:.1?} after space came back; {} \
         acknowledged, {} lost",
        if leader { "the leader" } else { "a follower" },
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let same = eventually(Duration::from_secs(10), || {
        let d: Vec<String> = (1..=3).map(|i| digest(&nodes[i - 1], i as u64)).collect();
        d.iter().all(|x| !x.is_empty() && *x == d[0])
    });
    let d: Vec<String> = (1..=3).map(|i| digest(&nodes[i - 1], i as u64)).collect();
    assert!(same, "every node holds the same state: {d:?}");
}

#[test]
fn a_follower_on_a_full_disk_refuses_then_recovers_and_catches_up() {
    full_member(2, false);
}

#[test]
fn a_leader_on_a_full_disk_gives_up_leadership_then_recovers() {
    full_member(1, true);
}
