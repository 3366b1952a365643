//! Retained messages: one per topic, kept in a tree of topic levels so that
//! a wildcard subscription finds its retained messages without scanning all
//! of them. Children are ordered, so a subscription can also walk its
//! matches in topic order from a position, a batch at a time (a cursor
//! instead of a copy of the set: see `retained_stream.rs`).
//!
//! Every entry carries the stamp of the change that stored it. A new
//! subscription takes the store's stamp while its subscription goes into
//! the topic tree, under the store's lock, and a retained publish stores
//! and routes under the same lock: so an entry stamped after a
//! subscription's stamp was routed to it live, and its cursor leaves it
//! out; one stamped before was not, and the cursor delivers it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Instant;

use crate::codec::ByteStr;
use crate::message::{Message, SharedMessage};

#[derive(Debug)]
struct Entry {
    message: SharedMessage,
    /// The store's change count when this was stored; 0: not routed live
    /// on this node (restored from a snapshot), every cursor delivers it.
    stamp: u64,
}

#[derive(Debug, Default)]
struct Node {
    children: BTreeMap<Box<str>, Node>,
    entry: Option<Entry>,
    /// Retained publishes made on this node for this topic whose own
    /// commit has not been applied yet (see [`RetainedStore::applied`]).
    local_pending: u32,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.entry.is_none() && self.local_pending == 0
    }
}

/// One step of a cursor (see [`RetainedStore::next_batch`]).
#[derive(Debug, Default)]
pub struct Batch {
    /// Messages to deliver, in topic order.
    pub messages: Vec<SharedMessage>,
    /// The topic of the last entry looked at: the cursor's next position.
    pub last: Option<ByteStr>,
    /// Nothing matches after `last`: the cursor is finished.
    pub done: bool,
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    count: usize,
    /// Changes so far (the stamp of the newest entry).
    stamp: u64,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The stamp a subscription made now takes: every entry stored from
    /// now on has a larger one.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    fn node_mut(&mut self, topic: &str) -> &mut Node {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node
    }

    /// Stores `msg` for its topic, replacing the previous one, stamped as
    /// a change routed live now.
    pub fn set(&mut self, msg: SharedMessage) {
        self.stamp += 1;
        let stamp = self.stamp;
        self.put(msg, stamp);
    }

    /// Stores `msg` as never routed live here (rebuilt from a snapshot):
    /// every cursor that reaches it delivers it.
    pub fn restore(&mut self, msg: SharedMessage) {
        self.put(msg, 0);
    }

    fn put(&mut self, message: SharedMessage, stamp: u64) {
        let node = self.node_mut(&message.topic.clone());
        if node.entry.replace(Entry { message, stamp }).is_none() {
            self.count += 1;
        }
    }

    /// A retained publish made on this node is stored now; its commit,
    /// applied later, must not undo a newer one (see [`Self::applied`]).
    pub fn set_local(&mut self, msg: SharedMessage) {
        self.node_mut(&msg.topic.clone()).local_pending += 1;
        self.set(msg);
    }

    /// A local clear (empty payload), counted like [`Self::set_local`].
    pub fn clear_local(&mut self, topic: &str) {
        self.node_mut(topic).local_pending += 1;
        self.clear(topic);
    }

    /// A local publish of `topic` will never be applied (its commit
    /// failed; the caller puts the committed value back).
    pub fn local_failed(&mut self, topic: &str) {
        let node = self.node_mut(topic);
        node.local_pending = node.local_pending.saturating_sub(1);
        self.prune(topic);
    }

    /// Whether retained publishes made here on `topic` wait for their
    /// commits: a change committed by another node meanwhile is older in
    /// the log than they are, so it must not replace theirs.
    pub fn local_pending(&self, topic: &str) -> bool {
        self.find(topic).is_some_and(|n| n.local_pending > 0)
    }

    /// This node's own retained publish (`msg`, or a clear when `None`)
    /// is applied from the log. The store already holds it, or a newer one
    /// of ours, unless its commit was given up for failed and the value
    /// put back: then it is stored again.
    pub fn applied(&mut self, topic: &str, msg: Option<SharedMessage>) {
        let node = self.node_mut(topic);
        node.local_pending = node.local_pending.saturating_sub(1);
        let holds = |e: &Option<Entry>| match (e, &msg) {
            (Some(e), Some(m)) => same_publish(&e.message, m),
            (None, None) => true,
            _ => false,
        };
        if node.local_pending > 0 || holds(&node.entry) {
            self.prune(topic);
            return;
        }
        match msg {
            Some(m) => self.set(m),
            None => {
                self.clear(topic);
            }
        }
    }

    /// Removes the retained message of `topic`; true if there was one.
    pub fn clear(&mut self, topic: &str) -> bool {
        let removed = self.node_mut(topic).entry.take().is_some();
        if removed {
            self.count -= 1;
        }
        self.prune(topic);
        removed
    }

    /// Drops the empty nodes on `topic`'s path.
    fn prune(&mut self, topic: &str) {
        let levels: Vec<&str> = topic.split('/').collect();
        Self::prune_in(&mut self.root, &levels);
    }

    fn prune_in(node: &mut Node, levels: &[&str]) {
        let Some((first, rest)) = levels.split_first() else {
            return;
        };
        let Some(child) = node.children.get_mut(*first) else {
            return;
        };
        Self::prune_in(child, rest);
        if child.is_empty() {
            node.children.remove(*first);
        }
    }

    fn find(&self, topic: &str) -> Option<&Node> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        Some(node)
    }

    pub fn get(&self, topic: &str) -> Option<&SharedMessage> {
        self.find(topic)?.entry.as_ref().map(|e| &e.message)
    }

    /// The retained messages matching `filter` (a valid filter), leaving out
    /// expired ones. `$` topics are not matched by a leading wildcard.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<SharedMessage> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        walk(&self.root, &levels, None, true, &mut |e| {
            if !e.message.is_expired(now) {
                out.push(e.message.clone());
            }
            true
        });
        out
    }

    /// One step of a cursor over `filter`'s matches in topic order: looks
    /// at up to `4 * max + 64` entries after `after` (the topic the last
    /// step ended on; `None`: from the start) and returns up to `max`
    /// messages stored before the subscription's stamp `since` and not
    /// expired. Bounded work per call, so the store's lock is held briefly.
    pub fn next_batch(
        &self,
        filter: &str,
        after: Option<&str>,
        since: u64,
        now: Instant,
        max: usize,
    ) -> Batch {
        let levels: Vec<&str> = filter.split('/').collect();
        let after: Option<Vec<&str>> = after.map(|a| a.split('/').collect());
        let mut batch = Batch::default();
        let mut budget = 4 * max + 64;
        let finished = walk(&self.root, &levels, after.as_deref(), true, &mut |e| {
            if batch.messages.len() >= max || budget == 0 {
                return false;
            }
            budget -= 1;
            batch.last = Some(e.message.topic.clone());
            if e.stamp <= since && !e.message.is_expired(now) {
                batch.messages.push(e.message.clone());
            }
            true
        });
        batch.done = finished;
        batch
    }

    /// How many of `filter`'s matches after `after` a cursor would still
    /// deliver (to count what a stream that cannot go on leaves out).
    pub fn remaining(&self, filter: &str, after: Option<&str>, since: u64, now: Instant) -> usize {
        let levels: Vec<&str> = filter.split('/').collect();
        let after: Option<Vec<&str>> = after.map(|a| a.split('/').collect());
        let mut n = 0;
        walk(&self.root, &levels, after.as_deref(), true, &mut |e| {
            if e.stamp <= since && !e.message.is_expired(now) {
                n += 1;
            }
            true
        });
        n
    }

    fn collect_all(node: &Node, out: &mut Vec<SharedMessage>) {
        out.extend(node.entry.iter().map(|e| e.message.clone()));
        for child in node.children.values() {
            Self::collect_all(child, out);
        }
    }

    /// Every retained message (for snapshots and the admin API).
    pub fn all(&self) -> Vec<SharedMessage> {
        let mut out = Vec::with_capacity(self.count);
        Self::collect_all(&self.root, &mut out);
        out
    }
}

/// The same publish, as far as the store can tell: a message applied from
/// the log is a copy of the one stored when it was published here.
fn same_publish(a: &Message, b: &Message) -> bool {
    a.payload == b.payload && a.qos == b.qos && a.origin == b.origin && a.properties == b.properties
}

/// Visits the entries matching `filter` (levels) in topic order (a topic
/// before its subtopics, siblings by name), strictly after the position
/// `after` (levels) when given. `f` returns false to stop; the walk
/// returns false if it was stopped, true once every match was visited.
/// `root`: `node` is the root, whose `$` children no wildcard matches.
fn walk(
    node: &Node,
    filter: &[&str],
    after: Option<&[&str]>,
    root: bool,
    f: &mut impl FnMut(&Entry) -> bool,
) -> bool {
    // This node's own entry: matched when the filter is used up, or is `#`
    // (`a/#` includes `a`); skipped when the position is here or below.
    let own = filter.is_empty() || matches!(filter, ["#"]);
    if own && after.is_none() {
        if let Some(e) = &node.entry {
            if !f(e) {
                return false;
            }
        }
    }
    let Some((&first, rest)) = filter.split_first() else {
        return true;
    };
    // The position's next level, while the position lies below this node.
    let below = match after {
        Some([level, more @ ..]) => Some((*level, more)),
        _ => None,
    };
    if first == "#" || first == "+" {
        let child_filter = if first == "#" { filter } else { rest };
        let from = below.map_or(Bound::Unbounded, |(level, _)| Bound::Included(level));
        for (name, child) in node.children.range::<str, _>((from, Bound::Unbounded)) {
            if root && name.starts_with('$') {
                continue;
            }
            let child_after = below
                .filter(|(level, _)| **name == **level)
                .map(|(_, more)| more);
            if !walk(child, child_filter, child_after, false, f) {
                return false;
            }
        }
        return true;
    }
    let Some(child) = node.children.get(first) else {
        return true;
    };
    let child_after = match below {
        None => None,
        Some((level, more)) => match first.cmp(level) {
            std::cmp::Ordering::Less => return true,
            std::cmp::Ordering::Equal => Some(more),
            std::cmp::Ordering::Greater => None,
        },
    };
    walk(child, rest, child_after, false, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ByteStr, QoS};
    use crate::message::{Message, MessageParts};
    use std::sync::Arc;

    fn msg(topic: &str) -> SharedMessage {
        Arc::new(Message::new(MessageParts {
            topic: ByteStr::from(topic),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: true,
            origin: ByteStr::default(),
            expires_at: None,
            properties: None,
            received_at: std::time::Instant::now(),
        }))
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut v: Vec<String> = store
            .matching(filter, Instant::now())
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wildcard_lookup() {
        let mut s = RetainedStore::default();
        for t in ["a", "a/b", "a/c", "a/b/c", "$SYS/x", "b/b"] {
            s.set(msg(t));
        }
        assert_eq!(s.len(), 6);
        assert_eq!(topics(&s, "a/#"), ["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(topics(&s, "+/b"), ["a/b", "b/b"]);
        assert_eq!(topics(&s, "#"), ["a", "a/b", "a/b/c", "a/c", "b/b"]);
        assert_eq!(topics(&s, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(topics(&s, "a/b"), ["a/b"]);
    }

    #[test]
    fn clear_prunes() {
        let mut s = RetainedStore::default();
        s.set(msg("a/b/c"));
        s.set(msg("a/b/c"));
        assert_eq!(s.len(), 1);
        assert!(s.clear("a/b/c"));
        assert!(!s.clear("a/b/c"));
        assert!(s.root.children.is_empty());
        assert!(s.get("a/b/c").is_none());
    }
}

#[cfg(test)]
mod cursor_tests {
    use super::*;
    use crate::codec::QoS;
    use crate::message::MessageParts;
    use std::sync::Arc;

    fn msg(topic: &str, payload: &'static [u8]) -> SharedMessage {
        Arc::new(Message::new(MessageParts {
            topic: ByteStr::from(topic),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            origin: ByteStr::default(),
            expires_at: None,
            properties: None,
            received_at: Instant::now(),
        }))
    }

    /// Every step of a cursor of `max`, as topics.
    fn stream(s: &RetainedStore, filter: &str, since: u64, max: usize) -> Vec<String> {
        let mut after: Option<ByteStr> = None;
        let mut out = Vec::new();
        loop {
            let b = s.next_batch(filter, after.as_deref(), since, Instant::now(), max);
            out.extend(b.messages.iter().map(|m| m.topic.to_string()));
            if b.done {
                return out;
            }
            after = b.last;
        }
    }

    fn store(topics: &[&str]) -> RetainedStore {
        let mut s = RetainedStore::default();
        for t in topics {
            s.set(msg(t, b"x"));
        }
        s
    }

    #[test]
    fn cursors_walk_in_topic_order_in_steps_of_any_size() {
        let s = store(&["b", "a/c", "a", "$SYS/x", "a/b/c", "a/b", "c/b", "a/bb"]);
        let since = s.stamp();
        for max in [1, 2, 3, 100] {
            assert_eq!(
                stream(&s, "#", since, max),
                ["a", "a/b", "a/b/c", "a/bb", "a/c", "b", "c/b"],
                "{max}"
            );
            assert_eq!(
                stream(&s, "a/#", since, max),
                ["a", "a/b", "a/b/c", "a/bb", "a/c"]
            );
            assert_eq!(stream(&s, "+/b", since, max), ["a/b", "c/b"]);
            assert_eq!(stream(&s, "a/+", since, max), ["a/b", "a/bb", "a/c"]);
            assert_eq!(stream(&s, "a/b", since, max), ["a/b"]);
            assert_eq!(stream(&s, "$SYS/#", since, max), ["$SYS/x"]);
            assert!(stream(&s, "z/#", since, max).is_empty());
        }
    }

    #[test]
    fn a_cursor_leaves_out_what_was_stored_after_its_subscription() {
        let mut s = store(&["t/1", "t/2", "t/3"]);
        let since = s.stamp();
        // Replaced and added after the subscription: routed to it live.
        s.set(msg("t/2", b"new"));
        s.set(msg("t/0", b"new"));
        assert_eq!(stream(&s, "t/#", since, 1), ["t/1", "t/3"]);
        assert_eq!(s.remaining("t/#", Some("t/1"), since, Instant::now()), 1);
        // Restored entries were never routed here: every cursor takes them.
        let mut r = RetainedStore::default();
        r.restore(msg("t/9", b"x"));
        assert_eq!(stream(&r, "#", 0, 5), ["t/9"]);
    }

    #[test]
    fn a_cursor_steps_over_topics_that_came_and_went() {
        let mut s = store(&["a/1", "a/2", "a/3", "a/4"]);
        let since = s.stamp();
        let first = s.next_batch("a/#", None, since, Instant::now(), 2);
        assert_eq!(first.messages.len(), 2);
        s.clear("a/2");
        s.clear("a/3");
        let rest = s.next_batch("a/#", first.last.as_deref(), since, Instant::now(), 2);
        let topics: Vec<_> = rest.messages.iter().map(|m| m.topic.to_string()).collect();
        assert_eq!(topics, ["a/4"]);
        assert!(rest.done);
    }

    #[test]
    fn this_nodes_own_publish_applied_later_does_not_undo_a_newer_one() {
        let mut s = RetainedStore::default();
        s.set_local(msg("t", b"1"));
        s.set_local(msg("t", b"2"));
        assert!(s.local_pending("t"));
        s.applied("t", Some(msg("t", b"1")));
        assert_eq!(&s.get("t").unwrap().payload[..], b"2");
        let stamp = s.stamp();
        s.applied("t", Some(msg("t", b"2")));
        assert_eq!(s.stamp(), stamp, "the same publish: nothing changes");
        assert!(!s.local_pending("t"));
        // Given up for failed and put back, then applied after all.
        s.set_local(msg("t", b"3"));
        s.local_failed("t");
        s.applied("t", Some(msg("t", b"3")));
        assert_eq!(&s.get("t").unwrap().payload[..], b"3");
    }
}
