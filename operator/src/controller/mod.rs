//! The controller: reads what the cluster refers to (user Secrets,
//! certificates, which optional APIs exist), renders, applies with
//! server-side apply, prunes what is no longer wanted, and reports status and
//! Events.

pub mod events;
pub mod observe;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::certs::{self, CertError};
use crate::crd::Operation;
use crate::crd::{ListenerKind, MqttCluster, TlsMode};
use events::{publish, publish_about};
use crate::lifecycle::{self, node_id, Step};
use crate::membership::{ClientTls, Membership, MembershipError, Target};
use observe::pods as observe;
use crate::render::monitoring::{
    certificate_resource, dns_names, service_monitor_resource, DEFAULT_CERT_HOURS,
};
use crate::render::{self, Names, Observed, RenderError, TlsMaterial, CONFIG_CHECKSUM, MANAGER};
use crate::status::{self, Lifecycle, Rollout, DEGRADED};
use crate::telemetry::Metrics;
use crate::validate::{self, Problem};

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
        }
    }
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Api {
        action: format!("applying {} {name:?}", K::kind(&())),
        source,
    })
}

async fn apply_dynamic(
    client: &Client,
    ns: &str,
    ar: &ApiResource,
    obj: &DynamicObject,
) -> Result<DynamicObject, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let name = obj.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Api {
        action: format!("applying {} {name:?}", ar.kind),
        source,
    })
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.uid == uid))
}

/// Deletes `name` if it exists and this cluster owns it.
async fn prune<K>(api: &Api<K>, name: &str, uid: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.get_opt(name).await? {
        Some(o) if owned_by(o.meta(), uid) => {
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
                Err(e) => Err(e),
            }
        }
        _ => Ok(false),
    }
}

/// Whether the API server serves `group_version` with `plural`.
async fn api_available(client: &Client, group_version: &str, plural: &str) -> bool {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(_) => false,
    }
}

fn secret_string(s: &Secret, key: &str) -> Option<Result<String, ()>> {
    if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8(v.0.clone()).map_err(|_| ()));
    }
    s.string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| Ok(v.clone()))
}

/// Reads every user's password from its Secret.
async fn resolve_users(
    secrets: &Api<Secret>,
    cluster: &MqttCluster,
    ns: &str,
    problems: &mut Vec<Problem>,
) -> Result<Vec<(String, String)>, kube::Error> {
    let mut out = Vec::new();
    let mut cache: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    for u in &cluster.spec.auth.users {
        let r = &u.password_secret_ref;
        if !cache.contains_key(&r.name) {
            cache.insert(r.name.clone(), secrets.get_opt(&r.name).await?);
        }
        let Some(Some(secret)) = cache.get(&r.name) else {
            problems.push(Problem {
                reason: "SecretNotFound",
                message: format!(
                    "user {}: Secret {:?} (auth.users passwordSecretRef) does not exist in namespace {ns}",
                    u.username, r.name
                ),
            });
            continue;
        };
        match secret_string(secret, &r.key) {
            None => problems.push(Problem {
                reason: "SecretKeyMissing",
                message: format!(
                    "user {}: Secret {:?} has no key {:?}",
                    u.username, r.name, r.key
                ),
            }),
            Some(Err(())) => problems.push(Problem {
                reason: "SecretInvalid",
                message: format!(
                    "user {}: key {:?} of Secret {:?} is not UTF-8 text",
                    u.username, r.key, r.name
                ),
            }),
            Some(Ok(pw)) if pw.is_empty() => problems.push(Problem {
                reason: "SecretInvalid",
                message: format!(
                    "user {}: key {:?} of Secret {:?} is empty",
                    u.username, r.key, r.name
                ),
            }),
            Some(Ok(pw)) => out.push((u.username.clone(), pw)),
        }
    }
    Ok(out)
}

fn material_from(ca: Option<&Secret>, tls: Option<&Secret>) -> Option<TlsMaterial> {
    let get =
        |s: Option<&Secret>, k: &str| s.and_then(|s| secret_string(s, k)).and_then(Result::ok);
    Some(TlsMaterial {
        ca_crt: get(ca, "ca.crt")?,
        ca_key: get(ca, "ca.key")?,
        tls_crt: get(tls, "tls.crt")?,
        tls_key: get(tls, "tls.key")?,
    })
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

/// Ready=False and Degraded=True with the error's reason and message, and a
/// Warning Event (repeats fold into one Event's series).
async fn report_failure(ctx: &Context, cluster: &MqttCluster, e: &Error) {
    warn!(cluster = %cluster.name_any(), namespace = ?cluster.namespace(), error = %e, "reconcile failed");
    let message = format!("reconcile failed: {e}");
    publish(
        ctx,
        cluster,
        EventType::Warning,
        e.reason(),
        "Reconcile",
        message.clone(),
    )
    .await;
    let st = status::failed(
        cluster,
        e.reason(),
        &message,
        k8s_openapi::jiff::Timestamp::now(),
    );
    if let Err(pe) = patch_status(ctx, cluster, &st).await {
        warn!(cluster = %cluster.name_any(), error = %pe, "could not write the failure to status");
    }
}

/// Returns the next action and whether the cluster is Degraded.
async fn reconcile_inner(cluster: &MqttCluster, ctx: &Context) -> Result<(Action, bool), Error> {
    if cluster.metadata.deletion_timestamp.is_some() {
        // Children carry owner references; the garbage collector removes
        // them (volumes follow storage.deleteClaimsOnDelete).
        return Ok((Action::await_change(), false));
    }
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let names = Names::of(cluster);
    let uid = cluster.uid().unwrap_or_default();
    let client = &ctx.client;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let previous = cluster.status.clone().unwrap_or_default();
    let new_generation = previous.observed_generation != cluster.metadata.generation;

    let findings = validate::validate(&cluster.spec);
    let mut problems = findings.errors.clone();
    problems.extend(validate::name_problem(&names.cluster));
    let warnings = findings.warnings.clone();

    // Users.
    let users = resolve_users(&secrets, cluster, &ns, &mut problems).await?;
    let existing_passwd = secrets
        .get_opt(&names.users_secret())
        .await?
        .and_then(|s| secret_string(&s, render::PASSWD_FILE))
        .and_then(Result::ok);

    // Certificates.
    let mut observed = Observed::default();
    let mut peer_warning: Option<Problem> = None;
    let mut cert_not_after = None;
    let mut renew_in: Option<Duration> = None;
    let tls = cluster.spec.effective_tls();
    if let Some(t) = &tls {
        match t.mode {
            TlsMode::Operator => {
                let ca = secrets.get_opt(&names.ca_secret()).await?;
                let srv = secrets.get_opt(&names.tls_secret()).await?;
                let existing = material_from(ca.as_ref(), srv.as_ref());
                let any_stored = ca.is_some() || srv.is_some();
                let hours = t.duration_hours.unwrap_or(DEFAULT_CERT_HOURS);
                let now = (ctx.now)();
                let out = certs::ensure(
                    &names.cluster,
                    &names.client_host(),
                    &dns_names(&names, t),
                    hours,
                    existing.as_ref(),
                    now,
                )?;
                if let Some(why) = &out.ca_issued {
                    ctx.metrics
                        .certificates_issued
                        .with_label_values(&["ca"])
                        .inc();
                    let (reason, note) = if any_stored {
                        ("CARotated", format!("issued a new CA: {why}"))
                    } else {
                        ("CAIssued", "issued the cluster CA".to_string())
                    };
                    publish(
                        ctx,
                        cluster,
                        EventType::Normal,
                        reason,
                        "IssueCertificate",
                        note,
                    )
                    .await;
                }
                if let Some(why) = &out.server_issued {
                    ctx.metrics
                        .certificates_issued
                        .with_label_values(&["server"])
                        .inc();
                    let reason = if any_stored {
                        "CertificateRenewed"
                    } else {
                        "CertificateIssued"
                    };
                    publish(
                        ctx,
                        cluster,
                        EventType::Normal,
                        reason,
                        "IssueCertificate",
                        format!(
                            "issued the server certificate (valid until {}): {why}",
                            out.not_after
                        ),
                    )
                    .await;
                }
                let left = out.renew_at - now;
                renew_in = Some(Duration::from_secs(left.whole_seconds().max(60) as u64));
                cert_not_after = Some(
                    out.not_after
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                );
                observed.tls = Some(out.material);
                observed.tls_has_ca = true;
            }
            TlsMode::Secret => {
                let name = t.secret_name.clone().unwrap_or_default();
                match secrets.get_opt(&name).await? {
                    None => problems.push(Problem {
                        reason: "SecretNotFound",
                        message: format!(
                            "tls.secretName: Secret {name:?} does not exist in namespace {ns}"
                        ),
                    }),
                    Some(s) => {
                        for key in ["tls.crt", "tls.key"] {
                            if secret_string(&s, key).is_none() {
                                problems.push(Problem {
                                    reason: "SecretKeyMissing",
                                    message: format!(
                                        "tls.secretName: Secret {name:?} has no key {key:?}"
                                    ),
                                });
                            }
                        }
                        observed.tls_has_ca = secret_string(&s, "ca.crt").is_some();
                        if t.peer_tls && !observed.tls_has_ca {
                            peer_warning = Some(Problem {
                                reason: "PeerTlsOff",
                                message: format!(
                                    "tls.peerTls is set but Secret {name:?} has no \"ca.crt\"; traffic between brokers is not encrypted"
                                ),
                            });
                        }
                        let needs_ca = cluster.spec.listeners.active().iter().any(|l| {
                            l.kind.needs_certificate() && l.spec.require_client_certificate
                        });
                        if needs_ca && !observed.tls_has_ca {
                            problems.push(Problem {
                                reason: "SecretKeyMissing",
                                message: format!(
                                    "requireClientCertificate needs a CA: Secret {name:?} has no key \"ca.crt\""
                                ),
                            });
                        }
                    }
                }
            }
            TlsMode::CertManager => {
                observed.cert_manager_crd =
                    api_available(client, "cert-manager.io/v1", "certificates").await;
                observed.tls_has_ca = true;
                if !observed.cert_manager_crd {
                    problems.push(Problem {
                        reason: "CertManagerMissing",
                        message: "tls.mode is CertManager but the cert-manager.io/v1 Certificate API is not installed".into(),
                    });
                }
            }
        }
    }

    // The PSK identities.
    let psk_on = cluster
        .spec
        .listeners
        .active()
        .iter()
        .any(|l| l.kind == ListenerKind::Psk);
    if let (true, Some(psk)) = (psk_on, &cluster.spec.psk) {
        match secrets.get_opt(&psk.secret_name).await? {
            None => problems.push(Problem {
                reason: "SecretNotFound",
                message: format!(
                    "psk.secretName: Secret {:?} does not exist in namespace {ns}",
                    psk.secret_name
                ),
            }),
            Some(s) if secret_string(&s, &psk.key).is_none() => problems.push(Problem {
                reason: "SecretKeyMissing",
                message: format!("psk: Secret {:?} has no key {:?}", psk.secret_name, psk.key),
            }),
            Some(_) => {}
        }
    }

    // Optional APIs.
    let mut warnings = warnings;
    warnings.extend(peer_warning);
    if cluster.spec.metrics.service_monitor.enabled {
        observed.service_monitor_crd =
            api_available(client, "monitoring.coreos.com/v1", "servicemonitors").await;
        if !observed.service_monitor_crd {
            warnings.push(Problem {
                reason: "ServiceMonitorUnavailable",
                message: "metrics.serviceMonitor.enabled is set but the Prometheus Operator's ServiceMonitor API is not installed; none was created".into(),
            });
        }
    }

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let before = sts_api.get_opt(&names.statefulset()).await?;
    let target = Target {
        names: names.clone(),
        tls: admin_tls(&secrets, cluster, &names, &observed).await?,
    };
    let pods = match &before {
        Some(_) => observe::pods(client, &ns, &names).await?,
        None => Vec::new(),
    };
    let group = if ctx.membership.managed() {
        Some(observe::group(ctx.membership.as_ref(), &names, &target, &pods).await)
    } else {
        None
    };
    let troubles = observe::troubles(client, &ns, &names, &pods).await?;
    let now = (ctx.now)();
    let membership = Lifecycle {
        troubles: troubles.clone(),
        view: group
            .as_ref()
            .map(|g| {
                let facts = g.facts(cluster, before.as_ref(), None, &ctx.lifecycle, now);
                lifecycle::view(&facts, |o| names.pod(o))
            })
            .unwrap_or_default(),
        ..Lifecycle::default()
    };

    // A spec we cannot apply: leave what runs alone and say why.
    if !problems.is_empty() {
        let prev_msg = previous
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED && c.status == "True")
            .map(|c| c.message.clone());
        let st = status::build(
            cluster,
            &Rollout::of(before.as_ref(), cluster.spec.replicas),
            &problems,
            &warnings,
            &membership,
            None,
            k8s_openapi::jiff::Timestamp::now(),
        );
        let new_msg = st
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .map(|c| c.message.clone());
        if new_msg != prev_msg || new_generation {
            for p in &problems {
                publish(
                    ctx,
                    cluster,
                    EventType::Warning,
                    p.reason,
                    "Validate",
                    p.message.clone(),
                )
                .await;
            }
        }
        patch_status(ctx, cluster, &st).await?;
        return Ok((Action::requeue(RETRY_DEGRADED), true));
    }

    observed.password_file = (!users.is_empty()).then(|| {
        render::secrets::password_file(&users, existing_passwd.as_deref(), || {
            let mut salt = [0u8; render::secrets::SALT_LEN];
            // ring's system RNG; a failure leaves a zero salt, which is
            // still a valid (if weaker) hash and is replaced when the
            // password changes.
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt);
            salt
        })
    });
    let users_changed =
        observed.password_file.is_some() && observed.password_file != existing_passwd;

    let mut rendered = render::render(cluster, &observed)?;

    let mut expansion = None;
    // Volume claim templates cannot change on a StatefulSet: keep the
    // existing ones, grow the volumes in place instead.
    if let Some(b) = &before {
        let old_claims = b.spec.volume_claim_templates.clone();
        if old_claims != rendered.statefulset.spec.volume_claim_templates {
            let claim = |c: &Option<Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim>>| {
                let spec = c
                    .as_ref()
                    .and_then(|v| v.first())
                    .and_then(|c| c.spec.clone())
                    .unwrap_or_default();
                let size = spec
                    .resources
                    .and_then(|r| r.requests)
                    .and_then(|r| r.get("storage").map(|q| q.0.clone()));
                (size, spec.storage_class_name)
            };
            let (old_size, old_class) = claim(&old_claims);
            rendered.statefulset.spec.volume_claim_templates = old_claims;
            if old_class != cluster.spec.storage.storage_class_name {
                warnings.push(Problem {
                    reason: "StorageImmutable",
                    message: format!(
                        "storage.storageClassName cannot change for existing volumes; they stay on {}",
                        old_class.as_deref().unwrap_or("the default class")
                    ),
                });
            }
            let want = &cluster.spec.storage.size;
            match (old_size.as_deref().and_then(quantity), quantity(want)) {
                (Some(old), Some(new)) if new < old => warnings.push(Problem {
                    reason: "StorageImmutable",
                    message: format!(
                        "storage.size {want} is smaller than the existing volumes ({}); volumes cannot shrink",
                        old_size.clone().unwrap_or_default()
                    ),
                }),
                _ => {}
            }
        }
        expansion = expand_volumes(ctx, cluster, &names, &ns, current_replicas_of(b)).await?;
    }
    if let Some(p) = &expansion {
        let told = previous
            .conditions
            .iter()
            .any(|c| c.type_ == DEGRADED && c.reason == p.reason && c.message == p.message);
        if !told {
            publish(
                ctx,
                cluster,
                EventType::Warning,
                p.reason,
                "ExpandVolumes",
                p.message.clone(),
            )
            .await;
        }
    }
    if new_generation {
        for w in &warnings {
            publish(
                ctx,
                cluster,
                EventType::Warning,
                w.reason,
                "Validate",
                w.message.clone(),
            )
            .await;
        }
    }

    // The template hash (before it is part of the template).
    let hash = template_hash(&rendered.statefulset);
    if let Some(a) = rendered
        .statefulset
        .spec
        .template
        .metadata
        .as_mut()
        .map(|m| m.annotations.get_or_insert_with(BTreeMap::new))
    {
        a.insert(TEMPLATE_HASH.into(), hash.clone());
    }
    let mut requeue = renew_in.map_or(RESYNC, |r| r.min(RESYNC));
    let mut life = membership.clone();
    if let Some(g) = &group {
        let facts = g.facts(cluster, before.as_ref(), Some(&hash), &ctx.lifecycle, now);
        let plan = lifecycle::plan(&facts, |o| names.pod(o));
        rendered.statefulset.spec.replicas = Some(plan.replicas);
        if let Some(ru) = rendered
            .statefulset
            .spec
            .update_strategy
            .as_mut()
            .and_then(|u| u.rolling_update.as_mut())
        {
            ru.partition = Some(plan.partition);
        }
        let (l, r) = drive(ctx, cluster, &target, &plan).await;
        life = Lifecycle {
            troubles: troubles.clone(),
            ..l
        };
        requeue = requeue.min(r);
    }
    if let (None, Some(p)) = (&life.degraded, &expansion) {
        life.degraded = Some((p.reason.to_string(), p.message.clone()));
        requeue = requeue.min(RETRY_DEGRADED);
    }

    // Apply, config and Secrets first.
    apply(client, &ns, &rendered.config_map).await?;
    if let Some(acl) = &rendered.acl_config_map {
        apply(client, &ns, acl).await?;
    }
    for s in &rendered.secrets {
        apply(client, &ns, s).await?;
    }
    if let Some(c) = &rendered.certificate {
        apply_dynamic(client, &ns, &certificate_resource(), c).await?;
    }
    apply(client, &ns, &rendered.headless_service).await?;
    apply(client, &ns, &rendered.client_service).await?;
    let sts = apply(client, &ns, &rendered.statefulset).await?;
    apply(client, &ns, &rendered.pdb).await?;
    if let Some(n) = &rendered.network_policy {
        apply(client, &ns, n).await?;
    }
    if let Some(sm) = &rendered.service_monitor {
        apply_dynamic(client, &ns, &service_monitor_resource(), sm).await?;
    }

    // Prune what the spec no longer asks for.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    if rendered.acl_config_map.is_none() {
        prune(&cms, &names.acl_config_map(), &uid).await?;
    }
    let keep = rendered
        .config_map
        .metadata
        .name
        .clone()
        .unwrap_or_default();
    prune_configs(&cms, &names, &uid, &keep, &sts, &pods).await?;
    if observed.password_file.is_none() {
        prune(&secrets, &names.users_secret(), &uid).await?;
    }
    if !matches!(tls.as_ref().map(|t| &t.mode), Some(TlsMode::Operator)) {
        prune(&secrets, &names.ca_secret(), &uid).await?;
        if !matches!(tls.as_ref().map(|t| &t.mode), Some(TlsMode::CertManager)) {
            prune(&secrets, &names.tls_secret(), &uid).await?;
        }
    }
    if rendered.network_policy.is_none() {
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        prune(&api, &names.network_policy(), &uid).await?;
    }
    if rendered.service_monitor.is_none()
        && api_available(client, "monitoring.coreos.com/v1", "servicemonitors").await
    {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &service_monitor_resource());
        prune(&api, &names.service_monitor(), &uid).await?;
    }
    if rendered.certificate.is_none()
        && api_available(client, "cert-manager.io/v1", "certificates").await
    {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &certificate_resource());
        prune(&api, &names.certificate(), &uid).await?;
    }

    // Tell people what changed.
    match &before {
        None => {
            publish(
                ctx,
                cluster,
                EventType::Normal,
                "Created",
                "Apply",
                format!(
                    "created StatefulSet {} with {} replicas, Services {} and {}",
                    names.statefulset(),
                    cluster.spec.replicas,
                    names.client_service(),
                    names.headless_service()
                ),
            )
            .await
        }
        Some(b) => {
            let old_sum = b
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(CONFIG_CHECKSUM).cloned());
            if old_sum.as_deref() != Some(rendered.config_checksum.as_str()) {
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    "ConfigChanged",
                    "Apply",
                    "the broker configuration changed; rolling the pods one at a time".into(),
                )
                .await;
            }
            let old_replicas = b.spec.replicas.unwrap_or(1);
            let new_replicas = rendered.statefulset.spec.replicas.unwrap_or(1);
            if old_replicas != new_replicas {
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    "Scaled",
                    "Apply",
                    format!("scaled from {old_replicas} to {new_replicas} pods"),
                )
                .await;
            }
        }
    }
    if users_changed && existing_passwd.is_some() {
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "UsersUpdated",
            "Apply",
            format!(
                "updated the password file ({} users); brokers reload it without a restart",
                users.len()
            ),
        )
        .await;
    }

    let st = status::build(
        cluster,
        &Rollout::of(Some(&sts), cluster.spec.replicas),
        &[],
        &warnings,
        &life,
        cert_not_after,
        k8s_openapi::jiff::Timestamp::now(),
    );
    patch_status(ctx, cluster, &st).await?;
    info!(cluster = %names.cluster, namespace = %ns, phase = ?st.phase, "reconciled");
    Ok((Action::requeue(requeue), life.degraded.is_some()))
}

/// The client certificate for the Admin service when the brokers require
/// mutual TLS between nodes: the cluster's own peer certificate (it carries
/// client auth; operator-issued, a user Secret or cert-manager's Secret).
async fn admin_tls(
    secrets: &Api<Secret>,
    cluster: &MqttCluster,
    names: &Names,
    observed: &Observed,
) -> Result<Option<ClientTls>, kube::Error> {
    let Some(t) = cluster.spec.effective_tls() else {
        return Ok(None);
    };
    if !(t.peer_tls && observed.tls_has_ca) {
        return Ok(None);
    }
    if let Some(m) = &observed.tls {
        return Ok(Some(ClientTls {
            ca_crt: m.ca_crt.clone(),
            cert: m.tls_crt.clone(),
            key: m.tls_key.clone(),
        }));
    }
    let name = match t.mode {
        TlsMode::Secret => t.secret_name.clone().unwrap_or_default(),
        TlsMode::Operator | TlsMode::CertManager => names.tls_secret(),
    };
    let Some(s) = secrets.get_opt(&name).await? else {
        return Ok(None);
    };
    let get = |k: &str| secret_string(&s, k).and_then(Result::ok);
    Ok((|| {
        Some(ClientTls {
            ca_crt: get("ca.crt")?,
            cert: get("tls.crt")?,
            key: get("tls.key")?,
        })
    })())
}

/// Hex SHA-256 (first 16 digits) of a StatefulSet's pod template.
pub fn template_hash(sts: &StatefulSet) -> String {
    let text = serde_json::to_string(&sts.spec.template).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs the plan's step (if any) and works out what status says about it:
/// the operation in progress, Degraded when it fails or is stuck, and when
/// to look again (exponential backoff after failures).
async fn drive(
    ctx: &Context,
    cluster: &MqttCluster,
    target: &Target,
    plan: &lifecycle::Plan,
) -> (Lifecycle, Duration) {
    let settings = &ctx.lifecycle;
    let now = (ctx.now)();
    let mut life = Lifecycle {
        view: plan.view.clone(),
        ..Lifecycle::default()
    };
    let Some((reason, message)) = plan.progress.clone() else {
        return (life, RESYNC);
    };
    let rfc3339 = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let same = cluster
        .status
        .as_ref()
        .and_then(|s| s.operation.clone())
        .filter(|o| o.reason == reason && o.message == message);
    let fresh = same.is_none();
    let mut op = same.unwrap_or(Operation {
        reason: reason.to_string(),
        message: message.clone(),
        since: rfc3339(now),
        attempts: 0,
        last_error: None,
    });
    let mut requeue = settings.poll;
    if let Some(step) = &plan.step {
        match execute(ctx, target, plan, step).await {
            Ok((done, note)) => {
                info!(cluster = %target.names.cluster, step = step.name(), %note, "membership step done");
                let pod = step.ordinal().map(|o| target.names.pod(o));
                publish_about(
                    ctx,
                    cluster,
                    pod,
                    EventType::Normal,
                    done,
                    step.name(),
                    note,
                )
                .await;
                op.attempts = 0;
                op.last_error = None;
                // The next step can usually start at once.
                requeue = Duration::from_millis(500).min(settings.poll);
            }
            Err(e) => {
                op.attempts += 1;
                op.last_error = Some(e.to_string());
                let wait = settings.backoff(op.attempts);
                let msg = format!(
                    "{message}: {e} (attempt {}, next in {}s)",
                    op.attempts,
                    wait.as_secs_f32()
                );
                warn!(cluster = %target.names.cluster, step = step.name(), error = %e, "membership step failed");
                publish_about(
                    ctx,
                    cluster,
                    step.ordinal().map(|o| target.names.pod(o)),
                    EventType::Warning,
                    e.reason(),
                    step.name(),
                    msg.clone(),
                )
                .await;
                life.degraded = Some((e.reason().to_string(), msg));
                requeue = wait;
            }
        }
    } else {
        if fresh {
            publish_about(
                ctx,
                cluster,
                plan.pod.map(|o| target.names.pod(o)),
                EventType::Normal,
                reason,
                "Lifecycle",
                message.clone(),
            )
            .await;
        }
        if let Some(w) = &plan.wait {
            let since =
                OffsetDateTime::parse(&op.since, &time::format_description::well_known::Rfc3339)
                    .unwrap_or(now);
            let waited = (now - since).whole_seconds().max(0) as u64;
            if waited >= settings.stuck_after.as_secs() {
                op.attempts += 1;
                let msg = format!("{} (for {waited}s)", w.message);
                if op.attempts == 1 {
                    publish(
                        ctx,
                        cluster,
                        EventType::Warning,
                        w.stuck_reason,
                        "Lifecycle",
                        msg.clone(),
                    )
                    .await;
                }
                life.degraded = Some((w.stuck_reason.to_string(), msg));
                requeue = settings.backoff(op.attempts);
            }
        }
    }
    life.progress = Some((op.reason.clone(), op.message.clone()));
    life.operation = Some(op);
    (life, requeue)
}

async fn execute(
    ctx: &Context,
    target: &Target,
    plan: &lifecycle::Plan,
    step: &Step,
) -> Result<(&'static str, String), MembershipError> {
    let m = &ctx.membership;
    let leader = plan.leader.unwrap_or(0);
    let pod = |o: i32| target.names.pod(o);
    match step {
        Step::AddLearner { ordinal } => {
            let addr = m.peer_addr(target, *ordinal);
            let r = m
                .add_learner(target, leader, node_id(*ordinal), addr.clone())
                .await?;
            Ok((
                "LearnerAdded",
                format!(
                    "{} (node {}, {addr}) joined as a learner and caught up: {r}",
                    pod(*ordinal),
                    node_id(*ordinal)
                ),
            ))
        }
        Step::Promote { ordinals, voters } => {
            let r = m.change_membership(target, leader, voters.clone()).await?;
            Ok((
                "Promoted",
                format!(
                    "{} promoted to voter; voters are now {}: {r}",
                    ordinals
                        .iter()
                        .map(|o| pod(*o))
                        .collect::<Vec<_>>()
                        .join(", "),
                    voters
                        .iter()
                        .map(|v| pod(lifecycle::ordinal_of(*v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
        Step::ResetMember { ordinal } => {
            let r = m.remove_node(target, leader, node_id(*ordinal)).await?;
            Ok((
                "MemberReset",
                format!(
                    "{} came back with an empty volume: removed from Raft, to be added again as a new member: {r}",
                    pod(*ordinal)
                ),
            ))
        }
        Step::Drain { ordinal } => {
            let (gone, left) = m
                .drain(target, *ordinal, target.names.client_host())
                .await?;
            Ok((
                "Drained",
                format!(
                    "{}: {gone} clients handed over to the other pods ({left} still connected)",
                    pod(*ordinal)
                ),
            ))
        }
        Step::TransferLeader { from, to } => {
            let r = m.transfer_leader(target, *from, *to).await?;
            Ok((
                "LeaderTransferred",
                format!(
                    "leadership moved from {} to {}: {r}",
                    pod(*from),
                    pod(lifecycle::ordinal_of(*to))
                ),
            ))
        }
        Step::RemoveMember { ordinal } => {
            let r = m.remove_node(target, leader, node_id(*ordinal)).await?;
            Ok((
                "MemberRemoved",
                format!("{} removed from the Raft group: {r}", pod(*ordinal)),
            ))
        }
        Step::Undrain { ordinal } => match m.undrain(target, *ordinal).await {
            Ok(r) => Ok((
                "Undrained",
                format!("{} takes clients again: {r}", pod(*ordinal)),
            )),
            // A broker without Undrain: a restart ends the drain too.
            Err(MembershipError::Unsupported { .. }) => {
                delete_pod(ctx, target, *ordinal).await?;
                Ok((
                    "Undrained",
                    format!(
                        "{} restarted to take clients again (its broker has no Undrain)",
                        pod(*ordinal)
                    ),
                ))
            }
            Err(e) => Err(e),
        },
        Step::RestartPod { ordinal } => {
            delete_pod(ctx, target, *ordinal).await?;
            Ok((
                "PodRestarted",
                format!(
                    "deleted {} (it did not run); it comes back at the StatefulSet's current revision",
                    pod(*ordinal)
                ),
            ))
        }
    }
}

async fn delete_pod(ctx: &Context, target: &Target, ordinal: i32) -> Result<(), MembershipError> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &target.names.namespace);
    match api
        .delete(&target.names.pod(ordinal), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(MembershipError::Api(api_message(&e))),
    }
}

/// Whether every pod runs the StatefulSet's latest template.
fn rollout_complete(sts: &StatefulSet) -> bool {
    let Some(s) = &sts.status else {
        return false;
    };
    s.observed_generation >= sts.metadata.generation
        && s.current_revision.is_some()
        && s.current_revision == s.update_revision
        && s.updated_replicas.unwrap_or(0) >= sts.spec.replicas.unwrap_or(1)
}

/// Deletes the broker config ConfigMaps of earlier configs once the roll
/// to the current one is complete and no pod mounts them (until then a pod
/// that restarts, or comes back at the StatefulSet's current revision,
/// needs its own).
async fn prune_configs(
    cms: &Api<ConfigMap>,
    names: &Names,
    uid: &str,
    keep: &str,
    sts: &StatefulSet,
    pods: &[Pod],
) -> Result<(), kube::Error> {
    if !rollout_complete(sts) {
        return Ok(());
    }
    let mounted: std::collections::BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.volumes.clone())
        .flatten()
        .filter_map(|v| v.config_map.map(|c| c.name))
        .collect();
    let lp = kube::api::ListParams::default().labels(&format!(
        "{}={}",
        render::CONFIG_OF,
        names.cluster
    ));
    let mut old: Vec<String> = cms
        .list(&lp)
        .await?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    old.push(names.legacy_config_map());
    for name in old {
        if name != keep && !mounted.contains(&name) && prune(cms, &name, uid).await? {
            info!(cluster = %names.cluster, configmap = %name, "pruned an earlier broker config");
        }
    }
    Ok(())
}

/// Bytes in a Kubernetes quantity (`1Gi`, `500M`, `1.5Ti`, `1e9`).
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let m: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return None,
    };
    Some(n * m)
}

fn current_replicas_of(sts: &StatefulSet) -> i32 {
    sts.spec.replicas.unwrap_or(1)
}

/// Grows each pod's volume to `storage.size`, best effort: it needs a
/// StorageClass with `allowVolumeExpansion` and a bound claim (unbound
/// ones are skipped: there is nothing to grow yet). A refusal is returned
/// as a problem to report (Degraded `VolumeExpansionFailed`), never as an
/// error: the rest of the reconcile goes on. Runs on every reconcile: a pod
/// added by a scale-up gets the template's (old) size and is grown the
/// next time round.
async fn expand_volumes(
    ctx: &Context,
    cluster: &MqttCluster,
    names: &Names,
    ns: &str,
    replicas: i32,
) -> Result<Option<Problem>, kube::Error> {
    let Some(want) = quantity(&cluster.spec.storage.size) else {
        return Ok(None);
    };
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), ns);
    let mut grown = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    for i in 0..replicas.max(cluster.spec.replicas) {
        let name = format!("data-{}", names.pod(i));
        let Some(pvc) = pvcs.get_opt(&name).await? else {
            continue;
        };
        let bound = pvc
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Bound");
        let have = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| quantity(&q.0));
        if !bound || !have.is_some_and(|h| h < want) {
            continue;
        }
        let patch =
            json!({"spec": {"resources": {"requests": {"storage": cluster.spec.storage.size}}}});
        match pvcs
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => grown.push(name),
            Err(e) => refused.push((name, api_message(&e))),
        }
    }
    let size = &cluster.spec.storage.size;
    if !grown.is_empty() {
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "VolumesExpanding",
            "ExpandVolumes",
            format!("asked to grow {} to {size}", grown.join(", ")),
        )
        .await;
    }
    let Some((_, why)) = refused.first() else {
        return Ok(None);
    };
    let claims: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
    Ok(Some(Problem {
        reason: VOLUME_EXPANSION_FAILED,
        message: format!(
            "could not grow {} to {size}: {why}; the StorageClass must allow volume expansion (allowVolumeExpansion: true), or set storage.size back",
            claims.join(", ")
        ),
    }))
}

/// Degraded reason of a refused volume resize.
pub const VOLUME_EXPANSION_FAILED: &str = "VolumeExpansionFailed";

async fn patch_status(
    ctx: &Context,
    cluster: &MqttCluster,
    st: &crate::crd::MqttClusterStatus,
) -> Result<(), kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let api: Api<MqttCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let body = json!({
        "apiVersion": MqttCluster::api_version(&()),
        "kind": MqttCluster::kind(&()),
        "status": st,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
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
/// and the ones naming it in a user, TLS or PSK reference.
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

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities() {
        assert_eq!(quantity("1Gi"), Some(1073741824.0));
        assert_eq!(quantity("500M"), Some(5e8));
        assert_eq!(quantity("1.5Ki"), Some(1536.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("12"), Some(12.0));
        assert!(quantity("10Gi").unwrap_or_default() > quantity("5Gi").unwrap_or_default());
        assert_eq!(quantity("lots"), None);
        assert_eq!(quantity("1Qi"), None);
    }
}
