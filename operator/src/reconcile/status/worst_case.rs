//! The largest status the operator writes for a spec, built by its own status code from the
//! worst inputs each step can hand it: every device registered, drifted in every way the device
//! plan compares and failing its last write with a long hub error; every certificate renewing
//! and every bundle failing; every Edge device's modules failing with long descriptions, its
//! deployment rejected and not yet processed; conflicts and configuration drift for the
//! conditions. The size test (`status::tests`) and `e2e/tests/tests/status_size.rs` measure it.
//!
//! The drift sentences follow the device plan's wording; every text is capped where it enters
//! the status, so the inputs only need to be longer than the caps.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Map, json};

use super::{SyncOutcome, add_certificates, add_deployments, synced_status};
use crate::api::{
    DeploymentSpec, DeviceSpec, DeviceState, DeviceType, EdgeHierarchy, EdgeHierarchySpec,
    EdgeHierarchyStatus, IotHubSpec, ReconcilePolicy, SecretKeyRef,
};
use crate::reconcile::bundles::Bundles;
use crate::reconcile::certs::{Certificates, DeviceCertificates};
use crate::reconcile::deployments::DeploymentOutcome;
use crate::reconcile::devices::{DeviceReport, Plan};

/// Modules each Edge device's deployment asks for, besides edgeAgent and edgeHub.
pub const MODULES: usize = 12;
/// Length of every device-reported and hub-reported text fed in (far over every cap).
pub const LONG_TEXT: usize = 2_000;

/// A generation id as IoT Hub assigns them (18 digits), so device scopes have their real length.
const GENERATION_ID: &str = "638412345678901234";

/// Devices per layer of the worst-case tree (the bench's shape): layers 1 to 4 and 270 of
/// layer 5 are Edge devices, the last 300 of layer 5 are Leaf devices.
pub const LAYERS: [usize; 5] = [5, 25, 100, 300, 570];
/// Leaf devices at the bottom of [`LAYERS`].
pub const LEAVES: usize = 300;
/// The longest id an Edge device may have: its edge CA's common name is `<id>.deviceca`, at
/// most 64 characters.
pub const EDGE_ID_MAX: usize = 55;
/// The longest device id IoT Hub allows (a Leaf device's id becomes no certificate name).
pub const LEAF_ID_MAX: usize = 128;

/// How long the worst-case tree's ids are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdLength {
    /// Every id as long as allowed: Edge devices [`EDGE_ID_MAX`], Leaf devices [`LEAF_ID_MAX`].
    Longest,
    /// Every id this many characters (at least 12).
    Exactly(usize),
}

/// A hierarchy of 1,000 devices in [`LAYERS`] with ids of `ids` length, every Edge device with
/// its deployment and `layeredDeployments: [monitoring]` (when such a deployment is given),
/// every gateway (layers 1 to 4) with a hostname, and `deployments` as given.
pub fn hierarchy(
    name: &str,
    namespace: &str,
    ids: IdLength,
    deployments: Vec<DeploymentSpec>,
) -> EdgeHierarchy {
    let id = |layer: usize, index: usize, leaf: bool| {
        let length = match ids {
            IdLength::Longest if leaf => LEAF_ID_MAX,
            IdLength::Longest => EDGE_ID_MAX,
            IdLength::Exactly(n) => n.max(12),
        };
        let mut id = format!("l{layer}-{index:04}-");
        while id.len() < length {
            id.push_str("contoso-munich-plant02-hall07-line03-");
        }
        id.truncate(length);
        if id.ends_with('-') {
            id.pop();
            id.push('0');
        }
        id
    };
    let layered = if deployments.iter().any(|d| d.name == "monitoring") {
        vec!["monitoring".to_string()]
    } else {
        Vec::new()
    };
    let base = |layer: usize| {
        let wanted = match layer {
            1 => "enterprise",
            5 => "cell",
            _ => "gateway",
        };
        deployments
            .iter()
            .find(|d| d.name == wanted)
            .or(deployments.iter().find(|d| !d.layered))
            .map(|d| d.name.clone())
    };
    let mut devices: Vec<DeviceSpec> = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    for (i, &count) in LAYERS.iter().enumerate() {
        let layer = i + 1;
        let mut this = Vec::new();
        for index in 0..count {
            let leaf = layer == LAYERS.len() && index >= count - LEAVES;
            let device_id = id(layer, index, leaf);
            let parent = (!previous.is_empty()).then(|| {
                // Leaves hang below the gateways of layer 4; Edge devices spread evenly.
                previous[index * previous.len() / count].clone()
            });
            devices.push(DeviceSpec {
                parent,
                device_type: if leaf {
                    DeviceType::Leaf
                } else {
                    DeviceType::Edge
                },
                deployment: if leaf { None } else { base(layer) },
                layered_deployments: if leaf { Vec::new() } else { layered.clone() },
                hostname: (layer < LAYERS.len())
                    .then(|| format!("{}.munich.contoso.example", device_id.to_lowercase())),
                id: device_id.clone(),
            });
            if !leaf {
                this.push(device_id);
            }
        }
        previous = this;
    }
    let mut object = EdgeHierarchy::new(
        name,
        EdgeHierarchySpec {
            iot_hub: IotHubSpec {
                connection_string_secret_ref: SecretKeyRef {
                    name: "iothub-service".into(),
                    key: "connectionString".into(),
                },
                ca_secret_ref: None,
                rate_limits: None,
            },
            policy: Default::default(),
            authentication: Default::default(),
            certificates: Default::default(),
            edge: Default::default(),
            deployment_mode: Default::default(),
            deployments,
            devices,
        },
    );
    object.metadata.namespace = Some(namespace.into());
    object
}

/// The worst-case status of `hierarchy` (its spec's devices, parents first) at `now`, before
/// [`super::for_apply`] fits it to the object.
pub fn status(hierarchy: &EdgeHierarchy, now: Timestamp) -> EdgeHierarchyStatus {
    let name = hierarchy.metadata.name.as_deref().unwrap_or("hierarchy");
    let spec = &hierarchy.spec;
    let long = |what: &str| format!("{what} {}", "x".repeat(LONG_TEXT));
    let scope = |id: &str| format!("ms-azure-iot-edge://{id}-{GENERATION_ID}");
    let parents: BTreeMap<&str, Option<&str>> = spec
        .devices
        .iter()
        .map(|d| (d.id.as_str(), d.parent.as_deref()))
        .collect();
    let layer = |id: &str| {
        let mut layer = 1;
        let mut at = id;
        while let Some(Some(parent)) = parents.get(at) {
            layer += 1;
            at = parent;
            if layer > 10 {
                break;
            }
        }
        layer
    };

    let mut plan = Plan::default();
    let mut drift = BTreeMap::new();
    let mut failures = BTreeMap::new();
    for device in &spec.devices {
        let id = device.id.as_str();
        let parent = device.parent.clone();
        let edge = device.device_type == DeviceType::Edge;
        let device_scope = match (&parent, edge) {
            (_, true) => Some(scope(id)),
            (Some(parent), false) => Some(scope(parent)),
            (None, false) => None,
        };
        let parent_scope = parent.as_deref().map(scope).unwrap_or_default();
        let items = vec![
            "edge capability is off in the hub, the spec says on; corrected".to_string(),
            "device is disabled in the hub; corrected".to_string(),
            "authentication is SelfSigned in the hub, the spec says SymmetricKey; corrected"
                .to_string(),
            format!(
                "parent link is [\"{}\"] in the hub, the spec's parent {:?} has scope {parent_scope:?}; corrected",
                scope("someone-else"),
                parent.as_deref().unwrap_or_default()
            ),
            "ownership tags differ from the spec; corrected".to_string(),
        ];
        drift.insert(device.id.clone(), items.clone());
        failures.insert(
            device.id.clone(),
            format!(
                "device {id:?}: IoT Hub answered 400 Bad Request: {{\"Message\":\"ErrorCode:ArgumentInvalid;{}\"}}",
                long("the bulk entry was rejected:")
            ),
        );
        plan.devices.insert(
            device.id.clone(),
            DeviceReport {
                state: DeviceState::Error,
                layer: Some(layer(id)),
                parent,
                device_scope,
                drift: items,
                message: Some(long("waiting for parent")),
                registered: true,
                parented: false,
            },
        );
        plan.conflicts.push(format!(
            "device {id:?} already exists in the hub and no hierarchy owns it; set \
             spec.policy.adoptExisting: true to take it over, or rename the device in the spec"
        ));
    }
    let order: Vec<String> = spec.devices.iter().map(|d| d.id.clone()).collect();
    let outcome = SyncOutcome {
        policy: ReconcilePolicy::Manage,
        last: &plan,
        drift: &drift,
        failures: &failures,
        order: &order,
    };
    let at = Time(now);
    let generation = hierarchy.metadata.generation.or(Some(1));
    let mut status = synced_status(&EdgeHierarchyStatus::default(), &outcome, generation, &at);

    let edge: Vec<&str> = spec
        .devices
        .iter()
        .filter(|d| d.device_type == DeviceType::Edge)
        .map(|d| d.id.as_str())
        .collect();
    let certificates = certificates(name, &edge, now);
    let bundles = Bundles {
        status: edge
            .iter()
            .map(|id| (id.to_string(), crate::api::BundleStatus { revision: 9_999 }))
            .collect(),
        updated: Vec::new(),
        failures: edge
            .iter()
            .map(|id| (id.to_string(), long("spec.edge.agentImage: cannot render:")))
            .collect(),
        ..Bundles::default()
    };
    add_certificates(&mut status, &certificates, &bundles, generation, &at);

    let deployed = deployments(name, spec, &edge, &long);
    add_deployments(
        &mut status,
        &deployed,
        ReconcilePolicy::Manage,
        generation,
        &at,
    );
    status
}

/// Every Edge device's certificate due for renewal (a few days before expiry, revision high).
fn certificates(name: &str, edge: &[&str], now: Timestamp) -> Certificates {
    let key = crate::pki::generate_key(crate::api::KeyAlgorithm::EcdsaP256)
        .expect("an ECDSA key is generated");
    let root = crate::pki::generate_root_ca(name, &key, Duration::from_secs(86_400 * 3650), now)
        .expect("a root CA is generated");
    let not_after = now
        .checked_add(jiff::SignedDuration::from_hours(24 * 5))
        .unwrap_or(now);
    Certificates {
        root_secret: crate::names::root_ca_secret_name(name),
        trust_bundle: vec![root.cert_pem.clone()],
        trust_thumbprints: vec![root.info.sha256_thumbprint.clone()],
        // A root rotation under way: its status entry is a fixed handful of fields.
        rotation: Some(crate::reconcile::certs::RootRotation {
            plan: crate::reconcile::certs::rotation::RotationPlan {
                phase: crate::reconcile::certs::rotation::RotationPhase::Reissuing,
                layer: Some(5),
                hold: Default::default(),
                reissue: Vec::new(),
                forced: false,
                started: now,
                deadline: now,
                counts: Default::default(),
            },
            began_now: false,
        }),
        running_identities: BTreeMap::new(),
        root,
        devices: edge
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    DeviceCertificates {
                        secret_name: crate::names::certificate_secret_name(name, id),
                        edge_ca: None,
                        identity: None,
                        previous_identity_thumbprints: Vec::new(),
                        revision: 9_999,
                        sas_keys: None,
                        not_after,
                    },
                )
            })
            .collect(),
        issued: Vec::new(),
        renewed: edge.iter().map(|id| id.to_string()).collect(),
        renew_before: Duration::from_secs(720 * 3600),
        est_identities: Default::default(),
        // Under `issuance: Est` every device shows its latest enrollment: the longer profile
        // name, a 20-byte serial (RFC 5280's most).
        est_latest: edge
            .iter()
            .map(|id| {
                let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
                (
                    id.to_string(),
                    crate::api::EstCertificateStatus {
                        profile: "identity".into(),
                        serial: "7f".repeat(20),
                        not_after: time.clone(),
                        enrolled: time,
                    },
                )
            })
            .collect(),
    }
}

/// Every module of every Edge device failing with a long description, the deployment rejected
/// by the agent and not processed; every configuration drifted and not ready.
fn deployments(
    name: &str,
    spec: &crate::api::EdgeHierarchySpec,
    edge: &[&str],
    long: &dyn Fn(&str) -> String,
) -> DeploymentOutcome {
    let mut modules = Map::new();
    let mut reported = Map::new();
    for i in 0..MODULES {
        let module = format!("module{i:02}");
        modules.insert(
            module.clone(),
            json!({"type": "docker", "status": "running", "restartPolicy": "always",
                   "settings": {"image": format!("$upstream:443/vendor/{module}:1.0")}}),
        );
        reported.insert(
            module,
            json!({"runtimeStatus": "backoff",
                   "statusDescription": long("image pull from $upstream:443 failed:"),
                   "exitCode": 137, "lastExitTimeUtc": "2026-12-01T10:00:00.0000000Z",
                   "restartCount": 4_000_000_000u64,
                   "settings": {"image": "old"}}),
        );
    }
    let manifest = json!({"modulesContent": {"$edgeAgent": {"properties.desired": {
        "systemModules": {"edgeAgent": {"settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5"}},
                          "edgeHub": {"status": "running", "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5"}}},
        "modules": modules}}}});
    let reported = json!({
        "lastDesiredStatus": {"code": 417, "description": long("the deployment was rejected:")},
        "lastDesiredVersion": 1,
        "systemModules": {"edgeHub": {"runtimeStatus": "failed", "statusDescription": long("edgeHub:")}},
        "modules": reported,
    });
    let status = crate::deploy::modules_status(&manifest, Some(2), &reported);
    let by_id: BTreeMap<&str, &crate::api::DeviceSpec> =
        spec.devices.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut out = DeploymentOutcome::default();
    for id in edge {
        let device = by_id.get(id);
        let deployment = device
            .and_then(|d| d.deployment.clone())
            .unwrap_or_else(|| "deployment".into());
        // One configuration per deployment and rendering (top layer, lower layers).
        let variant = if device.is_some_and(|d| d.parent.is_some()) {
            "lower"
        } else {
            "top"
        };
        let configuration = format!(
            "{name}-{deployment}-{}",
            crate::names::short_hash(&format!("{deployment}/{variant}"))
        );
        out.modules.insert(id.to_string(), status.clone());
        out.deployments
            .insert(id.to_string(), (deployment, Some(configuration), false));
    }
    for d in &spec.deployments {
        out.drift.push(long(&format!(
            "configuration of deployment {:?} was changed outside the operator:",
            d.name
        )));
        out.not_ready.push(long(&format!(
            "configuration of deployment {:?} is not ready:",
            d.name
        )));
    }
    out
}
