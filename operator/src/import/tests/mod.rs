//! Fixture tests of the import: the tutorial, a three-level tree, the az format in YAML and JSON,
//! certificates, and every error naming its line and field.
//!
//! Configs on disk live in `src/import/fixtures/`; error cases use in-memory files, so each shows
//! the few lines it is about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::Deserialize;

use super::*;
use crate::api::{AuthenticationType, EdgeHierarchy, KeyAlgorithm, validate};
use crate::deploy::resolve_manifests;

mod errors;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/import/fixtures")
        .join(path)
}

fn import_fixture(path: &str, options: &ImportOptions) -> Import {
    import(&fixture(path), &cli::Disk, options, Timestamp::now())
        .unwrap_or_else(|e| panic!("{path} did not convert:\n{e}"))
}

/// In-memory files under `/cfg/`.
pub(super) fn files(entries: &[(&str, &str)]) -> BTreeMap<PathBuf, String> {
    entries
        .iter()
        .map(|(p, t)| (Path::new("/cfg").join(p), t.to_string()))
        .collect()
}

pub(super) const TOP: &str =
    include_str!("../fixtures/tutorial/templates/tutorial/deploymentTopLayer.json");
pub(super) const LOWER: &str =
    include_str!("../fixtures/tutorial/templates/tutorial/deploymentLowerLayer.json");

pub(super) fn import_text(config: &str, extra: &[(&str, &str)]) -> Result<Import, ImportErrors> {
    let mut all = vec![
        ("iotedge_config.yaml", config),
        ("top.json", TOP),
        ("lower.json", LOWER),
    ];
    all.extend_from_slice(extra);
    import(
        Path::new("/cfg/iotedge_config.yaml"),
        &files(&all),
        &ImportOptions::default(),
        Timestamp::now(),
    )
}

/// The documents of a rendered output.
fn documents(yaml: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).expect("every document parses"))
        .collect()
}

/// Parses the output back, as kubectl would read it, and runs the operator's own checks on it:
/// `api::validate` on the tree and the deployment resolution on the ConfigMaps' text.
fn check_output(import: &Import) -> EdgeHierarchy {
    let yaml = render(import);
    let docs = documents(&yaml);
    let hierarchy: EdgeHierarchy = serde_yaml::from_value(docs[0].clone()).expect("EdgeHierarchy");
    assert_eq!(
        hierarchy.spec, import.hierarchy.spec,
        "leaving defaults out changed the spec"
    );
    validate(&hierarchy.spec).expect("the output passes api::validate");
    let config_maps: Vec<k8s_openapi::api::core::v1::ConfigMap> = docs[1..]
        .iter()
        .map(|d| serde_yaml::from_value(d.clone()).expect("ConfigMap"))
        .collect();
    assert_eq!(config_maps.len(), import.config_maps.len());
    let text = |r: &crate::api::ConfigMapKeyRef| {
        config_maps
            .iter()
            .find(|cm| cm.metadata.name.as_deref() == Some(r.name.as_str()))
            .and_then(|cm| cm.data.as_ref()?.get(&r.key))
            .map(String::as_str)
    };
    resolve_manifests(&hierarchy.spec, text).expect("every manifest resolves from its ConfigMap");
    hierarchy
}

#[test]
fn the_tutorial_converts_to_the_devices_and_deployments_of_examples_tutorial() {
    let import = import_fixture("tutorial/iotedge_config.yaml", &ImportOptions::default());
    let converted = check_output(&import).spec;
    let example: EdgeHierarchy =
        serde_yaml::from_str(include_str!("../../../../examples/tutorial.yaml"))
            .expect("examples/tutorial.yaml parses");
    let example = example.spec;

    assert_eq!(converted.devices, example.devices);
    let shape = |s: &crate::api::EdgeHierarchySpec| {
        s.deployments
            .iter()
            .map(|d| (d.name.clone(), d.priority, d.layered))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&converted), shape(&example));
    assert_eq!(converted.iot_hub, example.iot_hub);
    assert_eq!(converted.policy, example.policy);
    assert_eq!(converted.authentication, example.authentication);
    assert_eq!(converted.certificates, example.certificates);
    assert_eq!(converted.deployment_mode, example.deployment_mode);
    // The tool's 1.2 images, not the example's 1.5; `$upstream:443/` is the operator's business.
    assert_eq!(
        converted.edge.agent_image,
        "mcr.microsoft.com/azureiotedge-agent:1.2"
    );
    assert_eq!(converted.edge.upstream_port, 443);
    assert_eq!(
        converted.edge.upstream_registries,
        vec!["mcr.microsoft.com"]
    );

    // Each deployment comes from its file, as the file says.
    let top = &import.config_maps[0];
    assert_eq!(
        (top.name.as_str(), top.key.as_str()),
        ("iothub-name-top-layer", "deploymentTopLayer.json")
    );
    let file: serde_json::Value = serde_json::from_str(TOP).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&top.text).unwrap(),
        file
    );
    assert_eq!(top.devices, vec!["top-layer"]);
}

#[test]
fn the_tutorial_output_says_what_to_create_first_and_holds_no_secret() {
    let import = import_fixture("tutorial/iotedge_config.yaml", &ImportOptions::default());
    let yaml = render(&import);
    assert!(yaml.contains(
        "#   kubectl create secret generic iothub-service --from-literal=connectionString=\"$(az iot hub connection-string show --hub-name IOTHUB_NAME"
    ));
    // Comment paragraphs are wrapped; read them as one text.
    let prose = yaml.replace("\n# ", " ");
    assert!(
        prose.contains("generates one once into Secret iothub-name-root-ca"),
        "{yaml}"
    );
    assert!(prose.contains("import with --adopt"));
    // Manifests stay readable block text in Git, not one quoted line.
    assert!(yaml.contains("  deploymentTopLayer.json: |\n"), "{yaml}");
    assert_eq!(documents(&yaml).len(), 3);
    assert!(!yaml.contains("adoptExisting"));
    // The tutorial's template is not beside it: said, not skipped.
    let template: Vec<_> = import
        .warnings
        .iter()
        .filter(|w| w.field == "configuration.template_config_path")
        .collect();
    assert_eq!(template.len(), 1, "{:?}", import.warnings);
    assert_eq!(template[0].place.line, Some(16));
    assert!(template[0].message.contains("cannot be read"));
    assert_eq!(import.warnings.len(), 1, "{:?}", import.warnings);
}

#[test]
fn adopt_sets_adopt_existing_and_says_to_reinstall_bundles() {
    let options = ImportOptions {
        adopt: true,
        namespace: Some("iot".into()),
    };
    let import = import_fixture("tutorial/iotedge_config.yaml", &options);
    assert!(import.hierarchy.spec.policy.adopt_existing);
    let yaml = render(&import);
    assert!(
        yaml.contains("  policy:\n    adoptExisting: true\n"),
        "{yaml}"
    );
    assert!(yaml.contains("kubectl edgehierarchy bundle iothub-name DEVICE -n iot -o DEVICE.zip"));
    for doc in documents(&yaml) {
        assert_eq!(doc["metadata"]["namespace"].as_str(), Some("iot"));
    }
    check_output(&import);
}

#[test]
fn a_three_level_tree_keeps_parents_layers_and_shared_files() {
    let import = import_fixture(
        "three-levels/iotedge_config.yaml",
        &ImportOptions::default(),
    );
    let spec = check_output(&import).spec;
    type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let devices: Vec<Row> = spec
        .devices
        .iter()
        .map(|d| {
            (
                d.id.as_str(),
                d.parent.as_deref(),
                d.deployment.as_deref(),
                d.hostname.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        devices,
        vec![
            ("L5-edge", None, Some("top-layer"), Some("10.16.5.4")),
            (
                "L4-edge-1",
                Some("L5-edge"),
                Some("lower-layer"),
                Some("10.16.4.4")
            ),
            ("L3-edge-1", Some("L4-edge-1"), Some("lower-layer"), None),
            ("L3-edge-2", Some("L4-edge-1"), None, None),
            ("L4-edge-2", Some("L5-edge"), None, Some("10.16.4.5")),
            ("L3-edge-3", Some("L4-edge-2"), Some("lower-layer"), None),
        ]
    );
    let topology = validate(&spec).unwrap();
    assert_eq!(topology.layer["L3-edge-3"], 3);
    assert_eq!(spec.authentication, AuthenticationType::X509);
    assert_eq!(
        import.hierarchy.metadata.name.as_deref(),
        Some("contoso-factory")
    );
    // `..` is folded; one file, one ConfigMap, three devices.
    let lower = &import.config_maps[1];
    assert_eq!(lower.name, "contoso-factory-lower-layer");
    assert!(
        lower
            .source
            .ends_with("fixtures/tutorial/templates/tutorial/deploymentLowerLayer.json"),
        "{}",
        lower.source
    );
    assert!(!lower.source.contains(".."));
    assert_eq!(lower.devices, vec!["L4-edge-1", "L3-edge-1", "L3-edge-3"]);
    assert!(import.notes.iter().any(|n| n.starts_with("X509:")));
}

#[test]
fn the_az_format_converts_from_yaml_and_json_alike() {
    let yaml = import_fixture("az/devices_config.yaml", &ImportOptions::default());
    let json = import_fixture("az/devices_config.json", &ImportOptions::default());
    assert_eq!(yaml.hierarchy.spec, json.hierarchy.spec);
    assert_eq!(yaml.format, Format::AzDevicesConfig);
    let spec = check_output(&yaml).spec;
    assert_eq!(
        yaml.hierarchy.metadata.name.as_deref(),
        Some("devices-config")
    );
    let ids: Vec<(&str, Option<&str>)> = spec
        .devices
        .iter()
        .map(|d| (d.id.as_str(), d.parent.as_deref()))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("gateway", None),
            ("line-1", Some("gateway")),
            ("line-2", Some("gateway")),
            ("lab-gateway", None)
        ]
    );
    let names: Vec<&str> = spec.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["gateway", "line"]);
    assert_eq!(
        spec.devices[1].hostname.as_deref(),
        Some("line-1.factory.local")
    );
    assert_eq!(
        spec.edge.agent_image,
        "mcr.microsoft.com/azureiotedge-agent:1.5"
    );
    // The template's two customisations are named, each on its own.
    let custom: Vec<&str> = yaml
        .warnings
        .iter()
        .filter(|w| w.field == "edgeConfiguration.templateConfigPath")
        .map(|w| w.message.split('`').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        custom,
        vec!["agent.env.RuntimeLogLevel", "edge_ca.auto_renew.threshold"]
    );
    assert_eq!(yaml.warnings.len(), 2, "{:?}", yaml.warnings);
    assert!(render(&yaml).contains("--hub-name HUB_NAME"));
}

fn root_ca_files() -> (String, String) {
    let key = crate::pki::generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let root = crate::pki::generate_root_ca(
        "imported",
        &key,
        std::time::Duration::from_secs(3600 * 24 * 365),
        Timestamp::now(),
    )
    .unwrap();
    (root.cert_pem, key.pem().to_string())
}

#[test]
fn given_certificates_become_a_root_ca_reference_and_a_command_not_a_key() {
    let (cert, key) = root_ca_files();
    let config = "\
config_version: \"1.0\"
iothub:
  iothub_name: hub
  authentication_method: symmetric_key
certificates:
  root_ca_cert_path: certs/root.pem
  root_ca_cert_key_path: /keys/root.key.pem
configuration:
  default_edge_agent: \"$upstream:443/azureiotedge-agent:1.5\"
edgedevices:
  device_id: top
  deployment: top.json
";
    // The key path is absolute: it is not under /cfg.
    let missing_key = import_text(config, &[("certs/root.pem", &cert)]).unwrap_err();
    assert_eq!(missing_key.0[0].field, "certificates.root_ca_cert_key_path");
    assert_eq!(missing_key.0[0].place.line, Some(7));
    let mut all = files(&[
        ("iotedge_config.yaml", config),
        ("top.json", TOP),
        ("certs/root.pem", &cert),
    ]);
    all.insert(PathBuf::from("/keys/root.key.pem"), key.clone());
    let import = super::import(
        Path::new("/cfg/iotedge_config.yaml"),
        &all,
        &ImportOptions::default(),
        Timestamp::now(),
    )
    .unwrap();
    let spec = check_output(&import).spec;
    assert_eq!(
        spec.certificates
            .root_ca
            .as_ref()
            .map(|r| r.secret_ref.name.as_str()),
        Some("hub-imported-root-ca")
    );
    let yaml = render(&import);
    assert!(
        yaml.contains("#   kubectl create secret tls hub-imported-root-ca --cert=/cfg/certs/root.pem --key=/keys/root.key.pem\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("PRIVATE KEY") && !yaml.contains("BEGIN CERTIFICATE"));
}

#[test]
fn deployment_names_come_from_file_names() {
    use super::convert::deployment_name;
    for (file, name) in [
        ("deploymentTopLayer.json", "top-layer"),
        ("deploymentLowerLayer.json", "lower-layer"),
        ("parentDeviceDeployment.json", "parent-device"),
        ("top_layer_deployment.json", "top-layer"),
        ("deployment.json", "deployment"),
        ("L5.Edge.json", "l5-edge"),
        ("HTTPProxyDeployment.json", "http-proxy"),
        ("___.json", "deployment"),
        ("Ünïcode.json", "n-code"),
    ] {
        assert_eq!(deployment_name(Path::new(file)), name, "{file}");
    }
    assert!(deployment_name(Path::new(&format!("{}.json", "a".repeat(200)))).len() <= 60);
}

#[test]
fn files_that_name_alike_get_unique_deployments() {
    let config = "\
config_version: \"1.0\"
iothub:
  authentication_method: symmetric_key
configuration:
  default_edge_agent: mcr.microsoft.com/azureiotedge-agent:1.5
edgedevices:
  device_id: top
  deployment: a/deployment.json
  child:
    - device_id: lower
      deployment: b/deployment.json
";
    let import = import_text(
        config,
        &[("a/deployment.json", TOP), ("b/deployment.json", LOWER)],
    )
    .unwrap();
    let names: Vec<&str> = import
        .config_maps
        .iter()
        .map(|c| c.deployment.as_str())
        .collect();
    assert_eq!(names, vec!["deployment", "deployment-2"]);
    // No hub name in this config: named after the file.
    assert_eq!(
        import.hierarchy.metadata.name.as_deref(),
        Some("iotedge-config")
    );
    check_output(&import);
}

#[test]
fn agent_images_that_differ_per_device_are_noted() {
    let config = "\
config_version: \"1.0\"
iothub:
  authentication_method: symmetric_key
configuration:
  default_edge_agent: \"$upstream:8443/azureiotedge-agent:1.5\"
edgedevices:
  device_id: top
  edge_agent: mcr.microsoft.com/azureiotedge-agent:1.4
  child:
    - device_id: lower
";
    let import = import_text(config, &[]).unwrap();
    let edge = &import.hierarchy.spec.edge;
    assert_eq!(edge.agent_image, "mcr.microsoft.com/azureiotedge-agent:1.5");
    assert_eq!(edge.upstream_port, 8443);
    let w = import
        .warnings
        .iter()
        .find(|w| w.field == "edgedevices.edge_agent")
        .expect("a warning for the top device's own image");
    assert_eq!(w.place.line, Some(8));
    assert!(w.message.contains("azureiotedge-agent:1.4"));
    let prose = render(&import).replace("\n# ", " ");
    assert!(prose.contains("names agent image mcr.microsoft.com/azureiotedge-agent:1.4"));
    assert!(render(&import).contains("upstreamPort: 8443"));
}

#[test]
fn an_upstream_image_on_the_top_layer_is_reported() {
    let config = "\
config_version: \"1.0\"
iothub:
  authentication_method: symmetric_key
configuration:
  default_edge_agent: mcr.microsoft.com/azureiotedge-agent:1.2
edgedevices:
  device_id: top
  deployment: lower.json
";
    let import = import_text(config, &[]).unwrap();
    assert!(
        import
            .warnings
            .iter()
            .any(|w| w.message.contains("$upstream:443/azureiotedge-hub:1.2")
                && w.message.contains("top-layer device(s) top")),
        "{:?}",
        import.warnings
    );
}

#[test]
fn a_manifest_in_a_content_wrapper_is_unwrapped() {
    let wrapped = format!("{{\"content\": {TOP}}}");
    let config = "\
config_version: \"1.0\"
iothub:
  authentication_method: symmetric_key
configuration:
  default_edge_agent: mcr.microsoft.com/azureiotedge-agent:1.2
edgedevices:
  device_id: top
  deployment: wrapped.json
";
    let import = import_text(config, &[("wrapped.json", &wrapped)]).unwrap();
    let text: serde_json::Value = serde_json::from_str(&import.config_maps[0].text).unwrap();
    assert_eq!(
        text,
        serde_json::from_str::<serde_json::Value>(TOP).unwrap()
    );
    assert!(import.warnings.iter().any(|w| w.field == "content"));
    check_output(&import);
}

#[test]
fn unknown_keys_and_registry_credentials_are_warned_about_with_their_lines() {
    let config = "\
config_version: \"1.0\"
iothub:
  authentication_method: symmetric_key
  hub_sku: S1
configuration:
  default_edge_agent: mcr.microsoft.com/azureiotedge-agent:1.2
edgedevices:
  device_id: top
  hostnme: top.local
  container_auth:
    serveraddress: myacr.azurecr.io
    username: pull
    password: s3cret-pa55
  children:
    - device_id: lost
";
    let import = import_text(config, &[]).unwrap();
    let by_field: BTreeMap<&str, &Warning> = import
        .warnings
        .iter()
        .map(|w| (w.field.as_str(), w))
        .collect();
    let sku = by_field["iothub.hub_sku"];
    assert_eq!(sku.place.line, Some(4));
    let typo = by_field["edgedevices.hostnme"];
    assert_eq!(typo.place.line, Some(9));
    assert!(
        typo.message.contains("did you mean `hostname`?"),
        "{}",
        typo.message
    );
    let children = by_field["edgedevices.children"];
    assert_eq!(children.place.line, Some(14));
    assert!(children.message.contains("did you mean `child`?"));
    assert!(children.message.contains("never created the devices"));
    // One device, all three credentials: carried over as spec.edge.agentAuth, password left out.
    assert!(!by_field.contains_key("edgedevices.container_auth"));
    let auth = import.hierarchy.spec.edge.agent_auth.as_ref().unwrap();
    assert_eq!(auth.server_address, "myacr.azurecr.io");
    assert_eq!(auth.secret_ref.name, "iotedge-config-agent-registry");
    assert_eq!(import.hierarchy.spec.devices.len(), 1);
    let output = render(&import);
    assert!(
        output.contains(
            "#   kubectl create secret generic iotedge-config-agent-registry --from-literal=username=pull --from-literal=password=\"$PASSWORD\"\n"
        ),
        "{output}"
    );
    assert_eq!(
        import
            .agent_login
            .as_ref()
            .map(|l| l.password_field.as_str()),
        Some("edgedevices.container_auth")
    );
    let everything = format!("{output}{:?}{:?}", import.warnings, import.notes);
    assert!(!everything.contains("s3cret-pa55"));
}

/// The import warns about `field` with a message containing `needle`.
fn assert_warns(import: &Import, field: &str, needle: &str) {
    let warning = import
        .warnings
        .iter()
        .find(|w| w.field == field)
        .unwrap_or_else(|| panic!("no warning about {field}: {:?}", import.warnings));
    assert!(warning.message.contains(needle), "{}", warning.message);
}

fn agent_auth_case(top: &str, child: &str) -> Import {
    let config = format!(
        "\
config_version: \"1.0\"
iothub:
  authentication_method: symmetric_key
configuration:
  default_edge_agent: mcr.microsoft.com/azureiotedge-agent:1.2
edgedevices:
  device_id: top
{top}  child:
    - device_id: low
{child}"
    );
    import_text(&config, &[]).unwrap()
}

#[test]
fn container_auth_becomes_agent_auth_only_when_one_login_serves_every_device() {
    let login = |indent: &str, server: &str, user: &str| {
        format!(
            "{indent}container_auth:\n{indent}  serveraddress: {server}\n{indent}  username: {user}\n{indent}  password: pw-secret\n"
        )
    };
    // The same login on both: carried over, no warning about it.
    let same = agent_auth_case(
        &login("  ", "acr.io", "pull"),
        &login("      ", "acr.io", "pull"),
    );
    assert_eq!(
        same.hierarchy
            .spec
            .edge
            .agent_auth
            .as_ref()
            .map(|a| a.server_address.as_str()),
        Some("acr.io")
    );
    assert!(
        same.warnings
            .iter()
            .all(|w| !w.field.contains("container_auth"))
    );
    // Only the top has one: carried over, with a warning that every device gets it.
    let partial = agent_auth_case(&login("  ", "acr.io", "pull"), "");
    assert!(partial.hierarchy.spec.edge.agent_auth.is_some());
    assert_warns(
        &partial,
        "edgedevices.container_auth",
        "only 1 of 2 devices",
    );
    // Different registries: nothing carried over, the warning names both devices.
    let different = agent_auth_case(
        &login("  ", "acr.io", "pull"),
        &login("      ", "other.io", "pull"),
    );
    assert!(different.hierarchy.spec.edge.agent_auth.is_none());
    assert_warns(
        &different,
        "edgedevices.child[0].container_auth",
        "\"top\" and \"low\"",
    );
    // Without a password: nothing carried over.
    let no_password = agent_auth_case(
        "  container_auth:\n    serveraddress: acr.io\n    username: pull\n",
        "",
    );
    assert!(no_password.hierarchy.spec.edge.agent_auth.is_none());
    for import in [same, partial, different, no_password] {
        let everything = format!("{}{:?}{:?}", render(&import), import.warnings, import.notes);
        assert!(!everything.contains("pw-secret"));
    }
}
