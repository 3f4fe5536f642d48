//! Where device bundles come from: the operator's bundle Secrets in Kubernetes, a folder of
//! unpacked bundles, or (in tests) memory. The simulation only sees [`Bundle`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use sha2::{Digest, Sha256};

/// Label naming the hierarchy of a bundle Secret.
pub const HIERARCHY_LABEL: &str = "edgehierarchy.dev/hierarchy";
/// Label naming the kind of object; bundle Secrets carry `bundle`.
pub const COMPONENT_LABEL: &str = "edgehierarchy.dev/component";
/// Annotation with the exact device id of a bundle Secret.
pub const DEVICE_ID_ANNOTATION: &str = "edgehierarchy.dev/device-id";

/// One device's bundle: its files by name (the archive root of the tutorial's zips).
/// Debug lists the file names only: the files hold keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The exact device id.
    pub device_id: String,
    /// Where it came from (Secret name or folder), for messages.
    pub origin: String,
    /// File name → content.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("device_id", &self.device_id)
            .field("origin", &self.origin)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Bundle {
    /// A hash of every file name and content: a new bundle revision changes it.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for (name, content) in &self.files {
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update((content.len() as u64).to_le_bytes());
            hasher.update(content);
        }
        hasher.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A source of bundles, listed again on every poll.
pub trait BundleSource: Send + Sync {
    /// Every bundle of the simulated hierarchy, or an error naming what could not be read.
    fn list(&self) -> BoxFuture<'_, anyhow::Result<Vec<Bundle>>>;
    /// What this source reads, for the log.
    fn describe(&self) -> String;
}

/// The operator's bundle Secrets of one hierarchy in one namespace.
pub struct KubeSecretSource {
    api: Api<Secret>,
    namespace: String,
    hierarchy: String,
}

impl KubeSecretSource {
    /// Reads bundle Secrets labelled for `hierarchy` in `namespace` with `client`.
    pub fn new(client: kube::Client, namespace: &str, hierarchy: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            hierarchy: hierarchy.to_string(),
        }
    }
}

/// The bundle in a Secret, or why it is not one (no device-id annotation).
pub fn bundle_from_secret(secret: &Secret) -> Result<Bundle, String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let device_id = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEVICE_ID_ANNOTATION))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            format!("bundle Secret {name} has no {DEVICE_ID_ANNOTATION} annotation; it is skipped")
        })?;
    let files = secret
        .data
        .as_ref()
        .map(|data| data.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    Ok(Bundle {
        device_id: device_id.clone(),
        origin: format!("Secret {name}"),
        files,
    })
}

impl BundleSource for KubeSecretSource {
    fn list(&self) -> BoxFuture<'_, anyhow::Result<Vec<Bundle>>> {
        Box::pin(async move {
            let selector = format!(
                "{HIERARCHY_LABEL}={},{COMPONENT_LABEL}=bundle",
                self.hierarchy
            );
            let secrets = self
                .api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "listing bundle Secrets ({selector}) in namespace {}: {e}",
                        self.namespace
                    )
                })?;
            let mut out = Vec::new();
            for secret in &secrets.items {
                match bundle_from_secret(secret) {
                    Ok(bundle) => out.push(bundle),
                    Err(message) => tracing::warn!("{message}"),
                }
            }
            Ok(out)
        })
    }

    fn describe(&self) -> String {
        format!(
            "bundle Secrets of hierarchy {} in namespace {}",
            self.hierarchy, self.namespace
        )
    }
}

/// A folder with one sub-folder per device, named by the device id, holding the unpacked bundle
/// (what `kubectl edgehierarchy bundle` archives contain).
pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    /// Reads bundles from the sub-folders of `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl BundleSource for DirSource {
    fn list(&self) -> BoxFuture<'_, anyhow::Result<Vec<Bundle>>> {
        Box::pin(async move {
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || read_bundle_dir(&dir)).await?
        })
    }

    fn describe(&self) -> String {
        format!("bundle folders in {}", self.dir.display())
    }
}

fn read_bundle_dir(dir: &std::path::Path) -> anyhow::Result<Vec<Bundle>> {
    use anyhow::Context;
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the bundle folder {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let device_id = entry.file_name().to_string_lossy().into_owned();
        let mut files = BTreeMap::new();
        for file in std::fs::read_dir(entry.path())? {
            let file = file?;
            if file.file_type()?.is_file() {
                let content = std::fs::read(file.path())
                    .with_context(|| format!("reading {}", file.path().display()))?;
                files.insert(file.file_name().to_string_lossy().into_owned(), content);
            }
        }
        out.push(Bundle {
            device_id,
            origin: format!("folder {}", entry.path().display()),
            files,
        });
    }
    out.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    Ok(out)
}

/// Bundles held in memory; tests add, replace and remove them while the simulation runs.
#[derive(Clone, Default)]
pub struct MemorySource {
    bundles: Arc<Mutex<BTreeMap<String, Bundle>>>,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the bundle of `bundle.device_id`.
    pub fn put(&self, bundle: Bundle) {
        self.lock().insert(bundle.device_id.clone(), bundle);
    }

    /// Removes the bundle of `device_id`.
    pub fn remove(&self, device_id: &str) {
        self.lock().remove(device_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bundle>> {
        self.bundles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl BundleSource for MemorySource {
    fn list(&self) -> BoxFuture<'_, anyhow::Result<Vec<Bundle>>> {
        let bundles = self.lock().values().cloned().collect();
        Box::pin(async move { Ok(bundles) })
    }

    fn describe(&self) -> String {
        "bundles in memory".into()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    use super::*;

    fn secret(annotation: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("tutorial-lower-layer-1a2b3c4d-bundle".into()),
                annotations: annotation
                    .map(|id| BTreeMap::from([(DEVICE_ID_ANNOTATION.to_string(), id.to_string())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                (
                    "config.toml".to_string(),
                    ByteString(b"hostname = \"x\"".to_vec()),
                ),
                (
                    "lower-layer.key.pem".to_string(),
                    ByteString(b"KEY".to_vec()),
                ),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn secrets_become_bundles_keyed_by_the_annotation() {
        let bundle = bundle_from_secret(&secret(Some("Lower:Layer"))).unwrap();
        assert_eq!(bundle.device_id, "Lower:Layer");
        assert_eq!(bundle.files["lower-layer.key.pem"], b"KEY");
        assert!(
            bundle
                .origin
                .contains("tutorial-lower-layer-1a2b3c4d-bundle")
        );
        let shown = format!("{bundle:?}");
        assert!(
            shown.contains("lower-layer.key.pem") && !shown.contains("KEY\""),
            "{shown}"
        );
        let error = bundle_from_secret(&secret(None)).unwrap_err();
        assert!(
            error.contains("has no edgehierarchy.dev/device-id annotation"),
            "{error}"
        );
    }

    #[test]
    fn fingerprints_change_with_any_file() {
        let a = bundle_from_secret(&secret(Some("d"))).unwrap();
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.files
            .insert("config.toml".into(), b"hostname = \"y\"".to_vec());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.files.insert("extra".into(), Vec::new());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[tokio::test]
    async fn folders_and_memory_list_bundles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("top-layer")).unwrap();
        std::fs::write(dir.path().join("top-layer/config.toml"), "x").unwrap();
        std::fs::write(dir.path().join("stray-file"), "ignored").unwrap();
        let bundles = DirSource::new(dir.path()).list().await.unwrap();
        assert_eq!(bundles.len(), 1);
        assert_eq!(bundles[0].device_id, "top-layer");
        assert_eq!(bundles[0].files["config.toml"], b"x");
        assert!(
            DirSource::new(dir.path().join("missing"))
                .list()
                .await
                .unwrap_err()
                .to_string()
                .contains("reading the bundle folder")
        );

        let memory = MemorySource::new();
        memory.put(bundles[0].clone());
        assert_eq!(memory.list().await.unwrap().len(), 1);
        memory.remove("top-layer");
        assert!(memory.list().await.unwrap().is_empty());
    }
}
