//! The bundle plan: from the bundle Secrets that exist, the registered devices and their
//! certificates, which bundles are (re)written, which stay, and which go. Pure; the step's I/O
//! is in `super`.
//!
//! A SymmetricKey device's key comes from the bundle already written (same device scope), or from
//! the keys the operator created the device with; only a device someone else (re-)created must
//! be read from the hub ([`keys_to_read`]). A resync, and a new device, cost no registry reads.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::api::{
    AuthenticationType, BundleStatus, CertificateIssuance, DeviceSpec, DeviceType,
    EdgeHierarchySpec,
};
use crate::bundle::{
    BundleFile, BundleInput, DeviceAuth, EstBundle, bundle_files, bundle_files_est,
    bundle_fingerprint,
};
use crate::deploy::{RegistryLogin, agent_server_address};
use crate::names::{
    BUNDLE_COMPONENT, DEVICE_ID_ANNOTATION, EDGE_CA_ANNOTATION, FINGERPRINT_ANNOTATION,
    IDENTITY_ANNOTATION, INSTALLED_ANNOTATION, PREVIOUS_EDGE_CA_ANNOTATION,
    PREVIOUS_FINGERPRINT_ANNOTATION, PREVIOUS_IDENTITY_ANNOTATION_OF_BUNDLE,
    PREVIOUS_TRUSTED_ROOTS_ANNOTATION, REVISION_ANNOTATION, SCOPE_ANNOTATION,
    TRUSTED_ROOTS_ANNOTATION, bundle_secret_name,
};
use crate::pki::IssuedCertificate;
use crate::reconcile::certs::{Certificates, DeviceCertificates};
use crate::reconcile::devices::HubDevice;
use crate::reconcile::secrets::{SecretWrite, device_secret_labels};

/// Everything the bundle plan looks at.
pub struct BundlePlanInput<'a> {
    pub hierarchy: &'a str,
    pub namespace: &'a str,
    pub spec: &'a EdgeHierarchySpec,
    pub hub_hostname: &'a str,
    pub layers: &'a BTreeMap<String, u32>,
    /// The hierarchy's devices registered in the hub.
    pub registered: &'a BTreeMap<String, HubDevice>,
    pub certs: &'a Certificates,
    /// Devices this reconcile created (so their SAS keys are the operator's).
    pub created_now: &'a BTreeSet<String>,
    /// The hierarchy's bundle Secrets, by device id.
    pub existing: &'a BTreeMap<String, Secret>,
    /// `spec.edge.agentAuth` with its user name and password read from the Secret.
    pub agent_auth: Option<&'a RegistryLogin>,
    /// Devices removed from the spec stay in the hub (`PolicySpec::leaves_removed_devices`), so
    /// their Secrets are kept rather than deleted.
    pub keep_removed: bool,
    /// The EST server devices enroll from (`run --est-addr`); needed under `issuance: Est`.
    pub est: Option<&'a crate::est::EstEndpoint>,
}

/// What the bundle step does.
#[derive(Debug, Default)]
pub struct BundlePlan {
    /// Bundle Secrets to write, with their device ids.
    pub writes: Vec<(String, SecretWrite)>,
    /// Per device: its bundle Secret and revision after the writes.
    pub status: BTreeMap<String, BundleStatus>,
    /// Devices whose bundle could not be rendered, with the reason (names the field).
    pub failures: BTreeMap<String, String>,
    /// Bundle Secrets of devices that left the spec.
    pub delete: Vec<String>,
}

/// A device that gets a bundle now: an Edge device registered in the hub with its edge CA.
struct Candidate<'a> {
    device: &'a DeviceSpec,
    layer: u32,
    scope: String,
    certs: &'a DeviceCertificates,
    edge_ca: &'a IssuedCertificate,
}

fn candidates<'a>(input: &'a BundlePlanInput<'a>) -> impl Iterator<Item = Candidate<'a>> {
    input.spec.devices.iter().filter_map(move |device| {
        if device.device_type != DeviceType::Edge {
            return None;
        }
        let certs = input.certs.devices.get(&device.id)?;
        Some(Candidate {
            device,
            layer: *input.layers.get(&device.id)?,
            scope: input
                .registered
                .get(&device.id)?
                .device_scope
                .clone()
                .unwrap_or_default(),
            edge_ca: certs.edge_ca.as_ref()?,
            certs,
        })
    })
}

/// The SAS key a candidate's bundle carries, when the operator knows it without asking the hub.
fn known_key(input: &BundlePlanInput<'_>, c: &Candidate<'_>) -> Option<String> {
    let from_bundle = input
        .existing
        .get(&c.device.id)
        .filter(|s| s.annotations().get(SCOPE_ANNOTATION) == Some(&c.scope))
        .and_then(|s| s.data.as_ref()?.get("config.toml").map(|v| v.0.clone()))
        .and_then(|toml| key_from_config(&String::from_utf8_lossy(&toml)));
    // Devices this reconcile created carry the operator's keys; others (adopted, re-created by
    // someone else) are asked once.
    let ours = c
        .certs
        .sas_keys
        .as_ref()
        .filter(|_| input.created_now.contains(&c.device.id))
        .map(|k| k.primary.clone());
    from_bundle.or(ours)
}

fn symmetric_key(spec: &EdgeHierarchySpec) -> bool {
    spec.authentication == AuthenticationType::SymmetricKey
}

/// SymmetricKey devices whose primary key must be read from the hub before planning.
pub fn keys_to_read(input: &BundlePlanInput<'_>) -> Vec<String> {
    if !symmetric_key(input.spec) {
        return Vec::new();
    }
    candidates(input)
        .filter(|c| known_key(input, c).is_none())
        .map(|c| c.device.id.clone())
        .collect()
}

/// Plans every bundle; `read_keys` holds what [`keys_to_read`] asked the hub for.
pub fn plan_bundles(
    input: &BundlePlanInput<'_>,
    read_keys: &BTreeMap<String, String>,
) -> BundlePlan {
    let mut plan = BundlePlan::default();
    let by_id: BTreeMap<&str, &DeviceSpec> = input
        .spec
        .devices
        .iter()
        .map(|d| (d.id.as_str(), d))
        .collect();
    for c in candidates(input) {
        let id = &c.device.id;
        let auth = if symmetric_key(input.spec) {
            let Some(key) = known_key(input, &c).or_else(|| read_keys.get(id).cloned()) else {
                continue;
            };
            DeviceAuth::SymmetricKey {
                shared_access_key: key,
            }
        } else {
            match c.certs.identity.clone() {
                Some(identity) => DeviceAuth::X509 { identity },
                None => continue,
            }
        };
        let files = match render_files(input, &c, bundle_input(input, &c, &by_id, auth)) {
            Ok(f) => f,
            Err(e) => {
                plan.failures.insert(id.clone(), e);
                continue;
            }
        };
        let secret_name = bundle_secret_name(input.hierarchy, id);
        let previous = input.existing.get(id);
        let fingerprint = bundle_fingerprint(&files);
        let previous_revision: u32 = previous
            .and_then(|s| s.annotations().get(REVISION_ANNOTATION)?.parse().ok())
            .unwrap_or(0);
        let unchanged = previous.is_some_and(|s| {
            s.annotations().get(FINGERPRINT_ANNOTATION) == Some(&fingerprint)
                && s.annotations().get(SCOPE_ANNOTATION) == Some(&c.scope)
        });
        let revision = previous_revision + u32::from(!unchanged);
        if !unchanged {
            let mut annotations = previous.map(remembered).unwrap_or_default();
            plan.writes.push((
                id.clone(),
                SecretWrite {
                    name: secret_name.clone(),
                    type_: "Opaque",
                    labels: device_secret_labels(input.hierarchy, BUNDLE_COMPONENT, id),
                    annotations: {
                        annotations.extend([
                            (DEVICE_ID_ANNOTATION.to_string(), id.clone()),
                            (REVISION_ANNOTATION.to_string(), revision.to_string()),
                            (FINGERPRINT_ANNOTATION.to_string(), fingerprint),
                            (SCOPE_ANNOTATION.to_string(), c.scope.clone()),
                            // What a device runs once it acknowledges this bundle (root rotation).
                            (
                                TRUSTED_ROOTS_ANNOTATION.to_string(),
                                input.certs.trust_thumbprints.join(","),
                            ),
                            (
                                EDGE_CA_ANNOTATION.to_string(),
                                c.edge_ca.sha256_thumbprint.clone(),
                            ),
                        ]);
                        if let Some(identity) = &c.certs.identity {
                            annotations.insert(
                                IDENTITY_ANNOTATION.to_string(),
                                identity.sha256_thumbprint.clone(),
                            );
                        }
                        annotations
                    },
                    data: files.into_iter().map(|f| (f.path, f.contents)).collect(),
                },
            ));
        }
        plan.status.insert(id.clone(), BundleStatus { revision });
    }
    plan.delete = input
        .existing
        .iter()
        .filter(|_| !input.keep_removed)
        .filter(|(id, _)| !by_id.contains_key(id.as_str()))
        .map(|(_, s)| s.name_any())
        .collect();
    plan
}

/// The revision a device is known to run, as `previous-*` annotations for the revision that
/// replaces `previous`: the one the installer acknowledged when that is the remembered older
/// one (the device skipped a revision), else the one being replaced.
fn remembered(previous: &Secret) -> BTreeMap<String, String> {
    let annotations = previous.annotations();
    let ack = annotations.get(INSTALLED_ANNOTATION);
    let skipped = ack.is_some()
        && ack == annotations.get(PREVIOUS_FINGERPRINT_ANNOTATION)
        && ack != annotations.get(FINGERPRINT_ANNOTATION);
    if skipped {
        return annotations
            .iter()
            .filter(|(k, _)| k.starts_with("edgehierarchy.dev/previous-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    [
        (FINGERPRINT_ANNOTATION, PREVIOUS_FINGERPRINT_ANNOTATION),
        (TRUSTED_ROOTS_ANNOTATION, PREVIOUS_TRUSTED_ROOTS_ANNOTATION),
        (EDGE_CA_ANNOTATION, PREVIOUS_EDGE_CA_ANNOTATION),
        (IDENTITY_ANNOTATION, PREVIOUS_IDENTITY_ANNOTATION_OF_BUNDLE),
    ]
    .into_iter()
    .filter_map(|(now, before)| Some((before.to_string(), annotations.get(now)?.clone())))
    .collect()
}

/// The bundle's files: plain, or under `issuance: Est` with the EST sections and files.
fn render_files(
    input: &BundlePlanInput<'_>,
    c: &Candidate<'_>,
    bundle: BundleInput,
) -> Result<Vec<BundleFile>, String> {
    if input.spec.certificates.issuance != CertificateIssuance::Est {
        return bundle_files(&bundle).map_err(|e| e.to_string());
    }
    let endpoint = input.est.ok_or_else(|| {
        format!(
            "device {:?}: spec.certificates.issuance is Est but the operator runs without --est-addr; start it with --est-addr (and --est-url) or set issuance: Bundle",
            c.device.id
        )
    })?;
    let bootstrap = c.certs.identity.clone().ok_or_else(|| {
        format!(
            "device {:?}: no bootstrap identity certificate issued yet",
            c.device.id
        )
    })?;
    let est = EstBundle {
        url: endpoint.url.clone(),
        trusted_ca_pem: endpoint.trusted_ca_pem.clone(),
        bootstrap,
    };
    bundle_files_est(&bundle, &est).map_err(|e| e.to_string())
}

fn bundle_input(
    input: &BundlePlanInput<'_>,
    c: &Candidate<'_>,
    by_id: &BTreeMap<&str, &DeviceSpec>,
    auth: DeviceAuth,
) -> BundleInput {
    let edge = &input.spec.edge;
    let parent = c.device.parent.as_deref().and_then(|p| by_id.get(p));
    let agent_image = if c.layer > 1 {
        crate::deploy::upstream_image(&edge.agent_image, edge)
            .unwrap_or_else(|| edge.agent_image.clone())
    } else {
        edge.agent_image.clone()
    };
    BundleInput {
        hierarchy: input.hierarchy.to_string(),
        namespace: input.namespace.to_string(),
        hub_hostname: input.hub_hostname.to_string(),
        device_id: c.device.id.clone(),
        layer: c.layer,
        parent_device_id: c.device.parent.clone(),
        hostname: c.device.hostname.clone(),
        parent_hostname: parent.and_then(|p| p.hostname.clone()),
        auth,
        trust_bundle: input.certs.trust_bundle.clone(),
        edge_ca: c.edge_ca.clone(),
        agent_auth: input.agent_auth.map(|login| RegistryLogin {
            address: agent_server_address(&agent_image, &login.address),
            ..login.clone()
        }),
        agent_image,
        upstream_port: edge.upstream_port,
    }
}

/// The SharedAccessKey of the connection string in a bundle's config.toml.
fn key_from_config(config: &str) -> Option<String> {
    let value: toml::Value = toml::from_str(config).ok()?;
    let connection = value
        .get("provisioning")?
        .get("connection_string")?
        .as_str()?;
    connection
        .split(';')
        .find_map(|part| part.strip_prefix("SharedAccessKey="))
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests;
