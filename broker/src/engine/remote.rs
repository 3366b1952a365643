//! What this node knows of the rest of the cluster, kept in step with the
//! committed log: which nodes have subscribers on which filters (routes),
//! the persistent sessions and who owns them, and every registered will.
//!
//! A publish reads it (`publish.rs`): copies owed to persistent sessions
//! that another node owns are enqueued through Raft, the rest of the
//! publish is forwarded to the nodes whose routes match. It is an index
//! derived from [`ReplicatedState`]: rebuilt from it whole, then kept in
//! step by the changes the state machine notes as it applies each command
//! ([`Change`]); what a command means is decided there alone.
//!
//! It holds only what a publish here cannot learn from the local topic
//! tree: other nodes' routes (and shared groups, this node's members
//! included, which rotate over nodes) and the subscriptions of persistent
//! sessions other nodes own. This node's own plain routes and sessions are
//! in the tree already; indexing them twice cost ~1 KiB per idle session.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::codec::{ByteStr, SubOptions};
use crate::state::{Change, ReplicatedState, SubscriptionMap, WillRecord};
use crate::topic_tree::{split_share, Hit, Subscriber, TopicTree};

#[derive(Default)]
pub struct ClusterView {
    me: u64,
    /// Routes as a tree whose subscribers are node ids: other nodes'
    /// plain routes, and every node's shared ones.
    routes: TopicTree<u64, ()>,
    route_nodes: BTreeMap<ByteStr, BTreeSet<u64>>,
    /// Non-shared subscriptions of persistent sessions another node owns
    /// (keyed by client).
    persistent: TopicTree<ByteStr, ()>,
    owners: HashMap<ByteStr, u64>,
    /// The username that owns each owned client id (absent: anonymous).
    identities: HashMap<ByteStr, ByteStr>,
    pub wills: HashMap<ByteStr, WillRecord>,
    /// Routes of other nodes and ids other nodes own, counted as they
    /// change: `has_remote` is asked after every commit, and a scan of
    /// every owner and route made each commit cost O(sessions) (42% of a
    /// single node's CPU after 30,000 persistent sessions).
    remote_routes: usize,
    remote_owners: usize,
}

/// A persistent session owned elsewhere that a publish matched.
pub struct RemoteSession<'a> {
    pub client_id: &'a ByteStr,
    pub options: SubOptions,
    pub identifier: Option<u32>,
}

impl ClusterView {
    pub fn new(me: u64) -> Self {
        ClusterView {
            me,
            ..Default::default()
        }
    }

    /// Rebuilds the view from a whole state (start, installed snapshot).
    pub fn rebuild(&mut self, state: &ReplicatedState) {
        *self = ClusterView::new(self.me);
        for (filter, nodes) in &state.routes {
            for node in nodes {
                self.add_route(*node, filter);
            }
        }
        self.owners = state.owners.clone();
        self.remote_owners = self.owners.values().filter(|n| **n != self.me).count();
        for (client_id, session) in &state.sessions {
            if self.owned_elsewhere(client_id) {
                self.index_session(client_id, &session.subscriptions);
            }
        }
        self.identities = state.usernames.clone();
        self.wills = state.wills.clone();
    }

    /// Whether anything lives on another node: when not, a publish skips
    /// the view altogether (a single node pays nothing for it).
    pub fn has_remote(&self) -> bool {
        self.remote_routes > 0 || self.remote_owners > 0
    }

    /// Counts `node` owning an id (`+1`) or no longer owning it (`-1`).
    fn count_owner(&mut self, node: Option<u64>, delta: isize) {
        if node.is_some_and(|n| n != self.me) {
            self.remote_owners = self.remote_owners.saturating_add_signed(delta);
        }
    }

    /// Whether another node owns `client_id`.
    fn owned_elsewhere(&self, client_id: &str) -> bool {
        self.owners.get(client_id).is_some_and(|n| *n != self.me)
    }

    /// The node that owns `client_id`, if any.
    pub fn owner(&self, client_id: &str) -> Option<u64> {
        self.owners.get(client_id).copied()
    }

    /// The identity that owns `client_id`: `None` if nobody does,
    /// `Some(None)` if an anonymous client does.
    pub fn owner_identity(&self, client_id: &str) -> Option<Option<&ByteStr>> {
        self.owners
            .contains_key(client_id)
            .then(|| self.identities.get(client_id))
    }

    /// Follows one change a committed command made (the state machine
    /// decided what the command means; this index only mirrors it).
    pub fn follow(&mut self, change: &Change) {
        match change {
            Change::Owner {
                client_id,
                node,
                username,
                subscriptions,
                ..
            } => {
                let old = self.owners.insert(client_id.clone(), *node);
                self.count_owner(old, -1);
                self.count_owner(Some(*node), 1);
                match (old.is_some_and(|n| n != self.me), *node != self.me) {
                    (false, true) => self.index_session(client_id, subscriptions),
                    (true, false) => self.unindex_session(client_id, subscriptions),
                    _ => {}
                }
                match username {
                    Some(u) => self.identities.insert(client_id.clone(), u.clone()),
                    None => self.identities.remove(client_id),
                };
            }
            Change::Disowned { client_id } => {
                let old = self.owners.remove(client_id);
                self.count_owner(old, -1);
                self.identities.remove(client_id);
            }
            // Nothing to index until it subscribes.
            Change::SessionStarted { .. } => {}
            Change::SessionEnded {
                client_id,
                subscriptions,
            } => self.unindex_session(client_id, subscriptions),
            Change::Subscribed {
                client_id,
                filter,
                options,
                identifier,
            } => {
                if self.owned_elsewhere(client_id) {
                    self.subscribe(client_id, filter, *options, *identifier);
                }
            }
            Change::Unsubscribed { client_id, filter } => {
                self.unsubscribe(client_id, filter);
            }
            Change::RouteAdded { node, filter } => self.add_route(*node, filter),
            Change::RouteRemoved { node, filter } => self.remove_route(*node, filter),
            Change::Will { client_id, record } => {
                match record {
                    Some(w) => self.wills.insert(client_id.clone(), w.clone()),
                    None => self.wills.remove(client_id),
                };
            }
            // Followed by `placement.rs`.
            Change::BridgeHolder { .. } | Change::Draining { .. } => {}
            // Messages, for the engine's own stores (`engine/follow.rs`).
            Change::Retained { .. } | Change::Enqueued { .. } => {}
        }
    }

    fn index_session(&mut self, client_id: &ByteStr, subscriptions: &SubscriptionMap) {
        for (filter, (options, identifier)) in subscriptions {
            self.subscribe(client_id, filter, *options, *identifier);
        }
    }

    /// Removes what the session has in the index (nothing if this node
    /// owned it).
    fn unindex_session(&mut self, client_id: &ByteStr, subscriptions: &SubscriptionMap) {
        for filter in subscriptions.keys() {
            self.unsubscribe(client_id, filter);
        }
    }

    fn subscribe(
        &mut self,
        client_id: &ByteStr,
        filter: &ByteStr,
        options: SubOptions,
        identifier: Option<u32>,
    ) {
        let (group, f) = split_share(filter);
        // Shared members are served by the node a publish is forwarded to.
        if group.is_none() {
            self.persistent.insert(
                None,
                f,
                Subscriber {
                    key: client_id.clone(),
                    value: (),
                    options,
                    identifier,
                },
            );
        }
    }

    fn unsubscribe(&mut self, client_id: &ByteStr, filter: &str) {
        let (group, f) = split_share(filter);
        if group.is_none() {
            self.persistent.remove(None, f, client_id);
        }
    }

    fn add_route(&mut self, node: u64, filter: &ByteStr) {
        // This node's own plain route: a publish here matches the local
        // tree, and is never forwarded to itself.
        if node == self.me && split_share(filter).0.is_none() {
            return;
        }
        if self
            .route_nodes
            .entry(filter.clone())
            .or_default()
            .insert(node)
        {
            if node != self.me {
                self.remote_routes += 1;
            }
            let (group, f) = split_share(filter);
            self.routes.insert(
                group,
                f,
                Subscriber {
                    key: node,
                    value: (),
                    options: SubOptions::default(),
                    identifier: None,
                },
            );
        }
    }

    fn remove_route(&mut self, node: u64, filter: &ByteStr) {
        let Some(nodes) = self.route_nodes.get_mut(filter) else {
            return;
        };
        if nodes.remove(&node) {
            if node != self.me {
                self.remote_routes -= 1;
            }
            let (group, f) = split_share(filter);
            self.routes.remove(group, f, &node);
        }
        if nodes.is_empty() {
            self.route_nodes.remove(filter);
        }
    }

    /// Persistent sessions owned by other nodes that `topic` matches, one
    /// entry per subscription (`publish.rs` merges overlaps).
    pub fn remote_sessions<'a>(&'a self, topic: &str, mut visit: impl FnMut(RemoteSession<'a>)) {
        self.persistent.for_each_match(topic, |hit| {
            if let Hit::Subscriber(s) = hit {
                if self.owned_elsewhere(&s.key) {
                    visit(RemoteSession {
                        client_id: &s.key,
                        options: s.options,
                        identifier: s.identifier,
                    });
                }
            }
        });
    }

    /// The nodes `topic` must be forwarded to: every other node with a
    /// plain route, and for each shared group the one node (in rotation,
    /// this one included) that serves this message. Calls `plain(node)` and
    /// `shared(group, filter, node)`.
    pub fn route(
        &self,
        topic: &str,
        mut plain: impl FnMut(u64),
        mut shared: impl FnMut(&ByteStr, &ByteStr, u64),
    ) {
        self.routes.for_each_match(topic, |hit| match hit {
            Hit::Subscriber(s) => {
                if s.key != self.me {
                    plain(s.key);
                }
            }
            Hit::Shared(group) => {
                if let Some(m) = group.rotation().next() {
                    shared(&group.name, &group.filter, m.key);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    /// `c` (proposed by `origin`) through the state machine, and what it
    /// changed into the view.
    fn apply(v: &mut ClusterView, s: &mut ReplicatedState, origin: u64, c: &Command) {
        let mut changes = Vec::new();
        let _ = s.apply_with_changes(origin, c, &mut changes);
        for change in &changes {
            v.follow(change);
        }
    }

    fn route(v: &ClusterView, topic: &str) -> (Vec<u64>, Vec<(String, u64)>) {
        let (mut plain, mut shared) = (Vec::new(), Vec::new());
        v.route(
            topic,
            |n| plain.push(n),
            |g, _, n| shared.push((g.to_string(), n)),
        );
        plain.sort_unstable();
        (plain, shared)
    }

    #[test]
    fn routes_and_remote_sessions() {
        let mut v = ClusterView::new(1);
        let mut s = ReplicatedState::default();
        assert!(!v.has_remote());
        apply(
            &mut v,
            &mut s,
            1,
            &Command::RouteAdd {
                node: 1,
                filter: "a/#".into(),
            },
        );
        assert!(!v.has_remote(), "only our own routes");
        apply(
            &mut v,
            &mut s,
            2,
            &Command::RouteAdd {
                node: 2,
                filter: "a/+".into(),
            },
        );
        apply(
            &mut v,
            &mut s,
            3,
            &Command::RouteAdd {
                node: 3,
                filter: "$share/g/a/b".into(),
            },
        );
        apply(
            &mut v,
            &mut s,
            1,
            &Command::RouteAdd {
                node: 1,
                filter: "$share/g/a/b".into(),
            },
        );
        assert!(v.has_remote());
        assert_eq!(route(&v, "a/b").0, vec![2]);
        // The group rotates over its nodes, this one included.
        let picks: BTreeSet<u64> = (0..4).map(|_| route(&v, "a/b").1[0].1).collect();
        assert_eq!(picks, BTreeSet::from([1, 3]));
        apply(&mut v, &mut s, 1, &Command::NodeGone { node: 2 });
        assert!(route(&v, "a/b").0.is_empty());

        let c = ByteStr::from("c");
        apply(
            &mut v,
            &mut s,
            3,
            &Command::ClaimClient {
                client_id: c.clone(),
                node: 3,
                nonce: 1,
                clean_start: true,
                will: None,
                username: None,
                same_identity_only: false,
            },
        );
        apply(
            &mut v,
            &mut s,
            3,
            &Command::SessionCreate {
                client_id: c.clone(),
                expiry: 10,
            },
        );
        apply(
            &mut v,
            &mut s,
            3,
            &Command::Subscribe {
                client_id: c.clone(),
                filter: "x/#".into(),
                options: SubOptions::default(),
                identifier: Some(4),
            },
        );
        let mut hits = Vec::new();
        v.remote_sessions("x/y", |s| hits.push((s.client_id.clone(), s.identifier)));
        assert_eq!(hits, vec![(c.clone(), Some(4))]);
        // Once this node owns it, it is not remote any more.
        apply(
            &mut v,
            &mut s,
            1,
            &Command::ClaimClient {
                client_id: c.clone(),
                node: 1,
                nonce: 2,
                clean_start: false,
                will: None,
                username: None,
                same_identity_only: false,
            },
        );
        let mut n = 0;
        v.remote_sessions("x/y", |_| n += 1);
        assert_eq!(n, 0);
        // Taken back by node 3, it is remote again with its subscription.
        let claim_back = Command::ClaimClient {
            client_id: c.clone(),
            node: 3,
            nonce: 3,
            clean_start: false,
            will: None,
            username: None,
            same_identity_only: false,
        };
        apply(&mut v, &mut s, 3, &claim_back);
        let mut hits = Vec::new();
        v.remote_sessions("x/y", |s| hits.push((s.client_id.clone(), s.identifier)));
        assert_eq!(hits, vec![(c.clone(), Some(4))]);
        // Ended there, it is gone from the view.
        apply(
            &mut v,
            &mut s,
            3,
            &Command::SessionEnd {
                client_id: c.clone(),
            },
        );
        let mut n = 0;
        v.remote_sessions("x/y", |_| n += 1);
        assert_eq!(n, 0);
        assert!(v.persistent.is_empty(), "nothing left indexed");
        // Node 3's shared route is left: a view rebuilt whole says so too.
        assert!(v.has_remote());
        let mut rebuilt = ClusterView::new(1);
        rebuilt.rebuild(&s);
        assert!(rebuilt.has_remote());
        apply(&mut v, &mut s, 1, &Command::NodeGone { node: 3 });
        assert!(!v.has_remote(), "no other node's route or id is left");
        rebuilt.rebuild(&s);
        assert!(!rebuilt.has_remote());
    }
}
