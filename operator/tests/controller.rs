//! The controller against the stateful API double: create a cluster,
//! change its spec, break a Secret reference, fix it, delete the cluster;
//! assert the objects, the status and the Events at each step.

mod api_double;
mod common;
mod harness;

use std::time::Duration;

use api_double::summary;
use base64::Engine;
use harness::{Harness, CR, NS};
use raftmq_operator::render::secrets::verify_password;
use serde_json::{json, Value};

fn passwd_hash<'a>(passwd: &'a str, user: &str) -> &'a str {
    passwd
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{user}:")))
        .unwrap_or_default()
}

/// What the StatefulSet controller reports once its 3 pods run revision
/// `r1` and are ready.
fn statefulset_settled(h: &Harness, name: &str) {
    let gen =
        h.get("apps/v1", "statefulsets", name).expect("sts")["metadata"]["generation"].clone();
    h.api.set_status(
        "apps/v1",
        "statefulsets",
        NS,
        name,
        json!({
            "observedGeneration": gen, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
            "currentRevision": "r1", "updateRevision": "r1",
        }),
    );
}

/// Pod `ordinal` of the StatefulSet, on revision `r1`, running and ready
/// (owned by the StatefulSet, so it goes with it). Its claim is left out:
/// one the StatefulSet controller makes stays after the cluster is deleted
/// (`whenDeleted: Retain`), which is not what this test is about.
fn pod_runs(h: &Harness, name: &str, ordinal: i32) {
    let sts = h.get("apps/v1", "statefulsets", name).expect("sts");
    h.api.create(
        "v1",
        "pods",
        NS,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{name}-{ordinal}"),
                            "labels": {"app.kubernetes.io/name": "raftmq", "app.kubernetes.io/instance": name,
                                       "controller-revision-hash": "r1"},
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                 "name": name, "uid": sts["metadata"]["uid"], "controller": true}]},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                          "containerStatuses": [{"name": "broker", "ready": true, "state": {"running": {}}}]}}),
    );
}

#[tokio::test]
async fn cluster_lifecycle() {
    let h = Harness::new();
    h.apply_example("tls-users-acl.yaml");
    let name = "secure";
    let uid = h.cluster(name).metadata.uid.clone().expect("uid");

    // --- create ---------------------------------------------------------
    h.reconcile(name).await;
    let objs = summary(&h.api.keys());
    assert!(
        objs.contains(&format!("configmaps/{}", h.config_map(name))),
        "{objs:?}"
    );
    for want in [
        "configmaps/secure-acl",
        "secrets/secure-users",
        "secrets/secure-ca",
        "secrets/secure-tls",
        "services/secure",
        "services/secure-headless",
        "statefulsets/secure",
        "poddisruptionbudgets/secure",
        "networkpolicies/secure",
    ] {
        assert!(objs.contains(want), "{want} missing from {objs:?}");
    }
    for k in h.api.keys() {
        if k.namespace == NS
            && !matches!(k.resource.as_str(), "mqttclusters" | "events")
            && !k.name.ends_with("-password")
        {
            let o = h.api.get(&k.gv, &k.resource, NS, &k.name).expect("object");
            assert_eq!(
                o["metadata"]["ownerReferences"][0]["uid"],
                uid.as_str(),
                "{k:?} is owned by the cluster"
            );
        }
    }
    let passwd = h.secret_text("secure-users", "passwd");
    assert!(
        verify_password(passwd_hash(&passwd, "gateway"), "change-me-gateway"),
        "{passwd}"
    );
    assert!(
        verify_password(passwd_hash(&passwd, "backend"), "change-me-backend"),
        "{passwd}"
    );
    assert!(h
        .secret_text("secure-tls", "tls.crt")
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let sts = h.get("apps/v1", "statefulsets", name).expect("sts");
    assert_eq!(sts["spec"]["replicas"], 3);

    let st = h.get(CR.0, CR.1, name).expect("cr")["status"].clone();
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(h.condition(name, "Ready")["status"], "False");
    assert_eq!(h.condition(name, "Progressing")["status"], "True");
    assert_eq!(h.condition(name, "Degraded")["status"], "False");
    assert_eq!(st["endpoints"][0]["url"], "mqtts://secure.mqtt.svc:8883");
    assert!(st["certificateNotAfter"].is_string());
    let reasons = h.event_reasons(name);
    for want in [
        "CAIssued",
        "CertificateIssued",
        "Created",
        "ServiceMonitorUnavailable",
    ] {
        assert!(
            reasons.iter().any(|r| r == want),
            "{want} not in {reasons:?}"
        );
    }
    // No ServiceMonitor API: none created, a warning said so.
    assert!(!objs.iter().any(|o| o.starts_with("servicemonitors/")));

    // --- pods come up ---------------------------------------------------
    statefulset_settled(&h, name);
    for o in 0..3 {
        pod_runs(&h, name, o);
    }
    h.group_formed(name);
    h.reconcile(name).await;
    // Every pod on the current template: the operator raised the rollout
    // partition, which the StatefulSet controller sees.
    statefulset_settled(&h, name);
    h.reconcile(name).await;
    assert_eq!(
        h.condition(name, "Ready")["status"],
        "True",
        "{}",
        h.condition(name, "Ready")
    );
    assert_eq!(h.condition(name, "Progressing")["status"], "False");
    assert_eq!(
        h.get(CR.0, CR.1, name).expect("cr")["status"]["readyReplicas"],
        3
    );

    // --- a reconcile with nothing to do changes nothing -----------------
    let events_before = h.event_reasons(name).len();
    let config = h.config_map(name);
    let rvs: Vec<String> = [
        ("v1", "secrets", "secure-users"),
        ("v1", "secrets", "secure-tls"),
        ("apps/v1", "statefulsets", name),
        ("v1", "configmaps", config.as_str()),
        ("v1", "configmaps", "secure-acl"),
    ]
    .iter()
    .map(|(g, r, n)| h.rv(g, r, n))
    .collect();
    h.reconcile(name).await;
    let rvs_after: Vec<String> = [
        ("v1", "secrets", "secure-users"),
        ("v1", "secrets", "secure-tls"),
        ("apps/v1", "statefulsets", name),
        ("v1", "configmaps", config.as_str()),
        ("v1", "configmaps", "secure-acl"),
    ]
    .iter()
    .map(|(g, r, n)| h.rv(g, r, n))
    .collect();
    assert_eq!(rvs, rvs_after, "an idle reconcile rewrote objects");
    assert_eq!(
        h.event_reasons(name).len(),
        events_before,
        "{:?}",
        h.event_reasons(name)
    );

    // --- ACL change: ConfigMap updated, pods not rolled ------------------
    let sum = h.checksum(name);
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        name,
        json!({"spec": {"acl": [
            {"user": "backend", "access": "read", "topic": "sensors/#"},
            {"user": "gateway", "access": "write", "topic": "sensors/+/data"},
        ]}}),
    );
    h.reconcile(name).await;
    let acl = h.get("v1", "configmaps", "secure-acl").expect("cm")["data"]["acl"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(acl.contains("topic write sensors/+/data"), "{acl}");
    assert_eq!(h.checksum(name), sum, "an ACL change must not roll pods");
    assert_eq!(
        h.get(CR.0, CR.1, name).expect("cr")["status"]["observedGeneration"],
        2
    );

    // --- password change: users Secret updated, pods not rolled ----------
    let old_passwd = h.secret_text("secure-users", "passwd");
    h.api.patch(
        "v1",
        "secrets",
        NS,
        "backend-password",
        json!({"data": {"password": base64::engine::general_purpose::STANDARD.encode("rotated")}}),
    );
    h.reconcile(name).await;
    let passwd = h.secret_text("secure-users", "passwd");
    assert!(verify_password(passwd_hash(&passwd, "backend"), "rotated"));
    assert_eq!(
        passwd_hash(&passwd, "gateway"),
        passwd_hash(&old_passwd, "gateway"),
        "an unchanged user keeps its hash"
    );
    assert_eq!(
        h.checksum(name),
        sum,
        "a password change must not roll pods"
    );
    assert!(h.event_reasons(name).iter().any(|r| r == "UsersUpdated"));

    // --- config change: pods roll -----------------------------------------
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        name,
        json!({"spec": {"config": {"mqtt": {"max_queued_messages": 5}}}}),
    );
    h.reconcile(name).await;
    assert_ne!(h.checksum(name), sum, "a broker config change rolls pods");
    assert!(h.event_reasons(name).iter().any(|r| r == "ConfigChanged"));

    // --- scale ---------------------------------------------------------------
    h.api
        .patch(CR.0, CR.1, NS, name, json!({"spec": {"replicas": 5}}));
    h.reconcile(name).await;
    assert_eq!(
        h.get("apps/v1", "statefulsets", name).expect("sts")["spec"]["replicas"],
        5
    );
    assert!(h.event_reasons(name).iter().any(|r| r == "Scaled"));
    assert_eq!(
        h.condition(name, "Ready")["status"],
        "False",
        "two new pods are not ready yet"
    );

    // --- break a Secret reference -------------------------------------------
    assert!(h.api.delete("v1", "secrets", NS, "backend-password"));
    let sts_rv = h.rv("apps/v1", "statefulsets", name);
    let users_rv = h.rv("v1", "secrets", "secure-users");
    h.reconcile(name).await;
    let degraded = h.condition(name, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SecretNotFound");
    let msg = degraded["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("backend-password") && msg.contains("backend"),
        "{msg}"
    );
    assert_eq!(
        h.rv("apps/v1", "statefulsets", name),
        sts_rv,
        "a broken spec leaves the running cluster alone"
    );
    assert_eq!(h.rv("v1", "secrets", "secure-users"), users_rv);
    let warnings: Vec<Value> = h
        .api
        .events(NS, name)
        .into_iter()
        .filter(|e| e["type"] == "Warning" && e["reason"] == "SecretNotFound")
        .collect();
    assert_eq!(warnings.len(), 1, "one Warning Event");
    assert!(warnings[0]["note"]
        .as_str()
        .unwrap_or_default()
        .contains("backend-password"));
    // Again: no second Event for the same problem.
    h.reconcile(name).await;
    let n = h
        .api
        .events(NS, name)
        .into_iter()
        .filter(|e| e["reason"] == "SecretNotFound")
        .count();
    assert_eq!(n, 1);

    // --- and an invalid ACL rule on top ---------------------------------------
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        name,
        json!({"spec": {"acl": [{"user": "backend", "access": "read", "topic": "a/#/b"}]}}),
    );
    h.reconcile(name).await;
    let msg = h.condition(name, "Degraded")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("acl[0]") && msg.contains("'#'"), "{msg}");
    assert!(h.event_reasons(name).iter().any(|r| r == "InvalidAclRule"));

    // --- fix both ---------------------------------------------------------------
    h.api.create("v1", "secrets", NS, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "backend-password"}, "stringData": {"password": "back"}}));
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        name,
        json!({"spec": {"acl": [{"user": "backend", "access": "read", "topic": "a/+/b"}]}}),
    );
    h.reconcile(name).await;
    assert_eq!(
        h.condition(name, "Degraded")["status"],
        "False",
        "{}",
        h.condition(name, "Degraded")
    );
    assert!(verify_password(
        passwd_hash(&h.secret_text("secure-users", "passwd"), "backend"),
        "back"
    ));

    // --- certificate renewal: in place, no roll -------------------------------------
    let crt = h.secret_text("secure-tls", "tls.crt");
    let ca = h.secret_text("secure-ca", "ca.crt");
    let sum = h.checksum(name);
    *h.clock.lock().expect("clock") += time::Duration::days(61);
    h.reconcile(name).await;
    assert_ne!(
        h.secret_text("secure-tls", "tls.crt"),
        crt,
        "renewed with a third of 90 days left"
    );
    assert_eq!(h.secret_text("secure-ca", "ca.crt"), ca, "the CA stays");
    assert_eq!(h.checksum(name), sum, "renewal does not roll pods");
    assert!(h
        .event_reasons(name)
        .iter()
        .any(|r| r == "CertificateRenewed"));

    // --- turn TLS and the NetworkPolicy off: their objects go ---------------
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        name,
        json!({"spec": {
            "tls": null,
            "listeners": {"tcp": {"enabled": true}, "tls": null, "wss": null},
            "networkPolicy": {"enabled": false},
        }}),
    );
    h.reconcile(name).await;
    let objs = summary(&h.api.keys());
    assert!(
        !objs.contains("secrets/secure-ca") && !objs.contains("secrets/secure-tls"),
        "{objs:?}"
    );
    assert!(!objs.contains("networkpolicies/secure"), "{objs:?}");
    let toml = h.config_toml("secure");
    assert!(!toml.contains("tls.crt"), "{toml}");

    // --- the operator's metrics counted all of it ---------------------------
    let metrics = h.ctx.metrics.render();
    for want in [
        "raftmq_operator_reconciles_total{outcome=\"ok\"}",
        "raftmq_operator_reconciles_total{outcome=\"degraded\"}",
        "raftmq_operator_reconcile_duration_seconds_bucket",
        "raftmq_operator_certificates_issued_total{kind=\"server\"} 2",
    ] {
        assert!(metrics.contains(want), "{want} not in\n{metrics}");
    }

    // --- delete: owner references take everything with it --------------------
    assert!(h.api.delete(CR.0, CR.1, NS, name));
    let left = summary(&h.api.keys());
    let owned_left: Vec<&String> = left
        .iter()
        .filter(|k| k.contains("secure") && !k.starts_with("events/"))
        .collect();
    assert!(owned_left.is_empty(), "left behind: {owned_left:?}");
    assert!(
        left.contains("secrets/sensor-gateway-password"),
        "user Secrets are the user's"
    );
}

#[tokio::test]
async fn optional_apis_are_used_when_installed() {
    let h = Harness::new();
    h.api.serve_api(
        "monitoring.coreos.com/v1",
        "servicemonitors",
        "ServiceMonitor",
    );
    h.api
        .serve_api("cert-manager.io/v1", "certificates", "Certificate");
    h.apply_example("tls-users-acl.yaml");
    h.reconcile("secure").await;
    let sm = h
        .get("monitoring.coreos.com/v1", "servicemonitors", "secure")
        .expect("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");

    h.api.create(
        CR.0,
        CR.1,
        NS,
        common::example_docs("cert-manager.yaml")
            .into_iter()
            .find(|d| d["kind"] == "MqttCluster")
            .expect("cr"),
    );
    h.reconcile("managed").await;
    let cert = h
        .get("cert-manager.io/v1", "certificates", "managed")
        .expect("Certificate");
    assert_eq!(cert["spec"]["secretName"], "managed-tls");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "raftmq-ca");
    let dns: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(dns.contains(&"*.managed-headless.mqtt.svc"), "{dns:?}");
    assert!(
        h.get("v1", "secrets", "managed-ca").is_none(),
        "cert-manager mode issues no operator CA"
    );
    assert_eq!(h.condition("managed", "Degraded")["status"], "False");

    // The ServiceMonitor goes when it is switched off.
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        "secure",
        json!({"spec": {"metrics": {"serviceMonitor": {"enabled": false}}}}),
    );
    h.reconcile("secure").await;
    assert!(h
        .get("monitoring.coreos.com/v1", "servicemonitors", "secure")
        .is_none());
}

#[tokio::test]
async fn cert_manager_mode_without_cert_manager_is_degraded() {
    let h = Harness::new();
    h.api.create(
        CR.0,
        CR.1,
        NS,
        common::example_docs("cert-manager.yaml")
            .into_iter()
            .find(|d| d["kind"] == "MqttCluster")
            .expect("cr"),
    );
    h.reconcile("managed").await;
    let d = h.condition("managed", "Degraded");
    assert_eq!(d["status"], "True");
    assert_eq!(d["reason"], "CertManagerMissing");
    assert!(h.get("apps/v1", "statefulsets", "managed").is_none());
}

#[tokio::test]
async fn minimal_cluster_and_even_replicas_warning() {
    let h = Harness::new();
    h.apply_example("minimal.yaml");
    h.reconcile("demo").await;
    let toml = h.config_toml("demo");
    assert!(toml.contains("bind = \"0.0.0.0:1883\""), "{toml}");
    assert!(!toml.contains("password_file"));
    assert!(h.get("v1", "secrets", "demo-users").is_none());
    h.api
        .patch(CR.0, CR.1, NS, "demo", json!({"spec": {"replicas": 4}}));
    h.reconcile("demo").await;
    let events = h.api.events(NS, "demo");
    let even: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "EvenReplicas")
        .collect();
    assert_eq!(even.len(), 1);
    assert_eq!(even[0]["type"], "Warning");
    assert_eq!(
        h.condition("demo", "Degraded")["status"],
        "False",
        "a warning is not degradation"
    );
    assert!(h.condition("demo", "Degraded")["message"]
        .as_str()
        .unwrap_or_default()
        .contains("odd"));
}

/// The real kube-runtime Controller (watches, owned-object triggers,
/// Secret mapping) against the double.
#[tokio::test]
async fn controller_reacts_to_watch_events() {
    let h = Harness::new();
    h.apply_example("tls-users-acl.yaml");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let ctx = h.ctx.clone();
    let task = tokio::spawn(raftmq_operator::controller::run(
        ctx,
        Some(NS.into()),
        async move {
            let _ = stop_rx.changed().await;
        },
    ));
    let wait_for = |what: &'static str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}");
    };
    let api = h.api.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the StatefulSet", &|| {
            api.get("apps/v1", "statefulsets", NS, "secure").is_some()
        });
        // A user edits the spec; the watch triggers a reconcile.
        api.patch(CR.0, CR.1, NS, "secure", json!({"spec": {"replicas": 5}}));
        wait_for("the scale-up", &|| {
            api.get("apps/v1", "statefulsets", NS, "secure")
                .is_some_and(|s| s["spec"]["replicas"] == 5)
        });
        // A referenced Secret changes; the Secret watch maps it back to the cluster.
        let before =
            api.get("v1", "secrets", NS, "secure-users").expect("users")["data"]["passwd"].clone();
        api.patch(
            "v1",
            "secrets",
            NS,
            "sensor-gateway-password",
            json!({"stringData": {"password": "new-one"}}),
        );
        wait_for("the password file update", &|| {
            api.get("v1", "secrets", NS, "secure-users")
                .is_some_and(|s| s["data"]["passwd"] != before)
        });
        // Someone deletes an owned object; the owns() watch puts it back.
        api.delete("policy/v1", "poddisruptionbudgets", NS, "secure");
        wait_for("the PDB to come back", &|| {
            api.get("policy/v1", "poddisruptionbudgets", NS, "secure")
                .is_some()
        });
    })
    .await
    .expect("scenario");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[tokio::test]
async fn user_secret_tls_mode() {
    let h = Harness::new();
    h.api.create(CR.0, CR.1, NS, json!({
        "apiVersion": "raftmq.io/v1alpha1", "kind": "MqttCluster",
        "metadata": {"name": "own"},
        "spec": {"replicas": 1, "listeners": {"tls": {}}, "tls": {"mode": "Secret", "secretName": "my-cert"}},
    }));
    h.reconcile("own").await;
    let d = h.condition("own", "Degraded");
    assert_eq!(d["reason"], "SecretNotFound", "{d}");
    assert!(d["message"]
        .as_str()
        .unwrap_or_default()
        .contains("tls.secretName"));

    // A certificate without a CA: it runs; the listener verifies no
    // clients, and the cluster port is mutual TLS all the same, with the
    // operator's own peer certificates (issue 15: it was plain text, with
    // a warning, before).
    h.api.create(
        "v1",
        "secrets",
        NS,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-cert"},
        "type": "kubernetes.io/tls", "stringData": {"tls.crt": "CRT", "tls.key": "KEY"}}),
    );
    h.reconcile("own").await;
    let d = h.condition("own", "Degraded");
    assert_eq!(d["status"], "False", "{d}");
    assert!(
        !d["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not encrypted"),
        "{d}"
    );
    let sts = h.get("apps/v1", "statefulsets", "own").expect("sts");
    let vols = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        vols.iter().any(|v| v["secret"]["secretName"] == "my-cert"),
        "{vols:?}"
    );
    let toml = h.config_toml("own");
    assert!(
        toml.contains("certfile = \"/etc/raftmq/tls/tls.crt\"")
            && !toml.contains("cafile = \"/etc/raftmq/tls/ca.crt\""),
        "{toml}"
    );
    assert!(
        toml.contains("cafile = \"/etc/raftmq/peer/ca.crt\""),
        "{toml}"
    );
    assert!(h.get("v1", "secrets", "own-peer").is_some());
    assert!(
        h.get("v1", "secrets", "own-ca").is_none() && h.get("v1", "secrets", "own-tls").is_none()
    );

    // Client certificates need the CA.
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        "own",
        json!({"spec": {"listeners": {"tls": {"requireClientCertificate": true}}}}),
    );
    h.reconcile("own").await;
    let d = h.condition("own", "Degraded");
    assert_eq!(d["reason"], "SecretKeyMissing", "{d}");
    assert!(d["message"].as_str().unwrap_or_default().contains("ca.crt"));
}

#[tokio::test]
async fn storage_changes_grow_volumes_in_place() {
    let h = Harness::new();
    h.apply_example("tls-users-acl.yaml");
    h.reconcile("secure").await;
    // Bound claims of a class that allows expansion.
    h.api.create(
        "storage.k8s.io/v1",
        "storageclasses",
        "",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "expandable"}, "provisioner": "csi.example", "allowVolumeExpansion": true}),
    );
    for i in 0..3 {
        h.api.create(
            "v1",
            "persistentvolumeclaims",
            NS,
            json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": format!("data-secure-{i}")},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "expandable",
                         "resources": {"requests": {"storage": "5Gi"}}},
                "status": {"phase": "Bound", "capacity": {"storage": "5Gi"}},
            }),
        );
    }
    let template = |h: &Harness| {
        h.get("apps/v1", "statefulsets", "secure").expect("sts")["spec"]["volumeClaimTemplates"]
            .clone()
    };
    let before = template(&h);

    // Grow: the template stays (it is immutable), the volumes are patched.
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        "secure",
        json!({"spec": {"storage": {"size": "10Gi"}}}),
    );
    h.reconcile("secure").await;
    assert_eq!(template(&h), before);
    for i in 0..3 {
        let pvc = h
            .get("v1", "persistentvolumeclaims", &format!("data-secure-{i}"))
            .expect("pvc");
        assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "10Gi");
    }
    assert!(h
        .event_reasons("secure")
        .iter()
        .any(|r| r == "VolumesExpanding"));
    assert_eq!(h.condition("secure", "Degraded")["status"], "False");

    // Shrink: refused with a warning, nothing touched.
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        "secure",
        json!({"spec": {"storage": {"size": "1Gi"}}}),
    );
    h.reconcile("secure").await;
    assert_eq!(
        h.get("v1", "persistentvolumeclaims", "data-secure-0")
            .expect("pvc")["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    let msg = h.condition("secure", "Degraded")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("cannot shrink"), "{msg}");
    assert!(h
        .event_reasons("secure")
        .iter()
        .any(|r| r == "StorageImmutable"));
}

/// The bridges' ConfigMap as stored, parsed.
fn bridges_toml(h: &Harness, cluster: &str) -> toml::Table {
    let cm = h
        .get("v1", "configmaps", &format!("{cluster}-bridges"))
        .expect("bridges ConfigMap");
    let text = cm["data"]["bridges.toml"].as_str().unwrap_or_default();
    toml::from_str(text).unwrap_or_else(|e| panic!("bridges.toml: {e}\n{text}"))
}

fn bridge<'a>(t: &'a toml::Table, name: &str) -> Option<&'a toml::Table> {
    t["bridges"]
        .as_array()?
        .iter()
        .filter_map(toml::Value::as_table)
        .find(|b| b["name"].as_str() == Some(name))
}

fn pod_template(h: &Harness, name: &str) -> Value {
    h.get("apps/v1", "statefulsets", name).expect("sts")["spec"]["template"].clone()
}

/// Bridges live in a ConfigMap and a Secret of their own: adding,
/// changing, rotating and removing them never touches the pod template;
/// a Secret a bridge names that is missing is reported (condition and
/// Event naming the bridge, the Secret and the key), the bridge keeps
/// what it runs with, and the rest of the spec is applied all the same.
#[tokio::test]
async fn bridges_change_in_place() {
    let h = Harness::new();
    h.apply_example("bridges.yaml");
    let name = "site";
    h.reconcile(name).await;

    // --- created ------------------------------------------------------------
    let main = h.config_toml(name);
    assert!(
        main.contains("bridges_file = \"/etc/raftmq/bridges/bridges.toml\""),
        "{main}"
    );
    let t = bridges_toml(&h, name);
    let central = bridge(&t, "central").expect("central");
    assert_eq!(central["remote_username"].as_str(), Some("site1"));
    assert_eq!(
        central["remote_password_file"].as_str(),
        Some("/etc/raftmq/bridge-secrets/central.password")
    );
    assert_eq!(
        central["cafile"].as_str(),
        Some("/etc/raftmq/bridge-secrets/central.ca.crt")
    );
    assert_eq!(central["protocol"].as_str(), Some("5.0"));
    assert_eq!(
        central["topic"][0].as_str(),
        Some("sensors/# out 1 \"\" central/site1/")
    );
    assert_eq!(
        central["restart_timeout"],
        toml::Value::try_from([5, 60]).expect("v")
    );
    let gateway = bridge(&t, "gateway").expect("gateway");
    assert_eq!(gateway["identity"].as_str(), Some("site1"));
    assert_eq!(
        gateway["psk_file"].as_str(),
        Some("/etc/raftmq/bridge-secrets/gateway.psk")
    );
    assert!(
        gateway.get("psk").is_none(),
        "no secret inline: {gateway:?}"
    );
    let secrets = "site-bridge-secrets";
    assert_eq!(
        h.secret_text(secrets, "central.password"),
        "change-me-central"
    );
    assert!(h
        .secret_text(secrets, "central.tls.key")
        .contains("PRIVATE KEY"));
    assert_eq!(
        h.secret_text(secrets, "gateway.psk"),
        "00112233445566778899aabbccddeeff"
    );
    let cm_text = h
        .get("v1", "configmaps", "site-bridges")
        .expect("cm")
        .to_string();
    assert!(
        !cm_text.contains("change-me-central") && !cm_text.contains("00112233445566778899"),
        "no secret in the ConfigMap: {cm_text}"
    );
    let vols = pod_template(&h, name)["spec"]["volumes"].clone();
    assert!(
        vols.as_array()
            .into_iter()
            .flatten()
            .any(|v| v["configMap"]["name"] == "site-bridges"),
        "{vols}"
    );
    assert_eq!(h.condition(name, "Degraded")["status"], "False");
    let template = pod_template(&h, name);

    // --- a bridge added, one changed: in place ------------------------------
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        name,
        json!({"spec": {"bridges": [
            {"name": "central", "addresses": ["central.example.com:8883"],
             "topics": [{"pattern": "sensors/#", "qos": 1}],
             "remoteCredentials": {"secretName": "central-login"},
             "tls": {"caSecretName": "central-ca", "clientCertSecretName": "site1-client"}},
            {"name": "gateway", "addresses": ["gateway.site1.internal:8884"],
             "topics": [{"pattern": "ble/#", "direction": "in", "qos": 1}],
             "psk": {"secretName": "gateway-psk"}},
            {"name": "backup", "addresses": ["backup-a:1883", "backup-b:1883"], "roundRobin": true,
             "topics": [{"pattern": "#", "direction": "out"}]},
        ]}}),
    );
    h.reconcile(name).await;
    let t = bridges_toml(&h, name);
    assert_eq!(t["bridges"].as_array().map(Vec::len), Some(3));
    let backup = bridge(&t, "backup").expect("backup");
    assert_eq!(backup["round_robin"].as_bool(), Some(true));
    assert_eq!(
        bridge(&t, "central").expect("central")["addresses"],
        toml::Value::try_from(["central.example.com:8883"]).expect("v")
    );
    assert_eq!(pod_template(&h, name), template, "no roll");
    assert!(h.event_reasons(name).iter().any(|r| r == "BridgesUpdated"));

    // --- a credential rotated: the Secret follows, no roll -------------------
    h.api.patch(
        "v1",
        "secrets",
        NS,
        "central-login",
        json!({"stringData": {"password": "rotated"}}),
    );
    h.reconcile(name).await;
    assert_eq!(h.secret_text(secrets, "central.password"), "rotated");
    assert_eq!(pod_template(&h, name), template, "no roll");

    // --- a Secret goes: reported, the bridge held, the rest applied ----------
    assert!(h.api.delete("v1", "secrets", NS, "gateway-psk"));
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        name,
        json!({"spec": {"bridges": [
            {"name": "central", "addresses": ["central.example.com:8883"],
             "topics": [{"pattern": "sensors/#", "qos": 1}], "keepaliveInterval": 20,
             "remoteCredentials": {"secretName": "central-login"},
             "tls": {"caSecretName": "central-ca", "clientCertSecretName": "site1-client"}},
            {"name": "gateway", "addresses": ["gateway.site1.internal:8884"],
             "topics": [{"pattern": "ble/#", "direction": "in", "qos": 1}],
             "psk": {"secretName": "gateway-psk"}},
        ]}}),
    );
    h.reconcile(name).await;
    let d = h.condition(name, "Degraded");
    assert_eq!(d["status"], "True", "{d}");
    assert_eq!(d["reason"], "SecretNotFound", "{d}");
    let msg = d["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("bridge gateway")
            && msg.contains("gateway-psk")
            && msg.contains("bridges[1].psk"),
        "{msg}"
    );
    let warnings: Vec<(String, String, String)> = h
        .events(name)
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "SecretNotFound")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].2.contains("gateway-psk"), "{warnings:?}");
    let t = bridges_toml(&h, name);
    assert_eq!(
        bridge(&t, "central").expect("central")["keepalive_interval"].as_integer(),
        Some(20),
        "the rest of the spec is applied"
    );
    assert!(bridge(&t, "backup").is_none(), "a removed bridge goes");
    assert!(
        bridge(&t, "gateway").is_some(),
        "the broken bridge keeps running as it was"
    );
    assert_eq!(
        h.secret_text(secrets, "gateway.psk"),
        "00112233445566778899aabbccddeeff"
    );
    assert_eq!(pod_template(&h, name), template, "no roll");
    // Told once.
    h.reconcile(name).await;
    let n = h
        .events(name)
        .into_iter()
        .filter(|(_, r, _)| r == "SecretNotFound")
        .count();
    assert_eq!(n, 1);

    // --- a new bridge whose key is missing is left out -----------------------
    h.api.create(
        "v1",
        "secrets",
        NS,
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "late-login"}, "stringData": {"username": "late"}}),
    );
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        name,
        json!({"spec": {"bridges": [
            {"name": "gateway", "addresses": ["gateway.site1.internal:8884"],
             "topics": [{"pattern": "ble/#", "direction": "in", "qos": 1}],
             "psk": {"secretName": "gateway-psk"}},
            {"name": "late", "addresses": ["late:1883"], "topics": [{"pattern": "x/#"}],
             "remoteCredentials": {"secretName": "late-login"}},
        ]}}),
    );
    h.reconcile(name).await;
    let msg = h.condition(name, "Degraded")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("bridge late") && msg.contains("late-login") && msg.contains("\"password\""),
        "{msg}"
    );
    assert!(h
        .events(name)
        .iter()
        .any(|(_, r, n)| r == "SecretKeyMissing" && n.contains("late-login")));
    let t = bridges_toml(&h, name);
    assert!(
        bridge(&t, "late").is_none() && bridge(&t, "gateway").is_some(),
        "{t:?}"
    );

    // --- fixed: everything configured, Degraded clears ------------------------
    h.api.create(
        "v1",
        "secrets",
        NS,
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "gateway-psk"}, "stringData": {"identity": "site1", "psk": "ffee"}}),
    );
    h.api.patch(
        "v1",
        "secrets",
        NS,
        "late-login",
        json!({"stringData": {"password": "pw"}}),
    );
    h.reconcile(name).await;
    assert_eq!(
        h.condition(name, "Degraded")["status"],
        "False",
        "{}",
        h.condition(name, "Degraded")
    );
    let t = bridges_toml(&h, name);
    assert!(bridge(&t, "late").is_some());
    assert_eq!(h.secret_text(secrets, "gateway.psk"), "ffee");
    assert_eq!(h.secret_text(secrets, "late.password"), "pw");
    assert!(
        h.get("v1", "secrets", secrets).expect("s")["data"]
            .get("central.password")
            .is_none(),
        "a removed bridge's files go"
    );

    // --- every bridge removed: the volumes stay, nothing rolls ----------------
    h.api
        .patch(CR.0, CR.1, NS, name, json!({"spec": {"bridges": null}}));
    h.reconcile(name).await;
    let t = bridges_toml(&h, name);
    assert_eq!(t["bridges"].as_array().map(Vec::len), Some(0));
    assert_eq!(pod_template(&h, name), template, "no roll");
}

/// The first bridge of a cluster mounts the bridges' volumes: the one
/// change that rolls (told as ConfigChanged); a cluster without bridges
/// has none of their objects.
#[tokio::test]
async fn the_first_bridge_mounts_the_bridges() {
    let h = Harness::new();
    h.apply_example("minimal.yaml");
    h.reconcile("demo").await;
    assert!(h.get("v1", "configmaps", "demo-bridges").is_none());
    assert!(h.get("v1", "secrets", "demo-bridge-secrets").is_none());
    assert!(!h.config_toml("demo").contains("bridges_file"));
    let sum = h.checksum("demo");
    h.api.patch(
        CR.0,
        CR.1,
        NS,
        "demo",
        json!({"spec": {"bridges": [
            {"name": "up", "addresses": ["up:1883"], "topics": [{"pattern": "a/#"}]},
        ]}}),
    );
    h.reconcile("demo").await;
    assert_ne!(h.checksum("demo"), sum);
    assert!(h.event_reasons("demo").iter().any(|r| r == "ConfigChanged"));
    assert!(bridge(&bridges_toml(&h, "demo"), "up").is_some());
    assert!(h.get("v1", "secrets", "demo-bridge-secrets").is_some());
}

/// The Secret watch maps a Secret a bridge names back to its cluster (and
/// nothing else to it).
#[test]
fn a_bridge_secret_triggers_its_cluster() {
    use k8s_openapi::api::core::v1::Secret;
    use raftmq_operator::controller::clusters_for_secret;
    let cluster = std::sync::Arc::new(common::example_cluster("bridges.yaml"));
    let secret = |name: &str| {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some(NS.into());
        s
    };
    for name in ["central-login", "central-ca", "site1-client", "gateway-psk"] {
        let refs = clusters_for_secret(std::slice::from_ref(&cluster), &secret(name));
        assert_eq!(refs.len(), 1, "{name}");
        assert_eq!(refs[0].name, "site");
    }
    assert!(clusters_for_secret(&[cluster], &secret("unrelated")).is_empty());
}
