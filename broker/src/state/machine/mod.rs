//! The replicated state machine: what every node agrees on, built only by
//! applying [`Command`]s in order. The Raft layer snapshots and restores
//! this; the engine rebuilds its indexes from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use smallvec::SmallVec;

use super::{Change, Command, NodeSet, SubscriptionMap, Will};
use crate::codec::{ByteStr, QoS};
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
    pub subscriptions: SubscriptionMap,
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
    pub routes: BTreeMap<ByteStr, NodeSet>,
    /// Bridge name -> the node that runs it (the bridge's claim).
    pub bridges: BTreeMap<ByteStr, u64>,
    /// Nodes draining: they hold no bridge until they start again.
    pub draining: BTreeSet<u64>,
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
        self.apply_noting(origin, command, &mut Notes(None))
    }

    /// [`ReplicatedState::apply`], noting in `changes` what the command
    /// changed that the engine follows (see [`Change`]).
    pub fn apply_with_changes(
        &mut self,
        origin: u64,
        command: &Command,
        changes: &mut Vec<Change>,
    ) -> Result<Option<Effect>, Ignored> {
        self.apply_noting(origin, command, &mut Notes(Some(changes)))
    }

    fn apply_noting(
        &mut self,
        origin: u64,
        command: &Command,
        notes: &mut Notes<'_>,
    ) -> Result<Option<Effect>, Ignored> {
        match command {
            Command::RetainSet(m) => {
                self.retained.insert(m.topic.clone(), m.clone());
                notes.note(|| Change::Retained {
                    origin,
                    topic: m.topic.clone(),
                    message: Some(m.clone()),
                });
            }
            Command::RetainClear { topic } => {
                self.retained.remove(topic);
                notes.note(|| Change::Retained {
                    origin,
                    topic: topic.clone(),
                    message: None,
                });
            }
            Command::RouteAdd { node, filter } => self.add_route(*node, filter, notes),
            Command::RouteRemove { node, filter } => self.remove_route(*node, filter, notes),
            Command::Enqueue {
                client_id,
                seq,
                qos,
                retain,
                subscription_ids,
                local,
                message,
            } => {
                // From any node: publishers everywhere owe this session.
                let s = self.sessions.get_mut(client_id).ok_or(Ignored)?;
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
                notes.note(|| Change::Enqueued {
                    origin,
                    client_id: client_id.clone(),
                    seq: *seq,
                    qos: *qos,
                    retain: *retain,
                    subscription_ids: subscription_ids.clone(),
                    local: *local,
                    message: message.clone(),
                });
            }
            Command::ClaimClient { .. }
            | Command::Unclaim { .. }
            | Command::WillClear { .. }
            | Command::WillFire { .. } => return self.apply_ownership(command, notes),
            Command::NodeStarted { .. }
            | Command::NodeGone { .. }
            | Command::ClaimBridge { .. }
            | Command::NodeDraining { .. } => self.apply_node(command, notes)?,
            _ => self.apply_session(origin, command, notes)?,
        }
        Ok(None)
    }

    /// Who owns a client id, and its will.
    fn apply_ownership(
        &mut self,
        command: &Command,
        notes: &mut Notes<'_>,
    ) -> Result<Option<Effect>, Ignored> {
        match command {
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
                notes.note(|| Change::Owner {
                    client_id: client_id.clone(),
                    node: *node,
                    nonce: *nonce,
                    username: username.clone(),
                    subscriptions: match self.sessions.get(client_id) {
                        Some(s) if !*clean_start => s.subscriptions.clone(),
                        _ => SubscriptionMap::default(),
                    },
                });
                let ended = if *clean_start {
                    self.sessions.remove(client_id)
                } else {
                    None
                };
                if let Some(old) = ended {
                    notes.note(|| Change::SessionEnded {
                        client_id: client_id.clone(),
                        subscriptions: old.subscriptions,
                    });
                }
                let record = will.as_ref().map(|w| WillRecord {
                    node: *node,
                    nonce: *nonce,
                    will: w.clone(),
                });
                notes.note(|| Change::Will {
                    client_id: client_id.clone(),
                    record: record.clone(),
                });
                match record {
                    Some(r) => {
                        self.wills.insert(client_id.clone(), r);
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
                notes.disowned(client_id);
            }
            Command::WillClear { client_id, nonce } => {
                if self.wills.get(client_id).is_none_or(|w| w.nonce != *nonce) {
                    return Err(Ignored);
                }
                self.wills.remove(client_id);
                notes.will_gone(client_id);
            }
            Command::WillFire { client_id, nonce } => {
                if self.wills.get(client_id).is_none_or(|w| w.nonce != *nonce) {
                    return Err(Ignored);
                }
                let record = self.wills.remove(client_id).ok_or(Ignored)?;
                notes.will_gone(client_id);
                return Ok(Some(Effect::WillFired {
                    client_id: client_id.clone(),
                    will: record.will,
                }));
            }
            _ => return Err(Ignored),
        }
        Ok(None)
    }

    /// Nodes coming, going and draining, and the bridges they hold.
    fn apply_node(&mut self, command: &Command, notes: &mut Notes<'_>) -> Result<(), Ignored> {
        match command {
            Command::NodeStarted { node, filters } => {
                if self.draining.remove(node) {
                    notes.note(|| Change::Draining {
                        node: *node,
                        draining: false,
                    });
                }
                self.forget_routes(*node, notes);
                for f in filters {
                    self.add_route(*node, f, notes);
                }
                // Clean sessions the node served before it restarted are
                // gone: their ids are free.
                let sessions = &self.sessions;
                self.owners.retain(|c, n| {
                    let keep = *n != *node || sessions.contains_key(c);
                    if !keep {
                        notes.disowned(c);
                    }
                    keep
                });
                let owners = &self.owners;
                self.usernames.retain(|c, _| owners.contains_key(c));
            }
            Command::NodeGone { node } => {
                self.forget_routes(*node, notes);
                self.release_bridges(*node, notes);
            }
            Command::ClaimBridge {
                name,
                node,
                previous,
            } => {
                if self.bridges.get(name) != previous.as_ref() || self.draining.contains(node) {
                    return Err(Ignored);
                }
                self.bridges.insert(name.clone(), *node);
                notes.note(|| Change::BridgeHolder {
                    name: name.clone(),
                    node: Some(*node),
                });
            }
            Command::NodeDraining { node } => {
                if self.draining.insert(*node) {
                    notes.note(|| Change::Draining {
                        node: *node,
                        draining: true,
                    });
                }
                self.release_bridges(*node, notes);
            }
            _ => return Err(Ignored),
        }
        Ok(())
    }

    /// Whether `client_id` is owned (a live connection or a session) by an
    /// identity other than `username` (`None`: anonymous, an identity too).
    pub fn owned_by_other(&self, client_id: &ByteStr, username: Option<&ByteStr>) -> bool {
        self.owners.contains_key(client_id) && self.usernames.get(client_id) != username
    }

    /// The owner's commands about its session.
    fn apply_session(
        &mut self,
        origin: u64,
        command: &Command,
        notes: &mut Notes<'_>,
    ) -> Result<(), Ignored> {
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
                let session = self.sessions.entry(client_id.clone()).or_insert_with(|| {
                    notes.note(|| Change::SessionStarted {
                        client_id: client_id.clone(),
                    });
                    PersistedSession::default()
                });
                session.expiry = *expiry;
            }
            Command::SessionUpdate { client_id, expiry } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.expiry = *expiry;
                }
            }
            Command::SessionEnd { client_id } => {
                let ended = self.sessions.remove(client_id);
                self.owners.remove(client_id);
                self.usernames.remove(client_id);
                notes.note(|| Change::SessionEnded {
                    client_id: client_id.clone(),
                    subscriptions: ended.map(|s| s.subscriptions).unwrap_or_default(),
                });
                notes.disowned(client_id);
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
                    notes.note(|| Change::Subscribed {
                        client_id: client_id.clone(),
                        filter: filter.clone(),
                        options: *options,
                        identifier: *identifier,
                    });
                }
            }
            Command::Unsubscribe { client_id, filter } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    if s.subscriptions.remove(filter).is_some() {
                        notes.note(|| Change::Unsubscribed {
                            client_id: client_id.clone(),
                            filter: filter.clone(),
                        });
                    }
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
        for (name, node) in &self.bridges {
            put(name.as_bytes());
            put(&node.to_le_bytes());
        }
        for node in &self.draining {
            put(&node.to_le_bytes());
        }
        h.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn add_route(&mut self, node: u64, filter: &ByteStr, notes: &mut Notes<'_>) {
        if self.routes.entry(filter.clone()).or_default().insert(node) {
            notes.note(|| Change::RouteAdded {
                node,
                filter: filter.clone(),
            });
        }
    }

    fn remove_route(&mut self, node: u64, filter: &ByteStr, notes: &mut Notes<'_>) {
        if let Some(nodes) = self.routes.get_mut(filter) {
            if nodes.remove(&node) {
                notes.note(|| Change::RouteRemoved {
                    node,
                    filter: filter.clone(),
                });
            }
            if nodes.is_empty() {
                self.routes.remove(filter);
            }
        }
    }

    /// `node` runs no bridge any more: they are free to be claimed.
    fn release_bridges(&mut self, node: u64, notes: &mut Notes<'_>) {
        self.bridges.retain(|name, n| {
            let keep = *n != node;
            if !keep {
                notes.note(|| Change::BridgeHolder {
                    name: name.clone(),
                    node: None,
                });
            }
            keep
        });
    }

    fn forget_routes(&mut self, node: u64, notes: &mut Notes<'_>) {
        self.routes.retain(|filter, nodes| {
            if nodes.remove(&node) {
                notes.note(|| Change::RouteRemoved {
                    node,
                    filter: filter.clone(),
                });
            }
            !nodes.is_empty()
        });
    }
}

/// Where [`ReplicatedState::apply_with_changes`] notes its changes; plain
/// `apply` notes none and builds none.
struct Notes<'a>(Option<&'a mut Vec<Change>>);

impl Notes<'_> {
    fn note(&mut self, change: impl FnOnce() -> Change) {
        if let Some(v) = self.0.as_mut() {
            v.push(change());
        }
    }

    fn disowned(&mut self, client_id: &ByteStr) {
        self.note(|| Change::Disowned {
            client_id: client_id.clone(),
        });
    }

    fn will_gone(&mut self, client_id: &ByteStr) {
        self.note(|| Change::Will {
            client_id: client_id.clone(),
            record: None,
        });
    }
}

#[cfg(test)]
mod tests;
