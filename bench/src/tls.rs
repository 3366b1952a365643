//! Optional TLS for the generator's connections (`--tls-ca`), to measure
//! what a TLS listener costs the broker. rustls with ring, as the broker.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
pub type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

static CONNECTOR: OnceLock<(TlsConnector, ServerName<'static>)> = OnceLock::new();

/// Every later connection goes through TLS, trusting `ca` for `name`.
pub fn init(ca: &Path, name: &str) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_owned())?;
    let _ = CONNECTOR.set((TlsConnector::from(Arc::new(config)), name));
    Ok(())
}

/// The stream's two halves, through TLS if [`init`] was called.
pub async fn split(stream: TcpStream) -> anyhow::Result<(ReadHalf, WriteHalf)> {
    match CONNECTOR.get() {
        None => {
            let (r, w) = stream.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Some((connector, name)) => {
            let tls = connector.connect(name.clone(), stream).await?;
            let (r, w) = tokio::io::split(tls);
            Ok((Box::new(r), Box::new(w)))
        }
    }
}
