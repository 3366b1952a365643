//! Codec tests: hand-written frames from the specifications, the error each
//! malformed frame must give, and a property test that every packet we can
//! encode decodes back to itself.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn decode_all(bytes: &[u8], protocol: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, protocol, 1024 * 1024)
}

fn round_trip(p: &Packet, protocol: Protocol) -> Packet {
    let mut buf = BytesMut::new();
    encode(p, protocol, &mut buf).expect("encodes");
    assert_eq!(buf.len(), encoded_len(p, protocol));
    let decoder_protocol = match p {
        Packet::Connect(_) => None,
        _ => Some(protocol),
    };
    let got = decode(&mut buf, decoder_protocol, 0)
        .expect("decodes")
        .expect("whole");
    assert!(buf.is_empty(), "decoder left bytes");
    got
}

#[test]
fn connect_311_from_the_spec() {
    // mosquitto_sub -V 311 -i c1 -k 60 -c
    let bytes = [
        0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x00, 0x00, 0x3C, 0x00, 0x02, b'c',
        b'1',
    ];
    let Some(Packet::Connect(c)) = decode_all(&bytes, None).unwrap() else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.protocol, Protocol::V311);
    assert!(!c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.client_id, "c1");
    assert!(c.will.is_none() && c.username.is_none());
}

#[test]
fn partial_frames_wait_for_more() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: 7,
        properties: Properties::default(),
        payload: Bytes::from_static(b"hello"),
    });
    let mut full = BytesMut::new();
    encode(&p, Protocol::V311, &mut full).unwrap();
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(
            decode(&mut buf, Some(Protocol::V311), 0),
            Ok(None),
            "cut at {cut}"
        );
        assert_eq!(buf.len(), cut, "a partial frame is not consumed");
    }
}

#[test]
fn topic_alias_zero_is_left_to_the_connection() {
    // The connection answers it with 0x94 Topic Alias invalid.
    let bytes = [0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00];
    match decode_all(&bytes, Some(Protocol::V5)) {
        Ok(Some(Packet::Publish(p))) => assert_eq!(p.properties.topic_alias, Some(0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn connect_protocol_is_read_before_the_packet_decodes() {
    // MQTT 5 CONNECT whose Receive Maximum is 0: not decodable, but its
    // protocol is known, so the refusal can be a 5.0 CONNACK.
    let v5 = [
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x03, 0x21, 0x00,
        0x00, 0x00, 0x00,
    ];
    assert_eq!(connect_protocol(&v5), Some(Protocol::V5));
    assert_eq!(decode_all(&v5, None).unwrap_err().reason_code(), 0x82);
    assert_eq!(connect_protocol(&v5[..8]), None, "level not here yet");
    assert_eq!(connect_protocol(&[0x30, 0x00]), None, "not a CONNECT");
    let mut v3 = v5;
    v3[8] = 4;
    assert_eq!(connect_protocol(&v3), Some(Protocol::V311));
}

#[test]
fn size_is_checked_from_the_fixed_header_alone() {
    // Claims 2 MB of body; only the header is present. Must fail at once,
    // not wait for (or reserve) the body.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x01][..]);
    let err = decode(&mut buf, Some(Protocol::V5), 1024).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            size: 2_097_157,
            max: 1024
        }
    );
    assert_eq!(err.reason_code(), reason::PACKET_TOO_LARGE);
    assert!(buf.capacity() < 1024);
}

#[test]
fn malformed_frames_and_their_reason_codes() {
    let v5 = Some(Protocol::V5);
    let v3 = Some(Protocol::V311);
    let cases: &[(&[u8], Option<Protocol>, u8)] = &[
        // Five-byte remaining length.
        (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], v5, 0x81),
        // Packet type 0 is reserved.
        (&[0x00, 0x00], v5, 0x81),
        // AUTH does not exist in 3.1.1.
        (&[0xF0, 0x00], v3, 0x81),
        // First packet not CONNECT.
        (&[0xC0, 0x00], None, 0x82),
        // PUBLISH QoS 3.
        (&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], v3, 0x81),
        // QoS 0 PUBLISH with DUP.
        (&[0x38, 0x03, 0x00, 0x01, b'a'], v3, 0x81),
        // Wildcard in a topic name.
        (&[0x30, 0x03, 0x00, 0x01, b'#'], v3, 0x90),
        // Empty topic without an alias.
        (&[0x30, 0x03, 0x00, 0x00, 0x00], v5, 0x90),
        // Packet id 0 on QoS 1.
        (&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], v3, 0x81),
        // String length past the end.
        (&[0x30, 0x03, 0x00, 0x09, b'a'], v3, 0x81),
        // Invalid UTF-8 topic.
        (&[0x30, 0x03, 0x00, 0x01, 0xFF], v3, 0x81),
        // U+0000 in a topic.
        (&[0x30, 0x03, 0x00, 0x01, 0x00], v3, 0x81),
        // SUBSCRIBE with flags 0.
        (&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], v3, 0x81),
        // SUBSCRIBE without filters.
        (&[0x82, 0x02, 0x00, 0x01], v3, 0x82),
        // PUBREL with flags 0.
        (&[0x60, 0x02, 0x00, 0x01], v3, 0x81),
        // PINGREQ with a body.
        (&[0xC0, 0x01, 0x00], v3, 0x81),
        // 5.0 PUBLISH with a property twice (message expiry).
        (
            &[
                0x30, 0x0E, 0x00, 0x01, b'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1,
            ],
            v5,
            0x82,
        ),
        // 5.0 PUBLISH with a CONNACK-only property.
        (&[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x24, 0x01], v5, 0x82),
        // 5.0 PUBLISH, payload format UTF-8, payload not UTF-8.
        (
            &[0x30, 0x07, 0x00, 0x01, b'a', 0x02, 0x01, 0x01, 0xFF],
            v5,
            0x99,
        ),
        // 5.0 SUBSCRIBE with retain handling 3.
        (
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
            v5,
            0x82,
        ),
        // Property length past the end.
        (&[0x30, 0x04, 0x00, 0x01, b'a', 0x09], v5, 0x81),
    ];
    for (bytes, protocol, code) in cases {
        let err = decode_all(bytes, *protocol).expect_err(&format!("{bytes:02x?} decoded"));
        assert_eq!(err.reason_code(), *code, "{bytes:02x?}: {err}");
    }
}

#[test]
fn connect_errors() {
    let base = |name: &[u8], level: u8, flags: u8| {
        let mut v = vec![0x10, 0];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name);
        v.extend_from_slice(&[level, flags, 0, 60, 0, 1, b'c']);
        v[1] = (v.len() - 2) as u8;
        v
    };
    assert!(decode_all(&base(b"MQTT", 4, 0x02), None).is_ok());
    assert!(
        matches!(decode_all(&base(b"MQIsdp", 3, 0x02), None), Ok(Some(Packet::Connect(c))) if c.protocol == Protocol::V31)
    );
    assert_eq!(
        decode_all(&base(b"MQTT", 6, 0x02), None),
        Err(DecodeError::UnsupportedProtocol { level: 6 })
    );
    // Reserved flag.
    assert_eq!(
        decode_all(&base(b"MQTT", 4, 0x03), None)
            .unwrap_err()
            .reason_code(),
        0x81
    );
    // Will QoS without will flag.
    assert_eq!(
        decode_all(&base(b"MQTT", 4, 0x08), None)
            .unwrap_err()
            .reason_code(),
        0x81
    );
    // Password without user name in 3.1.1.
    assert!(decode_all(&base(b"MQTT", 4, 0x40), None).is_err());
    assert!(matches!(
        decode_all(&base(b"XMPP", 4, 0x02), None),
        Err(DecodeError::Protocol(_))
    ));
}

#[test]
fn v5_short_forms() {
    let v5 = Some(Protocol::V5);
    let Ok(Some(Packet::PubAck(a))) = decode_all(&[0x40, 0x02, 0x00, 0x05], v5) else {
        panic!()
    };
    assert_eq!((a.packet_id, a.code), (5, 0));
    let Ok(Some(Packet::PubAck(a))) = decode_all(&[0x40, 0x03, 0x00, 0x05, 0x10], v5) else {
        panic!()
    };
    assert_eq!(a.code, 0x10);
    let Ok(Some(Packet::Disconnect(d))) = decode_all(&[0xE0, 0x00], v5) else {
        panic!()
    };
    assert_eq!(d.code, 0);
    let Ok(Some(Packet::Disconnect(d))) = decode_all(&[0xE0, 0x01, 0x04], v5) else {
        panic!()
    };
    assert_eq!(d.code, 0x04);
    // Encoded back in the shortest form.
    let mut buf = BytesMut::new();
    encode(&Packet::PubAck(PubResp::new(5, 0)), Protocol::V5, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0x40, 0x02, 0x00, 0x05]);
}

/// The bare PUBACK read on its own is what `decode` makes of the same
/// bytes, in every version; any other form (or id 0) is left to `decode`.
#[test]
fn bare_puback_reads_as_decode_does() {
    for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
        let bytes = [0x40, 0x02, 0x01, 0x05, 0x40];
        let Ok(Some(Packet::PubAck(a))) = decode_all(&bytes[..4], Some(protocol)) else {
            panic!()
        };
        assert_eq!(bare_puback(&bytes), Some(a.packet_id));
        assert_eq!(a.packet_id, 0x0105);
    }
    assert_eq!(bare_puback(&[0x40, 0x02, 0x00, 0x00]), None);
    assert_eq!(bare_puback(&[0x40, 0x02, 0x00]), None);
    assert_eq!(bare_puback(&[0x40, 0x03, 0x00, 0x05, 0x10]), None);
    assert_eq!(bare_puback(&[0x41, 0x02, 0x00, 0x05]), None);
    assert_eq!(bare_puback(&[0x50, 0x02, 0x00, 0x05]), None);
}

#[test]
fn v3_drops_what_it_cannot_say() {
    let mut buf = BytesMut::new();
    let d = Packet::Disconnect(Disconnect {
        code: 0x8E,
        properties: Properties::default(),
    });
    encode(&d, Protocol::V311, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0xE0, 0x00]);
    assert!(encode(
        &Packet::Auth(Auth {
            code: 0,
            properties: Properties::default()
        }),
        Protocol::V311,
        &mut buf
    )
    .is_err());
}

#[test]
fn decoded_fields_share_the_frame() {
    let mut buf = BytesMut::new();
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::from(vec![7u8; 4096]),
    });
    encode(&p, Protocol::V311, &mut buf).unwrap();
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Some(Packet::Publish(got)) = decode(&mut buf, Some(Protocol::V311), 0).unwrap() else {
        panic!()
    };
    let at = got.payload.as_ptr() as usize;
    assert!(at >= start && at < end, "payload was copied");
}

// ---- property test: encode then decode is the identity -------------------

fn text() -> impl Strategy<Value = ByteStr> {
    "[a-z0-9/ ]{0,12}".prop_map(ByteStr::from)
}

fn topic_name() -> impl Strategy<Value = ByteStr> {
    "[a-z0-9]{1,6}(/[a-z0-9]{0,6}){0,3}".prop_map(ByteStr::from)
}

fn bin() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    (0u8..3).prop_map(|q| QoS::from_u8(q).unwrap_or_default())
}

/// Properties valid in a PUBLISH (and a will: the same set plus will delay).
fn publish_props() -> impl Strategy<Value = Properties> {
    (
        prop::option::of(0u32..1000),
        prop::option::of(text()),
        prop::option::of(topic_name()),
        prop::option::of(bin()),
        prop::collection::vec(1u32..268_435_455, 0..3),
        prop::collection::vec((text(), text()), 0..3),
    )
        .prop_map(|(mei, ct, rt, cd, ids, up)| Properties {
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: ids,
            user_properties: UserProperties::from_pairs(up).expect("short strings"),
            ..Properties::default()
        })
}

fn ack_props() -> impl Strategy<Value = Properties> {
    (
        prop::option::of(text()),
        prop::collection::vec((text(), text()), 0..2),
    )
        .prop_map(|(rs, up)| Properties {
            reason_string: rs,
            user_properties: UserProperties::from_pairs(up).expect("short strings"),
            ..Properties::default()
        })
}

/// `s` for MQTT 5; no properties at all for 3.1.1.
fn props_for(v5: bool, s: BoxedStrategy<Properties>) -> BoxedStrategy<Properties> {
    if v5 {
        s
    } else {
        Just(Properties::default()).boxed()
    }
}

/// Any reason code for MQTT 5; 3.1.1 acks carry none (0).
fn code_for(v5: bool) -> BoxedStrategy<u8> {
    if v5 {
        (0u8..=0xA2).boxed()
    } else {
        Just(0u8).boxed()
    }
}

fn publish_packet(v5: bool) -> BoxedStrategy<Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        1u16..,
        props_for(v5, publish_props().boxed()),
        bin(),
    )
        .prop_map(|(dup, qos, retain, topic, pid, properties, payload)| {
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id: if qos == QoS::AtMostOnce { 0 } else { pid },
                properties,
                payload,
            })
        })
        .boxed()
}

fn resp_packet(v5: bool) -> BoxedStrategy<Packet> {
    let ack = props_for(v5, ack_props().boxed());
    (0u8..4, 1u16.., code_for(v5), ack)
        .prop_map(|(k, id, code, properties)| {
            let r = PubResp {
                packet_id: id,
                code,
                properties,
            };
            match k {
                0 => Packet::PubAck(r),
                1 => Packet::PubRec(r),
                2 => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }
        })
        .boxed()
}

fn subscribe_packet(v5: bool) -> BoxedStrategy<Packet> {
    let opts = (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
        if v5 {
            SubOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubOptions {
                qos,
                ..SubOptions::default()
            }
        }
    });
    let sub_props = props_for(
        v5,
        prop::option::of(1u32..100_000)
            .prop_map(|id| Properties {
                subscription_identifiers: id.into_iter().collect(),
                ..Properties::default()
            })
            .boxed(),
    );
    (
        1u16..,
        prop::collection::vec((text(), opts), 1..4),
        sub_props,
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

/// SUBACK, UNSUBSCRIBE, UNSUBACK.
fn subscription_ack_packets(v5: bool) -> [BoxedStrategy<Packet>; 3] {
    let ack = props_for(v5, ack_props().boxed());
    let suback = (
        1u16..,
        prop::collection::vec(any::<u8>(), 1..4),
        ack.clone(),
    )
        .prop_map(|(packet_id, codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                codes,
                properties,
            })
        });
    let unsub = (1u16.., prop::collection::vec(text(), 1..4)).prop_map(|(packet_id, filters)| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters,
            properties: Properties::default(),
        })
    });
    let unsuback = (1u16.., prop::collection::vec(any::<u8>(), 1..4), ack).prop_map(
        move |(packet_id, codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                codes: if v5 { codes } else { Vec::new() },
                properties,
            })
        },
    );
    [suback.boxed(), unsub.boxed(), unsuback.boxed()]
}

fn connect_packet(v5: bool) -> BoxedStrategy<Packet> {
    let will = prop::option::of((
        topic_name(),
        bin(),
        qos(),
        any::<bool>(),
        props_for(v5, publish_props().boxed()),
    ));
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        will,
        prop::option::of(text()),
        prop::option::of(bin()),
        props_for(
            v5,
            (prop::option::of(any::<u32>()), prop::option::of(1u16..))
                .prop_map(|(sei, rm)| Properties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    ..Properties::default()
                })
                .boxed(),
        ),
    )
        .prop_map(move |(clean, ka, id, will, user, pass, properties)| {
            let will = will.map(|(topic, payload, qos, retain, mut properties)| {
                properties.subscription_identifiers.clear();
                if v5 {
                    properties.will_delay_interval = Some(5);
                }
                LastWill {
                    topic,
                    payload,
                    qos,
                    retain,
                    properties,
                }
            });
            // 3.1.1 forbids a password without a user name.
            let pass = if v5 || user.is_some() { pass } else { None };
            Packet::Connect(Box::new(Connect {
                protocol: if v5 { Protocol::V5 } else { Protocol::V311 },
                clean_start: clean,
                keep_alive: ka,
                client_id: id,
                will,
                username: user,
                password: pass,
                properties,
            }))
        })
        .boxed()
}

fn packet(v5: bool) -> impl Strategy<Value = Packet> {
    let ack = props_for(v5, ack_props().boxed());
    let disconnect = (code_for(v5), ack.clone())
        .prop_map(|(code, properties)| Packet::Disconnect(Disconnect { code, properties }));
    let connack = (any::<bool>(), code_for(v5), ack).prop_map(|(sp, code, properties)| {
        Packet::ConnAck(ConnAck {
            session_present: sp,
            code,
            properties,
        })
    });
    let [suback, unsub, unsuback] = subscription_ack_packets(v5);
    prop_oneof![
        publish_packet(v5),
        resp_packet(v5),
        subscribe_packet(v5),
        suback,
        unsub,
        unsuback,
        disconnect,
        connect_packet(v5),
        connack,
        Just(Packet::PingReq),
        Just(Packet::PingResp),
    ]
}

proptest! {
    #[test]
    fn v5_packets_round_trip(p in packet(true)) {
        prop_assert_eq!(round_trip(&p, Protocol::V5), p);
    }

    #[test]
    fn v311_packets_round_trip(p in packet(false)) {
        prop_assert_eq!(round_trip(&p, Protocol::V311), p);
    }

    /// The hot path's borrowed encoder writes exactly what `encode` writes.
    #[test]
    fn encode_publish_matches_encode(p in packet(true), v5 in any::<bool>()) {
        if let Packet::Publish(p) = &p {
            let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
            let mut whole = BytesMut::new();
            encode(&Packet::Publish(p.clone()), protocol, &mut whole).unwrap();
            let r = PublishRef {
                dup: p.dup,
                qos: p.qos,
                retain: p.retain,
                topic: p.topic.as_bytes(),
                packet_id: p.packet_id,
                properties: (!p.properties.is_empty()).then_some(&p.properties),
                forwarded: &[],
                payload: &p.payload,
            };
            let mut fast = BytesMut::new();
            encode_publish(&r, protocol, &mut fast).unwrap();
            prop_assert_eq!(&fast[..], &whole[..]);
            prop_assert_eq!(encoded_publish_len(&r, protocol), whole.len());
        }
    }

    /// Arbitrary bytes never panic and never decode to something that does
    /// not encode back to a decodable packet.
    #[test]
    fn arbitrary_bytes_are_refused_or_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..64), v5 in any::<bool>()) {
        let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(p)) = decode(&mut buf, Some(protocol), 0) {
            let proto = match &p { Packet::Connect(c) => c.protocol, _ => protocol };
            prop_assert_eq!(round_trip(&p, proto), p);
        }
    }
}
