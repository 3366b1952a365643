//! What a publisher waits for before it reads on: a local subscriber whose
//! queue is half full, or the forwarding queue of a peer node that is. A
//! publisher that stops reading its socket passes the pressure back to its
//! client, so a consumer that is only slower than its producers loses
//! nothing, on one node as across nodes; only one that stops reading
//! altogether gets copies dropped (at its limit, counted).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The longest a publisher waits for one congested consumer before it
/// stops waiting for it (and the consumer's copies are dropped at its
/// limit instead).
pub const STALL_AFTER: Duration = Duration::from_secs(1);

/// Something a publisher can be held back by.
pub trait Drain: Send + Sync {
    /// Whether the publisher must still wait; a `true` also registers it
    /// to be woken through [`Drain::drained`].
    fn must_wait(&self) -> bool;
    /// Notified once the consumer has drained below its mark.
    fn drained(&self) -> &Notify;
    /// A publisher waited [`STALL_AFTER`] in vain.
    fn stalled(&self);
}

/// A consumer a publish found congested.
pub type Pressure = Arc<dyn Drain>;

/// Waits until `consumer` has drained below its mark, at most
/// [`STALL_AFTER`].
pub async fn wait_for(consumer: &dyn Drain) {
    let deadline = tokio::time::Instant::now() + STALL_AFTER;
    loop {
        let drained = consumer.drained().notified();
        tokio::pin!(drained);
        // Registered before the check, so no wake-up is missed.
        drained.as_mut().enable();
        if !consumer.must_wait() {
            return;
        }
        if tokio::time::timeout_at(deadline, drained).await.is_err() {
            consumer.stalled();
            return;
        }
    }
}

/// Whether `p` is `cell` (a publisher never waits for its own session).
pub fn is<T>(p: &Pressure, cell: &Arc<T>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(p), Arc::as_ptr(cell))
}
