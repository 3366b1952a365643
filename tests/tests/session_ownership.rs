//! A client id, its live connection and its persistent session belong to
//! the identity that made them. Another user with the same client id is
//! refused (5.0 CONNACK 0x87, 3.1.1 return code 5) whether it asks to
//! resume the session or to start clean, and the owner keeps its
//! connection, its subscriptions and every queued message; the refusal is
//! logged and counted. `[auth] allow_session_takeover = "any"` restores
//! mosquitto's behaviour. Real brokers, real sockets, passwords from a
//! password file; in a cluster the owner is known on every node.

use std::net::SocketAddr;
use std::time::Duration;

use raftmq::codec::{reason, ConnAck, Packet, Protocol, QoS};
use raftmq_e2e::access::{alive, login, password_file};
use raftmq_e2e::cluster::{self, cli, grpc_addr, wait_leader};
use raftmq_e2e::probe::metric;
use raftmq_e2e::raw::RawClient;
use raftmq_e2e::{eventually, Broker, BrokerConfig};

const T: Duration = Duration::from_secs(15);

const USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("mallory", "mallory-pw"),
    ("bob", "bob-pw"),
];

const REFUSED: &str = "raftmq_session_takeover_refused_total";

fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .expect("a known user")
}

/// The `[auth]` table: the users above, anonymous clients allowed (they
/// are an identity too), plus `extra` lines.
fn auth(dir: &std::path::Path, extra: &str) -> String {
    let pw = password_file(dir, "passwd", USERS);
    format!(
        "[auth]\nallow_anonymous = true\nauth_fail_delay_ms = 10\npassword_file = \"{}\"\n{extra}\n",
        pw.display()
    )
}

/// CONNECT as `user` (None: anonymous); a session that outlives the
/// connection unless `clean`. Returns the client and its CONNACK.
fn open(
    addr: SocketAddr,
    protocol: Protocol,
    id: &str,
    user: Option<&str>,
    clean: bool,
) -> (RawClient, ConnAck) {
    let mut c = login(protocol, id, clean, user.map(|u| (u, password(u))));
    if protocol.is_v5() && !clean {
        c.properties.session_expiry_interval = Some(600);
    }
    RawClient::open(addr, c)
}

fn not_authorized(protocol: Protocol) -> u8 {
    if protocol.is_v5() {
        reason::NOT_AUTHORIZED
    } else {
        reason::v3::NOT_AUTHORIZED
    }
}

/// Every way another identity may ask for `id`: resume, clean start, and
/// anonymously. Each must be refused with "not authorized", no session
/// present, and the socket closed.
fn intruders_refused(addr: SocketAddr, protocol: Protocol, id: &str) -> u64 {
    let tries = [
        (Some("mallory"), false),
        (Some("mallory"), true),
        (None, true),
        (None, false),
    ];
    for (user, clean) in tries {
        let (mut c, ack) = open(addr, protocol, id, user, clean);
        let who = format!("{protocol:?} {user:?} clean={clean}");
        assert_eq!(ack.code, not_authorized(protocol), "{who}: {ack:?}");
        assert!(!ack.session_present, "{who}");
        assert_eq!(c.expect_close(T), None, "{who}: closed after CONNACK");
    }
    tries.len() as u64
}

/// Receives `n` PUBLISHes (acknowledged) and returns their payloads.
fn receive(c: &mut RawClient, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = c
            .next_publish(T)
            .unwrap_or_else(|| panic!("only {} of {n} messages: {got:?}", got.len()));
        c.ack(&p);
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    got
}

fn ten() -> Vec<String> {
    (0..10).map(|i| format!("m{i}")).collect()
}

/// alice's session on `owner_node`; mallory tries on `other_node` while
/// alice is connected and again once 10 messages are queued for her; then
/// alice comes back (on `other_node`) and gets all 10. Returns the number
/// of refusals made.
fn owner_keeps_everything(
    owner_node: SocketAddr,
    other_node: SocketAddr,
    protocol: Protocol,
) -> u64 {
    let id = format!("alice-{}", protocol.level());
    let topic = format!("alice/{}/inbox", protocol.level());
    let (mut alice, ack) = open(owner_node, protocol, &id, Some("alice"), false);
    assert_eq!(ack.code, 0, "alice connects");
    assert_eq!(alice.subscribe(1, &topic, QoS::AtLeastOnce), vec![1]);

    // A publish through the other node reaches her: that node has applied
    // her claim and subscription (a 0x10 means not yet; nothing was sent).
    let (mut bob, ack) = open(other_node, Protocol::V5, "bob-pub", Some("bob"), true);
    assert_eq!(ack.code, 0);
    let mut pid = 1;
    while bob.publish_qos1(&topic, b"live", false, pid) == reason::NO_MATCHING_SUBSCRIBERS {
        assert!(
            pid < 200,
            "the other node never learnt of alice's subscription"
        );
        pid += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(receive(&mut alice, 1), vec!["live"]);

    // While she is connected: nobody else takes the id, and her connection
    // stays up and keeps receiving.
    let mut refused = intruders_refused(other_node, protocol, &id);
    assert!(
        alive(&mut alice),
        "{protocol:?}: alice's connection stays up"
    );
    assert_eq!(bob.publish_qos1(&topic, b"still", false, 300), 0);
    assert_eq!(receive(&mut alice, 1), vec!["still"]);
    alice.disconnect();

    // While she is away: 10 acknowledged messages wait in her session.
    for (i, m) in ten().iter().enumerate() {
        assert_eq!(
            bob.publish_qos1(&topic, m.as_bytes(), false, 400 + i as u16),
            0
        );
    }
    refused += intruders_refused(other_node, protocol, &id);

    let (mut alice, ack) = open(other_node, protocol, &id, Some("alice"), false);
    assert_eq!(ack.code, 0, "alice comes back");
    assert!(
        ack.session_present,
        "{protocol:?}: alice's session is there"
    );
    assert_eq!(
        receive(&mut alice, 10),
        ten(),
        "{protocol:?}: alice's queue"
    );
    alice.expect_no_publish(Duration::from_millis(300));
    refused
}

#[test]
fn another_identity_is_refused_and_the_owner_keeps_connection_and_queue() {
    let files = tempfile::tempdir().unwrap();
    let b = Broker::start(BrokerConfig::new().raw(&auth(files.path(), "")));
    let a = b.tcp_addr();
    let mut refused = 0;
    for protocol in [Protocol::V5, Protocol::V311] {
        refused += owner_keeps_everything(a, a, protocol);
    }
    assert_eq!(metric(&b, REFUSED), refused as f64, "every refusal counted");
    // Each refusal is logged with the id, both identities and the address.
    let logs = strip_ansi(&b.logs());
    let line = logs
        .lines()
        .find(|l| {
            l.contains("belongs to another identity")
                && l.contains("client_id=alice-5")
                && l.contains("username=mallory")
                && l.contains("owner=alice")
                && l.contains("peer=127.0.0.1:")
        })
        .unwrap_or_else(|| panic!("no refusal logged:\n{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        logs.lines()
            .any(|l| l.contains("client_id=alice-4") && l.contains("username=(anonymous)")),
        "anonymous intruder logged as such"
    );
}

/// The text of a log without its colour codes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn an_anonymous_session_belongs_to_anonymous_clients() {
    let files = tempfile::tempdir().unwrap();
    let b = Broker::start(BrokerConfig::new().raw(&auth(files.path(), "")));
    let a = b.tcp_addr();
    let (mut anon, ack) = open(a, Protocol::V5, "sensor-1", None, false);
    assert_eq!(ack.code, 0);
    anon.subscribe(1, "sensor/cmd", QoS::AtLeastOnce);
    // A named user may not take it; another anonymous client may (the
    // same identity), which closes the first connection as ever.
    let (_, ack) = open(a, Protocol::V5, "sensor-1", Some("alice"), false);
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
    assert!(alive(&mut anon));
    let (_, ack) = open(a, Protocol::V5, "sensor-1", None, false);
    assert_eq!(ack.code, 0);
    assert!(ack.session_present);
    assert_eq!(anon.expect_close(T), Some(reason::SESSION_TAKEN_OVER));
    assert_eq!(metric(&b, REFUSED), 1.0);
}

#[test]
fn takeover_any_is_mosquittos_behaviour() {
    let files = tempfile::tempdir().unwrap();
    let b = Broker::start(
        BrokerConfig::new().raw(&auth(files.path(), "allow_session_takeover = \"any\"")),
    );
    let a = b.tcp_addr();
    let (mut alice, ack) = open(a, Protocol::V5, "shared", Some("alice"), false);
    assert_eq!(ack.code, 0);
    assert_eq!(alice.subscribe(1, "alice/inbox", QoS::AtLeastOnce), vec![1]);
    // mallory takes the live connection's id: alice is closed (0x8E) and
    // mallory resumes her session, subscriptions and queue (no ACL here).
    let (mut mallory, ack) = open(a, Protocol::V5, "shared", Some("mallory"), false);
    assert_eq!(ack.code, 0);
    assert!(ack.session_present);
    assert_eq!(alice.expect_close(T), Some(reason::SESSION_TAKEN_OVER));
    let (mut bob, _) = open(a, Protocol::V5, "bob-pub", Some("bob"), true);
    assert_eq!(bob.publish_qos1("alice/inbox", b"for alice", false, 1), 0);
    assert_eq!(receive(&mut mallory, 1), vec!["for alice"]);
    // A 3.1.1 clean-session CONNECT under a third identity takes it too.
    let (_, ack) = open(a, Protocol::V311, "shared", Some("bob"), true);
    assert_eq!(ack.code, 0);
    assert_eq!(mallory.expect_close(T), Some(reason::SESSION_TAKEN_OVER));
    assert_eq!(metric(&b, REFUSED), 0.0);
}

#[test]
fn in_a_cluster_every_node_knows_the_owner() {
    let files = tempfile::tempdir().unwrap();
    let auth = auth(files.path(), "");
    let n1 = Broker::start(cluster::node_config(1, "").raw(&auth));
    let first = grpc_addr(&n1, 1);
    assert_eq!(wait_leader(&first, None, T), Some(1), "node 1 leads");
    let n2 = Broker::start(cluster::node_config(2, "").raw(&auth));
    let (code, out) = cli(&first, &["add", "--id", "2", "--addr", &grpc_addr(&n2, 2)]);
    assert_eq!(code, Some(0), "add node 2: {out}");
    // alice's session lives on node 1; mallory asks node 2, whose only
    // knowledge of it is the replicated state. alice then moves to node 2.
    let mut refused = 0;
    for protocol in [Protocol::V5, Protocol::V311] {
        refused += owner_keeps_everything(n1.tcp_addr(), n2.tcp_addr(), protocol);
    }
    assert!(
        eventually(T, || metric(&n2, REFUSED) == refused as f64),
        "node 2 counted {} of {refused} refusals",
        metric(&n2, REFUSED)
    );
    assert_eq!(metric(&n1, REFUSED), 0.0, "node 1 saw no intruder");
}

/// Two CONNECTs at once for a fresh id under two identities: whichever
/// the log orders second is refused by the state machine itself, so the
/// two nodes never both think they won.
#[test]
fn racing_claims_leave_one_owner() {
    let files = tempfile::tempdir().unwrap();
    let b = Broker::start(BrokerConfig::new().raw(&auth(files.path(), "")));
    let a = b.tcp_addr();
    for round in 0..5 {
        let id = format!("race-{round}");
        let mut bytes_a = bytes::BytesMut::new();
        let mut bytes_m = bytes::BytesMut::new();
        for (user, out) in [("alice", &mut bytes_a), ("mallory", &mut bytes_m)] {
            let mut c = login(Protocol::V5, &id, false, Some((user, password(user))));
            c.properties.session_expiry_interval = Some(600);
            raftmq::codec::encode(&Packet::Connect(Box::new(c)), Protocol::V5, out).unwrap();
        }
        let mut ca = RawClient::connect_tcp(a, Protocol::V5);
        let mut cm = RawClient::connect_tcp(a, Protocol::V5);
        ca.send_bytes(&bytes_a);
        cm.send_bytes(&bytes_m);
        let ack = |c: &mut RawClient| {
            c.recv_until(T, |p| match p {
                Packet::ConnAck(a) => Some(a.code),
                _ => None,
            })
            .expect("CONNACK")
        };
        let (code_a, code_m) = (ack(&mut ca), ack(&mut cm));
        let accepted = [code_a, code_m].iter().filter(|c| **c == 0).count();
        assert_eq!(
            accepted, 1,
            "round {round}: alice {code_a:#x}, mallory {code_m:#x}"
        );
        let (winner, code) = if code_a == 0 {
            (&mut ca, code_m)
        } else {
            (&mut cm, code_a)
        };
        assert_eq!(code, reason::NOT_AUTHORIZED, "round {round}");
        assert!(alive(winner), "round {round}: the owner stays connected");
    }
}
