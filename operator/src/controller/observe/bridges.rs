//! What the bridges' Secrets hold, and the bridges as the brokers have them
//! now. A Secret or key a bridge names that cannot be read is a problem of
//! that bridge only: it is reported (status and a Warning Event naming the
//! bridge, the Secret and the key) and the bridge keeps what it runs with,
//! while the rest of the cluster is reconciled as usual.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;

use super::secrets::secret_string;
use crate::crd::{BridgeSpec, MqttCluster};
use crate::render::bridges::{BridgeMaterial, BridgeSecrets, HeldBridge, FILE_KEYS};
use crate::render::statefulset::BRIDGES_VOLUME;
use crate::render::{Names, BRIDGES_FILE, BRIDGE_SECRETS_DIR};
use crate::validate::Problem;
use raftmq_shared::config::keys::{self, bridge as key};

/// What was read, what could not be, and `bridges.toml` as stored.
pub struct Observation {
    pub material: BridgeMaterial,
    pub problems: Vec<Problem>,
    pub stored_toml: Option<String>,
}

/// Secrets by name, each read once per reconcile.
struct Secrets<'a> {
    api: &'a Api<Secret>,
    ns: &'a str,
    cache: BTreeMap<String, Option<Secret>>,
}

impl Secrets<'_> {
    /// The text under `key` of Secret `name`, or the problem that keeps it
    /// from bridge `bridge` (`field` says which reference it was).
    async fn text(
        &mut self,
        bridge: &str,
        field: &str,
        name: &str,
        key: &str,
    ) -> Result<Result<String, Problem>, kube::Error> {
        if !self.cache.contains_key(name) {
            let s = self.api.get_opt(name).await?;
            self.cache.insert(name.to_string(), s);
        }
        let problem = |reason: &'static str, what: String| Problem {
            reason,
            message: format!("bridge {bridge}: {what} ({field})"),
        };
        let Some(Some(secret)) = self.cache.get(name) else {
            let what = format!("Secret {name:?} does not exist in namespace {}", self.ns);
            return Ok(Err(problem("SecretNotFound", what)));
        };
        Ok(match secret_string(secret, key) {
            None => Err(problem(
                "SecretKeyMissing",
                format!("Secret {name:?} has no key {key:?}"),
            )),
            Some(Err(())) => Err(problem(
                "SecretInvalid",
                format!("key {key:?} of Secret {name:?} is not UTF-8 text"),
            )),
            Some(Ok(v)) if v.trim().is_empty() => Err(problem(
                "SecretInvalid",
                format!("key {key:?} of Secret {name:?} is empty"),
            )),
            Some(Ok(v)) => Ok(v),
        })
    }
}

/// Every value a bridge's Secrets must give, or the problems.
async fn resolve(
    b: &BridgeSpec,
    i: usize,
    secrets: &mut Secrets<'_>,
) -> Result<Result<BridgeSecrets, Vec<Problem>>, kube::Error> {
    let mut problems = Vec::new();
    let mut out = BridgeSecrets::default();
    let mut take = |r: Result<String, Problem>| match r {
        Ok(v) => Some(v),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    let n = &b.name;
    if let Some(c) = &b.remote_credentials {
        let field = format!("bridges[{i}].remoteCredentials");
        let name = &c.secret_name;
        out.username = take(secrets.text(n, &field, name, &c.username_key).await?);
        out.password = take(secrets.text(n, &field, name, &c.password_key).await?);
    }
    if let Some(t) = &b.tls {
        let field = format!("bridges[{i}].tls.caSecretName");
        out.ca = take(
            secrets
                .text(n, &field, &t.ca_secret_name, &t.ca_key)
                .await?,
        );
        if let Some(c) = &t.client_cert_secret_name {
            let field = format!("bridges[{i}].tls.clientCertSecretName");
            let crt = take(secrets.text(n, &field, c, "tls.crt").await?);
            let key = take(secrets.text(n, &field, c, "tls.key").await?);
            out.client_cert = crt.zip(key);
        }
    }
    if let Some(p) = &b.psk {
        let field = format!("bridges[{i}].psk");
        let name = &p.secret_name;
        out.identity = take(secrets.text(n, &field, name, &p.identity_key).await?);
        out.psk = take(secrets.text(n, &field, name, &p.psk_key).await?);
    }
    if problems.is_empty() {
        Ok(Ok(out))
    } else {
        Ok(Err(problems))
    }
}

/// Reads every bridge's Secrets; a bridge that cannot be resolved is held
/// as `bridges.toml` and the bridge Secret have it now (if at all).
pub(in crate::controller) async fn observe(
    secrets: &Api<Secret>,
    config_maps: &Api<ConfigMap>,
    cluster: &MqttCluster,
    names: &Names,
    ns: &str,
) -> Result<Observation, kube::Error> {
    let mut out = Observation {
        material: BridgeMaterial::default(),
        problems: Vec::new(),
        stored_toml: None,
    };
    let spec_bridges = &cluster.spec.bridges;
    let mut reader = Secrets {
        api: secrets,
        ns,
        cache: BTreeMap::new(),
    };
    let mut unresolved = Vec::new();
    for (i, b) in spec_bridges.iter().enumerate() {
        match resolve(b, i, &mut reader).await? {
            Ok(s) => {
                out.material.resolved.insert(b.name.clone(), s);
            }
            Err(p) => {
                unresolved.push((b.name.as_str(), p));
            }
        }
    }
    out.stored_toml = config_maps
        .get_opt(&names.bridges_config_map())
        .await?
        .and_then(|c| c.data?.get(BRIDGES_FILE).cloned());
    if unresolved.is_empty() {
        return Ok(out);
    }
    let stored_files = secrets.get_opt(&names.bridge_secret()).await?;
    for (name, problems) in unresolved {
        let held = out
            .stored_toml
            .as_deref()
            .and_then(|t| held(t, name, stored_files.as_ref()));
        let then = if held.is_some() {
            "; the bridge keeps running with its previous settings until this is fixed"
        } else {
            "; the bridge is not configured until this is fixed"
        };
        for mut p in problems {
            p.message.push_str(then);
            out.problems.push(p);
        }
        if let Some(h) = held {
            out.material.held.insert(name.to_string(), h);
        }
    }
    Ok(out)
}

/// Bridge `name` as stored: its table in `bridges.toml` and the files of
/// the bridge Secret it names.
fn held(stored_toml: &str, name: &str, files: Option<&Secret>) -> Option<HeldBridge> {
    let root: toml::Table = toml::from_str(stored_toml).ok()?;
    let table = root
        .get(keys::BRIDGES)?
        .as_array()?
        .iter()
        .filter_map(toml::Value::as_table)
        .find(|t| t.get(key::NAME).and_then(toml::Value::as_str) == Some(name))?
        .clone();
    let mut held = HeldBridge {
        table: toml::to_string(&table).ok()?,
        files: BTreeMap::new(),
    };
    let prefix = format!("{BRIDGE_SECRETS_DIR}/");
    for k in FILE_KEYS {
        let Some(file) = table
            .get(k)
            .and_then(toml::Value::as_str)
            .and_then(|p| p.strip_prefix(&prefix))
        else {
            continue;
        };
        let content = files
            .and_then(|s| secret_string(s, file))
            .and_then(Result::ok)?;
        held.files.insert(file.to_string(), content);
    }
    Some(held)
}

/// Whether the StatefulSet's pod template mounts the bridges already.
pub(in crate::controller) fn mounted(sts: Option<&StatefulSet>) -> bool {
    sts.and_then(|s| s.spec.template.spec.as_ref())
        .and_then(|p| p.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.name == BRIDGES_VOLUME))
}
