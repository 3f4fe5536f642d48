//! The one home of the operator's own Secrets (certificates, bundles, generated root): how they
//! are labelled, listed, written, deleted and released. Every Secret it writes carries the
//! hierarchy's ownerReference, so garbage collection removes it with the hierarchy.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::EdgeHierarchy;
use crate::names::{
    COMPONENT_LABEL, DEVICE_ID_ANNOTATION, DEVICE_LABEL, HIERARCHY_LABEL, MANAGED_BY_LABEL,
    MANAGER, device_label_value,
};

/// A Secret the operator wants to exist, ready to be written.
#[derive(Clone, PartialEq)]
pub struct SecretWrite {
    pub name: String,
    pub type_: &'static str,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SecretWrite {
    // The data holds private keys: only the keys' names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretWrite")
            .field("name", &self.name)
            .field("type_", &self.type_)
            .field("labels", &self.labels)
            .field("annotations", &self.annotations)
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretWrite {
    /// The Secret to send, owned by `owner` when given.
    pub fn object(&self, owner: Option<OwnerReference>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels.clone()),
                annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            type_: Some(self.type_.to_string()),
            data: Some(
                self.data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }
}

/// Labels of every Secret the operator makes for a hierarchy.
pub fn secret_labels(hierarchy: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
        (HIERARCHY_LABEL.to_string(), hierarchy.to_string()),
        (COMPONENT_LABEL.to_string(), component.to_string()),
    ])
}

/// [`secret_labels`] of a per-device Secret, with the device label.
pub fn device_secret_labels(
    hierarchy: &str,
    component: &str,
    device_id: &str,
) -> BTreeMap<String, String> {
    let mut labels = secret_labels(hierarchy, component);
    labels.insert(DEVICE_LABEL.to_string(), device_label_value(device_id));
    labels
}

/// A Secret's value under `key` as text, when it is non-blank UTF-8.
pub fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|t| !t.trim().is_empty())
}

/// The Secrets of one hierarchy, in its namespace.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    hierarchy: EdgeHierarchy,
}

impl SecretStore {
    pub fn new(client: kube::Client, hierarchy: &EdgeHierarchy) -> Self {
        let namespace = hierarchy.namespace().unwrap_or_default();
        Self {
            api: Api::namespaced(client, &namespace),
            hierarchy: hierarchy.clone(),
        }
    }

    /// A Secret by name, `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Secret>, kube::Error> {
        self.api.get_opt(name).await
    }

    /// The hierarchy's Secrets of one component, keyed by the device id annotation.
    pub async fn list_component(
        &self,
        component: &str,
    ) -> Result<BTreeMap<String, Secret>, kube::Error> {
        let selector = format!(
            "{HIERARCHY_LABEL}={},{COMPONENT_LABEL}={component}",
            self.hierarchy.name_any()
        );
        let list = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|s| Some((s.annotations().get(DEVICE_ID_ANNOTATION)?.clone(), s)))
            .collect())
    }

    fn object(&self, write: &SecretWrite) -> Secret {
        write.object(self.hierarchy.controller_owner_ref(&()))
    }

    /// Writes a Secret by server-side apply, owned by the hierarchy.
    pub async fn apply(&self, write: &SecretWrite) -> Result<(), kube::Error> {
        let mut value = serde_json::to_value(self.object(write)).expect("a Secret serializes");
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        self.api
            .patch(
                &write.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await?;
        Ok(())
    }

    /// Creates a Secret that must not exist yet; fails with 409 when it does, so nothing that is
    /// there is ever replaced.
    pub async fn create(&self, write: &SecretWrite) -> Result<(), kube::Error> {
        self.api
            .create(&PostParams::default(), &self.object(write))
            .await?;
        Ok(())
    }

    /// Deletes a Secret; one already gone is fine.
    pub async fn delete(&self, name: &str) -> Result<(), kube::Error> {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the hierarchy's ownerReference from each of its Secrets, so garbage collection
    /// leaves them; returns how many were released.
    pub async fn release_all(&self) -> Result<usize, kube::Error> {
        let selector = format!("{HIERARCHY_LABEL}={}", self.hierarchy.name_any());
        let list = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await?;
        let uid = self.hierarchy.uid();
        let mut released = 0;
        for secret in list.items {
            let owners = secret.metadata.owner_references.clone().unwrap_or_default();
            if !owners.iter().any(|o| Some(&o.uid) == uid.as_ref()) {
                continue;
            }
            let keep: Vec<_> = owners
                .into_iter()
                .filter(|o| Some(&o.uid) != uid.as_ref())
                .collect();
            let patch = json!({"metadata": {"ownerReferences": keep}});
            self.api
                .patch(
                    &secret.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            released += 1;
        }
        Ok(released)
    }
}
