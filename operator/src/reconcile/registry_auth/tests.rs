//! Fixtures: the tutorial with agent auth and a deployment credential, and the Secrets as the
//! apiserver returns them. Each test names the rule it covers.

use k8s_openapi::ByteString;
use kube::api::ObjectMeta;

use super::*;
use crate::api::{AgentAuthSpec, RegistryCredentialSpec};
use crate::reconcile::Disposition;
use crate::reconcile::credentials::refers_to_secret;

const TUTORIAL: &str = include_str!("../../../../examples/tutorial.yaml");
const PASSWORD: &str = "s3cret-Pa55word-for-tests";

fn secret_ref(name: &str) -> RegistrySecretRef {
    RegistrySecretRef {
        name: name.into(),
        username_key: "username".into(),
        password_key: "password".into(),
    }
}

/// The tutorial, its agent pulled from `myacr.azurecr.io` with Secret `agent-pull`, and the
/// lower layer's deployment with credential `acr` from Secret `acr-pull`.
fn spec() -> EdgeHierarchySpec {
    let mut h: EdgeHierarchy = serde_yaml::from_str(TUTORIAL).unwrap();
    h.spec.edge.agent_image = "myacr.azurecr.io/azureiotedge-agent:1.5".into();
    h.spec.edge.agent_auth = Some(AgentAuthSpec {
        server_address: "myacr.azurecr.io".into(),
        secret_ref: secret_ref("agent-pull"),
    });
    let lower = h
        .spec
        .deployments
        .iter_mut()
        .find(|d| d.name == "lower-layer")
        .unwrap();
    lower.registry_credentials = vec![RegistryCredentialSpec {
        name: "acr".into(),
        address: "myacr.azurecr.io".into(),
        secret_ref: secret_ref("acr-pull"),
    }];
    h.spec
}

fn secret(name: &str, data: &[(&str, &[u8])]) -> Option<Secret> {
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    })
}

fn both_secrets() -> BTreeMap<String, Option<Secret>> {
    BTreeMap::from([
        (
            "agent-pull".to_string(),
            secret(
                "agent-pull",
                &[
                    ("username", b"agent-user"),
                    ("password", PASSWORD.as_bytes()),
                ],
            ),
        ),
        (
            "acr-pull".to_string(),
            secret(
                "acr-pull",
                &[("username", b"acr-user"), ("password", PASSWORD.as_bytes())],
            ),
        ),
    ])
}

fn messages(e: &RegistryAuthErrors) -> Vec<String> {
    e.0.iter().map(ToString::to_string).collect()
}

#[test]
fn every_named_secret_is_read_once_and_watched() {
    let spec = spec();
    assert_eq!(
        secret_names(&spec),
        BTreeSet::from(["acr-pull", "agent-pull"])
    );
    let h = EdgeHierarchy::new("tutorial", spec);
    assert!(refers_to_secret(&h, "acr-pull"));
    assert!(refers_to_secret(&h, "agent-pull"));
    assert!(refers_to_secret(&h, "iothub-service"));
    assert!(!refers_to_secret(&h, "unrelated"));
}

#[test]
fn logins_come_from_the_secrets() {
    let logins = resolve(&spec(), "iot", &both_secrets()).unwrap();
    let agent = logins.agent.unwrap();
    assert_eq!(agent.address, "myacr.azurecr.io");
    assert_eq!(agent.username, "agent-user");
    assert_eq!(agent.password.expose(), PASSWORD);
    let lower = &logins.deployments["lower-layer"];
    assert_eq!(lower.len(), 1);
    assert_eq!(lower[0].0, "acr");
    assert_eq!(lower[0].1.username, "acr-user");
    assert_eq!(lower[0].1.address, "myacr.azurecr.io");
    assert!(!logins.deployments.contains_key("top-layer"));
}

#[test]
fn a_spec_without_registry_credentials_needs_no_secret() {
    let h: EdgeHierarchy = serde_yaml::from_str(TUTORIAL).unwrap();
    assert!(secret_names(&h.spec).is_empty());
    assert_eq!(
        resolve(&h.spec, "iot", &BTreeMap::new()).unwrap(),
        RegistryLogins::default()
    );
}

#[test]
fn keys_other_than_the_defaults_are_read() {
    let mut spec = spec();
    spec.edge.agent_auth = None;
    spec.deployments[1].registry_credentials[0].secret_ref = RegistrySecretRef {
        name: "acr-pull".into(),
        username_key: "user".into(),
        password_key: "token".into(),
    };
    let secrets = BTreeMap::from([(
        "acr-pull".to_string(),
        secret(
            "acr-pull",
            &[("user", b"u"), ("token", PASSWORD.as_bytes())],
        ),
    )]);
    let logins = resolve(&spec, "iot", &secrets).unwrap();
    assert_eq!(
        logins.deployments["lower-layer"][0].1.password.expose(),
        PASSWORD
    );
}

#[test]
fn a_missing_secret_names_the_field_the_secret_and_the_fix() {
    let mut secrets = both_secrets();
    secrets.insert("acr-pull".into(), None);
    let e = resolve(&spec(), "iot", &secrets).unwrap_err();
    assert_eq!(
        messages(&e),
        [
            "spec.deployments[lower-layer].registryCredentials[acr].secretRef.name: Secret \"acr-pull\" does not exist in namespace \"iot\"; fix: create it (kubectl -n iot create secret generic acr-pull --from-literal=username=<user> --from-literal=password=<password>) or correct the name"
        ]
    );
}

#[test]
fn a_missing_key_names_the_field_the_secret_the_key_and_the_fix() {
    let mut secrets = both_secrets();
    secrets.insert(
        "acr-pull".into(),
        secret("acr-pull", &[("username", b"acr-user")]),
    );
    let e = resolve(&spec(), "iot", &secrets).unwrap_err();
    assert_eq!(
        e.to_string(),
        "registry credentials cannot be used: spec.deployments[lower-layer].registryCredentials[acr].secretRef.passwordKey: Secret \"acr-pull\" has no key \"password\"; fix: add the key \"password\" to the Secret or correct passwordKey"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let secrets = BTreeMap::from([
        ("agent-pull".to_string(), None),
        (
            "acr-pull".to_string(),
            secret("acr-pull", &[("password", PASSWORD.as_bytes())]),
        ),
    ]);
    let e = resolve(&spec(), "iot", &secrets).unwrap_err();
    let fields: Vec<&str> = e.0.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.deployments[lower-layer].registryCredentials[acr].secretRef.usernameKey",
            "spec.edge.agentAuth.secretRef.name",
        ]
    );
}

#[test]
fn unusable_values_are_refused_without_being_shown() {
    for (value, problem) in [
        (b"".as_slice(), "is empty"),
        (b"pass\n".as_slice(), "holds a line break"),
        (b"\xff\xfe".as_slice(), "is not UTF-8 text"),
    ] {
        let mut secrets = both_secrets();
        secrets.insert(
            "acr-pull".into(),
            secret("acr-pull", &[("username", b"u"), ("password", value)]),
        );
        let e = resolve(&spec(), "iot", &secrets).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        let expected = format!("Secret \"acr-pull\" key \"password\" {problem}");
        assert!(e.0[0].problem.starts_with(&expected), "{e}");
        assert!(!e.to_string().contains("pass\n"), "{e}");
    }
}

#[test]
fn the_agent_server_address_must_be_the_agent_images_registry() {
    let mut spec = spec();
    spec.edge.agent_auth.as_mut().unwrap().server_address = "other.azurecr.io".into();
    let e = resolve(&spec, "iot", &both_secrets()).unwrap_err();
    assert_eq!(
        messages(&e),
        [
            "spec.edge.agentAuth.serverAddress: \"other.azurecr.io\" is not the registry of spec.edge.agentImage \"myacr.azurecr.io/azureiotedge-agent:1.5\", which is \"myacr.azurecr.io\"; fix: set serverAddress to \"myacr.azurecr.io\", or correct agentImage"
        ]
    );
    // Written with a scheme or in another case it is the same registry; Docker Hub has aliases.
    spec.edge.agent_auth.as_mut().unwrap().server_address = "https://MyACR.azurecr.io/".into();
    assert!(resolve(&spec, "iot", &both_secrets()).is_ok());
    spec.edge.agent_image = "example/edge-agent:1.5".into();
    spec.edge.agent_auth.as_mut().unwrap().server_address = "https://index.docker.io/v1/".into();
    assert!(resolve(&spec, "iot", &both_secrets()).is_ok());
}

#[test]
fn a_credential_named_twice_is_refused() {
    let mut spec = spec();
    let twice = spec.deployments[1].registry_credentials[0].clone();
    spec.deployments[1].registry_credentials.push(twice);
    let e = resolve(&spec, "iot", &both_secrets()).unwrap_err();
    assert_eq!(
        messages(&e),
        [
            "spec.deployments[lower-layer].registryCredentials[acr]: the name \"acr\" is used twice in this deployment; fix: give each registry credential of a deployment its own name"
        ]
    );
}

#[test]
fn passwords_never_appear_in_debug_or_errors() {
    let logins = resolve(&spec(), "iot", &both_secrets()).unwrap();
    let debug = format!("{logins:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
    // A failure next to a readable password shows neither the password nor the other values.
    let mut secrets = both_secrets();
    secrets.insert(
        "agent-pull".into(),
        secret("agent-pull", &[("password", PASSWORD.as_bytes())]),
    );
    let e = resolve(&spec(), "iot", &secrets).unwrap_err();
    let error = Error::RegistryAuth(e);
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(PASSWORD), "{text}");
    }
    let Disposition::Stall {
        reason, message, ..
    } = error.disposition(&spec(), jiff::Timestamp::UNIX_EPOCH)
    else {
        panic!("a missing key stalls");
    };
    assert_eq!(reason, crate::reconcile::status::reason::INVALID_SPEC);
    assert!(
        message.contains("spec.edge.agentAuth.secretRef.usernameKey")
            && !message.contains(PASSWORD),
        "{message}"
    );
}
