//! Certificate helpers of a simulated device: reading PEM, comparing keys with certificates and
//! issuing the edgeHub server certificate from the device's own edge CA (as aziot-edged's
//! workload API does for edgeHub).

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Every certificate of a PEM text, in order. Errors say what the text held instead.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut reader = pem;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the PEM text cannot be read ({e})"))?;
    if certs.is_empty() {
        return Err("it holds no PEM CERTIFICATE block".into());
    }
    Ok(certs)
}

/// The first private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
pub fn pem_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let mut reader = pem;
    rustls_pemfile::private_key(&mut reader)
        .map_err(|e| format!("the PEM text cannot be read ({e})"))?
        .ok_or_else(|| "it holds no PEM PRIVATE KEY block".to_string())
}

/// The facts of a certificate the checks need, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject DN as text.
    pub subject: String,
    /// Issuer DN as text.
    pub issuer: String,
    /// basicConstraints CA flag.
    pub is_ca: bool,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Raw subject public key bits (compared with a private key's public half).
    pub public_key: Vec<u8>,
    /// Common name, when present.
    pub common_name: Option<String>,
}

/// Parses one DER certificate.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("a certificate cannot be parsed as X.509 ({e})"))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        is_ca,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
    })
}

/// Whether `key_pem` is the private key of the certificate whose public key is `public_key`.
pub fn key_matches(key_pem: &str, public_key: &[u8]) -> Result<bool, String> {
    let key =
        KeyPair::from_pem(key_pem).map_err(|e| format!("the private key cannot be read ({e})"))?;
    Ok(key.public_key_raw() == public_key)
}

/// A TLS server identity: a certificate chain (leaf first) and its key. Debug hides the key.
#[derive(Clone)]
pub struct ServerIdentity {
    /// Leaf, then the edge CA chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8 DER).
    pub key_der: Vec<u8>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ServerIdentity {
    /// The private key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

/// Issues an edgeHub server certificate for `hostname` (DNS name or IP address) from the edge CA
/// (`edge_ca_chain_pem`: the edge CA first, then its issuers; `edge_ca_key_pem` its key). It is
/// valid for at most 30 days and never beyond the edge CA (`ca_not_after`, Unix seconds).
pub fn issue_server_identity(
    edge_ca_chain_pem: &str,
    edge_ca_key_pem: &str,
    hostname: &str,
    ca_not_after: i64,
    now: i64,
) -> Result<ServerIdentity, String> {
    let ca_key = KeyPair::from_pem(edge_ca_key_pem)
        .map_err(|e| format!("the edge CA key cannot be read ({e})"))?;
    let chain = pem_certificates(edge_ca_chain_pem.as_bytes())
        .map_err(|e| format!("the edge CA certificate file: {e}"))?;
    let issuer = Issuer::from_ca_cert_der(&chain[0], ca_key)
        .map_err(|e| format!("the edge CA certificate cannot sign ({e})"))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![match hostname.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            hostname
                .to_string()
                .try_into()
                .map_err(|e| format!("hostname {hostname:?} is not a DNS name ({e})"))?,
        ),
    }];
    params
        .distinguished_name
        .push(DnType::CommonName, hostname.to_string());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let not_before = now - 300;
    let not_after = (now + 30 * 24 * 3600).min(ca_not_after);
    params.not_before = unix_to_offset(not_before)?;
    params.not_after = unix_to_offset(not_after)?;
    let leaf_key =
        KeyPair::generate().map_err(|e| format!("cannot generate a server key ({e})"))?;
    let leaf = params
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| format!("the edge CA cannot issue a server certificate ({e})"))?;
    let mut out = vec![leaf.der().clone()];
    out.extend(chain);
    Ok(ServerIdentity {
        chain: out,
        key_der: leaf_key.serialize_der(),
    })
}

fn unix_to_offset(secs: i64) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| format!("time {secs} is out of range ({e})"))
}
