//! Every timer the engine arms: a session's expiry once its client is
//! gone, and a will's delay. Each is a detached sleep that checks, when it
//! wakes, whether it still applies (the client came back, the node is
//! back), so nothing has to cancel it.

use std::sync::Arc;
use std::time::Duration;

use super::{Broker, SessionCell};
use crate::codec::ByteStr;
use crate::state::Will;

impl Broker {
    /// Ends `cell` after `expiry` seconds unless its client is back by then
    /// (its generation moved on). `u32::MAX` never expires.
    pub(crate) fn arm_session_expiry(
        self: &Arc<Self>,
        cell: &Arc<SessionCell>,
        expiry: u32,
        generation: u64,
    ) {
        if expiry == u32::MAX {
            return;
        }
        let broker = Arc::clone(self);
        let cell = Arc::clone(cell);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
            broker.expire(&cell, generation);
        });
    }

    /// Fires the will registered by claim `nonce` of `client_id` after
    /// `delay` seconds, if `still_due` says so then.
    pub(crate) fn arm_will(
        self: &Arc<Self>,
        client_id: ByteStr,
        nonce: u64,
        delay: u32,
        still_due: impl FnOnce(&Broker) -> bool + Send + 'static,
        will: impl FnOnce() -> Will + Send + 'static,
    ) {
        let broker = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
            if still_due(&broker) {
                broker.fire_will(&client_id, nonce, will);
            }
        });
    }

    /// Ends `cell` if nobody has reconnected to it since `generation`.
    pub(crate) fn expire(&self, cell: &Arc<SessionCell>, generation: u64) {
        let mut sessions = self.local.sessions.lock();
        {
            let s = cell.session.lock();
            if s.generation != generation || s.is_connected() {
                return;
            }
        }
        let mut commands = Vec::new();
        self.end_session_locked(&mut sessions, cell, &mut commands);
        drop(sessions);
        self.stats.sessions_expired.inc();
        tracing::debug!(client_id = %cell.client_id, "session expired");
        self.submit(commands);
    }
}
