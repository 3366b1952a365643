//! Rollouts and scale-downs meeting what a real cluster does, through the
//! API double's StatefulSet controller and kubelet and a Raft group whose
//! brokers live in its pods: a bad image then a fixed one, a pod that stays
//! unready, `kubectl rollout restart` and the cluster's own restart
//! annotation, a config change with a pod evicted mid-roll, a scale-down
//! cancelled after its first drain. Each of these got stuck (or lost the
//! old config) before.

mod api_double;
mod common;
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use api_double::{ApiDouble, PodHealth};
use harness::raft::{settings, PodGroup};
use harness::{Harness, CR, NS};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

const NAME: &str = "demo";

struct Lab {
    h: Harness,
    group: PodGroup,
    /// Images whose containers crash-loop, and ones that run but never
    /// get ready.
    bad: Arc<Mutex<BTreeSet<String>>>,
    unready: Arc<Mutex<BTreeSet<String>>>,
}

impl Lab {
    async fn start(replicas: i32) -> Lab {
        let api = ApiDouble::new();
        let group = PodGroup::new(&api, NAME);
        let h = Harness::on(api.clone(), Arc::new(group.clone()), settings());
        let bad: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let unready: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let (b, u, a) = (bad.clone(), unready.clone(), api.clone());
        let kubelet = api_double::default_kubelet(&api);
        api.set_kubelet(Arc::new(move |pod: &Value| {
            let _ = &a;
            let image = pod["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if b.lock().unwrap_or_else(|p| p.into_inner()).contains(&image) {
                PodHealth::Waiting(
                    "CrashLoopBackOff".into(),
                    "back-off 40s restarting failed container=broker".into(),
                )
            } else if u.lock().unwrap_or_else(|p| p.into_inner()).contains(&image) {
                PodHealth::NotReady
            } else {
                kubelet(pod)
            }
        }));
        api.create(
            CR.0,
            CR.1,
            NS,
            json!({"apiVersion": CR.0, "kind": "MqttCluster", "metadata": {"name": NAME},
                   "spec": {"replicas": replicas, "image": "ghcr.io/raftmq/raftmq:1.0.0"}}),
        );
        {
            let mut g = group.g();
            g.voters = (1..=replicas as u64).collect();
            g.leader = 1;
        }
        let lab = Lab {
            h,
            group,
            bad,
            unready,
        };
        lab.until("the cluster runs", 20, |l| l.running(replicas))
            .await;
        lab.group.calls();
        lab
    }

    /// One round: one pass of the StatefulSet controller and kubelet (a
    /// pod it deletes is made again on the next pass), then reconciles
    /// until one changes nothing (at most three), the later ones before the
    /// StatefulSet controller has seen what the earlier applied: the
    /// interleavings of a real cluster.
    async fn tick(&self) {
        self.h.api.run_statefulsets();
        for _ in 0..3 {
            let rv = self.sts()["metadata"]["resourceVersion"].clone();
            self.h.reconcile(NAME).await;
            if self.sts()["metadata"]["resourceVersion"] == rv {
                break;
            }
        }
    }

    async fn until(&self, what: &str, ticks: usize, f: impl Fn(&Lab) -> bool) -> usize {
        for i in 0..ticks {
            self.tick().await;
            if f(self) {
                return i + 1;
            }
        }
        panic!(
            "{what}: not after {ticks} reconciles; status {}\nevents {:?}\npods {:?}",
            self.h.status(NAME),
            self.h.events(NAME),
            self.pods()
        );
    }

    fn pods(&self) -> BTreeMap<String, (String, String, Value)> {
        self.h
            .api
            .list("v1", "pods", NS)
            .into_iter()
            .map(|p| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&p["metadata"]["name"]),
                    (
                        s(&p["metadata"]["uid"]),
                        s(&p["spec"]["containers"][0]["image"]),
                        p["status"]["conditions"].clone(),
                    ),
                )
            })
            .collect()
    }

    fn uids(&self) -> BTreeMap<String, String> {
        self.pods()
            .into_iter()
            .map(|(n, (u, _, _))| (n, u))
            .collect()
    }

    fn sts(&self) -> Value {
        self.h
            .api
            .get("apps/v1", "statefulsets", NS, NAME)
            .unwrap_or_default()
    }

    /// Every pod on the latest revision, ready; the cluster says Running
    /// and Ready.
    fn running(&self, n: i32) -> bool {
        let sts = self.sts();
        let st = &sts["status"];
        st["readyReplicas"] == n
            && st["updatedReplicas"] == n
            && st["currentRevision"] == st["updateRevision"]
            && self.h.status(NAME)["phase"] == "Running"
            && self.h.condition(NAME, "Ready")["status"] == "True"
    }

    fn patch(&self, spec: Value) {
        self.h
            .api
            .patch(CR.0, CR.1, NS, NAME, json!({ "spec": spec }));
    }
}

fn image(o: &(String, String, Value)) -> &str {
    o.1.rsplit(':').next().unwrap_or_default()
}

#[tokio::test]
async fn a_bad_image_then_a_fixed_one_converges_with_no_manual_step() {
    let lab = Lab::start(3).await;
    lab.bad
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert("ghcr.io/raftmq/raftmq:bad".into());
    lab.patch(json!({"image": "ghcr.io/raftmq/raftmq:bad"}));
    lab.until("the first pod rolled onto the bad image", 20, |l| {
        l.pods().get("demo-2").is_some_and(|p| image(p) == "bad")
    })
    .await;
    // The rollout stops there: the group stays healthy on the others.
    for _ in 0..5 {
        lab.tick().await;
    }
    let pods = lab.pods();
    assert_eq!(image(&pods["demo-1"]), "1.0.0", "{pods:?}");
    assert_eq!(image(&pods["demo-0"]), "1.0.0");

    lab.patch(json!({"image": "ghcr.io/raftmq/raftmq:1.0.1"}));
    lab.until("the fixed image everywhere", 40, |l| {
        l.running(3) && l.pods().values().all(|p| image(p) == "1.0.1")
    })
    .await;
    let events = lab.h.events(NAME);
    assert!(
        events
            .iter()
            .any(|(_, r, n)| r == "RollingBrokenPod" && n.contains("demo-2")),
        "{events:?}"
    );
    assert_eq!(lab.group.g().voters, BTreeSet::from([1, 2, 3]));
}

#[tokio::test]
async fn a_pod_not_ready_past_the_timeout_is_rolled_without_waiting_for_it() {
    let lab = Lab::start(3).await;
    // Its container runs, but the broker never gets anywhere (does not
    // answer, is not ready).
    lab.unready
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert("ghcr.io/raftmq/raftmq:slow".into());
    lab.group
        .mute_images
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert("ghcr.io/raftmq/raftmq:slow".into());
    lab.patch(json!({"image": "ghcr.io/raftmq/raftmq:slow"}));
    lab.until("the first pod rolled onto the unready image", 20, |l| {
        l.pods().get("demo-2").is_some_and(|p| image(p) == "slow")
    })
    .await;
    lab.patch(json!({"image": "ghcr.io/raftmq/raftmq:1.0.1"}));
    for _ in 0..5 {
        lab.tick().await;
    }
    assert_eq!(
        image(&lab.pods()["demo-2"]),
        "slow",
        "not ready for less than the timeout: still given time"
    );
    *lab.h.clock.lock().unwrap_or_else(|p| p.into_inner()) += time::Duration::seconds(121);
    lab.until("the fixed image everywhere", 40, |l| {
        l.running(3) && l.pods().values().all(|p| image(p) == "1.0.1")
    })
    .await;
}

/// Each pod's uid, every round: how often each was replaced (a pod may be
/// missing for a round in between).
fn replaced_counts(history: &[BTreeMap<String, String>]) -> BTreeMap<String, usize> {
    let mut uids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for round in history {
        for (pod, uid) in round {
            uids.entry(pod.clone()).or_default().insert(uid.clone());
        }
    }
    uids.into_iter()
        .filter(|(_, u)| u.len() > 1)
        .map(|(pod, u)| (pod, u.len() - 1))
        .collect()
}

#[tokio::test]
async fn rollout_restart_and_the_restart_annotation_roll_every_pod_once() {
    let lab = Lab::start(3).await;
    let sets: Api<StatefulSet> = Api::namespaced(lab.h.api.client(), NS);
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"}}}}});
    let pp = PatchParams {
        field_manager: Some("kubectl-rollout".into()),
        ..PatchParams::default()
    };
    sets.patch(NAME, &pp, &Patch::Strategic(&restart))
        .await
        .expect("kubectl rollout restart");

    let mut history = vec![lab.uids()];
    for round in 0..40 {
        lab.tick().await;
        history.push(lab.uids());
        if round > 2 && lab.running(3) {
            break;
        }
    }
    assert!(lab.running(3), "Ready again: {}", lab.h.status(NAME));
    let counts = replaced_counts(&history);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("demo-0".to_string(), 1),
            ("demo-1".to_string(), 1),
            ("demo-2".to_string(), 1)
        ]),
        "every pod once"
    );
    let calls = lab.group.calls();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("drain")).count(),
        3,
        "each drained before it restarted: {calls:?}"
    );
    assert_eq!(
        lab.sts()["spec"]["template"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/restartedAt"],
        "2025-01-01T00:00:00Z",
        "the operator's apply keeps kubectl's annotation"
    );

    // The supported way: an annotation on the cluster.
    lab.h.api.patch(
        CR.0,
        CR.1,
        NS,
        NAME,
        json!({"metadata": {"annotations": {"raftmq.io/restart": "1"}}}),
    );
    let mut history = vec![lab.uids()];
    for round in 0..40 {
        lab.tick().await;
        history.push(lab.uids());
        if round > 2 && lab.running(3) {
            break;
        }
    }
    assert!(lab.running(3), "{}", lab.h.status(NAME));
    assert_eq!(replaced_counts(&history).values().sum::<usize>(), 3);
    assert!(replaced_counts(&history).values().all(|n| *n == 1));
}

fn config_of(lab: &Lab, pod: &str) -> (String, String) {
    let p = lab.h.api.get("v1", "pods", NS, pod).unwrap_or_default();
    let cm = p["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "config")
        .and_then(|v| v["configMap"]["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let toml = lab
        .h
        .api
        .get("v1", "configmaps", NS, &cm)
        .map(|c| {
            c["data"]["broker.toml"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    (cm, toml)
}

#[tokio::test]
async fn a_pod_evicted_mid_roll_comes_back_on_the_old_config() {
    let lab = Lab::start(3).await;
    let (old_cm, old_toml) = config_of(&lab, "demo-0");
    assert!(!old_toml.is_empty(), "{old_cm}");
    lab.patch(json!({"config": {"mqtt": {"max_queued_messages": 5}}}));
    lab.until("pod 2 on the new config", 20, |l| {
        config_of(l, "demo-2").1.contains("max_queued_messages = 5")
    })
    .await;
    // Pod 0 is evicted (a node drain): the StatefulSet controller makes
    // it again at the current revision, which names the old config.
    assert!(lab.h.api.delete("v1", "pods", NS, "demo-0"));
    lab.h.api.settle_statefulsets();
    let (cm, toml) = config_of(&lab, "demo-0");
    assert_eq!(cm, old_cm, "the old config's ConfigMap");
    assert_eq!(toml, old_toml, "and the old config in it");
    lab.until("the new config everywhere", 40, |l| {
        l.running(3)
            && ["demo-0", "demo-1", "demo-2"]
                .iter()
                .all(|p| config_of(l, p).1.contains("max_queued_messages = 5"))
    })
    .await;
    lab.tick().await;
    assert!(
        lab.h.api.get("v1", "configmaps", NS, &old_cm).is_none(),
        "the old config is pruned after the roll"
    );
}

async fn cancelled_scale_down(no_undrain: bool) {
    let lab = Lab::start(5).await;
    lab.group.g().no_undrain = no_undrain;
    let before = lab.uids();
    lab.patch(json!({"replicas": 3}));
    lab.until("pod 4 drained", 10, |l| l.group.draining() == [5])
        .await;
    lab.patch(json!({"replicas": 5}));
    lab.until("the drain ended", 10, |l| {
        l.group.draining().is_empty() && l.running(5)
    })
    .await;
    assert_eq!(lab.group.g().voters, BTreeSet::from([1, 2, 3, 4, 5]));
    let events = lab.h.events(NAME);
    assert!(
        events
            .iter()
            .any(|(_, r, n)| r == "Undrained" && n.contains("demo-4")),
        "{events:?}"
    );
    let restarted = lab.uids()["demo-4"] != before["demo-4"];
    assert_eq!(
        restarted, no_undrain,
        "restarted only when the broker has no Undrain"
    );
}

#[tokio::test]
async fn a_scale_down_cancelled_after_its_drain_undrains_the_pod() {
    cancelled_scale_down(false).await;
}

#[tokio::test]
async fn without_undrain_the_drained_pod_is_restarted() {
    cancelled_scale_down(true).await;
}
