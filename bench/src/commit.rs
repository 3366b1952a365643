//! Raft commit throughput through the broker: W writers each publish QoS 1
//! retained messages one at a time (a retained message is a replicated
//! command; PUBACK comes after its commit). With group commit, many
//! concurrent writers share Raft round trips.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq::codec::{ByteStr, Packet, Properties, Publish, QoS};

use crate::client::Client;

pub async fn run(
    addr: SocketAddr,
    writers: usize,
    seconds: u64,
    payload: usize,
) -> anyhow::Result<()> {
    let payload = Bytes::from(vec![b'r'; payload]);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let run_id = std::process::id();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let c = Client::connect(addr, &format!("commit-{run_id}-{w}"), true).await?;
        tasks.push(tokio::spawn(writer(c, w, payload.clone(), deadline)));
    }
    let start = Instant::now();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d: &Duration| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"scenario\":\"commit\",\"writers\":{writers},\"commits\":{},\"seconds\":{elapsed:.2},\"commits_per_s\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

async fn writer(
    mut c: Client,
    w: usize,
    payload: Bytes,
    deadline: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let mut id = 0u16;
    while Instant::now() < deadline {
        id = id.checked_add(1).unwrap_or(1);
        let sent = Instant::now();
        c.writer.push(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: ByteStr::from(format!("bench/commit/{w}/{}", id % 16)),
            packet_id: id,
            properties: Properties::default(),
            payload: payload.clone(),
        }))?;
        c.writer.flush().await?;
        loop {
            match c.reader.next().await? {
                Packet::PubAck(a) if a.packet_id == id => {
                    anyhow::ensure!(a.code < 0x80, "publish refused with {:#x}", a.code);
                    break;
                }
                _ => {}
            }
        }
        latencies.push(sent.elapsed());
    }
    Ok(latencies)
}
