//! Throughput scenarios: fan-in (P publishers -> 1 wildcard subscriber),
//! fan-out (1 publisher -> S subscribers) and pairs (N publishers, each
//! with its own subscriber). Every one counts what was sent and what
//! arrived; the rate is messages received over the time from the first
//! publish to the last message received.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use raftmq::codec::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use crate::tls::{ReadHalf, WriteHalf};
use crate::wire::{self, Frame, Template};
use crate::Outcome;

/// Who publishes where and who subscribes to what.
pub struct Plan {
    pub name: String,
    /// One topic per publisher.
    pub topics: Vec<String>,
    /// One filter per subscriber, with the number of messages it should get.
    pub filters: Vec<(String, u64)>,
    /// Messages each publisher sends.
    pub messages: u64,
    pub qos: QoS,
    pub payload: usize,
    /// QoS 1: unacknowledged publishes a publisher keeps in flight.
    pub window: u16,
    pub persistent: bool,
    pub idle_timeout: Duration,
}

/// Where publishers and subscribers connect (the same broker, or two
/// nodes of one cluster).
#[derive(Clone, Copy)]
pub struct Addrs {
    pub publishers: SocketAddr,
    pub subscribers: SocketAddr,
}

/// A prefix no earlier run's subscriptions can match.
pub fn prefix() -> String {
    format!("b{}", std::process::id())
}

impl Plan {
    fn new(
        name: String,
        topics: Vec<String>,
        filters: Vec<(String, u64)>,
        messages: u64,
        c: Common,
    ) -> Plan {
        Plan {
            name,
            topics,
            filters,
            messages,
            qos: c.qos,
            payload: c.payload,
            window: c.window,
            persistent: c.persistent,
            idle_timeout: c.idle_timeout,
        }
    }
}

pub fn fan_in(publishers: usize, messages: u64, common: Common) -> Plan {
    let p = prefix();
    Plan::new(
        format!("fan-in pubs={publishers} subs=1"),
        (0..publishers).map(|i| format!("{p}/in/{i}")).collect(),
        vec![(format!("{p}/in/#"), messages * publishers as u64)],
        messages,
        common,
    )
}

pub fn fan_out(subscribers: usize, messages: u64, common: Common) -> Plan {
    let p = prefix();
    Plan::new(
        format!("fan-out pubs=1 subs={subscribers}"),
        vec![format!("{p}/out/0")],
        (0..subscribers)
            .map(|_| (format!("{p}/out/#"), messages))
            .collect(),
        messages,
        common,
    )
}

pub fn pairs(n: usize, messages: u64, common: Common) -> Plan {
    let p = prefix();
    Plan::new(
        format!("pairs n={n}"),
        (0..n).map(|i| format!("{p}/pair/{i}")).collect(),
        (0..n)
            .map(|i| (format!("{p}/pair/{i}"), messages))
            .collect(),
        messages,
        common,
    )
}

/// The settings every throughput scenario shares.
#[derive(Clone, Copy)]
pub struct Common {
    pub qos: QoS,
    pub payload: usize,
    pub window: u16,
    pub persistent: bool,
    pub idle_timeout: Duration,
}

pub async fn run(addrs: Addrs, plan: Plan) -> anyhow::Result<Outcome> {
    let run_id = std::process::id();
    let expected: u64 = plan.filters.iter().map(|(_, n)| n).sum();
    let mut sub_clients = Vec::with_capacity(plan.filters.len());
    for (i, (filter, n)) in plan.filters.iter().enumerate() {
        let id = format!("bench-{run_id}-sub-{i}");
        let mut c = Client::connect(addrs.subscribers, &id, !plan.persistent).await?;
        c.subscribe(filter, plan.qos).await?;
        sub_clients.push((c, *n));
    }
    let mut pub_clients = Vec::with_capacity(plan.topics.len());
    for i in 0..plan.topics.len() {
        let id = format!("bench-{run_id}-pub-{i}");
        pub_clients.push(Client::connect(addrs.publishers, &id, true).await?);
    }
    let payload = vec![b'x'; plan.payload];
    let start = Instant::now();
    let subs: Vec<_> = sub_clients
        .into_iter()
        .map(|(c, n)| {
            let (r, buf, w) = c.into_parts();
            tokio::spawn(subscriber(r, buf, w, n, plan.idle_timeout))
        })
        .collect();
    let mut pubs = Vec::with_capacity(pub_clients.len());
    for (c, topic) in pub_clients.into_iter().zip(&plan.topics) {
        let template = Arc::new(Template::new(topic, &payload, plan.qos)?);
        let (r, buf, w) = c.into_parts();
        pubs.push(tokio::spawn(publisher(
            r,
            buf,
            w,
            template,
            plan.messages,
            plan.qos,
            plan.window,
        )));
    }
    let mut sent = 0;
    for p in pubs {
        sent += p.await??;
    }
    let mut received = 0;
    let mut last = start;
    for s in subs {
        let (n, at) = s.await??;
        received += n;
        last = last.max(at);
    }
    if plan.persistent {
        // A clean reconnect ends each persistent session, so that runs do
        // not leave sessions behind in the broker (or the cluster's log).
        for i in 0..plan.filters.len() {
            let id = format!("bench-{run_id}-sub-{i}");
            Client::connect(addrs.subscribers, &id, true)
                .await?
                .disconnect()
                .await?;
        }
    }
    Ok(Outcome {
        scenario: format!(
            "{} qos={} payload={}{}{}",
            plan.name,
            plan.qos as u8,
            plan.payload,
            if plan.persistent { " persistent" } else { "" },
            if addrs.subscribers != addrs.publishers {
                format!(" pub={} sub={}", addrs.publishers, addrs.subscribers)
            } else {
                String::new()
            }
        ),
        sent,
        received,
        expected,
        seconds: (last - start).as_secs_f64(),
    })
}

/// Counts PUBLISH frames until `expected` arrived or the broker has been
/// silent for `idle`; acknowledges QoS 1 in one write per read. Returns the
/// count and when the last one arrived.
async fn subscriber(
    mut r: ReadHalf,
    mut buf: BytesMut,
    mut w: WriteHalf,
    expected: u64,
    idle: Duration,
) -> anyhow::Result<(u64, Instant)> {
    let mut got = 0u64;
    let mut last = Instant::now();
    let mut acks = BytesMut::with_capacity(16 * 1024);
    loop {
        wire::scan(&mut buf, |f| {
            if let Frame::Publish { qos, packet_id, .. } = f {
                got += 1;
                if qos > 0 {
                    wire::puback(&mut acks, packet_id);
                }
            }
        })?;
        if !acks.is_empty() {
            w.write_all(&acks).await?;
            acks.clear();
        }
        if got >= expected {
            return Ok((got, Instant::now()));
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(256 * 1024);
        }
        match tokio::time::timeout(idle, r.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok((got, last)),
            Ok(Ok(_)) => last = Instant::now(),
        }
    }
}

/// Sends `messages` copies of `template` as fast as the broker takes them:
/// QoS 0 in 64 KiB writes, QoS 1 with at most `window` unacknowledged.
async fn publisher(
    mut r: ReadHalf,
    mut buf: BytesMut,
    mut w: WriteHalf,
    template: Arc<Template>,
    messages: u64,
    qos: QoS,
    window: u16,
) -> anyhow::Result<u64> {
    let per_write = (64 * 1024 / template.len()).max(1) as u64;
    let mut out = BytesMut::with_capacity(per_write as usize * template.len());
    let mut sent = 0u64;
    if qos == QoS::AtMostOnce {
        for _ in 0..per_write.min(messages) {
            template.push(&mut out, 0);
        }
        while sent < messages {
            let n = per_write.min(messages - sent);
            let bytes = n as usize * template.len();
            w.write_all(&out[..bytes]).await?;
            sent += n;
        }
        return Ok(sent);
    }
    let mut inflight = 0u32;
    let mut next_id = 0u16;
    loop {
        while inflight < u32::from(window) && sent < messages {
            next_id = next_id.checked_add(1).unwrap_or(1);
            template.push(&mut out, next_id);
            inflight += 1;
            sent += 1;
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
        if inflight == 0 {
            return Ok(sent);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        if r.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("broker closed a publisher's connection");
        }
        wire::scan(&mut buf, |f| {
            if let Frame::PubAck { .. } = f {
                inflight = inflight.saturating_sub(1);
            }
        })?;
    }
}
