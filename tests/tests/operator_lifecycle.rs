//! The operator end to end without a live cluster: the real controller
//! (watches, reconciles, Admin gRPC calls) runs against the in-process
//! Kubernetes API double, and a stand-in for the StatefulSet controller and
//! kubelet (below) starts a real `raftmq serve` for every pod the
//! StatefulSet asks for: the rendered ConfigMap, env and Secrets written to
//! files, listen addresses moved to loopback ports, one data directory per
//! ordinal (the PVC, deleted with it). A "Service" proxy hands each new
//! client connection to a ready pod. While rumqttc clients publish QoS 1
//! into persistent sessions, the cluster goes 3 → 5 → 3 and then rolls
//! every pod for a new image tag; nothing acknowledged may be lost.

#[path = "../../operator/tests/api_double/mod.rs"]
mod api_double;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_double::ApiDouble;
use base64::Engine as _;
use raftmq_e2e::{broker_bin, free_port};
use raftmq_operator::membership::admin::{AdminMembership, Resolver, Timeouts};
use raftmq_operator::membership::{ClientTls, Membership, Target};
use raftmq_operator::reconcile::{self, Context, LifecycleSettings, TEMPLATE_HASH};
use raftmq_operator::render::{Names, CLUSTER_PORT, HTTP_PORT};
use raftmq_operator::telemetry::Metrics;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

const NS: &str = "mqtt";
const NAME: &str = "demo";
const CR: (&str, &str) = ("raftmq.io/v1alpha1", "mqttclusters");
const MAX_PODS: i32 = 6;
const MQTT_PORT: i32 = 1883;

#[derive(Clone, Copy, Debug)]
struct PodPorts {
    tcp: u16,
    http: u16,
    grpc: u16,
}

type PortMap = Arc<BTreeMap<i32, PodPorts>>;

/// Pods' gRPC on loopback instead of `<pod>.<headless>.<ns>.svc:7100`.
struct LoopbackResolver(PortMap);

impl Resolver for LoopbackResolver {
    fn addr(&self, _names: &Names, ordinal: i32) -> String {
        let port = self.0.get(&ordinal).map_or(1, |p| p.grpc);
        format!("127.0.0.1:{port}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

// ---- the StatefulSet controller and kubelet stand-in ---------------------

struct Running {
    child: Child,
    /// The pod template it was started from (a restart after a crash uses
    /// it again, as the kubelet would).
    template: Value,
}

struct Kubelet {
    api: ApiDouble,
    root: PathBuf,
    ports: PortMap,
    procs: BTreeMap<i32, Running>,
    /// Containers that died, restarted at the instant given.
    crashed: BTreeMap<i32, (Instant, Value)>,
    /// Sent SIGTERM already.
    terminating: BTreeSet<i32>,
    ready: BTreeMap<i32, bool>,
    /// MQTT ports of ready pods: the client Service's endpoints.
    endpoints: Arc<Mutex<Vec<u16>>>,
    /// What it did, for a failing test's output.
    log: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

fn pod_name(o: i32) -> String {
    format!("{NAME}-{o}")
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

impl Kubelet {
    fn note(&self, what: String) {
        let line = format!("{:>7.2}s {what}", self.started.elapsed().as_secs_f32());
        lock(&self.log).push(line);
    }

    fn pod_dir(&self, o: i32) -> PathBuf {
        self.root.join(format!("pod-{o}"))
    }

    fn pvc_dir(&self, o: i32) -> PathBuf {
        self.root.join(format!("pvc-data-{}", pod_name(o)))
    }

    fn pods(&self) -> BTreeMap<i32, Value> {
        self.api
            .list("v1", "pods", NS)
            .into_iter()
            .filter_map(|p| {
                let n = p["metadata"]["name"].as_str()?;
                let o = n.strip_prefix(&format!("{NAME}-"))?.parse().ok()?;
                Some((o, p))
            })
            .collect()
    }

    /// Writes the pod's volumes to files and returns (mount path, local
    /// directory) pairs.
    fn materialise(&self, o: i32, template: &Value) -> Vec<(String, PathBuf)> {
        let dir = self.pod_dir(o);
        let _ = std::fs::remove_dir_all(&dir);
        let spec = &template["spec"];
        let volumes: BTreeMap<String, Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?.to_string(), v.clone())))
            .collect();
        let mut mounts = Vec::new();
        for m in spec["containers"][0]["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(path)) = (m["name"].as_str(), m["mountPath"].as_str()) else {
                continue;
            };
            if name == "data" {
                let d = self.pvc_dir(o);
                std::fs::create_dir_all(&d).expect("pvc dir");
                mounts.push((path.to_string(), d));
                continue;
            }
            let d = dir.join(name);
            std::fs::create_dir_all(&d).expect("volume dir");
            let v = volumes.get(name).cloned().unwrap_or(Value::Null);
            if let Some(cm) = v["configMap"]["name"].as_str() {
                let obj = self.api.get("v1", "configmaps", NS, cm).unwrap_or_default();
                for (k, text) in obj["data"].as_object().into_iter().flatten() {
                    std::fs::write(d.join(k), text.as_str().unwrap_or_default())
                        .expect("write config");
                }
            } else if let Some(sec) = v["secret"]["secretName"].as_str() {
                let obj = self.api.get("v1", "secrets", NS, sec).unwrap_or_default();
                let items: Option<Vec<(String, String)>> =
                    v["secret"]["items"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|i| {
                                Some((
                                    i["key"].as_str()?.to_string(),
                                    i["path"].as_str()?.to_string(),
                                ))
                            })
                            .collect()
                    });
                for (k, data) in obj["data"].as_object().into_iter().flatten() {
                    let file = match &items {
                        Some(items) => match items.iter().find(|(key, _)| key == k) {
                            Some((_, p)) => p.clone(),
                            None => continue,
                        },
                        None => k.clone(),
                    };
                    std::fs::write(d.join(file), b64(data.as_str().unwrap_or_default()))
                        .expect("write secret");
                }
            }
            mounts.push((path.to_string(), d));
        }
        // Longest first: /etc/raftmq/config before /etc/raftmq.
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        mounts
    }

    fn spawn(&mut self, o: i32, template: Value) {
        let ports = self.ports[&o];
        let mounts = self.materialise(o, &template);
        // Through placeholders: a local directory may itself contain a
        // mount path (`/tmp`).
        let local = |s: &str| {
            let mut s = s.to_string();
            for (i, (path, _)) in mounts.iter().enumerate() {
                s = s.replace(path.as_str(), &format!("\u{1}{i}\u{1}"));
            }
            for (i, (_, dir)) in mounts.iter().enumerate() {
                s = s.replace(&format!("\u{1}{i}\u{1}"), &dir.display().to_string());
            }
            s
        };
        let container = &template["spec"]["containers"][0];
        // The config: mount paths to files, listen addresses to loopback.
        let mut args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(&local))
            .collect();
        if let Some(i) = args.iter().position(|a| a == "--config") {
            if let Some(path) = args.get(i + 1).cloned() {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let text = local(&text)
                    .replace(
                        &format!("0.0.0.0:{MQTT_PORT}"),
                        &format!("127.0.0.1:{}", ports.tcp),
                    )
                    .replace(
                        &format!("0.0.0.0:{HTTP_PORT}"),
                        &format!("127.0.0.1:{}", ports.http),
                    )
                    .replace(
                        &format!("0.0.0.0:{CLUSTER_PORT}"),
                        &format!("127.0.0.1:{}", ports.grpc),
                    );
                // A ConfigMap volume is read-only; the broker reads this copy.
                let copy = self.pod_dir(o).join("raftmq.toml");
                std::fs::write(&copy, text).expect("write broker config");
                args[i + 1] = copy.display().to_string();
            }
        }
        let name = pod_name(o);
        let mut env: Vec<(String, String)> = Vec::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let Some(k) = e["name"].as_str() else {
                continue;
            };
            let v = if let Some(v) = e["value"].as_str() {
                v.replace("$(POD_NAME)", &name)
                    .replace("$(POD_NAMESPACE)", NS)
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => name.clone(),
                    Some("metadata.namespace") => NS.to_string(),
                    _ => String::new(),
                }
            };
            env.push((k.to_string(), v));
        }
        // The pod's DNS name, as the headless Service would resolve it.
        env.push((
            "RAFTMQ_CLUSTER__ADVERTISE".into(),
            format!("127.0.0.1:{}", ports.grpc),
        ));
        env.push(("HOSTNAME".into(), name.clone()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("{name}.log")))
            .expect("pod log");
        let child = Command::new(broker_bin())
            .args(&args)
            .env_remove("RUST_LOG")
            .env_remove("RAFTMQ_BIN")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start raftmq");
        self.note(format!(
            "started {name} (pid {}, tcp {}, grpc {})",
            child.id(),
            ports.tcp,
            ports.grpc
        ));
        self.procs.insert(o, Running { child, template });
    }

    /// SIGTERM, then SIGKILL after the grace period.
    fn stop(&mut self, o: i32) {
        let Some(mut r) = self.procs.remove(&o) else {
            return;
        };
        let t = Instant::now();
        // Once: a second SIGTERM makes the broker skip its hand-over.
        if !self.terminating.remove(&o) {
            signal(&r.child, libc::SIGTERM);
        }
        let deadline = t + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = r.child.try_wait() {
                self.note(format!(
                    "{} exited after SIGTERM in {:.1}s ({status})",
                    pod_name(o),
                    t.elapsed().as_secs_f32()
                ));
                break;
            }
            if Instant::now() > deadline {
                let _ = r.child.kill();
                let _ = r.child.wait();
                self.note(format!("{} killed after the grace period", pod_name(o)));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ready.remove(&o);
        self.publish_endpoints();
    }

    fn create_pod(&mut self, o: i32, template: &Value) {
        let name = pod_name(o);
        let pvc = format!("data-{name}");
        if self
            .api
            .get("v1", "persistentvolumeclaims", NS, &pvc)
            .is_none()
        {
            self.api.create(
                "v1",
                "persistentvolumeclaims",
                NS,
                json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": pvc, "labels": template["metadata"]["labels"]},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }),
            );
        }
        let mut meta = template["metadata"].clone();
        meta["name"] = name.clone().into();
        self.api.create(
            "v1",
            "pods",
            NS,
            json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": template["spec"],
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]},
            }),
        );
        self.ready.insert(o, false);
        self.spawn(o, template.clone());
    }

    fn delete_pod(&mut self, o: i32) {
        self.crashed.remove(&o);
        self.stop(o);
        self.api.delete("v1", "pods", NS, &pod_name(o));
        self.ready.remove(&o);
        self.note(format!("deleted pod {}", pod_name(o)));
    }

    fn publish_endpoints(&self) {
        let eps: Vec<u16> = self
            .ready
            .iter()
            .filter(|(_, r)| **r)
            .map(|(o, _)| self.ports[o].tcp)
            .collect();
        *lock(&self.endpoints) = eps;
    }

    fn probe(&self, o: i32) -> bool {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(800)))
            .build()
            .new_agent();
        let url = format!("http://127.0.0.1:{}/readyz", self.ports[&o].http);
        agent
            .get(&url)
            .call()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false)
    }

    fn pass(&mut self) {
        let Some(sts) = self.api.get("apps/v1", "statefulsets", NS, NAME) else {
            return;
        };
        let spec = &sts["spec"];
        let replicas = spec["replicas"].as_i64().unwrap_or(1) as i32;
        let partition = spec["updateStrategy"]["rollingUpdate"]["partition"]
            .as_i64()
            .unwrap_or(0) as i32;
        let template = spec["template"].clone();
        let hash = template["metadata"]["annotations"][TEMPLATE_HASH]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let delete_claims = spec["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete";

        // The kubelet restarts a container that died (restartPolicy
        // Always), after a back-off (its first is 10 s; 3 s here).
        let crashed: Vec<i32> = self
            .procs
            .iter_mut()
            .filter_map(|(o, r)| r.child.try_wait().ok().flatten().map(|_| *o))
            .collect();
        for o in crashed {
            if let Some(r) = self.procs.remove(&o) {
                self.note(format!(
                    "{} died; restarting its container in 3s",
                    pod_name(o)
                ));
                self.ready.insert(o, false);
                self.publish_endpoints();
                self.crashed
                    .insert(o, (Instant::now() + Duration::from_secs(3), r.template));
            }
        }
        let due: Vec<i32> = self
            .crashed
            .iter()
            .filter(|(_, (at, _))| *at <= Instant::now())
            .map(|(o, _)| *o)
            .collect();
        for o in due {
            if let Some((_, template)) = self.crashed.remove(&o) {
                self.spawn(o, template);
            }
        }

        // Scale down: every retiring pod at once (Parallel pod management:
        // SIGTERM to all, then wait); volumes per the policy.
        let pods = self.pods();
        for (&o, _) in pods.iter().rev().filter(|(o, _)| **o >= replicas) {
            if let Some(r) = self.procs.get(&o) {
                signal(&r.child, libc::SIGTERM);
                self.terminating.insert(o);
            }
        }
        for (&o, _) in pods.iter().rev().filter(|(o, _)| **o >= replicas) {
            self.delete_pod(o);
            if delete_claims {
                self.api.delete(
                    "v1",
                    "persistentvolumeclaims",
                    NS,
                    &format!("data-{}", pod_name(o)),
                );
                let _ = std::fs::remove_dir_all(self.pvc_dir(o));
                self.note(format!("deleted PVC data-{} and its data", pod_name(o)));
            }
        }
        // Create what is missing (Parallel pod management).
        let pods = self.pods();
        for o in 0..replicas {
            if !pods.contains_key(&o) {
                self.create_pod(o, &template);
            }
        }
        // RollingUpdate with a partition: the highest outdated pod at or
        // above it is deleted and re-created; unhealthy pods above wait.
        let pods = self.pods();
        for o in (partition.max(0)..replicas).rev() {
            let Some(p) = pods.get(&o) else { break };
            if p["metadata"]["annotations"][TEMPLATE_HASH] != hash.as_str() {
                self.note(format!("rolling {} to template {hash}", pod_name(o)));
                self.delete_pod(o);
                self.create_pod(o, &template);
                break;
            }
            if !self.ready.get(&o).copied().unwrap_or(false) {
                break;
            }
        }

        // Readiness from /readyz, into the Pod and the StatefulSet status.
        let pods = self.pods();
        let mut changed = false;
        for &o in pods.keys() {
            let ok = self.probe(o);
            if self.ready.get(&o).copied() != Some(ok) {
                changed = true;
                self.ready.insert(o, ok);
                self.note(format!("{} ready={ok}", pod_name(o)));
                self.api.set_status(
                    "v1",
                    "pods",
                    NS,
                    &pod_name(o),
                    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ok {"True"} else {"False"}}]}),
                );
            }
        }
        if changed {
            self.publish_endpoints();
        }
        let pods = self.pods();
        let updated = pods
            .values()
            .filter(|p| p["metadata"]["annotations"][TEMPLATE_HASH] == hash.as_str())
            .count();
        let ready = pods
            .keys()
            .filter(|o| self.ready.get(o) == Some(&true))
            .count();
        let status = json!({
            "observedGeneration": sts["metadata"]["generation"],
            "replicas": pods.len(),
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "currentReplicas": updated,
            "updateRevision": hash,
            "currentRevision": if updated == pods.len() { hash.clone() } else { "previous".to_string() },
        });
        if sts["status"] != status {
            self.api
                .set_status("apps/v1", "statefulsets", NS, NAME, status);
        }
    }

    fn stop_all(&mut self) {
        let all: Vec<i32> = self.procs.keys().copied().collect();
        for o in all {
            if let Some(mut r) = self.procs.remove(&o) {
                let _ = r.child.kill();
                let _ = r.child.wait();
            }
        }
    }

    /// kill -9 one pod's broker (the kubelet restarts it next pass).
    fn kill9(&mut self, o: i32) -> bool {
        match self.procs.get_mut(&o) {
            Some(r) => {
                let _ = r.child.kill();
                self.note(format!("kill -9 {}", pod_name(o)));
                true
            }
            None => false,
        }
    }
}

/// Runs the stand-in on its own thread until `stop`; `kill` asks it to
/// kill -9 an ordinal.
struct Cluster {
    api: ApiDouble,
    ports: PortMap,
    endpoints: Arc<Mutex<Vec<u16>>>,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    /// Ordinals to kill -9 (and whether to wipe their volume).
    kill: Arc<Mutex<Vec<(i32, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    root: tempfile::TempDir,
}

impl Cluster {
    fn start(api: ApiDouble) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let ports: PortMap = Arc::new(
            (0..MAX_PODS)
                .map(|o| {
                    (
                        o,
                        PodPorts {
                            tcp: free_port(),
                            http: free_port(),
                            grpc: free_port(),
                        },
                    )
                })
                .collect(),
        );
        let endpoints = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let kill: Arc<Mutex<Vec<(i32, bool)>>> = Arc::new(Mutex::new(Vec::new()));
        let mut k = Kubelet {
            api: api.clone(),
            root: root.path().to_path_buf(),
            ports: ports.clone(),
            procs: BTreeMap::new(),
            crashed: BTreeMap::new(),
            terminating: BTreeSet::new(),
            ready: BTreeMap::new(),
            endpoints: endpoints.clone(),
            log: log.clone(),
            started: Instant::now(),
        };
        let (s, kl) = (stop.clone(), kill.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let kills: Vec<(i32, bool)> = std::mem::take(&mut *lock(&kl));
                for (o, wipe) in kills {
                    k.kill9(o);
                    if wipe {
                        // The volume comes back empty (a new disk).
                        let _ = std::fs::remove_dir_all(k.pvc_dir(o));
                        k.note(format!("wiped the volume of {}", pod_name(o)));
                    }
                }
                k.pass();
                std::thread::sleep(Duration::from_millis(200));
            }
            k.stop_all();
        });
        Cluster {
            api,
            ports,
            endpoints,
            log,
            stop,
            kill,
            thread: Some(thread),
            root,
        }
    }

    fn dump(&self) {
        eprintln!("---- kubelet ----\n{}", lock(&self.log).join("\n"));
        for o in 0..MAX_PODS {
            let p = self.root.path().join(format!("{}.log", pod_name(o)));
            if let Ok(text) = std::fs::read_to_string(&p) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!(
                    "---- {} (last 40 lines) ----\n{}",
                    pod_name(o),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
            if let Some(c) = self.api.get(CR.0, CR.1, NS, NAME) {
                eprintln!(
                    "---- status ----\n{}",
                    serde_json::to_string_pretty(&c["status"]).unwrap_or_default()
                );
            }
            eprintln!("---- events ----");
            for e in self.api.events(NS, NAME) {
                eprintln!("{}: {}", e["reason"], e["note"]);
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The client Service: each new connection goes to the next ready pod.
async fn service_proxy(endpoints: Arc<Mutex<Vec<u16>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let eps = lock(&endpoints).clone();
            if eps.is_empty() {
                continue;
            }
            let port = eps[next.fetch_add(1, Ordering::Relaxed) % eps.len()];
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    addr
}

// ---- the load ------------------------------------------------------------

#[derive(Default)]
struct Load {
    /// (publisher, seq) PUBACKed, with the step it was acknowledged in.
    acked: Mutex<Vec<(usize, u64, String)>>,
    received: Mutex<HashSet<(usize, u64)>>,
    /// Connections made (CONNACKs) per client, all clients.
    connacks: AtomicU64,
    step: Mutex<String>,
    stop: AtomicBool,
    /// Longest gap between two PUBACKs of one publisher.
    max_gap_ms: AtomicU64,
}

fn options(id: &str, proxy: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, proxy.ip().to_string(), proxy.port());
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_inflight(1);
    o
}

async fn subscriber(load: Arc<Load>, proxy: SocketAddr, ready: tokio::sync::oneshot::Sender<()>) {
    let (client, mut ev) = AsyncClient::new(options("sub-0", proxy), 100);
    let mut ready = Some(ready);
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(c))) => {
                load.connacks.fetch_add(1, Ordering::Relaxed);
                if !c.session_present {
                    let _ = client.subscribe("load/#", QoS::AtLeastOnce).await;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let publisher: usize = p
                    .topic
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX);
                let seq: u64 = std::str::from_utf8(&p.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                lock(&load.received).insert((publisher, seq));
            }
            Ok(_) => {}
            Err(_) => {
                if load.stop.load(Ordering::Relaxed) && ready.is_none() {
                    // Keep going: the test stops it by dropping the task.
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn publisher(load: Arc<Load>, proxy: SocketAddr, i: usize) {
    let (client, mut ev) = AsyncClient::new(options(&format!("pub-{i}"), proxy), 100);
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
    let l = load.clone();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    l.connacks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if ack_tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    let mut last = Instant::now();
    for seq in 0u64.. {
        if load.stop.load(Ordering::Relaxed) {
            return;
        }
        if client
            .publish(
                format!("load/{i}"),
                QoS::AtLeastOnce,
                false,
                seq.to_string(),
            )
            .await
            .is_err()
        {
            return;
        }
        // One in flight: the next PUBACK is this message's (rumqttc
        // re-sends it after a reconnect until it is acknowledged).
        if ack_rx.recv().await.is_none() {
            return;
        }
        let step = lock(&load.step).clone();
        lock(&load.acked).push((i, seq, step));
        let gap = last.elapsed().as_millis() as u64;
        load.max_gap_ms.fetch_max(gap, Ordering::Relaxed);
        last = Instant::now();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

// ---- the operator --------------------------------------------------------

/// The uids of the pods that exist now: a pod replaced keeps its name, not
/// its uid.
fn pod_uids(lab: &Lab) -> Vec<String> {
    lab.api
        .list("v1", "pods", NS)
        .iter()
        .map(|p| {
            p["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

struct Lab {
    api: ApiDouble,
    cluster: Cluster,
    admin: Arc<AdminMembership>,
    /// The client certificate for direct Admin calls (mutual TLS).
    tls: Option<ClientTls>,
    stop_operator: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Lab {
    async fn start(spec: Value) -> Lab {
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
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(reconcile::run(Arc::new(ctx), Some(NS.into()), async move {
            let _ = rx.await;
        }));
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

    fn status(&self) -> Value {
        self.api
            .get(CR.0, CR.1, NS, NAME)
            .map(|c| c["status"].clone())
            .unwrap_or(Value::Null)
    }

    fn patch_spec(&self, spec: Value) {
        self.api
            .patch(CR.0, CR.1, NS, NAME, json!({ "spec": spec }));
    }

    /// Waits until the status says `n` voters (pods 0..n), nothing in
    /// progress, `n` pods ready, and `n` pods exist, all on the current
    /// template.
    async fn converged(&self, n: i32, timeout: Duration) -> Result<Duration, String> {
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
            let hash = sts["spec"]["template"]["metadata"]["annotations"][TEMPLATE_HASH].clone();
            let pods = self.api.list("v1", "pods", NS);
            let all_current = pods.len() == n as usize
                && pods
                    .iter()
                    .all(|p| p["metadata"]["annotations"][TEMPLATE_HASH] == hash);
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
    fn target(&self, tls: Option<ClientTls>) -> Target {
        Target {
            names: Names {
                cluster: NAME.into(),
                namespace: NS.into(),
            },
            tls,
        }
    }

    /// The operator-issued CA and peer certificate, from their Secrets.
    fn issued_tls(&self) -> Option<ClientTls> {
        let text = |secret: &str, key: &str| {
            let s = self.api.get("v1", "secrets", NS, secret)?;
            String::from_utf8(b64(s["data"][key].as_str()?)).ok()
        };
        Some(ClientTls {
            ca_crt: text(&format!("{NAME}-ca"), "ca.crt")?,
            cert: text(&format!("{NAME}-tls"), "tls.crt")?,
            key: text(&format!("{NAME}-tls"), "tls.key")?,
        })
    }

    async fn raft_voters(&self) -> BTreeSet<u64> {
        let target = self.target(self.tls.clone());
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

    fn event_reasons(&self) -> Vec<String> {
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

struct Run {
    load: Arc<Load>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    proxy: SocketAddr,
}

async fn start_load(lab: &Lab, publishers: usize) -> Run {
    let proxy = service_proxy(lab.cluster.endpoints.clone()).await;
    let load = Arc::new(Load::default());
    *lock(&load.step) = "steady".into();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tasks = vec![tokio::spawn(subscriber(load.clone(), proxy, tx))];
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("the subscriber subscribes")
        .expect("subscribed");
    for i in 0..publishers {
        tasks.push(tokio::spawn(publisher(load.clone(), proxy, i)));
    }
    Run { load, tasks, proxy }
}

/// Stops publishing, waits for every acknowledged message to arrive, and
/// returns the ones that did not, per step.
async fn finish_load(run: Run) -> (usize, BTreeMap<String, (usize, usize)>) {
    run.load.stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = lock(&run.load.acked).clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = lock(&run.load.received).clone();
        let missing = acked
            .iter()
            .filter(|(p, s, _)| !got.contains(&(*p, *s)))
            .count();
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in &run.tasks {
        t.abort();
    }
    let got = lock(&run.load.received).clone();
    let mut per_step: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut lost = 0;
    for (p, s, step) in &acked {
        let e = per_step.entry(step.clone()).or_default();
        e.0 += 1;
        if !got.contains(&(*p, *s)) {
            e.1 += 1;
            lost += 1;
        }
    }
    (lost, per_step)
}

fn set_step(run: &Run, step: &str) -> u64 {
    *lock(&run.load.step) = step.to_string();
    run.load.connacks.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_3_5_3_and_roll_under_load_loses_nothing() {
    let lab = Lab::start(json!({
        "replicas": 3,
        "image": "ghcr.io/raftmq/raftmq:0.1.0",
        "storage": {"deleteClaimsOnScaleDown": true},
    }))
    .await;
    let t = lab
        .converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    println!("create 3: converged in {:.1}s", t.as_secs_f32());
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));

    let run = start_load(&lab, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut figures = Vec::new();
    let mut step = |name: &str, took: Duration, c0: u64, c1: u64| {
        figures.push(format!(
            "{name}: {:.1}s, {} reconnects",
            took.as_secs_f32(),
            c1 - c0
        ));
    };

    let c0 = set_step(&run, "3->5");
    lab.patch_spec(json!({"replicas": 5}));
    let took = lab
        .converged(5, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("scale 3->5: {e}"));
    let c1 = run.load.connacks.load(Ordering::Relaxed);
    step("scale 3->5", took, c0, c1);
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3, 4, 5]));
    // New clients arrive while there are five pods: the Service spreads
    // them over the new pods too, which the scale-down then retires.
    let mut run = run;
    for i in 2..5 {
        let proxy = run.proxy;
        run.tasks
            .push(tokio::spawn(publisher(run.load.clone(), proxy, i)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let c0 = set_step(&run, "5->3");
    lab.patch_spec(json!({"replicas": 3}));
    let took = lab
        .converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("scale 5->3: {e}"));
    let c1 = run.load.connacks.load(Ordering::Relaxed);
    step("scale 5->3", took, c0, c1);
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));
    for o in [3, 4] {
        let pvc = format!("data-{}", pod_name(o));
        assert!(
            lab.api
                .get("v1", "persistentvolumeclaims", NS, &pvc)
                .is_none(),
            "{pvc} deleted (deleteClaimsOnScaleDown)"
        );
    }

    let c0 = set_step(&run, "roll");
    let before = pod_uids(&lab);
    lab.patch_spec(json!({"image": "ghcr.io/raftmq/raftmq:0.1.1"}));
    // The new template first has to reach the StatefulSet.
    let t0 = Instant::now();
    while lab.status()["phase"] == "Running" && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = lab
        .converged(3, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("roll: {e}"));
    let c1 = run.load.connacks.load(Ordering::Relaxed);
    step("roll 3 pods", took, c0, c1);
    let after = pod_uids(&lab);
    assert!(
        before.iter().all(|u| !after.contains(u)),
        "every pod was replaced by the roll"
    );
    let sts = lab
        .api
        .get("apps/v1", "statefulsets", NS, NAME)
        .unwrap_or_default();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/raftmq/raftmq:0.1.1"
    );
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));

    let gap = run.load.max_gap_ms.load(Ordering::Relaxed);
    let (lost, per_step) = finish_load(run).await;
    for f in &figures {
        println!("{f}");
    }
    for (s, (acked, lost)) in &per_step {
        println!("step {s}: {acked} messages acknowledged, {lost} lost");
    }
    println!("longest wait for a PUBACK: {gap} ms");
    assert_eq!(lost, 0, "acknowledged messages lost: {per_step:?}");
    assert!(
        per_step.values().map(|(a, _)| a).sum::<usize>() > 100,
        "the load ran"
    );

    // The status and Events tell the story.
    let reasons = lab.event_reasons();
    println!("events: {reasons:?}");
    for want in [
        "Created",
        "LearnerAdded",
        "Promoted",
        "Drained",
        "MemberRemoved",
        "Scaled",
        "RollingPod",
    ] {
        assert!(
            reasons.iter().any(|r| r == want),
            "an Event {want}: {reasons:?}"
        );
    }
    // One Event per step and pod (the Recorder folds repeats per reason
    // and related pod), in the order they happened.
    let first = |r: &str| reasons.iter().position(|x| x == r);
    assert!(first("LearnerAdded") < first("Promoted"), "{reasons:?}");
    assert!(first("Drained") < first("MemberRemoved"), "{reasons:?}");
    assert!(first("MemberRemoved") < first("Scaled"), "{reasons:?}");
    assert_eq!(
        reasons.iter().filter(|r| *r == "RollingPod").count(),
        3,
        "one RollingPod per pod: {reasons:?}"
    );
    let st = lab.status();
    assert_eq!(st["members"], json!(["demo-0", "demo-1", "demo-2"]));
    assert!(st["leader"]
        .as_str()
        .is_some_and(|l| l.starts_with("demo-")));
    let cond = |t: &str| {
        st["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t).cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(cond("Ready")["status"], "True");
    assert_eq!(cond("Degraded")["status"], "False");
    assert_eq!(cond("Progressing")["status"], "False");
    let _ = std::io::stdout().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_scale_down_converges_without_losing_quorum() {
    let lab = Lab::start(json!({"replicas": 5})).await;
    lab.converged(5, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("create 5: {e}"));
    let run = start_load(&lab, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_step(&run, "5->3 with kill -9");
    let t = Instant::now();
    lab.patch_spec(json!({"replicas": 3}));
    // As soon as the first retiring pod is drained, kill -9 the Raft
    // leader (a staying voter): the operator's next calls meet an election
    // and a group one voter short while the container is restarting.
    let t0 = Instant::now();
    loop {
        let reasons = lab.event_reasons();
        if reasons.iter().any(|r| r == "Drained") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the scale-down starts: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = lab.status()["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let victim: i32 = leader
        .rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .expect("the status names the leader");
    lock(&lab.cluster.kill).push((victim, false));
    lab.converged(3, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("scale 5->3 with a kill -9: {e}"));
    println!(
        "scale 5->3 with kill -9 of the leader {leader}: {:.1}s",
        t.elapsed().as_secs_f32()
    );
    let log = lock(&lab.cluster.log).clone();
    for e in lab.api.events(NS, NAME) {
        println!("event {} {}: {}", e["eventTime"], e["reason"], e["note"]);
    }
    println!("{}", log.join("\n"));
    assert!(
        log.iter().any(|x| x.contains(&format!("kill -9 {leader}"))),
        "the leader was killed mid-scale-down: {log:?}"
    );
    assert!(
        log.iter().any(|x| x.contains(&format!("started {leader}"))
            && log.iter().position(|y| y.contains("kill -9"))
                < log
                    .iter()
                    .rposition(|y| y.contains(&format!("started {leader}")))),
        "and its container restarted"
    );
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));
    let gap = run.load.max_gap_ms.load(Ordering::Relaxed);
    let (lost, per_step) = finish_load(run).await;
    println!("per step: {per_step:?}; longest wait for a PUBACK: {gap} ms");
    assert_eq!(lost, 0, "acknowledged messages lost: {per_step:?}");
    // Quorum held throughout: publishing never stalled for an election
    // timeout's worth of retries.
    assert!(gap < 15_000, "publishing stalled for {gap} ms");
    assert!(lab
        .cluster
        .log
        .lock()
        .map(|l| l.iter().any(|x| x.contains("kill -9")))
        .unwrap_or(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_over_mutual_tls() {
    // Operator-issued certificates; the brokers dial each other at
    // 127.0.0.1 here, so the certificate names it too.
    let mut lab = Lab::start(json!({
        "replicas": 3,
        "tls": {"mode": "Operator", "extraDnsNames": ["127.0.0.1"]},
    }))
    .await;
    let took = lab
        .converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("create 3 with mutual TLS: {e}"));
    println!("create 3 (mTLS): {:.1}s", took.as_secs_f32());
    lab.tls = lab.issued_tls();
    assert!(
        lab.tls.is_some(),
        "the operator issued the CA and peer certificate"
    );
    let config = lab
        .api
        .get("v1", "configmaps", NS, &format!("{NAME}-config"))
        .unwrap_or_default();
    assert!(
        config["data"][raftmq_operator::render::CONFIG_FILE]
            .as_str()
            .is_some_and(|t| t.contains("cafile")),
        "the brokers require client certificates on the cluster port"
    );
    let events = lab.event_reasons();
    assert!(
        !events.iter().any(|r| r == "CertificateRenewed"),
        "the certificate is issued once (its IP SAN counts): {events:?}"
    );
    // Without a client certificate the Admin service refuses.
    assert!(lab.admin.status(&lab.target(None), 0).await.is_err());
    assert!(lab
        .admin
        .status(&lab.target(lab.tls.clone()), 0)
        .await
        .is_ok());

    let t = Instant::now();
    lab.patch_spec(json!({"replicas": 5}));
    lab.converged(5, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("scale 3->5 (mTLS): {e}"));
    println!("scale 3->5 (mTLS): {:.1}s", t.elapsed().as_secs_f32());
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3, 4, 5]));
    let t = Instant::now();
    lab.patch_spec(json!({"replicas": 3}));
    lab.converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("scale 5->3 (mTLS): {e}"));
    println!("scale 5->3 (mTLS): {:.1}s", t.elapsed().as_secs_f32());
    assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_back_with_an_empty_volume_is_re_added_as_a_new_member() {
    let lab = Lab::start(json!({"replicas": 3})).await;
    lab.converged(3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("create 3: {e}"));
    // The broker with a fresh store waits for a Join (Status.initialized
    // false) until the operator has removed and re-added it. (Pod 0, node
    // 1, is not wiped here: it makes a new cluster of an empty store, and
    // the old leader's AppendEntries then overwrite it before the operator
    // can tell; see the README's limits.)
    for victim in [2, 1] {
        let name = pod_name(victim);
        let t = Instant::now();
        lock(&lab.cluster.kill).push((victim, true));
        let reset = |lab: &Lab| {
            lab.api.events(NS, NAME).iter().any(|e| {
                e["reason"] == "MemberReset"
                    && e["note"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&format!("{name} came back")))
            })
        };
        while !reset(&lab) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{name} is reset: {:?}",
                lab.event_reasons()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lab.converged(3, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{name} re-added: {e}"));
        println!(
            "{name} back with an empty volume: re-added in {:.1}s",
            t.elapsed().as_secs_f32()
        );
        assert_eq!(lab.raft_voters().await, BTreeSet::from([1, 2, 3]));
    }
}
