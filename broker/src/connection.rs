//! One client's connection: CONNECT, then a loop that reads packets, wakes
//! for outgoing messages and watches the keep alive, batching everything it
//! has to write into one buffer per turn.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::FutureExt;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::auth::acl::{Action, Principal};
use crate::auth::Login;
use crate::backpressure::{self, Pressure};
use crate::codec::{
    self, reason, ByteStr, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Protocol,
    PubResp, Publish, PublishRef, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::engine::ClaimError;
use crate::engine::DrainMode;
use crate::engine::{Broker, Claim, Departure, SessionCell, SessionRequest, WillHandle};
use crate::message::Message;
use crate::session::{InboundQos2, Outgoing, PubRecOutcome, RetainedCursor};
use crate::state::{Command, StateError, Ticket};
use crate::topic_tree::{parse_filter, validate_topic_name, TopicError};

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

/// How long SUBACK waits for the cluster to learn of a subscription.
const SUBSCRIBE_COMMIT_WAIT: Duration = Duration::from_secs(3);

/// QoS 1/2 publishes a connection keeps reading past while their commits
/// are in flight (at most the server's Receive Maximum, if lower): one
/// commit round trip per message was all a publisher to persistent sessions
/// got before. Once full, input waits for the oldest commit.
const ACK_WINDOW: u16 = 256;

/// A publish whose answer is not written yet. Answers go out in the order
/// the publishes came (MQTT 4.6): one that is known at once waits behind
/// earlier ones still committing.
enum PendingAck {
    /// Known when the publish was handled (refused, duplicate, id in use).
    Ready { qos: QoS, packet_id: u16, code: u8 },
    /// Acknowledged once `commit` (every copy owed to a persistent session,
    /// and the retained message) is committed; QoS 0 entries only keep the
    /// window bounded and close a 3.1.1 connection if the commit fails.
    Commit {
        qos: QoS,
        packet_id: u16,
        /// Sessions the publish reached (0: "no matching subscribers").
        matched: usize,
        commit: Ticket,
    },
}

impl PendingAck {
    /// Whether the answer can be written now (polls the commit once).
    fn is_ready(&mut self) -> bool {
        match self {
            PendingAck::Ready { .. }
            | PendingAck::Commit {
                commit: Ticket::Done(_),
                ..
            } => true,
            PendingAck::Commit { commit, .. } => {
                if let Ticket::Pending(f) = commit {
                    match f.as_mut().now_or_never() {
                        Some(r) => *commit = Ticket::Done(r),
                        None => return false,
                    }
                }
                true
            }
        }
    }
}

/// A connection's pending answers. Boxed on purpose: the box is 8 bytes in
/// every connection's task, a bare `VecDeque` 32, and most connections
/// never have a pending answer.
#[allow(clippy::box_collection)]
type AckQueue = Option<Box<VecDeque<PendingAck>>>;

/// Resolves once the oldest pending answer can be written; never while
/// there is none.
async fn first_ack_ready(acks: &mut AckQueue) {
    match acks.as_mut().and_then(|q| q.front_mut()) {
        Some(PendingAck::Commit { commit, .. }) => {
            if let Ticket::Pending(f) = commit {
                let r = f.as_mut().await;
                *commit = Ticket::Done(r);
            }
        }
        Some(PendingAck::Ready { .. }) => {}
        None => std::future::pending().await,
    }
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

    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

impl Transport for tokio::net::TcpStream {
    const KNOWS_READINESS: bool = true;

    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        tokio::net::TcpStream::readable(self)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Transport for tokio_rustls::server::TlsStream<IO> {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport
    for crate::listener::websocket::WsStream<S>
{
}

#[cfg(feature = "psk")]
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for tokio_openssl::SslStream<S> {}

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
    let _live = crate::engine::LiveConnection::new(&broker);
    let exit = match broker.drain_mode() {
        // A drain began while this CONNECT waited for its claim: it has
        // its CONNACK, and leaves like the others.
        Some(d) => Exit::Kicked(d.code),
        None => conn.run(&mut stream, &mut rbuf, &mut wbuf).await,
    };
    Box::pin(conn.finish(&mut stream, &mut wbuf, exit)).await;
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The CONNECT did not decode; the protocol it named, if that much
    /// was readable.
    #[error("{0}")]
    Decode(DecodeError, Option<Protocol>),
    #[error("first packet was {0}, not CONNECT")]
    NotConnect(&'static str),
    #[error("socket closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ConnectError {
    /// The CONNACK that tells the client why, where one may be sent: an
    /// MQTT 5 client reads the reason code (and string) of any CONNECT it
    /// got wrong (MQTT 5 §3.1.4, §4.13); 3.1.1 has codes for none of them
    /// and closes without an answer, except for an unknown protocol level.
    fn connack(&self) -> Option<BytesMut> {
        let ConnectError::Decode(e, protocol) = self else {
            return None;
        };
        if let DecodeError::UnsupportedProtocol { .. } = e {
            // We cannot know which format the client reads: 3.1.1's
            // "unacceptable protocol version" is the one all accept.
            return Some(BytesMut::from(&[0x20, 0x02, 0x00, 0x01][..]));
        }
        if *protocol != Some(Protocol::V5) {
            return None;
        }
        let ack = ConnAck {
            session_present: false,
            code: e.reason_code(),
            // Allowed even if the client asked for no reason strings (it
            // is a CONNACK), and we could not read whether it did.
            properties: Properties {
                reason_string: Some(ByteStr::from(decode_reason(e))),
                ..Properties::default()
            },
        };
        let mut out = BytesMut::new();
        codec::encode(&Packet::ConnAck(ack), Protocol::V5, &mut out).ok()?;
        Some(out)
    }
}

async fn read_connect<S: AsyncRead + Unpin>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_packet_size: u32,
) -> Result<Box<Connect>, ConnectError> {
    loop {
        // Read first: a CONNECT that fails to decode is gone from `rbuf`.
        let protocol = codec::connect_protocol(rbuf);
        match codec::decode(rbuf, None, max_packet_size) {
            Ok(Some(Packet::Connect(c))) => {
                broker.stats.messages_received.inc();
                return Ok(c);
            }
            Ok(Some(other)) => return Err(ConnectError::NotConnect(other.name())),
            Ok(None) => {}
            Err(e) => {
                broker.stats.protocol_errors.inc();
                return Err(ConnectError::Decode(e, protocol));
            }
        }
        rbuf.reserve(256);
        let n = stream.read_buf(rbuf).await?;
        if n == 0 {
            return Err(ConnectError::Closed);
        }
        broker.stats.bytes_received.inc_by(n as u64);
    }
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
    /// Client -> server topic aliases (ours to bound).
    aliases_in: HashMap<u16, ByteStr>,
    /// Server -> client topic aliases (the client's to bound).
    aliases_out: HashMap<ByteStr, u16>,
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

impl Connection {
    /// Validates CONNECT and opens the session; writes CONNACK to `wbuf`.
    /// `None`: refused (the CONNACK says why).
    async fn accept(
        broker: Arc<Broker>,
        listener: Arc<ListenerInfo>,
        // Boxed as decoded, and dropped with this (short) future: moving
        // out of it in the connection's own future kept the box allocated
        // for the connection's whole life.
        c: Box<Connect>,
        identity: Option<String>,
        peer: SocketAddr,
        wbuf: &mut BytesMut,
    ) -> Option<Connection> {
        let cfg = &broker.config.mqtt;
        let v5 = c.protocol.is_v5();
        if let Some(drain) = broker.drain_mode() {
            tracing::debug!(client_id = %c.client_id, "CONNECT refused: draining");
            broker.stats.connects_refused.inc();
            let problem_info = c.properties.request_problem_information != Some(0);
            let ack = drain.connack(c.protocol, problem_info);
            if codec::encode(&Packet::ConnAck(ack), c.protocol, wbuf).is_ok() {
                broker.stats.messages_sent.inc();
            }
            return None;
        }
        let refuse = |wbuf: &mut BytesMut, v5_code: u8, v3_code: u8, why: &str| {
            tracing::debug!(client_id = %c.client_id, "CONNECT refused: {why}");
            broker.stats.connects_refused.inc();
            let mut properties = Properties::default();
            if v5 && c.properties.request_problem_information != Some(0) {
                properties.reason_string = Some(ByteStr::from(why));
            }
            let ack = ConnAck {
                session_present: false,
                code: if v5 { v5_code } else { v3_code },
                properties,
            };
            if codec::encode(&Packet::ConnAck(ack), c.protocol, wbuf).is_ok() {
                broker.stats.messages_sent.inc();
            }
        };
        // MQTT 5 enhanced authentication (AUTH exchanges) is not offered:
        // a client that asks for it is told so, not left waiting for AUTH.
        // (3.1.1 CONNECTs carry no properties.)
        let props = &c.properties;
        if props.authentication_method.is_some() {
            let why = "authentication method not supported";
            refuse(
                wbuf,
                reason::BAD_AUTHENTICATION_METHOD,
                reason::v3::NOT_AUTHORIZED,
                why,
            );
            return None;
        }
        if props.authentication_data.is_some() {
            let why = "authentication data without a method";
            refuse(
                wbuf,
                reason::PROTOCOL_ERROR,
                reason::v3::NOT_AUTHORIZED,
                why,
            );
            return None;
        }

        // Copied out of the CONNECT frame: a slice of it would keep the
        // whole read buffer alive for as long as the session (and the
        // replicated ownership record) lives.
        let mut client_id = ByteStr::from(c.client_id.as_str());
        let mut assigned = None;
        if client_id.is_empty() {
            let allowed = cfg.allow_zero_length_clientid
                && (v5 || (c.protocol == Protocol::V311 && c.clean_start));
            if !allowed {
                refuse(
                    wbuf,
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                    reason::v3::IDENTIFIER_REJECTED,
                    "a zero-length client id needs clean session",
                );
                return None;
            }
            client_id = ByteStr::from(format!("raftmq-{:016x}", rand::random::<u64>()));
            assigned = v5.then(|| client_id.clone());
        }
        let username = match identity.filter(|_| listener.use_identity_as_username) {
            Some(id) => Some(ByteStr::from(id)),
            None => c.username.as_deref().map(ByteStr::from),
        };
        let policy = broker.auth.policy();
        // A transport identity was proven by the handshake; the password
        // plays no part then (mosquitto's use_identity_as_username).
        let login = if listener.use_identity_as_username {
            if username.is_some() {
                Login::Accepted
            } else {
                Login::NotAuthorized
            }
        } else {
            policy.login(username.as_deref(), c.password.as_deref())
        };
        if login != Login::Accepted {
            broker.stats.auth_failures.inc();
            tracing::info!(client_id = %c.client_id, %peer, username = ?username.as_deref(), "authentication failed");
            // Slow down guessing: every failure costs the guesser time.
            let delay = broker.config.auth.auth_fail_delay_ms;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            // 3.1.1 gets 5 (not authorized) either way, as from mosquitto:
            // clients and scripts written against it expect that code.
            let v5_code = if login == Login::BadCredentials {
                reason::BAD_USERNAME_OR_PASSWORD
            } else {
                reason::NOT_AUTHORIZED
            };
            let v3_code = reason::v3::NOT_AUTHORIZED;
            refuse(wbuf, v5_code, v3_code, "not authorized");
            return None;
        }
        if let Some(will) = &c.will {
            let who = Principal {
                username: username.as_deref(),
                client_id: &client_id,
            };
            let bad = if !policy.may(who, &will.topic, Action::Write) {
                Some((reason::NOT_AUTHORIZED, "will topic not allowed"))
            } else if validate_topic_name(&will.topic, broker.topic_limits).is_err() {
                Some((reason::TOPIC_NAME_INVALID, "invalid will topic"))
            } else if will.qos as u8 > cfg.max_qos {
                Some((reason::QOS_NOT_SUPPORTED, "will QoS above the maximum"))
            } else if will.retain && !cfg.retain_available {
                Some((reason::RETAIN_NOT_SUPPORTED, "retained wills are off"))
            } else {
                None
            };
            if let Some((code, why)) = bad {
                refuse(wbuf, code, reason::v3::NOT_AUTHORIZED, why);
                return None;
            }
        }

        if let Err(owner) = broker.owner_check(&client_id, username.as_ref()) {
            broker.takeover_refused(&client_id, username.as_ref(), owner.as_ref(), Some(peer));
            refuse(
                wbuf,
                reason::NOT_AUTHORIZED,
                reason::v3::NOT_AUTHORIZED,
                "the client id belongs to another identity",
            );
            return None;
        }

        let requested_expiry = if v5 {
            c.properties.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested_expiry.min(cfg.max_session_expiry);
        let receive_maximum = c.properties.receive_maximum.unwrap_or(u16::MAX);
        // The id is claimed through the cluster first: a connection with it
        // on another node is closed, and a session that lives there moves
        // here. A persistent session cannot be served without the cluster.
        let nonce = rand::random::<u64>();
        let claim = Claim {
            client_id: client_id.clone(),
            clean_start: c.clean_start,
            persistent: expiry > 0,
            nonce,
            will: c
                .will
                .as_ref()
                .map(|w| crate::state::Will::from_last_will(w, &client_id)),
            username: username.clone(),
        };
        match broker.claim(claim).await {
            Ok(()) => {}
            Err(ClaimError::OtherIdentity) => {
                let owner = broker.view_owner_identity(&client_id);
                broker.takeover_refused(&client_id, username.as_ref(), owner.as_ref(), Some(peer));
                refuse(
                    wbuf,
                    reason::NOT_AUTHORIZED,
                    reason::v3::NOT_AUTHORIZED,
                    "the client id belongs to another identity",
                );
                return None;
            }
            Err(e) => {
                tracing::info!(%client_id, %peer, "CONNECT refused: {e}");
                refuse(
                    wbuf,
                    reason::SERVER_UNAVAILABLE,
                    reason::v3::SERVER_UNAVAILABLE,
                    "the cluster cannot serve this session now",
                );
                return None;
            }
        }
        let opened = broker.open_session(
            SessionRequest {
                client_id: client_id.clone(),
                username: username.clone(),
                nonce,
                clean_start: c.clean_start,
                expiry,
                receive_maximum,
            },
            Instant::now(),
        );
        broker.stats.connected();
        listener.connections.inc();
        listener.clients.inc();

        let mut keep_alive = c.keep_alive;
        let mut server_keep_alive = None;
        if keep_alive > cfg.max_keepalive || (keep_alive == 0 && cfg.max_keepalive < u16::MAX && v5)
        {
            keep_alive = cfg.max_keepalive;
            server_keep_alive = Some(keep_alive);
        }
        let mut properties = Properties::default();
        if v5 {
            let p = &mut properties;
            if expiry != requested_expiry {
                p.session_expiry_interval = Some(expiry);
            }
            if cfg.receive_maximum != u16::MAX {
                p.receive_maximum = Some(cfg.receive_maximum);
            }
            if cfg.max_qos < 2 {
                p.maximum_qos = Some(cfg.max_qos);
            }
            if !cfg.retain_available {
                p.retain_available = Some(0);
            }
            p.maximum_packet_size = Some(listener.max_packet_size);
            p.assigned_client_identifier = assigned;
            if cfg.topic_alias_maximum > 0 {
                p.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            }
            p.server_keep_alive = server_keep_alive;
            if c.properties.request_response_information == Some(1) {
                p.response_information = Some(ByteStr::from(format!("response/{client_id}")));
            }
        }
        let ack = ConnAck {
            session_present: opened.session_present,
            code: reason::SUCCESS,
            properties,
        };
        if codec::encode(&Packet::ConnAck(ack), c.protocol, wbuf).is_ok() {
            broker.stats.messages_sent.inc();
        }
        tracing::debug!(%client_id, protocol = ?c.protocol, clean = c.clean_start, "connected");
        let ack_window = cfg.receive_maximum.min(ACK_WINDOW);
        // A resumed session may have a retained stream to go on with.
        let streaming = opened.cell.session.lock().has_cursors();

        Some(Connection {
            broker,
            listener,
            cell: opened.cell,
            conn_id: opened.conn_id,
            kicked: opened.kicked,
            protocol: c.protocol,
            client_id,
            username,
            keepalive: Duration::from_millis(u64::from(keep_alive) * 1500),
            client_max_packet: c.properties.maximum_packet_size.unwrap_or(u32::MAX),
            aliases_in: HashMap::new(),
            aliases_out: HashMap::new(),
            client_alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
            problem_info: c.properties.request_problem_information != Some(0),
            will: c.will.map(|will| Box::new(WillHandle { will, nonce })),
            releases: Vec::new(),
            connect_expiry: requested_expiry,
            congested: SmallVec::new(),
            spare: Vec::new(),
            acks: None,
            ack_window,
            streaming,
        })
    }

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

    async fn handle(&mut self, packet: Packet, wbuf: &mut BytesMut) -> Flow {
        let now = Instant::now();
        match packet {
            Packet::Publish(p) => self.on_publish(p, wbuf).await,
            Packet::PubAck(r) => {
                // One lock per ack (acks are the hot path of QoS 1 fan-out).
                let (acked, expired, persistent, wake) = {
                    let mut s = self.cell.session.lock();
                    let (acked, expired) = s.on_puback(r.packet_id, now);
                    (acked, expired, s.is_persistent(), s.publishers_to_wake())
                };
                if persistent {
                    self.submit_acks(acked.into_iter().chain(expired));
                }
                if wake {
                    self.cell.drained.notify_waiters();
                }
                Ok(())
            }
            Packet::PubRec(r) => {
                let outcome = self
                    .cell
                    .session
                    .lock()
                    .on_pubrec(r.packet_id, r.code >= 0x80, now);
                match outcome {
                    PubRecOutcome::Unknown => {
                        let code = if self.protocol.is_v5() {
                            reason::PACKET_IDENTIFIER_NOT_FOUND
                        } else {
                            reason::SUCCESS
                        };
                        self.write(wbuf, Packet::PubRel(PubResp::new(r.packet_id, code)));
                    }
                    PubRecOutcome::Released { seq } => {
                        if self.cell.session.lock().is_persistent() {
                            // PUBREL waits for this (see `handle_input`).
                            self.releases.push(self.broker.cluster.seam.submit(vec![
                                Command::Release {
                                    client_id: self.client_id.clone(),
                                    seq,
                                },
                            ]));
                        }
                    }
                    PubRecOutcome::Ended { seq, expired } => {
                        self.persist_acks(seq.into_iter().chain(expired));
                        self.release_publishers();
                    }
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let known = self.cell.session.lock().end_inbound_qos2(r.packet_id);
                let code = if known || !self.protocol.is_v5() {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.write(wbuf, Packet::PubComp(PubResp::new(r.packet_id, code)));
                Ok(())
            }
            Packet::PubComp(r) => {
                let (done, expired) = self.cell.session.lock().on_pubcomp(r.packet_id, now);
                self.persist_acks(done.into_iter().chain(expired));
                self.release_publishers();
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s, wbuf).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, wbuf),
            Packet::PingReq => {
                self.write(wbuf, Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                // Publishes sent before DISCONNECT get their answers first.
                self.settle_acks(wbuf).await?;
                if let Some(expiry) = d.properties.session_expiry_interval {
                    if self.connect_expiry == 0 && expiry != 0 {
                        return Err(Exit::Close(
                            reason::PROTOCOL_ERROR,
                            "session expiry cannot be set at DISCONNECT when it was 0",
                        ));
                    }
                    let expiry = expiry.min(self.broker.config.mqtt.max_session_expiry);
                    self.broker.set_expiry(&self.cell, expiry);
                }
                Err(Exit::ClientDisconnect(d.code))
            }
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

    /// A PUBREL for a persistent session goes out only once its release
    /// is committed: a client forgets a QoS 2 message when it answers
    /// PUBREL, so a node that resumes the session must know to send PUBREL
    /// again, never the PUBLISH (which the client would take as new).
    async fn commit_releases(&mut self) -> Flow {
        if self.releases.is_empty() {
            return Ok(());
        }
        let all = futures_util::future::join_all(self.releases.drain(..).map(|t| t.wait()));
        // At most `Broker::commit_wait`; then the client resends PUBREC
        // after reconnecting.
        match tokio::time::timeout(self.broker.commit_wait(), all).await {
            Ok(results) if results.iter().all(Result::is_ok) => Ok(()),
            _ => Err(Exit::Close(
                reason::SERVER_UNAVAILABLE,
                "QoS 2 release not committed",
            )),
        }
    }

    fn persist_acks(&self, seqs: impl Iterator<Item = u64>) {
        if self.cell.session.lock().is_persistent() {
            self.submit_acks(seqs);
        }
    }

    /// Records acknowledgements of a persistent session's copies.
    fn submit_acks(&self, seqs: impl Iterator<Item = u64>) {
        let commands: Vec<Command> = seqs
            .map(|seq| Command::Ack {
                client_id: self.client_id.clone(),
                seq,
            })
            .collect();
        self.broker.submit(commands);
    }

    async fn on_publish(&mut self, mut p: Publish, wbuf: &mut BytesMut) -> Flow {
        self.broker.stats.publish_received.inc();
        let cfg = &self.broker.config.mqtt;
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > cfg.topic_alias_maximum {
                return Err(Exit::Close(
                    reason::TOPIC_ALIAS_INVALID,
                    "topic alias out of range",
                ));
            }
            if p.topic.is_empty() {
                match self.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return Err(Exit::Close(reason::PROTOCOL_ERROR, "unknown topic alias")),
                }
            } else {
                self.aliases_in.insert(alias, p.topic.clone());
            }
            p.properties.topic_alias = None;
        }
        if let Err(e) = validate_topic_name(&p.topic, self.broker.topic_limits) {
            let why = match e {
                TopicError::Empty => "empty topic",
                TopicError::TooLong(_) => "topic too long",
                TopicError::TooManyLevels(_) => "too many topic levels",
                _ => "invalid topic name",
            };
            return Err(Exit::Close(reason::TOPIC_NAME_INVALID, why));
        }
        if p.qos as u8 > cfg.max_qos {
            return Err(Exit::Close(
                reason::QOS_NOT_SUPPORTED,
                "QoS above the maximum",
            ));
        }
        if p.retain && !cfg.retain_available {
            return Err(Exit::Close(
                reason::RETAIN_NOT_SUPPORTED,
                "retain is not available",
            ));
        }
        let allowed = self.broker.auth.policy().may(
            Principal {
                username: self.username.as_deref(),
                client_id: &self.client_id,
            },
            &p.topic,
            Action::Write,
        );
        if !allowed {
            self.broker.stats.publish_denied.inc();
            tracing::debug!(topic = %p.topic, "publish denied (ACL, or a $SYS topic)");
            // 3.x has no way to say no: acknowledge and drop, as mosquitto.
            let code = if self.protocol.is_v5() {
                reason::NOT_AUTHORIZED
            } else {
                reason::SUCCESS
            };
            self.answer(wbuf, p.qos, p.packet_id, code);
            return Ok(());
        }
        if !self.broker.admit_publish(&p) {
            // Past the memory budget: 5.0 says so (the client may retry
            // later); 3.1.1 cannot, and a PUBACK would claim it stored.
            if !self.protocol.is_v5() {
                return Err(Exit::Close(
                    reason::QUOTA_EXCEEDED,
                    "the broker's memory budget is spent",
                ));
            }
            self.answer(wbuf, p.qos, p.packet_id, reason::QUOTA_EXCEEDED);
            return Ok(());
        }
        if p.qos == QoS::AtLeastOnce && self.cell.session.lock().inbound_qos2_pending(p.packet_id) {
            // The id still belongs to an unreleased QoS 2 exchange: routing
            // this publish would break that exchange's exactly-once promise.
            if !self.protocol.is_v5() {
                return Err(Exit::Close(
                    reason::PROTOCOL_ERROR,
                    "packet identifier in use",
                ));
            }
            self.answer(
                wbuf,
                QoS::AtLeastOnce,
                p.packet_id,
                reason::PACKET_IDENTIFIER_IN_USE,
            );
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce {
            let limit = usize::from(cfg.receive_maximum);
            let state = self
                .cell
                .session
                .lock()
                .begin_inbound_qos2(p.packet_id, limit);
            match state {
                InboundQos2::New => {}
                InboundQos2::Duplicate => {
                    // While the first copy still commits, its PUBREC (which
                    // may yet be a failure) answers this one too.
                    if !self.commit_pending(p.packet_id) {
                        self.answer(wbuf, QoS::ExactlyOnce, p.packet_id, reason::SUCCESS);
                    }
                    return Ok(());
                }
                InboundQos2::OverLimit => {
                    return Err(Exit::Close(
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "more unacknowledged QoS 2 publishes than Receive Maximum",
                    ))
                }
            }
        }
        let message = Arc::new(Message::from_publish(
            &p,
            self.client_id.clone(),
            Instant::now(),
        ));
        let mut routed = if message.retain {
            self.broker.publish_retained(message, true)
        } else {
            self.broker.publish(message)
        };
        // Waiting for ourselves would never end.
        routed
            .congested
            .retain(|c| !backpressure::is(c, &self.cell));
        self.congested.extend(routed.congested.drain(..));
        let commit = routed.committed;
        let queue_empty = self.acks.as_ref().is_none_or(|q| q.is_empty());
        match commit {
            // Nothing to wait for, nothing waiting before it: at once.
            Ticket::Done(result) if queue_empty => {
                self.publish_committed(wbuf, p.qos, p.packet_id, routed.matched, result)
            }
            Ticket::Done(Ok(())) if p.qos == QoS::AtMostOnce => Ok(()),
            commit => {
                self.acks
                    .get_or_insert_with(Default::default)
                    .push_back(PendingAck::Commit {
                        qos: p.qos,
                        packet_id: p.packet_id,
                        matched: routed.matched,
                        commit,
                    });
                Ok(())
            }
        }
    }

    fn acks_full(&self) -> bool {
        self.acks
            .as_ref()
            .is_some_and(|q| q.len() >= usize::from(self.ack_window))
    }

    /// Whether a QoS 2 publish with `packet_id` still waits for its commit.
    fn commit_pending(&self, packet_id: u16) -> bool {
        self.acks.as_ref().is_some_and(|q| {
            q.iter().any(|a| {
                matches!(a, PendingAck::Commit { qos: QoS::ExactlyOnce, packet_id: id, .. } if *id == packet_id)
            })
        })
    }

    /// Writes a PUBACK (QoS 1) or PUBREC (QoS 2) known at once, behind any
    /// answer still waiting for its commit.
    fn answer(&mut self, wbuf: &mut BytesMut, qos: QoS, packet_id: u16, code: u8) {
        match &mut self.acks {
            Some(q) if !q.is_empty() => q.push_back(PendingAck::Ready {
                qos,
                packet_id,
                code,
            }),
            _ => self.write_ack(wbuf, qos, packet_id, code),
        }
    }

    fn write_ack(&self, wbuf: &mut BytesMut, qos: QoS, packet_id: u16, code: u8) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.write(wbuf, Packet::PubAck(PubResp::new(packet_id, code))),
            QoS::ExactlyOnce => self.write(wbuf, Packet::PubRec(PubResp::new(packet_id, code))),
        }
    }

    /// Writes every answer at the front of the queue that can go now.
    fn write_ready_acks(&mut self, wbuf: &mut BytesMut) -> Flow {
        loop {
            let Some(q) = self.acks.as_mut() else {
                return Ok(());
            };
            if !q.front_mut().is_some_and(PendingAck::is_ready) {
                return Ok(());
            }
            match q.pop_front() {
                Some(PendingAck::Ready {
                    qos,
                    packet_id,
                    code,
                }) => self.write_ack(wbuf, qos, packet_id, code),
                Some(PendingAck::Commit {
                    qos,
                    packet_id,
                    matched,
                    commit: Ticket::Done(result),
                }) => self.publish_committed(wbuf, qos, packet_id, matched, result)?,
                // `is_ready` turned every ready commit into `Done`.
                Some(PendingAck::Commit { .. }) | None => return Ok(()),
            }
        }
    }

    /// Waits for every pending answer (at most [`Broker::commit_wait`]) and
    /// writes them; those not committed by then get none (the client sends
    /// them again).
    async fn settle_acks(&mut self, wbuf: &mut BytesMut) -> Flow {
        let deadline = tokio::time::Instant::now() + self.broker.commit_wait();
        while self.acks.as_ref().is_some_and(|q| !q.is_empty()) {
            let ready = first_ack_ready(&mut self.acks);
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                self.acks = None;
                return Ok(());
            }
            self.write_ready_acks(wbuf)?;
        }
        Ok(())
    }

    /// Answers a publish whose commit is known: never before it (the
    /// promise is that a QoS 1/2 PUBLISH is acknowledged only once every
    /// copy it owes a persistent session is committed).
    fn publish_committed(
        &mut self,
        wbuf: &mut BytesMut,
        qos: QoS,
        packet_id: u16,
        matched: usize,
        committed: Result<(), StateError>,
    ) -> Flow {
        let code = match committed {
            Err(e) => {
                tracing::debug!("publish not committed: {e}");
                reason::SERVER_UNAVAILABLE
            }
            Ok(()) if matched == 0 => reason::NO_MATCHING_SUBSCRIBERS,
            Ok(()) => reason::SUCCESS,
        };
        if code >= 0x80 && !self.protocol.is_v5() {
            // 3.1.1 has no failure acknowledgement: closing without one
            // makes the client send the message again, which is the only
            // honest answer when it may not have been stored.
            self.cell.session.lock().end_inbound_qos2(packet_id);
            return Err(Exit::Close(code, "publish not committed"));
        }
        let code = if self.protocol.is_v5() {
            code
        } else {
            reason::SUCCESS
        };
        if qos == QoS::ExactlyOnce && code >= 0x80 {
            // A failed PUBREC ends the exchange (MQTT 5 §4.3.3): the id is free.
            self.cell.session.lock().end_inbound_qos2(packet_id);
        }
        self.write_ack(wbuf, qos, packet_id, code);
        Ok(())
    }

    async fn on_subscribe(&mut self, s: Subscribe, wbuf: &mut BytesMut) -> Flow {
        let cfg = &self.broker.config.mqtt;
        let v5 = self.protocol.is_v5();
        let identifier = s.properties.subscription_identifiers.first().copied();
        let max_subs = cfg.max_subscriptions_per_client;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut cursors = Vec::new();
        let mut tickets = Vec::new();
        for (raw, mut options) in s.filters {
            let parsed = match parse_filter(&raw, self.broker.topic_limits) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(filter = %raw, "subscription refused: {e}");
                    codes.push(if v5 {
                        reason::TOPIC_FILTER_INVALID
                    } else {
                        reason::v3::SUBACK_FAILURE
                    });
                    continue;
                }
            };
            if parsed.group.is_some() && options.no_local {
                return Err(Exit::Close(
                    reason::PROTOCOL_ERROR,
                    "no local on a shared subscription",
                ));
            }
            let who = Principal {
                username: self.username.as_deref(),
                client_id: &self.client_id,
            };
            if !self.broker.auth.policy().may_subscribe(who, parsed.filter) {
                tracing::debug!(filter = %raw, "subscription denied by ACL");
                codes.push(if v5 {
                    reason::NOT_AUTHORIZED
                } else {
                    reason::v3::SUBACK_FAILURE
                });
                continue;
            }
            if max_subs > 0 {
                let s = self.cell.session.lock();
                if !s.subscriptions.contains_key(&raw) && s.subscriptions.len() >= max_subs {
                    drop(s);
                    codes.push(if v5 {
                        reason::QUOTA_EXCEEDED
                    } else {
                        reason::v3::SUBACK_FAILURE
                    });
                    continue;
                }
            }
            if options.qos as u8 > cfg.max_qos {
                options.qos = QoS::from_u8(cfg.max_qos).unwrap_or(QoS::AtMostOnce);
            }
            let (existed, ticket, since) = self
                .broker
                .subscribe(&self.cell, &raw, &parsed, options, identifier);
            tickets.extend(ticket);
            codes.push(options.qos as u8);
            let wanted = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            // Shared subscriptions get no retained messages (MQTT 5 4.8.2).
            if wanted && parsed.group.is_none() {
                cursors.push(RetainedCursor {
                    filter: ByteStr::from(parsed.filter),
                    key: raw,
                    qos: options.qos,
                    identifier,
                    since,
                    after: None,
                });
            }
        }
        // Other nodes route to this subscription once its route is
        // committed: SUBACK waits for that, so that a publish made anywhere
        // after SUBACK reaches it. Without a leader the subscription still
        // serves this node's own publishers, so nobody waits for a quorum.
        if !tickets.is_empty()
            && self
                .broker
                .health
                .has_leader
                .load(std::sync::atomic::Ordering::Acquire)
        {
            let all = futures_util::future::join_all(tickets.into_iter().map(|t| t.wait()));
            if tokio::time::timeout(SUBSCRIBE_COMMIT_WAIT, all)
                .await
                .is_err()
            {
                tracing::debug!("subscription not committed in time; SUBACK anyway");
            }
        }
        self.write(
            wbuf,
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                codes,
                properties: Properties::default(),
            }),
        );
        // Streamed after SUBACK, as the window and the socket take them.
        if !cursors.is_empty() {
            let mut session = self.cell.session.lock();
            for c in cursors {
                session.start_cursor(c);
            }
            self.streaming = true;
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe, wbuf: &mut BytesMut) -> Flow {
        let mut codes = Vec::with_capacity(u.filters.len());
        for raw in u.filters {
            let code = match parse_filter(&raw, self.broker.topic_limits) {
                Err(_) => reason::TOPIC_FILTER_INVALID,
                Ok(parsed) => {
                    self.cell.session.lock().stop_cursor(&raw);
                    if self.broker.unsubscribe(&self.cell, &raw, &parsed) {
                        reason::SUCCESS
                    } else {
                        reason::NO_SUBSCRIPTION_EXISTED
                    }
                }
            };
            codes.push(code);
        }
        self.write(
            wbuf,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                codes,
                properties: Properties::default(),
            }),
        );
        Ok(())
    }

    /// Encodes a control packet into the write buffer.
    fn write(&self, wbuf: &mut BytesMut, packet: Packet) {
        if let Err(e) = codec::encode(&packet, self.protocol, wbuf) {
            tracing::warn!("cannot encode {}: {e}", packet.name());
            return;
        }
        self.broker.stats.messages_sent.inc();
    }

    /// Moves what the session has for the client into the write buffer.
    /// Returns whether a retained stream has room to go on.
    fn drain_outbox(&mut self, wbuf: &mut BytesMut) -> bool {
        let mut outbox = std::mem::take(&mut self.spare);
        let (wake_publishers, stream_on) = {
            let mut s = self.cell.session.lock();
            s.swap_outbox(&mut outbox);
            let stream_on = self.streaming && s.cursor_room() > 0;
            (s.publishers_to_wake(), stream_on)
        };
        if wake_publishers {
            self.cell.drained.notify_waiters();
        }
        if outbox.is_empty() {
            self.spare = outbox;
            return stream_on;
        }
        // One allocation for the batch (the buffer is dropped when idle).
        let estimate: usize = outbox
            .iter()
            .map(|o| match o {
                Outgoing::Publish { delivery, .. } => {
                    delivery.message.body_len() + delivery.message.topic.len() + 16
                }
                Outgoing::PubRel { .. } => 4,
            })
            .sum();
        wbuf.reserve(estimate);
        let now = Instant::now();
        let mut discarded = Vec::new();
        // Read access is checked again here, against whoever holds the
        // session now: a copy may have been queued under another username
        // (a session resumed by someone else) or before an ACL reload.
        let policy = self.broker.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        let mut sent = 0u64;
        let mut payload_bytes = 0u64;
        let sizes = self.broker.stats.packet_size_out.local();
        let latency = self.broker.stats.publish_latency.local();
        for out in outbox.drain(..) {
            match out {
                Outgoing::PubRel { packet_id } => {
                    self.write(
                        wbuf,
                        Packet::PubRel(PubResp::new(packet_id, reason::SUCCESS)),
                    );
                }
                Outgoing::Publish {
                    packet_id,
                    dup,
                    delivery: d,
                } => {
                    let readable = acl.is_none_or(|p| {
                        let who = Principal {
                            username: self.username.as_deref(),
                            client_id: &self.client_id,
                        };
                        p.may(who, &d.message.topic, Action::Read)
                    });
                    if !readable {
                        tracing::debug!(topic = %d.message.topic, "copy not sent: the ACL denies reading it");
                    }
                    let before = wbuf.len();
                    let encoded = if readable {
                        self.encode_copy(wbuf, packet_id, dup, &d, now)
                    } else {
                        Ok(false)
                    };
                    match encoded {
                        Ok(true) => {
                            sent += 1;
                            payload_bytes += d.message.payload.len() as u64;
                            sizes.observe((wbuf.len() - before) as f64);
                            latency
                                .observe(now.duration_since(d.message.received_at).as_secs_f64());
                        }
                        Ok(false) => {
                            self.broker.stats.publish_dropped.inc();
                            if packet_id != 0 {
                                discarded.push(packet_id);
                            }
                        }
                        Err(e) => {
                            tracing::warn!("cannot encode PUBLISH: {e}");
                            if packet_id != 0 {
                                discarded.push(packet_id);
                            }
                        }
                    }
                }
            }
        }
        // Counted once per batch: shared atomics are the cost that grows
        // with the message rate (the local histograms flush when dropped).
        let stats = &self.broker.stats;
        stats.publish_sent.inc_by(sent);
        stats.messages_sent.inc_by(sent);
        stats.publish_bytes_sent.inc_by(payload_bytes);
        drop((sizes, latency));
        // Keep the vector for the next batch unless a burst made it large:
        // a quiet subscriber should not hold the memory of its busiest
        // moment.
        if outbox.capacity() <= 256 {
            self.spare = outbox;
        }
        if !discarded.is_empty() {
            let mut acks = Vec::new();
            {
                let mut s = self.cell.session.lock();
                for id in discarded {
                    let (gone, expired) = s.discard(id, now);
                    acks.extend(gone);
                    acks.extend(expired);
                }
            }
            self.persist_acks(acks.into_iter());
            // Discarding may have released queued copies into the window.
            if self.cell.session.lock().has_outbox() {
                self.cell.wake.notify_one();
            }
        }
        stream_on
    }

    /// Encodes one copy into `wbuf`: `Ok(false)` if it must not be sent
    /// (expired, or larger than the client accepts). Built straight from the
    /// shared message; MQTT 5 properties only when the copy has any.
    fn encode_copy(
        &mut self,
        wbuf: &mut BytesMut,
        packet_id: u16,
        dup: bool,
        d: &crate::session::Delivery,
        now: Instant,
    ) -> Result<bool, codec::EncodeError> {
        let m = &d.message;
        let Ok(remaining) = m.remaining_expiry(now) else {
            return Ok(false);
        };
        let v5 = self.protocol.is_v5();
        let mut properties = None;
        // The forwarded ones are written as stored (wire form); only what
        // differs per copy is built here.
        let forwarded = match &m.properties {
            Some(f) if v5 => &f.as_wire()[..],
            _ => &[],
        };
        if v5 && (remaining.is_some() || !d.subscription_ids.is_empty()) {
            let p = Properties {
                message_expiry_interval: remaining,
                subscription_identifiers: d.subscription_ids.to_vec(),
                ..Properties::default()
            };
            properties = Some(p);
        }
        let full = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: m.topic.as_bytes(),
            packet_id,
            properties: properties.as_ref(),
            forwarded,
            payload: &m.payload,
        };
        // Only a client that set a Maximum Packet Size makes us measure
        // (the full topic, before any alias).
        if self.client_max_packet < u32::MAX {
            let size = codec::encoded_publish_len(&full, self.protocol);
            if size > self.client_max_packet as usize {
                tracing::debug!(
                    size,
                    max = self.client_max_packet,
                    "message larger than the client accepts: dropped"
                );
                return Ok(false);
            }
        }
        let mut topic = m.topic.as_bytes().as_ref();
        if self.client_alias_max > 0 {
            let alias = match self.aliases_out.get(&m.topic) {
                Some(&alias) => {
                    topic = b"";
                    Some(alias)
                }
                None if self.aliases_out.len() < usize::from(self.client_alias_max) => {
                    let alias = self.aliases_out.len() as u16 + 1;
                    self.aliases_out.insert(m.topic.clone(), alias);
                    Some(alias)
                }
                None => None,
            };
            if alias.is_some() {
                properties
                    .get_or_insert_with(Properties::default)
                    .topic_alias = alias;
            }
        }
        let publish = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            properties: properties.as_ref(),
            forwarded,
            payload: &m.payload,
        };
        codec::encode_publish(&publish, self.protocol, wbuf)?;
        Ok(true)
    }

    /// Says goodbye as `exit` requires, handles the will, frees the session.
    async fn finish<S>(mut self, stream: &mut S, wbuf: &mut BytesMut, exit: Exit)
    where
        S: AsyncWrite + Unpin,
    {
        let departure = match exit {
            Exit::ClientDisconnect(reason::DISCONNECT_WITH_WILL) => Departure::Unclean,
            Exit::ClientDisconnect(_) => Departure::Clean,
            Exit::Kicked(reason::SESSION_TAKEN_OVER) => Departure::TakenOver,
            Exit::Kicked(code) if DrainMode::is_drain_code(code) => Departure::Moved,
            Exit::SocketLost | Exit::Close(..) | Exit::Kicked(_) => Departure::Unclean,
        };
        let drain = self.broker.drain_mode();
        let goodbye = match exit {
            Exit::Close(code, why) => Some((code, why)),
            Exit::Kicked(code) if DrainMode::is_drain_code(code) => Some((
                code,
                drain
                    .as_ref()
                    .map_or("closed by the server", DrainMode::why),
            )),
            Exit::Kicked(reason::SESSION_TAKEN_OVER) => {
                Some((reason::SESSION_TAKEN_OVER, "session taken over"))
            }
            Exit::Kicked(reason::ADMINISTRATIVE_ACTION) => Some((
                reason::ADMINISTRATIVE_ACTION,
                "disconnected by an administrator",
            )),
            Exit::Kicked(code) => Some((code, "closed by the server")),
            _ => None,
        };
        if let Some((code, why)) = goodbye {
            tracing::debug!(code, "closing connection: {why}");
            if self.protocol.is_v5() {
                let mut properties = Properties::default();
                if self.problem_info {
                    properties.reason_string = Some(ByteStr::from(why));
                }
                if code == reason::USE_ANOTHER_SERVER {
                    properties.server_reference = drain.and_then(|d| d.server_reference);
                }
                self.write(wbuf, Packet::Disconnect(Disconnect { code, properties }));
            }
        } else {
            tracing::debug!("disconnected");
        }
        // The session lets go of this connection before the client can see
        // the socket close: what is published after that is queued for it,
        // never handed to a connection that is going away.
        self.broker.stats.disconnected();
        self.listener.clients.dec();
        let will = self.will.take().map(|w| *w);
        self.broker
            .close_session(&self.cell, self.conn_id, departure, will);
        if !wbuf.is_empty() {
            let bye = async {
                stream.write_all(wbuf).await?;
                stream.flush().await
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), bye).await {
                self.broker.stats.bytes_sent.inc_by(wbuf.len() as u64);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    }
}

fn decode_reason(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Malformed(why) | DecodeError::Protocol(why) => why,
        DecodeError::TooLarge { .. } => "packet too large",
        DecodeError::UnsupportedProtocol { .. } => "unsupported protocol",
        DecodeError::TopicNameInvalid => "invalid topic name",
        DecodeError::PayloadFormatInvalid => "payload is not UTF-8",
    }
}
