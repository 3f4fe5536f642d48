//! Health summaries: module health of a device from its `$edgeAgent` reported properties, and the
//! readiness of a configuration from its system metrics.

use serde_json::Value;

use super::image::same_image;
use super::manifest::{DESIRED, EDGE_AGENT};
use crate::api::ModulesStatus;

/// Longest device-reported text kept in a failing entry, in characters. The status cuts each
/// entry again to `reconcile::status::MAX_TEXT` bytes where it enters it.
const MAX_DESCRIPTION: usize = 200;

/// A module the manifest asks for.
struct Wanted<'a> {
    name: &'a str,
    /// `systemModules` or `modules`, where the agent reports it too.
    group: &'static str,
    running: bool,
    image: Option<&'a str>,
}

fn wanted_modules(desired_manifest: &Value) -> Vec<Wanted<'_>> {
    let desired = desired_manifest.pointer(&format!("/modulesContent/{EDGE_AGENT}/{DESIRED}"));
    let mut out = Vec::new();
    for group in ["systemModules", "modules"] {
        let Some(modules) = desired
            .and_then(|d| d.get(group))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (name, module) in modules {
            out.push(Wanted {
                name,
                group,
                // edgeAgent has no status: it always runs.
                running: module
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("running")
                    == "running",
                image: module.pointer("/settings/image").and_then(Value::as_str),
            });
        }
    }
    // edgeAgent, then edgeHub, then the rest by name.
    out.sort_by_key(|w| (w.group != "systemModules", w.name != "edgeAgent", w.name));
    out
}

fn text(value: Option<&Value>) -> Option<String> {
    let s = match value? {
        Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    Some(if s.chars().count() > MAX_DESCRIPTION {
        format!("{}...", s.chars().take(MAX_DESCRIPTION).collect::<String>())
    } else {
        s
    })
}

/// The details of a reported module worth showing: description, exit code, last exit time.
fn details(reported: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(d) = text(reported.get("statusDescription")) {
        parts.push(d);
    }
    if let Some(code) = text(reported.get("exitCode")) {
        parts.push(format!("exit code {code}"));
    }
    if let Some(t) = text(reported.get("lastExitTimeUtc")) {
        parts.push(format!("last exit {t}"));
    }
    if let Some(n) = text(reported.get("restartCount")) {
        parts.push(format!("restarts {n}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

/// Module health of one device.
///
/// - `desired_manifest`: the device's effective manifest, `{"modulesContent": ...}` with full
///   `properties.desired` (from [`super::merged_manifest`] in either mode).
/// - `desired_version`: the `$version` of the `$edgeAgent` twin's desired properties, when known;
///   the agent must have processed it (`lastDesiredVersion`) for the device to count as healthy.
/// - `edge_agent_reported`: the `$edgeAgent` twin's `properties.reported` (null if none).
///
/// `desired` counts the modules the manifest wants running (system modules included); `running`
/// those reported running with the desired image (when the agent reports one). `failing` lists, as
/// `name: status (details)`: modules not running, on an old image, or running though desired
/// stopped, and as `edgeAgent: ...` a rejected deployment. `pending` lists what passes by itself:
/// modules not created yet, a deployment not processed yet, or an agent that has not reported at
/// all (then nothing counts as running).
pub fn modules_status(
    desired_manifest: &Value,
    desired_version: Option<i64>,
    edge_agent_reported: &Value,
) -> ModulesStatus {
    let wanted = wanted_modules(desired_manifest);
    let desired = u32::try_from(wanted.iter().filter(|w| w.running).count()).unwrap_or(u32::MAX);
    let reported = edge_agent_reported.as_object().filter(|r| {
        r.contains_key("lastDesiredStatus")
            || r.contains_key("systemModules")
            || r.contains_key("modules")
    });
    let Some(reported) = reported else {
        return ModulesStatus {
            desired,
            running: 0,
            failing: Vec::new(),
            pending: vec![
                "edgeAgent: not reported yet (is the runtime installed from the bundle, and can it reach its parent or the hub?)"
                    .into(),
            ],
        };
    };
    let mut failing = Vec::new();
    let mut pending = Vec::new();
    if let Some(status) = reported.get("lastDesiredStatus") {
        let code = status.get("code").and_then(Value::as_i64);
        if code != Some(200) {
            let code = code.map_or_else(|| "no code".to_string(), |c| format!("code {c}"));
            let description = text(status.get("description"))
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            failing.push(format!(
                "edgeAgent: deployment not applied ({code}{description})"
            ));
        }
    }
    if let Some(want) = desired_version {
        match reported.get("lastDesiredVersion").and_then(Value::as_i64) {
            Some(have) if have == want => {}
            have => pending.push(format!(
                "edgeAgent: has not processed the current deployment yet (desired version {want}, last processed {})",
                have.map_or_else(|| "none".to_string(), |h| h.to_string())
            )),
        }
    }
    let mut running = 0u32;
    for w in &wanted {
        let Some(module) = reported.get(w.group).and_then(|g| g.get(w.name)) else {
            if w.running {
                pending.push(format!(
                    "{}: not reported (the edge agent has not created it yet)",
                    w.name
                ));
            }
            continue;
        };
        let status = module
            .get("runtimeStatus")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let image = module.pointer("/settings/image").and_then(Value::as_str);
        match (w.running, status) {
            (true, "running") => match (w.image, image) {
                (Some(want), Some(have)) if !same_image(want, have) => failing.push(format!(
                    "{}: running an old image ({have}; desired {want})",
                    w.name
                )),
                _ => running += 1,
            },
            (true, other) => failing.push(format!("{}: {other}{}", w.name, details(module))),
            (false, "running") => failing.push(format!("{}: running (desired stopped)", w.name)),
            (false, _) => {}
        }
    }
    ModulesStatus {
        desired,
        running,
        failing,
        pending,
    }
}

/// Whether a device's modules are all as desired (what `ModulesHealthy` aggregates).
pub fn modules_healthy(status: &ModulesStatus) -> bool {
    status.failing.is_empty() && status.pending.is_empty() && status.running == status.desired
}

/// Whether one configuration is in the hub and applied, with a message for `DeploymentsReady`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentReadiness {
    /// Every expected device is targeted, applied and reports success.
    pub ready: bool,
    /// What the metrics say, naming the configuration.
    pub message: String,
}

/// Readiness of configuration `configuration_id`, which should reach `expected_devices` devices,
/// from its `systemMetrics` (`{"results": {targetedCount, appliedCount, reportedSuccessfulCount,
/// reportedFailedCount}, "queries": ...}`; the bare `results` object is accepted too).
///
/// Ready when targeted = expected, applied = targeted, no device reports failure and every
/// applied device reports success. Missing counts mean the hub has not computed them yet: not ready.
pub fn deployment_status(
    configuration_id: &str,
    expected_devices: u32,
    system_metrics: &Value,
) -> DeploymentReadiness {
    let results = system_metrics.get("results").unwrap_or(system_metrics);
    let count = |key: &str| results.get(key).and_then(Value::as_u64);
    let not_ready = |message: String| DeploymentReadiness {
        ready: false,
        message,
    };
    let (Some(targeted), Some(applied)) = (count("targetedCount"), count("appliedCount")) else {
        return not_ready(format!(
            "configuration {configuration_id:?}: the hub has not computed its targeted and applied counts yet"
        ));
    };
    let succeeded = count("reportedSuccessfulCount").unwrap_or(0);
    let failed = count("reportedFailedCount").unwrap_or(0);
    let expected = u64::from(expected_devices);
    let prefix = format!("configuration {configuration_id:?}");
    if targeted != expected {
        let why = if targeted < expected {
            "the ownership tags of the others are not written yet, or the devices are not IoT Edge devices"
        } else {
            "its target condition also matches devices outside the hierarchy"
        };
        return not_ready(format!(
            "{prefix} targets {targeted} devices, expected {expected} ({why})"
        ));
    }
    if applied < targeted {
        return not_ready(format!(
            "{prefix} is applied to {applied} of {targeted} targeted devices (a higher-priority deployment wins on the others)"
        ));
    }
    if failed > 0 {
        return not_ready(format!(
            "{prefix}: {failed} of {applied} devices report that applying it failed"
        ));
    }
    if succeeded < applied {
        return not_ready(format!(
            "{prefix}: {succeeded} of {applied} devices report success so far"
        ));
    }
    DeploymentReadiness {
        ready: true,
        message: format!("{prefix} is applied to all {applied} devices and each reports success"),
    }
}

#[cfg(test)]
#[path = "tests/health.rs"]
mod tests;
