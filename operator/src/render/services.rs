//! The headless Service (stable pod DNS for Raft peers, metrics scraping)
//! and the client Service (the MQTT listeners, type from the spec).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{meta, selector_labels, Names, CLUSTER_PORT, HTTP_PORT};
use crate::crd::{ListenerKindExt, MqttClusterSpec, ServiceType};

/// Label telling the two Services apart (the ServiceMonitor selects on it).
pub const SERVICE_ROLE: &str = "raftmq.io/service";

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub fn headless(names: &Names, owner: &OwnerReference) -> Service {
    let extra = BTreeMap::from([(SERVICE_ROLE.to_string(), "headless".to_string())]);
    Service {
        metadata: meta(names, names.headless_service(), owner, &extra),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Peers must find each other before they are ready: readiness
            // depends on the Raft group they are forming.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names)),
            ports: Some(vec![port("cluster", CLUSTER_PORT), port("http", HTTP_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn client(names: &Names, owner: &OwnerReference, spec: &MqttClusterSpec) -> Service {
    let svc = &spec.listeners.service;
    let mut extra = svc.labels.clone();
    extra.insert(SERVICE_ROLE.to_string(), "client".to_string());
    let mut metadata = meta(names, names.client_service(), owner, &extra);
    if !svc.annotations.is_empty() {
        metadata.annotations = Some(svc.annotations.clone());
    }
    let exposes_node_ports = svc.type_ != ServiceType::ClusterIP;
    let ports = spec
        .listeners
        .active()
        .iter()
        .map(|l| ServicePort {
            node_port: l.spec.node_port.filter(|_| exposes_node_ports),
            ..port(l.kind.port_name(), l.port)
        })
        .collect();
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().to_string()),
            selector: Some(selector_labels(names)),
            ports: Some(ports),
            load_balancer_source_ranges: (svc.type_ == ServiceType::LoadBalancer
                && !svc.load_balancer_source_ranges.is_empty())
            .then(|| svc.load_balancer_source_ranges.clone()),
            external_traffic_policy: svc
                .external_traffic_policy
                .clone()
                .filter(|_| exposes_node_ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
