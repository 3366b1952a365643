//! Keeps a Raft core running over the node's own disk. openraft stops its
//! core for good on any storage error (a failed write or fsync); nothing
//! else would notice, and the node would go on answering as if it could
//! write. The supervisor sees the core stop, waits until the disk takes a
//! test write again, reopens the log from disk and starts a new core in
//! the same process; everything that talks to Raft goes through a
//! [`RaftHandle`], which then points at the new one.
//!
//! Why reopen rather than exit: a restart by the kubelet costs every
//! client its connection and the node its place for tens of seconds, and
//! needs a kubelet (a single `raftmq serve` has none); reopening keeps the
//! process and comes back within a second or two of the disk. The page
//! cache is not trusted after a failed fsync: the log was already cut back
//! to its last fsynced length when the write failed (`log_file`), the
//! reopened log is read from the files, and the metadata files (vote,
//! committed index, purge point) are written and fsynced afresh before the
//! new core starts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::health::StorageHealth;
use super::log_repair::{self, Known, Verdict};
use super::log_store::LogStore;
use super::network::Network;
use super::state_machine::StateMachine;
use super::types::{Membership, NodeId, Raft};

/// The node's current Raft core.
#[derive(Clone)]
pub struct RaftHandle(watch::Receiver<Raft>);

impl RaftHandle {
    pub fn new(raft: Raft) -> (RaftHandle, watch::Sender<Raft>) {
        let (tx, rx) = watch::channel(raft);
        (RaftHandle(rx), tx)
    }

    pub fn get(&self) -> Raft {
        self.0.borrow().clone()
    }

    /// What `f` reads from the membership as this node knows it now.
    pub fn membership<R>(&self, f: impl FnOnce(&Membership) -> R) -> R {
        let raft = self.get();
        let metrics = raft.metrics();
        let m = metrics.borrow();
        f(m.membership_config.membership())
    }

    /// The address of `node`, if it is a member (voter or learner).
    pub fn member_addr(&self, node: NodeId) -> Option<String> {
        self.membership(|m| m.get_node(&node).map(|n| n.addr.clone()))
    }

    /// Waits until a new core replaces the current one.
    pub async fn replaced(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// Whether a core stopped (on a storage error, or shut down).
pub fn stopped(raft: &Raft) -> Option<String> {
    let m = raft.metrics();
    let m = m.borrow();
    m.running_state.as_ref().err().map(|e| e.to_string())
}

/// What a new core is built from.
pub struct Rebuild {
    pub node_id: u64,
    pub config: Arc<openraft::Config>,
    pub net: Network,
    pub raft_dir: PathBuf,
    /// The node's log; reopened in place for every clone.
    pub log: LogStore,
    pub machine: StateMachine,
    pub health: Arc<StorageHealth>,
    /// Applies what the node was told of its membership to a new core.
    pub standing: Box<dyn Fn(&Raft) + Send + Sync>,
    /// Set before an orderly stop: a stopped core is then not replaced.
    pub stopping: Arc<AtomicBool>,
}

/// From the first failed probe to this, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a rebuilt core must run before the node says it is healthy.
const STABLE: Duration = Duration::from_millis(500);

pub fn spawn(tx: watch::Sender<Raft>, r: Rebuild) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let raft = tx.borrow().clone();
            let why = wait_stopped(&raft).await;
            if r.stopping.load(Ordering::Acquire) {
                return;
            }
            r.health.core_stopped(&why);
            tracing::error!("raft core stopped: {why}; it is rebuilt once the disk takes writes");
            // Joins the old core's tasks; it already stopped.
            let _ = raft.shutdown().await;
            let mut delay = RETRY_FIRST;
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                if r.stopping.load(Ordering::Acquire) {
                    return;
                }
                match rebuild(&r).await {
                    Ok(new) => {
                        (r.standing)(&new);
                        tx.send_replace(new.clone());
                        tracing::info!("raft core rebuilt from disk");
                        // Healthy once the new core has lasted a moment (a
                        // write that still fails, e.g. a snapshot that does
                        // not fit, stops it at once): no flapping /readyz.
                        tokio::time::sleep(STABLE).await;
                        if stopped(&new).is_none() {
                            r.health.recovered();
                        }
                        break;
                    }
                    Err(e) => tracing::warn!("raft core not rebuilt yet: {e:#}"),
                }
            }
        }
    })
}

async fn wait_stopped(raft: &Raft) -> String {
    let mut m = raft.metrics();
    loop {
        if let Some(why) = stopped(raft) {
            return why;
        }
        if m.changed().await.is_err() {
            return stopped(raft).unwrap_or_else(|| "the core's task ended".into());
        }
    }
}

/// Writes, fsyncs and removes a probe file beside the log: the disk takes
/// writes again.
fn probe(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join("probe.tmp");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    result
}

async fn rebuild(r: &Rebuild) -> anyhow::Result<Raft> {
    probe(&r.raft_dir.join("log"))?;
    let log = r.log.clone();
    if let Some(d) = log.reopen()? {
        let known = Known {
            node_id: r.node_id,
            committed: log.saved_committed()?,
            purged: log.saved_purged()?,
            ..Known::default()
        };
        match log_repair::judge(&d, &known) {
            Verdict::CutTornTail => log.cut_damage()?,
            // Damage an in-process reopen must not judge: the start does,
            // naming it (a restart by the kubelet, or by hand).
            _ => exit_for_start(&format!("raft log damaged while running: {d}")),
        }
    }
    log.rewrite_meta()?;
    let applied = r.machine.applied_index();
    let floor = log.saved_purged()?.max(log.last_index());
    if applied > floor {
        exit_for_start(&format!(
            "the state machine applied index {applied:?}, beyond the reopened log ({floor:?})"
        ));
    }
    let machine = r.machine.for_new_core();
    let raft = Raft::new(r.node_id, r.config.clone(), r.net.clone(), log, machine).await?;
    Ok(raft)
}

/// What cannot be rebuilt in the process is left to a fresh start, which
/// checks everything and says what it finds.
fn exit_for_start(why: &str) -> ! {
    tracing::error!("{why}: exiting so that a fresh start checks the data dir");
    std::process::exit(3)
}
