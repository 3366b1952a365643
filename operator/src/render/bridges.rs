//! The bridges: `spec.bridges[]` as the broker's `[[bridges]]` tables in a
//! ConfigMap of their own (`bridges.toml`, named in the broker TOML by
//! `bridges_file`), and the credentials and certificates they name, copied
//! from the user's Secrets into one Secret of the operator's (a file per
//! bridge and purpose, `<bridge>.password`, `<bridge>.ca.crt`, ...).
//!
//! Both are mounted as whole directories, so kubelet updates them in place
//! and the brokers reload `bridges.toml` without a restart: adding,
//! changing or removing a bridge, or rotating its credentials, never
//! changes the pod template. Only the first bridge of a cluster does (the
//! two volumes appear); they stay mounted from then on, even with no bridge
//! left, so that removing the last one restarts nothing either.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use raftmq_shared::config::keys::{self, bridge as key};

use super::{meta, Names, Observed, RenderError, BRIDGES_FILE, BRIDGE_SECRETS_DIR};
use crate::crd::{BridgeSpec, BridgeTopic, MqttClusterSpec};

/// What the controller read for the bridges.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BridgeMaterial {
    /// The running pods mount the bridges' volumes already: they stay.
    pub mounted: bool,
    /// By bridge name: what its Secrets hold (every bridge whose Secrets
    /// could all be read).
    pub resolved: BTreeMap<String, BridgeSecrets>,
    /// By bridge name: bridges whose Secrets could not be read, as the
    /// brokers have them now; kept so until the Secrets are fixed (a
    /// Secret deleted by mistake does not take a running bridge down).
    pub held: BTreeMap<String, HeldBridge>,
}

/// A bridge's credentials, as read from the Secrets its spec names (each
/// `Some` exactly where the spec asks for it).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BridgeSecrets {
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca: Option<String>,
    /// The client certificate and its key.
    pub client_cert: Option<(String, String)>,
    pub identity: Option<String>,
    /// The PSK, in hex.
    pub psk: Option<String>,
}

/// A bridge as the brokers have it now.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HeldBridge {
    /// Its `[[bridges]]` table, as TOML.
    pub table: String,
    /// Its files in the bridge Secret: name -> content.
    pub files: BTreeMap<String, String>,
}

/// `bridges.toml` and the bridge Secret's files.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RenderedBridges {
    pub toml: String,
    pub files: BTreeMap<String, String>,
}

/// The keys of a bridge table that name a file of the bridge Secret.
pub const FILE_KEYS: [&str; 5] = [
    key::REMOTE_PASSWORD_FILE,
    key::CAFILE,
    key::CERTFILE,
    key::KEYFILE,
    key::PSK_FILE,
];

const PASSWORD: &str = "password";
const CA: &str = "ca.crt";
const CERT: &str = "tls.crt";
const KEY: &str = "tls.key";
const PSK: &str = "psk";

/// Whether the pods mount the bridges (and the broker TOML names
/// `bridges_file`).
pub fn in_use(spec: &MqttClusterSpec, observed: &Observed) -> bool {
    !spec.bridges.is_empty() || observed.bridges.mounted
}

/// Where `bridges.toml` is mounted.
pub fn bridges_path() -> String {
    format!("{}/{BRIDGES_FILE}", super::BRIDGES_DIR)
}

/// The name of a bridge's file in the bridge Secret.
pub fn file_name(bridge: &str, what: &str) -> String {
    format!("{bridge}.{what}")
}

/// mosquitto's `topic` line: `pattern direction qos local remote`, `""`
/// for an empty word.
pub fn topic_line(t: &BridgeTopic) -> String {
    let word = |s: &str| {
        if s.is_empty() {
            "\"\"".to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{} {} {} {} {}",
        word(&t.pattern),
        t.direction.as_str(),
        t.qos,
        word(&t.local_prefix),
        word(&t.remote_prefix)
    )
}

/// `bridges.toml` and the files: every bridge whose Secrets were read,
/// every held one as it was, in spec order. A bridge that is neither (new,
/// its Secrets not readable) is left out.
pub fn render(spec: &MqttClusterSpec, m: &BridgeMaterial) -> Result<RenderedBridges, RenderError> {
    let mut files = BTreeMap::new();
    let mut tables = Vec::new();
    for b in &spec.bridges {
        if let Some(secrets) = m.resolved.get(&b.name) {
            tables.push(toml::Value::Table(table(b, secrets, &mut files)));
        } else if let Some(held) = m.held.get(&b.name) {
            let t: toml::Table = toml::from_str(&held.table)
                .map_err(|e| RenderError::Config(format!("bridge {}: {e}", b.name)))?;
            tables.push(toml::Value::Table(t));
            files.extend(held.files.clone());
        }
    }
    let mut root = toml::Table::new();
    root.insert(keys::BRIDGES.into(), toml::Value::Array(tables));
    let body = toml::to_string(&root).map_err(|e| RenderError::Config(e.to_string()))?;
    Ok(RenderedBridges {
        toml: format!(
            "# Generated by raftmq-operator from spec.bridges; edit the MqttCluster instead.\n{body}"
        ),
        files,
    })
}

fn s(v: impl Into<String>) -> toml::Value {
    toml::Value::String(v.into())
}

/// One `[[bridges]]` table: what the spec sets (the broker's defaults for
/// the rest), the username and PSK identity inline, the rest as files.
fn table(
    b: &BridgeSpec,
    secrets: &BridgeSecrets,
    files: &mut BTreeMap<String, String>,
) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert(key::NAME.into(), s(&b.name));
    let addresses = b.addresses.iter().map(s).collect();
    t.insert(key::ADDRESSES.into(), toml::Value::Array(addresses));
    if b.round_robin {
        t.insert(key::ROUND_ROBIN.into(), toml::Value::Boolean(true));
    }
    let topics = b.topics.iter().map(|x| s(topic_line(x))).collect();
    t.insert(key::TOPIC.into(), toml::Value::Array(topics));
    if let Some(p) = b.protocol {
        t.insert(key::PROTOCOL.into(), s(p.as_str()));
    }
    let flags = [
        (key::CLEAN_START, b.clean_start),
        (key::TRY_PRIVATE, b.try_private),
        (key::NOTIFICATIONS, b.notifications),
    ];
    for (k, v) in flags {
        if let Some(v) = v {
            t.insert(k.into(), toml::Value::Boolean(v));
        }
    }
    if let Some(c) = &b.remote_client_id {
        t.insert(key::REMOTE_CLIENTID.into(), s(c));
    }
    if let Some(k) = b.keepalive_interval {
        t.insert(
            key::KEEPALIVE_INTERVAL.into(),
            toml::Value::Integer(k.into()),
        );
    }
    if let Some(r) = &b.restart_timeout {
        let v = match r.cap_seconds {
            None => toml::Value::Integer(r.base_seconds),
            Some(cap) => toml::Value::Array(vec![
                toml::Value::Integer(r.base_seconds),
                toml::Value::Integer(cap),
            ]),
        };
        t.insert(key::RESTART_TIMEOUT.into(), v);
    }
    if let Some(n) = &b.notification_topic {
        t.insert(key::NOTIFICATION_TOPIC.into(), s(n));
    }
    if let Some(m) = b.max_queued_messages {
        t.insert(key::MAX_QUEUED_MESSAGES.into(), toml::Value::Integer(m));
    }
    credentials(b, secrets, &mut t, files);
    t
}

/// The keys naming the bridge's credentials and certificates, each file
/// added to `files`.
fn credentials(
    b: &BridgeSpec,
    secrets: &BridgeSecrets,
    t: &mut toml::Table,
    files: &mut BTreeMap<String, String>,
) {
    let mut file = |t: &mut toml::Table, k: &str, what: &str, content: &str| {
        let name = file_name(&b.name, what);
        files.insert(name.clone(), content.to_string());
        t.insert(k.into(), s(format!("{BRIDGE_SECRETS_DIR}/{name}")));
    };
    if let Some(u) = &secrets.username {
        t.insert(key::REMOTE_USERNAME.into(), s(u));
    }
    if let Some(p) = &secrets.password {
        file(t, key::REMOTE_PASSWORD_FILE, PASSWORD, p);
    }
    if let Some(ca) = &secrets.ca {
        file(t, key::CAFILE, CA, ca);
    }
    if let Some((crt, k)) = &secrets.client_cert {
        file(t, key::CERTFILE, CERT, crt);
        file(t, key::KEYFILE, KEY, k);
    }
    if let Some(tls) = &b.tls {
        if let Some(n) = &tls.server_name {
            t.insert(key::SERVER_NAME.into(), s(n));
        }
        if tls.insecure {
            t.insert(key::INSECURE.into(), toml::Value::Boolean(true));
        }
    }
    if let Some(id) = &secrets.identity {
        t.insert(key::IDENTITY.into(), s(id));
    }
    if let Some(p) = &secrets.psk {
        file(t, key::PSK_FILE, PSK, p);
    }
}

pub fn config_map(names: &Names, owner: &OwnerReference, b: &RenderedBridges) -> ConfigMap {
    ConfigMap {
        metadata: meta(names, names.bridges_config_map(), owner, &BTreeMap::new()),
        data: Some(BTreeMap::from([(BRIDGES_FILE.to_string(), b.toml.clone())])),
        ..ConfigMap::default()
    }
}

pub fn secret(names: &Names, owner: &OwnerReference, b: &RenderedBridges) -> Secret {
    super::secrets::bridge_secret(names, owner, &b.files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BridgeDirection;

    #[test]
    fn topic_lines_are_mosquittos() {
        let t = |pattern: &str, local: &str, remote: &str| BridgeTopic {
            pattern: pattern.into(),
            direction: BridgeDirection::Both,
            qos: 1,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        };
        assert_eq!(topic_line(&t("a/#", "", "")), "a/# both 1 \"\" \"\"");
        assert_eq!(
            topic_line(&t("", "site/x", "central/x")),
            "\"\" both 1 site/x central/x"
        );
    }
}
