//! Retained messages at the edges: a retained publish racing a new
//! subscription (exactly once, live or from the store), and a retained set
//! far larger than a session's queue streamed to a subscriber under flow
//! control, with the broker's memory watched while it streams.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use raftmq::codec::{self, Packet, Properties, Protocol, PubResp, QoS, SubOptions, Subscribe};
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{http_get, Broker, BrokerConfig};

const T: Duration = Duration::from_secs(10);

fn open(b: &Broker, id: &str, protocol: Protocol, clean: bool) -> RawClient {
    let (c, ack) = RawClient::open(b.tcp_addr(), raw::connect(protocol, id, clean));
    assert_eq!(ack.code, 0, "{id}");
    c
}

/// A Prometheus counter or gauge of `b`.
fn metric(b: &Broker, name: &str) -> f64 {
    let (status, text) = b.http_get("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn subscribe_packet(packet_id: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        filters: vec![(
            filter.into(),
            SubOptions {
                qos,
                ..SubOptions::default()
            },
        )],
        properties: Properties::default(),
    })
}

/// What a round of the race gave the subscriber.
#[derive(Default)]
struct Round {
    copies: usize,
    from_store: usize,
}

/// Reads until SUBACK (`until_suback`) or until the QoS 0 marker `end` on
/// `topic`, completing every QoS 2 exchange and counting the copies of
/// `want` in `r`.
fn read_round(s: &mut RawClient, topic: &str, want: &[u8], until_suback: bool, r: &mut Round) {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.recv(left) {
            Read1::Packet(Packet::Publish(p)) if &*p.topic == topic => {
                if &p.payload[..] == b"end" {
                    assert!(!until_suback, "{topic}: marker before SUBACK");
                    return;
                }
                assert_eq!(&p.payload[..], want, "{topic}");
                r.copies += 1;
                // Live copies keep RETAIN only with retain-as-published.
                r.from_store += usize::from(p.retain);
                if p.qos == QoS::ExactlyOnce {
                    s.send(&Packet::PubRec(PubResp::new(p.packet_id, 0)));
                }
            }
            Read1::Packet(Packet::PubRel(rel)) => {
                s.send(&Packet::PubComp(PubResp::new(rel.packet_id, 0)));
            }
            Read1::Packet(Packet::SubAck(a)) if until_suback => {
                assert_eq!(a.codes, vec![2], "{topic}");
                return;
            }
            Read1::Packet(other) => panic!("{topic}: unexpected {other:?}"),
            other => panic!("{topic}: {other:?} after {} copies", r.copies),
        }
    }
}

#[test]
fn a_retained_publish_racing_a_new_subscription_arrives_exactly_once() {
    let b = Broker::start(BrokerConfig::new());
    let mut publisher = open(&b, "racer-pub", Protocol::V311, true);
    let mut subscriber = open(&b, "racer-sub", Protocol::V5, true);
    let (mut live, mut stored) = (0, 0);
    for round in 0..200u16 {
        let topic = format!("race/{round}");
        let payload = format!("r{round}");
        let mut publish = BytesMut::new();
        let p = raw::publish(&topic, payload.as_bytes(), QoS::ExactlyOnce, true, 1);
        codec::encode(&Packet::Publish(p), Protocol::V311, &mut publish).expect("encode");
        let mut subscribe = BytesMut::new();
        let sub = subscribe_packet(round + 1, &topic, QoS::ExactlyOnce);
        codec::encode(&sub, Protocol::V5, &mut subscribe).expect("encode");
        // Both on the wire at once, in either order: which connection the
        // broker serves first is the race.
        if round % 2 == 0 {
            subscriber.send_bytes(&subscribe);
            publisher.send_bytes(&publish);
        } else {
            publisher.send_bytes(&publish);
            subscriber.send_bytes(&subscribe);
        }
        let mut r = Round::default();
        read_round(&mut subscriber, &topic, payload.as_bytes(), true, &mut r);
        // The publisher completes its QoS 2 exchange: the message is
        // routed and stored by then.
        let rec = publisher.recv_until(T, |p| matches!(p, Packet::PubRec(_)).then_some(()));
        assert!(rec.is_some(), "round {round}: PUBREC");
        publisher.send(&Packet::PubRel(PubResp::new(1, 0)));
        let comp = publisher.recv_until(T, |p| matches!(p, Packet::PubComp(_)).then_some(()));
        assert!(comp.is_some(), "round {round}: PUBCOMP");
        // A marker behind everything: the live copy was handed over before
        // PUBREC, and SUBACK went out with the retained stream's first step.
        publisher.publish(&topic, b"end", QoS::AtMostOnce, false, 0);
        read_round(&mut subscriber, &topic, payload.as_bytes(), false, &mut r);
        assert_eq!(r.copies, 1, "round {round}: copies of the retained message");
        stored += r.from_store;
        live += r.copies - r.from_store;
    }
    println!("200 rounds: {live} delivered live, {stored} from the store, never twice");
    assert_eq!(metric(&b, "raftmq_publish_dropped_total"), 0.0);
}

/// The broker's resident memory, from /proc.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples `pid`'s RSS every 10 ms until stopped; returns the peak.
fn watch_rss(pid: i32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let peak = std::thread::spawn(move || {
        let mut peak = 0;
        while !flag.load(Ordering::Relaxed) {
            peak = peak.max(rss_bytes(pid));
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    });
    (stop, peak)
}

const TOPICS: usize = 50_000;
const PAYLOAD: usize = 100;

fn topic(i: usize) -> String {
    format!("big/{i:05}")
}

/// Publishes `n` retained messages of `PAYLOAD` bytes at QoS 1 (so that
/// a QoS 1 subscriber gets them at QoS 1, through its window) and waits
/// until the broker holds them all; returns their topic + payload bytes.
fn load_retained(b: &Broker, n: usize) -> u64 {
    let mut p = open(b, "loader", Protocol::V311, true);
    let payload = vec![b'x'; PAYLOAD];
    let mut size = 0u64;
    let mut i = 0;
    while i < n {
        // A step at a time, its PUBACKs read before the next, so that
        // neither side's socket fills while the other is not reading.
        let step = (n - i).min(200);
        let mut bytes = BytesMut::new();
        for k in 0..step {
            let t = topic(i + k);
            size += (t.len() + PAYLOAD) as u64;
            let m = raw::publish(&t, &payload, QoS::AtLeastOnce, true, k as u16 + 1);
            codec::encode(&Packet::Publish(m), Protocol::V311, &mut bytes).expect("encode");
        }
        p.send_bytes(&bytes);
        for _ in 0..step {
            let ack = p.recv_until(T, |m| match m {
                Packet::PubAck(a) => Some(a.code),
                _ => None,
            });
            assert_eq!(ack, Some(0), "retained publish {i}+ acknowledged");
        }
        i += step;
    }
    assert_eq!(metric(b, "raftmq_retained_messages"), n as f64);
    p.disconnect();
    size
}

/// Reads `#` from `c` until every one of `n` retained topics came once;
/// acknowledges QoS 1 copies. Asserts topic order (each after the last).
fn read_stream(c: &mut RawClient, n: usize) {
    let mut last: Option<String> = None;
    let mut got = 0;
    while got < n {
        match c.recv(T) {
            Read1::Packet(Packet::Publish(p)) => {
                assert!(p.retain, "from the store");
                let t = p.topic.to_string();
                if let Some(l) = &last {
                    assert!(t > *l, "{t} after {l}: out of topic order or twice");
                }
                last = Some(t);
                got += 1;
                if p.qos == QoS::AtLeastOnce {
                    c.send(&Packet::PubAck(PubResp::new(p.packet_id, 0)));
                }
            }
            Read1::Packet(Packet::SubAck(_)) => {}
            Read1::Packet(other) => panic!("unexpected {other:?}"),
            other => panic!("stream stopped after {got} of {n}: {other:?}"),
        }
    }
}

#[test]
fn a_reading_subscriber_gets_the_whole_retained_set_in_topic_order() {
    // The queue limit stays at its default of 1000: a fiftieth of the set.
    let b = Broker::start(BrokerConfig::new());
    let before = rss_bytes(b.pid());
    let size = load_retained(&b, TOPICS);
    std::thread::sleep(Duration::from_millis(500));
    let loaded = rss_bytes(b.pid());
    for (qos, id) in [
        (QoS::AtMostOnce, "all-qos0"),
        (QoS::AtLeastOnce, "all-qos1"),
    ] {
        let mut c = raw::connect(Protocol::V5, id, true);
        c.properties.receive_maximum = Some(20);
        let (mut c, _) = RawClient::open(b.tcp_addr(), c);
        let (stop, peak) = watch_rss(b.pid());
        let start = Instant::now();
        c.send(&subscribe_packet(1, "#", qos));
        read_stream(&mut c, TOPICS);
        let took = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let peak = peak.join().expect("rss watcher");
        let growth = peak.saturating_sub(loaded);
        println!(
            "{qos:?}: {TOPICS} retained ({size} bytes of topics and payloads; storing them took \
             {} KiB of RSS) streamed in {took:?}; RSS growth while streaming {} KiB",
            loaded.saturating_sub(before) / 1024,
            growth / 1024
        );
        assert!(
            growth < 2 * size,
            "{qos:?}: RSS grew {growth} bytes while streaming a {size}-byte set"
        );
        c.expect_no_publish(Duration::from_millis(300));
        c.disconnect();
    }
    assert_eq!(metric(&b, "raftmq_publish_dropped_total"), 0.0);
}

#[test]
fn an_absent_subscriber_holds_no_more_than_its_limits_and_resumes_where_it_stopped() {
    let n = 5_000;
    let b = Broker::start(
        BrokerConfig::new()
            .raw("[mqtt]\nmax_queued_messages = 100")
            .env("RAFTMQ_HTTP__ADMIN_TOKEN", "t"),
    );
    load_retained(&b, n);
    // A persistent QoS 1 subscriber to everything that reads nothing and
    // goes away right after SUBACK.
    let mut c = raw::connect(Protocol::V5, "absent", false);
    c.properties.session_expiry_interval = Some(3600);
    c.properties.receive_maximum = Some(20);
    let (mut s, _) = RawClient::open(b.tcp_addr(), c.clone());
    s.send(&subscribe_packet(1, "#", QoS::AtLeastOnce));
    s.recv_until(T, |p| matches!(p, Packet::SubAck(_)).then_some(()))
        .expect("SUBACK");
    drop(s);
    // Live traffic while it is away: queued up to max_queued_messages.
    let mut p = open(&b, "live", Protocol::V311, true);
    for i in 0..300u16 {
        p.publish_qos1(&format!("live/{i:03}"), b"l", false, i + 1);
    }
    let session = |b: &Broker| {
        let (status, body) = http_get(&b.http_url("/api/v1/sessions/absent"), Some("Bearer t"));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (
            v["inflight"].as_u64().unwrap_or(0),
            v["queued"].as_u64().unwrap_or(0),
        )
    };
    let (inflight, queued) = session(&b);
    println!("absent subscriber of {n} retained + 300 live: {inflight} in flight, {queued} queued");
    assert!(inflight <= 20, "{inflight} in flight beyond the window");
    assert!(queued <= 100, "{queued} queued beyond max_queued_messages");
    assert_eq!(
        metric(&b, "raftmq_publish_dropped_total"),
        200.0,
        "the live overflow, counted"
    );
    // Back: the copies in flight again, the queued live ones, then the rest
    // of the retained set from where the stream stopped.
    let (mut s, ack) = RawClient::open(b.tcp_addr(), c);
    assert!(ack.session_present);
    let mut retained = BTreeSet::new();
    let mut live = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while retained.len() < n || live < 100 {
        assert!(
            Instant::now() < deadline,
            "{} retained, {live} live",
            retained.len()
        );
        match s.recv(T) {
            Read1::Packet(Packet::Publish(m)) => {
                if m.topic.starts_with("live/") {
                    live += 1;
                } else {
                    assert!(
                        retained.insert(m.topic.to_string()) || m.dup,
                        "{} twice",
                        m.topic
                    );
                }
                s.send(&Packet::PubAck(PubResp::new(m.packet_id, 0)));
            }
            other => panic!("{} retained, {live} live: {other:?}", retained.len()),
        }
    }
    assert_eq!(retained.len(), n);
    assert_eq!(live, 100);
}
