//! What a QoS 1/2 publisher's answer (PUBACK/PUBREC) waits for besides the
//! commit of the copies its publish owes: proof that the view of the
//! cluster the publish was matched against held every persistent
//! subscription committed before the publish arrived.
//!
//! A publish is matched at once against this node's view (`remote.rs`),
//! which follows the committed log a round trip or so behind the leader: a
//! persistent subscription another node has just acknowledged (SUBACK) may
//! not be in it yet, and a publish answered from it would never reach that
//! session. So the answer also waits for the leader's read index (asked as
//! the publish is routed, grouped with every other publish waiting:
//! `cluster/seam.rs`) and for this node to follow the log that far. If a
//! subscription or an owner changed in between, the persistent sessions the
//! publish matches now, and did not then, are owed their copies through the
//! log before the answer goes out. Matching stays on the publish path; the
//! read runs alongside the commit of the copies owed at once.
//!
//! A node that gets no read index within the commit deadline (cut off from
//! the leader) answers from what it knows: a partition's minority side
//! keeps serving clean sessions (README, "A partition").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use smallvec::SmallVec;

use super::publish::owed_remote;
use super::Broker;
use crate::codec::ByteStr;
use crate::message::SharedMessage;
use crate::state::{Command, StateError, Ticket};

impl Broker {
    /// The log index the engine has followed to.
    pub(crate) fn followed_index(&self) -> u64 {
        *self.cluster.followed.borrow()
    }

    /// The engine has followed every committed entry up to `index`.
    pub fn followed_to(&self, index: u64) {
        self.cluster.followed.send_if_modified(|i| {
            let later = index > *i;
            if later {
                *i = index;
            }
            later
        });
    }

    /// `committed`, and then what makes the answer to `message` true (see
    /// the module): it was matched against the view at `seen`, which owed
    /// copies to the remote sessions `owed`. The sessions found owed a copy
    /// only then are counted in `later`, so that the publisher is not told
    /// "no matching subscribers" about a message that reached one.
    pub(super) fn settle(
        &self,
        message: &SharedMessage,
        seen: u64,
        owed: SmallVec<[ByteStr; 4]>,
        committed: Ticket,
        later: Arc<AtomicUsize>,
    ) -> Ticket {
        let Some(read) = self.cluster.seam.read_index() else {
            return committed;
        };
        let Some(me) = self.cluster.me.upgrade() else {
            return committed;
        };
        let message = message.clone();
        Ticket::Pending(Box::pin(async move {
            // The read was asked already and runs meanwhile; a commit that
            // fails is answered at once.
            committed.wait().await?;
            match read.await {
                Ok(index) => {
                    let missed = me.owe_what_was_missed(&message, seen, &owed, index).await?;
                    later.store(missed, Ordering::Release);
                    Ok(())
                }
                Err(e) => {
                    tracing::debug!("publish answered from this node's view: {e}");
                    Ok(())
                }
            }
        }))
    }

    /// Once the view holds the log up to `index`: the copies owed to
    /// persistent sessions that came into it after `seen`, committed; how
    /// many there were.
    async fn owe_what_was_missed(
        self: &Arc<Self>,
        message: &SharedMessage,
        seen: u64,
        owed: &[ByteStr],
        index: u64,
    ) -> Result<usize, StateError> {
        let mut followed = self.cluster.followed.subscribe();
        let deadline = self.config.cluster.commit_deadline();
        let caught_up = tokio::time::timeout(deadline, followed.wait_for(|i| *i >= index))
            .await
            .is_ok_and(|r| r.is_ok());
        if !caught_up {
            tracing::debug!(
                index,
                "publish answered before this node followed the log that far"
            );
            return Ok(0);
        }
        if self.cluster.persistent_changed.load(Ordering::Acquire) <= seen {
            return Ok(0);
        }
        let commands: Vec<Command> = {
            let view = self.cluster.view.read();
            owed_remote(&view, message, owed)
                .into_iter()
                .filter_map(|o| self.enqueue(o, message))
                .collect()
        };
        if commands.is_empty() {
            return Ok(0);
        }
        tracing::debug!(
            topic = %message.topic,
            copies = commands.len(),
            "publish owes copies to persistent sessions its view lacked"
        );
        let missed = commands.len();
        self.cluster.seam.submit(commands).wait().await?;
        Ok(missed)
    }
}
