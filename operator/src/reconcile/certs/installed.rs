//! What a device runs, as its installer acknowledged (docs/certificates.md, "How a device is
//! known to run a bundle"): the `installed-fingerprint` annotation on its bundle Secret names
//! the current revision or the one before it, whose trusted roots, edge CA and identity the
//! bundle Secret's annotations record. Pure.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::names::{
    EDGE_CA_ANNOTATION, FINGERPRINT_ANNOTATION, IDENTITY_ANNOTATION, INSTALLED_ANNOTATION,
    PREVIOUS_EDGE_CA_ANNOTATION, PREVIOUS_FINGERPRINT_ANNOTATION,
    PREVIOUS_IDENTITY_ANNOTATION_OF_BUNDLE, PREVIOUS_TRUSTED_ROOTS_ANNOTATION,
    TRUSTED_ROOTS_ANNOTATION,
};

/// The bundle revision a device acknowledged running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running<'a> {
    /// SHA-256 thumbprints of the roots it trusts.
    pub trusted_roots: Vec<&'a str>,
    /// Thumbprint of its edge CA.
    pub edge_ca: Option<&'a str>,
    /// Thumbprint of its identity certificate (X509).
    pub identity: Option<&'a str>,
}

/// The revision the device acknowledged: the current one or the one before; `None` when there
/// is no acknowledgement, or it names an older revision the Secret no longer records.
pub fn running(bundle: &Secret) -> Option<Running<'_>> {
    let annotations = bundle.annotations();
    let ack = annotations.get(INSTALLED_ANNOTATION)?.trim();
    let keys = [
        (
            FINGERPRINT_ANNOTATION,
            TRUSTED_ROOTS_ANNOTATION,
            EDGE_CA_ANNOTATION,
            IDENTITY_ANNOTATION,
        ),
        (
            PREVIOUS_FINGERPRINT_ANNOTATION,
            PREVIOUS_TRUSTED_ROOTS_ANNOTATION,
            PREVIOUS_EDGE_CA_ANNOTATION,
            PREVIOUS_IDENTITY_ANNOTATION_OF_BUNDLE,
        ),
    ];
    let (_, roots, edge_ca, identity) = keys
        .into_iter()
        .find(|(fingerprint, ..)| annotations.get(*fingerprint).map(String::as_str) == Some(ack))?;
    let get = |key: &str| {
        annotations
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    Some(Running {
        trusted_roots: get(roots).map_or_else(Vec::new, |r| r.split(',').collect()),
        edge_ca: get(edge_ca),
        identity: get(identity),
    })
}
