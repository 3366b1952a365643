//! Opening the node's Raft storage at start: the log and the snapshot are
//! read back and checked, and damage is dealt with before Raft sees any of
//! it — a torn tail cut, anything else refused with what to do, or, on a
//! member of a cluster of several nodes, set aside so that the leader sends
//! the data again (see `log_repair` for the rules).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;

use super::health::StorageHealth;
use super::log_file::Damage;
use super::log_repair::{self, Known, Verdict};
use super::log_store::LogStore;
use super::metrics::RaftStats;
use super::standing;
use super::state_machine::{Applied, SnapshotLoadError, StateMachine};
use crate::config::Config;

pub struct Opened {
    pub log: LogStore,
    pub machine: StateMachine,
    pub applied: mpsc::UnboundedReceiver<Applied>,
}

pub fn open(
    config: &Config,
    node_id: u64,
    stats: &RaftStats,
    health: &Arc<StorageHealth>,
) -> anyhow::Result<Opened> {
    let c = &config.cluster;
    let dir = config.data_dir.join("raft");
    let (tx, rx) = mpsc::unbounded_channel();
    let log_dir = dir.join("log");
    let (log, damage) =
        LogStore::open(&log_dir, c.log_segment_bytes, health.clone()).context("raft log")?;
    let snapshot_dir = dir.join("snapshot");
    let sm = |tx| StateMachine::open(node_id, &snapshot_dir, tx, stats.clone(), health.clone());
    let machine = match sm(tx.clone()) {
        Ok(m) => m,
        Err(e) => {
            set_aside_for_a_member(&dir, node_id, &log, e)?;
            let (log, _) = LogStore::open(&log_dir, c.log_segment_bytes, health.clone())
                .context("raft log")?;
            let machine = sm(tx).context("raft snapshot")?;
            return Ok(Opened {
                log,
                machine,
                applied: rx,
            });
        }
    };
    if let Some(d) = damage {
        let known = Known {
            node_id,
            committed: log.saved_committed()?,
            purged: log.saved_purged()?,
            voters: voters(&log, &machine)?,
            repair: c.repair_log,
        };
        deal_with(&dir, &log, &d, &known)?;
    }
    Ok(Opened {
        log,
        machine,
        applied: rx,
    })
}

/// The voters this node last knew of: the log's last membership entry,
/// else the snapshot's.
fn voters(log: &LogStore, machine: &StateMachine) -> anyhow::Result<BTreeSet<u64>> {
    if let Some(v) = log.last_voters()? {
        return Ok(v);
    }
    Ok(machine.membership_voters())
}

fn deal_with(dir: &Path, log: &LogStore, d: &Damage, known: &Known) -> anyhow::Result<()> {
    match log_repair::judge(d, known) {
        Verdict::CutTornTail => {
            tracing::warn!(
                "raft log: torn tail cut ({} bytes): {d}; nothing this node knew as committed \
                 was in it",
                d.bytes
            );
            log.cut_damage().context("raft log: cutting a torn tail")?;
        }
        Verdict::Repair { unjoin } => {
            tracing::error!(
                unjoin,
                "raft log repaired as asked (--repair-log): cut at {d}; the vote is kept and \
                 the leader sends the rest{}",
                if unjoin {
                    "; committed entries were lost with the cut, so this node waits to be \
                     removed and added again, like a member with a wiped volume"
                } else {
                    ""
                }
            );
            if unjoin {
                standing::mark_unjoined(dir, &format!("repaired: {d}"))
                    .context("raft: marking the repaired node unjoined")?;
            }
            log.cut_damage()
                .context("raft log: cutting at the damage")?;
        }
        Verdict::Refuse(msg) => anyhow::bail!(msg),
    }
    Ok(())
}

/// A damaged snapshot is never loaded. A member of a cluster of several
/// nodes (known from the log, or from the snapshot's own meta when its
/// checksum held) sets the snapshot and its log aside (the vote stays),
/// marks itself unjoined, and gets everything from the leader once it is
/// added again; anything else refuses to start.
fn set_aside_for_a_member(
    dir: &Path,
    node_id: u64,
    log: &LogStore,
    e: SnapshotLoadError,
) -> anyhow::Result<()> {
    let mut voters = log.last_voters().ok().flatten().unwrap_or_default();
    if voters.is_empty() {
        if let Some(m) = &e.meta {
            voters = m.last_membership.membership().voter_ids().collect();
        }
    }
    let member = voters.iter().any(|v| *v != node_id);
    if !member {
        anyhow::bail!(
            "raft snapshot damaged: {e}. The node does not start: a damaged snapshot is \
             never loaded. This node is the only voter of its cluster (or its membership \
             cannot be read): restore data_dir from a backup. On a member of a cluster of \
             several nodes, empty {} instead: it then waits as a fresh member until it is \
             removed and added again.",
            dir.display()
        );
    }
    let aside = dir.join("damaged");
    std::fs::create_dir_all(&aside).context("raft: creating raft/damaged")?;
    let mut moved = vec![e.path.clone()];
    let log_dir = dir.join("log");
    for entry in std::fs::read_dir(&log_dir).context("raft log")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") || name.starts_with("committed") || name.starts_with("purge") {
            moved.push(entry.path());
        }
    }
    for path in &moved {
        if let Some(name) = path.file_name() {
            std::fs::rename(path, aside.join(name))
                .with_context(|| format!("moving {} aside", path.display()))?;
        }
    }
    standing::mark_unjoined(dir, &format!("snapshot damaged: {e}"))
        .context("raft: marking the node unjoined")?;
    tracing::error!(
        "raft snapshot damaged: {e}. This node is a member of a cluster of several nodes: \
         the snapshot and its log are moved to {} (the vote stays), and the node waits to be \
         removed and added again, then gets a new snapshot from the leader",
        aside.display()
    );
    Ok(())
}
