//! The cluster port's connections, accepted here rather than by tonic so
//! that each carries who is calling ([`PeerInfo`], read from the client
//! certificate once per connection) into every request, and so that a
//! refused handshake (a certificate from another CA) is logged and counted
//! like any other refusal.
//!
//! The TLS server accepts connections without a client certificate: their
//! calls are then answered `Unauthenticated` by the services (see `auth`),
//! which says more to the caller than a failed handshake. A certificate
//! that does not chain to the cluster CA still fails the handshake.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use super::auth::{caller_of, Caller, PeerInfo};

/// A handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted but not yet taken by the server.
const BACKLOG: usize = 64;

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One accepted connection (plain or TLS) and its peer.
pub struct PeerConn {
    io: Pin<Box<dyn Io>>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for PeerConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections on `listener` (with TLS when `tls` is set) and
/// hands them to the gRPC server as they are ready; handshakes run
/// concurrently, so a slow or hostile one holds up nobody.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    refused: IntCounterVec,
) -> ReceiverStream<io::Result<PeerConn>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let (socket, remote) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: the listener itself
                    // is fine; try again shortly.
                    tracing::warn!("cluster port: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let Some(tls) = tls.clone() else {
                let conn = PeerConn {
                    io: Box::pin(socket),
                    info: PeerInfo {
                        remote: Some(remote),
                        caller: Caller::Open,
                    },
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let (tx, refused) = (tx.clone(), refused.clone());
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(socket)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        refused
                            .with_label_values(&["tls-handshake", "unauthenticated"])
                            .inc();
                        tracing::warn!(%remote, "cluster call refused: TLS handshake: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "cluster port: TLS handshake timed out");
                        return;
                    }
                };
                let caller = caller_of(stream.get_ref().1.peer_certificates());
                let conn = PeerConn {
                    io: Box::pin(stream),
                    info: PeerInfo {
                        remote: Some(remote),
                        caller,
                    },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}
