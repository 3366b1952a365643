//! Handing a node's clients to the other nodes: Admin `Drain` (the
//! operator retires or restarts a pod) and SIGTERM (the pod stops).
//!
//! The node stops being ready (a Kubernetes Service stops sending clients),
//! refuses new CONNECTs, and asks every connected client to go: MQTT 5
//! clients get DISCONNECT 0x9C Use another server (with the Server
//! Reference when one is given) or 0x8B Server shutting down; 3.1.1
//! clients, which have no server DISCONNECT, see the socket close. Their
//! persistent sessions are already in the replicated state, so a reconnect
//! to any other node resumes them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Broker;
use crate::codec::{reason, ByteStr, ConnAck, Properties, Protocol};
use crate::state::Command;

/// What a draining node tells its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainMode {
    /// MQTT 5 DISCONNECT reason: [`reason::USE_ANOTHER_SERVER`] or
    /// [`reason::SERVER_SHUTTING_DOWN`].
    pub code: u8,
    /// MQTT 5 Server Reference (with 0x9C only).
    pub server_reference: Option<ByteStr>,
}

impl DrainMode {
    /// Admin `Drain`: clients are sent to `server_reference` (if any).
    pub fn hand_over(server_reference: &str) -> DrainMode {
        DrainMode {
            code: reason::USE_ANOTHER_SERVER,
            server_reference: (!server_reference.is_empty())
                .then(|| ByteStr::from(server_reference)),
        }
    }

    /// SIGTERM: the node goes away.
    pub fn shutdown() -> DrainMode {
        DrainMode {
            code: reason::SERVER_SHUTTING_DOWN,
            server_reference: None,
        }
    }

    /// The CONNACK refusing a new connection while draining. 3.1.1 has one
    /// code for all of it (3, server unavailable); MQTT 5 says where to go
    /// when it can (0x9C with the reference), or that the node is going
    /// away (0x8B), or just unavailable (0x88).
    pub fn connack(&self, protocol: Protocol, problem_info: bool) -> ConnAck {
        let mut properties = Properties::default();
        let code = if !protocol.is_v5() {
            reason::v3::SERVER_UNAVAILABLE
        } else if self.code == reason::SERVER_SHUTTING_DOWN {
            reason::SERVER_SHUTTING_DOWN
        } else if self.server_reference.is_some() {
            properties.server_reference = self.server_reference.clone();
            reason::USE_ANOTHER_SERVER
        } else {
            reason::SERVER_UNAVAILABLE
        };
        if protocol.is_v5() && problem_info {
            properties.reason_string = Some(ByteStr::from(self.why()));
        }
        ConnAck {
            session_present: false,
            code,
            properties,
        }
    }

    /// The reason string of the DISCONNECT and of a refused CONNACK.
    pub fn why(&self) -> &'static str {
        if self.code == reason::SERVER_SHUTTING_DOWN {
            "server shutting down"
        } else {
            "this node is draining: use another server"
        }
    }

    /// Whether a kick with `code` is a drain's (the connection then ends
    /// as [`crate::engine::Departure::Moved`]).
    pub fn is_drain_code(code: u8) -> bool {
        code == reason::USE_ANOTHER_SERVER || code == reason::SERVER_SHUTTING_DOWN
    }
}

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Connections told to leave by this call.
    pub disconnected: u64,
    /// Connections still open when the timeout passed.
    pub remaining: u64,
}

/// Counts a connection from its CONNACK until its socket is shut, so that a
/// drain (and the process exit after SIGTERM) waits for the goodbye to be
/// written, not only for the session to let go.
pub struct LiveConnection(Arc<Broker>);

impl LiveConnection {
    pub fn new(broker: &Arc<Broker>) -> LiveConnection {
        broker
            .health
            .live_connections
            .fetch_add(1, Ordering::AcqRel);
        LiveConnection(broker.clone())
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0
            .health
            .live_connections
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often a drain looks again for connections to close.
const DRAIN_POLL: Duration = Duration::from_millis(50);

impl Broker {
    /// The drain in force, if any.
    pub fn drain_mode(&self) -> Option<DrainMode> {
        self.health.drain.read().clone()
    }

    pub fn is_draining(&self) -> bool {
        self.health.drain.read().is_some()
    }

    /// Open client connections (CONNACK sent, socket not yet shut).
    pub fn live_connections(&self) -> u64 {
        self.health.live_connections.load(Ordering::Acquire)
    }

    /// Marks the node draining and asks every connected client to leave;
    /// returns once they are gone or `timeout` has passed. Idempotent: a
    /// second call closes whatever connected since (nothing should have)
    /// and waits again; a shutdown after a drain switches the reason to
    /// 0x8B, never back.
    pub async fn drain(self: &Arc<Self>, mode: DrainMode, timeout: Duration) -> DrainOutcome {
        let first = !self.is_draining();
        let mode = {
            let mut d = self.health.drain.write();
            let keep = d
                .as_ref()
                .is_some_and(|old| old.code == reason::SERVER_SHUTTING_DOWN);
            if !keep {
                *d = Some(mode);
            }
            d.clone().unwrap_or_else(DrainMode::shutdown)
        };
        tracing::info!(
            code = mode.code,
            server_reference = ?mode.server_reference.as_deref(),
            connections = self.live_connections(),
            "draining: handing clients to other nodes"
        );
        if first {
            // Its bridges go to other nodes (the state machine lets go of
            // them; the leader places them again).
            self.submit(vec![Command::NodeDraining { node: self.node_id }]);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // What this node's clients did so far (acks, subscriptions, session
        // changes) goes into the log before they are told to leave: the
        // seam commits in submission order, so this empty batch's commit
        // means all of it was written. Their copies and queued messages are
        // committed already (a QoS 1/2 publish is acknowledged only then).
        self.barrier(deadline).await;
        let mut outcome = DrainOutcome::default();
        loop {
            let connected: Vec<_> = self
                .local
                .sessions
                .lock()
                .values()
                .filter(|c| c.connected.load(Ordering::Acquire))
                .cloned()
                .collect();
            for cell in connected {
                // A kick goes once per connection: it unbinds the
                // connection from the session's signal.
                if cell.kick(mode.code) {
                    outcome.disconnected += 1;
                }
            }
            if self.live_connections() == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        outcome.remaining = self.live_connections();
        // The departures' own writes (wills cleared) go in before we report
        // the node empty, so that a process exit right after loses nothing.
        self.barrier(deadline).await;
        tracing::info!(
            disconnected = outcome.disconnected,
            remaining = outcome.remaining,
            "drained"
        );
        outcome
    }

    /// Ends an Admin drain: new connections are accepted and the node is
    /// ready again (its clients, gone elsewhere, come back as they
    /// reconnect). Returns whether it was draining; refused once the node
    /// is shutting down, which is never undone.
    pub fn undrain(&self) -> Result<bool, &'static str> {
        let mut d = self.health.drain.write();
        match d.as_ref() {
            Some(m) if m.code == reason::SERVER_SHUTTING_DOWN => Err("the node is shutting down"),
            Some(_) => {
                *d = None;
                tracing::info!("drain ended: taking clients again");
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Waits until everything submitted to the seam so far is committed
    /// (or failed), at most until `deadline`.
    async fn barrier(&self, deadline: tokio::time::Instant) {
        let ticket = self.cluster.seam.submit(Vec::new());
        if tokio::time::timeout_at(deadline, ticket.wait())
            .await
            .is_err()
        {
            tracing::warn!("draining: the cluster did not commit in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connacks_say_where_to_go_when_they_can() {
        let to = DrainMode::hand_over("mqtt.example:1883");
        let ack = to.connack(Protocol::V5, true);
        assert_eq!(ack.code, reason::USE_ANOTHER_SERVER);
        assert_eq!(
            ack.properties.server_reference.as_deref(),
            Some("mqtt.example:1883")
        );
        assert!(ack.properties.reason_string.is_some());
        assert!(to
            .connack(Protocol::V5, false)
            .properties
            .reason_string
            .is_none());
        let ack = to.connack(Protocol::V311, true);
        assert_eq!(ack.code, reason::v3::SERVER_UNAVAILABLE);
        assert_eq!(ack.properties, Properties::default());

        let nowhere = DrainMode::hand_over("");
        assert_eq!(nowhere.server_reference, None);
        let ack = nowhere.connack(Protocol::V5, true);
        assert_eq!(ack.code, reason::SERVER_UNAVAILABLE);
        assert!(ack.properties.server_reference.is_none());

        let down = DrainMode::shutdown();
        assert_eq!(
            down.connack(Protocol::V5, true).code,
            reason::SERVER_SHUTTING_DOWN
        );
        assert_eq!(
            down.connack(Protocol::V31, true).code,
            reason::v3::SERVER_UNAVAILABLE
        );
        assert!(DrainMode::is_drain_code(to.code) && DrainMode::is_drain_code(down.code));
        assert!(!DrainMode::is_drain_code(reason::SESSION_TAKEN_OVER));
    }
}
