//! The single-node, in-memory implementation of the seam: commits at once.

use parking_lot::Mutex;

use super::{Command, ReplicatedState, StateSeam, Ticket};

#[derive(Default)]
pub struct MemoryState {
    state: Mutex<ReplicatedState>,
    /// The node id commands are applied as (the owner of every session).
    node: u64,
}

impl MemoryState {
    pub fn new(node: u64) -> Self {
        MemoryState {
            state: Mutex::default(),
            node,
        }
    }
}

impl StateSeam for MemoryState {
    fn submit(&self, commands: Vec<Command>) -> Ticket {
        let mut state = self.state.lock();
        for c in &commands {
            let _ = state.apply(self.node, c);
        }
        Ticket::Done(Ok(()))
    }

    fn snapshot(&self) -> ReplicatedState {
        self.state.lock().clone()
    }
}
