//! The one home of the operator's own Secrets (certificates, bundles, generated root): how they
//! are labelled, listed, written, deleted and released. Every Secret it writes carries the
//! hierarchy's ownerReference, so garbage collection removes it with the hierarchy.

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::secret_cache::{SecretCache, Selection};
use crate::api::EdgeHierarchy;
use crate::names::{
    COMPONENT_LABEL, DEVICE_LABEL, HIERARCHY_LABEL, MANAGED_BY_LABEL, MANAGER, device_label_value,
};

/// Secret writes one reconcile keeps in flight: enough to hide the API server's round trip (a
/// 1,000-device hierarchy writes about 1,400 Secrets on its first reconcile), few enough that
/// one hierarchy does not crowd out the others' requests.
pub const SECRET_WRITES_IN_FLIGHT: usize = 48;

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

/// The Secrets of one hierarchy, in its namespace. Its own Secrets are read from the
/// controller's [`SecretCache`], and every write is noted there.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    hierarchy: EdgeHierarchy,
    namespace: String,
    cache: SecretCache,
}

impl SecretStore {
    pub fn new(client: kube::Client, hierarchy: &EdgeHierarchy, cache: SecretCache) -> Self {
        let namespace = hierarchy.namespace().unwrap_or_default();
        Self {
            api: Api::namespaced(client, &namespace),
            hierarchy: hierarchy.clone(),
            namespace,
            cache,
        }
    }

    fn selection<'a>(&'a self, component: &'a str) -> Selection<'a> {
        Selection {
            namespace: &self.namespace,
            hierarchy: self.hierarchy.metadata.name.as_deref().unwrap_or_default(),
            component,
        }
    }

    fn component_of(write: &SecretWrite) -> &str {
        write.labels.get(COMPONENT_LABEL).map_or("", String::as_str)
    }

    /// A Secret by name, `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Secret>, kube::Error> {
        self.api.get_opt(name).await
    }

    /// The hierarchy's Secrets of one component, keyed by the device id annotation (of a bundle
    /// Secret only `config.toml` is there; see [`SecretCache`]).
    pub async fn list_component(
        &self,
        component: &str,
    ) -> Result<BTreeMap<String, Secret>, kube::Error> {
        self.cache.list(self.selection(component)).await
    }

    fn object(&self, write: &SecretWrite) -> Secret {
        write.object(self.hierarchy.controller_owner_ref(&()))
    }

    /// Writes a Secret by server-side apply, owned by the hierarchy.
    pub async fn apply(&self, write: &SecretWrite) -> Result<(), kube::Error> {
        let mut value = serde_json::to_value(self.object(write)).expect("a Secret serializes");
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        let written = self
            .api
            .patch(
                &write.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await?;
        self.cache
            .note_written(self.selection(Self::component_of(write)), &written);
        Ok(())
    }

    /// Writes Secrets by server-side apply, [`SECRET_WRITES_IN_FLIGHT`] at a time; the first
    /// error ends it (what was written stays, and the next reconcile plans from it).
    pub async fn apply_all<'w>(
        &self,
        writes: impl IntoIterator<Item = &'w SecretWrite>,
    ) -> Result<(), kube::Error> {
        stream::iter(writes)
            .map(Ok)
            .try_for_each_concurrent(SECRET_WRITES_IN_FLIGHT, |write| self.apply(write))
            .await
    }

    /// Creates a Secret that must not exist yet; fails with 409 when it does, so nothing that is
    /// there is ever replaced.
    pub async fn create(&self, write: &SecretWrite) -> Result<(), kube::Error> {
        let created = self
            .api
            .create(&PostParams::default(), &self.object(write))
            .await?;
        self.cache
            .note_written(self.selection(Self::component_of(write)), &created);
        Ok(())
    }

    /// Deletes a Secret of `component`; one already gone is fine.
    pub async fn delete(&self, component: &str, name: &str) -> Result<(), kube::Error> {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
        self.cache.note_deleted(self.selection(component), name);
        Ok(())
    }

    /// Deletes Secrets of `component`, [`SECRET_WRITES_IN_FLIGHT`] at a time; ones already gone
    /// are fine.
    pub async fn delete_all(&self, component: &str, names: &[String]) -> Result<(), kube::Error> {
        stream::iter(names)
            .map(Ok)
            .try_for_each_concurrent(SECRET_WRITES_IN_FLIGHT, |name| self.delete(component, name))
            .await
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
