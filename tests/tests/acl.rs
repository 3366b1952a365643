//! ACL enforcement against a mosquitto ACL file: a matrix of users x topics
//! x actions (the seed's `cassiamqtt` example, the anonymous section, `%c`
//! and `%u` patterns, denials inside grants), what a `#` subscriber and
//! `$SYS` readers get, and attempts to get around the rules: wildcard
//! publishes, `+/#` and `$share/...` wrapping, wills and retained messages
//! in denied topics, a second CONNECT, over-long usernames, and a session
//! resumed under another username.
//!
//! Negative deliveries are proven with a sentinel rather than a timeout: a
//! message the receiver may read is published after the denied ones, by
//! the same publisher, so it arrives only after anything routed before it.

use std::net::SocketAddr;
use std::time::Duration;

use raftmq::codec::{reason, Packet, Protocol, QoS};
use raftmq_e2e::access::{alive, login, password_file, summary, topics, until_sentinel};
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(10);

const ACL: &str = "\
# Anonymous clients: the rules before the first `user`.
topic read public/#
topic readwrite public/anon/#

# The seed's example.
user cassiamqtt
topic write cassia/#
topic read cassia/#

user alice
topic readwrite alice/#
topic deny alice/secret/#

user monitor
topic read #
topic deny secret/#
topic read $SYS/#

user reader
topic read #

user admin
topic readwrite #

# Everyone: their device tree by client id, their inbox by username.
pattern readwrite devices/%c/#
pattern read inbox/%u/#
";

const USERS: &[(&str, &str)] = &[
    ("cassiamqtt", "cassia-pw"),
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("monitor", "monitor-pw"),
    ("reader", "reader-pw"),
    ("admin", "admin-pw"),
];

fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .expect("a known user")
}

/// A broker with the ACL above, the users above, anonymous clients
/// allowed; the files live as long as the broker.
struct Acl {
    broker: Broker,
    _files: tempfile::TempDir,
}

impl std::ops::Deref for Acl {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        &self.broker
    }
}

fn start(sys_interval: u64) -> Acl {
    start_with(sys_interval, ACL, "")
}

/// A broker with the ACL text `acl`, the users above, and `extra` lines in
/// its `[auth]` table.
fn start_with(sys_interval: u64, acl_text: &str, extra: &str) -> Acl {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, acl_text).unwrap();
    let pw = password_file(dir.path(), "passwd", USERS);
    let broker = Broker::start(
        BrokerConfig::new()
            .sys_interval(sys_interval)
            .raw(&format!(
                "[auth]\nallow_anonymous = true\nauth_fail_delay_ms = 10\npassword_file = \"{}\"\nacl_file = \"{}\"\n{extra}\n",
                pw.display(),
                acl.display()
            )),
    );
    Acl {
        broker,
        _files: dir,
    }
}

/// Connects `user` (None: anonymous) and asserts the CONNACK accepted it.
fn connect(b: &Broker, protocol: Protocol, id: &str, user: Option<&str>) -> RawClient {
    connect_session(b.tcp_addr(), protocol, id, user, true).0
}

fn connect_session(
    addr: SocketAddr,
    protocol: Protocol,
    id: &str,
    user: Option<&str>,
    clean: bool,
) -> (RawClient, bool) {
    let mut c = login(protocol, id, clean, user.map(|u| (u, password(u))));
    if protocol.is_v5() && !clean {
        c.properties.session_expiry_interval = Some(300);
    }
    let (client, ack) = RawClient::open(addr, c);
    assert_eq!(ack.code, 0, "{user:?} ({id}) was refused");
    (client, ack.session_present)
}

/// Subscribes to every filter in one SUBSCRIBE (QoS 1); returns the codes.
/// Panics on a PUBLISH before the SUBACK: none is due in these tests (a
/// resumed session's queued copies would arrive there).
fn subscribe_all(c: &mut RawClient, packet_id: u16, filters: &[&str]) -> Vec<u8> {
    c.send(&Packet::Subscribe(raftmq::codec::Subscribe {
        packet_id,
        filters: filters
            .iter()
            .map(|f| {
                (
                    (*f).into(),
                    raftmq::codec::SubOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                )
            })
            .collect(),
        properties: Default::default(),
    }));
    c.recv_until(T, |p| match p {
        Packet::SubAck(a) if a.packet_id == packet_id => Some(a.codes.clone()),
        Packet::Publish(p) => panic!("PUBLISH before the SUBACK: {p:?}"),
        _ => None,
    })
    .expect("SUBACK")
}

/// One row of the matrix: may `user` read / write `topic`?
struct Row {
    topic: &'static str,
    read: bool,
    write: bool,
}

const fn row(topic: &'static str, read: bool, write: bool) -> Row {
    Row { topic, read, write }
}

/// For each user (None = anonymous) and client id, the topics and what
/// the ACL above lets them do there. The first readable row also serves as
/// the user's sentinel topic.
fn matrix() -> Vec<(Option<&'static str>, &'static str, Vec<Row>)> {
    vec![
        (
            None,
            "anon-1",
            vec![
                row("public/news", true, false),
                row("public/anon/x", true, true),
                row("cassia/x", false, false),
                row("devices/anon-1/up", true, true),
                row("devices/anon-2/up", false, false),
                // %u needs a username.
                row("inbox/anon-1/m", false, false),
            ],
        ),
        (
            Some("cassiamqtt"),
            "gw-c",
            vec![
                row("cassia/a/b", true, true),
                row("cassia", true, true),
                row("other/x", false, false),
                // Named users do not get the anonymous section.
                row("public/news", false, false),
                row("devices/gw-c/up", true, true),
                row("alice/x", false, false),
            ],
        ),
        (
            Some("alice"),
            "a-1",
            vec![
                row("alice/x", true, true),
                row("alice/secret/k", false, false),
                row("alice/secret", false, false),
                row("cassia/x", false, false),
                row("inbox/alice/m", true, false),
            ],
        ),
        (
            Some("bob"),
            "b-1",
            vec![
                row("inbox/bob/m", true, false),
                row("inbox/alice/m", false, false),
                row("devices/b-1/x", true, true),
                row("devices/a-1/x", false, false),
                row("bob/x", false, false),
            ],
        ),
        (
            Some("monitor"),
            "m-1",
            vec![
                row("anything/x", true, false),
                row("secret/x", false, false),
                row("public/news", true, false),
            ],
        ),
    ]
}

#[test]
fn users_topics_actions_matrix_v5() {
    let b = start(0);
    let mut watch = connect(&b, Protocol::V5, "watch", Some("admin"));
    assert_eq!(subscribe_all(&mut watch, 1, &["#"]), vec![1]);
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    let mut pid = 1u16;
    for (user, id, rows) in matrix() {
        let who = format!("{user:?}/{id}");
        let mut c = connect(&b, Protocol::V5, id, user);
        let sentinel_topic = rows.iter().find(|r| r.read).expect("a readable row").topic;

        // SUBSCRIBE: granted where the ACL lets the user read, 0x87 else.
        let filters: Vec<&str> = rows.iter().map(|r| r.topic).collect();
        let want: Vec<u8> = rows
            .iter()
            .map(|r| if r.read { 1 } else { reason::NOT_AUTHORIZED })
            .collect();
        assert_eq!(subscribe_all(&mut c, 7, &filters), want, "{who} SUBACK");

        // Delivery: only the readable topics arrive.
        for r in &rows {
            pid += 1;
            admin.publish_qos1(r.topic, r.topic.as_bytes(), false, pid);
        }
        pid += 1;
        admin.publish_qos1(sentinel_topic, b"sentinel-read", false, pid);
        let got = until_sentinel(&mut c, "sentinel-read");
        let want: Vec<&str> = rows.iter().filter(|r| r.read).map(|r| r.topic).collect();
        assert_eq!(topics(&got), want, "{who} received");
        until_sentinel(&mut watch, "sentinel-read");

        // PUBLISH: PUBACK 0x87 where the ACL says no, and nothing routed.
        for (i, r) in rows.iter().enumerate() {
            let code = c.publish_qos1(r.topic, r.topic.as_bytes(), false, 100 + i as u16);
            if r.write {
                assert!(code < 0x80, "{who} write {}: PUBACK {code:#x}", r.topic);
            } else {
                assert_eq!(code, reason::NOT_AUTHORIZED, "{who} write {}", r.topic);
            }
        }
        pid += 1;
        admin.publish_qos1(sentinel_topic, b"sentinel-write", false, pid);
        let want: Vec<&str> = rows.iter().filter(|r| r.write).map(|r| r.topic).collect();
        let seen = until_sentinel(&mut watch, "sentinel-write");
        assert_eq!(topics(&seen), want, "{who}: what reached a `#` subscriber");
        c.disconnect();
    }
}

#[test]
fn v311_gets_suback_0x80_and_denied_publishes_go_nowhere() {
    let b = start(0);
    let mut watch = connect(&b, Protocol::V5, "watch", Some("admin"));
    subscribe_all(&mut watch, 1, &["#"]);
    let mut c = connect(&b, Protocol::V311, "gw-c", Some("cassiamqtt"));
    assert_eq!(
        subscribe_all(&mut c, 2, &["cassia/#", "other/#", "#", "+/#"]),
        vec![1, 0x80, 0x80, 0x80]
    );
    // 3.1.1 has no way to refuse a PUBLISH: acknowledged, not routed.
    assert_eq!(c.publish_qos1("other/x", b"denied", false, 3), 0);
    assert_eq!(c.publish_qos1("cassia/x", b"allowed", false, 4), 0);
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    admin.publish_qos1("sentinel/x", b"sentinel", false, 1);
    let seen = until_sentinel(&mut watch, "sentinel");
    assert_eq!(topics(&seen), vec!["cassia/x"]);
}

#[test]
fn hash_subscriber_gets_no_denied_topics_live_or_retained() {
    let b = start(0);
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    // Retained before anyone subscribes, in allowed and denied topics.
    admin.publish_qos1("secret/r", b"secret-retained", true, 1);
    admin.publish_qos1("public/r", b"public-retained", true, 2);
    admin.publish_qos1("cassia/r", b"cassia-retained", true, 3);

    let mut monitor = connect(&b, Protocol::V5, "m-1", Some("monitor"));
    assert_eq!(subscribe_all(&mut monitor, 1, &["#"]), vec![1]);
    let mut cassia = connect(&b, Protocol::V5, "gw-c", Some("cassiamqtt"));
    assert_eq!(subscribe_all(&mut cassia, 1, &["cassia/#"]), vec![1]);
    for (i, t) in ["secret/a", "public/b", "secret/c/d", "x/y", "cassia/z"]
        .iter()
        .enumerate()
    {
        admin.publish_qos1(t, t.as_bytes(), false, 10 + i as u16);
    }
    admin.publish_qos1("public/s", b"sentinel", false, 20);
    admin.publish_qos1("cassia/s", b"sentinel", false, 21);

    let got = until_sentinel(&mut monitor, "sentinel");
    let (mut retained, live): (Vec<_>, Vec<_>) = summary(&got).into_iter().partition(|g| g.2);
    retained.sort();
    assert_eq!(
        retained,
        vec![
            ("cassia/r", "cassia-retained", true),
            ("public/r", "public-retained", true)
        ]
    );
    let live: Vec<&str> = live.iter().map(|g| g.0).collect();
    assert_eq!(live, vec!["public/b", "x/y", "cassia/z"]);

    // The seed user: only cassia/#, retained included.
    let got = until_sentinel(&mut cassia, "sentinel");
    assert_eq!(
        summary(&got),
        vec![
            ("cassia/r", "cassia-retained", true),
            ("cassia/z", "cassia/z", false)
        ]
    );
}

#[test]
fn sys_topics_are_readable_only_where_the_acl_says() {
    let b = start(1);
    let mut monitor = connect(&b, Protocol::V5, "m-1", Some("monitor"));
    assert_eq!(
        subscribe_all(&mut monitor, 1, &["$SYS/#", "public/#"]),
        vec![1, 1]
    );
    // `topic read #` does not reach `$SYS`: refused, and `#` never
    // carries `$SYS` messages.
    let mut reader = connect(&b, Protocol::V5, "r-1", Some("reader"));
    assert_eq!(
        subscribe_all(&mut reader, 1, &["$SYS/#", "$SYS/broker/uptime", "#"]),
        vec![reason::NOT_AUTHORIZED, reason::NOT_AUTHORIZED, 1]
    );
    let mut alice = connect(&b, Protocol::V5, "a-1", Some("alice"));
    assert_eq!(
        subscribe_all(&mut alice, 1, &["$SYS/broker/uptime", "+/#"]),
        vec![reason::NOT_AUTHORIZED, reason::NOT_AUTHORIZED]
    );
    // Two `$SYS` rounds reach the monitor, so at least one whole round was
    // published after every subscription above.
    let mut uptime = 0;
    while uptime < 2 {
        let p = monitor
            .next_publish(Duration::from_secs(10))
            .expect("$SYS messages for the monitor");
        monitor.ack(&p);
        assert!(p.topic.starts_with("$SYS/"), "{p:?}");
        if &*p.topic == "$SYS/broker/uptime" {
            uptime += 1;
        }
    }
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    admin.publish_qos1("public/s", b"sentinel", false, 1);
    let got = until_sentinel(&mut reader, "sentinel");
    assert!(got.is_empty(), "the `#` reader got {:?}", topics(&got));
}

#[test]
fn wildcard_publish_closes_the_connection_and_reaches_nobody() {
    let b = start(0);
    let mut watch = connect(&b, Protocol::V5, "watch", Some("admin"));
    subscribe_all(&mut watch, 1, &["#"]);
    for (i, topic) in ["cassia/#", "cassia/+", "+/x", "#"].iter().enumerate() {
        let mut c = connect(&b, Protocol::V5, &format!("gw-{i}"), Some("cassiamqtt"));
        c.publish(topic, b"wild", QoS::AtLeastOnce, false, 1);
        assert_eq!(
            c.expect_close(T),
            Some(reason::TOPIC_NAME_INVALID),
            "publish to {topic}"
        );
        let mut c = connect(&b, Protocol::V311, &format!("gw3-{i}"), Some("cassiamqtt"));
        c.publish(topic, b"wild", QoS::AtLeastOnce, false, 1);
        assert_eq!(c.expect_close(T), None, "3.1.1 publish to {topic}");
    }
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    admin.publish_qos1("sentinel/x", b"sentinel", false, 1);
    assert!(until_sentinel(&mut watch, "sentinel").is_empty());
}

#[test]
fn wildcard_and_shared_subscriptions_cannot_widen_a_grant() {
    let b = start(0);
    let mut cassia = connect(&b, Protocol::V5, "gw-c", Some("cassiamqtt"));
    assert_eq!(
        subscribe_all(
            &mut cassia,
            1,
            &[
                "#",
                "+/#",
                "+/+",
                "+",
                "$share/g/#",
                "$share/g/+/#",
                "$share/g/other/#",
                "$share/cassia/#",
                "$share/g/cassia/#",
            ]
        ),
        vec![
            reason::NOT_AUTHORIZED,
            reason::NOT_AUTHORIZED,
            reason::NOT_AUTHORIZED,
            reason::NOT_AUTHORIZED,
            reason::NOT_AUTHORIZED,
            reason::NOT_AUTHORIZED,
            reason::NOT_AUTHORIZED,
            // `$share/cassia/#` is group `cassia`, filter `#`.
            reason::NOT_AUTHORIZED,
            1,
        ]
    );
    // A grant with a denial inside it: the wrapped wildcard is allowed and
    // filtered per message; the denied area itself is refused.
    let mut monitor = connect(&b, Protocol::V5, "m-1", Some("monitor"));
    assert_eq!(
        subscribe_all(
            &mut monitor,
            1,
            &["$share/g/+/#", "$share/g/secret/#", "$share/g/secret/+"]
        ),
        vec![1, reason::NOT_AUTHORIZED, reason::NOT_AUTHORIZED]
    );
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    for (i, t) in ["secret/a", "cassia/b", "secret/c/d", "other/e"]
        .iter()
        .enumerate()
    {
        admin.publish_qos1(t, t.as_bytes(), false, 10 + i as u16);
    }
    admin.publish_qos1("cassia/s", b"sentinel", false, 20);
    admin.publish_qos1("public/s", b"sentinel", false, 21);
    assert_eq!(
        topics(&until_sentinel(&mut cassia, "sentinel")),
        vec!["cassia/b"]
    );
    assert_eq!(
        topics(&until_sentinel(&mut monitor, "sentinel")),
        vec!["cassia/b", "other/e"]
    );
}

#[test]
fn will_to_a_denied_topic_is_refused_at_connect() {
    let b = start(0);
    let a = b.tcp_addr();
    for (protocol, code) in [
        (Protocol::V5, reason::NOT_AUTHORIZED),
        (Protocol::V311, reason::v3::NOT_AUTHORIZED),
    ] {
        let mut c = login(protocol, "gw-w", true, Some(("cassiamqtt", "cassia-pw")));
        c.will = Some(raw::will("other/will", b"boom", QoS::AtLeastOnce, false));
        let (_, ack) = RawClient::open(a, c.clone());
        assert_eq!(ack.code, code, "{protocol:?}: will to other/will");
        // Anonymous, into a topic only readable for anonymous clients.
        let mut anon = raw::connect(protocol, "anon-w", true);
        anon.will = Some(raw::will("public/news", b"boom", QoS::AtMostOnce, true));
        let (_, ack) = RawClient::open(a, anon);
        assert_eq!(
            ack.code, code,
            "{protocol:?}: anonymous will to public/news"
        );
        // The same client with a will in its own area is accepted.
        c.will = Some(raw::will("cassia/will", b"ok", QoS::AtLeastOnce, false));
        let (_, ack) = RawClient::open(a, c);
        assert_eq!(ack.code, 0, "{protocol:?}: will to cassia/will");
    }
}

#[test]
fn a_second_connect_closes_the_connection_without_new_rights() {
    let b = start(0);
    let mut watch = connect(&b, Protocol::V5, "watch", Some("admin"));
    subscribe_all(&mut watch, 1, &["#"]);
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut c = connect(&b, protocol, "b-1", Some("bob"));
        // A second CONNECT as admin, and right behind it (same write) a
        // publish only admin may make.
        let mut bytes = bytes::BytesMut::new();
        let again = login(protocol, "b-1", true, Some(("admin", "admin-pw")));
        raftmq::codec::encode(&Packet::Connect(Box::new(again)), protocol, &mut bytes).unwrap();
        let p = raw::publish("admin/only", b"escalated", QoS::AtLeastOnce, false, 9);
        raftmq::codec::encode(&Packet::Publish(p), protocol, &mut bytes).unwrap();
        c.send_bytes(&bytes);
        let code = c.expect_close(T);
        let want = protocol.is_v5().then_some(reason::PROTOCOL_ERROR);
        assert_eq!(code, want, "{protocol:?}");
    }
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    admin.publish_qos1("sentinel/x", b"sentinel", false, 1);
    assert!(until_sentinel(&mut watch, "sentinel").is_empty());
}

/// A CONNECT (5.0, clean start, keep alive 60, client id `x`) with a
/// username field of `declared` length of which `username` is present,
/// then a password; `None` if the lengths do not fit in a packet.
fn connect_bytes(declared: u16, username: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2, 0, 60, 0]);
    body.extend_from_slice(&[0, 1, b'x']);
    body.extend_from_slice(&declared.to_be_bytes());
    body.extend_from_slice(username);
    body.extend_from_slice(&[0, 2, b'p', b'w']);
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

#[test]
fn over_long_usernames_are_refused_and_harm_nothing() {
    let b = start(0);
    let a = b.tcp_addr();
    // The longest username MQTT can carry, starting with a real user's
    // name: bad credentials, nothing more.
    let mut long = b"admin".to_vec();
    long.resize(65535, b'a');
    let mut c = RawClient::connect_tcp(a, Protocol::V5);
    c.send_bytes(&connect_bytes(65535, &long));
    match c.recv(T) {
        Read1::Packet(Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD)
        }
        other => panic!("expected CONNACK 0x86, got {other:?}"),
    }
    // A username length that runs past the end of the packet: malformed,
    // the connection is closed without a session.
    let mut c = RawClient::connect_tcp(a, Protocol::V5);
    c.send_bytes(&connect_bytes(65535, b"admin"));
    match c.recv(T) {
        Read1::Closed => {}
        Read1::Packet(Packet::ConnAck(ack)) => assert!(ack.code >= 0x80, "{ack:?}"),
        other => panic!("expected the connection closed, got {other:?}"),
    }
    // "admin" followed by a NUL and more: not the user admin, and not a
    // valid MQTT string (U+0000 is forbidden).
    let mut c = RawClient::connect_tcp(a, Protocol::V5);
    c.send_bytes(&connect_bytes(8, b"admin\0xx"));
    match c.recv(T) {
        Read1::Closed => {}
        Read1::Packet(Packet::ConnAck(ack)) => assert!(ack.code >= 0x80, "{ack:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The broker is unharmed.
    let mut admin = connect(&b, Protocol::V5, "admin-1", Some("admin"));
    assert!(alive(&mut admin));
}

/// Only where takeovers across identities are allowed (by default bob is
/// refused: see tests/session_ownership.rs).
#[test]
fn a_session_resumed_under_another_username_keeps_nothing_of_the_first() {
    let b = start_with(0, ACL, "allow_session_takeover = \"any\"");
    let a = b.tcp_addr();
    // alice's persistent session, with a subscription and, once she is
    // gone, a queued message only she may read.
    let (mut alice, _) = connect_session(a, Protocol::V5, "shared-id", Some("alice"), false);
    assert_eq!(subscribe_all(&mut alice, 1, &["alice/#"]), vec![1]);
    alice.disconnect();
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    admin.publish_qos1("alice/private", b"for alice only", false, 1);

    // bob takes the client id over without a clean start.
    let (mut bob, _) = connect_session(a, Protocol::V5, "shared-id", Some("bob"), false);
    assert_eq!(subscribe_all(&mut bob, 2, &["inbox/bob/#"]), vec![1]);
    admin.publish_qos1("alice/later", b"also for alice", false, 2);
    admin.publish_qos1("inbox/bob/m", b"sentinel", false, 3);
    let got = until_sentinel(&mut bob, "sentinel");
    assert!(
        got.is_empty(),
        "bob received alice's messages: {:?}",
        summary(&got)
    );
}

#[test]
fn a_restored_session_gets_what_its_user_may_read_after_a_restart() {
    let mut b = start(0);
    let a = b.tcp_addr();
    let (mut alice, _) = connect_session(a, Protocol::V5, "alice-1", Some("alice"), false);
    assert_eq!(subscribe_all(&mut alice, 1, &["alice/#"]), vec![1]);
    alice.disconnect();
    // A QoS 1 copy owed to her session: its PUBACK means it, and the
    // subscription before it, are committed to the log.
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    admin.publish_qos1("alice/before", b"queued before restart", false, 1);
    drop(admin);
    b.broker.restart();
    // While alice is away, after the restart: one for her, one she must
    // not read, then the sentinel.
    let mut admin = connect(&b, Protocol::V5, "admin-pub", Some("admin"));
    admin.publish_qos1("alice/x", b"queued after restart", false, 1);
    admin.publish_qos1("alice/secret/k", b"never", false, 2);
    admin.publish_qos1("alice/y", b"sentinel", false, 3);
    let (mut alice, present) = connect_session(a, Protocol::V5, "alice-1", Some("alice"), false);
    assert!(present, "the session did not survive the restart");
    let got = until_sentinel(&mut alice, "sentinel");
    assert_eq!(
        summary(&got),
        vec![
            ("alice/before", "queued before restart", false),
            ("alice/x", "queued after restart", false)
        ]
    );
}

/// Users that the ACL lets write `$SYS`, for the tests that show nobody
/// may.
const SYS_ACL: &str = "\
user admin
topic readwrite #
topic readwrite $SYS/#
topic readwrite $SYSTEM/#

user monitor
topic read $SYS/#

pattern readwrite %c/#
";

#[test]
fn nobody_publishes_under_sys_whatever_the_acl_grants() {
    let b = start_with(1, SYS_ACL, "");
    let a = b.tcp_addr();
    let forged = b"raftmq 0.0.0-forged";
    let mut admin = connect(&b, Protocol::V5, "admin-1", Some("admin"));
    assert_eq!(
        admin.publish_qos1("$SYS/broker/version", forged, true, 1),
        reason::NOT_AUTHORIZED,
        "5.0 QoS 1"
    );
    admin.publish("$SYS/broker/version", forged, QoS::ExactlyOnce, true, 2);
    let rec = admin.recv_until(T, |p| match p {
        Packet::PubRec(r) if r.packet_id == 2 => Some(r.code),
        _ => None,
    });
    assert_eq!(rec, Some(reason::NOT_AUTHORIZED), "5.0 QoS 2");
    assert_eq!(
        admin.publish_qos1("$SYS", forged, true, 3),
        reason::NOT_AUTHORIZED,
        "`$SYS` itself"
    );
    // 3.1.1 cannot say no: acknowledged, dropped, counted.
    let mut v3 = connect(&b, Protocol::V311, "admin-3", Some("admin"));
    assert_eq!(v3.publish_qos1("$SYS/broker/version", forged, true, 1), 0);
    v3.publish(
        "$SYS/broker/clients/total",
        forged,
        QoS::AtMostOnce,
        true,
        0,
    );
    assert!(alive(&mut v3));
    // Other `$` topics are the ACL's to decide, as before.
    assert_eq!(admin.publish_qos1("$SYSTEM/x", b"ok", false, 4), 0x10);

    // A later `$SYS` reader gets the broker's own version, never the
    // forged one, retained or live.
    let mut monitor = connect(&b, Protocol::V5, "m-1", Some("monitor"));
    assert_eq!(subscribe_all(&mut monitor, 1, &["$SYS/#"]), vec![1]);
    let mut version = None;
    let mut uptime = 0;
    while uptime < 2 {
        let p = monitor.next_publish(T).expect("$SYS messages");
        monitor.ack(&p);
        assert_ne!(&p.payload[..], &forged[..], "forged {p:?}");
        match &*p.topic {
            "$SYS/broker/version" => version = Some(p.payload.clone()),
            "$SYS/broker/uptime" => uptime += 1,
            _ => {}
        }
    }
    let version = version.expect("the retained version");
    assert!(version.starts_with(b"raftmq "), "{version:?}");
    let denied = raftmq_e2e::probe::metric(&b, "raftmq_publish_denied_total");
    assert_eq!(denied, 5.0, "every refused publish counted");

    // A will under `$SYS` is refused at CONNECT, whoever asks.
    for (protocol, code) in [
        (Protocol::V5, reason::NOT_AUTHORIZED),
        (Protocol::V311, reason::v3::NOT_AUTHORIZED),
    ] {
        let mut c = login(protocol, "admin-w", true, Some(("admin", "admin-pw")));
        c.will = Some(raw::will(
            "$SYS/broker/version",
            forged,
            QoS::AtLeastOnce,
            true,
        ));
        let (_, ack) = RawClient::open(a, c);
        assert_eq!(ack.code, code, "{protocol:?}: will under $SYS");
    }
}

#[test]
fn a_client_id_of_sys_gets_nothing_under_sys_through_a_pattern() {
    let b = start_with(1, SYS_ACL, "");
    for id in ["$SYS", "$SYS/broker"] {
        // `pattern readwrite %c/#` would read `$SYS/#` for it.
        let mut c = connect(&b, Protocol::V5, id, None);
        assert_eq!(
            subscribe_all(
                &mut c,
                1,
                &["$SYS/#", "$SYS/broker/uptime", "$SYS/broker/+"]
            ),
            vec![reason::NOT_AUTHORIZED; 3],
            "client id {id}"
        );
        // Two `$SYS` rounds (sys_interval 1) pass without a copy for it.
        c.expect_no_publish(Duration::from_millis(2500));
    }
    // The pattern still serves ordinary client ids.
    let mut dev = connect(&b, Protocol::V5, "dev-1", None);
    assert_eq!(subscribe_all(&mut dev, 1, &["dev-1/#"]), vec![1]);
    let mut admin = connect(&b, Protocol::V5, "admin-9", Some("admin"));
    admin.publish_qos1("dev-1/cmd", b"sentinel", false, 1);
    assert!(until_sentinel(&mut dev, "sentinel").is_empty());
}
