//! Raft figures on `/metrics`: term, leader, log indexes, replication lag,
//! apply latency, leader changes and snapshots.

use openraft::ServerState;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::types::{Node, NodeId};

#[derive(Clone)]
pub struct RaftStats {
    pub term: IntGauge,
    pub leader_id: IntGauge,
    pub is_leader: IntGauge,
    pub last_log_index: IntGauge,
    pub applied_index: IntGauge,
    pub replication_lag: IntGaugeVec,
    pub apply_latency: Histogram,
    pub leader_changes: IntCounter,
    pub snapshots: IntCounterVec,
    pub snapshot_bytes: IntGauge,
    pub voters: IntGauge,
    /// Publishes sent to / received from other nodes, by peer.
    pub forwarded: IntCounterVec,
    /// Publishes a peer could not take (queue full, peer unreachable).
    pub forward_dropped: IntCounterVec,
    pub nodes_down: IntGauge,
    /// 1 while the cluster port serves plain text beyond loopback.
    pub insecure_plaintext: IntGauge,
    /// Cluster calls refused for the caller's identity, by RPC and code.
    pub refused: IntCounterVec,
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(Opts::new(name, help)).expect("static metric options")
}

impl Default for RaftStats {
    fn default() -> Self {
        RaftStats {
            term: gauge("raftmq_raft_term", "Current Raft term"),
            leader_id: gauge(
                "raftmq_raft_leader_id",
                "Node id of the current leader, 0 when none",
            ),
            is_leader: gauge("raftmq_raft_is_leader", "1 on the leader"),
            last_log_index: gauge(
                "raftmq_raft_last_log_index",
                "Index of the last entry in the local log",
            ),
            applied_index: gauge(
                "raftmq_raft_applied_index",
                "Index of the last entry applied to the state machine",
            ),
            replication_lag: IntGaugeVec::new(
                Opts::new(
                    "raftmq_raft_replication_lag",
                    "Entries a follower is behind the leader's log (leader only)",
                ),
                &["follower"],
            )
            .expect("static metric options"),
            apply_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "raftmq_raft_apply_seconds",
                    "Time to apply a batch of committed entries",
                )
                .buckets(vec![
                    0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
                ]),
            )
            .expect("static metric options"),
            leader_changes: IntCounter::with_opts(Opts::new(
                "raftmq_raft_leader_changes_total",
                "Times this node saw the leader change",
            ))
            .expect("static metric options"),
            snapshots: IntCounterVec::new(
                Opts::new(
                    "raftmq_raft_snapshots_total",
                    "Snapshots built or installed",
                ),
                &["kind"],
            )
            .expect("static metric options"),
            snapshot_bytes: gauge("raftmq_raft_snapshot_bytes", "Size of the last snapshot"),
            voters: gauge("raftmq_raft_voters", "Voters in the current membership"),
            forwarded: IntCounterVec::new(
                Opts::new(
                    "raftmq_forwarded_messages_total",
                    "Publishes forwarded between nodes",
                ),
                &["direction", "peer"],
            )
            .expect("static metric options"),
            forward_dropped: IntCounterVec::new(
                Opts::new(
                    "raftmq_forward_dropped_total",
                    "Publishes not forwarded: the peer's queue was full or it was unreachable",
                ),
                &["peer"],
            )
            .expect("static metric options"),
            nodes_down: gauge(
                "raftmq_cluster_nodes_down",
                "Members the leader cannot reach (leader only)",
            ),
            insecure_plaintext: gauge(
                "raftmq_cluster_insecure_plaintext",
                "1 while the cluster port serves plain text, unauthenticated, beyond loopback ([cluster] insecure_plaintext)",
            ),
            refused: IntCounterVec::new(
                Opts::new(
                    "raftmq_cluster_refused_total",
                    "Cluster calls refused for who made them (code: unauthenticated, permission_denied)",
                ),
                &["rpc", "code"],
            )
            .expect("static metric options"),

        }
    }
}

impl RaftStats {
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.term.clone()))?;
        registry.register(Box::new(self.leader_id.clone()))?;
        registry.register(Box::new(self.is_leader.clone()))?;
        registry.register(Box::new(self.last_log_index.clone()))?;
        registry.register(Box::new(self.applied_index.clone()))?;
        registry.register(Box::new(self.replication_lag.clone()))?;
        registry.register(Box::new(self.apply_latency.clone()))?;
        registry.register(Box::new(self.leader_changes.clone()))?;
        registry.register(Box::new(self.snapshots.clone()))?;
        registry.register(Box::new(self.snapshot_bytes.clone()))?;
        registry.register(Box::new(self.voters.clone()))?;
        registry.register(Box::new(self.forwarded.clone()))?;
        registry.register(Box::new(self.forward_dropped.clone()))?;
        registry.register(Box::new(self.nodes_down.clone()))?;
        registry.register(Box::new(self.insecure_plaintext.clone()))?;
        registry.register(Box::new(self.refused.clone()))?;
        Ok(())
    }

    pub fn snapshot_built(&self, bytes: usize) {
        self.snapshots.with_label_values(&["built"]).inc();
        self.snapshot_bytes.set(bytes as i64);
    }

    pub fn snapshot_installed(&self, bytes: usize) {
        self.snapshots.with_label_values(&["installed"]).inc();
        self.snapshot_bytes.set(bytes as i64);
    }

    /// Copies one openraft metrics reading into the gauges.
    pub fn observe(&self, m: &openraft::RaftMetrics<NodeId, Node>) {
        self.term.set(m.current_term as i64);
        let leader = m.current_leader.unwrap_or(0) as i64;
        if leader != self.leader_id.get() && leader != 0 {
            self.leader_changes.inc();
        }
        self.leader_id.set(leader);
        self.is_leader
            .set(i64::from(m.state == ServerState::Leader));
        let last = m.last_log_index.unwrap_or(0);
        self.last_log_index.set(last as i64);
        self.applied_index
            .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
        self.voters
            .set(m.membership_config.membership().voter_ids().count() as i64);
        self.replication_lag.reset();
        if let Some(r) = &m.replication {
            for (id, matched) in r {
                if *id == m.id {
                    continue;
                }
                let lag = last.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
                self.replication_lag
                    .with_label_values(&[&id.to_string()])
                    .set(lag as i64);
            }
        }
    }
}
