//! Test-only fault injection into the node's own storage: fails the k-th
//! write or fsync of the log, of a metadata file (vote, committed index) or
//! of a snapshot with EIO, to reach the error paths a full disk cannot
//! (a tmpfs never fails an fsync). Compiled in only with the
//! `fault-injection` feature (the `raftmq-faulty` binary the tests build);
//! in every other build [`hit`] is an empty inline function.
//!
//! `FAULT_INJECTION="log-sync@5,meta-write@3+2"`: the 5th log fsync fails,
//! and metadata writes 3 and 4 fail. Counting starts at 1 for each point.
//! (Not a `RAFTMQ_*` name: those are configuration keys.)

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    LogWrite,
    LogSync,
    MetaWrite,
    MetaSync,
    SnapshotWrite,
    /// Not an error: the first byte of a snapshot chunk sent to a follower
    /// is flipped (see [`flip`]).
    SnapshotSendFlip,
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use super::Point;

    const POINTS: [(&str, Point); 6] = [
        ("log-write", Point::LogWrite),
        ("log-sync", Point::LogSync),
        ("meta-write", Point::MetaWrite),
        ("meta-sync", Point::MetaSync),
        ("snapshot-write", Point::SnapshotWrite),
        ("snapshot-send-flip", Point::SnapshotSendFlip),
    ];

    struct Rule {
        point: Point,
        first: u64,
        count: u64,
    }

    fn rules() -> &'static Vec<Rule> {
        static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
        RULES.get_or_init(|| {
            let spec = std::env::var("FAULT_INJECTION").unwrap_or_default();
            let rules: Vec<Rule> = spec
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    parse(s.trim()).unwrap_or_else(|| panic!("FAULT_INJECTION: bad rule {s:?}"))
                })
                .collect();
            if !rules.is_empty() {
                tracing::warn!(%spec, "fault injection is on");
            }
            rules
        })
    }

    /// `name@k` or `name@k+n`.
    fn parse(s: &str) -> Option<Rule> {
        let (name, at) = s.split_once('@')?;
        let point = POINTS.iter().find(|(n, _)| *n == name)?.1;
        let (first, count) = match at.split_once('+') {
            Some((k, n)) => (k.parse().ok()?, n.parse().ok()?),
            None => (at.parse().ok()?, 1),
        };
        Some(Rule {
            point,
            first,
            count,
        })
    }

    static CALLS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

    pub fn fires(point: Point) -> bool {
        let rules = rules();
        if rules.is_empty() {
            return false;
        }
        let slot = POINTS.iter().position(|(_, p)| *p == point).unwrap_or(0);
        let n = CALLS[slot].fetch_add(1, Ordering::Relaxed) + 1;
        let fire = rules
            .iter()
            .any(|r| r.point == point && n >= r.first && n < r.first + r.count);
        if fire {
            tracing::warn!(?point, call = n, "fault injected");
        }
        fire
    }
}

/// Fails with EIO when a configured fault is due at `point`.
#[cfg(feature = "fault-injection")]
pub fn hit(point: Point) -> std::io::Result<()> {
    if imp::fires(point) {
        return Err(std::io::Error::from_raw_os_error(5));
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_point: Point) -> std::io::Result<()> {
    Ok(())
}

/// Flips the first byte of `data` when a configured fault is due.
#[cfg(feature = "fault-injection")]
pub fn flip(point: Point, data: &mut [u8]) {
    if let Some(b) = data.first_mut() {
        if imp::fires(point) {
            *b ^= 0xFF;
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn flip(_point: Point, _data: &mut [u8]) {}
