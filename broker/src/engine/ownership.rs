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

use crate::engine::Broker;
use crate::codec::{reason, ByteStr};
use crate::config::SessionTakeover;
use crate::state::StateError;

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
        let local = self.sessions.lock().get(client_id).cloned();
        let owner = match local {
            Some(cell) => Some(cell.session.lock().username.clone()),
            None => self
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
        self.view
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
        let waiting = self.claims.lock().remove(&(client_id.clone(), nonce));
        if let Some(tx) = waiting {
            let _ = tx.send(false);
            return;
        }
        let cell = self.sessions.lock().get(client_id).cloned();
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
