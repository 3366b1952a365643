//! The replicated state machine: what every node agrees on, built only by
//! applying [`Command`]s in order. The Raft layer snapshots and restores
//! this; the engine rebuilds its indexes from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use smallvec::SmallVec;

use super::{Command, Will};
use crate::codec::{ByteStr, QoS, SubOptions};
use crate::message::SharedMessage;

#[derive(Debug, Clone, PartialEq)]
pub struct PersistedMessage {
    pub qos: QoS,
    pub retain: bool,
    /// PUBREC received: only PUBREL/PUBCOMP remain to be done.
    pub released: bool,
    pub subscription_ids: SmallVec<[u32; 1]>,
    pub message: SharedMessage,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PersistedSession {
    pub expiry: u32,
    /// Filter as written (with `$share/`), options, subscription identifier.
    pub subscriptions: BTreeMap<ByteStr, (SubOptions, Option<u32>)>,
    /// Owed messages by sequence number.
    pub messages: BTreeMap<u64, PersistedMessage>,
}

/// A registered will and the node whose connection registered it.
#[derive(Debug, Clone, PartialEq)]
pub struct WillRecord {
    pub node: u64,
    /// The claim (connection) that registered it: a will is cleared or
    /// fired only by the connection's own identity, never a later one's.
    pub nonce: u64,
    pub will: Will,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplicatedState {
    pub retained: BTreeMap<ByteStr, SharedMessage>,
    pub sessions: HashMap<ByteStr, PersistedSession>,
    /// Which node serves each client id.
    pub owners: HashMap<ByteStr, u64>,
    /// The username each client id last connected with (if any).
    pub usernames: HashMap<ByteStr, ByteStr>,
    pub wills: HashMap<ByteStr, WillRecord>,
    /// Filter as written -> the nodes with local subscribers on it.
    pub routes: BTreeMap<ByteStr, BTreeSet<u64>>,
    /// The log index this copy reflects (0 outside a cluster); not part of
    /// snapshots, which carry it in their metadata.
    pub applied_index: u64,
}

/// A command that changed nothing (not its owner's, or about something
/// gone): nobody following the log needs to hear of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ignored;

/// What applying a command means beyond the state itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// `node` now owns `client_id` (the claim of connection `nonce`).
    Claimed {
        client_id: ByteStr,
        node: u64,
        nonce: u64,
    },
    /// The will passed its guard; the proposer publishes it.
    WillFired { client_id: ByteStr, will: Will },
    /// The claim changed nothing: the client id is owned by another
    /// identity. Only its proposer (`node`) needs to hear of it.
    ClaimRefused {
        client_id: ByteStr,
        node: u64,
        nonce: u64,
    },
}

impl ReplicatedState {
    /// Applies one command proposed by node `origin`. Commands that change
    /// a session count only from the session's owner: a node that has lost
    /// a client to another node may still have commands about it in flight,
    /// and the new owner resumed from the state as of its claim. Commands
    /// about a session that does not exist are ignored (it may end while
    /// commands about it are in flight).
    pub fn apply(&mut self, origin: u64, command: &Command) -> Result<Option<Effect>, Ignored> {
        match command {
            Command::RetainSet(m) => {
                self.retained.insert(m.topic.clone(), m.clone());
            }
            Command::RetainClear { topic } => {
                self.retained.remove(topic);
            }
            Command::ClaimClient {
                client_id,
                node,
                nonce,
                clean_start,
                will,
                username,
                same_identity_only,
            } => {
                if *same_identity_only && self.owned_by_other(client_id, username.as_ref()) {
                    return Ok(Some(Effect::ClaimRefused {
                        client_id: client_id.clone(),
                        node: *node,
                        nonce: *nonce,
                    }));
                }
                self.owners.insert(client_id.clone(), *node);
                match username {
                    Some(u) => self.usernames.insert(client_id.clone(), u.clone()),
                    None => self.usernames.remove(client_id),
                };
                if *clean_start {
                    self.sessions.remove(client_id);
                }
                match will {
                    Some(w) => {
                        self.wills.insert(
                            client_id.clone(),
                            WillRecord {
                                node: *node,
                                nonce: *nonce,
                                will: w.clone(),
                            },
                        );
                    }
                    None => {
                        self.wills.remove(client_id);
                    }
                }
                return Ok(Some(Effect::Claimed {
                    client_id: client_id.clone(),
                    node: *node,
                    nonce: *nonce,
                }));
            }
            Command::Unclaim { client_id, node } => {
                if self.owners.get(client_id) != Some(node) || self.sessions.contains_key(client_id)
                {
                    return Err(Ignored);
                }
                self.owners.remove(client_id);
                self.usernames.remove(client_id);
            }
            Command::WillClear { client_id, nonce } => {
                if self.wills.get(client_id).is_none_or(|w| w.nonce != *nonce) {
                    return Err(Ignored);
                }
                self.wills.remove(client_id);
            }
            Command::WillFire { client_id, nonce } => {
                if self.wills.get(client_id).is_none_or(|w| w.nonce != *nonce) {
                    return Err(Ignored);
                }
                let record = self.wills.remove(client_id).ok_or(Ignored)?;
                return Ok(Some(Effect::WillFired {
                    client_id: client_id.clone(),
                    will: record.will,
                }));
            }
            Command::RouteAdd { node, filter } => {
                self.routes.entry(filter.clone()).or_default().insert(*node);
            }
            Command::RouteRemove { node, filter } => self.remove_route(*node, filter),
            Command::NodeStarted { node, filters } => {
                self.forget_routes(*node);
                for f in filters {
                    self.routes.entry(f.clone()).or_default().insert(*node);
                }
                let sessions = &self.sessions;
                self.owners
                    .retain(|c, n| *n != *node || sessions.contains_key(c));
                let owners = &self.owners;
                self.usernames.retain(|c, _| owners.contains_key(c));
            }
            Command::NodeGone { node } => self.forget_routes(*node),
            Command::Enqueue {
                client_id,
                seq,
                qos,
                retain,
                subscription_ids,
                local: _,
                message,
            } => {
                // From any node: publishers everywhere owe this session.
                let s = self.sessions.get_mut(client_id).ok_or(Ignored)?;
                {
                    s.messages.insert(
                        *seq,
                        PersistedMessage {
                            qos: *qos,
                            retain: *retain,
                            released: false,
                            subscription_ids: subscription_ids.clone(),
                            message: message.clone(),
                        },
                    );
                }
            }
            _ => self.apply_session(origin, command)?,
        }
        Ok(None)
    }

    /// Whether `client_id` is owned (a live connection or a session) by an
    /// identity other than `username` (`None`: anonymous, an identity too).
    pub fn owned_by_other(&self, client_id: &ByteStr, username: Option<&ByteStr>) -> bool {
        self.owners.contains_key(client_id) && self.usernames.get(client_id) != username
    }

    /// The owner's commands about its session.
    fn apply_session(&mut self, origin: u64, command: &Command) -> Result<(), Ignored> {
        let client_id = match command {
            Command::SessionCreate { client_id, .. }
            | Command::SessionUpdate { client_id, .. }
            | Command::SessionEnd { client_id }
            | Command::Subscribe { client_id, .. }
            | Command::Unsubscribe { client_id, .. }
            | Command::Release { client_id, .. }
            | Command::Ack { client_id, .. } => client_id,
            _ => return Ok(()),
        };
        // An ack or release states what the client has received, whichever
        // node it came through: the previous owner's late ones count too.
        let from_client = matches!(command, Command::Release { .. } | Command::Ack { .. });
        if !from_client && self.owners.get(client_id) != Some(&origin) {
            return Err(Ignored);
        }
        if !matches!(command, Command::SessionCreate { .. })
            && !self.sessions.contains_key(client_id)
        {
            return Err(Ignored);
        }
        match command {
            Command::SessionCreate { client_id, expiry } => {
                // Idempotent: a batch the leader committed twice (its
                // answer was lost, the proposer retried) must not wipe what
                // was enqueued in between. A clean start is the claim's.
                self.sessions.entry(client_id.clone()).or_default().expiry = *expiry;
            }
            Command::SessionUpdate { client_id, expiry } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.expiry = *expiry;
                }
            }
            Command::SessionEnd { client_id } => {
                self.sessions.remove(client_id);
                self.owners.remove(client_id);
                self.usernames.remove(client_id);
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
            _ => {}
        }
        Ok(())
    }

    /// A SHA-256 over a canonical form of the whole state (sorted, so
    /// that equal states give equal digests on every node).
    pub fn digest(&self) -> String {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        let mut put = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        for (topic, m) in &self.retained {
            put(topic.as_bytes());
            put(&m.payload);
        }
        let mut ids: Vec<&ByteStr> = self.sessions.keys().collect();
        ids.sort();
        for id in ids {
            let s = &self.sessions[id];
            put(id.as_bytes());
            put(&s.expiry.to_le_bytes());
            for (f, (o, i)) in &s.subscriptions {
                put(f.as_bytes());
                put(&[
                    o.qos as u8,
                    u8::from(o.no_local),
                    u8::from(o.retain_as_published),
                    o.retain_handling,
                ]);
                put(&i.unwrap_or(0).to_le_bytes());
            }
            for (seq, m) in &s.messages {
                put(&seq.to_le_bytes());
                put(&[m.qos as u8, u8::from(m.released), u8::from(m.retain)]);
                put(&m.message.payload);
            }
        }
        let mut owners: Vec<(&ByteStr, &u64)> = self.owners.iter().collect();
        owners.sort();
        for (c, n) in owners {
            put(c.as_bytes());
            put(&n.to_le_bytes());
            put(self.usernames.get(c).map_or(&b""[..], |u| u.as_bytes()));
        }
        let mut wills: Vec<(&ByteStr, &WillRecord)> = self.wills.iter().collect();
        wills.sort_by(|a, b| a.0.cmp(b.0));
        for (c, w) in wills {
            put(c.as_bytes());
            put(&w.nonce.to_le_bytes());
            put(&w.will.message.payload);
        }
        for (f, nodes) in &self.routes {
            put(f.as_bytes());
            for n in nodes {
                put(&n.to_le_bytes());
            }
        }
        h.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn remove_route(&mut self, node: u64, filter: &ByteStr) {
        if let Some(nodes) = self.routes.get_mut(filter) {
            nodes.remove(&node);
            if nodes.is_empty() {
                self.routes.remove(filter);
            }
        }
    }

    fn forget_routes(&mut self, node: u64) {
        self.routes.retain(|_, nodes| {
            nodes.remove(&node);
            !nodes.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, MessageParts};
    use std::sync::Arc;

    fn msg(topic: &str) -> SharedMessage {
        Arc::new(Message::new(MessageParts {
            topic: ByteStr::from(topic),
            payload: bytes::Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            origin: ByteStr::default(),
            expires_at: None,
            properties: None,
            received_at: std::time::Instant::now(),
        }))
    }

    fn claim(c: &ByteStr, node: u64, clean_start: bool, will: Option<Will>) -> Command {
        Command::ClaimClient {
            client_id: c.clone(),
            node,
            nonce: 7,
            clean_start,
            will,
            username: Some("u".into()),
            same_identity_only: false,
        }
    }

    fn enqueue(c: &ByteStr, seq: u64) -> Command {
        Command::Enqueue {
            client_id: c.clone(),
            seq,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: SmallVec::new(),
            local: true,
            message: msg("a/b"),
        }
    }

    #[test]
    fn session_lifecycle() {
        let c = ByteStr::from("c1");
        let mut s = ReplicatedState::default();
        assert_eq!(
            s.apply(1, &claim(&c, 1, false, None)),
            Ok(Some(Effect::Claimed {
                client_id: c.clone(),
                node: 1,
                nonce: 7
            }))
        );
        let _ = s.apply(
            1,
            &Command::SessionCreate {
                client_id: c.clone(),
                expiry: 60,
            },
        );
        let _ = s.apply(
            1,
            &Command::Subscribe {
                client_id: c.clone(),
                filter: "a/#".into(),
                options: SubOptions::default(),
                identifier: Some(7),
            },
        );
        for seq in 1..=3 {
            // Any node may owe the session a message.
            let _ = s.apply(seq, &enqueue(&c, seq));
        }
        let _ = s.apply(
            1,
            &Command::Release {
                client_id: c.clone(),
                seq: 2,
            },
        );
        let _ = s.apply(
            1,
            &Command::Ack {
                client_id: c.clone(),
                seq: 1,
            },
        );
        let sess = &s.sessions[&c];
        assert_eq!(
            sess.messages.keys().copied().collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(sess.messages[&2].released);
        assert_eq!(sess.subscriptions.len(), 1);
        let _ = s.apply(
            1,
            &Command::SessionEnd {
                client_id: c.clone(),
            },
        );
        assert!(s.sessions.is_empty());
        assert!(s.owners.is_empty());
        // Late commands about an ended session change nothing.
        assert_eq!(
            s.apply(
                1,
                &Command::Ack {
                    client_id: c,
                    seq: 3
                }
            ),
            Err(Ignored)
        );
        assert!(s.sessions.is_empty());
    }

    #[test]
    fn only_the_owner_changes_a_session() {
        let c = ByteStr::from("c");
        let mut s = ReplicatedState::default();
        let _ = s.apply(1, &claim(&c, 1, false, None));
        let _ = s.apply(
            1,
            &Command::SessionCreate {
                client_id: c.clone(),
                expiry: 60,
            },
        );
        let _ = s.apply(1, &enqueue(&c, 10));
        // Node 2 takes the client over; node 1's late ack must not count.
        let _ = s.apply(2, &claim(&c, 2, false, None));
        let sub = Command::Subscribe {
            client_id: c.clone(),
            filter: "late".into(),
            options: SubOptions::default(),
            identifier: None,
        };
        assert_eq!(s.apply(1, &sub), Err(Ignored));
        assert_eq!(s.apply(2, &sub), Ok(None));
        // An ack counts from whichever node the client acked through.
        let _ = s.apply(
            1,
            &Command::Ack {
                client_id: c.clone(),
                seq: 10,
            },
        );
        assert!(s.sessions[&c].messages.is_empty());
        // A clean start discards the session.
        let _ = s.apply(3, &claim(&c, 3, true, None));
        assert!(s.sessions.is_empty());
        assert_eq!(s.owners[&c], 3);
        // Unclaim only by the owner, and never of a persistent session.
        let _ = s.apply(
            2,
            &Command::Unclaim {
                client_id: c.clone(),
                node: 2,
            },
        );
        assert_eq!(s.owners[&c], 3);
        let _ = s.apply(
            3,
            &Command::Unclaim {
                client_id: c.clone(),
                node: 3,
            },
        );
        assert!(s.owners.is_empty());
    }

    #[test]
    fn a_claim_under_another_identity_changes_nothing() {
        let c = ByteStr::from("c");
        let mut s = ReplicatedState::default();
        let _ = s.apply(1, &claim(&c, 1, false, None));
        let _ = s.apply(
            1,
            &Command::SessionCreate {
                client_id: c.clone(),
                expiry: 60,
            },
        );
        let _ = s.apply(1, &enqueue(&c, 10));
        let before = s.digest();
        let as_user = |user: Option<&str>, clean_start: bool, only: bool| Command::ClaimClient {
            client_id: c.clone(),
            node: 2,
            nonce: 9,
            clean_start,
            will: None,
            username: user.map(ByteStr::from),
            same_identity_only: only,
        };
        for (user, clean) in [(Some("m"), false), (Some("m"), true), (None, true)] {
            assert_eq!(
                s.apply(2, &as_user(user, clean, true)),
                Ok(Some(Effect::ClaimRefused {
                    client_id: c.clone(),
                    node: 2,
                    nonce: 9
                })),
                "{user:?}"
            );
            assert_eq!(s.digest(), before, "{user:?} clean {clean}");
        }
        // The same identity takes its own id from any node.
        assert!(matches!(
            s.apply(2, &as_user(Some("u"), false, true)),
            Ok(Some(Effect::Claimed { node: 2, .. }))
        ));
        assert_eq!(s.owners[&c], 2);
        assert_eq!(s.sessions[&c].messages.len(), 1);
        // Records from before the check (or "any"): whoever asks.
        let _ = s.apply(2, &as_user(Some("m"), false, false));
        assert_eq!(s.usernames[&c], ByteStr::from("m"));
        // Once nobody owns the id, anyone may claim it.
        let _ = s.apply(
            2,
            &Command::SessionEnd {
                client_id: c.clone(),
            },
        );
        assert!(matches!(
            s.apply(2, &as_user(None, true, true)),
            Ok(Some(Effect::Claimed { .. }))
        ));
    }

    #[test]
    fn a_will_fires_once_and_only_for_its_connection() {
        let c = ByteStr::from("c");
        let will = Will {
            message: msg("w"),
            delay: 5,
            expiry_interval: None,
        };
        let mut s = ReplicatedState::default();
        let _ = s.apply(1, &claim(&c, 1, false, Some(will.clone())));
        let fire = Command::WillFire {
            client_id: c.clone(),
            nonce: 7,
        };
        // The leader (node 2) and node 1 itself both try.
        assert_eq!(
            s.apply(2, &fire),
            Ok(Some(Effect::WillFired {
                client_id: c.clone(),
                will: will.clone()
            }))
        );
        assert_eq!(s.apply(1, &fire), Err(Ignored));
        // A reconnect replaces the will: the old one is void.
        let _ = s.apply(1, &claim(&c, 1, false, Some(will.clone())));
        let mut again = claim(&c, 1, false, Some(will));
        if let Command::ClaimClient { nonce, .. } = &mut again {
            *nonce = 8;
        }
        let _ = s.apply(1, &again);
        assert_eq!(s.apply(2, &fire), Err(Ignored));
        // WillClear only by the connection that registered it.
        let _ = s.apply(
            1,
            &Command::WillClear {
                client_id: c.clone(),
                nonce: 7,
            },
        );
        assert!(s.wills.contains_key(&c));
        let _ = s.apply(
            1,
            &Command::WillClear {
                client_id: c.clone(),
                nonce: 8,
            },
        );
        assert!(s.wills.is_empty());
    }

    #[test]
    fn routes_follow_nodes() {
        let mut s = ReplicatedState::default();
        let f = ByteStr::from("a/#");
        let _ = s.apply(
            1,
            &Command::RouteAdd {
                node: 1,
                filter: f.clone(),
            },
        );
        let _ = s.apply(
            2,
            &Command::RouteAdd {
                node: 2,
                filter: f.clone(),
            },
        );
        let _ = s.apply(
            2,
            &Command::RouteAdd {
                node: 2,
                filter: "b".into(),
            },
        );
        assert_eq!(s.routes[&f], BTreeSet::from([1, 2]));
        let _ = s.apply(
            1,
            &Command::RouteRemove {
                node: 1,
                filter: f.clone(),
            },
        );
        assert_eq!(s.routes[&f], BTreeSet::from([2]));
        // A restarted node states its routes afresh; its clean sessions go.
        let _ = s.apply(2, &claim(&"clean".into(), 2, true, None));
        let _ = s.apply(
            2,
            &Command::NodeStarted {
                node: 2,
                filters: vec!["c".into()],
            },
        );
        assert_eq!(
            s.routes.keys().cloned().collect::<Vec<_>>(),
            vec![ByteStr::from("c")]
        );
        assert!(s.owners.is_empty());
        let _ = s.apply(1, &Command::NodeGone { node: 2 });
        assert!(s.routes.is_empty());
    }

    #[test]
    fn retained_set_and_clear() {
        let mut s = ReplicatedState::default();
        let _ = s.apply(1, &Command::RetainSet(msg("t")));
        assert_eq!(s.retained.len(), 1);
        let _ = s.apply(1, &Command::RetainClear { topic: "t".into() });
        assert!(s.retained.is_empty());
    }
}
