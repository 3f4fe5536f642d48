//! Kubernetes Events about hierarchies.
//!
//! kube's `Recorder` folds every event with the same type, reason and action on one object into
//! one series for six minutes and keeps the first note: a second device's drift would read as
//! the first one's. Each distinct note therefore gets a recorder of its own, so a repeat of the
//! same note still becomes a series (a count, not a flood) while a new note is a new Event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// How long a note's recorder is kept: kube's own series window.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
    recorders: Mutex<HashMap<[u8; 32], (Recorder, Instant)>>,
}

impl EventPublisher {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recorders: Mutex::new(HashMap::new()),
        }
    }

    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(regarding.uid.as_deref().unwrap_or_default())
            .chain_update([0])
            .chain_update(reason)
            .chain_update([0])
            .chain_update(&note)
            .finalize()
            .into();
        let recorder = {
            let mut recorders = self.recorders.lock().await;
            let now = Instant::now();
            recorders.retain(|_, (_, used)| now.duration_since(*used) < SERIES_WINDOW);
            let entry = recorders.entry(key).or_insert_with(|| {
                (
                    Recorder::new(self.client.clone(), self.reporter.clone()),
                    now,
                )
            });
            entry.1 = now;
            entry.0.clone()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        recorder.publish(&event, regarding).await
    }
}
