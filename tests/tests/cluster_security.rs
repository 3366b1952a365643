//! The cluster plane trusts no one it should not (issue 15, part 1), with
//! real processes and real certificates:
//! - `raftmq serve` keeps its cluster port on loopback by default, refuses a
//!   non-loopback bind without certificates, and says so loudly when told
//!   to run in plain text anyway;
//! - over mutual TLS, every cluster RPC is checked against the identity in
//!   the caller's certificate (`raftmq://node/<id>`, `raftmq://admin/<name>`).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use raftmq_e2e::{broker_bin, eventually, run, Broker, BrokerConfig};

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
