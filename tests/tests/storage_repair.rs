//! Repairing a damaged Raft log (`raftmq serve --repair-log`): never on a
//! single node at the cost of committed entries; on a member of a 3-node
//! cluster the log is cut at the bad record, the vote kept, and — since the
//! cut lost entries it knew as committed — the member waits like one with a
//! wiped volume until it is removed and added again, then is caught up by
//! the leader and serves everything acknowledged. Real files, real flips.

use std::time::Duration;

use raftmq_e2e::cluster::{self, cli, grpc_addr, status, wait_leader};
use raftmq_e2e::storage::{flip, publish_retained, records, retained, segments};
use raftmq_e2e::{eventually, Broker, BrokerConfig};

/// Flips a byte inside the middle record of the node's first segment;
/// returns (segment file name, record offset, record index).
fn damage_middle_record(b: &Broker) -> (String, usize, u64) {
    let seg = segments(&b.path("data"))[0].clone();
    let recs = records(&std::fs::read(&seg).unwrap());
    let r = recs[recs.len() / 2];
    flip(&seg, r.offset + r.len - 3, 0x40);
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    (name, r.offset, r.index)
}

fn names(log: &str, (file, offset, index): &(String, usize, u64)) -> bool {
    log.contains(file.as_str())
        && log.contains(&format!("byte {offset}"))
        && log.contains(&format!("log index {index}"))
}

#[test]
fn a_single_node_is_never_repaired_at_the_cost_of_committed_entries() {
    let mut b = Broker::start(BrokerConfig::new().env("RAFTMQ_CLUSTER__LOG_SEGMENT_BYTES", "2048"));
    let acked = publish_retained(b.tcp_addr(), "writer", 40);
    assert_eq!(acked.len(), 40, "every write acknowledged");
    std::thread::sleep(Duration::from_millis(300));
    b.kill9();
    let hurt = damage_middle_record(&b);
    let seg = segments(&b.path("data"))[0].clone();
    let before = std::fs::read(&seg).unwrap();
    let e = b
        .try_restart_with(&[])
        .expect_err("a damaged log refuses to start");
    let e = e.to_string();
    assert!(names(&e, &hurt), "the refusal names the record: {e}");
    assert!(
        e.contains("only voter") && e.contains("backup"),
        "says what to do: {e}"
    );
    let e = b
        .try_restart_with(&["--repair-log"])
        .expect_err("a single node is not repaired")
        .to_string();
    assert!(
        e.contains("Not repaired") && e.contains("only voter"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        before,
        "nothing on disk was changed"
    );
    assert_eq!(acked.len(), 40);
}

#[test]
fn a_member_with_a_damaged_log_is_repaired_on_request_and_caught_up_once_re_added() {
    let mut nodes = cluster::start(3, "log_segment_bytes = 2048\n");
    let n1 = grpc_addr(&nodes[0], 1);
    assert_eq!(wait_leader(&n1, None, Duration::from_secs(20)), Some(1));
    let mut acked = publish_retained(nodes[0].tcp_addr(), "writer", 40);
    assert_eq!(acked.len(), 40, "every write acknowledged");
    // Node 3 holds all of it before it is hurt.
    let n3 = grpc_addr(&nodes[2], 3);
    let applied = |node: &str| {
        cli(node, &["status"])
            .1
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    assert!(eventually(Duration::from_secs(10), || {
        let (a, b) = (applied(&n1), applied(&n3));
        !a.is_empty() && a.split(" snapshot").next() == b.split(" snapshot").next()
    }));
    nodes[2].kill9();
    let hurt = damage_middle_record(&nodes[2]);
    let e = nodes[2]
        .try_restart_with(&[])
        .expect_err("refused")
        .to_string();
    assert!(names(&e, &hurt), "the refusal names the record: {e}");
    assert!(e.contains("--repair-log"), "says what to do: {e}");
    nodes[2]
        .try_restart_with(&["--repair-log"])
        .expect("a member is repaired when asked");
    let n3 = grpc_addr(&nodes[2], 3);
    assert!(nodes[2].logs().contains("raft log repaired as asked"));
    // It lost entries it knew as committed: it stays out, visibly, and
    // does not disturb the group with campaigns (it would: its log still
    // lists it as a voter, and openraft 0.9 has no pre-vote).
    let (code, s) = cli(&n3, &["status"]);
    assert_eq!(code, Some(0), "{s}");
    assert!(s.contains("store: empty"), "waits like a wiped member: {s}");
    // Its elections are held: polled for 3 s, it never stands.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        let state = status(&n3).map(|s| s.1);
        assert!(
            !matches!(state.as_deref(), Some("candidate") | Some("leader")),
            "the repaired node campaigned: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Writes go on meanwhile (nodes 1 and 2 are a quorum).
    let more = publish_retained(nodes[0].tcp_addr(), "writer2", 50);
    assert_eq!(more.len(), 50, "writes go on without node 3");
    acked.extend(more);
    // The operator's move: remove it and add it again.
    let (code, out) = cli(&n1, &["remove", "--id", "3"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(&n1, &["add", "--id", "3", "--addr", &n3]);
    assert_eq!(code, Some(0), "{out}");
    let (code, s) = cli(&n3, &["status"]);
    assert_eq!(code, Some(0));
    assert!(s.contains("store: initialized"), "{s}");
    let got = retained(nodes[2].tcp_addr(), acked.len(), Duration::from_secs(20));
    assert_eq!(
        got, acked,
        "the repaired member serves everything acknowledged"
    );
}

/// A member whose snapshot is damaged does not load it: it sets the
/// snapshot and its log aside (keeping its vote), waits like a wiped member
/// until it is removed and added again, then gets a new snapshot from the
/// leader and serves everything acknowledged.
#[test]
fn a_member_with_a_damaged_snapshot_asks_the_leader_for_a_new_one() {
    let mut nodes = cluster::start(3, "snapshot_logs = 20\nkeep_logs = 5\n");
    let n1 = grpc_addr(&nodes[0], 1);
    assert_eq!(wait_leader(&n1, None, Duration::from_secs(20)), Some(1));
    let acked = publish_retained(nodes[0].tcp_addr(), "writer", 60);
    assert_eq!(acked.len(), 60, "every write acknowledged");
    let snap = nodes[2].path("data/raft/snapshot/snapshot.bin");
    assert!(
        eventually(Duration::from_secs(10), || snap.exists()),
        "node 3 took a snapshot"
    );
    std::thread::sleep(Duration::from_millis(500));
    nodes[2].kill9();
    let len = std::fs::metadata(&snap).unwrap().len() as usize;
    flip(&snap, len - 40, 0x08); // in the state, before its checksum
    nodes[2]
        .try_restart_with(&[])
        .expect("a member starts, without the snapshot");
    let logs = nodes[2].logs();
    assert!(
        logs.contains("raft snapshot damaged") && logs.contains("snapshot.bin"),
        "{logs}"
    );
    assert!(
        nodes[2].path("data/raft/damaged/snapshot.bin").exists(),
        "kept aside"
    );
    assert!(
        nodes[2].path("data/raft/log/vote.meta").exists(),
        "the vote stays"
    );
    let n3 = grpc_addr(&nodes[2], 3);
    let (_, s) = cli(&n3, &["status"]);
    assert!(s.contains("store: empty"), "waits to be added again: {s}");
    let (code, out) = cli(&n1, &["remove", "--id", "3"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(&n1, &["add", "--id", "3", "--addr", &n3]);
    assert_eq!(code, Some(0), "{out}");
    let got = retained(nodes[2].tcp_addr(), acked.len(), Duration::from_secs(20));
    assert_eq!(
        got, acked,
        "node 3 serves everything from the leader's snapshot"
    );
}
