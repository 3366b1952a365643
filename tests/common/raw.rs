//! A byte-level MQTT client for tests that must send what no well-behaved
//! client library would: malformed frames, protocol violations, exact
//! sequences. Frames are built with raftmq's codec or by hand, and what comes
//! back is decoded with the codec.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use raftmq::codec::{
    self, ByteStr, Connect, LastWill, Packet, Properties, Protocol, Publish, QoS, SubOptions,
    Subscribe,
};

pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    pub protocol: Protocol,
    /// What this client put on the wire, and the whole packets it took off
    /// it, so that tests can check the broker's counters exactly.
    pub sent: Tally,
    pub received: Tally,
}

/// Packets and bytes one way on one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub packets: u64,
    pub bytes: u64,
    pub publishes: u64,
    pub payload_bytes: u64,
}

impl Tally {
    fn count(&mut self, p: &Packet, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
        if let Packet::Publish(p) = p {
            self.publishes += 1;
            self.payload_bytes += p.payload.len() as u64;
        }
    }
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(self, o: Tally) -> Tally {
        Tally {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
            publishes: self.publishes + o.publishes,
            payload_bytes: self.payload_bytes + o.payload_bytes,
        }
    }
}

/// What reading from the broker gave. (Test-only and short-lived, so the
/// size of an unboxed packet does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Read1 {
    Packet(Packet),
    Closed,
    Timeout,
}

impl RawClient {
    pub fn connect_tcp(addr: SocketAddr, protocol: Protocol) -> RawClient {
        Self::try_connect_tcp(addr, protocol).expect("connect")
    }

    /// For a broker that may be gone (killed) by the time we connect.
    pub fn try_connect_tcp(addr: SocketAddr, protocol: Protocol) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_nodelay(true).ok();
        Ok(RawClient {
            stream,
            buf: BytesMut::new(),
            protocol,
            sent: Tally::default(),
            received: Tally::default(),
        })
    }

    /// Opens a socket and completes an MQTT CONNECT with `connect`;
    /// returns the client and the CONNACK.
    pub fn open(addr: SocketAddr, connect: Connect) -> (RawClient, codec::ConnAck) {
        let mut c = RawClient::connect_tcp(addr, connect.protocol);
        c.send(&Packet::Connect(Box::new(connect)));
        match c.recv(Duration::from_secs(5)) {
            Read1::Packet(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// This end of the socket (the broker's peer address for us).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    pub fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, self.protocol, &mut out).expect("encode");
        if self.stream.write_all(&out).is_ok() {
            self.sent.count(p, out.len());
        }
    }

    /// Bytes as they are (counted as bytes, not as packets).
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        // A broker that already closed may reset the connection: the test
        // then sees Closed on the next read, which is what it asserts.
        if self.stream.write_all(bytes).is_ok() {
            self.sent.bytes += bytes.len() as u64;
        }
    }

    /// Reads the next packet, or Closed when the broker closes the
    /// connection, or Timeout.
    pub fn recv(&mut self, timeout: Duration) -> Read1 {
        let deadline = Instant::now() + timeout;
        loop {
            let before = self.buf.len();
            match codec::decode(&mut self.buf, Some(self.protocol), 0) {
                Ok(Some(p)) => {
                    self.received.count(&p, before - self.buf.len());
                    return Read1::Packet(p);
                }
                Ok(None) => {}
                Err(e) => panic!("broker sent bytes our codec refuses: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Read1::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Read1::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Read1::Timeout
                }
                Err(_) => return Read1::Closed,
            }
        }
    }

    /// Reads until a packet that `pick` accepts, skipping others.
    pub fn recv_until<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Read1::Packet(p) => {
                    if let Some(t) = pick(&p) {
                        return Some(t);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Expects the broker to close the connection, after at most a
    /// DISCONNECT (5.0); returns its reason code if one came.
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u8> {
        let mut code = None;
        loop {
            match self.recv(timeout) {
                Read1::Closed => return code,
                Read1::Packet(Packet::Disconnect(d)) => code = Some(d.code),
                Read1::Packet(other) => panic!("expected close, got {other:?}"),
                Read1::Timeout => panic!("broker did not close the connection"),
            }
        }
    }

    pub fn subscribe(&mut self, packet_id: u16, filter: &str, qos: QoS) -> Vec<u8> {
        self.subscribe_with(
            packet_id,
            filter,
            SubOptions {
                qos,
                ..SubOptions::default()
            },
        )
    }

    pub fn subscribe_with(&mut self, packet_id: u16, filter: &str, options: SubOptions) -> Vec<u8> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(filter.into(), options)],
            properties: Properties::default(),
        }));
        self.recv_until(Duration::from_secs(5), |p| match p {
            Packet::SubAck(a) if a.packet_id == packet_id => Some(a.codes.clone()),
            _ => None,
        })
        .expect("SUBACK")
    }

    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, packet_id: u16) {
        self.send(&Packet::Publish(publish(
            topic, payload, qos, retain, packet_id,
        )));
    }

    /// The next PUBLISH, acknowledging nothing.
    pub fn next_publish(&mut self, timeout: Duration) -> Option<Publish> {
        self.recv_until(timeout, |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, retain: bool, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A CONNECT with the given protocol, id and clean flag, keepalive 60.
pub fn connect(protocol: Protocol, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 60,
        client_id: ByteStr::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

pub fn will(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain,
        properties: Properties::default(),
    }
}

impl RawClient {
    /// Acknowledges a delivered PUBLISH the way its QoS asks (PUBACK, or
    /// PUBREC then PUBCOMP after the broker's PUBREL).
    pub fn ack(&mut self, p: &Publish) {
        use raftmq::codec::PubResp;
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubResp::new(p.packet_id, 0))),
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(PubResp::new(p.packet_id, 0)));
                let id = p.packet_id;
                let rel = self.recv_until(Duration::from_secs(5), |q| match q {
                    Packet::PubRel(r) if r.packet_id == id => Some(()),
                    _ => None,
                });
                assert!(rel.is_some(), "no PUBREL for {id}");
                self.send(&Packet::PubComp(PubResp::new(id, 0)));
            }
        }
    }

    /// Asserts that no PUBLISH arrives within `wait` (other packets are
    /// ignored).
    pub fn expect_no_publish(&mut self, wait: Duration) {
        if let Some(p) = self.next_publish(wait) {
            panic!("unexpected PUBLISH {p:?}");
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK; returns its reason code.
    pub fn publish_qos1(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        packet_id: u16,
    ) -> u8 {
        self.publish(topic, payload, QoS::AtLeastOnce, retain, packet_id);
        self.recv_until(Duration::from_secs(5), |p| match p {
            Packet::PubAck(a) if a.packet_id == packet_id => Some(a.code),
            _ => None,
        })
        .expect("PUBACK")
    }

    /// Sends a DISCONNECT (normal) and waits for the close.
    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(raftmq::codec::Disconnect {
            code: 0,
            properties: Properties::default(),
        }));
        let _ = self.recv(Duration::from_secs(2));
    }
}
