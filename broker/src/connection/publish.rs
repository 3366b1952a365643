//! PUBLISH from the client: checked, admitted (memory, packet ids),
//! published through [`Broker::publish`], and answered (PUBACK, PUBREC)
//! in the order the publishes came, each once its commit is in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use futures_util::FutureExt;

use super::{Connection, Exit, Flow};
use crate::auth::acl::Principal;
use crate::backpressure;
use crate::codec::{reason, Packet, PubResp, Publish, QoS};
use crate::engine::{Publisher, Routed};
use crate::message::Message;
use crate::session::InboundQos2;
use crate::state::{StateError, Ticket};
use crate::topic_tree::{validate_topic_name, TopicError};

/// QoS 1/2 publishes a connection keeps reading past while their commits
/// are in flight (at most the server's Receive Maximum, if lower): one
/// commit round trip per message was all a publisher to persistent sessions
/// got before. Once full, input waits for the oldest commit.
pub(super) const ACK_WINDOW: u16 = 256;

/// A publish whose answer is not written yet. Answers go out in the order
/// the publishes came (MQTT 4.6): one that is known at once waits behind
/// earlier ones still committing.
pub(super) enum PendingAck {
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
        /// Those found only as it settled (`Routed::matched_later`).
        matched_later: Option<Arc<AtomicUsize>>,
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
pub(super) type AckQueue = Option<Box<VecDeque<PendingAck>>>;

/// Ready once the oldest pending answer can be written; never while
/// there is none.
pub(super) fn poll_first_ack(acks: &mut AckQueue, cx: &mut Context<'_>) -> Poll<()> {
    match acks.as_mut().and_then(|q| q.front_mut()) {
        Some(PendingAck::Commit { commit, .. }) => {
            if let Ticket::Pending(f) = commit {
                let r = std::task::ready!(f.as_mut().poll(cx));
                *commit = Ticket::Done(r);
            }
            Poll::Ready(())
        }
        Some(PendingAck::Ready { .. }) => Poll::Ready(()),
        None => Poll::Pending,
    }
}

impl Connection {
    /// PUBLISH: checked, admitted, then published through the engine; its
    /// answer goes out once the publish is committed, in order (see
    /// [`PendingAck`]).
    pub(super) async fn on_publish(&mut self, mut p: Publish, wbuf: &mut BytesMut) -> Flow {
        self.broker.stats.publish_received.inc();
        self.resolve_alias(&mut p)?;
        self.check_publish(&p)?;
        let who = Publisher::Client(Principal {
            username: self.username.as_deref(),
            client_id: &self.cell.client_id,
        });
        let Ok(allowed) = self.broker.authorize(who, &p.topic) else {
            // 3.x has no way to say no: acknowledge and drop, as mosquitto.
            let code = if self.protocol.is_v5() {
                reason::NOT_AUTHORIZED
            } else {
                reason::SUCCESS
            };
            self.answer(wbuf, p.qos, p.packet_id, code);
            return Ok(());
        };
        if !self.admit(&p, wbuf)? {
            return Ok(());
        }
        let message = Arc::new(Message::from_publish(
            &p,
            self.cell.client_id.clone(),
            Instant::now(),
        ));
        let routed = self.broker.publish(message, allowed);
        self.answer_when_committed(wbuf, p.qos, p.packet_id, routed)
    }

    /// Replaces a topic alias with its topic (or learns a new alias).
    fn resolve_alias(&mut self, p: &mut Publish) -> Flow {
        let Some(alias) = p.properties.topic_alias else {
            return Ok(());
        };
        if alias == 0 || alias > self.broker.config.mqtt.topic_alias_maximum {
            return Err(Exit::Close(
                reason::TOPIC_ALIAS_INVALID,
                "topic alias out of range",
            ));
        }
        if p.topic.is_empty() {
            let known = self.aliases.as_ref().and_then(|a| a.inbound.get(&alias));
            match known {
                Some(t) => p.topic = t.clone(),
                None => return Err(Exit::Close(reason::PROTOCOL_ERROR, "unknown topic alias")),
            }
        } else {
            let aliases = self.aliases.get_or_insert_with(Box::default);
            aliases.inbound.insert(alias, p.topic.clone());
        }
        p.properties.topic_alias = None;
        Ok(())
    }

    /// What closes the connection: a bad topic name, a QoS or a retain
    /// flag the server said it does not take.
    fn check_publish(&self, p: &Publish) -> Flow {
        let cfg = &self.broker.config.mqtt;
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
        Ok(())
    }

    /// Whether the publish may go on: the memory budget takes it, and its
    /// packet id is free (a QoS 2 id starts its exchange here). `false`:
    /// answered already.
    fn admit(&mut self, p: &Publish, wbuf: &mut BytesMut) -> Result<bool, Exit> {
        if !self.broker.admit_publish(p) {
            // Past the memory budget: 5.0 says so (the client may retry
            // later); 3.1.1 cannot, and a PUBACK would claim it stored.
            if !self.protocol.is_v5() {
                return Err(Exit::Close(
                    reason::QUOTA_EXCEEDED,
                    "the broker's memory budget is spent",
                ));
            }
            self.answer(wbuf, p.qos, p.packet_id, reason::QUOTA_EXCEEDED);
            return Ok(false);
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
            let code = reason::PACKET_IDENTIFIER_IN_USE;
            self.answer(wbuf, QoS::AtLeastOnce, p.packet_id, code);
            return Ok(false);
        }
        if p.qos != QoS::ExactlyOnce {
            return Ok(true);
        }
        let limit = usize::from(self.broker.config.mqtt.receive_maximum);
        let state = self
            .cell
            .session
            .lock()
            .begin_inbound_qos2(p.packet_id, limit);
        match state {
            InboundQos2::New => Ok(true),
            InboundQos2::Duplicate => {
                // While the first copy still commits, its PUBREC (which may
                // yet be a failure) answers this one too.
                if !self.commit_pending(p.packet_id) {
                    self.answer(wbuf, QoS::ExactlyOnce, p.packet_id, reason::SUCCESS);
                }
                Ok(false)
            }
            InboundQos2::OverLimit => Err(Exit::Close(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "more unacknowledged QoS 2 publishes than Receive Maximum",
            )),
        }
    }

    /// Holds our input for the subscribers the publish congested, and
    /// answers it at once or once its commit is in.
    fn answer_when_committed(
        &mut self,
        wbuf: &mut BytesMut,
        qos: QoS,
        packet_id: u16,
        mut routed: Routed,
    ) -> Flow {
        // Waiting for ourselves would never end.
        routed
            .congested
            .retain(|c| !backpressure::is(c, &self.cell));
        self.congested.extend(routed.congested.drain(..));
        let queue_empty = self.acks.as_ref().is_none_or(|q| q.is_empty());
        match routed.committed {
            // Nothing to wait for, nothing waiting before it: at once.
            Ticket::Done(result) if queue_empty => {
                self.publish_committed(wbuf, qos, packet_id, routed.matched, result)
            }
            Ticket::Done(Ok(())) if qos == QoS::AtMostOnce => Ok(()),
            commit => {
                self.acks
                    .get_or_insert_with(Default::default)
                    .push_back(PendingAck::Commit {
                        qos,
                        packet_id,
                        matched: routed.matched,
                        matched_later: routed.matched_later,
                        commit,
                    });
                Ok(())
            }
        }
    }

    pub(super) fn acks_full(&self) -> bool {
        self.acks
            .as_ref()
            .is_some_and(|q| q.len() >= usize::from(self.ack_window))
    }

    /// Whether a QoS 2 publish with `packet_id` still waits for its commit.
    pub(super) fn commit_pending(&self, packet_id: u16) -> bool {
        self.acks.as_ref().is_some_and(|q| {
            q.iter().any(|a| {
                matches!(a, PendingAck::Commit { qos: QoS::ExactlyOnce, packet_id: id, .. } if *id == packet_id)
            })
        })
    }

    /// Writes a PUBACK (QoS 1) or PUBREC (QoS 2) known at once, behind any
    /// answer still waiting for its commit.
    pub(super) fn answer(&mut self, wbuf: &mut BytesMut, qos: QoS, packet_id: u16, code: u8) {
        match &mut self.acks {
            Some(q) if !q.is_empty() => q.push_back(PendingAck::Ready {
                qos,
                packet_id,
                code,
            }),
            _ => self.write_ack(wbuf, qos, packet_id, code),
        }
    }

    pub(super) fn write_ack(&self, wbuf: &mut BytesMut, qos: QoS, packet_id: u16, code: u8) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.write(wbuf, Packet::PubAck(PubResp::new(packet_id, code))),
            QoS::ExactlyOnce => self.write(wbuf, Packet::PubRec(PubResp::new(packet_id, code))),
        }
    }

    /// Writes every answer at the front of the queue that can go now.
    pub(super) fn write_ready_acks(&mut self, wbuf: &mut BytesMut) -> Flow {
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
                    matched_later,
                    commit: Ticket::Done(result),
                }) => {
                    let later = matched_later.map_or(0, |l| l.load(Ordering::Acquire));
                    self.publish_committed(wbuf, qos, packet_id, matched + later, result)?
                }
                // `is_ready` turned every ready commit into `Done`.
                Some(PendingAck::Commit { .. }) | None => return Ok(()),
            }
        }
    }

    /// Waits for every pending answer (at most [`Broker::commit_wait`]) and
    /// writes them; those not committed by then get none (the client sends
    /// them again).
    pub(super) async fn settle_acks(&mut self, wbuf: &mut BytesMut) -> Flow {
        let deadline = tokio::time::Instant::now() + self.broker.commit_wait();
        while self.acks.as_ref().is_some_and(|q| !q.is_empty()) {
            let ready = std::future::poll_fn(|cx| poll_first_ack(&mut self.acks, cx));
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
    pub(super) fn publish_committed(
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
}
