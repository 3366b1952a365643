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

/// Issue 15: the cluster port is mutual TLS for every cluster, a cluster
/// with no TLS listener at all included: each broker its own node
/// certificate from the mounted peer Secret, never plain text.
#[test]
fn peer_tls_is_on_with_no_tls_listener() {
    let cluster = common::example_cluster("minimal.yaml");
    assert!(
        cluster.spec.effective_tls().is_none(),
        "the example has no TLS listener"
    );
    let rendered = render(&cluster, &common::example_observed("minimal.yaml")).expect("render");
    let config = rendered
        .config_map
        .data
        .as_ref()
        .and_then(|d| d.values().next().cloned())
        .expect("broker config");
    let toml: toml::Table = toml::from_str(
        config
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .as_str(),
    )
    .expect("broker TOML");
    let c = &toml["cluster"];
    assert_eq!(
        c["certfile"].as_str(),
        Some("/etc/raftmq/peer/node-{node_id}.crt")
    );
    assert_eq!(
        c["keyfile"].as_str(),
        Some("/etc/raftmq/peer/node-{node_id}.key")
    );
    assert_eq!(c["cafile"].as_str(), Some("/etc/raftmq/peer/ca.crt"));
    assert!(c.get("insecure_plaintext").is_none(), "{config}");

    let sts = serde_json::to_value(&rendered.statefulset).expect("json");
    let pod = pod_spec(&sts);
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "peer"))
        .expect("a peer volume");
    assert_eq!(volume["secret"]["secretName"], "demo-peer");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .and_then(|v| v.iter().find(|m| m["name"] == "peer"))
        .expect("the peer volume mounted");
    assert_eq!(mount["mountPath"], "/etc/raftmq/peer");
    assert_eq!(mount["readOnly"], true);

    // The mounted Secret holds the CA certificate and each node's pair,
    // never the CA key or the operator's admin certificate.
    let secret = |name: &str| {
        rendered
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.data.as_ref())
            .map(|d| d.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let replicas = cluster.spec.replicas;
    let mut want = vec!["ca.crt".to_string()];
    for id in 1..=replicas {
        want.push(format!("node-{id}.crt"));
        want.push(format!("node-{id}.key"));
    }
    want.sort();
    assert_eq!(secret("demo-peer"), want);
    assert_eq!(
        secret("demo-peer-ca"),
        vec!["admin.crt", "admin.key", "ca.crt", "ca.key"]
    );
}

/// The cluster port admits the operator only from the operator's own
/// namespace (by `kubernetes.io/metadata.name`, set by the API server),
/// and brokers only of this cluster's StatefulSet (its selector, in its
/// namespace).
#[test]
fn the_network_policy_names_the_operators_namespace() {
    let cluster = common::example_cluster("minimal.yaml");
    let rendered = render(&cluster, &common::example_observed("minimal.yaml")).expect("render");
    let np = serde_json::to_value(rendered.network_policy.as_ref().expect("a NetworkPolicy"))
        .expect("json");
    let rule = np["spec"]["ingress"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["ports"][0]["port"] == 7100))
        .expect("a rule for the cluster port");
    let from = rule["from"].as_array().expect("from");
    assert_eq!(from.len(), 2, "{rule}");
    let brokers = &from[0];
    assert!(brokers.get("namespaceSelector").is_none(), "{brokers}");
    assert_eq!(
        brokers["podSelector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "raftmq", "app.kubernetes.io/instance": "demo"})
    );
    let operator = &from[1];
    assert_eq!(
        operator["namespaceSelector"]["matchLabels"],
        json!({"kubernetes.io/metadata.name": common::OPERATOR_NAMESPACE})
    );
    assert_eq!(
        operator["podSelector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "raftmq-operator"})
    );
}
