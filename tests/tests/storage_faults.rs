//! EIO where a full disk cannot reach: the `raftmq-faulty` binary (the
//! broker with the `fault-injection` feature) fails the k-th write or fsync
//! of the log, of the vote/committed files or of a snapshot
//! (`FAULT_INJECTION`). The node must stop claiming health, refuse writes
//! honestly, rebuild its Raft core from disk in the same process, and lose
//! nothing acknowledged — on disk too (a restart finds everything). And a
//! snapshot damaged on its way to a member is refused and sent again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftmq_e2e::cluster::{self, cli, grpc_addr, wait_leader};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::storage::{metric, retained};
use raftmq_e2e::{eventually, faulty_bin, Broker, BrokerConfig};

use raftmq::codec::{Packet, Protocol, QoS};

/// Writes `r/<i>` = `v<i>` for `ids`, one at a time, each retried until it
/// is acknowledged; returns what was, and how many answers were 0x88.
fn write_through(b: &Broker, ids: std::ops::Range<u32>) -> (BTreeMap<String, Vec<u8>>, usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut acked = BTreeMap::new();
    let mut refused = 0;
    let (mut c, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "w", true));
    let mut pid = 1u16;
    for i in ids {
        let (topic, payload) = (format!("r/{i}"), format!("v{i}").into_bytes());
        while Instant::now() < deadline {
            pid = pid % 60000 + 1;
            c.publish(&topic, &payload, QoS::AtLeastOnce, true, pid);
            // A batch may wait up to its 5 s commit timeout for a leader.
            let code = c.recv_until(Duration::from_secs(15), |p| match p {
                Packet::PubAck(a) if a.packet_id == pid => Some(a.code),
                _ => None,
            });
            match code {
                // 0x10: no matching subscribers, a success.
                Some(c) if c < 0x80 => {
                    acked.insert(topic.clone(), payload.clone());
                    break;
                }
                Some(_) => {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                None => panic!("no PUBACK for {topic} in 15 s:\n{}", b.logs()),
            }
        }
    }
    (acked, refused)
}

/// One fault rule on a single node: it is hit, the node says so and
/// recovers in the same process, and everything acknowledged is served, and
/// is served again after a restart (it was on disk).
fn single_node_fault(rule: &str, extra_env: &[(&str, &str)]) {
    let mut config = BrokerConfig::new()
        .binary(faulty_bin())
        .env("FAULT_INJECTION", rule);
    for (k, v) in extra_env {
        config = config.env(k, v);
    }
    let mut b = Broker::start(config);
    let pid = b.pid();
    // Watch /readyz while the load runs: it must say 503 with the reason.
    let url = b.http_url("/readyz");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, body) = raftmq_e2e::http_get(&url, None);
                if code == 503 && body.contains("storage failing") && seen.is_none() {
                    seen = Some(body);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    let (acked, refused) = write_through(&b, 0..120);
    let ready = eventually(Duration::from_secs(20), || b.http_get("/readyz").0 == 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let unready = watcher.join().expect("watcher");
    let logs = b.logs();
    assert!(
        logs.contains("fault injected"),
        "the fault was hit:\n{logs}"
    );
    assert!(
        unready.is_some(),
        "/readyz said 503 with the reason while writes failed"
    );
    assert!(ready, "ready again: {:?}", b.http_get("/readyz"));
    assert!(logs.contains("raft core rebuilt from disk"), "{logs}");
    assert!(
        b.running() && b.pid() == pid,
        "recovered in the same process"
    );
    let m = b.http_get("/metrics").1;
    assert!(
        metric(&m, "raftmq_storage_errors_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "raftmq_storage_healthy"), Some(1.0));
    assert_eq!(acked.len(), 120, "every write acknowledged in the end");
    let got = retained(b.tcp_addr(), acked.len(), Duration::from_secs(5));
    assert_eq!(got, acked, "everything acknowledged is served");
    b.restart();
    let got = retained(b.tcp_addr(), acked.len(), Duration::from_secs(5));
    assert_eq!(got, acked, "and was on disk: a restart serves it too");
    println!(
        "{rule}: {refused} answers 0x88 while it failed; 0 of {} lost",
        acked.len()
    );
}

#[test]
fn an_eio_on_a_log_fsync_is_survived_in_process() {
    // The 40th to 42nd fsyncs of the log fail: the core stops, is rebuilt,
    // fails again on its first write, and so on, three times.
    single_node_fault("log-sync@40+3", &[]);
}

#[test]
fn an_eio_on_a_log_write_is_survived_in_process() {
    single_node_fault("log-write@30+2", &[]);
}

#[test]
fn an_eio_on_the_vote_or_committed_file_is_survived_in_process() {
    single_node_fault("meta-write@25+2", &[]);
}

#[test]
fn an_eio_writing_a_snapshot_is_survived_in_process() {
    single_node_fault(
        "snapshot-write@1+2",
        &[
            ("RAFTMQ_CLUSTER__SNAPSHOT_LOGS", "30"),
            ("RAFTMQ_CLUSTER__KEEP_LOGS", "5"),
        ],
    );
}

/// Node 1 sends its snapshot to a new member with the first byte of a chunk
/// flipped: the member refuses it (its checksum), the leader sends it again,
/// and the member ends with the leader's state.
#[test]
fn a_snapshot_damaged_on_the_wire_is_refused_and_sent_again() {
    let extra = "snapshot_logs = 20\nkeep_logs = 5\n";
    let leader = Broker::start(
        cluster::node_config(1, extra)
            .binary(faulty_bin())
            .env("FAULT_INJECTION", "snapshot-send-flip@1"),
    );
    let n1 = grpc_addr(&leader, 1);
    assert_eq!(wait_leader(&n1, None, Duration::from_secs(20)), Some(1));
    let (acked, _) = write_through(&leader, 0..60);
    // The log before the snapshot is gone: a new member needs the snapshot.
    let member = Broker::start(cluster::node_config(2, extra));
    let n2 = grpc_addr(&member, 2);
    let (code, out) = cli(&n1, &["add", "--id", "2", "--addr", &n2]);
    assert_eq!(code, Some(0), "{out}");
    let refused = eventually(Duration::from_secs(20), || {
        member.logs().contains("snapshot from the leader refused")
    });
    assert!(
        refused,
        "the damaged snapshot was refused:\n{}",
        member.logs()
    );
    assert!(leader.logs().contains("fault injected"));
    let got = retained(member.tcp_addr(), acked.len(), Duration::from_secs(20));
    assert_eq!(got, acked, "the member installed the snapshot sent again");
}
