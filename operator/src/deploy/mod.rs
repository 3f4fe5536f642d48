//! Module deployments of a hierarchy, as pure functions (no I/O): the reconciler reads the hub and
//! the ConfigMaps, calls these, and writes what they return (docs/architecture.md, "Deployments
//! and health").
//!
//! - [`manifest`]: resolving each deployment's manifest (inline or ConfigMap text) and validating it
//!   against the edgeAgent / edgeHub schemas in `operator/schemas/`.
//! - [`image`] and [`render`]: rewriting images to `$upstream:<port>/...` below the top layer.
//! - [`plan`]: the IoT Hub configurations of Automatic mode, with their ids; they find their
//!   devices through the ownership tags of `crate::ownership`.
//! - [`merge`]: the single manifest of PerDevice mode (base + layered deployments).
//! - [`registry`]: registry logins from Secrets, added to manifests and the agent's auth.
//! - [`gateway`]: whether every parent lets its children pull images (and, under `issuance: Est`,
//!   relays EST); [`nginx`] reads the API proxy configurations it judges.
//! - [`health`]: module health from `$edgeAgent` reported properties, and deployment readiness
//!   from configuration system metrics.

pub mod gateway;
pub mod health;
pub mod image;
pub mod manifest;
pub mod merge;
pub mod nginx;
pub mod plan;
pub mod registry;
pub mod render;
mod schema;

#[cfg(test)]
pub(crate) mod fixtures;

pub use gateway::{GatewayWarning, gateway_warnings};
pub use health::{DeploymentReadiness, deployment_status, modules_healthy, modules_status};
pub use image::{registry_host, upstream_image};
pub use manifest::{
    Manifest, ManifestError, Manifests, parse_manifest_text, resolve_manifests, validate_manifest,
};
pub use merge::merged_manifest;
pub use plan::{DesiredConfiguration, automatic_configurations, configuration_id};
pub use registry::{
    DeploymentLogins, Password, RegistryLogin, add_registry_credentials, agent_server_address,
};
pub use render::{Variant, render_content};
