//! Validates Kubernetes objects against the API types of the targeted
//! Kubernetes version (k8s-openapi, feature `latest`) with unknown fields
//! denied: an object is deserialised into its typed struct and serialised
//! back; any field that does not survive the round trip is unknown to the
//! schema, and any type mismatch fails deserialisation. Used on everything
//! the renderer produces and on the Helm chart's output.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::crd::MqttCluster;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("{what}: not an object with apiVersion and kind")]
    NotAnObject { what: String },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("{what}: unknown or malformed fields: {}", fields.join(", "))]
    UnknownFields { what: String, fields: Vec<String> },
}

/// What was checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Validated against the typed schema.
    Typed,
    /// A kind this validator has no schema for (a third-party CRD); only its
    /// shape (apiVersion, kind, metadata.name) was checked.
    Shape,
}

fn describe(v: &Value) -> String {
    format!(
        "{}/{} {}",
        v.get("apiVersion").and_then(Value::as_str).unwrap_or("?"),
        v.get("kind").and_then(Value::as_str).unwrap_or("?"),
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}

fn same_number(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Paths in `orig` that `back` lacks or changed.
fn diff(orig: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => diff(v, bv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            if o.len() != b.len() {
                out.push(path.to_string());
                return;
            }
            for (i, (x, y)) in o.iter().zip(b).enumerate() {
                diff(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b || same_number(a, b) => {}
        _ => out.push(path.to_string()),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value, what: &str) -> Result<(), SchemaError> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| SchemaError::Invalid {
        what: what.to_string(),
        message: e.to_string(),
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| SchemaError::Invalid {
        what: what.to_string(),
        message: e.to_string(),
    })?;
    let mut fields = Vec::new();
    diff(v, &back, "", &mut fields);
    if fields.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::UnknownFields {
            what: what.to_string(),
            fields,
        })
    }
}

/// Validates one object.
pub fn validate(v: &Value) -> Result<Checked, SchemaError> {
    let what = describe(v);
    let (Some(api_version), Some(kind)) = (
        v.get("apiVersion").and_then(Value::as_str),
        v.get("kind").and_then(Value::as_str),
    ) else {
        return Err(SchemaError::NotAnObject { what });
    };
    if v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(SchemaError::Invalid {
            what,
            message: "metadata.name is missing".into(),
        });
    }
    match (api_version, kind) {
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(v, &what)?,
        ("v1", "Secret") => round_trip::<Secret>(v, &what)?,
        ("v1", "Service") => round_trip::<Service>(v, &what)?,
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(v, &what)?,
        ("v1", "Namespace") => round_trip::<Namespace>(v, &what)?,
        ("apps/v1", "StatefulSet") => round_trip::<StatefulSet>(v, &what)?,
        ("apps/v1", "Deployment") => round_trip::<Deployment>(v, &what)?,
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(v, &what)?,
        ("networking.k8s.io/v1", "NetworkPolicy") => round_trip::<NetworkPolicy>(v, &what)?,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(v, &what)?,
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(v, &what)?
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(v, &what)?,
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(v, &what)?,
        ("coordination.k8s.io/v1", "Lease") => round_trip::<Lease>(v, &what)?,
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(v, &what)?
        }
        ("raftmq.io/v1alpha1", "MqttCluster") => {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.entry("spec")
                    .or_insert_with(|| Value::Object(Default::default()));
            }
            round_trip::<MqttCluster>(&v, &what)?
        }
        (av, _)
            if !av.contains('/')
                || av.split('/').next().is_some_and(|g| {
                    g.ends_with(".k8s.io") || g == "apps" || g == "policy" || g == "batch"
                }) =>
        {
            return Err(SchemaError::Invalid {
                what,
                message: "a built-in kind this validator does not know; add it to schema.rs".into(),
            })
        }
        _ => return Ok(Checked::Shape),
    }
    Ok(Checked::Typed)
}

/// Splits a YAML stream into documents (skipping empty ones).
pub fn parse_yaml_stream(text: &str) -> Result<Vec<Value>, serde_norway::Error> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_field_is_caught() {
        let v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "dta": {}});
        assert!(matches!(
            validate(&v),
            Err(SchemaError::UnknownFields { .. })
        ));
        let v = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": "eighty"}]}});
        assert!(matches!(validate(&v), Err(SchemaError::Invalid { .. })));
        let v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}});
        assert_eq!(validate(&v), Ok(Checked::Typed));
        let v = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"}});
        assert_eq!(validate(&v), Ok(Checked::Shape));
    }
}
