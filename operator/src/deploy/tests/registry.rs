use serde_json::json;

use super::*;
use crate::deploy::fixtures::*;
use crate::deploy::{Variant, automatic_configurations, merged_manifest, render_content};
use crate::ownership::HierarchyIdentity;

const PASSWORD: &str = "s3cret-Pa55word-for-tests";

fn login(address: &str, password: &str) -> RegistryLogin {
    RegistryLogin {
        address: address.into(),
        username: "puller".into(),
        password: Password::new(password),
    }
}

fn logins(deployment: &str, name: &str, address: &str, password: &str) -> DeploymentLogins {
    BTreeMap::from([(
        deployment.to_string(),
        vec![(name.to_string(), login(address, password))],
    )])
}

fn owner() -> HierarchyIdentity {
    HierarchyIdentity::new("iot", "tutorial", "uid-1")
}

#[test]
fn the_agent_uses_upstream_as_its_server_address_when_pulled_through_the_parent() {
    assert_eq!(
        agent_server_address(
            "myacr.azurecr.io/azureiotedge-agent:1.5",
            "myacr.azurecr.io"
        ),
        "myacr.azurecr.io"
    );
    assert_eq!(
        agent_server_address("$upstream:443/azureiotedge-agent:1.5", "myacr.azurecr.io"),
        "$upstream:443"
    );
    assert_eq!(
        agent_server_address("$upstream:8443/agent", "myacr.azurecr.io"),
        "$upstream:8443"
    );
    // An image the parent does not serve keeps the registry it names.
    assert_eq!(
        agent_server_address("other.example.com/agent:1", "other.example.com"),
        "other.example.com"
    );
}

#[test]
fn credentials_join_a_standard_manifest_under_runtime_settings() {
    let ex = tutorial();
    let manifests = add_registry_credentials(
        ex.manifests.clone(),
        &logins("lower-layer", "acr", "myacr.azurecr.io", PASSWORD),
    )
    .unwrap();
    let content = &manifests["lower-layer"].content;
    assert_eq!(
        content.pointer(&agent("/runtime/settings/registryCredentials/acr")),
        Some(&json!({"username": "puller", "password": PASSWORD, "address": "myacr.azurecr.io"}))
    );
    // Everything else stays, and other deployments are untouched.
    assert_eq!(
        content.pointer(&agent("/runtime/settings/minDockerVersion")),
        Some(&json!("v1.25"))
    );
    assert_eq!(manifests["top-layer"], ex.manifests["top-layer"]);
    // What was added still passes the schema.
    validate_manifest_ok("lower-layer", false, content);
}

#[test]
fn credentials_join_a_layered_manifest_as_a_dotted_entry() {
    let ex = factory();
    let manifests = add_registry_credentials(
        ex.manifests.clone(),
        &logins("monitoring", "acr", "myacr.azurecr.io", PASSWORD),
    )
    .unwrap();
    let layered = &manifests["monitoring"].content["modulesContent"]["$edgeAgent"];
    assert_eq!(
        layered["properties.desired.runtime.settings.registryCredentials.acr"],
        json!({"username": "puller", "password": PASSWORD, "address": "myacr.azurecr.io"})
    );
    assert!(
        layered.get("properties.desired").is_none(),
        "a layered deployment must not get a whole properties.desired: {layered}"
    );
    validate_manifest_ok("monitoring", true, &manifests["monitoring"].content);

    // PerDevice merges it like one written in the manifest.
    let device = ex
        .spec
        .devices
        .iter()
        .find(|d| d.layered_deployments.iter().any(|l| l == "monitoring"))
        .unwrap();
    let merged = merged_manifest(device, 1, &ex.spec.edge, &manifests).unwrap();
    assert_eq!(
        merged.pointer(&agent("/runtime/settings/registryCredentials/acr/password")),
        Some(&json!(PASSWORD))
    );
}

fn validate_manifest_ok(name: &str, layered: bool, content: &Value) {
    if let Err(e) = crate::deploy::validate_manifest(name, layered, content) {
        panic!("{name}: {e:?}");
    }
}

#[test]
fn a_name_the_manifest_already_sets_is_refused() {
    let ex = tutorial();
    let mut manifests = ex.manifests.clone();
    *at(
        &mut manifests.get_mut("lower-layer").unwrap().content,
        &agent("/runtime/settings"),
    ) = json!({"minDockerVersion": "v1.25", "registryCredentials": {"acr": {"username": "u", "password": "inline-pw", "address": "a.io"}}});
    let errors = add_registry_credentials(
        manifests,
        &logins("lower-layer", "acr", "myacr.azurecr.io", PASSWORD),
    )
    .unwrap_err();
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "deployment \"lower-layer\": spec.deployments[lower-layer].registryCredentials[acr]: the manifest already sets a registry credential named \"acr\" (modulesContent.$edgeAgent['properties.desired'].runtime.settings.registryCredentials.acr); fix: remove \"acr\" from the manifest and keep its password only in the Secret, or give this entry another name"
        ]
    );
    assert!(!messages[0].contains(PASSWORD) && !messages[0].contains("inline-pw"));
}

#[test]
fn a_name_a_layered_manifest_already_sets_is_refused() {
    let ex = factory();
    let mut manifests = ex.manifests.clone();
    let agent = manifests.get_mut("monitoring").unwrap().content["modulesContent"]["$edgeAgent"]
        .as_object_mut()
        .unwrap();
    agent.insert(
        "properties.desired.runtime.settings.registryCredentials.acr".into(),
        json!({"username": "u", "password": "inline-pw", "address": "a.io"}),
    );
    let errors = add_registry_credentials(
        manifests,
        &logins("monitoring", "acr", "myacr.azurecr.io", PASSWORD),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].path,
        "spec.deployments[monitoring].registryCredentials[acr]"
    );
    assert!(
        errors[0].problem.contains(
            "modulesContent.$edgeAgent['properties.desired.runtime.settings.registryCredentials.acr']"
        ),
        "{}",
        errors[0]
    );
}

#[test]
fn debug_output_never_shows_the_password() {
    let login = login("myacr.azurecr.io", PASSWORD);
    for text in [
        format!("{login:?}"),
        format!("{:?}", login.password),
        login.password.to_string(),
    ] {
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
    let ex = tutorial();
    let manifests = add_registry_credentials(
        ex.manifests.clone(),
        &logins("lower-layer", "acr", "myacr.azurecr.io", PASSWORD),
    )
    .unwrap();
    let debug = format!("{manifests:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
    let configurations =
        automatic_configurations(&owner(), &ex.spec, &ex.topology, &manifests).unwrap();
    let debug = format!("{configurations:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
}

#[test]
fn configuration_ids_follow_the_password_without_showing_it() {
    let ex = tutorial();
    let ids = |password: &str| -> Vec<String> {
        let manifests = add_registry_credentials(
            ex.manifests.clone(),
            &logins("lower-layer", "acr", "myacr.azurecr.io", password),
        )
        .unwrap();
        automatic_configurations(&owner(), &ex.spec, &ex.topology, &manifests)
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect()
    };
    let before = ids(PASSWORD);
    let after = ids("rotated-password");
    let lower = |ids: &[String]| {
        ids.iter()
            .find(|id| id.starts_with("tutorial-lower-layer-"))
            .cloned()
            .unwrap()
    };
    assert_ne!(
        lower(&before),
        lower(&after),
        "a rotated password rolls out"
    );
    let top = |ids: &[String]| {
        ids.iter()
            .find(|id| id.starts_with("tutorial-top-layer-"))
            .cloned()
            .unwrap()
    };
    assert_eq!(top(&before), top(&after), "other deployments stay");
    // The id is `<hierarchy>-<deployment>-<8 hex digits of a SHA-256>`: nothing of the password.
    let id = lower(&before);
    let hash = id.strip_prefix("tutorial-lower-layer-").unwrap();
    assert!(
        hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(!id.contains(PASSWORD) && !id.contains("s3cret"), "{id}");
}

#[test]
fn below_the_top_layer_credentials_for_mirrored_registries_point_at_upstream() {
    let ex = tutorial();
    let manifests = add_registry_credentials(
        ex.manifests.clone(),
        &BTreeMap::from([(
            "lower-layer".to_string(),
            vec![
                ("mcr".to_string(), login("mcr.microsoft.com", PASSWORD)),
                ("other".to_string(), login("other.example.com", PASSWORD)),
            ],
        )]),
    )
    .unwrap();
    let content = &manifests["lower-layer"].content;
    let lower = render_content(content, Variant::Lower, &ex.spec.edge);
    let address = |v: &Value, name: &str| {
        v.pointer(&agent(&format!(
            "/runtime/settings/registryCredentials/{name}/address"
        )))
        .cloned()
    };
    // Its images are pulled as $upstream:443/..., and edgeAgent matches credentials by host.
    assert_eq!(address(&lower, "mcr"), Some(json!("$upstream:443")));
    assert_eq!(address(&lower, "other"), Some(json!("other.example.com")));
    let top = render_content(content, Variant::Top, &ex.spec.edge);
    assert_eq!(address(&top, "mcr"), Some(json!("mcr.microsoft.com")));
}
