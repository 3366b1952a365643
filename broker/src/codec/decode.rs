//! Bytes to packets.
//!
//! The fixed header is read first and the whole frame's size is checked
//! against the maximum packet size before a byte of the body is looked at or
//! any buffer grows for it. The body is then split off the read buffer once
//! and every field is a slice of that one frame (no copies). Every length
//! prefix inside is checked against the bytes left in the frame.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    Auth, ByteStr, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Protocol, PubResp,
    Publish, QoS, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe, UserProperties,
};

/// Why bytes are not an acceptable packet. Each maps to the MQTT 5 reason
/// code the connection closes with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    TooLarge { size: usize, max: u32 },
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocol { level: u8 },
    #[error("topic name is not valid")]
    TopicNameInvalid,
    #[error("payload format indicator says UTF-8 but the payload is not")]
    PayloadFormatInvalid,
}

impl DecodeError {
    pub fn reason_code(&self) -> u8 {
        use super::reason::*;
        match self {
            DecodeError::Malformed(_) => MALFORMED_PACKET,
            DecodeError::Protocol(_) => PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicNameInvalid => TOPIC_NAME_INVALID,
            DecodeError::PayloadFormatInvalid => PAYLOAD_FORMAT_INVALID,
        }
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// The packet identifier of a PUBACK in its bare form (`40 02`, then the
/// id: success, no properties, the form nearly every PUBACK takes in every
/// protocol version) at the front of `buf`; `None` for anything else,
/// which [`decode`] then reads. QoS 1 fan-out reads one PUBACK per copy:
/// taken this way they are neither split off the buffer nor built into a
/// [`Packet`] (moving that was the largest cost of reading them).
pub fn bare_puback(buf: &[u8]) -> Option<u16> {
    match *buf {
        [0x40, 0x02, hi, lo, ..] if [hi, lo] != [0, 0] => Some(u16::from_be_bytes([hi, lo])),
        _ => None,
    }
}

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// `Ok(None)` means more bytes are needed. `protocol` is the connection's
/// protocol, `None` before CONNECT (then only CONNECT is accepted).
/// `max_packet_size` bounds the whole packet, fixed header included; 0 means
/// the protocol's own limit only.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_packet_size: u32,
) -> Result<Option<Packet>> {
    let Some((header_len, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header_len + remaining;
    if max_packet_size != 0 && size > max_packet_size as usize {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    let first = buf[0];
    let kind = first >> 4;
    let flags = first & 0x0F;
    let protocol = match protocol {
        Some(p) => p,
        None if kind == 1 => Protocol::V5, // replaced by the CONNECT's own
        None => return Err(DecodeError::Protocol("the first packet must be CONNECT")),
    };
    if buf.len() < size {
        // The size is known and allowed: make room for the rest in one go.
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    let mut r = Reader { buf: frame };
    let packet = match kind {
        1 => Packet::Connect(Box::new(connect(&mut r, flags)?)),
        2 => Packet::ConnAck(connack(&mut r, flags, protocol)?),
        3 => Packet::Publish(publish(&mut r, flags, protocol)?),
        4 => Packet::PubAck(pub_resp(&mut r, flags, 0, protocol)?),
        5 => Packet::PubRec(pub_resp(&mut r, flags, 0, protocol)?),
        6 => Packet::PubRel(pub_resp(&mut r, flags, 2, protocol)?),
        7 => Packet::PubComp(pub_resp(&mut r, flags, 0, protocol)?),
        8 => Packet::Subscribe(subscribe(&mut r, flags, protocol)?),
        9 => Packet::SubAck(suback(&mut r, flags, protocol)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r, flags, protocol)?),
        11 => Packet::UnsubAck(unsuback(&mut r, flags, protocol)?),
        12 => empty(&mut r, flags, Packet::PingReq)?,
        13 => empty(&mut r, flags, Packet::PingResp)?,
        14 => Packet::Disconnect(disconnect(&mut r, flags, protocol)?),
        15 if protocol.is_v5() => Packet::Auth(auth(&mut r, flags)?),
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    if r.buf.has_remaining() {
        return Err(DecodeError::Malformed(
            "bytes left after the packet's fields",
        ));
    }
    Ok(Some(packet))
}

/// The protocol a CONNECT at the front of `buf` names, read before the
/// packet is decoded: a CONNECT that then fails to decode can still be
/// answered in its client's own format (MQTT 5: a CONNACK with the reason
/// code). `None` unless the bytes start a CONNECT naming a known protocol.
pub fn connect_protocol(buf: &[u8]) -> Option<Protocol> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let (header_len, _) = fixed_header(buf).ok()??;
    let body = buf.get(header_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let name = body.get(2..2 + name_len)?;
    match (name, *body.get(2 + name_len)?) {
        (b"MQTT", 5) => Some(Protocol::V5),
        (b"MQTT", 4) => Some(Protocol::V311),
        (b"MQIsdp", 3) => Some(Protocol::V31),
        _ => None,
    }
}

/// Reads the fixed header: its length and the remaining length, or `None`
/// if it is not complete yet.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, value)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

/// A cursor over one frame's body. Every read checks what is left.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<()> {
        if self.buf.remaining() < n {
            Err(DecodeError::Malformed(
                "field runs past the end of the packet",
            ))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    fn varint(&mut self) -> Result<u32> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= ((b & 0x7F) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    fn take(&mut self, n: usize) -> Result<Bytes> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Binary data: a two-byte length, then that many bytes.
    fn binary(&mut self) -> Result<Bytes> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// A UTF-8 string: no invalid UTF-8 and no U+0000 (MQTT-1.5.4-1/2).
    fn string(&mut self) -> Result<ByteStr> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(DecodeError::Malformed("string contains U+0000"));
        }
        ByteStr::from_utf8(bytes).map_err(|_| DecodeError::Malformed("string is not UTF-8"))
    }

    /// Checks a UTF-8 string as [`Reader::string`] does and steps over
    /// it, making nothing of it (user properties stay in wire form).
    fn check_string(&mut self) -> Result<()> {
        let n = self.u16()? as usize;
        self.need(n)?;
        let bytes = &self.buf[..n];
        if bytes.contains(&0) {
            return Err(DecodeError::Malformed("string contains U+0000"));
        }
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed("string is not UTF-8"))?;
        self.buf.advance(n);
        Ok(())
    }

    fn packet_id(&mut self) -> Result<u16> {
        match self.u16()? {
            0 => Err(DecodeError::Malformed("packet identifier 0")),
            id => Ok(id),
        }
    }

    fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    fn is_empty(&self) -> bool {
        !self.buf.has_remaining()
    }
}

fn connect(r: &mut Reader, flags: u8) -> Result<Connect> {
    if flags != 0 {
        return Err(DecodeError::Malformed("CONNECT flags must be 0"));
    }
    let name = r.string()?;
    let level = r.u8()?;
    let protocol = match (&*name, level) {
        ("MQIsdp", 3) => Protocol::V31,
        ("MQTT", 4) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        ("MQIsdp" | "MQTT", level) => return Err(DecodeError::UnsupportedProtocol { level }),
        _ => return Err(DecodeError::Protocol("unknown protocol name")),
    };
    let cflags = r.u8()?;
    if cflags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let will_flag = cflags & 0x04 != 0;
    let will_qos =
        QoS::from_u8((cflags >> 3) & 0x03).ok_or(DecodeError::Malformed("will QoS 3"))?;
    let will_retain = cflags & 0x20 != 0;
    let has_password = cflags & 0x40 != 0;
    let has_username = cflags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain without a will"));
    }
    if has_password && !has_username && !protocol.is_v5() {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = r.u16()?;
    let connect_properties = properties(r, protocol, Ctx::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = properties(r, protocol, Ctx::Will)?;
        let topic = r.string()?;
        check_topic_name(&topic)?;
        if topic.is_empty() {
            return Err(DecodeError::TopicNameInvalid);
        }
        let payload = r.binary()?;
        check_payload_format(&properties, &payload)?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = has_username.then(|| r.string()).transpose()?;
    let password = has_password.then(|| r.binary()).transpose()?;
    Ok(Connect {
        protocol,
        clean_start: cflags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties: connect_properties,
    })
}

fn connack(r: &mut Reader, flags: u8, protocol: Protocol) -> Result<ConnAck> {
    if flags != 0 {
        return Err(DecodeError::Malformed("CONNACK flags must be 0"));
    }
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("CONNACK reserved flags set"));
    }
    let code = r.u8()?;
    let properties = properties(r, protocol, Ctx::ConnAck)?;
    Ok(ConnAck {
        session_present: ack_flags & 0x01 != 0,
        code,
        properties,
    })
}

fn publish(r: &mut Reader, flags: u8, protocol: Protocol) -> Result<Publish> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?;
    let dup = flags & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string()?;
    check_topic_name(&topic)?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = properties(r, protocol, Ctx::Publish)?;
    if topic.is_empty() && properties.topic_alias.is_none() {
        // 3.x has no aliases, so an empty topic is never valid there.
        return Err(DecodeError::TopicNameInvalid);
    }
    let payload = r.rest();
    check_payload_format(&properties, &payload)?;
    Ok(Publish {
        dup,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. MQTT 5 may leave out the reason code
/// (then 0) and the properties.
fn pub_resp(r: &mut Reader, flags: u8, want_flags: u8, protocol: Protocol) -> Result<PubResp> {
    if flags != want_flags {
        return Err(DecodeError::Malformed("acknowledgement flags"));
    }
    let packet_id = r.packet_id()?;
    let (code, properties) = reason_and_properties(r, protocol, Ctx::Ack)?;
    Ok(PubResp {
        packet_id,
        code,
        properties,
    })
}

fn subscribe(r: &mut Reader, flags: u8, protocol: Protocol) -> Result<Subscribe> {
    if flags != 0x02 {
        return Err(DecodeError::Malformed("SUBSCRIBE flags must be 2"));
    }
    let packet_id = r.packet_id()?;
    let properties = properties(r, protocol, Ctx::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let o = r.u8()?;
        let qos = QoS::from_u8(o & 0x03).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        let options = if protocol.is_v5() {
            if o & 0xC0 != 0 {
                return Err(DecodeError::Malformed("subscription options reserved bits"));
            }
            let retain_handling = (o >> 4) & 0x03;
            if retain_handling == 3 {
                return Err(DecodeError::Protocol("retain handling 3"));
            }
            SubOptions {
                qos,
                no_local: o & 0x04 != 0,
                retain_as_published: o & 0x08 != 0,
                retain_handling,
            }
        } else {
            if o & 0xFC != 0 {
                return Err(DecodeError::Malformed("requested QoS reserved bits"));
            }
            SubOptions {
                qos,
                ..SubOptions::default()
            }
        };
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn suback(r: &mut Reader, flags: u8, protocol: Protocol) -> Result<SubAck> {
    if flags != 0 {
        return Err(DecodeError::Malformed("SUBACK flags must be 0"));
    }
    let packet_id = r.packet_id()?;
    let properties = properties(r, protocol, Ctx::SubAck)?;
    let codes = r.rest().to_vec();
    if codes.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without a return code"));
    }
    Ok(SubAck {
        packet_id,
        codes,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, flags: u8, protocol: Protocol) -> Result<Unsubscribe> {
    if flags != 0x02 {
        return Err(DecodeError::Malformed("UNSUBSCRIBE flags must be 2"));
    }
    let packet_id = r.packet_id()?;
    let properties = properties(r, protocol, Ctx::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader, flags: u8, protocol: Protocol) -> Result<UnsubAck> {
    if flags != 0 {
        return Err(DecodeError::Malformed("UNSUBACK flags must be 0"));
    }
    let packet_id = r.packet_id()?;
    let properties = properties(r, protocol, Ctx::UnsubAck)?;
    let codes = if protocol.is_v5() {
        let codes = r.rest().to_vec();
        if codes.is_empty() {
            return Err(DecodeError::Protocol("UNSUBACK without a reason code"));
        }
        codes
    } else {
        Vec::new()
    };
    Ok(UnsubAck {
        packet_id,
        codes,
        properties,
    })
}

fn empty(r: &mut Reader, flags: u8, packet: Packet) -> Result<Packet> {
    if flags != 0 || !r.is_empty() {
        return Err(DecodeError::Malformed(
            "PINGREQ/PINGRESP with flags or a body",
        ));
    }
    Ok(packet)
}

fn disconnect(r: &mut Reader, flags: u8, protocol: Protocol) -> Result<Disconnect> {
    if flags != 0 {
        return Err(DecodeError::Malformed("DISCONNECT flags must be 0"));
    }
    let (code, properties) = reason_and_properties(r, protocol, Ctx::Disconnect)?;
    Ok(Disconnect { code, properties })
}

fn auth(r: &mut Reader, flags: u8) -> Result<Auth> {
    if flags != 0 {
        return Err(DecodeError::Malformed("AUTH flags must be 0"));
    }
    let (code, properties) = reason_and_properties(r, Protocol::V5, Ctx::Auth)?;
    Ok(Auth { code, properties })
}

/// The MQTT 5 tail shared by acks, DISCONNECT and AUTH: an optional reason
/// code, then optional properties. 3.x packets have neither.
fn reason_and_properties(r: &mut Reader, protocol: Protocol, ctx: Ctx) -> Result<(u8, Properties)> {
    if !protocol.is_v5() || r.is_empty() {
        return Ok((0, Properties::default()));
    }
    let code = r.u8()?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        properties(r, protocol, ctx)?
    };
    Ok((code, properties))
}

/// A PUBLISH topic (or will topic) may not hold wildcards (MQTT-3.3.2-2).
fn check_topic_name(topic: &str) -> Result<()> {
    if topic.contains(['+', '#']) {
        return Err(DecodeError::TopicNameInvalid);
    }
    Ok(())
}

fn check_payload_format(properties: &Properties, payload: &[u8]) -> Result<()> {
    if properties.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
        return Err(DecodeError::PayloadFormatInvalid);
    }
    Ok(())
}

/// Which packet a property block belongs to: it decides which properties
/// are allowed (MQTT 5 section 2.2.2.2).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
enum Ctx {
    Connect = 1 << 0,
    Will = 1 << 1,
    ConnAck = 1 << 2,
    Publish = 1 << 3,
    Ack = 1 << 4,
    Subscribe = 1 << 5,
    SubAck = 1 << 6,
    Unsubscribe = 1 << 7,
    UnsubAck = 1 << 8,
    Disconnect = 1 << 9,
    Auth = 1 << 10,
}

const C: u16 = Ctx::Connect as u16;
const W: u16 = Ctx::Will as u16;
const CA: u16 = Ctx::ConnAck as u16;
const P: u16 = Ctx::Publish as u16;
const A: u16 = Ctx::Ack as u16;
const S: u16 = Ctx::Subscribe as u16;
const SA: u16 = Ctx::SubAck as u16;
const UA: u16 = Ctx::UnsubAck as u16;
const D: u16 = Ctx::Disconnect as u16;
const AU: u16 = Ctx::Auth as u16;
const ALL: u16 = 0x7FF;

/// The packets each property identifier may appear in.
fn allowed(id: u8) -> Option<u16> {
    Some(match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => P | W,
        0x0B => P | S,
        0x11 => C | CA | D,
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => CA,
        0x15 | 0x16 => C | CA | AU,
        0x17 | 0x19 => C,
        0x18 => W,
        0x1C => CA | D,
        0x1F => CA | A | SA | UA | D | AU,
        0x21 | 0x22 | 0x27 => C | CA,
        0x23 => P,
        0x26 => ALL,
        _ => return None,
    })
}

/// The property block of a 5.0 packet; nothing on 3.x.
fn properties(r: &mut Reader, protocol: Protocol, ctx: Ctx) -> Result<Properties> {
    if !protocol.is_v5() {
        return Ok(Properties::default());
    }
    let len = r.varint()? as usize;
    let mut r = Reader { buf: r.take(len)? };
    property_entries(&mut r, ctx)
}

/// The properties of a PUBLISH written without their length prefix (a
/// stored message's forwarded properties, read back from disk or a peer),
/// checked as the decoder checks a PUBLISH's.
pub fn decode_publish_properties(bytes: Bytes) -> Result<Properties> {
    property_entries(&mut Reader { buf: bytes }, Ctx::Publish)
}

/// Every property in `r` (a property block without its length).
fn property_entries(r: &mut Reader, ctx: Ctx) -> Result<Properties> {
    let block = r.buf.clone();
    let at = |r: &Reader| block.len() - r.buf.len();
    let mut users = UserEntries::default();
    let mut p = Properties::default();
    while !r.is_empty() {
        let start = at(r);
        let id = r.varint()?;
        let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property"))?;
        let mask = allowed(id).ok_or(DecodeError::Malformed("unknown property"))?;
        if mask & ctx as u16 == 0 {
            return Err(DecodeError::Protocol("property not allowed in this packet"));
        }
        match id {
            0x01 => set(&mut p.payload_format_indicator, flag(r)?)?,
            0x02 => set(&mut p.message_expiry_interval, r.u32()?)?,
            0x03 => set(&mut p.content_type, r.string()?)?,
            0x08 => {
                let topic = r.string()?;
                if topic.is_empty() || topic.contains(['+', '#']) {
                    return Err(DecodeError::Protocol("response topic is not a topic name"));
                }
                set(&mut p.response_topic, topic)?
            }
            0x09 => set(&mut p.correlation_data, r.binary()?)?,
            0x0B => {
                let v = r.varint()?;
                if v == 0 {
                    return Err(DecodeError::Protocol("subscription identifier 0"));
                }
                if ctx == Ctx::Subscribe && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::Protocol("two subscription identifiers"));
                }
                p.subscription_identifiers.push(v);
            }
            0x11 => set(&mut p.session_expiry_interval, r.u32()?)?,
            0x12 => set(&mut p.assigned_client_identifier, r.string()?)?,
            0x13 => set(&mut p.server_keep_alive, r.u16()?)?,
            0x15 => set(&mut p.authentication_method, r.string()?)?,
            0x16 => set(&mut p.authentication_data, r.binary()?)?,
            0x17 => set(&mut p.request_problem_information, flag(r)?)?,
            0x18 => set(&mut p.will_delay_interval, r.u32()?)?,
            0x19 => set(&mut p.request_response_information, flag(r)?)?,
            0x1A => set(&mut p.response_information, r.string()?)?,
            0x1C => set(&mut p.server_reference, r.string()?)?,
            0x1F => set(&mut p.reason_string, r.string()?)?,
            0x21 => set(&mut p.receive_maximum, non_zero_u16(r)?)?,
            0x22 => set(&mut p.topic_alias_maximum, r.u16()?)?,
            // 0 is not a valid alias, but the connection judges aliases
            // (it knows the maximum too) and answers 0x94 Topic Alias
            // invalid, which says more than a protocol error.
            0x23 => set(&mut p.topic_alias, r.u16()?)?,
            0x24 => set(&mut p.maximum_qos, flag(r)?)?,
            0x25 => set(&mut p.retain_available, flag(r)?)?,
            0x26 => {
                // Checked here, kept as the wire has them (see UserEntries).
                r.check_string()?;
                r.check_string()?;
                users.add(&block, start, at(r));
            }
            0x27 => {
                let v = r.u32()?;
                if v == 0 {
                    return Err(DecodeError::Protocol("maximum packet size 0"));
                }
                set(&mut p.maximum_packet_size, v)?
            }
            0x28 => set(&mut p.wildcard_subscription_available, flag(r)?)?,
            0x29 => set(&mut p.subscription_identifier_available, flag(r)?)?,
            0x2A => set(&mut p.shared_subscription_available, flag(r)?)?,
            _ => return Err(DecodeError::Malformed("unknown property")),
        }
    }
    p.user_properties = users.finish(&block);
    Ok(p)
}

/// Where the user property entries of a block are: one range of it when
/// they come together (the usual case: a slice, no copy), else a copy of
/// each in order.
#[derive(Default)]
struct UserEntries {
    range: Option<(usize, usize)>,
    copied: Option<BytesMut>,
}

impl UserEntries {
    fn add(&mut self, block: &Bytes, start: usize, end: usize) {
        match (&mut self.copied, &mut self.range) {
            (Some(buf), _) => buf.extend_from_slice(&block[start..end]),
            (None, Some((_, e))) if *e == start => *e = end,
            (None, Some((s, e))) => {
                let mut buf = BytesMut::with_capacity(*e - *s + end - start);
                buf.extend_from_slice(&block[*s..*e]);
                buf.extend_from_slice(&block[start..end]);
                self.copied = Some(buf);
            }
            (None, None) => self.range = Some((start, end)),
        }
    }

    fn finish(self, block: &Bytes) -> UserProperties {
        match (self.copied, self.range) {
            (Some(buf), _) => UserProperties::from_checked(buf.freeze()),
            (None, Some((s, e))) => UserProperties::from_checked(block.slice(s..e)),
            (None, None) => UserProperties::new(),
        }
    }
}

/// Properties other than user properties and subscription identifiers
/// appear at most once (Protocol Error otherwise).
fn set<T>(slot: &mut Option<T>, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property appears twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(r: &mut Reader) -> Result<u8> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::Protocol("property must be 0 or 1")),
    }
}

fn non_zero_u16(r: &mut Reader) -> Result<u16> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol("property must not be 0")),
        v => Ok(v),
    }
}
