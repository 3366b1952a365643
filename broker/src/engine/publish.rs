//! One publish to the sessions it goes to: matched in the topic tree,
//! overlapping subscriptions merged, one copy handed to each session (the
//! ones owed to persistent sessions recorded for the log), the rest
//! forwarded to the nodes whose routes match.

use std::cmp::max;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use super::remote::ClusterView;
use super::{Broker, SessionCell};
use crate::auth::acl::{Action, Principal};
use crate::auth::Policy;
use crate::backpressure::Pressure;
use crate::codec::{ByteStr, Publish, QoS};
use crate::message::{stored_size, SharedMessage};
use crate::session::{Delivery, Disposition, ShareRef};
use crate::state::{Command, Ticket};
use crate::topic_tree::{Hit, Hits, SharedGroup, Subscriber};

/// Sends a publish to another node, which delivers it to its own
/// subscribers. Never blocks: a peer that cannot keep up loses copies (and
/// counts them) rather than holding the publisher's memory. Copies owed to
/// persistent sessions never travel this way; they go through Raft.
pub trait Forward: Send + Sync {
    /// `shared`: the shared groups this node was chosen to serve. `in_log`:
    /// a retained message whose store change is in the log; the peer
    /// delivers it to its plain subscribers when it applies that. Returns
    /// the peer's queue when it is congested: the publisher should wait.
    fn forward(
        &self,
        node: u64,
        message: &SharedMessage,
        shared: SmallVec<[ShareRef; 1]>,
        in_log: bool,
    ) -> Option<Pressure>;
}

/// A copy a remote persistent session is owed: client, QoS, retain as
/// published, subscription identifiers (overlaps merged).
pub(super) type Owed<'a> = (&'a ByteStr, QoS, bool, SmallVec<[u32; 1]>);

/// What the cluster view said about one publish.
#[derive(Default)]
struct Remote {
    /// Nodes to forward to, each with the shared groups it serves.
    nodes: SmallVec<[(u64, SmallVec<[ShareRef; 1]>); 4]>,
    /// Shared groups the view gave to another node: not ours to serve.
    elsewhere: SmallVec<[ShareRef; 1]>,
    /// Shared groups the view gave to this node.
    here: SmallVec<[ShareRef; 1]>,
    /// Persistent sessions owned by other nodes that are owed a copy.
    enqueued: usize,
    /// Those sessions (for a QoS 1/2 publish, see `settle.rs`).
    owed: SmallVec<[ByteStr; 4]>,
    /// Those whose copy this publish commits through the log. One may
    /// already be in the local tree: a session moving here is installed
    /// before the view names this node its owner (`follow.rs`), and its
    /// copy then arrives through the log alone, not twice.
    via_log: SmallVec<[ByteStr; 4]>,
}

impl Remote {
    fn node(&mut self, node: u64) -> &mut SmallVec<[ShareRef; 1]> {
        let i = match self.nodes.iter().position(|(n, _)| *n == node) {
            Some(i) => i,
            None => {
                self.nodes.push((node, SmallVec::new()));
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i].1
    }

    /// Whether a local shared group may take this publish.
    fn serves_here(&self, group: &str, filter: &str) -> bool {
        let is = |s: &ShareRef| &*s.group == group && &*s.filter == filter;
        self.here.iter().any(is) || !self.elsewhere.iter().any(is)
    }
}

/// Who publishes: which policy a message answers to, and how its
/// retained copy is kept.
#[derive(Clone, Copy)]
pub enum Publisher<'a> {
    /// A client's PUBLISH: its ACL must let it write the topic.
    Client(Principal<'a>),
    /// The HTTP API, whose caller holds the admin token.
    Admin,
    /// A will, checked against its client's ACL when its CONNECT was.
    Will,
    /// `$SYS`: describes this node alone, so its retained messages are
    /// kept here and never replicated.
    System,
}

/// A publish the policy let through (see [`Broker::authorize`]): the only
/// way to [`Broker::publish`].
#[derive(Debug)]
pub struct Allowed {
    system: bool,
}

/// The ACL does not let the publisher write the topic (counted, logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied;

/// Whether the client of a session may read `topic` under `acl` (`None`:
/// no ACL, everything is readable). The one read check: made as a copy is
/// handed to a session, and again as the copy is written to the client
/// (whoever holds the session then, under the policy in force then).
pub fn may_read(
    acl: Option<&Policy>,
    username: Option<&str>,
    client_id: &str,
    topic: &str,
) -> bool {
    acl.is_none_or(|p| {
        p.may(
            Principal {
                username,
                client_id,
            },
            topic,
            Action::Read,
        )
    })
}

/// One session a publish goes to, after merging overlapping subscriptions.
struct Target<'a> {
    cell: &'a Arc<SessionCell>,
    qos: QoS,
    retain_as_published: bool,
    ids: SmallVec<[u32; 1]>,
    share: Option<ShareRef>,
}

impl<'a> Target<'a> {
    /// A copy for subscriber `s` of a message published at `qos`.
    fn new(
        s: &'a Subscriber<ByteStr, Arc<SessionCell>>,
        qos: QoS,
        share: Option<ShareRef>,
    ) -> Target<'a> {
        Target {
            cell: &s.value,
            qos: s.options.qos.min(qos),
            retain_as_published: s.options.retain_as_published,
            ids: s.identifier.into_iter().collect(),
            share,
        }
    }

    /// The copy of `message` this target gets, and its session.
    fn delivery(self, message: &SharedMessage) -> (&'a Arc<SessionCell>, Delivery) {
        let d = Delivery {
            retain: self.retain_as_published && message.retain,
            message: message.clone(),
            qos: self.qos,
            subscription_ids: self.ids,
            share: self.share.map(Box::new),
            seq: 0,
            redelivery: false,
        };
        (self.cell, d)
    }
}

/// The shared group a copy was chosen from.
fn share_of(group: &SharedGroup<ByteStr, Arc<SessionCell>>) -> ShareRef {
    ShareRef {
        group: group.name.clone(),
        filter: group.filter.clone(),
    }
}

/// What a publish did.
pub struct Routed {
    /// Sessions that were handed (or queued) a copy.
    pub matched: usize,
    /// Persistent sessions its settling found it owed a copy after it was
    /// routed (`settle.rs`); final once `committed` resolves. `None` when
    /// nothing is settled (a single node, a retained publish).
    pub matched_later: Option<Arc<AtomicUsize>>,
    /// Resolves when every copy owed to a persistent session is committed.
    pub committed: Ticket,
    /// Connected sessions and peer queues that are over their
    /// backpressure mark: the publisher should wait for them before it
    /// reads on.
    pub congested: SmallVec<[Pressure; 1]>,
}

impl Broker {
    /// The policy check of a publish: a client's must be one its ACL lets
    /// it write; the others were checked where they came in.
    pub fn authorize(&self, from: Publisher<'_>, topic: &str) -> Result<Allowed, Denied> {
        if let Publisher::Client(who) = from {
            if !self.auth.policy().may(who, topic, Action::Write) {
                self.stats.publish_denied.inc();
                tracing::debug!(%topic, "publish denied (ACL, or a $SYS topic)");
                return Err(Denied);
            }
        }
        Ok(Allowed {
            system: matches!(from, Publisher::System),
        })
    }

    /// The one way in for a message, whoever publishes it (a client, the
    /// HTTP API, a will, `$SYS`): a retained one is stored and routed as
    /// one step (`retain.rs`), any other routed. Delivers it to every
    /// matching session; overlapping subscriptions of one session yield
    /// one copy at the highest QoS, carrying all their subscription
    /// identifiers. The copies owed to persistent sessions (and the
    /// retained change) go to the log as one batch: [`Routed::committed`].
    pub fn publish(&self, message: SharedMessage, allowed: Allowed) -> Routed {
        if !message.retain {
            return self.route(message, Vec::new(), false);
        }
        if allowed.system {
            return self.publish_retained(message, false);
        }
        // Clients and the API are refused a retained publish when retain
        // is off; a will registered before it was turned off goes out
        // plain.
        if !self.config.mqtt.retain_available {
            return self.route(message, Vec::new(), false);
        }
        self.publish_retained(message, true)
    }

    /// [`Broker::publish`], committing `commands` with the copies (one log
    /// entry: a retained message's store change, which other nodes then
    /// apply together with the copies owed to their persistent sessions).
    /// `in_log`: other nodes' plain subscribers get the message when they
    /// apply its retained copy, so it is forwarded only to shared groups.
    pub(crate) fn route(
        &self,
        message: SharedMessage,
        mut commands: Vec<Command>,
        in_log: bool,
    ) -> Routed {
        // Where the view stood before it is read: an answered publish
        // checks that nothing it should have matched came after (a
        // retained one is matched again where its store change is applied).
        let seen = (message.qos != QoS::AtMostOnce && !in_log).then(|| self.followed_index());
        let mut remote = if self.cluster.remote.load(Ordering::Acquire) {
            self.route_remote(&message, &mut commands)
        } else {
            Remote::default()
        };
        let tree = self.local.subscriptions.read();
        let mut targets: SmallVec<[Target<'_>; 8]> = SmallVec::new();
        let mut shared: SmallVec<[Target<'_>; 2]> = SmallVec::new();
        let mut lists = 0usize;
        tree.for_each_match_list(&message.topic, |hits| match hits {
            Hits::Subscribers(list) => {
                lists += 1;
                for s in list {
                    if s.options.no_local && s.key == message.origin {
                        continue;
                    }
                    if remote.via_log.contains(&s.key) {
                        continue;
                    }
                    targets.push(Target::new(s, message.qos, None));
                }
            }
            Hits::Shared(group) => {
                if !remote.serves_here(&group.name, &group.filter) {
                    return;
                }
                if let Some(s) = pick_member(group.rotation(), None) {
                    shared.push(Target::new(s, message.qos, Some(share_of(group))));
                }
            }
        });
        // One list holds each client once: only several can overlap.
        if lists > 1 && targets.len() > 1 {
            merge_overlaps(&mut targets);
        }
        let mut congested = SmallVec::new();
        let matched = targets.len() + shared.len() + remote.enqueued + remote.nodes.len();
        let policy = self.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        for t in targets.into_iter().chain(shared) {
            let (cell, d) = t.delivery(&message);
            if self.deliver_to(cell, d, acl, false, &mut commands) {
                congested.push(cell.clone() as Pressure);
            }
        }
        drop(tree);
        if let Some(f) = self.cluster.forwarder.get() {
            for (node, groups) in remote.nodes {
                if !in_log || !groups.is_empty() {
                    congested.extend(f.forward(node, &message, groups, in_log));
                }
            }
        }
        let mut committed = if commands.is_empty() {
            Ticket::Done(Ok(()))
        } else {
            self.cluster.seam.submit(commands)
        };
        let mut matched_later = None;
        if let Some(seen) = seen {
            let later = Arc::new(AtomicUsize::new(0));
            let owed = std::mem::take(&mut remote.owed);
            committed = self.settle(&message, seen, owed, committed, later.clone());
            matched_later = Some(later);
        }
        Routed {
            matched,
            matched_later,
            committed,
            congested,
        }
    }

    /// The part of a publish that concerns other nodes: a copy through
    /// Raft for each persistent session another node owns, and the nodes
    /// whose routes match (each shared group goes to one node).
    fn route_remote(&self, message: &SharedMessage, commands: &mut Vec<Command>) -> Remote {
        let mut remote = Remote::default();
        let view = self.cluster.view.read();
        for owed in owed_remote(&view, message, &[]) {
            remote.enqueued += 1;
            let client_id = owed.0.clone();
            if message.qos != QoS::AtMostOnce {
                remote.owed.push(client_id.clone());
            }
            if let Some(copy) = self.enqueue(owed, message) {
                commands.push(copy);
                remote.via_log.push(client_id);
            }
        }
        let mut plain: SmallVec<[u64; 4]> = SmallVec::new();
        let mut groups: SmallVec<[(ShareRef, u64); 2]> = SmallVec::new();
        view.route(
            &message.topic,
            |node| plain.push(node),
            |group, filter, node| {
                let share = ShareRef {
                    group: group.clone(),
                    filter: filter.clone(),
                };
                groups.push((share, node));
            },
        );
        drop(view);
        for node in plain {
            remote.node(node);
        }
        for (share, node) in groups {
            if node == self.node_id {
                remote.here.push(share);
            } else {
                remote.elsewhere.push(share.clone());
                remote.node(node).push(share);
            }
        }
        remote
    }

    /// The log's copy of `message` a remote persistent session is owed;
    /// none at QoS 0 (those reach connected clients through forwarding).
    pub(super) fn enqueue(&self, owed: Owed<'_>, message: &SharedMessage) -> Option<Command> {
        let (client_id, qos, rap, ids) = owed;
        (qos != QoS::AtMostOnce).then(|| Command::Enqueue {
            client_id: client_id.clone(),
            seq: self.next_seq(),
            qos,
            retain: rap && message.retain,
            subscription_ids: ids,
            local: false,
            message: message.clone(),
        })
    }

    /// Delivers a publish another node forwarded here: to local
    /// subscribers only, and to the shared groups this node was chosen to
    /// serve. Copies owed to persistent sessions at QoS 1/2 are skipped:
    /// they arrive through Raft, committed. `in_log`: a retained message
    /// the plain subscribers get when its store change is applied here.
    pub fn deliver_forwarded(
        &self,
        message: SharedMessage,
        shared: &[ShareRef],
        in_log: bool,
    ) -> SmallVec<[Arc<SessionCell>; 1]> {
        let tree = self.local.subscriptions.read();
        let mut targets: SmallVec<[Target<'_>; 8]> = SmallVec::new();
        tree.for_each_match(&message.topic, |hit| match hit {
            Hit::Subscriber(s) => {
                if in_log || (s.options.no_local && s.key == message.origin) {
                    return;
                }
                targets.push(Target::new(s, message.qos, None));
            }
            Hit::Shared(group) => {
                let chosen = shared
                    .iter()
                    .any(|r| r.group == group.name && r.filter == group.filter);
                if !chosen {
                    return;
                }
                if let Some(s) = pick_member(group.rotation(), None) {
                    targets.push(Target::new(s, message.qos, Some(share_of(group))));
                }
            }
        });
        if targets.len() > 1 {
            merge_overlaps(&mut targets);
        }
        let policy = self.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        let mut commands = Vec::new();
        let mut congested = SmallVec::new();
        for t in targets {
            let durable_elsewhere = t.share.is_none();
            let (cell, d) = t.delivery(&message);
            if self.deliver_to(cell, d, acl, durable_elsewhere, &mut commands) {
                congested.push(cell.clone());
            }
        }
        drop(tree);
        self.submit(commands);
        congested
    }

    /// Delivers a retained message another node published, as this node
    /// applies its store change (the caller holds the store's lock): to
    /// the local plain subscribers (shared groups had it forwarded). A
    /// persistent session at QoS 1/2 the publisher's node enqueued a copy
    /// for (`enqueued`: from the same log entry) gets that copy instead;
    /// one that node did not know of yet gets this one.
    pub(crate) fn deliver_applied(&self, message: &SharedMessage, enqueued: &[ByteStr]) {
        let tree = self.local.subscriptions.read();
        let mut targets: SmallVec<[Target<'_>; 8]> = SmallVec::new();
        tree.for_each_match(&message.topic, |hit| {
            if let Hit::Subscriber(s) = hit {
                if !(s.options.no_local && s.key == message.origin) {
                    targets.push(Target::new(s, message.qos, None));
                }
            }
        });
        if targets.len() > 1 {
            merge_overlaps(&mut targets);
        }
        let policy = self.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        let mut commands = Vec::new();
        for t in targets {
            let durable_elsewhere = enqueued.contains(&t.cell.client_id);
            let (cell, d) = t.delivery(message);
            // Applied from the log: nobody publishes here to hold back.
            let _ = self.deliver_to(cell, d, acl, durable_elsewhere, &mut commands);
        }
        drop(tree);
        self.submit(commands);
    }

    /// Whether a QoS 1/2 PUBLISH may be taken on: it will be held at least
    /// twice (the engine's copy and the replicated one). A refusal is
    /// counted.
    pub fn admit_publish(&self, p: &Publish) -> bool {
        if p.qos == QoS::AtMostOnce {
            return true;
        }
        let size = stored_size(&p.topic, &p.payload, None, "")
            + p.properties.user_properties.as_wire().len();
        if self.memory.admits(2 * size) {
            return true;
        }
        self.stats.publish_quota_refused.inc();
        tracing::debug!(
            topic = %p.topic,
            held = crate::memory_budget::held_bytes(),
            limit = self.memory.limit(),
            "publish refused: the memory budget is spent"
        );
        false
    }

    /// Whether a QoS 0 copy (or a retained QoS 0 message) may be kept; a
    /// drop is counted.
    pub fn admit_qos0(&self) -> bool {
        if !self.memory.spent() {
            return true;
        }
        self.stats.memory_dropped.inc();
        false
    }

    /// Puts one copy into a session, if the ACL (when there is one) lets
    /// its client read the topic; records what the seam must persist.
    /// `durable_elsewhere`: a copy for a persistent session at QoS 1/2
    /// was enqueued through Raft by the publisher's node; skip it here.
    /// Returns whether the session is now congested (see
    /// [`crate::session::Session::congested`]).
    pub(crate) fn deliver_to(
        &self,
        cell: &SessionCell,
        mut d: Delivery,
        acl: Option<&Policy>,
        durable_elsewhere: bool,
        commands: &mut Vec<Command>,
    ) -> bool {
        let qos = d.qos;
        let retain = d.retain;
        // Past the memory budget QoS 0 copies go (QoS 1/2 ones were
        // admitted with their publish, and are never dropped for memory).
        if qos == QoS::AtMostOnce && !self.admit_qos0() {
            self.stats.publish_dropped.inc();
            return false;
        }
        let mut s = cell.session.lock();
        if durable_elsewhere && qos != QoS::AtMostOnce && s.is_persistent() {
            return false;
        }
        // A session restored from the log carries the username it last
        // connected with (replicated with its claim).
        if !may_read(
            acl,
            s.username.as_deref(),
            &cell.client_id,
            &d.message.topic,
        ) {
            return false;
        }
        if d.seq == 0 {
            d.seq = self.next_seq();
        }
        // A second reference only for a copy the seam must persist.
        let persistent = s.is_persistent() && qos != QoS::AtMostOnce;
        let message = persistent.then(|| d.message.clone());
        let ids = if persistent {
            d.subscription_ids.clone()
        } else {
            SmallVec::new()
        };
        let (disposition, seq) = s.deliver(d);
        let congested = s.congested();
        drop(s);
        match disposition {
            Disposition::Sent => cell.signal.wake(),
            Disposition::Dropped => self.stats.publish_dropped.inc(),
            Disposition::Queued | Disposition::Discarded => {}
        }
        if let Some(message) =
            message.filter(|_| matches!(disposition, Disposition::Sent | Disposition::Queued))
        {
            commands.push(Command::Enqueue {
                client_id: cell.client_id.clone(),
                seq,
                qos,
                retain,
                subscription_ids: ids,
                local: true,
                message,
            });
        }
        congested
    }

    /// Puts a copy another node enqueued through Raft into the local
    /// session that owns it (already committed: nothing to record). A copy
    /// the ACL does not let the client read is acknowledged away.
    pub(crate) fn deliver_committed(&self, cell: &SessionCell, d: Delivery) {
        let seq = d.seq;
        let policy = self.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        let mut s = cell.session.lock();
        if !may_read(
            acl,
            s.username.as_deref(),
            &cell.client_id,
            &d.message.topic,
        ) {
            drop(s);
            self.record_acks(&cell.client_id, [seq].into_iter());
            return;
        }
        let (disposition, _) = s.deliver(d);
        drop(s);
        match disposition {
            Disposition::Sent => cell.signal.wake(),
            Disposition::Queued => {}
            Disposition::Dropped | Disposition::Discarded => {
                self.stats.publish_dropped.inc();
                self.record_acks(&cell.client_id, [seq].into_iter());
            }
        }
    }

    /// Gives copies that a departing shared-subscription member left
    /// unacknowledged to another member of the same group.
    pub(crate) fn hand_over(&self, deliveries: Vec<Delivery>, from: &ByteStr, now: Instant) {
        if deliveries.is_empty() {
            return;
        }
        let tree = self.local.subscriptions.read();
        let policy = self.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        let mut commands = Vec::new();
        for mut d in deliveries {
            let Some(share) = d.share.clone() else {
                continue;
            };
            if d.message.is_expired(now) {
                continue;
            }
            let member = tree
                .shared_group(&share.group, &share.filter)
                .and_then(|g| pick_member(g.rotation(), Some(from)));
            match member {
                Some(m) => {
                    d.qos = m.options.qos.min(d.message.qos);
                    d.subscription_ids = m.identifier.into_iter().collect();
                    // Nobody publishes here: no one to hold back.
                    let _ = self.deliver_to(&m.value, d, acl, false, &mut commands);
                }
                None => self.stats.publish_dropped.inc(),
            }
        }
        drop(tree);
        self.submit(commands);
    }
}

/// The persistent sessions other nodes own that `message` owes a copy, one
/// per session (overlapping subscriptions merged), but those in `skip`.
pub(super) fn owed_remote<'v>(
    view: &'v ClusterView,
    message: &SharedMessage,
    skip: &[ByteStr],
) -> SmallVec<[Owed<'v>; 4]> {
    let mut owed: SmallVec<[Owed<'_>; 4]> = SmallVec::new();
    view.remote_sessions(&message.topic, |s| {
        if s.options.no_local && *s.client_id == message.origin {
            return;
        }
        if skip.contains(s.client_id) {
            return;
        }
        let qos = s.options.qos.min(message.qos);
        let rap = s.options.retain_as_published;
        match owed.iter_mut().find(|o| o.0 == s.client_id) {
            Some(o) => {
                o.1 = max(o.1, qos);
                o.2 |= rap;
                o.3.extend(s.identifier);
            }
            None => owed.push((s.client_id, qos, rap, s.identifier.into_iter().collect())),
        }
    });
    owed
}

/// The next live member in rotation (not `exclude`); failing that, the
/// first other member, whose offline session will queue the copy.
fn pick_member<'a>(
    rotation: impl Iterator<Item = &'a Subscriber<ByteStr, Arc<SessionCell>>>,
    exclude: Option<&ByteStr>,
) -> Option<&'a Subscriber<ByteStr, Arc<SessionCell>>> {
    let mut fallback = None;
    for m in rotation {
        if exclude == Some(&m.key) {
            continue;
        }
        if m.value.is_live() {
            return Some(m);
        }
        fallback.get_or_insert(m);
    }
    fallback
}

/// Merges targets of the same session: highest QoS, all identifiers.
fn merge_overlaps(targets: &mut SmallVec<[Target<'_>; 8]>) {
    targets.sort_unstable_by_key(|t| Arc::as_ptr(t.cell) as usize);
    let mut merged: SmallVec<[Target<'_>; 8]> = SmallVec::with_capacity(targets.len());
    for t in targets.drain(..) {
        match merged.last_mut() {
            Some(last) if Arc::ptr_eq(last.cell, t.cell) => {
                last.qos = max(last.qos, t.qos);
                last.retain_as_published |= t.retain_as_published;
                last.ids.extend(t.ids);
            }
            _ => merged.push(t),
        }
    }
    *targets = merged;
}
