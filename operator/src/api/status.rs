//! Status of an `EdgeHierarchy`: kstatus-compatible conditions (so Flux and Argo CD judge health),
//! a summary for `kubectl get`, and one compact entry per device.

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
    /// When the hub was last read in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// One entry per device of the spec (and per owned device still being removed).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub devices: Vec<DeviceStatus>,
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

/// Status of one device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Device id.
    pub id: String,
    /// Generation below the top device (top layer is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<u32>,
    /// Parent device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
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
    /// What differed from the spec at the last sync, and what was done about it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// Human-readable detail, for example the last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A device's certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Secret holding the certificate.
    pub secret_name: String,
    /// Expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the operator re-issues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// Incremented on every issuance.
    pub revision: u32,
}

/// A device's config bundle.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleStatus {
    /// Secret holding the bundle.
    pub secret_name: String,
    /// Incremented whenever the bundle's content changes.
    pub revision: u32,
}

/// A device's deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDeploymentStatus {
    /// Deployment name from the spec.
    pub name: String,
    /// IoT Hub configuration id carrying it (Automatic mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_id: Option<String>,
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
    /// Modules not running, each as `name: status (description)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<String>,
    /// Modules not running yet for a reason that passes by itself: the edge agent has not
    /// reported, has not created the module, or has not processed the current deployment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}
