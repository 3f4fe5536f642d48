//! The hierarchy's root CA: generated once, or imported from a user's Secret with checks that
//! name exactly what is wrong.

use std::collections::HashSet;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::prelude::X509Certificate;
use x509_parser::public_key::PublicKey;

use super::error::{PkiError, RootCaError};
use super::inspect::{CertificateInfo, asn1_to_timestamp, inspect_der, parse_der};
use super::issue::{random_serial, validity_window};
use super::keys::PrivateKey;
use super::pem_text::{KeyBlock, certificate_blocks, certificate_pem, private_key_block};

/// Validity of a generated root CA. The root is never renewed silently (every device trusts it),
/// so it outlives many rounds of edge CA renewal.
pub const DEFAULT_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Organisation written into generated roots, so people can tell where a root came from.
const ORGANIZATION: &str = "edge-hierarchy-operator";

/// A root CA ready to sign: its certificate(s) and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootCa {
    /// PEM of the signing CA certificate first, then any further certificates the user supplied
    /// in `tls.crt` (its issuers). This is what device trust bundles carry.
    pub cert_pem: String,
    /// The signing CA's private key.
    pub key: PrivateKey,
    /// The signing CA certificate, read back.
    pub info: CertificateInfo,
}

impl RootCa {
    /// DER of the signing certificate (the first in [`RootCa::cert_pem`]).
    pub(crate) fn signing_cert_der(&self) -> Result<Vec<u8>, PkiError> {
        certificate_blocks(&self.cert_pem)
            .ok()
            .and_then(|ders| ders.into_iter().next())
            .ok_or_else(|| PkiError::UnreadableCertificate {
                what: "the root CA".into(),
                reason: "no certificate in its PEM".into(),
            })
    }
}

/// Generates a self-signed root CA for `hierarchy` with `key`: CN `<hierarchy> root CA`,
/// basicConstraints CA:TRUE (critical), keyUsage keyCertSign + cRLSign, subjectKeyIdentifier.
pub fn generate_root_ca(
    hierarchy: &str,
    key: &PrivateKey,
    validity: Duration,
    now: Timestamp,
) -> Result<RootCa, PkiError> {
    // Kubernetes names reach 253 characters; a CN holds 64.
    let short: String = hierarchy.chars().take(56).collect();
    let common_name = format!("{short} root CA");
    let key_pair = key.key_pair(&format!("the root CA of hierarchy {hierarchy}"))?;
    let (not_before, not_after) = validity_window(&common_name, validity, now)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;

    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| PkiError::Signing {
            subject: common_name.clone(),
            reason: e.to_string(),
        })?;
    let der = cert.der().to_vec();
    let info = inspect_der(&der).map_err(|reason| PkiError::UnreadableCertificate {
        what: common_name,
        reason,
    })?;
    Ok(RootCa {
        cert_pem: certificate_pem(&der),
        key: key.clone(),
        info,
    })
}

/// Checks and loads a root CA from the `tls.crt` and `tls.key` texts of a `kubernetes.io/tls`
/// Secret. The first certificate of `tls.crt` must be a CA valid at `now` whose key is in
/// `tls.key`, unencrypted, RSA (2048 to 8192 bits) or ECDSA P-256/P-384. Further certificates in
/// `tls.crt` (the CA's own issuers) are kept for the trust bundle.
pub fn import_root_ca(
    cert_pem: &str,
    key_pem: &str,
    now: Timestamp,
) -> Result<RootCa, RootCaError> {
    let ders = certificate_blocks(cert_pem)
        .map_err(|reason| RootCaError::MalformedCertificate { reason })?;
    let Some(first) = ders.first() else {
        return Err(RootCaError::MissingCertificate);
    };
    for (index, der) in ders.iter().enumerate().skip(1) {
        parse_der(der).map_err(|reason| RootCaError::MalformedCertificate {
            reason: format!("certificate #{} of tls.crt: {reason}", index + 1),
        })?;
    }
    let cert = parse_der(first).map_err(|reason| RootCaError::MalformedCertificate { reason })?;
    let subject = cert.subject().to_string();

    check_is_ca(&cert, &subject)?;
    check_validity(&cert, &subject, now)?;
    check_public_key_algorithm(&cert, &subject)?;
    check_subject_reproducible(&cert, &subject)?;
    let key = check_key_matches(&cert, &subject, key_pem)?;

    let info = inspect_der(first).map_err(|reason| RootCaError::MalformedCertificate { reason })?;
    Ok(RootCa {
        cert_pem: ders.iter().map(|der| certificate_pem(der)).collect(),
        key,
        info,
    })
}

fn check_is_ca(cert: &X509Certificate<'_>, subject: &str) -> Result<(), RootCaError> {
    let not_ca = |detail: &str| RootCaError::NotCa {
        subject: subject.to_string(),
        detail: detail.to_string(),
    };
    let constraints = cert
        .basic_constraints()
        .map_err(|e| RootCaError::MalformedCertificate {
            reason: format!("basicConstraints: {e}"),
        })?;
    match constraints {
        None => return Err(not_ca("it has no basicConstraints extension")),
        Some(bc) if !bc.value.ca => return Err(not_ca("its basicConstraints say CA:FALSE")),
        Some(bc) if bc.value.path_len_constraint == Some(0) => {
            return Err(RootCaError::PathLengthTooShort {
                subject: subject.to_string(),
            });
        }
        Some(_) => {}
    }
    let usage = cert
        .key_usage()
        .map_err(|e| RootCaError::MalformedCertificate {
            reason: format!("keyUsage: {e}"),
        })?;
    if let Some(usage) = usage
        && !usage.value.key_cert_sign()
    {
        return Err(not_ca("its keyUsage does not allow keyCertSign"));
    }
    Ok(())
}

fn check_validity(
    cert: &X509Certificate<'_>,
    subject: &str,
    now: Timestamp,
) -> Result<(), RootCaError> {
    let malformed = |reason| RootCaError::MalformedCertificate { reason };
    let not_before = asn1_to_timestamp(cert.validity().not_before).map_err(malformed)?;
    let not_after = asn1_to_timestamp(cert.validity().not_after).map_err(malformed)?;
    if now < not_before {
        return Err(RootCaError::NotYetValid {
            subject: subject.to_string(),
            not_before: not_before.to_string(),
        });
    }
    if now >= not_after {
        return Err(RootCaError::Expired {
            subject: subject.to_string(),
            not_after: not_after.to_string(),
        });
    }
    Ok(())
}

fn check_public_key_algorithm(
    cert: &X509Certificate<'_>,
    subject: &str,
) -> Result<(), RootCaError> {
    let spki = cert.public_key();
    let unsupported = |algorithm: String| RootCaError::UnsupportedAlgorithm {
        subject: subject.to_string(),
        algorithm,
    };
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(unsupported("an unreadable RSA public key".into())),
        };
        if !(2048..=8192).contains(&bits) {
            return Err(unsupported(format!("RSA with {bits} bits")));
        }
        return Ok(());
    }
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) => Err(unsupported(format!("ECDSA on curve {c}"))),
            None => Err(unsupported("ECDSA without a named curve".into())),
        };
    }
    let name = if *oid == OID_SIG_ED25519 {
        "Ed25519".to_string()
    } else if *oid == OID_SIG_ED448 {
        "Ed448".to_string()
    } else {
        format!("the public key algorithm {oid}")
    };
    Err(unsupported(name))
}

/// rcgen re-encodes the issuer name of every certificate it signs from a parsed copy; that copy
/// holds one value per attribute type and one attribute per RDN, so other subjects would not
/// match byte for byte and chains would break.
pub(crate) fn subject_reproducible(cert: &X509Certificate<'_>) -> Result<(), String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut seen = HashSet::new();
    let mut count = 0;
    for rdn in cert.subject().iter() {
        let attributes: Vec<_> = rdn.iter().collect();
        if attributes.len() != 1 {
            return Err(format!(
                "an RDN with {} attributes (multi-valued or empty)",
                attributes.len()
            ));
        }
        let attribute = attributes[0];
        if !seen.insert(attribute.attr_type().to_id_string()) {
            return Err(format!(
                "the attribute {} appears twice",
                attribute.attr_type()
            ));
        }
        let tag = attribute.attr_value().header.tag();
        if ![
            Tag::Utf8String,
            Tag::PrintableString,
            Tag::Ia5String,
            Tag::T61String,
            Tag::BmpString,
            Tag::UniversalString,
        ]
        .contains(&tag)
        {
            return Err(format!("an attribute value of ASN.1 type {tag}"));
        }
        count += 1;
    }
    if count == 0 {
        return Err("an empty subject".into());
    }
    Ok(())
}

fn check_subject_reproducible(
    cert: &X509Certificate<'_>,
    subject: &str,
) -> Result<(), RootCaError> {
    subject_reproducible(cert).map_err(|reason| RootCaError::UnsupportedSubject {
        subject: subject.to_string(),
        reason,
    })
}

fn check_key_matches(
    cert: &X509Certificate<'_>,
    subject: &str,
    key_pem: &str,
) -> Result<PrivateKey, RootCaError> {
    let (der, label) = match private_key_block(key_pem) {
        KeyBlock::Plain { der, label } => (der, label),
        KeyBlock::Encrypted { marker } => {
            return Err(RootCaError::EncryptedKey {
                marker: marker.to_string(),
            });
        }
        KeyBlock::Missing => return Err(RootCaError::MissingKey),
        KeyBlock::Malformed { reason } => return Err(RootCaError::MalformedKey { reason }),
    };
    // The parser's own error text is generic ("could not parse key pair"), never key bytes.
    let key_pair = KeyPair::try_from(der.as_slice()).map_err(|_| RootCaError::MalformedKey {
        reason: format!("the {label} block is not an RSA or ECDSA key the operator can read"),
    })?;
    if key_pair.der_bytes() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(RootCaError::KeyMismatch {
            subject: subject.to_string(),
        });
    }
    // Keep only the key block: a tls.key that also carries certificates or comments is cleaned.
    let pem = pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Ok(PrivateKey::from_checked_pem(pem))
}
