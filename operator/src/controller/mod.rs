//! The controller: reads what the cluster refers to (user Secrets,
//! certificates, which optional APIs exist), renders, applies with
//! server-side apply, prunes what is no longer wanted, and reports status and
//! Events.

mod apply;
mod drive;
pub mod events;
pub mod observe;
mod report;
mod volumes;

pub use volumes::{quantity, VOLUME_EXPANSION_FAILED};

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::DynamicObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::certs::{self, CertError};
use crate::crd::{ListenerKind, MqttCluster, TlsMode};
use crate::lifecycle;
use crate::membership::{Membership, Target};
use crate::render::monitoring::{
    certificate_resource, dns_names, service_monitor_resource, DEFAULT_CERT_HOURS,
};
use crate::render::{self, Names, Observed, RenderError, CONFIG_CHECKSUM, MANAGER};
use crate::status::{self, Lifecycle, Rollout, DEGRADED};
use crate::telemetry::Metrics;
use crate::validate::{self, Problem};
use apply::{apply, apply_dynamic, owned_by, prune, prune_configs};
use drive::drive;
use events::publish;
use observe::api_available;
use observe::secrets::{admin_tls, material_from, resolve_users, secret_string};
use report::{patch_status, report_failure};
use volumes::{current_replicas_of, expand_volumes};

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
        Some(_) => observe::pods::pods(client, &ns, &names).await?,
        None => Vec::new(),
    };
    let group = if ctx.membership.managed() {
        Some(observe::pods::group(ctx.membership.as_ref(), &names, &target, &pods).await)
    } else {
        None
    };
    let troubles = observe::pods::troubles(client, &ns, &names, &pods).await?;
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
