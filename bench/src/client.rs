//! A minimal MQTT client on raw sockets with raftmq's codec: the generator
//! must cost less than the broker it measures, so it batches writes and
//! decodes in place.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use bytes::BytesMut;
use raftmq::codec::{self, ByteStr, Connect, Packet, Properties, QoS, SubOptions, Subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::{self, ReadHalf, WriteHalf};
use crate::wire::PROTOCOL;

pub struct Client {
    pub reader: Reader,
    pub writer: Writer,
}

pub struct Reader {
    half: ReadHalf,
    buf: BytesMut,
}

pub struct Writer {
    half: WriteHalf,
    pub buf: BytesMut,
}

const MAX_PACKET: u32 = 268_435_455;

impl Client {
    pub async fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (r, w) = tls::split(stream).await?;
        let mut c = Client {
            reader: Reader {
                half: r,
                buf: BytesMut::with_capacity(64 * 1024),
            },
            writer: Writer {
                half: w,
                buf: BytesMut::with_capacity(64 * 1024),
            },
        };
        c.writer.push(&Packet::Connect(Box::new(Connect {
            protocol: PROTOCOL,
            clean_start: clean,
            // Not 0: rumqttd refuses a zero keep alive.
            keep_alive: 60,
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })))?;
        c.writer.flush().await?;
        match c.reader.next().await? {
            Packet::ConnAck(a) if a.code == 0 => Ok(c),
            other => bail!("CONNECT refused: {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        self.writer.push(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                ByteStr::from(filter),
                SubOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        }))?;
        self.writer.flush().await?;
        match self.reader.next().await? {
            Packet::SubAck(_) => Ok(()),
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }
}

impl Client {
    /// Sends DISCONNECT (a normal end: no will, a clean session ends).
    pub async fn disconnect(mut self) -> anyhow::Result<()> {
        self.writer.half.write_all(&crate::wire::DISCONNECT).await?;
        self.writer.half.shutdown().await?;
        Ok(())
    }

    /// The socket halves and whatever the reader had buffered past the
    /// last packet, for loops that scan frames themselves.
    pub fn into_parts(self) -> (ReadHalf, BytesMut, WriteHalf) {
        (self.reader.half, self.reader.buf, self.writer.half)
    }
}

impl Reader {
    /// The next packet (reads from the socket as needed).
    pub async fn next(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, Some(PROTOCOL), MAX_PACKET)? {
                return Ok(p);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed by the broker");
            }
        }
    }
}

impl Writer {
    pub fn push(&mut self, p: &Packet) -> anyhow::Result<()> {
        codec::encode(p, PROTOCOL, &mut self.buf)?;
        Ok(())
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}
