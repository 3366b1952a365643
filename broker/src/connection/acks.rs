//! The acknowledgements a client sends for the copies it was given
//! (PUBACK, PUBREC, PUBCOMP) and the PUBREL that ends a QoS 2 publish of
//! its own. What a persistent session's client acknowledged is recorded
//! in the log.

use std::time::Instant;

use bytes::{Buf, BytesMut};
use smallvec::SmallVec;

use super::{Connection, Exit, Flow};
use crate::codec::{self, reason, Packet, PubResp};
use crate::session::PubRecOutcome;

/// Bare PUBACKs taken as one batch at most (the inline room of the list
/// they are gathered in; more go in the next batch).
const PUBACK_BATCH: usize = 128;

impl Connection {
    /// Takes the bare PUBACKs at the front of `rbuf` (see
    /// [`codec::bare_puback`]) as one batch: one lock of the session, one
    /// refill of its window, one record for the log, instead of one each
    /// (a QoS 1 subscriber acknowledges a window of copies in one write).
    /// Whether there were any.
    pub(super) fn take_pubacks(&mut self, rbuf: &mut BytesMut) -> bool {
        let mut ids: SmallVec<[u16; PUBACK_BATCH]> = SmallVec::new();
        while ids.len() < PUBACK_BATCH {
            let Some(id) = codec::bare_puback(&rbuf[4 * ids.len()..]) else {
                break;
            };
            ids.push(id);
        }
        if ids.is_empty() {
            return false;
        }
        rbuf.advance(4 * ids.len());
        self.broker.stats.messages_received.inc_by(ids.len() as u64);
        let mut done = Vec::new();
        let (persistent, wake) = {
            let mut s = self.cell.session.lock();
            let persistent = s.is_persistent();
            s.on_pubacks(&ids, Instant::now(), |seq| {
                if persistent {
                    done.push(seq);
                }
            });
            (persistent, s.publishers_to_wake())
        };
        if persistent {
            self.broker
                .record_acks(&self.cell.client_id, done.into_iter());
        }
        if wake {
            self.cell.drained.notify_waiters();
        }
        true
    }

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
