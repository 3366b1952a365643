//! Starts a broker from its configuration: state, listeners, and the
//! orderly stop.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{Auth, Policy};
use crate::broker::Broker;
use crate::config::{Config, ListenerKind};
use crate::connection::ListenerInfo;
use crate::listener::{spawn_tcp, ConnectionLimit};
use crate::state::MemoryState;

/// A running broker.
pub struct Server {
    pub broker: Arc<Broker>,
    pub local_addrs: Vec<std::net::SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every listener; fails (naming the listener) if one cannot be
    /// bound, so a half-started broker never reports ready.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let hostname = std::env::var("HOSTNAME").ok();
        let node_id = config.node_id(hostname.as_deref());
        let config = Arc::new(config);
        let policy = Policy::load(&config.auth).context("authentication files")?;
        let broker = Broker::new(
            config.clone(),
            node_id,
            Arc::new(MemoryState::default()),
            Auth::new(policy),
        );
        let global = ConnectionLimit::new(config.mqtt.max_connections);
        let mut tasks = Vec::new();
        let mut local_addrs = Vec::new();
        for l in config.effective_listeners() {
            let label = l.label();
            let info = Arc::new(ListenerInfo {
                label: label.clone(),
                max_packet_size: l.max_packet_size.unwrap_or(config.mqtt.max_packet_size),
                use_identity_as_username: l.use_identity_as_username,
            });
            match l.kind {
                ListenerKind::Tcp => {
                    let socket = TcpListener::bind(l.bind)
                        .await
                        .with_context(|| format!("listener {label}: cannot bind {}", l.bind))?;
                    local_addrs.push(socket.local_addr()?);
                    tracing::info!(listener = %label, addr = %l.bind, "listening (mqtt/tcp)");
                    tasks.push(spawn_tcp(
                        broker.clone(),
                        socket,
                        info,
                        global.clone(),
                        ConnectionLimit::new(l.max_connections),
                    ));
                }
                other => anyhow::bail!(
                    "listener {label}: kind {other:?} is not available in this build yet"
                ),
            }
        }
        tasks.push(crate::auth::reload::spawn(
            broker.clone(),
            std::time::Duration::from_secs(2),
        ));
        Ok(Server {
            broker,
            local_addrs,
            tasks,
        })
    }

    /// Stops accepting; open connections end with the runtime.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
