//! Leader election on a `coordination.k8s.io/v1` Lease, so that two
//! operator replicas never reconcile at once, as client-go's leaderelection
//! does it. Optimistic concurrency (resourceVersion on replace) decides
//! races. A holder's Lease counts as expired only once this replica has
//! seen the same record for longer than its duration, by its own clock:
//! never by comparing the holder's renewTime with the local clock (the two
//! clocks may disagree). Every acquire or renew attempt has a deadline
//! shorter than the Lease; a leader that has not renewed within it stops
//! its controllers at once, before anyone else can have taken over, and
//! exits (its Deployment restarts it as a follower).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The clock written into renewTime (tests skew it).
    clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// The last record seen (holder, renewTime, transitions) and when this
    /// replica first saw it.
    observed: Mutex<Option<(String, Instant)>>,
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            clock: Arc::new(Timestamp::now),
            observed: Mutex::new(None),
        }
    }

    /// The same, writing renewTime from `clock` (a node whose clock is off).
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> Timestamp + Send + Sync>) -> LeaseLock {
        self.clock = clock;
        self
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn spec(&self, now: Timestamp, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the Lease; `Ok(true)` while we hold it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = (self.clock)();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let seen_for = self.seen_for(&spec);
        let new_spec = if holder == self.identity {
            self.spec(now, transitions, spec.acquire_time.clone())
        } else {
            let ttl = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(0) as u64);
            if !holder.is_empty() && seen_for < ttl {
                return Ok(false);
            }
            self.spec(now, transitions + 1, None)
        };
        lease.spec = Some(new_spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// How long this replica has seen the Lease record unchanged (by its
    /// own clock).
    fn seen_for(&self, spec: &LeaseSpec) -> Duration {
        let record = format!(
            "{:?}/{:?}/{:?}",
            spec.holder_identity,
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_transitions
        );
        let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match o.as_ref() {
            Some((r, at)) if *r == record => at.elapsed(),
            _ => {
                *o = Some((record, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// Gives the Lease up (on shutdown) so a follower takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(&self.name).await? {
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                lease.spec = Some(spec);
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if conflict(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Lease timing (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a holder's Lease lasts without renewal.
    pub lease: Duration,
    /// A leader that could not renew for this long stops; shorter than
    /// `lease`, so it has stopped before another replica may take over.
    pub renew_deadline: Duration,
    /// How often to try (acquire, renew).
    pub retry: Duration,
}

impl Timing {
    /// The renew deadline at 2/3 of the lease, retries at 2/15 (15 s: 10 s
    /// and 2 s).
    pub fn for_lease(lease: Duration) -> Timing {
        Timing {
            lease,
            renew_deadline: lease * 2 / 3,
            retry: lease * 2 / 15,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::for_lease(Duration::from_secs(15))
    }
}

/// How leading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// `stop` fired: the controllers are handed back to be shut down.
    Stopped,
    /// The Lease is lost or could not be renewed in time: the controllers
    /// were stopped (aborted).
    Lost,
}

/// Waits for the Lease, then starts the controllers and keeps the Lease.
/// Each attempt gets at most the renew deadline; once no renewal has
/// succeeded for the renew deadline (counted from when the last good one
/// was sent), or another replica holds the Lease, the controllers are
/// aborted at once: another replica may be reconciling.
pub async fn run(
    lock: &LeaseLock,
    timing: Timing,
    mut stop: watch::Receiver<bool>,
    start: impl FnOnce() -> Vec<JoinHandle<()>>,
) -> (Ending, Vec<JoinHandle<()>>) {
    let mut acquired_at;
    loop {
        acquired_at = Instant::now();
        match tokio::time::timeout(timing.renew_deadline, lock.try_acquire_or_renew()).await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "leader election"),
            Err(_) => {
                warn!(after = ?timing.renew_deadline, "leader election: no answer from the API server")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(timing.retry) => {},
            _ = stop.changed() => return (Ending::Stopped, Vec::new()),
        }
    }
    info!(identity = lock.identity(), "leading");
    let controllers = start();
    let mut renewed = acquired_at;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(timing.retry) => {},
            _ = stop.changed() => return (Ending::Stopped, controllers),
        }
        let sent = Instant::now();
        let deadline = renewed + timing.renew_deadline;
        match tokio::time::timeout_at(deadline, lock.try_acquire_or_renew()).await {
            Ok(Ok(true)) => renewed = sent,
            Ok(Ok(false)) => {
                error!("lost the leader Lease to another replica; stopping");
                break;
            }
            Ok(Err(e)) => warn!(error = %e, "renewing the leader Lease"),
            Err(_) => {
                error!(
                    deadline = ?timing.renew_deadline,
                    "could not renew the leader Lease in time; stopping"
                );
                break;
            }
        }
        if renewed.elapsed() >= timing.renew_deadline {
            error!("could not renew the leader Lease in time; stopping");
            break;
        }
    }
    for c in &controllers {
        c.abort();
    }
    (Ending::Lost, controllers)
}
