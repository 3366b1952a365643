//! CONNECT: read within the connect timeout, checked (authentication,
//! client id, will, who owns the id), the client id claimed through the
//! cluster, the session opened and CONNACK written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::publish::ACK_WINDOW;
use super::{Connection, ListenerInfo};
use crate::auth::acl::{Action, Principal};
use crate::auth::Login;
use crate::codec::{
    self, reason, ByteStr, ConnAck, Connect, DecodeError, Packet, Properties, Protocol,
};
use crate::engine::{Broker, Claim, ClaimError, SessionRequest, WillHandle};
use crate::topic_tree::validate_topic_name;

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
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
    pub(super) fn connack(&self) -> Option<BytesMut> {
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

pub(super) async fn read_connect<S: AsyncRead + Unpin>(
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

pub(super) fn decode_reason(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Malformed(why) | DecodeError::Protocol(why) => why,
        DecodeError::TooLarge { .. } => "packet too large",
        DecodeError::UnsupportedProtocol { .. } => "unsupported protocol",
        DecodeError::TopicNameInvalid => "invalid topic name",
        DecodeError::PayloadFormatInvalid => "payload is not UTF-8",
    }
}

/// Why a CONNECT is refused: the CONNACK codes for MQTT 5 and 3.x, and
/// the reason (sent to a 5.0 client that did not turn reason strings off).
struct Refusal {
    v5: u8,
    v3: u8,
    why: &'static str,
}

impl Refusal {
    fn new(v5: u8, v3: u8, why: &'static str) -> Refusal {
        Refusal { v5, v3, why }
    }

    /// The id belongs to another identity (`owner`): logged and counted.
    fn other_identity(
        broker: &Broker,
        client_id: &ByteStr,
        username: Option<&ByteStr>,
        owner: Option<&ByteStr>,
        peer: SocketAddr,
    ) -> Refusal {
        broker.takeover_refused(client_id, username, owner, Some(peer));
        Refusal::new(
            reason::NOT_AUTHORIZED,
            reason::v3::NOT_AUTHORIZED,
            "the client id belongs to another identity",
        )
    }

    /// Writes the refusing CONNACK to `wbuf`.
    fn write(&self, broker: &Broker, c: &Connect, wbuf: &mut BytesMut) {
        tracing::debug!(client_id = %c.client_id, "CONNECT refused: {}", self.why);
        broker.stats.connects_refused.inc();
        let v5 = c.protocol.is_v5();
        let mut properties = Properties::default();
        if v5 && c.properties.request_problem_information != Some(0) {
            properties.reason_string = Some(ByteStr::from(self.why));
        }
        let ack = ConnAck {
            session_present: false,
            code: if v5 { self.v5 } else { self.v3 },
            properties,
        };
        if codec::encode(&Packet::ConnAck(ack), c.protocol, wbuf).is_ok() {
            broker.stats.messages_sent.inc();
        }
    }
}

/// A CONNECT that passed every check and whose client id is claimed.
struct Admitted {
    client_id: ByteStr,
    /// The id we made up for an empty one (told to a 5.0 client).
    assigned: Option<ByteStr>,
    username: Option<ByteStr>,
    /// The claim that let this connection in.
    nonce: u64,
    /// The session expiry the client asked for, and the one it gets.
    requested_expiry: u32,
    expiry: u32,
}

impl Connection {
    /// Validates CONNECT and opens the session; writes CONNACK to `wbuf`.
    /// `None`: refused (the CONNACK says why).
    pub(super) async fn accept(
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
        match admit(&broker, &listener, &c, identity, peer).await {
            Ok(admitted) => Some(Connection::open(broker, listener, c, admitted, wbuf)),
            Err(refusal) => {
                refusal.write(&broker, &c, wbuf);
                None
            }
        }
    }

    /// Opens the session of an admitted CONNECT and writes its CONNACK.
    fn open(
        broker: Arc<Broker>,
        listener: Arc<ListenerInfo>,
        c: Box<Connect>,
        a: Admitted,
        wbuf: &mut BytesMut,
    ) -> Connection {
        let cfg = &broker.config.mqtt;
        let receive_maximum = c.properties.receive_maximum.unwrap_or(u16::MAX);
        let opened = broker.open_session(
            SessionRequest {
                client_id: a.client_id.clone(),
                username: a.username.clone(),
                nonce: a.nonce,
                clean_start: c.clean_start,
                expiry: a.expiry,
                receive_maximum,
            },
            Instant::now(),
        );
        broker.stats.connected();
        listener.connections.inc();
        listener.clients.inc();

        let mut keep_alive = c.keep_alive;
        let mut server_keep_alive = None;
        let v5 = c.protocol.is_v5();
        if keep_alive > cfg.max_keepalive || (keep_alive == 0 && cfg.max_keepalive < u16::MAX && v5)
        {
            keep_alive = cfg.max_keepalive;
            server_keep_alive = Some(keep_alive);
        }
        let properties = if v5 {
            connack_properties(&broker, &listener, &c, &a, server_keep_alive)
        } else {
            Properties::default()
        };
        let ack = ConnAck {
            session_present: opened.session_present,
            code: reason::SUCCESS,
            properties,
        };
        if codec::encode(&Packet::ConnAck(ack), c.protocol, wbuf).is_ok() {
            broker.stats.messages_sent.inc();
        }
        tracing::debug!(client_id = %a.client_id, protocol = ?c.protocol, clean = c.clean_start, "connected");
        let ack_window = cfg.receive_maximum.min(ACK_WINDOW);
        // A resumed session may have a retained stream to go on with.
        let streaming = opened.cell.session.lock().has_cursors();
        let nonce = a.nonce;
        Connection {
            listener,
            cell: opened.cell,
            conn_id: opened.conn_id,
            protocol: c.protocol,
            username: a.username,
            keepalive: Duration::from_millis(u64::from(keep_alive) * 1500),
            client_max_packet: c.properties.maximum_packet_size.unwrap_or(u32::MAX),
            aliases: None,
            client_alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
            problem_info: c.properties.request_problem_information != Some(0),
            will: c.will.map(|will| Box::new(WillHandle { will, nonce })),
            releases: Vec::new(),
            connect_expiry: a.requested_expiry,
            congested: SmallVec::new(),
            spare: Vec::new(),
            acks: None,
            ack_window,
            streaming,
            broker,
        }
    }
}

/// Checks a CONNECT (authentication, client id, will, ownership) and
/// claims its client id through the cluster.
async fn admit(
    broker: &Arc<Broker>,
    listener: &ListenerInfo,
    c: &Connect,
    identity: Option<String>,
    peer: SocketAddr,
) -> Result<Admitted, Refusal> {
    check_authentication_method(c)?;
    let (client_id, assigned) = client_id(broker, c)?;
    let username = match identity.filter(|_| listener.use_identity_as_username) {
        Some(id) => Some(ByteStr::from(id)),
        None => c.username.as_deref().map(ByteStr::from),
    };
    login(broker, listener, c, username.as_ref(), peer).await?;
    check_will(broker, c, &client_id, username.as_ref())?;
    if let Err(owner) = broker.owner_check(&client_id, username.as_ref()) {
        let (u, o) = (username.as_ref(), owner.as_ref());
        return Err(Refusal::other_identity(broker, &client_id, u, o, peer));
    }
    let cfg = &broker.config.mqtt;
    let requested_expiry = if c.protocol.is_v5() {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };
    let a = Admitted {
        client_id,
        assigned,
        username,
        nonce: rand::random::<u64>(),
        requested_expiry,
        expiry: requested_expiry.min(cfg.max_session_expiry),
    };
    claim(broker, c, &a, peer).await?;
    Ok(a)
}

/// MQTT 5 enhanced authentication (AUTH exchanges) is not offered: a
/// client that asks for it is told so, not left waiting for AUTH. (3.1.1
/// CONNECTs carry no properties.)
fn check_authentication_method(c: &Connect) -> Result<(), Refusal> {
    let props = &c.properties;
    if props.authentication_method.is_some() {
        return Err(Refusal::new(
            reason::BAD_AUTHENTICATION_METHOD,
            reason::v3::NOT_AUTHORIZED,
            "authentication method not supported",
        ));
    }
    if props.authentication_data.is_some() {
        return Err(Refusal::new(
            reason::PROTOCOL_ERROR,
            reason::v3::NOT_AUTHORIZED,
            "authentication data without a method",
        ));
    }
    Ok(())
}

/// The client id, and the one we assigned if the client sent none.
fn client_id(broker: &Broker, c: &Connect) -> Result<(ByteStr, Option<ByteStr>), Refusal> {
    // Copied out of the CONNECT frame: a slice of it would keep the whole
    // read buffer alive for as long as the session (and the replicated
    // ownership record) lives.
    let client_id = ByteStr::from(c.client_id.as_str());
    if !client_id.is_empty() {
        return Ok((client_id, None));
    }
    let v5 = c.protocol.is_v5();
    let allowed = broker.config.mqtt.allow_zero_length_clientid
        && (v5 || (c.protocol == Protocol::V311 && c.clean_start));
    if !allowed {
        return Err(Refusal::new(
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            reason::v3::IDENTIFIER_REJECTED,
            "a zero-length client id needs clean session",
        ));
    }
    let client_id = ByteStr::from(format!("raftmq-{:016x}", rand::random::<u64>()));
    let assigned = v5.then(|| client_id.clone());
    Ok((client_id, assigned))
}

/// Authenticates the client; a failure costs the guesser time.
async fn login(
    broker: &Broker,
    listener: &ListenerInfo,
    c: &Connect,
    username: Option<&ByteStr>,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    // A transport identity was proven by the handshake; the password
    // plays no part then (mosquitto's use_identity_as_username).
    let login = if listener.use_identity_as_username {
        if username.is_some() {
            Login::Accepted
        } else {
            Login::NotAuthorized
        }
    } else {
        let policy = broker.auth.policy();
        policy.login(username.map(|u| u.as_str()), c.password.as_deref())
    };
    if login == Login::Accepted {
        return Ok(());
    }
    broker.stats.auth_failures.inc();
    tracing::info!(client_id = %c.client_id, %peer, username = ?username.map(|u| u.as_str()), "authentication failed");
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
    Err(Refusal::new(
        v5_code,
        reason::v3::NOT_AUTHORIZED,
        "not authorized",
    ))
}

/// The will must be one this client may publish, and the broker take.
fn check_will(
    broker: &Broker,
    c: &Connect,
    client_id: &ByteStr,
    username: Option<&ByteStr>,
) -> Result<(), Refusal> {
    let Some(will) = &c.will else {
        return Ok(());
    };
    let cfg = &broker.config.mqtt;
    let who = Principal {
        username: username.map(|u| u.as_str()),
        client_id,
    };
    let bad = if !broker.auth.policy().may(who, &will.topic, Action::Write) {
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
    match bad {
        Some((code, why)) => Err(Refusal::new(code, reason::v3::NOT_AUTHORIZED, why)),
        None => Ok(()),
    }
}

/// Claims the client id through the cluster first: a connection with it
/// on another node is closed, and a session that lives there moves here.
/// A persistent session cannot be served without the cluster.
async fn claim(
    broker: &Arc<Broker>,
    c: &Connect,
    a: &Admitted,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    let claim = Claim {
        client_id: a.client_id.clone(),
        clean_start: c.clean_start,
        persistent: a.expiry > 0,
        nonce: a.nonce,
        will: c
            .will
            .as_ref()
            .map(|w| crate::state::Will::from_last_will(w, &a.client_id)),
        username: a.username.clone(),
    };
    match broker.claim(claim).await {
        Ok(()) => Ok(()),
        Err(ClaimError::OtherIdentity) => {
            let owner = broker.view_owner_identity(&a.client_id);
            let (u, o) = (a.username.as_ref(), owner.as_ref());
            Err(Refusal::other_identity(broker, &a.client_id, u, o, peer))
        }
        Err(e) => {
            tracing::info!(client_id = %a.client_id, %peer, "CONNECT refused: {e}");
            Err(Refusal::new(
                reason::SERVER_UNAVAILABLE,
                reason::v3::SERVER_UNAVAILABLE,
                "the cluster cannot serve this session now",
            ))
        }
    }
}

/// What an MQTT 5 CONNACK tells the client of the server's limits.
fn connack_properties(
    broker: &Broker,
    listener: &ListenerInfo,
    c: &Connect,
    a: &Admitted,
    server_keep_alive: Option<u16>,
) -> Properties {
    let cfg = &broker.config.mqtt;
    let mut p = Properties::default();
    if a.expiry != a.requested_expiry {
        p.session_expiry_interval = Some(a.expiry);
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
    p.assigned_client_identifier = a.assigned.clone();
    if cfg.topic_alias_maximum > 0 {
        p.topic_alias_maximum = Some(cfg.topic_alias_maximum);
    }
    p.server_keep_alive = server_keep_alive;
    if c.properties.request_response_information == Some(1) {
        p.response_information = Some(ByteStr::from(format!("response/{}", a.client_id)));
    }
    p
}
