//! `bridges_file`: bridges changed without a restart. A bridge whose
//! settings change reconnects with the new ones, a new one starts, a
//! removed one stops; a bad file is logged (file and line) and the running
//! bridges keep going; an unrelated client's connection stays up
//! throughout. And `psk_file`: the TLS-PSK key read from a file.

use std::path::Path;
use std::time::Duration;

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::bridge::{
    bridge_metric, bridge_toml, publish_one, wait_connected, Listener, Mosquitto, Relay, Sub,
};
use raftmq_e2e::{Broker, BrokerConfig};

const T: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_secs(2);

fn write(path: &Path, text: &str) {
    // Written aside and renamed, as a mounted ConfigMap changes.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write bridges file");
    std::fs::rename(&tmp, path).expect("rename bridges file");
}

/// Publishes on `topic` at `b` until `at_remote` has it (the bridge may be
/// reconnecting with new settings meanwhile).
fn arrives(b: &Broker, at_remote: &mut Sub, topic: &str) -> bool {
    raftmq_e2e::eventually(T, || {
        publish(b, topic);
        at_remote
            .take(1, Duration::from_secs(1))
            .iter()
            .any(|p| &p.topic[..] == topic)
    })
}

#[test]
fn bridges_file_changes_apply_without_a_restart() {
    let m = Mosquitto::start(Listener::Plain, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bridges.toml");
    let central = |rule: &str| bridge_toml("central", m.addr(), "5.0", &[rule], "");
    write(&file, &central("a/# out 1"));
    let b =
        Broker::start(BrokerConfig::new().top(&format!("bridges_file = \"{}\"", file.display())));
    assert!(wait_connected(&b, "central", T), "{}", b.logs());
    let mut at_remote = Sub::new(m.addr(), Protocol::V311, "r", true, "#", QoS::AtLeastOnce);
    let mut bystander = Sub::new(
        b.tcp_addr(),
        Protocol::V5,
        "bystander",
        true,
        "x/#",
        QoS::AtLeastOnce,
    );
    assert!(arrives(&b, &mut at_remote, "a/1"), "a/# goes out");

    // central's rule changes and a bridge is added.
    let extra = bridge_toml("extra", m.addr(), "3.1.1", &["e/# out 1"], "");
    write(&file, &format!("{}{extra}", central("b/# out 1")));
    assert!(wait_connected(&b, "extra", T), "the added bridge runs");
    assert!(arrives(&b, &mut at_remote, "b/1"), "central's new rule");
    assert!(
        arrives(&b, &mut at_remote, "e/1"),
        "the added bridge's rule"
    );
    publish_one(
        b.tcp_addr(),
        Protocol::V5,
        "a/2",
        b"x",
        QoS::AtLeastOnce,
        false,
    );
    at_remote.quiet(QUIET);

    // A bad file: logged with its name and line; the bridges keep going.
    write(
        &file,
        &format!("{}\n[[bridges]]\nname = \"bad\"\n", central("b/# out 1")),
    );
    let logged = raftmq_e2e::eventually(T, || {
        b.logs().lines().any(|l| {
            l.contains("bridges not reloaded")
                && l.contains(&file.display().to_string())
                && l.contains("line")
        })
    });
    assert!(logged, "the bad file is reported:\n{}", b.logs());
    assert!(arrives(&b, &mut at_remote, "b/2"), "central still runs");
    assert!(arrives(&b, &mut at_remote, "e/2"), "extra still runs");

    // extra removed: it stops; central is untouched.
    let reconnects =
        raftmq_e2e::bridge::bridge_metric(&b, "raftmq_bridge_reconnects_total{bridge=\"central\"}");
    write(&file, &central("b/# out 1"));
    let stopped = raftmq_e2e::eventually(T, || {
        let (_, text) = b.http_get("/metrics");
        !text.contains("bridge=\"extra\"")
    });
    assert!(stopped, "the removed bridge stops");
    publish_one(
        b.tcp_addr(),
        Protocol::V5,
        "e/3",
        b"x",
        QoS::AtLeastOnce,
        false,
    );
    at_remote.quiet(QUIET);
    assert!(arrives(&b, &mut at_remote, "b/3"));
    assert_eq!(
        raftmq_e2e::bridge::bridge_metric(&b, "raftmq_bridge_reconnects_total{bridge=\"central\"}"),
        reconnects,
        "an unchanged bridge did not reconnect"
    );

    // The unrelated client was connected all along.
    publish_one(
        b.tcp_addr(),
        Protocol::V5,
        "x/1",
        b"x",
        QoS::AtLeastOnce,
        false,
    );
    let got = bystander.take(1, T);
    assert_eq!(got.len(), 1, "the bystander's connection stayed up");
}

fn publish(b: &Broker, topic: &str) {
    publish_one(
        b.tcp_addr(),
        Protocol::V5,
        topic,
        b"x",
        QoS::AtLeastOnce,
        false,
    );
}

/// An `out` rule removed by a reload takes its filter from the bridge's
/// session: while the remote is away, publishes on it queue nothing for
/// the bridge. A bridge removed altogether keeps its session and what it
/// had queued, but queues nothing more: added again, it forwards the
/// former and not what was published while it was gone.
#[test]
fn out_rules_removed_by_a_reload_queue_nothing_more() {
    let m = Mosquitto::start(Listener::Plain, false);
    let relay = Relay::start(m.addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bridges.toml");
    let central = |rules: &[&str]| bridge_toml("central", relay.addr(), "5.0", rules, "");
    write(&file, &central(&["a/# out 1", "b/# out 1"]));
    let b =
        Broker::start(BrokerConfig::new().top(&format!("bridges_file = \"{}\"", file.display())));
    assert!(wait_connected(&b, "central", T), "{}", b.logs());
    let mut at_remote = Sub::new(m.addr(), Protocol::V311, "r", true, "#", QoS::AtLeastOnce);
    assert!(arrives(&b, &mut at_remote, "a/1"), "a/# goes out");
    assert!(arrives(&b, &mut at_remote, "b/1"), "b/# goes out");

    // a/# removed; then the remote goes away, so copies stay queued.
    write(&file, &central(&["b/# out 1"]));
    let reloaded = raftmq_e2e::eventually(T, || {
        b.logs().contains("bridge settings changed: reconnecting")
    });
    assert!(reloaded, "the reload applied:\n{}", b.logs());
    relay.cut();
    let down = raftmq_e2e::eventually(T, || !wait_connected(&b, "central", Duration::ZERO));
    assert!(down, "the bridge lost its remote");
    for i in 2..12 {
        publish(&b, &format!("a/{i}"));
    }
    // Acknowledged after the a/ ones, so queued after them if they were.
    publish(&b, "b/2");
    let queued = "raftmq_bridge_queued_messages{bridge=\"central\"}";
    let mut n = None;
    raftmq_e2e::eventually(T, || {
        n = bridge_metric(&b, queued);
        n.is_some_and(|n| n >= 1.0)
    });
    assert_eq!(n, Some(1.0), "only b/2 waits for the remote, no a/ copy");

    // The bridge removed: b/3 is published while it is gone.
    write(&file, "");
    let removed = raftmq_e2e::eventually(T, || {
        let (_, text) = b.http_get("/metrics");
        !text.contains("bridge=\"central\"")
    });
    assert!(removed, "the removed bridge stops");
    publish(&b, "b/3");
    write(&file, &central(&["b/# out 1"]));
    relay.restore();
    assert!(wait_connected(&b, "central", T), "added again, it connects");
    publish(&b, "b/4");
    let mut topics = Vec::new();
    let got = raftmq_e2e::eventually(T, || {
        let more = at_remote.take(1, Duration::from_secs(1));
        topics.extend(more.into_iter().map(|p| p.topic.to_string()));
        topics.iter().any(|t| t == "b/4")
    });
    assert!(got, "b/4 arrives; got {topics:?}");
    assert!(
        topics.iter().any(|t| t == "b/2"),
        "what was queued before the removal is forwarded: {topics:?}"
    );
    assert!(
        !topics.iter().any(|t| t == "b/3"),
        "nothing was queued while the bridge was removed: {topics:?}"
    );
}

#[test]
fn psk_file_holds_the_key() {
    let key = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let m = Mosquitto::start(
        Listener::Psk {
            identity: "gw-7".into(),
            key: key.into(),
        },
        false,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let psk = dir.path().join("psk");
    std::fs::write(&psk, format!("{key}\n")).expect("write psk");
    let extra = format!("identity = \"gw-7\"\npsk_file = \"{}\"\n", psk.display());
    let b = Broker::start(BrokerConfig::new().raw(&bridge_toml(
        "psk",
        m.addr(),
        "5.0",
        &["scan/# out 1"],
        &extra,
    )));
    assert!(
        wait_connected(&b, "psk", T),
        "PSK bridge never connected:\n{}",
        b.logs()
    );
}
