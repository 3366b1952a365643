//! `raftmq cluster certs`: the certificates a cluster outside Kubernetes
//! needs for its authenticated cluster plane (the operator issues its own):
//! a CA, one certificate per node naming its node id
//! (`raftmq://node/<id>`), and an admin certificate for the CLI
//! (`raftmq://admin/<name>`). Node certificates serve and call (server and
//! client auth); the admin certificate only calls.
//!
//! A CA already in the directory (`ca.crt` + `ca.key`) is kept and signs
//! the new certificates, so nodes can be added later with the same command.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use raftmq_shared::certs::{self as recipe, NewCa};
use raftmq_shared::identity::Identity;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0:?} is not a usable DNS name")]
    DnsName(String),
    #[error("admin name {0:?}: use letters, digits, '.', '_' or '-' (at most 64)")]
    AdminName(String),
    #[error("--nodes must be at least 1")]
    NoNodes,
    #[error(
        "{path}: the CA certificate is there without its key (ca.key), or the other way round"
    )]
    HalfCa { path: PathBuf },
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct Request {
    pub out: PathBuf,
    /// Node certificates for node ids 1..=nodes.
    pub nodes: u64,
    /// Host names every node certificate covers besides `localhost`
    /// (wildcards allowed: `*.mq.example`).
    pub dns: Vec<String>,
    /// Addresses every node certificate covers besides 127.0.0.1 and ::1.
    pub ips: Vec<IpAddr>,
    /// The admin certificate's name (`raftmq://admin/<name>`).
    pub admin: String,
    /// Validity of node and admin certificates.
    pub days: i64,
}

/// The files written, for the caller to print.
#[derive(Debug)]
pub struct Issued {
    pub ca_reused: bool,
    pub files: Vec<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `text` to `path`; private keys readable by the owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), CertsError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// The CA in `out`, or a new one written there.
fn ca(out: &Path, now: OffsetDateTime) -> Result<(Issuer<'static, KeyPair>, bool), CertsError> {
    let (crt, key) = (out.join("ca.crt"), out.join("ca.key"));
    match (crt.exists(), key.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
            let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
            Ok((recipe::issuer(&pem, &key_pem)?, true))
        }
        (false, false) => {
            let NewCa { pem, issuer } = recipe::new_ca("raftmq cluster CA", now)?;
            write(&crt, &pem, false)?;
            write(&key, &issuer.key().serialize_pem(), true)?;
            Ok((issuer, false))
        }
        _ => Err(CertsError::HalfCa { path: crt }),
    }
}

fn leaf(
    identity: &Identity,
    names: &[SanType],
    eku: Vec<ExtendedKeyUsagePurpose>,
    issuer: &Issuer<'_, KeyPair>,
    now: OffsetDateTime,
    days: i64,
) -> Result<(String, String), CertsError> {
    let uri = identity
        .uri()
        .try_into()
        .map_err(|_| CertsError::AdminName(identity.uri()))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.subject_alt_names.extend(names.iter().cloned());
    let lifetime = Duration::days(days);
    Ok(recipe::sign_leaf(
        params,
        &identity.uri(),
        eku,
        issuer,
        now,
        lifetime,
    )?)
}

/// The names every node certificate covers.
fn node_names(r: &Request) -> Result<Vec<SanType>, CertsError> {
    let mut dns = vec!["localhost".to_string()];
    dns.extend(r.dns.iter().cloned());
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    ips.extend(r.ips.iter().copied());
    ips.sort();
    ips.dedup();
    let mut names = Vec::new();
    for d in dns {
        let name = d.clone().try_into().map_err(|_| CertsError::DnsName(d))?;
        names.push(SanType::DnsName(name));
    }
    names.extend(ips.into_iter().map(SanType::IpAddress));
    Ok(names)
}

/// Issues what `r` asks for into `r.out` (created if missing).
pub fn issue(r: &Request) -> Result<Issued, CertsError> {
    if r.nodes == 0 {
        return Err(CertsError::NoNodes);
    }
    let admin = Identity::admin(&r.admin).ok_or_else(|| CertsError::AdminName(r.admin.clone()))?;
    let names = node_names(r)?;
    std::fs::create_dir_all(&r.out).map_err(io(&r.out))?;
    let now = OffsetDateTime::now_utc();
    let (issuer, ca_reused) = ca(&r.out, now)?;
    let mut files = vec![r.out.join("ca.crt")];
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut put = |stem: String, (crt, key): (String, String)| -> Result<(), CertsError> {
        let (c, k) = (
            r.out.join(format!("{stem}.crt")),
            r.out.join(format!("{stem}.key")),
        );
        write(&c, &crt, false)?;
        write(&k, &key, true)?;
        files.extend([c, k]);
        Ok(())
    };
    for id in 1..=r.nodes {
        let pair = leaf(
            &Identity::Node(id),
            &names,
            both.clone(),
            &issuer,
            now,
            r.days,
        )?;
        put(format!("node-{id}"), pair)?;
    }
    let client = vec![ExtendedKeyUsagePurpose::ClientAuth];
    put(
        "admin".into(),
        leaf(&admin, &[], client, &issuer, now, r.days)?,
    )?;
    Ok(Issued { ca_reused, files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn uris(pem: &str) -> Vec<String> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        let cert = p.parse_x509().expect("x509");
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("has san");
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nodes_and_admin_carry_their_identity_and_the_ca_is_kept() -> Result<(), CertsError> {
        let dir = tempfile::tempdir().map_err(io(Path::new("tmp")))?;
        let r = Request {
            out: dir.path().join("certs"),
            nodes: 2,
            dns: vec!["*.mq.example".into()],
            ips: vec![[10, 0, 0, 7].into()],
            admin: "ops".into(),
            days: 30,
        };
        let first = issue(&r)?;
        assert!(!first.ca_reused);
        assert_eq!(first.files.len(), 1 + 2 * 3);
        let read = |f: &str| std::fs::read_to_string(r.out.join(f)).expect("read");
        assert_eq!(uris(&read("node-2.crt")), vec!["raftmq://node/2"]);
        assert_eq!(uris(&read("admin.crt")), vec!["raftmq://admin/ops"]);
        let ca = read("ca.crt");
        let again = issue(&Request {
            nodes: 3,
            ..r.clone()
        })?;
        assert!(again.ca_reused);
        assert_eq!(read("ca.crt"), ca);
        assert_eq!(uris(&read("node-3.crt")), vec!["raftmq://node/3"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(r.out.join("node-1.key"))
                .map_err(io(&r.out))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are private");
        }
        Ok(())
    }

    #[test]
    fn bad_names_are_refused() {
        let r = Request {
            out: PathBuf::from("/nonexistent"),
            nodes: 1,
            dns: vec![],
            ips: vec![],
            admin: "a b".into(),
            days: 1,
        };
        assert!(matches!(issue(&r), Err(CertsError::AdminName(_))));
        assert!(matches!(
            issue(&Request { nodes: 0, ..r }),
            Err(CertsError::NoNodes)
        ));
    }
}
