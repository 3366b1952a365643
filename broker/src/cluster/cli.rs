//! `raftmq cluster ...`: status and membership through a node's `Admin`
//! service. Membership calls are sent to the leader, found through the
//! node named on the command line.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use raftmq_proto::v1 as pb;
use raftmq_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use super::network::endpoint;
use super::tls::PeerTls;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show the node's Raft state, the leader and every member.
    Status,
    /// Add a node: as a learner that catches up, then (unless --learner)
    /// as a voter.
    Add {
        /// The new node's id (StatefulSet ordinal + 1).
        #[arg(long)]
        id: u64,
        /// The new node's gRPC address, host:port.
        #[arg(long)]
        addr: String,
        /// Leave it a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter.
    Promote {
        #[arg(long)]
        id: u64,
    },
    /// Remove a node from the voters and learners.
    Remove {
        #[arg(long)]
        id: u64,
    },
    /// Make another node the leader.
    TransferLeader {
        #[arg(long)]
        id: u64,
    },
    /// Hand the node's clients to other nodes (before the node is removed
    /// or stopped): it stops being ready, refuses new connections, and
    /// disconnects every client (MQTT 5: DISCONNECT 0x9C Use another
    /// server). Sent to the node named by --node itself, not the leader.
    Drain {
        /// MQTT 5 Server Reference the clients are sent to (e.g. the
        /// client Service's host name); none when empty.
        #[arg(long, default_value = "")]
        server_reference: String,
        /// How long to wait for the clients to be gone (0: the node's
        /// default, 10 s).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u32,
    },
    /// Summarise the node's copy of the replicated state, with a digest
    /// that is equal on nodes holding equal states.
    Digest {
        /// Read at the leader's read index (linearizable): every write
        /// committed before the call is included.
        #[arg(long)]
        fresh: bool,
    },
    /// Issue the cluster's certificates into a directory (no node is
    /// contacted): ca.crt/ca.key, node-<id>.crt/.key for ids 1..N (each
    /// names its node, raftmq://node/<id>, and covers localhost, 127.0.0.1,
    /// ::1 and the --dns/--ip names) and admin.crt/.key for this CLI
    /// (raftmq://admin/<name>). A CA already there is kept and signs the
    /// new certificates, so run it again with a larger --nodes to add one.
    Certs {
        /// The directory to write to (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
        /// How many node certificates: node ids 1..=N.
        #[arg(long)]
        nodes: u64,
        /// A host name every node certificate covers (repeatable;
        /// wildcards allowed, e.g. '*.mq-headless.ns.svc').
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// An address every node certificate covers (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// The admin certificate's name.
        #[arg(long, default_value = "admin")]
        admin: String,
        /// Validity of node and admin certificates, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

/// Mutual TLS to nodes that require it: the cluster CA and an admin
/// certificate (`raftmq cluster certs` writes ca.crt, admin.crt and
/// admin.key). A node's own certificate may only read (status, digest).
#[derive(Args, Debug, Default)]
pub struct TlsArgs {
    /// The cluster CA certificate (PEM).
    #[arg(long, global = true, requires_all = ["certfile", "keyfile"])]
    pub cafile: Option<std::path::PathBuf>,
    /// Our certificate (PEM), signed by the cluster CA.
    #[arg(long, global = true, requires_all = ["cafile", "keyfile"])]
    pub certfile: Option<std::path::PathBuf>,
    #[arg(long, global = true, requires_all = ["cafile", "certfile"])]
    pub keyfile: Option<std::path::PathBuf>,
}

impl TlsArgs {
    fn peer_tls(&self) -> anyhow::Result<Option<PeerTls>> {
        match (&self.certfile, &self.keyfile, &self.cafile) {
            (Some(c), Some(k), Some(a)) => Ok(Some(PeerTls::from_files(c, k, a)?)),
            _ => Ok(None),
        }
    }
}

async fn connect(addr: &str, tls: Option<&PeerTls>) -> anyhow::Result<AdminClient<Channel>> {
    let channel = endpoint(addr, tls)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(120))
        .connect()
        .await
        .with_context(|| format!("cannot reach node at {addr}"))?;
    Ok(AdminClient::new(channel))
}

/// The Admin client of the leader, found through `node`.
async fn leader(node: &str, tls: Option<&PeerTls>) -> anyhow::Result<AdminClient<Channel>> {
    let mut c = connect(node, tls).await?;
    let s = c.status(pb::StatusRequest {}).await?.into_inner();
    let leader = s.leader_id.context("the cluster has no leader right now")?;
    if leader == s.node_id {
        return Ok(c);
    }
    let addr = s
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .map(|n| n.addr.clone())
        .context("the leader's address is unknown")?;
    connect(&addr, tls).await
}

fn certs(request: super::certs::Request) -> anyhow::Result<()> {
    let issued = super::certs::issue(&request)?;
    if issued.ca_reused {
        println!("kept the CA in {}", request.out.display());
    }
    for f in issued.files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

pub async fn run(node: &str, tls: &TlsArgs, command: ClusterCommand) -> anyhow::Result<()> {
    if let ClusterCommand::Certs {
        out,
        nodes,
        dns,
        ips,
        admin,
        days,
    } = command
    {
        return certs(super::certs::Request {
            out,
            nodes,
            dns,
            ips,
            admin,
            days,
        });
    }
    let tls = tls.peer_tls()?;
    let tls = tls.as_ref();
    match command {
        ClusterCommand::Status => {
            let s = connect(node, tls)
                .await?
                .status(pb::StatusRequest {})
                .await?
                .into_inner();
            println!(
                "node {} is {} in term {}; leader: {}",
                s.node_id,
                s.state,
                s.term,
                s.leader_id.map_or("none".into(), |l| l.to_string())
            );
            println!(
                "log: last {} applied {} snapshot {}",
                opt(s.last_log_index),
                opt(s.applied_index),
                opt(s.snapshot_index)
            );
            println!(
                "store: {}; {}",
                if s.initialized {
                    "initialized"
                } else {
                    "empty (fresh volume, or repaired: waits to be added again)"
                },
                if s.draining { "draining" } else { "serving" }
            );
            for n in s.nodes {
                println!(
                    "  node {} {} {}{}",
                    n.id,
                    n.addr,
                    if n.voter { "voter" } else { "learner" },
                    n.matched_index
                        .map_or(String::new(), |m| format!(" matched {m}"))
                );
            }
        }
        ClusterCommand::Add { id, addr, learner } => {
            let mut c = leader(node, tls).await?;
            let r = c
                .add_learner(pb::AddLearnerRequest { node_id: id, addr })
                .await?
                .into_inner();
            println!("{}", r.message);
            if !learner {
                promote(&mut c, id).await?;
            }
        }
        ClusterCommand::Promote { id } => promote(&mut leader(node, tls).await?, id).await?,
        ClusterCommand::Remove { id } => {
            let r = leader(node, tls)
                .await?
                .remove_node(pb::RemoveNodeRequest { node_id: id })
                .await?
                .into_inner();
            println!("{}", r.message);
        }
        ClusterCommand::Digest { fresh } => {
            let d = connect(node, tls)
                .await?
                .digest(pb::DigestRequest { fresh })
                .await?
                .into_inner();
            println!(
                "applied {} retained {} sessions {} queued {} routes {} digest {}",
                d.applied_index, d.retained, d.sessions, d.queued, d.routes, d.digest
            );
        }
        ClusterCommand::Drain {
            server_reference,
            timeout_ms,
        } => {
            let r = connect(node, tls)
                .await?
                .drain(pb::DrainRequest {
                    server_reference,
                    timeout_ms,
                })
                .await?
                .into_inner();
            println!(
                "drained: {} disconnected, {} remaining",
                r.disconnected, r.remaining
            );
            anyhow::ensure!(
                r.remaining == 0,
                "{} connections still open after the timeout",
                r.remaining
            );
        }
        ClusterCommand::Certs { .. } => anyhow::bail!("certs contacts no node"),
        ClusterCommand::TransferLeader { id } => {
            let r = leader(node, tls)
                .await?
                .transfer_leader(pb::TransferLeaderRequest { node_id: id })
                .await?
                .into_inner();
            println!("{}", r.message);
        }
    }
    Ok(())
}

async fn promote(c: &mut AdminClient<Channel>, id: u64) -> anyhow::Result<()> {
    let s = c.status(pb::StatusRequest {}).await?.into_inner();
    anyhow::ensure!(
        s.nodes.iter().any(|n| n.id == id),
        "node {id} is not a member; add it first"
    );
    let mut voters: Vec<u64> = s.nodes.iter().filter(|n| n.voter).map(|n| n.id).collect();
    voters.push(id);
    let r = c
        .change_membership(pb::ChangeMembershipRequest { voters })
        .await?
        .into_inner();
    println!("{}", r.message);
    Ok(())
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}
