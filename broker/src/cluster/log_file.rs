//! The durable Raft log of one node: append-only segment files of
//! checksummed records, our own format rather than an embedded database,
//! because the log's life is simple (append, truncate the tail, drop the
//! head) and damage must be found, told apart from a torn write, and never
//! served.
//!
//! Record: `[len u32 LE][crc32 u32 LE][index u64 LE][payload]`, where `len`
//! counts index + payload and the CRC covers them. Segment files are named
//! by their first index (`00000000000000000001.log`), so purging is
//! deleting whole files. Each `append` call is written and fsynced once
//! (group commit).
//!
//! Opening reads every record back ([`super::log_scan`]). A bad record is
//! [`Damage`]; the log is usable only after the caller decides what to do
//! with it ([`LogFile::cut_damage`], or refusing to start): only the caller
//! knows which entries were committed.
//!
//! A failed write or fsync is never retried over what the page cache holds:
//! the tail is cut back to the length of the last successful fsync (which
//! drops the cached pages past it), so that what follows is written afresh.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::fault::{self, Point};
use super::log_scan::{self, crc, MIN_RECORD};
use super::meta_record;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log append out of order: expected index {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("the log has damage that was not dealt with: {0}")]
    Damaged(Box<Damage>),
    #[error("an earlier write failed and could not be undone; the log must be reopened")]
    Poisoned,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A record that does not read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    /// Byte offset of the bad record in its segment.
    pub offset: u64,
    /// The log index the bad record should hold.
    pub index: u64,
    /// Whether it is the end of the log: nothing valid after it. Such a
    /// record may be a write the node never finished (a torn write);
    /// anything else is damage to data that was on disk.
    pub at_tail: bool,
    /// Bytes from the bad record to the end of its segment.
    pub bytes: u64,
    /// The last index that reads back after it (in this or a later
    /// segment): what cutting at the damage loses beyond the bad record.
    pub last_after: Option<u64>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: bad record at byte {} (log index {}), {}",
            self.path.display(),
            self.offset,
            self.index,
            match self.last_after {
                None => "nothing valid after it".to_string(),
                Some(last) => format!("valid records after it up to index {last}"),
            }
        )
    }
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub records: u64,
    /// Damaged records below the purge point, stepped over (harmless).
    pub skipped_purged: u64,
    pub damage: Option<Damage>,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: File,
    len: u64,
    /// Length at the last successful fsync.
    synced: u64,
}

/// Where a record lives: segment (by first index), offset, payload length.
#[derive(Clone, Copy)]
struct Slot {
    segment: u64,
    offset: u64,
    len: u32,
}

pub struct LogFile {
    dir: PathBuf,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    index: BTreeMap<u64, Slot>,
    /// Damage found at open and not cut yet: nothing may be written.
    damage: Option<Damage>,
    poisoned: bool,
    /// Metadata files written as records, each open since its last
    /// durable write, to be overwritten in place (`write_meta_record`).
    open_meta: HashMap<String, File>,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn open_rw(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))
}

impl LogFile {
    /// Reads every segment in `dir` back. With damage, the log holds the
    /// records before it and refuses writes until [`LogFile::cut_damage`];
    /// nothing on disk is changed by opening.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(LogFile, Recovery), LogError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut firsts: Vec<u64> = fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut log = LogFile {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            damage: None,
            poisoned: false,
            open_meta: HashMap::new(),
        };
        let purged = log.purge_point()?;
        let mut recovery = Recovery::default();
        let mut expected: Option<u64> = None;
        for (n, first) in firsts.iter().copied().enumerate() {
            let path = dir.join(segment_name(first));
            // A segment missing from the sequence (its records are gone,
            // unless all were purged), or one overlapping the last.
            let purged_gap = |e: u64| e < first && purged.is_some_and(|p| first - 1 <= p);
            if let Some(e) = expected.filter(|e| *e != first && !purged_gap(*e)) {
                recovery.damage = Some(Damage {
                    path: dir.join(segment_name(e)),
                    offset: 0,
                    index: e,
                    at_tail: false,
                    bytes: 0,
                    last_after: Self::last_after(dir, &firsts[n..]),
                });
                break;
            }
            let buf = fs::read(&path).map_err(io(&path))?;
            let scan = log_scan::scan_segment(&buf, first, purged);
            recovery.skipped_purged += scan.skipped_purged;
            for r in &scan.records {
                recovery.records += 1;
                if purged.is_none_or(|p| r.index > p) {
                    log.index.insert(
                        r.index,
                        Slot {
                            segment: first,
                            offset: r.payload_at as u64,
                            len: r.payload_len as u32,
                        },
                    );
                }
            }
            expected = Some(scan.records.last().map_or(first, |r| r.index + 1));
            let file = open_rw(&path)?;
            let end = scan.end as u64;
            log.segments.insert(
                first,
                Segment {
                    first,
                    path: path.clone(),
                    file,
                    len: end,
                    synced: end,
                },
            );
            if let Some(bad) = scan.bad {
                let later = Self::last_after(dir, &firsts[n + 1..]);
                let last_after = bad.valid_after.map(|r| Self::last_in(&buf, r)).max(later);
                recovery.damage = Some(Damage {
                    path,
                    offset: bad.offset as u64,
                    index: bad.index,
                    at_tail: last_after.is_none(),
                    bytes: (buf.len() - bad.offset) as u64,
                    last_after,
                });
                break;
            }
        }
        log.damage = recovery.damage.clone();
        if log.damage.is_none() {
            // What a killed process wrote may still be only in the page
            // cache: make everything this node now relies on durable.
            if let Some(s) = log.segments.values().next_back() {
                s.file.sync_all().map_err(io(&s.path))?;
            }
        }
        Ok((log, recovery))
    }

    /// The last index that reads back in segments `firsts` (each scanned
    /// on its own), for a damage report.
    fn last_after(dir: &Path, firsts: &[u64]) -> Option<u64> {
        firsts.iter().rev().find_map(|first| {
            let buf = fs::read(dir.join(segment_name(*first))).ok()?;
            let scan = log_scan::scan_segment(&buf, *first, None);
            scan.records.last().map(|r| r.index)
        })
    }

    /// The last index reading on from a valid record `r` in `buf`.
    fn last_in(buf: &[u8], r: log_scan::Record) -> u64 {
        let mut last = r;
        while let Some(next) = log_scan::parse(buf, last.end(), Some(last.index + 1)) {
            last = next;
        }
        last.index
    }

    /// Cuts the log at the damage found by `open`: the bad record, every
    /// record after it and every later segment are deleted. The caller has
    /// decided that nothing it needs is lost (see `log_store`).
    pub fn cut_damage(&mut self) -> Result<(), LogError> {
        let Some(d) = self.damage.take() else {
            return Ok(());
        };
        // Opening stopped at the damage: every segment it did not load
        // lies after it.
        let later: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let f: u64 = name.strip_suffix(".log")?.parse().ok()?;
                (!self.segments.contains_key(&f)).then(|| e.path())
            })
            .collect();
        for path in later {
            fs::remove_file(&path).map_err(io(&path))?;
        }
        if let Some(s) = self.segments.values_mut().find(|s| s.path == d.path) {
            s.file.set_len(d.offset).map_err(io(&s.path))?;
            s.file.sync_all().map_err(io(&s.path))?;
            s.len = d.offset;
            s.synced = d.offset;
        }
        sync_dir(&self.dir)
    }

    pub fn first_index(&self) -> Option<u64> {
        self.index.keys().next().copied()
    }

    pub fn last_index(&self) -> Option<u64> {
        self.index.keys().next_back().copied()
    }

    fn writable(&self) -> Result<(), LogError> {
        if let Some(d) = &self.damage {
            return Err(LogError::Damaged(Box::new(d.clone())));
        }
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        Ok(())
    }

    /// Appends and fsyncs `records`. On failure nothing of them stays: the
    /// tail goes back to its last fsynced length (see the module comment).
    pub fn append(&mut self, records: &[(u64, Bytes)]) -> Result<(), LogError> {
        self.writable()?;
        let Some((first, _)) = records.first() else {
            return Ok(());
        };
        let before = self
            .segments
            .values()
            .next_back()
            .map(|s| (s.first, s.synced));
        let result = self.write_and_sync(records);
        if result.is_err() {
            if let Err(e) = self.roll_back(*first, before) {
                tracing::error!("raft log: a failed append could not be undone: {e}");
                self.poisoned = true;
            }
        }
        result
    }

    fn write_and_sync(&mut self, records: &[(u64, Bytes)]) -> Result<(), LogError> {
        let first = records.first().map_or(0, |r| r.0);
        let start = self.last_index().map_or(first, |l| l + 1);
        let mut touched: Vec<u64> = Vec::new();
        let mut buf = Vec::new();
        for (expected, (index, payload)) in (start..).zip(records) {
            if *index != expected {
                return Err(LogError::Gap {
                    expected,
                    got: *index,
                });
            }
            let rolls = self
                .segments
                .values()
                .next_back()
                .is_none_or(|s| s.len + buf.len() as u64 >= self.segment_bytes);
            if rolls {
                self.flush(&mut buf, &mut touched)?;
                self.new_segment(*index)?;
            }
            let seg = self.segments.values().next_back().map_or(0, |s| s.first);
            let offset = self.segments.get(&seg).map_or(0, |s| s.len) + buf.len() as u64;
            buf.extend_from_slice(&((payload.len() + 8) as u32).to_le_bytes());
            buf.extend_from_slice(&crc(*index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(payload);
            self.index.insert(
                *index,
                Slot {
                    segment: seg,
                    offset: offset + MIN_RECORD as u64,
                    len: payload.len() as u32,
                },
            );
        }
        self.flush(&mut buf, &mut touched)?;
        for first in touched {
            if let Some(s) = self.segments.get_mut(&first) {
                fault::hit(Point::LogSync).map_err(io(&s.path))?;
                s.file.sync_data().map_err(io(&s.path))?;
                s.synced = s.len;
            }
        }
        Ok(())
    }

    /// Undoes a failed append from index `first`: segments it created are
    /// deleted, the one it extended cut back to its fsynced length.
    fn roll_back(&mut self, first: u64, before: Option<(u64, u64)>) -> Result<(), LogError> {
        self.index.split_off(&first);
        let created: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|f| before.is_none_or(|(b, _)| *f > b))
            .collect();
        for f in created {
            if let Some(s) = self.segments.remove(&f) {
                fs::remove_file(&s.path).map_err(io(&s.path))?;
            }
        }
        if let Some((b, synced)) = before {
            if let Some(s) = self.segments.get_mut(&b) {
                s.file.set_len(synced).map_err(io(&s.path))?;
                s.file.sync_all().map_err(io(&s.path))?;
                s.len = synced;
            }
        }
        sync_dir(&self.dir)
    }

    /// Writes `buf` at the end of the newest segment.
    fn flush(&mut self, buf: &mut Vec<u8>, touched: &mut Vec<u64>) -> Result<(), LogError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(s) = self.segments.values_mut().next_back() else {
            return Ok(());
        };
        fault::hit(Point::LogWrite).map_err(io(&s.path))?;
        s.file.write_all_at(buf, s.len).map_err(io(&s.path))?;
        s.len += buf.len() as u64;
        if !touched.contains(&s.first) {
            touched.push(s.first);
        }
        buf.clear();
        Ok(())
    }

    fn new_segment(&mut self, first: u64) -> Result<(), LogError> {
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            first,
            Segment {
                first,
                path,
                file,
                len: 0,
                synced: 0,
            },
        );
        Ok(())
    }

    pub fn read(&self, start: u64, end: u64) -> Result<Vec<(u64, Bytes)>, LogError> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        for (index, slot) in self.index.range(start..end) {
            let Some(s) = self.segments.get(&slot.segment) else {
                continue;
            };
            let mut payload = vec![0u8; slot.len as usize];
            s.file
                .read_exact_at(&mut payload, slot.offset)
                .map_err(io(&s.path))?;
            out.push((*index, Bytes::from(payload)));
        }
        Ok(out)
    }

    pub fn truncate_from(&mut self, index: u64) -> Result<(), LogError> {
        self.writable()?;
        let Some(slot) = self.index.range(index..).next().map(|(_, s)| *s) else {
            return Ok(());
        };
        let from = self.index.range(index..).next().map_or(index, |(i, _)| *i);
        let result = self.cut_at(slot);
        if result.is_err() {
            self.poisoned = true;
        }
        result?;
        self.index.split_off(&from);
        Ok(())
    }

    fn cut_at(&mut self, slot: Slot) -> Result<(), LogError> {
        let record_start = slot.offset - MIN_RECORD as u64;
        let drop: Vec<u64> = self
            .segments
            .range(slot.segment + 1..)
            .map(|(f, _)| *f)
            .collect();
        for first in drop {
            if let Some(s) = self.segments.remove(&first) {
                fs::remove_file(&s.path).map_err(io(&s.path))?;
            }
        }
        if let Some(s) = self.segments.get_mut(&slot.segment) {
            s.file.set_len(record_start).map_err(io(&s.path))?;
            s.file.sync_all().map_err(io(&s.path))?;
            s.len = record_start;
            s.synced = record_start;
        }
        sync_dir(&self.dir)
    }

    pub fn purge_to(&mut self, index: u64) -> Result<(), LogError> {
        self.writable()?;
        // The purge point first: after a crash the reopened log hides what
        // is at or below it even if its segment still exists.
        self.write_meta("purge_point", &index.to_le_bytes())?;
        let keep = self.index.split_off(&(index + 1));
        self.index = keep;
        // Delete every segment whose records are all purged.
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        for (n, first) in firsts.iter().enumerate() {
            let next_first = firsts.get(n + 1).copied();
            let all_purged = match next_first {
                Some(next) => next <= index + 1,
                None => self.index.is_empty(),
            };
            if all_purged {
                if let Some(s) = self.segments.remove(first) {
                    fs::remove_file(&s.path).map_err(io(&s.path))?;
                }
            }
        }
        sync_dir(&self.dir)
    }

    fn purge_point(&self) -> Result<Option<u64>, LogError> {
        Ok(self
            .read_meta("purge_point")?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.meta"))
    }

    /// Replaces a small metadata file atomically and durably: write a
    /// temporary file, fsync it, rename it over the old one, fsync the
    /// directory.
    pub fn write_meta(&mut self, name: &str, bytes: &[u8]) -> Result<(), LogError> {
        self.replace_meta(name, bytes).map(drop)
    }

    /// [`LogFile::write_meta`], returning the new file (open for writing).
    fn replace_meta(&mut self, name: &str, bytes: &[u8]) -> Result<File, LogError> {
        // A file kept open is the one replaced: never to be written again.
        self.open_meta.remove(name);
        let path = self.meta_path(name);
        let tmp = self.dir.join(format!("{name}.meta.tmp"));
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        fault::hit(Point::MetaWrite).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        fault::hit(Point::MetaSync).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        Ok(f)
    }

    /// Writes a metadata file that changes often (the committed index) as a
    /// self-checking record ([`meta_record`]). Durably: replaced as by
    /// [`LogFile::write_meta`], and kept open. Otherwise overwritten in
    /// place, one write without fsync and nothing else (a rename per write
    /// cost more than the log's own flush: ext4 writes a file renamed over
    /// another out at once); replaced when no file is open (the first
    /// write, or the one after a failed write). An overwrite is whole
    /// after a process crash (the page cache keeps it); after a power loss
    /// the file may hold an older record or a torn one, which does not
    /// read back (see `log_store`, committed).
    pub fn write_meta_record(
        &mut self,
        name: &str,
        payload: &[u8],
        durable: bool,
    ) -> Result<(), LogError> {
        let record = meta_record::encode(payload);
        if let Some(f) = self.open_meta.get(name).filter(|_| !durable) {
            let written = fault::hit(Point::MetaWrite).and_then(|()| f.write_all_at(&record, 0));
            if let Err(e) = written {
                // What the file now holds is unknown: the next write
                // replaces it.
                self.open_meta.remove(name);
                return Err(io(&self.meta_path(name))(e));
            }
            return Ok(());
        }
        let f = self.replace_meta(name, &record)?;
        self.open_meta.insert(name.to_string(), f);
        Ok(())
    }

    pub fn read_meta(&self, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        let path = self.meta_path(name);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(range: std::ops::Range<u64>) -> Vec<(u64, Bytes)> {
        range
            .map(|i| (i, Bytes::from(format!("entry {i} ").repeat(5))))
            .collect()
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        v.sort();
        v.pop().unwrap()
    }

    #[test]
    fn append_read_reopen_across_segments() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 256).unwrap();
        log.append(&recs(1..50)).unwrap();
        log.append(&recs(50..60)).unwrap();
        assert!(
            fs::read_dir(d.path()).unwrap().count() > 3,
            "several segments"
        );
        assert_eq!(log.read(10, 13).unwrap(), recs(10..13));
        drop(log);
        let (log, rec) = LogFile::open(d.path(), 256).unwrap();
        assert_eq!(rec.records, 59);
        assert!(rec.damage.is_none());
        assert_eq!((log.first_index(), log.last_index()), (Some(1), Some(59)));
        assert_eq!(log.read(0, 100).unwrap(), recs(1..60));
    }

    #[test]
    fn gaps_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 1024).unwrap();
        log.append(&recs(5..8)).unwrap();
        assert!(matches!(
            log.append(&recs(9..10)),
            Err(LogError::Gap {
                expected: 8,
                got: 9
            })
        ));
    }

    #[test]
    fn truncate_then_append_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 300).unwrap();
        log.append(&recs(1..40)).unwrap();
        log.truncate_from(12).unwrap();
        assert_eq!(log.last_index(), Some(11));
        let other: Vec<(u64, Bytes)> = (12..15)
            .map(|i| (i, Bytes::from(format!("new {i}"))))
            .collect();
        log.append(&other).unwrap();
        drop(log);
        let (log, _) = LogFile::open(d.path(), 300).unwrap();
        assert_eq!(log.last_index(), Some(14));
        assert_eq!(log.read(12, 15).unwrap(), other);
        assert_eq!(log.read(1, 12).unwrap(), recs(1..12));
    }

    #[test]
    fn purge_deletes_segments_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 256).unwrap();
        log.append(&recs(1..60)).unwrap();
        let before = fs::read_dir(d.path()).unwrap().count();
        log.purge_to(40).unwrap();
        assert!(fs::read_dir(d.path()).unwrap().count() < before);
        assert_eq!(log.first_index(), Some(41));
        assert!(log.read(1, 41).unwrap().is_empty());
        drop(log);
        let (mut log, _) = LogFile::open(d.path(), 256).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (Some(41), Some(59)));
        // Purging everything, then appending past it (a snapshot install).
        log.purge_to(100).unwrap();
        assert_eq!(log.last_index(), None);
        log.append(&recs(101..103)).unwrap();
        drop(log);
        let (log, _) = LogFile::open(d.path(), 256).unwrap();
        assert_eq!(
            (log.first_index(), log.last_index()),
            (Some(101), Some(102))
        );
    }

    #[test]
    fn torn_and_garbled_tails_are_found_and_cut_on_request() {
        for chop in [1usize, 4, 9, 17, 30] {
            let d = tempfile::tempdir().unwrap();
            let (mut log, _) = LogFile::open(d.path(), 1 << 20).unwrap();
            log.append(&recs(1..10)).unwrap();
            drop(log);
            let seg = last_segment(d.path());
            let len = fs::metadata(&seg).unwrap().len();
            OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_len(len - chop as u64)
                .unwrap();
            let (mut log, rec) = LogFile::open(d.path(), 1 << 20).unwrap();
            let damage = rec.damage.expect("found");
            assert!(damage.at_tail && damage.index == 9, "chop {chop}: {damage}");
            assert_eq!(log.last_index(), Some(8), "chop {chop}");
            // Nothing is written over damage nobody decided about.
            assert!(matches!(
                log.append(&recs(9..10)),
                Err(LogError::Damaged(_))
            ));
            assert_eq!(fs::metadata(&seg).unwrap().len(), len - chop as u64);
            log.cut_damage().unwrap();
            log.append(&recs(9..11)).unwrap();
            drop(log);
            let (log, rec) = LogFile::open(d.path(), 1 << 20).unwrap();
            assert!(rec.damage.is_none());
            assert_eq!(log.read(1, 11).unwrap(), recs(1..11));
        }
    }

    #[test]
    fn damage_followed_by_valid_records_is_not_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 300).unwrap();
        log.append(&recs(1..30)).unwrap();
        drop(log);
        // A byte in the middle of the last segment.
        let seg = last_segment(d.path());
        let first: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let mut b = fs::read(&seg).unwrap();
        b[MIN_RECORD + 3] ^= 0x10;
        fs::write(&seg, &b).unwrap();
        let (_, rec) = LogFile::open(d.path(), 300).unwrap();
        let damage = rec.damage.unwrap();
        assert_eq!((damage.index, damage.offset), (first, 0));
        assert!(!damage.at_tail);
        assert_eq!(damage.last_after, Some(29));
        assert!(damage.to_string().contains("log index"), "{damage}");
    }

    #[test]
    fn damage_in_an_earlier_segment_names_its_index_and_what_follows() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 256).unwrap();
        log.append(&recs(1..40)).unwrap();
        drop(log);
        let first_seg = d.path().join(segment_name(1));
        let mut b = fs::read(&first_seg).unwrap();
        let n = b.len();
        b[n - 2] ^= 1; // the last record of the first segment
        fs::write(&first_seg, &b).unwrap();
        let (mut log, rec) = LogFile::open(d.path(), 256).unwrap();
        let damage = rec.damage.unwrap();
        assert!(!damage.at_tail, "later segments hold valid records");
        assert_eq!(damage.last_after, Some(39));
        let bad = damage.index;
        log.cut_damage().unwrap();
        drop(log);
        let (log, rec) = LogFile::open(d.path(), 256).unwrap();
        assert!(rec.damage.is_none());
        assert_eq!(log.last_index(), Some(bad - 1));
    }

    #[test]
    fn a_huge_length_in_the_tail_is_not_allocated() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 1 << 20).unwrap();
        log.append(&recs(1..3)).unwrap();
        drop(log);
        let seg = last_segment(d.path());
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&u32::MAX.to_le_bytes()).unwrap();
        f.write_all(&[0u8; 12]).unwrap();
        drop(f);
        let (log, rec) = LogFile::open(d.path(), 1 << 20).unwrap();
        assert_eq!(log.last_index(), Some(2));
        let damage = rec.damage.unwrap();
        assert_eq!((damage.bytes, damage.at_tail), (16, true));
    }

    #[test]
    fn a_missing_segment_is_damage() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 256).unwrap();
        log.append(&recs(1..40)).unwrap();
        drop(log);
        let mut segs: Vec<PathBuf> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        segs.sort();
        fs::remove_file(&segs[1]).unwrap();
        let (_, rec) = LogFile::open(d.path(), 256).unwrap();
        let damage = rec.damage.unwrap();
        assert!(!damage.at_tail);
        assert_eq!(damage.path, segs[1]);
    }

    #[test]
    fn a_failed_append_is_rolled_back_to_the_fsynced_length() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 1 << 20).unwrap();
        log.append(&recs(1..5)).unwrap();
        let seg = last_segment(d.path());
        let synced = fs::metadata(&seg).unwrap().len();
        // A gap is refused after part of the batch went to the page cache.
        let mut bad = recs(5..8);
        bad[2].0 = 9;
        assert!(matches!(log.append(&bad), Err(LogError::Gap { .. })));
        assert_eq!(fs::metadata(&seg).unwrap().len(), synced);
        assert_eq!(log.last_index(), Some(4));
        log.append(&recs(5..8)).unwrap();
        drop(log);
        let (log, rec) = LogFile::open(d.path(), 1 << 20).unwrap();
        assert!(rec.damage.is_none());
        assert_eq!(log.read(1, 8).unwrap(), recs(1..8));
    }

    #[test]
    fn meta_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 1024).unwrap();
        assert_eq!(log.read_meta("vote").unwrap(), None);
        log.write_meta("vote", b"one").unwrap();
        log.write_meta("vote", b"two").unwrap();
        drop(log);
        let (log, _) = LogFile::open(d.path(), 1024).unwrap();
        assert_eq!(log.read_meta("vote").unwrap().as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn a_meta_record_is_overwritten_in_place_and_replaced_when_durable() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("committed.meta");
        let inode = || fs::metadata(&path).unwrap().ino();
        let read = |log: &LogFile| {
            let raw = log.read_meta("committed").unwrap().unwrap();
            assert_eq!(raw.len(), meta_record::RECORD_BYTES, "{raw:?}");
            meta_record::decode(&raw).unwrap().unwrap().to_vec()
        };
        let (mut log, _) = LogFile::open(d.path(), 1024).unwrap();
        // None open yet: the first write replaces (creates) the file.
        log.write_meta_record("committed", b"one", false).unwrap();
        let first = inode();
        log.write_meta_record("committed", b"second", false)
            .unwrap();
        log.write_meta_record("committed", b"two", false).unwrap();
        assert_eq!((read(&log), inode()), (b"two".to_vec(), first));
        log.write_meta_record("committed", b"three", true).unwrap();
        let replaced = inode();
        assert_ne!(replaced, first);
        log.write_meta_record("committed", b"four", false).unwrap();
        assert_eq!((read(&log), inode()), (b"four".to_vec(), replaced));
        // The supervisor's rewrite replaces the file: later overwrites go
        // to the new one, not to the one it replaced.
        let raw = log.read_meta("committed").unwrap().unwrap();
        log.write_meta("committed", &raw).unwrap();
        assert_eq!(read(&log), b"four".to_vec());
        log.write_meta_record("committed", b"five", false).unwrap();
        assert_eq!(read(&log), b"five".to_vec());
        drop(log);
        let (log, _) = LogFile::open(d.path(), 1024).unwrap();
        assert_eq!(read(&log), b"five".to_vec());
        assert!(!d.path().join("committed.meta.tmp").exists());
    }
}
