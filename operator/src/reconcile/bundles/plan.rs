//! The bundle plan: from the bundle Secrets that exist, the registered devices and their
//! certificates, which bundles are (re)written, which stay, and which go. Pure; the step's I/O
//! is in `super`.
//!
//! A SymmetricKey device's key comes from the bundle already written (same device scope, same
//! device etag), or from the keys the operator created the device with; only a device someone
//! else (re-)created or changed must be read from the hub ([`keys_to_read`]). A resync, and a new
//! device, cost no registry reads; a key regenerated in the portal changes the device's etag, so
//! it is read, and the bundle is rewritten with it ([`BundlePlan::key_changed`]).
//!
//! A bundle only ever carries an identity the hub has: a SAS key on a device the hub
//! authenticates by SAS, an identity certificate whose thumbprint the hub has registered.
//! Otherwise the bundle already written stays (under `Observe` the hub is never written, so a
//! renewed certificate must not reach the device).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::api::{
    AuthenticationType, BundleStatus, CertificateIssuance, DeviceSpec, DeviceType,
    EdgeHierarchySpec, ReconcilePolicy,
};
use crate::bundle::{
    BundleFile, BundleInput, CONFIG_FILE, DeviceAuth, EstBundle, LEAF_CONNECTION_STRING_FILE,
    LeafBundleInput, bundle_files, bundle_files_est, bundle_fingerprint, leaf_bundle_files,
};
use crate::deploy::{RegistryLogin, agent_server_address};
use crate::iothub::AuthenticationType as HubAuth;
use crate::names::{
    BUNDLE_COMPONENT, DEVICE_ETAG_ANNOTATION, DEVICE_ID_ANNOTATION, EDGE_CA_ANNOTATION,
    FINGERPRINT_ANNOTATION, IDENTITY_ANNOTATION, INSTALLED_ANNOTATION, PREVIOUS_EDGE_CA_ANNOTATION,
    PREVIOUS_FINGERPRINT_ANNOTATION, PREVIOUS_IDENTITY_ANNOTATION_OF_BUNDLE,
    PREVIOUS_TRUSTED_ROOTS_ANNOTATION, REVISION_ANNOTATION, SCOPE_ANNOTATION,
    TRUSTED_ROOTS_ANNOTATION, bundle_secret_name,
};
use crate::pki::IssuedCertificate;
use crate::reconcile::certs::{Certificates, DeviceCertificates};
use crate::reconcile::devices::{HubDevice, SasKeys};
use crate::reconcile::secrets::{SecretWrite, device_secret_labels};

/// The bundle files a SAS key is read back from: an Edge device's `config.toml`, a Leaf's
/// connection string. The Secret cache keeps only these of a bundle, so they must stay in step.
pub const KEY_FILES: [&str; 2] = [CONFIG_FILE, LEAF_CONNECTION_STRING_FILE];

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
    /// The SAS keys of the devices this reconcile created (the operator chose them).
    pub created_keys: &'a BTreeMap<String, SasKeys>,
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
    /// Devices whose SAS key in the hub differs from the one their bundle had: changed outside
    /// the operator (the portal, `az iot hub device-identity renew-key`).
    pub key_changed: Vec<String>,
    /// Devices among `failures` whose bundle stays as it is because the hub lacks the identity a
    /// new one would carry; waiting does not help, a person or a `Manage` reconcile does.
    pub withheld: BTreeSet<String>,
    /// Writes that only record a new device etag: the files and revision stay the same.
    pub annotations_only: BTreeSet<String>,
}

/// A device that gets a bundle now: an Edge device registered in the hub with its edge CA, or
/// a Leaf device registered in the hub (with its identity under X509).
struct Candidate<'a> {
    device: &'a DeviceSpec,
    layer: u32,
    scope: String,
    hub: &'a HubDevice,
    certs: Option<&'a DeviceCertificates>,
    /// `None` for a Leaf device.
    edge_ca: Option<&'a IssuedCertificate>,
}

fn candidates<'a>(input: &'a BundlePlanInput<'a>) -> impl Iterator<Item = Candidate<'a>> {
    input.spec.devices.iter().filter_map(move |device| {
        let hub = input.registered.get(&device.id)?;
        let certs = input.certs.devices.get(&device.id);
        let (layer, edge_ca) = match device.device_type {
            DeviceType::Edge => (
                *input.layers.get(&device.id)?,
                Some(certs?.edge_ca.as_ref()?),
            ),
            _ => (input.layers.get(&device.id).copied().unwrap_or(0), None),
        };
        Some(Candidate {
            device,
            layer,
            scope: hub.device_scope.clone().unwrap_or_default(),
            hub,
            edge_ca,
            certs,
        })
    })
}

/// The SAS key in the candidate's bundle already written for its current device scope.
fn bundle_key(input: &BundlePlanInput<'_>, c: &Candidate<'_>) -> Option<String> {
    input
        .existing
        .get(&c.device.id)
        .filter(|s| s.annotations().get(SCOPE_ANNOTATION) == Some(&c.scope))
        .and_then(|s| {
            let data = s.data.as_ref()?;
            match data.get(CONFIG_FILE) {
                Some(toml) => key_from_config(&String::from_utf8_lossy(&toml.0)),
                None => key_from_connection_string(&String::from_utf8_lossy(
                    &data.get(LEAF_CONNECTION_STRING_FILE)?.0,
                )),
            }
        })
}

/// Whether the hub device changed since its bundle's key was known: its etag differs from the
/// one recorded. A bundle from before etags were recorded is trusted (and gets one recorded).
fn device_changed(input: &BundlePlanInput<'_>, c: &Candidate<'_>) -> bool {
    let recorded = input
        .existing
        .get(&c.device.id)
        .and_then(|s| s.annotations().get(DEVICE_ETAG_ANNOTATION));
    matches!((recorded, &c.hub.device_etag), (Some(recorded), Some(now)) if recorded != now)
}

/// The SAS key a candidate's bundle carries, when the operator knows it without asking the hub.
fn known_key(input: &BundlePlanInput<'_>, c: &Candidate<'_>) -> Option<String> {
    let from_bundle = bundle_key(input, c).filter(|_| !device_changed(input, c));
    // Devices this reconcile created carry the operator's keys; others (adopted, re-created by
    // someone else) are asked once.
    let ours = input
        .created_keys
        .get(&c.device.id)
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
        let previous = input.existing.get(id);
        let previous_revision: u32 = previous
            .and_then(|s| s.annotations().get(REVISION_ANNOTATION)?.parse().ok())
            .unwrap_or(0);
        let auth = if symmetric_key(input.spec) {
            let Some(key) = known_key(input, &c).or_else(|| read_keys.get(id).cloned()) else {
                continue;
            };
            if read_keys.contains_key(id) && bundle_key(input, &c).is_some_and(|old| old != key) {
                plan.key_changed.push(id.clone());
            }
            DeviceAuth::SymmetricKey {
                shared_access_key: key,
            }
        } else {
            match c.certs.and_then(|certs| certs.identity.clone()) {
                Some(identity) => DeviceAuth::X509 { identity },
                None => continue,
            }
        };
        if let Err(why) = hub_has_identity(c.hub, &auth) {
            let hint = if input.spec.policy.reconcile == ReconcilePolicy::Observe {
                "reconcile is Observe (nothing is written to the hub): register it there or switch to Manage"
            } else {
                "not registered yet; retried"
            };
            // The hint first: the status caps device messages.
            plan.failures.insert(
                id.clone(),
                format!("bundle kept at revision {previous_revision}: {hint}; {why}"),
            );
            if input.spec.policy.reconcile == ReconcilePolicy::Observe {
                plan.withheld.insert(id.clone());
            }
            if previous.is_some() {
                plan.status.insert(
                    id.clone(),
                    BundleStatus {
                        revision: previous_revision,
                    },
                );
            }
            continue;
        }
        let files = match c.edge_ca {
            Some(edge_ca) => {
                render_files(input, &c, bundle_input(input, &c, edge_ca, &by_id, auth))
            }
            None => {
                leaf_bundle_files(&leaf_input(input, &c, &by_id, auth)).map_err(|e| e.to_string())
            }
        };
        let files = match files {
            Ok(f) => f,
            Err(e) => {
                plan.failures.insert(id.clone(), e);
                continue;
            }
        };
        let secret_name = bundle_secret_name(input.hierarchy, id);
        let fingerprint = bundle_fingerprint(&files);
        let unchanged = previous.is_some_and(|s| {
            s.annotations().get(FINGERPRINT_ANNOTATION) == Some(&fingerprint)
                && s.annotations().get(SCOPE_ANNOTATION) == Some(&c.scope)
        });
        let etag = symmetric_key(input.spec)
            .then(|| c.hub.device_etag.clone())
            .flatten();
        let etag_recorded =
            previous.is_some_and(|s| s.annotations().get(DEVICE_ETAG_ANNOTATION) == etag.as_ref());
        let revision = previous_revision + u32::from(!unchanged);
        if unchanged && !etag_recorded {
            plan.annotations_only.insert(id.clone());
        }
        if !unchanged || !etag_recorded {
            // A new revision remembers the one it replaces; an etag-only write keeps them as is.
            let mut annotations = match previous {
                Some(previous) if !unchanged => remembered(previous),
                Some(previous) => previous_annotations(previous),
                None => BTreeMap::new(),
            };
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
            ]);
            if let Some(edge_ca) = c.edge_ca {
                annotations.insert(
                    EDGE_CA_ANNOTATION.to_string(),
                    edge_ca.sha256_thumbprint.clone(),
                );
            }
            if let Some(identity) = c.certs.and_then(|certs| certs.identity.as_ref()) {
                annotations.insert(
                    IDENTITY_ANNOTATION.to_string(),
                    identity.sha256_thumbprint.clone(),
                );
            }
            if let Some(etag) = etag {
                annotations.insert(DEVICE_ETAG_ANNOTATION.to_string(), etag);
            }
            plan.writes.push((
                id.clone(),
                SecretWrite {
                    name: secret_name.clone(),
                    type_: "Opaque",
                    labels: device_secret_labels(input.hierarchy, BUNDLE_COMPONENT, id),
                    annotations,
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
        return previous_annotations(previous);
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

/// The `previous-*` annotations of `secret`, unchanged.
fn previous_annotations(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with("edgehierarchy.dev/previous-"))
        .map(|(k, v)| (k.clone(), v.clone()))
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
    let bootstrap = c
        .certs
        .and_then(|certs| certs.identity.clone())
        .ok_or_else(|| {
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

fn leaf_input(
    input: &BundlePlanInput<'_>,
    c: &Candidate<'_>,
    by_id: &BTreeMap<&str, &DeviceSpec>,
    auth: DeviceAuth,
) -> LeafBundleInput {
    let parent = c.device.parent.as_deref().and_then(|p| by_id.get(p));
    LeafBundleInput {
        hierarchy: input.hierarchy.to_string(),
        namespace: input.namespace.to_string(),
        hub_hostname: input.hub_hostname.to_string(),
        device_id: c.device.id.clone(),
        parent_device_id: c.device.parent.clone(),
        parent_hostname: parent.and_then(|p| p.hostname.clone()),
        auth,
        trust_bundle: input.certs.trust_bundle.clone(),
    }
}

fn bundle_input(
    input: &BundlePlanInput<'_>,
    c: &Candidate<'_>,
    edge_ca: &IssuedCertificate,
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
        edge_ca: edge_ca.clone(),
        agent_auth: input.agent_auth.map(|login| RegistryLogin {
            address: agent_server_address(&agent_image, &login.address),
            ..login.clone()
        }),
        agent_image,
        upstream_port: edge.upstream_port,
    }
}

/// Whether the hub has the identity a bundle would carry: SAS authentication for a key, the
/// certificate's thumbprint registered for X.509. The reason names what differs (thumbprints are
/// public; keys never appear).
fn hub_has_identity(hub: &HubDevice, auth: &DeviceAuth) -> Result<(), String> {
    match auth {
        DeviceAuth::SymmetricKey { .. } if hub.auth == HubAuth::Sas => Ok(()),
        DeviceAuth::SymmetricKey { .. } => Err(format!(
            "the hub authenticates the device by {:?}, not by the SAS key the bundle would carry",
            hub.auth
        )),
        DeviceAuth::X509 { identity } => {
            let wanted = &identity.sha256_thumbprint;
            let registered = [&hub.thumbprints.0, &hub.thumbprints.1]
                .into_iter()
                .flatten()
                .any(|t| t.eq_ignore_ascii_case(wanted));
            if hub.auth == HubAuth::SelfSigned && registered {
                Ok(())
            } else {
                let short = |t: &str| t.chars().take(12).collect::<String>();
                Err(format!(
                    "the hub lacks the identity's thumbprint {}… (authentication {:?}, registered {:?} / {:?})",
                    short(wanted),
                    hub.auth,
                    hub.thumbprints.0.as_deref().map(short),
                    hub.thumbprints.1.as_deref().map(short)
                ))
            }
        }
    }
}

/// The SharedAccessKey of the connection string in a bundle's config.toml.
fn key_from_config(config: &str) -> Option<String> {
    let value: toml::Value = toml::from_str(config).ok()?;
    let connection = value
        .get("provisioning")?
        .get("connection_string")?
        .as_str()?;
    key_from_connection_string(connection)
}

/// The SharedAccessKey of a device connection string.
fn key_from_connection_string(connection: &str) -> Option<String> {
    connection
        .trim()
        .split(';')
        .find_map(|part| part.strip_prefix("SharedAccessKey="))
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests;
