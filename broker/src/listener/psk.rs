//! TLS-PSK (mosquitto's `psk_file` / `psk_hint`). rustls has no external
//! PSK support (rustls issue #174), so this listener alone uses OpenSSL;
//! the `psk` cargo feature (on by default) builds it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslVersion};
use parking_lot::RwLock;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::auth::AuthFileError;

#[derive(Debug, thiserror::Error)]
pub enum PskError {
    #[error(transparent)]
    File(#[from] AuthFileError),
    #[error("OpenSSL: {0}")]
    Ssl(#[from] openssl::error::ErrorStack),
}

/// Identities and their keys.
pub type PskKeys = HashMap<String, Vec<u8>>;

/// Parses mosquitto's `identity:hexkey` lines.
pub fn parse_psk_file(text: &str, path: &Path) -> Result<PskKeys, AuthFileError> {
    let mut keys = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: &str| AuthFileError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            message: message.to_string(),
        };
        let (id, hex) = line
            .split_once(':')
            .ok_or_else(|| err("expected `identity:hexkey`"))?;
        if id.is_empty() {
            return Err(err("empty identity"));
        }
        let key = decode_key(hex).map_err(err)?;
        keys.insert(id.to_string(), key);
    }
    Ok(keys)
}

/// A PSK as mosquitto writes it: an even number of hex digits (the
/// listener's file and `raftmq pub/sub --psk` both take this).
pub fn decode_key(hex: &str) -> Result<Vec<u8>, &'static str> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err("the key must be an even number of hex digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|j| u8::from_str_radix(hex.get(j..j + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| "the key is not hexadecimal")
}

fn load(path: &Path) -> Result<PskKeys, AuthFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_psk_file(&text, path)
}

// The one-line binding the openssl crate lacks.
extern "C" {
    fn SSL_CTX_use_psk_identity_hint(
        ctx: *mut openssl_sys::SSL_CTX,
        hint: *const std::os::raw::c_char,
    ) -> std::os::raw::c_int;
}

pub struct PskAcceptor {
    path: PathBuf,
    keys: Arc<RwLock<PskKeys>>,
    context: SslContext,
    identity: Index<Ssl, String>,
}

impl PskAcceptor {
    pub fn new(path: PathBuf, hint: Option<&str>) -> Result<Arc<Self>, PskError> {
        let keys = Arc::new(RwLock::new(load(&path)?));
        let identity = Ssl::new_ex_index::<String>()?;
        let mut b = SslContext::builder(SslMethod::tls_server())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        b.set_cipher_list("PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305")?;
        let lookup = keys.clone();
        b.set_psk_server_callback(move |ssl, id, out| {
            let id = id
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default()
                .to_string();
            let keys = lookup.read();
            match keys.get(&id) {
                Some(key) if key.len() <= out.len() => {
                    out[..key.len()].copy_from_slice(key);
                    ssl.set_ex_data(identity, id);
                    Ok(key.len())
                }
                // Length 0 makes the handshake fail: unknown identity.
                _ => Ok(0),
            }
        });
        if let Some(hint) = hint {
            let c = std::ffi::CString::new(hint).map_err(|_| {
                PskError::File(AuthFileError::Line {
                    path: path.clone(),
                    line: 0,
                    message: "psk_hint contains a NUL byte".into(),
                })
            })?;
            // SAFETY: `b` owns a valid SSL_CTX and `c` outlives the call;
            // OpenSSL copies the hint.
            let ok = unsafe { SSL_CTX_use_psk_identity_hint(b.as_ptr(), c.as_ptr()) };
            if ok != 1 {
                return Err(PskError::Ssl(openssl::error::ErrorStack::get()));
            }
        }
        Ok(Arc::new(PskAcceptor {
            path,
            keys,
            context: b.build(),
            identity,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the PSK file; on error the old keys stay in force.
    pub fn reload(&self) -> Result<(), AuthFileError> {
        let keys = load(&self.path)?;
        *self.keys.write() = keys;
        Ok(())
    }

    /// Handshakes; returns the stream and the client's PSK identity.
    pub async fn accept(
        &self,
        socket: TcpStream,
    ) -> std::io::Result<(SslStream<TcpStream>, Option<String>)> {
        let ssl = Ssl::new(&self.context).map_err(std::io::Error::other)?;
        let mut stream = SslStream::new(ssl, socket).map_err(std::io::Error::other)?;
        Pin::new(&mut stream)
            .accept()
            .await
            .map_err(std::io::Error::other)?;
        let identity = stream.ssl().ex_data(self.identity).cloned();
        Ok((stream, identity))
    }
}

impl<S> crate::connection::Transport for SslStream<S> where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_file_lines() {
        let k = parse_psk_file("# c\ngw1:00ff10\n\ngw2:DEADbeef\n", Path::new("p")).unwrap();
        assert_eq!(k["gw1"], vec![0x00, 0xff, 0x10]);
        assert_eq!(k["gw2"], vec![0xde, 0xad, 0xbe, 0xef]);
        let e = parse_psk_file("a:0g\n", Path::new("/p")).unwrap_err();
        assert!(e.to_string().starts_with("/p:1:"), "{e}");
        assert!(parse_psk_file("a:abc\n", Path::new("p")).is_err());
        assert!(parse_psk_file("nokey\n", Path::new("p")).is_err());
    }
}
