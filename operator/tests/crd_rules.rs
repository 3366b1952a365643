//! The CRD's CEL rules (`x-kubernetes-validations`) evaluated as the API
//! server would (defaults applied first) with kube-cel: the examples pass,
//! each kind of mistake is refused with its message.

mod common;

use serde_json::{json, Value};

fn schema() -> Value {
    let crd = raftmq_operator::crd();
    let v = serde_json::to_value(&crd.spec.versions[0]).expect("version");
    v["schema"]["openAPIV3Schema"].clone()
}

fn cr(spec: Value) -> Value {
    json!({
        "apiVersion": "raftmq.io/v1alpha1", "kind": "MqttCluster",
        "metadata": {"name": "demo", "namespace": "mqtt"},
        "spec": spec,
    })
}

fn errors(obj: &Value) -> Vec<String> {
    match kube_cel::validate(&schema(), obj, None) {
        Ok(()) => Vec::new(),
        Err(e) => e.into_vec().iter().map(|e| e.to_string()).collect(),
    }
}

/// A bridge the rules accept.
fn bridge(name: &str) -> Value {
    json!({"name": name, "addresses": ["central:1883"], "topics": [{"pattern": "a/#"}]})
}

/// `base` with `fields` set over it.
fn with(mut base: Value, fields: Value) -> Value {
    if let (Some(b), Some(f)) = (base.as_object_mut(), fields.as_object()) {
        for (k, v) in f {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

#[test]
fn every_rule_compiles() {
    let compiled = kube_cel::compile_schema(&schema());
    let errs: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert!(errs.is_empty(), "{errs:?}");
}

#[test]
fn examples_pass_the_crd_rules() {
    for name in common::EXAMPLES {
        for doc in common::example_docs(name) {
            if doc["kind"] == "MqttCluster" {
                let mut doc = doc;
                doc["metadata"]["namespace"] = "mqtt".into();
                assert_eq!(errors(&doc), Vec::<String>::new(), "{name}");
            }
        }
    }
    // The three-line CR: spec defaults to {}.
    let minimal = json!({"apiVersion": "raftmq.io/v1alpha1", "kind": "MqttCluster", "metadata": {"name": "demo"}});
    assert_eq!(errors(&minimal), Vec::<String>::new());
}

#[test]
fn mistakes_are_refused_with_their_message() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"tls": {"mode": "Secret"}}),
            "tls.secretName is required",
        ),
        (
            json!({"tls": {"mode": "CertManager"}}),
            "tls.issuerRef is required",
        ),
        (
            json!({"listeners": {"psk": {}}}),
            "the psk listener needs spec.psk",
        ),
        (
            json!({"acl": [{"user": "a", "pattern": true, "access": "read", "topic": "x"}]}),
            "either for a user or a pattern",
        ),
        (
            json!({"acl": [{"access": "read", "topic": "a/#/b"}]}),
            "'#' may only be its last character",
        ),
        (
            json!({"acl": [{"access": "read", "topic": ""}]}),
            "an ACL topic is non-empty",
        ),
        (
            json!({"auth": {"users": [{"username": "a:b", "passwordSecretRef": {"name": "s"}}]}}),
            "no ':' or spaces",
        ),
        (
            json!({"imagePullPolicy": "Sometimes"}),
            "imagePullPolicy must be",
        ),
        (
            json!({"storage": {"size": "lots"}}),
            "storage.size must be a quantity",
        ),
        (
            json!({"bridges": [bridge("a"), bridge("a")]}),
            "bridge names must be unique",
        ),
        (
            json!({"bridges": [bridge("../etc")]}),
            "a bridge name is letters, digits",
        ),
        (
            json!({"bridges": [with(bridge("a"), json!({
                "tls": {"caSecretName": "ca"}, "psk": {"secretName": "psk"}}))]}),
            "tls (certificates) or psk (TLS-PSK), not both",
        ),
        (
            json!({"bridges": [with(bridge("a"), json!({"topics": [{"pattern": ""}]}))]}),
            "an empty pattern needs a localPrefix or remotePrefix",
        ),
        (
            json!({"bridges": [with(bridge("a"), json!({"topics": [{"pattern": "a/#/b"}]}))]}),
            "'#' may only be its last character",
        ),
        (
            json!({"bridges": [with(bridge("a"), json!({"topics": [{"pattern": "x", "localPrefix": "site/+/"}]}))]}),
            "a bridge topic prefix is a topic name",
        ),
        (
            json!({"bridges": [with(bridge("a"), json!({"restartTimeout": {"baseSeconds": 30, "capSeconds": 5}}))]}),
            "capSeconds must be at least baseSeconds",
        ),
    ];
    for (spec, want) in cases {
        let errs = errors(&cr(spec.clone()));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{spec}: expected {want:?}, got {errs:?}"
        );
    }
    let long = json!({"apiVersion": "raftmq.io/v1alpha1", "kind": "MqttCluster", "metadata": {"name": "x".repeat(53)}, "spec": {}});
    assert!(
        errors(&long).iter().any(|e| e.contains("at most 52")),
        "{:?}",
        errors(&long)
    );
}

#[test]
fn a_name_services_cannot_have_is_refused() {
    let named = |name: &str| {
        json!({"apiVersion": "raftmq.io/v1alpha1", "kind": "MqttCluster",
               "metadata": {"name": name, "namespace": "mqtt"}, "spec": {}})
    };
    for bad in ["1mqtt", "mqtt.prod", "Mqtt", "mqtt-"] {
        let errs = errors(&named(bad));
        assert!(
            errs.iter().any(|e| e.contains("DNS-1035")),
            "{bad}: {errs:?}"
        );
    }
    for good in ["mqtt", "mqtt-prod", "a1"] {
        assert_eq!(errors(&named(good)), Vec::<String>::new(), "{good}");
    }
}

/// The API server estimates each rule's cost times how often it can run and
/// refuses a CRD over budget; unbounded strings and lists around a rule are
/// what blow the estimate. Every string a rule reads has a maxLength, every
/// list above a rule a maxItems.
#[test]
fn rules_have_bounded_inputs() {
    fn walk(node: &Value, path: String, lists_bounded: bool, out: &mut Vec<String>) {
        let has_rules = node.get("x-kubernetes-validations").is_some();
        if has_rules && !lists_bounded {
            out.push(format!("{path}: a rule under a list without maxItems"));
        }
        if has_rules
            && node["type"] == "string"
            && node.get("maxLength").is_none()
            && node.get("enum").is_none()
        {
            out.push(format!("{path}: a rule on a string without maxLength"));
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                walk(v, format!("{path}.{k}"), lists_bounded, out);
            }
        }
        if let Some(items) = node.get("items") {
            walk(
                items,
                format!("{path}[]"),
                lists_bounded && node.get("maxItems").is_some(),
                out,
            );
        }
    }
    let mut out = Vec::new();
    walk(&schema(), String::new(), true, &mut out);
    assert!(out.is_empty(), "{out:#?}");
}
