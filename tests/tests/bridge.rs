//! Bridges (`[[bridges]]`) against real remote brokers: Debian's mosquitto
//! (plain, TLS with a CA, TLS-PSK) and another raftmq. Messages cross in
//! both directions at QoS 0/1/2 with mosquitto's prefixes, over 3.1.1 and
//! 5.0 bridges, and `both` rules do not loop.

use std::time::Duration;

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::bridge::{bridge_toml, publish_one, wait_connected, Listener, Mosquitto, Sub};
use raftmq_e2e::certs::Ca;
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_secs(2);
const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

fn proto(v5: bool) -> (&'static str, Protocol) {
    if v5 {
        ("5.0", Protocol::V5)
    } else {
        ("3.1.1", Protocol::V311)
    }
}

fn raftmq_with(bridge: &str) -> Broker {
    Broker::start(BrokerConfig::new().raw(bridge))
}

/// Out with prefixes, then in with prefixes, at each QoS.
fn both_directions_with_prefixes(v5: bool) {
    let (version, protocol) = proto(v5);
    let m = Mosquitto::start(Listener::Plain, false);
    let b = raftmq_with(&bridge_toml(
        "central",
        m.addr(),
        version,
        &[
            "sensors/# out 2 site/ central/site1/",
            "cmd/# in 2 local/ remote/site1/",
        ],
        "",
    ));
    assert!(wait_connected(&b, "central", T), "bridge never connected");
    let mut at_remote = Sub::new(
        m.addr(),
        protocol,
        "remote-sub",
        true,
        "central/site1/#",
        QoS::ExactlyOnce,
    );
    let mut at_local = Sub::new(
        b.tcp_addr(),
        protocol,
        "local-sub",
        true,
        "local/#",
        QoS::ExactlyOnce,
    );
    for qos in QOS {
        let payload = format!("out {qos:?}");
        publish_one(
            b.tcp_addr(),
            protocol,
            "site/sensors/t1",
            payload.as_bytes(),
            qos,
            false,
        );
        let got = at_remote.take(1, T);
        assert_eq!(got.len(), 1, "out {qos:?} did not arrive");
        assert_eq!(got[0].topic.as_str(), "central/site1/sensors/t1");
        assert_eq!(&got[0].payload[..], payload.as_bytes());
        assert_eq!(got[0].qos, qos, "QoS kept on the way out");

        let payload = format!("in {qos:?}");
        publish_one(
            m.addr(),
            protocol,
            "remote/site1/cmd/valve",
            payload.as_bytes(),
            qos,
            false,
        );
        let got = at_local.take(1, T);
        assert_eq!(got.len(), 1, "in {qos:?} did not arrive");
        assert_eq!(got[0].topic.as_str(), "local/cmd/valve");
        assert_eq!(&got[0].payload[..], payload.as_bytes());
        assert_eq!(got[0].qos, qos, "QoS kept on the way in");
    }
    // Topics outside the rules stay where they are.
    publish_one(
        b.tcp_addr(),
        protocol,
        "site/other/x",
        b"no",
        QoS::AtLeastOnce,
        false,
    );
    publish_one(
        m.addr(),
        protocol,
        "remote/site1/other",
        b"no",
        QoS::AtLeastOnce,
        false,
    );
    at_remote.quiet(QUIET);
    at_local.quiet(QUIET);
}

#[test]
fn mosquitto_both_directions_prefixes_qos_0_1_2_over_3_1_1() {
    both_directions_with_prefixes(false);
}

#[test]
fn mosquitto_both_directions_prefixes_qos_0_1_2_over_5_0() {
    both_directions_with_prefixes(true);
}

/// `both`: each message crosses once and never comes back (3.1.1:
/// mosquitto's try_private; 5.0: no-local on both sides).
fn both_rule_does_not_loop(v5: bool) {
    let (version, protocol) = proto(v5);
    let m = Mosquitto::start(Listener::Plain, false);
    let b = raftmq_with(&bridge_toml(
        "loop",
        m.addr(),
        version,
        &["chat/# both 1"],
        "",
    ));
    assert!(wait_connected(&b, "loop", T));
    let mut at_remote = Sub::new(m.addr(), protocol, "r", true, "chat/#", QoS::AtLeastOnce);
    let mut at_local = Sub::new(
        b.tcp_addr(),
        protocol,
        "l",
        true,
        "chat/#",
        QoS::AtLeastOnce,
    );
    publish_one(
        b.tcp_addr(),
        protocol,
        "chat/from-local",
        b"1",
        QoS::AtLeastOnce,
        false,
    );
    publish_one(
        m.addr(),
        protocol,
        "chat/from-remote",
        b"2",
        QoS::AtLeastOnce,
        false,
    );
    let mut remote_got: Vec<String> = at_remote
        .take(3, Duration::from_secs(5))
        .iter()
        .map(|p| p.topic.to_string())
        .collect();
    let mut local_got: Vec<String> = at_local
        .take(3, Duration::from_secs(5))
        .iter()
        .map(|p| p.topic.to_string())
        .collect();
    remote_got.sort();
    local_got.sort();
    let both = vec![
        "chat/from-local".to_string(),
        "chat/from-remote".to_string(),
    ];
    assert_eq!(remote_got, both, "each message once at the remote");
    assert_eq!(local_got, both, "each message once here");
    let (_, metrics) = b.http_get("/metrics");
    let out = metrics
        .lines()
        .find(|l| l.starts_with("raftmq_bridge_messages_total{bridge=\"loop\",direction=\"out\"}"));
    assert_eq!(
        out.and_then(|l| l.rsplit(' ').next()),
        Some("1"),
        "one message out:\n{metrics}"
    );
}

#[test]
fn mosquitto_both_rule_without_loops_over_3_1_1() {
    both_rule_does_not_loop(false);
}

#[test]
fn mosquitto_both_rule_without_loops_over_5_0() {
    both_rule_does_not_loop(true);
}

/// raftmq bridged to raftmq, 5.0 and 3.1.1 (the remote refuses try_private's
/// bridge bit; the bridge connects again without it, as mosquitto does).
#[test]
fn raftmq_to_raftmq() {
    for v5 in [true, false] {
        let (version, protocol) = proto(v5);
        let remote = Broker::start(BrokerConfig::new());
        let b = raftmq_with(&bridge_toml(
            "peer",
            remote.tcp_addr(),
            version,
            &["up/# out 2", "down/# in 1"],
            "",
        ));
        assert!(wait_connected(&b, "peer", T), "{version}");
        let mut at_remote = Sub::new(
            remote.tcp_addr(),
            protocol,
            "r",
            true,
            "up/#",
            QoS::ExactlyOnce,
        );
        let mut at_local = Sub::new(
            b.tcp_addr(),
            protocol,
            "l",
            true,
            "down/#",
            QoS::ExactlyOnce,
        );
        publish_one(
            b.tcp_addr(),
            protocol,
            "up/1",
            b"u",
            QoS::ExactlyOnce,
            false,
        );
        publish_one(
            remote.tcp_addr(),
            protocol,
            "down/1",
            b"d",
            QoS::AtLeastOnce,
            false,
        );
        let up = at_remote.take(1, T);
        assert_eq!(up.len(), 1, "{version}: out");
        assert_eq!(up[0].qos, QoS::ExactlyOnce);
        let down = at_local.take(1, T);
        assert_eq!(down.len(), 1, "{version}: in");
        assert_eq!(down[0].qos, QoS::AtLeastOnce);
        at_remote.quiet(QUIET);
        at_local.quiet(QUIET);
    }
}

/// TLS to mosquitto, verified against a CA; a bridge that trusts another
/// CA never connects.
#[test]
fn mosquitto_over_tls_with_a_ca() {
    let ca = Ca::new("bridge-ca");
    let dir = tempfile::tempdir().unwrap();
    let server = ca.server().write(dir.path(), "server");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let other_ca = Ca::new("stranger").write(dir.path(), "other.crt");
    let m = Mosquitto::start(
        Listener::Tls {
            cert: server.cert,
            key: server.key,
        },
        false,
    );
    let tls = format!(
        "cafile = \"{}\"\nserver_name = \"localhost\"\n",
        ca_file.display()
    );
    let b = raftmq_with(&bridge_toml("tls", m.addr(), "3.1.1", &["t/# out 1"], &tls));
    assert!(
        wait_connected(&b, "tls", T),
        "TLS bridge never connected:\n{}",
        b.logs()
    );
    // A TLS subscriber would need the CA too: the plain check is that the
    // message arrives through mosquitto's own TLS listener, seen by a
    // mosquitto_sub over TLS.
    let mut sub = raftmq_e2e::process::Proc::spawn(std::process::Command::new("stdbuf").args([
        "-oL",
        "mosquitto_sub",
        "-h",
        "localhost",
        "-p",
        &m.port.to_string(),
        "--cafile",
        &ca_file.display().to_string(),
        "-t",
        "t/#",
        "-q",
        "1",
        "-v",
        "-d",
    ]));
    sub.expect_line("SUBACK", |l| l.contains("received SUBACK"));
    publish_one(
        b.tcp_addr(),
        Protocol::V311,
        "t/secure",
        b"over tls",
        QoS::AtLeastOnce,
        false,
    );
    sub.expect_line("the message", |l| l == "t/secure over tls");

    let wrong = format!(
        "cafile = \"{}\"\nserver_name = \"localhost\"\n",
        other_ca.display()
    );
    let b2 = raftmq_with(&bridge_toml(
        "tls",
        m.addr(),
        "3.1.1",
        &["t/# out 1"],
        &wrong,
    ));
    assert!(
        !wait_connected(&b2, "tls", Duration::from_secs(4)),
        "connected to a server of an untrusted CA"
    );
    assert!(b2.logs().contains("TLS handshake failed"), "{}", b2.logs());
}

/// TLS-PSK to a mosquitto PSK listener, the way Bluetooth gateways connect.
#[test]
fn mosquitto_over_tls_psk() {
    let key = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let m = Mosquitto::start(
        Listener::Psk {
            identity: "gw-7".into(),
            key: key.into(),
        },
        false,
    );
    let psk = format!("identity = \"gw-7\"\npsk = \"{key}\"\n");
    let b = raftmq_with(&bridge_toml(
        "psk",
        m.addr(),
        "5.0",
        &["scan/# out 1", "cfg/# in 1"],
        &psk,
    ));
    assert!(
        wait_connected(&b, "psk", T),
        "PSK bridge never connected:\n{}",
        b.logs()
    );
    let mut at_local = Sub::new(b.tcp_addr(), Protocol::V5, "l", true, "#", QoS::AtLeastOnce);
    // mosquitto_pub over PSK brings a message in.
    let (code, _, err) = raftmq_e2e::run(
        std::process::Command::new("mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &m.port.to_string(),
            "--psk",
            key,
            "--psk-identity",
            "gw-7",
            "-t",
            "cfg/interval",
            "-m",
            "30",
            "-q",
            "1",
        ]),
        T,
    );
    assert_eq!(code, Some(0), "mosquitto_pub over PSK: {err}");
    let got = at_local.take(1, T);
    assert_eq!(got.len(), 1, "in over PSK");
    assert_eq!(&got[0].payload[..], b"30");

    let bad = format!("identity = \"gw-7\"\npsk = \"{}\"\n", "00".repeat(16));
    let b2 = raftmq_with(&bridge_toml(
        "psk",
        m.addr(),
        "5.0",
        &["scan/# out 1"],
        &bad,
    ));
    assert!(
        !wait_connected(&b2, "psk", Duration::from_secs(4)),
        "connected with a wrong PSK"
    );
}

/// A bad bridge is refused at start, naming the file and line.
#[test]
fn bad_bridge_config_names_file_and_line() {
    let r = Broker::try_start(BrokerConfig::new().raw(
        "[[bridges]]\nname = \"x\"\naddresses = [\"127.0.0.1:1\"]\ntopic = [\"a/# sideways 1\"]\n",
    ));
    let e = r.err().expect("refused").to_string();
    assert!(e.contains("sideways") && e.contains("raftmq.toml"), "{e}");
    assert!(e.contains("line "), "{e}");
}
