//! Reading a segment back at start: which records are good, and, at the
//! first bad one, whether anything valid follows it. A bad record with
//! nothing valid after it may be a torn write; one followed by valid
//! records is damage to data that was already on disk (see
//! [`super::log_file::Damage`]).

/// A record longer than this is corruption, never an allocation.
pub const MAX_RECORD: usize = 256 * 1024 * 1024;
/// `[len u32][crc32 u32]`, then `[index u64][payload]` (which `len` counts).
pub const HEADER: usize = 8;
/// The smallest record: a header and an index.
pub const MIN_RECORD: usize = HEADER + 8;

pub fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// One good record: its index, where its payload starts, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub index: u64,
    pub payload_at: usize,
    pub payload_len: usize,
}

impl Record {
    pub fn end(&self) -> usize {
        self.payload_at + self.payload_len
    }

    pub fn start(&self) -> usize {
        self.payload_at - MIN_RECORD
    }
}

/// Parses one record at `at` that must hold index `expected` (any index
/// when `None`); `None` if it is torn, corrupt or out of sequence.
pub fn parse(buf: &[u8], at: usize, expected: Option<u64>) -> Option<Record> {
    let head = buf.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(head[4..8].try_into().ok()?);
    if !(8..=MAX_RECORD).contains(&len) {
        return None;
    }
    let body = buf.get(at + HEADER..at + HEADER + len)?;
    let index = u64::from_le_bytes(body[0..8].try_into().ok()?);
    if expected.is_some_and(|e| e != index) || crc(index, &body[8..]) != sum {
        return None;
    }
    Some(Record {
        index,
        payload_at: at + MIN_RECORD,
        payload_len: len - 8,
    })
}

/// The first valid record after byte `from` whose index is at least
/// `index`: a search byte by byte, since a damaged length loses the
/// framing. Cheap checks (length fits, index within what the remaining
/// bytes could hold) come before the CRC, so the search is linear.
pub fn resync(buf: &[u8], from: usize, index: u64) -> Option<Record> {
    let most = (buf.len().saturating_sub(from) / MIN_RECORD) as u64;
    let mut at = from + 1;
    while at + MIN_RECORD <= buf.len() {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().ok()?) as usize;
        let fits = (8..=MAX_RECORD).contains(&len) && at + HEADER + len <= buf.len();
        if fits {
            let i = u64::from_le_bytes(buf[at + HEADER..at + MIN_RECORD].try_into().ok()?);
            if (index..=index.saturating_add(most)).contains(&i) {
                if let Some(r) = parse(buf, at, Some(i)) {
                    return Some(r);
                }
            }
        }
        at += 1;
    }
    None
}

/// What a segment holds.
#[derive(Debug, Default)]
pub struct SegmentScan {
    pub records: Vec<Record>,
    /// Where the next record would go: after the last good record before
    /// any damage.
    pub end: usize,
    /// The first bad record the scan could not step over.
    pub bad: Option<Bad>,
    /// Records at or below the purge point that were damaged and skipped.
    pub skipped_purged: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bad {
    pub offset: usize,
    /// The index the bad record should hold.
    pub index: u64,
    /// A valid record found after it in the same segment.
    pub valid_after: Option<Record>,
}

/// Walks a segment whose first record holds `first`. Damage that covers
/// only purged records (at or below `purged`, already in the snapshot) is
/// stepped over when the records after it read back cleanly to the end of
/// the segment; any other damage stops the scan.
pub fn scan_segment(buf: &[u8], first: u64, purged: Option<u64>) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut at = 0usize;
    let mut expected = first;
    while at < buf.len() {
        if let Some(r) = parse(buf, at, Some(expected)) {
            scan.records.push(r);
            expected = r.index + 1;
            at = r.end();
            continue;
        }
        let valid_after = resync(buf, at, expected);
        let skips_only_purged = valid_after
            .is_some_and(|r| purged.is_some_and(|p| r.index - 1 <= p) && reads_to_the_end(buf, r));
        match valid_after {
            Some(r) if skips_only_purged => {
                scan.skipped_purged += r.index - expected;
                expected = r.index;
                at = r.start();
            }
            _ => {
                scan.bad = Some(Bad {
                    offset: at,
                    index: expected,
                    valid_after,
                });
                break;
            }
        }
    }
    scan.end = scan.records.last().map_or(0, |r| r.end());
    if scan.bad.is_none() {
        scan.end = buf.len();
    }
    scan
}

/// Whether records read back one after the other from `r` to the end.
fn reads_to_the_end(buf: &[u8], r: Record) -> bool {
    let mut at = r.end();
    let mut expected = r.index + 1;
    while at < buf.len() {
        match parse(buf, at, Some(expected)) {
            Some(next) => {
                at = next.end();
                expected += 1;
            }
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((payload.len() + 8) as u32).to_le_bytes());
        b.extend_from_slice(&crc(index, payload).to_le_bytes());
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn segment(range: std::ops::Range<u64>) -> Vec<u8> {
        range
            .flat_map(|i| record(i, format!("payload of {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn a_clean_segment_reads_whole() {
        let buf = segment(5..15);
        let s = scan_segment(&buf, 5, None);
        assert_eq!(s.records.len(), 10);
        assert_eq!(s.end, buf.len());
        assert!(s.bad.is_none());
    }

    #[test]
    fn every_flipped_byte_is_found_and_classified() {
        let buf = segment(1..8);
        let starts: Vec<usize> = scan_segment(&buf, 1, None)
            .records
            .iter()
            .map(|r| r.start())
            .collect();
        for at in 0..buf.len() {
            let mut b = buf.clone();
            b[at] ^= 0x5A;
            let s = scan_segment(&b, 1, None);
            let bad = s.bad.expect("a flip is always found");
            let hit = starts.iter().rposition(|s| *s <= at).unwrap();
            assert_eq!(bad.offset, starts[hit], "flip at {at}");
            assert_eq!(bad.index, hit as u64 + 1, "flip at {at}");
            assert_eq!(s.records.len(), hit);
            // Damage before the last record has valid records after it.
            let last = hit == starts.len() - 1;
            assert_eq!(bad.valid_after.is_none(), last, "flip at {at}");
            if let Some(r) = bad.valid_after {
                assert_eq!(r.index, hit as u64 + 2);
            }
        }
    }

    #[test]
    fn damage_among_purged_records_is_stepped_over() {
        let buf = segment(1..10);
        let mut b = buf.clone();
        b[3] ^= 1; // the length of record 1
        let s = scan_segment(&b, 1, Some(4));
        assert!(s.bad.is_none());
        assert_eq!(s.skipped_purged, 1);
        assert_eq!(s.records.first().map(|r| r.index), Some(2));
        assert_eq!(s.records.len(), 8);
        // Not when a skipped record is needed.
        let s = scan_segment(&b, 1, None);
        assert_eq!(s.bad.map(|b| b.index), Some(1));
    }

    #[test]
    fn a_huge_length_is_not_allocated() {
        let mut b = segment(1..3);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0u8; 12]);
        let s = scan_segment(&b, 1, None);
        let bad = s.bad.unwrap();
        assert_eq!((bad.index, bad.valid_after), (3, None));
        assert_eq!(s.end, b.len() - 16);
    }
}
