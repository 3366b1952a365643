//! The durable Raft log of one node: append-only segment files of
//! checksummed records, our own format rather than an embedded database,
//! because the log's life is simple (append, truncate the tail, drop the
//! head) and a torn write must be found and cut off, never served.
//!
//! Record: `[len u32 LE][crc32 u32 LE][index u64 LE][payload]`, where `len`
//! counts index + payload and the CRC covers them. Segment files are named
//! by their first index (`00000000000000000001.log`), so purging is
//! deleting whole files. Each `append` call is written and fsynced once
//! (group commit).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// A record longer than this is corruption, never an allocation.
const MAX_RECORD: usize = 256 * 1024 * 1024;
const HEADER: usize = 8;

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
    #[error("{path}: corrupt record at byte {offset} in a segment that is not the last")]
    Corrupt { path: PathBuf, offset: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub records: u64,
    /// Bytes cut off the tail (a torn or corrupt last write).
    pub discarded_bytes: u64,
    pub discarded_at: Option<(PathBuf, u64)>,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: File,
    len: u64,
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
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Parses one record at `at`; `None` if it is torn or corrupt.
fn parse(buf: &[u8], at: usize) -> Option<(u64, usize, usize)> {
    let head = buf.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(head[4..8].try_into().ok()?);
    if !(8..=MAX_RECORD).contains(&len) {
        return None;
    }
    let body = buf.get(at + HEADER..at + HEADER + len)?;
    let index = u64::from_le_bytes(body[0..8].try_into().ok()?);
    if crc(index, &body[8..]) != sum {
        return None;
    }
    Some((index, at + HEADER + 8, len - 8))
}

impl LogFile {
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
        };
        let purged = log.purge_point()?;
        let mut recovery = Recovery::default();
        let count = firsts.len();
        let mut expected: Option<u64> = None;
        for (n, first) in firsts.into_iter().enumerate() {
            let path = dir.join(segment_name(first));
            let buf = fs::read(&path).map_err(io(&path))?;
            let mut at = 0usize;
            let mut bad = false;
            while at < buf.len() {
                match parse(&buf, at) {
                    Some((index, start, len)) if expected.is_none_or(|e| e == index) => {
                        if purged.is_none_or(|p| index > p) {
                            log.index.insert(
                                index,
                                Slot {
                                    segment: first,
                                    offset: start as u64,
                                    len: len as u32,
                                },
                            );
                        }
                        expected = Some(index + 1);
                        recovery.records += 1;
                        at = start + len;
                    }
                    _ => {
                        bad = true;
                        break;
                    }
                }
            }
            if bad && n + 1 < count {
                return Err(LogError::Corrupt {
                    path,
                    offset: at as u64,
                });
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            if bad {
                // A torn tail: cut it so it is never read, nor appended after.
                recovery.discarded_bytes = (buf.len() - at) as u64;
                recovery.discarded_at = Some((path.clone(), at as u64));
                file.set_len(at as u64).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
            }
            log.segments.insert(
                first,
                Segment {
                    first,
                    path,
                    file,
                    len: at as u64,
                },
            );
        }
        Ok((log, recovery))
    }

    pub fn first_index(&self) -> Option<u64> {
        self.index.keys().next().copied()
    }

    pub fn last_index(&self) -> Option<u64> {
        self.index.keys().next_back().copied()
    }

    pub fn append(&mut self, records: &[(u64, Bytes)]) -> Result<(), LogError> {
        let Some((first, _)) = records.first() else {
            return Ok(());
        };
        let start = self.last_index().map_or(*first, |l| l + 1);
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
                    offset: offset + (HEADER + 8) as u64,
                    len: payload.len() as u32,
                },
            );
        }
        self.flush(&mut buf, &mut touched)?;
        for first in touched {
            if let Some(s) = self.segments.get(&first) {
                s.file.sync_data().map_err(io(&s.path))?;
            }
        }
        Ok(())
    }

    /// Writes `buf` at the end of the newest segment.
    fn flush(&mut self, buf: &mut Vec<u8>, touched: &mut Vec<u64>) -> Result<(), LogError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(s) = self.segments.values_mut().next_back() else {
            return Ok(());
        };
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
        let Some(slot) = self.index.get(&index).copied() else {
            // Nothing at or after `index` unless the log starts later.
            let later: Vec<u64> = self.index.range(index..).map(|(i, _)| *i).collect();
            if later.is_empty() {
                return Ok(());
            }
            return self.truncate_from(later[0]);
        };
        let record_start = slot.offset - (HEADER + 8) as u64;
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
        }
        sync_dir(&self.dir)?;
        self.index.split_off(&index);
        Ok(())
    }

    pub fn purge_to(&mut self, index: u64) -> Result<(), LogError> {
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

    pub fn write_meta(&self, name: &str, bytes: &[u8]) -> Result<(), LogError> {
        let path = self.dir.join(format!("{name}.meta"));
        let tmp = self.dir.join(format!("{name}.meta.tmp"));
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }

    pub fn read_meta(&self, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        let path = self.dir.join(format!("{name}.meta"));
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
        assert_eq!(rec.discarded_bytes, 0);
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
    fn torn_and_garbled_tails_are_cut() {
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
            assert_eq!(log.last_index(), Some(8), "chop {chop}");
            assert!(rec.discarded_bytes > 0);
            log.append(&recs(9..11)).unwrap();
            drop(log);
            let (log, rec) = LogFile::open(d.path(), 1 << 20).unwrap();
            assert_eq!(rec.discarded_bytes, 0);
            assert_eq!(log.read(1, 11).unwrap(), recs(1..11));
        }
        // Flipped bytes in the last payload.
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(d.path(), 1 << 20).unwrap();
        log.append(&recs(1..5)).unwrap();
        drop(log);
        let seg = last_segment(d.path());
        let mut b = fs::read(&seg).unwrap();
        let n = b.len();
        b[n - 3] ^= 0xFF;
        fs::write(&seg, &b).unwrap();
        let (log, rec) = LogFile::open(d.path(), 1 << 20).unwrap();
        assert_eq!(log.last_index(), Some(3));
        assert!(rec.discarded_at.is_some());
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
        assert_eq!(rec.discarded_bytes, 16);
    }

    #[test]
    fn meta_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let (log, _) = LogFile::open(d.path(), 1024).unwrap();
        assert_eq!(log.read_meta("vote").unwrap(), None);
        log.write_meta("vote", b"one").unwrap();
        log.write_meta("vote", b"two").unwrap();
        drop(log);
        let (log, _) = LogFile::open(d.path(), 1024).unwrap();
        assert_eq!(log.read_meta("vote").unwrap().as_deref(), Some(&b"two"[..]));
    }
}
