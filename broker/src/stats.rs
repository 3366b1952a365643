//! Counters the broker keeps as it works; `$SYS` and `/metrics` read them.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Stats {
            /// Name and value of every counter, for exporters.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Clients connected now.
    clients_connected,
    /// Highest `clients_connected` seen.
    clients_maximum,
    /// Connections accepted (CONNACK success) since start.
    clients_total,
    /// Sockets refused at accept because a connection limit was reached.
    connections_refused,
    /// TLS / WebSocket handshakes that failed or timed out.
    handshake_failures,
    /// CONNECTs refused (bad protocol, id, auth...).
    connects_refused,
    /// Every packet received / sent.
    messages_received,
    messages_sent,
    /// PUBLISH packets received / sent.
    publish_received,
    publish_sent,
    /// Copies refused by a queue limit, or not sendable (too large, expired).
    publish_dropped,
    bytes_received,
    bytes_sent,
    /// Connections closed for malformed or protocol-violating input.
    protocol_errors,
    sessions_expired,
    /// CONNECTs refused for bad or missing credentials.
    auth_failures,
    keepalive_timeouts,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
        self.clients_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn disconnected(&self) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }
}
