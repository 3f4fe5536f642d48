//! The edge manifest JSON schemas (draft-04, copied verbatim into `operator/schemas/`), compiled
//! once, and the translation of their errors into messages that name the JSON path and the fix.
//!
//! The whole-twin schemas validate standard deployments. Layered deployments hold single entries
//! (`properties.desired.modules.<m>` ...), so sub-schemas cut from the same files validate those:
//! the rules stay the upstream ones, nothing is restated by hand.

use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::{Map, Value, json};

use super::manifest::{JsonPath, ManifestError};

const EDGE_AGENT_1_1: &str = include_str!("../../schemas/azure-iot-edgeagent-deployment-1.1.json");
const EDGE_HUB_1_1: &str = include_str!("../../schemas/azure-iot-edgehub-deployment-1.1.json");
const EDGE_HUB_1_2: &str = include_str!("../../schemas/azure-iot-edgehub-deployment-1.2.json");

/// One compiled schema and its source document (kept to look up allowed property names).
pub(super) struct Schema {
    pub(super) document: Value,
    validator: Validator,
}

/// Every schema the operator validates manifests with.
pub(super) struct Schemas {
    /// `{"$edgeAgent": {"properties.desired": ...}}`, schemaVersion 1.1.
    pub(super) edge_agent_1_1: Schema,
    /// `{"$edgeHub": {"properties.desired": ...}}`, schemaVersion 1.1.
    pub(super) edge_hub_1_1: Schema,
    /// `{"$edgeHub": {"properties.desired": ...}}`, schemaVersion 1.2.
    pub(super) edge_hub_1_2: Schema,
    /// `{<module name>: <module>}`: the edgeAgent 1.1 `modules` object.
    pub(super) modules: Schema,
    /// `{<credential name>: <credential>}`: the edgeAgent 1.1 `registryCredentials` object.
    pub(super) registry_credentials: Schema,
    /// `{<route name>: <route>}`: the edgeHub 1.1 `routes` object.
    pub(super) routes: Schema,
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text)
        .expect("the embedded manifest schemas are valid JSON (a unit test checks)")
}

fn compile(document: Value) -> Schema {
    let validator = jsonschema::draft4::new(&document)
        .expect("the embedded manifest schemas compile as draft-04 (a unit test checks)");
    Schema {
        document,
        validator,
    }
}

/// A sub-schema of `root` at `pointer`, carrying the root's `definitions` so its `$ref`s resolve.
fn cut(root: &Value, pointer: &str) -> Value {
    let mut sub = root.pointer(pointer).cloned().expect(
        "the sub-schema pointers name objects of the embedded schemas (a unit test checks)",
    );
    if let (Some(obj), Some(definitions)) = (sub.as_object_mut(), root.get("definitions")) {
        obj.insert("definitions".into(), definitions.clone());
        obj.insert(
            "$schema".into(),
            json!("http://json-schema.org/draft-04/schema#"),
        );
    }
    sub
}

const AGENT_DESIRED: &str = "/properties/$edgeAgent/properties/properties.desired/properties";

pub(super) static SCHEMAS: LazyLock<Schemas> = LazyLock::new(|| {
    let agent = parse(EDGE_AGENT_1_1);
    let hub_1_1 = parse(EDGE_HUB_1_1);
    let modules = cut(&agent, &format!("{AGENT_DESIRED}/modules"));
    let registry_credentials = cut(
        &agent,
        &format!("{AGENT_DESIRED}/runtime/properties/settings/properties/registryCredentials"),
    );
    let routes = cut(
        &hub_1_1,
        "/properties/$edgeHub/properties/properties.desired/properties/routes",
    );
    Schemas {
        edge_agent_1_1: compile(agent),
        edge_hub_1_1: compile(hub_1_1),
        edge_hub_1_2: compile(parse(EDGE_HUB_1_2)),
        modules: compile(modules),
        registry_credentials: compile(registry_credentials),
        routes: compile(routes),
    }
});

impl Schema {
    /// Validates `instance`; each error's instance path is appended to `base` (after dropping
    /// its first `drop` segments, which `base` already names).
    pub(super) fn check(
        &self,
        deployment: &str,
        instance: &Value,
        base: &JsonPath,
        drop: usize,
        out: &mut Vec<ManifestError>,
    ) {
        for error in self.validator.iter_errors(instance) {
            out.extend(self.translate(deployment, instance, base, drop, &error));
        }
    }

    fn translate(
        &self,
        deployment: &str,
        instance: &Value,
        base: &JsonPath,
        drop: usize,
        error: &ValidationError<'_>,
    ) -> Vec<ManifestError> {
        let segments = pointer_segments(error.instance_path().as_str());
        let mut path = base.clone();
        let mut node = Some(instance);
        for (i, segment) in segments.iter().enumerate() {
            // Whether a segment is an array index depends on the node it indexes, not its text
            // (a module may be called "1").
            let in_array = node.is_some_and(Value::is_array);
            node = node.and_then(|n| match n {
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                Value::Object(map) => map.get(segment),
                _ => None,
            });
            if i < drop {
                continue;
            }
            match (in_array, segment.parse::<usize>()) {
                (true, Ok(index)) => path.push_index(index),
                _ => path.push_key(segment),
            }
        }
        // An error on the `{name: value}` wrapper itself: `base` already ends with the name.
        let at_wrapper = segments.len() < drop;
        let schema_node = self.schema_node(error.schema_path().as_str());
        let mistake = |path: JsonPath, problem: String, fix: String| ManifestError {
            deployment: deployment.to_string(),
            path: path.to_string(),
            problem,
            fix,
        };
        match error.kind() {
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default().to_string();
                let mut at = path.clone();
                at.push_key(&name);
                vec![mistake(at, "required property missing".into(), format!("add {name:?}{}", hint(&name)))]
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
                .iter()
                .map(|key| {
                    let mut at = path.clone();
                    if !at_wrapper {
                        at.push_key(key);
                    }
                    let fix = if key.starts_with("properties.desired.") {
                        "dotted keys belong to layered deployments: set `layered: true` on this deployment, \
                         or write the entry inside \"properties.desired\""
                            .to_string()
                    } else {
                        allowed_names(schema_node)
                    };
                    mistake(at, "property not allowed here".into(), fix)
                })
                .collect(),
            ValidationErrorKind::Type { kind } => {
                let expected = type_names(kind);
                let found = node.map(json_type).unwrap_or("nothing");
                let last = path.last_key().unwrap_or_default();
                let fix = if last.to_ascii_lowercase().starts_with("createoptions") {
                    "write createOptions as a string holding JSON, for example '{\"HostConfig\":{}}' (quote it in YAML)"
                        .to_string()
                } else {
                    format!("write {}", article(&expected))
                };
                vec![mistake(path, format!("expected {}, found {}", article(&expected), article(found)), fix)]
            }
            ValidationErrorKind::Enum { options } => {
                let options = list(options);
                vec![mistake(path, format!("must be one of {options}"), format!("use one of {options}"))]
            }
            ValidationErrorKind::Pattern { pattern } => vec![mistake(
                path,
                format!("does not match the pattern {pattern}"),
                "write a value that matches the pattern".into(),
            )],
            ValidationErrorKind::Minimum { limit } => vec![mistake(
                path,
                format!("is below the minimum {limit}"),
                format!("use a value of at least {limit}"),
            )],
            ValidationErrorKind::Maximum { limit } => vec![mistake(
                path,
                format!("is above the maximum {limit}"),
                format!("use a value of at most {limit}"),
            )],
            ValidationErrorKind::AnyOf { .. } if path.to_string().contains("routes") => vec![mistake(
                path,
                "is not a route".into(),
                "write the route as a string \"FROM <source> [WHERE <condition>] INTO <sink>\", or as an object \
                 {route, priority (0-9), timeToLiveSecs}"
                    .into(),
            )],
            other => vec![mistake(
                path,
                format!("fails the schema rule {:?}", other.keyword()),
                "compare this entry with the edge manifest schema in operator/schemas/".into(),
            )],
        }
    }

    /// The schema object that holds the keyword at `schema_path` (a JSON pointer that may pass
    /// through local `$ref`s). Used only to improve messages, so `None` is fine.
    fn schema_node(&self, schema_path: &str) -> Option<&Value> {
        let segments = pointer_segments(schema_path);
        let (_keyword, parents) = segments.split_last()?;
        let mut node = &self.document;
        for segment in parents {
            node = if segment == "$ref" {
                let target = node.get("$ref")?.as_str()?.strip_prefix('#')?;
                self.document.pointer(target)?
            } else {
                match node {
                    Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                    Value::Object(map) => map.get(segment)?,
                    _ => return None,
                }
            };
        }
        // A `$ref` node holds its keywords at the target.
        if let Some(target) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            node = self.document.pointer(target)?;
        }
        Some(node)
    }
}

/// Unescaped segments of a JSON pointer.
fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// What may appear where an unknown property was found.
fn allowed_names(schema: Option<&Value>) -> String {
    let Some(schema) = schema else {
        return "remove it or correct its spelling".into();
    };
    let mut parts = Vec::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let names: Vec<&str> = props.keys().map(String::as_str).collect();
        parts.push(format!("one of {}", names.join(", ")));
    }
    if let Some(patterns) = schema.get("patternProperties").and_then(Value::as_object) {
        for pattern in patterns.keys() {
            parts.push(format!("a name matching {pattern}"));
        }
    }
    if parts.is_empty() {
        "remove it".into()
    } else {
        format!(
            "remove it or correct its name; allowed here: {}",
            parts.join(", or ")
        )
    }
}

/// Extra advice for properties people often leave out.
fn hint(property: &str) -> &'static str {
    match property {
        "image" => {
            " with the module's container image, for example \"mcr.microsoft.com/<repository>:<tag>\""
        }
        "schemaVersion" => " (\"1.1\"; edgeHub also accepts \"1.2\")",
        "restartPolicy" => " (always, on-failure, on-unhealthy or never)",
        "status" => " (running or stopped)",
        "type" => " (docker)",
        "properties.desired" => " holding the module twin's desired properties",
        _ => "",
    }
}

fn type_names(kind: &TypeKind) -> String {
    match kind {
        TypeKind::Single(t) => t.to_string(),
        TypeKind::Multiple(set) => set
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

/// "a string", "an object", "an integer or a string".
fn article(kinds: &str) -> String {
    kinds
        .split(" or ")
        .map(|k| {
            if k.starts_with(['a', 'e', 'i', 'o', 'u']) {
                format!("an {k}")
            } else {
                format!("a {k}")
            }
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn list(options: &Value) -> String {
    match options {
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// `{key: value}`, the instance shape the name-keyed sub-schemas validate.
pub(super) fn single(key: &str, value: &Value) -> Value {
    let mut map = Map::new();
    map.insert(key.to_string(), value.clone());
    Value::Object(map)
}

#[cfg(test)]
#[path = "tests/schema.rs"]
mod tests;
