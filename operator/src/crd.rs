//! The `MqttCluster` custom resource (`raftmq.io/v1alpha1`, short name `mqc`).
//!
//! The schema is generated from these types (schemars + kube's structural
//! schema rewrite). What the API server can check on its own is expressed
//! as schema bounds and CEL rules (`x-kubernetes-validations`); what needs
//! more context (port clashes, ACL topic syntax, config overrides of keys
//! the operator owns) is checked by [`crate::validate`] and reported as a
//! `Degraded` condition with an Event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, PodSecurityContext, ResourceRequirements, SecurityContext,
    Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod bridge;

pub use bridge::{
    BridgeCredentials, BridgeDirection, BridgeProtocol, BridgePsk, BridgeSpec, BridgeTls,
    BridgeTopic, RestartTimeout,
};

/// The broker image the operator runs when the spec names none.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/raftmq/raftmq:", env!("CARGO_PKG_VERSION"));

/// A raftmq broker cluster: a StatefulSet of brokers forming one Raft group,
/// with its Services, configuration, users, ACL and certificates.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "raftmq.io",
    version = "v1alpha1",
    kind = "MqttCluster",
    plural = "mqttclusters",
    shortname = "mqc",
    category = "raftmq",
    namespaced,
    status = "MqttClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 52").message("metadata.name must be at most 52 characters (StatefulSet pod names and labels derive from it)"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (lower case letters, digits and '-', starting with a letter): it names the cluster's Services"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.tls) || self.tls.mode != 'Secret' || has(self.tls.secretName)").message("tls.secretName is required when tls.mode is Secret"),
    validation = Rule::new("!has(self.tls) || self.tls.mode != 'CertManager' || has(self.tls.issuerRef)").message("tls.issuerRef is required when tls.mode is CertManager"),
    validation = Rule::new("!has(self.listeners) || !has(self.listeners.psk) || !self.listeners.psk.enabled || has(self.psk)").message("the psk listener needs spec.psk (a Secret with the identity:hexkey file)")
)]
pub struct MqttClusterSpec {
    /// Number of broker pods. An odd number tolerates the most failures per
    /// pod (3 tolerates 1, 5 tolerates 2); even counts work but are warned.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 99))]
    pub replicas: i32,

    /// Broker image; defaults to the image matching the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Image pull policy (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']").message("imagePullPolicy must be Always, IfNotPresent or Never"))]
    pub image_pull_policy: Option<String>,

    /// Pull secrets for the broker image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// CPU and memory for each broker container. Defaults to requests of
    /// 100m CPU and 128Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The persistent volume each pod keeps its Raft log and snapshots on.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Which MQTT listeners run, on which ports, and how they are exposed.
    #[serde(default)]
    pub listeners: ListenersSpec,

    /// Certificates for the TLS / WSS listeners and for peer (gRPC) traffic.
    /// Absent with a TLS or WSS listener enabled means operator-issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// The TLS-PSK listener's identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<PskSpec>,

    /// Users (password file) and anonymous access.
    #[serde(default)]
    pub auth: AuthSpec,

    /// ACL rules, rendered into a mosquitto ACL file. With no rules and no
    /// users no ACL file is configured (everything is allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub acl: Vec<AclRule>,

    /// Broker configuration overrides, merged into the generated TOML
    /// (sections `mqtt`, `log`, `auth`, `http`, `cluster`, `sys_interval`).
    /// Keys the operator owns (listeners, data_dir, file paths, binds) are
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,

    /// Bridges to other brokers (mosquitto's `connection` blocks), with
    /// credentials and certificates from Secrets. The brokers reload them
    /// in place: a bridge whose settings change reconnects, nothing else
    /// restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(b, self.exists_one(c, c.name == b.name))").message("bridge names must be unique"))]
    pub bridges: Vec<BridgeSpec>,

    /// Prometheus scraping.
    #[serde(default)]
    pub metrics: MetricsSpec,

    /// A NetworkPolicy that admits the cluster port (7100) only from the
    /// cluster's own pods. On by default.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// Overrides for the broker pods.
    #[serde(default)]
    pub pod: PodOverrides,
}

fn default_replicas() -> i32 {
    3
}

fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each pod's volume (a Kubernetes quantity).
    #[serde(default = "default_storage_size")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$')").message("storage.size must be a quantity such as 1Gi"))]
    pub size: String,
    /// StorageClass; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Delete the volumes when the MqttCluster is deleted (default: keep
    /// them, so a re-created cluster finds its data).
    #[serde(default)]
    pub delete_claims_on_delete: bool,
    /// Delete a retiring pod's volume when the cluster scales down (after
    /// the pod has left the Raft group). Default: keep it; a later scale-up
    /// re-adds the pod as a fresh member either way.
    #[serde(default)]
    pub delete_claims_on_scale_down: bool,
}

fn default_storage_size() -> String {
    "1Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            delete_claims_on_delete: false,
            delete_claims_on_scale_down: false,
        }
    }
}

/// The five MQTT listener kinds. Only `tcp` is on by default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenersSpec {
    /// MQTT over TCP (default port 1883, enabled).
    #[serde(default = "ListenerSpec::enabled")]
    pub tcp: ListenerSpec,
    /// MQTT over TLS (default port 8883).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerSpec>,
    /// MQTT over TLS-PSK (default port 8884); needs `spec.psk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<ListenerSpec>,
    /// MQTT over WebSocket (default port 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<ListenerSpec>,
    /// MQTT over secure WebSocket (default port 8443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss: Option<ListenerSpec>,
    /// The client Service in front of the listeners.
    #[serde(default)]
    pub service: ServiceSpec,
}

impl Default for ListenersSpec {
    fn default() -> Self {
        Self {
            tcp: ListenerSpec::enabled(),
            tls: None,
            psk: None,
            ws: None,
            wss: None,
            service: ServiceSpec::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// Whether this listener runs (default true once the listener is listed).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Container and Service port; the kind's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// NodePort to use when the Service type is NodePort or LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
    /// TLS / WSS: ask for and verify client certificates against the CA.
    #[serde(default)]
    pub require_client_certificate: bool,
    /// TLS / WSS / PSK: the certificate CN or PSK identity becomes the
    /// username (for ACLs).
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// Connections on this listener; 0 = only the global limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_connections: Option<i64>,
    /// WS / WSS: the HTTP path that upgrades to MQTT (default /mqtt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
}

fn yes() -> bool {
    true
}

impl ListenerSpec {
    pub fn enabled() -> Self {
        Self {
            enabled: true,
            port: None,
            node_port: None,
            require_client_certificate: false,
            use_identity_as_username: false,
            max_connections: None,
            path: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations for the client Service (load balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra labels for the client Service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// LoadBalancer only: source ranges allowed to connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    /// Cluster or Local (keeps client source addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TlsMode {
    /// The operator keeps a CA and issues (and renews) server certificates.
    #[default]
    Operator,
    /// A Secret you provide (`tls.crt`, `tls.key`, optional `ca.crt`).
    Secret,
    /// cert-manager issues the certificate from `issuerRef`.
    CertManager,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Who provides the certificates: Operator (default), Secret or
    /// CertManager.
    #[serde(default)]
    pub mode: TlsMode,
    /// Secret mode: the Secret with `tls.crt`, `tls.key` (and `ca.crt` for
    /// client-certificate checks and peer TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// CertManager mode: the Issuer or ClusterIssuer to request from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Operator and CertManager modes: certificate lifetime in hours
    /// (default 2160 = 90 days). Renewed when a third is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 24, max = 87600))]
    pub duration_hours: Option<i64>,
    /// Extra DNS names for the server certificate (external host names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_dns_names: Vec<String>,
    /// Ignored: the cluster port (7100) is always mutual TLS, with the
    /// operator's own peer CA and a certificate per node (kept so that
    /// existing resources still validate).
    #[serde(default = "yes")]
    pub peer_tls: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// Issuer (default) or ClusterIssuer.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// Default cert-manager.io.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PskSpec {
    /// Secret holding a mosquitto PSK file (`identity:hexkey` lines).
    pub secret_name: String,
    /// Key in the Secret (default `psk`).
    #[serde(default = "default_psk_key")]
    pub key: String,
    /// Identity hint sent to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn default_psk_key() -> String {
    "psk".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Allow clients without a username. Default: allowed when there are no
    /// users, refused once there are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// Users; each password comes from a Secret and is stored hashed
    /// (`$7$`, PBKDF2-SHA512) in the broker's password file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub users: Vec<UserSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// The MQTT username.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self != '' && !self.contains(':') && !self.contains(' ')").message("a username is non-empty and has no ':' or spaces"))]
    pub username: String,
    /// Where the password is.
    pub password_secret_ref: SecretKeyRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name (same namespace as the MqttCluster).
    pub name: String,
    /// Key in the Secret (default `password`).
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_password_key() -> String {
    "password".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclAccess {
    Read,
    Write,
    Readwrite,
    Deny,
}

impl AclAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            AclAccess::Read => "read",
            AclAccess::Write => "write",
            AclAccess::Readwrite => "readwrite",
            AclAccess::Deny => "deny",
        }
    }
}

/// One ACL line. `user` absent and `pattern` false: a rule for anonymous
/// clients. `pattern` true: a rule for everyone where `%c` is the client id
/// and `%u` the username.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.user) && self.pattern)").message("an ACL rule is either for a user or a pattern, not both"))]
pub struct AclRule {
    /// The user the rule is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub user: Option<String>,
    /// A pattern rule (applies to every client, with %c / %u substituted).
    #[serde(default)]
    pub pattern: bool,
    /// read, write, readwrite or deny.
    pub access: AclAccess,
    /// Topic filter (`+` and `#` wildcards).
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self != '' && (!self.contains('#') || self.endsWith('#'))").message("an ACL topic is non-empty and '#' may only be its last character"))]
    pub topic: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    #[serde(default)]
    pub service_monitor: ServiceMonitorSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create a ServiceMonitor (needs the Prometheus Operator's CRD).
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Labels your Prometheus selects ServiceMonitors by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Replaces the default (preferred) pod anti-affinity across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Seconds a pod gets to hand over its clients on shutdown (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
    /// Replaces the pods' securityContext (default: runAsNonRoot,
    /// runAsUser/runAsGroup/fsGroup 65532, RuntimeDefault seccomp). Leave
    /// runAsUser, runAsGroup and fsGroup out where the platform assigns
    /// them (OpenShift restricted-v2); the broker container then names no
    /// UID or GID of its own either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Replaces the broker container's securityContext (default: no
    /// privilege escalation, read-only root filesystem, every capability
    /// dropped, and UID/GID 65532 unless `securityContext` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
}

/// What the operator last saw.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods the StatefulSet has.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that pass `/readyz`.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The Raft leader's pod (filled in by membership management).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Raft voters (filled in by membership management).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Raft learners: pods being caught up before they become voters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<String>,
    /// What the cluster is doing: `Running`, or the step of a scale or
    /// upgrade in progress (`AddingLearner`, `Draining`, `RollingPod`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The membership or rollout step in progress, since when, and how
    /// often it failed (retried with exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// Label selector of the broker pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where clients connect, by listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// The server certificate's expiry (RFC 3339), operator-issued mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<String>,
}

/// A scale or upgrade step in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The step (the Progressing reason).
    pub reason: String,
    pub message: String,
    /// When this step started (RFC 3339).
    pub since: String,
    /// Failed attempts (or stuck rounds) so far.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Listener kind (tcp, tls, psk, ws, wss, metrics).
    pub name: String,
    /// e.g. `mqtt://demo.default.svc:1883`.
    pub url: String,
}

/// The listener kinds, in a fixed order: the broker's own (the names it
/// reads in its config are shared with it).
pub use raftmq_shared::ListenerKind;

/// What the cluster's Kubernetes objects say about a listener kind.
pub trait ListenerKindExt {
    fn default_port(self) -> i32;
    /// Container/Service port name (at most 15 characters).
    fn port_name(self) -> &'static str;
    fn url_scheme(self) -> &'static str;
}

impl ListenerKindExt for ListenerKind {
    fn default_port(self) -> i32 {
        match self {
            ListenerKind::Tcp => 1883,
            ListenerKind::Tls => 8883,
            ListenerKind::Psk => 8884,
            ListenerKind::Ws => 8080,
            ListenerKind::Wss => 8443,
        }
    }

    fn port_name(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "mqtt",
            ListenerKind::Tls => "mqtts",
            ListenerKind::Psk => "mqtt-psk",
            ListenerKind::Ws => "mqtt-ws",
            ListenerKind::Wss => "mqtt-wss",
        }
    }

    fn url_scheme(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "mqtt",
            ListenerKind::Tls | ListenerKind::Psk => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

/// An enabled listener with its effective port.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveListener<'a> {
    pub kind: ListenerKind,
    pub port: i32,
    pub spec: &'a ListenerSpec,
}

impl ListenersSpec {
    pub fn get(&self, kind: ListenerKind) -> Option<&ListenerSpec> {
        match kind {
            ListenerKind::Tcp => Some(&self.tcp),
            ListenerKind::Tls => self.tls.as_ref(),
            ListenerKind::Psk => self.psk.as_ref(),
            ListenerKind::Ws => self.ws.as_ref(),
            ListenerKind::Wss => self.wss.as_ref(),
        }
    }

    /// The enabled listeners in kind order.
    pub fn active(&self) -> Vec<ActiveListener<'_>> {
        ListenerKind::ALL
            .iter()
            .filter_map(|&kind| {
                let spec = self.get(kind)?;
                spec.enabled.then(|| ActiveListener {
                    kind,
                    port: spec.port.unwrap_or(kind.default_port()),
                    spec,
                })
            })
            .collect()
    }
}

impl MqttClusterSpec {
    /// The TLS settings in force: the given ones, or operator-issued
    /// defaults when a TLS/WSS listener is on without any.
    pub fn effective_tls(&self) -> Option<TlsSpec> {
        if let Some(t) = &self.tls {
            return Some(t.clone());
        }
        let wants = self
            .listeners
            .active()
            .iter()
            .any(|l| l.kind.needs_certificate());
        wants.then(|| TlsSpec {
            peer_tls: true,
            ..TlsSpec::default()
        })
    }

    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }
}
