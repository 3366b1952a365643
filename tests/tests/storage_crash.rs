//! A node killed (kill -9) at random moments under a QoS 1 load, 30 times,
//! with small log segments and frequent snapshots so that kills land in
//! segment rolls, snapshot writes and purges too. Every start must succeed
//! (a kill never tears an acknowledged write, so nothing may be refused)
//! and every acknowledged publish must reach the persistent subscriber.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raftmq_e2e::load::publish_acked;
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
