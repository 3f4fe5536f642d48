//! Registry credentials that come from Secrets (`spec.edge.agentAuth`,
//! `spec.deployments[].registryCredentials`): the login type that carries a password without
//! ever printing it, and adding a deployment's logins to its manifest.
//!
//! The Secrets are read by the reconciler (`reconcile::registry_auth`); everything here is pure.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value, json};

use super::image::{UPSTREAM, registry_host};
use super::manifest::{
    DESIRED, EDGE_AGENT, JsonPath, LAYERED_CREDENTIAL_PREFIX, ManifestError, Manifests,
};

/// A registry password. `Debug` and `Display` print `<redacted>`; [`Password::expose`] is the
/// only way to the text, so it reaches rendered files and manifests and nothing else.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The password itself, for the config.toml or manifest that must carry it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user name and password for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryLogin {
    /// The registry host, as image references name it (`myregistry.azurecr.io`).
    pub address: String,
    pub username: String,
    pub password: Password,
}

/// A deployment's logins by credential name, per deployment name.
pub type DeploymentLogins = BTreeMap<String, Vec<(String, RegistryLogin)>>;

/// The `serveraddress` of `[agent.config.auth]` for a device whose agent image is `agent_image`
/// (already rewritten for its layer).
///
/// aziot-edged replaces a leading `$upstream` by the parent's hostname in the agent image and in
/// the auth's server address alike (aziot-edge `edgelet/edgelet-settings/src/docker/config.rs`,
/// `DockerConfig::parent_hostname_resolve`), so an image pulled through the parent is written
/// with `$upstream:<port>` as its server address: the registry host the image names, as the
/// device sees it. The parent's API proxy passes the login on to the registry behind it. An image
/// that is not pulled through the parent keeps the configured address.
pub fn agent_server_address(agent_image: &str, server_address: &str) -> String {
    match registry_host(agent_image) {
        Some(host) if host.starts_with(UPSTREAM) => host.to_string(),
        _ => server_address.to_string(),
    }
}

/// `manifests` with each deployment's `logins` added to its `$edgeAgent` registry credentials:
/// `properties.desired.runtime.settings.registryCredentials.<name>` of a standard manifest, the
/// dotted `properties.desired.runtime.settings.registryCredentials.<name>` entry of a layered
/// one. A name the manifest already sets is refused (every clash is reported): the Secret would
/// silently replace what the manifest says, or the other way round.
pub fn add_registry_credentials(
    mut manifests: Manifests,
    logins: &DeploymentLogins,
) -> Result<Manifests, Vec<ManifestError>> {
    let mut errors = Vec::new();
    for (deployment, entries) in logins {
        let Some(manifest) = manifests.get_mut(deployment) else {
            continue;
        };
        let layered = manifest.layered;
        let Some(agent) = agent_object(&mut manifest.content) else {
            continue;
        };
        for (name, login) in entries {
            let entry = json!({
                "username": login.username,
                "password": login.password.expose(),
                "address": login.address,
            });
            let taken = if layered {
                insert_new(agent, &format!("{LAYERED_CREDENTIAL_PREFIX}{name}"), entry)
            } else {
                insert_new(standard_credentials(agent), name, entry)
            };
            if !taken {
                continue;
            }
            errors.push(clash(deployment, name, layered));
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// `modulesContent.$edgeAgent` of a validated manifest.
fn agent_object(content: &mut Value) -> Option<&mut Map<String, Value>> {
    content
        .get_mut("modulesContent")?
        .get_mut(EDGE_AGENT)?
        .as_object_mut()
}

/// `properties.desired.runtime.settings.registryCredentials` of a standard `$edgeAgent`, made
/// when missing (the schema lets `settings` leave it out).
fn standard_credentials(agent: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let mut node = agent;
    for key in [DESIRED, "runtime", "settings", "registryCredentials"] {
        let child = node.entry(key).or_insert_with(|| json!({}));
        if !child.is_object() {
            *child = json!({});
        }
        node = child.as_object_mut().expect("just made an object");
    }
    node
}

/// Inserts `value` under `key` unless the key is taken; returns whether it was taken.
fn insert_new(map: &mut Map<String, Value>, key: &str, value: Value) -> bool {
    if map.contains_key(key) {
        return true;
    }
    map.insert(key.to_string(), value);
    false
}

fn clash(deployment: &str, name: &str, layered: bool) -> ManifestError {
    let in_manifest = if layered {
        JsonPath::of(&[
            "modulesContent",
            EDGE_AGENT,
            &format!("{LAYERED_CREDENTIAL_PREFIX}{name}"),
        ])
    } else {
        JsonPath::of(&[
            "modulesContent",
            EDGE_AGENT,
            DESIRED,
            "runtime",
            "settings",
            "registryCredentials",
            name,
        ])
    };
    ManifestError {
        deployment: deployment.to_string(),
        path: format!("spec.deployments[{deployment}].registryCredentials[{name}]"),
        problem: format!(
            "the manifest already sets a registry credential named {name:?} ({in_manifest})"
        ),
        fix: format!(
            "remove {name:?} from the manifest and keep its password only in the Secret, or give \
             this entry another name"
        ),
    }
}

#[cfg(test)]
#[path = "tests/registry.rs"]
mod tests;
