//! The trust the EST server decides with, read from Kubernetes: every `EdgeHierarchy` whose
//! `spec.certificates.issuance` is `Est`, its devices, and its root CA Secret (the user's
//! `rootCA.secretRef` or the generated `<name>-root-ca`, the same Secrets the certificate step
//! uses). Read on demand and kept for a few seconds, so a burst of renewals costs one list.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;
use tracing::warn;

use super::authorize::HierarchyTrust;
use crate::api::{CertificateIssuance, DeviceType, EdgeHierarchy, duration::parse_duration};
use crate::names::root_ca_secret_name;
use crate::pki::{RootCa, certificate_ders, import_root_ca};
use crate::reconcile::controller::Watched;

/// How long a snapshot answers requests before it is read again.
const FRESH_FOR: Duration = Duration::from_secs(10);
/// A request that names an unknown issuer or device re-reads at most this often (a hierarchy
/// or device created a moment ago is found; a stranger cannot make the server list in a loop).
const REREAD_AFTER: Duration = Duration::from_secs(1);

/// One hierarchy with what issuing needs.
#[derive(Clone)]
pub struct HierarchyEntry {
    pub object: EdgeHierarchy,
    pub root: RootCa,
    /// `spec.certificates.duration`.
    pub validity: Duration,
}

/// Every hierarchy the server serves, in the same order as [`Snapshot::trust`].
#[derive(Clone, Default)]
pub struct Snapshot {
    pub trust: Vec<HierarchyTrust>,
    pub entries: Vec<HierarchyEntry>,
}

/// Reads and caches [`Snapshot`]s.
pub struct TrustStore {
    client: Client,
    /// The hierarchies this operator reconciles (`--watch-namespaces`, `--shard-selector`): EST
    /// answers for those only, as only their controller may write to their hubs.
    watched: Watched,
    cached: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl TrustStore {
    pub fn new(client: Client, watched: Watched) -> Self {
        Self {
            client,
            watched,
            cached: Mutex::new(None),
        }
    }

    /// The current snapshot; `stale_ok: false` re-reads one older than [`REREAD_AFTER`].
    pub async fn snapshot(&self, stale_ok: bool) -> Result<Arc<Snapshot>, kube::Error> {
        let mut cached = self.cached.lock().await;
        if let Some((read_at, snapshot)) = cached.as_ref() {
            let age = read_at.elapsed();
            if age < REREAD_AFTER || (stale_ok && age < FRESH_FOR) {
                return Ok(snapshot.clone());
            }
        }
        let snapshot = Arc::new(self.read().await?);
        *cached = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    async fn read(&self) -> Result<Snapshot, kube::Error> {
        let params = match &self.watched.shard_selector {
            Some(selector) => ListParams::default().labels(selector),
            None => ListParams::default(),
        };
        let mut hierarchies = Vec::new();
        for api in self.watched.apis::<EdgeHierarchy>(&self.client) {
            hierarchies.extend(api.list(&params).await?);
        }
        let now = Timestamp::now();
        let mut snapshot = Snapshot::default();
        for object in hierarchies {
            let spec = &object.spec;
            if spec.certificates.issuance != CertificateIssuance::Est
                || object.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let namespace = object.namespace().unwrap_or_default();
            let name = object.name_any();
            let secret_name = spec
                .certificates
                .root_ca
                .as_ref()
                .map(|r| r.secret_ref.name.clone())
                .unwrap_or_else(|| root_ca_secret_name(&name));
            let root = match self.root(&namespace, &secret_name, now).await {
                Ok(Some(root)) => root,
                Ok(None) => continue,
                Err(reason) => {
                    warn!(hierarchy = %format!("{namespace}/{name}"), secret = %secret_name, %reason, "EST: root CA unusable; its devices cannot enroll");
                    continue;
                }
            };
            let Ok(roots) = certificate_ders(&root.cert_pem) else {
                continue;
            };
            snapshot.trust.push(HierarchyTrust {
                namespace: namespace.clone(),
                name: name.clone(),
                // The signing root first; further certificates of tls.crt are its issuers,
                // not roots devices enroll under.
                roots: roots.into_iter().take(1).collect(),
                devices: spec
                    .devices
                    .iter()
                    .map(|d| (d.id.clone(), d.device_type == DeviceType::Edge))
                    .collect(),
            });
            snapshot.entries.push(HierarchyEntry {
                validity: parse_duration(&spec.certificates.duration)
                    .unwrap_or(Duration::from_secs(2160 * 3600)),
                object,
                root,
            });
        }
        Ok(snapshot)
    }

    async fn root(
        &self,
        namespace: &str,
        secret: &str,
        now: Timestamp,
    ) -> Result<Option<RootCa>, String> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(secret) = secrets.get_opt(secret).await.map_err(|e| e.to_string())? else {
            // Not generated yet: the hierarchy's first reconcile has not run.
            return Ok(None);
        };
        let data = secret.data.unwrap_or_default();
        let text = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .ok_or_else(|| format!("the Secret has no {key}"))
        };
        import_root_ca(&text("tls.crt")?, &text("tls.key")?, now)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}
