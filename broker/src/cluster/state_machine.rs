//! openraft's state machine: the broker's [`ReplicatedState`], rebuilt from
//! the last snapshot plus the log on start, and snapshotted to one file.
//!
//! Applied batches proposed by *other* nodes are handed to the local engine
//! (its proposer already holds their effect), so that every node serves
//! retained messages from its own memory.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use parking_lot::Mutex;
use prost::Message as _;
use raftmq_proto::v1 as pb;
use tokio::sync::mpsc;

use super::convert;
use super::metrics::RaftStats;
use super::snapshot_stream;
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{Command, Committed, Effect, ReplicatedState};

/// What the engine must learn from the replicated log.
#[derive(Debug)]
pub enum Applied {
    /// What one log entry did, in log order.
    Batch { index: u64, events: Vec<Committed> },
    /// A snapshot from the leader replaced the whole state.
    Reset(Box<ReplicatedState>),
}

/// Whether the engine needs to hear of `c`, which took effect. Its own
/// engine already holds the effect of what it proposed, except for copies
/// it enqueued for sessions other nodes own; retained changes are applied
/// in log order everywhere (see `retained_delivery.rs`); acks concern only
/// the owner.
fn engine_needs(own: bool, c: &Command) -> bool {
    match c {
        Command::Ack { .. } | Command::Release { .. } | Command::SessionUpdate { .. } => false,
        Command::Enqueue { local, .. } => !(own && *local),
        _ => true,
    }
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
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::error(e)),
    }
}

/// The snapshot file: `[u32 LE meta length][meta][state]`.
fn encode_file(meta: &SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let meta = convert::snapshot_meta_to(meta).encode_to_vec();
    let mut out = Vec::with_capacity(4 + meta.len() + data.len());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
fn decode_file(raw: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), String> {
    let len = raw
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or("snapshot file too short")? as usize;
    let meta = raw.get(4..4 + len).ok_or("snapshot meta truncated")?;
    let meta = pb::SnapshotMeta::decode(meta).map_err(|e| e.to_string())?;
    let meta = convert::snapshot_meta_from(Some(meta)).map_err(|e| e.to_string())?;
    Ok((meta, raw[4 + len..].to_vec()))
}

fn decode_state(mut data: &[u8]) -> Result<ReplicatedState, String> {
    snapshot_stream::read_state(&mut data).map_err(|e| e.to_string())
}

/// Writes the snapshot file of `state` as [`write_atomic`] does, the state
/// a message at a time (see `snapshot_stream`); returns the state's size.
fn write_streamed(
    path: &Path,
    meta: &SnapshotMeta,
    state: &ReplicatedState,
) -> std::io::Result<u64> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let meta = convert::snapshot_meta_to(meta).encode_to_vec();
    f.write_all(&(meta.len() as u32).to_le_bytes())?;
    f.write_all(&meta)?;
    let written = snapshot_stream::write_state(state, &mut f)?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(written)
}

/// Opens a snapshot file: its meta, and a reader positioned at its state.
fn open_file(path: &Path) -> Result<(SnapshotMeta, std::io::BufReader<std::fs::File>), String> {
    use std::io::Read;
    let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| e.to_string())?);
    let mut len = [0u8; 4];
    f.read_exact(&mut len)
        .map_err(|_| "snapshot file too short")?;
    let mut meta = vec![0u8; u32::from_le_bytes(len).min(1 << 20) as usize];
    f.read_exact(&mut meta)
        .map_err(|_| "snapshot meta truncated")?;
    let meta = pb::SnapshotMeta::decode(&meta[..]).map_err(|e| e.to_string())?;
    let meta = convert::snapshot_meta_from(Some(meta)).map_err(|e| e.to_string())?;
    Ok((meta, f))
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the
/// new file, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl StateMachine {
    /// Loads the last snapshot in `dir`, if any. Log entries after it are
    /// re-applied by openraft when the node starts.
    pub fn open(
        node_id: u64,
        dir: &Path,
        applied: mpsc::UnboundedSender<Applied>,
        stats: RaftStats,
    ) -> anyhow::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let mut inner = Inner::default();
        let path = dir.join("snapshot.bin");
        if path.exists() {
            // Streamed: the state is built as the file is read, never the
            // file and a decoded copy of it besides.
            let (meta, mut data) =
                open_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            inner.state = snapshot_stream::read_state(&mut data)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            inner.state.applied_index = meta.last_log_id.map_or(0, |l| l.index);
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.snapshot = Some(meta);
        }
        Ok(StateMachine {
            node_id,
            dir: dir.to_path_buf(),
            inner: Arc::new(Mutex::new(inner)),
            applied,
            stats,
        })
    }

    /// A copy of the replicated state.
    pub fn state(&self) -> ReplicatedState {
        self.inner.lock().state.clone()
    }

    /// Whether a snapshot was taken, installed or loaded.
    pub fn has_snapshot(&self) -> bool {
        self.inner.lock().snapshot.is_some()
    }

    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        write_atomic(&self.dir.join("snapshot.bin"), &encode_file(meta, data))
            .map_err(|e| snap_err(ErrorVerb::Write, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // A copy of the maps only (messages are shared), so that applying
        // goes on while the file is written.
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
        let written = write_streamed(&self.dir.join("snapshot.bin"), &meta, &state)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        drop(state);
        self.stats.snapshot_built(written as usize);
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
                            for c in commands {
                                let Ok(effect) = inner.state.apply(origin, &c) else {
                                    continue;
                                };
                                if !first {
                                    continue;
                                }
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
                                if engine_needs(own, &c) {
                                    events.push(Committed::Command { origin, command: c });
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
        let data = snapshot.into_inner();
        let mut state = decode_state(&data).map_err(|e| snap_err(ErrorVerb::Read, e))?;
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
        use std::io::Read;
        let Some(meta) = self.inner.lock().snapshot.clone() else {
            return Ok(None);
        };
        // The bytes for a follower, from the file (held only while sent).
        let read = |e: String| snap_err(ErrorVerb::Read, e);
        let (on_disk, mut f) = open_file(&self.dir.join("snapshot.bin")).map_err(read)?;
        if on_disk.snapshot_id != meta.snapshot_id {
            return Err(read("snapshot file replaced while being read".into()));
        }
        let mut data = Vec::new();
        f.read_to_end(&mut data).map_err(|e| read(e.to_string()))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_file_round_trip_and_garbage() {
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "x".into(),
        };
        let raw = encode_file(&meta, b"state");
        let (m, d) = decode_file(&raw).unwrap();
        assert_eq!(m, meta);
        assert_eq!(d, b"state");
        assert!(decode_file(&raw[..6]).is_err());
        assert!(decode_file(&[0xff, 0xff, 0xff, 0xff, 1]).is_err());
        // Written streamed, read streamed: the same meta and state.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.bin");
        let state = ReplicatedState {
            routes: [("a/#".into(), [1u64].into_iter().collect())].into(),
            ..Default::default()
        };
        write_streamed(&path, &meta, &state).unwrap();
        let (m, mut rest) = open_file(&path).unwrap();
        assert_eq!(m, meta);
        let back = snapshot_stream::read_state(&mut rest).unwrap();
        assert_eq!(back.digest(), state.digest());
        // The whole-file reader agrees on the layout.
        let (m, d) = decode_file(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(m, meta);
        assert_eq!(decode_state(&d).unwrap().digest(), state.digest());
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
