//! Rendering a manifest for a layer: below the top layer, images from `upstreamRegistries` are
//! pulled through the parent, so they become `$upstream:<upstreamPort>/<path>`, and registry
//! credentials for those registries get the address `$upstream:<upstreamPort>` to match them.

use std::fmt;

use serde_json::Value;

use super::image::{upstream_address, upstream_image};
use super::manifest::{DESIRED, EDGE_AGENT, LAYERED_CREDENTIAL_PREFIX, LAYERED_MODULE_PREFIX};
use crate::api::EdgeRuntimeSpec;

/// Which rendering of a deployment a device gets. Rendered content differs between them, so each
/// (deployment, variant) in use is its own IoT Hub configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    /// Layer 1: reaches the cloud; images stay as written.
    Top,
    /// Layer 2 and below: images from `upstreamRegistries` are pulled via `$upstream`.
    Lower,
}

impl Variant {
    /// The variant of a device in `layer` (top layer is 1; 0 is treated as top).
    pub fn for_layer(layer: u32) -> Self {
        if layer <= 1 {
            Variant::Top
        } else {
            Variant::Lower
        }
    }

    /// `top` or `lower`, as used in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Top => "top",
            Variant::Lower => "lower",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `content` (`{"modulesContent": ...}`, standard or layered) rendered for `variant`.
///
/// Top: returned unchanged. Lower: every `settings.image` under `$edgeAgent` — system modules and
/// modules of the full `properties.desired` form, and `properties.desired.modules.<m>` entries of
/// the layered form — is replaced by [`upstream_image`] when that applies, and every registry
/// credential's `address` (`runtime.settings.registryCredentials.<n>`, or the layered
/// `properties.desired.runtime.settings.registryCredentials.<n>` entry) by [`upstream_address`].
/// Other values are left as they are; rendering twice gives the same result. Malformed parts are
/// skipped, not fixed (validation reports them).
pub fn render_content(content: &Value, variant: Variant, edge: &EdgeRuntimeSpec) -> Value {
    let mut rendered = content.clone();
    if variant == Variant::Top {
        return rendered;
    }
    let Some(agent) = rendered
        .get_mut("modulesContent")
        .and_then(|m| m.get_mut(EDGE_AGENT))
        .and_then(Value::as_object_mut)
    else {
        return rendered;
    };
    for (key, value) in agent.iter_mut() {
        if key == DESIRED {
            for group in ["systemModules", "modules"] {
                if let Some(modules) = value.get_mut(group).and_then(Value::as_object_mut) {
                    for module in modules.values_mut() {
                        rewrite_module_image(module, edge);
                    }
                }
            }
            if let Some(credentials) = value
                .pointer_mut("/runtime/settings/registryCredentials")
                .and_then(Value::as_object_mut)
            {
                for credential in credentials.values_mut() {
                    rewrite_credential_address(credential, edge);
                }
            }
        } else if key.starts_with(LAYERED_MODULE_PREFIX) {
            rewrite_module_image(value, edge);
        } else if key.starts_with(LAYERED_CREDENTIAL_PREFIX) {
            rewrite_credential_address(value, edge);
        }
    }
    rendered
}

fn rewrite_credential_address(credential: &mut Value, edge: &EdgeRuntimeSpec) {
    let Some(address) = credential.get_mut("address") else {
        return;
    };
    if let Some(rewritten) = address.as_str().and_then(|a| upstream_address(a, edge)) {
        *address = Value::String(rewritten);
    }
}

fn rewrite_module_image(module: &mut Value, edge: &EdgeRuntimeSpec) {
    let Some(image) = module.get_mut("settings").and_then(|s| s.get_mut("image")) else {
        return;
    };
    if let Some(rewritten) = image.as_str().and_then(|i| upstream_image(i, edge)) {
        *image = Value::String(rewritten);
    }
}

#[cfg(test)]
#[path = "tests/render.rs"]
mod tests;
