//! The single-node, in-memory implementation of the seam: commits at once.

use parking_lot::Mutex;

use super::{Command, ReplicatedState, StateSeam, Ticket};

#[derive(Default)]
pub struct MemoryState {
    state: Mutex<ReplicatedState>,
}

impl StateSeam for MemoryState {
    fn submit(&self, commands: Vec<Command>) -> Ticket {
        let mut state = self.state.lock();
        for c in &commands {
            state.apply(c);
        }
        Ticket::Done(Ok(()))
    }

    fn snapshot(&self) -> ReplicatedState {
        self.state.lock().clone()
    }
}
