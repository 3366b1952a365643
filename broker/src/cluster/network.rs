//! The Raft network over gRPC: one lazily connected tonic channel per peer
//! address, shared by every openraft replication stream to that peer;
//! tonic reconnects a broken channel on the next call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::SnapshotSegmentId;
use parking_lot::Mutex;
use raftmq_proto::v1 as pb;
use raftmq_proto::v1::raft_client::RaftClient;
use tonic::transport::{Channel, Endpoint};

use super::convert;
use super::fault::{self, Point};
use super::tls::PeerTls;
use super::types::{Node, NodeId, TypeConfig};

/// Largest gRPC message either side accepts (entries are batched below it).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<PeerTls>,
}

/// An endpoint for `addr` (`host:port`): plain, or mutual TLS.
pub fn endpoint(addr: &str, tls: Option<&PeerTls>) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        None => Endpoint::from_shared(format!("http://{addr}")),
        Some(t) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(t.client()),
    }
}

impl Network {
    pub fn new(tls: Option<PeerTls>) -> Network {
        Network {
            channels: Arc::default(),
            tls,
        }
    }

    /// The channel to `addr` (`host:port`), created on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = endpoint(addr, self.tls.as_ref())?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    pub fn raft_client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        Ok(RaftClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

pub struct Peer {
    target: NodeId,
    addr: String,
    net: Network,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            net: self.clone(),
        }
    }
}

/// A peer that cannot be reached is "unreachable" (openraft backs off);
/// anything else is a network error for this one call.
fn rpc_err<E: std::error::Error>(s: tonic::Status) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

fn invalid<E: std::error::Error>(
    e: convert::Invalid,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&e))
}

impl Peer {
    async fn call<T, E: std::error::Error>(
        &self,
        ttl: Duration,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>> {
        match tokio::time::timeout(ttl, f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(rpc_err(s)),
            Err(_) => Err(rpc_err(tonic::Status::deadline_exceeded(
                "raft rpc timed out",
            ))),
        }
    }

    fn client<E: std::error::Error>(
        &self,
    ) -> Result<RaftClient<Channel>, RPCError<NodeId, Node, RaftError<NodeId, E>>> {
        self.net
            .raft_client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let req = pb::AppendEntriesRequest {
            vote: Some(convert::vote_to(&rpc.vote)),
            prev_log_id: convert::opt_log_id_to(&rpc.prev_log_id),
            entries: rpc.entries.iter().map(convert::entry_to).collect(),
            leader_commit: convert::opt_log_id_to(&rpc.leader_commit),
        };
        let mut client = self.client()?;
        let resp = self
            .call(option.hard_ttl(), client.append_entries(req))
            .await?;
        use pb::append_entries_response::Result as R;
        Ok(match resp.result {
            Some(R::Success(_)) => AppendEntriesResponse::Success,
            Some(R::PartialSuccess(p)) => {
                AppendEntriesResponse::PartialSuccess(convert::opt_log_id_from(p.matching))
            }
            Some(R::Conflict(_)) => AppendEntriesResponse::Conflict,
            Some(R::HigherVote(v)) => {
                AppendEntriesResponse::HigherVote(convert::vote_from(Some(v)).map_err(invalid)?)
            }
            None => return Err(invalid(convert::Invalid("append entries response"))),
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let mut data = rpc.data;
        fault::flip(Point::SnapshotSendFlip, &mut data);
        let req = pb::InstallSnapshotRequest {
            vote: Some(convert::vote_to(&rpc.vote)),
            meta: Some(convert::snapshot_meta_to(&rpc.meta)),
            offset: rpc.offset,
            data: data.into(),
            done: rpc.done,
        };
        let mut client = self.client()?;
        let sent = tokio::time::timeout(option.hard_ttl(), client.install_snapshot(req)).await;
        let resp = match sent {
            Ok(Ok(r)) => r.into_inner(),
            // The member refused the snapshot (a bad checksum, a chunk out
            // of place): openraft sends it again from the start.
            Ok(Err(s)) if s.code() == tonic::Code::DataLoss => {
                tracing::warn!(target = self.target, "{}", s.message());
                let id = rpc.meta.snapshot_id.clone();
                let mismatch = SnapshotMismatch {
                    expect: SnapshotSegmentId {
                        id: id.clone(),
                        offset: 0,
                    },
                    got: SnapshotSegmentId {
                        id,
                        offset: rpc.offset,
                    },
                };
                return Err(RPCError::RemoteError(RemoteError::new(
                    self.target,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
                )));
            }
            Ok(Err(s)) => return Err(rpc_err(s)),
            Err(_) => {
                return Err(rpc_err(tonic::Status::deadline_exceeded(
                    "raft rpc timed out",
                )))
            }
        };
        Ok(InstallSnapshotResponse {
            vote: convert::vote_from(resp.vote).map_err(invalid)?,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let req = pb::VoteRequest {
            vote: Some(convert::vote_to(&rpc.vote)),
            last_log_id: convert::opt_log_id_to(&rpc.last_log_id),
        };
        let mut client = self.client()?;
        let resp = self.call(option.hard_ttl(), client.vote(req)).await?;
        Ok(VoteResponse {
            vote: convert::vote_from(resp.vote).map_err(invalid)?,
            vote_granted: resp.vote_granted,
            last_log_id: convert::opt_log_id_from(resp.last_log_id),
        })
    }
}
