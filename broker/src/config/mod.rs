//! The broker's configuration: one TOML file, every key defaulted, `RAFTMQ_*`
//! environment variables layered on top, validated once at start.
//!
//! Environment overrides address a key by its path with `__` between the
//! levels, upper-cased: `RAFTMQ_DATA_DIR`, `RAFTMQ_MQTT__MAX_PACKET_SIZE`,
//! `RAFTMQ_CLUSTER__NODE_ID`. Values are read as TOML scalars (so `10`,
//! `true` and `"x"` keep their types) and fall back to a plain string. This is
//! how the StatefulSet hands each pod its identity without a per-pod file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod bridge;

/// Every way loading a configuration can fail; each names where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config {origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the broker keeps its state (the Raft log and snapshots).
    pub data_dir: PathBuf,
    /// Seconds between `$SYS` updates; 0 turns them off.
    pub sys_interval: u64,
    pub log: LogConfig,
    pub mqtt: MqttConfig,
    pub auth: AuthConfig,
    /// The listeners; none configured means one plain TCP listener on
    /// 0.0.0.0:1883.
    pub listeners: Vec<ListenerConfig>,
    pub http: HttpConfig,
    pub cluster: ClusterConfig,
    /// Bridges to other brokers (mosquitto's `connection` blocks).
    pub bridges: Vec<bridge::BridgeConfig>,
    /// A TOML file of more `[[bridges]]` (same keys; names unique across
    /// both), watched: a change applies without a restart.
    pub bridges_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            sys_interval: 10,
            log: LogConfig::default(),
            mqtt: MqttConfig::default(),
            auth: AuthConfig::default(),
            listeners: Vec::new(),
            http: HttpConfig::default(),
            cluster: ClusterConfig::default(),
            bridges: Vec::new(),
            bridges_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `raftmq=debug,info`); `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info,openraft=warn".into(),
            format: LogFormat::Human,
        }
    }
}

/// What happens when a session's offline queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOverflow {
    /// The new message is dropped (mosquitto's behaviour); what is queued
    /// keeps its order and nothing already accepted is lost.
    #[default]
    DropNew,
    /// The oldest queued message makes room for the new one.
    DropOldest,
}

/// Protocol limits; they apply to every listener unless the listener
/// overrides `max_connections` or `max_packet_size`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Largest packet accepted from a client (whole packet, bytes).
    pub max_packet_size: u32,
    /// Connections across all listeners; 0 = no limit.
    pub max_connections: usize,
    /// Seconds a new socket has to send CONNECT.
    pub connect_timeout: u64,
    /// Upper bound for a client's keep alive; a larger one is lowered and, in
    /// MQTT 5, announced as Server Keep Alive.
    pub max_keepalive: u16,
    pub max_topic_levels: usize,
    pub max_topic_length: usize,
    /// Subscriptions a single client may hold; 0 = no limit.
    pub max_subscriptions_per_client: usize,
    /// QoS 1/2 messages in flight to one client (its Receive Maximum may
    /// lower this).
    pub max_inflight_messages: u16,
    /// Messages in one session's queue beyond the in-flight window.
    pub max_queued_messages: usize,
    /// Payload bytes in one session's queue; 0 = only the count limit.
    pub max_queued_bytes: usize,
    pub queue_overflow: QueueOverflow,
    /// Queue QoS 0 messages for offline persistent sessions.
    pub queue_qos0_messages: bool,
    pub max_qos: u8,
    pub retain_available: bool,
    /// Topic aliases a client may use towards us (MQTT 5).
    pub topic_alias_maximum: u16,
    /// Upper bound of a session's expiry interval, seconds.
    pub max_session_expiry: u32,
    pub allow_zero_length_clientid: bool,
    /// Largest Receive Maximum we announce for inbound QoS 1/2 (MQTT 5).
    pub receive_maximum: u16,
    /// Bytes all held messages (queued, in flight, retained, wills, and
    /// the replicated copies) may take together; past it new QoS 1/2
    /// publishes are refused and QoS 0 copies dropped. 0 = half the
    /// container's memory limit, or half the machine's memory.
    pub max_memory: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_connections: 0,
            connect_timeout: 10,
            max_keepalive: 65535,
            max_topic_levels: 128,
            max_topic_length: 65535,
            max_subscriptions_per_client: 0,
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            queue_overflow: QueueOverflow::DropNew,
            queue_qos0_messages: false,
            max_qos: 2,
            retain_available: true,
            topic_alias_maximum: 10,
            max_session_expiry: u32::MAX,
            allow_zero_length_clientid: true,
            receive_maximum: 65535,
            max_memory: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Unset means: allowed when no `password_file` is configured, refused
    /// once one is (a broker that checks passwords must not also wave
    /// anonymous clients through by accident).
    pub allow_anonymous: Option<bool>,
    /// mosquitto password file (`user:$7$...` lines).
    pub password_file: Option<PathBuf>,
    /// mosquitto ACL file.
    pub acl_file: Option<PathBuf>,
    /// Delay before answering a failed authentication, milliseconds.
    pub auth_fail_delay_ms: u64,
    /// Whether a CONNECT may take a client id (its live connection and
    /// its session) from another identity.
    pub allow_session_takeover: SessionTakeover,
}

/// Who may take over a client id that is in use (a live connection or a
/// persistent session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SessionTakeover {
    /// Only the identity that made the session (same username, same
    /// certificate or PSK identity, or anonymous again): anyone else is
    /// refused with "not authorized" and the owner keeps everything.
    #[default]
    SameIdentity,
    /// Anyone who may connect (mosquitto's behaviour): the old connection
    /// is closed and the session resumed under the new identity.
    Any,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            auth_fail_delay_ms: 500,
            allow_session_takeover: SessionTakeover::SameIdentity,
        }
    }
}

impl AuthConfig {
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }
}

/// The listener kinds, shared with the operator that renders this file.
pub use raftmq_shared::ListenerKind;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A label for logs and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    /// 0 = only the global limit.
    #[serde(default)]
    pub max_connections: usize,
    /// Overrides `mqtt.max_packet_size` on this listener.
    #[serde(default)]
    pub max_packet_size: Option<u32>,
    /// TLS / WSS: server certificate chain (PEM).
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    /// TLS / WSS: private key (PEM).
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// TLS / WSS: CA bundle that client certificates must chain to.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    #[serde(default)]
    pub require_certificate: bool,
    /// The client certificate's CN (TLS) or the PSK identity becomes the
    /// username.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// PSK: mosquitto's `identity:hexkey` file.
    #[serde(default)]
    pub psk_file: Option<PathBuf>,
    #[serde(default)]
    pub psk_hint: Option<String>,
    /// WS / WSS: the HTTP path that upgrades to MQTT.
    #[serde(default = "default_ws_path")]
    pub path: String,
}

fn default_ws_path() -> String {
    raftmq_shared::config::DEFAULT_WS_PATH.into()
}

impl ListenerConfig {
    pub fn tcp(bind: SocketAddr) -> Self {
        Self {
            name: None,
            kind: ListenerKind::Tcp,
            bind,
            max_connections: 0,
            max_packet_size: None,
            certfile: None,
            keyfile: None,
            cafile: None,
            require_certificate: false,
            use_identity_as_username: false,
            psk_file: None,
            psk_hint: None,
            path: default_ws_path(),
        }
    }

    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.kind, self.bind.port()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/metrics`, `/healthz`, `/readyz` and the admin API; `None` turns
    /// the HTTP server off.
    pub bind: Option<SocketAddr>,
    /// Bearer token for the admin API; the admin API is off unless a token
    /// or a username/password is set.
    pub admin_token: Option<String>,
    pub admin_username: Option<String>,
    pub admin_password: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: Some(SocketAddr::from(([0, 0, 0, 0], 9100))),
            admin_token: None,
            admin_username: None,
            admin_password: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Raft node id; 0 = derive from the `HOSTNAME` ordinal (`raftmq-2` is
    /// node 3), or 1 when the host name carries none.
    pub node_id: u64,
    /// Where the gRPC server listens. Unset: `0.0.0.0:7100` when the
    /// cluster has certificates, else `127.0.0.1:7100` (see
    /// [`ClusterConfig::bind_addr`]).
    pub bind: Option<SocketAddr>,
    /// The address other nodes reach this one at (`host:port`); empty =
    /// `<HOSTNAME>:<bind port>`.
    pub advertise: String,
    /// Raft heartbeat period, milliseconds.
    pub heartbeat_ms: u64,
    /// Raft election timeout: a follower that hears no leader for a random
    /// time between this and twice this starts an election, milliseconds.
    pub election_timeout_ms: u64,
    /// Build a snapshot (and purge the log before it) after this many
    /// entries since the last one.
    pub snapshot_logs: u64,
    /// Entries kept in the log behind the last snapshot, so that a briefly
    /// absent follower catches up from the log instead of a snapshot.
    pub keep_logs: u64,
    /// Snapshots travel in chunks of at most this many bytes.
    pub snapshot_chunk_bytes: u64,
    /// Mutual TLS between nodes when all three are set. `{node_id}` in a
    /// path is this node's id (one directory of every node's files, as the
    /// operator mounts them).
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    /// Other nodes' gRPC addresses that node 1 asks before it makes a new
    /// cluster of an empty store: if one of them already belongs to a
    /// cluster, node 1 lost its volume and waits to be re-added instead.
    /// Empty = derived from `advertise` for a StatefulSet pod
    /// (`<set>-0.<rest>` asks `<set>-1.<rest>` .. `<set>-6.<rest>`).
    pub peers: Vec<String>,
    /// The Raft log's segment files roll over at this size (bytes).
    pub log_segment_bytes: u64,
    /// Cut a damaged Raft log at its bad record at start, on a member of a
    /// cluster of several nodes (also `raftmq serve --repair-log`). Meant
    /// for one start: see the README's Storage section.
    pub repair_log: bool,
    /// Serve the cluster port in plain text on a non-loopback address:
    /// anyone who reaches it can join, drain or write to the cluster. Only
    /// for a network nobody else is on; warned about at start, every
    /// minute, on `/readyz` and in `raftmq_cluster_insecure_plaintext`.
    pub insecure_plaintext: bool,
}

/// The cluster port's default: peers may only reach it when they must
/// prove who they are.
const CLUSTER_PORT: u16 = 7100;

impl ClusterConfig {
    /// Whether mutual TLS is configured (all three files; a partial set is
    /// refused when the cluster starts).
    pub fn has_certificates(&self) -> bool {
        self.certfile.is_some() && self.keyfile.is_some() && self.cafile.is_some()
    }

    /// Where the cluster gRPC server listens: as configured, or every
    /// interface with certificates and loopback without.
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind.unwrap_or_else(|| {
            if self.has_certificates() {
                SocketAddr::from(([0, 0, 0, 0], CLUSTER_PORT))
            } else {
                SocketAddr::from(([127, 0, 0, 1], CLUSTER_PORT))
            }
        })
    }

    /// Plain text on an address other hosts may reach (only ever true with
    /// `insecure_plaintext`, which validation otherwise requires).
    pub fn plaintext_exposed(&self) -> bool {
        !self.has_certificates() && !self.bind_addr().ip().is_loopback()
    }

    /// How long a write waits for its commit before its writers are told
    /// the cluster is unavailable (MQTT 5: 0x88, outcome unknown). Chosen
    /// with the election timeout `E` so that losing a leader while a
    /// majority is up costs latency, never that answer: followers honour
    /// the old leader's lease (openraft: the maximum election timeout,
    /// 2E) and then their own timeout (E..2E), so a new leader is normally
    /// elected 3E..4E after the old one fell silent; writes in flight to
    /// it are proposed again to the new one as soon as this node learns of
    /// it. 8E leaves room for a failed vote round and a loaded machine; at
    /// least 5 s. (README, Cluster.)
    pub fn commit_deadline(&self) -> std::time::Duration {
        let ms = self.election_timeout_ms.saturating_mul(8).max(5_000);
        std::time::Duration::from_millis(ms)
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            bind: None,
            advertise: String::new(),
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
            snapshot_logs: 10_000,
            keep_logs: 1_000,
            snapshot_chunk_bytes: 1024 * 1024,
            certfile: None,
            keyfile: None,
            cafile: None,
            peers: Vec::new(),
            log_segment_bytes: 16 * 1024 * 1024,
            repair_log: false,
            insecure_plaintext: false,
        }
    }
}

impl Config {
    /// The inline `[[bridges]]` and those of `bridges_file` as it reads
    /// now; names unique across both.
    pub fn all_bridges(&self) -> Result<Vec<bridge::BridgeConfig>, String> {
        let mut all = self.bridges.clone();
        if let Some(path) = &self.bridges_file {
            all.extend(bridge::read_bridges_file(path)?);
        }
        bridge::check_unique(&all)?;
        Ok(all)
    }

    /// Reads `path` (if any), applies `RAFTMQ_*` overrides from `env`, and
    /// validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (origin, mut table) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                // Deserialising the text itself first gives errors with
                // their line; the merged table below has no positions.
                let parse_error = |e: toml::de::Error| ConfigError::Parse {
                    path: p.display().to_string(),
                    message: e.to_string(),
                };
                toml::from_str::<Config>(&text).map_err(parse_error)?;
                let table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
                (p.display().to_string(), table)
            }
            None => ("(defaults)".to_string(), toml::Table::new()),
        };
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("RAFTMQ_") else {
                continue;
            };
            apply_env(&mut table, &var, rest, &value)?;
        }
        let config: Config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                path: format!("{origin} with RAFTMQ_* overrides"),
                message: e.to_string(),
            })?;
        config.validate(&origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            message: message.to_string(),
        };
        let m = &self.mqtt;
        if m.max_packet_size < 64 || m.max_packet_size > 268_435_455 {
            return Err(invalid(
                "mqtt.max_packet_size",
                "must be between 64 and 268435455 bytes",
            ));
        }
        if m.max_qos > 2 {
            return Err(invalid("mqtt.max_qos", "must be 0, 1 or 2"));
        }
        if m.max_inflight_messages == 0 {
            return Err(invalid("mqtt.max_inflight_messages", "must be at least 1"));
        }
        if m.receive_maximum == 0 {
            return Err(invalid("mqtt.receive_maximum", "must be at least 1"));
        }
        if m.connect_timeout == 0 {
            return Err(invalid("mqtt.connect_timeout", "must be at least 1 second"));
        }
        if m.max_topic_levels == 0 || m.max_topic_length == 0 {
            return Err(invalid(
                "mqtt.max_topic_levels",
                "topic limits must be at least 1",
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let key = |k: &str| format!("listeners[{i}].{k}");
            if let Some(size) = l.max_packet_size {
                if !(64..=268_435_455).contains(&size) {
                    return Err(invalid(
                        &key("max_packet_size"),
                        "must be between 64 and 268435455 bytes",
                    ));
                }
            }
            match l.kind {
                ListenerKind::Tls | ListenerKind::Wss => {
                    if l.certfile.is_none() || l.keyfile.is_none() {
                        return Err(invalid(
                            &key("certfile"),
                            "a TLS listener needs certfile and keyfile",
                        ));
                    }
                    if l.require_certificate && l.cafile.is_none() {
                        return Err(invalid(
                            &key("cafile"),
                            "require_certificate needs a cafile to verify clients against",
                        ));
                    }
                }
                ListenerKind::Psk => {
                    if l.psk_file.is_none() {
                        return Err(invalid(&key("psk_file"), "a PSK listener needs psk_file"));
                    }
                }
                ListenerKind::Tcp | ListenerKind::Ws => {}
            }
            if matches!(l.kind, ListenerKind::Ws | ListenerKind::Wss) && !l.path.starts_with('/') {
                return Err(invalid(&key("path"), "must start with '/'"));
            }
        }
        if self.cluster.log_segment_bytes < 1024 {
            return Err(invalid(
                "cluster.log_segment_bytes",
                "must be at least 1024 bytes",
            ));
        }
        bridge::check_unique(&self.bridges).map_err(|why| invalid("bridges", &why))?;
        self.all_bridges()
            .map_err(|why| invalid("bridges_file", &why))?;
        if self.cluster.plaintext_exposed() && !self.cluster.insecure_plaintext {
            return Err(invalid(
                "cluster.bind",
                &format!(
                    "the cluster port {} is reachable from other hosts but has no certificates: \
                     anyone who reaches it could join, drain or write to the cluster. Set \
                     [cluster] certfile, keyfile and cafile (`raftmq cluster certs --out DIR \
                     --nodes N` issues them), or bind it to 127.0.0.1, or set [cluster] \
                     insecure_plaintext = true on a network nobody else is on",
                    self.cluster.bind_addr()
                ),
            ));
        }
        let mut binds: Vec<SocketAddr> = self.listeners.iter().map(|l| l.bind).collect();
        binds.sort();
        if let Some(w) = binds.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(
                "listeners",
                &format!("two listeners bind {}", w[0]),
            ));
        }
        Ok(())
    }

    /// The configured listeners, or the default plain TCP one.
    pub fn effective_listeners(&self) -> Vec<ListenerConfig> {
        if self.listeners.is_empty() {
            vec![ListenerConfig::tcp(SocketAddr::from(([0, 0, 0, 0], 1883)))]
        } else {
            self.listeners.clone()
        }
    }

    /// This node's Raft id (see [`ClusterConfig::node_id`]).
    pub fn node_id(&self, hostname: Option<&str>) -> u64 {
        if self.cluster.node_id != 0 {
            return self.cluster.node_id;
        }
        hostname
            .and_then(|h| h.rsplit_once('-'))
            .and_then(|(_, ordinal)| ordinal.parse::<u64>().ok())
            .map(|o| o + 1)
            .unwrap_or(1)
    }
}

/// Sets the key that `rest` (the variable name after `RAFTMQ_`) names.
fn apply_env(
    table: &mut toml::Table,
    var: &str,
    rest: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.to_string(),
            message: "empty key segment".into(),
        });
    }
    let mut cursor = table;
    for part in &path[..path.len() - 1] {
        let entry = cursor
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.to_string(),
            message: format!("`{part}` is not a section"),
        })?;
    }
    // A TOML scalar keeps its type (numbers, booleans, quoted strings);
    // anything else is taken as a plain string.
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    cursor.insert(path[path.len() - 1].clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests;
