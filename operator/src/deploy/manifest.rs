//! Deployment manifests: resolving each named deployment's content (inline or from ConfigMap
//! text) and validating it before anything reaches the hub.
//!
//! A standard (base) deployment holds full twins: `$edgeAgent` and `$edgeHub` are checked against
//! the edgeAgent 1.1 and edgeHub 1.1 / 1.2 schemas, picked by their own `schemaVersion`. A layered
//! deployment holds dotted entries; each entry is checked against the matching part of the same
//! schemas. Every error names the deployment, the JSON path and the fix; all errors are returned
//! at once. Error texts never repeat manifest values (they may hold registry passwords).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use super::schema::{SCHEMAS, single};
use crate::api::{ConfigMapKeyRef, DeviceType, EdgeHierarchySpec};

/// Key of the edgeAgent twin in `modulesContent`.
pub const EDGE_AGENT: &str = "$edgeAgent";
/// Key of the edgeHub twin in `modulesContent`.
pub const EDGE_HUB: &str = "$edgeHub";
/// Key of a twin's whole desired properties in a manifest.
pub const DESIRED: &str = "properties.desired";
/// Prefix of a layered deployment's module entries in `$edgeAgent`.
pub const LAYERED_MODULE_PREFIX: &str = "properties.desired.modules.";
/// Prefix of a layered deployment's registry credential entries in `$edgeAgent`.
pub const LAYERED_CREDENTIAL_PREFIX: &str =
    "properties.desired.runtime.settings.registryCredentials.";
/// Prefix of a layered deployment's route entries in `$edgeHub`.
pub const LAYERED_ROUTE_PREFIX: &str = "properties.desired.routes.";
/// Prefix of a layered deployment's partial module twin entries.
pub const DESIRED_SECTION_PREFIX: &str = "properties.desired.";

/// A deployment whose manifest has been resolved and validated.
#[derive(Clone, PartialEq)]
pub struct Manifest {
    /// Deployment name from the spec.
    pub name: String,
    /// Priority from the spec (higher wins).
    pub priority: i32,
    /// Whether it is layered (dotted entries added on top of a base deployment).
    pub layered: bool,
    /// The manifest as written: `{"modulesContent": {...}}`, not yet rendered for a layer.
    pub content: Value,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("name", &self.name)
            .field("priority", &self.priority)
            .field("layered", &self.layered)
            .field("content", &redacted(&self.content))
            .finish()
    }
}

/// Validated manifests by deployment name.
pub type Manifests = BTreeMap<String, Manifest>;

/// Why a deployment's manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManifestError {
    /// The deployment's name.
    pub deployment: String,
    /// Where: a JSON path into the content (`modulesContent.$edgeAgent['properties.desired']...`),
    /// or the ConfigMap key the content comes from.
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deployment {:?}: ", self.deployment)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for ManifestError {}

/// A path into a manifest, printed the way users read it:
/// `modulesContent.$edgeAgent['properties.desired'].modules.sensor.settings.image`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonPath(Vec<PathSegment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSegment {
    Key(String),
    Index(usize),
}

impl JsonPath {
    /// A path of object keys.
    pub fn of(keys: &[&str]) -> Self {
        Self(
            keys.iter()
                .map(|k| PathSegment::Key((*k).to_string()))
                .collect(),
        )
    }

    /// Appends an object key.
    pub fn push_key(&mut self, key: &str) {
        self.0.push(PathSegment::Key(key.to_string()));
    }

    /// Appends an array index.
    pub fn push_index(&mut self, index: usize) {
        self.0.push(PathSegment::Index(index));
    }

    /// This path with one more key.
    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.push_key(key);
        next
    }

    /// The last segment when it is a key.
    pub fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(PathSegment::Key(k)) => Some(k),
            _ => None,
        }
    }
}

/// Keys that read well after a dot; anything else is bracketed and quoted.
fn is_plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-')
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(k) if is_plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                PathSegment::Key(k) => {
                    write!(f, "['{}']", k.replace('\\', "\\\\").replace('\'', "\\'"))?
                }
                PathSegment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Parses the text of a ConfigMap key holding a deployment manifest (JSON).
///
/// On a syntax error the message names the deployment, the line and column, and the fix; it does
/// not quote the text (which may hold registry passwords).
pub fn parse_manifest_text(deployment_name: &str, text: &str) -> Result<Value, ManifestError> {
    serde_json::from_str::<Value>(text).map_err(|e| ManifestError {
        deployment: deployment_name.to_string(),
        path: String::new(),
        problem: format!(
            "the ConfigMap text is not valid JSON ({} at line {}, column {})",
            syntax_problem(&e),
            e.line(),
            e.column()
        ),
        fix: "store the manifest as JSON, {\"modulesContent\": {...}}, under the ConfigMap key the deployment names"
            .into(),
    })
}

/// serde_json's description of a syntax error without its position suffix.
fn syntax_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Validates one deployment's content (`{"modulesContent": {...}}`), standard or layered.
///
/// Returns every problem found; `Ok` means the content can be rendered, merged and sent to the hub.
pub fn validate_manifest(
    deployment_name: &str,
    layered: bool,
    content: &Value,
) -> Result<(), Vec<ManifestError>> {
    let mut out = Vec::new();
    let err = |path: JsonPath, problem: &str, fix: &str| ManifestError {
        deployment: deployment_name.to_string(),
        path: path.to_string(),
        problem: problem.to_string(),
        fix: fix.to_string(),
    };
    let Some(top) = content.as_object() else {
        out.push(err(
            JsonPath::default(),
            "the content is not an object",
            "write the manifest as {\"modulesContent\": {\"$edgeAgent\": ..., \"$edgeHub\": ...}}",
        ));
        return Err(out);
    };
    for key in top.keys().filter(|k| *k != "modulesContent") {
        let fix = if key == "deviceContent" || key == "moduleContent" {
            "IoT Edge deployments carry modulesContent only; remove this key"
        } else {
            "remove it; a deployment's content holds only modulesContent"
        };
        out.push(err(JsonPath::of(&[key]), "property not allowed here", fix));
    }
    let base = JsonPath::of(&["modulesContent"]);
    match top.get("modulesContent") {
        None => out.push(err(
            base,
            "required property missing",
            "add modulesContent with the $edgeAgent and $edgeHub twins",
        )),
        Some(Value::Object(modules)) => {
            if layered {
                check_layered(deployment_name, modules, &base, &mut out);
            } else {
                check_standard(deployment_name, modules, &base, &mut out);
            }
        }
        Some(_) => out.push(err(
            base,
            "expected an object",
            "write modulesContent as an object keyed by twin",
        )),
    }
    if let Some(Value::Object(modules)) = top.get("modulesContent") {
        let base = JsonPath::of(&["modulesContent"]);
        check_twin_keys(deployment_name, modules, &base, &mut out);
        check_module_count(deployment_name, modules, &base, &mut out);
    }
    if out.is_empty() {
        Ok(())
    } else {
        out.sort();
        out.dedup();
        Err(out)
    }
}

/// Most modules one deployment may set ("IoT Hub quotas and throttling": modules per deployment).
pub const MAX_MODULES_PER_DEPLOYMENT: usize = 50;

/// Characters IoT Hub refuses in a twin property name ("Understand device twins": no control
/// characters, `.`, `$` or space; the service's 400004 error names `#` too).
fn bad_twin_key(key: &str) -> Option<String> {
    let bad: Vec<String> = key
        .chars()
        .filter(|c| c.is_control() || matches!(c, '.' | '$' | '#' | ' '))
        .map(|c| format!("{c:?}"))
        .collect();
    (!bad.is_empty() || key.is_empty()).then(|| {
        if bad.is_empty() {
            "an empty name".to_string()
        } else {
            bad.join(", ")
        }
    })
}

/// Every property name inside the desired properties a deployment sets must be one IoT Hub
/// accepts in a twin, or the hub refuses the whole configuration.
fn check_twin_keys(
    deployment: &str,
    modules: &serde_json::Map<String, Value>,
    base: &JsonPath,
    out: &mut Vec<ManifestError>,
) {
    fn walk(value: &Value, at: &JsonPath, found: &mut Vec<(JsonPath, String)>) {
        if let Value::Object(map) = value {
            for (key, inner) in map {
                let here = at.key(key);
                if let Some(bad) = bad_twin_key(key) {
                    found.push((here.clone(), bad));
                }
                walk(inner, &here, found);
            }
        }
    }
    let mut found = Vec::new();
    for (twin, entries) in modules {
        let Some(entries) = entries.as_object() else {
            continue;
        };
        for (key, value) in entries.iter().filter(|(k, _)| k.starts_with(DESIRED)) {
            walk(value, &base.key(twin).key(key), &mut found);
        }
    }
    for (path, bad) in found {
        let path = path.to_string();
        // One error per place: a name the schema refused already says what to change.
        if out.iter().any(|e| e.path == path) {
            continue;
        }
        out.push(ManifestError {
            deployment: deployment.to_string(),
            path,
            problem: format!("IoT Hub refuses this twin property name: it contains {bad}"),
            fix: "rename the property without control characters, '.', '$', '#' or spaces".into(),
        });
    }
}

/// A deployment may set at most [`MAX_MODULES_PER_DEPLOYMENT`] modules.
fn check_module_count(
    deployment: &str,
    modules: &serde_json::Map<String, Value>,
    base: &JsonPath,
    out: &mut Vec<ManifestError>,
) {
    let Some(agent) = modules.get(EDGE_AGENT).and_then(Value::as_object) else {
        return;
    };
    let standard = agent
        .get(DESIRED)
        .and_then(|d| d.get("modules"))
        .and_then(Value::as_object)
        .map_or(0, |m| m.len());
    let layered = agent
        .keys()
        .filter(|k| k.starts_with(LAYERED_MODULE_PREFIX))
        .count();
    let count = standard + layered;
    if count > MAX_MODULES_PER_DEPLOYMENT {
        out.push(ManifestError {
            deployment: deployment.to_string(),
            path: base.key(EDGE_AGENT).to_string(),
            problem: format!(
                "{count} modules, more than the {MAX_MODULES_PER_DEPLOYMENT} IoT Hub allows in one deployment"
            ),
            fix: "split the modules over a base and layered deployments".into(),
        });
    }
}

fn check_standard(
    deployment: &str,
    modules: &serde_json::Map<String, Value>,
    base: &JsonPath,
    out: &mut Vec<ManifestError>,
) {
    let err = |path: JsonPath, problem: String, fix: String| ManifestError {
        deployment: deployment.to_string(),
        path: path.to_string(),
        problem,
        fix,
    };
    for twin in [EDGE_AGENT, EDGE_HUB] {
        let Some(value) = modules.get(twin) else {
            out.push(err(
                base.key(twin),
                "required property missing".into(),
                format!("add {twin} with its \"properties.desired\" (a standard deployment sets both system twins)"),
            ));
            continue;
        };
        let version = value
            .get(DESIRED)
            .and_then(|d| d.get("schemaVersion"))
            .and_then(Value::as_str);
        // Without a readable schemaVersion the default schema reports what is missing.
        let schema = match (twin == EDGE_AGENT, version) {
            (true, Some("1.1") | None) => &SCHEMAS.edge_agent_1_1,
            (false, Some("1.1") | None) => &SCHEMAS.edge_hub_1_1,
            (false, Some("1.2")) => &SCHEMAS.edge_hub_1_2,
            (_, Some(other)) => {
                let supported = if twin == EDGE_AGENT {
                    "\"1.1\""
                } else {
                    "\"1.1\" or \"1.2\""
                };
                out.push(err(
                    base.key(twin).key(DESIRED).key("schemaVersion"),
                    format!(
                        "schemaVersion {other:?} has no {twin} schema the operator validates with"
                    ),
                    format!("set schemaVersion to {supported} (IoT Edge 1.4 and later read it)"),
                ));
                continue;
            }
        };
        schema.check(deployment, &single(twin, value), base, 0, out);
    }
    let agent_modules = modules
        .get(EDGE_AGENT)
        .and_then(|a| a.get(DESIRED))
        .and_then(|d| d.get("modules"))
        .and_then(Value::as_object);
    for (name, twin) in modules
        .iter()
        .filter(|(k, _)| *k != EDGE_AGENT && *k != EDGE_HUB)
    {
        check_module_twin(deployment, name, twin, false, base, out);
        if let Some(agent_modules) = agent_modules
            && !name.starts_with('$')
            && !agent_modules.contains_key(name)
        {
            out.push(err(
                base.key(name),
                format!("sets the twin of module {name:?}, which this deployment does not run"),
                "correct the name (module names are case-sensitive) or add the module under $edgeAgent modules".into(),
            ));
        }
    }
}

fn check_layered(
    deployment: &str,
    modules: &serde_json::Map<String, Value>,
    base: &JsonPath,
    out: &mut Vec<ManifestError>,
) {
    let err = |path: JsonPath, problem: &str, fix: String| ManifestError {
        deployment: deployment.to_string(),
        path: path.to_string(),
        problem: problem.to_string(),
        fix,
    };
    match modules.get(EDGE_AGENT) {
        None => out.push(err(
            base.key(EDGE_AGENT),
            "required property missing",
            "add \"$edgeAgent\": {} (IoT Hub requires the edgeAgent object in every layered deployment, even empty)"
                .into(),
        )),
        Some(Value::Object(entries)) => {
            let at = base.key(EDGE_AGENT);
            for (key, value) in entries {
                if let Some(module) = key.strip_prefix(LAYERED_MODULE_PREFIX) {
                    // Validated as `{name: module}` against the modules object of the schema, so the
                    // name pattern is checked too; the name segment is already in the path.
                    SCHEMAS.modules.check(deployment, &single(module, value), &at.key(key), 1, out);
                } else if let Some(name) = key.strip_prefix(LAYERED_CREDENTIAL_PREFIX) {
                    SCHEMAS.registry_credentials.check(deployment, &single(name, value), &at.key(key), 1, out);
                } else if key == DESIRED {
                    out.push(err(
                        at.key(key),
                        "a layered deployment cannot replace the whole edgeAgent configuration",
                        format!(
                            "add modules as \"{LAYERED_MODULE_PREFIX}<name>\" entries, or make this a standard \
                             deployment (layered: false)"
                        ),
                    ));
                } else {
                    out.push(err(
                        at.key(key),
                        "entry not supported in a layered deployment's $edgeAgent",
                        format!("use \"{LAYERED_MODULE_PREFIX}<name>\" or \"{LAYERED_CREDENTIAL_PREFIX}<name>\" keys"),
                    ));
                }
            }
        }
        Some(_) => out.push(err(base.key(EDGE_AGENT), "expected an object", "write \"$edgeAgent\": {...}".into())),
    }
    match modules.get(EDGE_HUB) {
        None => {}
        Some(Value::Object(entries)) => {
            let at = base.key(EDGE_HUB);
            for (key, value) in entries {
                if let Some(route) = key.strip_prefix(LAYERED_ROUTE_PREFIX) {
                    SCHEMAS
                        .routes
                        .check(deployment, &single(route, value), &at.key(key), 1, out);
                } else {
                    out.push(err(
                        at.key(key),
                        "entry not supported in a layered deployment's $edgeHub",
                        format!("add routes as \"{LAYERED_ROUTE_PREFIX}<name>\" entries"),
                    ));
                }
            }
        }
        Some(_) => out.push(err(
            base.key(EDGE_HUB),
            "expected an object",
            "write \"$edgeHub\": {...}".into(),
        )),
    }
    for (name, twin) in modules
        .iter()
        .filter(|(k, _)| *k != EDGE_AGENT && *k != EDGE_HUB)
    {
        check_module_twin(deployment, name, twin, true, base, out);
    }
}

/// A module twin entry of `modulesContent`: `{"properties.desired": {...}}`, or in a layered
/// deployment also `{"properties.desired.<section>": ...}`.
fn check_module_twin(
    deployment: &str,
    name: &str,
    twin: &Value,
    layered: bool,
    base: &JsonPath,
    out: &mut Vec<ManifestError>,
) {
    let at = base.key(name);
    let err = |path: JsonPath, problem: &str, fix: &str| ManifestError {
        deployment: deployment.to_string(),
        path: path.to_string(),
        problem: problem.to_string(),
        fix: fix.to_string(),
    };
    if name.starts_with('$') {
        out.push(err(
            at,
            "unknown system twin",
            "only $edgeAgent and $edgeHub are system twins; correct the name",
        ));
        return;
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || name.is_empty()
    {
        out.push(err(
            at,
            "not a module name",
            "module names use letters, digits, '_' and '-' (^[a-zA-Z0-9_-]+$)",
        ));
        return;
    }
    let Some(entries) = twin.as_object() else {
        out.push(err(
            at,
            "expected an object",
            "write the module twin as {\"properties.desired\": {...}}",
        ));
        return;
    };
    if entries.is_empty() {
        out.push(err(
            at.clone(),
            "the module twin sets nothing",
            "add \"properties.desired\" or remove the entry",
        ));
    }
    for (key, value) in entries {
        if key == DESIRED {
            if !value.is_object() {
                out.push(err(
                    at.key(key),
                    "expected an object",
                    "write the module's desired properties as an object",
                ));
            }
        } else if layered
            && key
                .strip_prefix(DESIRED_SECTION_PREFIX)
                .is_some_and(valid_section)
        {
            // A partial update of the module twin; any JSON value is a valid section.
        } else {
            let fix = if layered {
                "use \"properties.desired\" (replaces the module's desired properties) or \"properties.desired.<section>\" (merges one section)"
            } else {
                "use \"properties.desired\"; dotted \"properties.desired.<section>\" keys need `layered: true`"
            };
            out.push(err(at.key(key), "property not allowed here", fix));
        }
    }
}

fn valid_section(section: &str) -> bool {
    !section.is_empty()
        && section
            .split('.')
            .all(|part| !part.is_empty() && !part.starts_with('$'))
}

/// Resolves and validates every deployment of `spec`.
///
/// `config_map_text` returns the text of a ConfigMap key, or `None` when the ConfigMap or the key
/// does not exist. Besides each manifest, it checks the priority rules of IoT Hub layering for the
/// devices that use them: a layered deployment must rank above the base deployment of every device
/// it is added to, and two layered deployments of one device that set the same module or route
/// must not share a priority (IoT Hub would pick by creation time, which the operator does not
/// control). Returns all problems at once.
pub fn resolve_manifests<'a>(
    spec: &EdgeHierarchySpec,
    config_map_text: impl Fn(&ConfigMapKeyRef) -> Option<&'a str>,
) -> Result<Manifests, Vec<ManifestError>> {
    let mut out = Vec::new();
    let mut manifests = Manifests::new();
    for d in &spec.deployments {
        let content = match (&d.content, &d.config_map_ref) {
            (Some(content), None) => content.clone(),
            (None, Some(cm)) => {
                let from = format!("configMap {:?} key {:?}", cm.name, cm.key);
                match config_map_text(cm) {
                    None => {
                        out.push(ManifestError {
                            deployment: d.name.clone(),
                            path: from,
                            problem: "the ConfigMap or its key does not exist".into(),
                            fix: format!(
                                "create ConfigMap {:?} in the hierarchy's namespace with key {:?} holding the manifest JSON, \
                                 or correct configMapRef",
                                cm.name, cm.key
                            ),
                        });
                        continue;
                    }
                    Some(text) => match parse_manifest_text(&d.name, text) {
                        Ok(v) => v,
                        Err(mut e) => {
                            e.path = from;
                            out.push(e);
                            continue;
                        }
                    },
                }
            }
            _ => {
                out.push(ManifestError {
                    deployment: d.name.clone(),
                    path: format!("spec.deployments[{}]", d.name),
                    problem: "a deployment needs exactly one of content and configMapRef".into(),
                    fix: "keep either the inline content or the configMapRef".into(),
                });
                continue;
            }
        };
        match validate_manifest(&d.name, d.layered, &content) {
            Ok(()) => {
                manifests.insert(
                    d.name.clone(),
                    Manifest {
                        name: d.name.clone(),
                        priority: d.priority,
                        layered: d.layered,
                        content,
                    },
                );
            }
            Err(errors) => out.extend(errors),
        }
    }
    check_priorities(spec, &manifests, &mut out);
    if out.is_empty() {
        Ok(manifests)
    } else {
        out.sort();
        out.dedup();
        Err(out)
    }
}

fn check_priorities(spec: &EdgeHierarchySpec, manifests: &Manifests, out: &mut Vec<ManifestError>) {
    let mut reported = BTreeSet::new();
    for device in spec
        .devices
        .iter()
        .filter(|d| d.device_type == DeviceType::Edge)
    {
        if device.deployment.is_none() && !device.layered_deployments.is_empty() {
            out.push(ManifestError {
                deployment: device.layered_deployments[0].clone(),
                path: format!("spec.devices[{}].deployment", device.id),
                problem: format!("device {:?} has layered deployments but no base deployment", device.id),
                fix: "name the device's base deployment; IoT Hub applies layered deployments only on top of one".into(),
            });
        }
        let base = device.deployment.as_deref().and_then(|b| manifests.get(b));
        let layers: Vec<&Manifest> = device
            .layered_deployments
            .iter()
            .filter_map(|l| manifests.get(l))
            .collect();
        for layer in &layers {
            if let Some(base) = base
                && layer.priority <= base.priority
                && reported.insert((layer.name.clone(), base.name.clone()))
            {
                out.push(ManifestError {
                    deployment: layer.name.clone(),
                    path: format!("spec.deployments[{}].priority", layer.name),
                    problem: format!(
                        "priority {} is not above the priority {} of base deployment {:?}, which device {:?} also runs",
                        layer.priority, base.priority, base.name, device.id
                    ),
                    fix: format!(
                        "raise this layered deployment's priority above {} (IoT Hub applies layered deployments only on top of lower-priority base deployments)",
                        base.priority
                    ),
                });
            }
        }
        for (i, a) in layers.iter().enumerate() {
            for b in &layers[i + 1..] {
                if a.priority != b.priority || a.name == b.name {
                    continue;
                }
                let shared: Vec<String> = layered_keys(a)
                    .intersection(&layered_keys(b))
                    .cloned()
                    .collect();
                let pair = if a.name < b.name {
                    (a.name.clone(), b.name.clone())
                } else {
                    (b.name.clone(), a.name.clone())
                };
                if !shared.is_empty() && reported.insert(pair.clone()) {
                    out.push(ManifestError {
                        deployment: pair.1.clone(),
                        path: format!("spec.deployments[{}].priority", pair.1),
                        problem: format!(
                            "layered deployments {:?} and {:?} both set {} with the same priority {} on device {:?}, so which one wins is undefined",
                            pair.0,
                            pair.1,
                            shared.join(", "),
                            a.priority,
                            device.id
                        ),
                        fix: "give one of them a higher priority, or rename the clashing entries".into(),
                    });
                }
            }
        }
    }
}

/// The twin entries a layered deployment sets, as comparable keys (`$edgeAgent/<dotted key>`).
fn layered_keys(manifest: &Manifest) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    if let Some(modules) = manifest
        .content
        .get("modulesContent")
        .and_then(Value::as_object)
    {
        for (twin, entries) in modules {
            if let Some(entries) = entries.as_object() {
                keys.extend(entries.keys().map(|k| format!("{twin}/{k}")));
            }
        }
    }
    keys
}

/// Names of environment variables whose values are treated as secrets when printing manifests.
fn is_secret_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "SECRET",
        "TOKEN",
        "KEY",
        "CONNECTIONSTRING",
        "CONNECTION_STRING",
    ]
    .iter()
    .any(|word| upper.contains(word))
}

/// A copy of a manifest safe to print: registry passwords and secret-looking environment values
/// are replaced by `<redacted>`. Used by the hand-written `Debug` impls of types holding manifests.
pub fn redacted(content: &Value) -> Value {
    fn walk(value: &mut Value, parent_key: &str) {
        let Value::Object(map) = value else { return };
        for (key, child) in map.iter_mut() {
            if key == "password" {
                *child = Value::String("<redacted>".into());
            } else if parent_key == "env" && is_secret_env(key) {
                if let Some(v) = child.get_mut("value") {
                    *v = Value::String("<redacted>".into());
                }
            } else {
                walk(child, key);
            }
        }
    }
    let mut copy = content.clone();
    walk(&mut copy, "");
    copy
}

#[cfg(test)]
#[path = "tests/manifest.rs"]
mod tests;
