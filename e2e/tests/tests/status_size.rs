//! The status-size budget against a real API server (issue 13, docs/status.md): a hierarchy
//! of 1,000 devices is created with client-side `kubectl apply` (so the object also carries
//! kubectl's last-applied annotation and its managedFields entry, which lists every field of
//! every device of the keyed device list), gets the operator's finalizer, and then the
//! worst-case status the operator's own code builds (`reconcile::status::worst_case`), fitted
//! by `status::for_apply` to the room the stored object leaves, is server-side applied to the
//! status subresource with the operator's field manager, exactly as `scope::patch_status` does.
//! The object is read back and its JSON size, managedFields included, printed and held to
//! `status::OBJECT_BUDGET`. No operator process is needed.
//!
//! Ids: every Edge device's id is 55 characters (the longest an Edge device may have, its edge
//! CA's common name being `<id>.deviceca`), every Leaf's 128 (the longest IoT Hub allows); and
//! a second hierarchy with 40-character ids.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use e2e_harness::{ControlPlane, ControlPlaneOptions, install_crd, workspace_root};
use edge_hierarchy_operator::api::{DeviceState, EdgeHierarchy};
use edge_hierarchy_operator::names::{FINALIZER, MANAGER};
use edge_hierarchy_operator::reconcile::status::worst_case::{self, IdLength};
use edge_hierarchy_operator::reconcile::status::{
    OBJECT_BUDGET, apply_patch, for_apply, status_room,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NAMESPACE: &str = "factory-munich-plant02";

fn bytes(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |b| b.len())
}

/// Creates `name` with `ids`, writes the worst-case status, and returns the stored object.
async fn worst_case_object(
    plane: &ControlPlane,
    name: &str,
    ids: IdLength,
) -> anyhow::Result<Value> {
    let client = plane.client();
    let factory = std::fs::read_to_string(workspace_root().join("examples/factory.yaml"))?;
    let factory: EdgeHierarchy = serde_yaml::from_str(&factory)?;
    let hierarchy = worst_case::hierarchy(name, NAMESPACE, ids, factory.spec.deployments);
    ensure!(hierarchy.spec.devices.len() == 1000);

    // The user's client-side apply, as `kubectl apply -f hierarchy.yaml` does it.
    let manifest = json!({
        "apiVersion": "edgehierarchy.dev/v1alpha1",
        "kind": "EdgeHierarchy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": hierarchy.spec,
    });
    let out = plane.kubectl_apply_stdin(&serde_yaml::to_string(&manifest)?)?;
    ensure!(
        out.status.success(),
        "kubectl apply of {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api: Api<EdgeHierarchy> = Api::namespaced(client.clone(), NAMESPACE);
    // The operator's finalizer, written under its field manager as the finalizer helper does.
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({"metadata": {"finalizers": [FINALIZER]}})),
    )
    .await?;

    // The reconcile's status write: built by the operator's code, fitted to the stored object.
    let stored = api.get(name).await?;
    let full = worst_case::status(&stored, k8s_openapi::jiff::Timestamp::now());
    let room = status_room(&stored);
    let written = for_apply(&full, room);
    let started = Instant::now();
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&apply_patch(&written)),
    )
    .await
    .with_context(|| format!("the status write of {name} was refused"))?;
    let took = started.elapsed();

    let resource = ApiResource::erase::<EdgeHierarchy>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &resource);
    let object = serde_json::to_value(raw.get(name).await?)?;
    let managed = &object["metadata"]["managedFields"];
    let by_manager: Vec<String> = managed
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{} {}{} {} bytes",
                m["manager"].as_str().unwrap_or("?"),
                m["operation"].as_str().unwrap_or("?"),
                m["subresource"]
                    .as_str()
                    .map_or(String::new(), |s| format!(" ({s})")),
                bytes(m)
            )
        })
        .collect();
    let annotation =
        object["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .map_or(0, str::len);
    println!(
        "{name} ({ids:?} ids): object {} bytes ({:.1} KiB; budget {OBJECT_BUDGET}): spec {} bytes, \
         last-applied annotation {annotation} bytes, managedFields {} bytes [{}], status {} bytes \
         (room the operator computed {room}; {} before fitting); texts left out for {} devices; \
         status write {:.2} s",
        bytes(&object),
        bytes(&object) as f64 / 1024.0,
        bytes(&object["spec"]),
        bytes(managed),
        by_manager.join(", "),
        bytes(&object["status"]),
        serde_json::to_vec(&full)?.len(),
        object["status"]["detailsOmitted"].as_u64().unwrap_or(0),
        took.as_secs_f64()
    );
    Ok(object)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_devices_in_the_worst_case_stay_within_the_budget_on_a_real_api_server()
-> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    install_crd(&plane)?;
    let namespaces: Api<Namespace> = Api::all(plane.client());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NAMESPACE.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;

    for (name, ids) in [
        ("longest-ids", IdLength::Longest),
        ("forty-character-ids", IdLength::Exactly(40)),
    ] {
        let object = worst_case_object(&plane, name, ids).await?;
        let size = bytes(&object);
        ensure!(
            size <= OBJECT_BUDGET,
            "{name}: the stored object is {size} bytes, over the budget of {OBJECT_BUDGET}"
        );
        // What the API server kept is what readers rely on: every device with its state and
        // scope, every condition, and the device list recorded as one field of the operator.
        let status = &object["status"];
        let devices = status["devices"].as_array().context("status.devices")?;
        ensure!(devices.len() == 1000, "{name}: {} devices", devices.len());
        let error = serde_json::to_value(DeviceState::Error)?;
        ensure!(
            devices
                .iter()
                .all(|d| d["state"] == error && d["deviceScope"].is_string()),
            "{name}: a device lost its state or scope"
        );
        ensure!(
            devices[0]["message"].is_string() && devices[0]["drift"].is_array(),
            "{name}: the first device lost its texts: {}",
            devices[0]
        );
        let conditions: Vec<&str> = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["type"].as_str())
            .collect();
        ensure!(
            conditions
                == [
                    "CertificatesReady",
                    "DeploymentsReady",
                    "DriftDetected",
                    "ModulesHealthy",
                    "Ready",
                    "Reconciling",
                    "Stalled"
                ],
            "{name}: conditions {conditions:?}"
        );
        let operator = object["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["manager"] == MANAGER && m["subresource"] == "status")
            .context("the operator's status entry in managedFields")?;
        ensure!(
            operator["fieldsV1"]["f:status"]["f:devices"] == json!({}),
            "{name}: the device list is not recorded as one atomic field: {}",
            operator["fieldsV1"]["f:status"]["f:devices"]
        );
        let entry = bytes(operator);
        ensure!(
            entry <= edge_hierarchy_operator::reconcile::status::budget::STATUS_FIELDS_ALLOWANCE,
            "{name}: the operator's status entry takes {entry} bytes, more than its allowance"
        );
    }
    Ok(())
}
