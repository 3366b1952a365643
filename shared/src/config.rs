//! The broker's TOML configuration as far as the operator writes it: the
//! listener kinds and the key names. The broker's `config.rs` reads these
//! keys with serde (unknown keys refused) and has a test that a file written
//! with these names loads; the operator renders with them.

use serde::{Deserialize, Serialize};

/// A listener's transport, in the order the operator lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Tcp,
    Tls,
    Psk,
    Ws,
    Wss,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 5] = [
        ListenerKind::Tcp,
        ListenerKind::Tls,
        ListenerKind::Psk,
        ListenerKind::Ws,
        ListenerKind::Wss,
    ];

    /// The value of a listener's `kind` key.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Psk => "psk",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    /// Needs `certfile` and `keyfile` (a server certificate).
    pub fn needs_certificate(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// MQTT over WebSocket (has a `path`).
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP path a WebSocket listener upgrades on when none is given.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// Key names, by table.
pub mod keys {
    pub const DATA_DIR: &str = "data_dir";
    pub const SYS_INTERVAL: &str = "sys_interval";
    pub const LOG: &str = "log";
    pub const MQTT: &str = "mqtt";
    pub const AUTH: &str = "auth";
    pub const LISTENERS: &str = "listeners";
    pub const HTTP: &str = "http";
    pub const CLUSTER: &str = "cluster";
    /// `[[bridges]]` tables, inline.
    pub const BRIDGES: &str = "bridges";
    /// A file of `[[bridges]]` tables (the same keys), reloaded by the broker
    /// when it changes: a bridge whose settings changed reconnects, the
    /// others are untouched. The operator renders its bridges there.
    pub const BRIDGES_FILE: &str = "bridges_file";

    /// `[log]`.
    pub mod log {
        pub const LEVEL: &str = "level";
        pub const FORMAT: &str = "format";
    }

    /// `[auth]`.
    pub mod auth {
        pub const PASSWORD_FILE: &str = "password_file";
        pub const ACL_FILE: &str = "acl_file";
        pub const ALLOW_ANONYMOUS: &str = "allow_anonymous";
    }

    /// One `[[listeners]]` entry.
    pub mod listener {
        pub const NAME: &str = "name";
        pub const KIND: &str = "kind";
        pub const BIND: &str = "bind";
        pub const MAX_CONNECTIONS: &str = "max_connections";
        pub const MAX_PACKET_SIZE: &str = "max_packet_size";
        pub const CERTFILE: &str = "certfile";
        pub const KEYFILE: &str = "keyfile";
        pub const CAFILE: &str = "cafile";
        pub const REQUIRE_CERTIFICATE: &str = "require_certificate";
        pub const USE_IDENTITY_AS_USERNAME: &str = "use_identity_as_username";
        pub const PSK_FILE: &str = "psk_file";
        pub const PSK_HINT: &str = "psk_hint";
        pub const PATH: &str = "path";
    }

    /// One `[[bridges]]` entry (mosquitto's `connection` block), as far as
    /// the operator writes it.
    pub mod bridge {
        pub const NAME: &str = "name";
        pub const ADDRESSES: &str = "addresses";
        pub const ROUND_ROBIN: &str = "round_robin";
        /// mosquitto's `pattern [[[out|in|both] qos] local-prefix
        /// remote-prefix]` strings.
        pub const TOPIC: &str = "topic";
        /// `"3.1.1"` or `"5.0"`.
        pub const PROTOCOL: &str = "protocol";
        pub const CLEAN_START: &str = "clean_start";
        pub const REMOTE_CLIENTID: &str = "remote_clientid";
        pub const REMOTE_USERNAME: &str = "remote_username";
        pub const REMOTE_PASSWORD_FILE: &str = "remote_password_file";
        pub const KEEPALIVE_INTERVAL: &str = "keepalive_interval";
        /// Seconds: one number, or `[base, cap]`.
        pub const RESTART_TIMEOUT: &str = "restart_timeout";
        pub const TRY_PRIVATE: &str = "try_private";
        pub const NOTIFICATIONS: &str = "notifications";
        pub const NOTIFICATION_TOPIC: &str = "notification_topic";
        pub const CAFILE: &str = "cafile";
        pub const CERTFILE: &str = "certfile";
        pub const KEYFILE: &str = "keyfile";
        pub const SERVER_NAME: &str = "server_name";
        pub const INSECURE: &str = "insecure";
        /// TLS-PSK identity.
        pub const IDENTITY: &str = "identity";
        /// A file holding the TLS-PSK key in hex.
        pub const PSK_FILE: &str = "psk_file";
        pub const MAX_QUEUED_MESSAGES: &str = "max_queued_messages";
    }

    /// `[http]`.
    pub mod http {
        pub const BIND: &str = "bind";
    }

    /// `[cluster]`.
    pub mod cluster {
        pub const BIND: &str = "bind";
        pub const ADVERTISE: &str = "advertise";
        pub const NODE_ID: &str = "node_id";
        pub const CERTFILE: &str = "certfile";
        pub const KEYFILE: &str = "keyfile";
        pub const CAFILE: &str = "cafile";
        pub const INSECURE_PLAINTEXT: &str = "insecure_plaintext";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_themselves_as_serde_does() {
        for k in ListenerKind::ALL {
            let v = toml::Value::try_from(k).ok();
            assert_eq!(v.as_ref().and_then(|v| v.as_str()), Some(k.as_str()));
            assert_eq!(k.to_string(), k.as_str());
            let back: Option<ListenerKind> = toml::Value::from(k.as_str()).try_into().ok();
            assert_eq!(back, Some(k));
        }
        assert!(ListenerKind::Wss.needs_certificate() && ListenerKind::Wss.is_websocket());
        assert!(!ListenerKind::Psk.needs_certificate() && !ListenerKind::Tcp.is_websocket());
    }
}
