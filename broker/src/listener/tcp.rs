//! Plain TCP (MQTT on 1883).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::ConnectionLimit;
use crate::broker::Broker;
use crate::connection::{self, ListenerInfo};
use crate::stats::Stats;

/// Accepts on `listener` until the task is aborted. A connection over
/// either limit is closed at accept, before anything is allocated for it.
pub fn spawn_tcp(
    broker: Arc<Broker>,
    listener: TcpListener,
    info: Arc<ListenerInfo>,
    global: Arc<ConnectionLimit>,
    local: Arc<ConnectionLimit>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little rather than spin.
                    tracing::warn!(listener = %info.label, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (Some(g), Some(l)) = (global.acquire(), local.acquire()) else {
                Stats::add(&broker.stats.connections_refused, 1);
                tracing::debug!(%peer, listener = %info.label, "connection limit reached: refused");
                drop(socket);
                continue;
            };
            // We batch writes ourselves; Nagle would only add latency.
            let _ = socket.set_nodelay(true);
            let broker = Arc::clone(&broker);
            let info = Arc::clone(&info);
            tokio::spawn(async move {
                connection::serve(broker, info, socket, peer, None).await;
                drop((g, l));
            });
        }
    })
}
