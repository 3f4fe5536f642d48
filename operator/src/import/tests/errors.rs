//! Every error names the file, the line and the field, and says what to do.

use super::*;

/// The single error of a config that must not convert.
fn error_of(config: &str, extra: &[(&str, &str)]) -> ImportError {
    let errors = import_text(config, extra).expect_err("the config must not convert");
    assert_eq!(errors.0.len(), 1, "{errors}");
    errors.0[0].clone()
}

const HEAD: &str = "\
config_version: \"1.0\"
iothub:
  authentication_method: symmetric_key
configuration:
  default_edge_agent: mcr.microsoft.com/azureiotedge-agent:1.2
";

#[test]
fn a_duplicate_device_id_names_both_places() {
    let config = format!(
        "{HEAD}edgedevices:
  device_id: top
  child:
    - device_id: lower
    - device_id: lower
"
    );
    let e = error_of(&config, &[]);
    assert_eq!(e.field, "edgedevices.child[1].device_id");
    assert_eq!(e.place.line, Some(10));
    assert!(
        e.problem.contains("\"lower\" is used twice"),
        "{}",
        e.problem
    );
    assert!(
        e.problem
            .contains("first at edgedevices.child[0].device_id, line 9"),
        "{}",
        e.problem
    );
    assert!(e.fix.contains("unique id"));
    assert!(
        e.to_string()
            .starts_with("/cfg/iotedge_config.yaml:10: error: edgedevices.child[1].device_id: "),
        "{e}"
    );
}

#[test]
fn a_missing_deployment_file_names_the_field_and_the_folder() {
    let config = format!(
        "{HEAD}edgedevices:
  device_id: top
  deployment: ./templates/tutorial/deploymentTopLayer.json
"
    );
    let e = error_of(&config, &[]);
    assert_eq!(e.field, "edgedevices.deployment");
    assert_eq!(e.place.line, Some(8));
    assert!(
        e.problem
            .contains("/cfg/templates/tutorial/deploymentTopLayer.json"),
        "{}",
        e.problem
    );
    assert!(
        e.fix
            .contains("relative to the folder of the config file (/cfg)"),
        "{}",
        e.fix
    );
}

#[test]
fn an_unknown_authentication_method_says_which_ones_exist() {
    let config = "\
config_version: \"1.0\"
iothub:
  authentication_method: sas
edgedevices:
  device_id: top
";
    let e = error_of(config, &[]);
    assert_eq!(e.field, "iothub.authentication_method");
    assert_eq!(e.place.line, Some(3));
    assert!(e.problem.contains("\"sas\""));
    assert_eq!(e.fix, "use symmetric_key or x509_certificate");
}

#[test]
fn a_wrong_type_carries_serde_yamls_line_and_column() {
    let config = format!(
        "{HEAD}edgedevices:
  device_id: top
  child:
    - device_id: [lower]
"
    );
    let e = error_of(&config, &[]);
    assert_eq!(e.field, "edgedevices.child[0].device_id");
    assert_eq!((e.place.line, e.place.column), (Some(9), Some(18)));
    assert!(e.problem.contains("expected a string"));
    assert!(e.fix.contains("quote"));
}

#[test]
fn a_missing_device_id_names_the_device() {
    let config = format!(
        "{HEAD}edgedevices:
  device_id: top
  child:
    - hostname: lower.local
"
    );
    let e = error_of(&config, &[]);
    assert_eq!(e.field, "edgedevices.child[0]");
    assert_eq!(e.place.line, Some(9));
    assert!(e.problem.contains("missing field `device_id`"));
    assert_eq!(e.fix, "add `device_id` here");
}

#[test]
fn broken_yaml_names_the_line() {
    let config = "config_version: \"1.0\"\niothub: [\n";
    let e = error_of(config, &[]);
    assert!(e.place.line.is_some(), "{e}");
}

#[test]
fn an_unsupported_config_version_is_refused() {
    let config = "\
config_version: \"2.0\"
iothub:
  authentication_method: symmetric_key
edgedevices:
  device_id: top
";
    let e = error_of(config, &[]);
    assert_eq!(e.field, "config_version");
    assert_eq!(e.place.line, Some(1));
}

#[test]
fn invalid_json_in_a_deployment_names_the_file_and_its_line() {
    let config = format!(
        "{HEAD}edgedevices:
  device_id: top
  deployment: broken.json
"
    );
    let e = error_of(
        &config,
        &[(
            "broken.json",
            "{\n  \"modulesContent\": {\n    \"$edgeAgent\": ,\n",
        )],
    );
    assert_eq!(e.place.file, "/cfg/broken.json");
    assert_eq!(e.place.line, Some(3));
    assert!(
        e.problem
            .contains("named by edgedevices.deployment, line 8"),
        "{}",
        e.problem
    );
}

#[test]
fn a_root_ca_that_is_not_a_ca_is_refused_before_anything_is_applied() {
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["not-a-ca".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = format!(
        "{HEAD}certificates:
  root_ca_cert_path: root.pem
  root_ca_cert_key_path: root.key.pem
edgedevices:
  device_id: top
"
    );
    let e = error_of(
        &config,
        &[
            ("root.pem", &leaf.pem()),
            ("root.key.pem", &key.serialize_pem()),
        ],
    );
    assert_eq!(e.field, "certificates");
    assert_eq!(e.place.line, Some(6));
    assert!(
        e.problem.contains("root_ca_cert_path is tls.crt"),
        "{}",
        e.problem
    );
    assert!(
        e.problem.contains("not a CA")
            || e.problem.contains("CA:FALSE")
            || e.problem.contains("basicConstraints"),
        "{}",
        e.problem
    );

    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let e = error_of(
        &config,
        &[
            ("root.pem", garbage),
            ("root.key.pem", &key.serialize_pem()),
        ],
    );
    assert_eq!(e.field, "certificates");
    assert!(!e.to_string().contains("PRIVATE KEY"));
}

#[test]
fn a_certificates_section_needs_both_paths() {
    let config = format!(
        "{HEAD}certificates:
  root_ca_cert_path: root.pem
edgedevices:
  device_id: top
"
    );
    let e = error_of(&config, &[]);
    assert_eq!(e.field, "certificates");
    assert_eq!(e.place.line, Some(6));
    assert!(
        e.problem
            .contains("certificates.root_ca_cert_key_path is missing")
    );
}

#[test]
fn too_deep_a_tree_is_refused_with_the_operators_own_rule() {
    let mut config = format!("{HEAD}edgedevices:\n  device_id: l1\n");
    let mut indent = String::from("  ");
    for level in 2..=6 {
        config.push_str(&format!(
            "{indent}child:\n{indent}  - device_id: l{level}\n"
        ));
        indent.push_str("    ");
    }
    let e = error_of(&config, &[]);
    assert_eq!(
        e.field,
        "edgedevices.child[0].child[0].child[0].child[0].child[0]"
    );
    assert_eq!(e.place.line, Some(17));
    assert!(
        e.problem
            .contains("device \"l6\": the device is in layer 6"),
        "{}",
        e.problem
    );
}

#[test]
fn an_id_iothub_refuses_is_caught_here() {
    let config = format!("{HEAD}edgedevices:\n  device_id: \"top layer\"\n");
    let e = error_of(&config, &[]);
    assert_eq!(e.field, "edgedevices.device_id");
    assert_eq!(e.place.line, Some(7));
    assert!(e.problem.contains("' '"), "{}", e.problem);
}

#[test]
fn errors_are_reported_all_at_once() {
    let config = format!(
        "{HEAD}edgedevices:
  device_id: top
  deployment: missing-a.json
  child:
    - device_id: top
      deployment: missing-b.json
"
    );
    let errors = import_text(&config, &[]).unwrap_err();
    assert_eq!(errors.0.len(), 2, "{errors}");
}

#[test]
fn an_az_config_with_a_bad_method_or_json_error_says_where() {
    let yaml = "\
configVersion: \"1.0\"
iotHub:
  authenticationMethod: symmetric_key
edgeDevices:
  - deviceId: a
";
    let errors = import(
        Path::new("/cfg/devices.yaml"),
        &files(&[("devices.yaml", yaml)]),
        &ImportOptions::default(),
        Timestamp::now(),
    )
    .unwrap_err();
    let e = &errors.0[0];
    assert_eq!(e.field, "iotHub.authenticationMethod");
    assert_eq!(e.place.line, Some(3));
    assert_eq!(e.fix, "use symmetricKey or x509Certificate");

    let json = "{\n  \"configVersion\": \"1.0\",\n  \"iotHub\": {\"authenticationMethod\": \"symmetricKey\"},\n  \"edgeDevices\": [\n    {\"deviceId\": \"a\", \"children\": [{\"deviceId\": \"a\"}]}\n  ]\n}\n";
    let errors = import(
        Path::new("/cfg/devices.json"),
        &files(&[("devices.json", json)]),
        &ImportOptions::default(),
        Timestamp::now(),
    )
    .unwrap_err();
    let e = &errors.0[0];
    assert_eq!(e.field, "edgeDevices[0].children[0].deviceId");
    assert_eq!(e.place.line, Some(5));

    let broken =
        "{\n  \"configVersion\": \"1.0\",\n  \"iotHub\": {\"authenticationMethod\": 1}\n}\n";
    let errors = import(
        Path::new("/cfg/devices.json"),
        &files(&[("devices.json", broken)]),
        &ImportOptions::default(),
        Timestamp::now(),
    )
    .unwrap_err();
    assert_eq!(errors.0[0].place.line, Some(3), "{errors}");
}

#[test]
fn a_file_of_neither_format_is_refused() {
    let errors = import(
        Path::new("/cfg/x.yaml"),
        &files(&[("x.yaml", "apiVersion: v1\nkind: ConfigMap\n")]),
        &ImportOptions::default(),
        Timestamp::now(),
    )
    .unwrap_err();
    assert!(errors.0[0].problem.contains("neither"));
    let missing = import(
        Path::new("/cfg/none.yaml"),
        &files(&[]),
        &ImportOptions::default(),
        Timestamp::now(),
    )
    .unwrap_err();
    assert!(missing.0[0].problem.contains("cannot read the config file"));
}
