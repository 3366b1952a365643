//! SUBSCRIBE and UNSUBSCRIBE: each filter checked, entered into the
//! engine, SUBACK once the cluster will route to it, retained messages
//! streamed after.

use std::time::Duration;

use bytes::BytesMut;

use super::{Connection, Exit, Flow};
use crate::auth::acl::Principal;
use crate::codec::{
    reason, ByteStr, Packet, Properties, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::session::RetainedCursor;
use crate::topic_tree::parse_filter;

/// How long SUBACK waits for the cluster to learn of a subscription.
const SUBSCRIBE_COMMIT_WAIT: Duration = Duration::from_secs(3);

impl Connection {
    pub(super) async fn on_subscribe(&mut self, s: Subscribe, wbuf: &mut BytesMut) -> Flow {
        let cfg = &self.broker.config.mqtt;
        let v5 = self.protocol.is_v5();
        let identifier = s.properties.subscription_identifiers.first().copied();
        let max_subs = cfg.max_subscriptions_per_client;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut cursors = Vec::new();
        let mut tickets = Vec::new();
        for (raw, mut options) in s.filters {
            // Its own copy: the decoded filter is a slice of the read
            // buffer, and kept in the session, the tree and the replicated
            // state it would hold the whole buffer (4 KiB or more) for as
            // long as the subscription lives (most of each idle persistent
            // session's memory).
            let raw = ByteStr::from(raw.as_str());
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
                client_id: &self.cell.client_id,
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
        // after SUBACK reaches it (one group commit for all the filters), and
        // for a persistent session's subscription to be durable. A clean
        // session on a node without peers has no ticket (see
        // `Broker::subscribe`). Without a leader the subscription still
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

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe, wbuf: &mut BytesMut) -> Flow {
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
}
