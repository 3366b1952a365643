//! Who may call which cluster RPC. A TLS connection's caller is the
//! identity its client certificate names (`raftmq://node/<id>` or
//! `raftmq://admin/<name>`, see `raftmq_proto::identity`); the CA alone
//! only says the certificate is ours, not whose it is.
//!
//! | RPC | who |
//! | --- | --- |
//! | AppendEntries, Vote, InstallSnapshot | the node the request's vote names |
//! | Propose, Forward | the node the batch names as its origin, a current member |
//! | ReadIndex, Elect, HoldElections | a current member, or an admin |
//! | NotifyMembership | an admin, or a node (a member, once this node has members) |
//! | Status, Digest | any node or admin |
//! | AddLearner, ChangeMembership, RemoveNode, TransferLeader, Drain, Undrain | an admin |
//!
//! No certificate, or one that names nobody: `Unauthenticated`. The wrong
//! identity: `PermissionDenied`. Both are logged and counted in
//! `raftmq_cluster_refused_total{rpc, code}`. A cluster port without TLS
//! (loopback by default, or `insecure_plaintext`) tells nobody apart.

use std::net::SocketAddr;

use prometheus::IntCounterVec;
use raftmq_shared::identity::Identity;
use rustls_pki_types::CertificateDer;
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

use super::supervisor::RaftHandle;
use super::types::NodeId;

/// Who is calling, as far as the connection tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The cluster port runs without TLS: nobody can be told apart.
    Open,
    /// TLS without a client certificate.
    Anonymous,
    /// A certificate the cluster CA signed that names no raftmq identity
    /// (or two different ones).
    Unnamed,
    Known(Identity),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Open => f.write_str("anyone (plain text)"),
            Caller::Anonymous => f.write_str("no certificate"),
            Caller::Unnamed => f.write_str("a certificate naming no raftmq identity"),
            Caller::Known(id) => write!(f, "{id}"),
        }
    }
}

/// A connection's peer, set on every request it carries (tonic's
/// connection info, see `peer`).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub caller: Caller,
}

/// The caller a verified client certificate chain names (its first
/// certificate is the client's own).
pub fn caller_of(chain: Option<&[CertificateDer<'_>]>) -> Caller {
    let Some(leaf) = chain.and_then(|c| c.first()) else {
        return Caller::Anonymous;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Caller::Unnamed;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Caller::Unnamed;
    };
    let uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    Identity::from_uris(uris).map_or(Caller::Unnamed, Caller::Known)
}

/// The checks, with what they need: the membership (from the Raft core)
/// and the refusal counter.
#[derive(Clone)]
pub struct Guard {
    pub raft: RaftHandle,
    pub refused: IntCounterVec,
}

/// Why a call is refused, before it becomes a status.
enum Refusal {
    /// No identity at all.
    Unauthenticated(String),
    /// An identity, not the right one.
    Denied(String),
}

fn peer<T>(req: &Request<T>) -> PeerInfo {
    req.extensions()
        .get::<PeerInfo>()
        .cloned()
        // Every connection carries it (see `peer`); one that does not is
        // not trusted.
        .unwrap_or(PeerInfo {
            remote: None,
            caller: Caller::Anonymous,
        })
}

impl Guard {
    fn is_member(&self, id: NodeId) -> bool {
        self.raft.membership(|m| m.get_node(&id).is_some())
    }

    fn has_members(&self) -> bool {
        self.raft.membership(|m| m.nodes().next().is_some())
    }

    /// Runs `rule` on the caller; a refusal is logged, counted and turned
    /// into its status.
    fn check<T>(
        &self,
        req: &Request<T>,
        rpc: &'static str,
        rule: impl FnOnce(&Identity) -> Result<(), Refusal>,
    ) -> Result<(), Status> {
        let p = peer(req);
        let refusal = match &p.caller {
            Caller::Open => return Ok(()),
            Caller::Anonymous | Caller::Unnamed => Refusal::Unauthenticated(format!(
                "{rpc} needs a cluster certificate naming a raftmq identity; the caller has {}",
                p.caller
            )),
            Caller::Known(id) => match rule(id) {
                Ok(()) => return Ok(()),
                Err(r) => r,
            },
        };
        let remote = p.remote.map_or("unknown".into(), |a| a.to_string());
        let (code, status) = match refusal {
            Refusal::Unauthenticated(m) => ("unauthenticated", Status::unauthenticated(m)),
            Refusal::Denied(m) => ("permission_denied", Status::permission_denied(m)),
        };
        self.refused.with_label_values(&[rpc, code]).inc();
        tracing::warn!(rpc, %remote, caller = %p.caller, code, "cluster call refused: {}", status.message());
        Err(status)
    }

    /// Raft traffic and proposals: only the node `claimed` speaks for
    /// itself.
    pub fn node<T>(
        &self,
        req: &Request<T>,
        rpc: &'static str,
        claimed: NodeId,
    ) -> Result<(), Status> {
        self.check(req, rpc, |id| match id {
            Identity::Node(n) if *n == claimed => Ok(()),
            other => Err(Refusal::Denied(format!(
                "{rpc} for node {claimed} over the certificate of {other}"
            ))),
        })
    }

    /// Any node that is a current member (Forward), by its certificate.
    pub fn member<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<NodeIdOrAny, Status> {
        let mut who = NodeIdOrAny::Any;
        self.check(req, rpc, |id| match id {
            Identity::Node(n) if self.is_member(*n) => {
                who = NodeIdOrAny::Node(*n);
                Ok(())
            }
            other => Err(Refusal::Denied(format!(
                "{rpc} is for current members; the caller is {other}"
            ))),
        })?;
        Ok(who)
    }

    /// A current member or an admin (ReadIndex, Elect, HoldElections: a
    /// leader's own steps).
    pub fn member_or_admin<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<(), Status> {
        self.check(req, rpc, |id| match id {
            Identity::Admin(_) => Ok(()),
            Identity::Node(n) if self.is_member(*n) => Ok(()),
            other => Err(Refusal::Denied(format!(
                "{rpc} is for current members and admins; the caller is {other}"
            ))),
        })
    }

    /// A membership notice: from an admin, or a leader; a node that knows
    /// no membership yet (being added) cannot tell the leader apart.
    pub fn notice<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<(), Status> {
        self.check(req, rpc, |id| match id {
            Identity::Admin(_) => Ok(()),
            Identity::Node(n) if !self.has_members() || self.is_member(*n) => Ok(()),
            other => Err(Refusal::Denied(format!(
                "{rpc} is for members and admins; the caller is {other}"
            ))),
        })
    }

    /// Read-only calls: any node or admin.
    pub fn reader<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<(), Status> {
        self.check(req, rpc, |_| Ok(()))
    }

    /// Calls that change the cluster or a node: an admin only.
    pub fn admin<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<(), Status> {
        self.check(req, rpc, |id| match id {
            Identity::Admin(_) => Ok(()),
            other => Err(Refusal::Denied(format!(
                "{rpc} needs an admin certificate (raftmq://admin/<name>); the caller is {other}"
            ))),
        })
    }

    /// Counts and logs a refusal found after the call was let in (a
    /// Forward batch naming another origin).
    pub fn denied_later(&self, rpc: &'static str, who: &NodeIdOrAny, message: String) -> Status {
        self.refused
            .with_label_values(&[rpc, "permission_denied"])
            .inc();
        tracing::warn!(rpc, caller = ?who, "cluster call refused: {message}");
        Status::permission_denied(message)
    }
}

/// Which node a connection speaks for: one, or any (plain text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeIdOrAny {
    Node(NodeId),
    Any,
}

impl NodeIdOrAny {
    pub fn allows(&self, origin: NodeId) -> bool {
        match self {
            NodeIdOrAny::Any => true,
            NodeIdOrAny::Node(n) => *n == origin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_certificate_is_anonymous_and_garbage_names_nobody() {
        assert_eq!(caller_of(None), Caller::Anonymous);
        assert_eq!(caller_of(Some(&[])), Caller::Anonymous);
        let junk = [CertificateDer::from(vec![1u8, 2, 3])];
        assert_eq!(caller_of(Some(&junk)), Caller::Unnamed);
    }

    #[test]
    fn a_node_identity_allows_only_its_own_origin() {
        assert!(NodeIdOrAny::Node(2).allows(2));
        assert!(!NodeIdOrAny::Node(2).allows(3));
        assert!(NodeIdOrAny::Any.allows(3));
    }
}
