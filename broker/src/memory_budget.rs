//! The broker's memory budget: the bytes of every message it holds (in
//! session queues, in flight, retained, registered as wills, and the
//! replicated state's copies of them) against one limit, `[mqtt]
//! max_memory`, by default half the container's memory limit.
//!
//! Every [`crate::message::Message`] counts itself while it lives (a
//! [`Held`] inside it), so nothing that keeps a message can forget to
//! count it. Past the limit the broker takes no new QoS 1/2 message it
//! would have to store (5.0 PUBACK/PUBREC 0x97, 3.1.1 connection closed
//! without PUBACK) and drops QoS 0 copies; what it has acknowledged is
//! never dropped to make room.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held by all messages alive in this process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// A message's share of [`HELD`]: added when it is made, taken back when
/// it is dropped.
#[derive(Debug)]
pub struct Held(usize);

impl Held {
    pub fn new(bytes: usize) -> Held {
        HELD.fetch_add(bytes, Ordering::Relaxed);
        Held(bytes)
    }
}

impl Clone for Held {
    fn clone(&self) -> Self {
        Held::new(self.0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Two messages equal in every field are equal whatever they cost.
impl PartialEq for Held {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Held {}

/// Bytes held by messages now.
pub fn held_bytes() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Where the limit came from, for the log line at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Configured,
    /// Half the cgroup's memory limit.
    Container(u64),
    /// Half the machine's memory (no container limit).
    Machine(u64),
    /// Nothing known: a fixed default.
    Fallback,
}

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    limit: usize,
    pub source: Source,
}

/// One part in this many of the budget is kept for work in progress.
const WORKING_SHARE: usize = 6;

/// When neither a container limit nor the machine's memory is known.
const FALLBACK: usize = 1024 * 1024 * 1024;

impl MemoryBudget {
    /// `max_memory` bytes, or (0) half the container's limit, else half the
    /// machine's memory.
    pub fn new(max_memory: u64) -> MemoryBudget {
        if max_memory > 0 {
            return MemoryBudget {
                limit: usize::try_from(max_memory).unwrap_or(usize::MAX),
                source: Source::Configured,
            };
        }
        let (total, source) = match container_limit(Path::new("/")) {
            Some(l) => (l, Source::Container(l)),
            None => match machine_memory() {
                Some(m) => (m, Source::Machine(m)),
                None => {
                    return MemoryBudget {
                        limit: FALLBACK,
                        source: Source::Fallback,
                    }
                }
            },
        };
        MemoryBudget {
            limit: usize::try_from(total / 2).unwrap_or(usize::MAX),
            source,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The part of the budget held messages may take: the rest is for the
    /// work in progress around them (packets being read, batches on their
    /// way to the log), which comes and goes with the traffic.
    pub fn for_messages(&self) -> usize {
        self.limit - self.limit / WORKING_SHARE
    }

    /// Whether `more` bytes of messages may be taken on now.
    pub fn admits(&self, more: usize) -> bool {
        held_bytes().saturating_add(more) <= self.for_messages()
    }

    /// Whether the messages' part of the budget is spent.
    pub fn spent(&self) -> bool {
        held_bytes() >= self.for_messages()
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`), under `root` (`/` but in tests).
fn container_limit(root: &Path) -> Option<u64> {
    let read = |p: &Path| std::fs::read_to_string(root.join(p)).ok();
    let cgroup = read(Path::new("proc/self/cgroup")).unwrap_or_default();
    // v2: one line `0::/path`.
    let v2_path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/'));
    let mut candidates = Vec::new();
    if let Some(p) = v2_path {
        candidates.push(Path::new("sys/fs/cgroup").join(p).join("memory.max"));
    }
    candidates.push(Path::new("sys/fs/cgroup/memory.max").to_path_buf());
    // v1: the `memory` controller's line `N:memory:/path`.
    let v1_path = cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let _ = parts.next();
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.trim_start_matches('/').to_string())
    });
    if let Some(p) = v1_path {
        candidates.push(
            Path::new("sys/fs/cgroup/memory")
                .join(p)
                .join("memory.limit_in_bytes"),
        );
    }
    candidates.push(Path::new("sys/fs/cgroup/memory/memory.limit_in_bytes").to_path_buf());
    candidates
        .iter()
        .filter_map(|c| read(c))
        .find_map(|text| parse_limit(&text))
}

/// A cgroup limit file's value: `max` (v2) and v1's "unlimited" (a page
/// counter near 2^63) mean none.
fn parse_limit(text: &str) -> Option<u64> {
    let v = text.trim().parse::<u64>().ok()?;
    (v > 0 && v < 1 << 60).then_some(v)
}

/// `MemTotal` from `/proc/meminfo`.
fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn cgroup_v2_limit_of_our_own_group() {
        let root = fake_root(&[
            ("proc/self/cgroup", "0::/kubepods/pod1/c1\n"),
            ("sys/fs/cgroup/kubepods/pod1/c1/memory.max", "536870912\n"),
            ("sys/fs/cgroup/memory.max", "max\n"),
        ]);
        assert_eq!(container_limit(root.path()), Some(512 << 20));
        let root = fake_root(&[
            ("proc/self/cgroup", "0::/\n"),
            ("sys/fs/cgroup/memory.max", "max\n"),
        ]);
        assert_eq!(container_limit(root.path()), None);
    }

    #[test]
    fn cgroup_v1_limit_and_unlimited() {
        let root = fake_root(&[
            (
                "proc/self/cgroup",
                "7:cpu,cpuacct:/x\n5:memory:/docker/abc\n",
            ),
            (
                "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                "268435456\n",
            ),
        ]);
        assert_eq!(container_limit(root.path()), Some(256 << 20));
        let root = fake_root(&[
            ("proc/self/cgroup", "5:memory:/\n"),
            (
                "sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        assert_eq!(container_limit(root.path()), None);
    }

    #[test]
    fn configured_wins_and_held_follows_lives() {
        let b = MemoryBudget::new(1000);
        assert_eq!((b.limit(), &b.source), (1000, &Source::Configured));
        let before = held_bytes();
        let h = Held::new(300);
        let h2 = h.clone();
        assert!(held_bytes() >= before + 600);
        drop((h, h2));
        // Other tests make messages meanwhile: only what we added is gone.
        assert!(MemoryBudget::new(0).limit() > 0);
    }
}
