//! Re-reads mounted files (users, ACL, certificates, PSK keys) on SIGHUP and
//! when they change on disk. Kubernetes updates mounted ConfigMaps and
//! Secrets by swapping a symlink, which an inotify watch on the old file
//! would never see; polling the resolved file's identity does.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;

type Fingerprint = Option<(i64, i64, u64, u64)>;

/// What identifies one version of a file: modification time, size, inode.
fn fingerprint(path: &Path) -> Fingerprint {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
}

struct Group {
    files: Vec<PathBuf>,
    seen: Vec<Fingerprint>,
    reload: Box<dyn Fn(&str) + Send + Sync>,
}

impl Group {
    fn current(&self) -> Vec<Fingerprint> {
        self.files.iter().map(|p| fingerprint(p)).collect()
    }
}

/// Groups of files, each with what to do when one of them changes.
pub struct FileWatch {
    groups: Vec<Group>,
    hup: Option<Signal>,
}

impl Default for FileWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl FileWatch {
    /// Takes SIGHUP over at once (its default action ends the process), so
    /// that a signal sent as soon as a listener accepts is a reload.
    pub fn new() -> Self {
        let hup = signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!("no SIGHUP reloads: {e}"))
            .ok();
        FileWatch {
            groups: Vec::new(),
            hup,
        }
    }

    pub fn add(&mut self, files: Vec<PathBuf>, reload: impl Fn(&str) + Send + Sync + 'static) {
        if files.is_empty() {
            return;
        }
        let seen = files.iter().map(|p| fingerprint(p)).collect();
        self.groups.push(Group {
            files,
            seen,
            reload: Box::new(reload),
        });
    }

    pub fn spawn(mut self, period: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut hup = self.hup.take();
            let mut tick = tokio::time::interval(period);
            loop {
                let signalled = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async {
                        match hup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => true,
                };
                for g in &mut self.groups {
                    let now = g.current();
                    if signalled {
                        (g.reload)("SIGHUP");
                    } else if now != g.seen {
                        (g.reload)("file changed");
                    }
                    g.seen = now;
                }
            }
        })
    }
}
