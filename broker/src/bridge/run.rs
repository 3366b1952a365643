//! One bridge's life on this node: it runs while this node holds the
//! bridge's claim (`claim.rs`; as committed, and while this node is in
//! touch with a leader and not draining); it connects to
//! the remote first and to its own session here second (so that while the
//! remote is away, outgoing messages wait in the session's queue, bounded
//! by `max_queued_messages`), pumps until either side fails, and tries
//! again after `restart_timeout`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::link::{Link, LinkEnd, Side};
use super::peer::Peer;
use super::status::{BridgeStatus, Bridges};
use super::{local, remote};
use crate::cluster::Standing;
use crate::codec::{ByteStr, Connect, Packet, Properties, Protocol, QoS, SubOptions, Subscribe};
use crate::config::bridge::BridgeConfig;
use crate::engine::{Broker, Placement, Publisher};
use crate::message::{Message, MessageParts};

/// How long either side has to answer CONNECT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Copies in flight to the remote at most (its Receive Maximum may lower
/// it); the local session's own window applies as well.
const WINDOW: u16 = 1000;
/// What we let the remote have in flight to us (MQTT 5).
const RECEIVE_MAXIMUM: u16 = 100;
/// Copies in flight to a 3.1.1 remote, which cannot say how many it takes:
/// mosquitto's default `max_inflight_messages`. Past its limit mosquitto
/// drops an incoming QoS 2 message yet answers PUBREC (3.1.1 has no
/// reason code to refuse with), so a larger burst (a bridge taken over
/// with a backlog) would lose messages.
const WINDOW_V311: u16 = 20;

/// The bridges running on this node (each waiting for its claim, or
/// running), changed as a whole by [`BridgeSet::apply`].
pub struct BridgeSet {
    broker: Arc<Broker>,
    bridges: Arc<Bridges>,
    runners: parking_lot::Mutex<HashMap<String, Running>>,
}

/// A bridge as started: its settings, what its files held then, its task.
struct Running {
    config: BridgeConfig,
    files: Vec<Option<Vec<u8>>>,
    task: JoinHandle<()>,
}

/// What `config`'s files hold now (`None`: unreadable, which its next
/// connection attempt reports).
fn file_contents(config: &BridgeConfig) -> Vec<Option<Vec<u8>>> {
    config
        .files()
        .iter()
        .map(|p| std::fs::read(p).ok())
        .collect()
}

impl BridgeSet {
    /// Starts `configs`, and their placement (`claim.rs`).
    pub fn start(
        broker: &Arc<Broker>,
        bridges: &Arc<Bridges>,
        standing: watch::Receiver<Standing>,
        configs: Vec<BridgeConfig>,
    ) -> (Arc<BridgeSet>, JoinHandle<()>) {
        let set = Arc::new(BridgeSet {
            broker: broker.clone(),
            bridges: bridges.clone(),
            runners: parking_lot::Mutex::new(HashMap::new()),
        });
        set.apply(configs);
        let placing = super::claim::spawn(broker.clone(), bridges.clone(), standing);
        (set, placing)
    }

    /// Makes `configs` the bridges: one whose settings changed reconnects
    /// with the new ones, a new one starts, a removed one stops; the others
    /// are not touched. A removed bridge's session stays with what it has
    /// queued (the bridge added again under its name resumes it), but
    /// leaves every filter, so it queues nothing more; one whose `out`
    /// rules changed leaves the filters no rule names any more. Done here
    /// by the node that holds the session (the last to run the bridge),
    /// and again by whichever node connects it next (`connect_local`).
    /// The settings include what its password, certificate and key files
    /// hold: a rotated credential is used at once, so that a wrong one
    /// shows now (the bridge down) rather than at the next network fault,
    /// and a revoked one is no longer relied on.
    pub fn apply(&self, configs: Vec<BridgeConfig>) {
        let mut runners = self.runners.lock();
        let keep: HashSet<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        let removed: Vec<String> = runners
            .keys()
            .filter(|n| !keep.contains(n.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(r) = runners.remove(&name) {
                r.task.abort();
                leave_stale_filters(&self.broker, &r.config.local_clientid(), &[]);
            }
            self.bridges.remove(&name);
            tracing::info!(bridge = %name, "bridge removed: stopped (its session stays, subscribed to nothing)");
        }
        for config in configs {
            let files = file_contents(&config);
            if runners
                .get(&config.name)
                .is_some_and(|r| r.config == config && r.files == files)
            {
                continue;
            }
            leave_stale_filters(
                &self.broker,
                &config.local_clientid(),
                &config.local_filters(),
            );
            let name = config.name.clone();
            if let Some(r) = runners.remove(&name) {
                r.task.abort();
                let what = if r.config == config {
                    "bridge credentials changed"
                } else {
                    "bridge settings changed"
                };
                tracing::info!(bridge = %name, "{what}: reconnecting");
            }
            self.broker
                .set_queue_bound(&config.local_clientid(), config.max_queued_messages);
            let status = self.bridges.add(config.clone());
            let runner = Runner {
                broker: self.broker.clone(),
                status,
                placement: self.broker.placement(),
                contact: self.broker.health.leader_contact.subscribe(),
                notified: None,
            };
            let task = tokio::spawn(runner.run());
            runners.insert(
                name,
                Running {
                    config,
                    files,
                    task,
                },
            );
        }
    }

    /// The files the bridges read at each connection (for the file watch:
    /// a change reconnects the bridge, see [`BridgeSet::apply`]).
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        self.runners
            .lock()
            .values()
            .flat_map(|r| r.config.files())
            .collect()
    }

    /// Stops every bridge (the server stops).
    pub fn stop(&self) {
        for r in self.runners.lock().values() {
            r.task.abort();
        }
    }
}

/// Unsubscribes the bridge session `client_id` from the filters not in
/// `keep`, if this node holds it.
fn leave_stale_filters(broker: &Broker, client_id: &str, keep: &[String]) {
    let gone = broker.unsubscribe_unless(client_id, |f| keep.iter().any(|k| k == f));
    if !gone.is_empty() {
        tracing::info!(%client_id, ?gone, "bridge session unsubscribed from filters no out rule names");
    }
}

struct Runner {
    broker: Arc<Broker>,
    status: Arc<BridgeStatus>,
    /// The bridges' claims as committed.
    placement: watch::Receiver<Placement>,
    /// Whether this node is in contact with a leader in charge.
    contact: watch::Receiver<bool>,
    /// The state last published on the notification topic.
    notified: Option<bool>,
}

/// Whether this node runs bridge `name`: it holds the committed claim,
/// is not draining, and is in contact with a leader in charge
/// (`Health::leader_contact`).
///
/// Exactly one node at a time, and how long two may overlap: a claim
/// moves only by a new holder's claim committed by a leader. While the
/// holder is reachable it sees that claim committed (or loses contact
/// first) and stops at once (the runner and the pump wake on both). When
/// it is cut off (`E`: the election timeout):
/// - a follower holder loses contact `E` after its leader's last
///   AppendEntries reached it, so about `E` after the cut, while the
///   leader moves its bridges only once its probes have gone unanswered
///   for `2E` (at least 1 s) since the first unanswered one, sent after
///   the cut (`cluster/liveness.rs`): it has stopped `E` before;
/// - a leader holder loses contact `E` after a quorum last acknowledged
///   it, while the others elect a new leader (which may move its bridges
///   at its first unanswered probe, `cluster/liveness.rs`) no earlier than
///   openraft's lease, `2E` after that: it has stopped `E` before.
///
/// So no two nodes run a bridge at once, short of a clock or a scheduler
/// stalled for `E`. Not covered: a follower cut off together with a
/// stale leader (a minority of two in a cluster of five or more) keeps
/// hearing it, so keeps running until the partition heals. The remote
/// has a view of its own: until it notices the old connection gone (its
/// keepalive, or the new one taking over the same `remote_clientid`), it
/// may hold both.
fn holds_claim(broker: &Broker, placement: &watch::Receiver<Placement>, name: &str) -> bool {
    placement.borrow().holder(name) == Some(broker.node_id)
        && !broker.is_draining()
        && *broker.health.leader_contact.borrow()
}

impl Runner {
    fn config(&self) -> &BridgeConfig {
        &self.status.config
    }

    fn holds_claim(&self) -> bool {
        holds_claim(&self.broker, &self.placement, &self.config().name)
    }

    async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut next_address = 0usize;
        loop {
            self.wait_for_claim().await;
            let started = Instant::now();
            match self.connect(&mut next_address).await {
                Ok(link) => {
                    let end = self.pump(link).await;
                    tracing::warn!(bridge = %self.config().name, "bridge down: {end}");
                    // A link that held for a while starts the backoff over.
                    if started.elapsed() > Duration::from_secs(self.config().restart_timeout.cap) {
                        failures = 0;
                    }
                }
                Err(e) => {
                    tracing::warn!(bridge = %self.config().name, "bridge cannot connect: {e:#}");
                }
            }
            self.status.set_connected(None);
            self.notify(false);
            self.status.reconnects.inc();
            if !self.holds_claim() {
                continue;
            }
            let wait = self.backoff(failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = self.placement.changed() => {}
            }
        }
    }

    /// Waits until this node runs the bridge.
    async fn wait_for_claim(&mut self) {
        if !self.holds_claim() {
            self.status.set_running_here(false);
            tracing::debug!(bridge = %self.config().name, "bridge runs elsewhere (or nowhere yet)");
        }
        while !self.holds_claim() {
            tokio::select! {
                _ = self.placement.changed() => {}
                _ = self.contact.changed() => {}
                // A drain's end is not watched.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if !self.status.is_running_here() {
            self.status.set_running_here(true);
            tracing::info!(bridge = %self.config().name, "this node runs the bridge");
        }
    }

    /// mosquitto's `restart_timeout base cap`: doubling from base, capped,
    /// with jitter so that bridges of many sites do not retry in step.
    fn backoff(&self, failures: u32) -> Duration {
        let b = self.config().restart_timeout;
        if b.base == b.cap {
            return Duration::from_secs(b.cap);
        }
        let top = b.base.saturating_mul(1u64 << failures.min(16)).min(b.cap);
        let ms = rand::random_range(b.base * 1000..=top * 1000);
        Duration::from_millis(ms)
    }

    /// The remote first (tried in order, or round robin), then this
    /// broker's session; subscribes both.
    async fn connect(&self, next_address: &mut usize) -> anyhow::Result<(Side, Side, String)> {
        let c = self.config();
        let n = c.addresses.len();
        let start = if c.round_robin { *next_address % n } else { 0 };
        let mut last = None;
        for i in 0..n {
            let address = &c.addresses[(start + i) % n];
            if c.round_robin {
                *next_address = start + i + 1;
            }
            match self.connect_remote(address).await {
                Ok(peer) => {
                    let unsaid = if peer.protocol.is_v5() {
                        u16::MAX
                    } else {
                        WINDOW_V311
                    };
                    let window = peer
                        .connack
                        .properties
                        .receive_maximum
                        .unwrap_or(unsaid)
                        .min(WINDOW);
                    let remote = Side::new(peer, false);
                    let local = self.connect_local(window).await?;
                    return Ok((local, remote, address.to_string()));
                }
                Err(e) => {
                    tracing::debug!(bridge = %c.name, %address, "{e:#}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no address")))
    }

    async fn connect_remote(
        &self,
        address: &crate::config::bridge::Address,
    ) -> anyhow::Result<Peer> {
        let c = self.config();
        let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "raftmq".to_string());
        let password = match (&c.remote_password, &c.remote_password_file) {
            (Some(p), _) => Some(Bytes::from(p.clone())),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("remote_password_file {}", file.display()))?;
                Some(Bytes::from(text.trim_end_matches(['\n', '\r']).to_string()))
            }
            (None, None) => None,
        };
        let v5 = c.protocol.is_v5();
        let mut properties = Properties::default();
        if v5 {
            properties.receive_maximum = Some(RECEIVE_MAXIMUM);
            if !c.clean_start {
                properties.session_expiry_interval = Some(u32::MAX);
            }
        }
        let connect = Connect {
            protocol: c.protocol,
            clean_start: c.clean_start,
            keep_alive: c.keepalive_interval,
            client_id: ByteStr::from(c.remote_clientid(&hostname)),
            will: None,
            username: c.remote_username.as_deref().map(ByteStr::from),
            password,
            properties,
        };
        // mosquitto's try_private for 3.1.1: the level's top bit says
        // "a bridge", and a mosquitto remote then sends it none of its own
        // messages back. A broker that does not know it refuses with 0x01;
        // mosquitto then connects without it, and so do we.
        let private = c.try_private && !v5;
        let stream = remote::open(address, c.tls.as_ref()).await?;
        let level = private.then_some(0x80 | Protocol::V311.level());
        match Peer::connect(stream, connect.clone(), level, HANDSHAKE_TIMEOUT).await {
            Err(super::peer::PeerError::Refused(1)) if private => {
                let stream = remote::open(address, c.tls.as_ref()).await?;
                let mut peer = Peer::connect(stream, connect, None, HANDSHAKE_TIMEOUT).await?;
                self.subscribe_remote(&mut peer)?;
                Ok(peer)
            }
            Ok(mut peer) => {
                self.subscribe_remote(&mut peer)?;
                Ok(peer)
            }
            Err(e) => Err(e).with_context(|| format!("{address}")),
        }
    }

    fn subscribe_remote(&self, peer: &mut Peer) -> anyhow::Result<()> {
        let c = self.config();
        let filters: Vec<_> = c
            .topics
            .iter()
            .filter(|t| t.direction.incoming())
            .map(|t| {
                let options = SubOptions {
                    qos: t.qos,
                    // MQTT 5 loop prevention: what we publish there does not
                    // come back.
                    no_local: c.try_private || t.direction.outgoing(),
                    retain_as_published: true,
                    retain_handling: 0,
                };
                (ByteStr::from(t.remote_filter()), options)
            })
            .collect();
        if filters.is_empty() {
            return Ok(());
        }
        let subscribe = Subscribe {
            packet_id: 1,
            filters,
            properties: Properties::default(),
        };
        peer.queue(&Packet::Subscribe(subscribe))?;
        Ok(())
    }

    /// The bridge's persistent session on this broker, subscribed to the
    /// `out` topics (no-local: what the bridge brings in never goes back).
    async fn connect_local(&self, window: u16) -> anyhow::Result<Side> {
        let c = self.config();
        let connect = Connect {
            protocol: Protocol::V5,
            clean_start: false,
            keep_alive: 0,
            client_id: ByteStr::from(c.local_clientid()),
            will: None,
            username: None,
            password: None,
            properties: Properties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(window),
                ..Properties::default()
            },
        };
        let stream = local::open(&self.broker, &c.local_clientid());
        let mut peer = Peer::connect(stream, connect, None, self.broker.commit_wait())
            .await
            .context("this broker refused the bridge's session")?;
        // The session is held here now: rules removed while another node
        // held it (or while this one was down) leave their filters.
        leave_stale_filters(&self.broker, &c.local_clientid(), &c.local_filters());
        let filters: Vec<_> = c
            .topics
            .iter()
            .filter(|t| t.direction.outgoing())
            .map(|t| {
                let options = SubOptions {
                    qos: t.qos,
                    no_local: true,
                    retain_as_published: true,
                    // Retained messages once per new subscription, not at
                    // every reconnect of the resumed session.
                    retain_handling: 1,
                };
                (ByteStr::from(t.local_filter()), options)
            })
            .collect();
        if !filters.is_empty() {
            peer.queue(&Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters,
                properties: Properties::default(),
            }))?;
        }
        Ok(Side::new(peer, true))
    }

    async fn pump(&mut self, (local, remote, address): (Side, Side, String)) -> LinkEnd {
        tracing::info!(bridge = %self.config().name, %address, "bridge connected");
        self.status.set_connected(Some(address));
        self.notify(true);
        let status = self.status.clone();
        let broker = self.broker.clone();
        let placement = self.placement.clone();
        let mut link = Link {
            config: &status.config,
            status: &status,
            local,
            remote,
        };
        let name = status.config.name.clone();
        let end = link
            .run(self.placement.clone(), self.contact.clone(), || {
                holds_claim(&broker, &placement, &name)
            })
            .await;
        let Link { local, remote, .. } = link;
        tokio::join!(local.peer.close(), remote.peer.close());
        end
    }

    /// mosquitto's notifications: retained `1` / `0` on the bridge's
    /// state topic, on this broker (`$SYS` is never replicated: each node
    /// tells its own view; the node running the bridge says `1`).
    fn notify(&mut self, up: bool) {
        if !self.config().notifications || self.notified == Some(up) {
            return;
        }
        self.notified = Some(up);
        let topic = self.config().notification_topic();
        let message = Arc::new(Message::new(MessageParts {
            topic: ByteStr::from(topic.clone()),
            payload: Bytes::from_static(if up { b"1" } else { b"0" }),
            qos: QoS::AtLeastOnce,
            retain: true,
            origin: ByteStr::default(),
            expires_at: None,
            properties: None,
            received_at: Instant::now(),
        }));
        match self.broker.authorize(Publisher::System, &topic) {
            Ok(allowed) => drop(self.broker.publish(message, allowed)),
            Err(_) => {
                tracing::warn!(bridge = %self.config().name, %topic, "notification not published")
            }
        }
    }
}

/// Brings every bridge's queue figures up to date (at each scrape): its
/// session's queued and in-flight copies on this node.
pub fn refresh(broker: &Broker, bridges: &Bridges) {
    for status in bridges.all() {
        if let Some(cell) = broker.session(&status.config.local_clientid()) {
            let s = cell.session.lock();
            status.set_queue(s.queued_len() + s.inflight_len(), s.dropped);
        }
    }
}
