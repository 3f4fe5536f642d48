//! `issuance: Est` bundles (docs/est.md): config.toml's EST sections as aziot-edge reads them,
//! every file their URIs name in the bundle under the same base name and installed by
//! install.sh, and the same install.sh checks as plain bundles.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edge_hierarchy_operator::api::KeyAlgorithm;
use edge_hierarchy_operator::bundle::{
    BundleFile, BundleInput, DeviceAuth, EstBundle, bundle_files, bundle_files_est,
};
use edge_hierarchy_operator::pki::{
    IdentitySigner, generate_key, generate_root_ca, issue_edge_ca, issue_identity_certificate,
};

const DAY: Duration = Duration::from_secs(24 * 3600);
const URL: &str = "https://est.factory.example:8443/.well-known/est";

fn input(device_id: &str, x509: bool) -> (BundleInput, EstBundle) {
    let now = "2026-06-01T00:00:00Z".parse().unwrap();
    let root_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let root = generate_root_ca("line", &root_key, 3650 * DAY, now).unwrap();
    let est_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let est_ca = generate_root_ca("est", &est_key, 3650 * DAY, now).unwrap();
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let edge_ca = issue_edge_ca(&root, device_id, &key, 90 * DAY, now).unwrap();
    let identity =
        issue_identity_certificate(device_id, &key, IdentitySigner::Root(&root), 90 * DAY, now)
            .unwrap();
    let auth = if x509 {
        DeviceAuth::X509 {
            identity: identity.clone(),
        }
    } else {
        DeviceAuth::SymmetricKey {
            shared_access_key: "c2VjcmV0LWtleS0xMjM0NTY3ODkw".into(),
        }
    };
    let input = BundleInput {
        hierarchy: "line".into(),
        namespace: "plant".into(),
        hub_hostname: "my-hub.azure-devices.net".into(),
        device_id: device_id.into(),
        layer: 1,
        parent_device_id: None,
        hostname: None,
        parent_hostname: None,
        auth,
        trust_bundle: vec![root.cert_pem.clone()],
        edge_ca,
        agent_image: "mcr.microsoft.com/azureiotedge-agent:1.5".into(),
        upstream_port: 443,
        agent_auth: None,
    };
    let est = EstBundle {
        url: URL.into(),
        trusted_ca_pem: est_ca.cert_pem,
        bootstrap: identity,
    };
    (input, est)
}

fn text(files: &[BundleFile], path: &str) -> String {
    let file = files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} missing"));
    String::from_utf8(file.contents.clone()).unwrap()
}

/// The file a `file://` URI names, which must be in the bundle under its base name.
fn named<'a>(files: &'a [BundleFile], uri: &str) -> &'a BundleFile {
    let path = uri.strip_prefix("file://").expect("a file:// URI");
    let base = Path::new(path).file_name().unwrap().to_str().unwrap();
    files
        .iter()
        .find(|f| f.path == base)
        .unwrap_or_else(|| panic!("{uri} names {base}, not in the bundle"))
}

#[test]
fn config_toml_enrolls_the_edge_ca_over_est_with_files_in_the_bundle() {
    let (input, est) = input("gw-1", false);
    let files = bundle_files_est(&input, &est).unwrap();
    let config: toml::Table = text(&files, "config.toml").parse().unwrap();
    let section = &config["cert_issuance"]["est"];
    assert_eq!(section["urls"]["default"].as_str(), Some(URL));
    let trusted = section["trusted_certs"].as_array().unwrap();
    assert_eq!(trusted.len(), 1);
    assert_eq!(
        String::from_utf8(named(&files, trusted[0].as_str().unwrap()).contents.clone()).unwrap(),
        est.trusted_ca_pem
    );
    let auth = &section["auth"];
    let cert = named(&files, auth["bootstrap_identity_cert"].as_str().unwrap());
    assert_eq!(cert.contents, est.bootstrap.cert_pem.as_bytes());
    assert_eq!(cert.mode, 0o644);
    let key = named(&files, auth["bootstrap_identity_pk"].as_str().unwrap());
    assert_eq!(key.contents, est.bootstrap.key.pem().as_bytes());
    assert_eq!(key.mode, 0o600);
    assert!(
        auth["bootstrap_identity_pk"]
            .as_str()
            .unwrap()
            .starts_with("file:///var/aziot/secrets/")
    );

    let edge_ca = config["edge_ca"].as_table().unwrap();
    assert_eq!(edge_ca["method"].as_str(), Some("est"));
    assert_eq!(edge_ca["common_name"].as_str(), Some("gw-1.deviceca"));
    assert!(!edge_ca.contains_key("cert") && !edge_ca.contains_key("pk"));
    let renew = &edge_ca["auto_renew"];
    assert_eq!(renew["threshold"].as_str(), Some("80%"));
    assert_eq!(renew["retry"].as_str(), Some("4%"));
    assert_eq!(renew["rotate_key"].as_bool(), Some(true));
    // SymmetricKey: the hub identity stays the connection string.
    assert!(
        config["provisioning"]["connection_string"]
            .as_str()
            .is_some()
    );

    let script = text(&files, "install.sh");
    for line in [
        "install_file 'est-server-ca.pem' \"$cert_dir\" aziotcs 0644",
        "install_file 'gw-1.est-bootstrap.cert.pem' \"$cert_dir\" aziotcs 0644",
        "install_file 'gw-1.est-bootstrap.key.pem' \"$secret_dir\" aziotks 0600",
    ] {
        assert!(script.contains(line), "install.sh lacks {line}");
    }
}

#[test]
fn an_x509_bundle_enrolls_its_hub_identity_over_est() {
    let (input, est) = input("gw-1", true);
    let files = bundle_files_est(&input, &est).unwrap();
    let config: toml::Table = text(&files, "config.toml").parse().unwrap();
    let auth = &config["provisioning"]["authentication"];
    assert_eq!(auth["method"].as_str(), Some("x509"));
    assert_eq!(auth["identity_cert"]["method"].as_str(), Some("est"));
    assert_eq!(auth["identity_cert"]["common_name"].as_str(), Some("gw-1"));
    assert_eq!(config["provisioning"]["device_id"].as_str(), Some("gw-1"));
}

#[test]
fn a_plain_bundle_is_unchanged_and_bad_est_input_is_named() {
    let (input, est) = input("gw-1", false);
    let plain = bundle_files(&input).unwrap();
    let config: toml::Table = text(&plain, "config.toml").parse().unwrap();
    assert!(!config.contains_key("cert_issuance"));
    assert!(config["edge_ca"].get("cert").is_some());
    let bad = EstBundle {
        url: "http://est.example/.well-known/est".into(),
        ..est
    };
    let err = bundle_files_est(&input, &bad).unwrap_err().to_string();
    assert!(err.contains("gw-1") && err.contains("--est-url"), "{err}");
}

#[test]
fn est_install_sh_passes_sh_n_and_shellcheck() {
    let dir = tempfile::tempdir().unwrap();
    for x509 in [false, true] {
        let (input, est) = input("gw-1", x509);
        let files = bundle_files_est(&input, &est).unwrap();
        let path = dir.path().join(format!("install-{x509}.sh"));
        std::fs::write(&path, text(&files, "install.sh")).unwrap();
        for (program, args) in [
            ("sh", vec!["-n"]),
            ("shellcheck", vec!["--shell=sh", "--severity=style"]),
        ] {
            let out = Command::new(program)
                .args(&args)
                .arg(&path)
                .output()
                .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
            assert!(
                out.status.success(),
                "{program}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}
