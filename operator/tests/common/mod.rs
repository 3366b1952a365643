//! Helpers shared by the operator's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use raftmq_operator::crd::{MqttCluster, TlsMode};
use raftmq_operator::peer_certs::{Pair, PeerMaterial};
use raftmq_operator::render::bridges::{BridgeMaterial, BridgeSecrets};
use raftmq_operator::render::{secrets, Observed, TlsMaterial};
use raftmq_operator::schema::parse_yaml_stream;
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every document of an example file.
pub fn example_docs(name: &str) -> Vec<Value> {
    let path = repo_root().join("deploy/examples").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_yaml_stream(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The MqttCluster of an example file, as the API server would hand it
/// out: namespace and uid set, spec defaulted.
pub fn example_cluster(name: &str) -> MqttCluster {
    let mut doc = example_docs(name)
        .into_iter()
        .find(|d| d["kind"] == "MqttCluster")
        .unwrap_or_else(|| panic!("{name} has no MqttCluster"));
    let obj = doc.as_object_mut().expect("object");
    obj.entry("spec").or_insert_with(|| serde_json::json!({}));
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("metadata");
    meta.insert("namespace".into(), "mqtt".into());
    meta.insert("uid".into(), "00000000-0000-0000-0000-000000000001".into());
    meta.insert("generation".into(), 1.into());
    serde_json::from_value(doc).expect("MqttCluster")
}

/// Passwords from the example's Secrets (`stringData.password`).
pub fn example_passwords(name: &str) -> Vec<(String, String)> {
    let docs = example_docs(name);
    let cluster = example_cluster(name);
    cluster
        .spec
        .auth
        .users
        .iter()
        .map(|u| {
            let secret = docs
                .iter()
                .find(|d| {
                    d["kind"] == "Secret"
                        && d["metadata"]["name"] == u.password_secret_ref.name.as_str()
                })
                .expect("the example carries each user's Secret");
            let pw = secret["stringData"][u.password_secret_ref.key.as_str()]
                .as_str()
                .expect("password")
                .to_string();
            (u.username.clone(), pw)
        })
        .collect()
}

pub fn fake_tls() -> TlsMaterial {
    TlsMaterial {
        ca_crt: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
        ca_key: "-----BEGIN PRIVATE KEY-----\nCAKEY\n-----END PRIVATE KEY-----\n".into(),
        tls_crt: "-----BEGIN CERTIFICATE-----\nSERVER\n-----END CERTIFICATE-----\n".into(),
        tls_key: "-----BEGIN PRIVATE KEY-----\nSERVERKEY\n-----END PRIVATE KEY-----\n".into(),
    }
}

/// A deterministic observed state for an example: fixed salts and
/// placeholder certificates, both optional CRDs installed.
pub fn example_observed(name: &str) -> Observed {
    let cluster = example_cluster(name);
    let users = example_passwords(name);
    let mut n = 0u8;
    let password_file = (!users.is_empty()).then(|| {
        secrets::password_file(&users, None, || {
            n += 1;
            [n; secrets::SALT_LEN]
        })
    });
    let tls = cluster.spec.effective_tls();
    Observed {
        password_file,
        tls: tls
            .as_ref()
            .filter(|t| t.mode == TlsMode::Operator)
            .map(|_| fake_tls()),
        tls_has_ca: tls.is_some(),
        service_monitor_crd: true,
        cert_manager_crd: true,
        peer: Some(fake_peer(cluster.spec.replicas)),
        operator_namespace: Some(OPERATOR_NAMESPACE.into()),
        bridges: example_bridges(name),
    }
}

/// `stringData[key]` of Secret `secret` in an example file.
pub fn example_secret_value(name: &str, secret: &str, key: &str) -> Option<String> {
    example_docs(name)
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret)
        .and_then(|d| d["stringData"][key].as_str().map(String::from))
}

/// What the example's bridges' Secrets hold (each the example carries).
pub fn example_bridges(name: &str) -> BridgeMaterial {
    let cluster = example_cluster(name);
    let get = |secret: &str, key: &str| {
        example_secret_value(name, secret, key)
            .unwrap_or_else(|| panic!("{name} carries Secret {secret} with {key}"))
    };
    let resolved = cluster
        .spec
        .bridges
        .iter()
        .map(|b| {
            let c = b.remote_credentials.as_ref();
            let t = b.tls.as_ref();
            let p = b.psk.as_ref();
            let client = t.and_then(|t| t.client_cert_secret_name.as_deref());
            let secrets = BridgeSecrets {
                username: c.map(|c| get(&c.secret_name, &c.username_key)),
                password: c.map(|c| get(&c.secret_name, &c.password_key)),
                ca: t.map(|t| get(&t.ca_secret_name, &t.ca_key)),
                client_cert: client.map(|s| (get(s, "tls.crt"), get(s, "tls.key"))),
                identity: p.map(|p| get(&p.secret_name, &p.identity_key)),
                psk: p.map(|p| get(&p.secret_name, &p.psk_key)),
            };
            (b.name.clone(), secrets)
        })
        .collect();
    BridgeMaterial {
        resolved,
        ..BridgeMaterial::default()
    }
}

/// The namespace the examples' operator runs in.
pub const OPERATOR_NAMESPACE: &str = "raftmq-system";

/// Placeholder cluster-plane certificates for node ids 1..=replicas.
pub fn fake_peer(replicas: i32) -> PeerMaterial {
    let pem =
        |what: &str| format!("-----BEGIN CERTIFICATE-----\n{what}\n-----END CERTIFICATE-----\n");
    let key =
        |what: &str| format!("-----BEGIN PRIVATE KEY-----\n{what}\n-----END PRIVATE KEY-----\n");
    PeerMaterial {
        ca: Pair {
            crt: pem("PEERCA"),
            key: key("PEERCAKEY"),
        },
        nodes: (1..=u64::try_from(replicas).unwrap_or(1))
            .map(|id| {
                let name = format!("NODE{id}");
                (
                    id,
                    Pair {
                        crt: pem(&name),
                        key: key(&format!("{name}KEY")),
                    },
                )
            })
            .collect(),
        admin: Pair {
            crt: pem("ADMIN"),
            key: key("ADMINKEY"),
        },
    }
}

pub const EXAMPLES: &[&str] = &[
    "minimal.yaml",
    "tls-users-acl.yaml",
    "cert-manager.yaml",
    "restricted.yaml",
    "bridges.yaml",
];
