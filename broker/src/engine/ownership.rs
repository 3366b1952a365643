//! Who a client id belongs to: the identity whose connection or persistent
//! session holds it (its username; the certificate or PSK identity where
//! that stands in for the username; or anonymous, an identity too). Another
//! identity may not take it over, unless `[auth] allow_session_takeover =
//! "any"` asks for mosquitto's behaviour.
//!
//! Checked twice: by the node a CONNECT reaches, against its sessions and
//! its copy of the replicated owners, before anything is claimed or closed;
//! and by the state machine, which ignores a claim of an id owned by
//! another identity, so that two nodes racing for one id cannot both win.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Broker, Claim};
use crate::codec::{reason, ByteStr};
use crate::config::SessionTakeover;
use crate::state::{Command, StateError};

/// Why a claim of a client id failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The cluster cannot serve the session now.
    #[error(transparent)]
    Unavailable(#[from] StateError),
    /// The id belongs to another identity.
    #[error("the client id belongs to another identity")]
    OtherIdentity,
}

impl Broker {
    /// Claims `claim.client_id` for this node through the replicated log.
    /// A persistent session, or one to be resumed that lives on another
    /// node, waits until the claim is committed and the session's state has
    /// moved here; a clean session goes on at once (the claim then only
    /// closes a connection with the same id elsewhere). An error means the
    /// client must be refused: the cluster cannot serve its session now, or
    /// the id belongs to another identity.
    ///
    /// On a node without peers a persistent session without a will goes
    /// on at once too (see [`Broker::settled_here`]), and a claim that
    /// would change nothing is not made at all ([`Broker::claim_is_moot`]).
    pub async fn claim(self: &Arc<Self>, claim: Claim) -> Result<(), ClaimError> {
        let client_id = claim.client_id.clone();
        let local = self.local.sessions.lock().contains_key(&client_id);
        // While storage fails, nothing goes on at once: a persistent
        // session is refused (its claim cannot commit) rather than
        // promised a durability this node cannot give now.
        let alone = !self.cluster.seam.has_peers() && self.storage_fault().is_none();
        if alone && local && self.claim_is_moot(&claim) {
            return Ok(());
        }
        let (nonce, persistent) = (claim.nonce, claim.persistent);
        let follows_log = self.cluster.seam.follows_log();
        // Another claim of ours for this id not yet applied (two CONNECTs
        // racing, say under two identities): only the log can say which
        // wins, so this one waits until it is applied or refused. Checked
        // and recorded under one lock, so that of two racers one sees the
        // other.
        let raced = follows_log
            && self
                .cluster
                .unapplied_claims
                .lock()
                .insert(client_id.clone(), nonce)
                .is_some();
        // A persistent session's will is registered before CONNACK, as
        // ever: a crash right after it still publishes it at restart.
        let at_once = alone && !raced && claim.will.is_none() && self.settled_here(&client_id);
        let wait_state = follows_log && ((!claim.clean_start && !local) || raced);
        let command = Command::ClaimClient {
            client_id: client_id.clone(),
            node: self.node_id,
            nonce,
            clean_start: claim.clean_start,
            will: claim.will,
            username: claim.username,
            same_identity_only: self.config.auth.allow_session_takeover
                == SessionTakeover::SameIdentity,
        };
        if at_once || (!persistent && !wait_state) {
            // The client goes on at once; a claim that never commits
            // must not keep shielding it from later takeovers. A clean
            // session's claim stays in the log even on a node without
            // peers: it registers the will (fired at restart if this node
            // dies, `follow.rs`), and the owner's identity, which a claim
            // of the same id through a node that joins later is checked
            // against (issue 15); that node would not know of a live
            // connection never logged. It costs no wait, and shares its
            // entry (lazily) with the other connections' comings and goings.
            let ticket = self.cluster.seam.submit_lazy(vec![command]);
            let broker = Arc::clone(self);
            tokio::spawn(async move {
                if ticket.wait().await.is_err() {
                    broker.forget_claim(&client_id, nonce);
                }
            });
            return Ok(());
        }
        if !wait_state {
            let ticket = self.cluster.seam.submit(vec![command]);
            let r = match tokio::time::timeout(self.commit_wait(), ticket.wait()).await {
                Ok(r) => r,
                Err(_) => Err(StateError::Unavailable(
                    "claim not committed in time".into(),
                )),
            };
            if r.is_err() {
                self.forget_claim(&client_id, nonce);
            }
            return r.map_err(ClaimError::Unavailable);
        }
        self.claim_applied(client_id, nonce, command).await
    }

    /// Whether, on a node without peers, a session `client_id` can be
    /// nowhere but here (or nowhere yet): nobody owns the id, or this node
    /// does. Then a claim need not be waited for, persistent or not: no
    /// other member can claim the id before it commits (a node that joins
    /// later reads the log in order, so its claims come after this one),
    /// no session state has to move here, and what the client is promised
    /// later waits for its own commit, which comes after the claim's in
    /// the log (a persistent subscription's SUBACK, a QoS 1/2 PUBACK).
    /// Until then a crash loses only what was never acknowledged. An owner
    /// that is another node (one that left the cluster) keeps the wait.
    fn settled_here(&self, client_id: &ByteStr) -> bool {
        let owner = self.cluster.view.read().owner(client_id);
        owner.is_none_or(|n| n == self.node_id)
    }

    /// Whether `claim`, on a node without peers and for a session that is
    /// here, would change nothing in the replicated state: this node owns
    /// the id as the same identity with no will registered, the client
    /// brings no will and resumes its session, and no claim of ours is
    /// still on its way. A gateway that reconnects is this case: its
    /// CONNECT then costs no log entry. (With peers the claim is made
    /// anyway: it must take the id back from a claim of another node that
    /// may be on its way.)
    fn claim_is_moot(&self, claim: &Claim) -> bool {
        if claim.clean_start || claim.will.is_some() {
            return false;
        }
        let id = &claim.client_id;
        if self.cluster.unapplied_claims.lock().contains_key(id) {
            return false;
        }
        let view = self.cluster.view.read();
        view.owner(id) == Some(self.node_id)
            && view.owner_identity(id) == Some(claim.username.as_ref())
            && !view.wills.contains_key(id)
    }

    /// Submits the claim of a session that may live on another node and
    /// waits until it is applied here (the session's state moved here).
    async fn claim_applied(
        self: &Arc<Self>,
        client_id: ByteStr,
        nonce: u64,
        command: Command,
    ) -> Result<(), ClaimError> {
        let (tx, rx) = oneshot::channel();
        self.cluster
            .claims
            .lock()
            .insert((client_id.clone(), nonce), tx);
        let ticket = self.cluster.seam.submit(vec![command]);
        let superseded =
            || ClaimError::Unavailable(StateError::Unavailable("claim superseded".into()));
        let outcome = |took_effect: bool| {
            if took_effect {
                Ok(())
            } else {
                Err(ClaimError::OtherIdentity)
            }
        };
        let claimed = tokio::time::timeout(self.commit_wait(), async {
            // The commit can fail before the claim is ever applied here.
            let committed = ticket.wait();
            tokio::pin!(committed);
            let mut rx = rx;
            tokio::select! {
                state = &mut rx => return state.map_err(|_| superseded()).and_then(outcome),
                r = &mut committed => r.map_err(ClaimError::Unavailable)?,
            }
            rx.await.map_err(|_| superseded()).and_then(outcome)
        })
        .await;
        let state = match claimed {
            Ok(r) => r,
            Err(_) => Err(ClaimError::Unavailable(StateError::Unavailable(
                "claim not applied in time".into(),
            ))),
        };
        if state.is_err() {
            self.forget_claim(&client_id, nonce);
            self.cluster.claims.lock().remove(&(client_id, nonce));
        }
        state
    }

    /// Our claim `nonce` of `client_id` was applied here, or will never be.
    pub(crate) fn forget_claim(&self, client_id: &ByteStr, nonce: u64) {
        let mut unapplied = self.cluster.unapplied_claims.lock();
        if unapplied.get(client_id) == Some(&nonce) {
            unapplied.remove(client_id);
        }
    }

    /// A claim of `client_id` applied: ours (`node` is this node) is no
    /// longer pending; another node's takes the client from us, unless a
    /// claim of ours is still to come in the log.
    pub(crate) fn on_claim_applied(self: &Arc<Self>, client_id: &ByteStr, node: u64, nonce: u64) {
        if node == self.node_id {
            self.forget_claim(client_id, nonce);
        } else if !self.cluster.unapplied_claims.lock().contains_key(client_id) {
            self.release(client_id);
        }
    }

    /// A claim of `client_id` by this node is committed, and its session
    /// installed here in log order (`follow.rs`, `arrive`), so that copies
    /// committed after the claim find it: the waiting CONNECT (connection
    /// `nonce`) goes on.
    pub(crate) fn claimed(&self, client_id: &ByteStr, nonce: u64) {
        if let Some(tx) = self
            .cluster
            .claims
            .lock()
            .remove(&(client_id.clone(), nonce))
        {
            let _ = tx.send(true);
        }
    }

    /// Whether `username` may take `client_id`: it is free, or its owner is
    /// the same identity, or takeovers are allowed. `Err` carries the
    /// owner's username (`None`: anonymous).
    pub fn owner_check(
        &self,
        client_id: &ByteStr,
        username: Option<&ByteStr>,
    ) -> Result<(), Option<ByteStr>> {
        if self.config.auth.allow_session_takeover == SessionTakeover::Any {
            return Ok(());
        }
        // A session here, connected or not, names the identity that made it.
        let local = self.local.sessions.lock().get(client_id).cloned();
        let owner = match local {
            Some(cell) => Some(cell.session.lock().username.clone()),
            None => self
                .cluster
                .view
                .read()
                .owner_identity(client_id)
                .map(|u| u.cloned()),
        };
        match owner {
            Some(owner) if owner.as_ref() != username => Err(owner),
            _ => Ok(()),
        }
    }

    /// The username that owns `client_id` as the replicated state says
    /// (`None`: anonymous, or nobody), for logs.
    pub fn view_owner_identity(&self, client_id: &ByteStr) -> Option<ByteStr> {
        self.cluster
            .view
            .read()
            .owner_identity(client_id)
            .flatten()
            .cloned()
    }

    /// Logs and counts a CONNECT refused because `client_id` is owned by
    /// `owner`.
    pub fn takeover_refused(
        &self,
        client_id: &ByteStr,
        username: Option<&ByteStr>,
        owner: Option<&ByteStr>,
        peer: Option<SocketAddr>,
    ) {
        self.stats.session_takeover_refused.inc();
        tracing::warn!(
            %client_id,
            username = %username.map_or("(anonymous)", |u| u.as_str()),
            owner = %owner.map_or("(anonymous)", |u| u.as_str()),
            peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
            "CONNECT refused: the client id belongs to another identity"
        );
    }

    /// This node's claim `nonce` of `client_id` did not take effect (the
    /// state machine found another identity owning the id). A CONNECT
    /// waiting for it is refused; one that did not wait (a clean start)
    /// loses its connection, and the owner's session stays as it was.
    pub(crate) fn claim_refused(self: &Arc<Self>, client_id: &ByteStr, nonce: u64) {
        self.forget_claim(client_id, nonce);
        let waiting = self
            .cluster
            .claims
            .lock()
            .remove(&(client_id.clone(), nonce));
        if let Some(tx) = waiting {
            let _ = tx.send(false);
            return;
        }
        let cell = self.local.sessions.lock().get(client_id).cloned();
        let Some(cell) = cell else {
            return;
        };
        let username = {
            let s = cell.session.lock();
            if s.claim_nonce != nonce {
                return;
            }
            s.username.clone()
        };
        let owner = self.view_owner_identity(client_id);
        self.takeover_refused(client_id, username.as_ref(), owner.as_ref(), None);
        self.release_with(client_id, reason::NOT_AUTHORIZED);
    }
}
