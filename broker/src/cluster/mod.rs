//! The cluster: one Raft group (openraft) over gRPC (tonic) that owns the
//! broker's replicated state on disk.
//!
//! A single node is a one-member group: `raftmq serve` keeps retained
//! messages and persistent sessions across restarts with no extra setup.
//! Bootstrap rule: node 1 initialises a new cluster when its
//! store is empty; every other node waits to be added through `Admin`.

#![allow(clippy::result_large_err)]
// openraft's error types (StorageError, RPCError) are large by design and
// its traits require them; boxing ours would not shrink openraft's.

mod auth;
pub mod certs;
pub mod cli;
mod convert;
pub mod fault;
mod forward;
pub mod health;
pub mod insecure;
pub mod liveness;
pub mod log_file;
mod log_repair;
mod log_scan;
mod log_store;
mod meta_record;
pub mod metrics;
mod network;
mod peer;
mod seam;
mod service;
mod snapshot_file;
mod snapshot_inbox;
mod snapshot_stream;
mod standing;
mod state_machine;
mod storage;
mod supervisor;
pub mod tls;
mod types;
mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::{BasicNode, SnapshotPolicy};
use raftmq_proto::v1::admin_server::AdminServer;
use raftmq_proto::v1::forward_server::ForwardServer;
use raftmq_proto::v1::raft_server::RaftServer;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::engine::Broker;

pub use metrics::RaftStats;
pub use seam::RaftSeam;
pub use state_machine::Applied;
pub use supervisor::RaftHandle;
pub use types::Raft;

/// A started cluster node; [`Cluster::attach`] connects it to the engine.
/// This node's part in the Raft group, as [`Cluster::standing`] tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// This node leads (and its core runs).
    pub leads: bool,
    /// The voters of the membership in force.
    pub voters: std::collections::BTreeSet<u64>,
}

pub struct Cluster {
    /// The node's Raft core (replaced when one stops on a storage error).
    pub raft: RaftHandle,
    pub health: Arc<health::StorageHealth>,
    /// Set on an orderly stop: the supervisor then lets the core go.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    supervisor: tokio::task::JoinHandle<()>,
    pub seam: Arc<RaftSeam>,
    pub stats: RaftStats,
    pub node_id: u64,
    pub grpc_addr: std::net::SocketAddr,
    applied: Option<mpsc::UnboundedReceiver<Applied>>,
    net: network::Network,
    /// The engine, for the Forward service (set by `attach`).
    engine: Arc<std::sync::OnceLock<Arc<Broker>>>,
    down_after: Duration,
    /// The Admin service's handle, for this node's own leadership transfer.
    admin: service::AdminService,
}

/// The address peers use for this node: configured, or `HOSTNAME:port`.
fn advertise(config: &Config) -> String {
    if !config.cluster.advertise.is_empty() {
        return config.cluster.advertise.clone();
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "127.0.0.1".into());
    format!("{host}:{}", config.cluster.bind_addr().port())
}

/// The peers node 1 asks before it bootstraps: configured, or, for a
/// StatefulSet pod (`<set>-0.<rest>:port`), its next six siblings.
fn bootstrap_peers(c: &crate::config::ClusterConfig, me: &str) -> Vec<String> {
    if !c.peers.is_empty() {
        return c.peers.iter().filter(|p| *p != me).cloned().collect();
    }
    // `<pod>[.<domain>]:<port>`: the pod is the first label of the host.
    let cut = me.find(['.', ':']).unwrap_or(me.len());
    let (pod, rest) = me.split_at(cut);
    let Some(set) = pod.strip_suffix("-0") else {
        return Vec::new();
    };
    (1..=6).map(|k| format!("{set}-{k}{rest}")).collect()
}

/// The first of `peers` whose store belongs to a cluster, asked in
/// parallel, two seconds at most. Unreachable peers (not created yet, or
/// down) count as knowing none.
async fn existing_cluster(net: &network::Network, peers: &[String]) -> Option<String> {
    let asks = peers.iter().map(|peer| async move {
        let channel = net.channel(peer).ok()?;
        let mut client = raftmq_proto::v1::admin_client::AdminClient::new(channel);
        let status = tokio::time::timeout(
            Duration::from_secs(2),
            client.status(raftmq_proto::v1::StatusRequest {}),
        )
        .await
        .ok()?
        .ok()?
        .into_inner();
        (status.initialized && status.state != "removed").then(|| peer.clone())
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .next()
}

/// openraft's settings, from `[cluster]`.
fn raft_config(c: &crate::config::ClusterConfig) -> anyhow::Result<openraft::Config> {
    openraft::Config {
        cluster_name: "raftmq".into(),
        heartbeat_interval: c.heartbeat_ms,
        election_timeout_min: c.election_timeout_ms,
        election_timeout_max: c.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_logs),
        max_in_snapshot_log_to_keep: c.keep_logs,
        snapshot_max_chunk_size: c.snapshot_chunk_bytes,
        ..Default::default()
    }
    .validate()
    .context("cluster timing settings")
}

/// Whether node 1, its store empty, makes a new cluster: not when a peer
/// already belongs to one. Then node 1's volume was lost, and it must
/// wait to be removed and re-added like any fresh node, never take part
/// under its old identity (it may have voted and acknowledged entries it
/// no longer holds).
async fn makes_new_cluster(config: &Config, net: &network::Network) -> bool {
    let peers = bootstrap_peers(&config.cluster, &advertise(config));
    match existing_cluster(net, &peers).await {
        Some(peer) => {
            tracing::warn!(
                %peer,
                "empty raft store on node 1, but {peer} already belongs to a cluster: \
                 waiting to be re-added instead of making a new one"
            );
            false
        }
        None => true,
    }
}

/// Serves the cluster's gRPC services on `listener` (mutual TLS when
/// `peer_tls` is set; refused handshakes counted in `stats`).
fn serve(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    peer_tls: Option<&tls::PeerTls>,
    stats: &RaftStats,
    config: &Config,
    node_id: u64,
) -> anyhow::Result<()> {
    let grpc_addr = listener.local_addr()?;
    let acceptor = peer_tls.map(|t| t.acceptor()).transpose()?;
    let incoming = peer::incoming(listener, acceptor.map(Arc::new), stats.refused.clone());
    tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!("cluster gRPC server stopped: {e}");
        }
    });
    tracing::info!(
        node_id,
        addr = %grpc_addr,
        tls = peer_tls.is_some(),
        "cluster gRPC listening"
    );
    if config.cluster.plaintext_exposed() {
        stats.insecure_plaintext.set(1);
        insecure::spawn_warnings(grpc_addr);
    }
    Ok(())
}

impl Cluster {
    /// Opens the node's log and snapshot under the data dir, replays what
    /// was committed, serves gRPC, and bootstraps a new cluster on node 1.
    pub async fn start(config: &Config, node_id: u64) -> anyhow::Result<Cluster> {
        let c = &config.cluster;
        let dir = config.data_dir.join("raft");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let raft_config = raft_config(c)?;

        let stats = RaftStats::default();
        let health = Arc::new(health::StorageHealth::new(&config.data_dir));
        let storage::Opened {
            log,
            machine,
            applied: rx,
        } = storage::open(config, node_id, &stats, &health)?;
        let fresh = !log.holds_state().context("raft log")? && !machine.has_snapshot();
        let peer_tls = tls::PeerTls::from_config(c, node_id)?;
        let net = network::Network::new(peer_tls.clone());
        let bootstrap = fresh && node_id == 1 && makes_new_cluster(config, &net).await;
        // Any other fresh node waits until a leader adds it (see Standing).
        let standing = Arc::new(standing::Standing::open(&dir, fresh && !bootstrap));
        if fresh && !bootstrap {
            tracing::info!(
                node_id,
                "empty raft store: waiting to be added to a cluster"
            );
        }
        let raft_config = Arc::new(raft_config);
        let first = Raft::new(
            node_id,
            raft_config.clone(),
            net.clone(),
            log.clone(),
            machine.clone(),
        )
        .await
        .context("raft start")?;
        let (raft, raft_tx) = RaftHandle::new(first);

        let bind = c.bind_addr();
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("cluster gRPC: cannot bind {bind}"))?;
        let grpc_addr = listener.local_addr()?;
        let gate = types::WriteGate::default();
        let guard = auth::Guard {
            raft: raft.clone(),
            refused: stats.refused.clone(),
        };
        let raft_svc = RaftServer::new(service::RaftService {
            raft: raft.clone(),
            gate: gate.clone(),
            node_id,
            standing: standing.clone(),
            inbox: Arc::default(),
            guard: guard.clone(),
        })
        .max_decoding_message_size(network::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(network::MAX_MESSAGE_BYTES);
        let engine = Arc::new(std::sync::OnceLock::new());
        let admin = service::AdminService {
            raft: raft.clone(),
            machine: machine.clone(),
            net: net.clone(),
            gate: gate.clone(),
            log: log.clone(),
            engine: engine.clone(),
            standing: standing.clone(),
            guard: guard.clone(),
        };
        standing.hold_elections_if_out(&raft.get(), fresh);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let supervisor = {
            let standing = standing.clone();
            supervisor::spawn(
                raft_tx,
                supervisor::Rebuild {
                    node_id,
                    config: raft_config,
                    net: net.clone(),
                    raft_dir: dir.clone(),
                    log,
                    machine: machine.clone(),
                    health: health.clone(),
                    standing: Box::new(move |r| standing.hold_elections_if_out(r, fresh)),
                    stopping: stopping.clone(),
                },
            )
        };
        let admin_svc = AdminServer::new(admin.clone());
        let forward_svc = ForwardServer::new(forward::ForwardService {
            broker: engine.clone(),
            stats: stats.clone(),
            guard,
        })
        .max_decoding_message_size(network::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(network::MAX_MESSAGE_BYTES);
        let router = tonic::transport::Server::builder()
            .add_service(raft_svc)
            .add_service(admin_svc)
            .add_service(forward_svc);
        serve(router, listener, peer_tls.as_ref(), &stats, config, node_id)?;

        if bootstrap && !raft.get().is_initialized().await? {
            let addr = advertise(config);
            tracing::info!(%addr, "empty store on node 1: initialising a new cluster");
            raft.get()
                .initialize(BTreeMap::from([(node_id, BasicNode::new(addr))]))
                .await
                .context("raft initialise")?;
        }

        let seam = Arc::new(RaftSeam::start(
            raft.clone(),
            node_id,
            net.clone(),
            machine,
            gate,
            c.commit_deadline(),
        ));
        Ok(Cluster {
            raft,
            health,
            stopping,
            supervisor,
            seam,
            stats,
            node_id,
            grpc_addr,
            applied: Some(rx),
            net,
            engine,
            down_after: liveness::down_after(c.election_timeout_ms),
            admin,
        })
    }

    /// Rebuilds the engine from the replicated state, then keeps it in step
    /// with what other nodes commit and with the leader's presence.
    pub fn attach(&mut self, broker: &Arc<Broker>) -> anyhow::Result<()> {
        self.stats
            .register(&broker.stats.registry)
            .context("raft metrics")?;
        let Some(mut applied) = self.applied.take() else {
            anyhow::bail!("cluster already attached");
        };
        let forwarder = forward::Forwarder::new(
            self.node_id,
            self.raft.clone(),
            self.net.clone(),
            self.stats.clone(),
        );
        if broker
            .cluster
            .forwarder
            .set(Arc::new(forward::ForwardHandle(forwarder)))
            .is_err()
        {
            anyhow::bail!("cluster already attached");
        }
        // What was replayed at start is in the snapshot below; events up
        // to its index are skipped as they come.
        broker.restore(crate::state::StateSeam::snapshot(self.seam.as_ref()), true);
        {
            let broker = broker.clone();
            tokio::spawn(async move {
                while let Some(a) = applied.recv().await {
                    match a {
                        Applied::Batch { index, events } => broker.on_committed(index, events),
                        Applied::Reset(state) => broker.restore(*state, false),
                        Applied::Upto(index) => broker.followed_to(index),
                    }
                }
            });
        }
        let _ = self.engine.set(broker.clone());
        liveness::spawn(
            self.raft.clone(),
            self.net.clone(),
            broker.clone(),
            self.stats.clone(),
            self.down_after,
        );
        watch::spawn_leader(
            self.raft.clone(),
            self.admin.standing.clone(),
            self.stats.clone(),
            broker.clone(),
        );
        self.health
            .register(&broker.stats.registry)
            .context("storage metrics")?;
        let _ = broker.health.storage.set(self.health.clone());
        watch::spawn_storage_notices(self.health.clone(), broker.clone());
        Ok(())
    }

    /// Whether this node leads the cluster and who votes, kept up to date
    /// (the leader places the bridges: see `bridge/claim.rs`). Follows the
    /// current Raft core, also after the supervisor replaced it.
    pub fn standing(&self) -> tokio::sync::watch::Receiver<Standing> {
        let (tx, rx) = tokio::sync::watch::channel(Standing::default());
        let raft = self.raft.clone();
        let me = self.node_id;
        tokio::spawn(async move {
            loop {
                let now = {
                    let m = raft.get().metrics().borrow().clone();
                    Standing {
                        leads: m.current_leader == Some(me) && m.running_state.is_ok(),
                        voters: m.membership_config.membership().voter_ids().collect(),
                    }
                };
                tx.send_if_modified(|v| {
                    let changed = *v != now;
                    *v = now;
                    changed
                });
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        rx
    }

    /// Before this node stops: if it leads, hands leadership to the voter
    /// that holds most of its log, so the group does not sit out an
    /// election timeout. Gives up (the group then elects as usual) when the
    /// target has not caught up, or not won, within `limit` each.
    pub async fn hand_over_leadership(&self, limit: Duration) {
        let m = self.raft.get().metrics().borrow().clone();
        if m.current_leader != Some(self.node_id) {
            return;
        }
        let membership = m.membership_config.membership();
        let matched = |id: u64| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).copied().flatten())
                .map(|l| l.index)
        };
        let Some(target) = membership
            .voter_ids()
            .filter(|id| *id != self.node_id)
            .max_by_key(|id| matched(*id))
        else {
            return;
        };
        let started = std::time::Instant::now();
        match self.admin.transfer(target, limit).await {
            Ok(msg) => tracing::info!(
                target,
                ms = started.elapsed().as_millis() as u64,
                "leadership handed over: {msg}"
            ),
            Err(e) => tracing::warn!(target, "leadership not handed over: {}", e.message()),
        }
    }

    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.supervisor.abort();
        if let Err(e) = self.raft.get().shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bootstrap_peers;
    use crate::config::ClusterConfig;

    #[test]
    fn a_statefulset_pod_0_asks_its_siblings() {
        let c = ClusterConfig::default();
        let peers = bootstrap_peers(&c, "mq-0.mq-headless.ns.svc:7100");
        assert_eq!(peers.len(), 6);
        assert_eq!(peers[0], "mq-1.mq-headless.ns.svc:7100");
        assert_eq!(peers[5], "mq-6.mq-headless.ns.svc:7100");
        assert_eq!(bootstrap_peers(&c, "mq-0:7100")[1], "mq-2:7100");
    }

    #[test]
    fn configured_peers_win_and_other_names_ask_nobody() {
        let mut c = ClusterConfig::default();
        assert!(bootstrap_peers(&c, "127.0.0.1:7101").is_empty());
        assert!(bootstrap_peers(&c, "mq-10.x:7100").is_empty());
        c.peers = vec!["127.0.0.1:7101".into(), "127.0.0.2:7102".into()];
        assert_eq!(
            bootstrap_peers(&c, "127.0.0.1:7101"),
            vec!["127.0.0.2:7102"]
        );
    }
}
