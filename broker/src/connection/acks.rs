//! The acknowledgements a client sends for the copies it was given
//! (PUBACK, PUBREC, PUBCOMP) and the PUBREL that ends a QoS 2 publish of
//! its own. What a persistent session's client acknowledged is recorded
//! in the log.

use std::time::Instant;

use bytes::BytesMut;

use super::{Connection, Exit, Flow};
use crate::codec::{reason, Packet, PubResp};
use crate::session::PubRecOutcome;

impl Connection {
    pub(super) fn on_puback(&mut self, r: PubResp) {
        // One lock per ack (acks are the hot path of QoS 1 fan-out).
        let (acked, expired, persistent, wake) = {
            let mut s = self.cell.session.lock();
            let (acked, expired) = s.on_puback(r.packet_id, Instant::now());
            (acked, expired, s.is_persistent(), s.publishers_to_wake())
        };
        if persistent {
            self.broker
                .record_acks(&self.cell.client_id, acked.into_iter().chain(expired));
        }
        if wake {
            self.cell.drained.notify_waiters();
        }
    }

    pub(super) fn on_pubrec(&mut self, r: PubResp, wbuf: &mut BytesMut) {
        let outcome =
            self.cell
                .session
                .lock()
                .on_pubrec(r.packet_id, r.code >= 0x80, Instant::now());
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
                    let ticket = self.broker.record_release(&self.cell.client_id, seq);
                    self.releases.push(ticket);
                }
            }
            PubRecOutcome::Ended { seq, expired } => {
                self.persist_acks(seq.into_iter().chain(expired));
                self.release_publishers();
            }
        }
    }

    pub(super) fn on_pubrel(&mut self, r: PubResp, wbuf: &mut BytesMut) {
        let known = self.cell.session.lock().end_inbound_qos2(r.packet_id);
        let code = if known || !self.protocol.is_v5() {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.write(wbuf, Packet::PubComp(PubResp::new(r.packet_id, code)));
    }

    pub(super) fn on_pubcomp(&mut self, r: PubResp) {
        let (done, expired) = self
            .cell
            .session
            .lock()
            .on_pubcomp(r.packet_id, Instant::now());
        self.persist_acks(done.into_iter().chain(expired));
        self.release_publishers();
    }

    /// A PUBREL for a persistent session goes out only once its release
    /// is committed: a client forgets a QoS 2 message when it answers
    /// PUBREL, so a node that resumes the session must know to send PUBREL
    /// again, never the PUBLISH (which the client would take as new).
    pub(super) async fn commit_releases(&mut self) -> Flow {
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

    pub(super) fn persist_acks(&self, seqs: impl Iterator<Item = u64>) {
        if self.cell.session.lock().is_persistent() {
            self.broker.record_acks(&self.cell.client_id, seqs);
        }
    }
}
