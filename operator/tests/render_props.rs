//! Property tests: any valid spec renders objects whose names, labels,
//! ports and mounts agree with each other, that validate against the
//! Kubernetes schema, and whose config checksum moves only with the broker
//! TOML.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use raftmq_operator::crd::{
    AclAccess, AclRule, BridgeSpec, ListenerSpec, MqttCluster, MqttClusterSpec, PskSpec,
    ServiceType, TlsMode, TlsSpec,
};
use raftmq_operator::render::bridges::{BridgeMaterial, BridgeSecrets, FILE_KEYS};
use raftmq_operator::render::{
    render, selector_labels, Names, Observed, TlsMaterial, BRIDGE_SECRETS_DIR, CONFIG_CHECKSUM,
};
use raftmq_operator::schema::validate;
use raftmq_operator::validate::validate as validate_spec;
use serde_json::Value;

fn listener(port: Option<i32>, require: bool) -> ListenerSpec {
    ListenerSpec {
        port,
        require_client_certificate: require,
        ..ListenerSpec::enabled()
    }
}

prop_compose! {
    fn arb_spec()(
        replicas in 1i32..8,
        tcp in any::<bool>(),
        tls in any::<bool>(),
        ws in any::<bool>(),
        wss in any::<bool>(),
        psk in any::<bool>(),
        ports in proptest::collection::btree_set(1024i32..65000, 5),
        require in any::<bool>(),
        mode in 0u8..3,
        svc in 0u8..3,
        users in proptest::collection::btree_set("[a-z][a-z0-9]{0,8}", 0..4),
        acl in proptest::collection::vec(("[a-z]{1,5}(/([a-z]{1,4}|[+])){0,2}(/#)?", 0u8..4, any::<bool>()), 0..5),
        netpol in any::<bool>(),
        sm in any::<bool>(),
        name in "[a-z][a-z0-9]{0,20}",
    ) -> (String, MqttClusterSpec) {
        let mut spec: MqttClusterSpec = serde_json::from_value(serde_json::json!({})).expect("defaults");
        spec.replicas = replicas;
        // Distinct ports, none clashing with 7100 / 9100.
        let ports: Vec<i32> = ports.into_iter().map(|p| if p == 7100 || p == 9100 { p + 1 } else { p }).collect();
        spec.listeners.tcp = ListenerSpec { enabled: tcp || !(tls || ws || wss || psk), ..listener(Some(ports[0]), false) };
        spec.listeners.tls = tls.then(|| listener(Some(ports[1]), require));
        spec.listeners.ws = ws.then(|| listener(Some(ports[2]), false));
        spec.listeners.wss = wss.then(|| listener(Some(ports[3]), false));
        spec.listeners.psk = psk.then(|| listener(Some(ports[4]), false));
        if psk {
            spec.psk = Some(PskSpec { secret_name: "psk".into(), key: "psk".into(), hint: None });
        }
        spec.listeners.service.type_ = match svc { 0 => ServiceType::ClusterIP, 1 => ServiceType::NodePort, _ => ServiceType::LoadBalancer };
        if tls || wss || mode > 0 {
            spec.tls = Some(TlsSpec {
                mode: match mode { 0 => TlsMode::Operator, 1 => TlsMode::Secret, _ => TlsMode::CertManager },
                secret_name: (mode == 1).then(|| "my-cert".into()),
                issuer_ref: (mode == 2).then(|| serde_json::from_value(serde_json::json!({"name": "ca"})).expect("issuer")),
                peer_tls: true,
                ..TlsSpec::default()
            });
        }
        let users: Vec<String> = users.into_iter().collect();
        spec.auth.users = users.iter().map(|u| serde_json::from_value(serde_json::json!({
            "username": u, "passwordSecretRef": {"name": format!("{u}-pw")}
        })).expect("user")).collect();
        spec.acl = acl.into_iter().enumerate().map(|(i, (topic, access, pattern))| AclRule {
            user: (!pattern && !users.is_empty()).then(|| users[i % users.len()].clone()),
            pattern,
            access: [AclAccess::Read, AclAccess::Write, AclAccess::Readwrite, AclAccess::Deny][access as usize],
            topic,
        }).collect();
        spec.network_policy.enabled = netpol;
        spec.metrics.service_monitor.enabled = sm;
        (name, spec)
    }
}

prop_compose! {
    /// Bridges with distinct names, each with some of credentials, TLS or
    /// PSK, and what their Secrets hold.
    fn arb_bridges()(
        bridges in proptest::collection::btree_map(
            "[a-z][a-z0-9._-]{0,10}",
            (0u8..4, any::<bool>(), "[a-z]{1,6}(/[a-z]{1,4}){0,2}/#", 0i32..3, "[a-z]{0,4}", "[a-z0-9]{1,12}"),
            1..4,
        ),
    ) -> (Vec<BridgeSpec>, BridgeMaterial) {
        let mut specs = Vec::new();
        let mut material = BridgeMaterial::default();
        for (name, (kind, login, pattern, qos, prefix, secret)) in bridges {
            let prefix = if prefix.is_empty() { prefix } else { format!("{prefix}/") };
            let direction = ["out", "in", "both"][qos as usize];
            let mut b = serde_json::json!({
                "name": name, "addresses": [format!("{name}.example:1883")],
                "topics": [{"pattern": pattern, "qos": qos, "direction": direction, "localPrefix": prefix}],
            });
            let mut s = BridgeSecrets::default();
            if login {
                b["remoteCredentials"] = serde_json::json!({"secretName": "login"});
                s.username = Some(format!("user-{name}"));
                s.password = Some(secret.clone());
            }
            match kind {
                1 => {
                    b["tls"] = serde_json::json!({"caSecretName": "ca"});
                    s.ca = Some(format!("CA {secret}"));
                }
                2 => {
                    b["tls"] = serde_json::json!({"caSecretName": "ca", "clientCertSecretName": "cert"});
                    s.ca = Some(format!("CA {secret}"));
                    s.client_cert = Some((format!("CRT {secret}"), format!("KEY {secret}")));
                }
                3 => {
                    b["psk"] = serde_json::json!({"secretName": "psk"});
                    s.identity = Some(format!("id-{name}"));
                    s.psk = Some("00ff".into());
                }
                _ => {}
            }
            specs.push(serde_json::from_value::<BridgeSpec>(b).expect("bridge"));
            material.resolved.insert(name, s);
        }
        (specs, material)
    }
}

fn cluster(name: &str, spec: MqttClusterSpec) -> MqttCluster {
    let mut c = MqttCluster::new(name, spec);
    c.metadata.namespace = Some("ns".into());
    c.metadata.uid = Some("uid-1".into());
    c
}

fn observed(spec: &MqttClusterSpec) -> Observed {
    let tls = spec.effective_tls();
    Observed {
        password_file: (!spec.auth.users.is_empty()).then(|| {
            spec.auth
                .users
                .iter()
                .map(|u| format!("{}:$7$101$x$y\n", u.username))
                .collect()
        }),
        tls: tls
            .as_ref()
            .filter(|t| t.mode == TlsMode::Operator)
            .map(|_| TlsMaterial {
                ca_crt: "ca".into(),
                ca_key: "k".into(),
                tls_crt: "c".into(),
                tls_key: "k".into(),
            }),
        tls_has_ca: tls.is_some(),
        service_monitor_crd: true,
        cert_manager_crd: true,
        ..Observed::default()
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn rendered_objects_agree((name, spec) in arb_spec()) {
        prop_assert!(validate_spec(&spec).errors.is_empty(), "{:?}", validate_spec(&spec).errors);
        let c = cluster(&name, spec.clone());
        let names = Names::of(&c);
        let r = render(&c, &observed(&spec)).expect("render");
        let objects = r.objects();

        // Every object validates, is owned, labelled and namespaced.
        let selector = selector_labels(&names);
        for o in &objects {
            prop_assert!(validate(o).is_ok(), "{:?}", validate(o));
            prop_assert_eq!(&o["metadata"]["namespace"], "ns");
            prop_assert_eq!(&o["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            for (k, v) in &selector {
                prop_assert_eq!(o["metadata"]["labels"][k].as_str(), Some(v.as_str()));
            }
            prop_assert!(o["metadata"]["name"].as_str().is_some_and(|n| n.len() <= 63));
        }

        let sts = serde_json::to_value(&r.statefulset).expect("sts");
        let pod = &sts["spec"]["template"];
        let container = &pod["spec"]["containers"][0];

        // Selectors: StatefulSet, Services, PDB, NetworkPolicy all pick the pod labels.
        let pod_labels = pod["metadata"]["labels"].clone();
        let sel = serde_json::to_value(&selector).expect("sel");
        for (k, v) in selector.iter() {
            prop_assert_eq!(pod_labels[k].as_str(), Some(v.as_str()));
        }
        prop_assert_eq!(&sts["spec"]["selector"]["matchLabels"], &sel);
        let client = serde_json::to_value(&r.client_service).expect("svc");
        let headless = serde_json::to_value(&r.headless_service).expect("svc");
        prop_assert_eq!(&client["spec"]["selector"], &sel);
        prop_assert_eq!(&headless["spec"]["selector"], &sel);
        prop_assert_eq!(&serde_json::to_value(&r.pdb).expect("pdb")["spec"]["selector"]["matchLabels"], &sel);
        let headless_name = names.headless_service();
        prop_assert_eq!(sts["spec"]["serviceName"].as_str(), Some(headless_name.as_str()));

        // Ports: every Service targetPort names a container port; the
        // broker binds every container port the Services expose.
        let cports: BTreeMap<String, i64> = container["ports"].as_array().expect("ports").iter()
            .map(|p| (p["name"].as_str().unwrap_or_default().to_string(), p["containerPort"].as_i64().unwrap_or_default())).collect();
        for svc in [&client, &headless] {
            for p in svc["spec"]["ports"].as_array().expect("ports") {
                let target = p["targetPort"].as_str().unwrap_or_default();
                prop_assert!(cports.contains_key(target), "{} not a container port", target);
                prop_assert_eq!(cports[target], p["port"].as_i64().unwrap_or_default());
            }
        }
        let cfg: toml::Table = toml::from_str(&r.config_map.data.as_ref().expect("data")["broker.toml"]).expect("toml");
        let binds: BTreeSet<i64> = cfg["listeners"].as_array().expect("listeners").iter()
            .map(|l| l["bind"].as_str().and_then(|b| b.rsplit_once(':')).and_then(|(_, p)| p.parse().ok()).unwrap_or(0)).collect();
        let client_ports: BTreeSet<i64> = client["spec"]["ports"].as_array().expect("ports").iter().map(|p| p["port"].as_i64().unwrap_or_default()).collect();
        prop_assert_eq!(&binds, &client_ports);
        prop_assert!(cports.get("http") == Some(&9100) && cports.get("cluster") == Some(&7100));
        if let Some(np) = &r.network_policy {
            let np = serde_json::to_value(np).expect("np");
            let cluster_rule = &np["spec"]["ingress"][0];
            prop_assert_eq!(&cluster_rule["ports"][0]["port"], 7100);
            prop_assert_eq!(&cluster_rule["from"][0]["podSelector"]["matchLabels"], &sel);
            let open: BTreeSet<i64> = np["spec"]["ingress"][1]["ports"].as_array().expect("p").iter().map(|p| p["port"].as_i64().unwrap_or_default()).collect();
            prop_assert!(client_ports.is_subset(&open) && !open.contains(&7100));
        }

        // Mounts: every volumeMount has a volume (or the claim), and every
        // file the config names lives under a mounted directory.
        let volumes: BTreeSet<String> = pod["spec"]["volumes"].as_array().expect("vols").iter().map(|v| v["name"].as_str().unwrap_or_default().to_string()).collect();
        let mut mounted = Vec::new();
        for m in container["volumeMounts"].as_array().expect("mounts") {
            let n = m["name"].as_str().unwrap_or_default().to_string();
            prop_assert!(n == "data" || volumes.contains(&n), "mount {} has no volume", n);
            mounted.push(m["mountPath"].as_str().unwrap_or_default().to_string());
        }
        prop_assert_eq!(volumes.len() + 1, mounted.len());
        let mut files: Vec<String> = Vec::new();
        for l in cfg["listeners"].as_array().expect("l") {
            for k in ["certfile", "keyfile", "cafile", "psk_file"] {
                if let Some(f) = l.get(k).and_then(|v| v.as_str()) { files.push(f.into()); }
            }
        }
        for k in ["password_file", "acl_file"] {
            if let Some(f) = cfg["auth"].get(k).and_then(|v| v.as_str()) { files.push(f.into()); }
        }
        for k in ["certfile", "keyfile", "cafile"] {
            if let Some(f) = cfg["cluster"].get(k).and_then(|v| v.as_str()) { files.push(f.into()); }
        }
        let args = strs(&container["args"]);
        files.push(args.last().cloned().unwrap_or_default());
        for f in &files {
            prop_assert!(mounted.iter().any(|m| f.starts_with(&format!("{m}/"))), "{} is not under a mount ({:?})", f, mounted);
        }
        prop_assert_eq!(cfg["data_dir"].as_str(), Some("/var/lib/raftmq"));
        prop_assert!(mounted.iter().any(|m| m == "/var/lib/raftmq"));
        prop_assert_eq!(cfg.get("auth").and_then(|a| a.get("password_file")).is_some(), !spec.auth.users.is_empty());

        // The checksum is the config's and is on the pod template.
        prop_assert_eq!(pod["metadata"]["annotations"][CONFIG_CHECKSUM].as_str(), Some(r.config_checksum.as_str()));
    }

    #[test]
    fn acl_and_password_changes_do_not_roll_pods((name, spec) in arb_spec(), topic in "[a-z]{1,6}/#") {
        prop_assume!(!spec.acl.is_empty());
        let c = cluster(&name, spec.clone());
        let mut obs = observed(&spec);
        let before = render(&c, &obs).expect("render");
        let mut spec2 = spec.clone();
        spec2.acl[0].topic = topic;
        obs.password_file = obs.password_file.map(|p| p.replace("$y", "$z"));
        let after = render(&cluster(&name, spec2), &obs).expect("render");
        prop_assert_eq!(&before.config_checksum, &after.config_checksum);
        prop_assert_eq!(
            serde_json::to_value(&before.statefulset).expect("a"),
            serde_json::to_value(&after.statefulset).expect("b")
        );
    }

    /// Bridges render into their own ConfigMap and Secret: every file a
    /// bridge names is in the Secret under the mounted directory, and
    /// adding, changing, rotating or removing bridges (once the pods mount
    /// them) leaves the pod template as it was.
    #[test]
    fn bridge_changes_do_not_roll_pods((name, spec) in arb_spec(), (b1, m1) in arb_bridges(), (b2, m2) in arb_bridges(), none in any::<bool>()) {
        let mut spec1 = spec.clone();
        spec1.bridges = b1;
        prop_assert!(validate_spec(&spec1).errors.is_empty(), "{:?}", validate_spec(&spec1).errors);
        let mut obs1 = observed(&spec1);
        obs1.bridges = m1;
        let before = render(&cluster(&name, spec1), &obs1).expect("render");
        for o in before.objects() {
            prop_assert!(validate(&o).is_ok(), "{:?}", validate(&o));
        }
        let cm = before.bridges_config_map.as_ref().expect("bridges ConfigMap");
        let text = &cm.data.as_ref().expect("data")["bridges.toml"];
        let parsed: toml::Table = toml::from_str(text).expect("bridges.toml is TOML");
        let secret_name = format!("{name}-bridge-secrets");
        let secret = before.secrets.iter().find(|s| s.metadata.name.as_deref() == Some(secret_name.as_str())).expect("bridge Secret");
        let data = secret.data.clone().unwrap_or_default();
        let tables = parsed["bridges"].as_array().expect("bridges");
        prop_assert_eq!(tables.len(), obs1.bridges.resolved.len());
        for t in tables {
            for k in FILE_KEYS {
                if let Some(f) = t.get(k).and_then(|v| v.as_str()) {
                    let file = f.strip_prefix(&format!("{BRIDGE_SECRETS_DIR}/"));
                    prop_assert!(file.is_some_and(|f| data.contains_key(f)), "{} is not in the bridge Secret", f);
                }
            }
        }

        // The pods mount the bridges now; the next render sees that.
        let mut spec2 = spec.clone();
        spec2.bridges = if none { Vec::new() } else { b2 };
        let mut obs2 = observed(&spec2);
        obs2.bridges = if none { BridgeMaterial::default() } else { m2 };
        obs2.bridges.mounted = true;
        let after = render(&cluster(&name, spec2), &obs2).expect("render");
        prop_assert_eq!(&before.config_checksum, &after.config_checksum);
        prop_assert_eq!(
            serde_json::to_value(&before.statefulset).expect("a"),
            serde_json::to_value(&after.statefulset).expect("b")
        );
        prop_assert!(after.bridges_config_map.is_some(), "the mounted ConfigMap stays");
    }

    #[test]
    fn config_changes_roll_pods((name, spec) in arb_spec(), n in 1u32..100000) {
        let c = cluster(&name, spec.clone());
        let obs = observed(&spec);
        let before = render(&c, &obs).expect("render");
        let mut spec2 = spec.clone();
        let mut cfg = serde_json::Map::new();
        cfg.insert("mqtt".into(), serde_json::json!({"max_queued_messages": n}));
        spec2.config = Some(cfg);
        let after = render(&cluster(&name, spec2), &obs).expect("render");
        prop_assert_ne!(before.config_checksum, after.config_checksum);
    }
}
