//! Bridges: this broker as a client of other brokers, the way mosquitto's
//! `connection` blocks work (`[[bridges]]`, see `config.rs`).
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | `[[bridges]]`, mosquitto's topic rules and option names |
//! | `run.rs` | one bridge's life: where it runs, connecting, backoff, notifications |
//! | `local.rs` | the bridge's connection to this broker (its persistent session) |
//! | `remote.rs` | the transport to the remote: TCP, TLS, TLS-PSK |
//! | `peer.rs` | either side as an MQTT client, over the broker's codec |
//! | `link.rs` | the pump: each copy acknowledged only once the other side has it |
//! | `status.rs` | per-bridge metrics and the API's view |
//!
//! The outgoing queue is the bridge's own persistent session on this broker
//! (client id `$bridge/<name>`, subscribed to the `out` topics), so a QoS
//! 1/2 message for the remote is replicated like any persistent session's
//! copy, and its publisher is answered once that is committed. In a
//! cluster the Raft leader runs every bridge: leadership is the claim, held
//! by one node at a time and taken over by another when that node dies or
//! stops, which resumes the session from the replicated state.

pub mod config;
mod link;
mod local;
mod peer;
mod remote;
mod run;
pub mod status;

pub use config::BridgeConfig;
pub use run::{refresh, spawn};
pub use status::{BridgeStatus, Bridges};
