//! A connected bridge: messages pumped between this broker and the remote.
//! Both directions follow one rule: a copy taken from one side is
//! acknowledged to it only once the other side has acknowledged what was
//! forwarded (PUBACK; PUBREC for QoS 2). So an outgoing QoS 1/2 message
//! leaves the bridge's local session (replicated like any persistent
//! session's copy) only when the remote has it, and an incoming one is
//! acknowledged to the remote only when this broker has committed it.
//!
//! Outgoing QoS 2 is exactly once across a takeover: a copy goes to the
//! remote with the packet id the bridge's session gave it (derived from
//! the copy, the same on every node), and each step of its handshake
//! follows the session's replicated one: PUBREC goes to the session when
//! the remote sent it; PUBREL goes to the remote only when the session
//! sent it (its release committed); PUBCOMP goes to the session only when
//! the remote sent it. A node that takes the bridge over resends what the
//! session holds with the same ids under the same remote client id, so
//! the remote's own QoS 2 state (`clean_start = false`) drops a copy it
//! has already received.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::codec::{ByteStr, Packet, Properties, PubResp, Publish, QoS};
use crate::engine::Placement;
use crate::topic_tree::filter_matches;

use super::peer::{Peer, PeerError};
use super::status::BridgeStatus;
use crate::config::bridge::{BridgeConfig, TopicRule};

/// One side of the link.
pub struct Side {
    pub peer: Peer,
    /// Copies we forwarded to this side that it has not acknowledged, by
    /// our packet id: the other side's packet id and QoS, to ack there.
    pending: HashMap<u16, Origin>,
    /// Our QoS 2 copies past PUBREC, waiting for PUBCOMP.
    released: HashSet<u16>,
    /// This side's QoS 2 publishes we hold (not released yet): a
    /// redelivery of one is not forwarded twice.
    receiving: HashSet<u16>,
    /// PUBRELs we passed on to this side from the other one: its PUBCOMP
    /// is owed to the other side.
    owe_comp: HashSet<u16>,
    next_id: u16,
    /// Highest QoS this side accepts (MQTT 5 Maximum QoS).
    max_qos: QoS,
    is_local: bool,
}

#[derive(Debug, Clone, Copy)]
struct Origin {
    packet_id: u16,
    qos: QoS,
}

impl Side {
    pub fn new(peer: Peer, is_local: bool) -> Side {
        let max_qos = peer
            .connack
            .properties
            .maximum_qos
            .and_then(QoS::from_u8)
            .unwrap_or(QoS::ExactlyOnce);
        Side {
            peer,
            pending: HashMap::new(),
            released: HashSet::new(),
            receiving: HashSet::new(),
            owe_comp: HashSet::new(),
            next_id: 0,
            max_qos,
            is_local,
        }
    }

    fn next_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let id = self.next_id;
            if !self.pending.contains_key(&id) && !self.released.contains(&id) {
                return Some(id);
            }
        }
        None
    }
}

/// Why the link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkEnd {
    #[error("this broker: {0}")]
    Local(PeerError),
    #[error("remote: {0}")]
    Remote(PeerError),
    #[error("remote silent for {0:?} (keep alive)")]
    KeepAlive(Duration),
    #[error("this node no longer runs the bridge")]
    Stopped,
}

pub struct Link<'a> {
    pub config: &'a BridgeConfig,
    pub status: &'a BridgeStatus,
    pub local: Side,
    pub remote: Side,
}

impl Link<'_> {
    /// Pumps until either side fails or `keep_running` says stop (asked
    /// whenever the bridges' claims or the node's contact with a leader
    /// change, and once a second).
    pub async fn run(
        &mut self,
        mut claims: watch::Receiver<Placement>,
        mut contact: watch::Receiver<bool>,
        mut keep_running: impl FnMut() -> bool,
    ) -> LinkEnd {
        let keepalive = Duration::from_secs(u64::from(self.config.keepalive_interval.max(1)));
        let mut ping = tokio::time::interval(keepalive);
        ping.reset();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_heard = Instant::now();
        loop {
            if let Err(e) = self.local.peer.flush().await {
                return LinkEnd::Local(e);
            }
            if let Err(e) = self.remote.peer.flush().await {
                return LinkEnd::Remote(e);
            }
            tokio::select! {
                p = self.local.peer.read() => match p {
                    Ok(p) => {
                        if let Err(e) = self.handle(true, p) {
                            return e;
                        }
                    }
                    Err(e) => return LinkEnd::Local(e),
                },
                p = self.remote.peer.read() => match p {
                    Ok(p) => {
                        last_heard = Instant::now();
                        if let Err(e) = self.handle(false, p) {
                            return e;
                        }
                    }
                    Err(e) => return LinkEnd::Remote(e),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > keepalive.mul_f32(1.5) {
                        return LinkEnd::KeepAlive(last_heard.elapsed());
                    }
                    if let Err(e) = self.remote.peer.queue(&Packet::PingReq) {
                        return LinkEnd::Remote(e);
                    }
                }
                _ = tick.tick() => {
                    if !keep_running() {
                        return LinkEnd::Stopped;
                    }
                }
                Ok(()) = claims.changed() => {
                    if !keep_running() {
                        return LinkEnd::Stopped;
                    }
                }
                Ok(()) = contact.changed() => {
                    if !keep_running() {
                        return LinkEnd::Stopped;
                    }
                }
            }
        }
    }

    /// One packet from the local side (`from_local`) or the remote.
    fn handle(&mut self, from_local: bool, packet: Packet) -> Result<(), LinkEnd> {
        let (from, to) = if from_local {
            (&mut self.local, &mut self.remote)
        } else {
            (&mut self.remote, &mut self.local)
        };
        let fail = |e| {
            if from_local {
                LinkEnd::Local(e)
            } else {
                LinkEnd::Remote(e)
            }
        };
        match packet {
            Packet::Publish(p) => {
                forward(self.config, self.status, from, to, p).map_err(|e| either(from_local, e))
            }
            Packet::PubAck(r) => {
                if let Some(origin) = from.pending.remove(&r.packet_id) {
                    acknowledge(to, origin).map_err(|e| either(!from_local, e))?;
                }
                Ok(())
            }
            Packet::PubRec(r) => {
                let origin = from.pending.remove(&r.packet_id);
                if r.code >= 0x80 {
                    tracing::warn!(bridge = %self.config.name, code = r.code, "a forwarded QoS 2 message was refused");
                } else if from_local {
                    // This broker has committed it: release it at once.
                    from.released.insert(r.packet_id);
                    from.peer
                        .queue(&Packet::PubRel(PubResp::new(r.packet_id, 0)))
                        .map_err(fail)?;
                }
                // The remote's PUBREC: its PUBREL waits for the session's.
                if let Some(origin) = origin {
                    acknowledge(to, origin).map_err(|e| either(!from_local, e))?;
                }
                Ok(())
            }
            Packet::PubComp(r) => {
                from.released.remove(&r.packet_id);
                if from.owe_comp.remove(&r.packet_id) {
                    to.peer
                        .queue(&Packet::PubComp(PubResp::new(r.packet_id, 0)))
                        .map_err(|e| either(!from_local, e))?;
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                from.receiving.remove(&r.packet_id);
                if from_local && to.max_qos == QoS::ExactlyOnce {
                    // The session's release is committed: now the remote's
                    // (also for a copy a previous holder had forwarded).
                    to.released.insert(r.packet_id);
                    to.owe_comp.insert(r.packet_id);
                    return to
                        .peer
                        .queue(&Packet::PubRel(PubResp::new(r.packet_id, 0)))
                        .map_err(|e| either(false, e));
                }
                from.peer
                    .queue(&Packet::PubComp(PubResp::new(r.packet_id, 0)))
                    .map_err(fail)
            }
            Packet::SubAck(s) => {
                if s.codes.iter().any(|c| *c >= 0x80) {
                    let side = if from_local {
                        "this broker"
                    } else {
                        "the remote"
                    };
                    tracing::warn!(bridge = %self.config.name, codes = ?s.codes, "{side} refused a bridge subscription");
                }
                Ok(())
            }
            Packet::Disconnect(d) => Err(fail(PeerError::Refused(d.code))),
            Packet::PingResp | Packet::UnsubAck(_) => Ok(()),
            other => {
                tracing::debug!(bridge = %self.config.name, packet = other.name(), "unexpected packet ignored");
                Ok(())
            }
        }
    }
}

fn either(local: bool, e: PeerError) -> LinkEnd {
    if local {
        LinkEnd::Local(e)
    } else {
        LinkEnd::Remote(e)
    }
}

/// Acknowledges a copy to the side it came from, now that the other side
/// has it.
fn acknowledge(origin_side: &mut Side, origin: Origin) -> Result<(), PeerError> {
    let packet = match origin.qos {
        QoS::AtMostOnce => return Ok(()),
        QoS::AtLeastOnce => Packet::PubAck(PubResp::new(origin.packet_id, 0)),
        QoS::ExactlyOnce => Packet::PubRec(PubResp::new(origin.packet_id, 0)),
    };
    origin_side.peer.queue(&packet)
}

/// The rule a message from `from` travels by, and its topic on the other
/// side.
fn route(config: &BridgeConfig, from_local: bool, topic: &str) -> Option<(TopicRule, String)> {
    config.topics.iter().find_map(|rule| {
        let mapped = if from_local {
            (rule.direction.outgoing() && filter_matches(&rule.local_filter(), topic))
                .then(|| rule.to_remote(topic))
                .flatten()
        } else {
            (rule.direction.incoming() && filter_matches(&rule.remote_filter(), topic))
                .then(|| rule.to_local(topic))
                .flatten()
        };
        mapped.map(|t| (rule.clone(), t))
    })
}

/// A PUBLISH from `from`, forwarded to `to`. Errors are `to`'s, except an
/// acknowledgement to `from` for a message no rule takes.
fn forward(
    config: &BridgeConfig,
    status: &BridgeStatus,
    from: &mut Side,
    to: &mut Side,
    p: Publish,
) -> Result<(), PeerError> {
    let origin = Origin {
        packet_id: p.packet_id,
        qos: p.qos,
    };
    if p.qos == QoS::ExactlyOnce && !from.receiving.insert(p.packet_id) {
        // A redelivery of one we hold: it was forwarded already.
        return Ok(());
    }
    let Some((_, topic)) = route(config, from.is_local, &p.topic) else {
        tracing::debug!(bridge = %config.name, topic = %p.topic, "no bridge rule for this topic: dropped");
        return acknowledge(from, origin);
    };
    let qos = p.qos.min(to.max_qos);
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else if from.is_local {
        // The session's id: the same on whichever node resends it (see
        // the top of this file). The session reuses it only once the
        // remote has completed it.
        let id = p.packet_id;
        if to.pending.contains_key(&id) || to.released.contains(&id) {
            return Err(PeerError::Protocol(
                "packet id still in flight at the remote",
            ));
        }
        id
    } else {
        match to.next_packet_id() {
            Some(id) => id,
            None => return Err(PeerError::Protocol("no free packet id")),
        }
    };
    let counters = if from.is_local {
        (&status.messages_out, &status.bytes_out)
    } else {
        (&status.messages_in, &status.bytes_in)
    };
    counters.0.inc();
    counters.1.inc_by(p.payload.len() as u64);
    let properties = if to.peer.protocol.is_v5() {
        // What the message carries; not what described it on the way here.
        Properties {
            topic_alias: None,
            subscription_identifiers: Vec::new(),
            ..p.properties
        }
    } else {
        Properties::default()
    };
    let out = Publish {
        // A copy the session sends again may have reached the remote.
        dup: from.is_local && p.dup,
        qos,
        retain: p.retain,
        topic: ByteStr::from(topic),
        packet_id,
        properties,
        payload: p.payload,
    };
    to.peer.queue(&Packet::Publish(out))?;
    if qos == QoS::AtMostOnce {
        // Nothing will come back to wait for.
        return acknowledge(from, origin);
    }
    to.pending.insert(packet_id, origin);
    Ok(())
}
