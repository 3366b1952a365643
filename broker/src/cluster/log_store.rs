//! openraft's log storage on top of [`LogFile`]: entries are stored as
//! prost-encoded `raftmq.v1.Entry` records; vote, committed id and the last
//! purged id are small metadata blobs beside the segments.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use prost::Message as _;
use raftmq_proto::v1 as pb;

use super::convert;
use super::health::StorageHealth;
use super::log_file::{Damage, LogError, LogFile};
use super::meta_record;
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Clones share one [`LogFile`]; [`LogStore::reopen`] replaces it for all.
#[derive(Clone)]
pub struct LogStore {
    file: Arc<Mutex<LogFile>>,
    dir: PathBuf,
    segment_bytes: u64,
    /// Told of every failed write, fsync or delete.
    health: Arc<StorageHealth>,
    /// When the committed index was last written durably (see
    /// `save_committed`).
    committed_synced: Option<Instant>,
}

/// How stale the committed index on disk may be after a power loss (it is
/// never stale after a process crash), see `save_committed`.
const COMMITTED_SYNC_EVERY: Duration = Duration::from_secs(1);

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
            committed_synced: None,
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
    /// The committed file's record is copied as it is.
    pub fn rewrite_meta(&self) -> Result<(), LogError> {
        let mut f = self.file.lock();
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
        Ok(self.committed_meta()?.map(|l| l.index))
    }

    /// The committed id as saved. It is written without fsync most of the
    /// time, so after a power loss the file may be torn, empty or garbage:
    /// that reads as no committed index (a lower one is always safe, see
    /// `save_committed`), with a warning, and never stops the node.
    fn committed_meta(&self) -> Result<Option<pb::LogId>, StorageError> {
        let raw = self
            .file
            .lock()
            .read_meta("committed")
            .map_err(|e| log_err(ErrorVerb::Read, &e))?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        match decode_committed(&raw) {
            Ok(id) => Ok(Some(id)),
            Err(why) => {
                tracing::warn!("raft committed.meta {why} (power loss?): read as none");
                Ok(None)
            }
        }
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

    /// Called by the Raft core on every commit, before the entries are
    /// applied (so before any of them is acknowledged). Fsyncing it each
    /// time tripled the flushes per commit, so it is written to the page
    /// cache only (a checksummed record overwritten in place, one write:
    /// `LogFile::write_meta_record`), and durably (replaced by rename) at
    /// most once per [`COMMITTED_SYNC_EVERY`]. Its uses, and why that
    /// staleness is safe:
    /// - a process crash (kill, panic, OOM) keeps the page cache: every use
    ///   below reads the last value written, exactly as with an fsync;
    /// - after a power loss it may be older (by up to a second of commits),
    ///   torn, empty or garbage (read as none, see `committed_meta`). A lower
    ///   value is what openraft allows: `read_committed` replays less at
    ///   start and the leader (a single node: itself, once elected)
    ///   commits the rest again; wills and sessions are restored from what
    ///   is applied, not from this index;
    /// - `log_repair` (start, supervisor reopen) counts entries at or
    ///   below it as committed. Entries are committed only after their
    ///   log fdatasync, so a write torn by the power loss lies above the
    ///   true committed index whatever the file says: the decision for a
    ///   torn tail is unchanged. Only the medium damaging the records of
    ///   the last second's commits in the same power loss would now be cut
    ///   as a torn tail rather than refused: that double fault is accepted.
    ///
    /// The vote, the purge point and the supervisor's rewrite stay fsynced.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let Some(c) = committed else {
            return Ok(());
        };
        let durable = self
            .committed_synced
            .is_none_or(|t| t.elapsed() >= COMMITTED_SYNC_EVERY);
        let payload = convert::log_id_to(&c).encode_to_vec();
        let written = self
            .file
            .lock()
            .write_meta_record("committed", &payload, durable);
        self.failed("raft committed file", written)
            .map_err(|e| log_err(ErrorVerb::Write, &e))?;
        if durable {
            self.committed_synced = Some(Instant::now());
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.committed_meta()?.map(convert::log_id_from);
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

/// `committed.meta`: a record (`meta_record`) holding a `LogId`, or from
/// before records a plain `LogId` (replaced by the first durable write).
fn decode_committed(raw: &[u8]) -> Result<pb::LogId, String> {
    let payload = match meta_record::decode(raw) {
        Ok(Some(payload)) => payload,
        Ok(None) => return decode_plain_committed(raw),
        Err(e) => return Err(e.to_string()),
    };
    pb::LogId::decode(payload).map_err(|e| format!("holds no committed id ({e})"))
}

fn decode_plain_committed(raw: &[u8]) -> Result<pb::LogId, String> {
    if raw.is_empty() {
        return Err("is empty".into());
    }
    let id = pb::LogId::decode(raw).map_err(|e| format!("does not read back ({e})"))?;
    // Garbage can parse (prost skips unknown fields), a record whose magic
    // was damaged too; neither is how the old writer encoded an id.
    if id.encode_to_vec() != raw {
        return Err("is not a committed id".into());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn the_committed_index_is_saved_and_a_garbled_file_reads_as_none() {
        let d = tempfile::tempdir().unwrap();
        let log_dir = d.path().join("log");
        let health = Arc::new(StorageHealth::new(d.path()));
        let (mut store, _) = LogStore::open(&log_dir, 1 << 20, health).unwrap();
        let id = |i| LogId::new(openraft::CommittedLeaderId::new(2, 1), i);
        // The first save is fsynced, the next ones within a second are not:
        // each is read back all the same (the page cache).
        for i in [3, 4, 9] {
            block_on(store.save_committed(Some(id(i)))).unwrap();
            assert_eq!(store.saved_committed().unwrap(), Some(i));
        }
        // What a power loss may leave of an unsynced rename: nothing,
        // zeros, garbage. The node starts as if nothing were committed.
        let file = log_dir.join("committed.meta");
        for junk in [&b""[..], &[0u8; 12][..], &[0xff, 0x07, 0x01][..]] {
            std::fs::write(&file, junk).unwrap();
            assert_eq!(store.saved_committed().unwrap(), None, "{junk:?}");
            assert_eq!(block_on(store.read_committed()).unwrap(), None);
        }
    }

    fn store(dir: &Path) -> LogStore {
        let health = Arc::new(StorageHealth::new(dir));
        LogStore::open(&dir.join("log"), 1 << 20, health).unwrap().0
    }

    fn id(index: u64) -> LogId {
        LogId::new(openraft::CommittedLeaderId::new(2, 1), index)
    }

    #[test]
    fn a_torn_or_flipped_committed_record_reads_as_none() {
        let d = tempfile::tempdir().unwrap();
        let mut store = store(d.path());
        let file = d.path().join("log/committed.meta");
        block_on(store.save_committed(Some(id(9)))).unwrap();
        let old = std::fs::read(&file).unwrap();
        // Within the second: overwritten in place.
        block_on(store.save_committed(Some(id(300)))).unwrap();
        let new = std::fs::read(&file).unwrap();
        assert_eq!(store.saved_committed().unwrap(), Some(300));
        // What a power loss may leave of an overwrite: a prefix of the new
        // record over the old one. Either whole record, or nothing.
        for cut in 0..=new.len() {
            let mut torn = new[..cut].to_vec();
            torn.extend_from_slice(&old[cut.min(old.len())..]);
            std::fs::write(&file, &torn).unwrap();
            let want = if torn == old {
                Some(9)
            } else if torn == new {
                Some(300)
            } else {
                None
            };
            assert_eq!(store.saved_committed().unwrap(), want, "cut at {cut}");
        }
        // A flipped bit anywhere in the record is refused; the padding
        // after it is not part of it.
        let used = 12 + convert::log_id_to(&id(300)).encoded_len();
        for at in 0..new.len() {
            for mask in [0x01, 0x10, 0x80, 0xff] {
                let mut bad = new.clone();
                bad[at] ^= mask;
                std::fs::write(&file, &bad).unwrap();
                let want = (at >= used).then_some(300);
                assert_eq!(store.saved_committed().unwrap(), want, "{at} ^ {mask:#x}");
            }
        }
    }

    #[test]
    fn a_committed_file_from_before_records_is_read_and_then_replaced() {
        let d = tempfile::tempdir().unwrap();
        let mut store = store(d.path());
        let file = d.path().join("log/committed.meta");
        let plain = convert::log_id_to(&id(7)).encode_to_vec();
        std::fs::write(&file, &plain).unwrap();
        assert_eq!(store.saved_committed().unwrap(), Some(7));
        // Damaged, or followed by anything, it is not read.
        for bad in [
            plain[..plain.len() - 1].to_vec(),
            [&plain[..], &[0u8; 2]].concat(),
        ] {
            std::fs::write(&file, &bad).unwrap();
            assert_eq!(store.saved_committed().unwrap(), None, "{bad:?}");
        }
        std::fs::write(&file, &plain).unwrap();
        block_on(store.save_committed(Some(id(8)))).unwrap();
        assert_eq!(store.saved_committed().unwrap(), Some(8));
        assert!(std::fs::read(&file).unwrap().starts_with(b"RMQm"));
    }
}
