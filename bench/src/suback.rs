//! SUBACK latency: one clean-session client subscribes to new filters one
//! after another (a filter nobody else has, so each is a new route), and
//! times each SUBSCRIBE to its SUBACK.

use std::net::SocketAddr;
use std::time::Instant;

use raftmq::codec::QoS;

use crate::client::Client;
use crate::throughput::prefix;

pub async fn run(addr: SocketAddr, count: usize, qos: QoS) -> anyhow::Result<()> {
    anyhow::ensure!(count > 0, "--count must be positive");
    let mut client = Client::connect(addr, &format!("suback-{}", std::process::id()), true).await?;
    let base = format!("{}/suback", prefix());
    // A few first ones warm up the connection and the broker's caches.
    let warm = (count / 10).min(100);
    let mut took_us = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..warm + count {
        let t = Instant::now();
        client.subscribe(&format!("{base}/{i}"), qos).await?;
        if i >= warm {
            took_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    client.disconnect().await?;
    took_us.sort_by(f64::total_cmp);
    let pct = |p: f64| took_us[((took_us.len() as f64 * p) as usize).min(took_us.len() - 1)];
    println!(
        "{{\"scenario\":\"suback count={count} qos={}\",\"subscribed\":{},\"seconds\":{secs:.2},\"p50_us\":{:.0},\"p90_us\":{:.0},\"p99_us\":{:.0},\"max_us\":{:.0}}}",
        qos as u8,
        took_us.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
    );
    Ok(())
}
