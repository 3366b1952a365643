//! MQTT over WebSocket: the HTTP upgrade on the configured path with the
//! `mqtt` subprotocol, then binary frames as a plain byte stream so that the
//! same connection code serves it (and a session begun here can resume over
//! TCP, or the other way round).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The WebSocket subprotocols that carry MQTT.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Upgrades `stream` if the request is for `path`; refuses other paths with
/// 404. Frames are bounded by `max_packet_size` (plus framing).
pub async fn accept<S>(stream: S, path: &str, max_packet_size: u32) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The signature is tungstenite's `Callback`; its error type is theirs.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut err =
                ErrorResponse::new(Some(format!("no MQTT endpoint at {}", req.uri().path())));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        // `mqtt` is the standard name; `mqttv3.1` is what MQTT 3.1 clients
        // (old paho JavaScript) ask for, and mosquitto accepts it too. The
        // first one the client offers is echoed, as RFC 6455 wants.
        let chosen = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find_map(|p| {
                SUBPROTOCOLS
                    .iter()
                    .find(|known| p.eq_ignore_ascii_case(known))
            });
        if let Some(p) = chosen {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        Ok(resp)
    };
    let limit = max_packet_size as usize + 16;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(io::Error::other)?;
    Ok(WsStream {
        inner: ws,
        pending: Bytes::new(),
    })
}

/// A WebSocket connection as a byte stream.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary frame.
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(Message::Binary(data)))) => self.pending = data,
                // Pings are answered by tungstenite itself; pongs and empty
                // frames carry nothing for us.
                Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Poll::Ready(Some(Ok(Message::Text(_)))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket must use binary frames",
                    )))
                }
                Poll::Ready(Some(Ok(Message::Close(_)))) | Poll::Ready(None) => {
                    return Poll::Ready(Ok(()))
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let inner = Pin::new(&mut self.inner);
        match inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            Poll::Pending => return Poll::Pending,
        }
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> crate::connection::Transport for WsStream<S> {}
