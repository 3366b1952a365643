//! Memory bounded by design: a stored message costs about its size on the
//! wire whatever its shape, a restart rebuilds no more than that, and one
//! budget (`[mqtt] max_memory`) bounds the bytes held across all sessions
//! and retained messages. Past it, QoS 1/2 publishes are refused (5.0
//! PUBACK 0x97, 3.1.1 connection closed without PUBACK) and QoS 0 copies
//! dropped, every refusal counted, and nothing acknowledged is lost.
//!
//! Memory is read as the kernel counts it (VmRSS of the broker process):
//! these are bounds on behaviour, not timings.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq::codec::{reason, Packet, Protocol, Publish, QoS, UserProperties};
use raftmq_e2e::probe::{metric, rss_bytes, try_rss_bytes};
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{eventually, Broker, BrokerConfig};

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

/// A v5 CONNECT whose session outlives the connection.
fn persistent(id: &str) -> raftmq::codec::Connect {
    let mut c = raw::connect(Protocol::V5, id, false);
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// A PUBLISH of ~1 MB made only of empty user properties (5 bytes each on
/// the wire): the shape that cost 14x its size before. A retained one has
/// a payload of one byte (an empty one would clear the topic's).
fn empty_properties(topic: &str, retain: bool, packet_id: u16) -> (Publish, u64) {
    let payload: &[u8] = if retain { b"r" } else { b"" };
    let mut p = raw::publish(topic, payload, QoS::AtLeastOnce, retain, packet_id);
    let pairs = std::iter::repeat_n(("", ""), 200_000);
    p.properties.user_properties = UserProperties::from_pairs(pairs).expect("empty strings");
    let wire = raftmq::codec::encoded_len(&Packet::Publish(p.clone()), Protocol::V5) as u64;
    (p, wire)
}

fn puback(c: &mut RawClient, packet_id: u16) -> u8 {
    c.recv_until(T, |p| match p {
        Packet::PubAck(a) if a.packet_id == packet_id => Some(a.code),
        _ => None,
    })
    .expect("PUBACK")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// 20 copies queued for an offline persistent session and 20 retained
/// messages, each 1 MB of empty user properties: the broker grows by at
/// most 3x what it holds, and again after a restart rebuilds them from the
/// log; every property arrives intact.
#[test]
fn a_megabyte_of_empty_user_properties_costs_about_a_megabyte() {
    // A snapshot every 16 entries: the restart loads one, then the log.
    let mut b = Broker::start(
        BrokerConfig::new()
            .raw("[mqtt]\nmax_packet_size = 2097152\n")
            .env("RAFTMQ_CLUSTER__SNAPSHOT_LOGS", "16"),
    );
    let started = Instant::now();
    let (mut sub, _) = RawClient::open(b.tcp_addr(), persistent("keeper"));
    assert_eq!(sub.subscribe(1, "mem/q", QoS::AtLeastOnce), vec![1]);
    sub.disconnect();
    let (mut publisher, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "p", true));
    // One small message first, so that what starts on first use (the
    // Raft log's first segment, the publish path) is in the base.
    assert_eq!(publisher.publish_qos1("warm/up", b"x", true, 1), 0x10);
    std::thread::sleep(Duration::from_millis(500));
    let base = rss_bytes(b.pid());

    let mut held = 0u64;
    for i in 0..40u16 {
        let (topic, retain) = if i.is_multiple_of(2) {
            ("mem/q".to_string(), false)
        } else {
            (format!("mem/r/{i}"), true)
        };
        let (p, wire) = empty_properties(&topic, retain, 10 + i);
        publisher.send(&Packet::Publish(p));
        let code = puback(&mut publisher, 10 + i);
        assert!(code < 0x80, "publish {i}: {code:#x}");
        held += wire;
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_bytes(b.pid()).saturating_sub(base);
    eprintln!(
        "held {:.1} MiB, RSS grew {:.1} MiB ({:.2}x), base {:.1} MiB",
        mib(held),
        mib(grown),
        grown as f64 / held as f64,
        mib(base)
    );
    assert!(
        grown <= 3 * held,
        "RSS grew {:.1} MiB for {:.1} MiB held",
        mib(grown),
        mib(held)
    );

    eprintln!("published in {:?}", started.elapsed());
    // kill -9 and start again: the state comes back from the snapshot
    // and the log.
    drop(publisher);
    b.restart();
    assert!(
        eventually(T, || metric(&b, "raftmq_retained_messages") == 21.0),
        "retained messages restored"
    );
    std::thread::sleep(Duration::from_millis(500));
    let restored = rss_bytes(b.pid()).saturating_sub(base);
    eprintln!(
        "after restart: RSS {:.1} MiB above the first base ({:.2}x held)",
        mib(restored),
        restored as f64 / held as f64
    );
    assert!(
        restored <= 3 * held,
        "restart: RSS {:.1} MiB above base for {:.1} MiB held",
        mib(restored),
        mib(held)
    );

    eprintln!("restarted at {:?}", started.elapsed());
    assert!(
        b.path("data/raft/snapshot/snapshot.bin").exists(),
        "a snapshot was taken"
    );
    // Nothing was lost or cut short.
    let (mut sub, ack) = RawClient::open(b.tcp_addr(), persistent("keeper"));
    assert!(ack.session_present);
    for n in 0..20 {
        let p = sub.next_publish(T).unwrap_or_else(|| panic!("queued {n}"));
        sub.ack(&p);
        assert_eq!(p.properties.user_properties.len(), 200_000, "queued {n}");
    }
    // The retained ones are all there (counted above); two are read back.
    let (mut late, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "late", true));
    for (n, topic) in ["mem/r/1", "mem/r/39"].iter().enumerate() {
        late.subscribe(1 + n as u16, topic, QoS::AtLeastOnce);
        let p = late
            .next_publish(T)
            .unwrap_or_else(|| panic!("retained {topic}"));
        late.ack(&p);
        assert!(p.retain);
        assert_eq!(&p.payload[..], b"r");
        assert_eq!(p.properties.user_properties.len(), 200_000, "{topic}");
    }
}

/// What one flooding publisher saw.
#[derive(Default, Clone, Copy)]
struct Tally {
    queued_acked: u64,
    retained_acked: u64,
    refused: u64,
}

const BUDGET: u64 = 256 * MIB;
const PAYLOAD: usize = 256 * 1024;

/// Publishes QoS 1 messages of 256 KiB, alternately queued for the offline
/// session and retained under a topic of its own, until the broker has
/// refused `stop_after` of them.
fn flood(addr: std::net::SocketAddr, n: usize, protocol: Protocol, stop_after: u64) -> Tally {
    let mut t = Tally::default();
    let payload = vec![n as u8; PAYLOAD];
    let id = format!("flood-{n}");
    let mut c = RawClient::open(addr, raw::connect(protocol, &id, true)).0;
    let mut i = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.refused < stop_after && Instant::now() < deadline {
        i += 1;
        let retained = i.is_multiple_of(2);
        let topic = if retained {
            format!("flood/r/{n}/{i}")
        } else {
            format!("flood/q/{n}")
        };
        let packet_id = (i % 60_000) as u16 + 1;
        c.publish(&topic, &payload, QoS::AtLeastOnce, retained, packet_id);
        let answer = c.recv_until(T, |p| match p {
            Packet::PubAck(a) if a.packet_id == packet_id => Some(a.code),
            _ => None,
        });
        match answer {
            Some(code) if code < 0x80 => {
                if retained {
                    t.retained_acked += 1;
                } else {
                    t.queued_acked += 1;
                }
            }
            Some(code) => {
                assert_eq!(code, reason::QUOTA_EXCEEDED, "{id}");
                t.refused += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            // 3.1.1: closed without a PUBACK; back on a new connection.
            None => {
                assert!(!protocol.is_v5(), "{id}: no PUBACK");
                assert!(matches!(c.recv(Duration::from_millis(100)), Read1::Closed));
                t.refused += 1;
                std::thread::sleep(Duration::from_millis(50));
                c = RawClient::open(addr, raw::connect(protocol, &id, true)).0;
            }
        }
    }
    t
}

/// 20 clients (15 speaking 5.0, 5 speaking 3.1.1) flood retained and
/// queued messages against a 256 MiB budget.
#[test]
fn twenty_clients_flooding_a_256_mib_budget() {
    let b = Broker::start(BrokerConfig::new().raw(&format!(
        "[mqtt]\nmax_memory = {BUDGET}\nmax_queued_messages = 100000\n"
    )));
    let a = b.tcp_addr();
    let (mut sub, _) = RawClient::open(a, persistent("drain"));
    assert_eq!(sub.subscribe(1, "flood/q/+", QoS::AtLeastOnce), vec![1]);
    sub.disconnect();
    let (mut live, _) = RawClient::open(a, raw::connect(Protocol::V5, "live", true));
    assert_eq!(live.subscribe(1, "flood/live", QoS::AtMostOnce), vec![0]);
    std::thread::sleep(Duration::from_millis(300));
    let base = rss_bytes(b.pid());

    // Sample RSS while the flood runs.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), b.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // The broker may be gone when a failed test unwinds.
                peak.fetch_max(try_rss_bytes(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    let floods: Vec<_> = (0..20)
        .map(|n| {
            let protocol = if n < 15 { Protocol::V5 } else { Protocol::V311 };
            std::thread::spawn(move || flood(a, n, protocol, 3))
        })
        .collect();
    let tallies: Vec<Tally> = floods
        .into_iter()
        .map(|h| h.join().expect("publisher thread"))
        .collect();
    let flood_time = started.elapsed();
    for (n, t) in tallies.iter().enumerate() {
        eprintln!(
            "publisher {n}: {} queued, {} retained acked, {} refused",
            t.queued_acked, t.retained_acked, t.refused
        );
    }
    eprintln!(
        "after the flood: held {:.1} MiB",
        mib(metric(&b, "raftmq_memory_held_bytes") as u64)
    );

    // Still past the budget: QoS 0 copies are dropped, and counted.
    let dropped_before = metric(&b, "raftmq_memory_dropped_total");
    let (mut p0, _) = RawClient::open(a, raw::connect(Protocol::V5, "qos0", true));
    // A flood stops once a 256 KiB message did not fit twice over: one of
    // 1000 KiB surely does not fit once.
    let big = vec![7u8; 1000 * 1024];
    for _ in 0..10 {
        p0.publish("flood/live", &big, QoS::AtMostOnce, false, 0);
    }
    assert_eq!(
        p0.publish_qos1("flood/live", &big, false, 1),
        reason::QUOTA_EXCEEDED
    );
    live.expect_no_publish(Duration::from_millis(500));
    let dropped = metric(&b, "raftmq_memory_dropped_total") - dropped_before;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let peak = peak.load(Ordering::Relaxed);

    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let (queued, retained, refused) = (
        sum(|t| t.queued_acked),
        sum(|t| t.retained_acked),
        sum(|t| t.refused) + 1,
    );
    let held = metric(&b, "raftmq_memory_held_bytes") as u64;
    eprintln!(
        "flood {flood_time:?}: acked {queued} queued + {retained} retained, {refused} refused; \
         held {:.1} MiB of {:.0} MiB; RSS base {:.1} MiB, peak {:.1} MiB; {dropped} QoS 0 copies dropped",
        mib(held),
        mib(BUDGET),
        mib(base),
        mib(peak)
    );
    assert!(queued > 0 && retained > 0, "the flood stored something");
    assert!(
        peak <= base + BUDGET,
        "RSS peaked at {:.1} MiB: over base {:.1} + budget {:.0} MiB",
        mib(peak),
        mib(base),
        mib(BUDGET)
    );
    assert_eq!(
        metric(&b, "raftmq_publish_quota_refused_total"),
        refused as f64,
        "every refusal counted"
    );
    assert_eq!(metric(&b, "raftmq_memory_budget_bytes"), BUDGET as f64);
    assert!(dropped >= 10.0, "QoS 0 copies dropped: {dropped}");

    // Nothing acknowledged was lost: every queued copy and every retained
    // message is there.
    let (mut sub, ack) = RawClient::open(a, persistent("drain"));
    assert!(ack.session_present);
    let mut got = 0u64;
    while let Some(p) = sub.next_publish(Duration::from_secs(2)) {
        sub.ack(&p);
        assert_eq!(p.payload.len(), PAYLOAD);
        got += 1;
    }
    assert_eq!(got, queued, "queued copies received vs acknowledged");
    let (mut late, _) = RawClient::open(a, raw::connect(Protocol::V5, "late", true));
    late.subscribe(1, "flood/r/#", QoS::AtLeastOnce);
    let mut got = 0u64;
    while let Some(p) = late.next_publish(Duration::from_secs(2)) {
        late.ack(&p);
        assert!(p.retain);
        got += 1;
    }
    assert_eq!(got, retained, "retained messages vs acknowledged");
}
