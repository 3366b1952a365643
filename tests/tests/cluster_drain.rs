//! Handing a node's clients over: Admin Drain (the operator retires a pod),
//! SIGTERM (Kubernetes stops a pod), and the fresh-store signal the
//! operator uses to tell a pod that came back with an empty volume. Real
//! raftmq processes on 127.0.0.x, real signals, raw MQTT clients.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use raftmq::codec::{Connect, Packet, Protocol, PubResp, QoS};
use raftmq_e2e::cluster::{self, cli, grpc_addr, node_config, wait_leader, ELECTION_TIMEOUT_MS};
use raftmq_e2e::load::publish_acked;
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{eventually, Broker};

const T: Duration = Duration::from_secs(15);
const CONFIG: &str = "\n[mqtt]\nmax_queued_messages = 100000\n";

/// How one subscriber's connections ended, as it saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Goodbye {
    /// The DISCONNECT's reason code; None: the socket just closed.
    code: Option<u8>,
    server_reference: Option<String>,
}

/// What a following subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    ids: Vec<u32>,
    goodbyes: Vec<Goodbye>,
    /// CONNACK session present on every reconnect (after the first).
    resumed: Vec<bool>,
}

/// A CONNECT for `client_id` with a will on `will/<client_id>`; MQTT 5
/// sessions outlive the connection (expiry 1 h), 3.1.1 ones when not clean.
fn connect(protocol: Protocol, client_id: &str, clean: bool) -> Connect {
    let mut c = raw::connect(protocol, client_id, clean);
    if protocol.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c.will = Some(raw::will(
        &format!("will/{client_id}"),
        b"gone",
        QoS::AtLeastOnce,
        false,
    ));
    c
}

/// A persistent subscriber to `d/#` that starts on `first` and, whenever
/// its connection ends, resumes its session (clean start off) on the next
/// of `then`. Acknowledges every delivery; returns once `stop` is set and
/// nothing came for 4 s. `ready` is sent once its first SUBACK is in.
fn follow(
    protocol: Protocol,
    client_id: String,
    first: SocketAddr,
    then: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<()>,
) -> Seen {
    let mut seen = Seen::default();
    let mut at = 0usize;
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut subscribed = false;
    while Instant::now() < deadline {
        let addr = if subscribed {
            at += 1;
            then[(at - 1) % then.len()]
        } else {
            first
        };
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut c = RawClient::connect_tcp(addr, protocol);
        // The first connection starts a new session; every later one
        // resumes it.
        let clean = !subscribed && protocol.is_v5();
        c.send(&Packet::Connect(Box::new(connect(
            protocol, &client_id, clean,
        ))));
        match c.recv(Duration::from_secs(8)) {
            Read1::Packet(Packet::ConnAck(a)) if a.code == 0 => {
                if subscribed {
                    seen.resumed.push(a.session_present);
                }
            }
            _ => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        if !subscribed {
            assert_eq!(c.subscribe(1, "d/#", QoS::AtLeastOnce), vec![1]);
            subscribed = true;
            let _ = ready.send(());
        }
        loop {
            match c.recv(Duration::from_millis(500)) {
                Read1::Packet(Packet::Publish(p)) => {
                    let id = p.payload.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok());
                    seen.ids.push(u32::from_be_bytes(id.expect("a 4-byte id")));
                    c.send(&Packet::PubAck(PubResp::new(p.packet_id, 0)));
                    quiet_since = Instant::now();
                }
                Read1::Packet(Packet::Disconnect(d)) => {
                    seen.goodbyes.push(Goodbye {
                        code: Some(d.code),
                        server_reference: d.properties.server_reference.map(|s| s.to_string()),
                    });
                    // The broker closes the socket after its DISCONNECT.
                    let _ = c.recv(Duration::from_secs(2));
                    break;
                }
                Read1::Closed => {
                    seen.goodbyes.push(Goodbye {
                        code: None,
                        server_reference: None,
                    });
                    break;
                }
                Read1::Packet(_) => {}
                Read1::Timeout => {
                    if stop.load(Ordering::Relaxed)
                        && quiet_since.elapsed() > Duration::from_secs(4)
                    {
                        // A normal DISCONNECT: the will goes with it.
                        c.disconnect();
                        return seen;
                    }
                }
            }
        }
    }
    seen
}

/// Publishes ids 1, 2, ... to `d/load` at QoS 1, about 200 a second with up
/// to 8 in flight, until `stop`; moves to the next address when its
/// connection ends and sends again what was not acknowledged. Returns the
/// ids acknowledged with success.
fn publish(
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
) -> BTreeSet<u32> {
    let mut n = 0u32;
    let next = || {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
        n += 1;
        Some(n)
    };
    publish_acked(
        &addrs,
        "drain-publisher",
        next,
        8,
        &acked_count,
        &AtomicUsize::new(0),
    )
}

/// Acknowledged ids a subscriber never received.
fn lost(acked: &BTreeSet<u32>, got: &[u32]) -> Vec<u32> {
    let got: BTreeSet<u32> = got.iter().copied().collect();
    acked.difference(&got).copied().collect()
}

/// A clean v5 client on `b` that sees every will.
fn will_watcher(b: &Broker) -> RawClient {
    let (mut w, ack) = RawClient::open(
        b.tcp_addr(),
        raw::connect(Protocol::V5, "will-watcher", true),
    );
    assert_eq!(ack.code, 0);
    assert_eq!(w.subscribe(1, "will/#", QoS::AtLeastOnce), vec![1]);
    w
}

/// The wills `w` receives within `wait`, by topic.
fn wills(w: &mut RawClient, wait: Duration) -> Vec<String> {
    let mut topics = Vec::new();
    while let Some(p) = w.next_publish(wait) {
        topics.push(p.topic.to_string());
        w.ack(&p);
    }
    topics
}

/// Positive control for the "no will" checks: a client on `b` that loses
/// its socket has its will published, and `w` sees it.
fn control_will_arrives(b: &Broker, w: &mut RawClient) {
    let (c, ack) = RawClient::open(b.tcp_addr(), connect(Protocol::V5, "control", true));
    assert_eq!(ack.code, 0);
    std::thread::sleep(Duration::from_millis(300));
    drop(c);
    let got = wills(w, Duration::from_secs(5));
    assert_eq!(
        got,
        vec!["will/control".to_string()],
        "the watcher sees a real will"
    );
}

fn status_text(node: &str) -> String {
    let (code, out) = cli(node, &["status"]);
    assert_eq!(code, Some(0), "status of {node}: {out}");
    out
}

#[test]
fn drain_hands_every_client_to_another_node_and_loses_nothing() {
    let mut nodes = cluster::start(3, CONFIG);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.tcp_addr()).collect();
    let n3 = grpc_addr(&nodes[2], 3);
    let mut watcher = will_watcher(&nodes[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = mpsc::channel();
    let subscribers: Vec<_> = [(Protocol::V5, "drain-v5"), (Protocol::V311, "drain-v3")]
        .into_iter()
        .map(|(protocol, id)| {
            let (stop, ready_tx) = (stop.clone(), ready_tx.clone());
            let (first, then) = (addrs[2], vec![addrs[1]]);
            std::thread::spawn(move || follow(protocol, id.into(), first, then, stop, ready_tx))
        })
        .collect();
    for _ in 0..2 {
        ready.recv_timeout(T).expect("subscriber ready");
    }
    // Routes reach node 1 one commit after the SUBACKs.
    std::thread::sleep(Duration::from_millis(300));
    let count = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (stop, count) = (stop.clone(), count.clone());
        let to = vec![addrs[0]];
        std::thread::spawn(move || publish(to, stop, count))
    };
    assert!(
        eventually(T, || count.load(Ordering::Relaxed) > 300),
        "publishing"
    );

    let reference = format!("127.0.0.2:{}", nodes[1].ports.tcp);
    let started = Instant::now();
    let (code, out) = cli(
        &n3,
        &[
            "drain",
            "--server-reference",
            &reference,
            "--timeout-ms",
            "10000",
        ],
    );
    let drained_in = started.elapsed();
    assert_eq!(code, Some(0), "drain: {out}");
    assert!(
        out.contains("drained: 2 disconnected, 0 remaining"),
        "both subscribers were on node 3: {out}"
    );

    // Node 3 tells a Service and the operator it is draining.
    let (http, body) = nodes[2].http_get("/readyz");
    assert_eq!(http, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let s = status_text(&n3);
    assert!(s.contains("; draining"), "{s}");
    assert!(!status_text(&grpc_addr(&nodes[1], 2)).contains("; draining"));
    // New clients are sent elsewhere.
    let (_, ack) = RawClient::open(addrs[2], raw::connect(Protocol::V5, "newcomer5", true));
    assert_eq!(ack.code, 0x9C, "{ack:?}");
    assert_eq!(
        ack.properties.server_reference.as_deref(),
        Some(reference.as_str())
    );
    let (_, ack) = RawClient::open(addrs[2], raw::connect(Protocol::V311, "newcomer3", true));
    assert_eq!(ack.code, 3, "3.1.1: server unavailable");
    // Idempotent; without a reference MQTT 5 clients are only told no.
    let (code, out) = cli(&n3, &["drain"]);
    assert_eq!(code, Some(0), "second drain: {out}");
    assert!(
        out.contains("drained: 0 disconnected, 0 remaining"),
        "{out}"
    );
    let (_, ack) = RawClient::open(addrs[2], raw::connect(Protocol::V5, "newcomer5b", true));
    assert_eq!(ack.code, 0x88, "{ack:?}");
    assert!(ack.properties.server_reference.is_none());

    // The load goes on through node 2 for a while, then everything that
    // was acknowledged must have arrived.
    let before = count.load(Ordering::Relaxed);
    assert!(eventually(T, || count.load(Ordering::Relaxed) > before + 300));
    stop.store(true, Ordering::Relaxed);
    let acked = publisher.join().expect("publisher");
    let mut seen = Vec::new();
    for s in subscribers {
        seen.push(s.join().expect("subscriber"));
    }
    let (v5, v3) = (&seen[0], &seen[1]);
    println!(
        "drain of node 3 took {drained_in:?}; {} acknowledged; v5 received {} (resumed {:?}), \
         3.1.1 received {} (resumed {:?})",
        acked.len(),
        v5.ids.len(),
        v5.resumed,
        v3.ids.len(),
        v3.resumed
    );
    assert_eq!(
        v5.goodbyes,
        vec![Goodbye {
            code: Some(0x9C),
            server_reference: Some(reference.clone())
        }],
        "MQTT 5: Use another server, with the reference"
    );
    assert_eq!(
        v3.goodbyes,
        vec![Goodbye {
            code: None,
            server_reference: None
        }],
        "3.1.1: the socket closes"
    );
    assert_eq!(v5.resumed, vec![true], "the session resumed on node 2");
    assert_eq!(v3.resumed, vec![true], "the session resumed on node 2");
    for (name, s) in [("v5", v5), ("3.1.1", v3)] {
        let lost = lost(&acked, &s.ids);
        assert!(
            lost.is_empty(),
            "{name}: {} acknowledged but lost (first 10: {:?})",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
    assert_eq!(
        wills(&mut watcher, Duration::from_secs(2)),
        Vec::<String>::new(),
        "no will for a drained client"
    );
    control_will_arrives(&nodes[1], &mut watcher);

    // The operator removes the drained node next: it must then say that
    // it is no longer a member, also after a restart.
    let (code, out) = cli(&grpc_addr(&nodes[0], 1), &["remove", "--id", "3"]);
    assert_eq!(code, Some(0), "remove: {out}");
    let not_member = |s: &str| {
        s.lines()
            .next()
            .is_some_and(|l| l.contains("node 3 is removed"))
            && s.contains("leader: none")
            && !s
                .lines()
                .skip(1)
                .any(|l| l.trim_start().starts_with("node 3 "))
            && s.lines()
                .skip(1)
                .any(|l| l.trim_start().starts_with("node 2 "))
    };
    let s = status_text(&n3);
    assert!(not_member(&s), "node 3 says it is not a member: {s}");
    nodes[2].restart();
    let s = status_text(&n3);
    assert!(not_member(&s), "and still after a restart: {s}");
    let (http, body) = nodes[2].http_get("/readyz");
    assert_eq!(http, 503, "a removed node is not ready: {body}");
    let s = status_text(&grpc_addr(&nodes[0], 1));
    assert!(!s.contains("node 3 "), "the leader agrees: {s}");
}

#[test]
fn sigterm_hands_clients_and_leadership_over_and_exits_cleanly() {
    let mut nodes = cluster::start(3, CONFIG);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.tcp_addr()).collect();
    let n2 = grpc_addr(&nodes[1], 2);
    assert_eq!(wait_leader(&n2, None, T), Some(1), "node 1 leads");
    let mut watcher = will_watcher(&nodes[1]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = mpsc::channel();
    let subscriber = {
        let (stop, ready_tx) = (stop.clone(), ready_tx.clone());
        let (first, then) = (addrs[0], vec![addrs[1], addrs[2]]);
        std::thread::spawn(move || {
            follow(Protocol::V5, "term-v5".into(), first, then, stop, ready_tx)
        })
    };
    ready.recv_timeout(T).expect("subscriber ready");
    std::thread::sleep(Duration::from_millis(300));
    let count = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (stop, count) = (stop.clone(), count.clone());
        let to = vec![addrs[1], addrs[2]];
        std::thread::spawn(move || publish(to, stop, count))
    };
    assert!(
        eventually(T, || count.load(Ordering::Relaxed) > 300),
        "publishing"
    );

    // Who leads, as node 2 sees it, every 20 ms from the signal on.
    let watching = Arc::new(AtomicBool::new(true));
    let new_leader_at = {
        let (watching, n2) = (watching.clone(), n2.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while watching.load(Ordering::Relaxed) {
                if let Some((_, _, Some(l))) = cluster::status(&n2) {
                    if l != 1 {
                        return Some((l, t0.elapsed()));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        })
    };
    let signalled = Instant::now();
    let code = nodes[0].terminate();
    let exited_in = signalled.elapsed();
    let after_exit = Instant::now();
    let leader = wait_leader(&n2, Some(1), T).expect("a new leader");
    let leaderless_after_exit = after_exit.elapsed();
    watching.store(false, Ordering::Relaxed);
    let seen_at = new_leader_at.join().expect("leader watcher");
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        nodes[0].logs()
    );
    assert!(
        exited_in < Duration::from_secs(22),
        "the stop is bounded (20 s budget): took {exited_in:?}"
    );
    assert!(
        nodes[0].logs().contains("leadership handed over"),
        "node 1 handed leadership over before leaving:\n{}",
        nodes[0].logs()
    );
    // Without the transfer, the followers would honour the old leader's
    // lease (the maximum election timeout, 2 x 500 ms here) after its last
    // heartbeat, then wait a random election timeout before campaigning:
    // over 1 s after the exit. With it, a leader is known at once (the
    // margin is for the CLI call on a loaded machine).
    assert!(
        leaderless_after_exit < Duration::from_millis(2 * ELECTION_TIMEOUT_MS),
        "a leader ({leader}) is known {leaderless_after_exit:?} after node 1 exited"
    );

    let before = count.load(Ordering::Relaxed);
    assert!(eventually(T, || count.load(Ordering::Relaxed) > before + 300));
    stop.store(true, Ordering::Relaxed);
    let acked = publisher.join().expect("publisher");
    let seen = subscriber.join().expect("subscriber");
    println!(
        "SIGTERM to leader node 1: exited 0 in {exited_in:?}; node 2 saw leader {:?}; \
         a leader known {leaderless_after_exit:?} after the exit; {} acknowledged, {} received",
        seen_at,
        acked.len(),
        seen.ids.len()
    );
    assert_eq!(
        seen.goodbyes,
        vec![Goodbye {
            code: Some(0x8B),
            server_reference: None
        }],
        "MQTT 5: Server shutting down"
    );
    assert_eq!(seen.resumed, vec![true]);
    let lost = lost(&acked, &seen.ids);
    assert!(
        lost.is_empty(),
        "{} acknowledged but lost (first 10: {:?})",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(
        wills(&mut watcher, Duration::from_secs(2)),
        Vec::<String>::new(),
        "no will for a client of a stopping node"
    );
    control_will_arrives(&nodes[2], &mut watcher);
}

#[test]
fn status_tells_a_fresh_store_from_a_member() {
    let mut nodes = cluster::start(3, "");
    let n1 = grpc_addr(&nodes[0], 1);
    for (i, n) in nodes.iter().enumerate() {
        let s = status_text(&grpc_addr(n, i as u64 + 1));
        assert!(s.contains("store: initialized"), "node {}: {s}", i + 1);
    }
    // A new pod, not added yet: empty, and it stays so (nobody writes to
    // its store before a leader adds it).
    let fresh = Broker::start(node_config(4, ""));
    let n4 = grpc_addr(&fresh, 4);
    assert!(
        status_text(&n4).contains("store: empty"),
        "{}",
        status_text(&n4)
    );
    let (code, out) = cli(&n1, &["add", "--id", "4", "--addr", &n4]);
    assert_eq!(code, Some(0), "add node 4: {out}");
    assert!(status_text(&n4).contains("store: initialized"));

    // A member comes back with a wiped volume: it says so, and keeps
    // saying so while the leader (which still counts it) tries to reach it.
    let n3 = grpc_addr(&nodes[2], 3);
    nodes[2].kill9();
    std::fs::remove_dir_all(nodes[2].path("data")).expect("wipe node 3's data");
    nodes[2].restart();
    let s = status_text(&n3);
    assert!(s.contains("store: empty"), "{s}");
    std::thread::sleep(Duration::from_secs(2));
    let s = status_text(&n3);
    assert!(s.contains("store: empty"), "still fresh after 2 s: {s}");
    assert!(
        nodes[2].logs().contains("waiting to be added"),
        "{}",
        nodes[2].logs()
    );
    // What the operator then does: remove it, add it again.
    let (code, out) = cli(&n1, &["remove", "--id", "3"]);
    assert_eq!(code, Some(0), "remove node 3: {out}");
    let (code, out) = cli(&n1, &["add", "--id", "3", "--addr", &n3]);
    assert_eq!(code, Some(0), "re-add node 3: {out}");
    let s = status_text(&n3);
    assert!(s.contains("store: initialized"), "{s}");
    let s = status_text(&n1);
    assert!(s.contains(&format!("node 3 {n3} voter")), "{s}");
    // Everything written before is back on it.
    let (code, d1) = cli(&n1, &["digest", "--fresh"]);
    assert_eq!(code, Some(0), "{d1}");
    assert!(
        eventually(T, || {
            let (_, d3) = cli(&n3, &["digest"]);
            d3.split(" digest ").nth(1) == d1.split(" digest ").nth(1)
        }),
        "node 3 holds the same state again"
    );
}

/// Node 1 makes a new cluster of an empty store only when none of its
/// peers belongs to one: back with a wiped volume, it waits like any fresh
/// node until it is removed and re-added, instead of leading a cluster of
/// its own or rejoining under its old identity.
#[test]
fn node_1_back_with_an_empty_volume_waits_to_be_re_added() {
    let mut nodes = cluster::start(3, "");
    let n1 = grpc_addr(&nodes[0], 1);
    let peers: Vec<String> = (2..=3u64)
        .map(|id| format!("\"{}\"", grpc_addr(&nodes[id as usize - 1], id)))
        .collect();
    nodes[0].kill9();
    std::fs::remove_dir_all(nodes[0].path("data")).expect("wipe node 1's data");
    let config = std::fs::read_to_string(nodes[0].config_path()).expect("node 1's config");
    let config = config.replacen(
        "[cluster]\n",
        &format!("[cluster]\npeers = [{}]\n", peers.join(", ")),
        1,
    );
    std::fs::write(nodes[0].config_path(), config).expect("node 1's config");
    let leader = wait_leader(&grpc_addr(&nodes[1], 2), Some(1), Duration::from_secs(20))
        .expect("a new leader among nodes 2 and 3");
    let at = grpc_addr(&nodes[leader as usize - 1], leader);

    nodes[0].restart();
    std::thread::sleep(Duration::from_secs(2));
    let s = status_text(&n1);
    assert!(
        s.contains("store: empty"),
        "node 1 made a cluster of its own: {s}"
    );
    assert!(
        nodes[0].logs().contains("already belongs to a cluster"),
        "{}",
        nodes[0].logs()
    );
    assert_eq!(
        cluster::status(&at).and_then(|(_, _, l)| l),
        Some(leader),
        "the cluster kept its leader"
    );

    let (code, out) = cli(&at, &["remove", "--id", "1"]);
    assert_eq!(code, Some(0), "remove node 1: {out}");
    let (code, out) = cli(&at, &["add", "--id", "1", "--addr", &n1]);
    assert_eq!(code, Some(0), "re-add node 1: {out}");
    assert!(status_text(&n1).contains("store: initialized"));
    assert!(
        status_text(&at).contains(&format!("node 1 {n1} voter")),
        "{}",
        status_text(&at)
    );
}
