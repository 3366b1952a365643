//! The broker StatefulSet: stable identity (`<cluster>-N` is Raft node
//! N+1), one volume per pod, probes on the HTTP port, non-root with a
//! read-only root filesystem, and the config checksum that rolls pods when
//! (and only when) the broker TOML changes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::config_path;
use super::{
    common_labels, meta, selector_labels, Names, Observed, ACL_DIR, BRIDGES_DIR,
    BRIDGE_SECRETS_DIR, CLUSTER_PORT, CONFIG_CHECKSUM, CONFIG_DIR, CONTAINER, DATA_DIR, HTTP_PORT,
    PEER_DIR, PSK_DIR, TLS_DIR, USERS_DIR,
};
use crate::crd::{ListenerKindExt, MqttClusterSpec};

/// The bridges' ConfigMap volume: a running template that has it keeps it.
pub const BRIDGES_VOLUME: &str = "bridges";

/// UID/GID the broker runs as.
pub const RUN_AS: i64 = 65532;

/// A volume and where the broker container mounts it.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    pub volume: Volume,
    pub path: &'static str,
}

fn secret_volume(name: &str, secret: String, items: Option<Vec<KeyToPath>>) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            items,
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The volumes the pod template carries, besides the data claim. Whole
/// directories, never `subPath`: kubelet updates those in place, which is
/// what lets the broker reload users, ACL and certificates without a restart.
pub fn mounts(
    names: &Names,
    spec: &MqttClusterSpec,
    observed: &Observed,
    checksum: &str,
) -> Vec<Mount> {
    let config_map = |name: &str, cm: String| Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: cm,
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut v = vec![
        Mount {
            volume: config_map("config", names.config_map(checksum)),
            path: CONFIG_DIR,
        },
        Mount {
            volume: Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            path: "/tmp",
        },
    ];
    if super::config::has_acl(spec) {
        v.push(Mount {
            volume: config_map("acl", names.acl_config_map()),
            path: ACL_DIR,
        });
    }
    if observed.password_file.is_some() {
        v.push(Mount {
            volume: secret_volume("users", names.users_secret(), None),
            path: USERS_DIR,
        });
    }
    // Named, not content-addressed: bridges and their credentials change
    // in place (see render/bridges.rs).
    if super::bridges::in_use(spec, observed) {
        v.push(Mount {
            volume: config_map(BRIDGES_VOLUME, names.bridges_config_map()),
            path: BRIDGES_DIR,
        });
        v.push(Mount {
            volume: secret_volume("bridge-secrets", names.bridge_secret(), None),
            path: BRIDGE_SECRETS_DIR,
        });
    }
    // Every cluster: the cluster port is mutual TLS whatever the listeners.
    v.push(Mount {
        volume: secret_volume("peer", names.peer_secret(), None),
        path: PEER_DIR,
    });
    if let Some(tls) = spec.effective_tls() {
        if let Some(secret) = names.certificate_secret(&tls) {
            v.push(Mount {
                volume: secret_volume("tls", secret, None),
                path: TLS_DIR,
            });
        }
    }
    let psk_on = spec
        .listeners
        .active()
        .iter()
        .any(|l| l.kind == crate::crd::ListenerKind::Psk);
    if let (true, Some(psk)) = (psk_on, &spec.psk) {
        v.push(Mount {
            volume: secret_volume(
                "psk",
                psk.secret_name.clone(),
                Some(vec![KeyToPath {
                    key: psk.key.clone(),
                    path: psk.key.clone(),
                    ..KeyToPath::default()
                }]),
            ),
            path: PSK_DIR,
        });
    }
    v
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        ..ResourceRequirements::default()
    }
}

fn default_affinity(names: &Names) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(names)),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// `spec.pod.containerSecurityContext`, or the default. The default names
/// the UID/GID only when the pod's securityContext is ours too: with a
/// platform-assigned UID (OpenShift) a fixed one here would be refused.
fn container_security(spec: &MqttClusterSpec) -> SecurityContext {
    if let Some(custom) = &spec.pod.container_security_context {
        return custom.clone();
    }
    let fixed_ids = spec.pod.security_context.is_none();
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: fixed_ids.then_some(RUN_AS),
        run_as_group: fixed_ids.then_some(RUN_AS),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// `spec.pod.securityContext`, or the default: non-root as the image's
/// user, which also owns the data volume (fsGroup).
fn pod_security(spec: &MqttClusterSpec) -> PodSecurityContext {
    spec.pod
        .security_context
        .clone()
        .unwrap_or(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        })
}

pub fn container(names: &Names, spec: &MqttClusterSpec, mounts: &[Mount]) -> Container {
    let mut ports: Vec<ContainerPort> = spec
        .listeners
        .active()
        .iter()
        .map(|l| ContainerPort {
            name: Some(l.kind.port_name().to_string()),
            container_port: l.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect();
    for (name, port) in [("http", HTTP_PORT), ("cluster", CLUSTER_PORT)] {
        ports.push(ContainerPort {
            name: Some(name.to_string()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    let mut volume_mounts = vec![VolumeMount {
        name: "data".into(),
        mount_path: DATA_DIR.into(),
        ..VolumeMount::default()
    }];
    volume_mounts.extend(mounts.iter().map(|m| VolumeMount {
        name: m.volume.name.clone(),
        mount_path: m.path.to_string(),
        read_only: Some(m.path != "/tmp"),
        ..VolumeMount::default()
    }));
    Container {
        name: CONTAINER.into(),
        image: Some(spec.image().to_string()),
        image_pull_policy: spec.image_pull_policy.clone(),
        // The image's entrypoint is the `raftmq` binary.
        args: Some(vec!["serve".into(), "--config".into(), config_path()]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // Node id comes from HOSTNAME's ordinal (broker default);
            // peers are found at <pod>.<headless>.<ns>.svc:7100 and joined
            // through the Admin API, never by pods guessing.
            env(
                "RAFTMQ_CLUSTER__ADVERTISE",
                &format!(
                    "$(POD_NAME).{}.$(POD_NAMESPACE).svc:{CLUSTER_PORT}",
                    names.headless_service()
                ),
            ),
        ]),
        ports: Some(ports),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        startup_probe: Some(probe("/healthz", 2, 60)),
        security_context: Some(container_security(spec)),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    }
}

pub fn statefulset(
    names: &Names,
    owner: &OwnerReference,
    spec: &MqttClusterSpec,
    observed: &Observed,
    checksum: &str,
) -> StatefulSet {
    let mounts = mounts(names, spec, observed, checksum);
    let pod = &spec.pod;
    let mut pod_labels = pod.labels.clone();
    pod_labels.extend(common_labels(names));
    // An operator upgrade alone must not roll the brokers.
    pod_labels.remove("app.kubernetes.io/version");
    let mut annotations = pod.annotations.clone();
    annotations.insert(CONFIG_CHECKSUM.into(), checksum.to_string());
    annotations.insert(
        "kubectl.kubernetes.io/default-container".into(),
        CONTAINER.into(),
    );

    let mut storage_req = BTreeMap::new();
    storage_req.insert("storage".to_string(), Quantity(spec.storage.size.clone()));
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(selector_labels(names)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(storage_req),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };

    StatefulSet {
        metadata: meta(names, names.statefulset(), owner, &BTreeMap::new()),
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.headless_service()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(names)),
                ..LabelSelector::default()
            },
            // All pods start together (a Raft group needs a quorum to get
            // ready); updates still go one pod at a time, each waiting for
            // the previous one's /readyz.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                // One pod at a time (the default; maxUnavailable is left
                // unset as it needs a feature gate). The controller drives
                // `partition` (see lifecycle.rs): it holds every pod on the
                // old template and lowers it one pod at a time while the
                // Raft group is healthy.
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    ..RollingUpdateStatefulSetStrategy::default()
                }),
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        if spec.storage.delete_claims_on_delete {
                            "Delete"
                        } else {
                            "Retain"
                        }
                        .into(),
                    ),
                    when_scaled: Some(
                        if spec.storage.delete_claims_on_scale_down {
                            "Delete"
                        } else {
                            "Retain"
                        }
                        .into(),
                    ),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container(names, spec, &mounts)],
                    volumes: Some(mounts.iter().map(|m| m.volume.clone()).collect()),
                    affinity: Some(
                        pod.affinity
                            .clone()
                            .unwrap_or_else(|| default_affinity(names)),
                    ),
                    tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
                    node_selector: (!pod.node_selector.is_empty())
                        .then(|| pod.node_selector.clone()),
                    topology_spread_constraints: (!pod.topology_spread_constraints.is_empty())
                        .then(|| pod.topology_spread_constraints.clone()),
                    priority_class_name: pod.priority_class_name.clone(),
                    service_account_name: pod.service_account_name.clone(),
                    automount_service_account_token: Some(false),
                    image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                        .then(|| spec.image_pull_secrets.clone()),
                    termination_grace_period_seconds: Some(
                        pod.termination_grace_period_seconds.unwrap_or(30),
                    ),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security(spec)),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}
