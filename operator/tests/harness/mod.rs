//! The operator's controller on the API double, as the tests drive it:
//! reconcile a cluster by name, read back objects, conditions and Events.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use base64::Engine;
use kube::runtime::controller::Action;
use raftmq_operator::controller::{reconcile, Context, Error, LifecycleSettings};
use raftmq_operator::crd::MqttCluster;
use raftmq_operator::membership::Membership;
use raftmq_operator::render::CONFIG_CHECKSUM;
use raftmq_operator::telemetry::Metrics;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::api_double::ApiDouble;
use crate::common;

pub mod raft;

use raft::Groups;

pub const NS: &str = "mqtt";
pub const CR: (&str, &str) = ("raftmq.io/v1alpha1", "mqttclusters");

pub struct Harness {
    pub api: ApiDouble,
    pub ctx: Arc<Context>,
    pub clock: Arc<Mutex<OffsetDateTime>>,
    /// The clusters' Raft groups, when the harness made them (`new`).
    pub groups: Option<Groups>,
}

impl Harness {
    /// Every cluster's brokers in the fake Raft group of its pods.
    pub fn new() -> Harness {
        let api = ApiDouble::new();
        let groups = Groups::new(&api);
        let mut h = Harness::on(api, Arc::new(groups.clone()), LifecycleSettings::default());
        h.groups = Some(groups);
        h
    }

    /// On an API double made beforehand, with Raft membership through
    /// `membership`, paced by `lifecycle`.
    pub fn on(
        api: ApiDouble,
        membership: Arc<dyn Membership>,
        lifecycle: LifecycleSettings,
    ) -> Harness {
        let metrics = Metrics::new().expect("metrics");
        let mut ctx = Context::new(api.client(), metrics, membership);
        ctx.lifecycle = lifecycle;
        let clock = Arc::new(Mutex::new(OffsetDateTime::now_utc()));
        let c = clock.clone();
        ctx.now = Arc::new(move || *c.lock().expect("clock"));
        Harness {
            api,
            ctx: Arc::new(ctx),
            clock,
            groups: None,
        }
    }

    /// The pods come up (the API double's StatefulSet controller and
    /// kubelet) and the brokers of cluster `name` that run make its Raft
    /// group: the cluster runs.
    pub fn pods_run(&self, name: &str) {
        self.api
            .set_kubelet(crate::api_double::default_kubelet(&self.api));
        self.api.settle_statefulsets();
        self.group_formed(name);
    }

    /// The brokers of cluster `name` whose pods run are the voters of its
    /// Raft group, the first of them leads.
    pub fn group_formed(&self, name: &str) {
        let group = self.groups.as_ref().expect("Harness::new").of(name);
        let running: Vec<u64> = (1..=self.api.list("v1", "pods", NS).len() as u64)
            .filter(|id| group.up(*id))
            .collect();
        let mut g = group.g();
        g.leader = running.first().copied().unwrap_or_default();
        g.voters = running.into_iter().collect();
    }

    /// [`Harness::pods_run`], then what follows in a cluster: the
    /// operator looks (every pod on the current template: it raises the
    /// rollout partition) and the StatefulSet controller sees that.
    pub async fn comes_up(&self, name: &str) {
        self.pods_run(name);
        self.reconcile(name).await;
        self.api.settle_statefulsets();
    }

    /// Loads an example file into the double as `kubectl apply` would.
    pub fn apply_example(&self, name: &str) {
        for doc in common::example_docs(name) {
            let (gv, res) = match doc["kind"].as_str() {
                Some("Secret") => ("v1", "secrets"),
                Some("MqttCluster") => CR,
                other => panic!("unexpected {other:?}"),
            };
            let mut doc = doc;
            if doc["kind"] == "MqttCluster" && doc.get("spec").is_none() {
                doc["spec"] = json!({});
            }
            self.api.create(gv, res, NS, doc);
        }
    }

    pub fn cluster(&self, name: &str) -> MqttCluster {
        let v = self.api.get(CR.0, CR.1, NS, name).expect("cluster exists");
        serde_json::from_value(v).expect("MqttCluster")
    }

    pub async fn reconcile(&self, name: &str) {
        self.try_reconcile(name).await.expect("reconcile");
    }

    pub async fn try_reconcile(&self, name: &str) -> Result<Action, Error> {
        reconcile(Arc::new(self.cluster(name)), self.ctx.clone()).await
    }

    /// Events about the cluster: (type, reason, note).
    pub fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        self.api
            .events(NS, name)
            .iter()
            .map(|e| (s(&e["type"]), s(&e["reason"]), s(&e["note"])))
            .collect()
    }

    pub fn status(&self, name: &str) -> Value {
        self.get(CR.0, CR.1, name).expect("cluster")["status"].clone()
    }

    pub fn get(&self, gv: &str, res: &str, name: &str) -> Option<Value> {
        self.api.get(gv, res, NS, name)
    }

    pub fn condition(&self, name: &str, type_: &str) -> Value {
        let c = self.get(CR.0, CR.1, name).expect("cluster");
        c["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or(Value::Null)
    }

    pub fn event_reasons(&self, name: &str) -> Vec<String> {
        self.api
            .events(NS, name)
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn rv(&self, gv: &str, res: &str, name: &str) -> String {
        self.get(gv, res, name).expect("object")["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn checksum(&self, name: &str) -> String {
        let sts = self.get("apps/v1", "statefulsets", name).expect("sts");
        sts["spec"]["template"]["metadata"]["annotations"][CONFIG_CHECKSUM]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn secret_text(&self, name: &str, key: &str) -> String {
        let s = self.get("v1", "secrets", name).expect("secret");
        let b = s["data"][key].as_str().unwrap_or_default();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
        )
        .unwrap_or_default()
    }

    /// The broker config ConfigMap the StatefulSet's template names.
    pub fn config_map(&self, name: &str) -> String {
        let sts = self.get("apps/v1", "statefulsets", name).expect("sts");
        sts["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "config")
            .and_then(|v| v["configMap"]["name"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// The broker config the StatefulSet's template names.
    pub fn config_toml(&self, name: &str) -> String {
        let cm = self.config_map(name);
        self.get("v1", "configmaps", &cm).expect("config")["data"]["broker.toml"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}
