//! [`Membership`] through the brokers' `Admin` gRPC service (tonic over
//! rustls/ring). Every call has a deadline; a connection is made per call
//! (a reconcile makes a handful), so a pod that restarted with a new IP is
//! found again through DNS without any cache to invalidate.

use std::sync::Arc;
use std::time::Duration;

use futures::TryFutureExt;
use raftmq_proto::v1 as pb;
use raftmq_proto::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{BoxFuture, Change, Member, Membership, MembershipError, NodeState, Result, Target};
use crate::render::{Names, CLUSTER_PORT};

/// Where pod `ordinal`'s Admin service is (`host:port`). The default is the
/// pod's stable DNS name behind the headless Service; tests map pods to
/// loopback ports.
pub trait Resolver: Send + Sync {
    fn addr(&self, names: &Names, ordinal: i32) -> String;
}

/// `<pod>.<headless>.<ns>.svc:7100`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PodDns;

impl Resolver for PodDns {
    fn addr(&self, names: &Names, ordinal: i32) -> String {
        format!("{}:{CLUSTER_PORT}", names.pod_host(ordinal))
    }
}

/// How long each kind of call may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Status, ChangeMembership, RemoveNode, TransferLeader.
    pub call: Duration,
    /// AddLearner waits for the learner to catch up (a snapshot may travel).
    pub add_learner: Duration,
    /// Drain waits for the clients to be gone (the broker's own bound is
    /// the request's timeout_ms; this is a little more).
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            call: Duration::from_secs(15),
            add_learner: Duration::from_secs(120),
            drain: Duration::from_secs(15),
        }
    }
}

pub struct AdminMembership {
    pub resolver: Arc<dyn Resolver>,
    pub timeouts: Timeouts,
    /// Asked of the broker in DrainRequest.timeout_ms.
    pub drain_ms: u32,
}

impl Default for AdminMembership {
    fn default() -> Self {
        AdminMembership {
            resolver: Arc::new(PodDns),
            timeouts: Timeouts::default(),
            drain_ms: 10_000,
        }
    }
}

impl AdminMembership {
    pub fn new(resolver: Arc<dyn Resolver>) -> AdminMembership {
        AdminMembership {
            resolver,
            ..AdminMembership::default()
        }
    }

    async fn client(&self, target: &Target, ordinal: i32) -> Result<AdminClient<Channel>> {
        let pod = target.names.pod(ordinal);
        let addr = self.resolver.addr(&target.names, ordinal);
        let unreachable = |reason: String| MembershipError::Unreachable {
            pod: pod.clone(),
            addr: addr.clone(),
            reason,
        };
        let endpoint = match &target.tls {
            None => Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| unreachable(e.to_string()))?,
            Some(t) => {
                // The broker's certificate names the pod's DNS name (and
                // `*.<headless>.<ns>.svc`), whatever address it is dialled
                // at.
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&t.ca_crt))
                    .identity(Identity::from_pem(&t.cert, &t.key))
                    .domain_name(target.names.pod_host(ordinal));
                Endpoint::from_shared(format!("https://{addr}"))
                    .map_err(|e| unreachable(e.to_string()))?
                    .tls_config(tls)
                    .map_err(|e| MembershipError::Tls(e.to_string()))?
            }
        };
        let channel = tokio::time::timeout(
            self.timeouts.connect,
            endpoint.connect_timeout(self.timeouts.connect).connect(),
        )
        .await
        .map_err(|_| unreachable(format!("no connection within {:?}", self.timeouts.connect)))?
        .map_err(|e| unreachable(source_chain(&e)))?;
        Ok(AdminClient::new(channel))
    }

    async fn call<T, F, Fut>(
        &self,
        target: &Target,
        ordinal: i32,
        call: &'static str,
        after: Duration,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let pod = target.names.pod(ordinal);
        let c = self.client(target, ordinal).await?;
        match tokio::time::timeout(after, f(c)).await {
            Err(_) => Err(MembershipError::Timeout { call, pod, after }),
            Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => {
                Err(MembershipError::Timeout { call, pod, after })
            }
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                Err(MembershipError::Unsupported { call, pod })
            }
            Ok(Err(s)) => Err(MembershipError::Rpc {
                call,
                pod,
                message: s.message().to_string(),
            }),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }
}

/// An error with its causes (tonic's transport errors say "transport
/// error" at the top and why below).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn node_state(s: pb::StatusResponse) -> NodeState {
    NodeState {
        id: s.node_id,
        state: s.state,
        term: s.term,
        leader: s.leader_id,
        last_log_index: s.last_log_index,
        initialized: s.initialized,
        draining: s.draining,
        members: s
            .nodes
            .into_iter()
            .map(|n| Member {
                id: n.id,
                addr: n.addr,
                voter: n.voter,
                matched: n.matched_index,
            })
            .collect(),
    }
}

impl Membership for AdminMembership {
    fn peer_addr(&self, target: &Target, ordinal: i32) -> String {
        self.resolver.addr(&target.names, ordinal)
    }

    fn status<'a>(&'a self, target: &'a Target, ordinal: i32) -> BoxFuture<'a, Result<NodeState>> {
        let after = self.timeouts.call;
        let call = self.call(target, ordinal, "Status", after, |mut c| async move {
            c.status(pb::StatusRequest {}).await
        });
        Box::pin(call.map_ok(node_state))
    }

    fn change<'a>(
        &'a self,
        target: &'a Target,
        leader: i32,
        change: Change,
    ) -> BoxFuture<'a, Result<String>> {
        let after = match change {
            // AddLearner answers once the learner has caught up.
            Change::AddLearner { .. } => self.timeouts.add_learner,
            _ => self.timeouts.call,
        };
        let call = self.call(target, leader, change.call(), after, |mut c| async move {
            match change {
                Change::AddLearner { id, addr } => {
                    let req = pb::AddLearnerRequest { node_id: id, addr };
                    c.add_learner(req).await.map(|r| r.map(|m| m.message))
                }
                Change::ChangeMembership { voters } => {
                    let req = pb::ChangeMembershipRequest { voters };
                    c.change_membership(req).await.map(|r| r.map(|m| m.message))
                }
                Change::RemoveNode { id } => {
                    let req = pb::RemoveNodeRequest { node_id: id };
                    c.remove_node(req).await.map(|r| r.map(|m| m.message))
                }
                Change::TransferLeader { to } => {
                    let req = pb::TransferLeaderRequest { node_id: to };
                    c.transfer_leader(req).await.map(|r| r.map(|m| m.message))
                }
            }
        });
        Box::pin(call)
    }

    fn undrain<'a>(&'a self, target: &'a Target, ordinal: i32) -> BoxFuture<'a, Result<String>> {
        let after = self.timeouts.call;
        let call = self.call(target, ordinal, "Undrain", after, |mut c| async move {
            c.undrain(pb::UndrainRequest {}).await
        });
        Box::pin(call.map_ok(|r| {
            let said = if r.was_draining {
                "drain ended"
            } else {
                "it was not draining"
            };
            said.to_string()
        }))
    }

    fn drain<'a>(
        &'a self,
        target: &'a Target,
        ordinal: i32,
        server_reference: String,
    ) -> BoxFuture<'a, Result<(u64, u64)>> {
        let timeout_ms = self.drain_ms;
        Box::pin(async move {
            self.call(
                target,
                ordinal,
                "Drain",
                self.timeouts.drain,
                |mut c| async move {
                    c.drain(pb::DrainRequest {
                        server_reference,
                        timeout_ms,
                    })
                    .await
                },
            )
            .await
            .map(|r| (r.disconnected, r.remaining))
        })
    }
}
