//! merge-config.awk, run with this machine's awk on fixtures, its output read by a real TOML
//! parser: the bundle's keys win, the operator-owned tables are replaced whole, every other key,
//! table and comment of the installed file survives, merging again changes no byte, and input
//! that is not TOML stops the merge with the file and line.

use std::path::Path;
use std::process::Command;

use edge_hierarchy_operator::bundle::{
    BundleInput, DeviceAuth, MERGE_PROGRAM_FILE, MERGED_MARKER, bundle_files, render_merge_program,
};
use edge_hierarchy_operator::deploy::{Password, RegistryLogin};
use edge_hierarchy_operator::pki::{IssuedCertificate, PrivateKey};

fn pem(label: &str, text: &str) -> String {
    pem::encode_config(
        &pem::Pem::new(label, text.as_bytes().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn certificate(name: &str) -> IssuedCertificate {
    let cert_pem = pem("CERTIFICATE", name);
    IssuedCertificate {
        chain_pem: cert_pem.clone(),
        cert_pem,
        key: PrivateKey::from_pem(&pem("PRIVATE KEY", name)).unwrap(),
        not_before: "2025-01-01T00:00:00Z".parse().unwrap(),
        not_after: "2025-03-31T00:00:00Z".parse().unwrap(),
        sha256_thumbprint: "0".repeat(64),
    }
}

fn device(auth: DeviceAuth, agent_auth: Option<RegistryLogin>) -> BundleInput {
    BundleInput {
        hierarchy: "plant".into(),
        namespace: "iot".into(),
        hub_hostname: "hub.azure-devices.net".into(),
        device_id: "line-1".into(),
        layer: 2,
        parent_device_id: Some("gateway".into()),
        hostname: Some("10.0.0.5".into()),
        parent_hostname: Some("10.0.0.4".into()),
        auth,
        trust_bundle: vec![pem("CERTIFICATE", "root")],
        edge_ca: certificate("edge ca"),
        agent_image: "$upstream:443/azureiotedge-agent:1.5".into(),
        upstream_port: 443,
        agent_auth,
    }
}

fn sas() -> DeviceAuth {
    DeviceAuth::SymmetricKey {
        shared_access_key: "a2V5".into(),
    }
}

fn bundle_config(input: &BundleInput) -> String {
    let files = bundle_files(input).unwrap();
    let program = files.iter().find(|f| f.path == MERGE_PROGRAM_FILE).unwrap();
    assert_eq!(program.contents, render_merge_program().into_bytes());
    let config = files.iter().find(|f| f.path == "config.toml").unwrap();
    String::from_utf8(config.contents.clone()).unwrap()
}

/// Runs the merge; Ok(merged) or Err(stderr).
fn merge(bundle: &str, installed: Option<&str>) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let program = write("merge-config.awk", &render_merge_program());
    let bundle = write("bundle.toml", bundle);
    let installed = match installed {
        Some(text) => write("config.toml", text),
        None => Path::new("/dev/null").to_path_buf(),
    };
    let out = Command::new("awk")
        .arg("-f")
        .arg(&program)
        .arg(&bundle)
        .arg(&installed)
        .output()
        .expect("awk must be installed");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn parse(text: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("the merge wrote invalid TOML ({e}):\n{text}"))
}

/// Merges, checks the result parses, and that a second merge changes no byte.
fn merged(bundle: &str, installed: Option<&str>) -> (String, toml::Table) {
    let once = merge(bundle, installed).unwrap();
    let twice = merge(bundle, Some(&once)).unwrap();
    assert_eq!(once, twice, "merging again changed the file");
    let table = parse(&once);
    (once, table)
}

const USER_CONFIG: &str = r#"# Factory line 1, set up by hand.
hostname = "old-name"
auto_reprovisioning_mode = "OnErrorOnly"

[provisioning]
source = "dps"
global_endpoint = "https://global.azure-devices-provisioning.net"
id_scope = "0ne00000000"

[provisioning.attestation]
method = "symmetric_key"
registration_id = "line-1"

[aziot_keys]
pkcs11_lib_path = "/usr/lib/softhsm/libsofthsm2.so"
pkcs11_base_slot = 'pkcs11:slot-id=0?pin-value=1234'

[agent]
name = "edgeAgent"
type = "docker"
config = { image = "mcr.microsoft.com/azureiotedge-agent:1.4" }

# Outbound traffic goes through the factory proxy.
[agent.env]
https_proxy = "http://proxy.factory:3128"
UpstreamProtocol = "AmqpWs"
banner = """
[edge_ca]
# not a comment, and not a table
"""

[edge_ca]
cert = "file:///etc/old/ca.pem"
pk = "file:///etc/old/ca.key"

[[principal]]
uid = 1001
name = "monitor"
idtype = ["device", "module"]

[moby_runtime]
uri = "unix:///var/run/docker.sock"
network = "azure-iot-edge"
content_trust = { ca_certs = [
    "file:///etc/trust/a.pem",
    "file:///etc/trust/b.pem",
] }
"#;

#[test]
fn the_bundle_wins_and_the_users_settings_survive() {
    let bundle = bundle_config(&device(sas(), None));
    let (text, config) = merged(&bundle, Some(USER_CONFIG));
    assert!(text.starts_with(MERGED_MARKER), "{text}");
    // The bundle's keys won.
    assert_eq!(config["hostname"].as_str(), Some("10.0.0.5"));
    assert_eq!(config["parent_hostname"].as_str(), Some("10.0.0.4"));
    assert_eq!(
        config["agent"]["config"]["image"].as_str(),
        Some("$upstream:443/azureiotedge-agent:1.5")
    );
    // Owned tables are the bundle's whole: nothing of the old DPS setup or edge CA is left.
    let provisioning = config["provisioning"].as_table().unwrap();
    let keys: Vec<&str> = provisioning.keys().map(String::as_str).collect();
    assert_eq!(keys, ["connection_string", "source"]);
    assert_eq!(provisioning["source"].as_str(), Some("manual"));
    let edge_ca = config["edge_ca"].as_table().unwrap();
    assert_eq!(
        edge_ca["pk"].as_str(),
        Some("file:///var/aziot/secrets/line-1.key.pem")
    );
    assert_eq!(edge_ca.len(), 2);
    // Everything else of the user's stayed.
    assert_eq!(
        config["auto_reprovisioning_mode"].as_str(),
        Some("OnErrorOnly")
    );
    assert_eq!(
        config["aziot_keys"]["pkcs11_base_slot"].as_str(),
        Some("pkcs11:slot-id=0?pin-value=1234")
    );
    assert_eq!(
        config["agent"]["env"]["https_proxy"].as_str(),
        Some("http://proxy.factory:3128")
    );
    assert_eq!(
        config["agent"]["env"]["banner"].as_str(),
        Some("[edge_ca]\n# not a comment, and not a table\n")
    );
    assert_eq!(config["principal"][0]["uid"].as_integer(), Some(1001));
    assert_eq!(
        config["moby_runtime"]["content_trust"]["ca_certs"][1].as_str(),
        Some("file:///etc/trust/b.pem")
    );
    assert!(
        text.contains("# Outbound traffic goes through the factory proxy.\n[agent.env]\n"),
        "{text}"
    );
    // Every bundle key is in the result with the bundle's value.
    let bundle_table = parse(&bundle);
    assert_contains(&config, &bundle_table, "");
}

/// Every key of `expected` is in `actual` with the same value.
fn assert_contains(actual: &toml::Table, expected: &toml::Table, path: &str) {
    for (key, value) in expected {
        let here = format!("{path}{key}");
        match (value, actual.get(key)) {
            (toml::Value::Table(inner), Some(toml::Value::Table(got))) => {
                assert_contains(got, inner, &format!("{here}."))
            }
            (_, got) => assert_eq!(got, Some(value), "{here}"),
        }
    }
}

#[test]
fn a_fresh_device_gets_exactly_the_bundle() {
    let bundle = bundle_config(&device(sas(), None));
    let (_, config) = merged(&bundle, None);
    assert_eq!(config, parse(&bundle));
}

#[test]
fn keys_an_older_bundle_wrote_in_owned_tables_are_dropped() {
    let login = RegistryLogin {
        address: "$upstream:443".into(),
        username: "puller".into(),
        password: Password::new("pw"),
    };
    let old = bundle_config(&device(sas(), Some(login)));
    let (installed, _) = merged(&old, Some(USER_CONFIG));
    // The new bundle switches to X.509 and drops the registry login.
    let new = bundle_config(&device(
        DeviceAuth::X509 {
            identity: certificate("identity"),
        },
        None,
    ));
    let (_, config) = merged(&new, Some(&installed));
    let provisioning = config["provisioning"].as_table().unwrap();
    assert!(!provisioning.contains_key("connection_string"));
    assert_eq!(
        provisioning["authentication"]["method"].as_str(),
        Some("x509")
    );
    assert!(config["agent"]["config"].get("auth").is_none());
    assert_eq!(
        config["agent"]["env"]["https_proxy"].as_str(),
        Some("http://proxy.factory:3128")
    );
    // A device moved to the top layer loses its parent.
    let top = BundleInput {
        layer: 1,
        parent_device_id: None,
        parent_hostname: None,
        agent_image: "mcr.microsoft.com/azureiotedge-agent:1.5".into(),
        ..device(sas(), None)
    };
    let (_, config) = merged(&bundle_config(&top), Some(&installed));
    assert!(config.get("parent_hostname").is_none());
}

#[test]
fn input_that_is_not_toml_is_refused_with_its_line() {
    let bundle = bundle_config(&device(sas(), None));
    let error = merge(
        &bundle,
        Some("hostname = \"a\"\n[agent]\nthis is not toml\n"),
    )
    .unwrap_err();
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("config.toml"), "{error}");
    let error = merge(&bundle, Some("note = \"\"\"never closed\n")).unwrap_err();
    assert!(error.contains("unterminated"), "{error}");
}

#[test]
fn crlf_files_and_odd_spacing_merge() {
    let bundle = bundle_config(&device(sas(), None));
    let installed = "hostname=\"x\"\r\n[ agent . env ]\r\nhttps_proxy = \"http://p:1\"\r\n[agent]\r\n name = \"mine\"\r\n";
    let (_, config) = merged(&bundle, Some(installed));
    assert_eq!(config["hostname"].as_str(), Some("10.0.0.5"));
    assert_eq!(config["agent"]["name"].as_str(), Some("edgeAgent"));
    assert_eq!(
        config["agent"]["env"]["https_proxy"].as_str(),
        Some("http://p:1")
    );
}
