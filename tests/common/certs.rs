//! Test certificates, made fresh by every test that needs them (rcgen, in
//! memory, written to the test's own directory): a CA, server certificates
//! for `localhost` / 127.0.0.1 and client certificates with a chosen CN.
//! Nothing with a private key is ever checked in.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), what clients and the broker trust.
    pub pem: String,
}

/// A certificate and its private key, both PEM.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// Where [`Pair::write`] put the files.
pub struct PairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "raftmq tests");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, mut params: CertificateParams, cn: &str, eku: ExtendedKeyUsagePurpose) -> Pair {
        params.extended_key_usages = vec![eku];
        self.sign_with(params, cn)
    }

    fn sign_with(&self, mut params: CertificateParams, cn: &str) -> Pair {
        params.distinguished_name = dn(cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Pair {
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server names");
        self.sign(params, "localhost", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate for other names only (a certificate that does
    /// not name the host the test connects to).
    pub fn server_for(&self, names: &[&str]) -> Pair {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let params = CertificateParams::new(names).expect("server names");
        self.sign(params, "elsewhere", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A cluster node's certificate: server and client at once (nodes call
    /// each other), for 127.0.0.1 to 127.0.0.5 where the test nodes live.
    pub fn peer(&self) -> Pair {
        let mut names = vec!["localhost".to_string()];
        names.extend((1..=5).map(|i| format!("127.0.0.{i}")));
        let mut params = CertificateParams::new(names).expect("peer names");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_with(params, "raftmq-node")
    }

    /// A client certificate whose subject CN is `cn`.
    pub fn client(&self, cn: &str) -> Pair {
        self.sign(
            CertificateParams::default(),
            cn,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// Writes the CA certificate to `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).expect("write CA certificate");
        path
    }
}

impl Pair {
    /// Writes `dir/<stem>.crt` and `dir/<stem>.key`.
    pub fn write(&self, dir: &Path, stem: &str) -> PairFiles {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert).expect("write certificate");
        std::fs::write(&key, &self.key).expect("write key");
        PairFiles { cert, key }
    }
}
