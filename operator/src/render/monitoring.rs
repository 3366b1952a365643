//! Objects of CRDs that may not be installed: the Prometheus Operator's
//! ServiceMonitor and cert-manager's Certificate. Rendered as
//! [`DynamicObject`]s; the controller only applies them when discovery finds
//! their API.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::services::SERVICE_ROLE;
use super::{meta, selector_labels, Names};
use crate::crd::{ServiceMonitorSpec, TlsSpec};

pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

pub fn service_monitor(
    names: &Names,
    owner: &OwnerReference,
    spec: &ServiceMonitorSpec,
) -> DynamicObject {
    let mut selector = selector_labels(names);
    selector.insert(SERVICE_ROLE.to_string(), "headless".to_string());
    let mut obj = DynamicObject::new(&names.service_monitor(), &service_monitor_resource())
        .within(&names.namespace);
    obj.metadata = meta(names, names.service_monitor(), owner, &spec.labels);
    obj.data = json!({
        "spec": {
            "selector": { "matchLabels": selector },
            "namespaceSelector": { "matchNames": [names.namespace] },
            "endpoints": [{
                "port": "http",
                "path": "/metrics",
                "interval": spec.interval.clone().unwrap_or_else(|| "30s".into()),
            }],
        }
    });
    obj
}

/// Default certificate lifetime (hours).
pub const DEFAULT_CERT_HOURS: i64 = 2160;

/// DNS names the server certificate must cover: the client Service, the
/// headless Service, and every pod (wildcard under the headless Service),
/// plus the user's extras.
pub fn dns_names(names: &Names, tls: &TlsSpec) -> Vec<String> {
    let ns = &names.namespace;
    let client = names.client_service();
    let headless = names.headless_service();
    let mut v = vec![
        client.clone(),
        format!("{client}.{ns}"),
        format!("{client}.{ns}.svc"),
        format!("{client}.{ns}.svc.cluster.local"),
        headless.clone(),
        format!("{headless}.{ns}.svc"),
        format!("*.{headless}.{ns}.svc"),
        format!("*.{headless}.{ns}.svc.cluster.local"),
    ];
    v.extend(tls.extra_dns_names.iter().cloned());
    v
}

pub fn certificate(names: &Names, owner: &OwnerReference, tls: &TlsSpec) -> DynamicObject {
    let hours = tls.duration_hours.unwrap_or(DEFAULT_CERT_HOURS);
    let mut obj =
        DynamicObject::new(&names.certificate(), &certificate_resource()).within(&names.namespace);
    obj.metadata = meta(names, names.certificate(), owner, &BTreeMap::new());
    let issuer = tls.issuer_ref.as_ref();
    obj.data = json!({
        "spec": {
            "secretName": names.tls_secret(),
            "commonName": names.client_host(),
            "dnsNames": dns_names(names, tls),
            "duration": format!("{hours}h"),
            // Renew with a third of the lifetime left, as operator mode does.
            "renewBefore": format!("{}h", hours / 3),
            "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
            "usages": ["server auth", "client auth", "digital signature", "key encipherment"],
            "issuerRef": {
                "name": issuer.map(|i| i.name.clone()).unwrap_or_default(),
                "kind": issuer.map(|i| i.kind.clone()).unwrap_or_else(|| "Issuer".into()),
                "group": issuer.map(|i| i.group.clone()).unwrap_or_else(|| "cert-manager.io".into()),
            },
        }
    });
    obj
}
