//! TLS via rustls (ring provider; TLS 1.2 and 1.3 only): mosquitto's
//! certfile / keyfile / cafile / require_certificate, the client
//! certificate's CN as identity, and certificates reloaded from disk
//! without a restart (new handshakes use the new files).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The files a TLS listener is built from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub cafile: Option<PathBuf>,
    pub require_certificate: bool,
}

impl TlsFiles {
    pub fn from_listener(l: &ListenerConfig) -> Option<TlsFiles> {
        Some(TlsFiles {
            certfile: l.certfile.clone()?,
            keyfile: l.keyfile.clone()?,
            cafile: l.cafile.clone(),
            require_certificate: l.require_certificate,
        })
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.certfile.clone(), self.keyfile.clone()];
        v.extend(self.cafile.clone());
        v
    }

    /// Reads the files and builds a server configuration.
    pub fn build(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.certfile)
            .map_err(|e| file_error(&self.certfile, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(&self.certfile, e))?;
        if certs.is_empty() {
            return Err(file_error(&self.certfile, "no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.keyfile)
            .map_err(|e| file_error(&self.keyfile, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?;
        let builder = match &self.cafile {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_error(ca, e))? {
                    roots
                        .add(cert.map_err(|e| file_error(ca, e))?)
                        .map_err(|e| file_error(ca, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.require_certificate {
                    verifier.build()
                } else {
                    verifier.allow_unauthenticated().build()
                }
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// A TLS acceptor whose configuration can be swapped while it runs.
pub struct ReloadableTls {
    files: TlsFiles,
    alpn: Vec<&'static [u8]>,
    current: RwLock<TlsAcceptor>,
}

impl ReloadableTls {
    pub fn new(files: TlsFiles, alpn: Vec<&'static [u8]>) -> Result<Arc<Self>, TlsError> {
        let config = files.build(&alpn)?;
        Ok(Arc::new(ReloadableTls {
            files,
            alpn,
            current: RwLock::new(TlsAcceptor::from(Arc::new(config))),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Rebuilds from the files; on error the running configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.build(&self.alpn)?;
        *self.current.write() = TlsAcceptor::from(Arc::new(config));
        Ok(())
    }

    /// Performs the handshake; returns the stream and the client
    /// certificate's common name, if it presented one.
    pub async fn accept(
        &self,
        socket: TcpStream,
    ) -> std::io::Result<(TlsStream<TcpStream>, Option<String>)> {
        let acceptor = self.current.read().clone();
        let stream = acceptor.accept(socket).await?;
        let cn = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| common_name(der));
        Ok((stream, cn))
    }
}

/// The subject CN of a DER certificate.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

impl<IO> crate::connection::Transport for TlsStream<IO> where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}
