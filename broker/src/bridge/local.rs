//! The bridge's connection to this broker: an in-process byte stream
//! served by the ordinary connection code (`connection::serve`), so the
//! bridge's session is a persistent session like any client's: its client
//! id claimed through the log, its QoS 1/2 copies replicated, and what it
//! publishes going through `engine::publish` after the same checks.
//!
//! It is logged in by its transport identity, `$bridge/<name>` (as a TLS
//! client by its certificate): no password exists for it, and under an ACL
//! file it may read and write what `user $bridge/<name>` rules allow.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::DuplexStream;

use super::peer::Stream;
use crate::connection::{self, ListenerInfo, Transport};
use crate::engine::Broker;

/// Bytes either direction may hold unread (the windows bound what is in
/// flight well below it).
const PIPE_BYTES: usize = 4 << 20;

impl Transport for DuplexStream {}

/// Opens a connection to this broker as `identity`.
pub fn open(broker: &Arc<Broker>, identity: &str) -> Box<dyn Stream> {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let label = "bridge";
    let info = Arc::new(ListenerInfo {
        label: label.into(),
        connections: broker
            .stats
            .listener_connections
            .with_label_values(&[label]),
        clients: broker.stats.listener_clients.with_label_values(&[label]),
        max_packet_size: broker.config.mqtt.max_packet_size,
        use_identity_as_username: true,
    });
    // No socket: the address only labels the connection's log lines.
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    tokio::spawn(connection::serve(
        broker.clone(),
        info,
        theirs,
        peer,
        Some(identity.to_string()),
    ));
    Box::new(ours)
}
