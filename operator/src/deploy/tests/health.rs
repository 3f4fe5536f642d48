use serde_json::json;

use super::*;
use crate::deploy::fixtures::*;
use crate::deploy::merge::merged_manifest;

/// The tutorial's lower-layer manifest as applied (rendered).
fn lower_manifest() -> Value {
    let ex = tutorial();
    merged_manifest(&ex.spec.devices[1], 2, &ex.spec.edge, &ex.manifests).unwrap()
}

/// `$edgeAgent` reported properties of a device that runs `manifest` exactly, as edgeAgent
/// reports them (the `$edgeAgent` reported schema, docs/architecture.md "Deployments and
/// health").
fn healthy_report(manifest: &Value, version: i64) -> Value {
    let desired = &manifest["modulesContent"]["$edgeAgent"]["properties.desired"];
    let mut reported = json!({
        "schemaVersion": "1.1",
        "lastDesiredVersion": version,
        "lastDesiredStatus": {"code": 200},
        "runtime": {"type": "docker"},
        "systemModules": {},
        "modules": {},
    });
    for group in ["systemModules", "modules"] {
        for (name, module) in desired[group].as_object().unwrap() {
            reported[group][name] = json!({
                "runtimeStatus": "running",
                "status": module.get("status").cloned().unwrap_or(json!("running")),
                "settings": {"image": module["settings"]["image"].clone()},
                "lastStartTimeUtc": "2025-01-01T00:00:00.0000000",
                "restartCount": 0,
            });
        }
    }
    reported
}

#[test]
fn a_device_running_its_manifest_is_healthy() {
    let manifest = lower_manifest();
    let status = modules_status(&manifest, Some(4), &healthy_report(&manifest, 4));
    assert_eq!(
        status,
        ModulesStatus {
            desired: 3,
            running: 3,
            failing: vec![],
            pending: vec![],
        }
    );
    assert!(modules_healthy(&status));
    // Without a known desired version the version is not compared.
    assert!(modules_healthy(&modules_status(
        &manifest,
        None,
        &healthy_report(&manifest, 1)
    )));
}

#[test]
fn an_agent_that_never_reported_is_pending_not_healthy() {
    let manifest = lower_manifest();
    for reported in [
        Value::Null,
        json!({}),
        json!({"$metadata": {}, "$version": 1}),
    ] {
        let status = modules_status(&manifest, Some(1), &reported);
        assert_eq!(status.desired, 3);
        assert_eq!(status.running, 0);
        assert!(status.failing.is_empty());
        assert_eq!(
            status.pending,
            [
                "edgeAgent: not reported yet (is the runtime installed from the bundle, and can it reach its parent or the hub?)"
            ]
        );
        assert!(!modules_healthy(&status));
    }
}

#[test]
fn failing_modules_are_listed_with_their_details() {
    let manifest = lower_manifest();
    let mut reported = healthy_report(&manifest, 2);
    reported["modules"]["SimulatedTemperatureSensor"] = json!({
        "runtimeStatus": "backoff",
        "statusDescription": "pull of $upstream:443/azureiotedge-simulated-temperature-sensor:1.5 failed: parent top-layer runs no API proxy on port 443",
        "exitCode": 1,
        "lastExitTimeUtc": "2025-01-01T00:01:00.0000000",
        "restartCount": 3,
    });
    reported["systemModules"]["edgeHub"]["runtimeStatus"] = json!("unhealthy");
    let status = modules_status(&manifest, Some(2), &reported);
    assert_eq!(status.desired, 3);
    assert_eq!(status.running, 1);
    assert_eq!(
        status.failing,
        [
            "edgeHub: unhealthy (restarts 0)",
            "SimulatedTemperatureSensor: backoff (pull of $upstream:443/azureiotedge-simulated-temperature-sensor:1.5 failed: parent top-layer runs no API proxy on port 443; exit code 1; last exit 2025-01-01T00:01:00.0000000; restarts 3)",
        ]
    );
}

#[test]
fn missing_old_and_unwanted_modules() {
    let ex = tutorial();
    let mut manifest =
        merged_manifest(&ex.spec.devices[0], 1, &ex.spec.edge, &ex.manifests).unwrap();
    let mut reported = healthy_report(&manifest, 7);
    reported["modules"]
        .as_object_mut()
        .unwrap()
        .remove("IoTEdgeAPIProxy");
    *at(&mut manifest, &agent("/modules/registry/status")) = json!("stopped");
    reported["modules"]["registry"]["settings"]["image"] = json!("registry:latest");
    let status = modules_status(&manifest, Some(7), &reported);
    assert_eq!(
        status.desired, 3,
        "edgeAgent, edgeHub, IoTEdgeAPIProxy (registry is desired stopped)"
    );
    assert_eq!(status.running, 2);
    assert_eq!(status.failing, ["registry: running (desired stopped)"]);
    assert_eq!(
        status.pending,
        ["IoTEdgeAPIProxy: not reported (the edge agent has not created it yet)"]
    );
    // A stopped module that is stopped is fine; a running one on an old image is not.
    reported["modules"]["registry"]["runtimeStatus"] = json!("stopped");
    *at(
        &mut manifest,
        &agent("/systemModules/edgeHub/settings/image"),
    ) = json!("mcr.microsoft.com/azureiotedge-hub:1.6");
    let status = modules_status(&manifest, Some(7), &reported);
    assert_eq!(
        status.failing,
        [
            "edgeHub: running an old image (mcr.microsoft.com/azureiotedge-hub:1.5; desired mcr.microsoft.com/azureiotedge-hub:1.6)"
        ]
    );
}

#[test]
fn rejected_deployments_fail_and_unprocessed_ones_are_pending() {
    let manifest = lower_manifest();
    let mut reported = healthy_report(&manifest, 3);
    reported["lastDesiredStatus"] = json!({"code": 400, "description": "Config Format Error"});
    let status = modules_status(&manifest, Some(5), &reported);
    assert_eq!(
        status.failing,
        ["edgeAgent: deployment not applied (code 400: Config Format Error)"]
    );
    assert_eq!(
        status.pending,
        [
            "edgeAgent: has not processed the current deployment yet (desired version 5, last processed 3)"
        ]
    );
    assert_eq!(
        status.running, 3,
        "modules still run the previous deployment"
    );
    assert!(!modules_healthy(&status));
    reported["lastDesiredStatus"] = json!({});
    reported
        .as_object_mut()
        .unwrap()
        .remove("lastDesiredVersion");
    let status = modules_status(&manifest, Some(5), &reported);
    assert_eq!(
        status.failing,
        ["edgeAgent: deployment not applied (no code)"]
    );
    assert_eq!(
        status.pending,
        [
            "edgeAgent: has not processed the current deployment yet (desired version 5, last processed none)"
        ]
    );
}

#[test]
fn long_device_text_is_cut() {
    let manifest = lower_manifest();
    let mut reported = healthy_report(&manifest, 1);
    reported["modules"]["SimulatedTemperatureSensor"] =
        json!({"runtimeStatus": "failed", "statusDescription": "x".repeat(1000)});
    let failing = &modules_status(&manifest, None, &reported).failing;
    assert_eq!(
        failing[0],
        format!(
            "SimulatedTemperatureSensor: failed ({}...)",
            "x".repeat(200)
        )
    );
}

#[test]
fn a_manifest_without_modules_desires_nothing() {
    let status = modules_status(
        &json!({}),
        None,
        &json!({"lastDesiredStatus": {"code": 200}}),
    );
    assert_eq!(
        status,
        ModulesStatus {
            desired: 0,
            running: 0,
            failing: vec![],
            pending: vec![],
        }
    );
}

fn metrics(targeted: u64, applied: u64, success: u64, failed: u64) -> Value {
    json!({"results": {"targetedCount": targeted, "appliedCount": applied, "reportedSuccessfulCount": success, "reportedFailedCount": failed},
           "queries": {"targetedCount": "select deviceId from devices where capabilities.iotEdge = true and ..."}})
}

#[test]
fn deployment_readiness_from_system_metrics() {
    let id = "tutorial-lower-layer-0a1b2c3d";
    let check = |expected, m: Value| deployment_status(id, expected, &m);
    assert_eq!(
        check(2, metrics(2, 2, 2, 0)),
        DeploymentReadiness {
            ready: true,
            message: format!(
                "configuration \"{id}\" is applied to all 2 devices and each reports success"
            )
        }
    );
    let cases = [
        (
            2,
            json!({}),
            "the hub has not computed its targeted and applied counts yet",
        ),
        (
            2,
            json!({"results": {}, "queries": {}}),
            "the hub has not computed its targeted and applied counts yet",
        ),
        (
            2,
            metrics(1, 1, 1, 0),
            "targets 1 devices, expected 2 (the ownership tags of the others are not written yet, or the devices are not IoT Edge devices)",
        ),
        (
            1,
            metrics(2, 2, 2, 0),
            "targets 2 devices, expected 1 (its target condition also matches devices outside the hierarchy)",
        ),
        (
            2,
            metrics(2, 1, 1, 0),
            "is applied to 1 of 2 targeted devices (a higher-priority deployment wins on the others)",
        ),
        (
            2,
            metrics(2, 2, 1, 1),
            ": 1 of 2 devices report that applying it failed",
        ),
        (
            2,
            metrics(2, 2, 1, 0),
            ": 1 of 2 devices report success so far",
        ),
    ];
    for (expected, m, tail) in cases {
        let r = check(expected, m);
        assert!(!r.ready, "{tail}");
        let want = if tail.starts_with(':') {
            format!("configuration \"{id}\"{tail}")
        } else {
            format!(
                "configuration \"{id}\"{}{tail}",
                if tail.starts_with("the hub") {
                    ": "
                } else {
                    " "
                }
            )
        };
        assert_eq!(r.message, want);
    }
    // The bare results object is accepted too.
    assert!(
        deployment_status(
            id,
            1,
            &json!({"targetedCount": 1, "appliedCount": 1, "reportedSuccessfulCount": 1})
        )
        .ready
    );
}
