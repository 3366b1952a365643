//! openraft's log storage on top of [`LogFile`]: entries are stored as
//! prost-encoded `raftmq.v1.Entry` records; vote, committed id and the last
//! purged id are small metadata blobs beside the segments.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use prost::Message as _;
use raftmq_proto::v1 as pb;

use super::convert;
use super::health::StorageHealth;
use super::log_file::{Damage, LogError, LogFile};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Clones share one [`LogFile`]; [`LogStore::reopen`] replaces it for all.
#[derive(Clone)]
pub struct LogStore {
    file: Arc<Mutex<LogFile>>,
    dir: PathBuf,
    segment_bytes: u64,
    /// Told of every failed write, fsync or delete.
    health: Arc<StorageHealth>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: &dyn std::error::Error) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::error(e)),
    }
}

fn log_err(verb: ErrorVerb, e: &LogError) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    /// Opens the log in `dir` (segments roll over at `segment_bytes`).
    /// Damage is returned for the caller to judge (`log_repair`); until it
    /// is cut the store refuses writes.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        health: Arc<StorageHealth>,
    ) -> Result<(LogStore, Option<Damage>), LogError> {
        let (file, damage) = Self::open_file(dir, segment_bytes)?;
        let store = LogStore {
            file: Arc::new(Mutex::new(file)),
            dir: dir.to_path_buf(),
            segment_bytes,
            health,
        };
        Ok((store, damage))
    }

    fn open_file(dir: &Path, segment_bytes: u64) -> Result<(LogFile, Option<Damage>), LogError> {
        let (file, recovery) = LogFile::open(dir, segment_bytes)?;
        if recovery.skipped_purged > 0 {
            tracing::warn!(
                records = recovery.skipped_purged,
                "raft log: damaged records below the purge point (in the snapshot) stepped over"
            );
        }
        Ok((file, recovery.damage))
    }

    /// Reads the log from its files again (after a failed write: the
    /// supervisor), for every clone.
    pub fn reopen(&self) -> Result<Option<Damage>, LogError> {
        let (file, damage) = Self::open_file(&self.dir, self.segment_bytes)?;
        *self.file.lock() = file;
        Ok(damage)
    }

    /// Writes every metadata file again, fsynced: after a failed fsync
    /// what the page cache shows of them is not trusted to be on disk.
    pub fn rewrite_meta(&self) -> Result<(), LogError> {
        let f = self.file.lock();
        for name in ["vote", "committed", "purged", "purge_point"] {
            if let Some(bytes) = f.read_meta(name)? {
                f.write_meta(name, &bytes)?;
            }
        }
        Ok(())
    }

    pub fn last_index(&self) -> Option<u64> {
        self.file.lock().last_index()
    }

    /// Reports a failed write to the node's storage health.
    fn failed<T>(&self, what: &str, r: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e) = &r {
            self.health.failed(what, e);
        }
        r
    }

    /// Cuts the log at the damage `open` found.
    pub fn cut_damage(&self) -> Result<(), LogError> {
        self.file.lock().cut_damage()
    }

    /// The committed index saved beside the log.
    pub fn saved_committed(&self) -> Result<Option<u64>, StorageError> {
        Ok(self.meta::<pb::LogId>("committed")?.map(|l| l.index))
    }

    /// The last purged index (entries in the snapshot).
    pub fn saved_purged(&self) -> Result<Option<u64>, StorageError> {
        Ok(self.meta::<pb::LogId>("purged")?.map(|l| l.index))
    }

    /// The voters of the last membership entry the log holds, if any.
    pub fn last_voters(&self) -> Result<Option<std::collections::BTreeSet<u64>>, StorageError> {
        let f = self.file.lock();
        let (Some(first), Some(last)) = (f.first_index(), f.last_index()) else {
            return Ok(None);
        };
        let records = f
            .read(first, last + 1)
            .map_err(|e| log_err(ErrorVerb::Read, &e))?;
        drop(f);
        let mut voters = None;
        for (i, raw) in &records {
            if let openraft::EntryPayload::Membership(m) = Self::decode(*i, raw)?.payload {
                voters = Some(m.voter_ids().collect());
            }
        }
        Ok(voters)
    }

    fn meta<T: prost::Message + Default>(&self, name: &str) -> Result<Option<T>, StorageError> {
        let raw = self
            .file
            .lock()
            .read_meta(name)
            .map_err(|e| log_err(ErrorVerb::Read, &e))?;
        raw.map(|b| T::decode(&b[..]))
            .transpose()
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))
    }

    fn set_meta(&self, name: &str, value: &impl prost::Message) -> Result<(), StorageError> {
        let written = self.file.lock().write_meta(name, &value.encode_to_vec());
        self.failed(&format!("raft {name} file"), written)
            .map_err(|e| log_err(ErrorVerb::Write, &e))
    }

    /// Whether the store holds a vote, an entry, or a purge point (entries
    /// folded into a snapshot): false only on a fresh volume.
    pub fn holds_state(&self) -> Result<bool, StorageError> {
        if self.file.lock().last_index().is_some() {
            return Ok(true);
        }
        Ok(self.meta::<pb::Vote>("vote")?.is_some() || self.meta::<pb::LogId>("purged")?.is_some())
    }

    fn decode(index: u64, raw: &Bytes) -> Result<Entry, StorageError> {
        let e = pb::Entry::decode(raw.clone())
            .map_err(|e| io_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, &e))?;
        convert::entry_from(e)
            .map_err(|e| io_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, &e))
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let f = self.file.lock();
        let Some(last) = f.last_index() else {
            return Ok(None);
        };
        let records = f
            .read(last, last + 1)
            .map_err(|e| log_err(ErrorVerb::Read, &e))?;
        drop(f);
        match records.first() {
            Some((i, raw)) => Ok(Some(Self::decode(*i, raw)?.log_id)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        let records = self
            .file
            .lock()
            .read(start, end)
            .map_err(|e| log_err(ErrorVerb::Read, &e))?;
        records
            .iter()
            .map(|(i, raw)| Self::decode(*i, raw))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.meta::<pb::LogId>("purged")?.map(convert::log_id_from);
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.set_meta("vote", &convert::vote_to(vote))
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta::<pb::Vote>("vote")?
            .map(|v| convert::vote_from(Some(v)))
            .transpose()
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        match committed {
            Some(c) => self.set_meta("committed", &convert::log_id_to(&c)),
            None => Ok(()),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self
            .meta::<pb::LogId>("committed")?
            .map(convert::log_id_from);
        let purged = self.meta::<pb::LogId>("purged")?.map(convert::log_id_from);
        let last = self.last_entry_id()?.or(purged);
        // Only a member repaired by the operator (`--repair-log`) gets
        // here (a single node refuses to start instead, see log_repair):
        // replay what is here; the leader sends the rest once the member
        // is added again.
        if committed.is_some_and(|c| last.is_none_or(|l| c.index > l.index)) {
            tracing::warn!(
                ?committed,
                ?last,
                "raft log ends before its committed index (repaired member)"
            );
            return Ok(last);
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<(u64, Bytes)> = entries
            .into_iter()
            .map(|e| {
                (
                    e.log_id.index,
                    Bytes::from(convert::entry_to(&e).encode_to_vec()),
                )
            })
            .collect();
        let file = self.file.clone();
        // The fsync blocks; keep it off the runtime's worker threads.
        let result = tokio::task::spawn_blocking(move || file.lock().append(&records))
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        match self.failed("raft log append", result) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(log_err(ErrorVerb::Write, &e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cut = self.file.lock().truncate_from(log_id.index);
        self.failed("raft log truncate", cut)
            .map_err(|e| log_err(ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: if we crash in between, the
        // leftover entries below it are simply ignored.
        self.set_meta("purged", &convert::log_id_to(&log_id))?;
        let purged = self.file.lock().purge_to(log_id.index);
        self.failed("raft log purge", purged)
            .map_err(|e| log_err(ErrorVerb::Delete, &e))
    }
}
