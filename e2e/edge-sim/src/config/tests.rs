use super::*;

/// The shape of the operator's lower-layer bundle (placeholders, SAS connection string).
const LOWER_LAYER: &str = r#"
# comment
hostname = "{{HOSTNAME}}"
parent_hostname = "{{PARENT_HOSTNAME}}"
trust_bundle_cert = "file:///var/aziot/certs/iotedge_config_cli_root.pem"

[provisioning]
source = "manual"
connection_string = "HostName=my-hub.azure-devices.net;DeviceId=lower-layer;SharedAccessKey=c2VjcmV0LWtleS1ieXRlcw=="

[edge_ca]
cert = "file:///var/aziot/certs/lower-layer.full-chain.cert.pem"
pk = "file:///var/aziot/secrets/lower-layer.key.pem"

[agent]
name = "edgeAgent"
type = "docker"

[agent.config]
image = "$upstream:443/azureiotedge-agent:1.5"

[moby_runtime]
uri = "unix:///var/run/docker.sock"
"#;

/// X509 with hostnames given in the spec.
const X509: &str = r#"
hostname = "10.0.0.5"
parent_hostname = "10.0.0.4"
trust_bundle_cert = "file:///var/aziot/certs/iotedge_config_cli_root.pem"

[provisioning]
source = "manual"
iothub_hostname = "my-hub.azure-devices.net"
device_id = "lower-layer"

[provisioning.authentication]
method = "x509"
identity_cert = "file:///var/aziot/certs/lower-layer.hub-auth.cert.pem"
identity_pk = "file:///var/aziot/secrets/lower-layer.hub-auth.key.pem"

[edge_ca]
cert = "file:///var/aziot/certs/lower-layer.full-chain.cert.pem"
pk = "file:///var/aziot/secrets/lower-layer.key.pem"

[agent.config]
image = "$upstream:443/azureiotedge-agent:1.5"
"#;

/// The `iotedge_config_cli` form of SAS provisioning.
const TOOL_SAS: &str = r#"
hostname = "top.example.com"
[provisioning]
source = "manual"
iothub_hostname = "hub.azure-devices.net"
device_id = "top-layer"
[provisioning.authentication]
method = "sas"
device_id_pk = { value = "a2V5" }
"#;

#[test]
fn parses_the_placeholder_bundle() {
    let config = parse_config(LOWER_LAYER).unwrap();
    assert_eq!(config.hostname.as_deref(), Some(HOSTNAME_PLACEHOLDER));
    assert_eq!(
        config.parent_hostname.as_deref(),
        Some(PARENT_HOSTNAME_PLACEHOLDER)
    );
    assert_eq!(
        config.trust_bundle_cert.as_deref(),
        Some("file:///var/aziot/certs/iotedge_config_cli_root.pem")
    );
    assert_eq!(config.provisioning.device_id(), "lower-layer");
    assert_eq!(
        config.provisioning.iothub_hostname(),
        "my-hub.azure-devices.net"
    );
    assert_eq!(
        config.provisioning.shared_access_key(),
        Some("c2VjcmV0LWtleS1ieXRlcw==")
    );
    let ca = config.edge_ca.unwrap();
    assert_eq!(ca.pk, "file:///var/aziot/secrets/lower-layer.key.pem");
    assert_eq!(
        config.agent_image.as_deref(),
        Some("$upstream:443/azureiotedge-agent:1.5")
    );
}

#[test]
fn parses_x509_and_tool_sas_forms() {
    let config = parse_config(X509).unwrap();
    assert_eq!(config.parent_hostname.as_deref(), Some("10.0.0.4"));
    match &config.provisioning {
        Provisioning::X509 {
            identity_pk,
            device_id,
            ..
        } => {
            assert_eq!(
                identity_pk,
                "file:///var/aziot/secrets/lower-layer.hub-auth.key.pem"
            );
            assert_eq!(device_id, "lower-layer");
        }
        other => panic!("expected x509, got {other:?}"),
    }
    assert_eq!(config.provisioning.shared_access_key(), None);
    let tool = parse_config(TOOL_SAS).unwrap();
    assert_eq!(tool.provisioning.shared_access_key(), Some("a2V5"));
    assert_eq!(tool.parent_hostname, None);
    assert_eq!(tool.edge_ca, None);
}

#[test]
fn debug_never_shows_the_key() {
    let config = parse_config(LOWER_LAYER).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("c2VjcmV0"), "{shown}");
    assert!(shown.contains("<redacted>"));
    let tool = format!("{:?}", parse_config(TOOL_SAS).unwrap());
    assert!(!tool.contains("a2V5"), "{tool}");
}

#[test]
fn errors_name_the_key_and_never_the_secret() {
    let cases: &[(&str, &str)] = &[
        (
            "hostname = 1\n[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey=k\"",
            "hostname must be a string",
        ),
        ("hostname = \"h\"", "[provisioning] is missing"),
        (
            "[provisioning]\nsource = \"dps\"",
            "supports \"manual\" provisioning only",
        ),
        (
            "[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h;SharedAccessKey=SECRETVALUE\"",
            "provisioning.connection_string: the connection string has no DeviceId",
        ),
        (
            "[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h;DeviceId=d;Bogus=SECRETVALUE\"",
            "unknown connection string key \"Bogus\"",
        ),
        (
            "[provisioning]\nsource = \"manual\"\nconnection_string = \"SECRETVALUE\"",
            "has no '='",
        ),
        (
            "[provisioning]\nsource = \"manual\"\niothub_hostname = \"h\"\ndevice_id = \"d\"",
            "[provisioning.authentication] is missing",
        ),
        (
            "[provisioning]\nsource = \"manual\"\niothub_hostname = \"h\"\ndevice_id = \"d\"\n[provisioning.authentication]\nmethod = \"tpm\"",
            "method \"tpm\" is not supported",
        ),
        (
            "[provisioning]\nsource = \"manual\"\niothub_hostname = \"h\"\ndevice_id = \"d\"\n[provisioning.authentication]\nmethod = \"x509\"\nidentity_cert = \"file:///c\"",
            "provisioning.authentication.identity_pk is missing",
        ),
        (
            "[provisioning]\nsource = \"manual\"\niothub_hostname = \"h\"\ndevice_id = \"d\"\n[provisioning.authentication]\nmethod = \"sas\"",
            "device_id_pk is missing",
        ),
        (
            "[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey=k\"\n[edge_ca]\ncert = \"file:///c\"",
            "edge_ca.pk is missing",
        ),
        (
            "agent = 3\n[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey=k\"",
            "agent must be a table",
        ),
        (
            "connection_string = \"SECRETVALUE\nbroken",
            "config.toml is not valid TOML at line",
        ),
    ];
    for (text, expected) in cases {
        let error = parse_config(text).unwrap_err();
        assert!(error.contains(expected), "{text:?}: {error}");
        assert!(!error.contains("SECRETVALUE"), "{error}");
    }
}

#[test]
fn placeholders_are_filled_like_sed() {
    let filled = fill_placeholders(
        LOWER_LAYER,
        "lower-layer.edge.sim",
        Some("top-layer.edge.sim"),
    );
    let config = parse_config(&filled).unwrap();
    assert_eq!(config.hostname.as_deref(), Some("lower-layer.edge.sim"));
    assert_eq!(
        config.parent_hostname.as_deref(),
        Some("top-layer.edge.sim")
    );
    let top_only = fill_placeholders(LOWER_LAYER, "x", None);
    assert!(top_only.contains(PARENT_HOSTNAME_PLACEHOLDER));
}

#[test]
fn file_uris() {
    assert_eq!(
        file_uri_path("file:///var/aziot/certs/a.pem").unwrap(),
        PathBuf::from("/var/aziot/certs/a.pem")
    );
    assert_eq!(
        file_uri_path("file:///var/aziot/certs/a%20b.pem").unwrap(),
        PathBuf::from("/var/aziot/certs/a b.pem")
    );
    assert_eq!(
        file_uri_name("file:///var/aziot/secrets/dev%3A1.key.pem").unwrap(),
        "dev:1.key.pem"
    );
    for bad in [
        "/var/a.pem",
        "file://relative/a.pem",
        "file:///var/../etc/passwd",
        "http://x/a",
    ] {
        assert!(file_uri_path(bad).is_err(), "{bad}");
    }
    assert!(file_uri_name("file:///").is_err());
}

#[test]
fn slugs_are_distinct_and_safe() {
    assert_eq!(device_slug("top-layer"), "top-layer");
    let a = device_slug("Sensor:17");
    let b = device_slug("sensor-17");
    assert_ne!(a, b);
    assert!(a.starts_with("sensor-17-"), "{a}");
    assert!(device_slug("$$$").chars().all(|c| c.is_ascii_hexdigit()));
    let long = device_slug(&"x".repeat(128));
    assert!(long.len() < 60, "{long}");
}
