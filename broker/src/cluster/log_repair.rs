//! What a node does with a damaged Raft log at start (see
//! [`super::log_file::Damage`]): cut a torn tail, refuse to start, or —
//! when the operator asks for it on a member of a cluster of several
//! nodes — cut the log at the bad record and let the leader send the rest.
//!
//! The rule: an entry this node knows as committed is never cut silently.
//! A single node's acknowledged writes are all committed before they are
//! acknowledged (openraft saves the committed index before it applies; see
//! `log_store::save_committed` for what a power loss may leave of it), so
//! a single node never starts with acknowledged data missing. A member may
//! be repaired because the other members hold its committed entries; when
//! the cut reaches below its committed index it is treated like a member
//! whose volume was wiped: it stays out until the operator removes it and
//! adds it again, as it may have counted towards entries it no longer has.

use std::collections::BTreeSet;

use super::log_file::Damage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A torn write at the end of the log: nothing committed is in it.
    CutTornTail,
    /// The operator asked to repair: cut at the bad record. `unjoin` when
    /// entries this node knew as committed are lost with the cut.
    Repair { unjoin: bool },
    /// The node must not start; the text says why and what to do.
    Refuse(String),
}

/// What the node knows besides the damage.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub node_id: u64,
    /// The committed index saved in the log's metadata.
    pub committed: Option<u64>,
    /// Entries at or below this are in the snapshot.
    pub purged: Option<u64>,
    /// Voters of the last membership before the damage (or the snapshot's).
    pub voters: BTreeSet<u64>,
    /// `raftmq serve --repair-log` / `[cluster] repair_log`.
    pub repair: bool,
}

impl Known {
    /// The committed entries (not in the snapshot) a cut at `damage` loses.
    fn lost_committed(&self, damage: &Damage) -> Option<(u64, u64)> {
        let committed = self.committed?;
        let from = damage.index.max(self.purged.map_or(0, |p| p + 1));
        (from <= committed).then_some((from, committed))
    }

    fn single_node(&self) -> bool {
        self.voters.iter().all(|v| *v == self.node_id)
    }
}

pub fn judge(damage: &Damage, known: &Known) -> Verdict {
    let lost = known.lost_committed(damage);
    if damage.at_tail && lost.is_none() {
        return Verdict::CutTornTail;
    }
    let why = match (damage.at_tail, lost) {
        (true, Some((from, to))) => format!(
            "it is at the end of the log but holds entries {from}..={to}, which this node \
             knows as committed, so it is not a torn write"
        ),
        _ => "valid records follow it, so it is not a torn write".to_string(),
    };
    let head = format!("raft log damaged: {damage}; {why}.");
    if !known.repair {
        return Verdict::Refuse(format!(
            "{head} The node does not start. {}",
            what_to_do(known, lost)
        ));
    }
    match lost {
        Some((from, to)) if known.single_node() => Verdict::Refuse(format!(
            "{head} Not repaired: this node is the only voter of its cluster, so the \
             committed entries {from}..={to} exist nowhere else. Restore data_dir from a \
             backup (or, accepting their loss, move the damaged segment and those after it \
             away by hand)."
        )),
        lost => Verdict::Repair {
            unjoin: lost.is_some(),
        },
    }
}

fn what_to_do(known: &Known, lost: Option<(u64, u64)>) -> String {
    if known.single_node() {
        return match lost {
            Some((from, to)) => format!(
                "This node is the only voter of its cluster: the committed entries \
                 {from}..={to} exist nowhere else. Restore data_dir from a backup."
            ),
            None => "Nothing committed is lost by cutting it: start once with \
                     `raftmq serve --repair-log` to cut the log at the bad record."
                .to_string(),
        };
    }
    let mut s = "This node is a member of a cluster of several nodes: start it once with \
                 `raftmq serve --repair-log` (or RAFTMQ_CLUSTER__REPAIR_LOG=true) to cut \
                 the log at the bad record and be caught up by the leader."
        .to_string();
    if lost.is_some() {
        s.push_str(&format!(
            " Committed entries are lost with the cut, so the node then waits like a \
             member with a wiped volume until it is removed and added again \
             (`raftmq cluster remove --id {id}`, then `raftmq cluster add --id {id} ...`; \
             the operator does this on its own).",
            id = known.node_id
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damage(index: u64, at_tail: bool) -> Damage {
        Damage {
            path: "/d/raft/log/00000000000000000001.log".into(),
            offset: 420,
            index,
            at_tail,
            bytes: 30,
            last_after: (!at_tail).then_some(index + 5),
        }
    }

    fn known(committed: u64, voters: &[u64], repair: bool) -> Known {
        Known {
            node_id: 1,
            committed: Some(committed),
            purged: None,
            voters: voters.iter().copied().collect(),
            repair,
        }
    }

    #[test]
    fn a_torn_tail_beyond_the_committed_index_is_cut() {
        assert_eq!(
            judge(&damage(11, true), &known(10, &[1], false)),
            Verdict::CutTornTail
        );
        assert_eq!(
            judge(&damage(11, true), &known(10, &[1, 2, 3], false)),
            Verdict::CutTornTail
        );
    }

    #[test]
    fn committed_or_followed_damage_refuses_and_names_the_record() {
        for (d, k) in [
            (damage(10, true), known(10, &[1], false)),
            (damage(5, false), known(3, &[1], false)),
            (damage(5, false), known(10, &[1, 2, 3], false)),
        ] {
            let Verdict::Refuse(msg) = judge(&d, &k) else {
                panic!("refused: {d} {k:?}");
            };
            assert!(msg.contains("00000000000000000001.log"), "{msg}");
            assert!(msg.contains("byte 420"), "{msg}");
            assert!(msg.contains(&format!("log index {}", d.index)), "{msg}");
        }
    }

    #[test]
    fn a_single_node_is_never_repaired_at_the_cost_of_committed_entries() {
        let v = judge(&damage(5, false), &known(10, &[1], true));
        assert!(matches!(v, Verdict::Refuse(m) if m.contains("only voter")));
        // Cutting only what was never committed is allowed when asked.
        assert_eq!(
            judge(&damage(11, false), &known(10, &[1], true)),
            Verdict::Repair { unjoin: false }
        );
    }

    #[test]
    fn a_member_is_repaired_and_waits_when_it_loses_committed_entries() {
        assert_eq!(
            judge(&damage(5, false), &known(10, &[1, 2, 3], true)),
            Verdict::Repair { unjoin: true }
        );
        assert_eq!(
            judge(&damage(12, false), &known(10, &[1, 2, 3], true)),
            Verdict::Repair { unjoin: false }
        );
    }

    #[test]
    fn purged_entries_are_not_lost_by_a_cut() {
        let mut k = known(10, &[1], false);
        k.purged = Some(10);
        assert_eq!(judge(&damage(7, true), &k), Verdict::CutTornTail);
    }
}
