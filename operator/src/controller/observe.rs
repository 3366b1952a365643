//! Observe: everything a reconcile reads before it decides anything. What
//! the spec refers to (the users' Secrets, certificates, the PSK Secret,
//! which optional APIs exist), the StatefulSet, the pods and each broker's
//! Status; and what in the spec cannot be applied.

pub mod bridges;
pub mod peer;
pub mod pods;
pub mod secrets;
pub mod tls;

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{Api, Client, ResourceExt};
use time::OffsetDateTime;

use super::{Context, Error, LifecycleSettings};
use crate::crd::{MqttCluster, MqttClusterStatus};
use crate::lifecycle;
use crate::membership::Target;
use crate::render::{self, Names, Observed};
use crate::status::Lifecycle;
use crate::validate::{self, Problem};

/// What one reconcile saw.
pub(super) struct Seen {
    pub ns: String,
    pub names: Names,
    pub uid: String,
    pub secrets: Api<Secret>,
    /// The status as the last reconcile left it.
    pub previous: MqttClusterStatus,
    /// The spec changed since the last reconcile (its warnings are told
    /// again).
    pub new_generation: bool,
    /// What keeps the spec from being applied.
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Bridges whose Secrets cannot be read (the rest is applied all the
    /// same).
    pub bridge_problems: Vec<Problem>,
    /// `bridges.toml` as stored.
    pub stored_bridges: Option<String>,
    /// Each user and the password from its Secret.
    pub users: Vec<(String, String)>,
    /// The password file as the users Secret holds it now.
    pub existing_passwd: Option<String>,
    /// What rendering needs to know (certificates, optional APIs).
    pub observed: Observed,
    pub certificates: tls::Certificates,
    /// The StatefulSet as it is (`None`: not created yet).
    pub before: Option<StatefulSet>,
    /// How to reach the brokers' Admin service.
    pub target: Target,
    pub pods: Vec<Pod>,
    /// Each pod and its broker's Status.
    pub group: pods::Observation,
    /// Why pods do not run.
    pub troubles: Vec<String>,
    pub now: OffsetDateTime,
}

impl Seen {
    /// The Raft group as observed, before any step (for status).
    pub fn lifecycle(&self, cluster: &MqttCluster, settings: &LifecycleSettings) -> Lifecycle {
        let facts = self
            .group
            .facts(cluster, self.before.as_ref(), None, settings, self.now);
        Lifecycle {
            troubles: self.troubles.clone(),
            view: lifecycle::view(&facts, |o| self.names.pod(o)),
            ..Lifecycle::default()
        }
    }

    /// When the server certificate wants renewing, or a resync, whichever
    /// comes first.
    pub fn requeue(&self, resync: Duration) -> Duration {
        self.certificates.renew_in.map_or(resync, |r| r.min(resync))
    }
}

pub(super) async fn observe(ctx: &Context, cluster: &MqttCluster) -> Result<Seen, Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let names = Names::of(cluster);
    let client = &ctx.client;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let previous = cluster.status.clone().unwrap_or_default();
    let new_generation = previous.observed_generation != cluster.metadata.generation;

    let findings = validate::validate(&cluster.spec);
    let mut problems = findings.errors.clone();
    problems.extend(validate::name_problem(&names.cluster));
    let mut warnings = findings.warnings.clone();

    let users = secrets::resolve_users(&secrets, cluster, &ns, &mut problems).await?;
    let existing_passwd = secrets
        .get_opt(&names.users_secret())
        .await?
        .and_then(|s| secrets::secret_string(&s, render::PASSWD_FILE))
        .and_then(Result::ok);
    let (mut observed, certificates) = tls::observe(ctx, cluster, &secrets, &names, &ns).await?;
    observed.peer = Some(peer::observe(ctx, cluster, &secrets, &names).await?);
    observed.operator_namespace = ctx.operator_namespace.clone();
    problems.extend(certificates.problems.iter().cloned());
    secrets::check_psk(&secrets, cluster, &ns, &mut problems).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let bridges = bridges::observe(&secrets, &config_maps, cluster, &names, &ns).await?;
    observed.bridges = bridges.material;
    if let Some(w) = service_monitor_api(client, cluster, &mut observed).await {
        warnings.push(w);
    }

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let before = sts_api.get_opt(&names.statefulset()).await?;
    observed.bridges.mounted = bridges::mounted(before.as_ref());
    let target = Target {
        names: names.clone(),
        tls: observed.peer.as_ref().map(peer::admin_tls),
    };
    let pods = match &before {
        Some(_) => pods::pods(client, &ns, &names).await?,
        None => Vec::new(),
    };
    let group = pods::group(ctx.membership.as_ref(), &names, &target, &pods).await;
    let troubles = pods::troubles(client, &ns, &names, &pods).await?;
    Ok(Seen {
        uid: cluster.uid().unwrap_or_default(),
        now: (ctx.now)(),
        ns,
        names,
        secrets,
        previous,
        new_generation,
        problems,
        warnings,
        bridge_problems: bridges.problems,
        stored_bridges: bridges.stored_toml,
        users,
        existing_passwd,
        observed,
        certificates,
        before,
        target,
        pods,
        group,
        troubles,
    })
}

/// Whether the ServiceMonitor API exists, when one is asked for; a warning
/// when it does not (none is created).
async fn service_monitor_api(
    client: &Client,
    cluster: &MqttCluster,
    observed: &mut Observed,
) -> Option<Problem> {
    if !cluster.spec.metrics.service_monitor.enabled {
        return None;
    }
    observed.service_monitor_crd =
        api_available(client, "monitoring.coreos.com/v1", "servicemonitors").await;
    (!observed.service_monitor_crd).then(|| Problem {
        reason: "ServiceMonitorUnavailable",
        message: "metrics.serviceMonitor.enabled is set but the Prometheus Operator's ServiceMonitor API is not installed; none was created".into(),
    })
}

/// Whether the API server serves `group_version` with `plural`.
pub(super) async fn api_available(client: &Client, group_version: &str, plural: &str) -> bool {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(_) => false,
    }
}
