//! What the raftmq broker and its operator must agree on byte for byte,
//! written once: the operator writes files (a password file, the broker's
//! TOML) that the broker reads, so each format lives here and both sides
//! use it.
//!
//! - [`passwd`]: mosquitto's `$7$` password hash (PBKDF2-HMAC-SHA512), the
//!   legacy `$6$` one the broker still reads, and the `user:hash` line.
//! - [`config`]: the listener kinds and the TOML key names of the broker's
//!   configuration that the operator renders.
//! - [`identity`]: who a cluster certificate speaks for
//!   (`raftmq://node/<id>`, `raftmq://admin/<name>`), which the operator and
//!   `raftmq cluster certs` write and every broker checks.
//! - [`certs`]: how both of those issuers make a CA and the certificates
//!   it signs.

pub mod certs;
pub mod config;
pub mod identity;
pub mod passwd;

pub use config::ListenerKind;
