//! The clustered broker: any node serves any client, publishes cross
//! nodes, sessions follow their clients, and no acknowledged message is
//! lost when nodes die. Real raftmq processes on 127.0.0.x, real kill -9.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq::codec::{Packet, Properties, Protocol, PubResp, QoS};
use raftmq_e2e::cluster::{self, grpc_addr, status, wait_leader};
use raftmq_e2e::load::publish_acked;
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{eventually, Broker};

const T: Duration = Duration::from_secs(15);

/// A v5 CONNECT whose session outlives the connection.
fn persistent(client_id: &str, clean: bool) -> raftmq::codec::Connect {
    let mut c = raw::connect(Protocol::V5, client_id, clean);
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// A subscriber that answers every QoS the way a correct client does,
/// QoS 2 by "method B": the message counts as delivered when its PUBLISH
/// first arrives; a PUBLISH with a packet id still awaiting PUBREL is the
/// same message again, not a new one.
struct Receiver {
    c: RawClient,
    /// (topic, payload) of every delivery, in order.
    got: Vec<(String, Vec<u8>)>,
    qos: Vec<QoS>,
    dup: Vec<bool>,
    awaiting_rel: HashSet<u16>,
    closed: Option<u8>,
}

impl Receiver {
    fn new(c: RawClient) -> Self {
        Receiver {
            c,
            got: Vec::new(),
            qos: Vec::new(),
            dup: Vec::new(),
            awaiting_rel: HashSet::new(),
            closed: None,
        }
    }

    /// The same client on a new connection: its QoS 2 state is part of
    /// its session and carries over, as in any real client.
    fn resume(c: RawClient, before: &Receiver) -> Self {
        let mut r = Receiver::new(c);
        r.awaiting_rel = before.awaiting_rel.clone();
        r
    }

    /// Reads until nothing arrives for `quiet`, or `until` deliveries.
    fn pump(&mut self, quiet: Duration, until: usize) {
        while self.got.len() < until && self.closed.is_none() {
            match self.c.recv(quiet) {
                Read1::Packet(Packet::Publish(p)) => match p.qos {
                    QoS::AtMostOnce => self.record(&p),
                    QoS::AtLeastOnce => {
                        self.record(&p);
                        self.c.send(&Packet::PubAck(PubResp::new(p.packet_id, 0)));
                    }
                    QoS::ExactlyOnce => {
                        if self.awaiting_rel.insert(p.packet_id) {
                            self.record(&p);
                        }
                        self.c.send(&Packet::PubRec(PubResp::new(p.packet_id, 0)));
                    }
                },
                Read1::Packet(Packet::PubRel(r)) => {
                    self.awaiting_rel.remove(&r.packet_id);
                    self.c.send(&Packet::PubComp(PubResp::new(r.packet_id, 0)));
                }
                Read1::Packet(Packet::Disconnect(d)) => self.closed = Some(d.code),
                Read1::Packet(_) => {}
                Read1::Closed => self.closed = Some(0),
                Read1::Timeout => return,
            }
        }
    }

    fn record(&mut self, p: &raftmq::codec::Publish) {
        self.got.push((p.topic.to_string(), p.payload.to_vec()));
        self.qos.push(p.qos);
        self.dup.push(p.dup);
    }

    fn payloads(&self) -> Vec<String> {
        self.got
            .iter()
            .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

/// Routes and subscriptions reach the other nodes one Raft round trip after
/// their SUBACK (when those nodes apply the commit): a test that subscribes
/// on one node and publishes on another right away lets that happen first.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

fn subscriber(b: &Broker, id: &str, filter: &str, qos: QoS) -> Receiver {
    let (mut c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, id, true));
    assert_eq!(ack.code, 0);
    assert_eq!(c.subscribe(1, filter, qos), vec![qos as u8]);
    settle();
    Receiver::new(c)
}

/// Publishes at QoS 2 and completes the exchange; returns PUBREC's code.
fn publish_qos2(c: &mut RawClient, topic: &str, payload: &[u8], id: u16) -> u8 {
    c.publish(topic, payload, QoS::ExactlyOnce, false, id);
    let code = c
        .recv_until(Duration::from_secs(10), |p| match p {
            Packet::PubRec(r) if r.packet_id == id => Some(r.code),
            _ => None,
        })
        .expect("PUBREC");
    c.send(&Packet::PubRel(PubResp::new(id, 0)));
    c.recv_until(Duration::from_secs(10), |p| match p {
        Packet::PubComp(r) if r.packet_id == id => Some(()),
        _ => None,
    })
    .expect("PUBCOMP");
    code
}

fn publisher(b: &Broker, id: &str) -> RawClient {
    let (c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, id, true));
    assert_eq!(ack.code, 0);
    c
}

#[test]
fn cross_node_delivery_at_every_qos() {
    let nodes = cluster::start(3, "");
    let mut sub = subscriber(&nodes[2], "sub-on-3", "x/#", QoS::ExactlyOnce);
    let mut p = publisher(&nodes[0], "pub-on-1");
    p.publish("x/0", b"q0", QoS::AtMostOnce, false, 0);
    assert_eq!(p.publish_qos1("x/1", b"q1", false, 1), 0);
    assert_eq!(publish_qos2(&mut p, "x/2", b"q2", 2), 0);
    sub.pump(Duration::from_secs(5), 3);
    assert_eq!(sub.payloads(), vec!["q0", "q1", "q2"]);
    assert_eq!(
        sub.qos,
        vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
    );

    // Retained on node 1, served from node 2's own memory.
    assert_eq!(p.publish_qos1("r/kept", b"retained", true, 3), 0x10);
    let (mut late, _) = RawClient::open(
        nodes[1].tcp_addr(),
        raw::connect(Protocol::V5, "late", true),
    );
    assert!(eventually(T, || {
        late.subscribe(1, "r/kept", QoS::AtLeastOnce);
        late.next_publish(Duration::from_millis(300))
            .is_some_and(|m| m.retain && &m.payload[..] == b"retained")
    }));

    // A will from a client on node 2 whose socket dies reaches node 3.
    let mut conn = raw::connect(Protocol::V311, "willer", true);
    conn.will = Some(raw::will("x/will", b"gone", QoS::AtLeastOnce, false));
    let (w, _) = RawClient::open(nodes[1].tcp_addr(), conn);
    drop(w);
    sub.pump(Duration::from_secs(5), 4);
    assert_eq!(sub.payloads().last().map(String::as_str), Some("gone"));
}

/// A subscriber on another node that reads slower than its publisher
/// holds the publisher back through the forwarding stream, as one on the
/// publisher's own node would: it loses nothing, though the stream, the
/// peer queue and its own queue (1,000 copies) are far smaller than the
/// burst.
#[test]
fn a_slow_subscriber_on_another_node_slows_the_publisher_and_loses_nothing() {
    const N: u32 = 30_000;
    let nodes = cluster::start(3, "");
    let mut sub = subscriber(&nodes[2], "slow-on-3", "burst", QoS::AtMostOnce);
    let mut p = publisher(&nodes[0], "fast-on-1");
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            p.publish("burst", &i.to_be_bytes(), QoS::AtMostOnce, false, 0);
        }
        p
    });
    // 1,000 at a time, then a pause: far slower than the publisher, never
    // so slow that it counts as stalled.
    while sub.got.len() < N as usize {
        let before = sub.got.len();
        sub.pump(Duration::from_secs(5), before + 1000);
        if sub.got.len() == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let _p = sender.join().expect("publisher");
    let got: Vec<u32> = sub
        .got
        .iter()
        .map(|(_, p)| u32::from_be_bytes(p[..4].try_into().expect("4-byte payload")))
        .collect();
    let missing = N as usize - got.len();
    assert_eq!(missing, 0, "{missing} of {N} copies lost");
    assert!(got.iter().copied().eq(0..N), "copies out of order");
}

#[test]
fn fan_out_reaches_subscribers_on_every_node() {
    let nodes = cluster::start(3, "");
    let mut subs: Vec<Receiver> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| subscriber(n, &format!("fan-{i}"), "f/+", QoS::AtLeastOnce))
        .collect();
    let mut p = publisher(&nodes[1], "fan-pub");
    for i in 0..50u16 {
        assert_eq!(
            p.publish_qos1("f/x", format!("m{i}").as_bytes(), false, i + 1),
            0
        );
    }
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    for s in &mut subs {
        s.pump(Duration::from_secs(5), 50);
        assert_eq!(s.payloads(), want, "in order, once each, on every node");
    }
}

#[test]
fn a_session_follows_its_client_to_another_node() {
    let nodes = cluster::start(3, "");
    // Subscribe on node 1, go offline; the session stays owned by node 1.
    let (mut c, ack) = RawClient::open(nodes[0].tcp_addr(), persistent("roamer", true));
    assert!(!ack.session_present);
    assert_eq!(c.subscribe(1, "roam/#", QoS::AtLeastOnce), vec![1]);
    c.disconnect();
    settle();
    // Published on node 3 while the client is offline: queued through Raft.
    let mut p = publisher(&nodes[2], "roam-pub");
    for i in 0..5u16 {
        assert_eq!(
            p.publish_qos1("roam/a", format!("q{i}").as_bytes(), false, i + 1),
            0
        );
    }
    // The client comes back on node 2: its session and queue are there.
    let (c2, ack) = RawClient::open(nodes[1].tcp_addr(), persistent("roamer", false));
    assert!(ack.session_present, "the session moved to node 2");
    let mut r = Receiver::new(c2);
    r.pump(Duration::from_secs(5), 5);
    assert_eq!(r.payloads(), vec!["q0", "q1", "q2", "q3", "q4"]);
    // New publishes anywhere now reach it on node 2.
    assert_eq!(p.publish_qos1("roam/b", b"live", false, 9), 0);
    r.pump(Duration::from_secs(5), 6);
    assert_eq!(r.payloads().last().map(String::as_str), Some("live"));

    // The same id on node 3 takes over: node 2's connection gets 0x8E.
    let (c3, ack) = RawClient::open(nodes[2].tcp_addr(), persistent("roamer", false));
    assert!(ack.session_present);
    r.pump(Duration::from_secs(5), usize::MAX);
    assert_eq!(r.closed, Some(0x8E), "session taken over");
    let mut r3 = Receiver::new(c3);
    assert_eq!(p.publish_qos1("roam/c", b"on three", false, 10), 0);
    r3.pump(Duration::from_secs(3), usize::MAX);
    // QoS 1 may come again after a takeover (an ack still on its way from
    // node 2), flagged DUP; nothing else may.
    let fresh: Vec<String> = r3
        .payloads()
        .into_iter()
        .zip(&r3.dup)
        .filter(|(p, dup)| !(**dup && r.payloads().contains(p)))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(fresh, vec!["on three"], "all: {:?}", r3.payloads());
}

/// Reads PUBACKs and PUBRECs until `n` have come: (packet id, QoS it
/// answers, reason code), in arrival order.
/// A publish acknowledged after a persistent subscription's SUBACK reaches
/// that session, whichever nodes they are on. The publisher's node learns
/// of the subscription's commit a round trip after the subscriber's node
/// does, so the publish may be matched before it knows the session: its
/// answer must then wait until it does, and owe the session its copy. The
/// publisher connected before any subscription, so that no commit of its
/// own (its CONNECT's claim) orders it after them.
#[test]
fn a_publish_acknowledged_after_a_persistent_suback_on_another_node_reaches_it() {
    let nodes = cluster::start(3, "");
    let mut p = publisher(&nodes[1], "racer");
    let tries: u16 = 30;
    let mut missed = Vec::new();
    for i in 0..tries {
        let topic = format!("race/{i}");
        let (mut s, ack) = RawClient::open(
            nodes[2].tcp_addr(),
            persistent(&format!("durable-{i}"), true),
        );
        assert_eq!(ack.code, 0);
        assert_eq!(s.subscribe(1, &topic, QoS::AtLeastOnce), vec![1]);
        // At once, on another node.
        let code = p.publish_qos1(&topic, &i.to_be_bytes(), false, 1 + i);
        // Success: 0x10 ("no matching subscribers") would be false, the
        // subscriber is there and gets it.
        assert_eq!(code, 0, "try {i}: PUBACK {code:#x}");
        match s.next_publish(Duration::from_secs(5)) {
            Some(m) => {
                assert_eq!(&m.payload[..], &i.to_be_bytes()[..]);
                s.ack(&m);
            }
            None => missed.push((i, code)),
        }
    }
    assert!(
        missed.is_empty(),
        "acknowledged after the SUBACK, never delivered ((try, PUBACK code) of {tries}): {missed:?}"
    );
}

fn read_acks(c: &mut RawClient, n: usize) -> Vec<(u16, QoS, u8)> {
    let mut acks = Vec::with_capacity(n);
    while acks.len() < n {
        match c.recv(T) {
            Read1::Packet(Packet::PubAck(a)) => acks.push((a.packet_id, QoS::AtLeastOnce, a.code)),
            Read1::Packet(Packet::PubRec(a)) => acks.push((a.packet_id, QoS::ExactlyOnce, a.code)),
            Read1::Packet(_) => {}
            other => panic!("after {} acks: {other:?}", acks.len()),
        }
    }
    acks
}

#[test]
fn pipelined_publishes_to_a_persistent_session_are_acknowledged_in_order() {
    let nodes = cluster::start(3, "");
    // An offline persistent session on node 3: every copy it is owed is
    // committed through Raft before its publisher may be answered.
    let (mut c, _) = RawClient::open(nodes[2].tcp_addr(), persistent("keeper", true));
    assert_eq!(c.subscribe(1, "pipe/#", QoS::ExactlyOnce), vec![2]);
    c.disconnect();
    settle();

    // All publishes in one write, more than the connection's ack window
    // (256): the broker reads on while commits are in flight, then holds
    // its input until the oldest is in, and answers in publish order.
    let n = 600u16;
    let qos_of = |id: u16| {
        if id.is_multiple_of(5) {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        }
    };
    let mut p = publisher(&nodes[0], "pipe-pub");
    let mut frames = bytes::BytesMut::new();
    for id in 1..=n {
        let m = raw::publish("pipe/a", format!("m{id}").as_bytes(), qos_of(id), false, id);
        raftmq::codec::encode(&Packet::Publish(m), Protocol::V5, &mut frames).expect("encode");
    }
    p.send_bytes(&frames);
    let acks = read_acks(&mut p, usize::from(n));
    let want: Vec<(u16, QoS, u8)> = (1..=n).map(|id| (id, qos_of(id), 0)).collect();
    assert_eq!(
        acks, want,
        "every publish answered once, in order, with success"
    );
    for id in (1..=n).filter(|id| qos_of(*id) == QoS::ExactlyOnce) {
        p.send(&Packet::PubRel(PubResp::new(id, 0)));
        let comp = p.recv_until(T, |q| match q {
            Packet::PubComp(r) => Some(r.packet_id),
            _ => None,
        });
        assert_eq!(comp, Some(id));
    }

    // 3.1.1 publishers are answered the same way.
    let (mut p3, ack) = RawClient::open(
        nodes[0].tcp_addr(),
        raw::connect(Protocol::V311, "pipe-pub-3", true),
    );
    assert_eq!(ack.code, 0);
    let mut frames = bytes::BytesMut::new();
    for id in 1..=300u16 {
        let m = raw::publish(
            "pipe/b",
            format!("v{id}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            id,
        );
        raftmq::codec::encode(&Packet::Publish(m), Protocol::V311, &mut frames).expect("encode");
    }
    p3.send_bytes(&frames);
    let acks = read_acks(&mut p3, 300);
    let want: Vec<(u16, QoS, u8)> = (1..=300).map(|id| (id, QoS::AtLeastOnce, 0)).collect();
    assert_eq!(acks, want);

    // The session got every acknowledged message, once, in order.
    let (c, ack) = RawClient::open(nodes[2].tcp_addr(), persistent("keeper", false));
    assert!(ack.session_present);
    let mut r = Receiver::new(c);
    r.pump(Duration::from_secs(10), 900);
    let mut expected: Vec<String> = (1..=n).map(|id| format!("m{id}")).collect();
    expected.extend((1..=300).map(|id| format!("v{id}")));
    assert_eq!(r.payloads(), expected);
}

#[test]
fn a_shared_subscription_delivers_each_message_once_cluster_wide() {
    let nodes = cluster::start(3, "");
    let mut members = vec![
        subscriber(&nodes[1], "member-2", "$share/g/s/#", QoS::AtLeastOnce),
        subscriber(&nodes[2], "member-3", "$share/g/s/#", QoS::AtLeastOnce),
    ];
    let mut p = publisher(&nodes[0], "share-pub");
    let n = 60u16;
    for i in 0..n {
        assert_eq!(
            p.publish_qos1("s/t", format!("m{i}").as_bytes(), false, i + 1),
            0
        );
    }
    let mut all: Vec<String> = Vec::new();
    for m in &mut members {
        m.pump(Duration::from_secs(2), usize::MAX);
        assert!(!m.got.is_empty(), "every member gets a share");
        all.extend(m.payloads());
    }
    all.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(all, want, "each message exactly once across the group");
}

#[test]
fn the_will_of_a_client_whose_node_dies_is_published_once() {
    let mut nodes = cluster::start(3, "");
    let mut sub = subscriber(&nodes[0], "watcher", "w/#", QoS::AtLeastOnce);
    let mut conn = raw::connect(Protocol::V5, "doomed", true);
    let mut will = raw::will("w/doomed", b"node died", QoS::AtLeastOnce, false);
    will.properties.will_delay_interval = Some(1);
    conn.will = Some(will);
    conn.properties.session_expiry_interval = Some(60);
    let (_doomed, ack) = RawClient::open(nodes[2].tcp_addr(), conn);
    assert_eq!(ack.code, 0);
    let killed_at = Instant::now();
    nodes[2].kill9();
    sub.pump(Duration::from_secs(20), 1);
    assert_eq!(
        sub.payloads(),
        vec!["node died"],
        "after {:?}",
        killed_at.elapsed()
    );
    println!("will published {:?} after kill -9", killed_at.elapsed());
    // Once: nothing more, even when the dead node comes back.
    nodes[2].restart();
    sub.pump(Duration::from_secs(5), 2);
    assert_eq!(sub.got.len(), 1, "{:?}", sub.payloads());
}

/// A persistent subscriber that follows the cluster: reconnects (clean
/// start off) to the next node when its node goes away, acknowledges what
/// it gets, and returns the 4-byte ids it received once `stop` is set and
/// nothing more comes for a while.
fn consume(
    addrs: Vec<SocketAddr>,
    client_id: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reconnects: Arc<AtomicUsize>,
) -> Vec<u32> {
    let mut got = Vec::new();
    let mut at = 0usize;
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let addr = addrs[at % addrs.len()];
        at += 1;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            continue;
        }
        let mut c = RawClient::connect_tcp(addr, Protocol::V5);
        c.send(&Packet::Connect(Box::new(persistent(&client_id, false))));
        match c.recv(Duration::from_secs(8)) {
            Read1::Packet(Packet::ConnAck(a)) if a.code == 0 => {}
            _ => continue,
        }
        loop {
            match c.recv(Duration::from_millis(500)) {
                Read1::Packet(Packet::Publish(p)) => {
                    got.push(u32::from_be_bytes(
                        p.payload[..4].try_into().expect("4 bytes"),
                    ));
                    c.send(&Packet::PubAck(PubResp::new(p.packet_id, 0)));
                    quiet_since = Instant::now();
                }
                Read1::Packet(Packet::Disconnect(_)) | Read1::Closed => {
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Read1::Packet(_) => {}
                Read1::Timeout => {
                    if stop.load(Ordering::Relaxed)
                        && quiet_since.elapsed() > Duration::from_secs(4)
                    {
                        return got;
                    }
                }
            }
        }
    }
    got
}

/// Ids acknowledged but never received, and how many came twice.
fn lost_and_duplicated(acked: &BTreeSet<u32>, got: &[u32]) -> (Vec<u32>, usize) {
    let mut seen = BTreeSet::new();
    let duplicates = got.iter().filter(|id| !seen.insert(**id)).count();
    (acked.difference(&seen).copied().collect(), duplicates)
}

#[test]
fn no_acknowledged_message_is_lost_when_the_leader_is_killed() {
    // The offline queue must hold all of it: drops by policy are not
    // what this test is about.
    let mut nodes = cluster::start(3, "\n[mqtt]\nmax_queued_messages = 20000\n");
    let leader = wait_leader(&grpc_addr(&nodes[0], 1), None, T).expect("a leader");
    assert_eq!(leader, 1);
    // The persistent subscriber lives on node 2 and is offline.
    let (mut s, _) = RawClient::open(nodes[1].tcp_addr(), persistent("durable", true));
    assert_eq!(s.subscribe(1, "d/#", QoS::AtLeastOnce), vec![1]);
    s.disconnect();
    settle();

    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.tcp_addr()).collect();
    let count = Arc::new(AtomicUsize::new(0));
    let total = 10_000u32;
    let publishers: Vec<_> = (0..3u32)
        .map(|i| {
            // Each publisher starts on a different node.
            let mut order = addrs.clone();
            order.rotate_left(i as usize);
            let count = count.clone();
            let share = total / 3 + u32::from(i == 2) * (total % 3);
            let start = i * (total / 3);
            std::thread::spawn(move || {
                let mut ids = start..start + share;
                let reconnects = AtomicUsize::new(0);
                publish_acked(
                    &order,
                    &format!("pub-{i}"),
                    || ids.next(),
                    32,
                    &count,
                    &reconnects,
                )
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(120), || count.load(Ordering::Relaxed)
            >= 3_000),
        "publishing stalled at {}",
        count.load(Ordering::Relaxed)
    );
    let killed_at = Instant::now();
    nodes[0].kill9();
    let new_leader = wait_leader(&grpc_addr(&nodes[1], 2), Some(1), T).expect("a new leader");
    println!("new leader {new_leader} after {:?}", killed_at.elapsed());
    let mut acked = BTreeSet::new();
    for p in publishers {
        acked.extend(p.join().expect("publisher thread"));
    }
    assert_eq!(
        acked.len(),
        total as usize,
        "every publish acknowledged in the end"
    );

    // The subscriber comes back on node 3 and drains its queue.
    let (c, ack) = RawClient::open(nodes[2].tcp_addr(), persistent("durable", false));
    assert!(ack.session_present);
    let mut r = Receiver::new(c);
    r.pump(Duration::from_secs(5), usize::MAX);
    let got: Vec<u32> = r
        .got
        .iter()
        .map(|(_, p)| u32::from_be_bytes(p[..4].try_into().expect("4-byte payload")))
        .collect();
    let (lost, duplicates) = lost_and_duplicated(&acked, &got);
    println!(
        "acknowledged {}, received {}, {duplicates} duplicates, {} lost",
        acked.len(),
        got.len(),
        lost.len()
    );
    let lost: Vec<u32> = lost.into_iter().take(10).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost (first 10): {lost:?}"
    );
}

#[test]
fn qos2_is_exactly_once_across_a_takeover_and_a_leader_kill() {
    let mut nodes = cluster::start(3, "");
    let (mut s, _) = RawClient::open(nodes[1].tcp_addr(), persistent("exact", true));
    assert_eq!(s.subscribe(1, "e/#", QoS::ExactlyOnce), vec![2]);
    settle();
    let mut r = Receiver::new(s);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let addr = nodes[2].tcp_addr();
        let sent = sent.clone();
        std::thread::spawn(move || {
            let (mut p, _) = RawClient::open(addr, raw::connect(Protocol::V5, "exact-pub", true));
            for i in 0..300u16 {
                let payload = format!("e{i}");
                if publish_qos2(&mut p, "e/x", payload.as_bytes(), i + 1) < 0x80 {
                    sent.lock().expect("lock").push(payload);
                }
            }
        })
    };
    // Receive a part on node 2, then move to node 3 (node 2's connection
    // is taken over mid-stream), and kill the leader while it goes on.
    r.pump(Duration::from_secs(5), 100);
    let (c3, ack) = RawClient::open(nodes[2].tcp_addr(), persistent("exact", false));
    assert!(ack.session_present);
    let mut before = r.got.clone();
    r.pump(Duration::from_millis(500), usize::MAX);
    before.extend(r.got[before.len()..].iter().cloned());
    let mut r3 = Receiver::resume(c3, &r);
    r3.pump(Duration::from_secs(2), 50);
    nodes[0].kill9();
    producer.join().expect("producer");
    r3.pump(Duration::from_secs(6), usize::MAX);
    let mut all: Vec<String> = before
        .iter()
        .chain(r3.got.iter())
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    let delivered = all.len();
    all.sort();
    all.dedup();
    assert_eq!(delivered, all.len(), "a QoS 2 message was delivered twice");
    let sent = sent.lock().expect("lock").clone();
    let missing: Vec<&String> = sent.iter().filter(|p| !all.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
    println!("{} QoS 2 messages, none twice, none lost", sent.len());
    let _ = status;
    let _ = Properties::default();
}

#[test]
fn a_rolling_restart_under_load_loses_no_acknowledged_message() {
    let mut nodes = cluster::start(3, "\n[mqtt]\nmax_queued_messages = 100000\n");
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.tcp_addr()).collect();
    let (mut s, _) = RawClient::open(addrs[0], persistent("steady", true));
    assert_eq!(s.subscribe(1, "d/#", QoS::AtLeastOnce), vec![1]);
    s.disconnect();
    settle();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reconnects = Arc::new(AtomicUsize::new(0));
    let sub_reconnects = Arc::new(AtomicUsize::new(0));
    let count = Arc::new(AtomicUsize::new(0));
    let subscriber = {
        let (addrs, stop, r) = (addrs.clone(), stop.clone(), sub_reconnects.clone());
        std::thread::spawn(move || consume(addrs, "steady".into(), stop, r))
    };
    let publishers: Vec<_> = (0..3u32)
        .map(|i| {
            let mut order = addrs.clone();
            order.rotate_left(i as usize);
            let (stop, count, reconnects) = (stop.clone(), count.clone(), reconnects.clone());
            std::thread::spawn(move || {
                let mut n = i * 10_000_000;
                let next = || {
                    // A steady load, not a flood: about 200 messages/s each.
                    std::thread::sleep(Duration::from_millis(5));
                    n += 1;
                    (!stop.load(Ordering::Relaxed)).then_some(n)
                };
                publish_acked(
                    &order,
                    &format!("steady-pub-{i}"),
                    next,
                    8,
                    &count,
                    &reconnects,
                )
            })
        })
        .collect();
    assert!(eventually(T, || count.load(Ordering::Relaxed) > 200));
    // Highest ordinal first, as the operator rolls a StatefulSet; each node
    // back and caught up before the next one goes.
    let started = Instant::now();
    for i in (0..3).rev() {
        let before = count.load(Ordering::Relaxed);
        assert_eq!(
            nodes[i].terminate(),
            Some(0),
            "node {} stops cleanly",
            i + 1
        );
        nodes[i].restart();
        let addr = grpc_addr(&nodes[i], i as u64 + 1);
        assert!(
            wait_leader(&addr, None, T).is_some(),
            "node {} rejoins",
            i + 1
        );
        assert!(
            eventually(T, || count.load(Ordering::Relaxed) > before + 200),
            "the load goes on after node {} restarts",
            i + 1
        );
    }
    let rolled = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    for p in publishers {
        acked.extend(p.join().expect("publisher"));
    }
    let got = subscriber.join().expect("subscriber");
    let (lost, duplicates) = lost_and_duplicated(&acked, &got);
    println!(
        "rolling restart of 3 nodes in {rolled:?}: {} acknowledged, {} received, {duplicates} duplicates, \
         {} lost; publisher reconnects {}, subscriber reconnects {}",
        acked.len(),
        got.len(),
        lost.len(),
        reconnects.load(Ordering::Relaxed),
        sub_reconnects.load(Ordering::Relaxed)
    );
    let lost: Vec<u32> = lost.into_iter().take(10).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost (first 10): {lost:?}"
    );
}
