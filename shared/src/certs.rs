//! How a raftmq CA and the certificates it signs are made, for both
//! issuers: the operator (per cluster, in Kubernetes) and
//! `raftmq cluster certs` (outside it). One recipe, so that a certificate
//! from either passes the same checks: the subject names the organisation
//! `raftmq`, a CA signs leaves only (path length 0), a leaf signs nothing,
//! and validity starts five minutes back for clock skew between the
//! issuer and the nodes.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A CA's lifetime.
pub const CA_DAYS: i64 = 3650;

/// How far back validity starts: a node whose clock is a little behind the
/// issuer's still accepts a certificate issued just now.
const SKEW: Duration = Duration::minutes(5);

/// A new self-signed CA.
pub struct NewCa {
    /// The certificate, PEM.
    pub pem: String,
    /// What signs with it (its key: [`Issuer::key`]).
    pub issuer: Issuer<'static, KeyPair>,
}

/// The subject of every certificate raftmq issues.
pub fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "raftmq");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A self-signed CA named `common_name`, valid [`CA_DAYS`] from `now`.
pub fn new_ca(common_name: &str, now: OffsetDateTime) -> Result<NewCa, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - SKEW;
    params.not_after = now + Duration::days(CA_DAYS);
    let key = KeyPair::generate()?;
    let pem = params.self_signed(&key)?.pem();
    Ok(NewCa {
        pem,
        issuer: Issuer::new(params, key),
    })
}

/// The CA a PEM certificate and key make.
pub fn issuer(ca_pem: &str, key_pem: &str) -> Result<Issuer<'static, KeyPair>, rcgen::Error> {
    Issuer::from_ca_cert_pem(ca_pem, KeyPair::from_pem(key_pem)?)
}

/// A certificate and key (PEM) for `common_name`, signed by `issuer`,
/// valid `lifetime` from `now`. `params` carries the subject alternative
/// names; `usages` says whether it serves, calls, or both.
pub fn sign_leaf(
    mut params: CertificateParams,
    common_name: &str,
    usages: Vec<ExtendedKeyUsagePurpose>,
    issuer: &Issuer<'_, KeyPair>,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<(String, String), rcgen::Error> {
    params.distinguished_name = subject(common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - SKEW;
    params.not_after = now + lifetime;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leaf the CA signs names its issuer, carries what it was asked
    /// for, and its validity starts before `now`.
    #[test]
    fn a_leaf_is_signed_by_its_ca() -> Result<(), rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca("test CA", now)?;
        let again = issuer(&ca.pem, &ca.issuer.key().serialize_pem())?;
        let params = CertificateParams::new(vec!["node.example".to_string()])?;
        let (pem, key) = sign_leaf(
            params,
            "leaf",
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            &again,
            now,
            Duration::days(1),
        )?;
        assert!(key.contains("PRIVATE KEY"));
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        let cert = p.parse_x509().expect("x509");
        assert!(cert.issuer().to_string().contains("test CA"));
        assert!(cert.subject().to_string().contains("O=raftmq"));
        assert!(cert.validity().not_before.to_datetime() < now);
        let (_, ca_p) = x509_parser::pem::parse_x509_pem(ca.pem.as_bytes()).expect("pem");
        let ca_cert = ca_p.parse_x509().expect("x509");
        assert!(ca_cert.is_ca());
        Ok(())
    }
}
