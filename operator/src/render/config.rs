//! The broker's TOML configuration, in a ConfigMap named by its checksum
//! (a config change is a new ConfigMap and a new pod template, rolled
//! under the health gate; pods that restart mid-roll keep the config their
//! template names), and the mosquitto-format ACL file in a ConfigMap of its
//! own that the brokers reload in place.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{
    meta, Names, Observed, RenderError, ACL_DIR, ACL_FILE, CLUSTER_PORT, CONFIG_DIR, CONFIG_FILE,
    CONFIG_OF, DATA_DIR, HTTP_PORT, PASSWD_FILE, PEER_DIR, PSK_DIR, TLS_DIR, USERS_DIR,
};
use raftmq_shared::config::keys::{self, auth as auth_key, cluster as cluster_key, listener};
use raftmq_shared::config::DEFAULT_WS_PATH;

use crate::crd::{AclRule, ActiveListener, ListenerKind, MqttClusterSpec};

/// Top-level keys a user may override (`spec.config`).
pub const OVERRIDABLE: &[&str] = &[
    keys::SYS_INTERVAL,
    keys::LOG,
    keys::MQTT,
    keys::AUTH,
    keys::HTTP,
    keys::CLUSTER,
];

/// Top-level keys the operator owns.
const RESERVED_TOP: &[&str] = &[
    keys::DATA_DIR,
    keys::LISTENERS,
    keys::BRIDGES,
    keys::BRIDGES_FILE,
];

/// Keys within a section the operator owns.
const RESERVED: &[(&str, &str)] = &[
    (keys::AUTH, auth_key::PASSWORD_FILE),
    (keys::AUTH, auth_key::ACL_FILE),
    (keys::HTTP, keys::http::BIND),
    (keys::CLUSTER, cluster_key::BIND),
    (keys::CLUSTER, cluster_key::ADVERTISE),
    (keys::CLUSTER, cluster_key::NODE_ID),
    (keys::CLUSTER, cluster_key::CERTFILE),
    (keys::CLUSTER, cluster_key::KEYFILE),
    (keys::CLUSTER, cluster_key::CAFILE),
];

/// Whether the operator owns top-level key `section` (`key: None`) or
/// `section.key`.
pub fn is_reserved(section: &str, key: Option<&str>) -> bool {
    match key {
        None => RESERVED_TOP.contains(&section),
        Some(key) => RESERVED.contains(&(section, key)),
    }
}

pub fn config_path() -> String {
    format!("{CONFIG_DIR}/{CONFIG_FILE}")
}

/// Whether the ACL file is configured at all: with no rules and no users the
/// broker runs without one (everything allowed).
pub fn has_acl(spec: &MqttClusterSpec) -> bool {
    !spec.acl.is_empty()
}

fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => toml::Value::String(s.clone()),
        serde_json::Value::Array(a) => {
            toml::Value::Array(a.iter().filter_map(json_to_toml).collect())
        }
        serde_json::Value::Object(o) => toml::Value::Table(
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?)))
                .collect(),
        ),
    })
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn table(entries: Vec<(&str, toml::Value)>) -> toml::Table {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn s(v: impl Into<String>) -> toml::Value {
    toml::Value::String(v.into())
}

/// The broker's TOML.
pub fn broker_toml(spec: &MqttClusterSpec, observed: &Observed) -> Result<String, RenderError> {
    let mut root = toml::Table::new();
    root.insert(keys::DATA_DIR.into(), s(DATA_DIR));
    root.insert(
        keys::LOG.into(),
        toml::Value::Table(table(vec![
            (keys::log::LEVEL, s("info")),
            (keys::log::FORMAT, s("json")),
        ])),
    );

    root.insert(
        keys::AUTH.into(),
        toml::Value::Table(auth_table(spec, observed)),
    );
    let listeners = spec
        .listeners
        .active()
        .iter()
        .map(|l| toml::Value::Table(listener_table(spec, l, observed)))
        .collect();
    root.insert(keys::LISTENERS.into(), toml::Value::Array(listeners));
    root.insert(
        keys::HTTP.into(),
        toml::Value::Table(table(vec![(
            keys::http::BIND,
            s(format!("0.0.0.0:{HTTP_PORT}")),
        )])),
    );
    root.insert(keys::CLUSTER.into(), toml::Value::Table(cluster_table()));
    // The bridges live in their own ConfigMap, reloaded in place: a bridge
    // added or changed does not change this file (nor roll the pods).
    if super::bridges::in_use(spec, observed) {
        root.insert(keys::BRIDGES_FILE.into(), s(super::bridges::bridges_path()));
    }

    if let Some(over) = &spec.config {
        let over = json_to_toml(&serde_json::Value::Object(over.clone()));
        if let Some(toml::Value::Table(over)) = over {
            merge(&mut root, over);
        }
    }
    let body = toml::to_string(&root).map_err(|e| RenderError::Config(e.to_string()))?;
    Ok(format!(
        "# Generated by raftmq-operator from the MqttCluster; edit the MqttCluster instead.\n{body}"
    ))
}

/// `[auth]`: the password file and ACL the operator mounts.
fn auth_table(spec: &MqttClusterSpec, observed: &Observed) -> toml::Table {
    let mut auth = toml::Table::new();
    if observed.password_file.is_some() {
        auth.insert(
            auth_key::PASSWORD_FILE.into(),
            s(format!("{USERS_DIR}/{PASSWD_FILE}")),
        );
    }
    if has_acl(spec) {
        auth.insert(
            auth_key::ACL_FILE.into(),
            s(format!("{ACL_DIR}/{ACL_FILE}")),
        );
    }
    if let Some(a) = spec.auth.allow_anonymous {
        auth.insert(auth_key::ALLOW_ANONYMOUS.into(), toml::Value::Boolean(a));
    }
    auth
}

const CERT: &str = "tls.crt";
const KEY: &str = "tls.key";
const CA: &str = "ca.crt";

/// One `[[listeners]]` entry, with the certificate or PSK files it needs.
fn listener_table(spec: &MqttClusterSpec, l: &ActiveListener, observed: &Observed) -> toml::Table {
    let (cert, key, ca) = tls_files();
    let mut t = table(vec![
        (listener::NAME, s(l.kind.as_str())),
        (listener::KIND, s(l.kind.as_str())),
        (listener::BIND, s(format!("0.0.0.0:{}", l.port))),
    ]);
    if let Some(m) = l.spec.max_connections {
        t.insert(listener::MAX_CONNECTIONS.into(), toml::Value::Integer(m));
    }
    match l.kind {
        ListenerKind::Tls | ListenerKind::Wss => {
            t.insert(listener::CERTFILE.into(), s(&cert));
            t.insert(listener::KEYFILE.into(), s(&key));
            if observed.tls_has_ca {
                t.insert(listener::CAFILE.into(), s(&ca));
            }
            if l.spec.require_client_certificate {
                t.insert(
                    listener::REQUIRE_CERTIFICATE.into(),
                    toml::Value::Boolean(true),
                );
            }
            if l.spec.use_identity_as_username {
                t.insert(
                    listener::USE_IDENTITY_AS_USERNAME.into(),
                    toml::Value::Boolean(true),
                );
            }
        }
        ListenerKind::Psk => {
            if let Some(psk) = &spec.psk {
                t.insert(
                    listener::PSK_FILE.into(),
                    s(format!("{PSK_DIR}/{}", psk.key)),
                );
                if let Some(h) = &psk.hint {
                    t.insert(listener::PSK_HINT.into(), s(h));
                }
            }
            if l.spec.use_identity_as_username {
                t.insert(
                    listener::USE_IDENTITY_AS_USERNAME.into(),
                    toml::Value::Boolean(true),
                );
            }
        }
        ListenerKind::Tcp | ListenerKind::Ws => {}
    }
    if l.kind.is_websocket() {
        t.insert(
            listener::PATH.into(),
            s(l.spec
                .path
                .clone()
                .unwrap_or_else(|| DEFAULT_WS_PATH.into())),
        );
    }
    t
}

/// `[cluster]`: mutual TLS for every cluster, whatever its listeners: each
/// broker presents its own node certificate (the operator issues one per
/// node id, all in one mounted Secret; the broker picks its own by
/// `{node_id}`).
fn cluster_table() -> toml::Table {
    let mut cluster = table(vec![(
        cluster_key::BIND,
        s(format!("0.0.0.0:{CLUSTER_PORT}")),
    )]);
    cluster.insert(
        cluster_key::CERTFILE.into(),
        s(format!("{PEER_DIR}/node-{{node_id}}.crt")),
    );
    cluster.insert(
        cluster_key::KEYFILE.into(),
        s(format!("{PEER_DIR}/node-{{node_id}}.key")),
    );
    cluster.insert(cluster_key::CAFILE.into(), s(format!("{PEER_DIR}/ca.crt")));
    cluster
}

/// Where the certificate, key and CA are mounted.
fn tls_files() -> (String, String, String) {
    (
        format!("{TLS_DIR}/{CERT}"),
        format!("{TLS_DIR}/{KEY}"),
        format!("{TLS_DIR}/{CA}"),
    )
}

fn acl_line(r: &AclRule) -> String {
    let keyword = if r.pattern { "pattern" } else { "topic" };
    format!("{keyword} {} {}", r.access.as_str(), r.topic)
}

/// The ACL file in mosquitto's format: pattern rules, then anonymous rules,
/// then one `user` block per user (in first-mention order).
pub fn acl_file(spec: &MqttClusterSpec) -> String {
    let mut out = String::from("# Generated by raftmq-operator from spec.acl.\n");
    for r in spec.acl.iter().filter(|r| r.pattern) {
        out.push_str(&acl_line(r));
        out.push('\n');
    }
    for r in spec.acl.iter().filter(|r| !r.pattern && r.user.is_none()) {
        out.push_str(&acl_line(r));
        out.push('\n');
    }
    let mut users: Vec<&str> = Vec::new();
    for r in &spec.acl {
        if let Some(u) = r.user.as_deref() {
            if !users.contains(&u) {
                users.push(u);
            }
        }
    }
    for u in users {
        out.push_str(&format!("\nuser {u}\n"));
        for r in spec.acl.iter().filter(|r| r.user.as_deref() == Some(u)) {
            out.push_str(&acl_line(r));
            out.push('\n');
        }
    }
    out
}

/// Hex SHA-256 of the broker TOML.
pub fn checksum(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn config_map(names: &Names, owner: &OwnerReference, toml: &str, checksum: &str) -> ConfigMap {
    let label = BTreeMap::from([(CONFIG_OF.to_string(), names.cluster.clone())]);
    ConfigMap {
        metadata: meta(names, names.config_map(checksum), owner, &label),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            toml.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

pub fn acl_config_map(names: &Names, owner: &OwnerReference, acl: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(names, names.acl_config_map(), owner, &BTreeMap::new()),
        data: Some(BTreeMap::from([(ACL_FILE.to_string(), acl.to_string())])),
        ..ConfigMap::default()
    }
}
