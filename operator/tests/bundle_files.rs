//! Device bundles: golden files for the tutorial's two devices, config.toml parsed as TOML with
//! every aziot-edge key checked, install.sh through `bash -n`, `sh -n` and shellcheck, archives
//! read back with their modes, fingerprints, validation, and no secret in any Debug output.

mod common;

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edge_hierarchy_operator::api::KeyAlgorithm;
use edge_hierarchy_operator::bundle::{
    ArchiveFormat, BundleError, BundleFile, BundleInput, CERT_DIR, DeviceAuth, SECRET_DIR,
    TRUST_BUNDLE_FILE, bundle_files, bundle_fingerprint, mode_for_path, write_archive,
    write_tar_gz, write_zip,
};
use edge_hierarchy_operator::deploy::{Password, RegistryLogin};
use edge_hierarchy_operator::pki::{
    IdentitySigner, IssuedCertificate, PrivateKey, generate_key, generate_root_ca, issue_edge_ca,
    issue_identity_certificate,
};
use jiff::Timestamp;

// ---------------------------------------------------------------------------------------------
// Fixed inputs: placeholders instead of certificates and keys, so golden files are stable.

const SAS_KEY: &str = "UExBQ0VIT0xERVItU0FTLUtFWS1ub3QtYS1zZWNyZXQ=";

fn placeholder_pem(label: &str, text: &str) -> String {
    pem::encode_config(
        &pem::Pem::new(label, text.as_bytes().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn placeholder_certificate(name: &str) -> IssuedCertificate {
    let cert_pem = placeholder_pem("CERTIFICATE", &format!("placeholder certificate {name}"));
    let root = placeholder_pem("CERTIFICATE", "placeholder root CA");
    IssuedCertificate {
        chain_pem: format!("{cert_pem}{root}"),
        cert_pem,
        key: PrivateKey::from_pem(&placeholder_pem(
            "PRIVATE KEY",
            &format!("placeholder key {name}"),
        ))
        .unwrap(),
        not_before: "2025-01-01T00:00:00Z".parse().unwrap(),
        not_after: "2025-03-31T00:00:00Z".parse().unwrap(),
        sha256_thumbprint: "0".repeat(64),
    }
}

/// The tutorial's devices (reference/iotedge/iotedge_config.yaml): `top-layer` and its child
/// `lower-layer`, symmetric keys, hostnames left for install.sh to ask.
fn tutorial_device(device_id: &str) -> BundleInput {
    let top = device_id == "top-layer";
    BundleInput {
        hierarchy: "tutorial".into(),
        namespace: "iot".into(),
        hub_hostname: "my-hub.azure-devices.net".into(),
        device_id: device_id.into(),
        layer: if top { 1 } else { 2 },
        parent_device_id: (!top).then(|| "top-layer".into()),
        hostname: None,
        parent_hostname: None,
        auth: DeviceAuth::SymmetricKey {
            shared_access_key: SAS_KEY.into(),
        },
        trust_bundle: vec![placeholder_pem("CERTIFICATE", "placeholder root CA")],
        edge_ca: placeholder_certificate(&format!("{device_id} edge CA")),
        agent_image: if top {
            "mcr.microsoft.com/azureiotedge-agent:1.5".into()
        } else {
            "$upstream:443/azureiotedge-agent:1.5".into()
        },
        upstream_port: 443,
        agent_auth: None,
    }
}

/// The lower layer in X509 mode with both hostnames known: the other config.toml shape.
fn x509_lower_layer_with_hostnames() -> BundleInput {
    BundleInput {
        hostname: Some("10.0.0.5".into()),
        parent_hostname: Some("10.0.0.4".into()),
        auth: DeviceAuth::X509 {
            identity: placeholder_certificate("lower-layer identity"),
        },
        ..tutorial_device("lower-layer")
    }
}

fn file<'a>(files: &'a [BundleFile], path: &str) -> &'a BundleFile {
    files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} missing from {files:?}"))
}

fn text(files: &[BundleFile], path: &str) -> String {
    String::from_utf8(file(files, path).contents.clone()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Golden files

fn golden_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
}

fn listing(files: &[BundleFile]) -> String {
    files
        .iter()
        .map(|f| format!("{:04o} {:>5} {}\n", f.mode, f.contents.len(), f.path))
        .collect()
}

/// Compares config.toml, install.sh, README.md and the file listing with
/// tests/golden/<case>/. `UPDATE_GOLDEN=1` rewrites them and fails, so an update is never a pass.
fn check_golden(case: &str, input: &BundleInput) {
    let files = bundle_files(input).unwrap();
    let expected: Vec<(&str, String)> = vec![
        ("config.toml", text(&files, "config.toml")),
        ("install.sh", text(&files, "install.sh")),
        ("README.md", text(&files, "README.md")),
        ("files.txt", listing(&files)),
    ];
    let dir = golden_dir(case);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, contents) in &expected {
            std::fs::write(dir.join(name), contents).unwrap();
        }
        panic!(
            "rewrote {}; check the diff by hand and run again without UPDATE_GOLDEN",
            dir.display()
        );
    }
    for (name, contents) in &expected {
        let path = dir.join(name);
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert!(
            golden == *contents,
            "{} differs from the rendered file:\n--- golden\n{golden}\n--- rendered\n{contents}",
            path.display()
        );
    }
}

#[test]
fn tutorial_top_layer_matches_golden_files() {
    check_golden("tutorial-top-layer", &tutorial_device("top-layer"));
}

#[test]
fn tutorial_lower_layer_matches_golden_files() {
    check_golden("tutorial-lower-layer", &tutorial_device("lower-layer"));
}

#[test]
fn x509_lower_layer_with_hostnames_matches_golden_files() {
    check_golden(
        "x509-lower-layer-with-hostnames",
        &x509_lower_layer_with_hostnames(),
    );
}

// ---------------------------------------------------------------------------------------------
// config.toml

#[test]
fn agent_auth_is_the_agent_config_auth_table_after_the_image() {
    for (device, address) in [
        ("top-layer", "mcr.microsoft.com"),
        ("lower-layer", "$upstream:443"),
    ] {
        let config = text(
            &bundle_files(&with_agent_auth(device)).unwrap(),
            "config.toml",
        );
        let image = if device == "top-layer" {
            "mcr.microsoft.com/azureiotedge-agent:1.5"
        } else {
            "$upstream:443/azureiotedge-agent:1.5"
        };
        let expected = format!(
            "[agent.config]\nimage = \"{image}\"\n\n\
             [agent.config.auth]\nserveraddress = \"{address}\"\nusername = \"puller\"\n\
             password = \"PLACEHOLDER-registry-pass\\\"word\"\n\n[connect]\n"
        );
        assert!(config.contains(&expected), "{device}:\n{config}");
        // The golden bundles, without agentAuth, stay as they were.
        let plain = text(
            &bundle_files(&tutorial_device(device)).unwrap(),
            "config.toml",
        );
        assert!(!plain.contains("[agent.config.auth]"), "{plain}");
    }
}

#[test]
fn agent_auth_values_are_checked_and_debug_hides_the_password() {
    let input = with_agent_auth("lower-layer");
    let debug = format!("{input:?}");
    assert!(!debug.contains("PLACEHOLDER-registry"), "{debug}");
    let mut bad = input.clone();
    bad.agent_auth.as_mut().unwrap().username = "a\nb".into();
    match bundle_files(&bad) {
        Err(e @ BundleError::InvalidInput { .. }) => {
            assert!(e.to_string().contains("agent auth username"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let mut bad = input;
    bad.agent_auth.as_mut().unwrap().password = Password::new("");
    assert!(bundle_files(&bad).is_err());
}

fn variants() -> Vec<(String, BundleInput)> {
    let mut out = Vec::new();
    for device in ["top-layer", "lower-layer"] {
        for x509 in [false, true] {
            for hostnames in [false, true] {
                let mut input = tutorial_device(device);
                if x509 {
                    input.auth = DeviceAuth::X509 {
                        identity: placeholder_certificate("identity"),
                    };
                }
                if hostnames {
                    input.hostname = Some("gw.factory.example".into());
                    if !input.is_top_layer() {
                        input.parent_hostname = Some("10.0.0.4".into());
                    }
                }
                out.push((format!("{device} x509={x509} hostnames={hostnames}"), input));
            }
        }
    }
    for device in ["top-layer", "lower-layer"] {
        out.push((format!("{device} agent auth"), with_agent_auth(device)));
    }
    // Last: odd_device_ids_get_safe_file_names takes it from the end.
    let mut odd = tutorial_device("lower-layer");
    odd.device_id = "Line#7 'press' (v2)@hall=3".into();
    odd.hierarchy = "factory".into();
    out.push(("odd device id".into(), odd));
    out
}

const REGISTRY_PASSWORD: &str = "PLACEHOLDER-registry-pass\"word";

/// A device whose agent image comes from a private registry; below the top layer the login,
/// like the image, goes to `$upstream:443` (the bundle plan decides the address).
fn with_agent_auth(device_id: &str) -> BundleInput {
    let input = tutorial_device(device_id);
    let address = if input.is_top_layer() {
        "mcr.microsoft.com"
    } else {
        "$upstream:443"
    };
    BundleInput {
        agent_auth: Some(RegistryLogin {
            address: address.into(),
            username: "puller".into(),
            password: Password::new(REGISTRY_PASSWORD),
        }),
        ..input
    }
}

fn str_at<'a>(table: &'a toml::Table, path: &str) -> &'a str {
    let mut value: &toml::Value = &table[path.split('.').next().unwrap()];
    for key in path.split('.').skip(1) {
        value = &value[key];
    }
    value
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

/// A `file://` URI of config.toml: the directory it points into and the bundle file it names.
fn uri_file(uri: &str) -> (&str, &str) {
    let path = uri.strip_prefix("file://").expect("file URI");
    path.rsplit_once('/').unwrap()
}

#[test]
fn config_toml_parses_and_carries_the_aziot_edge_keys() {
    for (case, input) in variants() {
        let files = bundle_files(&input).unwrap();
        let config = text(&files, "config.toml");
        let table: toml::Table = config
            .parse()
            .unwrap_or_else(|e| panic!("{case}: {e}\n{config}"));

        let hostname = str_at(&table, "hostname");
        assert_eq!(
            hostname,
            input.hostname.as_deref().unwrap_or("{{HOSTNAME}}"),
            "{case}"
        );
        match input.is_top_layer() {
            true => assert!(!table.contains_key("parent_hostname"), "{case}"),
            false => assert_eq!(
                str_at(&table, "parent_hostname"),
                input
                    .parent_hostname
                    .as_deref()
                    .unwrap_or("{{PARENT_HOSTNAME}}"),
                "{case}"
            ),
        }
        assert_eq!(str_at(&table, "provisioning.source"), "manual", "{case}");
        match &input.auth {
            DeviceAuth::SymmetricKey { shared_access_key } => {
                assert_eq!(
                    str_at(&table, "provisioning.connection_string"),
                    format!(
                        "HostName=my-hub.azure-devices.net;DeviceId={};SharedAccessKey={shared_access_key}",
                        input.device_id
                    ),
                    "{case}"
                );
                assert!(
                    !table["provisioning"]
                        .as_table()
                        .unwrap()
                        .contains_key("authentication")
                );
            }
            DeviceAuth::X509 { identity } => {
                assert_eq!(
                    str_at(&table, "provisioning.iothub_hostname"),
                    "my-hub.azure-devices.net"
                );
                assert_eq!(str_at(&table, "provisioning.device_id"), input.device_id);
                assert_eq!(str_at(&table, "provisioning.authentication.method"), "x509");
                let (dir, name) =
                    uri_file(str_at(&table, "provisioning.authentication.identity_cert"));
                assert_eq!(
                    (dir, file(&files, name).contents.as_slice()),
                    (CERT_DIR, identity.cert_pem.as_bytes())
                );
                let (dir, name) =
                    uri_file(str_at(&table, "provisioning.authentication.identity_pk"));
                assert_eq!(
                    (dir, file(&files, name).contents.as_slice()),
                    (SECRET_DIR, identity.key.pem().as_bytes())
                );
                assert!(
                    !table["provisioning"]
                        .as_table()
                        .unwrap()
                        .contains_key("connection_string")
                );
            }
        }
        let (dir, name) = uri_file(str_at(&table, "trust_bundle_cert"));
        assert_eq!((dir, name), (CERT_DIR, TRUST_BUNDLE_FILE), "{case}");
        let (dir, name) = uri_file(str_at(&table, "edge_ca.cert"));
        assert_eq!(dir, CERT_DIR);
        assert_eq!(
            file(&files, name).contents,
            input.edge_ca.chain_pem.as_bytes(),
            "{case}"
        );
        let (dir, name) = uri_file(str_at(&table, "edge_ca.pk"));
        assert_eq!(dir, SECRET_DIR);
        assert_eq!(
            file(&files, name).contents,
            input.edge_ca.key.pem().as_bytes(),
            "{case}"
        );

        assert_eq!(str_at(&table, "agent.name"), "edgeAgent");
        assert_eq!(str_at(&table, "agent.type"), "docker");
        assert_eq!(
            str_at(&table, "agent.config.image"),
            input.agent_image,
            "{case}"
        );
        match &input.agent_auth {
            Some(login) => {
                assert_eq!(
                    str_at(&table, "agent.config.auth.serveraddress"),
                    login.address
                );
                assert_eq!(str_at(&table, "agent.config.auth.username"), login.username);
                assert_eq!(
                    str_at(&table, "agent.config.auth.password"),
                    login.password.expose()
                );
                assert_eq!(
                    table["agent"]["config"]["auth"].as_table().unwrap().len(),
                    3
                );
            }
            None => assert!(
                table["agent"]["config"].get("auth").is_none(),
                "{case}: auth without agent_auth"
            ),
        }
        assert_eq!(
            str_at(&table, "connect.workload_uri"),
            "unix:///var/run/iotedge/workload.sock"
        );
        assert_eq!(
            str_at(&table, "connect.management_uri"),
            "unix:///var/run/iotedge/mgmt.sock"
        );
        assert_eq!(
            str_at(&table, "listen.workload_uri"),
            "fd://aziot-edged.workload.socket"
        );
        assert_eq!(
            str_at(&table, "listen.management_uri"),
            "fd://aziot-edged.mgmt.socket"
        );
        assert_eq!(
            str_at(&table, "moby_runtime.uri"),
            "unix:///var/run/docker.sock"
        );
        assert_eq!(str_at(&table, "moby_runtime.network"), "azure-iot-edge");

        // Every certificate and key the config names is a file install.sh installs.
        let script = text(&files, "install.sh");
        for name in files
            .iter()
            .map(|f| f.path.as_str())
            .filter(|p| p.ends_with(".pem"))
        {
            if config.contains(&format!("/{name}\"")) {
                assert!(
                    script.contains(&format!("install_file '{name}'")),
                    "{case}: {name} not installed"
                );
            }
        }
    }
}

#[test]
fn odd_device_ids_get_safe_file_names() {
    let (_, input) = variants().pop().unwrap();
    let files = bundle_files(&input).unwrap();
    for f in &files {
        assert!(
            f.path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)),
            "{}",
            f.path
        );
        // Kubernetes Secret data keys allow these characters only.
        assert!(!f.path.is_empty() && f.path.len() <= 253);
    }
    assert!(
        files
            .iter()
            .any(|f| f.path.starts_with("line-7-press-v2-hall-3-"))
    );
}

// ---------------------------------------------------------------------------------------------
// install.sh

fn run_checker(program: &str, args: &[&str], script: &Path) {
    let out = Command::new(program)
        .args(args)
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed for this test (Debian package; make test installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} rejects {}:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn install_sh_passes_bash_n_sh_n_and_shellcheck() {
    let dir = tempfile::tempdir().unwrap();
    for (index, (case, input)) in variants().into_iter().enumerate() {
        let files = bundle_files(&input).unwrap();
        let script = text(&files, "install.sh");
        assert!(script.starts_with("#!/bin/sh\n"), "{case}");
        assert!(script.contains("\nset -eu\n"), "{case}");
        assert_eq!(file(&files, "install.sh").mode, 0o755);
        let path = dir.path().join(format!("install-{index}.sh"));
        std::fs::write(&path, &script).unwrap();
        run_checker("bash", &["-n"], &path);
        run_checker("sh", &["-n"], &path);
        run_checker("shellcheck", &["--shell=sh", "--severity=style"], &path);
    }
}

#[test]
fn install_sh_sets_the_owners_and_modes_aziot_expects() {
    let files = bundle_files(&x509_lower_layer_with_hostnames()).unwrap();
    let script = text(&files, "install.sh");
    for line in [
        "install_file 'iotedge_config_cli_root.pem' \"$cert_dir\" aziotcs 0644",
        "install_file 'lower-layer.full-chain.cert.pem' \"$cert_dir\" aziotcs 0644",
        "install_file 'lower-layer.key.pem' \"$secret_dir\" aziotks 0600",
        "install_file 'lower-layer.hub-auth.cert.pem' \"$cert_dir\" aziotcs 0644",
        "install_file 'lower-layer.hub-auth.key.pem' \"$secret_dir\" aziotks 0600",
        "cert_dir=/var/aziot/certs",
        "secret_dir=/var/aziot/secrets",
        "rm -rf /var/lib/aziot/certd/certs /var/lib/aziot/keyd/keys",
        "iotedge config apply -c \"$config_file\"",
        "known_hostname='10.0.0.5'",
        "known_parent_hostname='10.0.0.4'",
    ] {
        assert!(script.contains(line), "install.sh lacks {line:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Archives

fn tutorial_files() -> Vec<BundleFile> {
    bundle_files(&x509_lower_layer_with_hostnames()).unwrap()
}

const EXPECTED_PATHS: [(&str, u32); 10] = [
    ("config.toml", 0o600),
    ("install.sh", 0o755),
    ("merge-config.awk", 0o644),
    ("README.md", 0o644),
    ("iotedge_config_cli_root.pem", 0o644),
    ("lower-layer.cert.pem", 0o644),
    ("lower-layer.full-chain.cert.pem", 0o644),
    ("lower-layer.key.pem", 0o600),
    ("lower-layer.hub-auth.cert.pem", 0o644),
    ("lower-layer.hub-auth.key.pem", 0o600),
];

#[test]
fn zip_lists_the_tutorial_layout_with_0600_keys() {
    let files = tutorial_files();
    let bytes = write_zip(&files, Cursor::new(Vec::new()))
        .unwrap()
        .into_inner();
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes.clone())).unwrap();
    let mut found = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).unwrap();
        let mode = entry.unix_mode().unwrap() & 0o7777;
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents).unwrap();
        assert_eq!(
            contents,
            file(&files, entry.name()).contents,
            "{}",
            entry.name()
        );
        found.push((entry.name().to_string(), mode));
    }
    let expected: Vec<(String, u32)> = EXPECTED_PATHS
        .iter()
        .map(|(p, m)| (p.to_string(), *m))
        .collect();
    assert_eq!(found, expected);
    // Same bundle, same bytes: nothing time-dependent goes in.
    assert_eq!(
        write_zip(&files, Cursor::new(Vec::new()))
            .unwrap()
            .into_inner(),
        bytes
    );
}

#[test]
fn tar_gz_lists_the_tutorial_layout_with_0600_keys() {
    let files = tutorial_files();
    let bytes = write_tar_gz(&files, Vec::new()).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    let mut found = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().to_string();
        let mode = entry.header().mode().unwrap();
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents).unwrap();
        assert_eq!(contents, file(&files, &path).contents, "{path}");
        found.push((path, mode));
    }
    let expected: Vec<(String, u32)> = EXPECTED_PATHS
        .iter()
        .map(|(p, m)| (p.to_string(), *m))
        .collect();
    assert_eq!(found, expected);

    // The system tar agrees.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    std::fs::write(&path, &bytes).unwrap();
    let out = Command::new("tar")
        .arg("-tvzf")
        .arg(&path)
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-------") && l.ends_with(" lower-layer.key.pem")),
        "{listing}"
    );
}

#[test]
fn archive_format_follows_the_file_name() {
    assert_eq!(
        ArchiveFormat::from_path(Path::new("out/top-layer.zip")),
        Some(ArchiveFormat::Zip)
    );
    assert_eq!(
        ArchiveFormat::from_path(Path::new("top-layer.TAR.GZ")),
        Some(ArchiveFormat::TarGz)
    );
    assert_eq!(
        ArchiveFormat::from_path(Path::new("top-layer.tgz")),
        Some(ArchiveFormat::TarGz)
    );
    assert_eq!(ArchiveFormat::from_path(Path::new("top-layer.tar")), None);
    let files = tutorial_files();
    let zip_bytes = write_archive(ArchiveFormat::Zip, &files, Cursor::new(Vec::new()))
        .unwrap()
        .into_inner();
    assert_eq!(&zip_bytes[..2], b"PK");
    let gz = write_archive(ArchiveFormat::TarGz, &files, Cursor::new(Vec::new()))
        .unwrap()
        .into_inner();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
}

#[test]
fn modes_can_be_recovered_from_file_names() {
    for file in tutorial_files() {
        assert_eq!(mode_for_path(&file.path), file.mode, "{}", file.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Fingerprint, validation, secrets

#[test]
fn fingerprint_changes_exactly_when_the_bundle_does() {
    let files = tutorial_files();
    let fingerprint = bundle_fingerprint(&files);
    assert_eq!(fingerprint.len(), 64);
    let mut reversed = files.clone();
    reversed.reverse();
    assert_eq!(bundle_fingerprint(&reversed), fingerprint);
    assert_eq!(
        bundle_fingerprint(&bundle_files(&x509_lower_layer_with_hostnames()).unwrap()),
        fingerprint
    );

    let mut renewed = x509_lower_layer_with_hostnames();
    renewed.edge_ca = placeholder_certificate("lower-layer edge CA, renewed");
    assert_ne!(
        bundle_fingerprint(&bundle_files(&renewed).unwrap()),
        fingerprint
    );
    let mut rotated = x509_lower_layer_with_hostnames();
    rotated
        .trust_bundle
        .push(placeholder_pem("CERTIFICATE", "new root"));
    assert_ne!(
        bundle_fingerprint(&bundle_files(&rotated).unwrap()),
        fingerprint
    );
    let mut chmod = files.clone();
    chmod[0].mode = 0o644;
    assert_ne!(bundle_fingerprint(&chmod), fingerprint);
}

#[test]
fn trust_bundle_carries_every_root_once() {
    let mut input = tutorial_device("lower-layer");
    let new_root = placeholder_pem("CERTIFICATE", "new root");
    input.trust_bundle = vec![
        input.trust_bundle[0].clone(),
        new_root.clone(),
        new_root.trim_end().to_string(),
    ];
    let files = bundle_files(&input).unwrap();
    let bundle = text(&files, TRUST_BUNDLE_FILE);
    assert_eq!(bundle, format!("{}{}", input.trust_bundle[0], new_root));
}

#[test]
fn bad_inputs_are_refused_with_the_field_named() {
    let cases: Vec<(BundleInput, &str)> = vec![
        (
            BundleInput {
                hostname: Some("my host".into()),
                ..tutorial_device("top-layer")
            },
            "hostname",
        ),
        (
            BundleInput {
                hostname: Some("a".repeat(64)),
                ..tutorial_device("top-layer")
            },
            "hostname",
        ),
        (
            BundleInput {
                parent_hostname: Some("p|q".into()),
                ..tutorial_device("lower-layer")
            },
            "parent hostname",
        ),
        (
            BundleInput {
                parent_hostname: Some("10.0.0.4".into()),
                ..tutorial_device("top-layer")
            },
            "parent hostname",
        ),
        (
            BundleInput {
                device_id: "a;b".into(),
                ..tutorial_device("top-layer")
            },
            "deviceId",
        ),
        (
            BundleInput {
                device_id: String::new(),
                ..tutorial_device("top-layer")
            },
            "deviceId",
        ),
        (
            BundleInput {
                trust_bundle: vec![],
                ..tutorial_device("top-layer")
            },
            "trust bundle",
        ),
        (
            BundleInput {
                hub_hostname: "hub/x".into(),
                ..tutorial_device("top-layer")
            },
            "iotHub host name",
        ),
        (
            BundleInput {
                agent_image: " ".into(),
                ..tutorial_device("top-layer")
            },
            "agent image",
        ),
        (
            BundleInput {
                auth: DeviceAuth::SymmetricKey {
                    shared_access_key: String::new(),
                },
                ..tutorial_device("top-layer")
            },
            "shared access key",
        ),
    ];
    for (input, field) in cases {
        match bundle_files(&input) {
            Err(BundleError::InvalidInput { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: expected an error, got {other:?}"),
        }
    }
}

#[test]
fn no_private_key_or_sas_key_in_any_debug_output() {
    let now = Timestamp::now();
    let day = Duration::from_secs(86400);
    let root_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let root = generate_root_ca("tutorial", &root_key, 30 * day, now).unwrap();
    let edge_ca = issue_edge_ca(
        &root,
        "lower-layer",
        &generate_key(KeyAlgorithm::EcdsaP256).unwrap(),
        day,
        now,
    )
    .unwrap();
    let identity = issue_identity_certificate(
        "lower-layer",
        &generate_key(KeyAlgorithm::EcdsaP256).unwrap(),
        IdentitySigner::SelfSigned,
        day,
        now,
    )
    .unwrap();
    let secrets: Vec<String> = [root.key.pem(), edge_ca.key.pem(), identity.key.pem()]
        .iter()
        .map(|pem| pem.lines().nth(1).unwrap().to_string())
        .chain([SAS_KEY.to_string()])
        .collect();

    let symmetric = BundleInput {
        trust_bundle: vec![root.cert_pem.clone()],
        edge_ca: edge_ca.clone(),
        ..tutorial_device("lower-layer")
    };
    let x509 = BundleInput {
        auth: DeviceAuth::X509 {
            identity: identity.clone(),
        },
        ..symmetric.clone()
    };
    let files = bundle_files(&x509).unwrap();
    let shown = [
        format!("{root:?}"),
        format!("{root:#?}"),
        format!("{edge_ca:?}"),
        format!("{identity:#?}"),
        format!("{symmetric:?}"),
        format!("{symmetric:#?}"),
        format!("{x509:#?}"),
        format!("{:?}", symmetric.auth),
        format!("{files:?}"),
        format!("{:?}", root.key),
    ];
    for output in &shown {
        assert!(!output.contains("PRIVATE KEY"), "{output}");
        for secret in &secrets {
            assert!(!output.contains(secret.as_str()), "secret in {output}");
        }
    }
    // The key files themselves do hold the keys, with mode 0600.
    let by_path: BTreeMap<&str, &BundleFile> = files.iter().map(|f| (f.path.as_str(), f)).collect();
    assert_eq!(
        by_path["lower-layer.key.pem"].contents,
        edge_ca.key.pem().as_bytes()
    );
    assert_eq!(by_path["lower-layer.key.pem"].mode, 0o600);
    assert_eq!(by_path["lower-layer.hub-auth.key.pem"].mode, 0o600);
}

// ---------------------------------------------------------------------------------------------
// install.sh, run for real: in a private mount namespace whose /etc, /var and /usr/local/share
// are copies in a temporary directory, with stand-ins for iotedge, docker, systemctl and
// update-ca-certificates that log their arguments. Needs root and `unshare` (util-linux).

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        common::copy_etc_with_aziot_users(root);
        // The identity service's caches, with something stale in them.
        for store in ["var/lib/aziot/certd/certs", "var/lib/aziot/keyd/keys"] {
            std::fs::create_dir_all(root.join(store)).unwrap();
            std::fs::write(root.join(store).join("stale"), "old").unwrap();
        }
        std::fs::create_dir_all(root.join("share/ca-certificates")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        for tool in ["iotedge", "docker", "systemctl", "update-ca-certificates"] {
            let path = root.join("bin").join(tool);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho \"{tool} $*\" >>\"$SANDBOX_LOG\"\n"),
            )
            .unwrap();
            Command::new("chmod")
                .arg("755")
                .arg(&path)
                .status()
                .unwrap();
        }
        Self { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Unpacks `files` into a fresh bundle directory and runs its install.sh with `env`;
    /// returns the stand-ins' log of this run.
    fn install(&self, files: &[BundleFile], env: &[(&str, &str)]) -> String {
        let bundle = self.path("bundle");
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).unwrap();
        for f in files {
            std::fs::write(bundle.join(&f.path), &f.contents).unwrap();
        }
        let log = self.path("log");
        std::fs::write(&log, "").unwrap();
        let root = self.dir.path().display().to_string();
        let script = format!(
            "set -e\n\
             mount --bind {root}/etc /etc\n\
             mkdir -p {root}/var\n\
             mount --bind {root}/var /var\n\
             mount --bind {root}/share /usr/local/share\n\
             exec sh {root}/bundle/install.sh </dev/null\n"
        );
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--fork", "sh", "-c", &script])
            .env("PATH", format!("{root}/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
            .env("SANDBOX_LOG", &log)
            .env_remove("IOTEDGE_HOSTNAME")
            .env_remove("IOTEDGE_PARENT_HOSTNAME");
        for (key, value) in env {
            command.env(key, value);
        }
        let out = command
            .output()
            .expect("unshare (util-linux) must be installed for this test");
        assert!(
            out.status.success(),
            "install.sh failed (this test needs root for its mount namespace):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&log).unwrap()
    }

    fn owner_and_mode(&self, relative: &str) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(self.path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
        (meta.uid(), meta.mode() & 0o7777)
    }
}

#[test]
fn install_sh_installs_and_is_safe_to_run_again() {
    let sandbox = Sandbox::new();
    let first = bundle_files(&tutorial_device("lower-layer")).unwrap();
    let hostnames = [
        ("IOTEDGE_HOSTNAME", "10.0.0.5"),
        ("IOTEDGE_PARENT_HOSTNAME", "10.0.0.4"),
    ];

    // First run: hostnames from the environment, everything installed, caches cleared.
    let log = sandbox.install(&first, &hostnames);
    let config = std::fs::read_to_string(sandbox.path("etc/aziot/config.toml")).unwrap();
    assert!(
        config.contains("hostname = \"10.0.0.5\"\nparent_hostname = \"10.0.0.4\"\n"),
        "{config}"
    );
    assert_eq!(sandbox.owner_and_mode("etc/aziot/config.toml"), (0, 0o600));
    assert_eq!(sandbox.owner_and_mode("var/aziot/certs"), (990, 0o755));
    assert_eq!(sandbox.owner_and_mode("var/aziot/secrets"), (991, 0o700));
    assert_eq!(
        sandbox.owner_and_mode("var/aziot/certs/iotedge_config_cli_root.pem"),
        (990, 0o644)
    );
    assert_eq!(
        sandbox.owner_and_mode("var/aziot/certs/lower-layer.full-chain.cert.pem"),
        (990, 0o644)
    );
    assert_eq!(
        sandbox.owner_and_mode("var/aziot/secrets/lower-layer.key.pem"),
        (991, 0o600)
    );
    assert_eq!(
        std::fs::read(sandbox.path("var/aziot/secrets/lower-layer.key.pem")).unwrap(),
        file(&first, "lower-layer.key.pem").contents
    );
    // The root is trusted for the parent's registry, not system-wide.
    for dir in ["10.0.0.4:443", "10.0.0.4"] {
        assert_eq!(
            std::fs::read(sandbox.path(&format!("etc/docker/certs.d/{dir}/ca.crt"))).unwrap(),
            file(&first, TRUST_BUNDLE_FILE).contents,
            "{dir}"
        );
    }
    assert!(
        !sandbox
            .path("share/ca-certificates/iotedge_config_cli_root.pem.crt")
            .exists()
    );
    assert!(!sandbox.path("var/lib/aziot/certd/certs/stale").exists());
    assert!(!sandbox.path("var/lib/aziot/keyd/keys/stale").exists());
    assert_eq!(
        log,
        "docker rm -f edgeAgent edgeHub\niotedge config apply -c /etc/aziot/config.toml\n"
    );

    // Second run of the same bundle without any environment: the installed hostnames are
    // reused, nothing is cleared or restarted, no backup is made, the config is applied again.
    std::fs::create_dir_all(sandbox.path("var/lib/aziot/certd/certs")).unwrap();
    std::fs::write(sandbox.path("var/lib/aziot/certd/certs/current"), "kept").unwrap();
    let log = sandbox.install(&first, &[]);
    assert_eq!(log, "iotedge config apply -c /etc/aziot/config.toml\n");
    assert_eq!(
        std::fs::read_to_string(sandbox.path("etc/aziot/config.toml")).unwrap(),
        config
    );
    assert!(sandbox.path("var/lib/aziot/certd/certs/current").exists());
    assert!(!sandbox.path("etc/aziot/config.toml.bak").exists());

    // A renewed bundle and a new hostname: caches cleared, containers recreated, old config kept.
    let mut renewed = tutorial_device("lower-layer");
    renewed.edge_ca = placeholder_certificate("lower-layer edge CA, renewed");
    let second = bundle_files(&renewed).unwrap();
    let log = sandbox.install(&second, &[("IOTEDGE_HOSTNAME", "10.0.0.6")]);
    assert_eq!(
        log,
        "docker rm -f edgeAgent edgeHub\niotedge config apply -c /etc/aziot/config.toml\n"
    );
    assert!(!sandbox.path("var/lib/aziot/certd/certs/current").exists());
    assert_eq!(
        std::fs::read_to_string(sandbox.path("etc/aziot/config.toml.bak")).unwrap(),
        config
    );
    let config = std::fs::read_to_string(sandbox.path("etc/aziot/config.toml")).unwrap();
    assert!(
        config.contains("hostname = \"10.0.0.6\"\nparent_hostname = \"10.0.0.4\"\n"),
        "{config}"
    );
    assert_eq!(
        std::fs::read(sandbox.path("var/aziot/certs/lower-layer.full-chain.cert.pem")).unwrap(),
        file(&second, "lower-layer.full-chain.cert.pem").contents
    );
}

#[test]
fn install_sh_refuses_a_missing_hostname_without_a_terminal() {
    let sandbox = Sandbox::new();
    let files = bundle_files(&tutorial_device("top-layer")).unwrap();
    let bundle = sandbox.path("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    for f in &files {
        std::fs::write(bundle.join(&f.path), &f.contents).unwrap();
    }
    let root = sandbox.dir.path().display().to_string();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--fork",
            "sh",
            "-c",
            &format!("mount --bind {root}/etc /etc && exec sh {root}/bundle/install.sh </dev/null"),
        ])
        .env("PATH", format!("{root}/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
        .env("SANDBOX_LOG", sandbox.path("log"))
        .env_remove("IOTEDGE_HOSTNAME")
        .output()
        .expect("unshare must be installed");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not a usable value for the hostname of this device"),
        "{stderr}"
    );
    assert!(!sandbox.path("etc/aziot/config.toml").exists());
}
