//! Where each bridge runs: exactly one node at a time, named by the
//! bridge's claim in the replicated state (`Command::ClaimBridge`), like a
//! client id's owner. The leader places the bridges: one whose holder is
//! not a voter any more, is unreachable (the leader's liveness probe,
//! `cluster/liveness.rs`) or drains goes to the live voter that runs the fewest, so bridges spread over the
//! cluster. A claim is a compare-and-set on the holder it replaces, so a
//! placement made on a stale view (a leader that just lost its place)
//! changes nothing. A node runs a bridge only while the committed state
//! says it holds the claim (`run.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::status::Bridges;
use crate::cluster::Standing;
use crate::codec::ByteStr;
use crate::engine::{Broker, Placement};
use crate::state::Command;

/// A claim not committed by then is asked for again.
const RETRY: Duration = Duration::from_secs(3);

/// Places the configured bridges while this node leads. It looks again
/// whenever something that decides placement changes (leadership or the
/// voters, the committed claims, the members the liveness probe finds
/// down, the configured bridges), and when an asked claim is due to be
/// asked again: a bridge whose holder went down moves as soon as the
/// probe says so, without a polling delay.
pub fn spawn(
    broker: Arc<Broker>,
    bridges: Arc<Bridges>,
    mut standing: watch::Receiver<Standing>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut placement = broker.placement();
        let mut down = broker.unreachable_nodes();
        // Claims asked for and not seen committed yet: name -> (node, when).
        let mut asked: HashMap<String, (u64, Instant)> = HashMap::new();
        loop {
            let now = standing.borrow_and_update().clone();
            if !now.leads {
                asked.clear();
            } else {
                place(&broker, &bridges, &now, &placement, &down, &mut asked);
            }
            // The earliest asked claim due to be asked again.
            let retry = asked.values().map(|(_, at)| *at + RETRY).min();
            let retry = async move {
                match retry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = retry => {}
                () = bridges.changed.notified() => {}
                changed = standing.changed() => if changed.is_err() { return },
                Ok(()) = placement.changed() => {}
                Ok(()) = down.changed() => {}
            }
        }
    })
}

/// One look at the placement while this node leads: asks for the claims
/// [`plan`] finds, once each until committed or [`RETRY`] passed.
fn place(
    broker: &Broker,
    bridges: &Bridges,
    now: &Standing,
    placement: &watch::Receiver<Placement>,
    down: &watch::Receiver<BTreeSet<u64>>,
    asked: &mut HashMap<String, (u64, Instant)>,
) {
    let current = placement.borrow().clone();
    let down = down.borrow().clone();
    let names = bridges.names();
    let claims = plan(&names, &current, &now.voters, &down);
    asked.retain(|name, (node, at)| current.holder(name) != Some(*node) && at.elapsed() < RETRY);
    let mut commands = Vec::new();
    for (name, node, previous) in claims {
        if asked.get(&name).is_some_and(|(n, _)| *n == node) {
            continue;
        }
        tracing::info!(bridge = %name, node, ?previous, "placing the bridge");
        asked.insert(name.clone(), (node, Instant::now()));
        commands.push(Command::ClaimBridge {
            name: ByteStr::from(name),
            node,
            previous,
        });
    }
    broker.submit(commands);
}

/// The claims to make: `(bridge, node, holder it replaces)` for each
/// bridge whose holder cannot run it, to the live voter running the
/// fewest (lowest id on a tie).
pub fn plan(
    names: &[String],
    placement: &Placement,
    voters: &BTreeSet<u64>,
    down: &BTreeSet<u64>,
) -> Vec<(String, u64, Option<u64>)> {
    let live: BTreeSet<u64> = voters
        .iter()
        .copied()
        .filter(|n| !down.contains(n) && !placement.draining.contains(n))
        .collect();
    let mut load: BTreeMap<u64, usize> = live.iter().map(|n| (*n, 0)).collect();
    let mut orphans = Vec::new();
    for name in names {
        match placement.holder(name) {
            Some(h) if live.contains(&h) => *load.entry(h).or_default() += 1,
            previous => orphans.push((name, previous)),
        }
    }
    let least = |load: &BTreeMap<u64, usize>| {
        load.iter()
            .min_by_key(|(n, l)| (**l, **n))
            .map(|(n, l)| (*n, *l))
    };
    let mut claims = Vec::new();
    for (name, previous) in orphans {
        let Some((target, _)) = least(&load) else {
            break;
        };
        *load.entry(target).or_default() += 1;
        claims.push((name.clone(), target, previous));
    }
    // Bridges placed while few nodes were up (the first node of a new
    // cluster places them all) spread as others join: one at a time, from
    // the busiest node to the idlest while they differ by two or more, so
    // a settled placement never moves.
    if claims.is_empty() {
        let busiest = load
            .iter()
            .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))
            .map(|(n, l)| (*n, *l));
        if let (Some((from, most)), Some((to, fewest))) = (busiest, least(&load)) {
            if most >= fewest + 2 {
                let moving = names
                    .iter()
                    .rev()
                    .find(|name| placement.holder(name) == Some(from));
                if let Some(name) = moving {
                    claims.push((name.clone(), to, Some(from)));
                }
            }
        }
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unclaimed_bridges_spread_over_the_live_voters() {
        let voters = [1, 2, 3].into();
        let claims = plan(
            &names(&["a", "b"]),
            &Placement::default(),
            &voters,
            &BTreeSet::new(),
        );
        assert_eq!(claims, vec![("a".into(), 1, None), ("b".into(), 2, None)]);
    }

    #[test]
    fn a_bridge_on_a_down_or_draining_or_removed_node_moves() {
        let mut p = Placement::default();
        p.holders.insert("a".into(), 1);
        p.holders.insert("b".into(), 2);
        p.holders.insert("c".into(), 9);
        p.draining.insert(2);
        let voters = [1, 2, 3].into();
        let claims = plan(&names(&["a", "b", "c"]), &p, &voters, &[1].into());
        assert_eq!(
            claims,
            vec![
                ("a".into(), 3, Some(1)),
                ("b".into(), 3, Some(2)),
                ("c".into(), 3, Some(9))
            ]
        );
        // Held by live voters: nothing to do.
        let mut p = Placement::default();
        p.holders.insert("a".into(), 2);
        assert!(plan(&names(&["a"]), &p, &voters, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn bridges_spread_as_nodes_join_and_then_stay() {
        let mut p = Placement::default();
        p.holders.insert("a".into(), 1);
        p.holders.insert("b".into(), 1);
        let voters = [1, 2, 3].into();
        let claims = plan(&names(&["a", "b"]), &p, &voters, &BTreeSet::new());
        assert_eq!(claims, vec![("b".into(), 2, Some(1))]);
        p.holders.insert("b".into(), 2);
        assert!(plan(&names(&["a", "b"]), &p, &voters, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn no_live_voter_no_claim() {
        let voters = [1].into();
        assert!(plan(&names(&["a"]), &Placement::default(), &voters, &[1].into()).is_empty());
    }
}
