//! Latency at a fixed rate: one publisher paced by its own thread (a
//! blocking socket and `thread::sleep`, so pacing needs no busy loop), one
//! subscriber; each payload carries its send time, the subscriber takes the
//! difference. Two pacings: one message per write, spread evenly
//! (`--burst 1`), or a tick's worth of messages in one write (`--burst 20`
//! at 20k/s: 20 messages every millisecond, as a client with a 1 ms timer
//! sends them), which finds what a broker does with a batch in one read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use raftmq::codec::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use crate::throughput::prefix;
use crate::wire::{self, Frame, Template};

pub struct Settings {
    pub rate: u64,
    pub seconds: u64,
    pub payload: usize,
    pub qos: QoS,
    pub idle_timeout: Duration,
    /// Messages per write; the writes come every `burst / rate` seconds.
    pub burst: u64,
}

pub async fn run(addr: SocketAddr, s: Settings) -> anyhow::Result<()> {
    anyhow::ensure!(s.payload >= 8, "--payload must hold the 8-byte send time");
    anyhow::ensure!(s.rate > 0, "--rate must be positive");
    let topic = format!("{}/lat", prefix());
    let mut sub = Client::connect(addr, &format!("lat-{}-sub", std::process::id()), true).await?;
    sub.subscribe(&topic, s.qos).await?;
    let base = Instant::now();
    let total = s.rate * s.seconds;
    let template = Template::new(&topic, &vec![b'l'; s.payload], s.qos)?;
    let (rate, qos) = (s.rate, s.qos);
    let pacing = Pacing {
        rate,
        burst: s.burst.max(1),
        total,
    };
    let publisher = std::thread::spawn(move || paced_publisher(addr, template, base, pacing, qos));

    let (mut r, mut buf, mut w) = sub.into_parts();
    let mut latencies: Vec<u32> = Vec::with_capacity(total as usize);
    let mut acks = BytesMut::new();
    while (latencies.len() as u64) < total {
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(64 * 1024);
        }
        match tokio::time::timeout(s.idle_timeout, r.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
        let now = base.elapsed().as_nanos() as u64;
        wire::scan(&mut buf, |f| {
            if let Frame::Publish {
                stamp, packet_id, ..
            } = f
            {
                latencies.push(now.saturating_sub(stamp).min(u64::from(u32::MAX)) as u32);
                if packet_id != 0 {
                    wire::puback(&mut acks, packet_id);
                }
            }
        })?;
        if !acks.is_empty() {
            w.write_all(&acks).await?;
            acks.clear();
        }
    }
    let sent = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    let received = latencies.len() as u64;
    // The first second warms up connections and caches: not counted.
    let skip = (rate as usize).min(latencies.len() / 2);
    let mut sample = latencies[skip..].to_vec();
    sample.sort_unstable();
    let pct = |p: f64| -> f64 {
        if sample.is_empty() {
            return 0.0;
        }
        let i = ((sample.len() as f64 * p) as usize).min(sample.len() - 1);
        f64::from(sample[i]) / 1000.0
    };
    println!(
        "{{\"scenario\":\"latency rate={rate} burst={} qos={} payload={}\",\"sent\":{sent},\"expected\":{total},\"received\":{received},\"lost\":{},\"p50_us\":{:.0},\"p99_us\":{:.0},\"p999_us\":{:.0},\"max_us\":{:.0}}}",
        s.burst.max(1),
        qos as u8,
        s.payload,
        total.saturating_sub(received),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        pct(1.0),
    );
    Ok(())
}

/// `total` messages at `rate` per second, `burst` to a write.
#[derive(Clone, Copy)]
struct Pacing {
    rate: u64,
    burst: u64,
    total: u64,
}

/// Sends `total` messages at `rate` per second, each stamped with its send
/// time in nanoseconds since `base`.
fn paced_publisher(
    addr: SocketAddr,
    template: Template,
    base: Instant,
    pacing: Pacing,
    qos: QoS,
) -> anyhow::Result<u64> {
    let Pacing { rate, burst, total } = pacing;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.write_all(&wire::connect_frame(
        &format!("lat-{}-pub", std::process::id()),
        60,
    )?)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    anyhow::ensure!(connack[0] == 0x20 && connack[3] == 0, "CONNECT refused");
    // Acks (QoS 1) are read by a second thread so they never hold us up.
    if qos != QoS::AtMostOnce {
        let mut reader = stream.try_clone()?;
        std::thread::spawn(move || {
            let mut sink = [0u8; 16 * 1024];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        });
    }
    let start = Instant::now();
    // One tick per write: `burst` messages are due at each.
    let tick_ns = (burst * 1_000_000_000 / rate).max(1);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut sent = 0u64;
    let mut id = 0u16;
    while sent < total {
        let due = start + Duration::from_nanos(sent / burst * tick_ns);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // Everything that is due by now goes in one write.
        let elapsed = start.elapsed();
        let due_count = ((elapsed.as_nanos() as u64 / tick_ns + 1) * burst).min(total);
        let stamp = base.elapsed().as_nanos() as u64;
        while sent < due_count {
            id = id.checked_add(1).unwrap_or(1);
            template.push_stamped(&mut out, id, stamp);
            sent += 1;
        }
        stream.write_all(&out)?;
        out.clear();
    }
    Ok(sent)
}
