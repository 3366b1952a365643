//! Whether this node can write its Raft storage. A failed write or fsync of
//! the log, the vote or the snapshot marks it unhealthy at once: `/readyz`
//! answers 503 with the reason, the gauge drops to 0, a `$SYS` notice goes
//! out; the Raft core has stopped (openraft stops on a storage error), so
//! the node leads nothing. The supervisor marks it healthy again once the
//! disk takes writes and a new Raft core runs (see `supervisor`).

use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use prometheus::{IntCounter, IntGauge, Opts, Registry};
use tokio::sync::watch;

pub struct StorageHealth {
    data_dir: PathBuf,
    fault: RwLock<Option<String>>,
    changes: watch::Sender<Option<String>>,
    pub errors: IntCounter,
    pub healthy: IntGauge,
    pub free_bytes: IntGauge,
    pub size_bytes: IntGauge,
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(Opts::new(name, help)).expect("static metric options")
}

/// (free bytes an unprivileged writer may use, total bytes) of the file
/// system holding `path`.
pub fn disk_space(path: &Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(path)?;
    Ok((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
}

impl StorageHealth {
    pub fn new(data_dir: &Path) -> StorageHealth {
        let healthy = gauge(
            "raftmq_storage_healthy",
            "1 while this node's Raft storage takes writes, 0 after a failed write or fsync \
             until it recovers",
        );
        healthy.set(1);
        StorageHealth {
            data_dir: data_dir.to_path_buf(),
            fault: RwLock::new(None),
            changes: watch::channel(None).0,
            errors: IntCounter::with_opts(Opts::new(
                "raftmq_storage_errors_total",
                "Failed writes and fsyncs of the Raft log, vote and snapshot",
            ))
            .expect("static metric options"),
            healthy,
            free_bytes: gauge(
                "raftmq_data_dir_free_bytes",
                "Bytes free on the file system of data_dir",
            ),
            size_bytes: gauge(
                "raftmq_data_dir_size_bytes",
                "Size of the file system of data_dir",
            ),
        }
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.healthy.clone()))?;
        registry.register(Box::new(self.free_bytes.clone()))?;
        registry.register(Box::new(self.size_bytes.clone()))?;
        Ok(())
    }

    /// A write or fsync of `what` failed.
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.errors.inc();
        let reason = format!("storage failing: {what}: {error}");
        tracing::error!("{reason}; not ready until writes succeed again");
        self.set(Some(reason));
    }

    /// The Raft core stopped for a reason no storage call reported.
    pub fn core_stopped(&self, why: &str) {
        if self.fault.read().is_none() {
            self.set(Some(format!("raft stopped: {why}")));
        }
    }

    pub fn recovered(&self) {
        if self.fault.read().is_some() {
            tracing::info!("storage takes writes again: ready");
            self.set(None);
        }
    }

    fn set(&self, fault: Option<String>) {
        self.healthy.set(i64::from(fault.is_none()));
        *self.fault.write() = fault.clone();
        self.changes.send_replace(fault);
    }

    /// Why the node cannot write, if it cannot.
    pub fn fault(&self) -> Option<String> {
        self.fault.read().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.changes.subscribe()
    }

    /// Brings the disk space gauges up to date (for a scrape).
    pub fn refresh_space(&self) {
        if let Ok((free, size)) = disk_space(&self.data_dir) {
            self.free_bytes.set(free as i64);
            self.size_bytes.set(size as i64);
        }
    }
}

impl crate::engine::StorageProbe for StorageHealth {
    fn fault(&self) -> Option<String> {
        StorageHealth::fault(self)
    }

    fn refresh_space(&self) {
        StorageHealth::refresh_space(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_counted_and_seen_until_recovered() {
        let d = tempfile::tempdir().unwrap();
        let h = StorageHealth::new(d.path());
        let changes = h.subscribe();
        assert_eq!(h.fault(), None);
        h.failed("raft log append", &"No space left on device (os error 28)");
        assert!(h.fault().unwrap().contains("No space left"));
        assert_eq!((h.errors.get(), h.healthy.get()), (1, 0));
        assert!(changes.has_changed().unwrap());
        // A later stop of the core keeps the first reason.
        h.core_stopped("fatal");
        assert!(h.fault().unwrap().contains("raft log append"));
        h.recovered();
        assert_eq!((h.fault(), h.healthy.get()), (None, 1));
        h.refresh_space();
        assert!(h.size_bytes.get() > 0);
    }
}
