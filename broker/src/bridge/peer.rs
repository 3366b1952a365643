//! One side of a bridge as an MQTT client: packets encoded and decoded by
//! the broker's own codec over any byte stream (the in-process connection
//! to this broker, TCP, TLS or TLS-PSK to the remote), so 3.1.1 and 5.0
//! take one code path.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, reason, ConnAck, Connect, Packet, Protocol};

/// A boxed byte stream (the remote's transport varies).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("closed the connection")]
    Closed,
    #[error("sent a bad packet: {0}")]
    Decode(#[from] codec::DecodeError),
    #[error("cannot encode {0}: {1}")]
    Encode(&'static str, codec::EncodeError),
    #[error("refused the connection (CONNACK code {0:#04x})")]
    Refused(u8),
    #[error("answered CONNECT with {0}")]
    NotConnAck(&'static str),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Protocol(&'static str),
}

/// Largest packet we take from either side (the codec's bound).
const MAX_PACKET: u32 = 268_435_455;

pub struct Peer {
    stream: Box<dyn Stream>,
    pub protocol: Protocol,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// What the other side's CONNACK said.
    pub connack: ConnAck,
}

impl Peer {
    /// Sends CONNECT and waits for a successful CONNACK. `raw_level`
    /// replaces the protocol level byte (mosquitto's `try_private`: the
    /// 0x80 bit marks a bridge).
    pub async fn connect(
        stream: Box<dyn Stream>,
        connect: Connect,
        raw_level: Option<u8>,
        timeout: Duration,
    ) -> Result<Peer, PeerError> {
        let protocol = connect.protocol;
        let mut peer = Peer {
            stream,
            protocol,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            connack: ConnAck {
                session_present: false,
                code: 0,
                properties: Default::default(),
            },
        };
        peer.queue(&Packet::Connect(Box::new(connect)))?;
        if let Some(level) = raw_level {
            set_level(&mut peer.wbuf, level);
        }
        let answer = async {
            peer.flush().await?;
            peer.read().await
        };
        let packet = tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| PeerError::Timeout(timeout))??;
        match packet {
            Packet::ConnAck(ack) if ack.code == reason::SUCCESS => {
                peer.connack = ack;
                Ok(peer)
            }
            Packet::ConnAck(ack) => Err(PeerError::Refused(ack.code)),
            other => Err(PeerError::NotConnAck(other.name())),
        }
    }

    /// Encodes `packet` for the next [`Peer::flush`].
    pub fn queue(&mut self, packet: &Packet) -> Result<(), PeerError> {
        codec::encode(packet, self.protocol, &mut self.wbuf)
            .map_err(|e| PeerError::Encode(packet.name(), e))
    }

    pub async fn flush(&mut self) -> Result<(), PeerError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.wbuf).await?;
        self.stream.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    /// The next packet. Cancel-safe: what was read stays in the buffer.
    pub async fn read(&mut self) -> Result<Packet, PeerError> {
        loop {
            if let Some(p) = codec::decode(&mut self.rbuf, Some(self.protocol), MAX_PACKET)? {
                return Ok(p);
            }
            self.rbuf.reserve(8192);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(PeerError::Closed);
            }
        }
    }

    /// Says goodbye (best effort: the link is going anyway).
    pub async fn close(mut self) {
        let bye = Packet::Disconnect(codec::Disconnect {
            code: reason::SUCCESS,
            properties: Default::default(),
        });
        if self.queue(&bye).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

/// Overwrites the protocol level of the CONNECT at the start of `buf`:
/// after the fixed header (type byte, remaining length) and the protocol
/// name (`00 04 M Q T T`).
fn set_level(buf: &mut BytesMut, level: u8) {
    let mut i = 1;
    while i < buf.len() && buf[i] & 0x80 != 0 {
        i += 1;
    }
    let at = i + 1 + 6;
    if at < buf.len() {
        buf[at] = level;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ByteStr;

    #[test]
    fn level_byte_is_the_one_after_the_protocol_name() {
        let c = Connect {
            protocol: Protocol::V311,
            clean_start: true,
            keep_alive: 60,
            client_id: ByteStr::from("x"),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        let mut buf = BytesMut::new();
        codec::encode(&Packet::Connect(Box::new(c)), Protocol::V311, &mut buf).unwrap();
        set_level(&mut buf, 0x84);
        assert_eq!(&buf[2..9], b"\x00\x04MQTT\x84");
    }
}
