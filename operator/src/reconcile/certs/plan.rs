//! The certificate plan: from the Secrets that exist, the root and the clock, which device
//! certificates are kept, which are (re-)issued, which Secrets go, and what devices must trust.
//! Pure; the step's I/O is in `super`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::{CertError, DeviceCertificates, SAS_PRIMARY, SAS_SECONDARY};
use crate::api::{DeviceType, RootCaSpec};
use crate::names::{
    OLDER_IDENTITY_ANNOTATION, PREVIOUS_IDENTITY_ANNOTATION, RENEW_ANNOTATION, REVISION_ANNOTATION,
    ROOT_ANNOTATION, certificate_secret_name,
};
use crate::pki::{
    IssuedCertificate, PrivateKey, RootCa, RootCaError, import_root_ca, inspect_certificate_pem,
    renewal_time,
};
use crate::reconcile::devices::SasKeys;
use crate::reconcile::secrets::text;

/// Where the root CA comes from this reconcile.
#[derive(Debug)]
pub enum RootPlan {
    /// The user's root, or the one generated earlier: use it as it is.
    Use { root: Box<RootCa>, secret: String },
    /// No root yet: generate one into this Secret (created, never replaced).
    Generate { secret: String },
}

/// Decides the root from the user's Secret (when `user` names one) or the generated one.
/// `secret` is what was read under that name.
/// `certificates` are the hierarchy's device certificate Secrets and `uid` its own uid: a
/// generated root that is missing while device certificates signed by it are still in use is not
/// regenerated (every link would break at once), and one whose device Secrets belong to a deleted
/// hierarchy of the same name waits for garbage collection to take them.
pub fn plan_root(
    user: Option<&RootCaSpec>,
    generated_name: &str,
    secret: Option<&Secret>,
    certificates: &BTreeMap<String, Secret>,
    uid: &str,
    now: Timestamp,
) -> Result<RootPlan, CertError> {
    if let Some(user) = user {
        let name = user.secret_ref.name.clone();
        let secret = secret.ok_or_else(|| CertError::UserRootMissing {
            secret: name.clone(),
        })?;
        let key_missing = |key| CertError::RootKeyMissing {
            secret: name.clone(),
            key,
        };
        let cert = text(secret, "tls.crt").ok_or_else(|| key_missing("tls.crt"))?;
        let key = text(secret, "tls.key").ok_or_else(|| key_missing("tls.key"))?;
        let root = import_root_ca(&cert, &key, now).map_err(|source| CertError::UserRoot {
            secret: name.clone(),
            source,
        })?;
        return Ok(RootPlan::Use {
            root: Box::new(root),
            secret: name,
        });
    }
    let name = generated_name.to_string();
    let Some(secret) = secret else {
        let (live, collected): (Vec<_>, Vec<_>) = certificates
            .iter()
            .partition(|(_, s)| !being_collected(s, uid));
        return if !live.is_empty() {
            Err(CertError::GeneratedRootMissing {
                secret: name,
                devices: live.iter().map(|(id, _)| (*id).clone()).collect(),
            })
        } else if !collected.is_empty() {
            Err(CertError::RootBeingCollected {
                secret: name,
                devices: collected.len(),
            })
        } else {
            Ok(RootPlan::Generate { secret: name })
        };
    };
    let damaged = |source| CertError::GeneratedRootDamaged {
        secret: name.clone(),
        source,
    };
    let cert = text(secret, "tls.crt")
        .ok_or(RootCaError::MissingCertificate)
        .map_err(damaged)?;
    let key = text(secret, "tls.key")
        .ok_or(RootCaError::MissingKey)
        .map_err(damaged)?;
    let root = import_root_ca(&cert, &key, now).map_err(damaged)?;
    Ok(RootPlan::Use {
        root: Box::new(root),
        secret: name,
    })
}

/// Whether a certificate Secret is on its way out: being deleted, or owned only by another
/// (deleted) hierarchy, so garbage collection takes it.
fn being_collected(secret: &Secret, uid: &str) -> bool {
    let owners = secret
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default();
    secret.metadata.deletion_timestamp.is_some()
        || (!owners.is_empty() && owners.iter().all(|o| o.uid != uid))
}

/// A device that needs certificates (every Edge device; Leaf devices too under X509).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedDevice {
    pub id: String,
    pub device_type: DeviceType,
}

/// Everything the certificate plan looks at.
pub struct CertPlanInput<'a> {
    pub hierarchy: &'a str,
    pub wanted: &'a [WantedDevice],
    pub x509: bool,
    /// Whether devices get an identity certificate: with X509, and under `issuance: Est`
    /// (the bootstrap identity a device first authenticates to EST with).
    pub identity: bool,
    pub root: &'a RootCa,
    /// The hierarchy's certificate Secrets, by device id.
    pub existing: &'a BTreeMap<String, Secret>,
    pub renew_before: Duration,
    /// Devices removed from the spec stay in the hub (`PolicySpec::leaves_removed_devices`), so
    /// their Secrets are kept rather than deleted.
    pub keep_removed: bool,
    /// Devices whose certificates under an old root a root rotation keeps for now
    /// ([`super::rotation`]); any other certificate under another root is re-issued.
    pub hold_old_root: &'a BTreeSet<String>,
    /// Old roots (PEM) devices must still trust beside the current one.
    pub old_roots: &'a [String],
    pub now: Timestamp,
}

/// The SAS keys a re-issued Edge device keeps (SymmetricKey only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SasKeyPlan {
    /// The device authenticates otherwise.
    None,
    /// The keys it is registered with: unchanged by a renewal.
    Keep(SasKeys),
    /// A device without keys yet.
    Generate,
}

/// One device whose certificates are issued in this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueJob {
    pub id: String,
    pub device_type: DeviceType,
    pub secret_name: String,
    pub revision: u32,
    /// The identity thumbprints the device held until now, newest first (at most two).
    pub previous_identities: Vec<String>,
    pub sas_keys: SasKeyPlan,
    /// It had certificates before (a renewal or re-issue, not a first issue).
    pub renewal: bool,
}

/// What the certificate step does.
#[derive(Debug, Default)]
pub struct CertPlan {
    pub reuse: BTreeMap<String, DeviceCertificates>,
    pub issue: Vec<IssueJob>,
    /// Certificate Secrets of devices that left the spec.
    pub delete: Vec<String>,
    /// Every root a device must trust now: the current one first, then the old roots a root
    /// rotation still keeps.
    pub trust_bundle: Vec<String>,
}

/// Plans the device certificates. See the module docs.
pub fn plan_certificates(input: &CertPlanInput<'_>) -> CertPlan {
    let mut plan = CertPlan::default();
    for device in input.wanted {
        let secret_name = certificate_secret_name(input.hierarchy, &device.id);
        let existing = input.existing.get(&device.id);
        if let Some(certs) = existing.and_then(|s| reusable(s, &secret_name, device, input)) {
            plan.reuse.insert(device.id.clone(), certs);
        } else {
            plan.issue
                .push(issue_job(device, secret_name, existing, input.x509));
        }
    }
    let wanted: BTreeSet<&str> = input.wanted.iter().map(|d| d.id.as_str()).collect();
    plan.delete = input
        .existing
        .iter()
        .filter(|_| !input.keep_removed)
        .filter(|(id, _)| !wanted.contains(id.as_str()))
        .map(|(_, s)| s.name_any())
        .collect();
    plan.trust_bundle = std::iter::once(input.root.cert_pem.clone())
        .chain(input.old_roots.iter().cloned())
        .collect();
    plan
}

fn issue_job(
    device: &WantedDevice,
    secret_name: String,
    previous: Option<&Secret>,
    x509: bool,
) -> IssueJob {
    let sas_keys = if !x509 && device.device_type == DeviceType::Edge {
        previous
            .and_then(read_sas_keys)
            .map_or(SasKeyPlan::Generate, SasKeyPlan::Keep)
    } else {
        SasKeyPlan::None
    };
    IssueJob {
        id: device.id.clone(),
        device_type: device.device_type,
        secret_name,
        revision: previous.and_then(revision).unwrap_or(0) + 1,
        previous_identities: previous.map(previous_identities).unwrap_or_default(),
        sas_keys,
        renewal: previous.is_some(),
    }
}

/// The roots other than `root` that devices may still run under: those the retired-root Secret
/// keeps (a rotation under way) and those device certificate Secrets were issued under (a
/// rotation beginning), each once, as `(thumbprint, PEM)`.
pub fn old_roots(
    root: &RootCa,
    existing: &BTreeMap<String, Secret>,
    retired: Option<&Secret>,
) -> Vec<(String, String)> {
    let mut seen = BTreeSet::from([root.info.sha256_thumbprint.clone()]);
    let retired = retired
        .and_then(|s| text(s, "ca.crt"))
        .map(|pem| split_pem_blocks(&pem))
        .unwrap_or_default();
    let issued_under = existing
        .values()
        .filter(|s| s.annotations().get(ROOT_ANNOTATION) != Some(&root.info.sha256_thumbprint))
        .filter_map(|s| text(s, "ca.crt"));
    let mut roots = Vec::new();
    for pem in retired.into_iter().chain(issued_under) {
        if let Ok(info) = inspect_certificate_pem(&pem)
            && seen.insert(info.sha256_thumbprint.clone())
        {
            roots.push((info.sha256_thumbprint, pem));
        }
    }
    roots
}

/// Each certificate of a PEM text on its own.
fn split_pem_blocks(pem: &str) -> Vec<String> {
    let end = "-----END CERTIFICATE-----";
    pem.split_inclusive(end)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----"))
        .map(|block| format!("{}\n", block.trim()))
        .collect()
}

/// The thumbprint of a device certificate Secret's edge CA when it is issued under `root`.
pub fn edge_ca_under(secret: &Secret, root: &str) -> Option<String> {
    if secret
        .annotations()
        .get(ROOT_ANNOTATION)
        .map(String::as_str)
        != Some(root)
    {
        return None;
    }
    inspect_certificate_pem(&text(secret, "tls.crt")?)
        .ok()
        .map(|i| i.sha256_thumbprint)
}

/// Whether a device certificate Secret was issued under a root other than `root`.
pub fn under_other_root(secret: &Secret, root: &str) -> bool {
    secret
        .annotations()
        .get(ROOT_ANNOTATION)
        .map(String::as_str)
        != Some(root)
}

/// What a re-issued device's previous identities become: the one it held until now, then the
/// one before it (the previous annotation), each once.
fn previous_identities(secret: &Secret) -> Vec<String> {
    let held = text(secret, "identity.crt")
        .and_then(|pem| inspect_certificate_pem(&pem).ok())
        .map(|i| i.sha256_thumbprint);
    let before = secret
        .annotations()
        .get(PREVIOUS_IDENTITY_ANNOTATION)
        .cloned();
    let mut out: Vec<String> = held.into_iter().collect();
    out.extend(before.filter(|b| !out.contains(b)));
    out
}

fn revision(secret: &Secret) -> Option<u32> {
    secret.annotations().get(REVISION_ANNOTATION)?.parse().ok()
}

/// Whether someone asked for this revision of the Secret to be replaced ([`RENEW_ANNOTATION`]).
pub fn renewal_requested(secret: &Secret) -> bool {
    let annotations = secret.annotations();
    match (
        annotations.get(RENEW_ANNOTATION),
        annotations.get(REVISION_ANNOTATION),
    ) {
        (Some(requested), Some(current)) => requested.trim() == current,
        _ => false,
    }
}

/// The device's certificates from its Secret, or `None` when they must be (re-)issued: missing,
/// unreadable, due for renewal, signed by another root, or asked to be renewed.
fn reusable(
    secret: &Secret,
    secret_name: &str,
    device: &WantedDevice,
    input: &CertPlanInput<'_>,
) -> Option<DeviceCertificates> {
    let held = input.hold_old_root.contains(&device.id);
    if (under_other_root(secret, &input.root.info.sha256_thumbprint) && !held)
        || renewal_requested(secret)
    {
        return None;
    }
    let load = |cert_key: &str, key_key: &str| -> Option<IssuedCertificate> {
        let chain_pem = text(secret, cert_key)?;
        let key = PrivateKey::from_pem(&text(secret, key_key)?).ok()?;
        let info = inspect_certificate_pem(&chain_pem).ok()?;
        let cert_pem = first_pem_block(&chain_pem)?;
        let current = input.now < renewal_time(info.not_after, input.renew_before)
            && input.now >= info.not_before;
        current.then(|| IssuedCertificate {
            cert_pem,
            chain_pem: chain_pem.clone(),
            key,
            not_before: info.not_before,
            not_after: info.not_after,
            sha256_thumbprint: info.sha256_thumbprint,
        })
    };
    let edge = device.device_type == DeviceType::Edge;
    let edge_ca = if edge {
        Some(load("tls.crt", "tls.key")?)
    } else {
        None
    };
    let identity = if input.identity {
        Some(load("identity.crt", "identity.key")?)
    } else {
        None
    };
    let revision = revision(secret)?;
    let sas_keys = if !input.x509 && edge {
        Some(read_sas_keys(secret)?)
    } else {
        None
    };
    Some(DeviceCertificates {
        sas_keys,
        secret_name: secret_name.to_string(),
        not_after: super::earliest(&edge_ca, &identity)?,
        edge_ca,
        identity,
        previous_identity_thumbprints: [PREVIOUS_IDENTITY_ANNOTATION, OLDER_IDENTITY_ANNOTATION]
            .iter()
            .filter_map(|key| secret.annotations().get(*key).cloned())
            .collect(),
        revision,
    })
}

fn read_sas_keys(secret: &Secret) -> Option<SasKeys> {
    Some(SasKeys {
        primary: text(secret, SAS_PRIMARY)?,
        secondary: text(secret, SAS_SECONDARY)?,
    })
}

fn first_pem_block(chain: &str) -> Option<String> {
    let end = "-----END CERTIFICATE-----";
    let at = chain.find(end)?;
    Some(format!("{}\n", &chain[..at + end.len()]))
}

#[cfg(test)]
mod tests;
