//! What the operator wrote to the hub a moment ago, as it read it back with a GET.
//!
//! Twin queries lag writes by seconds (Learn, "Queries for IoT Hub device and module twins": the
//! results are eventually consistent), while a GET answers from the registry at once. A query run
//! right after a write can still show the device as it was, with the old etag and no scope, or not
//! at all. So every device the operator writes is read back once, and observation prefers that
//! copy over a query's answer until the query has certainly caught up ([`QUERY_LAG_ALLOWANCE`]).
//! The copies live in memory per hierarchy; after a restart the ids in the status stand in (see
//! `hub::observe`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::model::HubDevice;

/// How long a read-back copy outranks query answers. Azure speaks of seconds; a minute leaves
/// room for a slow hub, and only delays noticing an edit made by someone else right after ours.
pub const QUERY_LAG_ALLOWANCE: Duration = Duration::from_secs(60);

/// One device as read back after a write: `None` when the GET said it does not exist.
#[derive(Debug, Clone, PartialEq)]
struct ReadBack {
    at: Instant,
    device: Option<HubDevice>,
}

/// The read-back copies of one hierarchy's devices, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadBacks {
    entries: BTreeMap<String, ReadBack>,
}

impl ReadBacks {
    /// Records what a GET right after a write returned (`None`: not found).
    pub fn remember(&mut self, id: &str, device: Option<HubDevice>, at: Instant) {
        self.entries.insert(id.to_string(), ReadBack { at, device });
    }

    /// Drops the copies queries have certainly caught up with.
    pub fn expire(&mut self, now: Instant) {
        self.entries
            .retain(|_, r| now.saturating_duration_since(r.at) < QUERY_LAG_ALLOWANCE);
    }

    /// Whether a copy of `id` (present or gone) is still fresher than any query.
    pub fn knows(&self, id: &str, now: Instant) -> bool {
        self.entries
            .get(id)
            .is_some_and(|r| now.saturating_duration_since(r.at) < QUERY_LAG_ALLOWANCE)
    }

    /// Lays the fresh copies over what queries returned: a device read back replaces the query's
    /// (possibly stale) version, one read back as gone is removed.
    pub fn overlay(&self, observed: &mut BTreeMap<String, HubDevice>, now: Instant) {
        for (id, read) in &self.entries {
            if now.saturating_duration_since(read.at) >= QUERY_LAG_ALLOWANCE {
                continue;
            }
            match &read.device {
                Some(device) => {
                    observed.insert(id.clone(), device.clone());
                }
                None => {
                    observed.remove(id);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iothub::AuthenticationType;

    fn device(id: &str, etag: &str, scope: Option<&str>) -> HubDevice {
        HubDevice {
            id: id.into(),
            device_etag: Some(etag.into()),
            twin_etag: Some(format!("twin-{etag}")),
            enabled: true,
            iot_edge: true,
            auth: AuthenticationType::Sas,
            thumbprints: (None, None),
            device_scope: scope.map(str::to_string),
            parent_scopes: Vec::new(),
            owner_tags: None,
        }
    }

    #[test]
    fn a_read_back_outranks_a_stale_query_answer_until_the_allowance_passes() {
        let t0 = Instant::now();
        let mut reads = ReadBacks::default();
        // The query still shows the device before our fix: old etag, no scope.
        let stale = device("top", "old", None);
        let fresh = device("top", "new", Some("ms-azure-iot-edge://top-1"));
        reads.remember("top", Some(fresh.clone()), t0);

        let mut observed = BTreeMap::from([("top".to_string(), stale.clone())]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(5));
        assert_eq!(observed["top"], fresh);
        assert!(reads.knows("top", t0 + Duration::from_secs(59)));

        let later = t0 + QUERY_LAG_ALLOWANCE;
        let mut observed = BTreeMap::from([("top".to_string(), stale.clone())]);
        reads.overlay(&mut observed, later);
        assert_eq!(
            observed["top"], stale,
            "past the allowance the query is trusted"
        );
        assert!(!reads.knows("top", later));
        reads.expire(later);
        assert!(reads.is_empty());
    }

    #[test]
    fn a_device_the_query_does_not_show_yet_is_added_and_a_deleted_one_removed() {
        let t0 = Instant::now();
        let mut reads = ReadBacks::default();
        reads.remember("new-child", Some(device("new-child", "1", Some("s"))), t0);
        reads.remember("deleted", None, t0);
        let mut observed = BTreeMap::from([
            ("deleted".to_string(), device("deleted", "9", None)),
            ("other".to_string(), device("other", "2", None)),
        ]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(1));
        let ids: Vec<&str> = observed.keys().map(String::as_str).collect();
        assert_eq!(ids, ["new-child", "other"]);
        assert!(
            reads.knows("deleted", t0),
            "a device read back as gone is known too"
        );
        assert!(!reads.knows("other", t0));
    }

    #[test]
    fn a_newer_read_back_replaces_an_older_one() {
        let t0 = Instant::now();
        let mut reads = ReadBacks::default();
        reads.remember("d", Some(device("d", "1", None)), t0);
        reads.remember("d", None, t0 + Duration::from_secs(2));
        let mut observed = BTreeMap::from([("d".to_string(), device("d", "1", None))]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(3));
        assert!(observed.is_empty());
        // Expiry counts from the newest read.
        reads.expire(t0 + QUERY_LAG_ALLOWANCE + Duration::from_secs(1));
        assert!(!reads.is_empty());
    }
}
