//! What each bridge is doing, for `/metrics`, `GET /api/v1/bridges` and
//! the dashboard: its state, what crossed it each way, what waits in its
//! queue, how often it reconnected. One set of metrics, labelled by bridge.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::BridgeConfig;

/// Every configured bridge's status, by name. The set changes when
/// `bridges_file` does (`run.rs`).
pub struct Bridges {
    families: Families,
    bridges: RwLock<Vec<Arc<BridgeStatus>>>,
    /// Told when a bridge is added or removed: the leader places it at
    /// once (`claim.rs`).
    pub changed: tokio::sync::Notify,
}

/// One bridge's figures. The counters are the Prometheus ones themselves.
pub struct BridgeStatus {
    pub config: BridgeConfig,
    connected: AtomicBool,
    /// Whether this node runs the bridge (the cluster's one that does).
    running_here: AtomicBool,
    pub messages_out: prometheus::IntCounter,
    pub messages_in: prometheus::IntCounter,
    pub bytes_out: prometheus::IntCounter,
    pub bytes_in: prometheus::IntCounter,
    pub reconnects: prometheus::IntCounter,
    up: prometheus::IntGauge,
    queued: prometheus::IntGauge,
    dropped: prometheus::IntGauge,
    /// The remote address connected to now.
    remote: Mutex<Option<String>>,
    /// When the state last changed, Unix seconds.
    since: AtomicU64,
}

struct Families {
    up: IntGaugeVec,
    messages: IntCounterVec,
    bytes: IntCounterVec,
    reconnects: IntCounterVec,
    queued: IntGaugeVec,
    dropped: IntGaugeVec,
}

impl Families {
    /// The metric families, registered in `registry` when it has one.
    fn new(registry: Option<&Registry>) -> prometheus::Result<Families> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["bridge"])?;
            if let Some(r) = registry {
                r.register(Box::new(g.clone()))?;
            }
            Ok(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            if let Some(r) = registry {
                r.register(Box::new(c.clone()))?;
            }
            Ok::<_, prometheus::Error>(c)
        };
        Ok(Families {
            up: gauge(
                "raftmq_bridge_connected",
                "1 while this node runs the bridge and it is connected to its remote",
            )?,
            messages: counter(
                "raftmq_bridge_messages_total",
                "Messages forwarded by the bridge (out: to the remote, in: from it)",
                &["bridge", "direction"],
            )?,
            bytes: counter(
                "raftmq_bridge_bytes_total",
                "Payload bytes forwarded by the bridge",
                &["bridge", "direction"],
            )?,
            reconnects: counter(
                "raftmq_bridge_reconnects_total",
                "Times the bridge lost its remote or failed to reach it",
                &["bridge"],
            )?,
            queued: gauge(
                "raftmq_bridge_queued_messages",
                "Messages waiting for the remote in the bridge's session (queued and in flight)",
            )?,
            dropped: gauge(
                "raftmq_bridge_dropped_messages",
                "Messages the bridge's session dropped at max_queued_messages since it was made",
            )?,
        })
    }
}

impl Bridges {
    /// Registers the bridges' metric families; no bridge yet.
    pub fn new(registry: &Registry) -> Bridges {
        let families = Families::new(Some(registry)).or_else(|e| {
            // Only a second registration of the same names can fail.
            tracing::error!("bridge metrics not registered: {e}");
            Families::new(None)
        });
        let families = match families {
            Ok(f) => f,
            // Unregistered families are built from constant names and
            // labels: this cannot fail.
            Err(e) => unreachable!("bridge metric families: {e}"),
        };
        Bridges {
            families,
            bridges: RwLock::new(Vec::new()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The status of a bridge (re)configured as `config`; its figures
    /// carry on if it was there before.
    pub fn add(&self, config: BridgeConfig) -> Arc<BridgeStatus> {
        let f = &self.families;
        let n = config.name.clone();
        let n = n.as_str();
        let status = Arc::new(BridgeStatus {
            messages_out: f.messages.with_label_values(&[n, "out"]),
            messages_in: f.messages.with_label_values(&[n, "in"]),
            bytes_out: f.bytes.with_label_values(&[n, "out"]),
            bytes_in: f.bytes.with_label_values(&[n, "in"]),
            reconnects: f.reconnects.with_label_values(&[n]),
            up: f.up.with_label_values(&[n]),
            queued: f.queued.with_label_values(&[n]),
            dropped: f.dropped.with_label_values(&[n]),
            config,
            connected: AtomicBool::new(false),
            running_here: AtomicBool::new(false),
            remote: Mutex::new(None),
            since: AtomicU64::new(now_secs()),
        });
        status.up.set(0);
        let mut all = self.bridges.write();
        all.retain(|b| b.config.name != n);
        all.push(status.clone());
        drop(all);
        self.changed.notify_one();
        status
    }

    /// Forgets a removed bridge and its metrics.
    pub fn remove(&self, name: &str) {
        self.bridges.write().retain(|b| b.config.name != name);
        let f = &self.families;
        for direction in ["out", "in"] {
            let _ = f.messages.remove_label_values(&[name, direction]);
            let _ = f.bytes.remove_label_values(&[name, direction]);
        }
        let _ = f.reconnects.remove_label_values(&[name]);
        let _ = f.up.remove_label_values(&[name]);
        let _ = f.queued.remove_label_values(&[name]);
        let _ = f.dropped.remove_label_values(&[name]);
        self.changed.notify_one();
    }

    pub fn all(&self) -> Vec<Arc<BridgeStatus>> {
        self.bridges.read().clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.bridges
            .read()
            .iter()
            .map(|b| b.config.name.clone())
            .collect()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BridgeStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn is_running_here(&self) -> bool {
        self.running_here.load(Ordering::Acquire)
    }

    pub(super) fn set_running_here(&self, yes: bool) {
        self.running_here.store(yes, Ordering::Release);
    }

    /// Connected to `remote` (`None`: not connected). Returns whether the
    /// state changed.
    pub(super) fn set_connected(&self, remote: Option<String>) -> bool {
        let up = remote.is_some();
        *self.remote.lock() = remote;
        self.up.set(i64::from(up));
        let changed = self.connected.swap(up, Ordering::AcqRel) != up;
        if changed {
            self.since.store(now_secs(), Ordering::Relaxed);
        }
        changed
    }

    pub(super) fn set_queue(&self, queued: usize, dropped: u64) {
        self.queued.set(queued as i64);
        self.dropped.set(dropped as i64);
    }

    /// The bridge as `GET /api/v1/bridges` shows it.
    /// `runs_on`: the node whose claim it is (committed), if any.
    pub fn to_json(&self, runs_on: Option<u64>) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "name": c.name,
            "runs_on": runs_on,
            "running_here": self.is_running_here(),
            "connected": self.is_connected(),
            "remote": *self.remote.lock(),
            "since": self.since.load(Ordering::Relaxed),
            "addresses": c.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "protocol": if c.protocol.is_v5() { "5.0" } else { "3.1.1" },
            "topics": c.topics.iter().map(|t| serde_json::json!({
                "pattern": t.pattern,
                "direction": format!("{:?}", t.direction).to_lowercase(),
                "qos": t.qos as u8,
                "local_prefix": t.local_prefix,
                "remote_prefix": t.remote_prefix,
            })).collect::<Vec<_>>(),
            "messages_out": self.messages_out.get(),
            "messages_in": self.messages_in.get(),
            "bytes_out": self.bytes_out.get(),
            "bytes_in": self.bytes_in.get(),
            "queued": self.queued.get(),
            "dropped": self.dropped.get(),
            "reconnects": self.reconnects.get(),
        })
    }
}
