//! Certificates of a hierarchy (DESIGN.md section 5): the root CA (the user's, or generated once
//! and never regenerated silently), an edge CA per Edge device and, with X509 authentication,
//! an identity certificate per device, each in a `kubernetes.io/tls` Secret owned by the
//! hierarchy. Certificates are re-issued before `renewBefore`, when the root changes, and when
//! missing or unreadable; the revision counts issuances.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::model::SasKeys;
use crate::api::{
    AuthenticationType, DeviceType, EdgeHierarchy, KeyAlgorithm, duration::parse_duration,
};
use crate::names::{
    DEVICE_ID_ANNOTATION, DEVICE_LABEL, HIERARCHY_LABEL, MANAGER, certificate_secret_name,
    device_label_value, root_ca_secret_name,
};
use crate::pki::{
    CryptoPool, DEFAULT_ROOT_VALIDITY, IdentitySigner, IssuedCertificate, PkiError, PrivateKey,
    RootCa, RootCaError, generate_root_ca, import_root_ca, inspect_certificate_pem, issue_edge_ca,
    issue_identity_certificate, renewal_time,
};

/// Label telling the operator's Secrets apart.
pub const COMPONENT_LABEL: &str = "edgehierarchy.dev/component";
const REVISION_ANNOTATION: &str = "edgehierarchy.dev/revision";
const ROOT_ANNOTATION: &str = "edgehierarchy.dev/root-thumbprint";
const PREVIOUS_IDENTITY_ANNOTATION: &str = "edgehierarchy.dev/previous-identity-thumbprint";

/// Why certificates could not be provided; each needs a person (or names what failed).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("root CA Secret {secret:?} (spec.certificates.rootCA.secretRef): {source}")]
    UserRoot { secret: String, source: RootCaError },
    #[error(
        "root CA Secret {secret:?} (spec.certificates.rootCA.secretRef) does not exist; create a kubernetes.io/tls Secret with tls.crt and tls.key, or remove rootCA to let the operator generate one"
    )]
    UserRootMissing { secret: String },
    #[error(
        "root CA Secret {secret:?} has no {key}; a kubernetes.io/tls Secret needs tls.crt and tls.key"
    )]
    RootKeyMissing { secret: String, key: &'static str },
    #[error(
        "the generated root CA in Secret {secret:?} is unusable ({source}); it is not regenerated silently: delete the Secret to generate a new root, and every device certificate will be re-issued"
    )]
    GeneratedRootDamaged { secret: String, source: RootCaError },
    #[error("issuing certificates: {0}")]
    Pki(#[from] PkiError),
    #[error("Kubernetes API error while handling certificate Secrets: {0}")]
    Kube(#[from] kube::Error),
}

impl CertError {
    /// Errors only a person can fix.
    pub fn needs_person(&self) -> bool {
        matches!(
            self,
            Self::UserRoot { .. }
                | Self::UserRootMissing { .. }
                | Self::RootKeyMissing { .. }
                | Self::GeneratedRootDamaged { .. }
        )
    }
}

/// A device's certificates as they are after this step.
#[derive(Debug, Clone)]
pub struct DeviceCertificates {
    pub secret_name: String,
    pub edge_ca: Option<IssuedCertificate>,
    pub identity: Option<IssuedCertificate>,
    /// The identity thumbprint the device held before the last renewal, kept registered so a
    /// device still using it does not lose access.
    pub previous_identity_thumbprint: Option<String>,
    pub revision: u32,
    /// SAS keys the device is registered with (Edge devices under SymmetricKey), chosen here so
    /// the bundle knows them without reading them back from the hub.
    pub sas_keys: Option<SasKeys>,
    /// The earliest expiry among the device's certificates.
    pub not_after: Timestamp,
}

/// What the certificate step found and did.
pub struct Certificates {
    pub root: RootCa,
    pub root_secret: String,
    /// Every root a device must trust now: the current one, plus older ones while some device
    /// certificate is still signed by them.
    pub trust_bundle: Vec<String>,
    pub devices: BTreeMap<String, DeviceCertificates>,
    /// Devices whose certificates were issued for the first time / re-issued in this step.
    pub issued: Vec<String>,
    pub renewed: Vec<String>,
    pub renew_before: Duration,
}

impl Certificates {
    /// When the next certificate is due for renewal.
    pub fn next_renewal(&self) -> Option<Timestamp> {
        self.devices
            .values()
            .map(|d| renewal_time(d.not_after, self.renew_before))
            .min()
    }

    /// SAS keys per device that has operator-chosen keys.
    pub fn sas_keys(&self) -> BTreeMap<String, SasKeys> {
        self.devices
            .iter()
            .filter_map(|(id, d)| Some((id.clone(), d.sas_keys.clone()?)))
            .collect()
    }

    /// Thumbprints to register per X509 device: the current identity first, the previous one
    /// second while it may still be in use.
    pub fn thumbprints(&self) -> BTreeMap<String, (String, Option<String>)> {
        self.devices
            .iter()
            .filter_map(|(id, d)| {
                let current = d.identity.as_ref()?.sha256_thumbprint.clone();
                let previous = d
                    .previous_identity_thumbprint
                    .clone()
                    .filter(|p| *p != current);
                Some((id.clone(), (current, previous)))
            })
            .collect()
    }
}

/// Labels of every Secret the operator makes for a hierarchy.
pub fn secret_labels(hierarchy: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        ),
        (HIERARCHY_LABEL.to_string(), hierarchy.to_string()),
        (COMPONENT_LABEL.to_string(), component.to_string()),
    ])
}

/// Lists a hierarchy's Secrets of one component, keyed by the device id annotation.
pub async fn list_component_secrets(
    secrets: &Api<Secret>,
    hierarchy: &str,
    component: &str,
) -> Result<BTreeMap<String, Secret>, kube::Error> {
    let selector = format!("{HIERARCHY_LABEL}={hierarchy},{COMPONENT_LABEL}={component}");
    let list = secrets
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|s| Some((s.annotations().get(DEVICE_ID_ANNOTATION)?.clone(), s)))
        .collect())
}

/// Writes a Secret by server-side apply, owned by the hierarchy.
pub async fn apply_secret(
    secrets: &Api<Secret>,
    hierarchy: &EdgeHierarchy,
    name: &str,
    type_: &str,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    data: BTreeMap<String, Vec<u8>>,
) -> Result<(), kube::Error> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: hierarchy.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_string()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Secret::default()
    };
    let mut value = serde_json::to_value(&secret).expect("a Secret serializes");
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    secrets
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await?;
    Ok(())
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|t| !t.trim().is_empty())
}

/// Ensures the root CA and every device's certificates.
pub async fn ensure_certificates(
    client: &kube::Client,
    hierarchy: &EdgeHierarchy,
    pool: &CryptoPool,
    layers: &BTreeMap<String, u32>,
    now: Timestamp,
) -> Result<Certificates, CertError> {
    let namespace = hierarchy.namespace().unwrap_or_default();
    let name = hierarchy.name_any();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let spec = &hierarchy.spec;
    let algorithm = spec.certificates.algorithm;
    // Validation has checked both durations.
    let validity =
        parse_duration(&spec.certificates.duration).unwrap_or(Duration::from_secs(2160 * 3600));
    let renew_before =
        parse_duration(&spec.certificates.renew_before).unwrap_or(Duration::from_secs(720 * 3600));

    let (root, root_secret) = root_ca(&secrets, hierarchy, pool, algorithm, now).await?;
    let existing = list_component_secrets(&secrets, &name, "certs").await?;

    let x509 = spec.authentication == AuthenticationType::X509;
    let wanted: Vec<&crate::api::DeviceSpec> = spec
        .devices
        .iter()
        .filter(|d| layers.contains_key(&d.id))
        .filter(|d| d.device_type == DeviceType::Edge || x509)
        .collect();

    let mut devices = BTreeMap::new();
    let mut to_issue = Vec::new();
    for device in &wanted {
        let secret_name = certificate_secret_name(&name, &device.id);
        let current = existing.get(&device.id).and_then(|s| {
            read_device_secret(
                s,
                &secret_name,
                &root,
                renew_before,
                now,
                device.device_type,
                x509,
            )
        });
        match current {
            Some(certs) => {
                devices.insert(device.id.clone(), certs);
            }
            None => to_issue.push(*device),
        }
    }

    struct Job {
        id: String,
        device_type: DeviceType,
        secret_name: String,
        revision: u32,
        previous_identity: Option<String>,
        sas_keys: Option<SasKeys>,
        was_there: bool,
    }
    let jobs: Vec<Job> = to_issue
        .into_iter()
        .map(|device| {
            let previous = existing.get(&device.id);
            Job {
                id: device.id.clone(),
                device_type: device.device_type,
                secret_name: certificate_secret_name(&name, &device.id),
                revision: previous
                    .and_then(|s| {
                        s.annotations()
                            .get(REVISION_ANNOTATION)?
                            .parse::<u32>()
                            .ok()
                    })
                    .unwrap_or(0)
                    + 1,
                previous_identity: previous
                    .and_then(|s| text(s, "identity.crt"))
                    .and_then(|pem| inspect_certificate_pem(&pem).ok())
                    .map(|i| i.sha256_thumbprint),
                sas_keys: (!x509 && device.device_type == DeviceType::Edge).then(|| {
                    previous
                        .and_then(read_sas_keys)
                        .unwrap_or_else(SasKeys::generate)
                }),
                was_there: previous.is_some(),
            }
        })
        .collect();
    let root_ref = &root;
    let issued: Vec<(String, DeviceCertificates, bool)> = stream::iter(jobs)
        .map(|job: Job| async move {
            let edge_ca = if job.device_type == DeviceType::Edge {
                let key = pool.generate_key(algorithm).await?;
                let (id, root) = (job.id.clone(), root_ref.clone());
                Some(
                    pool.run(move || issue_edge_ca(&root, &id, &key, validity, now))
                        .await?,
                )
            } else {
                None
            };
            let identity = if x509 {
                let key = pool.generate_key(algorithm).await?;
                let (id, root) = (job.id.clone(), root_ref.clone());
                Some(
                    pool.run(move || {
                        issue_identity_certificate(
                            &id,
                            &key,
                            IdentitySigner::Root(&root),
                            validity,
                            now,
                        )
                    })
                    .await?,
                )
            } else {
                None
            };
            let not_after = earliest(&edge_ca, &identity).unwrap_or(now);
            let certs = DeviceCertificates {
                secret_name: job.secret_name,
                edge_ca,
                identity,
                previous_identity_thumbprint: job.previous_identity,
                revision: job.revision,
                sas_keys: job.sas_keys,
                not_after,
            };
            Ok::<_, CertError>((job.id, certs, job.was_there))
        })
        .buffer_unordered(pool.parallelism().max(1) * 2)
        .try_collect()
        .await?;

    let mut result_issued = Vec::new();
    let mut renewed = Vec::new();
    for (id, certs, was_there) in issued {
        write_device_secret(&secrets, hierarchy, &id, &certs, &root).await?;
        if was_there {
            renewed.push(id.clone())
        } else {
            result_issued.push(id.clone())
        }
        devices.insert(id, certs);
    }

    // Certificates of devices that left the spec go with them.
    for (id, secret) in &existing {
        if !devices.contains_key(id) {
            secrets
                .delete(&secret.name_any(), &DeleteParams::default())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)?;
        }
    }

    // Trust bundle: the current root, plus every other root a live device certificate still
    // chains to (so children trust parents not yet re-issued after a root change).
    let mut trust_bundle = vec![root.cert_pem.clone()];
    let mut seen = BTreeSet::from([root.info.sha256_thumbprint.clone()]);
    for (id, secret) in &existing {
        if !devices.contains_key(id) || result_issued.contains(id) || renewed.contains(id) {
            continue;
        }
        if let Some(ca) = text(secret, "ca.crt")
            && let Ok(info) = inspect_certificate_pem(&ca)
            && seen.insert(info.sha256_thumbprint)
        {
            trust_bundle.push(ca);
        }
    }

    Ok(Certificates {
        root,
        root_secret,
        trust_bundle,
        devices,
        issued: result_issued,
        renewed,
        renew_before,
    })
}

fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match &e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        _ => Err(e),
    }
}

fn earliest(a: &Option<IssuedCertificate>, b: &Option<IssuedCertificate>) -> Option<Timestamp> {
    [a, b].into_iter().flatten().map(|c| c.not_after).min()
}

/// The device's certificates from its Secret, or `None` when they must be (re-)issued: missing,
/// unreadable, due for renewal, or signed by another root.
fn read_device_secret(
    secret: &Secret,
    secret_name: &str,
    root: &RootCa,
    renew_before: Duration,
    now: Timestamp,
    device_type: DeviceType,
    x509: bool,
) -> Option<DeviceCertificates> {
    if secret.annotations().get(ROOT_ANNOTATION) != Some(&root.info.sha256_thumbprint) {
        return None;
    }
    let load = |cert_key: &str, key_key: &str| -> Option<IssuedCertificate> {
        let chain_pem = text(secret, cert_key)?;
        let key = PrivateKey::from_pem(&text(secret, key_key)?).ok()?;
        let info = inspect_certificate_pem(&chain_pem).ok()?;
        let cert_pem = first_pem_block(&chain_pem)?;
        (now < renewal_time(info.not_after, renew_before) && now >= info.not_before).then(|| {
            IssuedCertificate {
                cert_pem,
                chain_pem: chain_pem.clone(),
                key,
                not_before: info.not_before,
                not_after: info.not_after,
                sha256_thumbprint: info.sha256_thumbprint,
            }
        })
    };
    let edge_ca = if device_type == DeviceType::Edge {
        Some(load("tls.crt", "tls.key")?)
    } else {
        None
    };
    let identity = if x509 {
        Some(load("identity.crt", "identity.key")?)
    } else {
        None
    };
    let revision = secret
        .annotations()
        .get(REVISION_ANNOTATION)?
        .parse()
        .ok()?;
    let sas_keys = if !x509 && device_type == DeviceType::Edge {
        Some(read_sas_keys(secret)?)
    } else {
        None
    };
    Some(DeviceCertificates {
        sas_keys,
        secret_name: secret_name.to_string(),
        not_after: earliest(&edge_ca, &identity)?,
        edge_ca,
        identity,
        previous_identity_thumbprint: secret
            .annotations()
            .get(PREVIOUS_IDENTITY_ANNOTATION)
            .cloned(),
        revision,
    })
}

const SAS_PRIMARY: &str = "sas-primary-key";
const SAS_SECONDARY: &str = "sas-secondary-key";

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

async fn write_device_secret(
    secrets: &Api<Secret>,
    hierarchy: &EdgeHierarchy,
    id: &str,
    certs: &DeviceCertificates,
    root: &RootCa,
) -> Result<(), kube::Error> {
    let mut data = BTreeMap::from([("ca.crt".to_string(), root.cert_pem.clone().into_bytes())]);
    if let Some(edge_ca) = &certs.edge_ca {
        data.insert("tls.crt".into(), edge_ca.chain_pem.clone().into_bytes());
        data.insert("tls.key".into(), edge_ca.key.pem().as_bytes().to_vec());
    } else {
        // kubernetes.io/tls needs both keys; a Leaf (X509) has only an identity.
        data.insert("tls.crt".into(), Vec::new());
        data.insert("tls.key".into(), Vec::new());
    }
    if let Some(keys) = &certs.sas_keys {
        data.insert(SAS_PRIMARY.into(), keys.primary.clone().into_bytes());
        data.insert(SAS_SECONDARY.into(), keys.secondary.clone().into_bytes());
    }
    if let Some(identity) = &certs.identity {
        data.insert(
            "identity.crt".into(),
            identity.chain_pem.clone().into_bytes(),
        );
        data.insert(
            "identity.key".into(),
            identity.key.pem().as_bytes().to_vec(),
        );
    }
    let mut labels = secret_labels(&hierarchy.name_any(), "certs");
    labels.insert(DEVICE_LABEL.to_string(), device_label_value(id));
    let mut annotations = BTreeMap::from([
        (DEVICE_ID_ANNOTATION.to_string(), id.to_string()),
        (REVISION_ANNOTATION.to_string(), certs.revision.to_string()),
        (
            ROOT_ANNOTATION.to_string(),
            root.info.sha256_thumbprint.clone(),
        ),
    ]);
    if let Some(previous) = &certs.previous_identity_thumbprint {
        annotations.insert(PREVIOUS_IDENTITY_ANNOTATION.to_string(), previous.clone());
    }
    let type_ = if certs.edge_ca.is_some() {
        "kubernetes.io/tls"
    } else {
        "Opaque"
    };
    apply_secret(
        secrets,
        hierarchy,
        &certs.secret_name,
        type_,
        labels,
        annotations,
        data,
    )
    .await
}

/// The root CA: the user's (checked, never changed) or the generated one (made once).
async fn root_ca(
    secrets: &Api<Secret>,
    hierarchy: &EdgeHierarchy,
    pool: &CryptoPool,
    algorithm: KeyAlgorithm,
    now: Timestamp,
) -> Result<(RootCa, String), CertError> {
    if let Some(user) = &hierarchy.spec.certificates.root_ca {
        let name = user.secret_ref.name.clone();
        let secret = secrets
            .get_opt(&name)
            .await?
            .ok_or_else(|| CertError::UserRootMissing {
                secret: name.clone(),
            })?;
        let cert = text(&secret, "tls.crt").ok_or_else(|| CertError::RootKeyMissing {
            secret: name.clone(),
            key: "tls.crt",
        })?;
        let key = text(&secret, "tls.key").ok_or_else(|| CertError::RootKeyMissing {
            secret: name.clone(),
            key: "tls.key",
        })?;
        let root = import_root_ca(&cert, &key, now).map_err(|source| CertError::UserRoot {
            secret: name.clone(),
            source,
        })?;
        return Ok((root, name));
    }
    let name = root_ca_secret_name(&hierarchy.name_any());
    if let Some(secret) = secrets.get_opt(&name).await? {
        let damaged = |source| CertError::GeneratedRootDamaged {
            secret: name.clone(),
            source,
        };
        let cert = text(&secret, "tls.crt")
            .ok_or(RootCaError::MissingCertificate)
            .map_err(damaged)?;
        let key = text(&secret, "tls.key")
            .ok_or(RootCaError::MissingKey)
            .map_err(damaged)?;
        let root = import_root_ca(&cert, &key, now).map_err(damaged)?;
        return Ok((root, name));
    }
    let key = pool.generate_key(algorithm).await?;
    let hierarchy_name = hierarchy.name_any();
    let root = pool
        .run(move || generate_root_ca(&hierarchy_name, &key, DEFAULT_ROOT_VALIDITY, now))
        .await?;
    let data = BTreeMap::from([
        ("tls.crt".to_string(), root.cert_pem.clone().into_bytes()),
        ("tls.key".to_string(), root.key.pem().as_bytes().to_vec()),
        ("ca.crt".to_string(), root.cert_pem.clone().into_bytes()),
    ]);
    // Created, not applied: if another reconcile made it meanwhile, that one wins and this
    // reconcile retries with it, so a root is never replaced.
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(secret_labels(&hierarchy.name_any(), "root-ca")),
            owner_references: hierarchy.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Secret::default()
    };
    secrets.create(&Default::default(), &secret).await?;
    Ok((root, name))
}
