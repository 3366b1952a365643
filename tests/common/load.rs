//! A steady QoS 1 publisher that follows a cluster through node loss,
//! counting what was acknowledged: the load of the durability tests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use raftmq::codec::{Packet, Protocol, QoS};

use crate::raw::{self, RawClient, Read1};

/// Publishes the ids `next` yields at QoS 1 with up to `window` in flight,
/// moving to the next address when a node goes away (counted in
/// `reconnects`); returns the ids acknowledged with success. Ids not
/// acknowledged when a connection breaks are sent again on the next one.
pub fn publish_acked(
    addrs: &[SocketAddr],
    client_id: &str,
    next: impl FnMut() -> Option<u32>,
    window: usize,
    acked_count: &AtomicUsize,
    reconnects: &AtomicUsize,
) -> BTreeSet<u32> {
    publish_acked_as(
        Protocol::V5,
        addrs,
        client_id,
        next,
        window,
        acked_count,
        reconnects,
        &AtomicUsize::new(0),
    )
}

/// [`publish_acked`] speaking `protocol` (3.1.1 has no failing PUBACK: a
/// publish the broker cannot commit closes the connection instead), and
/// counting failing PUBACKs (5.0) in `refused`.
#[allow(clippy::too_many_arguments)]
pub fn publish_acked_as(
    protocol: Protocol,
    addrs: &[SocketAddr],
    client_id: &str,
    next: impl FnMut() -> Option<u32>,
    window: usize,
    acked_count: &AtomicUsize,
    reconnects: &AtomicUsize,
    refused: &AtomicUsize,
) -> BTreeSet<u32> {
    publish_acked_at(
        protocol,
        QoS::AtLeastOnce,
        addrs,
        client_id,
        next,
        window,
        acked_count,
        reconnects,
        refused,
    )
}

/// [`publish_acked_as`] at `qos` (1 or 2). At QoS 2 a message counts as
/// acknowledged at its PUBREC; PUBREL/PUBCOMP follow on the same
/// connection (the broker has the message by then).
#[allow(clippy::too_many_arguments)]
pub fn publish_acked_at(
    protocol: Protocol,
    qos: QoS,
    addrs: &[SocketAddr],
    client_id: &str,
    mut next: impl FnMut() -> Option<u32>,
    window: usize,
    acked_count: &AtomicUsize,
    reconnects: &AtomicUsize,
    refused: &AtomicUsize,
) -> BTreeSet<u32> {
    let mut acked = BTreeSet::new();
    let mut retry: VecDeque<u32> = VecDeque::new();
    let mut exhausted = false;
    let mut at = 0usize;
    let deadline = Instant::now() + Duration::from_secs(240);
    'connect: while Instant::now() < deadline {
        if at > 0 {
            reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let addr = addrs[at % addrs.len()];
        at += 1;
        let Ok(mut c) = RawClient::try_connect_tcp(addr, protocol) else {
            continue;
        };
        c.send(&Packet::Connect(Box::new(raw::connect(
            protocol, client_id, true,
        ))));
        match c.recv(Duration::from_secs(8)) {
            Read1::Packet(Packet::ConnAck(a)) if a.code == 0 => {}
            _ => continue,
        }
        let mut inflight: BTreeMap<u16, u32> = BTreeMap::new();
        // QoS 2 ids past PUBREC, waiting for PUBCOMP.
        let mut releasing: BTreeSet<u16> = BTreeSet::new();
        let mut next_pid = 1u16;
        loop {
            while inflight.len() + releasing.len() < window {
                let id = match retry.pop_front() {
                    Some(id) => id,
                    None if exhausted => break,
                    None => match next() {
                        Some(id) => id,
                        None => {
                            exhausted = true;
                            break;
                        }
                    },
                };
                let pid = next_pid;
                next_pid = if next_pid == u16::MAX {
                    1
                } else {
                    next_pid + 1
                };
                c.publish("d/load", &id.to_be_bytes(), qos, false, pid);
                inflight.insert(pid, id);
            }
            if inflight.is_empty() && releasing.is_empty() {
                break 'connect;
            }
            match c.recv(Duration::from_secs(8)) {
                Read1::Packet(Packet::PubRec(a)) => {
                    if let Some(id) = inflight.remove(&a.packet_id) {
                        if a.code < 0x80 {
                            acked.insert(id);
                            acked_count.fetch_add(1, Ordering::Relaxed);
                            c.send(&Packet::PubRel(raftmq::codec::PubResp::new(a.packet_id, 0)));
                            releasing.insert(a.packet_id);
                        } else {
                            refused.fetch_add(1, Ordering::Relaxed);
                            retry.push_back(id);
                        }
                    }
                }
                Read1::Packet(Packet::PubComp(a)) => {
                    releasing.remove(&a.packet_id);
                }
                Read1::Packet(Packet::PubAck(a)) => {
                    if let Some(id) = inflight.remove(&a.packet_id) {
                        if a.code < 0x80 {
                            acked.insert(id);
                            acked_count.fetch_add(1, Ordering::Relaxed);
                        } else {
                            refused.fetch_add(1, Ordering::Relaxed);
                            retry.push_back(id);
                        }
                    }
                }
                Read1::Packet(_) => {}
                Read1::Closed | Read1::Timeout => {
                    // Not acknowledged: the publisher may resend them.
                    retry.extend(inflight.values().copied());
                    continue 'connect;
                }
            }
        }
    }
    assert!(
        retry.is_empty() && exhausted,
        "{} publishes never acknowledged",
        retry.len()
    );
    acked
}
