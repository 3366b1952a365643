//! Packets to bytes.
//!
//! The body is written through a [`Sink`]: once into a byte counter to learn
//! the remaining length (and [`encoded_len`]), then into the buffer. One
//! writer for both keeps the two from ever disagreeing.

use bytes::{BufMut, BytesMut};

use super::{Packet, Properties, Protocol, PubResp, QoS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a string or binary field of {0} bytes exceeds 65535")]
    FieldTooLong(usize),
    #[error("packet body of {0} bytes exceeds the MQTT limit of 268435455")]
    PacketTooLarge(usize),
    #[error("{0} does not exist before MQTT 5")]
    NotInProtocol(&'static str),
}

type Result<T> = std::result::Result<T, EncodeError>;

const MAX_REMAINING: usize = 268_435_455;

/// Appends `packet`, as `protocol` spells it, to `buf`.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) -> Result<()> {
    let mut len = 0usize;
    body(packet, protocol, &mut len)?;
    if len > MAX_REMAINING {
        return Err(EncodeError::PacketTooLarge(len));
    }
    buf.reserve(1 + varint_len(len) + len);
    buf.put_u8(first_byte(packet));
    put_varint(buf, len);
    body(packet, protocol, buf)
}

/// An outgoing PUBLISH, borrowed from the message it copies: the hot path
/// encodes each copy straight from the shared message, without building a
/// [`super::Publish`] (and its full property set) per subscriber.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a [u8],
    pub packet_id: u16,
    /// MQTT 5 only; `None` is an empty property block.
    pub properties: Option<&'a Properties>,
    /// MQTT 5 only: properties already in wire form (a message's forwarded
    /// ones), written after `properties` in the same block.
    pub forwarded: &'a [u8],
    pub payload: &'a [u8],
}

/// Appends `p` to `buf`; the same bytes [`encode`] writes for the
/// equivalent [`Packet::Publish`].
pub fn encode_publish(p: &PublishRef<'_>, protocol: Protocol, buf: &mut BytesMut) -> Result<()> {
    let v5 = protocol.is_v5();
    let mut len = 0usize;
    publish_body(&mut len, v5, p)?;
    if len > MAX_REMAINING {
        return Err(EncodeError::PacketTooLarge(len));
    }
    buf.reserve(1 + varint_len(len) + len);
    buf.put_u8(0x30 | (p.dup as u8) << 3 | (p.qos as u8) << 1 | p.retain as u8);
    put_varint(buf, len);
    publish_body(buf, v5, p)
}

/// The size [`encode_publish`] would write (0 if it would fail).
pub fn encoded_publish_len(p: &PublishRef<'_>, protocol: Protocol) -> usize {
    let mut len = 0usize;
    match publish_body(&mut len, protocol.is_v5(), p) {
        Ok(()) => 1 + varint_len(len) + len,
        Err(_) => 0,
    }
}

fn publish_body(s: &mut impl Sink, v5: bool, p: &PublishRef<'_>) -> Result<()> {
    binary(s, p.topic)?;
    if p.qos != QoS::AtMostOnce {
        s.u16(p.packet_id);
    }
    if v5 {
        let mut len = p.forwarded.len();
        if let Some(props) = p.properties {
            property_list(&mut len, props)?;
        }
        s.varint(len);
        if let Some(props) = p.properties {
            property_list(s, props)?;
        }
        s.slice(p.forwarded);
    }
    s.slice(p.payload);
    Ok(())
}

/// The number of bytes [`encode`] would write (0 if it would fail).
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let mut len = 0usize;
    match body(packet, protocol, &mut len) {
        Ok(()) => 1 + varint_len(len) + len,
        Err(_) => 0,
    }
}

/// Where a body goes: a counter or a buffer.
trait Sink {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn slice(&mut self, v: &[u8]);
    fn varint(&mut self, v: usize);
}

impl Sink for usize {
    fn u8(&mut self, _: u8) {
        *self += 1;
    }
    fn u16(&mut self, _: u16) {
        *self += 2;
    }
    fn u32(&mut self, _: u32) {
        *self += 4;
    }
    fn slice(&mut self, v: &[u8]) {
        *self += v.len();
    }
    fn varint(&mut self, v: usize) {
        *self += varint_len(v);
    }
}

impl Sink for BytesMut {
    fn u8(&mut self, v: u8) {
        self.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.put_u32(v);
    }
    fn slice(&mut self, v: &[u8]) {
        self.put_slice(v);
    }
    fn varint(&mut self, v: usize) {
        put_varint(self, v);
    }
}

fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_varint(buf: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            return;
        }
    }
}

fn binary(s: &mut impl Sink, v: &[u8]) -> Result<()> {
    let len = u16::try_from(v.len()).map_err(|_| EncodeError::FieldTooLong(v.len()))?;
    s.u16(len);
    s.slice(v);
    Ok(())
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => 0x30 | (p.dup as u8) << 3 | (p.qos as u8) << 1 | p.retain as u8,
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

fn body(packet: &Packet, protocol: Protocol, s: &mut impl Sink) -> Result<()> {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => {
            let (name, level): (&[u8], u8) = match c.protocol {
                Protocol::V31 => (b"MQIsdp", 3),
                Protocol::V311 => (b"MQTT", 4),
                Protocol::V5 => (b"MQTT", 5),
            };
            let v5 = c.protocol.is_v5();
            binary(s, name)?;
            s.u8(level);
            let mut flags = (c.clean_start as u8) << 1;
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos as u8) << 3 | (w.retain as u8) << 5;
            }
            flags |= (c.password.is_some() as u8) << 6 | (c.username.is_some() as u8) << 7;
            s.u8(flags);
            s.u16(c.keep_alive);
            properties(s, v5, &c.properties)?;
            binary(s, c.client_id.as_bytes())?;
            if let Some(w) = &c.will {
                properties(s, v5, &w.properties)?;
                binary(s, w.topic.as_bytes())?;
                binary(s, &w.payload)?;
            }
            if let Some(u) = &c.username {
                binary(s, u.as_bytes())?;
            }
            if let Some(p) = &c.password {
                binary(s, p)?;
            }
        }
        Packet::ConnAck(a) => {
            s.u8(a.session_present as u8);
            s.u8(a.code);
            properties(s, v5, &a.properties)?;
        }
        Packet::Publish(p) => publish_body(
            s,
            v5,
            &PublishRef {
                dup: p.dup,
                qos: p.qos,
                retain: p.retain,
                topic: p.topic.as_bytes(),
                packet_id: p.packet_id,
                properties: Some(&p.properties),
                forwarded: &[],
                payload: &p.payload,
            },
        )?,
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            pub_resp(s, v5, r)?;
        }
        Packet::Subscribe(sub) => {
            s.u16(sub.packet_id);
            properties(s, v5, &sub.properties)?;
            for (filter, o) in &sub.filters {
                binary(s, filter.as_bytes())?;
                let mut b = o.qos as u8;
                if v5 {
                    b |= (o.no_local as u8) << 2
                        | (o.retain_as_published as u8) << 3
                        | (o.retain_handling & 0x03) << 4;
                }
                s.u8(b);
            }
        }
        Packet::SubAck(a) => {
            s.u16(a.packet_id);
            properties(s, v5, &a.properties)?;
            s.slice(&a.codes);
        }
        Packet::Unsubscribe(u) => {
            s.u16(u.packet_id);
            properties(s, v5, &u.properties)?;
            for filter in &u.filters {
                binary(s, filter.as_bytes())?;
            }
        }
        Packet::UnsubAck(a) => {
            s.u16(a.packet_id);
            if v5 {
                properties(s, v5, &a.properties)?;
                s.slice(&a.codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                reason_tail(s, d.code, &d.properties)?;
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotInProtocol("AUTH"));
            }
            reason_tail(s, a.code, &a.properties)?;
        }
    }
    Ok(())
}

fn pub_resp(s: &mut impl Sink, v5: bool, r: &PubResp) -> Result<()> {
    s.u16(r.packet_id);
    if v5 {
        reason_tail(s, r.code, &r.properties)?;
    }
    Ok(())
}

/// MQTT 5's short forms: success without properties is left out entirely,
/// a reason code without properties is one byte.
fn reason_tail(s: &mut impl Sink, code: u8, props: &Properties) -> Result<()> {
    if props.is_empty() {
        if code != 0 {
            s.u8(code);
        }
        return Ok(());
    }
    s.u8(code);
    properties(s, true, props)
}

/// A property block: its length, then each property present.
fn properties(s: &mut impl Sink, v5: bool, p: &Properties) -> Result<()> {
    if !v5 {
        return Ok(());
    }
    let mut len = 0usize;
    property_list(&mut len, p)?;
    s.varint(len);
    property_list(s, p)
}

fn property_list(s: &mut impl Sink, p: &Properties) -> Result<()> {
    fn byte(s: &mut impl Sink, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            s.u8(id);
            s.u8(v);
        }
    }
    fn two(s: &mut impl Sink, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            s.u8(id);
            s.u16(v);
        }
    }
    fn four(s: &mut impl Sink, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            s.u8(id);
            s.u32(v);
        }
    }
    fn bin(s: &mut impl Sink, id: u8, v: Option<&[u8]>) -> Result<()> {
        if let Some(v) = v {
            s.u8(id);
            binary(s, v)?;
        }
        Ok(())
    }
    fn text(v: &Option<super::ByteStr>) -> Option<&[u8]> {
        v.as_ref().map(|t| &t.as_bytes()[..])
    }

    byte(s, 0x01, p.payload_format_indicator);
    four(s, 0x02, p.message_expiry_interval);
    bin(s, 0x03, text(&p.content_type))?;
    bin(s, 0x08, text(&p.response_topic))?;
    bin(s, 0x09, p.correlation_data.as_deref())?;
    for id in &p.subscription_identifiers {
        s.u8(0x0B);
        s.varint(*id as usize);
    }
    four(s, 0x11, p.session_expiry_interval);
    bin(s, 0x12, text(&p.assigned_client_identifier))?;
    two(s, 0x13, p.server_keep_alive);
    bin(s, 0x15, text(&p.authentication_method))?;
    bin(s, 0x16, p.authentication_data.as_deref())?;
    byte(s, 0x17, p.request_problem_information);
    four(s, 0x18, p.will_delay_interval);
    byte(s, 0x19, p.request_response_information);
    bin(s, 0x1A, text(&p.response_information))?;
    bin(s, 0x1C, text(&p.server_reference))?;
    bin(s, 0x1F, text(&p.reason_string))?;
    two(s, 0x21, p.receive_maximum);
    two(s, 0x22, p.topic_alias_maximum);
    two(s, 0x23, p.topic_alias);
    byte(s, 0x24, p.maximum_qos);
    byte(s, 0x25, p.retain_available);
    // Kept in wire form: one copy of the bytes, however many there are.
    s.slice(p.user_properties.as_wire());
    four(s, 0x27, p.maximum_packet_size);
    byte(s, 0x28, p.wildcard_subscription_available);
    byte(s, 0x29, p.subscription_identifier_available);
    byte(s, 0x2A, p.shared_subscription_available);
    Ok(())
}
