//! The kubelet, stood in for with real processes: the API double's
//! StatefulSet controller decides which pods exist and at which revision
//! (partition, current revision below it, claims per the retention
//! policy); this starts a real `raftmq serve` for every pod object, from
//! that pod's own spec (its ConfigMaps, env and Secrets written to files
//! and, while it runs, updated in place as the kubelet does: volumes.rs;
//! listen addresses moved to loopback ports, one data directory per claim),
//! stops it (SIGTERM, then SIGKILL after the grace period) when its pod
//! object goes or is replaced, restarts a container that died after a
//! back-off, and reports readiness from `/readyz` into the pod's status. A
//! "Service" proxy hands each new client connection to a ready pod.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use raftmq_operator::render::{CLUSTER_PORT, HTTP_PORT};
use serde_json::{json, Value};

use super::volumes::{Mounts, Projected};
use super::{lock, pod_name, PortMap, MAX_PODS, MQTT_PORT, NAME, NS};
use crate::api_double::ApiDouble;
use crate::{broker_bin, free_port};

#[derive(Clone, Copy, Debug)]
pub struct PodPorts {
    pub tcp: u16,
    pub http: u16,
    pub grpc: u16,
}

struct Running {
    child: Child,
    /// The pod object it runs for (a replaced pod has a new uid).
    uid: String,
    /// The pod it was started from (a restart after a crash uses it again,
    /// as the kubelet would).
    pod: Value,
    mounts: Mounts,
    /// Its ConfigMap and Secret volumes, kept up to date while it runs.
    volumes: Vec<Projected>,
}

/// How to start a pod's broker.
struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Mounts,
    volumes: Vec<Projected>,
}

struct Kubelet {
    api: ApiDouble,
    root: PathBuf,
    ports: PortMap,
    procs: BTreeMap<i32, Running>,
    /// Containers that died: restarted at the instant given.
    crashed: BTreeMap<i32, (Instant, String, Value)>,
    ready: BTreeMap<i32, bool>,
    /// MQTT ports of ready pods: the client Service's endpoints.
    endpoints: Arc<Mutex<Vec<u16>>>,
    /// What it did, for a failing test's output.
    log: Arc<Mutex<Vec<String>>>,
    /// The process id of each running container, by ordinal.
    pids: Arc<Mutex<BTreeMap<i32, u32>>>,
    started: Instant,
}

pub fn b64(s: &str) -> Vec<u8> {
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

fn uid_of(p: &Value) -> String {
    p["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
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

    /// Writes the pod's volumes to files: its mounts, and the ConfigMap and
    /// Secret volumes that [`Kubelet::refresh_volumes`] keeps up to date.
    fn materialise(&self, o: i32, pod: &Value) -> (Mounts, Vec<Projected>) {
        let dir = self.pod_dir(o);
        let _ = std::fs::remove_dir_all(&dir);
        let spec = &pod["spec"];
        let volumes: BTreeMap<String, Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?.to_string(), v.clone())))
            .collect();
        let mut mounts = Vec::new();
        let mut projected = Vec::new();
        for m in spec["containers"][0]["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(path)) = (m["name"].as_str(), m["mountPath"].as_str()) else {
                continue;
            };
            let d = if name == "data" {
                self.pvc_dir(o)
            } else {
                dir.join(name)
            };
            std::fs::create_dir_all(&d).expect("volume dir");
            if let Some(v) = volumes.get(name) {
                projected.extend(Projected::new(v, d.clone()));
            }
            mounts.push((path.to_string(), d));
        }
        // Longest first: /etc/raftmq/config before /etc/raftmq.
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mounts = Mounts(mounts);
        for p in &mut projected {
            p.sync(&self.api, &mounts);
        }
        (mounts, projected)
    }

    /// Running pods' ConfigMap and Secret volumes follow their objects,
    /// as the kubelet's periodic sync does.
    fn refresh_volumes(&mut self) {
        let mut updated = Vec::new();
        for (o, r) in &mut self.procs {
            for p in &mut r.volumes {
                if p.sync(&self.api, &r.mounts) {
                    updated.push(format!(
                        "updated volume {} of {} in place",
                        p.name,
                        pod_name(*o)
                    ));
                }
            }
        }
        for u in updated {
            self.note(u);
        }
    }

    /// The broker's arguments and environment for pod `o`, its config
    /// file rewritten for loopback ports, and its volumes.
    fn command(&self, o: i32, pod: &Value) -> Launch {
        let ports = self.ports[&o];
        let (mounts, volumes) = self.materialise(o, pod);
        let container = &pod["spec"]["containers"][0];
        let mut args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(|a| mounts.local(a)))
            .collect();
        if let Some(i) = args.iter().position(|a| a == "--config") {
            if let Some(path) = args.get(i + 1).cloned() {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                // Mount paths in it are local already (volumes.rs).
                let text = text
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
        env.push(("HOSTNAME".into(), name));
        Launch {
            args,
            env,
            mounts,
            volumes,
        }
    }

    fn spawn(&mut self, o: i32, pod: Value) {
        let Launch {
            args,
            env,
            mounts,
            volumes,
        } = self.command(o, &pod);
        let name = pod_name(o);
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
        let ports = self.ports[&o];
        self.note(format!(
            "started {name} (pid {}, tcp {}, grpc {})",
            child.id(),
            ports.tcp,
            ports.grpc
        ));
        self.ready.insert(o, false);
        self.procs.insert(
            o,
            Running {
                child,
                uid: uid_of(&pod),
                pod,
                mounts,
                volumes,
            },
        );
    }

    /// SIGTERM (unless sent already), then SIGKILL after the grace period.
    fn stop(&mut self, o: i32, signalled: bool) {
        self.crashed.remove(&o);
        let Some(mut r) = self.procs.remove(&o) else {
            return;
        };
        let t = Instant::now();
        // Once: a second SIGTERM makes the broker skip its hand-over.
        if !signalled {
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

    /// Containers that died restart after a back-off (the kubelet's first
    /// is 10 s; 3 s here), in the same pod.
    fn restart_crashed(&mut self) {
        let died: Vec<i32> = self
            .procs
            .iter_mut()
            .filter_map(|(o, r)| r.child.try_wait().ok().flatten().map(|_| *o))
            .collect();
        for o in died {
            if let Some(r) = self.procs.remove(&o) {
                self.note(format!(
                    "{} died; restarting its container in 3s",
                    pod_name(o)
                ));
                self.ready.insert(o, false);
                self.publish_endpoints();
                self.crashed
                    .insert(o, (Instant::now() + Duration::from_secs(3), r.uid, r.pod));
            }
        }
        let due: Vec<i32> = self
            .crashed
            .iter()
            .filter(|(_, (at, _, _))| *at <= Instant::now())
            .map(|(o, _)| *o)
            .collect();
        for o in due {
            if let Some((_, _, pod)) = self.crashed.remove(&o) {
                self.spawn(o, pod);
            }
        }
    }

    fn pass(&mut self) {
        self.restart_crashed();
        // The StatefulSet controller's turn.
        self.api.run_statefulsets();
        let pods = self.pods();
        // Containers whose pod went or was replaced stop (all SIGTERMed
        // first, as pods deleted together stop together).
        let gone: Vec<i32> = self
            .procs
            .iter()
            .filter(|(o, r)| pods.get(o).is_none_or(|p| uid_of(p) != r.uid))
            .map(|(o, _)| *o)
            .collect();
        for o in &gone {
            if let Some(r) = self.procs.get(o) {
                signal(&r.child, libc::SIGTERM);
            }
        }
        for o in gone {
            self.stop(o, true);
            self.note(format!("{} stopped: its pod was deleted", pod_name(o)));
        }
        let crashed: Vec<i32> = self.crashed.keys().copied().collect();
        for o in crashed {
            let same = pods
                .get(&o)
                .is_some_and(|p| self.crashed.get(&o).is_some_and(|c| c.1 == uid_of(p)));
            if !same {
                self.crashed.remove(&o);
            }
        }
        // A claim deleted (retention policy Delete) takes its data along.
        for o in 0..MAX_PODS {
            let claim = format!("data-{}", pod_name(o));
            if !pods.contains_key(&o)
                && self.pvc_dir(o).exists()
                && self
                    .api
                    .get("v1", "persistentvolumeclaims", NS, &claim)
                    .is_none()
            {
                let _ = std::fs::remove_dir_all(self.pvc_dir(o));
                self.note(format!("deleted the data of {claim}"));
            }
        }
        // New pods start.
        for (o, p) in &pods {
            if !self.procs.contains_key(o) && !self.crashed.contains_key(o) {
                self.spawn(*o, p.clone());
            }
        }
        self.refresh_volumes();
        self.report_readiness(&pods);
        *lock(&self.pids) = self.procs.iter().map(|(o, r)| (*o, r.child.id())).collect();
    }

    /// Readiness from /readyz and the container's state (running, backing
    /// off after a crash, being created), into each pod's status.
    fn report_readiness(&mut self, pods: &BTreeMap<i32, Value>) {
        let mut changed = false;
        for (&o, p) in pods {
            let running = self.procs.contains_key(&o);
            let ok = running && self.probe(o);
            let state = if running {
                json!({"running": {}})
            } else if self.crashed.contains_key(&o) {
                json!({"waiting": {"reason": "CrashLoopBackOff",
                                   "message": "back-off 3s restarting failed container=broker"}})
            } else {
                json!({"waiting": {"reason": "ContainerCreating"}})
            };
            let want = json!({
                "phase": "Running",
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Ready", "status": if ok {"True"} else {"False"}}],
                "containerStatuses": [{"name": "broker", "ready": ok, "restartCount": 0, "state": state}],
            });
            if self.ready.get(&o).copied() != Some(ok) {
                changed = true;
                self.ready.insert(o, ok);
                self.note(format!("{} ready={ok}", pod_name(o)));
            }
            if p["status"] != want {
                self.api.set_status("v1", "pods", NS, &pod_name(o), want);
            }
        }
        if changed {
            self.publish_endpoints();
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

    /// kill -9 one pod's broker (its container restarts after a back-off).
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

/// Runs the stand-in on its own thread until dropped; `kill` asks it to
/// kill -9 an ordinal (and whether to wipe its volume).
pub struct Cluster {
    pub api: ApiDouble,
    pub ports: PortMap,
    pub endpoints: Arc<Mutex<Vec<u16>>>,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The process id of each running broker, by ordinal (a container
    /// restarted or a pod replaced has a new one).
    pub pids: Arc<Mutex<BTreeMap<i32, u32>>>,
    stop: Arc<AtomicBool>,
    pub kill: Arc<Mutex<Vec<(i32, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub root: tempfile::TempDir,
}

impl Cluster {
    pub fn start(api: ApiDouble) -> Cluster {
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
        let pids = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let kill: Arc<Mutex<Vec<(i32, bool)>>> = Arc::new(Mutex::new(Vec::new()));
        let mut k = Kubelet {
            api: api.clone(),
            root: root.path().to_path_buf(),
            ports: ports.clone(),
            procs: BTreeMap::new(),
            crashed: BTreeMap::new(),
            ready: BTreeMap::new(),
            endpoints: endpoints.clone(),
            log: log.clone(),
            pids: pids.clone(),
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
            pids,
            stop,
            kill,
            thread: Some(thread),
            root,
        }
    }

    /// The lines of pod `o`'s log so far.
    pub fn pod_log(&self, o: i32) -> String {
        std::fs::read_to_string(self.root.path().join(format!("{}.log", pod_name(o))))
            .unwrap_or_default()
    }

    fn dump(&self) {
        eprintln!("---- kubelet ----\n{}", lock(&self.log).join("\n"));
        for o in 0..MAX_PODS {
            let text = self.pod_log(o);
            if !text.is_empty() {
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
            if let Some(c) = self.api.get("raftmq.io/v1alpha1", "mqttclusters", NS, NAME) {
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
pub async fn service_proxy(endpoints: Arc<Mutex<Vec<u16>>>) -> SocketAddr {
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
