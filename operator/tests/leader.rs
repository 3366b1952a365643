//! Leader election on a Lease, against the API double: one holder at a
//! time, takeover after expiry, immediate handover on release.

mod api_double;

use std::time::Duration;

use api_double::ApiDouble;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use raftmq_operator::leader::LeaseLock;
use serde_json::json;

#[tokio::test]
async fn one_leader_at_a_time() {
    let api = ApiDouble::new();
    let leases: Api<Lease> = Api::namespaced(api.client(), "ops");
    let a = LeaseLock::new(
        leases.clone(),
        "raftmq-operator",
        "a",
        Duration::from_secs(15),
    );
    let b = LeaseLock::new(
        leases.clone(),
        "raftmq-operator",
        "b",
        Duration::from_secs(15),
    );

    assert!(a.try_acquire_or_renew().await.expect("a"));
    assert!(
        !b.try_acquire_or_renew().await.expect("b"),
        "b must wait while a holds a fresh Lease"
    );
    assert!(a.try_acquire_or_renew().await.expect("a renews"));
    let lease = api
        .get("coordination.k8s.io/v1", "leases", "ops", "raftmq-operator")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "a");

    // a stops renewing: its renewTime is in the past beyond the duration.
    api.patch(
        "coordination.k8s.io/v1",
        "leases",
        "ops",
        "raftmq-operator",
        json!({"spec": {"renewTime": "2000-01-01T00:00:00.000000Z"}}),
    );
    assert!(b.try_acquire_or_renew().await.expect("b takes over"));
    assert!(!a.try_acquire_or_renew().await.expect("a"), "a lost it");
    let lease = api
        .get("coordination.k8s.io/v1", "leases", "ops", "raftmq-operator")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // b releases on shutdown; a gets it at once.
    b.release().await.expect("release");
    assert!(a.try_acquire_or_renew().await.expect("a again"));
}
