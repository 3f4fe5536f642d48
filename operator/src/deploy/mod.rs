//! Module deployments of a hierarchy, as pure functions (no I/O): the reconciler reads the hub and
//! the ConfigMaps, calls these, and writes what they return.
//!
//! - [`manifest`]: resolving each deployment's manifest (inline or ConfigMap text) and validating it
//!   against the edgeAgent / edgeHub schemas in `operator/schemas/`.
//! - [`image`] and [`render`]: rewriting images to `$upstream:<port>/...` below the top layer.
//! - [`ownership`]: the twin tags the operator writes on each device, and the target conditions,
//!   ids and labels of the IoT Hub configurations that select devices by those tags.
//! - [`plan`]: the IoT Hub configurations of Automatic mode.
//! - [`merge`]: the single manifest of PerDevice mode (base + layered deployments).
//! - [`gateway`]: whether every parent lets its children pull images (DESIGN.md section 7).
//! - [`health`]: module health from `$edgeAgent` reported properties, and deployment readiness
//!   from configuration system metrics.

pub mod gateway;
pub mod health;
pub mod image;
pub mod manifest;
pub mod merge;
pub mod ownership;
pub mod plan;
pub mod render;
mod schema;

#[cfg(test)]
mod fixtures;

pub use gateway::{GatewayWarning, gateway_warnings};
pub use health::{DeploymentReadiness, deployment_status, modules_healthy, modules_status};
pub use image::{registry_host, upstream_image};
pub use manifest::{
    Manifest, ManifestError, Manifests, parse_manifest_text, resolve_manifests, validate_manifest,
};
pub use merge::merged_manifest;
pub use ownership::{
    HierarchyRef, configuration_id, configuration_labels, is_owned_configuration, layered_tag_key,
    ownership_tags, ownership_tags_patch, target_condition,
};
pub use plan::{DesiredConfiguration, automatic_configurations};
pub use render::{Variant, render_content};
