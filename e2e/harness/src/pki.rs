//! The throw-away PKI of one control plane: a CA, the apiserver's serving certificate, client
//! certificates for the admin, kube-controller-manager, kube-scheduler, the test node's kubelet
//! and the apiserver's calls to that kubelet, and the service-account key pair.
//!
//! Everything is ECDSA P-256: quick to generate and accepted by Go's TLS stack, by kube-rs'
//! rustls and by the apiserver's service-account token signer (ES256).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM-encoded certificate and private key.
#[derive(Clone)]
pub struct CertAndKey {
    /// Certificate in PEM.
    pub cert_pem: String,
    /// PKCS#8 private key in PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    // The key is a credential of the control plane: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The files the components are started with, all below `DIR/pki`.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// CA certificate: trusted by clients for the serving certificate, and by the apiserver
    /// for client certificates.
    pub ca_cert: PathBuf,
    /// Serving certificate of kube-apiserver (IP SAN 127.0.0.1, DNS localhost).
    pub serving_cert: PathBuf,
    /// Key of the serving certificate.
    pub serving_key: PathBuf,
    /// Public key that verifies service-account tokens.
    pub sa_public_key: PathBuf,
    /// Private key that signs service-account tokens.
    pub sa_private_key: PathBuf,
    /// Certificate the apiserver authenticates with to the kubelet.
    pub apiserver_kubelet_client_cert: PathBuf,
    /// Key of that certificate.
    pub apiserver_kubelet_client_key: PathBuf,
}

/// What the kubeconfigs need, in memory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Where the files are.
    pub files: PkiFiles,
    /// CA certificate in PEM.
    pub ca_cert_pem: String,
    /// Client certificate of the cluster admin (CN admin, O system:masters).
    pub admin: CertAndKey,
    /// Client certificate of kube-controller-manager (CN system:kube-controller-manager,
    /// O system:masters, so it needs no RBAC set-up of its own).
    pub controller_manager: CertAndKey,
    /// Client certificate of kube-scheduler (CN system:kube-scheduler, O system:masters).
    pub scheduler: CertAndKey,
    /// Client certificate of the test node's kubelet (CN `system:node:<NODE_NAME>`, O
    /// system:nodes): what the Node authorizer and NodeRestriction admission expect.
    pub kubelet: CertAndKey,
    /// Client certificate the apiserver shows the kubelet (logs, exec); O system:masters, so the
    /// kubelet's webhook authorization allows it.
    pub apiserver_kubelet_client: CertAndKey,
}

/// The name the test node registers under.
pub const NODE_NAME: &str = "e2e-node";

impl Pki {
    /// Generates the PKI and writes its files below `pki_dir` (created if missing).
    pub fn generate(pki_dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(pki_dir)
            .with_context(|| format!("creating the PKI folder {}", pki_dir.display()))?;

        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "e2e-harness control plane CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA")?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let serving = issue(
            &issuer,
            "kube-apiserver",
            None,
            // The service IP 10.0.0.1 and the in-cluster names keep clients that follow the
            // `kubernetes` Service working; loopback is what the tests use.
            vec![
                "127.0.0.1".into(),
                "localhost".into(),
                "10.0.0.1".into(),
                "kubernetes".into(),
                "kubernetes.default".into(),
                "kubernetes.default.svc".into(),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let admin = issue(
            &issuer,
            "admin",
            Some("system:masters"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let controller_manager = issue(
            &issuer,
            "system:kube-controller-manager",
            Some("system:masters"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let scheduler = issue(
            &issuer,
            "system:kube-scheduler",
            Some("system:masters"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let kubelet = issue(
            &issuer,
            &format!("system:node:{NODE_NAME}"),
            Some("system:nodes"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let apiserver_kubelet_client = issue(
            &issuer,
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let sa_key = KeyPair::generate().context("generating the service-account key")?;

        let files = PkiFiles {
            ca_cert: pki_dir.join("ca.crt"),
            serving_cert: pki_dir.join("apiserver.crt"),
            serving_key: pki_dir.join("apiserver.key"),
            sa_public_key: pki_dir.join("sa.pub"),
            sa_private_key: pki_dir.join("sa.key"),
            apiserver_kubelet_client_cert: pki_dir.join("apiserver-kubelet-client.crt"),
            apiserver_kubelet_client_key: pki_dir.join("apiserver-kubelet-client.key"),
        };
        write(&files.ca_cert, &ca_pem)?;
        write(&files.serving_cert, &serving.cert_pem)?;
        crate::kubeconfig::write(&files.serving_key, &serving.key_pem)?;
        write(&files.sa_public_key, &sa_key.public_key_pem())?;
        crate::kubeconfig::write(&files.sa_private_key, &sa_key.serialize_pem())?;
        write(
            &files.apiserver_kubelet_client_cert,
            &apiserver_kubelet_client.cert_pem,
        )?;
        crate::kubeconfig::write(
            &files.apiserver_kubelet_client_key,
            &apiserver_kubelet_client.key_pem,
        )?;

        Ok(Pki {
            files,
            ca_cert_pem: ca_pem,
            admin,
            controller_manager,
            scheduler,
            kubelet,
            apiserver_kubelet_client,
        })
    }
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    organization: Option<&str>,
    subject_alt_names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<CertAndKey> {
    let key =
        KeyPair::generate().with_context(|| format!("generating the key of {common_name}"))?;
    let mut params = CertificateParams::new(subject_alt_names)
        .with_context(|| format!("subject alt names of {common_name}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("signing the certificate of {common_name}"))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pki_has_the_names_clients_verify() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let pem = std::fs::read(&pki.files.serving_cert).unwrap();
        let (_, parsed_pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = parsed_pem.parse_x509().unwrap();
        use x509_parser::extensions::GeneralName;
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .expect("serving certificate has a SAN extension")
            .value
            .general_names;
        assert!(
            names
                .iter()
                .any(|n| matches!(n, GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1])),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName("localhost"))),
            "{names:?}"
        );

        let (_, admin_pem) =
            x509_parser::pem::parse_x509_pem(pki.admin.cert_pem.as_bytes()).unwrap();
        let admin = admin_pem.parse_x509().unwrap();
        let subject = admin.subject().to_string();
        assert!(subject.contains("CN=admin"), "{subject}");
        assert!(subject.contains("O=system:masters"), "{subject}");
        assert!(!format!("{:?}", pki.admin).contains("PRIVATE KEY"));
    }
}
