//! Leader election on a Lease, against the API double: one holder at a
//! time, takeover after expiry, immediate handover on release; a replica
//! whose renewals hang stops its controllers before another takes over;
//! expiry is judged by when a replica saw the record change, not by the
//! holder's clock.

mod api_double;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_double::ApiDouble;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use raftmq_operator::leader::{self, Ending, LeaseLock, Timing};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
        Duration::from_secs(1),
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

    // a stops renewing, with a short Lease: b sees the record unchanged
    // for longer than its duration and takes over.
    api.patch(
        "coordination.k8s.io/v1",
        "leases",
        "ops",
        "raftmq-operator",
        json!({"spec": {"leaseDurationSeconds": 1}}),
    );
    assert!(!b.try_acquire_or_renew().await.expect("b"), "just changed");
    tokio::time::sleep(Duration::from_millis(1200)).await;
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

type Log = Arc<Mutex<Vec<(&'static str, Instant)>>>;

/// A stand-in controller: "reconciles" every 10 ms until stopped.
fn ticking(who: &'static str, log: Log) -> impl FnOnce() -> Vec<JoinHandle<()>> {
    move || {
        vec![tokio::spawn(async move {
            loop {
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((who, Instant::now()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })]
    }
}

fn replica(
    api: &ApiDouble,
    who: &'static str,
    timing: Timing,
    log: Log,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Ending> {
    let leases: Api<Lease> = Api::namespaced(api.client_as(who), "ops");
    tokio::spawn(async move {
        let lock = LeaseLock::new(leases, "raftmq-operator", who, timing.lease);
        leader::run(&lock, timing, stop, ticking(who, log)).await.0
    })
}

async fn wait_for(log: &Log, who: &str, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(w, _)| *w == who)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_renewal_stops_the_controllers_before_another_replica_takes_over() {
    let api = ApiDouble::new();
    let timing = Timing::for_lease(Duration::from_secs(2));
    let log: Log = Arc::default();
    let (_stop_tx, stop) = watch::channel(false);
    let a = replica(&api, "a", timing, log.clone(), stop.clone());
    assert!(wait_for(&log, "a", Duration::from_secs(5)).await, "a leads");
    let b = replica(&api, "b", timing, log.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // a's connection to the API server stalls: its renewals hang (its
    // controllers, here, go on working).
    api.hang("a", true);
    assert!(
        wait_for(&log, "b", Duration::from_secs(15)).await,
        "b takes over"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), a).await;
    let entries = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let last_a = entries
        .iter()
        .filter(|(w, _)| *w == "a")
        .map(|(_, t)| *t)
        .max();
    let first_b = entries
        .iter()
        .filter(|(w, _)| *w == "b")
        .map(|(_, t)| *t)
        .min();
    let (Some(last_a), Some(first_b)) = (last_a, first_b) else {
        panic!("both led: {entries:?}");
    };
    assert!(
        last_a < first_b,
        "a reconciled {:?} after b started",
        last_a - first_b
    );
    assert!(
        matches!(ended, Ok(Ok(Ending::Lost))),
        "a stopped leading: {ended:?}"
    );
    b.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_judged_by_when_the_record_was_seen_not_by_the_holders_clock() {
    let api = ApiDouble::new();
    let leases = |who| Api::<Lease>::namespaced(api.client_as(who), "ops");
    // a's clock is an hour behind: the renewTime it writes looks long
    // expired to everyone else's clock.
    let a = LeaseLock::new(leases("a"), "raftmq-operator", "a", Duration::from_secs(2)).with_clock(
        Arc::new(|| {
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1)
        }),
    );
    let b = LeaseLock::new(leases("b"), "raftmq-operator", "b", Duration::from_secs(2));
    assert!(a.try_acquire_or_renew().await.expect("a"));
    for _ in 0..6 {
        assert!(
            !b.try_acquire_or_renew().await.expect("b"),
            "b must not take a Lease a keeps renewing"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(a.try_acquire_or_renew().await.expect("a renews"));
    }
    // a stops: b takes over once it has seen no change for a Lease's time.
    assert!(!b.try_acquire_or_renew().await.expect("b"), "just renewed");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(b.try_acquire_or_renew().await.expect("b"));
}
