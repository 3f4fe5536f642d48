//! Config bundles (DESIGN.md section 5): one Secret per registered Edge device holding the files
//! of its bundle (config.toml, install.sh, README, trust bundle, edge CA chain and key, identity),
//! rewritten when any of them changes, with a revision that counts changes.
//!
//! A SymmetricKey device's key comes from the bundle already written (same device scope), or from
//! the keys the operator created the device with; only a device someone else (re-)created is
//! read from the hub. A resync, and a new device, cost no registry reads.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};

use super::certs::{Certificates, apply_secret, list_component_secrets, secret_labels};
use super::model::HubDevice;
use crate::api::{AuthenticationType, BundleStatus, DeviceType, EdgeHierarchy};
use crate::bundle::{BundleInput, DeviceAuth, bundle_files, bundle_fingerprint};
use crate::iothub::{HubClient, HubError};
use crate::names::{DEVICE_ID_ANNOTATION, DEVICE_LABEL, bundle_secret_name, device_label_value};

const REVISION_ANNOTATION: &str = "edgehierarchy.dev/revision";
const FINGERPRINT_ANNOTATION: &str = "edgehierarchy.dev/fingerprint";
const SCOPE_ANNOTATION: &str = "edgehierarchy.dev/device-scope";

#[derive(Debug, thiserror::Error)]
pub enum BundleStepError {
    #[error("Kubernetes API error while writing bundle Secrets: {0}")]
    Kube(#[from] kube::Error),
    #[error("reading device keys from the hub: {0}")]
    Hub(#[from] HubError),
}

/// Outcome per device, plus the devices whose bundle changed.
#[derive(Debug, Default)]
pub struct Bundles {
    pub status: BTreeMap<String, BundleStatus>,
    pub updated: Vec<String>,
    /// Devices whose bundle could not be rendered, with the reason (names the field).
    pub failures: BTreeMap<String, String>,
}

/// Writes the bundle Secret of every Edge device that is registered in the hub.
pub async fn ensure_bundles(
    client: &kube::Client,
    hub: &HubClient,
    hierarchy: &EdgeHierarchy,
    layers: &BTreeMap<String, u32>,
    observed: &BTreeMap<String, HubDevice>,
    certs: &Certificates,
    created_now: &BTreeSet<String>,
) -> Result<Bundles, BundleStepError> {
    let namespace = hierarchy.namespace().unwrap_or_default();
    let name = hierarchy.name_any();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let existing = list_component_secrets(&secrets, &name, "bundle").await?;
    let spec = &hierarchy.spec;
    let by_id: BTreeMap<&str, &crate::api::DeviceSpec> =
        spec.devices.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut out = Bundles::default();

    for device in spec
        .devices
        .iter()
        .filter(|d| d.device_type == DeviceType::Edge)
    {
        let (Some(layer), Some(hub_device), Some(device_certs)) = (
            layers.get(&device.id),
            observed.get(&device.id),
            certs.devices.get(&device.id),
        ) else {
            continue;
        };
        let Some(edge_ca) = device_certs.edge_ca.clone() else {
            continue;
        };
        let secret_name = bundle_secret_name(&name, &device.id);
        let previous = existing.get(&device.id);
        let scope = hub_device.device_scope.clone().unwrap_or_default();
        let auth = match spec.authentication {
            AuthenticationType::X509 => match device_certs.identity.clone() {
                Some(identity) => DeviceAuth::X509 { identity },
                None => continue,
            },
            AuthenticationType::SymmetricKey => {
                let known = previous
                    .filter(|s| s.annotations().get(SCOPE_ANNOTATION) == Some(&scope))
                    .and_then(|s| s.data.as_ref()?.get("config.toml").map(|v| v.0.clone()))
                    .and_then(|toml| key_from_config(&String::from_utf8_lossy(&toml)));
                // Devices this reconcile created carry the operator's keys; others (adopted,
                // re-created by someone else) are asked once.
                let ours = device_certs
                    .sas_keys
                    .as_ref()
                    .filter(|_| created_now.contains(&device.id))
                    .map(|k| k.primary.clone());
                let key = match known.or(ours) {
                    Some(key) => key,
                    None => primary_key(hub, &device.id).await?,
                };
                DeviceAuth::SymmetricKey {
                    shared_access_key: key,
                }
            }
        };
        let parent = device.parent.as_deref().and_then(|p| by_id.get(p));
        let agent_image = if *layer > 1 {
            crate::deploy::upstream_image(&spec.edge.agent_image, &spec.edge)
                .unwrap_or_else(|| spec.edge.agent_image.clone())
        } else {
            spec.edge.agent_image.clone()
        };
        let input = BundleInput {
            hierarchy: name.clone(),
            namespace: namespace.clone(),
            hub_hostname: hub.host_name().to_string(),
            device_id: device.id.clone(),
            layer: *layer,
            parent_device_id: device.parent.clone(),
            hostname: device.hostname.clone(),
            parent_hostname: parent.and_then(|p| p.hostname.clone()),
            auth,
            trust_bundle: certs.trust_bundle.clone(),
            edge_ca,
            agent_image,
            upstream_port: spec.edge.upstream_port,
        };
        let files = match bundle_files(&input) {
            Ok(f) => f,
            Err(e) => {
                out.failures.insert(device.id.clone(), e.to_string());
                continue;
            }
        };
        let fingerprint = bundle_fingerprint(&files);
        let previous_revision: u32 = previous
            .and_then(|s| s.annotations().get(REVISION_ANNOTATION)?.parse().ok())
            .unwrap_or(0);
        let unchanged = previous.is_some_and(|s| {
            s.annotations().get(FINGERPRINT_ANNOTATION) == Some(&fingerprint)
                && s.annotations().get(SCOPE_ANNOTATION) == Some(&scope)
        });
        let revision = if unchanged {
            previous_revision
        } else {
            previous_revision + 1
        };
        if !unchanged {
            let mut labels = secret_labels(&name, "bundle");
            labels.insert(DEVICE_LABEL.to_string(), device_label_value(&device.id));
            let annotations = BTreeMap::from([
                (DEVICE_ID_ANNOTATION.to_string(), device.id.clone()),
                (REVISION_ANNOTATION.to_string(), revision.to_string()),
                (FINGERPRINT_ANNOTATION.to_string(), fingerprint),
                (SCOPE_ANNOTATION.to_string(), scope),
            ]);
            let data = files.into_iter().map(|f| (f.path, f.contents)).collect();
            apply_secret(
                &secrets,
                hierarchy,
                &secret_name,
                "Opaque",
                labels,
                annotations,
                data,
            )
            .await?;
            out.updated.push(device.id.clone());
        }
        out.status.insert(
            device.id.clone(),
            BundleStatus {
                secret_name,
                revision,
            },
        );
    }

    for (id, secret) in &existing {
        if !by_id.contains_key(id.as_str()) {
            match secrets
                .delete(&secret.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

async fn primary_key(hub: &HubClient, id: &str) -> Result<String, HubError> {
    let device = hub.get_device(id).await?;
    Ok(device
        .authentication
        .and_then(|a| a.symmetric_key)
        .and_then(|k| k.primary_key)
        .unwrap_or_default())
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
mod tests {
    use super::*;

    #[test]
    fn key_is_read_back_from_a_bundle_config() {
        let config = "hostname = \"h\"\n[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=hub;DeviceId=d;SharedAccessKey=abc=\"\n";
        assert_eq!(key_from_config(config).as_deref(), Some("abc="));
        assert_eq!(
            key_from_config("[provisioning]\nsource = \"manual\"\n"),
            None
        );
        assert_eq!(key_from_config("not toml ["), None);
    }
}
