//! Rebuilding the engine's in-memory indexes from replicated state (after a
//! restart, or when a snapshot replaces the state), and following what
//! other nodes commit.

use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::broker::{Broker, SessionCell};
use crate::retained::RetainedStore;
use crate::session::{Delivery, Session};
use crate::state::{Command, ReplicatedState};
use crate::topic_tree::parse_filter;

impl Broker {
    /// Loads retained messages and the persistent sessions this node owns
    /// (or that nobody owns yet). Sessions already in memory are kept as
    /// they are: they are newer than any copy in `state`.
    pub fn restore(self: &Arc<Self>, state: ReplicatedState) {
        {
            let mut retained = self.retained.write();
            *retained = RetainedStore::default();
            for m in state.retained.into_values() {
                retained.set(m);
            }
        }
        let mut restored = 0usize;
        for (client_id, persisted) in state.sessions {
            if state
                .owners
                .get(&client_id)
                .is_some_and(|n| *n != self.node_id)
                || self.sessions.lock().contains_key(&client_id)
            {
                continue;
            }
            let mut session =
                Session::new(client_id.clone(), persisted.expiry, self.session_limits);
            for (seq, m) in persisted.messages {
                session.restore(
                    Delivery {
                        message: m.message,
                        qos: m.qos,
                        retain: m.retain,
                        subscription_ids: SmallVec::new(),
                        share: None,
                        seq,
                    },
                    m.released,
                );
            }
            let cell = SessionCell::new(session);
            for (raw, (options, identifier)) in persisted.subscriptions {
                match parse_filter(&raw, self.topic_limits) {
                    Ok(parsed) => {
                        self.subscribe_local(&cell, &raw, &parsed, options, identifier);
                    }
                    // Limits may have been lowered since; the rest of the
                    // session still comes back.
                    Err(e) => {
                        tracing::warn!(%client_id, filter = %raw, "subscription not restored: {e}")
                    }
                }
            }
            self.sessions.lock().insert(client_id, cell.clone());
            restored += 1;
            if persisted.expiry != u32::MAX {
                // Its clock restarts now: the time it was offline before the
                // restart is not known to this node.
                let broker = Arc::clone(self);
                let generation = cell.session.lock().generation;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(persisted.expiry))).await;
                    broker.expire(&cell, generation);
                });
            }
        }
        if restored > 0 || self.retained_count() > 0 {
            tracing::info!(
                sessions = restored,
                retained = self.retained_count(),
                "restored replicated state"
            );
        }
    }

    /// Applies what another node committed to this node's indexes.
    pub fn apply_remote(&self, commands: &[Command]) {
        for c in commands {
            match c {
                Command::RetainSet(m) => self.retained.write().set(m.clone()),
                Command::RetainClear { topic } => {
                    self.retained.write().clear(topic);
                }
                // Sessions follow their clients in the clustered-broker
                // issue; until then each node serves its own.
                _ => {}
            }
        }
    }
}
