//! The state machine, command by command.

use super::*;
use crate::codec::SubOptions;
use crate::message::{Message, MessageParts};
use std::sync::Arc;

fn msg(topic: &str) -> SharedMessage {
    Arc::new(Message::new(MessageParts {
        topic: ByteStr::from(topic),
        payload: bytes::Bytes::from_static(b"p"),
        qos: QoS::AtLeastOnce,
        retain: false,
        origin: ByteStr::default(),
        expires_at: None,
        properties: None,
        received_at: std::time::Instant::now(),
    }))
}

fn claim(c: &ByteStr, node: u64, clean_start: bool, will: Option<Will>) -> Command {
    Command::ClaimClient {
        client_id: c.clone(),
        node,
        nonce: 7,
        clean_start,
        will,
        username: Some("u".into()),
        same_identity_only: false,
    }
}

fn enqueue(c: &ByteStr, seq: u64) -> Command {
    Command::Enqueue {
        client_id: c.clone(),
        seq,
        qos: QoS::ExactlyOnce,
        retain: false,
        subscription_ids: SmallVec::new(),
        local: true,
        message: msg("a/b"),
    }
}

#[test]
fn session_lifecycle() {
    let c = ByteStr::from("c1");
    let mut s = ReplicatedState::default();
    assert_eq!(
        s.apply(1, &claim(&c, 1, false, None)),
        Ok(Some(Effect::Claimed {
            client_id: c.clone(),
            node: 1,
            nonce: 7
        }))
    );
    let _ = s.apply(
        1,
        &Command::SessionCreate {
            client_id: c.clone(),
            expiry: 60,
        },
    );
    let _ = s.apply(
        1,
        &Command::Subscribe {
            client_id: c.clone(),
            filter: "a/#".into(),
            options: SubOptions::default(),
            identifier: Some(7),
        },
    );
    for seq in 1..=3 {
        // Any node may owe the session a message.
        let _ = s.apply(seq, &enqueue(&c, seq));
    }
    let _ = s.apply(
        1,
        &Command::Release {
            client_id: c.clone(),
            seq: 2,
        },
    );
    let _ = s.apply(
        1,
        &Command::Ack {
            client_id: c.clone(),
            seq: 1,
        },
    );
    let sess = &s.sessions[&c];
    assert_eq!(
        sess.messages.keys().copied().collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(sess.messages[&2].released);
    assert_eq!(sess.subscriptions.len(), 1);
    let _ = s.apply(
        1,
        &Command::SessionEnd {
            client_id: c.clone(),
        },
    );
    assert!(s.sessions.is_empty());
    assert!(s.owners.is_empty());
    // Late commands about an ended session change nothing.
    assert_eq!(
        s.apply(
            1,
            &Command::Ack {
                client_id: c,
                seq: 3
            }
        ),
        Err(Ignored)
    );
    assert!(s.sessions.is_empty());
}

#[test]
fn only_the_owner_changes_a_session() {
    let c = ByteStr::from("c");
    let mut s = ReplicatedState::default();
    let _ = s.apply(1, &claim(&c, 1, false, None));
    let _ = s.apply(
        1,
        &Command::SessionCreate {
            client_id: c.clone(),
            expiry: 60,
        },
    );
    let _ = s.apply(1, &enqueue(&c, 10));
    // Node 2 takes the client over; node 1's late ack must not count.
    let _ = s.apply(2, &claim(&c, 2, false, None));
    let sub = Command::Subscribe {
        client_id: c.clone(),
        filter: "late".into(),
        options: SubOptions::default(),
        identifier: None,
    };
    assert_eq!(s.apply(1, &sub), Err(Ignored));
    assert_eq!(s.apply(2, &sub), Ok(None));
    // An ack counts from whichever node the client acked through.
    let _ = s.apply(
        1,
        &Command::Ack {
            client_id: c.clone(),
            seq: 10,
        },
    );
    assert!(s.sessions[&c].messages.is_empty());
    // A clean start discards the session.
    let _ = s.apply(3, &claim(&c, 3, true, None));
    assert!(s.sessions.is_empty());
    assert_eq!(s.owners[&c], 3);
    // Unclaim only by the owner, and never of a persistent session.
    let _ = s.apply(
        2,
        &Command::Unclaim {
            client_id: c.clone(),
            node: 2,
        },
    );
    assert_eq!(s.owners[&c], 3);
    let _ = s.apply(
        3,
        &Command::Unclaim {
            client_id: c.clone(),
            node: 3,
        },
    );
    assert!(s.owners.is_empty());
}

#[test]
fn a_claim_under_another_identity_changes_nothing() {
    let c = ByteStr::from("c");
    let mut s = ReplicatedState::default();
    let _ = s.apply(1, &claim(&c, 1, false, None));
    let _ = s.apply(
        1,
        &Command::SessionCreate {
            client_id: c.clone(),
            expiry: 60,
        },
    );
    let _ = s.apply(1, &enqueue(&c, 10));
    let before = s.digest();
    let as_user = |user: Option<&str>, clean_start: bool, only: bool| Command::ClaimClient {
        client_id: c.clone(),
        node: 2,
        nonce: 9,
        clean_start,
        will: None,
        username: user.map(ByteStr::from),
        same_identity_only: only,
    };
    for (user, clean) in [(Some("m"), false), (Some("m"), true), (None, true)] {
        assert_eq!(
            s.apply(2, &as_user(user, clean, true)),
            Ok(Some(Effect::ClaimRefused {
                client_id: c.clone(),
                node: 2,
                nonce: 9
            })),
            "{user:?}"
        );
        assert_eq!(s.digest(), before, "{user:?} clean {clean}");
    }
    // The same identity takes its own id from any node.
    assert!(matches!(
        s.apply(2, &as_user(Some("u"), false, true)),
        Ok(Some(Effect::Claimed { node: 2, .. }))
    ));
    assert_eq!(s.owners[&c], 2);
    assert_eq!(s.sessions[&c].messages.len(), 1);
    // Records from before the check (or "any"): whoever asks.
    let _ = s.apply(2, &as_user(Some("m"), false, false));
    assert_eq!(s.usernames[&c], ByteStr::from("m"));
    // Once nobody owns the id, anyone may claim it.
    let _ = s.apply(
        2,
        &Command::SessionEnd {
            client_id: c.clone(),
        },
    );
    assert!(matches!(
        s.apply(2, &as_user(None, true, true)),
        Ok(Some(Effect::Claimed { .. }))
    ));
}

#[test]
fn a_will_fires_once_and_only_for_its_connection() {
    let c = ByteStr::from("c");
    let will = Will {
        message: msg("w"),
        delay: 5,
        expiry_interval: None,
    };
    let mut s = ReplicatedState::default();
    let _ = s.apply(1, &claim(&c, 1, false, Some(will.clone())));
    let fire = Command::WillFire {
        client_id: c.clone(),
        nonce: 7,
    };
    // The leader (node 2) and node 1 itself both try.
    assert_eq!(
        s.apply(2, &fire),
        Ok(Some(Effect::WillFired {
            client_id: c.clone(),
            will: will.clone()
        }))
    );
    assert_eq!(s.apply(1, &fire), Err(Ignored));
    // A reconnect replaces the will: the old one is void.
    let _ = s.apply(1, &claim(&c, 1, false, Some(will.clone())));
    let mut again = claim(&c, 1, false, Some(will));
    if let Command::ClaimClient { nonce, .. } = &mut again {
        *nonce = 8;
    }
    let _ = s.apply(1, &again);
    assert_eq!(s.apply(2, &fire), Err(Ignored));
    // WillClear only by the connection that registered it.
    let _ = s.apply(
        1,
        &Command::WillClear {
            client_id: c.clone(),
            nonce: 7,
        },
    );
    assert!(s.wills.contains_key(&c));
    let _ = s.apply(
        1,
        &Command::WillClear {
            client_id: c.clone(),
            nonce: 8,
        },
    );
    assert!(s.wills.is_empty());
}

#[test]
fn routes_follow_nodes() {
    let mut s = ReplicatedState::default();
    let f = ByteStr::from("a/#");
    let _ = s.apply(
        1,
        &Command::RouteAdd {
            node: 1,
            filter: f.clone(),
        },
    );
    let _ = s.apply(
        2,
        &Command::RouteAdd {
            node: 2,
            filter: f.clone(),
        },
    );
    let _ = s.apply(
        2,
        &Command::RouteAdd {
            node: 2,
            filter: "b".into(),
        },
    );
    assert_eq!(s.routes[&f], NodeSet::from([1, 2]));
    let _ = s.apply(
        1,
        &Command::RouteRemove {
            node: 1,
            filter: f.clone(),
        },
    );
    assert_eq!(s.routes[&f], NodeSet::from([2]));
    // A restarted node states its routes afresh; its clean sessions go.
    let _ = s.apply(2, &claim(&"clean".into(), 2, true, None));
    let _ = s.apply(
        2,
        &Command::NodeStarted {
            node: 2,
            filters: vec!["c".into()],
        },
    );
    assert_eq!(
        s.routes.keys().cloned().collect::<Vec<_>>(),
        vec![ByteStr::from("c")]
    );
    assert!(s.owners.is_empty());
    let _ = s.apply(1, &Command::NodeGone { node: 2 });
    assert!(s.routes.is_empty());
}

#[test]
fn retained_set_and_clear() {
    let mut s = ReplicatedState::default();
    let _ = s.apply(1, &Command::RetainSet(msg("t")));
    assert_eq!(s.retained.len(), 1);
    let _ = s.apply(1, &Command::RetainClear { topic: "t".into() });
    assert!(s.retained.is_empty());
}

/// The changes a command notes are what it did to the state: a restart
/// frees the ids of its clean sessions and restates its routes; a claim
/// with clean start ends the session; a repeated SessionCreate (a batch
/// committed twice) starts nothing and keeps the subscriptions; what is
/// ignored notes nothing.
#[test]
fn noted_changes_mirror_the_state() {
    let mut s = ReplicatedState::default();
    let noted = |s: &mut ReplicatedState, origin: u64, c: &Command| {
        let mut changes = Vec::new();
        let _ = s.apply_with_changes(origin, c, &mut changes);
        changes
    };
    let c = ByteStr::from("c");
    let f = ByteStr::from("a/#");
    let route = |node| Command::RouteAdd {
        node,
        filter: f.clone(),
    };
    assert_eq!(
        noted(&mut s, 2, &route(2)),
        vec![Change::RouteAdded {
            node: 2,
            filter: f.clone()
        }]
    );
    assert!(noted(&mut s, 2, &route(2)).is_empty(), "already there");

    let changes = noted(&mut s, 2, &claim(&c, 2, true, None));
    assert_eq!(
        changes,
        vec![
            Change::Owner {
                client_id: c.clone(),
                node: 2,
                nonce: 7,
                username: Some("u".into()),
                subscriptions: SubscriptionMap::default(),
            },
            Change::Will {
                client_id: c.clone(),
                record: None,
            },
        ]
    );
    let create = Command::SessionCreate {
        client_id: c.clone(),
        expiry: 60,
    };
    assert_eq!(
        noted(&mut s, 2, &create),
        vec![Change::SessionStarted {
            client_id: c.clone()
        }]
    );
    let sub = Command::Subscribe {
        client_id: c.clone(),
        filter: "x".into(),
        options: SubOptions::default(),
        identifier: None,
    };
    assert_eq!(noted(&mut s, 2, &sub).len(), 1);
    assert!(
        noted(&mut s, 2, &create).is_empty(),
        "a repeat starts nothing"
    );
    assert_eq!(s.sessions[&c].subscriptions.len(), 1);
    assert!(noted(&mut s, 3, &sub).is_empty(), "not the owner: ignored");

    // A clean start ends the session it finds.
    let changes = noted(&mut s, 2, &claim(&c, 2, true, None));
    assert!(changes.contains(&Change::SessionEnded {
        client_id: c.clone(),
        subscriptions: [("x".into(), (SubOptions::default(), None))]
            .into_iter()
            .collect(),
    }));
    // A restart frees its clean sessions' ids and restates its routes.
    let changes = noted(
        &mut s,
        2,
        &Command::NodeStarted {
            node: 2,
            filters: vec!["b".into()],
        },
    );
    assert_eq!(
        changes,
        vec![
            Change::RouteRemoved {
                node: 2,
                filter: f.clone()
            },
            Change::RouteAdded {
                node: 2,
                filter: "b".into()
            },
            Change::Disowned { client_id: c },
        ]
    );
}

fn claim_bridge(node: u64, previous: Option<u64>) -> Command {
    Command::ClaimBridge {
        name: "central".into(),
        node,
        previous,
    }
}

#[test]
fn a_bridge_claim_replaces_only_the_holder_it_names() {
    let mut s = ReplicatedState::default();
    let mut changes = Vec::new();
    assert_eq!(
        s.apply_with_changes(1, &claim_bridge(1, None), &mut changes),
        Ok(None)
    );
    assert_eq!(
        changes,
        vec![Change::BridgeHolder {
            name: "central".into(),
            node: Some(1)
        }]
    );
    // Made on a stale view (nobody held it): changes nothing.
    assert_eq!(s.apply(2, &claim_bridge(2, None)), Err(Ignored));
    assert_eq!(s.bridges["central"], 1);
    assert_eq!(s.apply(2, &claim_bridge(2, Some(1))), Ok(None));
    assert_eq!(s.bridges["central"], 2);
}

#[test]
fn a_draining_node_lets_go_of_its_bridges_until_it_starts_again() {
    let mut s = ReplicatedState::default();
    let _ = s.apply(1, &claim_bridge(2, None));
    let mut changes = Vec::new();
    let _ = s.apply_with_changes(2, &Command::NodeDraining { node: 2 }, &mut changes);
    assert!(s.bridges.is_empty());
    assert!(changes.contains(&Change::BridgeHolder {
        name: "central".into(),
        node: None
    }));
    // No claim for a draining node.
    assert_eq!(s.apply(1, &claim_bridge(2, None)), Err(Ignored));
    let _ = s.apply(
        2,
        &Command::NodeStarted {
            node: 2,
            filters: Vec::new(),
        },
    );
    assert!(s.draining.is_empty());
    assert_eq!(s.apply(1, &claim_bridge(2, None)), Ok(None));
    // A node that leaves the cluster lets go too.
    let _ = s.apply(1, &Command::NodeGone { node: 2 });
    assert!(s.bridges.is_empty());
}

/// Messages are noted as the state takes them, with the node whose
/// publish made them: a retained set or clear always, a copy owed to a
/// session only when the session exists (otherwise it is ignored).
#[test]
fn noted_messages_carry_their_origin() {
    let mut s = ReplicatedState::default();
    let noted = |s: &mut ReplicatedState, origin: u64, c: &Command| {
        let mut changes = Vec::new();
        let _ = s.apply_with_changes(origin, c, &mut changes);
        changes
    };
    let m = msg("t");
    assert_eq!(
        noted(&mut s, 3, &Command::RetainSet(m.clone())),
        vec![Change::Retained {
            origin: 3,
            topic: "t".into(),
            message: Some(m),
        }]
    );
    assert_eq!(
        noted(&mut s, 2, &Command::RetainClear { topic: "t".into() }),
        vec![Change::Retained {
            origin: 2,
            topic: "t".into(),
            message: None,
        }]
    );

    let c = ByteStr::from("c");
    assert!(
        noted(&mut s, 3, &enqueue(&c, 9)).is_empty(),
        "no session: ignored"
    );
    let _ = s.apply(2, &claim(&c, 2, true, None));
    let _ = s.apply(
        2,
        &Command::SessionCreate {
            client_id: c.clone(),
            expiry: 60,
        },
    );
    let changes = noted(&mut s, 3, &enqueue(&c, 9));
    assert!(
        matches!(
            changes.as_slice(),
            [Change::Enqueued { origin: 3, client_id, seq: 9, local: true, .. }] if *client_id == c
        ),
        "{changes:?}"
    );
}
