//! The controller, one step a file: [`observe`] reads what the cluster
//! refers to and what runs (Secrets, certificates, optional APIs, the
//! StatefulSet, pods, each broker's Status); `decide` renders what should
//! be; `drive` takes the lifecycle plan's membership step; `apply` applies
//! with server-side apply and prunes what is no longer wanted; `report`
//! and [`events`] say what happened in status and Events. This file holds
//! what every reconcile shares, the reconcile itself and the watch loop.

mod apply;
mod decide;
mod drive;
pub mod events;
pub mod observe;
mod report;
mod volumes;

pub use decide::template_hash;
pub use volumes::{quantity, VOLUME_EXPANSION_FAILED};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use time::OffsetDateTime;
use tracing::warn;

use crate::certs::CertError;
use crate::crd::MqttCluster;
use crate::membership::Membership;
use crate::render::{RenderError, MANAGER};
use crate::telemetry::Metrics;
use apply::owned_by;
use report::report_failure;

/// How often a healthy cluster is looked at again without any change.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a Degraded cluster is looked at again.
pub const RETRY_DEGRADED: Duration = Duration::from_secs(60);
/// Pod template annotation: a hash of the rest of the template, so that a
/// pod shows which template it runs without the StatefulSet's revisions.
pub const TEMPLATE_HASH: &str = "raftmq.io/template-hash";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write the cluster needs, refused or failed.
    #[error("{action}: {}", api_message(.source))]
    Api { action: String, source: kube::Error },
    #[error("Kubernetes API: {}", api_message(.0))]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error("the MqttCluster has no namespace")]
    NoNamespace,
}

/// What the API server said, without the Debug dump kube's Display adds.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { .. } | Error::Kube(_) => "kube",
            Error::Render(_) => "render",
            Error::Certs(_) => "certs",
            Error::NoNamespace => "namespace",
        }
    }

    /// The condition and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Api { .. } => "ApplyFailed",
            Error::Kube(_) => "KubernetesApiError",
            Error::Render(_) => "RenderFailed",
            Error::Certs(_) => "CertificateError",
            Error::NoNamespace => "NoNamespace",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub membership: Arc<dyn Membership>,
    /// The clock certificates are judged by (tests move it).
    pub now: Arc<dyn Fn() -> OffsetDateTime + Send + Sync>,
    /// Scale and upgrade pacing (membership management).
    pub lifecycle: LifecycleSettings,
    /// Reconciles failed in a row, per cluster (`namespace/name`): the
    /// error policy's backoff.
    pub failures: std::sync::Mutex<BTreeMap<String, u32>>,
    /// The operator's own namespace (`POD_NAMESPACE`, which the chart sets
    /// from the downward API): the NetworkPolicy admits the operator to
    /// the cluster port from there only.
    pub operator_namespace: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct LifecycleSettings {
    /// A wait (a pod that does not start, a group that does not heal) this
    /// long becomes Degraded.
    pub stuck_after: Duration,
    /// First retry after a failed step; doubles per failure up to
    /// `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How soon to look again while a step is in progress.
    pub poll: Duration,
    /// Log entries a voter may be behind the leader and count as caught up.
    pub max_lag: u64,
    /// A pod not ready this long counts as broken: when it runs an old
    /// template it is rolled without waiting for it (it serves nobody).
    pub unready_after: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            stuck_after: Duration::from_secs(300),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            poll: Duration::from_secs(2),
            max_lag: 1000,
            unready_after: Duration::from_secs(300),
        }
    }
}

impl LifecycleSettings {
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, membership: Arc<dyn Membership>) -> Context {
        let instance = std::env::var("POD_NAME").ok();
        let recorder = Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: MANAGER.into(),
                instance,
            },
        );
        Context {
            client,
            recorder,
            metrics,
            membership,
            now: Arc::new(OffsetDateTime::now_utc),
            lifecycle: LifecycleSettings::default(),
            failures: std::sync::Mutex::new(BTreeMap::new()),
            operator_namespace: std::env::var("POD_NAMESPACE").ok(),
        }
    }
}

fn cluster_key(cluster: &MqttCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// The whole reconcile of one MqttCluster. A failure is written to status
/// and told in a Warning Event before it goes to the error policy.
pub async fn reconcile(cluster: Arc<MqttCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cluster, &ctx).await;
    let key = cluster_key(&cluster);
    let outcome = match &result {
        Ok((_, true)) => "degraded",
        Ok((_, false)) => "ok",
        Err(e) => {
            ctx.metrics
                .failures
                .with_label_values(&[e.metric_label()])
                .inc();
            "error"
        }
    };
    match &result {
        Ok(_) => {
            lock(&ctx.failures).remove(&key);
        }
        Err(e) => {
            *lock(&ctx.failures).entry(key).or_insert(0) += 1;
            report_failure(&ctx, &cluster, e).await;
        }
    }
    ctx.metrics.observe(outcome, started.elapsed());
    result.map(|(a, _)| a)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One reconcile in the shape of kube-rs's controller-rs: observe, decide,
/// act (the membership step, then apply and prune), report. Returns the
/// next action and whether the cluster is Degraded.
async fn reconcile_inner(cluster: &MqttCluster, ctx: &Context) -> Result<(Action, bool), Error> {
    if cluster.metadata.deletion_timestamp.is_some() {
        // Children carry owner references; the garbage collector removes
        // them (volumes follow storage.deleteClaimsOnDelete).
        return Ok((Action::await_change(), false));
    }
    let seen = observe::observe(ctx, cluster).await?;
    let observed_life = seen.lifecycle(cluster, &ctx.lifecycle);
    if !seen.problems.is_empty() {
        report::invalid(ctx, cluster, &seen, &observed_life).await?;
        return Ok((Action::requeue(RETRY_DEGRADED), true));
    }

    let mut want = decide::desired(cluster, &seen)?;
    let mut warnings = seen.warnings.clone();
    let expansion =
        volumes::reconcile_volumes(ctx, cluster, &seen, &mut want.rendered, &mut warnings).await?;
    if seen.new_generation {
        events::problems(ctx, cluster, "Validate", &warnings).await;
    }

    let (mut life, r) = drive::lifecycle(ctx, cluster, &seen, &mut want).await;
    let mut requeue = seen.requeue(RESYNC).min(r);
    if let (None, Some(p)) = (&life.degraded, &expansion) {
        life.degraded = Some((p.reason.to_string(), p.message.clone()));
        requeue = requeue.min(RETRY_DEGRADED);
    }
    if !seen.bridge_problems.is_empty() {
        events::bridge_problems(ctx, cluster, &seen).await;
        life.degraded = Some(with_bridge_problems(
            life.degraded.take(),
            &seen.bridge_problems,
        ));
        requeue = requeue.min(RETRY_DEGRADED);
    }

    let sts = apply::apply_all(&ctx.client, &seen.ns, &want.rendered).await?;
    apply::prune_all(&ctx.client, cluster, &seen, &want, &sts).await?;
    events::changes(ctx, cluster, &seen, &want.rendered, want.users_changed).await;
    report::reconciled(ctx, cluster, &seen, &sts, &warnings, &life).await?;
    Ok((Action::requeue(requeue), life.degraded.is_some()))
}

/// The Degraded reason and message with the bridges' problems added (the
/// first problem's reason when nothing else is wrong).
fn with_bridge_problems(
    degraded: Option<(String, String)>,
    problems: &[crate::validate::Problem],
) -> (String, String) {
    let told = problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    match degraded {
        Some((reason, msg)) => (reason, format!("{msg}; {told}")),
        None => (problems.first().map_or("", |p| p.reason).to_string(), told),
    }
}

/// Exponential backoff per cluster: `retry_base` doubling per failure in a
/// row, up to `retry_max` (a success resets it).
pub fn error_policy(cluster: Arc<MqttCluster>, _error: &Error, ctx: Arc<Context>) -> Action {
    let n = lock(&ctx.failures)
        .get(&cluster_key(&cluster))
        .copied()
        .unwrap_or(1);
    Action::requeue(ctx.lifecycle.backoff(n))
}

/// Which MqttClusters in `store` a Secret matters to: the ones owning it
/// and the ones naming it in a user, TLS, PSK or bridge reference.
pub fn clusters_for_secret(
    clusters: &[Arc<MqttCluster>],
    secret: &Secret,
) -> Vec<ObjectRef<MqttCluster>> {
    let ns = secret.namespace();
    let name = secret.name_any();
    clusters
        .iter()
        .filter(|c| c.namespace() == ns)
        .filter(|c| {
            let s = &c.spec;
            let owned = c.uid().is_some_and(|uid| owned_by(&secret.metadata, &uid));
            owned
                || s.auth
                    .users
                    .iter()
                    .any(|u| u.password_secret_ref.name == name)
                || s.tls.as_ref().and_then(|t| t.secret_name.as_ref()) == Some(&name)
                || s.psk.as_ref().map(|p| &p.secret_name) == Some(&name)
                || s.bridges
                    .iter()
                    .any(|b| b.secret_names().contains(&name.as_str()))
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Runs the controller for one namespace (`None`: all namespaces) until
/// `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let wc = watcher::Config::default();
    let controller = Controller::new(api::<MqttCluster>(&client, &namespace), wc.clone());
    let store = controller.store();
    controller
        .owns(api::<StatefulSet>(&client, &namespace), wc.clone())
        .owns(api::<Service>(&client, &namespace), wc.clone())
        .owns(api::<ConfigMap>(&client, &namespace), wc.clone())
        .owns(api::<PodDisruptionBudget>(&client, &namespace), wc.clone())
        .watches(
            api::<Secret>(&client, &namespace),
            wc,
            move |secret: Secret| clusters_for_secret(&store.state(), &secret),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "controller");
            }
        })
        .await;
}
