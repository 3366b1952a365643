//! Re-reads the password and ACL files on SIGHUP and when they change on
//! disk. Kubernetes updates mounted ConfigMaps and Secrets by swapping a
//! symlink, which no inotify watch on the old file would see; polling the
//! resolved file's identity every couple of seconds sees it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::broker::Broker;

/// What identifies one version of a file: modification time, size, inode.
fn fingerprint(path: &Path) -> Option<(i64, i64, u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
}

fn watched(broker: &Broker) -> Vec<PathBuf> {
    let a = &broker.config.auth;
    a.password_file
        .iter()
        .chain(a.acl_file.iter())
        .cloned()
        .collect()
}

/// Reloads now; logs and keeps the old policy when the new files are bad.
pub fn reload(broker: &Broker, why: &str) {
    match broker.auth.reload(&broker.config.auth) {
        Ok(()) => tracing::info!("authentication files reloaded ({why})"),
        Err(e) => tracing::error!("authentication files not reloaded ({why}), old ones stay in force: {e}"),
    }
}

pub fn spawn(broker: Arc<Broker>, poll: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let files = watched(&broker);
        let mut seen: Vec<_> = files.iter().map(|p| fingerprint(p)).collect();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(poll);
        loop {
            let signalled = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            if signalled {
                reload(&broker, "SIGHUP");
                seen = files.iter().map(|p| fingerprint(p)).collect();
                continue;
            }
            let now: Vec<_> = files.iter().map(|p| fingerprint(p)).collect();
            if now != seen {
                seen = now;
                reload(&broker, "file changed");
            }
        }
    })
}
