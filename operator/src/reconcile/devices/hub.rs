//! The hub side of a reconcile: `observe` reads this hierarchy's devices with as few queries as
//! the quota allows, `apply` carries out a plan's actions. Thin I/O; the decisions are in `plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use futures::StreamExt;
use tracing::{debug, info};

use super::model::HubDevice;
use super::plan::{Action, IdentityFix, NewAuth, NewDevice};
use super::read_back::{ReadBacks, Replaced};
use crate::iothub::query::in_list_queries;
use crate::iothub::{
    AuthenticationMechanism, AuthenticationType, BulkDeviceOutcome, DeviceCapabilities,
    DeviceStatus, ExportImportDevice, HubClient, HubError, ImportMode, SymmetricKey, Twin,
    X509Thumbprint,
};
use crate::ownership::{HierarchyIdentity, TAG, owned_devices_condition};

/// The twin fields device planning reads. Queries are billed by answer size in 4 KB chunks
/// (Learn, "IoT Hub pricing": query results count as messages), and a full twin carries
/// properties and `$metadata` the device step never looks at.
pub const DEVICE_FIELDS: &str = "deviceId, etag, deviceEtag, status, capabilities, \
     authenticationType, x509Thumbprint, deviceScope, parentScopes, tags";

/// Reads the hub devices that are ours (one paged query on the ownership tag) and those with a
/// spec'd id that the first query did not return (only then, in chunks): these are new, taken
/// by someone else, or lost their tags.
///
/// Queries lag writes, so what was read back after a recent write is laid over their answer,
/// and a device the hierarchy registered before (`expected`, from its status) that no query
/// returns is read with a GET: it may be too new for the query, or really gone.
pub async fn observe(
    client: &HubClient,
    identity: &HierarchyIdentity,
    spec_ids: impl IntoIterator<Item = &str>,
    expected: &BTreeSet<String>,
    read_backs: &mut ReadBacks,
) -> Result<BTreeMap<String, HubDevice>, HubError> {
    let now = Instant::now();
    let owned = client
        .query_twins(&format!(
            "SELECT {DEVICE_FIELDS} FROM devices WHERE {}",
            owned_devices_condition(&identity.uid)
        ))
        .await?;
    let mut devices: BTreeMap<String, HubDevice> = owned
        .iter()
        .filter_map(HubDevice::from_twin)
        .map(|d| (d.id.clone(), d))
        .collect();
    let unseen: Vec<&str> = spec_ids
        .into_iter()
        .filter(|id| !devices.contains_key(*id) && !read_backs.knows(id, now))
        .collect();
    let head = format!("SELECT {DEVICE_FIELDS} FROM devices WHERE deviceId IN ");
    for query in in_list_queries(&head, unseen, "") {
        let found = client.query_twins(&query).await?;
        devices.extend(
            found
                .iter()
                .filter_map(HubDevice::from_twin)
                .map(|d| (d.id.clone(), d)),
        );
    }
    read_backs.overlay(&mut devices, now);
    let missing: Vec<&str> = expected
        .iter()
        .filter(|id| !devices.contains_key(*id) && !read_backs.knows(id, now))
        .map(String::as_str)
        .collect();
    // Nothing of ours replaced them: any answer a query gives later is at least as new.
    devices.extend(read_back(client, &missing, |_| Replaced::default(), read_backs).await?);
    debug!(
        owned = owned.len(),
        read = missing.len(),
        total = devices.len(),
        "observed hub devices"
    );
    Ok(devices)
}

/// How many read-back GETs are in flight at once (the client's rate limiter still paces them).
const READ_BACK_CONCURRENCY: usize = 64;

/// What a GET tells of a device: `Some(None)` that it does not exist, `None` nothing (the GET
/// failed for this device alone).
type FreshRead = Option<Option<HubDevice>>;

/// GETs the twin of `id`. A failure of the whole hub is returned.
async fn get_fresh(client: &HubClient, id: &str) -> Result<FreshRead, HubError> {
    match client.get_twin(id).await {
        Ok(twin) => Ok(Some(HubDevice::from_twin(&twin))),
        Err(e) if e.is_not_found() => Ok(Some(None)),
        Err(e) if is_device_level(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// GETs the twins of `ids` (several at a time) and remembers each as fresher than any query
/// answer that shows the etags `replaced` gives for it.
async fn read_back(
    client: &HubClient,
    ids: &[&str],
    replaced: impl Fn(&str) -> Replaced,
    read_backs: &mut ReadBacks,
) -> Result<BTreeMap<String, HubDevice>, HubError> {
    // Owned ids, so the stream's futures are Send for any lifetime (the controller needs it).
    let owned: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    let reads: Vec<(String, Result<FreshRead, HubError>)> = futures::stream::iter(owned)
        .map(|id| async move {
            let read = get_fresh(client, &id).await;
            (id, read)
        })
        .buffer_unordered(READ_BACK_CONCURRENCY)
        .collect()
        .await;
    let mut found = BTreeMap::new();
    for (id, read) in reads {
        let Some(device) = read? else { continue };
        read_backs.remember(&id, device.clone(), replaced(&id), Instant::now());
        if let Some(device) = device {
            found.insert(id, device);
        }
    }
    Ok(found)
}

/// Reads back every device a round wrote or failed to write, so the next round plans from the
/// hub as it is now rather than from a query that may not show the write yet. `observed` is
/// what the round planned from: the etags it holds are the ones the writes replaced. A deleted
/// device needs no GET.
pub async fn read_back_writes(
    client: &HubClient,
    applied: &Applied,
    observed: &BTreeMap<String, HubDevice>,
    read_backs: &mut ReadBacks,
) -> Result<(), HubError> {
    let written: BTreeSet<&str> = applied
        .created
        .iter()
        .chain(&applied.fixed)
        .chain(&applied.tagged)
        .chain(applied.failures.keys())
        .filter(|id| !applied.deleted.contains(id))
        .map(String::as_str)
        .collect();
    let written: Vec<&str> = written.into_iter().collect();
    let replaced = |id: &str| Replaced::of(observed.get(id));
    read_back(client, &written, replaced, read_backs).await?;
    for id in &applied.deleted {
        read_backs.remember(id, None, replaced(id), Instant::now());
    }
    Ok(())
}

/// What applying a plan did, for status and Events.
#[derive(Debug, Default)]
pub struct Applied {
    pub created: Vec<String>,
    pub fixed: Vec<String>,
    pub tagged: Vec<String>,
    pub deleted: Vec<String>,
    /// Per-device failures that did not stop the rest (a bulk entry rejected, a 412 on a stale
    /// etag): the next round or resync retries them.
    pub failures: BTreeMap<String, String>,
}

impl Applied {
    pub fn writes(&self) -> usize {
        self.created.len() + self.fixed.len() + self.tagged.len() + self.deleted.len()
    }

    /// Adds a later round's writes.
    pub fn merge(&mut self, later: Applied) {
        self.created.extend(later.created);
        self.fixed.extend(later.fixed);
        self.tagged.extend(later.tagged);
        self.deleted.extend(later.deleted);
        self.failures.extend(later.failures);
    }
}

/// Carries out the actions in order. A failure of the whole hub (auth, network, throttling past
/// retries) stops and is returned; a failure of one device is recorded and the rest goes on.
pub async fn apply(client: &HubClient, actions: &[Action]) -> Result<Applied, HubError> {
    let mut applied = Applied::default();
    for action in actions {
        match action {
            Action::Create(devices) => create(client, devices, &mut applied).await?,
            Action::FixIdentity { id, etag, fix } => {
                match fix_identity(client, id, etag.as_deref(), fix).await {
                    Ok(()) => applied.fixed.push(id.clone()),
                    Err(e) if is_device_level(&e) => {
                        applied.failures.insert(id.clone(), e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            Action::WriteOwnerTags {
                id,
                twin_etag,
                patch,
            } => {
                let mut tags = serde_json::Map::new();
                tags.insert(TAG.to_string(), patch.clone());
                let twin = Twin {
                    tags: Some(tags),
                    ..Twin::default()
                };
                match client.update_twin(id, &twin, twin_etag.as_deref()).await {
                    Ok(_) => applied.tagged.push(id.clone()),
                    Err(e) if is_device_level(&e) => {
                        applied.failures.insert(id.clone(), e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            Action::Delete(devices) => delete(client, devices, &mut applied).await?,
        }
    }
    if applied.writes() > 0 {
        info!(
            created = applied.created.len(),
            fixed = applied.fixed.len(),
            tagged = applied.tagged.len(),
            deleted = applied.deleted.len(),
            failed = applied.failures.len(),
            "applied hub changes"
        );
    }
    Ok(applied)
}

/// Errors that concern one device and should not stop the others.
fn is_device_level(error: &HubError) -> bool {
    error.is_not_found()
        || error.is_conflict()
        || error.is_precondition_failed()
        || error.status() == Some(400)
}

fn authentication(auth: &NewAuth) -> AuthenticationMechanism {
    match auth {
        NewAuth::Sas { keys: None } => AuthenticationMechanism::sas_generated(),
        NewAuth::Sas { keys: Some(keys) } => AuthenticationMechanism {
            symmetric_key: Some(SymmetricKey {
                primary_key: Some(keys.primary.clone()),
                secondary_key: Some(keys.secondary.clone()),
            }),
            x509_thumbprint: None,
            auth_type: Some(AuthenticationType::Sas),
        },
        NewAuth::SelfSigned { primary, secondary } => AuthenticationMechanism {
            symmetric_key: None,
            x509_thumbprint: Some(X509Thumbprint {
                primary_thumbprint: Some(primary.clone()),
                secondary_thumbprint: secondary.clone(),
            }),
            auth_type: Some(AuthenticationType::SelfSigned),
        },
    }
}

fn import_entry(device: &NewDevice) -> ExportImportDevice {
    let mut tags = serde_json::Map::new();
    tags.insert(TAG.to_string(), device.owner_tags.clone());
    let (device_scope, parent_scopes) = match (&device.parent_scope, device.iot_edge) {
        (None, _) => (None, None),
        (Some(scope), true) => (None, Some(vec![scope.clone()])),
        (Some(scope), false) => (Some(scope.clone()), None),
    };
    ExportImportDevice {
        id: Some(device.id.clone()),
        import_mode: Some(ImportMode::Create),
        status: Some(DeviceStatus::Enabled),
        authentication: Some(authentication(&device.auth)),
        tags: Some(tags),
        capabilities: Some(DeviceCapabilities {
            iot_edge: Some(device.iot_edge),
        }),
        device_scope,
        parent_scopes,
        ..ExportImportDevice::default()
    }
}

async fn create(
    client: &HubClient,
    devices: &[NewDevice],
    applied: &mut Applied,
) -> Result<(), HubError> {
    let entries: Vec<ExportImportDevice> = devices.iter().map(import_entry).collect();
    let outcome = client.bulk_devices(&entries).await?;
    let mut untagged = Vec::new();
    for result in &outcome.results {
        match &result.outcome {
            BulkDeviceOutcome::Succeeded { warnings } => {
                applied.created.push(result.device_id.clone());
                if warnings
                    .iter()
                    .any(|w| w.warning_code.as_deref() == Some(REGISTERED_WITHOUT_TWIN))
                {
                    untagged.push(result.device_id.as_str());
                }
            }
            BulkDeviceOutcome::Failed(error) => {
                applied
                    .failures
                    .insert(result.device_id.clone(), describe_bulk_error(error));
            }
            BulkDeviceOutcome::RequestFailed(_) | BulkDeviceOutcome::NotSent => {}
        }
    }
    // The device exists but its twin, and so the ownership tags, was not stored: write them now,
    // or the next observation would find an untagged device and call it someone else's.
    for id in untagged {
        let Some(device) = devices.iter().find(|d| d.id == id) else {
            continue;
        };
        let mut tags = serde_json::Map::new();
        tags.insert(TAG.to_string(), device.owner_tags.clone());
        let twin = Twin {
            tags: Some(tags),
            ..Twin::default()
        };
        match client.update_twin(id, &twin, None).await {
            Ok(_) => applied.tagged.push(id.to_string()),
            Err(e) if is_device_level(&e) => {
                applied.failures.insert(id.to_string(), e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    match outcome.request_error() {
        Some(error) => Err(error.clone()),
        None => Ok(()),
    }
}

/// The bulk warning for a device created without the twin its entry carried.
const REGISTERED_WITHOUT_TWIN: &str = "DeviceRegisteredWithoutTwin";

fn describe_bulk_error(error: &crate::iothub::DeviceRegistryOperationError) -> String {
    format!(
        "{}: {}",
        error.error_code.as_deref().unwrap_or("UnknownError"),
        error
            .error_status
            .as_deref()
            .unwrap_or("the hub rejected the device")
    )
}

async fn delete(
    client: &HubClient,
    devices: &[(String, Option<String>)],
    applied: &mut Applied,
) -> Result<(), HubError> {
    // One by one, in the planned order (children first); a device already gone is fine.
    for (id, etag) in devices {
        match client.delete_device(id, etag.as_deref()).await {
            Ok(()) => applied.deleted.push(id.clone()),
            Err(e) if e.is_not_found() => applied.deleted.push(id.clone()),
            Err(e) if is_device_level(&e) => {
                applied.failures.insert(id.clone(), e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read-modify-write of one identity: the full device read back keeps its keys, so only the
/// fields in `fix` change. The etag from the observation guards against a concurrent edit.
async fn fix_identity(
    client: &HubClient,
    id: &str,
    etag: Option<&str>,
    fix: &IdentityFix,
) -> Result<(), HubError> {
    let mut device = client.get_device(id).await?;
    if let Some(edge) = fix.iot_edge {
        device.capabilities = Some(DeviceCapabilities {
            iot_edge: Some(edge),
        });
    }
    if fix.enable {
        device.status = Some(DeviceStatus::Enabled);
        device.status_reason = None;
    }
    if let Some(scopes) = &fix.parent_scopes {
        device.parent_scopes = Some(scopes.clone());
    }
    if let Some(scope) = &fix.device_scope {
        // A Leaf's parent link is its deviceScope; the hub derives parentScopes from it, so a
        // stale parentScopes left in the body would contradict the new link.
        device.device_scope = Some(scope.clone());
        device.parent_scopes = Some(if scope.is_empty() {
            Vec::new()
        } else {
            vec![scope.clone()]
        });
    }
    if let Some(auth) = &fix.auth {
        device.authentication = Some(authentication(auth));
    }
    // The etag seen when planning: if someone edited the device since, the hub answers 412 and
    // the next round plans again from what is there now.
    let if_match = etag
        .map(str::to_string)
        .or_else(|| device.etag.clone())
        .unwrap_or_else(|| "*".to_string());
    // Server-maintained fields are not ours to send back.
    device.connection_state = None;
    device.connection_state_updated_time = None;
    device.status_updated_time = None;
    device.last_activity_time = None;
    device.cloud_to_device_message_count = None;
    client
        .create_or_update_device(&device, Some(&if_match))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn import_entries_carry_links_and_tags_in_the_create() {
        let edge = NewDevice {
            id: "lower".into(),
            iot_edge: true,
            parent_scope: Some("ms-azure-iot-edge://top-1".into()),
            auth: NewAuth::Sas { keys: None },
            owner_tags: json!({"uid": "u"}),
        };
        let entry = serde_json::to_value(import_entry(&edge)).unwrap();
        assert_eq!(entry["importMode"], "create");
        assert_eq!(entry["parentScopes"], json!(["ms-azure-iot-edge://top-1"]));
        assert!(entry.get("deviceScope").is_none());
        assert_eq!(entry["capabilities"]["iotEdge"], true);
        assert_eq!(entry["tags"]["edgeHierarchy"]["uid"], "u");
        assert_eq!(entry["authentication"]["type"], "sas");

        let leaf = NewDevice {
            iot_edge: false,
            id: "sensor".into(),
            ..edge
        };
        let entry = serde_json::to_value(import_entry(&leaf)).unwrap();
        assert_eq!(entry["deviceScope"], "ms-azure-iot-edge://top-1");
        assert!(entry.get("parentScopes").is_none());

        let x509 = NewDevice {
            auth: NewAuth::SelfSigned {
                primary: "AB".into(),
                secondary: None,
            },
            parent_scope: None,
            ..leaf
        };
        let entry = serde_json::to_value(import_entry(&x509)).unwrap();
        assert_eq!(entry["authentication"]["type"], "selfSigned");
        assert_eq!(
            entry["authentication"]["x509Thumbprint"]["primaryThumbprint"],
            "AB"
        );
        assert!(entry.get("deviceScope").is_none() && entry.get("parentScopes").is_none());
    }
}
