//! Retained messages (retain handling, clearing), wills (delay, normal
//! DISCONNECT, socket loss, keepalive timeout) and keepalive at 1.5x.

use std::time::{Duration, Instant};

use raftmq::codec::{Packet, Properties, Protocol, QoS, SubOptions};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(5);

fn open(b: &Broker, id: &str, protocol: Protocol) -> RawClient {
    RawClient::open(b.tcp_addr(), raw::connect(protocol, id, true)).0
}

#[test]
fn retained_is_delivered_at_subscribe_and_cleared_by_empty_payload() {
    let b = Broker::start(BrokerConfig::new());
    let mut p = open(&b, "p", Protocol::V311);
    p.publish_qos1("r/a", b"A", true, 1);
    p.publish_qos1("r/b", b"B", true, 2);
    p.publish_qos1("r/c", b"live only", false, 3);

    let mut s = open(&b, "s", Protocol::V311);
    s.subscribe(1, "r/+", QoS::AtLeastOnce);
    let mut got = Vec::new();
    while let Some(m) = s.next_publish(Duration::from_millis(600)) {
        assert!(m.retain, "retained copies at subscribe carry RETAIN");
        s.ack(&m);
        got.push(m.payload.to_vec());
    }
    got.sort();
    assert_eq!(got, vec![b"A".to_vec(), b"B".to_vec()]);

    // A live publish of a retained message reaches existing subscribers
    // with RETAIN cleared (3.1.1 and 5.0 without retain-as-published).
    p.publish_qos1("r/a", b"A2", true, 4);
    let live = s.next_publish(T).expect("live");
    assert!(!live.retain);
    s.ack(&live);

    // Empty payload clears; it is not stored.
    p.publish_qos1("r/a", b"", true, 5);
    let _ = s.next_publish(T);
    let mut s2 = open(&b, "s2", Protocol::V311);
    s2.subscribe(1, "r/a", QoS::AtMostOnce);
    s2.expect_no_publish(Duration::from_millis(500));
}

#[test]
fn retain_handling_and_retain_as_published() {
    let b = Broker::start(BrokerConfig::new());
    let mut p = open(&b, "p", Protocol::V5);
    p.publish_qos1("h", b"kept", true, 1);

    let mut s = open(&b, "s", Protocol::V5);
    let opts = |rh: u8, rap: bool| SubOptions {
        qos: QoS::AtMostOnce,
        retain_handling: rh,
        retain_as_published: rap,
        no_local: false,
    };
    // 2: never at subscribe.
    s.subscribe_with(1, "h", opts(2, false));
    s.expect_no_publish(Duration::from_millis(400));
    // 1: only when the subscription is new; it exists, so nothing.
    s.subscribe_with(2, "h", opts(1, false));
    s.expect_no_publish(Duration::from_millis(400));
    // 0: always.
    s.subscribe_with(3, "h", opts(0, true));
    let m = s.next_publish(T).expect("retained at subscribe");
    assert!(m.retain);
    // retain-as-published keeps the flag on live messages.
    p.publish_qos1("h", b"again", true, 2);
    assert!(s.next_publish(T).expect("live").retain);

    // 1 on a new subscription sends.
    let mut s2 = open(&b, "s2", Protocol::V5);
    s2.subscribe_with(1, "h", opts(1, false));
    assert_eq!(&s2.next_publish(T).expect("new sub").payload[..], b"again");
}

#[test]
fn will_is_sent_on_socket_loss_but_not_on_normal_disconnect() {
    let b = Broker::start(BrokerConfig::new());
    let mut watcher = open(&b, "watcher", Protocol::V311);
    watcher.subscribe(1, "will/#", QoS::AtLeastOnce);

    let mut c = raw::connect(Protocol::V311, "w1", true);
    c.will = Some(raw::will("will/w1", b"gone", QoS::AtLeastOnce, false));
    let (client, _) = RawClient::open(b.tcp_addr(), c.clone());
    client.disconnect();
    watcher.expect_no_publish(Duration::from_millis(600));

    let (client, _) = RawClient::open(b.tcp_addr(), c);
    drop(client); // socket closed without DISCONNECT
    let m = watcher.next_publish(T).expect("will published");
    assert_eq!((&*m.topic, &m.payload[..]), ("will/w1", &b"gone"[..]));
}

#[test]
fn v5_disconnect_with_will_message_sends_it() {
    let b = Broker::start(BrokerConfig::new());
    let mut watcher = open(&b, "watcher", Protocol::V5);
    watcher.subscribe(1, "will/#", QoS::AtMostOnce);
    let mut c = raw::connect(Protocol::V5, "w4", true);
    c.will = Some(raw::will("will/w4", b"bye", QoS::AtMostOnce, false));
    let (mut client, _) = RawClient::open(b.tcp_addr(), c);
    client.send(&Packet::Disconnect(raftmq::codec::Disconnect {
        code: 0x04,
        properties: Properties::default(),
    }));
    assert_eq!(&watcher.next_publish(T).expect("will").payload[..], b"bye");
}

#[test]
fn will_delay_interval_waits_and_a_reconnect_cancels_it() {
    let b = Broker::start(BrokerConfig::new());
    let mut watcher = open(&b, "watcher", Protocol::V5);
    watcher.subscribe(1, "will/#", QoS::AtMostOnce);

    let mut c = raw::connect(Protocol::V5, "wd", true);
    c.properties.session_expiry_interval = Some(60);
    let mut w = raw::will("will/wd", b"late", QoS::AtMostOnce, false);
    w.properties.will_delay_interval = Some(2);
    c.will = Some(w);

    // Lost, then back within the delay: no will.
    let (client, _) = RawClient::open(b.tcp_addr(), c.clone());
    drop(client);
    std::thread::sleep(Duration::from_millis(500));
    let mut resumed = c.clone();
    resumed.clean_start = false;
    let (client, _) = RawClient::open(b.tcp_addr(), resumed);
    watcher.expect_no_publish(Duration::from_millis(2500));

    // Lost for good: the will comes after about 2 s, not before.
    let lost = Instant::now();
    drop(client);
    let m = watcher
        .next_publish(Duration::from_secs(6))
        .expect("delayed will");
    let waited = lost.elapsed();
    assert_eq!(&m.payload[..], b"late");
    assert!(
        waited >= Duration::from_millis(1800),
        "will too early: {waited:?}"
    );
}

#[test]
fn keepalive_is_enforced_at_one_and_a_half_times_and_fires_the_will() {
    let b = Broker::start(BrokerConfig::new());
    let mut watcher = open(&b, "watcher", Protocol::V311);
    watcher.subscribe(1, "will/#", QoS::AtMostOnce);
    let mut c = raw::connect(Protocol::V5, "ka", true);
    c.keep_alive = 2;
    c.will = Some(raw::will("will/ka", b"timeout", QoS::AtMostOnce, false));
    let start = Instant::now();
    let (mut client, _) = RawClient::open(b.tcp_addr(), c);
    // Silent client: closed after 1.5 x 2 s = 3 s (not at 2 s).
    let code = client.expect_close(Duration::from_secs(6));
    let after = start.elapsed();
    assert!(
        after >= Duration::from_millis(2900),
        "closed too early: {after:?}"
    );
    assert!(
        after < Duration::from_millis(4500),
        "closed too late: {after:?}"
    );
    assert_eq!(code, Some(0x8D));
    assert_eq!(
        &watcher.next_publish(T).expect("will").payload[..],
        b"timeout"
    );

    // A client that pings stays connected.
    let mut c = raw::connect(Protocol::V311, "ka2", true);
    c.keep_alive = 1;
    let (mut client, _) = RawClient::open(b.tcp_addr(), c);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(800));
        client.send(&Packet::PingReq);
        assert!(client
            .recv_until(T, |p| matches!(p, Packet::PingResp).then_some(()))
            .is_some());
    }
}

#[test]
fn server_keep_alive_lowers_a_too_long_keepalive() {
    let b = Broker::start(BrokerConfig::new().raw("[mqtt]\nmax_keepalive = 30"));
    let mut c = raw::connect(Protocol::V5, "ska", true);
    c.keep_alive = 600;
    let (_client, ack) = RawClient::open(b.tcp_addr(), c);
    assert_eq!(ack.properties.server_keep_alive, Some(30));
}
