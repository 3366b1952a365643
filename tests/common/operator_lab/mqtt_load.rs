//! QoS 1 load through the client Service while the operator works: rumqttc
//! publishers into persistent sessions, one subscriber, every PUBACKed
//! message accounted for per step.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::kubelet::service_proxy;
use super::{lock, Lab};

#[derive(Default)]
pub struct Load {
    /// (publisher, seq) PUBACKed, with the step it was acknowledged in.
    pub acked: Mutex<Vec<(usize, u64, String)>>,
    pub received: Mutex<HashSet<(usize, u64)>>,
    /// Connections made (CONNACKs) per client, all clients.
    pub connacks: AtomicU64,
    pub step: Mutex<String>,
    pub stop: AtomicBool,
    /// Longest gap between two PUBACKs of one publisher.
    pub max_gap_ms: AtomicU64,
}

fn options(id: &str, proxy: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, proxy.ip().to_string(), proxy.port());
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_inflight(1);
    o
}

pub async fn subscriber(
    load: Arc<Load>,
    proxy: SocketAddr,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let (client, mut ev) = AsyncClient::new(options("sub-0", proxy), 100);
    let mut ready = Some(ready);
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(c))) => {
                load.connacks.fetch_add(1, Ordering::Relaxed);
                if !c.session_present {
                    let _ = client.subscribe("load/#", QoS::AtLeastOnce).await;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let publisher: usize = p
                    .topic
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX);
                let seq: u64 = std::str::from_utf8(&p.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                lock(&load.received).insert((publisher, seq));
            }
            Ok(_) => {}
            Err(_) => {
                if load.stop.load(Ordering::Relaxed) && ready.is_none() {
                    // Keep going: the test stops it by dropping the task.
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub async fn publisher(load: Arc<Load>, proxy: SocketAddr, i: usize) {
    let (client, mut ev) = AsyncClient::new(options(&format!("pub-{i}"), proxy), 100);
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
    let l = load.clone();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    l.connacks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if ack_tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    let mut last = Instant::now();
    for seq in 0u64.. {
        if load.stop.load(Ordering::Relaxed) {
            return;
        }
        if client
            .publish(
                format!("load/{i}"),
                QoS::AtLeastOnce,
                false,
                seq.to_string(),
            )
            .await
            .is_err()
        {
            return;
        }
        // One in flight: the next PUBACK is this message's (rumqttc
        // re-sends it after a reconnect until it is acknowledged).
        if ack_rx.recv().await.is_none() {
            return;
        }
        let step = lock(&load.step).clone();
        lock(&load.acked).push((i, seq, step));
        let gap = last.elapsed().as_millis() as u64;
        load.max_gap_ms.fetch_max(gap, Ordering::Relaxed);
        last = Instant::now();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

pub struct Run {
    pub load: Arc<Load>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub proxy: SocketAddr,
}

pub async fn start_load(lab: &Lab, publishers: usize) -> Run {
    let proxy = service_proxy(lab.cluster.endpoints.clone()).await;
    let load = Arc::new(Load::default());
    *lock(&load.step) = "steady".into();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tasks = vec![tokio::spawn(subscriber(load.clone(), proxy, tx))];
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("the subscriber subscribes")
        .expect("subscribed");
    for i in 0..publishers {
        tasks.push(tokio::spawn(publisher(load.clone(), proxy, i)));
    }
    Run { load, tasks, proxy }
}

/// Stops publishing, waits for every acknowledged message to arrive, and
/// returns the ones that did not, per step.
pub async fn finish_load(run: Run) -> (usize, BTreeMap<String, (usize, usize)>) {
    run.load.stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = lock(&run.load.acked).clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = lock(&run.load.received).clone();
        let missing = acked
            .iter()
            .filter(|(p, s, _)| !got.contains(&(*p, *s)))
            .count();
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in &run.tasks {
        t.abort();
    }
    let got = lock(&run.load.received).clone();
    let mut per_step: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut lost = 0;
    for (p, s, step) in &acked {
        let e = per_step.entry(step.clone()).or_default();
        e.0 += 1;
        if !got.contains(&(*p, *s)) {
            e.1 += 1;
            lost += 1;
        }
    }
    (lost, per_step)
}

pub fn set_step(run: &Run, step: &str) -> u64 {
    *lock(&run.load.step) = step.to_string();
    run.load.connacks.load(Ordering::Relaxed)
}
