//! One view of a hub's configurations, shared by every hierarchy on that hub (same credentials,
//! see `HubClient::sharing_key`). The configuration quota (20 calls a minute per unit) is
//! hub-wide, so ten hierarchies that each list the configurations on every resync spend it ten
//! times over; with the view, the hub is listed once per resync window and each hierarchy's own
//! writes are put into the view as they are made.
//!
//! A view older than the hierarchy's resync interval is listed again, and so is one for a sync
//! asked for with `kubectl annotate`; the fresh list replaces the view for all. A timed resync
//! of a single hierarchy therefore still lists (its last list is an interval old), and the
//! hub's metrics of a new deployment show at the next resync as before.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::iothub::{Configuration, HubClient, HubError};

/// The configurations as last listed, with this operator's writes since.
#[derive(Debug, Clone)]
struct View {
    listed_at: Instant,
    configurations: BTreeMap<String, Configuration>,
}

/// Per hub, its view; one lock per hub, so two hierarchies of one hub never list at once.
#[derive(Default)]
pub struct ConfigurationViews {
    hubs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<View>>>>>,
}

impl ConfigurationViews {
    fn of(&self, hub: &HubClient) -> Arc<tokio::sync::Mutex<Option<View>>> {
        self.hubs
            .lock()
            .expect("configuration views")
            .entry(hub.sharing_key().to_string())
            .or_default()
            .clone()
    }

    /// The hub's configurations: the view when it was listed less than `max_age` ago, else a
    /// fresh list (which becomes the view).
    pub async fn list(
        &self,
        hub: &HubClient,
        max_age: Duration,
    ) -> Result<Vec<Configuration>, HubError> {
        let view = self.of(hub);
        let mut view = view.lock().await;
        if let Some(current) = view.as_ref().filter(|v| v.listed_at.elapsed() < max_age) {
            return Ok(current.configurations.values().cloned().collect());
        }
        // Dropped first: a failed list leaves no view behind.
        *view = None;
        let listed = hub.list_configurations(None).await?;
        *view = Some(View {
            listed_at: Instant::now(),
            configurations: listed
                .iter()
                .filter_map(|c| Some((c.id.clone()?, c.clone())))
                .collect(),
        });
        Ok(listed)
    }

    /// Puts a hierarchy's writes into the view: configurations created or replaced, and ids
    /// deleted.
    pub async fn record(&self, hub: &HubClient, written: &[Configuration], deleted: &[String]) {
        let view = self.of(hub);
        let mut view = view.lock().await;
        if let Some(current) = view.as_mut() {
            for configuration in written {
                if let Some(id) = &configuration.id {
                    current
                        .configurations
                        .insert(id.clone(), configuration.clone());
                }
            }
            for id in deleted {
                current.configurations.remove(id);
            }
        }
    }

    /// Drops the view (after a write failed: what the hub holds is unknown until listed).
    pub async fn forget(&self, hub: &HubClient) {
        *self.of(hub).lock().await = None;
    }
}
