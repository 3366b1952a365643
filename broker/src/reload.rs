//! Re-reads mounted files (users, ACL, certificates, PSK keys, bridges) on
//! SIGHUP and when they change on disk. Kubernetes updates mounted ConfigMaps and
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
    /// The files, as of now (a bridge's credentials come and go with it).
    files: Box<dyn Fn() -> Vec<PathBuf> + Send + Sync>,
    seen: Vec<(PathBuf, Fingerprint)>,
    reload: Box<dyn Fn(&str) + Send + Sync>,
}

impl Group {
    fn current(&self) -> Vec<(PathBuf, Fingerprint)> {
        (self.files)()
            .into_iter()
            .map(|p| {
                let f = fingerprint(&p);
                (p, f)
            })
            .collect()
    }

    /// What counts as seen after a reload: the files as listed now (the
    /// reload may have changed the list), each as it was before the reload
    /// where it was known then, so that a change made meanwhile is not
    /// passed over.
    fn seen_after_reload(&self, before: &[(PathBuf, Fingerprint)]) -> Vec<(PathBuf, Fingerprint)> {
        (self.files)()
            .into_iter()
            .map(|p| {
                let f = match before.iter().find(|(q, _)| *q == p) {
                    Some((_, f)) => *f,
                    None => fingerprint(&p),
                };
                (p, f)
            })
            .collect()
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
        self.add_listed(move || files.clone(), reload);
    }

    /// As [`FileWatch::add`], for files that `files` lists anew at each
    /// look (one added to the list or taken off it counts as a change).
    pub fn add_listed(
        &mut self,
        files: impl Fn() -> Vec<PathBuf> + Send + Sync + 'static,
        reload: impl Fn(&str) + Send + Sync + 'static,
    ) {
        let mut g = Group {
            files: Box::new(files),
            seen: Vec::new(),
            reload: Box::new(reload),
        };
        g.seen = g.current();
        self.groups.push(g);
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
                    let why = if signalled {
                        "SIGHUP"
                    } else if now != g.seen {
                        "file changed"
                    } else {
                        continue;
                    };
                    (g.reload)(why);
                    g.seen = g.seen_after_reload(&now);
                }
            }
        })
    }
}
