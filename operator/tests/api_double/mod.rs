//! A stateful, in-process stand-in for the Kubernetes API server, served to
//! `kube::Client` as a tower `Service`, that behaves like a kube-apiserver
//! wherever the operator depends on it. It keeps objects by group-version,
//! resource, namespace and name, and does: get, list (label selectors),
//! watch (with resourceVersion replay), create, replace (optimistic
//! concurrency), server-side apply with field managers and
//! `metadata.managedFields` ([`ssa`]: fields other managers own survive an
//! apply, conflicts without force are 409, a field dropped from an applied
//! config goes only if nobody else owns it; a no-op apply does not bump
//! resourceVersion), JSON merge and strategic merge patches (recorded as
//! Update operations of their field manager), the status subresource
//! (status written to the main resource is ignored, and only status to
//! /status), validation and admission the operator can trip over
//! ([`admission`]: DNS-1035 Service names, label values, immutable
//! StatefulSet fields, PVC resizes, 1 KiB Event notes), delete with
//! owner-reference garbage collection, generation bumps on spec changes,
//! `stringData` folded into `data`, discovery of optional API groups, and
//! the StatefulSet controller and kubelet ([`statefulset`]: revisions,
//! partition, pods at the current revision below it).
//!
//! Faults: a client made with [`ApiDouble::client_as`] can be made to hang
//! ([`ApiDouble::hang`]), as a replica whose connection to the API server
//! stalls.
//!
//! What it does not do (and a live cluster would): OpenAPI schema
//! validation and defaulting, finalizers, set-type lists, and any
//! controller other than the StatefulSet one.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};

pub mod admission;
pub mod ssa;
pub mod statefulset;

#[allow(unused_imports)]
pub use statefulset::{default_kubelet, Kubelet, PodHealth};

type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// `v1` or `group/version`.
    pub gv: String,
    /// Plural resource name.
    pub resource: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

struct Watcher {
    gv: String,
    resource: String,
    namespace: Option<String>,
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>,
}

#[derive(Default)]
pub(crate) struct State {
    rv: u64,
    uid: u64,
    pub(crate) objects: BTreeMap<Key, Value>,
    history: Vec<(u64, &'static str, Key, Value)>,
    watchers: Vec<Watcher>,
    /// Optional API groups served: group-version -> (plural, kind).
    apis: BTreeMap<String, Vec<(String, String)>>,
    requests: Vec<String>,
    /// What the kubelet makes of each pod (`None`: pod status left alone).
    kubelet: Option<Kubelet>,
    /// Clients (by tag) whose requests hang.
    hung: BTreeSet<String>,
}

#[derive(Clone, Default)]
pub struct ApiDouble {
    state: Arc<Mutex<State>>,
    /// The client tag requests through this handle carry.
    tag: Option<String>,
}

/// Resources with a status subresource.
fn has_status(resource: &str) -> bool {
    matches!(
        resource,
        "pods"
            | "statefulsets"
            | "persistentvolumeclaims"
            | "services"
            | "mqttclusters"
            | "deployments"
            | "poddisruptionbudgets"
            | "certificates"
    )
}

/// Who writes, as the API server names it: `?fieldManager=`, else the
/// user agent up to its first '/'.
fn manager_of(query: &BTreeMap<String, String>, headers: &http::HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager") {
        return m.clone();
    }
    headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn status(code: u16, reason: &str, message: String) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Everything but metadata and status (what a generation bump looks at).
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

pub(crate) fn kind_for(resource: &str) -> String {
    match resource {
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "services" => "Service",
        "statefulsets" => "StatefulSet",
        "poddisruptionbudgets" => "PodDisruptionBudget",
        "networkpolicies" => "NetworkPolicy",
        "mqttclusters" => "MqttCluster",
        "events" => "Event",
        "leases" => "Lease",
        "servicemonitors" => "ServiceMonitor",
        "certificates" => "Certificate",
        other => other,
    }
    .to_string()
}

impl ApiDouble {
    /// An API server with one default StorageClass, `standard`, that does
    /// not allow volume expansion (kind's and k3d's local-path class).
    pub fn new() -> ApiDouble {
        let api = ApiDouble::default();
        api.create(
            "storage.k8s.io/v1",
            "storageclasses",
            "",
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                   "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                   "provisioner": "rancher.io/local-path", "volumeBindingMode": "Immediate"}),
        );
        api
    }

    /// A handle whose clients tag their requests `tag` (see [`Self::hang`]).
    pub fn client_as(&self, tag: &str) -> kube::Client {
        let mut h = self.clone();
        h.tag = Some(tag.to_string());
        kube::Client::new(h, "default")
    }

    /// Makes every request of the clients tagged `tag` hang (`false`: they
    /// go on), as a connection to the API server that stalls.
    pub fn hang(&self, tag: &str, hung: bool) {
        let mut st = self.lock();
        if hung {
            st.hung.insert(tag.to_string());
        } else {
            st.hung.remove(tag);
        }
    }

    /// The managedFields entries of an object: (manager, operation,
    /// subresource, dotted field paths).
    pub fn managers(
        &self,
        gv: &str,
        resource: &str,
        ns: &str,
        name: &str,
    ) -> Vec<(String, String, String, Vec<String>)> {
        self.get(gv, resource, ns, name)
            .map(|o| {
                ssa::entries(&o)
                    .into_iter()
                    .map(|e| {
                        (
                            e.manager,
                            e.operation,
                            e.subresource,
                            e.set.iter().map(ssa::dotted).collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A `kube::Client` talking to this double.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    /// Serve an optional API group (e.g. a CRD being installed).
    pub fn serve_api(&self, gv: &str, plural: &str, kind: &str) {
        self.lock()
            .apis
            .entry(gv.to_string())
            .or_default()
            .push((plural.to_string(), kind.to_string()));
    }

    pub fn get(&self, gv: &str, resource: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&Key {
                gv: gv.into(),
                resource: resource.into(),
                namespace: ns.into(),
                name: name.into(),
            })
            .cloned()
    }

    pub fn list(&self, gv: &str, resource: &str, ns: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.gv == gv && k.resource == resource && k.namespace == ns)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every stored key.
    pub fn keys(&self) -> Vec<Key> {
        self.lock().objects.keys().cloned().collect()
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Events (events.k8s.io) about the object named `regarding`.
    pub fn events(&self, ns: &str, regarding: &str) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .list("events.k8s.io/v1", "events", ns)
            .into_iter()
            .filter(|e| e["regarding"]["name"] == regarding)
            .collect();
        v.sort_by_key(|e| {
            e["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
        });
        v
    }

    /// Stores `obj` as `kubectl create` would (no admission; status, if
    /// any, kept: a test standing in for a controller).
    pub fn create(&self, gv: &str, resource: &str, ns: &str, mut obj: Value) -> Value {
        let mut st = self.lock();
        let now = now();
        let w = ssa::Writer {
            manager: "kubectl-create",
            subresource: "",
            api_version: gv,
            now: &now,
        };
        ssa::update(&Value::Null, &mut obj, &w);
        let (_, v) = create(&mut st, gv, resource, ns, obj);
        v
    }

    /// A user editing an object (`kubectl edit`): a merge patch, owned by
    /// field manager `kubectl-edit`; bumps generation when the spec
    /// changes. Status in it is ignored where status is a subresource.
    pub fn patch(&self, gv: &str, resource: &str, ns: &str, name: &str, patch: Value) {
        let mut st = self.lock();
        let key = Key {
            gv: gv.into(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
        };
        if let Some(old) = st.objects.get(&key).cloned() {
            let mut new = old.clone();
            merge_patch(&mut new, &patch);
            if has_status(resource) {
                keep_status(&old, &mut new);
            }
            let now = now();
            let w = ssa::Writer {
                manager: "kubectl-edit",
                subresource: "",
                api_version: gv,
                now: &now,
            };
            ssa::update(&old, &mut new, &w);
            store(&mut st, key, Some(&old), new, true);
        }
    }

    /// Sets the status subresource (what a built-in controller would do).
    pub fn set_status(&self, gv: &str, resource: &str, ns: &str, name: &str, status: Value) {
        let mut st = self.lock();
        let key = Key {
            gv: gv.into(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
        };
        if let Some(old) = st.objects.get(&key).cloned() {
            let mut new = old.clone();
            new["status"] = status;
            store(&mut st, key, Some(&old), new, false);
        }
    }

    pub fn delete(&self, gv: &str, resource: &str, ns: &str, name: &str) -> bool {
        let mut st = self.lock();
        let key = Key {
            gv: gv.into(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
        };
        delete(&mut st, &key).is_some()
    }

    fn handle(
        &self,
        method: Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Response<Body> {
        let path = uri.path().trim_end_matches('/').to_string();
        let query: BTreeMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.lock().requests.push(format!("{method} {}", uri));
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        // /api/v1/...  or /apis/g/v/...
        let (gv, rest) = match parts.as_slice() {
            ["api", v, rest @ ..] => (v.to_string(), rest.to_vec()),
            ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest.to_vec()),
            _ => return json_response(status(404, "NotFound", format!("no route {path}"))),
        };
        if rest.is_empty() {
            return self.discovery(&gv);
        }
        let (ns, rest): (Option<String>, Vec<&str>) = match rest.as_slice() {
            ["namespaces", ns, r, tail @ ..] => {
                let mut v = vec![*r];
                v.extend_from_slice(tail);
                (Some(ns.to_string()), v)
            }
            other => (None, other.to_vec()),
        };
        let resource = rest.first().copied().unwrap_or_default().to_string();
        let name = rest.get(1).map(|s| s.to_string());
        let sub = rest.get(2).map(|s| s.to_string());
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return json_response(status(400, "BadRequest", format!("body: {e}"))),
            }
        };
        let nsv = ns.clone().unwrap_or_default();
        let key = |name: &str| Key {
            gv: gv.clone(),
            resource: resource.clone(),
            namespace: nsv.clone(),
            name: name.to_string(),
        };
        let manager = manager_of(&query, headers);
        let now = now();
        let writer = ssa::Writer {
            manager: &manager,
            subresource: sub.as_deref().unwrap_or(""),
            api_version: &gv,
            now: &now,
        };
        let not_found = |name: &str| {
            json_response(status(
                404,
                "NotFound",
                format!("{resource} \"{name}\" not found"),
            ))
        };

        let mut st = self.lock();
        match (method, name) {
            (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                let since: u64 = query
                    .get("resourceVersion")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                let (tx, rx) = mpsc::unbounded();
                for (rv, ty, k, obj) in &st.history {
                    if *rv > since
                        && k.gv == gv
                        && k.resource == resource
                        && ns.as_ref().is_none_or(|n| *n == k.namespace)
                    {
                        let line = format!("{}\n", json!({"type": ty, "object": obj}));
                        let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from(line))));
                    }
                }
                st.watchers.push(Watcher {
                    gv: gv.clone(),
                    resource: resource.clone(),
                    namespace: ns.clone(),
                    tx,
                });
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(BoxBody::new(StreamBody::new(rx)))
                    .unwrap_or_else(|_| Response::new(empty()))
            }
            (Method::GET, None) => {
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        k.gv == gv
                            && k.resource == resource
                            && ns.as_ref().is_none_or(|n| *n == k.namespace)
                    })
                    .filter(|(_, v)| label_match(v, query.get("labelSelector").map(String::as_str)))
                    .map(|(_, v)| v.clone())
                    .collect();
                let kind = format!("{}List", kind_for(&resource));
                json_response((
                    StatusCode::OK,
                    json!({
                        "apiVersion": gv, "kind": kind,
                        "metadata": {"resourceVersion": st.rv.to_string()},
                        "items": items,
                    }),
                ))
            }
            (Method::GET, Some(name)) => match st.objects.get(&key(&name)) {
                Some(v) => json_response((StatusCode::OK, v.clone())),
                None => not_found(&name),
            },
            (Method::POST, None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let k = key(&name);
                if st.objects.contains_key(&k) {
                    return json_response(status(
                        409,
                        "AlreadyExists",
                        format!("{resource} \"{name}\" already exists"),
                    ));
                }
                let mut obj = body;
                if has_status(&resource) {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                }
                if let Err(e) = admission::create(&st, &k, &obj) {
                    return json_response(status(e.0, e.1, e.2));
                }
                ssa::update(&Value::Null, &mut obj, &writer);
                let (_, v) = create(&mut st, &gv, &resource, &nsv, obj);
                json_response((StatusCode::CREATED, v))
            }
            (Method::PUT, Some(name)) => {
                let k = key(&name);
                let Some(old) = st.objects.get(&k).cloned() else {
                    return not_found(&name);
                };
                let want_rv = body["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                if want_rv.is_some()
                    && want_rv.as_deref() != old["metadata"]["resourceVersion"].as_str()
                {
                    return json_response(status(
                        409,
                        "Conflict",
                        format!("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                    ));
                }
                let mut new = body;
                new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
                self.write(&mut st, k, old, new, sub.as_deref(), &writer)
            }
            (Method::PATCH, Some(name)) => {
                let k = key(&name);
                let old = st.objects.get(&k).cloned();
                let is_status = sub.as_deref() == Some("status");
                if content_type.starts_with("application/apply-patch") {
                    let force = query.get("force").is_some_and(|f| f == "true");
                    self.server_side_apply(&mut st, k, old, body, is_status, force, &writer)
                } else {
                    let Some(old) = old else {
                        return not_found(&name);
                    };
                    let mut new = old.clone();
                    if content_type.starts_with("application/strategic-merge-patch") {
                        ssa::strategic_merge(&mut new, &body, &mut Vec::new());
                    } else {
                        merge_patch(&mut new, &body);
                    }
                    self.write(&mut st, k, old, new, sub.as_deref(), &writer)
                }
            }
            (Method::DELETE, Some(name)) => match delete(&mut st, &key(&name)) {
                Some(v) => json_response((StatusCode::OK, v)),
                None => not_found(&name),
            },
            (m, _) => json_response(status(405, "MethodNotAllowed", format!("{m} {path}"))),
        }
    }

    /// An update (PUT or a non-apply patch) of `old` to `new`: the status
    /// subresource rule, immutability and admission, field ownership.
    fn write(
        &self,
        st: &mut State,
        k: Key,
        old: Value,
        mut new: Value,
        sub: Option<&str>,
        writer: &ssa::Writer,
    ) -> Response<Body> {
        match sub {
            Some("status") => {
                let mut o = old.clone();
                o["status"] = new["status"].take();
                new = o;
            }
            _ if has_status(&k.resource) => keep_status(&old, &mut new),
            _ => {}
        }
        if let Err(e) = admission::update(st, &k, &old, &new) {
            return json_response(status(e.0, e.1, e.2));
        }
        ssa::update(&old, &mut new, writer);
        let v = store(st, k, Some(&old), new, sub.is_none());
        json_response((StatusCode::OK, v))
    }

    #[allow(clippy::too_many_arguments)]
    fn server_side_apply(
        &self,
        st: &mut State,
        k: Key,
        old: Option<Value>,
        mut cfg: Value,
        is_status: bool,
        force: bool,
        writer: &ssa::Writer,
    ) -> Response<Body> {
        if let Some(m) = cfg["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        if k.resource == "secrets" {
            fold_string_data(&mut cfg);
        }
        if !is_status && has_status(&k.resource) {
            if let Some(o) = cfg.as_object_mut() {
                o.remove("status");
            }
        }
        let base = match (&old, is_status) {
            (None, true) => {
                return json_response(status(
                    404,
                    "NotFound",
                    format!("{} \"{}\" not found", k.resource, k.name),
                ))
            }
            (None, false) => Value::Null,
            (Some(o), _) => o.clone(),
        };
        let new = match ssa::apply(&base, &cfg, writer, force) {
            Ok(v) => v,
            Err(c) => return json_response(status(409, "Conflict", c.message())),
        };
        match old {
            None => {
                if let Err(e) = admission::create(st, &k, &new) {
                    return json_response(status(e.0, e.1, e.2));
                }
                let (_, v) = create(st, &k.gv, &k.resource, &k.namespace, new);
                json_response((StatusCode::CREATED, v))
            }
            Some(old) => {
                if let Err(e) = admission::update(st, &k, &old, &new) {
                    return json_response(status(e.0, e.1, e.2));
                }
                let v = store(st, k, Some(&old), new, !is_status);
                json_response((StatusCode::OK, v))
            }
        }
    }

    fn discovery(&self, gv: &str) -> Response<Body> {
        let st = self.lock();
        match st.apis.get(gv) {
            Some(res) => json_response((
                StatusCode::OK,
                json!({
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": res.iter().map(|(plural, kind)| json!({
                        "name": plural, "singularName": "", "namespaced": true, "kind": kind,
                        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                    })).collect::<Vec<_>>(),
                }),
            )),
            None => json_response(status(
                404,
                "NotFound",
                format!("the server could not find {gv}"),
            )),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn label_match(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k.trim_end_matches('=')] == v,
        None => !obj["metadata"]["labels"][term].is_null(),
    })
}

pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn notify(st: &mut State, ty: &'static str, key: &Key, obj: &Value) {
    st.history.push((st.rv, ty, key.clone(), obj.clone()));
    let line = Bytes::from(format!("{}\n", json!({"type": ty, "object": obj})));
    st.watchers.retain(|w| {
        if w.gv == key.gv
            && w.resource == key.resource
            && w.namespace.as_ref().is_none_or(|n| *n == key.namespace)
        {
            w.tx.unbounded_send(Ok(Frame::data(line.clone()))).is_ok()
        } else {
            !w.tx.is_closed()
        }
    });
}

fn fold_string_data(obj: &mut Value) {
    use base64::Engine;
    if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        if let Some(sd) = sd.as_object() {
            for (k, v) in sd {
                let enc = base64::engine::general_purpose::STANDARD
                    .encode(v.as_str().unwrap_or_default());
                obj["data"][k] = Value::String(enc);
            }
        }
    }
}

pub(crate) fn create(
    st: &mut State,
    gv: &str,
    resource: &str,
    ns: &str,
    mut obj: Value,
) -> (Key, Value) {
    st.rv += 1;
    st.uid += 1;
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !ns.is_empty() {
        obj["metadata"]["namespace"] = ns.into();
    }
    obj["metadata"]["uid"] = format!("uid-{:04}", st.uid).into();
    obj["metadata"]["resourceVersion"] = st.rv.to_string().into();
    obj["metadata"]["creationTimestamp"] = now().into();
    obj["metadata"]["generation"] = 1.into();
    if resource == "secrets" {
        fold_string_data(&mut obj);
    }
    let key = Key {
        gv: gv.into(),
        resource: resource.into(),
        namespace: ns.into(),
        name,
    };
    st.objects.insert(key.clone(), obj.clone());
    notify(st, "ADDED", &key, &obj);
    (key, obj)
}

/// Status is a subresource: a write to the main resource keeps the old.
fn keep_status(old: &Value, new: &mut Value) {
    match old.get("status") {
        Some(st) => new["status"] = st.clone(),
        None => {
            if let Some(o) = new.as_object_mut() {
                o.remove("status");
            }
        }
    }
}

/// Writes `new` over `old`, keeping server metadata; bumps the
/// resourceVersion only when something changed.
pub(crate) fn store(
    st: &mut State,
    key: Key,
    old: Option<&Value>,
    mut new: Value,
    spec_write: bool,
) -> Value {
    if key.resource == "secrets" {
        fold_string_data(&mut new);
    }
    let Some(old) = old else {
        return new;
    };
    for f in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "resourceVersion",
        "generation",
        "deletionTimestamp",
    ] {
        if let Some(v) = old["metadata"].get(f) {
            new["metadata"][f] = v.clone();
        }
    }
    if spec_write && spec_part(&new) != spec_part(old) {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = (g + 1).into();
    }
    if &new == old {
        return new;
    }
    st.rv += 1;
    new["metadata"]["resourceVersion"] = st.rv.to_string().into();
    st.objects.insert(key.clone(), new.clone());
    notify(st, "MODIFIED", &key, &new);
    new
}

/// Deletes `key` and, in the background-cascade way, everything it owns.
pub(crate) fn delete(st: &mut State, key: &Key) -> Option<Value> {
    let obj = st.objects.remove(key)?;
    st.rv += 1;
    notify(st, "DELETED", key, &obj);
    let uid = obj["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let owned: Vec<Key> = st
        .objects
        .iter()
        .filter(|(_, v)| {
            v["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| r["uid"] == uid.as_str()))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in owned {
        delete(st, &k);
    }
    Some(obj)
}

fn empty() -> Body {
    BoxBody::new(Full::new(Bytes::new()))
}

fn json_response((code, v): (StatusCode, Value)) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BoxBody::new(Full::new(Bytes::from(v.to_string()))))
        .unwrap_or_else(|_| Response::new(empty()))
}

impl tower::Service<Request<kube::client::Body>> for ApiDouble {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            // A stalled connection: nothing comes back until released.
            if let Some(tag) = &this.tag {
                while this.lock().hung.contains(tag) {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            Ok(this.handle(parts.method, &parts.uri, &parts.headers, body))
        })
    }
}

/// Keys grouped by resource, for readable assertions.
pub fn summary(keys: &[Key]) -> BTreeSet<String> {
    keys.iter()
        .map(|k| format!("{}/{}", k.resource, k.name))
        .collect()
}

/// Serves the double over plain HTTP on 127.0.0.1 (for running the real
/// operator binary against it); returns the address.
pub async fn serve_http(api: ApiDouble) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let api = api.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let api = api.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(api.handle(
                            parts.method,
                            &parts.uri,
                            &parts.headers,
                            body,
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}
