//! The EST server's own TLS identity. One server answers every hierarchy, and a TLS server
//! certificate cannot chain to each hierarchy's root at once, so the operator keeps one EST CA
//! of its own (a `kubernetes.io/tls` Secret, generated once like a hierarchy's root) and issues
//! the server certificate from it at start-up. Devices trust the EST CA through
//! `[cert_issuance.est] trusted_certs` only: it is in no trust bundle, so it cannot vouch for a
//! parent or a module.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::api::KeyAlgorithm;
use crate::names::{COMPONENT_LABEL, MANAGED_BY_LABEL, MANAGER};
use crate::pki::{
    DEFAULT_ROOT_VALIDITY, IssuedCertificate, RootCa, generate_key, generate_root_ca,
    import_root_ca, issue_server_certificate,
};

/// Validity of the server certificate; it is issued afresh at every start.
const SERVER_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// The EST CA and the TLS configuration made from it.
pub struct EstCa {
    pub ca: RootCa,
}

/// Reads the EST CA from Secret `namespace/name`, or generates and stores it when the Secret
/// does not exist (a replica that loses the creation race reads the winner's).
pub async fn ensure_est_ca(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<EstCa> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let now = Timestamp::now();
    for _ in 0..2 {
        if let Some(secret) = secrets.get_opt(name).await? {
            let data = secret.data.unwrap_or_default();
            let text = |key: &str| {
                data.get(key)
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .unwrap_or_default()
            };
            let ca = import_root_ca(&text("tls.crt"), &text("tls.key"), now).map_err(|e| {
                anyhow::anyhow!(
                    "EST CA Secret {namespace}/{name}: {e}; delete it to let the operator generate a new one (devices then need new bundles)"
                )
            })?;
            return Ok(EstCa { ca });
        }
        let key = generate_key(KeyAlgorithm::EcdsaP256)?;
        let ca = generate_root_ca(
            "edge-hierarchy-operator EST",
            &key,
            DEFAULT_ROOT_VALIDITY,
            now,
        )?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(
                    [
                        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
                        (COMPONENT_LABEL.to_string(), "est-ca".to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    (
                        "tls.crt".to_string(),
                        ByteString(ca.cert_pem.clone().into_bytes()),
                    ),
                    (
                        "tls.key".to_string(),
                        ByteString(ca.key.pem().as_bytes().to_vec()),
                    ),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(EstCa { ca }),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("EST CA Secret {namespace}/{name} could not be read or created")
}

impl EstCa {
    /// A TLS server configuration for `host` (the host of `--est-url`), its certificate
    /// issued now by the EST CA; client certificates are asked for and checked per request.
    pub fn server_config(&self, host: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let now = Timestamp::now();
        let issuer = IssuedCertificate {
            cert_pem: self.ca.cert_pem.clone(),
            chain_pem: self.ca.cert_pem.clone(),
            key: self.ca.key.clone(),
            not_before: self.ca.info.not_before,
            not_after: self.ca.info.not_after,
            sha256_thumbprint: self.ca.info.sha256_thumbprint.clone(),
        };
        let key = generate_key(KeyAlgorithm::EcdsaP256)?;
        let server = issue_server_certificate(&issuer, host, &key, SERVER_VALIDITY, now)?;
        let chain = CertificateDer::pem_slice_iter(server.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("reading the EST server certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(server.key.pem().as_bytes())
            .map_err(|_| anyhow::anyhow!("reading the EST server key failed"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(super::server::AnyClientCertificate::new()))
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
