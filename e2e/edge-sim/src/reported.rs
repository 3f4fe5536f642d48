//! What a simulated edgeAgent and edgeHub report (the `$edgeAgent` and `$edgeHub` reported
//! properties Azure/iotedge's agent writes), as pure functions: reading the desired deployment, keeping each module's runtime record across polls,
//! building the reported documents and the merge patch that brings the twin there.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::chain::{ModuleOutcome, ModuleSpec};

/// The edge runtime version the simulation reports.
pub const RUNTIME_VERSION: &str = "1.5.0";
/// `schemaVersion` values of `$edgeAgent` desired properties the simulated agent accepts.
pub const SUPPORTED_SCHEMAS: [&str; 3] = ["1.0", "1.1", "1.2"];

/// `lastDesiredStatus`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredStatus {
    /// 200 ok, 400 invalid configuration, 412 unsupported schema, 417 empty, 500 failed.
    pub code: u16,
    /// Why, for anything but 200.
    pub description: String,
}

impl DesiredStatus {
    /// Code 200.
    pub fn ok() -> Self {
        Self {
            code: 200,
            description: String::new(),
        }
    }
}

/// One desired module with what the agent echoes back.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredModule {
    /// Name, image, status and env for the chain rule.
    pub spec: ModuleSpec,
    /// The desired module object (for `version`, `type`, `restartPolicy`, `settings`).
    pub raw: Value,
}

/// The `$edgeAgent` desired deployment, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentDeployment {
    /// `systemModules.edgeAgent` (the agent runs it as it is).
    pub edge_agent: Value,
    /// `systemModules.edgeHub`.
    pub edge_hub: DesiredModule,
    /// `modules.*` by name.
    pub modules: BTreeMap<String, DesiredModule>,
    /// `runtime`.
    pub runtime: Value,
}

fn env_of(module: &Value) -> BTreeMap<String, String> {
    module
        .get("env")
        .and_then(Value::as_object)
        .map(|env| {
            env.iter()
                .filter_map(|(k, v)| {
                    let value = match v.get("value")? {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k.clone(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn desired_module(
    name: &str,
    path: &str,
    raw: &Value,
    system: bool,
) -> Result<DesiredModule, DesiredStatus> {
    let bad = |what: String| DesiredStatus {
        code: 400,
        description: format!("{path}: {what}"),
    };
    if !raw.is_object() {
        return Err(bad("must be an object".into()));
    }
    let image = raw
        .pointer("/settings/image")
        .and_then(Value::as_str)
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| bad("settings.image is missing".into()))?;
    let status = raw
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("running");
    if !system && !matches!(status, "running" | "stopped") {
        return Err(bad(format!(
            "status {status:?} is neither \"running\" nor \"stopped\""
        )));
    }
    Ok(DesiredModule {
        spec: ModuleSpec {
            name: name.to_string(),
            image: image.to_string(),
            wants_running: status == "running",
            env: env_of(raw),
        },
        raw: raw.clone(),
    })
}

/// Validates `$edgeAgent` desired properties as the agent does, with the status code it reports
/// on rejection.
pub fn parse_agent_desired(desired: &Value) -> Result<AgentDeployment, DesiredStatus> {
    let Some(object) = desired.as_object() else {
        return Err(DesiredStatus {
            code: 417,
            description: "desired properties are empty".into(),
        });
    };
    let meaningful = object.keys().any(|k| !k.starts_with('$'));
    if !meaningful {
        return Err(DesiredStatus {
            code: 417,
            description: "desired properties are empty: no deployment applies to this device"
                .into(),
        });
    }
    match object.get("schemaVersion").and_then(Value::as_str) {
        Some(v) if SUPPORTED_SCHEMAS.contains(&v) => {}
        other => {
            return Err(DesiredStatus {
                code: 412,
                description: format!(
                    "schemaVersion {} is not supported (supported: {})",
                    other.map_or_else(|| "(missing)".to_string(), |v| format!("{v:?}")),
                    SUPPORTED_SCHEMAS.join(", ")
                ),
            });
        }
    }
    let bad = |description: String| DesiredStatus {
        code: 400,
        description,
    };
    let system = object
        .get("systemModules")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("systemModules is missing".into()))?;
    let edge_agent = system
        .get("edgeAgent")
        .cloned()
        .ok_or_else(|| bad("systemModules.edgeAgent is missing".into()))?;
    let edge_hub_raw = system
        .get("edgeHub")
        .ok_or_else(|| bad("systemModules.edgeHub is missing".into()))?;
    let edge_hub = desired_module("edgeHub", "systemModules.edgeHub", edge_hub_raw, true)?;
    let mut modules = BTreeMap::new();
    match object.get("modules") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, raw) in map {
                modules.insert(
                    name.clone(),
                    desired_module(name, &format!("modules.{name}"), raw, false)?,
                );
            }
        }
        Some(_) => return Err(bad("modules must be an object".into())),
    }
    Ok(AgentDeployment {
        edge_agent,
        edge_hub,
        modules,
        runtime: object.get("runtime").cloned().unwrap_or(Value::Null),
    })
}

/// `$edgeHub` desired properties: 200 with routes and a schema version, 400 otherwise.
pub fn edge_hub_desired_status(desired: &Value) -> DesiredStatus {
    let has_schema = desired
        .get("schemaVersion")
        .and_then(Value::as_str)
        .is_some();
    let has_routes = desired.get("routes").is_some_and(Value::is_object);
    match (has_schema, has_routes) {
        (true, true) => DesiredStatus::ok(),
        (false, _) => DesiredStatus {
            code: 400,
            description: "schemaVersion is missing".into(),
        },
        (true, false) => DesiredStatus {
            code: 400,
            description: "routes is missing".into(),
        },
    }
}

/// A module's runtime history, kept across polls so that timestamps and counts only move on
/// transitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRecord {
    /// `running`, `backoff`, `stopped`, `failed`.
    pub runtime_status: String,
    /// Why (the pull failure for `backoff`).
    pub status_description: String,
    /// Exit code of the last run.
    pub exit_code: i64,
    /// When it last started.
    pub last_start_time_utc: Option<String>,
    /// When it last stopped.
    pub last_exit_time_utc: Option<String>,
    /// Failures so far.
    pub restart_count: u64,
    /// When it last went back into backoff.
    pub last_restart_time_utc: Option<String>,
}

impl ModuleRecord {
    /// A module not seen yet: status `unknown`, never started.
    pub fn unknown() -> Self {
        Self {
            runtime_status: "unknown".into(),
            status_description: String::new(),
            exit_code: 0,
            last_start_time_utc: None,
            last_exit_time_utc: None,
            restart_count: 0,
            last_restart_time_utc: None,
        }
    }
}

/// The record after an outcome, given the previous one; unchanged when the outcome is.
pub fn advance(
    previous: Option<&ModuleRecord>,
    outcome: &ModuleOutcome,
    now: &str,
) -> ModuleRecord {
    let was_running = previous.is_some_and(|p| p.runtime_status == "running");
    let mut next = previous.cloned().unwrap_or_else(ModuleRecord::unknown);
    match outcome {
        ModuleOutcome::Running => {
            if !was_running {
                next.runtime_status = "running".into();
                next.status_description = "running".into();
                next.exit_code = 0;
                next.last_start_time_utc = Some(now.to_string());
            }
        }
        ModuleOutcome::Stopped => {
            if next.runtime_status != "stopped" {
                if was_running {
                    next.last_exit_time_utc = Some(now.to_string());
                }
                next.runtime_status = "stopped".into();
                next.status_description = "stopped (desired status is stopped)".into();
                next.exit_code = 0;
            }
        }
        ModuleOutcome::Backoff(reason) => {
            if next.runtime_status != "backoff" || next.status_description != *reason {
                if was_running {
                    next.last_exit_time_utc = Some(now.to_string());
                    next.exit_code = 1;
                }
                if next.runtime_status != "backoff" {
                    next.restart_count += 1;
                    next.last_restart_time_utc = Some(now.to_string());
                }
                next.runtime_status = "backoff".into();
                next.status_description = reason.clone();
            }
        }
    }
    next
}

fn record_json(record: &ModuleRecord) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("runtimeStatus".into(), json!(record.runtime_status));
    out.insert("statusDescription".into(), json!(record.status_description));
    out.insert("exitCode".into(), json!(record.exit_code));
    out.insert("restartCount".into(), json!(record.restart_count));
    for (key, value) in [
        ("lastStartTimeUtc", &record.last_start_time_utc),
        ("lastExitTimeUtc", &record.last_exit_time_utc),
        ("lastRestartTimeUtc", &record.last_restart_time_utc),
    ] {
        if let Some(v) = value {
            out.insert(key.into(), json!(v));
        }
    }
    out
}

/// The image a real agent reports for `image`: the one it resolved, with `$upstream` replaced by
/// the parent's hostname (the port stays) and `:latest` added to a reference without tag or
/// digest (Azure/iotedge's edge agent does both before it pulls).
pub fn resolved_image(image: &str, parent_hostname: Option<&str>) -> String {
    let image = match (image.strip_prefix("$upstream"), parent_hostname) {
        (Some(rest), Some(parent)) => format!("{parent}{rest}"),
        _ => image.to_string(),
    };
    let last = image.rsplit('/').next().unwrap_or(&image);
    if last.contains(':') || last.contains('@') {
        image
    } else {
        format!("{image}:latest")
    }
}

/// The desired fields an agent echoes for a module (never `env`: it may hold registry passwords),
/// with the image as the agent resolved it.
fn echo(raw: &Value, parent_hostname: Option<&str>, out: &mut Map<String, Value>) {
    for key in [
        "version",
        "type",
        "status",
        "restartPolicy",
        "imagePullPolicy",
        "startupOrder",
    ] {
        if let Some(v) = raw.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(settings) = raw.get("settings").and_then(Value::as_object) {
        let mut echoed = Map::new();
        if let Some(image) = settings.get("image").and_then(Value::as_str) {
            echoed.insert(
                "image".into(),
                json!(resolved_image(image, parent_hostname)),
            );
        }
        if let Some(v) = settings.get("createOptions") {
            echoed.insert("createOptions".into(), v.clone());
        }
        out.insert("settings".into(), Value::Object(echoed));
    }
    out.entry("type").or_insert(json!("docker"));
}

/// Inputs of the `$edgeAgent` reported document.
#[derive(Clone, Debug)]
pub struct AgentReport<'a> {
    /// `lastDesiredStatus`.
    pub status: &'a DesiredStatus,
    /// Desired `$version` acted on.
    pub desired_version: Option<i64>,
    /// The deployment in force (the last valid one), if any.
    pub deployment: Option<&'a AgentDeployment>,
    /// The agent's own record (runtime status of edgeAgent).
    pub agent: &'a ModuleRecord,
    /// The image the agent runs when no deployment names one (`config.toml`).
    pub bootstrap_image: &'a str,
    /// edgeHub's record, when the agent created it.
    pub edge_hub: Option<&'a ModuleRecord>,
    /// Records of the custom modules the agent created.
    pub modules: &'a BTreeMap<String, ModuleRecord>,
    /// The parent's hostname (what `$upstream` resolves to); `None` on the top layer.
    pub parent_hostname: Option<&'a str>,
}

/// The full `$edgeAgent` reported properties.
pub fn agent_reported(report: &AgentReport<'_>) -> Value {
    let mut agent = record_json(report.agent);
    match report.deployment {
        Some(d) => echo(&d.edge_agent, report.parent_hostname, &mut agent),
        None => {
            agent.insert("type".into(), json!("docker"));
            let image = resolved_image(report.bootstrap_image, report.parent_hostname);
            agent.insert("settings".into(), json!({ "image": image }));
        }
    }
    agent.insert("imagePullPolicy".into(), json!("on-create"));
    let mut system = Map::new();
    system.insert("edgeAgent".into(), Value::Object(agent));
    if let (Some(d), Some(record)) = (report.deployment, report.edge_hub) {
        let mut hub = record_json(record);
        echo(&d.edge_hub.raw, report.parent_hostname, &mut hub);
        system.insert("edgeHub".into(), Value::Object(hub));
    }
    let mut modules = Map::new();
    if let Some(d) = report.deployment {
        for (name, record) in report.modules {
            let mut module = record_json(record);
            if let Some(desired) = d.modules.get(name) {
                echo(&desired.raw, report.parent_hostname, &mut module);
            }
            modules.insert(name.clone(), Value::Object(module));
        }
    }
    let mut runtime = json!({
        "type": "docker",
        "platform": {"os": "linux", "architecture": std::env::consts::ARCH, "version": RUNTIME_VERSION},
    });
    if let Some(settings) = report.deployment.and_then(|d| d.runtime.get("settings")) {
        // Registry credentials hold passwords: the agent does not echo them.
        let mut settings = settings.clone();
        if let Some(s) = settings.as_object_mut() {
            s.remove("registryCredentials");
        }
        runtime["settings"] = settings;
    }
    let mut out = json!({
        "schemaVersion": "1.1",
        "version": {"version": RUNTIME_VERSION, "build": "edge-sim", "commit": "edge-sim"},
        "lastDesiredStatus": report.status,
        "runtime": runtime,
        "systemModules": system,
        "modules": modules,
    });
    if let Some(v) = report.desired_version {
        out["lastDesiredVersion"] = json!(v);
    }
    out
}

/// A child connected to (or gone from) this device's edgeHub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientRecord {
    /// `connected` or `disconnected`.
    pub status: String,
    /// Start of the current connected streak.
    pub last_connected_time_utc: String,
    /// When it was last seen disconnecting.
    pub last_disconnect_time_utc: Option<String>,
}

/// The full `$edgeHub` reported properties.
pub fn edge_hub_reported(
    status: &DesiredStatus,
    desired_version: Option<i64>,
    clients: &BTreeMap<String, ClientRecord>,
) -> Value {
    let clients: Map<String, Value> = clients
        .iter()
        .map(|(id, c)| {
            let mut v =
                json!({"status": c.status, "lastConnectedTimeUtc": c.last_connected_time_utc});
            if let Some(t) = &c.last_disconnect_time_utc {
                v["lastDisconnectTimeUtc"] = json!(t);
            }
            (id.clone(), v)
        })
        .collect();
    let mut out = json!({
        "schemaVersion": "1.0",
        "version": {"version": RUNTIME_VERSION, "build": "edge-sim", "commit": "edge-sim"},
        "lastDesiredStatus": status,
        "clients": clients,
    });
    if let Some(v) = desired_version {
        out["lastDesiredVersion"] = json!(v);
    }
    out
}

/// The reported properties without the hub's bookkeeping (`$metadata`, `$version`).
pub fn strip_metadata(reported: &Value) -> Value {
    match reported {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_metadata(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The JSON merge patch that turns `current` into `target` (`null` removes), or `None` when they
/// are equal.
pub fn merge_patch(current: &Value, target: &Value) -> Option<Value> {
    match (current, target) {
        (Value::Object(cur), Value::Object(tgt)) => {
            let mut patch = Map::new();
            for (key, value) in tgt {
                match cur.get(key) {
                    Some(existing) => {
                        if let Some(p) = merge_patch(existing, value) {
                            patch.insert(key.clone(), p);
                        }
                    }
                    None => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            for key in cur.keys() {
                if !tgt.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        // An empty object cannot be set by a merge patch over an object; a non-object target
        // replaces whatever is there.
        (a, b) if a == b => None,
        (_, b) => Some(b.clone()),
    }
}

/// A UTC time as twins show it: `2021-06-12T00:27:46.3838704`.
pub fn twin_time(now: jiff::Timestamp) -> String {
    now.strftime("%Y-%m-%dT%H:%M:%S%.7f").to_string()
}

#[cfg(test)]
mod tests;
