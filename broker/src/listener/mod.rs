//! Listeners: sockets in, connections out. Each kind turns its transport
//! into a byte stream and hands it to [`crate::connection::serve`].

pub mod accept;
#[cfg(feature = "psk")]
pub mod psk;
pub mod tls;
pub mod websocket;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How a listener's sockets become byte streams.
pub enum Transport {
    Tcp,
    Tls(Arc<tls::ReloadableTls>),
    Ws {
        path: String,
    },
    Wss {
        tls: Arc<tls::ReloadableTls>,
        path: String,
    },
    #[cfg(feature = "psk")]
    Psk(Arc<psk::PskAcceptor>),
}

/// Counts connections against a limit; a slot is held for the life of a
/// connection and given back when dropped.
#[derive(Debug)]
pub struct ConnectionLimit {
    current: AtomicUsize,
    max: usize,
}

impl ConnectionLimit {
    /// `max` 0 = no limit.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            current: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot, or `None` when the limit is reached.
    pub fn acquire(self: &Arc<Self>) -> Option<Slot> {
        let prev = self.current.fetch_add(1, Ordering::AcqRel);
        if self.max > 0 && prev >= self.max {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(Arc::clone(self)))
    }

    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }
}

pub struct Slot(Arc<ConnectionLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_returned() {
        let l = ConnectionLimit::new(2);
        let a = l.acquire().unwrap();
        let _b = l.acquire().unwrap();
        assert!(l.acquire().is_none());
        drop(a);
        assert!(l.acquire().is_some());
        let unlimited = ConnectionLimit::new(0);
        let slots: Vec<_> = (0..100).filter_map(|_| unlimited.acquire()).collect();
        assert_eq!(slots.len(), 100);
    }
}
