//! What travels over EST (RFC 7030): PKCS#10 requests in (base64, as aziot-certd sends them;
//! DER and PEM also accepted) and certs-only PKCS#7 out (a degenerate CMS SignedData, base64).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use der::asn1::SetOfVec;
use der::{Any, Decode, Encode};
use rcgen::{PublicKeyData, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;

/// `Content-Type` of every certificate answer.
pub const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";

/// A certificate request whose signature verified: the subject's common name and public key.
#[derive(Clone, Debug)]
pub struct CertificateRequest {
    pub common_name: String,
    pub public_key: RequestKey,
}

/// The public key of a request, as rcgen signs it into a certificate.
#[derive(Clone, Debug)]
pub struct RequestKey {
    algorithm: &'static SignatureAlgorithm,
    bytes: Vec<u8>,
}

impl PublicKeyData for RequestKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// Reads a `/simpleenroll` body: base64 DER (RFC 7030), raw DER, or PEM.
pub fn parse_request(body: &[u8]) -> Result<CertificateRequest, String> {
    let der = request_der(body)?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("not a PKCS#10 request: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the PKCS#10 request".into());
    }
    csr.verify_signature()
        .map_err(|_| "the request's signature does not verify with its own key".to_string())?;
    let info = &csr.certification_request_info;
    let common_name = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the request's subject has no common name")?
        .to_string();
    let spki = &info.subject_pki;
    let oid = &spki.algorithm.algorithm;
    let algorithm = if *oid == OID_PKCS1_RSAENCRYPTION {
        &rcgen::PKCS_RSA_SHA256
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(c) if c == OID_NIST_EC_P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => return Err("ECDSA keys must be on P-256 or P-384".into()),
        }
    } else {
        return Err(format!(
            "the request's key algorithm {oid} is not RSA or ECDSA"
        ));
    };
    Ok(CertificateRequest {
        common_name,
        public_key: RequestKey {
            algorithm,
            bytes: spki.subject_public_key.data.to_vec(),
        },
    })
}

fn request_der(body: &[u8]) -> Result<Vec<u8>, String> {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.starts_with("-----BEGIN") {
        let block = pem::parse(trimmed).map_err(|e| format!("unreadable PEM: {e}"))?;
        return Ok(block.into_contents());
    }
    if body.first() == Some(&0x30) {
        return Ok(body.to_vec());
    }
    let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD
        .decode(compact)
        .map_err(|e| format!("the body is neither DER nor base64: {e}"))
}

/// The certs-only PKCS#7 of `ders` (DER certificates, in order), base64 with line breaks as
/// RFC 7030 sends it.
pub fn certs_only(ders: &[Vec<u8>]) -> Result<String, String> {
    let mut set = SetOfVec::new();
    for der in ders {
        let cert = cms::cert::x509::Certificate::from_der(der)
            .map_err(|e| format!("re-reading an issued certificate: {e}"))?;
        set.insert(CertificateChoices::Certificate(cert))
            .map_err(|e| format!("collecting certificates: {e}"))?;
    }
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: const_oid::db::rfc5911::ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(set)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let info = ContentInfo {
        content_type: const_oid::db::rfc5911::ID_SIGNED_DATA,
        content: Any::encode_from(&signed).map_err(|e| format!("encoding SignedData: {e}"))?,
    };
    let der = info
        .to_der()
        .map_err(|e| format!("encoding ContentInfo: {e}"))?;
    let encoded = STANDARD.encode(der);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 64 + 1);
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    Ok(out)
}

/// The DER certificates of a certs-only PKCS#7 (base64 body, or DER): what a client reads.
pub fn read_certs_only(body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let der = if body.first() == Some(&0x30) {
        body.to_vec()
    } else {
        let compact: String = String::from_utf8_lossy(body)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        STANDARD
            .decode(compact)
            .map_err(|e| format!("not base64: {e}"))?
    };
    let info = ContentInfo::from_der(&der).map_err(|e| format!("not a CMS ContentInfo: {e}"))?;
    let signed: SignedData = info
        .content
        .decode_as()
        .map_err(|e| format!("not SignedData: {e}"))?;
    let mut out = Vec::new();
    for choice in signed
        .certificates
        .map(|c| c.0.into_vec())
        .unwrap_or_default()
    {
        if let CertificateChoices::Certificate(cert) = choice {
            out.push(cert.to_der().map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KeyAlgorithm;
    use crate::pki::{certificate_ders, generate_key, generate_root_ca};

    #[test]
    fn certificates_survive_a_round_trip_through_pkcs7() {
        let now = "2026-06-01T00:00:00Z".parse().unwrap();
        let ders: Vec<Vec<u8>> = (0..2)
            .map(|i| {
                let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
                let root = generate_root_ca(
                    &format!("r{i}"),
                    &key,
                    crate::pki::DEFAULT_ROOT_VALIDITY,
                    now,
                )
                .unwrap();
                certificate_ders(&root.cert_pem).unwrap().remove(0)
            })
            .collect();
        let body = certs_only(&ders).unwrap();
        assert!(body.lines().all(|l| l.len() <= 64), "{body}");
        let mut back = read_certs_only(body.as_bytes()).unwrap();
        let mut expected = ders.clone();
        back.sort();
        expected.sort();
        assert_eq!(back, expected);
    }

    #[test]
    fn a_request_is_read_in_every_encoding_and_its_signature_checked() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gw-1.deviceca");
        let csr = params.serialize_request(&key).unwrap();
        let der = csr.der().to_vec();
        for body in [
            der.clone(),
            STANDARD.encode(&der).into_bytes(),
            csr.pem().unwrap().into_bytes(),
        ] {
            let request = parse_request(&body).unwrap();
            assert_eq!(request.common_name, "gw-1.deviceca");
            assert_eq!(request.public_key.der_bytes(), key.der_bytes());
        }
        // One flipped bit in the signature: refused.
        let mut broken = der.clone();
        let last = broken.len() - 1;
        broken[last] ^= 1;
        let err = parse_request(&broken).unwrap_err();
        assert!(
            err.contains("signature") || err.contains("PKCS#10"),
            "{err}"
        );
        assert!(parse_request(b"hello").is_err());
    }
}
