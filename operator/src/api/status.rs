//! Status of an `EdgeHierarchy`: kstatus-compatible conditions (so Flux and Argo CD judge health),
//! a summary for `kubectl get`, and one compact entry per device.
//!
//! The whole object must stay well under etcd's 1.5 MiB limit for 1,000 devices in any state
//! (docs/status.md): the device list is atomic (server-side apply then records it as one field in
//! managedFields, not every field of every entry), a device entry carries nothing the spec or a
//! naming rule already says, and every text in it is capped where it enters the status
//! (`reconcile::status`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types the operator writes.
pub mod condition_type {
    /// Everything in the hub and the cluster equals the spec.
    pub const READY: &str = "Ready";
    /// Work for the current generation is in flight.
    pub const RECONCILING: &str = "Reconciling";
    /// A person must act (invalid spec, bad credentials, ownership conflict).
    pub const STALLED: &str = "Stalled";
    /// The hub differs from the spec.
    pub const DRIFT_DETECTED: &str = "DriftDetected";
    /// Every certificate is issued and not due for renewal.
    pub const CERTIFICATES_READY: &str = "CertificatesReady";
    /// Every deployment is in the hub and applied.
    pub const DEPLOYMENTS_READY: &str = "DeploymentsReady";
    /// Every module the deployments ask for runs.
    pub const MODULES_HEALTHY: &str = "ModulesHealthy";
}

/// Observed state of the hierarchy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeHierarchyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, DriftDetected, CertificatesReady, DeploymentsReady, ModulesHealthy.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Counts over all devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<StatusSummary>,
    /// The root CA in use.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "rootCA")]
    pub root_ca: Option<RootCaStatus>,
    /// When the next device certificate is re-issued (`renewBefore` before the earliest
    /// `notAfter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_renewal_time: Option<Time>,
    /// When the hub was last read in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// The IoT Hub configurations carrying the deployments (Automatic mode), one per
    /// deployment and rendering (top layer, lower layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configurations: Vec<ConfigurationStatus>,
    /// One entry per device of the spec (and per owned device still being removed), parents
    /// first. Written whole by the operator (an atomic list).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub devices: Vec<DeviceStatus>,
    /// Devices whose texts (failing and pending modules, drift, message) were left out so the
    /// object stays within its size budget; their state and counts are still here, the details
    /// are in the Events and in `kubectl edgehierarchy status HIERARCHY DEVICE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details_omitted: Option<u32>,
}

/// An IoT Hub configuration the operator keeps for a deployment.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    /// Deployment name from the spec.
    pub deployment: String,
    /// The configuration's id in the hub (`<hierarchy>-<deployment>-<hash8>`).
    pub id: String,
}

/// Counts over all devices; the printer columns show some of them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusSummary {
    /// Devices in the spec.
    pub devices: u32,
    /// Devices that exist in the hub and are owned by this hierarchy.
    pub registered: u32,
    /// Devices whose parent link in the hub is right (top-layer devices are not counted).
    pub parented: u32,
    /// Edge devices whose deployment is applied.
    pub deployed: u32,
    /// Edge devices whose modules all run.
    pub healthy: u32,
    /// Devices where the hub differed from the spec at the last sync.
    pub drifted: u32,
}

/// The root CA in use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RootCaStatus {
    /// Secret holding the root CA.
    pub secret_name: String,
    /// Expiry of the root CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// A change of root being rolled out; absent when none is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RootRotationStatus>,
}

/// Progress of a root rotation (docs/certificates.md, "Root rotation"). Counts are over the
/// Edge devices, whose bundles the parent-child links depend on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RootRotationStatus {
    pub phase: RootRotationPhase,
    /// The layer being re-issued, or waited for (`Reissuing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<u32>,
    /// When the operator noticed the new root.
    pub started_at: Time,
    /// When the old root is dropped at the latest (`startedAt` + `rootRotation.overlap`).
    pub old_root_trusted_until: Time,
    pub devices: u32,
    /// Devices that acknowledged a bundle trusting the new root.
    pub trusting_new_root: u32,
    /// Devices whose edge CA is issued under the new root.
    pub reissued: u32,
    /// Devices that acknowledged their edge CA under the new root.
    pub installed: u32,
}

/// Where a root rotation is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootRotationPhase {
    /// Bundles trust both roots; waiting for every device to install one.
    Trusting,
    /// Edge CAs are re-issued under the new root, one layer at a time.
    Reissuing,
    /// Everything is issued under the new root; waiting for every device to install it.
    Retiring,
}

/// Per-device state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceState {
    /// Not yet as the spec says; the operator is working on it.
    #[default]
    Pending,
    /// Exists in the hub exactly as the spec says.
    Ready,
    /// The hub differs from the spec (under Observe it stays so).
    Drifted,
    /// A device with this id exists in the hub and is not ours.
    Conflict,
    /// The last attempt failed; see message.
    Error,
    /// Being removed from the hub.
    Deleting,
}

/// Status of one device: what the spec does not say already. The parent is the spec's; the
/// certificate and bundle Secrets are named `<hierarchy>-<device slug>-<hash8>-certs` and
/// `...-bundle` (`kubectl edgehierarchy status` prints them); a certificate renews `renewBefore`
/// before `notAfter`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Device id.
    pub id: String,
    /// Generation below the top device (top layer is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<u32>,
    /// Pending, Ready, Drifted, Conflict, Error or Deleting.
    pub state: DeviceState,
    /// The device's scope in the hub (`ms-azure-iot-edge://<id>-<generationId>` for Edge devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// The device's edge CA (and identity) certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// The device's config bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleStatus>,
    /// The device's base deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeviceDeploymentStatus>,
    /// Module health reported by the device's edgeAgent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<ModulesStatus>,
    /// What differed from the spec at the last sync, and what was done about it (at most three
    /// items, each cut to 160 bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// Human-readable detail, for example the last error (cut to 240 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A device's certificate (its Secret is `<hierarchy>-<device slug>-<hash8>-certs`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Expiry; the operator re-issues the certificate `spec.certificates.renewBefore` earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// Incremented on every issuance.
    pub revision: u32,
    /// Under `issuance: Est`: the certificate the device enrolled over EST most recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub est: Option<EstCertificateStatus>,
}

/// A certificate a device enrolled over EST (docs/est.md).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EstCertificateStatus {
    /// `edge-ca` or `identity`.
    pub profile: String,
    /// Serial number, hex.
    pub serial: String,
    pub not_after: Time,
    /// When the device enrolled it.
    pub enrolled: Time,
}

/// A device's config bundle (its Secret is `<hierarchy>-<device slug>-<hash8>-bundle`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleStatus {
    /// Incremented whenever the bundle's content changes.
    pub revision: u32,
}

/// A device's deployment (its configuration is in `status.configurations`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDeploymentStatus {
    /// Deployment name from the spec.
    pub name: String,
    /// Whether the hub reports it applied to the device.
    pub applied: bool,
}

/// Module health of a device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModulesStatus {
    /// Modules the deployment asks for (system modules included).
    pub desired: u32,
    /// Modules reported running.
    pub running: u32,
    /// Modules not running, each as `name: status (description)` (at most three, each cut to
    /// 160 bytes, then `and N more`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<String>,
    /// Modules not running yet for a reason that passes by itself: the edge agent has not
    /// reported, has not created the module, or has not processed the current deployment
    /// (capped like `failing`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

/// How many items a status list (drift, failing or pending modules) stands for: its entries, a
/// closing `and N more` counted as the N it replaced.
pub fn listed_items(list: &[String]) -> usize {
    match list.last().and_then(|last| more_count(last)) {
        Some(hidden) => list.len() - 1 + hidden,
        None => list.len(),
    }
}

/// The N of a list's closing `and N more`.
pub fn more_count(item: &str) -> Option<usize> {
    item.strip_prefix("and ")?
        .strip_suffix(" more")?
        .parse()
        .ok()
}
