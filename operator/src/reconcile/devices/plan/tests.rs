//! Fixtures: a desired tree and a hub state built by hand, fed through `plan`, and the resulting
//! actions and reports checked. Each test names the rule (docs/architecture.md, "Devices") it covers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::*;
use crate::api::{DeletionPolicy, DeviceType, PolicySpec};
use crate::iothub::AuthenticationType as HubAuthKind;
use crate::ownership::{HierarchyIdentity, ProofKey};
use crate::reconcile::devices::model::{DesiredAuth, DesiredDevice, HubDevice};

fn identity() -> HierarchyIdentity {
    HierarchyIdentity::new("iot", "tutorial", "uid-1")
        .with_key(Some(ProofKey::new(b"fixture ownership key")))
}

/// The tags the operator writes on device `id`, with its proof.
fn tags(id: &str, layer: u32) -> Value {
    json!({"namespace": "iot", "name": "tutorial", "uid": "uid-1", "layer": layer,
        "proof": identity().proof(id)})
}

fn want(id: &str, parent: Option<&str>, layer: u32, device_type: DeviceType) -> DesiredDevice {
    DesiredDevice {
        id: id.into(),
        parent: parent.map(Into::into),
        layer,
        device_type,
        auth: DesiredAuth::SymmetricKey { keys: None },
        owner_tags: tags(id, layer),
    }
}

/// top (Edge) -> lower (Edge) -> sensor (Leaf)
fn tree() -> Vec<DesiredDevice> {
    vec![
        want("top", None, 1, DeviceType::Edge),
        want("lower", Some("top"), 2, DeviceType::Edge),
        want("sensor", Some("lower"), 3, DeviceType::Leaf),
    ]
}

fn scope(id: &str) -> String {
    format!("ms-azure-iot-edge://{id}-6380000000000000")
}

/// A hub device exactly as the operator would have created it.
fn have(d: &DesiredDevice, parent: Option<&str>) -> HubDevice {
    let edge = d.device_type == DeviceType::Edge;
    HubDevice {
        id: d.id.clone(),
        device_etag: Some(format!("\"dev-{}\"", d.id)),
        twin_etag: Some(format!("\"twin-{}\"", d.id)),
        enabled: true,
        iot_edge: edge,
        auth: HubAuthKind::Sas,
        thumbprints: (None, None),
        device_scope: if edge {
            Some(scope(&d.id))
        } else {
            parent.map(scope)
        },
        parent_scopes: parent.map(scope).into_iter().collect(),
        owner_tags: Some(d.owner_tags.clone()),
    }
}

fn converged_hub(desired: &[DesiredDevice]) -> BTreeMap<String, HubDevice> {
    desired
        .iter()
        .map(|d| (d.id.clone(), have(d, d.parent.as_deref())))
        .collect()
}

struct Case {
    policy: PolicySpec,
    desired: Vec<DesiredDevice>,
    observed: BTreeMap<String, HubDevice>,
    previously: BTreeSet<String>,
}

impl Case {
    fn new(desired: Vec<DesiredDevice>, observed: BTreeMap<String, HubDevice>) -> Self {
        Self {
            policy: PolicySpec::default(),
            desired,
            observed,
            previously: BTreeSet::new(),
        }
    }
    fn observe_only(mut self) -> Self {
        self.policy.reconcile = ReconcilePolicy::Observe;
        self
    }
    fn plan(&self) -> Plan {
        plan(&PlanInput {
            identity: &identity(),
            policy: &self.policy,
            desired: &self.desired,
            observed: &self.observed,
            previously_registered: &self.previously,
        })
    }
}

fn only_action(p: &Plan) -> &Action {
    assert_eq!(p.actions.len(), 1, "{:#?}", p.actions);
    &p.actions[0]
}

#[test]
fn empty_hub_creates_the_top_layer_first_with_tags() {
    let p = Case::new(tree(), BTreeMap::new()).plan();
    let Action::Create(devices) = only_action(&p) else {
        panic!("{p:#?}")
    };
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].id, "top");
    assert!(devices[0].iot_edge);
    assert_eq!(devices[0].parent_scope, None);
    assert_eq!(devices[0].auth, NewAuth::Sas { keys: None });
    assert_eq!(devices[0].owner_tags, tags("top", 1));
    assert_eq!(p.devices["lower"].state, DeviceState::Pending);
    assert_eq!(
        p.devices["lower"].message.as_deref(),
        Some("waiting for parent \"top\" to be registered")
    );
    assert!(p.devices.values().all(|r| r.drift.is_empty()));
}

#[test]
fn each_round_creates_the_next_layer_with_the_parent_scope() {
    let desired = tree();
    let mut hub = BTreeMap::new();
    hub.insert("top".to_string(), have(&desired[0], None));
    let p = Case::new(desired.clone(), hub.clone()).plan();
    let Action::Create(devices) = only_action(&p) else {
        panic!("{p:#?}")
    };
    assert_eq!(
        devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["lower"]
    );
    assert_eq!(devices[0].parent_scope, Some(scope("top")));
    assert!(devices[0].iot_edge);

    hub.insert("lower".to_string(), have(&desired[1], Some("top")));
    let p = Case::new(desired.clone(), hub.clone()).plan();
    let Action::Create(devices) = only_action(&p) else {
        panic!("{p:#?}")
    };
    // A Leaf takes its parent's scope as its own deviceScope (the create call sets it).
    assert_eq!(devices[0].id, "sensor");
    assert!(!devices[0].iot_edge);
    assert_eq!(devices[0].parent_scope, Some(scope("lower")));
}

#[test]
fn a_whole_layer_is_created_in_one_action() {
    let mut desired = vec![want("top", None, 1, DeviceType::Edge)];
    for i in 0..150 {
        desired.push(want(
            &format!("child-{i:03}"),
            Some("top"),
            2,
            DeviceType::Edge,
        ));
    }
    let mut hub = BTreeMap::new();
    hub.insert("top".to_string(), have(&desired[0], None));
    let p = Case::new(desired, hub).plan();
    let Action::Create(devices) = only_action(&p) else {
        panic!()
    };
    assert_eq!(devices.len(), 150, "apply splits it into calls of 100");
}

#[test]
fn converged_hub_needs_no_writes() {
    let desired = tree();
    let p = Case::new(desired.clone(), converged_hub(&desired)).plan();
    assert!(p.is_converged(), "{:#?}", p.actions);
    for (id, r) in &p.devices {
        assert_eq!(r.state, DeviceState::Ready, "{id}");
        assert!(r.registered && r.parented, "{id}");
        assert!(r.drift.is_empty(), "{id}");
    }
    assert_eq!(p.devices["lower"].device_scope, Some(scope("lower")));
}

fn drifted(mutate: impl Fn(&mut HubDevice), id: &str) -> (Plan, Plan) {
    let desired = tree();
    let mut hub = converged_hub(&desired);
    mutate(hub.get_mut(id).unwrap());
    let manage = Case::new(desired.clone(), hub.clone()).plan();
    let observe = Case::new(desired, hub).observe_only().plan();
    (manage, observe)
}

fn assert_observe_reports_only(p: &Plan, id: &str, needle: &str) {
    assert!(p.is_converged(), "Observe must not write: {:#?}", p.actions);
    assert_eq!(p.devices[id].state, DeviceState::Drifted);
    assert!(
        p.devices[id]
            .drift
            .iter()
            .any(|d| d.contains(needle) && d.contains("not corrected")),
        "{:?}",
        p.devices[id].drift
    );
}

#[test]
fn removed_parent_link_is_restored() {
    let (manage, observe) = drifted(|d| d.parent_scopes.clear(), "lower");
    let Action::FixIdentity { id, etag, fix } = only_action(&manage) else {
        panic!("{manage:#?}")
    };
    assert_eq!(id, "lower");
    assert_eq!(etag.as_deref(), Some("\"dev-lower\""));
    assert_eq!(
        fix,
        &IdentityFix {
            parent_scopes: Some(vec![scope("top")]),
            ..Default::default()
        }
    );
    assert_eq!(manage.devices["lower"].state, DeviceState::Pending);
    assert!(
        manage.devices["lower"].drift[0].contains("parent link")
            && manage.devices["lower"].drift[0].ends_with("corrected")
    );
    assert!(!manage.devices["lower"].parented);
    assert_observe_reports_only(&observe, "lower", "parent link");
}

#[test]
fn leaf_parent_link_is_its_device_scope() {
    let (manage, observe) = drifted(|d| d.device_scope = None, "sensor");
    let Action::FixIdentity { fix, .. } = only_action(&manage) else {
        panic!("{manage:#?}")
    };
    assert_eq!(
        fix,
        &IdentityFix {
            device_scope: Some(scope("lower")),
            ..Default::default()
        }
    );
    assert_observe_reports_only(&observe, "sensor", "parent link");
}

#[test]
fn edge_capability_switched_off_is_switched_on() {
    let (manage, observe) = drifted(|d| d.iot_edge = false, "top");
    let Action::FixIdentity { fix, .. } = only_action(&manage) else {
        panic!()
    };
    assert_eq!(
        fix,
        &IdentityFix {
            iot_edge: Some(true),
            ..Default::default()
        }
    );
    assert!(manage.devices["top"].drift[0].contains("edge capability is off"));
    assert_observe_reports_only(&observe, "top", "edge capability");
}

#[test]
fn disabled_device_is_enabled() {
    let (manage, observe) = drifted(|d| d.enabled = false, "lower");
    let Action::FixIdentity { fix, .. } = only_action(&manage) else {
        panic!()
    };
    assert_eq!(
        fix,
        &IdentityFix {
            enable: true,
            ..Default::default()
        }
    );
    assert_observe_reports_only(&observe, "lower", "disabled");
}

#[test]
fn changed_auth_type_is_reset() {
    let (manage, observe) = drifted(|d| d.auth = HubAuthKind::CertificateAuthority, "top");
    let Action::FixIdentity { fix, .. } = only_action(&manage) else {
        panic!()
    };
    assert_eq!(fix.auth, Some(NewAuth::Sas { keys: None }));
    assert_observe_reports_only(&observe, "top", "authentication");
}

#[test]
fn changed_tags_are_rewritten_with_a_minimal_patch() {
    let (manage, observe) = drifted(
        |d| {
            let tags = d.owner_tags.as_mut().unwrap();
            tags["layer"] = json!(7);
            tags["extra"] = json!("x");
        },
        "lower",
    );
    let Action::WriteOwnerTags {
        id,
        twin_etag,
        patch,
    } = only_action(&manage)
    else {
        panic!("{manage:#?}")
    };
    assert_eq!(id, "lower");
    assert_eq!(twin_etag.as_deref(), Some("\"twin-lower\""));
    assert_eq!(patch, &json!({"layer": 2, "extra": null}));
    assert_observe_reports_only(&observe, "lower", "ownership tags");
}

#[test]
fn several_drifts_on_one_device_make_one_identity_fix() {
    let (manage, _) = drifted(
        |d| {
            d.enabled = false;
            d.iot_edge = false;
            d.parent_scopes = vec![scope("elsewhere")];
        },
        "lower",
    );
    let Action::FixIdentity { fix, .. } = only_action(&manage) else {
        panic!("{manage:#?}")
    };
    assert_eq!(
        fix,
        &IdentityFix {
            iot_edge: Some(true),
            enable: true,
            parent_scopes: Some(vec![scope("top")]),
            ..Default::default()
        }
    );
    assert_eq!(manage.devices["lower"].drift.len(), 3);
}

#[test]
fn device_deleted_out_of_band_is_recreated_and_reported() {
    let desired = tree();
    let mut hub = converged_hub(&desired);
    hub.remove("lower");
    let mut case = Case::new(desired, hub);
    case.previously.insert("lower".into());
    let p = case.plan();
    let Action::Create(devices) = only_action(&p) else {
        panic!("{p:#?}")
    };
    assert_eq!(devices[0].id, "lower");
    assert_eq!(devices[0].parent_scope, Some(scope("top")));
    assert!(
        p.devices["lower"].drift[0]
            .contains("deleted from the hub outside the operator; re-created")
    );
    // Its child keeps its stale link until the parent is back, then gets re-linked.
    assert_eq!(p.devices["sensor"].state, DeviceState::Pending);

    let p = case.observe_only().plan();
    assert!(p.is_converged());
    assert_eq!(p.devices["lower"].state, DeviceState::Drifted);
    assert!(p.devices["lower"].drift[0].contains("not re-created"));
}

#[test]
fn parent_recreated_out_of_band_gets_its_children_relinked() {
    let desired = tree();
    let mut hub = converged_hub(&desired);
    // Someone deleted `lower` and made it again by hand: new generation, no tags.
    let lower = hub.get_mut("lower").unwrap();
    lower.device_scope = Some("ms-azure-iot-edge://lower-6399999999999999".into());
    lower.owner_tags = None;
    let mut case = Case::new(desired, hub);
    case.previously.insert("lower".into());
    let p = case.plan();
    assert_eq!(p.actions.len(), 2, "{:#?}", p.actions);
    let Action::FixIdentity { id, fix, .. } = &p.actions[0] else {
        panic!("{p:#?}")
    };
    assert_eq!(id, "sensor");
    assert_eq!(
        fix.device_scope.as_deref(),
        Some("ms-azure-iot-edge://lower-6399999999999999")
    );
    let Action::WriteOwnerTags { id, patch, .. } = &p.actions[1] else {
        panic!("{p:#?}")
    };
    assert_eq!(id, "lower");
    assert_eq!(patch, &tags("lower", 2));
    assert!(p.devices["lower"].drift[0].contains("taken back"));
}

#[test]
fn unowned_device_is_a_conflict_and_untouched() {
    let desired = tree();
    let mut hub = converged_hub(&desired);
    hub.get_mut("top").unwrap().owner_tags = None;
    hub.get_mut("top").unwrap().enabled = false;
    let p = Case::new(desired, hub).plan();
    assert!(
        p.actions.iter().all(|a| !a.device_ids().contains(&"top")),
        "{:#?}",
        p.actions
    );
    assert_eq!(p.devices["top"].state, DeviceState::Conflict);
    assert_eq!(p.conflicts.len(), 1);
    assert!(
        p.conflicts[0].contains("adoptExisting"),
        "{}",
        p.conflicts[0]
    );
    // Its children cannot be linked to a device that is not ours.
    assert_eq!(
        p.devices["lower"].message.as_deref(),
        Some("waiting for parent \"top\" to be registered")
    );
}

#[test]
fn unowned_device_is_adopted_when_the_policy_says_so() {
    let desired = tree();
    let mut hub = converged_hub(&desired);
    let top = hub.get_mut("top").unwrap();
    top.owner_tags = Some(json!({"site": "berlin"}));
    top.enabled = false;
    let mut case = Case::new(desired, hub);
    case.policy.adopt_existing = true;
    let p = case.plan();
    assert_eq!(p.actions.len(), 2, "{:#?}", p.actions);
    assert!(
        matches!(&p.actions[0], Action::FixIdentity { id, fix, .. } if id == "top" && fix.enable)
    );
    let Action::WriteOwnerTags { patch, .. } = &p.actions[1] else {
        panic!()
    };
    // The foreign tag is replaced by ours (the tags object is the operator's to own).
    let mut expected = tags("top", 1);
    expected["site"] = Value::Null;
    assert_eq!(patch, &expected);
    assert!(p.devices["top"].drift.iter().any(|d| d.contains("adopted")));
    assert!(p.conflicts.is_empty());
}

#[test]
fn another_hierarchys_device_is_a_conflict_even_with_adoption() {
    let desired = tree();
    let mut hub = converged_hub(&desired);
    hub.get_mut("lower").unwrap().owner_tags =
        Some(json!({"namespace": "plant2", "name": "other", "uid": "uid-2", "layer": 1}));
    let mut case = Case::new(desired, hub);
    case.policy.adopt_existing = true;
    let p = case.plan();
    assert!(p.is_converged(), "{:#?}", p.actions);
    assert_eq!(p.devices["lower"].state, DeviceState::Conflict);
    assert!(
        p.conflicts[0].contains("plant2/other"),
        "{}",
        p.conflicts[0]
    );
}

#[test]
fn removed_devices_are_deleted_children_first() {
    let desired = tree();
    let hub = converged_hub(&desired);
    let p = Case::new(desired[..1].to_vec(), hub).plan();
    let Action::Delete(ids) = only_action(&p) else {
        panic!("{p:#?}")
    };
    assert_eq!(
        ids,
        &vec![
            ("sensor".to_string(), Some("\"dev-sensor\"".to_string())),
            ("lower".to_string(), Some("\"dev-lower\"".to_string()))
        ]
    );
    assert_eq!(p.devices["lower"].state, DeviceState::Deleting);
}

#[test]
fn removed_devices_stay_under_detach_and_observe() {
    let desired = tree();
    let hub = converged_hub(&desired);
    let mut detach = Case::new(desired[..1].to_vec(), hub.clone());
    detach.policy.deletion = DeletionPolicy::Detach;
    let p = detach.plan();
    assert!(p.is_converged());
    assert!(!p.devices.contains_key("lower"));
    let p = Case::new(desired[..1].to_vec(), hub).observe_only().plan();
    assert!(p.is_converged());
}

#[test]
fn deleting_the_hierarchy_deletes_every_owned_device_and_nothing_else() {
    let desired = tree();
    let mut hub = converged_hub(&desired);
    let mut foreign = have(&want("foreign", None, 1, DeviceType::Edge), None);
    foreign.owner_tags = None;
    hub.insert("foreign".into(), foreign);
    let p = Case::new(Vec::new(), hub).plan();
    let Action::Delete(ids) = only_action(&p) else {
        panic!()
    };
    let ids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["sensor", "lower", "top"]);
}

#[test]
fn reparenting_moves_the_link_and_deletes_the_old_parent_after() {
    let mut desired = tree();
    let hub = converged_hub(&desired);
    // `sensor` moves up to `top`; `lower` leaves the spec.
    desired.remove(1);
    desired[1].parent = Some("top".into());
    desired[1].layer = 2;
    desired[1].owner_tags = tags("sensor", 2);
    let p = Case::new(desired, hub).plan();
    assert_eq!(p.actions.len(), 3, "{:#?}", p.actions);
    assert!(
        matches!(&p.actions[0], Action::FixIdentity { id, fix, .. } if id == "sensor" && fix.device_scope == Some(scope("top")))
    );
    assert!(matches!(&p.actions[1], Action::WriteOwnerTags { id, .. } if id == "sensor"));
    assert!(matches!(&p.actions[2], Action::Delete(ids) if ids.len() == 1 && ids[0].0 == "lower"));
}

#[test]
fn top_device_given_a_parent_out_of_band_loses_it() {
    let (manage, _) = drifted(|d| d.parent_scopes = vec![scope("rogue")], "top");
    let Action::FixIdentity { fix, .. } = only_action(&manage) else {
        panic!()
    };
    assert_eq!(fix.parent_scopes, Some(vec![]));
}

#[test]
fn leaf_moved_to_the_top_has_its_device_scope_emptied() {
    let mut desired = tree();
    desired[2] = want("sensor", None, 1, DeviceType::Leaf);
    let mut hub = converged_hub(&desired);
    // Still linked to its old parent in the hub.
    hub.insert("sensor".into(), have(&desired[2], Some("lower")));
    let manage = Case::new(desired.clone(), hub.clone()).plan();
    let Action::FixIdentity { id, fix, .. } = only_action(&manage) else {
        panic!("{manage:#?}")
    };
    assert_eq!(id, "sensor");
    assert_eq!(fix.device_scope.as_deref(), Some(""));
    assert_eq!(fix.parent_scopes, None);
    let observe = Case::new(desired, hub).observe_only().plan();
    assert_observe_reports_only(&observe, "sensor", "top-layer device");
}

#[test]
fn x509_devices_wait_for_certificates_then_register_thumbprints() {
    let mut desired = tree();
    desired[0].auth = DesiredAuth::X509 { thumbprints: None };
    let p = Case::new(desired.clone(), BTreeMap::new()).plan();
    assert!(p.is_converged());
    assert_eq!(
        p.devices["top"].message.as_deref(),
        Some("waiting for its identity certificate")
    );

    desired[0].auth = DesiredAuth::X509 {
        thumbprints: Some(("AA".into(), None)),
    };
    let p = Case::new(desired.clone(), BTreeMap::new()).plan();
    let Action::Create(devices) = only_action(&p) else {
        panic!()
    };
    assert_eq!(
        devices[0].auth,
        NewAuth::SelfSigned {
            primary: "AA".into(),
            secondary: None
        }
    );

    // Rotation: the new thumbprint in the free slot is drift to correct.
    let mut hub = converged_hub(&desired);
    let top = hub.get_mut("top").unwrap();
    top.auth = HubAuthKind::SelfSigned;
    top.thumbprints = (Some("AA".into()), None);
    desired[0].auth = DesiredAuth::X509 {
        thumbprints: Some(("AA".into(), Some("BB".into()))),
    };
    let p = Case::new(desired, hub).plan();
    let Action::FixIdentity { fix, .. } = only_action(&p) else {
        panic!("{p:#?}")
    };
    assert_eq!(
        fix.auth,
        Some(NewAuth::SelfSigned {
            primary: "AA".into(),
            secondary: Some("BB".into())
        })
    );
}

#[test]
fn from_twin_reads_the_fields_plan_uses() {
    let twin = json!({
        "deviceId": "lower", "etag": "AAAA", "deviceEtag": "BBBB", "status": "disabled",
        "authenticationType": "selfSigned",
        "x509Thumbprint": {"primaryThumbprint": "P", "secondaryThumbprint": null},
        "capabilities": {"iotEdge": true},
        "deviceScope": scope("lower"), "parentScopes": [scope("top")],
        "tags": {"edgeHierarchy": tags("lower", 2), "other": 1}
    });
    let twin: crate::iothub::Twin = serde_json::from_value(twin).unwrap();
    let d = HubDevice::from_twin(&twin).unwrap();
    assert_eq!(d.id, "lower");
    assert_eq!(d.twin_etag.as_deref(), Some("AAAA"));
    assert_eq!(d.device_etag.as_deref(), Some("BBBB"));
    assert!(!d.enabled && d.iot_edge);
    assert_eq!(d.auth, HubAuthKind::SelfSigned);
    assert_eq!(d.thumbprints, (Some("P".into()), None));
    assert_eq!(d.parent_scopes, [scope("top")]);
    assert_eq!(d.owner_tags, Some(tags("lower", 2)));
    assert_eq!(d.tagged_layer(), 2);
    let no_id: crate::iothub::Twin = serde_json::from_value(json!({"etag": "x"})).unwrap();
    assert!(HubDevice::from_twin(&no_id).is_none());
}

/// Tags naming this hierarchy as anyone with ServiceConnect could write them: without a proof.
fn forged_tags(layer: u32) -> Value {
    json!({"namespace": "iot", "name": "tutorial", "uid": "uid-1", "layer": layer})
}

#[test]
fn a_device_with_forged_tags_outside_the_spec_is_a_conflict_never_a_delete() {
    let desired = tree();
    let mut hub = converged_hub(&desired);
    let mut forged = have(&want("planted", None, 1, DeviceType::Edge), None);
    forged.owner_tags = Some(forged_tags(1));
    hub.insert("planted".into(), forged.clone());
    let p = Case::new(desired, hub.clone()).plan();
    assert!(p.is_converged(), "{:#?}", p.actions);
    assert_eq!(p.conflicts.len(), 1, "{:#?}", p.conflicts);
    assert!(p.conflicts[0].contains("\"planted\"") && p.conflicts[0].contains("never deleted"));
    // A wrong proof is no better than none, and deleting the hierarchy leaves it too.
    let mut wrong = forged;
    wrong.owner_tags.as_mut().unwrap()["proof"] = json!("0123456789abcdef0123456789abcdef");
    hub.insert("planted".into(), wrong);
    let p = Case::new(Vec::new(), hub).plan();
    let Action::Delete(ids) = only_action(&p) else {
        panic!("{p:#?}")
    };
    let ids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["sensor", "lower", "top"]);
    assert_eq!(p.conflicts.len(), 1);
}

#[test]
fn a_spec_device_with_forged_tags_is_a_conflict_and_not_written() {
    let desired = tree();
    let mut hub = converged_hub(&desired);
    let top = hub.get_mut("top").unwrap();
    top.owner_tags = Some(forged_tags(1));
    top.enabled = false;
    let p = Case::new(desired, hub).plan();
    assert_eq!(p.devices["top"].state, DeviceState::Conflict);
    assert!(
        p.actions.iter().all(|a| !a.device_ids().contains(&"top")),
        "{:#?}",
        p.actions
    );
    // Its children wait: a parent that is not ours cannot parent them.
    assert!(
        p.devices["lower"]
            .message
            .as_deref()
            .unwrap()
            .contains("waiting for parent")
    );
}

#[test]
fn tags_without_proof_on_a_device_the_status_records_get_the_proof() {
    // Written by an operator version from before proofs: the status says the device is ours.
    let desired = tree();
    let mut hub = converged_hub(&desired);
    hub.get_mut("lower").unwrap().owner_tags = Some(forged_tags(2));
    let mut case = Case::new(desired, hub.clone());
    case.previously = ["lower".to_string()].into();
    let p = case.plan();
    let Action::WriteOwnerTags { id, patch, .. } = only_action(&p) else {
        panic!("{p:#?}")
    };
    assert_eq!(id, "lower");
    assert_eq!(patch, &json!({"proof": identity().proof("lower")}));
    assert!(p.devices["lower"].drift[0].contains("in this hierarchy's records"));
    // Removed from the spec, such a device is deleted on the strength of the records.
    let mut case = Case::new(Vec::new(), hub);
    case.previously = ["lower".to_string()].into();
    let p = case.plan();
    let Action::Delete(ids) = only_action(&p) else {
        panic!("{p:#?}")
    };
    assert!(ids.iter().any(|(id, _)| id == "lower"));
}

#[test]
fn devices_of_an_earlier_hierarchy_of_the_same_name_are_taken_back_by_their_proof() {
    // Deleted with deletion: Detach and created again: a new uid, the same namespace and name.
    let earlier =
        HierarchyIdentity::new("iot", "tutorial", "uid-0").with_key(identity().key.clone());
    let earlier_tags = |id: &str, layer: u32| {
        json!({"namespace": "iot", "name": "tutorial", "uid": "uid-0", "layer": layer,
            "proof": earlier.proof(id)})
    };
    let desired = tree();
    let mut hub = converged_hub(&desired);
    for (id, layer) in [("top", 1), ("lower", 2), ("sensor", 3)] {
        hub.get_mut(id).unwrap().owner_tags = Some(earlier_tags(id, layer));
    }
    let p = Case::new(desired.clone(), hub.clone()).plan();
    assert!(p.conflicts.is_empty(), "{:#?}", p.conflicts);
    let written: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::WriteOwnerTags { id, patch, .. } => {
                assert_eq!(patch["uid"], "uid-1");
                assert_eq!(patch["proof"], json!(identity().proof(id)));
                Some(id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(written, ["top", "lower", "sensor"]);
    assert!(p.devices["top"].drift[0].contains("earlier hierarchy iot/tutorial (uid uid-0)"));
    // Without a valid proof the earlier uid is only a claim: a conflict.
    hub.get_mut("top").unwrap().owner_tags.as_mut().unwrap()["proof"] = json!("forged");
    let p = Case::new(desired, hub).plan();
    assert_eq!(p.devices["top"].state, DeviceState::Conflict);
    assert!(
        p.devices["top"]
            .message
            .as_deref()
            .unwrap()
            .contains("proof does not verify"),
        "{p:#?}"
    );
}
