use super::*;

fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("raftmq-cfg-{}", rand::random::<u64>()));
    std::fs::write(&dir, text).unwrap();
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>();
    let r = Config::load(Some(&dir), env);
    std::fs::remove_file(&dir).ok();
    r
}

#[test]
fn defaults_run_one_tcp_listener() {
    let c = Config::load(None, Vec::new()).unwrap();
    let l = c.effective_listeners();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].bind.port(), 1883);
    assert!(c.auth.anonymous_allowed());
}

#[test]
fn env_overrides_keys_with_types() {
    let c = load_str(
        "[mqtt]\nmax_packet_size = 2048\n",
        &[
            ("RAFTMQ_MQTT__MAX_PACKET_SIZE", "4096"),
            ("RAFTMQ_CLUSTER__NODE_ID", "3"),
            ("RAFTMQ_DATA_DIR", "/var/lib/raftmq"),
            ("RAFTMQ_CLUSTER__ADVERTISE", "raftmq-2.raftmq:7100"),
            ("OTHER", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.mqtt.max_packet_size, 4096);
    assert_eq!(c.cluster.node_id, 3);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/raftmq"));
    assert_eq!(c.cluster.advertise, "raftmq-2.raftmq:7100");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = load_str("sys_interval = 5\n[mqtt]\nmax_pakcet_size = 1\n", &[]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("max_pakcet_size"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
}

#[test]
fn invalid_values_are_named() {
    let e = load_str("[mqtt]\nmax_qos = 3\n", &[]).unwrap_err();
    assert!(e.to_string().contains("mqtt.max_qos"), "{e}");
    let e = load_str(
        "[[listeners]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("listeners[0].certfile"), "{e}");
}

#[test]
fn password_file_turns_anonymous_off_by_default() {
    let c = load_str("[auth]\npassword_file = \"/x\"\n", &[]).unwrap();
    assert!(!c.auth.anonymous_allowed());
    let c = load_str(
        "[auth]\npassword_file = \"/x\"\nallow_anonymous = true\n",
        &[],
    )
    .unwrap();
    assert!(c.auth.anonymous_allowed());
}

/// The operator renders this file with the shared key names: each of
/// them must be one this config reads (unknown keys are refused).
#[test]
fn shared_key_names_load() {
    use raftmq_shared::config::keys::{self, auth, cluster, http, listener, log};
    let mut listeners = Vec::new();
    for (i, kind) in ListenerKind::ALL.into_iter().enumerate() {
        let mut l = toml::Table::new();
        let mut put = |k: &str, v: toml::Value| l.insert(k.to_string(), v);
        put(listener::NAME, kind.as_str().into());
        put(listener::KIND, kind.as_str().into());
        put(listener::BIND, format!("0.0.0.0:{}", 1883 + i).into());
        put(listener::MAX_CONNECTIONS, 10.into());
        put(listener::MAX_PACKET_SIZE, 4096.into());
        put(listener::CERTFILE, "/tls/tls.crt".into());
        put(listener::KEYFILE, "/tls/tls.key".into());
        put(listener::CAFILE, "/tls/ca.crt".into());
        put(listener::REQUIRE_CERTIFICATE, false.into());
        put(listener::USE_IDENTITY_AS_USERNAME, false.into());
        put(listener::PSK_FILE, "/psk/psk".into());
        put(listener::PSK_HINT, "hint".into());
        put(listener::PATH, "/mqtt".into());
        listeners.push(toml::Value::Table(l));
    }
    let table = |pairs: &[(&str, toml::Value)]| {
        toml::Value::Table(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    };
    let mut root = toml::Table::new();
    root.insert(keys::DATA_DIR.into(), "/data".into());
    root.insert(keys::SYS_INTERVAL.into(), 5.into());
    root.insert(
        keys::LOG.into(),
        table(&[(log::LEVEL, "info".into()), (log::FORMAT, "json".into())]),
    );
    root.insert(keys::MQTT.into(), table(&[]));
    root.insert(
        keys::AUTH.into(),
        table(&[
            (auth::PASSWORD_FILE, "/users/passwd".into()),
            (auth::ACL_FILE, "/acl/acl".into()),
            (auth::ALLOW_ANONYMOUS, false.into()),
        ]),
    );
    root.insert(keys::LISTENERS.into(), toml::Value::Array(listeners));
    root.insert(
        keys::HTTP.into(),
        table(&[(http::BIND, "0.0.0.0:9100".into())]),
    );
    root.insert(
        keys::CLUSTER.into(),
        table(&[
            (cluster::BIND, "0.0.0.0:7100".into()),
            (cluster::ADVERTISE, "demo-0.demo-headless:7100".into()),
            (cluster::NODE_ID, 1.into()),
            (cluster::CERTFILE, "/tls/tls.crt".into()),
            (cluster::KEYFILE, "/tls/tls.key".into()),
            (cluster::CAFILE, "/tls/ca.crt".into()),
            (cluster::INSECURE_PLAINTEXT, false.into()),
            (cluster::INSECURE_PLAINTEXT, false.into()),
        ]),
    );
    let text = toml::to_string(&root).unwrap();
    let c = load_str(&text, &[]).unwrap();
    let kinds: Vec<ListenerKind> = c.listeners.iter().map(|l| l.kind).collect();
    assert_eq!(kinds, ListenerKind::ALL);
    assert_eq!(c.auth.acl_file, Some(PathBuf::from("/acl/acl")));
    assert_eq!(c.cluster.node_id, 1);
}

#[test]
fn node_id_from_hostname_ordinal() {
    let c = Config::default();
    assert_eq!(c.node_id(Some("raftmq-2")), 3);
    assert_eq!(c.node_id(Some("laptop")), 1);
    assert_eq!(c.node_id(None), 1);
}
