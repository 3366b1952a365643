//! openraft's state machine: the broker's [`ReplicatedState`], rebuilt from
//! the last snapshot plus the log on start, and snapshotted to one file.
//!
//! Applied batches proposed by *other* nodes are handed to the local engine
//! (its proposer already holds their effect), so that every node serves
//! retained messages from its own memory.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::convert;
use super::fault::{self, Point};
use super::health::StorageHealth;
use super::metrics::RaftStats;
use super::snapshot_file;
use super::snapshot_stream;
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{Change, Committed, Effect, ReplicatedState};

/// What the engine must learn from the replicated log.
#[derive(Debug)]
pub enum Applied {
    /// What one log entry did, in log order.
    Batch { index: u64, events: Vec<Committed> },
    /// A snapshot from the leader replaced the whole state.
    Reset(Box<ReplicatedState>),
    /// Every entry up to this index is applied (and what it did sent): a
    /// publish waiting for the engine to be this far goes on.
    Upto(u64),
}

/// Whether the engine of node `me` needs to hear of `change`: all of
/// them, except the copies its own publishes enqueued for sessions it
/// serves, which it already holds.
fn engine_needs(me: u64, change: &Change) -> bool {
    !matches!(change, Change::Enqueued { origin, local: true, .. } if *origin == me)
}

#[derive(Default)]
struct Inner {
    state: ReplicatedState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The last snapshot built or installed; its bytes are in its file
    /// only (read when a follower needs them), never kept in memory.
    snapshot: Option<SnapshotMeta>,
    /// The last numbered batch applied from each proposing node.
    last_batch: std::collections::HashMap<u64, convert::BatchId>,
}

impl Inner {
    /// Whether batch `id` of `origin` is applied for the first time. A
    /// writer proposes its batches one at a time, in order, and proposes
    /// one again (same id) only when it could not learn whether it was
    /// committed (a leader change): a copy at or below the last one seen
    /// from the same writer is such a repeat. Its commands are idempotent
    /// for the state; the engine must not hear of them twice (a delivery
    /// would be made twice).
    fn first_time(&mut self, origin: u64, id: convert::BatchId) -> bool {
        if id.number == 0 {
            return true;
        }
        let repeat = self
            .last_batch
            .get(&origin)
            .is_some_and(|last| last.writer == id.writer && last.number >= id.number);
        if !repeat {
            self.last_batch.insert(origin, id);
        }
        !repeat
    }
}

#[derive(Clone)]
pub struct StateMachine {
    node_id: u64,
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
    applied: mpsc::UnboundedSender<Applied>,
    stats: RaftStats,
    health: Arc<StorageHealth>,
    /// Which Raft core may change the state: after a core stopped on a
    /// storage error and a new one took over (see `supervisor`), whatever
    /// the old one still had queued is refused.
    generation: Arc<AtomicU64>,
    mine: u64,
}

fn stale() -> StorageError {
    snap_err(ErrorVerb::Write, "a stopped raft core's state machine call")
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::error(e)),
    }
}

/// The state in a sealed blob's state bytes, built a message at a time.
fn decode_state(mut data: &[u8]) -> Result<ReplicatedState, String> {
    snapshot_stream::read_state(&mut data).map_err(|e| e.to_string())
}

/// Writes the file `write` makes to `path` so that a crash leaves either
/// the old or the new file, never half of one; the written file is read
/// back and checked (a piece at a time) before it replaces the old one.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let f = std::fs::File::create(&tmp)?;
    fault::hit(Point::SnapshotWrite)?;
    let mut w = std::io::BufWriter::new(f);
    write(&mut w)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    if let Err(d) = snapshot_file::verify(&tmp) {
        return Err(std::io::Error::other(format!(
            "{} does not read back: {}",
            tmp.display(),
            d.error
        )));
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `snapshot.bin` could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct SnapshotLoadError {
    pub path: PathBuf,
    pub error: String,
    /// The damaged file's meta, when its own checksum held.
    pub meta: Option<SnapshotMeta>,
}

impl StateMachine {
    /// Loads the last snapshot in `dir`, if any. Log entries after it are
    /// re-applied by openraft when the node starts.
    pub fn open(
        node_id: u64,
        dir: &Path,
        applied: mpsc::UnboundedSender<Applied>,
        stats: RaftStats,
        health: Arc<StorageHealth>,
    ) -> Result<StateMachine, SnapshotLoadError> {
        let path = dir.join("snapshot.bin");
        let fail = |error: String, meta| SnapshotLoadError {
            path: path.clone(),
            error,
            meta,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string(), None))?;
        let mut inner = Inner::default();
        let exists = match std::fs::metadata(&path) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(fail(e.to_string(), None)),
        };
        let mut legacy = false;
        if exists {
            // Streamed: the state is built as the file goes through its
            // checksum, never the file and a decoded copy besides.
            let read = snapshot_file::read_streamed(&path)
                .map_err(|d| fail(d.error.to_string(), d.meta))?;
            legacy = read.legacy;
            let meta = read.meta;
            inner.state = read.state;
            inner.state.applied_index = meta.last_log_id.map_or(0, |l| l.index);
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.snapshot = Some(meta);
        }
        let machine = StateMachine {
            node_id,
            dir: dir.to_path_buf(),
            inner: Arc::new(Mutex::new(inner)),
            applied,
            stats,
            health,
            generation: Arc::default(),
            mine: 0,
        };
        if legacy {
            // Accepted once: it had no checksum to check. From now on it has.
            tracing::warn!(
                path = %path.display(),
                "snapshot from before checksums loaded unverified; rewriting it with a checksum"
            );
            let snap = {
                let inner = machine.inner.lock();
                inner.snapshot.clone().map(|m| (m, inner.state.clone()))
            };
            if let Some((meta, state)) = snap {
                machine
                    .save_state(&meta, &state)
                    .map_err(|e| fail(format!("rewriting with a checksum: {e}"), None))?;
            }
        }
        Ok(machine)
    }

    /// A copy of the replicated state.
    pub fn state(&self) -> ReplicatedState {
        self.inner.lock().state.clone()
    }

    /// The index of the last entry applied.
    pub fn applied_index(&self) -> Option<u64> {
        self.inner.lock().last_applied.map(|l| l.index)
    }

    /// The handle a new Raft core gets; every older one stops changing
    /// the state (taken under the state's lock, so an apply of the old
    /// core is either finished or refused).
    pub fn for_new_core(&self) -> StateMachine {
        let _inner = self.inner.lock();
        let mine = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        StateMachine {
            mine,
            ..self.clone()
        }
    }

    fn current(&self) -> Result<(), StorageError> {
        if self.generation.load(Ordering::Acquire) == self.mine {
            Ok(())
        } else {
            Err(stale())
        }
    }

    /// The voters of the membership the state machine last applied.
    pub fn membership_voters(&self) -> std::collections::BTreeSet<u64> {
        self.inner
            .lock()
            .membership
            .membership()
            .voter_ids()
            .collect()
    }

    /// Whether a snapshot was taken, installed or loaded.
    pub fn has_snapshot(&self) -> bool {
        self.inner.lock().snapshot.is_some()
    }

    /// Writes `blob` (sealed state) and `meta` to `snapshot.bin`.
    fn save(&self, meta: &SnapshotMeta, blob: &[u8]) -> Result<(), StorageError> {
        write_atomic(&self.dir.join("snapshot.bin"), |w| {
            snapshot_file::write_with_blob(w, meta, blob)
        })
        .map_err(|e| {
            self.health.failed("raft snapshot", &e);
            snap_err(ErrorVerb::Write, e)
        })
    }

    /// Writes `state` and `meta` to `snapshot.bin` a message at a time;
    /// returns the blob's size.
    fn save_state(
        &self,
        meta: &SnapshotMeta,
        state: &ReplicatedState,
    ) -> Result<u64, StorageError> {
        let mut size = 0;
        write_atomic(&self.dir.join("snapshot.bin"), |w| {
            size = snapshot_file::write_streamed(w, meta, state)?;
            Ok(())
        })
        .map_err(|e| {
            self.health.failed("raft snapshot", &e);
            snap_err(ErrorVerb::Write, e)
        })?;
        Ok(size)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.current()?;
        // A copy of the maps only (messages are shared), so that applying
        // goes on while the file is written a message at a time.
        let (meta, state) = {
            let inner = self.inner.lock();
            let id = match &inner.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
                None => format!("0-0-{}", rand::random::<u32>()),
            };
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id: id,
            };
            (meta, inner.state.clone())
        };
        let size = self.save_state(&meta, &state)?;
        drop(state);
        self.stats.snapshot_built(size as usize);
        self.inner.lock().snapshot = Some(meta.clone());
        // openraft keeps only the meta of a snapshot it asked us to build;
        // a follower that needs the bytes gets them from the file.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.inner.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let started = Instant::now();
        let mut out = Vec::new();
        let mut inner = self.inner.lock();
        self.current()?;
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            inner.state.applied_index = entry.log_id.index;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    // A batch that does not decode was written by a broken
                    // proposer; applying nothing keeps every node equal.
                    match convert::batch_from_numbered(&batch) {
                        Ok((origin, id, commands)) => {
                            let own = origin == self.node_id;
                            let first = inner.first_time(origin, id);
                            if !first {
                                tracing::debug!(
                                    origin,
                                    ?id,
                                    "batch committed again: engine not told twice"
                                );
                            }
                            let mut events = Vec::new();
                            let mut changes = Vec::new();
                            for c in commands {
                                let applied =
                                    inner.state.apply_with_changes(origin, &c, &mut changes);
                                let Ok(effect) = applied else {
                                    changes.clear();
                                    continue;
                                };
                                if !first {
                                    changes.clear();
                                    continue;
                                }
                                events.extend(
                                    changes
                                        .drain(..)
                                        .filter(|ch| engine_needs(self.node_id, ch))
                                        .map(Committed::Changed),
                                );
                                if let Some(Effect::ClaimRefused {
                                    client_id,
                                    node,
                                    nonce,
                                }) = effect
                                {
                                    // It changed nothing: only its proposer hears.
                                    if node == self.node_id {
                                        events.push(Committed::ClaimRefused { client_id, nonce });
                                    }
                                    continue;
                                }
                                match effect {
                                    Some(Effect::Claimed {
                                        client_id,
                                        node,
                                        nonce,
                                    }) if node == self.node_id => {
                                        let session = inner.state.sessions.get(&client_id).cloned();
                                        let username =
                                            inner.state.usernames.get(&client_id).cloned();
                                        events.push(Committed::Claimed {
                                            client_id,
                                            nonce,
                                            session,
                                            username,
                                        });
                                    }
                                    Some(Effect::WillFired { client_id, will }) if own => {
                                        events.push(Committed::WillFired { client_id, will });
                                    }
                                    _ => {}
                                }
                            }
                            if !events.is_empty() {
                                // The engine may be gone at shutdown.
                                let _ = self.applied.send(Applied::Batch {
                                    index: entry.log_id.index,
                                    events,
                                });
                            }
                        }
                        Err(e) => {
                            tracing::error!(index = entry.log_id.index, "raft entry skipped: {e}")
                        }
                    }
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            out.push(());
        }
        if let Some(last) = inner.last_applied {
            let _ = self.applied.send(Applied::Upto(last.index));
        }
        drop(inner);
        self.stats
            .apply_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.current()?;
        // The Raft service checked the blob as it arrived; checked again
        // here, as nothing unchecked may replace the state.
        let data = snapshot.into_inner();
        let state = snapshot_file::unseal(&data).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let mut state = decode_state(state).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        state.applied_index = meta.last_log_id.map_or(0, |l| l.index);
        self.save(meta, &data)?;
        self.stats.snapshot_installed(data.len());
        {
            let mut inner = self.inner.lock();
            inner.state = state.clone();
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.snapshot = Some(meta.clone());
        }
        drop(data);
        let _ = self.applied.send(Applied::Reset(Box::new(state)));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(meta) = self.inner.lock().snapshot.clone() else {
            return Ok(None);
        };
        // The bytes for a follower, from the file (held only while sent).
        let (on_disk, blob) = snapshot_file::read_blob(&self.dir.join("snapshot.bin"))
            .map_err(|d| snap_err(ErrorVerb::Read, d.error))?;
        if on_disk.snapshot_id != meta.snapshot_id {
            return Err(snap_err(
                ErrorVerb::Read,
                "the snapshot file was replaced while it was read",
            ));
        }
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(blob)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn open(dir: &Path) -> Result<StateMachine, SnapshotLoadError> {
        let health = Arc::new(StorageHealth::new(dir));
        StateMachine::open(
            1,
            dir,
            mpsc::unbounded_channel().0,
            RaftStats::default(),
            health,
        )
    }

    #[test]
    fn a_snapshot_from_before_checksums_is_loaded_once_and_rewritten_with_them() {
        let d = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "2-9-1".into(),
        };
        let mut state = ReplicatedState::default();
        state
            .routes
            .insert("s/183".into(), [1u64].into_iter().collect());
        let m = convert::snapshot_meta_to(&meta).encode_to_vec();
        let mut legacy = (m.len() as u32).to_le_bytes().to_vec();
        legacy.extend_from_slice(&m);
        legacy.extend_from_slice(&convert::state_to(&state).encode_to_vec());
        let path = d.path().join("snapshot.bin");
        std::fs::write(&path, &legacy).unwrap();
        let sm = open(d.path()).expect("accepted once");
        assert_eq!(sm.applied_index(), Some(9));
        assert_eq!(sm.state().routes, state.routes);
        // Rewritten with checksums: a flipped byte is now found.
        let raw = std::fs::read(&path).unwrap();
        assert!(matches!(
            snapshot_file::decode_file(&raw),
            Ok(snapshot_file::Loaded::Checked { .. })
        ));
        let mut flipped = raw.clone();
        let n = flipped.len();
        flipped[n - 40] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let e = open(d.path()).err().expect("refused");
        assert!(e.to_string().contains("snapshot.bin"), "{e}");
        assert!(e.meta.is_some(), "the meta's own checksum held");
    }

    #[test]
    fn a_batch_committed_twice_is_told_to_the_engine_once() {
        let mut inner = Inner::default();
        let id = |writer, number| convert::BatchId { writer, number };
        assert!(inner.first_time(2, id(7, 1)));
        assert!(inner.first_time(2, id(7, 2)));
        // Proposed again after a leader change, committed a second time.
        assert!(!inner.first_time(2, id(7, 2)));
        assert!(!inner.first_time(2, id(7, 1)));
        assert!(inner.first_time(2, id(7, 3)));
        // Another node, or this node after a restart (a new writer).
        assert!(inner.first_time(3, id(7, 1)));
        assert!(inner.first_time(2, id(9, 1)));
        // Unnumbered batches (admin writes) are never taken for repeats.
        assert!(inner.first_time(2, id(0, 0)));
        assert!(inner.first_time(2, id(0, 0)));
    }
}
