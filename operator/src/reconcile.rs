//! The controller: reads what the cluster refers to (user Secrets,
//! certificates, which optional APIs exist), renders, applies with
//! server-side apply, prunes what is no longer wanted, and reports status and
//! Events.

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
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::certs::{self, CertError};
use crate::crd::{ListenerKind, MqttCluster, TlsMode};
use crate::membership::Membership;
use crate::render::monitoring::{
    certificate_resource, dns_names, service_monitor_resource, DEFAULT_CERT_HOURS,
};
use crate::render::{self, Names, Observed, RenderError, TlsMaterial, CONFIG_CHECKSUM, MANAGER};
use crate::status::{self, Rollout, DEGRADED};
use crate::telemetry::Metrics;
use crate::validate::{self, Problem};

/// How often a healthy cluster is looked at again without any change.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a Degraded cluster is looked at again.
pub const RETRY_DEGRADED: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error("the MqttCluster has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Render(_) => "render",
            Error::Certs(_) => "certs",
            Error::NoNamespace => "namespace",
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
        }
    }
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, kube::Error>
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
}

async fn apply_dynamic(
    client: &Client,
    ns: &str,
    ar: &ApiResource,
    obj: &DynamicObject,
) -> Result<DynamicObject, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let name = obj.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
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

async fn publish(
    ctx: &Context,
    cluster: &MqttCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cluster.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish an Event");
    }
}

/// The whole reconcile of one MqttCluster.
pub async fn reconcile(cluster: Arc<MqttCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cluster, &ctx).await;
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
    ctx.metrics.observe(outcome, started.elapsed());
    result.map(|(a, _)| a)
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

    let membership = ctx.membership.observe(cluster).await;
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let before = sts_api.get_opt(&names.statefulset()).await?;

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
        expand_volumes(ctx, cluster, &names, &ns, current_replicas_of(b)).await?;
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

    // Scale-down goes through membership first.
    let current_replicas = before
        .as_ref()
        .and_then(|s| s.spec.replicas)
        .unwrap_or(cluster.spec.replicas);
    let mut requeue = renew_in.map_or(RESYNC, |r| r.min(RESYNC));
    if current_replicas > cluster.spec.replicas
        && !ctx
            .membership
            .prepare_scale_down(cluster, current_replicas, cluster.spec.replicas)
            .await
    {
        rendered.statefulset.spec.replicas = Some(current_replicas);
        requeue = Duration::from_secs(10);
    }

    if let Some(p) = ctx.membership.rollout_partition(cluster).await {
        if let Some(ru) = rendered
            .statefulset
            .spec
            .update_strategy
            .as_mut()
            .and_then(|u| u.rolling_update.as_mut())
        {
            ru.partition = Some(p);
        }
    }

    // Apply, config and Secrets first.
    apply(client, &ns, &rendered.config_map).await?;
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
        &membership,
        cert_not_after,
        k8s_openapi::jiff::Timestamp::now(),
    );
    patch_status(ctx, cluster, &st).await?;
    info!(cluster = %names.cluster, namespace = %ns, "reconciled");
    Ok((Action::requeue(requeue), false))
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

/// Grows each pod's volume to `storage.size` (needs a StorageClass with
/// `allowVolumeExpansion`; the PVC reports the outcome). Runs on every
/// reconcile: a pod added by a scale-up gets the template's (old) size and
/// is grown the next time round.
async fn expand_volumes(
    ctx: &Context,
    cluster: &MqttCluster,
    names: &Names,
    ns: &str,
    replicas: i32,
) -> Result<(), kube::Error> {
    let Some(want) = quantity(&cluster.spec.storage.size) else {
        return Ok(());
    };
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), ns);
    let mut grown = Vec::new();
    for i in 0..replicas.max(cluster.spec.replicas) {
        let name = format!("data-{}", names.pod(i));
        let Some(pvc) = pvcs.get_opt(&name).await? else {
            continue;
        };
        let have = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| quantity(&q.0));
        if have.is_some_and(|h| h < want) {
            let patch = json!({"spec": {"resources": {"requests": {"storage": cluster.spec.storage.size}}}});
            pvcs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            grown.push(name);
        }
    }
    if !grown.is_empty() {
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "VolumesExpanding",
            "ExpandVolumes",
            format!(
                "asked to grow {} to {} (the StorageClass must allow volume expansion)",
                grown.join(", "),
                cluster.spec.storage.size
            ),
        )
        .await;
    }
    Ok(())
}

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

pub fn error_policy(cluster: Arc<MqttCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(cluster = %cluster.name_any(), namespace = ?cluster.namespace(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(30))
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
