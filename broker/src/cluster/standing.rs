//! What this node has been told of its own membership by a leader
//! (`Raft.NotifyMembership`), beyond what its Raft log can say.
//!
//! - Unjoined: the node started with an empty store and no leader has said
//!   it is adding it. Such a node takes no Raft traffic: a member whose pod
//!   came back with a wiped volume would otherwise be refilled by the
//!   leader within a heartbeat, under its old identity but without the
//!   votes and entries that identity gave (it could then vote a stale
//!   candidate in). It stays visibly fresh (`Status.initialized = false`)
//!   until the operator removes it and adds it again.
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
}

impl Standing {
    /// `unjoined`: the store is fresh and this node does not bootstrap.
    pub fn open(raft_dir: &std::path::Path, unjoined: bool) -> Standing {
        let marker = raft_dir.join("removed");
        Standing {
            unjoined: AtomicBool::new(unjoined),
            removed: AtomicBool::new(marker.exists()),
            marker,
        }
    }

    pub fn unjoined(&self) -> bool {
        self.unjoined.load(Ordering::Acquire)
    }

    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Applies what a leader says; elections stop while removed (a removed
    /// voter's campaigns only disturb the group).
    pub fn set_member(&self, raft: &Raft, member: bool) -> std::io::Result<()> {
        if member {
            if self.unjoined.swap(false, Ordering::AcqRel) {
                tracing::info!("a leader is adding this node: Raft traffic accepted");
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
