//! Pure rendering: an [`MqttCluster`] plus what the controller observed
//! ([`Observed`]: hashed password file, certificate material, which optional
//! CRDs exist) becomes the complete set of objects the cluster needs. No I/O,
//! no clock, no randomness here; that is what makes the golden tests and the
//! property tests possible.

pub mod bridges;
pub mod config;
pub mod monitoring;
pub mod policy;
pub mod secrets;
pub mod services;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::crd::{MqttCluster, TlsMode, TlsSpec};

/// Field manager name for server-side apply; also the `managed-by` label.
pub const MANAGER: &str = "raftmq-operator";
/// Annotation on an MqttCluster (and so on its pod template): a new value
/// restarts every pod, one at a time under the health gate.
pub const RESTART_ANNOTATION: &str = "raftmq.io/restart";
/// Annotation carrying the hash of the broker config; a change rolls pods.
pub const CONFIG_CHECKSUM: &str = "raftmq.io/config-checksum";
pub const CLUSTER_PORT: i32 = 7100;
pub const HTTP_PORT: i32 = 9100;
pub const DATA_DIR: &str = "/var/lib/raftmq";
pub const CONFIG_DIR: &str = "/etc/raftmq/config";
pub const ACL_DIR: &str = "/etc/raftmq/acl";
/// Label on the broker config ConfigMaps (value: the cluster), to find the
/// old ones to prune.
pub const CONFIG_OF: &str = "raftmq.io/config-of";
pub const CONFIG_FILE: &str = "broker.toml";
pub const ACL_FILE: &str = "acl";
pub const USERS_DIR: &str = "/etc/raftmq/users";
pub const PASSWD_FILE: &str = "passwd";
pub const TLS_DIR: &str = "/etc/raftmq/tls";
/// The cluster plane's certificates (every node's; the broker picks its
/// own by node id).
pub const PEER_DIR: &str = "/etc/raftmq/peer";
pub const PSK_DIR: &str = "/etc/raftmq/psk";
/// The bridges' ConfigMap (`bridges.toml`), reloaded by the brokers in
/// place.
pub const BRIDGES_DIR: &str = "/etc/raftmq/bridges";
pub const BRIDGES_FILE: &str = "bridges.toml";
/// The bridges' credentials and certificates, copied by the operator from
/// the Secrets the bridges name.
pub const BRIDGE_SECRETS_DIR: &str = "/etc/raftmq/bridge-secrets";
pub const CONTAINER: &str = "broker";

/// Object names derived from the cluster name. Every renderer and the
/// controller go through these, so they cannot disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn of(c: &MqttCluster) -> Names {
        Names {
            cluster: c.name_any(),
            namespace: c.namespace().unwrap_or_else(|| "default".into()),
        }
    }
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }
    pub fn headless_service(&self) -> String {
        format!("{}-headless", self.cluster)
    }
    /// The ConfigMap older versions kept the broker config and ACL in (it
    /// is pruned after the first roll).
    pub fn legacy_config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }
    /// The broker config's ConfigMap: named by its content, so a new
    /// config is a new ConfigMap and a new pod template. A pod that restarts
    /// mid-roll for any other reason keeps the config its template names.
    pub fn config_map(&self, checksum: &str) -> String {
        let short: String = checksum.chars().take(10).collect();
        format!("{}-config-{short}", self.cluster)
    }
    /// The ACL's ConfigMap (reloaded by the brokers in place).
    pub fn acl_config_map(&self) -> String {
        format!("{}-acl", self.cluster)
    }
    /// The bridges' `bridges.toml` (reloaded by the brokers in place).
    pub fn bridges_config_map(&self) -> String {
        format!("{}-bridges", self.cluster)
    }
    /// The bridges' credentials and certificates, one file each.
    pub fn bridge_secret(&self) -> String {
        format!("{}-bridge-secrets", self.cluster)
    }
    pub fn users_secret(&self) -> String {
        format!("{}-users", self.cluster)
    }
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }
    /// Mounted by every pod: the peer CA certificate and each node's
    /// certificate and key.
    pub fn peer_secret(&self) -> String {
        format!("{}-peer", self.cluster)
    }
    /// Never mounted: the peer CA's key and the operator's admin
    /// certificate.
    pub fn peer_ca_secret(&self) -> String {
        format!("{}-peer-ca", self.cluster)
    }
    /// The operator- or cert-manager-managed server certificate Secret.
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.cluster)
    }
    /// The Secret the brokers' certificate is in: the operator's or
    /// cert-manager's, or the user's (`None` when it names none).
    pub fn certificate_secret(&self, tls: &TlsSpec) -> Option<String> {
        match tls.mode {
            TlsMode::Operator | TlsMode::CertManager => Some(self.tls_secret()),
            TlsMode::Secret => tls.secret_name.clone(),
        }
    }
    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }
    pub fn network_policy(&self) -> String {
        self.cluster.clone()
    }
    pub fn service_monitor(&self) -> String {
        self.cluster.clone()
    }
    pub fn certificate(&self) -> String {
        self.cluster.clone()
    }
    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{}", self.cluster, ordinal)
    }
    /// `<pod>.<headless>.<ns>.svc`
    pub fn pod_host(&self, ordinal: i32) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod(ordinal),
            self.headless_service(),
            self.namespace
        )
    }
    pub fn client_host(&self) -> String {
        format!("{}.{}.svc", self.client_service(), self.namespace)
    }
}

/// Labels that select a cluster's pods. Never change these for an existing
/// cluster: a StatefulSet's selector is immutable.
pub fn selector_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "raftmq".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            names.cluster.clone(),
        ),
    ])
}

/// Labels on every object the operator makes for a cluster.
pub fn common_labels(names: &Names) -> BTreeMap<String, String> {
    let mut l = selector_labels(names);
    l.insert("app.kubernetes.io/component".into(), "broker".into());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l.insert(
        "app.kubernetes.io/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    l
}

/// `k=v,k=v` form of the selector (status.selector, for `kubectl scale`).
pub fn selector_string(names: &Names) -> String {
    selector_labels(names)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Certificate material for operator-issued TLS.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TlsMaterial {
    pub ca_crt: String,
    pub ca_key: String,
    pub tls_crt: String,
    pub tls_key: String,
}

/// What the controller found out before rendering.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Observed {
    /// The password file (`user:$7$...` lines) built from the users'
    /// Secrets, or `None` when the cluster has no users.
    pub password_file: Option<String>,
    /// Operator mode: the CA and server certificate to store.
    pub tls: Option<TlsMaterial>,
    /// Whether the certificate Secret in use has a `ca.crt` (always true for
    /// operator mode; looked up for Secret mode; assumed for cert-manager).
    pub tls_has_ca: bool,
    /// The Prometheus Operator's ServiceMonitor CRD is installed.
    pub service_monitor_crd: bool,
    /// cert-manager's Certificate CRD is installed.
    pub cert_manager_crd: bool,
    /// The cluster plane's certificates (issued for every cluster).
    pub peer: Option<crate::peer_certs::PeerMaterial>,
    /// The namespace the operator runs in (the NetworkPolicy admits it to
    /// the cluster port from there only); `None`: the cluster's own.
    pub operator_namespace: Option<String>,
    /// What the bridges' Secrets hold.
    pub bridges: bridges::BridgeMaterial,
}

/// Everything a cluster consists of.
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    /// The broker config, named by its checksum.
    pub config_map: ConfigMap,
    /// The ACL file (when there are rules).
    pub acl_config_map: Option<ConfigMap>,
    /// `bridges.toml` (when the cluster has bridges, or its pods mount
    /// them already); its Secret is among `secrets`.
    pub bridges_config_map: Option<ConfigMap>,
    pub secrets: Vec<Secret>,
    pub headless_service: Service,
    pub client_service: Service,
    pub statefulset: StatefulSet,
    pub pdb: PodDisruptionBudget,
    pub network_policy: Option<NetworkPolicy>,
    pub service_monitor: Option<DynamicObject>,
    pub certificate: Option<DynamicObject>,
    /// The config checksum stamped on the pod template.
    pub config_checksum: String,
}

impl Rendered {
    /// All objects as JSON values, in apply order (config and Secrets before
    /// the pods that mount them).
    pub fn objects(&self) -> Vec<serde_json::Value> {
        fn v<T: Serialize>(t: &T) -> serde_json::Value {
            serde_json::to_value(t).unwrap_or(serde_json::Value::Null)
        }
        let mut out = vec![v(&self.config_map)];
        if let Some(a) = &self.acl_config_map {
            out.push(v(a));
        }
        out.extend(self.secrets.iter().map(v));
        // After the Secrets: a broker reading a new bridge finds its files.
        if let Some(b) = &self.bridges_config_map {
            out.push(v(b));
        }
        if let Some(c) = &self.certificate {
            out.push(v(c));
        }
        out.push(v(&self.headless_service));
        out.push(v(&self.client_service));
        out.push(v(&self.statefulset));
        out.push(v(&self.pdb));
        if let Some(n) = &self.network_policy {
            out.push(v(n));
        }
        if let Some(s) = &self.service_monitor {
            out.push(v(s));
        }
        out
    }

    /// The objects as one multi-document YAML stream (golden files).
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        let mut out = String::new();
        for o in self.objects() {
            out.push_str("---\n");
            out.push_str(&serde_norway::to_string(&o)?);
        }
        Ok(out)
    }
}

/// Why a cluster cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("the MqttCluster has no uid yet (not read from the API server)")]
    NoUid,
    #[error("broker config: {0}")]
    Config(String),
}

pub(crate) fn meta(
    names: &Names,
    name: String,
    owner: &OwnerReference,
    extra_labels: &BTreeMap<String, String>,
) -> ObjectMeta {
    let mut labels = common_labels(names);
    for (k, v) in extra_labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Renders every object of `cluster`.
pub fn render(cluster: &MqttCluster, observed: &Observed) -> Result<Rendered, RenderError> {
    let names = Names::of(cluster);
    let owner = cluster
        .controller_owner_ref(&())
        .ok_or(RenderError::NoUid)?;
    let spec = &cluster.spec;
    let tls = spec.effective_tls();

    let broker_toml = config::broker_toml(spec, observed)?;
    let acl = config::acl_file(spec);
    let config_checksum = config::checksum(&broker_toml);
    let config_map = config::config_map(&names, &owner, &broker_toml, &config_checksum);
    let acl_config_map =
        config::has_acl(spec).then(|| config::acl_config_map(&names, &owner, &acl));

    let mut secrets = Vec::new();
    if let Some(pw) = &observed.password_file {
        secrets.push(secrets::users_secret(&names, &owner, pw));
    }
    let bridges_config_map = if bridges::in_use(spec, observed) {
        let b = bridges::render(spec, &observed.bridges)?;
        secrets.push(bridges::secret(&names, &owner, &b));
        Some(bridges::config_map(&names, &owner, &b))
    } else {
        None
    };
    if let Some(peer) = &observed.peer {
        secrets.push(secrets::peer_secret(&names, &owner, peer));
        secrets.push(secrets::peer_ca_secret(&names, &owner, peer));
    }
    if let (Some(t), Some(material)) = (&tls, &observed.tls) {
        if t.mode == TlsMode::Operator {
            secrets.push(secrets::ca_secret(&names, &owner, material));
            secrets.push(secrets::tls_secret(&names, &owner, material));
        }
    }
    let certificate = match &tls {
        Some(t) if t.mode == TlsMode::CertManager && observed.cert_manager_crd => {
            Some(monitoring::certificate(&names, &owner, t))
        }
        _ => None,
    };

    let mut statefulset =
        statefulset::statefulset(&names, &owner, spec, observed, &config_checksum);
    // `raftmq.io/restart: <anything new>` on the cluster: a new template,
    // rolled pod by pod under the same health gate as any other change.
    if let Some(v) = cluster.annotations().get(RESTART_ANNOTATION) {
        if let Some(a) = statefulset
            .spec
            .template
            .metadata
            .as_mut()
            .map(|m| m.annotations.get_or_insert_with(BTreeMap::new))
        {
            a.insert(RESTART_ANNOTATION.into(), v.clone());
        }
    }
    let headless_service = services::headless(&names, &owner);
    let client_service = services::client(&names, &owner, spec);
    let pdb = policy::pdb(&names, &owner);
    let network_policy = spec.network_policy.enabled.then(|| {
        let operator_ns = observed
            .operator_namespace
            .as_deref()
            .unwrap_or(&names.namespace);
        policy::network_policy(&names, &owner, spec, operator_ns)
    });
    let service_monitor = (spec.metrics.service_monitor.enabled && observed.service_monitor_crd)
        .then(|| monitoring::service_monitor(&names, &owner, &spec.metrics.service_monitor));

    Ok(Rendered {
        config_map,
        acl_config_map,
        bridges_config_map,
        secrets,
        headless_service,
        client_service,
        statefulset,
        pdb,
        network_policy,
        service_monitor,
        certificate,
        config_checksum,
    })
}
