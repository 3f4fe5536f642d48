//! Issuing what a device asked for over EST: its edge CA or its identity, for the public key of
//! its request, signed by its hierarchy's current root. The profiles are those of the bundle
//! path (`pki::issue_edge_ca`, `pki::issue_identity_certificate`), so a device cannot tell how
//! its certificate came.

use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose,
};

use super::authorize::Profile;
use super::wire::RequestKey;
use crate::pki::{PkiError, RootCa, edge_ca_common_name, random_serial, validity_window};

/// A certificate issued over EST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    pub der: Vec<u8>,
    pub serial_hex: String,
    pub not_after: Timestamp,
    pub sha256_thumbprint: String,
}

/// Signs the `profile` certificate of `device_id` for `key` with `root`, valid from `now` (less
/// the clock-skew allowance) for `validity`.
pub fn issue(
    root: &RootCa,
    device_id: &str,
    profile: Profile,
    key: &RequestKey,
    validity: Duration,
    now: Timestamp,
) -> Result<Enrolled, PkiError> {
    let common_name = match profile {
        Profile::EdgeCa => edge_ca_common_name(device_id),
        Profile::Identity => device_id.to_string(),
    };
    let (not_before, not_after) = validity_window(&common_name, validity, now)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name.as_str());
    let serial = random_serial();
    params.serial_number = Some(serial.clone());
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    match profile {
        Profile::EdgeCa => {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        }
        Profile::Identity => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    let signing_error = |reason: String| PkiError::Signing {
        subject: common_name.clone(),
        reason,
    };
    let root_der = root.signing_cert_der()?;
    let root_key = root.key.key_pair("the root CA")?;
    let issuer = Issuer::from_ca_cert_der(&root_der.as_slice().into(), &root_key)
        .map_err(|e| signing_error(format!("reading the root CA: {e}")))?;
    let cert = params
        .signed_by(key, &issuer)
        .map_err(|e| signing_error(e.to_string()))?;
    let der = cert.der().to_vec();
    let info = crate::pki::inspect_certificate_pem(&pem::encode(&pem::Pem::new(
        "CERTIFICATE",
        der.clone(),
    )))?;
    if info.issuer_cn != root.info.subject_cn {
        return Err(signing_error(
            "the issued certificate does not name the root as its issuer".into(),
        ));
    }
    Ok(Enrolled {
        serial_hex: serial.as_ref().iter().map(|b| format!("{b:02X}")).collect(),
        not_after: info.not_after,
        sha256_thumbprint: info.sha256_thumbprint,
        der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KeyAlgorithm;
    use crate::est::authorize::{HierarchyTrust, authenticate};
    use crate::est::wire::parse_request;
    use crate::pki::{certificate_ders, generate_key, generate_root_ca};
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn request(cn: &str) -> RequestKey {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let csr = params.serialize_request(&key).unwrap();
        parse_request(csr.der()).unwrap().public_key
    }

    #[test]
    fn issued_certificates_have_the_bundle_profiles_and_chain_to_the_root() {
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let root_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
        let root =
            generate_root_ca("line", &root_key, crate::pki::DEFAULT_ROOT_VALIDITY, now).unwrap();
        let root_der = certificate_ders(&root.cert_pem).unwrap().remove(0);
        let (_, root_cert) = X509Certificate::from_der(&root_der).unwrap();
        let validity = Duration::from_secs(3600);

        let edge_ca = issue(
            &root,
            "gw",
            Profile::EdgeCa,
            &request("gw.deviceca"),
            validity,
            now,
        )
        .unwrap();
        let (_, cert) = X509Certificate::from_der(&edge_ca.der).unwrap();
        assert!(cert.verify_signature(Some(root_cert.public_key())).is_ok());
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "gw.deviceca"
        );
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint == Some(0));
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert_eq!(
            edge_ca.not_after,
            now.checked_add(validity).unwrap(),
            "valid for spec.certificates.duration"
        );
        assert_eq!(edge_ca.serial_hex.len(), 32);

        let identity = issue(
            &root,
            "gw",
            Profile::Identity,
            &request("gw"),
            validity,
            now,
        )
        .unwrap();
        let (_, cert) = X509Certificate::from_der(&identity.der).unwrap();
        assert!(!cert.is_ca());
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .client_auth
        );
        // What the server issues authenticates the device's next renewal.
        let trust = [HierarchyTrust {
            namespace: "plant".into(),
            name: "line".into(),
            roots: vec![root_der.clone()],
            devices: [("gw".to_string(), true)].into(),
        }];
        for der in [&edge_ca.der, &identity.der] {
            let client = authenticate(Some(der), &trust, now).unwrap();
            assert_eq!(client.device_id, "gw");
        }
        assert_ne!(edge_ca.serial_hex, identity.serial_hex);
    }
}
