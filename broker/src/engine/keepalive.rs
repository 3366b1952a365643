//! Keep alive for every connection of the broker in one wheel: each
//! connection is due at its client's last packet plus 1.5 times its keep
//! alive; one task looks at what is due every [`TICK`]. A connection
//! that heard from its client since it was armed is put back at its new
//! deadline (reads only store a tick number, they never touch the wheel);
//! one silent past it is told through its [`ConnSignal`].
//!
//! A `Sleep` in every connection's task was 112 bytes each, and the wheel
//! entry is 24; the deadline is at most a tick or two late, never early.
//!
//! [`ConnSignal`]: super::signal::ConnSignal

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::SessionCell;

/// How often due connections are looked at.
pub const TICK: Duration = Duration::from_millis(100);

pub(crate) struct KeepAliveWheel {
    epoch: Instant,
    /// Connections by the tick they are due at.
    due: Mutex<BTreeMap<u32, Vec<Entry>>>,
    started: AtomicBool,
}

struct Entry {
    cell: Weak<SessionCell>,
    conn_id: u64,
    /// 1.5 x keep alive, in ticks.
    ticks: u32,
}

impl KeepAliveWheel {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(KeepAliveWheel {
            epoch: Instant::now(),
            due: Mutex::new(BTreeMap::new()),
            started: AtomicBool::new(false),
        })
    }

    /// Ticks since the wheel was made.
    pub(crate) fn now(&self) -> u32 {
        let ticks = self.epoch.elapsed().as_millis() / TICK.as_millis();
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// Watches connection `conn_id` of `cell`: it is told once its client
    /// has been silent for `limit` (1.5 x keep alive) since the last tick
    /// stored with [`super::signal::ConnSignal::heard`].
    pub(crate) fn arm(self: &Arc<Self>, cell: &Arc<SessionCell>, conn_id: u64, limit: Duration) {
        let ticks = ticks_of(limit);
        let entry = Entry {
            cell: Arc::downgrade(cell),
            conn_id,
            ticks,
        };
        self.insert(deadline(cell.signal.last_heard(), ticks), entry);
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    fn insert(&self, due: u32, entry: Entry) {
        self.due.lock().entry(due).or_default().push(entry);
    }

    /// Tells every connection due by `now` and silent past its deadline;
    /// puts the others back at theirs.
    fn expire(&self, now: u32) {
        let mut ripe = Vec::new();
        {
            let mut due = self.due.lock();
            while let Some(first) = due.first_entry() {
                if *first.key() > now {
                    break;
                }
                ripe.extend(first.remove());
            }
        }
        for entry in ripe {
            let Some(cell) = entry.cell.upgrade() else {
                continue;
            };
            if !cell.signal.is_bound(entry.conn_id) {
                continue;
            }
            let at = deadline(cell.signal.last_heard(), entry.ticks);
            if at > now {
                self.insert(at, entry);
            } else {
                cell.signal.keepalive_due(entry.conn_id);
            }
        }
    }

    /// Whether a client last heard at `heard` (ticks) is silent past
    /// `limit` at `now`.
    pub(crate) fn silent(heard: u32, limit: Duration, now: u32) -> bool {
        now >= deadline(heard, ticks_of(limit))
    }
}

fn ticks_of(limit: Duration) -> u32 {
    u32::try_from(limit.as_millis().div_ceil(TICK.as_millis())).unwrap_or(u32::MAX)
}

/// The tick a client heard at `heard` is due at. One tick more than the
/// limit: `heard` is rounded down, so without it a client could be closed
/// up to a tick before its 1.5 x keep alive.
fn deadline(heard: u32, ticks: u32) -> u32 {
    heard.saturating_add(ticks).saturating_add(1)
}

/// Looks at the wheel every tick while the broker is there.
async fn sweep(wheel: Weak<KeepAliveWheel>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let Some(wheel) = wheel.upgrade() else {
            return;
        };
        wheel.expire(wheel.now());
    }
}
