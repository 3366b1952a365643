//! How `raftmq pub/sub` reach the broker: plain TCP, TLS with rustls
//! (`--cafile`, `--cert`/`--key`, `--insecure`), or TLS-PSK with OpenSSL
//! (`--psk`/`--psk-identity`), like the broker's own listeners.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls_pki_types::pem::PemObject;

use super::args::ConnectArgs;

/// Where rumqttc connects.
pub enum Route {
    Tcp,
    Tls(Arc<ClientConfig>),
    /// A Unix socket in a private directory; behind it, the TLS-PSK session
    /// to the broker (see [`psk`]).
    #[cfg(feature = "psk")]
    Psk(psk::Bridge),
}

impl Route {
    pub async fn open(args: &ConnectArgs) -> anyhow::Result<Route> {
        let tls = &args.tls;
        if let (Some(key), Some(identity)) = (&tls.psk, &tls.psk_identity) {
            #[cfg(feature = "psk")]
            return Ok(Route::Psk(
                psk::Bridge::open(&args.host, args.port(), identity, key).await?,
            ));
            #[cfg(not(feature = "psk"))]
            {
                let _ = (key, identity);
                anyhow::bail!("this raftmq was built without TLS-PSK (the `psk` feature)");
            }
        }
        match &tls.cafile {
            Some(ca) => Ok(Route::Tls(Arc::new(tls_config(
                ca,
                tls.cert.as_deref().zip(tls.key.as_deref()),
                tls.insecure,
            )?))),
            None => Ok(Route::Tcp),
        }
    }
}

pub(crate) fn tls_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    insecure: bool,
) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("{}: not a PEM certificate", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: unusable CA certificate", ca.display()))?;
    }
    anyhow::ensure!(!roots.is_empty(), "{}: no certificate in it", ca.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("cannot build the certificate verifier")?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyHostName(verifier)))
    } else {
        builder.with_webpki_verifier(verifier)
    };
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read the certificate {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read the key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key do not go together")?
        }
    })
}

/// `--insecure`: the chain must still lead to --cafile; only the host name
/// is not compared (mosquitto's meaning of the option).
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the
        // chain itself was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The Unix socket path rumqttc is pointed at (PSK only).
pub fn unix_path(route: &Route) -> Option<PathBuf> {
    match route {
        #[cfg(feature = "psk")]
        Route::Psk(bridge) => Some(bridge.path.clone()),
        _ => None,
    }
}

#[cfg(feature = "psk")]
pub mod psk {
    //! rumqttc speaks TLS through rustls only, and rustls has no external
    //! PSK (rustls issue #174), nor does rumqttc take a ready stream. So
    //! the TLS-PSK session is made here with OpenSSL, as mosquitto's
    //! clients do, and rumqttc reaches it through its Unix-socket
    //! transport: a socket in a fresh 0700 directory, accepted once, the
    //! bytes copied both ways.

    use std::path::PathBuf;
    use std::pin::Pin;

    use anyhow::Context;
    use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode, SslVersion};
    use tokio::net::{TcpStream, UnixListener};
    use tokio_openssl::SslStream;

    use crate::listener::psk::decode_key;

    pub struct Bridge {
        pub path: PathBuf,
        // Removed (with the socket) when the bridge goes.
        _dir: tempfile::TempDir,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Bridge {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Bridge {
        /// Handshakes first, so that a wrong key or identity is reported
        /// as what it is rather than as an MQTT error.
        pub async fn open(
            host: &str,
            port: u16,
            identity: &str,
            key_hex: &str,
        ) -> anyhow::Result<Bridge> {
            let key = decode_key(key_hex).map_err(|e| anyhow::anyhow!("--psk: {e}"))?;
            let mut tls = handshake(host, port, identity.as_bytes().to_vec(), key).await?;
            let dir = tempfile::Builder::new()
                .prefix("raftmq-psk-")
                .tempdir()
                .context("cannot make a private directory for the TLS-PSK socket")?;
            let path = dir.path().join("mqtt.sock");
            let listener = UnixListener::bind(&path)
                .with_context(|| format!("cannot listen on {}", path.display()))?;
            let task = tokio::spawn(async move {
                if let Ok((mut local, _)) = listener.accept().await {
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut tls).await;
                }
            });
            Ok(Bridge {
                path,
                _dir: dir,
                task,
            })
        }
    }

    pub(crate) async fn handshake(
        host: &str,
        port: u16,
        identity: Vec<u8>,
        key: Vec<u8>,
    ) -> anyhow::Result<SslStream<TcpStream>> {
        let mut b = SslContext::builder(SslMethod::tls_client())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        // TLS 1.2's PSK suites; TLS 1.3 uses the same callback.
        b.set_cipher_list("PSK")?;
        // A PSK handshake has no certificate to verify.
        b.set_verify(SslVerifyMode::NONE);
        b.set_psk_client_callback(move |_ssl, _hint, id_out, key_out| {
            // The identity is written NUL-terminated.
            if identity.len() >= id_out.len() || key.len() > key_out.len() {
                return Ok(0);
            }
            id_out[..identity.len()].copy_from_slice(&identity);
            id_out[identity.len()] = 0;
            key_out[..key.len()].copy_from_slice(&key);
            Ok(key.len())
        });
        let ctx = b.build();
        let tcp = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let mut stream = SslStream::new(Ssl::new(&ctx)?, tcp)?;
        Pin::new(&mut stream).connect().await.with_context(|| {
            format!("TLS-PSK handshake with {host}:{port} failed (wrong key or identity?)")
        })?;
        Ok(stream)
    }
}
