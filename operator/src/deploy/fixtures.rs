//! Test fixtures: the repository's example hierarchies, parsed as users write them.

use serde_json::Value;

use super::manifest::{Manifests, resolve_manifests};
use crate::api::{EdgeHierarchy, EdgeHierarchySpec, Topology, validate};

pub const TUTORIAL_YAML: &str = include_str!("../../../examples/tutorial.yaml");
pub const FACTORY_YAML: &str = include_str!("../../../examples/factory.yaml");

/// A parsed example with its topology and resolved manifests.
pub struct Example {
    pub spec: EdgeHierarchySpec,
    pub topology: Topology,
    pub manifests: Manifests,
}

pub fn parse_spec(yaml: &str) -> EdgeHierarchySpec {
    let resource: EdgeHierarchy =
        serde_yaml::from_str(yaml).expect("example parses as an EdgeHierarchy");
    resource.spec
}

pub fn example(yaml: &str) -> Example {
    let spec = parse_spec(yaml);
    let topology = validate(&spec).expect("example spec is valid");
    let manifests = resolve_manifests(&spec, |_| None).expect("example manifests are valid");
    Example {
        spec,
        topology,
        manifests,
    }
}

pub fn tutorial() -> Example {
    example(TUTORIAL_YAML)
}

pub fn factory() -> Example {
    example(FACTORY_YAML)
}

/// Inline content of the named deployment of a spec.
pub fn content(spec: &EdgeHierarchySpec, name: &str) -> Value {
    spec.deployments
        .iter()
        .find(|d| d.name == name)
        .and_then(|d| d.content.clone())
        .unwrap_or_else(|| panic!("deployment {name} has inline content"))
}

/// Mutable access to a JSON pointer that must exist in a fixture.
pub fn at<'a>(value: &'a mut Value, pointer: &str) -> &'a mut Value {
    value
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("fixture has {pointer}"))
}

/// JSON pointer into `$edgeAgent`'s desired properties of a standard manifest.
pub fn agent(rest: &str) -> String {
    format!("/modulesContent/$edgeAgent/properties.desired{rest}")
}
