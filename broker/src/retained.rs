//! Retained messages: one per topic, kept in a tree of topic levels so that
//! a wildcard subscription finds its retained messages without scanning all
//! of them.

use std::collections::HashMap;
use std::time::Instant;

use crate::message::SharedMessage;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<SharedMessage>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    count: usize,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores `msg` for its topic, replacing the previous one.
    pub fn set(&mut self, msg: SharedMessage) {
        let mut node = &mut self.root;
        for level in msg.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(msg).is_none() {
            self.count += 1;
        }
    }

    /// Removes the retained message of `topic`; true if there was one.
    pub fn clear(&mut self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = Self::clear_in(&mut self.root, &levels);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn clear_in(node: &mut Node, levels: &[&str]) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return node.message.take().is_some();
        };
        let Some(child) = node.children.get_mut(*first) else {
            return false;
        };
        let removed = Self::clear_in(child, rest);
        if child.is_empty() {
            node.children.remove(*first);
        }
        removed
    }

    pub fn get(&self, topic: &str) -> Option<&SharedMessage> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// The retained messages matching `filter` (a valid filter), leaving out
    /// expired ones. `$` topics are not matched by a leading wildcard.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<SharedMessage> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        Self::collect(&self.root, &levels, true, &mut out);
        out.retain(|m| !m.is_expired(now));
        out
    }

    fn collect(node: &Node, levels: &[&str], root: bool, out: &mut Vec<SharedMessage>) {
        let Some((first, rest)) = levels.split_first() else {
            out.extend(node.message.iter().cloned());
            return;
        };
        match *first {
            "#" => {
                // `a/#` includes `a` itself.
                out.extend(node.message.iter().cloned());
                for (name, child) in &node.children {
                    if !(root && name.starts_with('$')) {
                        Self::collect_all(child, out);
                    }
                }
            }
            "+" => {
                for (name, child) in &node.children {
                    if !(root && name.starts_with('$')) {
                        Self::collect(child, rest, false, out);
                    }
                }
            }
            literal => {
                if let Some(child) = node.children.get(literal) {
                    Self::collect(child, rest, false, out);
                }
            }
        }
    }

    fn collect_all(node: &Node, out: &mut Vec<SharedMessage>) {
        out.extend(node.message.iter().cloned());
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
        assert!(s.root.is_empty());
        assert!(s.get("a/b/c").is_none());
    }
}
