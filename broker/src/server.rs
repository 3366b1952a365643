//! Starts a broker from its configuration: state, listeners, reloaders, and
//! the orderly stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{Auth, Policy};
use crate::bridge::{BridgeSet, Bridges};
use crate::cluster::Cluster;
use crate::config::{Config, ListenerConfig, ListenerKind};
use crate::connection::ListenerInfo;
use crate::engine::Broker;
use crate::listener::tls::{ReloadableTls, TlsFiles};
use crate::listener::{accept, ConnectionLimit, Transport};
use crate::reload::FileWatch;

/// A running broker.
pub struct Server {
    pub broker: Arc<Broker>,
    pub cluster: Cluster,
    pub local_addrs: Vec<std::net::SocketAddr>,
    pub http_addr: Option<std::net::SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    bridges: Arc<BridgeSet>,
}

/// How often mounted files are checked for a new version.
const WATCH_PERIOD: Duration = Duration::from_secs(2);

impl Server {
    /// Binds every listener; fails (naming the listener) if one cannot be
    /// bound or its files cannot be read, so a half-started broker never
    /// reports ready.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let hostname = std::env::var("HOSTNAME").ok();
        let node_id = config.node_id(hostname.as_deref());
        let config = Arc::new(config);
        let policy = Policy::load(&config.auth).context("authentication files")?;
        let mut cluster = Cluster::start(&config, node_id).await.context("cluster")?;
        let broker = Broker::new(
            config.clone(),
            node_id,
            cluster.seam.clone(),
            Auth::new(policy),
        );
        tracing::info!(
            bytes = broker.memory.limit(),
            source = ?broker.memory.source,
            "memory budget for held messages"
        );
        let bridges = Arc::new(Bridges::new(&broker.stats.registry));
        // Validated at load; read again here, as it is now.
        let bridge_configs = config.all_bridges().map_err(anyhow::Error::msg)?;
        for b in &bridge_configs {
            broker.set_queue_bound(&b.local_clientid(), b.max_queued_messages);
        }
        cluster.attach(&broker)?;
        let global = ConnectionLimit::new(config.mqtt.max_connections);
        let mut tasks = Vec::new();
        let mut local_addrs = Vec::new();
        let mut watch = FileWatch::new();
        {
            let broker = broker.clone();
            let files = config
                .auth
                .password_file
                .iter()
                .chain(config.auth.acl_file.iter())
                .cloned()
                .collect();
            watch.add(files, move |why| {
                crate::auth::reload::reload(&broker.auth, &broker.config.auth, why)
            });
        }
        for l in config.effective_listeners() {
            let label = l.label();
            let transport =
                transport(&l, &mut watch).with_context(|| format!("listener {label}"))?;
            let socket = TcpListener::bind(l.bind)
                .await
                .with_context(|| format!("listener {label}: cannot bind {}", l.bind))?;
            local_addrs.push(socket.local_addr()?);
            tracing::info!(listener = %label, addr = %l.bind, kind = ?l.kind, "listening");
            let info = Arc::new(ListenerInfo {
                connections: broker
                    .stats
                    .listener_connections
                    .with_label_values(&[&label]),
                clients: broker.stats.listener_clients.with_label_values(&[&label]),
                label,
                max_packet_size: l.max_packet_size.unwrap_or(config.mqtt.max_packet_size),
                use_identity_as_username: l.use_identity_as_username,
            });
            tasks.push(accept::spawn(
                broker.clone(),
                socket,
                info,
                Arc::new(transport),
                global.clone(),
                ConnectionLimit::new(l.max_connections),
            ));
        }
        let (bridge_set, placing) =
            BridgeSet::start(&broker, &bridges, cluster.standing(), bridge_configs);
        tasks.push(placing);
        watch_bridges(&mut watch, &config, &bridge_set);
        tasks.push(watch.spawn(WATCH_PERIOD));
        broker
            .health
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
        let mut http_addr = None;
        if let Some(bind) = config.http.bind {
            let (addr, task) = crate::http::spawn(broker.clone(), bridges.clone(), bind)
                .await
                .with_context(|| format!("HTTP: cannot bind {bind}"))?;
            tracing::info!(%addr, "HTTP listening (/metrics, /healthz, /readyz, /api/v1)");
            http_addr = Some(addr);
            tasks.push(task);
        }
        tasks.extend(crate::sys::spawn(broker.clone()));
        Ok(Server {
            broker,
            cluster,
            local_addrs,
            http_addr,
            tasks,
            bridges: bridge_set,
        })
    }

    /// Stops accepting; open connections end with the runtime.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.bridges.stop();
    }
}

/// Reloads the bridges when `bridges_file` changes, and reconnects a
/// bridge whose own files (password, certificates, key) change: a rotated
/// credential is used at once (`BridgeSet::apply`).
fn watch_bridges(watch: &mut FileWatch, config: &Arc<Config>, set: &Arc<BridgeSet>) {
    if config.bridges_file.is_none() && set.files().is_empty() {
        return;
    }
    let (listed, file) = (set.clone(), config.bridges_file.clone());
    let files = move || file.iter().cloned().chain(listed.files()).collect();
    let (set, config) = (set.clone(), config.clone());
    watch.add_listed(files, move |why| match config.all_bridges() {
        Ok(all) => {
            tracing::info!(file = ?config.bridges_file, "bridges reloaded ({why})");
            set.apply(all);
        }
        Err(e) => tracing::error!("bridges not reloaded ({why}), the running ones stay: {e}"),
    });
}

/// Builds a listener's transport and registers its files for reload.
fn transport(l: &ListenerConfig, watch: &mut FileWatch) -> anyhow::Result<Transport> {
    let tls = || -> anyhow::Result<Arc<ReloadableTls>> {
        let files = TlsFiles::from_listener(l).context("certfile and keyfile are required")?;
        Ok(ReloadableTls::new(files, Vec::new())?)
    };
    let watch_tls = |watch: &mut FileWatch, tls: &Arc<ReloadableTls>| {
        let t = tls.clone();
        watch.add(tls.files().paths(), move |why| match t.reload() {
            Ok(()) => tracing::info!("certificates reloaded ({why})"),
            Err(e) => tracing::error!("certificates not reloaded ({why}), old ones stay: {e}"),
        });
    };
    Ok(match l.kind {
        ListenerKind::Tcp => Transport::Tcp,
        ListenerKind::Ws => Transport::Ws {
            path: l.path.clone(),
        },
        ListenerKind::Tls => {
            let t = tls()?;
            watch_tls(watch, &t);
            Transport::Tls(t)
        }
        ListenerKind::Wss => {
            let t = tls()?;
            watch_tls(watch, &t);
            Transport::Wss {
                tls: t,
                path: l.path.clone(),
            }
        }
        #[cfg(feature = "psk")]
        ListenerKind::Psk => {
            let path = l.psk_file.clone().context("psk_file is required")?;
            let psk = crate::listener::psk::PskAcceptor::new(path, l.psk_hint.as_deref())?;
            let p = psk.clone();
            watch.add(vec![psk.path().to_path_buf()], move |why| {
                match p.reload() {
                    Ok(()) => tracing::info!("PSK file reloaded ({why})"),
                    Err(e) => tracing::error!("PSK file not reloaded ({why}), old keys stay: {e}"),
                }
            });
            Transport::Psk(psk)
        }
        #[cfg(not(feature = "psk"))]
        ListenerKind::Psk => anyhow::bail!("this build has no TLS-PSK support (feature `psk`)"),
    })
}
