//! One client's connection: CONNECT, then a loop that reads packets, wakes
//! for outgoing messages and watches the keep alive, batching everything it
//! has to write into one buffer per turn. A file per packet:
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the connection, its select loop, buffers and keep alive |
//! | `connect.rs` | CONNECT: checks, login, the claim, CONNACK |
//! | `publish.rs` | PUBLISH, and its answers in order as their commits come in |
//! | `acks.rs` | PUBACK, PUBREC, PUBREL, PUBCOMP from the client |
//! | `subscribe.rs` | SUBSCRIBE and UNSUBSCRIBE |
//! | `outbound.rs` | the session's copies encoded for the client (aliases, the read ACL) |
//! | `close.rs` | DISCONNECT, the goodbye, the will and the session let go |
//!
//! Each listener implements [`Transport`] for its own stream (`listener/`).

mod acks;
mod close;
mod connect;
mod outbound;
mod publish;
mod subscribe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::backpressure::{self, Pressure};
use crate::codec::{self, reason, ByteStr, Packet, Protocol};
use crate::engine::{Broker, LiveConnection, SessionCell, WillHandle};
use crate::session::Outgoing;
use connect::{decode_reason, read_connect};
use publish::{first_ack_ready, AckQueue};

/// What a listener tells each of its connections.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub label: String,
    /// This listener's share of the connection metrics.
    pub connections: prometheus::IntCounter,
    pub clients: prometheus::IntGauge,
    pub max_packet_size: u32,
    /// The transport's identity (TLS certificate CN, PSK identity) replaces
    /// the CONNECT username.
    pub use_identity_as_username: bool,
}

/// Why the main loop stopped.
enum Exit {
    /// DISCONNECT from the client (reason code as sent).
    ClientDisconnect(u8),
    /// The socket closed or failed.
    SocketLost,
    /// We close the connection, sending this MQTT 5 reason first.
    Close(u8, &'static str),
    /// Another connection took the session (or an admin kicked it).
    Kicked(u8),
}

/// A packet handler's verdict.
type Flow = Result<(), Exit>;

/// Bytes read at a time; a read that fills it makes the next one larger.
const READ_SIZE: usize = 4096;
const READ_SIZE_BUSY: usize = 16 * 1024;

/// A byte stream a connection runs on. Plain TCP can say when a read would
/// find data, so an idle connection waits holding no read buffer at all
/// (idle connections are most connections). TLS and WebSocket streams keep
/// buffers of their own anyway: for them the read itself waits.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Whether [`Transport::readable`] really waits for input.
    const KNOWS_READINESS: bool = false;

    /// Whether dropping the stream ends the connection as well as
    /// `shutdown()` would. Plain TCP: close sends the same FIN after what
    /// was written, so a shutdown first is a syscall (and a trip through
    /// the TCP stack) for nothing on every connection's end. TLS and
    /// WebSocket have a goodbye of their own to send (close_notify, a close
    /// frame): they shut down.
    const CLOSES_ON_DROP: bool = false;

    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Reads once into `rbuf`, which gets its capacity only once the stream
/// is readable (see [`Transport`]). Returns the bytes read (0: closed).
async fn read_some<S: Transport>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    busy: bool,
) -> std::io::Result<usize> {
    stream.readable().await?;
    let want = if busy { READ_SIZE_BUSY } else { READ_SIZE };
    if rbuf.capacity() - rbuf.len() < want / 4 {
        rbuf.reserve(want);
    }
    stream.read_buf(rbuf).await
}

/// Serves one accepted socket until it closes. `identity` is what the
/// transport proved about the client (certificate CN, PSK identity).
pub async fn serve<S: Transport>(
    broker: Arc<Broker>,
    listener: Arc<ListenerInfo>,
    stream: S,
    peer: SocketAddr,
    identity: Option<String>,
) {
    // Info level, so that every event of the connection at the default
    // level (authentication failures, refusals) carries who and where.
    let span = tracing::info_span!("conn", %peer, listener = %listener.label, client_id = tracing::field::Empty);
    run(broker, listener, stream, peer, identity)
        .instrument(span)
        .await
}

async fn run<S: Transport>(
    broker: Arc<Broker>,
    listener: Arc<ListenerInfo>,
    mut stream: S,
    peer: SocketAddr,
    identity: Option<String>,
) {
    let mut rbuf = BytesMut::new();
    let timeout = Duration::from_secs(broker.config.mqtt.connect_timeout);
    let connect = match tokio::time::timeout(
        timeout,
        Box::pin(read_connect(
            &broker,
            &mut stream,
            &mut rbuf,
            listener.max_packet_size,
        )),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "connection refused before CONNECT: {e}");
            broker.stats.connects_refused.inc();
            if let Some(connack) = e.connack() {
                if stream.write_all(&connack).await.is_ok() {
                    broker.stats.messages_sent.inc();
                    broker.stats.bytes_sent.inc_by(connack.len() as u64);
                    let _ = stream.flush().await;
                }
                let _ = stream.shutdown().await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within {timeout:?}");
            return;
        }
    };
    let mut wbuf = BytesMut::new();
    let Some(mut conn) = Box::pin(Connection::accept(
        broker.clone(),
        listener,
        connect,
        identity,
        peer,
        &mut wbuf,
    ))
    .await
    else {
        if stream.write_all(&wbuf).await.is_ok() {
            broker.stats.bytes_sent.inc_by(wbuf.len() as u64);
        }
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
        return;
    };
    tracing::Span::current().record("client_id", tracing::field::display(&conn.client_id));
    let _live = LiveConnection::new(&broker);
    let exit = match broker.drain_mode() {
        // A drain began while this CONNECT waited for its claim: it has
        // its CONNACK, and leaves like the others.
        Some(d) => Exit::Kicked(d.code),
        None => conn.run(&mut stream, &mut rbuf, &mut wbuf).await,
    };
    Box::pin(conn.finish(&mut stream, &mut wbuf, exit)).await;
}

struct Connection {
    broker: Arc<Broker>,
    listener: Arc<ListenerInfo>,
    cell: Arc<SessionCell>,
    conn_id: u64,
    kicked: oneshot::Receiver<u8>,
    protocol: Protocol,
    client_id: ByteStr,
    username: Option<ByteStr>,
    /// 1.5 x keep alive; zero = no timeout.
    keepalive: Duration,
    /// Largest packet the client accepts (MQTT 5 Maximum Packet Size).
    client_max_packet: u32,
    /// Topic aliases, made on first use: most clients never use one, and
    /// two empty maps inline cost every idle connection ~100 bytes.
    aliases: Option<Box<TopicAliases>>,
    client_alias_max: u16,
    /// Send reason strings (the client did not turn them off).
    problem_info: bool,
    /// Boxed: most clients have none, and every connection carries the field.
    will: Option<Box<WillHandle>>,
    /// Releases (QoS 2 past PUBREC) whose PUBREL waits for their commit.
    releases: Vec<crate::state::Ticket>,
    /// The session ended at DISCONNECT was 0 at connect (MQTT 5 forbids
    /// raising it from 0 at DISCONNECT).
    connect_expiry: u32,
    /// Sessions our last publish found congested: we read no further input
    /// until they have drained (or stalled).
    congested: SmallVec<[Pressure; 1]>,
    /// The outbox vector we swap with the session's, kept between batches.
    spare: Vec<Outgoing>,
    /// Answers to publishes, oldest first (see [`PendingAck`]); boxed and
    /// made on first use: most connections never have one.
    acks: AckQueue,
    /// How many `acks` may hold before input waits (u16: it sits in the
    /// padding beside the other small fields).
    ack_window: u16,
    /// The session has retained messages to stream (new subscriptions).
    streaming: bool,
}

/// A connection's topic aliases, both ways.
#[derive(Default)]
struct TopicAliases {
    /// Client -> server (ours to bound).
    inbound: HashMap<u16, ByteStr>,
    /// Server -> client (the client's to bound).
    outbound: HashMap<ByteStr, u16>,
}

impl Connection {
    async fn run<S: Transport>(
        &mut self,
        stream: &mut S,
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
    ) -> Exit {
        let mut last_heard = Instant::now();
        let mut busy = false;
        let keepalive = tokio::time::sleep(self.keepalive.max(Duration::from_secs(1)));
        tokio::pin!(keepalive);
        // A client may send before CONNACK (async libraries do): what came
        // in the same reads as CONNECT is handled now, not when the socket
        // next has something, which may be never (keep alive 0).
        if let Err(exit) = Box::pin(self.handle_input(rbuf, wbuf)).await {
            return exit;
        }
        loop {
            if self.streaming {
                self.streaming = self.broker.pump_retained(&self.cell);
            }
            // Room for more of a retained stream once this is written.
            let stream_on = self.drain_outbox(wbuf);
            if !wbuf.is_empty() {
                // Flush too: TLS and WebSocket streams buffer until told.
                let written = async {
                    stream.write_all(wbuf).await?;
                    stream.flush().await
                };
                if let Err(e) = written.await {
                    tracing::debug!("write failed: {e}");
                    return Exit::SocketLost;
                }
                self.broker.stats.bytes_sent.inc_by(wbuf.len() as u64);
                wbuf.clear();
            }
            if S::KNOWS_READINESS && rbuf.is_empty() {
                // Nothing half-read: wait holding no buffers. Steady
                // traffic pays one allocation per read, not per message.
                *rbuf = BytesMut::new();
                *wbuf = BytesMut::new();
                if self.acks.as_ref().is_some_and(|q| q.is_empty()) {
                    self.acks = None;
                }
            }
            if !self.congested.is_empty() {
                // Backpressure: our acks are out; now hold the rest of our
                // input (and so our client) until the subscribers we fed
                // have drained, then go on with what is buffered.
                Box::pin(self.wait_for_subscribers()).await;
                if let Err(exit) = Box::pin(self.handle_input(rbuf, wbuf)).await {
                    return exit;
                }
                continue;
            }
            let wake = self.cell.wake.notified();
            let room = !self.acks_full();
            tokio::select! {
                biased;
                code = &mut self.kicked => {
                    return Exit::Kicked(code.unwrap_or(reason::SESSION_TAKEN_OVER));
                }
                () = first_ack_ready(&mut self.acks) => {
                    if let Err(exit) = self.write_ready_acks(wbuf) {
                        return exit;
                    }
                    // Input held back by a full window goes on now.
                    if !room && !rbuf.is_empty() {
                        if let Err(exit) = Box::pin(self.handle_input(rbuf, wbuf)).await {
                            return exit;
                        }
                    }
                }
                read = read_some(stream, rbuf, busy), if room => {
                    match read {
                        Ok(0) => return Exit::SocketLost,
                        Err(e) => {
                            tracing::debug!("read failed: {e}");
                            return Exit::SocketLost;
                        }
                        Ok(n) => {
                            self.broker.stats.bytes_received.inc_by(n as u64);
                            last_heard = Instant::now();
                            // A read that filled the buffer: more is waiting.
                            busy = rbuf.capacity() == rbuf.len();
                        }
                    }
                    // Boxed: the handlers' state is large, and an idle
                    // connection (most of them) should not carry it.
                    if let Err(exit) = Box::pin(self.handle_input(rbuf, wbuf)).await {
                        return exit;
                    }
                }
                () = wake => {}
                () = &mut keepalive, if !self.keepalive.is_zero() => {
                    if !room {
                        // Not reading because of us (a full window): the
                        // client is not silent.
                        last_heard = Instant::now();
                    }
                    let deadline = last_heard + self.keepalive;
                    if Instant::now() >= deadline {
                        self.broker.stats.keepalive_timeouts.inc();
                        return Exit::Close(reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
                    }
                    keepalive.as_mut().reset(tokio::time::Instant::from_std(deadline));
                }
                // Last: a retained stream goes on only while nothing else
                // is waiting (the socket paced it in the write above).
                () = std::future::ready(()), if stream_on => {}
            }
            // Drop a large buffer once it is empty (other transports keep
            // theirs between reads).
            if rbuf.is_empty() && rbuf.capacity() > 64 * 1024 {
                *rbuf = BytesMut::new();
            }
        }
    }

    /// Decodes and handles every whole packet in `rbuf`.
    async fn handle_input(&mut self, rbuf: &mut BytesMut, wbuf: &mut BytesMut) -> Flow {
        loop {
            if self.acks_full() {
                // The rest waits in `rbuf` until the oldest commit is in.
                return Ok(());
            }
            let before = rbuf.len();
            let packet =
                match codec::decode(rbuf, Some(self.protocol), self.listener.max_packet_size) {
                    Ok(Some(p)) => p,
                    Ok(None) => return self.commit_releases().await,
                    Err(e) => {
                        self.broker.stats.protocol_errors.inc();
                        tracing::debug!("bad packet: {e}");
                        return Err(Exit::Close(e.reason_code(), decode_reason(&e)));
                    }
                };
            self.broker.stats.messages_received.inc();
            if let Packet::Publish(p) = &packet {
                // The whole packet as it arrived, like the outbound side.
                let stats = &self.broker.stats;
                stats.packet_size_in.observe((before - rbuf.len()) as f64);
                stats.publish_bytes_received.inc_by(p.payload.len() as u64);
            }
            self.handle(packet, wbuf).await?;
            if !self.congested.is_empty() {
                return Ok(());
            }
        }
    }

    /// Waits until every consumer in `self.congested` has drained below its
    /// mark (see [`backpressure::wait_for`]).
    async fn wait_for_subscribers(&mut self) {
        for consumer in std::mem::take(&mut self.congested) {
            backpressure::wait_for(&*consumer).await;
        }
    }

    /// Wakes publishers waiting for our session, if it has drained.
    fn release_publishers(&self) {
        if self.cell.session.lock().publishers_to_wake() {
            self.cell.drained.notify_waiters();
        }
    }

    /// One packet from the client, to the file that handles its kind.
    async fn handle(&mut self, packet: Packet, wbuf: &mut BytesMut) -> Flow {
        match packet {
            Packet::Publish(p) => self.on_publish(p, wbuf).await,
            Packet::PubAck(r) => {
                self.on_puback(r);
                Ok(())
            }
            Packet::PubRec(r) => {
                self.on_pubrec(r, wbuf);
                Ok(())
            }
            Packet::PubRel(r) => {
                self.on_pubrel(r, wbuf);
                Ok(())
            }
            Packet::PubComp(r) => {
                self.on_pubcomp(r);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s, wbuf).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, wbuf),
            Packet::PingReq => {
                self.write(wbuf, Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d, wbuf).await,
            Packet::Connect(_) => Err(Exit::Close(reason::PROTOCOL_ERROR, "second CONNECT")),
            Packet::Auth(_) => Err(Exit::Close(
                reason::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            )),
            other => {
                tracing::debug!("client sent a server packet: {}", other.name());
                Err(Exit::Close(
                    reason::PROTOCOL_ERROR,
                    "packet not allowed from a client",
                ))
            }
        }
    }

    /// Encodes a control packet into the write buffer.
    fn write(&self, wbuf: &mut BytesMut, packet: Packet) {
        if let Err(e) = codec::encode(&packet, self.protocol, wbuf) {
            tracing::warn!("cannot encode {}: {e}", packet.name());
            return;
        }
        self.broker.stats.messages_sent.inc();
    }
}
