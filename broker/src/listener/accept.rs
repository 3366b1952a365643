//! The accept loop every listener shares: limits, then the transport's
//! handshake (bounded by the connect timeout), then the MQTT connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{websocket, ConnectionLimit, Transport};
use crate::connection::{self, ListenerInfo};
use crate::engine::Broker;

/// Accepts on `listener` until the task is aborted. A connection over
/// either limit is closed at accept, before anything is allocated for it.
pub fn spawn(
    broker: Arc<Broker>,
    listener: TcpListener,
    info: Arc<ListenerInfo>,
    transport: Arc<Transport>,
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (Some(g), Some(l)) = (global.acquire(), local.acquire()) else {
                broker.stats.connections_refused.inc();
                tracing::debug!(%peer, listener = %info.label, "connection limit reached: refused");
                drop(socket);
                continue;
            };
            broker.stats.sockets.inc();
            // We batch writes ourselves; Nagle would only add latency.
            let _ = socket.set_nodelay(true);
            let broker = Arc::clone(&broker);
            let info = Arc::clone(&info);
            if let Transport::Tcp = *transport {
                // Plain TCP, most connections: CONNECT in a boxed future
                // gone once it is answered, so that the task an idle
                // client keeps is its connection and main loop only, not
                // the arguments of every layer that led there.
                let opening = Box::pin(connection::open(broker, info, socket, peer, None));
                tokio::spawn(async move {
                    if let Some(mut live) = opening.await {
                        live.run().await;
                    }
                    drop((g, l));
                });
                continue;
            }
            let transport = Arc::clone(&transport);
            tokio::spawn(async move {
                handle(broker, info, &transport, socket, peer).await;
                drop((g, l));
            });
        }
    })
}

async fn handle(
    broker: Arc<Broker>,
    info: Arc<ListenerInfo>,
    transport: &Transport,
    socket: TcpStream,
    peer: SocketAddr,
) {
    let limit = Duration::from_secs(broker.config.mqtt.connect_timeout);
    let max = info.max_packet_size;
    macro_rules! handshake {
        ($fut:expr) => {
            match tokio::time::timeout(limit, $fut).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, listener = %info.label, "handshake failed: {e}");
                    broker.stats.handshake_failures.inc();
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, listener = %info.label, "handshake timed out");
                    broker.stats.handshake_failures.inc();
                    return;
                }
            }
        };
    }
    // Plain TCP never comes here (see `spawn`). The other transports'
    // handshakes and stream types make far larger futures; boxed, they cost
    // only their own connections.
    match transport {
        Transport::Tcp => connection::serve(broker, info, socket, peer, None).await,
        Transport::Tls(tls) => {
            Box::pin(async move {
                let (stream, cn) = handshake!(tls.accept(socket));
                connection::serve(broker, info, stream, peer, cn).await
            })
            .await
        }
        Transport::Ws { path } => {
            Box::pin(async move {
                let ws = handshake!(websocket::accept(socket, path, max));
                connection::serve(broker, info, ws, peer, None).await
            })
            .await
        }
        Transport::Wss { tls, path } => {
            Box::pin(async move {
                let (stream, cn) = handshake!(tls.accept(socket));
                let ws = handshake!(websocket::accept(stream, path, max));
                connection::serve(broker, info, ws, peer, cn).await
            })
            .await
        }
        #[cfg(feature = "psk")]
        Transport::Psk(psk) => {
            Box::pin(async move {
                let (stream, identity) = handshake!(psk.accept(socket));
                connection::serve(broker, info, stream, peer, identity).await
            })
            .await
        }
    }
}

/// Plain TCP says when a read would find data: an idle connection waits
/// holding no read buffer.
impl crate::connection::Transport for TcpStream {
    const KNOWS_READINESS: bool = true;
    const CLOSES_ON_DROP: bool = true;

    fn poll_readable(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_read_ready(cx)
    }
}
