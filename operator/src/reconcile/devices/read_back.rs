//! What the operator wrote to the hub a moment ago, as it read it back with a GET.
//!
//! Twin queries lag writes by seconds (Learn, "Queries for IoT Hub device and module twins": the
//! results are eventually consistent), while a GET answers from the registry at once. A query run
//! right after a write can still show the device as it was, with the old etag and no scope, or not
//! at all. So every device the operator writes is read back once, with the etags the write
//! replaced. Observation then takes the read-back copy over a query answer that is older than the
//! write (it shows a replaced etag, or no device where one was created), and the query's answer
//! otherwise: a later edit by someone else shows as new etags and is seen at once.
//! The copies live in memory per hierarchy for [`QUERY_LAG_ALLOWANCE`]; after a restart the ids
//! in the status stand in (see `hub::observe`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::model::HubDevice;

/// How long a read-back copy is kept. Azure speaks of seconds; a minute leaves room for a slow
/// hub.
pub const QUERY_LAG_ALLOWANCE: Duration = Duration::from_secs(60);

/// The etags one device had before the operator's writes replaced them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replaced {
    device_etags: BTreeSet<String>,
    twin_etags: BTreeSet<String>,
}

impl Replaced {
    /// The etags of `before`, the device as observed when the write was planned (`None`: it
    /// did not exist).
    pub fn of(before: Option<&HubDevice>) -> Self {
        let mut replaced = Self::default();
        if let Some(d) = before {
            replaced.device_etags.extend(d.device_etag.clone());
            replaced.twin_etags.extend(d.twin_etag.clone());
        }
        replaced
    }

    /// Whether `answer` shows the device as it was before one of the writes.
    fn shows(&self, answer: &HubDevice) -> bool {
        answer
            .device_etag
            .as_ref()
            .is_some_and(|e| self.device_etags.contains(e))
            || answer
                .twin_etag
                .as_ref()
                .is_some_and(|e| self.twin_etags.contains(e))
    }
}

/// One device as read back after a write: `None` when the GET said it does not exist.
#[derive(Debug, Clone, PartialEq)]
struct ReadBack {
    at: Instant,
    device: Option<HubDevice>,
    replaced: Replaced,
}

/// The read-back copies of one hierarchy's devices, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadBacks {
    entries: BTreeMap<String, ReadBack>,
}

impl ReadBacks {
    /// Records what a GET right after a write returned (`None`: not found) and the etags the
    /// write replaced; those of earlier writes still kept are kept too.
    pub fn remember(
        &mut self,
        id: &str,
        device: Option<HubDevice>,
        replaced: Replaced,
        at: Instant,
    ) {
        let mut replaced = replaced;
        if let Some(earlier) = self.entries.remove(id) {
            replaced.device_etags.extend(earlier.replaced.device_etags);
            replaced.twin_etags.extend(earlier.replaced.twin_etags);
        }
        // The state read back is the current one, never one that was replaced.
        if let Some(d) = &device {
            if let Some(e) = &d.device_etag {
                replaced.device_etags.remove(e);
            }
            if let Some(e) = &d.twin_etag {
                replaced.twin_etags.remove(e);
            }
        }
        self.entries.insert(
            id.to_string(),
            ReadBack {
                at,
                device,
                replaced,
            },
        );
    }

    /// Drops the copies queries have certainly caught up with.
    pub fn expire(&mut self, now: Instant) {
        self.entries
            .retain(|_, r| now.saturating_duration_since(r.at) < QUERY_LAG_ALLOWANCE);
    }

    fn fresh(&self, id: &str, now: Instant) -> Option<&ReadBack> {
        self.entries
            .get(id)
            .filter(|r| now.saturating_duration_since(r.at) < QUERY_LAG_ALLOWANCE)
    }

    /// Whether a recent copy of `id` (present or gone) exists, so no other read is needed.
    pub fn knows(&self, id: &str, now: Instant) -> bool {
        self.fresh(id, now).is_some()
    }

    /// Lays the copies over what queries returned where the query's answer is older than the
    /// write: no answer for a device read back as present, or an answer with a replaced etag.
    pub fn overlay(&self, observed: &mut BTreeMap<String, HubDevice>, now: Instant) {
        for id in self.entries.keys() {
            let Some(read) = self.fresh(id, now) else {
                continue;
            };
            let stale = match observed.get(id) {
                None => read.device.is_some(),
                Some(answer) => read.replaced.shows(answer),
            };
            if !stale {
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

    fn replaced(before: &HubDevice) -> Replaced {
        Replaced::of(Some(before))
    }

    #[test]
    fn a_read_back_outranks_a_query_answer_from_before_the_write() {
        let t0 = Instant::now();
        let mut reads = ReadBacks::default();
        // The query still shows the device before our fix: old etag, no scope.
        let stale = device("top", "old", None);
        let fresh = device("top", "new", Some("ms-azure-iot-edge://top-1"));
        reads.remember("top", Some(fresh.clone()), replaced(&stale), t0);

        let mut observed = BTreeMap::from([("top".to_string(), stale.clone())]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(5));
        assert_eq!(observed["top"], fresh);
        assert!(reads.knows("top", t0 + Duration::from_secs(59)));

        // Once the query has caught up it answers with the read-back's own etags.
        let mut observed = BTreeMap::from([("top".to_string(), fresh.clone())]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(6));
        assert_eq!(observed["top"], fresh);

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
    fn an_edit_by_someone_else_after_the_write_shows_at_once() {
        let t0 = Instant::now();
        let mut reads = ReadBacks::default();
        let before = device("mid", "1", None);
        let ours = device("mid", "2", Some("s"));
        reads.remember("mid", Some(ours), replaced(&before), t0);
        // Someone removed the parent link after our write: a third etag.
        let theirs = device("mid", "3", None);
        let mut observed = BTreeMap::from([("mid".to_string(), theirs.clone())]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(2));
        assert_eq!(observed["mid"], theirs);

        // A device we created that someone edited is theirs too; one the query does not show
        // yet is ours.
        reads.remember(
            "new",
            Some(device("new", "1", Some("n"))),
            Replaced::of(None),
            t0,
        );
        let edited = device("new", "5", None);
        let mut observed = BTreeMap::from([("new".to_string(), edited.clone())]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(2));
        assert_eq!(observed["new"], edited);
        let mut observed = BTreeMap::new();
        reads.overlay(&mut observed, t0 + Duration::from_secs(2));
        assert_eq!(observed["new"].device_etag.as_deref(), Some("1"));
    }

    #[test]
    fn a_deleted_device_is_removed_unless_someone_created_it_again() {
        let t0 = Instant::now();
        let mut reads = ReadBacks::default();
        let before = device("gone", "9", None);
        reads.remember("gone", None, replaced(&before), t0);
        let mut observed = BTreeMap::from([
            ("gone".to_string(), before.clone()),
            ("other".to_string(), device("other", "2", None)),
        ]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(1));
        let ids: Vec<&str> = observed.keys().map(String::as_str).collect();
        assert_eq!(ids, ["other"]);
        assert!(
            reads.knows("gone", t0),
            "a device read back as gone is known too"
        );
        assert!(!reads.knows("other", t0));

        let recreated = device("gone", "10", None);
        let mut observed = BTreeMap::from([("gone".to_string(), recreated.clone())]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(1));
        assert_eq!(observed["gone"], recreated);
    }

    #[test]
    fn replaced_etags_add_up_over_writes_and_the_current_one_is_never_among_them() {
        let t0 = Instant::now();
        let mut reads = ReadBacks::default();
        let v1 = device("d", "1", None);
        let v2 = device("d", "2", None);
        let v3 = device("d", "3", Some("s"));
        reads.remember("d", Some(v2.clone()), replaced(&v1), t0);
        reads.remember(
            "d",
            Some(v3.clone()),
            replaced(&v2),
            t0 + Duration::from_secs(1),
        );
        for stale in [&v1, &v2] {
            let mut observed = BTreeMap::from([("d".to_string(), stale.clone())]);
            reads.overlay(&mut observed, t0 + Duration::from_secs(2));
            assert_eq!(observed["d"], v3);
        }
        // Written back to an etag seen before (a twin etag can repeat after a revert).
        reads.remember(
            "d",
            Some(v1.clone()),
            replaced(&v3),
            t0 + Duration::from_secs(2),
        );
        let mut observed = BTreeMap::from([("d".to_string(), v1.clone())]);
        reads.overlay(&mut observed, t0 + Duration::from_secs(3));
        assert_eq!(observed["d"], v1);
        // Expiry counts from the newest read.
        reads.expire(t0 + QUERY_LAG_ALLOWANCE + Duration::from_secs(1));
        assert!(!reads.is_empty());
    }
}
