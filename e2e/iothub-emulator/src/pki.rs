//! The emulator's own certificate authority, its serving certificate and the TLS settings.
//!
//! Clients trust `DIR/ca.crt`. The server asks for (but does not require) a client certificate so
//! that devices registered with X.509 thumbprints can authenticate with mutual TLS on the same
//! port; proof of key possession is checked by TLS, the thumbprint by the device endpoint.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::DistinguishedName as TlsDistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The CA certificate (PEM) and the server's chain and key.
pub struct ServerPki {
    /// PEM of the emulator's root CA: what clients must trust.
    pub ca_pem: String,
    /// DER of the serving certificate followed by the CA.
    chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER of the serving key.
    key_der: Vec<u8>,
}

impl std::fmt::Debug for ServerPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPki")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Generates a root CA and a serving certificate for `localhost`, `127.0.0.1` and `hub_host`.
pub fn generate(hub_host: &str) -> anyhow::Result<ServerPki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "IoT Hub emulator root CA");
    ca_name.push(DnType::OrganizationName, "iothub-emulator");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let host_only = hub_host.split(':').next().unwrap_or(hub_host).to_string();
    if !names.contains(&host_only) {
        names.push(host_only.clone());
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, host_only);
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let server_cert = params.signed_by(&server_key, &issuer)?;

    Ok(ServerPki {
        ca_pem: ca_cert.pem(),
        chain: vec![server_cert.der().clone(), ca_cert.der().clone()],
        key_der: server_key.serialize_der(),
    })
}

impl ServerPki {
    /// TLS settings: HTTP/2 and HTTP/1.1, optional client certificates.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(AnyClientCertificate {
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Accepts any client certificate whose handshake signature verifies: self-signed device
/// certificates are trusted by their registered thumbprint, not by a chain.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[TlsDistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Upper-case hex SHA-256 and SHA-1 thumbprints of a DER certificate (IoT Hub accepts either).
pub fn thumbprints(der: &[u8]) -> [String; 2] {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02X}")).collect::<String>();
    [hex(&Sha256::digest(der)), hex(&Sha1::digest(der))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_certificate_builds_a_tls_config() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let pki = generate("emulator.azure-devices.net").unwrap();
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let config = pki.server_config().unwrap();
        assert_eq!(config.alpn_protocols.len(), 2);
        assert!(!format!("{pki:?}").contains("BEGIN"));
    }

    #[test]
    fn thumbprints_are_upper_hex() {
        let [sha256, sha1] = thumbprints(b"abc");
        assert_eq!(sha256.len(), 64);
        assert_eq!(sha1, "A9993E364706816ABA3E25717850C26C9CD0D89D");
    }
}
