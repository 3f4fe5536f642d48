//! The operator's own Secrets (labelled `app.kubernetes.io/managed-by=edge-hierarchy-operator`),
//! kept by one label-selected watch instead of a LIST of every certificate and bundle Secret on
//! every reconcile (a 1,000-device hierarchy has about 1,400 of them).
//!
//! Two rules keep it as safe as the LIST it replaces:
//! - Reading your own writes: every write and delete the operator makes is noted with the
//!   resourceVersion the API server answered. A read waits (briefly) until the watch has shown
//!   each noted write; if it has not, the read falls back to a LIST, which is authoritative and
//!   clears the notes. A plan therefore never sees a Secret older than the operator's last
//!   write of it (which would re-issue a certificate or re-count a bundle revision).
//! - Only what plans read is kept: managedFields are dropped, and of a bundle Secret only its
//!   metadata and the files the bundle plan reads the SAS key from
//!   ([`bundles::plan::KEY_FILES`](super::bundles::plan::KEY_FILES)), so the cache costs a
//!   fraction of the objects it stands for.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::bundles::plan::KEY_FILES;
use crate::names::{
    BUNDLE_COMPONENT, COMPONENT_LABEL, DEVICE_ID_ANNOTATION, HIERARCHY_LABEL, MANAGED_BY_LABEL,
    MANAGER,
};

/// A note this old is dropped unread (its hierarchy is gone, or a later write replaced the
/// Secret): the watch has long shown whatever it will show of it.
const NOTE_LIFETIME: Duration = Duration::from_secs(300);
/// How long a read waits for the watch to show the operator's own last writes before it lists.
const CATCH_UP: Duration = Duration::from_secs(2);
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

/// What the operator last did to one of its Secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// Applied or created; the API server answered with this resourceVersion.
    Version(String),
    Deleted,
}

/// A write the watch may not have shown yet, with the selection it belongs to.
#[derive(Debug, Clone)]
struct Note {
    written: Written,
    at: std::time::Instant,
    hierarchy: String,
    component: String,
}

/// `(namespace, name)` of a Secret.
type Key = (String, String);

/// One component of one hierarchy's Secrets: what a plan reads at once.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub namespace: &'a str,
    pub hierarchy: &'a str,
    pub component: &'a str,
}

impl Selection<'_> {
    fn label_selector(&self) -> String {
        format!(
            "{HIERARCHY_LABEL}={},{COMPONENT_LABEL}={}",
            self.hierarchy, self.component
        )
    }

    fn matches(&self, secret: &Secret) -> bool {
        let labels = secret.labels();
        secret.namespace().as_deref() == Some(self.namespace)
            && labels.get(HIERARCHY_LABEL).map(String::as_str) == Some(self.hierarchy)
            && labels.get(COMPONENT_LABEL).map(String::as_str) == Some(self.component)
    }

    fn noted(&self, (namespace, _): &Key, note: &Note) -> bool {
        namespace == self.namespace
            && note.hierarchy == self.hierarchy
            && note.component == self.component
    }
}

/// One watch of the operator's Secrets: in one namespace, or in all (`namespace: None`).
#[derive(Clone)]
struct Watch {
    namespace: Option<String>,
    store: Store<Secret>,
    ready: Arc<AtomicBool>,
}

impl Watch {
    fn start(client: &Client, namespace: Option<&str>) -> Self {
        let api: Api<Secret> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
        let (store, writer) = reflector::store();
        let stream = watcher(api, config)
            .default_backoff()
            .modify(keep_what_plans_read)
            .reflect(writer)
            .applied_objects();
        tokio::spawn(stream.for_each(|event| async move {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watch of the operator's Secrets failed; retrying");
            }
        }));
        let ready = Arc::new(AtomicBool::new(false));
        let (listed, flag) = (store.clone(), ready.clone());
        tokio::spawn(async move {
            if listed.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Release);
            }
        });
        Self {
            namespace: namespace.map(str::to_string),
            store,
            ready,
        }
    }

    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// The watched Secrets and the operator's own writes the watch may not have shown yet.
#[derive(Clone)]
pub struct SecretCache {
    client: Client,
    watches: Vec<Watch>,
    notes: Arc<Mutex<HashMap<Key, Note>>>,
}

impl SecretCache {
    /// Starts the watches (in the background, for the life of the process): one over every
    /// namespace, or one per namespace of `namespaces`. Reads before a watch has listed once go
    /// to the API server.
    pub fn watch(client: Client, namespaces: Option<&[String]>) -> Self {
        let watches = match namespaces {
            None => vec![Watch::start(&client, None)],
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| Watch::start(&client, Some(ns)))
                .collect(),
        };
        Self {
            client,
            watches,
            notes: Default::default(),
        }
    }

    /// Notes a write the API server answered with `secret` (its resourceVersion).
    pub fn note_written(&self, selection: Selection<'_>, secret: &Secret) {
        if let Some(version) = secret.resource_version() {
            self.note(selection, &secret.name_any(), Written::Version(version));
        }
    }

    /// Notes a delete (of a Secret that existed or not).
    pub fn note_deleted(&self, selection: Selection<'_>, name: &str) {
        self.note(selection, name, Written::Deleted);
    }

    fn note(&self, selection: Selection<'_>, name: &str, written: Written) {
        let key = (selection.namespace.to_string(), name.to_string());
        let note = Note {
            written,
            at: std::time::Instant::now(),
            hierarchy: selection.hierarchy.to_string(),
            component: selection.component.to_string(),
        };
        self.notes.lock().expect("write notes").insert(key, note);
    }

    /// The selection's Secrets, keyed by their device id annotation, never older than the
    /// operator's own last write of any of them.
    pub async fn list(
        &self,
        selection: Selection<'_>,
    ) -> Result<BTreeMap<String, Secret>, kube::Error> {
        let watch = self.watches.iter().find(|w| w.covers(selection.namespace));
        if let Some(watch) = watch.filter(|w| w.ready.load(Ordering::Acquire)) {
            let store = &watch.store;
            let deadline = tokio::time::Instant::now() + CATCH_UP;
            loop {
                if self.caught_up(store, selection) {
                    let cached = store.state().into_iter().filter(|s| selection.matches(s));
                    return Ok(by_device(cached.map(|s| (*s).clone())));
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(CATCH_UP_POLL).await;
            }
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), selection.namespace);
        let list = api
            .list(&ListParams::default().labels(&selection.label_selector()))
            .await?;
        // What the API server just answered is at least as new as every noted write.
        self.notes
            .lock()
            .expect("write notes")
            .retain(|key, note| !selection.noted(key, note));
        Ok(by_device(list.items.into_iter().map(|mut s| {
            keep_what_plans_read(&mut s);
            s
        })))
    }

    fn caught_up(&self, store: &Store<Secret>, selection: Selection<'_>) -> bool {
        drop_shown(
            &mut self.notes.lock().expect("write notes"),
            store,
            selection,
        )
    }
}

/// Drops the notes the store shows (and stale ones); whether none of the selection's is left.
fn drop_shown(
    notes: &mut HashMap<Key, Note>,
    store: &Store<Secret>,
    selection: Selection<'_>,
) -> bool {
    notes.retain(|key, note| {
        if !selection.noted(key, note) {
            return note.at.elapsed() < NOTE_LIFETIME;
        }
        let reference = reflector::ObjectRef::<Secret>::new(&key.1).within(&key.0);
        let seen = store.get(&reference);
        let shown = match &note.written {
            Written::Deleted => seen.is_none(),
            Written::Version(version) => {
                seen.and_then(|s| s.resource_version()).as_ref() == Some(version)
            }
        };
        !shown
    });
    !notes.iter().any(|(key, note)| selection.noted(key, note))
}

fn by_device(secrets: impl Iterator<Item = Secret>) -> BTreeMap<String, Secret> {
    secrets
        .filter_map(|s| Some((s.annotations().get(DEVICE_ID_ANNOTATION)?.clone(), s)))
        .collect()
}

/// Drops what no plan reads: managedFields everywhere, and a bundle Secret's files but those
/// holding its SAS key.
pub(super) fn keep_what_plans_read(secret: &mut Secret) {
    secret.metadata.managed_fields = None;
    let bundle = secret.labels().get(COMPONENT_LABEL).map(String::as_str) == Some(BUNDLE_COMPONENT);
    if bundle && let Some(data) = secret.data.as_mut() {
        data.retain(|key, _| KEY_FILES.contains(&key.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use kube::api::ObjectMeta;

    const CERTS: &str = "certs";

    fn secret(name: &str, component: &str, version: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                labels: Some(BTreeMap::from([
                    (HIERARCHY_LABEL.to_string(), "h".to_string()),
                    (COMPONENT_LABEL.to_string(), component.to_string()),
                ])),
                annotations: Some(BTreeMap::from([(
                    DEVICE_ID_ANNOTATION.to_string(),
                    name.to_string(),
                )])),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("config.toml".to_string(), ByteString(b"toml".to_vec())),
                (
                    "connection-string.txt".to_string(),
                    ByteString(b"cs".to_vec()),
                ),
                ("install.sh".to_string(), ByteString(b"sh".to_vec())),
            ])),
            ..Secret::default()
        }
    }

    fn selection(component: &str) -> Selection<'_> {
        Selection {
            namespace: "ns",
            hierarchy: "h",
            component,
        }
    }

    fn note(component: &str, written: Written) -> Note {
        Note {
            written,
            at: std::time::Instant::now(),
            hierarchy: "h".into(),
            component: component.into(),
        }
    }

    fn key(name: &str) -> Key {
        ("ns".into(), name.into())
    }

    #[test]
    fn a_bundle_keeps_only_the_files_with_its_key_and_nothing_keeps_managed_fields() {
        let mut bundle = secret("b", BUNDLE_COMPONENT, "1");
        keep_what_plans_read(&mut bundle);
        assert_eq!(bundle.metadata.managed_fields, None);
        let keys: Vec<&String> = bundle.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["config.toml", "connection-string.txt"]);

        let mut certs = secret("c", CERTS, "1");
        keep_what_plans_read(&mut certs);
        assert_eq!(certs.metadata.managed_fields, None);
        assert_eq!(
            certs.data.as_ref().unwrap().len(),
            3,
            "certificates are kept whole"
        );
    }

    #[test]
    fn a_selection_matches_its_namespace_hierarchy_and_component() {
        let s = secret("d1", CERTS, "1");
        assert!(selection(CERTS).matches(&s));
        assert!(!selection(BUNDLE_COMPONENT).matches(&s));
        let other = Selection {
            namespace: "elsewhere",
            ..selection(CERTS)
        };
        assert!(!other.matches(&s));
    }

    #[test]
    fn a_read_waits_until_the_watch_shows_the_operators_own_writes() {
        let (store, mut writer) = reflector::store::<Secret>();
        writer.apply_watcher_event(&watcher::Event::Apply(secret("d1", CERTS, "4")));
        writer.apply_watcher_event(&watcher::Event::Apply(secret("d2", CERTS, "4")));
        let mut notes = HashMap::from([
            (key("d1"), note(CERTS, Written::Version("5".into()))),
            (key("d2"), note(CERTS, Written::Deleted)),
            (
                key("b1"),
                note(BUNDLE_COMPONENT, Written::Version("9".into())),
            ),
        ]);
        assert!(
            !drop_shown(&mut notes, &store, selection(CERTS)),
            "the store still has version 4 of d1 and d2 that was deleted"
        );
        assert_eq!(notes.len(), 3);

        writer.apply_watcher_event(&watcher::Event::Apply(secret("d1", CERTS, "5")));
        assert!(!drop_shown(&mut notes, &store, selection(CERTS)));
        assert!(
            !notes.contains_key(&key("d1")),
            "a shown write is forgotten"
        );

        writer.apply_watcher_event(&watcher::Event::Delete(secret("d2", CERTS, "6")));
        assert!(drop_shown(&mut notes, &store, selection(CERTS)));
        assert_eq!(
            notes.keys().collect::<Vec<_>>(),
            [&key("b1")],
            "another component's note waits for its own read"
        );
        assert!(!drop_shown(&mut notes, &store, selection(BUNDLE_COMPONENT)));
    }
}
