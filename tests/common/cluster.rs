//! Several raftmq processes forming one Raft group on 127.0.0.x, driven
//! through the real `raftmq cluster` CLI.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{broker_bin, run, Broker, BrokerConfig};

/// Raft timing for tests: elections start after 500–1000 ms of silence.
pub const ELECTION_TIMEOUT_MS: u64 = 500;

/// A node's config: id, gRPC on 127.0.0.<id>, test timing, plus `extra`
/// lines for the `[cluster]` table.
pub fn node_config(id: u64, extra: &str) -> BrokerConfig {
    BrokerConfig::new().raw(&format!(
        "[cluster]\nnode_id = {id}\nbind = \"127.0.0.{id}:{{grpc}}\"\nadvertise = \"127.0.0.{id}:{{grpc}}\"\n\
         heartbeat_ms = 100\nelection_timeout_ms = {ELECTION_TIMEOUT_MS}\n{extra}"
    ))
}

pub fn grpc_addr(b: &Broker, id: u64) -> String {
    format!("127.0.0.{id}:{}", b.ports.grpc)
}

/// Runs `raftmq cluster --node <node> <args>`; (exit code, stdout+stderr).
pub fn cli(node: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(broker_bin());
    cmd.arg("cluster").arg("--node").arg(node).args(args);
    let (code, out, err) = run(&mut cmd, Duration::from_secs(90));
    (code, format!("{out}{err}"))
}

/// What `raftmq cluster status` says: (node id, state, leader).
pub fn status(node: &str) -> Option<(u64, String, Option<u64>)> {
    let (code, out) = cli(node, &["status"]);
    if code != Some(0) {
        return None;
    }
    // "node 2 is follower in term 3; leader: 1"
    let first = out.lines().next()?;
    let mut words = first.split_whitespace();
    let id = words.nth(1)?.parse().ok()?;
    let state = words.nth(1)?.to_string();
    let leader = first.rsplit(": ").next()?.trim().parse().ok();
    Some((id, state, leader))
}

/// Waits until `node` reports a leader other than `not`; returns it.
pub fn wait_leader(node: &str, not: Option<u64>, timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some((_, _, Some(l))) = status(node) {
            if Some(l) != not {
                return Some(l);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Starts node 1 (which bootstraps) and nodes 2..=n, adding each as a
/// voter through node 1.
pub fn start(n: u64, extra: &str) -> Vec<Broker> {
    start_each(n, extra, |_, c| c)
}

/// [`start`], with `edit` changing each node's config (by node id) first.
pub fn start_each(
    n: u64,
    extra: &str,
    edit: impl Fn(u64, BrokerConfig) -> BrokerConfig,
) -> Vec<Broker> {
    let mut nodes = vec![Broker::start(edit(1, node_config(1, extra)))];
    let first = grpc_addr(&nodes[0], 1);
    assert_eq!(
        wait_leader(&first, None, Duration::from_secs(20)),
        Some(1),
        "node 1 leads its new cluster"
    );
    for id in 2..=n {
        let b = Broker::start(edit(id, node_config(id, extra)));
        let addr = grpc_addr(&b, id);
        let (code, out) = cli(&first, &["add", "--id", &id.to_string(), "--addr", &addr]);
        assert_eq!(code, Some(0), "add node {id}: {out}");
        nodes.push(b);
    }
    nodes
}
