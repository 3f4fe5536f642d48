//! Fixtures: registered devices, their certificates and the bundle Secrets already written, fed
//! through `keys_to_read` and `plan_bundles`. Each test names the rule it covers.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::api::EdgeHierarchy;
use crate::reconcile::certs::DeviceCertificates;
use crate::reconcile::devices::SasKeys;
use crate::reconcile::fixtures::{edge_ca, hub_device, now, root, stored};

const TUTORIAL: &str = include_str!("../../../../../examples/tutorial.yaml");

struct World {
    spec: EdgeHierarchySpec,
    layers: BTreeMap<String, u32>,
    registered: BTreeMap<String, HubDevice>,
    certs: Certificates,
}

fn keys(seed: &str) -> SasKeys {
    SasKeys {
        primary: format!("{seed}-primary"),
        secondary: format!("{seed}-secondary"),
    }
}

/// The tutorial's two devices, registered, with edge CAs and operator-chosen SAS keys.
fn world() -> World {
    let resource: EdgeHierarchy = serde_yaml::from_str(TUTORIAL).unwrap();
    let root = root("tutorial");
    let devices: BTreeMap<String, DeviceCertificates> = ["top-layer", "lower-layer"]
        .into_iter()
        .map(|id| {
            let ca = edge_ca(&root, id, 90, now());
            let certs = DeviceCertificates {
                secret_name: format!("{id}-certs"),
                not_after: ca.not_after,
                edge_ca: Some(ca),
                identity: None,
                previous_identity_thumbprints: Vec::new(),
                revision: 1,
                sas_keys: Some(keys(id)),
            };
            (id.to_string(), certs)
        })
        .collect();
    World {
        layers: BTreeMap::from([("top-layer".into(), 1), ("lower-layer".into(), 2)]),
        registered: ["top-layer", "lower-layer"]
            .into_iter()
            .map(|id| (id.to_string(), hub_device(id, &format!("scope-{id}"))))
            .collect(),
        certs: Certificates {
            trust_bundle: vec![root.cert_pem.clone()],
            trust_thumbprints: vec![root.info.sha256_thumbprint.clone()],
            rotation: None,
            running_identities: BTreeMap::new(),
            root_secret: "tutorial-root-ca".into(),
            root,
            devices,
            issued: Vec::new(),
            renewed: Vec::new(),
            renew_before: Duration::from_secs(30 * 24 * 3600),
            est_identities: Default::default(),
            est_latest: Default::default(),
        },
        spec: resource.spec,
    }
}

fn input<'a>(
    w: &'a World,
    created_keys: &'a BTreeMap<String, SasKeys>,
    existing: &'a BTreeMap<String, Secret>,
) -> BundlePlanInput<'a> {
    BundlePlanInput {
        hierarchy: "tutorial",
        namespace: "iot",
        spec: &w.spec,
        hub_hostname: "hub.azure-devices.net",
        layers: &w.layers,
        registered: &w.registered,
        certs: &w.certs,
        created_keys,
        existing,
        agent_auth: None,
        keep_removed: false,
        est: None,
    }
}

/// Every registered device created by this reconcile, with the keys its certificates keep.
fn created_keys(w: &World) -> BTreeMap<String, SasKeys> {
    w.registered
        .keys()
        .filter_map(|id| Some((id.clone(), w.certs.devices.get(id)?.sas_keys.clone()?)))
        .collect()
}

/// The Secrets a plan writes, as the next reconcile reads them: from the operator's Secret
/// cache, which keeps only what plans read.
fn written(plan: &BundlePlan) -> BTreeMap<String, Secret> {
    plan.writes
        .iter()
        .map(|(id, w)| {
            let mut secret = stored(w);
            crate::reconcile::secret_cache::keep_what_plans_read(&mut secret);
            (id.clone(), secret)
        })
        .collect()
}

#[test]
fn devices_created_now_get_bundles_with_the_operators_keys_and_no_hub_read() {
    let w = world();
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let input = input(&w, &created, &none);
    assert!(keys_to_read(&input).is_empty());
    let plan = plan_bundles(&input, &BTreeMap::new());
    assert_eq!(plan.writes.len(), 2);
    assert!(plan.failures.is_empty() && plan.delete.is_empty());
    assert_eq!(plan.status["lower-layer"].revision, 1);
    let config = &plan
        .writes
        .iter()
        .find(|(id, _)| id == "lower-layer")
        .unwrap()
        .1
        .data["config.toml"];
    let config = String::from_utf8_lossy(config);
    assert!(
        config.contains("SharedAccessKey=lower-layer-primary"),
        "{config}"
    );
}

#[test]
fn an_unchanged_bundle_is_not_rewritten_and_needs_no_hub_read() {
    let w = world();
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let existing = written(&plan_bundles(&input(&w, &created, &none), &BTreeMap::new()));
    // A later resync: nothing was created now, the keys come from the bundles.
    let nothing_new = BTreeMap::new();
    let resync = input(&w, &nothing_new, &existing);
    assert!(keys_to_read(&resync).is_empty());
    let plan = plan_bundles(&resync, &BTreeMap::new());
    assert!(plan.writes.is_empty());
    assert_eq!(plan.status["top-layer"].revision, 1);
}

#[test]
fn a_device_someone_else_created_has_its_key_read_from_the_hub() {
    let w = world();
    let none = BTreeMap::new();
    let nothing_new = BTreeMap::new();
    let input = input(&w, &nothing_new, &none);
    assert_eq!(keys_to_read(&input), ["top-layer", "lower-layer"]);
    let read = BTreeMap::from([
        ("top-layer".to_string(), "hub-top".to_string()),
        ("lower-layer".to_string(), "hub-lower".to_string()),
    ]);
    let plan = plan_bundles(&input, &read);
    let config = String::from_utf8_lossy(&plan.writes[0].1.data["config.toml"]).to_string();
    assert!(config.contains("SharedAccessKey=hub-"), "{config}");
}

#[test]
fn a_new_device_scope_rewrites_the_bundle_with_a_new_revision() {
    let mut w = world();
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let existing = written(&plan_bundles(&input(&w, &created, &none), &BTreeMap::new()));
    w.registered.insert(
        "top-layer".into(),
        hub_device("top-layer", "scope-recreated"),
    );
    let nothing_new = BTreeMap::new();
    let again = input(&w, &nothing_new, &existing);
    // The old bundle's key belongs to the old scope: it is asked for again.
    assert_eq!(keys_to_read(&again), ["top-layer"]);
    let read = BTreeMap::from([("top-layer".to_string(), "new-key".to_string())]);
    let plan = plan_bundles(&again, &read);
    assert_eq!(plan.writes.len(), 1);
    assert_eq!(plan.status["top-layer"].revision, 2);
}

#[test]
fn unregistered_devices_get_no_bundle_and_removed_devices_lose_theirs() {
    let mut w = world();
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let existing = written(&plan_bundles(&input(&w, &created, &none), &BTreeMap::new()));
    w.registered.remove("lower-layer");
    w.spec.devices.retain(|d| d.id != "lower-layer");
    let nothing_new = BTreeMap::new();
    let plan = plan_bundles(&input(&w, &nothing_new, &existing), &BTreeMap::new());
    assert!(!plan.status.contains_key("lower-layer"));
    assert_eq!(
        plan.delete,
        [existing["lower-layer"].metadata.name.clone().unwrap()]
    );
    // Under Detach or Observe the removed device stays in the hub, and so does its bundle.
    let kept = plan_bundles(
        &BundlePlanInput {
            keep_removed: true,
            ..input(&w, &nothing_new, &existing)
        },
        &BTreeMap::new(),
    );
    assert!(kept.delete.is_empty(), "{:?}", kept.delete);
    assert!(kept.writes.is_empty());
}

#[test]
fn key_is_read_back_from_a_bundle_config() {
    let config = "hostname = \"h\"\n[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=hub;DeviceId=d;SharedAccessKey=abc=\"\n";
    assert_eq!(key_from_config(config).as_deref(), Some("abc="));
    assert_eq!(
        key_from_config("[provisioning]\nsource = \"manual\"\n"),
        None
    );
    assert_eq!(key_from_config("not toml ["), None);
}

fn config_of(plan: &BundlePlan, id: &str) -> toml::Value {
    let (_, write) = plan.writes.iter().find(|(d, _)| d == id).unwrap();
    toml::from_str(&String::from_utf8_lossy(&write.data["config.toml"])).unwrap()
}

#[test]
fn agent_auth_reaches_every_device_with_the_address_its_image_is_pulled_from() {
    let mut w = world();
    w.spec.edge.agent_image = "myacr.azurecr.io/azureiotedge-agent:1.5".into();
    w.spec.edge.upstream_registries = vec!["mcr.microsoft.com".into(), "myacr.azurecr.io".into()];
    let login = RegistryLogin {
        address: "myacr.azurecr.io".into(),
        username: "puller".into(),
        password: crate::deploy::Password::new("s3cret-pw"),
    };
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let first = BundlePlanInput {
        agent_auth: Some(&login),
        keep_removed: false,
        ..input(&w, &created, &none)
    };
    let plan = plan_bundles(&first, &BTreeMap::new());
    let top = config_of(&plan, "top-layer");
    assert_eq!(
        top["agent"]["config"]["image"].as_str(),
        Some("myacr.azurecr.io/azureiotedge-agent:1.5")
    );
    let auth = top["agent"]["config"]["auth"].as_table().unwrap();
    let mut keys: Vec<(&str, &str)> = auth
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("password", "s3cret-pw"),
            ("serveraddress", "myacr.azurecr.io"),
            ("username", "puller"),
        ]
    );
    // Below the top layer the image and the login both go to the parent, as `$upstream`.
    let lower = config_of(&plan, "lower-layer");
    assert_eq!(
        lower["agent"]["config"]["image"].as_str(),
        Some("$upstream:443/azureiotedge-agent:1.5")
    );
    assert_eq!(
        lower["agent"]["config"]["auth"]["serveraddress"].as_str(),
        Some("$upstream:443")
    );
    assert_eq!(
        lower["agent"]["config"]["auth"]["password"].as_str(),
        Some("s3cret-pw")
    );
    assert!(!format!("{plan:?}").contains("s3cret-pw"));

    // A rotated password rewrites the bundles with a new revision.
    let existing = written(&plan);
    let rotated = RegistryLogin {
        password: crate::deploy::Password::new("rotated-pw"),
        ..login.clone()
    };
    let nothing_new = BTreeMap::new();
    let again = BundlePlanInput {
        agent_auth: Some(&rotated),
        keep_removed: false,
        ..input(&w, &nothing_new, &existing)
    };
    let plan = plan_bundles(&again, &BTreeMap::new());
    assert_eq!(plan.writes.len(), 2);
    assert_eq!(plan.status["lower-layer"].revision, 2);
}

#[test]
fn without_agent_auth_config_toml_has_no_auth_table() {
    let w = world();
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let plan = plan_bundles(&input(&w, &created, &none), &BTreeMap::new());
    for id in ["top-layer", "lower-layer"] {
        let config = config_of(&plan, id);
        assert!(config["agent"]["config"].get("auth").is_none(), "{id}");
    }
}

#[test]
fn a_bundle_says_what_it_trusts_and_remembers_the_revision_it_replaces() {
    use crate::names::{
        EDGE_CA_ANNOTATION, FINGERPRINT_ANNOTATION, PREVIOUS_EDGE_CA_ANNOTATION,
        PREVIOUS_FINGERPRINT_ANNOTATION, PREVIOUS_TRUSTED_ROOTS_ANNOTATION,
        TRUSTED_ROOTS_ANNOTATION,
    };
    let mut w = world();
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let first = plan_bundles(&input(&w, &created, &none), &BTreeMap::new());
    let annotations = &first.writes[0].1.annotations;
    let first_root = w.certs.root.info.sha256_thumbprint.clone();
    let edge_ca = w.certs.devices[&first.writes[0].0]
        .edge_ca
        .as_ref()
        .unwrap()
        .sha256_thumbprint
        .clone();
    assert_eq!(annotations[TRUSTED_ROOTS_ANNOTATION], first_root);
    assert_eq!(annotations[EDGE_CA_ANNOTATION], edge_ca);
    assert!(!annotations.contains_key(PREVIOUS_FINGERPRINT_ANNOTATION));
    let existing = written(&first);

    // A second root joins the trust bundle (a rotation): the rewritten bundle names both and
    // keeps the first revision's marks.
    let other = root("other");
    w.certs.trust_bundle.push(other.cert_pem.clone());
    w.certs
        .trust_thumbprints
        .push(other.info.sha256_thumbprint.clone());
    let nothing_new = BTreeMap::new();
    let second = plan_bundles(&input(&w, &nothing_new, &existing), &BTreeMap::new());
    assert_eq!(second.writes.len(), 2);
    let (id, write) = &second.writes[0];
    let before = existing[id].metadata.annotations.as_ref().unwrap();
    let a = &write.annotations;
    assert_eq!(
        a[TRUSTED_ROOTS_ANNOTATION],
        format!("{first_root},{}", other.info.sha256_thumbprint)
    );
    assert_eq!(
        a[PREVIOUS_FINGERPRINT_ANNOTATION],
        before[FINGERPRINT_ANNOTATION]
    );
    assert_eq!(a[PREVIOUS_TRUSTED_ROOTS_ANNOTATION], first_root);
    assert_eq!(a[PREVIOUS_EDGE_CA_ANNOTATION], before[EDGE_CA_ANNOTATION]);
    assert_ne!(a[FINGERPRINT_ANNOTATION], before[FINGERPRINT_ANNOTATION]);

    // The device acknowledged the first revision and not the second; a third revision keeps
    // remembering the first, the one it runs.
    let mut existing = written(&second);
    let first_fingerprint = before[FINGERPRINT_ANNOTATION].clone();
    for secret in existing.values_mut() {
        secret.metadata.annotations.as_mut().unwrap().insert(
            crate::names::INSTALLED_ANNOTATION.to_string(),
            first_fingerprint.clone(),
        );
    }
    w.certs.trust_bundle.pop();
    w.certs.trust_thumbprints.pop();
    let third = plan_bundles(&input(&w, &nothing_new, &existing), &BTreeMap::new());
    let a = &third.writes[0].1.annotations;
    assert_eq!(a[PREVIOUS_FINGERPRINT_ANNOTATION], first_fingerprint);
    assert_eq!(a[PREVIOUS_TRUSTED_ROOTS_ANNOTATION], first_root);
}

#[test]
fn a_key_changed_in_the_hub_is_read_again_and_rewrites_the_bundle() {
    let mut w = world();
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let existing = written(&plan_bundles(&input(&w, &created, &none), &BTreeMap::new()));
    assert_eq!(
        existing["top-layer"]
            .annotations()
            .get(DEVICE_ETAG_ANNOTATION),
        Some(&"\"e\"".to_string())
    );
    // Someone regenerated the key in the portal: the device's etag moved.
    w.registered.get_mut("top-layer").unwrap().device_etag = Some("\"e2\"".into());
    let nothing_new = BTreeMap::new();
    let again = input(&w, &nothing_new, &existing);
    assert_eq!(keys_to_read(&again), ["top-layer"]);
    let read = BTreeMap::from([("top-layer".to_string(), "portal-key".to_string())]);
    let plan = plan_bundles(&again, &read);
    assert_eq!(plan.key_changed, ["top-layer"]);
    assert_eq!(plan.writes.len(), 1);
    assert!(plan.annotations_only.is_empty());
    assert_eq!(plan.status["top-layer"].revision, 2);
    let config = config_of(&plan, "top-layer");
    assert_eq!(
        config["provisioning"]["connection_string"].as_str(),
        Some("HostName=hub.azure-devices.net;DeviceId=top-layer;SharedAccessKey=portal-key")
    );
    assert_eq!(
        plan.writes[0].1.annotations[DEVICE_ETAG_ANNOTATION],
        "\"e2\""
    );
    assert!(!format!("{plan:?}").contains("portal-key"));

    // The etag moved for another reason (the key is the same): the etag is recorded, the
    // bundle and its revision stay, and no change is announced.
    let read = BTreeMap::from([("top-layer".to_string(), "top-layer-primary".to_string())]);
    let plan = plan_bundles(&again, &read);
    assert!(plan.key_changed.is_empty());
    assert_eq!(plan.writes.len(), 1);
    assert!(plan.annotations_only.contains("top-layer"));
    assert_eq!(plan.status["top-layer"].revision, 1);
    // Once recorded, a resync reads nothing.
    let recorded = written(&plan);
    let mut existing = existing;
    existing.extend(recorded);
    assert!(keys_to_read(&input(&w, &nothing_new, &existing)).is_empty());
}

#[test]
fn a_bundle_from_before_etags_were_recorded_is_trusted_and_gets_one() {
    let w = world();
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let mut existing = written(&plan_bundles(&input(&w, &created, &none), &BTreeMap::new()));
    for secret in existing.values_mut() {
        secret
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(DEVICE_ETAG_ANNOTATION);
    }
    let nothing_new = BTreeMap::new();
    let again = input(&w, &nothing_new, &existing);
    assert!(keys_to_read(&again).is_empty());
    let plan = plan_bundles(&again, &BTreeMap::new());
    assert_eq!(plan.writes.len(), 2);
    assert_eq!(plan.annotations_only.len(), 2);
    assert_eq!(plan.status["top-layer"].revision, 1);
}

/// The tutorial in X509 mode, each device registered with its identity's thumbprint.
fn x509_world() -> World {
    let mut w = world();
    w.spec.authentication = AuthenticationType::X509;
    for (id, certs) in w.certs.devices.iter_mut() {
        let identity = crate::reconcile::fixtures::identity(&w.certs.root, id, 90, now());
        let hub = w.registered.get_mut(id).unwrap();
        hub.auth = crate::iothub::AuthenticationType::SelfSigned;
        hub.thumbprints = (Some(identity.sha256_thumbprint.to_lowercase()), None);
        certs.identity = Some(identity);
        certs.sas_keys = None;
    }
    w
}

#[test]
fn under_observe_a_renewed_identity_the_hub_lacks_never_reaches_a_bundle() {
    let mut w = x509_world();
    w.spec.policy.reconcile = ReconcilePolicy::Observe;
    let nothing_new = BTreeMap::new();
    let none = BTreeMap::new();
    let first = plan_bundles(&input(&w, &nothing_new, &none), &BTreeMap::new());
    assert_eq!(first.writes.len(), 2, "{:?}", first.failures);
    let existing = written(&first);

    // The certificate step renewed the lower layer's identity; under Observe the hub keeps the
    // old thumbprint, so the bundle must keep the old identity too.
    let renewed = crate::reconcile::fixtures::identity(&w.certs.root, "lower-layer", 90, now());
    w.certs.devices.get_mut("lower-layer").unwrap().identity = Some(renewed);
    let plan = plan_bundles(&input(&w, &nothing_new, &existing), &BTreeMap::new());
    assert!(plan.writes.is_empty(), "{:?}", plan.writes);
    assert_eq!(plan.status["lower-layer"].revision, 1);
    let why = &plan.failures["lower-layer"];
    assert!(why.contains("bundle kept at revision 1"), "{why}");
    assert!(why.contains("Observe"), "{why}");
    assert!(plan.withheld.contains("lower-layer"));

    // Under Manage the same state is a moment before the device step registers the new
    // thumbprint: reported, retried, not withheld.
    w.spec.policy.reconcile = ReconcilePolicy::Manage;
    let plan = plan_bundles(&input(&w, &nothing_new, &existing), &BTreeMap::new());
    assert!(plan.writes.is_empty());
    assert!(plan.failures.contains_key("lower-layer"));
    assert!(plan.withheld.is_empty());
    // Once the hub has the thumbprint (in the free slot), the bundle follows.
    let thumbprint = w.certs.devices["lower-layer"]
        .identity
        .as_ref()
        .unwrap()
        .sha256_thumbprint
        .clone();
    w.registered.get_mut("lower-layer").unwrap().thumbprints.1 = Some(thumbprint);
    let plan = plan_bundles(&input(&w, &nothing_new, &existing), &BTreeMap::new());
    assert_eq!(plan.writes.len(), 1);
    assert_eq!(plan.status["lower-layer"].revision, 2);
}

#[test]
fn a_sas_bundle_is_never_written_for_a_device_the_hub_authenticates_otherwise() {
    let mut w = world();
    w.spec.policy.reconcile = ReconcilePolicy::Observe;
    w.registered.get_mut("top-layer").unwrap().auth = crate::iothub::AuthenticationType::SelfSigned;
    let nothing_new = BTreeMap::new();
    let none = BTreeMap::new();
    let read = BTreeMap::from([
        ("top-layer".to_string(), "k1".to_string()),
        ("lower-layer".to_string(), "k2".to_string()),
    ]);
    let plan = plan_bundles(&input(&w, &nothing_new, &none), &read);
    assert_eq!(plan.writes.len(), 1);
    assert!(!plan.status.contains_key("top-layer"));
    assert!(plan.failures["top-layer"].contains("SelfSigned"));
    assert!(plan.withheld.contains("top-layer"));
}

/// [`world`] with a registered Leaf device `sensor` below `lower-layer`.
fn world_with_leaf() -> World {
    let mut w = world();
    let leaf: DeviceSpec =
        serde_yaml::from_str("{id: sensor, parent: lower-layer, type: Leaf}").unwrap();
    w.spec.devices.push(leaf);
    w.registered
        .insert("sensor".into(), hub_device("sensor", "scope-lower-layer"));
    w
}

#[test]
fn a_leaf_behind_a_parent_gets_a_gateway_connection_string_and_the_root() {
    let mut w = world_with_leaf();
    for device in &mut w.spec.devices {
        if device.id == "lower-layer" {
            device.hostname = Some("lower.factory".into());
        }
    }
    let created = created_keys(&w);
    let none = BTreeMap::new();
    let first = input(&w, &created, &none);
    // The leaf was there before (the hub chose its keys): they are read once.
    assert_eq!(keys_to_read(&first), ["sensor"]);
    let read = BTreeMap::from([("sensor".to_string(), "bGVhZg==".to_string())]);
    let plan = plan_bundles(&first, &read);
    let (_, write) = plan.writes.iter().find(|(id, _)| id == "sensor").unwrap();
    let connection = String::from_utf8_lossy(&write.data["connection-string.txt"]).to_string();
    assert_eq!(
        connection.trim_end(),
        "HostName=hub.azure-devices.net;DeviceId=sensor;SharedAccessKey=bGVhZg==;GatewayHostName=lower.factory"
    );
    assert_eq!(
        String::from_utf8_lossy(&write.data["iotedge_config_cli_root.pem"]),
        w.certs.root.cert_pem.trim_end().to_string() + "\n"
    );
    assert!(!write.data.contains_key("config.toml"));
    assert_eq!(plan.status["sensor"].revision, 1);
    // Next time the key comes from the bundle: no read, no rewrite.
    let existing = written(&plan);
    let nothing_new = BTreeMap::new();
    let again = input(&w, &nothing_new, &existing);
    assert!(keys_to_read(&again).is_empty());
    assert!(plan_bundles(&again, &BTreeMap::new()).writes.is_empty());
}

#[test]
fn a_leaf_this_reconcile_created_carries_the_operators_keys_without_a_read() {
    let mut w = world_with_leaf();
    w.layers.insert("sensor".into(), 3);
    let mut created = created_keys(&w);
    created.insert("sensor".into(), keys("sensor"));
    let none = BTreeMap::new();
    let first = input(&w, &created, &none);
    assert!(keys_to_read(&first).is_empty());
    let plan = plan_bundles(&first, &BTreeMap::new());
    let (_, write) = plan.writes.iter().find(|(id, _)| id == "sensor").unwrap();
    let connection = String::from_utf8_lossy(&write.data["connection-string.txt"]).to_string();
    assert!(
        connection.contains(";SharedAccessKey=sensor-primary;"),
        "{connection}"
    );
    assert!(plan.key_changed.is_empty());
}

#[test]
fn a_leaf_key_changed_in_the_hub_is_read_again_and_announced() {
    let mut w = world_with_leaf();
    let mut created = created_keys(&w);
    created.insert("sensor".into(), keys("sensor"));
    let none = BTreeMap::new();
    let existing = written(&plan_bundles(&input(&w, &created, &none), &BTreeMap::new()));
    // Read back from what the Secret cache keeps, the leaf's key needs no hub read.
    let nothing_new = BTreeMap::new();
    assert!(keys_to_read(&input(&w, &nothing_new, &existing)).is_empty());

    w.registered.get_mut("sensor").unwrap().device_etag = Some("\"e2\"".into());
    let again = input(&w, &nothing_new, &existing);
    assert_eq!(keys_to_read(&again), ["sensor"]);
    let read = BTreeMap::from([("sensor".to_string(), "cG9ydGFs".to_string())]);
    let plan = plan_bundles(&again, &read);
    assert_eq!(plan.key_changed, ["sensor"]);
    assert_eq!(plan.status["sensor"].revision, 2);
    let (_, write) = plan.writes.iter().find(|(id, _)| id == "sensor").unwrap();
    let connection = String::from_utf8_lossy(&write.data["connection-string.txt"]).to_string();
    assert!(
        connection.contains(";SharedAccessKey=cG9ydGFs;"),
        "{connection}"
    );
}
