//! openraft's log storage on top of [`LogFile`]: entries are stored as
//! prost-encoded `raftmq.v1.Entry` records; vote, committed id and the last
//! purged id are small metadata blobs beside the segments.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use prost::Message as _;
use raftmq_proto::v1 as pb;

use super::convert;
use super::log_file::{LogError, LogFile};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Segments roll over at this size; purge frees whole segments.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct LogStore {
    file: Arc<Mutex<LogFile>>,
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
    /// Opens the log in `dir`; a torn tail is cut off and logged.
    pub fn open(dir: &Path) -> Result<LogStore, LogError> {
        let (file, recovery) = LogFile::open(dir, SEGMENT_BYTES)?;
        if recovery.discarded_bytes > 0 {
            tracing::warn!(
                discarded_bytes = recovery.discarded_bytes,
                at = ?recovery.discarded_at,
                "raft log: discarded a torn or corrupt tail"
            );
        }
        Ok(LogStore {
            file: Arc::new(Mutex::new(file)),
        })
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
        self.file
            .lock()
            .write_meta(name, &value.encode_to_vec())
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
        // A damaged tail may have held committed entries: they are gone
        // from this disk, so replay only what is here and let the leader
        // send the rest again.
        if committed.is_some_and(|c| last.is_none_or(|l| c.index > l.index)) {
            tracing::warn!(
                ?committed,
                ?last,
                "raft log ends before its committed index; the leader resends the rest"
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
        match result {
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
        self.file
            .lock()
            .truncate_from(log_id.index)
            .map_err(|e| log_err(ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: if we crash in between, the
        // leftover entries below it are simply ignored.
        self.set_meta("purged", &convert::log_id_to(&log_id))?;
        self.file
            .lock()
            .purge_to(log_id.index)
            .map_err(|e| log_err(ErrorVerb::Delete, &e))
    }
}
