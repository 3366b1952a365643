//! A node killed (kill -9) at random moments under a QoS 1 load, 30 times,
//! with small log segments and frequent snapshots so that kills land in
//! segment rolls, snapshot writes and purges too. Every start must succeed
//! (a kill never tears an acknowledged write, so nothing may be refused)
//! and every acknowledged publish must reach the persistent subscriber.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::load::publish_acked;
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::storage::{drain_subscriber, park_subscriber};
use raftmq_e2e::{Broker, BrokerConfig};

const ROUNDS: u32 = 30;
const PER_ROUND: u32 = 150;

/// xorshift64: random enough for kill moments, and repeatable from the
/// seed printed at the start.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn thirty_kills_under_a_qos1_load_lose_nothing_acknowledged_and_every_start_succeeds() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut b = Broker::start(
        BrokerConfig::new()
            .env("RAFTMQ_MQTT__MAX_QUEUED_MESSAGES", "100000")
            .env("RAFTMQ_CLUSTER__SNAPSHOT_LOGS", "300")
            .env("RAFTMQ_CLUSTER__KEEP_LOGS", "50")
            .env("RAFTMQ_CLUSTER__LOG_SEGMENT_BYTES", "32768"),
    );
    park_subscriber(b.tcp_addr(), "keeper", "d/load");
    let started = Instant::now();
    let mut acked = BTreeSet::new();
    for round in 0..ROUNDS {
        let addr = b.tcp_addr();
        let ids = round * PER_ROUND..(round + 1) * PER_ROUND;
        let load = std::thread::spawn(move || {
            let mut ids = ids;
            publish_acked(
                &[addr],
                &format!("load-{round}"),
                move || ids.next(),
                10,
                &AtomicUsize::new(0),
                &AtomicUsize::new(0),
            )
        });
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 400));
        b.kill9();
        if let Err(e) = b.try_restart_with(&[]) {
            panic!("round {round}: the start after kill -9 was refused (0 allowed): {e}");
        }
        acked.extend(load.join().expect("load thread"));
    }
    let got = drain_subscriber(b.tcp_addr(), "keeper", Duration::from_secs(3));
    let lost: Vec<&u32> = acked.difference(&got).collect();
    println!(
        "{ROUNDS} kill -9 rounds in {:.0?}: {} acknowledged, {} delivered, {} lost, 0 starts \
         refused",
        started.elapsed(),
        acked.len(),
        got.len(),
        lost.len(),
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(
        acked.len(),
        (ROUNDS * PER_ROUND) as usize,
        "every id acknowledged in the end"
    );
}

/// On a node without peers a persistent session goes on before its claim
/// commits, and a reconnect that would change nothing in the replicated
/// state makes no claim at all: what was acknowledged (each SUBACK) must
/// still be there after kill -9, and a will that a later reconnect brings
/// must be registered all the same (it fires when the node restarts).
#[test]
fn persistent_sessions_made_and_resumed_keep_what_was_acknowledged_across_kill_9() {
    const GATEWAYS: usize = 20;
    let t = Duration::from_secs(5);
    let mut b = Broker::start(BrokerConfig::new());
    let open = |b: &Broker, id: &str, clean: bool| {
        RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, id, clean))
    };
    let (mut watcher, _) = open(&b, "gw-watcher", false);
    watcher.subscribe(1, "gone/#", QoS::AtLeastOnce);
    watcher.disconnect();
    for i in 0..GATEWAYS {
        let id = format!("gw-{i}");
        let (mut c, ack) = open(&b, &id, false);
        assert!(!ack.session_present, "{id} is new");
        c.subscribe(1, &format!("gw/{i}/cmd"), QoS::AtLeastOnce);
        c.disconnect();
        // Back at once, as after a network blip: nothing to claim again.
        let (c, ack) = open(&b, &id, false);
        assert!(ack.session_present, "{id} resumed");
        c.disconnect();
    }
    // This reconnect brings a will: it is claimed, though the one before
    // it was not.
    let mut c = raw::connect(Protocol::V311, "gw-0", false);
    c.will = Some(raw::will("gone/gw-0", b"lost", QoS::AtLeastOnce, false));
    let (held, ack) = RawClient::open(b.tcp_addr(), c);
    assert!(ack.session_present);
    b.restart();
    drop(held);

    let (mut watcher, ack) = open(&b, "gw-watcher", false);
    assert!(ack.session_present, "the watcher's session survived");
    let m = watcher
        .next_publish(t)
        .expect("gw-0's will fired at restart");
    assert_eq!((&*m.topic, &m.payload[..]), ("gone/gw-0", &b"lost"[..]));
    watcher.ack(&m);
    let (mut p, _) = open(&b, "gw-publisher", true);
    for i in 0..GATEWAYS {
        let id = format!("gw-{i}");
        let (mut c, ack) = open(&b, &id, false);
        assert!(ack.session_present, "{id}'s session survived the kill");
        assert!(p.publish_qos1(&format!("gw/{i}/cmd"), b"cmd", false, 1) < 0x80);
        let m = c
            .next_publish(t)
            .expect("the subscription survived the kill");
        assert_eq!(&m.payload[..], b"cmd");
        c.ack(&m);
        c.disconnect();
    }
}

/// Many new persistent sessions at once, each claimed lazily and then
/// subscribed, the claim and the SUBSCRIBE often in different group
/// commits: a session's SUBSCRIBE must reach the log after its claim
/// (applied before it, the subscription would be refused for a session the
/// state does not know, and lost at the restart), however many batches the
/// node's writer keeps in flight. Every SUBACK'd subscription must be there
/// after kill -9.
#[test]
fn sessions_made_at_once_keep_each_subscription_after_kill_9() {
    const CLIENTS: usize = 40;
    const ROUNDS: usize = 8;
    let t = Duration::from_secs(5);
    let mut b = Broker::start(BrokerConfig::new());
    let addr = b.tcp_addr();
    let makers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    let id = format!("pipe-{c}-{r}");
                    let (mut s, ack) =
                        RawClient::open(addr, raw::connect(Protocol::V311, &id, false));
                    assert!(!ack.session_present, "{id} is new");
                    // Half of them pause past the claim's lazy window (5
                    // ms), so that claim and SUBSCRIBE go in different
                    // batches, often in flight together.
                    if (c + r) % 2 == 1 {
                        std::thread::sleep(Duration::from_millis(8));
                    }
                    let codes = s.subscribe(1, &format!("pipe/{id}"), QoS::AtLeastOnce);
                    assert_eq!(codes, vec![1], "{id} subscribed");
                    s.disconnect();
                }
            })
        })
        .collect();
    for m in makers {
        m.join().expect("session maker");
    }
    b.restart();

    let (mut p, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "pipe-pub", true));
    for c in 0..CLIENTS {
        for r in 0..ROUNDS {
            let id = format!("pipe-{c}-{r}");
            let (mut s, ack) =
                RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, &id, false));
            assert!(ack.session_present, "{id}'s session survived the kill");
            assert!(p.publish_qos1(&format!("pipe/{id}"), b"x", false, 1) < 0x80);
            let m = s
                .next_publish(t)
                .unwrap_or_else(|| panic!("{id}'s subscription survived the kill"));
            assert_eq!(&*m.topic, format!("pipe/{id}"));
            s.ack(&m);
            s.disconnect();
        }
    }
}
