//! How a connection ends: DISCONNECT from the client, or the goodbye we
//! send (keep alive, protocol error, takeover, drain); then the will is
//! handed to the engine and the session lets go of the connection.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::{Connection, Exit, Flow, Transport};
use crate::codec::{reason, ByteStr, Disconnect, Packet, Properties};
use crate::engine::{Departure, DrainMode};

impl Connection {
    /// DISCONNECT: the connection ends once the publishes sent before it
    /// have their answers; it may set a new session expiry.
    pub(super) async fn on_disconnect(&mut self, d: Disconnect, wbuf: &mut BytesMut) -> Flow {
        self.settle_acks(wbuf).await?;
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.connect_expiry == 0 && expiry != 0 {
                return Err(Exit::Close(
                    reason::PROTOCOL_ERROR,
                    "session expiry cannot be set at DISCONNECT when it was 0",
                ));
            }
            let expiry = expiry.min(self.broker.config.mqtt.max_session_expiry);
            self.broker.set_expiry(&self.cell, expiry);
        }
        Err(Exit::ClientDisconnect(d.code))
    }

    /// Says goodbye as `exit` requires, handles the will, frees the session.
    pub(super) async fn finish<S>(&mut self, stream: &mut S, wbuf: &mut BytesMut, exit: Exit)
    where
        S: Transport,
    {
        let departure = match exit {
            Exit::ClientDisconnect(reason::DISCONNECT_WITH_WILL) => Departure::Unclean,
            Exit::ClientDisconnect(_) => Departure::Clean,
            Exit::Kicked(reason::SESSION_TAKEN_OVER) => Departure::TakenOver,
            Exit::Kicked(code) if DrainMode::is_drain_code(code) => Departure::Moved,
            Exit::SocketLost | Exit::Close(..) | Exit::Kicked(_) => Departure::Unclean,
        };
        let drain = self.broker.drain_mode();
        let goodbye = match exit {
            Exit::Close(code, why) => Some((code, why)),
            Exit::Kicked(code) if DrainMode::is_drain_code(code) => Some((
                code,
                drain
                    .as_ref()
                    .map_or("closed by the server", DrainMode::why),
            )),
            Exit::Kicked(reason::SESSION_TAKEN_OVER) => {
                Some((reason::SESSION_TAKEN_OVER, "session taken over"))
            }
            Exit::Kicked(reason::ADMINISTRATIVE_ACTION) => Some((
                reason::ADMINISTRATIVE_ACTION,
                "disconnected by an administrator",
            )),
            Exit::Kicked(code) => Some((code, "closed by the server")),
            _ => None,
        };
        if let Some((code, why)) = goodbye {
            tracing::debug!(code, "closing connection: {why}");
            if self.protocol.is_v5() {
                let mut properties = Properties::default();
                if self.problem_info {
                    properties.reason_string = Some(ByteStr::from(why));
                }
                if code == reason::USE_ANOTHER_SERVER {
                    properties.server_reference = drain.and_then(|d| d.server_reference);
                }
                self.write(wbuf, Packet::Disconnect(Disconnect { code, properties }));
            }
        } else {
            tracing::debug!("disconnected");
        }
        // The session lets go of this connection before the client can see
        // the socket close: what is published after that is queued for it,
        // never handed to a connection that is going away.
        self.broker.stats.disconnected();
        self.listener.clients.dec();
        let will = self.will.take().map(|w| *w);
        self.broker
            .close_session(&self.cell, self.conn_id, departure, will);
        if !wbuf.is_empty() {
            let bye = async {
                stream.write_all(wbuf).await?;
                stream.flush().await
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), bye).await {
                self.broker.stats.bytes_sent.inc_by(wbuf.len() as u64);
            }
        }
        // The caller drops the stream next: where that closes it the same
        // way (plain TCP), no shutdown first.
        if !S::CLOSES_ON_DROP {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        }
    }
}
