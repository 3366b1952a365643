//! Which members are alive, as the leader sees them: it asks each one for
//! its status every half second. A member that has not answered for
//! `down_after` is down (the leader this node took over from, at its
//! first unanswered probe); one whose probes went unanswered for twice the
//! election timeout is unreachable, and its bridges move. Down: the wills of the clients it served are
//! published (after their delays) by the leader, through the log's guard,
//! so each goes out once even if the node was only cut off.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_proto::v1 as pb;
use raftmq_proto::v1::admin_client::AdminClient;

use super::metrics::RaftStats;
use super::network::Network;
use super::supervisor::RaftHandle;
use crate::engine::Broker;

const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Silence after which a member counts as down.
pub fn down_after(election_timeout_ms: u64) -> Duration {
    Duration::from_millis((3 * election_timeout_ms).max(3000))
}

/// What the leader knows of one member from its probes.
struct Heard {
    /// When the last answered probe was sent.
    answered: Instant,
    /// When the first probe unanswered since then was sent.
    failing_since: Option<Instant>,
}

pub fn spawn(
    raft: RaftHandle,
    net: Network,
    broker: Arc<Broker>,
    stats: RaftStats,
    down_after: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let me = broker.node_id;
        // Per member, measured only while this node leads.
        let mut heard: HashMap<u64, Heard> = HashMap::new();
        // The leader this node last followed, while it does not lead.
        let mut previous: Option<u64> = None;
        let mut leading = false;
        loop {
            let mut metrics = raft.get().metrics();
            let m = metrics.borrow_and_update().clone();
            // A core stopped on a storage error leads nothing.
            if m.current_leader != Some(me) || m.running_state.is_err() {
                heard.clear();
                broker.set_down_nodes(Vec::new());
                broker.set_unreachable(BTreeSet::new());
                stats.nodes_down.set(0);
                previous = m.current_leader.filter(|l| *l != me).or(previous);
                leading = false;
                // Leadership is noticed as it comes, not a period later.
                let _ = tokio::time::timeout(PROBE_EVERY, metrics.changed()).await;
                continue;
            }
            let now = Instant::now();
            if !leading {
                leading = true;
                // This node was elected: the leader before it lost its
                // place, so a quorum has not heard from it for openraft's
                // lease, and it stopped what runs only in contact with a
                // quorum (`Health::leader_contact`). If it does not answer
                // the first probe either, it is down now, not after
                // `down_after` more: its bridges move at once.
                if let (Some(p), Some(long_ago)) = (previous.take(), now.checked_sub(down_after)) {
                    heard.insert(
                        p,
                        Heard {
                            answered: long_ago,
                            failing_since: long_ago.checked_sub(down_after),
                        },
                    );
                }
            }
            probe_all(&net, &m, me, &mut heard).await;
            let lease = Duration::from_millis(raft.get().config().election_timeout_min);
            let cut_off_after = (2 * lease).max(2 * PROBE_EVERY);
            let now = Instant::now();
            let down: Vec<u64> = heard
                .iter()
                .filter(|(_, h)| now.duration_since(h.answered) >= down_after)
                .map(|(id, _)| *id)
                .collect();
            // A member cut off stopped its bridges `lease` after the last
            // AppendEntries reached it (`Health::leader_contact`), at the
            // latest about when the first unanswered probe was sent: past
            // twice that, they move (a member only slow to answer still
            // hears the log, and stops when it sees the move committed).
            let unreachable: BTreeSet<u64> = heard
                .iter()
                .filter(|(_, h)| {
                    h.failing_since
                        .is_some_and(|t| now.duration_since(t) >= cut_off_after)
                })
                .map(|(id, _)| *id)
                .chain(down.iter().copied())
                .collect();
            stats.nodes_down.set(down.len() as i64);
            broker.set_down_nodes(down);
            broker.set_unreachable(unreachable);
            tokio::time::sleep(PROBE_EVERY).await;
        }
    })
}

/// Probes every other member once, and notes who answered.
async fn probe_all(
    net: &Network,
    m: &openraft::RaftMetrics<u64, openraft::BasicNode>,
    me: u64,
    heard: &mut HashMap<u64, Heard>,
) {
    let members: Vec<(u64, String)> = m
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != me)
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    let now = Instant::now();
    let probes = members.iter().map(|(id, addr)| {
        let net = net.clone();
        async move { (*id, probe(&net, addr).await) }
    });
    for (id, ok) in futures_util::future::join_all(probes).await {
        let h = heard.entry(id).or_insert(Heard {
            answered: now,
            failing_since: None,
        });
        if ok {
            h.answered = now;
            h.failing_since = None;
        } else if h.failing_since.is_none() {
            h.failing_since = Some(now);
        }
    }
    heard.retain(|id, _| members.iter().any(|(m, _)| m == id));
}

async fn probe(net: &Network, addr: &str) -> bool {
    let Ok(channel) = net.channel(addr) else {
        return false;
    };
    let mut client = AdminClient::new(channel);
    let call = client.status(pb::StatusRequest {});
    matches!(tokio::time::timeout(PROBE_TIMEOUT, call).await, Ok(Ok(_)))
}
