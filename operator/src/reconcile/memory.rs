//! What the operator remembers of its own recent writes to a hub, per hierarchy, between
//! reconciles: the device and agent twins it read back (twin queries lag writes; see
//! `devices::read_back`). Lost on restart; the status's device ids stand in then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::deployments::read_back::AgentReadBacks;
use super::devices::ReadBacks;

/// One hierarchy's read-backs.
#[derive(Debug, Default)]
pub struct HubMemory {
    pub devices: ReadBacks,
    pub agents: AgentReadBacks,
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
}
