//! Bridges: this broker as a client of other brokers, the way mosquitto's
//! `connection` blocks work (`[[bridges]]`, read by `config/bridge.rs`).
//!
//! | file | what |
//! | --- | --- |
//! | `claim.rs` | where each bridge runs: the leader places them, one node each |
//! | `run.rs` | one bridge's life: connecting, backoff, notifications, while this node holds its claim |
//! | `local.rs` | the bridge's connection to this broker (its persistent session) |
//! | `remote.rs` | the transport to the remote: TCP, TLS, TLS-PSK |
//! | `peer.rs` | either side as an MQTT client, over the broker's codec |
//! | `link.rs` | the pump: each copy acknowledged only once the other side has it |
//! | `status.rs` | per-bridge metrics and the API's view |
//!
//! The engine knows no bridge: the status lives here, held by the server
//! and handed to the HTTP API; the engine is told each bridge session's
//! queue bound (`Broker::set_queue_bound`).
//!
//! The outgoing queue is the bridge's own persistent session on this broker
//! (client id `$bridge/<name>`, subscribed to the `out` topics), so a QoS
//! 1/2 message for the remote is replicated like any persistent session's
//! copy, and its publisher is answered once that is committed. In a
//! cluster one node runs each bridge, the one its claim in the replicated
//! state names (`claim.rs`); when that node dies or drains the leader gives
//! the claim to another, which resumes the session from the replicated
//! state.

mod claim;
mod link;
mod local;
mod peer;
mod remote;
mod run;
pub mod status;

pub use crate::config::bridge::BridgeConfig;
pub use run::{refresh, BridgeSet};
pub use status::{BridgeStatus, Bridges};
