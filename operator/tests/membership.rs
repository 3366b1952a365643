//! Membership management through the controller, against the API double
//! and a fake Raft group behind the `Membership` seam: the order of the
//! Admin calls for a scale-up, a scale-down (replicas held until the
//! retiring pods are out), a rollout (leadership moved before the leader's
//! pod restarts, one pod at a time), an empty volume (removed, re-added),
//! and a failing step (Degraded, retried with exponential backoff).

mod api_double;
mod common;
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_double::ApiDouble;
use harness::raft::PodGroup;
use harness::{CR, NS};
use kube::runtime::controller::Action;
use raftmq_operator::controller::{reconcile, Context, LifecycleSettings, TEMPLATE_HASH};
use raftmq_operator::crd::MqttCluster;
use raftmq_operator::telemetry::Metrics;
use serde_json::{json, Value};
use time::OffsetDateTime;

const NAME: &str = "demo";

struct H {
    api: ApiDouble,
    fake: PodGroup,
    ctx: Arc<Context>,
    clock: Arc<Mutex<OffsetDateTime>>,
}

impl H {
    fn new(replicas: i32) -> H {
        let api = ApiDouble::new();
        let fake = PodGroup::new(&api, NAME);
        let mut ctx = Context::new(
            api.client(),
            Metrics::new().expect("metrics"),
            Arc::new(fake.clone()),
        );
        ctx.lifecycle = LifecycleSettings {
            stuck_after: Duration::from_secs(60),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(30),
            poll: Duration::from_secs(2),
            max_lag: 10,
            unready_after: Duration::from_secs(300),
        };
        let clock = Arc::new(Mutex::new(OffsetDateTime::now_utc()));
        let c = clock.clone();
        ctx.now = Arc::new(move || *c.lock().unwrap_or_else(|p| p.into_inner()));
        api.create(
            CR.0,
            CR.1,
            NS,
            json!({"apiVersion": CR.0, "kind": "MqttCluster", "metadata": {"name": NAME},
                   "spec": {"replicas": replicas}}),
        );
        H {
            api,
            fake,
            ctx: Arc::new(ctx),
            clock,
        }
    }

    /// What the StatefulSet controller would report about the pods.
    fn settle(&self) {
        let Some(sts) = self.api.get("apps/v1", "statefulsets", NS, NAME) else {
            return;
        };
        let hash = self.hash();
        let pods = self.api.list("v1", "pods", NS);
        let updated = pods
            .iter()
            .filter(|p| p["metadata"]["annotations"][TEMPLATE_HASH] == hash.as_str())
            .count();
        let status = json!({
            "observedGeneration": sts["metadata"]["generation"],
            "replicas": pods.len(),
            "readyReplicas": pods.len(),
            "updatedReplicas": updated,
            "updateRevision": hash,
            "currentRevision": if updated == pods.len() { hash.clone() } else { "old".into() },
        });
        if sts["status"] != status {
            self.api
                .set_status("apps/v1", "statefulsets", NS, NAME, status);
        }
    }

    async fn reconcile(&self) -> Action {
        self.settle();
        let v = self.api.get(CR.0, CR.1, NS, NAME).expect("cluster");
        let c: MqttCluster = serde_json::from_value(v).expect("MqttCluster");
        reconcile(Arc::new(c), self.ctx.clone())
            .await
            .expect("reconcile")
    }

    fn sts(&self) -> Value {
        self.api
            .get("apps/v1", "statefulsets", NS, NAME)
            .expect("statefulset")
    }

    fn replicas(&self) -> i64 {
        self.sts()["spec"]["replicas"].as_i64().unwrap_or(-1)
    }

    fn partition(&self) -> i64 {
        self.sts()["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
            .as_i64()
            .unwrap_or(-1)
    }

    fn hash(&self) -> String {
        self.sts()["spec"]["template"]["metadata"]["annotations"][TEMPLATE_HASH]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A ready pod on the StatefulSet's current template, its broker up
    /// (a new pod: a drain of the one it replaces is over).
    fn pod(&self, o: i32) {
        let hash = self.hash();
        self.api.delete("v1", "pods", NS, &format!("{NAME}-{o}"));
        self.api.create(
            "v1",
            "pods",
            NS,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("{NAME}-{o}"),
                                "labels": {"app.kubernetes.io/name": "raftmq", "app.kubernetes.io/instance": NAME},
                                "annotations": {TEMPLATE_HASH: hash}},
                   "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                              "containerStatuses": [{"name": "broker", "ready": true,
                                                     "state": {"running": {}}}]}}),
        );
    }

    fn status(&self) -> Value {
        self.api.get(CR.0, CR.1, NS, NAME).expect("cluster")["status"].clone()
    }

    fn condition(&self, t: &str) -> Value {
        self.status()["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t).cloned())
            .unwrap_or(Value::Null)
    }

    fn reasons(&self) -> Vec<String> {
        self.api
            .events(NS, NAME)
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A running 3-node group on pods 0..n, led by node 1.
    async fn running(n: i32) -> H {
        let h = H::new(n);
        h.reconcile().await;
        {
            let mut g = h.fake.g();
            g.voters = (1..=n as u64).collect();
            g.leader = 1;
        }
        for o in 0..n {
            h.pod(o);
        }
        h.reconcile().await;
        h.reconcile().await;
        assert_eq!(h.status()["phase"], "Running", "{}", h.status());
        h.fake.calls();
        h
    }
}

#[tokio::test]
async fn scale_up_adds_learners_then_promotes() {
    let h = H::running(3).await;
    assert_eq!(h.status()["members"], json!(["demo-0", "demo-1", "demo-2"]));
    assert_eq!(h.status()["leader"], "demo-0");

    h.api
        .patch(CR.0, CR.1, NS, NAME, json!({"spec": {"replicas": 5}}));
    h.reconcile().await;
    assert_eq!(h.replicas(), 5, "replicas go up before anything joins");
    assert_eq!(h.status()["phase"], "ScalingUp");
    assert!(
        h.fake.calls().is_empty(),
        "nothing to add before the pods run"
    );

    h.pod(3);
    h.pod(4);
    h.reconcile().await;
    h.reconcile().await;
    // Status shows what was observed before the step: both learners, as
    // the promotion starts.
    h.reconcile().await;
    assert_eq!(h.status()["learners"], json!(["demo-3", "demo-4"]));
    assert_eq!(h.status()["phase"], "Promoting");
    h.reconcile().await;
    assert_eq!(
        h.fake.calls(),
        vec![
            "add_learner 4 pod3:7100 via 1",
            "add_learner 5 pod4:7100 via 1",
            "change_membership [1, 2, 3, 4, 5]",
        ]
    );
    h.reconcile().await;
    assert_eq!(h.status()["phase"], "Running");
    assert_eq!(h.status()["members"].as_array().map(Vec::len), Some(5));
    let r = h.reasons();
    assert!(
        r.contains(&"LearnerAdded".to_string()) && r.contains(&"Promoted".to_string()),
        "{r:?}"
    );
}

#[tokio::test]
async fn scale_down_removes_highest_first_and_holds_replicas() {
    let h = H::running(5).await;
    h.fake.g().leader = 5;
    h.api
        .patch(CR.0, CR.1, NS, NAME, json!({"spec": {"replicas": 3}}));
    let mut replicas_seen = Vec::new();
    for _ in 0..8 {
        h.reconcile().await;
        replicas_seen.push(h.replicas());
    }
    assert_eq!(
        h.fake.calls(),
        vec![
            "drain 5 -> demo.mqtt.svc",
            "transfer_leader 5 -> 3",
            "remove_node 5",
            "drain 4 -> demo.mqtt.svc",
            "remove_node 4",
        ]
    );
    // Held at 5 for every step, lowered once both were out.
    assert_eq!(replicas_seen[..5], [5, 5, 5, 5, 5]);
    assert_eq!(h.replicas(), 3);
    assert_eq!(h.fake.g().voters, BTreeSet::from([1, 2, 3]));
    let r = h.reasons();
    for want in ["Drained", "LeaderTransferred", "MemberRemoved", "Scaled"] {
        assert!(r.iter().any(|x| x == want), "{want} in {r:?}");
    }
}

#[tokio::test]
async fn rollout_goes_one_pod_at_a_time_moving_the_leader_first() {
    let h = H::running(3).await;
    h.fake.g().leader = 3;
    let old_hash = h.hash();
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        NAME,
        json!({"spec": {"image": "ghcr.io/raftmq/raftmq:9.9.9"}}),
    );
    h.reconcile().await;
    assert_ne!(h.hash(), old_hash);
    assert_eq!(h.partition(), 3, "the new template is held");
    assert_eq!(h.status()["phase"], "RollingOut");

    let mut order = Vec::new();
    for _ in 0..20 {
        h.reconcile().await;
        let p = h.partition();
        if p < 3 && !order.contains(&p) {
            // The StatefulSet controller restarts that pod.
            order.push(p);
            assert!(
                h.fake.g().leader != p as u64 + 1,
                "pod {p} restarts while it leads"
            );
            h.pod(p as i32);
        }
        if order.len() == 3 && h.status()["phase"] == "Running" {
            break;
        }
    }
    assert_eq!(order, vec![2, 1, 0], "highest ordinal first");
    let calls = h.fake.calls();
    assert_eq!(calls[0], "transfer_leader 3 -> 2", "{calls:?}");
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("drain")).count(),
        3,
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.starts_with("transfer_leader 2")),
        "{calls:?}"
    );
    assert_eq!(h.status()["phase"], "Running");
    assert!(h.reasons().iter().any(|r| r == "RollingPod"));
}

#[tokio::test]
async fn empty_volume_member_is_removed_and_added_again() {
    let h = H::running(3).await;
    h.fake.g().empty.insert(3);
    h.reconcile().await;
    h.reconcile().await;
    h.reconcile().await;
    assert_eq!(
        h.fake.calls(),
        vec![
            "remove_node 3",
            "add_learner 3 pod2:7100 via 1",
            "change_membership [1, 2, 3]",
        ]
    );
    assert!(h.reasons().iter().any(|r| r == "MemberReset"));
}

#[tokio::test]
async fn failing_step_is_degraded_and_retried_with_backoff() {
    let h = H::running(3).await;
    h.fake.g().fail_add = true;
    h.api
        .patch(CR.0, CR.1, NS, NAME, json!({"spec": {"replicas": 4}}));
    h.reconcile().await;
    h.pod(3);
    let mut waits = Vec::new();
    for _ in 0..3 {
        waits.push(h.reconcile().await);
    }
    assert_eq!(
        waits,
        vec![
            Action::requeue(Duration::from_secs(2)),
            Action::requeue(Duration::from_secs(4)),
            Action::requeue(Duration::from_secs(8)),
        ]
    );
    let d = h.condition("Degraded");
    assert_eq!(d["status"], "True");
    assert_eq!(d["reason"], "MembershipChangeTimeout");
    assert_eq!(h.status()["operation"]["attempts"], 3);
    assert!(h.reasons().iter().any(|r| r == "MembershipChangeTimeout"));
    assert_eq!(h.fake.g().voters.len(), 3, "never forced");

    h.fake.g().fail_add = false;
    h.reconcile().await;
    h.reconcile().await;
    assert_eq!(h.condition("Degraded")["status"], "False");
    assert_eq!(h.fake.g().voters, BTreeSet::from([1, 2, 3, 4]));
}

#[tokio::test]
async fn pod_that_never_starts_becomes_degraded() {
    let h = H::running(3).await;
    h.api
        .patch(CR.0, CR.1, NS, NAME, json!({"spec": {"replicas": 4}}));
    h.reconcile().await;
    assert_eq!(h.condition("Degraded")["status"], "False");
    *h.clock.lock().unwrap_or_else(|p| p.into_inner()) += time::Duration::seconds(61);
    h.reconcile().await;
    let d = h.condition("Degraded");
    assert_eq!(d["status"], "True", "{d}");
    assert_eq!(d["reason"], "PodNotReady");
    assert!(d["message"].as_str().unwrap_or_default().contains("demo-3"));
    assert_eq!(h.status()["phase"], "Degraded: PodNotReady");
    let _ = BTreeMap::<i32, i32>::new();
}
