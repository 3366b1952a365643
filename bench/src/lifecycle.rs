//! Persistent sessions made and resumed: the lifecycle of a gateway's
//! session (CONNECT with clean session off, SUBSCRIBE to its own command
//! topic, DISCONNECT), one client after another or many at once; and a
//! reconnect storm, N sessions that all come back at once after a network
//! blip. In raftmq every one of these is state the Raft log must keep.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::conns::{broker_closes, mqtt_connect_present, storm_source, subscribe_qos1};
use crate::wire;

pub struct LifecycleSettings {
    pub workers: usize,
    pub seconds: u64,
    pub sources: usize,
}

/// `workers` loops (1: one client after another) of connect, CONNECT with
/// clean session off under a new client id, SUBSCRIBE to `life/<id>/cmd`,
/// DISCONNECT, and the broker's close. The sessions stay behind, as a
/// gateway's would.
pub async fn lifecycle(addr: SocketAddr, s: LifecycleSettings) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(s.seconds);
    let run_id = std::process::id();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..s.workers {
        let (done, errors, sources) = (done.clone(), errors.clone(), s.sources);
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while Instant::now() < deadline {
                let from = storm_source(w + i * 7, sources);
                let id = format!("life-{run_id}-{w}-{i}");
                i += 1;
                let once = async {
                    let (mut stream, _) = mqtt_connect_present(addr, from, &id, 60, false).await?;
                    subscribe_qos1(&mut stream, &format!("life/{id}/cmd")).await?;
                    stream.write_all(&wire::DISCONNECT).await?;
                    broker_closes(&mut stream).await;
                    anyhow::Ok(())
                };
                match once.await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        // Do not spin on a refusing broker.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"scenario\":\"lifecycle workers={}\",\"lifecycles\":{n},\"errors\":{},\"seconds\":{secs:.2},\"lifecycles_per_sec\":{:.0}}}",
        s.workers,
        errors.load(Ordering::Relaxed),
        n as f64 / secs
    );
    Ok(())
}

pub struct ReconnectSettings {
    pub sessions: usize,
    pub workers: usize,
    pub sources: usize,
}

/// Makes `sessions` persistent sessions (clean session off, one QoS 1
/// subscription each), drops every connection with a reset (the blip: the
/// broker sees each connection fail, the sessions stay), then reconnects
/// them all, `workers` handshakes in flight, and holds them: CONNACKs per
/// second of the reconnect, and how many found their session.
pub async fn reconnect(addr: SocketAddr, s: ReconnectSettings) -> anyhow::Result<()> {
    let run_id = std::process::id();
    let ids: Arc<Vec<String>> = Arc::new(
        (0..s.sessions)
            .map(|i| format!("recon-{run_id}-{i}"))
            .collect(),
    );
    let made = connect_all(addr, &s, &ids, true).await;
    let made_ok = made.iter().filter(|r| r.is_ok()).count();
    for stream in made.iter().flatten() {
        let _ = stream.0.set_zero_linger();
    }
    drop(made);
    // Let the broker see the resets before the clients come back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let back = connect_all(addr, &s, &ids, false).await;
    let secs = start.elapsed().as_secs_f64();
    let ok = back.iter().filter(|r| r.is_ok()).count();
    let present = back.iter().flatten().filter(|(_, p)| *p).count();
    let first_error = back
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| format!("{e:#}")));
    println!(
        "{{\"scenario\":\"reconnect sessions={} workers={}\",\"made\":{made_ok},\"reconnected\":{ok},\"session_present\":{present},\"errors\":{},\"seconds\":{secs:.2},\"sessions_per_sec\":{:.0}}}",
        s.sessions,
        s.workers,
        s.sessions - ok,
        ok as f64 / secs
    );
    if let Some(e) = first_error {
        eprintln!("first reconnect failure: {e}");
    }
    // Reset, not closed: no TIME_WAIT left on the next scenario's ports.
    for stream in back.iter().flatten() {
        let _ = stream.0.set_zero_linger();
    }
    Ok(())
}

/// Connects every id (clean session off), `s.workers` at a time;
/// `subscribe`: the first time, with its subscription.
async fn connect_all(
    addr: SocketAddr,
    s: &ReconnectSettings,
    ids: &Arc<Vec<String>>,
    subscribe_too: bool,
) -> Vec<anyhow::Result<(TcpStream, bool)>> {
    let gate = Arc::new(Semaphore::new(s.workers.max(1)));
    let mut tasks = Vec::with_capacity(ids.len());
    for i in 0..ids.len() {
        let (gate, ids) = (gate.clone(), ids.clone());
        let from = storm_source(i, s.sources);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let id = &ids[i];
            let (mut stream, present) = mqtt_connect_present(addr, from, id, 600, false).await?;
            if subscribe_too {
                subscribe_qos1(&mut stream, &format!("recon/{id}/cmd")).await?;
            }
            anyhow::Ok((stream, present))
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.into())));
    }
    out
}
