//! What this node has been told of its own membership by a leader
//! (`Raft.NotifyMembership`), beyond what its Raft log can say.
//!
//! - Unjoined: the node started with an empty store and no leader has said
//!   it is adding it. Such a node takes no Raft traffic: a member whose pod
//!   came back with a wiped volume would otherwise be refilled by the
//!   leader within a heartbeat, under its old identity but without the
//!   votes and entries that identity gave (it could then vote a stale
//!   candidate in). It stays visibly fresh (`Status.initialized = false`)
//!   until the operator removes it and adds it again. A member whose
//!   damaged log or snapshot was cut below what it knew as committed
//!   (`log_repair`, `storage`) is put in the same place, with a marker file
//!   that a restart keeps: it may have counted towards entries it no
//!   longer holds.
//! - Removed: a leader took the node out. It never receives the final
//!   membership entry (the leader stops replicating to it first), so its
//!   own log still lists it as a voter: without this it would campaign
//!   forever and report itself a member. Kept in a marker file so that a
//!   restart does not forget it; cleared when a leader adds it again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use super::types::Raft;

pub struct Standing {
    unjoined: AtomicBool,
    removed: AtomicBool,
    marker: PathBuf,
    unjoined_marker: PathBuf,
    /// When a leader's AppendEntries (a heartbeat at least) was last
    /// taken: a follower is in contact with its leader for an election
    /// timeout after (`Health::leader_contact`).
    heard: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// Marks a node whose store lost committed entries as unjoined, across
/// restarts, until a leader adds it again.
pub fn mark_unjoined(raft_dir: &std::path::Path, why: &str) -> std::io::Result<()> {
    let path = raft_dir.join("unjoined");
    let mut f = std::fs::File::create(&path)?;
    std::io::Write::write_all(&mut f, format!("{why}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::File::open(raft_dir)?.sync_all()
}

impl Standing {
    /// `unjoined`: the store is fresh and this node does not bootstrap.
    pub fn open(raft_dir: &std::path::Path, unjoined: bool) -> Standing {
        let marker = raft_dir.join("removed");
        let unjoined_marker = raft_dir.join("unjoined");
        Standing {
            unjoined: AtomicBool::new(unjoined || unjoined_marker.exists()),
            removed: AtomicBool::new(marker.exists()),
            marker,
            unjoined_marker,
            heard: parking_lot::Mutex::new(None),
        }
    }

    /// A leader's AppendEntries was taken just now.
    pub fn heard_from_leader(&self) {
        *self.heard.lock() = Some(std::time::Instant::now());
    }

    /// When a leader's AppendEntries was last taken.
    pub fn last_heard_from_leader(&self) -> Option<std::time::Instant> {
        *self.heard.lock()
    }

    pub fn unjoined(&self) -> bool {
        self.unjoined.load(Ordering::Acquire)
    }

    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Holds a core's elections while the node is out of the group:
    /// removed, or unjoined with a store that is not fresh (repaired below
    /// its committed index: its campaigns would only disturb the group).
    pub fn hold_elections_if_out(&self, raft: &Raft, fresh: bool) {
        if self.removed() {
            tracing::warn!("this node was removed from its cluster; it does not campaign");
            raft.runtime_config().elect(false);
        } else if self.unjoined() && !fresh {
            tracing::warn!(
                "this node lost committed entries and waits to be removed and added again; \
                 it does not campaign"
            );
            raft.runtime_config().elect(false);
        }
    }

    /// Applies what a leader says; elections stop while removed (a removed
    /// voter's campaigns only disturb the group).
    pub fn set_member(&self, raft: &Raft, member: bool) -> std::io::Result<()> {
        if member {
            if self.unjoined.swap(false, Ordering::AcqRel) {
                tracing::info!("a leader is adding this node: Raft traffic accepted");
            }
            match std::fs::remove_file(&self.unjoined_marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            if self.removed.swap(false, Ordering::AcqRel) {
                tracing::info!("a leader is adding this node again");
            }
            match std::fs::remove_file(&self.marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            raft.runtime_config().elect(true);
        } else {
            std::fs::write(&self.marker, b"removed from the cluster by its leader\n")?;
            if !self.removed.swap(true, Ordering::AcqRel) {
                tracing::warn!("this node was removed from the cluster; it no longer campaigns");
            }
            raft.runtime_config().elect(false);
        }
        Ok(())
    }
}
