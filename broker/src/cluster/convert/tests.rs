//! The round trips of `convert`, and the whole-state reference forms the
//! snapshot tests compare with.

use super::*;

/// The whole state as one message: the reference for `snapshot_stream`,
/// which writes and reads the same bytes a piece at a time.
pub fn state_to(s: &ReplicatedState) -> pb::StateSnapshot {
    pb::StateSnapshot {
        retained: s.retained.values().map(|m| message_to(m)).collect(),
        sessions: s
            .sessions
            .iter()
            .map(|(id, sess)| pb::PersistedSession {
                client_id: id.to_string(),
                expiry: sess.expiry,
                subscriptions: sess
                    .subscriptions
                    .iter()
                    .map(|(f, (o, i))| subscription_to(f, o, *i))
                    .collect(),
                messages: sess
                    .messages
                    .iter()
                    .map(|(seq, m)| persisted_message_to(*seq, m))
                    .collect(),
            })
            .collect(),
        owners: s.owners.iter().map(|(c, n)| owner_to(s, c, *n)).collect(),
        wills: s.wills.iter().map(|(c, w)| will_entry_to(c, w)).collect(),
        routes: s.routes.iter().map(|(f, n)| route_to(f, n)).collect(),
        bridges: s
            .bridges
            .iter()
            .map(|(name, node)| pb::BridgeHolder {
                name: name.to_string(),
                node: *node,
            })
            .collect(),
        draining: s
            .draining
            .iter()
            .map(|node| pb::Draining { node: *node })
            .collect(),
    }
}

pub fn state_from(s: pb::StateSnapshot) -> Result<ReplicatedState, Invalid> {
    use crate::state::PersistedSession;
    let mut state = ReplicatedState::default();
    for m in s.retained {
        let m = message_from(Some(m))?;
        state.retained.insert(m.topic.clone(), m);
    }
    for sess in s.sessions {
        let mut p = PersistedSession {
            expiry: sess.expiry,
            ..Default::default()
        };
        for sub in sess.subscriptions {
            let (f, v) = subscription_from(sub)?;
            p.subscriptions.insert(f, v);
        }
        for m in sess.messages {
            let (seq, m) = persisted_message_from(m)?;
            p.messages.insert(seq, m);
        }
        state.sessions.insert(sess.client_id.into(), p);
    }
    for o in s.owners {
        owner_into(&mut state, o);
    }
    for w in s.wills {
        let (c, w) = will_entry_from(w)?;
        state.wills.insert(c, w);
    }
    for r in s.routes {
        let (f, n) = route_from(r);
        state.routes.insert(f, n);
    }
    for b in s.bridges {
        state.bridges.insert(b.name.into(), b.node);
    }
    state.draining = s.draining.iter().map(|d| d.node).collect();
    Ok(state)
}

fn msg() -> SharedMessage {
    Arc::new(Message::new(MessageParts {
        topic: "a/b".into(),
        payload: Bytes::from_static(b"hello"),
        qos: QoS::ExactlyOnce,
        retain: true,
        origin: "pub1".into(),
        expires_at: None,
        properties: ForwardedProperties::from_properties(&Properties {
            content_type: Some("text/plain".into()),
            user_properties: UserProperties::from_pairs([("k", "v")]).unwrap(),
            ..Default::default()
        }),
        received_at: Instant::now(),
    }))
}

#[test]
fn commands_round_trip() {
    let commands = vec![
        Command::RetainSet(msg()),
        Command::RetainClear { topic: "t".into() },
        Command::SessionCreate {
            client_id: "c".into(),
            expiry: 60,
        },
        Command::Subscribe {
            client_id: "c".into(),
            filter: "$share/g/a/#".into(),
            options: SubOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
            identifier: Some(9),
        },
        Command::Enqueue {
            client_id: "c".into(),
            seq: 7,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: [3, 4].into_iter().collect(),
            local: true,
            message: msg(),
        },
        Command::RouteAdd {
            node: 2,
            filter: "$share/g/a/#".into(),
        },
        Command::NodeStarted {
            node: 2,
            filters: vec!["x".into(), "y/#".into()],
        },
        Command::WillFire {
            client_id: "c".into(),
            nonce: 99,
        },
        Command::ClaimBridge {
            name: "central".into(),
            node: 3,
            previous: Some(1),
        },
        Command::ClaimBridge {
            name: "central".into(),
            node: 2,
            previous: None,
        },
        Command::NodeDraining { node: 2 },
        Command::Ack {
            client_id: "c".into(),
            seq: 7,
        },
    ];
    let b = batch_to(3, &commands);
    let (origin, back) = batch_from(&b).unwrap();
    assert_eq!(origin, 3);
    assert_eq!(back.len(), commands.len());
    for (a, b) in commands.iter().zip(&back) {
        match (a, b) {
            (Command::RetainSet(x), Command::RetainSet(y)) => {
                assert_eq!(
                    (&x.topic, &x.payload, &x.properties),
                    (&y.topic, &y.payload, &y.properties)
                )
            }
            (
                Command::Enqueue {
                    message: x,
                    subscription_ids: a,
                    local: la,
                    ..
                },
                Command::Enqueue {
                    message: y,
                    subscription_ids: b,
                    local: lb,
                    ..
                },
            ) => assert_eq!((&x.payload, a, la), (&y.payload, b, lb)),
            _ => assert_eq!(a, b),
        }
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(batch_from(&Batch(Bytes::from_static(&[0xff, 0xff, 0xff]))).is_err());
    let bad = pb::Command {
        kind: Some(pb::command::Kind::Enqueue(pb::Enqueue {
            qos: 9,
            message: None,
            ..Default::default()
        })),
    };
    assert!(command_from(bad).is_err());
    let voter_without_node = pb::Membership {
        configs: vec![pb::NodeIdSet { ids: vec![1, 2] }],
        nodes: [(1, pb::Node { addr: "a".into() })].into(),
    };
    assert!(membership_from(Some(voter_without_node)).is_err());
}

mod big_tests {
    use super::*;

    #[test]
    fn many_empty_user_properties_round_trip() {
        let p = Properties {
            user_properties: UserProperties::from_pairs(std::iter::repeat_n(("", ""), 200_000))
                .unwrap(),
            ..Default::default()
        };
        let m = Arc::new(Message::new(MessageParts {
            topic: "a/b".into(),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: true,
            origin: "pub1".into(),
            expires_at: None,
            properties: ForwardedProperties::from_properties(&p),
            received_at: Instant::now(),
        }));
        let b = batch_to(1, &[Command::RetainSet(m)]);
        let (_, back) = batch_from(&b).unwrap();
        match &back[0] {
            Command::RetainSet(m) => assert_eq!(m.properties.as_ref().unwrap().len(), 1_000_000),
            other => panic!("{other:?}"),
        }
    }
}

mod legacy_tests {
    use prost::Message as _;

    use super::*;

    /// Records written before properties were kept in wire form, and
    /// claims from before the ownership flag, still load.
    #[test]
    fn old_records_load() {
        let old = pb::Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"p"),
            qos: 1,
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"\x01")),
            payload_format_indicator: Some(1),
            user_properties: vec![
                pb::UserProperty {
                    key: "k".into(),
                    value: "v1".into(),
                },
                pb::UserProperty {
                    key: "k".into(),
                    value: "v2".into(),
                },
            ],
            ..Default::default()
        };
        let m = message_from(Some(old)).unwrap();
        let p = m.properties.as_ref().unwrap().decode();
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(
            p.user_properties.iter().collect::<Vec<_>>(),
            [("k", "v1"), ("k", "v2")]
        );
        // Written back, it uses the new field only.
        let new = message_to(&m);
        assert!(new.user_properties.is_empty() && new.content_type.is_none());
        assert_eq!(message_from(Some(new)).unwrap().properties, m.properties);

        let claim = pb::Command {
            kind: Some(pb::command::Kind::ClaimClient(pb::ClaimClient {
                client_id: "c".into(),
                node: 1,
                nonce: 2,
                username: Some("u".into()),
                ..Default::default()
            })),
        };
        // An old encoder never wrote field 7: the bytes have none.
        let bytes = claim.encode_to_vec();
        let back = command_from(pb::Command::decode(&bytes[..]).unwrap()).unwrap();
        assert!(matches!(
            back,
            Command::ClaimClient {
                same_identity_only: false,
                ..
            }
        ));
    }
}
