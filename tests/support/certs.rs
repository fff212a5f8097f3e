//! Certificates for one control plane, generated in-process. Every certificate is X.509 v3
//! (rcgen only writes v3): rustls refuses v1 client certificates, which kubectl would hide.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Where the files went, plus the PEM the in-memory client config needs.
pub struct Certs {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

/// The admin identity: `system:masters` bypasses RBAC, so tests can set anything up and
/// impersonate less privileged users.
pub const ADMIN_USER: &str = "crawler-admin";

/// Writes a CA, the apiserver's serving pair, the admin client pair and the service-account
/// key pair into `dir`. All keys are ECDSA P-256 (PKCS#8), which kube-apiserver accepts for
/// serving, client auth and `--service-account-{key,signing-key}-file`.
pub fn generate(dir: &Path) -> Certs {
    let ca_key = key();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "crawler-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("self-signing the test CA");
    let issuer = Issuer::from_params(&ca, &ca_key);

    let serving_key = key();
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        "localhost".to_owned(),
    ])
    .expect("serving certificate SANs");
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .expect("signing the apiserver serving certificate");

    let admin_key = key();
    let mut admin = CertificateParams::default();
    admin
        .distinguished_name
        .push(DnType::CommonName, ADMIN_USER);
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin
        .signed_by(&admin_key, &issuer)
        .expect("signing the admin client certificate");

    let sa_key = key();
    let (admin_cert_pem, admin_key_pem) = (admin_cert.pem(), admin_key.serialize_pem());
    // The admin pair goes to disk too, for poking at the apiserver with curl by hand.
    write(dir, "admin.crt", &admin_cert_pem);
    write(dir, "admin.key", &admin_key_pem);
    Certs {
        ca_cert: write(dir, "ca.crt", &ca_cert.pem()),
        serving_cert: write(dir, "apiserver.crt", &serving_cert.pem()),
        serving_key: write(dir, "apiserver.key", &serving_key.serialize_pem()),
        sa_key: write(dir, "sa.key", &sa_key.serialize_pem()),
        sa_pub: write(dir, "sa.pub", &sa_key.public_key_pem()),
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        admin_cert_pem,
        admin_key_pem,
    }
}

fn key() -> KeyPair {
    KeyPair::generate().expect("generating an ECDSA P-256 key")
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// A CA and a PostgreSQL server's pair signed by it, for the result store's TLS tests.
pub struct DatabaseCerts {
    /// The CA's certificate: what `sslrootcert` / `--database-ca-file` name.
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Writes a CA `db-ca.crt` and a server pair for `names` (host names or IP addresses, the
/// certificate's subject alternative names) into `dir`.
pub fn database_server(dir: &Path, names: &[&str]) -> DatabaseCerts {
    let (ca_key, ca) = ca_params("crawler-test-database-ca");
    let ca_cert = ca
        .self_signed(&ca_key)
        .expect("self-signing the database CA");
    let issuer = Issuer::from_params(&ca, &ca_key);
    let server_key = key();
    let mut server =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("database server certificate SANs");
    server
        .distinguished_name
        .push(DnType::CommonName, "postgres");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .expect("signing the database server certificate");
    DatabaseCerts {
        ca_cert: write(dir, "db-ca.crt", &ca_cert.pem()),
        server_cert: write(dir, "db-server.crt", &server_cert.pem()),
        server_key: write(dir, "db-server.key", &server_key.serialize_pem()),
    }
}

/// A CA of its own (that signed nothing a test server serves), written to `dir/<name>.crt`.
pub fn unrelated_ca(dir: &Path, name: &str) -> PathBuf {
    let (ca_key, ca) = ca_params(name);
    let cert = ca.self_signed(&ca_key).expect("self-signing a CA");
    write(dir, &format!("{name}.crt"), &cert.pem())
}

fn ca_params(name: &str) -> (KeyPair, CertificateParams) {
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (key(), ca)
}
