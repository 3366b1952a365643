//! Operator-issued TLS: a per-cluster CA and a server certificate (also
//! used as the peer certificate, so it carries both server and client
//! auth) whose SANs cover the client Service, the headless Service and every
//! pod. Certificates are reissued when a third of their lifetime is left,
//! when the SANs no longer cover what the cluster needs, or when the CA
//! changed. The Secrets are updated in place; the broker reloads them, so
//! no pod restarts.

use raftmq_shared::certs as recipe;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

use crate::render::TlsMaterial;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("a certificate just issued could not be read back")]
    Unreadable,
}

/// Why a certificate was (re)issued; `None` fields mean kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertOutcome {
    pub material: TlsMaterial,
    /// Why a new CA was made (`None`: the existing one was kept).
    pub ca_issued: Option<String>,
    /// Why a new server certificate was issued.
    pub server_issued: Option<String>,
    /// The server certificate's expiry.
    pub not_after: OffsetDateTime,
    /// When the server certificate is due for renewal.
    pub renew_at: OffsetDateTime,
}

struct Parsed {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    dns: Vec<String>,
    issuer: String,
    der: Vec<u8>,
}

fn parse(pem: &str) -> Option<Parsed> {
    let (_, p) = parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                // An address among the extra names becomes an IP SAN
                // (rcgen); it covers the name as written.
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    dns.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Some(Parsed {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        dns,
        issuer: cert.issuer().to_string(),
        der: p.contents.clone(),
    })
}

/// Renewal point: two thirds into the validity window.
pub(crate) fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_after - (not_after - not_before) / 3
}

pub(crate) fn signed_by_ca(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(cert_der),
        x509_parser::parse_x509_certificate(ca_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

fn new_ca(cluster: &str, now: OffsetDateTime) -> Result<(String, String), CertError> {
    new_ca_named(&format!("raftmq CA {cluster}"), now)
}

/// A self-signed CA named `common_name` (see [`recipe::new_ca`]): its PEM
/// certificate and key. The listener CA here and the peer CA
/// (`peer_certs.rs`) are both made so.
pub(crate) fn new_ca_named(
    common_name: &str,
    now: OffsetDateTime,
) -> Result<(String, String), CertError> {
    let ca = recipe::new_ca(common_name, now)?;
    Ok((ca.pem, ca.issuer.key().serialize_pem()))
}

fn new_server(
    common_name: &str,
    dns: &[String],
    hours: i64,
    ca_crt: &str,
    ca_key: &str,
    now: OffsetDateTime,
) -> Result<(String, String), CertError> {
    let issuer = recipe::issuer(ca_crt, ca_key)?;
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let params = CertificateParams::new(dns.to_vec())?;
    Ok(recipe::sign_leaf(
        params,
        common_name,
        both,
        &issuer,
        now,
        Duration::hours(hours),
    )?)
}

/// Keeps what is still good in `existing` and issues what is not.
pub fn ensure(
    cluster: &str,
    common_name: &str,
    dns: &[String],
    hours: i64,
    existing: Option<&TlsMaterial>,
    now: OffsetDateTime,
) -> Result<CertOutcome, CertError> {
    // The CA.
    let old_ca = existing.and_then(|m| {
        let p = parse(&m.ca_crt)?;
        KeyPair::from_pem(&m.ca_key).ok()?;
        Some((m.ca_crt.clone(), m.ca_key.clone(), p))
    });
    let (ca_crt, ca_key, ca_issued) = match old_ca {
        Some((crt, key, p)) if renew_at(p.not_before, p.not_after) > now => (crt, key, None),
        Some(_) => {
            let (c, k) = new_ca(cluster, now)?;
            (
                c,
                k,
                Some("the CA is in the last third of its lifetime".to_string()),
            )
        }
        None => {
            let (c, k) = new_ca(cluster, now)?;
            let why = if existing.is_some() {
                "the stored CA could not be read"
            } else {
                "no CA yet"
            };
            (c, k, Some(why.to_string()))
        }
    };
    let ca_der = parse(&ca_crt).map(|p| p.der).unwrap_or_default();

    // The server certificate.
    let keep = existing.and_then(|m| {
        let p = parse(&m.tls_crt)?;
        KeyPair::from_pem(&m.tls_key).ok()?;
        Some((m.tls_crt.clone(), m.tls_key.clone(), p))
    });
    let reason = match &keep {
        None if existing.is_some() => Some("the stored certificate could not be read".into()),
        None => Some("no certificate yet".into()),
        Some(_) if ca_issued.is_some() => Some("the CA changed".into()),
        Some((_, _, p)) if !signed_by_ca(&p.der, &ca_der) || p.issuer.is_empty() => {
            Some("the certificate is not signed by the cluster CA".into())
        }
        Some((_, _, p)) if renew_at(p.not_before, p.not_after) <= now => Some(format!(
            "the certificate expires at {} (a third of its lifetime left)",
            p.not_after
        )),
        Some((_, _, p)) => dns
            .iter()
            .find(|d| !p.dns.contains(d))
            .map(|d| format!("the certificate does not cover {d}")),
    };
    let (tls_crt, tls_key) = match (&reason, keep) {
        (None, Some((crt, key, _))) => (crt, key),
        _ => new_server(common_name, dns, hours, &ca_crt, &ca_key, now)?,
    };
    let p = parse(&tls_crt);
    let not_after = p.as_ref().map_or(now, |p| p.not_after);
    let renew = p
        .as_ref()
        .map_or(now, |p| renew_at(p.not_before, p.not_after));
    Ok(CertOutcome {
        material: TlsMaterial {
            ca_crt,
            ca_key,
            tls_crt,
            tls_key,
        },
        ca_issued,
        server_issued: reason,
        not_after,
        renew_at: renew,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns() -> Vec<String> {
        vec!["demo".into(), "*.demo-headless.ns.svc".into()]
    }

    #[test]
    fn issues_then_keeps_then_renews() -> Result<(), CertError> {
        let t0 = OffsetDateTime::now_utc();
        let first = ensure("demo", "demo.ns.svc", &dns(), 90, None, t0)?;
        assert!(first.ca_issued.is_some());
        assert!(first.server_issued.is_some());
        let p = parse(&first.material.tls_crt).ok_or(rcgen::Error::CouldNotParseCertificate)?;
        assert!(p.dns.contains(&"*.demo-headless.ns.svc".to_string()));
        assert!(signed_by_ca(
            &p.der,
            &parse(&first.material.ca_crt)
                .map(|c| c.der)
                .unwrap_or_default()
        ));

        // A day later: nothing to do.
        let again = ensure(
            "demo",
            "demo.ns.svc",
            &dns(),
            90,
            Some(&first.material),
            t0 + Duration::hours(24),
        )?;
        assert_eq!(again.material, first.material);
        assert!(again.ca_issued.is_none() && again.server_issued.is_none());

        // 61 hours in (less than a third of 90h left): renewed, CA kept.
        let later = ensure(
            "demo",
            "demo.ns.svc",
            &dns(),
            90,
            Some(&first.material),
            t0 + Duration::hours(61),
        )?;
        assert!(later.ca_issued.is_none());
        assert!(later.server_issued.is_some());
        assert_eq!(later.material.ca_crt, first.material.ca_crt);
        assert_ne!(later.material.tls_crt, first.material.tls_crt);

        // A new SAN needed: reissued.
        let mut more = dns();
        more.push("mqtt.example.com".into());
        let wider = ensure("demo", "demo.ns.svc", &more, 90, Some(&first.material), t0)?;
        assert!(wider
            .server_issued
            .as_deref()
            .is_some_and(|r| r.contains("mqtt.example.com")));
        Ok(())
    }

    #[test]
    fn an_address_among_the_names_is_kept_not_reissued() -> Result<(), CertError> {
        let t0 = OffsetDateTime::now_utc();
        let mut names = dns();
        names.push("127.0.0.1".into());
        let first = ensure("demo", "demo.ns.svc", &names, 90, None, t0)?;
        let again = ensure("demo", "demo.ns.svc", &names, 90, Some(&first.material), t0)?;
        assert_eq!(again.server_issued, None);
        assert_eq!(again.material, first.material);
        Ok(())
    }

    #[test]
    fn garbage_is_replaced() -> Result<(), CertError> {
        let junk = TlsMaterial {
            ca_crt: "nope".into(),
            ca_key: "nope".into(),
            tls_crt: "nope".into(),
            tls_key: "nope".into(),
        };
        let out = ensure("x", "x", &dns(), 48, Some(&junk), OffsetDateTime::now_utc())?;
        assert!(out.ca_issued.is_some() && out.server_issued.is_some());
        Ok(())
    }
}
