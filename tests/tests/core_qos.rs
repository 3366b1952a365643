//! QoS 0/1/2 in both directions, packet identifiers, the in-flight window
//! and the client's Receive Maximum, against the real broker binary.

use std::time::Duration;

use raftmq::codec::{Packet, Protocol, PubResp, QoS};
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(5);

fn open(b: &Broker, id: &str, protocol: Protocol) -> RawClient {
    let (c, ack) = RawClient::open(b.tcp_addr(), raw::connect(protocol, id, true));
    assert_eq!(ack.code, 0);
    c
}

#[test]
fn qos_is_the_minimum_of_publish_and_subscription() {
    let b = Broker::start(BrokerConfig::new());
    for proto in [Protocol::V311, Protocol::V5] {
        let mut s1 = open(&b, "s1", proto);
        let mut s2 = open(&b, "s2", proto);
        s1.subscribe(1, "q/#", QoS::AtLeastOnce);
        s2.subscribe(1, "q/#", QoS::ExactlyOnce);
        let mut p = open(&b, "p", proto);
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            p.publish("q/x", &[i as u8], qos, false, 10 + i as u16);
            let m1 = s1.next_publish(T).expect("s1 gets it");
            let m2 = s2.next_publish(T).expect("s2 gets it");
            assert_eq!(m1.qos, qos.min(QoS::AtLeastOnce));
            assert_eq!(m2.qos, qos);
            assert_eq!(&m1.payload[..], &[i as u8]);
            s1.ack(&m1);
            s2.ack(&m2);
        }
        p.disconnect();
        s1.disconnect();
        s2.disconnect();
    }
}

#[test]
fn inbound_qos2_is_delivered_once_even_when_the_publish_is_resent() {
    let b = Broker::start(BrokerConfig::new());
    let mut sub = open(&b, "sub", Protocol::V311);
    sub.subscribe(1, "x", QoS::AtMostOnce);
    let mut p = open(&b, "pub", Protocol::V311);
    p.publish("x", b"once", QoS::ExactlyOnce, false, 7);
    let rec = p.recv_until(T, |q| match q {
        Packet::PubRec(r) => Some(r.packet_id),
        _ => None,
    });
    assert_eq!(rec, Some(7));
    // The client did not see PUBREC (as far as it knows) and resends.
    let mut again = raw::publish("x", b"once", QoS::ExactlyOnce, false, 7);
    again.dup = true;
    p.send(&Packet::Publish(again));
    assert_eq!(
        p.recv_until(T, |q| match q {
            Packet::PubRec(r) => Some(r.packet_id),
            _ => None,
        }),
        Some(7)
    );
    p.send(&Packet::PubRel(PubResp::new(7, 0)));
    assert_eq!(
        p.recv_until(T, |q| match q {
            Packet::PubComp(r) => Some(r.packet_id),
            _ => None,
        }),
        Some(7)
    );
    assert_eq!(
        &sub.next_publish(T).expect("delivered").payload[..],
        b"once"
    );
    sub.expect_no_publish(Duration::from_millis(500));
    // PUBREL for an id that is not pending still completes (idempotent),
    // 5.0 would say 0x92; 3.1.1 just PUBCOMPs.
    p.send(&Packet::PubRel(PubResp::new(7, 0)));
    assert!(p
        .recv_until(T, |q| matches!(q, Packet::PubComp(_)).then_some(()))
        .is_some());
}

#[test]
fn v5_pubrel_for_an_unknown_id_says_packet_identifier_not_found() {
    let b = Broker::start(BrokerConfig::new());
    let mut p = open(&b, "p5", Protocol::V5);
    p.send(&Packet::PubRel(PubResp::new(99, 0)));
    let code = p.recv_until(T, |q| match q {
        Packet::PubComp(r) => Some(r.code),
        _ => None,
    });
    assert_eq!(code, Some(0x92));
}

#[test]
fn outbound_window_respects_max_inflight_and_receive_maximum() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nmax_inflight_messages = 5"));
    // 3.1.1 subscriber: the server's window (5) applies.
    let mut sub = open(&b, "w311", Protocol::V311);
    sub.subscribe(1, "w", QoS::AtLeastOnce);
    // 5.0 subscriber announcing Receive Maximum 2.
    let mut c = raw::connect(Protocol::V5, "w5", true);
    c.properties.receive_maximum = Some(2);
    let (mut sub5, _) = RawClient::open(b.tcp_addr(), c);
    sub5.subscribe(1, "w", QoS::AtLeastOnce);

    let mut p = open(&b, "wp", Protocol::V311);
    for i in 0..12u16 {
        assert_eq!(p.publish_qos1("w", &i.to_be_bytes(), false, i + 1), 0);
    }
    let mut got = Vec::new();
    while let Some(m) = sub.next_publish(Duration::from_millis(700)) {
        got.push(m);
    }
    assert_eq!(got.len(), 5, "only the window is sent before acks");
    let mut got5 = Vec::new();
    while let Some(m) = sub5.next_publish(Duration::from_millis(700)) {
        got5.push(m);
    }
    assert_eq!(got5.len(), 2, "Receive Maximum 2 bounds the window");
    // Acking releases the rest, in order.
    let mut all = Vec::new();
    let mut window = got;
    while !window.is_empty() {
        for m in &window {
            sub.ack(m);
            all.push(u16::from_be_bytes([m.payload[0], m.payload[1]]));
        }
        window.clear();
        while let Some(m) = sub.next_publish(Duration::from_millis(500)) {
            window.push(m);
        }
    }
    assert_eq!(all, (0..12).collect::<Vec<_>>());
    // Packet identifiers in flight are distinct and non-zero.
    let ids: std::collections::HashSet<u16> = got5.iter().map(|m| m.packet_id).collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&0));
}

#[test]
fn inbound_receive_maximum_exceeded_closes_a_v5_client() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nreceive_maximum = 2"));
    let (mut p, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "rm", true));
    assert_eq!(ack.properties.receive_maximum, Some(2));
    // Three QoS 2 publishes without releasing any: the third exceeds it.
    for id in 1..=3u16 {
        p.publish("t", b"x", QoS::ExactlyOnce, false, id);
    }
    let mut code = None;
    loop {
        match p.recv(T) {
            Read1::Packet(Packet::Disconnect(d)) => code = Some(d.code),
            Read1::Packet(_) => {}
            Read1::Closed => break,
            Read1::Timeout => panic!("not closed"),
        }
    }
    assert_eq!(code, Some(0x93));
}

#[test]
fn rumqttc_v4_and_v5_clients_exchange_qos1_and_qos2() {
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions};
    let b = Broker::start(BrokerConfig::new());
    let port = b.ports.tcp;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // v5 subscriber.
        let mut o5 = rumqttc::v5::MqttOptions::new("r5", "127.0.0.1", port);
        o5.set_keep_alive(Duration::from_secs(30));
        let (c5, mut ev5) = rumqttc::v5::AsyncClient::new(o5, 100);
        c5.subscribe("r/#", rumqttc::v5::mqttbytes::QoS::ExactlyOnce)
            .await
            .unwrap();
        // v4 publisher.
        let mut o4 = MqttOptions::new("r4", "127.0.0.1", port);
        o4.set_keep_alive(Duration::from_secs(30));
        let (c4, mut ev4) = AsyncClient::new(o4, 100);
        // Wait for the v5 SUBACK before publishing.
        loop {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(_)) =
                ev5.poll().await.unwrap()
            {
                break;
            }
        }
        c4.publish("r/1", rumqttc::QoS::AtLeastOnce, false, "one")
            .await
            .unwrap();
        c4.publish("r/2", rumqttc::QoS::ExactlyOnce, false, "two")
            .await
            .unwrap();
        let pub_side = tokio::spawn(async move {
            let (mut acks, mut comps) = (0, 0);
            while acks < 1 || comps < 1 {
                match ev4.poll().await.unwrap() {
                    Event::Incoming(Incoming::PubAck(_)) => acks += 1,
                    Event::Incoming(Incoming::PubComp(_)) => comps += 1,
                    _ => {}
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            let ev = tokio::time::timeout(T, ev5.poll())
                .await
                .expect("event in time")
                .unwrap();
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(p)) = ev {
                got.push((
                    String::from_utf8_lossy(&p.topic).to_string(),
                    p.qos as u8,
                    p.payload.to_vec(),
                ));
            }
        }
        tokio::time::timeout(T, pub_side)
            .await
            .expect("publisher acked")
            .unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("r/1".into(), 1, b"one".to_vec()),
                ("r/2".into(), 2, b"two".to_vec())
            ]
        );
    });
}

#[test]
fn qos_above_max_qos_is_downgraded_or_refused() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nmax_qos = 1"));
    let (mut c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "mq", true));
    assert_eq!(ack.properties.maximum_qos, Some(1));
    // Subscribing at QoS 2 is granted QoS 1.
    assert_eq!(c.subscribe(1, "m", QoS::ExactlyOnce), vec![1]);
    // Publishing at QoS 2 beyond Maximum QoS is a protocol violation (0x9B).
    c.publish("m", b"x", QoS::ExactlyOnce, false, 3);
    assert_eq!(c.expect_close(T), Some(0x9B));
}
