//! The operator meeting what a real cluster does to it, end to end: the
//! real controller against the API double (its StatefulSet controller
//! deciding the pods) and a kubelet stand-in running real brokers
//! (tests/common/operator_lab). `kubectl rollout restart` under QoS 1
//! load rolls every pod once, health-gated, losing nothing; a scale-down
//! cancelled after its first drain leaves no drained broker behind; a
//! broker that dies mid-roll of a config change comes back on the config
//! its pod was made with, not the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams};
use kube::Api;
use raftmq::codec::{ConnAck, Packet, Protocol};
use raftmq_e2e::operator_lab::mqtt_load::{finish_load, set_step, start_load};
use raftmq_e2e::operator_lab::{lock, pod_config, pod_uids, Lab, NAME, NS};
use raftmq_e2e::raw::{self, RawClient, Read1};
use serde_json::json;

/// An MQTT 5 CONNECT straight to pod `o`'s broker (not through the
/// Service): its CONNACK, or `None` when nothing answers.
fn connack(lab: &Lab, o: i32) -> Option<ConnAck> {
    let addr: SocketAddr = ([127, 0, 0, 1], lab.cluster.ports[&o].tcp).into();
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    let mut c = RawClient::connect_tcp(addr, Protocol::V5);
    c.send(&Packet::Connect(Box::new(raw::connect(
        Protocol::V5,
        &format!("probe-{o}"),
        true,
    ))));
    match c.recv(Duration::from_secs(3)) {
        Read1::Packet(Packet::ConnAck(a)) => Some(a),
        _ => None,
    }
}

/// Waits until pod `o`'s broker accepts a connection; its CONNACK.
async fn accepted(lab: &Lab, o: i32, within: Duration) -> ConnAck {
    let t = Instant::now();
    loop {
        if let Some(a) = connack(lab, o).filter(|a| a.code == 0) {
            return a;
        }
        assert!(
            t.elapsed() < within,
            "demo-{o} accepts no connection: {:?}",
            connack(lab, o).map(|a| a.code)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_restart_under_load_rolls_every_pod_once_and_loses_nothing() {
    let lab = Lab::start(json!({"replicas": 3})).await;
    lab.converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    let run = start_load(&lab, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every uid each pod has had, watched while the roll goes.
    let seen: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let watch = {
        let (seen, api) = (seen.clone(), lab.api.clone());
        tokio::spawn(async move {
            loop {
                for p in api.list("v1", "pods", NS) {
                    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                    lock(&seen)
                        .entry(s(&p["metadata"]["name"]))
                        .or_default()
                        .insert(s(&p["metadata"]["uid"]));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let before = pod_uids(&lab);
    set_step(&run, "rollout restart");
    let t = Instant::now();
    // `kubectl rollout restart sts/demo`.
    let sets: Api<StatefulSet> = Api::namespaced(lab.api.client(), NS);
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"}}}}});
    let pp = PatchParams {
        field_manager: Some("kubectl-rollout".into()),
        ..PatchParams::default()
    };
    sets.patch(NAME, &pp, &Patch::Strategic(&restart))
        .await
        .expect("kubectl rollout restart");
    let t0 = Instant::now();
    while lab.status()["phase"] == "Running" && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.converged(3, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("rollout restart: {e}"));
    println!(
        "rollout restart of 3 pods: {:.1}s",
        t.elapsed().as_secs_f32()
    );
    watch.abort();
    let after = pod_uids(&lab);
    for (pod, uid) in &before {
        assert_ne!(after.get(pod), Some(uid), "{pod} was restarted");
    }
    let seen = lock(&seen).clone();
    for (pod, uids) in &seen {
        assert_eq!(uids.len(), 2, "{pod} restarted exactly once: {uids:?}");
    }
    let gap = run
        .load
        .max_gap_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let (lost, per_step) = finish_load(run).await;
    println!("per step: {per_step:?}; longest wait for a PUBACK: {gap} ms");
    assert_eq!(lost, 0, "acknowledged messages lost: {per_step:?}");
    assert!(
        per_step
            .get("rollout restart")
            .is_some_and(|(a, _)| *a > 20),
        "the load ran through the roll: {per_step:?}"
    );
    let reasons = lab.event_reasons();
    assert_eq!(
        reasons.iter().filter(|r| *r == "Drained").count(),
        3,
        "each pod handed its clients over first: {reasons:?}"
    );
    let st = lab.status();
    let ready = st["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or_default();
    assert_eq!(ready["status"], "True", "Ready again: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_down_cancelled_after_the_first_drain_serves_again() {
    let lab = Lab::start(json!({"replicas": 5})).await;
    lab.converged(5, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("create 5: {e}"));
    accepted(&lab, 4, Duration::from_secs(10)).await;
    lab.patch_spec(json!({"replicas": 3}));
    let t0 = Instant::now();
    while !lab.event_reasons().iter().any(|r| r == "Drained") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the scale-down starts: {:?}",
            lab.event_reasons()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Changed minds: five after all.
    lab.patch_spec(json!({"replicas": 5}));
    let refused = connack(&lab, 4).map(|a| a.code);
    println!("demo-4 right after its drain: CONNACK {refused:?}");
    lab.converged(5, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("back to 5: {e}"));
    let ack = accepted(&lab, 4, Duration::from_secs(30)).await;
    assert_eq!(ack.code, 0, "demo-4 takes clients again");
    let reasons = lab.event_reasons();
    assert!(
        reasons.iter().any(|r| r == "Undrained"),
        "the drain was ended: {reasons:?}"
    );
    let members = &lab.status()["members"];
    assert_eq!(members.as_array().map(Vec::len), Some(5), "{members}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_killed_mid_roll_of_a_config_change_keeps_its_old_config() {
    let lab = Lab::start(json!({"replicas": 3})).await;
    lab.converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    let old = accepted(&lab, 0, Duration::from_secs(10)).await;
    let old_max = old.properties.maximum_packet_size;
    let (old_cm, _) = pod_config(&lab, 0);
    lab.patch_spec(json!({"config": {"mqtt": {"max_packet_size": 65536}}}));
    // Pod 2 is the first to roll onto the new config.
    let t0 = Instant::now();
    loop {
        let rolled =
            connack(&lab, 2).is_some_and(|a| a.properties.maximum_packet_size == Some(65536));
        if rolled {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "pod 2 rolls");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Pod 0's broker dies (kill -9) before the roll reaches it; its
    // container restarts in the same pod, whose template names the old
    // config's ConfigMap.
    lock(&lab.cluster.kill).push((0, false));
    let t0 = Instant::now();
    while !lock(&lab.cluster.log)
        .iter()
        .any(|l| l.contains("died; restarting"))
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "the kill lands");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = accepted(&lab, 0, Duration::from_secs(60)).await;
    let (cm_now, _) = pod_config(&lab, 0);
    if cm_now == old_cm {
        assert_eq!(
            back.properties.maximum_packet_size, old_max,
            "demo-0 came back on the old config"
        );
    }
    lab.converged(3, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("roll: {e}"));
    for o in 0..3 {
        let a = accepted(&lab, o, Duration::from_secs(10)).await;
        assert_eq!(a.properties.maximum_packet_size, Some(65536), "demo-{o}");
    }
    assert_eq!(
        cm_now, old_cm,
        "the kill landed before the roll reached demo-0"
    );
}
