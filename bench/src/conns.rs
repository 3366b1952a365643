//! Connection scenarios: N idle connections (the broker's RSS per
//! connection, read from /proc/PID/status) and a connect storm
//! (CONNECT/CONNACK per second). Both spread their sockets over several
//! 127.0.0.x source addresses so that ephemeral ports do not run out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::wire;

/// The i-th source address: 127.0.0.10, 127.0.0.11, ... (idle).
fn source(i: usize, sources: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + (i % sources) as u8))
}

/// The storm's own source addresses, 127.0.0.100, ...: the idle scenario's
/// closed sockets wait in TIME_WAIT on theirs for a minute.
pub(crate) fn storm_source(i: usize, sources: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 100 + (i % sources.min(100)) as u8))
}

/// After DISCONNECT, waits (1 s at most) for the broker to close first, as
/// the protocol has it: the closing side keeps the connection in
/// TIME_WAIT for a minute, and that must not be us. Closing first left
/// every handshake's source port in TIME_WAIT here, tens of thousands per
/// source address across scenarios, and the kernel's search for a free
/// port to bind then cost more than the brokers' handshakes (a few
/// hundred per second for every broker).
pub(crate) async fn broker_closes(stream: &mut TcpStream) {
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Opens a TCP connection from `from`, sends CONNECT, waits for a
/// successful CONNACK (3.1.1: exactly 4 bytes).
async fn mqtt_connect(
    addr: SocketAddr,
    from: IpAddr,
    client_id: &str,
    keep_alive: u16,
    clean: bool,
) -> anyhow::Result<TcpStream> {
    Ok(
        mqtt_connect_present(addr, from, client_id, keep_alive, clean)
            .await?
            .0,
    )
}

/// [`mqtt_connect`], and whether the CONNACK said "session present".
pub(crate) async fn mqtt_connect_present(
    addr: SocketAddr,
    from: IpAddr,
    client_id: &str,
    keep_alive: u16,
    clean: bool,
) -> anyhow::Result<(TcpStream, bool)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(&wire::connect_frame_with(client_id, keep_alive, clean)?)
        .await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    anyhow::ensure!(
        connack[0] == 0x20 && connack[3] == 0,
        "CONNECT refused: {connack:?}"
    );
    Ok((stream, connack[2] & 1 == 1))
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

pub struct IdleSettings {
    pub connections: usize,
    pub sources: usize,
    pub broker_pid: u32,
    /// Connections being set up at once.
    pub concurrency: usize,
    /// Seconds to wait after the last CONNACK before reading RSS.
    pub settle: u64,
}

pub async fn idle(addr: SocketAddr, s: IdleSettings) -> anyhow::Result<()> {
    let before = rss_kib(s.broker_pid)?;
    let run_id = std::process::id();
    let gate = Arc::new(Semaphore::new(s.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(s.connections);
    for i in 0..s.connections {
        let gate = gate.clone();
        let from = source(i, s.sources);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            mqtt_connect(addr, from, &format!("idle-{run_id}-{i}"), 600, true).await
        }));
    }
    let mut held = Vec::with_capacity(s.connections);
    let mut failed = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(stream) => held.push(stream),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(s.settle)).await;
    let after = rss_kib(s.broker_pid)?;
    let n = held.len().max(1) as f64;
    let per_conn = (after.saturating_sub(before)) as f64 / n;
    println!(
        "{{\"scenario\":\"idle connections={}\",\"connected\":{},\"failed\":{failed},\"connect_seconds\":{connect_secs:.2},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"kib_per_connection\":{per_conn:.2},\"mib_per_100k\":{:.0}}}",
        s.connections,
        held.len(),
        per_conn * 100_000.0 / 1024.0
    );
    if let Some(e) = first_error {
        eprintln!("first connect failure: {e:#}");
    }
    // Reset, not closed: a close would leave every one of these ports in
    // TIME_WAIT for a minute, on the next scenario's way.
    for stream in &held {
        let _ = stream.set_zero_linger();
    }
    drop(held);
    Ok(())
}

/// SUBSCRIBE to one filter at QoS 1; waits for a SUBACK that grants it.
pub async fn subscribe_qos1(stream: &mut TcpStream, filter: &str) -> anyhow::Result<()> {
    let sub = wire::subscribe_frame(1, filter, raftmq::codec::QoS::AtLeastOnce)?;
    stream.write_all(&sub).await?;
    // 3.1.1 SUBACK for one filter: 0x90, 3, packet id, granted QoS.
    let mut suback = [0u8; 5];
    stream.read_exact(&mut suback).await?;
    anyhow::ensure!(
        suback[0] == 0x90 && suback[4] <= 2,
        "SUBSCRIBE refused: {suback:?}"
    );
    Ok(())
}

/// N persistent sessions (clean session off), each with one QoS 1
/// subscription of its own, then disconnected: the broker's RSS per idle
/// persistent session.
pub async fn idle_persistent(addr: SocketAddr, s: IdleSettings) -> anyhow::Result<()> {
    let before = rss_kib(s.broker_pid)?;
    let run_id = std::process::id();
    let gate = Arc::new(Semaphore::new(s.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(s.connections);
    for i in 0..s.connections {
        let gate = gate.clone();
        let from = source(i, s.sources);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let id = format!("persist-{run_id}-{i}");
            let mut stream = mqtt_connect(addr, from, &id, 600, false).await?;
            let filter = format!("idle/{run_id}/{i}");
            subscribe_qos1(&mut stream, &filter).await?;
            stream.write_all(&wire::DISCONNECT).await?;
            broker_closes(&mut stream).await;
            anyhow::Ok(())
        }));
    }
    let (mut done, mut failed, mut first_error) = (0usize, 0usize, None);
    for t in tasks {
        match t.await? {
            Ok(()) => done += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let setup_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(s.settle)).await;
    let after = rss_kib(s.broker_pid)?;
    let per_session = (after.saturating_sub(before)) as f64 / done.max(1) as f64;
    println!(
        "{{\"scenario\":\"idle persistent sessions={}\",\"sessions\":{done},\"failed\":{failed},\"setup_seconds\":{setup_secs:.2},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"kib_per_session\":{per_session:.2}}}",
        s.connections,
    );
    if let Some(e) = first_error {
        eprintln!("first session failure: {e:#}");
    }
    Ok(())
}

pub struct StormSettings {
    pub workers: usize,
    pub seconds: u64,
    pub sources: usize,
    pub persistent: bool,
}

/// `workers` loops of connect, CONNECT, CONNACK, DISCONNECT, close for
/// `seconds`: completed handshakes per second.
pub async fn storm(addr: SocketAddr, s: StormSettings) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(s.seconds);
    let run_id = std::process::id();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..s.workers {
        let (done, errors) = (done.clone(), errors.clone());
        let (sources, persistent) = (s.sources, s.persistent);
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while Instant::now() < deadline {
                let from = storm_source(w + i * 7, sources);
                // Persistent: the same id each time, so that every connect
                // resumes (and, in raftmq, commits) that session.
                let id = if persistent {
                    format!("storm-{run_id}-{w}")
                } else {
                    format!("storm-{run_id}-{w}-{i}")
                };
                i += 1;
                match mqtt_connect(addr, from, &id, 60, !persistent).await {
                    Ok(mut stream) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.write_all(&wire::DISCONNECT).await;
                        broker_closes(&mut stream).await;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        // A refused or reset connect: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"scenario\":\"connect-storm workers={} persistent={}\",\"connacks\":{n},\"errors\":{},\"seconds\":{secs:.2},\"connects_per_sec\":{:.0}}}",
        s.workers,
        s.persistent,
        errors.load(Ordering::Relaxed),
        n as f64 / secs
    );
    Ok(())
}
