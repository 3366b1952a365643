//! Several raftmq processes forming one Raft group on 127.0.0.x, driven
//! through the real `raftmq cluster` CLI, over mutual TLS with the
//! certificates `raftmq cluster certs` issues (as a real cluster would):
//! every node presents its own `raftmq://node/<id>` certificate and the CLI
//! the admin one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{broker_bin, run, Broker, BrokerConfig};

/// Node certificates are issued for ids 1..=MAX_NODE.
pub const MAX_NODE: u64 = 7;

/// A directory written by `raftmq cluster certs`.
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Runs the real `raftmq cluster certs --out DIR --nodes N --ip ...`.
    pub fn issue(dir: &Path, nodes: u64, ips: &[String]) -> Certs {
        let mut cmd = Command::new(broker_bin());
        cmd.args(["cluster", "certs", "--out"])
            .arg(dir)
            .args(["--nodes", &nodes.to_string()]);
        for ip in ips {
            cmd.args(["--ip", ip]);
        }
        let (code, out, err) = run(&mut cmd, Duration::from_secs(60));
        assert_eq!(code, Some(0), "raftmq cluster certs: {out}{err}");
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `[cluster]` lines for node `id`.
    pub fn node_lines(&self, id: u64) -> String {
        format!(
            "certfile = \"{}\"\nkeyfile = \"{}\"\ncafile = \"{}\"\n",
            self.file(&format!("node-{id}.crt")).display(),
            self.file(&format!("node-{id}.key")).display(),
            self.file("ca.crt").display()
        )
    }

    /// `raftmq cluster` flags presenting `stem`.crt/.key (`admin`, `node-2`).
    pub fn flags(&self, stem: &str) -> Vec<String> {
        vec![
            "--cafile".into(),
            self.file("ca.crt").display().to_string(),
            "--certfile".into(),
            self.file(&format!("{stem}.crt")).display().to_string(),
            "--keyfile".into(),
            self.file(&format!("{stem}.key")).display().to_string(),
        ]
    }
}

/// This test process's cluster certificates, issued on first use into
/// `$TMPDIR/raftmq-e2e-certs/<pid>` (directories of processes that are
/// gone are removed then).
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let root = std::env::temp_dir().join("raftmq-e2e-certs");
        remove_stale(&root);
        let dir = root.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let ips: Vec<String> = (1..=MAX_NODE).map(|i| format!("127.0.0.{i}")).collect();
        Certs::issue(&dir, MAX_NODE, &ips)
    })
}

/// Removes the certificate directories of test processes that have exited.
fn remove_stale(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().parse::<i32>().ok();
        // SAFETY: kill(2) with signal 0 only checks that the pid exists.
        let gone = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } != 0);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Raft timing for tests: elections start after 500–1000 ms of silence.
pub const ELECTION_TIMEOUT_MS: u64 = 500;

/// A node's config: id, gRPC on 127.0.0.<id> with its certificate, test
/// timing, plus `extra` lines for the `[cluster]` table.
pub fn node_config(id: u64, extra: &str) -> BrokerConfig {
    let tls = certs().node_lines(id);
    BrokerConfig::new().raw(&format!(
        "[cluster]\nnode_id = {id}\nbind = \"127.0.0.{id}:{{grpc}}\"\nadvertise = \"127.0.0.{id}:{{grpc}}\"\n\
         heartbeat_ms = 100\nelection_timeout_ms = {ELECTION_TIMEOUT_MS}\n{tls}{extra}"
    ))
}

pub fn grpc_addr(b: &Broker, id: u64) -> String {
    format!("127.0.0.{id}:{}", b.ports.grpc)
}

/// Runs `raftmq cluster --node <node> <args>` with the admin certificate;
/// (exit code, stdout+stderr).
pub fn cli(node: &str, args: &[&str]) -> (Option<i32>, String) {
    cli_with(node, &certs().flags("admin"), args)
}

/// [`cli`] with `tls` flags of the caller's choosing (none: plain text).
pub fn cli_with(node: &str, tls: &[String], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(broker_bin());
    cmd.arg("cluster")
        .arg("--node")
        .arg(node)
        .args(tls)
        .args(args);
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
