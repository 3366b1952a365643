//! The replicated state as snapshot bytes, a piece at a time.
//!
//! The bytes are exactly those of the `StateSnapshot` message (a protobuf
//! message is its fields one after another, a session its own fields one
//! after another), so snapshots read and written here and those written
//! whole before are the same format. But neither the whole file, nor a
//! whole `StateSnapshot`, nor even a whole session is ever built in
//! memory: writing encodes one message at a time, reading decodes one and
//! turns it into the state at once. A state restores within about its own
//! size, not two or three copies of it (a restart must fit the memory
//! budget it was made under).

use std::io::{self, Read, Write};

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message as _;
use raftmq_proto::v1 as pb;

use super::convert;
use crate::codec::ByteStr;
use crate::state::{PersistedSession, ReplicatedState};

/// `StateSnapshot` field numbers.
const RETAINED: u32 = 1;
const SESSIONS: u32 = 2;
const OWNERS: u32 = 3;
const WILLS: u32 = 4;
const ROUTES: u32 = 5;
const BRIDGES: u32 = 6;
const DRAINING: u32 = 7;
/// `PersistedSession` field numbers.
const CLIENT_ID: u32 = 1;
const EXPIRY: u32 = 2;
const SUBSCRIPTIONS: u32 = 3;
const MESSAGES: u32 = 4;

/// Writes `state` to `w`; returns the number of bytes written.
pub fn write_state(state: &ReplicatedState, w: &mut impl Write) -> io::Result<u64> {
    let mut out = Writer {
        w,
        buf: Vec::new(),
        written: 0,
    };
    for m in state.retained.values() {
        out.message(RETAINED, &convert::message_to(m))?;
    }
    for (id, session) in &state.sessions {
        out.session(id, session)?;
    }
    for (c, n) in &state.owners {
        out.message(OWNERS, &convert::owner_to(state, c, *n))?;
    }
    for (c, w) in &state.wills {
        out.message(WILLS, &convert::will_entry_to(c, w))?;
    }
    for (f, n) in &state.routes {
        out.message(ROUTES, &convert::route_to(f, n))?;
    }
    for (name, node) in &state.bridges {
        let holder = pb::BridgeHolder {
            name: name.to_string(),
            node: *node,
        };
        out.message(BRIDGES, &holder)?;
    }
    for node in &state.draining {
        out.message(DRAINING, &pb::Draining { node: *node })?;
    }
    Ok(out.written)
}

struct Writer<'a, W: Write> {
    w: &'a mut W,
    /// One message's bytes at a time.
    buf: Vec<u8>,
    written: u64,
}

impl<W: Write> Writer<'_, W> {
    fn flush(&mut self) -> io::Result<()> {
        self.w.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Field `tag` holding `m`.
    fn message(&mut self, tag: u32, m: &impl prost::Message) -> io::Result<()> {
        prost::encoding::message::encode(tag, m, &mut self.buf);
        self.flush()
    }

    /// A `PersistedSession` as field 2, its messages one by one: its
    /// length is added up first.
    fn session(&mut self, id: &ByteStr, s: &PersistedSession) -> io::Result<()> {
        let client_id = id.to_string();
        let subs: Vec<pb::PersistedSubscription> = s
            .subscriptions
            .iter()
            .map(|(f, (o, i))| convert::subscription_to(f, o, *i))
            .collect();
        let message_len = |seq: &u64, m| {
            let len = convert::persisted_message_to(*seq, m).encoded_len();
            1 + encoded_len_varint(len as u64) + len
        };
        // As prost writes a message: fields at their default are left out.
        let id_len = if client_id.is_empty() {
            0
        } else {
            prost::encoding::string::encoded_len(CLIENT_ID, &client_id)
        };
        let expiry_len = if s.expiry == 0 {
            0
        } else {
            prost::encoding::uint32::encoded_len(EXPIRY, &s.expiry)
        };
        let len = id_len
            + expiry_len
            + prost::encoding::message::encoded_len_repeated(SUBSCRIPTIONS, &subs)
            + s.messages
                .iter()
                .map(|(seq, m)| message_len(seq, m))
                .sum::<usize>();
        encode_key(SESSIONS, WireType::LengthDelimited, &mut self.buf);
        encode_varint(len as u64, &mut self.buf);
        if !client_id.is_empty() {
            prost::encoding::string::encode(CLIENT_ID, &client_id, &mut self.buf);
        }
        if s.expiry != 0 {
            prost::encoding::uint32::encode(EXPIRY, &s.expiry, &mut self.buf);
        }
        for sub in &subs {
            prost::encoding::message::encode(SUBSCRIPTIONS, sub, &mut self.buf);
        }
        self.flush()?;
        for (seq, m) in &s.messages {
            self.message(MESSAGES, &convert::persisted_message_to(*seq, m))?;
        }
        Ok(())
    }
}

/// Why snapshot bytes are not a state.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("snapshot truncated")]
    Truncated,
    #[error("malformed snapshot: {0}")]
    Malformed(&'static str),
    #[error("snapshot field: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error(transparent)]
    Invalid(#[from] convert::Invalid),
}

/// Reads a state from `r` until its end.
pub fn read_state(r: &mut impl Read) -> Result<ReplicatedState, ReadError> {
    let mut state = ReplicatedState::default();
    let mut buf = Vec::new();
    while let Some((tag, wire)) = read_key(r)? {
        if wire != WireType::LengthDelimited {
            skip(r, wire)?;
            continue;
        }
        let len = read_varint(r)?.ok_or(ReadError::Truncated)?;
        if tag == SESSIONS {
            let (id, session) = read_session(&mut r.by_ref().take(len), len, &mut buf)?;
            state.sessions.insert(id, session);
            continue;
        }
        read_exact(r, len, &mut buf)?;
        match tag {
            RETAINED => {
                let m = convert::message_from(Some(pb::Message::decode(&buf[..])?))?;
                state.retained.insert(m.topic.clone(), m);
            }
            OWNERS => convert::owner_into(&mut state, pb::Owner::decode(&buf[..])?),
            WILLS => {
                let (c, w) = convert::will_entry_from(pb::WillEntry::decode(&buf[..])?)?;
                state.wills.insert(c, w);
            }
            ROUTES => {
                let (f, n) = convert::route_from(pb::Route::decode(&buf[..])?);
                state.routes.insert(f, n);
            }
            BRIDGES => {
                let b = pb::BridgeHolder::decode(&buf[..])?;
                state.bridges.insert(b.name.into(), b.node);
            }
            DRAINING => {
                state.draining.insert(pb::Draining::decode(&buf[..])?.node);
            }
            // A field from a later version: not ours to read.
            _ => {}
        }
    }
    Ok(state)
}

/// One `PersistedSession` of `len` bytes, a message at a time.
fn read_session(
    r: &mut impl Read,
    len: u64,
    buf: &mut Vec<u8>,
) -> Result<(ByteStr, PersistedSession), ReadError> {
    let mut id = ByteStr::default();
    let mut session = PersistedSession::default();
    let mut r = Counting { r, read: 0 };
    while let Some((tag, wire)) = read_key(&mut r)? {
        match (tag, wire) {
            (EXPIRY, WireType::Varint) => {
                let v = read_varint(&mut r)?.ok_or(ReadError::Truncated)?;
                session.expiry = u32::try_from(v).map_err(|_| ReadError::Malformed("expiry"))?;
            }
            (CLIENT_ID | SUBSCRIPTIONS | MESSAGES, WireType::LengthDelimited) => {
                let n = read_varint(&mut r)?.ok_or(ReadError::Truncated)?;
                read_exact(&mut r, n, buf)?;
                match tag {
                    CLIENT_ID => {
                        let s = std::str::from_utf8(buf)
                            .map_err(|_| ReadError::Malformed("client id"))?;
                        id = ByteStr::from(s);
                    }
                    SUBSCRIPTIONS => {
                        let sub = pb::PersistedSubscription::decode(&buf[..])?;
                        let (f, v) = convert::subscription_from(sub)?;
                        session.subscriptions.insert(f, v);
                    }
                    _ => {
                        let m = pb::PersistedMessage::decode(&buf[..])?;
                        let (seq, m) = convert::persisted_message_from(m)?;
                        session.messages.insert(seq, m);
                    }
                }
            }
            (_, wire) => skip(&mut r, wire)?,
        }
    }
    if r.read != len {
        return Err(ReadError::Truncated);
    }
    Ok((id, session))
}

/// Counts what it reads (a session's end is where its length says).
struct Counting<R> {
    r: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(out)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads `len` bytes into `buf` (which never keeps more than 1 MiB of
/// capacity between calls once a larger piece is done).
fn read_exact(r: &mut impl Read, len: u64, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let len = usize::try_from(len).map_err(|_| ReadError::Malformed("length"))?;
    if buf.capacity() > 1 << 20 && len <= 1 << 20 {
        *buf = Vec::new();
    }
    buf.clear();
    // Grows as the bytes arrive: a length that lies (corruption) fails at
    // the end of the file, never as one huge allocation.
    let got = r.take(len as u64).read_to_end(buf)?;
    if got != len {
        return Err(ReadError::Truncated);
    }
    Ok(())
}

/// The next field key, or `None` at the end of the input.
fn read_key(r: &mut impl Read) -> Result<Option<(u32, WireType)>, ReadError> {
    let Some(key) = read_varint(r)? else {
        return Ok(None);
    };
    let wire = WireType::try_from(key & 7).map_err(|_| ReadError::Malformed("wire type"))?;
    let tag = u32::try_from(key >> 3).map_err(|_| ReadError::Malformed("field number"))?;
    Ok(Some((tag, wire)))
}

/// A varint; `None` at the end of the input (before its first byte).
fn read_varint(r: &mut impl Read) -> Result<Option<u64>, ReadError> {
    let mut value = 0u64;
    for i in 0..10 {
        let mut b = [0u8];
        if r.read(&mut b)? == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(ReadError::Truncated)
            };
        }
        value |= u64::from(b[0] & 0x7F) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(ReadError::Malformed("varint longer than 10 bytes"))
}

fn skip(r: &mut impl Read, wire: WireType) -> Result<(), ReadError> {
    let n = match wire {
        WireType::Varint => {
            read_varint(r)?.ok_or(ReadError::Truncated)?;
            return Ok(());
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => read_varint(r)?.ok_or(ReadError::Truncated)?,
        WireType::StartGroup | WireType::EndGroup => return Err(ReadError::Malformed("groups")),
    };
    let skipped = io::copy(&mut r.take(n), &mut io::sink())?;
    if skipped != n {
        return Err(ReadError::Truncated);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use smallvec::smallvec;

    use super::*;
    use crate::codec::{QoS, SubOptions};
    use crate::message::{Message, MessageParts};
    use crate::state::{PersistedMessage, Will, WillRecord};

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(MessageParts {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            origin: "o".into(),
            expires_at: None,
            properties: None,
            received_at: Instant::now(),
        }))
    }

    fn sample() -> ReplicatedState {
        let mut s = ReplicatedState::default();
        s.retained.insert("r/1".into(), msg("r/1", b"one"));
        s.retained.insert("r/2".into(), msg("r/2", b"two"));
        for (id, expiry, n) in [("a", 60u32, 3u64), ("b", 0, 0), ("c", u32::MAX, 1)] {
            let mut p = PersistedSession {
                expiry,
                ..Default::default()
            };
            p.subscriptions
                .insert("x/#".into(), (SubOptions::default(), Some(4)));
            for seq in 0..n {
                p.messages.insert(
                    seq + 10,
                    PersistedMessage {
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        released: seq == 1,
                        subscription_ids: smallvec![4],
                        message: msg("x/y", b"queued"),
                    },
                );
            }
            s.sessions.insert(id.into(), p);
            s.owners.insert(id.into(), 2);
        }
        s.usernames.insert("a".into(), "alice".into());
        s.wills.insert(
            "a".into(),
            WillRecord {
                node: 2,
                nonce: 9,
                will: Will {
                    message: msg("w", b"gone"),
                    delay: 5,
                    expiry_interval: None,
                },
            },
        );
        s.routes.insert("x/#".into(), [1, 2].into_iter().collect());
        s.bridges.insert("central".into(), 3);
        s.draining.insert(2);
        s
    }

    #[test]
    fn the_same_bytes_as_the_whole_message_and_back() {
        let s = sample();
        let mut streamed = Vec::new();
        let n = write_state(&s, &mut streamed).unwrap();
        assert_eq!(n as usize, streamed.len());
        assert_eq!(streamed, convert::state_to(&s).encode_to_vec());
        // Read whole (as snapshots written before are), and streamed.
        let whole = convert::state_from(pb::StateSnapshot::decode(&streamed[..]).unwrap()).unwrap();
        assert_eq!(whole.digest(), s.digest());
        let back = read_state(&mut &streamed[..]).unwrap();
        assert_eq!(back.digest(), s.digest());
        assert_eq!(back.usernames, s.usernames);
        // A snapshot written whole reads streamed.
        let old = convert::state_to(&s).encode_to_vec();
        assert_eq!(read_state(&mut &old[..]).unwrap().digest(), s.digest());
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let mut bytes = Vec::new();
        write_state(&sample(), &mut bytes).unwrap();
        for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_state(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read_state(&mut &[0x12u8, 0xff, 0xff, 0xff, 0xff, 0x0f][..]).is_err());
        assert!(read_state(&mut &[0xffu8; 11][..]).is_err());
        assert!(read_state(&mut &[][..]).unwrap().sessions.is_empty());
    }
}
