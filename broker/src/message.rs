//! An application message as the broker holds it between publisher and
//! subscribers: one allocation per publish, shared by every copy.
//!
//! What a message costs is bounded by its size on the wire, whatever its
//! shape: its topic and payload are copied out of the frame they arrived in
//! (a slice would keep the whole read buffer alive), and its MQTT 5
//! properties are kept in wire form in one buffer (a PUBLISH of 200,000
//! empty user properties costs its 1 MB, not 200,000 pairs). Every message
//! alive is counted in the broker's memory use (see [`crate::memory_budget`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{self, ByteStr, DecodeError, Properties, Publish, QoS};
use crate::memory_budget::Held;

/// Payloads below this size are copied, with the topic, into one buffer of
/// their own; larger ones keep their slice of the frame, whose buffer the
/// decoder sized for them.
const COPY_BELOW: usize = 64 * 1024;

/// The MQTT 5 properties that travel with a message from publisher to
/// subscriber unchanged (the spec's "forwarded" set: payload format,
/// content type, response topic, correlation data, user properties), in
/// wire form and without their length prefix: written out to each
/// subscriber as they are, decoded only where a field is wanted.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardedProperties(Bytes);

impl ForwardedProperties {
    /// `None` when there is nothing to forward, which is the common case
    /// and costs no allocation.
    pub fn from_properties(p: &Properties) -> Option<Self> {
        let text = |v: &Option<ByteStr>| v.as_ref().map(|s| s.as_bytes().clone());
        let fields = [
            (0x03, text(&p.content_type)),
            (0x08, text(&p.response_topic)),
            (0x09, p.correlation_data.clone()),
        ];
        let users = p.user_properties.as_wire();
        let len = p.payload_format_indicator.map_or(0, |_| 2)
            + fields
                .iter()
                .filter_map(|(_, v)| v.as_ref())
                .map(|v| 3 + v.len())
                .sum::<usize>()
            + users.len();
        if len == 0 {
            return None;
        }
        let mut out = BytesMut::with_capacity(len);
        if let Some(f) = p.payload_format_indicator {
            out.put_u8(0x01);
            out.put_u8(f);
        }
        for (id, value) in fields {
            // The decoder took each from a two-byte length: it fits.
            if let Some(v) = value.filter(|v| v.len() <= 0xFFFF) {
                out.put_u8(id);
                out.put_u16(v.len() as u16);
                out.put_slice(&v);
            }
        }
        out.put_slice(users);
        Some(ForwardedProperties(out.freeze()))
    }

    /// Properties in wire form from disk or a peer: checked as a PUBLISH's
    /// are, and only the forwarded ones kept. The bytes are copied, so that
    /// they never keep the buffer they came in alive.
    pub fn from_wire(bytes: &[u8]) -> Result<Option<Self>, DecodeError> {
        let p = codec::decode_publish_properties(Bytes::copy_from_slice(bytes))?;
        Ok(Self::from_properties(&p))
    }

    /// The properties in wire form (no length prefix).
    pub fn as_wire(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The properties as fields (for those who look at them; sending
    /// writes [`ForwardedProperties::as_wire`]).
    pub fn decode(&self) -> Properties {
        // Built by `from_properties` from checked values: it decodes.
        codec::decode_publish_properties(self.0.clone()).unwrap_or_default()
    }
}

impl std::fmt::Debug for ForwardedProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.decode().fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteStr,
    pub payload: Bytes,
    /// The QoS it was published with; each copy is sent at the minimum of
    /// this and the subscription's QoS.
    pub qos: QoS,
    /// The RETAIN flag as published (for retain-as-published).
    pub retain: bool,
    /// Client id of the publisher, for no-local; empty for the broker's own
    /// messages ($SYS, the HTTP API).
    pub origin: ByteStr,
    /// When the message expires (MQTT 5 Message Expiry Interval).
    pub expires_at: Option<Instant>,
    pub properties: Option<ForwardedProperties>,
    /// When the broker received it (publish-to-delivery latency).
    pub received_at: Instant,
    /// This message's share of the broker's memory use, while it lives.
    held: Held,
}

/// The parts of a [`Message`], for [`Message::new`].
#[derive(Debug, Clone)]
pub struct MessageParts {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub origin: ByteStr,
    pub expires_at: Option<Instant>,
    pub properties: Option<ForwardedProperties>,
    pub received_at: Instant,
}

pub type SharedMessage = Arc<Message>;

impl Message {
    /// A message of `parts`, counted in the broker's memory use.
    pub fn new(parts: MessageParts) -> Message {
        let held = Held::new(stored_size(
            &parts.topic,
            &parts.payload,
            parts.properties.as_ref(),
            &parts.origin,
        ));
        Message {
            topic: parts.topic,
            payload: parts.payload,
            qos: parts.qos,
            retain: parts.retain,
            origin: parts.origin,
            expires_at: parts.expires_at,
            properties: parts.properties,
            received_at: parts.received_at,
            held,
        }
    }

    pub fn from_publish(p: &Publish, origin: ByteStr, now: Instant) -> Message {
        let (topic, payload) = own(&p.topic, &p.payload);
        Message::new(MessageParts {
            topic,
            payload,
            qos: p.qos,
            retain: p.retain,
            origin,
            expires_at: p
                .properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            properties: ForwardedProperties::from_properties(&p.properties),
            received_at: now,
        })
    }

    /// Bytes of the payload and the forwarded properties: what counts
    /// towards a session's `max_queued_bytes`.
    pub fn body_len(&self) -> usize {
        self.payload.len() + self.properties.as_ref().map_or(0, ForwardedProperties::len)
    }

    /// Seconds left before expiry (rounded up, at least 1 while alive), or
    /// `Err(())` when it has expired. `Ok(None)`: it never expires.
    #[allow(clippy::result_unit_err)]
    pub fn remaining_expiry(&self, now: Instant) -> Result<Option<u32>, ()> {
        match self.expires_at {
            None => Ok(None),
            Some(at) if at <= now => Err(()),
            Some(at) => {
                let left = at - now;
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                Ok(Some(secs.min(u64::from(u32::MAX)) as u32))
            }
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining_expiry(now).is_err()
    }
}

/// What a message of these parts costs in memory: its bytes and a fixed
/// overhead (the shared allocation, the message itself, a queue slot).
pub fn stored_size(
    topic: &str,
    payload: &[u8],
    properties: Option<&ForwardedProperties>,
    origin: &str,
) -> usize {
    const OVERHEAD: usize = 256;
    topic.len()
        + payload.len()
        + properties.map_or(0, ForwardedProperties::len)
        + origin.len()
        + OVERHEAD
}

/// The topic and payload in memory of their own (see [`COPY_BELOW`]).
fn own(topic: &ByteStr, payload: &Bytes) -> (ByteStr, Bytes) {
    if payload.len() >= COPY_BELOW {
        return (ByteStr::from(topic.as_str()), payload.clone());
    }
    let mut buf = BytesMut::with_capacity(topic.len() + payload.len());
    buf.put_slice(topic.as_bytes());
    buf.put_slice(payload);
    let all = buf.freeze();
    // The same (valid) bytes: the check cannot fail.
    let own_topic = ByteStr::from_utf8(all.slice(..topic.len()))
        .unwrap_or_else(|_| ByteStr::from(topic.as_str()));
    (own_topic, all.slice(topic.len()..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::UserProperties;

    #[test]
    fn forwarded_properties_are_their_wire_form() {
        let mut p = Properties {
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            message_expiry_interval: Some(9),
            topic_alias: Some(3),
            user_properties: UserProperties::from_pairs([("k", "v"), ("k", "w")]).unwrap(),
            ..Properties::default()
        };
        let f = ForwardedProperties::from_properties(&p).unwrap();
        // 2 + (3 + 10) + (3 + 2) + 2 * (1 + 2 + 1 + 2 + 1)
        assert_eq!(f.len(), 34);
        let back = ForwardedProperties::from_wire(f.as_wire())
            .unwrap()
            .unwrap();
        assert_eq!(back, f);
        let d = back.decode();
        assert_eq!(d.content_type.as_deref(), Some("text/plain"));
        assert_eq!(d.user_properties.to_vec().len(), 2);
        // Not forwarded: expiry (recomputed per copy), topic alias.
        assert_eq!(d.message_expiry_interval, None);
        assert_eq!(d.topic_alias, None);
        p = Properties::default();
        assert!(ForwardedProperties::from_properties(&p).is_none());
        // Garbage from a peer is an error, not a panic.
        assert!(ForwardedProperties::from_wire(&[0x26, 0xff]).is_err());
        assert!(ForwardedProperties::from_wire(&[0x11, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn empty_user_properties_cost_their_wire_size() {
        let pairs = std::iter::repeat_n(("", ""), 10_000);
        let p = Properties {
            user_properties: UserProperties::from_pairs(pairs).unwrap(),
            ..Properties::default()
        };
        let f = ForwardedProperties::from_properties(&p).unwrap();
        assert_eq!(f.len(), 50_000);
    }
}
