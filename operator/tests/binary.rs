//! The real `raftmq-operator run` binary against the API double served over
//! HTTP: it takes the Lease, reconciles a cluster, serves /metrics and
//! /healthz, and on SIGTERM stops cleanly and hands the Lease back.

mod api_double;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_double::{serve_http, ApiDouble};
use serde_json::json;

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reconciles_and_shuts_down_cleanly() {
    let api = ApiDouble::new();
    let addr = serve_http(api.clone()).await;
    let dir = std::env::temp_dir().join(format!("raftmq-op-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: d\n  cluster: {{server: \"http://{addr}\"}}\ncontexts:\n- name: d\n  context: {{cluster: d, user: u, namespace: mqtt}}\ncurrent-context: d\nusers:\n- name: u\n  user: {{}}\n"
    )).expect("kubeconfig");
    api.create("raftmq.io/v1alpha1", "mqttclusters", "mqtt", json!({
        "apiVersion": "raftmq.io/v1alpha1", "kind": "MqttCluster", "metadata": {"name": "demo"}, "spec": {},
    }));

    let metrics = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftmq-operator"))
        .args([
            "run",
            "--namespace",
            "mqtt",
            "--metrics-addr",
            &metrics,
            "--lease-namespace",
            "ops",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "operator-0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ok = false;
    while Instant::now() < deadline {
        if api.get("apps/v1", "statefulsets", "mqtt", "demo").is_some() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ok {
        let _ = child.kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!("no StatefulSet within 30s; operator log:\n{err}");
    }
    let lease = api
        .get("coordination.k8s.io/v1", "leases", "ops", "raftmq-operator")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "operator-0");

    // The StatefulSet is applied mid-reconcile; the reconcile is counted
    // when it ends (after the membership step, which finds no pods).
    let m = metrics.clone();
    let (health, body) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body = http_get(&m, "/metrics").unwrap_or_default();
            if body.contains("raftmq_operator_reconciles_total") || Instant::now() > deadline {
                return (http_get(&m, "/healthz"), body);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("http");
    assert!(
        health.as_deref().unwrap_or_default().contains("200 OK"),
        "{health:?}"
    );
    assert!(body.contains("raftmq_operator_reconciles_total"), "{body}");
    assert!(body.contains("raftmq_operator_leader 1"), "{body}");

    // SIGTERM: graceful stop, Lease handed back.
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut err);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "operator did not stop cleanly: {status:?}\n{err}"
    );
    let lease = api
        .get("coordination.k8s.io/v1", "leases", "ops", "raftmq-operator")
        .expect("lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    assert!(
        err.contains("\"stopped\"") || err.contains("stopped"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
