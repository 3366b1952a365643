//! The API double behaves like a kube-apiserver where the operator depends
//! on it: server-side apply with field managers, the status subresource,
//! admission, and the StatefulSet controller's revisions and partition.
//! Each check goes through a real `kube::Client`.

mod api_double;

use api_double::{ApiDouble, PodHealth};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use std::sync::Arc;

const NS: &str = "mqtt";

fn sts(image: &str, annotations: Value, env: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "demo"},
        "spec": {
            "replicas": 3, "serviceName": "demo-headless", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "demo"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "template": {
                "metadata": {"labels": {"app": "demo"}, "annotations": annotations},
                "spec": {"containers": [{"name": "broker", "image": image, "env": env,
                                         "ports": [{"name": "mqtt", "containerPort": 1883}]}]},
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    })
}

fn op() -> PatchParams {
    PatchParams::apply("raftmq-operator").force()
}

#[tokio::test]
async fn apply_keeps_other_managers_fields_and_drops_its_own() {
    let api = ApiDouble::new();
    let sets: Api<StatefulSet> = Api::namespaced(api.client(), NS);
    let first = sts(
        "r:1",
        json!({"raftmq.io/a": "1", "raftmq.io/b": "2"}),
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
    );
    sets.patch("demo", &op(), &Patch::Apply(&first))
        .await
        .expect("apply");
    // kubectl rollout restart: a strategic merge patch by its own manager.
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}}}}});
    let pp = PatchParams {
        field_manager: Some("kubectl-rollout".into()),
        ..PatchParams::default()
    };
    sets.patch("demo", &pp, &Patch::Strategic(&restart))
        .await
        .expect("restart");
    // The operator applies again without annotation b and env B.
    let second = sts(
        "r:2",
        json!({"raftmq.io/a": "1"}),
        json!([{"name": "A", "value": "1"}]),
    );
    let got = sets
        .patch("demo", &op(), &Patch::Apply(&second))
        .await
        .expect("apply");
    let t = got.spec.template;
    let ann = t.metadata.and_then(|m| m.annotations).unwrap_or_default();
    assert_eq!(
        ann.get("kubectl.kubernetes.io/restartedAt")
            .map(String::as_str),
        Some("2024-01-01T00:00:00Z"),
        "another manager's annotation survives: {ann:?}"
    );
    assert!(ann.contains_key("raftmq.io/a") && !ann.contains_key("raftmq.io/b"));
    let c = &t.spec.expect("pod spec").containers[0];
    assert_eq!(c.image.as_deref(), Some("r:2"));
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(env, ["A"], "a dropped env entry goes");
    let managers: Vec<(String, String)> = api
        .managers("apps/v1", "statefulsets", NS, "demo")
        .into_iter()
        .map(|(m, o, _, _)| (m, o))
        .collect();
    assert!(managers.contains(&("raftmq-operator".into(), "Apply".into())));
    assert!(managers.contains(&("kubectl-rollout".into(), "Update".into())));

    // Another applier wanting a different value of an owned field: 409
    // without force, taken over with it.
    let other = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "demo"},
                       "spec": {"replicas": 5}});
    let err = sets
        .patch(
            "demo",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&other),
        )
        .await
        .expect_err("conflict");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.message.contains(".spec.replicas")),
        "{err}"
    );
    let got = sets
        .patch(
            "demo",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&other),
        )
        .await
        .expect("forced");
    assert_eq!(got.spec.replicas, Some(5));
    // Now kubectl owns replicas: the operator dropping it from its config
    // leaves it alone.
    let mut third = second.clone();
    if let Some(s) = third["spec"].as_object_mut() {
        s.remove("replicas");
    }
    let got = sets
        .patch("demo", &op(), &Patch::Apply(&third))
        .await
        .expect("apply");
    assert_eq!(got.spec.replicas, Some(5));
}

#[tokio::test]
async fn status_is_a_subresource() {
    let api = ApiDouble::new();
    let sets: Api<StatefulSet> = Api::namespaced(api.client(), NS);
    let mut obj = sts("r:1", json!({}), json!([]));
    obj["status"] = json!({"replicas": 9});
    sets.patch("demo", &op(), &Patch::Apply(&obj))
        .await
        .expect("apply");
    let v = api.get("apps/v1", "statefulsets", NS, "demo").expect("sts");
    assert!(
        v["status"].is_null(),
        "status on the main resource is ignored: {v}"
    );
    let st = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "status": {"replicas": 2}, "spec": {"replicas": 7}});
    sets.patch_status("demo", &op(), &Patch::Apply(&st))
        .await
        .expect("status");
    let v = api.get("apps/v1", "statefulsets", NS, "demo").expect("sts");
    assert_eq!(v["status"]["replicas"], 2);
    assert_eq!(v["spec"]["replicas"], 3, "spec through /status is ignored");
}

#[tokio::test]
async fn admission_refuses_what_a_real_api_server_refuses() {
    let api = ApiDouble::new();
    let svcs: Api<Service> = Api::namespaced(api.client(), NS);
    for bad in ["1mqtt", "mqtt.prod"] {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": bad}, "spec": {"ports": [{"port": 1883}]}});
        let err = svcs
            .patch(bad, &op(), &Patch::Apply(&svc))
            .await
            .expect_err(bad);
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("DNS-1035")),
            "{err}"
        );
    }
    // A ConfigMap may have dots in its name.
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), NS);
    let cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mqtt.prod-config"}});
    cms.patch("mqtt.prod-config", &op(), &Patch::Apply(&cm))
        .await
        .expect("a subdomain is fine");

    // PVC resize: refused unbound, refused on a class without expansion.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(api.client(), NS);
    api.create("v1", "persistentvolumeclaims", NS, json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "unbound"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Pending"}}));
    api.create("v1", "persistentvolumeclaims", NS, json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "bound"}, "spec": {"storageClassName": "standard", "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"}}));
    let grow = json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}});
    let e = pvcs
        .patch("unbound", &PatchParams::default(), &Patch::Merge(&grow))
        .await
        .expect_err("unbound");
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 422), "{e}");
    let e = pvcs
        .patch("bound", &PatchParams::default(), &Patch::Merge(&grow))
        .await
        .expect_err("no expansion");
    assert!(
        matches!(&e, kube::Error::Api(s) if s.code == 403 && s.message.contains("must support resize")),
        "{e}"
    );
    api.patch(
        "storage.k8s.io/v1",
        "storageclasses",
        "",
        "standard",
        json!({"allowVolumeExpansion": true}),
    );
    pvcs.patch("bound", &PatchParams::default(), &Patch::Merge(&grow))
        .await
        .expect("expandable");

    // Event notes of more than 1 KiB.
    let events: Api<Event> = Api::namespaced(api.client(), NS);
    let ev = |note: String| Event {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("e{}", note.len())),
            ..Default::default()
        },
        note: Some(note),
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        )),
        ..Default::default()
    };
    events
        .create(&PostParams::default(), &ev("x".repeat(1024)))
        .await
        .expect("1 KiB");
    let e = events
        .create(&PostParams::default(), &ev("x".repeat(1025)))
        .await
        .expect_err("over 1 KiB");
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 422), "{e}");
}

fn pod_rev(api: &ApiDouble, o: i32) -> String {
    api.get("v1", "pods", NS, &format!("demo-{o}"))
        .map(|p| {
            p["metadata"]["labels"]["controller-revision-hash"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn statefulset_controller_honours_partition_and_revisions() {
    let api = ApiDouble::new();
    api.set_kubelet(api_double::default_kubelet(&api));
    let sets: Api<StatefulSet> = Api::namespaced(api.client(), NS);
    let mut obj = sts("r:1", json!({}), json!([]));
    sets.patch("demo", &op(), &Patch::Apply(&obj))
        .await
        .expect("apply");
    api.settle_statefulsets();
    let st = api.get("apps/v1", "statefulsets", NS, "demo").expect("sts")["status"].clone();
    assert_eq!(st["readyReplicas"], 3, "{st}");
    let r1 = st["currentRevision"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(st["updateRevision"], r1.as_str());
    let pvc = api
        .get("v1", "persistentvolumeclaims", NS, "data-demo-0")
        .expect("claim");
    assert_eq!(
        pvc["status"]["phase"], "Bound",
        "the default class binds it"
    );

    // A new template held by the partition: nothing rolls.
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = "r:2".into();
    obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = 3.into();
    sets.patch("demo", &op(), &Patch::Apply(&obj))
        .await
        .expect("apply");
    api.settle_statefulsets();
    let st = api.get("apps/v1", "statefulsets", NS, "demo").expect("sts")["status"].clone();
    let r2 = st["updateRevision"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(r1, r2);
    assert_eq!(st["currentRevision"], r1.as_str());
    assert!((0..3).all(|o| pod_rev(&api, o) == r1));

    // Partition 2: pod 2 rolls. Pod 0, deleted, comes back at r1.
    obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = 2.into();
    sets.patch("demo", &op(), &Patch::Apply(&obj))
        .await
        .expect("apply");
    api.settle_statefulsets();
    assert_eq!(pod_rev(&api, 2), r2);
    assert!(api.delete("v1", "pods", NS, "demo-0"));
    api.settle_statefulsets();
    assert_eq!(
        pod_rev(&api, 0),
        r1,
        "below the partition: the current revision"
    );
    assert_eq!(pod_rev(&api, 1), r1);

    // A crash-looping pod at the update revision does not stop the
    // controller from replacing it when the template changes again.
    let a = api.clone();
    api.set_kubelet(Arc::new(move |p: &Value| {
        if p["spec"]["containers"][0]["image"] == "r:2" {
            PodHealth::Waiting("CrashLoopBackOff".into(), "back-off 10s".into())
        } else {
            (api_double::default_kubelet(&a))(p)
        }
    }));
    api.settle_statefulsets();
    let p2 = api.get("v1", "pods", NS, "demo-2").expect("pod");
    assert_eq!(
        p2["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "CrashLoopBackOff"
    );
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = "r:3".into();
    obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = 0.into();
    sets.patch("demo", &op(), &Patch::Apply(&obj))
        .await
        .expect("apply");
    api.settle_statefulsets();
    let st = api.get("apps/v1", "statefulsets", NS, "demo").expect("sts")["status"].clone();
    let r3 = st["updateRevision"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!((0..3).all(|o| pod_rev(&api, o) == r3), "{st}");
    assert_eq!(st["currentRevision"], r3.as_str());
}

#[tokio::test]
async fn a_hung_client_gets_no_answer_until_released() {
    let api = ApiDouble::new();
    let cms: Api<ConfigMap> = Api::namespaced(api.client_as("a"), NS);
    api.hang("a", true);
    let r = tokio::time::timeout(std::time::Duration::from_millis(300), cms.get_opt("x")).await;
    assert!(r.is_err(), "hangs");
    api.hang("a", false);
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), cms.get_opt("x")).await;
    assert!(matches!(r, Ok(Ok(None))));
}
