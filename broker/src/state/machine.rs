//! The replicated state machine: what every node agrees on, built only by
//! applying [`Command`]s in order. The Raft layer snapshots and restores
//! this; the engine rebuilds its indexes from it.

use std::collections::{BTreeMap, HashMap};

use super::Command;
use crate::codec::{ByteStr, QoS, SubOptions};
use crate::message::SharedMessage;

#[derive(Debug, Clone, PartialEq)]
pub struct PersistedMessage {
    pub qos: QoS,
    pub retain: bool,
    /// PUBREC received: only PUBREL/PUBCOMP remain to be done.
    pub released: bool,
    pub message: SharedMessage,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PersistedSession {
    pub expiry: u32,
    /// Filter as written (with `$share/`), options, subscription identifier.
    pub subscriptions: BTreeMap<ByteStr, (SubOptions, Option<u32>)>,
    /// Owed messages by sequence number, oldest first.
    pub messages: BTreeMap<u64, PersistedMessage>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplicatedState {
    pub retained: BTreeMap<ByteStr, SharedMessage>,
    pub sessions: HashMap<ByteStr, PersistedSession>,
    pub owners: HashMap<ByteStr, u64>,
}

impl ReplicatedState {
    /// Applies one command. Commands about a session that does not exist are
    /// ignored: a session may end while commands about it are in flight.
    pub fn apply(&mut self, command: &Command) {
        match command {
            Command::RetainSet(m) => {
                self.retained.insert(m.topic.clone(), m.clone());
            }
            Command::RetainClear { topic } => {
                self.retained.remove(topic);
            }
            Command::ClaimClient { client_id, node } => {
                self.owners.insert(client_id.clone(), *node);
            }
            Command::SessionCreate { client_id, expiry } => {
                self.sessions.insert(
                    client_id.clone(),
                    PersistedSession {
                        expiry: *expiry,
                        ..Default::default()
                    },
                );
            }
            Command::SessionUpdate { client_id, expiry } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.expiry = *expiry;
                }
            }
            Command::SessionEnd { client_id } => {
                self.sessions.remove(client_id);
                self.owners.remove(client_id);
            }
            Command::Subscribe {
                client_id,
                filter,
                options,
                identifier,
            } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.subscriptions
                        .insert(filter.clone(), (*options, *identifier));
                }
            }
            Command::Unsubscribe { client_id, filter } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.subscriptions.remove(filter);
                }
            }
            Command::Enqueue {
                client_id,
                seq,
                qos,
                retain,
                message,
            } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.messages.insert(
                        *seq,
                        PersistedMessage {
                            qos: *qos,
                            retain: *retain,
                            released: false,
                            message: message.clone(),
                        },
                    );
                }
            }
            Command::Release { client_id, seq } => {
                if let Some(m) = self
                    .sessions
                    .get_mut(client_id)
                    .and_then(|s| s.messages.get_mut(seq))
                {
                    m.released = true;
                }
            }
            Command::Ack { client_id, seq } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.messages.remove(seq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use std::sync::Arc;

    fn msg(topic: &str) -> SharedMessage {
        Arc::new(Message {
            topic: ByteStr::from(topic),
            payload: bytes::Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            origin: ByteStr::default(),
            expires_at: None,
            properties: None,
            received_at: std::time::Instant::now(),
        })
    }

    #[test]
    fn session_lifecycle() {
        let c = ByteStr::from("c1");
        let mut s = ReplicatedState::default();
        s.apply(&Command::SessionCreate {
            client_id: c.clone(),
            expiry: 60,
        });
        s.apply(&Command::Subscribe {
            client_id: c.clone(),
            filter: "a/#".into(),
            options: SubOptions::default(),
            identifier: Some(7),
        });
        for seq in 1..=3 {
            s.apply(&Command::Enqueue {
                client_id: c.clone(),
                seq,
                qos: QoS::ExactlyOnce,
                retain: false,
                message: msg("a/b"),
            });
        }
        s.apply(&Command::Release {
            client_id: c.clone(),
            seq: 2,
        });
        s.apply(&Command::Ack {
            client_id: c.clone(),
            seq: 1,
        });
        let sess = &s.sessions[&c];
        assert_eq!(
            sess.messages.keys().copied().collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(sess.messages[&2].released);
        assert_eq!(sess.subscriptions.len(), 1);
        s.apply(&Command::SessionEnd {
            client_id: c.clone(),
        });
        assert!(s.sessions.is_empty());
        // Late commands about an ended session change nothing.
        s.apply(&Command::Ack {
            client_id: c,
            seq: 3,
        });
        assert!(s.sessions.is_empty());
    }

    #[test]
    fn retained_set_and_clear() {
        let mut s = ReplicatedState::default();
        s.apply(&Command::RetainSet(msg("t")));
        assert_eq!(s.retained.len(), 1);
        s.apply(&Command::RetainClear { topic: "t".into() });
        assert!(s.retained.is_empty());
    }
}
