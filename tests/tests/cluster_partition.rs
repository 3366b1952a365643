//! A network partition, made with Docker: three broker containers, one cut
//! off from the other two (`docker network disconnect`) while its clients
//! still reach it. The majority keeps serving; the isolated node refuses
//! what needs Raft and keeps QoS 0 among its own clients; after healing,
//! every node holds the same replicated state.

use std::time::{Duration, Instant};

use raftmq::codec::{Packet, Protocol, QoS};
use raftmq_e2e::cluster::cli_with;
use raftmq_e2e::containers::{image, Lab};
use raftmq_e2e::eventually;
use raftmq_e2e::raw::{self, RawClient, Read1};

const T: Duration = Duration::from_secs(30);

fn persistent(protocol: Protocol, id: &str) -> raftmq::codec::Connect {
    let mut c = raw::connect(protocol, id, false);
    if protocol == Protocol::V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

fn open(addr: std::net::SocketAddr, c: raftmq::codec::Connect) -> Option<(RawClient, u8)> {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    let mut client = RawClient::connect_tcp(addr, c.protocol);
    client.send(&Packet::Connect(Box::new(c)));
    match client.recv(Duration::from_secs(15)) {
        Read1::Packet(Packet::ConnAck(a)) => Some((client, a.code)),
        _ => None,
    }
}

/// (applied index, digest line) as `raftmq cluster digest --fresh` prints
/// it: read at the leader's read index, so equal lines mean equal states.
/// `raftmq cluster --node <node id's admin address> <args>`, with the lab's
/// admin certificate.
fn cli(lab: &Lab, id: u64, args: &[&str]) -> (Option<i32>, String) {
    cli_with(&lab.admin(id), &lab.certs.flags("admin"), args)
}

fn digest(lab: &Lab, id: u64) -> Option<(u64, String)> {
    let (code, out) = cli(lab, id, &["digest", "--fresh"]);
    if code != Some(0) {
        return None;
    }
    let line = out.lines().next()?.to_string();
    let applied = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((applied, line))
}

fn leader_of(lab: &Lab, id: u64) -> Option<u64> {
    let (code, out) = cli(lab, id, &["status"]);
    if code != Some(0) {
        return None;
    }
    out.lines().next()?.rsplit(": ").next()?.trim().parse().ok()
}

#[test]
fn a_partitioned_node_refuses_raft_writes_and_converges_after_healing() {
    let image = image();
    let mut lab = Lab::new();
    for id in 1..=3 {
        lab.start(&image, id, 500);
    }
    assert!(
        eventually(T, || leader_of(&lab, 1) == Some(1)),
        "node 1 bootstraps"
    );
    for id in 2..=3 {
        let (code, out) = cli(
            &lab,
            1,
            &[
                "add",
                "--id",
                &id.to_string(),
                "--addr",
                &format!("{}:7100", lab.cluster_ip(id)),
            ],
        );
        assert_eq!(code, Some(0), "add node {id}: {out}");
    }

    // A persistent session everyone owes copies to, and a retained message.
    let (mut s, code) = open(lab.mqtt(1), persistent(Protocol::V5, "keeper")).expect("connect");
    assert_eq!(code, 0);
    assert_eq!(s.subscribe(1, "p/#", QoS::AtLeastOnce), vec![1]);
    s.disconnect();
    let (mut p1, _) =
        open(lab.mqtt(1), raw::connect(Protocol::V5, "pub-1", true)).expect("connect");
    assert_eq!(p1.publish_qos1("r/before", b"1", true, 1), 0x10);
    std::thread::sleep(Duration::from_millis(500));

    lab.isolate(3);
    let cut_at = Instant::now();

    // The majority keeps serving writes that need Raft.
    assert!(
        eventually(T, || {
            let Some((mut c, 0)) = open(lab.mqtt(2), raw::connect(Protocol::V5, "pub-2", true))
            else {
                return false;
            };
            c.publish_qos1("p/majority", b"m", false, 1) == 0
        }),
        "the majority commits"
    );
    assert_eq!(p1.publish_qos1("r/during", b"2", true, 2), 0x10);
    let (_, code) =
        open(lab.mqtt(2), persistent(Protocol::V5, "new-on-majority")).expect("connect");
    assert_eq!(code, 0, "a new persistent session on the majority side");

    // The isolated node: no new persistent session (v5 0x88, 3.1.1 code 3)…
    let (_, code) = open(lab.mqtt(3), persistent(Protocol::V5, "new-on-3")).expect("connect");
    assert_eq!(code, 0x88, "server unavailable for a v5 persistent session");
    let (_, code) = open(lab.mqtt(3), persistent(Protocol::V311, "new-311-on-3")).expect("connect");
    assert_eq!(code, 3, "server unavailable for a 3.1.1 persistent session");
    // …no QoS 1 publish to a persistent session (PUBACK 0x88)…
    let (mut p3, code) =
        open(lab.mqtt(3), raw::connect(Protocol::V5, "pub-3", true)).expect("connect");
    assert_eq!(code, 0, "a clean session is served on the isolated node");
    p3.publish("p/isolated", b"x", QoS::AtLeastOnce, false, 1);
    let ack = p3.recv_until(Duration::from_secs(20), |p| match p {
        Packet::PubAck(a) => Some(a.code),
        _ => None,
    });
    assert_eq!(
        ack,
        Some(0x88),
        "a copy owed to a persistent session cannot commit"
    );
    // …and no retained message that the others would not have.
    p3.publish("r/isolated", b"no", QoS::AtLeastOnce, true, 2);
    let ack = p3.recv_until(Duration::from_secs(20), |p| match p {
        Packet::PubAck(a) => Some(a.code),
        _ => None,
    });
    assert_eq!(ack, Some(0x88));
    // QoS 0 among the isolated node's own clients goes on.
    let (mut local, _) =
        open(lab.mqtt(3), raw::connect(Protocol::V5, "local-sub", true)).expect("connect");
    local.subscribe(1, "local/#", QoS::AtMostOnce);
    p3.publish("local/t", b"still here", QoS::AtMostOnce, false, 0);
    let got = local
        .next_publish(Duration::from_secs(5))
        .map(|m| m.payload.to_vec());
    assert_eq!(got.as_deref(), Some(&b"still here"[..]));
    println!("partition checks took {:?}", cut_at.elapsed());

    lab.heal(3);
    // Every node ends with the same replicated state.
    let converged = eventually(Duration::from_secs(60), || {
        let ds: Vec<Option<(u64, String)>> = (1..=3).map(|id| digest(&lab, id)).collect();
        ds.iter().all(Option::is_some) && ds.windows(2).all(|w| w[0] == w[1])
    });
    let ds: Vec<Option<(u64, String)>> = (1..=3).map(|id| digest(&lab, id)).collect();
    assert!(converged, "digests differ after healing: {ds:#?}");
    // The retained set is the majority's, the isolated write is not in it.
    let (mut r, _) =
        open(lab.mqtt(3), raw::connect(Protocol::V5, "reader", true)).expect("connect");
    r.subscribe(1, "r/#", QoS::AtMostOnce);
    let mut topics = Vec::new();
    while let Some(m) = r.next_publish(Duration::from_millis(700)) {
        topics.push(m.topic.to_string());
    }
    topics.sort();
    assert_eq!(topics, vec!["r/before", "r/during"]);
    println!("converged: {:?}", ds[0]);
}
