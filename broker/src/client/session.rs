//! One MQTT connection for `raftmq pub/sub`, through rumqttc: its 3.1.1
//! and 5.0 clients are two APIs, so both are wrapped here behind one small
//! set of requests and one [`Note`] per event the commands care about.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{TlsConfiguration, Transport};

use super::args::{ConnectArgs, Version};
use super::transport::{unix_path, Route};

/// Payloads up to MQTT's own maximum (rumqttc's default is 10 KiB).
const MAX_PACKET: u32 = 268_435_455;
/// Seconds to wait for the TCP/TLS connection and the CONNACK.
const CONNECT_TIMEOUT: u64 = 10;

/// A received message.
#[derive(Debug)]
pub struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
    pub retain: bool,
}

/// What happened on the connection.
pub enum Note {
    /// A PUBLISH of ours is written (QoS 0 is then done).
    Sent,
    /// A PUBLISH of ours is acknowledged (PUBACK for QoS 1, PUBCOMP for 2).
    Acked,
    /// SUBACK: per filter, the granted QoS or None for a refusal.
    SubAck(Vec<Option<u8>>),
    Message(Message, Ack),
    /// Our DISCONNECT is written.
    Closed,
    Other,
}

/// Acknowledges a received message once it is handled (manual acks:
/// nothing is acknowledged that was not printed).
pub enum Ack {
    V4(Box<rumqttc::Publish>),
    V5(Box<p5::Publish>),
}

enum Inner {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(rumqttc::v5::AsyncClient, Box<rumqttc::v5::EventLoop>),
}

pub struct Session {
    inner: Inner,
    // Kept alive as long as the connection (the PSK bridge).
    _route: Route,
}

fn qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl Session {
    /// Connects and waits for a successful CONNACK.
    pub async fn connect(args: &ConnectArgs, tool: &str) -> anyhow::Result<Session> {
        let route = Route::open(args).await?;
        let (host, port, transport) = match (&route, unix_path(&route)) {
            (_, Some(path)) => (path.display().to_string(), 0, Transport::Unix),
            (Route::Tls(config), None) => (
                args.host.clone(),
                args.port(),
                Transport::Tls(TlsConfiguration::Rustls(config.clone())),
            ),
            _ => (args.host.clone(), args.port(), Transport::Tcp),
        };
        let id = args.client_id(tool);
        let keepalive = Duration::from_secs(args.keepalive.into());
        let inner = match args.version {
            Version::V311 => {
                let mut o = rumqttc::MqttOptions::new(id, host, port);
                o.set_transport(transport)
                    .set_keep_alive(keepalive)
                    .set_clean_session(!args.keep_session)
                    .set_max_packet_size(MAX_PACKET as usize, MAX_PACKET as usize)
                    .set_manual_acks(true);
                if let Some(user) = &args.username {
                    o.set_credentials(user, args.password.clone().unwrap_or_default());
                }
                let (client, mut events) = rumqttc::AsyncClient::new(o, 16);
                let mut net = events.network_options();
                net.set_connection_timeout(CONNECT_TIMEOUT);
                events.set_network_options(net);
                Inner::V4(client, Box::new(events))
            }
            Version::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(id, host, port);
                let expiry =
                    args.session_expiry
                        .unwrap_or(if args.keep_session { u32::MAX } else { 0 });
                o.set_transport(transport)
                    .set_keep_alive(keepalive)
                    .set_clean_start(!args.keep_session)
                    .set_max_packet_size(Some(MAX_PACKET))
                    .set_session_expiry_interval((expiry > 0).then_some(expiry))
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_manual_acks(true);
                if let Some(user) = &args.username {
                    o.set_credentials(user, args.password.clone().unwrap_or_default());
                }
                let (client, events) = rumqttc::v5::AsyncClient::new(o, 16);
                Inner::V5(client, Box::new(events))
            }
        };
        let mut session = Session {
            inner,
            _route: route,
        };
        session.wait_connack(args).await?;
        Ok(session)
    }

    async fn wait_connack(&mut self, args: &ConnectArgs) -> anyhow::Result<()> {
        let whom = format!("{}:{}", args.host, args.port());
        match &mut self.inner {
            Inner::V4(_, events) => match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => Ok(()),
                Ok(other) => anyhow::bail!("{whom}: expected CONNACK, got {other:?}"),
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    anyhow::bail!("{whom} refused the connection: {code:?}")
                }
                Err(e) => Err(e).with_context(|| format!("cannot connect to {whom}")),
            },
            Inner::V5(_, events) => match events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(_))) => Ok(()),
                Ok(other) => anyhow::bail!("{whom}: expected CONNACK, got {other:?}"),
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
                    anyhow::bail!("{whom} refused the connection: {code:?}")
                }
                Err(e) => Err(e).with_context(|| format!("cannot connect to {whom}")),
            },
        }
    }

    pub async fn subscribe(&self, filters: &[String], q: u8) -> anyhow::Result<()> {
        match &self.inner {
            Inner::V4(c, _) => {
                let f = filters
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), qos(q)));
                c.subscribe_many(f).await?
            }
            Inner::V5(c, _) => {
                let f = filters.iter().map(|t| p5::Filter::new(t.clone(), qos5(q)));
                c.subscribe_many(f).await?
            }
        }
        Ok(())
    }

    pub async fn publish(
        &self,
        topic: &str,
        q: u8,
        retain: bool,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        match &self.inner {
            Inner::V4(c, _) => c.publish_bytes(topic, qos(q), retain, payload).await?,
            Inner::V5(c, _) => c.publish_bytes(topic, qos5(q), retain, payload).await?,
        }
        Ok(())
    }

    pub async fn ack(&self, ack: Ack) -> anyhow::Result<()> {
        match (&self.inner, ack) {
            (Inner::V4(c, _), Ack::V4(p)) => c.ack(&p).await?,
            (Inner::V5(c, _), Ack::V5(p)) => c.ack(&p).await?,
            _ => {}
        }
        Ok(())
    }

    pub async fn disconnect(&self) -> anyhow::Result<()> {
        match &self.inner {
            Inner::V4(c, _) => c.disconnect().await?,
            Inner::V5(c, _) => c.disconnect().await?,
        }
        Ok(())
    }

    /// The next event; an error ends the session (no reconnection).
    pub async fn next(&mut self) -> anyhow::Result<Note> {
        match &mut self.inner {
            Inner::V4(_, events) => note4(events.poll().await.context("connection lost")?),
            Inner::V5(_, events) => note5(events.poll().await.context("connection lost")?),
        }
    }

    /// Sends DISCONNECT and waits until it is written.
    pub async fn close(&mut self) -> anyhow::Result<()> {
        self.disconnect().await?;
        loop {
            if let Note::Closed = self.next().await? {
                return Ok(());
            }
        }
    }
}

fn note4(event: rumqttc::Event) -> anyhow::Result<Note> {
    use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
    Ok(match event {
        Event::Incoming(Packet::Publish(p)) => Note::Message(
            Message {
                topic: Bytes::from(p.topic.clone().into_bytes()),
                payload: p.payload.clone(),
                retain: p.retain,
            },
            Ack::V4(Box::new(p)),
        ),
        Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => Note::Acked,
        Event::Incoming(Packet::SubAck(s)) => Note::SubAck(
            s.return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => Some(*q as u8),
                    SubscribeReasonCode::Failure => None,
                })
                .collect(),
        ),
        Event::Outgoing(Outgoing::Publish(0)) => Note::Sent,
        Event::Outgoing(Outgoing::Disconnect) => Note::Closed,
        _ => Note::Other,
    })
}

fn note5(event: rumqttc::v5::Event) -> anyhow::Result<Note> {
    use p5::{Packet, PubAckReason, PubRecReason, SubscribeReasonCode};
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    Ok(match event {
        Event::Incoming(Packet::Publish(p)) => Note::Message(
            Message {
                topic: p.topic.clone(),
                payload: p.payload.clone(),
                retain: p.retain,
            },
            Ack::V5(Box::new(p)),
        ),
        Event::Incoming(Packet::PubAck(a)) => match a.reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Note::Acked,
            refused => anyhow::bail!("the broker refused the message: {refused:?}"),
        },
        Event::Incoming(Packet::PubRec(r)) => match r.reason {
            PubRecReason::Success | PubRecReason::NoMatchingSubscribers => Note::Other,
            refused => anyhow::bail!("the broker refused the message: {refused:?}"),
        },
        Event::Incoming(Packet::PubComp(_)) => Note::Acked,
        Event::Incoming(Packet::SubAck(s)) => Note::SubAck(
            s.return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => Some(*q as u8),
                    _ => None,
                })
                .collect(),
        ),
        Event::Incoming(Packet::Disconnect(d)) => {
            let why = d
                .properties
                .and_then(|p| p.reason_string)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            anyhow::bail!("the broker disconnected: {:?}{why}", d.reason_code)
        }
        Event::Outgoing(Outgoing::Publish(0)) => Note::Sent,
        Event::Outgoing(Outgoing::Disconnect) => Note::Closed,
        _ => Note::Other,
    })
}
