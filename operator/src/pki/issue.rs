//! Issuing the per-device certificates: edge CA, IoT Hub identity, and edgeHub TLS server.

use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::error::PkiError;
use super::inspect::{parse_der, sha256_thumbprint};
use super::keys::PrivateKey;
use super::pem_text::{certificate_blocks, certificate_pem, with_trailing_newline};
use super::root::{RootCa, subject_reproducible};

/// How far `notBefore` lies before `now`: a device whose clock runs a little behind the
/// operator's must not see a certificate that is "not yet valid".
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// Most characters X.509 allows in a common name.
pub const MAX_COMMON_NAME: usize = 64;

/// A certificate the operator issued, with its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// This certificate alone (PEM).
    pub cert_pem: String,
    /// This certificate followed by its issuers up to and including the root (PEM); for a
    /// self-signed certificate the certificate alone. Edge CA: what `[edge_ca].cert` points to.
    pub chain_pem: String,
    /// Its private key.
    pub key: PrivateKey,
    /// Start of validity (`now` minus [`CLOCK_SKEW_ALLOWANCE`]).
    pub not_before: Timestamp,
    /// End of validity (`now` plus the requested validity).
    pub not_after: Timestamp,
    /// SHA-256 of the DER, upper-case hex.
    pub sha256_thumbprint: String,
}

/// Who signs an identity certificate. IoT Hub's X509 thumbprint authentication does not look at
/// the issuer, so both work with the hub; [`IdentitySigner::Root`] also lets `openssl verify`
/// check the certificate against the hierarchy's root.
#[derive(Clone, Copy, Debug)]
pub enum IdentitySigner<'a> {
    /// The certificate signs itself.
    SelfSigned,
    /// The hierarchy's root CA signs it.
    Root(&'a RootCa),
}

/// Common name of a device's edge CA. The suffix keeps it different from the device's hostname,
/// which IoT Edge requires.
pub fn edge_ca_common_name(device_id: &str) -> String {
    format!("{device_id}.deviceca")
}

/// Issues the edge CA of Edge device `device_id` for `key`, signed by `root`: CN
/// `<id>.deviceca`, basicConstraints CA:TRUE pathlen 0 (critical), keyUsage keyCertSign +
/// digitalSignature (critical), subject and authority key identifiers, valid from `now` minus
/// [`CLOCK_SKEW_ALLOWANCE`] until `now + validity`. The chain is the edge CA followed by
/// [`RootCa::cert_pem`].
pub fn issue_edge_ca(
    root: &RootCa,
    device_id: &str,
    key: &PrivateKey,
    validity: Duration,
    now: Timestamp,
) -> Result<IssuedCertificate, PkiError> {
    let common_name = edge_ca_common_name(device_id);
    let mut params = base_params(&common_name, validity, now)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;

    let subject_key = key.key_pair(&format!("device {device_id}'s edge CA"))?;
    let signer = Signer::new(
        &root.signing_cert_der()?,
        &root.key,
        &format!(
            "the root CA ({})",
            root.info.subject_cn.as_deref().unwrap_or("no CN")
        ),
    )?;
    let der = signer.sign(&params, &subject_key, &common_name)?;
    Ok(issued(&der, &root.cert_pem, key, &params))
}

/// Issues the IoT Hub identity certificate of device `device_id` for `key`: CN = device id,
/// extendedKeyUsage clientAuth, keyUsage digitalSignature, basicConstraints CA:FALSE, key
/// identifiers. Its [`IssuedCertificate::sha256_thumbprint`] is what the hub registers.
pub fn issue_identity_certificate(
    device_id: &str,
    key: &PrivateKey,
    signer: IdentitySigner<'_>,
    validity: Duration,
    now: Timestamp,
) -> Result<IssuedCertificate, PkiError> {
    let mut params = base_params(device_id, validity, now)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;

    let subject_key = key.key_pair(&format!("device {device_id}'s identity certificate"))?;
    match signer {
        IdentitySigner::SelfSigned => {
            let cert = params
                .self_signed(&subject_key)
                .map_err(|e| PkiError::Signing {
                    subject: device_id.to_string(),
                    reason: e.to_string(),
                })?;
            Ok(issued(cert.der(), "", key, &params))
        }
        IdentitySigner::Root(root) => {
            let signer = Signer::new(&root.signing_cert_der()?, &root.key, "the root CA")?;
            let der = signer.sign(&params, &subject_key, device_id)?;
            Ok(issued(&der, &root.cert_pem, key, &params))
        }
    }
}

/// Issues the TLS server certificate an edge device's edgeHub (and API proxy) presents to its
/// children, signed by that device's edge CA: CN = `hostname`, subjectAltName the hostname (DNS
/// name or IP address) and `edgehub`, extendedKeyUsage serverAuth. On a real device the IoT Edge
/// runtime issues this; tests and the simulated devices use this function. The chain is the
/// server certificate followed by the edge CA certificate (not the root, which clients hold).
pub fn issue_server_certificate(
    edge_ca: &IssuedCertificate,
    hostname: &str,
    key: &PrivateKey,
    validity: Duration,
    now: Timestamp,
) -> Result<IssuedCertificate, PkiError> {
    let host_san = host_subject_alt_name(hostname)?;
    let mut params = base_params(hostname, validity, now)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = vec![host_san];
    if !hostname.eq_ignore_ascii_case("edgehub") {
        params
            .subject_alt_names
            .push(SanType::DnsName("edgehub".try_into().map_err(|_| {
                PkiError::InvalidHostname {
                    hostname: "edgehub".into(),
                }
            })?));
    }

    let subject_key = key.key_pair(&format!("the server certificate for {hostname}"))?;
    // RSA key exchange (TLS 1.2 clients) needs keyEncipherment; ECDSA keys only sign.
    params.key_usages = if subject_key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    let edge_ca_der = certificate_blocks(&edge_ca.cert_pem)
        .ok()
        .and_then(|ders| ders.into_iter().next())
        .ok_or_else(|| PkiError::UnreadableCertificate {
            what: "the edge CA".into(),
            reason: "no certificate in its PEM".into(),
        })?;
    let signer = Signer::new(&edge_ca_der, &edge_ca.key, "the edge CA")?;
    let der = signer.sign(&params, &subject_key, hostname)?;
    Ok(issued(&der, &edge_ca.cert_pem, key, &params))
}

/// A random positive 128-bit serial number: unique without a shared serial file.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and exactly 16 bytes long once DER-encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// `notBefore` and `notAfter` for a certificate issued at `now`.
pub(crate) fn validity_window(
    subject: &str,
    validity: Duration,
    now: Timestamp,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let out_of_range = || PkiError::Signing {
        subject: subject.to_string(),
        reason: format!("validity {validity:?} from {now} is out of range"),
    };
    let not_before = now
        .checked_sub(CLOCK_SKEW_ALLOWANCE)
        .map_err(|_| out_of_range())?;
    let not_after = now.checked_add(validity).map_err(|_| out_of_range())?;
    let convert = |t: Timestamp| {
        OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|_| out_of_range())
    };
    Ok((convert(not_before)?, convert(not_after)?))
}

fn base_params(
    common_name: &str,
    validity: Duration,
    now: Timestamp,
) -> Result<CertificateParams, PkiError> {
    let length = common_name.chars().count();
    if length > MAX_COMMON_NAME {
        return Err(PkiError::CommonNameTooLong {
            common_name: common_name.to_string(),
            length,
        });
    }
    let (not_before, not_after) = validity_window(common_name, validity, now)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn host_subject_alt_name(hostname: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = hostname.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || PkiError::InvalidHostname {
        hostname: hostname.to_string(),
    };
    let valid = !hostname.is_empty()
        && hostname.len() <= 253
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(invalid());
    }
    Ok(SanType::DnsName(
        hostname.try_into().map_err(|_| invalid())?,
    ))
}

fn issued(
    der: &[u8],
    issuer_chain_pem: &str,
    key: &PrivateKey,
    params: &CertificateParams,
) -> IssuedCertificate {
    let cert_pem = certificate_pem(der);
    let chain_pem = if issuer_chain_pem.trim().is_empty() {
        cert_pem.clone()
    } else {
        format!("{cert_pem}{}", with_trailing_newline(issuer_chain_pem))
    };
    IssuedCertificate {
        cert_pem,
        chain_pem,
        key: key.clone(),
        not_before: to_timestamp(params.not_before),
        not_after: to_timestamp(params.not_after),
        sha256_thumbprint: sha256_thumbprint(der),
    }
}

fn to_timestamp(time: OffsetDateTime) -> Timestamp {
    // The window came from Timestamps in validity_window, so it converts back.
    Timestamp::from_second(time.unix_timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// An issuing CA: its certificate's DER and key.
struct Signer {
    cert_der: Vec<u8>,
    subject_raw: Vec<u8>,
    key_pair: KeyPair,
    what: String,
}

impl Signer {
    fn new(cert_der: &[u8], key: &PrivateKey, what: &str) -> Result<Self, PkiError> {
        let cert = parse_der(cert_der).map_err(|reason| PkiError::UnreadableCertificate {
            what: what.to_string(),
            reason,
        })?;
        subject_reproducible(&cert).map_err(|reason| PkiError::IssuerNameMismatch {
            issuer: cert.subject().to_string(),
            reason,
        })?;
        let subject_raw = cert.subject().as_raw().to_vec();
        Ok(Self {
            cert_der: cert_der.to_vec(),
            subject_raw,
            key_pair: key.key_pair(what)?,
            what: what.to_string(),
        })
    }

    /// Signs `params` for `subject_key` and checks the result names this CA byte for byte.
    fn sign(
        &self,
        params: &CertificateParams,
        subject_key: &KeyPair,
        subject: &str,
    ) -> Result<Vec<u8>, PkiError> {
        let signing_error = |reason: String| PkiError::Signing {
            subject: subject.to_string(),
            reason,
        };
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), &self.key_pair)
            .map_err(|e| signing_error(format!("reading {}: {e}", self.what)))?;
        let cert = params
            .signed_by(subject_key, &issuer)
            .map_err(|e| signing_error(e.to_string()))?;
        let der = cert.der().to_vec();
        let parsed = parse_der(&der).map_err(signing_error)?;
        if parsed.issuer().as_raw() != self.subject_raw.as_slice() {
            return Err(PkiError::IssuerNameMismatch {
                issuer: parsed.issuer().to_string(),
                reason: "the re-encoded issuer name differs from the CA's subject".into(),
            });
        }
        Ok(der)
    }
}
