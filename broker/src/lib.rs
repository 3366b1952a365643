//! raftmq: a clustered MQTT 3.1 / 3.1.1 / 5.0 broker.
//!
//! A PUBLISH walks one way through the modules: `listener` accepts the
//! socket, `connection` reads and decodes it (`codec`), `router` matches it
//! in the `topic_tree` and hands copies to each `session`, recording in the
//! `state` seam what must be replicated; the subscriber's `connection`
//! drains its session into its socket.

pub mod auth;
pub mod backpressure;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod connection;
pub mod engine;
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
