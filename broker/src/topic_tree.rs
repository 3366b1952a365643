//! Subscriptions and matching: a tree with one level of the topic per node,
//! so that matching a topic costs the number of its levels times the
//! wildcards met on the way, not the number of subscriptions.
//!
//! Shared subscriptions (`$share/group/filter`) hang off the node of their
//! filter as groups; a publish picks one member per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::codec::{ByteStr, SubOptions};

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {0} bytes")]
    TooLong(usize),
    #[error("topic has more than {0} levels")]
    TooManyLevels(usize),
    #[error("wildcards are not allowed in a topic name")]
    WildcardInName,
    #[error("`#` must be the last level and `+`/`#` must fill a whole level")]
    BadWildcard,
    #[error("malformed shared subscription")]
    BadShare,
}

/// Limits every topic is checked against.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    pub max_levels: usize,
    pub max_length: usize,
}

fn check_size(s: &str, limits: TopicLimits) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > limits.max_length {
        return Err(TopicError::TooLong(limits.max_length));
    }
    if s.split('/').count() > limits.max_levels {
        return Err(TopicError::TooManyLevels(limits.max_levels));
    }
    Ok(())
}

/// A topic a message is published to.
pub fn validate_topic_name(topic: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_size(topic, limits)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// A subscription filter, wildcards allowed (without `$share/` prefix).
pub fn validate_filter(filter: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_size(filter, limits)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let wild = level.contains(['+', '#']);
        if wild && level.len() != 1 {
            return Err(TopicError::BadWildcard);
        }
        if level == "#" && levels.peek().is_some() {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

/// A filter as the client wrote it, split into its shared group (if any)
/// and the underlying filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub group: Option<&'a str>,
    pub filter: &'a str,
}

/// Splits `$share/group/filter`; validates both parts.
pub fn parse_filter(raw: &str, limits: TopicLimits) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::BadShare);
        }
        validate_filter(filter, limits)?;
        Ok(ParsedFilter {
            group: Some(group),
            filter,
        })
    } else {
        validate_filter(raw, limits)?;
        Ok(ParsedFilter {
            group: None,
            filter: raw,
        })
    }
}

/// `$share/g/f` -> (Some(g), f); anything else -> (None, raw). For filters
/// already checked by [`parse_filter`] (replicated ones, the routes).
pub fn split_share(raw: &str) -> (Option<&str>, &str) {
    raw.strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or((None, raw), |(g, f)| (Some(g), f))
}

/// Does `filter` match `topic`? (Used where no tree is at hand, e.g. the
/// retained store and ACL checks.)
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// One subscription of one client: `K` names the client, `V` is what the
/// engine needs to reach it.
#[derive(Debug, Clone)]
pub struct Subscriber<K, V> {
    pub key: K,
    pub value: V,
    pub options: SubOptions,
    pub identifier: Option<u32>,
}

/// The members of one shared subscription group on one filter.
#[derive(Debug)]
pub struct SharedGroup<K, V> {
    pub name: ByteStr,
    /// The underlying filter (without `$share/group/`).
    pub filter: ByteStr,
    pub members: Vec<Subscriber<K, V>>,
    /// Round-robin cursor; atomic so that matching needs only a read lock.
    cursor: AtomicUsize,
}

impl<K, V> SharedGroup<K, V> {
    /// Members in round-robin order starting at the next one; a publish
    /// takes the first that is live.
    pub fn rotation(&self) -> impl Iterator<Item = &Subscriber<K, V>> {
        let n = self.members.len();
        let start = if n == 0 {
            0
        } else {
            self.cursor.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| &self.members[(start + i) % n])
    }
}

#[derive(Debug)]
struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    /// Subscribers whose filter ends exactly here.
    exact: Vec<Subscriber<K, V>>,
    /// Wildcards and shared groups, which most levels have none of: apart,
    /// so that a node takes 80 bytes, not 152 (every persistent session's
    /// own topic is a node). `None` whenever it would be empty.
    wild: Option<Box<Wild<K, V>>>,
}

#[derive(Debug)]
struct Wild<K, V> {
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers whose filter ends with `#` at this level.
    hash: Vec<Subscriber<K, V>>,
    hash_shared: Vec<SharedGroup<K, V>>,
    exact_shared: Vec<SharedGroup<K, V>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            exact: Vec::new(),
            wild: None,
        }
    }
}

impl<K, V> Default for Wild<K, V> {
    fn default() -> Self {
        Wild {
            plus: None,
            hash: Vec::new(),
            hash_shared: Vec::new(),
            exact_shared: Vec::new(),
        }
    }
}

impl<K, V> Wild<K, V> {
    fn is_empty(&self) -> bool {
        self.plus.is_none()
            && self.hash.is_empty()
            && self.hash_shared.is_empty()
            && self.exact_shared.is_empty()
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.exact.is_empty() && self.wild.is_none()
    }

    fn wild_mut(&mut self) -> &mut Wild<K, V> {
        self.wild.get_or_insert_with(Default::default)
    }

    /// Drops the wildcard part once it holds nothing.
    fn prune(&mut self) {
        if self.wild.as_ref().is_some_and(|w| w.is_empty()) {
            self.wild = None;
        }
    }

    fn plus(&self) -> Option<&Node<K, V>> {
        self.wild.as_ref()?.plus.as_deref()
    }

    fn hash(&self) -> &[Subscriber<K, V>] {
        self.wild.as_ref().map_or(&[], |w| &w.hash)
    }

    fn shared(&self, hash: bool) -> &[SharedGroup<K, V>] {
        self.wild.as_ref().map_or(&[], |w| {
            if hash {
                &w.hash_shared
            } else {
                &w.exact_shared
            }
        })
    }
}

/// What a match reports: a plain subscriber, or a shared group to pick from.
pub enum Hit<'a, K, V> {
    Subscriber(&'a Subscriber<K, V>),
    Shared(&'a SharedGroup<K, V>),
}

/// A match by whole lists: the subscribers of one filter (no client
/// appears twice in one list), or a shared group.
pub enum Hits<'a, K, V> {
    Subscribers(&'a [Subscriber<K, V>]),
    Shared(&'a SharedGroup<K, V>),
}

/// The subscription tree. Filters passed in must have been validated.
#[derive(Debug)]
pub struct TopicTree<K, V> {
    root: Node<K, V>,
    count: usize,
}

impl<K, V> Default for TopicTree<K, V> {
    fn default() -> Self {
        TopicTree {
            root: Node::default(),
            count: 0,
        }
    }
}

fn upsert<K: PartialEq, V>(list: &mut Vec<Subscriber<K, V>>, sub: Subscriber<K, V>) -> bool {
    match list.iter_mut().find(|s| s.key == sub.key) {
        Some(existing) => {
            *existing = sub;
            false
        }
        None => {
            // Most filters have one subscriber (every persistent session's
            // own topic): room for one, not the four a first push makes.
            if list.capacity() == 0 {
                list.reserve_exact(1);
            }
            list.push(sub);
            true
        }
    }
}

fn remove_key<K: PartialEq, V>(list: &mut Vec<Subscriber<K, V>>, key: &K) -> bool {
    match list.iter().position(|s| s.key == *key) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

impl<K: PartialEq, V> TopicTree<K, V> {
    /// Number of subscriptions (each shared membership counts once).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces the subscription of `sub.key` on `filter` (in
    /// `group` if shared). Returns true when it is new, false when it
    /// replaced an existing one.
    pub fn insert(&mut self, group: Option<&str>, filter: &str, sub: Subscriber<K, V>) -> bool {
        let mut node = &mut self.root;
        let mut levels = filter.split('/');
        let mut at_hash = false;
        for level in levels.by_ref() {
            match level {
                "#" => {
                    at_hash = true;
                    break;
                }
                "+" => node = node.wild_mut().plus.get_or_insert_with(Default::default),
                literal => node = node.children.entry(literal.into()).or_default(),
            }
        }
        let added = match group {
            None if at_hash => upsert(&mut node.wild_mut().hash, sub),
            None => upsert(&mut node.exact, sub),
            Some(name) => {
                let wild = node.wild_mut();
                let groups = if at_hash {
                    &mut wild.hash_shared
                } else {
                    &mut wild.exact_shared
                };
                let idx = match groups.iter().position(|g| &*g.name == name) {
                    Some(i) => i,
                    None => {
                        groups.push(SharedGroup {
                            name: ByteStr::from(name),
                            filter: ByteStr::from(filter),
                            members: Vec::new(),
                            cursor: AtomicUsize::new(0),
                        });
                        groups.len() - 1
                    }
                };
                upsert(&mut groups[idx].members, sub)
            }
        };
        if added {
            self.count += 1;
        }
        added
    }

    /// Removes the subscription of `key` on `filter`; true if there was one.
    pub fn remove(&mut self, group: Option<&str>, filter: &str, key: &K) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_in(&mut self.root, &levels, group, key);
        if removed {
            self.count -= 1;
        }
        removed
    }

    // Recursive so that emptied nodes are pruned on the way back up.
    fn remove_in(node: &mut Node<K, V>, levels: &[&str], group: Option<&str>, key: &K) -> bool {
        let Some((&first, rest)) = levels.split_first() else {
            return Self::remove_here(node, false, group, key);
        };
        match first {
            "#" => Self::remove_here(node, true, group, key),
            "+" => {
                let Some(wild) = node.wild.as_deref_mut() else {
                    return false;
                };
                let Some(child) = wild.plus.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_in(child, rest, group, key);
                if child.is_empty() {
                    wild.plus = None;
                    node.prune();
                }
                removed
            }
            literal => {
                let Some(child) = node.children.get_mut(literal) else {
                    return false;
                };
                let removed = Self::remove_in(child, rest, group, key);
                if child.is_empty() {
                    node.children.remove(literal);
                }
                removed
            }
        }
    }

    fn remove_here(node: &mut Node<K, V>, hash: bool, group: Option<&str>, key: &K) -> bool {
        if group.is_none() && !hash {
            return remove_key(&mut node.exact, key);
        }
        let Some(wild) = node.wild.as_deref_mut() else {
            return false;
        };
        let removed = match group {
            None => remove_key(&mut wild.hash, key),
            Some(name) => {
                let groups = if hash {
                    &mut wild.hash_shared
                } else {
                    &mut wild.exact_shared
                };
                let Some(i) = groups.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let removed = remove_key(&mut groups[i].members, key);
                if groups[i].members.is_empty() {
                    groups.swap_remove(i);
                }
                removed
            }
        };
        node.prune();
        removed
    }

    /// The shared group `group` on `filter`, if it has members.
    pub fn shared_group(&self, group: &str, filter: &str) -> Option<&SharedGroup<K, V>> {
        let mut node = &self.root;
        let mut hash = false;
        for level in filter.split('/') {
            match level {
                "#" => {
                    hash = true;
                    break;
                }
                "+" => node = node.plus()?,
                literal => node = node.children.get(literal)?,
            }
        }
        node.shared(hash).iter().find(|g| &*g.name == group)
    }

    /// Calls `visit` for every subscription matching `topic` (a valid topic
    /// name). Topics starting with `$` are not matched by a leading wildcard.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Hit<'a, K, V>)) {
        self.for_each_match_list(topic, |hits| match hits {
            Hits::Subscribers(list) => list.iter().for_each(|s| visit(Hit::Subscriber(s))),
            Hits::Shared(g) => visit(Hit::Shared(g)),
        });
    }

    /// As [`TopicTree::for_each_match`], one non-empty list of subscribers
    /// at a time: a caller that sees a single list knows no client matched
    /// twice, and can skip merging overlaps.
    pub fn for_each_match_list<'a>(&'a self, topic: &str, mut visit: impl FnMut(Hits<'a, K, V>)) {
        let dollar = topic.starts_with('$');
        let levels: smallvec::SmallVec<[&str; 16]> = topic.split('/').collect();
        Self::walk(&self.root, &levels, dollar, &mut visit);
    }

    fn walk<'a>(
        node: &'a Node<K, V>,
        levels: &[&str],
        skip_wild: bool,
        visit: &mut impl FnMut(Hits<'a, K, V>),
    ) {
        fn list<'a, K, V>(
            subs: &'a [Subscriber<K, V>],
            groups: &'a [SharedGroup<K, V>],
            visit: &mut impl FnMut(Hits<'a, K, V>),
        ) {
            if !subs.is_empty() {
                visit(Hits::Subscribers(subs));
            }
            groups.iter().for_each(|g| visit(Hits::Shared(g)));
        }
        // `a/#` also matches `a` itself (the parent level).
        if !skip_wild {
            list(node.hash(), node.shared(true), visit);
        }
        let Some((first, rest)) = levels.split_first() else {
            list(&node.exact, node.shared(false), visit);
            return;
        };
        if let Some(child) = node.children.get(*first) {
            Self::walk(child, rest, false, visit);
        }
        if !skip_wild {
            if let Some(plus) = node.plus() {
                Self::walk(plus, rest, false, visit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    const LIMITS: TopicLimits = TopicLimits {
        max_levels: 8,
        max_length: 64,
    };

    fn sub(key: u32) -> Subscriber<u32, ()> {
        Subscriber {
            key,
            value: (),
            options: SubOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
            identifier: None,
        }
    }

    fn matches(tree: &TopicTree<u32, ()>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        tree.for_each_match(topic, |hit| match hit {
            Hit::Subscriber(s) => out.push(s.key),
            Hit::Shared(g) => out.push(1000 + g.rotation().next().map_or(0, |s| s.key)),
        });
        out.sort();
        out
    }

    #[test]
    fn wildcards_match_as_the_spec_says() {
        let mut t = TopicTree::default();
        for (i, f) in ["a/b", "a/+", "a/#", "#", "+/b", "a/b/#", "+/+", "+"]
            .iter()
            .enumerate()
        {
            assert!(t.insert(None, f, sub(i as u32)));
        }
        assert_eq!(matches(&t, "a/b"), vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(matches(&t, "a"), vec![2, 3, 7]);
        assert_eq!(matches(&t, "a/b/c"), vec![2, 3, 5]);
        assert_eq!(matches(&t, "x/b"), vec![3, 4, 6]);
        assert_eq!(matches(&t, "/b"), vec![3, 4, 6]);
        assert_eq!(t.len(), 8);
    }

    #[test]
    fn dollar_topics_escape_leading_wildcards() {
        let mut t = TopicTree::default();
        t.insert(None, "#", sub(1));
        t.insert(None, "+/x", sub(2));
        t.insert(None, "$SYS/#", sub(3));
        t.insert(None, "$SYS/+", sub(4));
        assert_eq!(matches(&t, "$SYS/x"), vec![3, 4]);
        assert_eq!(matches(&t, "y/x"), vec![1, 2]);
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let mut t = TopicTree::default();
        assert!(t.insert(None, "a/+/c", sub(1)));
        assert!(!t.insert(None, "a/+/c", sub(1)));
        assert_eq!(t.len(), 1);
        assert!(t.remove(None, "a/+/c", &1));
        assert!(!t.remove(None, "a/+/c", &1));
        assert!(t.root.is_empty());
        assert_eq!(t.len(), 0);
        // The wildcard and shared parts of a level go with their last one.
        assert!(t.insert(None, "a/#", sub(1)));
        assert!(t.insert(Some("g"), "a", sub(2)));
        assert!(t.remove(None, "a/#", &1));
        assert!(t.root.children["a"].wild.is_some());
        assert!(t.remove(Some("g"), "a", &2));
        assert!(t.root.is_empty());
    }

    #[test]
    fn shared_groups_rotate() {
        let mut t = TopicTree::default();
        t.insert(Some("g"), "s/#", sub(1));
        t.insert(Some("g"), "s/#", sub(2));
        t.insert(Some("h"), "s/#", sub(3));
        let firsts: Vec<Vec<u32>> = (0..4).map(|_| matches(&t, "s/x")).collect();
        // Group g alternates between 1 and 2; group h always yields 3.
        assert_eq!(firsts[0], vec![1001, 1003]);
        assert_eq!(firsts[1], vec![1002, 1003]);
        assert_eq!(firsts[2], vec![1001, 1003]);
        assert!(t.remove(Some("g"), "s/#", &1));
        assert!(t.remove(Some("g"), "s/#", &2));
        assert_eq!(matches(&t, "s/x"), vec![1003]);
    }

    #[test]
    fn validation() {
        assert!(validate_filter("a/+/#", LIMITS).is_ok());
        assert!(validate_filter("a/#/b", LIMITS).is_err());
        assert!(validate_filter("a+/b", LIMITS).is_err());
        assert!(validate_filter("", LIMITS).is_err());
        assert!(validate_filter("a/b/c/d/e/f/g/h/i", LIMITS).is_err());
        assert!(validate_topic_name("a/+", LIMITS).is_err());
        assert!(validate_topic_name(&"x".repeat(65), LIMITS).is_err());
        assert_eq!(
            parse_filter("$share/g/a/#", LIMITS).unwrap(),
            ParsedFilter {
                group: Some("g"),
                filter: "a/#"
            }
        );
        assert!(parse_filter("$share/g", LIMITS).is_err());
        assert!(parse_filter("$share/+/a", LIMITS).is_err());
    }

    #[test]
    fn filter_matches_agrees_with_the_tree() {
        let filters = ["a/b", "a/+", "a/#", "#", "+/b", "+", "$SYS/#", "+/+/c"];
        let topics = ["a/b", "a", "a/b/c", "$SYS/x", "x/y/c", "/", "b"];
        let mut t = TopicTree::default();
        for (i, f) in filters.iter().enumerate() {
            t.insert(None, f, sub(i as u32));
        }
        for topic in topics {
            let expected: Vec<u32> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| filter_matches(f, topic))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(matches(&t, topic), expected, "topic {topic}");
        }
    }
}
