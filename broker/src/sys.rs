//! `$SYS/broker/...` with mosquitto's names and meanings, published every
//! `sys_interval` seconds as retained messages (only those whose value
//! changed), so a subscriber gets the current values at once and updates
//! as they happen. `version` and `timestamp` are published once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::codec::{ByteStr, QoS};
use crate::engine::{Broker, Publisher};
use crate::message::{Message, MessageParts};

/// Exponentially weighted per-minute rates over 1, 5 and 15 minutes, as
/// mosquitto computes its `load/...` topics.
#[derive(Default)]
struct Load {
    last: Option<u64>,
    averages: [f64; 3],
}

const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

impl Load {
    fn update(&mut self, total: u64, interval: f64) -> [f64; 3] {
        let delta = self.last.map_or(0, |l| total.saturating_sub(l));
        self.last = Some(total);
        let per_minute = delta as f64 * 60.0 / interval;
        for (avg, (window, _)) in self.averages.iter_mut().zip(WINDOWS) {
            let decay = (-interval / window).exp();
            *avg = per_minute + decay * (*avg - per_minute);
        }
        self.averages
    }
}

pub fn spawn(broker: Arc<Broker>) -> Option<tokio::task::JoinHandle<()>> {
    let interval = broker.config.sys_interval;
    if interval == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        let started = Instant::now();
        let built = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        publish(
            &broker,
            "version",
            format!("raftmq version {}", env!("CARGO_PKG_VERSION")),
        );
        publish(&broker, "timestamp", built.to_string());
        let mut last: HashMap<String, String> = HashMap::new();
        let mut loads: HashMap<&'static str, Load> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(interval));
        // After a stall, one late update rather than a burst: ticks stay at
        // least `interval` apart, so `uptime` changes on every one of them.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            broker.refresh_gauges();
            for (topic, value) in values(&broker, started, interval as f64, &mut loads) {
                if last.get(&topic) != Some(&value) {
                    publish(&broker, &topic, value.clone());
                    last.insert(topic, value);
                }
            }
        }
    }))
}

/// Every periodic topic (relative to `$SYS/broker/`) and its value now.
/// `uptime` comes first and changes every tick, so a subscriber can tell
/// where one update begins.
fn values(
    broker: &Broker,
    started: Instant,
    interval: f64,
    loads: &mut HashMap<&'static str, Load>,
) -> Vec<(String, String)> {
    let s = &broker.stats;
    let connected = s.clients_connected.get();
    let sessions = s.sessions.get();
    let mut v: Vec<(String, String)> = vec![
        (
            "uptime".into(),
            format!("{} seconds", started.elapsed().as_secs()),
        ),
        ("clients/connected".into(), connected.to_string()),
        ("clients/active".into(), connected.to_string()),
        (
            "clients/disconnected".into(),
            (sessions - connected).max(0).to_string(),
        ),
        (
            "clients/inactive".into(),
            (sessions - connected).max(0).to_string(),
        ),
        ("clients/total".into(), sessions.max(connected).to_string()),
        (
            "clients/maximum".into(),
            s.clients_maximum.get().to_string(),
        ),
        (
            "clients/expired".into(),
            s.sessions_expired.get().to_string(),
        ),
        (
            "messages/received".into(),
            s.messages_received.get().to_string(),
        ),
        ("messages/sent".into(), s.messages_sent.get().to_string()),
        (
            "messages/stored".into(),
            (s.messages_queued.get() + s.messages_inflight.get() + s.retained_messages.get())
                .to_string(),
        ),
        (
            "messages/inflight".into(),
            s.messages_inflight.get().to_string(),
        ),
        (
            "store/messages/count".into(),
            (s.messages_queued.get() + s.messages_inflight.get() + s.retained_messages.get())
                .to_string(),
        ),
        (
            "publish/messages/received".into(),
            s.publish_received.get().to_string(),
        ),
        (
            "publish/messages/sent".into(),
            s.publish_sent.get().to_string(),
        ),
        (
            "publish/messages/dropped".into(),
            s.publish_dropped.get().to_string(),
        ),
        (
            "publish/bytes/received".into(),
            s.publish_bytes_received.get().to_string(),
        ),
        (
            "publish/bytes/sent".into(),
            s.publish_bytes_sent.get().to_string(),
        ),
        ("bytes/received".into(), s.bytes_received.get().to_string()),
        ("bytes/sent".into(), s.bytes_sent.get().to_string()),
        (
            "retained messages/count".into(),
            s.retained_messages.get().to_string(),
        ),
        (
            "subscriptions/count".into(),
            s.subscriptions.get().to_string(),
        ),
    ];
    if let Some((current, maximum)) = heap() {
        v.push(("heap/current".into(), current.to_string()));
        v.push(("heap/maximum".into(), maximum.to_string()));
    }
    let series: [(&'static str, u64); 9] = [
        ("messages/received", s.messages_received.get()),
        ("messages/sent", s.messages_sent.get()),
        ("bytes/received", s.bytes_received.get()),
        ("bytes/sent", s.bytes_sent.get()),
        ("publish/received", s.publish_received.get()),
        ("publish/sent", s.publish_sent.get()),
        ("publish/dropped", s.publish_dropped.get()),
        ("connections", s.connections.get()),
        ("sockets", s.sockets.get()),
    ];
    for (name, total) in series {
        let avgs = loads.entry(name).or_default().update(total, interval);
        for (avg, (_, label)) in avgs.iter().zip(WINDOWS) {
            v.push((format!("load/{name}/{label}"), format!("{avg:.2}")));
        }
    }
    v
}

/// The process's resident memory now and at its peak (VmRSS / VmHWM):
/// what an operator wants from mosquitto's heap figures, measured without
/// wrapping the allocator.
fn heap() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Publishes one `$SYS/broker/{topic}` value now, between the periodic
/// rounds (a notice: the storage failed or recovered).
pub fn notice(broker: &Broker, topic: &str, value: String) {
    publish(broker, topic, value);
}

/// Retained on this node only: `$SYS` describes one broker, so it is never
/// replicated.
fn publish(broker: &Broker, topic: &str, value: String) {
    let now = Instant::now();
    let message = Arc::new(Message::new(MessageParts {
        topic: ByteStr::from(format!("$SYS/broker/{topic}")),
        payload: Bytes::from(value),
        qos: QoS::AtMostOnce,
        retain: true,
        origin: ByteStr::default(),
        expires_at: None,
        properties: None,
        received_at: now,
    }));
    if let Ok(allowed) = broker.authorize(Publisher::System, &message.topic) {
        drop(broker.publish(message, allowed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_average_converges_to_the_rate() {
        let mut l = Load::default();
        let mut total = 0;
        let mut last = [0.0; 3];
        for _ in 0..2000 {
            total += 100; // 100 per 10 s = 600 per minute
            last = l.update(total, 10.0);
        }
        for avg in last {
            assert!((avg - 600.0).abs() < 1.0, "{avg}");
        }
    }
}
