//! The operator end to end without a live cluster: the real controller
//! (watches, reconciles, Admin gRPC calls) runs against the in-process
//! Kubernetes API double, whose StatefulSet controller decides the pods,
//! and a kubelet stand-in ([`kubelet`]) runs a real `raftmq serve` for each
//! of them. Shared by the operator's end-to-end suites.

pub mod kubelet;
pub mod mqtt_load;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_operator::controller::{self, Context, LifecycleSettings};
use raftmq_operator::membership::admin::{AdminMembership, Resolver, Timeouts};
use raftmq_operator::membership::{ClientTls, Membership, Target};
use raftmq_operator::render::Names;
use raftmq_operator::telemetry::Metrics;
use serde_json::{json, Value};

use crate::api_double::ApiDouble;
use kubelet::{b64, Cluster, PodPorts};

pub const NS: &str = "mqtt";
pub const NAME: &str = "demo";
pub const CR: (&str, &str) = ("raftmq.io/v1alpha1", "mqttclusters");
pub const MAX_PODS: i32 = 6;
pub const MQTT_PORT: i32 = 1883;

pub type PortMap = Arc<BTreeMap<i32, PodPorts>>;

/// Pods' gRPC on loopback instead of `<pod>.<headless>.<ns>.svc:7100`.
pub struct LoopbackResolver(pub PortMap);

impl Resolver for LoopbackResolver {
    fn addr(&self, _names: &Names, ordinal: i32) -> String {
        let port = self.0.get(&ordinal).map_or(1, |p| p.grpc);
        format!("127.0.0.1:{port}")
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

pub fn pod_name(o: i32) -> String {
    format!("{NAME}-{o}")
}

/// The uids of the pods that exist now, by name: a pod replaced keeps its
/// name, not its uid.
pub fn pod_uids(lab: &Lab) -> BTreeMap<String, String> {
    lab.api
        .list("v1", "pods", NS)
        .iter()
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&p["metadata"]["name"]), s(&p["metadata"]["uid"]))
        })
        .collect()
}

pub struct Lab {
    pub api: ApiDouble,
    pub cluster: Cluster,
    pub admin: Arc<AdminMembership>,
    /// The client certificate for direct Admin calls (mutual TLS).
    pub tls: Option<ClientTls>,
    stop_operator: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Lab {
    pub async fn start(spec: Value) -> Lab {
        let api = ApiDouble::new();
        let cluster = Cluster::start(api.clone());
        let admin = Arc::new(AdminMembership {
            resolver: Arc::new(LoopbackResolver(cluster.ports.clone())),
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                call: Duration::from_secs(10),
                add_learner: Duration::from_secs(60),
                drain: Duration::from_secs(15),
            },
            drain_ms: 5_000,
        });
        let mut ctx = Context::new(
            api.client(),
            Metrics::new().expect("metrics"),
            admin.clone(),
        );
        ctx.lifecycle = LifecycleSettings {
            stuck_after: Duration::from_secs(90),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(5),
            poll: Duration::from_secs(1),
            max_lag: 1000,
            unready_after: Duration::from_secs(60),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(controller::run(
            Arc::new(ctx),
            Some(NS.into()),
            async move {
                let _ = rx.await;
            },
        ));
        api.create(
            CR.0,
            CR.1,
            NS,
            json!({"apiVersion": CR.0, "kind": "MqttCluster", "metadata": {"name": NAME}, "spec": spec}),
        );
        Lab {
            api,
            cluster,
            admin,
            tls: None,
            stop_operator: Some(tx),
        }
    }

    pub fn status(&self) -> Value {
        self.api
            .get(CR.0, CR.1, NS, NAME)
            .map(|c| c["status"].clone())
            .unwrap_or(Value::Null)
    }

    pub fn patch_spec(&self, spec: Value) {
        self.api
            .patch(CR.0, CR.1, NS, NAME, json!({ "spec": spec }));
    }

    /// Waits until the status says `n` voters (pods 0..n), nothing in
    /// progress, `n` pods ready, and `n` pods exist, all on the
    /// StatefulSet's latest revision.
    pub async fn converged(&self, n: i32, timeout: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        let want: Vec<String> = (0..n).map(pod_name).collect();
        loop {
            let st = self.status();
            let members: Vec<String> =
                serde_json::from_value(st["members"].clone()).unwrap_or_default();
            let sts = self
                .api
                .get("apps/v1", "statefulsets", NS, NAME)
                .unwrap_or_default();
            let rev = &sts["status"]["updateRevision"];
            let pods = self.api.list("v1", "pods", NS);
            let all_current = pods.len() == n as usize
                && sts["status"]["observedGeneration"] == sts["metadata"]["generation"]
                && pods
                    .iter()
                    .all(|p| p["metadata"]["labels"]["controller-revision-hash"] == *rev);
            if members == want
                && st["phase"] == "Running"
                && st["readyReplicas"] == n
                && st["learners"].is_null()
                && sts["spec"]["replicas"] == n
                && all_current
            {
                return Ok(t.elapsed());
            }
            if t.elapsed() > timeout {
                return Err(format!(
                    "not converged on {n} pods in {timeout:?}: members {members:?}, phase {}, ready {}, pods {}, all current {all_current}",
                    st["phase"], st["readyReplicas"], pods.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The Raft voters as the leader reports them, asked directly.
    pub fn target(&self, tls: Option<ClientTls>) -> Target {
        Target {
            names: Names {
                cluster: NAME.into(),
                namespace: NS.into(),
            },
            tls,
        }
    }

    /// A certificate from the operator-issued cluster-plane Secrets:
    /// `stem` `admin` (the operator's admin identity) or `node-<id>`.
    pub fn peer_tls(&self, stem: &str) -> Option<ClientTls> {
        let text = |secret: &str, key: &str| {
            let s = self.api.get("v1", "secrets", NS, secret)?;
            String::from_utf8(b64(s["data"][key].as_str()?)).ok()
        };
        let secret = if stem == "admin" {
            format!("{NAME}-peer-ca")
        } else {
            format!("{NAME}-peer")
        };
        Some(ClientTls {
            ca_crt: text(&format!("{NAME}-peer"), "ca.crt")?,
            cert: text(&secret, &format!("{stem}.crt"))?,
            key: text(&secret, &format!("{stem}.key"))?,
        })
    }

    /// The operator's own admin certificate (the cluster port is mutual
    /// TLS for every cluster).
    pub fn issued_tls(&self) -> Option<ClientTls> {
        self.peer_tls("admin")
    }

    pub async fn raft_voters(&self) -> BTreeSet<u64> {
        let target = self.target(self.tls.clone().or_else(|| self.issued_tls()));
        for o in 0..MAX_PODS {
            if let Ok(s) = self.admin.status(&target, o).await {
                if let Some(l) = s.leader {
                    if let Ok(ls) = self.admin.status(&target, l as i32 - 1).await {
                        return ls
                            .members
                            .iter()
                            .filter(|m| m.voter)
                            .map(|m| m.id)
                            .collect();
                    }
                }
            }
        }
        BTreeSet::new()
    }

    pub fn event_reasons(&self) -> Vec<String> {
        self.api
            .events(NS, NAME)
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_operator.take() {
            let _ = tx.send(());
        }
    }
}

/// The ConfigMap pod `o`'s broker config comes from, and its text.
pub fn pod_config(lab: &Lab, o: i32) -> (String, String) {
    let pod = lab
        .api
        .get("v1", "pods", NS, &pod_name(o))
        .unwrap_or_default();
    let cm = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "config")
        .and_then(|v| v["configMap"]["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let text = lab
        .api
        .get("v1", "configmaps", NS, &cm)
        .and_then(|c| c["data"]["broker.toml"].as_str().map(str::to_string))
        .unwrap_or_default();
    (cm, text)
}
