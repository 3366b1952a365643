//! How a session's connection is told things: its session has something
//! to send (a wake), leave (a kick, with the reason code to send), or its
//! keep alive may be over (from the broker's [`KeepAliveWheel`]). One
//! waker slot beside the session, where each connection's task used to
//! carry a `Notified` future, a `oneshot` receiver and a keep-alive
//! `Sleep` (~300 bytes in every idle connection, and an allocation).
//!
//! [`KeepAliveWheel`]: super::keepalive::KeepAliveWheel

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::codec::reason;

/// What woke a connection, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Leave, sending this MQTT 5 reason code.
    Kicked(u8),
    /// The keep-alive wheel found the client silent past its deadline.
    KeepAlive,
    /// The session has something to send.
    Woken,
}

#[derive(Debug, Default)]
pub struct ConnSignal {
    /// A wake not seen yet (`Notify::notify_one`'s permit). Outside the
    /// lock: the publish path sets it for every copy it hands over.
    woken: AtomicBool,
    /// When the bound connection last heard from its client, in wheel
    /// ticks (see [`super::keepalive::KeepAliveWheel::now`]).
    last_heard: AtomicU32,
    slot: Mutex<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The bound connection's id (0: none).
    bound: u64,
    /// The bound connection's task, while it waits.
    waker: Option<Waker>,
    keepalive_due: bool,
    /// Connections told to leave that have not looked yet, with their
    /// reason codes (a takeover may kick one before the last has gone).
    kicked: Vec<(u64, u8)>,
}

impl ConnSignal {
    /// Wakes the bound connection: its session has something to send.
    pub fn wake(&self) {
        if self.woken.swap(true, Ordering::AcqRel) {
            // Not seen yet: whoever set it woke the task already.
            return;
        }
        let waker = self.slot.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Binds connection `conn_id`, which heard from its client at `now`.
    pub(crate) fn bind(&self, conn_id: u64, now: u32) {
        self.last_heard.store(now, Ordering::Relaxed);
        let mut s = self.slot.lock();
        s.bound = conn_id;
        s.keepalive_due = false;
    }

    /// Tells the bound connection, if any, to leave with `code`; whether
    /// one was bound (a kick goes once per connection: it unbinds).
    pub fn kick(&self, code: u8) -> bool {
        let mut s = self.slot.lock();
        if s.bound == 0 {
            return false;
        }
        let id = std::mem::take(&mut s.bound);
        s.kicked.push((id, code));
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Connection `conn_id` is gone: nothing of it is kept.
    pub(crate) fn unbind(&self, conn_id: u64) {
        let mut s = self.slot.lock();
        if s.bound == conn_id {
            s.bound = 0;
            s.waker = None;
            s.keepalive_due = false;
        }
        if !s.kicked.is_empty() {
            s.kicked.retain(|k| k.0 != conn_id);
            if s.kicked.is_empty() {
                // Its capacity too: offline sessions are most sessions.
                s.kicked = Vec::new();
            }
        }
    }

    /// The reason code connection `conn_id` was kicked with, if it was and
    /// has not looked yet.
    pub fn kicked(&self, conn_id: u64) -> Option<u8> {
        let s = self.slot.lock();
        s.kicked.iter().find(|k| k.0 == conn_id).map(|k| k.1)
    }

    pub(crate) fn is_bound(&self, conn_id: u64) -> bool {
        self.slot.lock().bound == conn_id
    }

    /// The client was heard from at `now` (wheel ticks).
    pub fn heard(&self, now: u32) {
        self.last_heard.store(now, Ordering::Relaxed);
    }

    pub fn last_heard(&self) -> u32 {
        self.last_heard.load(Ordering::Relaxed)
    }

    /// The keep-alive wheel's verdict for `conn_id`: silent too long.
    /// Whether it is still the bound connection (and so was told).
    pub(crate) fn keepalive_due(&self, conn_id: u64) -> bool {
        let mut s = self.slot.lock();
        if s.bound != conn_id {
            return false;
        }
        s.keepalive_due = true;
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// What connection `conn_id` has been told, most urgent first; when
    /// nothing, its task is woken at the next signal.
    pub fn poll(&self, conn_id: u64, cx: &mut Context<'_>) -> Poll<Signal> {
        let mut s = self.slot.lock();
        if let Some(i) = s.kicked.iter().position(|k| k.0 == conn_id) {
            let (_, code) = s.kicked.swap_remove(i);
            return Poll::Ready(Signal::Kicked(code));
        }
        if s.bound != conn_id {
            // Unbound without a kick: nothing does that to a live
            // connection, but if it happened the session is not ours.
            return Poll::Ready(Signal::Kicked(reason::SESSION_TAKEN_OVER));
        }
        if std::mem::take(&mut s.keepalive_due) {
            return Poll::Ready(Signal::KeepAlive);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        drop(s);
        // After the waker is in place: a wake from now on finds it.
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Signal::Woken);
        }
        Poll::Pending
    }
}
