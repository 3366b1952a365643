//! The cluster plane's certificates (`peer_certs`), read from their two
//! Secrets and issued or renewed as the cluster needs: every cluster gets
//! them, whatever its listeners. The operator's own admin certificate from
//! them is the client certificate of its Admin calls.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::secrets::secret_string;
use super::{Context, Error};
use crate::controller::events;
use crate::crd::MqttCluster;
use crate::membership::ClientTls;
use crate::peer_certs::{self, Pair, PeerMaterial};
use crate::render::Names;

/// What the two Secrets hold, as far as it reads.
fn stored(peer: Option<&Secret>, ca: Option<&Secret>) -> Option<PeerMaterial> {
    let get =
        |s: Option<&Secret>, k: &str| s.and_then(|s| secret_string(s, k)).and_then(Result::ok);
    let mut nodes = BTreeMap::new();
    for key in peer
        .and_then(|s| s.data.as_ref())
        .into_iter()
        .flat_map(|d| d.keys())
    {
        let Some(id) = key
            .strip_prefix("node-")
            .and_then(|k| k.strip_suffix(".crt"))
            .and_then(|id| id.parse::<u64>().ok())
        else {
            continue;
        };
        if let (Some(crt), Some(k)) = (get(peer, key), get(peer, &format!("node-{id}.key"))) {
            nodes.insert(id, Pair { crt, key: k });
        }
    }
    Some(PeerMaterial {
        ca: Pair {
            crt: get(ca, "ca.crt")?,
            key: get(ca, "ca.key")?,
        },
        nodes,
        admin: Pair {
            crt: get(ca, "admin.crt").unwrap_or_default(),
            key: get(ca, "admin.key").unwrap_or_default(),
        },
    })
}

/// The material to render with: kept while good, what is missing or due
/// issued (counted and told in an Event).
pub(in crate::controller) async fn observe(
    ctx: &Context,
    cluster: &MqttCluster,
    secrets: &Api<Secret>,
    names: &Names,
) -> Result<PeerMaterial, Error> {
    let peer = secrets.get_opt(&names.peer_secret()).await?;
    let ca = secrets.get_opt(&names.peer_ca_secret()).await?;
    let existing = stored(peer.as_ref(), ca.as_ref());
    let nodes = u64::try_from(cluster.spec.replicas.max(1)).unwrap_or(1);
    let out = peer_certs::ensure(names, nodes, existing.as_ref(), (ctx.now)())?;
    events::peer_certificates_issued(ctx, cluster, &out.issued).await;
    Ok(out.material)
}

/// The operator's client certificate for the brokers' Admin service.
pub(in crate::controller) fn admin_tls(m: &PeerMaterial) -> ClientTls {
    ClientTls {
        ca_crt: m.ca.crt.clone(),
        cert: m.admin.crt.clone(),
        key: m.admin.key.clone(),
    }
}
