//! The StatefulSet controller and the kubelet, stood in for as far as the
//! operator depends on them. Like kube-controller-manager's StatefulSet
//! controller: a revision per pod template (hash-named, kept as a
//! ControllerRevision), pods named `<set>-<ordinal>` carrying their
//! `controller-revision-hash`, one claim per volume claim template
//! (`<claim>-<pod>`, bound when a StorageClass provisions it), a pod that
//! is missing comes back at the *current* revision below the rollout
//! partition and at the update revision at or above it, a rolling update
//! replaces the highest outdated pod at or above the partition and waits
//! while the one above it is unhealthy, `currentRevision` becomes the
//! update revision once every pod runs it and is ready, pods above
//! `replicas` are deleted (with their claims when the retention policy
//! says so). A test-supplied kubelet decides what each pod's containers do
//! (ready, crash-looping, image pull failing, unschedulable).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{create, delete, now, store, ApiDouble, Key, State};

/// What the kubelet makes of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodHealth {
    Ready,
    /// Running, the readiness probe failing.
    NotReady,
    /// The container does not run: `CrashLoopBackOff`, `ImagePullBackOff`,
    /// `ErrImagePull`, `CreateContainerConfigError`, with a message.
    Waiting(String, String),
    /// The scheduler found no node (the message says why).
    Unschedulable(String),
}

pub type Kubelet = Arc<dyn Fn(&Value) -> PodHealth + Send + Sync>;

/// The PVCs a pod mounts are bound, or it is not scheduled; otherwise
/// ready.
pub fn default_kubelet(api: &ApiDouble) -> Kubelet {
    let api = api.clone();
    Arc::new(move |pod: &Value| {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                let bound = api
                    .get("v1", "persistentvolumeclaims", ns, claim)
                    .is_some_and(|c| c["status"]["phase"] == "Bound");
                if !bound {
                    return PodHealth::Unschedulable(
                        "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.".into(),
                    );
                }
            }
        }
        PodHealth::Ready
    })
}

/// Order-independent text of a value (object keys sorted), for hashing.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for k in keys {
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(':');
                canonical(&m[k], out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for x in a {
                canonical(x, out);
                out.push(',');
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `<set>-<hash>`: the controller's revision name for a template (FNV-1a,
/// as the controller's own ComputeHash).
pub fn revision_name(set: &str, template: &Value) -> String {
    let mut text = String::new();
    canonical(template, &mut text);
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{set}-{}", &format!("{h:016x}")[..10])
}

fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn healthy(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn key(resource: &str, ns: &str, name: &str) -> Key {
    let gv = match resource {
        "controllerrevisions" | "statefulsets" => "apps/v1",
        _ => "v1",
    };
    Key {
        gv: gv.into(),
        resource: resource.into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

fn owner_ref(set: &Value) -> Value {
    json!([{
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "name": set["metadata"]["name"], "uid": set["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    }])
}

/// The template a revision was made from (kept as a ControllerRevision).
fn revision_template(st: &State, ns: &str, rev: &str) -> Option<Value> {
    st.objects
        .get(&key("controllerrevisions", ns, rev))
        .map(|r| r["data"]["spec"]["template"].clone())
}

fn ensure_revision(st: &mut State, set: &Value, ns: &str, rev: &str, template: &Value) {
    if st
        .objects
        .contains_key(&key("controllerrevisions", ns, rev))
    {
        return;
    }
    let n = st
        .objects
        .keys()
        .filter(|k| k.resource == "controllerrevisions" && k.namespace == ns)
        .count();
    let obj = json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": rev, "ownerReferences": owner_ref(set),
                     "labels": set["spec"]["selector"]["matchLabels"]},
        "data": {"spec": {"template": template}},
        "revision": n + 1,
    });
    create(st, "apps/v1", "controllerrevisions", ns, obj);
}

/// Creates pod `ordinal` of `set` from `template` at revision `rev`, and
/// the claims of its volume claim templates that do not exist yet.
fn create_pod(st: &mut State, set: &Value, ns: &str, o: i32, rev: &str, template: &Value) {
    let name = set["metadata"]["name"].as_str().unwrap_or_default();
    let pod = format!("{name}-{o}");
    let mut volumes: Vec<Value> = template["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for c in set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let cname = c["metadata"]["name"].as_str().unwrap_or_default();
        let claim = format!("{cname}-{pod}");
        volumes.push(json!({"name": cname, "persistentVolumeClaim": {"claimName": claim}}));
        if !st
            .objects
            .contains_key(&key("persistentvolumeclaims", ns, &claim))
        {
            let mut pvc = json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "labels": c["metadata"]["labels"]},
                "spec": c["spec"],
            });
            let class = super::admission::storage_class(st, &pvc)
                .and_then(|c| c["metadata"]["name"].as_str())
                .map(str::to_string);
            match class {
                Some(class) => {
                    pvc["spec"]["storageClassName"] = class.into();
                    pvc["status"] = json!({"phase": "Bound", "capacity": {"storage": c["spec"]["resources"]["requests"]["storage"]}});
                }
                None => pvc["status"] = json!({"phase": "Pending"}),
            }
            create(st, "v1", "persistentvolumeclaims", ns, pvc);
        }
    }
    let mut meta = template["metadata"].clone();
    if !meta.is_object() {
        meta = Value::Object(Map::new());
    }
    meta["name"] = pod.clone().into();
    meta["labels"]["controller-revision-hash"] = rev.into();
    meta["labels"]["statefulset.kubernetes.io/pod-name"] = pod.clone().into();
    meta["labels"]["apps.kubernetes.io/pod-index"] = o.to_string().into();
    meta["ownerReferences"] = owner_ref(set);
    let mut spec = template["spec"].clone();
    spec["volumes"] = Value::Array(volumes);
    spec["hostname"] = pod.clone().into();
    spec["subdomain"] = set["spec"]["serviceName"].clone();
    let obj = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
    });
    create(st, "v1", "pods", ns, obj);
}

/// One sync of one StatefulSet; whether it changed anything.
fn sync(st: &mut State, set_key: &Key) -> bool {
    let Some(set) = st.objects.get(set_key).cloned() else {
        return false;
    };
    let ns = set_key.namespace.clone();
    let name = set_key.name.clone();
    let uid = set["metadata"]["uid"].clone();
    let spec = &set["spec"];
    let replicas = spec["replicas"].as_i64().unwrap_or(1) as i32;
    let rolling = spec["updateStrategy"]["type"] != "OnDelete";
    let partition = spec["updateStrategy"]["rollingUpdate"]["partition"]
        .as_i64()
        .unwrap_or(0) as i32;
    let parallel = spec["podManagementPolicy"] == "Parallel";
    let template = spec["template"].clone();
    let update_rev = revision_name(&name, &template);
    ensure_revision(st, &set, &ns, &update_rev, &template);
    let current_rev = set["status"]["currentRevision"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| update_rev.clone());
    let current_template =
        revision_template(st, &ns, &current_rev).unwrap_or_else(|| template.clone());
    let pods = |st: &State| -> Vec<(i32, Value)> {
        let mut v: Vec<(i32, Value)> = st
            .objects
            .iter()
            .filter(|(k, p)| {
                k.resource == "pods"
                    && k.namespace == ns
                    && p["metadata"]["ownerReferences"][0]["uid"] == uid
            })
            .filter_map(|(k, p)| Some((ordinal(&name, &k.name)?, p.clone())))
            .collect();
        v.sort_by_key(|(o, _)| *o);
        v
    };
    let rev_of = |p: &Value| {
        p["metadata"]["labels"]["controller-revision-hash"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut changed = false;

    // Condemned pods (Parallel: all at once), claims per the policy.
    let delete_claims = spec["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete";
    for (o, _) in pods(st).into_iter().rev().filter(|(o, _)| *o >= replicas) {
        let pod = format!("{name}-{o}");
        delete(st, &key("pods", &ns, &pod));
        if delete_claims {
            for c in spec["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let claim = format!("{}-{pod}", c["metadata"]["name"].as_str().unwrap_or(""));
                delete(st, &key("persistentvolumeclaims", &ns, &claim));
            }
        }
        changed = true;
        if !parallel {
            break;
        }
    }
    // Failed pods go; missing ones are made, at the current revision below
    // the partition.
    for (o, p) in pods(st) {
        if p["status"]["phase"] == "Failed" && o < replicas {
            delete(st, &key("pods", &ns, &format!("{name}-{o}")));
            changed = true;
        }
    }
    let existing = pods(st);
    for o in 0..replicas {
        if existing.iter().any(|(x, _)| *x == o) {
            continue;
        }
        if !parallel && existing.iter().any(|(x, p)| *x < o && !healthy(p)) {
            break;
        }
        let (rev, t) = if rolling && o < partition {
            (&current_rev, &current_template)
        } else {
            (&update_rev, &template)
        };
        create_pod(st, &set, &ns, o, rev, t);
        changed = true;
        if !parallel {
            break;
        }
    }
    // Rolling update: the highest outdated pod at or above the partition,
    // after every pod above it is healthy.
    if rolling {
        let now_pods = pods(st);
        for target in (partition.max(0)..replicas).rev() {
            let Some((_, p)) = now_pods.iter().find(|(o, _)| *o == target) else {
                break;
            };
            if rev_of(p) != update_rev && p["metadata"]["deletionTimestamp"].is_null() {
                delete(st, &key("pods", &ns, &format!("{name}-{target}")));
                changed = true;
                break;
            }
            if !healthy(p) {
                break;
            }
        }
    }

    // Status.
    let now_pods = pods(st);
    let count = |f: &dyn Fn(&Value) -> bool| now_pods.iter().filter(|(_, p)| f(p)).count();
    let n = now_pods.len();
    let ready = count(&healthy);
    let updated = count(&|p| rev_of(p) == update_rev);
    let mut current = current_rev.clone();
    let mut current_n = count(&|p| rev_of(p) == current_rev);
    if rolling && updated == n && ready == n && n == replicas as usize {
        current = update_rev.clone();
        current_n = updated;
    }
    let status = json!({
        "observedGeneration": set["metadata"]["generation"],
        "replicas": n, "readyReplicas": ready, "availableReplicas": ready,
        "currentReplicas": current_n, "updatedReplicas": updated,
        "currentRevision": current, "updateRevision": update_rev,
        "collisionCount": 0,
    });
    if let Some(old) = st.objects.get(set_key).cloned() {
        if old["status"] != status {
            let mut new = old.clone();
            new["status"] = status;
            store(st, set_key.clone(), Some(&old), new, false);
            changed = true;
        }
    }
    changed
}

fn pod_status(old: &Value, health: &PodHealth) -> Value {
    let since = |ready: bool| {
        let want = if ready { "True" } else { "False" };
        old["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready" && c["status"] == want)
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(now)
    };
    let ready_cond = |ready: bool, reason: Option<&str>| {
        let mut c = json!({"type": "Ready", "status": if ready {"True"} else {"False"},
                           "lastTransitionTime": since(ready)});
        if let Some(r) = reason {
            c["reason"] = r.into();
        }
        c
    };
    let scheduled = json!({"type": "PodScheduled", "status": "True"});
    match health {
        PodHealth::Ready => json!({
            "phase": "Running", "conditions": [scheduled, ready_cond(true, None)],
            "containerStatuses": [{"name": "broker", "ready": true, "restartCount": 0, "state": {"running": {}}}],
        }),
        PodHealth::NotReady => json!({
            "phase": "Running", "conditions": [scheduled, ready_cond(false, Some("ContainersNotReady"))],
            "containerStatuses": [{"name": "broker", "ready": false, "restartCount": 0, "state": {"running": {}}}],
        }),
        PodHealth::Waiting(reason, message) => json!({
            "phase": if reason == "CrashLoopBackOff" { "Running" } else { "Pending" },
            "conditions": [scheduled, ready_cond(false, Some("ContainersNotReady"))],
            "containerStatuses": [{"name": "broker", "ready": false, "restartCount": 3,
                                   "state": {"waiting": {"reason": reason, "message": message}}}],
        }),
        PodHealth::Unschedulable(message) => json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}],
        }),
    }
}

impl ApiDouble {
    /// Sets what the kubelet makes of each pod (see [`default_kubelet`]).
    pub fn set_kubelet(&self, k: Kubelet) {
        self.lock().kubelet = Some(k);
    }

    /// One pass of the StatefulSet controller over every StatefulSet, then
    /// of the kubelet (when one is set) over their pods. Whether anything
    /// changed.
    pub fn run_statefulsets(&self) -> bool {
        let mut changed = false;
        let kubelet = {
            let mut st = self.lock();
            let sets: Vec<Key> = st
                .objects
                .keys()
                .filter(|k| k.resource == "statefulsets")
                .cloned()
                .collect();
            for k in &sets {
                changed |= sync(&mut st, k);
            }
            st.kubelet.clone()
        };
        // The kubelet runs outside the lock: it may look things up.
        let Some(kubelet) = kubelet else {
            return changed;
        };
        let pods: Vec<(Key, Value)> = {
            let st = self.lock();
            st.objects
                .iter()
                .filter(|(k, p)| {
                    k.resource == "pods"
                        && p["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"
                })
                .map(|(k, p)| (k.clone(), p.clone()))
                .collect()
        };
        for (k, p) in pods {
            let status = pod_status(&p["status"], &kubelet(&p));
            let mut st = self.lock();
            if let Some(old) = st.objects.get(&k).cloned() {
                if old["status"] != status {
                    let mut new = old.clone();
                    new["status"] = status;
                    store(&mut st, k, Some(&old), new, false);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Runs the StatefulSet controller and kubelet until nothing changes
    /// (at most 20 passes).
    pub fn settle_statefulsets(&self) {
        for _ in 0..20 {
            if !self.run_statefulsets() {
                return;
            }
        }
    }
}
