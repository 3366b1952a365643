//! Publishes between nodes: one long-lived bidirectional gRPC stream per
//! peer (the `Forward` service), fed by a bounded queue and sent in
//! batches. A peer that is slow or gone makes its queue fill up; further
//! copies for it are dropped and counted, so a publisher's node never holds
//! unbounded memory for another node. Only copies that need no durability
//! travel here (QoS 0, clean sessions); copies owed to persistent sessions
//! are committed through Raft.
//!
//! Backpressure crosses the stream as it does within a node: the receiver
//! delivers a peer's next copy only once the sessions the last one
//! congested have drained (or stalled), HTTP/2 flow control then holds the sender's
//! stream, its peer queue fills, and a publisher whose copy finds that
//! queue half full waits before it reads on, as for a congested local
//! subscriber.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use raftmq_proto::v1 as pb;
use raftmq_proto::v1::forward_client::ForwardClient;
use smallvec::SmallVec;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Guard;
use super::convert;
use super::metrics::RaftStats;
use super::network::{Network, MAX_MESSAGE_BYTES};
use super::supervisor::RaftHandle;
use crate::backpressure::{self, Drain, Pressure};
use crate::engine::Broker;
use crate::engine::Forward;
use crate::message::SharedMessage;
use crate::session::ShareRef;

/// Copies waiting for one peer before new ones are dropped.
const PEER_QUEUE: usize = 16 * 1024;
/// Copies in one batch on the wire.
const BATCH: usize = 512;
/// Batches in flight on one stream (HTTP/2 flow control does the rest).
const STREAM_WINDOW: usize = 8;

struct Item {
    message: SharedMessage,
    shared: SmallVec<[ShareRef; 1]>,
    in_log: bool,
}

/// The copies waiting for one peer.
struct PeerQueue {
    tx: mpsc::Sender<Item>,
    /// Wakes publishers once the queue is below half full.
    drained: Notify,
}

impl PeerQueue {
    fn congested(&self) -> bool {
        self.tx.max_capacity() - self.tx.capacity() >= PEER_QUEUE / 2
    }

    /// Called as copies leave the queue: wakes waiting publishers once it
    /// is below the mark.
    fn wake_if_drained(&self) {
        if !self.congested() {
            self.drained.notify_waiters();
        }
    }
}

impl Drain for PeerQueue {
    fn must_wait(&self) -> bool {
        self.congested()
    }

    fn drained(&self) -> &Notify {
        &self.drained
    }

    /// Nothing to mark: the queue drains by itself, to the peer or, when
    /// the peer cannot be reached, by dropping.
    fn stalled(&self) {}
}

/// The sending side: a queue and a stream task per peer.
pub struct Forwarder {
    me: u64,
    raft: RaftHandle,
    net: Network,
    stats: RaftStats,
    peers: Mutex<HashMap<u64, Arc<PeerQueue>>>,
}

impl Forwarder {
    pub fn new(me: u64, raft: RaftHandle, net: Network, stats: RaftStats) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            me,
            raft,
            net,
            stats,
            peers: Mutex::new(HashMap::new()),
        })
    }

    fn queue(self: &Arc<Self>, node: u64) -> Arc<PeerQueue> {
        let mut peers = self.peers.lock();
        if let Some(q) = peers.get(&node) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let queue = Arc::new(PeerQueue {
            tx,
            drained: Notify::new(),
        });
        peers.insert(node, queue.clone());
        tokio::spawn(peer_stream(self.clone(), node, queue.clone(), rx));
        queue
    }

    fn address(&self, node: u64) -> Option<String> {
        self.raft.member_addr(node)
    }

    fn dropped(&self, node: u64, n: usize) {
        if n > 0 {
            self.stats
                .forward_dropped
                .with_label_values(&[&node.to_string()])
                .inc_by(n as u64);
        }
    }
}

/// The engine's handle: `Forward` for an `Arc<Forwarder>`.
pub struct ForwardHandle(pub Arc<Forwarder>);

impl Forward for ForwardHandle {
    fn forward(
        &self,
        node: u64,
        message: &SharedMessage,
        shared: SmallVec<[ShareRef; 1]>,
        in_log: bool,
    ) -> Option<Pressure> {
        let item = Item {
            message: message.clone(),
            shared,
            in_log,
        };
        let queue = self.0.queue(node);
        if queue.tx.try_send(item).is_err() {
            self.0.dropped(node, 1);
        }
        queue.congested().then_some(queue as Pressure)
    }
}

/// Keeps one stream to `node` open and feeds it from the queue. While the
/// peer cannot be reached, what is queued for it is dropped (and counted):
/// stale QoS 0 copies delivered late would be worse than none.
async fn peer_stream(
    f: Arc<Forwarder>,
    node: u64,
    queue: Arc<PeerQueue>,
    mut rx: mpsc::Receiver<Item>,
) {
    let mut backoff = Duration::from_millis(50);
    let label = node.to_string();
    loop {
        let stream = match f.address(node) {
            Some(addr) => open(&f.net, &addr).await,
            None => Err(Status::not_found("not a member")),
        };
        let (tx, acks) = match stream {
            Ok(s) => {
                backoff = Duration::from_millis(50);
                s
            }
            Err(e) => {
                tracing::debug!(node, "forward stream not open: {e}");
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                let mut lost = 0;
                loop {
                    tokio::select! {
                        () = &mut wait => break,
                        item = rx.recv() => match item {
                            Some(_) => lost += 1,
                            None => return,
                        },
                    }
                    queue.wake_if_drained();
                }
                f.dropped(node, lost);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        // Acks only tell us the stream is alive; reading them keeps the
        // peer's side from blocking.
        let reader = tokio::spawn(async move {
            let mut acks = acks;
            while let Ok(Some(_)) = acks.message().await {}
        });
        loop {
            let Some(first) = rx.recv().await else {
                reader.abort();
                return;
            };
            let mut items = vec![first];
            while items.len() < BATCH {
                match rx.try_recv() {
                    Ok(i) => items.push(i),
                    Err(_) => break,
                }
            }
            queue.wake_if_drained();
            let n = items.len();
            let batch = pb::ForwardBatch {
                origin: f.me,
                messages: items
                    .into_iter()
                    .map(|i| pb::Forwarded {
                        message: Some(convert::message_to(&i.message)),
                        shared: i
                            .shared
                            .into_iter()
                            .map(|s| pb::SharedTarget {
                                group: s.group.to_string(),
                                filter: s.filter.to_string(),
                            })
                            .collect(),
                        in_log: i.in_log,
                    })
                    .collect(),
            };
            if tx.send(batch).await.is_err() || reader.is_finished() {
                f.dropped(node, n);
                break;
            }
            f.stats
                .forwarded
                .with_label_values(&["out", &label])
                .inc_by(n as u64);
        }
        reader.abort();
    }
}

type Acks = Streaming<pb::ForwardAck>;

async fn open(net: &Network, addr: &str) -> Result<(mpsc::Sender<pb::ForwardBatch>, Acks), Status> {
    let channel = net
        .channel(addr)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut client = ForwardClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(STREAM_WINDOW);
    let resp = tokio::time::timeout(
        Duration::from_secs(2),
        client.stream(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| Status::deadline_exceeded("forward stream"))??;
    Ok((tx, resp.into_inner()))
}

/// The receiving side: delivers what peers forward to local subscribers.
pub struct ForwardService {
    pub broker: Arc<OnceLock<Arc<Broker>>>,
    pub stats: RaftStats,
    pub guard: Guard,
}

#[tonic::async_trait]
impl pb::forward_server::Forward for ForwardService {
    type StreamStream = ReceiverStream<Result<pb::ForwardAck, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // A current member's certificate opens the stream; each batch must
        // then name that member as its origin.
        let sender = self.guard.member(&req, "Forward")?;
        let guard = self.guard.clone();
        let broker = self
            .broker
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("broker starting"))?;
        let stats = self.stats.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_WINDOW);
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                if !sender.allows(batch.origin) {
                    let refused = guard.denied_later(
                        "Forward",
                        &sender,
                        format!(
                            "a forwarded batch for node {} from {sender:?}",
                            batch.origin
                        ),
                    );
                    let _ = tx.send(Err(refused)).await;
                    return;
                }
                let n = batch.messages.len() as u64;
                for f in batch.messages {
                    let message = match convert::message_from(f.message) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(origin = batch.origin, "forwarded message dropped: {e}");
                            continue;
                        }
                    };
                    let shared: SmallVec<[ShareRef; 1]> = f
                        .shared
                        .into_iter()
                        .map(|s| ShareRef {
                            group: s.group.into(),
                            filter: s.filter.into(),
                        })
                        .collect();
                    // The next copy waits until the sessions this one
                    // congested have drained (a batch is larger than half a
                    // session's queue): the sender's stream, then its
                    // queue, then its publishers feel it.
                    for cell in broker.deliver_forwarded(message, &shared, f.in_log) {
                        backpressure::wait_for(&*cell).await;
                    }
                }
                stats
                    .forwarded
                    .with_label_values(&["in", &batch.origin.to_string()])
                    .inc_by(n);
                if tx.send(Ok(pb::ForwardAck { received: n })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
