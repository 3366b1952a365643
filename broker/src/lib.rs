//! raftmq: a clustered MQTT 3.1 / 3.1.1 / 5.0 broker.
//!
//! A PUBLISH walks one way through the files, each layer calling only the
//! ones below it (`listener` and `connection` above the `engine`, the
//! engine above `session`, `topic_tree`, `retained`, `state` and `codec`):
//!
//! 1. `listener/` accepts the socket (connection limits first) and wraps
//!    it in its transport (TCP, TLS, WebSocket, PSK).
//! 2. `connection/mod.rs` reads it and decodes it (`codec/`), and hands
//!    it to `connection/publish.rs`, which checks it (topic alias, topic
//!    name, QoS, retain), asks the engine's policy (`Broker::authorize`),
//!    admits it (memory budget, packet ids) and calls `Broker::publish`.
//! 3. `engine/publish.rs` is the one way in for a message (connections,
//!    the HTTP API, wills and `$SYS` alike): a retained one is stored and
//!    routed as one step (`engine/retain.rs`, the store in `retained.rs`);
//!    it is matched in the topic tree (`topic_tree.rs`, filled by
//!    `engine/subscriptions.rs`), overlapping subscriptions are merged,
//!    and one copy goes to each session (`session/`: QoS windows, the
//!    offline queue). `engine/remote.rs` adds the persistent sessions
//!    other nodes own and the nodes whose routes match.
//! 4. The copies owed to persistent sessions are `state::Command`s
//!    (`state/`), committed as one batch through Raft (`cluster/seam.rs`);
//!    the rest is forwarded to the other nodes (`cluster/forward.rs`).
//! 5. `connection/publish.rs` answers PUBACK/PUBREC once that batch is
//!    committed, in the order the publishes came.
//! 6. Each subscriber's `connection/outbound.rs` writes its session's
//!    copies to its socket (the read ACL again, topic aliases), and
//!    `connection/acks.rs` takes its acknowledgements.
//! 7. On the other nodes, `engine/follow.rs` follows the committed batch
//!    (copies owed to the sessions they own, retained changes) and
//!    `Broker::deliver_forwarded` (`engine/publish.rs`) the forwarded
//!    copies.

pub mod auth;
pub mod backpressure;
pub mod bridge;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod connection;
pub mod engine;
pub mod filter_map;
pub mod http;
pub mod listener;
pub mod memory_budget;
pub mod message;
pub mod passwd;
pub mod reload;
pub mod retained;
pub mod server;
pub mod session;
pub mod state;
pub mod stats;
pub mod sys;
pub mod topic_tree;
