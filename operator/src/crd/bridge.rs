//! `spec.bridges[]`: the broker's `[[bridges]]` tables (mosquitto's
//! `connection` blocks), typed. Credentials and certificates are only ever
//! named by Secret reference: the operator copies what they hold into a
//! Secret of its own that the brokers mount, never into the spec or a
//! ConfigMap (a remote username and a PSK identity are not secret and go
//! into the bridges' ConfigMap).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One bridge to a remote broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.tls) && has(self.psk))").message("a bridge uses tls (certificates) or psk (TLS-PSK), not both"))]
pub struct BridgeSpec {
    /// The bridge's name (mosquitto's `connection NAME`): its session on
    /// this broker is `$bridge/<name>`, its state topic
    /// `$SYS/broker/connection/<name>/state`.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]*$')").message("a bridge name is letters, digits, '.', '_' and '-', starting with a letter or digit"))]
    pub name: String,

    /// The remote broker's `host:port` addresses (port 1883 when left
    /// out), tried in order.
    #[schemars(
        length(min = 1, max = 16),
        inner(length(min = 1, max = 261), regex(pattern = r"^[^\s]+$"))
    )]
    pub addresses: Vec<String>,

    /// Rotate through the addresses instead of always starting with the
    /// first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub round_robin: bool,

    /// What is forwarded which way (mosquitto's `topic` lines).
    #[schemars(length(min = 1, max = 100))]
    pub topics: Vec<BridgeTopic>,

    /// MQTT version spoken to the remote: "3.1.1" (the broker's default)
    /// or "5.0".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<BridgeProtocol>,

    /// Start a fresh session on the remote at each connection (default
    /// false: the remote keeps the bridge's subscriptions and queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_start: Option<bool>,

    /// The client id on the remote (default `<cluster name>.<bridge
    /// name>`: every pod connects as the same client, so the remote's
    /// session carries over when another pod takes the bridge over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub remote_client_id: Option<String>,

    /// Keep-alive towards the remote, in seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub keepalive_interval: Option<i32>,

    /// How long to wait before reconnecting (default 5 s doubling to 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_timeout: Option<RestartTimeout>,

    /// Loop prevention (default true): MQTT 3.1.1's bridge bit, MQTT 5's
    /// no-local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub try_private: Option<bool>,

    /// Publish retained `1` / `0` on `$SYS/broker/connection/<name>/state`
    /// (or `notificationTopic`) as the bridge connects and drops (default
    /// true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<bool>,

    /// Where the notifications go instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains('+') && !self.contains('#') && !self.contains(' ')").message("notificationTopic is a topic name: no wildcards or spaces"))]
    pub notification_topic: Option<String>,

    /// Messages held for the remote while it is away; beyond this they
    /// are dropped and counted (default: the broker's
    /// `mqtt.max_queued_messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_queued_messages: Option<i64>,

    /// The username and password the bridge logs in to the remote with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_credentials: Option<BridgeCredentials>,

    /// TLS to the remote, verified against a CA from a Secret; optionally
    /// with a client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BridgeTls>,

    /// TLS-PSK to the remote (the way many gateways connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<BridgePsk>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// mosquitto's `topic pattern [[[out|in|both] qos] local-prefix
/// remote-prefix]`: `localPrefix + pattern` here is `remotePrefix +
/// pattern` on the remote.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.pattern) && self.pattern != '') || (has(self.localPrefix) && self.localPrefix != '') || (has(self.remotePrefix) && self.remotePrefix != '')").message("a bridge topic with an empty pattern needs a localPrefix or remotePrefix"))]
pub struct BridgeTopic {
    /// A topic filter (`+`, `#`); empty: the prefixes are the whole topic.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains(' ') && (!self.contains('#') || self.endsWith('#'))").message("a bridge topic pattern has no spaces and '#' may only be its last character"))]
    pub pattern: String,
    /// out (default: local to remote), in, or both.
    #[serde(default)]
    pub direction: BridgeDirection,
    /// QoS of the subscriptions on each side (0 to 2, default 0).
    #[serde(default)]
    #[schemars(range(min = 0, max = 2))]
    pub qos: i32,
    /// Prefix of the topic here.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains('+') && !self.contains('#') && !self.contains(' ')").message("a bridge topic prefix is a topic name: no wildcards or spaces"))]
    pub local_prefix: String,
    /// Prefix of the topic on the remote.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains('+') && !self.contains('#') && !self.contains(' ')").message("a bridge topic prefix is a topic name: no wildcards or spaces"))]
    pub remote_prefix: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BridgeDirection {
    #[default]
    Out,
    In,
    Both,
}

impl BridgeDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeDirection::Out => "out",
            BridgeDirection::In => "in",
            BridgeDirection::Both => "both",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BridgeProtocol {
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5.0")]
    V5,
}

impl BridgeProtocol {
    /// The broker's `protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeProtocol::V311 => "3.1.1",
            BridgeProtocol::V5 => "5.0",
        }
    }
}

/// mosquitto's `restart_timeout base cap`: the wait doubles from
/// `baseSeconds` up to `capSeconds` (with jitter); without `capSeconds`
/// it is always `baseSeconds`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.capSeconds) || self.capSeconds >= self.baseSeconds").message("restartTimeout.capSeconds must be at least baseSeconds"))]
pub struct RestartTimeout {
    #[schemars(range(min = 1, max = 86400))]
    pub base_seconds: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub cap_seconds: Option<i64>,
}

/// The remote username and password, from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeCredentials {
    /// Secret name (same namespace as the MqttCluster).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the username in the Secret (default `username`).
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key of the password in the Secret (default `password`).
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

/// Certificates for TLS to the remote, from Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeTls {
    /// Secret holding the CA certificate(s) the remote's certificate is
    /// verified against.
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret_name: String,
    /// Key of the CA in that Secret (default `ca.crt`).
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_key: String,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`): the client
    /// certificate the bridge presents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_cert_secret_name: Option<String>,
    /// The name the remote's certificate must carry (default: the
    /// address's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
    /// mosquitto's `bridge_insecure`: the chain is verified, the host
    /// name is not. Only for testing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure: bool,
}

/// The TLS-PSK identity and key (hex), from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgePsk {
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the identity in the Secret (default `identity`).
    #[serde(default = "default_identity_key")]
    #[schemars(length(min = 1, max = 253))]
    pub identity_key: String,
    /// Key of the pre-shared key, in hex, in the Secret (default `psk`).
    #[serde(default = "default_psk_key")]
    #[schemars(length(min = 1, max = 253))]
    pub psk_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}
fn default_ca_key() -> String {
    "ca.crt".into()
}
fn default_identity_key() -> String {
    "identity".into()
}
fn default_psk_key() -> String {
    "psk".into()
}

impl BridgeSpec {
    /// Every Secret this bridge names.
    pub fn secret_names(&self) -> Vec<&str> {
        let mut v = Vec::new();
        if let Some(c) = &self.remote_credentials {
            v.push(c.secret_name.as_str());
        }
        if let Some(t) = &self.tls {
            v.push(t.ca_secret_name.as_str());
            if let Some(c) = &t.client_cert_secret_name {
                v.push(c.as_str());
            }
        }
        if let Some(p) = &self.psk {
            v.push(p.secret_name.as_str());
        }
        v
    }
}
