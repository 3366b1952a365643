//! The API server's validation and admission, where the operator can trip
//! over it: object names (DNS-1035 labels for Services, DNS-1123
//! subdomains for the rest), label values, the StatefulSet fields that
//! cannot change, PersistentVolumeClaim resizes (bound claims of a class
//! that allows expansion only, never smaller), Event notes of at most
//! 1 KiB.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Key, State};

pub type Refusal = (u16, &'static str, String);

fn kind_of(resource: &str) -> String {
    super::kind_for(resource)
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns1123_label)
}

/// A label value: empty, or at most 63 of `[A-Za-z0-9._-]` starting and
/// ending alphanumeric.
fn label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

fn invalid(key: &Key, field: &str, value: &str, why: &str) -> Refusal {
    (
        422,
        "Invalid",
        format!(
            "{} \"{}\" is invalid: {field}: Invalid value: \"{value}\": {why}",
            kind_of(&key.resource),
            key.name
        ),
    )
}

/// Checks on a new object.
pub(crate) fn create(st: &State, key: &Key, obj: &Value) -> Result<(), Refusal> {
    let name = key.name.as_str();
    if key.resource == "services" {
        if !dns1035_label(name) {
            return Err(invalid(
                key,
                "metadata.name",
                name,
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
            ));
        }
    } else if key.resource != "events" && !dns1123_subdomain(name) {
        return Err(invalid(
            key,
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ));
    }
    common(st, key, None, obj)
}

/// Checks on a changed object.
pub(crate) fn update(st: &State, key: &Key, old: &Value, new: &Value) -> Result<(), Refusal> {
    statefulset_immutable(key, old, new)?;
    pvc_resize(st, key, old, new)?;
    common(st, key, Some(old), new)
}

fn common(_st: &State, key: &Key, _old: Option<&Value>, obj: &Value) -> Result<(), Refusal> {
    let labels = [
        ("metadata.labels", &obj["metadata"]["labels"]),
        (
            "spec.template.metadata.labels",
            &obj["spec"]["template"]["metadata"]["labels"],
        ),
    ];
    for (at, map) in labels {
        for (k, v) in map.as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or_default();
            if !label_value(v) {
                return Err(invalid(
                    key,
                    &format!("{at}[{k}]"),
                    v,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters",
                ));
            }
        }
    }
    if key.resource == "events" {
        let note = obj["note"].as_str().unwrap_or_default();
        if note.len() > 1024 {
            return Err((
                422,
                "Invalid",
                format!(
                    "Event.events.k8s.io \"{}\" is invalid: note: Too long: may not be more than 1024 bytes",
                    key.name
                ),
            ));
        }
    }
    Ok(())
}

/// The API server's StatefulSet rule: only some spec fields may change.
fn statefulset_immutable(key: &Key, old: &Value, new: &Value) -> Result<(), Refusal> {
    if key.resource != "statefulsets" {
        return Ok(());
    }
    const MUTABLE: &[&str] = &[
        "replicas",
        "template",
        "updateStrategy",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
        "ordinals",
        "revisionHistoryLimit",
    ];
    let strip = |v: &Value| {
        let mut s = v["spec"].clone();
        if let Some(o) = s.as_object_mut() {
            for f in MUTABLE {
                o.remove(*f);
            }
        }
        s
    };
    if strip(old) != strip(new) {
        return Err((422, "Invalid", format!(
            "StatefulSet.apps \"{}\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than {} are forbidden",
            key.name, MUTABLE.join(", ")
        )));
    }
    Ok(())
}

fn storage(v: &Value) -> Option<&str> {
    v["spec"]["resources"]["requests"]["storage"].as_str()
}

/// The StorageClass a claim was provisioned from: its own, or the default.
pub(crate) fn storage_class<'a>(st: &'a State, pvc: &Value) -> Option<&'a Value> {
    let classes: BTreeMap<&str, &Value> = st
        .objects
        .iter()
        .filter(|(k, _)| k.resource == "storageclasses")
        .map(|(k, v)| (k.name.as_str(), v))
        .collect();
    match pvc["spec"]["storageClassName"].as_str() {
        Some(name) => classes.get(name).copied(),
        None => classes.values().copied().find(|c| {
            c["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
        }),
    }
}

/// A claim grows only when it is bound and its class allows expansion,
/// and never shrinks.
fn pvc_resize(st: &State, key: &Key, old: &Value, new: &Value) -> Result<(), Refusal> {
    if key.resource != "persistentvolumeclaims" || storage(old) == storage(new) {
        return Ok(());
    }
    let q = |v: &Value| storage(v).and_then(raftmq_operator::controller::quantity);
    if old["status"]["phase"] != "Bound" {
        return Err((422, "Invalid", format!(
            "PersistentVolumeClaim \"{}\" is invalid: spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            key.name
        )));
    }
    if let (Some(a), Some(b)) = (q(old), q(new)) {
        if b < a {
            return Err((
                422,
                "Invalid",
                format!(
                    "PersistentVolumeClaim \"{}\" is invalid: spec.resources.requests.storage: Forbidden: field can not be less than status.capacity",
                    key.name
                ),
            ));
        }
    }
    let expandable =
        storage_class(st, old).is_some_and(|c| c["allowVolumeExpansion"] == json!(true));
    if !expandable {
        return Err((403, "Forbidden", format!(
            "persistentvolumeclaims \"{}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
            key.name
        )));
    }
    Ok(())
}
