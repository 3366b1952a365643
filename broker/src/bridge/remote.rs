//! The byte stream to the remote broker: TCP, TLS through rustls (the
//! same verifier as `raftmq pub/sub`), or TLS-PSK through OpenSSL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::peer::Stream;
use crate::client::transport::tls_config;
use crate::config::bridge::{Address, BridgeTls};

/// How long a TCP connect and a TLS handshake may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The transport to one remote address, made once per bridge (files are
/// read at each connection attempt, so renewed certificates are used).
pub async fn open(address: &Address, tls: Option<&BridgeTls>) -> anyhow::Result<Box<dyn Stream>> {
    tokio::time::timeout(CONNECT_TIMEOUT, open_now(address, tls))
        .await
        .with_context(|| format!("{address}: no connection within {CONNECT_TIMEOUT:?}"))?
}

async fn open_now(address: &Address, tls: Option<&BridgeTls>) -> anyhow::Result<Box<dyn Stream>> {
    match tls {
        None => Ok(Box::new(tcp(address).await?)),
        Some(BridgeTls::Certificates {
            cafile,
            certfile,
            keyfile,
            server_name,
            insecure,
        }) => {
            let client = certfile.as_deref().zip(keyfile.as_deref());
            let config = tls_config(cafile, client, *insecure)?;
            let name = server_name.clone().unwrap_or_else(|| address.host.clone());
            let name = ServerName::try_from(name.clone())
                .with_context(|| format!("`{name}` is not a server name"))?;
            let tcp = tcp(address).await?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .with_context(|| format!("{address}: TLS handshake failed"))?;
            Ok(Box::new(stream))
        }
        #[cfg(feature = "psk")]
        Some(BridgeTls::Psk { identity, psk }) => {
            // Read now: a rotated psk_file counts from this connection on.
            let hex = psk.hex().map_err(|e| anyhow::anyhow!("{e}"))?;
            let key =
                crate::listener::psk::decode_key(&hex).map_err(|e| anyhow::anyhow!("psk: {e}"))?;
            let stream = crate::client::transport::psk::handshake(
                &address.host,
                address.port,
                identity.as_bytes().to_vec(),
                key,
            )
            .await?;
            Ok(Box::new(stream))
        }
        #[cfg(not(feature = "psk"))]
        Some(BridgeTls::Psk { .. }) => {
            anyhow::bail!("this raftmq was built without TLS-PSK (the `psk` feature)")
        }
    }
}

async fn tcp(address: &Address) -> anyhow::Result<TcpStream> {
    let tcp = TcpStream::connect((address.host.as_str(), address.port))
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    // Acks are small and latency-bound.
    tcp.set_nodelay(true).ok();
    Ok(tcp)
}
