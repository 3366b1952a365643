//! Mutual TLS between nodes (and from the CLI and the operator to the
//! Admin service): every node presents its own certificate and accepts
//! only peers whose certificate the cluster CA signed; what each may call
//! is then decided by the identity the certificate names (`auth`). Enabled when
//! `[cluster]` names all three of `certfile`, `keyfile` and `cafile`
//! (the operator and `raftmq cluster certs` issue them); read at start.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::ClusterConfig;

#[derive(Clone)]
pub struct PeerTls {
    identity: Identity,
    ca: Certificate,
    files: crate::listener::tls::TlsFiles,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cluster {what} {}", path.display()))
}

impl PeerTls {
    /// `None` when the cluster runs in plain text (no files configured).
    /// `{node_id}` in a path is `node_id`.
    pub fn from_config(c: &ClusterConfig, node_id: u64) -> anyhow::Result<Option<PeerTls>> {
        let mine = |p: &PathBuf| {
            PathBuf::from(
                p.to_string_lossy()
                    .replace("{node_id}", &node_id.to_string()),
            )
        };
        match (&c.certfile, &c.keyfile, &c.cafile) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(PeerTls::from_files(
                &mine(cert),
                &mine(key),
                &mine(ca),
            )?)),
            _ => anyhow::bail!(
                "cluster TLS needs all of certfile, keyfile and cafile (or none of them)"
            ),
        }
    }

    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<PeerTls> {
        Ok(PeerTls {
            identity: Identity::from_pem(read(cert, "certfile")?, read(key, "keyfile")?),
            ca: Certificate::from_pem(read(ca, "cafile")?),
            files: crate::listener::tls::TlsFiles {
                certfile: cert.to_path_buf(),
                keyfile: key.to_path_buf(),
                cafile: Some(ca.to_path_buf()),
                // A caller without a certificate completes the handshake
                // and is answered Unauthenticated by every service (see
                // `peer`); one from another CA does not.
                require_certificate: false,
            },
        })
    }

    /// The server side: our certificate; a client certificate, if any, must
    /// chain to the cluster CA. HTTP/2 only (gRPC).
    pub fn acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let config = self
            .files
            .build(&[b"h2"])
            .context("cluster TLS: certificate, key or CA")?;
        Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
    }

    /// The client side: the peer's certificate must be signed by the
    /// cluster CA (and name the host we dial); ours goes with every call.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
    }
}
