//! raftmq-bench: a load generator for MQTT brokers (raftmq, mosquitto,
//! rumqttd alike). Every scenario counts what it sent and what arrived, so a
//! throughput figure always comes with its loss.

mod client;
mod commit;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use client::Client;
use raftmq::codec::{ByteStr, Packet, QoS};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The broker to measure.
    #[arg(long, default_value = "127.0.0.1:1883", global = true)]
    addr: SocketAddr,
    /// Give up waiting for messages after this many seconds of silence.
    #[arg(long, default_value_t = 5, global = true)]
    idle_timeout: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// P publishers -> one subscriber on a wildcard filter.
    FanIn {
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// Messages per publisher.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// QoS 1: unacknowledged publishes a publisher keeps in flight.
        #[arg(long, default_value_t = 100)]
        window: u16,
    },
    /// W writers, each publishing QoS 1 retained messages one at a time:
    /// replicated commits per second and their latency.
    Commit {
        #[arg(long, default_value_t = 16)]
        writers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// One publisher -> S subscribers on the same topic.
    FanOut {
        #[arg(long, default_value_t = 10)]
        subscribers: usize,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 100)]
        window: u16,
    },
}

/// What a run measured; printed as one JSON line for scripts.
#[derive(Debug)]
struct Outcome {
    scenario: String,
    sent: u64,
    received: u64,
    expected: u64,
    seconds: f64,
}

impl Outcome {
    fn print(&self) {
        let rate = self.received as f64 / self.seconds;
        println!(
            "{{\"scenario\":\"{}\",\"sent\":{},\"expected\":{},\"received\":{},\"lost\":{},\"seconds\":{:.3},\"msgs_per_sec\":{:.0}}}",
            self.scenario,
            self.sent,
            self.expected,
            self.received,
            self.expected.saturating_sub(self.received),
            self.seconds,
            rate
        );
    }
}

fn qos(q: u8) -> anyhow::Result<QoS> {
    QoS::from_u8(q)
        .filter(|q| *q != QoS::ExactlyOnce)
        .context("--qos must be 0 or 1")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        match cli.scenario {
            Scenario::Commit {
                writers,
                seconds,
                payload,
            } => commit::run(cli.addr, writers, seconds, payload)
                .await
                .map(|()| None),
            Scenario::FanIn {
                publishers,
                messages,
                qos: q,
                payload,
                window,
            } => run(
                cli.addr,
                "fan-in",
                publishers,
                1,
                messages,
                qos(q)?,
                payload,
                window,
                cli.idle_timeout,
            )
            .await
            .map(Some),
            Scenario::FanOut {
                subscribers,
                messages,
                qos: q,
                payload,
                window,
            } => run(
                cli.addr,
                "fan-out",
                1,
                subscribers,
                messages,
                qos(q)?,
                payload,
                window,
                cli.idle_timeout,
            )
            .await
            .map(Some),
        }
    })?;
    if let Some(o) = outcome {
        o.print();
    }
    Ok(())
}

/// `publishers` each send `messages` to `bench/<i>`; `subscribers` each
/// subscribe to `bench/#` and count. Time runs from the first publish to the
/// last message received.
#[allow(clippy::too_many_arguments)]
async fn run(
    addr: SocketAddr,
    name: &str,
    publishers: usize,
    subscribers: usize,
    messages: u64,
    qos: QoS,
    payload: usize,
    window: u16,
    idle_timeout: u64,
) -> anyhow::Result<Outcome> {
    let expected = publishers as u64 * messages * subscribers as u64;
    let received = Arc::new(AtomicU64::new(0));
    let run_id: u32 = std::process::id();
    let mut subs = Vec::new();
    for s in 0..subscribers {
        let mut c = Client::connect(addr, &format!("bench-{run_id}-sub-{s}"), true).await?;
        c.subscribe("bench/#", qos).await?;
        let received = received.clone();
        subs.push(tokio::spawn(async move {
            let Client {
                mut reader,
                mut writer,
            } = c;
            let mut mine = 0u64;
            loop {
                let p = match tokio::time::timeout(Duration::from_secs(idle_timeout), reader.next())
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => break,
                };
                if let Packet::Publish(p) = p {
                    mine += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                    if p.qos == QoS::AtLeastOnce {
                        writer.puback(p.packet_id)?;
                    }
                    if mine == expected / subscribers as u64 {
                        break;
                    }
                }
                // Acks go out in one write per batch of reads: before the
                // reader would block, or when they pile up.
                if reader.buffered() == 0 || writer.buf.len() > 16 * 1024 {
                    writer.flush().await?;
                }
            }
            writer.flush().await?;
            anyhow::Ok(mine)
        }));
    }
    let start = Instant::now();
    let payload = Bytes::from(vec![b'x'; payload]);
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let c = Client::connect(addr, &format!("bench-{run_id}-pub-{p}"), true).await?;
        let payload = payload.clone();
        pubs.push(tokio::spawn(publish(c, p, messages, qos, payload, window)));
    }
    let mut sent = 0;
    for p in pubs {
        sent += p.await??;
    }
    for s in subs {
        s.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Outcome {
        scenario: format!(
            "{name} pubs={publishers} subs={subscribers} qos={} payload={}",
            qos as u8,
            payload.len()
        ),
        sent,
        received: received.load(Ordering::Relaxed),
        expected,
        seconds,
    })
}

/// Sends `messages` as fast as the broker takes them: QoS 0 in write
/// batches, QoS 1 with at most `window` unacknowledged.
async fn publish(
    mut c: Client,
    index: usize,
    messages: u64,
    qos: QoS,
    payload: Bytes,
    window: u16,
) -> anyhow::Result<u64> {
    let topic = ByteStr::from(format!("bench/{index}"));
    let mut sent = 0u64;
    let mut inflight = 0u16;
    let mut next_id = 0u16;
    while sent < messages {
        if qos == QoS::AtLeastOnce {
            while inflight >= window {
                c.writer.flush().await?;
                if let Packet::PubAck(_) = c.reader.next().await? {
                    inflight -= 1;
                }
            }
            next_id = next_id.checked_add(1).unwrap_or(1);
            inflight += 1;
        }
        c.writer.publish(
            &topic,
            &payload,
            qos,
            if qos == QoS::AtMostOnce { 0 } else { next_id },
        )?;
        sent += 1;
        if c.writer.buf.len() >= 32 * 1024 {
            c.writer.flush().await?;
        }
    }
    c.writer.flush().await?;
    while inflight > 0 {
        if let Packet::PubAck(_) = c.reader.next().await? {
            inflight -= 1;
        }
    }
    Ok(sent)
}
