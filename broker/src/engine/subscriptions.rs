//! Subscriptions in and out of the topic tree, and the routes they
//! announce: the first local subscription on a filter tells the cluster
//! to forward matching publishes here, the last one withdraws that.

use std::sync::Arc;

use super::{Broker, SessionCell};
use crate::codec::{ByteStr, SubOptions};
use crate::state::{Command, Ticket};
use crate::topic_tree::{split_share, ParsedFilter, Subscriber, TopicTree};

/// The local subscriptions: filters to the sessions subscribed.
pub type Subscriptions = TopicTree<ByteStr, Arc<SessionCell>>;

impl Broker {
    /// Adds (or replaces) a subscription of `cell`. Returns whether the
    /// session already had one on this filter, the ticket of what the
    /// cluster must learn of it (the session's subscription, a new route),
    /// so that SUBACK can wait until other nodes will route to it, and the
    /// retained store's stamp as of the moment it went into the tree (see
    /// `retained.rs`: which retained messages it gets from the store).
    ///
    /// No ticket for a clean session's route on a node without peers: the
    /// route is still submitted (in order with any later withdrawal, for
    /// nodes that join), but nobody can route by it before it commits, and
    /// this node's own publishers match the tree, which has it already.
    pub fn subscribe(
        &self,
        cell: &Arc<SessionCell>,
        raw: &ByteStr,
        parsed: &ParsedFilter<'_>,
        options: SubOptions,
        identifier: Option<u32>,
    ) -> (bool, Option<Ticket>, u64) {
        // Under the store's lock, which retained publishes store and route
        // under: the stamp splits them into routed to us and not.
        let store = self.local.retained.read();
        let (existed, persistent, route) =
            self.subscribe_local(cell, raw, parsed, options, identifier);
        let since = store.stamp();
        drop(store);
        let mut commands = Vec::new();
        if persistent {
            commands.push(Command::Subscribe {
                client_id: cell.client_id.clone(),
                filter: raw.clone(),
                options,
                identifier,
            });
        }
        commands.extend(route);
        if commands.is_empty() {
            return (existed, None, since);
        }
        let ticket = self.cluster.seam.submit(commands);
        let wait = persistent || self.cluster.seam.has_peers();
        (existed, wait.then_some(ticket), since)
    }

    /// Counts a local subscription on `raw`; the first announces a route.
    fn route_added(&self, raw: &ByteStr) -> Option<Command> {
        let mut routes = self.cluster.local_routes.lock();
        let n = routes.entry(raw.clone()).or_insert(0);
        *n += 1;
        (*n == 1).then(|| Command::RouteAdd {
            node: self.node_id,
            filter: raw.clone(),
        })
    }

    /// Uncounts one; the last withdraws the route.
    fn route_removed(&self, raw: &ByteStr) -> Option<Command> {
        let mut routes = self.cluster.local_routes.lock();
        let n = routes.get_mut(raw)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        routes.remove(raw);
        Some(Command::RouteRemove {
            node: self.node_id,
            filter: raw.clone(),
        })
    }

    /// The filters this node has local subscribers on.
    pub(crate) fn local_route_filters(&self) -> Vec<ByteStr> {
        self.cluster.local_routes.lock().keys().cloned().collect()
    }

    /// Adds the subscription to the tree and the session only (restore
    /// from replicated state); returns (existed, session is persistent,
    /// the route it announces if it is the filter's first here).
    pub(crate) fn subscribe_local(
        &self,
        cell: &Arc<SessionCell>,
        raw: &ByteStr,
        parsed: &ParsedFilter<'_>,
        options: SubOptions,
        identifier: Option<u32>,
    ) -> (bool, bool, Option<Command>) {
        let mut tree = self.local.subscriptions.write();
        let added = tree.insert(
            parsed.group,
            parsed.filter,
            Subscriber {
                key: cell.client_id.clone(),
                value: cell.clone(),
                options,
                identifier,
            },
        );
        let route = if added { self.route_added(raw) } else { None };
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
        (existed, s.is_persistent(), route)
    }

    /// Removes a subscription; true if it existed.
    pub fn unsubscribe(
        &self,
        cell: &SessionCell,
        raw: &ByteStr,
        parsed: &ParsedFilter<'_>,
    ) -> bool {
        let removed_from_tree =
            self.local
                .subscriptions
                .write()
                .remove(parsed.group, parsed.filter, &cell.client_id);
        let mut s = cell.session.lock();
        let existed = s.subscriptions.remove(raw).is_some();
        let persistent = s.is_persistent();
        drop(s);
        let mut commands = Vec::new();
        if existed && persistent {
            commands.push(Command::Unsubscribe {
                client_id: cell.client_id.clone(),
                filter: raw.clone(),
            });
        }
        if removed_from_tree {
            commands.extend(self.route_removed(raw));
        }
        self.submit(commands);
        existed || removed_from_tree
    }

    /// Unsubscribes the session `client_id` from each filter it holds that
    /// `keep` refuses, as its client's UNSUBSCRIBE would (so the cluster
    /// learns it through the log); returns those filters. Only the node
    /// that holds the session can (the state machine takes a session's
    /// commands from its owner): elsewhere nothing happens.
    pub fn unsubscribe_unless(&self, client_id: &str, keep: impl Fn(&str) -> bool) -> Vec<ByteStr> {
        let Some(cell) = self.session(client_id) else {
            return Vec::new();
        };
        let stale: Vec<ByteStr> = cell
            .session
            .lock()
            .subscriptions
            .keys()
            .filter(|f| !keep(f))
            .cloned()
            .collect();
        for raw in &stale {
            let (group, filter) = split_share(raw);
            cell.session.lock().stop_cursor(raw);
            self.unsubscribe(&cell, raw, &ParsedFilter { group, filter });
        }
        stale
    }

    /// Removes `client_id`'s subscriptions on `filters` (as written);
    /// returns the routes this withdraws.
    pub(crate) fn remove_from_tree(
        &self,
        client_id: &ByteStr,
        filters: &[ByteStr],
    ) -> Vec<Command> {
        if filters.is_empty() {
            return Vec::new();
        }
        let mut tree = self.local.subscriptions.write();
        let mut commands = Vec::new();
        for raw in filters {
            let (group, filter) = split_share(raw);
            if tree.remove(group, filter, client_id) {
                commands.extend(self.route_removed(raw));
            }
        }
        commands
    }
}
