//! What the operator remembers of its own recent writes to a hub, per hierarchy, between
//! reconciles: the device and agent twins it read back (twin queries lag writes; see
//! `devices::read_back`). Lost on restart; the status's device ids stand in then.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::deployments::read_back::AgentReadBacks;
use super::devices::ReadBacks;

/// Where client-side `kubectl apply` keeps the configuration it applied.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One hierarchy's read-backs, and the annotations its last reconcile saw.
#[derive(Debug, Default)]
pub struct HubMemory {
    pub devices: ReadBacks,
    pub agents: AgentReadBacks,
    annotations: Option<BTreeMap<String, String>>,
}

impl HubMemory {
    /// Whether the annotations differ from those the last reconcile saw (a sync asked for with
    /// `kubectl annotate`, or the first reconcile since start): such a sync reads the hub
    /// afresh instead of from shared views. Remembers them.
    pub fn sync_requested(&mut self, annotations: &BTreeMap<String, String>) -> bool {
        // `kubectl apply` records the applied spec in an annotation: an edit, not a request.
        let mut annotations = annotations.clone();
        annotations.remove(LAST_APPLIED_ANNOTATION);
        let requested = self.annotations.as_ref() != Some(&annotations);
        if requested {
            self.annotations = Some(annotations);
        }
        requested
    }
}

/// The memories of every hierarchy, by uid. A reconcile locks its hierarchy's for its whole
/// run (one reconcile of a hierarchy runs at a time, so nothing waits).
#[derive(Debug, Default)]
pub struct Memories {
    by_uid: Mutex<HashMap<String, Arc<tokio::sync::Mutex<HubMemory>>>>,
}

impl Memories {
    /// The memory of the hierarchy `uid` (a new, empty one the first time).
    pub fn of(&self, uid: &str) -> Arc<tokio::sync::Mutex<HubMemory>> {
        let mut all = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(uid.to_string()).or_default().clone()
    }

    /// Forgets a hierarchy that is gone.
    pub fn forget(&self, uid: &str) {
        let mut all = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        all.remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn one_memory_per_hierarchy_until_it_is_forgotten() {
        let memories = Memories::default();
        let first = memories.of("uid-1");
        first.lock().await.devices.remember(
            "d",
            None,
            crate::reconcile::devices::read_back::Replaced::default(),
            Instant::now(),
        );
        assert!(!memories.of("uid-1").lock().await.devices.is_empty());
        assert!(memories.of("uid-2").lock().await.devices.is_empty());
        memories.forget("uid-1");
        assert!(memories.of("uid-1").lock().await.devices.is_empty());
    }

    #[test]
    fn a_sync_is_requested_by_the_first_reconcile_and_by_changed_annotations() {
        let mut memory = HubMemory::default();
        let mut annotations = BTreeMap::from([("a".to_string(), "1".to_string())]);
        assert!(memory.sync_requested(&annotations), "the first reconcile");
        assert!(!memory.sync_requested(&annotations), "a timed resync");
        annotations.insert("edgehierarchy.dev/sync".into(), "now".into());
        assert!(memory.sync_requested(&annotations), "kubectl annotate");
        assert!(!memory.sync_requested(&annotations));
        annotations.insert(LAST_APPLIED_ANNOTATION.into(), "{\"spec\":{}}".into());
        assert!(
            !memory.sync_requested(&annotations),
            "kubectl apply of an edit is no request"
        );
    }
}
