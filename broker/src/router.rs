//! One publish to the sessions it goes to; subscriptions in and out of the
//! tree; retained messages set and served.

use std::cmp::max;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::auth::acl::{Action, Principal};
use crate::auth::Policy;
use crate::broker::{Broker, SessionCell};
use crate::codec::{ByteStr, QoS, SubOptions};
use crate::message::SharedMessage;
use crate::session::{Delivery, Disposition, ShareRef};
use crate::state::{Command, Ticket};
use crate::topic_tree::{Hits, ParsedFilter, Subscriber};

/// One session a publish goes to, after merging overlapping subscriptions.
struct Target<'a> {
    cell: &'a Arc<SessionCell>,
    qos: QoS,
    retain_as_published: bool,
    ids: SmallVec<[u32; 1]>,
    share: Option<ShareRef>,
}

/// What a publish did.
pub struct Routed {
    /// Sessions that were handed (or queued) a copy.
    pub matched: usize,
    /// Resolves when every copy owed to a persistent session is committed.
    pub committed: Ticket,
    /// Connected sessions that are over their backpressure mark: the
    /// publisher should wait for them before it reads on.
    pub congested: SmallVec<[Arc<SessionCell>; 1]>,
}

impl Broker {
    /// Delivers `message` to every matching session. Overlapping
    /// subscriptions of one session yield one copy at the highest QoS,
    /// carrying all their subscription identifiers.
    pub fn publish(&self, message: SharedMessage) -> Routed {
        let tree = self.subscriptions.read();
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
                    targets.push(Target {
                        cell: &s.value,
                        qos: s.options.qos.min(message.qos),
                        retain_as_published: s.options.retain_as_published,
                        ids: s.identifier.into_iter().collect(),
                        share: None,
                    });
                }
            }
            Hits::Shared(group) => {
                if let Some(s) = pick_member(group.rotation(), None) {
                    shared.push(Target {
                        cell: &s.value,
                        qos: s.options.qos.min(message.qos),
                        retain_as_published: s.options.retain_as_published,
                        ids: s.identifier.into_iter().collect(),
                        share: Some(ShareRef {
                            group: group.name.clone(),
                            filter: group.filter.clone(),
                        }),
                    });
                }
            }
        });
        // One list holds each client once: only several can overlap.
        if lists > 1 && targets.len() > 1 {
            merge_overlaps(&mut targets);
        }
        let mut commands = Vec::new();
        let mut congested = SmallVec::new();
        let matched = targets.len() + shared.len();
        let policy = self.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        for t in targets.into_iter().chain(shared) {
            let d = Delivery {
                retain: t.retain_as_published && message.retain,
                message: message.clone(),
                qos: t.qos,
                subscription_ids: t.ids,
                share: t.share,
                seq: 0,
            };
            if self.deliver_to(t.cell, d, acl, &mut commands) {
                congested.push(t.cell.clone());
            }
        }
        drop(tree);
        let committed = if commands.is_empty() {
            Ticket::Done(Ok(()))
        } else {
            self.seam.submit(commands)
        };
        Routed {
            matched,
            committed,
            congested,
        }
    }

    /// Puts one copy into a session, if the ACL (when there is one) lets
    /// its client read the topic; records what the seam must persist.
    /// Returns whether the session is now congested (see
    /// [`crate::session::Session::congested`]).
    pub(crate) fn deliver_to(
        &self,
        cell: &SessionCell,
        d: Delivery,
        acl: Option<&Policy>,
        commands: &mut Vec<Command>,
    ) -> bool {
        let qos = d.qos;
        let retain = d.retain;
        let mut s = cell.session.lock();
        if let Some(policy) = acl {
            let who = Principal {
                username: s.username.as_deref(),
                client_id: &cell.client_id,
            };
            if !policy.may(who, &d.message.topic, Action::Read) {
                return false;
            }
        }
        // A second reference only for a copy the seam must persist.
        let persistent = s.is_persistent() && qos != QoS::AtMostOnce;
        let message = persistent.then(|| d.message.clone());
        let (disposition, seq) = s.deliver(d);
        let congested = s.congested();
        drop(s);
        match disposition {
            Disposition::Sent => cell.wake.notify_one(),
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
                message,
            });
        }
        congested
    }

    /// Gives copies that a departing shared-subscription member left
    /// unacknowledged to another member of the same group.
    pub(crate) fn hand_over(&self, deliveries: Vec<Delivery>, from: &ByteStr, now: Instant) {
        if deliveries.is_empty() {
            return;
        }
        let tree = self.subscriptions.read();
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
                    let _ = self.deliver_to(&m.value, d, acl, &mut commands);
                }
                None => self.stats.publish_dropped.inc(),
            }
        }
        drop(tree);
        self.submit(commands);
    }

    /// Adds (or replaces) a subscription of `cell`. Returns true if the
    /// session already had one on this filter.
    pub fn subscribe(
        &self,
        cell: &Arc<SessionCell>,
        raw: &ByteStr,
        parsed: &ParsedFilter<'_>,
        options: SubOptions,
        identifier: Option<u32>,
    ) -> bool {
        let (existed, persistent) = self.subscribe_local(cell, raw, parsed, options, identifier);
        if persistent {
            self.submit(vec![Command::Subscribe {
                client_id: cell.client_id.clone(),
                filter: raw.clone(),
                options,
                identifier,
            }]);
        }
        existed
    }

    /// Adds the subscription to the tree and the session only (restore
    /// from replicated state); returns (existed, session is persistent).
    pub(crate) fn subscribe_local(
        &self,
        cell: &Arc<SessionCell>,
        raw: &ByteStr,
        parsed: &ParsedFilter<'_>,
        options: SubOptions,
        identifier: Option<u32>,
    ) -> (bool, bool) {
        let mut tree = self.subscriptions.write();
        tree.insert(
            parsed.group,
            parsed.filter,
            Subscriber {
                key: cell.client_id.clone(),
                value: cell.clone(),
                options,
                identifier,
            },
        );
        drop(tree);
        let mut s = cell.session.lock();
        let existed = s
            .subscriptions
            .insert(
                raw.clone(),
                crate::session::SubscriptionRecord {
                    options,
                    identifier,
                },
            )
            .is_some();
        (existed, s.is_persistent())
    }

    /// Removes a subscription; true if it existed.
    pub fn unsubscribe(
        &self,
        cell: &SessionCell,
        raw: &ByteStr,
        parsed: &ParsedFilter<'_>,
    ) -> bool {
        let removed_from_tree =
            self.subscriptions
                .write()
                .remove(parsed.group, parsed.filter, &cell.client_id);
        let mut s = cell.session.lock();
        let existed = s.subscriptions.remove(raw).is_some();
        let persistent = s.is_persistent();
        drop(s);
        if existed && persistent {
            self.submit(vec![Command::Unsubscribe {
                client_id: cell.client_id.clone(),
                filter: raw.clone(),
            }]);
        }
        existed || removed_from_tree
    }

    /// Removes `client_id`'s subscriptions on `filters` (as written).
    pub(crate) fn remove_from_tree(&self, client_id: &ByteStr, filters: &[ByteStr]) {
        if filters.is_empty() {
            return;
        }
        let mut tree = self.subscriptions.write();
        for raw in filters {
            let (group, filter) = split_share(raw);
            tree.remove(group, filter, client_id);
        }
    }

    /// Stores (or, for an empty payload, clears) the retained message of
    /// its topic.
    pub fn retain(&self, message: SharedMessage) -> Ticket {
        let command = if message.payload.is_empty() {
            self.retained.write().clear(&message.topic);
            Command::RetainClear {
                topic: message.topic.clone(),
            }
        } else {
            self.retained.write().set(message.clone());
            Command::RetainSet(message)
        };
        self.seam.submit(vec![command])
    }

    /// Retained messages for a new subscription on `filter`.
    pub fn retained_matching(&self, filter: &str, now: Instant) -> Vec<SharedMessage> {
        self.retained.read().matching(filter, now)
    }

    /// Hands retained messages to a subscriber at subscribe time: RETAIN
    /// set, QoS capped by the subscription.
    pub fn deliver_retained(
        &self,
        cell: &SessionCell,
        messages: Vec<SharedMessage>,
        granted: QoS,
        identifier: Option<u32>,
    ) {
        let policy = self.auth.policy();
        let acl = policy.has_acl().then_some(&*policy);
        let mut commands = Vec::new();
        for message in messages {
            let d = Delivery {
                qos: message.qos.min(granted),
                retain: true,
                message,
                subscription_ids: identifier.into_iter().collect(),
                share: None,
                seq: 0,
            };
            // Retained messages come from the store, not a publisher.
            let _ = self.deliver_to(cell, d, acl, &mut commands);
        }
        self.submit(commands);
    }

    pub fn is_live(cell: &SessionCell) -> bool {
        cell.connected.load(Ordering::Acquire)
    }
}

/// `$share/g/f` -> (Some(g), f); anything else -> (None, raw).
pub fn split_share(raw: &str) -> (Option<&str>, &str) {
    raw.strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or((None, raw), |(g, f)| (Some(g), f))
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
        if Broker::is_live(&m.value) {
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
