//! Retained messages across nodes: another node stores a retained message
//! when it applies it from the log and hands it to its own subscribers in
//! the same step, so every kind of subscriber there gets it exactly once —
//! plain, persistent (whose copy the publisher's node also enqueued through
//! the log), a shared group (forwarded), and a new subscription racing it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftmq::codec::{Packet, Protocol, PubResp, QoS, SubOptions};
use raftmq_e2e::cluster;
use raftmq_e2e::raw::{self, RawClient, Read1};

const T: Duration = Duration::from_secs(10);

/// Reads for `wait` after the last packet, acknowledging QoS 1/2 copies;
/// counts copies per (topic, payload, RETAIN flag).
fn collect(c: &mut RawClient, wait: Duration) -> BTreeMap<(String, Vec<u8>, bool), usize> {
    let mut got = BTreeMap::new();
    loop {
        match c.recv(wait) {
            Read1::Packet(Packet::Publish(p)) => {
                let key = (p.topic.to_string(), p.payload.to_vec(), p.retain);
                *got.entry(key).or_default() += 1;
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => c.send(&Packet::PubAck(PubResp::new(p.packet_id, 0))),
                    QoS::ExactlyOnce => c.send(&Packet::PubRec(PubResp::new(p.packet_id, 0))),
                }
            }
            Read1::Packet(Packet::PubRel(r)) => {
                c.send(&Packet::PubComp(PubResp::new(r.packet_id, 0)))
            }
            Read1::Packet(_) => {}
            Read1::Timeout => return got,
            Read1::Closed => panic!("subscriber closed"),
        }
    }
}

fn open(addr: std::net::SocketAddr, id: &str, persistent: bool) -> RawClient {
    let mut c = raw::connect(Protocol::V5, id, !persistent);
    if persistent {
        c.properties.session_expiry_interval = Some(3600);
    }
    let (c, ack) = RawClient::open(addr, c);
    assert_eq!(ack.code, 0, "{id}");
    c
}

/// Publishes QoS 2 retained `topic` = `payload` and completes the exchange
/// (committed by then).
fn publish_retained(p: &mut RawClient, topic: &str, payload: &[u8]) {
    publish_retained_then(p, topic, payload, || {});
}

/// [`publish_retained`], calling `committed` between PUBREC (the message
/// is committed: other nodes are applying it) and PUBREL.
fn publish_retained_then(p: &mut RawClient, topic: &str, payload: &[u8], committed: impl FnOnce()) {
    p.publish(topic, payload, QoS::ExactlyOnce, true, 1);
    let rec = p.recv_until(T, |m| match m {
        Packet::PubRec(r) => Some(r.code),
        _ => None,
    });
    assert!(rec.is_some_and(|c| c < 0x80), "{topic}: PUBREC {rec:?}");
    committed();
    p.send(&Packet::PubRel(PubResp::new(1, 0)));
    let comp = p.recv_until(T, |m| matches!(m, Packet::PubComp(_)).then_some(()));
    assert!(comp.is_some(), "{topic}: PUBCOMP");
}

#[test]
fn every_kind_of_subscriber_on_another_node_gets_a_retained_message_once() {
    let nodes = cluster::start(3, "");
    let (n2, n3) = (nodes[1].tcp_addr(), nodes[2].tcp_addr());
    let mut plain = open(n2, "plain", false);
    assert_eq!(plain.subscribe(1, "cr/#", QoS::ExactlyOnce), vec![2]);
    let mut durable = open(n3, "durable", true);
    assert_eq!(durable.subscribe(1, "cr/#", QoS::AtLeastOnce), vec![1]);
    let mut shared = open(n2, "shared", false);
    let opts = SubOptions {
        qos: QoS::AtLeastOnce,
        ..SubOptions::default()
    };
    assert_eq!(shared.subscribe_with(1, "$share/g/cr/#", opts), vec![1]);
    // Let the routes reach node 1.
    std::thread::sleep(Duration::from_millis(500));
    let mut p = open(nodes[0].tcp_addr(), "pub", false);
    for i in 0..50 {
        publish_retained(&mut p, &format!("cr/{i:02}"), format!("v{i}").as_bytes());
    }
    for (name, c) in [
        ("plain", &mut plain),
        ("durable", &mut durable),
        ("shared", &mut shared),
    ] {
        let got = collect(c, Duration::from_secs(2));
        assert_eq!(got.len(), 50, "{name}: {got:?}");
        let twice: Vec<_> = got.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "{name}: more than once: {twice:?}");
    }
}

#[test]
fn a_retained_publish_racing_a_subscription_on_another_node_arrives_once() {
    let nodes = cluster::start(3, "");
    let mut p = open(nodes[0].tcp_addr(), "pub", false);
    let mut s = open(nodes[1].tcp_addr(), "sub", false);
    let (mut live, mut stored) = (0, 0);
    let start = Instant::now();
    for round in 0..40u16 {
        let topic = format!("rr/{round}/m");
        let payload = format!("r{round}");
        let subscribe = Packet::Subscribe(raftmq::codec::Subscribe {
            packet_id: round + 1,
            filters: vec![(
                format!("rr/{round}/#").into(),
                SubOptions {
                    qos: QoS::ExactlyOnce,
                    ..SubOptions::default()
                },
            )],
            properties: Default::default(),
        });
        // Even rounds: SUBSCRIBE on node 2 with the PUBLISH on node 1.
        // Odd rounds: once the PUBLISH is committed, while node 2 applies
        // it. Which one node 2 sees first is the race.
        if round % 2 == 0 {
            s.send(&subscribe);
            publish_retained(&mut p, &topic, payload.as_bytes());
        } else {
            publish_retained_then(&mut p, &topic, payload.as_bytes(), || s.send(&subscribe));
        }
        // Behind it in the log: once node 2 delivered this, it had applied
        // the first.
        publish_retained(&mut p, &format!("rr/{round}/zz"), b"end");
        let (mut copies, mut seen_end, mut acked) = (0, false, false);
        let deadline = Instant::now() + T;
        // Until SUBACK and the marker, then a moment for a late duplicate.
        while !(acked && seen_end) {
            assert!(
                Instant::now() < deadline,
                "round {round}: {copies} copies, end {seen_end}, SUBACK {acked}"
            );
            match s.recv(T) {
                Read1::Packet(Packet::Publish(m)) => {
                    if m.topic == topic.as_str() {
                        copies += 1;
                        stored += usize::from(m.retain);
                        live += usize::from(!m.retain);
                    } else {
                        seen_end = true;
                    }
                    s.send(&Packet::PubRec(PubResp::new(m.packet_id, 0)));
                }
                Read1::Packet(Packet::PubRel(r)) => {
                    s.send(&Packet::PubComp(PubResp::new(r.packet_id, 0)))
                }
                Read1::Packet(Packet::SubAck(a)) => {
                    assert_eq!(a.codes, vec![2]);
                    acked = true;
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        for ((t, _, retain), n) in collect(&mut s, Duration::from_millis(150)) {
            if t == topic {
                copies += n;
                stored += usize::from(retain) * n;
                live += usize::from(!retain) * n;
            }
        }
        assert_eq!(copies, 1, "round {round}: copies of the retained message");
    }
    println!(
        "40 rounds across nodes in {:?}: {live} live, {stored} from the store, never twice",
        start.elapsed()
    );
}
