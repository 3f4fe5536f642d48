//! The certificate step (docs/architecture.md, "Certificates and bundles"): the root CA (the
//! user's, or generated once and never regenerated silently), an edge CA per Edge device and,
//! with X509 authentication, an identity certificate per device, each in a `kubernetes.io/tls`
//! Secret owned by the hierarchy. Certificates are re-issued before `renewBefore`, when the
//! root changes, and when missing or unreadable; the revision counts issuances.
//!
//! Observe (the root and certificate Secrets), plan ([`plan`], pure), apply (generate, issue;
//! then write and delete beside the device step, [`CertificateWrites`]).

pub mod plan;

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
    CERTS_COMPONENT, DEVICE_ID_ANNOTATION, PREVIOUS_IDENTITY_ANNOTATION, REVISION_ANNOTATION,
    ROOT_ANNOTATION, ROOT_CA_COMPONENT, root_ca_secret_name,
};
use crate::pki::{
    CryptoPool, DEFAULT_ROOT_VALIDITY, IdentitySigner, IssuedCertificate, PkiError, RootCa,
    RootCaError, generate_root_ca, issue_edge_ca, issue_identity_certificate, renewal_time,
};
use plan::{CertPlanInput, IssueJob, RootPlan, SasKeyPlan, WantedDevice};

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

/// Settings of the step, read from the spec.
struct Settings {
    algorithm: KeyAlgorithm,
    validity: Duration,
    renew_before: Duration,
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
}

impl CertificateWrites {
    pub async fn apply(self, scope: &Scope<'_>) -> Result<(), CertError> {
        scope.secrets.apply_all(&self.writes).await?;
        scope
            .secrets
            .delete_all(CERTS_COMPONENT, &self.delete)
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
    let plan = plan::plan_certificates(&CertPlanInput {
        hierarchy: &scope.identity.name,
        wanted: &wanted,
        x509: settings.x509,
        identity: settings.identity,
        root: &root,
        existing: &existing,
        renew_before: settings.renew_before,
        keep_removed: scope.hierarchy.spec.policy.leaves_removed_devices(),
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
    let est = spec.certificates.issuance == crate::api::CertificateIssuance::Est;
    let certificates = Certificates {
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
    };
    Ok((certificates, writes))
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
        previous_identity_thumbprint: job.previous_identity.clone(),
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
    if let Some(previous) = &certs.previous_identity_thumbprint {
        annotations.insert(PREVIOUS_IDENTITY_ANNOTATION.to_string(), previous.clone());
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
