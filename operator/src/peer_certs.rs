//! The cluster plane's own certificates, issued for every cluster whatever
//! its listeners: a peer CA, one certificate per node naming its node id
//! (`raftmq://node/<ordinal + 1>`, the id the broker derives from its pod
//! name) and the operator's own admin client certificate
//! (`raftmq://admin/operator`), which is what lets it change membership and
//! drain pods. Brokers check every cluster call against these identities.
//!
//! Two Secrets hold them: `<name>-peer`, mounted by every pod (the CA
//! certificate and each node's certificate and key), and `<name>-peer-ca`,
//! never mounted (the CA key and the admin certificate). A certificate is
//! reissued when it cannot be read, is not signed by the CA, names the
//! wrong identity or pod, or has a third of its lifetime left; a new CA
//! reissues all. Brokers read their certificate at start, so a renewed one
//! is used from the pod's next restart: lifetimes are long for that reason.

use std::collections::BTreeMap;

use raftmq_shared::certs as recipe;
use raftmq_shared::identity::Identity;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

use crate::certs::{new_ca_named, renew_at, signed_by_ca, CertError};
use crate::render::Names;

/// Node and admin certificates' lifetime.
const LEAF_DAYS: i64 = 825;
/// The operator's admin identity.
pub const OPERATOR_ADMIN: &str = "operator";

/// A certificate and its key, PEM.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Pair {
    pub crt: String,
    pub key: String,
}

/// Everything of the cluster plane's PKI.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PeerMaterial {
    pub ca: Pair,
    /// By node id.
    pub nodes: BTreeMap<u64, Pair>,
    pub admin: Pair,
}

/// What [`ensure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerOutcome {
    pub material: PeerMaterial,
    /// One line per certificate issued, saying why (empty: all kept).
    pub issued: Vec<String>,
}

struct Parsed {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    uris: Vec<String>,
    dns: Vec<String>,
    der: Vec<u8>,
}

fn parse(pem: &str) -> Option<Parsed> {
    let (_, p) = parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    Some(Parsed {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        uris,
        dns,
        der: p.contents.clone(),
    })
}

fn due(p: &Parsed, now: OffsetDateTime) -> bool {
    renew_at(p.not_before, p.not_after) <= now
}

fn new_ca(cluster: &str, now: OffsetDateTime) -> Result<Pair, CertError> {
    let (crt, key) = new_ca_named(&format!("raftmq peer CA {cluster}"), now)?;
    Ok(Pair { crt, key })
}

fn node_dns(names: &Names, id: u64) -> Vec<String> {
    let ordinal = i32::try_from(id.saturating_sub(1)).unwrap_or(i32::MAX);
    vec![
        names.pod_host(ordinal),
        format!("*.{}.{}.svc", names.headless_service(), names.namespace),
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

fn leaf(
    identity: &Identity,
    dns: &[String],
    eku: Vec<ExtendedKeyUsagePurpose>,
    ca: &Pair,
    now: OffsetDateTime,
) -> Result<Pair, CertError> {
    let issuer = recipe::issuer(&ca.crt, &ca.key)?;
    // rcgen makes an address among the names an IP SAN.
    let mut params = CertificateParams::new(dns.to_vec())?;
    params
        .subject_alt_names
        .push(SanType::URI(identity.uri().try_into()?));
    let lifetime = Duration::days(LEAF_DAYS);
    let (crt, key) = recipe::sign_leaf(params, &identity.uri(), eku, &issuer, now, lifetime)?;
    Ok(Pair { crt, key })
}

/// Why `existing` cannot stay as `identity`'s certificate; `None`: keep.
fn fault(
    existing: Option<&Pair>,
    identity: &Identity,
    dns: &[String],
    ca_der: &[u8],
    now: OffsetDateTime,
) -> Option<String> {
    let Some(pair) = existing else {
        return Some("none yet".into());
    };
    let Some(p) = parse(&pair.crt).filter(|_| KeyPair::from_pem(&pair.key).is_ok()) else {
        return Some("the stored one could not be read".into());
    };
    if !signed_by_ca(&p.der, ca_der) {
        return Some("the stored one is not signed by the peer CA".into());
    }
    if p.uris != [identity.uri()] {
        return Some(format!("the stored one does not name {}", identity.uri()));
    }
    if let Some(d) = dns
        .iter()
        .filter(|d| d.parse::<std::net::IpAddr>().is_err())
        .find(|d| !p.dns.contains(d))
    {
        return Some(format!("the stored one does not cover {d}"));
    }
    due(&p, now).then(|| format!("a third of its lifetime is left (until {})", p.not_after))
}

/// Keeps what is still good in `existing` and issues the rest: the CA,
/// node certificates for ids 1..=`nodes` (and any already issued above),
/// and the operator's admin certificate.
pub fn ensure(
    names: &Names,
    nodes: u64,
    existing: Option<&PeerMaterial>,
    now: OffsetDateTime,
) -> Result<PeerOutcome, CertError> {
    let mut issued = Vec::new();
    let old_ca = existing
        .map(|m| &m.ca)
        .filter(|ca| KeyPair::from_pem(&ca.key).is_ok())
        .and_then(|ca| Some((ca.clone(), parse(&ca.crt)?)));
    let (ca, ca_new) = match old_ca {
        Some((ca, p)) if !due(&p, now) => (ca, false),
        _ => {
            issued.push("the peer CA".to_string());
            (new_ca(&names.cluster, now)?, true)
        }
    };
    let ca_der = parse(&ca.crt).map(|p| p.der).unwrap_or_default();
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut ids: Vec<u64> = (1..=nodes).collect();
    ids.extend(existing.iter().flat_map(|m| m.nodes.keys().copied()));
    ids.sort_unstable();
    ids.dedup();
    let mut material = PeerMaterial {
        ca: ca.clone(),
        ..PeerMaterial::default()
    };
    for id in ids {
        let identity = Identity::Node(id);
        let dns = node_dns(names, id);
        let old = existing.and_then(|m| m.nodes.get(&id)).filter(|_| !ca_new);
        let pair = match fault(old, &identity, &dns, &ca_der, now) {
            None => old.cloned().unwrap_or_default(),
            Some(why) => {
                issued.push(format!("node {id}'s certificate: {why}"));
                leaf(&identity, &dns, both.clone(), &ca, now)?
            }
        };
        material.nodes.insert(id, pair);
    }
    let admin = Identity::Admin(OPERATOR_ADMIN.into());
    let old = existing.map(|m| &m.admin).filter(|_| !ca_new);
    material.admin = match fault(old, &admin, &[], &ca_der, now) {
        None => old.cloned().unwrap_or_default(),
        Some(why) => {
            issued.push(format!("the operator's admin certificate: {why}"));
            let client = vec![ExtendedKeyUsagePurpose::ClientAuth];
            leaf(&admin, &[], client, &ca, now)?
        }
    };
    Ok(PeerOutcome { material, issued })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            cluster: "demo".into(),
            namespace: "mqtt".into(),
        }
    }

    #[test]
    fn issues_per_node_identities_then_keeps_them() -> Result<(), CertError> {
        let t0 = OffsetDateTime::now_utc();
        let first = ensure(&names(), 3, None, t0)?;
        assert_eq!(first.material.nodes.len(), 3);
        let node2 = parse(&first.material.nodes[&2].crt).ok_or(CertError::Unreadable)?;
        assert_eq!(node2.uris, vec!["raftmq://node/2".to_string()]);
        assert!(node2
            .dns
            .contains(&"demo-1.demo-headless.mqtt.svc".to_string()));
        let admin = parse(&first.material.admin.crt).ok_or(CertError::Unreadable)?;
        assert_eq!(admin.uris, vec!["raftmq://admin/operator".to_string()]);

        let again = ensure(&names(), 3, Some(&first.material), t0 + Duration::days(1))?;
        assert!(again.issued.is_empty(), "{:?}", again.issued);
        assert_eq!(again.material, first.material);

        // Scale to 5: two more, the rest kept; back to 3: all five kept.
        let five = ensure(&names(), 5, Some(&first.material), t0)?;
        assert_eq!(five.issued.len(), 2, "{:?}", five.issued);
        assert_eq!(five.material.nodes[&1], first.material.nodes[&1]);
        let three = ensure(&names(), 3, Some(&five.material), t0)?;
        assert!(three.issued.is_empty());
        assert_eq!(three.material.nodes.len(), 5);

        // Node 2's slot holding node 3's certificate is reissued.
        let mut swapped = first.material.clone();
        let n3 = swapped.nodes[&3].clone();
        swapped.nodes.insert(2, n3);
        let fixed = ensure(&names(), 3, Some(&swapped), t0)?;
        assert_eq!(fixed.issued.len(), 1, "{:?}", fixed.issued);
        assert!(fixed.issued[0].contains("raftmq://node/2"));

        // Late in life: everything renewed under the same CA.
        let late = ensure(&names(), 3, Some(&first.material), t0 + Duration::days(600))?;
        assert_eq!(late.material.ca, first.material.ca);
        assert_eq!(late.issued.len(), 4, "{:?}", late.issued);
        Ok(())
    }
}
