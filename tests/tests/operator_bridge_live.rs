//! The operator changes a bridge of running brokers (issue 20): the
//! operator lab (tests/common/operator_lab: the real controller, the API
//! double, real `raftmq serve` processes whose ConfigMap and Secret volumes
//! the kubelet stand-in updates in place, as the kubelet does) with a
//! bridge to a real mosquitto. Changing the bridge's topic rule in
//! `spec.bridges`, then rotating the password in the user's Secret it
//! names, takes effect on the running broker: the bridge reconnects with
//! the new settings, another bridge stays connected, no pod is replaced
//! and no broker process restarts; with one broker and with three.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::bridge::{publish_one, Listener, Mosquitto, Sub};
use raftmq_e2e::operator_lab::{lock, pod_name, pod_uids, Lab, NS};
use serde_json::{json, Value};

/// The bridges' client ids on mosquitto: the one changed, and one that
/// is not and must stay connected throughout.
const CLIENT: &str = "demo-central";
const OTHER: &str = "demo-other";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `mosquitto_passwd -b`: `user` may log in with `password` (the file is
/// created when `create`).
fn set_password(file: &std::path::Path, user: &str, password: &str, create: bool) {
    let mut cmd = Command::new("mosquitto_passwd");
    if create {
        cmd.arg("-c");
    }
    let out = cmd
        .arg("-b")
        .arg(file)
        .arg(user)
        .arg(password)
        .output()
        .expect("mosquitto_passwd");
    assert!(out.status.success(), "mosquitto_passwd: {out:?}");
}

fn bridges(remote: SocketAddr, remote_prefix: &str) -> Value {
    json!([{
        "name": "central",
        "addresses": [remote.to_string()],
        "topics": [{"pattern": "t/#", "direction": "out", "qos": 1,
                    "remotePrefix": remote_prefix}],
        "remoteClientId": CLIENT,
        "restartTimeout": {"baseSeconds": 1},
        "keepaliveInterval": 10,
        "remoteCredentials": {"secretName": "central-login"},
    }, {
        "name": "other",
        "addresses": [remote.to_string()],
        "topics": [{"pattern": "u/#", "direction": "out", "qos": 1}],
        "remoteClientId": OTHER,
        "remoteCredentials": {"secretName": "other-login"},
    }])
}

fn login_secret(name: &str, user: &str, password: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": NS},
           "type": "Opaque",
           "data": {"username": b64(user), "password": b64(password)}})
}

/// How often mosquitto has accepted bridge `client`'s connection so far.
fn bridge_connections(remote: &Mosquitto, client: &str) -> usize {
    remote
        .log()
        .lines()
        .filter(|l| l.contains(" connected from ") && l.contains(&format!(" as {client} (")))
        .count()
}

/// Publishes `t/<n>` into pod 0 until one arrives at `sub` (on mosquitto)
/// under `want_prefix`; what arrives meanwhile under another prefix is
/// returned, for the caller to judge.
fn crosses(pod: SocketAddr, sub: &mut Sub, want_prefix: &str, timeout: Duration) -> Vec<String> {
    let t = Instant::now();
    let mut others = Vec::new();
    for n in 0u32.. {
        assert!(
            t.elapsed() < timeout,
            "nothing arrived under {want_prefix} in {timeout:?}; arrived instead: {others:?}"
        );
        let topic = format!("t/{n}");
        publish_one(pod, Protocol::V311, &topic, b"x", QoS::AtLeastOnce, false);
        for p in sub.take(10, Duration::from_millis(500)) {
            let got = p.topic.to_string();
            if got.starts_with(&format!("{want_prefix}t/")) {
                return others;
            }
            others.push(got);
        }
    }
    unreachable!()
}

/// The pods and broker processes as they are now.
fn pods(lab: &Lab) -> (BTreeMap<String, String>, BTreeMap<i32, u32>) {
    (pod_uids(lab), lock(&lab.cluster.pids).clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_changes_reach_a_running_broker_without_a_restart() {
    bridge_changes(1).await;
}

/// Three brokers: every pod's volumes are updated and reloaded, the node
/// holding the bridge's claim reconnects it, and a message published at
/// pod 0 reaches it wherever it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_changes_reach_three_running_brokers_without_a_restart() {
    bridge_changes(3).await;
}

async fn bridge_changes(replicas: i32) {
    let t0 = Instant::now();
    // mosquitto checks the bridge's login; the test's own subscriber there
    // is anonymous. Run as root it would switch to user mosquitto, which
    // can neither write its log (the connections counted) nor read the
    // password file again in the private temporary directory.
    let remote = Mosquitto::start_with(Listener::Plain, false, |dir| {
        let file = dir.join("passwd");
        set_password(&file, "site1", "pw-1", true);
        set_password(&file, "site2", "pw-o", false);
        format!("password_file {}\nuser root\n", file.display())
    });
    let passwd = remote.dir.path().join("passwd");
    let lab = Lab::start(json!({
        "replicas": replicas,
        "bridges": bridges(remote.addr(), "site-a/"),
    }))
    .await;
    lab.api.create(
        "v1",
        "secrets",
        NS,
        login_secret("central-login", "site1", "pw-1"),
    );
    lab.api.create(
        "v1",
        "secrets",
        NS,
        login_secret("other-login", "site2", "pw-o"),
    );
    lab.converged(replicas, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    let pod = SocketAddr::from(([127, 0, 0, 1], lab.cluster.ports[&0].tcp));
    let before = pods(&lab);
    assert_eq!(
        before.1.len(),
        replicas as usize,
        "a broker per pod runs: {before:?}"
    );

    tokio::task::block_in_place(|| {
        let mut sub = Sub::new(
            remote.addr(),
            Protocol::V311,
            "watcher",
            true,
            "#",
            QoS::AtLeastOnce,
        );
        crosses(pod, &mut sub, "site-a/", Duration::from_secs(30));
        let connections = bridge_connections(&remote, CLIENT);
        assert!(connections >= 1, "{}", remote.log());
        // The other bridge's connections from here on (with three pods
        // its claim may have moved once as they joined, before this).
        let other = || bridge_connections(&remote, OTHER);
        assert!(
            raftmq_e2e::eventually(Duration::from_secs(10), || other() >= 1),
            "the other bridge connects:\n{}",
            remote.log()
        );
        let other_before = other();

        // A new topic rule: the bridge reconnects with it.
        lab.patch_spec(json!({"bridges": bridges(remote.addr(), "site-b/")}));
        let before_b = crosses(pod, &mut sub, "site-b/", Duration::from_secs(20));
        assert!(
            before_b.iter().all(|t| t.starts_with("site-a/t/")),
            "only the old rule's topics before the new one's: {before_b:?}"
        );
        // From now on the new rule only.
        publish_one(
            pod,
            Protocol::V311,
            "t/after",
            b"x",
            QoS::AtLeastOnce,
            false,
        );
        let got: Vec<String> = sub
            .take(1, Duration::from_secs(10))
            .iter()
            .map(|p| p.topic.to_string())
            .collect();
        assert_eq!(got, ["site-b/t/after"]);
        let after_rule = bridge_connections(&remote, CLIENT);
        assert!(
            after_rule > connections,
            "the bridge did not reconnect for its new rule ({connections} connections before, {after_rule} after)"
        );
        assert_eq!(pods(&lab), before, "a pod or broker was restarted");
        assert_eq!(other(), other_before, "the other bridge reconnected");

        // The password in the Secret the bridge's credentials come from
        // changes, the remote not told yet: the bridge's connection could
        // go on, yet the bridge reconnects with the new password at once
        // (and is refused), so a rotated credential proves itself now
        // rather than at the next network fault.
        lab.api.patch(
            "v1",
            "secrets",
            NS,
            "central-login",
            json!({"data": {"password": b64("pw-2")}}),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !remote.log().contains("not authorised") {
            assert!(
                Instant::now() < deadline,
                "the bridge did not log in again after its password changed:\n{}",
                remote.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The remote takes the new password (mosquitto reads its password
        // file again): the bridge, retrying, gets through.
        set_password(&passwd, "site1", "pw-2", false);
        remote.reload();
        crosses(pod, &mut sub, "site-b/", Duration::from_secs(20));
        let now = bridge_connections(&remote, CLIENT);
        assert!(
            now > after_rule,
            "the bridge did not log in with its new password ({after_rule} connections before, {now} after)"
        );
        assert_eq!(pods(&lab), before, "a pod or broker was restarted");
        // Its files were swapped with the bridge Secret's (the kubelet
        // replaces the whole volume), their content the same.
        assert_eq!(other(), other_before, "the other bridge reconnected");
    });
    let log = lock(&lab.cluster.log).join("\n");
    for o in 0..replicas {
        assert!(
            log.contains(&format!(
                "updated volume bridges of {} in place",
                pod_name(o)
            )),
            "the kubelet did not update the bridges of pod {o} in place:\n{log}"
        );
    }
    println!("took {:.1}s", t0.elapsed().as_secs_f32());
}
