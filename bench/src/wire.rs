//! The generator's own fast path on the wire: PUBLISH frames encoded once
//! and copied (only the packet id patched), and a scanner that counts
//! frames in place without building packets. The generator has to cost far
//! less per message than the broker it measures, or it measures itself.

use bytes::{Buf, Bytes, BytesMut};
use raftmq::codec::{self, ByteStr, Packet, Properties, Protocol, Publish, QoS};

pub const PROTOCOL: Protocol = Protocol::V311;

/// One PUBLISH encoded once; QoS 1 copies get their packet id patched in.
pub struct Template {
    frame: Vec<u8>,
    /// Where the packet id sits (QoS 1), from the frame's start.
    id_at: Option<usize>,
}

impl Template {
    pub fn new(topic: &str, payload: &[u8], qos: QoS) -> anyhow::Result<Template> {
        let mut buf = BytesMut::new();
        codec::encode(
            &Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: ByteStr::from(topic),
                packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
                properties: Properties::default(),
                payload: Bytes::copy_from_slice(payload),
            }),
            PROTOCOL,
            &mut buf,
        )?;
        let frame = buf.to_vec();
        // 3.1.1 PUBLISH: ... topic, [packet id], payload: the id is the two
        // bytes before the payload.
        let id_at = (qos != QoS::AtMostOnce).then(|| frame.len() - payload.len() - 2);
        Ok(Template { frame, id_at })
    }

    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Appends one copy with `packet_id` (ignored for QoS 0).
    pub fn push(&self, out: &mut BytesMut, packet_id: u16) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        if let Some(at) = self.id_at {
            out[start + at..start + at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
    }

    /// Appends a copy whose payload starts with `stamp` (latency probes).
    pub fn push_stamped(&self, out: &mut BytesMut, packet_id: u16, stamp: u64) {
        let start = out.len();
        self.push(out, packet_id);
        let payload_at = start + self.frame.len() - self.payload_len();
        out[payload_at..payload_at + 8].copy_from_slice(&stamp.to_le_bytes());
    }

    fn payload_len(&self) -> usize {
        // The remaining length's bytes, the 2-byte topic length and topic,
        // the packet id: everything else is payload.
        let mut i = 1;
        while self.frame[i] & 0x80 != 0 {
            i += 1;
        }
        let topic_len = usize::from(u16::from_be_bytes([self.frame[i + 1], self.frame[i + 2]]));
        let id = if self.id_at.is_some() { 2 } else { 0 };
        self.frame.len() - (i + 3 + topic_len + id)
    }
}

/// What the scanner saw of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// PUBLISH with its QoS, packet id (0 for QoS 0) and, if the payload has
    /// at least 8 bytes, its first 8 as a little-endian stamp.
    Publish {
        qos: u8,
        packet_id: u16,
        stamp: u64,
    },
    PubAck {
        packet_id: u16,
    },
    /// Anything else (CONNACK, SUBACK, PINGRESP...): counted, not read.
    Other {
        kind: u8,
    },
}

/// Takes every whole frame off the front of `buf`, calling `f` for each.
/// Returns an error on a frame that is not MQTT.
pub fn scan(buf: &mut BytesMut, mut f: impl FnMut(Frame)) -> anyhow::Result<()> {
    let mut at = 0;
    let data = &buf[..];
    loop {
        let Some((header, remaining)) = fixed_header(&data[at..])? else {
            break;
        };
        let end = at + header + remaining;
        if end > data.len() {
            break;
        }
        let first = data[at];
        let body = &data[at + header..end];
        let frame = match first >> 4 {
            3 => {
                let qos = (first >> 1) & 3;
                anyhow::ensure!(body.len() >= 2, "short PUBLISH");
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let mut p = 2 + topic_len;
                let mut packet_id = 0;
                if qos > 0 {
                    anyhow::ensure!(body.len() >= p + 2, "short PUBLISH");
                    packet_id = u16::from_be_bytes([body[p], body[p + 1]]);
                    p += 2;
                }
                let stamp = body
                    .get(p..p + 8)
                    .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()));
                Frame::Publish {
                    qos,
                    packet_id,
                    stamp,
                }
            }
            4 => {
                anyhow::ensure!(body.len() >= 2, "short PUBACK");
                Frame::PubAck {
                    packet_id: u16::from_be_bytes([body[0], body[1]]),
                }
            }
            kind => Frame::Other { kind },
        };
        f(frame);
        at = end;
    }
    buf.advance(at);
    Ok(())
}

/// (header length, remaining length) of the frame at the front of `data`,
/// or `None` if the header is not all there yet.
fn fixed_header(data: &[u8]) -> anyhow::Result<Option<(usize, usize)>> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = data.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    anyhow::bail!("malformed remaining length")
}

/// The 4-byte PUBACK for `packet_id` (3.1.1).
pub fn puback(out: &mut BytesMut, packet_id: u16) {
    let [hi, lo] = packet_id.to_be_bytes();
    out.extend_from_slice(&[0x40, 0x02, hi, lo]);
}

/// A 3.1.1 CONNECT for `client_id`, clean session.
pub fn connect_frame(client_id: &str, keep_alive: u16) -> anyhow::Result<BytesMut> {
    connect_frame_with(client_id, keep_alive, true)
}

/// A 3.1.1 CONNECT for `client_id`, clean session or not.
pub fn connect_frame_with(
    client_id: &str,
    keep_alive: u16,
    clean: bool,
) -> anyhow::Result<BytesMut> {
    let mut buf = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(codec::Connect {
            protocol: PROTOCOL,
            clean_start: clean,
            keep_alive,
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })),
        PROTOCOL,
        &mut buf,
    )?;
    Ok(buf)
}

/// A 3.1.1 SUBSCRIBE to one filter.
pub fn subscribe_frame(packet_id: u16, filter: &str, qos: QoS) -> anyhow::Result<BytesMut> {
    let mut buf = BytesMut::new();
    codec::encode(
        &Packet::Subscribe(codec::Subscribe {
            packet_id,
            filters: vec![(
                ByteStr::from(filter),
                codec::SubOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        }),
        PROTOCOL,
        &mut buf,
    )?;
    Ok(buf)
}

/// 3.1.1 DISCONNECT.
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_and_scan_agree() {
        let t = Template::new("a/b", &[7u8; 16], QoS::AtLeastOnce).unwrap();
        let mut buf = BytesMut::new();
        t.push(&mut buf, 513);
        t.push_stamped(&mut buf, 9, 0xDEAD_BEEF);
        puback(&mut buf, 77);
        let mut seen = Vec::new();
        scan(&mut buf, |f| seen.push(f)).unwrap();
        assert_eq!(
            seen,
            vec![
                Frame::Publish {
                    qos: 1,
                    packet_id: 513,
                    stamp: u64::from_le_bytes([7; 8])
                },
                Frame::Publish {
                    qos: 1,
                    packet_id: 9,
                    stamp: 0xDEAD_BEEF
                },
                Frame::PubAck { packet_id: 77 },
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn scan_leaves_a_partial_frame() {
        let t = Template::new("a", &[1u8; 100], QoS::AtMostOnce).unwrap();
        let mut buf = BytesMut::new();
        t.push(&mut buf, 0);
        t.push(&mut buf, 0);
        buf.truncate(t.len() + 10);
        let mut n = 0;
        scan(&mut buf, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn codec_decodes_what_the_template_writes() {
        let t = Template::new("x/y", b"hello world!", QoS::AtLeastOnce).unwrap();
        let mut buf = BytesMut::new();
        t.push_stamped(&mut buf, 4242, 1);
        match codec::decode(&mut buf, Some(PROTOCOL), 0).unwrap() {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.packet_id, 4242);
                assert_eq!(&*p.topic, "x/y");
                assert_eq!(&p.payload[..8], &1u64.to_le_bytes());
                assert_eq!(&p.payload[8..], b"rld!");
            }
            other => panic!("{other:?}"),
        }
    }
}
