//! What the controller reads about a cluster's pods and volumes before it
//! decides anything: each pod's template revision, readiness and broker
//! Status (the facts the lifecycle plan works from), and why pods do not
//! run (claims that are not bound, pods the scheduler cannot place,
//! containers that cannot start), in words a person can act on.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use time::OffsetDateTime;

use crate::controller::{LifecycleSettings, TEMPLATE_HASH};
use crate::crd::MqttCluster;
use crate::lifecycle::{Facts, PodFacts};
use crate::membership::{Membership, NodeState, Target};
use crate::render::{self, Names};

/// The label the StatefulSet controller puts on each pod: the revision of
/// the template it was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Container waiting reasons that mean it will not start by itself soon.
pub const STUCK_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The reason in [`STUCK_REASONS`] a pod's container waits for, if any.
pub fn stuck_container(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .find(|r| STUCK_REASONS.contains(&r.as_str()))
}

/// Why a pod's broker does not run, if it is stuck: the scheduler cannot
/// place it, or its container waits for a reason in [`STUCK_REASONS`].
pub fn pod_trouble(pod: &Pod) -> Option<String> {
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Some(format!(
            "{name} cannot be scheduled: {}",
            c.message.as_deref().unwrap_or("no node fits")
        ));
    }
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| STUCK_REASONS.contains(&r))
        })
        .map(|w| {
            let reason = w.reason.as_deref().unwrap_or_default();
            match w.message.as_deref() {
                Some(m) if !m.is_empty() => format!("{name}: {reason} ({m})"),
                _ => format!("{name}: {reason}"),
            }
        })
}

/// The cluster's pods (by the selector), ordered by name.
pub async fn pods(client: &Client, ns: &str, names: &Names) -> Result<Vec<Pod>, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&render::selector_string(names));
    let mut v = api.list(&lp).await?.items;
    v.sort_by_key(|p| p.name_any());
    Ok(v)
}

/// Why a claim is not bound.
async fn pending_cause(client: &Client, pvc: &PersistentVolumeClaim) -> String {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone());
    match class {
        None => match classes.list(&ListParams::default()).await {
            Ok(list) => {
                let default = list.items.iter().any(|c| {
                    c.annotations()
                        .get("storageclass.kubernetes.io/is-default-class")
                        .is_some_and(|v| v == "true")
                });
                if default {
                    "waiting for a volume to be provisioned".into()
                } else {
                    "there is no default StorageClass; set storage.storageClassName or mark a class as the default".into()
                }
            }
            // No permission to look: say what is known.
            Err(_) => {
                "no storageClassName, and none was provisioned by a default StorageClass".into()
            }
        },
        Some(c) => match classes.get_opt(&c).await {
            Ok(None) => format!("StorageClass {c:?} does not exist"),
            _ => format!("waiting for StorageClass {c:?} to provision a volume"),
        },
    }
}

/// Everything that keeps this cluster's pods from running (the first few,
/// and how many more there are).
pub async fn troubles(
    client: &Client,
    ns: &str,
    names: &Names,
    pods: &[Pod],
) -> Result<Vec<String>, kube::Error> {
    let mut out = Vec::new();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&render::selector_string(names));
    let mut claims = api.list(&lp).await?.items;
    claims.sort_by_key(|c| c.name_any());
    for c in &claims {
        let pending = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        if pending {
            out.push(format!(
                "PersistentVolumeClaim {} is Pending: {}",
                c.name_any(),
                pending_cause(client, c).await
            ));
        }
    }
    out.extend(pods.iter().filter_map(pod_trouble));
    const LIMIT: usize = 6;
    if out.len() > LIMIT {
        let more = out.len() - LIMIT;
        out.truncate(LIMIT);
        out.push(format!("and {more} more"));
    }
    Ok(out)
}

/// One pod as the plan sees it.
#[derive(Debug, Clone)]
pub struct ObservedPod {
    pub ready: bool,
    /// The operator's template hash annotation.
    pub hash: Option<String>,
    /// The StatefulSet controller's revision label.
    pub revision: Option<String>,
    /// A container stuck waiting (see [`STUCK_REASONS`]).
    pub stuck: Option<String>,
    pub not_ready_since: Option<i64>,
    pub created: Option<i64>,
    pub node: Option<NodeState>,
}

/// The cluster's pods and what each broker's Status says.
pub struct Observation {
    pub pods: BTreeMap<i32, ObservedPod>,
}

fn seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

/// Reads each pod of `pods` (not being deleted) and asks its broker for its
/// Status.
pub async fn group(
    membership: &dyn Membership,
    names: &Names,
    target: &Target,
    pods: &[Pod],
) -> Observation {
    let mut out = BTreeMap::new();
    let prefix = format!("{}-", names.statefulset());
    for p in pods {
        let name = p.name_any();
        let Some(o) = name
            .strip_prefix(&prefix)
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ready_cond = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned());
        let ready = ready_cond.as_ref().is_some_and(|c| c.status == "True");
        let created = p.metadata.creation_timestamp.as_ref().map(seconds);
        let not_ready_since = match &ready_cond {
            Some(c) if c.status != "True" => c.last_transition_time.as_ref().map(seconds),
            Some(_) => None,
            None => created,
        };
        out.insert(
            o,
            ObservedPod {
                ready,
                hash: p.annotations().get(TEMPLATE_HASH).cloned(),
                revision: p.labels().get(REVISION_LABEL).cloned(),
                stuck: stuck_container(p),
                not_ready_since,
                created,
                node: None,
            },
        );
    }
    let ordinals: Vec<i32> = out.keys().copied().collect();
    let states =
        futures::future::join_all(ordinals.iter().map(|o| membership.status(target, *o))).await;
    for (o, st) in ordinals.into_iter().zip(states) {
        if let Some(p) = out.get_mut(&o) {
            match st {
                Ok(n) => p.node = Some(n),
                Err(e) => tracing::debug!(pod = %names.pod(o), error = %e, "no Status"),
            }
        }
    }
    Observation { pods: out }
}

/// The StatefulSet's update revision as its controller last reported it.
/// Until it has seen the latest spec this is the one before; the operator's
/// own template changes are held meanwhile (`template_changed`), and the
/// partition alone does not change the revision.
fn update_revision(sts: &StatefulSet) -> Option<&str> {
    sts.status.as_ref()?.update_revision.as_deref()
}

/// Whether the StatefulSet controller has seen the latest spec.
fn settled(sts: &StatefulSet) -> bool {
    let seen = sts.status.as_ref().and_then(|s| s.observed_generation);
    seen.is_some() && seen >= sts.metadata.generation
}

impl Observation {
    /// The plan's facts. A pod is current when it runs the StatefulSet's
    /// update revision: the whole pod template, so drift someone else
    /// made (`kubectl rollout restart`) counts too. Pods without a revision
    /// label (made by something else than the StatefulSet controller) are
    /// judged by the operator's own template hash.
    pub fn facts(
        &self,
        cluster: &MqttCluster,
        before: Option<&StatefulSet>,
        hash: Option<&str>,
        settings: &LifecycleSettings,
        now: OffsetDateTime,
    ) -> Facts {
        let before_hash = before
            .and_then(|b| b.spec.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(TEMPLATE_HASH))
            .map(String::as_str);
        let update_rev = before.and_then(update_revision);
        let now = now.unix_timestamp();
        let waited = settings.unready_after.as_secs() as i64;
        Facts {
            desired: cluster.spec.replicas,
            replicas: before.map(|b| b.spec.replicas.unwrap_or(1)),
            partition: before
                .and_then(|b| b.spec.update_strategy.as_ref())
                .and_then(|u| u.rolling_update.as_ref())
                .and_then(|r| r.partition),
            template_changed: before.is_some() && hash.is_some() && before_hash != hash,
            settled: before.is_none_or(settled),
            pods: self
                .pods
                .iter()
                .map(|(o, p)| {
                    let current = match (p.revision.as_deref(), update_rev) {
                        (Some(r), Some(u)) => r == u,
                        _ => hash.is_some() && p.hash.as_deref() == hash,
                    };
                    let broken = if p.ready {
                        None
                    } else if let Some(why) = &p.stuck {
                        Some(why.clone())
                    } else {
                        p.not_ready_since
                            .filter(|t| now - t >= waited)
                            .map(|t| format!("not ready for {}s", now - t))
                    };
                    let restartable =
                        broken.is_some() && p.created.is_some_and(|t| now - t >= waited);
                    (
                        *o,
                        PodFacts {
                            ordinal: *o,
                            exists: true,
                            ready: p.ready,
                            current,
                            node: p.node.clone(),
                            broken,
                            restartable,
                        },
                    )
                })
                .collect(),
            max_lag: settings.max_lag,
        }
    }
}
