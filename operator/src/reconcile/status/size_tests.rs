//! The status-size budget at 1,000 devices in the worst case (docs/status.md).
//!
//! The object is modelled as the API server keeps it after a client-side `kubectl apply`
//! (the last-applied annotation holds the spec a second time, and kubectl's managedFields entry
//! lists every spec field of every device, the device list being keyed by id), the operator's
//! finalizer, and the operator's server-side apply of the status. managedFields are estimated
//! here the way the API server writes them (`f:` per field, `k:{...}` per entry of a keyed list,
//! `.` for every nested object); `e2e/tests/tests/status_size.rs` measures the real ones.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use kube::Resource;
use serde_json::{Map, Value, json};

use super::budget::{MAX_ITEMS, status_bytes};
use super::worst_case::{self, IdLength};
use super::*;
use crate::api::{DeploymentSpec, EdgeHierarchy, ModulesStatus};
use crate::names::{FINALIZER, MANAGER};

const FACTORY: &str = include_str!("../../../../examples/factory.yaml");
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn factory_deployments() -> Vec<DeploymentSpec> {
    let factory: EdgeHierarchy = serde_yaml::from_str(FACTORY).expect("examples/factory.yaml");
    factory.spec.deployments
}

fn now() -> Timestamp {
    Timestamp::from_second(1_798_761_600).unwrap()
}

/// The key of a keyed list (`x-kubernetes-list-type: map`) at `path`, per the CRD.
fn list_key(path: &str) -> Option<&'static str> {
    match path {
        ".spec.devices" => Some("id"),
        ".spec.deployments" => Some("name"),
        ".status.conditions" => Some("type"),
        _ => None,
    }
}

/// FieldsV1 of everything in `value` (an object at `path`).
fn fields(value: &Map<String, Value>, path: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, child) in value {
        let at = format!("{path}.{key}");
        out.insert(format!("f:{key}"), field(child, &at));
    }
    out
}

fn field(value: &Value, path: &str) -> Value {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let mut out = fields(map, path);
            out.insert(".".into(), json!({}));
            Value::Object(out)
        }
        Value::Array(items) => match list_key(path) {
            Some(key) => {
                let mut out = Map::new();
                out.insert(".".into(), json!({}));
                for item in items {
                    let id = json!({ key: item[key] }).to_string();
                    let mut entry = item.as_object().map_or_else(Map::new, |m| fields(m, path));
                    entry.insert(".".into(), json!({}));
                    out.insert(format!("k:{id}"), Value::Object(entry));
                }
                Value::Object(out)
            }
            // Atomic: one field, whatever it holds.
            None => json!({}),
        },
        _ => json!({}),
    }
}

fn entry(
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
    set: Value,
) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        api_version: Some("edgehierarchy.dev/v1alpha1".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(set)),
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        subresource: subresource.map(Into::into),
        time: Some(Time(now())),
    }
}

/// The hierarchy as stored after `kubectl apply` (client-side) and the operator's finalizer.
fn stored(ids: IdLength) -> EdgeHierarchy {
    let mut object = worst_case::hierarchy(
        "munich-plant02-production-hierarchy",
        "factory-munich-plant02",
        ids,
        factory_deployments(),
    );
    let applied = json!({
        "apiVersion": EdgeHierarchy::api_version(&()),
        "kind": EdgeHierarchy::kind(&()),
        "metadata": {"name": object.metadata.name, "namespace": object.metadata.namespace},
        "spec": object.spec,
    });
    object.metadata.annotations = Some(BTreeMap::from([(
        LAST_APPLIED.to_string(),
        format!("{applied}\n"),
    )]));
    object.metadata.uid = Some("4f1c2b9e-6a0d-4c4e-9a51-3b1f0e5d2c77".into());
    object.metadata.generation = Some(12);
    object.metadata.resource_version = Some("123456789".into());
    object.metadata.creation_timestamp = Some(Time(now()));
    object.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let user = json!({
        "metadata": {"annotations": {LAST_APPLIED: ""}},
        "spec": object.spec,
    });
    let user = fields(user.as_object().unwrap(), "");
    object.metadata.managed_fields = Some(vec![
        entry(
            "kubectl-client-side-apply",
            "Update",
            None,
            Value::Object(user),
        ),
        entry(
            MANAGER,
            "Update",
            None,
            json!({"f:metadata": {"f:finalizers": {".": {}, format!("v:\"{FINALIZER}\""): {}}}}),
        ),
    ]);
    object
}

/// Writes `status` into `object` as the operator does, with its managedFields entry.
fn with_status(mut object: EdgeHierarchy, status: EdgeHierarchyStatus) -> EdgeHierarchy {
    let value = json!({"status": status});
    let set = fields(value.as_object().unwrap(), "");
    object
        .metadata
        .managed_fields
        .get_or_insert_with(Vec::new)
        .push(entry(MANAGER, "Apply", Some("status"), Value::Object(set)));
    object.status = Some(status);
    object
}

fn bytes<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).unwrap().len()
}

/// Builds the worst case for `ids`, writes it as the operator would, prints the sizes, and
/// returns the stored object and its size.
fn worst_case_object(ids: IdLength) -> (EdgeHierarchy, usize) {
    let object = stored(ids);
    let full = worst_case::status(&object, now());
    let room = status_room(&object);
    let written = for_apply(&full, room);
    let object = with_status(object, written);
    let total = bytes(&object);
    let managed: usize = object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(bytes)
        .sum();
    let status = object.status.as_ref().unwrap();
    println!(
        "worst case, {ids:?} ids, {} devices: object {total} bytes ({:.1} KiB; budget {OBJECT_BUDGET}): \
         spec {} bytes, last-applied annotation {} bytes, managedFields {managed} bytes, \
         status {} bytes (room {room}; before fitting {}); device texts left out for {} devices",
        object.spec.devices.len(),
        total as f64 / 1024.0,
        bytes(&object.spec),
        object.metadata.annotations.as_ref().unwrap()[LAST_APPLIED].len(),
        status_bytes(status),
        status_bytes(&full),
        status.details_omitted.unwrap_or(0),
    );
    (object, total)
}

#[test]
fn a_thousand_devices_in_the_worst_case_fit_the_budget_with_the_longest_ids() {
    let (object, total) = worst_case_object(IdLength::Longest);
    assert!(
        total <= OBJECT_BUDGET,
        "the worst-case object is {total} bytes, over the budget of {OBJECT_BUDGET}"
    );
    let status = object.status.as_ref().unwrap();
    // Nothing a reader or a restart relies on is lost: every device with its state and scope,
    // every condition, the counts.
    assert_eq!(status.devices.len(), 1000);
    for (spec, device) in object.spec.devices.iter().zip(&status.devices) {
        assert_eq!(spec.id, device.id);
        assert_eq!(device.state, DeviceState::Error, "{}", device.id);
        assert!(device.device_scope.is_some(), "{}", device.id);
    }
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(
        types,
        [
            "CertificatesReady",
            "DeploymentsReady",
            "DriftDetected",
            "ModulesHealthy",
            "Ready",
            "Reconciling",
            "Stalled"
        ]
    );
    assert_eq!(status.summary.as_ref().unwrap().drifted, 1000);
    // The first devices keep their detail, one item per list, and the count says how many lost it.
    let detailed = status
        .devices
        .iter()
        .take_while(|d| d.message.is_some() && !d.drift.is_empty())
        .count();
    println!("worst case, longest ids: the first {detailed} devices keep their texts");
    assert!(detailed >= 20, "only {detailed} devices keep their texts");
    assert!(
        status.devices[detailed..]
            .iter()
            .all(|d| d.message.is_none() && d.drift.is_empty()),
        "texts are kept for the first devices only"
    );
    assert_eq!(
        status.details_omitted,
        Some((1000 - detailed) as u32),
        "detailsOmitted counts the devices without texts"
    );
    assert!(status.devices[0].message.is_some() && !status.devices[0].drift.is_empty());
}

#[test]
fn a_thousand_devices_in_the_worst_case_fit_the_budget_with_realistic_ids() {
    for length in [24, 40] {
        let (_, total) = worst_case_object(IdLength::Exactly(length));
        assert!(
            total <= OBJECT_BUDGET,
            "with {length}-character ids the worst-case object is {total} bytes, over {OBJECT_BUDGET}"
        );
    }
}

#[test]
fn the_estimate_of_managed_fields_lists_every_device_of_a_keyed_list() {
    // The model above must charge the spec's keyed device list per device, or the budget test
    // would pass on an object the API server makes larger.
    let object = stored(IdLength::Exactly(30));
    let user = &object.metadata.managed_fields.as_ref().unwrap()[0];
    let set = &user.fields_v1.as_ref().unwrap().0["f:spec"]["f:devices"];
    assert_eq!(set.as_object().unwrap().len(), 1000 + 1);
    let status = with_status(
        object,
        worst_case::status(&stored(IdLength::Exactly(30)), now()),
    );
    let operator = &status.metadata.managed_fields.as_ref().unwrap()[2];
    let devices = &operator.fields_v1.as_ref().unwrap().0["f:status"]["f:devices"];
    assert_eq!(devices, &json!({}), "the device list is atomic: one field");
}

fn texts(i: usize) -> DeviceStatus {
    DeviceStatus {
        id: format!("device-{i}"),
        state: DeviceState::Error,
        drift: (0..5)
            .map(|n| format!("drift {n} {}", "d".repeat(300)))
            .collect(),
        message: Some("m".repeat(1000)),
        modules: Some(ModulesStatus {
            desired: 8,
            running: 1,
            failing: (0..7).map(|n| format!("module{n}: backoff")).collect(),
            pending: vec![],
        }),
        ..Default::default()
    }
}

#[test]
fn lists_are_cut_to_three_items_and_a_count_when_the_status_fits() {
    let status = EdgeHierarchyStatus {
        devices: vec![texts(0)],
        ..Default::default()
    };
    let out = for_apply(&status, usize::MAX);
    let device = &out.devices[0];
    assert_eq!(device.drift.len(), MAX_ITEMS + 1);
    assert_eq!(device.drift[MAX_ITEMS], "and 2 more");
    assert!(device.drift.iter().all(|d| d.len() <= MAX_TEXT));
    let failing = &device.modules.as_ref().unwrap().failing;
    assert_eq!(
        failing[..],
        [
            "module0: backoff",
            "module1: backoff",
            "module2: backoff",
            "and 4 more"
        ]
    );
    assert!(device.message.as_ref().unwrap().len() <= MAX_MESSAGE);
    assert_eq!(out.details_omitted, None);
}

#[test]
fn a_status_too_big_keeps_the_details_of_the_first_devices_only() {
    let status = EdgeHierarchyStatus {
        devices: (0..400).map(texts).collect(),
        ..Default::default()
    };
    let one_item = for_apply(&status, 0);
    // Room for nothing: every text goes, devices and states stay.
    assert_eq!(one_item.devices.len(), 400);
    assert!(
        one_item
            .devices
            .iter()
            .all(|d| d.drift.is_empty() && d.message.is_none())
    );
    assert!(
        one_item
            .devices
            .iter()
            .all(|d| d.state == DeviceState::Error)
    );
    assert_eq!(one_item.details_omitted, Some(400));

    // Room for the details of some: the first devices keep one item per list.
    let full = status_bytes(&for_apply(&status, usize::MAX));
    let out = for_apply(&status, full / 3);
    assert!(status_bytes(&out) <= full / 3);
    let kept: Vec<usize> = (0..400)
        .filter(|&i| !out.devices[i].drift.is_empty())
        .collect();
    assert!(!kept.is_empty() && kept.len() < 400, "{} kept", kept.len());
    assert_eq!(kept, (0..kept.len()).collect::<Vec<_>>(), "the first ones");
    let first = &out.devices[0].drift;
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(
        first[0].starts_with("drift 0 ") && first[0].len() <= 100,
        "{first:?}"
    );
    assert_eq!(first[1], "and 4 more");
    assert_eq!(out.details_omitted, Some((400 - kept.len()) as u32));
    assert!(
        out.devices[399].modules.is_some(),
        "counts stay where texts go"
    );
}

#[test]
fn fitting_a_written_status_again_changes_nothing() {
    // The next reconcile starts from the written status; writing it again must not differ,
    // or a stalled hierarchy would publish its Event on every resync.
    let status = EdgeHierarchyStatus {
        devices: (0..400).map(texts).collect(),
        ..Default::default()
    };
    for room in [usize::MAX, 200_000, 30_000, 0] {
        let once = for_apply(&status, room);
        assert_eq!(for_apply(&once, room), once, "room {room}");
    }
}

#[test]
fn texts_are_cut_where_they_enter_the_status() {
    let mut plan = Plan::default();
    plan.devices.insert(
        "top".into(),
        DeviceReport {
            state: DeviceState::Pending,
            drift: vec!["p".repeat(5000)],
            message: Some("w".repeat(5000)),
            ..Default::default()
        },
    );
    let failures = BTreeMap::from([("top".to_string(), "e".repeat(5000))]);
    let drift = BTreeMap::from([("top".to_string(), vec!["d".repeat(5000)])]);
    let order = vec!["top".to_string()];
    let s = managed_first_status(&plan, &drift, &failures, &order);
    let device = &s.devices[0];
    assert_eq!(device.message.as_ref().unwrap().len(), MAX_MESSAGE);
    assert_eq!(device.drift[0].len(), MAX_TEXT);
    assert!(
        s.conditions
            .iter()
            .all(|c| c.message.len() <= MAX_CONDITION_MESSAGE)
    );
}

/// The first status of a Manage hierarchy after one sync with `plan`.
fn managed_first_status(
    plan: &Plan,
    drift: &BTreeMap<String, Vec<String>>,
    failures: &BTreeMap<String, String>,
    order: &[String],
) -> EdgeHierarchyStatus {
    let outcome = SyncOutcome {
        policy: ReconcilePolicy::Manage,
        last: plan,
        drift,
        failures,
        order,
    };
    synced_status(
        &EdgeHierarchyStatus::default(),
        &outcome,
        Some(1),
        &Time(now()),
    )
}

#[test]
fn a_thousand_conflicts_are_five_and_a_count_in_the_conditions() {
    let mut plan = Plan::default();
    for i in 0..1000 {
        let id = format!("d{i}");
        plan.devices.insert(
            id.clone(),
            DeviceReport {
                state: DeviceState::Conflict,
                ..Default::default()
            },
        );
        plan.conflicts
            .push(format!("device \"{id}\" already exists"));
    }
    let order: Vec<String> = plan.devices.keys().cloned().collect();
    let (drift, failures) = (BTreeMap::new(), BTreeMap::new());
    let s = managed_first_status(&plan, &drift, &failures, &order);
    let stalled = s.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(stalled.status, "True");
    assert!(
        stalled.message.ends_with("and 995 more"),
        "{}",
        stalled.message
    );
    assert!(
        stalled
            .message
            .starts_with("device \"d0\" already exists; device \"d1\"")
    );
}

#[test]
fn the_room_leaves_out_the_operators_own_status_entry() {
    let object = stored(IdLength::Exactly(30));
    let before = status_room(&object);
    let written = with_status(
        object,
        worst_case::status(&stored(IdLength::Exactly(30)), now()),
    );
    assert_eq!(
        status_room(&written),
        before,
        "the status and its own entry are not counted"
    );
    assert!(before < OBJECT_BUDGET - bytes(&written.spec));
}
