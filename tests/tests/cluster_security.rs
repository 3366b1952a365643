//! The cluster plane trusts no one it should not (issue 15, part 1), with
//! real processes and real certificates:
//! - `raftmq serve` keeps its cluster port on loopback by default, refuses a
//!   non-loopback bind without certificates, and says so loudly when told
//!   to run in plain text anyway;
//! - over mutual TLS, every cluster RPC is checked against the identity in
//!   the caller's certificate (`raftmq://node/<id>`, `raftmq://admin/<name>`).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::{broker_bin, cluster, eventually, run, Broker, BrokerConfig};
use raftmq_proto::v1 as pb;
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::forward_client::ForwardClient;
use raftmq_proto::v1::raft_client::RaftClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// An address of this machine other hosts could reach it at (not loopback).
fn non_loopback_ip() -> IpAddr {
    let mut found = None;
    // SAFETY: getifaddrs/freeifaddrs as documented; the list is only read
    // between the two calls.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        assert_eq!(libc::getifaddrs(&mut list), 0, "getifaddrs");
        let mut cur = list;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes());
                if !ip.is_loopback() && found.is_none() {
                    found = Some(ip);
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found.expect("this machine has a non-loopback IPv4 address")
}

fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn metric(b: &Broker, name: &str) -> Option<f64> {
    let (_, body) = b.http_get("/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// No `bind` in `[cluster]`: the cluster port is 127.0.0.1:7100, which
/// answers on loopback and not on the machine's other address.
#[test]
fn the_default_cluster_port_is_on_loopback_only() {
    let b = Broker::start(BrokerConfig::new().raw("[cluster]\nnode_id = 1\n"));
    assert!(
        b.logs()
            .lines()
            .any(|l| l.contains("cluster gRPC listening") && l.contains("127.0.0.1:7100")),
        "default bind: {}",
        b.logs()
    );
    assert!(reachable(SocketAddr::from(([127, 0, 0, 1], 7100))));
    let outside = SocketAddr::new(non_loopback_ip(), 7100);
    assert!(!reachable(outside), "the cluster port answers on {outside}");
    assert_eq!(metric(&b, "raftmq_cluster_insecure_plaintext"), Some(0.0));
    assert!(eventually(Duration::from_secs(10), || b
        .http_get("/readyz")
        .0
        == 200));
    let (_, body) = b.http_get("/readyz");
    assert!(!body.contains("INSECURE"), "{body}");
}

/// A non-loopback bind with no certificates does not start, and says what
/// to configure.
#[test]
fn a_non_loopback_bind_without_certificates_refuses_to_start() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("raftmq.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}/data\"\n[http]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
             [cluster]\nbind = \"0.0.0.0:0\"\n",
            dir.path().display()
        ),
    )
    .expect("config");
    let (code, out, err) = run(
        Command::new(broker_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_BACKTRACE", "0"),
        Duration::from_secs(20),
    );
    assert_ne!(code, Some(0), "started: {out}{err}");
    assert!(code.is_some(), "exited by itself, not killed: {out}{err}");
    for words in [
        "cluster.bind",
        "no certificates",
        "certfile, keyfile and cafile",
        "raftmq cluster certs",
        "insecure_plaintext = true",
    ] {
        assert!(err.contains(words), "the message names {words:?}: {err}");
    }
    // The environment's spelling is refused the same way.
    let (code, _, err) = run(
        Command::new(broker_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RAFTMQ_CLUSTER__BIND", "0.0.0.0:0")
            .env("RUST_BACKTRACE", "0"),
        Duration::from_secs(20),
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("no certificates"), "{err}");
}

/// `insecure_plaintext = true`: it starts, reachable beyond loopback, and
/// says so in its log, on /readyz and in a metric.
#[test]
fn insecure_plaintext_starts_and_says_so_everywhere() {
    let b = Broker::start(BrokerConfig::new().raw(
        "[cluster]\nnode_id = 1\nbind = \"0.0.0.0:{grpc}\"\nadvertise = \"127.0.0.1:{grpc}\"\ninsecure_plaintext = true\n",
    ));
    assert!(reachable(SocketAddr::new(non_loopback_ip(), b.ports.grpc)));
    assert!(
        b.logs()
            .contains("INSECURE: the cluster port serves plain text"),
        "{}",
        b.logs()
    );
    // Ready once it leads its one-node group; the note is there either way.
    assert!(eventually(Duration::from_secs(10), || b
        .http_get("/readyz")
        .0
        == 200));
    let (_, body) = b.http_get("/readyz");
    assert!(
        body.contains("cluster: INSECURE plain text on 0.0.0.0:"),
        "{body}"
    );
    assert_eq!(metric(&b, "raftmq_cluster_insecure_plaintext"), Some(1.0));
}

/// Who makes the calls in [`every_cluster_call_is_checked_against_the_callers_certificate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// TLS with the cluster CA trusted, no client certificate.
    NoCertificate,
    /// A node certificate from another CA.
    OtherCa,
    /// Node 2's own, valid certificate, calling as node 3.
    Node2AsNode3,
}

/// A TLS channel to `addr` trusting the cluster CA, presenting `identity`
/// (certificate and key files), if any.
fn channel(addr: &str, identity: Option<(&Path, &Path)>) -> Channel {
    let read = |p: &Path| std::fs::read(p).expect("read certificate file");
    let ca = read(&cluster::certs().file("ca.crt"));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// A batch proposing a retained message in node `origin`'s name.
fn forged_batch(origin: u64) -> bytes::Bytes {
    use prost::Message as _;
    let message = pb::Message {
        topic: "sec/forged".into(),
        payload: bytes::Bytes::from_static(b"forged"),
        qos: 1,
        retain: true,
        ..pb::Message::default()
    };
    let batch = pb::CommandBatch {
        origin,
        commands: vec![pb::Command {
            kind: Some(pb::command::Kind::RetainSet(pb::RetainSet {
                message: Some(message),
            })),
        }],
        writer: 0,
        number: 0,
    };
    bytes::Bytes::from(batch.encode_to_vec())
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Propose, Forward, Raft append, AddLearner, RemoveNode and Drain as node
/// 3 (where a node is named), over `ch`; the gRPC code of each.
async fn the_six_calls(ch: Channel) -> Vec<(&'static str, Code)> {
    let mut raft = RaftClient::new(ch.clone());
    let mut admin = AdminClient::new(ch.clone());
    let mut forward = ForwardClient::new(ch);
    let propose = raft
        .propose(pb::ProposeRequest {
            batch: forged_batch(3),
        })
        .await;
    let batch = pb::ForwardBatch {
        origin: 3,
        messages: vec![pb::Forwarded {
            message: Some(pb::Message {
                topic: "sec/forwarded".into(),
                payload: bytes::Bytes::from_static(b"forged"),
                ..pb::Message::default()
            }),
            shared: vec![],
            in_log: false,
        }],
    };
    let forwarded = match forward.stream(futures::stream::iter(vec![batch])).await {
        Ok(r) => code(r.into_inner().message().await),
        Err(s) => s.code(),
    };
    let append = raft
        .append_entries(pb::AppendEntriesRequest {
            vote: Some(pb::Vote {
                term: 1,
                node_id: 3,
                committed: true,
            }),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        })
        .await;
    let add = admin
        .add_learner(pb::AddLearnerRequest {
            node_id: 9,
            addr: "127.0.0.9:1".into(),
        })
        .await;
    let remove = admin
        .remove_node(pb::RemoveNodeRequest { node_id: 3 })
        .await;
    let drain = admin
        .drain(pb::DrainRequest {
            server_reference: String::new(),
            timeout_ms: 1000,
        })
        .await;
    vec![
        ("Propose", code(propose)),
        ("Forward", forwarded),
        ("AppendEntries", code(append)),
        ("AddLearner", code(add)),
        ("RemoveNode", code(remove)),
        ("Drain", code(drain)),
    ]
}

/// `raftmq_cluster_refused_total` on `b`, summed over the series whose
/// labels include `label` (`code="..."`, `rpc="..."`).
fn refused(b: &Broker, label: &str) -> f64 {
    let (_, body) = b.http_get("/metrics");
    body.lines()
        .filter(|l| l.starts_with("raftmq_cluster_refused_total{"))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn digest(addr: &str) -> String {
    let (status, out) = cluster::cli(addr, &["digest", "--fresh"]);
    assert_eq!(status, Some(0), "{out}");
    out.lines().next().unwrap_or_default().to_string()
}

/// Issue 15's table: without a certificate, with one from another CA, and
/// with node 2's valid certificate calling as node 3, each of Propose,
/// Forward, Raft append, AddLearner, RemoveNode and Drain is refused, and
/// nothing is committed or delivered. Node certificates read; only the
/// admin certificate drains.
#[test]
fn every_cluster_call_is_checked_against_the_callers_certificate() {
    let nodes = cluster::start(3, "");
    let addrs: Vec<String> = (1..=3u64)
        .map(|id| cluster::grpc_addr(&nodes[id as usize - 1], id))
        .collect();
    // A subscriber a forwarded publish would reach.
    let (mut sub, _) = RawClient::open(
        nodes[0].tcp_addr(),
        raw::connect(Protocol::V311, "sec-sub", true),
    );
    assert_eq!(sub.subscribe(1, "sec/#", QoS::AtMostOnce), vec![0]);
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<String> = addrs.iter().map(|a| digest(a)).collect();

    let certs = cluster::certs();
    let other_dir = tempfile::tempdir().expect("dir");
    let other = cluster::Certs::issue(other_dir.path(), 3, &["127.0.0.1".into()]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut seen = Vec::new();
    for caller in [Caller::NoCertificate, Caller::OtherCa, Caller::Node2AsNode3] {
        let (c2, k2) = (certs.file("node-2.crt"), certs.file("node-2.key"));
        let (oc, ok) = (other.file("node-2.crt"), other.file("node-2.key"));
        let identity = match caller {
            Caller::NoCertificate => None,
            Caller::OtherCa => Some((oc.as_path(), ok.as_path())),
            Caller::Node2AsNode3 => Some((c2.as_path(), k2.as_path())),
        };
        let calls = rt.block_on(async { the_six_calls(channel(&addrs[0], identity)).await });
        println!("{caller:?}: {calls:?}");
        for (rpc, got) in calls {
            let refused_as = match caller {
                Caller::NoCertificate => got == Code::Unauthenticated,
                // The TLS handshake itself fails: no service is reached,
                // and the client sees the connection fail (how depends on
                // when the server's alert reaches it).
                Caller::OtherCa => {
                    matches!(got, Code::Unavailable | Code::Unknown | Code::Cancelled)
                }
                Caller::Node2AsNode3 => got == Code::PermissionDenied,
            };
            assert!(refused_as, "{caller:?} calling {rpc}: {got:?}");
            seen.push((caller, rpc, got));
        }
    }
    assert_eq!(seen.len(), 18);

    // Nothing committed, nothing delivered, nobody drained.
    let after: Vec<String> = addrs.iter().map(|a| digest(a)).collect();
    assert_eq!(after, before, "the replicated state changed");
    assert!(
        sub.next_publish(Duration::from_millis(500)).is_none(),
        "a refused call delivered a message"
    );
    let status = |addr: &str, flags: &[String]| cluster::cli_with(addr, flags, &["status"]);
    let (code1, s1) = status(&addrs[0], &certs.flags("admin"));
    assert_eq!(code1, Some(0), "{s1}");
    assert!(s1.contains("; serving"), "{s1}");
    assert_eq!(
        s1.lines().filter(|l| l.contains(" voter")).count(),
        3,
        "membership unchanged: {s1}"
    );
    // Each refusal is counted and logged where it happened.
    let unauthenticated = refused(&nodes[0], "code=\"unauthenticated\"");
    let handshakes = refused(&nodes[0], "rpc=\"tls-handshake\"");
    let denied = refused(&nodes[0], "code=\"permission_denied\"");
    println!(
        "refused on node 1: {unauthenticated} unauthenticated ({handshakes} of them TLS handshakes), {denied} permission denied"
    );
    assert!(handshakes >= 1.0, "the other CA's handshakes are counted");
    assert!(unauthenticated >= 6.0 + handshakes);
    assert!(denied >= 6.0);
    assert!(nodes[0].logs().contains("cluster call refused"));

    // A node's certificate reads; it cannot drain; the admin's can.
    let (code, out) = status(&addrs[2], &certs.flags("node-2"));
    assert_eq!(code, Some(0), "a node certificate reads Status: {out}");
    let drain = ["drain", "--timeout-ms", "2000"];
    let (code, out) = cluster::cli_with(&addrs[2], &certs.flags("node-2"), &drain);
    assert_ne!(code, Some(0), "a node certificate drains: {out}");
    assert!(
        out.contains("PermissionDenied") || out.contains("admin certificate"),
        "{out}"
    );
    let (code, out) = cluster::cli_with(&addrs[2], &certs.flags("admin"), &drain);
    assert_eq!(code, Some(0), "the admin certificate drains: {out}");
    let (_, s3) = status(&addrs[2], &certs.flags("admin"));
    assert!(s3.contains("; draining"), "{s3}");
}
