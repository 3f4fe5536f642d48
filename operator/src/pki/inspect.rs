//! Reading certificates back: validity, names, CA flag, thumbprint.

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::error::PkiError;
use super::pem_text::certificate_blocks;

/// What the operator needs to know about an issued or stored certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// First common name of the subject, if any.
    pub subject_cn: Option<String>,
    /// First common name of the issuer, if any.
    pub issuer_cn: Option<String>,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// Issuer and subject names are the same bytes.
    pub self_issued: bool,
    /// SHA-256 of the DER, upper-case hex (the form IoT Hub shows).
    pub sha256_thumbprint: String,
}

/// SHA-256 thumbprint of a DER certificate as IoT Hub shows it: 64 upper-case hex digits.
pub fn sha256_thumbprint(cert_der: &[u8]) -> String {
    Sha256::digest(cert_der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// The DER of every certificate in a PEM bundle, in order; an error when there is none.
pub fn certificate_ders(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let ders = certificate_blocks(pem).map_err(|reason| PkiError::UnreadableCertificate {
        what: "the PEM text".into(),
        reason,
    })?;
    if ders.is_empty() {
        return Err(PkiError::UnreadableCertificate {
            what: "the PEM text".into(),
            reason: "no -----BEGIN CERTIFICATE----- block".into(),
        });
    }
    Ok(ders)
}

/// Reads the first certificate of a PEM text.
pub fn inspect_certificate_pem(pem: &str) -> Result<CertificateInfo, PkiError> {
    let ders = certificate_ders(pem)?;
    inspect_der(&ders[0]).map_err(|reason| PkiError::UnreadableCertificate {
        what: "the PEM text".into(),
        reason,
    })
}

/// Parses one DER certificate, rejecting trailing bytes.
pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    Ok(cert)
}

pub(crate) fn inspect_der(der: &[u8]) -> Result<CertificateInfo, String> {
    let cert = parse_der(der)?;
    let validity = cert.validity();
    Ok(CertificateInfo {
        subject_cn: first_common_name(cert.subject()),
        issuer_cn: first_common_name(cert.issuer()),
        not_before: asn1_to_timestamp(validity.not_before)?,
        not_after: asn1_to_timestamp(validity.not_after)?,
        is_ca: cert.is_ca(),
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        sha256_thumbprint: sha256_thumbprint(der),
    })
}

pub(crate) fn first_common_name(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

pub(crate) fn asn1_to_timestamp(time: x509_parser::time::ASN1Time) -> Result<Timestamp, String> {
    Timestamp::from_second(time.timestamp()).map_err(|e| format!("validity date out of range: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_is_upper_case_sha256_hex() {
        // SHA-256("abc"), a published test vector.
        assert_eq!(
            sha256_thumbprint(b"abc"),
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(inspect_certificate_pem("").is_err());
        assert!(inspect_certificate_pem("hello").is_err());
        let fake = super::super::pem_text::certificate_pem(b"not der");
        let err = inspect_certificate_pem(&fake).unwrap_err().to_string();
        assert!(err.contains("not an X.509 certificate"), "{err}");
    }
}
