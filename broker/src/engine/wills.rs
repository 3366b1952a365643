//! Wills across the cluster. A connection's will is registered with its
//! claim of the client id, so every node knows it. It is published once:
//! by the client's own node when the connection ends badly, or by the
//! leader when that node dies; either way through the log's `WillFire`
//! guard, which lets only the first attempt through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Broker, Publisher};
use crate::codec::{ByteStr, LastWill};
use crate::message::{ForwardedProperties, Message, MessageParts, SharedMessage};
use crate::state::{Command, Will, WillRecord};

impl Will {
    pub fn from_last_will(w: &LastWill, client_id: &ByteStr) -> Will {
        Will {
            message: Arc::new(Message::new(MessageParts {
                topic: w.topic.clone(),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                origin: client_id.clone(),
                expires_at: None,
                properties: ForwardedProperties::from_properties(&w.properties),
                received_at: Instant::now(),
            })),
            delay: w.properties.will_delay_interval.unwrap_or(0),
            expiry_interval: w.properties.message_expiry_interval,
        }
    }

    /// The message as published now (its expiry counts from now).
    pub fn to_message(&self, now: Instant) -> SharedMessage {
        let mut m = (*self.message).clone();
        m.expires_at = self
            .expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s)));
        m.received_at = now;
        Arc::new(m)
    }
}

impl Broker {
    /// The will registered by claim `nonce` is void.
    pub(crate) fn clear_will(&self, client_id: &ByteStr, nonce: u64) {
        self.submit(vec![Command::WillClear {
            client_id: client_id.clone(),
            nonce,
        }]);
    }

    /// Publishes the will registered by claim `nonce` once: through the
    /// log's guard when there is a cluster (another node may be about to
    /// publish it too), at once otherwise.
    pub(crate) fn fire_will(&self, client_id: &ByteStr, nonce: u64, will: impl FnOnce() -> Will) {
        self.submit(vec![Command::WillFire {
            client_id: client_id.clone(),
            nonce,
        }]);
        if !self.cluster.seam.follows_log() {
            self.publish_will(will(), Instant::now());
        }
        // Otherwise `Committed::WillFired` comes back if the guard passed.
    }

    pub(crate) fn publish_will(&self, will: Will, now: Instant) {
        let message = will.to_message(now);
        tracing::debug!(client_id = %message.origin, topic = %message.topic, "publishing will");
        // The will is fire-and-forget: nobody waits on its commit.
        if let Ok(allowed) = self.authorize(Publisher::Will, &message.topic) {
            drop(self.publish(message, allowed));
        }
    }

    /// The leader's liveness probe says these members are down. The wills
    /// registered by a newly down node's connections are fired after their
    /// delays, unless the node is back by then.
    pub(crate) fn set_down_nodes(self: &Arc<Self>, down: Vec<u64>) {
        let down: std::collections::BTreeSet<u64> = down.into_iter().collect();
        let newly: Vec<u64> = {
            let set = self.cluster.down_nodes.borrow();
            down.iter().copied().filter(|n| !set.contains(n)).collect()
        };
        self.cluster.down_nodes.send_if_modified(|set| {
            let changed = *set != down;
            *set = down;
            changed
        });
        for node in newly {
            tracing::warn!(
                node,
                "cluster member unreachable: publishing its clients' wills"
            );
            let wills: Vec<(ByteStr, WillRecord)> = self
                .cluster
                .view
                .read()
                .wills
                .iter()
                .filter(|(_, w)| w.node == node)
                .map(|(c, w)| (c.clone(), w.clone()))
                .collect();
            for (client_id, w) in wills {
                let still_down = move |b: &Broker| b.cluster.down_nodes.borrow().contains(&node);
                let delay = w.will.delay;
                let will = w.will;
                self.arm_will(client_id, w.nonce, delay, still_down, move || will);
            }
        }
    }
}
