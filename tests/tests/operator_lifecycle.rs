//! The operator end to end without a live cluster: the real controller
//! (watches, reconciles, Admin gRPC calls) runs against the in-process
//! Kubernetes API double, whose StatefulSet controller makes the pods, and a
//! kubelet stand-in (tests/common/operator_lab) starts a real `raftmq serve`
//! for every pod: its ConfigMaps, env and Secrets written to files, listen
//! addresses moved to loopback ports, one data directory per claim. A "Service" proxy hands each new
//! client connection to a ready pod. While rumqttc clients publish QoS 1
//! into persistent sessions, the cluster goes 3 → 5 → 3 and then rolls
//! every pod for a new image tag; nothing acknowledged may be lost.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raftmq_e2e::operator_lab::mqtt_load::{finish_load, publisher, set_step, start_load};
use raftmq_e2e::operator_lab::{lock, pod_config, pod_name, pod_uids, Lab, NAME, NS};
use raftmq_operator::membership::Membership;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_3_5_3_and_roll_under_load_loses_nothing() {
    let lab = Lab::start(json!({
        "replicas": 3,
        "image": "ghcr.io/raftmq/raftmq:0.1.0",
        "storage": {"deleteClaimsOnScaleDown": true},
    }))
    .await;
    let t = lab
        .converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    println!("create 3: converged in {:.1}s", t.as_secs_f32());
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));

    let run = start_load(&lab, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut figures = Vec::new();
    let mut step = |name: &str, took: Duration, c0: u64, c1: u64| {
        figures.push(format!(
            "{name}: {:.1}s, {} reconnects",
            took.as_secs_f32(),
            c1 - c0
        ));
    };

    let c0 = set_step(&run, "3->5");
    lab.patch_spec(json!({"replicas": 5}));
    let took = lab
        .converged(5, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("scale 3->5: {e}"));
    let c1 = run.load.connacks.load(Ordering::Relaxed);
    step("scale 3->5", took, c0, c1);
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3, 4, 5]));
    // New clients arrive while there are five pods: the Service spreads
    // them over the new pods too, which the scale-down then retires.
    let mut run = run;
    for i in 2..5 {
        let proxy = run.proxy;
        run.tasks
            .push(tokio::spawn(publisher(run.load.clone(), proxy, i)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let c0 = set_step(&run, "5->3");
    lab.patch_spec(json!({"replicas": 3}));
    let took = lab
        .converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("scale 5->3: {e}"));
    let c1 = run.load.connacks.load(Ordering::Relaxed);
    step("scale 5->3", took, c0, c1);
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));
    for o in [3, 4] {
        let pvc = format!("data-{}", pod_name(o));
        assert!(
            lab.api
                .get("v1", "persistentvolumeclaims", NS, &pvc)
                .is_none(),
            "{pvc} deleted (deleteClaimsOnScaleDown)"
        );
    }

    let c0 = set_step(&run, "roll");
    let before = pod_uids(&lab);
    lab.patch_spec(json!({"image": "ghcr.io/raftmq/raftmq:0.1.1"}));
    // The new template first has to reach the StatefulSet.
    let t0 = Instant::now();
    while lab.status()["phase"] == "Running" && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = lab
        .converged(3, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("roll: {e}"));
    let c1 = run.load.connacks.load(Ordering::Relaxed);
    step("roll 3 pods", took, c0, c1);
    let after = pod_uids(&lab);
    assert!(
        before.values().all(|u| !after.values().any(|a| a == u)),
        "every pod was replaced by the roll"
    );
    let sts = lab
        .api
        .get("apps/v1", "statefulsets", NS, NAME)
        .unwrap_or_default();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/raftmq/raftmq:0.1.1"
    );
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));

    let gap = run.load.max_gap_ms.load(Ordering::Relaxed);
    let (lost, per_step) = finish_load(run).await;
    for f in &figures {
        println!("{f}");
    }
    for (s, (acked, lost)) in &per_step {
        println!("step {s}: {acked} messages acknowledged, {lost} lost");
    }
    println!("longest wait for a PUBACK: {gap} ms");
    assert_eq!(lost, 0, "acknowledged messages lost: {per_step:?}");
    assert!(
        per_step.values().map(|(a, _)| a).sum::<usize>() > 100,
        "the load ran"
    );

    // The status and Events tell the story.
    let reasons = lab.event_reasons();
    println!("events: {reasons:?}");
    for want in [
        "Created",
        "LearnerAdded",
        "Promoted",
        "Drained",
        "MemberRemoved",
        "Scaled",
        "RollingPod",
    ] {
        assert!(
            reasons.iter().any(|r| r == want),
            "an Event {want}: {reasons:?}"
        );
    }
    // One Event per step and pod (the Recorder folds repeats per reason
    // and related pod), in the order they happened.
    let first = |r: &str| reasons.iter().position(|x| x == r);
    assert!(first("LearnerAdded") < first("Promoted"), "{reasons:?}");
    assert!(first("Drained") < first("MemberRemoved"), "{reasons:?}");
    assert!(first("MemberRemoved") < first("Scaled"), "{reasons:?}");
    assert_eq!(
        reasons.iter().filter(|r| *r == "RollingPod").count(),
        3,
        "one RollingPod per pod: {reasons:?}"
    );
    let st = lab.status();
    assert_eq!(st["members"], json!(["demo-0", "demo-1", "demo-2"]));
    assert!(st["leader"]
        .as_str()
        .is_some_and(|l| l.starts_with("demo-")));
    let cond = |t: &str| {
        st["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t).cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(cond("Ready")["status"], "True");
    assert_eq!(cond("Degraded")["status"], "False");
    assert_eq!(cond("Progressing")["status"], "False");
    let _ = std::io::stdout().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_scale_down_converges_without_losing_quorum() {
    let lab = Lab::start(json!({"replicas": 5})).await;
    lab.converged(5, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("create 5: {e}"));
    let run = start_load(&lab, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_step(&run, "5->3 with kill -9");
    let t = Instant::now();
    lab.patch_spec(json!({"replicas": 3}));
    // As soon as the first retiring pod is drained, kill -9 the Raft
    // leader (a staying voter): the operator's next calls meet an election
    // and a group one voter short while the container is restarting.
    let t0 = Instant::now();
    loop {
        let reasons = lab.event_reasons();
        if reasons.iter().any(|r| r == "Drained") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the scale-down starts: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = lab.status()["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let victim: i32 = leader
        .rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .expect("the status names the leader");
    lock(&lab.cluster.kill).push((victim, false));
    lab.converged(3, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("scale 5->3 with a kill -9: {e}"));
    println!(
        "scale 5->3 with kill -9 of the leader {leader}: {:.1}s",
        t.elapsed().as_secs_f32()
    );
    let log = lock(&lab.cluster.log).clone();
    for e in lab.api.events(NS, NAME) {
        println!("event {} {}: {}", e["eventTime"], e["reason"], e["note"]);
    }
    println!("{}", log.join("\n"));
    assert!(
        log.iter().any(|x| x.contains(&format!("kill -9 {leader}"))),
        "the leader was killed mid-scale-down: {log:?}"
    );
    assert!(
        log.iter().any(|x| x.contains(&format!("started {leader}"))
            && log.iter().position(|y| y.contains("kill -9"))
                < log
                    .iter()
                    .rposition(|y| y.contains(&format!("started {leader}")))),
        "and its container restarted"
    );
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));
    let gap = run.load.max_gap_ms.load(Ordering::Relaxed);
    let (lost, per_step) = finish_load(run).await;
    println!("per step: {per_step:?}; longest wait for a PUBACK: {gap} ms");
    assert_eq!(lost, 0, "acknowledged messages lost: {per_step:?}");
    // Quorum held throughout: publishing never stalled for an election
    // timeout's worth of retries.
    assert!(gap < 15_000, "publishing stalled for {gap} ms");
    assert!(lab
        .cluster
        .log
        .lock()
        .map(|l| l.iter().any(|x| x.contains("kill -9")))
        .unwrap_or(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_over_mutual_tls() {
    // Operator-issued certificates; the brokers dial each other at
    // 127.0.0.1 here, so the certificate names it too.
    let mut lab = Lab::start(json!({
        "replicas": 3,
        "tls": {"mode": "Operator", "extraDnsNames": ["127.0.0.1"]},
    }))
    .await;
    let took = lab
        .converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("create 3 with mutual TLS: {e}"));
    println!("create 3 (mTLS): {:.1}s", took.as_secs_f32());
    lab.tls = lab.issued_tls();
    assert!(
        lab.tls.is_some(),
        "the operator issued the peer CA and its admin certificate"
    );
    let (_, config) = pod_config(&lab, 0);
    assert!(
        config.contains("cafile"),
        "the brokers require client certificates on the cluster port: {config}"
    );
    let events = lab.event_reasons();
    assert!(
        !events.iter().any(|r| r == "CertificateRenewed"),
        "the certificate is issued once (its IP SAN counts): {events:?}"
    );
    // Without a client certificate the Admin service refuses.
    assert!(lab.admin.status(&lab.target(None), 0).await.is_err());
    assert!(lab
        .admin
        .status(&lab.target(lab.tls.clone()), 0)
        .await
        .is_ok());
    // A node's own certificate reads the status too (and may do no more:
    // cluster_security).
    assert!(lab
        .admin
        .status(&lab.target(lab.peer_tls("node-2")), 0)
        .await
        .is_ok());

    let t = Instant::now();
    lab.patch_spec(json!({"replicas": 5}));
    lab.converged(5, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("scale 3->5 (mTLS): {e}"));
    println!("scale 3->5 (mTLS): {:.1}s", t.elapsed().as_secs_f32());
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3, 4, 5]));
    let t = Instant::now();
    lab.patch_spec(json!({"replicas": 3}));
    lab.converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("scale 5->3 (mTLS): {e}"));
    println!("scale 5->3 (mTLS): {:.1}s", t.elapsed().as_secs_f32());
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_back_with_an_empty_volume_is_re_added_as_a_new_member() {
    let lab = Lab::start(json!({"replicas": 3})).await;
    lab.converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("create 3: {e}"));
    // The broker with a fresh store waits for a Join (Status.initialized
    // false) until the operator has removed and re-added it. (Pod 0, node
    // 1, is not wiped here: it makes a new cluster of an empty store, and
    // the old leader's AppendEntries then overwrite it before the operator
    // can tell; see the README's limits.)
    for victim in [2, 1] {
        let name = pod_name(victim);
        let t = Instant::now();
        lock(&lab.cluster.kill).push((victim, true));
        let reset = |lab: &Lab| {
            lab.api.events(NS, NAME).iter().any(|e| {
                e["reason"] == "MemberReset"
                    && e["note"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&format!("{name} came back")))
            })
        };
        while !reset(&lab) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{name} is reset: {:?}",
                lab.event_reasons()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lab.converged(3, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{name} re-added: {e}"));
        println!(
            "{name} back with an empty volume: re-added in {:.1}s",
            t.elapsed().as_secs_f32()
        );
        assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));
    }
}
