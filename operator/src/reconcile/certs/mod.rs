//! The certificate step (docs/architecture.md, "Certificates and bundles"): the root CA (the
//! user's, or generated once and never regenerated silently), an edge CA per Edge device and,
//! with X509 authentication, an identity certificate per device, each in a `kubernetes.io/tls`
//! Secret owned by the hierarchy. Certificates are re-issued before `renewBefore`, when the
//! root changes, and when missing or unreadable; the revision counts issuances.
//!
//! Observe (the root and certificate Secrets), plan ([`plan`], pure), apply (generate, issue;
//! then write and delete beside the device step, [`CertificateWrites`]).

pub mod installed;
pub mod plan;
pub mod rotation;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use jiff::Timestamp;

use super::devices::SasKeys;
use super::scope::Scope;
use super::secrets::{SecretWrite, device_secret_labels, secret_labels};
use crate::api::{
    AuthenticationType, DeviceType, KeyAlgorithm, Topology, duration::parse_duration,
};
use crate::names::{
    BUNDLE_COMPONENT, CERTS_COMPONENT, DEVICE_ID_ANNOTATION, OLDER_IDENTITY_ANNOTATION,
    PREVIOUS_IDENTITY_ANNOTATION, RETIRED_ROOT_COMPONENT, REVISION_ANNOTATION, ROOT_ANNOTATION,
    ROOT_CA_COMPONENT, ROTATION_STARTED_ANNOTATION, retired_root_secret_name, root_ca_secret_name,
};
use crate::pki::{
    CryptoPool, DEFAULT_ROOT_VALIDITY, IdentitySigner, IssuedCertificate, PkiError, RootCa,
    RootCaError, generate_root_ca, issue_edge_ca, issue_identity_certificate, renewal_time,
};
use plan::{CertPlanInput, IssueJob, RootPlan, SasKeyPlan, WantedDevice};
use rotation::{RotationDevice, RotationInput, RotationPhase, RotationPlan};

const SAS_PRIMARY: &str = "sas-primary-key";
const SAS_SECONDARY: &str = "sas-secondary-key";

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
    #[error(
        "the generated root CA Secret {secret:?} is gone while {} device certificate Secret(s) \
         issued under it are still in use ({}); it is not regenerated, because every parent-child \
         link would break until each device installed a new bundle. Restore the Secret from a \
         backup, or delete the hierarchy's certificate Secrets (kubectl delete secret -l \
         edgehierarchy.dev/component=certs) to accept a new root and re-issue every device",
        devices.len(),
        devices.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    )]
    GeneratedRootMissing {
        secret: String,
        devices: Vec<String>,
    },
    #[error(
        "the root CA Secret {secret:?} is gone and {devices} device certificate Secret(s) of a \
         deleted hierarchy of this name are being garbage-collected; waiting for them to go \
         before generating a new root"
    )]
    RootBeingCollected { secret: String, devices: usize },
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
                | Self::GeneratedRootMissing { .. }
        )
    }
}

/// A device's certificates as they are after this step.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCertificates {
    pub secret_name: String,
    pub edge_ca: Option<IssuedCertificate>,
    pub identity: Option<IssuedCertificate>,
    /// The identity thumbprints the device held before the last two renewals, newest first:
    /// one of them stays registered so a device still using it does not lose access
    /// ([`secondary_thumbprint`]).
    pub previous_identity_thumbprints: Vec<String>,
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
    /// Every root a device must trust now: the current one, plus the old ones while a root
    /// rotation keeps them.
    pub trust_bundle: Vec<String>,
    /// SHA-256 thumbprints of `trust_bundle`, in its order.
    pub trust_thumbprints: Vec<String>,
    /// The root rotation under way (or completed in this reconcile).
    pub rotation: Option<RootRotation>,
    /// Per device, the identity thumbprint its installer acknowledged running (X509).
    pub running_identities: BTreeMap<String, String>,
    pub devices: BTreeMap<String, DeviceCertificates>,
    /// Devices whose certificates were issued for the first time / re-issued in this step.
    pub issued: Vec<String>,
    pub renewed: Vec<String>,
    pub renew_before: Duration,
    /// Under `issuance: Est`: per device, the hub identity it enrolled over EST and the one it
    /// presented then (see `est::record`).
    pub est_identities: BTreeMap<String, (String, Option<String>)>,
    /// Under `issuance: Est`: per device, the certificate it enrolled over EST last.
    pub est_latest: BTreeMap<String, crate::api::EstCertificateStatus>,
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

    /// What the hub must hold per X509 device: [`Certificates::thumbprints`], with identities
    /// enrolled over EST taking the place of the bundle's.
    pub fn hub_thumbprints(&self) -> BTreeMap<String, (String, Option<String>)> {
        crate::est::record::with_enrolled_identities(self.thumbprints(), &self.est_identities)
    }

    /// Thumbprints to register per X509 device: the current identity first, and second the
    /// previous one a device may still run ([`secondary_thumbprint`]).
    pub fn thumbprints(&self) -> BTreeMap<String, (String, Option<String>)> {
        self.devices
            .iter()
            .filter_map(|(id, d)| {
                let current = d.identity.as_ref()?.sha256_thumbprint.clone();
                let secondary = secondary_thumbprint(
                    &current,
                    &d.previous_identity_thumbprints,
                    self.running_identities.get(id).map(String::as_str),
                );
                Some((id.clone(), (current, secondary)))
            })
            .collect()
    }
}

/// The hub has two thumbprint slots: the primary holds the current identity, the secondary
/// the previous identity the device may still run. That is the one its installer acknowledged
/// running (a device that missed a renewal runs the one before the previous), and otherwise
/// the newest previous one.
pub fn secondary_thumbprint(
    current: &str,
    previous: &[String],
    running: Option<&str>,
) -> Option<String> {
    let candidates: Vec<&String> = previous.iter().filter(|p| *p != current).collect();
    running
        .and_then(|r| candidates.iter().find(|p| p.as_str() == r))
        .or(candidates.first())
        .map(|p| (*p).clone())
}

/// A root rotation as this reconcile left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRotation {
    pub plan: RotationPlan,
    /// The rotation was noticed in this reconcile.
    pub began_now: bool,
}

/// Settings of the step, read from the spec.
struct Settings {
    algorithm: KeyAlgorithm,
    validity: Duration,
    renew_before: Duration,
    overlap: Duration,
    x509: bool,
    /// Issue identity certificates: X509, or the bootstrap identity of `issuance: Est`.
    identity: bool,
}

impl Settings {
    fn of(scope: &Scope<'_>) -> Self {
        let spec = &scope.hierarchy.spec.certificates;
        // Validation has checked both durations.
        Self {
            algorithm: spec.algorithm,
            validity: parse_duration(&spec.duration).unwrap_or(Duration::from_secs(2160 * 3600)),
            renew_before: parse_duration(&spec.renew_before)
                .unwrap_or(Duration::from_secs(720 * 3600)),
            overlap: parse_duration(&spec.root_rotation.overlap)
                .unwrap_or(Duration::from_secs(720 * 3600)),
            x509: scope.hierarchy.spec.authentication == AuthenticationType::X509,
            identity: scope.hierarchy.spec.authentication == AuthenticationType::X509
                || spec.issuance == crate::api::CertificateIssuance::Est,
        }
    }
}

/// The certificate Secrets one reconcile has to write and delete: the devices' certificates are
/// in memory once issued, and nothing else in the reconcile reads these Secrets, so they are
/// written beside the device step ([`CertificateWrites::apply`]). A crash before they land
/// loses nothing the hub needs: certificates not stored are issued again, and a SAS key not
/// stored is read back from the hub by the bundle step.
#[derive(Debug, Default)]
pub struct CertificateWrites {
    writes: Vec<SecretWrite>,
    delete: Vec<String>,
    /// The retired-root Secret, once a rotation completed.
    delete_retired: Vec<String>,
}

impl CertificateWrites {
    pub async fn apply(self, scope: &Scope<'_>) -> Result<(), CertError> {
        scope.secrets.apply_all(&self.writes).await?;
        scope
            .secrets
            .delete_all(CERTS_COMPONENT, &self.delete)
            .await?;
        scope
            .secrets
            .delete_all(RETIRED_ROOT_COMPONENT, &self.delete_retired)
            .await?;
        Ok(())
    }
}

/// Ensures the root CA and issues what every device's certificates need; the Secrets to write
/// come back beside them.
pub async fn reconcile(
    scope: &Scope<'_>,
    topology: &Topology,
    now: Timestamp,
) -> Result<(Certificates, CertificateWrites), CertError> {
    let settings = Settings::of(scope);
    let spec = &scope.hierarchy.spec;
    // Observe.
    let user_root = spec.certificates.root_ca.as_ref();
    let root_name = user_root.map_or_else(
        || root_ca_secret_name(&scope.identity.name),
        |r| r.secret_ref.name.clone(),
    );
    let root_secret = scope.secrets.get(&root_name).await?;
    let existing = scope.secrets.list_component(CERTS_COMPONENT).await?;
    // Plan.
    let root_plan = plan::plan_root(
        user_root,
        &root_name,
        root_secret.as_ref(),
        &existing,
        &scope.identity.uid,
        now,
    )?;
    let (root, root_secret) = match root_plan {
        RootPlan::Use { root, secret } => (*root, secret),
        RootPlan::Generate { secret } => {
            (generate_root(scope, &settings, &secret, now).await?, secret)
        }
    };
    let wanted: Vec<WantedDevice> = spec
        .devices
        .iter()
        .filter(|d| topology.layer.contains_key(&d.id))
        .filter(|d| d.device_type == DeviceType::Edge || settings.x509)
        .map(|d| WantedDevice {
            id: d.id.clone(),
            device_type: d.device_type,
        })
        .collect();
    // A root rotation, when an old root is still around.
    let retired_name = retired_root_secret_name(&scope.identity.name);
    let retired = scope.secrets.get(&retired_name).await?;
    let old_roots = plan::old_roots(&root, &existing, retired.as_ref());
    // Bundle Secrets say what each device acknowledged running; read from the watch's cache.
    let bundles = if old_roots.is_empty() && !settings.x509 {
        BTreeMap::new()
    } else {
        scope.secrets.list_component(BUNDLE_COMPONENT).await?
    };
    let running_identities = bundles
        .iter()
        .filter_map(|(id, b)| Some((id.clone(), installed::running(b)?.identity?.to_string())))
        .collect();
    let rotation = if old_roots.is_empty() {
        None
    } else {
        let devices = rotation_devices(&wanted, topology, &root, &existing, &bundles);
        Some(rotation::plan_rotation(&RotationInput {
            devices: &devices,
            started: retired.as_ref().and_then(rotation_started),
            overlap: settings.overlap,
            now,
        }))
    };
    let keep_old = rotation
        .as_ref()
        .is_some_and(|r| r.phase != RotationPhase::Complete);
    let hold = rotation
        .as_ref()
        .map(|r| r.hold.clone())
        .unwrap_or_default();
    let (old_thumbprints, old_pems): (Vec<String>, Vec<String>) = if keep_old {
        old_roots.into_iter().unzip()
    } else {
        (Vec::new(), Vec::new())
    };
    let plan = plan::plan_certificates(&CertPlanInput {
        hierarchy: &scope.identity.name,
        wanted: &wanted,
        x509: settings.x509,
        identity: settings.identity,
        root: &root,
        existing: &existing,
        renew_before: settings.renew_before,
        keep_removed: scope.hierarchy.spec.policy.leaves_removed_devices(),
        hold_old_root: &hold,
        old_roots: &old_pems,
        now,
    });
    // Apply: issue now, write beside the device step.
    let issued = issue_all(&scope.ctx.crypto, &root, &settings, plan.issue, now).await?;
    let mut devices = plan.reuse;
    let (mut first, mut renewed) = (Vec::new(), Vec::new());
    let mut writes = Vec::with_capacity(issued.len());
    for (job, certs) in issued {
        writes.push(certificate_secret(
            &scope.identity.name,
            &job.id,
            &certs,
            &root,
        ));
        if job.renewal {
            &mut renewed
        } else {
            &mut first
        }
        .push(job.id.clone());
        devices.insert(job.id, certs);
    }
    let mut delete_retired = Vec::new();
    if let Some(rotation) = &rotation {
        if rotation.phase == RotationPhase::Complete {
            if retired.is_some() {
                delete_retired.push(retired_name);
            }
        } else if let Some(write) = retired_root_secret(
            &scope.identity.name,
            &retired_name,
            retired.as_ref(),
            &old_pems,
            rotation.started,
        ) {
            writes.push(write);
        }
    }
    let trust_thumbprints = std::iter::once(root.info.sha256_thumbprint.clone())
        .chain(old_thumbprints)
        .collect();
    let est = spec.certificates.issuance == crate::api::CertificateIssuance::Est;
    let certificates = Certificates {
        running_identities,
        trust_thumbprints,
        rotation: rotation.map(|plan| RootRotation {
            plan,
            began_now: retired.is_none(),
        }),
        root,
        root_secret,
        trust_bundle: plan.trust_bundle,
        devices,
        issued: first,
        renewed,
        renew_before: settings.renew_before,
        est_identities: if est {
            crate::est::record::enrolled_identities(&existing, now)
        } else {
            BTreeMap::new()
        },
        est_latest: if est {
            crate::est::record::latest_enrollments(&existing)
        } else {
            BTreeMap::new()
        },
    };
    let writes = CertificateWrites {
        writes,
        delete: plan.delete,
        delete_retired,
    };
    Ok((certificates, writes))
}

/// Where each wanted device stands in a root rotation, from its certificate and bundle Secrets.
fn rotation_devices(
    wanted: &[WantedDevice],
    topology: &Topology,
    root: &RootCa,
    existing: &BTreeMap<String, k8s_openapi::api::core::v1::Secret>,
    bundles: &BTreeMap<String, k8s_openapi::api::core::v1::Secret>,
) -> Vec<RotationDevice> {
    let current = &root.info.sha256_thumbprint;
    wanted
        .iter()
        .map(|d| {
            let secret = existing.get(&d.id);
            let edge_ca = secret.and_then(|s| plan::edge_ca_under(s, current));
            RotationDevice {
                id: d.id.clone(),
                layer: topology.layer.get(&d.id).copied().unwrap_or(u32::MAX),
                edge: d.device_type == DeviceType::Edge,
                on_old_root: secret.is_some_and(|s| plan::under_other_root(s, current)),
                installed: rotation::installed(bundles.get(&d.id), current, edge_ca.as_deref()),
            }
        })
        .collect()
}

fn rotation_started(secret: &k8s_openapi::api::core::v1::Secret) -> Option<Timestamp> {
    use kube::ResourceExt;
    secret
        .annotations()
        .get(ROTATION_STARTED_ANNOTATION)?
        .parse()
        .ok()
}

/// The Secret keeping the old roots and the rotation's start, when it must be written: missing,
/// or holding other roots. Never any key: old certificates are only trusted, not issued.
fn retired_root_secret(
    hierarchy: &str,
    name: &str,
    current: Option<&k8s_openapi::api::core::v1::Secret>,
    old_roots: &[String],
    started: Timestamp,
) -> Option<SecretWrite> {
    let pem = old_roots.concat();
    let unchanged = current.is_some_and(|s| {
        super::secrets::text(s, "ca.crt").as_deref() == Some(pem.as_str())
            && rotation_started(s).is_some()
    });
    (!unchanged).then(|| SecretWrite {
        name: name.to_string(),
        type_: "Opaque",
        labels: secret_labels(hierarchy, RETIRED_ROOT_COMPONENT),
        annotations: BTreeMap::from([(
            ROTATION_STARTED_ANNOTATION.to_string(),
            started.to_string(),
        )]),
        data: BTreeMap::from([("ca.crt".to_string(), pem.into_bytes())]),
    })
}

/// Generates the root into its Secret. Created, not applied: if another reconcile made it
/// meanwhile, that one wins and this reconcile retries with it, so a root is never replaced.
async fn generate_root(
    scope: &Scope<'_>,
    settings: &Settings,
    secret: &str,
    now: Timestamp,
) -> Result<RootCa, CertError> {
    let pool = &scope.ctx.crypto;
    let key = pool.generate_key(settings.algorithm).await?;
    let hierarchy = scope.identity.name.clone();
    let root = pool
        .run(move || generate_root_ca(&hierarchy, &key, DEFAULT_ROOT_VALIDITY, now))
        .await?;
    let data = BTreeMap::from([
        ("tls.crt".to_string(), root.cert_pem.clone().into_bytes()),
        ("tls.key".to_string(), root.key.pem().as_bytes().to_vec()),
        ("ca.crt".to_string(), root.cert_pem.clone().into_bytes()),
    ]);
    scope
        .secrets
        .create(&SecretWrite {
            name: secret.to_string(),
            type_: "kubernetes.io/tls",
            labels: secret_labels(&scope.identity.name, ROOT_CA_COMPONENT),
            annotations: BTreeMap::new(),
            data,
        })
        .await?;
    Ok(root)
}

/// Issues every job on the crypto pool, a few at a time.
async fn issue_all(
    pool: &CryptoPool,
    root: &RootCa,
    settings: &Settings,
    jobs: Vec<IssueJob>,
    now: Timestamp,
) -> Result<Vec<(IssueJob, DeviceCertificates)>, CertError> {
    stream::iter(jobs)
        .map(|job| async move {
            let certs = issue(pool, root, settings, &job, now).await?;
            Ok::<_, CertError>((job, certs))
        })
        .buffer_unordered(pool.parallelism().max(1) * 2)
        .try_collect()
        .await
}

async fn issue(
    pool: &CryptoPool,
    root: &RootCa,
    settings: &Settings,
    job: &IssueJob,
    now: Timestamp,
) -> Result<DeviceCertificates, CertError> {
    let validity = settings.validity;
    let edge_ca = if job.device_type == DeviceType::Edge {
        let key = pool.generate_key(settings.algorithm).await?;
        let (id, root) = (job.id.clone(), root.clone());
        Some(
            pool.run(move || issue_edge_ca(&root, &id, &key, validity, now))
                .await?,
        )
    } else {
        None
    };
    let identity = if settings.identity {
        let key = pool.generate_key(settings.algorithm).await?;
        let (id, root) = (job.id.clone(), root.clone());
        Some(
            pool.run(move || {
                issue_identity_certificate(&id, &key, IdentitySigner::Root(&root), validity, now)
            })
            .await?,
        )
    } else {
        None
    };
    let sas_keys = match &job.sas_keys {
        SasKeyPlan::None => None,
        SasKeyPlan::Keep(keys) => Some(keys.clone()),
        SasKeyPlan::Generate => Some(SasKeys::generate()),
    };
    Ok(DeviceCertificates {
        secret_name: job.secret_name.clone(),
        not_after: earliest(&edge_ca, &identity).unwrap_or(now),
        edge_ca,
        identity,
        previous_identity_thumbprints: job.previous_identities.clone(),
        revision: job.revision,
        sas_keys,
    })
}

fn earliest(a: &Option<IssuedCertificate>, b: &Option<IssuedCertificate>) -> Option<Timestamp> {
    [a, b].into_iter().flatten().map(|c| c.not_after).min()
}

/// The Secret holding a device's certificates, keys and (SymmetricKey) SAS keys.
fn certificate_secret(
    hierarchy: &str,
    id: &str,
    certs: &DeviceCertificates,
    root: &RootCa,
) -> SecretWrite {
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
    let mut annotations = BTreeMap::from([
        (DEVICE_ID_ANNOTATION.to_string(), id.to_string()),
        (REVISION_ANNOTATION.to_string(), certs.revision.to_string()),
        (
            ROOT_ANNOTATION.to_string(),
            root.info.sha256_thumbprint.clone(),
        ),
    ]);
    for (key, thumbprint) in [PREVIOUS_IDENTITY_ANNOTATION, OLDER_IDENTITY_ANNOTATION]
        .into_iter()
        .zip(&certs.previous_identity_thumbprints)
    {
        annotations.insert(key.to_string(), thumbprint.clone());
    }
    SecretWrite {
        name: certs.secret_name.clone(),
        type_: if certs.edge_ca.is_some() {
            "kubernetes.io/tls"
        } else {
            "Opaque"
        },
        labels: device_secret_labels(hierarchy, CERTS_COMPONENT, id),
        annotations,
        data,
    }
}
