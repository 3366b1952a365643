//! The seam for Raft membership. Membership changes (add learner, promote,
//! remove retiring voters before scale-down, wait for a healthy group
//! between rolling-update steps) go through the brokers' Admin gRPC service
//! on the leader; that is a later issue. The controller calls this trait at
//! fixed points so the implementation can slot in without touching the
//! reconcile flow.

use std::future::Future;
use std::pin::Pin;

use crate::crd::MqttCluster;

/// What the operator knows about the Raft group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipView {
    /// Pod name of the current leader.
    pub leader: Option<String>,
    /// Pod names of the voters.
    pub members: Vec<String>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Membership: Send + Sync {
    /// Reads the group's leader and voters.
    fn observe<'a>(&'a self, cluster: &'a MqttCluster) -> BoxFuture<'a, MembershipView>;

    /// Called before the StatefulSet's replicas are lowered from `from` to
    /// `to`: the implementation removes the retiring voters and returns
    /// whether the scale-down may proceed now.
    fn prepare_scale_down<'a>(
        &'a self,
        cluster: &'a MqttCluster,
        from: i32,
        to: i32,
    ) -> BoxFuture<'a, bool>;

    /// The StatefulSet `partition` to roll out with: pods with an ordinal
    /// below it keep the old template. An implementation holds a rollout
    /// (returns the current partition) while the Raft group is unhealthy
    /// and lowers it one pod at a time once the group has caught up;
    /// `None` lets the StatefulSet controller roll freely (one unready pod
    /// at a time, gated by `/readyz`).
    fn rollout_partition<'a>(&'a self, cluster: &'a MqttCluster) -> BoxFuture<'a, Option<i32>>;
}

/// No membership management yet: nothing observed, scale-downs proceed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unmanaged;

impl Membership for Unmanaged {
    fn observe<'a>(&'a self, _cluster: &'a MqttCluster) -> BoxFuture<'a, MembershipView> {
        Box::pin(async { MembershipView::default() })
    }

    fn prepare_scale_down<'a>(
        &'a self,
        _cluster: &'a MqttCluster,
        _from: i32,
        _to: i32,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async { true })
    }

    fn rollout_partition<'a>(&'a self, _cluster: &'a MqttCluster) -> BoxFuture<'a, Option<i32>> {
        Box::pin(async { None })
    }
}
