//! Test fixtures shared by the steps' plan tests: a root and device certificates made with the
//! real PKI (ECDSA P-256 is quick), Secrets as the steps write them, hub devices as observed.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;

use super::devices::HubDevice;
use super::secrets::SecretWrite;
use crate::api::KeyAlgorithm;
use crate::iothub::AuthenticationType;
use crate::pki::{
    IdentitySigner, IssuedCertificate, RootCa, generate_key, generate_root_ca, issue_edge_ca,
    issue_identity_certificate,
};

pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// A fixed "now" far from any edge of validity.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

pub fn root(name: &str) -> RootCa {
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    generate_root_ca(name, &key, DAY * 3650, now()).unwrap()
}

/// An edge CA for `id`, valid for `days` from `issued`.
pub fn edge_ca(root: &RootCa, id: &str, days: u64, issued: Timestamp) -> IssuedCertificate {
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    issue_edge_ca(root, id, &key, DAY * days as u32, issued).unwrap()
}

/// An identity certificate for `id`, valid for `days` from `issued`.
pub fn identity(root: &RootCa, id: &str, days: u64, issued: Timestamp) -> IssuedCertificate {
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    issue_identity_certificate(
        id,
        &key,
        IdentitySigner::Root(root),
        DAY * days as u32,
        issued,
    )
    .unwrap()
}

/// The Secret the apiserver would return after `write` was applied.
pub fn stored(write: &SecretWrite) -> Secret {
    write.object(None)
}

/// A Secret with only these text keys (a user's Secret, or a damaged one).
pub fn secret_with(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A registered SymmetricKey Edge device with this scope, as the devices step observes it.
pub fn hub_device(id: &str, scope: &str) -> HubDevice {
    HubDevice {
        id: id.into(),
        device_etag: Some("\"e\"".into()),
        twin_etag: Some("\"t\"".into()),
        enabled: true,
        iot_edge: true,
        auth: AuthenticationType::Sas,
        thumbprints: (None, None),
        device_scope: Some(scope.into()),
        parent_scopes: Vec::new(),
        owner_tags: None,
    }
}
