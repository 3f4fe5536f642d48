//! Registry credentials from the user's Secrets: `spec.edge.agentAuth` and every
//! `spec.deployments[].registryCredentials[]`. Observe (one read per Secret named, before
//! anything is written), then [`resolve`], pure: the logins, or every problem at once, each
//! naming the hierarchy field, the Secret, the key and the fix, and never a value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::error::Error;
use crate::api::{EdgeHierarchy, EdgeHierarchySpec, RegistrySecretRef};
use crate::deploy::image::{DOCKER_HUB, same_registry};
use crate::deploy::{DeploymentLogins, Password, RegistryLogin, registry_host};

/// The logins a hierarchy's spec asks for, with their user names and passwords.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RegistryLogins {
    /// `spec.edge.agentAuth`, with `serverAddress` as written.
    pub agent: Option<RegistryLogin>,
    /// `spec.deployments[].registryCredentials`, by deployment and credential name.
    pub deployments: DeploymentLogins,
}

/// One reason the registry credentials cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RegistryAuthProblem {
    /// The hierarchy field, e.g. `spec.deployments[web].registryCredentials[acr].secretRef.name`.
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for RegistryAuthProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; fix: {}", self.field, self.problem, self.fix)
    }
}

/// Every problem found, printable as one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAuthErrors(pub Vec<RegistryAuthProblem>);

impl fmt::Display for RegistryAuthErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("registry credentials cannot be used: ")?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RegistryAuthErrors {}

/// Names of the Secrets the spec reads registry credentials from (a change to one must
/// re-reconcile the hierarchy).
pub fn secret_names(spec: &EdgeHierarchySpec) -> BTreeSet<&str> {
    let agent = spec.edge.agent_auth.iter().map(|a| &a.secret_ref);
    let deployments = spec
        .deployments
        .iter()
        .flat_map(|d| d.registry_credentials.iter().map(|c| &c.secret_ref));
    agent.chain(deployments).map(|r| r.name.as_str()).collect()
}

/// Reads the Secrets the hierarchy names for registry credentials and resolves its logins. A
/// missing Secret or key stalls the hierarchy ([`Error::RegistryAuth`]) before anything is
/// written; a failed read is retried.
pub async fn read(
    client: &kube::Client,
    hierarchy: &EdgeHierarchy,
) -> Result<RegistryLogins, Error> {
    let names = secret_names(&hierarchy.spec);
    if names.is_empty() {
        return Ok(RegistryLogins::default());
    }
    let namespace = hierarchy.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut found = BTreeMap::new();
    for name in names {
        found.insert(name.to_string(), api.get_opt(name).await?);
    }
    resolve(&hierarchy.spec, &namespace, &found).map_err(Error::RegistryAuth)
}

/// The logins of `spec` from the Secrets as read (`None`: the Secret does not exist), or every
/// problem: a missing Secret or key, a value that is empty, not UTF-8 or holds control
/// characters, a credential named twice, an agent server address that is not agentImage's
/// registry.
pub fn resolve(
    spec: &EdgeHierarchySpec,
    namespace: &str,
    secrets: &BTreeMap<String, Option<Secret>>,
) -> Result<RegistryLogins, RegistryAuthErrors> {
    let mut problems = Vec::new();
    let mut logins = RegistryLogins::default();
    if let Some(auth) = &spec.edge.agent_auth {
        check_agent_address(&spec.edge.agent_image, &auth.server_address, &mut problems);
        let field = "spec.edge.agentAuth.secretRef";
        if let Some((username, password)) =
            read_login(field, &auth.secret_ref, namespace, secrets, &mut problems)
        {
            logins.agent = Some(RegistryLogin {
                address: auth.server_address.clone(),
                username,
                password,
            });
        }
    }
    for d in &spec.deployments {
        let mut names = BTreeSet::new();
        for c in &d.registry_credentials {
            let field = format!(
                "spec.deployments[{}].registryCredentials[{}]",
                d.name, c.name
            );
            if !names.insert(c.name.as_str()) {
                problems.push(RegistryAuthProblem {
                    field: field.clone(),
                    problem: format!("the name {:?} is used twice in this deployment", c.name),
                    fix: "give each registry credential of a deployment its own name".into(),
                });
                continue;
            }
            let secret_field = format!("{field}.secretRef");
            let Some((username, password)) = read_login(
                &secret_field,
                &c.secret_ref,
                namespace,
                secrets,
                &mut problems,
            ) else {
                continue;
            };
            let login = RegistryLogin {
                address: c.address.clone(),
                username,
                password,
            };
            logins
                .deployments
                .entry(d.name.clone())
                .or_default()
                .push((c.name.clone(), login));
        }
    }
    if problems.is_empty() {
        Ok(logins)
    } else {
        problems.sort();
        problems.dedup();
        Err(RegistryAuthErrors(problems))
    }
}

/// The user name and password a `secretRef` names, or `None` with the problems recorded.
fn read_login(
    field: &str,
    r: &RegistrySecretRef,
    namespace: &str,
    secrets: &BTreeMap<String, Option<Secret>>,
    problems: &mut Vec<RegistryAuthProblem>,
) -> Option<(String, Password)> {
    let Some(secret) = secrets.get(&r.name).and_then(Option::as_ref) else {
        problems.push(RegistryAuthProblem {
            field: format!("{field}.name"),
            problem: format!(
                "Secret {:?} does not exist in namespace {namespace:?}",
                r.name
            ),
            fix: format!(
                "create it (kubectl -n {namespace} create secret generic {} --from-literal={}=<user> --from-literal={}=<password>) or correct the name",
                r.name, r.username_key, r.password_key
            ),
        });
        return None;
    };
    let username = read_value(field, "usernameKey", &r.username_key, secret, problems);
    let password = read_value(field, "passwordKey", &r.password_key, secret, problems);
    Some((username?, Password::new(password?)))
}

/// One key's text. Problems name the key, never the value.
fn read_value(
    field: &str,
    key_field: &str,
    key: &str,
    secret: &Secret,
    problems: &mut Vec<RegistryAuthProblem>,
) -> Option<String> {
    let name = secret.name_any();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .or_else(|| {
            let text = secret.string_data.as_ref()?.get(key)?;
            Some(text.clone().into_bytes())
        });
    let mut problem = |problem: String, fix: String| {
        problems.push(RegistryAuthProblem {
            field: format!("{field}.{key_field}"),
            problem,
            fix,
        });
        None
    };
    let Some(bytes) = bytes else {
        return problem(
            format!("Secret {name:?} has no key {key:?}"),
            format!("add the key {key:?} to the Secret or correct {key_field}"),
        );
    };
    match String::from_utf8(bytes) {
        Ok(text) if text.is_empty() => problem(
            format!("Secret {name:?} key {key:?} is empty"),
            "store the value under the key".into(),
        ),
        Ok(text) if text.chars().any(char::is_control) => problem(
            format!("Secret {name:?} key {key:?} holds a line break or another control character"),
            "store the value without a trailing newline (kubectl create secret --from-literal, or a file written with printf '%s')".into(),
        ),
        Ok(text) => Some(text),
        Err(_) => problem(
            format!("Secret {name:?} key {key:?} is not UTF-8 text"),
            "store the value as text".into(),
        ),
    }
}

/// `serverAddress` must name agentImage's registry, or the login would never be used for it.
fn check_agent_address(image: &str, address: &str, problems: &mut Vec<RegistryAuthProblem>) {
    let registry = registry_host(image).unwrap_or(DOCKER_HUB);
    if same_registry(registry, address) {
        return;
    }
    problems.push(RegistryAuthProblem {
        field: "spec.edge.agentAuth.serverAddress".into(),
        problem: format!(
            "{address:?} is not the registry of spec.edge.agentImage {image:?}, which is {registry:?}"
        ),
        fix: format!("set serverAddress to {registry:?}, or correct agentImage"),
    });
}

#[cfg(test)]
#[path = "registry_auth/tests.rs"]
mod tests;
