//! Which node runs each bridge and which nodes are draining, as the
//! committed log says (`Command::ClaimBridge`, `Command::NodeDraining`;
//! what they mean is decided in `state/machine`). The engine runs no
//! bridge: it follows these changes like any other and lets whoever runs
//! bridges (`bridge/`) watch them.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::watch;

use super::Broker;
use crate::codec::ByteStr;
use crate::state::{Change, ReplicatedState};

/// The bridges' claims as committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Bridge name -> the node that runs it.
    pub holders: BTreeMap<ByteStr, u64>,
    /// Nodes draining: they run no bridge until they start again.
    pub draining: BTreeSet<u64>,
}

impl Placement {
    pub fn of(state: &ReplicatedState) -> Placement {
        Placement {
            holders: state.bridges.clone(),
            draining: state.draining.clone(),
        }
    }

    /// Follows one committed change; whether it was about placement.
    fn follow(&mut self, change: &Change) -> bool {
        match change {
            Change::BridgeHolder {
                name,
                node: Some(n),
            } => {
                self.holders.insert(name.clone(), *n);
            }
            Change::BridgeHolder { name, node: None } => {
                self.holders.remove(name);
            }
            Change::Draining {
                node,
                draining: true,
            } => {
                self.draining.insert(*node);
            }
            Change::Draining {
                node,
                draining: false,
            } => {
                self.draining.remove(node);
            }
            _ => return false,
        }
        true
    }

    /// The node that runs bridge `name`, if any.
    pub fn holder(&self, name: &str) -> Option<u64> {
        self.holders.get(name).copied()
    }
}

impl Broker {
    /// The bridges' claims, kept up to date with the committed log.
    pub fn placement(&self) -> watch::Receiver<Placement> {
        self.cluster.placement.subscribe()
    }

    /// Members whose bridges the leader's liveness probe says may move:
    /// cut off long enough to have stopped them (`cluster/liveness.rs`;
    /// empty on the other nodes).
    pub fn unreachable_nodes(&self) -> watch::Receiver<BTreeSet<u64>> {
        self.cluster.unreachable.subscribe()
    }

    pub(crate) fn set_unreachable(&self, nodes: BTreeSet<u64>) {
        self.cluster.unreachable.send_if_modified(|n| {
            let changed = *n != nodes;
            *n = nodes;
            changed
        });
    }

    pub(super) fn rebuild_placement(&self, state: &ReplicatedState) {
        self.cluster.placement.send_replace(Placement::of(state));
    }

    pub(super) fn follow_placement(&self, change: &Change) {
        self.cluster
            .placement
            .send_if_modified(|p| p.follow(change));
    }
}
