//! PodDisruptionBudget (one pod at a time) and the NetworkPolicy that keeps
//! the cluster port to the cluster's own pods.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{meta, selector_labels, Names, CLUSTER_PORT, HTTP_PORT};
use crate::crd::MqttClusterSpec;

fn selector(names: &Names) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(names)),
        ..LabelSelector::default()
    }
}

pub fn pdb(names: &Names, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(names, names.pdb(), owner, &BTreeMap::new()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(names)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

/// `app.kubernetes.io/name` of the operator's pods (the Helm chart sets it).
pub const OPERATOR_APP_NAME: &str = "raftmq-operator";

/// Ingress to the broker pods: the cluster port only from the pods of the
/// cluster's own StatefulSet (same namespace, its selector labels) and
/// from the operator's pods in the operator's namespace
/// (`operator_namespace`, named by `kubernetes.io/metadata.name`, which
/// only the API server sets); the MQTT listeners and the HTTP port from
/// anywhere. The cluster port also wants the caller's certificate: the
/// policy narrows who may try.
pub fn network_policy(
    names: &Names,
    owner: &OwnerReference,
    spec: &MqttClusterSpec,
    operator_namespace: &str,
) -> NetworkPolicy {
    let mut open: Vec<NetworkPolicyPort> = spec
        .listeners
        .active()
        .iter()
        .map(|l| tcp(l.port))
        .collect();
    open.push(tcp(HTTP_PORT));
    NetworkPolicy {
        metadata: meta(names, names.network_policy(), owner, &BTreeMap::new()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(names)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        NetworkPolicyPeer {
                            pod_selector: Some(selector(names)),
                            ..NetworkPolicyPeer::default()
                        },
                        // The operator drives Raft membership through the
                        // brokers' Admin gRPC service on this port.
                        NetworkPolicyPeer {
                            namespace_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([(
                                    "kubernetes.io/metadata.name".to_string(),
                                    operator_namespace.to_string(),
                                )])),
                                ..LabelSelector::default()
                            }),
                            pod_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([(
                                    "app.kubernetes.io/name".to_string(),
                                    OPERATOR_APP_NAME.to_string(),
                                )])),
                                ..LabelSelector::default()
                            }),
                            ..NetworkPolicyPeer::default()
                        },
                    ]),
                    ports: Some(vec![tcp(CLUSTER_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(open),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}
