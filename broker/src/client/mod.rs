//! `raftmq pub` and `raftmq sub`: MQTT clients in the broker's own binary,
//! with mosquitto_pub's and mosquitto_sub's options, because the broker
//! image has no shell and no other clients:
//! `kubectl exec demo-0 -- raftmq sub -t '#' -v` works in any pod.
//!
//! The MQTT protocol is rumqttc's (3.1.1 and 5.0); certificate TLS is
//! rustls, TLS-PSK is OpenSSL (as the broker's PSK listener).

pub mod args;
pub mod publish;
pub mod session;
pub mod subscribe;
pub mod transport;

pub use args::{PubArgs, SubArgs};
