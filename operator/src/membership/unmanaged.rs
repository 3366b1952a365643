//! A test double: no membership management at all, for the tests of what
//! the controller does besides Raft membership (rendering, applying,
//! status). Compiled for tests and the `test-support` feature only.

use super::{BoxFuture, Change, Membership, MembershipError, NodeState, Result, Target};

/// No membership management: nothing observed, scale-downs and rollouts
/// proceed as the StatefulSet controller does them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unmanaged;

fn unmanaged<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T>> {
    Box::pin(async {
        Err(MembershipError::Rpc {
            call: "any",
            pod: String::new(),
            message: "membership is not managed".into(),
        })
    })
}

impl Membership for Unmanaged {
    fn managed(&self) -> bool {
        false
    }
    fn peer_addr(&self, target: &Target, ordinal: i32) -> String {
        format!(
            "{}:{}",
            target.names.pod_host(ordinal),
            crate::render::CLUSTER_PORT
        )
    }
    fn status<'a>(&'a self, _: &'a Target, _: i32) -> BoxFuture<'a, Result<NodeState>> {
        unmanaged()
    }
    fn change<'a>(&'a self, _: &'a Target, _: i32, _: Change) -> BoxFuture<'a, Result<String>> {
        unmanaged()
    }
    fn drain<'a>(&'a self, _: &'a Target, _: i32, _: String) -> BoxFuture<'a, Result<(u64, u64)>> {
        unmanaged()
    }
}
