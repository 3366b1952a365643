//! Between openraft's and the broker's types and their protobuf forms.
//!
//! Everything a peer sends is checked here: a message that does not decode
//! into a valid value is an error for that RPC, never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use openraft::{CommittedLeaderId, EntryPayload};
use raftmq_proto::v1 as pb;

use super::types::{Batch, Entry, LogId, Membership, Node, SnapshotMeta, StoredMembership, Vote};
use crate::codec::{ByteStr, Properties, QoS, SubOptions, UserProperties};
use crate::message::{ForwardedProperties, Message, MessageParts, SharedMessage};
use crate::state::{Command, NodeSet, PersistedMessage, ReplicatedState, Will, WillRecord};

/// A protobuf message from a peer that is not a valid value.
#[derive(Debug, thiserror::Error)]
#[error("invalid {0} from peer")]
pub struct Invalid(pub &'static str);

fn need<T>(v: Option<T>, what: &'static str) -> Result<T, Invalid> {
    v.ok_or(Invalid(what))
}

// ---- openraft ---------------------------------------------------------------

pub fn log_id_to(l: &LogId) -> pb::LogId {
    pb::LogId {
        term: l.leader_id.term,
        node_id: l.leader_id.node_id,
        index: l.index,
    }
}

pub fn log_id_from(l: pb::LogId) -> LogId {
    LogId::new(CommittedLeaderId::new(l.term, l.node_id), l.index)
}

pub fn opt_log_id_to(l: &Option<LogId>) -> Option<pb::LogId> {
    l.as_ref().map(log_id_to)
}

pub fn opt_log_id_from(l: Option<pb::LogId>) -> Option<LogId> {
    l.map(log_id_from)
}

pub fn vote_to(v: &Vote) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from(v: Option<pb::Vote>) -> Result<Vote, Invalid> {
    let v = need(v, "vote")?;
    Ok(if v.committed {
        Vote::new_committed(v.term, v.node_id)
    } else {
        Vote::new(v.term, v.node_id)
    })
}

pub fn membership_to(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::NodeIdSet {
                ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| {
                (
                    *id,
                    pb::Node {
                        addr: n.addr.clone(),
                    },
                )
            })
            .collect(),
    }
}

pub fn membership_from(m: Option<pb::Membership>) -> Result<Membership, Invalid> {
    let m = need(m, "membership")?;
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .into_iter()
        .map(|c| c.ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<u64, Node> = m
        .nodes
        .into_iter()
        .map(|(id, n)| (id, Node::new(n.addr)))
        .collect();
    // Every voter must have an address, or openraft would panic later.
    if configs.iter().flatten().any(|id| !nodes.contains_key(id)) {
        return Err(Invalid("membership (voter without node)"));
    }
    Ok(Membership::new(configs, nodes))
}

pub fn stored_membership_to(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to(m.log_id()),
        membership: Some(membership_to(m.membership())),
    }
}

pub fn stored_membership_from(
    m: Option<pb::StoredMembership>,
) -> Result<StoredMembership, Invalid> {
    let m = need(m, "stored membership")?;
    Ok(StoredMembership::new(
        opt_log_id_from(m.log_id),
        membership_from(m.membership)?,
    ))
}

pub fn entry_to(e: &Entry) -> pb::Entry {
    use pb::entry::Payload;
    pb::Entry {
        log_id: Some(log_id_to(&e.log_id)),
        payload: Some(match &e.payload {
            EntryPayload::Blank => Payload::Blank(pb::Empty {}),
            EntryPayload::Normal(b) => Payload::Normal(b.0.clone()),
            EntryPayload::Membership(m) => Payload::Membership(membership_to(m)),
        }),
    }
}

pub fn entry_from(e: pb::Entry) -> Result<Entry, Invalid> {
    use pb::entry::Payload;
    let payload = match need(e.payload, "entry payload")? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Normal(b) => EntryPayload::Normal(Batch(b)),
        Payload::Membership(m) => EntryPayload::Membership(membership_from(Some(m))?),
    };
    Ok(Entry {
        log_id: log_id_from(need(e.log_id, "entry log id")?),
        payload,
    })
}

pub fn snapshot_meta_to(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to(&m.last_log_id),
        last_membership: Some(stored_membership_to(&m.last_membership)),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from(m: Option<pb::SnapshotMeta>) -> Result<SnapshotMeta, Invalid> {
    let m = need(m, "snapshot meta")?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from(m.last_log_id),
        last_membership: stored_membership_from(m.last_membership)?,
        snapshot_id: m.snapshot_id,
    })
}

// ---- broker state -------------------------------------------------------------

fn qos_from(v: u32) -> Result<QoS, Invalid> {
    u8::try_from(v)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or(Invalid("qos"))
}

fn sub_options_to(o: &SubOptions) -> pb::SubOptions {
    pb::SubOptions {
        qos: o.qos as u32,
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        retain_handling: u32::from(o.retain_handling),
    }
}

fn sub_options_from(o: Option<pb::SubOptions>) -> Result<SubOptions, Invalid> {
    let o = need(o, "subscription options")?;
    Ok(SubOptions {
        qos: qos_from(o.qos)?,
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        retain_handling: u8::try_from(o.retain_handling)
            .ok()
            .filter(|h| *h <= 2)
            .ok_or(Invalid("retain handling"))?,
    })
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Messages carry monotonic instants; on the wire and on disk their expiry
/// is wall-clock time, so it survives restarts and crosses machines. Their
/// forwarded properties go as one field in MQTT wire form (the fields 7 to
/// 11 of `Message` are only read, from records written before).
pub fn message_to(m: &Message) -> pb::Message {
    let now = Instant::now();
    let wall = SystemTime::now();
    pb::Message {
        topic: m.topic.to_string(),
        payload: m.payload.clone(),
        qos: m.qos as u32,
        retain: m.retain,
        origin: m.origin.to_string(),
        expires_at_unix_ms: m
            .expires_at
            .map(|e| unix_ms(wall + e.saturating_duration_since(now))),
        properties: m.properties.as_ref().map(|p| p.as_wire().clone()),
        ..Default::default()
    }
}

/// A message from a peer or the disk. Its bytes are copied: a slice would
/// keep the whole batch or snapshot it came in alive for as long as the
/// message is stored.
pub fn message_from(m: Option<pb::Message>) -> Result<SharedMessage, Invalid> {
    let m = need(m, "message")?;
    let now = Instant::now();
    let wall_now = unix_ms(SystemTime::now());
    let properties = match &m.properties {
        Some(wire) => {
            ForwardedProperties::from_wire(wire).map_err(|_| Invalid("message properties"))?
        }
        None => legacy_properties(&m)?,
    };
    Ok(Arc::new(Message::new(MessageParts {
        topic: ByteStr::from(m.topic),
        payload: Bytes::copy_from_slice(&m.payload),
        qos: qos_from(m.qos)?,
        retain: m.retain,
        origin: ByteStr::from(m.origin),
        expires_at: m
            .expires_at_unix_ms
            .map(|at| now + Duration::from_millis(at.saturating_sub(wall_now))),
        properties,
        received_at: now,
    })))
}

/// The forwarded properties of a record written before they were kept in
/// wire form (one field each).
fn legacy_properties(m: &pb::Message) -> Result<Option<ForwardedProperties>, Invalid> {
    let text = |v: &Option<String>, what| match v {
        Some(s) if s.len() > 0xFFFF || s.contains('\0') => Err(Invalid(what)),
        v => Ok(v.as_deref().map(ByteStr::from)),
    };
    let payload_format_indicator = m
        .payload_format_indicator
        .map(|v| u8::try_from(v).ok().filter(|v| *v <= 1))
        .map(|v| v.ok_or(Invalid("payload format indicator")))
        .transpose()?;
    let correlation_data = m
        .correlation_data
        .as_ref()
        .map(|c| Bytes::copy_from_slice(c))
        .filter(|c| c.len() <= 0xFFFF);
    let pairs = m.user_properties.iter().map(|u| (&u.key, &u.value));
    let user_properties =
        UserProperties::from_pairs(pairs).map_err(|_| Invalid("user property"))?;
    let p = Properties {
        payload_format_indicator,
        content_type: text(&m.content_type, "content type")?,
        response_topic: text(&m.response_topic, "response topic")?,
        correlation_data,
        user_properties,
        ..Properties::default()
    };
    Ok(ForwardedProperties::from_properties(&p))
}

fn will_to(w: &Will) -> pb::Will {
    pb::Will {
        message: Some(message_to(&w.message)),
        delay: w.delay,
        expiry_interval: w.expiry_interval,
    }
}

fn will_from(w: pb::Will) -> Result<Will, Invalid> {
    Ok(Will {
        message: message_from(w.message)?,
        delay: w.delay,
        expiry_interval: w.expiry_interval,
    })
}

pub fn command_to(c: &Command) -> pb::Command {
    use pb::command::Kind;
    let kind = match c {
        Command::RetainSet(m) => Kind::RetainSet(pb::RetainSet {
            message: Some(message_to(m)),
        }),
        Command::RetainClear { topic } => Kind::RetainClear(pb::RetainClear {
            topic: topic.to_string(),
        }),
        Command::ClaimClient {
            client_id,
            node,
            nonce,
            clean_start,
            will,
            username,
            same_identity_only,
        } => Kind::ClaimClient(pb::ClaimClient {
            client_id: client_id.to_string(),
            node: *node,
            nonce: *nonce,
            clean_start: *clean_start,
            will: will.as_ref().map(will_to),
            username: username.as_ref().map(|u| u.to_string()),
            same_identity_only: *same_identity_only,
        }),
        Command::Unclaim { client_id, node } => Kind::Unclaim(pb::Unclaim {
            client_id: client_id.to_string(),
            node: *node,
        }),
        Command::WillClear { client_id, nonce } => Kind::WillClear(pb::WillClear {
            client_id: client_id.to_string(),
            nonce: *nonce,
        }),
        Command::WillFire { client_id, nonce } => Kind::WillFire(pb::WillFire {
            client_id: client_id.to_string(),
            nonce: *nonce,
        }),
        Command::RouteAdd { node, filter } => Kind::RouteAdd(pb::RouteAdd {
            node: *node,
            filter: filter.to_string(),
        }),
        Command::RouteRemove { node, filter } => Kind::RouteRemove(pb::RouteRemove {
            node: *node,
            filter: filter.to_string(),
        }),
        Command::NodeStarted { node, filters } => Kind::NodeStarted(pb::NodeStarted {
            node: *node,
            filters: filters.iter().map(|f| f.to_string()).collect(),
        }),
        Command::NodeGone { node } => Kind::NodeGone(pb::NodeGone { node: *node }),
        Command::ClaimBridge {
            name,
            node,
            previous,
        } => Kind::ClaimBridge(pb::ClaimBridge {
            name: name.to_string(),
            node: *node,
            previous: *previous,
        }),
        Command::NodeDraining { node } => Kind::NodeDraining(pb::NodeDraining { node: *node }),
        Command::SessionCreate { client_id, expiry } => Kind::SessionCreate(pb::SessionCreate {
            client_id: client_id.to_string(),
            expiry: *expiry,
        }),
        Command::SessionUpdate { client_id, expiry } => Kind::SessionUpdate(pb::SessionUpdate {
            client_id: client_id.to_string(),
            expiry: *expiry,
        }),
        Command::SessionEnd { client_id } => Kind::SessionEnd(pb::SessionEnd {
            client_id: client_id.to_string(),
        }),
        Command::Subscribe {
            client_id,
            filter,
            options,
            identifier,
        } => Kind::Subscribe(pb::Subscribe {
            client_id: client_id.to_string(),
            filter: filter.to_string(),
            options: Some(sub_options_to(options)),
            identifier: *identifier,
        }),
        Command::Unsubscribe { client_id, filter } => Kind::Unsubscribe(pb::Unsubscribe {
            client_id: client_id.to_string(),
            filter: filter.to_string(),
        }),
        Command::Enqueue {
            client_id,
            seq,
            qos,
            retain,
            subscription_ids,
            local,
            message,
        } => Kind::Enqueue(pb::Enqueue {
            client_id: client_id.to_string(),
            seq: *seq,
            qos: *qos as u32,
            retain: *retain,
            message: Some(message_to(message)),
            subscription_ids: subscription_ids.to_vec(),
            local: *local,
        }),
        Command::Release { client_id, seq } => Kind::Release(pb::Release {
            client_id: client_id.to_string(),
            seq: *seq,
        }),
        Command::Ack { client_id, seq } => Kind::Ack(pb::Ack {
            client_id: client_id.to_string(),
            seq: *seq,
        }),
    };
    pb::Command { kind: Some(kind) }
}

pub fn command_from(c: pb::Command) -> Result<Command, Invalid> {
    use pb::command::Kind;
    Ok(match need(c.kind, "command")? {
        Kind::RetainSet(r) => Command::RetainSet(message_from(r.message)?),
        Kind::RetainClear(r) => Command::RetainClear {
            topic: r.topic.into(),
        },
        Kind::ClaimClient(r) => Command::ClaimClient {
            client_id: r.client_id.into(),
            node: r.node,
            nonce: r.nonce,
            clean_start: r.clean_start,
            will: r.will.map(will_from).transpose()?,
            username: r.username.map(ByteStr::from),
            same_identity_only: r.same_identity_only,
        },
        Kind::Unclaim(r) => Command::Unclaim {
            client_id: r.client_id.into(),
            node: r.node,
        },
        Kind::WillClear(r) => Command::WillClear {
            client_id: r.client_id.into(),
            nonce: r.nonce,
        },
        Kind::WillFire(r) => Command::WillFire {
            client_id: r.client_id.into(),
            nonce: r.nonce,
        },
        Kind::RouteAdd(r) => Command::RouteAdd {
            node: r.node,
            filter: r.filter.into(),
        },
        Kind::RouteRemove(r) => Command::RouteRemove {
            node: r.node,
            filter: r.filter.into(),
        },
        Kind::NodeStarted(r) => Command::NodeStarted {
            node: r.node,
            filters: r.filters.into_iter().map(ByteStr::from).collect(),
        },
        Kind::NodeGone(r) => Command::NodeGone { node: r.node },
        Kind::ClaimBridge(r) => Command::ClaimBridge {
            name: r.name.into(),
            node: r.node,
            previous: r.previous,
        },
        Kind::NodeDraining(r) => Command::NodeDraining { node: r.node },
        Kind::SessionCreate(r) => Command::SessionCreate {
            client_id: r.client_id.into(),
            expiry: r.expiry,
        },
        Kind::SessionUpdate(r) => Command::SessionUpdate {
            client_id: r.client_id.into(),
            expiry: r.expiry,
        },
        Kind::SessionEnd(r) => Command::SessionEnd {
            client_id: r.client_id.into(),
        },
        Kind::Subscribe(r) => Command::Subscribe {
            client_id: r.client_id.into(),
            filter: r.filter.into(),
            options: sub_options_from(r.options)?,
            identifier: r.identifier,
        },
        Kind::Unsubscribe(r) => Command::Unsubscribe {
            client_id: r.client_id.into(),
            filter: r.filter.into(),
        },
        Kind::Enqueue(r) => Command::Enqueue {
            client_id: r.client_id.into(),
            seq: r.seq,
            qos: qos_from(r.qos)?,
            retain: r.retain,
            subscription_ids: r.subscription_ids.into_iter().collect(),
            local: r.local,
            message: message_from(r.message)?,
        },
        Kind::Release(r) => Command::Release {
            client_id: r.client_id.into(),
            seq: r.seq,
        },
        Kind::Ack(r) => Command::Ack {
            client_id: r.client_id.into(),
            seq: r.seq,
        },
    })
}

/// Encodes one group commit as the payload of a Raft entry.
pub fn batch_to(origin: u64, commands: &[Command]) -> Batch {
    batch_numbered(origin, BatchId::default(), commands)
}

/// Which batch of which writer (see `CommandBatch` in the proto); the
/// default names none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchId {
    pub writer: u64,
    pub number: u64,
}

pub fn batch_numbered(origin: u64, id: BatchId, commands: &[Command]) -> Batch {
    use prost::Message as _;
    let b = pb::CommandBatch {
        origin,
        commands: commands.iter().map(command_to).collect(),
        writer: id.writer,
        number: id.number,
    };
    Batch(Bytes::from(b.encode_to_vec()))
}

pub fn batch_from(b: &Batch) -> Result<(u64, Vec<Command>), Invalid> {
    batch_from_numbered(b).map(|(origin, _, commands)| (origin, commands))
}

pub fn batch_from_numbered(b: &Batch) -> Result<(u64, BatchId, Vec<Command>), Invalid> {
    use prost::Message as _;
    let b = pb::CommandBatch::decode(b.0.clone()).map_err(|_| Invalid("command batch"))?;
    let commands = b
        .commands
        .into_iter()
        .map(command_from)
        .collect::<Result<_, _>>()?;
    let id = BatchId {
        writer: b.writer,
        number: b.number,
    };
    Ok((b.origin, id, commands))
}

pub fn subscription_to(
    filter: &ByteStr,
    options: &SubOptions,
    id: Option<u32>,
) -> pb::PersistedSubscription {
    pb::PersistedSubscription {
        filter: filter.to_string(),
        options: Some(sub_options_to(options)),
        identifier: id,
    }
}

pub type Subscription = (ByteStr, (SubOptions, Option<u32>));

pub fn subscription_from(sub: pb::PersistedSubscription) -> Result<Subscription, Invalid> {
    Ok((
        sub.filter.into(),
        (sub_options_from(sub.options)?, sub.identifier),
    ))
}

pub fn persisted_message_to(seq: u64, m: &PersistedMessage) -> pb::PersistedMessage {
    pb::PersistedMessage {
        seq,
        qos: m.qos as u32,
        retain: m.retain,
        released: m.released,
        message: Some(message_to(&m.message)),
        subscription_ids: m.subscription_ids.to_vec(),
    }
}

pub fn persisted_message_from(m: pb::PersistedMessage) -> Result<(u64, PersistedMessage), Invalid> {
    Ok((
        m.seq,
        PersistedMessage {
            qos: qos_from(m.qos)?,
            retain: m.retain,
            released: m.released,
            subscription_ids: m.subscription_ids.into_iter().collect(),
            message: message_from(m.message)?,
        },
    ))
}

pub fn owner_to(s: &ReplicatedState, client_id: &ByteStr, node: u64) -> pb::Owner {
    pb::Owner {
        client_id: client_id.to_string(),
        node,
        username: s.usernames.get(client_id).map(|u| u.to_string()),
    }
}

/// An owner into `state` (its node and, if any, its username).
pub fn owner_into(state: &mut ReplicatedState, o: pb::Owner) {
    let client_id = ByteStr::from(o.client_id);
    if let Some(u) = o.username {
        state.usernames.insert(client_id.clone(), u.into());
    }
    state.owners.insert(client_id, o.node);
}

pub fn will_entry_to(client_id: &ByteStr, w: &WillRecord) -> pb::WillEntry {
    pb::WillEntry {
        client_id: client_id.to_string(),
        node: w.node,
        nonce: w.nonce,
        will: Some(will_to(&w.will)),
    }
}

pub fn will_entry_from(w: pb::WillEntry) -> Result<(ByteStr, WillRecord), Invalid> {
    Ok((
        w.client_id.into(),
        WillRecord {
            node: w.node,
            nonce: w.nonce,
            will: will_from(need(w.will, "will")?)?,
        },
    ))
}

pub fn route_to(filter: &ByteStr, nodes: &NodeSet) -> pb::Route {
    pb::Route {
        filter: filter.to_string(),
        nodes: nodes.iter().copied().collect(),
    }
}

pub fn route_from(r: pb::Route) -> (ByteStr, NodeSet) {
    (r.filter.into(), r.nodes.into_iter().collect())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub use tests::{state_from, state_to};
