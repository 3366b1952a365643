//! What a real API server does to the operator, through the API double:
//! a write refused (status, Warning Event, backoff), a name the Services
//! cannot have, a volume resize the StorageClass refuses, claims that never
//! bind. Each of these failed before: an error only logged, a reconcile
//! aborted, a status that said only "0 of 3 pods ready".

mod api_double;
mod common;
mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::{Harness, CR, NS};
use kube::runtime::controller::Action;
use raftmq_operator::controller::error_policy;
use serde_json::{json, Value};

fn cluster(name: &str, spec: Value) -> Value {
    json!({"apiVersion": CR.0, "kind": "MqttCluster", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn a_refused_write_is_in_status_and_a_warning_event_with_backoff() {
    let h = Harness::new();
    // A pod label the API server refuses (the CRD does not check label
    // values), long enough that the error's note is over 1 KiB.
    let bad = format!("a b {}", "x".repeat(900));
    h.api.create(
        CR.0,
        CR.1,
        NS,
        cluster("demo", json!({"pod": {"labels": {"team": bad}}})),
    );
    let mut waits = Vec::new();
    for _ in 0..3 {
        let e = h.try_reconcile("demo").await.expect_err("refused");
        waits.push(error_policy(Arc::new(h.cluster("demo")), &e, h.ctx.clone()));
    }
    assert_eq!(
        waits,
        vec![
            Action::requeue(Duration::from_secs(5)),
            Action::requeue(Duration::from_secs(10)),
            Action::requeue(Duration::from_secs(20)),
        ],
        "exponential backoff"
    );
    let ready = h.condition("demo", "Ready");
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "ApplyFailed", "{ready}");
    let msg = ready["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("StatefulSet") && msg.contains("spec.template.metadata.labels[team]"),
        "{msg}"
    );
    assert_eq!(h.condition("demo", "Degraded")["status"], "True");
    let warnings: Vec<(String, String, String)> = h
        .events("demo")
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "ApplyFailed")
        .collect();
    assert_eq!(warnings.len(), 1, "one Event, repeats folded into it");
    assert!(
        warnings[0].2.len() <= 1024 && warnings[0].2.contains("StatefulSet"),
        "{warnings:?}"
    );

    // Fixed: Ready again, the backoff starts over.
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        "demo",
        json!({"spec": {"pod": {"labels": {"team": "ops"}}}}),
    );
    h.reconcile("demo").await;
    h.comes_up("demo").await;
    h.reconcile("demo").await;
    assert_eq!(h.condition("demo", "Ready")["status"], "True");
    assert_eq!(h.condition("demo", "Degraded")["status"], "False");
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        "demo",
        json!({"spec": {"pod": {"labels": {"team": "a b"}}}}),
    );
    let e = h.try_reconcile("demo").await.expect_err("refused");
    assert_eq!(
        error_policy(Arc::new(h.cluster("demo")), &e, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_name_services_cannot_have_is_degraded_with_the_reason() {
    // An older CRD without the name rule let these in.
    for name in ["1mqtt", "mqtt.prod"] {
        let h = Harness::new();
        h.api
            .create(CR.0, CR.1, NS, cluster(name, json!({"replicas": 3})));
        h.reconcile(name).await;
        let d = h.condition(name, "Degraded");
        assert_eq!(d["status"], "True", "{d}");
        assert_eq!(d["reason"], "InvalidName", "{d}");
        assert!(
            d["message"]
                .as_str()
                .unwrap_or_default()
                .contains("DNS-1035"),
            "{d}"
        );
        assert!(h
            .events(name)
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "InvalidName"));
        assert!(
            h.api.list("v1", "services", NS).is_empty(),
            "nothing half-made"
        );
    }
}

fn storage(h: &Harness, claim: &str) -> Value {
    h.get("v1", "persistentvolumeclaims", claim).expect("claim")["spec"]["resources"]["requests"]
        ["storage"]
        .clone()
}

#[tokio::test]
async fn a_refused_volume_resize_is_degraded_and_the_rest_goes_on() {
    let h = Harness::new();
    h.api.create(
        CR.0,
        CR.1,
        NS,
        cluster("demo", json!({"replicas": 3, "storage": {"size": "1Gi"}})),
    );
    h.reconcile("demo").await;
    h.comes_up("demo").await;
    h.reconcile("demo").await;
    assert_eq!(h.condition("demo", "Ready")["status"], "True");

    // `standard` (the default class, like kind's) does not allow expansion;
    // the same change scales up.
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        "demo",
        json!({"spec": {"replicas": 5, "storage": {"size": "2Gi"}}}),
    );
    h.reconcile("demo").await;
    let sts = h.get("apps/v1", "statefulsets", "demo").expect("sts");
    assert_eq!(sts["spec"]["replicas"], 5, "the scale-up happened");
    let d = h.condition("demo", "Degraded");
    assert_eq!(d["status"], "True", "{d}");
    assert_eq!(d["reason"], "VolumeExpansionFailed", "{d}");
    let msg = d["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("data-demo-0") && msg.contains("must support resize"),
        "{msg}"
    );
    assert!(h
        .events("demo")
        .iter()
        .any(|(t, r, _)| t == "Warning" && r == "VolumeExpansionFailed"));
    assert_eq!(storage(&h, "data-demo-0"), "1Gi");
    // Status, Services, certificates: the rest of the reconcile ran.
    assert_eq!(
        h.get(CR.0, CR.1, "demo").expect("cr")["status"]["observedGeneration"],
        2
    );
    h.pods_run("demo");
    h.reconcile("demo").await;
    assert_eq!(
        h.get(CR.0, CR.1, "demo").expect("cr")["status"]["readyReplicas"],
        5
    );
    let warnings = h
        .events("demo")
        .iter()
        .filter(|(_, r, _)| r == "VolumeExpansionFailed")
        .count();
    assert_eq!(warnings, 1, "told once while it stays the same");

    // The class now allows expansion, and one claim is not bound: the
    // bound ones grow, the unbound one is skipped, nothing is Degraded.
    h.api.patch(
        "storage.k8s.io/v1",
        "storageclasses",
        "",
        "standard",
        json!({"allowVolumeExpansion": true}),
    );
    h.api.set_status(
        "v1",
        "persistentvolumeclaims",
        NS,
        "data-demo-4",
        json!({"phase": "Pending"}),
    );
    h.reconcile("demo").await;
    for o in 0..4 {
        assert_eq!(storage(&h, &format!("data-demo-{o}")), "2Gi");
    }
    assert_eq!(storage(&h, "data-demo-4"), "1Gi", "unbound: skipped");
    let d = h.condition("demo", "Degraded");
    assert_eq!(d["status"], "False", "{d}");
}

#[tokio::test]
async fn status_names_pending_claims_and_pods_that_cannot_start() {
    let h = Harness::new();
    // No default StorageClass: the claims never bind.
    h.api
        .delete("storage.k8s.io/v1", "storageclasses", "", "standard");
    h.api
        .create(CR.0, CR.1, NS, cluster("demo", json!({"replicas": 3})));
    h.reconcile("demo").await;
    h.pods_run("demo");
    h.reconcile("demo").await;
    let ready = h.condition("demo", "Ready");
    let msg = ready["message"].as_str().unwrap_or_default();
    assert_eq!(ready["status"], "False");
    assert!(
        msg.contains("PersistentVolumeClaim data-demo-0 is Pending")
            && msg.contains("no default StorageClass"),
        "{msg}"
    );
    assert!(
        msg.contains("demo-0 cannot be scheduled") && msg.contains("unbound"),
        "{msg}"
    );

    // A class appears, then the image cannot be pulled.
    h.api.create(
        "storage.k8s.io/v1",
        "storageclasses",
        "",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "fast", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
               "provisioner": "csi.example"}),
    );
    for o in 0..3 {
        h.api.delete(
            "v1",
            "persistentvolumeclaims",
            NS,
            &format!("data-demo-{o}"),
        );
        h.api.delete("v1", "pods", NS, &format!("demo-{o}"));
    }
    h.api.set_kubelet(Arc::new(|_: &Value| {
        api_double::PodHealth::Waiting(
            "ImagePullBackOff".into(),
            "Back-off pulling image \"ghcr.io/raftmq/raftmq:nope\"".into(),
        )
    }));
    h.api.settle_statefulsets();
    h.reconcile("demo").await;
    let msg = h.condition("demo", "Ready")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("demo-1: ImagePullBackOff") && msg.contains("raftmq:nope"),
        "{msg}"
    );
    assert!(!msg.contains("Pending"), "{msg}");
}
