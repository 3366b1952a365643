//! `[cluster] insecure_plaintext`: the cluster port in plain text beyond
//! loopback. Said loudly and often, because nobody should run it so by
//! accident: anyone who reaches the port can add a node of their own (and
//! be sent every session and message), drain the broker or commit writes.

use std::net::SocketAddr;
use std::time::Duration;

/// How often the warning is repeated.
const EVERY: Duration = Duration::from_secs(60);

fn warn(addr: SocketAddr) {
    tracing::warn!(
        %addr,
        "INSECURE: the cluster port serves plain text with no authentication \
         ([cluster] insecure_plaintext = true): anyone who reaches it can join, drain or write \
         to this cluster. Configure certfile, keyfile and cafile (raftmq cluster certs issues them)"
    );
}

/// Warns now and every minute while the process runs.
pub fn spawn_warnings(addr: SocketAddr) {
    warn(addr);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            warn(addr);
        }
    });
}

/// The line `/readyz` carries while it is so.
pub fn readiness_note(addr: SocketAddr) -> String {
    format!(
        "cluster: INSECURE plain text on {addr}, no authentication ([cluster] insecure_plaintext = true)"
    )
}
