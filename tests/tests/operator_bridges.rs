//! The operator's bridges as the broker reads them: the example cluster's
//! `spec.bridges` rendered by the operator (`deploy/examples/bridges.yaml`),
//! its ConfigMaps and bridge Secret laid out as the pod mounts them, and
//! the result loaded by the broker's own config loader.

use std::path::Path;

use raftmq_operator::crd::MqttCluster;
use raftmq_operator::render::bridges::{BridgeMaterial, BridgeSecrets};
use raftmq_operator::render::{render, Observed, BRIDGES_FILE, CONFIG_FILE};
use raftmq_operator::schema::parse_yaml_stream;
use serde_json::Value;

fn example() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/bridges.yaml");
    let text = std::fs::read_to_string(&path).expect("example");
    parse_yaml_stream(&text).expect("yaml")
}

fn cluster(docs: &[Value]) -> MqttCluster {
    let mut doc = docs
        .iter()
        .find(|d| d["kind"] == "MqttCluster")
        .cloned()
        .expect("cluster");
    doc["metadata"]["namespace"] = "mqtt".into();
    doc["metadata"]["uid"] = "uid-1".into();
    serde_json::from_value(doc).expect("MqttCluster")
}

/// What the example's Secrets hold for each bridge, as the controller
/// reads it.
fn material(docs: &[Value], c: &MqttCluster) -> BridgeMaterial {
    let get = |secret: &str, key: &str| {
        docs.iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret)
            .and_then(|d| d["stringData"][key].as_str())
            .map(String::from)
    };
    let resolved = c
        .spec
        .bridges
        .iter()
        .map(|b| {
            let cred = b.remote_credentials.as_ref();
            let tls = b.tls.as_ref();
            let psk = b.psk.as_ref();
            let client = tls.and_then(|t| t.client_cert_secret_name.as_deref());
            let s = BridgeSecrets {
                username: cred.and_then(|c| get(&c.secret_name, &c.username_key)),
                password: cred.and_then(|c| get(&c.secret_name, &c.password_key)),
                ca: tls.and_then(|t| get(&t.ca_secret_name, &t.ca_key)),
                client_cert: client.and_then(|s| get(s, "tls.crt").zip(get(s, "tls.key"))),
                identity: psk.and_then(|p| get(&p.secret_name, &p.identity_key)),
                psk: psk.and_then(|p| get(&p.secret_name, &p.psk_key)),
            };
            (b.name.clone(), s)
        })
        .collect();
    BridgeMaterial {
        resolved,
        ..BridgeMaterial::default()
    }
}

#[test]
fn the_rendered_bridges_load_in_the_broker() {
    let docs = example();
    let c = cluster(&docs);
    let observed = Observed {
        bridges: material(&docs, &c),
        ..Observed::default()
    };
    let r = render(&c, &observed).expect("render");

    // The pod's mounts, under a temporary root.
    let root = tempfile::tempdir().expect("tmp");
    let local = |text: &str| text.replace("/etc/raftmq/", &format!("{}/", root.path().display()));
    let bridges_dir = root.path().join("bridges");
    let secrets_dir = root.path().join("bridge-secrets");
    std::fs::create_dir_all(&bridges_dir).expect("dir");
    std::fs::create_dir_all(&secrets_dir).expect("dir");
    let cm = r.bridges_config_map.as_ref().expect("bridges ConfigMap");
    let bridges_toml = local(&cm.data.as_ref().expect("data")[BRIDGES_FILE]);
    std::fs::write(bridges_dir.join(BRIDGES_FILE), &bridges_toml).expect("write");
    let secret = r
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("site-bridge-secrets"))
        .expect("bridge Secret");
    for (k, v) in secret.data.clone().unwrap_or_default() {
        std::fs::write(secrets_dir.join(k), v.0).expect("write");
    }
    let main = local(&r.config_map.data.as_ref().expect("data")[CONFIG_FILE]);
    assert!(main.contains("bridges_file = "), "{main}");
    let main_path = root.path().join("broker.toml");
    std::fs::write(&main_path, &main).expect("write");

    let cfg = raftmq::config::Config::load(Some(&main_path), Vec::<(String, String)>::new())
        .unwrap_or_else(|e| {
            panic!("the broker refuses the operator's config: {e}\n{main}\n{bridges_toml}")
        });
    // The broker reads `bridges_file` at start and again when it changes.
    let bridges = cfg.all_bridges().unwrap_or_else(|e| {
        panic!("the broker refuses the operator's bridges: {e}\n{bridges_toml}")
    });
    let names: Vec<&str> = bridges.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["central", "gateway"], "{bridges_toml}");
    let central = &bridges[0];
    assert_eq!(central.remote_username.as_deref(), Some("site1"));
    let pw = central
        .remote_password_file
        .as_ref()
        .expect("password file");
    assert_eq!(
        std::fs::read_to_string(pw).expect("password"),
        "change-me-central"
    );
    assert_eq!(central.addresses.len(), 2);
    assert_eq!(central.topics.len(), 2);
    let tls = format!("{:?}", central.tls);
    assert!(
        tls.contains("central.ca.crt") && tls.contains("central.tls.key"),
        "{tls}"
    );
    let gateway = format!("{:?}", bridges[1].tls);
    assert!(
        gateway.contains("Psk") && gateway.contains("site1"),
        "{gateway}"
    );
}
