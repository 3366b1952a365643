//! The brokers' securityContext: UID/GID/fsGroup 65532 by default, and
//! `spec.pod.securityContext` / `containerSecurityContext` replacing them,
//! so a platform that assigns the UID (OpenShift restricted-v2) is not
//! contradicted by a fixed one anywhere in the pod.

mod common;

use raftmq_operator::render::render;
use serde_json::{json, Value};

fn statefulset(example: &str, pod: Option<Value>) -> Value {
    let mut cluster = common::example_cluster(example);
    if let Some(pod) = pod {
        cluster.spec.pod = serde_json::from_value(pod).expect("pod overrides");
    }
    let rendered = render(&cluster, &common::example_observed(example)).expect("render");
    serde_json::to_value(&rendered.statefulset).expect("json")
}

fn pod_spec(sts: &Value) -> &Value {
    &sts["spec"]["template"]["spec"]
}

#[test]
fn default_is_uid_65532_everywhere() {
    let sts = statefulset("minimal.yaml", None);
    let pod = &pod_spec(&sts)["securityContext"];
    assert_eq!(pod["runAsUser"], 65532);
    assert_eq!(pod["runAsGroup"], 65532);
    assert_eq!(pod["fsGroup"], 65532);
    assert_eq!(pod["runAsNonRoot"], true);
    let c = &pod_spec(&sts)["containers"][0]["securityContext"];
    assert_eq!(c["runAsUser"], 65532);
    assert_eq!(c["readOnlyRootFilesystem"], true);
    assert_eq!(c["capabilities"]["drop"], json!(["ALL"]));
}

#[test]
fn pod_security_context_leaves_the_ids_to_the_platform() {
    let sts = statefulset("restricted.yaml", None);
    let pod = &pod_spec(&sts)["securityContext"];
    assert_eq!(
        pod,
        &json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let c = &pod_spec(&sts)["containers"][0]["securityContext"];
    for id in ["runAsUser", "runAsGroup"] {
        assert!(c.get(id).is_none(), "the container names no {id}: {c}");
    }
    // The rest of the container's lock-down stays.
    assert_eq!(c["allowPrivilegeEscalation"], false);
    assert_eq!(c["readOnlyRootFilesystem"], true);
    assert_eq!(c["capabilities"]["drop"], json!(["ALL"]));
}

#[test]
fn chosen_ids_and_container_context_are_used_as_given() {
    let sts = statefulset(
        "minimal.yaml",
        Some(json!({
            "securityContext": {"runAsUser": 1000700000, "fsGroup": 1000700000},
            "containerSecurityContext": {"runAsUser": 1000700000, "privileged": false}
        })),
    );
    let pod = &pod_spec(&sts)["securityContext"];
    assert_eq!(
        pod,
        &json!({"runAsUser": 1000700000, "fsGroup": 1000700000})
    );
    let c = &pod_spec(&sts)["containers"][0]["securityContext"];
    assert_eq!(c, &json!({"runAsUser": 1000700000, "privileged": false}));
}

/// The CRD carries the fields (a spec with them is not pruned by the API
/// server).
#[test]
fn the_crd_schema_has_the_fields() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(raftmq_operator::crd::MqttCluster::crd()).expect("crd");
    let pod = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["pod"]["properties"];
    assert!(
        pod["securityContext"]["properties"]["runAsUser"].is_object(),
        "{pod}"
    );
    assert!(pod["containerSecurityContext"]["properties"]["capabilities"].is_object());
}
