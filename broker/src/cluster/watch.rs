//! What the engine learns of the node's Raft core and its storage: the
//! leader it knows (for `/readyz`), the Raft gauges and summary line, and
//! `$SYS` notices when the storage fails or recovers. Both follow the core
//! across a rebuild (see `supervisor`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::StorageHealth;
use super::metrics::RaftStats;
use super::standing::Standing;
use super::supervisor::{self, RaftHandle};
use crate::engine::Broker;

/// Copies each core's metrics into the gauges and the broker's leader
/// flags, moving to the next core when one is rebuilt.
pub fn spawn_leader(
    mut raft: RaftHandle,
    standing: Arc<Standing>,
    stats: RaftStats,
    broker: Arc<Broker>,
) {
    tokio::spawn(async move {
        loop {
            let core = raft.get();
            let lease = Duration::from_millis(core.config().election_timeout_min);
            let mut metrics = core.metrics();
            // When a quorum last acknowledged this node as leader, taken
            // from a fresh report only (a core stuck on its storage reports
            // nothing, and its last figure ages from when it was made).
            let mut acked_at: Option<Instant> = None;
            let mut fresh = true;
            loop {
                let (has_leader, contact_until) = {
                    let m = metrics.borrow_and_update();
                    stats.observe(&m);
                    *broker.health.raft_summary.write() = summary(&m);
                    if fresh {
                        acked_at = m
                            .millis_since_quorum_ack
                            .and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
                    }
                    // A removed node keeps the leader it last heard of
                    // (it no longer campaigns): it has none to serve. A
                    // stopped core serves nothing either.
                    let has_leader = m.current_leader.is_some()
                        && !standing.removed()
                        && m.running_state.is_ok();
                    // A leader is in contact while a quorum acknowledged it
                    // within `lease`; a follower while its leader's last
                    // AppendEntries is that recent (a single node leads).
                    let heard = if m.current_leader == Some(m.id) {
                        acked_at
                    } else {
                        standing.last_heard_from_leader()
                    };
                    (has_leader, heard.map(|t| t + lease))
                };
                broker
                    .health
                    .has_leader
                    .store(has_leader, Ordering::Release);
                let now = Instant::now();
                let contact = has_leader && contact_until.is_some_and(|u| u > now);
                broker.health.leader_contact.send_if_modified(|c| {
                    let changed = *c != contact;
                    *c = contact;
                    changed
                });
                if supervisor::stopped(&core).is_some() {
                    break;
                }
                // Lag gauges move without a metrics change; refresh anyway,
                // and look again when a leader's contact runs out.
                let mut wait = Duration::from_secs(1);
                if let (true, Some(until)) = (contact, contact_until) {
                    wait = wait.min(until.saturating_duration_since(now));
                }
                fresh = tokio::time::timeout(wait, metrics.changed()).await.is_ok();
                if metrics.has_changed().is_err() {
                    break;
                }
            }
            // This core stopped: wait for the next one.
            if !raft.replaced().await {
                return;
            }
        }
    });
}

fn summary(m: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> String {
    format!(
        "raft: node {} {:?} term {} leader {} last log {} applied {} voters {}",
        m.id,
        m.state,
        m.current_term,
        m.current_leader.map_or("none".into(), |l| l.to_string()),
        m.last_log_index.unwrap_or(0),
        m.last_applied.map_or(0, |l| l.index),
        m.membership_config.membership().voter_ids().count(),
    )
}

/// `$SYS/broker/storage/healthy` (`1`/`0`) and `$SYS/broker/storage/error`
/// (the reason, empty once recovered), published as the storage changes
/// (when `$SYS` is on).
pub fn spawn_storage_notices(health: Arc<StorageHealth>, broker: Arc<Broker>) {
    if broker.config.sys_interval == 0 {
        return;
    }
    let mut changes = health.subscribe();
    tokio::spawn(async move {
        loop {
            let fault = changes.borrow_and_update().clone();
            crate::sys::notice(
                &broker,
                "storage/healthy",
                if fault.is_none() { "1" } else { "0" }.into(),
            );
            crate::sys::notice(&broker, "storage/error", fault.unwrap_or_default());
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
}
