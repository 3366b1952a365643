//! What the session has for the client, encoded into the write buffer:
//! the read ACL checked again, expired and oversized copies dropped,
//! topic aliases assigned.

use std::time::Instant;

use bytes::BytesMut;

use super::Connection;
use crate::codec::{self, reason, Packet, Properties, PubResp, PublishRef};
use crate::engine::may_read;
use crate::session::{Delivery, Outgoing};

impl Connection {
    /// Moves what the session has for the client into the write buffer.
    /// Returns whether a retained stream has room to go on.
    pub(super) fn drain_outbox(&mut self, wbuf: &mut BytesMut) -> bool {
        let mut outbox = std::mem::take(&mut self.spare);
        let (wake_publishers, stream_on) = {
            let mut s = self.cell.session.lock();
            s.swap_outbox(&mut outbox);
            let stream_on = self.streaming && s.cursor_room() > 0;
            (s.publishers_to_wake(), stream_on)
        };
        if wake_publishers {
            self.cell.drained.notify_waiters();
        }
        if outbox.is_empty() {
            self.spare = outbox;
            return stream_on;
        }
        // One allocation for the batch (the buffer is dropped when idle).
        let estimate: usize = outbox
            .iter()
            .map(|o| match o {
                Outgoing::Publish { delivery, .. } => {
                    delivery.message.body_len() + delivery.message.topic.len() + 16
                }
                Outgoing::PubRel { .. } => 4,
            })
            .sum();
        wbuf.reserve(estimate);
        let now = Instant::now();
        let mut discarded = Vec::new();
        // Read access is checked again here, against whoever holds the
        // session now: a copy may have been queued under another username
        // (a session resumed by someone else) or before an ACL reload.
        let policy = self.broker.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        let mut sent = 0u64;
        let mut payload_bytes = 0u64;
        let sizes = self.broker.stats.packet_size_out.local();
        let latency = self.broker.stats.publish_latency.local();
        for out in outbox.drain(..) {
            match out {
                Outgoing::PubRel { packet_id } => {
                    self.write(
                        wbuf,
                        Packet::PubRel(PubResp::new(packet_id, reason::SUCCESS)),
                    );
                }
                Outgoing::Publish {
                    packet_id,
                    dup,
                    delivery: d,
                } => {
                    let (username, client_id) = (self.username.as_deref(), &self.cell.client_id);
                    let readable = may_read(acl, username, client_id, &d.message.topic);
                    if !readable {
                        tracing::debug!(topic = %d.message.topic, "copy not sent: the ACL denies reading it");
                    }
                    let before = wbuf.len();
                    let encoded = if readable {
                        self.encode_copy(wbuf, packet_id, dup, &d, now)
                    } else {
                        Ok(false)
                    };
                    match encoded {
                        Ok(true) => {
                            sent += 1;
                            payload_bytes += d.message.payload.len() as u64;
                            sizes.observe((wbuf.len() - before) as f64);
                            latency
                                .observe(now.duration_since(d.message.received_at).as_secs_f64());
                        }
                        Ok(false) => {
                            self.broker.stats.publish_dropped.inc();
                            if packet_id != 0 {
                                discarded.push(packet_id);
                            }
                        }
                        Err(e) => {
                            tracing::warn!("cannot encode PUBLISH: {e}");
                            if packet_id != 0 {
                                discarded.push(packet_id);
                            }
                        }
                    }
                }
            }
        }
        // Counted once per batch: shared atomics are the cost that grows
        // with the message rate (the local histograms flush when dropped).
        let stats = &self.broker.stats;
        stats.publish_sent.inc_by(sent);
        stats.messages_sent.inc_by(sent);
        stats.publish_bytes_sent.inc_by(payload_bytes);
        drop((sizes, latency));
        // Keep the vector for the next batch unless a burst made it large:
        // a quiet subscriber should not hold the memory of its busiest
        // moment.
        if outbox.capacity() <= 256 {
            self.spare = outbox;
        }
        if !discarded.is_empty() {
            let mut acks = Vec::new();
            {
                let mut s = self.cell.session.lock();
                for id in discarded {
                    let (gone, expired) = s.discard(id, now);
                    acks.extend(gone);
                    acks.extend(expired);
                }
            }
            self.persist_acks(acks.into_iter());
            // Discarding may have released queued copies into the window.
            if self.cell.session.lock().has_outbox() {
                self.cell.signal.wake();
            }
        }
        stream_on
    }

    /// Encodes one copy into `wbuf`: `Ok(false)` if it must not be sent
    /// (expired, or larger than the client accepts). Built straight from the
    /// shared message; MQTT 5 properties only when the copy has any.
    pub(super) fn encode_copy(
        &mut self,
        wbuf: &mut BytesMut,
        packet_id: u16,
        dup: bool,
        d: &Delivery,
        now: Instant,
    ) -> Result<bool, codec::EncodeError> {
        let m = &d.message;
        let Ok(remaining) = m.remaining_expiry(now) else {
            return Ok(false);
        };
        let v5 = self.protocol.is_v5();
        let mut properties = None;
        // The forwarded ones are written as stored (wire form); only what
        // differs per copy is built here.
        let forwarded = match &m.properties {
            Some(f) if v5 => &f.as_wire()[..],
            _ => &[],
        };
        if v5 && (remaining.is_some() || !d.subscription_ids.is_empty()) {
            let p = Properties {
                message_expiry_interval: remaining,
                subscription_identifiers: d.subscription_ids.to_vec(),
                ..Properties::default()
            };
            properties = Some(p);
        }
        let full = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: m.topic.as_bytes(),
            packet_id,
            properties: properties.as_ref(),
            forwarded,
            payload: &m.payload,
        };
        // Only a client that set a Maximum Packet Size makes us measure
        // (the full topic, before any alias).
        if self.client_max_packet < u32::MAX {
            let size = codec::encoded_publish_len(&full, self.protocol);
            if size > self.client_max_packet as usize {
                tracing::debug!(
                    size,
                    max = self.client_max_packet,
                    "message larger than the client accepts: dropped"
                );
                return Ok(false);
            }
        }
        let mut topic = m.topic.as_bytes().as_ref();
        if self.client_alias_max > 0 {
            let aliases = &mut self.aliases.get_or_insert_with(Box::default).outbound;
            let alias = match aliases.get(&m.topic) {
                Some(&alias) => {
                    topic = b"";
                    Some(alias)
                }
                None if aliases.len() < usize::from(self.client_alias_max) => {
                    let alias = aliases.len() as u16 + 1;
                    aliases.insert(m.topic.clone(), alias);
                    Some(alias)
                }
                None => None,
            };
            if alias.is_some() {
                properties
                    .get_or_insert_with(Properties::default)
                    .topic_alias = alias;
            }
        }
        let publish = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            properties: properties.as_ref(),
            forwarded,
            payload: &m.payload,
        };
        codec::encode_publish(&publish, self.protocol, wbuf)?;
        Ok(true)
    }
}
