//! An application message as the broker holds it between publisher and
//! subscribers: one allocation per publish, shared by every copy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{ByteStr, Properties, Publish, QoS};

/// The MQTT 5 properties that travel with a message from publisher to
/// subscriber unchanged (the spec's "forwarded" set).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardedProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<ByteStr>,
    pub response_topic: Option<ByteStr>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(ByteStr, ByteStr)>,
}

impl ForwardedProperties {
    /// `None` when there is nothing to forward, which is the common case
    /// and costs no allocation.
    pub fn from_properties(p: &Properties) -> Option<Box<Self>> {
        let f = ForwardedProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
        };
        (f != ForwardedProperties::default()).then(|| Box::new(f))
    }

    pub fn write_into(&self, p: &mut Properties) {
        p.payload_format_indicator = self.payload_format_indicator;
        p.content_type.clone_from(&self.content_type);
        p.response_topic.clone_from(&self.response_topic);
        p.correlation_data.clone_from(&self.correlation_data);
        p.user_properties.clone_from(&self.user_properties);
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
    pub properties: Option<Box<ForwardedProperties>>,
    /// When the broker received it (publish-to-delivery latency).
    pub received_at: Instant,
}

pub type SharedMessage = Arc<Message>;

impl Message {
    pub fn from_publish(p: &Publish, origin: ByteStr, now: Instant) -> Message {
        Message {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            qos: p.qos,
            retain: p.retain,
            origin,
            expires_at: p
                .properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            properties: ForwardedProperties::from_properties(&p.properties),
            received_at: now,
        }
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
